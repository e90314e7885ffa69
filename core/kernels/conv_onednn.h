// oneDNN's convolutions (Debian's libdnnl-dev: oneDNN 2.x on Debian 12, 3.x on Debian 13) on lockstep's
// layouts: NHWC maps, kernels [k_h, k_w, in_c/groups, out_c] (Keras's layout, oneDNN's `hwio` / `hwigo`),
// float only. core/kernels/conv_cpu.cpp routes a float convolution here when ops::conv_route() and the shape
// rule there say so; tests/bench/conv_onednn_bench.cpp times these against conv_cpu.cpp's own kernels.
// Without oneDNN (LOCKSTEP_WITH_ONEDNN=OFF, or libdnnl-dev missing) compiled() is false and supports() is
// false for every shape, so nothing routes here.
#pragma once

#include "core/ops.h"

namespace lockstep::kernels::onednn {

// Whether this build has oneDNN.
bool compiled();
// The oneDNN version this build runs, "2.6.3" ("" without oneDNN).
const char* version();

// How a convolution runs on oneDNN:
//   Plain    the direct algorithm, the kernel as it is (`hwio`): no copy, whatever implementation oneDNN has
//            for that layout;
//   Blocked  the direct algorithm, the kernel in the layout oneDNN picks (`any`): the kernel is reordered into
//            it on every forward and backward-data call, and the kernel gradient out of it on every
//            backward-filter call (layers own their kernels in Keras's layout, so oneDNN's cannot be kept
//            across steps);
//   Winograd oneDNN's Winograd algorithm (F(4x4, 3x3) on AVX-512: 3x3, stride 1, undilated, ungrouped),
//            kernel and activations reordered into its blocked layouts and the result out of them on every
//            call. Fewer multiplications (about half the time on the networks' 3x3 layers), a rounding error
//            a few times the direct algorithm's (docs/performance.md). Where this oneDNN has no Winograd
//            kernel for the geometry (a CPU without AVX-512; oneDNN 3.x, which has none for x86 CPUs), it runs
//            as Blocked; implementation() says which ran.
enum class Way { Plain, Blocked, Winograd };

// Whether oneDNN takes this geometry (any groups, stride, dilation; TensorFlow's paddings, including a
// "valid" stride that leaves the last rows unread).
bool supports(const ops::Window2d& g);

// As kernels::conv2d_* (assigned outputs). Primitives are made once per (op, geometry, way, thread count)
// and kept per calling thread; oneDNN's scratchpad and the reordered operands share one per-thread buffer. oneDNN runs on the calling
// thread's OpenMP thread count (ops::set_num_threads sets it), fixed in a primitive when it is made.
void conv2d_forward(const float* x, const float* w, const ops::Window2d& g, float* y, Way way);
void conv2d_backward_data(const float* dy, const float* w, const ops::Window2d& g, float* dx, Way way);
void conv2d_backward_filter(const float* x, const float* dy, const ops::Window2d& g, float* dw, Way way);

// The implementation oneDNN chose for that op, geometry and way, e.g. "brgconv:avx512_core", "jit:avx512_core" or
// "jit_wino_4x3:avx512_core"
// (makes the primitive if needed); op is "fwd", "bwd_data" or "bwd_filter".
const char* implementation(const char* op, const ops::Window2d& g, Way way);

}  // namespace lockstep::kernels::onednn
