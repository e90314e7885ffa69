// Converters on small generated files in each official format.
#include <gtest/gtest.h>

#include <fstream>

#include <filesystem>

#include "core/error.h"
#include "data/convert.h"
#include "data/dataset.h"
#include "test_util.h"

namespace lockstep::data {
namespace {

using testing::TempDir;
namespace fs = std::filesystem;

DataConfig cfg_for(const std::string& path) {
  DataConfig c;
  c.path = path;
  return c;
}

class IdxConvert : public ::testing::TestWithParam<bool> {};

TEST_P(IdxConvert, RoundTripsPixelsAndLabels) {
  TempDir d;
  testing::make_idx_dir(d.path(), 50, 20, GetParam());
  ConvertOptions opt;
  opt.format = SourceFormat::FashionMnist;
  opt.src_dir = d.path();
  opt.out_file = d.file("out.h5");
  convert(opt);
  EXPECT_FALSE(fs::exists(d.file("out.h5.tmp")));
  Dataset ds = open_dataset(cfg_for(opt.out_file));
  ASSERT_EQ(ds.train->size(), 50);
  ASSERT_EQ(ds.test->size(), 20);
  EXPECT_EQ(ds.train->sample_shape(), (Shape{28, 28}));
  EXPECT_EQ(ds.class_names[9], "Ankle boot");
  std::vector<uint8_t> px(784);
  for (int64_t i : {0, 17, 49}) {
    ds.train->read_raw(&i, 1, px.data());
    for (int j = 0; j < 784; ++j) ASSERT_EQ(px[j], testing::gen_pixel(i, j)) << "sample " << i << " pixel " << j;
    EXPECT_EQ(ds.train->labels()[i], testing::gen_label(i));
  }
  FileSummary s = summarize_file(opt.out_file);
  EXPECT_EQ(s.name, "fashion-mnist");
  EXPECT_NE(s.source_md5.find("train-images-idx3-ubyte"), std::string::npos);
  ASSERT_EQ(s.splits.size(), 2u);
  EXPECT_EQ(s.splits[0].x_dims, (std::vector<int64_t>{50, 28, 28, 1}));
  EXPECT_EQ(s.splits[0].x_type, "uint8");
  EXPECT_EQ(s.splits[0].y_type, "uint8");
}
INSTANTIATE_TEST_SUITE_P(GzAndRaw, IdxConvert, ::testing::Values(true, false));

TEST(CifarConvert, PlanarRecordsBecomeHwcImages) {
  TempDir d;
  testing::make_cifar_dir(d.path(), 30, 5, 12);
  ConvertOptions opt;
  opt.format = SourceFormat::Cifar10;
  opt.src_dir = d.path();
  opt.out_file = d.file("c.h5");
  RawDataset raw = convert(opt);
  EXPECT_EQ(raw.class_names.size(), 10u);  // trailing blank line ignored
  Dataset ds = open_dataset(cfg_for(opt.out_file));
  ASSERT_EQ(ds.train->size(), 150);
  ASSERT_EQ(ds.test->size(), 12);
  EXPECT_EQ(ds.train->sample_shape(), (Shape{32, 32, 3}));
  EXPECT_EQ(ds.class_names[0], "airplane");
  std::vector<uint8_t> px(3072);
  for (int64_t i : {0, 31, 149}) {
    ds.train->read_raw(&i, 1, px.data());
    for (int j = 0; j < 3072; ++j) ASSERT_EQ(px[j], testing::gen_pixel(i, j)) << "sample " << i;
    EXPECT_EQ(ds.train->labels()[i], testing::gen_label(i));
  }
}

TEST(CifarConvert, PartialNeedsTheFlag) {
  TempDir d;
  testing::make_cifar_dir(d.path(), 10, 2, 5);
  ConvertOptions opt;
  opt.format = SourceFormat::Cifar10;
  opt.src_dir = d.path();
  opt.out_file = d.file("c.h5");
  try {
    convert(opt);
    FAIL() << "expected DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("data_batch_3.bin"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--partial"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(opt.out_file));
  opt.partial = true;
  RawDataset raw = convert(opt);
  EXPECT_EQ(raw.train.n, 20);
  EXPECT_NE(raw.source.find("partial"), std::string::npos);
}

TEST(Convert, UnknownFormatSuggestsTheNearest) {
  try {
    parse_source_format("fashion-mnsit");
    FAIL();
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("did you mean 'fashion-mnist'"), std::string::npos) << e.what();
  }
}

TEST(Convert, OverwritesAtomically) {
  TempDir d;
  testing::make_idx_dir(d.path(), 10, 5, true);
  ConvertOptions opt;
  opt.format = SourceFormat::Mnist;
  opt.src_dir = d.path();
  opt.out_file = d.file("m.h5");
  convert(opt);
  auto before = fs::file_size(opt.out_file);
  // Break a source file: the conversion fails, the old output stays intact, no tmp left behind.
  fs::remove(d.file("t10k-labels-idx1-ubyte.gz"));
  EXPECT_THROW(convert(opt), DataError);
  EXPECT_EQ(fs::file_size(opt.out_file), before);
  EXPECT_FALSE(fs::exists(opt.out_file + ".tmp"));
  EXPECT_EQ(open_dataset(cfg_for(opt.out_file)).train->size(), 10);
}

// `--out runs/data/m.h5` on a fresh checkout: the missing folders are made; a folder that cannot be
// made (a regular file in the way) is a DataError naming the output.
TEST(Convert, MakesTheOutputsFolder) {
  TempDir d;
  testing::make_idx_dir(d.path(), 10, 5, true);
  ConvertOptions opt;
  opt.format = SourceFormat::Mnist;
  opt.src_dir = d.path();
  opt.out_file = d.file("runs/data/m.h5");
  convert(opt);
  EXPECT_EQ(open_dataset(cfg_for(opt.out_file)).train->size(), 10);
  std::ofstream(d.file("blocker")) << "x";
  opt.out_file = d.file("blocker/m.h5");
  try {
    convert(opt);
    FAIL() << "a folder through a regular file";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find("blocker/m.h5"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace lockstep::data
