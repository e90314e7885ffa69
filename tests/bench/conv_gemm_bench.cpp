// The matrix products of the convolutional networks' training step, timed three ways on one thread:
//   gemm      kernels::gemm, the router core/kernels/conv_cpu.cpp calls (libxsmm when the weight-sized
//             operand has <= 1M elements and, for a weight gradient, the depth is <= 512 rows; else OpenBLAS);
//   openblas  cblas_sgemm directly;
//   xsmm      libxsmm directly, as kernels::gemm calls it (a transposed B is transposed into a scratch first
//             with libxsmm_otrans; a transposed A is libxsmm's TRANS_B flag of the column-major product),
//             whatever the size: what libxsmm would give where the router sends the product to OpenBLAS.
// The shapes are read from the run files (launch/configs/fashion_mnist_cnn.yaml, cifar10_resnet20.yaml) and
// lowered as conv_cpu.cpp lowers them: im2col over blocks of samples of about 4 MiB of columns, so a layer of
// k = k_h·k_w·in_c taps and P = out_h·out_w pixels takes per block of nb samples
//   fwd   Y[nb·P, OC]  = col[nb·P, k] · W[k, OC]            (gemm NN)
//   bwd_data   col[nb·P, k] = dY[nb·P, OC] · W[k, OC]ᵀ       (gemm NT; then col2im), not for the first layer
//   bwd_filter dW[k, OC] += col[nb·P, k]ᵀ · dY[nb·P, OC]     (gemm TN)
// and a Dense layer [B, in] x [in, out] the same three. Each shape is timed in interleaved repetitions (one of
// each way, then the next repetition), each repetition >= --min-ms and >= 3 calls; figures are medians of the
// per-call thread CPU time (on a shared machine it excludes time-slicing; wall time is printed too).
// One key=value line per shape, then per model and batch the step's product time by route:
//
//   conv_gemm_bench [--models cnn,resnet20] [--batches 32,128] [--reps 5] [--min-ms 20]
#include <cblas.h>
#include <libxsmm.h>
#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "tests/bench/bench_clock.h"
#include "tests/bench/bench_util.h"
#include "core/kernels/cpu.h"
#include "core/model.h"
#include "core/ops.h"

#ifndef LOCKSTEP_SOURCE_DIR
#define LOCKSTEP_SOURCE_DIR "."
#endif

using namespace lockstep;
using bench::cpu_now;
using bench::median;
using bench::wall_now;

namespace {
constexpr int64_t kColumnBytes = int64_t(4) << 20;  // conv_cpu.cpp's column block
constexpr int64_t kXsmmMaxOperand = int64_t(1) << 20, kXsmmMaxDepth = 512;  // cpu.cpp's routing


struct Shape3 {
  std::string layer, op;
  bool ta = false, tb = false;
  int64_t m = 0, n = 0, k = 0, calls = 1;  // calls: how many times a step takes this product
};

// The route kernels::gemm takes (cpu.cpp's test, 1 thread, alpha 1, beta 0 or 1).
const char* route(const Shape3& s) {
  const bool big = s.ta ? (s.m * s.n > kXsmmMaxOperand || s.k > kXsmmMaxDepth) : s.k * s.n > kXsmmMaxOperand;
  return big ? "openblas" : "xsmm";
}

bool xsmm_direct(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                 int64_t ldb, float* c, int64_t ldc, std::vector<float>& wt) {
  const float alpha = 1.0f, beta = 0.0f;
  if (tb) {
    if (wt.size() < size_t(k * n)) wt.resize(size_t(k * n));
    libxsmm_otrans(wt.data(), b, sizeof(float), libxsmm_blasint(k), libxsmm_blasint(n), libxsmm_blasint(ldb),
                   libxsmm_blasint(n));
    b = wt.data();
    ldb = n;
  }
  const libxsmm_blasint M = n, N = m, K = k, la = ldb, lb = lda, lc = ldc;
  const int flags = ta ? LIBXSMM_GEMM_FLAG_TRANS_B : LIBXSMM_GEMM_FLAG_NONE;
  const int prefetch = LIBXSMM_PREFETCH_NONE;
  const libxsmm_smmfunction f = libxsmm_smmdispatch(M, N, K, &la, &lb, &lc, &alpha, &beta, &flags, &prefetch);
  if (!f) return false;
  f(b, a, c);
  return true;
}

// The products of one model's training step at batch B.
std::vector<Shape3> step_products(const Model& m, int64_t B) {
  std::vector<Shape3> out;
  const auto& calls = m.calls();
  const std::vector<char> computes_dx = bench::computes_input_gradient(m);
  for (size_t c = 0; c < calls.size(); ++c) {
    const Layer& l = *m.layers()[size_t(calls[c].layer)];
    const bool dx = computes_dx[c] != 0;
    if (l.key() == "dense") {
      const int64_t I = l.weights()[0].shape[0], O = l.weights()[0].shape[1];
      out.push_back({l.name(), "fwd", false, false, B, O, I});
      if (dx) out.push_back({l.name(), "bwd_data", false, true, B, I, O});
      out.push_back({l.name(), "bwd_filter", true, false, I, O, B});
      continue;
    }
    if (l.key() != "conv2d") continue;
    const auto& ks = l.weights()[0].shape;  // [kh, kw, in_c/groups, OC]
    const int64_t kh = ks[0], kw = ks[1], cin = ks[2], OC = ks[3];
    if (l.input_shape()[2] != cin) {
      std::fprintf(stderr, "%s: grouped convolution, skipped\n", l.name().c_str());
      continue;
    }
    const int64_t P = l.output_shape()[0] * l.output_shape()[1], K = kh * kw * cin;
    const bool pointwise = kh == 1 && kw == 1 && l.output_shape()[0] == l.input_shape()[0] &&
                           l.output_shape()[1] == l.input_shape()[1];
    if (pointwise) {
      out.push_back({l.name(), "fwd", false, false, B * P, OC, cin});
      if (dx) out.push_back({l.name(), "bwd_data", false, true, B * P, cin, OC});
      out.push_back({l.name(), "bwd_filter", true, false, cin, OC, B * P});
      continue;
    }
    const int64_t nb = std::clamp<int64_t>(kColumnBytes / std::max<int64_t>(P * K * 4, 1), 1, B);
    std::vector<std::pair<int64_t, int64_t>> blocks{{nb, B / nb}};  // (samples, count)
    if (B % nb) blocks.push_back({B % nb, 1});
    for (auto [s, cnt] : blocks) {
      const int64_t rows = s * P;
      out.push_back({l.name(), "fwd", false, false, rows, OC, K, cnt});
      if (dx) out.push_back({l.name(), "bwd_data", false, true, rows, K, OC, cnt});
      out.push_back({l.name(), "bwd_filter", true, false, K, OC, rows, cnt});
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  ops::ensure_passive_openmp(argv);
  std::string models = "cnn,resnet20", batches = "32,128";
  int reps = 5;
  double min_ms = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--models") models = v;
    else if (k == "--batches") batches = v;
    else if (k == "--reps") reps = std::max(1, std::atoi(v.c_str()));
    else if (k == "--min-ms") min_ms = std::atof(v.c_str());
    else {
      std::fprintf(stderr, "unknown option %s\n", k.c_str());
      return 2;
    }
  }
  ops::set_num_threads(1);
  openblas_set_num_threads(1);
  libxsmm_init();
  std::vector<float> wt;
  for (const std::string& name : bench::split_commas(models)) {
    const std::string path = std::string(LOCKSTEP_SOURCE_DIR "/launch/configs/") +
                             (name == "cnn" ? "fashion_mnist_cnn.yaml" : "cifar10_resnet20.yaml");
    ConfigNode run = load_config_file(path);
    std::unique_ptr<Model> model = Model::from_config(run["model"]);
    for (const std::string& bs : bench::split_commas(batches)) {
      const int64_t B = std::atoll(bs.c_str());
      std::map<std::string, std::map<std::string, double>> total;  // op -> way -> us per step
      for (const Shape3& s : step_products(*model, B)) {
        const int64_t lda = s.ta ? s.m : s.k, ldb = s.tb ? s.k : s.n, ldc = s.n;
        std::vector<float> a(size_t(s.m * s.k)), b(size_t(s.k * s.n)), c(size_t(s.m * s.n));
        for (size_t i = 0; i < a.size(); ++i) a[i] = float((i * 7919) % 1000) * 1e-3f - 0.5f;
        for (size_t i = 0; i < b.size(); ++i) b[i] = float((i * 104729) % 1000) * 1e-3f - 0.5f;
        bool xsmm_ok = true;
        auto call = [&](int way) {
          if (way == 0)
            kernels::gemm(kernels::Cpu{}, s.ta, s.tb, s.m, s.n, s.k, 1.0f, a.data(), lda, b.data(), ldb, 0.0f,
                          c.data(), ldc);
          else if (way == 1)
            cblas_sgemm(CblasRowMajor, s.ta ? CblasTrans : CblasNoTrans, s.tb ? CblasTrans : CblasNoTrans, int(s.m),
                        int(s.n), int(s.k), 1.0f, a.data(), int(lda), b.data(), int(ldb), 0.0f, c.data(), int(ldc));
          else if (xsmm_ok)
            xsmm_ok = xsmm_direct(s.ta, s.tb, s.m, s.n, s.k, a.data(), lda, b.data(), ldb, c.data(), ldc, wt);
        };
        std::vector<double> cpu[3], wall[3];
        for (int w = 0; w < 3; ++w) call(w), call(w);  // warm-up (and libxsmm's JIT)
        for (int r = 0; r < reps; ++r)
          for (int w = 0; w < 3; ++w) {
            if (w == 2 && !xsmm_ok) continue;
            const double c0 = cpu_now(), w0 = wall_now();
            int n = 0;
            do call(w), ++n;
            while (n < 3 || wall_now() - w0 < min_ms * 1e-3);
            cpu[w].push_back((cpu_now() - c0) / n * 1e6);
            wall[w].push_back((wall_now() - w0) / n * 1e6);
          }
        const double g = median(cpu[0]), o = median(cpu[1]), x = xsmm_ok ? median(cpu[2]) : NAN;
        const double flop = 2.0 * double(s.m) * double(s.n) * double(s.k);
        const char* best = !std::isnan(x) && x < o ? "xsmm" : "openblas";
        std::printf("model=%s batch=%lld layer=%s op=%s ta=%d tb=%d m=%lld n=%lld k=%lld calls=%lld route=%s "
                    "gemm_us=%.1f openblas_us=%.1f xsmm_us=%.1f gemm_wall_us=%.1f openblas_wall_us=%.1f "
                    "xsmm_wall_us=%.1f gemm_gflops=%.1f openblas_gflops=%.1f xsmm_gflops=%.1f faster=%s "
                    "openblas_vs_route=%.3f\n",
                    name.c_str(), (long long)B, s.layer.c_str(), s.op.c_str(), int(s.ta), int(s.tb), (long long)s.m,
                    (long long)s.n, (long long)s.k, (long long)s.calls, route(s), g, o, x, median(wall[0]),
                    median(wall[1]), xsmm_ok ? median(wall[2]) : NAN, flop / g * 1e-3, flop / o * 1e-3,
                    flop / x * 1e-3, best, g / o);
        std::fflush(stdout);
        auto& t = total[s.op];
        t["gemm"] += g * double(s.calls);
        t["openblas"] += o * double(s.calls);
        t["best"] += std::min(o, std::isnan(x) ? o : x) * double(s.calls);
        t["flop"] += flop * double(s.calls);
      }
      double all_g = 0, all_o = 0, all_b = 0, all_f = 0;
      for (auto& [op, t] : total) {
        std::printf("total model=%s batch=%lld op=%s gemm_ms=%.2f openblas_ms=%.2f best_ms=%.2f gemm_gflops=%.1f "
                    "openblas_gflops=%.1f\n",
                    name.c_str(), (long long)B, op.c_str(), t["gemm"] * 1e-3, t["openblas"] * 1e-3, t["best"] * 1e-3,
                    t["flop"] / t["gemm"] * 1e-3, t["flop"] / t["openblas"] * 1e-3);
        all_g += t["gemm"], all_o += t["openblas"], all_b += t["best"], all_f += t["flop"];
      }
      std::printf("total model=%s batch=%lld op=all gemm_ms=%.2f openblas_ms=%.2f best_ms=%.2f gemm_gflops=%.1f "
                  "openblas_gflops=%.1f\n",
                  name.c_str(), (long long)B, all_g * 1e-3, all_o * 1e-3, all_b * 1e-3, all_f / all_g * 1e-3,
                  all_f / all_o * 1e-3);
      std::fflush(stdout);
    }
  }
  return 0;
}
