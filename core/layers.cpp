#include "core/layers.h"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <utility>

namespace lockstep {

namespace {
constexpr uint64_t kDropoutStream = 0xD0;
constexpr uint64_t kRReluStream = 0x77;
constexpr uint64_t kInitStream = 0x1217;

rng::Stream layer_stream(const Context& ctx, int layer, uint64_t purpose) {
  return rng::Stream{ctx.seed, rng::mix(rng::mix(uint64_t(ctx.step), uint64_t(layer)), purpose)};
}
Shape with_batch(int64_t batch, const Shape& s) {
  Shape b{batch};
  b.insert(b.end(), s.begin(), s.end());
  return b;
}
}  // namespace

// ---- Buffer ------------------------------------------------------------------------------------------
Tensor Buffer::get(const Shape& shape, Device device, DType dtype) {
  const int64_t n = shape_numel(shape);
  if (!storage_.defined() || storage_.numel() < n || storage_.device() != device || storage_.dtype() != dtype)
    storage_ = Tensor({std::max<int64_t>(n, 1)}, device, dtype);
  return storage_.view(0, shape);
}
Tensor Buffer::get(const Shape& shape, const Tensor& like) { return get(shape, like.device(), like.dtype()); }

// ---- regularizers, constraints, activations -----------------------------------------------------------
Regularizer parse_regularizer(const ConfigNode& node) {
  Regularizer r;
  if (!node.defined()) return r;
  if (node.is_scalar()) {
    std::string s = node.as_string();
    if (s == "l1") r.l1 = 0.01;
    else if (s == "l2") r.l2 = 0.01;
    else if (s == "l1_l2") r.l1 = r.l2 = 0.01;
    else {
      std::string near = nearest_name(s, {"l1", "l2", "l1_l2"});
      node.fail("unknown regularizer '" + s + "'; expected l1, l2, l1_l2 or a mapping such as {l2: 0.01}" +
                (near.empty() ? "" : "; did you mean '" + near + "'?"));
    }
    return r;
  }
  node.allow_keys({"l1", "l2", "l1_l2"});
  if (node.has("l1_l2")) {
    ConfigNode a = node["l1_l2"];
    a.allow_keys({"l1", "l2"});
    r.l1 = a.get_in("l1", 0.01, 0.0, 1e30);
    r.l2 = a.get_in("l2", 0.01, 0.0, 1e30);
  }
  if (node.has("l1")) r.l1 = node.get_in("l1", 0.01, 0.0, 1e30);
  if (node.has("l2")) r.l2 = node.get_in("l2", 0.01, 0.0, 1e30);
  return r;
}

MaxNormConstraint parse_constraint(const ConfigNode& node) {
  MaxNormConstraint c;
  if (!node.defined()) return c;
  node.allow_keys({"max_norm"});
  ConfigNode m = node["max_norm"];
  if (!m.defined()) node.fail("expected {max_norm: VALUE} or {max_norm: {max_value: V, axis: 0}}");
  if (m.is_scalar()) {
    c.max_value = m.as_double();
  } else {
    m.allow_keys({"max_value", "axis"});
    c.max_value = m.get("max_value", 2.0);  // Keras MaxNorm(max_value=2, axis=0)
    c.axis = m.get("axis", 0);
  }
  if (c.max_value <= 0) m.fail(str_cat("max_norm must be positive, got ", c.max_value));
  return c;
}

namespace {
struct ActivationInfo {
  const char* name;
  ops::Activation act;
  double alpha;
};
const std::vector<ActivationInfo>& activation_table() {
  // Function defaults: tf.nn.leaky_relu's alpha is 0.2 (keras-semantics §2); elu's 1.0.
  static const std::vector<ActivationInfo> t = {
      {"linear", ops::Activation::Linear, 0},        {"sigmoid", ops::Activation::Sigmoid, 0},
      {"tanh", ops::Activation::Tanh, 0},            {"relu", ops::Activation::Relu, 0},
      {"leaky_relu", ops::Activation::LeakyRelu, 0.2}, {"elu", ops::Activation::Elu, 1.0},
      {"selu", ops::Activation::Selu, 0},            {"softmax", ops::Activation::Softmax, 0},
      {"softplus", ops::Activation::Softplus, 0},    {"softsign", ops::Activation::Softsign, 0},
      {"swish", ops::Activation::Swish, 0}};
  return t;
}
}  // namespace

std::string activation_name(ops::Activation a) {
  for (const auto& i : activation_table())
    if (i.act == a) return i.name;
  return "linear";
}

ops::Activation parse_activation(const ConfigNode& node, double* alpha) {
  std::string name = "linear";
  ConfigNode args;
  if (!node.defined()) {
    *alpha = 0;
    return ops::Activation::Linear;
  }
  if (node.is_scalar()) {
    name = node.as_string();
  } else if (node.is_map() && node.size() == 1) {
    name = node.keys()[0];
    args = node[name];
  } else {
    node.fail("expected an activation name (e.g. relu) or {leaky_relu: {alpha: 0.2}}");
  }
  if (name == "None" || name == "none") name = "linear";
  std::vector<std::string> names;
  for (const auto& i : activation_table()) {
    names.push_back(i.name);
    if (name == i.name) {
      *alpha = i.alpha;
      if (args.defined()) {
        args.allow_keys({"alpha"});
        if (i.act != ops::Activation::LeakyRelu && i.act != ops::Activation::Elu)
          args.fail("only leaky_relu and elu take an alpha");
        *alpha = args.get("alpha", i.alpha);
      }
      return i.act;
    }
  }
  std::string near = nearest_name(name, names);
  node.fail("unknown activation '" + name + "'; expected one of: " + join(names) +
            (near.empty() ? "" : "; did you mean '" + near + "'?"));
}

// ---- Layer -----------------------------------------------------------------------------------------
Weight* Layer::weight(const std::string& name) {
  for (auto& w : weights_)
    if (w.name == name) return &w;
  return nullptr;
}

Weight& Layer::declare(const std::string& name, Shape shape, const Initializer& init, bool trainable) {
  Weight w;
  w.name = name;
  w.shape = std::move(shape);
  w.init = init;
  w.trainable = trainable;
  weights_.push_back(std::move(w));
  return weights_.back();
}

void Layer::backward_operands(std::vector<Touch>* out, bool descending) const {
  const bool writes_grads = trainable_ && !(descending && descends_in_backward());
  for (const Weight& w : weights_) {
    out->push_back({&w.value, false});
    if (writes_grads && w.grad.defined()) out->push_back({&w.grad, true});
  }
}

void Layer::init_weights(uint64_t seed) {
  for (size_t i = 0; i < weights_.size(); ++i)
    initialize(weights_[i].init, weights_[i].value,
               rng::Stream{seed, rng::mix(rng::mix(uint64_t(index_), uint64_t(i)), kInitStream)});
}

// ---- Flatten ---------------------------------------------------------------------------------------
Shape Flatten::build(const Shape& in) {
  input_shape_ = in;
  output_shape_ = {shape_numel(in)};
  return output_shape_;
}
Tensor Flatten::forward(const Tensor& x, Context&) {
  in_batch_shape_ = x.shape();
  return x.reshape({x.dim(0), output_shape_[0]});
}
Tensor Flatten::backward(const Tensor& dy, Context&, bool) { return dy.reshape(in_batch_shape_); }

// ---- Dense -----------------------------------------------------------------------------------------
Dense::Dense(int64_t units, ops::Activation act, double alpha, bool use_bias, Initializer kernel_init,
             Initializer bias_init, Regularizer kernel_reg, Regularizer bias_reg, MaxNormConstraint kc)
    : units_(units), act_(act), alpha_(alpha), use_bias_(use_bias), kernel_init_(std::move(kernel_init)),
      bias_init_(std::move(bias_init)), kernel_reg_(kernel_reg), bias_reg_(bias_reg), kernel_constraint_(kc) {}

Shape Dense::build(const Shape& in) {
  if (in.empty()) throw ConfigError(str_cat("layer ", name_, " (Dense) needs an input with a feature axis, got ", shape_str(in)));
  input_shape_ = in;
  Weight& k = declare("kernel", {in.back(), units_}, kernel_init_);
  k.regularizer = kernel_reg_;
  k.constraint = kernel_constraint_;
  if (use_bias_) declare("bias", {units_}, bias_init_).regularizer = bias_reg_;
  output_shape_ = in;
  output_shape_.back() = units_;
  return output_shape_;
}

Tensor Dense::forward(const Tensor& x, Context&) {
  const int64_t in = input_shape_.back();
  x_ = x.reshape({-1, in});
  const int64_t rows = x_.dim(0);
  z_ = z_buf_.get({rows, units_}, x);
  ops::gemm(false, false, 1.0, x_, weights_[0].value, 0.0, z_);
  if (use_bias_) ops::bias_add(z_, weights_[1].value);
  Shape out = with_batch(x.dim(0), output_shape_);
  if (act_ == ops::Activation::Linear || emit_logits_) {
    y_ = z_;
    return z_.reshape(out);
  }
  // When the backward pass needs only y, the activation overwrites z: one buffer less to stream.
  y_ = ops::activation_backward_needs_x(act_, alpha_) ? y_buf_.get({rows, units_}, x) : z_;
  ops::activation_forward(act_, alpha_, z_, y_);
  return y_.reshape(out);
}

void Dense::backward_operands(std::vector<Touch>* out, bool descending) const {
  Layer::backward_operands(out, descending);
  out->push_back({&x_, false});
  out->push_back({&z_, false});
  if (y_.raw() != z_.raw()) out->push_back({&y_, false});
  out->push_back({&dz_buf_.storage(), true});
  out->push_back({&dx_buf_.storage(), true});
}

Tensor Dense::pre_activation_grad(const Tensor& dy_in) {
  const int64_t rows = x_.dim(0);
  Tensor dy = dy_in.reshape({rows, units_});
  if (act_ == ops::Activation::Linear || emit_logits_) return dy;
  Tensor dz = dz_buf_.get({rows, units_}, dy);
  ops::activation_backward(act_, alpha_, z_, y_, dy, dz);
  return dz;
}

bool Dense::can_descend_in_backward() const {
  if (!trainable_) return false;
  for (const Weight& w : weights_)
    if (w.regularizer.active()) return false;
  return true;
}

// w -= rate·g without forming g: the weight-gradient product accumulates (beta 1) into the kernel
// itself from dz scaled by -rate. Writing the gradients and reading them back in a separate update pass
// took 8% of model c's step at batch 32 (1.26M weights: 15 MB through the L3 per step).
void Dense::descend(const Tensor& dz, double rate) {
  Tensor step = dz_buf_.get(dz.shape(), dz);  // dz itself, or dy when there is no activation
  ops::axpby(-rate, dz, 0.0, step);
  ops::gemm(true, false, 1.0, x_, step, 1.0, weights_[0].value);
  if (use_bias_) ops::bias_grad(step, weights_[1].value, 1.0);
}

Tensor Dense::backward(const Tensor& dy_in, Context& ctx, bool need_dx) {
  Tensor dz = pre_activation_grad(dy_in);
  const double rate = descent_rate(ctx);
  if (trainable_ && rate == 0.0) {
    ops::gemm(true, false, 1.0, x_, dz, 0.0, weights_[0].grad);
    if (use_bias_) ops::bias_grad(dz, weights_[1].grad);
  }
  Tensor dx;
  if (need_dx) {
    dx = dx_buf_.get(x_.shape(), dz);
    ops::gemm(false, true, 1.0, dz, weights_[0].value, 0.0, dx);  // with the kernel before the step
    dx = dx.reshape(with_batch(dy_in.dim(0), input_shape_));
  }
  if (rate > 0.0) descend(dz, rate);
  return dx;
}

// Above a normalisation at the bottom of the stack, the normalisation needs only Σdy and Σdy·x̂ per
// feature, and both follow from g = x̂ᵀ·dz [in, out], the same size of product as the kernel's
// gradient: dW = gamma*g + beta·s, Σdy = W·s, Σdy·x̂ = Σ_j W∘g (s = Σ_rows dz). That replaces the
// product dx = dz·Wᵀ (rows x in x units) by passes over the kernel: a third of the step's products
// for the chapter's BN-first MLP.
bool Dense::backward_to_normalized(const Tensor& dy_in, Context& ctx, const NormalizedOutput& in) {
  const int64_t n_in = input_shape_.back();
  if (!trainable_ || in.view.inner != 1 || in.view.channels != n_in || in.x.numel() != x_.numel()) return false;
  Tensor dz = pre_activation_grad(dy_in);
  Tensor xhat = xhat_buf_.get(x_.shape(), x_);
  ops::bn_apply(in.x.reshape(x_.shape()), in.view, in.mean, in.var, Tensor(), Tensor(), in.eps, xhat);
  Tensor s = use_bias_ ? weights_[1].grad : colsum_buf_.get({units_}, dz);
  ops::bias_grad(dz, s);
  // Descending, the kernel's step is taken inside the fold (the gradient is never written) and the bias's
  // from its sums.
  const double rate = descent_rate(ctx);
  ops::dense_normalized_grads(xhat, dz, weights_[0].value, s, in.gamma, in.beta, weights_[0].grad, in.sums, rate);
  if (rate > 0.0 && use_bias_) ops::axpy(-rate, s, weights_[1].value);
  return true;
}

// ---- activation layers -----------------------------------------------------------------------------
Shape ActivationLayer::build(const Shape& in) {
  if (act_ == ops::Activation::Softmax && in.empty())
    throw ConfigError(str_cat("layer ", name_, ": softmax needs a feature axis"));
  input_shape_ = output_shape_ = in;
  return in;
}
bool ActivationLayer::set_relu_in_producer(bool on) {
  if (act_ != ops::Activation::Relu || emit_logits_) return false;
  in_producer_ = on;
  return true;
}
Tensor ActivationLayer::forward(const Tensor& x, Context&) {
  x_ = x;
  if (act_ == ops::Activation::Linear || emit_logits_ || in_producer_) return y_ = x;
  y_ = y_buf_.get(x.shape(), x);
  ops::activation_forward(act_, alpha_, x, y_);
  return y_;
}
Tensor ActivationLayer::backward(const Tensor& dy, Context&, bool need_dx) {
  if (!need_dx) return Tensor();
  if (act_ == ops::Activation::Linear || emit_logits_ || in_producer_) return dy;
  Tensor dx = dx_buf_.get(dy.shape(), dy);
  ops::activation_backward(act_, alpha_, x_, y_, dy, dx);
  return dx;
}

// ---- PReLU -----------------------------------------------------------------------------------------
Shape PReLU::build(const Shape& in) {
  if (in.empty() || in.size() > 4) throw ConfigError(str_cat("layer ", name_, " (PReLU): input of rank 1 to 4 expected, got ", shape_str(in)));
  input_shape_ = output_shape_ = in;
  Shape ashape = in;
  for (int64_t a : shared_axes_) {
    if (a < 1 || a > int64_t(in.size()))
      throw ConfigError(str_cat("layer ", name_, " (PReLU): shared axis ", a, " out of range 1..", in.size()));
    ashape[a - 1] = 1;
  }
  map_.nd = int(in.size());
  int64_t stride = 1;
  for (int d = map_.nd - 1; d >= 0; --d) {
    map_.dims[d] = in[d];
    map_.stride[d] = ashape[d] == 1 && in[d] != 1 ? 0 : stride;
    stride *= ashape[d];
  }
  Weight& w = declare("alpha", ashape, alpha_init_);
  w.regularizer = reg_;
  w.constraint = constraint_;
  return in;
}
Tensor PReLU::forward(const Tensor& x, Context&) {
  x_ = x;
  Tensor y = y_buf_.get(x.shape(), x);
  ops::prelu_forward(x, weights_[0].value, map_, y);
  return y;
}
Tensor PReLU::backward(const Tensor& dy, Context&, bool need_dx) {
  Tensor dx = dx_buf_.get(dy.shape(), dy);
  Tensor dalpha = trainable_ ? weights_[0].grad : scratch_.get(weights_[0].shape, dy);
  ops::prelu_backward(x_, weights_[0].value, map_, dy, dx, dalpha);
  return need_dx ? dx : Tensor();
}

// ---- RReLU -----------------------------------------------------------------------------------------
Shape RReLU::build(const Shape& in) {
  input_shape_ = output_shape_ = in;
  return in;
}
Tensor RReLU::forward(const Tensor& x, Context& ctx) {
  x_ = x;
  y_ = y_buf_.get(x.shape(), x);
  was_training_ = ctx.training;
  if (was_training_) {
    slopes_ = slopes_buf_.get(x.shape(), x);
    ops::rrelu_forward_train(x, lower_, upper_, layer_stream(ctx, index_, kRReluStream), slopes_, y_,
                             ctx.sample_offset * (x.numel() / std::max<int64_t>(x.dim(0), 1)));
  } else {
    ops::activation_forward(ops::Activation::LeakyRelu, (lower_ + upper_) / 2, x, y_);
  }
  return y_;
}
Tensor RReLU::backward(const Tensor& dy, Context&, bool need_dx) {
  if (!need_dx) return Tensor();
  Tensor dx = dx_buf_.get(dy.shape(), dy);
  if (was_training_)
    ops::rrelu_backward(x_, slopes_, dy, dx);
  else
    ops::activation_backward(ops::Activation::LeakyRelu, (lower_ + upper_) / 2, x_, y_, dy, dx);
  return dx;
}

// ---- BatchNormalization ----------------------------------------------------------------------------
Shape BatchNormalization::build(const Shape& in) {
  const int batched_rank = int(in.size()) + 1;
  const int a = axis_ < 0 ? axis_ + batched_rank : axis_;
  if (a <= 0 || a >= batched_rank)
    throw ConfigError(str_cat("layer ", name_, " (BatchNormalization): axis ", axis_, " is not a feature axis of input ",
                              shape_str(with_batch(-1, in)).replace(1, 2, "None")));
  axis_ = a;
  const int64_t c = in[a - 1];
  input_shape_ = output_shape_ = in;
  // Keras takes the fused kernel for 4-D inputs normalised over axis 1 or 3, and that kernel feeds the
  // unbiased (Bessel-corrected) variance into the moving average (keras-semantics §3).
  bessel_ = batched_rank == 4 && (a == 1 || a == 3);
  if (scale_) declare("gamma", {c}, gamma_init_);
  if (center_) declare("beta", {c}, beta_init_);
  declare("moving_mean", {c}, mm_init_, false);
  declare("moving_variance", {c}, mv_init_, false);
  return in;
}

Tensor BatchNormalization::forward(const Tensor& x, Context& ctx) {
  x_ = x;
  view_ = ops::feature_view(x.shape(), axis_);
  const int64_t C = view_.channels;
  Tensor y = y_buf_.get(x.shape(), x);
  was_training_ = training(ctx);
  y_ = relu_ ? y : Tensor();
  if (!was_training_) {
    ops::bn_apply(x, view_, g("moving_mean"), g("moving_variance"), g("gamma"), g("beta"), epsilon_, y, relu_);
    return y;
  }
  if (!mean_.defined() || mean_.device() != x.device() || mean_.dtype() != x.dtype()) {
    mean_ = x.empty_like({C});
    var_ = x.empty_like({C});
    stats_ = Tensor({2 * C}, x.device(), DType::F64);
    sums_ = Tensor({2 * C}, x.device(), DType::F64);
  }
  ops::bn_sums(x, view_, stats_);
  double count = double(view_.count());
  if (sync_ && ctx.all_reduce_sum) {
    ctx.all_reduce_sum(stats_);
    const int64_t per_sample = shape_numel(input_shape_) / C;
    count = double(ctx.global_batch > 0 ? ctx.global_batch : x.dim(0)) * double(per_sample);
  }
  ops::bn_moments(stats_, count, mean_, var_);
  ops::bn_apply(x, view_, mean_, var_, g("gamma"), g("beta"), epsilon_, y, relu_);
  ops::bn_update_moving(g("moving_mean"), mean_, momentum_);
  if (bessel_ && count > 1) {
    Tensor unbiased = var_.clone();
    ops::scale(unbiased, count / (count - 1));
    ops::bn_update_moving(g("moving_variance"), unbiased, momentum_);
  } else {
    ops::bn_update_moving(g("moving_variance"), var_, momentum_);
  }
  stats_count_ = count;
  return y;
}

// The statistics x̂ was formed with: the batch's in training, the moving ones in inference mode.
Tensor BatchNormalization::xhat_mean() { return was_training_ ? mean_ : g("moving_mean"); }
Tensor BatchNormalization::xhat_var() { return was_training_ ? var_ : g("moving_variance"); }
const Tensor& BatchNormalization::grad_sums() {
  if (!sums_.defined() || sums_.device() != x_.device())
    sums_ = Tensor({2 * view_.channels}, x_.device(), DType::F64);
  return sums_;
}
// A trainable layer owes gamma and beta their gradients in either mode (dbeta = Σdy, dgamma = Σdy·x̂).
bool BatchNormalization::owes_param_grads() { return trainable_ && (weight("gamma") || weight("beta")); }
void BatchNormalization::set_param_grads(const Tensor& sums) {
  Weight* gamma = weight("gamma");
  Weight* beta = weight("beta");
  ops::bn_param_grads(sums, gamma ? gamma->grad : Tensor(), beta ? beta->grad : Tensor());
}

Tensor BatchNormalization::backward(const Tensor& dy, Context& ctx, bool need_dx) {
  const bool owes = owes_param_grads();
  // Training mode's input gradient needs the sums too.
  if (owes || (was_training_ && need_dx)) {
    ops::bn_backward_sums(dy, x_, view_, xhat_mean(), xhat_var(), epsilon_, grad_sums(), y_);
    if (owes) set_param_grads(sums_);
  }
  if (!need_dx) return Tensor();
  Tensor dx = dx_buf_.get(dy.shape(), dy);
  if (!was_training_) {
    ops::bn_backward_inference(dy, view_, g("moving_variance"), g("gamma"), epsilon_, dx, y_);
    return dx;
  }
  if (sync_ && ctx.all_reduce_sum) ctx.all_reduce_sum(sums_);
  ops::bn_backward_apply(dy, x_, view_, mean_, var_, g("gamma"), epsilon_, sums_, stats_count_, dx, y_);
  return dx;
}

bool BatchNormalization::absorb_relu(bool on) {
  relu_ = on;
  return true;
}
bool BatchNormalization::normalized_output(NormalizedOutput* out) {
  // With a ReLU absorbed the output is no affine normalisation.
  if (relu_ || !owes_param_grads() || !x_.defined()) return false;
  *out = NormalizedOutput{x_, xhat_mean(), xhat_var(), g("gamma"), g("beta"), grad_sums(), view_, epsilon_};
  return true;
}
void BatchNormalization::backward_from_sums(const NormalizedOutput& n) { set_param_grads(n.sums); }

// ---- Dropout / AlphaDropout ------------------------------------------------------------------------
Shape Dropout::build(const Shape& in) {
  input_shape_ = output_shape_ = in;
  return in;
}
Tensor Dropout::forward(const Tensor& x, Context& ctx) {
  active_ = (ctx.training || ctx.mc_dropout || mc_) && rate_ > 0.0;
  if (!active_) return x;
  mask_ = mask_buf_.get(x.shape(), x);
  Tensor y = y_buf_.get(x.shape(), x);
  rng::Stream s = layer_stream(ctx, index_, kDropoutStream);
  const int64_t first = ctx.sample_offset * (x.numel() / std::max<int64_t>(x.dim(0), 1));
  if (alpha_)
    ops::alpha_dropout_forward(x, rate_, s, mask_, y, first);
  else
    ops::dropout_forward(x, rate_, s, mask_, y, first);
  return y;
}
Tensor Dropout::backward(const Tensor& dy, Context&, bool need_dx) {
  if (!need_dx) return Tensor();
  if (!active_) return dy;
  Tensor dx = dx_buf_.get(dy.shape(), dy);
  ops::mul(dy, mask_, dx);
  return dx;
}

// ---- convolutional layers ----------------------------------------------------------------------------
namespace {
// A 2-D layer (`layer`: "name (Class)") given something other than a map [H, W, C]; for [H, W] images,
// the fix in their own dimensions.
void expect_feature_map(const Shape& in, const std::string& layer) {
  if (in.size() == 3) return;
  std::string hint;
  if (in.size() == 2) {
    const std::string hw1 = str_cat("[", in[0], ", ", in[1], ", 1]");
    hint = str_cat(" (give the images a channel axis: declare the input ", hw1, ", as `input_shape: ", hw1,
                   "` or `- input: {shape: ", hw1, "}`; [", in[0], ", ", in[1], "] images feed it as they are)");
  }
  throw ConfigError(str_cat("layer ", layer, ": expected an input of shape (height, width, channels), got ",
                            shape_str(with_batch(-1, in)).replace(1, 2, "None"), hint));
}
}  // namespace

ops::Window2d window_geometry(const Window2dArgs& a, const Shape& in, int64_t out_c, int64_t groups,
                              const std::string& layer, const char* size_key) {
  expect_feature_map(in, layer);
  ops::Window2d g;
  g.in_h = in[0];
  g.in_w = in[1];
  g.in_c = in[2];
  g.out_c = out_c;
  g.k_h = a.k_h;
  g.k_w = a.k_w;
  g.stride_h = a.stride_h;
  g.stride_w = a.stride_w;
  g.dil_h = a.dil_h;
  g.dil_w = a.dil_w;
  g.groups = groups;
  g.out_h = ops::window_out(g.in_h, g.k_h, g.stride_h, g.dil_h, a.same, &g.pad_top);
  g.out_w = ops::window_out(g.in_w, g.k_w, g.stride_w, g.dil_w, a.same, &g.pad_left);
  if (g.out_h < 1 || g.out_w < 1) {
    const int64_t span_h = (g.k_h - 1) * g.dil_h + 1, span_w = (g.k_w - 1) * g.dil_w + 1;
    throw ConfigError(str_cat("layer ", layer, ": ", size_key, " ", g.k_h, "x", g.k_w,
                              span_h != g.k_h || span_w != g.k_w ? str_cat(" (dilated: ", span_h, "x", span_w, ")") : "",
                              " is larger than its input ", g.in_h, "x", g.in_w,
                              " with padding valid: no output (use padding: same, or a smaller window)"));
  }
  return g;
}

namespace {
Shape batch_map(int64_t n, const ops::Window2d& g, bool out) {
  return out ? Shape{n, g.out_h, g.out_w, g.out_c} : Shape{n, g.in_h, g.in_w, g.in_c};
}
ops::Window2d with_batch_size(ops::Window2d g, int64_t n) {
  g.batch = n;
  return g;
}
}  // namespace

Shape Conv2D::build(const Shape& in) {
  input_shape_ = in;
  const int64_t c = in.size() == 3 ? in[2] : 1;
  const int64_t groups = depthwise() ? c : a_.groups;
  const int64_t out_c = depthwise() ? c * a_.depth_multiplier : a_.filters;
  if (!depthwise() && in.size() == 3 && (c % groups != 0 || out_c % groups != 0))
    throw ConfigError(str_cat("layer ", name_, " (Conv2D): groups ", groups, " must divide both the input's ", c,
                              " channels and the ", out_c, " filters"));
  geom_ = window_geometry(a_.window, in, out_c, groups, name_ + " (" + keras_class() + ")", "kernel_size");
  Weight& k = declare(depthwise() ? "depthwise_kernel" : "kernel",
                      {a_.window.k_h, a_.window.k_w, depthwise() ? c : c / groups, depthwise() ? a_.depth_multiplier : out_c},
                      a_.kernel_init);
  k.regularizer = a_.kernel_reg;
  k.constraint = a_.kernel_constraint;
  if (a_.use_bias) declare("bias", {out_c}, a_.bias_init).regularizer = a_.bias_reg;
  output_shape_ = {geom_.out_h, geom_.out_w, out_c};
  return output_shape_;
}

Tensor Conv2D::forward(const Tensor& x, Context&) {
  x_ = x;
  const ops::Window2d g = with_batch_size(geom_, x.dim(0));
  z_ = z_buf_.get(batch_map(g.batch, g, true), x);
  ops::ConvEpilogue ep;
  if (a_.use_bias) ep.bias = weights_[1].value;
  // The activation goes into the convolution's epilogue when its backward needs only y (y_ is then z_,
  // overwritten in place); otherwise z_ is kept and y_ is written apart.
  const bool apart = a_.act != ops::Activation::Linear && !emit_logits_ && ops::activation_backward_needs_x(a_.act, a_.alpha);
  if (!apart && !emit_logits_) ep.act = a_.act, ep.alpha = a_.alpha;
  ops::conv2d_forward(x, weights_[0].value, g, z_, ep);
  if (!apart) return y_ = z_;
  y_ = y_buf_.get(z_.shape(), x);
  ops::activation_forward(a_.act, a_.alpha, z_, y_);
  return y_;
}

bool Conv2D::set_relu_backward_in_consumer(bool on) {
  if (a_.act != ops::Activation::Relu || emit_logits_) return false;
  relu_in_consumer_ = on;
  return true;
}

Tensor Conv2D::backward(const Tensor& dy, Context&, bool need_dx) {
  const ops::Window2d g = with_batch_size(geom_, x_.dim(0));
  Tensor dz = dy.reshape(batch_map(g.batch, g, true));
  if (a_.act != ops::Activation::Linear && !emit_logits_ && !relu_in_consumer_) {
    dz = dz_buf_.get(z_.shape(), dy);
    ops::activation_backward(a_.act, a_.alpha, z_, y_, dy.reshape(z_.shape()), dz);
  }
  if (trainable_) {
    ops::conv2d_backward_filter(x_, dz, g, weights_[0].grad);
    if (a_.use_bias) ops::bias_grad(dz.reshape({-1, g.out_c}), weights_[1].grad);
  }
  if (!need_dx) return Tensor();
  Tensor dx = dx_buf_.get(x_.shape(), dz);
  ops::conv2d_backward_data(dz, weights_[0].value, g, dx);
  return dx;
}

void Conv2D::backward_operands(std::vector<Touch>* out, bool descending) const {
  Layer::backward_operands(out, descending);
  out->push_back({&x_, false});
  out->push_back({&z_, false});
}

Shape Pooling2D::build(const Shape& in) {
  input_shape_ = in;
  geom_ = window_geometry(w_, in, in.size() == 3 ? in[2] : 1, 1, name_ + " (" + keras_class() + ")", "pool_size");
  output_shape_ = {geom_.out_h, geom_.out_w, geom_.out_c};
  return output_shape_;
}
Tensor Pooling2D::forward(const Tensor& x, Context&) {
  x_ = x;
  const ops::Window2d g = with_batch_size(geom_, x.dim(0));
  y_ = y_buf_.get(batch_map(g.batch, g, true), x);
  if (max_) ops::max_pool2d_forward(x, g, y_);
  else ops::avg_pool2d_forward(x, g, y_);
  return y_;
}
bool Pooling2D::set_relu_gate(bool on) {
  if (!max_) return false;
  relu_gate_ = on;
  return true;
}
Tensor Pooling2D::backward(const Tensor& dy, Context&, bool need_dx) {
  if (!need_dx) return Tensor();
  const ops::Window2d g = with_batch_size(geom_, x_.dim(0));
  Tensor dx = dx_buf_.get(x_.shape(), dy);
  if (max_) ops::max_pool2d_backward(x_, y_, dy, g, dx, relu_gate_);
  else ops::avg_pool2d_backward(dy, g, dx);
  return dx;
}

Shape GlobalPooling2D::build(const Shape& in) {
  input_shape_ = in;
  Window2dArgs w;
  if (in.size() == 3) {
    w.k_h = w.stride_h = in[0];
    w.k_w = w.stride_w = in[1];
  }
  geom_ = window_geometry(w, in, in.size() == 3 ? in[2] : 1, 1, name_ + " (" + keras_class() + ")", "pool_size");
  output_shape_ = keepdims_ ? Shape{1, 1, geom_.out_c} : Shape{geom_.out_c};
  return output_shape_;
}
Tensor GlobalPooling2D::forward(const Tensor& x, Context&) {
  x_ = x;
  const ops::Window2d g = with_batch_size(geom_, x.dim(0));
  y_ = y_buf_.get(batch_map(g.batch, g, true), x);
  if (max_) ops::max_pool2d_forward(x, g, y_);
  else ops::avg_pool2d_forward(x, g, y_);
  return y_.reshape(with_batch(g.batch, output_shape_));
}
Tensor GlobalPooling2D::backward(const Tensor& dy, Context&, bool need_dx) {
  if (!need_dx) return Tensor();
  const ops::Window2d g = with_batch_size(geom_, x_.dim(0));
  Tensor d = dy.reshape(batch_map(g.batch, g, true));
  Tensor dx = dx_buf_.get(x_.shape(), dy);
  if (max_) ops::max_pool2d_backward(x_, y_, d, g, dx);
  else ops::avg_pool2d_backward(d, g, dx);
  return dx;
}

Shape ZeroPadding2D::build(const Shape& in) {
  expect_feature_map(in, name_ + " (ZeroPadding2D)");
  input_shape_ = in;
  output_shape_ = {in[0] + t_ + b_, in[1] + l_ + r_, in[2]};
  return output_shape_;
}
Tensor ZeroPadding2D::forward(const Tensor& x, Context&) {
  Tensor y = y_buf_.get(with_batch(x.dim(0), output_shape_), x);
  ops::pad2d(x.reshape(with_batch(x.dim(0), input_shape_)), y, t_, l_, true);
  return y;
}
Tensor ZeroPadding2D::backward(const Tensor& dy, Context&, bool need_dx) {
  if (!need_dx) return Tensor();
  Tensor dx = dx_buf_.get(with_batch(dy.dim(0), input_shape_), dy);
  ops::pad2d(dx, dy.reshape(with_batch(dy.dim(0), output_shape_)), t_, l_, false);
  return dx;
}

Shape SpatialDropout2D::build(const Shape& in) {
  expect_feature_map(in, name_ + " (SpatialDropout2D)");
  input_shape_ = output_shape_ = in;
  return in;
}
Tensor SpatialDropout2D::forward(const Tensor& x, Context& ctx) {
  active_ = (ctx.training || ctx.mc_dropout) && rate_ > 0.0;
  if (!active_) return x;
  const int64_t n = x.dim(0), c = input_shape_[2];
  // One draw per (sample, channel) of the global batch: this rank's first sample starts the stream at
  // sample_offset·C.
  mask_ = mask_buf_.get({n, c}, x);
  Tensor ones = y_buf_.get({n, c}, x);  // scratch: y is written only after the mask is drawn
  ops::fill(ones, 1.0);
  ops::dropout_forward(ones, rate_, layer_stream(ctx, index_, kDropoutStream), mask_, ones, ctx.sample_offset * c);
  Tensor y = y_buf_.get(x.shape(), x);
  ops::scale_channels(x, mask_, y);
  return y;
}
Tensor SpatialDropout2D::backward(const Tensor& dy, Context&, bool need_dx) {
  if (!need_dx) return Tensor();
  if (!active_) return dy;
  Tensor dx = dx_buf_.get(dy.shape(), dy);
  ops::scale_channels(dy, mask_, dx);
  return dx;
}

// ---- InputLayer, Reshape -----------------------------------------------------------------------------
Shape InputLayer::build(const Shape& in) {
  if (in != shape_)
    throw ConfigError(str_cat("input ", name_, " has shape ", shape_str(shape_), " but is given ", shape_str(in)));
  input_shape_ = output_shape_ = in;
  return in;
}

Shape Reshape::build(const Shape& in) {
  input_shape_ = in;
  const int64_t n = shape_numel(in);
  int64_t known = 1, unknown = -1;
  for (size_t i = 0; i < target_.size(); ++i) {
    if (target_[i] == -1) {
      if (unknown >= 0) throw ConfigError(str_cat("layer ", name_, " (Reshape): at most one -1 in target_shape ", shape_str(target_)));
      unknown = int64_t(i);
    } else if (target_[i] < 1) {
      throw ConfigError(str_cat("layer ", name_, " (Reshape): target_shape ", shape_str(target_),
                                " must hold positive dimensions or one -1"));
    } else {
      known *= target_[i];
    }
  }
  output_shape_ = target_;
  if (unknown >= 0) {
    if (n % known != 0)
      throw ConfigError(str_cat("layer ", name_, " (Reshape): cannot reshape ", shape_str(in), " (", n, " values) into ",
                                shape_str(target_)));
    output_shape_[size_t(unknown)] = n / known;
  }
  if (shape_numel(output_shape_) != n)
    throw ConfigError(str_cat("layer ", name_, " (Reshape): cannot reshape ", shape_str(in), " (", n, " values) into ",
                              shape_str(target_), " (", shape_numel(output_shape_), " values)"));
  return output_shape_;
}
Tensor Reshape::forward(const Tensor& x, Context&) { return x.reshape(with_batch(x.dim(0), output_shape_)); }
Tensor Reshape::backward(const Tensor& dy, Context&, bool need_dx) {
  return need_dx ? dy.reshape(with_batch(dy.dim(0), input_shape_)) : Tensor();
}

// ---- merges ------------------------------------------------------------------------------------------
namespace {
const char* const kMergeKeys[] = {"concatenate", "add", "subtract", "multiply", "average", "maximum", "minimum"};
const char* const kMergeClasses[] = {"Concatenate", "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"};
std::string batched_str(const Shape& s) {
  std::string out = "(None";
  for (int64_t d : s) out += ", " + std::to_string(d);
  return out + (s.empty() ? ",)" : ")");
}
}  // namespace

std::string Merge::key() const { return kMergeKeys[int(op_)]; }
std::string Merge::keras_class() const { return kMergeClasses[int(op_)]; }

Shape Merge::build(const Shape&) {
  throw ConfigError(str_cat("layer ", name_, " (", keras_class(), ") merges several inputs; give it a list of them"));
}
Tensor Merge::forward(const Tensor&, Context&) { LS_CHECK(false, "Merge::forward takes a list of inputs"); }
Tensor Merge::backward(const Tensor&, Context&, bool) { LS_CHECK(false, "Merge::backward takes a list of inputs"); }

Shape Merge::build_multi(const std::vector<Shape>& in) {
  const std::string who = str_cat("layer ", name_, " (", keras_class(), ")");
  if (int(in.size()) < min_inputs() || int(in.size()) > max_inputs())
    throw ConfigError(str_cat(who, " takes ", op_ == Op::Subtract ? "exactly 2" : "at least 2", " inputs, got ", in.size()));
  in_shapes_ = in;
  std::vector<std::string> shapes;
  for (const Shape& s : in) shapes.push_back(batched_str(s));
  if (op_ != Op::Concatenate) {
    for (const Shape& s : in)
      if (s != in[0])
        throw ConfigError(str_cat(who, " needs inputs of one shape, got ", join(shapes, ", ")));
    input_shape_ = output_shape_ = in[0];
    return output_shape_;
  }
  const int rank = int(in[0].size()) + 1;  // batched
  const int a = axis_ < 0 ? axis_ + rank : axis_;
  if (a < 1 || a >= rank)
    throw ConfigError(str_cat(who, ": axis ", axis_, " is not an axis of the samples of inputs ", join(shapes, ", "),
                              a == 0 ? " (axis 0 is the batch)" : ""));
  axis_ = a - 1;  // per sample from here on
  Shape out = in[0];
  out[size_t(axis_)] = 0;
  for (const Shape& s : in) {
    bool ok = s.size() == in[0].size();
    for (size_t d = 0; ok && d < s.size(); ++d) ok = int(d) == axis_ || s[d] == in[0][d];
    if (!ok)
      throw ConfigError(str_cat(who, " needs inputs that match except along the concatenation axis ", a, ", got ",
                                join(shapes, ", ")));
    out[size_t(axis_)] += s[size_t(axis_)];
  }
  input_shape_ = in[0];
  output_shape_ = out;
  return out;
}

bool Merge::absorb_relu(bool on) {
  if (op_ != Op::Add) return false;
  relu_ = on;
  return true;
}
Tensor Merge::forward_multi(const std::vector<Tensor>& xs, Context&) {
  xs_ = xs;
  const size_t n = xs.size();
  const int64_t batch = xs[0].dim(0);
  Tensor y = y_buf_.get(with_batch(batch, output_shape_), xs[0]);
  switch (op_) {
    case Op::Concatenate: {
      int64_t outer = batch;
      for (int d = 0; d < axis_; ++d) outer *= output_shape_[size_t(d)];
      int64_t offset = 0;
      for (const Tensor& x : xs) {
        ops::concat_block(x, y, outer, offset, true);
        offset += x.numel() / std::max<int64_t>(outer, 1);
      }
      return y;
    }
    case Op::Add:
      // x0 + x1 in one pass, then the others in order (the bits of copying x0 and adding each in turn).
      ops::add(xs[0], xs[1], y, relu_ && n == 2);
      for (size_t i = 2; i < n; ++i) ops::axpy(1.0, xs[i], y);
      if (relu_ && n > 2) ops::activation_forward(ops::Activation::Relu, 0.0, y, y);
      y_ = relu_ ? y : Tensor();
      return y;
    case Op::Subtract:
    case Op::Average:
      ops::copy(xs[0], y);
      for (size_t i = 1; i < n; ++i) ops::axpy(op_ == Op::Subtract ? -1.0 : 1.0, xs[i], y);
      if (op_ == Op::Average) ops::scale(y, 1.0 / double(n));
      return y;
    case Op::Multiply:
      ops::mul(xs[0], xs[1], y);
      for (size_t i = 2; i < n; ++i) ops::mul(y, xs[i], y);
      return y;
    case Op::Maximum:
    case Op::Minimum: {
      // Fold: m_1 = ext(x_0, x_1), m_k = ext(m_{k-1}, x_k); the last is y, the others are kept for backward.
      partial_.resize(n);
      Tensor m = xs[0];
      for (size_t k = 1; k < n; ++k) {
        Tensor out = k + 1 == n ? y : partial_[k].get(y.shape(), y);
        ops::extremum(op_ == Op::Maximum, m, xs[k], out);
        m = out;
      }
      return y;
    }
  }
  return y;
}

std::vector<Tensor> Merge::backward_multi(const Tensor& dy, Context&, const std::vector<bool>& need_dx) {
  const size_t n = xs_.size();
  std::vector<Tensor> dx(n);
  dx_buf_.resize(n);
  auto own = [&](size_t i) { return dx_buf_[i].get(xs_[i].shape(), dy); };
  switch (op_) {
    case Op::Concatenate: {
      const int64_t batch = dy.dim(0);
      int64_t outer = batch;
      for (int d = 0; d < axis_; ++d) outer *= output_shape_[size_t(d)];
      int64_t offset = 0;
      for (size_t i = 0; i < n; ++i) {
        if (need_dx[i]) {
          dx[i] = own(i);
          ops::concat_block(dx[i], dy, outer, offset, false);
        }
        offset += xs_[i].numel() / std::max<int64_t>(outer, 1);
      }
      break;
    }
    case Op::Add: {
      Tensor g = dy;
      if (relu_) {
        // The absorbed ReLU's backward (its output gates: > 0 exactly where its input was).
        g = own(0);
        ops::activation_backward(ops::Activation::Relu, 0.0, y_, y_, dy, g);
      }
      for (size_t i = 0; i < n; ++i)
        if (need_dx[i]) dx[i] = g;
      break;
    }
    case Op::Subtract:
      if (need_dx[0]) dx[0] = dy;
      if (need_dx[1]) {
        dx[1] = own(1);
        ops::copy(dy, dx[1]);
        ops::scale(dx[1], -1.0);
      }
      break;
    case Op::Average: {
      Tensor g = own(0);
      ops::copy(dy, g);
      ops::scale(g, 1.0 / double(n));
      for (size_t i = 0; i < n; ++i)
        if (need_dx[i]) dx[i] = g;
      break;
    }
    case Op::Multiply:
      for (size_t i = 0; i < n; ++i) {
        if (!need_dx[i]) continue;
        dx[i] = own(i);
        ops::copy(dy, dx[i]);
        for (size_t j = 0; j < n; ++j)
          if (j != i) ops::mul(dx[i], xs_[j], dx[i]);
      }
      break;
    case Op::Maximum:
    case Op::Minimum: {
      // Back through the fold: g = dL/dm_k; (dm_{k-1}, dx_k) = the extremum's gradient.
      const bool is_max = op_ == Op::Maximum;
      Tensor g = dy;
      for (size_t k = n - 1; k >= 1; --k) {
        Tensor a = k == 1 ? xs_[0] : partial_[k - 1].get(dy.shape(), dy);
        const bool need_a = k > 1 || need_dx[0];
        Tensor ga = need_a ? (k == 1 ? own(0) : tmp_buf_[k % 2].get(dy.shape(), dy)) : Tensor();
        Tensor gx = need_dx[k] ? own(k) : Tensor();
        if (ga.defined() || gx.defined()) ops::extremum_backward(is_max, a, xs_[k], g, ga, gx);
        dx[k] = gx;
        if (k == 1) dx[0] = ga;
        g = ga;
        if (!g.defined()) break;
      }
      break;
    }
  }
  return dx;
}

// ---- the factory -----------------------------------------------------------------------------------
const std::vector<std::string>& layer_keys() {
  static const std::vector<std::string> k = {"flatten", "dense", "batch_normalization", "activation", "relu",
                                             "leaky_relu", "prelu", "rrelu", "elu", "softmax", "dropout",
                                             "alpha_dropout", "mc_dropout", "mc_alpha_dropout", "input",
                                             "reshape", "concatenate", "add", "subtract", "multiply",
                                             "average", "maximum", "minimum", "conv2d", "depthwise_conv2d",
                                             "max_pooling2d", "average_pooling2d", "global_average_pooling2d",
                                             "global_max_pooling2d", "zero_padding2d", "spatial_dropout2d"};
  return k;
}

namespace {
// An int or a list of two ints (Keras's kernel_size, strides, dilation_rate, pool_size), each >= 1.
std::pair<int64_t, int64_t> parse_pair(const ConfigNode& a, const std::string& key, int64_t def) {
  if (!a.has(key)) return {def, def};
  ConfigNode n = a[key];
  std::vector<int64_t> v;
  if (n.is_scalar()) v = {n.as_int(), n.as_int()};
  else v = n.as_int_list();
  if (v.size() != 2) n.fail(str_cat("expected an integer or a list of two, e.g. 3 or [3, 3], got ", v.size(), " values"));
  for (int64_t x : v)
    if (x < 1) n.fail(str_cat("expected positive values, got ", shape_str(v)));
  return {v[0], v[1]};
}
// Keras's data_format: only channels_last (the maps' layout) is accepted.
void require_channels_last(const ConfigNode& a) {
  if (a.has("data_format") && a["data_format"].defined() && a["data_format"].as_string() != "channels_last")
    a["data_format"].fail("only channels_last is supported (maps are [height, width, channels])");
}
Window2dArgs parse_window(const ConfigNode& a, const char* size_key, bool size_required, int64_t size_def,
                          bool strides_default_size) {
  Window2dArgs w;
  if (size_required) a.require(size_key);
  std::tie(w.k_h, w.k_w) = parse_pair(a, size_key, size_def);
  if (strides_default_size && (!a.has("strides") || !a["strides"].defined())) {
    w.stride_h = w.k_h;
    w.stride_w = w.k_w;
  } else {
    std::tie(w.stride_h, w.stride_w) = parse_pair(a, "strides", 1);
  }
  if (a.has("dilation_rate")) {
    std::tie(w.dil_h, w.dil_w) = parse_pair(a, "dilation_rate", 1);
    if ((w.dil_h > 1 || w.dil_w > 1) && (w.stride_h > 1 || w.stride_w > 1))
      a["dilation_rate"].fail("dilation_rate > 1 cannot be combined with strides > 1 (as in Keras)");
  }
  w.same = a.get_choice("padding", "valid", {"valid", "same"}) == "same";
  require_channels_last(a);
  return w;
}
}  // namespace

std::unique_ptr<Layer> make_layer(const ConfigNode& entry, const std::vector<std::string>& extra_keys) {
  std::vector<std::string> kinds;
  if (entry.is_map())
    for (const std::string& k : entry.keys())
      if (std::find(extra_keys.begin(), extra_keys.end(), k) == extra_keys.end()) kinds.push_back(k);
  if (!entry.is_map() || kinds.size() != 1)
    entry.fail(extra_keys.empty() ? "each layer is a one-key mapping such as `- dense: {units: 100}`"
                                  : str_cat("each layer is a mapping with one layer kind, such as `- dense: {units: 100}`, "
                                            "and optionally ", join(extra_keys)));
  const std::string key = kinds[0];
  const auto& keys = layer_keys();
  if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
    std::string near = nearest_name(key, keys);
    ConfigNode k = entry[key];
    entry.fail("unknown layer '" + key + "'; expected one of: " + join(keys) +
               (near.empty() ? "" : "; did you mean '" + near + "'?"));
  }
  ConfigNode a = entry[key];
  if (a.defined() && !a.is_map()) a.fail("expected a mapping of the layer's arguments, e.g. {} or {rate: 0.2}");
  auto common = [](std::vector<std::string> k) {
    k.push_back("name");
    k.push_back("trainable");
    return k;
  };
  std::unique_ptr<Layer> layer;
  if (key == "flatten") {
    a.allow_keys(common({}));
    layer = std::make_unique<Flatten>();
  } else if (key == "dense") {
    a.allow_keys(common({"units", "activation", "use_bias", "kernel_initializer", "bias_initializer",
                         "kernel_regularizer", "bias_regularizer", "kernel_constraint"}));
    int64_t units = a.require("units").as_int();
    if (units < 1) a["units"].fail(str_cat("expected a positive number of units, got ", units));
    double alpha = 0;
    ops::Activation act = parse_activation(a["activation"], &alpha);
    layer = std::make_unique<Dense>(units, act, alpha, a.get("use_bias", true),
                                    parse_initializer(a["kernel_initializer"], "glorot_uniform"),
                                    parse_initializer(a["bias_initializer"], "zeros"),
                                    parse_regularizer(a["kernel_regularizer"]), parse_regularizer(a["bias_regularizer"]),
                                    parse_constraint(a["kernel_constraint"]));
  } else if (key == "batch_normalization") {
    a.allow_keys(common({"axis", "momentum", "epsilon", "center", "scale", "beta_initializer", "gamma_initializer",
                         "moving_mean_initializer", "moving_variance_initializer", "sync"}));
    layer = std::make_unique<BatchNormalization>(
        a.get("axis", -1), a.get_in("momentum", 0.99, 0.0, 1.0), a.get_in("epsilon", 1e-3, 0.0, 1e30, true),
        a.get("center", true), a.get("scale", true), parse_initializer(a["beta_initializer"], "zeros"),
        parse_initializer(a["gamma_initializer"], "ones"), parse_initializer(a["moving_mean_initializer"], "zeros"),
        parse_initializer(a["moving_variance_initializer"], "ones"), a.get("sync", true));
  } else if (key == "activation") {
    a.allow_keys(common({"activation"}));
    double alpha = 0;
    ops::Activation act = parse_activation(a.require("activation"), &alpha);
    layer = std::make_unique<ActivationLayer>("activation", "Activation", act, alpha);
  } else if (key == "relu") {
    a.allow_keys(common({}));
    layer = std::make_unique<ActivationLayer>("relu", "ReLU", ops::Activation::Relu, 0.0);
  } else if (key == "softmax") {
    a.allow_keys(common({}));
    layer = std::make_unique<ActivationLayer>("softmax", "Softmax", ops::Activation::Softmax, 0.0);
  } else if (key == "leaky_relu") {
    a.allow_keys(common({"alpha"}));
    // The LeakyReLU *layer* defaults to 0.3 in Keras 2 and 3 (keras-semantics §2).
    layer = std::make_unique<ActivationLayer>("leaky_relu", "LeakyReLU", ops::Activation::LeakyRelu,
                                              a.get_in("alpha", 0.3, 0.0, 1e30));
  } else if (key == "elu") {
    a.allow_keys(common({"alpha"}));
    layer = std::make_unique<ActivationLayer>("elu", "ELU", ops::Activation::Elu, a.get_in("alpha", 1.0, 0.0, 1e30));
  } else if (key == "prelu") {
    a.allow_keys(common({"alpha_initializer", "alpha_regularizer", "alpha_constraint", "shared_axes"}));
    std::vector<int64_t> shared;
    if (a.has("shared_axes")) shared = a["shared_axes"].as_int_list();
    layer = std::make_unique<PReLU>(parse_initializer(a["alpha_initializer"], "zeros"), shared,
                                    parse_regularizer(a["alpha_regularizer"]), parse_constraint(a["alpha_constraint"]));
  } else if (key == "rrelu") {
    a.allow_keys(common({"lower", "upper"}));
    double lo = a.get_in("lower", 1.0 / 8, 0.0, 1e30), hi = a.get_in("upper", 1.0 / 3, 0.0, 1e30);
    if (hi < lo) a["upper"].fail(str_cat("upper (", hi, ") must not be below lower (", lo, ")"));
    layer = std::make_unique<RReLU>(lo, hi);
  } else if (key == "input") {
    a.allow_keys({"name", "shape"});
    ConfigNode sh = a.require("shape");
    Shape shape = sh.as_int_list();
    for (int64_t d : shape)
      if (d < 1) sh.fail(str_cat("expected positive dimensions, e.g. [28, 28], got ", shape_str(shape)));
    if (shape.empty()) sh.fail("expected a non-empty list of positive dimensions, e.g. [28, 28]");
    layer = std::make_unique<InputLayer>(shape);
  } else if (key == "reshape") {
    a.allow_keys(common({"target_shape"}));
    ConfigNode t = a.require("target_shape");
    Shape target = t.as_int_list();
    if (target.empty()) t.fail("expected a non-empty list of dimensions, e.g. [7, 112] or [-1, 16]");
    int unknown = 0;
    for (int64_t d : target) {
      if (d == -1) ++unknown;
      else if (d < 1) t.fail(str_cat("expected positive dimensions or one -1, got ", shape_str(target)));
    }
    if (unknown > 1) t.fail(str_cat("at most one dimension may be -1, got ", shape_str(target)));
    layer = std::make_unique<Reshape>(target);
  } else if (key == "conv2d" || key == "depthwise_conv2d") {
    const bool dw = key == "depthwise_conv2d";
    const std::string kernel = dw ? "depthwise" : "kernel";
    std::vector<std::string> allowed = {"kernel_size", "strides", "padding", "data_format", "dilation_rate", "activation",
                                        "use_bias", kernel + "_initializer", "bias_initializer", kernel + "_regularizer",
                                        "bias_regularizer", kernel + "_constraint"};
    allowed.push_back(dw ? "depth_multiplier" : "filters");
    if (!dw) allowed.push_back("groups");
    a.allow_keys(common(allowed));
    Conv2D::Args c;
    c.window = parse_window(a, "kernel_size", true, 1, false);
    if (dw) {
      c.depth_multiplier = a.get_at_least("depth_multiplier", 1, 1);
    } else {
      c.filters = a.require("filters").as_int();
      if (c.filters < 1) a["filters"].fail(str_cat("expected a positive number of filters, got ", c.filters));
      c.groups = a.get_at_least("groups", 1, 1);
      if (c.filters % c.groups != 0)
        a["groups"].fail(str_cat("groups ", c.groups, " must divide filters (", c.filters, ")"));
    }
    c.act = parse_activation(a["activation"], &c.alpha);
    c.use_bias = a.get("use_bias", true);
    c.kernel_init = parse_initializer(a[kernel + "_initializer"], "glorot_uniform");
    c.bias_init = parse_initializer(a["bias_initializer"], "zeros");
    c.kernel_reg = parse_regularizer(a[kernel + "_regularizer"]);
    c.bias_reg = parse_regularizer(a["bias_regularizer"]);
    c.kernel_constraint = parse_constraint(a[kernel + "_constraint"]);
    layer = std::make_unique<Conv2D>(std::move(c));
  } else if (key == "max_pooling2d" || key == "average_pooling2d") {
    a.allow_keys(common({"pool_size", "strides", "padding", "data_format"}));
    layer = std::make_unique<Pooling2D>(key == "max_pooling2d", parse_window(a, "pool_size", false, 2, true));
  } else if (key == "global_average_pooling2d" || key == "global_max_pooling2d") {
    a.allow_keys(common({"data_format", "keepdims"}));
    require_channels_last(a);
    layer = std::make_unique<GlobalPooling2D>(key == "global_max_pooling2d", a.get("keepdims", false));
  } else if (key == "zero_padding2d") {
    a.allow_keys(common({"padding", "data_format"}));
    require_channels_last(a);
    int64_t p[4] = {1, 1, 1, 1};  // top, bottom, left, right
    if (a.has("padding")) {
      ConfigNode n = a["padding"];
      const char* form = "expected an integer, [rows, columns] or [[top, bottom], [left, right]]";
      if (n.is_scalar()) {
        p[0] = p[1] = p[2] = p[3] = n.as_int();
      } else if (n.is_seq() && n.size() == 2 && n[0].is_scalar() && n[1].is_scalar()) {
        p[0] = p[1] = n[0].as_int();
        p[2] = p[3] = n[1].as_int();
      } else if (n.is_seq() && n.size() == 2 && n[0].is_seq() && n[1].is_seq()) {
        std::vector<int64_t> h = n[0].as_int_list(), w = n[1].as_int_list();
        if (h.size() != 2 || w.size() != 2) n.fail(form);
        p[0] = h[0], p[1] = h[1], p[2] = w[0], p[3] = w[1];
      } else {
        n.fail(form);
      }
      for (int64_t v : p)
        if (v < 0) n.fail("padding must not be negative");
    }
    layer = std::make_unique<ZeroPadding2D>(p[0], p[1], p[2], p[3]);
  } else if (key == "spatial_dropout2d") {
    a.allow_keys(common({"rate", "data_format", "seed"}));
    require_channels_last(a);
    double rate = a.require("rate").as_double();
    if (!(rate >= 0 && rate < 1)) a["rate"].fail(str_cat("expected a rate in [0, 1), got ", rate));
    layer = std::make_unique<SpatialDropout2D>(rate);
  } else if (auto it = std::find(std::begin(kMergeKeys), std::end(kMergeKeys), key); it != std::end(kMergeKeys)) {
    const auto op = Merge::Op(it - std::begin(kMergeKeys));
    a.allow_keys(common(op == Merge::Op::Concatenate ? std::vector<std::string>{"axis"} : std::vector<std::string>{}));
    layer = std::make_unique<Merge>(op, op == Merge::Op::Concatenate ? a.get("axis", -1) : -1);
  } else {  // dropout family
    a.allow_keys(common({"rate", "seed"}));
    const bool alpha = key.find("alpha") != std::string::npos;
    const bool mc = key.rfind("mc_", 0) == 0;
    double rate = a.require("rate").as_double();
    if (!(rate >= 0 && rate < 1)) a["rate"].fail(str_cat("expected a rate in [0, 1), got ", rate));
    layer = std::make_unique<Dropout>(rate, alpha, mc);
  }
  if (a.has("name")) layer->set_name(a["name"].as_string());
  layer->set_trainable(a.get("trainable", true));
  layer->set_args(a);
  return layer;
}

}  // namespace lockstep
