// Sharding proofs with value == index files over simulated ranks and epochs (style guide habit 14).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <set>

#include "data/dataset.h"
#include "data/loader.h"
#include "test_util.h"

namespace lockstep::data {
namespace {

using testing::TempDir;

class LoaderTest : public ::testing::Test {
 protected:
  static constexpr int64_t kN = 103;
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    testing::write_index_file(dir_->file("idx.h5"), kN, 17);
    DataConfig c;
    c.path = dir_->file("idx.h5");
    c.cache = CacheMode::Memory;
    mem_ = new Dataset(open_dataset(c));
    c.cache = CacheMode::Stream;
    stream_ = new Dataset(open_dataset(c));
  }
  static void TearDownTestSuite() {
    delete mem_;
    delete stream_;
    delete dir_;
  }
  // The sample values of every batch of one epoch for one rank.
  static std::vector<std::vector<int64_t>> epoch(const Dataset& ds, int64_t B, int rank, int world, LastBatch p,
                                                 int64_t e, bool shuffle = true, int64_t first_step = 0,
                                                 std::vector<Batch>* batches = nullptr) {
    ShardedLoader loader(ds.train, B, rank, world, 1234, shuffle, p, 2);
    loader.start_epoch(e, first_step);
    std::vector<std::vector<int64_t>> out;
    Batch b;
    while (loader.next(b)) {
      std::vector<int64_t> v;
      EXPECT_EQ(b.x.shape()[0], b.local_count);
      EXPECT_EQ(b.y.numel(), b.local_count);
      for (int64_t k = 0; k < b.local_count; ++k) {
        v.push_back(testing::decode_index(b.x.data() + k * 4));
        EXPECT_EQ(static_cast<int64_t>(b.y.at(k)), v.back() % 10);
      }
      EXPECT_EQ(b.step, first_step + static_cast<int64_t>(out.size()));
      out.push_back(v);
      if (batches) batches->push_back(b);
    }
    EXPECT_EQ(static_cast<int64_t>(out.size()) + first_step, loader.steps_per_epoch());
    return out;
  }
  static TempDir* dir_;
  static Dataset* mem_;
  static Dataset* stream_;
};
TempDir* LoaderTest::dir_ = nullptr;
Dataset* LoaderTest::mem_ = nullptr;
Dataset* LoaderTest::stream_ = nullptr;

TEST(Permutation, IsAPureFunctionOfSeedAndEpoch) {
  auto a = epoch_permutation(1000, 7, 3), b = epoch_permutation(1000, 7, 3);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, epoch_permutation(1000, 7, 4));
  EXPECT_NE(a, epoch_permutation(1000, 8, 3));
  auto s = a;
  std::sort(s.begin(), s.end());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(s[i], i);
  // Roughly uniform: position of element 0 over many epochs is not stuck.
  std::set<int64_t> pos;
  for (int e = 0; e < 50; ++e) {
    auto p = epoch_permutation(10, 1, e);
    pos.insert(std::find(p.begin(), p.end(), 0) - p.begin());
  }
  EXPECT_GE(pos.size(), 8u);
}

TEST(StepsPerEpoch, KeepsThePartialLastBatchLikeKeras) {
  // 55,000 samples at batch 32: 1,719 steps (Keras keeps the short last batch).
  TempDir d;
  testing::write_index_file(d.file("big.h5"), 55000, 1);
  DataConfig c;
  c.path = d.file("big.h5");
  auto split = open_dataset(c).train;
  EXPECT_EQ(ShardedLoader(split, 32, 0, 1, 0, true, LastBatch::Keep).steps_per_epoch(), 1719);
  EXPECT_EQ(ShardedLoader(split, 32, 3, 4, 0, true, LastBatch::Keep).steps_per_epoch(), 1719);
  EXPECT_EQ(ShardedLoader(split, 32, 0, 1, 0, true, LastBatch::Drop).steps_per_epoch(), 1718);
  EXPECT_EQ(ShardedLoader(split, 32, 0, 1, 0, true, LastBatch::Pad).steps_per_epoch(), 1719);
}

TEST_F(LoaderTest, RankShardsUnionToTheSingleProcessBatch) {
  for (const Dataset* ds : {mem_, stream_}) {
    for (LastBatch p : {LastBatch::Keep, LastBatch::Drop, LastBatch::Pad}) {
      for (int64_t B : {1, 7, 32, 200}) {
        for (int64_t e : {0, 1}) {
          auto single = epoch(*ds, B, 0, 1, p, e);
          for (int W : {2, 3, 4}) {
            std::vector<std::vector<std::vector<int64_t>>> ranks;
            for (int r = 0; r < W; ++r) ranks.push_back(epoch(*ds, B, r, W, p, e));
            for (int r = 0; r < W; ++r) ASSERT_EQ(ranks[r].size(), single.size()) << "rank " << r;
            for (size_t s = 0; s < single.size(); ++s) {
              std::vector<int64_t> cat;
              for (int r = 0; r < W; ++r) cat.insert(cat.end(), ranks[r][s].begin(), ranks[r][s].end());
              ASSERT_EQ(cat, single[s]) << "step " << s << " W=" << W << " B=" << B << " policy "
                                        << last_batch_name(p);
            }
          }
          // Over the epoch: keep covers each sample exactly once; drop at most once; pad covers all.
          std::map<int64_t, int> seen;
          for (auto& b : single)
            for (int64_t v : b) seen[v]++;
          int64_t total = 0;
          for (auto& [v, n] : seen) {
            ASSERT_TRUE(v >= 0 && v < kN);
            total += n;
            if (p != LastBatch::Pad) {
              ASSERT_EQ(n, 1);
            }
          }
          if (p == LastBatch::Keep) {
            EXPECT_EQ(total, kN);
          }
          if (p == LastBatch::Drop) {
            EXPECT_EQ(total, (kN / B) * B);
          }
          if (p == LastBatch::Pad) {
            EXPECT_EQ(static_cast<int64_t>(seen.size()), kN);
            EXPECT_EQ(total, ((kN + B - 1) / B) * B);
          }
          for (auto& b : single)
            if (p != LastBatch::Keep) {
              ASSERT_EQ(static_cast<int64_t>(b.size()), std::min(B, p == LastBatch::Pad ? B : kN));
            }
        }
      }
    }
  }
}

TEST_F(LoaderTest, EpochsShuffleDifferentlyAndEvaluationDoesNot) {
  auto e0 = epoch(*mem_, 10, 0, 1, LastBatch::Keep, 0), e1 = epoch(*mem_, 10, 0, 1, LastBatch::Keep, 1);
  EXPECT_NE(e0, e1);
  EXPECT_EQ(e0, epoch(*stream_, 10, 0, 1, LastBatch::Keep, 0));
  auto ev = epoch(*mem_, 10, 1, 2, LastBatch::Keep, 5, /*shuffle=*/false);
  EXPECT_EQ(ev[0], (std::vector<int64_t>{5, 6, 7, 8, 9}));
  EXPECT_EQ(ev.back(), (std::vector<int64_t>{101, 102}));  // last batch of 3: rank 1 gets [1, 3)
}

TEST_F(LoaderTest, SmallLastBatchStillReachesEveryRank) {
  // N = 103, B = 50: last batch has 3 samples; with 4 ranks rank 0 gets none but still gets the step.
  std::vector<Batch> batches;
  auto r0 = epoch(*mem_, 50, 0, 4, LastBatch::Keep, 0, true, 0, &batches);
  ASSERT_EQ(r0.size(), 3u);
  EXPECT_EQ(batches[2].local_count, 0);
  EXPECT_EQ(batches[2].global_count, 3);
  EXPECT_EQ(batches[2].x.shape(), (Shape{0, 2, 2}));
  EXPECT_EQ(batches[0].global_count, 50);
  EXPECT_EQ(batches[0].local_count, 12);
}

TEST_F(LoaderTest, ResumesMidEpoch) {
  auto full = epoch(*mem_, 8, 1, 3, LastBatch::Keep, 2);
  auto tail = epoch(*mem_, 8, 1, 3, LastBatch::Keep, 2, true, 5);
  ASSERT_EQ(tail.size() + 5, full.size());
  for (size_t s = 0; s < tail.size(); ++s) EXPECT_EQ(tail[s], full[s + 5]);
}

TEST_F(LoaderTest, RestartingAnEpochCancelsTheOneInFlight) {
  ShardedLoader loader(mem_->train, 4, 0, 1, 9, true, LastBatch::Keep, 3);
  Batch b;
  for (int rep = 0; rep < 3; ++rep) {
    loader.start_epoch(rep);
    ASSERT_TRUE(loader.next(b));
    EXPECT_EQ(b.step, 0);
  }
  loader.start_epoch(7);
  int64_t n = 0;
  while (loader.next(b)) n += b.local_count;
  EXPECT_EQ(n, kN);
  EXPECT_FALSE(loader.next(b));
}

TEST_F(LoaderTest, TestSplitIsShardedTheSameWay) {
  ShardedLoader loader(mem_->test, 8, 0, 1, 0, false, LastBatch::Keep);
  loader.start_epoch(0);
  Batch b;
  ASSERT_TRUE(loader.next(b));
  EXPECT_EQ(testing::decode_index(b.x.data()), 1000000);
  EXPECT_EQ(loader.steps_per_epoch(), 3);
}

}  // namespace
}  // namespace lockstep::data
