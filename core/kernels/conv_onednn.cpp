// oneDNN's convolutions on lockstep's layouts (see conv_onednn.h). Debian 12 ships oneDNN 2.6, whose
// primitive descriptors are made from an op descriptor (convolution_forward::desc, then ::primitive_desc);
// Debian 13 ships 3.x (3.7), which makes them directly from the engine and the memory descriptors. The two
// differ only in make_*_pd below (#if DNNL_VERSION_MAJOR >= 3). The tests and benchmarks run the 2.x branch
// (Debian 12); the 3.x branch has been compiled and run against oneDNN 3.2, 3.7 and 3.13 (PyPI's builds), every
// op and way on 12 geometries within the tests' bound. oneDNN 3.x has no Winograd kernels for x86 CPUs: there
// Way::Winograd makes no primitive and runs as Blocked (entry() below).
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

// One operand of a primitive: the caller's memory (user, handle set per call) and, when the primitive wants
// another layout, its copy in that layout (inner, in the per-thread workspace) with the reorder between them:
// user -> inner before the primitive for an input, inner -> user after it for an output.
struct Operand {
  dnnl::memory user, inner;
  dnnl::reorder move;
  int arg = 0;
  bool output = false, reordered = false;
  size_t offset = 0;  // inner's place in the workspace
};

struct Entry {
  dnnl::primitive conv;
  std::array<Operand, 3> opd;  // in call order: (x, w, y), (dy, w, dx), (x, dw, dy)
  dnnl::memory::desc scratch_md;
  size_t scratch_offset = 0, workspace = 0;  // oneDNN's scratchpad, then the inner copies
  std::string impl;
};

// (op, way, the calling thread's OpenMP thread count, the geometry): oneDNN plans a primitive's work for
// the thread count at its creation and runs it on that many threads, so a new count needs new primitives.
using Key = std::array<int64_t, 19>;

// Per thread: an engine, a stream, the primitives made so far, one workspace (oneDNN's scratchpad and the
// operands' copies in oneDNN's layouts).
struct State {
  dnnl::engine eng{dnnl::engine::kind::cpu, 0};
  dnnl::stream strm{eng};
  std::map<Key, std::unique_ptr<Entry>> cache;
  std::unique_ptr<char, decltype(&std::free)> work{nullptr, &std::free};
  size_t work_bytes = 0;
  char* workspace(size_t n) {
    if (n > work_bytes) {
      const size_t bytes = (n + 63) / 64 * 64;
      work.reset(static_cast<char*>(std::aligned_alloc(64, bytes)));
      if (!work) throw std::bad_alloc();
      work_bytes = bytes;
    }
    return work.get();
  }
};
State& state() {
  static thread_local State s;
  return s;
}

struct Descs {
  dnnl::memory::desc src_user, src, wts_user, wts, dst_user, dst;
  dnnl::memory::dims strides, dil, pad_l, pad_r;
  dnnl::algorithm alg = dnnl::algorithm::convolution_direct;
};
Descs descs_of(const Window2d& g, Way way) {
  Descs d;
  const dnnl::memory::dims sdims{g.batch, g.in_c, g.in_h, g.in_w}, ddims{g.batch, g.out_c, g.out_h, g.out_w};
  d.src_user = dnnl::memory::desc(sdims, dt::f32, tag::nhwc);
  d.dst_user = dnnl::memory::desc(ddims, dt::f32, tag::nhwc);
  // Keras's [k_h, k_w, in_c/groups, out_c]: oneDNN's hwio, or hwigo (out_c = groups x out_c/groups) grouped.
  const dnnl::memory::dims wdims = g.groups == 1
                                       ? dnnl::memory::dims{g.out_c, g.in_c, g.k_h, g.k_w}
                                       : dnnl::memory::dims{g.groups, g.out_c / g.groups, g.in_c / g.groups, g.k_h, g.k_w};
  d.wts_user = dnnl::memory::desc(wdims, dt::f32, g.groups == 1 ? tag::hwio : tag::hwigo);
  d.wts = way == Way::Plain ? d.wts_user : dnnl::memory::desc(wdims, dt::f32, tag::any);
  // oneDNN's Winograd kernels take only their blocked activation layouts (with nhwc there is no implementation).
  d.src = way == Way::Winograd ? dnnl::memory::desc(sdims, dt::f32, tag::any) : d.src_user;
  d.dst = way == Way::Winograd ? dnnl::memory::desc(ddims, dt::f32, tag::any) : d.dst_user;
  if (way == Way::Winograd) d.alg = dnnl::algorithm::convolution_winograd;
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
  return dnnl::convolution_forward::primitive_desc(eng, dnnl::prop_kind::forward_training, d.alg, d.src, d.wts,
                                                   d.dst, d.strides, d.dil, d.pad_l, d.pad_r, user_scratchpad());
#else
  const dnnl::convolution_forward::desc od(dnnl::prop_kind::forward_training, d.alg, d.src, d.wts, d.dst,
                                           d.strides, d.dil, d.pad_l, d.pad_r);
  return dnnl::convolution_forward::primitive_desc(od, user_scratchpad(), eng);
#endif
}
dnnl::convolution_backward_data::primitive_desc make_bwd_data_pd(
    const dnnl::engine& eng, const Descs& d, const dnnl::convolution_forward::primitive_desc& hint) {
#if DNNL_VERSION_MAJOR >= 3
  return dnnl::convolution_backward_data::primitive_desc(eng, d.alg, d.src, d.wts, d.dst, d.strides, d.dil,
                                                         d.pad_l, d.pad_r, hint, user_scratchpad());
#else
  const dnnl::convolution_backward_data::desc od(d.alg, d.src, d.wts, d.dst, d.strides, d.dil, d.pad_l, d.pad_r);
  return dnnl::convolution_backward_data::primitive_desc(od, user_scratchpad(), eng, hint);
#endif
}
dnnl::convolution_backward_weights::primitive_desc make_bwd_filter_pd(
    const dnnl::engine& eng, const Descs& d, const dnnl::convolution_forward::primitive_desc& hint) {
#if DNNL_VERSION_MAJOR >= 3
  return dnnl::convolution_backward_weights::primitive_desc(eng, d.alg, d.src, d.wts, d.dst, d.strides, d.dil,
                                                            d.pad_l, d.pad_r, hint, user_scratchpad());
#else
  const dnnl::convolution_backward_weights::desc od(d.alg, d.src, d.wts, d.dst, d.strides, d.dil, d.pad_l,
                                                    d.pad_r);
  return dnnl::convolution_backward_weights::primitive_desc(od, user_scratchpad(), eng, hint);
#endif
}
// ----------------------------------------------------------------------------------------------------------

size_t aligned(size_t n) { return (n + 63) / 64 * 64; }

std::unique_ptr<Entry> make_entry(State& s, Op op, const Window2d& g, Way way) {
  const Descs d = descs_of(g, way);
  const auto fwd = make_fwd_pd(s.eng, d);
  auto e = std::make_unique<Entry>();
  // The operands in call order: (the user's layout, the primitive's, its argument, written by the primitive).
  struct Spec {
    dnnl::memory::desc user, inner;
    int arg;
    bool output;
  };
  std::array<Spec, 3> spec;
  if (op == Op::Forward) {
    e->conv = dnnl::convolution_forward(fwd);
    e->scratch_md = fwd.scratchpad_desc();
    e->impl = fwd.impl_info_str();
    spec = {Spec{d.src_user, fwd.src_desc(), DNNL_ARG_SRC, false},
            Spec{d.wts_user, fwd.weights_desc(), DNNL_ARG_WEIGHTS, false},
            Spec{d.dst_user, fwd.dst_desc(), DNNL_ARG_DST, true}};
  } else if (op == Op::BackwardData) {
    const auto pd = make_bwd_data_pd(s.eng, d, fwd);
    e->conv = dnnl::convolution_backward_data(pd);
    e->scratch_md = pd.scratchpad_desc();
    e->impl = pd.impl_info_str();
    spec = {Spec{d.dst_user, pd.diff_dst_desc(), DNNL_ARG_DIFF_DST, false},
            Spec{d.wts_user, pd.weights_desc(), DNNL_ARG_WEIGHTS, false},
            Spec{d.src_user, pd.diff_src_desc(), DNNL_ARG_DIFF_SRC, true}};
  } else {
    const auto pd = make_bwd_filter_pd(s.eng, d, fwd);
    e->conv = dnnl::convolution_backward_weights(pd);
    e->scratch_md = pd.scratchpad_desc();
    e->impl = pd.impl_info_str();
    spec = {Spec{d.src_user, pd.src_desc(), DNNL_ARG_SRC, false},
            Spec{d.wts_user, pd.diff_weights_desc(), DNNL_ARG_DIFF_WEIGHTS, true},
            Spec{d.dst_user, pd.diff_dst_desc(), DNNL_ARG_DIFF_DST, false}};
  }
  size_t at = aligned(e->scratch_md.get_size());
  for (size_t i = 0; i < 3; ++i) {
    Operand& o = e->opd[i];
    o.user = dnnl::memory(spec[i].user, s.eng, DNNL_MEMORY_NONE);
    o.arg = spec[i].arg;
    o.output = spec[i].output;
    if (spec[i].inner != spec[i].user) {
      o.inner = dnnl::memory(spec[i].inner, s.eng, DNNL_MEMORY_NONE);
      o.move = o.output ? dnnl::reorder(o.inner, o.user) : dnnl::reorder(o.user, o.inner);
      o.reordered = true;
      o.offset = at;
      at += aligned(spec[i].inner.get_size());
    }
  }
  e->workspace = at;
  return e;
}

Entry* entry(Op op, const Window2d& g, Way way) {
  State& s = state();
  const Key key{int64_t(op), int64_t(way), int64_t(omp_get_max_threads()), g.batch, g.in_h, g.in_w, g.in_c, g.out_h, g.out_w, g.out_c, g.k_h,
                g.k_w, g.stride_h, g.stride_w, g.dil_h, g.dil_w, g.pad_top, g.pad_left, g.groups};
  auto it = s.cache.find(key);
  if (it == s.cache.end()) {
    // A training run meets a few batch sizes (the last partial batch, evaluation); a bound keeps a program that
    // varies the batch freely from collecting primitives without end.
    if (s.cache.size() >= 256) s.cache.clear();
    std::unique_ptr<Entry> e;
    if (way == Way::Winograd) {
      // No Winograd kernel for this geometry on this CPU and oneDNN: the direct algorithm (Blocked) instead.
      try {
        e = make_entry(s, op, g, way);
      } catch (const dnnl::error&) {
        e = make_entry(s, op, g, Way::Blocked);
      }
    } else {
      e = make_entry(s, op, g, way);
    }
    it = s.cache.emplace(key, std::move(e)).first;
  }
  return it->second.get();
}

// a, b, c: the operands in the order of Entry::opd (b is the kernel or its gradient, in Keras's layout).
void run(Op op, const Window2d& g, Way way, const float* a, const float* b, const float* c) {
  State& s = state();
  Entry& e = *entry(op, g, way);
  char* work = s.workspace(e.workspace);
  const std::array<const float*, 3> ptr{a, b, c};
  std::unordered_map<int, dnnl::memory> args;
  for (size_t i = 0; i < 3; ++i) {
    Operand& o = e.opd[i];
    o.user.set_data_handle(const_cast<float*>(ptr[i]));
    if (o.reordered) {
      o.inner.set_data_handle(work + o.offset);
      if (!o.output) o.move.execute(s.strm, o.user, o.inner);
    }
    args.emplace(o.arg, o.reordered ? o.inner : o.user);
  }
  if (e.scratch_md.get_size() > 0) args.emplace(DNNL_ARG_SCRATCHPAD, dnnl::memory(e.scratch_md, s.eng, work));
  e.conv.execute(s.strm, args);
  for (Operand& o : e.opd)
    if (o.reordered && o.output) o.move.execute(s.strm, o.inner, o.user);
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

void conv2d_forward(const float* x, const float* w, const Window2d& g, float* y, Way way) {
  run(Op::Forward, g, way, x, w, y);
}
void conv2d_backward_data(const float* dy, const float* w, const Window2d& g, float* dx, Way way) {
  run(Op::BackwardData, g, way, dy, w, dx);
}
void conv2d_backward_filter(const float* x, const float* dy, const Window2d& g, float* dw, Way way) {
  run(Op::BackwardFilter, g, way, x, dw, dy);
}

const char* implementation(const char* op, const Window2d& g, Way way) {
  const std::string o = op;
  const Op k = o == "fwd" ? Op::Forward : o == "bwd_data" ? Op::BackwardData : Op::BackwardFilter;
  return entry(k, g, way)->impl.c_str();
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
void conv2d_forward(const float*, const float*, const ops::Window2d&, float*, Way) { absent(); }
void conv2d_backward_data(const float*, const float*, const ops::Window2d&, float*, Way) { absent(); }
void conv2d_backward_filter(const float*, const float*, const ops::Window2d&, float*, Way) { absent(); }
const char* implementation(const char*, const ops::Window2d&, Way) { return ""; }
}  // namespace lockstep::kernels::onednn

#endif
