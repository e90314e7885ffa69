// CPU kernels. Loops are written to vectorise; work above kParallel elements is split over OpenMP
// threads (below it, a fork/join costs more than it saves at the batch sizes of the chapter's models).
#include "core/kernels/cpu.h"

#include <cblas.h>
#include <libxsmm.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <limits>
#include <vector>

namespace lockstep::kernels {

namespace {
constexpr int64_t kParallel = 1 << 16;
constexpr double kKerasEps = 1e-7;  // backend.epsilon()

// exp that vectorises: libm's expf is a scalar call (glibc declares its vector variants only under
// -ffast-math), which made exp-based activations (ELU, SELU, sigmoid, softmax) the slowest loops of the
// deep models. Float: Cody-Waite range reduction and Cephes's degree-6 polynomial, 2^n built in the
// exponent bits; max relative error 2e-7 (about 2 ulp) against std::exp over [-87, 88] (checked in
// tests/core). Arguments are clamped to [-87.3, 88.3]: exp(-87.3) ≈ 1.2e-38 stands in for smaller
// results. Double (the gradient checks) keeps std::exp.
template <typename T> inline T vexp(T x) {
  if constexpr (std::is_same_v<T, float>) {
    x = std::min(std::max(x, -87.3f), 88.3f);
    const float n = std::floor(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float e = p * r * r + r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    return e * std::bit_cast<float>(bits);
  } else {
    return std::exp(x);
  }
}

// Elementwise loops: f(i) for i in [0, n), vectorised, over OpenMP threads above kParallel elements.
// A `#pragma omp parallel for simd if (...)` loop ran 8x slower than a plain `omp simd` loop even
// when the `if` was false (measured: SELU 2.8 vs 0.34 ns per element): the outlined body lost
// vectorisation. Here each thread runs a plain simd loop over its contiguous share, and `f` is
// passed by value (a lambda captured by reference also blocked vectorisation).
template <typename F> inline void simd_range(int64_t lo, int64_t hi, F f) {
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) f(i);
}
template <typename F> inline void elementwise(int64_t n, F f) {
  if (n >= kParallel && omp_get_max_threads() > 1) {
#pragma omp parallel
    {
      const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
      simd_range(n * t / nt, n * (t + 1) / nt, f);
    }
  } else {
    simd_range(0, n, f);
  }
}
// Row loops (softmax, bias, per-channel BN, Philox blocks): f(r) for r in [0, rows), serially below
// kParallel elements of work, else over OpenMP threads in contiguous shares (same reasons as above).
template <typename F> inline void rowwise(int64_t rows, int64_t work, F f) {
  if (work >= kParallel && rows > 1 && omp_get_max_threads() > 1) {
#pragma omp parallel
    {
      const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
      for (int64_t r = rows * t / nt; r < rows * (t + 1) / nt; ++r) f(r);
    }
  } else {
    for (int64_t r = 0; r < rows; ++r) f(r);
  }
}
// Σ f(i) in double: per-thread partial sums (static contiguous shares) added in thread order, so the
// result depends only on n and the thread count.
template <typename F> inline double simd_sum(int64_t lo, int64_t hi, F f) {
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = lo; i < hi; ++i) s += f(i);
  return s;
}
template <typename F> inline double sum_over(int64_t n, F f) {
  const int nt = n >= kParallel ? omp_get_max_threads() : 1;
  if (nt <= 1) return simd_sum(0, n, f);
  std::vector<double> part(static_cast<size_t>(nt), 0.0);
#pragma omp parallel num_threads(nt)
  {
    const int64_t t = omp_get_thread_num(), m = omp_get_num_threads();
    part[static_cast<size_t>(t)] = simd_sum(n * t / m, n * (t + 1) / m, f);
  }
  double s = 0.0;
  for (double v : part) s += v;
  return s;
}

template <typename T> inline T sigmoid(T x) {
  const T e = vexp(-std::abs(x));  // in (0, 1]: no overflow
  const T inv = T(1) / (T(1) + e);
  return x >= T(0) ? inv : e * inv;
}
// The ReLU and its backward, in one place: the fused paths (add, BN's affine, BN's gated backward) give the
// same bits as activation_forward / activation_backward only because they share these.
template <typename T> inline T relu_of(T v) { return v > T(0) ? v : T(0); }
// g where the ReLU's input (or, equally, its output) x is > 0, else 0.
template <typename T> inline T relu_grad(T x, T g) { return x > T(0) ? g : T(0); }
}  // namespace

void cpu_set_threads(int n) {
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

// ---- elementwise and reductions ------------------------------------------------------------------
template <typename T> void fill(Cpu, T* x, int64_t n, T v) {
  elementwise(n, [=](int64_t i) { x[i] = v; });
}
template <typename T> void copy(Cpu, const T* src, T* dst, int64_t n) {
  if (src != dst) std::copy(src, src + n, dst);
}
template <typename T> void scale(Cpu, T* x, int64_t n, T a) {
  elementwise(n, [=](int64_t i) { x[i] *= a; });
}
template <typename T> void axpby(Cpu, T a, const T* x, T b, T* y, int64_t n) {
  if (b == T(1)) {
    elementwise(n, [=](int64_t i) { y[i] += a * x[i]; });
  } else if (b == T(0)) {
    elementwise(n, [=](int64_t i) { y[i] = a * x[i]; });
  } else {
    elementwise(n, [=](int64_t i) { y[i] = a * x[i] + b * y[i]; });
  }
}
template <typename T> void add(Cpu, const T* a, const T* b, T* out, int64_t n, bool relu) {
  if (relu)
    elementwise(n, [=](int64_t i) { out[i] = relu_of(a[i] + b[i]); });
  else
    elementwise(n, [=](int64_t i) { out[i] = a[i] + b[i]; });
}
template <typename T> void mul(Cpu, const T* a, const T* b, T* out, int64_t n) {
  elementwise(n, [=](int64_t i) { out[i] = a[i] * b[i]; });
}
template <typename T> void clip_by_value(Cpu, T* x, int64_t n, T lo, T hi) {
  elementwise(n, [=](int64_t i) { x[i] = std::min(std::max(x[i], lo), hi); });
}
template <typename T> double sum(Cpu, const T* x, int64_t n) {
  double s = 0;
  s = sum_over(n, [=](int64_t i) { return x[i]; });
  return s;
}
template <typename T> double sum_squares(Cpu, const T* x, int64_t n) {
  double s = 0;
  s = sum_over(n, [=](int64_t i) { return double(x[i]) * double(x[i]); });
  return s;
}
template <typename T> double sum_abs(Cpu, const T* x, int64_t n) {
  double s = 0;
  s = sum_over(n, [=](int64_t i) { return std::abs(double(x[i])); });
  return s;
}
template <typename T> double max_abs_diff(Cpu, const T* a, const T* b, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::abs(double(a[i]) - double(b[i])));
  return m;
}
template <typename T> bool all_finite(Cpu, const T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  return true;
}

// ---- memory hints ----------------------------------------------------------------------------------
// One prefetch per 64-byte line; with write intent (PREFETCHW where the ISA has it) a written line
// arrives owned. Model::backward prefetches the layer below's operands while a layer computes: by the
// time the backward pass reaches a layer, its weights, gradients and saved activations have left the
// caches (model c holds ~10 MB of them against a 1 MB L2), and its small products wait on them. In a
// 100-layer chain of 32x100x100 products the weight gradient took 11-13 us against 6.7 us hot, dX
// 13-15 us against 7.8; in model c's step at batch 32 a hidden layer's backward took 24-31 us without
// and 17 us with the prefetch. Whole step, interleaved A/B, 1 thread: c at batch 32 +22% and +16%
// (medians of 10 rounds), c 256 +1%, d 256 +3%, a, b, d and e at 32 and e at 256 within +-2%.
// Prefetching the next layer's operands in the forward pass too gained nothing more (c +16%, d -1%).
void prefetch(Cpu, const void* p, int64_t bytes, bool for_write) {
  const char* c = static_cast<const char*>(p);
  if (for_write) {
    for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, 1, 3);
  } else {
    for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(c + i, 0, 3);
  }
}

// ---- merges ----------------------------------------------------------------------------------------
template <typename T>
void concat_block(Cpu, T* part, T* whole, int64_t outer, int64_t part_cols, int64_t whole_cols, int64_t offset,
                  bool into_whole) {
  if (outer == 1 || part_cols == whole_cols) {  // one contiguous block
    T* w = whole + offset;
    const int64_t n = outer * part_cols;
    if (into_whole)
      elementwise(n, [=](int64_t i) { w[i] = part[i]; });
    else
      elementwise(n, [=](int64_t i) { part[i] = w[i]; });
    return;
  }
  rowwise(outer, outer * part_cols, [=](int64_t r) {
    T* p = part + r * part_cols;
    T* w = whole + r * whole_cols + offset;
    if (into_whole)
      std::copy(p, p + part_cols, w);
    else
      std::copy(w, w + part_cols, p);
  });
}
namespace {
// Whether the gradient of max/min(a, b) goes to a (ties to a, TensorFlow's rule); a NaN operand picks b.
template <bool kMax, typename T> inline bool picks_a(T a, T b) { return kMax ? a >= b : a <= b; }
template <bool kMax, typename T> void extremum_impl(const T* a, const T* b, T* out, int64_t n) {
  elementwise(n, [=](int64_t i) {
    const T x = a[i], y = b[i];
    out[i] = picks_a<kMax>(x, y) ? x : y;
  });
}
template <bool kMax, typename T>
void extremum_backward_impl(const T* a, const T* b, const T* dy, T* da, T* db, int64_t n) {
  if (da && db) {
    elementwise(n, [=](int64_t i) {
      const bool p = picks_a<kMax>(a[i], b[i]);
      const T g = dy[i];
      da[i] = p ? g : T(0);
      db[i] = p ? T(0) : g;
    });
  } else if (da) {
    elementwise(n, [=](int64_t i) { da[i] = picks_a<kMax>(a[i], b[i]) ? dy[i] : T(0); });
  } else if (db) {
    elementwise(n, [=](int64_t i) { db[i] = picks_a<kMax>(a[i], b[i]) ? T(0) : dy[i]; });
  }
}
}  // namespace
template <typename T> void extremum(Cpu, bool is_max, const T* a, const T* b, T* out, int64_t n) {
  if (is_max)
    extremum_impl<true>(a, b, out, n);
  else
    extremum_impl<false>(a, b, out, n);
}
template <typename T>
void extremum_backward(Cpu, bool is_max, const T* a, const T* b, const T* dy, T* da, T* db, int64_t n) {
  if (is_max)
    extremum_backward_impl<true>(a, b, dy, da, db, n);
  else
    extremum_backward_impl<false>(a, b, dy, da, db, n);
}

// ---- products ----------------------------------------------------------------------------------------
// Float products of the sizes the chapter's models have go to libxsmm's JIT kernels. OpenBLAS packs
// both operands and zeroes C before every beta = 0 product, which at these sizes cost 12-19% of a
// training step (1 thread: model a 61-73k -> 72-87k samples/s, d 22-29k -> 24-32k, c at batch 256
// 8.8-9.6k -> 9.7-9.9k). libxsmm 1.17 has no kernel for a transposed first operand (column-major), so
// dX = dY·Wᵀ transposes W into a scratch first (libxsmm_otrans, 1.4 us of 7.8 at 32x100x100, where
// OpenBLAS's transposed packing took 8.9 us in all: model c at batch 32 6.2-7.1k -> 9.1-10.1k samples/s).
// Large products stay with OpenBLAS, where libxsmm's kernels, which do not block
// for the caches, fall behind (measured at 1 thread: 4096x4096 weights 19 against 92 GFLOP/s, 3072x1000
// 84 against 97; weight gradients of 1024x1024 90 against 97, and over 4096 samples 89 against 92).
namespace {
constexpr int64_t kXsmmMaxOperand = int64_t(1) << 20;  // elements of the weight-sized operand
constexpr int64_t kXsmmMaxDepth = 512;                 // samples summed in a weight gradient

// C = op(A)·B (+ C when beta is 1) by libxsmm on one thread; false when it does not take the product.
// With more threads OpenBLAS keeps every product: splitting rows over OpenMP threads here measured
// 79k samples/s for model a at batch 256 on 2 threads, against 140k for OpenBLAS's own threads (whose
// idle workers spin on the core the OpenMP team needs).
bool xsmm_sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                const float* b, int64_t ldb, float beta, float* c, int64_t ldc, int64_t max_depth = kXsmmMaxDepth) {
  if ((ta && tb) || alpha != 1.0f || (beta != 0.0f && beta != 1.0f) || omp_get_max_threads() > 1) return false;
  if (ta ? (m * n > kXsmmMaxOperand || k > max_depth) : k * n > kXsmmMaxOperand) return false;
  static const bool ready = [] {
    libxsmm_init();
    return true;
  }();
  if (!ready) return false;
  if (tb) {
    // dX = dY·Wᵀ: transpose W (row-major [n,k]) into a scratch [k,n] and take the product as NN.
    static thread_local std::vector<float> wt;
    if (wt.size() < static_cast<size_t>(k * n)) wt.resize(static_cast<size_t>(k * n));
    libxsmm_otrans(wt.data(), b, sizeof(float), libxsmm_blasint(k), libxsmm_blasint(n), libxsmm_blasint(ldb),
                   libxsmm_blasint(n));
    b = wt.data();
    ldb = n;
  }
  // Row-major C[m,n] = op(A)·B is column-major C'[n,m] = B'·op(A)'.
  const libxsmm_blasint M = n, N = m, K = k, la = ldb, lb = lda, lc = ldc;
  const int flags = ta ? LIBXSMM_GEMM_FLAG_TRANS_B : LIBXSMM_GEMM_FLAG_NONE;
  const int prefetch = LIBXSMM_PREFETCH_NONE;
  const libxsmm_smmfunction f = libxsmm_smmdispatch(M, N, K, &la, &lb, &lc, &alpha, &beta, &flags, &prefetch);
  if (!f) return false;
  f(b, a, c);
  return true;
}
}  // namespace

template <>
void gemm<float>(Cpu, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                 const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    scale(Cpu{}, c, m * n, beta);  // C = beta*C (ldc == n for our callers)
    return;
  }
  if (xsmm_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)) return;
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(m), int(n), int(k),
              alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}
template <>
void gemm<double>(Cpu, bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
                  int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    scale(Cpu{}, c, m * n, beta);
    return;
  }
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(m), int(n), int(k),
              alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}
// A convolution's kernel gradient colᵀ·dY sums over a block's pixels (784 to 38k rows), far deeper than a
// Dense layer's batch; while the gradient [m, n] is small libxsmm still beats OpenBLAS at any depth (1 thread,
// the ch. 14 CNN's and ResNet-20's shapes: 99 of 104 products, 1.2-2.6x; level at 1152x256 and 2304x256,
// where this bound hands them back to OpenBLAS; tests/bench/conv_gemm_bench.cpp).
constexpr int64_t kXsmmConvGradOutput = 300000;
template <>
void gemm_weight_grad<float>(Cpu, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                             int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m * n <= kXsmmConvGradOutput &&
      xsmm_sgemm(true, false, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc, std::numeric_limits<int64_t>::max()))
    return;
  gemm<float>(Cpu{}, true, false, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}
template <>
void gemm_weight_grad<double>(Cpu, int64_t m, int64_t n, int64_t k, const double* a, int64_t lda, const double* b,
                              int64_t ldb, double beta, double* c, int64_t ldc) {
  gemm<double>(Cpu{}, true, false, m, n, k, 1.0, a, lda, b, ldb, beta, c, ldc);
}
template <typename T> void bias_add(Cpu, T* y, const T* b, int64_t rows, int64_t cols) {
  rowwise(rows, rows * cols, [=](int64_t r) {
    T* yr = y + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) yr[c] += b[c];
  });
}
template <typename T> void bias_grad(Cpu, const T* dy, T* db, int64_t rows, int64_t cols, T beta) {
  std::vector<T> acc(static_cast<size_t>(cols), T(0));
  T* a = acc.data();
  for (int64_t r = 0; r < rows; ++r) {
    const T* d = dy + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) a[c] += d[c];
  }
  for (int64_t c = 0; c < cols; ++c) db[c] = (beta == T(0) ? T(0) : beta * db[c]) + a[c];
}

// ---- activations -----------------------------------------------------------------------------------
template <typename T>
static void softmax_rows(const T* x, T* y, int64_t rows, int64_t cols) {
  rowwise(rows, rows * cols, [=](int64_t r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    T m = xr[0];
    for (int64_t c = 1; c < cols; ++c) m = std::max(m, xr[c]);
    T s = 0;
    for (int64_t c = 0; c < cols; ++c) {
      yr[c] = vexp(xr[c] - m);
      s += yr[c];
    }
    T inv = T(1) / s;
    for (int64_t c = 0; c < cols; ++c) yr[c] *= inv;
  });
}

template <typename T>
void activation_forward(Cpu, ops::Activation act, T alpha, const T* x, T* y, int64_t rows, int64_t cols) {
  using A = ops::Activation;
  const int64_t n = rows * cols;
  switch (act) {
    case A::Linear:
      copy(Cpu{}, x, y, n);
      return;
    case A::Sigmoid:
      elementwise(n, [=](int64_t i) { y[i] = sigmoid(x[i]); });
      return;
    case A::Tanh:
      elementwise(n, [=](int64_t i) { y[i] = std::tanh(x[i]); });
      return;
    case A::Relu:
      elementwise(n, [=](int64_t i) { y[i] = relu_of(x[i]); });
      return;
    case A::LeakyRelu:
      elementwise(n, [=](int64_t i) { y[i] = x[i] > T(0) ? x[i] : alpha * x[i]; });
      return;
    case A::Elu:
      elementwise(n, [=](int64_t i) {
        const T v = x[i], e = alpha * (vexp(v) - T(1));
        y[i] = v > T(0) ? v : e;
      });
      return;
    case A::Selu: {
      const T s = T(ops::kSeluScale), sa = T(ops::kSeluScale * ops::kSeluAlpha);
      elementwise(n, [=](int64_t i) {
        const T v = x[i], pos = s * v, neg = sa * (vexp(v) - T(1));
        y[i] = v > T(0) ? pos : neg;
      });
      return;
    }
    case A::Softplus:
      elementwise(n, [=](int64_t i) { y[i] = std::log1p(std::exp(-std::abs(x[i]))) + std::max(x[i], T(0)); });
      return;
    case A::Softsign:
      elementwise(n, [=](int64_t i) { y[i] = x[i] / (T(1) + std::abs(x[i])); });
      return;
    case A::Swish:
      elementwise(n, [=](int64_t i) { y[i] = x[i] * sigmoid(x[i]); });
      return;
    case A::Softmax:
      softmax_rows(x, y, rows, cols);
      return;
  }
}

template <typename T> void Epilogue<T>::apply(T* y, int64_t rows, int64_t cols) const {
  if (bias) bias_add(Cpu{}, y, bias, rows, cols);
  if (act != ops::Activation::Linear) activation_forward(Cpu{}, act, alpha, y, y, rows, cols);
}
template <typename T> void Epilogue<T>::apply_in_blocks(T* y, int64_t rows, int64_t cols) const {
  if (empty()) return;
  const int64_t step = std::max<int64_t>(1, (int64_t(64 << 10) / int64_t(sizeof(T))) / std::max<int64_t>(cols, 1));
  for (int64_t r0 = 0; r0 < rows; r0 += step) apply(y + r0 * cols, std::min(step, rows - r0), cols);
}
template struct Epilogue<float>;
template struct Epilogue<double>;

template <typename T>
void activation_backward(Cpu, ops::Activation act, T alpha, const T* x, const T* y, const T* dy, T* dx,
                         int64_t rows, int64_t cols) {
  using A = ops::Activation;
  const int64_t n = rows * cols;
  switch (act) {
    case A::Linear:
      copy(Cpu{}, dy, dx, n);
      return;
    case A::Sigmoid:
      elementwise(n, [=](int64_t i) { dx[i] = dy[i] * y[i] * (T(1) - y[i]); });
      return;
    case A::Tanh:
      elementwise(n, [=](int64_t i) { dx[i] = dy[i] * (T(1) - y[i] * y[i]); });
      return;
    case A::Relu:
      elementwise(n, [=](int64_t i) {
        // Loads before the select: a conditional load keeps GCC from vectorising (and the branch
        // mispredicts on half the elements).
        const T g = dy[i];
        dx[i] = relu_grad(x[i], g);
      });
      return;
    case A::LeakyRelu:
      elementwise(n, [=](int64_t i) {
        const T g = dy[i];
        dx[i] = x[i] > T(0) ? g : alpha * g;
      });
      return;
    case A::Elu:
      elementwise(n, [=](int64_t i) {
        const T g = dy[i], neg = g * (y[i] + alpha);
        dx[i] = x[i] > T(0) ? g : neg;
      });
      return;
    case A::Selu: {
      const T s = T(ops::kSeluScale), sa = T(ops::kSeluScale * ops::kSeluAlpha);
      elementwise(n, [=](int64_t i) {
        const T g = dy[i], pos = s * g, neg = g * (y[i] + sa);
        dx[i] = x[i] > T(0) ? pos : neg;
      });
      return;
    }
    case A::Softplus:
      elementwise(n, [=](int64_t i) { dx[i] = dy[i] * sigmoid(x[i]); });
      return;
    case A::Softsign:
      elementwise(n, [=](int64_t i) {
        T d = T(1) + std::abs(x[i]);
        dx[i] = dy[i] / (d * d);
      });
      return;
    case A::Swish:
      elementwise(n, [=](int64_t i) {
        T s = sigmoid(x[i]);
        dx[i] = dy[i] * (s + x[i] * s * (T(1) - s));
      });
      return;
    case A::Softmax:
      rowwise(rows, n, [=](int64_t r) {
        const T* yr = y + r * cols;
        const T* dyr = dy + r * cols;
        T* dxr = dx + r * cols;
        T dot = 0;
        for (int64_t c = 0; c < cols; ++c) dot += dyr[c] * yr[c];
        for (int64_t c = 0; c < cols; ++c) dxr[c] = yr[c] * (dyr[c] - dot);
      });
      return;
  }
}

namespace {
inline int64_t per_sample(const ops::Broadcast& m) {
  int64_t n = 1;
  for (int d = 0; d < m.nd; ++d) n *= m.dims[d];
  return n;
}
// alpha index of each element within one sample.
inline std::vector<int64_t> alpha_index(const ops::Broadcast& m) {
  int64_t n = per_sample(m);
  std::vector<int64_t> idx(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    int64_t rem = i, a = 0;
    for (int d = m.nd - 1; d >= 0; --d) {
      int64_t coord = rem % m.dims[d];
      rem /= m.dims[d];
      a += coord * m.stride[d];
    }
    idx[static_cast<size_t>(i)] = a;
  }
  return idx;
}
}  // namespace

template <typename T>
void prelu_forward(Cpu, const T* x, const T* alpha, const ops::Broadcast& map, T* y, int64_t batch) {
  const int64_t s = per_sample(map);
  std::vector<int64_t> idx = alpha_index(map);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < s; ++i) {
      T v = x[b * s + i];
      y[b * s + i] = v > T(0) ? v : alpha[idx[i]] * v;
    }
}
template <typename T>
void prelu_backward(Cpu, const T* x, const T* alpha, const ops::Broadcast& map, const T* dy, T* dx, T* dalpha,
                    int64_t batch) {
  const int64_t s = per_sample(map);
  std::vector<int64_t> idx = alpha_index(map);
  int64_t na = 0;
  for (int64_t i = 0; i < s; ++i) na = std::max(na, idx[i] + 1);
  std::fill(dalpha, dalpha + na, T(0));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < s; ++i) {
      T v = x[b * s + i], g = dy[b * s + i];
      if (v > T(0)) {
        dx[b * s + i] = g;
      } else {
        dalpha[idx[i]] += g * v;
        dx[b * s + i] = alpha[idx[i]] * g;
      }
    }
}

template <typename T>
void rrelu_forward_train(Cpu, const T* x, T lower, T upper, rng::Stream s, int64_t first, T* slopes, T* y, int64_t n) {
  rowwise(n, n, [=](int64_t i) {
    T a = lower + (upper - lower) * T(s.uniform(uint64_t(first + i)));
    slopes[i] = a;
    y[i] = x[i] >= T(0) ? x[i] : a * x[i];
  });
}
template <typename T> void rrelu_backward(Cpu, const T* x, const T* slopes, const T* dy, T* dx, int64_t n) {
  elementwise(n, [=](int64_t i) {
    const T g = dy[i], neg = slopes[i] * g;
    dx[i] = x[i] >= T(0) ? g : neg;
  });
}

// Draw 4 uniforms per Philox block; element i uses the stream's uniform number first + i: word
// (first+i)%4 of block (first+i)/4 (as Stream::uniform).
template <typename T, typename F>
static void for_uniforms(rng::Stream s, int64_t first, int64_t n, F&& f) {
  const int64_t b0 = first / 4, blocks = (first + n + 3) / 4 - b0;
  rowwise(blocks, n, [=](int64_t b) {
    auto w = s.block(uint64_t(b0 + b));
    for (int j = 0; j < 4; ++j) {
      int64_t i = (b0 + b) * 4 + j - first;
      if (i >= 0 && i < n) f(i, rng::Stream::to_unit(w[j]));
    }
  });
}

template <typename T>
void dropout_forward(Cpu, const T* x, T rate, rng::Stream s, int64_t first, T* mask, T* y, int64_t n) {
  const T keep_scale = T(1) / (T(1) - rate);
  const float r = float(rate);
  for_uniforms<T>(s, first, n, [&](int64_t i, float u) {
    mask[i] = u >= r ? keep_scale : T(0);
    y[i] = x[i] * mask[i];
  });
}
template <typename T>
void alpha_dropout_forward(Cpu, const T* x, T rate, rng::Stream s, int64_t first, T* mask, T* y, int64_t n) {
  const double ap = -ops::kSeluScale * ops::kSeluAlpha;
  const double p = double(rate);
  const T a = T(1.0 / std::sqrt((1.0 - p) * (1.0 + p * ap * ap)));
  const T b = T(-double(a) * ap * p);
  const T apt = T(ap);
  const float r = float(rate);
  for_uniforms<T>(s, first, n, [&](int64_t i, float u) {
    bool keep = u >= r;
    mask[i] = keep ? a : T(0);
    y[i] = a * (keep ? x[i] : apt) + b;
  });
}

// ---- batch normalization ---------------------------------------------------------------------------
template <typename T> void bn_sums(Cpu, const T* x, ops::FeatureView v, double* stats) {
  const int64_t C = v.channels;
  double* s = stats;
  double* ss = stats + C;
  std::fill(stats, stats + 2 * C, 0.0);
  if (v.inner == 1) {
    for (int64_t o = 0; o < v.outer; ++o) {
      const T* xr = x + o * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        double val = xr[c];
        s[c] += val;
        ss[c] += val * val;
      }
    }
    return;
  }
  for (int64_t o = 0; o < v.outer; ++o)
    for (int64_t c = 0; c < C; ++c) {
      const T* xr = x + (o * C + c) * v.inner;
      double a = 0, b = 0;
      for (int64_t i = 0; i < v.inner; ++i) {
        double val = xr[i];
        a += val;
        b += val * val;
      }
      s[c] += a;
      ss[c] += b;
    }
}
template <typename T> void bn_moments(Cpu, const double* stats, double count, T* mean, T* var, int64_t c) {
  for (int64_t i = 0; i < c; ++i) {
    double m = count > 0 ? stats[i] / count : 0.0;
    double v = count > 0 ? stats[c + i] / count - m * m : 0.0;
    mean[i] = T(m);
    var[i] = T(v > 0 ? v : 0.0);
  }
}
// Per-channel y = x*a + b with a = gamma*invstd, b = beta - mean*a; Relu: then relu_of(y).
template <bool Relu, typename T> static inline T affine_out(T x, T a, T b) {
  const T v = x * a + b;
  if constexpr (Relu) return relu_of(v);
  return v;
}
template <bool Relu, typename T>
static void channel_affine(const T* x, ops::FeatureView v, const T* a, const T* b, T* y) {
  const int64_t C = v.channels;
  if (v.inner == 1) {
    rowwise(v.outer, v.outer * C, [=](int64_t o) {
      const T* xr = x + o * C;
      T* yr = y + o * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) yr[c] = affine_out<Relu>(xr[c], a[c], b[c]);
    });
    return;
  }
  for (int64_t o = 0; o < v.outer; ++o)
    for (int64_t c = 0; c < C; ++c) {
      const T* xr = x + (o * C + c) * v.inner;
      T* yr = y + (o * C + c) * v.inner;
      for (int64_t i = 0; i < v.inner; ++i) yr[i] = affine_out<Relu>(xr[i], a[c], b[c]);
    }
}
template <typename T>
void bn_apply(Cpu, const T* x, ops::FeatureView v, const T* mean, const T* var, const T* gamma, const T* beta,
              T eps, T* y, bool relu) {
  const int64_t C = v.channels;
  std::vector<T> a(static_cast<size_t>(C)), b(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    T inv = T(1) / std::sqrt(var[c] + eps);
    a[c] = (gamma ? gamma[c] : T(1)) * inv;
    b[c] = (beta ? beta[c] : T(0)) - mean[c] * a[c];
  }
  if (relu)
    channel_affine<true>(x, v, a.data(), b.data(), y);
  else
    channel_affine<false>(x, v, a.data(), b.data(), y);
}
template <typename T> void bn_update_moving(Cpu, T* moving, const T* batch, int64_t c, T momentum) {
  for (int64_t i = 0; i < c; ++i) moving[i] -= (moving[i] - batch[i]) * (T(1) - momentum);
}
// dy[i], or where a ReLU follows the normalisation (gate = that ReLU's output, > 0 exactly where its input
// is), relu_grad(gate[i], dy[i]): the ReLU's backward as activation_backward computes it.
template <bool Gate, typename T> static inline T gated(const T* dy, const T* gate, int64_t i) {
  const T g = dy[i];
  if constexpr (Gate) return relu_grad(gate[i], g);
  return g;
}
template <bool Gate, typename T>
static void bn_backward_sums_impl(const T* dy, const T* gate, const T* x, ops::FeatureView v, const T* mean,
                                  const T* var, T eps, double* sums) {
  const int64_t C = v.channels;
  std::vector<double> inv(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) inv[c] = 1.0 / std::sqrt(double(var[c]) + double(eps));
  double* sdy = sums;
  double* sdyx = sums + C;
  std::fill(sums, sums + 2 * C, 0.0);
  // Σdy·x̂ = invstd·(Σdy·x - mean·Σdy)
  std::vector<double> sdx(static_cast<size_t>(C), 0.0);
  if (v.inner == 1) {
    // [N, C]: vectorise over channels (the per-channel sums still run over rows in order).
    double* sx = sdx.data();
    for (int64_t o = 0; o < v.outer; ++o) {
      const T* xr = x + o * C;
      const T* dr = dy + o * C;
      const T* gr = Gate ? gate + o * C : nullptr;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const double g = double(gated<Gate>(dr, gr, c));
        sdy[c] += g;
        sx[c] += g * double(xr[c]);
      }
    }
  } else {
  for (int64_t o = 0; o < v.outer; ++o)
    for (int64_t c = 0; c < C; ++c) {
      const T* xr = x + (o * C + c) * v.inner;
      const T* dr = dy + (o * C + c) * v.inner;
      const T* gr = Gate ? gate + (o * C + c) * v.inner : nullptr;
      double a = 0, b = 0;
      for (int64_t i = 0; i < v.inner; ++i) {
        const T g = gated<Gate>(dr, gr, i);
        a += g;
        b += double(g) * double(xr[i]);
      }
      sdy[c] += a;
      sdx[c] += b;
    }
  }
  for (int64_t c = 0; c < C; ++c) sdyx[c] = inv[c] * (sdx[c] - double(mean[c]) * sdy[c]);
}
template <typename T>
void bn_backward_sums(Cpu, const T* dy, const T* x, ops::FeatureView v, const T* mean, const T* var, T eps,
                      double* sums, const T* gate) {
  if (gate)
    bn_backward_sums_impl<true>(dy, gate, x, v, mean, var, eps, sums);
  else
    bn_backward_sums_impl<false>(dy, gate, x, v, mean, var, eps, sums);
}
template <bool Gate, typename T>
static void bn_backward_apply_impl(const T* dy, const T* gate, const T* x, ops::FeatureView v, const T* mean,
                                   const T* var, const T* gamma, T eps, const double* sums, double count, T* dx) {
  const int64_t C = v.channels;
  // dx = k·(dy - Σdy/n - x̂·Σdy·x̂/n) with k = gamma·invstd and x̂ = (x-mean)·invstd
  //    = k·dy + (x·p + q) with p = -k·invstd·Σdy·x̂/n, q = -k·Σdy/n - mean·p.
  std::vector<T> k(static_cast<size_t>(C)), p(static_cast<size_t>(C)), q(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) {
    double inv = 1.0 / std::sqrt(double(var[c]) + double(eps));
    double kk = (gamma ? double(gamma[c]) : 1.0) * inv;
    double n = count > 0 ? count : 1.0;
    double pp = -kk * inv * sums[C + c] / n;
    k[c] = T(kk);
    p[c] = T(pp);
    q[c] = T(-kk * sums[c] / n - double(mean[c]) * pp);
  }
  if (v.inner == 1) {
    const T *kp = k.data(), *pp = p.data(), *qp = q.data();
    for (int64_t o = 0; o < v.outer; ++o) {
      const int64_t base = o * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) dx[base + c] = kp[c] * gated<Gate>(dy, gate, base + c) + x[base + c] * pp[c] + qp[c];
    }
    return;
  }
  for (int64_t o = 0; o < v.outer; ++o)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t base = (o * C + c) * v.inner;
      for (int64_t i = 0; i < v.inner; ++i) dx[base + i] = k[c] * gated<Gate>(dy, gate, base + i) + x[base + i] * p[c] + q[c];
    }
}
template <typename T>
void bn_backward_apply(Cpu, const T* dy, const T* x, ops::FeatureView v, const T* mean, const T* var,
                       const T* gamma, T eps, const double* sums, double count, T* dx, const T* gate) {
  if (gate)
    bn_backward_apply_impl<true>(dy, gate, x, v, mean, var, gamma, eps, sums, count, dx);
  else
    bn_backward_apply_impl<false>(dy, gate, x, v, mean, var, gamma, eps, sums, count, dx);
}
template <typename T>
void bn_backward_inference(Cpu, const T* dy, ops::FeatureView v, const T* var, const T* gamma, T eps, T* dx,
                           const T* gate) {
  const int64_t C = v.channels;
  std::vector<T> a(static_cast<size_t>(C)), z(static_cast<size_t>(C), T(0));
  for (int64_t c = 0; c < C; ++c) a[c] = (gamma ? gamma[c] : T(1)) / std::sqrt(var[c] + eps);
  if (gate) {
    // The ReLU's backward first (as activation_backward: into dx), then the scaling in place.
    elementwise(v.outer * C * v.inner, [=](int64_t i) { dx[i] = gated<true>(dy, gate, i); });
    channel_affine<false>(dx, v, a.data(), z.data(), dx);
    return;
  }
  channel_affine<false>(dy, v, a.data(), z.data(), dx);
}
template <typename T> void bn_param_grads(Cpu, const double* sums, int64_t c, T* dgamma, T* dbeta) {
  for (int64_t i = 0; i < c; ++i) {
    if (dgamma) dgamma[i] = T(sums[c + i]);
    if (dbeta) dbeta[i] = T(sums[i]);
  }
}

template <typename T>
void dense_normalized_grads(Cpu, const T* xhat, const T* dz, int64_t rows, T* w, const T* s, const T* gamma,
                            const T* beta, T* dw, int64_t in, int64_t out, double* sums, T rate) {
  // Row c of the kernel belongs to input feature c. g = x̂ᵀ·dz is formed a block of rows at a time and
  // folded while the block is still in cache. Descending, the fold takes the step and every block's g
  // goes to the same first block of dw.
  constexpr int64_t block = 64;
  for (int64_t c0 = 0; c0 < in; c0 += block) {
    const int64_t nc = std::min(block, in - c0);
    T* const g0 = rate != T(0) ? dw : dw + c0 * out;
    gemm<T>(Cpu{}, true, false, nc, out, rows, T(1), xhat + c0, in, dz, out, T(0), g0, out);
    rowwise(nc, nc * out, [=](int64_t r) {
      // Locals, not the closure's members: a store through gr could alias those, and the compiler then
      // reloads s on every iteration (as a gather) and keeps the sums in memory.
      const int64_t c = c0 + r, n = out;
      T* __restrict wr = w + c * out;
      const T* __restrict sr = s;
      T* __restrict gr = g0 + r * out;
      const T gc = gamma ? gamma[c] : T(1);
      const T bc = beta ? beta[c] : T(0);
      const T step = -rate;
      T sdy = 0, sdyx = 0;
      if (rate == T(0)) {
#pragma omp simd reduction(+ : sdy, sdyx)
        for (int64_t j = 0; j < n; ++j) {
          const T g = gr[j];
          sdy += wr[j] * sr[j];
          sdyx += wr[j] * g;
          gr[j] = gc * g + bc * sr[j];
        }
      } else {
#pragma omp simd reduction(+ : sdy, sdyx)
        for (int64_t j = 0; j < n; ++j) {
          const T g = gr[j], wj = wr[j];
          sdy += wj * sr[j];
          sdyx += wj * g;
          wr[j] = wj + step * (gc * g + bc * sr[j]);
        }
      }
      sums[c] = sdy;
      sums[in + c] = sdyx;
    });
  }
}

// ---- losses ---------------------------------------------------------------------------------------
template <typename T>
void softmax_xent_sparse(Cpu, const T* z, const T* y, T* loss, T* dz, int64_t rows, int64_t k, T scale) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* zr = z + r * k;
    const int64_t label = int64_t(y[r]);
    T m = zr[0];
    for (int64_t c = 1; c < k; ++c) m = std::max(m, zr[c]);
    T s = 0;
    for (int64_t c = 0; c < k; ++c) s += std::exp(zr[c] - m);
    const T lse = m + std::log(s);
    loss[r] = lse - zr[label];
    if (dz) {
      T* dr = dz + r * k;
      for (int64_t c = 0; c < k; ++c) dr[c] = scale * (std::exp(zr[c] - lse) - (c == label ? T(1) : T(0)));
    }
  }
}
template <typename T>
void softmax_xent_dense(Cpu, const T* z, const T* t, T* loss, T* dz, int64_t rows, int64_t k, T scale) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* zr = z + r * k;
    const T* tr = t + r * k;
    T m = zr[0];
    for (int64_t c = 1; c < k; ++c) m = std::max(m, zr[c]);
    T s = 0, tsum = 0;
    for (int64_t c = 0; c < k; ++c) s += std::exp(zr[c] - m), tsum += tr[c];
    const T lse = m + std::log(s);
    T l = 0;
    for (int64_t c = 0; c < k; ++c) l += tr[c] * (lse - zr[c]);
    loss[r] = l;
    if (dz) {
      T* dr = dz + r * k;
      for (int64_t c = 0; c < k; ++c) dr[c] = scale * (tsum * std::exp(zr[c] - lse) - tr[c]);
    }
  }
}
template <typename T>
void sigmoid_xent(Cpu, const T* z, const T* t, T* loss, T* dz, int64_t rows, int64_t k, T scale) {
  for (int64_t r = 0; r < rows; ++r) {
    T l = 0;
    for (int64_t c = 0; c < k; ++c) {
      const T zz = z[r * k + c], tt = t[r * k + c];
      l += std::max(zz, T(0)) - zz * tt + std::log1p(std::exp(-std::abs(zz)));
      if (dz) dz[r * k + c] = scale * (sigmoid(zz) - tt) / T(k);
    }
    loss[r] = l / T(k);
  }
}
template <typename T>
void sparse_xent_probs(Cpu, const T* p, const T* y, T* loss, T* dp, int64_t rows, int64_t k, T scale) {
  const T lo = T(kKerasEps), hi = T(1 - kKerasEps);
  for (int64_t r = 0; r < rows; ++r) {
    const T* pr = p + r * k;
    const int64_t label = int64_t(y[r]);
    T s = 0;
    for (int64_t c = 0; c < k; ++c) s += std::min(std::max(pr[c], lo), hi);
    const T py = std::min(std::max(pr[label], lo), hi);
    loss[r] = -std::log(py) + std::log(s);
    if (dp) {
      for (int64_t c = 0; c < k; ++c) {
        const bool inside = pr[c] >= lo && pr[c] <= hi;
        T g = T(1) / s - (c == label ? T(1) / py : T(0));
        dp[r * k + c] = inside ? scale * g : T(0);
      }
    }
  }
}
template <typename T>
void categorical_xent_probs(Cpu, const T* p, const T* t, T* loss, T* dp, int64_t rows, int64_t k, T scale) {
  const T lo = T(kKerasEps), hi = T(1 - kKerasEps);
  std::vector<T> g(static_cast<size_t>(k));
  for (int64_t r = 0; r < rows; ++r) {
    const T* pr = p + r * k;
    const T* tr = t + r * k;
    T s = 0;
    for (int64_t c = 0; c < k; ++c) s += pr[c];
    T l = 0, gq = 0;
    for (int64_t c = 0; c < k; ++c) {
      const T q = pr[c] / s;
      const T qc = std::min(std::max(q, lo), hi);
      l -= tr[c] * std::log(qc);
      g[c] = (q >= lo && q <= hi) ? -tr[c] / qc : T(0);
      gq += g[c] * q;
    }
    loss[r] = l;
    if (dp)
      for (int64_t c = 0; c < k; ++c) dp[r * k + c] = scale * (g[c] - gq) / s;
  }
}
template <typename T>
void binary_xent_probs(Cpu, const T* p, const T* t, T* loss, T* dp, int64_t rows, int64_t k, T scale) {
  const T lo = T(kKerasEps), hi = T(1 - kKerasEps), e = T(kKerasEps);
  for (int64_t r = 0; r < rows; ++r) {
    T l = 0;
    for (int64_t c = 0; c < k; ++c) {
      const T pp = p[r * k + c], tt = t[r * k + c];
      const T pc = std::min(std::max(pp, lo), hi);
      l -= tt * std::log(pc + e) + (T(1) - tt) * std::log(T(1) - pc + e);
      if (dp) {
        const bool inside = pp >= lo && pp <= hi;
        T g = -(tt / (pc + e) - (T(1) - tt) / (T(1) - pc + e));
        dp[r * k + c] = inside ? scale * g / T(k) : T(0);
      }
    }
    loss[r] = l / T(k);
  }
}
template <typename T> void mse(Cpu, const T* p, const T* t, T* loss, T* dp, int64_t rows, int64_t k, T scale) {
  for (int64_t r = 0; r < rows; ++r) {
    T l = 0;
    for (int64_t c = 0; c < k; ++c) {
      const T d = p[r * k + c] - t[r * k + c];
      l += d * d;
      if (dp) dp[r * k + c] = scale * T(2) * d / T(k);
    }
    loss[r] = l / T(k);
  }
}
template <typename T>
void accuracy(Cpu, ops::AccuracyKind kind, const T* pred, const T* y, T* out, int64_t rows, int64_t k) {
  auto argmax = [k](const T* row) {
    int64_t best = 0;
    for (int64_t c = 1; c < k; ++c)
      if (row[c] > row[best]) best = c;
    return best;
  };
  for (int64_t r = 0; r < rows; ++r) {
    switch (kind) {
      case ops::AccuracyKind::Sparse:
        out[r] = argmax(pred + r * k) == int64_t(y[r]) ? T(1) : T(0);
        break;
      case ops::AccuracyKind::Categorical:
        out[r] = argmax(pred + r * k) == argmax(y + r * k) ? T(1) : T(0);
        break;
      case ops::AccuracyKind::Binary: {
        T s = 0;
        for (int64_t c = 0; c < k; ++c) s += ((pred[r * k + c] > T(0.5)) == (y[r * k + c] > T(0.5))) ? T(1) : T(0);
        out[r] = s / T(k);
        break;
      }
    }
  }
}

// ---- regularization and constraints ---------------------------------------------------------------
template <typename T> double l1l2_penalty(Cpu, const T* w, int64_t n, double l1, double l2) {
  double p = 0;
  if (l1 != 0) p += l1 * sum_abs(Cpu{}, w, n);
  if (l2 != 0) p += l2 * sum_squares(Cpu{}, w, n);
  return p;
}
template <typename T> void l1l2_grad(Cpu, const T* w, T* g, int64_t n, T l1, T l2) {
  const T two_l2 = T(2) * l2;
  elementwise(n, [=](int64_t i) {
    const T s = w[i] > T(0) ? T(1) : (w[i] < T(0) ? T(-1) : T(0));
    g[i] += l1 * s + two_l2 * w[i];
  });
}
template <typename T> void max_norm(Cpu, T* w, ops::FeatureView v, T max_value) {
  // w viewed as [outer, R, inner]; the norm runs over R (channels) for each (outer, inner).
  const int64_t R = v.channels, I = v.inner;
  std::vector<double> sq(static_cast<size_t>(I));
  for (int64_t o = 0; o < v.outer; ++o) {
    T* base = w + o * R * I;
    std::fill(sq.begin(), sq.end(), 0.0);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t i = 0; i < I; ++i) sq[i] += double(base[r * I + i]) * double(base[r * I + i]);
    std::vector<T> f(static_cast<size_t>(I));
    for (int64_t i = 0; i < I; ++i) {
      const T norm = T(std::sqrt(sq[i]));
      f[i] = std::min(std::max(norm, T(0)), max_value) / (T(kKerasEps) + norm);
    }
    for (int64_t r = 0; r < R; ++r)
      for (int64_t i = 0; i < I; ++i) base[r * I + i] *= f[i];
  }
}

// ---- optimizer updates ----------------------------------------------------------------------------
template <typename T> void sgd_update(Cpu, T* w, const T* g, int64_t n, T lr) {
  elementwise(n, [=](int64_t i) { w[i] -= lr * g[i]; });
}
template <typename T> void momentum_update(Cpu, T* w, const T* g, T* v, int64_t n, T lr, T mu, bool nesterov) {
  if (nesterov) {
    elementwise(n, [=](int64_t i) {
      v[i] = mu * v[i] - lr * g[i];
      w[i] += mu * v[i] - lr * g[i];
    });
  } else {
    elementwise(n, [=](int64_t i) {
      v[i] = mu * v[i] - lr * g[i];
      w[i] += v[i];
    });
  }
}
template <typename T> void adagrad_update(Cpu, T* w, const T* g, T* acc, int64_t n, T lr, T eps) {
  elementwise(n, [=](int64_t i) {
    acc[i] += g[i] * g[i];
    w[i] -= lr * g[i] / (std::sqrt(acc[i]) + eps);
  });
}
template <typename T>
void rmsprop_update(Cpu, T* w, const T* g, T* ms, T* mom, T* mg, int64_t n, T lr, T rho, T momentum, T eps) {
  if (momentum > T(0)) {
    // tf.keras 2.10 fused kernel (ApplyRMSProp / ApplyCenteredRMSProp): eps inside the square root.
    elementwise(n, [=](int64_t i) {
      ms[i] += (g[i] * g[i] - ms[i]) * (T(1) - rho);
      T denom = ms[i];
      if (mg) {
        mg[i] += (g[i] - mg[i]) * (T(1) - rho);
        denom -= mg[i] * mg[i];
      }
      mom[i] = momentum * mom[i] + lr * g[i] / std::sqrt(denom + eps);
      w[i] -= mom[i];
    });
  } else {
    // tf.keras 2.10 Python path: eps outside the square root.
    elementwise(n, [=](int64_t i) {
      ms[i] = rho * ms[i] + (T(1) - rho) * g[i] * g[i];
      T denom = ms[i];
      if (mg) {
        mg[i] = rho * mg[i] + (T(1) - rho) * g[i];
        denom -= mg[i] * mg[i];
      }
      w[i] -= lr * g[i] / (std::sqrt(denom) + eps);
    });
  }
}
template <typename T>
void adam_update(Cpu, T* w, const T* g, T* m, T* v, T* vhat, int64_t n, T alpha_t, T b1, T b2, T eps) {
  elementwise(n, [=](int64_t i) {
    m[i] += (g[i] - m[i]) * (T(1) - b1);
    v[i] += (g[i] * g[i] - v[i]) * (T(1) - b2);
    T vv = v[i];
    if (vhat) {
      vhat[i] = std::max(vhat[i], v[i]);
      vv = vhat[i];
    }
    w[i] -= alpha_t * m[i] / (std::sqrt(vv) + eps);
  });
}
template <typename T>
void adamax_update(Cpu, T* w, const T* g, T* m, T* u, int64_t n, T lr_t, T b1, T b2, T eps) {
  elementwise(n, [=](int64_t i) {
    m[i] += (g[i] - m[i]) * (T(1) - b1);
    u[i] = std::max(b2 * u[i], std::abs(g[i]));
    w[i] -= lr_t * m[i] / (u[i] + eps);
  });
}
template <typename T> void nadam_update(Cpu, T* w, const T* g, T* m, T* v, int64_t n, const ops::NadamCoeffs& c) {
  const T b1 = T(c.b1), b2 = T(c.b2), gs = T(c.g_scale), msc = T(c.m_scale), vs = T(c.v_scale);
  const T mu_t = T(c.mu_t), mu_n = T(c.mu_next), lr = T(c.lr), eps = T(c.eps);
  elementwise(n, [=](int64_t i) {
    const T gp = g[i] * gs;
    m[i] = b1 * m[i] + (T(1) - b1) * g[i];
    v[i] = b2 * v[i] + (T(1) - b2) * g[i] * g[i];
    const T mp = m[i] * msc;
    const T vp = v[i] * vs;
    const T mbar = (T(1) - mu_t) * gp + mu_n * mp;
    w[i] -= lr * mbar / (std::sqrt(vp) + eps);
  });
}

// ---- random fills ---------------------------------------------------------------------------------
template <typename T> void random_uniform(Cpu, T* x, int64_t n, double lo, double hi, rng::Stream s) {
  rowwise(n, n, [=](int64_t i) { x[i] = T(lo + (hi - lo) * s.uniform_double(uint64_t(i))); });
}
template <typename T> void random_normal(Cpu, T* x, int64_t n, double mean, double sd, rng::Stream s) {
  rowwise(n, n, [=](int64_t i) { x[i] = T(mean + sd * s.normal(uint64_t(i))); });
}
template <typename T> void truncated_normal(Cpu, T* x, int64_t n, double mean, double sd, rng::Stream s) {
  rowwise(n, n, [=](int64_t i) { x[i] = T(mean + sd * s.truncated_normal(uint64_t(i))); });
}

// ---- explicit instantiations -------------------------------------------------------------------------
#define LS_INSTANTIATE(T)                                                                                      \
  template void fill<T>(Cpu, T*, int64_t, T);                                                                  \
  template void copy<T>(Cpu, const T*, T*, int64_t);                                                           \
  template void scale<T>(Cpu, T*, int64_t, T);                                                                 \
  template void axpby<T>(Cpu, T, const T*, T, T*, int64_t);                                                    \
  template void add<T>(Cpu, const T*, const T*, T*, int64_t, bool);                                            \
  template void mul<T>(Cpu, const T*, const T*, T*, int64_t);                                                  \
  template void clip_by_value<T>(Cpu, T*, int64_t, T, T);                                                      \
  template double sum<T>(Cpu, const T*, int64_t);                                                              \
  template double sum_squares<T>(Cpu, const T*, int64_t);                                                      \
  template double sum_abs<T>(Cpu, const T*, int64_t);                                                          \
  template double max_abs_diff<T>(Cpu, const T*, const T*, int64_t);                                           \
  template bool all_finite<T>(Cpu, const T*, int64_t);                                                         \
  template void concat_block<T>(Cpu, T*, T*, int64_t, int64_t, int64_t, int64_t, bool);                         \
  template void extremum<T>(Cpu, bool, const T*, const T*, T*, int64_t);                                        \
  template void extremum_backward<T>(Cpu, bool, const T*, const T*, const T*, T*, T*, int64_t);                 \
  template void bias_add<T>(Cpu, T*, const T*, int64_t, int64_t);                                              \
  template void bias_grad<T>(Cpu, const T*, T*, int64_t, int64_t, T);                                          \
  template void activation_forward<T>(Cpu, ops::Activation, T, const T*, T*, int64_t, int64_t);                \
  template void activation_backward<T>(Cpu, ops::Activation, T, const T*, const T*, const T*, T*, int64_t,     \
                                       int64_t);                                                               \
  template void prelu_forward<T>(Cpu, const T*, const T*, const ops::Broadcast&, T*, int64_t);                 \
  template void prelu_backward<T>(Cpu, const T*, const T*, const ops::Broadcast&, const T*, T*, T*, int64_t);  \
  template void rrelu_forward_train<T>(Cpu, const T*, T, T, rng::Stream, int64_t, T*, T*, int64_t);                     \
  template void rrelu_backward<T>(Cpu, const T*, const T*, const T*, T*, int64_t);                             \
  template void dropout_forward<T>(Cpu, const T*, T, rng::Stream, int64_t, T*, T*, int64_t);                   \
  template void alpha_dropout_forward<T>(Cpu, const T*, T, rng::Stream, int64_t, T*, T*, int64_t);             \
  template void bn_sums<T>(Cpu, const T*, ops::FeatureView, double*);                                          \
  template void bn_moments<T>(Cpu, const double*, double, T*, T*, int64_t);                                    \
  template void bn_apply<T>(Cpu, const T*, ops::FeatureView, const T*, const T*, const T*, const T*, T, T*, bool);\
  template void bn_update_moving<T>(Cpu, T*, const T*, int64_t, T);                                            \
  template void bn_backward_sums<T>(Cpu, const T*, const T*, ops::FeatureView, const T*, const T*, T,          \
                                    double*, const T*);                                                                \
  template void bn_backward_apply<T>(Cpu, const T*, const T*, ops::FeatureView, const T*, const T*, const T*,  \
                                     T, const double*, double, T*, const T*);                                     \
  template void bn_backward_inference<T>(Cpu, const T*, ops::FeatureView, const T*, const T*, T, T*, const T*);\
  template void bn_param_grads<T>(Cpu, const double*, int64_t, T*, T*);                                        \
  template void dense_normalized_grads<T>(Cpu, const T*, const T*, int64_t, T*, const T*, const T*, const T*, \
                                          T*, int64_t, int64_t, double*, T);                                   \
  template void softmax_xent_sparse<T>(Cpu, const T*, const T*, T*, T*, int64_t, int64_t, T);                  \
  template void softmax_xent_dense<T>(Cpu, const T*, const T*, T*, T*, int64_t, int64_t, T);                   \
  template void sigmoid_xent<T>(Cpu, const T*, const T*, T*, T*, int64_t, int64_t, T);                         \
  template void sparse_xent_probs<T>(Cpu, const T*, const T*, T*, T*, int64_t, int64_t, T);                    \
  template void categorical_xent_probs<T>(Cpu, const T*, const T*, T*, T*, int64_t, int64_t, T);               \
  template void binary_xent_probs<T>(Cpu, const T*, const T*, T*, T*, int64_t, int64_t, T);                    \
  template void mse<T>(Cpu, const T*, const T*, T*, T*, int64_t, int64_t, T);                                  \
  template void accuracy<T>(Cpu, ops::AccuracyKind, const T*, const T*, T*, int64_t, int64_t);                 \
  template double l1l2_penalty<T>(Cpu, const T*, int64_t, double, double);                                     \
  template void l1l2_grad<T>(Cpu, const T*, T*, int64_t, T, T);                                                \
  template void max_norm<T>(Cpu, T*, ops::FeatureView, T);                                                     \
  template void sgd_update<T>(Cpu, T*, const T*, int64_t, T);                                                  \
  template void momentum_update<T>(Cpu, T*, const T*, T*, int64_t, T, T, bool);                                \
  template void adagrad_update<T>(Cpu, T*, const T*, T*, int64_t, T, T);                                       \
  template void rmsprop_update<T>(Cpu, T*, const T*, T*, T*, T*, int64_t, T, T, T, T);                         \
  template void adam_update<T>(Cpu, T*, const T*, T*, T*, T*, int64_t, T, T, T, T);                            \
  template void adamax_update<T>(Cpu, T*, const T*, T*, T*, int64_t, T, T, T, T);                              \
  template void nadam_update<T>(Cpu, T*, const T*, T*, T*, int64_t, const ops::NadamCoeffs&);                  \
  template void random_uniform<T>(Cpu, T*, int64_t, double, double, rng::Stream);                              \
  template void random_normal<T>(Cpu, T*, int64_t, double, double, rng::Stream);                               \
  template void truncated_normal<T>(Cpu, T*, int64_t, double, double, rng::Stream);

LS_INSTANTIATE(float)
LS_INSTANTIATE(double)

}  // namespace lockstep::kernels
