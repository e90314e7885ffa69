// GradientBucketer: overlaps the gradient all-reduce with the backward pass (style habit 9).
//
// WHAT THIS REPRESENTS
//   A policy object above the transport. It owns no memory: it sees one flat float arena holding
//   every parameter's gradient (core/model.h) and a list of segments = (offset, count) of each
//   trainable parameter's gradient in that arena, listed in FORWARD layer order. Frozen parameters
//   are simply not listed, so they send nothing. At construction it groups the segments, walking
//   them in REVERSE order (the order backward produces them), into buckets = contiguous slices of the
//   arena:
//     * a bucket holds adjacent segments only (a gap, e.g. a frozen parameter, closes it),
//     * the first bucket closes once it reaches `first_bucket_bytes` (small, to start communicating
//       early), later ones once they reach `bucket_cap_bytes`,
//     * a segment is never split: one bigger than the cap gets a bucket of its own,
//     * segments of one `group` (a layer's weights, made ready together) start a bucket together: a
//       bucket that could not hold the whole group closes before it, instead of taking its first
//       small segment (a bias) and then waiting for the group's backward pass too. (Model a's first
//       bucket used to take the first layer's bias and so left only at the end of the backward pass;
//       it now leaves before the first layer's weight gradient is computed.)
//   The layout depends only on the segments and the options, so it is the same on every rank.
//
// PER STEP
//   The trainer calls `mark_ready(i)` as the backward pass finishes segment i's gradient, then
//   `finish()` before the optimizer reads the gradients. A bucket's in-place SUM all-reduce is
//   launched by the mark_ready that makes all its segments ready, once all earlier buckets have been
//   launched, so every rank launches the buckets in the same order and at the same places among the
//   other collectives of the backward pass (sync BN's), whatever order mark_ready comes in (the
//   ordering contract of communicator.h). With `one_in_flight`, that mark_ready first WAITS for the
//   bucket in flight: launching only once some test() happened to see it complete would make the
//   launch's place in the sequence depend on timing, different on each rank. Each mark_ready also
//   calls test() on the outstanding work (MPI progresses only inside MPI calls). finish() requires
//   every listed segment to have been marked ready (else it throws); it launches and waits for the
//   remaining buckets in order (with the communicator's watchdog), applies the optional post-scale,
//   and resets for the next step.
//
// SCALING
//   The trainer scales the loss gradient by 1/global_batch on every rank, so the SUM over ranks IS the
//   global mean gradient: the bucketer does not divide. `post_scale` (default 1) multiplies each
//   reduced bucket, for callers that want another convention.
//
// REQUIREMENTS
//   The arena outlives the bucketer and is not written between a segment's mark_ready and finish().
//   Segments lie inside the arena, do not overlap, and have count > 0. Not thread-safe (call from the
//   thread that owns the communicator).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "comm/communicator.h"

namespace lockstep::comm {

struct GradientSegment {
  int64_t offset = 0;  // elements from the start of the arena
  int64_t count = 0;   // elements
  int group = -1;      // segments made ready together (a layer's) share one; -1: a group of its own
};

struct BucketOptions {
  // Defaults (c10d uses 1 MiB / 25 MiB for GPUs): 1 MiB gets the first all-reduce going after the
  // last layer or two; 4 MiB caps later buckets where all-reduce bandwidth here is still at its peak
  // (~10 GB/s bus bandwidth for 1-5 MB, falling past the 32 MiB L3: BASELINE.md §8) while keeping
  // the per-bucket overhead (~20 us) small against the bucket's transfer time (~0.4 ms).
  static constexpr int64_t kDefaultFirstBucketBytes = int64_t{1} << 20;
  static constexpr int64_t kDefaultBucketCapBytes = int64_t{4} << 20;

  int64_t first_bucket_bytes = kDefaultFirstBucketBytes;
  int64_t bucket_cap_bytes = kDefaultBucketCapBytes;
  // Keep one bucket in flight (a bucket that becomes ready waits for the one before it), unless the
  // communicator queues collectives itself (Communicator::queues_collectives). Over MPI on 2 ranks
  // here, buckets in flight at once reached 0.76-0.78 of one MPI_Allreduce's bus bandwidth, one at a
  // time 0.81-0.97 (0.98-1.00 of MPI_Allreduce over the same buckets): tests/bench/allreduce_bench.cpp.
  bool one_in_flight = true;
  double post_scale = 1.0;  // multiply the reduced gradients by this (1: leave the SUM)
};

class GradientBucketer {
 public:
  struct Bucket {
    int64_t offset = 0;                // first element in the arena
    int64_t count = 0;                 // elements (a contiguous slice)
    std::vector<int> segments;         // indices into the segment list, in reverse order
  };

  // `arena`: a float32 tensor (any shape; used flat). Throws UserError on a bad segment list or
  // options, naming the segment.
  GradientBucketer(Communicator& comm, const Tensor& arena, std::vector<GradientSegment> segments,
                   BucketOptions options = {});
  // Waits for outstanding work (errors are reported to stderr, not thrown).
  ~GradientBucketer();
  GradientBucketer(const GradientBucketer&) = delete;
  GradientBucketer& operator=(const GradientBucketer&) = delete;

  // Segment i's gradient is final for this step. Throws if i is out of range or already marked.
  void mark_ready(int segment);
  // Mark every segment not yet marked (a trainer that does not overlap), in reverse order.
  void mark_all_ready();
  // Waits for every bucket of this step (CommError on failure or watchdog expiry), applies
  // post_scale, and resets for the next step. Throws if some segment was never marked ready.
  void finish();

  const std::vector<Bucket>& buckets() const { return buckets_; }
  const std::vector<GradientSegment>& segments() const { return segments_; }
  const BucketOptions& options() const { return options_; }
  // Buckets launched in the current step.
  int launched() const { return next_launch_; }
  // Seconds spent blocked on all-reduces (mark_ready and finish), summed over every step so far.
  double wait_seconds() const { return wait_seconds_; }

 private:
  void launch_ready_buckets();
  void drive_progress();
  void wait_for(int bucket);  // the first unfinished one

  Communicator& comm_;
  Tensor arena_;
  std::vector<GradientSegment> segments_;
  BucketOptions options_;
  bool one_in_flight_ = true;  // options_.one_in_flight unless the communicator queues collectives
  std::vector<Bucket> buckets_;
  std::vector<int> bucket_of_;    // segment -> bucket
  std::vector<char> ready_;       // segment -> marked this step
  std::vector<int> pending_;      // bucket -> segments not yet ready
  std::vector<std::unique_ptr<Work>> work_;  // bucket -> its all-reduce (null until launched)
  int next_launch_ = 0;
  int first_unfinished_ = 0;      // buckets before it have completed (seen by test() or waited for)
  double wait_seconds_ = 0.0;
};

}  // namespace lockstep::comm
