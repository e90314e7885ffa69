// The second half of a training step, shared by the trainer and the step benchmark (so the benchmark
// times what the trainer runs): the backward pass, the all-reduce of the gradients under N ranks, and
// the update (l1/l2 gradients, clipping, the optimizer's rule, max-norm constraints), identical on
// every rank.
//
// Under N ranks each layer's gradients go to the GradientBucketer as soon as its backward is done, so
// the buckets' all-reduces overlap the rest of the backward pass. Frozen layers send nothing. Call
// rebuild() after layers are frozen or unfrozen.
#pragma once

#include <memory>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "comm/gradient_bucketer.h"
#include "core/model.h"
#include "core/optimizers.h"

namespace lockstep {

class UpdateStep {
 public:
  UpdateStep(Model& model, comm::Communicator& comm, comm::BucketOptions options = {},
             const comm::ReductionOptions& reduction = {});
  // The trainable weights changed (freezing): new buckets.
  void rebuild();
  // Backward from dL/d(output), gradient synchronisation, then the update by `opt` (bound to the model).
  void run(const Tensor& dout, Context& ctx, Optimizer& opt);
  // The same from dL/d(output j) for each of the model's outputs.
  void run(const std::vector<Tensor>& douts, Context& ctx, Optimizer& opt);
  // Seconds spent blocked waiting for all-reduces, summed over the steps run.
  double comm_wait_seconds() const { return bucketer_ ? bucketer_->wait_seconds() : 0.0; }
  // Whether the gradients live in the communicator's reduction buffer (shared memory, hierarchical
  // across nodes), and how that is reduced ("" when they do not).
  bool gradients_in_reduction_buffer() const { return in_reduction_buffer_; }
  std::string reduction_description() const {
    return in_reduction_buffer_ ? comm_.describe_reduction(model_.grads_arena()) : std::string();
  }

 private:
  Model& model_;
  comm::Communicator& comm_;
  comm::BucketOptions options_;
  std::vector<std::pair<int, int>> of_layer_;         // layer -> (first, count) of its bucketer segments
  std::unique_ptr<comm::GradientBucketer> bucketer_;  // under N ranks
  bool in_reduction_buffer_ = false;
};

}  // namespace lockstep
