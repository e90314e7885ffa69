#include "data/loader.h"

#include <algorithm>
#include <numeric>

#include "core/error.h"
#include "core/rng.h"
#include "data/hdf5_util.h"

namespace lockstep::data {

namespace {
constexpr uint64_t kShuffleTag = 0x53485546464c45ull;  // "SHUFFLE"
}

std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  rng::Stream s{seed, rng::mix(kShuffleTag, static_cast<uint64_t>(epoch))};
  for (int64_t i = n - 1; i > 0; --i) {
    // j uniform in [0, i] from a 53-bit uniform (bias < 2^-33 for any realistic n).
    int64_t j = static_cast<int64_t>(s.uniform_double(static_cast<uint64_t>(i)) * static_cast<double>(i + 1));
    if (j > i) j = i;
    std::swap(perm[i], perm[j]);
  }
  return perm;
}

ShardedLoader::ShardedLoader(std::shared_ptr<const Split> split, int64_t global_batch, int rank, int world,
                             uint64_t seed, bool shuffle, LastBatch policy, int prefetch, Augment augment)
    : split_(std::move(split)), global_batch_(global_batch), rank_(rank), world_(world), seed_(seed),
      shuffle_(shuffle), policy_(policy), prefetch_(std::max(1, prefetch)) {
  LS_CHECK(split_ != nullptr, "ShardedLoader needs a split");
  LS_REQUIRE(global_batch_ >= 1, ConfigError, "batch size must be at least 1, got ", global_batch_);
  LS_CHECK(world_ >= 1 && rank_ >= 0 && rank_ < world_, "rank ", rank_, " outside world of size ", world_);
  if (split_->pairing()) pairs_.emplace(*split_, *split_->pairing(), seed_);
  const bool wants = augment == Augment::On || (augment == Augment::WhenShuffling && shuffle_);
  if (wants && split_->augment() && split_->augment()->active())
    augmenter_.emplace(*split_->augment(), split_->height(), split_->width(), split_->channels(), seed_);
}

namespace {
// The producer's staging buffer for images read before augmentation (one per producer thread).
float* staging(int64_t floats) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < floats) buf.resize(static_cast<size_t>(floats));
  return buf.data();
}
}  // namespace

void ShardedLoader::read_images(const int64_t* idx, int64_t n, int64_t epoch, float* out) const {
  if (n == 0) return;
  if (!augmenter_) {
    split_->read_float(idx, n, out);
    return;
  }
  float* raw = staging(n * split_->sample_elems());
  split_->read_float(idx, n, raw);
  augmenter_->apply_batch(epoch, idx, n, raw, out);
}

int64_t ShardedLoader::positions() const { return pairs_ ? pairs_->size() : split_->size(); }

ShardedLoader::~ShardedLoader() { stop_producer(); }

int64_t ShardedLoader::steps_per_epoch() const {
  const int64_t n = positions();
  if (policy_ == LastBatch::Drop) return n / global_batch_;
  return (n + global_batch_ - 1) / global_batch_;
}

std::vector<int64_t> ShardedLoader::shard_indices(const std::vector<int64_t>& perm, int64_t step) const {
  const int64_t n_total = static_cast<int64_t>(perm.size());
  const int64_t begin = step * global_batch_;
  int64_t n = std::min(global_batch_, n_total - begin);
  if (policy_ == LastBatch::Pad) n = global_batch_;
  const int64_t lo = rank_ * n / world_, hi = (rank_ + 1) * n / world_;
  std::vector<int64_t> out;
  out.reserve(hi - lo);
  for (int64_t p = lo; p < hi; ++p) out.push_back(perm[(begin + p) % n_total]);  // wraps only when padding
  return out;
}

Batch ShardedLoader::make_batch(const std::vector<int64_t>& perm, int64_t step, int64_t epoch) const {
  Batch b;
  std::vector<int64_t> idx = shard_indices(perm, step);
  const int64_t n_total = static_cast<int64_t>(perm.size());
  b.global_count = policy_ == LastBatch::Pad ? global_batch_ : std::min(global_batch_, n_total - step * global_batch_);
  b.local_count = static_cast<int64_t>(idx.size());
  b.step = step;
  Shape xs = {b.local_count};
  for (int64_t d : split_->sample_shape()) xs.push_back(d);
  b.x = Tensor(xs);
  b.y = Tensor({b.local_count});
  float* y = b.y.data();
  if (pairs_) {
    // idx holds pair positions: draw each pair, then read both images.
    const int64_t draw_epoch = split_->pairs_fixed() ? 0 : epoch;
    std::vector<int64_t> first(b.local_count), second(b.local_count);
    for (int64_t k = 0; k < b.local_count; ++k) {
      const Pair pr = pairs_->draw(draw_epoch, idx[k]);
      first[k] = pr.a;
      second[k] = pr.b;
      y[k] = static_cast<float>(pr.label);
    }
    b.extra_x.emplace_back(xs);
    read_images(first.data(), b.local_count, epoch, b.x.data());
    read_images(second.data(), b.local_count, epoch, b.extra_x[0].data());
    return b;
  }
  read_images(idx.data(), b.local_count, epoch, b.x.data());
  const auto& labels = split_->labels();
  for (int64_t k = 0; k < b.local_count; ++k) y[k] = static_cast<float>(labels[idx[k]]);
  return b;
}

void ShardedLoader::stop_producer() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  not_full_.notify_all();
  not_empty_.notify_all();
  if (producer_.joinable()) producer_.join();
  std::lock_guard<std::mutex> lock(mu_);
  queue_.clear();
  stop_ = false;
  done_ = true;
  error_ = nullptr;
}

void ShardedLoader::start_epoch(int64_t epoch, int64_t first_step) {
  stop_producer();
  LS_REQUIRE(first_step >= 0 && first_step <= steps_per_epoch(), DataError, "cannot resume at step ", first_step,
             " of an epoch with ", steps_per_epoch(), " steps (", split_->where(), ")");
  std::vector<int64_t> perm;
  if (pairs_) {
    perm.resize(pairs_->size());  // positions; each is already a random draw
    std::iota(perm.begin(), perm.end(), 0);
  } else if (shuffle_) {
    perm = epoch_permutation(split_->size(), seed_, epoch);
  } else {
    perm.resize(split_->size());
    std::iota(perm.begin(), perm.end(), 0);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = false;
    started_ = true;
  }
  producer_ = std::thread(&ShardedLoader::produce, this, std::move(perm), first_step, epoch);
}

void ShardedLoader::produce(std::vector<int64_t> perm, int64_t first_step, int64_t epoch) {
  h5::quiet_this_thread();
  const size_t capacity = static_cast<size_t>(prefetch_);
  const size_t resume_below = capacity - std::max<size_t>(1, capacity / 2) + 1;  // sleep until size < this
  const size_t wake_at = std::max<size_t>(1, capacity / 2);                       // consumer's threshold
  try {
    const int64_t steps = steps_per_epoch();
    for (int64_t step = first_step; step < steps; ++step) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        if (queue_.size() >= capacity) {
          producer_waiting_ = true;
          not_full_.wait(lock, [&] { return stop_ || queue_.size() < resume_below; });
          producer_waiting_ = false;
        }
        if (stop_) break;
      }
      Batch b = make_batch(perm, step, epoch);
      bool wake = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        queue_.push_back(std::move(b));
        wake = consumer_waiting_ && (queue_.size() >= wake_at || step + 1 == steps);
      }
      if (wake) not_empty_.notify_one();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = std::current_exception();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
  }
  not_empty_.notify_all();
}

bool ShardedLoader::next(Batch& out) {
  std::unique_lock<std::mutex> lock(mu_);
  LS_CHECK(started_, "ShardedLoader::next before start_epoch");
  if (queue_.empty() && !done_) {
    const size_t wake_at = std::max<size_t>(1, static_cast<size_t>(prefetch_) / 2);
    consumer_waiting_ = true;
    not_empty_.wait(lock, [&] { return queue_.size() >= wake_at || done_; });
    consumer_waiting_ = false;
  }
  if (!queue_.empty()) {
    out = std::move(queue_.front());
    queue_.pop_front();
    const size_t resume_below = static_cast<size_t>(prefetch_) - std::max<size_t>(1, prefetch_ / 2) + 1;
    const bool wake = producer_waiting_ && queue_.size() < resume_below;
    lock.unlock();
    if (wake) not_full_.notify_one();
    return true;
  }
  if (error_) {
    std::exception_ptr e = error_;
    error_ = nullptr;
    std::rethrow_exception(e);
  }
  return false;
}

}  // namespace lockstep::data
