#include "core/update_step.h"

namespace lockstep {

UpdateStep::UpdateStep(Model& model, comm::Communicator& comm, comm::BucketOptions options,
                       const comm::ReductionOptions& reduction)
    : model_(model), comm_(comm), options_(options) {
  // Gradients live where the communicator reduces them best (MPI on one node: shared memory that the
  // ranks reduce in place). Collective: every rank constructs its UpdateStep at the same point.
  if (comm_.size() > 1) {
    const Tensor& g = model_.grads_arena();
    Tensor placed = comm_.allocate_reduction_buffer(g.numel(), g.dtype(), g.device(), reduction);
    if (placed.defined()) {
      model_.place_gradients(placed);
      in_reduction_buffer_ = true;
    }
  }
  rebuild();
}

void UpdateStep::rebuild() {
  bucketer_.reset();
  of_layer_.assign(model_.layers().size(), {0, 0});
  if (comm_.size() == 1) return;
  // One segment per trainable weight, grouped by layer (made ready together); layer order. A segment
  // covers the weight's zero padding in the arena too, so that adjacent weights make adjacent segments
  // and share buckets (without it every bucket closed at a bias's padding: model d had 22 buckets of
  // 40 KiB instead of 2); a frozen weight still leaves a gap, which closes a bucket.
  std::vector<comm::GradientSegment> segs;
  for (const WeightRef& r : model_.trainable_weights()) {
    auto& [first, count] = of_layer_[size_t(r.layer)];
    if (count == 0) first = int(segs.size());
    ++count;
    segs.push_back({r.grad_offset, Model::arena_span(r.weight->value.numel()), r.layer});
  }
  if (!segs.empty()) bucketer_ = std::make_unique<comm::GradientBucketer>(comm_, model_.grads_arena(), segs, options_);
}

void UpdateStep::run(const Tensor& dout, Context& ctx, Optimizer& opt) { run(std::vector<Tensor>{dout}, ctx, opt); }

void UpdateStep::run(const std::vector<Tensor>& dout, Context& ctx, Optimizer& opt) {
  // In one process, a plain gradient-descent step is taken inside the backward pass by the layers that
  // can fold it into their products (Layer::descends_in_backward): no gradient to write and read back.
  // Under N ranks the gradients must be averaged first.
  const double rate = comm_.size() == 1 ? opt.plain_descent_rate() : 0.0;
  {
    struct Scope {  // the rate holds for the backward pass only, even when it throws
      Context& ctx;
      ~Scope() { ctx.descent_rate = 0.0; }
    } scope{ctx};
    ctx.descent_rate = rate;
    if (bucketer_) {
      model_.backward(dout, ctx, [&](int layer) {
        const auto [first, count] = of_layer_[size_t(layer)];
        for (int s = first; s < first + count; ++s) bucketer_->mark_ready(s);
      });
      bucketer_->finish();
    } else {
      model_.backward(dout, ctx);
    }
  }
  // Identical on every rank from here: the same averaged gradients and the same weights.
  model_.add_regularization_grads();
  opt.apply(model_, rate > 0.0);
  model_.apply_constraints();
}

}  // namespace lockstep
