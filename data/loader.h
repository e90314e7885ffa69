// ShardedLoader: per-epoch shuffled, rank-sharded batches of one Split, prepared by a background
// thread while the current batch trains.
//
// Order. The global permutation of epoch e is a pure function of (seed, e): Fisher-Yates driven by
// Philox (rng::Stream{seed, mix(kShuffleTag, e)}); identity when shuffle is false (evaluation).
// Global batch b covers permutation positions [b*B, min((b+1)*B, N)). Rank r of W takes the
// contiguous slice [r*n/W, (r+1)*n/W) of that batch's n samples, so the union over ranks of a step's
// batches is exactly the single-process batch, and every rank runs the same number of steps.
// Last partial batch: Keep (default, Keras) keeps it, and a rank may get local_count == 0 (it still
// gets the step); Drop drops it; Pad completes it with positions 0, 1, ... of the same permutation.
//
// Pairs. When the split has a pairing (Split::pairing(), data/pairs.h; `data.pairs` sets it), an
// epoch has PairSampler::size() positions instead of the split's samples, and no permutation is drawn
// (each position already is a random draw, a pure function of (seed, epoch, position); a split with
// pairs_fixed() always uses epoch 0's draw). The positions are sliced into global batches and rank
// shards exactly as above, LastBatch included (Pad wraps to positions 0, 1, ...). A batch then holds
// `x` = the first images, `extra_x[0]` = the second images (same shape) and `y` = the pair labels.
// For unpaired splits `extra_x` stays empty.
//
// Augmentation. When the split carries an AugmentSpec (data.augment: open_dataset sets it on the
// training split only) and the loader augments (`augment` below), the producer thread transforms each
// image of a batch after read_float, with the draw of (seed, epoch, the image's split index)
// (data/augment.h): the same on any rank count and on a mid-epoch resume. Pairs: both images, each
// with its own split index. `Augment::WhenShuffling` (the default) augments exactly the loaders that
// shuffle, i.e. the trainer's training loaders (fit, lr-find), never evaluate or predict, which read
// in order; `On` / `Off` say it outright (a training loader with train.shuffle: false needs `On`).
//
// Threading. One producer thread per loader; `next()` blocks only when the producer is behind (and
// then until half the prefetch queue, at least one batch, is ready or the epoch has ended).
// The loader never queries a communicator: rank and world are plain arguments.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "core/tensor.h"
#include "data/augment.h"
#include "data/dataset.h"
#include "data/pairs.h"

namespace lockstep::data {

struct Batch {
  Tensor x;              // float32 [local_count, H, W(, C)], preprocessed
  std::vector<Tensor> extra_x;  // further inputs of the same shape: paired splits, the second images; else empty
  Tensor y;              // float32 [local_count] labels
  int64_t local_count = 0;
  int64_t global_count = 0;  // samples in this step's global batch (sum of local_count over ranks)
  int64_t step = 0;          // global batch index within the epoch
};

enum class Augment { WhenShuffling, On, Off };

// The permutation of 0..n-1 for (seed, epoch): a pure function, identical on every rank.
std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch);

class ShardedLoader {
 public:
  ShardedLoader(std::shared_ptr<const Split> split, int64_t global_batch, int rank, int world, uint64_t seed,
                bool shuffle, LastBatch policy, int prefetch = 2, Augment augment = Augment::WhenShuffling);
  ~ShardedLoader();
  ShardedLoader(const ShardedLoader&) = delete;
  ShardedLoader& operator=(const ShardedLoader&) = delete;

  int64_t steps_per_epoch() const;
  int64_t positions() const;  // per epoch: the split's size, or the pair count of a paired split
  int64_t global_batch() const { return global_batch_; }
  const Split& split() const { return *split_; }
  bool augments() const { return augmenter_.has_value(); }
  // Begin epoch `epoch` at global step `first_step` (> 0 to resume mid-epoch). Cancels any epoch in flight.
  void start_epoch(int64_t epoch, int64_t first_step = 0);
  // The next batch of this rank; false at the end of the epoch. Rethrows the producer's errors.
  bool next(Batch& out);

  // The split indices of rank `rank`'s share of global step `step` in the permutation `perm`.
  std::vector<int64_t> shard_indices(const std::vector<int64_t>& perm, int64_t step) const;

 private:
  void stop_producer();
  void produce(std::vector<int64_t> perm, int64_t first_step, int64_t epoch);
  Batch make_batch(const std::vector<int64_t>& perm, int64_t step, int64_t epoch) const;
  // read_float of split indices idx[0..n), augmented when this loader augments.
  void read_images(const int64_t* idx, int64_t n, int64_t epoch, float* out) const;

  std::shared_ptr<const Split> split_;
  int64_t global_batch_;
  int rank_, world_;
  uint64_t seed_;
  bool shuffle_;
  LastBatch policy_;
  int prefetch_;
  std::optional<PairSampler> pairs_;  // set when the split has a pairing
  std::optional<Augmenter> augmenter_;  // set when this loader augments the split's images

  std::thread producer_;
  std::mutex mu_;
  // Hand-off with hysteresis: the producer, once the queue is full, sleeps until half of it has
  // been taken; a consumer that finds it empty sleeps until half of it is ready again (or the epoch
  // ends). Each side signals only when the other is asleep and its condition holds, so a batch of
  // a few samples costs a fraction of a wake-up instead of two (profiled: the futex wake-ups and
  // context switches were the cost of in-memory batch 32 on 4 ranks, 8 samples per batch).
  std::condition_variable not_empty_, not_full_;
  bool consumer_waiting_ = false, producer_waiting_ = false;
  std::deque<Batch> queue_;
  bool done_ = true;        // producer finished the epoch
  bool stop_ = false;       // ask the producer to quit
  bool started_ = false;
  std::exception_ptr error_;
};

}  // namespace lockstep::data
