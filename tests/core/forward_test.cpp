// Forwards against hand-computed values: activations, Dense with known weights, BatchNormalization
// (training vs inference, moving averages, center/scale off, frozen), dropout family, losses with
// Keras's probability clipping.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "tests/core/test_util.h"

namespace lockstep::test {
namespace {

const std::vector<double> kX = {-2, -0.5, 0, 0.5, 2};

std::vector<double> run_one(const std::string& layer, const std::vector<double>& x, Context ctx = inference_ctx()) {
  auto m = one_layer("[" + std::to_string(x.size()) + "]", layer);
  m->init(1);
  return m->forward(Tensor::from_vector({1, int64_t(x.size())}, x), ctx).to_double_vector();
}
void expect_all_near(const std::vector<double>& got, const std::vector<double>& want, double tol,
                     const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], tol) << what << " [" << i << "]";
}

TEST(ActivationForward, HandComputedValues) {
  // Values from the definitions (keras-semantics §2), computed independently in Python.
  const std::map<std::string, std::vector<double>> want = {
      {"linear", kX},
      {"sigmoid", {0.11920292202211755, 0.3775406687981454, 0.5, 0.6224593312018546, 0.8807970779778823}},
      {"tanh", {-0.9640275800758169, -0.46211715726000974, 0.0, 0.46211715726000974, 0.9640275800758169}},
      {"relu", {0, 0, 0, 0.5, 2}},
      {"leaky_relu", {-0.4, -0.1, 0, 0.5, 2}},  // the function's default alpha is 0.2
      {"elu", {-0.8646647167633873, -0.3934693402873666, 0.0, 0.5, 2}},
      {"selu", {-1.5201664685956948, -0.6917581878028713, 0.0, 0.5253504936777402, 2.101401974710961}},
      {"softplus", {0.1269280110429725, 0.4740769841801067, 0.6931471805599453, 0.9740769841801067, 2.1269280110429727}},
      {"softsign", {-2.0 / 3, -1.0 / 3, 0.0, 1.0 / 3, 2.0 / 3}},
      {"swish", {-0.2384058440442351, -0.1887703343990727, 0.0, 0.3112296656009273, 1.7615941559557646}},
      {"softmax", {0.012554708844463728, 0.056266301409509716, 0.09276744795748328, 0.15294766467606982,
                   0.6854638771124735}}};
  for (const auto& [name, v] : want) {
    expect_all_near(run_one("activation: {activation: " + name + "}", kX), v, 1e-14, name);
    // Dense with an identity kernel applies the same activation.
    std::vector<double> dense = run_one(
        "dense: {units: 5, activation: " + name + ", kernel_initializer: zeros}", kX);  // z = 0 everywhere
    std::vector<double> at0 = run_one("activation: {activation: " + name + "}", {0, 0, 0, 0, 0});
    expect_all_near(dense, at0, 1e-15, name + " (dense, zero kernel)");
  }
}

TEST(ActivationForward, LayerDefaultsDifferFromFunctionDefaults) {
  expect_all_near(run_one("leaky_relu: {}", kX), {-0.6, -0.15, 0, 0.5, 2}, 1e-15, "LeakyReLU layer alpha 0.3");
  expect_all_near(run_one("leaky_relu: {alpha: 0.01}", kX), {-0.02, -0.005, 0, 0.5, 2}, 1e-15, "LeakyReLU 0.01");
  expect_all_near(run_one("elu: {alpha: 2.0}", kX), {2 * -0.8646647167633873, 2 * -0.3934693402873666, 0, 0.5, 2},
                  1e-15, "ELU alpha 2");
  expect_all_near(run_one("relu: {}", kX), {0, 0, 0, 0.5, 2}, 0, "ReLU");
  expect_all_near(run_one("prelu: {alpha_initializer: {constant: 0.25}}", kX), {-0.5, -0.125, 0, 0.5, 2}, 1e-15, "PReLU");
  // RReLU at inference: slope (lower+upper)/2; PyTorch defaults 1/8 and 1/3.
  const double a = (1.0 / 8 + 1.0 / 3) / 2;
  expect_all_near(run_one("rrelu: {}", kX), {-2 * a, -0.5 * a, 0, 0.5, 2}, 1e-15, "RReLU inference");
}

TEST(ActivationForward, RReluTrainingSlopesInRangeAndFixedBySeedAndStep) {
  auto m = one_layer("[1000]", "rrelu: {lower: 0.1, upper: 0.3}");
  Tensor x = Tensor::full({2, 1000}, -1.0, Device::CPU, DType::F64);
  Context c5 = training_ctx(1, 5), c6 = training_ctx(1, 6);
  auto y1 = m->forward(x, c5).to_double_vector();
  auto y2 = m->forward(x, c5).to_double_vector();
  auto y3 = m->forward(x, c6).to_double_vector();
  EXPECT_EQ(y1, y2);
  EXPECT_NE(y1, y3);
  double mean = 0;
  for (double v : y1) {
    EXPECT_GE(-v, 0.1);
    EXPECT_LT(-v, 0.3);
    mean += -v / double(y1.size());
  }
  EXPECT_NEAR(mean, 0.2, 0.005);  // U[0.1, 0.3): sd of the mean 0.058/sqrt(2000) = 0.0013
}

TEST(DenseForward, KnownWeights) {
  auto m = one_layer("[2]", "dense: {units: 3, activation: relu}");
  set_values(m->layer(0).weights()[0].value, {1, 2, 3, 4, 5, 6});  // kernel [in=2, out=3]
  set_values(m->layer(0).weights()[1].value, {0.1, 0.2, 0.3});
  Context ctx = inference_ctx();
  auto y = m->forward(Tensor::from_vector({2, 2}, std::vector<double>{1, -1, 0.5, 2}), ctx).to_double_vector();
  // [1,-1]·K + b = [-2.9, -2.8, -2.7] -> relu 0; [0.5, 2]·K + b = [8.6, 11.2, 13.8]
  expect_all_near(y, {0, 0, 0, 8.6, 11.2, 13.8}, 1e-14, "dense relu");
}

TEST(DenseForward, DefaultInitializersAreGlorotUniformAndZeros) {
  auto m = one_layer("[300]", "dense: {units: 100}");
  m->init(3);
  const double limit = std::sqrt(6.0 / 400);
  auto k = m->layer(0).weights()[0].value.to_double_vector();
  double mx = 0;
  for (double v : k) mx = std::max(mx, std::abs(v));
  EXPECT_LE(mx, limit);
  EXPECT_GT(mx, 0.99 * limit);
  EXPECT_EQ(ops::sum_abs(m->layer(0).weights()[1].value), 0.0);
}

// ---- BatchNormalization -------------------------------------------------------------------------
TEST(BatchNormForward, TrainingUsesBiasedBatchStatsAndUpdatesMovingAverages) {
  auto m = one_layer("[2]", "batch_normalization: {}");
  m->init(1);
  Layer& bn = m->layer(0);
  set_values(bn.weight("gamma")->value, {2, 0.5});
  set_values(bn.weight("beta")->value, {1, -1});
  Tensor x = Tensor::from_vector({4, 2}, std::vector<double>{1, 10, 2, 20, 3, 30, 4, 40});
  Context ctx = training_ctx();
  auto y = m->forward(x, ctx).to_double_vector();
  const double mean[2] = {2.5, 25}, var[2] = {1.25, 125}, g[2] = {2, 0.5}, b[2] = {1, -1};
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 2; ++c)
      EXPECT_NEAR(y[size_t(r * 2 + c)], g[c] * (x.at(r * 2 + c) - mean[c]) / std::sqrt(var[c] + 1e-3) + b[c], 1e-14);
  // momentum 0.99 from the initial (0, 1)
  expect_all_near(bn.weight("moving_mean")->value.to_double_vector(), {0.01 * 2.5, 0.01 * 25}, 1e-15, "moving_mean");
  expect_all_near(bn.weight("moving_variance")->value.to_double_vector(), {0.99 + 0.01 * 1.25, 0.99 + 0.01 * 125},
                  1e-13, "moving_variance");
  // a second step compounds
  m->forward(x, ctx);
  expect_all_near(bn.weight("moving_mean")->value.to_double_vector(),
                  {0.99 * 0.025 + 0.01 * 2.5, 0.99 * 0.25 + 0.01 * 25}, 1e-14, "moving_mean step 2");
}

TEST(BatchNormForward, InferenceUsesMovingStats) {
  auto m = one_layer("[2]", "batch_normalization: {}");
  Layer& bn = m->layer(0);
  set_values(bn.weight("gamma")->value, {2, 0.5});
  set_values(bn.weight("beta")->value, {1, -1});
  set_values(bn.weight("moving_mean")->value, {1, 2});
  set_values(bn.weight("moving_variance")->value, {4, 0.25});
  Tensor x = Tensor::from_vector({2, 2}, std::vector<double>{3, 2, -1, 5});
  Context ctx = inference_ctx();
  auto y = m->forward(x, ctx).to_double_vector();
  expect_all_near(y,
                  {2 * 2 / std::sqrt(4.001) + 1, -1, 2 * -2 / std::sqrt(4.001) + 1, 0.5 * 3 / std::sqrt(0.251) - 1},
                  1e-14, "inference");
  // inference leaves the moving statistics alone
  expect_all_near(bn.weight("moving_mean")->value.to_double_vector(), {1, 2}, 0, "moving_mean untouched");
  expect_all_near(bn.weight("moving_variance")->value.to_double_vector(), {4, 0.25}, 0, "moving_variance untouched");
}

TEST(BatchNormForward, FrozenLayerRunsInInferenceModeEvenWhenTraining) {
  auto m = one_layer("[2]", "batch_normalization: {trainable: false}");
  m->init(1);
  set_values(m->layer(0).weight("moving_mean")->value, {1, 2});
  Tensor x = Tensor::from_vector({2, 2}, std::vector<double>{3, 2, -1, 5});
  Context ctx = training_ctx();
  auto y = m->forward(x, ctx).to_double_vector();
  expect_all_near(y, {2 / std::sqrt(1.001), 0, -2 / std::sqrt(1.001), 3 / std::sqrt(1.001)}, 1e-14, "frozen");
  expect_all_near(m->layer(0).weight("moving_mean")->value.to_double_vector(), {1, 2}, 0, "not updated");
  EXPECT_EQ(m->trainable_params(), 0);
}

TEST(BatchNormForward, CenterAndScaleOff) {
  auto m = one_layer("[2]", "batch_normalization: {center: false, scale: false, momentum: 0.9, epsilon: 0.01}");
  m->init(1);
  EXPECT_EQ(m->layer(0).weights().size(), 2u);
  EXPECT_EQ(m->layer(0).weight("gamma"), nullptr);
  EXPECT_EQ(m->layer(0).weight("beta"), nullptr);
  EXPECT_EQ(m->total_params(), 4);
  EXPECT_EQ(m->trainable_params(), 0);
  Tensor x = Tensor::from_vector({2, 2}, std::vector<double>{1, 0, 3, 4});
  Context ctx = training_ctx();
  auto y = m->forward(x, ctx).to_double_vector();  // mean [2, 2], var [1, 4]
  expect_all_near(y, {-1 / std::sqrt(1.01), -2 / std::sqrt(4.01), 1 / std::sqrt(1.01), 2 / std::sqrt(4.01)}, 1e-14,
                  "normalised");
  expect_all_near(m->layer(0).weight("moving_mean")->value.to_double_vector(), {0.2, 0.2}, 1e-15, "momentum 0.9");
  expect_all_near(m->layer(0).weight("moving_variance")->value.to_double_vector(), {1.0, 0.9 + 0.4}, 1e-15,
                  "momentum 0.9");
}

TEST(BatchNormForward, FourDimensionalStoresUnbiasedMovingVariance) {
  // Keras's fused path (rank-4 input, axis 1 or 3) feeds var·n/(n-1) into the moving variance while
  // normalising with the biased one (keras-semantics §3).
  auto m = one_layer("[2, 1, 2]", "batch_normalization: {axis: 1}");
  m->init(1);
  // channel 0 values {1,2,3,4}, channel 1 values {0,0,2,2} over 2 samples x 1 x 2
  Tensor x = Tensor::from_vector({2, 2, 1, 2}, std::vector<double>{1, 2, 0, 0, 3, 4, 2, 2});
  Context ctx = training_ctx();
  auto y = m->forward(x, ctx).to_double_vector();
  const double s0 = std::sqrt(1.25 + 1e-3), s1 = std::sqrt(1.0 + 1e-3);
  expect_all_near(y, {-1.5 / s0, -0.5 / s0, -1 / s1, -1 / s1, 0.5 / s0, 1.5 / s0, 1 / s1, 1 / s1}, 1e-14, "4-D");
  expect_all_near(m->layer(0).weight("moving_mean")->value.to_double_vector(), {0.025, 0.01}, 1e-15, "mean");
  expect_all_near(m->layer(0).weight("moving_variance")->value.to_double_vector(),
                  {0.99 + 0.01 * 1.25 * 4 / 3, 0.99 + 0.01 * 1.0 * 4 / 3}, 1e-15, "unbiased variance");
  // ...while a 2-D input stores the biased variance (checked in the training test above) and so does 3-D
  auto m3 = one_layer("[2, 2]", "batch_normalization: {axis: 1}");
  m3->init(1);
  m3->forward(Tensor::from_vector({2, 2, 2}, std::vector<double>{1, 2, 0, 0, 3, 4, 2, 2}), ctx);
  expect_all_near(m3->layer(0).weight("moving_variance")->value.to_double_vector(), {0.99 + 0.0125, 0.99 + 0.01},
                  1e-15, "3-D biased");
}

// ---- dropout family ------------------------------------------------------------------------------
TEST(DropoutForward, InvertedScalingPreservesTheMean) {
  auto m = one_layer("[500]", "dropout: {rate: 0.2}", DType::F32);
  Tensor x = Tensor::full({200, 500}, 1.0);
  Context ctx = training_ctx(9, 1);
  auto y = m->forward(x, ctx).to_double_vector();
  int64_t zeros = 0;
  double sum = 0;
  for (double v : y) {
    if (v == 0) ++zeros;
    else EXPECT_FLOAT_EQ(float(v), 1.25f);
    sum += v;
  }
  const double n = double(y.size());
  EXPECT_NEAR(double(zeros) / n, 0.2, 0.006);  // sd sqrt(.16/1e5) = 0.0013
  EXPECT_NEAR(sum / n, 1.0, 0.01);             // sd 0.0016
  // another step draws another mask; the same step the same one
  auto y2 = m->forward(x, ctx).to_double_vector();
  EXPECT_EQ(y, y2);
  Context ctx2 = training_ctx(9, 2);
  EXPECT_NE(y, m->forward(x, ctx2).to_double_vector());
}

TEST(DropoutForward, IdentityAtInference) {
  for (const char* layer : {"dropout: {rate: 0.5}", "alpha_dropout: {rate: 0.5}"}) {
    auto m = one_layer("[50]", layer);
    Tensor x = randn({4, 50}, 3);
    Context ctx = inference_ctx();
    EXPECT_EQ(m->forward(x, ctx).to_double_vector(), x.to_double_vector()) << layer;
  }
}

TEST(DropoutForward, AlphaDropoutKeepsMeanAndVarianceOfNormalisedInput) {
  auto m = one_layer("[500]", "alpha_dropout: {rate: 0.2}");
  Tensor x = randn({200, 500}, 5);  // mean 0, variance 1 (a SELU network's fixed point)
  Context ctx = training_ctx(4, 2);
  auto y = m->forward(x, ctx).to_double_vector();
  const double n = double(y.size());
  double mean = 0, sq = 0;
  for (double v : y) mean += v / n;
  for (double v : y) sq += (v - mean) * (v - mean) / n;
  EXPECT_NEAR(mean, 0.0, 0.015);            // sd of the mean ~0.003
  EXPECT_NEAR(std::sqrt(sq), 1.0, 0.015);   // sd of the std ~0.003
  // dropped units all take the same value a·α' + b
  const double p = 0.2, ap = -ops::kSeluScale * ops::kSeluAlpha;
  const double a = 1 / std::sqrt((1 - p) * (1 + p * ap * ap)), b = -a * ap * p;
  int64_t dropped = 0;
  for (double v : y)
    if (std::abs(v - (a * ap + b)) < 1e-12) ++dropped;
  EXPECT_NEAR(double(dropped) / n, 0.2, 0.006);
}

TEST(DropoutForward, McDropoutVariesAcrossPassesAtInference) {
  auto m = model_from_yaml(R"(model:
  input_shape: [20]
  layers:
    - dense: {units: 30, activation: relu}
    - mc_dropout: {rate: 0.3}
    - dense: {units: 5, activation: softmax}
)");
  m->init(8);
  Tensor x = randn({4, 20}, 9);
  // Each pass (a new step: masks are functions of seed, step and layer) gives another prediction.
  const int passes = 20;
  std::vector<std::vector<double>> outs;
  for (int s = 0; s < passes; ++s) {
    Context ctx = inference_ctx(1, s);
    outs.push_back(m->forward(x, ctx).to_double_vector());
  }
  double spread = 0;
  for (size_t i = 0; i < outs[0].size(); ++i) {
    double mean = 0, var = 0;
    for (auto& o : outs) mean += o[i] / passes;
    for (auto& o : outs) var += (o[i] - mean) * (o[i] - mean) / passes;
    spread += std::sqrt(var) / double(outs[0].size());
  }
  EXPECT_GT(spread, 1e-3);
  // the same pass repeated is reproducible
  Context ctx = inference_ctx(1, 3);
  EXPECT_EQ(m->forward(x, ctx).to_double_vector(), outs[3]);

  // Plain dropout is the identity at inference unless the context asks for MC dropout.
  auto plain = model_from_yaml(R"(model:
  input_shape: [20]
  layers:
    - dense: {units: 30, activation: relu}
    - dropout: {rate: 0.3}
    - dense: {units: 5, activation: softmax}
)");
  plain->init(8);
  Context c1 = inference_ctx(1, 1), c2 = inference_ctx(1, 2);
  auto p1 = plain->forward(x, c1).to_double_vector();
  EXPECT_EQ(p1, plain->forward(x, c2).to_double_vector());
  c1.mc_dropout = c2.mc_dropout = true;
  auto q1 = plain->forward(x, c1).to_double_vector();
  EXPECT_NE(q1, p1);
  EXPECT_NE(q1, plain->forward(x, c2).to_double_vector());
}

// ---- losses ------------------------------------------------------------------------------------------
double loss0(void (*fn)(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double), std::vector<double> p,
             std::vector<double> t) {
  const int64_t k = int64_t(p.size());
  Tensor loss({1}, Device::CPU, DType::F64);
  Tensor target = t.size() == 1 ? Tensor::from_vector({1}, t) : Tensor::from_vector({1, k}, t);
  fn(Tensor::from_vector({1, k}, p), target, loss, Tensor(), 1.0);
  return loss.at(0);
}

TEST(LossForward, FromLogits) {
  EXPECT_NEAR(loss0(ops::softmax_xent_sparse, {1, 2, 3}, {2}), 0.40760596444438013, 1e-15);
  EXPECT_NEAR(loss0(ops::softmax_xent_sparse, {1, 2, 3}, {0}), 2.40760596444438013, 1e-15);
  EXPECT_NEAR(loss0(ops::softmax_xent_dense, {1, 2, 3}, {0.5, 0, 0.5}), 1.40760596444438013, 1e-15);
  // stable for huge logits (no clipping on the logit path)
  EXPECT_NEAR(loss0(ops::softmax_xent_sparse, {1000, 0, -1000}, {1}), 1000.0, 1e-9);
  // sigmoid: max(z,0) - z·t + log(1+e^-|z|), mean over the last axis
  const double l1 = std::log1p(std::exp(-2.0)), l2 = 3 + std::log1p(std::exp(-3.0));
  EXPECT_NEAR(loss0(ops::sigmoid_xent, {2, 3}, {1, 0}), (l1 + l2) / 2, 1e-15);
  EXPECT_NEAR(loss0(ops::mse, {1, 2, 4}, {0, 2, 2}), 5.0 / 3, 1e-15);
}

TEST(LossForward, ProbabilitiesAreClippedLikeKeras) {
  // p clipped to [1e-7, 1-1e-7], then the log-probabilities renormalised (sparse): -log(1e-7) + log(1+1e-7)
  EXPECT_NEAR(loss0(ops::sparse_xent_probs, {0, 1, 0}, {0}), 16.118095750958314, 1e-9);
  EXPECT_NEAR(loss0(ops::sparse_xent_probs, {0.2, 0.3, 0.5}, {2}), -std::log(0.5), 1e-15);
  // categorical: p/Σp, clip, -Σ t log p
  EXPECT_NEAR(loss0(ops::categorical_xent_probs, {0, 2}, {1, 0}), -std::log(1e-7), 1e-9);
  EXPECT_NEAR(loss0(ops::categorical_xent_probs, {1, 3}, {0.5, 0.5}), -0.5 * (std::log(0.25) + std::log(0.75)), 1e-15);
  // binary: the epsilon is applied twice: -log(1e-7 + 1e-7)
  EXPECT_NEAR(loss0(ops::binary_xent_probs, {0.0}, {1}), 15.424948470398375, 1e-9);
  EXPECT_NEAR(loss0(ops::binary_xent_probs, {1.0}, {1}), 0.0, 1e-12);
  EXPECT_NEAR(loss0(ops::binary_xent_probs, {0.25, 0.5}, {1, 0}),
              -(std::log(0.25 + 1e-7) + std::log(0.5 + 1e-7)) / 2, 1e-15);
  // all finite at the extremes
  EXPECT_TRUE(std::isfinite(loss0(ops::binary_xent_probs, {1.0}, {0})));
}

TEST(LossForward, LabelsOutsideTheClassRangeThrow) {
  Tensor loss({1}, Device::CPU, DType::F64);
  Tensor z = Tensor::from_vector({1, 3}, std::vector<double>{1, 2, 3});
  EXPECT_THROW(ops::softmax_xent_sparse(z, Tensor::from_vector({1}, std::vector<double>{3}), loss, Tensor(), 1), DataError);
  EXPECT_THROW(ops::sparse_xent_probs(z, Tensor::from_vector({1}, std::vector<double>{-1}), loss, Tensor(), 1), DataError);
}

}  // namespace
// What Model::backward prefetches for a Dense before its turn: the weights (read), their gradients
// (written, only while trainable and not descending in the backward pass), the input and
// pre-activation saved by forward, and the buffers its backward writes. The saved input is the layer
// below's output itself.
TEST(DenseBackward, ListsTheOperandsItsBackwardTouches) {
  auto m = model_from_yaml("model:\n  input_shape: [4]\n  layers:\n    - dense: {units: 5, activation: elu}\n"
                           "    - dense: {units: 3, activation: selu}\n");
  Context ctx = training_ctx();
  const Tensor x = randn({6, 4}, 1);
  const Tensor h = m->layer(0).forward(x, ctx);
  const Tensor y = m->layer(1).forward(h, ctx);
  m->layer(1).backward(randn({6, 3}, 2), ctx, true);
  auto listed = [&](bool trainable, bool descending) {
    m->layer(1).set_trainable(trainable);
    std::vector<Layer::Touch> t;
    m->layer(1).backward_operands(&t, descending);
    std::map<const void*, bool> by_memory;  // start of the memory -> written
    for (const Layer::Touch& k : t) {
      EXPECT_TRUE(k.tensor->defined());
      by_memory[k.tensor->raw()] = k.write;
    }
    return by_memory;
  };
  for (bool trainable : {true, false})
    for (bool descending : {false, true}) {
      SCOPED_TRACE(str_cat(trainable ? "trainable" : "frozen", descending ? ", descending" : ""));
      auto got = listed(trainable, descending);
      const bool grads = trainable && !descending;
      const auto& w = m->layer(1).weights();
      EXPECT_EQ(got.count(w[0].value.raw()), 1u);
      EXPECT_FALSE(got[w[0].value.raw()]);
      EXPECT_EQ(got.count(w[1].value.raw()), 1u);
      EXPECT_EQ(got.count(w[0].grad.raw()), grads ? 1u : 0u);
      if (grads) {
        EXPECT_TRUE(got[w[0].grad.raw()]);
      }
      EXPECT_EQ(got.count(h.raw()), 1u) << "the saved input";
      EXPECT_FALSE(got[h.raw()]);
      EXPECT_EQ(got.count(y.raw()), 1u) << "the saved activation (written over its pre-activation)";
      // kernel, bias, input, activation, dz and dx buffers (+ 2 gradients when written)
      EXPECT_EQ(got.size(), grads ? 8u : 6u);
    }
}

}  // namespace lockstep::test
