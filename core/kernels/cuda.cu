// CUDA backend: the device memory pool, the compute stream, cuBLAS gemm and one CUDA kernel per op of
// core/kernels/cpu.h (float32). See cuda.h for the contract.
//
// Style. Most kernels are written as `each(n, [=] __device__ (int64_t i) {...})`: one logical thread
// per element (or per row / per channel), grid-stride, so results never depend on the launch
// configuration. Bodies mirror cpu.cpp line for line, in the same order of operations, and the file is
// compiled with --fmad=false, so where the CPU's result is pure IEEE arithmetic (+ - * / sqrt) the
// GPU's is the same bits. Row-wise kernels (softmax, losses, accuracy) use one thread per row and
// per-channel statistics one thread per channel, exactly like the CPU loops: simple, deterministic
// and bit-compatible, though not the fastest for very wide rows or very few channels.
//
// Reductions (sum, sum_squares, sum_abs, max_abs_diff, all_finite) accumulate in float64 with a
// fixed two-stage tree (fixed grid), so they are deterministic run to run; they differ from the CPU's
// OpenMP order in the last bits of a double.
#include "core/kernels/cuda.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

#define LS_CUDA_CHECK(call)                                                                                   \
  do {                                                                                                        \
    cudaError_t ls_err_ = (call);                                                                             \
    if (ls_err_ != cudaSuccess)                                                                               \
      throw ::lockstep::Error(::lockstep::str_cat("CUDA error: ", cudaGetErrorString(ls_err_), " in ", #call, \
                                                  " (", __FILE__, ":", __LINE__, ")"));                       \
  } while (0)

#define LS_CUBLAS_CHECK(call)                                                                                \
  do {                                                                                                       \
    cublasStatus_t ls_st_ = (call);                                                                          \
    if (ls_st_ != CUBLAS_STATUS_SUCCESS)                                                                     \
      throw ::lockstep::Error(::lockstep::str_cat("cuBLAS error: ", cublasGetStatusString(ls_st_), " in ",   \
                                                  #call, " (", __FILE__, ":", __LINE__, ")"));               \
  } while (0)

namespace lockstep {

// =================================================================================================
// Runtime: device, stream, cuBLAS handle
// =================================================================================================
namespace {

cudaStream_t stream() {
  // Created on the device current at first use: cuda::set_device runs before any CUDA work.
  static cudaStream_t s = [] {
    cudaStream_t st = nullptr;
    LS_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    return st;
  }();
  return s;
}

cublasHandle_t blas() {
  static cublasHandle_t h = [] {
    cublasHandle_t hh = nullptr;
    LS_CUBLAS_CHECK(cublasCreate(&hh));
    LS_CUBLAS_CHECK(cublasSetStream(hh, stream()));
    // Full float32 (no TF32 tensor-core rounding): results comparable with the CPU's sgemm.
    LS_CUBLAS_CHECK(cublasSetMathMode(hh, CUBLAS_DEFAULT_MATH));
    LS_CUBLAS_CHECK(cublasSetPointerMode(hh, CUBLAS_POINTER_MODE_HOST));
    return hh;
  }();
  return h;
}

void check_launch(const char* what) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw Error(str_cat("CUDA kernel launch failed in ", what, ": ", cudaGetErrorString(e)));
}

// =================================================================================================
// Caching device memory pool
// =================================================================================================
// Blocks are rounded up to a size class (powers of two from 512 B to 1 MiB, then multiples of 2 MiB)
// and, when freed, kept on that class's free list for the next request of the class. All work runs on
// the one compute stream, so a block freed by the host while kernels that use it are still queued can
// be handed out again at once: the next user's work is queued behind them. After the first step the
// training loop allocates only sizes it has allocated before, so it makes no cudaMalloc calls.
class Pool {
 public:
  static size_t size_class(int64_t bytes) {
    const size_t b = static_cast<size_t>(std::max<int64_t>(bytes, 1));
    if (b <= (size_t(1) << 20)) {
      size_t s = 512;
      while (s < b) s <<= 1;
      return s;
    }
    const size_t step = size_t(2) << 20;
    return (b + step - 1) / step * step;
  }

  void* alloc(int64_t bytes) {
    const size_t sz = size_class(bytes);
    std::lock_guard<std::mutex> lock(mu_);
    void* p = nullptr;
    auto& fl = free_[sz];
    if (!fl.empty()) {
      p = fl.back();
      fl.pop_back();
      cached_ -= int64_t(sz);
    } else {
      cudaError_t e = cudaMalloc(&p, sz);
      if (e != cudaSuccess) {
        (void)cudaGetLastError();
        release_cached_locked();  // give cached blocks of other classes back and retry once
        e = cudaMalloc(&p, sz);
        if (e != cudaSuccess) {
          (void)cudaGetLastError();
          throw Error(str_cat("out of GPU memory allocating ", bytes, " bytes (", live_, " bytes in use): ",
                              cudaGetErrorString(e)));
        }
      }
      ++mallocs_;
    }
    live_blocks_[p] = sz;
    live_ += int64_t(sz);
    return p;
  }

  void free(void* p) noexcept {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = live_blocks_.find(p);
    if (it == live_blocks_.end()) {
      std::fprintf(stderr, "lockstep: cuda_free of a pointer the pool did not hand out (%p); ignored\n", p);
      return;
    }
    const size_t sz = it->second;
    live_blocks_.erase(it);
    live_ -= int64_t(sz);
    free_[sz].push_back(p);
    cached_ += int64_t(sz);
  }

  int64_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }
  int64_t live() {
    std::lock_guard<std::mutex> lock(mu_);
    return live_;
  }
  int64_t mallocs() {
    std::lock_guard<std::mutex> lock(mu_);
    return mallocs_;
  }

 private:
  void release_cached_locked() {
    for (auto& [sz, list] : free_) {
      for (void* p : list) (void)cudaFree(p);  // cudaFree waits for the device
      list.clear();
    }
    cached_ = 0;
  }

  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  std::unordered_map<void*, size_t> live_blocks_;
  int64_t cached_ = 0, live_ = 0, mallocs_ = 0;
};

// Never destroyed: tensors freed during static destruction still find it, and the driver reclaims
// the memory at exit.
Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}

// A pool block for a kernel's scratch space, returned when the scope ends (stream-ordered, see Pool).
class Scratch {
 public:
  explicit Scratch(int64_t bytes) : p_(bytes > 0 ? pool().alloc(bytes) : nullptr) {}
  ~Scratch() {
    if (p_) pool().free(p_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <typename T> T* as() const { return static_cast<T*>(p_); }

 private:
  void* p_;
};

}  // namespace

bool cuda_available() {
  static const bool ok = [] {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    return n > 0;
  }();
  return ok;
}

void* cuda_alloc(int64_t bytes) {
  LS_CHECK(cuda_available(), "a CUDA tensor was requested, but no CUDA device is available");
  return pool().alloc(bytes);
}

void cuda_free(void* p) {
  if (p) pool().free(p);
}

void cuda_copy(void* dst, Device dst_dev, const void* src, Device src_dev, int64_t bytes) {
  if (bytes <= 0) return;
  cudaStream_t s = stream();
  if (dst_dev == Device::CUDA && src_dev == Device::CUDA) {
    LS_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyDeviceToDevice, s));
  } else if (dst_dev == Device::CUDA) {
    // Host -> device: wait, so the caller may free or reuse the host memory on return. (The training
    // loop's batches go through cuda::copy_to_device_async with pinned staging instead.)
    LS_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyHostToDevice, s));
    LS_CUDA_CHECK(cudaStreamSynchronize(s));
  } else {
    LS_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyDeviceToHost, s));
    LS_CUDA_CHECK(cudaStreamSynchronize(s));
  }
}

namespace cuda {

int device_count() {
  if (!cuda_available()) return 0;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}
void set_device(int index) { LS_CUDA_CHECK(cudaSetDevice(index)); }
int current_device() {
  int d = 0;
  LS_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}
void* compute_stream() { return static_cast<void*>(stream()); }
void synchronize() { LS_CUDA_CHECK(cudaStreamSynchronize(stream())); }
void* host_alloc_pinned(int64_t bytes) {
  void* p = nullptr;
  LS_CUDA_CHECK(cudaMallocHost(&p, size_t(std::max<int64_t>(bytes, 1))));
  return p;
}
void host_free_pinned(void* p) {
  if (p) (void)cudaFreeHost(p);
}
void* copy_to_device_async(void* dst, const void* src, int64_t bytes) {
  cudaEvent_t ev = nullptr;
  LS_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  if (bytes > 0) LS_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(bytes), cudaMemcpyHostToDevice, stream()));
  LS_CUDA_CHECK(cudaEventRecord(ev, stream()));
  return static_cast<void*>(ev);
}
void event_wait_host(void* event) { LS_CUDA_CHECK(cudaEventSynchronize(static_cast<cudaEvent_t>(event))); }
void event_destroy(void* event) {
  if (event) (void)cudaEventDestroy(static_cast<cudaEvent_t>(event));
}
int64_t pool_cached_bytes() { return pool().cached(); }
int64_t pool_live_bytes() { return pool().live(); }
int64_t pool_malloc_count() { return pool().mallocs(); }

}  // namespace cuda

// =================================================================================================
// Kernels
// =================================================================================================
namespace kernels {

namespace {

constexpr int kBlock = 256;
constexpr double kKerasEps = 1e-7;  // backend.epsilon()

unsigned grid_for(int64_t n) {
  const int64_t b = (n + kBlock - 1) / kBlock;
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(b, 1), int64_t(1) << 16));
}

template <typename F>
__global__ void each_kernel(int64_t n, F f) {
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) f(i);
}

// f(i) for i in [0, n) on the compute stream.
template <typename F>
void each(int64_t n, F f, const char* what) {
  if (n <= 0) return;
  each_kernel<<<grid_for(n), kBlock, 0, stream()>>>(n, f);
  check_launch(what);
}

// std::max / std::min exactly (NaN handling included): max(a, b) = a < b ? b : a.
__device__ __forceinline__ float smax(float a, float b) { return (a < b) ? b : a; }
__device__ __forceinline__ float smin(float a, float b) { return (b < a) ? b : a; }
__device__ __forceinline__ float sigmoid(float x) {
  if (x >= 0.0f) return 1.0f / (1.0f + expf(-x));
  float e = expf(x);
  return e / (1.0f + e);
}

// ---- two-stage float64 reduction -------------------------------------------------------------
template <typename F>
__global__ void reduce_kernel(int64_t n, F f, bool is_max, double* out) {
  __shared__ double sh[kBlock];
  double acc = 0.0;  // every reduction here is a sum, or a max of non-negative values
  const int64_t stride = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const double v = f(i);
    acc = is_max ? fmax(acc, v) : acc + v;
  }
  sh[threadIdx.x] = acc;
  __syncthreads();
  for (int s = kBlock / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) sh[threadIdx.x] = is_max ? fmax(sh[threadIdx.x], sh[threadIdx.x + s]) : sh[threadIdx.x] + sh[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = sh[0];
}
struct ReadPartial {
  const double* p;
  __device__ double operator()(int64_t i) const { return p[i]; }
};

template <typename F>
double reduce(int64_t n, bool is_max, F f, const char* what) {
  if (n <= 0) return 0.0;
  const int64_t nb = std::min<int64_t>((n + kBlock - 1) / kBlock, 1024);
  Scratch buf((nb + 1) * int64_t(sizeof(double)));
  double* part = buf.as<double>();
  double* out = part + nb;
  reduce_kernel<<<unsigned(nb), kBlock, 0, stream()>>>(n, f, is_max, part);
  check_launch(what);
  reduce_kernel<<<1, kBlock, 0, stream()>>>(nb, ReadPartial{part}, is_max, out);
  check_launch(what);
  double h = 0.0;
  LS_CUDA_CHECK(cudaMemcpyAsync(&h, out, sizeof(double), cudaMemcpyDeviceToHost, stream()));
  LS_CUDA_CHECK(cudaStreamSynchronize(stream()));
  return h;
}

// Host -> device copy of a small host array into pool scratch (waits, so `v` may go away).
template <typename T>
void upload(const std::vector<T>& v, const Scratch& dst) {
  if (v.empty()) return;
  LS_CUDA_CHECK(cudaMemcpyAsync(dst.as<T>(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice, stream()));
  LS_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

}  // namespace

// ---- elementwise and reductions ------------------------------------------------------------------
void fill(Cuda, float* x, int64_t n, float v) {
  each(n, [=] __device__(int64_t i) { x[i] = v; }, "fill");
}
void copy(Cuda, const float* src, float* dst, int64_t n) {
  if (src == dst || n <= 0) return;
  LS_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(n) * sizeof(float), cudaMemcpyDeviceToDevice, stream()));
}
void scale(Cuda, float* x, int64_t n, float a) {
  each(n, [=] __device__(int64_t i) { x[i] *= a; }, "scale");
}
void axpby(Cuda, float a, const float* x, float b, float* y, int64_t n) {
  if (b == 1.0f)
    each(n, [=] __device__(int64_t i) { y[i] += a * x[i]; }, "axpby");
  else if (b == 0.0f)
    each(n, [=] __device__(int64_t i) { y[i] = a * x[i]; }, "axpby");
  else
    each(n, [=] __device__(int64_t i) { y[i] = a * x[i] + b * y[i]; }, "axpby");
}
void add(Cuda, const float* a, const float* b, float* out, int64_t n, bool relu) {
  if (relu)
    each(n, [=] __device__(int64_t i) { const float v = a[i] + b[i]; out[i] = v > 0.0f ? v : 0.0f; }, "add_relu");
  else
    each(n, [=] __device__(int64_t i) { out[i] = a[i] + b[i]; }, "add");
}
void mul(Cuda, const float* a, const float* b, float* out, int64_t n) {
  each(n, [=] __device__(int64_t i) { out[i] = a[i] * b[i]; }, "mul");
}
void clip_by_value(Cuda, float* x, int64_t n, float lo, float hi) {
  each(n, [=] __device__(int64_t i) { x[i] = smin(smax(x[i], lo), hi); }, "clip_by_value");
}
double sum(Cuda, const float* x, int64_t n) {
  return reduce(n, false, [=] __device__(int64_t i) { return double(x[i]); }, "sum");
}
double sum_squares(Cuda, const float* x, int64_t n) {
  return reduce(n, false, [=] __device__(int64_t i) { return double(x[i]) * double(x[i]); }, "sum_squares");
}
double sum_abs(Cuda, const float* x, int64_t n) {
  return reduce(n, false, [=] __device__(int64_t i) { return fabs(double(x[i])); }, "sum_abs");
}
double max_abs_diff(Cuda, const float* a, const float* b, int64_t n) {
  // fmax ignores NaN operands, as the CPU's std::max(m, NaN) does.
  return reduce(n, true, [=] __device__(int64_t i) { return fabs(double(a[i]) - double(b[i])); }, "max_abs_diff");
}
bool all_finite(Cuda, const float* x, int64_t n) {
  return reduce(n, true, [=] __device__(int64_t i) { return isfinite(x[i]) ? 0.0 : 1.0; }, "all_finite") == 0.0;
}

// ---- merges ----------------------------------------------------------------------------------------
void concat_block(Cuda, float* part, float* whole, int64_t outer, int64_t part_cols, int64_t whole_cols,
                  int64_t offset, bool into_whole) {
  if (outer <= 0 || part_cols <= 0) return;
  if (outer == 1 || part_cols == whole_cols) {  // one contiguous block
    float* w = whole + offset;
    if (into_whole)
      copy(Cuda{}, part, w, outer * part_cols);
    else
      copy(Cuda{}, w, part, outer * part_cols);
    return;
  }
  // One thread per element of the part.
  if (into_whole)
    each(
        outer * part_cols,
        [=] __device__(int64_t i) {
          const int64_t r = i / part_cols, c = i - r * part_cols;
          whole[r * whole_cols + offset + c] = part[i];
        },
        "concat_block");
  else
    each(
        outer * part_cols,
        [=] __device__(int64_t i) {
          const int64_t r = i / part_cols, c = i - r * part_cols;
          part[i] = whole[r * whole_cols + offset + c];
        },
        "concat_block");
}
namespace {
// cpu.cpp's picks_a: ties go to a; a NaN operand picks b.
__device__ __forceinline__ bool picks_a(bool is_max, float a, float b) { return is_max ? a >= b : a <= b; }
}  // namespace
void extremum(Cuda, bool is_max, const float* a, const float* b, float* out, int64_t n) {
  each(
      n,
      [=] __device__(int64_t i) {
        const float x = a[i], y = b[i];
        out[i] = picks_a(is_max, x, y) ? x : y;
      },
      "extremum");
}
void extremum_backward(Cuda, bool is_max, const float* a, const float* b, const float* dy, float* da, float* db,
                       int64_t n) {
  if (!da && !db) return;
  each(
      n,
      [=] __device__(int64_t i) {
        const bool p = picks_a(is_max, a[i], b[i]);
        const float g = dy[i];
        if (da) da[i] = p ? g : 0.0f;
        if (db) db[i] = p ? 0.0f : g;
      },
      "extremum_backward");
}

// ---- products --------------------------------------------------------------------------------------
// Row-major C[m,n] = op(A) op(B) is column-major Cᵀ[n,m] = op(B)ᵀ op(A)ᵀ, and a row-major matrix with
// leading dimension ld is, read column-major, its transpose with the same ld: so call column-major
// sgemm with the operands swapped and the same transpose flags.
void gemm(Cuda, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    scale(Cuda{}, c, m * n, beta);  // C = beta*C (ldc == n for our callers)
    return;
  }
  LS_CHECK(m <= INT_MAX && n <= INT_MAX && k <= INT_MAX && lda <= INT_MAX && ldb <= INT_MAX && ldc <= INT_MAX,
           "gemm: dimensions beyond 32-bit cuBLAS limits");
  LS_CUBLAS_CHECK(cublasSgemm(blas(), tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, int(n), int(m),
                              int(k), &alpha, b, int(ldb), a, int(lda), &beta, c, int(ldc)));
}
void bias_add(Cuda, float* y, const float* b, int64_t rows, int64_t cols) {
  each(rows * cols, [=] __device__(int64_t i) { y[i] += b[i % cols]; }, "bias_add");
}
void bias_grad(Cuda, const float* dy, float* db, int64_t rows, int64_t cols, float beta) {
  // One thread per column, rows summed in order in float (the CPU's order).
  each(
      cols,
      [=] __device__(int64_t c) {
        float a = 0.0f;
        for (int64_t r = 0; r < rows; ++r) a += dy[r * cols + c];
        db[c] = (beta == 0.0f ? 0.0f : beta * db[c]) + a;
      },
      "bias_grad");
}

// ---- convolutions, pooling, padding -----------------------------------------------------------------
// The semantics of kernels/conv_cpu.cpp (NHWC maps, kernels [k_h, k_w, in_c/groups, out_c]).
//  * General convolutions: im2col into a pool block (a block of samples at a time, one group at a
//    time: [pixels, k_h·k_w·in_c/groups], the kernel's own row order) and cuBLAS sgemm, exactly the
//    CPU's lowering; 1x1 stride-1 unpadded ones are one sgemm. The input gradient is dy·Wᵀ into the
//    columns, then col2im written as a gather: one thread per dx element sums the columns it appears
//    in. The kernel gradient is colᵀ·dy summed over the blocks by sgemm with beta = 1.
//  * Depthwise (groups == in_c > 1): direct kernels, one thread per output element; the kernel
//    gradient sums fixed chunks of positions into partials, then the partials in chunk order.
//  * Pooling, padding, channel scaling: one thread per element written. Max pooling's gradient finds
//    each output's winning position first (the first in row-major order holding the max), then each
//    dx element gathers the outputs it won.
// No atomics anywhere, and every sum has a fixed order that does not depend on the launch, so results
// are the same bits run to run. Where the CPU's loops add in a fixed order (depthwise, pooling,
// col2im's own sums) the gathers add in that same order. The per-element bodies are __host__
// __device__ functions of the geometry (Window2d's own member functions are host-only).
namespace {

using ops::Window2d;

// Column blocks of about this many bytes (the CPU's 4 MiB is sized for its cache; a GPU's products
// want more rows).
constexpr int64_t kGpuColumnBytes = int64_t(32) << 20;
// Depthwise kernel gradient: partial sums for about this many (chunk, tap, channel) threads, chunks of
// at least kMinChunk positions.
constexpr int64_t kDwPartials = int64_t(1) << 17;
constexpr int64_t kMinChunk = 64;

bool conv_pointwise(const Window2d& g) {
  return g.k_h == 1 && g.k_w == 1 && g.stride_h == 1 && g.stride_w == 1 && g.pad_top == 0 && g.pad_left == 0 &&
         g.groups == 1 && g.out_h == g.in_h && g.out_w == g.in_w;
}
bool conv_depthwise(const Window2d& g) { return g.groups > 1 && g.groups == g.in_c; }
int64_t conv_block_samples(const Window2d& g, int64_t k) {
  const int64_t per_sample = g.out_h * g.out_w * k * int64_t(sizeof(float));
  return std::min<int64_t>(std::max<int64_t>(kGpuColumnBytes / std::max<int64_t>(per_sample, 1), 1),
                           std::max<int64_t>(g.batch, 1));
}

__host__ __device__ inline int64_t row_of(const Window2d& g, int64_t o, int64_t k) {
  return o * g.stride_h - g.pad_top + k * g.dil_h;
}
__host__ __device__ inline int64_t col_of(const Window2d& g, int64_t o, int64_t k) {
  return o * g.stride_w - g.pad_left + k * g.dil_w;
}
__host__ __device__ inline int64_t in_pix(const Window2d& g, int64_t n, int64_t h, int64_t w) {
  return (n * g.in_h + h) * g.in_w + w;
}
__host__ __device__ inline int64_t out_pix(const Window2d& g, int64_t n, int64_t h, int64_t w) {
  return (n * g.out_h + h) * g.out_w + w;
}
// The output index along one axis that tap k maps input position i to, or -1 (conv_cpu.cpp's out_of).
__host__ __device__ inline int64_t out_of(int64_t i, int64_t k, int64_t pad, int64_t stride, int64_t dil,
                                          int64_t out) {
  const int64_t t = i + pad - k * dil;
  if (t < 0 || t % stride != 0) return -1;
  return t / stride < out ? t / stride : -1;
}

// col[i], i over [b·out_h·out_w, k]: x[n, in_row, in_col, grp·cg + ci] or 0 in the padding.
__host__ __device__ inline float im2col_at(const float* x, const Window2d& g, int64_t grp, int64_t n0, int64_t i) {
  const int64_t cg = g.in_c / g.groups, k = g.k_h * g.k_w * cg;
  const int64_t m = i / k, kk = i - m * k;
  const int64_t ci = kk % cg, tap = kk / cg, kw = tap % g.k_w, kh = tap / g.k_w;
  const int64_t ow = m % g.out_w, oh = (m / g.out_w) % g.out_h, n = n0 + m / (g.out_w * g.out_h);
  const int64_t ih = row_of(g, oh, kh), iw = col_of(g, ow, kw);
  if (ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) return 0.0f;
  return x[in_pix(g, n, ih, iw) * g.in_c + grp * cg + ci];
}

// col2im as a gather: i over [b, in_h, in_w, cg]; dx[n0 + s, ih, iw, grp·cg + ci] = the sum of the
// column entries of that input, in the CPU's order (output pixels ascending: taps descending).
__host__ __device__ inline void col2im_at(const float* col, const Window2d& g, int64_t grp, int64_t n0, int64_t i,
                                          float* dx) {
  const int64_t cg = g.in_c / g.groups, k = g.k_h * g.k_w * cg;
  const int64_t ci = i % cg;
  int64_t r = i / cg;
  const int64_t iw = r % g.in_w;
  r /= g.in_w;
  const int64_t ih = r % g.in_h, s = r / g.in_h;
  float acc = 0.0f;
  for (int64_t kh = g.k_h - 1; kh >= 0; --kh) {
    const int64_t oh = out_of(ih, kh, g.pad_top, g.stride_h, g.dil_h, g.out_h);
    if (oh < 0) continue;
    for (int64_t kw = g.k_w - 1; kw >= 0; --kw) {
      const int64_t ow = out_of(iw, kw, g.pad_left, g.stride_w, g.dil_w, g.out_w);
      if (ow < 0) continue;
      acc += col[((s * g.out_h + oh) * g.out_w + ow) * k + (kh * g.k_w + kw) * cg + ci];
    }
  }
  dx[in_pix(g, n0 + s, ih, iw) * g.in_c + grp * cg + ci] = acc;
}

// Depthwise: output channel oc reads input channel oc / mult. i over y [N, out_h, out_w, out_c].
__host__ __device__ inline void dw_forward_at(const float* x, const float* w, const Window2d& g, int64_t i, float* y) {
  const int64_t mult = g.out_c / g.in_c, oc = i % g.out_c;
  int64_t r = i / g.out_c;
  const int64_t ow = r % g.out_w;
  r /= g.out_w;
  const int64_t oh = r % g.out_h, n = r / g.out_h;
  float acc = 0.0f;
  for (int64_t kh = 0; kh < g.k_h; ++kh) {
    const int64_t ih = row_of(g, oh, kh);
    if (ih < 0 || ih >= g.in_h) continue;
    for (int64_t kw = 0; kw < g.k_w; ++kw) {
      const int64_t iw = col_of(g, ow, kw);
      if (iw < 0 || iw >= g.in_w) continue;
      acc += x[in_pix(g, n, ih, iw) * g.in_c + oc / mult] * w[(kh * g.k_w + kw) * g.out_c + oc];
    }
  }
  y[i] = acc;
}
// i over dx [N, in_h, in_w, in_c]: the sum over the outputs reading it (taps descending) and its
// `mult` output channels (ascending), the CPU's order.
__host__ __device__ inline void dw_backward_data_at(const float* dy, const float* w, const Window2d& g, int64_t i,
                                                    float* dx) {
  const int64_t mult = g.out_c / g.in_c, ci = i % g.in_c;
  int64_t r = i / g.in_c;
  const int64_t iw = r % g.in_w;
  r /= g.in_w;
  const int64_t ih = r % g.in_h, n = r / g.in_h;
  float acc = 0.0f;
  for (int64_t kh = g.k_h - 1; kh >= 0; --kh) {
    const int64_t oh = out_of(ih, kh, g.pad_top, g.stride_h, g.dil_h, g.out_h);
    if (oh < 0) continue;
    for (int64_t kw = g.k_w - 1; kw >= 0; --kw) {
      const int64_t ow = out_of(iw, kw, g.pad_left, g.stride_w, g.dil_w, g.out_w);
      if (ow < 0) continue;
      const float* dyo = dy + out_pix(g, n, oh, ow) * g.out_c + ci * mult;
      const float* wk = w + (kh * g.k_w + kw) * g.out_c + ci * mult;
      for (int64_t m = 0; m < mult; ++m) acc += dyo[m] * wk[m];
    }
  }
  dx[i] = acc;
}
// Kernel gradient, partial sums: i over [chunks, taps, out_c]; chunk j sums positions (n, oh, ow)
// [j·len, min((j+1)·len, N·out_h·out_w)) in order.
__host__ __device__ inline void dw_filter_partial_at(const float* x, const float* dy, const Window2d& g, int64_t len,
                                                     int64_t i, float* part) {
  const int64_t mult = g.out_c / g.in_c, taps = g.k_h * g.k_w, oc = i % g.out_c;
  const int64_t t = (i / g.out_c) % taps, j = i / (g.out_c * taps);
  const int64_t kh = t / g.k_w, kw = t % g.k_w, pixels = g.out_h * g.out_w;
  const int64_t p1 = (j + 1) * len < g.batch * pixels ? (j + 1) * len : g.batch * pixels;
  float acc = 0.0f;
  for (int64_t p = j * len; p < p1; ++p) {
    const int64_t n = p / pixels, oh = (p / g.out_w) % g.out_h, ow = p % g.out_w;
    const int64_t ih = row_of(g, oh, kh), iw = col_of(g, ow, kw);
    if (ih < 0 || ih >= g.in_h || iw < 0 || iw >= g.in_w) continue;
    acc += x[in_pix(g, n, ih, iw) * g.in_c + oc / mult] * dy[p * g.out_c + oc];
  }
  part[i] = acc;
}

// Pooling.
__host__ __device__ inline int64_t window_count(const Window2d& g, int64_t oh, int64_t ow) {
  int64_t h0 = row_of(g, oh, 0), h1 = row_of(g, oh, g.k_h - 1) + 1;
  int64_t w0 = col_of(g, ow, 0), w1 = col_of(g, ow, g.k_w - 1) + 1;
  h0 = h0 > 0 ? h0 : 0;
  h1 = h1 < g.in_h ? h1 : g.in_h;
  w0 = w0 > 0 ? w0 : 0;
  w1 = w1 < g.in_w ? w1 : g.in_w;
  return (h1 > h0 ? h1 - h0 : 0) * (w1 > w0 ? w1 - w0 : 0);
}
__host__ __device__ inline float avg_inv(const Window2d& g, int64_t oh, int64_t ow) {
  const int64_t c = window_count(g, oh, ow);
  return 1.0f / float(c > 1 ? c : 1);
}
// i over y [N, out_h, out_w, C]: the max over the window's positions inside the input (-inf if none);
// `x > m ? x : m` as the CPU, so a NaN never wins.
__host__ __device__ inline void max_pool_forward_at(const float* x, const Window2d& g, int64_t i, float* y) {
  const int64_t cn = g.in_c, c = i % cn;
  int64_t r = i / cn;
  const int64_t ow = r % g.out_w;
  r /= g.out_w;
  const int64_t oh = r % g.out_h, n = r / g.out_h;
  float m = -INFINITY;
  for (int64_t kh = 0; kh < g.k_h; ++kh) {
    const int64_t ih = row_of(g, oh, kh);
    if (ih < 0 || ih >= g.in_h) continue;
    for (int64_t kw = 0; kw < g.k_w; ++kw) {
      const int64_t iw = col_of(g, ow, kw);
      if (iw < 0 || iw >= g.in_w) continue;
      const float v = x[in_pix(g, n, ih, iw) * cn + c];
      m = v > m ? v : m;
    }
  }
  y[i] = m;
}
// i over y: the tap (kh·k_w + kw) of the first window position, row-major, with x == y, or -1.
__host__ __device__ inline void max_pool_arg_at(const float* x, const float* y, const Window2d& g, int64_t i,
                                                int32_t* arg) {
  const int64_t cn = g.in_c, c = i % cn;
  int64_t r = i / cn;
  const int64_t ow = r % g.out_w;
  r /= g.out_w;
  const int64_t oh = r % g.out_h, n = r / g.out_h;
  const float m = y[i];
  int32_t found = -1;
  for (int64_t kh = 0; kh < g.k_h && found < 0; ++kh) {
    const int64_t ih = row_of(g, oh, kh);
    if (ih < 0 || ih >= g.in_h) continue;
    for (int64_t kw = 0; kw < g.k_w; ++kw) {
      const int64_t iw = col_of(g, ow, kw);
      if (iw < 0 || iw >= g.in_w) continue;
      if (x[in_pix(g, n, ih, iw) * cn + c] == m) {
        found = int32_t(kh * g.k_w + kw);
        break;
      }
    }
  }
  arg[i] = found;
}
// i over dx [N, in_h, in_w, C]: the sum of dy over the outputs this position won, in the CPU's order
// (outputs ascending: taps descending).
__host__ __device__ inline void max_pool_backward_at(const int32_t* arg, const float* dy, const Window2d& g, int64_t i,
                                                     float* dx) {
  const int64_t cn = g.in_c, c = i % cn;
  int64_t r = i / cn;
  const int64_t iw = r % g.in_w;
  r /= g.in_w;
  const int64_t ih = r % g.in_h, n = r / g.in_h;
  float acc = 0.0f;
  for (int64_t kh = g.k_h - 1; kh >= 0; --kh) {
    const int64_t oh = out_of(ih, kh, g.pad_top, g.stride_h, g.dil_h, g.out_h);
    if (oh < 0) continue;
    for (int64_t kw = g.k_w - 1; kw >= 0; --kw) {
      const int64_t ow = out_of(iw, kw, g.pad_left, g.stride_w, g.dil_w, g.out_w);
      if (ow < 0) continue;
      const int64_t o = out_pix(g, n, oh, ow) * cn + c;
      if (arg[o] == int32_t(kh * g.k_w + kw)) acc += dy[o];
    }
  }
  dx[i] = acc;
}
__host__ __device__ inline void avg_pool_forward_at(const float* x, const Window2d& g, int64_t i, float* y) {
  const int64_t cn = g.in_c, c = i % cn;
  int64_t r = i / cn;
  const int64_t ow = r % g.out_w;
  r /= g.out_w;
  const int64_t oh = r % g.out_h, n = r / g.out_h;
  float acc = 0.0f;
  for (int64_t kh = 0; kh < g.k_h; ++kh) {
    const int64_t ih = row_of(g, oh, kh);
    if (ih < 0 || ih >= g.in_h) continue;
    for (int64_t kw = 0; kw < g.k_w; ++kw) {
      const int64_t iw = col_of(g, ow, kw);
      if (iw < 0 || iw >= g.in_w) continue;
      acc += x[in_pix(g, n, ih, iw) * cn + c];
    }
  }
  y[i] = acc * avg_inv(g, oh, ow);
}
__host__ __device__ inline void avg_pool_backward_at(const float* dy, const Window2d& g, int64_t i, float* dx) {
  const int64_t cn = g.in_c, c = i % cn;
  int64_t r = i / cn;
  const int64_t iw = r % g.in_w;
  r /= g.in_w;
  const int64_t ih = r % g.in_h, n = r / g.in_h;
  float acc = 0.0f;
  for (int64_t kh = g.k_h - 1; kh >= 0; --kh) {
    const int64_t oh = out_of(ih, kh, g.pad_top, g.stride_h, g.dil_h, g.out_h);
    if (oh < 0) continue;
    for (int64_t kw = g.k_w - 1; kw >= 0; --kw) {
      const int64_t ow = out_of(iw, kw, g.pad_left, g.stride_w, g.dil_w, g.out_w);
      if (ow < 0) continue;
      acc += dy[out_pix(g, n, oh, ow) * cn + c] * avg_inv(g, oh, ow);
    }
  }
  dx[i] = acc;
}

// Padding: i over big [n, bh, bw, c] (into_big) or small [n, h, w, c].
__host__ __device__ inline void pad_into_big_at(const float* small, float* big, int64_t h, int64_t w, int64_t c,
                                                int64_t bh, int64_t bw, int64_t top, int64_t left, int64_t i) {
  const int64_t ch = i % c;
  int64_t r = i / c;
  const int64_t bx = r % bw;
  r /= bw;
  const int64_t by = r % bh, s = r / bh;
  const int64_t sy = by - top, sx = bx - left;
  big[i] = (sy >= 0 && sy < h && sx >= 0 && sx < w) ? small[((s * h + sy) * w + sx) * c + ch] : 0.0f;
}
__host__ __device__ inline void pad_from_big_at(float* small, const float* big, int64_t h, int64_t w, int64_t c,
                                                int64_t bh, int64_t bw, int64_t top, int64_t left, int64_t i) {
  const int64_t ch = i % c;
  int64_t r = i / c;
  const int64_t sx = r % w;
  r /= w;
  const int64_t sy = r % h, s = r / h;
  small[i] = big[((s * bh + sy + top) * bw + sx + left) * c + ch];
}

// Depthwise kernel gradient: chunk length over the N·out_h·out_w positions (a function of the geometry
// only, so the summation order is fixed).
int64_t dw_filter_chunk_len(const Window2d& g) {
  const int64_t positions = g.batch * g.out_h * g.out_w, outputs = g.k_h * g.k_w * g.out_c;
  const int64_t want = std::max<int64_t>(kDwPartials / std::max<int64_t>(outputs, 1), 1);
  const int64_t chunks = std::min(want, std::max<int64_t>((positions + kMinChunk - 1) / kMinChunk, 1));
  return (positions + chunks - 1) / chunks;
}

}  // namespace

void conv2d_forward(Cuda, const float* x, const float* w, const Window2d& geom, float* y, bool /*reference*/) {
  const Window2d g = geom;
  if (g.batch == 0) return;
  if (conv_depthwise(g)) {
    each(
        g.batch * g.out_h * g.out_w * g.out_c, [=] __device__(int64_t i) { dw_forward_at(x, w, g, i, y); },
        "conv2d_forward (depthwise)");
    return;
  }
  const int64_t pixels = g.out_h * g.out_w;
  if (conv_pointwise(g))
    return gemm(Cuda{}, false, false, g.batch * pixels, g.out_c, g.in_c, 1.0f, x, g.in_c, w, g.out_c, 0.0f, y,
                g.out_c);
  const int64_t cg = g.in_c / g.groups, og = g.out_c / g.groups, k = g.k_h * g.k_w * cg;
  const int64_t nb = conv_block_samples(g, k);
  Scratch buf(nb * pixels * k * int64_t(sizeof(float)));
  float* col = buf.as<float>();
  for (int64_t n0 = 0; n0 < g.batch; n0 += nb) {
    const int64_t b = std::min(nb, g.batch - n0), rows = b * pixels;
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      each(rows * k, [=] __device__(int64_t i) { col[i] = im2col_at(x, g, grp, n0, i); }, "conv2d_forward (im2col)");
      gemm(Cuda{}, false, false, rows, og, k, 1.0f, col, k, w + grp * og, g.out_c, 0.0f,
           y + n0 * pixels * g.out_c + grp * og, g.out_c);
    }
  }
}

void conv2d_backward_data(Cuda, const float* dy, const float* w, const Window2d& geom, float* dx, bool /*reference*/) {
  const Window2d g = geom;
  if (g.batch == 0) return;
  if (conv_depthwise(g)) {
    each(
        g.batch * g.in_h * g.in_w * g.in_c, [=] __device__(int64_t i) { dw_backward_data_at(dy, w, g, i, dx); },
        "conv2d_backward_data (depthwise)");
    return;
  }
  const int64_t pixels = g.out_h * g.out_w;
  if (conv_pointwise(g))
    return gemm(Cuda{}, false, true, g.batch * pixels, g.in_c, g.out_c, 1.0f, dy, g.out_c, w, g.out_c, 0.0f, dx,
                g.in_c);
  const int64_t cg = g.in_c / g.groups, og = g.out_c / g.groups, k = g.k_h * g.k_w * cg;
  const int64_t nb = conv_block_samples(g, k);
  Scratch buf(nb * pixels * k * int64_t(sizeof(float)));
  float* col = buf.as<float>();
  for (int64_t n0 = 0; n0 < g.batch; n0 += nb) {
    const int64_t b = std::min(nb, g.batch - n0), rows = b * pixels;
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      gemm(Cuda{}, false, true, rows, k, og, 1.0f, dy + n0 * pixels * g.out_c + grp * og, g.out_c, w + grp * og,
           g.out_c, 0.0f, col, k);
      // Every dx element of these samples and this group is written once: no zero fill, no atomics.
      each(b * g.in_h * g.in_w * cg, [=] __device__(int64_t i) { col2im_at(col, g, grp, n0, i, dx); },
           "conv2d_backward_data (col2im)");
    }
  }
}

void conv2d_backward_filter(Cuda, const float* x, const float* dy, const Window2d& geom, float* dw,
                            bool /*reference*/) {
  const Window2d g = geom;
  const int64_t cg = g.in_c / g.groups, og = g.out_c / g.groups, k = g.k_h * g.k_w * cg;
  if (g.batch == 0) {  // an empty sum
    fill(Cuda{}, dw, k * g.out_c, 0.0f);
    return;
  }
  if (conv_depthwise(g)) {
    const int64_t len = dw_filter_chunk_len(g), positions = g.batch * g.out_h * g.out_w;
    const int64_t chunks = (positions + len - 1) / len, outputs = g.k_h * g.k_w * g.out_c;
    if (chunks == 1) {
      each(outputs, [=] __device__(int64_t i) { dw_filter_partial_at(x, dy, g, len, i, dw); },
           "conv2d_backward_filter (depthwise)");
      return;
    }
    Scratch buf(chunks * outputs * int64_t(sizeof(float)));
    float* part = buf.as<float>();
    each(chunks * outputs, [=] __device__(int64_t i) { dw_filter_partial_at(x, dy, g, len, i, part); },
         "conv2d_backward_filter (depthwise partials)");
    each(
        outputs,
        [=] __device__(int64_t i) {
          float acc = 0.0f;
          for (int64_t j = 0; j < chunks; ++j) acc += part[j * outputs + i];
          dw[i] = acc;
        },
        "conv2d_backward_filter (depthwise sum)");
    return;
  }
  const int64_t pixels = g.out_h * g.out_w;
  if (conv_pointwise(g))
    return gemm(Cuda{}, true, false, g.in_c, g.out_c, g.batch * pixels, 1.0f, x, g.in_c, dy, g.out_c, 0.0f, dw,
                g.out_c);
  const int64_t nb = conv_block_samples(g, k);
  Scratch buf(nb * pixels * k * int64_t(sizeof(float)));
  float* col = buf.as<float>();
  for (int64_t n0 = 0; n0 < g.batch; n0 += nb) {
    const int64_t b = std::min(nb, g.batch - n0), rows = b * pixels;
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      each(rows * k, [=] __device__(int64_t i) { col[i] = im2col_at(x, g, grp, n0, i); },
           "conv2d_backward_filter (im2col)");
      gemm(Cuda{}, true, false, k, og, rows, 1.0f, col, k, dy + n0 * pixels * g.out_c + grp * og, g.out_c,
           n0 == 0 ? 0.0f : 1.0f, dw + grp * og, g.out_c);
    }
  }
}

void max_pool2d_forward(Cuda, const float* x, const Window2d& geom, float* y) {
  const Window2d g = geom;
  each(g.batch * g.out_h * g.out_w * g.in_c, [=] __device__(int64_t i) { max_pool_forward_at(x, g, i, y); },
       "max_pool2d_forward");
}
void max_pool2d_backward(Cuda, const float* x, const float* y, const float* dy, const Window2d& geom, float* dx,
                         bool relu_gate) {
  const Window2d g = geom;
  const int64_t outs = g.batch * g.out_h * g.out_w * g.in_c;
  if (g.batch == 0) return;
  Scratch buf(outs * int64_t(sizeof(int32_t)));
  int32_t* arg = buf.as<int32_t>();
  each(
      outs,
      [=] __device__(int64_t i) {
        max_pool_arg_at(x, y, g, i, arg);
        if (relu_gate && !(y[i] > 0.0f)) arg[i] = -1;  // the ReLU below passed nothing there
      },
      "max_pool2d_backward (argmax)");
  each(g.batch * g.in_h * g.in_w * g.in_c, [=] __device__(int64_t i) { max_pool_backward_at(arg, dy, g, i, dx); },
       "max_pool2d_backward");
}
void avg_pool2d_forward(Cuda, const float* x, const Window2d& geom, float* y) {
  const Window2d g = geom;
  each(g.batch * g.out_h * g.out_w * g.in_c, [=] __device__(int64_t i) { avg_pool_forward_at(x, g, i, y); },
       "avg_pool2d_forward");
}
void avg_pool2d_backward(Cuda, const float* dy, const Window2d& geom, float* dx) {
  const Window2d g = geom;
  each(g.batch * g.in_h * g.in_w * g.in_c, [=] __device__(int64_t i) { avg_pool_backward_at(dy, g, i, dx); },
       "avg_pool2d_backward");
}

void pad2d(Cuda, float* small, float* big, int64_t n, int64_t h, int64_t w, int64_t c, int64_t bh, int64_t bw,
           int64_t top, int64_t left, bool into_big) {
  if (into_big)
    each(n * bh * bw * c,
         [=] __device__(int64_t i) { pad_into_big_at(small, big, h, w, c, bh, bw, top, left, i); }, "pad2d");
  else
    each(n * h * w * c, [=] __device__(int64_t i) { pad_from_big_at(small, big, h, w, c, bh, bw, top, left, i); },
         "pad2d");
}

void scale_channels(Cuda, const float* x, const float* m, float* y, int64_t n, int64_t s, int64_t c) {
  const int64_t sc = s * c;
  each(n * sc, [=] __device__(int64_t i) { y[i] = x[i] * m[(i / sc) * c + i % c]; }, "scale_channels");
}

// ---- activations -----------------------------------------------------------------------------------
void activation_forward(Cuda, ops::Activation act, float alpha, const float* x, float* y, int64_t rows,
                        int64_t cols) {
  using A = ops::Activation;
  const int64_t n = rows * cols;
  switch (act) {
    case A::Linear:
      copy(Cuda{}, x, y, n);
      return;
    case A::Sigmoid:
      each(n, [=] __device__(int64_t i) { y[i] = sigmoid(x[i]); }, "sigmoid");
      return;
    case A::Tanh:
      each(n, [=] __device__(int64_t i) { y[i] = tanhf(x[i]); }, "tanh");
      return;
    case A::Relu:
      each(n, [=] __device__(int64_t i) { y[i] = x[i] > 0.0f ? x[i] : 0.0f; }, "relu");
      return;
    case A::LeakyRelu:
      each(n, [=] __device__(int64_t i) { y[i] = x[i] > 0.0f ? x[i] : alpha * x[i]; }, "leaky_relu");
      return;
    case A::Elu:
      each(n, [=] __device__(int64_t i) { y[i] = x[i] > 0.0f ? x[i] : alpha * (expf(x[i]) - 1.0f); }, "elu");
      return;
    case A::Selu: {
      const float s = float(ops::kSeluScale), sa = float(ops::kSeluScale * ops::kSeluAlpha);
      each(n, [=] __device__(int64_t i) { y[i] = x[i] > 0.0f ? s * x[i] : sa * (expf(x[i]) - 1.0f); }, "selu");
      return;
    }
    case A::Softplus:
      each(n, [=] __device__(int64_t i) { y[i] = log1pf(expf(-fabsf(x[i]))) + smax(x[i], 0.0f); }, "softplus");
      return;
    case A::Softsign:
      each(n, [=] __device__(int64_t i) { y[i] = x[i] / (1.0f + fabsf(x[i])); }, "softsign");
      return;
    case A::Swish:
      each(n, [=] __device__(int64_t i) { y[i] = x[i] * sigmoid(x[i]); }, "swish");
      return;
    case A::Softmax:
      // One thread per row, as the CPU's loop (y may alias x: each element is read before written).
      each(
          rows,
          [=] __device__(int64_t r) {
            const float* xr = x + r * cols;
            float* yr = y + r * cols;
            float m = xr[0];
            for (int64_t c = 1; c < cols; ++c) m = smax(m, xr[c]);
            float s = 0.0f;
            for (int64_t c = 0; c < cols; ++c) {
              yr[c] = expf(xr[c] - m);
              s += yr[c];
            }
            const float inv = 1.0f / s;
            for (int64_t c = 0; c < cols; ++c) yr[c] *= inv;
          },
          "softmax");
      return;
  }
}

void activation_backward(Cuda, ops::Activation act, float alpha, const float* x, const float* y, const float* dy,
                         float* dx, int64_t rows, int64_t cols) {
  using A = ops::Activation;
  const int64_t n = rows * cols;
  switch (act) {
    case A::Linear:
      copy(Cuda{}, dy, dx, n);
      return;
    case A::Sigmoid:
      each(n, [=] __device__(int64_t i) { dx[i] = dy[i] * y[i] * (1.0f - y[i]); }, "sigmoid_backward");
      return;
    case A::Tanh:
      each(n, [=] __device__(int64_t i) { dx[i] = dy[i] * (1.0f - y[i] * y[i]); }, "tanh_backward");
      return;
    case A::Relu:
      each(n, [=] __device__(int64_t i) { dx[i] = x[i] > 0.0f ? dy[i] : 0.0f; }, "relu_backward");
      return;
    case A::LeakyRelu:
      each(n, [=] __device__(int64_t i) { dx[i] = x[i] > 0.0f ? dy[i] : alpha * dy[i]; }, "leaky_relu_backward");
      return;
    case A::Elu:
      each(n, [=] __device__(int64_t i) { dx[i] = x[i] > 0.0f ? dy[i] : dy[i] * (y[i] + alpha); }, "elu_backward");
      return;
    case A::Selu: {
      const float s = float(ops::kSeluScale), sa = float(ops::kSeluScale * ops::kSeluAlpha);
      each(n, [=] __device__(int64_t i) { dx[i] = x[i] > 0.0f ? s * dy[i] : dy[i] * (y[i] + sa); }, "selu_backward");
      return;
    }
    case A::Softplus:
      each(n, [=] __device__(int64_t i) { dx[i] = dy[i] * sigmoid(x[i]); }, "softplus_backward");
      return;
    case A::Softsign:
      each(
          n,
          [=] __device__(int64_t i) {
            const float d = 1.0f + fabsf(x[i]);
            dx[i] = dy[i] / (d * d);
          },
          "softsign_backward");
      return;
    case A::Swish:
      each(
          n,
          [=] __device__(int64_t i) {
            const float s = sigmoid(x[i]);
            dx[i] = dy[i] * (s + x[i] * s * (1.0f - s));
          },
          "swish_backward");
      return;
    case A::Softmax:
      each(
          rows,
          [=] __device__(int64_t r) {
            const float* yr = y + r * cols;
            const float* dyr = dy + r * cols;
            float* dxr = dx + r * cols;
            float dot = 0.0f;
            for (int64_t c = 0; c < cols; ++c) dot += dyr[c] * yr[c];
            for (int64_t c = 0; c < cols; ++c) dxr[c] = yr[c] * (dyr[c] - dot);
          },
          "softmax_backward");
      return;
  }
}

namespace {
int64_t per_sample(const ops::Broadcast& m) {
  int64_t n = 1;
  for (int d = 0; d < m.nd; ++d) n *= m.dims[d];
  return n;
}
// alpha index of element i within one sample (cpu.cpp's alpha_index, on either side).
__host__ __device__ __forceinline__ int64_t alpha_index(const ops::Broadcast& m, int64_t i) {
  int64_t rem = i, a = 0;
  for (int d = m.nd - 1; d >= 0; --d) {
    const int64_t coord = rem % m.dims[d];
    rem /= m.dims[d];
    a += coord * m.stride[d];
  }
  return a;
}
}  // namespace

void prelu_forward(Cuda, const float* x, const float* alpha, const ops::Broadcast& map, float* y, int64_t batch) {
  const int64_t s = per_sample(map);
  const ops::Broadcast m = map;
  each(
      batch * s,
      [=] __device__(int64_t e) {
        const float v = x[e];
        y[e] = v > 0.0f ? v : alpha[alpha_index(m, e % s)] * v;
      },
      "prelu_forward");
}
void prelu_backward(Cuda, const float* x, const float* alpha, const ops::Broadcast& map, const float* dy, float* dx,
                    float* dalpha, int64_t batch) {
  const int64_t s = per_sample(map);
  const ops::Broadcast m = map;
  // dalpha: the elements of each alpha as a CSR list (ascending within a sample), so one thread per
  // alpha sums its contributions in the CPU's order (batch, then position).
  std::vector<int64_t> idx(static_cast<size_t>(s));
  int64_t na = 0;
  for (int64_t i = 0; i < s; ++i) {
    idx[size_t(i)] = alpha_index(m, i);
    na = std::max(na, idx[size_t(i)] + 1);
  }
  std::vector<int64_t> offs(static_cast<size_t>(na + 1), 0);
  std::vector<int64_t> list(static_cast<size_t>(s), 0);
  for (int64_t i = 0; i < s; ++i) ++offs[size_t(idx[size_t(i)] + 1)];
  for (int64_t a = 0; a < na; ++a) offs[size_t(a + 1)] += offs[size_t(a)];
  {
    std::vector<int64_t> pos(offs.begin(), offs.end() - 1);
    for (int64_t i = 0; i < s; ++i) list[size_t(pos[size_t(idx[size_t(i)])]++)] = i;
  }
  Scratch d_offs(int64_t(offs.size() * sizeof(int64_t))), d_list(int64_t(list.size() * sizeof(int64_t)));
  upload(offs, d_offs);
  upload(list, d_list);
  const int64_t* po = d_offs.as<int64_t>();
  const int64_t* pl = d_list.as<int64_t>();
  // dalpha first: dx may alias dy.
  each(
      na,
      [=] __device__(int64_t a) {
        float acc = 0.0f;
        for (int64_t b = 0; b < batch; ++b)
          for (int64_t j = po[a]; j < po[a + 1]; ++j) {
            const int64_t e = b * s + pl[j];
            const float v = x[e];
            if (!(v > 0.0f)) acc += dy[e] * v;
          }
        dalpha[a] = acc;
      },
      "prelu_backward_dalpha");
  each(
      batch * s,
      [=] __device__(int64_t e) {
        const float v = x[e], g = dy[e];
        dx[e] = v > 0.0f ? g : alpha[alpha_index(m, e % s)] * g;
      },
      "prelu_backward_dx");
}

void rrelu_forward_train(Cuda, const float* x, float lower, float upper, rng::Stream s, int64_t first, float* slopes,
                         float* y, int64_t n) {
  each(
      n,
      [=] __device__(int64_t i) {
        const float a = lower + (upper - lower) * s.uniform(uint64_t(first + i));
        slopes[i] = a;
        y[i] = x[i] >= 0.0f ? x[i] : a * x[i];
      },
      "rrelu_forward_train");
}
void rrelu_backward(Cuda, const float* x, const float* slopes, const float* dy, float* dx, int64_t n) {
  each(n, [=] __device__(int64_t i) { dx[i] = x[i] >= 0.0f ? dy[i] : slopes[i] * dy[i]; }, "rrelu_backward");
}

// Element i's uniform is word i%4 of Philox block i/4 (Stream::uniform), as on the CPU.
void dropout_forward(Cuda, const float* x, float rate, rng::Stream s, int64_t first, float* mask, float* y, int64_t n) {
  const float keep_scale = 1.0f / (1.0f - rate);
  each(
      n,
      [=] __device__(int64_t i) {
        const float mk = s.uniform(uint64_t(first + i)) >= rate ? keep_scale : 0.0f;
        mask[i] = mk;
        y[i] = x[i] * mk;
      },
      "dropout_forward");
}
void alpha_dropout_forward(Cuda, const float* x, float rate, rng::Stream s, int64_t first, float* mask, float* y,
                           int64_t n) {
  const double ap = -ops::kSeluScale * ops::kSeluAlpha;
  const double p = double(rate);
  const float a = float(1.0 / std::sqrt((1.0 - p) * (1.0 + p * ap * ap)));
  const float b = float(-double(a) * ap * p);
  const float apt = float(ap);
  each(
      n,
      [=] __device__(int64_t i) {
        const bool keep = s.uniform(uint64_t(first + i)) >= rate;
        mask[i] = keep ? a : 0.0f;
        y[i] = a * (keep ? x[i] : apt) + b;
      },
      "alpha_dropout_forward");
}

// ---- batch normalization ---------------------------------------------------------------------------
// Statistics in float64 in the CPU's order: per (outer, channel) a partial over `inner`, then per
// channel the partials in outer order. Two kernels: partials [2][outer*C], then one thread per channel.
void bn_sums(Cuda, const float* x, ops::FeatureView v, double* stats) {
  const int64_t C = v.channels, O = v.outer, I = v.inner, OC = O * C;
  Scratch part(2 * std::max<int64_t>(OC, 1) * int64_t(sizeof(double)));
  double* pp = part.as<double>();
  each(
      OC,
      [=] __device__(int64_t oc) {
        const float* xr = x + oc * I;
        double a = 0, b = 0;
        for (int64_t i = 0; i < I; ++i) {
          const double val = xr[i];
          a += val;
          b += val * val;
        }
        pp[oc] = a;
        pp[OC + oc] = b;
      },
      "bn_sums_partials");
  each(
      C,
      [=] __device__(int64_t c) {
        double s = 0, ss = 0;
        for (int64_t o = 0; o < O; ++o) {
          s += pp[o * C + c];
          ss += pp[OC + o * C + c];
        }
        stats[c] = s;
        stats[C + c] = ss;
      },
      "bn_sums");
}
void bn_moments(Cuda, const double* stats, double count, float* mean, float* var, int64_t c) {
  each(
      c,
      [=] __device__(int64_t i) {
        const double m = count > 0 ? stats[i] / count : 0.0;
        const double v = count > 0 ? stats[c + i] / count - m * m : 0.0;
        mean[i] = float(m);
        var[i] = float(v > 0 ? v : 0.0);
      },
      "bn_moments");
}
void bn_apply(Cuda, const float* x, ops::FeatureView v, const float* mean, const float* var, const float* gamma,
              const float* beta, float eps, float* y, bool relu) {
  const int64_t C = v.channels, I = v.inner;
  each(
      v.outer * C * I,
      [=] __device__(int64_t e) {
        const int64_t c = (e / I) % C;
        const float inv = 1.0f / sqrtf(var[c] + eps);
        const float a = (gamma ? gamma[c] : 1.0f) * inv;
        const float b = (beta ? beta[c] : 0.0f) - mean[c] * a;
        const float out = x[e] * a + b;
        y[e] = relu && !(out > 0.0f) ? 0.0f : out;
      },
      "bn_apply");
}
void bn_update_moving(Cuda, float* moving, const float* batch, int64_t c, float momentum) {
  each(c, [=] __device__(int64_t i) { moving[i] -= (moving[i] - batch[i]) * (1.0f - momentum); }, "bn_update_moving");
}
void bn_backward_sums(Cuda, const float* dy, const float* x, ops::FeatureView v, const float* mean, const float* var,
                      float eps, double* sums, const float* gate) {
  const int64_t C = v.channels, O = v.outer, I = v.inner, OC = O * C;
  Scratch part(2 * std::max<int64_t>(OC, 1) * int64_t(sizeof(double)));
  double* pp = part.as<double>();
  each(
      OC,
      [=] __device__(int64_t oc) {
        const float* xr = x + oc * I;
        const float* dr = dy + oc * I;
        double a = 0, b = 0;
        for (int64_t i = 0; i < I; ++i) {
          const float g = gate && !(gate[oc * I + i] > 0.0f) ? 0.0f : dr[i];
          a += g;
          b += double(g) * double(xr[i]);
        }
        pp[oc] = a;
        pp[OC + oc] = b;
      },
      "bn_backward_sums_partials");
  each(
      C,
      [=] __device__(int64_t c) {
        const double inv = 1.0 / sqrt(double(var[c]) + double(eps));
        double sdy = 0, sdx = 0;
        for (int64_t o = 0; o < O; ++o) {
          sdy += pp[o * C + c];
          sdx += pp[OC + o * C + c];
        }
        sums[c] = sdy;
        sums[C + c] = inv * (sdx - double(mean[c]) * sdy);
      },
      "bn_backward_sums");
}
void bn_backward_apply(Cuda, const float* dy, const float* x, ops::FeatureView v, const float* mean, const float* var,
                       const float* gamma, float eps, const double* sums, double count, float* dx,
                       const float* gate) {
  const int64_t C = v.channels, I = v.inner;
  Scratch coef(3 * std::max<int64_t>(C, 1) * int64_t(sizeof(float)));
  float* kk = coef.as<float>();
  float* pp = kk + C;
  float* qq = kk + 2 * C;
  each(
      C,
      [=] __device__(int64_t c) {
        const double inv = 1.0 / sqrt(double(var[c]) + double(eps));
        const double k = (gamma ? double(gamma[c]) : 1.0) * inv;
        const double n = count > 0 ? count : 1.0;
        const double p = -k * inv * sums[C + c] / n;
        kk[c] = float(k);
        pp[c] = float(p);
        qq[c] = float(-k * sums[c] / n - double(mean[c]) * p);
      },
      "bn_backward_coefficients");
  each(
      v.outer * C * I,
      [=] __device__(int64_t e) {
        const int64_t c = (e / I) % C;
        const float g = gate && !(gate[e] > 0.0f) ? 0.0f : dy[e];
        dx[e] = kk[c] * g + x[e] * pp[c] + qq[c];
      },
      "bn_backward_apply");
}
void bn_backward_inference(Cuda, const float* dy, ops::FeatureView v, const float* var, const float* gamma, float eps,
                           float* dx, const float* gate) {
  const int64_t C = v.channels, I = v.inner;
  each(
      v.outer * C * I,
      [=] __device__(int64_t e) {
        const int64_t c = (e / I) % C;
        const float a = (gamma ? gamma[c] : 1.0f) / sqrtf(var[c] + eps);
        const float g = gate && !(gate[e] > 0.0f) ? 0.0f : dy[e];
        dx[e] = g * a + 0.0f;
      },
      "bn_backward_inference");
}
void bn_param_grads(Cuda, const double* sums, int64_t c, float* dgamma, float* dbeta) {
  each(
      c,
      [=] __device__(int64_t i) {
        if (dgamma) dgamma[i] = float(sums[c + i]);
        if (dbeta) dbeta[i] = float(sums[i]);
      },
      "bn_param_grads");
}

void dense_normalized_grads(Cuda, const float* xhat, const float* dz, int64_t rows, float* w, const float* s,
                            const float* gamma, const float* beta, float* dw, int64_t in, int64_t out, double* sums,
                            float rate) {
  gemm(Cuda{}, true, false, in, out, rows, 1.0f, xhat, in, dz, out, 0.0f, dw, out);
  // One thread per input feature (kernel row), the row's columns in order: the CPU's summation order.
  // rate != 0: the step w -= rate·dw is taken in place of writing dw.
  each(
      in,
      [=] __device__(int64_t c) {
        float* wr = w + c * out;
        float* gr = dw + c * out;
        const float gc = gamma ? gamma[c] : 1.0f;
        const float bc = beta ? beta[c] : 0.0f;
        double sdy = 0, sdyx = 0;
        for (int64_t j = 0; j < out; ++j) {
          const float wj = wr[j], g = gr[j];
          sdy += double(wj) * double(s[j]);
          sdyx += double(wj) * double(g);
          if (rate != 0.0f)
            wr[j] = wj + (-rate) * (gc * g + bc * s[j]);
          else
            gr[j] = gc * g + bc * s[j];
        }
        sums[c] = sdy;
        sums[in + c] = sdyx;
      },
      "dense_normalized_grads");
}

// ---- losses ---------------------------------------------------------------------------------------
namespace {
// Sparse labels: the kernels record the first sample whose label is not an integer in [0, k) and skip
// it; the host reads that one flag after the kernel and throws the CPU's DataError.
__device__ __forceinline__ bool label_ok(float y, int64_t k) { return y >= 0.0f && y < float(k) && y == floorf(y); }
// Records sample r in `bad` (the lowest bad index wins) when its label is not a class; true to skip it.
__device__ __forceinline__ bool reject_label(const float* y, int64_t r, int64_t k, unsigned long long* bad) {
  if (label_ok(y[r], k)) return false;
  atomicMin(bad, static_cast<unsigned long long>(r));
  return true;
}

class LabelFlag {
 public:
  LabelFlag() : buf_(sizeof(unsigned long long)) {
    LS_CUDA_CHECK(cudaMemsetAsync(buf_.as<void>(), 0xFF, sizeof(unsigned long long), stream()));
  }
  unsigned long long* ptr() const { return buf_.as<unsigned long long>(); }
  void check(const float* y, int64_t k, const char* op) const {
    unsigned long long bad = 0;
    LS_CUDA_CHECK(cudaMemcpyAsync(&bad, ptr(), sizeof(bad), cudaMemcpyDeviceToHost, stream()));
    LS_CUDA_CHECK(cudaStreamSynchronize(stream()));
    if (bad == ~0ull) return;
    float label = 0;
    LS_CUDA_CHECK(cudaMemcpyAsync(&label, y + bad, sizeof(float), cudaMemcpyDeviceToHost, stream()));
    LS_CUDA_CHECK(cudaStreamSynchronize(stream()));
    throw DataError(str_cat(op, ": label ", double(label), " of sample ", bad, " is not an integer class in [0, ", k, ")"));
  }

 private:
  Scratch buf_;
};
}  // namespace

void softmax_xent_sparse(Cuda, const float* z, const float* y, float* loss, float* dz, int64_t rows, int64_t k,
                         float scale) {
  LabelFlag flag;
  unsigned long long* bad = flag.ptr();
  each(
      rows,
      [=] __device__(int64_t r) {
        if (reject_label(y, r, k, bad)) return;
        const float* zr = z + r * k;
        const int64_t label = int64_t(y[r]);
        float m = zr[0];
        for (int64_t c = 1; c < k; ++c) m = smax(m, zr[c]);
        float s = 0.0f;
        for (int64_t c = 0; c < k; ++c) s += expf(zr[c] - m);
        const float lse = m + logf(s);
        loss[r] = lse - zr[label];
        if (dz) {
          float* dr = dz + r * k;
          for (int64_t c = 0; c < k; ++c) dr[c] = scale * (expf(zr[c] - lse) - (c == label ? 1.0f : 0.0f));
        }
      },
      "softmax_xent_sparse");
  flag.check(y, k, "sparse_categorical_crossentropy");
}
void softmax_xent_dense(Cuda, const float* z, const float* t, float* loss, float* dz, int64_t rows, int64_t k,
                        float scale) {
  each(
      rows,
      [=] __device__(int64_t r) {
        const float* zr = z + r * k;
        const float* tr = t + r * k;
        float m = zr[0];
        for (int64_t c = 1; c < k; ++c) m = smax(m, zr[c]);
        float s = 0.0f, tsum = 0.0f;
        for (int64_t c = 0; c < k; ++c) {
          s += expf(zr[c] - m);
          tsum += tr[c];
        }
        const float lse = m + logf(s);
        float l = 0.0f;
        for (int64_t c = 0; c < k; ++c) l += tr[c] * (lse - zr[c]);
        loss[r] = l;
        if (dz) {
          float* dr = dz + r * k;
          for (int64_t c = 0; c < k; ++c) dr[c] = scale * (tsum * expf(zr[c] - lse) - tr[c]);
        }
      },
      "softmax_xent_dense");
}
void sigmoid_xent(Cuda, const float* z, const float* t, float* loss, float* dz, int64_t rows, int64_t k, float scale) {
  each(
      rows,
      [=] __device__(int64_t r) {
        float l = 0.0f;
        for (int64_t c = 0; c < k; ++c) {
          const float zz = z[r * k + c], tt = t[r * k + c];
          l += smax(zz, 0.0f) - zz * tt + log1pf(expf(-fabsf(zz)));
          if (dz) dz[r * k + c] = scale * (sigmoid(zz) - tt) / float(k);
        }
        loss[r] = l / float(k);
      },
      "sigmoid_xent");
}
void sparse_xent_probs(Cuda, const float* p, const float* y, float* loss, float* dp, int64_t rows, int64_t k,
                       float scale) {
  const float lo = float(kKerasEps), hi = float(1 - kKerasEps);
  LabelFlag flag;
  unsigned long long* bad = flag.ptr();
  each(
      rows,
      [=] __device__(int64_t r) {
        if (reject_label(y, r, k, bad)) return;
        const float* pr = p + r * k;
        const int64_t label = int64_t(y[r]);
        float s = 0.0f;
        for (int64_t c = 0; c < k; ++c) s += smin(smax(pr[c], lo), hi);
        const float py = smin(smax(pr[label], lo), hi);
        loss[r] = -logf(py) + logf(s);
        if (dp) {
          for (int64_t c = 0; c < k; ++c) {
            const bool inside = pr[c] >= lo && pr[c] <= hi;
            const float g = 1.0f / s - (c == label ? 1.0f / py : 0.0f);
            dp[r * k + c] = inside ? scale * g : 0.0f;
          }
        }
      },
      "sparse_xent_probs");
  flag.check(y, k, "sparse_categorical_crossentropy");
}
void categorical_xent_probs(Cuda, const float* p, const float* t, float* loss, float* dp, int64_t rows, int64_t k,
                            float scale) {
  const float lo = float(kKerasEps), hi = float(1 - kKerasEps);
  each(
      rows,
      [=] __device__(int64_t r) {
        const float* pr = p + r * k;
        const float* tr = t + r * k;
        float s = 0.0f;
        for (int64_t c = 0; c < k; ++c) s += pr[c];
        // g_c (recomputed identically in the second pass instead of stored).
        auto grad = [&](int64_t c, float& q, float& qc) {
          q = pr[c] / s;
          qc = smin(smax(q, lo), hi);
          return (q >= lo && q <= hi) ? -tr[c] / qc : 0.0f;
        };
        float l = 0.0f, gq = 0.0f;
        for (int64_t c = 0; c < k; ++c) {
          float q, qc;
          const float g = grad(c, q, qc);
          l -= tr[c] * logf(qc);
          gq += g * q;
        }
        loss[r] = l;
        if (dp)
          for (int64_t c = 0; c < k; ++c) {
            float q, qc;
            const float g = grad(c, q, qc);
            dp[r * k + c] = scale * (g - gq) / s;
          }
      },
      "categorical_xent_probs");
}
void binary_xent_probs(Cuda, const float* p, const float* t, float* loss, float* dp, int64_t rows, int64_t k,
                       float scale) {
  const float lo = float(kKerasEps), hi = float(1 - kKerasEps), e = float(kKerasEps);
  each(
      rows,
      [=] __device__(int64_t r) {
        float l = 0.0f;
        for (int64_t c = 0; c < k; ++c) {
          const float pp = p[r * k + c], tt = t[r * k + c];
          const float pc = smin(smax(pp, lo), hi);
          l -= tt * logf(pc + e) + (1.0f - tt) * logf(1.0f - pc + e);
          if (dp) {
            const bool inside = pp >= lo && pp <= hi;
            const float g = -(tt / (pc + e) - (1.0f - tt) / (1.0f - pc + e));
            dp[r * k + c] = inside ? scale * g / float(k) : 0.0f;
          }
        }
        loss[r] = l / float(k);
      },
      "binary_xent_probs");
}
void mse(Cuda, const float* p, const float* t, float* loss, float* dp, int64_t rows, int64_t k, float scale) {
  each(
      rows,
      [=] __device__(int64_t r) {
        float l = 0.0f;
        for (int64_t c = 0; c < k; ++c) {
          const float d = p[r * k + c] - t[r * k + c];
          l += d * d;
          if (dp) dp[r * k + c] = scale * 2.0f * d / float(k);
        }
        loss[r] = l / float(k);
      },
      "mse");
}
void accuracy(Cuda, ops::AccuracyKind kind, const float* pred, const float* y, float* out, int64_t rows, int64_t k) {
  const int kd = int(kind);
  each(
      rows,
      [=] __device__(int64_t r) {
        auto argmax = [k](const float* row) {
          int64_t best = 0;
          for (int64_t c = 1; c < k; ++c)
            if (row[c] > row[best]) best = c;
          return best;
        };
        if (kd == int(ops::AccuracyKind::Sparse)) {
          out[r] = argmax(pred + r * k) == int64_t(y[r]) ? 1.0f : 0.0f;
        } else if (kd == int(ops::AccuracyKind::Categorical)) {
          out[r] = argmax(pred + r * k) == argmax(y + r * k) ? 1.0f : 0.0f;
        } else {
          float s = 0.0f;
          for (int64_t c = 0; c < k; ++c) s += ((pred[r * k + c] > 0.5f) == (y[r * k + c] > 0.5f)) ? 1.0f : 0.0f;
          out[r] = s / float(k);
        }
      },
      "accuracy");
}

// ---- regularization and constraints ---------------------------------------------------------------
double l1l2_penalty(Cuda, const float* w, int64_t n, double l1, double l2) {
  double p = 0;
  if (l1 != 0) p += l1 * sum_abs(Cuda{}, w, n);
  if (l2 != 0) p += l2 * sum_squares(Cuda{}, w, n);
  return p;
}
void l1l2_grad(Cuda, const float* w, float* g, int64_t n, float l1, float l2) {
  const float two_l2 = 2.0f * l2;
  each(
      n,
      [=] __device__(int64_t i) {
        const float s = w[i] > 0.0f ? 1.0f : (w[i] < 0.0f ? -1.0f : 0.0f);
        g[i] += l1 * s + two_l2 * w[i];
      },
      "l1l2_grad");
}
void max_norm(Cuda, float* w, ops::FeatureView v, float max_value) {
  // w viewed as [outer, R, inner]; one thread per (outer, inner) column, norm over R in float64.
  const int64_t R = v.channels, I = v.inner;
  const float eps = float(kKerasEps);
  each(
      v.outer * I,
      [=] __device__(int64_t oi) {
        const int64_t o = oi / I, i = oi % I;
        float* base = w + o * R * I;
        double sq = 0.0;
        for (int64_t r = 0; r < R; ++r) sq += double(base[r * I + i]) * double(base[r * I + i]);
        const float norm = float(sqrt(sq));
        const float f = smin(smax(norm, 0.0f), max_value) / (eps + norm);
        for (int64_t r = 0; r < R; ++r) base[r * I + i] *= f;
      },
      "max_norm");
}

// ---- optimizer updates (one kernel each over the flat arena) -----------------------------------------
void sgd_update(Cuda, float* w, const float* g, int64_t n, float lr) {
  each(n, [=] __device__(int64_t i) { w[i] -= lr * g[i]; }, "sgd_update");
}
void momentum_update(Cuda, float* w, const float* g, float* v, int64_t n, float lr, float mu, bool nesterov) {
  if (nesterov)
    each(
        n,
        [=] __device__(int64_t i) {
          v[i] = mu * v[i] - lr * g[i];
          w[i] += mu * v[i] - lr * g[i];
        },
        "momentum_update");
  else
    each(
        n,
        [=] __device__(int64_t i) {
          v[i] = mu * v[i] - lr * g[i];
          w[i] += v[i];
        },
        "momentum_update");
}
void adagrad_update(Cuda, float* w, const float* g, float* acc, int64_t n, float lr, float eps) {
  each(
      n,
      [=] __device__(int64_t i) {
        acc[i] += g[i] * g[i];
        w[i] -= lr * g[i] / (sqrtf(acc[i]) + eps);
      },
      "adagrad_update");
}
void rmsprop_update(Cuda, float* w, const float* g, float* ms, float* mom, float* mg, int64_t n, float lr, float rho,
                    float momentum, float eps) {
  if (momentum > 0.0f) {
    // tf.keras 2.10 fused kernel: eps inside the square root.
    each(
        n,
        [=] __device__(int64_t i) {
          ms[i] += (g[i] * g[i] - ms[i]) * (1.0f - rho);
          float denom = ms[i];
          if (mg) {
            mg[i] += (g[i] - mg[i]) * (1.0f - rho);
            denom -= mg[i] * mg[i];
          }
          mom[i] = momentum * mom[i] + lr * g[i] / sqrtf(denom + eps);
          w[i] -= mom[i];
        },
        "rmsprop_update");
  } else {
    // tf.keras 2.10 Python path: eps outside the square root.
    each(
        n,
        [=] __device__(int64_t i) {
          ms[i] = rho * ms[i] + (1.0f - rho) * g[i] * g[i];
          float denom = ms[i];
          if (mg) {
            mg[i] = rho * mg[i] + (1.0f - rho) * g[i];
            denom -= mg[i] * mg[i];
          }
          w[i] -= lr * g[i] / (sqrtf(denom) + eps);
        },
        "rmsprop_update");
  }
}
void adam_update(Cuda, float* w, const float* g, float* m, float* v, float* vhat, int64_t n, float alpha_t, float b1,
                 float b2, float eps) {
  each(
      n,
      [=] __device__(int64_t i) {
        m[i] += (g[i] - m[i]) * (1.0f - b1);
        v[i] += (g[i] * g[i] - v[i]) * (1.0f - b2);
        float vv = v[i];
        if (vhat) {
          vhat[i] = smax(vhat[i], v[i]);
          vv = vhat[i];
        }
        w[i] -= alpha_t * m[i] / (sqrtf(vv) + eps);
      },
      "adam_update");
}
void adamax_update(Cuda, float* w, const float* g, float* m, float* u, int64_t n, float lr_t, float b1, float b2,
                   float eps) {
  each(
      n,
      [=] __device__(int64_t i) {
        m[i] += (g[i] - m[i]) * (1.0f - b1);
        u[i] = smax(b2 * u[i], fabsf(g[i]));
        w[i] -= lr_t * m[i] / (u[i] + eps);
      },
      "adamax_update");
}
void nadam_update(Cuda, float* w, const float* g, float* m, float* v, int64_t n, const ops::NadamCoeffs& c) {
  const float b1 = float(c.b1), b2 = float(c.b2), gs = float(c.g_scale), msc = float(c.m_scale), vs = float(c.v_scale);
  const float mu_t = float(c.mu_t), mu_n = float(c.mu_next), lr = float(c.lr), eps = float(c.eps);
  each(
      n,
      [=] __device__(int64_t i) {
        const float gp = g[i] * gs;
        m[i] = b1 * m[i] + (1.0f - b1) * g[i];
        v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        const float mp = m[i] * msc;
        const float vp = v[i] * vs;
        const float mbar = (1.0f - mu_t) * gp + mu_n * mp;
        w[i] -= lr * mbar / (sqrtf(vp) + eps);
      },
      "nadam_update");
}

// ---- random fills ---------------------------------------------------------------------------------
void random_uniform(Cuda, float* x, int64_t n, double lo, double hi, rng::Stream s) {
  each(n, [=] __device__(int64_t i) { x[i] = float(lo + (hi - lo) * s.uniform_double(uint64_t(i))); }, "random_uniform");
}
void random_normal(Cuda, float* x, int64_t n, double mean, double sd, rng::Stream s) {
  each(n, [=] __device__(int64_t i) { x[i] = float(mean + sd * s.normal(uint64_t(i))); }, "random_normal");
}
void truncated_normal(Cuda, float* x, int64_t n, double mean, double sd, rng::Stream s) {
  each(n, [=] __device__(int64_t i) { x[i] = float(mean + sd * s.truncated_normal(uint64_t(i))); }, "truncated_normal");
}

}  // namespace kernels
}  // namespace lockstep
