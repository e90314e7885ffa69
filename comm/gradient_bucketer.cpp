#include "comm/gradient_bucketer.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>

#include "core/ops.h"

namespace lockstep::comm {

GradientBucketer::GradientBucketer(Communicator& comm, const Tensor& arena, std::vector<GradientSegment> segments,
                                   BucketOptions options)
    : comm_(comm), arena_(arena), segments_(std::move(segments)), options_(options) {
  LS_REQUIRE(arena_.defined() && arena_.dtype() == DType::F32, UserError,
             "GradientBucketer: the gradient arena must be a float32 tensor");
  LS_REQUIRE(options_.first_bucket_bytes > 0 && options_.bucket_cap_bytes > 0, UserError,
             "GradientBucketer: bucket sizes must be positive (first_bucket_bytes=", options_.first_bucket_bytes,
             ", bucket_cap_bytes=", options_.bucket_cap_bytes, ")");
  one_in_flight_ = options_.one_in_flight && !comm_.queues_collectives(make_buffer(arena_));
  const int64_t n = arena_.numel();
  const int num = static_cast<int>(segments_.size());
  for (int i = 0; i < num; ++i) {
    const GradientSegment& s = segments_[static_cast<size_t>(i)];
    LS_REQUIRE(s.count > 0 && s.offset >= 0 && s.offset + s.count <= n, UserError, "GradientBucketer: segment ", i,
               " (offset ", s.offset, ", count ", s.count, ") does not lie inside the arena of ", n,
               " elements or is empty (leave empty and frozen parameters out of the list)");
  }
  std::vector<int> by_offset(static_cast<size_t>(num));
  std::iota(by_offset.begin(), by_offset.end(), 0);
  std::sort(by_offset.begin(), by_offset.end(),
            [&](int a, int b) { return segments_[static_cast<size_t>(a)].offset < segments_[static_cast<size_t>(b)].offset; });
  for (size_t k = 1; k < by_offset.size(); ++k) {
    const GradientSegment& a = segments_[static_cast<size_t>(by_offset[k - 1])];
    const GradientSegment& b = segments_[static_cast<size_t>(by_offset[k])];
    LS_REQUIRE(a.offset + a.count <= b.offset, UserError, "GradientBucketer: segments ", by_offset[k - 1], " and ",
               by_offset[k], " overlap in the arena");
  }

  // Reverse layer order; a bucket grows downwards in the arena while segments stay adjacent.
  auto same_group = [&](int i, int j) {
    const int g = segments_[static_cast<size_t>(i)].group;
    return g >= 0 && g == segments_[static_cast<size_t>(j)].group;
  };
  bucket_of_.assign(static_cast<size_t>(num), -1);
  for (int i = num - 1; i >= 0; --i) {
    const GradientSegment& s = segments_[static_cast<size_t>(i)];
    bool start_new = buckets_.empty();
    if (!start_new) {
      const Bucket& b = buckets_.back();
      const int64_t limit = buckets_.size() == 1 ? options_.first_bucket_bytes : options_.bucket_cap_bytes;
      const bool adjacent = s.offset + s.count == b.offset;
      bool full = b.count * 4 >= limit || (b.count + s.count) * 4 > limit;
      if (!same_group(i, i + 1)) {  // (a bucket exists, so i + 1 < num)
        // The first segment of a group: start the group in a new bucket unless this one holds it whole.
        int64_t group = 0;
        for (int j = i; j >= 0 && (j == i || same_group(j, j + 1)); --j) group += segments_[static_cast<size_t>(j)].count;
        full = full || (b.count + group) * 4 > limit;
      }
      start_new = !adjacent || full;
    }
    if (start_new) buckets_.push_back(Bucket{s.offset, 0, {}});
    Bucket& b = buckets_.back();
    b.offset = s.offset;
    b.count += s.count;
    b.segments.push_back(i);
    bucket_of_[static_cast<size_t>(i)] = static_cast<int>(buckets_.size()) - 1;
  }
  ready_.assign(static_cast<size_t>(num), 0);
  pending_.resize(buckets_.size());
  for (size_t b = 0; b < buckets_.size(); ++b) pending_[b] = static_cast<int>(buckets_[b].segments.size());
  work_.resize(buckets_.size());
}

GradientBucketer::~GradientBucketer() {
  // Work destructors wait (bounded by the watchdog) for anything still in flight.
  for (auto& w : work_) w.reset();
}

void GradientBucketer::mark_ready(int segment) {
  LS_REQUIRE(segment >= 0 && segment < static_cast<int>(segments_.size()), UserError,
             "GradientBucketer::mark_ready: segment ", segment, " out of range (", segments_.size(), " segments)");
  LS_REQUIRE(!ready_[static_cast<size_t>(segment)], UserError, "GradientBucketer::mark_ready: segment ", segment,
             " marked ready twice in one step (call finish() at the end of each step)");
  ready_[static_cast<size_t>(segment)] = 1;
  --pending_[static_cast<size_t>(bucket_of_[static_cast<size_t>(segment)])];
  launch_ready_buckets();
  drive_progress();
}

void GradientBucketer::mark_all_ready() {
  for (int i = static_cast<int>(segments_.size()) - 1; i >= 0; --i)
    if (!ready_[static_cast<size_t>(i)]) mark_ready(i);
}

void GradientBucketer::launch_ready_buckets() {
  while (next_launch_ < static_cast<int>(buckets_.size()) && pending_[static_cast<size_t>(next_launch_)] == 0) {
    // One in flight: the bucket before is waited for HERE, where the bucket becomes ready, which is
    // the same place in the sequence of collectives on every rank. Launching it later, once some
    // test() happened to see its predecessor complete, would put it before a sync-BN all-reduce of the
    // backward pass on one rank and after it on another (the ordering contract: communicator.h).
    if (one_in_flight_)
      while (first_unfinished_ < next_launch_) wait_for(first_unfinished_);
    const Bucket& b = buckets_[static_cast<size_t>(next_launch_)];
    work_[static_cast<size_t>(next_launch_)] = comm_.all_reduce_async(arena_.view(b.offset, {b.count}), ReduceOp::Sum);
    ++next_launch_;
  }
}

void GradientBucketer::wait_for(int bucket) {
  const auto t0 = std::chrono::steady_clock::now();
  work_[static_cast<size_t>(bucket)]->wait();
  wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ++first_unfinished_;
}

void GradientBucketer::drive_progress() {
  // Completion seen here never launches anything (launch_ready_buckets says why).
  while (first_unfinished_ < next_launch_ && work_[static_cast<size_t>(first_unfinished_)]->test()) ++first_unfinished_;
  // Later buckets progress too (test() on each is cheap and MPI may advance them independently).
  for (int b = first_unfinished_ + 1; b < next_launch_; ++b) work_[static_cast<size_t>(b)]->test();
}

void GradientBucketer::finish() {
  std::string missing;
  int count = 0;
  for (size_t i = 0; i < segments_.size(); ++i)
    if (!ready_[i] && ++count <= 8) missing += (missing.empty() ? "" : ", ") + std::to_string(i);
  if (count > 0) {
    throw UserError(str_cat("GradientBucketer::finish: ", count, " segment(s) never marked ready this step (", missing,
                            count > 8 ? ", ..." : "",
                            "): every listed segment needs a gradient each step; leave frozen parameters out of the "
                            "segment list"));
  }
  launch_ready_buckets();
  while (first_unfinished_ < static_cast<int>(buckets_.size())) wait_for(first_unfinished_);
  for (size_t b = 0; b < buckets_.size(); ++b) {
    if (options_.post_scale != 1.0) ops::scale(arena_.view(buckets_[b].offset, {buckets_[b].count}), options_.post_scale);
    work_[b].reset();
  }
  std::fill(ready_.begin(), ready_.end(), 0);
  for (size_t b = 0; b < buckets_.size(); ++b) pending_[b] = static_cast<int>(buckets_[b].segments.size());
  next_launch_ = 0;
  first_unfinished_ = 0;
}

}  // namespace lockstep::comm
