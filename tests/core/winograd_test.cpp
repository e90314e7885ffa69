// lockstep's own Winograd F(4x4, 3x3) kernels (core/kernels/winograd_cpu.h) against the reference loops of
// conv_cpu.cpp (kernels::conv2d_* with reference = true, double accumulation), float32:
//  * every op on 'same' and 'valid' 3x3 layers: batch 1, odd sizes (5x7, 13x11), 3x3 and 1x1 inputs, channel
//    counts 1, 3, 16, 17, 64, 128, 256, the ch. 14 CNN's and ResNet-20's shapes, several tile blocks;
//  * on 2 threads: the same bits run to run, and within the bound of 1 thread;
//  * supports(): the geometries taken and refused; every op reaches each of its three algorithms (F(4x4),
//    F(2x2), direct loops: winograd_cpu.cpp chooses by the fewest terms an output sums).
// The bound is the one every convolution route is held to (tests/core/conv_ops_test.cpp):
// |got - ref| <= 8·√K·u·Σ|terms| per element, K terms per output (9·in_c forward, 9·out_c input gradient,
// N·out_h·out_w kernel gradient), Σ|terms| the reference on |x|, |w| (|dy|), u = 2^-24. The worst ratio
// |got - ref| / (√K·u·Σ|terms|) per op is printed (8 is the bound).
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "core/kernels/cpu.h"
#include "core/kernels/winograd_cpu.h"
#include "core/ops.h"

namespace lockstep::test {
namespace {

using ops::Window2d;

struct Spec {
  int64_t n, h, w, c, oc;
  bool same;
};

Window2d geometry(const Spec& s) {
  Window2d g;
  g.batch = s.n, g.in_h = s.h, g.in_w = s.w, g.in_c = s.c, g.out_c = s.oc;
  g.k_h = g.k_w = 3;
  g.out_h = ops::window_out(s.h, 3, 1, 1, s.same, &g.pad_top);
  g.out_w = ops::window_out(s.w, 3, 1, 1, s.same, &g.pad_left);
  return g;
}

std::string describe(const Spec& s) {
  char buf[128];
  std::snprintf(buf, sizeof buf, "n%lld %lldx%lld %lld->%lld %s", (long long)s.n, (long long)s.h, (long long)s.w,
                (long long)s.c, (long long)s.oc, s.same ? "same" : "valid");
  return buf;
}

std::vector<float> randn(int64_t n, uint64_t seed, bool positive = false) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(size_t(std::max<int64_t>(n, 0)));
  for (float& e : v) e = positive ? std::abs(d(gen)) : d(gen);
  return v;
}
std::vector<float> abs_of(std::vector<float> v) {
  for (float& e : v) e = std::abs(e);
  return v;
}

struct Bound {
  double worst_ratio = 0;  // max |got - ref| / (√K·u·mag)
  int64_t bad = 0;
};
Bound compare(const std::vector<float>& got, const std::vector<float>& ref, const std::vector<float>& mag, int64_t k,
              double u) {
  Bound b;
  const double scale = std::sqrt(double(k)) * u;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(double(got[i]) - double(ref[i])), lim = scale * double(mag[i]) + 1e-300;
    if (!(err <= 8 * lim)) ++b.bad;  // NaN counts
    b.worst_ratio = std::max(b.worst_ratio, err / lim);
  }
  return b;
}

constexpr double kU = 0x1p-24;

// The three ops on one geometry: Winograd's outputs, the reference's, the reference on magnitudes.
struct Sizes {
  int64_t x, w, y;
};
Sizes sizes(const Window2d& g) {
  return {g.batch * g.in_h * g.in_w * g.in_c, 9 * g.in_c * g.out_c, g.batch * g.out_h * g.out_w * g.out_c};
}
std::vector<std::vector<float>> wino_all(const std::vector<float>& x, const std::vector<float>& w,
                                         const std::vector<float>& dy, const Window2d& g) {
  const Sizes z = sizes(g);
  // NaN-filled: an element left unassigned fails the comparison.
  std::vector<float> y(size_t(z.y), NAN), dx(size_t(z.x), NAN), dw(size_t(z.w), NAN);
  kernels::winograd::forward(x.data(), w.data(), g, y.data());
  kernels::winograd::backward_data(dy.data(), w.data(), g, dx.data());
  kernels::winograd::backward_filter(x.data(), dy.data(), g, dw.data());
  return {y, dx, dw};
}
std::vector<std::vector<float>> ref_all(const std::vector<float>& x, const std::vector<float>& w,
                                        const std::vector<float>& dy, const Window2d& g) {
  const Sizes z = sizes(g);
  std::vector<float> y(size_t(z.y)), dx(size_t(z.x)), dw(size_t(z.w));
  kernels::conv2d_forward(kernels::Cpu{}, x.data(), w.data(), g, y.data(), true);
  kernels::conv2d_backward_data(kernels::Cpu{}, dy.data(), w.data(), g, dx.data(), true);
  kernels::conv2d_backward_filter(kernels::Cpu{}, x.data(), dy.data(), g, dw.data(), true);
  return {y, dx, dw};
}
std::vector<int64_t> terms(const Window2d& g) { return {9 * g.in_c, 9 * g.out_c, g.batch * g.out_h * g.out_w}; }

const char* kOpNames[] = {"forward", "backward data", "backward filter"};

// Worst ratios per op and algorithm (F(4x4), F(2x2), direct) over every test of this binary, printed by the
// last test.
const char* kAlgos[] = {"F(4x4,3x3)", "F(2x2,3x3)", "direct"};
const char* kOpKeys[] = {"fwd", "bwd_data", "bwd_filter"};
double g_worst[3][3] = {};
int g_count[3][3] = {};
int g_checked = 0;
int algo_index(const Window2d& g, int op) {
  const std::string a = kernels::winograd::algorithm(g, kOpKeys[op]);
  for (int i = 0; i < 3; ++i)
    if (a == kAlgos[i]) return i;
  ADD_FAILURE() << "unknown algorithm " << a;
  return 0;
}

// Restores the thread count a test found.
struct ThreadsGuard {
  int saved = omp_get_max_threads();
  ~ThreadsGuard() { ops::set_num_threads(saved); }
};

void check(const Spec& s, uint64_t seed, bool positive_x = false) {
  const Window2d g = geometry(s);
  ASSERT_TRUE(kernels::winograd::supports(g)) << describe(s);
  const Sizes z = sizes(g);
  const std::vector<float> x = randn(z.x, seed, positive_x), w = randn(z.w, seed + 1), dy = randn(z.y, seed + 2);
  const auto got = wino_all(x, w, dy, g), ref = ref_all(x, w, dy, g), mag = ref_all(abs_of(x), abs_of(w), abs_of(dy), g);
  const auto ks = terms(g);
  for (int op = 0; op < 3; ++op) {
    const Bound b = compare(got[size_t(op)], ref[size_t(op)], mag[size_t(op)], ks[size_t(op)], kU);
    const int a = algo_index(g, op);
    EXPECT_EQ(b.bad, 0) << describe(s) << " " << kOpNames[op] << " (" << kAlgos[a] << "): worst ratio " << b.worst_ratio;
    g_worst[op][a] = std::max(g_worst[op][a], b.worst_ratio);
    ++g_count[op][a];
  }
  ++g_checked;
}

TEST(Winograd, Supports) {
  const Window2d same = geometry({2, 8, 8, 4, 4, true}), valid = geometry({2, 8, 8, 4, 4, false});
  EXPECT_TRUE(kernels::winograd::supports(same));
  EXPECT_TRUE(kernels::winograd::supports(valid));
  Window2d g = same;
  g.stride_h = g.stride_w = 2;
  EXPECT_FALSE(kernels::winograd::supports(g));
  g = same, g.dil_h = g.dil_w = 2;
  EXPECT_FALSE(kernels::winograd::supports(g));
  g = same, g.groups = 2;
  EXPECT_FALSE(kernels::winograd::supports(g));
  g = same, g.k_h = g.k_w = 5;
  EXPECT_FALSE(kernels::winograd::supports(g));
  g = same, g.k_w = 1;
  EXPECT_FALSE(kernels::winograd::supports(g));
}

const Spec kOddSpecs[] = {
    {1, 5, 7, 3, 16, true},    {1, 5, 7, 3, 16, false},     {2, 13, 11, 17, 16, true}, {2, 13, 11, 16, 17, false},
    {3, 3, 3, 1, 1, true},     {2, 3, 3, 64, 3, false},     {1, 1, 1, 16, 17, true},   {1, 1, 1, 128, 64, true},
    {2, 1, 5, 3, 4, true},     {1, 8, 8, 1, 3, true},       {1, 6, 6, 1, 1, false},    {2, 4, 9, 17, 3, false},
    {1, 9, 9, 128, 128, false}, {2, 6, 10, 64, 128, true},  {1, 12, 12, 16, 1, true},  {3, 5, 5, 3, 64, false},
};
const int64_t kChannelCounts[] = {1, 3, 16, 17, 64, 128};
Spec channel_spec(int64_t c, int64_t oc) { return {2, 7, 6, c, oc, (c + oc) % 2 == 0}; }

TEST(Winograd, MatchesReferenceOnOddShapes) {
  ThreadsGuard restore;
  ops::set_num_threads(1);
  uint64_t seed = 1000;
  for (const Spec& s : kOddSpecs) check(s, seed += 7);
}

TEST(Winograd, MatchesReferenceOnChannelCounts) {
  ThreadsGuard restore;
  ops::set_num_threads(1);
  uint64_t seed = 2000;
  for (int64_t c : kChannelCounts)
    for (int64_t oc : kChannelCounts) check(channel_spec(c, oc), seed += 7);
}

// The layers of the ch. 14 CNN (14x14 and 7x7, 64 to 256 channels) and ResNet-20 (32x32x16, 16x16x32, 8x8x64),
// at small batches; then batches that take several tile blocks (forward ~640 KiB of tiles a block, the kernel
// gradient ~2 MiB), and post-ReLU (non-negative) inputs.
TEST(Winograd, MatchesReferenceOnNetworkShapes) {
  ThreadsGuard restore;
  ops::set_num_threads(1);
  const Spec specs[] = {
      {2, 14, 14, 64, 128, true}, {2, 14, 14, 128, 128, true}, {2, 7, 7, 128, 256, true}, {2, 7, 7, 256, 256, true},
      {2, 32, 32, 16, 16, true},  {2, 16, 16, 32, 32, true},   {2, 8, 8, 64, 64, true},   {1, 7, 7, 256, 256, false},
      {32, 16, 16, 32, 32, true}, {16, 8, 8, 64, 64, true},    {40, 8, 8, 16, 16, true},
  };
  uint64_t seed = 3000;
  for (const Spec& s : specs) check(s, seed += 7);
  check({8, 16, 16, 32, 32, true}, seed += 7, true);
  check({4, 14, 14, 64, 128, true}, seed += 7, true);
}

// 2 threads: the same bits on every run; within the bound of the reference and of 1 thread (both within the
// bound of the reference, so within twice it of each other). The caller's thread count is left as it was.
TEST(Winograd, TwoThreadsRepeatAndMatchOneThread) {
  ThreadsGuard restore;
  const Spec specs[] = {{8, 16, 16, 32, 32, true}, {4, 14, 14, 64, 128, true}, {3, 7, 7, 128, 256, true},
                        {2, 13, 11, 17, 16, false}, {1, 5, 7, 3, 16, true},   {40, 8, 8, 16, 16, true}};
  uint64_t seed = 4000;
  int identical_to_one = 0, compared = 0;
  for (const Spec& s : specs) {
    const Window2d g = geometry(s);
    const Sizes z = sizes(g);
    const std::vector<float> x = randn(z.x, seed += 7), w = randn(z.w, seed + 1), dy = randn(z.y, seed + 2);
    const auto ref = ref_all(x, w, dy, g), mag = ref_all(abs_of(x), abs_of(w), abs_of(dy), g);
    const auto ks = terms(g);
    ops::set_num_threads(1);
    const auto one = wino_all(x, w, dy, g);
    ops::set_num_threads(2);
    const auto two = wino_all(x, w, dy, g);
    EXPECT_EQ(omp_get_max_threads(), 2) << "the kernels changed the caller's thread count";
    for (int rep = 0; rep < 2; ++rep) {
      const auto again = wino_all(x, w, dy, g);
      for (int op = 0; op < 3; ++op)
        EXPECT_EQ(again[size_t(op)], two[size_t(op)]) << describe(s) << " " << kOpNames[op] << " rep " << rep;
    }
    for (int op = 0; op < 3; ++op) {
      const Bound b1 = compare(two[size_t(op)], one[size_t(op)], mag[size_t(op)], ks[size_t(op)], 2 * kU);
      const Bound br = compare(two[size_t(op)], ref[size_t(op)], mag[size_t(op)], ks[size_t(op)], kU);
      EXPECT_EQ(b1.bad, 0) << describe(s) << " " << kOpNames[op] << " vs 1 thread: " << b1.worst_ratio;
      EXPECT_EQ(br.bad, 0) << describe(s) << " " << kOpNames[op] << " vs reference: " << br.worst_ratio;
      identical_to_one += two[size_t(op)] == one[size_t(op)];
      ++compared;
    }
  }
  std::printf("winograd: 2 threads gave 1 thread's bits on %d of %d ops\n", identical_to_one, compared);
}

// The odd shapes and channel counts above reach every algorithm of every op (F(4x4), F(2x2), direct loops),
// so the tests hold all nine to the bound. Run after the other tests in one process (the binary alone, not
// ctest's one test a process), it also prints their worst ratios.
TEST(Winograd, TheShapesReachEveryAlgorithmOfEveryOp) {
  int count[3][3] = {};
  auto tally = [&](const Spec& s) {
    for (int op = 0; op < 3; ++op) ++count[op][algo_index(geometry(s), op)];
  };
  for (const Spec& s : kOddSpecs) tally(s);
  for (int64_t c : kChannelCounts)
    for (int64_t oc : kChannelCounts) tally(channel_spec(c, oc));
  for (int op = 0; op < 3; ++op)
    for (int a = 0; a < 3; ++a) EXPECT_GT(count[op][a], 0) << kOpNames[op] << " never runs " << kAlgos[a];
  if (g_checked == 0) return;
  std::printf("winograd: %d geometries; worst |err|/(sqrt(K)*u*sum|terms|) (bound 8), [geometries]:\n", g_checked);
  for (int op = 0; op < 3; ++op) {
    std::printf("  %-15s", kOpNames[op]);
    for (int a = 0; a < 3; ++a) std::printf("  %s %.3f [%d]", kAlgos[a], g_worst[op][a], g_count[op][a]);
    std::printf("\n");
  }
}

}  // namespace
}  // namespace lockstep::test
