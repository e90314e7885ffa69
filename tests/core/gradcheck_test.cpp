// Every layer's backward (input and parameter gradients), the losses' gradients and the l1/l2
// penalty's gradient against central finite differences in float64.
#include <gtest/gtest.h>

#include "tests/core/test_util.h"

namespace lockstep::test {
namespace {

const char* kActivations[] = {"linear", "sigmoid", "tanh", "relu", "leaky_relu", "elu",
                              "selu",   "softmax", "softplus", "softsign", "swish"};

// ---- the checker itself -----------------------------------------------------------------------
TEST(GradCheck, CatchesAWrongGradient) {
  // A check that cannot fail is worthless: a 1% error in the analytic gradient must be flagged.
  auto m = one_layer("[5]", "dense: {units: 3, activation: tanh, bias_initializer: {random_normal: {stddev: 0.5}}}");
  m->init(1);
  Tensor x = randn({4, 5}, 11);
  ModelGradCheck bad = check_model_grads(*m, x, training_ctx(), false, 1.01);
  EXPECT_GT(bad.input.max_err, 10 * kFdTol);
  for (const auto& w : bad.weights) EXPECT_GT(w.max_err, 10 * kFdTol);
  ModelGradCheck good = check_model_grads(*m, x, training_ctx());
  expect_grads_ok(good);
}

// ---- Dense ------------------------------------------------------------------------------------
class DenseGrad : public ::testing::TestWithParam<std::tuple<const char*, bool>> {};
TEST_P(DenseGrad, MatchesFiniteDifferences) {
  const auto [act, bias] = GetParam();
  auto m = one_layer("[5]", str_cat("dense: {units: 4, activation: ", act, ", use_bias: ", bias ? "true" : "false",
                                    ", bias_initializer: {random_normal: {stddev: 0.5}}}"));
  ASSERT_EQ(m->layer(0).weights().size(), bias ? 2u : 1u);
  m->init(2);
  Tensor x = randn({6, 5}, 12);
  expect_grads_ok(check_model_grads(*m, x, training_ctx()), true, act);
}
INSTANTIATE_TEST_SUITE_P(AllActivations, DenseGrad,
                         ::testing::Combine(::testing::ValuesIn(kActivations), ::testing::Bool()));

TEST(DenseGrad, RankThreeInputActsOnLastAxis) {
  auto m = one_layer("[3, 5]", "dense: {units: 2, activation: elu, bias_initializer: {random_normal: {}}}");
  m->init(3);
  EXPECT_EQ(m->output_shape(), (Shape{3, 2}));
  expect_grads_ok(check_model_grads(*m, randn({2, 3, 5}, 13), training_ctx()));
}

// A Dense whose activation's backward needs only y overwrites its pre-activation with y; one whose
// alpha is negative (y > 0 for some x < 0) keeps both. Zero alphas sit on the boundary.
TEST(DenseGrad, ActivationsWithAlphaOnBothSidesOfZero) {
  for (const char* act : {"{leaky_relu: {alpha: 0.2}}", "{leaky_relu: {alpha: 0.0}}", "{leaky_relu: {alpha: -0.2}}",
                          "{elu: {alpha: 0.7}}", "{elu: {alpha: 0.0}}", "{elu: {alpha: -0.5}}"}) {
    auto m = one_layer("[5]", str_cat("dense: {units: 4, activation: ", act,
                                      ", bias_initializer: {random_normal: {stddev: 0.5}}}"));
    m->init(2);
    expect_grads_ok(check_model_grads(*m, randn({6, 5}, 12, 1.5), training_ctx()), true, act);
  }
}

// ---- activation layers ---------------------------------------------------------------------------
class ActivationGrad : public ::testing::TestWithParam<const char*> {};
TEST_P(ActivationGrad, MatchesFiniteDifferences) {
  auto m = one_layer("[7]", str_cat("activation: {activation: ", GetParam(), "}"));
  m->init(4);
  expect_grads_ok(check_model_grads(*m, randn({5, 7}, 14, 1.5), training_ctx()), true, GetParam());
}
INSTANTIATE_TEST_SUITE_P(AllActivations, ActivationGrad, ::testing::ValuesIn(kActivations));

TEST(ActivationGrad, LayersWithAlpha) {
  for (const char* layer : {"leaky_relu: {}", "leaky_relu: {alpha: 0.05}", "elu: {}", "elu: {alpha: 0.7}", "relu: {}",
                            "softmax: {}", "activation: {activation: {leaky_relu: {alpha: 0.1}}}",
                            "activation: {activation: {elu: {alpha: 2.0}}}",
                            "activation: {activation: {leaky_relu: {alpha: -0.2}}}",
                            "activation: {activation: {elu: {alpha: -0.5}}}"}) {
    auto m = one_layer("[7]", layer);
    m->init(5);
    expect_grads_ok(check_model_grads(*m, randn({5, 7}, 15, 1.5), training_ctx()), true, layer);
  }
}

// ---- PReLU -------------------------------------------------------------------------------------
TEST(PReLUGrad, PerElementSlopes) {
  auto m = one_layer("[6]", "prelu: {alpha_initializer: {random_uniform: {minval: 0.05, maxval: 0.5}}}");
  m->init(6);
  ModelGradCheck c = check_model_grads(*m, randn({8, 6}, 16), training_ctx());
  ASSERT_EQ(c.weights.size(), 1u);
  expect_grads_ok(c);
}
TEST(PReLUGrad, SharedAxes) {
  auto m = one_layer("[3, 4]", "prelu: {shared_axes: [1], alpha_initializer: {random_uniform: {minval: 0.05, maxval: 0.5}}}");
  m->init(7);
  EXPECT_EQ(m->layer(0).weights()[0].shape, (Shape{1, 4}));
  expect_grads_ok(check_model_grads(*m, randn({5, 3, 4}, 17), training_ctx()));
}
TEST(PReLUGrad, ZeroInitialSlopeStillGetsAGradient) {
  auto m = one_layer("[6]", "prelu: {}");  // Keras default: alpha = 0
  m->init(8);
  expect_grads_ok(check_model_grads(*m, randn({8, 6}, 18), training_ctx()));
}

// ---- RReLU -------------------------------------------------------------------------------------
TEST(RReLUGrad, InferenceMode) {
  auto m = one_layer("[6]", "rrelu: {}");
  m->init(9);
  expect_grads_ok(check_model_grads(*m, randn({8, 6}, 19), inference_ctx()));
}
TEST(RReLUGrad, TrainingModeWithSlopesFixedBySeedAndStep) {
  auto m = one_layer("[6]", "rrelu: {lower: 0.1, upper: 0.6}");
  m->init(9);
  expect_grads_ok(check_model_grads(*m, randn({8, 6}, 20), training_ctx(5, 11)));
}

// ---- BatchNormalization ----------------------------------------------------------------------------
const char* kBnInits =
    "beta_initializer: {random_normal: {stddev: 0.5}}, gamma_initializer: {random_uniform: {minval: 0.5, maxval: 1.5}}, "
    "moving_mean_initializer: {random_normal: {stddev: 0.5}}, "
    "moving_variance_initializer: {random_uniform: {minval: 0.5, maxval: 2.0}}";

TEST(BatchNormGrad, Training2D) {
  auto m = one_layer("[4]", str_cat("batch_normalization: {", kBnInits, "}"));
  m->init(10);
  Tensor x = randn({6, 4}, 21, 2.0, 0.5);
  ModelGradCheck c = check_model_grads(*m, x, training_ctx());
  ASSERT_EQ(c.weights.size(), 2u);  // gamma, beta
  expect_grads_ok(c);
}
TEST(BatchNormGrad, Training2DWithoutCenterAndScale) {
  auto m = one_layer("[4]", str_cat("batch_normalization: {center: false, scale: false, ", kBnInits, "}"));
  m->init(10);
  ModelGradCheck c = check_model_grads(*m, randn({6, 4}, 22, 2.0, 0.5), training_ctx());
  EXPECT_TRUE(c.weights.empty());
  expect_grads_ok(c);
}
TEST(BatchNormGrad, Training4DChannelsFirst) {
  auto m = one_layer("[3, 2, 2]", str_cat("batch_normalization: {axis: 1, ", kBnInits, "}"));
  m->init(11);
  EXPECT_EQ(m->layer(0).weights()[0].shape, (Shape{3}));
  expect_grads_ok(check_model_grads(*m, randn({4, 3, 2, 2}, 23, 1.5, -0.3), training_ctx()));
}
TEST(BatchNormGrad, Training4DChannelsLast) {
  auto m = one_layer("[2, 2, 3]", str_cat("batch_normalization: {", kBnInits, "}"));
  m->init(11);
  expect_grads_ok(check_model_grads(*m, randn({4, 2, 2, 3}, 24, 1.5, -0.3), training_ctx()));
}
TEST(BatchNormGrad, Training3DMiddleAxis) {
  auto m = one_layer("[3, 5]", str_cat("batch_normalization: {axis: 1, ", kBnInits, "}"));
  m->init(12);
  expect_grads_ok(check_model_grads(*m, randn({4, 3, 5}, 25, 1.5, 0.2), training_ctx()));
}
TEST(BatchNormGrad, Inference2D) {
  auto m = one_layer("[4]", str_cat("batch_normalization: {", kBnInits, "}"));
  m->init(13);
  ModelGradCheck c = check_model_grads(*m, randn({6, 4}, 26, 2.0), inference_ctx());
  ASSERT_EQ(c.weights.size(), 2u);
  expect_grads_ok(c);
}
TEST(BatchNormGrad, Inference4DChannelsFirst) {
  auto m = one_layer("[3, 2, 2]", str_cat("batch_normalization: {axis: 1, ", kBnInits, "}"));
  m->init(14);
  expect_grads_ok(check_model_grads(*m, randn({4, 3, 2, 2}, 27, 1.5), inference_ctx()));
}

// ---- Dropout family (the mask is a function of seed, step and layer: the same in every pass) -------
TEST(DropoutGrad, TrainingWithFixedMask) {
  for (const char* layer : {"dropout: {rate: 0.3}", "alpha_dropout: {rate: 0.3}", "mc_dropout: {rate: 0.4}",
                            "mc_alpha_dropout: {rate: 0.2}"}) {
    auto m = one_layer("[10]", layer);
    m->init(15);
    expect_grads_ok(check_model_grads(*m, randn({8, 10}, 28), training_ctx(3, 17)), true, layer);
    // MC variants stay active at inference: same check there.
    if (std::string(layer).rfind("mc_", 0) == 0)
      expect_grads_ok(check_model_grads(*m, randn({8, 10}, 29), inference_ctx(3, 18)), true, layer);
  }
}

TEST(FlattenGrad, PassesGradientsThrough) {
  auto m = model_from_yaml(R"(model:
  input_shape: [2, 3]
  layers:
    - flatten: {}
    - dense: {units: 2, activation: sigmoid, bias_initializer: {random_normal: {}}}
)");
  m->init(16);
  expect_grads_ok(check_model_grads(*m, randn({3, 2, 3}, 30), training_ctx()));
}

// ---- a whole model -------------------------------------------------------------------------------
const char* kMlpWithBn = R"(model:
  input_shape: [2, 3]
  layers:
    - flatten: {}
    - batch_normalization: {}
    - dense: {units: 5, activation: selu, kernel_initializer: lecun_normal, bias_initializer: {random_normal: {stddev: 0.3}}}
    - batch_normalization: {gamma_initializer: {random_uniform: {minval: 0.5, maxval: 1.5}}, beta_initializer: {random_normal: {stddev: 0.3}}}
    - activation: {activation: tanh}
    - dense: {units: 4, use_bias: false}
    - batch_normalization: {}
    - activation: {activation: elu}
    - dropout: {rate: 0.25}
    - dense: {units: 3, activation: softmax, bias_initializer: {random_normal: {stddev: 0.3}}}
)";

TEST(ModelGrad, MlpWithBatchNormLayerLoop) {
  auto m = model_from_yaml(kMlpWithBn);
  m->init(17);
  ModelGradCheck c = check_model_grads(*m, randn({8, 2, 3}, 31, 1.0, 0.5), training_ctx());
  EXPECT_EQ(c.weights.size(), 11u);
  expect_grads_ok(c);
}
TEST(ModelGrad, MlpWithBatchNormModelBackward) {
  auto m = model_from_yaml(kMlpWithBn);
  m->init(18);
  ModelGradCheck c = check_model_grads(*m, randn({8, 2, 3}, 32, 1.0, 0.5), training_ctx(), true);
  EXPECT_EQ(c.weights.size(), 11u);
  expect_grads_ok(c, false);
}
TEST(ModelGrad, MlpWithBatchNormInference) {
  auto m = model_from_yaml(kMlpWithBn);
  m->init(19);
  expect_grads_ok(check_model_grads(*m, randn({8, 2, 3}, 33, 1.0, 0.5), inference_ctx(), true), false);
}

// Input BN under a Dense: Model::backward takes the BN's sums from the Dense's products
// (Layer::normalized_output) and never forms the Dense's input gradient.
const char* kInputBnVariants[] = {
    "{}",
    "{center: false}",
    "{scale: false, beta_initializer: {random_normal: {stddev: 0.5}}}",
};
class InputBnGrad : public ::testing::TestWithParam<std::tuple<const char*, bool, bool>> {};
TEST_P(InputBnGrad, FoldedIntoTheDenseAboveMatchesFiniteDifferencesAndTheLayerLoop) {
  const auto [bn, use_bias, training] = GetParam();
  const std::string yaml = str_cat(R"(model:
  input_shape: [6]
  layers:
    - batch_normalization: )", bn, R"(
    - dense: {units: 5, activation: elu, use_bias: )", use_bias ? "true" : "false", R"(}
    - dense: {units: 3})");
  auto m = model_from_yaml(yaml);
  m->init(41);
  Tensor x = randn({9, 6}, 42, 2.0, 0.7);
  Context ctx = training ? training_ctx() : inference_ctx();
  ModelGradCheck folded = check_model_grads(*m, x, ctx, true);
  expect_grads_ok(folded, false, yaml);
  // The layer-by-layer chain (dx formed, BN's sums from it) gives the same gradients.
  Tensor r = randn(m->forward(x, ctx).shape(), 4242);
  m->backward(r, ctx);
  Tensor via_model = m->grads_arena().clone();
  m->forward(x, ctx);
  Tensor g = r;
  for (int i = int(m->layers().size()) - 1; i >= 0; --i) g = m->layer(i).backward(g, ctx, i > 0);
  EXPECT_LT(ops::max_abs_diff(via_model, m->grads_arena()), 1e-12);
}
INSTANTIATE_TEST_SUITE_P(Variants, InputBnGrad,
                         ::testing::Combine(::testing::ValuesIn(kInputBnVariants), ::testing::Bool(),
                                            ::testing::Bool()));

TEST(InputBnGrad, DenseNormalizedGradsOpAgainstTheFormedInputGradient) {
  // The op alone: sums and dW against dy = dz·Wᵀ and X = gamma*x̂ + beta formed explicitly.
  const int64_t rows = 7, in = 150, out = 40;  // more features than the CPU kernel's row block (64)
  Tensor xhat = randn({rows, in}, 51), dz = randn({rows, out}, 52), w = randn({in, out}, 53);
  Tensor gamma = randn({in}, 54, 0.5, 1.0), beta = randn({in}, 55);
  Tensor dw({in, out}, Device::CPU, DType::F64), s({out}, Device::CPU, DType::F64);
  Tensor sums({2 * in}, Device::CPU, DType::F64);
  ops::bias_grad(dz, s);
  ops::dense_normalized_grads(xhat, dz, w, s, gamma, beta, dw, sums);
  for (int64_t c = 0; c < in; ++c) {
    double sdy = 0, sdyx = 0;
    for (int64_t n = 0; n < rows; ++n) {
      double dy = 0;
      for (int64_t j = 0; j < out; ++j) dy += dz.at(n * out + j) * w.at(c * out + j);
      sdy += dy;
      sdyx += dy * xhat.at(n * in + c);
    }
    EXPECT_NEAR(sums.at(c), sdy, 1e-12);
    EXPECT_NEAR(sums.at(in + c), sdyx, 1e-12);
    for (int64_t j = 0; j < out; ++j) {
      double ref = 0;
      for (int64_t n = 0; n < rows; ++n) ref += (gamma.at(c) * xhat.at(n * in + c) + beta.at(c)) * dz.at(n * out + j);
      EXPECT_NEAR(dw.at(c * out + j), ref, 1e-12);
    }
  }
  // Descending (rate 0.3): the same sums from the kernel before the step, and the kernel after it.
  Tensor w2 = w.clone(), dw2 = dw.empty_like(dw.shape()), sums2 = sums.empty_like(sums.shape());
  ops::fill(dw2, 5.0);
  ops::dense_normalized_grads(xhat, dz, w2, s, gamma, beta, dw2, sums2, 0.3);
  EXPECT_EQ(ops::max_abs_diff(sums, sums2), 0.0);
  ops::axpy(-0.3, dw, w);
  EXPECT_LT(ops::max_abs_diff(w, w2), 1e-14);
}

// ---- losses -----------------------------------------------------------------------------------------
using LossFn = void (*)(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double);

// grad = grad_scale * d(Σ_i loss_i)/d(pred), checked against central differences.
GradErr check_loss_grad(LossFn fn, const Tensor& pred, const Tensor& target, double grad_scale) {
  const int64_t rows = pred.dim(0);
  Tensor loss({rows}, Device::CPU, DType::F64);
  Tensor grad = pred.empty_like(pred.shape());
  fn(pred, target, loss, grad, grad_scale);
  auto total = [&] {
    fn(pred, target, loss, Tensor(), 0.0);
    return grad_scale * ops::sum(loss);
  };
  GradErr e;
  double* p = pred.data<double>();
  for (int64_t j = 0; j < pred.numel(); ++j) {
    const double keep = p[j];
    p[j] = keep + kFdEps;
    const double lp = total();
    p[j] = keep - kFdEps;
    const double lm = total();
    p[j] = keep;
    e.add(grad.at(j), (lp - lm) / (2 * kFdEps));
  }
  return e;
}
void expect_loss_grad_ok(LossFn fn, const Tensor& pred, const Tensor& target, const char* what) {
  GradErr e = check_loss_grad(fn, pred, target, 0.37);
  EXPECT_LT(e.max_err, kFdTol) << what;
  EXPECT_GT(e.numeric_abs_sum, 1e-2) << what;
}

Tensor labels(const std::vector<double>& v) { return Tensor::from_vector({int64_t(v.size())}, v); }
Tensor soft_targets(int64_t rows, int64_t k, uint64_t seed) {
  Tensor t = randu({rows, k}, seed, 0.0, 1.0);
  double* p = t.data<double>();
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0;
    for (int64_t c = 0; c < k; ++c) s += p[r * k + c];
    for (int64_t c = 0; c < k; ++c) p[r * k + c] /= s;
  }
  return t;
}

TEST(LossGrad, FromLogits) {
  Tensor z = randn({5, 4}, 40, 2.0);
  expect_loss_grad_ok(ops::softmax_xent_sparse, z, labels({0, 3, 1, 2, 3}), "softmax_xent_sparse");
  expect_loss_grad_ok(ops::softmax_xent_dense, z, soft_targets(5, 4, 41), "softmax_xent_dense");
  expect_loss_grad_ok(ops::sigmoid_xent, z, randu({5, 4}, 42, 0.0, 1.0), "sigmoid_xent");
}
TEST(LossGrad, FromProbabilitiesInsideTheClipRange) {
  Tensor p = randu({5, 4}, 43, 0.02, 0.98);  // rows do not sum to 1: the normalisation is differentiated too
  expect_loss_grad_ok(ops::sparse_xent_probs, p, labels({0, 3, 1, 2, 3}), "sparse_xent_probs");
  expect_loss_grad_ok(ops::categorical_xent_probs, p, soft_targets(5, 4, 44), "categorical_xent_probs");
  expect_loss_grad_ok(ops::binary_xent_probs, p, randu({5, 4}, 45, 0.0, 1.0), "binary_xent_probs");
}
TEST(LossGrad, Mse) {
  expect_loss_grad_ok(ops::mse, randn({5, 4}, 46), randn({5, 4}, 47), "mse");
}
TEST(LossGrad, ClippedProbabilitiesHaveZeroGradient) {
  // Keras clips to [1e-7, 1-1e-7]; the clip's gradient is zero outside (tf.clip_by_value).
  Tensor p = Tensor::from_vector({2, 3}, std::vector<double>{0.0, 0.5, 0.5, 1e-9, 0.3, 0.7});
  Tensor loss({2}, Device::CPU, DType::F64), g({2, 3}, Device::CPU, DType::F64);
  ops::binary_xent_probs(p, Tensor::from_vector({2, 3}, std::vector<double>{1, 0, 1, 1, 1, 0}), loss, g, 1.0);
  EXPECT_EQ(g.at(0), 0.0);
  EXPECT_EQ(g.at(3), 0.0);
  EXPECT_NE(g.at(1), 0.0);
  ops::sparse_xent_probs(p, labels({0, 0}), loss, g, 1.0);
  EXPECT_EQ(g.at(0), 0.0);
  EXPECT_EQ(g.at(3), 0.0);
  EXPECT_NE(g.at(1), 0.0);
}

// ---- l1/l2 --------------------------------------------------------------------------------------------
TEST(Regularization, L1L2PenaltyAndGradient) {
  Tensor w = Tensor::from_vector({2, 3}, std::vector<double>{0.5, -1.5, 2.0, -0.25, 0.75, -3.0});
  // l1·Σ|w| + l2·Σw² (no ½): Σ|w| = 8, Σw² = 0.25+2.25+4+0.0625+0.5625+9 = 16.125
  EXPECT_NEAR(ops::l1l2_penalty(w, 0.01, 0.0), 0.08, 1e-15);
  EXPECT_NEAR(ops::l1l2_penalty(w, 0.0, 0.02), 0.3225, 1e-15);
  EXPECT_NEAR(ops::l1l2_penalty(w, 0.01, 0.02), 0.4025, 1e-15);
  Tensor g = Tensor::full({2, 3}, 1.0, Device::CPU, DType::F64);  // accumulates
  ops::l1l2_grad(w, g, 0.01, 0.02);
  double* wp = w.data<double>();
  for (int64_t j = 0; j < 6; ++j) {
    const double keep = wp[j];
    wp[j] = keep + kFdEps;
    double lp = ops::l1l2_penalty(w, 0.01, 0.02);
    wp[j] = keep - kFdEps;
    double lm = ops::l1l2_penalty(w, 0.01, 0.02);
    wp[j] = keep;
    EXPECT_NEAR(g.at(j) - 1.0, (lp - lm) / (2 * kFdEps), 1e-9) << j;
  }
}
TEST(Regularization, ModelAddsPenaltyOfTrainableWeightsOnly) {
  auto m = model_from_yaml(R"(model:
  input_shape: [3]
  layers:
    - dense: {units: 2, kernel_regularizer: {l2: 0.1}, bias_initializer: ones, bias_regularizer: l1}
    - dense: {units: 2, kernel_regularizer: {l1_l2: {l1: 0.5, l2: 0.5}}, trainable: false}
)");
  m->init(20);
  Tensor k = m->layer(0).weights()[0].value;
  EXPECT_NEAR(m->regularization_loss(), 0.1 * ops::sum_squares(k) + 0.01 * 2.0, 1e-12);
  ops::fill(m->grads_arena(), 0.0);
  m->add_regularization_grads();
  for (int64_t j = 0; j < k.numel(); ++j) EXPECT_NEAR(m->layer(0).weights()[0].grad.at(j), 0.2 * k.at(j), 1e-15);
  EXPECT_NEAR(m->layer(0).weights()[1].grad.at(0), 0.01, 1e-15);
}

// Model::place_gradients (the communicator's reduction buffer): every weight's gradient view moves
// into the given memory, the gradients are carried over, and the next backward pass writes there.
TEST(PlaceGradients, MovesEveryGradientViewIntoTheGivenMemory) {
  auto m = model_from_yaml(kMlpWithBn);
  m->init(21);
  const Tensor x = randn({8, 2, 3}, 34, 1.0, 0.5);
  Context ctx = training_ctx();
  Tensor out = m->forward(x, ctx);
  m->backward(Tensor::full(out.shape(), 0.5, Device::CPU, DType::F64), ctx);
  const std::vector<double> before = m->grads_arena().to_double_vector();

  const int64_t n = m->grads_arena().numel();
  auto memory = std::make_shared<std::vector<double>>(size_t(n), -7.0);
  Tensor outside = Tensor::wrap(memory->data(), {n}, Device::CPU, DType::F64, memory);
  m->place_gradients(outside);
  EXPECT_TRUE(m->grads_arena().shares_storage_with(outside));
  EXPECT_EQ(*memory, before);
  const char* lo = reinterpret_cast<const char*>(memory->data());
  for (const WeightRef& r : m->weight_refs()) {
    if (r.grad_offset < 0) continue;
    const char* p = static_cast<const char*>(r.weight->grad.raw());
    EXPECT_TRUE(p >= lo && p < lo + n * 8) << r.weight->name;
  }
  std::fill(memory->begin(), memory->end(), 0.0);
  Context again = training_ctx();
  m->forward(x, again);
  m->backward(Tensor::full(out.shape(), 0.5, Device::CPU, DType::F64), again);
  EXPECT_EQ(*memory, before);  // the same pass, written into the new memory

  auto small = std::make_shared<std::vector<double>>(size_t(n - 1));
  EXPECT_THROW(m->place_gradients(Tensor::wrap(small->data(), {n - 1}, Device::CPU, DType::F64, small)), Error);
  Tensor f32({n});
  EXPECT_THROW(m->place_gradients(f32), Error);
}

}  // namespace
}  // namespace lockstep::test
