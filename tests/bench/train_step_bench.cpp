// Samples/s of one full training step (forward, loss, backward, optimizer update) of the chapter's models,
// timed inside the process: warm-up, then the median of several windows. Prints one key=value line per
// configuration, like the PyTorch peer (../shared/bench/peers/torch_mlp.py), so run_train_bench.sh can
// put them side by side. The model definitions match ../shared/bench/peers/mlp_models.py.
//
//   train_step_bench --model a --batch-size 32 --threads 1 [--reps 5 --window-sec 0.3]
//
// Forms of the same layers (--form, or --graph 1 for functional):
//   sequential  the `input_shape:` + `layers:` run file (default): Model's chain paths.
//   functional  Keras's Functional form, explicit `inputs:` and `outputs:`; its calls form a chain, so
//               Model takes the chain paths too (row path=chain).
//   graph       the functional form with the input listed as a second output: the same calls and flops
//               (an output that is an input costs nothing, and no gradient flows to it), but not a
//               chain, so the step runs Model's general graph forward and Model::graph_backward
//               (row path=graph). `--model a_graph` is `--model a --form graph`, `a_func` is functional.
//   pairs       (--model pairs) the comparison network of launch/configs/pretraining_pairs.yaml (HML2
//               ch. 11 ex. 10: two towers of Flatten + 5 Dense(100, elu), concatenate, Dense(10, elu),
//               Dense(1, sigmoid)), read from that file with its loss and optimizer (--config PATH).
// Convolutional networks, each read from its run file with the file's loss and optimizer (run_cnn_bench.sh
// times them beside tests/bench/torch_cnn.py, which uses the same optimizers):
//   cnn         (--model cnn) HML2 ch. 14's Fashion-MNIST CNN, launch/configs/fashion_mnist_cnn.yaml: 1,413,834
//               parameters, input [28, 28, 1], Nadam (Keras defaults).
//   resnet20    (--model resnet20) ResNet-20, launch/configs/cifar10_resnet20.yaml: 274,442 parameters, a
//               Functional graph with `add`, input [32, 32, 3], SGD lr 0.1 momentum 0.9 (the schedule is left
//               out: a constant rate costs the same), l2(1e-4) on the kernels.
//   --config PATH replaces the run file of a run-file model (pairs, cnn, resnet20; one of them per process).
// Every row carries the step's product FLOPs per sample, counted from the layers (train_flops_per_sample):
// 2 x the multiply-adds of each Conv2D (out_h·out_w·kernel elements) and Dense (kernel elements), times 3
// for forward, input gradient and kernel gradient, times 2 for a layer with no trainable weight below it
// (its input gradient is never computed: the first layer). gflops = that x samples/s.
// --warmup-steps N (default 11, as before) and --min-steps N (steps per window, default 5) shorten the slow models' runs.
// A comma-separated --model (e.g. a,a_func,a_graph) builds every model in one process and interleaves
// their timed windows (window r of each model, then window r+1 of each, ...): machine noise then hits
// all of them alike, and each row's vs_first is the median over windows of its rate / the first model's
// rate in the same round.
//
// --conv-routes own,auto (ops::ConvRoute: auto, direct, own, onednn, winograd) builds each model once per route and interleaves
// their windows the same way, setting the route before each of its steps: an A/B of the convolution kernels
// (LOCKSTEP_CONV sets the route of a process without it). Every row says its route (conv=).
//
// Under mpirun (N ranks) --batch-size is the GLOBAL batch: each rank takes batch/N samples and the step
// is the trainer's (core/update_step.h): sync BN over the communicator, gradients all-reduced in
// buckets launched from the backward pass, then the update. Rank 0 prints global samples/s and the
// share of the step spent blocked waiting for the all-reduces (comm_wait_pct: the gradient buckets';
// sync_bn_pct: the time inside synchronized BN's all-reduces of the batch statistics and their gradient
// sums, which block until every rank has reached them, waits included; blocked_pct_by_rank: both together on
// each rank).
//   mpirun -np 2 train_step_bench --model a --batch-size 256 --threads 1
// --vs-one-rank 1 (under mpirun) also times one rank alone in the same process group: every rank builds each
// model a second time with a one-process communicator at the GLOBAL batch, and every round, after the N
// ranks' window, one rank (rank r % N in round r, so the lone windows visit every rank's core) runs that
// model's window on its own while the other ranks wait asleep (a barrier whose wait sleeps after 1 ms).
// Rows then carry one_rank_sps (median of the lone windows), one_rank_sps_by_rank (the median of each rank's)
// and vs_one_rank (the median over rounds of the N-rank window's rate over the lone window's of the same
// round): the scaling ratio with the machine's drift (on a shared VM as large as the gap being measured)
// cancelled pairwise. Rotating the lone rank matters where cores run at different speeds (this 2-vCPU VM's
// second vCPU has run 1-5% slower than its first for minutes at a time): the N ranks are paced by the slowest
// core, and one rank is timed on each core in turn rather than always on rank 0's.
#include <algorithm>
#include <time.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "core/losses.h"
#include "core/model.h"
#include "comm/communicator.h"
#include "comm/gradient_bucketer.h"
#include "comm/local_communicator.h"
#include "comm/mpi_communicator.h"
#include "core/ops.h"
#include "core/optimizers.h"
#include "core/update_step.h"
#include "tests/bench/bench_util.h"

#ifndef LOCKSTEP_SOURCE_DIR
#define LOCKSTEP_SOURCE_DIR "."
#endif

using namespace lockstep;

namespace {
// The layers of models a-e, one `- kind: {...}` entry per line (indent 4).
std::vector<std::string> model_layers(const std::string& m) {
  auto dense = [](int units, const char* act, const char* init) {
    return std::string("dense: {units: ") + std::to_string(units) + ", activation: " + act +
           ", kernel_initializer: " + init + "}";
  };
  const std::string bn = "batch_normalization: {}";
  std::vector<std::string> l;
  if (m == "a" || m == "b") {
    if (m == "b") l.push_back(bn);
    l.push_back(dense(300, "relu", "he_normal"));
    if (m == "b") l.push_back(bn);
    l.push_back(dense(100, "relu", "he_normal"));
    if (m == "b") l.push_back(bn);
    l.push_back(dense(10, "softmax", "he_normal"));
  } else if (m == "c") {
    l.push_back(dense(300, "selu", "lecun_normal"));
    for (int i = 0; i < 99; ++i) l.push_back(dense(100, "selu", "lecun_normal"));
    l.push_back(dense(10, "softmax", "lecun_normal"));
  } else {  // d, e: CIFAR-10 20x100 ELU
    if (m == "e") l.push_back(bn);
    for (int i = 0; i < 20; ++i) {
      if (m == "e") {
        l.push_back(dense(100, "linear", "he_normal"));
        l.push_back(bn);
        l.push_back("activation: {activation: elu}");
      } else {
        l.push_back(dense(100, "elu", "he_normal"));
      }
    }
    l.push_back(dense(10, "softmax", "he_normal"));
  }
  return l;
}

// Model m (a-e) as a run file's `model:` section in the given form.
std::string model_yaml(const std::string& m, const std::string& form) {
  const std::string in = m == "a" || m == "b" || m == "c" ? "784" : "3072";
  std::vector<std::string> layers = model_layers(m);
  std::string y;
  if (form == "sequential") {
    y = "input_shape: [" + in + "]\nlayers:\n";
    for (const std::string& l : layers) y += "    - " + l + "\n";
    return y;
  }
  // Functional: the last layer named `head` so `outputs:` can name it (the others keep Keras's names).
  std::string& last = layers.back();
  last.insert(last.find('{') + 1, "name: head, ");
  y = "name: " + m + "_" + form + "\ninputs:\n    - input: {name: x, shape: [" + in + "]}\nlayers:\n";
  for (size_t i = 0; i < layers.size(); ++i) y += "    - " + layers[i] + (i == 0 ? "\n      inputs: x\n" : "\n");
  y += form == "graph" ? "outputs: [head, x]\n" : "outputs: head\n";
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

// "312,298,305": rates rounded, comma-separated.
std::string joined(const std::vector<double>& v) {
  std::string s;
  for (double x : v) s += (s.empty() ? "" : ",") + std::to_string(std::lround(x));
  return s;
}

// Whether Model takes its chain paths (the same test as Model::build: one input, one output, every call
// reading the one before).
bool takes_chain_path(const Model& m) {
  if (m.num_inputs() != 1 || m.num_outputs() != 1) return false;
  const auto& calls = m.calls();
  for (size_t k = 0; k < calls.size(); ++k)
    if (calls[k].inputs != std::vector<int>{int(k)}) return false;
  return true;
}

// Forward and training-step FLOPs per sample of the model's products (the header's rule): Conv2D
// out_h·out_w·kernel elements and Dense kernel elements multiply-adds; x3 in a step, x2 for a call with
// no trainable weight upstream (Model computes no input gradient for it).
void product_flops(const Model& m, double* fwd, double* train) {
  const auto& calls = m.calls();
  const std::vector<char> computes_dx = bench::computes_input_gradient(m);
  *fwd = *train = 0.0;
  for (size_t k = 0; k < calls.size(); ++k) {
    const Layer& l = *m.layers()[size_t(calls[k].layer)];
    if (l.key() != "conv2d" && l.key() != "depthwise_conv2d" && l.key() != "dense") continue;
    double macs = 1.0;
    for (int64_t d : l.weights()[0].shape) macs *= double(d);  // the kernel
    if (l.key() != "dense") macs *= double(l.output_shape()[0] * l.output_shape()[1]);
    *fwd += 2.0 * macs;
    *train += 2.0 * macs * (computes_dx[k] ? 3.0 : 2.0);
  }
}

// One model's training step and its timing.
struct Bench {
  std::string model, form;
  ops::ConvRoute route = ops::ConvRoute::Auto;
  double fwd_flops = 0.0, train_flops = 0.0;  // per sample, products only (see the header)
  std::unique_ptr<Model> m;
  std::unique_ptr<LossFunction> loss;
  std::unique_ptr<Optimizer> opt;
  std::unique_ptr<UpdateStep> update;
  std::vector<Tensor> data;  // per model input: [n, shape...]
  Tensor y_all, per_sample, dout;
  std::vector<Tensor> xs, douts;
  Context ctx;
  int64_t n = 4096, pos = 0;
  int batch = 0, global_batch = 0, world = 1, rank = 0;
  std::vector<double> rates, cpu_rates;
  double total_s = 0.0, wait_s = 0.0, sync_bn_s = 0.0;  // timed windows only
  double sync_bn_clock = 0.0;  // seconds inside sync BN's all-reduces so far (waits included)

  void step() {
    ops::set_conv_route(route);
    if (pos + batch > n) pos = int64_t(rank) * batch;
    for (size_t i = 0; i < data.size(); ++i) xs[i] = data[i].slice_rows(pos, pos + batch);
    Tensor y = y_all.slice_rows(pos, pos + batch);
    pos += int64_t(batch) * world;
    const std::vector<Tensor>& outs = m->forward(xs, ctx);
    loss->compute(outs[0], y, per_sample, dout, 1.0 / global_batch);
    update->run(douts, ctx, *opt);
    ++ctx.step;
  }
};

std::unique_ptr<Bench> make_bench(std::string model, const std::string& form_arg, const std::string& config,
                                  int global_batch, comm::Communicator& comm, const comm::BucketOptions& bucket_opts,
                                  const comm::ReductionOptions& reduction) {
  auto b = std::make_unique<Bench>();
  std::string form = form_arg;
  if (model.size() > 2 && model.compare(1, std::string::npos, "_graph") == 0) form = "graph";
  if (model.size() > 2 && model.compare(1, std::string::npos, "_func") == 0) form = "functional";
  const bool run_file = model == "pairs" || model == "cnn" || model == "resnet20";
  if (!run_file) model = model.substr(0, 1);
  if (model != "a" && model != "b" && model != "c" && model != "d" && model != "e" && !run_file) {
    std::fprintf(stderr, "model must be a, b, c, d, e (optionally a_func / a_graph ...), pairs, cnn or resnet20\n");
    std::exit(2);
  }
  if (form != "sequential" && form != "functional" && form != "graph") {
    std::fprintf(stderr, "form must be sequential, functional or graph\n");
    std::exit(2);
  }
  b->model = model;
  b->world = comm.size();
  b->rank = comm.rank();
  b->global_batch = global_batch;
  b->batch = global_batch / b->world;
  LossSpec spec;  // sparse_categorical_crossentropy
  ConfigNode opt_node;
  if (run_file) {
    std::string path = config;
    if (path.empty())
      path = std::string(LOCKSTEP_SOURCE_DIR "/launch/configs/") +
             (model == "pairs" ? "pretraining_pairs.yaml" : model == "cnn" ? "fashion_mnist_cnn.yaml" : "cifar10_resnet20.yaml");
    ConfigNode run = load_config_file(path);
    b->form = run["model"].has("inputs") ? "functional" : "sequential";
    b->m = Model::from_config(run["model"]);
    spec = parse_loss(run["loss"]);
    opt_node = run["optimizer"];
  } else {
    b->form = form;
    b->m = Model::from_config(load_config_string(model_yaml(model, form), "bench-model"));
    // The peers' optimizers (mlp_models.py): SGD lr 1e-3 for a-c, Nadam lr 5e-5 (d) / 5e-4 (e).
    opt_node = load_config_string(model == "d"   ? "{name: nadam, learning_rate: 5.0e-5}"
                                  : model == "e" ? "{name: nadam, learning_rate: 5.0e-4}"
                                                 : "{name: sgd, learning_rate: 1.0e-3}",
                                  "bench-optimizer");
  }
  Model& m = *b->m;
  m.init(0);
  b->loss = std::make_unique<LossFunction>(spec, fusable_output(spec, m.output_activation()));
  m.set_fused_output(b->loss->fused());
  product_flops(m, &b->fwd_flops, &b->train_flops);

  const int64_t n = b->n;
  for (int i = 0; i < m.num_inputs(); ++i) {
    Shape s{n};
    for (int64_t d : m.input_shapes()[size_t(i)]) s.push_back(d);
    Tensor t(s);
    ops::random_uniform(t, 0.0, 1.0, rng::Stream{1, uint64_t(2 + i)});  // images scaled /255
    b->data.push_back(t);
  }
  b->xs.resize(b->data.size());
  const int64_t classes = m.output_shape()[0];
  std::vector<float> labels(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) labels[size_t(i)] = float((i * 7919) % (classes == 1 ? 2 : classes));
  b->y_all = Tensor::from_vector({n}, labels);
  b->per_sample = Tensor({b->batch});
  b->dout = Tensor({b->batch, classes});
  // The loss's gradient for output 0; the graph form's second output (the input) takes none.
  b->douts.assign(size_t(m.num_outputs()), Tensor());
  b->douts[0] = b->dout;
  b->ctx.training = true;
  b->ctx.global_batch = global_batch;
  if (b->world > 1)
    b->ctx.all_reduce_sum = [&comm, clock = &b->sync_bn_clock](const Tensor& t) {
      const auto t0 = std::chrono::steady_clock::now();
      comm.all_reduce(t);
      *clock += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
  b->opt = Optimizer::from_config(opt_node);
  b->opt->bind(m);
  // The trainer's backward, all-reduce and update (core/update_step.h).
  b->update = std::make_unique<UpdateStep>(m, comm, bucket_opts, reduction);
  b->pos = int64_t(b->rank) * b->batch;
  return b;
}
}  // namespace

int main(int argc, char** argv) {
  ops::ensure_passive_openmp(argv);
  std::string model = "a", form = "sequential", config;  // config: the run-file model's own by default
  std::string routes;  // --conv-routes: empty = the process's route
  int batch = 32, threads = 1, reps = 5, warmup_steps = 11, min_steps = 5;
  bool vs_one_rank = false;
  double window = 0.3;
  comm::BucketOptions bucket_opts;
  comm::ReductionOptions reduction;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") model = v;
    else if (k == "--form") form = v;
    else if (k == "--graph") form = std::atoi(v.c_str()) ? "functional" : "sequential";
    else if (k == "--config") config = v;
    else if (k == "--conv-routes") routes = v;
    else if (k == "--batch-size") batch = std::atoi(v.c_str());
    else if (k == "--threads") threads = std::atoi(v.c_str());
    else if (k == "--reps") reps = std::atoi(v.c_str());
    else if (k == "--window-sec") window = std::atof(v.c_str());
    else if (k == "--warmup-steps") warmup_steps = std::atoi(v.c_str());
    else if (k == "--min-steps") min_steps = std::max(1, std::atoi(v.c_str()));
    else if (k == "--vs-one-rank") vs_one_rank = std::atoi(v.c_str()) != 0;
    else if (k == "--bucket-mb") bucket_opts.bucket_cap_bytes = int64_t(std::atof(v.c_str()) * (1 << 20));
    else if (k == "--first-bucket-mb") bucket_opts.first_bucket_bytes = int64_t(std::atof(v.c_str()) * (1 << 20));
    else if (k == "--one-in-flight") bucket_opts.one_in_flight = std::atoi(v.c_str()) != 0;
    else if (k == "--compression") reduction.compression = comm::parse_compression(v);
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  auto comm = comm::make_communicator();
  const int world = comm->size();
  if (batch % world != 0) {
    std::fprintf(stderr, "the global batch %d must be divisible by the %d ranks\n", batch, world);
    return 2;
  }
  ops::set_num_threads(threads);
  std::vector<ops::ConvRoute> route_list;
  try {
    for (const std::string& r : bench::split_commas(routes)) route_list.push_back(ops::parse_conv_route(r, "--conv-routes"));
  } catch (const UserError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
  if (route_list.empty()) route_list.push_back(ops::conv_route());
  std::vector<std::unique_ptr<Bench>> benches;
  for (const std::string& name : bench::split_commas(model))
    for (ops::ConvRoute r : route_list) {
      ops::set_conv_route(r);
      benches.push_back(make_bench(name, form, config, batch, *comm, bucket_opts, reduction));
      benches.back()->route = r;
    }
  // Each rank's lone copies (--vs-one-rank): the same models on a one-process communicator, global batch.
  comm::LocalCommunicator alone;
  std::vector<std::unique_ptr<Bench>> lone;
  if (vs_one_rank && world > 1)
    for (const auto& b : benches) {
      ops::set_conv_route(b->route);
      lone.push_back(make_bench(b->model, b->form, config, batch, alone, bucket_opts, reduction));
      lone.back()->route = b->route;
    }
  // Agree on "go on" across ranks: rank 0's clock decides, every rank runs the same number of steps.
  auto agree = [&](bool more, bool all) {
    int64_t v = more;
    if (all && world > 1) comm->all_reduce(std::span<int64_t>(&v, 1), comm::ReduceOp::Min);
    return v != 0;
  };
  auto warm_up = [&](Bench& b, bool all) {
    double t0 = now();
    for (int i = 0;; ++i) {
      b.step();
      if (!agree(i + 1 < warmup_steps || now() - t0 < 0.3, all)) break;
    }
  };
  // One timed window of b: at least min_steps steps and `window` seconds.
  auto time_window = [&](Bench& b, bool all) {
    const double start = now(), cpu_start = cpu_now(), wait_start = b.update->comm_wait_seconds();
    const double bn_start = b.sync_bn_clock;
    int64_t steps = 0;
    for (;;) {
      b.step();
      ++steps;
      if (!agree(steps < min_steps || now() - start < window, all)) break;
    }
    const double dt = now() - start;
    b.total_s += dt;
    b.wait_s += b.update->comm_wait_seconds() - wait_start;
    b.sync_bn_s += b.sync_bn_clock - bn_start;
    b.rates.push_back(double(steps * b.global_batch) / dt);
    b.cpu_rates.push_back(double(steps * b.batch) / (cpu_now() - cpu_start) * threads);
  };
  // Rank `who` runs its lone windows while the other ranks sleep in a barrier (they must not load the machine).
  auto lone_turn = [&](int who, auto&& run) {
    if (!vs_one_rank || world == 1) return;
    if (comm->rank() == who) run();
    const comm::WaitPolicy usual = comm::wait_policy();
    comm::WaitPolicy sleepy = usual;
    sleepy.spin = std::chrono::microseconds(100);
    sleepy.yield = std::chrono::microseconds(1000);
    comm::set_wait_policy(sleepy);
    comm->barrier();
    comm::set_wait_policy(usual);
  };
  for (auto& b : benches) warm_up(*b, true);
  for (int who = 0; who < world; ++who)
    lone_turn(who, [&] {
      for (auto& b : lone) warm_up(*b, false);
    });
  std::vector<std::vector<double>> ratio_to_first(benches.size()), ratio_to_lone(benches.size());
  // The lone windows' rates, on every rank (window w ran on rank w % world).
  std::vector<std::vector<double>> lone_rates(benches.size());
  for (int r = 0; r < reps; ++r) {
    for (size_t bi = 0; bi < benches.size(); ++bi) {
      // After a lone turn the other ranks' cores wake from sleep: one untimed step first (on every rank).
      if (vs_one_rank && world > 1) benches[bi]->step();
      time_window(*benches[bi], true);
      ratio_to_first[bi].push_back(benches[bi]->rates.back() / benches[0]->rates.back());
    }
    if (!vs_one_rank || world == 1) continue;
    const int who = r % world;
    lone_turn(who, [&] {
      for (auto& b : lone) time_window(*b, false);
    });
    for (size_t bi = 0; bi < lone.size(); ++bi) {
      double rate = comm->rank() == who ? lone[bi]->rates.back() : 0.0;
      comm->all_reduce(std::span<double>(&rate, 1));
      lone_rates[bi].push_back(rate);
      ratio_to_lone[bi].push_back(benches[bi]->rates.back() / rate);
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  // Each rank's share of the timed windows spent blocked in collectives (buckets and sync BN): the faster
  // rank waits for the slower one, so a lopsided pair says the ranks ran at different speeds.
  std::vector<std::vector<double>> blocked(benches.size(), std::vector<double>(size_t(world)));
  for (size_t bi = 0; bi < benches.size(); ++bi) {
    const Bench& b = *benches[bi];
    const double mine = 100.0 * (b.wait_s + b.sync_bn_s) / std::max(b.total_s, 1e-9);
    comm->all_gather(std::span<const double>(&mine, 1), std::span<double>(blocked[bi]));
  }
  if (comm->rank() == 0)
    for (size_t bi = 0; bi < benches.size(); ++bi) {
      Bench& b = *benches[bi];
      const double sps = median(b.rates);
      std::printf("impl=lockstep model=%s form=%s path=%s conv=%s onednn=%s batch=%d ranks=%d threads=%d "
                  "samples_per_sec=%.0f min=%.0f "
                  "max=%.0f step_ms=%.4f comm_wait_pct=%.1f sync_bn_pct=%.1f cpu_samples_per_sec=%.0f params=%lld "
                  "fwd_flops_per_sample=%.0f train_flops_per_sample=%.0f gflops=%.2f",
                  b.model.c_str(), b.form.c_str(), takes_chain_path(*b.m) ? "chain" : "graph", ops::conv_route_name(b.route),
                  ops::have_onednn() ? "yes" : "no", b.global_batch, world,
                  threads, sps, *std::min_element(b.rates.begin(), b.rates.end()),
                  *std::max_element(b.rates.begin(), b.rates.end()), 1e3 * b.global_batch / sps,
                  100.0 * b.wait_s / std::max(b.total_s, 1e-9), 100.0 * b.sync_bn_s / std::max(b.total_s, 1e-9),
                  median(b.cpu_rates),
                  static_cast<long long>(b.m->trainable_params()), b.fwd_flops, b.train_flops,
                  b.train_flops * sps * 1e-9);
      // Every window's rate, in order (windows of the models in one process alternate: paired in time).
      std::printf(" win_sps=%s win_cpu_sps=%s", joined(b.rates).c_str(), joined(b.cpu_rates).c_str());
      if (world > 1) {
        std::string per_rank;
        for (double v : blocked[bi]) per_rank += str_cat(per_rank.empty() ? "" : ",", std::round(v * 10) / 10);
        std::printf(" blocked_pct_by_rank=%s", per_rank.c_str());
      }
      if (!lone.empty()) {
        std::string by_rank;
        for (int k = 0; k < world; ++k) {
          std::vector<double> mine;
          for (size_t w = size_t(k); w < lone_rates[bi].size(); w += size_t(world)) mine.push_back(lone_rates[bi][w]);
          by_rank += str_cat(k ? "," : "", mine.empty() ? 0.0 : std::round(median(mine)));
        }
        std::printf(" one_rank_sps=%.0f vs_one_rank=%.4f win_one_rank_sps=%s one_rank_sps_by_rank=%s",
                    median(lone_rates[bi]), median(ratio_to_lone[bi]), joined(lone_rates[bi]).c_str(), by_rank.c_str());
      }
      if (benches.size() > 1)
        std::printf(" first=%s_%s_%s vs_first=%.4f", benches[0]->model.c_str(), benches[0]->form.c_str(),
                    ops::conv_route_name(benches[0]->route), median(ratio_to_first[bi]));
      std::printf("\n");
    }
  return 0;
}
