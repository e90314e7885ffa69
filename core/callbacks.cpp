#include "core/callbacks.h"

#include <cmath>
#include <limits>

#include "core/ops.h"

namespace lockstep {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

MonitorMode parse_mode(const ConfigNode& node, bool auto_max) {
  const std::string m = node.get_choice("mode", "auto", {"auto", "min", "max"});
  if (m == "min") return MonitorMode::Min;
  if (m == "max") return MonitorMode::Max;
  return auto_max ? MonitorMode::Max : MonitorMode::Min;
}

double monitored(const std::map<std::string, double>& logs, const std::string& key) {
  auto it = logs.find(key);
  LS_CHECK(it != logs.end(), "monitored value '", key, "' missing from the epoch logs");
  return it->second;
}

}  // namespace

EarlyStopping EarlyStopping::from_config(const ConfigNode& node) {
  EarlyStopping e;
  if (!node.defined()) return e;
  node.expect_map();
  node.allow_keys({"monitor", "min_delta", "patience", "mode", "baseline", "restore_best_weights"});
  e.monitor_ = node.get("monitor", "val_loss");
  const bool auto_max = ends_with(e.monitor_, "acc") || ends_with(e.monitor_, "accuracy") || ends_with(e.monitor_, "auc");
  e.mode_ = parse_mode(node, auto_max);
  // Keras: min_delta is made non-negative and signed by the mode.
  e.min_delta_ = std::abs(node.get("min_delta", 0.0));
  e.patience_ = node.get_at_least("patience", 0, 0);
  if (node.has("baseline")) {
    e.has_baseline_ = true;
    e.baseline_ = node["baseline"].as_double();
  }
  e.restore_ = node.get("restore_best_weights", false);
  e.best_ = e.mode_ == MonitorMode::Min ? kInf : -kInf;
  return e;
}

bool EarlyStopping::on_epoch_end(int64_t epoch, const std::map<std::string, double>& logs, const Model& model) {
  const double current = monitored(logs, monitor_);
  // Keras: monitor_op(current - min_delta, reference) with min_delta signed by the mode (negative in
  // min mode), so an improvement must beat the reference by more than |min_delta| in either mode.
  auto improves = [&](double value, double reference) {
    return mode_ == MonitorMode::Min ? value + min_delta_ < reference : value - min_delta_ > reference;
  };
  // Keras 2.10: with restore_best_weights the first epoch's weights are kept even when it is not an
  // improvement (a NaN monitor), so a stop always has weights to restore.
  if (restore_ && !best_weights_.defined()) best_weights_ = model.weights_arena().clone();
  ++wait_;
  if (improves(current, best_)) {
    best_ = current;
    best_epoch_ = epoch;
    if (restore_) best_weights_ = model.weights_arena().clone();
    if (!has_baseline_ || improves(current, baseline_)) wait_ = 0;
  }
  if (wait_ >= patience_ && epoch > 0) {
    stopped_epoch_ = epoch;
    return true;
  }
  return false;
}

void EarlyStopping::on_train_end(Model& model) {
  if (stopped() && restore_ && best_weights_.defined()) {
    Tensor w = model.weights_arena();
    w.copy_from(best_weights_);
  }
}

std::map<std::string, double> EarlyStopping::state() const {
  return {{"early_stopping.wait", double(wait_)},
          {"early_stopping.best", best_},
          {"early_stopping.best_epoch", double(best_epoch_)},
          {"early_stopping.stopped_epoch", double(stopped_epoch_)}};
}

void EarlyStopping::load_state(const std::map<std::string, double>& s) {
  auto get = [&](const std::string& k, double def) {
    auto it = s.find(k);
    return it == s.end() ? def : it->second;
  };
  wait_ = int64_t(get("early_stopping.wait", 0));
  best_ = get("early_stopping.best", best_);
  best_epoch_ = int64_t(get("early_stopping.best_epoch", -1));
  stopped_epoch_ = int64_t(get("early_stopping.stopped_epoch", 0));
}

ReduceLROnPlateau ReduceLROnPlateau::from_config(const ConfigNode& node, bool allow_name) {
  ReduceLROnPlateau r;
  if (!node.defined()) return r;
  node.expect_map();
  std::vector<std::string> keys = {"monitor", "factor", "patience", "mode", "min_delta", "cooldown", "min_lr"};
  if (allow_name) keys.push_back("name");
  node.allow_keys(keys);
  r.monitor_ = node.get("monitor", "val_loss");
  r.mode_ = parse_mode(node, r.monitor_.find("acc") != std::string::npos);
  r.factor_ = node.get_in("factor", 0.1, 0.0, 1.0, true, true);
  r.patience_ = node.get_at_least("patience", 10, 0);
  r.min_delta_ = node.get_in("min_delta", 1e-4, 0.0, kInf);
  r.cooldown_ = node.get_at_least("cooldown", 0, 0);
  r.min_lr_ = node.get_in("min_lr", 0.0, 0.0, kInf);
  r.best_ = r.mode_ == MonitorMode::Min ? kInf : -kInf;
  return r;
}

double ReduceLROnPlateau::on_epoch_end(int64_t, const std::map<std::string, double>& logs, double lr) {
  const double current = monitored(logs, monitor_);
  if (cooldown_counter_ > 0) {
    --cooldown_counter_;
    wait_ = 0;
  }
  // Keras asks in_cooldown() again after the decrement.
  const bool in_cooldown = cooldown_counter_ > 0;
  const bool better = mode_ == MonitorMode::Min ? current < best_ - min_delta_ : current > best_ + min_delta_;
  if (better) {
    best_ = current;
    wait_ = 0;
  } else if (!in_cooldown) {
    ++wait_;
    if (wait_ >= patience_ && lr > min_lr_) {
      // Keras computes in float32: max(old_lr * factor, min_lr).
      lr = std::max(double(float(lr) * float(factor_)), min_lr_);
      cooldown_counter_ = cooldown_;
      wait_ = 0;
    }
  }
  return lr;
}

std::map<std::string, double> ReduceLROnPlateau::state() const {
  return {{"reduce_lr.wait", double(wait_)},
          {"reduce_lr.cooldown_counter", double(cooldown_counter_)},
          {"reduce_lr.best", best_}};
}

void ReduceLROnPlateau::load_state(const std::map<std::string, double>& s) {
  auto get = [&](const std::string& k, double def) {
    auto it = s.find(k);
    return it == s.end() ? def : it->second;
  };
  wait_ = int64_t(get("reduce_lr.wait", 0));
  cooldown_counter_ = int64_t(get("reduce_lr.cooldown_counter", 0));
  best_ = get("reduce_lr.best", best_);
}

}  // namespace lockstep
