// CPU kernels: pure functions on raw pointers, templated on the element type (float for training,
// double for gradient checks). Only core/ops.cpp calls them; the CUDA backend (kernels/cuda.h)
// offers the same functions with a `Cuda` tag and float only.
#pragma once

#include <cstdint>

#include "core/ops.h"
#include "core/rng.h"

namespace lockstep::kernels {

struct Cpu {};

void cpu_set_threads(int n);

template <typename T> void fill(Cpu, T* x, int64_t n, T v);
template <typename T> void copy(Cpu, const T* src, T* dst, int64_t n);
template <typename T> void scale(Cpu, T* x, int64_t n, T a);
template <typename T> void axpby(Cpu, T a, const T* x, T b, T* y, int64_t n);
// out = a + b (relu: then max(out, 0) as activation_forward's ReLU).
template <typename T> void add(Cpu, const T* a, const T* b, T* out, int64_t n, bool relu);
template <typename T> void mul(Cpu, const T* a, const T* b, T* out, int64_t n);
template <typename T> void clip_by_value(Cpu, T* x, int64_t n, T lo, T hi);
template <typename T> double sum(Cpu, const T* x, int64_t n);
template <typename T> double sum_squares(Cpu, const T* x, int64_t n);
template <typename T> double sum_abs(Cpu, const T* x, int64_t n);
template <typename T> double max_abs_diff(Cpu, const T* a, const T* b, int64_t n);
template <typename T> bool all_finite(Cpu, const T* x, int64_t n);
void prefetch(Cpu, const void* p, int64_t bytes, bool for_write);

// Merges: part [outer, part_cols] <-> columns [offset, offset + part_cols) of whole [outer, whole_cols].
template <typename T>
void concat_block(Cpu, T* part, T* whole, int64_t outer, int64_t part_cols, int64_t whole_cols, int64_t offset,
                  bool into_whole);
template <typename T> void extremum(Cpu, bool is_max, const T* a, const T* b, T* out, int64_t n);
template <typename T>
void extremum_backward(Cpu, bool is_max, const T* a, const T* b, const T* dy, T* da, T* db, int64_t n);

template <typename T>
void gemm(Cpu, bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc);
// C[m, n] = Aᵀ·B (+ C when beta is 1) with A [k, m], B [k, n]: a weight gradient summed over k rows, routed
// for a convolution's deep sums (see cpu.cpp).
template <typename T>
void gemm_weight_grad(Cpu, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb, T beta,
                      T* c, int64_t ldc);
template <typename T> void bias_add(Cpu, T* y, const T* b, int64_t rows, int64_t cols);
template <typename T> void bias_grad(Cpu, const T* dy, T* db, int64_t rows, int64_t cols, T beta);

// A convolution's output epilogue, y = act(y + bias) on a block of rows x cols outputs (bias may be null; act
// is elementwise, never Softmax): applied by the kernel to each block it has just written, while the block is
// in cache, instead of two more passes over the whole output.
template <typename T> struct Epilogue {
  const T* bias = nullptr;
  ops::Activation act = ops::Activation::Linear;
  T alpha = T(0);
  bool empty() const { return bias == nullptr && act == ops::Activation::Linear; }
  void apply(T* y, int64_t rows, int64_t cols) const;
  // apply() over rows x cols in blocks of about 64 KiB (a kernel whose output cannot be reached block by block).
  void apply_in_blocks(T* y, int64_t rows, int64_t cols) const;
};

// Convolutions, pooling, padding (kernels/conv_cpu.cpp). `reference`: the plain loops (ops::KernelPath).
template <typename T>
void conv2d_forward(Cpu, const T* x, const T* w, const ops::Window2d& g, T* y, bool reference);
// The fast kernels' conv2d_forward, then ep on each block of the output as it is written: per Winograd tile,
// per im2col block of samples, in 64 KiB blocks after oneDNN's, the depthwise and the pointwise kernels.
template <typename T>
void conv2d_forward(Cpu, const T* x, const T* w, const ops::Window2d& g, T* y, const Epilogue<T>& ep);
template <typename T>
void conv2d_backward_data(Cpu, const T* dy, const T* w, const ops::Window2d& g, T* dx, bool reference);
template <typename T>
void conv2d_backward_filter(Cpu, const T* x, const T* dy, const ops::Window2d& g, T* dw, bool reference);
template <typename T> void max_pool2d_forward(Cpu, const T* x, const ops::Window2d& g, T* y);
// relu_gate: an output whose maximum is not > 0 routes nothing (x is a ReLU's output: its backward, fused).
template <typename T>
void max_pool2d_backward(Cpu, const T* x, const T* y, const T* dy, const ops::Window2d& g, T* dx, bool relu_gate);
template <typename T> void avg_pool2d_forward(Cpu, const T* x, const ops::Window2d& g, T* y);
template <typename T> void avg_pool2d_backward(Cpu, const T* dy, const ops::Window2d& g, T* dx);
// small [n, h, w, c] <-> the block at (top, left) of big [n, bh, bw, c].
template <typename T>
void pad2d(Cpu, T* small, T* big, int64_t n, int64_t h, int64_t w, int64_t c, int64_t bh, int64_t bw, int64_t top,
           int64_t left, bool into_big);
template <typename T> void scale_channels(Cpu, const T* x, const T* m, T* y, int64_t n, int64_t s, int64_t c);

template <typename T>
void activation_forward(Cpu, ops::Activation act, T alpha, const T* x, T* y, int64_t rows, int64_t cols);
template <typename T>
void activation_backward(Cpu, ops::Activation act, T alpha, const T* x, const T* y, const T* dy, T* dx,
                         int64_t rows, int64_t cols);
template <typename T>
void prelu_forward(Cpu, const T* x, const T* alpha, const ops::Broadcast& map, T* y, int64_t batch);
template <typename T>
void prelu_backward(Cpu, const T* x, const T* alpha, const ops::Broadcast& map, const T* dy, T* dx, T* dalpha,
                    int64_t batch);
template <typename T>
void rrelu_forward_train(Cpu, const T* x, T lower, T upper, rng::Stream s, int64_t first, T* slopes, T* y, int64_t n);
template <typename T> void rrelu_backward(Cpu, const T* x, const T* slopes, const T* dy, T* dx, int64_t n);
// Element i draws the stream's uniform number first + i.
template <typename T>
void dropout_forward(Cpu, const T* x, T rate, rng::Stream s, int64_t first, T* mask, T* y, int64_t n);
template <typename T>
void alpha_dropout_forward(Cpu, const T* x, T rate, rng::Stream s, int64_t first, T* mask, T* y, int64_t n);

template <typename T> void bn_sums(Cpu, const T* x, ops::FeatureView v, double* stats);
template <typename T> void bn_moments(Cpu, const double* stats, double count, T* mean, T* var, int64_t c);
template <typename T>
void bn_apply(Cpu, const T* x, ops::FeatureView v, const T* mean, const T* var, const T* gamma, const T* beta,
              T eps, T* y, bool relu);
template <typename T> void bn_update_moving(Cpu, T* moving, const T* batch, int64_t c, T momentum);
template <typename T>
void bn_backward_sums(Cpu, const T* dy, const T* x, ops::FeatureView v, const T* mean, const T* var, T eps,
                      double* sums, const T* gate);
template <typename T>
void bn_backward_apply(Cpu, const T* dy, const T* x, ops::FeatureView v, const T* mean, const T* var,
                       const T* gamma, T eps, const double* sums, double count, T* dx, const T* gate);
template <typename T>
void bn_backward_inference(Cpu, const T* dy, ops::FeatureView v, const T* var, const T* gamma, T eps, T* dx,
                           const T* gate);
template <typename T> void bn_param_grads(Cpu, const double* sums, int64_t c, T* dgamma, T* dbeta);
template <typename T>
void dense_normalized_grads(Cpu, const T* xhat, const T* dz, int64_t rows, T* w, const T* s, const T* gamma,
                            const T* beta, T* dw, int64_t in, int64_t out, double* sums, T rate);

template <typename T>
void softmax_xent_sparse(Cpu, const T* z, const T* y, T* loss, T* dz, int64_t rows, int64_t k, T scale);
template <typename T>
void softmax_xent_dense(Cpu, const T* z, const T* t, T* loss, T* dz, int64_t rows, int64_t k, T scale);
template <typename T>
void sigmoid_xent(Cpu, const T* z, const T* t, T* loss, T* dz, int64_t rows, int64_t k, T scale);
template <typename T>
void sparse_xent_probs(Cpu, const T* p, const T* y, T* loss, T* dp, int64_t rows, int64_t k, T scale);
template <typename T>
void categorical_xent_probs(Cpu, const T* p, const T* t, T* loss, T* dp, int64_t rows, int64_t k, T scale);
template <typename T>
void binary_xent_probs(Cpu, const T* p, const T* t, T* loss, T* dp, int64_t rows, int64_t k, T scale);
template <typename T> void mse(Cpu, const T* p, const T* t, T* loss, T* dp, int64_t rows, int64_t k, T scale);
template <typename T>
void accuracy(Cpu, ops::AccuracyKind kind, const T* pred, const T* y, T* out, int64_t rows, int64_t k);

template <typename T> double l1l2_penalty(Cpu, const T* w, int64_t n, double l1, double l2);
template <typename T> void l1l2_grad(Cpu, const T* w, T* g, int64_t n, T l1, T l2);
template <typename T> void max_norm(Cpu, T* w, ops::FeatureView v, T max_value);

template <typename T> void sgd_update(Cpu, T* w, const T* g, int64_t n, T lr);
template <typename T> void momentum_update(Cpu, T* w, const T* g, T* v, int64_t n, T lr, T mu, bool nesterov);
template <typename T> void adagrad_update(Cpu, T* w, const T* g, T* acc, int64_t n, T lr, T eps);
template <typename T>
void rmsprop_update(Cpu, T* w, const T* g, T* ms, T* mom, T* mg, int64_t n, T lr, T rho, T momentum, T eps);
template <typename T>
void adam_update(Cpu, T* w, const T* g, T* m, T* v, T* vhat, int64_t n, T alpha_t, T b1, T b2, T eps);
template <typename T>
void adamax_update(Cpu, T* w, const T* g, T* m, T* u, int64_t n, T lr_t, T b1, T b2, T eps);
template <typename T> void nadam_update(Cpu, T* w, const T* g, T* m, T* v, int64_t n, const ops::NadamCoeffs& c);

template <typename T> void random_uniform(Cpu, T* x, int64_t n, double lo, double hi, rng::Stream s);
template <typename T> void random_normal(Cpu, T* x, int64_t n, double mean, double sd, rng::Stream s);
template <typename T> void truncated_normal(Cpu, T* x, int64_t n, double mean, double sd, rng::Stream s);

}  // namespace lockstep::kernels
