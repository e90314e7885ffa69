#include "data/pairs.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"
#include "data/dataset.h"

namespace lockstep::data {

namespace {
constexpr uint64_t kPairTag = 0x5041495253ull;  // "PAIRS"

// Uniform in [0, n) from 64 random bits: floor(r * n / 2^64) (bias below n / 2^64).
int64_t uniform_below(uint32_t hi, uint32_t lo, int64_t n) {
  const uint64_t r = (static_cast<uint64_t>(hi) << 32) | lo;
  return static_cast<int64_t>((static_cast<unsigned __int128>(r) * static_cast<uint64_t>(n)) >> 64);
}
}  // namespace

PairSampler::PairSampler(const Split& split, PairSpec spec, uint64_t seed) : spec_(spec), seed_(seed) {
  LS_REQUIRE(spec_.same_fraction >= 0.0 && spec_.same_fraction <= 1.0, ConfigError,
             "data.pairs.same_fraction must be in [0, 1], got ", spec_.same_fraction);
  LS_REQUIRE(spec_.same_label == 0 || spec_.same_label == 1, ConfigError,
             "data.pairs.same_label must be 0 or 1, got ", spec_.same_label);
  LS_REQUIRE(spec_.per_epoch >= 0, ConfigError, "data.pairs.per_epoch must be >= 0, got ", spec_.per_epoch);
  labels_ = split.labels();
  n_ = static_cast<int64_t>(labels_.size());
  size_ = spec_.per_epoch > 0 ? spec_.per_epoch : n_;

  int64_t num_classes = split.num_classes();
  for (int32_t y : labels_) num_classes = std::max<int64_t>(num_classes, int64_t{y} + 1);
  std::vector<int64_t> count(num_classes, 0);
  for (int32_t y : labels_) {
    LS_CHECK(y >= 0, "negative label ", y, " in split ", split.name());
    ++count[y];
  }
  class_begin_.assign(num_classes + 1, 0);
  for (int64_t k = 0; k < num_classes; ++k) class_begin_[k + 1] = class_begin_[k] + count[k];
  by_class_.resize(n_);
  rank_in_class_.resize(n_);
  std::vector<int64_t> fill(num_classes, 0);
  for (int64_t i = 0; i < n_; ++i) {
    const int32_t y = labels_[i];
    rank_in_class_[i] = fill[y]++;
    by_class_[class_begin_[y] + rank_in_class_[i]] = i;
  }

  if (size_ == 0) return;  // nothing to draw
  LS_REQUIRE(n_ > 0, DataError, "data.pairs: the ", split.name(), " split (", split.where(),
             ") has no images to pair, but per_epoch = ", spec_.per_epoch);
  const int64_t same_total = static_cast<int64_t>(std::floor(static_cast<double>(size_) * spec_.same_fraction));
  const bool need_same = same_total > 0, need_diff = same_total < size_;
  int64_t present = 0;
  for (int64_t k = 0; k < num_classes; ++k) present += count[k] > 0;
  LS_REQUIRE(!need_diff || present >= 2, DataError, "data.pairs: the ", split.name(), " split (", split.where(),
             ") holds ", present, " class", present == 1 ? "" : "es",
             "; different-class pairs need at least 2 (same_fraction = ", spec_.same_fraction, ")");
  if (need_same)
    for (int64_t k = 0; k < num_classes; ++k)
      LS_REQUIRE(count[k] != 1, DataError, "data.pairs: class ", k, " of the ", split.name(), " split (",
                 split.where(), ") has a single image, so it cannot form a same-class pair (same_fraction = ",
                 spec_.same_fraction, "); drop the class or add images");
}

bool PairSampler::is_same(int64_t p) const {
  const double f = spec_.same_fraction;
  return std::floor(static_cast<double>(p + 1) * f) - std::floor(static_cast<double>(p) * f) == 1.0;
}

Pair PairSampler::draw(int64_t epoch, int64_t p) const {
  LS_CHECK(p >= 0 && p < size_, "pair position ", p, " outside an epoch of ", size_);
  const rng::Stream s{seed_, rng::mix(rng::mix(kPairTag, static_cast<uint64_t>(epoch)), static_cast<uint64_t>(p))};
  const auto w = s.block(0);
  Pair out;
  out.a = uniform_below(w[0], w[1], n_);
  const int32_t c = labels_[out.a];
  const int64_t begin = class_begin_[c], m = class_begin_[c + 1] - begin;
  if (is_same(p)) {
    // Uniform over the class's other m - 1 images: skip a's own slot.
    int64_t j = uniform_below(w[2], w[3], m - 1);
    if (j >= rank_in_class_[out.a]) ++j;
    out.b = by_class_[begin + j];
    out.label = spec_.same_label;
  } else {
    // Uniform over the n - m images of other classes: by_class_ with class c's block cut out.
    int64_t j = uniform_below(w[2], w[3], n_ - m);
    if (j >= begin) j += m;
    out.b = by_class_[j];
    out.label = 1 - spec_.same_label;
  }
  return out;
}

}  // namespace lockstep::data
