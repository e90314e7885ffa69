#include "core/layers.h"

#include <algorithm>
#include <cmath>

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

bool Dense::descends_in_backward() const {
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
Tensor ActivationLayer::forward(const Tensor& x, Context&) {
  x_ = x;
  if (act_ == ops::Activation::Linear || emit_logits_) return y_ = x;
  y_ = y_buf_.get(x.shape(), x);
  ops::activation_forward(act_, alpha_, x, y_);
  return y_;
}
Tensor ActivationLayer::backward(const Tensor& dy, Context&, bool need_dx) {
  if (!need_dx) return Tensor();
  if (act_ == ops::Activation::Linear || emit_logits_) return dy;
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
    ops::rrelu_forward_train(x, lower_, upper_, layer_stream(ctx, index_, kRReluStream), slopes_, y_);
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
  if (!was_training_) {
    ops::bn_apply(x, view_, g("moving_mean"), g("moving_variance"), g("gamma"), g("beta"), epsilon_, y);
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
  ops::bn_apply(x, view_, mean_, var_, g("gamma"), g("beta"), epsilon_, y);
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
    ops::bn_backward_sums(dy, x_, view_, xhat_mean(), xhat_var(), epsilon_, grad_sums());
    if (owes) set_param_grads(sums_);
  }
  if (!need_dx) return Tensor();
  Tensor dx = dx_buf_.get(dy.shape(), dy);
  if (!was_training_) {
    ops::bn_backward_inference(dy, view_, g("moving_variance"), g("gamma"), epsilon_, dx);
    return dx;
  }
  if (sync_ && ctx.all_reduce_sum) ctx.all_reduce_sum(sums_);
  ops::bn_backward_apply(dy, x_, view_, mean_, var_, g("gamma"), epsilon_, sums_, stats_count_, dx);
  return dx;
}

bool BatchNormalization::normalized_output(NormalizedOutput* out) {
  if (!owes_param_grads() || !x_.defined()) return false;
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
  if (alpha_)
    ops::alpha_dropout_forward(x, rate_, s, mask_, y);
  else
    ops::dropout_forward(x, rate_, s, mask_, y);
  return y;
}
Tensor Dropout::backward(const Tensor& dy, Context&, bool need_dx) {
  if (!need_dx) return Tensor();
  if (!active_) return dy;
  Tensor dx = dx_buf_.get(dy.shape(), dy);
  ops::mul(dy, mask_, dx);
  return dx;
}

// ---- the factory -----------------------------------------------------------------------------------
const std::vector<std::string>& layer_keys() {
  static const std::vector<std::string> k = {"flatten", "dense", "batch_normalization", "activation", "relu",
                                             "leaky_relu", "prelu", "rrelu", "elu", "softmax", "dropout",
                                             "alpha_dropout", "mc_dropout", "mc_alpha_dropout"};
  return k;
}

std::unique_ptr<Layer> make_layer(const ConfigNode& entry) {
  if (!entry.is_map() || entry.size() != 1)
    entry.fail("each layer is a one-key mapping such as `- dense: {units: 100}`");
  const std::string key = entry.keys()[0];
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
  return layer;
}

}  // namespace lockstep
