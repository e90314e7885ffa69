// oneDNN's convolutions on lockstep's layouts (see conv_onednn.h). Debian 12 ships oneDNN 2.6, whose
// primitive descriptors are made from an op descriptor (convolution_forward::desc, then ::primitive_desc);
// Debian 13 ships 3.x, which makes them directly from the engine and the memory descriptors. The two differ
// only in make_*_pd below (#if DNNL_VERSION_MAJOR >= 3). The 2.x branch is what the tests and benchmarks run
// (Debian 12); the 3.x branch follows oneDNN 3's documented constructors and has been compiled against the
// oneDNN 3.7 and 3.12 headers, but not run.
#include "core/kernels/conv_onednn.h"

#ifdef LOCKSTEP_HAVE_ONEDNN

#include <omp.h>
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>

namespace lockstep::kernels::onednn {

using ops::Window2d;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

enum class Op { Forward, BackwardData, BackwardFilter };

// oneDNN's right padding for one axis: the smallest p >= 0 with (in + before + p - extent) / stride + 1 == out
// (floor), or -1 when there is none (a geometry TensorFlow's rules never produce).
int64_t pad_after(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t dil, int64_t before) {
  const int64_t extent = (k - 1) * dil + 1;
  const int64_t p = std::max<int64_t>((out - 1) * stride + extent - in - before, 0);
  const int64_t span = in + before + p - extent;
  return span >= 0 && span / stride + 1 == out ? p : -1;
}

struct Entry {
  dnnl::primitive conv;
  dnnl::memory a, b, c;        // the op's operands in call order, on the caller's pointers (set per call)
  int arg_a = 0, arg_b = 0, arg_c = 0;
  dnnl::memory blocked;        // the kernel (or its gradient) in oneDNN's layout, when that is not Keras's
  dnnl::reorder reorder;       // Keras's kernel -> blocked (forward, backward data); blocked -> dw (filter)
  bool reordered = false;
  dnnl::memory::desc scratch_md;
  std::string impl;
};

// (op, weights, the calling thread's OpenMP thread count, the geometry): oneDNN plans a primitive's work for
// the thread count at its creation and runs it on that many threads, so a new count needs new primitives.
using Key = std::array<int64_t, 19>;

// Per thread: an engine, a stream, the primitives made so far, oneDNN's scratchpad.
struct State {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  std::map<Key, std::unique_ptr<Entry>> cache;
  std::unique_ptr<char, decltype(&std::free)> scratch{nullptr, &std::free};
  size_t scratch_bytes = 0;
  char* scratchpad(size_t n) {
    if (n > scratch_bytes) {
      const size_t bytes = (n + 63) / 64 * 64;
      scratch.reset(static_cast<char*>(std::aligned_alloc(64, bytes)));
      if (!scratch) throw std::bad_alloc();
      scratch_bytes = bytes;
    }
    return scratch.get();
  }
};
State& state() {
  static thread_local State s;
  return s;
}

struct Descs {
  dnnl::memory::desc src, wts_user, wts, dst;
  dnnl::memory::dims strides, dil, pad_l, pad_r;
};
Descs descs_of(const Window2d& g, Weights wl) {
  Descs d;
  d.src = dnnl::memory::desc({g.batch, g.in_c, g.in_h, g.in_w}, dt::f32, tag::nhwc);
  d.dst = dnnl::memory::desc({g.batch, g.out_c, g.out_h, g.out_w}, dt::f32, tag::nhwc);
  // Keras's [k_h, k_w, in_c/groups, out_c]: oneDNN's hwio, or hwigo (out_c = groups x out_c/groups) grouped.
  const dnnl::memory::dims wdims = g.groups == 1
                                       ? dnnl::memory::dims{g.out_c, g.in_c, g.k_h, g.k_w}
                                       : dnnl::memory::dims{g.groups, g.out_c / g.groups, g.in_c / g.groups, g.k_h, g.k_w};
  d.wts_user = dnnl::memory::desc(wdims, dt::f32, g.groups == 1 ? tag::hwio : tag::hwigo);
  d.wts = wl == Weights::Plain ? d.wts_user : dnnl::memory::desc(wdims, dt::f32, tag::any);
  d.strides = {g.stride_h, g.stride_w};
  d.dil = {g.dil_h - 1, g.dil_w - 1};  // oneDNN counts the gaps: 0 is an undilated kernel
  d.pad_l = {g.pad_top, g.pad_left};
  d.pad_r = {pad_after(g.in_h, g.out_h, g.k_h, g.stride_h, g.dil_h, g.pad_top),
             pad_after(g.in_w, g.out_w, g.k_w, g.stride_w, g.dil_w, g.pad_left)};
  return d;
}

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// ---- the only code that differs between oneDNN 2.x and 3.x ----------------------------------------------
dnnl::convolution_forward::primitive_desc make_fwd_pd(const dnnl::engine& eng, const Descs& d) {
#if DNNL_VERSION_MAJOR >= 3
  return dnnl::convolution_forward::primitive_desc(eng, dnnl::prop_kind::forward_training,
                                                   dnnl::algorithm::convolution_direct, d.src, d.wts, d.dst,
                                                   d.strides, d.dil, d.pad_l, d.pad_r, user_scratchpad());
#else
  const dnnl::convolution_forward::desc od(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                           d.src, d.wts, d.dst, d.strides, d.dil, d.pad_l, d.pad_r);
  return dnnl::convolution_forward::primitive_desc(od, user_scratchpad(), eng);
#endif
}
dnnl::convolution_backward_data::primitive_desc make_bwd_data_pd(
    const dnnl::engine& eng, const Descs& d, const dnnl::convolution_forward::primitive_desc& hint) {
#if DNNL_VERSION_MAJOR >= 3
  return dnnl::convolution_backward_data::primitive_desc(eng, dnnl::algorithm::convolution_direct, d.src, d.wts,
                                                         d.dst, d.strides, d.dil, d.pad_l, d.pad_r, hint,
                                                         user_scratchpad());
#else
  const dnnl::convolution_backward_data::desc od(dnnl::algorithm::convolution_direct, d.src, d.wts, d.dst,
                                                 d.strides, d.dil, d.pad_l, d.pad_r);
  return dnnl::convolution_backward_data::primitive_desc(od, user_scratchpad(), eng, hint);
#endif
}
dnnl::convolution_backward_weights::primitive_desc make_bwd_filter_pd(
    const dnnl::engine& eng, const Descs& d, const dnnl::convolution_forward::primitive_desc& hint) {
#if DNNL_VERSION_MAJOR >= 3
  return dnnl::convolution_backward_weights::primitive_desc(eng, dnnl::algorithm::convolution_direct, d.src, d.wts,
                                                            d.dst, d.strides, d.dil, d.pad_l, d.pad_r, hint,
                                                            user_scratchpad());
#else
  const dnnl::convolution_backward_weights::desc od(dnnl::algorithm::convolution_direct, d.src, d.wts, d.dst,
                                                    d.strides, d.dil, d.pad_l, d.pad_r);
  return dnnl::convolution_backward_weights::primitive_desc(od, user_scratchpad(), eng, hint);
#endif
}
// ----------------------------------------------------------------------------------------------------------

std::unique_ptr<Entry> make_entry(State& s, Op op, const Window2d& g, Weights wl) {
  const Descs d = descs_of(g, wl);
  const auto fwd = make_fwd_pd(s.eng, d);
  auto e = std::make_unique<Entry>();
  dnnl::memory::desc wts;  // the kernel's layout in the chosen implementation
  auto user = [&](const dnnl::memory::desc& md) { return dnnl::memory(md, s.eng, DNNL_MEMORY_NONE); };
  if (op == Op::Forward) {
    e->conv = dnnl::convolution_forward(fwd);
    wts = fwd.weights_desc();
    e->scratch_md = fwd.scratchpad_desc();
    e->impl = fwd.impl_info_str();
    e->a = user(d.src), e->arg_a = DNNL_ARG_SRC;
    e->c = user(d.dst), e->arg_c = DNNL_ARG_DST;
    e->arg_b = DNNL_ARG_WEIGHTS;
  } else if (op == Op::BackwardData) {
    const auto pd = make_bwd_data_pd(s.eng, d, fwd);
    e->conv = dnnl::convolution_backward_data(pd);
    wts = pd.weights_desc();
    e->scratch_md = pd.scratchpad_desc();
    e->impl = pd.impl_info_str();
    e->a = user(d.dst), e->arg_a = DNNL_ARG_DIFF_DST;
    e->c = user(d.src), e->arg_c = DNNL_ARG_DIFF_SRC;
    e->arg_b = DNNL_ARG_WEIGHTS;
  } else {
    const auto pd = make_bwd_filter_pd(s.eng, d, fwd);
    e->conv = dnnl::convolution_backward_weights(pd);
    wts = pd.diff_weights_desc();
    e->scratch_md = pd.scratchpad_desc();
    e->impl = pd.impl_info_str();
    e->a = user(d.src), e->arg_a = DNNL_ARG_SRC;
    e->c = user(d.dst), e->arg_c = DNNL_ARG_DIFF_DST;
    e->arg_b = DNNL_ARG_DIFF_WEIGHTS;
  }
  e->b = user(d.wts_user);
  if (wts != d.wts_user) {
    e->blocked = dnnl::memory(wts, s.eng);
    e->reorder = op == Op::BackwardFilter ? dnnl::reorder(e->blocked, e->b) : dnnl::reorder(e->b, e->blocked);
    e->reordered = true;
  }
  return e;
}

Entry* entry(Op op, const Window2d& g, Weights wl) {
  State& s = state();
  const Key key{int64_t(op), int64_t(wl), int64_t(omp_get_max_threads()), g.batch, g.in_h, g.in_w, g.in_c, g.out_h, g.out_w, g.out_c, g.k_h,
                g.k_w, g.stride_h, g.stride_w, g.dil_h, g.dil_w, g.pad_top, g.pad_left, g.groups};
  auto it = s.cache.find(key);
  if (it == s.cache.end()) {
    // A training run meets a few batch sizes (the last partial batch, evaluation); a bound keeps a program that
    // varies the batch freely from collecting primitives without end.
    if (s.cache.size() >= 256) s.cache.clear();
    it = s.cache.emplace(key, make_entry(s, op, g, wl)).first;
  }
  return it->second.get();
}

// a, b, c: the operands in the order of Entry (b is the kernel or its gradient, in Keras's layout).
void run(Op op, const Window2d& g, Weights wl, const float* a, const float* b, const float* c) {
  State& s = state();
  Entry& e = *entry(op, g, wl);
  e.a.set_data_handle(const_cast<float*>(a));
  e.b.set_data_handle(const_cast<float*>(b));
  e.c.set_data_handle(const_cast<float*>(c));
  std::unordered_map<int, dnnl::memory> args{{e.arg_a, e.a}, {e.arg_b, e.reordered ? e.blocked : e.b}, {e.arg_c, e.c}};
  const size_t scratch = e.scratch_md.get_size();
  if (scratch > 0) args.emplace(DNNL_ARG_SCRATCHPAD, dnnl::memory(e.scratch_md, s.eng, s.scratchpad(scratch)));
  if (e.reordered && op != Op::BackwardFilter) e.reorder.execute(s.strm, e.b, e.blocked);
  e.conv.execute(s.strm, args);
  if (e.reordered && op == Op::BackwardFilter) e.reorder.execute(s.strm, e.blocked, e.b);
  s.strm.wait();
}

}  // namespace

bool compiled() { return true; }
const char* version() {
  static const std::string v = [] {
    const dnnl_version_t* ver = dnnl_version();
    return std::to_string(ver->major) + "." + std::to_string(ver->minor) + "." + std::to_string(ver->patch);
  }();
  return v.c_str();
}

bool supports(const Window2d& g) {
  if (g.batch <= 0 || g.out_h <= 0 || g.out_w <= 0 || g.groups < 1) return false;
  return pad_after(g.in_h, g.out_h, g.k_h, g.stride_h, g.dil_h, g.pad_top) >= 0 &&
         pad_after(g.in_w, g.out_w, g.k_w, g.stride_w, g.dil_w, g.pad_left) >= 0;
}

void conv2d_forward(const float* x, const float* w, const Window2d& g, float* y, Weights wl) {
  run(Op::Forward, g, wl, x, w, y);
}
void conv2d_backward_data(const float* dy, const float* w, const Window2d& g, float* dx, Weights wl) {
  run(Op::BackwardData, g, wl, dy, w, dx);
}
void conv2d_backward_filter(const float* x, const float* dy, const Window2d& g, float* dw, Weights wl) {
  run(Op::BackwardFilter, g, wl, x, dw, dy);
}

const char* implementation(const char* op, const Window2d& g, Weights wl) {
  const std::string o = op;
  const Op k = o == "fwd" ? Op::Forward : o == "bwd_data" ? Op::BackwardData : Op::BackwardFilter;
  return entry(k, g, wl)->impl.c_str();
}

}  // namespace lockstep::kernels::onednn

#else  // no oneDNN in this build

#include <stdexcept>

namespace lockstep::kernels::onednn {
namespace {
[[noreturn]] void absent() { throw std::logic_error("lockstep was built without oneDNN (LOCKSTEP_WITH_ONEDNN)"); }
}  // namespace
bool compiled() { return false; }
const char* version() { return ""; }
bool supports(const ops::Window2d&) { return false; }
void conv2d_forward(const float*, const float*, const ops::Window2d&, float*, Weights) { absent(); }
void conv2d_backward_data(const float*, const float*, const ops::Window2d&, float*, Weights) { absent(); }
void conv2d_backward_filter(const float*, const float*, const ops::Window2d&, float*, Weights) { absent(); }
const char* implementation(const char*, const ops::Window2d&, Weights) { return ""; }
}  // namespace lockstep::kernels::onednn

#endif
