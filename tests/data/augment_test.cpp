// Augmentation (data.augment, data/augment.h): the crop and flip against a naive zero-padded
// reference on hand-made images, the draw as a pure function of (seed, epoch, index), the loader's
// augmented batches on 1, 2 and 4 ranks and on a mid-epoch resume (bit for bit), the training split
// only, pairs, and the run file's `augment:` key with its errors.
#include <gtest/gtest.h>

#include <cstring>
#include <set>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "data/augment.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/pairs.h"
#include "test_util.h"

namespace lockstep::data {
namespace {

using testing::TempDir;

static_assert(std::is_base_of_v<UserError, ConfigError>, "config errors exit with status 2");

using testing::parse;
using testing::error_of;

// The transform by definition: build the (h+2p) x (w+2p) zero-padded image, take the h x w window at
// (dy, dx), then reverse its columns when flipping. Element by element.
std::vector<float> reference(const float* img, int64_t h, int64_t w, int64_t c, int64_t p, const AugmentDraw& d) {
  const int64_t ph = h + 2 * p, pw = w + 2 * p;
  std::vector<float> padded(ph * pw * c, 0.0f);
  for (int64_t y = 0; y < h; ++y)
    for (int64_t x = 0; x < w; ++x)
      for (int64_t k = 0; k < c; ++k) padded[((y + p) * pw + x + p) * c + k] = img[(y * w + x) * c + k];
  std::vector<float> out(h * w * c);
  for (int64_t i = 0; i < h; ++i)
    for (int64_t j = 0; j < w; ++j) {
      const int64_t jj = d.flip ? w - 1 - j : j;
      for (int64_t k = 0; k < c; ++k) out[(i * w + j) * c + k] = padded[((i + d.dy) * pw + jj + d.dx) * c + k];
    }
  return out;
}

std::vector<float> apply(const Augmenter& a, const AugmentDraw& d, const std::vector<float>& img) {
  std::vector<float> out(img.size(), -1.0f);
  a.apply(d, img.data(), out.data());
  return out;
}

AugmentSpec spec(int64_t padding, bool flip) {
  AugmentSpec s;
  s.crop_padding = padding;
  s.horizontal_flip = flip;
  return s;
}

TEST(AugmentTransform, HandMadeImageAgainstTheZeroPaddedDefinition) {
  // 2 x 3, one channel, p = 1: the padded image is 4 x 5.
  //   0 0 0 0 0
  //   0 1 2 3 0
  //   0 4 5 6 0
  //   0 0 0 0 0
  Augmenter a(spec(1, true), 2, 3, 1, 0);
  const std::vector<float> img = {1, 2, 3, 4, 5, 6};
  EXPECT_EQ(apply(a, {1, 1, false}, img), img);                                     // the centre: identity
  EXPECT_EQ(apply(a, {0, 0, false}, img), (std::vector<float>{0, 0, 0, 0, 1, 2}));  // top-left window
  EXPECT_EQ(apply(a, {2, 2, false}, img), (std::vector<float>{5, 6, 0, 0, 0, 0}));  // bottom-right window
  EXPECT_EQ(apply(a, {0, 2, false}, img), (std::vector<float>{0, 0, 0, 2, 3, 0}));
  EXPECT_EQ(apply(a, {1, 1, true}, img), (std::vector<float>{3, 2, 1, 6, 5, 4}));   // flip reverses columns
  EXPECT_EQ(apply(a, {0, 2, true}, img), (std::vector<float>{0, 0, 0, 0, 3, 2}));   // crop, then flip
  EXPECT_EQ(apply(a, {2, 0, true}, img), (std::vector<float>{5, 4, 0, 0, 0, 0}));

  // Channels last: a flip moves whole pixels, each keeping its channel order.
  Augmenter c3(spec(0, true), 1, 2, 3, 0);
  EXPECT_EQ(apply(c3, {0, 0, true}, {1, 2, 3, 4, 5, 6}), (std::vector<float>{4, 5, 6, 1, 2, 3}));
}

TEST(AugmentTransform, EveryOffsetAndFlipMatchesTheReference) {
  for (int64_t c : {1, 3}) {
    const int64_t h = 5, w = 7;  // not square: rows and columns cannot be confused
    std::vector<float> img(h * w * c);
    for (size_t e = 0; e < img.size(); ++e) img[e] = 1.0f + static_cast<float>(e);  // no zeros in the image
    for (int64_t p : {0, 1, 2, 4}) {
      Augmenter a(spec(p, true), h, w, c, 0);
      for (int64_t dy = 0; dy <= 2 * p; ++dy)
        for (int64_t dx = 0; dx <= 2 * p; ++dx)
          for (bool flip : {false, true}) {
            AugmentDraw d{dy, dx, flip};
            ASSERT_EQ(apply(a, d, img), reference(img.data(), h, w, c, p, d))
                << "c=" << c << " p=" << p << " dy=" << dy << " dx=" << dx << " flip=" << flip;
          }
    }
  }
}

TEST(AugmentDraws, PureFunctionOfSeedEpochAndIndex) {
  Augmenter a(spec(4, true), 32, 32, 3, 7), same(spec(4, true), 32, 32, 3, 7), other(spec(4, true), 32, 32, 3, 8);
  std::set<std::pair<int64_t, int64_t>> offsets;
  int64_t flips = 0, differ_epoch = 0, differ_seed = 0, differ_index = 0;
  constexpr int64_t kN = 4000;
  auto key = [](const AugmentDraw& d) { return std::tuple(d.dy, d.dx, d.flip); };
  for (int64_t i = 0; i < kN; ++i) {
    const AugmentDraw d = a.draw(3, i);
    ASSERT_EQ(key(d), key(same.draw(3, i)));
    ASSERT_EQ(key(d), key(a.draw(3, i)));
    ASSERT_TRUE(d.dy >= 0 && d.dy <= 8 && d.dx >= 0 && d.dx <= 8) << d.dy << " " << d.dx;
    offsets.insert({d.dy, d.dx});
    flips += d.flip;
    differ_epoch += key(d) != key(a.draw(4, i));
    differ_seed += key(d) != key(other.draw(3, i));
    differ_index += key(d) != key(a.draw(3, i + 1));
  }
  EXPECT_EQ(offsets.size(), 81u);  // every (dy, dx) in [0, 8]^2 occurs
  EXPECT_NEAR(flips, kN / 2, kN / 20);
  // 162 outcomes: a repeat has probability 1/162 per sample.
  EXPECT_GT(differ_epoch, kN * 9 / 10);
  EXPECT_GT(differ_seed, kN * 9 / 10);
  EXPECT_GT(differ_index, kN * 9 / 10);

  // The keys draw from the same words: flip only keeps the flips (and crops nothing), crop only the offsets.
  Augmenter flip_only(spec(-1, true), 32, 32, 3, 7), crop_only(spec(4, false), 32, 32, 3, 7);
  for (int64_t i = 0; i < 200; ++i) {
    const AugmentDraw d = a.draw(1, i), f = flip_only.draw(1, i), c = crop_only.draw(1, i);
    ASSERT_EQ(f.flip, d.flip);
    ASSERT_EQ(f.dy, 0);
    ASSERT_EQ(f.dx, 0);
    ASSERT_FALSE(c.flip);
    ASSERT_EQ(c.dy, d.dy);
    ASSERT_EQ(c.dx, d.dx);
  }
}

// A file of n_train + n_test images of h x w x c whose pixels are all nonzero (so padding shows),
// label i % 10.
void write_image_file(const std::string& path, int64_t n_train, int64_t n_test, int64_t h, int64_t w, int64_t c) {
  RawDataset ds;
  ds.name = "augment-test";
  for (int k = 0; k < 10; ++k) ds.class_names.push_back(std::to_string(k));
  auto fill = [&](RawSplit& s, int64_t n, int64_t base) {
    s.n = n, s.h = h, s.w = w, s.c = c;
    s.x.resize(n * h * w * c);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < h * w * c; ++j)
        s.x[i * h * w * c + j] = static_cast<uint8_t>(1 + ((i + base) * 37 + j * 11) % 250);
    s.y.resize(n);
    for (int64_t i = 0; i < n; ++i) s.y[i] = static_cast<int32_t>(i % 10);
  };
  fill(ds.train, n_train, 0);
  fill(ds.test, n_test, 100000);
  write_dataset_file(ds, path);
}

class AugmentLoaderTest : public ::testing::Test {
 protected:
  static constexpr int64_t kN = 90, kH = 6, kW = 5, kC = 3, kD = kH * kW * kC;
  static constexpr uint64_t kSeed = 1234;
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    write_image_file(dir_->file("img.h5"), kN + 10, 20, kH, kW, kC);
    write_image_file(dir_->file("gray.h5"), 40, 4, 8, 8, 1);
  }
  static void TearDownTestSuite() { delete dir_; }
  // 90 training images (the last 10 are validation), 20 test images; crop p = 2 and flip.
  static Dataset open(CacheMode cache = CacheMode::Memory, const std::string& extra = "",
                      const std::string& file = "img.h5", const std::string& validation = "last: 10") {
    DataConfig c = parse("data: {path: " + file + ", validation: {" + validation +
                             "}, augment: {random_crop: {padding: 2}, horizontal_flip: true}" + extra + "}",
                         dir_->path());
    c.cache = cache;
    return open_dataset(c);
  }
  // The x of every batch of one epoch for one rank, and the batches' y.
  static std::vector<std::vector<float>> epoch(std::shared_ptr<const Split> split, int64_t B, int rank, int world,
                                               LastBatch p, int64_t e, int64_t first_step = 0,
                                               Augment augment = Augment::WhenShuffling, bool shuffle = true) {
    ShardedLoader loader(std::move(split), B, rank, world, kSeed, shuffle, p, 2, augment);
    loader.start_epoch(e, first_step);
    std::vector<std::vector<float>> out;
    Batch b;
    while (loader.next(b)) {
      EXPECT_EQ(b.x.numel(), b.local_count * loader.split().sample_elems());
      out.emplace_back(b.x.data(), b.x.data() + b.x.numel());
    }
    EXPECT_EQ(static_cast<int64_t>(out.size()) + first_step, loader.steps_per_epoch());
    return out;
  }
  static std::vector<float> read(const Split& s, int64_t i) {
    std::vector<float> v(s.sample_elems());
    s.read_float(&i, 1, v.data());
    return v;
  }
  static TempDir* dir_;
};
TempDir* AugmentLoaderTest::dir_ = nullptr;

TEST_F(AugmentLoaderTest, BatchesAreTheReferenceTransformOfEachSampleByItsIndex) {
  for (CacheMode cache : {CacheMode::Memory, CacheMode::Stream}) {
    for (const char* file : {"img.h5", "gray.h5"}) {
      Dataset ds = open(cache, "", file);
      const Split& tr = *ds.train;
      const int64_t h = tr.height(), w = tr.width(), c = tr.channels(), d = tr.sample_elems();
      Augmenter aug(*tr.augment(), h, w, c, kSeed);
      for (int64_t e : {0, 3}) {
        ShardedLoader loader(ds.train, 16, 0, 1, kSeed, true, LastBatch::Keep);
        ASSERT_TRUE(loader.augments());
        const std::vector<int64_t> perm = epoch_permutation(tr.size(), kSeed, e);
        loader.start_epoch(e);
        Batch b;
        int64_t flips = 0, cropped = 0, seen = 0;
        while (loader.next(b)) {
          const std::vector<int64_t> idx = loader.shard_indices(perm, b.step);
          ASSERT_EQ(static_cast<int64_t>(idx.size()), b.local_count);
          for (int64_t k = 0; k < b.local_count; ++k, ++seen) {
            const AugmentDraw dr = aug.draw(e, idx[k]);
            const std::vector<float> want = reference(read(tr, idx[k]).data(), h, w, c, 2, dr);
            ASSERT_EQ(0, std::memcmp(want.data(), b.x.data() + k * d, sizeof(float) * d))
                << file << " epoch " << e << " step " << b.step << " sample " << idx[k];
            ASSERT_EQ(static_cast<int64_t>(b.y.at(k)), tr.labels()[idx[k]]);  // labels untouched
            flips += dr.flip;
            cropped += dr.dy != 2 || dr.dx != 2;
          }
        }
        EXPECT_EQ(seen, tr.size());
        EXPECT_GT(flips, 0);
        EXPECT_LT(flips, seen);
        EXPECT_GT(cropped, seen / 2);
      }
    }
  }
}

TEST_F(AugmentLoaderTest, PaddingIsZeroAfterStandardization) {
  Dataset ds = open(CacheMode::Memory, ", scale: 255, standardize: per_channel");
  const Split& tr = *ds.train;
  Augmenter aug(*tr.augment(), kH, kW, kC, kSeed);
  ShardedLoader loader(ds.train, 32, 0, 1, kSeed, true, LastBatch::Keep);
  const std::vector<int64_t> perm = epoch_permutation(tr.size(), kSeed, 0);
  loader.start_epoch(0);
  Batch b;
  int64_t top_padded = 0;
  while (loader.next(b)) {
    const std::vector<int64_t> idx = loader.shard_indices(perm, b.step);
    for (int64_t k = 0; k < b.local_count; ++k) {
      const AugmentDraw dr = aug.draw(0, idx[k]);
      std::vector<float> raw = read(tr, idx[k]);
      ASSERT_EQ(0, std::memcmp(reference(raw.data(), kH, kW, kC, 2, dr).data(), b.x.data() + k * kD,
                               sizeof(float) * kD));
      if (dr.dy == 0) {  // the first two rows are padding: exactly 0, the mean of the standardized data
        ++top_padded;
        for (int64_t j = 0; j < 2 * kW * kC; ++j) ASSERT_EQ(b.x.data()[k * kD + j], 0.0f);
      }
    }
  }
  EXPECT_GT(top_padded, 0);
}

TEST_F(AugmentLoaderTest, RankShardsUnionToTheSingleProcessBatchBitForBit) {
  for (CacheMode cache : {CacheMode::Memory, CacheMode::Stream}) {
    Dataset ds = open(cache);
    for (LastBatch p : {LastBatch::Keep, LastBatch::Pad}) {
      for (int64_t B : {7, 32}) {
        const auto single = epoch(ds.train, B, 0, 1, p, 2);
        for (int W : {2, 4}) {
          std::vector<std::vector<std::vector<float>>> ranks;
          for (int r = 0; r < W; ++r) ranks.push_back(epoch(ds.train, B, r, W, p, 2));
          for (size_t s = 0; s < single.size(); ++s) {
            std::vector<float> cat;
            for (int r = 0; r < W; ++r) cat.insert(cat.end(), ranks[r][s].begin(), ranks[r][s].end());
            ASSERT_EQ(cat.size(), single[s].size());
            ASSERT_EQ(0, std::memcmp(cat.data(), single[s].data(), sizeof(float) * cat.size()))
                << "step " << s << " W=" << W << " B=" << B << " " << last_batch_name(p);
          }
        }
      }
    }
  }
}

TEST_F(AugmentLoaderTest, ResumingMidEpochGivesTheSameBatches) {
  Dataset ds = open();
  for (int world : {1, 2}) {
    for (int rank = 0; rank < world; ++rank) {
      const auto full = epoch(ds.train, 8, rank, world, LastBatch::Keep, 5);
      const auto tail = epoch(ds.train, 8, rank, world, LastBatch::Keep, 5, 4);  // a fresh loader, as a resumed run
      ASSERT_EQ(tail.size() + 4, full.size());
      for (size_t s = 0; s < tail.size(); ++s) ASSERT_EQ(tail[s], full[s + 4]) << "step " << s + 4;
      // One loader restarted mid-epoch after running another epoch.
      ShardedLoader loader(ds.train, 8, rank, world, kSeed, true, LastBatch::Keep);
      loader.start_epoch(1);
      Batch b;
      ASSERT_TRUE(loader.next(b));
      loader.start_epoch(5, 4);
      for (size_t s = 0; s < tail.size(); ++s) {
        ASSERT_TRUE(loader.next(b));
        ASSERT_EQ(std::vector<float>(b.x.data(), b.x.data() + b.x.numel()), tail[s]);
      }
    }
  }
}

TEST_F(AugmentLoaderTest, EpochsDrawFreshTransforms) {
  Dataset ds = open();
  // In order (Augment::On without shuffling), so sample k is the same image in both epochs.
  const auto e0 = epoch(ds.train, 90, 0, 1, LastBatch::Keep, 0, 0, Augment::On, false);
  const auto e1 = epoch(ds.train, 90, 0, 1, LastBatch::Keep, 1, 0, Augment::On, false);
  ASSERT_EQ(e0.size(), 1u);
  int64_t differ = 0;
  for (int64_t k = 0; k < kN; ++k)
    differ += std::memcmp(e0[0].data() + k * kD, e1[0].data() + k * kD, sizeof(float) * kD) != 0;
  EXPECT_GT(differ, kN * 9 / 10);  // a repeat has probability 1/50 per sample
  EXPECT_EQ(e0, epoch(ds.train, 90, 0, 1, LastBatch::Keep, 0, 0, Augment::On, false));
}

TEST_F(AugmentLoaderTest, OnlyTheTrainingSplitOfATrainingLoaderIsAugmented) {
  Dataset ds = open();
  ASSERT_TRUE(ds.train->augment().has_value());
  EXPECT_FALSE(ds.validation->augment().has_value());
  EXPECT_FALSE(ds.test->augment().has_value());
  Dataset plain = open_dataset(parse("data: {path: img.h5, validation: {last: 10}}", dir_->path()));
  EXPECT_FALSE(plain.train->augment().has_value());

  auto augments = [](std::shared_ptr<const Split> s, bool shuffle, Augment a) {
    return ShardedLoader(std::move(s), 8, 0, 1, kSeed, shuffle, LastBatch::Keep, 2, a).augments();
  };
  EXPECT_TRUE(augments(ds.train, true, Augment::WhenShuffling));    // fit, lr-find
  EXPECT_FALSE(augments(ds.train, false, Augment::WhenShuffling));  // evaluate / predict --split train
  EXPECT_TRUE(augments(ds.train, false, Augment::On));
  EXPECT_FALSE(augments(ds.train, true, Augment::Off));
  for (auto s : {ds.validation, ds.test}) {
    EXPECT_FALSE(augments(s, false, Augment::WhenShuffling));
    EXPECT_FALSE(augments(s, true, Augment::On));
  }
  EXPECT_FALSE(augments(plain.train, true, Augment::On));

  // Evaluation reads the training split as stored: identical to the file's images, in order.
  const auto ev = epoch(ds.train, 90, 0, 1, LastBatch::Keep, 3, 0, Augment::WhenShuffling, false);
  const auto pl = epoch(plain.train, 90, 0, 1, LastBatch::Keep, 3, 0, Augment::WhenShuffling, false);
  EXPECT_EQ(ev, pl);
  // Validation and test batches are the same with and without data.augment.
  EXPECT_EQ(epoch(ds.validation, 4, 0, 1, LastBatch::Keep, 0, 0, Augment::On, false),
            epoch(plain.validation, 4, 0, 1, LastBatch::Keep, 0, 0, Augment::On, false));
  EXPECT_EQ(epoch(ds.test, 4, 0, 1, LastBatch::Keep, 0, 0, Augment::On, false),
            epoch(plain.test, 4, 0, 1, LastBatch::Keep, 0, 0, Augment::On, false));
  // And training batches differ from the stored images.
  EXPECT_NE(epoch(ds.train, 90, 0, 1, LastBatch::Keep, 3, 0, Augment::On, false), pl);
}

TEST_F(AugmentLoaderTest, PairsAugmentBothImagesEachByItsOwnIndex) {
  // Validation: the last 20 images, two per class (pairs need two images of a class).
  Dataset ds = open(CacheMode::Memory, ", pairs: {per_epoch: 60}", "img.h5", "last: 20");
  const Split& tr = *ds.train;
  Augmenter aug(*tr.augment(), kH, kW, kC, kSeed);
  PairSampler sampler(tr, *tr.pairing(), kSeed);
  for (int W : {1, 2}) {
    for (int r = 0; r < W; ++r) {
      ShardedLoader loader(ds.train, 12, r, W, kSeed, true, LastBatch::Keep);
      ASSERT_TRUE(loader.augments());
      loader.start_epoch(2);
      Batch b;
      int64_t pos_base = 0;
      while (loader.next(b)) {
        ASSERT_EQ(b.extra_x.size(), 1u);
        const int64_t lo = r * b.global_count / W;
        for (int64_t k = 0; k < b.local_count; ++k) {
          const Pair pr = sampler.draw(2, b.step * 12 + lo + k);
          for (auto [img, out] : {std::pair{pr.a, b.x.data()}, std::pair{pr.b, b.extra_x[0].data()}}) {
            const std::vector<float> want = reference(read(tr, img).data(), kH, kW, kC, 2, aug.draw(2, img));
            ASSERT_EQ(0, std::memcmp(want.data(), out + k * kD, sizeof(float) * kD)) << "image " << img;
          }
        }
        pos_base += b.global_count;
      }
      EXPECT_EQ(pos_base, 60);
    }
  }
  // Validation pairs are not augmented.
  ShardedLoader va(ds.validation, 10, 0, 1, kSeed, false, LastBatch::Keep, 2, Augment::On);
  EXPECT_FALSE(va.augments());
}

TEST(AugmentConfig, ParsesTheKeys) {
  DataConfig none = parse("data: {path: f.h5}");
  EXPECT_FALSE(none.augment.has_value());
  DataConfig both = parse(
      "data:\n  path: f.h5\n  augment:\n    random_crop: {padding: 4}\n    horizontal_flip: true\n");
  ASSERT_TRUE(both.augment.has_value());
  EXPECT_EQ(both.augment->crop_padding, 4);
  EXPECT_TRUE(both.augment->horizontal_flip);
  EXPECT_EQ(both.augment->padding_where, "run.yaml:4:28: data.augment.random_crop.padding");
  DataConfig crop = parse("data: {path: f.h5, augment: {random_crop: {padding: 0}}}");
  EXPECT_EQ(crop.augment->crop_padding, 0);
  EXPECT_FALSE(crop.augment->horizontal_flip);
  DataConfig flip = parse("data: {path: f.h5, augment: {horizontal_flip: true}}");
  EXPECT_FALSE(flip.augment->crops());
  EXPECT_TRUE(flip.augment->horizontal_flip);
  DataConfig off = parse("data: {path: f.h5, augment: {horizontal_flip: false}}");
  EXPECT_FALSE(off.augment->active());
  EXPECT_FALSE(parse("data: {path: f.h5, augment: {}}").augment->active());
}

TEST(AugmentConfig, RefusesBadValuesNamingFileLineAndKey) {
  auto msg = [](const std::string& yaml) { return error_of([&] { parse(yaml); }); };
  auto expect = [](const std::string& m, std::initializer_list<const char*> pieces) {
    EXPECT_NE(m.find("ConfigError"), std::string::npos) << m;
    for (const char* p : pieces) EXPECT_NE(m.find(p), std::string::npos) << "'" << p << "' in: " << m;
  };
  expect(msg("data:\n  path: f.h5\n  augment:\n    random_crop: {padding: -1}\n"),
         {"run.yaml:4:", "data.augment.random_crop.padding", ">= 0", "-1"});
  expect(msg("data:\n  path: f.h5\n  augment:\n    random_crop: {padding: four}\n"),
         {"run.yaml:4:", "data.augment.random_crop.padding", "integer"});
  expect(msg("data:\n  path: f.h5\n  augment:\n    random_crop: {padding: 2.5}\n"),
         {"run.yaml:4:", "data.augment.random_crop.padding", "integer"});
  expect(msg("data:\n  path: f.h5\n  augment:\n    horizontal_flip: maybe\n"),
         {"run.yaml:4:", "data.augment.horizontal_flip", "true or false"});
  expect(msg("data:\n  path: f.h5\n  augment:\n    horizontal_flips: true\n"),
         {"run.yaml:4:", "horizontal_flips", "did you mean 'horizontal_flip'"});
  expect(msg("data:\n  path: f.h5\n  augment:\n    random_crop: {paddin: 4}\n"),
         {"run.yaml:4:", "paddin", "did you mean 'padding'"});
  expect(msg("data:\n  path: f.h5\n  augment:\n    random_crop: {}\n"),
         {"run.yaml:4:", "data.augment.random_crop", "`padding` is required"});
  expect(msg("data:\n  path: f.h5\n  augment:\n    random_crop: 4\n"),
         {"run.yaml:4:", "data.augment.random_crop", "mapping {padding: P}"});
  expect(msg("data:\n  path: f.h5\n  augment: true\n"), {"run.yaml:3:", "data.augment", "mapping"});
  expect(msg("data:\n  path: f.h5\n  augmnt: {}\n"), {"run.yaml:3:", "did you mean 'augment'"});
}

TEST_F(AugmentLoaderTest, RefusesAPaddingNotBelowTheImageSideNamingTheKey) {
  // 6 x 5 images: padding 4 is the largest allowed.
  EXPECT_EQ(error_of([&] {
              open_dataset(parse("data: {path: img.h5, augment: {random_crop: {padding: 4}}}", dir_->path()));
            }),
            "<no error>");
  const std::string m = error_of([&] {
    open_dataset(parse("data:\n  path: img.h5\n  augment:\n    random_crop: {padding: 5}\n", dir_->path()));
  });
  EXPECT_NE(m.find("ConfigError"), std::string::npos) << m;
  EXPECT_NE(m.find("run.yaml:4:28: data.augment.random_crop.padding"), std::string::npos) << m;
  EXPECT_NE(m.find("6x5"), std::string::npos) << m;
  EXPECT_NE(m.find("at most 4"), std::string::npos) << m;
  EXPECT_NE(m.find("img.h5"), std::string::npos) << m;
  // A flip alone fits any image.
  EXPECT_EQ(error_of([&] {
              open_dataset(parse("data: {path: img.h5, augment: {horizontal_flip: true}}", dir_->path()));
            }),
            "<no error>");
}

}  // namespace
}  // namespace lockstep::data
