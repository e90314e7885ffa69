// A Sequential model: layers built from the run file's `model:` section, with every weight in one
// flat arena and every gradient in another (views bound into the layers' `Weight`s). One arena means
// one all-reduce covers the gradients, the optimizer is one loop per weight, and a checkpoint is one
// write.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/layers.h"
#include "core/tensor.h"

namespace lockstep {

struct WeightRef {
  int layer;
  Weight* weight;
  int64_t offset;       // in the weights arena
  int64_t grad_offset;  // in the gradients arena (-1 for state)
};

class Model {
 public:
  Model(Shape input_shape, std::vector<std::unique_ptr<Layer>> layers, std::string name = "sequential",
        Device device = Device::CPU, DType dtype = DType::F32);
  // Build from `model: {input_shape: [...], layers: [...]}`.
  static std::unique_ptr<Model> from_config(const ConfigNode& model, Device device = Device::CPU,
                                            DType dtype = DType::F32);

  // Initialise every weight from `seed` (a pure function of seed, layer index and weight index).
  void init(uint64_t seed);

  // Forward through every layer; x is [B, input_shape...]. Returns logits when the output activation
  // is fused into the loss (set_fused_output), else the last layer's output.
  Tensor forward(const Tensor& x, Context& ctx);
  // Backward from dL/d(output). `on_layer_done(i)` runs right after layer i's weight gradients are
  // assigned (gradient bucketing launches all-reduces from it); layers run in reverse order.
  void backward(const Tensor& dout, Context& ctx, const std::function<void(int)>& on_layer_done = {});

  // Make the last layer emit logits for a loss that applies `act` itself (Linear: no fusion).
  void set_fused_output(ops::Activation act);
  ops::Activation fused_output() const { return fused_; }
  ops::Activation output_activation() const;

  const Shape& input_shape() const { return input_shape_; }
  const Shape& output_shape() const { return layers_.back()->output_shape(); }
  std::vector<std::unique_ptr<Layer>>& layers() { return layers_; }
  const std::vector<std::unique_ptr<Layer>>& layers() const { return layers_; }
  Layer& layer(int i) { return *layers_.at(size_t(i)); }
  int find_layer(const std::string& name) const;  // -1 when absent
  const std::string& name() const { return name_; }
  Device device() const { return device_; }
  DType dtype() const { return dtype_; }

  const Tensor& weights_arena() const { return weights_; }
  const Tensor& grads_arena() const { return grads_; }
  // Move the gradients into `arena` (same numel, dtype and device as grads_arena(); e.g. memory that
  // the communicator reduces in place, Communicator::allocate_reduction_buffer) and point every
  // weight's gradient view into it. The current gradients are copied over.
  void place_gradients(const Tensor& arena);
  const std::vector<WeightRef>& weight_refs() const { return refs_; }
  // Gradient-carrying weights of the layers that are trainable now, in layer order.
  std::vector<WeightRef> trainable_weights() const;

  int64_t total_params() const;
  int64_t trainable_params() const;
  // Keras's model.summary() table.
  std::string summary() const;

  // l1/l2 penalties of all trainable weights (added once per step to the mean data loss).
  double regularization_loss() const;
  // g += d(penalty)/dw for every trainable regularised weight.
  void add_regularization_grads();
  // Max-norm constraints, after each optimizer update.
  void apply_constraints();

 private:
  void allocate();
  // Point every gradient-carrying weight's `grad` at its slice of grads_.
  void bind_gradients();
  // Prefetch what layer i's backward will touch (Layer::backward_operands) unless it is too big to stay.
  void prefetch_backward(int i, bool descending);

  Shape input_shape_;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::string name_;
  Device device_;
  DType dtype_;
  ops::Activation fused_ = ops::Activation::Linear;
  Tensor weights_, grads_;
  std::vector<WeightRef> refs_;
  std::vector<Layer::Touch> touches_;  // prefetch_backward()'s scratch
};

// Keras's automatic layer name stem for a class: to_snake_case("LeakyReLU") == "leaky_re_lu".
std::string keras_snake_case(const std::string& class_name);

}  // namespace lockstep
