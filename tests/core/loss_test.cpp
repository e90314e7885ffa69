// LossFunction: the fused-softmax (logit) path through a whole model against finite differences,
// label smoothing and the accuracy metric's resolution from shapes.
#include <gtest/gtest.h>

#include <cmath>

#include "core/losses.h"
#include "tests/core/test_util.h"

namespace lockstep::test {
namespace {

LossSpec loss_from_yaml(const std::string& text) {
  ConfigNode cfg = load_config_string("loss: " + text);
  return parse_loss(cfg["loss"]);
}

// Mean loss of a model whose last layer's activation is fused into the loss (as training does).
TEST(LossFunctionGrad, FusedSoftmaxThroughTheModel) {
  auto m = model_from_yaml(R"(model:
  input_shape: [6]
  layers:
    - dense: {units: 5, activation: tanh, bias_initializer: {random_normal: {stddev: 0.3}}}
    - batch_normalization: {}
    - dense: {units: 4, activation: softmax, bias_initializer: {random_normal: {stddev: 0.3}}}
)");
  m->init(3);
  LossSpec spec = loss_from_yaml("sparse_categorical_crossentropy");
  ASSERT_EQ(fusable_output(spec, m->output_activation()), ops::Activation::Softmax);
  m->set_fused_output(ops::Activation::Softmax);
  LossFunction lf(spec, m->fused_output());
  const int64_t B = 7;
  Tensor x = randn({B, 6}, 50);
  Tensor y = Tensor::from_vector({B}, std::vector<double>{0, 1, 2, 3, 3, 1, 0});
  Tensor per({B}, Device::CPU, DType::F64);
  Context ctx = training_ctx();
  auto mean_loss = [&] {
    lf.compute(m->forward(x, ctx), y, per, Tensor(), 0.0);
    return ops::sum(per) / double(B);
  };
  // the fused loss equals the unfused one on the softmax probabilities (inside the clip range)
  Tensor logits = m->forward(x, ctx).clone();
  Tensor probs = lf.predictions(logits);
  Tensor per2({B}, Device::CPU, DType::F64);
  ops::sparse_xent_probs(probs, y, per2, Tensor(), 0.0);
  lf.compute(logits, y, per, Tensor(), 0.0);
  for (int64_t i = 0; i < B; ++i) EXPECT_NEAR(per.at(i), per2.at(i), 1e-12);
  for (int64_t i = 0; i < B; ++i) {
    double s = 0;
    for (int64_t c = 0; c < 4; ++c) s += probs.at(i * 4 + c);
    EXPECT_NEAR(s, 1.0, 1e-15);
  }
  // analytic: grad_scale = 1/B gives the mean's gradient
  Tensor out = m->forward(x, ctx);
  Tensor g = out.empty_like(out.shape());
  lf.compute(out, y, per, g, 1.0 / double(B));
  m->backward(g, ctx);
  Tensor grads = m->grads_arena().clone();
  for (const WeightRef& r : m->trainable_weights()) {
    GradErr e;
    double* w = r.weight->value.data<double>();
    for (int64_t j = 0; j < r.weight->value.numel(); ++j) {
      const double keep = w[j];
      w[j] = keep + kFdEps;
      const double lp = mean_loss();
      w[j] = keep - kFdEps;
      const double lm = mean_loss();
      w[j] = keep;
      e.add(grads.at(r.grad_offset + j), (lp - lm) / (2 * kFdEps));
    }
    EXPECT_LT(e.max_err, kFdTol) << m->layer(r.layer).name() << "/" << r.weight->name;
    EXPECT_GT(e.numeric_abs_sum, 1e-4) << m->layer(r.layer).name() << "/" << r.weight->name;
  }
}

TEST(LossFunction, FusionOnlyForMatchingPairs) {
  EXPECT_EQ(fusable_output(loss_from_yaml("categorical_crossentropy"), ops::Activation::Softmax), ops::Activation::Softmax);
  EXPECT_EQ(fusable_output(loss_from_yaml("binary_crossentropy"), ops::Activation::Sigmoid), ops::Activation::Sigmoid);
  EXPECT_EQ(fusable_output(loss_from_yaml("binary_crossentropy"), ops::Activation::Softmax), ops::Activation::Linear);
  EXPECT_EQ(fusable_output(loss_from_yaml("mse"), ops::Activation::Softmax), ops::Activation::Linear);
  EXPECT_EQ(fusable_output(loss_from_yaml("{sparse_categorical_crossentropy: {from_logits: true}}"),
                           ops::Activation::Softmax),
            ops::Activation::Linear);
}

TEST(LossFunction, LabelSmoothing) {
  // categorical: y·(1-s) + s/K; K = 4, s = 0.2 -> one-hot [0,0,1,0] becomes [.05,.05,.85,.05]
  LossFunction cat(loss_from_yaml("{categorical_crossentropy: {label_smoothing: 0.2}}"), ops::Activation::Linear);
  Tensor p = Tensor::from_vector({1, 4}, std::vector<double>{0.1, 0.2, 0.3, 0.4});
  Tensor t = Tensor::from_vector({1, 4}, std::vector<double>{0, 0, 1, 0});
  Tensor loss({1}, Device::CPU, DType::F64);
  cat.compute(p, t, loss, Tensor(), 1.0);
  EXPECT_NEAR(loss.at(0), -(0.05 * std::log(0.1) + 0.05 * std::log(0.2) + 0.85 * std::log(0.3) + 0.05 * std::log(0.4)),
              1e-12);
  EXPECT_EQ(t.at(2), 1.0);  // the caller's targets are not modified
  // binary: y·(1-s) + s/2
  LossFunction bin(loss_from_yaml("{binary_crossentropy: {label_smoothing: 0.2}}"), ops::Activation::Linear);
  Tensor pb = Tensor::from_vector({1, 1}, std::vector<double>{0.7});
  Tensor tb = Tensor::from_vector({1, 1}, std::vector<double>{1});
  bin.compute(pb, tb, loss, Tensor(), 1.0);
  EXPECT_NEAR(loss.at(0), -(0.9 * std::log(0.7 + 1e-7) + 0.1 * std::log(0.3 + 1e-7)), 1e-12);
}

TEST(LossFunction, AccuracyResolvedFromShapes) {
  LossFunction lf(loss_from_yaml("sparse_categorical_crossentropy"), ops::Activation::Linear);
  Tensor out({3}, Device::CPU, DType::F64);
  Tensor pred = Tensor::from_vector({3, 3}, std::vector<double>{0.1, 0.7, 0.2, 0.5, 0.3, 0.2, 0.1, 0.1, 0.8});
  lf.metric({"accuracy"}, pred, Tensor::from_vector({3}, std::vector<double>{1, 1, 2}), out);  // sparse labels
  EXPECT_EQ(out.to_double_vector(), (std::vector<double>{1, 0, 1}));
  lf.metric({"accuracy"}, pred, Tensor::from_vector({3, 3}, std::vector<double>{0, 1, 0, 1, 0, 0, 0, 1, 0}), out);
  EXPECT_EQ(out.to_double_vector(), (std::vector<double>{1, 1, 0}));  // one-hot: categorical
  Tensor pb = Tensor::from_vector({3, 1}, std::vector<double>{0.6, 0.4, 0.5});
  lf.metric({"accuracy"}, pb, Tensor::from_vector({3, 1}, std::vector<double>{1, 0, 1}), out);
  EXPECT_EQ(out.to_double_vector(), (std::vector<double>{1, 1, 0}));  // binary: > 0.5
}

TEST(LossFunction, UnknownLossSuggestsTheNearestName) {
  try {
    loss_from_yaml("sparse_categorical_crossentropi");
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'sparse_categorical_crossentropy'?"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lockstep::test
