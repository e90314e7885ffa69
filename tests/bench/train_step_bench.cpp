// Samples/s of one full training step (forward, loss, backward, SGD update) of the chapter's models,
// timed inside the process: warm-up, then the median of several windows. Prints one key=value line per
// configuration, like the PyTorch peer (../shared/bench/peers/torch_mlp.py), so run_train_bench.sh can
// put them side by side. The model definitions match ../shared/bench/peers/mlp_models.py.
//
//   train_step_bench --model a --batch-size 32 --threads 1 [--reps 5 --window-sec 0.3]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/losses.h"
#include "core/model.h"
#include "core/ops.h"

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
}  // namespace

int main(int argc, char** argv) {
  ops::ensure_passive_openmp(argv);
  std::string model = "a";
  int batch = 32, threads = 1, reps = 5;
  double window = 0.3;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") model = v;
    else if (k == "--batch-size") batch = std::atoi(v.c_str());
    else if (k == "--threads") threads = std::atoi(v.c_str());
    else if (k == "--reps") reps = std::atoi(v.c_str());
    else if (k == "--window-sec") window = std::atof(v.c_str());
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (model != "a" && model != "b" && model != "c" && model != "d") {
    std::fprintf(stderr, "model must be a, b, c or d (e needs Nadam: see the trainer benchmark)\n");
    return 2;
  }
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
  ctx.global_batch = batch;
  const double lr = 1e-3;
  int64_t pos = 0;
  auto step = [&]() {
    if (pos + batch > n) pos = 0;
    Tensor x = data.slice_rows(pos, pos + batch), y = y_all.slice_rows(pos, pos + batch);
    pos += batch;
    Tensor out = m->forward(x, ctx);
    loss.compute(out, y, per_sample, dout, 1.0 / batch);
    m->backward(dout, ctx);
    for (const WeightRef& r : m->trainable_weights()) ops::sgd_update(r.weight->value, r.weight->grad, lr);
    ++ctx.step;
  };
  // warm-up: at least 10 steps and 0.3 s
  double t0 = now();
  for (int i = 0; i < 10 || now() - t0 < 0.3; ++i) step();
  std::vector<double> rates;
  for (int r = 0; r < reps; ++r) {
    double start = now();
    int64_t steps = 0;
    while (steps < 5 || now() - start < window) {
      step();
      ++steps;
    }
    rates.push_back(double(steps * batch) / (now() - start));
  }
  std::sort(rates.begin(), rates.end());
  std::printf("impl=lockstep model=%s batch=%d threads=%d samples_per_sec=%.0f min=%.0f max=%.0f step_ms=%.4f\n",
              model.c_str(), batch, threads, rates[rates.size() / 2], rates.front(), rates.back(),
              1e3 * batch / rates[rates.size() / 2]);
  return 0;
}
