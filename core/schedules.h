// Learning-rate schedules (keras-semantics §6), as the run file's `schedule:` section:
//
//   schedule: {name: exponential_decay, initial_learning_rate: 0.01, decay_steps: 20, decay_rate: 0.1,
//              staircase: false, per: epoch}
//
// * exponential_decay        lr0 · rate^(t/steps)            (ExponentialDecay; staircase floors t/steps)
// * inverse_time_decay       lr0 / (1 + rate·t/steps)        (InverseTimeDecay: power scheduling, c = 1)
// * piecewise_constant_decay values[i] for boundaries[i-1] < t <= boundaries[i] (PiecewiseConstantDecay)
// * one_cycle                1cycle (the chapter's OneCycleScheduler), per step over the whole run, with
//                            the optimizer's momentum cycled inversely (0.95 → 0.85 → 0.95 by default)
// * reduce_lr_on_plateau     performance scheduling: the ReduceLROnPlateau callback (core/callbacks.h)
//
// `per: step` (the default, as Keras's schedule objects) evaluates t = the optimizer's iterations before
// the update (0 for the first step); `per: epoch` evaluates t = the 0-based epoch at the epoch's start
// (Keras's LearningRateScheduler callback). A schedule is a pure function of (step, epoch), so a resumed
// run needs no schedule state.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"

namespace lockstep {

class LearningRateSchedule {
 public:
  // `optimizer_lr` is the default initial rate. Returns null for reduce_lr_on_plateau (a callback).
  static std::unique_ptr<LearningRateSchedule> from_config(const ConfigNode& node, double optimizer_lr);
  static const std::vector<std::string>& names();
  virtual ~LearningRateSchedule() = default;

  // The run's length, known once the data is loaded (1cycle's default iterations).
  virtual void set_run_length(int64_t /*steps_per_epoch*/, int64_t /*epochs*/) {}
  double learning_rate(int64_t step, int64_t epoch) const { return at(per_epoch_ ? double(epoch) : double(step)); }
  virtual bool cycles_momentum() const { return false; }
  virtual double momentum(int64_t /*step*/) const { return 0.0; }
  bool per_epoch() const { return per_epoch_; }

 protected:
  virtual double at(double t) const = 0;
  bool per_epoch_ = false;
};

// The 1cycle rates of keras-semantics §6.2 at iteration i (clamped at the final rate past the end).
struct OneCycle {
  int64_t iterations = 0;
  double max_rate = 0, start_rate = 0, last_rate = 0;
  int64_t last_iterations = 0;
  double max_momentum = 0.95, min_momentum = 0.85;
  bool cycle_momentum = true;
  int64_t half() const { return (iterations - last_iterations) / 2; }
  double rate(int64_t i) const;
  double momentum(int64_t i) const;
};

}  // namespace lockstep
