// The ops layer: the only place where numbers are computed.
//
// Layers, losses, optimizers and the trainer call these functions; each one checks shapes, devices and
// dtypes once, then dispatches on the tensor's device (and dtype) to a kernel in core/kernels/
// (kernels::Cpu: OpenBLAS + OpenMP loops; kernels::Cuda: cuBLAS + CUDA kernels). A new device means
// new kernels and a new branch in `dispatch`, never a change to layer code.
//
// Conventions:
//  * Tensors are passed by const reference: a Tensor is a handle, and the op writes into its memory.
//  * "2-D" arguments are row-major [rows, cols]; feature-axis ops view their input as [outer, C, inner].
//  * Output arguments come last. Unless stated otherwise an output may alias an input of the same shape.
//  * Scalars are passed as double and converted to the tensor's dtype.
#pragma once

#include <cstdint>

#include "core/rng.h"
#include "core/tensor.h"

namespace lockstep::ops {

// ---- threads ---------------------------------------------------------------------------------
// Threads used by CPU ops (OpenMP loops and OpenBLAS). Defaults to the cores this process may run on.
void set_num_threads(int n);
// OpenMP's worker threads spin after each parallel region and steal the core OpenBLAS's threads need
// (20x slowdowns on 2 threads: ../shared/bench/BASELINE.md §3). libgomp reads OMP_WAIT_POLICY once, before
// main(), so a program calls this first thing: unless the user chose a policy, it sets PASSIVE and
// re-executes itself (argv unchanged). Returns only when the policy is in place.
void ensure_passive_openmp(char** argv);
int num_threads();
int default_num_threads();

// ---- elementwise and reductions --------------------------------------------------------------
void fill(const Tensor& x, double value);
void copy(const Tensor& src, const Tensor& dst);
void scale(const Tensor& x, double a);                                   // x *= a
void axpy(double a, const Tensor& x, const Tensor& y);                   // y += a*x
void axpby(double a, const Tensor& x, double b, const Tensor& y);        // y = a*x + b*y
void add(const Tensor& a, const Tensor& b, const Tensor& out,           // out = a+b, then max(out, 0) when
         bool relu = false);                                             //   relu (activation_forward's ReLU)
void mul(const Tensor& a, const Tensor& b, const Tensor& out);           // out = a*b
void clip_by_value(const Tensor& x, double lo, double hi);               // in place
double sum(const Tensor& x);
double sum_squares(const Tensor& x);
double sum_abs(const Tensor& x);
double max_abs_diff(const Tensor& a, const Tensor& b);
bool all_finite(const Tensor& x);

// ---- memory hints -----------------------------------------------------------------------------------
// Bring x's memory close to the processor ahead of its use, for writing when `for_write` (CPU: a software
// prefetch per cache line; CUDA: nothing). A hint: it changes no value; an undefined x is ignored.
void prefetch(const Tensor& x, bool for_write);

// ---- merges (Keras Concatenate, Maximum, Minimum) ----------------------------------------------
// Concatenation along an axis as copies of column blocks: `whole` viewed as [outer, whole.numel()/outer] and
// `part` as [outer, part.numel()/outer]; the part's row r is columns [offset, offset + part_cols) of the whole's
// row r. into_whole: whole <- part (forward); else part <- whole (the backward's slice).
void concat_block(const Tensor& part, const Tensor& whole, int64_t outer, int64_t offset, bool into_whole);
// out = max(a, b) elementwise (is_max) or min(a, b). out may alias a or b.
// Computed as out = pick_a ? a : b with extremum_backward's pick_a, so the output is the operand its gradient
// goes to; NaNs follow the comparison literally (a NaN in b gives NaN, a NaN in a alone gives b), on every device.
void extremum(bool is_max, const Tensor& a, const Tensor& b, const Tensor& out);
// The gradient of extremum, ties going to `a` as TensorFlow's Maximum/Minimum gradients do: with
// pick_a = is_max ? a >= b : a <= b, da = pick_a ? dy : 0 and db = pick_a ? 0 : dy. da or db may be undefined
// (not needed). Neither may alias dy, a or b.
void extremum_backward(bool is_max, const Tensor& a, const Tensor& b, const Tensor& dy, const Tensor& da,
                       const Tensor& db);

// ---- convolutions, pooling, padding (maps are NHWC: Keras's channels_last) -----------------------
// The geometry of a 2-D window op from x [N, in_h, in_w, in_c] to y [N, out_h, out_w, out_c].
struct Window2d {
  int64_t batch = 0, in_h = 0, in_w = 0, in_c = 0;
  int64_t out_h = 0, out_w = 0, out_c = 0;
  int64_t k_h = 1, k_w = 1;            // kernel (or pool) size
  int64_t stride_h = 1, stride_w = 1;
  int64_t dil_h = 1, dil_w = 1;        // dilation (pooling: 1)
  int64_t pad_top = 0, pad_left = 0;   // positions before the first row / column (zeros; pooling: skipped)
  int64_t groups = 1;                  // convolution: in_c/groups inputs feed each block of out_c/groups outputs
  // Input row of output row o and tap k (may fall in the padding: < 0 or >= in_h).
  int64_t in_row(int64_t o, int64_t k) const { return o * stride_h - pad_top + k * dil_h; }
  int64_t in_col(int64_t o, int64_t k) const { return o * stride_w - pad_left + k * dil_w; }
};
// One spatial axis as TensorFlow sizes it: valid: out = ceil((in - (k-1)·d) / s), no padding; same:
// out = ceil(in / s) with max((out-1)·s + (k-1)·d + 1 - in, 0) padding, the smaller half before
// (*pad_before). Returns out (0 or less: the window does not fit).
int64_t window_out(int64_t in, int64_t k, int64_t stride, int64_t dilation, bool same, int64_t* pad_before);

// Auto: the fast kernel for the device and shape; Reference: the plain loops the tests hold it to (CPU;
// the CUDA kernels are direct and ignore the choice).
enum class KernelPath { Auto, Reference };
// The CPU kernels behind KernelPath::Auto for a float convolution (float64 always takes Own):
//   Auto     per shape and op, the fastest as measured: our Winograd kernels, oneDNN's direct kernels or our
//            own direct ones (README "Convolutions: which kernel runs");
//   Direct   as Auto without Winograd: oneDNN's direct kernels or ours, per shape and op;
//   Own      lockstep's own direct kernels: the pointwise product, im2col + products, depthwise loops
//            (kernels/conv_cpu.cpp);
//   OneDnn   oneDNN's direct kernels (kernels/conv_onednn.cpp) for every shape oneDNN takes, Own for the others;
//   Winograd our Winograd kernels (kernels/winograd_cpu.cpp) for every shape they take, Auto for the others.
// Without oneDNN in the build (LOCKSTEP_WITH_ONEDNN) OneDnn is Own, and Auto and Direct choose between ours.
// Process-wide; it starts as the environment's LOCKSTEP_CONV (auto, direct, own, onednn or winograd; auto when
// unset).
enum class ConvRoute { Auto, Direct, Own, OneDnn, Winograd };
void set_conv_route(ConvRoute r);
ConvRoute conv_route();
// "auto", "direct", "own", "onednn", "winograd", as LOCKSTEP_CONV spells them; parse_conv_route throws
// UserError naming `what` and the five names for anything else.
const char* conv_route_name(ConvRoute r);
ConvRoute parse_conv_route(const std::string& name, const std::string& what);
bool have_onednn();
// y = conv(x, w), w [k_h, k_w, in_c/groups, out_c] (Keras's kernel layout). Assigned.
void conv2d_forward(const Tensor& x, const Tensor& w, const Window2d& g, const Tensor& y,
                    KernelPath path = KernelPath::Auto);
// dx = dL/dx from dy (assigned).
void conv2d_backward_data(const Tensor& dy, const Tensor& w, const Window2d& g, const Tensor& dx,
                          KernelPath path = KernelPath::Auto);
// dw = dL/dw summed over the batch (assigned).
void conv2d_backward_filter(const Tensor& x, const Tensor& dy, const Window2d& g, const Tensor& dw,
                            KernelPath path = KernelPath::Auto);
// Pooling over each channel (out_c = in_c). Max: padded positions never win. Average: the mean over the
// window's positions inside the input (TensorFlow's avg_pool leaves padding out of the count).
void max_pool2d_forward(const Tensor& x, const Window2d& g, const Tensor& y);
// dx (assigned): each output's gradient goes to the first position of its window, in row-major order,
// that holds the maximum (TensorFlow's MaxPoolGrad), found again from x and y. relu_gate (x is a ReLU's
// output): the ReLU's backward too, dx · (x > 0), in the same pass (an output whose maximum is not positive
// routes nothing); the same bits as max_pool2d_backward then activation_backward(Relu), on CPU and CUDA.
void max_pool2d_backward(const Tensor& x, const Tensor& y, const Tensor& dy, const Window2d& g, const Tensor& dx,
                         bool relu_gate = false);
void avg_pool2d_forward(const Tensor& x, const Window2d& g, const Tensor& y);
void avg_pool2d_backward(const Tensor& dy, const Window2d& g, const Tensor& dx);
// Zero padding: small [N, H, W, C] is the block of big [N, H', W', C] at (top, left). into_big: big <-
// small, zeros elsewhere (forward); else small <- that block of big (the backward).
void pad2d(const Tensor& small, const Tensor& big, int64_t top, int64_t left, bool into_big);
// y[n, s, c] = x[n, s, c] · m[n, c], x viewed as [N, S, C] and m as [N, C] (SpatialDropout2D's mask).
// y may alias x.
void scale_channels(const Tensor& x, const Tensor& m, const Tensor& y);

// ---- products ----------------------------------------------------------------------------------
// C = alpha * op(A) * op(B) + beta * C, with op(X) = X or Xᵀ; A, B, C are 2-D row-major.
void gemm(bool trans_a, bool trans_b, double alpha, const Tensor& a, const Tensor& b, double beta,
          const Tensor& c);
// y[B,N] += b[N] (broadcast over rows).
void bias_add(const Tensor& y, const Tensor& b);
// db[N] = beta*db + Σ_rows dy[B,N].
void bias_grad(const Tensor& dy, const Tensor& db, double beta = 0.0);

// ---- activations -------------------------------------------------------------------------------
enum class Activation { Linear, Sigmoid, Tanh, Relu, LeakyRelu, Elu, Selu, Softmax, Softplus, Softsign, Swish };
inline constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
inline constexpr double kSeluScale = 1.0507009873554804934193349852946;
// y = f(x) elementwise (softmax: over the last axis). y may alias x.
void activation_forward(Activation act, double alpha, const Tensor& x, const Tensor& y);
// dx = f'(x) * dy (softmax: the Jacobian-vector product over the last axis). Only softplus, softsign,
// swish, and leaky ReLU / ELU with a negative alpha read x; every other kind reads only y (ReLU's family
// and SELU: y > 0 exactly where x > 0). dx may alias dy.
void activation_backward(Activation act, double alpha, const Tensor& x, const Tensor& y, const Tensor& dy,
                         const Tensor& dx);
// Whether activation_backward needs x (else y suffices, so x may be overwritten in place).
bool activation_backward_needs_x(Activation act, double alpha);

// What a convolution layer does to its output: y = act(conv(x, w) + bias) (bias [out_c], undefined: none).
struct ConvEpilogue {
  Tensor bias;
  Activation act = Activation::Linear;
  double alpha = 0.0;
};
// y = act(conv(x, w) + bias), assigned. On the CPU in float (KernelPath::Auto) the bias and an elementwise
// activation are fused into the convolution: applied to each block of outputs as the kernel writes it (each
// Winograd tile, each im2col block), not in two more passes over y; elsewhere (float64, Reference, CUDA,
// Softmax) conv2d_forward, bias_add and activation_forward in turn, with the same result.
void conv2d_forward(const Tensor& x, const Tensor& w, const Window2d& g, const Tensor& y, const ConvEpilogue& ep,
                    KernelPath path = KernelPath::Auto);

// A per-sample broadcast of a parameter (PReLU's alpha with shared axes): element (b, i1..ik) of x
// uses alpha[Σ coord_j * stride_j]; a shared axis has stride 0.
struct Broadcast {
  int nd = 0;
  int64_t dims[4] = {1, 1, 1, 1};
  int64_t stride[4] = {0, 0, 0, 0};
};
void prelu_forward(const Tensor& x, const Tensor& alpha, const Broadcast& map, const Tensor& y);
// dx = dy * (x > 0 ? 1 : alpha); dalpha = Σ_{x<=0} dy * x (assigned).
void prelu_backward(const Tensor& x, const Tensor& alpha, const Broadcast& map, const Tensor& dy,
                    const Tensor& dx, const Tensor& dalpha);
// RReLU in training: slope_i ~ U[lower, upper) from uniform number first + i of `stream` (a rank's slice of a
// global batch draws that slice of the global draw), written to `slopes`; y = x >= 0 ? x : slope*x.
void rrelu_forward_train(const Tensor& x, double lower, double upper, const rng::Stream& stream,
                         const Tensor& slopes, const Tensor& y, int64_t first = 0);
// dx = dy * (x >= 0 ? 1 : slope).
void rrelu_backward(const Tensor& x, const Tensor& slopes, const Tensor& dy, const Tensor& dx);

// ---- dropout -----------------------------------------------------------------------------------
// mask_i = keep ? 1/(1-rate) : 0 with keep = U_{first+i} >= rate; y = x * mask. `first`: the index of
// x's first element in the stream (a rank's share of a global batch starts where its first sample is).
void dropout_forward(const Tensor& x, double rate, const rng::Stream& stream, const Tensor& mask,
                     const Tensor& y, int64_t first = 0);
// Keras AlphaDropout: y = a*(x*keep + α'(1-keep)) + b; mask_i = a*keep (the derivative).
void alpha_dropout_forward(const Tensor& x, double rate, const rng::Stream& stream, const Tensor& mask,
                           const Tensor& y, int64_t first = 0);

// ---- batch normalization (x viewed as [outer, C, inner]) -----------------------------------------
struct FeatureView {
  int64_t outer = 1, channels = 1, inner = 1;
  int64_t count() const { return outer * inner; }  // samples per channel
};
FeatureView feature_view(const Shape& shape, int axis);
// stats[0:C] = Σx, stats[C:2C] = Σx² per channel, accumulated in float64 (stats is F64 [2C], CPU or
// the tensor's device). Assigned, not accumulated.
void bn_sums(const Tensor& x, const FeatureView& v, const Tensor& stats);
// From summed statistics over `count` samples: mean = Σx/n, var = max(Σx²/n - mean², 0) (biased).
void bn_moments(const Tensor& stats, double count, const Tensor& mean, const Tensor& var);
// y = gamma*(x-mean)/sqrt(var+eps) + beta; gamma/beta may be undefined (scale/center off). relu: a ReLU
// applied to y in the same pass (the same bits as activation_forward after it).
void bn_apply(const Tensor& x, const FeatureView& v, const Tensor& mean, const Tensor& var, const Tensor& gamma,
              const Tensor& beta, double eps, const Tensor& y, bool relu = false);
// moving = momentum*moving + (1-momentum)*batch.
void bn_update_moving(const Tensor& moving, const Tensor& batch, double momentum);
// sums[0:C] = Σdy, sums[C:2C] = Σdy·x̂ per channel (F64), x̂ = (x-mean)/sqrt(var+eps).
// The three backward ops take relu_out, the output of a ReLU applied to the normalisation's output
// (bn_apply's relu), or undefined: when defined, dy is the ReLU's output gradient and each op first does
// the ReLU's backward on the fly (dy where relu_out > 0, else 0: activation_backward's bits), so that the
// gated gradient is never written out.
void bn_backward_sums(const Tensor& dy, const Tensor& x, const FeatureView& v, const Tensor& mean,
                      const Tensor& var, double eps, const Tensor& sums, const Tensor& relu_out = Tensor());
// Training-mode input gradient from (possibly globally reduced) sums over `count` samples:
// dx = gamma/sqrt(var+eps) * (dy - Σdy/n - x̂·Σdy·x̂/n).
void bn_backward_apply(const Tensor& dy, const Tensor& x, const FeatureView& v, const Tensor& mean,
                       const Tensor& var, const Tensor& gamma, double eps, const Tensor& sums, double count,
                       const Tensor& dx, const Tensor& relu_out = Tensor());
// Inference-mode input gradient: dx = dy * gamma/sqrt(var+eps).
void bn_backward_inference(const Tensor& dy, const FeatureView& v, const Tensor& var, const Tensor& gamma,
                           double eps, const Tensor& dx, const Tensor& relu_out = Tensor());
// dgamma = sums[C:2C], dbeta = sums[0:C], converted to the parameters' dtype (either may be undefined).
void bn_param_grads(const Tensor& sums, const Tensor& dgamma, const Tensor& dbeta);
// A Dense layer above a normalisation y = gamma*x̂ + beta that needs no input gradient (the bottom of the
// trainable stack, Model::backward). With g = x̂ᵀ·dz [in, out] and s = Σ_rows dz [out] (given):
// dw = gamma_c*g + beta_c*s (the product Xᵀ·dz with X = gamma*x̂ + beta), and sums (F64 [2*in])
// receives the normalisation's Σdy = W·s and Σdy·x̂ = Σ_j W∘g per feature, without dy = dz·Wᵀ ever
// being formed. gamma/beta may be undefined (scale/center off). descent_rate > 0: the kernel takes the
// step w -= descent_rate·dw in place (the sums still see w before it) and dw is only scratch, its
// content unspecified afterwards.
void dense_normalized_grads(const Tensor& xhat, const Tensor& dz, const Tensor& w, const Tensor& s,
                            const Tensor& gamma, const Tensor& beta, const Tensor& dw, const Tensor& sums,
                            double descent_rate = 0.0);

// ---- losses (per-sample losses written to `loss` [B]; gradients scaled by `grad_scale`) -----------
// Sparse softmax cross-entropy from logits z[B,K] and integer labels y[B] (stored as floats).
// Writes dz = grad_scale * (softmax(z) - onehot(y)) when dz is defined. Labels outside [0, K) throw.
void softmax_xent_sparse(const Tensor& z, const Tensor& y, const Tensor& loss, const Tensor& dz, double grad_scale);
// Softmax cross-entropy from logits and dense targets t[B,K].
void softmax_xent_dense(const Tensor& z, const Tensor& t, const Tensor& loss, const Tensor& dz, double grad_scale);
// Sigmoid cross-entropy from logits z[B,K], targets t[B,K]; per-sample loss = mean over K.
void sigmoid_xent(const Tensor& z, const Tensor& t, const Tensor& loss, const Tensor& dz, double grad_scale);
// Cross-entropies from probabilities (Keras clips p to [1e-7, 1-1e-7]; see keras-semantics §8).
void sparse_xent_probs(const Tensor& p, const Tensor& y, const Tensor& loss, const Tensor& dp, double grad_scale);
void categorical_xent_probs(const Tensor& p, const Tensor& t, const Tensor& loss, const Tensor& dp, double grad_scale);
void binary_xent_probs(const Tensor& p, const Tensor& t, const Tensor& loss, const Tensor& dp, double grad_scale);
// Mean squared error over the last axis.
void mse(const Tensor& p, const Tensor& t, const Tensor& loss, const Tensor& dp, double grad_scale);
// Per-sample correctness (1 or 0) into `out` [B].
enum class AccuracyKind { Sparse, Categorical, Binary };
void accuracy(AccuracyKind kind, const Tensor& pred, const Tensor& y, const Tensor& out);

// ---- regularization and constraints ------------------------------------------------------------
// l1·Σ|w| + l2·Σw²
double l1l2_penalty(const Tensor& w, double l1, double l2);
// g += l1·sign(w) + 2·l2·w
void l1l2_grad(const Tensor& w, const Tensor& g, double l1, double l2);
// Keras MaxNorm: w viewed as [outer, R, inner], norms over R: w *= clip(n, 0, max)/(1e-7 + n).
void max_norm(const Tensor& w, const FeatureView& v, double max_value);

// ---- optimizer updates (tf.keras 2.10 OptimizerV2 rules, keras-semantics §5) ---------------------
// Plain SGD: w -= lr*g.
void sgd_update(const Tensor& w, const Tensor& g, double lr);
// Keras momentum: v = mu*v - lr*g; w += v (nesterov: w += mu*v - lr*g).
void momentum_update(const Tensor& w, const Tensor& g, const Tensor& v, double lr, double mu, bool nesterov);
// Adagrad: acc += g²; w -= lr*g/(sqrt(acc)+eps).
void adagrad_update(const Tensor& w, const Tensor& g, const Tensor& acc, double lr, double eps);
// RMSprop; mom and mg may be undefined (momentum 0, not centered).
void rmsprop_update(const Tensor& w, const Tensor& g, const Tensor& ms, const Tensor& mom, const Tensor& mg,
                    double lr, double rho, double momentum, double eps);
// Adam with step size alpha_t = lr*sqrt(1-b2^t)/(1-b1^t); vhat undefined unless amsgrad.
void adam_update(const Tensor& w, const Tensor& g, const Tensor& m, const Tensor& v, const Tensor& vhat,
                 double alpha_t, double b1, double b2, double eps);
// Adamax: m = b1 m + (1-b1) g; u = max(b2 u, |g|); w -= lr_t*m/(u+eps), lr_t = lr/(1-b1^t).
void adamax_update(const Tensor& w, const Tensor& g, const Tensor& m, const Tensor& u, double lr_t, double b1,
                   double b2, double eps);
// Nadam (K210): coefficients computed by the optimizer from the momentum cache.
struct NadamCoeffs {
  double lr, b1, b2, eps;
  double g_scale;     // 1/(1-cache_t)
  double m_scale;     // 1/(1-cache_t*mu_{t+1})
  double v_scale;     // 1/(1-b2^t)
  double mu_t, mu_next;
};
void nadam_update(const Tensor& w, const Tensor& g, const Tensor& m, const Tensor& v, const NadamCoeffs& c);

// ---- random fills (initializers) ----------------------------------------------------------------
void random_uniform(const Tensor& x, double lo, double hi, const rng::Stream& stream);
void random_normal(const Tensor& x, double mean, double stddev, const rng::Stream& stream);
// Normal with samples beyond 2 stddev redrawn.
void truncated_normal(const Tensor& x, double mean, double stddev, const rng::Stream& stream);

}  // namespace lockstep::ops
