// The window ops (core/ops.h "convolutions, pooling, padding"; CPU kernels in core/kernels/conv_cpu.cpp):
//  * window_out against TensorFlow's sizing rules, from a hand table and from the formulas;
//  * conv2d forward against a hand-computed case and an independent loop over an explicitly padded input;
//  * conv2d backward (data and filter) in float64 against central differences of L = Σ r ⊙ conv(x, w), on
//    both kernel paths, over strides, padding, dilation, groups, depthwise, odd sizes, 1x1 .. 7x7 kernels;
//  * the fast (Auto) path against the reference loops in float32 on large shapes, im2col blocked over
//    several sample blocks included;
//  * max / average pooling against loops and central differences, max pooling's tie rule;
//  * pad2d and scale_channels against loops;
//  * the OpenMP paths on 2 threads against 1 thread and the reference.
// A float convolution's Auto path has routes (ops::ConvRoute): lockstep's own kernels, oneDNN (builds with
// it), and the per-shape rule between them. Every Auto check that takes float runs on each route the build has,
// and the finite-difference check has a float version for them (the float64 one runs lockstep's own kernels:
// oneDNN is float only).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/kernels/conv_onednn.h"
#include "tests/core/test_util.h"

namespace lockstep::test {
namespace {

using ops::ConvRoute;
using ops::KernelPath;
using ops::Window2d;

const char* route_name(ConvRoute r) { return r == ConvRoute::Auto ? "rule" : ops::conv_route_name(r); }
// The routes of a float convolution's Auto path in this build (Direct is the rule without Winograd: each of
// its choices is one of Own and OneDnn, tested as those).
std::vector<ConvRoute> conv_routes() {
  std::vector<ConvRoute> v{ConvRoute::Own};
  if (ops::have_onednn()) v.push_back(ConvRoute::OneDnn);
  v.push_back(ConvRoute::Winograd);
  v.push_back(ConvRoute::Auto);
  return v;
}
// Restores the route a test found, whatever way it ends.
struct ConvRouteGuard {
  ConvRoute saved = ops::conv_route();
  ~ConvRouteGuard() { ops::set_conv_route(saved); }
};
// A kernel path, and for Auto the route it takes (set by use()).
struct Variant {
  KernelPath path;
  ConvRoute route = ConvRoute::Auto;
  void use() const { ops::set_conv_route(route); }
};
// The reference, then Auto on each route.
std::vector<Variant> variants() {
  std::vector<Variant> v{{KernelPath::Reference, ConvRoute::Own}};
  for (ConvRoute r : conv_routes()) v.push_back({KernelPath::Auto, r});
  return v;
}
std::string path_name(KernelPath p) { return p == KernelPath::Auto ? "auto" : "reference"; }
std::string path_name(const Variant& v) {
  return v.path == KernelPath::Reference ? "reference" : std::string("auto/") + route_name(v.route);
}

// Restores the thread count a test found, whatever way it ends.
struct ThreadCountGuard {
  int saved = ops::num_threads();
  ~ThreadCountGuard() { ops::set_num_threads(saved); }
};

// ---- TensorFlow's sizing rules, written out independently of ops::window_out ------------------------------
struct TfAxis {
  int64_t out, pad_before, pad_after;
};
TfAxis tf_axis(int64_t in, int64_t k, int64_t s, int64_t d, bool same) {
  const int64_t eff = (k - 1) * d + 1;  // the dilated window's extent
  if (!same) return {int64_t(std::ceil(double(in - (k - 1) * d) / double(s))), 0, 0};
  const int64_t out = int64_t(std::ceil(double(in) / double(s)));
  const int64_t total = std::max<int64_t>((out - 1) * s + eff - in, 0);
  return {out, total / 2, total - total / 2};
}

TEST(ConvWindowOut, MatchesTensorFlowTable) {
  struct Row {
    int64_t in, k, s, d;
    bool same;
    int64_t out, pad_before;  // out <= 0: no output (valid only)
  };
  const Row rows[] = {
      // valid: ceil((in - (k-1)d) / s), no padding
      {5, 3, 1, 1, false, 3, 0},
      {5, 3, 2, 1, false, 2, 0},
      {7, 3, 3, 1, false, 2, 0},
      {8, 3, 3, 1, false, 2, 0},
      {9, 3, 3, 1, false, 3, 0},
      {5, 3, 1, 2, false, 1, 0},   // dilated extent 5 == in
      {10, 1, 3, 1, false, 4, 0},
      {1, 1, 1, 1, false, 1, 0},
      {7, 7, 2, 1, false, 1, 0},
      {4, 3, 1, 2, false, 0, 0},   // dilated extent 5 > 4: nothing
      {2, 3, 1, 1, false, 0, 0},   // window larger than the input
      {2, 3, 2, 1, false, 0, 0},
      {1, 7, 1, 1, false, -5, 0},  // TF's formula goes negative: "0 or less"
      {3, 7, 3, 2, false, -3, 0},
      // same: ceil(in / s), total = max((out-1)s + (k-1)d + 1 - in, 0), the smaller half before
      {5, 3, 1, 1, true, 5, 1},
      {5, 3, 2, 1, true, 3, 1},
      {6, 3, 2, 1, true, 3, 0},    // total 1: all of it after
      {7, 7, 1, 1, true, 7, 3},
      {4, 2, 2, 1, true, 2, 0},    // total 0
      {5, 2, 1, 1, true, 5, 0},
      {5, 3, 1, 2, true, 5, 2},    // dilated: total 4
      {1, 3, 1, 1, true, 1, 1},
      {14, 3, 3, 1, true, 5, 0},
      {13, 1, 3, 1, true, 5, 0},
      {3, 1, 3, 1, true, 1, 0},    // negative total clamps to 0
      {8, 4, 3, 2, true, 3, 2},    // extent 7, total 5
      {2, 7, 1, 1, true, 2, 3},    // window larger than the input: still an output per input
  };
  for (const Row& r : rows) {
    int64_t pad = -99;
    const int64_t out = ops::window_out(r.in, r.k, r.s, r.d, r.same, &pad);
    std::ostringstream what;
    what << "in=" << r.in << " k=" << r.k << " s=" << r.s << " d=" << r.d << (r.same ? " same" : " valid");
    if (r.out > 0) EXPECT_EQ(out, r.out) << what.str();
    else EXPECT_LE(out, 0) << what.str();
    EXPECT_EQ(pad, r.pad_before) << what.str();
    // The table agrees with the formulas it was worked from.
    const TfAxis tf = tf_axis(r.in, r.k, r.s, r.d, r.same);
    EXPECT_EQ(tf.out, r.out) << what.str();
    EXPECT_EQ(tf.pad_before, r.pad_before) << what.str();
    // pad_before may be left out.
    EXPECT_EQ(ops::window_out(r.in, r.k, r.s, r.d, r.same, nullptr), out) << what.str();
  }
}

TEST(ConvWindowOut, MatchesTensorFlowFormulasOnASweep) {
  for (bool same : {false, true})
    for (int64_t in = 1; in <= 24; ++in)
      for (int64_t k = 1; k <= 8; ++k)
        for (int64_t s = 1; s <= 4; ++s)
          for (int64_t d = 1; d <= 3; ++d) {
            int64_t pad = -99;
            const int64_t out = ops::window_out(in, k, s, d, same, &pad);
            const TfAxis tf = tf_axis(in, k, s, d, same);
            if (tf.out > 0) {
              ASSERT_EQ(out, tf.out) << in << " " << k << " " << s << " " << d << " " << same;
              ASSERT_EQ(pad, tf.pad_before) << in << " " << k << " " << s << " " << d << " " << same;
              // Every output's window starts inside the padded extent and ends inside it.
              ASSERT_LE((out - 1) * s + (k - 1) * d + 1, tf.pad_before + in + tf.pad_after);
            } else {
              ASSERT_LE(out, 0) << in << " " << k << " " << s << " " << d;
            }
          }
}

// ---- convolution geometry and an independent reference -----------------------------------------------------
struct ConvSpec {
  int64_t n, h, w, c, oc, kh, kw, sh, sw, dh, dw;
  bool same;
  int64_t groups;
};
std::string describe(const ConvSpec& s) {
  std::ostringstream o;
  o << s.n << "x" << s.h << "x" << s.w << "x" << s.c << " -> " << s.oc << " k" << s.kh << "x" << s.kw << " s" << s.sh
    << "," << s.sw << " d" << s.dh << "," << s.dw << (s.same ? " same" : " valid") << " g" << s.groups;
  return o.str();
}
Window2d conv_geometry(const ConvSpec& s) {
  Window2d g;
  g.batch = s.n;
  g.in_h = s.h;
  g.in_w = s.w;
  g.in_c = s.c;
  g.out_c = s.oc;
  g.k_h = s.kh;
  g.k_w = s.kw;
  g.stride_h = s.sh;
  g.stride_w = s.sw;
  g.dil_h = s.dh;
  g.dil_w = s.dw;
  g.groups = s.groups;
  g.out_h = ops::window_out(s.h, s.kh, s.sh, s.dh, s.same, &g.pad_top);
  g.out_w = ops::window_out(s.w, s.kw, s.sw, s.dw, s.same, &g.pad_left);
  return g;
}
Shape x_shape(const Window2d& g) { return {g.batch, g.in_h, g.in_w, g.in_c}; }
Shape y_shape(const Window2d& g) { return {g.batch, g.out_h, g.out_w, g.out_c}; }
Shape w_shape(const Window2d& g) { return {g.k_h, g.k_w, g.in_c / g.groups, g.out_c}; }

// An output tensor filled with NaN: the ops assign, so none may survive.
Tensor nan_tensor(const Shape& s, DType dt) {
  Tensor t(s, Device::CPU, dt);
  ops::fill(t, std::numeric_limits<double>::quiet_NaN());
  return t;
}

// The definition over an explicitly zero-padded copy of x (no in_row / in_col, no skipping of taps):
// y[n, oh, ow, oc] = Σ_{i, j, ci} xp[n, oh·sh + i·dh, ow·sw + j·dw, grp·cg + ci] · w[i, j, ci, oc].
std::vector<double> naive_conv(const std::vector<double>& x, const std::vector<double>& w, const ConvSpec& s) {
  const TfAxis ah = tf_axis(s.h, s.kh, s.sh, s.dh, s.same), aw = tf_axis(s.w, s.kw, s.sw, s.dw, s.same);
  const int64_t hp = ah.pad_before + s.h + ah.pad_after, wp = aw.pad_before + s.w + aw.pad_after;
  std::vector<double> xp(size_t(s.n * hp * wp * s.c), 0.0);
  for (int64_t n = 0; n < s.n; ++n)
    for (int64_t i = 0; i < s.h; ++i)
      for (int64_t j = 0; j < s.w; ++j)
        for (int64_t c = 0; c < s.c; ++c)
          xp[size_t(((n * hp + i + ah.pad_before) * wp + j + aw.pad_before) * s.c + c)] =
              x[size_t(((n * s.h + i) * s.w + j) * s.c + c)];
  const int64_t cg = s.c / s.groups, og = s.oc / s.groups;
  std::vector<double> y(size_t(s.n * ah.out * aw.out * s.oc));
  for (int64_t n = 0; n < s.n; ++n)
    for (int64_t oh = 0; oh < ah.out; ++oh)
      for (int64_t ow = 0; ow < aw.out; ++ow)
        for (int64_t oc = 0; oc < s.oc; ++oc) {
          const int64_t grp = oc / og;
          double acc = 0;
          for (int64_t i = 0; i < s.kh; ++i)
            for (int64_t j = 0; j < s.kw; ++j)
              for (int64_t ci = 0; ci < cg; ++ci)
                acc += xp.at(size_t(((n * hp + oh * s.sh + i * s.dh) * wp + ow * s.sw + j * s.dw) * s.c + grp * cg + ci)) *
                       w[size_t(((i * s.kw + j) * cg + ci) * s.oc + oc)];
          y[size_t(((n * ah.out + oh) * aw.out + ow) * s.oc + oc)] = acc;
        }
  return y;
}

Tensor conv_forward(const Tensor& x, const Tensor& w, const Window2d& g, KernelPath p) {
  Tensor y = nan_tensor(y_shape(g), x.dtype());
  ops::conv2d_forward(x, w, g, y, p);
  return y;
}
Tensor conv_backward_data(const Tensor& dy, const Tensor& w, const Window2d& g, KernelPath p) {
  Tensor dx = nan_tensor(x_shape(g), dy.dtype());
  ops::conv2d_backward_data(dy, w, g, dx, p);
  return dx;
}
Tensor conv_backward_filter(const Tensor& x, const Tensor& dy, const Window2d& g, KernelPath p) {
  Tensor dw = nan_tensor(w_shape(g), x.dtype());
  ops::conv2d_backward_filter(x, dy, g, dw, p);
  return dw;
}

// Geometries for the exact checks (comments: the fast path each one takes).
const ConvSpec kConvSpecs[] = {
    // n  h  w  c oc kh kw sh sw dh dw same  groups
    {1, 5, 7, 3, 4, 3, 3, 1, 1, 1, 1, true, 1},    // im2col, contiguous runs and padded edges
    {3, 5, 7, 3, 4, 3, 3, 1, 1, 1, 1, false, 1},   // batch 3, valid
    {2, 7, 6, 2, 3, 3, 3, 2, 2, 1, 1, true, 1},    // stride 2 same (total padding 2 and 1)
    {1, 8, 7, 2, 3, 3, 3, 3, 3, 1, 1, false, 1},   // stride 3 valid: rows and columns never read
    {3, 7, 8, 2, 3, 3, 3, 3, 3, 1, 1, true, 1},    // stride 3 same
    {2, 9, 7, 2, 3, 3, 2, 2, 1, 1, 1, true, 1},    // mixed strides, 3x2 kernel
    {1, 9, 8, 2, 2, 3, 3, 1, 1, 2, 2, true, 1},    // dilation 2 (column taps not contiguous)
    {2, 9, 7, 2, 3, 3, 3, 2, 1, 2, 1, false, 1},   // dilation in rows only
    {1, 7, 9, 3, 2, 3, 3, 1, 3, 1, 2, true, 1},    // dilation in columns, stride 3 in columns
    {3, 4, 5, 6, 5, 1, 1, 1, 1, 1, 1, true, 1},    // 1x1 stride 1: the pointwise product
    {1, 5, 3, 4, 7, 1, 1, 1, 1, 1, 1, false, 1},   // 1x1 valid: pointwise too
    {2, 5, 5, 3, 4, 1, 1, 2, 2, 1, 1, true, 1},    // 1x1 stride 2: im2col
    {3, 7, 6, 3, 2, 1, 1, 3, 2, 1, 1, false, 1},   // 1x1 strides 3, 2
    {2, 5, 7, 3, 2, 1, 3, 1, 1, 1, 1, true, 1},    // 1x3
    {1, 6, 7, 2, 3, 1, 3, 1, 2, 1, 2, false, 1},   // 1x3 dilated, strided
    {1, 8, 9, 2, 3, 7, 7, 1, 1, 1, 1, true, 1},    // 7x7 same: padding 3 each side
    {1, 9, 8, 1, 2, 7, 7, 2, 2, 1, 1, false, 1},   // 7x7 valid, stride 2, one input channel
    {3, 7, 7, 2, 2, 7, 7, 3, 3, 1, 1, true, 1},    // 7x7 stride 3 same, batch 3
    {2, 5, 6, 4, 6, 3, 3, 1, 1, 1, 1, true, 2},    // groups 2
    {1, 6, 5, 6, 3, 3, 3, 2, 2, 1, 1, true, 3},    // groups 3, one output per group
    {3, 5, 7, 6, 9, 1, 3, 1, 1, 1, 1, false, 3},   // groups 3, 1x3, batch 3
    {2, 4, 5, 4, 6, 1, 1, 1, 1, 1, 1, true, 2},    // grouped 1x1 (not the pointwise product)
    {1, 8, 7, 4, 2, 3, 3, 1, 1, 2, 2, true, 2},    // groups 2, dilation 2
    {2, 7, 5, 6, 6, 3, 3, 3, 3, 1, 1, false, 2},   // groups 2, stride 3
    {2, 5, 7, 3, 3, 3, 3, 1, 1, 1, 1, true, 3},    // depthwise, multiplier 1
    {1, 6, 7, 3, 6, 3, 3, 2, 2, 1, 1, true, 3},    // depthwise, multiplier 2, stride 2
    {3, 7, 5, 4, 8, 3, 3, 1, 1, 2, 2, false, 4},   // depthwise x2, dilation 2, batch 3
    {1, 5, 7, 2, 4, 1, 3, 3, 3, 1, 1, true, 2},    // depthwise x2, 1x3, stride 3
    {1, 8, 8, 2, 2, 7, 7, 1, 1, 1, 1, true, 2},    // depthwise 7x7
    {3, 5, 6, 5, 5, 1, 1, 2, 1, 1, 1, true, 5},    // depthwise 1x1, stride 2, batch 3
};

// ---- forward --------------------------------------------------------------------------------------------
TEST(ConvForward, HandComputedThreeByThree) {
  // x = [[1 2 3] [4 5 6] [7 8 9]], w = [[1 2] [3 4]] (one channel in and out).
  struct Case {
    bool same;
    int64_t stride;
    std::vector<double> want;
  };
  const Case cases[] = {
      // valid: 37 = 1·1 + 2·2 + 4·3 + 5·4, ...
      {false, 1, {37, 47, 67, 77}},
      // same: out 3, total padding 1, all after: the last row / column see zeros.
      {true, 1, {37, 47, 21, 67, 77, 33, 23, 26, 9}},
      // valid stride 2: out = ceil((3 - 1) / 2) = 1.
      {false, 2, {37}},
      // same stride 2: out 2, total = 1·2 + 2 - 3 = 1, after.
      {true, 2, {37, 21, 23, 9}},
  };
  ConvRouteGuard restore;
  for (const Case& c : cases)
    for (DType dt : {DType::F32, DType::F64})
      for (const Variant& v : variants()) {
        v.use();
        const ConvSpec s{1, 3, 3, 1, 1, 2, 2, c.stride, c.stride, 1, 1, c.same, 1};
        const Window2d g = conv_geometry(s);
        Tensor x(x_shape(g), Device::CPU, dt), w(w_shape(g), Device::CPU, dt);
        set_values(x, {1, 2, 3, 4, 5, 6, 7, 8, 9});
        set_values(w, {1, 2, 3, 4});
        EXPECT_EQ(conv_forward(x, w, g, v.path).to_double_vector(), c.want)
            << describe(s) << " " << path_name(v) << " " << dtype_name(dt);
      }
}

TEST(ConvForward, HandComputedGroupsAndDepthwise) {
  // 1x1x2x2 input (two pixels, channels (a, b)), 1x2 kernel, valid: one output pixel.
  // x pixel 0 = (1, 2), pixel 1 = (3, 4).
  ConvRouteGuard restore;
  for (DType dt : {DType::F64, DType::F32})  // small integers: exact in float too
    for (const Variant& v : variants()) {
      v.use();
      const std::string what = path_name(v) + " " + dtype_name(dt);
      {  // groups 2, one output per group: y0 = 1·w[0,0,0,0] + 3·w[0,1,0,0], y1 = 2·w[0,0,0,1] + 4·w[0,1,0,1]
        const Window2d g = conv_geometry({1, 1, 2, 2, 2, 1, 2, 1, 1, 1, 1, false, 2});
        Tensor x(x_shape(g), Device::CPU, dt), w(w_shape(g), Device::CPU, dt);
        set_values(x, {1, 2, 3, 4});
        set_values(w, {10, 100, 1000, 10000});  // [kw=0: (oc0, oc1)], [kw=1: (oc0, oc1)]
        EXPECT_EQ(conv_forward(x, w, g, v.path).to_double_vector(),
                  (std::vector<double>{1 * 10 + 3 * 1000, 2 * 100 + 4 * 10000}))
            << what;
      }
      {  // depthwise multiplier 2: output channel oc reads input channel oc / 2.
        const Window2d g = conv_geometry({1, 1, 2, 2, 4, 1, 2, 1, 1, 1, 1, false, 2});
        Tensor x(x_shape(g), Device::CPU, dt), w(w_shape(g), Device::CPU, dt);
        set_values(x, {1, 2, 3, 4});
        set_values(w, {1, 2, 3, 4, 10, 20, 30, 40});
        EXPECT_EQ(conv_forward(x, w, g, v.path).to_double_vector(),
                  (std::vector<double>{1 * 1 + 3 * 10, 1 * 2 + 3 * 20, 2 * 3 + 4 * 30, 2 * 4 + 4 * 40}))
            << what;
      }
    }
}

TEST(ConvForward, MatchesIndependentLoops) {
  ConvRouteGuard restore;
  uint64_t seed = 100;
  for (const ConvSpec& s : kConvSpecs) {
    const Window2d g = conv_geometry(s);
    ASSERT_GT(g.out_h, 0) << describe(s);
    ASSERT_GT(g.out_w, 0) << describe(s);
    for (DType dt : {DType::F64, DType::F32}) {
      const Tensor x = randn(x_shape(g), ++seed, 1.0, 0.0, dt), w = randn(w_shape(g), ++seed, 1.0, 0.0, dt);
      const std::vector<double> want = naive_conv(x.to_double_vector(), w.to_double_vector(), s);
      // Terms are products of O(1) normals; float: well inside 1e-5 of the sum of |terms| <= 7·7·6 terms.
      const double tol = dt == DType::F64 ? 1e-12 : 2e-5;
      for (const Variant& v : variants()) {
        v.use();
        const std::vector<double> got = conv_forward(x, w, g, v.path).to_double_vector();
        ASSERT_EQ(got.size(), want.size());
        double worst = 0;
        for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]) / (1 + std::abs(want[i])));
        EXPECT_LT(worst, tol) << describe(s) << " " << path_name(v) << " " << dtype_name(dt);  // NaN fails too
      }
    }
  }
}

// ---- backward against central differences (float64) -----------------------------------------------------
// Both gradients within tol of the central differences (NaN fails too), and neither numeric one all zeros.
void expect_grads_near(const GradErr& ex, const GradErr& ew, double tol, const std::string& what) {
  EXPECT_LT(ex.max_err, tol) << what << ": input gradient";
  EXPECT_LT(ew.max_err, tol) << what << ": kernel gradient";
  EXPECT_GT(ex.numeric_abs_sum, 1e-3) << what;
  EXPECT_GT(ew.numeric_abs_sum, 1e-3) << what;
}

// L(x, w) = Σ r ⊙ conv(x, w): dL/dx = backward_data(r, w), dL/dw = backward_filter(x, r). L is linear in
// each argument, so central differences are exact but for rounding: kFdTol (1e-6, relative to 1 + |g|) is
// ~1e4 times what float64 rounding leaves.
void check_conv_grads(const ConvSpec& s, KernelPath p, uint64_t seed) {
  const Window2d g = conv_geometry(s);
  Tensor x = randn(x_shape(g), seed), w = randn(w_shape(g), seed + 1);
  const Tensor r = randn(y_shape(g), seed + 2);
  const Tensor dx = conv_backward_data(r, w, g, p), dw = conv_backward_filter(x, r, g, p);
  auto numeric = [&](double* v) {
    const double keep = *v;
    *v = keep + kFdEps;
    const double lp = dot(conv_forward(x, w, g, p), r);
    *v = keep - kFdEps;
    const double lm = dot(conv_forward(x, w, g, p), r);
    *v = keep;
    return (lp - lm) / (2 * kFdEps);
  };
  GradErr ex, ew;
  for (int64_t j = 0; j < x.numel(); ++j) ex.add(dx.at(j), numeric(x.data<double>() + j));
  for (int64_t j = 0; j < w.numel(); ++j) ew.add(dw.at(j), numeric(w.data<double>() + j));
  expect_grads_near(ex, ew, kFdTol, describe(s) + " " + path_name(p));
}

TEST(ConvBackward, AutoMatchesFiniteDifferences) {
  uint64_t seed = 1000;
  for (const ConvSpec& s : kConvSpecs) check_conv_grads(s, KernelPath::Auto, seed += 10);
}
TEST(ConvBackward, ReferenceMatchesFiniteDifferences) {
  uint64_t seed = 2000;
  for (const ConvSpec& s : kConvSpecs) check_conv_grads(s, KernelPath::Reference, seed += 10);
}

// The same check in float, on each route of the Auto path (oneDNN takes float only). L is linear in each
// argument, so a large step is exact but for rounding: kFloatFdEps = 0.5. The outputs a perturbed element
// does not reach are computed alike in L(+) and L(-) and cancel; the <= k_h·k_w·out_c it reaches each round
// to ~sqrt(K)·2^-24·Σ|terms| (K <= 294 terms here), so the difference quotient errs by ~1e-5 against
// gradients of O(1..10) (largest seen, any route: 1.5e-5 relative to 1 + |g|). kFloatFdTol = 2e-4 leaves
// 13x margin; a wrong tap, group or missing term is an O(1) relative error.
constexpr double kFloatFdEps = 0.5, kFloatFdTol = 2e-4;
void check_conv_grads_float(const ConvSpec& s, ConvRoute route, uint64_t seed) {
  ops::set_conv_route(route);
  const Window2d g = conv_geometry(s);
  Tensor x = randn(x_shape(g), seed, 1.0, 0.0, DType::F32), w = randn(w_shape(g), seed + 1, 1.0, 0.0, DType::F32);
  const Tensor r = randn(y_shape(g), seed + 2, 1.0, 0.0, DType::F32);
  const Tensor dx = conv_backward_data(r, w, g, KernelPath::Auto), dw = conv_backward_filter(x, r, g, KernelPath::Auto);
  auto numeric = [&](float* v) {
    const float keep = *v;
    *v = keep + float(kFloatFdEps);
    const double step_up = double(*v) - double(keep);
    const double lp = dot(conv_forward(x, w, g, KernelPath::Auto), r);
    *v = keep - float(kFloatFdEps);
    const double step_down = double(keep) - double(*v);
    const double lm = dot(conv_forward(x, w, g, KernelPath::Auto), r);
    *v = keep;
    return (lp - lm) / (step_up + step_down);  // the steps float rounding actually took
  };
  GradErr ex, ew;
  for (int64_t j = 0; j < x.numel(); ++j) ex.add(dx.at(j), numeric(x.data<float>() + j));
  for (int64_t j = 0; j < w.numel(); ++j) ew.add(dw.at(j), numeric(w.data<float>() + j));
  expect_grads_near(ex, ew, kFloatFdTol, describe(s) + " float auto/" + route_name(route));
}
TEST(ConvBackward, FloatRoutesMatchFiniteDifferences) {
  ConvRouteGuard restore;
  for (ConvRoute route : conv_routes()) {
    uint64_t seed = 3000;
    for (const ConvSpec& s : kConvSpecs) check_conv_grads_float(s, route, seed += 10);
  }
}

// One kernel-gradient entry by hand: the central tap of a 3x3 stride-1 same convolution pairs every
// input pixel with the output pixel at the same place.
TEST(ConvBackward, CentralTapOfKernelGradientByHand) {
  const ConvSpec s{1, 5, 5, 2, 2, 3, 3, 1, 1, 1, 1, true, 1};
  const Window2d g = conv_geometry(s);
  const Tensor x = randn(x_shape(g), 5), r = randn(y_shape(g), 6);
  const Tensor dw = conv_backward_filter(x, r, g, KernelPath::Auto);
  // Central tap of the kernel: Σ x ⊙ r over channels (stride 1, same).
  double central = 0;
  for (int64_t i = 0; i < 25; ++i) central += x.at(i * 2 + 0) * r.at(i * 2 + 1);  // ci 0 -> oc 1
  EXPECT_NEAR(dw.at(((1 * 3 + 1) * 2 + 0) * 2 + 1), central, 1e-12);
}

// ---- batch of zero: outputs are still assigned --------------------------------------------------------
TEST(ConvBackward, EmptyBatchGivesZeroKernelGradient) {
  ConvRouteGuard restore;
  for (const ConvSpec& s : {ConvSpec{0, 5, 5, 2, 3, 3, 3, 1, 1, 1, 1, true, 1}, ConvSpec{0, 4, 4, 3, 2, 1, 1, 1, 1, 1, 1, true, 1},
                            ConvSpec{0, 4, 4, 4, 2, 3, 3, 2, 2, 1, 1, true, 2}, ConvSpec{0, 4, 4, 2, 4, 3, 3, 1, 1, 1, 1, true, 2}})
    for (DType dt : {DType::F32, DType::F64})
      for (const Variant& v : variants()) {
        v.use();
        const Window2d g = conv_geometry(s);
        const Tensor x(x_shape(g), Device::CPU, dt), dy(y_shape(g), Device::CPU, dt);
        const std::vector<double> dw = conv_backward_filter(x, dy, g, v.path).to_double_vector();
        EXPECT_EQ(dw, std::vector<double>(dw.size(), 0.0)) << describe(s) << " " << path_name(v) << " " << dtype_name(dt);
        EXPECT_EQ(conv_forward(x, randn(w_shape(g), 1, 1.0, 0.0, dt), g, v.path).numel(), 0);
      }
}

TEST(ConvForward, RejectsMismatchedShapes) {
  const Window2d g = conv_geometry({1, 5, 5, 2, 3, 3, 3, 1, 1, 1, 1, true, 1});
  const Tensor x(x_shape(g)), w(w_shape(g)), y(y_shape(g));
  EXPECT_ANY_THROW(ops::conv2d_forward(x, w, g, Tensor({1, 4, 5, 3})));
  EXPECT_ANY_THROW(ops::conv2d_forward(x, Tensor({3, 3, 1, 3}), g, y));
  EXPECT_ANY_THROW(ops::conv2d_forward(x, w.to(DType::F64), g, y));
  Window2d bad = g;
  bad.groups = 4;  // does not divide in_c
  EXPECT_ANY_THROW(ops::conv2d_forward(x, w, bad, y));
}

// ---- fast against reference in float32 on large shapes --------------------------------------------------
// Both paths read the same float inputs; the reference accumulates in double and rounds once, the fast path
// accumulates K products in float (blocked GEMM, FMA). Each rounding step errs by at most u·|partial sum|
// <= u·mag, mag = Σ|terms| of that output, u = 2^-24; the errors of a sum of K terms add up like a random
// walk, so |fast - ref| stays within a small multiple of sqrt(K)·u·mag (the worst case, K·u·mag, is never
// approached). The bound used: 8·sqrt(K)·u·mag per element (largest ratio seen: 1.2·sqrt(K)·u·mag), with
// mag computed exactly as the reference op applied to |x|, |w| (or |dy|); float64 likewise with u = 2^-53.
// A wrong tap, block or group is an O(1)·mag error and fails it by orders of magnitude.
struct Bound {
  double worst_ratio = 0;  // max |got - ref| / (sqrt(K)·u·mag)
  int64_t bad = 0;
};
Bound compare_to_reference(const Tensor& got, const Tensor& ref, const Tensor& mag, int64_t k, double u) {
  const std::vector<double> a = got.to_double_vector(), b = ref.to_double_vector(), m = mag.to_double_vector();
  Bound out;
  const double scale = std::sqrt(double(k)) * u;
  for (size_t i = 0; i < a.size(); ++i) {
    const double err = std::abs(a[i] - b[i]), lim = scale * m[i] + 1e-300;
    if (!(err <= 8 * lim)) ++out.bad;  // NaN counts
    out.worst_ratio = std::max(out.worst_ratio, err / lim);
  }
  return out;
}
Tensor abs_of(const Tensor& t) {
  std::vector<double> v = t.to_double_vector();
  for (double& e : v) e = std::abs(e);
  return Tensor::from_vector(t.shape(), v).to(t.dtype());
}

// Fast (Auto on the given route) vs reference for all three ops on one shape; returns nothing, records failures.
void expect_fast_matches_reference(const ConvSpec& s, DType dt, uint64_t seed, ConvRoute route) {
  ops::set_conv_route(route);
  const Window2d g = conv_geometry(s);
  const double u = dt == DType::F32 ? std::ldexp(1.0, -24) : std::ldexp(1.0, -53);
  const Tensor x = randn(x_shape(g), seed, 1.0, 0.0, dt), w = randn(w_shape(g), seed + 1, 1.0, 0.0, dt);
  const Tensor dy = randn(y_shape(g), seed + 2, 1.0, 0.0, dt);
  const Tensor ax = abs_of(x), aw = abs_of(w), ady = abs_of(dy);
  const int64_t cg = s.c / s.groups, og = s.oc / s.groups;
  const std::string what = describe(s) + " " + dtype_name(dt) + " auto/" + route_name(route);
  {
    const Bound b = compare_to_reference(conv_forward(x, w, g, KernelPath::Auto), conv_forward(x, w, g, KernelPath::Reference),
                                         conv_forward(ax, aw, g, KernelPath::Reference), s.kh * s.kw * cg, u);
    EXPECT_EQ(b.bad, 0) << what << " forward: worst ratio " << b.worst_ratio;
  }
  {
    const Bound b = compare_to_reference(conv_backward_data(dy, w, g, KernelPath::Auto),
                                         conv_backward_data(dy, w, g, KernelPath::Reference),
                                         conv_backward_data(ady, aw, g, KernelPath::Reference), s.kh * s.kw * og, u);
    EXPECT_EQ(b.bad, 0) << what << " backward data: worst ratio " << b.worst_ratio;
  }
  {
    const Bound b = compare_to_reference(conv_backward_filter(x, dy, g, KernelPath::Auto),
                                         conv_backward_filter(x, dy, g, KernelPath::Reference),
                                         conv_backward_filter(ax, ady, g, KernelPath::Reference), g.batch * g.out_h * g.out_w, u);
    EXPECT_EQ(b.bad, 0) << what << " backward filter: worst ratio " << b.worst_ratio;
  }
}

// oneDNN's Winograd way (conv_onednn.h; the benchmarks compare ours with it): oneDNN 2.x has F(4x4, 3x3)
// kernels for AVX-512 (every CPU this project measures on, Zen 4 and 5), and the way must reach them there; a
// geometry they refuse (here 3x3 stride 2) runs on the direct kernels instead, with the same results.
TEST(ConvOneDnn, WinogradWhereOneDnnHasItDirectOtherwise) {
  if (!ops::have_onednn()) GTEST_SKIP() << "this build has no oneDNN (LOCKSTEP_WITH_ONEDNN)";
  const Window2d wino = conv_geometry({4, 14, 14, 64, 128, 3, 3, 1, 1, 1, 1, true, 1});
  const bool expect_wino = __builtin_cpu_supports("avx512f") && std::string(kernels::onednn::version()).starts_with("2.");
  for (const char* op : {"fwd", "bwd_data", "bwd_filter"}) {
    const std::string impl = kernels::onednn::implementation(op, wino, kernels::onednn::Way::Winograd);
    if (expect_wino) EXPECT_NE(impl.find("wino"), std::string::npos) << op << ": " << impl;
    else std::printf("oneDNN %s, %s: %s\n", kernels::onednn::version(), op, impl.c_str());
  }
  const ConvSpec s{3, 9, 9, 32, 32, 3, 3, 2, 2, 1, 1, true, 1};
  const Window2d g = conv_geometry(s);
  EXPECT_EQ(std::string(kernels::onednn::implementation("fwd", g, kernels::onednn::Way::Winograd)),
            kernels::onednn::implementation("fwd", g, kernels::onednn::Way::Blocked));
  const Tensor x = randn(x_shape(g), 71, 1.0, 0.0, DType::F32), w = randn(w_shape(g), 72, 1.0, 0.0, DType::F32);
  Tensor y(y_shape(g), Device::CPU, DType::F32);
  kernels::onednn::conv2d_forward(x.data<float>(), w.data<float>(), g, y.data<float>(), kernels::onednn::Way::Winograd);
  const std::vector<double> want = naive_conv(x.to_double_vector(), w.to_double_vector(), s), got = y.to_double_vector();
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 2e-5 * (1 + std::abs(want[i]))) << i;
}

// The column matrix is blocked by samples: kColumnBytes (4 MiB) / (out_h·out_w·K·sizeof(T)) per block.
TEST(ConvFastPath, MatchesReferenceOnLargeFloatShapes) {
  const ConvSpec specs[] = {
      {4, 14, 14, 64, 128, 3, 3, 1, 1, 1, 1, true, 1},  // 441 KiB of columns a sample: one block of 4
      {4, 28, 28, 1, 64, 7, 7, 1, 1, 1, 1, true, 1},    // the MNIST stem: K = 49
      {4, 32, 32, 16, 32, 3, 3, 2, 2, 1, 1, true, 1},   // stride 2
      {7, 32, 32, 32, 16, 3, 3, 1, 1, 1, 1, true, 1},   // 1.13 MiB a sample: blocks of 3, 3, 1
      {10, 32, 32, 32, 16, 3, 3, 1, 1, 1, 1, true, 2},  // groups 2: 576 KiB a group-sample, blocks of 7, 3
      {3, 12, 12, 48, 96, 1, 1, 1, 1, 1, 1, true, 1},   // pointwise product
      {4, 20, 20, 32, 64, 3, 3, 1, 1, 1, 1, true, 32},  // depthwise x2
      {2, 17, 15, 8, 16, 5, 3, 2, 3, 2, 1, false, 1},   // odd: 5x3, strides 2/3, dilation 2 in rows
      {4, 32, 32, 16, 32, 1, 1, 2, 2, 1, 1, true, 1},   // ResNet's 1x1 stride-2 shortcut
      {3, 16, 16, 64, 64, 3, 3, 1, 1, 1, 1, true, 16},  // groups 16, 4 channels a group
      {2, 20, 20, 8, 16, 3, 3, 1, 1, 1, 1, true, 1},    // 8 input channels: the rule's own input gradient
  };
  ConvRouteGuard restore;
  for (ConvRoute route : conv_routes()) {
    uint64_t seed = 300;
    for (const ConvSpec& s : specs) expect_fast_matches_reference(s, DType::F32, seed += 5, route);
  }
}

// The bias and activation fused into the convolution (ops::ConvEpilogue: per Winograd tile, per im2col
// block, in blocks after the other kernels) give the bits of the unfused sequence conv2d_forward, bias_add,
// activation_forward, on every route and every kind of kernel (Winograd F(4x4) and its direct loops, im2col
// with several blocks and groups, pointwise, depthwise, oneDNN), for elementwise activations with and
// without a bias, Softmax (never fused), and float64 (not fused).
TEST(ConvEpilogue, FusedGivesTheUnfusedBits) {
  const ConvSpec specs[] = {
      {3, 9, 11, 32, 48, 3, 3, 1, 1, 1, 1, true, 1},    // Winograd F(4x4), ragged tiles at the edges
      {2, 5, 5, 2, 3, 3, 3, 1, 1, 1, 1, true, 1},       // too few terms: Winograd's direct loops
      {7, 32, 32, 32, 16, 3, 3, 1, 1, 1, 1, true, 2},   // im2col over several blocks, groups 2
      {3, 12, 12, 48, 96, 1, 1, 1, 1, 1, 1, true, 1},   // pointwise
      {4, 20, 20, 32, 64, 3, 3, 1, 1, 1, 1, true, 32},  // depthwise x2
      {2, 17, 15, 8, 16, 5, 3, 2, 3, 2, 1, false, 1},   // strided, dilated
  };
  const std::pair<ops::Activation, double> acts[] = {
      {ops::Activation::Linear, 0.0}, {ops::Activation::Relu, 0.0},    {ops::Activation::LeakyRelu, 0.2},
      {ops::Activation::Elu, 1.0},    {ops::Activation::Selu, 0.0},    {ops::Activation::Sigmoid, 0.0},
      {ops::Activation::Swish, 0.0},  {ops::Activation::Softmax, 0.0},
  };
  ConvRouteGuard restore;
  uint64_t seed = 900;
  for (ConvRoute route : conv_routes())
    for (const ConvSpec& s : specs)
      for (DType dt : {DType::F32, DType::F64})
        for (const auto& [act, alpha] : acts)
          for (bool with_bias : {true, false}) {
            ops::set_conv_route(route);
            const Window2d g = conv_geometry(s);
            const Tensor x = randn(x_shape(g), ++seed, 1.0, 0.0, dt), w = randn(w_shape(g), ++seed, 0.3, 0.0, dt);
            ops::ConvEpilogue ep;
            if (with_bias) ep.bias = randn({g.out_c}, ++seed, 1.0, 0.0, dt);
            ep.act = act;
            ep.alpha = alpha;
            Tensor fused = nan_tensor(y_shape(g), dt), plain = nan_tensor(y_shape(g), dt);
            ops::conv2d_forward(x, w, g, fused, ep);
            ops::conv2d_forward(x, w, g, plain);
            if (with_bias) ops::bias_add(plain.reshape({-1, g.out_c}), ep.bias);
            if (act != ops::Activation::Linear) ops::activation_forward(act, alpha, plain, plain);
            const std::vector<double> a = fused.to_double_vector(), b = plain.to_double_vector();
            ASSERT_EQ(a.size(), b.size());
            size_t differ = 0;
            for (size_t i = 0; i < a.size(); ++i) differ += !(a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i])));
            EXPECT_EQ(differ, 0u) << describe(s) << " " << route_name(route) << " " << dtype_name(dt) << " act "
                                  << int(act) << (with_bias ? " bias" : "");
          }
}

TEST(ConvFastPath, MatchesReferenceOverSeveralDoubleBlocks) {
  // float64: 2.25 MiB of columns a sample, so one sample a block (5 blocks); groups 3: 1.125 MiB a
  // group-sample, blocks of 3, 2.
  ConvRouteGuard restore;
  expect_fast_matches_reference({5, 32, 32, 32, 16, 3, 3, 1, 1, 1, 1, true, 1}, DType::F64, 400, ConvRoute::Auto);
  expect_fast_matches_reference({5, 32, 32, 48, 12, 3, 3, 1, 1, 1, 1, true, 3}, DType::F64, 410, ConvRoute::Auto);
}

// ---- pooling ---------------------------------------------------------------------------------------------
struct PoolSpec {
  int64_t n, h, w, c, k, s;
  bool same;
};
std::string describe(const PoolSpec& p) {
  std::ostringstream o;
  o << p.n << "x" << p.h << "x" << p.w << "x" << p.c << " pool " << p.k << " stride " << p.s << (p.same ? " same" : " valid");
  return o.str();
}
Window2d pool_geometry(const PoolSpec& p) {
  Window2d g;
  g.batch = p.n;
  g.in_h = p.h;
  g.in_w = p.w;
  g.in_c = g.out_c = p.c;
  g.k_h = g.k_w = p.k;
  g.stride_h = g.stride_w = p.s;
  g.out_h = ops::window_out(p.h, p.k, p.s, 1, p.same, &g.pad_top);
  g.out_w = ops::window_out(p.w, p.k, p.s, 1, p.same, &g.pad_left);
  return g;
}
std::vector<PoolSpec> pool_specs(int64_t n) {
  std::vector<PoolSpec> v;
  for (int64_t k : {2, 3})
    for (int64_t s : {1, 2, 3})
      for (bool same : {false, true}) {
        v.push_back({n, 5, 7, 3, k, s, same});
        v.push_back({n, 6, 4, 2, k, s, same});
      }
  return v;
}

// Loops over the windows' positions inside the input (TF's rule: padding is not a value).
std::vector<double> naive_pool(const std::vector<double>& x, const PoolSpec& p, bool max) {
  const TfAxis ah = tf_axis(p.h, p.k, p.s, 1, p.same), aw = tf_axis(p.w, p.k, p.s, 1, p.same);
  std::vector<double> y;
  for (int64_t n = 0; n < p.n; ++n)
    for (int64_t oh = 0; oh < ah.out; ++oh)
      for (int64_t ow = 0; ow < aw.out; ++ow)
        for (int64_t c = 0; c < p.c; ++c) {
          double best = -std::numeric_limits<double>::infinity(), sum = 0;
          int64_t count = 0;
          for (int64_t i = oh * p.s - ah.pad_before; i < oh * p.s - ah.pad_before + p.k; ++i)
            for (int64_t j = ow * p.s - aw.pad_before; j < ow * p.s - aw.pad_before + p.k; ++j) {
              if (i < 0 || i >= p.h || j < 0 || j >= p.w) continue;
              const double v = x[size_t(((n * p.h + i) * p.w + j) * p.c + c)];
              best = std::max(best, v);
              sum += v;
              ++count;
            }
          y.push_back(max ? best : sum / double(count));
        }
  return y;
}
// MaxPoolGrad: each output's gradient to the first maximum of its window in row-major order.
std::vector<double> naive_max_pool_grad(const std::vector<double>& x, const std::vector<double>& dy, const PoolSpec& p) {
  const TfAxis ah = tf_axis(p.h, p.k, p.s, 1, p.same), aw = tf_axis(p.w, p.k, p.s, 1, p.same);
  std::vector<double> dx(x.size(), 0.0);
  size_t o = 0;
  for (int64_t n = 0; n < p.n; ++n)
    for (int64_t oh = 0; oh < ah.out; ++oh)
      for (int64_t ow = 0; ow < aw.out; ++ow)
        for (int64_t c = 0; c < p.c; ++c, ++o) {
          int64_t arg = -1;
          for (int64_t i = oh * p.s - ah.pad_before; i < oh * p.s - ah.pad_before + p.k; ++i)
            for (int64_t j = ow * p.s - aw.pad_before; j < ow * p.s - aw.pad_before + p.k; ++j) {
              if (i < 0 || i >= p.h || j < 0 || j >= p.w) continue;
              const int64_t at = ((n * p.h + i) * p.w + j) * p.c + c;
              if (arg < 0 || x[size_t(at)] > x[size_t(arg)]) arg = at;  // strictly greater: the first stays
            }
          dx[size_t(arg)] += dy[o];
        }
  return dx;
}

Tensor pool_forward(const Tensor& x, const Window2d& g, bool max) {
  Tensor y = nan_tensor(y_shape(g), x.dtype());
  if (max) ops::max_pool2d_forward(x, g, y);
  else ops::avg_pool2d_forward(x, g, y);
  return y;
}
Tensor max_pool_backward(const Tensor& x, const Tensor& y, const Tensor& dy, const Window2d& g) {
  Tensor dx = nan_tensor(x_shape(g), x.dtype());
  ops::max_pool2d_backward(x, y, dy, g, dx);
  return dx;
}
Tensor avg_pool_backward(const Tensor& dy, const Window2d& g) {
  Tensor dx = nan_tensor(x_shape(g), dy.dtype());
  ops::avg_pool2d_backward(dy, g, dx);
  return dx;
}

// Distinct values 0.05 apart (half of them negative, so a padded zero would win if padding took part),
// shuffled: no ties, and a 1e-5 perturbation never changes a window's maximum.
Tensor distinct_values(const Shape& shape, uint64_t seed, DType dt = DType::F64) {
  Tensor t(shape, Device::CPU, dt);
  std::vector<double> v(size_t(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = 0.05 * (double(i) - double(v.size()) / 2);
  std::shuffle(v.begin(), v.end(), std::mt19937_64(seed));
  set_values(t, v);
  return t;
}

double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(a[i] - b[i]);
    m = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(m, d);
  }
  return m;
}

TEST(PoolForward, MatchesLoops) {
  uint64_t seed = 500;
  for (const PoolSpec& p : pool_specs(2))
    for (DType dt : {DType::F64, DType::F32}) {
      const Window2d g = pool_geometry(p);
      const Tensor x = randn(x_shape(g), ++seed, 1.0, -0.5, dt);  // mostly negative near the edges too
      const std::vector<double> xv = x.to_double_vector();
      // Max is exact; the mean rounds (the kernel scales by 1/count): float's ulp on O(1) values.
      EXPECT_EQ(max_abs_diff(pool_forward(x, g, true).to_double_vector(), naive_pool(xv, p, true)), 0.0)
          << describe(p) << " " << dtype_name(dt);
      EXPECT_LT(max_abs_diff(pool_forward(x, g, false).to_double_vector(), naive_pool(xv, p, false)),
                dt == DType::F64 ? 1e-14 : 1e-5)
          << describe(p) << " " << dtype_name(dt);
    }
}

TEST(PoolForward, SamePaddingNeverEntersMaxOrCount) {
  // All -2, pool 3 stride 1 same: a padded zero must not win and the mean must stay -2 at the corners
  // (TF divides by the 4 in-input positions of a corner window, not by 9).
  const PoolSpec p{1, 4, 5, 2, 3, 1, true};
  const Window2d g = pool_geometry(p);
  ASSERT_EQ(g.pad_top, 1);
  const Tensor x = Tensor::full(x_shape(g), -2.0, Device::CPU, DType::F64);
  for (double v : pool_forward(x, g, true).to_double_vector()) EXPECT_EQ(v, -2.0);
  for (double v : pool_forward(x, g, false).to_double_vector()) EXPECT_DOUBLE_EQ(v, -2.0);
  // Counts: a 1x3 ramp x = 1, 2, 3 with pool 2 stride 2 same: windows {1, 2} and {3} (+ padding after).
  const PoolSpec q{1, 1, 3, 1, 2, 2, true};
  const Window2d gq = pool_geometry(q);
  ASSERT_EQ(gq.out_w, 2);
  ASSERT_EQ(gq.pad_left, 0);
  Tensor xr(x_shape(gq), Device::CPU, DType::F64);
  set_values(xr, {1, 2, 3});
  EXPECT_EQ(pool_forward(xr, gq, false).to_double_vector(), (std::vector<double>{1.5, 3.0}));
  // Its backward: 1/count to each in-input position.
  const Tensor dy = Tensor::from_vector({1, 1, 2, 1}, std::vector<double>{1, 1});
  EXPECT_EQ(avg_pool_backward(dy, gq).to_double_vector(), (std::vector<double>{0.5, 0.5, 1.0}));
}

// L = Σ r ⊙ pool(x) on batch-1 maps; max pooling on tie-free inputs (piecewise linear, exact away from
// ties), the mean is linear: central differences to kFdTol as for convolutions.
TEST(PoolBackward, MatchesFiniteDifferences) {
  uint64_t seed = 600;
  for (const PoolSpec& p : pool_specs(1))
    for (bool max : {true, false}) {
      const Window2d g = pool_geometry(p);
      Tensor x = max ? distinct_values(x_shape(g), ++seed) : randn(x_shape(g), ++seed);
      const Tensor r = randn(y_shape(g), ++seed);
      const Tensor y = pool_forward(x, g, max);
      const Tensor dx = max ? max_pool_backward(x, y, r, g) : avg_pool_backward(r, g);
      GradErr e;
      double* xp = x.data<double>();
      for (int64_t j = 0; j < x.numel(); ++j) {
        const double keep = xp[j];
        xp[j] = keep + kFdEps;
        const double lp = dot(pool_forward(x, g, max), r);
        xp[j] = keep - kFdEps;
        const double lm = dot(pool_forward(x, g, max), r);
        xp[j] = keep;
        e.add(dx.at(j), (lp - lm) / (2 * kFdEps));
      }
      EXPECT_LT(e.max_err, kFdTol) << describe(p) << (max ? " max" : " avg");
      EXPECT_GT(e.numeric_abs_sum, 1e-3) << describe(p) << (max ? " max" : " avg");
    }
}

TEST(PoolBackward, MaxTiesGoToTheFirstInRowMajorOrder) {
  {  // One 2x2 window of equal values: all of it to the top-left.
    const PoolSpec p{1, 2, 2, 1, 2, 1, false};
    const Window2d g = pool_geometry(p);
    const Tensor x = Tensor::full(x_shape(g), 0.5, Device::CPU, DType::F64);
    const Tensor y = pool_forward(x, g, true);
    EXPECT_EQ(y.to_double_vector(), std::vector<double>{0.5});
    const Tensor dy = Tensor::from_vector(y_shape(g), std::vector<double>{3.0});
    EXPECT_EQ(max_pool_backward(x, y, dy, g).to_double_vector(), (std::vector<double>{3, 0, 0, 0}));
  }
  {  // 3x3 of equal values, 2x2 windows at stride 1: each window's top-left; the centre is shared by none.
    const PoolSpec p{1, 3, 3, 1, 2, 1, false};
    const Window2d g = pool_geometry(p);
    const Tensor x = Tensor::full(x_shape(g), 1.0, Device::CPU, DType::F64);
    const Tensor y = pool_forward(x, g, true);
    const Tensor dy = Tensor::from_vector(y_shape(g), std::vector<double>{1, 10, 100, 1000});
    EXPECT_EQ(max_pool_backward(x, y, dy, g).to_double_vector(), (std::vector<double>{1, 10, 0, 100, 1000, 0, 0, 0, 0}));
  }
  {  // A tie in the second row beats a later one; per channel: channel 1's first max is elsewhere.
    // 3x3 window (valid, one output), two channels; row-major order (0,0) (0,1) (0,2) (1,0) ...
    const PoolSpec p{1, 3, 3, 2, 3, 1, false};
    const Window2d g = pool_geometry(p);
    Tensor x(x_shape(g), Device::CPU, DType::F64);
    //          (0,0)   (0,1)   (0,2)   (1,0)   (1,1)   (1,2)   (2,0)   (2,1)   (2,2)
    set_values(x, {1, 9, 2, 0, 3, 9, 5, 1, 4, 2, 5, 0, 0, 0, 5, 9, 1, 0});
    const Tensor y = pool_forward(x, g, true);
    EXPECT_EQ(y.to_double_vector(), (std::vector<double>{5, 9}));
    const Tensor dy = Tensor::from_vector(y_shape(g), std::vector<double>{7, 8});
    std::vector<double> want(18, 0.0);
    want[3 * 2 + 0] = 7;  // channel 0: 5 at (1,0), ties at (1,2) and (2,1)
    want[0 * 2 + 1] = 8;  // channel 1: 9 at (0,0), ties at (0,2) and (2,1)
    EXPECT_EQ(max_pool_backward(x, y, dy, g).to_double_vector(), want);
  }
  {  // Same padding with ties: a padded position never takes the gradient (all values -1).
    const PoolSpec p{1, 3, 3, 1, 3, 1, true};
    const Window2d g = pool_geometry(p);
    const Tensor x = Tensor::full(x_shape(g), -1.0, Device::CPU, DType::F64);
    const Tensor y = pool_forward(x, g, true);
    const Tensor dy = Tensor::full(y_shape(g), 1.0, Device::CPU, DType::F64);
    // Output (oh, ow)'s first in-input position is (max(oh-1, 0), max(ow-1, 0)).
    EXPECT_EQ(max_pool_backward(x, y, dy, g).to_double_vector(), (std::vector<double>{4, 2, 0, 2, 1, 0, 0, 0, 0}));
  }
  // Many ties over every geometry: small integers, against the loop's first-maximum rule.
  uint64_t seed = 700;
  for (const PoolSpec& p : pool_specs(2))
    for (DType dt : {DType::F64, DType::F32}) {
      const Window2d g = pool_geometry(p);
      std::vector<double> v = randu(x_shape(g), ++seed, 0.0, 3.0).to_double_vector();
      for (double& e : v) e = std::floor(e) - 1;  // -1, 0, 1
      Tensor x(x_shape(g), Device::CPU, dt);
      set_values(x, v);
      const Tensor dy = randn(y_shape(g), ++seed, 1.0, 0.0, dt);
      const Tensor y = pool_forward(x, g, true);
      EXPECT_LT(max_abs_diff(max_pool_backward(x, y, dy, g).to_double_vector(),
                             naive_max_pool_grad(v, dy.to_double_vector(), p)),
                dt == DType::F64 ? 1e-14 : 1e-5)
          << describe(p) << " " << dtype_name(dt);
    }
}

// The kernel runs over channels in vectors (open/hit masks per channel): channel counts past one and two
// AVX-512 vectors with a remainder, values from a set of five so most windows hold ties, every pool shape;
// the gradient must equal the loops' first-maximum routing (exactly in float64; float32 rounds the sums
// where windows overlap), and with relu_gate the bits of max_pool2d_backward then the ReLU's backward.
TEST(PoolBackward, MaxWideChannelsWithTiesMatchLoops) {
  uint64_t seed = 700;
  for (int64_t c : {16, 37})
    for (const PoolSpec& q : pool_specs(2))
      for (DType dt : {DType::F64, DType::F32}) {
        PoolSpec p = q;
        p.c = c;
        const Window2d g = pool_geometry(p);
        Tensor x(x_shape(g), Device::CPU, dt);
        std::mt19937_64 rng(++seed);
        std::vector<double> xv(size_t(x.numel()));
        for (double& v : xv) v = double(int64_t(rng() % 5)) - 2.0;
        set_values(x, xv);
        const Tensor dy = randn(y_shape(g), ++seed, 1.0, 0.0, dt);
        const Tensor y = pool_forward(x, g, true);
        EXPECT_LE(max_abs_diff(max_pool_backward(x, y, dy, g).to_double_vector(),
                               naive_max_pool_grad(xv, dy.to_double_vector(), p)),
                  dt == DType::F64 ? 0.0 : 1e-5)
            << describe(p) << " " << dtype_name(dt);
        // relu_gate on a ReLU's output (many zeros, windows all zero): the bits of the two passes.
        Tensor xr = x.clone();
        ops::activation_forward(ops::Activation::Relu, 0.0, x, xr);
        const Tensor yr = pool_forward(xr, g, true);
        Tensor gated = nan_tensor(x_shape(g), dt), apart = nan_tensor(x_shape(g), dt);
        ops::max_pool2d_backward(xr, yr, dy, g, gated, true);
        ops::max_pool2d_backward(xr, yr, dy, g, apart);
        ops::activation_backward(ops::Activation::Relu, 0.0, xr, xr, apart, apart);
        EXPECT_EQ(gated.to_double_vector(), apart.to_double_vector()) << describe(p) << " " << dtype_name(dt) << " relu gate";
      }
}

// ---- padding, channel scaling ------------------------------------------------------------------------------
TEST(Pad2d, ForwardZerosTheBorderAndBackwardExtractsTheBlock) {
  struct Case {
    Shape small, big;
    int64_t top, left;
  };
  const Case cases[] = {{{2, 3, 4, 3}, {2, 6, 8, 3}, 1, 2}, {{1, 5, 7, 1}, {1, 5, 7, 1}, 0, 0}, {{3, 2, 2, 2}, {3, 5, 3, 2}, 3, 1},
                        {{1, 4, 3, 5}, {1, 5, 6, 5}, 0, 3}};
  uint64_t seed = 800;
  for (const Case& c : cases)
    for (DType dt : {DType::F32, DType::F64}) {
      const Tensor small = randn(c.small, ++seed, 1.0, 0.0, dt);
      Tensor big = nan_tensor(c.big, dt);  // forward assigns every element
      ops::pad2d(small, big, c.top, c.left, true);
      const std::vector<double> sv = small.to_double_vector(), bv = big.to_double_vector();
      const int64_t n = c.big[0], bh = c.big[1], bw = c.big[2], ch = c.big[3], h = c.small[1], w = c.small[2];
      int64_t mism = 0;
      for (int64_t s = 0; s < n; ++s)
        for (int64_t i = 0; i < bh; ++i)
          for (int64_t j = 0; j < bw; ++j)
            for (int64_t k = 0; k < ch; ++k) {
              const bool inside = i >= c.top && i < c.top + h && j >= c.left && j < c.left + w;
              const double want = inside ? sv[size_t(((s * h + i - c.top) * w + j - c.left) * ch + k)] : 0.0;
              if (!(bv[size_t(((s * bh + i) * bw + j) * ch + k)] == want)) ++mism;
            }
      EXPECT_EQ(mism, 0) << shape_str(c.big) << " " << dtype_name(dt);
      // Backward: small <- the block, from a big map with values everywhere.
      const Tensor dbig = randn(c.big, ++seed, 1.0, 0.0, dt);
      Tensor dsmall = nan_tensor(c.small, dt);
      ops::pad2d(dsmall, dbig, c.top, c.left, false);
      const std::vector<double> dbv = dbig.to_double_vector(), dsv = dsmall.to_double_vector();
      mism = 0;
      for (int64_t s = 0; s < n; ++s)
        for (int64_t i = 0; i < h; ++i)
          for (int64_t j = 0; j < w; ++j)
            for (int64_t k = 0; k < ch; ++k)
              if (!(dsv[size_t(((s * h + i) * w + j) * ch + k)] == dbv[size_t(((s * bh + i + c.top) * bw + j + c.left) * ch + k)]))
                ++mism;
      EXPECT_EQ(mism, 0) << shape_str(c.big) << " " << dtype_name(dt);
      // Round trip: unpadding the padded map gives the map back exactly.
      Tensor back = nan_tensor(c.small, dt);
      ops::pad2d(back, big, c.top, c.left, false);
      EXPECT_EQ(back.to_double_vector(), sv);
      // Adjoint: <pad(s), B> = <s, unpad(B)>.
      EXPECT_NEAR(dot(big, dbig), dot(small, dsmall), 1e-5 * (1 + std::abs(dot(small, dsmall))));
    }
  EXPECT_ANY_THROW(ops::pad2d(Tensor({1, 3, 3, 1}), Tensor({1, 4, 4, 1}), 2, 0, true));  // does not fit
}

TEST(ScaleChannels, MatchesALoopAndMayAlias) {
  uint64_t seed = 900;
  for (const Shape& shape : {Shape{2, 3, 4, 5}, Shape{3, 7}, Shape{1, 2, 2, 1}, Shape{4, 5, 3}})
    for (DType dt : {DType::F32, DType::F64}) {
      const int64_t n = shape[0], c = shape.back();
      const Tensor x = randn(shape, ++seed, 1.0, 0.0, dt), m = randn({n, c}, ++seed, 1.0, 0.0, dt);
      const std::vector<double> xv = x.to_double_vector(), mv = m.to_double_vector();
      std::vector<double> want(xv.size());
      const int64_t s = x.numel() / (n * c);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t p = 0; p < s; ++p)
          for (int64_t k = 0; k < c; ++k) {
            const size_t at = size_t((i * s + p) * c + k);
            // In T: the product of two T values, rounded once.
            want[at] = dt == DType::F32 ? double(float(xv[at]) * float(mv[size_t(i * c + k)])) : xv[at] * mv[size_t(i * c + k)];
          }
      Tensor y = nan_tensor(shape, dt);
      ops::scale_channels(x, m, y);
      EXPECT_EQ(y.to_double_vector(), want) << shape_str(shape) << " " << dtype_name(dt);
      const Tensor inplace = x.clone();
      ops::scale_channels(inplace, m, inplace);
      EXPECT_EQ(inplace.to_double_vector(), want) << shape_str(shape) << " " << dtype_name(dt) << " in place";
    }
  EXPECT_ANY_THROW(ops::scale_channels(Tensor({2, 3, 4}), Tensor({2, 3}), Tensor({2, 3, 4})));  // mask [N, C]
}

// ---- threads ---------------------------------------------------------------------------------------------
// Above kParallelWork (2^15) the im2col rows, the col2im samples, the depthwise rows / samples / taps and the
// pooling rows / samples run on OpenMP threads. The direct loops give each output to one thread, summed in a
// fixed order: 2 threads must equal 1 thread bit for bit. The GEMM-based convolutions may split a product
// differently (OpenBLAS): within the bound above of 1 thread and of the reference. Repeated to give a race
// a chance to show.
TEST(ConvThreads, TwoThreadsMatchOneThread) {
  ThreadCountGuard restore;
  ConvRouteGuard restore_route;
  const ConvSpec gemm_specs[] = {
      {5, 16, 16, 8, 16, 3, 3, 1, 1, 1, 1, true, 1},   // im2col with contiguous runs, col2im over 5 samples
      {3, 15, 13, 6, 8, 3, 3, 2, 1, 2, 1, true, 2},    // groups, dilation, odd sizes
      {7, 32, 32, 32, 16, 3, 3, 1, 1, 1, 1, true, 1},  // several sample blocks
      // Windows over most or all of the map: any split of one sample's pixels over threads would collide.
      {3, 8, 8, 16, 8, 7, 7, 1, 1, 1, 1, true, 1},
      {2, 4, 4, 64, 8, 7, 7, 1, 1, 1, 1, true, 1},
      {2, 6, 6, 256, 4, 7, 7, 1, 1, 1, 1, true, 1},
  };
  const ConvSpec direct_specs[] = {
      {3, 20, 20, 16, 32, 3, 3, 1, 1, 1, 1, true, 16},  // depthwise x2
      {4, 17, 19, 24, 24, 5, 5, 2, 2, 1, 1, true, 24},  // depthwise x1, stride 2
  };
  uint64_t seed = 1100;
  auto conv_all = [](const Tensor& x, const Tensor& w, const Tensor& dy, const Window2d& g) {
    return std::vector<Tensor>{conv_forward(x, w, g, KernelPath::Auto), conv_backward_data(dy, w, g, KernelPath::Auto),
                               conv_backward_filter(x, dy, g, KernelPath::Auto)};
  };
  // Within the bound of the reference on 2 threads, and of 1 thread (oneDNN, too, may split a sum over threads).
  auto check_bounded = [&](const ConvSpec& s, ConvRoute route) {
    const Window2d g = conv_geometry(s);
    const Tensor x = randn(x_shape(g), ++seed, 1.0, 0.0, DType::F32), w = randn(w_shape(g), ++seed, 1.0, 0.0, DType::F32);
    const Tensor dy = randn(y_shape(g), ++seed, 1.0, 0.0, DType::F32);
    const Tensor ax = abs_of(x), aw = abs_of(w), ady = abs_of(dy);
    const std::vector<Tensor> ref{conv_forward(x, w, g, KernelPath::Reference),
                                  conv_backward_data(dy, w, g, KernelPath::Reference),
                                  conv_backward_filter(x, dy, g, KernelPath::Reference)};
    const std::vector<Tensor> mag{conv_forward(ax, aw, g, KernelPath::Reference),
                                  conv_backward_data(ady, aw, g, KernelPath::Reference),
                                  conv_backward_filter(ax, ady, g, KernelPath::Reference)};
    const int64_t cg = s.c / s.groups, og = s.oc / s.groups;
    const int64_t ks[] = {s.kh * s.kw * cg, s.kh * s.kw * og, g.batch * g.out_h * g.out_w};
    const double u = std::ldexp(1.0, -24);
    const std::string what = describe(s) + " auto/" + route_name(route);
    ops::set_num_threads(1);
    const std::vector<Tensor> one = conv_all(x, w, dy, g);
    for (int rep = 0; rep < 3; ++rep) {
      ops::set_num_threads(2);
      const std::vector<Tensor> two = conv_all(x, w, dy, g);
      for (size_t i = 0; i < 3; ++i) {
        // Against 1 thread: both within the bound of the reference, so within twice the bound of each other.
        const Bound b1 = compare_to_reference(two[i], one[i], mag[i], ks[i], 2 * u);
        const Bound br = compare_to_reference(two[i], ref[i], mag[i], ks[i], u);
        EXPECT_EQ(b1.bad, 0) << what << " op " << i << " vs 1 thread, rep " << rep << ": " << b1.worst_ratio;
        EXPECT_EQ(br.bad, 0) << what << " op " << i << " vs reference, rep " << rep << ": " << br.worst_ratio;
      }
    }
  };
  for (ConvRoute route : conv_routes()) {
    ops::set_conv_route(route);
    for (const ConvSpec& s : gemm_specs) check_bounded(s, route);
    if (route != ConvRoute::Own)  // depthwise on oneDNN: bounded, not bit for bit
      for (const ConvSpec& s : direct_specs) check_bounded(s, route);
  }
  // lockstep's own depthwise loops give each output to one thread: bit for bit.
  ops::set_conv_route(ConvRoute::Own);
  for (const ConvSpec& s : direct_specs) {
    const Window2d g = conv_geometry(s);
    const Tensor x = randn(x_shape(g), ++seed, 1.0, 0.0, DType::F32), w = randn(w_shape(g), ++seed, 1.0, 0.0, DType::F32);
    const Tensor dy = randn(y_shape(g), ++seed, 1.0, 0.0, DType::F32);
    ops::set_num_threads(1);
    const std::vector<Tensor> one = conv_all(x, w, dy, g);
    for (int rep = 0; rep < 3; ++rep) {
      ops::set_num_threads(2);
      const std::vector<Tensor> two = conv_all(x, w, dy, g);
      for (size_t i = 0; i < 3; ++i)
        EXPECT_EQ(two[i].to_vector(), one[i].to_vector()) << describe(s) << " op " << i << " rep " << rep;
    }
  }
  const PoolSpec pools[] = {{3, 32, 32, 16, 3, 1, true}, {4, 33, 31, 8, 2, 2, false}};
  for (const PoolSpec& p : pools) {
    const Window2d g = pool_geometry(p);
    const Tensor x = randn(x_shape(g), ++seed, 1.0, 0.0, DType::F32), dy = randn(y_shape(g), ++seed, 1.0, 0.0, DType::F32);
    auto pool_all = [&] {
      const Tensor ym = pool_forward(x, g, true);
      return std::vector<Tensor>{ym, max_pool_backward(x, ym, dy, g), pool_forward(x, g, false), avg_pool_backward(dy, g)};
    };
    ops::set_num_threads(1);
    const std::vector<Tensor> one = pool_all();
    for (int rep = 0; rep < 3; ++rep) {
      ops::set_num_threads(2);
      const std::vector<Tensor> two = pool_all();
      for (size_t i = 0; i < one.size(); ++i)
        EXPECT_EQ(two[i].to_vector(), one[i].to_vector()) << describe(p) << " op " << i << " rep " << rep;
    }
  }
}

}  // namespace
}  // namespace lockstep::test
