// The measured inputs of the scaling model (core/scaling.h), taken on this machine by
// `lockstep scale-estimate`:
//   StepProbe               a run file's model, loss and optimizer on synthetic input of the model's input
//                           shapes; times real training steps of one rank at a per-rank batch as N ranks
//                           run them (forward + loss, the backward pass with the time at which each layer's
//                           gradients are final, then the update), and as one process runs them (UpdateStep
//                           with one rank, which may fold a plain SGD step into the backward pass). Its
//                           gradient buckets are GradientBucketer's own layout for the run file's
//                           distributed.first_bucket_mb / bucket_mb.
//   measure_shared_memory   one rank's part of SharedReduction's in-place all-reduce of those buckets with L
//                           ranks per node, emulated in this process (L regions of one mapping, this thread
//                           doing rank 0's share): seconds per bucket byte for each L asked.
//   measure_reduce_per_byte the ring's sum of a received chunk (comm::detail::reduce_into), per byte;
//   measure_codec_per_byte  with compression, its encode and decode (comm::detail::encode16/decode16).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/gradient_bucketer.h"
#include "core/config.h"
#include "core/scaling.h"

namespace lockstep::scaling {

class StepProbe {
 public:
  // The run file's model (initialised from its seed), loss and optimizer. ConfigError on a bad section.
  explicit StepProbe(const ConfigNode& run);
  ~StepProbe();
  StepProbe(const StepProbe&) = delete;
  StepProbe& operator=(const StepProbe&) = delete;

  // Times steps at `batch` samples per rank: warm-up (3 steps and 0.1 s), then at least `min_steps`
  // steps and `min_seconds` of each of the two paths, alternating. Medians per phase.
  BackwardProfile measure(int batch, double min_seconds, int min_steps);
  // Steps timed by the last measure(), per path.
  int last_steps() const { return last_steps_; }

  // GradientBucketer's buckets for these options, each ready at the progress point (index into
  // BackwardProfile::progress_s) of the last of its layers to finish.
  std::vector<BucketSpec> buckets(const comm::BucketOptions& options) const;
  // The FLOPs apportionment (--step-ms): forward product FLOPs per sample, and each progress point's
  // layer's backward product FLOPs per sample, in the order the progress points come.
  double forward_flops() const;
  std::vector<double> backward_flops_by_progress_point() const;

  int64_t trainable_params() const;
  int64_t gradient_bytes() const;  // float32
  // "softmax cross-entropy (sparse labels)" or "synthetic output gradients (2 outputs)".
  const std::string& loss_description() const { return loss_what_; }
  std::string input_description() const;  // "[B, 28, 28]"
  bool folds_plain_descent() const;       // one process steps plain SGD inside the backward pass

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int last_steps_ = 0;
  std::string loss_what_;
};

// Seconds per bucket byte of one rank's part of the in-place shared-memory all-reduce of buckets of
// these sizes (bytes, launch order), for each L in `ranks_per_node` (>= 2); the per-launch alpha too.
// Emulated on this thread: memory traffic of L ranks at once is not (docs/scaling.md).
SharedMemoryCost measure_shared_memory(const std::vector<double>& bucket_bytes, const std::vector<int>& ranks_per_node,
                                       double min_seconds);
// Seconds per float32 byte of summing a received chunk into a share (comm::detail::reduce_into).
double measure_reduce_per_byte(double min_seconds);
// Seconds per float32 byte of the compressed ring's encode (float32 -> 16 bits) and decode-and-add
// (comm::detail::encode16 / decode16), for bf16 or fp16.
void measure_codec_per_byte(const std::string& compression, double min_seconds, double* encode_s, double* decode_s);

}  // namespace lockstep::scaling
