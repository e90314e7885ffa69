// Image pairs for two-input (comparison) models, as in Hands-On ML ch. 11 exercise 10: each position
// of an epoch is a pair (a, b) of split indices with a label telling whether the two images share a
// class.
//
// Position p of an epoch of N positions is a same-class pair iff floor((p+1)f) - floor(pf) == 1, so
// every prefix of P positions holds exactly floor(P f) same pairs, evenly spread (f = 0.5: the odd
// positions; every batch of even size is half same, half different).
// Image a is uniform over the split, from the Philox stream {seed, mix(mix(kPairTag, epoch), p)};
// same: b is uniform among the other images of a's class (b != a); different: b is uniform among the
// images of every other class. Both are O(1): the split's indices sorted by class, with the cumulative
// class counts, address "class c minus a" and "everything but class c" directly (no rejection loop).
// A draw is a pure function of (seed, epoch, p): identical on every rank, for any rank count.
#pragma once

#include <cstdint>
#include <vector>

namespace lockstep::data {

class Split;

struct PairSpec {
  double same_fraction = 0.5;  // in [0, 1]
  int same_label = 1;          // the label of a same-class pair (0 or 1); a different-class pair gets 1 - same_label
  int64_t per_epoch = 0;       // pairs per epoch; 0 = the split's size
};

struct Pair {
  int64_t a, b;  // split indices
  int label;
};

// Draws the pairs of one split. Thread-safe (const after construction); keeps no reference to the split.
class PairSampler {
 public:
  // Builds the per-class index tables from split.labels(). DataError when draws are needed and the
  // split cannot give them: fewer than 2 classes present while different pairs are needed
  // (same_fraction < 1), or a class with a single image while same pairs are needed (same_fraction > 0).
  PairSampler(const Split& split, PairSpec spec, uint64_t seed);

  Pair draw(int64_t epoch, int64_t position) const;
  // Whether position p is a same-class pair (depends on the fraction only).
  bool is_same(int64_t position) const;
  // Pairs per epoch: spec.per_epoch, or the split's size when that is 0.
  int64_t size() const { return size_; }
  const PairSpec& spec() const { return spec_; }

 private:
  PairSpec spec_;
  uint64_t seed_;
  int64_t size_ = 0;
  int64_t n_ = 0;                   // images in the split
  std::vector<int32_t> labels_;     // per image
  std::vector<int64_t> by_class_;   // image indices sorted by (class, index)
  std::vector<int64_t> class_begin_;  // class k's images are by_class_[class_begin_[k] .. class_begin_[k+1])
  std::vector<int64_t> rank_in_class_;  // image i is by_class_[class_begin_[label i] + rank_in_class_[i]]
};

}  // namespace lockstep::data
