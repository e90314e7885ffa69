// CPU kernels of the window ops: convolution (Keras's Conv2D and DepthwiseConv2D), pooling, zero padding,
// per-channel scaling. Maps are NHWC, kernels [k_h, k_w, in_c/groups, out_c].
//
// Two paths per convolution:
//  * reference: plain loops over the definition, accumulating in double (ops::KernelPath::Reference; the
//    tests hold the fast path to them);
//  * fast: lowering to products. A 1x1 stride-1 unpadded convolution is one product over all N·H·W pixels;
//    any other grouped convolution copies each group's receptive fields into a column matrix (im2col,
//    [pixels, k_h·k_w·in_c/groups]: the kernel's own row order, so the kernel is the product's right-hand
//    side unchanged) for a block of samples at a time, and hands the product to kernels::gemm (OpenBLAS or
//    libxsmm). The input gradient is the product with the kernel transposed followed by the scatter-add
//    of the columns (col2im); the kernel gradient is the columns transposed times dy, summed over blocks.
//    A depthwise convolution (one input channel per group) has products too thin to pay: it runs direct
//    loops, vectorised over channels.
// A float convolution may instead run our Winograd kernels (kernels/winograd_cpu.cpp) or oneDNN's direct ones
// (kernels/conv_onednn.cpp): ops::conv_route() chooses, and its Auto route follows winograd_wins() and
// onednn_wins() below, rules measured per shape and op. float64 always runs the kernels of this file.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/kernels/conv_onednn.h"
#include "core/kernels/cpu.h"
#include "core/kernels/winograd_cpu.h"

namespace lockstep::kernels {

using ops::Window2d;

namespace {

// Column blocks of about this many bytes: large enough for the products to run near the GEMM roofline,
// small enough to stay in the last-level cache alongside the operands.
constexpr int64_t kColumnBytes = int64_t(4) << 20;
constexpr int64_t kParallelWork = 1 << 15;

int64_t pix(const Window2d& g, int64_t n, int64_t h, int64_t w) { return (n * g.in_h + h) * g.in_w + w; }

// f(tap, ih, iw) for each tap of output (oh, ow)'s window that falls inside the input (padding skipped), in
// row-major tap order (tap = kh·k_w + kw).
template <typename F> inline void for_taps(const Window2d& g, int64_t oh, int64_t ow, F&& f) {
  for (int64_t kh = 0; kh < g.k_h; ++kh) {
    const int64_t ih = g.in_row(oh, kh);
    if (ih < 0 || ih >= g.in_h) continue;
    for (int64_t kw = 0; kw < g.k_w; ++kw) {
      const int64_t iw = g.in_col(ow, kw);
      if (iw < 0 || iw >= g.in_w) continue;
      f(kh * g.k_w + kw, ih, iw);
    }
  }
}

// f(n, oh, ow, ih, iw) for each output position whose window's tap (kh, kw) falls inside the input: the
// positions a kernel gradient's tap sums over.
template <typename F> inline void for_tap_outputs(const Window2d& g, int64_t kh, int64_t kw, F&& f) {
  for (int64_t n = 0; n < g.batch; ++n)
    for (int64_t oh = 0; oh < g.out_h; ++oh) {
      const int64_t ih = g.in_row(oh, kh);
      if (ih < 0 || ih >= g.in_h) continue;
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const int64_t iw = g.in_col(ow, kw);
        if (iw < 0 || iw >= g.in_w) continue;
        f(n, oh, ow, ih, iw);
      }
    }
}

bool pointwise(const Window2d& g) {
  return g.k_h == 1 && g.k_w == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_top == 0 && g.pad_left == 0 &&
         g.groups == 1 && g.out_h == g.in_h && g.out_w == g.in_w;
}
bool depthwise(const Window2d& g) { return g.groups > 1 && g.groups == g.in_c; }

// Samples per column block.
template <typename T> int64_t block_samples(const Window2d& g, int64_t k) {
  const int64_t per_sample = g.out_h * g.out_w * k * int64_t(sizeof(T));
  return std::clamp<int64_t>(kColumnBytes / std::max<int64_t>(per_sample, 1), 1, std::max<int64_t>(g.batch, 1));
}

// C = op(A)·op(B) (+ C when beta is 1) through kernels::gemm (libxsmm or OpenBLAS by size).
template <typename T>
void product(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T beta,
             T* c, int64_t ldc) {
  gemm(Cpu{}, ta, tb, m, n, k, T(1), a, lda, b, ldb, beta, c, ldc);
}

template <typename T> std::vector<T>& scratch() {
  static thread_local std::vector<T> v;
  return v;
}
template <typename T> T* scratch_of(int64_t n) {
  auto& v = scratch<T>();
  if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
  return v.data();
}

// col[m, (kh, kw, ci)] = x[n, in_row, in_col, grp·cg + ci] for the output pixels of samples [n0, n0 + nb).
template <typename T> void im2col(const T* x, const Window2d& g, int64_t grp, int64_t n0, int64_t nb, T* col) {
  const int64_t cg = g.in_c / g.groups, k = g.k_h * g.k_w * cg;
  const int64_t rows = nb * g.out_h * g.out_w;
  // With groups == 1 and no dilation across columns, a kernel row's taps are one contiguous run of x.
  const bool runs = g.groups == 1 && g.dil_w == 1;
#pragma omp parallel for if (rows * k >= kParallelWork && omp_get_max_threads() > 1)
  for (int64_t m = 0; m < rows; ++m) {
    const int64_t ow = m % g.out_w, oh = (m / g.out_w) % g.out_h, n = n0 + m / (g.out_w * g.out_h);
    T* dst = col + m * k;
    for (int64_t kh = 0; kh < g.k_h; ++kh) {
      const int64_t ih = g.in_row(oh, kh);
      T* d = dst + kh * g.k_w * cg;
      if (ih < 0 || ih >= g.in_h) {
        std::fill(d, d + g.k_w * cg, T(0));
        continue;
      }
      const int64_t iw0 = g.in_col(ow, 0);
      if (runs && iw0 >= 0 && iw0 + g.k_w <= g.in_w) {
        std::memcpy(d, x + pix(g, n, ih, iw0) * g.in_c, sizeof(T) * size_t(g.k_w * cg));
        continue;
      }
      for (int64_t kw = 0; kw < g.k_w; ++kw) {
        const int64_t iw = g.in_col(ow, kw);
        T* dd = d + kw * cg;
        if (iw < 0 || iw >= g.in_w) std::fill(dd, dd + cg, T(0));
        else std::memcpy(dd, x + pix(g, n, ih, iw) * g.in_c + grp * cg, sizeof(T) * size_t(cg));
      }
    }
  }
}

// dx[n, in_row, in_col, grp·cg + ci] += col[m, (kh, kw, ci)]. Parallel over samples: no two threads add
// into one sample.
template <typename T> void col2im(const T* col, const Window2d& g, int64_t grp, int64_t n0, int64_t nb, T* dx) {
  const int64_t cg = g.in_c / g.groups, k = g.k_h * g.k_w * cg, per = g.out_h * g.out_w;
#pragma omp parallel for if (nb * per * k >= kParallelWork && nb > 1 && omp_get_max_threads() > 1)
  for (int64_t s = 0; s < nb; ++s) {
    const int64_t n = n0 + s;
    for (int64_t p = 0; p < per; ++p) {
      const int64_t oh = p / g.out_w, ow = p % g.out_w;
      const T* src = col + (s * per + p) * k;
      for_taps(g, oh, ow, [&](int64_t tap, int64_t ih, int64_t iw) {
        T* d = dx + pix(g, n, ih, iw) * g.in_c + grp * cg;
        const T* c = src + tap * cg;
#pragma omp simd
        for (int64_t i = 0; i < cg; ++i) d[i] += c[i];
      });
    }
  }
}

// ---- reference loops (double accumulation) --------------------------------------------------------------
template <typename T> void ref_forward(const T* x, const T* w, const Window2d& g, T* y) {
  const int64_t cg = g.in_c / g.groups, og = g.out_c / g.groups;
  for (int64_t n = 0; n < g.batch; ++n)
    for (int64_t oh = 0; oh < g.out_h; ++oh)
      for (int64_t ow = 0; ow < g.out_w; ++ow)
        for (int64_t oc = 0; oc < g.out_c; ++oc) {
          const int64_t grp = oc / og;
          double acc = 0;
          for_taps(g, oh, ow, [&](int64_t tap, int64_t ih, int64_t iw) {
            for (int64_t ci = 0; ci < cg; ++ci)
              acc += double(x[pix(g, n, ih, iw) * g.in_c + grp * cg + ci]) *
                     double(w[(tap * cg + ci) * g.out_c + oc]);
          });
          y[((n * g.out_h + oh) * g.out_w + ow) * g.out_c + oc] = T(acc);
        }
}

// The output index along one axis that tap k maps input position i to, or -1.
inline int64_t out_of(int64_t i, int64_t k, int64_t pad, int64_t stride, int64_t dil, int64_t out) {
  const int64_t t = i + pad - k * dil;
  if (t < 0 || t % stride != 0) return -1;
  return t / stride < out ? t / stride : -1;
}

template <typename T> void ref_backward_data(const T* dy, const T* w, const Window2d& g, T* dx) {
  const int64_t cg = g.in_c / g.groups, og = g.out_c / g.groups;
  for (int64_t n = 0; n < g.batch; ++n)
    for (int64_t ih = 0; ih < g.in_h; ++ih)
      for (int64_t iw = 0; iw < g.in_w; ++iw)
        for (int64_t c = 0; c < g.in_c; ++c) {
          const int64_t grp = c / cg, ci = c % cg;
          double acc = 0;
          for (int64_t kh = 0; kh < g.k_h; ++kh) {
            const int64_t oh = out_of(ih, kh, g.pad_top, g.stride_h, g.dil_h, g.out_h);
            if (oh < 0) continue;
            for (int64_t kw = 0; kw < g.k_w; ++kw) {
              const int64_t ow = out_of(iw, kw, g.pad_left, g.stride_w, g.dil_w, g.out_w);
              if (ow < 0) continue;
              for (int64_t o = 0; o < og; ++o) {
                const int64_t oc = grp * og + o;
                acc += double(dy[((n * g.out_h + oh) * g.out_w + ow) * g.out_c + oc]) *
                       double(w[((kh * g.k_w + kw) * cg + ci) * g.out_c + oc]);
              }
            }
          }
          dx[pix(g, n, ih, iw) * g.in_c + c] = T(acc);
        }
}

template <typename T> void ref_backward_filter(const T* x, const T* dy, const Window2d& g, T* dw) {
  const int64_t cg = g.in_c / g.groups, og = g.out_c / g.groups;
  for (int64_t kh = 0; kh < g.k_h; ++kh)
    for (int64_t kw = 0; kw < g.k_w; ++kw)
      for (int64_t ci = 0; ci < cg; ++ci)
        for (int64_t oc = 0; oc < g.out_c; ++oc) {
          const int64_t c = (oc / og) * cg + ci;
          double acc = 0;
          for_tap_outputs(g, kh, kw, [&](int64_t n, int64_t oh, int64_t ow, int64_t ih, int64_t iw) {
            acc += double(x[pix(g, n, ih, iw) * g.in_c + c]) *
                   double(dy[((n * g.out_h + oh) * g.out_w + ow) * g.out_c + oc]);
          });
          dw[((kh * g.k_w + kw) * cg + ci) * g.out_c + oc] = T(acc);
        }
}

// ---- depthwise: direct loops over channels ----------------------------------------------------------------
// Output channel oc reads input channel oc / mult (mult = out_c / in_c, Keras's depth_multiplier).
template <typename T> void dw_forward(const T* x, const T* w, const Window2d& g, T* y) {
  const int64_t mult = g.out_c / g.in_c, oc_n = g.out_c;
#pragma omp parallel for if (g.batch * g.out_h * g.out_w * oc_n * g.k_h * g.k_w >= kParallelWork && omp_get_max_threads() > 1)
  for (int64_t r = 0; r < g.batch * g.out_h; ++r) {
    const int64_t n = r / g.out_h, oh = r % g.out_h;
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      T* yo = y + ((n * g.out_h + oh) * g.out_w + ow) * oc_n;
      std::fill(yo, yo + oc_n, T(0));
      for_taps(g, oh, ow, [&](int64_t tap, int64_t ih, int64_t iw) {
        const T* xi = x + pix(g, n, ih, iw) * g.in_c;
        const T* wk = w + tap * oc_n;
        if (mult == 1) {
#pragma omp simd
          for (int64_t c = 0; c < oc_n; ++c) yo[c] += xi[c] * wk[c];
        } else {
          for (int64_t c = 0; c < oc_n; ++c) yo[c] += xi[c / mult] * wk[c];
        }
      });
    }
  }
}
template <typename T> void dw_backward_data(const T* dy, const T* w, const Window2d& g, T* dx) {
  const int64_t mult = g.out_c / g.in_c, oc_n = g.out_c;
  std::fill(dx, dx + g.batch * g.in_h * g.in_w * g.in_c, T(0));
#pragma omp parallel for if (g.batch > 1 && g.batch * g.out_h * g.out_w * oc_n * g.k_h * g.k_w >= kParallelWork && omp_get_max_threads() > 1)
  for (int64_t n = 0; n < g.batch; ++n)
    for (int64_t oh = 0; oh < g.out_h; ++oh)
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const T* dyo = dy + ((n * g.out_h + oh) * g.out_w + ow) * oc_n;
        for_taps(g, oh, ow, [&](int64_t tap, int64_t ih, int64_t iw) {
          T* dxi = dx + pix(g, n, ih, iw) * g.in_c;
          const T* wk = w + tap * oc_n;
          if (mult == 1) {
#pragma omp simd
            for (int64_t c = 0; c < oc_n; ++c) dxi[c] += dyo[c] * wk[c];
          } else {
            for (int64_t c = 0; c < oc_n; ++c) dxi[c / mult] += dyo[c] * wk[c];
          }
        });
      }
}
template <typename T> void dw_backward_filter(const T* x, const T* dy, const Window2d& g, T* dw) {
  const int64_t mult = g.out_c / g.in_c, oc_n = g.out_c, taps = g.k_h * g.k_w;
  // One tap per iteration: threads never write the same part of dw.
#pragma omp parallel for if (taps > 1 && g.batch * g.out_h * g.out_w * oc_n * taps >= kParallelWork && omp_get_max_threads() > 1)
  for (int64_t t = 0; t < taps; ++t) {
    const int64_t kh = t / g.k_w, kw = t % g.k_w;
    T* dwk = dw + t * oc_n;
    std::fill(dwk, dwk + oc_n, T(0));
    for_tap_outputs(g, kh, kw, [&](int64_t n, int64_t oh, int64_t ow, int64_t ih, int64_t iw) {
      const T* xi = x + pix(g, n, ih, iw) * g.in_c;
      const T* dyo = dy + ((n * g.out_h + oh) * g.out_w + ow) * oc_n;
      if (mult == 1) {
#pragma omp simd
        for (int64_t c = 0; c < oc_n; ++c) dwk[c] += xi[c] * dyo[c];
      } else {
        for (int64_t c = 0; c < oc_n; ++c) dwk[c] += xi[c / mult] * dyo[c];
      }
    });
  }
}

// ---- oneDNN or our own: ops::conv_route() and the per-shape rule ------------------------------------------
enum class ConvOp { Forward, BackwardData, BackwardFilter };

// The rule behind ConvRoute::Auto, from tests/bench/conv_onednn_bench.cpp on one Zen 4 core (oneDNN 2.6,
// kernel in oneDNN's layout with its reorders counted; docs/performance.md "oneDNN or our own, per layer
// shape"). oneDNN's direct kernels beat im2col + products on 72 of the 74 layer-ops of the CNN and ResNet-20
// at batch 32 and 128 (1.02-2.95x; ResNet-20's last 1x1 stride-2 shortcut forward runs at 0.88-0.90x, 0.05 ms
// a step, left to oneDNN), and on the other kinds timed (dilated, 5x5, strided 7x7: 1.0-2.9x; grouped
// 1.3-8.1x; depthwise 1.1-8.8x, one input gradient 0.92x), with two exceptions:
//  * the pointwise product (1x1, stride 1, unpadded): ours is level for the forward and the input gradient
//    (0.92-1.05x), oneDNN's kernel gradient is 1.2x faster at batch 32 and 2.8-4.5x at batch 128;
//  * the input gradient of an ungrouped convolution with fewer than 16 input channels: oneDNN's backward-data
//    kernel vectorises over 16 input channels and ran 0.21-1.0x of ours (1, 3 and 8 channels). The networks
//    never compute it (their stems take the images).
bool onednn_wins(const Window2d& g, ConvOp op) {
  if (pointwise(g)) return op == ConvOp::BackwardFilter;
  if (op == ConvOp::BackwardData && g.groups == 1 && g.in_c < 16) return false;
  return true;
}

// Our Winograd (kernels/winograd_cpu.cpp) behind ConvRoute::Auto, from the same benchmark (its `ownwino` way)
// on one Zen 4 core (docs/performance.md, "oneDNN or our own, per layer shape"): on every op of the networks'
// 3x3 stride-1 layers with 32 to 256 channels at batch 32 and 128, 1.76-2.76x oneDNN's direct kernels (and
// 0.96-1.83x oneDNN 2.6's own Winograd, which oneDNN 3.x does not have for x86 CPUs); with 16 channels
// (ResNet-20's first stage) 1.12-1.59x; the 3-channel stem 0.2-0.3x. The input gradient's products run over
// the output channels: with 3 or 8 input channels and 16 or 32 output channels it runs 1.3-1.7x oneDNN's
// direct kernel and 1.5-2.1x our im2col + col2im (which the rule below takes there), the other two ops
// 0.25-0.9x.
bool winograd_wins(const Window2d& g, ConvOp op) {
  if (!winograd::supports(g)) return false;
  if (g.in_c >= 16 && g.out_c >= 16) return true;
  return op == ConvOp::BackwardData && g.out_c >= 16;
}

// How a float convolution runs.
enum class Way { Own, Winograd, OneDnn };
template <typename T> Way way_of(const Window2d& g, ConvOp op) {
  if constexpr (!std::is_same_v<T, float>) {
    return Way::Own;
  } else {
    const ops::ConvRoute route = ops::conv_route();
    if (route == ops::ConvRoute::Own) return Way::Own;
    if (route == ops::ConvRoute::Winograd && winograd::supports(g)) return Way::Winograd;
    if (route == ops::ConvRoute::Auto && winograd_wins(g, op)) return Way::Winograd;
    if (!onednn::supports(g)) return Way::Own;
    if (route == ops::ConvRoute::OneDnn) return Way::OneDnn;
    return onednn_wins(g, op) ? Way::OneDnn : Way::Own;
  }
}

// oneDNN's direct kernels get the kernel in their own layout, reordered on every call (with the kernel in
// Keras's layout as it is, `hwio`, oneDNN 2.6 falls back to its im2col + GEMM: 0.3-1.2x of ours, never the
// fastest way).
constexpr onednn::Way kOneDnnWay = onednn::Way::Blocked;

}  // namespace

// ---- convolutions ---------------------------------------------------------------------------------------
template <typename T> void conv2d_forward(Cpu, const T* x, const T* w, const Window2d& g, T* y, bool reference) {
  if (reference) return ref_forward(x, w, g, y);
  conv2d_forward(Cpu{}, x, w, g, y, Epilogue<T>{});
}

template <typename T>
void conv2d_forward(Cpu, const T* x, const T* w, const Window2d& g, T* y, const Epilogue<T>& ep) {
  const int64_t pixels = g.out_h * g.out_w;
  if constexpr (std::is_same_v<T, float>)
    switch (way_of<T>(g, ConvOp::Forward)) {
      case Way::Winograd: return winograd::forward(x, w, g, y, ep);
      case Way::OneDnn:
        onednn::conv2d_forward(x, w, g, y, kOneDnnWay);
        return ep.apply_in_blocks(y, g.batch * pixels, g.out_c);
      case Way::Own: break;
    }
  if (depthwise(g)) {
    dw_forward(x, w, g, y);
    return ep.apply_in_blocks(y, g.batch * pixels, g.out_c);
  }
  if (pointwise(g)) {
    product<T>(false, false, g.batch * pixels, g.out_c, g.in_c, x, g.in_c, w, g.out_c, T(0), y, g.out_c);
    return ep.apply_in_blocks(y, g.batch * pixels, g.out_c);
  }
  const int64_t cg = g.in_c / g.groups, og = g.out_c / g.groups, k = g.k_h * g.k_w * cg;
  const int64_t nb = block_samples<T>(g, k);
  T* col = scratch_of<T>(nb * pixels * k);
  for (int64_t n0 = 0; n0 < g.batch; n0 += nb) {
    const int64_t b = std::min(nb, g.batch - n0), rows = b * pixels;
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      im2col(x, g, grp, n0, b, col);
      product<T>(false, false, rows, og, k, col, k, w + grp * og, g.out_c, T(0),
           y + n0 * pixels * g.out_c + grp * og, g.out_c);
    }
    if (!ep.empty()) ep.apply(y + n0 * pixels * g.out_c, rows, g.out_c);  // the block's outputs, all groups
  }
}

template <typename T>
void conv2d_backward_data(Cpu, const T* dy, const T* w, const Window2d& g, T* dx, bool reference) {
  if (reference) return ref_backward_data(dy, w, g, dx);
  if constexpr (std::is_same_v<T, float>)
    switch (way_of<T>(g, ConvOp::BackwardData)) {
      case Way::Winograd: return winograd::backward_data(dy, w, g, dx);
      case Way::OneDnn: return onednn::conv2d_backward_data(dy, w, g, dx, kOneDnnWay);
      case Way::Own: break;
    }
  if (depthwise(g)) return dw_backward_data(dy, w, g, dx);
  const int64_t pixels = g.out_h * g.out_w;
  if (pointwise(g))
    return product<T>(false, true, g.batch * pixels, g.in_c, g.out_c, dy, g.out_c, w, g.out_c, T(0), dx, g.in_c);
  const int64_t cg = g.in_c / g.groups, og = g.out_c / g.groups, k = g.k_h * g.k_w * cg;
  std::fill(dx, dx + g.batch * g.in_h * g.in_w * g.in_c, T(0));
  const int64_t nb = block_samples<T>(g, k);
  T* col = scratch_of<T>(nb * pixels * k);
  for (int64_t n0 = 0; n0 < g.batch; n0 += nb) {
    const int64_t b = std::min(nb, g.batch - n0), rows = b * pixels;
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      product<T>(false, true, rows, k, og, dy + n0 * pixels * g.out_c + grp * og, g.out_c, w + grp * og,
           g.out_c, T(0), col, k);
      col2im(col, g, grp, n0, b, dx);
    }
  }
}

template <typename T>
void conv2d_backward_filter(Cpu, const T* x, const T* dy, const Window2d& g, T* dw, bool reference) {
  if (reference) return ref_backward_filter(x, dy, g, dw);
  if constexpr (std::is_same_v<T, float>)
    switch (way_of<T>(g, ConvOp::BackwardFilter)) {
      case Way::Winograd: return winograd::backward_filter(x, dy, g, dw);
      case Way::OneDnn: return onednn::conv2d_backward_filter(x, dy, g, dw, kOneDnnWay);
      case Way::Own: break;
    }
  if (depthwise(g)) return dw_backward_filter(x, dy, g, dw);
  // An empty batch: no block (nor a product of depth 0, which only scales dw by beta) would assign dw.
  if (g.batch == 0) return std::fill(dw, dw + g.k_h * g.k_w * (g.in_c / g.groups) * g.out_c, T(0));
  const int64_t pixels = g.out_h * g.out_w;
  if (pointwise(g))
    return gemm_weight_grad(Cpu{}, g.in_c, g.out_c, g.batch * pixels, x, g.in_c, dy, g.out_c, T(0), dw, g.out_c);
  const int64_t cg = g.in_c / g.groups, og = g.out_c / g.groups, k = g.k_h * g.k_w * cg;
  const int64_t nb = block_samples<T>(g, k);
  T* col = scratch_of<T>(nb * pixels * k);
  for (int64_t n0 = 0; n0 < g.batch; n0 += nb) {
    const int64_t b = std::min(nb, g.batch - n0), rows = b * pixels;
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      im2col(x, g, grp, n0, b, col);
      gemm_weight_grad(Cpu{}, k, og, rows, col, k, dy + n0 * pixels * g.out_c + grp * og, g.out_c,
                       T(n0 == 0 ? 0 : 1), dw + grp * og, g.out_c);
    }
  }
}

// ---- pooling ---------------------------------------------------------------------------------------------
template <typename T> void max_pool2d_forward(Cpu, const T* x, const Window2d& g, T* y) {
  const int64_t c_n = g.in_c;
#pragma omp parallel for if (g.batch * g.out_h * g.out_w * c_n * g.k_h * g.k_w >= kParallelWork && omp_get_max_threads() > 1)
  for (int64_t r = 0; r < g.batch * g.out_h; ++r) {
    const int64_t n = r / g.out_h, oh = r % g.out_h;
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      T* yo = y + ((n * g.out_h + oh) * g.out_w + ow) * c_n;
      std::fill(yo, yo + c_n, -std::numeric_limits<T>::infinity());
      for_taps(g, oh, ow, [&](int64_t, int64_t ih, int64_t iw) {
        const T* xi = x + pix(g, n, ih, iw) * c_n;
#pragma omp simd
        for (int64_t c = 0; c < c_n; ++c) yo[c] = xi[c] > yo[c] ? xi[c] : yo[c];
      });
    }
  }
}

template <typename T>
void max_pool2d_backward(Cpu, const T* x, const T* y, const T* dy, const Window2d& g, T* dx, bool relu_gate) {
  const int64_t c_n = g.in_c;
  std::fill(dx, dx + g.batch * g.in_h * g.in_w * c_n, T(0));
  // Per sample: windows of one sample overlap, so a sample's outputs are one thread's.
#pragma omp parallel for if (g.batch > 1 && g.batch * g.out_h * g.out_w * c_n * g.k_h * g.k_w >= kParallelWork && omp_get_max_threads() > 1)
  // Each output's gradient goes to the first tap (in window order) that holds the maximum, as TensorFlow's
  // MaxPoolGrad routes it: per channel, `open` is 1 until that tap is met, 0 after (vectorised over channels).
  for (int64_t n = 0; n < g.batch; ++n) {
    std::vector<T> open_(static_cast<size_t>(c_n));
    T* open = open_.data();
    for (int64_t oh = 0; oh < g.out_h; ++oh)
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const int64_t o = ((n * g.out_h + oh) * g.out_w + ow) * c_n;
        const T *yo = y + o, *dyo = dy + o;
        if (relu_gate) {
#pragma omp simd
          for (int64_t c = 0; c < c_n; ++c) open[c] = yo[c] > T(0) ? T(1) : T(0);
        } else {
          std::fill(open, open + c_n, T(1));
        }
        for_taps(g, oh, ow, [&](int64_t, int64_t ih, int64_t iw) {
          const int64_t i = pix(g, n, ih, iw) * c_n;
          const T* xi = x + i;
          T* dxi = dx + i;
#pragma omp simd
          for (int64_t c = 0; c < c_n; ++c) {
            const bool hit = open[c] != T(0) && xi[c] == yo[c];
            dxi[c] = hit ? dxi[c] + dyo[c] : dxi[c];
            open[c] = hit ? T(0) : open[c];
          }
        });
      }
  }
}

// Positions of output (oh, ow)'s window inside the input.
inline int64_t window_count(const Window2d& g, int64_t oh, int64_t ow) {
  const int64_t h0 = std::max<int64_t>(g.in_row(oh, 0), 0), h1 = std::min(g.in_row(oh, g.k_h - 1) + 1, g.in_h);
  const int64_t w0 = std::max<int64_t>(g.in_col(ow, 0), 0), w1 = std::min(g.in_col(ow, g.k_w - 1) + 1, g.in_w);
  return std::max<int64_t>(h1 - h0, 0) * std::max<int64_t>(w1 - w0, 0);
}

template <typename T> void avg_pool2d_forward(Cpu, const T* x, const Window2d& g, T* y) {
  const int64_t c_n = g.in_c;
#pragma omp parallel for if (g.batch * g.out_h * g.out_w * c_n * g.k_h * g.k_w >= kParallelWork && omp_get_max_threads() > 1)
  for (int64_t r = 0; r < g.batch * g.out_h; ++r) {
    const int64_t n = r / g.out_h, oh = r % g.out_h;
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      T* yo = y + ((n * g.out_h + oh) * g.out_w + ow) * c_n;
      std::fill(yo, yo + c_n, T(0));
      for_taps(g, oh, ow, [&](int64_t, int64_t ih, int64_t iw) {
        const T* xi = x + pix(g, n, ih, iw) * c_n;
#pragma omp simd
        for (int64_t c = 0; c < c_n; ++c) yo[c] += xi[c];
      });
      const T inv = T(1) / T(std::max<int64_t>(window_count(g, oh, ow), 1));
#pragma omp simd
      for (int64_t c = 0; c < c_n; ++c) yo[c] *= inv;
    }
  }
}

template <typename T> void avg_pool2d_backward(Cpu, const T* dy, const Window2d& g, T* dx) {
  const int64_t c_n = g.in_c;
  std::fill(dx, dx + g.batch * g.in_h * g.in_w * c_n, T(0));
#pragma omp parallel for if (g.batch > 1 && g.batch * g.out_h * g.out_w * c_n * g.k_h * g.k_w >= kParallelWork && omp_get_max_threads() > 1)
  for (int64_t n = 0; n < g.batch; ++n)
    for (int64_t oh = 0; oh < g.out_h; ++oh)
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const T* dyo = dy + ((n * g.out_h + oh) * g.out_w + ow) * c_n;
        const T inv = T(1) / T(std::max<int64_t>(window_count(g, oh, ow), 1));
        for_taps(g, oh, ow, [&](int64_t, int64_t ih, int64_t iw) {
          T* dxi = dx + pix(g, n, ih, iw) * c_n;
#pragma omp simd
          for (int64_t c = 0; c < c_n; ++c) dxi[c] += dyo[c] * inv;
        });
      }
}

// ---- padding and channel scaling -------------------------------------------------------------------------
template <typename T>
void pad2d(Cpu, T* small, T* big, int64_t n, int64_t h, int64_t w, int64_t c, int64_t bh, int64_t bw, int64_t top,
           int64_t left, bool into_big) {
  if (into_big) std::fill(big, big + n * bh * bw * c, T(0));
  for (int64_t s = 0; s < n; ++s)
    for (int64_t r = 0; r < h; ++r) {
      T* sm = small + ((s * h + r) * w) * c;
      T* bg = big + ((s * bh + r + top) * bw + left) * c;
      if (into_big) std::memcpy(bg, sm, sizeof(T) * size_t(w * c));
      else std::memcpy(sm, bg, sizeof(T) * size_t(w * c));
    }
}

template <typename T> void scale_channels(Cpu, const T* x, const T* m, T* y, int64_t n, int64_t s, int64_t c) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t p = 0; p < s; ++p) {
      const T* xi = x + (i * s + p) * c;
      const T* mi = m + i * c;
      T* yi = y + (i * s + p) * c;
#pragma omp simd
      for (int64_t k = 0; k < c; ++k) yi[k] = xi[k] * mi[k];
    }
}

#define LS_INSTANTIATE(T)                                                                                     \
  template void conv2d_forward<T>(Cpu, const T*, const T*, const Window2d&, T*, bool);                        \
  template void conv2d_forward<T>(Cpu, const T*, const T*, const Window2d&, T*, const Epilogue<T>&);          \
  template void conv2d_backward_data<T>(Cpu, const T*, const T*, const Window2d&, T*, bool);                  \
  template void conv2d_backward_filter<T>(Cpu, const T*, const T*, const Window2d&, T*, bool);                \
  template void max_pool2d_forward<T>(Cpu, const T*, const Window2d&, T*);                                    \
  template void max_pool2d_backward<T>(Cpu, const T*, const T*, const T*, const Window2d&, T*, bool);         \
  template void avg_pool2d_forward<T>(Cpu, const T*, const Window2d&, T*);                                    \
  template void avg_pool2d_backward<T>(Cpu, const T*, const Window2d&, T*);                                   \
  template void pad2d<T>(Cpu, T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,  \
                         bool);                                                                               \
  template void scale_channels<T>(Cpu, const T*, const T*, T*, int64_t, int64_t, int64_t);
LS_INSTANTIATE(float)
LS_INSTANTIATE(double)
#undef LS_INSTANTIATE

}  // namespace lockstep::kernels
