#include "core/schedules.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace lockstep {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

class ExponentialDecay final : public LearningRateSchedule {
 public:
  ExponentialDecay(double lr0, double steps, double rate, bool staircase)
      : lr0_(lr0), steps_(steps), rate_(rate), staircase_(staircase) {}
  double at(double t) const override {
    double p = t / steps_;
    if (staircase_) p = std::floor(p);
    return lr0_ * std::pow(rate_, p);
  }

 private:
  double lr0_, steps_, rate_;
  bool staircase_;
};

class InverseTimeDecay final : public LearningRateSchedule {
 public:
  InverseTimeDecay(double lr0, double steps, double rate, bool staircase)
      : lr0_(lr0), steps_(steps), rate_(rate), staircase_(staircase) {}
  double at(double t) const override {
    double p = t / steps_;
    if (staircase_) p = std::floor(p);
    return lr0_ / (1.0 + rate_ * p);
  }

 private:
  double lr0_, steps_, rate_;
  bool staircase_;
};

class PiecewiseConstantDecay final : public LearningRateSchedule {
 public:
  PiecewiseConstantDecay(std::vector<double> b, std::vector<double> v) : b_(std::move(b)), v_(std::move(v)) {}
  double at(double t) const override {
    for (size_t i = 0; i < b_.size(); ++i)
      if (t <= b_[i]) return v_[i];
    return v_.back();
  }

 private:
  std::vector<double> b_, v_;
};

class OneCycleSchedule final : public LearningRateSchedule {
 public:
  OneCycleSchedule(OneCycle c, bool iterations_given, bool last_given, bool last_rate_given, bool start_given)
      : c_(c), iterations_given_(iterations_given), last_given_(last_given), last_rate_given_(last_rate_given) {
    if (!start_given) c_.start_rate = c_.max_rate / 10.0;
    if (!last_rate_given_) c_.last_rate = c_.start_rate / 1000.0;
    // With `iterations` given the schedule is complete now: last_iterations defaults to N//10 + 1
    // (not to the config reader's placeholder of 1) even if set_run_length is never called.
    if (iterations_given_ && !last_given_) c_.last_iterations = c_.iterations / 10 + 1;
  }
  void set_run_length(int64_t steps, int64_t epochs) override {
    if (!iterations_given_) c_.iterations = steps * epochs;
    if (!last_given_) c_.last_iterations = c_.iterations / 10 + 1;
  }
  double at(double t) const override { return c_.rate(int64_t(t)); }
  bool cycles_momentum() const override { return c_.cycle_momentum; }
  double momentum(int64_t step) const override { return c_.momentum(step); }

 private:
  OneCycle c_;
  bool iterations_given_, last_given_, last_rate_given_;
};

}  // namespace

double OneCycle::rate(int64_t i) const {
  const int64_t h = half();
  auto interp = [&](double i1, double i2, double r1, double r2) {
    return i2 == i1 ? r2 : (r2 - r1) * (double(i) - i1) / (i2 - i1) + r1;
  };
  if (i < h) return interp(0, double(h), start_rate, max_rate);
  if (i < 2 * h) return interp(double(h), double(2 * h), max_rate, start_rate);
  // The chapter's code extrapolates below last_rate (eventually negative) past the end; clamp.
  if (i >= iterations) return last_rate;
  return interp(double(2 * h), double(iterations), start_rate, last_rate);
}

double OneCycle::momentum(int64_t i) const {
  const int64_t h = half();
  auto interp = [&](double i1, double i2, double r1, double r2) {
    return i2 == i1 ? r2 : (r2 - r1) * (double(i) - i1) / (i2 - i1) + r1;
  };
  if (i < h) return interp(0, double(h), max_momentum, min_momentum);
  if (i < 2 * h) return interp(double(h), double(2 * h), min_momentum, max_momentum);
  return max_momentum;
}

const std::vector<std::string>& LearningRateSchedule::names() {
  static const std::vector<std::string> n = {"exponential_decay", "inverse_time_decay", "piecewise_constant_decay",
                                             "one_cycle", "reduce_lr_on_plateau"};
  return n;
}

std::unique_ptr<LearningRateSchedule> LearningRateSchedule::from_config(const ConfigNode& node, double optimizer_lr) {
  if (!node.defined()) return nullptr;
  node.expect_map();
  ConfigNode nn = node.require("name");
  const std::string name = nn.as_string();
  const auto& all = names();
  if (std::find(all.begin(), all.end(), name) == all.end()) {
    std::string hint = nearest_name(name, all);
    nn.fail(str_cat("unknown schedule '", name, "'; expected one of ", join(all),
                    hint.empty() ? "" : str_cat(" (did you mean '", hint, "'?)")));
  }
  if (name == "reduce_lr_on_plateau") return nullptr;  // the callback reads this node
  std::unique_ptr<LearningRateSchedule> s;
  if (name == "exponential_decay" || name == "inverse_time_decay") {
    node.allow_keys({"name", "initial_learning_rate", "decay_steps", "decay_rate", "staircase", "per"});
    const double lr0 = node.get_in("initial_learning_rate", optimizer_lr, 0.0, kInf, true);
    const double steps = node.require("decay_steps").as_double();
    if (!(steps > 0)) node["decay_steps"].fail(str_cat("expected a positive number of steps, got ", steps));
    const double rate = node.require("decay_rate").as_double();
    if (!(rate >= 0)) node["decay_rate"].fail(str_cat("expected a non-negative rate, got ", rate));
    const bool staircase = node.get("staircase", false);
    if (name == "exponential_decay") s = std::make_unique<ExponentialDecay>(lr0, steps, rate, staircase);
    else s = std::make_unique<InverseTimeDecay>(lr0, steps, rate, staircase);
  } else if (name == "piecewise_constant_decay") {
    node.allow_keys({"name", "boundaries", "values", "per"});
    std::vector<double> b = node.require("boundaries").as_double_list();
    std::vector<double> v = node.require("values").as_double_list();
    if (v.size() != b.size() + 1)
      node["values"].fail(str_cat("expected one more value than boundaries (", b.size() + 1, "), got ", v.size()));
    for (size_t i = 1; i < b.size(); ++i)
      if (!(b[i] > b[i - 1])) node["boundaries"].fail("expected strictly increasing boundaries");
    for (double x : v)
      if (!(x > 0)) node["values"].fail(str_cat("expected positive learning rates, got ", x));
    s = std::make_unique<PiecewiseConstantDecay>(b, v);
  } else {  // one_cycle
    node.allow_keys({"name", "max_rate", "start_rate", "last_rate", "iterations", "last_iterations", "max_momentum",
                     "min_momentum", "cycle_momentum"});
    OneCycle c;
    c.max_rate = node.get_in("max_rate", optimizer_lr, 0.0, kInf, true);
    if (node.has("start_rate")) c.start_rate = node.get_in("start_rate", 0.0, 0.0, kInf, true);
    if (node.has("last_rate")) c.last_rate = node.get_in("last_rate", 0.0, 0.0, kInf, true);
    c.iterations = node.get_at_least("iterations", 1, 1);
    c.last_iterations = node.get_at_least("last_iterations", 1, 1);
    c.max_momentum = node.get_in("max_momentum", 0.95, 0.0, 1.0);
    c.min_momentum = node.get_in("min_momentum", 0.85, 0.0, 1.0);
    c.cycle_momentum = node.get("cycle_momentum", true);
    if (node.has("iterations") && node.has("last_iterations") && c.last_iterations >= c.iterations)
      node["last_iterations"].fail("expected fewer last_iterations than iterations");
    s = std::make_unique<OneCycleSchedule>(c, node.has("iterations"), node.has("last_iterations"),
                                           node.has("last_rate"), node.has("start_rate"));
    return s;  // always per step
  }
  s->per_epoch_ = node.get_choice("per", "step", {"step", "epoch"}) == "epoch";
  return s;
}

}  // namespace lockstep
