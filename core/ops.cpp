// Validation and device dispatch for every op (see ops.h). Kernels live in core/kernels/.
#include "core/ops.h"

#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>

#include "core/error.h"
#include "core/kernels/conv_onednn.h"
#include "core/kernels/cpu.h"
#ifdef LOCKSTEP_HAVE_CUDA
#include "core/kernels/cuda.h"
#endif

namespace lockstep::ops {

namespace {

int g_threads = 0;

// Calls f(T{}, backend) with T the element type and backend the kernel tag for x's device.
template <typename F>
decltype(auto) dispatch(const Tensor& x, F&& f) {
  LS_CHECK(x.defined(), "op on an undefined tensor");
  if (x.device() == Device::CUDA) {
#ifdef LOCKSTEP_HAVE_CUDA
    LS_CHECK(x.dtype() == DType::F32, "CUDA ops are float32 only");
    return f(float{}, kernels::Cuda{});
#else
    throw Error("a CUDA tensor reached an op, but this lockstep was built without the CUDA backend");
#endif
  }
  if (x.dtype() == DType::F64) return f(double{}, kernels::Cpu{});
  return f(float{}, kernels::Cpu{});
}

void same(const Tensor& a, const Tensor& b, const char* op) {
  LS_CHECK(a.defined() && b.defined(), op, ": undefined tensor");
  LS_CHECK(a.device() == b.device(), op, ": tensors on ", device_name(a.device()), " and ",
           device_name(b.device()));
  LS_CHECK(a.dtype() == b.dtype(), op, ": dtypes ", dtype_name(a.dtype()), " and ", dtype_name(b.dtype()));
}
void same_numel(const Tensor& a, const Tensor& b, const char* op) {
  same(a, b, op);
  LS_CHECK(a.numel() == b.numel(), op, ": shapes ", shape_str(a.shape()), " and ", shape_str(b.shape()));
}
// Optional tensor pointer (nullptr when undefined).
template <typename T> T* opt(const Tensor& t) { return t.defined() ? t.data<T>() : nullptr; }
int64_t rows_of(const Tensor& x) { return x.rank() == 0 ? 1 : x.numel() / std::max<int64_t>(1, x.dim(-1)); }
int64_t cols_of(const Tensor& x) { return x.rank() == 0 ? 1 : x.dim(-1); }

}  // namespace

// ---- threads -------------------------------------------------------------------------------------
int default_num_threads() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}
void set_num_threads(int n) {
  LS_REQUIRE(n >= 1, UserError, "thread count must be at least 1, got ", n);
  g_threads = n;
  kernels::cpu_set_threads(n);
}
void ensure_passive_openmp(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  execv("/proc/self/exe", argv);
  // exec failed (no /proc): carry on with libgomp's default policy.
}
int num_threads() {
  if (g_threads == 0) set_num_threads(default_num_threads());
  return g_threads;
}

// ---- elementwise and reductions ------------------------------------------------------------------
void fill(const Tensor& x, double v) {
  dispatch(x, [&](auto t, auto be) { using T = decltype(t); kernels::fill(be, x.data<T>(), x.numel(), T(v)); });
}
void copy(const Tensor& src, const Tensor& dst) {
  same_numel(src, dst, "copy");
  dispatch(src, [&](auto t, auto be) { using T = decltype(t); kernels::copy(be, src.data<T>(), dst.data<T>(), src.numel()); });
}
void scale(const Tensor& x, double a) {
  dispatch(x, [&](auto t, auto be) { using T = decltype(t); kernels::scale(be, x.data<T>(), x.numel(), T(a)); });
}
void axpy(double a, const Tensor& x, const Tensor& y) { axpby(a, x, 1.0, y); }
void axpby(double a, const Tensor& x, double b, const Tensor& y) {
  same_numel(x, y, "axpby");
  dispatch(x, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::axpby(be, T(a), x.data<T>(), T(b), y.data<T>(), x.numel());
  });
}
void add(const Tensor& a, const Tensor& b, const Tensor& out, bool relu) {
  same_numel(a, b, "add");
  same_numel(a, out, "add");
  same(a, b, "add");
  same(a, out, "add");
  dispatch(a, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::add(be, a.data<T>(), b.data<T>(), out.data<T>(), a.numel(), relu);
  });
}
void mul(const Tensor& a, const Tensor& b, const Tensor& out) {
  same_numel(a, b, "mul");
  same_numel(a, out, "mul");
  dispatch(a, [&](auto t, auto be) { using T = decltype(t); kernels::mul(be, a.data<T>(), b.data<T>(), out.data<T>(), a.numel()); });
}
void clip_by_value(const Tensor& x, double lo, double hi) {
  dispatch(x, [&](auto t, auto be) { using T = decltype(t); kernels::clip_by_value(be, x.data<T>(), x.numel(), T(lo), T(hi)); });
}
double sum(const Tensor& x) {
  return dispatch(x, [&](auto t, auto be) { using T = decltype(t); return kernels::sum(be, x.data<T>(), x.numel()); });
}
double sum_squares(const Tensor& x) {
  return dispatch(x, [&](auto t, auto be) { using T = decltype(t); return kernels::sum_squares(be, x.data<T>(), x.numel()); });
}
double sum_abs(const Tensor& x) {
  return dispatch(x, [&](auto t, auto be) { using T = decltype(t); return kernels::sum_abs(be, x.data<T>(), x.numel()); });
}
double max_abs_diff(const Tensor& a, const Tensor& b) {
  same_numel(a, b, "max_abs_diff");
  return dispatch(a, [&](auto t, auto be) { using T = decltype(t); return kernels::max_abs_diff(be, a.data<T>(), b.data<T>(), a.numel()); });
}
bool all_finite(const Tensor& x) {
  return dispatch(x, [&](auto t, auto be) { using T = decltype(t); return kernels::all_finite(be, x.data<T>(), x.numel()); });
}

// ---- memory hints -----------------------------------------------------------------------------------
void prefetch(const Tensor& x, bool for_write) {
  if (!x.defined() || x.device() != Device::CPU) return;
  kernels::prefetch(kernels::Cpu{}, x.raw(), x.numel() * dtype_size(x.dtype()), for_write);
}

// ---- merges --------------------------------------------------------------------------------------
void concat_block(const Tensor& part, const Tensor& whole, int64_t outer, int64_t offset, bool into_whole) {
  same(part, whole, "concat_block");
  LS_CHECK(outer > 0 && whole.numel() % outer == 0 && part.numel() % outer == 0, "concat_block: ", outer,
           " rows do not divide part ", shape_str(part.shape()), " and whole ", shape_str(whole.shape()));
  const int64_t part_cols = part.numel() / outer, whole_cols = whole.numel() / outer;
  LS_CHECK(offset >= 0 && offset + part_cols <= whole_cols, "concat_block: columns [", offset, ", ",
           offset + part_cols, ") of rows of ", whole_cols);
  dispatch(whole, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::concat_block(be, part.data<T>(), whole.data<T>(), outer, part_cols, whole_cols, offset, into_whole);
  });
}
void extremum(bool is_max, const Tensor& a, const Tensor& b, const Tensor& out) {
  same_numel(a, b, "extremum");
  same_numel(a, out, "extremum");
  dispatch(a, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::extremum(be, is_max, a.data<T>(), b.data<T>(), out.data<T>(), a.numel());
  });
}
void extremum_backward(bool is_max, const Tensor& a, const Tensor& b, const Tensor& dy, const Tensor& da,
                       const Tensor& db) {
  same_numel(a, b, "extremum_backward");
  same_numel(a, dy, "extremum_backward");
  // Cheap aliasing checks (same first element), where there is memory to alias.
  const bool any = a.numel() > 0;
  for (const Tensor* g : {&da, &db}) {
    if (!g->defined()) continue;
    same_numel(a, *g, "extremum_backward");
    LS_CHECK(!any || (g->raw() != dy.raw() && g->raw() != a.raw() && g->raw() != b.raw()),
             "extremum_backward: a gradient aliases dy, a or b");
  }
  LS_CHECK(!any || !da.defined() || !db.defined() || da.raw() != db.raw(), "extremum_backward: da aliases db");
  if (!da.defined() && !db.defined()) return;
  dispatch(a, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::extremum_backward(be, is_max, a.data<T>(), b.data<T>(), dy.data<T>(), opt<T>(da), opt<T>(db),
                               a.numel());
  });
}

// ---- convolutions, pooling, padding ----------------------------------------------------------------------
int64_t window_out(int64_t in, int64_t k, int64_t stride, int64_t dilation, bool same, int64_t* pad_before) {
  const int64_t span = (k - 1) * dilation + 1;
  int64_t out;
  if (same) {
    out = (in + stride - 1) / stride;
    const int64_t total = std::max<int64_t>((out - 1) * stride + span - in, 0);
    if (pad_before) *pad_before = total / 2;
  } else {
    out = in >= span ? (in - span) / stride + 1 : 0;
    if (pad_before) *pad_before = 0;
  }
  return out;
}

namespace {
void check_window(const Window2d& g, const char* op) {
  LS_CHECK(g.batch >= 0 && g.in_h > 0 && g.in_w > 0 && g.in_c > 0 && g.out_h > 0 && g.out_w > 0 && g.out_c > 0 &&
               g.k_h > 0 && g.k_w > 0 && g.stride_h > 0 && g.stride_w > 0 && g.dil_h > 0 && g.dil_w > 0 &&
               g.groups > 0 && g.in_c % g.groups == 0 && g.out_c % g.groups == 0,
           op, ": bad geometry");
}
void check_map(const Tensor& t, int64_t n, int64_t h, int64_t w, int64_t c, const char* op, const char* what) {
  LS_CHECK(t.numel() == n * h * w * c, op, ": ", what, " has shape ", shape_str(t.shape()), ", expected ", n,
           "x", h, "x", w, "x", c);
}
void check_conv(const Tensor& x, const Tensor& w, const Tensor& y, const Window2d& g, const char* op) {
  check_window(g, op);
  same(x, w, op);
  same(x, y, op);
  check_map(x, g.batch, g.in_h, g.in_w, g.in_c, op, "input");
  check_map(y, g.batch, g.out_h, g.out_w, g.out_c, op, "output");
  LS_CHECK(w.numel() == g.k_h * g.k_w * (g.in_c / g.groups) * g.out_c, op, ": kernel has shape ",
           shape_str(w.shape()));
}
}  // namespace

namespace {
// -1: not read from the environment yet.
std::atomic<int> g_conv_route{-1};
constexpr std::pair<const char*, ConvRoute> kConvRoutes[] = {{"auto", ConvRoute::Auto},
                                                             {"direct", ConvRoute::Direct},
                                                             {"own", ConvRoute::Own},
                                                             {"onednn", ConvRoute::OneDnn},
                                                             {"winograd", ConvRoute::Winograd}};
}  // namespace
const char* conv_route_name(ConvRoute r) {
  for (const auto& [name, route] : kConvRoutes)
    if (route == r) return name;
  return "?";
}
ConvRoute parse_conv_route(const std::string& name, const std::string& what) {
  for (const auto& [n, route] : kConvRoutes)
    if (name == n) return route;
  throw UserError(what + " must be auto, direct, own, onednn or winograd, got '" + name + "'");
}
void set_conv_route(ConvRoute r) { g_conv_route.store(int(r), std::memory_order_relaxed); }
ConvRoute conv_route() {
  int r = g_conv_route.load(std::memory_order_relaxed);
  if (r < 0) {
    const char* env = std::getenv("LOCKSTEP_CONV");
    r = int(parse_conv_route(env ? env : "auto", "LOCKSTEP_CONV"));
    g_conv_route.store(r, std::memory_order_relaxed);
  }
  return ConvRoute(r);
}
bool have_onednn() { return kernels::onednn::compiled(); }

void conv2d_forward(const Tensor& x, const Tensor& w, const Window2d& g, const Tensor& y, KernelPath path) {
  check_conv(x, w, y, g, "conv2d_forward");
  dispatch(x, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::conv2d_forward(be, x.data<T>(), w.data<T>(), g, y.data<T>(), path == KernelPath::Reference);
  });
}
void conv2d_forward(const Tensor& x, const Tensor& w, const Window2d& g, const Tensor& y, const ConvEpilogue& ep,
                    KernelPath path) {
  if (ep.bias.defined()) {
    same(y, ep.bias, "conv2d_forward (bias)");
    LS_CHECK(ep.bias.numel() == g.out_c, "conv2d_forward: bias ", shape_str(ep.bias.shape()), " for ", g.out_c,
             " output channels");
  }
  if (x.device() == Device::CPU && x.dtype() == DType::F32 && path == KernelPath::Auto && ep.act != Activation::Softmax) {
    check_conv(x, w, y, g, "conv2d_forward");
    kernels::Epilogue<float> e;
    e.bias = ep.bias.defined() ? ep.bias.data<float>() : nullptr;
    e.act = ep.act;
    e.alpha = float(ep.alpha);
    return kernels::conv2d_forward(kernels::Cpu{}, x.data<float>(), w.data<float>(), g, y.data<float>(), e);
  }
  conv2d_forward(x, w, g, y, path);
  if (ep.bias.defined()) bias_add(y.reshape({-1, g.out_c}), ep.bias);
  if (ep.act != Activation::Linear) activation_forward(ep.act, ep.alpha, y, y);
}
void conv2d_backward_data(const Tensor& dy, const Tensor& w, const Window2d& g, const Tensor& dx, KernelPath path) {
  check_conv(dx, w, dy, g, "conv2d_backward_data");
  dispatch(dy, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::conv2d_backward_data(be, dy.data<T>(), w.data<T>(), g, dx.data<T>(), path == KernelPath::Reference);
  });
}
void conv2d_backward_filter(const Tensor& x, const Tensor& dy, const Window2d& g, const Tensor& dw,
                            KernelPath path) {
  check_conv(x, dw, dy, g, "conv2d_backward_filter");
  dispatch(x, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::conv2d_backward_filter(be, x.data<T>(), dy.data<T>(), g, dw.data<T>(), path == KernelPath::Reference);
  });
}
namespace {
void check_pool(const Tensor& x, const Tensor& y, const Window2d& g, const char* op) {
  check_window(g, op);
  LS_CHECK(g.in_c == g.out_c && g.groups == 1 && g.dil_h == 1 && g.dil_w == 1, op, ": bad pooling geometry");
  same(x, y, op);
  check_map(x, g.batch, g.in_h, g.in_w, g.in_c, op, "input");
  check_map(y, g.batch, g.out_h, g.out_w, g.out_c, op, "output");
}
}  // namespace
void max_pool2d_forward(const Tensor& x, const Window2d& g, const Tensor& y) {
  check_pool(x, y, g, "max_pool2d_forward");
  LS_CHECK(!y.shares_storage_with(x), "max_pool2d_forward: output aliases input");
  dispatch(x, [&](auto t, auto be) { using T = decltype(t); kernels::max_pool2d_forward(be, x.data<T>(), g, y.data<T>()); });
}
void max_pool2d_backward(const Tensor& x, const Tensor& y, const Tensor& dy, const Window2d& g, const Tensor& dx,
                         bool relu_gate) {
  check_pool(x, y, g, "max_pool2d_backward");
  check_pool(dx, dy, g, "max_pool2d_backward");
  same(x, dx, "max_pool2d_backward");
  dispatch(x, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::max_pool2d_backward(be, x.data<T>(), y.data<T>(), dy.data<T>(), g, dx.data<T>(), relu_gate);
  });
}
void avg_pool2d_forward(const Tensor& x, const Window2d& g, const Tensor& y) {
  check_pool(x, y, g, "avg_pool2d_forward");
  LS_CHECK(!y.shares_storage_with(x), "avg_pool2d_forward: output aliases input");
  dispatch(x, [&](auto t, auto be) { using T = decltype(t); kernels::avg_pool2d_forward(be, x.data<T>(), g, y.data<T>()); });
}
void avg_pool2d_backward(const Tensor& dy, const Window2d& g, const Tensor& dx) {
  check_pool(dx, dy, g, "avg_pool2d_backward");
  dispatch(dy, [&](auto t, auto be) { using T = decltype(t); kernels::avg_pool2d_backward(be, dy.data<T>(), g, dx.data<T>()); });
}
void pad2d(const Tensor& small, const Tensor& big, int64_t top, int64_t left, bool into_big) {
  same(small, big, "pad2d");
  LS_CHECK(small.rank() == 4 && big.rank() == 4 && small.dim(0) == big.dim(0) && small.dim(3) == big.dim(3) &&
               top >= 0 && left >= 0 && top + small.dim(1) <= big.dim(1) && left + small.dim(2) <= big.dim(2),
           "pad2d: ", shape_str(small.shape()), " at (", top, ", ", left, ") does not fit in ", shape_str(big.shape()));
  dispatch(small, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::pad2d(be, small.data<T>(), big.data<T>(), small.dim(0), small.dim(1), small.dim(2), small.dim(3),
                   big.dim(1), big.dim(2), top, left, into_big);
  });
}
void scale_channels(const Tensor& x, const Tensor& m, const Tensor& y) {
  same_numel(x, y, "scale_channels");
  same(x, m, "scale_channels");
  LS_CHECK(x.rank() >= 2 && m.rank() == 2 && m.dim(0) == x.dim(0) && m.dim(1) == x.dim(-1), "scale_channels: mask ",
           shape_str(m.shape()), " does not match ", shape_str(x.shape()));
  const int64_t n = x.dim(0), c = x.dim(-1), s = x.numel() / std::max<int64_t>(n * c, 1);
  dispatch(x, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::scale_channels(be, x.data<T>(), m.data<T>(), y.data<T>(), n, s, c);
  });
}

// ---- products ------------------------------------------------------------------------------------
void gemm(bool ta, bool tb, double alpha, const Tensor& a, const Tensor& b, double beta, const Tensor& c) {
  same(a, b, "gemm");
  same(a, c, "gemm");
  LS_CHECK(a.rank() == 2 && b.rank() == 2 && c.rank() == 2, "gemm: 2-D operands expected, got ", shape_str(a.shape()),
           " ", shape_str(b.shape()), " ", shape_str(c.shape()));
  const int64_t m = ta ? a.dim(1) : a.dim(0), k = ta ? a.dim(0) : a.dim(1);
  const int64_t kb = tb ? b.dim(1) : b.dim(0), n = tb ? b.dim(0) : b.dim(1);
  LS_CHECK(k == kb && c.dim(0) == m && c.dim(1) == n, "gemm: op(A) ", m, "x", k, ", op(B) ", kb, "x", n, ", C ",
           shape_str(c.shape()));
  dispatch(a, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::gemm(be, ta, tb, m, n, k, T(alpha), a.data<T>(), std::max<int64_t>(1, a.dim(1)), b.data<T>(),
                  std::max<int64_t>(1, b.dim(1)), T(beta), c.data<T>(), std::max<int64_t>(1, n));
  });
}
void bias_add(const Tensor& y, const Tensor& b) {
  same(y, b, "bias_add");
  LS_CHECK(cols_of(y) == b.numel(), "bias_add: ", shape_str(y.shape()), " + ", shape_str(b.shape()));
  dispatch(y, [&](auto t, auto be) { using T = decltype(t); kernels::bias_add(be, y.data<T>(), b.data<T>(), rows_of(y), cols_of(y)); });
}
void bias_grad(const Tensor& dy, const Tensor& db, double beta) {
  same(dy, db, "bias_grad");
  LS_CHECK(cols_of(dy) == db.numel(), "bias_grad: ", shape_str(dy.shape()), " -> ", shape_str(db.shape()));
  dispatch(dy, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::bias_grad(be, dy.data<T>(), db.data<T>(), rows_of(dy), cols_of(dy), T(beta));
  });
}

// ---- activations ---------------------------------------------------------------------------------
void activation_forward(Activation act, double alpha, const Tensor& x, const Tensor& y) {
  same_numel(x, y, "activation_forward");
  if (act == Activation::Softmax) LS_CHECK(x.rank() >= 2, "softmax needs a batch and a feature axis, got ", shape_str(x.shape()));
  dispatch(x, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::activation_forward(be, act, T(alpha), x.data<T>(), y.data<T>(), rows_of(x), cols_of(x));
  });
}
bool activation_backward_needs_x(Activation act, double alpha) {
  switch (act) {
    case Activation::Softplus:
    case Activation::Softsign:
    case Activation::Swish:
      return true;
    case Activation::LeakyRelu:
    case Activation::Elu:
      return alpha < 0;  // a negative slope or alpha makes y > 0 for some x < 0
    default:
      return false;
  }
}
void activation_backward(Activation act, double alpha, const Tensor& x, const Tensor& y, const Tensor& dy,
                         const Tensor& dx) {
  same_numel(dy, dx, "activation_backward");
  const bool needs_x = activation_backward_needs_x(act, alpha);
  // ReLU, leaky ReLU and ELU (slope/alpha >= 0) and SELU keep the sign: y > 0 exactly where x > 0, so their
  // kernels' test on x reads y instead, and the layers may overwrite x with y (one buffer, one read less).
  const bool sign_of_y = !needs_x && (act == Activation::Relu || act == Activation::LeakyRelu ||
                                      act == Activation::Elu || act == Activation::Selu);
  const bool needs_y = sign_of_y || act == Activation::Sigmoid || act == Activation::Tanh ||
                       act == Activation::Softmax || act == Activation::Elu || act == Activation::Selu;
  if (needs_x) same_numel(x, dy, "activation_backward");
  if (needs_y) same_numel(y, dy, "activation_backward");
  const Tensor& sign = sign_of_y ? y : x;
  dispatch(dy, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::activation_backward(be, act, T(alpha), opt<T>(sign), opt<T>(y), dy.data<T>(), dx.data<T>(),
                                 rows_of(dy), cols_of(dy));
  });
}

static int64_t broadcast_numel(const Broadcast& m) {
  int64_t n = 1;
  for (int d = 0; d < m.nd; ++d) n *= m.dims[d];
  return n;
}
void prelu_forward(const Tensor& x, const Tensor& alpha, const Broadcast& map, const Tensor& y) {
  same_numel(x, y, "prelu_forward");
  same(x, alpha, "prelu_forward");
  const int64_t per = broadcast_numel(map);
  LS_CHECK(per > 0 && x.numel() % per == 0, "prelu: input ", shape_str(x.shape()), " vs per-sample ", per);
  dispatch(x, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::prelu_forward(be, x.data<T>(), alpha.data<T>(), map, y.data<T>(), x.numel() / per);
  });
}
void prelu_backward(const Tensor& x, const Tensor& alpha, const Broadcast& map, const Tensor& dy, const Tensor& dx,
                    const Tensor& dalpha) {
  same_numel(x, dy, "prelu_backward");
  same_numel(x, dx, "prelu_backward");
  same_numel(alpha, dalpha, "prelu_backward");
  const int64_t per = broadcast_numel(map);
  dispatch(x, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::prelu_backward(be, x.data<T>(), alpha.data<T>(), map, dy.data<T>(), dx.data<T>(), dalpha.data<T>(),
                            x.numel() / per);
  });
}
void rrelu_forward_train(const Tensor& x, double lower, double upper, const rng::Stream& s, const Tensor& slopes,
                         const Tensor& y, int64_t first) {
  same_numel(x, y, "rrelu_forward_train");
  same_numel(x, slopes, "rrelu_forward_train");
  dispatch(x, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::rrelu_forward_train(be, x.data<T>(), T(lower), T(upper), s, first, slopes.data<T>(), y.data<T>(), x.numel());
  });
}
void rrelu_backward(const Tensor& x, const Tensor& slopes, const Tensor& dy, const Tensor& dx) {
  same_numel(x, slopes, "rrelu_backward");
  same_numel(x, dy, "rrelu_backward");
  same_numel(x, dx, "rrelu_backward");
  dispatch(x, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::rrelu_backward(be, x.data<T>(), slopes.data<T>(), dy.data<T>(), dx.data<T>(), x.numel());
  });
}

// ---- dropout -------------------------------------------------------------------------------------
void dropout_forward(const Tensor& x, double rate, const rng::Stream& s, const Tensor& mask, const Tensor& y,
                     int64_t first) {
  same_numel(x, y, "dropout_forward");
  same_numel(x, mask, "dropout_forward");
  LS_CHECK(rate >= 0 && rate < 1, "dropout rate ", rate);
  dispatch(x, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::dropout_forward(be, x.data<T>(), T(rate), s, first, mask.data<T>(), y.data<T>(), x.numel());
  });
}
void alpha_dropout_forward(const Tensor& x, double rate, const rng::Stream& s, const Tensor& mask, const Tensor& y,
                           int64_t first) {
  same_numel(x, y, "alpha_dropout_forward");
  same_numel(x, mask, "alpha_dropout_forward");
  LS_CHECK(rate > 0 && rate < 1, "alpha dropout rate ", rate);
  dispatch(x, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::alpha_dropout_forward(be, x.data<T>(), T(rate), s, first, mask.data<T>(), y.data<T>(), x.numel());
  });
}

// ---- batch normalization -------------------------------------------------------------------------
FeatureView feature_view(const Shape& shape, int axis) {
  const int r = static_cast<int>(shape.size());
  const int a = axis < 0 ? axis + r : axis;
  LS_CHECK(a >= 0 && a < r, "feature axis ", axis, " out of range for ", shape_str(shape));
  FeatureView v;
  for (int i = 0; i < a; ++i) v.outer *= shape[i];
  v.channels = shape[a];
  for (int i = a + 1; i < r; ++i) v.inner *= shape[i];
  return v;
}
static void check_stats(const Tensor& stats, const FeatureView& v, const Tensor& x, const char* op) {
  LS_CHECK(stats.dtype() == DType::F64 && stats.numel() == 2 * v.channels && stats.device() == x.device(), op,
           ": statistics must be float64 [2C] on the input's device");
}
// A following ReLU's output (undefined: none), whose backward the normalisation's does.
static void check_gate(const Tensor& relu_out, const Tensor& dy, const char* op) {
  if (!relu_out.defined()) return;
  same(relu_out, dy, op);
  same_numel(relu_out, dy, op);
}
void bn_sums(const Tensor& x, const FeatureView& v, const Tensor& stats) {
  check_stats(stats, v, x, "bn_sums");
  LS_CHECK(x.numel() == v.outer * v.channels * v.inner, "bn_sums: view does not match ", shape_str(x.shape()));
  dispatch(x, [&](auto t, auto be) { using T = decltype(t); kernels::bn_sums(be, x.data<T>(), v, stats.data<double>()); });
}
void bn_moments(const Tensor& stats, double count, const Tensor& mean, const Tensor& var) {
  same_numel(mean, var, "bn_moments");
  LS_CHECK(stats.numel() == 2 * mean.numel(), "bn_moments: stats of ", stats.numel(), " for ", mean.numel(), " channels");
  dispatch(mean, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::bn_moments(be, stats.data<double>(), count, mean.data<T>(), var.data<T>(), mean.numel());
  });
}
void bn_apply(const Tensor& x, const FeatureView& v, const Tensor& mean, const Tensor& var, const Tensor& gamma,
              const Tensor& beta, double eps, const Tensor& y, bool relu) {
  same_numel(x, y, "bn_apply");
  same(x, mean, "bn_apply");
  LS_CHECK(mean.numel() == v.channels && var.numel() == v.channels, "bn_apply: ", v.channels, " channels");
  dispatch(x, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::bn_apply(be, x.data<T>(), v, mean.data<T>(), var.data<T>(), opt<T>(gamma), opt<T>(beta), T(eps), y.data<T>(),
                      relu);
  });
}
void bn_update_moving(const Tensor& moving, const Tensor& batch, double momentum) {
  same_numel(moving, batch, "bn_update_moving");
  dispatch(moving, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::bn_update_moving(be, moving.data<T>(), batch.data<T>(), moving.numel(), T(momentum));
  });
}
void bn_backward_sums(const Tensor& dy, const Tensor& x, const FeatureView& v, const Tensor& mean, const Tensor& var,
                      double eps, const Tensor& sums, const Tensor& relu_out) {
  same_numel(dy, x, "bn_backward_sums");
  check_stats(sums, v, x, "bn_backward_sums");
  check_gate(relu_out, dy, "bn_backward_sums");
  dispatch(x, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::bn_backward_sums(be, dy.data<T>(), x.data<T>(), v, mean.data<T>(), var.data<T>(), T(eps), sums.data<double>(),
                              opt<T>(relu_out));
  });
}
void bn_backward_apply(const Tensor& dy, const Tensor& x, const FeatureView& v, const Tensor& mean, const Tensor& var,
                       const Tensor& gamma, double eps, const Tensor& sums, double count, const Tensor& dx,
                       const Tensor& relu_out) {
  same_numel(dy, x, "bn_backward_apply");
  check_gate(relu_out, dy, "bn_backward_apply");
  same_numel(dy, dx, "bn_backward_apply");
  check_stats(sums, v, x, "bn_backward_apply");
  dispatch(x, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::bn_backward_apply(be, dy.data<T>(), x.data<T>(), v, mean.data<T>(), var.data<T>(), opt<T>(gamma), T(eps),
                               sums.data<double>(), count, dx.data<T>(), opt<T>(relu_out));
  });
}
void bn_backward_inference(const Tensor& dy, const FeatureView& v, const Tensor& var, const Tensor& gamma, double eps,
                           const Tensor& dx, const Tensor& relu_out) {
  same_numel(dy, dx, "bn_backward_inference");
  check_gate(relu_out, dy, "bn_backward_inference");
  dispatch(dy, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::bn_backward_inference(be, dy.data<T>(), v, var.data<T>(), opt<T>(gamma), T(eps), dx.data<T>(),
                                   opt<T>(relu_out));
  });
}
void bn_param_grads(const Tensor& sums, const Tensor& dgamma, const Tensor& dbeta) {
  const Tensor& any = dgamma.defined() ? dgamma : dbeta;
  if (!any.defined()) return;
  dispatch(any, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::bn_param_grads(be, sums.data<double>(), sums.numel() / 2, opt<T>(dgamma), opt<T>(dbeta));
  });
}

void dense_normalized_grads(const Tensor& xhat, const Tensor& dz, const Tensor& w, const Tensor& s,
                            const Tensor& gamma, const Tensor& beta, const Tensor& dw, const Tensor& sums,
                            double descent_rate) {
  same(w, dw, "dense_normalized_grads");
  same(w, xhat, "dense_normalized_grads");
  same(w, dz, "dense_normalized_grads");
  same(w, s, "dense_normalized_grads");
  LS_CHECK(w.rank() == 2 && dw.shape() == w.shape(), "dense_normalized_grads: kernel ", shape_str(w.shape()),
           " vs gradient ", shape_str(dw.shape()));
  const int64_t in = w.dim(0), out = w.dim(1);
  LS_CHECK(s.numel() == out, "dense_normalized_grads: ", s.numel(), " column sums for ", out, " units");
  LS_CHECK(xhat.rank() == 2 && xhat.dim(1) == in && dz.rank() == 2 && dz.dim(1) == out && dz.dim(0) == xhat.dim(0),
           "dense_normalized_grads: x̂ ", shape_str(xhat.shape()), " and dz ", shape_str(dz.shape()), " for kernel ",
           shape_str(w.shape()));
  LS_CHECK(!gamma.defined() || gamma.numel() == in, "dense_normalized_grads: gamma has ", gamma.numel(),
           " entries for ", in, " features");
  LS_CHECK(!beta.defined() || beta.numel() == in, "dense_normalized_grads: beta has ", beta.numel(),
           " entries for ", in, " features");
  LS_CHECK(sums.dtype() == DType::F64 && sums.numel() == 2 * in && sums.device() == w.device(),
           "dense_normalized_grads: sums must be float64 [", 2 * in, "] on the kernel's device");
  dispatch(w, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::dense_normalized_grads(be, xhat.data<T>(), dz.data<T>(), xhat.dim(0), w.data<T>(), s.data<T>(),
                                    opt<T>(gamma), opt<T>(beta), dw.data<T>(), in, out, sums.data<double>(),
                                    T(descent_rate));
  });
}

// ---- losses --------------------------------------------------------------------------------------
namespace {
void check_loss(const Tensor& pred, const Tensor& target, const Tensor& loss, const Tensor& grad, bool sparse,
                const char* op) {
  same(pred, target, op);
  same(pred, loss, op);
  LS_CHECK(pred.rank() >= 1, op, ": predictions need a batch axis");
  const int64_t rows = rows_of(pred);
  LS_CHECK(loss.numel() == rows, op, ": loss has ", loss.numel(), " entries for ", rows, " samples");
  if (sparse)
    LS_CHECK(target.numel() == rows, op, ": ", target.numel(), " labels for ", rows, " samples");
  else
    LS_CHECK(target.numel() == pred.numel(), op, ": targets ", shape_str(target.shape()), " vs predictions ",
             shape_str(pred.shape()));
  if (grad.defined()) same_numel(pred, grad, op);
}
void check_labels(const Tensor& y, int64_t k, const char* op) {
  if (y.device() != Device::CPU) return;  // device kernels validate by flagging
  std::vector<double> v = y.to_double_vector();
  for (size_t i = 0; i < v.size(); ++i)
    LS_REQUIRE(v[i] >= 0 && v[i] < double(k) && v[i] == std::floor(v[i]), DataError, op, ": label ", v[i],
               " of sample ", i, " is not an integer class in [0, ", k, ")");
}
template <typename K>
void run_loss(K kernel, const Tensor& p, const Tensor& t, const Tensor& loss, const Tensor& g, double s) {
  dispatch(p, [&](auto tag, auto be) {
    using T = decltype(tag);
    kernel(be, p.data<T>(), t.data<T>(), loss.data<T>(), opt<T>(g), rows_of(p), cols_of(p), T(s));
  });
}
}  // namespace

#define LS_LOSS_KERNEL(name) [](auto be, auto... a) { kernels::name(be, a...); }
void softmax_xent_sparse(const Tensor& z, const Tensor& y, const Tensor& loss, const Tensor& dz, double s) {
  check_loss(z, y, loss, dz, true, "sparse_categorical_crossentropy");
  check_labels(y, cols_of(z), "sparse_categorical_crossentropy");
  run_loss(LS_LOSS_KERNEL(softmax_xent_sparse), z, y, loss, dz, s);
}
void softmax_xent_dense(const Tensor& z, const Tensor& t, const Tensor& loss, const Tensor& dz, double s) {
  check_loss(z, t, loss, dz, false, "categorical_crossentropy");
  run_loss(LS_LOSS_KERNEL(softmax_xent_dense), z, t, loss, dz, s);
}
void sigmoid_xent(const Tensor& z, const Tensor& t, const Tensor& loss, const Tensor& dz, double s) {
  check_loss(z, t, loss, dz, false, "binary_crossentropy");
  run_loss(LS_LOSS_KERNEL(sigmoid_xent), z, t, loss, dz, s);
}
void sparse_xent_probs(const Tensor& p, const Tensor& y, const Tensor& loss, const Tensor& dp, double s) {
  check_loss(p, y, loss, dp, true, "sparse_categorical_crossentropy");
  check_labels(y, cols_of(p), "sparse_categorical_crossentropy");
  run_loss(LS_LOSS_KERNEL(sparse_xent_probs), p, y, loss, dp, s);
}
void categorical_xent_probs(const Tensor& p, const Tensor& t, const Tensor& loss, const Tensor& dp, double s) {
  check_loss(p, t, loss, dp, false, "categorical_crossentropy");
  run_loss(LS_LOSS_KERNEL(categorical_xent_probs), p, t, loss, dp, s);
}
void binary_xent_probs(const Tensor& p, const Tensor& t, const Tensor& loss, const Tensor& dp, double s) {
  check_loss(p, t, loss, dp, false, "binary_crossentropy");
  run_loss(LS_LOSS_KERNEL(binary_xent_probs), p, t, loss, dp, s);
}
void mse(const Tensor& p, const Tensor& t, const Tensor& loss, const Tensor& dp, double s) {
  check_loss(p, t, loss, dp, false, "mean_squared_error");
  run_loss(LS_LOSS_KERNEL(mse), p, t, loss, dp, s);
}
#undef LS_LOSS_KERNEL
void accuracy(AccuracyKind kind, const Tensor& pred, const Tensor& y, const Tensor& out) {
  same(pred, y, "accuracy");
  same(pred, out, "accuracy");
  LS_CHECK(out.numel() == rows_of(pred), "accuracy: output of ", out.numel(), " for ", rows_of(pred), " samples");
  dispatch(pred, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::accuracy(be, kind, pred.data<T>(), y.data<T>(), out.data<T>(), rows_of(pred), cols_of(pred));
  });
}

// ---- regularization and constraints --------------------------------------------------------------
double l1l2_penalty(const Tensor& w, double l1, double l2) {
  return dispatch(w, [&](auto t, auto be) { using T = decltype(t); return kernels::l1l2_penalty(be, w.data<T>(), w.numel(), l1, l2); });
}
void l1l2_grad(const Tensor& w, const Tensor& g, double l1, double l2) {
  same_numel(w, g, "l1l2_grad");
  dispatch(w, [&](auto t, auto be) { using T = decltype(t); kernels::l1l2_grad(be, w.data<T>(), g.data<T>(), w.numel(), T(l1), T(l2)); });
}
void max_norm(const Tensor& w, const FeatureView& v, double max_value) {
  LS_CHECK(w.numel() == v.outer * v.channels * v.inner, "max_norm: view does not match ", shape_str(w.shape()));
  dispatch(w, [&](auto t, auto be) { using T = decltype(t); kernels::max_norm(be, w.data<T>(), v, T(max_value)); });
}

// ---- optimizer updates ---------------------------------------------------------------------------
void sgd_update(const Tensor& w, const Tensor& g, double lr) {
  same_numel(w, g, "sgd_update");
  dispatch(w, [&](auto t, auto be) { using T = decltype(t); kernels::sgd_update(be, w.data<T>(), g.data<T>(), w.numel(), T(lr)); });
}
void momentum_update(const Tensor& w, const Tensor& g, const Tensor& v, double lr, double mu, bool nesterov) {
  same_numel(w, g, "momentum_update");
  same_numel(w, v, "momentum_update");
  dispatch(w, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::momentum_update(be, w.data<T>(), g.data<T>(), v.data<T>(), w.numel(), T(lr), T(mu), nesterov);
  });
}
void adagrad_update(const Tensor& w, const Tensor& g, const Tensor& acc, double lr, double eps) {
  same_numel(w, g, "adagrad_update");
  same_numel(w, acc, "adagrad_update");
  dispatch(w, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::adagrad_update(be, w.data<T>(), g.data<T>(), acc.data<T>(), w.numel(), T(lr), T(eps));
  });
}
void rmsprop_update(const Tensor& w, const Tensor& g, const Tensor& ms, const Tensor& mom, const Tensor& mg, double lr,
                    double rho, double momentum, double eps) {
  same_numel(w, g, "rmsprop_update");
  same_numel(w, ms, "rmsprop_update");
  if (momentum > 0) same_numel(w, mom, "rmsprop_update");
  if (mg.defined()) same_numel(w, mg, "rmsprop_update");
  dispatch(w, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::rmsprop_update(be, w.data<T>(), g.data<T>(), ms.data<T>(), opt<T>(mom), opt<T>(mg), w.numel(), T(lr),
                            T(rho), T(momentum), T(eps));
  });
}
void adam_update(const Tensor& w, const Tensor& g, const Tensor& m, const Tensor& v, const Tensor& vhat, double alpha_t,
                 double b1, double b2, double eps) {
  same_numel(w, g, "adam_update");
  same_numel(w, m, "adam_update");
  same_numel(w, v, "adam_update");
  if (vhat.defined()) same_numel(w, vhat, "adam_update");
  dispatch(w, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::adam_update(be, w.data<T>(), g.data<T>(), m.data<T>(), v.data<T>(), opt<T>(vhat), w.numel(), T(alpha_t),
                         T(b1), T(b2), T(eps));
  });
}
void adamax_update(const Tensor& w, const Tensor& g, const Tensor& m, const Tensor& u, double lr_t, double b1, double b2,
                   double eps) {
  same_numel(w, g, "adamax_update");
  same_numel(w, m, "adamax_update");
  same_numel(w, u, "adamax_update");
  dispatch(w, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::adamax_update(be, w.data<T>(), g.data<T>(), m.data<T>(), u.data<T>(), w.numel(), T(lr_t), T(b1), T(b2), T(eps));
  });
}
void nadam_update(const Tensor& w, const Tensor& g, const Tensor& m, const Tensor& v, const NadamCoeffs& c) {
  same_numel(w, g, "nadam_update");
  same_numel(w, m, "nadam_update");
  same_numel(w, v, "nadam_update");
  dispatch(w, [&](auto t, auto be) {
    using T = decltype(t);
    kernels::nadam_update(be, w.data<T>(), g.data<T>(), m.data<T>(), v.data<T>(), w.numel(), c);
  });
}

// ---- random fills --------------------------------------------------------------------------------
void random_uniform(const Tensor& x, double lo, double hi, const rng::Stream& s) {
  dispatch(x, [&](auto t, auto be) { using T = decltype(t); kernels::random_uniform(be, x.data<T>(), x.numel(), lo, hi, s); });
}
void random_normal(const Tensor& x, double mean, double sd, const rng::Stream& s) {
  dispatch(x, [&](auto t, auto be) { using T = decltype(t); kernels::random_normal(be, x.data<T>(), x.numel(), mean, sd, s); });
}
void truncated_normal(const Tensor& x, double mean, double sd, const rng::Stream& s) {
  dispatch(x, [&](auto t, auto be) { using T = decltype(t); kernels::truncated_normal(be, x.data<T>(), x.numel(), mean, sd, s); });
}

}  // namespace lockstep::ops
