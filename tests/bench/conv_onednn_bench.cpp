// The convolutions of the convolutional networks' training step, timed per layer shape and op on one thread,
// five ways (issue "convolutional networks": oneDNN or our own, chosen by measurement):
//   own      lockstep's own kernels (core/kernels/conv_cpu.cpp with ops::ConvRoute::Own: the pointwise
//            product, im2col over ~4 MiB sample blocks + kernels::gemm, col2im, depthwise loops);
//   plain    oneDNN (core/kernels/conv_onednn.cpp) with the kernel in Keras's layout as it is (`hwio`);
//   blocked  oneDNN with the kernel in the layout oneDNN picks (`any`), the reorder into it (forward, backward
//            data) or out of it (backward filter) counted on every call, as a layer would pay it;
//   wino     oneDNN's Winograd algorithm (3x3, stride 1, undilated, ungrouped layers only), the reorders of
//            the kernel and of the activations into its blocked layouts and out of them counted on every call;
//   ownwino  lockstep's own Winograd kernels (core/kernels/winograd_cpu.cpp: F(4x4, 3x3), F(2x2, 3x3) or direct
//            loops by the terms per output; ownwino_algo says which), on the geometries they take (3x3, stride
//            1, undilated, ungrouped);
// and `auto`, what ops::ConvRoute::Auto runs (the per-shape rule in conv_cpu.cpp), for the record.
// Activations are NHWC in every way. The shapes are read from the run files (launch/configs/
// fashion_mnist_cnn.yaml, cifar10_resnet20.yaml): each Conv2D layer at each batch, its forward, its kernel
// gradient and (but for the first layer, whose input gradient the step never computes) its input gradient;
// layers of the same geometry are timed once and counted as many times. Each op is timed in interleaved
// windows (one window of each way, the order rotating, then the next round), each window >= --min-ms and
// >= 3 calls; figures are medians over the rounds of the per-call thread CPU time (on a shared machine it
// leaves out time-slicing; the wall-clock median is printed too). One key=value line per shape and op, then
// per model and batch the step's convolution time by way and op:
//
// --models extra times other kinds of convolution (pointwise, depthwise, grouped, dilated, valid 5x5, a
// strided 7x7 stem), one layer each, with the input gradient: not a step, a check of the rule's reach.
//
//   conv_onednn_bench [--models cnn,resnet20,extra] [--batches 32,128] [--reps 7] [--min-ms 30]
#include <time.h>

#include <algorithm>
#include <array>
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
#include "core/kernels/conv_onednn.h"
#include "core/kernels/cpu.h"
#include "core/kernels/winograd_cpu.h"
#include "core/layers.h"
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


struct ConvShape {
  std::string layers;  // the layers of this geometry, '+'-joined
  ops::Window2d g;
  bool dx = false;     // the step computes the input gradient
  int count = 0;
};

std::pair<int64_t, int64_t> pair_of(const ConfigNode& a, const char* key, int64_t def) {
  if (!a.has(key) || !a[key].defined()) return {def, def};
  if (a[key].is_seq()) {
    const std::vector<int64_t> v = a[key].as_int_list();
    return {v.at(0), v.at(1)};
  }
  return {a[key].as_int(), a[key].as_int()};
}

// The Conv2D / DepthwiseConv2D layers of one model's training step at batch B, one entry per geometry.
std::vector<ConvShape> step_convs(const Model& m, int64_t B) {
  std::vector<ConvShape> out;
  const auto& calls = m.calls();
  const std::vector<char> computes_dx = bench::computes_input_gradient(m);
  for (size_t c = 0; c < calls.size(); ++c) {
    const Layer& l = *m.layers()[size_t(calls[c].layer)];
    if (l.key() != "conv2d" && l.key() != "depthwise_conv2d") continue;
    const bool dx = computes_dx[c] != 0;
    const ConfigNode& a = l.args();
    Window2dArgs w;
    std::tie(w.k_h, w.k_w) = pair_of(a, "kernel_size", 1);
    std::tie(w.stride_h, w.stride_w) = pair_of(a, "strides", 1);
    std::tie(w.dil_h, w.dil_w) = pair_of(a, "dilation_rate", 1);
    w.same = a.get("padding", "valid") == "same";
    const Shape in = l.input_shape();
    const int64_t cin = in.size() == 3 ? in[2] : 1;
    const bool dwc = l.key() == "depthwise_conv2d";
    const int64_t groups = dwc ? cin : a.get("groups", int64_t(1));
    const int64_t oc = l.output_shape()[2];
    ops::Window2d g = window_geometry(w, in, oc, groups, l.name(), "kernel_size");
    g.batch = B;
    auto same_geom = [&](const ConvShape& s) {
      const ops::Window2d& h = s.g;
      return s.dx == dx && h.in_h == g.in_h && h.in_w == g.in_w && h.in_c == g.in_c && h.out_h == g.out_h &&
             h.out_w == g.out_w && h.out_c == g.out_c && h.k_h == g.k_h && h.k_w == g.k_w && h.stride_h == g.stride_h &&
             h.stride_w == g.stride_w && h.dil_h == g.dil_h && h.dil_w == g.dil_w && h.pad_top == g.pad_top &&
             h.pad_left == g.pad_left && h.groups == g.groups;
    };
    auto it = std::find_if(out.begin(), out.end(), same_geom);
    if (it == out.end()) out.push_back({l.name(), g, dx, 1});
    else it->layers += "+" + l.name(), ++it->count;
  }
  return out;
}

// --models extra: geometries outside the two networks, so the rule is measured on the other kinds of
// convolution too (the layers of MobileNet- and LeNet-like networks; batch from --batches).
std::vector<ConvShape> extra_convs(int64_t B) {
  struct Spec {
    const char* name;
    int64_t h, w, c, oc, k, stride, dil, groups;
    bool same;
  };
  const Spec specs[] = {
      {"pointwise_28x28x64_128", 28, 28, 64, 128, 1, 1, 1, 1, true},
      {"pointwise_14x14x256_256", 14, 14, 256, 256, 1, 1, 1, 1, true},
      {"depthwise3x3_28x28x128", 28, 28, 128, 128, 3, 1, 1, 128, true},
      {"depthwise3x3_s2_56x56x64", 56, 56, 64, 64, 3, 2, 1, 64, true},
      {"grouped3x3_g4_14x14x128", 14, 14, 128, 128, 3, 1, 1, 4, true},
      {"dilated3x3_d2_16x16x64", 16, 16, 64, 64, 3, 1, 2, 1, true},
      {"valid5x5_28x28x32_64", 28, 28, 32, 64, 5, 1, 1, 1, false},
      {"stem7x7_s2_64x64x3_64", 64, 64, 3, 64, 7, 2, 1, 1, true},
      // few input channels with the input gradient (the networks' stems have none)
      {"in1_7x7_28x28x1_64", 28, 28, 1, 64, 7, 1, 1, 1, true},
      {"in3_3x3_32x32x3_16", 32, 32, 3, 16, 3, 1, 1, 1, true},
      {"in8_3x3_32x32x8_32", 32, 32, 8, 32, 3, 1, 1, 1, true},
      {"in16_3x3_32x32x16_32", 32, 32, 16, 32, 3, 1, 1, 1, true},
      {"in8_3x3_s2_32x32x8_32", 32, 32, 8, 32, 3, 2, 1, 1, true},
      {"grouped3x3_g16_16x16x64", 16, 16, 64, 64, 3, 1, 1, 16, true},
  };
  std::vector<ConvShape> out;
  for (const Spec& s : specs) {
    Window2dArgs w;
    w.k_h = w.k_w = s.k;
    w.stride_h = w.stride_w = s.stride;
    w.dil_h = w.dil_w = s.dil;
    w.same = s.same;
    ops::Window2d g = window_geometry(w, {s.h, s.w, s.c}, s.oc, s.groups, s.name, "kernel_size");
    g.batch = B;
    out.push_back({s.name, g, true, 1});
  }
  return out;
}

std::string geom_str(const ops::Window2d& g) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "%lldx%lldx%lld->%lldx%lldx%lld_k%lldx%lld_s%lld_p%lld,%lld_g%lld", (long long)g.in_h,
                (long long)g.in_w, (long long)g.in_c, (long long)g.out_h, (long long)g.out_w, (long long)g.out_c,
                (long long)g.k_h, (long long)g.k_w, (long long)g.stride_h, (long long)g.pad_top, (long long)g.pad_left,
                (long long)g.groups);
  return buf;
}

std::vector<float> random_floats(int64_t n, uint64_t seed) {
  std::vector<float> v(size_t(std::max<int64_t>(n, 1)));
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (float& e : v) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    e = float(double(s >> 11) / double(1ull << 53)) - 0.5f;
  }
  return v;
}

const char* kOps[] = {"fwd", "bwd_data", "bwd_filter"};
const char* kWays[] = {"own", "plain", "blocked", "wino", "auto", "ownwino"};
constexpr int kNumWays = 6;
constexpr int kAuto = 4;
constexpr int kOwnWino = 5;

}  // namespace

int main(int argc, char** argv) {
  ops::ensure_passive_openmp(argv);
  std::string models = "cnn,resnet20", batches = "32,128";
  int reps = 7;
  double min_ms = 30;
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
  if (!kernels::onednn::compiled()) {
    std::fprintf(stderr, "conv_onednn_bench: this build has no oneDNN (LOCKSTEP_WITH_ONEDNN, libdnnl-dev)\n");
    return 2;
  }
  ops::set_num_threads(1);
  auto loadavg = [] {
    char buf[64] = "?";
    if (FILE* f = std::fopen("/proc/loadavg", "r")) {
      if (!std::fgets(buf, sizeof buf, f)) buf[0] = 0;
      std::fclose(f);
    }
    std::string s = buf;
    return s.substr(0, s.find(' ', s.find(' ', s.find(' ') + 1) + 1));
  };
  std::printf("start onednn=%s threads=1 reps=%d min_ms=%.0f load=\"%s\"\n", kernels::onednn::version(), reps, min_ms,
              loadavg().c_str());
  const ops::ConvRoute route_auto = ops::conv_route();
  for (const std::string& name : bench::split_commas(models)) {
    std::unique_ptr<Model> model;
    if (name != "extra") {
      const std::string path = std::string(LOCKSTEP_SOURCE_DIR "/launch/configs/") +
                               (name == "cnn" ? "fashion_mnist_cnn.yaml" : "cifar10_resnet20.yaml");
      ConfigNode run = load_config_file(path);
      model = Model::from_config(run["model"]);
    }
    for (const std::string& bs : bench::split_commas(batches)) {
      const int64_t B = std::atoll(bs.c_str());
      std::map<std::string, std::array<double, kNumWays + 1>> total;  // op -> way (+ best of own/onednn) -> us
      uint64_t seed = 1;
      for (const ConvShape& s : model ? step_convs(*model, B) : extra_convs(B)) {
        const ops::Window2d& g = s.g;
        const int64_t nx = g.batch * g.in_h * g.in_w * g.in_c, ny = g.batch * g.out_h * g.out_w * g.out_c;
        const int64_t nw = g.k_h * g.k_w * (g.in_c / g.groups) * g.out_c;
        const std::vector<float> x = random_floats(nx, ++seed), w = random_floats(nw, ++seed),
                                 dy = random_floats(ny, ++seed);
        std::vector<float> y(static_cast<size_t>(ny)), dx(static_cast<size_t>(nx)), dw(static_cast<size_t>(nw));
        const bool onednn = kernels::onednn::supports(g);
        const bool wino = onednn && g.k_h == 3 && g.k_w == 3 && g.stride_h == 1 && g.stride_w == 1 && g.dil_h == 1 &&
                          g.dil_w == 1 && g.groups == 1;
        const bool ownwino = kernels::winograd::supports(g);
        const kernels::onednn::Way dnn_way[] = {kernels::onednn::Way::Blocked, kernels::onednn::Way::Plain,
                                                kernels::onednn::Way::Blocked, kernels::onednn::Way::Winograd};
        for (int op = 0; op < 3; ++op) {
          if (op == 1 && !s.dx) continue;
          auto call = [&](int way) {
            if (way == kOwnWino) {
              if (op == 0) kernels::winograd::forward(x.data(), w.data(), g, y.data());
              else if (op == 1) kernels::winograd::backward_data(dy.data(), w.data(), g, dx.data());
              else kernels::winograd::backward_filter(x.data(), dy.data(), g, dw.data());
            } else if (way == 0 || way == kAuto) {
              ops::set_conv_route(way == 0 ? ops::ConvRoute::Own : route_auto);
              if (op == 0) kernels::conv2d_forward(kernels::Cpu{}, x.data(), w.data(), g, y.data(), false);
              else if (op == 1) kernels::conv2d_backward_data(kernels::Cpu{}, dy.data(), w.data(), g, dx.data(), false);
              else kernels::conv2d_backward_filter(kernels::Cpu{}, x.data(), dy.data(), g, dw.data(), false);
            } else if (op == 0) {
              kernels::onednn::conv2d_forward(x.data(), w.data(), g, y.data(), dnn_way[way]);
            } else if (op == 1) {
              kernels::onednn::conv2d_backward_data(dy.data(), w.data(), g, dx.data(), dnn_way[way]);
            } else {
              kernels::onednn::conv2d_backward_filter(x.data(), dy.data(), g, dw.data(), dnn_way[way]);
            }
          };
          std::vector<int> ways{0};  // own, plain, blocked, wino, auto, ownwino: those this geometry has
          if (onednn) ways.push_back(1), ways.push_back(2);
          if (wino) ways.push_back(3);
          ways.push_back(kAuto);
          if (ownwino) ways.push_back(kOwnWino);
          std::vector<double> cpu[kNumWays], wall[kNumWays];
          for (int wy : ways) call(wy), call(wy);  // warm-up: primitives, libxsmm's JIT, scratch buffers
          for (int r = 0; r < reps; ++r)
            for (size_t i = 0; i < ways.size(); ++i) {
              const int wy = ways[(i + size_t(r)) % ways.size()];
              const double c0 = cpu_now(), w0 = wall_now();
              int n = 0;
              do call(wy), ++n;
              while (n < 3 || wall_now() - w0 < min_ms * 1e-3);
              cpu[wy].push_back((cpu_now() - c0) / n * 1e6);
              wall[wy].push_back((wall_now() - w0) / n * 1e6);
            }
          ops::set_conv_route(route_auto);
          double us[kNumWays];
          for (int wy = 0; wy < kNumWays; ++wy) us[wy] = median(cpu[wy]);  // NaN for a way not timed
          const double flop = 2.0 * double(ny) * double(g.k_h * g.k_w * (g.in_c / g.groups));
          int fastest = 0;
          for (int wy : ways)
            if (wy != kAuto && us[wy] < us[fastest]) fastest = wy;
          const char* opn = kOps[op];
          auto impl = [&](int wy) {
            return wy == 3 && !wino ? "-" : onednn ? kernels::onednn::implementation(opn, g, dnn_way[wy]) : "-";
          };
          std::printf("model=%s batch=%lld layers=%s count=%d op=%s geom=%s own_us=%.1f plain_us=%.1f blocked_us=%.1f "
                      "wino_us=%.1f auto_us=%.1f own_wall_us=%.1f plain_wall_us=%.1f blocked_wall_us=%.1f "
                      "wino_wall_us=%.1f own_gflops=%.1f plain_gflops=%.1f blocked_gflops=%.1f wino_gflops=%.1f "
                      "own_over_plain=%.3f own_over_blocked=%.3f blocked_over_wino=%.3f faster=%s plain_impl=%s "
                      "blocked_impl=%s wino_impl=%s ownwino_us=%.1f ownwino_wall_us=%.1f ownwino_gflops=%.1f "
                      "blocked_over_ownwino=%.3f wino_over_ownwino=%.3f ownwino_algo=%s\n",
                      name.c_str(), (long long)B, s.layers.c_str(), s.count, opn, geom_str(g).c_str(), us[0], us[1],
                      us[2], us[3], us[kAuto], median(wall[0]), median(wall[1]), median(wall[2]), median(wall[3]),
                      flop / us[0] * 1e-3, flop / us[1] * 1e-3, flop / us[2] * 1e-3, flop / us[3] * 1e-3,
                      us[0] / us[1], us[0] / us[2], us[2] / us[3], kWays[fastest], impl(1), impl(2), impl(3),
                      us[kOwnWino], median(wall[kOwnWino]), flop / us[kOwnWino] * 1e-3, us[2] / us[kOwnWino],
                      us[3] / us[kOwnWino], ownwino ? kernels::winograd::algorithm(g, opn) : "-");
          std::fflush(stdout);
          auto& t = total[opn];
          // A way not timed counts as what would run instead: oneDNN's direct kernels for either Winograd.
          for (int wy = 0; wy < kNumWays; ++wy)
            t[size_t(wy)] += (std::isnan(us[wy]) ? us[wy == 3 || wy == kOwnWino ? 2 : 0] : us[wy]) * s.count;
          t[kNumWays] += us[fastest] * s.count;
        }
      }
      std::array<double, kNumWays + 1> all{};
      for (auto& [op, t] : total) {
        std::printf("total model=%s batch=%lld op=%s own_ms=%.2f plain_ms=%.2f blocked_ms=%.2f wino_ms=%.2f "
                    "auto_ms=%.2f best_ms=%.2f own_over_plain=%.3f own_over_auto=%.3f ownwino_ms=%.2f\n",
                    name.c_str(), (long long)B, op.c_str(), t[0] * 1e-3, t[1] * 1e-3, t[2] * 1e-3, t[3] * 1e-3,
                    t[kAuto] * 1e-3, t[kNumWays] * 1e-3, t[0] / t[1], t[0] / t[kAuto], t[kOwnWino] * 1e-3);
        for (size_t i = 0; i < all.size(); ++i) all[i] += t[i];
      }
      std::printf("total model=%s batch=%lld op=all own_ms=%.2f plain_ms=%.2f blocked_ms=%.2f wino_ms=%.2f auto_ms=%.2f "
                  "best_ms=%.2f own_over_plain=%.3f own_over_auto=%.3f ownwino_ms=%.2f\n",
                  name.c_str(), (long long)B, all[0] * 1e-3, all[1] * 1e-3, all[2] * 1e-3, all[3] * 1e-3,
                  all[kAuto] * 1e-3, all[kNumWays] * 1e-3, all[0] / all[1], all[0] / all[kAuto], all[kOwnWino] * 1e-3);
      std::fflush(stdout);
    }
  }
  std::printf("end load=\"%s\"\n", loadavg().c_str());
  (void)kWays;
  return 0;
}
