// The trainer: fit / evaluate / predict / lr-find a run file on one process or N ranks.
//
// One training step on every rank: forward on the rank's share of the global batch; the loss
// gradient scaled by 1/global_batch (so a SUM all-reduce yields the global mean gradient, exact even
// when ranks hold unequal shares); backward, with each layer's gradients handed to the bucketer as
// soon as they are assigned (non-blocking all-reduces overlap the rest of the backward pass); then,
// identically on every rank: l1/l2 gradients, clipping, the optimizer update, max-norm constraints
// (core/update_step.h, which the step benchmark runs too).
// Every replica therefore holds the same weights after every step; a periodic checksum comparison
// (distributed.check_every_steps) stops a run whose replicas diverged.
//
// Checkpoints (checkpoint: {every_epochs, every_steps, keep, save_best, signal}) hold everything a
// resumed run needs to continue bit-identically: weights, optimizer slots and scalars, the rate,
// callback counters and best weights, the epoch, the position within it and the epoch's running sums,
// and the history. Random draws (dropout masks, RReLU slopes, the data order) are pure functions of
// (seed, step, layer) and (seed, epoch), so the seed and the step are the whole random state of every
// rank, and every rank holds the same state: rank 0 writes.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/gradient_bucketer.h"
#include "core/callbacks.h"
#include "core/checkpoint.h"
#include "core/config.h"
#include "core/losses.h"
#include "core/model.h"
#include "core/optimizers.h"
#include "core/schedules.h"
#include "core/tensorboard.h"
#include "core/update_step.h"
#include "data/dataset.h"
#include "data/loader.h"

namespace lockstep {

class BatchStager;  // copies batches to the model's device (trainer.cpp)

// Exit statuses of `lockstep train` (README "Exit status"); batch scripts requeue on kExitPreempted.
inline constexpr int kExitPreempted = 75;  // stopped by a signal after writing a checkpoint
inline constexpr int kExitNonFinite = 3;   // the loss became NaN or infinite
inline constexpr int kExitComm = 4;        // a collective failed or timed out, or replicas diverged

// The loss became NaN or infinite (exit kExitNonFinite).
class NonFiniteLoss : public Error {
 public:
  explicit NonFiniteLoss(const std::string& what) : Error(what) {}
};

struct EpochLog {
  int64_t epoch = 0;  // 0-based
  std::map<std::string, double> values;  // loss, accuracy, val_loss, val_accuracy, lr, seconds
};

struct FitResult {
  std::vector<EpochLog> history;
  bool preempted = false;       // a signal stopped the run after a checkpoint
  bool early_stopped = false;
  std::string last_checkpoint;  // the newest checkpoint written (or resumed from)
};

class Trainer {
 public:
  // `run` is the resolved run file (after --set overrides); `run_file` its path (relative paths in it,
  // e.g. data.path and transfer.from, are relative to the file's folder).
  Trainer(const ConfigNode& run, const std::string& run_file, comm::Communicator& comm);
  ~Trainer();

  // Train for train.epochs. `resume`: "" (fresh), "auto" (newest valid checkpoint in run_dir, fresh if
  // none) or a checkpoint path. Rank 0 writes history.csv, config.yaml, checkpoints/ and final.h5.
  FitResult fit(const std::string& run_dir, const std::string& resume = "");
  // Mean loss and metrics over a split, reduced across ranks (mc: dropout kept active).
  std::map<std::string, double> evaluate(const data::Split& split, bool mc = false);
  // Class probabilities for every sample of a split, in order, on rank 0 (gathered): mean over
  // `mc_samples` stochastic passes when > 0 (MC dropout) with their standard deviation in `stddev`.
  // One row per position the loader yields (a paired split: per pair, data.pairs); `labels` receives
  // each row's label as the model is trained on it (a pair's same/different label, not a digit).
  void predict(const data::Split& split, int mc_samples, Tensor* mean, Tensor* stddev,
               std::vector<int32_t>* labels = nullptr);
  // The chapter's learning-rate finder: one epoch with the rate growing exponentially from min_rate to
  // max_rate; returns (rate, running mean loss, batch loss) per step. Stops early when the loss
  // exceeds 4x its minimum or becomes non-finite.
  struct LrPoint {
    double rate, loss, batch_loss;
  };
  std::vector<LrPoint> lr_find(double min_rate, double max_rate);

  // Load weights (all layers) from a checkpoint, e.g. for evaluate/predict.
  void load_weights(const std::string& checkpoint);

  const data::Dataset& dataset() const { return dataset_; }
  Model& model() { return *model_; }
  Optimizer& optimizer() { return *optimizer_; }
  const std::string& run_name() const { return name_; }
  int64_t batch_size() const { return batch_size_; }
  std::string resolved_yaml() const;
  comm::Communicator& comm() { return comm_; }
  Device device() const { return device_; }

 private:
  struct Resume;
  void train_step(const data::Batch& b, int64_t global_step, double* sums);
  void set_frozen(bool frozen);
  void new_optimizer(double learning_rate);
  // What every checkpoint and final.h5 hold: run file, optimizer slots and scalars, step, rate, seed, history.
  CheckpointContents model_state(const std::string& history_csv) const;
  std::string write_checkpoint(const std::string& run_dir, const std::string& file, int64_t epoch,
                               int64_t step_in_epoch, const std::vector<double>& sums, const std::string& history_csv);
  bool restore(const std::string& path, Resume* r);
  std::string find_resume_checkpoint(const std::string& run_dir, const std::string& resume, Resume* r);
  std::vector<std::string> logged_keys(bool with_validation) const;

  ConfigNode run_;
  std::string run_file_;
  comm::Communicator& comm_;
  std::string name_;
  uint64_t seed_ = 42;
  int64_t epochs_ = 1, batch_size_ = 32;
  bool shuffle_ = true;
  int verbose_ = 1;
  data::Dataset dataset_;
  std::unique_ptr<Model> model_;
  // One output's loss (Keras's compile(loss=..., loss_weights=...)); each output is trained on the data's labels.
  struct Head {
    std::string name;  // the output's layer name
    std::unique_ptr<LossFunction> loss;
    double weight = 1.0;
    Buffer per_sample_buf, dout_buf, metric_buf;
    double loss_sum = 0;  // this step's or batch's Σ per-sample loss
  };
  // A logged quantity besides the total loss: a metric of an output, and with several outputs each
  // output's loss (Keras's history keys: accuracy; or out_loss, out_accuracy, ...).
  struct Logged {
    std::string name;
    int head = 0;
    bool is_loss = false;
    MetricSpec metric;
  };
  void parse_heads();
  // Per-sample sums of every Logged quantity of a batch into out[0..metrics_.size()).
  void logged_sums(const std::vector<Tensor>& outs, const Tensor& y, int64_t n, double* out);
  static std::vector<Tensor> inputs_of(const data::Batch& b);
  std::vector<Head> heads_;
  std::vector<Logged> metrics_;
  std::vector<Tensor> douts_;
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<LearningRateSchedule> schedule_;
  std::unique_ptr<EarlyStopping> early_stopping_;
  std::unique_ptr<ReduceLROnPlateau> plateau_;
  std::optional<TensorBoardOptions> tensorboard_;  // callbacks.tensorboard (rank 0 writes)
  // Gradient synchronisation.
  comm::BucketOptions bucket_options_;
  comm::ReductionOptions reduction_options_;
  std::unique_ptr<UpdateStep> update_;
  int64_t check_every_steps_ = 100;
  std::chrono::milliseconds step_timeout_{30'000};
  // Transfer learning: layers taken from a source model, frozen for the first freeze_epochs.
  std::vector<int> transferred_;
  std::string transfer_source_;  // transfer.from, resolved against the run file's folder
  std::string keras_weights_;    // model.from_keras: the Keras file whose weights replace the initial ones
  int64_t freeze_epochs_ = 0;
  double unfreeze_lr_ = 0;
  bool frozen_ = false;
  // Checkpoints.
  int64_t ckpt_every_epochs_ = 1, ckpt_every_steps_ = 0, ckpt_keep_ = 3;
  bool ckpt_save_best_ = false;
  std::string ckpt_monitor_;
  double ckpt_best_ = 0;
  int warning_signal_ = 0;
  // Step buffers (reused).
  // Where the model, its step buffers and the staged batches live (`device:`, auto by default).
  Device device_ = Device::CPU;
  std::unique_ptr<BatchStager> stager_;
};

// SIGTERM, SIGINT and the warning signal (checkpoint.signal; 0: none) stop training cleanly from now
// on: `lockstep train` installs them before start-up so that an early signal is not lost.
void install_stop_handlers(int warning_signal);
// The run file's checkpoint.signal (SIGUSR1 by default, SIGUSR2, or 0 for none).
int warning_signal_of(const ConfigNode& run);

// `runs/<name>-<timestamp>` unless given.
std::string default_run_dir(const std::string& name);

}  // namespace lockstep
