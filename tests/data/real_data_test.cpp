// The real datasets in ../shared/datasets (skipped with a message when absent): counts, class
// balance, known labels, and the chapter's tasks as configuration.
#include <gtest/gtest.h>

#include <filesystem>

#include "data/convert.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "test_util.h"

namespace lockstep::data {
namespace {

using testing::TempDir;
namespace fs = std::filesystem;

const std::string kRoot = LOCKSTEP_SHARED_DATASETS;

std::vector<int64_t> counts(const std::vector<int32_t>& y, int k) {
  std::vector<int64_t> c(k, 0);
  for (int32_t v : y) c[v]++;
  return c;
}
std::vector<int32_t> head(const std::vector<int32_t>& y, size_t n = 10) { return {y.begin(), y.begin() + n}; }

class FashionMnistReal : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(kRoot + "/fashion-mnist")) return;
    dir_ = new TempDir();
    ConvertOptions opt;
    opt.format = SourceFormat::FashionMnist;
    opt.src_dir = kRoot + "/fashion-mnist";
    opt.out_file = dir_->file("fashion-mnist.h5");
    opt.compression_level = 1;
    convert(opt);
  }
  static void TearDownTestSuite() { delete dir_; }
  void SetUp() override {
    if (!dir_) GTEST_SKIP() << kRoot << "/fashion-mnist is absent: real Fashion-MNIST tests skipped "
                            << "(generated IDX files cover the same code)";
  }
  static DataConfig cfg() {
    DataConfig c;
    c.path = dir_->file("fashion-mnist.h5");
    return c;
  }
  static TempDir* dir_;
};
TempDir* FashionMnistReal::dir_ = nullptr;

TEST_F(FashionMnistReal, CountsBalanceAndKnownLabels) {
  Dataset ds = open_dataset(cfg());
  ASSERT_EQ(ds.train->size(), 60000);
  ASSERT_EQ(ds.test->size(), 10000);
  EXPECT_EQ(counts(ds.train->labels(), 10), std::vector<int64_t>(10, 6000));
  EXPECT_EQ(counts(ds.test->labels(), 10), std::vector<int64_t>(10, 1000));
  // First labels of the official files (zalandoresearch train/t10k-labels-idx1-ubyte).
  EXPECT_EQ(head(ds.train->labels()), (std::vector<int32_t>{9, 0, 0, 3, 0, 2, 7, 2, 5, 5}));
  EXPECT_EQ(head(ds.test->labels()), (std::vector<int32_t>{9, 2, 1, 1, 6, 1, 4, 6, 5, 7}));
  EXPECT_EQ(ds.class_names[5], "Sandal");
  FileSummary s = summarize_file(cfg().path);
  EXPECT_NE(s.source_md5.find("train-images-idx3-ubyte.gz=8d4fb7e6c68d591d4c3dfef9ec88bf0d"), std::string::npos);
}

TEST_F(FashionMnistReal, ChapterTasksAsConfiguration) {
  DataConfig a = cfg();
  a.validation = {ValidationSpec::Kind::First, 5000, 0};
  a.scale = 255;
  a.classes = {0, 1, 2, 3, 4, 7, 8, 9};
  Dataset da = open_dataset(a);
  EXPECT_EQ(da.train->num_classes(), 8);
  auto ca = counts(da.train->labels(), 8);
  EXPECT_EQ(da.train->size() + da.validation->size(), 48000);
  EXPECT_EQ(da.test->size(), 8000);
  EXPECT_EQ(ca[5] + 0, ca[5]);  // Sneaker is label 5 now
  DataConfig b = cfg();
  b.validation = {ValidationSpec::Kind::First, 5000, 0};
  b.classes = {5, 6};
  b.binary_positive = {6};
  b.limit = 200;
  Dataset db = open_dataset(b);
  EXPECT_EQ(db.train->size(), 200);
  EXPECT_EQ(db.test->size(), 2000);
  auto cb = counts(db.train->labels(), 2);
  EXPECT_EQ(cb[0] + cb[1], 200);
  EXPECT_GT(cb[0], 50);
  EXPECT_GT(cb[1], 50);
  // Per-pixel standardization as in the chapter's SELU runs; loader over 55,000 samples at batch 32.
  DataConfig s = cfg();
  s.validation = {ValidationSpec::Kind::First, 5000, 0};
  s.scale = 255;
  s.standardize = Standardize::PerPixel;
  Dataset ds = open_dataset(s);
  ShardedLoader loader(ds.train, 32, 0, 1, 42, true, LastBatch::Keep);
  EXPECT_EQ(loader.steps_per_epoch(), 1719);
}

TEST(MnistReal, CountsAndDigitTasks) {
  const std::string src = kRoot + "/mnist";
  if (!fs::exists(src)) GTEST_SKIP() << src << " is absent: real MNIST tests skipped";
  TempDir d;
  ConvertOptions opt;
  opt.format = SourceFormat::Mnist;
  opt.src_dir = src;
  opt.out_file = d.file("mnist.h5");
  opt.compression_level = 1;
  convert(opt);
  DataConfig c;
  c.path = opt.out_file;
  Dataset ds = open_dataset(c);
  EXPECT_EQ(counts(ds.train->labels(), 10),
            (std::vector<int64_t>{5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949}));
  EXPECT_EQ(counts(ds.test->labels(), 10), (std::vector<int64_t>{980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009}));
  EXPECT_EQ(head(ds.train->labels()), (std::vector<int32_t>{5, 0, 4, 1, 9, 2, 1, 3, 1, 4}));
  EXPECT_EQ(head(ds.test->labels()), (std::vector<int32_t>{7, 2, 1, 0, 4, 1, 4, 9, 5, 9}));
  c.classes = {5, 6, 7, 8, 9};
  c.limit_per_class = 100;
  Dataset hi = open_dataset(c);
  EXPECT_EQ(counts(hi.train->labels(), 5), std::vector<int64_t>(5, 100));
  EXPECT_EQ(hi.test->size(), 892 + 958 + 1028 + 974 + 1009);
}

TEST(CifarReal, PartialRecordsConvert) {
  const std::string src = kRoot + "/cifar-10";
  if (!fs::exists(src)) GTEST_SKIP() << src << " is absent: real CIFAR-10 tests skipped";
  TempDir d;
  fs::create_symlink(src + "/data_batch_1.first4000.bin", d.file("data_batch_1.bin"));
  fs::create_symlink(src + "/test_batch.first1000.bin", d.file("test_batch.bin"));
  fs::create_symlink(src + "/batches.meta.txt", d.file("batches.meta.txt"));
  ConvertOptions opt;
  opt.format = SourceFormat::Cifar10;
  opt.src_dir = d.path();
  opt.out_file = d.file("cifar.h5");
  opt.partial = true;
  opt.compression_level = 1;
  convert(opt);
  DataConfig c;
  c.path = opt.out_file;
  Dataset ds = open_dataset(c);
  ASSERT_EQ(ds.train->size(), 4000);
  ASSERT_EQ(ds.test->size(), 1000);
  EXPECT_EQ(ds.train->sample_shape(), (Shape{32, 32, 3}));
  // PROVENANCE.txt: official start of data_batch_1; test: cat, ship, ship, airplane, frog, ...
  EXPECT_EQ(head(ds.train->labels()), (std::vector<int32_t>{6, 9, 9, 4, 1, 1, 2, 7, 8, 3}));
  EXPECT_EQ(head(ds.test->labels(), 5), (std::vector<int32_t>{3, 8, 8, 0, 6}));
  EXPECT_EQ(ds.class_names[0], "airplane");
}

}  // namespace
}  // namespace lockstep::data
