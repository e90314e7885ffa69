// Layers of a model (Sequential or a graph of layer calls), with Keras's names, hyperparameters and
// defaults.
//
// Contract (every layer):
//  * `build(input_shape)` (per-sample shape, no batch axis) declares the layer's weights with
//    `declare()` and returns the per-sample output shape. The model then allocates every weight in one
//    flat arena and every gradient in another, and binds the views into `weights()` before `init()`.
//  * `forward(x, ctx)` returns the output; the layer keeps in its cache whatever backward needs (the
//    input handle, pre-activations, masks). The returned tensor is owned by the layer and valid until
//    its next forward. Buffers are reused across steps of the same batch size (no allocation in the
//    steady state).
//  * `backward(dy, ctx, need_dx)` ASSIGNS the gradients of the layer's trainable weights (for the
//    most recent forward) and returns dL/dx when `need_dx` (the first layer skips it).
//  * A frozen layer (`trainable: false`) computes no weight gradients, and a frozen
//    BatchNormalization runs in inference mode (Keras: `trainable=False` forces training=False).
//  * Merge layers take several inputs: they override the `*_multi` forms (whose defaults serve every
//    single-input layer through the plain ones).
//  * Calling a layer again (Keras: a layer object applied to other tensors, its weights shared) runs a
//    `clone()` of it, made before either is built: its own caches, its weights bound by the model to the
//    first call's values, its gradients summed into the first call's (Model).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/initializers.h"
#include "core/ops.h"
#include "core/tensor.h"

namespace lockstep {

struct Regularizer {
  double l1 = 0.0, l2 = 0.0;
  bool active() const { return l1 != 0.0 || l2 != 0.0; }
};
Regularizer parse_regularizer(const ConfigNode& node);

struct MaxNormConstraint {
  double max_value = 0.0;  // 0: no constraint
  int axis = 0;
  bool active() const { return max_value > 0.0; }
};
MaxNormConstraint parse_constraint(const ConfigNode& node);

// One weight of a layer; `value` and `grad` are views into the model's arenas.
struct Weight {
  std::string name;            // Keras's: kernel, bias, gamma, beta, moving_mean, moving_variance, alpha
  Shape shape;
  bool trainable = true;       // false for state such as BN's moving statistics
  Initializer init;
  Regularizer regularizer;
  MaxNormConstraint constraint;
  Tensor value;
  Tensor grad;                 // undefined for state
};

// What a forward/backward pass needs to know besides its input.
struct Context {
  bool training = false;
  bool mc_dropout = false;      // keep (alpha) dropout active outside training (MC dropout)
  uint64_t seed = 0;            // the run's seed
  int64_t step = 0;             // the global step: dropout masks and RReLU slopes derive from (seed, step, layer)
  int64_t global_batch = 0;     // samples in the global batch (all ranks); 0 = this rank's batch
  // Position of this rank's first sample within the global batch: dropout masks are drawn per element
  // of the global batch, so N ranks draw together the mask one process draws (and never the same one).
  int64_t sample_offset = 0;
  // > 0: the step's update is plain gradient descent at this rate (w -= rate·g, UpdateStep in one
  // process), and layers that descend_in_backward() apply it to their weights inside backward().
  double descent_rate = 0.0;
  // Sum-reduce a float64 tensor across ranks in place (synchronized BN); null in one process.
  std::function<void(const Tensor&)> all_reduce_sum;
};

// A reusable buffer: `get(shape)` returns a view, reallocating only when the capacity is too small.
class Buffer {
 public:
  Tensor get(const Shape& shape, const Tensor& like);
  Tensor get(const Shape& shape, Device device, DType dtype);
  // The memory the next get() of the same size returns (undefined before the first).
  const Tensor& storage() const { return storage_; }

 private:
  Tensor storage_;
};

// A layer's output as an affine normalisation per feature: y = gamma*x̂ + beta, x̂ = (x - mean)/sqrt(var + eps)
// (gamma/beta undefined when scale/center are off). `sums` ([2C] float64) receives Σdy and Σdy·x̂.
struct NormalizedOutput {
  Tensor x, mean, var, gamma, beta, sums;
  ops::FeatureView view;
  double eps = 0.0;
};

class Layer {
 public:
  virtual ~Layer() = default;
  // The run file's key (snake_case of Keras's class name) and Keras's class name.
  virtual std::string key() const = 0;
  virtual std::string keras_class() const = 0;
  const std::string& name() const { return name_; }
  void set_name(std::string n) { name_ = std::move(n); }
  int index() const { return index_; }
  void set_index(int i) { index_ = i; }
  // The run file's arguments this layer was made from (`{units: 100, ...}`; undefined when made in
  // code): what an exporter writes as Keras's layer config, with Keras's defaults for the rest.
  const ConfigNode& args() const { return args_; }
  void set_args(ConfigNode a) { args_ = std::move(a); }

  virtual Shape build(const Shape& input_shape) = 0;
  virtual Tensor forward(const Tensor& x, Context& ctx) = 0;
  virtual Tensor backward(const Tensor& dy, Context& ctx, bool need_dx) = 0;

  // Several inputs (merge layers override these and the counts).
  virtual int min_inputs() const { return 1; }
  virtual int max_inputs() const { return 1; }
  virtual Shape build_multi(const std::vector<Shape>& in) { return build(in.at(0)); }
  virtual Tensor forward_multi(const std::vector<Tensor>& xs, Context& ctx) { return forward(xs.at(0), ctx); }
  // dL/dx_i for each input i with need_dx[i] (undefined for the others).
  virtual std::vector<Tensor> backward_multi(const Tensor& dy, Context& ctx, const std::vector<bool>& need_dx) {
    return {backward(dy, ctx, need_dx.at(0))};
  }
  // An unbuilt copy with the same hyperparameters (only valid before build()).
  virtual std::unique_ptr<Layer> clone() const = 0;

  // Whether backward() applies Context::descent_rate to this layer's weights itself, never writing
  // their gradients (the optimizer then skips them). Only for weights without l1/l2 penalties, whose
  // gradients the model completes after the backward pass, and never for a layer called more than once
  // (its next call's backward still needs the weights before the step).
  bool descends_in_backward() const { return !shared_ && can_descend_in_backward(); }
  virtual bool can_descend_in_backward() const { return false; }
  // Called more than once in the model (its weights shared between the calls).
  bool shared() const { return shared_; }
  void set_shared(bool s) { shared_ = s; }

  std::vector<Weight>& weights() { return weights_; }
  const std::vector<Weight>& weights() const { return weights_; }
  Weight* weight(const std::string& name);

  bool trainable() const { return trainable_; }
  void set_trainable(bool t) { trainable_ = t; }
  const Shape& input_shape() const { return input_shape_; }
  const Shape& output_shape() const { return output_shape_; }

  // For a final softmax/sigmoid fused into the loss: the layer emits pre-activation logits.
  virtual ops::Activation output_activation() const { return ops::Activation::Linear; }
  virtual void set_emit_logits(bool) {}
  // A ReLU's backward done by the one layer that consumes this layer's output (Model::build pairs a ReLU
  // convolution with a max pooling that is its only consumer): the producer, whose output is relu(z), then
  // takes dL/dy as dL/dz, and the consumer routes its gradient only where its input is > 0 (relu'), in its
  // own pass. Each returns false when it cannot take its part (nothing is changed then).
  virtual bool set_relu_backward_in_consumer(bool) { return false; }
  virtual bool set_relu_gate(bool) { return false; }
  // A ReLU layer fed by this layer's output alone (Model::build pairs them, e.g. a BatchNormalization or
  // an Add under an Activation('relu')): the producer applies the ReLU in its own forward pass and does the
  // ReLU's backward in its own backward (`absorb_relu`); the ReLU layer then passes values and gradients
  // through unchanged (`set_relu_in_producer`). Each returns false when it cannot take its part.
  virtual bool absorb_relu(bool) { return false; }
  virtual bool set_relu_in_producer(bool) { return false; }

  // Cross-layer backward at the bottom of the trainable stack (Model::backward). A layer that needs
  // no input gradient and whose output is a normalisation describes it (`normalized_output`); the
  // layer above may then fill its `sums` from its own products instead of forming dL/dy
  // (`backward_to_normalized`, false when it cannot), and `backward_from_sums` finishes the layer.
  virtual bool normalized_output(NormalizedOutput*) { return false; }
  virtual void backward_from_sums(const NormalizedOutput&) {}
  virtual bool backward_to_normalized(const Tensor&, Context&, const NormalizedOutput&) { return false; }

  // The memory this layer's next backward reads and writes, for the model to prefetch while the layer
  // above computes its own (Model::backward). The base lists the weights (read) and the trainable ones'
  // gradients (written, unless `descending` and the layer descends_in_backward()); a layer adds what
  // its forward saved and its buffers.
  struct Touch {
    const Tensor* tensor;
    bool write;
  };
  virtual void backward_operands(std::vector<Touch>* out, bool descending) const;

  void init_weights(uint64_t seed);

 protected:
  Weight& declare(const std::string& name, Shape shape, const Initializer& init, bool trainable = true);
  // Whether this forward should compute batch statistics / random masks.
  bool training(const Context& ctx) const { return ctx.training && trainable_; }
  // The rate at which this backward takes the step itself (descends_in_backward); 0: write gradients.
  double descent_rate(const Context& ctx) const {
    return ctx.descent_rate > 0.0 && descends_in_backward() ? ctx.descent_rate : 0.0;
  }

  std::string name_;
  ConfigNode args_;
  int index_ = 0;
  bool trainable_ = true;
  bool shared_ = false;
  Shape input_shape_, output_shape_;
  std::vector<Weight> weights_;
};

// Parse one `- key: {args}` entry of `model.layers`.
// Parse one `- key: {args}` entry; `extra_keys` (such as a graph's `inputs`) may stand beside the key.
std::unique_ptr<Layer> make_layer(const ConfigNode& entry, const std::vector<std::string>& extra_keys = {});
const std::vector<std::string>& layer_keys();
ops::Activation parse_activation(const ConfigNode& node, double* alpha);
std::string activation_name(ops::Activation a);

// ---- the layers ------------------------------------------------------------------------------------

class Flatten : public Layer {
 public:
  std::unique_ptr<Layer> clone() const override { return std::make_unique<Flatten>(*this); }
  std::string key() const override { return "flatten"; }
  std::string keras_class() const override { return "Flatten"; }
  Shape build(const Shape& in) override;
  Tensor forward(const Tensor& x, Context& ctx) override;
  Tensor backward(const Tensor& dy, Context& ctx, bool need_dx) override;

 private:
  Shape in_batch_shape_;
};

class Dense : public Layer {
 public:
  std::unique_ptr<Layer> clone() const override { return std::make_unique<Dense>(*this); }
  Dense(int64_t units, ops::Activation act, double alpha, bool use_bias, Initializer kernel_init,
        Initializer bias_init, Regularizer kernel_reg, Regularizer bias_reg, MaxNormConstraint kernel_constraint);
  std::string key() const override { return "dense"; }
  std::string keras_class() const override { return "Dense"; }
  Shape build(const Shape& in) override;
  Tensor forward(const Tensor& x, Context& ctx) override;
  Tensor backward(const Tensor& dy, Context& ctx, bool need_dx) override;
  bool backward_to_normalized(const Tensor& dy, Context& ctx, const NormalizedOutput& in) override;
  ops::Activation output_activation() const override { return act_; }
  void set_emit_logits(bool e) override { emit_logits_ = e; }
  void backward_operands(std::vector<Touch>* out, bool descending) const override;
  bool can_descend_in_backward() const override;

 private:
  int64_t units_;
  ops::Activation act_;
  double alpha_;
  bool use_bias_;
  Initializer kernel_init_, bias_init_;
  Regularizer kernel_reg_, bias_reg_;
  MaxNormConstraint kernel_constraint_;
  bool emit_logits_ = false;
  // cache
  Tensor x_;
  Buffer z_buf_, y_buf_, dz_buf_, dx_buf_, xhat_buf_, colsum_buf_;
  Tensor z_, y_;
  Tensor pre_activation_grad(const Tensor& dy);
  void descend(const Tensor& dz, double rate);
};

// Activation as a layer: activation, leaky_relu (alpha 0.3), elu (alpha 1.0), relu, softmax.
class ActivationLayer : public Layer {
 public:
  std::unique_ptr<Layer> clone() const override { return std::make_unique<ActivationLayer>(*this); }
  ActivationLayer(std::string key, std::string keras_class, ops::Activation act, double alpha)
      : key_(std::move(key)), class_(std::move(keras_class)), act_(act), alpha_(alpha) {}
  std::string key() const override { return key_; }
  std::string keras_class() const override { return class_; }
  Shape build(const Shape& in) override;
  Tensor forward(const Tensor& x, Context& ctx) override;
  Tensor backward(const Tensor& dy, Context& ctx, bool need_dx) override;
  ops::Activation output_activation() const override { return act_; }
  void set_emit_logits(bool e) override { emit_logits_ = e; }
  bool set_relu_in_producer(bool on) override;

 private:
  std::string key_, class_;
  ops::Activation act_;
  double alpha_;
  bool emit_logits_ = false;
  bool in_producer_ = false;  // a ReLU its producer applies (Layer::absorb_relu): values pass through
  Tensor x_, y_;
  Buffer y_buf_, dx_buf_;
};

// PReLU: a learned slope per input element (shape input_shape with shared axes set to 1).
class PReLU : public Layer {
 public:
  std::unique_ptr<Layer> clone() const override { return std::make_unique<PReLU>(*this); }
  PReLU(Initializer alpha_init, std::vector<int64_t> shared_axes, Regularizer reg, MaxNormConstraint c)
      : alpha_init_(std::move(alpha_init)), shared_axes_(std::move(shared_axes)), reg_(reg), constraint_(c) {}
  std::string key() const override { return "prelu"; }
  std::string keras_class() const override { return "PReLU"; }
  Shape build(const Shape& in) override;
  Tensor forward(const Tensor& x, Context& ctx) override;
  Tensor backward(const Tensor& dy, Context& ctx, bool need_dx) override;

 private:
  Initializer alpha_init_;
  std::vector<int64_t> shared_axes_;
  Regularizer reg_;
  MaxNormConstraint constraint_;
  ops::Broadcast map_;
  Tensor x_;
  Buffer y_buf_, dx_buf_, scratch_;
};

// RReLU (not in Keras; the RReLU paper / PyTorch definition): slope ~ U[lower, upper) per element
// while training, (lower+upper)/2 at inference.
class RReLU : public Layer {
 public:
  std::unique_ptr<Layer> clone() const override { return std::make_unique<RReLU>(*this); }
  RReLU(double lower, double upper) : lower_(lower), upper_(upper) {}
  std::string key() const override { return "rrelu"; }
  std::string keras_class() const override { return "RReLU"; }
  Shape build(const Shape& in) override;
  Tensor forward(const Tensor& x, Context& ctx) override;
  Tensor backward(const Tensor& dy, Context& ctx, bool need_dx) override;

 private:
  double lower_, upper_;
  bool was_training_ = false;
  Tensor x_, y_;
  Buffer y_buf_, slopes_buf_, dx_buf_;
  Tensor slopes_;
};

class BatchNormalization : public Layer {
 public:
  std::unique_ptr<Layer> clone() const override { return std::make_unique<BatchNormalization>(*this); }
  BatchNormalization(int axis, double momentum, double epsilon, bool center, bool scale, Initializer beta_init,
                     Initializer gamma_init, Initializer mm_init, Initializer mv_init, bool sync)
      : axis_(axis), momentum_(momentum), epsilon_(epsilon), center_(center), scale_(scale),
        beta_init_(std::move(beta_init)), gamma_init_(std::move(gamma_init)), mm_init_(std::move(mm_init)),
        mv_init_(std::move(mv_init)), sync_(sync) {}
  std::string key() const override { return "batch_normalization"; }
  std::string keras_class() const override { return "BatchNormalization"; }
  Shape build(const Shape& in) override;
  Tensor forward(const Tensor& x, Context& ctx) override;
  Tensor backward(const Tensor& dy, Context& ctx, bool need_dx) override;
  bool normalized_output(NormalizedOutput* out) override;
  void backward_from_sums(const NormalizedOutput& n) override;
  bool absorb_relu(bool on) override;
  bool sync() const { return sync_; }

 private:
  int axis_;  // axis of the batched input (negative counts from the end)
  double momentum_, epsilon_;
  bool center_, scale_;
  Initializer beta_init_, gamma_init_, mm_init_, mv_init_;
  bool sync_;
  bool bessel_ = false;  // Keras's fused path (4-D inputs) stores the unbiased variance
  bool relu_ = false;    // a following ReLU layer's forward and backward done here (Layer::absorb_relu)
  // cache
  bool was_training_ = false;
  ops::FeatureView view_;
  Tensor x_, y_;  // y_: kept when relu_ (the ReLU's output gates the gradient)
  Tensor mean_, var_, stats_, sums_;
  double stats_count_ = 0;
  Buffer y_buf_, dx_buf_;
  Tensor g(const std::string& n) { Weight* w = weight(n); return w ? w->value : Tensor(); }
  Tensor xhat_mean();
  Tensor xhat_var();
  const Tensor& grad_sums();
  bool owes_param_grads();
  void set_param_grads(const Tensor& sums);
};

// Dropout (inverted scaling) and AlphaDropout; `mc` keeps them active at inference (MC dropout).
class Dropout : public Layer {
 public:
  std::unique_ptr<Layer> clone() const override { return std::make_unique<Dropout>(*this); }
  Dropout(double rate, bool alpha, bool mc) : rate_(rate), alpha_(alpha), mc_(mc) {}
  std::string key() const override { return alpha_ ? (mc_ ? "mc_alpha_dropout" : "alpha_dropout") : (mc_ ? "mc_dropout" : "dropout"); }
  std::string keras_class() const override { return alpha_ ? (mc_ ? "MCAlphaDropout" : "AlphaDropout") : (mc_ ? "MCDropout" : "Dropout"); }
  Shape build(const Shape& in) override;
  Tensor forward(const Tensor& x, Context& ctx) override;
  Tensor backward(const Tensor& dy, Context& ctx, bool need_dx) override;

 private:
  double rate_;
  bool alpha_, mc_;
  bool active_ = false;
  Buffer mask_buf_, y_buf_, dx_buf_;
  Tensor mask_;
};

// ---- convolutional layers (NHWC: Keras's channels_last) --------------------------------------------
// The window arguments of a 2-D layer as the run file gives them (Keras's names and defaults).
struct Window2dArgs {
  int64_t k_h = 1, k_w = 1, stride_h = 1, stride_w = 1, dil_h = 1, dil_w = 1;
  bool same = false;  // padding: same | valid
};
// Geometry of the layer's op for a batch; throws ConfigError naming `what` when the window does not fit.
ops::Window2d window_geometry(const Window2dArgs& a, const Shape& in, int64_t out_c, int64_t groups,
                              const std::string& layer, const char* size_key);

// Conv2D (kernel [k_h, k_w, in/groups, filters]) and DepthwiseConv2D (depthwise_kernel
// [k_h, k_w, in, depth_multiplier]: groups == in channels, output channel c·m + j reads input channel c).
class Conv2D : public Layer {
 public:
  struct Args {
    Window2dArgs window;
    int64_t filters = 0;           // Conv2D
    int64_t groups = 1;            // Conv2D
    int64_t depth_multiplier = 0;  // > 0: DepthwiseConv2D
    ops::Activation act = ops::Activation::Linear;
    double alpha = 0;
    bool use_bias = true;
    Initializer kernel_init, bias_init;
    Regularizer kernel_reg, bias_reg;
    MaxNormConstraint kernel_constraint;
  };
  explicit Conv2D(Args a) : a_(std::move(a)) {}
  std::unique_ptr<Layer> clone() const override { return std::make_unique<Conv2D>(*this); }
  bool depthwise() const { return a_.depth_multiplier > 0; }
  std::string key() const override { return depthwise() ? "depthwise_conv2d" : "conv2d"; }
  std::string keras_class() const override { return depthwise() ? "DepthwiseConv2D" : "Conv2D"; }
  Shape build(const Shape& in) override;
  Tensor forward(const Tensor& x, Context& ctx) override;
  Tensor backward(const Tensor& dy, Context& ctx, bool need_dx) override;
  ops::Activation output_activation() const override { return a_.act; }
  void set_emit_logits(bool e) override { emit_logits_ = e; }
  bool set_relu_backward_in_consumer(bool on) override;
  void backward_operands(std::vector<Touch>* out, bool descending) const override;

 private:
  Args a_;
  ops::Window2d geom_;  // batch set per forward
  bool emit_logits_ = false;
  bool relu_in_consumer_ = false;  // backward's dy is already dL/dz
  Tensor x_, z_, y_;
  Buffer z_buf_, y_buf_, dz_buf_, dx_buf_;
};

// MaxPooling2D / AveragePooling2D (pool_size 2, strides = pool_size, padding valid by default).
class Pooling2D : public Layer {
 public:
  Pooling2D(bool is_max, Window2dArgs w) : max_(is_max), w_(w) {}
  std::unique_ptr<Layer> clone() const override { return std::make_unique<Pooling2D>(*this); }
  std::string key() const override { return max_ ? "max_pooling2d" : "average_pooling2d"; }
  std::string keras_class() const override { return max_ ? "MaxPooling2D" : "AveragePooling2D"; }
  Shape build(const Shape& in) override;
  Tensor forward(const Tensor& x, Context& ctx) override;
  Tensor backward(const Tensor& dy, Context& ctx, bool need_dx) override;
  bool set_relu_gate(bool on) override;

 private:
  bool max_;
  bool relu_gate_ = false;  // the input is a ReLU's output whose backward this layer does
  Window2dArgs w_;
  ops::Window2d geom_;
  Tensor x_, y_;
  Buffer y_buf_, dx_buf_;
};

// GlobalAveragePooling2D / GlobalMaxPooling2D: [H, W, C] -> [C] ([1, 1, C] with keepdims).
class GlobalPooling2D : public Layer {
 public:
  GlobalPooling2D(bool is_max, bool keepdims) : max_(is_max), keepdims_(keepdims) {}
  std::unique_ptr<Layer> clone() const override { return std::make_unique<GlobalPooling2D>(*this); }
  std::string key() const override { return max_ ? "global_max_pooling2d" : "global_average_pooling2d"; }
  std::string keras_class() const override { return max_ ? "GlobalMaxPooling2D" : "GlobalAveragePooling2D"; }
  Shape build(const Shape& in) override;
  Tensor forward(const Tensor& x, Context& ctx) override;
  Tensor backward(const Tensor& dy, Context& ctx, bool need_dx) override;

 private:
  bool max_, keepdims_;
  ops::Window2d geom_;
  Tensor x_, y_;
  Buffer y_buf_, dx_buf_;
};

// ZeroPadding2D: padding ((top, bottom), (left, right)).
class ZeroPadding2D : public Layer {
 public:
  ZeroPadding2D(int64_t top, int64_t bottom, int64_t left, int64_t right) : t_(top), b_(bottom), l_(left), r_(right) {}
  std::unique_ptr<Layer> clone() const override { return std::make_unique<ZeroPadding2D>(*this); }
  std::string key() const override { return "zero_padding2d"; }
  std::string keras_class() const override { return "ZeroPadding2D"; }
  Shape build(const Shape& in) override;
  Tensor forward(const Tensor& x, Context& ctx) override;
  Tensor backward(const Tensor& dy, Context& ctx, bool need_dx) override;

 private:
  int64_t t_, b_, l_, r_;
  Buffer y_buf_, dx_buf_;
};

// SpatialDropout2D: drops whole channels of a sample (one draw per sample and channel, of the global batch).
class SpatialDropout2D : public Layer {
 public:
  explicit SpatialDropout2D(double rate) : rate_(rate) {}
  std::unique_ptr<Layer> clone() const override { return std::make_unique<SpatialDropout2D>(*this); }
  std::string key() const override { return "spatial_dropout2d"; }
  std::string keras_class() const override { return "SpatialDropout2D"; }
  Shape build(const Shape& in) override;
  Tensor forward(const Tensor& x, Context& ctx) override;
  Tensor backward(const Tensor& dy, Context& ctx, bool need_dx) override;

 private:
  double rate_;
  bool active_ = false;
  Tensor mask_;
  Buffer mask_buf_, y_buf_, dx_buf_;
};

// Keras's InputLayer: a model input (a graph model's `inputs:`), the identity.
class InputLayer : public Layer {
 public:
  explicit InputLayer(Shape shape) : shape_(std::move(shape)) {}
  std::unique_ptr<Layer> clone() const override { return std::make_unique<InputLayer>(*this); }
  std::string key() const override { return "input"; }
  std::string keras_class() const override { return "InputLayer"; }
  const Shape& shape() const { return shape_; }
  Shape build(const Shape& in) override;
  Tensor forward(const Tensor& x, Context&) override { return x; }
  Tensor backward(const Tensor& dy, Context&, bool need_dx) override { return need_dx ? dy : Tensor(); }

 private:
  Shape shape_;
};

// Keras's Reshape: target_shape per sample, one dimension may be -1.
class Reshape : public Layer {
 public:
  explicit Reshape(Shape target) : target_(std::move(target)) {}
  std::unique_ptr<Layer> clone() const override { return std::make_unique<Reshape>(*this); }
  std::string key() const override { return "reshape"; }
  std::string keras_class() const override { return "Reshape"; }
  Shape build(const Shape& in) override;
  Tensor forward(const Tensor& x, Context& ctx) override;
  Tensor backward(const Tensor& dy, Context& ctx, bool need_dx) override;

 private:
  Shape target_;
};

// Keras's merge layers: Concatenate (along `axis` of the batched tensor, -1 by default), and the
// elementwise Add, Subtract (two inputs), Multiply, Average, Maximum, Minimum (inputs of one shape).
// Maximum/Minimum fold pairwise, ties going to the earlier input (TensorFlow's gradient).
class Merge : public Layer {
 public:
  enum class Op { Concatenate, Add, Subtract, Multiply, Average, Maximum, Minimum };
  Merge(Op op, int axis = -1) : op_(op), axis_(axis) {}
  std::unique_ptr<Layer> clone() const override { return std::make_unique<Merge>(*this); }
  std::string key() const override;
  std::string keras_class() const override;
  int min_inputs() const override { return 2; }
  int max_inputs() const override { return op_ == Op::Subtract ? 2 : 1 << 20; }
  Shape build(const Shape& in) override;
  Shape build_multi(const std::vector<Shape>& in) override;
  Tensor forward(const Tensor& x, Context& ctx) override;
  Tensor forward_multi(const std::vector<Tensor>& xs, Context& ctx) override;
  Tensor backward(const Tensor& dy, Context& ctx, bool need_dx) override;
  std::vector<Tensor> backward_multi(const Tensor& dy, Context& ctx, const std::vector<bool>& need_dx) override;
  bool absorb_relu(bool on) override;

 private:
  Op op_;
  bool relu_ = false;    // Add: a following ReLU layer's forward and backward done here (Layer::absorb_relu)
  Tensor y_;             // the output, kept when relu_
  int axis_;             // Concatenate: as given (batched, negative from the end); after build, per-sample
  std::vector<Shape> in_shapes_;
  std::vector<Tensor> xs_;
  std::vector<Buffer> partial_;  // Maximum/Minimum's fold: partial results of inputs 0..k
  std::vector<Buffer> dx_buf_;
  Buffer y_buf_, tmp_buf_[2];
};

}  // namespace lockstep
