#include "core/losses.h"

#include <algorithm>

namespace lockstep {

namespace {
const std::vector<std::string> kLossNames = {"sparse_categorical_crossentropy", "categorical_crossentropy",
                                             "binary_crossentropy", "mean_squared_error", "mse"};
const std::vector<std::string> kMetricNames = {"accuracy", "acc", "sparse_categorical_accuracy",
                                               "categorical_accuracy", "binary_accuracy"};
}  // namespace

std::string LossSpec::name() const {
  switch (kind) {
    case LossKind::SparseCategoricalCrossentropy: return "sparse_categorical_crossentropy";
    case LossKind::CategoricalCrossentropy: return "categorical_crossentropy";
    case LossKind::BinaryCrossentropy: return "binary_crossentropy";
    case LossKind::MeanSquaredError: return "mean_squared_error";
  }
  return "";
}

LossSpec parse_loss(const ConfigNode& node) {
  LossSpec spec;
  std::string name;
  ConfigNode args;
  if (!node.defined()) node.fail("a loss is required, e.g. `loss: sparse_categorical_crossentropy`");
  if (node.is_scalar()) {
    name = node.as_string();
  } else if (node.is_map() && node.size() == 1) {
    name = node.keys()[0];
    args = node[name];
  } else {
    node.fail("expected a loss name or {NAME: {from_logits: true}}");
  }
  if (std::find(kLossNames.begin(), kLossNames.end(), name) == kLossNames.end()) {
    std::string near = nearest_name(name, kLossNames);
    node.fail("unknown loss '" + name + "'; expected one of: " + join(kLossNames) +
              (near.empty() ? "" : "; did you mean '" + near + "'?"));
  }
  if (name == "sparse_categorical_crossentropy") spec.kind = LossKind::SparseCategoricalCrossentropy;
  if (name == "categorical_crossentropy") spec.kind = LossKind::CategoricalCrossentropy;
  if (name == "binary_crossentropy") spec.kind = LossKind::BinaryCrossentropy;
  if (name == "mean_squared_error" || name == "mse") spec.kind = LossKind::MeanSquaredError;
  if (args.defined()) {
    if (spec.kind == LossKind::MeanSquaredError) args.allow_keys({});
    else if (spec.kind == LossKind::SparseCategoricalCrossentropy) args.allow_keys({"from_logits"});
    else args.allow_keys({"from_logits", "label_smoothing"});
    spec.from_logits = args.get("from_logits", false);
    spec.label_smoothing = args.get_in("label_smoothing", 0.0, 0.0, 1.0);
  }
  return spec;
}

std::vector<MetricSpec> parse_metrics(const ConfigNode& node) {
  std::vector<MetricSpec> out;
  if (!node.defined()) return out;
  node.expect_seq();
  for (size_t i = 0; i < node.size(); ++i) {
    std::string m = node[i].as_string();
    if (std::find(kMetricNames.begin(), kMetricNames.end(), m) == kMetricNames.end()) {
      std::string near = nearest_name(m, kMetricNames);
      node[i].fail("unknown metric '" + m + "'; expected one of: " + join(kMetricNames) +
                   (near.empty() ? "" : "; did you mean '" + near + "'?"));
    }
    out.push_back({m == "acc" ? "accuracy" : m});
  }
  return out;
}

ops::Activation fusable_output(const LossSpec& loss, ops::Activation act) {
  if (loss.from_logits) return ops::Activation::Linear;
  const bool ce = loss.kind == LossKind::SparseCategoricalCrossentropy || loss.kind == LossKind::CategoricalCrossentropy;
  if (ce && act == ops::Activation::Softmax) return act;
  if (loss.kind == LossKind::BinaryCrossentropy && act == ops::Activation::Sigmoid) return act;
  return ops::Activation::Linear;
}

LossFunction::LossFunction(LossSpec spec, ops::Activation fused) : spec_(spec), fused_(fused) {}

Tensor LossFunction::targets_for(const Tensor& out, const Tensor& y) const {
  if (spec_.kind == LossKind::SparseCategoricalCrossentropy || out.rank() < 2) return y;
  const int64_t b = out.dim(0), per = out.numel() / std::max<int64_t>(b, 1);
  if (per == 1 || y.numel() == out.numel() || y.numel() != b) return y;
  if (!ones_.defined() || ones_.numel() != per || ones_.device() != out.device())
    ones_ = Tensor::full({1, per}, 1.0, out.device(), out.dtype());
  if (!expanded_.defined() || expanded_.numel() < b * per || expanded_.device() != out.device())
    expanded_ = Tensor({std::max<int64_t>(b * per, 1)}, out.device(), out.dtype());
  Tensor t = expanded_.view(0, {b, per});
  ops::gemm(false, false, 1.0, y.reshape({b, 1}), ones_, 0.0, t);  // t[i, j] = y[i]
  return t;
}

void LossFunction::compute(const Tensor& out_in, const Tensor& y_in, const Tensor& per_sample, const Tensor& grad_in,
                           double grad_scale) const {
  const bool logits = spec_.from_logits || fused_ != ops::Activation::Linear;
  // Outputs of rank > 2 (Dense on a sequence, as Keras allows) as [B, values per sample]: the per-sample
  // loss is the mean over them, as Keras's mean over the batch and the inner axes.
  const Tensor y = targets_for(out_in, y_in);
  const bool flat = spec_.kind != LossKind::SparseCategoricalCrossentropy && out_in.rank() > 2;
  const Tensor out = flat ? out_in.reshape({out_in.dim(0), -1}) : out_in;
  const Tensor grad = flat && grad_in.defined() ? grad_in.reshape(out.shape()) : grad_in;
  Tensor target = y;
  if (spec_.label_smoothing > 0 && spec_.kind != LossKind::SparseCategoricalCrossentropy) {
    // Keras: y*(1-s) + s/K for categorical, y*(1-s) + 0.5*s for binary.
    smoothed_ = y.clone();
    const double s = spec_.label_smoothing;
    const double k = spec_.kind == LossKind::CategoricalCrossentropy ? double(out.dim(-1)) : 2.0;
    ops::scale(smoothed_, 1.0 - s);
    Tensor add = Tensor::full(y.shape(), s / k, y.device(), y.dtype());
    ops::axpy(1.0, add, smoothed_);
    target = smoothed_;
  }
  Tensor y2 = target;
  if (spec_.kind != LossKind::SparseCategoricalCrossentropy && target.numel() == out.numel()) y2 = target.reshape(out.shape());
  switch (spec_.kind) {
    case LossKind::SparseCategoricalCrossentropy:
      return logits ? ops::softmax_xent_sparse(out, y, per_sample, grad, grad_scale)
                    : ops::sparse_xent_probs(out, y, per_sample, grad, grad_scale);
    case LossKind::CategoricalCrossentropy:
      return logits ? ops::softmax_xent_dense(out, y2, per_sample, grad, grad_scale)
                    : ops::categorical_xent_probs(out, y2, per_sample, grad, grad_scale);
    case LossKind::BinaryCrossentropy:
      return logits ? ops::sigmoid_xent(out, y2, per_sample, grad, grad_scale)
                    : ops::binary_xent_probs(out, y2, per_sample, grad, grad_scale);
    case LossKind::MeanSquaredError:
      return ops::mse(out, y2, per_sample, grad, grad_scale);
  }
}

Tensor LossFunction::predictions(const Tensor& out) const {
  if (fused_ == ops::Activation::Linear) return out;
  Tensor p = out.empty_like(out.shape());
  ops::activation_forward(fused_, 0.0, out, p);
  return p;
}

void LossFunction::metric(const MetricSpec& m, const Tensor& pred_in, const Tensor& y_in, const Tensor& out) const {
  const Tensor y = targets_for(pred_in, y_in);
  const Tensor pred = spec_.kind != LossKind::SparseCategoricalCrossentropy && pred_in.rank() > 2
                          ? pred_in.reshape({pred_in.dim(0), -1})
                          : pred_in;
  ops::AccuracyKind kind;
  const int64_t k = pred_in.rank() >= 2 ? pred_in.dim(-1) : 1;  // Keras resolves "accuracy" from the last axis
  if (m.name == "sparse_categorical_accuracy") kind = ops::AccuracyKind::Sparse;
  else if (m.name == "categorical_accuracy") kind = ops::AccuracyKind::Categorical;
  else if (m.name == "binary_accuracy") kind = ops::AccuracyKind::Binary;
  else if (k == 1) kind = ops::AccuracyKind::Binary;  // Keras: resolved from the shapes
  else if (y.numel() * k == pred.numel() && y.numel() != pred.numel()) kind = ops::AccuracyKind::Sparse;
  else kind = ops::AccuracyKind::Categorical;
  Tensor p = pred.rank() >= 2 ? pred : pred.reshape({-1, 1});
  Tensor yy = (kind == ops::AccuracyKind::Sparse) ? y : y.reshape(p.shape());
  ops::accuracy(kind, p, yy, out);
}

}  // namespace lockstep
