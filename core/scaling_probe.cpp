#include "core/scaling_probe.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>

#include "comm/communicator.h"
#include "comm/shared_reduction.h"
#include "core/error.h"
#include "core/losses.h"
#include "core/model.h"
#include "core/ops.h"
#include "core/optimizers.h"
#include "core/update_step.h"

namespace lockstep::scaling {
namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

bool has_trainable(const Layer& l) {
  if (!l.trainable()) return false;
  for (const Weight& w : l.weights())
    if (w.trainable) return true;
  return false;
}

}  // namespace

struct StepProbe::Impl {
  std::unique_ptr<Model> model;
  std::unique_ptr<LossFunction> loss;  // null: synthetic output gradients
  std::unique_ptr<Optimizer> opt;
  std::unique_ptr<comm::Communicator> local;  // one rank: UpdateStep's one-process path, the bucket layout
  std::unique_ptr<UpdateStep> single;
  Context ctx;
  uint64_t seed = 42;
  // Per batch size: inputs, labels, the loss's per-sample values and output gradients.
  int batch = 0;
  std::vector<Tensor> xs, douts;
  Tensor y, per_sample;
  // The layers in the order their gradients become final (on_layer_done), from a backward pass.
  std::vector<int> done_order;

  void prepare(int b) {
    if (b == batch) return;
    batch = b;
    xs.clear();
    for (int i = 0; i < model->num_inputs(); ++i) {
      Shape s{b};
      for (int64_t d : model->input_shapes()[size_t(i)]) s.push_back(d);
      Tensor t(s);
      ops::random_uniform(t, 0.0, 1.0, rng::Stream{seed, uint64_t(100 + i)});
      xs.push_back(t);
    }
    douts.assign(size_t(model->num_outputs()), Tensor());
    for (int j = 0; j < model->num_outputs(); ++j) {
      Shape s{b};
      for (int64_t d : model->output_shape(j)) s.push_back(d);
      douts[size_t(j)] = Tensor(s);
      if (!loss) {  // synthetic: small values of the mean loss's gradient size
        ops::random_uniform(douts[size_t(j)], -1.0 / b, 1.0 / b, rng::Stream{seed, uint64_t(200 + j)});
      }
    }
    if (loss) {
      const Shape out = model->output_shape(0);
      int64_t per = 1;
      for (int64_t d : out) per *= d;
      std::vector<float> v;
      if (loss->spec().kind == LossKind::SparseCategoricalCrossentropy) {
        const int64_t classes = out.empty() ? 1 : out.back();
        for (int64_t i = 0; i < b; ++i) v.push_back(float((i * 7919) % (classes == 1 ? 2 : classes)));
        y = Tensor::from_vector({b}, v);
      } else {
        Shape ys{b};
        for (int64_t d : out) ys.push_back(d);
        const int64_t last = out.empty() ? 1 : out.back();
        for (int64_t i = 0; i < b * per; ++i) {
          if (loss->spec().kind == LossKind::CategoricalCrossentropy) v.push_back((i % last) == (i / per) % last ? 1.f : 0.f);
          else if (loss->spec().kind == LossKind::BinaryCrossentropy) v.push_back(float((i * 7919) % 2));
          else v.push_back(float((i * 7919) % 17) / 17.f);
        }
        y = Tensor::from_vector(ys, v);
      }
      per_sample = Tensor({b});
    }
    ctx.global_batch = b;
  }

  void forward() {
    const std::vector<Tensor>& outs = model->forward(xs, ctx);
    if (loss) loss->compute(outs[0], y, per_sample, douts[0], 1.0 / batch);
  }
};

StepProbe::StepProbe(const ConfigNode& run) : impl_(std::make_unique<Impl>()) {
  Impl& s = *impl_;
  s.seed = uint64_t(run.get_at_least("seed", 42, 0));
  s.model = Model::from_config(run["model"]);
  s.model->init(s.seed);
  // The run file's loss when the model has one output and one loss; otherwise synthetic gradients.
  if (s.model->num_outputs() == 1) {
    ConfigNode ln = run["loss"];
    if (ln.is_seq() && ln.size() == 1) ln = ln[0];
    if (ln.is_map() && ln.size() == 1 && s.model->output_name(0) == ln.keys()[0] && !ln[ln.keys()[0]].is_map())
      ln = ln[ln.keys()[0]];  // {output_name: loss}
    const LossSpec spec = parse_loss(ln);
    s.loss = std::make_unique<LossFunction>(spec, fusable_output(spec, s.model->output_activation()));
    s.model->set_fused_output(s.loss->fused());
    loss_what_ = spec.name() + " on synthetic labels";
  } else {
    loss_what_ = str_cat("synthetic output gradients (", s.model->num_outputs(), " outputs; the losses' own cost left out)");
  }
  s.opt = Optimizer::from_config(run["optimizer"]);
  s.opt->bind(*s.model);
  s.ctx.training = true;
  s.ctx.seed = s.seed;
  s.local = comm::make_communicator(comm::CommKind::Local);
  s.single = std::make_unique<UpdateStep>(*s.model, *s.local);
  // The order in which layers finish: reverse call order, each layer after its first call's backward.
  const auto& calls = s.model->calls();
  std::vector<int> first_call(s.model->layers().size(), -1);
  for (size_t k = 0; k < calls.size(); ++k)
    if (first_call[size_t(calls[k].layer)] < 0) first_call[size_t(calls[k].layer)] = int(k);
  std::vector<int> layers;
  for (size_t l = 0; l < first_call.size(); ++l)
    if (first_call[l] >= 0 && has_trainable(*s.model->layers()[l])) layers.push_back(int(l));
  std::sort(layers.begin(), layers.end(), [&](int a, int b) { return first_call[size_t(a)] > first_call[size_t(b)]; });
  s.done_order = layers;
}

StepProbe::~StepProbe() = default;

bool StepProbe::folds_plain_descent() const { return impl_->opt->plain_descent_rate() > 0.0; }

BackwardProfile StepProbe::measure(int batch, double min_seconds, int min_steps) {
  Impl& s = *impl_;
  s.prepare(batch);
  Model& m = *s.model;
  std::vector<double> fwd, bwd, upd, single;
  std::vector<std::vector<double>> points;  // per step: the times of the progress points
  std::vector<int> order;
  // The N-rank path: forward + loss, backward (no descent inside it) with each layer's finish time, update.
  auto n_rank_step = [&](bool keep) {
    auto t0 = Clock::now();
    s.forward();
    const double f = since(t0);
    std::vector<double> at;
    order.clear();
    s.ctx.descent_rate = 0.0;
    auto t1 = Clock::now();
    m.backward(s.douts, s.ctx, [&](int layer) {
      at.push_back(since(t1));
      order.push_back(layer);
    });
    const double b = since(t1);
    auto t2 = Clock::now();
    m.add_regularization_grads();
    s.opt->apply(m, false);
    m.apply_constraints();
    const double u = since(t2);
    ++s.ctx.step;
    if (!keep) return;
    fwd.push_back(f), bwd.push_back(b), upd.push_back(u), points.push_back(std::move(at));
  };
  // One process's step (UpdateStep with one rank).
  auto one_rank_step = [&](bool keep) {
    auto t0 = Clock::now();
    s.forward();
    s.single->run(s.douts, s.ctx, *s.opt);
    ++s.ctx.step;
    if (keep) single.push_back(since(t0));
  };
  const bool fold = folds_plain_descent();
  auto w0 = Clock::now();
  for (int i = 0; i < 3 || since(w0) < 0.1; ++i) {
    n_rank_step(false);
    if (fold) one_rank_step(false);
  }
  auto t0 = Clock::now();
  int steps = 0;
  while (steps < min_steps || since(t0) < min_seconds) {
    n_rank_step(true);
    if (fold) one_rank_step(true);
    ++steps;
  }
  last_steps_ = steps;
  if (!order.empty()) s.done_order = order;
  BackwardProfile prof;
  prof.forward_s = median(fwd);
  prof.backward_s = median(bwd);
  prof.update_s = median(upd);
  prof.single_rank_step_s = fold ? median(single) : 0.0;
  const size_t np = points.empty() ? 0 : points.back().size();
  for (size_t j = 0; j < np; ++j) {
    std::vector<double> v;
    for (const auto& p : points)
      if (p.size() == np) v.push_back(p[j]);
    prof.progress_s.push_back(median(v));
  }
  for (size_t j = 1; j < prof.progress_s.size(); ++j) prof.progress_s[j] = std::max(prof.progress_s[j], prof.progress_s[j - 1]);
  if (!prof.progress_s.empty()) prof.backward_s = std::max(prof.backward_s, prof.progress_s.back());
  return prof;
}

std::vector<BucketSpec> StepProbe::buckets(const comm::BucketOptions& options) const {
  const Impl& s = *impl_;
  // UpdateStep::rebuild's segments: one per trainable weight, grouped by layer, in layer order.
  std::vector<comm::GradientSegment> segs;
  for (const WeightRef& r : s.model->trainable_weights()) segs.push_back({r.grad_offset, r.weight->value.numel(), r.layer});
  std::vector<BucketSpec> out;
  if (segs.empty()) return out;
  comm::GradientBucketer bucketer(*s.local, s.model->grads_arena(), segs, options);
  std::vector<int> index_of(s.model->layers().size(), -1);
  for (size_t j = 0; j < s.done_order.size(); ++j) index_of[size_t(s.done_order[j])] = int(j);
  for (const auto& b : bucketer.buckets()) {
    BucketSpec spec;
    spec.bytes = double(b.count) * 4.0;
    for (int seg : b.segments) {
      const int at = index_of[size_t(segs[size_t(seg)].group)];
      spec.ready_at = std::max(spec.ready_at, at < 0 ? int(s.done_order.size()) : at);
    }
    out.push_back(spec);
  }
  return out;
}

namespace {
// Multiply-adds per sample of a layer's products (Dense: kernel elements per position; convolutions:
// kernel elements per output position), 0 for layers without products.
double layer_macs(const Layer& l) {
  const std::string k = l.key();
  if (k != "dense" && k != "conv2d" && k != "depthwise_conv2d") return 0.0;
  if (l.weights().empty()) return 0.0;
  double macs = 1.0;
  for (int64_t d : l.weights()[0].shape) macs *= double(d);
  const Shape& out = l.output_shape();
  if (k == "dense") {
    for (size_t i = 0; i + 1 < out.size(); ++i) macs *= double(out[i]);
  } else if (out.size() >= 2) {
    macs *= double(out[0] * out[1]);
  }
  return macs;
}
}  // namespace

double StepProbe::forward_flops() const {
  double f = 0.0;
  for (const auto& c : impl_->model->calls()) f += 2.0 * layer_macs(*impl_->model->layers()[size_t(c.layer)]);
  return f;
}

std::vector<double> StepProbe::backward_flops_by_progress_point() const {
  const Impl& s = *impl_;
  const auto& calls = s.model->calls();
  std::vector<double> per_layer(s.model->layers().size(), 0.0);
  std::vector<int> ncalls(s.model->layers().size(), 0);
  for (const auto& c : calls) ++ncalls[size_t(c.layer)];
  // The lowest layer with weights computes no input gradient: 1 product instead of 2.
  for (size_t k = 0; k < calls.size(); ++k) {
    const Layer& l = *s.model->layers()[size_t(calls[k].layer)];
    per_layer[size_t(calls[k].layer)] += 2.0 * layer_macs(l) * 2.0;
  }
  if (!s.done_order.empty()) {
    const int lowest = s.done_order.back();
    if (ncalls[size_t(lowest)] == 1) per_layer[size_t(lowest)] /= 2.0;
  }
  std::vector<double> out;
  for (int l : s.done_order) out.push_back(per_layer[size_t(l)]);
  return out;
}

int64_t StepProbe::trainable_params() const { return impl_->model->trainable_params(); }
int64_t StepProbe::gradient_bytes() const {
  int64_t n = 0;
  for (const WeightRef& r : impl_->model->trainable_weights()) n += r.weight->value.numel();
  return n * 4;
}

std::string StepProbe::input_description() const {
  std::string s;
  for (int i = 0; i < impl_->model->num_inputs(); ++i) {
    s += i ? ", [B" : "[B";
    for (int64_t d : impl_->model->input_shapes()[size_t(i)]) s += str_cat(", ", d);
    s += "]";
  }
  return s;
}

SharedMemoryCost measure_shared_memory(const std::vector<double>& bucket_bytes, const std::vector<int>& ranks_per_node,
                                       double min_seconds) {
  SharedMemoryCost cost;
  int64_t total = 0;
  for (double b : bucket_bytes) total += int64_t(b);
  if (total <= 0) return cost;
  std::vector<double> alphas;
  for (int L : ranks_per_node) {
    if (L < 2) continue;
    const int64_t bytes = comm::SharedReduction::mapping_bytes(L, total);
    std::shared_ptr<void> mem(::operator new(size_t(bytes) + 4096, std::align_val_t(4096)),
                              [](void* p) { ::operator delete(p, std::align_val_t(4096)); });
    std::memset(mem.get(), 0, size_t(bytes));
    std::vector<std::unique_ptr<comm::SharedReduction>> ranks;
    for (int r = 0; r < L; ++r) ranks.push_back(std::make_unique<comm::SharedReduction>(mem.get(), L, r, total, mem));
    // Every region holds small values (the sums stay finite).
    for (int r = 0; r < L; ++r) {
      float* d = static_cast<float*>(ranks[size_t(r)]->data());
      for (int64_t i = 0; i < total / 4; ++i) d[i] = float(i % 7) * 1e-3f;
    }
    // One pass = every bucket launched by every rank; rank 0's share timed, the others' done untimed.
    std::vector<double> per_pass;
    double small_t = 0.0;
    int small_n = 0;
    auto pass = [&](bool keep) {
      double t = 0.0;
      int64_t off = 0;
      for (double b : bucket_bytes) {
        const int64_t count = int64_t(b) / 4;
        for (int r = 0; r < L; ++r) {
          comm::Buffer buf{static_cast<char*>(ranks[size_t(r)]->data()) + off * 4, count, comm::ElemType::F32,
                           Device::CPU};
          ranks[size_t(r)]->launch(buf, comm::ReduceOp::Sum, "scale-estimate probe", std::chrono::milliseconds(0));
        }
        auto t0 = Clock::now();
        ranks[0]->progress();
        t += since(t0);
        for (int r = 1; r < L; ++r) ranks[size_t(r)]->progress();
        off += count;
      }
      if (keep) per_pass.push_back(t);
    };
    // alpha: a 64-float launch (the flags and the slot check, not bytes).
    auto tiny = [&]() {
      for (int r = 0; r < L; ++r) {
        comm::Buffer buf{ranks[size_t(r)]->data(), 64, comm::ElemType::F32, Device::CPU};
        ranks[size_t(r)]->launch(buf, comm::ReduceOp::Sum, "scale-estimate probe", std::chrono::milliseconds(0));
      }
      auto t0 = Clock::now();
      ranks[0]->progress();
      small_t += since(t0);
      ++small_n;
      for (int r = 1; r < L; ++r) ranks[size_t(r)]->progress();
    };
    pass(false);
    auto t0 = Clock::now();
    while (per_pass.size() < 3 || since(t0) < min_seconds) {
      pass(true);
      for (int i = 0; i < 8; ++i) tiny();
    }
    const double alpha = small_t / std::max(small_n, 1);
    alphas.push_back(alpha);
    std::sort(per_pass.begin(), per_pass.end());
    const double t = per_pass[per_pass.size() / 2] - alpha * double(bucket_bytes.size());
    cost.per_byte_s[L] = std::max(t, 0.0) / double(total);
  }
  cost.alpha_s = median(alphas);
  return cost;
}

double measure_reduce_per_byte(double min_seconds) {
  const int64_t n = 256 * 1024;  // 1 MiB: a ring chunk of a few-MB bucket
  std::vector<float> a(size_t(n), 1e-3f), b(size_t(n), 2e-3f);
  std::vector<double> t;
  auto t0 = Clock::now();
  while (t.size() < 5 || since(t0) < min_seconds) {
    auto t1 = Clock::now();
    comm::detail::reduce_into(a.data(), b.data(), n, comm::ElemType::F32, comm::ReduceOp::Sum);
    t.push_back(since(t1));
  }
  return median(t) / double(n * 4);
}

void measure_codec_per_byte(const std::string& compression, double min_seconds, double* encode_s, double* decode_s) {
  const comm::Compression c = comm::parse_compression(compression);
  *encode_s = *decode_s = 0.0;
  if (c == comm::Compression::None) return;
  const int64_t n = 256 * 1024;
  std::vector<float> a(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) a[size_t(i)] = 1e-3f * float(i % 1000 - 500);
  std::vector<uint16_t> w(static_cast<size_t>(n));
  std::vector<double> te, td;
  auto t0 = Clock::now();
  while (te.size() < 5 || since(t0) < min_seconds) {
    auto t1 = Clock::now();
    comm::detail::encode16(c, a.data(), w.data(), n);
    te.push_back(since(t1));
    auto t2 = Clock::now();
    comm::detail::decode16(c, w.data(), a.data(), n, true);
    td.push_back(since(t2));
    for (int64_t i = 0; i < n; i += 4096) a[size_t(i)] = 1e-3f;  // stay finite
  }
  *encode_s = median(te) / double(n * 4);
  *decode_s = median(td) / double(n * 4);
}

}  // namespace lockstep::scaling
