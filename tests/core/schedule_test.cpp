// Learning-rate schedules (keras-semantics §6, §6.2 1cycle), ReduceLROnPlateau (§6.1) and
// EarlyStopping (§7.6) against values worked out by hand, their bad configs, and their state round
// trips.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/callbacks.h"
#include "core/optimizers.h"
#include "core/schedules.h"
#include "tests/core/test_util.h"

namespace lockstep::test {
namespace {

std::unique_ptr<LearningRateSchedule> sched(const std::string& text, double optimizer_lr = 0.01) {
  ConfigNode cfg = load_config_string("schedule: " + text, "run.yaml");
  return LearningRateSchedule::from_config(cfg["schedule"], optimizer_lr);
}

std::string sched_error(const std::string& text) {
  try {
    sched(text);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no error)";
}

// ---- decay schedules ------------------------------------------------------------------------------
TEST(Schedules, ExponentialDecay) {
  auto s = sched("{name: exponential_decay, initial_learning_rate: 0.1, decay_steps: 10, decay_rate: 0.5}");
  ASSERT_TRUE(s);
  EXPECT_FALSE(s->per_epoch());  // per step by default
  for (int64_t t : {0, 1, 5, 10, 15, 25, 1000})
    EXPECT_NEAR(s->learning_rate(t, 99), 0.1 * std::pow(0.5, double(t) / 10.0), 1e-17) << t;
  EXPECT_EQ(s->learning_rate(0, 5), 0.1);
  auto st = sched("{name: exponential_decay, initial_learning_rate: 0.1, decay_steps: 10, decay_rate: 0.5, staircase: true}");
  for (int64_t t : {0, 1, 9, 10, 19, 20, 25})
    EXPECT_NEAR(st->learning_rate(t, 0), 0.1 * std::pow(0.5, double(t / 10)), 1e-17) << t;
  EXPECT_EQ(st->learning_rate(9, 0), 0.1);
  EXPECT_EQ(st->learning_rate(10, 0), 0.05);
  // The HML2 epoch-wise schedule: lr0·0.1^(epoch/20), evaluated at the 0-based epoch.
  auto ep = sched("{name: exponential_decay, decay_steps: 20, decay_rate: 0.1, per: epoch}", 0.01);
  EXPECT_TRUE(ep->per_epoch());
  for (int64_t e : {0, 1, 10, 20, 40})
    EXPECT_NEAR(ep->learning_rate(12345, e), 0.01 * std::pow(0.1, double(e) / 20.0), 1e-17) << e;
}

TEST(Schedules, InverseTimeDecay) {
  auto s = sched("{name: inverse_time_decay, initial_learning_rate: 0.01, decay_steps: 1, decay_rate: 1e-4}");
  // the legacy decay= kwarg: lr/(1 + decay·iterations)
  for (int64_t t : {0, 1, 100, 10000}) EXPECT_NEAR(s->learning_rate(t, 0), 0.01 / (1 + 1e-4 * double(t)), 1e-17);
  auto st = sched("{name: inverse_time_decay, initial_learning_rate: 0.2, decay_steps: 4, decay_rate: 0.5, staircase: true}");
  for (int64_t t : {0, 3, 4, 7, 8, 13}) EXPECT_NEAR(st->learning_rate(t, 0), 0.2 / (1 + 0.5 * double(t / 4)), 1e-17) << t;
  auto ns = sched("{name: inverse_time_decay, initial_learning_rate: 0.2, decay_steps: 4, decay_rate: 0.5}");
  EXPECT_NEAR(ns->learning_rate(3, 0), 0.2 / (1 + 0.5 * 0.75), 1e-17);
  auto ep = sched("{name: inverse_time_decay, decay_steps: 2, decay_rate: 1, per: epoch}", 0.3);
  EXPECT_NEAR(ep->learning_rate(50, 4), 0.3 / 3, 1e-17);
}

TEST(Schedules, PiecewiseConstantBoundariesInclusiveOnTheLeft) {
  auto s = sched("{name: piecewise_constant_decay, boundaries: [5, 15], values: [0.01, 0.005, 0.001]}");
  const std::vector<std::pair<int64_t, double>> want = {{0, 0.01},   {4, 0.01},   {5, 0.01},  {6, 0.005},
                                                        {15, 0.005}, {16, 0.001}, {99, 0.001}};
  for (auto [t, lr] : want) EXPECT_EQ(s->learning_rate(t, 1000), lr) << t;
  auto ep = sched("{name: piecewise_constant_decay, boundaries: [2], values: [0.1, 0.2], per: epoch}");
  EXPECT_EQ(ep->learning_rate(100, 2), 0.1);
  EXPECT_EQ(ep->learning_rate(0, 3), 0.2);
}

TEST(Schedules, ReduceLROnPlateauIsACallback) {
  EXPECT_EQ(sched("{name: reduce_lr_on_plateau, factor: 0.5}"), nullptr);
  ConfigNode none;
  EXPECT_EQ(LearningRateSchedule::from_config(none, 0.1), nullptr);
}

TEST(Schedules, BadConfigsNameTheKey) {
  auto has = [](const std::string& msg, const std::string& what) {
    return msg.find(what) != std::string::npos;
  };
  std::string e = sched_error("{name: exponential_decai, decay_steps: 1, decay_rate: 0.5}");
  EXPECT_TRUE(has(e, "did you mean 'exponential_decay'")) << e;
  EXPECT_TRUE(has(e, "schedule.name")) << e;
  e = sched_error("{name: piecewise_constant_decay, boundaries: [5, 15], values: [0.01, 0.005]}");
  EXPECT_TRUE(has(e, "schedule.values")) << e;
  e = sched_error("{name: piecewise_constant_decay, boundaries: [5, 15], values: [0.01, -0.005, 0.1]}");
  EXPECT_TRUE(has(e, "schedule.values")) << e;
  e = sched_error("{name: piecewise_constant_decay, boundaries: [15, 5], values: [0.01, 0.005, 0.1]}");
  EXPECT_TRUE(has(e, "schedule.boundaries")) << e;
  e = sched_error("{name: exponential_decay, initial_learning_rate: -0.1, decay_steps: 1, decay_rate: 0.5}");
  EXPECT_TRUE(has(e, "schedule.initial_learning_rate")) << e;
  e = sched_error("{name: exponential_decay, decay_steps: 1, decay_rate: -0.5}");
  EXPECT_TRUE(has(e, "schedule.decay_rate")) << e;
  e = sched_error("{name: inverse_time_decay, decay_steps: 0, decay_rate: 0.5}");
  EXPECT_TRUE(has(e, "schedule.decay_steps")) << e;
  e = sched_error("{name: exponential_decay, decay_rate: 0.5}");
  EXPECT_TRUE(has(e, "decay_steps")) << e;
  e = sched_error("{name: exponential_decay, decay_steps: 2, decay_rate: 0.5, per: batch}");
  EXPECT_TRUE(has(e, "schedule.per")) << e;
  e = sched_error("{name: exponential_decay, decay_steps: 2, decay_rate: 0.5, stair: true}");
  EXPECT_TRUE(has(e, "stair")) << e;
  e = sched_error("{name: one_cycle, max_rate: -1}");
  EXPECT_TRUE(has(e, "schedule.max_rate")) << e;
  e = sched_error("{name: one_cycle, max_rate: 0.1, iterations: 10, last_iterations: 10}");
  EXPECT_TRUE(has(e, "schedule.last_iterations")) << e;
  e = sched_error("{name: one_cycle, max_rate: 0.1, per: epoch}");  // always per step
  EXPECT_TRUE(has(e, "per")) << e;
}

// ---- 1cycle (§6.2) -----------------------------------------------------------------------------------
double interp(double i, double i1, double i2, double r1, double r2) { return (r2 - r1) * (i - i1) / (i2 - i1) + r1; }

TEST(OneCycle, DefaultsFromTheRunLength) {
  auto s = sched("{name: one_cycle, max_rate: 0.05}");
  s->set_run_length(10, 10);  // N = 100
  const double M = 0.05, S = M / 10, E = S / 1000;
  const int64_t N = 100, L = N / 10 + 1, H = (N - L) / 2;  // L = 11, H = 44
  ASSERT_EQ(H, 44);
  EXPECT_FALSE(s->per_epoch());
  EXPECT_TRUE(s->cycles_momentum());
  for (int64_t i = 0; i < 130; ++i) {
    double want;
    if (i < H) want = interp(double(i), 0, double(H), S, M);
    else if (i < 2 * H) want = interp(double(i), double(H), double(2 * H), M, S);
    else if (i < N) want = interp(double(i), double(2 * H), double(N), S, E);
    else want = E;  // clamped: the chapter's code would extrapolate below E
    EXPECT_NEAR(s->learning_rate(i, i / 10), want, 1e-15) << i;
    double mom;
    if (i < H) mom = interp(double(i), 0, double(H), 0.95, 0.85);
    else if (i < 2 * H) mom = interp(double(i), double(H), double(2 * H), 0.85, 0.95);
    else mom = 0.95;
    EXPECT_NEAR(s->momentum(i), mom, 1e-15) << i;
  }
  // landmarks
  EXPECT_NEAR(s->learning_rate(0, 0), 0.005, 1e-18);
  EXPECT_NEAR(s->learning_rate(44, 0), 0.05, 1e-18);
  EXPECT_NEAR(s->learning_rate(88, 0), 0.005, 1e-18);
  EXPECT_NEAR(s->learning_rate(100, 0), 5e-6, 1e-20);
  EXPECT_NEAR(s->learning_rate(10000, 0), 5e-6, 1e-20);
  EXPECT_NEAR(s->momentum(44), 0.85, 1e-15);
  EXPECT_NEAR(s->momentum(22), 0.90, 1e-15);
  for (int64_t i = 0; i < 200; ++i) EXPECT_GT(s->learning_rate(i, 0), 0.0);
  // max_rate defaults to the optimizer's rate
  auto d = sched("{name: one_cycle}", 0.2);
  d->set_run_length(5, 4);  // N = 20, L = 3, H = 8
  EXPECT_NEAR(d->learning_rate(8, 0), 0.2, 1e-17);
  EXPECT_NEAR(d->learning_rate(0, 0), 0.02, 1e-17);
  EXPECT_NEAR(d->learning_rate(19, 0), interp(19, 16, 20, 0.02, 2e-5), 1e-17);
}

TEST(OneCycle, ExplicitArguments) {
  auto s = sched(
      "{name: one_cycle, max_rate: 1.0, start_rate: 0.2, last_rate: 0.01, iterations: 50, last_iterations: 10, "
      "max_momentum: 0.9, min_momentum: 0.8}");
  s->set_run_length(1000, 1000);  // explicit iterations win
  const int64_t N = 50, H = (50 - 10) / 2;  // 20
  for (int64_t i = 0; i < 60; ++i) {
    double want;
    if (i < H) want = interp(double(i), 0, double(H), 0.2, 1.0);
    else if (i < 2 * H) want = interp(double(i), double(H), double(2 * H), 1.0, 0.2);
    else if (i < N) want = interp(double(i), double(2 * H), double(N), 0.2, 0.01);
    else want = 0.01;
    EXPECT_NEAR(s->learning_rate(i, 0), want, 1e-15) << i;
  }
  EXPECT_NEAR(s->momentum(0), 0.9, 1e-16);
  EXPECT_NEAR(s->momentum(20), 0.8, 1e-16);
  EXPECT_NEAR(s->momentum(45), 0.9, 1e-16);
  // start_rate given, last_rate not: E = S/1000
  auto t = sched("{name: one_cycle, max_rate: 1.0, start_rate: 0.3, iterations: 30}");
  t->set_run_length(7, 7);
  EXPECT_NEAR(t->learning_rate(30, 0), 0.3 / 1000, 1e-18);
  // iterations given, last_iterations not: L = N//10 + 1 = 4, H = 13
  EXPECT_NEAR(t->learning_rate(13, 0), 1.0, 1e-16);
  EXPECT_NEAR(t->learning_rate(26, 0), 0.3, 1e-16);
  auto nc = sched("{name: one_cycle, max_rate: 1.0, cycle_momentum: false}");
  EXPECT_FALSE(nc->cycles_momentum());
}

// With `iterations` given the schedule is fully determined by the config: last_iterations defaults to
// N//10 + 1 without waiting for set_run_length.
TEST(OneCycle, ExplicitIterationsNeedNoRunLength) {
  auto t = sched("{name: one_cycle, max_rate: 1.0, iterations: 30}");
  // L = 4, H = 13
  EXPECT_NEAR(t->learning_rate(13, 0), 1.0, 1e-16);
  EXPECT_NEAR(t->learning_rate(26, 0), 0.1, 1e-16);
  EXPECT_NEAR(t->learning_rate(30, 0), 1e-4, 1e-18);
}

// The momentum the schedule cycles lands in the optimizer (SGD momentum, the Adam family's beta_1).
TEST(OneCycle, SetsOptimizerMomentum) {
  ConfigNode c = load_config_string("optimizer: {name: sgd, momentum: 0.9}");
  auto sgd = Optimizer::from_config(c["optimizer"]);
  sgd->set_momentum(0.87);
  EXPECT_EQ(sgd->momentum(), 0.87);
  ConfigNode p = load_config_string("optimizer: sgd");
  auto plain = Optimizer::from_config(p["optimizer"]);
  plain->set_momentum(0.87);  // no slot to cycle
  EXPECT_EQ(plain->momentum(), 0.0);
}

// ---- ReduceLROnPlateau (§6.1) -------------------------------------------------------------------
ReduceLROnPlateau plateau(const std::string& text) {
  ConfigNode cfg = load_config_string("r: " + text, "run.yaml");
  return ReduceLROnPlateau::from_config(cfg["r"]);
}

// Keras multiplies in float32.
double f32mul(double lr, double f) { return double(float(lr) * float(f)); }

TEST(ReduceLROnPlateau, PatienceCooldownMinDeltaMinLr) {
  auto r = plateau("{factor: 0.5, patience: 2, min_delta: 0.1, cooldown: 2, min_lr: 0.02}");
  EXPECT_EQ(r.monitor(), "val_loss");
  // Worked by hand from §6.1 (see the comments: cd = cooldown counter, w = wait, b = best).
  const std::vector<double> vals = {1.0, 0.95, 0.92, 0.91, 0.91, 0.5, 0.45, 0.45, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1};
  const double l1 = f32mul(0.1, 0.5), l2 = f32mul(l1, 0.5);
  const std::vector<double> want = {
      0.1,   // e0 1.0: improves, b=1
      0.1,   // e1 0.95: not < 1-0.1 -> w=1
      l1,    // e2 0.92: w=2 -> reduce, cd=2, w=0
      l1,    // e3 0.91: cd->1; still in cooldown: no wait
      l1,    // e4 0.91: cd->0; w=1
      l1,    // e5 0.5: improves, b=0.5
      l1,    // e6 0.45: not < 0.4 -> w=1
      l2,    // e7 0.45: w=2 -> reduce, cd=2
      l2,    // e8 0.1: cd->1; improves (b=0.1) even in cooldown
      l2,    // e9: cd->0; w=1
      0.02,  // e10: w=2 -> max(l2*0.5, min_lr) = 0.02
      0.02,  // e11: cd->1
      0.02,  // e12: cd->0, w=1
      0.02,  // e13: w=2 but lr is not above min_lr: unchanged
      0.02,  // e14
  };
  double lr = 0.1;
  for (size_t e = 0; e < vals.size(); ++e) {
    lr = r.on_epoch_end(int64_t(e), {{"val_loss", vals[e]}, {"loss", 0.0}}, lr);
    EXPECT_NEAR(lr, want[e], 1e-12) << "epoch " << e;
  }
  // the float32 product, as Keras
  EXPECT_EQ(l1, double(0.05f));
}

TEST(ReduceLROnPlateau, DefaultsAndPatienceTen) {
  auto r = plateau("{}");
  // factor 0.1, patience 10, min_delta 1e-4
  double lr = 1.0;
  lr = r.on_epoch_end(0, {{"val_loss", 1.0}}, lr);
  // e1..e9 are below best = 1.0, but by less than min_delta: no improvement, wait 1..9
  for (int e = 1; e <= 9; ++e) lr = r.on_epoch_end(e, {{"val_loss", 1.0 - 0.1e-4 * e}}, lr);
  EXPECT_EQ(lr, 1.0);
  lr = r.on_epoch_end(10, {{"val_loss", 1.0}}, lr);
  EXPECT_NEAR(lr, f32mul(1.0, 0.1), 1e-12);
}

TEST(ReduceLROnPlateau, ModeAutoAccuracyIsMax) {
  auto r = plateau("{monitor: val_accuracy, factor: 0.5, patience: 1, min_delta: 0.01}");
  double lr = 1.0;
  lr = r.on_epoch_end(0, {{"val_accuracy", 0.5}}, lr);
  EXPECT_EQ(lr, 1.0);
  lr = r.on_epoch_end(1, {{"val_accuracy", 0.6}}, lr);  // higher: better
  EXPECT_EQ(lr, 1.0);
  lr = r.on_epoch_end(2, {{"val_accuracy", 0.605}}, lr);  // not > 0.6 + 0.01
  EXPECT_EQ(lr, 0.5);
  // "acc" anywhere in the name (Keras: 'acc' in monitor)
  auto a = plateau("{monitor: val_acc_top5, factor: 0.5, patience: 1}");
  lr = a.on_epoch_end(0, {{"val_acc_top5", 0.5}}, 1.0);
  lr = a.on_epoch_end(1, {{"val_acc_top5", 0.4}}, lr);  // lower: worse in max mode
  EXPECT_EQ(lr, 0.5);
  // explicit min mode on an accuracy
  auto m = plateau("{monitor: val_accuracy, factor: 0.5, patience: 1, mode: min}");
  lr = m.on_epoch_end(0, {{"val_accuracy", 0.5}}, 1.0);
  lr = m.on_epoch_end(1, {{"val_accuracy", 0.4}}, lr);
  EXPECT_EQ(lr, 1.0);
  lr = m.on_epoch_end(2, {{"val_accuracy", 0.6}}, lr);
  EXPECT_EQ(lr, 0.5);
  // loss-like name: min
  auto l = plateau("{monitor: loss, factor: 0.5, patience: 1}");
  lr = l.on_epoch_end(0, {{"loss", 0.5}}, 1.0);
  lr = l.on_epoch_end(1, {{"loss", 0.6}}, lr);
  EXPECT_EQ(lr, 0.5);
}

TEST(ReduceLROnPlateau, BadConfig) {
  auto err = [](const std::string& t) -> std::string {
    try {
      plateau(t);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_NE(err("{factor: 1.0}").find("factor"), std::string::npos) << err("{factor: 1.0}");
  EXPECT_NE(err("{factor: 2}").find("factor"), std::string::npos);
  EXPECT_NE(err("{patience: -1}").find("patience"), std::string::npos);
  EXPECT_NE(err("{mode: maximum}").find("mode"), std::string::npos);
  EXPECT_NE(err("{pateince: 3}").find("pateince"), std::string::npos);
}

// An independent simulation of §6.1 over a long noisy sequence.
struct PlateauRef {
  double factor, min_delta, min_lr;
  int patience, cooldown;
  bool max_mode;
  int wait, cd;
  double best;
  double step(double cur, double lr) {
    if (cd > 0) {
      --cd;
      wait = 0;
    }
    const bool better = max_mode ? cur > best + min_delta : cur < best - min_delta;
    if (better) {
      best = cur;
      wait = 0;
    } else if (cd <= 0) {
      ++wait;
      if (wait >= patience && lr > min_lr) {
        lr = std::max(f32mul(lr, factor), min_lr);
        cd = cooldown;
        wait = 0;
      }
    }
    return lr;
  }
};

TEST(ReduceLROnPlateau, MatchesSimulationAndStateRoundTrip) {
  const std::string cfg = "{monitor: loss, factor: 0.7, patience: 3, min_delta: 0.001, cooldown: 1, min_lr: 1e-4}";
  auto r = plateau(cfg);
  PlateauRef ref{0.7, 0.001, 1e-4, 3, 1, false, 0, 0, std::numeric_limits<double>::infinity()};
  double lr = 0.1, lr_ref = 0.1;
  // improving for 20 epochs, then a noisy plateau
  auto value = [](int e) { return 1.0 / (1 + 0.05 * std::min(e, 20)) + 0.02 * std::sin(1.7 * e); };
  int reductions = 0;
  for (int e = 0; e < 60; ++e) {
    const double before = lr;
    lr = r.on_epoch_end(e, {{"loss", value(e)}}, lr);
    lr_ref = ref.step(value(e), lr_ref);
    EXPECT_EQ(lr, lr_ref) << e;
    reductions += lr < before;
  }
  EXPECT_GE(reductions, 3);
  // round trip: a fresh callback with the saved state continues identically
  auto r2 = plateau(cfg);
  r2.load_state(r.state());
  EXPECT_EQ(r2.state(), r.state());
  double lr2 = lr;
  for (int e = 60; e < 120; ++e) {
    lr = r.on_epoch_end(e, {{"loss", value(e)}}, lr);
    lr2 = r2.on_epoch_end(e, {{"loss", value(e)}}, lr2);
    lr_ref = ref.step(value(e), lr_ref);
    EXPECT_EQ(lr, lr2) << e;
    EXPECT_EQ(lr, lr_ref) << e;
  }
  EXPECT_EQ(r.state(), r2.state());
}

// ---- EarlyStopping (§7.6) -----------------------------------------------------------------------
EarlyStopping early(const std::string& text) {
  ConfigNode cfg = load_config_string("e: " + text, "run.yaml");
  return EarlyStopping::from_config(cfg["e"]);
}

// Runs epochs until stop; returns the stopping epoch (-1 when it never stopped).
int run_es(EarlyStopping& es, const std::vector<double>& vals, const std::string& key, Model* m = nullptr) {
  auto model = one_layer("[2]", "dense: {units: 1}");
  if (!m) m = model.get();
  for (size_t e = 0; e < vals.size(); ++e) {
    ops::fill(m->weights_arena(), double(e));  // the weights "after epoch e"
    if (es.on_epoch_end(int64_t(e), {{key, vals[e]}}, *m)) return int(e);
  }
  return -1;
}

TEST(EarlyStopping, PatienceAndMinDeltaSignedByMode) {
  // min mode, min_delta 0.1: an improvement must beat best by more than 0.1 (current + 0.1 < best).
  auto es = early("{patience: 2, min_delta: 0.1}");
  // e0 1.0 best; e1 0.95 (no: 1.05 !< 1); e2 0.85 (0.95 < 1: best .85, wait 0); e3 0.84 (w1); e4 0.83 (w2: stop)
  EXPECT_EQ(run_es(es, {1.0, 0.95, 0.85, 0.84, 0.83, 0.0}, "val_loss"), 4);
  EXPECT_TRUE(es.stopped());
  EXPECT_EQ(es.state().at("early_stopping.best"), 0.85);
  EXPECT_EQ(es.state().at("early_stopping.best_epoch"), 2);
  // negative min_delta is made non-negative
  auto neg = early("{patience: 2, min_delta: -0.1}");
  EXPECT_EQ(run_es(neg, {1.0, 0.95, 0.85, 0.84, 0.83, 0.0}, "val_loss"), 4);
  // max mode (auto on *accuracy): current - 0.1 > best
  auto acc = early("{monitor: val_accuracy, patience: 2, min_delta: 0.1}");
  // e0 .5; e1 .55 (w1); e2 .65 (.55 > .5: best, w0); e3 .7 (w1); e4 .74 (w2: stop)
  EXPECT_EQ(run_es(acc, {0.5, 0.55, 0.65, 0.7, 0.74, 1.0}, "val_accuracy"), 4);
  EXPECT_EQ(acc.state().at("early_stopping.best"), 0.65);
  // without min_delta every strict improvement counts
  auto plain = early("{patience: 2}");
  EXPECT_EQ(run_es(plain, {1.0, 0.99, 0.98, 0.98, 0.98, 0.5}, "val_loss"), 4);
}

TEST(EarlyStopping, ModeAuto) {
  // K210: max when the name ends with acc / accuracy / auc
  for (std::string k : {"val_acc", "accuracy", "val_auc"}) {
    auto es = early("{monitor: " + k + ", patience: 1}");
    EXPECT_EQ(run_es(es, {0.5, 0.6, 0.7, 0.6, 0.9}, k), 3) << k;
  }
  for (std::string k : {"val_loss", "val_accuracy_gap"}) {
    auto es = early("{monitor: " + k + ", patience: 1}");
    EXPECT_EQ(run_es(es, {0.5, 0.6, 0.7, 0.6, 0.9}, k), 1) << k;
  }
  auto mx = early("{monitor: val_loss, mode: max, patience: 1}");
  EXPECT_EQ(run_es(mx, {0.5, 0.6, 0.7, 0.6, 0.9}, "val_loss"), 3);
}

TEST(EarlyStopping, PatienceZeroAndTheFirstEpoch) {
  // wait >= patience and epoch > 0: patience 0 stops after the second epoch whatever happens.
  auto es = early("{patience: 0}");
  EXPECT_EQ(run_es(es, {1.0, 0.5, 0.25}, "val_loss"), 1);
  // never at epoch 0, even with a baseline that the first epoch misses
  auto b = early("{patience: 1, baseline: 0.1}");
  EXPECT_EQ(run_es(b, {1.0, 0.9, 0.8}, "val_loss"), 1);
}

TEST(EarlyStopping, Baseline) {
  // improvements that do not beat the baseline do not reset wait
  auto es = early("{patience: 3, baseline: 0.5}");
  EXPECT_EQ(run_es(es, {0.9, 0.8, 0.7, 0.6, 0.4}, "val_loss"), 2);
  EXPECT_EQ(es.state().at("early_stopping.best"), 0.7);
  auto ok = early("{patience: 2, baseline: 0.5}");
  EXPECT_EQ(run_es(ok, {0.9, 0.45, 0.44, 0.43, 0.5, 0.5}, "val_loss"), 5);
  // max mode baseline
  auto acc = early("{monitor: accuracy, patience: 3, baseline: 0.8}");
  // e0 w1, e1 w2 (0.6 improves but misses the baseline), e2 0.85: w0, e3 w0, e4 w1, e5 w2, e6 w3: stop
  EXPECT_EQ(run_es(acc, {0.5, 0.6, 0.85, 0.9, 0.7, 0.7, 0.7}, "accuracy"), 6);
}

TEST(EarlyStopping, RestoreBestWeightsOnlyWhenItStopped) {
  auto m = one_layer("[2]", "dense: {units: 1}");
  auto es = early("{patience: 2, restore_best_weights: true}");
  EXPECT_EQ(run_es(es, {1.0, 0.5, 0.7, 0.8, 0.1}, "val_loss", m.get()), 3);
  for (double x : m->weights_arena().to_double_vector()) EXPECT_EQ(x, 3.0);
  es.on_train_end(*m);
  for (double x : m->weights_arena().to_double_vector()) EXPECT_EQ(x, 1.0);  // epoch 1's weights
  // Ran to the end without stopping: the last epoch's weights are kept (K210).
  auto m2 = one_layer("[2]", "dense: {units: 1}");
  auto es2 = early("{patience: 5, restore_best_weights: true}");
  EXPECT_EQ(run_es(es2, {1.0, 0.5, 0.7, 0.8}, "val_loss", m2.get()), -1);
  es2.on_train_end(*m2);
  for (double x : m2->weights_arena().to_double_vector()) EXPECT_EQ(x, 3.0);
  EXPECT_TRUE(es2.best_weights().defined());
  // restore_best_weights off: nothing is restored and no copy is kept
  auto m3 = one_layer("[2]", "dense: {units: 1}");
  auto es3 = early("{patience: 1}");
  EXPECT_EQ(run_es(es3, {1.0, 2.0}, "val_loss", m3.get()), 1);
  es3.on_train_end(*m3);
  for (double x : m3->weights_arena().to_double_vector()) EXPECT_EQ(x, 1.0);
  EXPECT_FALSE(es3.best_weights().defined());
}

// K210 keeps the first epoch's weights when restore_best_weights is set, even if no epoch ever
// improves (a NaN monitor never does), and restores them when it stops.
TEST(EarlyStopping, RestoresFirstEpochWhenNothingImproves) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  auto m = one_layer("[2]", "dense: {units: 1}");
  auto es = early("{patience: 2, restore_best_weights: true}");
  EXPECT_EQ(run_es(es, {nan, nan, nan, nan}, "val_loss", m.get()), 1);  // wait 2 at epoch 1
  EXPECT_EQ(es.state().at("early_stopping.best_epoch"), -1);
  ASSERT_TRUE(es.best_weights().defined());
  es.on_train_end(*m);
  for (double x : m->weights_arena().to_double_vector()) EXPECT_EQ(x, 0.0);  // epoch 0's weights
}

TEST(EarlyStopping, StateRoundTrip) {
  const std::string cfg = "{patience: 3, min_delta: 0.01, restore_best_weights: true}";
  auto m = one_layer("[2]", "dense: {units: 1}");
  auto a = early(cfg);
  const std::vector<double> vals = {1.0, 0.8, 0.805, 0.795, 0.7, 0.71, 0.72, 0.73, 0.74};
  for (int e = 0; e < 5; ++e) {
    ops::fill(m->weights_arena(), double(e));
    ASSERT_FALSE(a.on_epoch_end(e, {{"val_loss", vals[size_t(e)]}}, *m));
  }
  auto b = early(cfg);
  b.load_state(a.state());
  b.set_best_weights(a.best_weights());
  EXPECT_EQ(b.state(), a.state());
  int stop_a = -1, stop_b = -1;
  for (int e = 5; e < int(vals.size()); ++e) {
    ops::fill(m->weights_arena(), double(e));
    if (stop_a < 0 && a.on_epoch_end(e, {{"val_loss", vals[size_t(e)]}}, *m)) stop_a = e;
    if (stop_b < 0 && b.on_epoch_end(e, {{"val_loss", vals[size_t(e)]}}, *m)) stop_b = e;
  }
  EXPECT_EQ(stop_a, 7);  // best 0.7 at epoch 4; waits 1, 2, 3
  EXPECT_EQ(stop_b, stop_a);
  EXPECT_EQ(b.state(), a.state());
  b.on_train_end(*m);
  for (double x : m->weights_arena().to_double_vector()) EXPECT_EQ(x, 4.0);
  // a missing-keys state (an older checkpoint) keeps the fresh defaults
  auto c = early(cfg);
  c.load_state({});
  EXPECT_EQ(c.state().at("early_stopping.wait"), 0);
  EXPECT_TRUE(std::isinf(c.state().at("early_stopping.best")));
}

TEST(EarlyStopping, Defaults) {
  auto es = early("{}");
  EXPECT_EQ(es.monitor(), "val_loss");
  // patience 0, min_delta 0, min mode
  auto model = one_layer("[2]", "dense: {units: 1}");
  EXPECT_FALSE(es.on_epoch_end(0, {{"val_loss", 1.0}}, *model));
  EXPECT_TRUE(es.on_epoch_end(1, {{"val_loss", 0.5}}, *model));
  auto err = [](const std::string& t) -> std::string {
    try {
      early(t);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "(no error)";
  };
  EXPECT_NE(err("{patience: -2}").find("patience"), std::string::npos);
  EXPECT_NE(err("{mode: up}").find("mode"), std::string::npos);
  EXPECT_NE(err("{restore_best: true}").find("restore_best"), std::string::npos);
}

}  // namespace
}  // namespace lockstep::test
