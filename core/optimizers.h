// Optimizers with tf.keras 2.10's update rules and defaults (keras-semantics §4-5): SGD (momentum,
// nesterov), Adagrad, RMSprop (rho, momentum, centered), Adam (amsgrad), Adamax, Nadam; gradient
// clipping (clipvalue, clipnorm per tensor, global_clipnorm over all gradients) and the legacy
// `decay` (lr / (1 + decay·iterations)).
//
// Slots live in flat arenas the size of the model's gradient arena, so slot k of a weight is the view
// at the weight's gradient offset. The model keeps every gradient-carrying weight at the same offset
// in its weights arena (core/model.h), so when every layer is trainable an update is ONE fused loop
// over the whole arena; with frozen layers it runs per trainable weight. Either way the arithmetic
// per element is the same, so the two paths give bit-identical results.
//
// Clipping acts on the gradient the optimizer is given: the trainer hands it the all-reduced global
// mean gradient, so every rank clips by the same factor (keras-semantics §4, distributed order).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/config.h"
#include "core/model.h"
#include "core/tensor.h"

namespace lockstep {

struct ClipOptions {
  double clipvalue = 0.0;        // 0: off
  double clipnorm = 0.0;         // per tensor
  double global_clipnorm = 0.0;  // over all trainable gradients
};

class Optimizer {
 public:
  // `optimizer: {name: nadam, learning_rate: 0.001, ...}` or just `optimizer: adam` (Keras defaults).
  // Absent: RMSprop, Keras's compile() default.
  static std::unique_ptr<Optimizer> from_config(const ConfigNode& node);
  static const std::vector<std::string>& names();
  virtual ~Optimizer() = default;

  // Keras's class name (SGD, Adam, ...), used in slot names: "Adam/dense/kernel/m:0".
  const std::string& name() const { return name_; }

  // Allocate the slots for `model` (every gradient-carrying weight, frozen or not).
  void bind(const Model& model);
  // Clip the trainable gradients, then update the trainable weights. Returns the global L2 norm of the
  // gradients before clipping when global_clipnorm is set (NaN otherwise).
  // `descended`: the backward pass ran with Context::descent_rate = plain_descent_rate() and layers
  // that descend_in_backward() have already taken their step; their weights are skipped.
  double apply(Model& model, bool descended = false);

  // The rate of the next update when it is plain gradient descent, w -= rate·g (SGD without momentum
  // or clipping), which a layer can then fold into its own products; 0 otherwise.
  double plain_descent_rate() const;

  // The base rate (set by a schedule or a callback before the step); `decay` applies on top.
  double learning_rate() const { return lr_; }
  void set_learning_rate(double lr) { lr_ = lr; }
  // The rate the next update will use (legacy decay included).
  double effective_learning_rate() const;
  // The momentum a 1cycle schedule cycles: SGD's momentum, the Adam family's beta_1. False when the
  // optimizer has none (plain SGD, Adagrad, RMSprop without momentum).
  virtual bool has_momentum() const { return false; }
  virtual double momentum() const { return 0.0; }
  virtual void set_momentum(double) {}

  int64_t iterations() const { return iterations_; }
  const ClipOptions& clip() const { return clip_; }

  // Every slot tensor in Keras 2.10's order (slot type by slot type over all weights), named as
  // Keras names them ("Adam/dense/kernel/m:0"); views into the slots (copy before keeping).
  std::vector<std::pair<std::string, Tensor>> state() const;
  // The scalars: "iterations" and optimizer-level state (Nadam's momentum_cache), in double so that a
  // checkpoint restores them exactly.
  std::map<std::string, double> scalar_state();
  // Restore from `state()`'s names and `scalar_state()`'s keys (CheckpointError naming `source` on a
  // missing or misshapen tensor).
  void load_state(const std::vector<std::pair<std::string, Tensor>>& slots, const std::map<std::string, double>& scalars,
                  const std::string& source);

 protected:
  struct SlotSpec {
    std::string name;  // Keras's slot name: momentum, accumulator, rms, mg, m, v, vhat
    double initial = 0.0;
  };
  Optimizer(std::string name, double lr) : name_(std::move(name)), lr_(lr) {}
  virtual std::vector<SlotSpec> slot_specs() const = 0;
  // Optimizer-level state tensors (Nadam's momentum_cache), each a scalar; saved after the slots.
  virtual std::vector<std::pair<std::string, double*>> scalars() { return {}; }
  // Called once per step before the updates, with t = iterations + 1 and the step's rate.
  virtual void begin_step(int64_t /*t*/, double /*lr*/) {}
  // Whether update() is w -= lr·g whatever the state (before clipping).
  virtual bool plain_descent() const { return false; }
  // Update w (flat) from g with the slots' matching views.
  virtual void update(const Tensor& w, const Tensor& g, const std::vector<Tensor>& slots) = 0;

  // A hyper-parameter as the update sees it: Keras 2.10 reads beta_1, beta_2... as variables of the
  // weights' dtype (`_get_hyper(name, var_dtype)`), so a float32 model's bias corrections use
  // float(0.999): 1 - float(0.999) is 1e-3·(1 - 1.3e-5), a 6.4e-6 relative change of Adam's first steps.
  double hyper(double x) const { return f32_ ? double(float(x)) : x; }

  std::string name_;
  double lr_;
  double decay_ = 0.0;
  bool f32_ = true;  // the bound model's weights are float32
  ClipOptions clip_;
  int64_t iterations_ = 0;
  int64_t t_ = 1;        // the step being applied (iterations + 1), for bias corrections
  double step_lr_ = 0;   // the rate of the step being applied

 private:
  void clip_gradients(const std::vector<WeightRef>& refs, bool whole_arena, const Tensor& grads, double* global_norm);

  const Model* model_ = nullptr;
  std::vector<SlotSpec> specs_;
  std::vector<Tensor> slots_;  // one arena per slot type
};

}  // namespace lockstep
