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

// How the kernel reaches oneDNN:
//   Plain   the kernel as it is (`hwio`): no copy, whatever implementation oneDNN has for that layout;
//   Blocked the layout oneDNN picks (`any`): the kernel is reordered into it on every forward and
//           backward-data call, and the kernel gradient out of it on every backward-filter call (layers own
//           their kernels in Keras's layout, so oneDNN's cannot be kept across steps).
enum class Weights { Plain, Blocked };

// Whether oneDNN takes this geometry (any groups, stride, dilation; TensorFlow's paddings, including a
// "valid" stride that leaves the last rows unread).
bool supports(const ops::Window2d& g);

// As kernels::conv2d_* (assigned outputs). Primitives are made once per (op, geometry, weights, thread count)
// and kept per calling thread; oneDNN's scratchpad is one per-thread buffer. oneDNN runs on the calling
// thread's OpenMP thread count (ops::set_num_threads sets it), fixed in a primitive when it is made.
void conv2d_forward(const float* x, const float* w, const ops::Window2d& g, float* y, Weights wl);
void conv2d_backward_data(const float* dy, const float* w, const ops::Window2d& g, float* dx, Weights wl);
void conv2d_backward_filter(const float* x, const float* dy, const ops::Window2d& g, float* dw, Weights wl);

// The implementation oneDNN chose for that op and geometry, e.g. "brg:avx512_core" or "jit:avx512_core"
// (makes the primitive if needed); op is "fwd", "bwd_data" or "bwd_filter".
const char* implementation(const char* op, const ops::Window2d& g, Weights wl);

}  // namespace lockstep::kernels::onednn
