// Helpers shared by the core unit tests: models from YAML strings, random tensors, and central
// finite-difference gradient checks in float64.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/layers.h"
#include "core/model.h"
#include "core/ops.h"
#include "core/tensor.h"

namespace lockstep::test {

// Build a model from a run file's text (the `model:` section), as the `summary` verb does.
inline std::unique_ptr<Model> model_from_yaml(const std::string& yaml, DType dtype = DType::F64,
                                              const std::string& file = "test.yaml") {
  ConfigNode cfg = load_config_string(yaml, file);
  return Model::from_config(cfg["model"], Device::CPU, dtype);
}

// A model of one layer: `layer` is the YAML of one list entry, e.g. "dense: {units: 3}".
inline std::unique_ptr<Model> one_layer(const std::string& input_shape, const std::string& layer,
                                        DType dtype = DType::F64) {
  return model_from_yaml("model:\n  input_shape: " + input_shape + "\n  layers:\n    - " + layer + "\n", dtype);
}

inline Tensor randn(const Shape& shape, uint64_t seed, double stddev = 1.0, double mean = 0.0,
                    DType dtype = DType::F64) {
  Tensor t(shape, Device::CPU, dtype);
  ops::random_normal(t, mean, stddev, rng::Stream{seed, 0xABCD});
  return t;
}
inline Tensor randu(const Shape& shape, uint64_t seed, double lo, double hi, DType dtype = DType::F64) {
  Tensor t(shape, Device::CPU, dtype);
  ops::random_uniform(t, lo, hi, rng::Stream{seed, 0xBCDE});
  return t;
}

inline double dot(const Tensor& a, const Tensor& b) {
  auto av = a.to_double_vector(), bv = b.to_double_vector();
  EXPECT_EQ(av.size(), bv.size());
  double s = 0;
  for (size_t i = 0; i < av.size() && i < bv.size(); ++i) s += av[i] * bv[i];
  return s;
}

// Largest |analytic - numeric| / (1 + |numeric|) over one comparison, plus the size of the numeric
// gradient (so a test can insist the check was not vacuous: an all-zero gradient matches anything
// that is also zero).
struct GradErr {
  double max_err = 0;
  double numeric_abs_sum = 0;
  int64_t count = 0;
  void add(double analytic, double numeric) {
    max_err = std::max(max_err, std::abs(analytic - numeric) / (1.0 + std::abs(numeric)));
    numeric_abs_sum += std::abs(numeric);
    ++count;
  }
};

constexpr double kFdEps = 1e-5;
constexpr double kFdTol = 1e-6;  // float64 central differences agree to ~1e-9 on smooth functions

// L(x, θ) = Σ r ⊙ model(x): its gradient w.r.t. the output is r.
inline double probe_loss(Model& m, const Tensor& x, Context& ctx, const Tensor& r) {
  return dot(m.forward(x, ctx), r);
}

struct ModelGradCheck {
  GradErr input;                        // dL/dx
  std::vector<std::string> weight_names;  // "layer/weight"
  std::vector<GradErr> weights;           // one per trainable weight
};

// Analytic gradients from the layers' backward (dx through every layer, weight grads as assigned),
// compared with central differences of L over every element of x and of every trainable weight.
// `via_model_backward`: take the weight gradients from Model::backward instead of the layer loop.
// `analytic_scale` exists only for the self-test that shows a wrong gradient is caught.
inline ModelGradCheck check_model_grads(Model& m, const Tensor& x, Context ctx, bool via_model_backward = false,
                                        double analytic_scale = 1.0) {
  EXPECT_EQ(m.dtype(), DType::F64);
  ModelGradCheck out;
  Tensor y = m.forward(x, ctx);
  Tensor r = randn(y.shape(), 4242);
  Tensor dx;
  if (via_model_backward) {
    m.backward(r, ctx);
  } else {
    Tensor g = r;
    for (int i = int(m.layers().size()) - 1; i >= 0; --i) g = m.layer(i).backward(g, ctx, true);
    dx = g.clone();
  }
  Tensor grads = m.grads_arena().clone();

  auto numeric = [&](double* p) {
    const double keep = *p;
    *p = keep + kFdEps;
    const double lp = probe_loss(m, x, ctx, r);
    *p = keep - kFdEps;
    const double lm = probe_loss(m, x, ctx, r);
    *p = keep;
    return (lp - lm) / (2 * kFdEps);
  };
  if (dx.defined()) {
    EXPECT_EQ(dx.shape(), x.shape());
    double* xp = x.data<double>();
    for (int64_t j = 0; j < x.numel(); ++j) out.input.add(analytic_scale * dx.at(j), numeric(xp + j));
  }
  for (const WeightRef& ref : m.weight_refs()) {
    if (ref.grad_offset < 0) continue;
    GradErr e;
    double* wp = ref.weight->value.data<double>();
    for (int64_t j = 0; j < ref.weight->value.numel(); ++j)
      e.add(analytic_scale * grads.at(ref.grad_offset + j), numeric(wp + j));
    out.weight_names.push_back(m.layer(ref.layer).name() + "/" + ref.weight->name);
    out.weights.push_back(e);
  }
  return out;
}

// The usual assertions on a check: every gradient matches and none is vacuous.
inline void expect_grads_ok(const ModelGradCheck& c, bool expect_input = true, const std::string& what = "") {
  if (expect_input) {
    EXPECT_GT(c.input.count, 0) << what;
    EXPECT_LT(c.input.max_err, kFdTol) << what << ": input gradient";
    EXPECT_GT(c.input.numeric_abs_sum, 1e-3) << what << ": input gradient is (numerically) zero";
  }
  for (size_t i = 0; i < c.weights.size(); ++i) {
    EXPECT_LT(c.weights[i].max_err, kFdTol) << what << ": " << c.weight_names[i];
    EXPECT_GT(c.weights[i].numeric_abs_sum, 1e-3) << what << ": " << c.weight_names[i] << " gradient is zero";
  }
}

inline Context training_ctx(uint64_t seed = 7, int64_t step = 3) {
  Context c;
  c.training = true;
  c.seed = seed;
  c.step = step;
  return c;
}
inline Context inference_ctx(uint64_t seed = 7, int64_t step = 3) {
  Context c = training_ctx(seed, step);
  c.training = false;
  return c;
}

inline void set_values(const Tensor& t, const std::vector<double>& v) {
  ASSERT_EQ(int64_t(v.size()), t.numel());
  Tensor dst = t;  // a handle: writes into t's memory
  dst.copy_from(Tensor::from_vector(t.shape(), v).to(t.dtype()));
}

}  // namespace lockstep::test
