// The CUDA window ops (convolutions, pooling, padding, channel scaling) against the CPU ops on the same
// random inputs (label gpu).
//
// Tolerances, |gpu - cpu| <= tol * (1 + |cpu|):
//  * convolutions: kConvTol = 1e-4, against both the CPU's reference loops (double accumulation) and its
//    fast path. The GPU sums the same float products in another order (cuBLAS's blocking; the
//    depthwise kernel gradient in fixed chunks), over up to 32768 terms here (the kernel gradient of
//    the multi-block case); a host emulation of these kernels differed from the double-accumulated
//    reference by at most 4e-6 on such sizes, and the CPU's own float paths by up to 2.2e-5.
//    Depthwise forward and input gradient add in the CPU's order, so their bits should agree as well
//    (the count of differing elements is printed, not required: the CPU build may contract to FMA).
//  * pooling, padding, channel scaling: bit for bit (comparisons, copies, and the CPU's sums in the
//    CPU's order with --fmad=false).
// Every GPU op also runs twice: the results must be the same bits (no atomics, fixed orders).
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "tests/gpu/gpu_test_util.h"

namespace lockstep::gpu_test {
namespace {

constexpr double kConvTol = 1e-4;

struct WindowCase {
  std::string name;
  ops::Window2d g;
};

// A geometry as the layers build it (TensorFlow's valid/same sizing, ops::window_out).
ops::Window2d geometry(int64_t n, int64_t h, int64_t w, int64_t in_c, int64_t out_c, int64_t kh, int64_t kw,
                       int64_t sh, int64_t sw, int64_t dh, int64_t dw, bool same, int64_t groups) {
  ops::Window2d g;
  g.batch = n;
  g.in_h = h;
  g.in_w = w;
  g.in_c = in_c;
  g.out_c = out_c;
  g.k_h = kh;
  g.k_w = kw;
  g.stride_h = sh;
  g.stride_w = sw;
  g.dil_h = dh;
  g.dil_w = dw;
  g.groups = groups;
  g.out_h = ops::window_out(h, kh, sh, dh, same, &g.pad_top);
  g.out_w = ops::window_out(w, kw, sw, dw, same, &g.pad_left);
  return g;
}

std::vector<WindowCase> conv_cases() {
  return {
      {"3x3 stride 1 same", geometry(2, 7, 9, 3, 5, 3, 3, 1, 1, 1, 1, true, 1)},
      {"3x3 stride 2 valid, odd sizes", geometry(3, 11, 13, 4, 6, 3, 3, 2, 2, 1, 1, false, 1)},
      {"3x3 stride 2 same, odd sizes", geometry(2, 11, 12, 4, 6, 3, 3, 2, 2, 1, 1, true, 1)},
      {"3x3 dilation 2 same", geometry(2, 10, 9, 3, 4, 3, 3, 1, 1, 2, 2, true, 1)},
      {"3x2 dilation (2,1) stride (1,2) valid", geometry(2, 10, 9, 3, 4, 3, 2, 1, 2, 2, 1, false, 1)},
      {"groups 2 same", geometry(2, 8, 7, 4, 6, 3, 3, 1, 1, 1, 1, true, 2)},
      {"groups 2 stride 2 valid", geometry(2, 9, 8, 6, 4, 3, 3, 2, 2, 1, 1, false, 2)},
      {"depthwise stride 2 same", geometry(2, 9, 10, 5, 5, 3, 3, 2, 2, 1, 1, true, 5)},
      {"depthwise multiplier 2", geometry(3, 8, 7, 3, 6, 3, 3, 1, 1, 1, 1, true, 3)},
      {"depthwise multiplier 2 dilation 2 valid", geometry(2, 11, 9, 3, 6, 3, 3, 1, 1, 2, 2, false, 3)},
      {"depthwise multiplier 3 5x5 stride 2", geometry(2, 13, 12, 2, 6, 5, 5, 2, 2, 1, 1, true, 2)},
      {"pointwise 1x1 (one gemm)", geometry(2, 6, 5, 7, 3, 1, 1, 1, 1, 1, 1, false, 1)},
      {"1x1 stride 2", geometry(2, 7, 6, 4, 3, 1, 1, 2, 2, 1, 1, true, 1)},
      {"batch 1, 5x3 stride (2,1) same", geometry(1, 9, 6, 3, 4, 5, 3, 2, 1, 1, 1, true, 1)},
      {"one input channel", geometry(2, 6, 6, 1, 4, 3, 3, 1, 1, 1, 1, true, 1)},
      {"kernel larger than the input, same", geometry(2, 2, 3, 2, 3, 5, 5, 1, 1, 1, 1, true, 1)},
      // 1.2 MB of columns per sample: two column blocks (27 + 5 samples), the kernel gradient summed
      // over them with beta = 1.
      {"multi-block 32x32x32 -> 32", geometry(32, 32, 32, 32, 32, 3, 3, 1, 1, 1, 1, true, 1)},
      // 40·16·16 positions: the depthwise kernel gradient in several chunks.
      {"depthwise, chunked kernel gradient", geometry(40, 16, 16, 4, 8, 3, 3, 1, 1, 1, 1, true, 4)},
  };
}

std::vector<WindowCase> pool_cases() {
  return {
      {"2x2 stride 2 valid", geometry(2, 8, 6, 3, 3, 2, 2, 2, 2, 1, 1, false, 1)},
      {"3x3 stride 2 same, odd sizes", geometry(2, 9, 7, 3, 3, 3, 3, 2, 2, 1, 1, true, 1)},
      {"3x3 stride 1 same, batch 1", geometry(1, 5, 6, 4, 4, 3, 3, 1, 1, 1, 1, true, 1)},
      {"2x3 stride (1,2) valid", geometry(2, 7, 9, 2, 2, 2, 3, 1, 2, 1, 1, false, 1)},
      {"4x4 stride 3 same", geometry(2, 10, 11, 2, 2, 4, 4, 3, 3, 1, 1, true, 1)},
      {"3x3 stride 2 same, 64 channels", geometry(4, 16, 15, 64, 64, 3, 3, 2, 2, 1, 1, true, 1)},
  };
}

Shape in_shape(const ops::Window2d& g) { return {g.batch, g.in_h, g.in_w, g.in_c}; }
Shape out_shape(const ops::Window2d& g) { return {g.batch, g.out_h, g.out_w, g.out_c}; }
// Outputs start as NaN, so an element a kernel leaves unwritten shows.
Tensor gpu_nan(const Shape& s) { return Tensor::full(s, std::numeric_limits<double>::quiet_NaN(), Device::CUDA); }

TEST_F(Gpu, Conv2dForwardAndGradients) {
  using ops::KernelPath;
  uint64_t seed = 200;
  for (const WindowCase& c : conv_cases()) {
    SCOPED_TRACE(c.name);
    const ops::Window2d& g = c.g;
    const bool depthwise = g.groups > 1 && g.groups == g.in_c;
    const Shape xs = in_shape(g), ys = out_shape(g), ws{g.k_h, g.k_w, g.in_c / g.groups, g.out_c};
    const Tensor x = cpu_uniform(xs, seed++), w = cpu_uniform(ws, seed++), dy = cpu_uniform(ys, seed++);
    const Tensor gx = on_gpu(x), gw = on_gpu(w), gdy = on_gpu(dy);

    Tensor y_ref(ys), y_cpu(ys), gy = gpu_nan(ys), gy2 = gpu_nan(ys);
    ops::conv2d_forward(x, w, g, y_ref, KernelPath::Reference);
    ops::conv2d_forward(x, w, g, y_cpu);
    ops::conv2d_forward(gx, gw, g, gy);
    ops::conv2d_forward(gx, gw, g, gy2, KernelPath::Reference);  // ignored on CUDA: the same kernel
    EXPECT_GPU_NEAR(gy, y_ref, kConvTol);
    EXPECT_GPU_NEAR(gy, y_cpu, kConvTol);
    EXPECT_GPU_BITWISE(gy2, gy);

    Tensor dx_ref(xs), dx_cpu(xs), gdx = gpu_nan(xs), gdx2 = gpu_nan(xs);
    ops::conv2d_backward_data(dy, w, g, dx_ref, KernelPath::Reference);
    ops::conv2d_backward_data(dy, w, g, dx_cpu);
    ops::conv2d_backward_data(gdy, gw, g, gdx);
    ops::conv2d_backward_data(gdy, gw, g, gdx2);
    EXPECT_GPU_NEAR(gdx, dx_ref, kConvTol);
    EXPECT_GPU_NEAR(gdx, dx_cpu, kConvTol);
    EXPECT_GPU_BITWISE(gdx2, gdx);

    Tensor dw_ref(ws), dw_cpu(ws), gdw = gpu_nan(ws), gdw2 = gpu_nan(ws);
    ops::conv2d_backward_filter(x, dy, g, dw_ref, KernelPath::Reference);
    ops::conv2d_backward_filter(x, dy, g, dw_cpu);
    ops::conv2d_backward_filter(gx, gdy, g, gdw);
    ops::conv2d_backward_filter(gx, gdy, g, gdw2);
    EXPECT_GPU_NEAR(gdw, dw_ref, kConvTol);
    EXPECT_GPU_NEAR(gdw, dw_cpu, kConvTol);
    EXPECT_GPU_BITWISE(gdw2, gdw);

    if (depthwise)
      std::printf("[ gpu      ] %s: elements differing from the CPU's bits: y %lld of %lld, dx %lld of %lld\n",
                  c.name.c_str(), (long long)count_different(gy, y_cpu), (long long)y_cpu.numel(),
                  (long long)count_different(gdx, dx_cpu), (long long)dx_cpu.numel());
  }
}

TEST_F(Gpu, PoolingBitwise) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  uint64_t seed = 300;
  for (const WindowCase& c : pool_cases())
    for (bool ties : {false, true}) {
      SCOPED_TRACE(c.name + (ties ? " (ties, a NaN)" : ""));
      const ops::Window2d& g = c.g;
      const Shape xs = in_shape(g), ys = out_shape(g);
      Tensor x = cpu_uniform(xs, seed++);
      if (ties) {  // values on a grid of 0.5: most windows hold their max more than once
        std::vector<float> v = x.to_vector();
        for (float& e : v) e = std::round(e * 2.0f) / 2.0f;
        v[v.size() / 3] = nan;  // never the max, never given a gradient
        x = Tensor::from_vector(xs, v);
      }
      const Tensor dy = cpu_uniform(ys, seed++);
      const Tensor gx = on_gpu(x), gdy = on_gpu(dy);

      Tensor y(ys), gy = gpu_nan(ys), gy2 = gpu_nan(ys);
      ops::max_pool2d_forward(x, g, y);
      ops::max_pool2d_forward(gx, g, gy);
      ops::max_pool2d_forward(gx, g, gy2);
      EXPECT_GPU_BITWISE(gy, y);
      EXPECT_GPU_BITWISE(gy2, gy);
      // The backward from the CPU's y on both sides, so only the backward kernel is compared.
      Tensor dx(xs), gdx = gpu_nan(xs), gdx2 = gpu_nan(xs);
      const Tensor gyc = on_gpu(y);
      ops::max_pool2d_backward(x, y, dy, g, dx);
      ops::max_pool2d_backward(gx, gyc, gdy, g, gdx);
      ops::max_pool2d_backward(gx, gyc, gdy, g, gdx2);
      EXPECT_GPU_BITWISE(gdx, dx);
      EXPECT_GPU_BITWISE(gdx2, gdx);
      // With the ReLU gate (x a ReLU's output: an output whose maximum is not > 0 routes nothing).
      Tensor rdx(xs), grdx = gpu_nan(xs);
      ops::max_pool2d_backward(x, y, dy, g, rdx, true);
      ops::max_pool2d_backward(gx, gyc, gdy, g, grdx, true);
      EXPECT_GPU_BITWISE(grdx, rdx);

      Tensor a(ys), ga = gpu_nan(ys), ga2 = gpu_nan(ys);
      ops::avg_pool2d_forward(x, g, a);
      ops::avg_pool2d_forward(gx, g, ga);
      ops::avg_pool2d_forward(gx, g, ga2);
      EXPECT_GPU_BITWISE(ga, a);
      EXPECT_GPU_BITWISE(ga2, ga);
      Tensor da(xs), gda = gpu_nan(xs), gda2 = gpu_nan(xs);
      ops::avg_pool2d_backward(dy, g, da);
      ops::avg_pool2d_backward(gdy, g, gda);
      ops::avg_pool2d_backward(gdy, g, gda2);
      EXPECT_GPU_BITWISE(gda, da);
      EXPECT_GPU_BITWISE(gda2, gda);
    }
}

TEST_F(Gpu, Pad2dBitwise) {
  struct Case {
    Shape small, big;
    int64_t top, left;
  };
  const Case cases[] = {{{2, 5, 4, 3}, {2, 9, 7, 3}, 1, 2},
                        {{1, 3, 3, 1}, {1, 4, 5, 1}, 0, 0},
                        {{3, 7, 6, 5}, {3, 8, 6, 5}, 1, 0},
                        {{2, 4, 4, 2}, {2, 4, 4, 2}, 0, 0}};
  uint64_t seed = 400;
  for (const Case& c : cases) {
    SCOPED_TRACE(shape_str(c.small) + " in " + shape_str(c.big));
    // into the big map: every element written (the padding as zeros over a non-zero fill)
    const Tensor small = cpu_uniform(c.small, seed++);
    Tensor big = Tensor::full(c.big, 7.0), gbig = Tensor::full(c.big, 7.0, Device::CUDA);
    ops::pad2d(small, big, c.top, c.left, true);
    ops::pad2d(on_gpu(small), gbig, c.top, c.left, true);
    EXPECT_GPU_BITWISE(gbig, big);
    // back: the block of a random big map
    const Tensor src = cpu_uniform(c.big, seed++);
    Tensor back(c.small), gback = gpu_nan(c.small);
    ops::pad2d(back, src, c.top, c.left, false);
    ops::pad2d(gback, on_gpu(src), c.top, c.left, false);
    EXPECT_GPU_BITWISE(gback, back);
  }
}

TEST_F(Gpu, ScaleChannelsBitwise) {
  for (const Shape& s : {Shape{3, 5, 4, 6}, Shape{1, 7, 1}, Shape{4, 9}}) {
    SCOPED_TRACE(shape_str(s));
    const Tensor x = cpu_normal(s, 500), m = cpu_uniform({s.front(), s.back()}, 501, 0.0, 2.0);
    Tensor y(s), gy = gpu_nan(s);
    ops::scale_channels(x, m, y);
    ops::scale_channels(on_gpu(x), on_gpu(m), gy);
    EXPECT_GPU_BITWISE(gy, y);
    Tensor gx = on_gpu(x);  // in place (y aliases x), as SpatialDropout2D uses it
    ops::scale_channels(gx, on_gpu(m), gx);
    EXPECT_GPU_BITWISE(gx, y);
  }
}

}  // namespace
}  // namespace lockstep::gpu_test
