// Keras losses and metrics (keras-semantics §8): sparse_categorical_crossentropy,
// categorical_crossentropy, binary_crossentropy, mean_squared_error; accuracy,
// sparse_categorical_accuracy, categorical_accuracy, binary_accuracy.
//
// As tf.keras does, a cross-entropy that follows a softmax (or sigmoid) output layer is computed from
// that layer's logits (stable log-softmax, no 1e-7 clipping): the model then emits logits and the
// loss applies the activation itself. Other probabilities are clipped to [1e-7, 1-1e-7].
#pragma once

#include <string>
#include <vector>

#include "core/config.h"
#include "core/ops.h"
#include "core/tensor.h"

namespace lockstep {

enum class LossKind { SparseCategoricalCrossentropy, CategoricalCrossentropy, BinaryCrossentropy, MeanSquaredError };

struct LossSpec {
  LossKind kind = LossKind::SparseCategoricalCrossentropy;
  bool from_logits = false;
  double label_smoothing = 0.0;
  std::string name() const;
};
LossSpec parse_loss(const ConfigNode& node);

struct MetricSpec {
  std::string name;  // as written: accuracy, sparse_categorical_accuracy, ...
};
std::vector<MetricSpec> parse_metrics(const ConfigNode& node);

// Evaluates a loss on a batch. `out` is the model's output: logits when `fused` (the output layer's
// softmax/sigmoid is applied here), probabilities or values otherwise.
class LossFunction {
 public:
  LossFunction(LossSpec spec, ops::Activation fused);
  // Per-sample losses into `per_sample` [B]; when `grad` is defined it receives
  // grad_scale * dL_i/d(out) summed as Σ_i (so grad_scale = 1/global_batch gives the mean's gradient).
  void compute(const Tensor& out, const Tensor& y, const Tensor& per_sample, const Tensor& grad, double grad_scale) const;
  // Probabilities (or values) from the model's output, for metrics and predictions.
  Tensor predictions(const Tensor& out) const;
  // Per-sample metric values [B] (accuracy is resolved from the shapes, as Keras does).
  void metric(const MetricSpec& m, const Tensor& pred, const Tensor& y, const Tensor& out) const;
  const LossSpec& spec() const { return spec_; }
  ops::Activation fused() const { return fused_; }

 private:
  LossSpec spec_;
  ops::Activation fused_;
  mutable Tensor smoothed_, expanded_, ones_;
  // Keras broadcasts a sample's label over an output with several values per sample (an output of
  // shape (None, 56, 1) against labels (None,) or (None, 1)): the targets as [B, values per sample].
  Tensor targets_for(const Tensor& out, const Tensor& y) const;
};

// Whether a loss should take the logits of an output layer with activation `act` (Keras's logit recovery).
ops::Activation fusable_output(const LossSpec& loss, ops::Activation act);

}  // namespace lockstep
