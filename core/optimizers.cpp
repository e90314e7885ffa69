#include "core/optimizers.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>

#include "core/ops.h"

namespace lockstep {

namespace {

std::string lower(std::string s) {
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

class SGD final : public Optimizer {
 public:
  SGD(double lr, double momentum, bool nesterov) : Optimizer("SGD", lr), mu_(momentum), nesterov_(nesterov) {}
  bool has_momentum() const override { return mu_ > 0.0; }
  double momentum() const override { return mu_; }
  void set_momentum(double m) override {
    // A zero momentum has no slot to cycle; 1cycle only cycles optimizers built with momentum.
    if (mu_ > 0.0) mu_ = m;
  }

 protected:
  std::vector<SlotSpec> slot_specs() const override {
    if (mu_ > 0.0) return {{"momentum", 0.0}};
    return {};
  }
  bool plain_descent() const override { return mu_ == 0.0; }
  void update(const Tensor& w, const Tensor& g, const std::vector<Tensor>& s) override {
    if (s.empty()) ops::sgd_update(w, g, step_lr_);
    else ops::momentum_update(w, g, s[0], step_lr_, mu_, nesterov_);
  }

 private:
  double mu_;
  bool nesterov_;
};

class Adagrad final : public Optimizer {
 public:
  Adagrad(double lr, double initial, double eps) : Optimizer("Adagrad", lr), initial_(initial), eps_(eps) {}

 protected:
  std::vector<SlotSpec> slot_specs() const override { return {{"accumulator", initial_}}; }
  void update(const Tensor& w, const Tensor& g, const std::vector<Tensor>& s) override {
    ops::adagrad_update(w, g, s[0], step_lr_, eps_);
  }

 private:
  double initial_, eps_;
};

class RMSprop final : public Optimizer {
 public:
  RMSprop(double lr, double rho, double momentum, double eps, bool centered)
      : Optimizer("RMSprop", lr), rho_(rho), mu_(momentum), eps_(eps), centered_(centered) {}
  bool has_momentum() const override { return mu_ > 0.0; }
  double momentum() const override { return mu_; }
  void set_momentum(double m) override {
    if (mu_ > 0.0) mu_ = m;
  }

 protected:
  std::vector<SlotSpec> slot_specs() const override {
    std::vector<SlotSpec> s = {{"rms", 0.0}};
    if (mu_ > 0.0) s.push_back({"momentum", 0.0});
    if (centered_) s.push_back({"mg", 0.0});
    return s;
  }
  void update(const Tensor& w, const Tensor& g, const std::vector<Tensor>& s) override {
    size_t k = 1;
    Tensor mom = mu_ > 0.0 ? s[k++] : Tensor();
    Tensor mg = centered_ ? s[k++] : Tensor();
    ops::rmsprop_update(w, g, s[0], mom, mg, step_lr_, rho_, mu_, eps_);
  }

 private:
  double rho_, mu_, eps_;
  bool centered_;
};

class Adam final : public Optimizer {
 public:
  Adam(double lr, double b1, double b2, double eps, bool amsgrad)
      : Optimizer("Adam", lr), b1_(b1), b2_(b2), eps_(eps), amsgrad_(amsgrad) {}
  bool has_momentum() const override { return true; }
  double momentum() const override { return b1_; }
  void set_momentum(double m) override { b1_ = m; }

 protected:
  std::vector<SlotSpec> slot_specs() const override {
    std::vector<SlotSpec> s = {{"m", 0.0}, {"v", 0.0}};
    if (amsgrad_) s.push_back({"vhat", 0.0});
    return s;
  }
  void begin_step(int64_t t, double lr) override {
    alpha_ = lr * std::sqrt(1.0 - std::pow(hyper(b2_), double(t))) / (1.0 - std::pow(hyper(b1_), double(t)));
  }
  void update(const Tensor& w, const Tensor& g, const std::vector<Tensor>& s) override {
    ops::adam_update(w, g, s[0], s[1], amsgrad_ ? s[2] : Tensor(), alpha_, b1_, b2_, eps_);
  }

 private:
  double b1_, b2_, eps_;
  bool amsgrad_;
  double alpha_ = 0;
};

class Adamax final : public Optimizer {
 public:
  Adamax(double lr, double b1, double b2, double eps) : Optimizer("Adamax", lr), b1_(b1), b2_(b2), eps_(eps) {}
  bool has_momentum() const override { return true; }
  double momentum() const override { return b1_; }
  void set_momentum(double m) override { b1_ = m; }

 protected:
  std::vector<SlotSpec> slot_specs() const override { return {{"m", 0.0}, {"v", 0.0}}; }
  void begin_step(int64_t t, double lr) override { lr_t_ = lr / (1.0 - std::pow(hyper(b1_), double(t))); }
  void update(const Tensor& w, const Tensor& g, const std::vector<Tensor>& s) override {
    ops::adamax_update(w, g, s[0], s[1], lr_t_, b1_, b2_, eps_);
  }

 private:
  double b1_, b2_, eps_;
  double lr_t_ = 0;
};

// K210 Nadam: the momentum schedule mu_t = b1(1 - 0.5·0.96^(0.004 t)) with its running product kept
// in the optimizer-level `momentum_cache` (keras-semantics §5.6: the book's TF 2.x behaviour).
class Nadam final : public Optimizer {
 public:
  Nadam(double lr, double b1, double b2, double eps) : Optimizer("Nadam", lr), b1_(b1), b2_(b2), eps_(eps) {}
  bool has_momentum() const override { return true; }
  double momentum() const override { return b1_; }
  void set_momentum(double m) override { b1_ = m; }

 protected:
  std::vector<SlotSpec> slot_specs() const override { return {{"m", 0.0}, {"v", 0.0}}; }
  std::vector<std::pair<std::string, double*>> scalars() override { return {{"momentum_cache", &cache_}}; }
  void begin_step(int64_t t, double lr) override {
    const double decay = 0.004;
    const double mu_t = hyper(b1_) * (1.0 - 0.5 * std::pow(0.96, decay * double(t)));
    const double mu_next = hyper(b1_) * (1.0 - 0.5 * std::pow(0.96, decay * double(t + 1)));
    cache_ *= mu_t;
    c_ = {};
    c_.lr = lr;
    c_.b1 = b1_;
    c_.b2 = b2_;
    c_.eps = eps_;
    c_.g_scale = 1.0 / (1.0 - cache_);
    c_.m_scale = 1.0 / (1.0 - cache_ * mu_next);
    c_.v_scale = 1.0 / (1.0 - std::pow(hyper(b2_), double(t)));
    c_.mu_t = mu_t;
    c_.mu_next = mu_next;
  }
  void update(const Tensor& w, const Tensor& g, const std::vector<Tensor>& s) override {
    ops::nadam_update(w, g, s[0], s[1], c_);
  }

 private:
  double b1_, b2_, eps_;
  double cache_ = 1.0;
  ops::NadamCoeffs c_{};
};

}  // namespace

const std::vector<std::string>& Optimizer::names() {
  static const std::vector<std::string> n = {"sgd", "adagrad", "rmsprop", "adam", "adamax", "nadam"};
  return n;
}

std::unique_ptr<Optimizer> Optimizer::from_config(const ConfigNode& node) {
  std::string name = "rmsprop";
  ConfigNode args = node;
  if (node.defined()) {
    if (node.is_scalar()) {
      name = lower(node.as_string());
    } else {
      node.expect_map();
      name = lower(node.require("name").as_string());
    }
  }
  const auto& all = names();
  if (std::find(all.begin(), all.end(), name) == all.end()) {
    std::string hint = nearest_name(name, all);
    (node.is_map() ? node["name"] : node)
        .fail(str_cat("unknown optimizer '", name, "'; expected one of ", join(all),
                      hint.empty() ? "" : str_cat(" (did you mean '", hint, "'?)")));
  }
  const bool map = node.defined() && node.is_map();
  auto num = [&](const std::string& key, double def, double lo, double hi, bool lo_open = false) {
    return map ? node.get_in(key, def, lo, hi, lo_open) : def;
  };
  auto flag = [&](const std::string& key, bool def) { return map ? node.get(key, def) : def; };
  std::vector<std::string> keys = {"name", "learning_rate", "clipvalue", "clipnorm", "global_clipnorm", "decay"};
  const double inf = std::numeric_limits<double>::infinity();
  const double default_lr = name == "sgd" ? 0.01 : name == "adagrad" || name == "adam" || name == "adamax" || name == "nadam"
                                                       ? 0.001
                                                       : 0.001;
  const double lr = num("learning_rate", default_lr, 0.0, inf, true);
  std::unique_ptr<Optimizer> opt;
  if (name == "sgd") {
    keys.insert(keys.end(), {"momentum", "nesterov"});
    opt = std::make_unique<SGD>(lr, num("momentum", 0.0, 0.0, 1.0), flag("nesterov", false));
  } else if (name == "adagrad") {
    keys.insert(keys.end(), {"initial_accumulator_value", "epsilon"});
    opt = std::make_unique<Adagrad>(lr, num("initial_accumulator_value", 0.1, 0.0, inf), num("epsilon", 1e-7, 0.0, inf));
  } else if (name == "rmsprop") {
    keys.insert(keys.end(), {"rho", "momentum", "epsilon", "centered"});
    opt = std::make_unique<RMSprop>(lr, num("rho", 0.9, 0.0, 1.0), num("momentum", 0.0, 0.0, 1.0),
                                    num("epsilon", 1e-7, 0.0, inf), flag("centered", false));
  } else if (name == "adam") {
    keys.insert(keys.end(), {"beta_1", "beta_2", "epsilon", "amsgrad"});
    opt = std::make_unique<Adam>(lr, num("beta_1", 0.9, 0.0, 1.0), num("beta_2", 0.999, 0.0, 1.0),
                                 num("epsilon", 1e-7, 0.0, inf), flag("amsgrad", false));
  } else if (name == "adamax") {
    keys.insert(keys.end(), {"beta_1", "beta_2", "epsilon"});
    opt = std::make_unique<Adamax>(lr, num("beta_1", 0.9, 0.0, 1.0), num("beta_2", 0.999, 0.0, 1.0),
                                   num("epsilon", 1e-7, 0.0, inf));
  } else {
    keys.insert(keys.end(), {"beta_1", "beta_2", "epsilon"});
    opt = std::make_unique<Nadam>(lr, num("beta_1", 0.9, 0.0, 1.0), num("beta_2", 0.999, 0.0, 1.0),
                                  num("epsilon", 1e-7, 0.0, inf));
  }
  if (map) {
    // Keras 2.10's Nadam stores its `schedule_decay` in the decay slot and never decays the rate.
    if (name == "nadam" && node.has("decay"))
      node["decay"].fail("Nadam has no legacy `decay` in Keras 2.10 (it is its momentum schedule); use "
                         "`schedule: {name: inverse_time_decay, decay_steps: 1, decay_rate: ...}` instead");
    node.allow_keys(keys);
    opt->decay_ = num("decay", 0.0, 0.0, inf);
    if (node.has("clipvalue")) opt->clip_.clipvalue = num("clipvalue", 0.0, 0.0, inf, true);
    if (node.has("clipnorm")) opt->clip_.clipnorm = num("clipnorm", 0.0, 0.0, inf, true);
    if (node.has("global_clipnorm")) opt->clip_.global_clipnorm = num("global_clipnorm", 0.0, 0.0, inf, true);
    if (node.has("clipnorm") && node.has("global_clipnorm"))
      node["global_clipnorm"].fail("clipnorm and global_clipnorm cannot both be set (Keras refuses it too); choose one");
  }
  return opt;
}

void Optimizer::bind(const Model& model) {
  model_ = &model;
  specs_ = slot_specs();
  slots_.clear();
  const Tensor& g = model.grads_arena();
  f32_ = g.dtype() == DType::F32;
  for (const SlotSpec& s : specs_) {
    Tensor t = Tensor::zeros(g.shape(), g.device(), g.dtype());
    if (s.initial != 0.0) ops::fill(t, s.initial);
    slots_.push_back(t);
  }
}

double Optimizer::effective_learning_rate() const {
  return decay_ > 0.0 ? lr_ / (1.0 + decay_ * double(iterations_)) : lr_;
}

void Optimizer::clip_gradients(const std::vector<WeightRef>& refs, bool whole, const Tensor& grads, double* gnorm) {
  if (clip_.clipvalue > 0.0) {
    if (whole) ops::clip_by_value(grads, -clip_.clipvalue, clip_.clipvalue);
    else
      for (const WeightRef& r : refs) ops::clip_by_value(r.weight->grad, -clip_.clipvalue, clip_.clipvalue);
  }
  if (clip_.clipnorm > 0.0) {
    for (const WeightRef& r : refs) {
      const double n = std::sqrt(ops::sum_squares(r.weight->grad));
      // g·c/max(‖g‖, c): only tensors above the threshold change.
      if (n > clip_.clipnorm) ops::scale(r.weight->grad, clip_.clipnorm / n);
    }
  }
  if (clip_.global_clipnorm > 0.0) {
    double ss = 0.0;
    if (whole) ss = ops::sum_squares(grads);
    else
      for (const WeightRef& r : refs) ss += ops::sum_squares(r.weight->grad);
    const double n = std::sqrt(ss);
    *gnorm = n;
    if (!std::isfinite(n)) {
      // tf.clip_by_global_norm turns every gradient into NaN; the trainer's NaN check stops the run.
      for (const WeightRef& r : refs) ops::fill(r.weight->grad, std::numeric_limits<double>::quiet_NaN());
    } else if (n > clip_.global_clipnorm) {
      const double f = clip_.global_clipnorm / n;
      if (whole) ops::scale(grads, f);
      else
        for (const WeightRef& r : refs) ops::scale(r.weight->grad, f);
    }
  }
}

double Optimizer::plain_descent_rate() const {
  if (!plain_descent() || clip_.clipvalue > 0.0 || clip_.clipnorm > 0.0 || clip_.global_clipnorm > 0.0) return 0.0;
  return effective_learning_rate();
}

double Optimizer::apply(Model& model, bool descended) {
  LS_CHECK(model_ == &model, "Optimizer::apply: bind() the optimizer to this model first");
  LS_CHECK(!descended || plain_descent_rate() > 0.0, "Optimizer::apply: ", name_, " is not plain gradient descent");
  std::vector<WeightRef> refs = model.trainable_weights();
  if (descended)
    std::erase_if(refs, [&](const WeightRef& r) { return model.layers()[size_t(r.layer)]->descends_in_backward(); });
  size_t grad_carrying = 0;
  for (const WeightRef& r : model.weight_refs()) grad_carrying += r.grad_offset >= 0;
  // Every gradient-carrying weight trainable: one fused pass over the arenas.
  const bool whole = refs.size() == grad_carrying;
  const Tensor& grads = model.grads_arena();
  double gnorm = std::numeric_limits<double>::quiet_NaN();
  clip_gradients(refs, whole, grads, &gnorm);
  t_ = iterations_ + 1;
  step_lr_ = effective_learning_rate();
  begin_step(t_, step_lr_);
  if (whole) {
    Tensor w = model.weights_arena().view(0, grads.shape());
    update(w, grads, slots_);
  } else {
    std::vector<Tensor> views(slots_.size());
    for (const WeightRef& r : refs) {
      for (size_t k = 0; k < slots_.size(); ++k) views[k] = slots_[k].view(r.grad_offset, r.weight->shape);
      update(r.weight->value, r.weight->grad, views);
    }
  }
  ++iterations_;
  return gnorm;
}

std::vector<std::pair<std::string, Tensor>> Optimizer::state() const {
  LS_CHECK(model_ != nullptr, "Optimizer::state: not bound to a model");
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t k = 0; k < specs_.size(); ++k)
    for (const WeightRef& r : model_->weight_refs()) {
      if (r.grad_offset < 0) continue;
      const std::string var = model_->layers()[size_t(r.layer)]->name() + "/" + r.weight->name;
      out.emplace_back(name_ + "/" + var + "/" + specs_[k].name + ":0", slots_[k].view(r.grad_offset, r.weight->shape));
    }
  return out;
}

std::map<std::string, double> Optimizer::scalar_state() {
  std::map<std::string, double> out{{"iterations", double(iterations_)}};
  for (auto& [n, v] : scalars()) out[n] = *v;
  return out;
}

void Optimizer::load_state(const std::vector<std::pair<std::string, Tensor>>& slots,
                           const std::map<std::string, double>& scalars_in, const std::string& source) {
  LS_CHECK(model_ != nullptr, "Optimizer::load_state: not bound to a model");
  for (const auto& [want, dst] : state()) {
    const Tensor* src = nullptr;
    for (const auto& [k, t] : slots)
      if (k == want) src = &t;
    if (!src)
      throw CheckpointError(str_cat(source, ": optimizer state '", want,
                                    "' is missing (a checkpoint written with another optimizer or model?)"));
    if (src->numel() != dst.numel())
      throw CheckpointError(str_cat(source, ": optimizer state '", want, "' has ", src->numel(), " values, expected ",
                                    dst.numel()));
    Tensor d = dst;
    d.copy_from(src->to(dst.dtype()).to(dst.device()).reshape(dst.shape()));
  }
  auto get = [&](const std::string& k) {
    auto it = scalars_in.find(k);
    if (it == scalars_in.end())
      throw CheckpointError(str_cat(source, ": optimizer scalar '", k, "' is missing"));
    return it->second;
  };
  iterations_ = int64_t(get("iterations"));
  for (auto& [n, v] : scalars()) *v = get(n);
}

}  // namespace lockstep
