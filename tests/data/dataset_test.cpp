// The data: section, validation splits, class filtering, limits, standardization, h5py files.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "core/config.h"
#include "core/error.h"
#include "data/convert.h"
#include "data/dataset.h"
#include "test_util.h"

namespace lockstep::data {
namespace {

using testing::TempDir;
namespace fs = std::filesystem;

using testing::parse;

TEST(DataConfigTest, ParsesEveryKey) {
  DataConfig c = parse(
      "data: {path: f.h5, validation: {first: 5000}, scale: 255, standardize: per_pixel, classes: [5, 6],"
      " binary_positive: [6], limit: 200, limit_per_class: 100, cache: stream, stream_cache_mb: 64, last_batch: drop,"
      " prefetch: 3}");
  EXPECT_EQ(c.path, "/runs/f.h5");
  EXPECT_EQ(c.validation.kind, ValidationSpec::Kind::First);
  EXPECT_EQ(c.validation.count, 5000);
  EXPECT_EQ(c.scale, 255.0);
  EXPECT_EQ(c.standardize, Standardize::PerPixel);
  EXPECT_EQ(c.classes, (std::vector<int64_t>{5, 6}));
  EXPECT_EQ(c.binary_positive, (std::vector<int64_t>{6}));
  EXPECT_EQ(c.limit, 200);
  EXPECT_EQ(c.limit_per_class, 100);
  EXPECT_EQ(c.cache, CacheMode::Stream);
  EXPECT_EQ(c.stream_cache_mb, 64);
  EXPECT_EQ(c.last_batch, LastBatch::Drop);
  EXPECT_EQ(c.prefetch, 3);
  DataConfig d = parse("data: {path: /abs/f.h5}");
  EXPECT_EQ(d.path, "/abs/f.h5");
  EXPECT_EQ(d.validation.kind, ValidationSpec::Kind::None);
  EXPECT_EQ(d.scale, 1.0);
  EXPECT_EQ(d.cache, CacheMode::Auto);
  EXPECT_EQ(d.stream_cache_mb, 256);
  EXPECT_EQ(d.last_batch, LastBatch::Keep);
  EXPECT_EQ(parse("data: {path: f.h5, validation: {fraction: 0.1}}").validation.fraction, 0.1);
  EXPECT_EQ(parse("data: {path: f.h5, validation: {last: 7}}").validation.kind, ValidationSpec::Kind::Last);
}

TEST(DataConfigTest, RefusesBadKeysAndValues) {
  auto msg = [](const std::string& yaml) {
    try {
      parse(yaml);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("<no error>");
  };
  EXPECT_NE(msg("data: {path: f.h5, standardise: per_pixel}").find("standardize"), std::string::npos);
  EXPECT_NE(msg("data: {path: f.h5, standardize: per_image}").find("per_pixel"), std::string::npos);
  EXPECT_NE(msg("data: {path: f.h5, validation: {first: 5, last: 5}}").find("exactly one"), std::string::npos);
  EXPECT_NE(msg("data: {path: f.h5, validation: {fraction: 1.5}}").find("fraction"), std::string::npos);
  EXPECT_NE(msg("data: {path: f.h5, classes: [1, 1]}").find("twice"), std::string::npos);
  EXPECT_NE(msg("data: {path: f.h5, classes: [1, 2], binary_positive: [3]}").find("not in `classes`"),
            std::string::npos);
  EXPECT_NE(msg("data: {path: f.h5, stream_cache_mb: -1}").find("stream_cache_mb"), std::string::npos);
  EXPECT_NE(msg("data: {scale: 255}").find("`path` is required"), std::string::npos);
  EXPECT_NE(msg("data: {path: f.h5, last_batch: pad_it}").find("run.yaml"), std::string::npos);
}

// A 1000-sample MNIST-like file, converted once.
class DatasetTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    testing::make_idx_dir(dir_->path(), 1000, 200, true);
    ConvertOptions opt;
    opt.format = SourceFormat::Mnist;
    opt.src_dir = dir_->path();
    opt.out_file = dir_->file("m.h5");
    convert(opt);
  }
  static void TearDownTestSuite() { delete dir_; }
  static DataConfig cfg() {
    DataConfig c;
    c.path = dir_->file("m.h5");
    return c;
  }
  static TempDir* dir_;
};
TempDir* DatasetTest::dir_ = nullptr;

TEST_F(DatasetTest, ValidationSplits) {
  DataConfig c = cfg();
  c.validation = {ValidationSpec::Kind::First, 100, 0};
  Dataset a = open_dataset(c);
  EXPECT_EQ(a.train->size(), 900);
  EXPECT_EQ(a.validation->size(), 100);
  EXPECT_EQ(a.validation->labels()[0], testing::gen_label(0));
  EXPECT_EQ(a.train->labels()[0], testing::gen_label(100));
  c.validation = {ValidationSpec::Kind::Last, 100, 0};
  Dataset b = open_dataset(c);
  EXPECT_EQ(b.validation->labels()[0], testing::gen_label(900));
  EXPECT_EQ(b.train->labels()[0], testing::gen_label(0));
  c.validation = {ValidationSpec::Kind::Fraction, 0, 0.25};
  Dataset f = open_dataset(c);
  EXPECT_EQ(f.train->size(), 750);
  EXPECT_EQ(f.validation->size(), 250);
  c.validation = {ValidationSpec::Kind::First, 1000, 0};
  EXPECT_THROW(open_dataset(c), DataError);
}

TEST_F(DatasetTest, ClassFilteringRelabelsInListedOrder) {
  DataConfig c = cfg();
  c.classes = {0, 1, 2, 3, 4, 7, 8, 9};  // task A: no sandals (5) and shirts (6)
  Dataset a = open_dataset(c);
  EXPECT_EQ(a.class_names.size(), 8u);
  EXPECT_EQ(a.train->num_classes(), 8);
  int64_t expected = 0;
  for (int64_t i = 0; i < 1000; ++i) expected += testing::gen_label(i) != 5 && testing::gen_label(i) != 6;
  EXPECT_EQ(a.train->size(), expected);
  const std::vector<int32_t> relabel = {0, 1, 2, 3, 4, -1, -1, 5, 6, 7};
  for (int64_t i = 0, k = 0; i < 1000; ++i) {
    int y = testing::gen_label(i);
    if (y == 5 || y == 6) continue;
    ASSERT_EQ(a.train->labels()[k++], relabel[y]);
  }
  // Task B: sandal vs shirt, binary (shirt positive), 200 training images; test is not limited.
  c.classes = {5, 6};
  c.binary_positive = {6};
  c.limit = 20;
  Dataset b = open_dataset(c);
  EXPECT_EQ(b.train->size(), 20);
  EXPECT_EQ(b.class_names.size(), 2u);
  EXPECT_EQ(b.test->size(), 40);  // 200 test samples, 2 of 10 classes
  for (int64_t i = 0, k = 0; i < 1000 && k < 20; ++i) {
    int y = testing::gen_label(i);
    if (y == 5 || y == 6) {
      ASSERT_EQ(b.train->labels()[k++], y == 6 ? 1 : 0);
    }
  }
  // Digits 0-4 with limit_per_class.
  c = cfg();
  c.classes = {0, 1, 2, 3, 4};
  c.limit_per_class = 7;
  Dataset m = open_dataset(c);
  EXPECT_EQ(m.train->size(), 35);
  std::vector<int> counts(5, 0);
  for (int32_t y : m.train->labels()) counts[y]++;
  EXPECT_EQ(counts, (std::vector<int>{7, 7, 7, 7, 7}));
  c.classes = {10};
  EXPECT_THROW(open_dataset(c), DataError);
}

void expect_standardized(const Split& s, int64_t groups, int64_t c) {
  const int64_t d = s.sample_elems(), n = s.size();
  std::vector<int64_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::vector<float> x(n * d);
  s.read_float(idx.data(), n, x.data());
  std::vector<double> sum(groups, 0), sq(groups, 0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < d; ++j) {
      int64_t g = groups == d ? j : j % c;
      sum[g] += x[i * d + j];
      sq[g] += double(x[i * d + j]) * x[i * d + j];
    }
  const double cnt = double(n) * (d / groups);
  for (int64_t g = 0; g < groups; ++g) {
    double mean = sum[g] / cnt, var = sq[g] / cnt - mean * mean;
    ASSERT_NEAR(mean, 0.0, 1e-4) << "group " << g;
    if (s.normalization().std[g] > 1e-6) {
      ASSERT_NEAR(var, 1.0, 1e-3) << "group " << g;
    }
  }
}

TEST_F(DatasetTest, StandardizesFromTrainingStatistics) {
  DataConfig c = cfg();
  c.validation = {ValidationSpec::Kind::First, 100, 0};
  c.scale = 255;
  c.standardize = Standardize::PerPixel;
  Dataset ds = open_dataset(c);
  ASSERT_EQ(ds.normalization.mean.size(), 784u);
  expect_standardized(*ds.train, 784, 1);
  // Pixel 0 of training sample i is gen_pixel(i + 100, 0): check mean against a direct computation.
  double m = 0;
  for (int64_t i = 100; i < 1000; ++i) m += testing::gen_pixel(i, 0) / 255.0;
  EXPECT_NEAR(ds.normalization.mean[0], m / 900, 1e-12);
  c.standardize = Standardize::PerChannel;
  Dataset pc = open_dataset(c);
  ASSERT_EQ(pc.normalization.mean.size(), 1u);
  expect_standardized(*pc.train, 1, 1);
  c.standardize = Standardize::None;
  Dataset none = open_dataset(c);
  float v;
  int64_t i = 0;
  std::vector<float> buf(784);
  none.train->read_float(&i, 1, buf.data());
  v = buf[5];
  EXPECT_FLOAT_EQ(v, testing::gen_pixel(100, 5) / 255.0f);
}

TEST(DatasetCifar, PerChannelStandardization) {
  TempDir d;
  testing::make_cifar_dir(d.path(), 40, 5, 10);
  ConvertOptions opt;
  opt.format = SourceFormat::Cifar10;
  opt.src_dir = d.path();
  opt.out_file = d.file("c.h5");
  convert(opt);
  DataConfig c;
  c.path = opt.out_file;
  c.scale = 255;
  c.standardize = Standardize::PerChannel;
  for (CacheMode mode : {CacheMode::Memory, CacheMode::Stream}) {
    c.cache = mode;
    Dataset ds = open_dataset(c);
    EXPECT_EQ(ds.train->in_memory(), mode == CacheMode::Memory);
    ASSERT_EQ(ds.normalization.mean.size(), 3u);
    expect_standardized(*ds.train, 3, 3);
  }
}

TEST_F(DatasetTest, MemoryAndStreamingAgree) {
  DataConfig c = cfg();
  c.validation = {ValidationSpec::Kind::Last, 50, 0};
  c.classes = {1, 3, 5};
  c.standardize = Standardize::PerPixel;
  c.cache = CacheMode::Memory;
  Dataset m = open_dataset(c);
  c.cache = CacheMode::Stream;
  Dataset s = open_dataset(c);
  c.cache = CacheMode::Auto;
  c.memory_limit_mb = 0;  // nothing fits: auto streams
  EXPECT_FALSE(open_dataset(c).train->in_memory());
  EXPECT_TRUE(m.train->in_memory());
  EXPECT_FALSE(s.train->in_memory());
  ASSERT_EQ(m.train->size(), s.train->size());
  std::vector<int64_t> idx = {5, 0, 5, m.train->size() - 1, 3, 4};  // unsorted, duplicated
  std::vector<float> a(idx.size() * 784), b(idx.size() * 784);
  m.train->read_float(idx.data(), idx.size(), a.data());
  s.train->read_float(idx.data(), idx.size(), b.data());
  EXPECT_EQ(a, b);
  EXPECT_EQ(m.normalization.mean, s.normalization.mean);
  EXPECT_EQ(m.validation->labels(), s.validation->labels());
}

TEST(DatasetH5py, FileWrittenByH5pyLoads) {
  if (testing::shell(LOCKSTEP_PYTHON " -c 'import h5py, numpy' 2>/dev/null") != 0)
    GTEST_SKIP() << "h5py is not installed for " LOCKSTEP_PYTHON " (apt-get install python3-h5py)";
  TempDir d;
  const std::string script = d.file("w.py"), out = d.file("py.h5");
  std::ofstream(script) << "import h5py, numpy as np, sys\n"
                           "with h5py.File(sys.argv[1], 'w') as f:\n"
                           "    f.attrs['class_names'] = ['zero', 'one', 'two']\n"  // variable-length UTF-8
                           "    f.attrs['source'] = 'made by h5py'\n"
                           "    for g, n in (('train', 30), ('test', 6)):\n"
                           "        x = (np.arange(n * 16) % 256).astype(np.uint8).reshape(n, 4, 4)\n"
                           "        f.create_dataset(g + '/x', data=x, chunks=(5, 4, 4), compression='gzip')\n"
                           "        f.create_dataset(g + '/y', data=np.arange(n) % 3)\n";  // int64
  ASSERT_EQ(testing::shell(LOCKSTEP_PYTHON " " + script + " " + out), 0);
  DataConfig c;
  c.path = out;
  for (CacheMode mode : {CacheMode::Memory, CacheMode::Stream}) {
    c.cache = mode;
    Dataset ds = open_dataset(c);
    EXPECT_EQ(ds.class_names, (std::vector<std::string>{"zero", "one", "two"}));
    ASSERT_EQ(ds.train->size(), 30);
    EXPECT_EQ(ds.train->sample_shape(), (Shape{4, 4}));
    EXPECT_EQ(ds.train->labels()[4], 1);
    std::vector<uint8_t> px(16);
    int64_t i = 3;
    ds.train->read_raw(&i, 1, px.data());
    EXPECT_EQ(px[0], 48);
  }
  EXPECT_EQ(summarize_file(out).source, "made by h5py");
}

}  // namespace
}  // namespace lockstep::data
