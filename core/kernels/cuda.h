// CUDA kernels: the float32 counterparts of core/kernels/cpu.h with a `Cuda` tag, implemented in
// core/kernels/cuda.cu (cuBLAS for gemm, one CUDA kernel per op otherwise). Only core/ops.cpp calls
// them, and only when the tensors live on a CUDA device. Pointers are device pointers; scalars and
// FeatureView/Broadcast descriptors are host values.
//
// Every kernel is enqueued on the process's compute stream (cuda::compute_stream()); the host does not
// wait except where a result comes back to it (the reductions, l1l2_penalty, and the label check of
// the sparse losses, which reads one flag). Kernels that the CPU computes with plain IEEE arithmetic
// in a fixed order (dropout and RReLU masks, batch-norm statistics and applications, the optimizer
// updates, uniform fills) compute the same operations in the same order, so they agree with the CPU
// bit for bit; kernels that call exp/log/tanh agree to a few ulps (CUDA's libm is not glibc's).
//
// This header does not include CUDA headers: ops.cpp is compiled by the C++ compiler.
#pragma once

#include <cstdint>

#include "core/ops.h"
#include "core/rng.h"

namespace lockstep::kernels {

struct Cuda {};

void fill(Cuda, float* x, int64_t n, float v);
void copy(Cuda, const float* src, float* dst, int64_t n);
void scale(Cuda, float* x, int64_t n, float a);
void axpby(Cuda, float a, const float* x, float b, float* y, int64_t n);
void add(Cuda, const float* a, const float* b, float* out, int64_t n, bool relu);
void mul(Cuda, const float* a, const float* b, float* out, int64_t n);
void clip_by_value(Cuda, float* x, int64_t n, float lo, float hi);
double sum(Cuda, const float* x, int64_t n);
double sum_squares(Cuda, const float* x, int64_t n);
double sum_abs(Cuda, const float* x, int64_t n);
double max_abs_diff(Cuda, const float* a, const float* b, int64_t n);
bool all_finite(Cuda, const float* x, int64_t n);

void concat_block(Cuda, float* part, float* whole, int64_t outer, int64_t part_cols, int64_t whole_cols,
                  int64_t offset, bool into_whole);
void extremum(Cuda, bool is_max, const float* a, const float* b, float* out, int64_t n);
void extremum_backward(Cuda, bool is_max, const float* a, const float* b, const float* dy, float* da, float* db,
                       int64_t n);

void gemm(Cuda, bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc);
void bias_add(Cuda, float* y, const float* b, int64_t rows, int64_t cols);
void bias_grad(Cuda, const float* dy, float* db, int64_t rows, int64_t cols, float beta);

// Convolutions, pooling, padding (NHWC; kernels [k_h, k_w, in_c/groups, out_c]): the semantics of
// kernels/conv_cpu.cpp. `reference` is ignored (there is one CUDA path). General convolutions are
// im2col + cuBLAS gemm over blocks of samples (column buffer from the pool); depthwise convolutions,
// pooling, padding and channel scaling are direct kernels. Every gradient is a gather (each output
// element sums its own contributions in a fixed order), so results are the same bits run to run.
void conv2d_forward(Cuda, const float* x, const float* w, const ops::Window2d& g, float* y, bool reference);
void conv2d_backward_data(Cuda, const float* dy, const float* w, const ops::Window2d& g, float* dx, bool reference);
void conv2d_backward_filter(Cuda, const float* x, const float* dy, const ops::Window2d& g, float* dw, bool reference);
void max_pool2d_forward(Cuda, const float* x, const ops::Window2d& g, float* y);
// relu_gate: an output whose maximum is not > 0 routes nothing (x is a ReLU's output: its backward, fused).
void max_pool2d_backward(Cuda, const float* x, const float* y, const float* dy, const ops::Window2d& g, float* dx,
                         bool relu_gate);
void avg_pool2d_forward(Cuda, const float* x, const ops::Window2d& g, float* y);
void avg_pool2d_backward(Cuda, const float* dy, const ops::Window2d& g, float* dx);
// small [n, h, w, c] <-> the block at (top, left) of big [n, bh, bw, c].
void pad2d(Cuda, float* small, float* big, int64_t n, int64_t h, int64_t w, int64_t c, int64_t bh, int64_t bw,
           int64_t top, int64_t left, bool into_big);
void scale_channels(Cuda, const float* x, const float* m, float* y, int64_t n, int64_t s, int64_t c);

void activation_forward(Cuda, ops::Activation act, float alpha, const float* x, float* y, int64_t rows, int64_t cols);
void activation_backward(Cuda, ops::Activation act, float alpha, const float* x, const float* y, const float* dy,
                         float* dx, int64_t rows, int64_t cols);
void prelu_forward(Cuda, const float* x, const float* alpha, const ops::Broadcast& map, float* y, int64_t batch);
void prelu_backward(Cuda, const float* x, const float* alpha, const ops::Broadcast& map, const float* dy, float* dx,
                    float* dalpha, int64_t batch);
void rrelu_forward_train(Cuda, const float* x, float lower, float upper, rng::Stream s, int64_t first, float* slopes,
                         float* y, int64_t n);
void rrelu_backward(Cuda, const float* x, const float* slopes, const float* dy, float* dx, int64_t n);
void dropout_forward(Cuda, const float* x, float rate, rng::Stream s, int64_t first, float* mask, float* y, int64_t n);
void alpha_dropout_forward(Cuda, const float* x, float rate, rng::Stream s, int64_t first, float* mask, float* y,
                           int64_t n);

void bn_sums(Cuda, const float* x, ops::FeatureView v, double* stats);
void bn_moments(Cuda, const double* stats, double count, float* mean, float* var, int64_t c);
void bn_apply(Cuda, const float* x, ops::FeatureView v, const float* mean, const float* var, const float* gamma,
              const float* beta, float eps, float* y, bool relu);
void bn_update_moving(Cuda, float* moving, const float* batch, int64_t c, float momentum);
void bn_backward_sums(Cuda, const float* dy, const float* x, ops::FeatureView v, const float* mean,
                      const float* var, float eps, double* sums, const float* gate);
void bn_backward_apply(Cuda, const float* dy, const float* x, ops::FeatureView v, const float* mean,
                       const float* var, const float* gamma, float eps, const double* sums, double count, float* dx,
                       const float* gate);
void bn_backward_inference(Cuda, const float* dy, ops::FeatureView v, const float* var, const float* gamma,
                           float eps, float* dx, const float* gate);
void bn_param_grads(Cuda, const double* sums, int64_t c, float* dgamma, float* dbeta);
void dense_normalized_grads(Cuda, const float* xhat, const float* dz, int64_t rows, float* w, const float* s,
                            const float* gamma, const float* beta, float* dw, int64_t in, int64_t out, double* sums,
                            float rate);

void softmax_xent_sparse(Cuda, const float* z, const float* y, float* loss, float* dz, int64_t rows, int64_t k,
                         float scale);
void softmax_xent_dense(Cuda, const float* z, const float* t, float* loss, float* dz, int64_t rows, int64_t k,
                        float scale);
void sigmoid_xent(Cuda, const float* z, const float* t, float* loss, float* dz, int64_t rows, int64_t k, float scale);
void sparse_xent_probs(Cuda, const float* p, const float* y, float* loss, float* dp, int64_t rows, int64_t k,
                       float scale);
void categorical_xent_probs(Cuda, const float* p, const float* t, float* loss, float* dp, int64_t rows, int64_t k,
                            float scale);
void binary_xent_probs(Cuda, const float* p, const float* t, float* loss, float* dp, int64_t rows, int64_t k,
                       float scale);
void mse(Cuda, const float* p, const float* t, float* loss, float* dp, int64_t rows, int64_t k, float scale);
void accuracy(Cuda, ops::AccuracyKind kind, const float* pred, const float* y, float* out, int64_t rows, int64_t k);

double l1l2_penalty(Cuda, const float* w, int64_t n, double l1, double l2);
void l1l2_grad(Cuda, const float* w, float* g, int64_t n, float l1, float l2);
void max_norm(Cuda, float* w, ops::FeatureView v, float max_value);

void sgd_update(Cuda, float* w, const float* g, int64_t n, float lr);
void momentum_update(Cuda, float* w, const float* g, float* v, int64_t n, float lr, float mu, bool nesterov);
void adagrad_update(Cuda, float* w, const float* g, float* acc, int64_t n, float lr, float eps);
void rmsprop_update(Cuda, float* w, const float* g, float* ms, float* mom, float* mg, int64_t n, float lr, float rho,
                    float momentum, float eps);
void adam_update(Cuda, float* w, const float* g, float* m, float* v, float* vhat, int64_t n, float alpha_t, float b1,
                 float b2, float eps);
void adamax_update(Cuda, float* w, const float* g, float* m, float* u, int64_t n, float lr_t, float b1, float b2,
                   float eps);
void nadam_update(Cuda, float* w, const float* g, float* m, float* v, int64_t n, const ops::NadamCoeffs& c);

void random_uniform(Cuda, float* x, int64_t n, double lo, double hi, rng::Stream s);
void random_normal(Cuda, float* x, int64_t n, double mean, double sd, rng::Stream s);
void truncated_normal(Cuda, float* x, int64_t n, double mean, double sd, rng::Stream s);

}  // namespace lockstep::kernels

// Runtime services of the CUDA backend (device selection, the compute stream, pinned host memory).
// Defined in cuda.cu; only available when LOCKSTEP_HAVE_CUDA.
namespace lockstep::cuda {

int device_count();         // 0 without a usable device (never throws)
void set_device(int index);  // before the first allocation; throws Error on failure
int current_device();
// The stream every kernel, cuBLAS call and copy of this process is enqueued on (a cudaStream_t).
void* compute_stream();
void synchronize();  // wait for the compute stream; throws Error on an asynchronous failure
// Page-locked host memory for staging batches (async host->device copies).
void* host_alloc_pinned(int64_t bytes);
void host_free_pinned(void* p);
// dst (device) <- src (host) on the compute stream, not waiting for completion; the caller keeps src
// untouched until the returned event (a cudaEvent_t, destroy with event_destroy) has completed.
void* copy_to_device_async(void* dst, const void* src, int64_t bytes);
void event_wait_host(void* event);
void event_destroy(void* event);
// Bytes cached in the pool and bytes handed out (for tests and diagnostics).
int64_t pool_cached_bytes();
int64_t pool_live_bytes();
// Number of cudaMalloc calls made by the pool so far (a steady-state step adds none).
int64_t pool_malloc_count();

}  // namespace lockstep::cuda
