// Keras 2.10's EarlyStopping and ReduceLROnPlateau (keras-semantics §6.1, §7.6), run identically on
// every rank from the globally reduced epoch logs. Their state is plain numbers (and EarlyStopping's
// best weights), saved in checkpoints so that a resumed run continues them exactly.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "core/config.h"
#include "core/model.h"
#include "core/tensor.h"

namespace lockstep {

// "auto": max when the monitored name says accuracy (EarlyStopping: ends with acc/accuracy/auc;
// ReduceLROnPlateau: contains "acc"), else min.
enum class MonitorMode { Min, Max };

class EarlyStopping {
 public:
  static EarlyStopping from_config(const ConfigNode& node);
  const std::string& monitor() const { return monitor_; }
  // After each epoch; true when training should stop. Keeps a copy of the weights at the best epoch
  // when restore_best_weights.
  bool on_epoch_end(int64_t epoch, const std::map<std::string, double>& logs, const Model& model);
  // Keras 2.10: the best weights are restored only when EarlyStopping itself stopped the run.
  void on_train_end(Model& model);
  bool stopped() const { return stopped_epoch_ > 0; }

  // Checkpoint state.
  std::map<std::string, double> state() const;
  void load_state(const std::map<std::string, double>& s);
  const Tensor& best_weights() const { return best_weights_; }
  void set_best_weights(const Tensor& w) { best_weights_ = w.clone(); }

 private:
  std::string monitor_ = "val_loss";
  double min_delta_ = 0.0;
  int64_t patience_ = 0;
  MonitorMode mode_ = MonitorMode::Min;
  bool has_baseline_ = false;
  double baseline_ = 0.0;
  bool restore_ = false;
  int64_t wait_ = 0;
  int64_t stopped_epoch_ = 0;
  int64_t best_epoch_ = -1;
  double best_ = 0.0;
  Tensor best_weights_;
};

class ReduceLROnPlateau {
 public:
  static ReduceLROnPlateau from_config(const ConfigNode& node, bool allow_name = false);
  const std::string& monitor() const { return monitor_; }
  // After each epoch: the new learning rate (lr unchanged unless a plateau was detected).
  double on_epoch_end(int64_t epoch, const std::map<std::string, double>& logs, double lr);

  std::map<std::string, double> state() const;
  void load_state(const std::map<std::string, double>& s);

 private:
  std::string monitor_ = "val_loss";
  double factor_ = 0.1;
  int64_t patience_ = 10;
  MonitorMode mode_ = MonitorMode::Min;
  double min_delta_ = 1e-4;
  int64_t cooldown_ = 0;
  double min_lr_ = 0.0;
  int64_t wait_ = 0;
  int64_t cooldown_counter_ = 0;
  double best_ = 0.0;
};

}  // namespace lockstep
