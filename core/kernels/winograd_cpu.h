// lockstep's own Winograd convolutions, float, on lockstep's layouts: NHWC maps, kernels [3, 3, in_c, out_c]
// (Keras's layout). For the CPUs and oneDNN versions without Winograd kernels (oneDNN 3.x has none for x86
// CPUs, and ours are faster than oneDNN 2.6's); core/kernels/conv_cpu.cpp decides when these run.
//
// Each op is a 3x3 correlation of a map with a (transformed) kernel, cut into tiles (F(4x4, 3x3): 6x6 input
// tiles give 4x4 outputs, 36 transform points; partial tiles at the borders read zeros outside the map and
// store only the outputs inside it): per block of tiles the input transform Bᵀ·d·B (vectorised over channels),
// one product [tiles, C]·[C, K] per point through kernels::gemm (libxsmm on one thread), the output transform
// Aᵀ·m·A.
//  * forward: the kernel transformed G·g·Gᵀ (in double, rounded once);
//  * backward data: the same machinery on dy with the kernel rotated by 180 degrees and its channels swapped,
//    padding 2 - pad before each axis;
//  * backward filter: the forward's tiles of x (Bᵀ·d·B) and of dy (A·dy·Aᵀ), per point a product
//    [C, tiles]·[tiles, K] summed over the tiles, then Gᵀ·s·G (in double).
// Rounding: Winograd's error at an output follows the magnitudes of its whole tile, the bound every route is
// held to (8·√K·u·Σ|terms|) that output's own terms. Each op therefore runs F(4x4, 3x3) (points 0, ±1, 2, -1/2:
// half the error of Lavin's 0, ±1, ±2) where the fewest terms any output sums is at least 64, F(2x2, 3x3)
// from 16, and plain direct loops below that (1-3 channels, 1x1 maps, a 'valid' layer's input-gradient
// corners): algorithm() says which. tests/core/winograd_test.cpp holds all three to that bound.
// Threads: OpenMP over blocks of tiles, each thread's products on one thread; the same results run to run for
// a fixed thread count. Scratch per thread, kept across calls: about 640 KiB of transformed tiles a block
// (the kernel gradient's blocks up to 36·C·K floats), the transformed kernel (36·C·K), the kernel gradient's
// sums (36·C·K a thread).
#pragma once

#include "core/kernels/cpu.h"
#include "core/ops.h"

namespace lockstep::kernels::winograd {

// 3x3, stride 1, undilated, ungrouped, 0 to 2 positions of padding before each axis (TensorFlow's 'same'
// pads 1, 'valid' 0); any batch, map size and channel counts. Positions a window reads outside the map are
// zeros, wherever the output ends.
bool supports(const ops::Window2d& g);

// What runs for that op ("fwd", "bwd_data" or "bwd_filter") and geometry: "F(4x4,3x3)", "F(2x2,3x3)" or
// "direct" (where too few terms per output keep Winograd's rounding error from the bound; winograd_cpu.cpp).
const char* algorithm(const ops::Window2d& g, const char* op);

// As kernels::conv2d_forward / conv2d_backward_data / conv2d_backward_filter (outputs assigned). The forward
// applies `ep` to each tile's outputs as the output transform writes them.
void forward(const float* x, const float* w, const ops::Window2d& g, float* y, const Epilogue<float>& ep = {});
void backward_data(const float* dy, const float* w, const ops::Window2d& g, float* dx);
void backward_filter(const float* x, const float* dy, const ops::Window2d& g, float* dw);

}  // namespace lockstep::kernels::winograd
