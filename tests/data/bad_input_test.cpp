// Bad input: every case is a DataError naming the file and the dataset, exit status 2 through the
// CLI, and nothing from HDF5's error stack on stderr.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <filesystem>
#include <functional>
#include <sstream>
#include <fstream>

#include "core/error.h"
#include "data/cli.h"
#include "data/convert.h"
#include "data/dataset.h"
#include "data/hdf5_util.h"
#include "data/loader.h"
#include "test_util.h"

namespace lockstep::data {
namespace {

using testing::TempDir;
namespace fs = std::filesystem;

// Open through the library and through `lockstep data inspect`; return the library's message.
std::string open_error(const std::string& path) {
  std::string msg = "<no error>";
  ::testing::internal::CaptureStderr();
  try {
    DataConfig c;
    c.path = path;
    open_dataset(c);
  } catch (const DataError& e) {
    msg = e.what();
  }
  std::ostringstream out, err;
  int rc = run_data_command({"inspect", path}, out, err);
  std::string stderr_text = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(rc, 2) << err.str();
  EXPECT_NE(err.str().find(path), std::string::npos) << err.str();
  EXPECT_EQ(stderr_text.find("HDF5-DIAG"), std::string::npos) << stderr_text;
  EXPECT_EQ(stderr_text, "");
  return msg;
}

void write_custom(const std::string& path, const std::function<void(hid_t)>& body) {
  h5::quiet_this_thread();
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  body(f);
  H5Fclose(f);
}

void write_ds(hid_t f, const std::string& path, hid_t type, std::vector<hsize_t> dims, const void* data) {
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  hid_t sp = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  hid_t d = H5Dcreate2(f, path.c_str(), type, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
  H5Dclose(d);
  H5Sclose(sp);
  H5Pclose(lcpl);
}

#define EXPECT_MSG_HAS(msg, piece) EXPECT_NE((msg).find(piece), std::string::npos) << (msg)

TEST(BadInput, MissingNonHdf5AndTruncatedFiles) {
  TempDir d;
  std::string m = open_error(d.file("nope.h5"));
  EXPECT_MSG_HAS(m, d.file("nope.h5"));
  EXPECT_MSG_HAS(m, "no such file");
  std::ofstream(d.file("csv.h5")) << "a,b\n1,2\n";
  m = open_error(d.file("csv.h5"));
  EXPECT_MSG_HAS(m, d.file("csv.h5"));
  EXPECT_MSG_HAS(m, "not an HDF5 file");
  testing::write_index_file(d.file("good.h5"), 500, 10);
  fs::copy_file(d.file("good.h5"), d.file("trunc.h5"));
  fs::resize_file(d.file("trunc.h5"), fs::file_size(d.file("good.h5")) - 1);
  m = open_error(d.file("trunc.h5"));
  EXPECT_MSG_HAS(m, d.file("trunc.h5"));
  EXPECT_MSG_HAS(m, "truncated");
}

TEST(BadInput, CorruptChunkIsDetected) {
  TempDir d;
  testing::write_index_file(d.file("c.h5"), 5000, 10);
  // Flip bytes in the middle of the file (inside the compressed image chunks).
  {
    std::fstream f(d.file("c.h5"), std::ios::in | std::ios::out | std::ios::binary);
    auto size = fs::file_size(d.file("c.h5"));
    for (int k = 0; k < 16; ++k) {
      f.seekp(static_cast<std::streamoff>(size / 2 + k * 7));
      f.put('\x5a');
    }
  }
  ::testing::internal::CaptureStderr();
  std::string msg = "<no error>";
  try {
    DataConfig c;
    c.path = d.file("c.h5");
    c.cache = CacheMode::Memory;
    open_dataset(c);
  } catch (const DataError& e) {
    msg = e.what();
  }
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  EXPECT_MSG_HAS(msg, d.file("c.h5"));
  EXPECT_MSG_HAS(msg, "/train/");
}

TEST(BadInput, LayoutProblemsNameFileAndDataset) {
  TempDir d;
  const std::vector<uint8_t> x8(10 * 4, 1);
  const std::vector<uint8_t> y8 = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  const std::vector<float> xf(10 * 4, 0.5f);
  struct Case {
    std::string name, dataset, expect;
    std::function<void(hid_t)> body;
  };
  std::vector<Case> cases = {
      {"no_y", "/train/y", "missing", [&](hid_t f) { write_ds(f, "/train/x", H5T_NATIVE_UINT8, {10, 2, 2}, x8.data()); }},
      {"no_train", "/train", "missing", [&](hid_t f) { write_ds(f, "/test/x", H5T_NATIVE_UINT8, {10, 2, 2}, x8.data()); }},
      {"rank2", "/train/x", "[N, H, W, C]",
       [&](hid_t f) {
         write_ds(f, "/train/x", H5T_NATIVE_UINT8, {10, 4}, x8.data());
         write_ds(f, "/train/y", H5T_NATIVE_UINT8, {10}, y8.data());
       }},
      {"float", "/train/x", "float32",
       [&](hid_t f) {
         write_ds(f, "/train/x", H5T_NATIVE_FLOAT, {10, 2, 2}, xf.data());
         write_ds(f, "/train/y", H5T_NATIVE_UINT8, {10}, y8.data());
       }},
      {"float_y", "/train/y", "integer labels",
       [&](hid_t f) {
         write_ds(f, "/train/x", H5T_NATIVE_UINT8, {10, 2, 2}, x8.data());
         write_ds(f, "/train/y", H5T_NATIVE_FLOAT, {10}, xf.data());
       }},
      {"short_y", "/train/y", "same length",
       [&](hid_t f) {
         write_ds(f, "/train/x", H5T_NATIVE_UINT8, {10, 2, 2}, x8.data());
         write_ds(f, "/train/y", H5T_NATIVE_UINT8, {9}, y8.data());
       }},
      {"label_range", "/train/y", "outside the class range",
       [&](hid_t f) {
         write_ds(f, "/train/x", H5T_NATIVE_UINT8, {10, 2, 2}, x8.data());
         write_ds(f, "/train/y", H5T_NATIVE_UINT8, {10}, y8.data());
         h5::write_string_list_attr(f, "class_names", {"a", "b", "c"});
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = d.file(c.name + ".h5");
    write_custom(path, c.body);
    std::string m = open_error(path);
    EXPECT_MSG_HAS(m, path);
    EXPECT_MSG_HAS(m, c.dataset);
    EXPECT_MSG_HAS(m, c.expect);
  }
}

TEST(BadInput, IdxFiles) {
  TempDir d;
  testing::make_idx_dir(d.path(), 20, 5, false);
  auto convert_error = [&]() {
    std::ostringstream out, err;
    int rc = run_data_command({"convert", "--format", "mnist", "--src", d.path(), "--out", d.file("o.h5")}, out, err);
    EXPECT_EQ(rc, 2);
    EXPECT_FALSE(fs::exists(d.file("o.h5")));
    EXPECT_FALSE(fs::exists(d.file("o.h5.tmp")));
    return err.str();
  };
  // Wrong magic: images file given a label magic.
  {
    std::fstream f(d.file("train-images-idx3-ubyte"), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(3);
    f.put('\x01');
  }
  std::string m = convert_error();
  EXPECT_MSG_HAS(m, "train-images-idx3-ubyte");
  EXPECT_MSG_HAS(m, "magic");
  testing::make_idx_dir(d.path(), 20, 5, false);
  fs::resize_file(d.file("t10k-images-idx3-ubyte"), fs::file_size(d.file("t10k-images-idx3-ubyte")) - 10);
  m = convert_error();
  EXPECT_MSG_HAS(m, "t10k-images-idx3-ubyte");
  EXPECT_MSG_HAS(m, "truncated");
  // Labels and images of different lengths.
  testing::make_idx_dir(d.path(), 20, 5, false);
  write_idx(d.file("train-labels-idx1-ubyte"), {19}, std::vector<uint8_t>(19, 1));
  m = convert_error();
  EXPECT_MSG_HAS(m, "20 images");
  EXPECT_MSG_HAS(m, "19 labels");
  // Label outside 0..9.
  write_idx(d.file("train-labels-idx1-ubyte"), {20}, std::vector<uint8_t>(20, 12));
  m = convert_error();
  EXPECT_MSG_HAS(m, "train-labels-idx1-ubyte");
  EXPECT_MSG_HAS(m, "label 12");
  // Corrupt gzip.
  testing::make_idx_dir(d.path(), 20, 5, false);
  fs::remove(d.file("train-images-idx3-ubyte"));
  testing::make_idx_dir(d.path(), 20, 5, true);
  for (auto* n : {"train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"}) fs::remove(d.file(n));
  fs::resize_file(d.file("train-images-idx3-ubyte.gz"), fs::file_size(d.file("train-images-idx3-ubyte.gz")) / 2);
  m = convert_error();
  EXPECT_MSG_HAS(m, "train-images-idx3-ubyte.gz");
  // CIFAR record size.
  TempDir c;
  testing::make_cifar_dir(c.path(), 4, 5, 2);
  fs::resize_file(c.file("data_batch_2.bin"), 3073 * 3 + 5);
  std::ostringstream out, err;
  EXPECT_EQ(run_data_command({"convert", "--format", "cifar10", "--src", c.path(), "--out", c.file("o.h5")}, out, err),
            2);
  EXPECT_MSG_HAS(err.str(), "data_batch_2.bin");
  EXPECT_MSG_HAS(err.str(), "3,073-byte");
  EXPECT_FALSE(fs::exists(c.file("o.h5")));
}

TEST(BadInput, ErrorsInTheLoaderThreadReachTheCaller) {
  TempDir d;
  testing::write_index_file(d.file("s.h5"), 3000, 10);
  DataConfig c;
  c.path = d.file("s.h5");
  c.cache = CacheMode::Stream;
  Dataset ds = open_dataset(c);
  // Damage the file under the open streaming reader.
  {
    std::fstream f(d.file("s.h5"), std::ios::in | std::ios::out | std::ios::binary);
    auto size = fs::file_size(d.file("s.h5"));
    for (std::streamoff k = 4096; k < static_cast<std::streamoff>(size) - 4096; k += 97) {
      f.seekp(k);
      f.put('\x33');
    }
  }
  ::testing::internal::CaptureStderr();
  std::string msg = "<no error>";
  try {
    ShardedLoader loader(ds.train, 256, 0, 1, 1, true, LastBatch::Keep);
    loader.start_epoch(0);
    Batch b;
    while (loader.next(b)) {
    }
  } catch (const DataError& e) {
    msg = e.what();
  }
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  EXPECT_MSG_HAS(msg, d.file("s.h5"));
  EXPECT_MSG_HAS(msg, "/train/x");
}

}  // namespace
}  // namespace lockstep::data
