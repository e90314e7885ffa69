// Image pairs (data/pairs.h) and the training subset: the sampler's exact class balance, its
// determinism and uniformity, pairs through the sharded loader on 1, 2 and 4 ranks, the `pairs:` and
// `subset:` keys of the data: section.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/pairs.h"
#include "test_util.h"

namespace lockstep::data {
namespace {

using testing::TempDir;

using testing::parse;
using testing::error_of;

// A file like write_index_file (pixels = little-endian bytes of the sample's index, 2x2x1) whose
// training labels are `labels`; test split: 10 samples, label i % 10.
void write_labelled_file(const std::string& path, const std::vector<int32_t>& labels) {
  testing::write_index_file(path, static_cast<int64_t>(labels.size()), 10, labels);
}

class PairsTest : public ::testing::Test {
 protected:
  static constexpr int64_t kN = 1000;
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    testing::write_index_file(dir_->file("idx.h5"), kN, 40);
    // Unequal classes: class k has 10 * (k + 1) images (550 in all), interleaved.
    std::vector<int32_t> labels;
    std::vector<int> left(10);
    for (int k = 0; k < 10; ++k) left[k] = 10 * (k + 1);
    for (bool any = true; any;) {
      any = false;
      for (int k = 0; k < 10; ++k)
        if (left[k] > 0) labels.push_back(k), --left[k], any = true;
    }
    write_labelled_file(dir_->file("skewed.h5"), labels);
  }
  static void TearDownTestSuite() { delete dir_; }
  static DataConfig config(const std::string& file = "idx.h5") {
    DataConfig c;
    c.path = dir_->file(file);
    c.cache = CacheMode::Memory;
    return c;
  }
  static Dataset open_paired(PairSpec spec, const std::string& file = "idx.h5", CacheMode cache = CacheMode::Memory) {
    DataConfig c = config(file);
    c.cache = cache;
    c.pairs = spec;
    c.validation.kind = ValidationSpec::Kind::Last;
    c.validation.count = 100;
    return open_dataset(c);
  }
  static TempDir* dir_;
};
TempDir* PairsTest::dir_ = nullptr;

// Every pair obeys its kind; every prefix holds exactly floor(P f) same pairs.
void check_balance(const Split& split, PairSpec spec, uint64_t seed, int64_t epoch) {
  PairSampler s(split, spec, seed);
  const auto& y = split.labels();
  int64_t same = 0;
  for (int64_t p = 0; p < s.size(); ++p) {
    Pair pr = s.draw(epoch, p);
    ASSERT_TRUE(pr.a >= 0 && pr.a < split.size() && pr.b >= 0 && pr.b < split.size()) << p;
    const bool is_same = s.is_same(p);
    if (is_same) {
      ++same;
      ASSERT_EQ(y[pr.a], y[pr.b]) << "position " << p;
      ASSERT_NE(pr.a, pr.b) << "position " << p;
      ASSERT_EQ(pr.label, spec.same_label);
    } else {
      ASSERT_NE(y[pr.a], y[pr.b]) << "position " << p;
      ASSERT_EQ(pr.label, 1 - spec.same_label);
    }
    ASSERT_EQ(same, static_cast<int64_t>(std::floor(static_cast<double>(p + 1) * spec.same_fraction)))
        << "prefix " << p + 1 << " f=" << spec.same_fraction;
  }
}

TEST_F(PairsTest, ExactClassBalanceOverEveryPrefix) {
  Dataset ds = open_dataset(config());
  Dataset sk = open_dataset(config("skewed.h5"));
  for (double f : {0.0, 0.5, 0.25, 1.0 / 3.0, 0.7, 0.999, 1.0}) {
    for (int label : {0, 1}) {
      PairSpec spec{f, label, 0};
      check_balance(*ds.train, spec, 11, 0);
      check_balance(*sk.train, spec, 12, 3);
      spec.per_epoch = 777;
      check_balance(*ds.train, spec, 13, 1);
    }
  }
  // f = 0.5: every even-sized batch aligned on an even position is exactly half same pairs.
  PairSampler s(*ds.train, PairSpec{}, 1);
  for (int64_t b = 0; b + 32 <= s.size(); b += 32) {
    int same = 0;
    for (int64_t p = b; p < b + 32; ++p) same += s.is_same(p);
    ASSERT_EQ(same, 16);
  }
  EXPECT_EQ(s.size(), ds.train->size());
  EXPECT_EQ(PairSampler(*ds.train, PairSpec{0.5, 1, 64}, 1).size(), 64);
}

TEST_F(PairsTest, DrawsArePureFunctionsOfSeedEpochAndPosition) {
  Dataset ds = open_dataset(config());
  PairSampler s1(*ds.train, PairSpec{}, 5), s2(*ds.train, PairSpec{}, 5), other_seed(*ds.train, PairSpec{}, 6);
  int64_t differ_epoch = 0, differ_seed = 0;
  for (int64_t p = 0; p < s1.size(); ++p) {
    Pair a = s1.draw(2, p), b = s2.draw(2, p);
    ASSERT_EQ(a.a, b.a);
    ASSERT_EQ(a.b, b.b);
    ASSERT_EQ(a.label, b.label);
    Pair c = s1.draw(3, p), d = other_seed.draw(2, p);
    differ_epoch += c.a != a.a || c.b != a.b;
    differ_seed += d.a != a.a || d.b != a.b;
  }
  // A fresh draw: almost every position changes (a repeat has probability ~1/N per position).
  EXPECT_GT(differ_epoch, s1.size() * 9 / 10);
  EXPECT_GT(differ_seed, s1.size() * 9 / 10);
}

TEST_F(PairsTest, DrawsAreRoughlyUniform) {
  Dataset sk = open_dataset(config("skewed.h5"));
  const Split& split = *sk.train;
  const auto& y = split.labels();
  const int64_t n = split.size();
  ASSERT_EQ(n, 550);
  std::vector<int64_t> size(10, 0);
  for (int32_t v : y) ++size[v];
  constexpr int64_t kDraws = 20000;
  PairSampler s(split, PairSpec{0.5, 1, kDraws}, 77);
  std::vector<int64_t> a_class(10, 0), b_diff_class(10, 0), b_same_rank(10, 0);
  std::vector<int64_t> a_class_diff(10, 0);
  // Same pairs within class 9 (100 images): b's position among them.
  std::map<int64_t, int64_t> class9_rank;
  for (int64_t i = 0, r = 0; i < n; ++i)
    if (y[i] == 9) class9_rank[i] = r++;
  std::vector<int64_t> class9_b_decile(10, 0);
  int64_t class9_same = 0;
  for (int64_t p = 0; p < kDraws; ++p) {
    Pair pr = s.draw(0, p);
    ++a_class[y[pr.a]];
    if (!s.is_same(p)) {
      ++b_diff_class[y[pr.b]];
      ++a_class_diff[y[pr.a]];
    } else if (y[pr.a] == 9) {
      ++class9_same;
      ++class9_b_decile[class9_rank[pr.b] / 10];
    }
  }
  // a: uniform over images, so class k appears with frequency size[k] / n.
  for (int k = 0; k < 10; ++k) {
    const double expected = static_cast<double>(kDraws) * size[k] / n;
    EXPECT_NEAR(a_class[k], expected, 0.2 * expected) << "class " << k;
  }
  // Different pairs: b's class k has probability sum over a's classes c != k of P(c) size[k] / (n - size[c]).
  for (int k = 0; k < 10; ++k) {
    double expected = 0;
    for (int c = 0; c < 10; ++c)
      if (c != k) expected += static_cast<double>(a_class_diff[c]) * size[k] / static_cast<double>(n - size[c]);
    EXPECT_NEAR(b_diff_class[k], expected, 0.2 * expected) << "class " << k;
  }
  // Same pairs in class 9: b spreads evenly over the class's images.
  for (int d = 0; d < 10; ++d) {
    const double expected = class9_same / 10.0;
    EXPECT_NEAR(class9_b_decile[d], expected, 0.2 * expected) << "decile " << d;
  }
}

TEST_F(PairsTest, OpenDatasetPairsEverySplitTrainingFreshEvaluationFixed) {
  Dataset plain = open_dataset(config());
  EXPECT_FALSE(plain.train->pairing().has_value());
  EXPECT_EQ(plain.train->num_inputs(), 1);
  EXPECT_FALSE(plain.train->pairs_fixed());

  Dataset ds = open_paired(PairSpec{0.5, 1, 300});
  ASSERT_TRUE(ds.train->pairing() && ds.validation->pairing() && ds.test->pairing());
  EXPECT_EQ(ds.train->num_inputs(), 2);
  EXPECT_EQ(ds.train->sample_shape(), (Shape{2, 2}));
  EXPECT_FALSE(ds.train->pairs_fixed());
  EXPECT_TRUE(ds.validation->pairs_fixed());
  EXPECT_TRUE(ds.test->pairs_fixed());
  EXPECT_EQ(ds.train->pairing()->per_epoch, 300);
  EXPECT_EQ(ds.validation->pairing()->per_epoch, 0);
  EXPECT_EQ(ds.test->pairing()->per_epoch, 0);

  ShardedLoader tr(ds.train, 32, 0, 1, 9, true, LastBatch::Keep);
  EXPECT_EQ(tr.steps_per_epoch(), 10);  // 300 pairs
  ShardedLoader va(ds.validation, 32, 0, 1, 9, false, LastBatch::Keep);
  EXPECT_EQ(va.steps_per_epoch(), 4);  // 100 images, 100 pairs
}

// Rank `rank`'s batches of one epoch as (a, b, label) triples decoded from x / extra_x.
struct Triple {
  int64_t a, b;
  int label;
  bool operator==(const Triple&) const = default;
};
std::vector<std::vector<Triple>> pair_epoch(std::shared_ptr<const Split> split, int64_t B, int rank, int world,
                                            LastBatch p, int64_t e, uint64_t seed = 1234) {
  ShardedLoader loader(std::move(split), B, rank, world, seed, true, p, 2);
  loader.start_epoch(e);
  std::vector<std::vector<Triple>> out;
  Batch b;
  while (loader.next(b)) {
    EXPECT_EQ(b.extra_x.size(), 1u);
    if (b.extra_x.size() != 1) return out;
    EXPECT_EQ(b.extra_x[0].shape(), b.x.shape());
    EXPECT_EQ(b.y.numel(), b.local_count);
    std::vector<Triple> v;
    for (int64_t k = 0; k < b.local_count; ++k)
      v.push_back({testing::decode_index(b.x.data() + k * 4), testing::decode_index(b.extra_x[0].data() + k * 4),
                   static_cast<int>(b.y.at(k))});
    out.push_back(v);
  }
  EXPECT_EQ(static_cast<int64_t>(out.size()), loader.steps_per_epoch());
  return out;
}

TEST_F(PairsTest, LoaderPairsAreIndependentOfRankCount) {
  for (CacheMode cache : {CacheMode::Memory, CacheMode::Stream}) {
    for (int64_t per_epoch : {int64_t{0}, int64_t{250}}) {
      Dataset ds = open_paired(PairSpec{0.5, 1, per_epoch}, "idx.h5", cache);
      const int64_t n_pos = per_epoch > 0 ? per_epoch : ds.train->size();
      PairSampler sampler(*ds.train, *ds.train->pairing(), 1234);
      for (LastBatch p : {LastBatch::Keep, LastBatch::Drop, LastBatch::Pad}) {
        for (int64_t B : {7, 32}) {
          const int64_t e = 1;
          auto single = pair_epoch(ds.train, B, 0, 1, p, e);
          // The single-process epoch is the sampler's draw of positions 0, 1, ... (wrapping when padding).
          int64_t pos = 0;
          for (auto& batch : single)
            for (const Triple& t : batch) {
              // Indices within the training split equal the file's (validation is the last 100).
              Pair pr = sampler.draw(e, pos++ % n_pos);
              ASSERT_EQ(t, (Triple{pr.a, pr.b, pr.label}));
              ASSERT_EQ(t.label, (t.a % 10 == t.b % 10) ? 1 : 0);
            }
          if (p == LastBatch::Keep) {
            EXPECT_EQ(pos, n_pos);
          }
          if (p == LastBatch::Drop) {
            EXPECT_EQ(pos, (n_pos / B) * B);
          }
          if (p == LastBatch::Pad) {
            EXPECT_EQ(pos, ((n_pos + B - 1) / B) * B);
          }
          for (int W : {2, 4}) {
            std::vector<std::vector<std::vector<Triple>>> ranks;
            for (int r = 0; r < W; ++r) ranks.push_back(pair_epoch(ds.train, B, r, W, p, e));
            for (int r = 0; r < W; ++r) ASSERT_EQ(ranks[r].size(), single.size());
            for (size_t s = 0; s < single.size(); ++s) {
              std::vector<Triple> cat;
              for (int r = 0; r < W; ++r) cat.insert(cat.end(), ranks[r][s].begin(), ranks[r][s].end());
              ASSERT_EQ(cat, single[s]) << "step " << s << " W=" << W << " B=" << B << " " << last_batch_name(p);
            }
          }
        }
      }
    }
  }
}

TEST_F(PairsTest, TrainingPairsChangePerEpochEvaluationPairsDoNot) {
  Dataset ds = open_paired(PairSpec{});
  EXPECT_NE(pair_epoch(ds.train, 32, 0, 1, LastBatch::Keep, 0), pair_epoch(ds.train, 32, 0, 1, LastBatch::Keep, 1));
  EXPECT_EQ(pair_epoch(ds.train, 32, 0, 1, LastBatch::Keep, 4), pair_epoch(ds.train, 32, 0, 1, LastBatch::Keep, 4));
  for (auto split : {ds.validation, ds.test}) {
    auto e0 = pair_epoch(split, 16, 0, 1, LastBatch::Keep, 0);
    EXPECT_EQ(e0, pair_epoch(split, 16, 0, 1, LastBatch::Keep, 1));
    auto r0 = pair_epoch(split, 16, 0, 2, LastBatch::Keep, 7), r1 = pair_epoch(split, 16, 1, 2, LastBatch::Keep, 7);
    ASSERT_EQ(r0.size(), e0.size());
    for (size_t s = 0; s < e0.size(); ++s) {
      std::vector<Triple> cat = r0[s];
      cat.insert(cat.end(), r1[s].begin(), r1[s].end());
      EXPECT_EQ(cat, e0[s]);
    }
    EXPECT_EQ(e0, pair_epoch(split, 16, 0, 1, LastBatch::Keep, 9));
    int64_t count = 0;
    for (auto& b : e0) count += static_cast<int64_t>(b.size());
    EXPECT_EQ(count, split->size());  // one pair per image
  }
  // Validation pairs come from the validation images (the file's last 100), test pairs from the test split.
  for (auto& b : pair_epoch(ds.validation, 16, 0, 1, LastBatch::Keep, 0))
    for (const Triple& t : b) {
      ASSERT_TRUE(t.a >= kN - 100 && t.a < kN && t.b >= kN - 100 && t.b < kN);
    }
  for (auto& b : pair_epoch(ds.test, 16, 0, 1, LastBatch::Keep, 0))
    for (const Triple& t : b) {
      ASSERT_TRUE(t.a >= 1000000 && t.b >= 1000000);
    }
  // Unpaired splits keep extra_x empty.
  Dataset plain = open_dataset(config());
  ShardedLoader loader(plain.train, 8, 0, 1, 1, true, LastBatch::Keep);
  loader.start_epoch(0);
  Batch b;
  ASSERT_TRUE(loader.next(b));
  EXPECT_TRUE(b.extra_x.empty());
}

TEST_F(PairsTest, LabelConvention) {
  for (int same_label : {0, 1}) {
    Dataset ds = open_paired(PairSpec{0.5, same_label, 0});
    int64_t same = 0, diff = 0;
    for (auto& b : pair_epoch(ds.train, 32, 0, 1, LastBatch::Keep, 0))
      for (const Triple& t : b) {
        const bool s = t.a % 10 == t.b % 10;
        ASSERT_EQ(t.label, s ? same_label : 1 - same_label);
        (s ? same : diff)++;
      }
    EXPECT_EQ(same, ds.train->size() / 2);
    EXPECT_EQ(diff, ds.train->size() - ds.train->size() / 2);
  }
}

TEST_F(PairsTest, RefusesSplitsThatCannotGiveTheirPairs) {
  // One class: no different pairs.
  DataConfig c = config();
  c.classes = {3};
  c.pairs = PairSpec{};
  std::string m = error_of([&] { open_dataset(c); });
  EXPECT_NE(m.find("DataError"), std::string::npos) << m;
  EXPECT_NE(m.find("at least 2"), std::string::npos) << m;
  c.pairs = PairSpec{1.0, 1, 0};  // same pairs only: fine
  EXPECT_EQ(error_of([&] { open_dataset(c); }), "<no error>");

  // A class with a single image: no same pair for it.
  std::vector<int32_t> labels;
  for (int i = 0; i < 40; ++i) labels.push_back(i % 4);
  labels.push_back(7);
  write_labelled_file(dir_->file("single.h5"), labels);
  DataConfig s = config("single.h5");
  s.pairs = PairSpec{};
  m = error_of([&] { open_dataset(s); });
  EXPECT_NE(m.find("class 7"), std::string::npos) << m;
  EXPECT_NE(m.find("single image"), std::string::npos) << m;
  s.pairs = PairSpec{0.0, 1, 0};  // different pairs only: fine
  EXPECT_EQ(error_of([&] { open_dataset(s); }), "<no error>");
}

TEST(PairsConfigTest, ParsesPairsAndSubset) {
  DataConfig d = parse("data: {path: f.h5}");
  EXPECT_FALSE(d.pairs.has_value());
  EXPECT_FALSE(d.subset.active());
  DataConfig e = parse("data: {path: f.h5, pairs: {}, subset: {}}");
  ASSERT_TRUE(e.pairs.has_value());
  EXPECT_EQ(e.pairs->same_fraction, 0.5);
  EXPECT_EQ(e.pairs->same_label, 1);
  EXPECT_EQ(e.pairs->per_epoch, 0);
  EXPECT_FALSE(e.subset.active());
  DataConfig f = parse(
      "data:\n  path: f.h5\n  pairs: {same_fraction: 0.25, same_label: 0, per_epoch: 4096}\n"
      "  subset: {start: 55000}\n");
  EXPECT_EQ(f.pairs->same_fraction, 0.25);
  EXPECT_EQ(f.pairs->same_label, 0);
  EXPECT_EQ(f.pairs->per_epoch, 4096);
  EXPECT_EQ(f.subset.start, 55000);
  EXPECT_FALSE(f.subset.stop.has_value());
  DataConfig g = parse("data: {path: f.h5, subset: {stop: 55000}, validation: {last: 5000}}");
  EXPECT_EQ(g.subset.stop, 55000);
  EXPECT_FALSE(g.subset.start.has_value());
  EXPECT_EQ(parse("data: {path: f.h5, subset: {start: -5000, stop: -1}}").subset.start, -5000);
}

TEST(PairsConfigTest, RefusesBadValuesNamingFileLineAndKey) {
  auto msg = [](const std::string& yaml) { return error_of([&] { parse(yaml); }); };
  std::string m = msg("data:\n  path: f.h5\n  pairs: {same_fraction: 1.5}\n");
  EXPECT_NE(m.find("ConfigError"), std::string::npos) << m;
  EXPECT_NE(m.find("run.yaml:3"), std::string::npos) << m;
  EXPECT_NE(m.find("same_fraction"), std::string::npos) << m;
  m = msg("data:\n  path: f.h5\n  pairs: {same_label: 2}\n");
  EXPECT_NE(m.find("run.yaml:3"), std::string::npos) << m;
  EXPECT_NE(m.find("same_label"), std::string::npos) << m;
  EXPECT_NE(m.find("0 or 1"), std::string::npos) << m;
  m = msg("data: {path: f.h5, pairs: {same_fraction: -0.1}}");
  EXPECT_NE(m.find("same_fraction"), std::string::npos) << m;
  m = msg("data: {path: f.h5, pairs: {per_epoch: -3}}");
  EXPECT_NE(m.find("per_epoch"), std::string::npos) << m;
  m = msg("data: {path: f.h5, pairs: {same_frac: 0.5}}");
  EXPECT_NE(m.find("same_fraction"), std::string::npos) << m;  // suggests the nearest key
  m = msg("data: {path: f.h5, pairs: true}");
  EXPECT_NE(m.find("pairs"), std::string::npos) << m;
  EXPECT_NE(m.find("mapping"), std::string::npos) << m;
  m = msg("data: {path: f.h5, pair: {}}");
  EXPECT_NE(m.find("pairs"), std::string::npos) << m;
  m = msg("data:\n  path: f.h5\n  subset: {start: 10, stop: 10}\n");
  EXPECT_NE(m.find("ConfigError"), std::string::npos) << m;
  EXPECT_NE(m.find("run.yaml:3"), std::string::npos) << m;
  EXPECT_NE(m.find("subset"), std::string::npos) << m;
  m = msg("data: {path: f.h5, subset: {start: 20, stop: 10}}");
  EXPECT_NE(m.find("start = 20 >= stop = 10"), std::string::npos) << m;
  m = msg("data: {path: f.h5, subset: {begin: 20}}");
  EXPECT_NE(m.find("start"), std::string::npos) << m;
  m = msg("data: {path: f.h5, subset: 5}");
  EXPECT_NE(m.find("mapping"), std::string::npos) << m;
}

class SubsetTest : public ::testing::Test {
 protected:
  static constexpr int64_t kN = 100;
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    testing::write_index_file(dir_->file("idx.h5"), kN, 40);
  }
  static void TearDownTestSuite() { delete dir_; }
  static Dataset open(const std::string& data_keys, CacheMode cache = CacheMode::Memory) {
    DataConfig c = parse("data: {path: idx.h5" + data_keys + "}", dir_->path());
    c.cache = cache;
    return open_dataset(c);
  }
  // The file rows (decoded pixel values) of a whole split, in order.
  static std::vector<int64_t> rows(const Split& s) {
    std::vector<int64_t> idx(s.size());
    for (int64_t i = 0; i < s.size(); ++i) idx[i] = i;
    std::vector<float> buf(s.size() * 4);
    if (s.size() > 0) s.read_float(idx.data(), s.size(), buf.data());
    std::vector<int64_t> out;
    for (int64_t i = 0; i < s.size(); ++i) out.push_back(testing::decode_index(buf.data() + 4 * i));
    return out;
  }
  static std::vector<int64_t> range(int64_t lo, int64_t hi, int64_t step = 1) {
    std::vector<int64_t> v;
    for (int64_t i = lo; i < hi; i += step) v.push_back(i);
    return v;
  }
  static TempDir* dir_;
};
TempDir* SubsetTest::dir_ = nullptr;

TEST_F(SubsetTest, SlicesTheFilesTrainingSplitBeforeValidationAndFiltering) {
  for (CacheMode cache : {CacheMode::Memory, CacheMode::Stream}) {
    // The exercise's split #2: the last images; split #1: the first ones.
    Dataset last = open(", subset: {start: 55}", cache);
    EXPECT_EQ(rows(*last.train), range(55, 100));
    EXPECT_EQ(last.train->labels().front(), 5);
    Dataset first = open(", subset: {stop: 55}", cache);
    EXPECT_EQ(rows(*first.train), range(0, 55));
    EXPECT_EQ(rows(*first.test), range(1000000, 1000040));  // test untouched
    EXPECT_EQ(rows(*open(", subset: {start: 10, stop: 60}", cache).train), range(10, 60));
    EXPECT_EQ(rows(*open(", subset: {start: -5}", cache).train), range(95, 100));
    EXPECT_EQ(rows(*open(", subset: {start: -30, stop: -10}", cache).train), range(70, 90));
    EXPECT_EQ(rows(*open(", subset: {stop: 100}", cache).train), range(0, 100));
    // The validation split is carved from the subset.
    Dataset v = open(", subset: {start: 10, stop: 60}, validation: {last: 5}", cache);
    EXPECT_EQ(rows(*v.train), range(10, 55));
    EXPECT_EQ(rows(*v.validation), range(55, 60));
    Dataset vf = open(", subset: {start: 20, stop: 40}, validation: {first: 4}", cache);
    EXPECT_EQ(rows(*vf.validation), range(20, 24));
    EXPECT_EQ(rows(*vf.train), range(24, 40));
    // Then classes are filtered, then limits cut the training split.
    Dataset f = open(", subset: {start: 10, stop: 40}, classes: [3]", cache);
    EXPECT_EQ(rows(*f.train), (std::vector<int64_t>{13, 23, 33}));
    EXPECT_EQ(f.train->labels(), (std::vector<int32_t>{0, 0, 0}));
    Dataset l = open(", subset: {start: 50}, limit: 7", cache);
    EXPECT_EQ(rows(*l.train), range(50, 57));
  }
  // Pairs over a subset draw from the subset only.
  Dataset p = open(", subset: {start: 60, stop: 80}, pairs: {}");
  ShardedLoader loader(p.train, 8, 0, 1, 3, true, LastBatch::Keep);
  loader.start_epoch(0);
  Batch b;
  int64_t count = 0;
  while (loader.next(b))
    for (int64_t k = 0; k < b.local_count; ++k, ++count) {
      int64_t a = testing::decode_index(b.x.data() + 4 * k), c = testing::decode_index(b.extra_x[0].data() + 4 * k);
      ASSERT_TRUE(a >= 60 && a < 80 && c >= 60 && c < 80);
    }
  EXPECT_EQ(count, 20);
}

TEST_F(SubsetTest, RefusesSlicesOutsideTheFileNamingTheKey) {
  auto msg = [&](const std::string& keys) { return error_of([&] { open(keys); }); };
  std::string m = msg(", subset: {stop: 101}");
  EXPECT_NE(m.find("DataError"), std::string::npos) << m;
  EXPECT_NE(m.find("data.subset.stop = 101"), std::string::npos) << m;
  EXPECT_NE(m.find("100 images"), std::string::npos) << m;
  EXPECT_NE(m.find("idx.h5"), std::string::npos) << m;
  m = msg(", subset: {start: 100}");
  EXPECT_NE(m.find("data.subset"), std::string::npos) << m;
  EXPECT_NE(m.find("start = 100"), std::string::npos) << m;
  m = msg(", subset: {start: 150}");
  EXPECT_NE(m.find("start = 150"), std::string::npos) << m;
  m = msg(", subset: {start: -10, stop: 20}");  // 90 >= 20
  EXPECT_NE(m.find("selects no images"), std::string::npos) << m;
  m = msg(", subset: {start: -101}");
  EXPECT_NE(m.find("data.subset.start = -101"), std::string::npos) << m;
  m = msg(", subset: {stop: -101}");
  EXPECT_NE(m.find("data.subset.stop = -101"), std::string::npos) << m;
  m = msg(", subset: {start: 90}, validation: {first: 10}");
  EXPECT_NE(m.find("data.subset of /train has 10"), std::string::npos) << m;
  EXPECT_EQ(msg(", subset: {start: 99}"), "<no error>");
}

}  // namespace
}  // namespace lockstep::data
