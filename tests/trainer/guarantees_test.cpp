// The trainer's distributed and resume guarantees, tested through the `lockstep` command itself
// (one process, or `mpirun -np 2/4`), on a small dataset (tests/trainer/CMakeLists.txt).
//
//   Equiv.*   (label mpi)    1 vs 2 vs 4 ranks end with the same weights and BN statistics (sync BN,
//                            global clipping); a desynchronised replica, ranks with different seeds and a
//                            batch the world size does not divide are stopped with a clear error.
//   Resume.*  (label resume) stopped by SIGUSR1/SIGTERM at several steps and resumed with --resume auto:
//                            final.h5 bit-identical (weights and optimizer slots), history.csv identical
//                            except `seconds`; Adam/Nadam, schedules, callbacks, dropout, 2 ranks, a
//                            different world size, a second signal during the checkpoint.
//   Fault.*   (label fault)  SIGKILL of a random rank at 20 random steps; SIGKILL of the writer at 20
//                            points of a checkpoint write; truncated and bit-flipped checkpoints; an
//                            unwritable run directory; a checkpoint of another model.
//   Graph models (Keras's Functional form; labels mpi, resume, graph): a two-input model on image pairs
//                            (data.pairs; a shared Dense called twice, concatenate, sync BN, dropout,
//                            SGD momentum + global_clipnorm) 1 vs 2 vs 4 ranks and resumed bit-identically;
//                            two outputs (loss_weights 1.0/0.5, a metric each: Keras's history keys, the
//                            logged loss their weighted sum, 1 vs 2 ranks); transfer by layer name from a
//                            graph checkpoint into a Sequential model, frozen; MC dropout predict on pairs.
//   Cli.*     (label graph)  `lockstep summary`/`train` on Functional run files with a cycle, an unknown
//                            input, an add of two shapes: exit 2, FILE:LINE:COL: KEY on stderr; --plot SVG.
//   Convolutional models (labels mpi, resume, unit): a small CNN (Conv2D, sync BN on feature maps,
//                            SpatialDropout2D, pooling, Dropout) with data.augment (random crop + flips)
//                            on generated 32x32x3 images: 1 vs 2 vs 4 ranks to relative 1e-5, resumed
//                            bit-identically on 1 and 2 ranks; Cli.Conv*: bad conv/pool arguments exit 2
//                            with FILE:LINE:COL: KEY and the layer named.
//   TensorBoard.* (labels unit, resume, mpi)  callbacks.tensorboard's event files against
//                            ../shared/reference/tensorboard-events.md: tags, steps, values (= history.csv,
//                            the schedule, the running means), record order, file names, histograms
//                            (every histogram_freq), update_freq epoch/batch/N, lr tags; resumes (clean
//                            stops, older checkpoints, SIGKILL) read as TensorBoard reads them equal the
//                            uninterrupted run; 2 ranks: rank 0 alone writes the 1-rank curves; exit 2 on
//                            an unusable log_dir or a misspelt key.
//
// Faults are injected through test-only environment hooks (LOCKSTEP_TEST_SIGNAL, LOCKSTEP_TEST_DESYNC in
// core/trainer.cpp; LOCKSTEP_TEST_CKPT_POINT, LOCKSTEP_TEST_CKPT_TRACE in core/checkpoint.cpp): they raise
// the real signal at an exact step or write point, so every trial is reproducible.
//
// `trainer_guarantee_tests --make-data DIR` (the CTest fixture) writes DIR/train.h5: the first 1024/256
// MNIST images of ../shared/datasets/mnist when present, otherwise generated 28x28 images (it says which),
// and DIR/cifar.h5: 512/128 generated CIFAR-shaped 32x32x3 images of 10 classes.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/checkpoint.h"
#include "core/config.h"
#include "core/error.h"
#include "core/model.h"
#include "core/ops.h"
#include "core/rng.h"
#include "core/tensorboard.h"
#include "data/convert.h"
#include "data/dataset.h"

namespace fs = std::filesystem;
using namespace lockstep;

namespace {

std::string g_data;   // train.h5
std::string g_cifar;  // cifar.h5 (32x32x3)

// ---- processes -----------------------------------------------------------------------------------

struct Res {
  int rc = -1;
  std::string out;
  double secs = 0;
};

// Runs `cmd` through the shell (stdout+stderr captured), bounded by GNU timeout as a second line of
// defence (mpirun has its own --timeout).
Res sh(const std::string& cmd, int limit_s = 120) {
  Res r;
  const auto t0 = std::chrono::steady_clock::now();
  const std::string full = "timeout -k 5 " + std::to_string(limit_s) + " bash -c '" + cmd + "' 2>&1";
  FILE* p = popen(full.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int st = pclose(p);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

std::string mpirun(int np, int timeout_s = 60) {
  return std::string(LOCKSTEP_MPIEXEC) + " --allow-run-as-root --oversubscribe --timeout " + std::to_string(timeout_s) +
         " -np " + std::to_string(np) + " ";
}

// `lockstep train RUN --run-dir DIR [extra]` on `np` ranks (np 0: without mpirun), 1 thread per rank;
// `env`: NAME=VALUE pairs for every rank.
Res train(const std::string& run, const std::string& dir, int np, const std::string& extra = "",
          const std::vector<std::string>& env = {}, int timeout_s = 60) {
  std::string cmd;
  if (np == 0) {
    for (const auto& e : env) cmd += e + " ";
    cmd += std::string(LOCKSTEP_BIN);
  } else {
    cmd = mpirun(np, timeout_s);
    for (const auto& e : env) cmd += "-x " + e + " ";
    cmd += LOCKSTEP_BIN;
  }
  cmd += " train " + run + " --run-dir " + dir + " --threads 1 " + extra;
  return sh(cmd, timeout_s + 30);
}

std::string tail(const std::string& s, size_t n = 3000) { return s.size() > n ? s.substr(s.size() - n) : s; }

// ---- files ---------------------------------------------------------------------------------------

class Tmp {
 public:
  Tmp() {
    std::string t = (fs::temp_directory_path() / "lockstep-guarantee-XXXXXX").string();
    path_ = mkdtemp(t.data());
  }
  ~Tmp() {
    if (!::testing::Test::HasFailure() && std::uncaught_exceptions() == 0) fs::remove_all(path_);
    else std::cerr << "kept " << path_ << " for inspection\n";
  }
  std::string operator/(const std::string& n) const { return (fs::path(path_) / n).string(); }

 private:
  std::string path_;
};

// A run file: the model (BN, optional dropout), optimizer, schedule/callbacks given as YAML lines.
struct RunSpec {
  std::string optimizer = "{name: sgd, learning_rate: 0.05, momentum: 0.9}";
  std::string extra_layers;  // e.g. "    - dropout: {rate: 0.3}\n"
  std::string more;          // extra top-level YAML (schedule, callbacks)
  std::string data_extra;    // e.g. ", validation: {first: 64}"
  int epochs = 4;
  int limit = 256;
  std::string checkpoint = "{every_epochs: 1}";
  std::string distributed = "{check_every_steps: 1}";
};

std::string write_run(const std::string& path, const RunSpec& s) {
  std::ofstream f(path);
  f << "name: guarantee\nseed: 7\n"
    << "data: {path: " << g_data << ", scale: 255, limit: " << s.limit << s.data_extra << "}\n"
    << "model:\n  input_shape: [28, 28]\n  layers:\n    - flatten: {}\n"
    // No bias before BN (its gradient is zero up to rounding: the value is noise, ~1e-8).
    << "    - dense: {units: 16, kernel_initializer: he_normal, use_bias: false}\n"
    << "    - batch_normalization: {}\n    - relu: {}\n"
    << s.extra_layers << "    - dense: {units: 10, activation: softmax}\n"
    << "loss: sparse_categorical_crossentropy\nmetrics: [accuracy]\n"
    << "optimizer: " << s.optimizer << "\n"
    << s.more << "train: {epochs: " << s.epochs << ", batch_size: 32, verbose: 2}\n"
    << "distributed: " << s.distributed << "\n"
    << "checkpoint: " << s.checkpoint << "\n";
  return path;
}

struct Silence {
  Silence() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }
};

// Every float dataset of an HDF5 file, by path.
std::map<std::string, std::vector<float>> datasets(const std::string& path) {
  Silence q;
  std::map<std::string, std::vector<float>> out;
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) {
    ADD_FAILURE() << path << ": cannot open";
    return out;
  }
  auto visit = [](hid_t o, const char* name, const H5O_info_t* info, void* data) -> herr_t {
    if (info->type != H5O_TYPE_DATASET) return 0;
    hid_t d = H5Dopen2(o, name, H5P_DEFAULT);
    hid_t sp = H5Dget_space(d);
    std::vector<float> v(size_t(H5Sget_simple_extent_npoints(sp)));
    H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
    H5Sclose(sp);
    H5Dclose(d);
    (*static_cast<std::map<std::string, std::vector<float>>*>(data))[name] = std::move(v);
    return 0;
  };
  H5Ovisit(f, H5_INDEX_NAME, H5_ITER_INC, visit, &out);
  H5Fclose(f);
  return out;
}

double num_attr(const std::string& path, const char* group, const char* name) {
  Silence q;
  double v = NAN;
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) return v;
  hid_t a = H5Aopen_by_name(f, group, name, H5P_DEFAULT, H5P_DEFAULT);
  if (a >= 0) {
    H5Aread(a, H5T_NATIVE_DOUBLE, &v);
    H5Aclose(a);
  }
  H5Fclose(f);
  return v;
}

// Bit-for-bit equality of every dataset (weights, BN statistics, optimizer slots, callback tensors) and
// of the training state's counters. `slots`: the optimizer keeps slots (all but plain SGD).
void expect_bit_identical(const std::string& a, const std::string& b, const std::string& what, bool slots = true) {
  auto da = datasets(a), db = datasets(b);
  ASSERT_FALSE(da.empty()) << a;
  ASSERT_EQ(da.size(), db.size()) << what;
  int optimizer_sets = 0;
  for (const auto& [name, va] : da) {
    ASSERT_TRUE(db.count(name)) << what << ": " << name << " missing in " << b;
    const auto& vb = db[name];
    ASSERT_EQ(va.size(), vb.size()) << what << ": " << name;
    EXPECT_EQ(0, std::memcmp(va.data(), vb.data(), va.size() * sizeof(float)))
        << what << ": dataset " << name << " differs between " << a << " and " << b;
    optimizer_sets += name.rfind("optimizer_weights", 0) == 0;
  }
  if (slots) {
    EXPECT_GT(optimizer_sets, 0) << "no optimizer slots compared";
  } else {
    EXPECT_EQ(optimizer_sets, 0) << "plain SGD has no slots";
  }
  EXPECT_GT(num_attr(a, "training_state", "optimizer.iterations"), 0.0) << what;
  for (const char* k : {"global_step", "learning_rate", "epochs_done", "optimizer.iterations"})
    EXPECT_EQ(num_attr(a, "training_state", k), num_attr(b, "training_state", k)) << what << ": " << k;
}

// Largest relative difference, per dataset as max|a-b| / max|b|, over model weights.
double max_rel_diff(const std::string& a, const std::string& b, std::string* where) {
  auto da = datasets(a), db = datasets(b);
  double worst = da.empty() ? INFINITY : 0;
  for (const auto& [name, va] : da) {
    if (name.rfind("model_weights", 0) != 0) continue;
    const auto& vb = db[name];
    if (va.size() != vb.size()) return INFINITY;
    double d = 0, m = 0;
    for (size_t i = 0; i < va.size(); ++i) {
      d = std::max(d, double(std::fabs(va[i] - vb[i])));
      m = std::max(m, double(std::fabs(vb[i])));
    }
    const double rel = d / std::max(m, 1e-30);
    if (rel > worst) {
      worst = rel;
      if (where) *where = name;
    }
  }
  return worst;
}

std::string read_text(const std::string& p) {
  std::ifstream f(p);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// history.csv without its last column (`seconds`).
std::string history_without_seconds(const std::string& dir) {
  std::istringstream in(read_text(dir + "/history.csv"));
  std::string line, out;
  while (std::getline(in, line)) out += line.substr(0, line.rfind(',')) + "\n";
  return out;
}

void expect_same_run(const std::string& ref_dir, const std::string& dir, const std::string& what, bool slots = true) {
  expect_bit_identical(ref_dir + "/final.h5", dir + "/final.h5", what, slots);
  const std::string h = history_without_seconds(ref_dir);
  EXPECT_GT(std::count(h.begin(), h.end(), '\n'), 1) << "empty history";
  EXPECT_EQ(h, history_without_seconds(dir)) << what << ": history.csv differs";
}

int64_t steps_per_epoch(const std::string& out) {
  std::smatch m;
  if (std::regex_search(out, m, std::regex("([0-9]+) steps per epoch"))) return std::stoll(m[1]);
  return -1;
}

// A reference (uninterrupted) run; returns its total number of steps.
int64_t reference(const std::string& run, const std::string& dir, int np, int64_t* spe = nullptr) {
  Res r = train(run, dir, np);
  EXPECT_EQ(r.rc, 0) << tail(r.out);
  if (spe) *spe = steps_per_epoch(r.out);
  return int64_t(num_attr(dir + "/final.h5", "training_state", "global_step"));
}

// The last "checkpoint write point N" a traced run printed (LOCKSTEP_TEST_CKPT_TRACE).
int max_write_point(const std::string& out) {
  const std::regex re("checkpoint write point ([0-9]+)");
  int n = 0;
  for (auto it = std::sregex_iterator(out.begin(), out.end(), re); it != std::sregex_iterator(); ++it)
    n = std::max(n, std::stoi((*it)[1]));
  return n;
}

std::string sig_env(int rank, int64_t step, int sig) {
  return "LOCKSTEP_TEST_SIGNAL=" + std::to_string(rank) + ":" + std::to_string(step) + ":" + std::to_string(sig);
}

// ==================================================================================================
// EQUIVALENCE (label mpi)
// ==================================================================================================

// 1, 2 and 4 ranks: same final weights and BN moving statistics (relative 1e-5), replicas compared
// every step (check_every_steps: 1 makes the trainer fail otherwise).
void equivalent_runs(const Tmp& t, const std::string& run, const char* label, int bn_layers = 1,
                     const std::vector<int>& nps = {2, 4}) {
  Res r1 = train(run, t / "np1", 0);
  ASSERT_EQ(r1.rc, 0) << tail(r1.out);
  for (int np : nps) {
    Res r = train(run, t / ("np" + std::to_string(np)), np);
    ASSERT_EQ(r.rc, 0) << tail(r.out);
    std::string where;
    const double d = max_rel_diff(t / "np1/final.h5", t / ("np" + std::to_string(np)) + "/final.h5", &where);
    std::cout << "[measure] " << label << ": max relative difference 1 vs " << np << " ranks: " << d << " (" << where
              << "); mpirun wall " << r.secs << " s\n";
    EXPECT_LE(d, 1e-5) << label << " np " << np << " at " << where;
    // BN moving statistics are among the compared datasets: make sure they exist and moved.
    auto ds = datasets(t / ("np" + std::to_string(np)) + "/final.h5");
    int bn = 0;
    for (auto& [n, v] : ds)
      if (n.find("moving_mean") != std::string::npos || n.find("moving_variance") != std::string::npos) {
        ++bn;
        bool moved = false;
        for (float x : v) moved |= x != 0.0f && x != 1.0f;
        EXPECT_TRUE(moved) << n << " never updated";
      }
    EXPECT_EQ(bn, 2 * bn_layers) << "BN moving statistics not found in final.h5";
  }
}

void equivalence(const RunSpec& spec, const char* label, int bn_layers = 1) {
  Tmp t;
  equivalent_runs(t, write_run(t / "run.yaml", spec), label, bn_layers);
}

TEST(Equiv, SgdMomentumBatchNorm1vs2vs4) { equivalence(RunSpec{}, "sgd+momentum+BN"); }

// Buckets of one weight each, launched between the all-reduces of sync BN's backward pass: every rank
// must launch them at the same places in the sequence of collectives, however fast each one's
// all-reduces complete (the ordering contract, comm/communicator.h). Launching the next bucket the
// moment a test() saw the previous one complete broke it: MPI_ERR_TRUNCATE or mismatched sums.
TEST(Equiv, SmallBucketsBetweenSyncBatchNorms1vs2vs4) {
  RunSpec s;
  s.extra_layers = "    - dense: {units: 16, use_bias: false}\n    - batch_normalization: {}\n    - relu: {}\n"
                   "    - dense: {units: 16, use_bias: false}\n    - batch_normalization: {}\n    - relu: {}\n";
  s.distributed = "{check_every_steps: 1, bucket_mb: 0.0001, first_bucket_mb: 0.0001}";
  s.epochs = 6;
  equivalence(s, "one bucket per weight, 3 sync BN", 3);
}

// Plain SGD (no momentum, no clipping): one process takes the step inside the backward pass (the
// Dense layers accumulate -rate·dW into their kernels, BN keeps its gradients); 2 and 4 ranks average
// the gradients first and step after. Same model to 1e-5, a legacy decay changing the rate every step.
TEST(Equiv, PlainSgdSteppedInsideTheBackwardPass1vs2vs4) {
  RunSpec s;
  s.optimizer = "{name: sgd, learning_rate: 0.1, decay: 0.01}";
  equivalence(s, "plain sgd+BN");
}

TEST(Equiv, GlobalClipnormThatClips1vs2vs4) {
  RunSpec s;
  s.optimizer = "{name: sgd, learning_rate: 0.05, momentum: 0.9, global_clipnorm: 0.05}";
  equivalence(s, "global_clipnorm 0.05");
  // The clipping must actually act: the result differs from the unclipped run.
  Tmp t;
  Res a = train(write_run(t / "clip.yaml", s), t / "clip", 0);
  Res b = train(write_run(t / "noclip.yaml", RunSpec{}), t / "noclip", 0);
  ASSERT_EQ(a.rc, 0);
  ASSERT_EQ(b.rc, 0);
  const double d = max_rel_diff(t / "clip/final.h5", t / "noclip/final.h5", nullptr);
  std::cout << "[measure] clipped vs unclipped: relative difference " << d << "\n";
  EXPECT_GT(d, 1e-2) << "global_clipnorm 0.05 did not change the run: it does not clip";
}

TEST(Equiv, DesynchronizedReplicaIsDetected) {
  Tmp t;
  const std::string run = write_run(t / "run.yaml", RunSpec{});
  for (auto [np, rank, step] : {std::tuple{2, 1, 5}, std::tuple{4, 2, 9}}) {
    Res r = train(run, t / ("d" + std::to_string(np)), np, "",
                  {"LOCKSTEP_TEST_DESYNC=" + std::to_string(rank) + ":" + std::to_string(step)}, 30);
    std::cout << "[measure] desync np " << np << ": exit " << r.rc << " after " << r.secs << " s\n";
    EXPECT_EQ(r.rc, 4) << tail(r.out);
    EXPECT_LT(r.secs, 30);
    EXPECT_NE(r.out.find("replicas diverged at step " + std::to_string(step + 1)), std::string::npos) << tail(r.out);
    EXPECT_NE(r.out.find("first differing rank: " + std::to_string(rank)), std::string::npos) << tail(r.out);
  }
}

TEST(Equiv, RanksWithDifferentSeedsAreRefused) {
  Tmp t;
  const std::string run = write_run(t / "run.yaml", RunSpec{});
  {
    std::ofstream w(t / "wrapper.sh");
    w << "#!/bin/sh\nexec " << LOCKSTEP_BIN << " train " << run << " --run-dir " << (t / "seeds")
      << " --threads 1 --set seed=$OMPI_COMM_WORLD_RANK\n";
  }
  fs::permissions(t / "wrapper.sh", fs::perms::owner_all);
  Res r = sh(mpirun(2, 30) + (t / "wrapper.sh"), 60);
  std::cout << "[measure] different seeds: exit " << r.rc << " after " << r.secs << " s\n";
  EXPECT_NE(r.rc, 0) << tail(r.out);
  EXPECT_NE(r.rc, 110) << "mpirun timed out: a hang";
  EXPECT_NE(r.out.find("ranks launched with different run files or seeds"), std::string::npos) << tail(r.out);
}

TEST(Equiv, BatchNotDivisibleByWorldSize) {
  Tmp t;
  const std::string run = write_run(t / "run.yaml", RunSpec{});
  Res r = train(run, t / "d", 4, "--set train.batch_size=30", {}, 30);
  EXPECT_EQ(r.rc, 2) << tail(r.out);
  EXPECT_NE(r.out.find("must be divisible by the number of ranks (4)"), std::string::npos) << tail(r.out);
}

// ==================================================================================================
// RESUME (label resume)
// ==================================================================================================

// Stops the run at each of `stops` (global step before which the signal is raised; alternating SIGUSR1
// and SIGTERM), resuming with --resume auto after each, then finishes: bit-identical to the reference.
void stop_and_resume_chain(const std::string& run, const std::string& ref, const std::string& dir, int np,
                           const std::vector<int64_t>& stops, const std::vector<std::string>& first_env = {},
                           bool slots = true) {
  for (size_t i = 0; i < stops.size(); ++i) {
    const int sig = i % 2 == 0 ? SIGUSR1 : SIGTERM;
    const int rank = np > 1 ? int(i % size_t(np)) : 0;
    std::vector<std::string> env = {sig_env(rank, stops[i], sig)};
    if (i == 0)
      for (const auto& e : first_env) env.push_back(e);
    Res r = train(run, dir, np, i == 0 ? "" : "--resume auto", env);
    ASSERT_EQ(r.rc, 75) << "stop " << i << " at step " << stops[i] << ":\n" << tail(r.out);
    EXPECT_NE(r.out.find("Stopped by"), std::string::npos) << tail(r.out);
  }
  Res r = train(run, dir, np, "--resume auto");
  ASSERT_EQ(r.rc, 0) << tail(r.out);
  EXPECT_NE(r.out.find("Resuming from"), std::string::npos);
  expect_same_run(ref, dir, dir, slots);
}

// Stop points: mid-epoch, the last step of an epoch (the epoch boundary) and the first of the next.
std::vector<int64_t> stops_for(int64_t spe, int64_t total) {
  std::vector<int64_t> s = {1, spe / 2 + 1, spe - 1, 2 * spe - 1, 2 * spe, 2 * spe + spe / 2};
  std::vector<int64_t> out;
  for (int64_t x : s)
    if (x < total && (out.empty() || x > out.back())) out.push_back(x);
  return out;
}

// A reference run of `run` (from spec.optimizer: whether it has slots), then the stop-and-resume chain.
void resume_run(const Tmp& t, const std::string& run, const std::string& optimizer, int np = 0, int expect_epochs = 0) {
  int64_t spe = 0;
  const int64_t total = reference(run, t / "ref", np, &spe);
  if (expect_epochs > 0) {
    EXPECT_EQ(num_attr(t / "ref/final.h5", "training_state", "epochs_done"), expect_epochs) << "early stopping did not act";
  }
  ASSERT_GT(spe, 2);
  const auto stops = stops_for(spe, total);
  ASSERT_GE(stops.size(), 3u) << "the reference ran only " << total << " steps";
  const bool plain_sgd = optimizer.find("sgd") != std::string::npos && optimizer.find("momentum") == std::string::npos;
  stop_and_resume_chain(run, t / "ref", t / "run", np, stops, {}, !plain_sgd);
}

void resume_case(const RunSpec& spec, int np = 0, int expect_epochs = 0) {
  Tmp t;
  resume_run(t, write_run(t / "run.yaml", spec), spec.optimizer, np, expect_epochs);
}

TEST(Resume, AdamExponentialPerEpochEarlyStoppingRestoreBestDropout) {
  RunSpec s;
  s.optimizer = "{name: adam, learning_rate: 0.01}";
  s.extra_layers = "    - dropout: {rate: 0.3}\n";
  s.data_extra = ", validation: {first: 64}";
  s.more =
      "schedule: {name: exponential_decay, decay_steps: 1, decay_rate: 0.7, per: epoch}\n"
      // min_delta 10: only epoch 1 improves, so training stops after epoch 3 and restores epoch 1's
      // weights, which a resumed run has only from its checkpoint.
      "callbacks: {early_stopping: {monitor: val_loss, patience: 2, min_delta: 10, restore_best_weights: true}}\n";
  s.epochs = 5;
  s.checkpoint = "{every_epochs: 1, every_steps: 3}";
  resume_case(s, 0, 3);
}

TEST(Resume, NadamOneCycleDropout) {
  RunSpec s;
  s.optimizer = "{name: nadam, learning_rate: 0.01}";
  s.extra_layers = "    - dropout: {rate: 0.2}\n";
  s.more = "schedule: {name: one_cycle, max_rate: 0.02}\n";
  s.checkpoint = "{every_epochs: 2, every_steps: 5}";
  resume_case(s);
}

TEST(Resume, SgdReduceLROnPlateauDropout) {
  RunSpec s;
  s.extra_layers = "    - dropout: {rate: 0.3}\n";
  // min_delta 10: never an improvement, so the rate is cut every epoch (patience 0).
  s.more = "callbacks: {reduce_lr_on_plateau: {monitor: loss, patience: 0, factor: 0.5, min_delta: 10}}\n";
  resume_case(s);
}

// Plain SGD steps inside the backward pass in one process; its legacy decay reads the restored
// iteration count, so a resumed run must take the very same steps.
TEST(Resume, PlainSgdLegacyDecayDropout) {
  RunSpec s;
  s.optimizer = "{name: sgd, learning_rate: 0.1, decay: 0.01}";
  s.extra_layers = "    - dropout: {rate: 0.3}\n";
  resume_case(s);
}

TEST(Resume, TwoRanksAdamDropout) {
  RunSpec s;
  s.optimizer = "{name: adam, learning_rate: 0.01}";
  s.extra_layers = "    - dropout: {rate: 0.3}\n";
  s.epochs = 3;
  s.checkpoint = "{every_epochs: 1, every_steps: 4}";
  resume_case(s, 2);
}

// A second signal (SIGTERM) raised in the middle of the checkpoint the first one (SIGUSR1) started.
TEST(Resume, SecondSignalDuringTheCheckpoint) {
  RunSpec s;
  s.optimizer = "{name: adam, learning_rate: 0.01}";
  s.extra_layers = "    - dropout: {rate: 0.3}\n";
  s.checkpoint = "{every_epochs: 0}";  // the signal's checkpoint is the process's first one
  Tmp t;
  const std::string run = write_run(t / "run.yaml", s);
  reference(run, t / "ref", 0);
  // The number of write points of one checkpoint (traced), then the second signal at its middle.
  Res tr = train(run, t / "trace", 0, "", {sig_env(0, 3, SIGUSR1), "LOCKSTEP_TEST_CKPT_TRACE=1"});
  ASSERT_EQ(tr.rc, 75) << tail(tr.out);
  const int points = max_write_point(tr.out);
  ASSERT_GT(points, 4);
  for (int k : {2, points / 2, points - 1}) {
    const std::string dir = t / ("run" + std::to_string(k));
    stop_and_resume_chain(run, t / "ref", dir, 0, {3, 11},
                          {"LOCKSTEP_TEST_CKPT_POINT=" + std::to_string(k) + ":" + std::to_string(SIGTERM)});
  }
}

// A real, asynchronous SIGUSR1 from outside at an arbitrary moment.
// A real, asynchronous SIGUSR1 from outside at an arbitrary moment (during epoch 3): to the process, and
// to mpirun, which forwards SIGUSR1 to every rank (what Slurm's --signal does to a job step).
void external_signal(int np, int epochs) {
  RunSpec s;
  s.optimizer = "{name: adam, learning_rate: 0.005}";
  s.extra_layers = "    - dropout: {rate: 0.3}\n";
  s.epochs = epochs;  // ~7 ms per epoch and rank: the signal must land long before the end, even on a loaded machine
  s.limit = 1024;
  s.checkpoint = "{every_epochs: 50}";
  Tmp t;
  const std::string run = write_run(t / "run.yaml", s);
  reference(run, t / "ref", np);
  std::string launch = np == 0 ? std::string(LOCKSTEP_BIN) : mpirun(np) + LOCKSTEP_BIN;
  Res r = sh(launch + " train " + run + " --run-dir " + t / "run" + " --threads 1 > " + t / "out" +
                 " 2>&1 & pid=$!; while kill -0 $pid 2>/dev/null && ! grep -q \"^Epoch 3/\" " + t / "out" +
                 "; do sleep 0.01; done; kill -USR1 $pid; wait $pid",
             120);
  std::cout << "[measure] external SIGUSR1 during epoch 3 (" << (np ? "mpirun -np 2" : "1 process") << "): exit " << r.rc
            << "\n";
  ASSERT_EQ(r.rc, 75) << read_text(t / "out");
  EXPECT_NE(read_text(t / "out").find("Stopped by SIGUSR1"), std::string::npos) << read_text(t / "out");
  Res r2 = train(run, t / "run", np, "--resume auto");
  ASSERT_EQ(r2.rc, 0) << tail(r2.out);
  expect_same_run(t / "ref", t / "run", "external signal");
}

TEST(Resume, ExternalSignalAtAnArbitraryMoment) { external_signal(0, 200); }
TEST(Resume, ExternalSignalToMpirunForwardedToRanks) { external_signal(2, 80); }

// Stopped on 2 ranks, resumed on 1: a warning, and the same result up to summation order.
TEST(Resume, DifferentWorldSizeWarns) {
  RunSpec s;
  Tmp t;
  const std::string run = write_run(t / "run.yaml", s);
  reference(run, t / "ref", 2);
  Res a = train(run, t / "run", 2, "", {sig_env(1, 13, SIGUSR1)});
  ASSERT_EQ(a.rc, 75) << tail(a.out);
  Res b = train(run, t / "run", 0, "--resume auto");
  ASSERT_EQ(b.rc, 0) << tail(b.out);
  EXPECT_NE(b.out.find("was written by a run on 2 rank(s), resuming on 1"), std::string::npos) << tail(b.out);
  EXPECT_LE(max_rel_diff(t / "ref/final.h5", t / "run/final.h5", nullptr), 1e-5);
  EXPECT_EQ(num_attr(t / "ref/final.h5", "training_state", "global_step"),
            num_attr(t / "run/final.h5", "training_state", "global_step"));
  // And 1 -> 2 ranks.
  Res c = train(run, t / "run12", 0, "", {sig_env(0, 13, SIGTERM)});
  ASSERT_EQ(c.rc, 75) << tail(c.out);
  Res d = train(run, t / "run12", 2, "--resume auto");
  ASSERT_EQ(d.rc, 0) << tail(d.out);
  EXPECT_NE(d.out.find("was written by a run on 1 rank(s), resuming on 2"), std::string::npos) << tail(d.out);
  EXPECT_LE(max_rel_diff(t / "ref/final.h5", t / "run12/final.h5", nullptr), 1e-5);
}

// ==================================================================================================
// FAULT (label fault)
// ==================================================================================================

RunSpec fault_spec() {
  RunSpec s;
  s.optimizer = "{name: adam, learning_rate: 0.01}";
  s.extra_layers = "    - dropout: {rate: 0.3}\n";
  s.epochs = 3;
  s.limit = 192;
  s.checkpoint = "{every_epochs: 1, every_steps: 2, keep: 2}";
  return s;
}

// (a) SIGKILL of a random rank at a random step, 20 trials (seeded), mpirun -np 2 --timeout 30.
TEST(Fault, KillRandomRankAtRandomStep) {
  Tmp t;
  const std::string run = write_run(t / "run.yaml", fault_spec());
  const int64_t total = reference(run, t / "ref", 2);
  ASSERT_GT(total, 4);
  std::mt19937 rng(20261123);
  double worst = 0;
  for (int trial = 0; trial < 20; ++trial) {
    const int rank = int(rng() % 2);
    const int64_t step = int64_t(rng() % uint64_t(total));
    const std::string dir = t / ("k" + std::to_string(trial));
    Res k = train(run, dir, 2, "", {sig_env(rank, step, SIGKILL)}, 30);
    worst = std::max(worst, k.secs);
    ASSERT_NE(k.rc, 0) << "trial " << trial << ": rank " << rank << " killed at step " << step << "\n" << tail(k.out);
    EXPECT_NE(k.rc, 110) << "mpirun --timeout fired: the job hung after the kill";
    EXPECT_LT(k.secs, 20) << "trial " << trial;
    // No rank outlives the job (FINDINGS §1a: mpirun kills the survivors).
    Res left = sh("sleep 0.2; pgrep -f \"[r]un-dir " + dir + " \" || true");
    EXPECT_EQ(left.out, "") << "trial " << trial << ": ranks left running";
    Res r = train(run, dir, 2, "--resume auto");
    ASSERT_EQ(r.rc, 0) << "trial " << trial << "\n" << tail(r.out);
    expect_same_run(t / "ref", dir, "kill trial " + std::to_string(trial) + " (rank " + std::to_string(rank) +
                                        ", step " + std::to_string(step) + ")");
    if (HasFailure()) return;
  }
  std::cout << "[measure] killed job: slowest end-to-end (start, kill, teardown) " << worst << " s\n";
}

CheckpointContents load(const std::string& run, const std::string& ckpt) {
  ConfigNode cfg = load_config_file(run);
  auto model = Model::from_config(cfg["model"]);
  model->init(1);
  return load_checkpoint(ckpt, *model);
}

// (b) SIGKILL of the single writer at 20 points of its checkpoint writes (every step).
TEST(Fault, KillDuringCheckpointWrite) {
  RunSpec s = fault_spec();
  s.checkpoint = "{every_epochs: 1, every_steps: 1, keep: 2}";
  Tmp t;
  const std::string run = write_run(t / "run.yaml", s);
  Res tr = train(run, t / "ref", 0, "", {"LOCKSTEP_TEST_CKPT_TRACE=1"});
  ASSERT_EQ(tr.rc, 0) << tail(tr.out);
  const int points = max_write_point(tr.out);
  ASSERT_GT(points, 40);
  std::mt19937 rng(424242);
  for (int trial = 0; trial < 20; ++trial) {
    const int n = 1 + int(rng() % uint64_t(points));
    const std::string dir = t / ("w" + std::to_string(trial));
    Res k = train(run, dir, 0, "", {"LOCKSTEP_TEST_CKPT_POINT=" + std::to_string(n)});
    ASSERT_EQ(k.rc, 128 + SIGKILL) << "point " << n << "\n" << tail(k.out);
    // Every committed checkpoint loads (the newest is the previous one when the kill hit a write).
    int loaded = 0;
    for (const auto& e : fs::directory_iterator(dir + "/checkpoints")) {
      if (e.path().extension() != ".h5") continue;
      try {
        load(run, e.path().string());
        ++loaded;
      } catch (const std::exception& ex) {
        ADD_FAILURE() << "point " << n << ": committed checkpoint does not load: " << ex.what();
      }
    }
    Res r = train(run, dir, 0, "--resume auto");
    ASSERT_EQ(r.rc, 0) << "point " << n << "\n" << tail(r.out);
    EXPECT_EQ(r.out.find("skipping"), std::string::npos) << "point " << n << ": a checkpoint was refused\n" << tail(r.out);
    if (loaded > 0) {
      EXPECT_NE(r.out.find("Resuming from"), std::string::npos);
    }
    expect_same_run(t / "ref", dir, "checkpoint kill at point " + std::to_string(n));
    if (HasFailure()) return;
  }
}

std::vector<char> bytes(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}
void put(const std::string& p, const std::vector<char>& b) { std::ofstream(p, std::ios::binary).write(b.data(), std::streamsize(b.size())); }

// Byte offset of a dataset's raw data in the file.
int64_t data_offset(const std::string& path, const std::string& ds) {
  Silence q;
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = H5Dopen2(f, ds.c_str(), H5P_DEFAULT);
  const haddr_t off = H5Dget_offset(d);
  H5Dclose(d);
  H5Fclose(f);
  return int64_t(off);
}

bool same_contents(const CheckpointContents& a, const CheckpointContents& b) {
  if (a.run_config != b.run_config || a.state != b.state || a.strings != b.strings) return false;
  if (a.optimizer.size() != b.optimizer.size()) return false;
  for (size_t i = 0; i < a.optimizer.size(); ++i)
    if (a.optimizer[i].second.to_vector() != b.optimizer[i].second.to_vector()) return false;
  return true;
}

// (c) truncated and bit-flipped checkpoints are refused with a clear error, or (a flip in bytes nothing
// reads) load to exactly the original contents: never silently different.
TEST(Fault, CorruptCheckpointsAreRefused) {
  Tmp t;
  const std::string run = write_run(t / "run.yaml", fault_spec());
  Res r = train(run, t / "ref", 0);
  ASSERT_EQ(r.rc, 0) << tail(r.out);
  std::string ckpt;
  for (const auto& e : fs::directory_iterator(t / "ref/checkpoints")) ckpt = std::max(ckpt, e.path().string());
  const auto orig = bytes(ckpt);
  const CheckpointContents good = load(run, ckpt);
  const std::regex clear("checksum mismatch|not an HDF5 file|incomplete checkpoint|cannot open the checkpoint|"
                         "cannot read|is missing|truncated or corrupt|differs from|the model expects");
  auto check = [&](const std::vector<char>& b, const std::string& what, const char* must = nullptr) {
    const std::string p = t / "bad.h5";
    put(p, b);
    try {
      CheckpointContents c = load(run, p);
      EXPECT_TRUE(must == nullptr && same_contents(good, c)) << what << ": accepted with different contents";
      return false;
    } catch (const CheckpointError& e) {
      EXPECT_TRUE(std::regex_search(std::string(e.what()), clear)) << what << ": unclear error: " << e.what();
      if (must) {
        EXPECT_NE(std::string(e.what()).find(must), std::string::npos) << what << ": " << e.what();
      }
      return true;
    } catch (const std::exception& e) {
      ADD_FAILURE() << what << ": not a CheckpointError: " << e.what();
      return false;
    }
  };
  for (size_t len : {size_t(0), size_t(7), size_t(512), orig.size() / 2, orig.size() - 1}) {
    EXPECT_TRUE(check(std::vector<char>(orig.begin(), orig.begin() + std::ptrdiff_t(len)), "truncated to " + std::to_string(len)))
        << "a truncated file loaded";
  }
  {
    auto b = orig;
    b[0] ^= 0x01;  // the signature
    EXPECT_TRUE(check(b, "flip in the superblock", "not an HDF5 file"));
  }
  for (const char* ds : {"model_weights/dense/dense/kernel:0", "model_weights/batch_normalization/batch_normalization/moving_mean:0"}) {
    auto b = orig;
    const int64_t off = data_offset(ckpt, ds);
    ASSERT_GT(off, 0) << ds;
    b[size_t(off) + 5] ^= 0x10;
    EXPECT_TRUE(check(b, std::string("flip in ") + ds, "checksum mismatch"));
  }
  {
    auto b = orig;
    const auto opt = datasets(ckpt);
    std::string name;
    for (auto& [n, v] : opt)
      if (n.rfind("optimizer_weights", 0) == 0) name = n;
    b[size_t(data_offset(ckpt, name)) + 2] ^= 0x04;
    EXPECT_TRUE(check(b, "flip in optimizer slot " + name, "checksum mismatch"));
  }
  // A flip in the training state (the history text the resumed run continues).
  {
    auto b = orig;
    const std::string key = "epoch,loss";
    auto it = std::search(b.begin(), b.end(), key.begin(), key.end());
    ASSERT_NE(it, b.end());
    *(it + 2) ^= 0x01;
    EXPECT_TRUE(check(b, "flip in training_state history_csv")) << "a corrupt training state was accepted";
  }
  // Flips at 24 offsets spread over the file: refused, or harmless (contents identical).
  int refused = 0;
  for (int i = 0; i < 24; ++i) {
    auto b = orig;
    const size_t off = size_t(i) * (orig.size() - 1) / 23;
    b[off] ^= char(1 << (i % 8));
    refused += check(b, "flip at offset " + std::to_string(off));
  }
  std::cout << "[measure] " << refused << "/24 spread bit flips refused, the rest loaded identical contents\n";
}

// (c) --resume auto reports a corrupt newest checkpoint, skips it and resumes from the previous one.
TEST(Fault, ResumeAutoSkipsCorruptNewest) {
  Tmp t;
  const std::string run = write_run(t / "run.yaml", fault_spec());
  reference(run, t / "ref", 0);
  for (const std::string kind : {"flip", "truncate", "no-commit"}) {
    const std::string dir = t / kind;
    Res a = train(run, dir, 0, "", {sig_env(0, 9, SIGTERM)});
    ASSERT_EQ(a.rc, 75) << tail(a.out);
    std::vector<std::string> cks;
    for (const auto& e : fs::directory_iterator(dir + "/checkpoints")) cks.push_back(e.path().string());
    std::sort(cks.begin(), cks.end());
    ASSERT_GE(cks.size(), 2u);
    auto b = bytes(cks.back());
    std::string why;
    if (kind == "flip") {
      b[size_t(data_offset(cks.back(), "model_weights/dense/dense/kernel:0")) + 11] ^= 0x02;
      why = "checksum mismatch";
    } else if (kind == "truncate") {
      b.resize(b.size() / 2);
      why = "truncated or corrupt";
    } else {
      // The commit marker's name, renamed: an "openable but incomplete" file.
      const std::string key = "complete";
      auto it = std::search(b.begin(), b.end(), key.begin(), key.end());
      ASSERT_NE(it, b.end());
      *it = 'K';
      why = "incomplete checkpoint";
    }
    put(cks.back(), b);
    Res r = train(run, dir, 0, "--resume auto");
    ASSERT_EQ(r.rc, 0) << tail(r.out);
    EXPECT_NE(r.out.find("warning: skipping checkpoint " + cks.back()), std::string::npos) << kind << "\n" << tail(r.out);
    EXPECT_NE(r.out.find(why), std::string::npos) << kind << "\n" << tail(r.out);
    EXPECT_NE(r.out.find("Resuming from " + cks[cks.size() - 2]), std::string::npos) << kind << "\n" << tail(r.out);
    expect_same_run(t / "ref", dir, "resumed past a corrupt checkpoint (" + kind + ")");
  }
}

// (d) a run directory that cannot be created (under a regular file: root ignores permissions).
TEST(Fault, UnwritableRunDir) {
  Tmp t;
  const std::string run = write_run(t / "run.yaml", fault_spec());
  std::ofstream(t / "file") << "x";
  const std::string dir = t / "file/sub";
  for (int np : {0, 2}) {
    Res r = train(run, dir, np, "", {}, 30);
    EXPECT_EQ(r.rc, 2) << tail(r.out);
    EXPECT_NE(r.out.find(dir + ": cannot create the run directory"), std::string::npos) << tail(r.out);
  }
}

// (e) a checkpoint of another model given to --resume.
TEST(Fault, CheckpointOfAnotherModel) {
  Tmp t;
  RunSpec other = fault_spec();
  other.extra_layers = "    - dense: {units: 12, activation: relu}\n";
  Res a = train(write_run(t / "other.yaml", other), t / "other", 0);
  ASSERT_EQ(a.rc, 0) << tail(a.out);
  const std::string run = write_run(t / "run.yaml", fault_spec());
  Res r = train(run, t / "run", 0, "--resume " + t / "other/final.h5");
  EXPECT_EQ(r.rc, 2) << tail(r.out);
  EXPECT_NE(r.out.find("a checkpoint of another model"), std::string::npos) << tail(r.out);
  EXPECT_NE(r.out.find(t / "other/final.h5"), std::string::npos) << tail(r.out);
}

// A loss that turns NaN: exit 3 with a clear message naming the last good checkpoint, which is kept
// intact (nothing newer is written) and still loads.
TEST(Fault, NonFiniteLossKeepsTheLastGoodCheckpoint) {
  Tmp t;
  RunSpec spec = fault_spec();
  spec.epochs = 3;
  spec.checkpoint = "{every_epochs: 1}";
  // A sane first epoch (checkpointed), then a rate that makes the loss explode.
  spec.optimizer = "{name: sgd, learning_rate: 0.05}";
  spec.more = "schedule: {name: piecewise_constant_decay, boundaries: [0], values: [0.05, 1.0e12], per: epoch}\n";
  const std::string run = write_run(t / "run.yaml", spec);
  Res r = train(run, t / "run", 0);
  EXPECT_EQ(r.rc, 3) << tail(r.out);
  EXPECT_TRUE(r.out.find("the loss became NaN") != std::string::npos ||
              r.out.find("the loss became +inf") != std::string::npos) << tail(r.out);
  EXPECT_NE(r.out.find("the last good checkpoint is"), std::string::npos) << tail(r.out);
  std::vector<std::string> ckpts;
  for (const auto& e : fs::directory_iterator(t / "run/checkpoints")) ckpts.push_back(e.path().string());
  ASSERT_EQ(ckpts.size(), 1u) << "only the epoch-1 checkpoint may exist";
  EXPECT_FALSE(fs::exists(t / "run/final.h5"));
  for (const auto& [name, values] : datasets(ckpts[0]))
    for (float v : values) ASSERT_TRUE(std::isfinite(v)) << name;
  EXPECT_EQ(num_attr(ckpts[0], "training_state", "epoch"), 1.0);
}

// ==================================================================================================
// GRAPH MODELS: two inputs on pairs, two outputs, transfer, MC dropout (labels mpi, resume, graph)
// ==================================================================================================

// A two-input model (Keras's Functional form) trained on image pairs (data.pairs): tower A is a shared
// Dense on image_a; tower B the same Dense called again on image_b (`- call: shared`), then its own
// Dense; concatenated, a Dense without bias, a synchronized BatchNormalization, ReLU, dropout and a
// sigmoid output (or two: out1 on top, out2 straight from the concatenation).
struct PairRunSpec {
  std::string optimizer = "{name: sgd, learning_rate: 0.05, momentum: 0.9, global_clipnorm: 1.0}";
  double dropout = 0.2;
  bool two_outputs = false;
  int epochs = 3;
  int limit = 256;      // images of the training split (after the validation split, the first 64)
  int per_epoch = 256;  // training pairs per epoch
  std::string checkpoint = "{every_epochs: 1}";
};

std::string write_pair_run(const std::string& path, const PairRunSpec& s) {
  std::ofstream f(path);
  f << "name: guarantee_pairs\nseed: 11\n"
    << "data: {path: " << g_data << ", scale: 255, limit: " << s.limit << ", validation: {first: 64},\n"
    << "       pairs: {same_fraction: 0.5, same_label: 1, per_epoch: " << s.per_epoch << "}}\n"
    << "model:\n  name: pair_model\n  inputs:\n"
    << "    - input: {name: image_a, shape: [28, 28]}\n    - input: {name: image_b, shape: [28, 28]}\n"
    << "  layers:\n"
    << "    - flatten: {name: flat_a}\n      inputs: image_a\n"
    << "    - dense: {name: shared, units: 16, activation: relu, kernel_initializer: he_normal}\n"
    << "    - flatten: {name: flat_b}\n      inputs: image_b\n"
    << "    - call: shared\n      inputs: flat_b\n"
    << "    - dense: {name: b_top, units: 8, activation: relu, kernel_initializer: he_normal}\n"
    << "    - concatenate: {name: concat, axis: 1}\n      inputs: [\"shared[0]\", b_top]\n"
    << "    - dense: {name: joint, units: 16, use_bias: false}\n"
    << "    - batch_normalization: {name: bn, sync: true}\n"
    << "    - relu: {}\n"
    << "    - dropout: {rate: " << s.dropout << "}\n"
    << (s.two_outputs ? "    - dense: {name: out1, units: 1, activation: sigmoid}\n"
                        "    - dense: {name: out2, units: 1, activation: sigmoid}\n      inputs: concat\n"
                        "  outputs: [out1, out2]\n"
                        "loss: {out1: binary_crossentropy, out2: binary_crossentropy}\n"
                        "loss_weights: {out1: 1.0, out2: 0.5}\n"
                        "metrics: {out1: [accuracy], out2: [binary_accuracy]}\n"
                      : "    - dense: {name: out, units: 1, activation: sigmoid}\n"
                        "  outputs: out\n"
                        "loss: binary_crossentropy\nmetrics: [accuracy]\n")
    << "optimizer: " << s.optimizer << "\n"
    << "train: {epochs: " << s.epochs << ", batch_size: 32, verbose: 2}\n"
    << "distributed: {check_every_steps: 1}\n"
    << "checkpoint: " << s.checkpoint << "\n";
  return path;
}

// history.csv as {column: values per epoch}.
std::map<std::string, std::vector<double>> history_columns(const std::string& dir, std::vector<std::string>* header) {
  std::istringstream in(read_text(dir + "/history.csv"));
  std::string line;
  std::vector<std::string> cols;
  std::map<std::string, std::vector<double>> out;
  for (int row = 0; std::getline(in, line); ++row) {
    std::istringstream ls(line);
    std::string cell;
    for (size_t c = 0; std::getline(ls, cell, ','); ++c) {
      if (row == 0) cols.push_back(cell);
      else if (c < cols.size()) out[cols[c]].push_back(cell.empty() ? NAN : std::stod(cell));
    }
  }
  if (header) *header = cols;
  return out;
}

// What (a) rests on: the dropout mask a rank draws for its slice of the global batch (first sample
// at ctx.sample_offset, core/layers.cpp) is that slice of the mask one process draws for the whole
// batch; slices start at any element, not only at a Philox block of 4. (Every rank drew the mask of
// positions 0..local-1 before: N ranks masked alike, unlike one process.)
TEST(Equiv, DropoutMaskOfARankSliceIsThatSliceOfTheGlobalMask) {
  const int64_t rows = 9, per = 13;  // 13 per sample: the slices start at every offset modulo 4
  std::vector<float> ones(size_t(rows * per), 1.0f);
  for (int kind : {0, 1, 2}) {  // dropout, alpha dropout, RReLU's training slopes
    const bool alpha = kind == 1;
    auto draw = [&](int64_t r0, int64_t r1) {
      Tensor x = Tensor::from_vector({r1 - r0, per}, std::vector<float>(size_t((r1 - r0) * per), -1.0f));
      Tensor mask({r1 - r0, per}), y({r1 - r0, per});
      const rng::Stream s{7, 1234};
      if (kind == 2) {
        ops::rrelu_forward_train(x, 0.125, 1.0 / 3, s, mask, y, r0 * per);
        std::vector<float> v = mask.to_vector();
        for (float& m : v) m = m < 0.2f ? 0.0f : m;  // slopes below 0.2 count as "dropped" below
        return v;
      }
      if (alpha) ops::alpha_dropout_forward(x, 0.3, s, mask, y, r0 * per);
      else ops::dropout_forward(x, 0.3, s, mask, y, r0 * per);
      return mask.to_vector();
    };
    const std::vector<float> whole = draw(0, rows);
    int dropped = 0;
    for (float m : whole) dropped += m == 0.0f;
    EXPECT_GT(dropped, 10) << "no element dropped";
    for (int world : {2, 3, 4}) {
      std::vector<float> joined;
      for (int r = 0; r < world; ++r) {
        const auto part = draw(r * rows / world, (r + 1) * rows / world);
        joined.insert(joined.end(), part.begin(), part.end());
      }
      EXPECT_EQ(joined, whole) << (kind == 2 ? "RReLU slopes" : alpha ? "alpha dropout" : "dropout") << " on " << world
                               << " ranks";
    }
  }
}

// (a) 1, 2 and 4 ranks train the same two-input model (shared layer, sync BN, dropout, global
// clipping) to relative 1e-5, the tolerance of the Equiv tests above.
TEST(Equiv, PairsTwoInputsSharedLayerSyncBatchNormDropout1vs2vs4) {
  Tmp t;
  const std::string run = write_pair_run(t / "run.yaml", PairRunSpec{});
  equivalent_runs(t, run, "pairs, two inputs, shared dense, sync BN, dropout, global_clipnorm");
  if (HasFailure()) return;
  // The shared layer's weights exist once (one kernel and one bias for its two calls).
  int shared = 0;
  for (auto& [n, v] : datasets(t / "np1/final.h5")) shared += n.rfind("model_weights/shared/", 0) == 0;
  EXPECT_EQ(shared, 2) << "the shared Dense must store one kernel and one bias";
}

// (b) The same model stopped mid-epoch, at epoch boundaries and just after, resumed with --resume auto:
// final.h5 bit-identical and history.csv identical (1 rank; then 2 ranks stopped once mid-epoch).
// The resume scenario of the Functional and convolutional run files: the run file `write(path)` makes,
// resumed on 1 rank after each stop resume_run chooses, then on 2 ranks stopped once mid-epoch (step 1.5
// epochs in) against an uninterrupted 2-rank reference.
template <typename Write> void resume_on_one_then_two_ranks(Write write, const std::string& optimizer) {
  {
    Tmp t;
    resume_run(t, write(t / "run.yaml"), optimizer);
  }
  if (::testing::Test::HasFailure()) return;
  Tmp t;
  const std::string run = write(t / "run.yaml");
  int64_t spe = 0;
  reference(run, t / "ref", 2, &spe);
  ASSERT_GT(spe, 2);
  stop_and_resume_chain(run, t / "ref", t / "run", 2, {spe + spe / 2});
}

// ---- several nodes: the hierarchical all-reduce, on one host ----------------------------------------
// LOCKSTEP_RANKS_PER_NODE=K makes consecutive groups of K ranks act as nodes (mpirun's local ranks
// inherit the variable): the trainer then takes the several-node path (shared memory within a node, a
// ring across nodes), as across hosts (tests/cluster's multinode label runs it on simulated hosts).
struct ScopedEnv {
  ScopedEnv(const char* name, const char* value) : name_(name) { setenv(name, value, 1); }
  ~ScopedEnv() { unsetenv(name_); }
  const char* name_;
};

// 2 nodes x 2 ranks, 2 x 1 and 4 x 1 against one process: within 1e-5 (the summation order differs),
// and the log names the path.
TEST(Equiv, HierarchicalNodes2x2And2x1And4x1vs1) {
  Tmp t;
  const std::string run = write_run(t / "run.yaml", RunSpec{});
  Res r1 = train(run, t / "np1", 0);
  ASSERT_EQ(r1.rc, 0) << tail(r1.out);
  for (auto [np, per_node] : {std::pair{4, "2"}, std::pair{2, "1"}, std::pair{4, "1"}}) {
    ScopedEnv env("LOCKSTEP_RANKS_PER_NODE", per_node);
    const std::string dir = t / str_cat("np", np, "_per_node", per_node);
    Res r = train(run, dir, np);
    ASSERT_EQ(r.rc, 0) << tail(r.out);
    EXPECT_NE(r.out.find(str_cat("hierarchical: shared memory within each of ", np / std::atoi(per_node), " nodes")),
              std::string::npos)
        << tail(r.out);
    std::string where;
    const double d = max_rel_diff(t / "np1/final.h5", dir + "/final.h5", &where);
    std::cout << "[measure] hierarchical " << np << " ranks, " << per_node << " per node: max relative difference "
              << "against 1 process " << d << " (" << where << ")\n";
    EXPECT_LE(d, 1e-5) << where;
  }
}

// bf16 and fp16 across 2 nodes x 2 ranks: the run ends, the replicas stay identical (check_every_steps:
// 1), and the model stays near the uncompressed one; the difference is printed.
TEST(Equiv, HierarchicalCompressionStaysNearUncompressed) {
  Tmp t;
  ScopedEnv env("LOCKSTEP_RANKS_PER_NODE", "2");
  Res r0 = train(write_run(t / "none.yaml", RunSpec{}), t / "none", 4);
  ASSERT_EQ(r0.rc, 0) << tail(r0.out);
  const double loss0 = history_columns(t / "none", nullptr)["loss"].back();
  for (const char* c : {"bf16", "fp16"}) {
    RunSpec s;
    s.distributed = str_cat("{check_every_steps: 1, compression: ", c, "}");
    Res r = train(write_run(t / str_cat(c, ".yaml"), s), t / c, 4);
    ASSERT_EQ(r.rc, 0) << tail(r.out);
    EXPECT_NE(r.out.find(str_cat("carrying ", c)), std::string::npos) << tail(r.out);
    std::string where;
    const double d = max_rel_diff(t / "none/final.h5", t / c + "/final.h5", &where);
    const double loss = history_columns(t / c, nullptr)["loss"].back();
    std::cout << "[measure] " << c << " across 2 nodes x 2 ranks: max relative weight difference " << d << " (" << where
              << "), final loss " << loss << " vs " << loss0 << " uncompressed\n";
    EXPECT_GT(d, 0) << c << " changed nothing: is the compression applied?";
    EXPECT_LE(d, 0.05) << where;
    EXPECT_NEAR(loss, loss0, 0.02 * loss0 + 1e-3);
  }
}

// Stopped and resumed on 2 nodes x 2 ranks with bf16: bit-identical to the uninterrupted run there.
TEST(Resume, HierarchicalBf16Nodes2x2) {
  Tmp t;
  ScopedEnv env("LOCKSTEP_RANKS_PER_NODE", "2");
  RunSpec s;
  s.distributed = "{check_every_steps: 1, compression: bf16}";
  s.checkpoint = "{every_epochs: 1, every_steps: 3}";
  const std::string run = write_run(t / "run.yaml", s);
  int64_t spe = 0;
  reference(run, t / "ref", 4, &spe);
  ASSERT_GT(spe, 2);
  stop_and_resume_chain(run, t / "ref", t / "run", 4, {spe / 2 + 1, spe + spe / 2});
}

TEST(Resume, PairsTwoInputsSharedLayerDropout) {
  PairRunSpec s;
  s.checkpoint = "{every_epochs: 1, every_steps: 3}";
  resume_on_one_then_two_ranks([&](const std::string& path) { return write_pair_run(path, s); }, s.optimizer);
}

// (c) Two outputs, loss weights 1.0 and 0.5, a metric per output: Keras's history keys, the logged
// loss = 1.0·out1_loss + 0.5·out2_loss (no regularization here) on training and validation, and 1 vs 2
// ranks equivalent.
TEST(Equiv, TwoOutputsKerasKeysWeightedLoss1vs2) {
  PairRunSpec s;
  s.two_outputs = true;
  s.epochs = 2;
  Tmp t;
  const std::string run = write_pair_run(t / "run.yaml", s);
  equivalent_runs(t, run, "two outputs, loss weights 1.0/0.5", 1, {2});
  if (HasFailure()) return;
  for (const char* dir : {"np1", "np2"}) {
    std::vector<std::string> header;
    auto h = history_columns(t / dir, &header);
    const std::vector<std::string> want = {"epoch", "loss", "out1_loss", "out2_loss", "out1_accuracy",
                                           "out2_binary_accuracy", "val_loss", "val_out1_loss", "val_out2_loss",
                                           "val_out1_accuracy", "val_out2_binary_accuracy", "lr", "seconds"};
    EXPECT_EQ(header, want) << read_text(t / dir + "/history.csv");
    ASSERT_EQ(h["loss"].size(), 2u);
    for (const std::string p : {"", "val_"})
      for (size_t e = 0; e < 2; ++e) {
        const double total = h[p + "loss"][e], l1 = h[p + "out1_loss"][e], l2 = h[p + "out2_loss"][e];
        EXPECT_TRUE(std::isfinite(total) && l1 > 0 && l2 > 0) << p << "loss epoch " << e + 1;
        EXPECT_NEAR(total, 1.0 * l1 + 0.5 * l2, 1e-6 * std::fabs(total)) << dir << " " << p << "loss, epoch " << e + 1;
        EXPECT_NE(total, l1 + l2) << "the weight 0.5 of out2 was not applied";
        for (const char* m : {"out1_accuracy", "out2_binary_accuracy"}) {
          const double a = h[p + m][e];
          EXPECT_TRUE(a >= 0 && a <= 1) << p << m << " = " << a;
        }
      }
  }
}

// (d) Exercise 10's flow: a graph model's checkpoint (towers a_hidden1..3 / b_hidden1..3 on pairs)
// gives a Sequential classifier its a_hidden1..3 by name, frozen for the whole run: the transferred
// weights stay bit-identical to the source's, the new output layer trains.
TEST(Graph, TransferByNameFromGraphCheckpointIntoSequentialFrozen) {
  Tmp t;
  {
    std::ofstream f(t / "pretrain.yaml");
    f << "name: pretrain\nseed: 3\n"
      << "data: {path: " << g_data << ", scale: 255, limit: 256, pairs: {same_fraction: 0.5, same_label: 0}}\n"
      << "model:\n  inputs:\n    - input: {name: image_a, shape: [28, 28]}\n    - input: {name: image_b, shape: [28, 28]}\n"
      << "  layers:\n    - flatten: {name: flatten_a}\n      inputs: image_a\n";
    for (int i = 1; i <= 3; ++i) f << "    - dense: {name: a_hidden" << i << ", units: 12, activation: elu, kernel_initializer: he_normal}\n";
    f << "    - flatten: {name: flatten_b}\n      inputs: image_b\n";
    for (int i = 1; i <= 3; ++i) f << "    - dense: {name: b_hidden" << i << ", units: 12, activation: elu, kernel_initializer: he_normal}\n";
    f << "    - concatenate: {axis: 1}\n      inputs: [a_hidden3, b_hidden3]\n"
      << "    - dense: {name: hidden, units: 6, activation: elu}\n    - dense: {name: output, units: 1, activation: sigmoid}\n"
      << "loss: binary_crossentropy\nmetrics: [accuracy]\n"
      << "optimizer: {name: sgd, learning_rate: 0.01, momentum: 0.95, nesterov: true}\n"
      << "train: {epochs: 1, batch_size: 32, verbose: 2}\n";
  }
  Res a = train(t / "pretrain.yaml", t / "pretrain", 0);
  ASSERT_EQ(a.rc, 0) << tail(a.out);
  {
    std::ofstream f(t / "classifier.yaml");
    f << "name: classifier\nseed: 4\n"
      << "data: {path: " << g_data << ", scale: 255, limit: 256}\n"
      << "model:\n  input_shape: [28, 28]\n  layers:\n    - flatten: {}\n";
    for (int i = 1; i <= 3; ++i) f << "    - dense: {name: a_hidden" << i << ", units: 12, activation: elu, kernel_initializer: he_normal}\n";
    f << "    - dense: {name: digit, units: 10, activation: softmax}\n"
      << "loss: sparse_categorical_crossentropy\nmetrics: [accuracy]\n"
      << "optimizer: {name: sgd, learning_rate: 0.01, momentum: 0.95, nesterov: true}\n"
      << "train: {epochs: 2, batch_size: 32, verbose: 2}\ncheckpoint: {every_epochs: 1}\n"
      << "transfer: {from: " << (t / "pretrain/final.h5") << ", layers: [a_hidden1, a_hidden2, a_hidden3], freeze_epochs: 1000}\n";
  }
  Res b = train(t / "classifier.yaml", t / "classifier", 0);
  ASSERT_EQ(b.rc, 0) << tail(b.out);
  const auto src = datasets(t / "pretrain/final.h5");
  const auto dst = datasets(t / "classifier/final.h5");
  std::string first_ckpt;
  for (const auto& e : fs::directory_iterator(t / "classifier/checkpoints")) {
    if (first_ckpt.empty() || e.path().string() < first_ckpt) first_ckpt = e.path().string();
  }
  ASSERT_FALSE(first_ckpt.empty());
  const auto mid = datasets(first_ckpt);
  int compared = 0;
  for (int i = 1; i <= 3; ++i)
    for (const char* w : {"kernel:0", "bias:0"}) {
      const std::string n = "model_weights/a_hidden" + std::to_string(i) + "/a_hidden" + std::to_string(i) + "/" + w;
      ASSERT_TRUE(src.count(n) && dst.count(n)) << n;
      EXPECT_EQ(src.at(n), dst.at(n)) << n << " changed: the frozen transferred layer trained";
      ++compared;
    }
  EXPECT_EQ(compared, 6);
  const std::string out = "model_weights/digit/digit/kernel:0";
  ASSERT_TRUE(dst.count(out) && mid.count(out));
  EXPECT_NE(dst.at(out), mid.at(out)) << "the new output layer did not train in epoch 2";
  // The pretraining's other layers were not taken (the classifier has no b_hidden*).
  for (auto& [n, v] : dst) EXPECT_EQ(n.find("b_hidden"), std::string::npos) << n;
}

// Reads an int32 or float dataset of an HDF5 file as doubles.
std::vector<double> read_doubles(const std::string& path, const char* name) {
  Silence q;
  std::vector<double> v;
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) return v;
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
  if (d >= 0) {
    hid_t sp = H5Dget_space(d);
    v.resize(size_t(H5Sget_simple_extent_npoints(sp)));
    H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data());
    H5Sclose(sp);
    H5Dclose(d);
  }
  H5Fclose(f);
  return v;
}

// (e) MC dropout on the two-input model: `predict --mc-samples` runs on the validation pairs, its
// passes differ (std > 0 somewhere) and the labels written are the pairs' labels (position p of a
// fixed draw at same_fraction 0.5 is a same pair iff p is odd: label same_label = 1), not the digits.
TEST(Graph, McDropoutPredictOnPairs) {
  PairRunSpec s;
  s.epochs = 1;
  s.dropout = 0.5;
  Tmp t;
  const std::string run = write_pair_run(t / "run.yaml", s);
  Res a = train(run, t / "run", 0);
  ASSERT_EQ(a.rc, 0) << tail(a.out);
  Res p = sh(std::string(LOCKSTEP_BIN) + " predict " + run + " --threads 1 --checkpoint " + t / "run/final.h5" +
             " --split validation --mc-samples 4 --out " + t / "mc.h5");
  ASSERT_EQ(p.rc, 0) << tail(p.out);
  const auto prob = read_doubles(t / "mc.h5", "probabilities");
  const auto sd = read_doubles(t / "mc.h5", "std");
  const auto labels = read_doubles(t / "mc.h5", "labels");
  ASSERT_EQ(prob.size(), 64u);
  ASSERT_EQ(sd.size(), 64u);
  double max_sd = 0;
  for (size_t i = 0; i < prob.size(); ++i) {
    EXPECT_TRUE(prob[i] >= 0 && prob[i] <= 1) << i;
    max_sd = std::max(max_sd, sd[i]);
  }
  EXPECT_GT(max_sd, 0.0) << "the MC passes are identical: dropout was not active";
  ASSERT_EQ(labels.size(), 64u);
  for (size_t i = 0; i < labels.size(); ++i) EXPECT_EQ(labels[i], i % 2 == 1 ? 1.0 : 0.0) << "row " << i;
  // Deterministic predict (no MC) on the training split, whose pairs per epoch (300) exceed its 256
  // images: one row per pair (it overran its buffer, one row per image, before), labels the pairs'.
  Res d = sh(std::string(LOCKSTEP_BIN) + " predict " + run + " --threads 1 --checkpoint " + t / "run/final.h5" +
             " --split train --set data.pairs.per_epoch=300 --out " + t / "det.h5");
  ASSERT_EQ(d.rc, 0) << tail(d.out);
  EXPECT_EQ(read_doubles(t / "det.h5", "probabilities").size(), 300u);
  EXPECT_TRUE(read_doubles(t / "det.h5", "std").empty());
  const auto train_labels = read_doubles(t / "det.h5", "labels");
  ASSERT_EQ(train_labels.size(), 300u);
  for (size_t i = 0; i < train_labels.size(); ++i) EXPECT_EQ(train_labels[i], i % 2 == 1 ? 1.0 : 0.0) << "train row " << i;
}

// ---- the CLI on Functional run files with errors ---------------------------------------------------

struct CliRes {
  int rc = -1;
  std::string out, err;
};

// `cmd` with stdout and stderr captured apart.
CliRes cli(const Tmp& t, const std::string& cmd, int limit_s = 60) {
  CliRes c;
  Res r = sh(cmd + " >" + t / "cli.out" + " 2>" + t / "cli.err", limit_s);
  c.rc = r.rc;
  c.out = read_text(t / "cli.out");
  c.err = read_text(t / "cli.err");
  return c;
}

std::string functional_file(const Tmp& t, const std::string& name, const std::string& layers) {
  const std::string path = t / name;
  std::ofstream f(path);
  f << "name: bad\nseed: 1\n"
    << "data: {path: " << g_data << ", scale: 255, limit: 128, pairs: {}}\n"
    << "model:\n"
    << "  inputs:\n"
    << "    - input: {name: image_a, shape: [28, 28]}\n"
    << "    - input: {name: image_b, shape: [28, 28]}\n"
    << "  layers:\n"
    << layers
    << "loss: binary_crossentropy\n"
    << "optimizer: {name: sgd}\n"
    << "train: {epochs: 1, batch_size: 32, verbose: 2}\n";
  return path;
}

// `lockstep summary` and `lockstep train` (1 process, and 2 ranks for one case) exit 2 with
// FILE:LINE:COL: KEY: message on stderr for a cycle, an unknown input name and an add of two shapes.
TEST(Cli, FunctionalRunFileErrorsExit2WithFileLineAndKey) {
  Tmp t;
  struct Case {
    std::string file, layers;
    int line;            // of the entry (1-based) the error must point at
    std::string key;     // the key path printed after FILE:LINE:COL
    std::string message;
  };
  // The layers start at line 9 of the file (functional_file's header takes 8).
  const std::vector<Case> cases = {
      {"cycle.yaml",
       "    - flatten: {name: fa}\n      inputs: image_a\n"              // 9
       "    - add: {name: loop}\n      inputs: [fa, d2]\n"               // 11
       "    - dense: {name: d1, units: 784}\n"                           // 13
       "    - dense: {name: d2, units: 784}\n"                           // 14
       "    - flatten: {name: fb}\n      inputs: image_b\n"              // 15
       "    - concatenate: {}\n      inputs: [d2, fb]\n"                 // 17
       "    - dense: {name: out, units: 1, activation: sigmoid}\n",      // 19
       11, "model.layers[1]", "the layers form a cycle"},
      {"unknown.yaml",
       "    - flatten: {name: fa}\n      inputs: image_a\n"               // 9
       "    - flatten: {name: fb}\n      inputs: imgae_b\n"               // 11-12
       "    - concatenate: {}\n      inputs: [fa, fb]\n"
       "    - dense: {name: out, units: 1, activation: sigmoid}\n",
       12, "model.layers[1].inputs", "no layer or input named 'imgae_b'"},
      {"add.yaml",
       "    - flatten: {name: fa}\n      inputs: image_a\n"               // 9
       "    - dense: {name: da, units: 8}\n"                              // 11
       "    - flatten: {name: fb}\n      inputs: image_b\n"               // 12
       "    - dense: {name: db, units: 6}\n"                              // 14
       "    - add: {name: sum}\n      inputs: [da, db]\n"                 // 15
       "    - dense: {name: out, units: 1, activation: sigmoid}\n",
       15, "model.layers[4]", "(None, 8)"},
  };
  for (const Case& c : cases) {
    const std::string file = functional_file(t, c.file, c.layers);
    for (const std::string verb : {"summary", "train"}) {
      for (int np : verb == "train" && c.file == "add.yaml" ? std::vector<int>{0, 2} : std::vector<int>{0}) {
        std::string cmd = np ? mpirun(np, 30) : "";
        cmd += std::string(LOCKSTEP_BIN) + " " + verb + " " + file + " --threads 1";
        if (verb == "train") cmd += " --run-dir " + t / ("run-" + c.file);
        CliRes r = cli(t, cmd);
        const std::string what = c.file + " " + verb + (np ? " on 2 ranks" : "");
        std::cout << "[cli] " << what << " -> " << r.rc << ": " << r.err.substr(0, r.err.find('\n')) << "\n";
        EXPECT_EQ(r.rc, 2) << what << "\n" << r.err << r.out;
        const std::regex where(file + ":([0-9]+):[0-9]+: ([^ :]+(\\[[0-9]+\\])*[^ :]*):");
        std::smatch m;
        ASSERT_TRUE(std::regex_search(r.err, m, where)) << what << ": no FILE:LINE:COL: KEY: on stderr:\n" << r.err;
        if (c.line > 0) {
          EXPECT_EQ(std::stoi(m[1]), c.line) << what << "\n" << r.err;
        }
        EXPECT_EQ(m[2].str().rfind(c.key, 0), 0u) << what << ": key " << m[2] << ", expected " << c.key << "\n" << r.err;
        EXPECT_NE(r.err.find(c.message), std::string::npos) << what << "\n" << r.err;
        EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
      }
    }
  }
}

// `lockstep summary --plot out.svg` draws the two-input model with Graphviz's dot.
TEST(Cli, SummaryPlotWritesSvg) {
  if (sh("command -v dot").rc != 0) GTEST_SKIP() << "Graphviz's dot is not on PATH: summary --plot is not tested";
  Tmp t;
  const std::string run = write_pair_run(t / "run.yaml", PairRunSpec{});
  CliRes r = cli(t, std::string(LOCKSTEP_BIN) + " summary " + run + " --plot " + t / "model.svg");
  ASSERT_EQ(r.rc, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("Connected to"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("shared[1][0]"), std::string::npos) << "the second call of the shared layer\n" << r.out;
  const std::string svg = read_text(t / "model.svg");
  EXPECT_NE(svg.find("<svg"), std::string::npos) << svg.substr(0, 300);
  for (const char* n : {"image_a", "image_b", "shared", "concat", "bn"}) EXPECT_NE(svg.find(n), std::string::npos) << n;
}

// ==================================================================================================
// CONVOLUTIONAL MODELS (labels mpi, resume, unit): a small CNN on generated 32x32x3 images
// ==================================================================================================

// Conv2D (stride 2, no bias) + synchronized BN on the feature maps + ReLU + SpatialDropout2D + max
// pooling, a second conv + BN, global average pooling, Dropout, softmax; data.augment's random crop
// (4 pixels of zero padding) and horizontal flips, per-channel standardization, 64 validation images.
struct CnnRunSpec {
  std::string optimizer = "{name: sgd, learning_rate: 0.05, momentum: 0.9}";
  std::string augment = ", augment: {random_crop: {padding: 4}, horizontal_flip: true}";
  int epochs = 3;
  std::string checkpoint = "{every_epochs: 1}";
};

std::string write_cnn_run(const std::string& path, const CnnRunSpec& s) {
  std::ofstream f(path);
  f << "name: guarantee_cnn\nseed: 13\n"
    << "data: {path: " << g_cifar << ", scale: 255, standardize: per_channel, limit: 256, validation: {first: 64}"
    << s.augment << "}\n"
    << "model:\n  input_shape: [32, 32, 3]\n  layers:\n"
    << "    - conv2d: {filters: 8, kernel_size: 3, strides: 2, padding: same, use_bias: false, kernel_initializer: he_normal}\n"
    << "    - batch_normalization: {sync: true}\n"
    << "    - relu: {}\n"
    << "    - spatial_dropout2d: {rate: 0.2}\n"
    << "    - max_pooling2d: {}\n"
    << "    - conv2d: {filters: 16, kernel_size: 3, padding: same, use_bias: false, kernel_initializer: he_normal}\n"
    << "    - batch_normalization: {}\n"
    << "    - relu: {}\n"
    << "    - global_average_pooling2d: {}\n"
    << "    - dropout: {rate: 0.2}\n"
    << "    - dense: {units: 10, activation: softmax}\n"
    << "loss: sparse_categorical_crossentropy\nmetrics: [accuracy]\n"
    << "optimizer: " << s.optimizer << "\n"
    << "train: {epochs: " << s.epochs << ", batch_size: 32, verbose: 2}\n"
    << "distributed: {check_every_steps: 1}\n"
    << "checkpoint: " << s.checkpoint << "\n";
  return path;
}

// 1, 2 and 4 ranks: the same final weights and BN moving statistics to relative 1e-5 (the tolerance of
// the Equiv tests above): sync BN's statistics over the global batch, the spatial/plain dropout masks and
// the augmentation draws per sample of the global batch.
TEST(Equiv, CnnSyncBatchNormAugmentSpatialDropout1vs2vs4) {
  Tmp t;
  const CnnRunSpec spec;
  equivalent_runs(t, write_cnn_run(t / "run.yaml", spec), "CNN, sync BN on maps, augment, spatial dropout", 2);
  if (HasFailure()) return;
  // The augmentation acts: without it the run ends elsewhere.
  CnnRunSpec plain = spec;
  plain.augment = "";
  Res r = train(write_cnn_run(t / "plain.yaml", plain), t / "plain", 0);
  ASSERT_EQ(r.rc, 0) << tail(r.out);
  const double d = max_rel_diff(t / "np1/final.h5", t / "plain/final.h5", nullptr);
  std::cout << "[measure] CNN with vs without data.augment: relative difference " << d << "\n";
  EXPECT_GT(d, 1e-2) << "data.augment did not change the run";
}

// Stopped mid-epoch, at an epoch's last step and the next's first, resumed with --resume auto: final.h5
// bit-identical (weights, BN statistics, Adam's slots) and history.csv identical; then 2 ranks stopped
// once mid-epoch.
TEST(Resume, CnnSyncBatchNormAugmentSpatialDropout) {
  CnnRunSpec s;
  s.optimizer = "{name: adam, learning_rate: 0.01}";
  s.checkpoint = "{every_epochs: 1, every_steps: 3}";
  resume_on_one_then_two_ranks([&](const std::string& path) { return write_cnn_run(path, s); }, s.optimizer);
}

// A Sequential run file on the 32x32x3 images (`input` sets input_shape and data.path: cifar.h5 or
// train.h5); its layers start at line 7.
std::string conv_file(const Tmp& t, const std::string& name, const std::string& input, const std::string& layers,
                      const std::string& data) {
  const std::string path = t / name;
  std::ofstream f(path);
  f << "name: bad\nseed: 1\n"
    << "data: {path: " << data << ", scale: 255, limit: 64}\n"
    << "model:\n  input_shape: " << input << "\n  layers:\n"
    << layers
    << "    - flatten: {}\n    - dense: {units: 10, activation: softmax}\n"
    << "loss: sparse_categorical_crossentropy\n"
    << "optimizer: {name: sgd}\n"
    << "train: {epochs: 1, batch_size: 32, verbose: 2}\n";
  return path;
}

// `lockstep summary` and `lockstep train` exit 2 with FILE:LINE:COL: KEY: and a message naming the layer
// or the key for convolution and pooling arguments that cannot work.
TEST(Cli, ConvRunFileErrorsExit2WithFileLineAndKey) {
  Tmp t;
  struct Case {
    std::string file, input, layers;
    int line;                           // of the entry or key the error must point at
    std::string key;                    // the key path printed after FILE:LINE:COL
    std::vector<std::string> messages;  // each must appear
    bool mnist = false;                 // the 28x28 images (train.h5) instead of cifar.h5
  };
  const std::vector<Case> cases = {
      {"kernel.yaml", "[32, 32, 3]",
       "    - max_pooling2d: {pool_size: 4}\n"                                        // 7
       "    - conv2d: {filters: 4, kernel_size: 9}\n",                                // 8
       8, "model.layers[1]",
       {"layer conv2d (Conv2D)", "kernel_size 9x9 is larger than its input 8x8 with padding valid", "padding: same"}},
      {"dilated.yaml", "[32, 32, 3]",
       "    - max_pooling2d: {pool_size: 4}\n"                                        // 7
       "    - conv2d: {filters: 4, kernel_size: 3, dilation_rate: 4}\n",              // 8
       8, "model.layers[1]", {"layer conv2d (Conv2D)", "kernel_size 3x3 (dilated: 9x9) is larger than its input 8x8"}},
      {"strides.yaml", "[32, 32, 3]", "    - conv2d: {filters: 4, kernel_size: 3, strides: 0}\n", 7,
       "model.layers[0].conv2d.strides", {"expected positive values, got (0, 0)"}},
      {"pool.yaml", "[32, 32, 3]",
       "    - conv2d: {filters: 4, kernel_size: 3, strides: 2}\n"                     // 7: 15x15
       "    - max_pooling2d: {pool_size: [2, 16]}\n",                                 // 8
       8, "model.layers[1]", {"layer max_pooling2d (MaxPooling2D)", "pool_size 2x16 is larger than its input 15x15"}},
      {"avgpool.yaml", "[32, 32, 3]", "    - average_pooling2d: {pool_size: 33}\n", 7, "model.layers[0]",
       {"layer average_pooling2d (AveragePooling2D)", "pool_size 33x33 is larger than its input 32x32"}},
      {"groups.yaml", "[32, 32, 3]", "    - conv2d: {filters: 4, kernel_size: 3, groups: 2}\n", 7, "model.layers[0]",
       {"layer conv2d (Conv2D)", "groups 2 must divide both the input's 3 channels and the 4 filters"}},
      {"groups_filters.yaml", "[32, 32, 3]", "    - conv2d: {filters: 6, kernel_size: 3, groups: 4}\n", 7,
       "model.layers[0].conv2d.groups", {"groups 4 must divide filters (6)"}},
      {"dilation_strides.yaml", "[32, 32, 3]",
       "    - conv2d: {filters: 4, kernel_size: 3, strides: 2, dilation_rate: 2}\n", 7,
       "model.layers[0].conv2d.dilation_rate", {"dilation_rate > 1 cannot be combined with strides > 1"}},
      {"padding.yaml", "[32, 32, 3]", "    - conv2d: {filters: 4, kernel_size: 3, padding: causal}\n", 7,
       "model.layers[0].conv2d.padding", {"unknown value 'causal'; expected one of: valid, same"}},
      {"pool_padding.yaml", "[32, 32, 3]", "    - max_pooling2d: {padding: full}\n", 7,
       "model.layers[0].max_pooling2d.padding", {"unknown value 'full'; expected one of: valid, same"}},
      // MNIST's [28, 28] images straight into a conv: the message says how to declare the channel axis.
      {"rank2.yaml", "[28, 28]", "    - conv2d: {filters: 4, kernel_size: 3}\n", 7, "model.layers[0]",
       {"layer conv2d (Conv2D)", "expected an input of shape (height, width, channels), got (None, 28, 28)",
        "`input_shape: [28, 28, 1]`", "`- input: {shape: [28, 28, 1]}`"},
       true},
      {"rank2_padding.yaml", "[28, 28]",
       "    - zero_padding2d: {padding: 2}\n    - conv2d: {filters: 4, kernel_size: 3}\n", 7, "model.layers[0]",
       {"layer zero_padding2d (ZeroPadding2D)", "got (None, 28, 28)", "`input_shape: [28, 28, 1]`"}, true},
  };
  for (const Case& c : cases) {
    const std::string file = conv_file(t, c.file, c.input, c.layers, c.mnist ? g_data : g_cifar);
    for (const std::string verb : {"summary", "train"}) {
      for (int np : verb == "train" && c.file == "kernel.yaml" ? std::vector<int>{0, 2} : std::vector<int>{0}) {
        std::string cmd = np ? mpirun(np, 30) : "";
        cmd += std::string(LOCKSTEP_BIN) + " " + verb + " " + file + " --threads 1";
        if (verb == "train") cmd += " --run-dir " + t / ("run-" + c.file);
        CliRes r = cli(t, cmd);
        const std::string what = c.file + " " + verb + (np ? " on 2 ranks" : "");
        std::cout << "[cli] " << what << " -> " << r.rc << ": " << r.err.substr(0, r.err.find('\n')) << "\n";
        EXPECT_EQ(r.rc, 2) << what << "\n" << r.err << r.out;
        const std::regex where(file + ":([0-9]+):[0-9]+: ([^ :]+):");
        std::smatch m;
        ASSERT_TRUE(std::regex_search(r.err, m, where)) << what << ": no FILE:LINE:COL: KEY: on stderr:\n" << r.err;
        EXPECT_EQ(std::stoi(m[1]), c.line) << what << "\n" << r.err;
        EXPECT_EQ(m[2].str(), c.key) << what << "\n" << r.err;
        for (const std::string& msg : c.messages) EXPECT_NE(r.err.find(msg), std::string::npos) << what << ": " << msg << "\n" << r.err;
        EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
        if (np) {  // printed once, by rank 0
          size_t n = 0;
          for (size_t at = r.err.find(c.messages[0]); at != std::string::npos; at = r.err.find(c.messages[0], at + 1)) ++n;
          EXPECT_EQ(n, 1u) << what << "\n" << r.err;
        }
      }
    }
  }
}

// ==================================================================================================
// TENSORBOARD (labels unit, resume, mpi): the event files `lockstep train` writes with
// callbacks.tensorboard, against ../shared/reference/tensorboard-events.md (§1.1 names, §1.4/§2.3-2.5
// records, §2.2 tags/steps/order, §3.7-3.8 steps and resume), read back with tb::read_event_file and
// viewed the way TensorBoard's two loaders see a run directory.
// ==================================================================================================

std::string host_for_names() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0) return "localhost";
  return buf;
}

std::string regex_escape(const std::string& s) {
  static const std::regex special(R"([.^$|()\[\]{}*+?\\])");
  return std::regex_replace(s, special, R"(\$&)");
}

// One point of a tag: a scalar (float32, as written), a histogram, or the `keras` tag's text.
struct TbPoint {
  int64_t step = 0;
  int kind = 0;  // 0 scalar, 1 histogram, 2 text
  float value = 0;
  std::vector<tb::HistogramBucket> buckets;
  std::string text;
  bool operator==(const TbPoint& o) const {
    // Scalars compared bit for bit (float32); histograms row for row (doubles).
    return step == o.step && kind == o.kind && std::memcmp(&value, &o.value, sizeof value) == 0 && buckets == o.buckets &&
           text == o.text;
  }
};
using TbTags = std::map<std::string, std::vector<TbPoint>>;

std::ostream& operator<<(std::ostream& os, const TbPoint& p) {
  os << "{step " << p.step;
  if (p.kind == 0) os << ", " << std::setprecision(9) << p.value;
  if (p.kind == 1) os << ", histogram of " << p.buckets.size() << " rows";
  if (p.kind == 2) os << ", text of " << p.text.size() << " bytes";
  return os << "}";
}

TbPoint tb_point(const tb::Event& e, const tb::SummaryValue& v) {
  TbPoint p;
  p.step = e.step;
  if (v.plugin_name == "histograms") {
    p.kind = 1;
    p.buckets = v.histogram().value_or(std::vector<tb::HistogramBucket>{});
  } else if (v.plugin_name == "graph_keras_model") {
    p.kind = 2;
    p.text = v.string().value_or("");
  } else {
    p.value = float(v.scalar().value_or(NAN));
  }
  return p;
}

// The reference's checks of one file (§5.1 step 3): the name (§1.1: events.out.tfevents.<%010d>.<host>.
// <pid>.<n>.v2), both CRCs of every record (strict reading), the first record (brain.Event:2, wall_time
// = the name's seconds), one Summary.Value per event, TF2 scalars (DT_FLOAT, empty shape, 4 bytes,
// plugin scalars), DT_DOUBLE [30, 3] histograms with contiguous edges and integral counts, the keras tag
// (DT_STRING, graph_keras_model, content "1", step 0), no graph_def, finite wall times.
struct TbFileName {
  int64_t seconds = -1, pid = -1, counter = -1;
};
void check_event_file(const std::string& path, TbFileName& n, bool killed = false) {
  const std::string base = fs::path(path).filename().string();
  const std::regex re("events\\.out\\.tfevents\\.([0-9]{10})\\." + regex_escape(host_for_names()) + "\\.([0-9]+)\\.([0-9]+)\\.v2");
  std::smatch m;
  EXPECT_TRUE(std::regex_match(base, m, re)) << path << ": not the reference's file name";
  if (m.size() == 4) n = {std::stoll(m[1]), std::stoll(m[2]), std::stoll(m[3])};
  tb::EventFile f;
  try {
    f = tb::read_event_file(path, true);
  } catch (const std::exception& e) {
    ADD_FAILURE() << path << ": " << e.what();
    return;
  }
  EXPECT_TRUE(killed || !f.truncated) << path << ": a short last record";
  if (f.events.empty()) {
    if (!killed) ADD_FAILURE() << path << ": no records";
    return;
  }
  EXPECT_EQ(f.events[0].file_version, "brain.Event:2") << path;
  EXPECT_EQ(f.events[0].wall_time, double(n.seconds)) << path << ": first wall_time is not the name's seconds";
  EXPECT_TRUE(f.events[0].values.empty()) << path;
  for (size_t i = 1; i < f.events.size(); ++i) {
    const tb::Event& e = f.events[i];
    const std::string at = path + " record " + std::to_string(i);
    EXPECT_TRUE(std::isfinite(e.wall_time) && e.wall_time > 1e9) << at;
    EXPECT_FALSE(e.has_graph_def) << at;
    EXPECT_TRUE(e.file_version.empty()) << at;
    if (e.session_status >= 0) {
      EXPECT_EQ(e.session_status, int(tb::SessionStatus::Start)) << at;
      EXPECT_TRUE(e.values.empty()) << at;
      continue;
    }
    ASSERT_EQ(e.values.size(), 1u) << at << ": one Summary.Value per event";
    const tb::SummaryValue& v = e.values[0];
    EXPECT_TRUE(v.has_metadata) << at << " " << v.tag;
    EXPECT_EQ(v.kind, tb::SummaryValue::Kind::Tensor) << at << " " << v.tag;
    EXPECT_EQ(v.data_class, 0) << at;
    if (v.plugin_name == "scalars") {
      EXPECT_EQ(v.tensor.dtype, tb::DT_FLOAT) << at << " " << v.tag;
      EXPECT_TRUE(v.tensor.has_shape && v.tensor.shape.empty()) << at << " " << v.tag;
      EXPECT_EQ(v.tensor.content.size(), 4u) << at << " " << v.tag;
      EXPECT_TRUE(v.plugin_content.empty()) << at;
      EXPECT_TRUE(v.scalar().has_value()) << at << " " << v.tag;
    } else if (v.plugin_name == "histograms") {
      EXPECT_EQ(v.tensor.dtype, tb::DT_DOUBLE) << at << " " << v.tag;
      EXPECT_EQ(v.tensor.shape, (std::vector<int64_t>{30, 3})) << at << " " << v.tag;
      const auto rows = v.histogram();
      ASSERT_TRUE(rows.has_value()) << at << " " << v.tag;
      ASSERT_EQ(rows->size(), 30u) << at;
      for (size_t r = 0; r < rows->size(); ++r) {
        EXPECT_EQ((*rows)[r].count, std::floor((*rows)[r].count)) << at << " " << v.tag << " row " << r;
        if (r + 1 < rows->size()) {
          EXPECT_EQ((*rows)[r].right, (*rows)[r + 1].left) << at << " " << v.tag << " row " << r;
        }
      }
    } else if (v.plugin_name == "graph_keras_model") {
      EXPECT_EQ(v.tag, "keras") << at;
      EXPECT_EQ(e.step, 0) << at;
      EXPECT_EQ(v.plugin_content, "1") << at;
      EXPECT_EQ(v.tensor.dtype, tb::DT_STRING) << at;
      EXPECT_TRUE(v.string().has_value()) << at;
    } else {
      ADD_FAILURE() << at << ": tag " << v.tag << " of an unexpected plugin '" << v.plugin_name << "'";
    }
  }
}

// (tag, step) of every summary record of a file after the version record, in file order.
std::vector<std::pair<std::string, int64_t>> record_order(const std::string& path) {
  std::vector<std::pair<std::string, int64_t>> out;
  for (const tb::Event& e : tb::read_event_file(path, false).events)
    for (const tb::SummaryValue& v : e.values) out.emplace_back(v.tag, e.step);
  return out;
}

// A run directory as TensorBoard's Python loader (plugin_event_accumulator) holds it: files in name
// order, each up to its first bad or short record; a run's first SessionLog START starts the session,
// every later one purges all points at steps >= its step (_CheckForRestartAndMaybePurge).
TbTags python_view(const std::string& dir) {
  TbTags tags;
  bool seen_start = false;
  for (const std::string& path : tb::event_files(dir))
    for (const tb::Event& e : tb::read_event_file(path, false).events) {
      if (e.session_status == int(tb::SessionStatus::Start)) {
        if (seen_start)
          for (auto& [tag, points] : tags) std::erase_if(points, [&](const TbPoint& p) { return p.step >= e.step; });
        seen_start = true;
        continue;
      }
      for (const tb::SummaryValue& v : e.values) tags[v.tag].push_back(tb_point(e, v));
    }
  std::erase_if(tags, [](const auto& kv) { return kv.second.empty(); });
  return tags;
}

// The same directory as RustBoard holds it: SessionLog ignored, but each new point of a tag drops the
// tag's stored points at steps >= its step (reservoir.rs).
TbTags rust_view(const std::string& dir) {
  TbTags tags;
  for (const std::string& path : tb::event_files(dir))
    for (const tb::Event& e : tb::read_event_file(path, false).events)
      for (const tb::SummaryValue& v : e.values) {
        auto& points = tags[v.tag];
        std::erase_if(points, [&](const TbPoint& p) { return p.step >= e.step; });
        points.push_back(tb_point(e, v));
      }
  return tags;
}

// A log directory: its run directories' files (each checked) and views; both loaders must agree and
// every tag's steps must strictly increase (§3.7).
struct TbLogs {
  std::vector<std::string> files[2];  // train, validation (name order)
  std::vector<TbFileName> names[2];
  TbTags tags[2];  // the Python loader's view
};

// killed: a process was SIGKILLed (its files may end in a short record, or be empty).
TbLogs read_logs(const std::string& log_dir, bool killed = false) {
  TbLogs l;
  for (int run : {0, 1}) {
    const std::string dir = (fs::path(log_dir) / (run == 0 ? "train" : "validation")).string();
    l.files[run] = tb::event_files(dir);
    for (const std::string& f : l.files[run]) {
      l.names[run].emplace_back();
      check_event_file(f, l.names[run].back(), killed);
    }
    l.tags[run] = python_view(dir);
    EXPECT_EQ(l.tags[run], rust_view(dir)) << dir << ": TensorBoard's Python loader and RustBoard would show different points";
    for (const auto& [tag, points] : l.tags[run])
      for (size_t i = 1; i < points.size(); ++i)
        EXPECT_LT(points[i - 1].step, points[i].step) << dir << ": tag " << tag << " steps not strictly increasing";
  }
  return l;
}

std::vector<int64_t> tb_steps(const TbTags& t, const std::string& tag) {
  std::vector<int64_t> s;
  if (t.count(tag))
    for (const TbPoint& p : t.at(tag)) s.push_back(p.step);
  return s;
}
std::vector<float> tb_values(const TbTags& t, const std::string& tag) {
  std::vector<float> s;
  if (t.count(tag))
    for (const TbPoint& p : t.at(tag)) s.push_back(p.value);
  return s;
}
std::set<std::string> tb_tag_set(const TbTags& t) {
  std::set<std::string> s;
  for (const auto& [tag, points] : t) s.insert(tag);
  return s;
}
std::vector<float> as_f32(const std::vector<double>& v) { return std::vector<float>(v.begin(), v.end()); }
std::vector<int64_t> iota_steps(int64_t first, int64_t last, int64_t stride = 1) {
  std::vector<int64_t> s;
  for (int64_t k = first; k <= last; k += stride) s.push_back(k);
  return s;
}

// The model of write_run(): its weights in model.layers order, each layer's weights in order (state
// included), as the reference's §2.2 histogram tags, with element counts.
const std::vector<std::pair<std::string, int64_t>>& histogram_tags() {
  static const std::vector<std::pair<std::string, int64_t>> t = {
      {"dense/kernel_0/histogram", 784 * 16},
      {"batch_normalization/gamma_0/histogram", 16},
      {"batch_normalization/beta_0/histogram", 16},
      {"batch_normalization/moving_mean_0/histogram", 16},
      {"batch_normalization/moving_variance_0/histogram", 16},
      {"dense_1/kernel_0/histogram", 16 * 10},
      {"dense_1/bias_0/histogram", 10},
  };
  return t;
}

// TensorBoard >= 2.8's histogram of `x` (plugins/histogram/summary_v2.py, reference §2.4), written here
// from the reference, not from core/tensorboard.cpp: 30 buckets of width (max-min)/30, index
// floor((x-min)/width) clamped to 29, edges min + i·width with the last edge max.
std::vector<tb::HistogramBucket> reference_histogram(const std::vector<float>& x) {
  const int k = 30;
  std::vector<tb::HistogramBucket> rows(k);
  const double mn = *std::min_element(x.begin(), x.end()), mx = *std::max_element(x.begin(), x.end());
  if (mn == mx) {
    for (auto& r : rows) r = {mn, mn, 0};
    rows.back().count = double(x.size());
    return rows;
  }
  const double width = (mx - mn) / k;
  for (float v : x) rows[size_t(std::min<int64_t>(int64_t(std::floor((double(v) - mn) / width)), k - 1))].count += 1;
  for (int i = 0; i < k; ++i) {
    rows[size_t(i)].left = mn + i * width;
    rows[size_t(i)].right = i == k - 1 ? mx : mn + (i + 1) * width;
  }
  return rows;
}

// write_run()'s model and data with callbacks.tensorboard (YAML flow map `tensorboard`), validation
// on the first 64 images, 3 epochs of limit/32 steps; `callbacks`: other callbacks before it.
RunSpec tb_spec(const std::string& tensorboard, const std::string& more = "", const std::string& callbacks = "") {
  RunSpec s;
  s.data_extra = ", validation: {first: 64}";
  s.epochs = 3;
  s.limit = 192;  // 6 steps per epoch
  s.checkpoint = "{every_epochs: 1}";
  s.more = more + "callbacks: {" + callbacks + "tensorboard: " + tensorboard + "}\n";
  return s;
}

// Runs `spec` (1 process, or np ranks) in t/name; returns the steps per epoch it printed.
int64_t tb_train(const Tmp& t, const std::string& name, const RunSpec& spec, int np = 0, Res* out = nullptr) {
  Res r = train(write_run(t / (name + ".yaml"), spec), t / name, np);
  EXPECT_EQ(r.rc, 0) << name << "\n" << tail(r.out);
  if (out) *out = r;
  return steps_per_epoch(r.out);
}

// (1) update_freq epoch with validation, metrics [accuracy] and a per-step schedule: the train and
// validation runs' tags, steps, values and record order, the keras tag, the file names.
TEST(TensorBoard, EpochScalarsEqualHistoryAndScheduleInKerasLayout) {
  Tmp t;
  // A per-step ExponentialDecay (a LearningRateSchedule object in Keras: epoch_learning_rate).
  const RunSpec s = tb_spec("{log_dir: logs, update_freq: epoch, histogram_freq: 0, write_graph: true, profile_batch: 0}",
                            "schedule: {name: exponential_decay, decay_steps: 4, decay_rate: 0.5}\n");
  const int64_t spe = tb_train(t, "run", s);
  ASSERT_EQ(spe, 6);
  ASSERT_FALSE(HasFailure());
  const TbLogs l = read_logs(t / "run/logs");
  ASSERT_EQ(l.files[0].size(), 1u) << "one train event file";
  ASSERT_EQ(l.files[1].size(), 1u) << "one validation event file";
  // §1.1: one process, the train writer first (counter 0), then the validation writer (1).
  EXPECT_EQ(l.names[0][0].counter, 0);
  EXPECT_EQ(l.names[1][0].counter, 1);
  EXPECT_EQ(l.names[0][0].pid, l.names[1][0].pid);
  EXPECT_LE(l.names[0][0].seconds, l.names[1][0].seconds);
  const double now = double(std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  EXPECT_LE(std::fabs(double(l.names[0][0].seconds) - now), 120.0) << "the name's timestamp is not the creation time";

  const auto h = history_columns(t / "run", nullptr);
  const TbTags& tr = l.tags[0];
  const TbTags& va = l.tags[1];
  EXPECT_EQ(tb_tag_set(tr), (std::set<std::string>{"keras", "epoch_loss", "epoch_accuracy", "epoch_learning_rate"}));
  EXPECT_EQ(tb_tag_set(va), (std::set<std::string>{"epoch_loss", "epoch_accuracy", "evaluation_loss_vs_iterations",
                                                   "evaluation_accuracy_vs_iterations"}));
  const std::vector<int64_t> epochs = {0, 1, 2}, iterations = {spe, 2 * spe, 3 * spe};
  for (const char* tag : {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"}) EXPECT_EQ(tb_steps(tr, tag), epochs) << tag;
  EXPECT_EQ(tb_values(tr, "epoch_loss"), as_f32(h.at("loss")));
  EXPECT_EQ(tb_values(tr, "epoch_accuracy"), as_f32(h.at("accuracy")));
  // The schedule's rate at the optimizer's iterations after the epoch: 0.05 · 0.5^(iterations/4).
  const std::vector<float> lr = tb_values(tr, "epoch_learning_rate");
  ASSERT_EQ(lr.size(), 3u);
  for (size_t e = 0; e < 3; ++e) EXPECT_FLOAT_EQ(lr[e], float(0.05 * std::pow(0.5, double(iterations[e]) / 4.0))) << "epoch " << e;
  EXPECT_NE(lr[0], float(h.at("lr")[0])) << "epoch_learning_rate must be schedule(iterations), not the rate of the last step";
  for (const char* tag : {"epoch_loss", "epoch_accuracy"}) EXPECT_EQ(tb_steps(va, tag), epochs) << tag;
  for (const char* tag : {"evaluation_loss_vs_iterations", "evaluation_accuracy_vs_iterations"})
    EXPECT_EQ(tb_steps(va, tag), iterations) << tag;
  EXPECT_EQ(tb_values(va, "epoch_loss"), as_f32(h.at("val_loss")));
  EXPECT_EQ(tb_values(va, "epoch_accuracy"), as_f32(h.at("val_accuracy")));
  EXPECT_EQ(tb_values(va, "evaluation_loss_vs_iterations"), as_f32(h.at("val_loss")));
  EXPECT_EQ(tb_values(va, "evaluation_accuracy_vs_iterations"), as_f32(h.at("val_accuracy")));
  // The keras tag: once, at step 0, the model's JSON (Sequential, with keras_version and backend).
  ASSERT_EQ(tr.count("keras"), 1u);
  ASSERT_EQ(tr.at("keras").size(), 1u);
  const std::string& json = tr.at("keras")[0].text;
  EXPECT_EQ(json.rfind("{\"class_name\": \"Sequential\"", 0), 0u) << json.substr(0, 200);
  for (const char* key : {"\"keras_version\": ", "\"backend\": ", "\"batch_normalization\"", "\"dense_1\""})
    EXPECT_NE(json.find(key), std::string::npos) << key << " not in " << json.substr(0, 300);
  // Record order (§3.3): keras first; per epoch loss, the metrics, then the rate; the validation file
  // has evaluation_* (step = iterations) before epoch_* (step = epoch) for each epoch.
  std::vector<std::pair<std::string, int64_t>> want_train = {{"keras", 0}}, want_val;
  for (int64_t e = 0; e < 3; ++e) {
    for (const char* tag : {"epoch_loss", "epoch_accuracy", "epoch_learning_rate"}) want_train.emplace_back(tag, e);
    for (const char* tag : {"evaluation_loss_vs_iterations", "evaluation_accuracy_vs_iterations"})
      want_val.emplace_back(tag, iterations[size_t(e)]);
    for (const char* tag : {"epoch_loss", "epoch_accuracy"}) want_val.emplace_back(tag, e);
  }
  EXPECT_EQ(record_order(l.files[0][0]), want_train);
  EXPECT_EQ(record_order(l.files[1][0]), want_val);
  // No SessionLog in a fresh run's files.
  for (int run : {0, 1})
    for (const tb::Event& e : tb::read_event_file(l.files[run][0]).events) EXPECT_EQ(e.session_status, -1);

  // write_graph false and no validation data: no keras tag, no validation writer (Keras opens it at
  // the first validation), a constant rate: no learning-rate tag.
  RunSpec s2 = tb_spec("{log_dir: tb, write_graph: false}");
  s2.data_extra = "";
  tb_train(t, "nograph", s2);
  const TbLogs l2 = read_logs(t / "nograph/tb");
  ASSERT_EQ(l2.files[0].size(), 1u);
  EXPECT_TRUE(l2.files[1].empty()) << "a validation event file without validation data";
  EXPECT_EQ(tb_tag_set(l2.tags[0]), (std::set<std::string>{"epoch_loss", "epoch_accuracy"}));
  const auto h2 = history_columns(t / "nograph", nullptr);
  EXPECT_EQ(tb_values(l2.tags[0], "epoch_loss"), as_f32(h2.at("loss")));
  EXPECT_EQ(l2.names[0][0].counter, 0);
}

// (2) update_freq batch, 3 (not a divisor of the 7 steps per epoch: counted over the global steps, as
// Keras's _train_counter) and epoch: batch_<m> at 1-based global steps, the epoch's running means.
TEST(TensorBoard, UpdateFreqBatchEveryNAndEpoch) {
  Tmp t;
  std::map<std::string, TbLogs> logs;
  std::map<std::string, std::map<std::string, std::vector<double>>> hist;
  for (const std::string uf : {"batch", "3", "epoch"}) {
    RunSpec s = tb_spec("{update_freq: " + uf + ", write_graph: false}");
    s.limit = 224;  // 7 steps per epoch
    ASSERT_EQ(tb_train(t, uf, s), 7) << uf;
    logs[uf] = read_logs(t / (uf + "/logs"));
    hist[uf] = history_columns(t / uf, nullptr);
    ASSERT_EQ(logs[uf].files[0].size(), 1u);
  }
  const int64_t spe = 7, total = 21;
  // The callback does not change training: the three runs' histories are identical.
  EXPECT_EQ(history_without_seconds(t / "batch"), history_without_seconds(t / "epoch"));
  EXPECT_EQ(history_without_seconds(t / "3"), history_without_seconds(t / "epoch"));
  const TbTags& b = logs["batch"].tags[0];
  const TbTags& n3 = logs["3"].tags[0];
  EXPECT_EQ(tb_tag_set(b), (std::set<std::string>{"epoch_loss", "epoch_accuracy", "batch_loss", "batch_accuracy"}));
  EXPECT_EQ(tb_tag_set(n3), tb_tag_set(b));
  EXPECT_EQ(tb_tag_set(logs["epoch"].tags[0]), (std::set<std::string>{"epoch_loss", "epoch_accuracy"})) << "update_freq epoch wrote batch_*";
  for (const char* tag : {"batch_loss", "batch_accuracy"}) {
    EXPECT_EQ(tb_steps(b, tag), iota_steps(1, total)) << tag;
    EXPECT_EQ(tb_steps(n3, tag), iota_steps(3, total, 3)) << tag;
    // Every 3rd point of the batch run, bit for bit.
    const auto all = tb_values(b, tag), every3 = tb_values(n3, tag);
    ASSERT_EQ(all.size(), size_t(total));
    ASSERT_EQ(every3.size(), size_t(total / 3));
    for (size_t i = 0; i < every3.size(); ++i) EXPECT_EQ(every3[i], all[3 * i + 2]) << tag << " at step " << 3 * (i + 1);
  }
  // The running mean of the epoch so far: the last point of an epoch is the epoch's value; after k
  // batches of 32 the accuracy is a count of correct samples over 32k (the mean restarts each epoch).
  const auto loss = tb_values(b, "batch_loss"), acc = tb_values(b, "batch_accuracy");
  ASSERT_EQ(loss.size(), size_t(total));
  for (int64_t e = 0; e < 3; ++e) {
    EXPECT_EQ(loss[size_t((e + 1) * spe - 1)], float(hist["batch"].at("loss")[size_t(e)])) << "epoch " << e;
    EXPECT_EQ(acc[size_t((e + 1) * spe - 1)], float(hist["batch"].at("accuracy")[size_t(e)])) << "epoch " << e;
    EXPECT_EQ(loss[size_t((e + 1) * spe - 1)], tb_values(logs["epoch"].tags[0], "epoch_loss")[size_t(e)]);
    for (int64_t k = 1; k <= spe; ++k) {
      const double correct = double(acc[size_t(e * spe + k - 1)]) * 32.0 * double(k);
      EXPECT_NEAR(correct, std::round(correct), 1e-3) << "batch_accuracy at step " << e * spe + k << " is not a mean over "
                                                      << k << " batch(es) of this epoch";
    }
  }
  // Record order of the every-3 run: per global step k with k % 3 == 0, batch_loss then batch_accuracy;
  // at each epoch's end (after its last batch point) epoch_loss, epoch_accuracy.
  std::vector<std::pair<std::string, int64_t>> want;
  for (int64_t k = 1; k <= total; ++k) {
    if (k % 3 == 0) {
      want.emplace_back("batch_loss", k);
      want.emplace_back("batch_accuracy", k);
    }
    if (k % spe == 0) {
      want.emplace_back("epoch_loss", k / spe - 1);
      want.emplace_back("epoch_accuracy", k / spe - 1);
    }
  }
  EXPECT_EQ(record_order(logs["3"].files[0][0]), want);
  // batch_* never go to the validation run.
  for (const auto& [tag, points] : logs["batch"].tags[1]) EXPECT_EQ(tag.rfind("batch_", 0), std::string::npos) << tag;
}

// (3) histogram_freq 0, 1 and 2 over 3 epochs: tags <layer>/<weight>_0/histogram (§2.2) for every weight
// in model order at epochs with epoch % freq == 0, counts summing to the weight's size; the last epoch's
// histograms are those of final.h5's weights.
TEST(TensorBoard, HistogramFreq0And1And2) {
  Tmp t;
  std::map<int, TbLogs> logs;
  for (int hf : {0, 1, 2}) {
    const std::string name = "hf" + std::to_string(hf);
    tb_train(t, name, tb_spec("{histogram_freq: " + std::to_string(hf) + ", write_graph: false}"));
    logs[hf] = read_logs(t / (name + "/logs"));
    ASSERT_EQ(logs[hf].files[0].size(), 1u);
  }
  for (const auto& [tag, points] : logs[0].tags[0]) EXPECT_EQ(tag.find("histogram"), std::string::npos) << "histogram_freq 0: " << tag;
  for (int hf : {1, 2}) {
    const TbTags& tr = logs[hf].tags[0];
    int histogram_tags_seen = 0;
    for (const auto& [tag, points] : tr) histogram_tags_seen += tag.find("/histogram") != std::string::npos;
    EXPECT_EQ(histogram_tags_seen, int(histogram_tags().size())) << "histogram_freq " << hf;
    for (const auto& [tag, size] : histogram_tags()) {
      EXPECT_EQ(tb_steps(tr, tag), (hf == 1 ? std::vector<int64_t>{0, 1, 2} : std::vector<int64_t>{0, 2})) << hf << " " << tag;
      if (!tr.count(tag)) continue;
      for (const TbPoint& p : tr.at(tag)) {
        double n = 0;
        for (const auto& row : p.buckets) n += row.count;
        EXPECT_EQ(n, double(size)) << tag << " at epoch " << p.step;
      }
    }
    // The validation run has none.
    for (const auto& [tag, points] : logs[hf].tags[1]) EXPECT_EQ(tag.find("histogram"), std::string::npos) << tag;
    // Order within the train file: at each histogram epoch, after the epoch's scalars, the weights in
    // model.layers order.
    std::vector<std::pair<std::string, int64_t>> want;
    for (int64_t e = 0; e < 3; ++e) {
      want.emplace_back("epoch_loss", e);
      want.emplace_back("epoch_accuracy", e);
      if (e % hf == 0)
        for (const auto& [tag, size] : histogram_tags()) want.emplace_back(tag, e);
    }
    EXPECT_EQ(record_order(logs[hf].files[0][0]), want) << "histogram_freq " << hf;
  }
  // Same training: histogram_freq 2's epochs 0 and 2 equal histogram_freq 1's.
  for (const auto& [tag, size] : histogram_tags()) {
    if (!logs[1].tags[0].count(tag) || !logs[2].tags[0].count(tag)) continue;
    const auto& a = logs[1].tags[0].at(tag);
    const auto& b = logs[2].tags[0].at(tag);
    if (a.size() == 3 && b.size() == 2) {
      EXPECT_EQ(a[0], b[0]) << tag;
      EXPECT_EQ(a[2], b[1]) << tag;
    }
    // Weights change between epochs (the histogram is taken at each epoch, not once).
    if (a.size() == 3 && tag.find("dense/kernel") == 0) {
      EXPECT_NE(a[0].buckets, a[2].buckets) << tag;
    }
  }
  // Epoch 2 (the last) is final.h5's weights: min, max and counts from the reference's algorithm.
  const auto weights = datasets(t / "hf1/final.h5");
  for (const auto& [tag, size] : histogram_tags()) {
    const std::string layer = tag.substr(0, tag.find('/'));
    const std::string w = tag.substr(layer.size() + 1, tag.find("_0/histogram") - layer.size() - 1);
    const std::string ds = "model_weights/" + layer + "/" + layer + "/" + w + ":0";
    ASSERT_TRUE(weights.count(ds)) << ds << " not in final.h5";
    ASSERT_EQ(int64_t(weights.at(ds).size()), size) << ds;
    if (!logs[1].tags[0].count(tag) || logs[1].tags[0].at(tag).size() != 3) continue;
    const auto& got = logs[1].tags[0].at(tag)[2].buckets;
    const auto want = reference_histogram(weights.at(ds));
    ASSERT_EQ(got.size(), want.size()) << tag;
    for (size_t r = 0; r < got.size(); ++r) {
      EXPECT_EQ(got[r].count, want[r].count) << tag << " row " << r;
      EXPECT_NEAR(got[r].left, want[r].left, 1e-12 * (1 + std::fabs(want[r].left))) << tag << " row " << r;
      EXPECT_NEAR(got[r].right, want[r].right, 1e-12 * (1 + std::fabs(want[r].right))) << tag << " row " << r;
    }
    EXPECT_EQ(got.front().left, want.front().left) << tag << ": first edge is not the minimum";
    EXPECT_EQ(got.back().right, want.back().right) << tag << ": last edge is not the maximum";
  }
}

// (4) Learning-rate tags (§2.2): ReduceLROnPlateau and a per-epoch schedule (Keras's
// LearningRateScheduler) put `lr` in the logs: epoch_lr, the rate the epoch ran with; a constant rate
// gives neither epoch_lr nor epoch_learning_rate.
TEST(TensorBoard, LearningRateTagsPlateauPerEpochScheduleConstant) {
  Tmp t;
  tb_train(t, "plateau", tb_spec("{}", "", "reduce_lr_on_plateau: {monitor: loss, patience: 0, factor: 0.5, min_delta: 10}, "));
  tb_train(t, "per_epoch", tb_spec("{}", "schedule: {name: exponential_decay, decay_steps: 1, decay_rate: 0.5, per: epoch}\n"));
  tb_train(t, "constant", tb_spec("{}"));
  for (const std::string name : {"plateau", "per_epoch"}) {
    const TbLogs l = read_logs(t / (name + "/logs"));  // `tensorboard: {}`: Keras's default log_dir, logs
    ASSERT_EQ(l.files[0].size(), 1u) << name;
    const TbTags& tr = l.tags[0];
    EXPECT_EQ(tb_tag_set(tr), (std::set<std::string>{"keras", "epoch_loss", "epoch_accuracy", "epoch_lr"})) << name;
    EXPECT_EQ(tb_steps(tr, "epoch_lr"), (std::vector<int64_t>{0, 1, 2})) << name;
    // ReduceLROnPlateau: epoch 0 improves on +inf, epochs 1 and 2 do not (min_delta 10): the rate is
    // halved after epoch 1. The per-epoch schedule: 0.05 · 0.5^epoch.
    EXPECT_EQ(tb_values(tr, "epoch_lr"), name == "plateau" ? (std::vector<float>{0.05f, 0.05f, 0.025f})
                                                           : (std::vector<float>{0.05f, 0.025f, 0.0125f}))
        << name;
    EXPECT_EQ(tb_values(tr, "epoch_lr"), as_f32(history_columns(t / name, nullptr).at("lr"))) << name;
    for (const auto& [tag, points] : l.tags[1]) EXPECT_NE(tag, "epoch_lr") << name << ": lr in the validation run";
    // Keras's log order: loss, the metrics, then lr.
    const auto order = record_order(l.files[0][0]);
    ASSERT_EQ(order.size(), 10u) << name;
    EXPECT_EQ(order[3].first, "epoch_lr") << name;
    EXPECT_EQ(order[3].second, 0) << name;
  }
  const TbLogs c = read_logs(t / "constant/logs");
  EXPECT_EQ(tb_tag_set(c.tags[0]), (std::set<std::string>{"keras", "epoch_loss", "epoch_accuracy"}));
}

// (5) Resume: a run stopped (SIGUSR1/SIGTERM through LOCKSTEP_TEST_SIGNAL) mid-epoch and at the last step
// of an epoch; resumed from older checkpoints (mid-epoch, and at an epoch boundary: points rewritten,
// SessionLog START); killed (SIGKILL); each finished with --resume auto: the log directory, read as
// TensorBoard reads it (START purges; RustBoard's reservoir), shows exactly the points of an
// uninterrupted run (float32 scalars and histograms bit for bit), steps strictly increasing, one keras
// point; every process writes new files. Then a fresh run in the used directory shows only itself.
TEST(TensorBoard, ResumeShowsTheUninterruptedRun) {
  Tmp t;
  // Checkpoints every 4 steps and every 2nd epoch (spe 6): 4, 8, 12 (epoch 2's end), 16, 18.
  RunSpec s = tb_spec("{update_freq: batch, histogram_freq: 1}", "schedule: {name: exponential_decay, decay_steps: 4, decay_rate: 0.5}\n");
  s.optimizer = "{name: adam, learning_rate: 0.01}";
  s.extra_layers = "    - dropout: {rate: 0.3}\n";
  s.checkpoint = "{every_epochs: 2, every_steps: 4}";
  const std::string run = write_run(t / "run.yaml", s);
  Res ref = train(run, t / "ref", 0);
  ASSERT_EQ(ref.rc, 0) << tail(ref.out);
  ASSERT_EQ(steps_per_epoch(ref.out), 6);
  const TbLogs want = read_logs(t / "ref/logs");
  ASSERT_EQ(want.files[0].size(), 1u);
  ASSERT_EQ(tb_steps(want.tags[0], "batch_loss"), iota_steps(1, 18));
  ASSERT_EQ(tb_steps(want.tags[1], "evaluation_loss_vs_iterations"), (std::vector<int64_t>{6, 12, 18}));

  // keras_records: the keras records over all train files (a clean resume adds none; a resume that
  // rewrites from step 0 copies the still valid one after its START).
  auto same_view = [&](const std::string& dir, const std::string& what, size_t processes, int keras_records,
                       bool killed = false) {
    const TbLogs got = read_logs(dir + "/logs", killed);
    EXPECT_EQ(got.files[0].size(), processes) << what << ": one new train file per process";
    for (int run_i : {0, 1}) {
      EXPECT_EQ(tb_tag_set(got.tags[run_i]), tb_tag_set(want.tags[run_i])) << what;
      for (const auto& [tag, points] : want.tags[run_i]) {
        if (!got.tags[run_i].count(tag)) continue;
        EXPECT_EQ(got.tags[run_i].at(tag), points) << what << ": " << (run_i ? "validation" : "train") << " tag " << tag;
      }
    }
    ASSERT_TRUE(got.tags[0].count("keras"));
    EXPECT_EQ(got.tags[0].at("keras").size(), 1u) << what;
    int keras = 0;
    for (const auto& f : got.files[0])
      for (const auto& [tag, step] : record_order(f)) keras += tag == "keras";
    EXPECT_EQ(keras, keras_records) << what;
    // Files in name order are in creation order: the newest sorts last (§1.1).
    for (int run_i : {0, 1})
      for (size_t i = 1; i < got.names[run_i].size(); ++i)
        EXPECT_LT(got.names[run_i][i - 1].seconds, got.names[run_i][i].seconds) << what;
    expect_same_run(t / "ref", dir, what);
  };

  // Clean stops: SIGUSR1 before step 4 (mid-epoch 1: stopped after 5 steps), SIGTERM before step 11 (the
  // last step of epoch 2: the resumed run only validates and ends that epoch). Each stop's checkpoint is
  // where it stopped: nothing is rewritten, no SessionLog.
  for (auto [i, step, sig] : {std::tuple{0, 4, SIGUSR1}, std::tuple{1, 11, SIGTERM}}) {
    Res r = train(run, t / "stop", 0, i == 0 ? "" : "--resume auto", {sig_env(0, step, sig)});
    ASSERT_EQ(r.rc, 75) << tail(r.out);
  }
  Res r = train(run, t / "stop", 0, "--resume auto");
  ASSERT_EQ(r.rc, 0) << tail(r.out);
  same_view(t / "stop", "stopped before steps 4 and 11", 3, 1);
  for (const auto& f : tb::event_files(t / "stop/logs/train"))
    for (const tb::Event& e : tb::read_event_file(f).events) EXPECT_EQ(e.session_status, -1) << f << ": a SessionLog after a clean stop";
  // A fresh start (no --resume) in that used run directory, 2 epochs: TensorBoard shows only the new
  // run (the same first 2 epochs as the reference: same seed), the old points purged by its STARTs.
  {
    Res f = train(run, t / "stop", 0, "--set train.epochs=2");
    ASSERT_EQ(f.rc, 0) << tail(f.out);
    const TbLogs got = read_logs(t / "stop/logs");
    EXPECT_EQ(got.files[0].size(), 4u);
    for (int run_i : {0, 1}) {
      EXPECT_EQ(tb_tag_set(got.tags[run_i]), tb_tag_set(want.tags[run_i]));
      for (const auto& [tag, points] : want.tags[run_i]) {
        std::vector<TbPoint> first2;
        for (const TbPoint& p : points)
          // Steps are global steps for batch_* and evaluation_* (not batch_normalization/...), else epochs.
          if ((tag.find("/histogram") == std::string::npos && tag.rfind("batch_", 0) == 0) || tag.rfind("evaluation_", 0) == 0
                  ? p.step <= 12
                  : p.step <= 1)
            first2.push_back(p);
        EXPECT_EQ(got.tags[run_i].count(tag) ? got.tags[run_i].at(tag) : std::vector<TbPoint>{}, first2)
            << "fresh run in a used log directory: " << tag;
      }
    }
  }

  // Resumes that rewrite points, made deterministic by removing the newest checkpoints of a clean stop
  // (what a crash right after the older checkpoint leaves), then a real SIGKILL:
  //  1. SIGUSR1 before step 8 (checkpoints 4, 8 and the stop's 9); 8 and 9 removed: the resume from 4
  //     rewrites epoch 0's points (epoch_*, histograms, evaluation at 6) and batch 5..: two STARTs at
  //     step 0 (the loader takes a run's first START for the session's start), then copies of the
  //     points still valid at steps >= 0 (keras, batch 1..4).
  //  2. SIGTERM before step 13 (the stop's checkpoint 14 removed): the resume from 12, epoch 2's end (an
  //     epoch boundary), rewrites batch 13..: one START at 13 (the run has one now).
  //  3. SIGKILL before step 17: the resume from 16 finds what the killed writer left (maybe a short
  //     last record), and a START at 17 only if batch 17 reached the file.
  auto remove_checkpoints = [&](const std::vector<int>& iterations) {
    for (int it : iterations) {
      char name[64];
      std::snprintf(name, sizeof name, "ckpt-%010d.h5", it);
      EXPECT_TRUE(fs::remove(t / "crash/checkpoints" + "/" + name)) << name;
    }
  };
  Res c1 = train(run, t / "crash", 0, "", {sig_env(0, 8, SIGUSR1)});
  ASSERT_EQ(c1.rc, 75) << tail(c1.out);
  remove_checkpoints({8, 9});
  Res c2 = train(run, t / "crash", 0, "--resume auto", {sig_env(0, 13, SIGTERM)});
  ASSERT_EQ(c2.rc, 75) << tail(c2.out);
  EXPECT_NE(c2.out.find("ckpt-0000000004.h5"), std::string::npos) << tail(c2.out);
  remove_checkpoints({14});
  Res c3 = train(run, t / "crash", 0, "--resume auto", {sig_env(0, 17, SIGKILL)});
  ASSERT_EQ(c3.rc, 128 + SIGKILL) << tail(c3.out);
  EXPECT_NE(c3.out.find("ckpt-0000000012.h5"), std::string::npos) << tail(c3.out);
  Res c4 = train(run, t / "crash", 0, "--resume auto");
  ASSERT_EQ(c4.rc, 0) << tail(c4.out);
  EXPECT_NE(c4.out.find("ckpt-0000000016.h5"), std::string::npos) << tail(c4.out);
  same_view(t / "crash", "resumed from older checkpoints and after SIGKILL", 4, 2, true);
  // The START records: only at the start of a file (before its first summary), all at one step.
  const auto files = tb::event_files(t / "crash/logs/train");
  ASSERT_EQ(files.size(), 4u);
  std::vector<std::vector<int64_t>> starts(4);
  for (size_t i = 0; i < 4; ++i) {
    bool summary_seen = false;
    for (const tb::Event& e : tb::read_event_file(files[i]).events) {
      if (e.session_status == int(tb::SessionStatus::Start)) {
        EXPECT_FALSE(summary_seen) << files[i] << ": a START after summaries";
        starts[i].push_back(e.step);
      }
      summary_seen = summary_seen || !e.values.empty();
    }
  }
  EXPECT_EQ(starts[0], std::vector<int64_t>{});
  EXPECT_EQ(starts[1], (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(starts[2], std::vector<int64_t>{13});
  EXPECT_TRUE(starts[3].empty() || starts[3] == std::vector<int64_t>{17}) << starts[3].size();
}

// (6) 2 ranks: rank 0 alone writes (one file per run directory, no other event file anywhere), and the
// points are the 1-rank run's: same tags and steps, scalars within the Equiv tests' relative 1e-5.
TEST(TensorBoard, TwoRanksOnlyRankZeroWritesTheOneRankCurves) {
  Tmp t;
  const RunSpec s = tb_spec("{update_freq: 2, histogram_freq: 1}", "schedule: {name: exponential_decay, decay_steps: 4, decay_rate: 0.5}\n");
  tb_train(t, "np1", s);
  tb_train(t, "np2", s, 2);
  ASSERT_FALSE(HasFailure());
  const TbLogs a = read_logs(t / "np1/logs"), b = read_logs(t / "np2/logs");
  for (int run : {0, 1}) {
    ASSERT_EQ(b.files[run].size(), 1u) << "2 ranks: " << (run ? "validation" : "train") << " files";
    EXPECT_EQ(tb_tag_set(b.tags[run]), tb_tag_set(a.tags[run]));
    for (const auto& [tag, points] : a.tags[run]) {
      if (!b.tags[run].count(tag)) continue;
      const auto& q = b.tags[run].at(tag);
      ASSERT_EQ(tb_steps(b.tags[run], tag), tb_steps(a.tags[run], tag)) << tag;
      for (size_t i = 0; i < points.size(); ++i) {
        if (points[i].kind == 0) {
          EXPECT_LE(std::fabs(double(q[i].value) - double(points[i].value)), 1e-5 * std::fabs(double(points[i].value)))
              << tag << " at step " << points[i].step << ": 1 rank " << points[i].value << ", 2 ranks " << q[i].value;
        } else if (points[i].kind == 2) {
          EXPECT_EQ(q[i].text, points[i].text) << tag;
        } else {
          double n = 0, m = 0;
          for (const auto& row : q[i].buckets) n += row.count;
          for (const auto& row : points[i].buckets) m += row.count;
          EXPECT_EQ(n, m) << tag;
        }
      }
    }
  }
  int files = 0;
  for (const auto& e : fs::recursive_directory_iterator(t / "np2"))
    files += e.path().filename().string().find("tfevents") != std::string::npos;
  EXPECT_EQ(files, 2) << "event files other than rank 0's train and validation files";
  EXPECT_EQ(b.names[0][0].pid, b.names[1][0].pid) << "train and validation written by different processes";
  // An unusable log_dir (through a regular file): rank 0 finds it, both ranks stop before training, exit
  // 2, FILE:LINE:COL: callbacks.tensorboard.log_dir.
  std::ofstream(t / "file") << "x";
  Res r = train(write_run(t / "bad.yaml", tb_spec("{log_dir: " + t / "file/logs" + "}")), t / "bad", 2, "", {}, 30);
  EXPECT_EQ(r.rc, 2) << tail(r.out);
  EXPECT_TRUE(std::regex_search(r.out, std::regex(regex_escape(t / "bad.yaml") +
                                                  ":[0-9]+:[0-9]+: callbacks\\.tensorboard\\.log_dir: cannot create the log directory")))
      << tail(r.out);
  EXPECT_EQ(r.out.find("Epoch 1/"), std::string::npos) << tail(r.out);
  EXPECT_FALSE(fs::exists(t / "bad/history.csv"));
}

// (7) An unusable log_dir (through a regular file, a regular file itself, a regular file as its train
// run; root ignores permissions) or a misspelt key: exit 2 before the first epoch, FILE:LINE:COL naming
// callbacks.tensorboard.<key>.
TEST(TensorBoard, UnusableLogDirOrMisspeltKeyExit2BeforeTraining) {
  Tmp t;
  std::ofstream(t / "file") << "x";
  fs::create_directories(t / "blocked/logs");
  std::ofstream(t / "blocked/logs/train") << "x";
  struct Case {
    std::string name, tensorboard_yaml, run_dir, key, message;
    int np;
  };
  const std::vector<Case> cases = {
      {"through_file", "    log_dir: " + t / "file/logs" + "\n", t / "r1", "callbacks.tensorboard.log_dir",
       "cannot create the log directory", 0},
      {"is_file", "    log_dir: " + t / "file" + "\n", t / "r3", "callbacks.tensorboard.log_dir",
       "cannot create the log directory " + t / "file" + " (Not a directory)", 0},
      {"train_is_file", "    log_dir: logs\n    update_freq: batch\n", t / "blocked", "callbacks.tensorboard.log_dir",
       "cannot write event files in " + t / "blocked/logs/train", 0},
      {"misspelt", "    log_dir: logs\n    histgram_freq: 1\n", t / "r5", "callbacks.tensorboard.histgram_freq",
       "did you mean 'histogram_freq'?", 0},
      {"misspelt_value", "    update_freq: batches\n", t / "r6", "callbacks.tensorboard.update_freq",
       "expected epoch, batch or a number", 0},
  };
  for (const Case& c : cases) {
    RunSpec s = tb_spec("{}");
    s.more = "callbacks:\n  tensorboard:\n" + c.tensorboard_yaml;
    const std::string file = write_run(t / (c.name + ".yaml"), s);
    // The line of the key the error must point at.
    const std::string key = c.key.substr(c.key.rfind('.') + 1) + ":";
    int line = 0;
    {
      std::istringstream in(read_text(file));
      std::string l;
      for (int i = 1; std::getline(in, l); ++i)
        if (l.find(key) != std::string::npos) line = i;
    }
    ASSERT_GT(line, 0) << c.name;
    Res r = train(file, c.run_dir, c.np, "", {}, 30);
    std::cout << "[tensorboard] " << c.name << " -> exit " << r.rc << ": " << r.out.substr(0, r.out.find('\n')) << "\n";
    EXPECT_EQ(r.rc, 2) << c.name << "\n" << tail(r.out);
    const std::regex where(regex_escape(file) + ":([0-9]+):[0-9]+: " + regex_escape(c.key) + ": ");
    std::smatch m;
    ASSERT_TRUE(std::regex_search(r.out, m, where)) << c.name << ": no FILE:LINE:COL: " << c.key << ":\n" << tail(r.out);
    EXPECT_EQ(std::stoi(m[1]), line) << c.name << "\n" << r.out;
    EXPECT_NE(r.out.find(c.message), std::string::npos) << c.name << "\n" << r.out;
    EXPECT_EQ(r.out.find("Epoch 1/"), std::string::npos) << c.name << ": training started\n" << r.out;
    EXPECT_FALSE(fs::exists(c.run_dir + "/history.csv")) << c.name << ": training started";
    EXPECT_EQ(r.out.find("terminate called"), std::string::npos) << r.out;
  }
}

// ---- the dataset fixture ---------------------------------------------------------------------------

int make_data(const std::string& dir) {
  fs::create_directories(dir);
  data::RawDataset ds;
  ds.name = "guarantee";
  for (int k = 0; k < 10; ++k) ds.class_names.push_back(std::to_string(k));
  const int64_t ntr = 1024, nte = 256;
  const fs::path mnist = fs::path(LOCKSTEP_SHARED_DATASETS) / "mnist";
  auto take = [](data::RawSplit& s, const data::IdxArray& x, const data::IdxArray& y, int64_t n) {
    s.n = n, s.h = 28, s.w = 28, s.c = 1;
    s.x.assign(x.data.begin(), x.data.begin() + n * 784);
    s.y.assign(y.data.begin(), y.data.begin() + n);
  };
  if (!std::getenv("LOCKSTEP_TEST_GENERATED_DATA") && fs::exists(mnist / "train-images-idx3-ubyte.gz")) {
    take(ds.train, data::read_idx((mnist / "train-images-idx3-ubyte.gz").string(), 3),
         data::read_idx((mnist / "train-labels-idx1-ubyte.gz").string(), 1), ntr);
    take(ds.test, data::read_idx((mnist / "t10k-images-idx3-ubyte.gz").string(), 3),
         data::read_idx((mnist / "t10k-labels-idx1-ubyte.gz").string(), 1), nte);
    ds.source = "the first images of " + mnist.string();
    std::cout << "test data: the first " << ntr << "/" << nte << " MNIST images of " << mnist << "\n";
  } else {
    std::mt19937 rng(5);
    for (auto [s, n] : {std::pair{&ds.train, ntr}, std::pair{&ds.test, nte}}) {
      s->n = n, s->h = 28, s->w = 28, s->c = 1;
      s->x.resize(size_t(n) * 784);
      s->y.resize(size_t(n));
      for (int64_t i = 0; i < n; ++i) {
        const int label = int(rng() % 10);
        s->y[size_t(i)] = label;
        for (int j = 0; j < 784; ++j)
          s->x[size_t(i * 784 + j)] = uint8_t(((j * (label + 3)) % 97 < 40 ? 160 : 20) + rng() % 60);
      }
    }
    ds.source = "generated";
    std::cout << "test data: " << mnist << " not found; using generated 28x28 images (10 classes)\n";
  }
  data::write_dataset_file(ds, dir + "/train.h5", 0);

  // 32x32x3 images: a class colour, a class-dependent diagonal stripe pattern, noise.
  data::RawDataset cifar;
  cifar.name = "guarantee-cifar";
  cifar.class_names = ds.class_names;
  cifar.source = "generated";
  std::mt19937 rng(9);
  for (auto [s, n] : {std::pair{&cifar.train, int64_t{512}}, std::pair{&cifar.test, int64_t{128}}}) {
    s->n = n, s->h = 32, s->w = 32, s->c = 3;
    s->x.resize(size_t(n) * 3072);
    s->y.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) {
      const int label = int(rng() % 10);
      s->y[size_t(i)] = label;
      for (int p = 0; p < 1024; ++p) {
        const bool stripe = ((p / 32) + (label % 2 ? p % 32 : 31 - p % 32)) % (label / 2 + 3) == 0;
        for (int ch = 0; ch < 3; ++ch)
          s->x[size_t(i * 3072 + p * 3 + ch)] = uint8_t((stripe ? 150 : 30) + 25 * ((label + ch) % 3) + rng() % 50);
      }
    }
  }
  data::write_dataset_file(cifar, dir + "/cifar.h5", 0);
  std::cout << "test data: generated 32x32x3 images (10 classes) in " << dir << "/cifar.h5\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // LOCKSTEP_TEST_DATA_DIR / LOCKSTEP_TEST_GENERATED_DATA=1: another data folder / generated images even
  // when ../shared/datasets exists (to check the suite as CI without the real files runs it).
  const std::string data_dir = std::getenv("LOCKSTEP_TEST_DATA_DIR") ? std::getenv("LOCKSTEP_TEST_DATA_DIR") : LOCKSTEP_TEST_DATA_DIR;
  if (argc == 3 && std::string(argv[1]) == "--make-data") return make_data(argv[2]);
  g_data = data_dir + "/train.h5";
  g_cifar = data_dir + "/cifar.h5";
  if (!fs::exists(g_data) || !fs::exists(g_cifar)) make_data(data_dir);  // run outside CTest's fixture
  // FINDINGS.md §1a: the environment every mpirun of the suite needs (root, oversubscription, no CMA).
  for (const char* kv : {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1", "OMPI_MCA_rmaps_base_oversubscribe=1",
                         "OMPI_MCA_btl=self,vader,tcp", "OMPI_MCA_btl_vader_single_copy_mechanism=none",
                         "OMPI_MCA_mpi_yield_when_idle=1", "OMPI_MCA_hwloc_base_binding_policy=none",
                         "OMPI_MCA_odls_base_sigkill_timeout=0", "OMP_WAIT_POLICY=PASSIVE"}) {
    std::string s = kv;
    setenv(s.substr(0, s.find('=')).c_str(), s.substr(s.find('=') + 1).c_str(), 0);
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
