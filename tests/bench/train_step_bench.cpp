// Samples/s of one full training step (forward, loss, backward, optimizer update) of the chapter's models,
// timed inside the process: warm-up, then the median of several windows. Prints one key=value line per
// configuration, like the PyTorch peer (../shared/bench/peers/torch_mlp.py), so run_train_bench.sh can
// put them side by side. The model definitions match ../shared/bench/peers/mlp_models.py.
//
//   train_step_bench --model a --batch-size 32 --threads 1 [--reps 5 --window-sec 0.3]
//
// Under mpirun (N ranks) --batch-size is the GLOBAL batch: each rank takes batch/N samples and the step
// is the trainer's (core/update_step.h): sync BN over the communicator, gradients all-reduced in
// buckets launched from the backward pass, then the update. Rank 0 prints global samples/s and the
// share of the step spent blocked waiting for the all-reduces (comm_wait_pct).
//   mpirun -np 2 train_step_bench --model a --batch-size 256 --threads 1
#include <algorithm>
#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/losses.h"
#include "core/model.h"
#include "comm/communicator.h"
#include "comm/gradient_bucketer.h"
#include "core/ops.h"
#include "core/optimizers.h"
#include "core/update_step.h"

using namespace lockstep;

namespace {
std::string model_yaml(const std::string& m) {
  auto dense = [](int units, const char* act, const char* init, bool bias = true) {
    return std::string("    - dense: {units: ") + std::to_string(units) + ", activation: " + act +
           ", kernel_initializer: " + init + (bias ? "" : ", use_bias: false") + "}\n";
  };
  std::string y;
  if (m == "a" || m == "b") {
    y = "input_shape: [784]\nlayers:\n";
    if (m == "b") y += "    - batch_normalization: {}\n";
    y += dense(300, "relu", "he_normal");
    if (m == "b") y += "    - batch_normalization: {}\n";
    y += dense(100, "relu", "he_normal");
    if (m == "b") y += "    - batch_normalization: {}\n";
    y += dense(10, "softmax", "he_normal");
  } else if (m == "c") {
    y = "input_shape: [784]\nlayers:\n" + dense(300, "selu", "lecun_normal");
    for (int i = 0; i < 99; ++i) y += dense(100, "selu", "lecun_normal");
    y += dense(10, "softmax", "lecun_normal");
  } else {  // d, e: CIFAR-10 20x100 ELU
    y = "input_shape: [3072]\nlayers:\n";
    if (m == "e") y += "    - batch_normalization: {}\n";
    for (int i = 0; i < 20; ++i) {
      if (m == "e") {
        y += dense(100, "linear", "he_normal");
        y += "    - batch_normalization: {}\n    - activation: {activation: elu}\n";
      } else {
        y += dense(100, "elu", "he_normal");
      }
    }
    y += dense(10, "softmax", "he_normal");
  }
  return y;
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
// CPU seconds of the whole process. On a shared machine (time-sliced with other work) samples per
// CPU-second of a 1-thread run approximate the rate on a quiet core; wall-clock rates are the figures.
double cpu_now() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}
}  // namespace

int main(int argc, char** argv) {
  ops::ensure_passive_openmp(argv);
  std::string model = "a";
  int batch = 32, threads = 1, reps = 5;
  double window = 0.3;
  comm::BucketOptions bucket_opts;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") model = v;
    else if (k == "--batch-size") batch = std::atoi(v.c_str());
    else if (k == "--threads") threads = std::atoi(v.c_str());
    else if (k == "--reps") reps = std::atoi(v.c_str());
    else if (k == "--window-sec") window = std::atof(v.c_str());
    else if (k == "--bucket-mb") bucket_opts.bucket_cap_bytes = int64_t(std::atof(v.c_str()) * (1 << 20));
    else if (k == "--first-bucket-mb") bucket_opts.first_bucket_bytes = int64_t(std::atof(v.c_str()) * (1 << 20));
    else if (k == "--one-in-flight") bucket_opts.one_in_flight = std::atoi(v.c_str()) != 0;
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (model != "a" && model != "b" && model != "c" && model != "d" && model != "e") {
    std::fprintf(stderr, "model must be a, b, c, d or e\n");
    return 2;
  }
  auto comm = comm::make_communicator();
  const int world = comm->size();
  if (batch % world != 0) {
    std::fprintf(stderr, "the global batch %d must be divisible by the %d ranks\n", batch, world);
    return 2;
  }
  const int global_batch = batch;
  batch /= world;
  ops::set_num_threads(threads);
  auto m = Model::from_config(load_config_string(model_yaml(model), "bench-model"));
  m->init(0);
  LossSpec spec;  // sparse_categorical_crossentropy
  LossFunction loss(spec, fusable_output(spec, m->output_activation()));
  m->set_fused_output(loss.fused());

  const int64_t in = m->input_shape()[0], n = 4096;
  Tensor data({n, in});
  ops::random_uniform(data, 0.0, 1.0, rng::Stream{1, 2});  // images scaled /255
  std::vector<float> labels(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) labels[size_t(i)] = float((i * 7919) % 10);
  Tensor y_all = Tensor::from_vector({n}, labels);
  Tensor per_sample({batch}), dout({batch, 10});
  Context ctx;
  ctx.training = true;
  ctx.global_batch = global_batch;
  if (world > 1) ctx.all_reduce_sum = [&](const Tensor& t) { comm->all_reduce(t); };
  // The peers' optimizers (mlp_models.py): SGD lr 1e-3 for a-c, Nadam lr 5e-5 (d) / 5e-4 (e).
  const char* opt_yaml = model == "d" ? "{name: nadam, learning_rate: 5.0e-5}"
                         : model == "e" ? "{name: nadam, learning_rate: 5.0e-4}"
                                        : "{name: sgd, learning_rate: 1.0e-3}";
  auto opt = Optimizer::from_config(load_config_string(opt_yaml, "bench-optimizer"));
  opt->bind(*m);
  // The trainer's backward, all-reduce and update (core/update_step.h).
  UpdateStep update(*m, *comm, bucket_opts);
  int64_t pos = int64_t(comm->rank()) * batch;
  auto step = [&]() {
    if (pos + batch > n) pos = int64_t(comm->rank()) * batch;
    Tensor x = data.slice_rows(pos, pos + batch), y = y_all.slice_rows(pos, pos + batch);
    pos += int64_t(batch) * world;
    Tensor out = m->forward(x, ctx);
    loss.compute(out, y, per_sample, dout, 1.0 / global_batch);
    update.run(dout, ctx, *opt);
    ++ctx.step;
  };
  // warm-up: at least 10 steps and 0.3 s
  double t0 = now();
  for (int i = 0;; ++i) {
    step();
    int64_t more = i < 10 || now() - t0 < 0.3;
    if (world > 1) comm->all_reduce(std::span<int64_t>(&more, 1), comm::ReduceOp::Min);
    if (!more) break;
  }
  std::vector<double> rates, cpu_rates;
  double total_s = 0.0;
  const double wait0 = update.comm_wait_seconds();
  for (int r = 0; r < reps; ++r) {
    // Every rank runs the same number of steps: rank 0 decides from its clock.
    double start = now(), cpu_start = cpu_now();
    int64_t steps = 0;
    for (;;) {
      step();
      ++steps;
      int64_t more = steps < 5 || now() - start < window;
      if (world > 1) comm->all_reduce(std::span<int64_t>(&more, 1), comm::ReduceOp::Min);
      if (!more) break;
    }
    const double dt = now() - start;
    total_s += dt;
    rates.push_back(double(steps * global_batch) / dt);
    cpu_rates.push_back(double(steps * batch) / (cpu_now() - cpu_start) * threads);
  }
  std::sort(rates.begin(), rates.end());
  std::sort(cpu_rates.begin(), cpu_rates.end());
  if (comm->rank() == 0)
    std::printf("impl=lockstep model=%s batch=%d ranks=%d threads=%d samples_per_sec=%.0f min=%.0f max=%.0f step_ms=%.4f "
                "comm_wait_pct=%.1f cpu_samples_per_sec=%.0f\n",
                model.c_str(), global_batch, world, threads, rates[rates.size() / 2], rates.front(), rates.back(),
                1e3 * global_batch / rates[rates.size() / 2], 100.0 * (update.comm_wait_seconds() - wait0) / std::max(total_s, 1e-9),
                cpu_rates[cpu_rates.size() / 2]);
  return 0;
}
