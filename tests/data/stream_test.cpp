// Streaming reads (whole chunks into the decoded-block cache) return exactly the file's pixels for
// every chunking and filter pipeline h5py can write: the chunks lockstep decodes itself (deflate,
// shuffle, Fletcher32 in either order), and the H5Dread fallback (chunks that split a sample,
// contiguous layout, a filter lockstep does not decode, unallocated chunks), with a cache small
// enough to evict.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <algorithm>
#include <fstream>
#include <numeric>
#include <ostream>
#include <sstream>

#include "core/error.h"
#include "data/dataset.h"
#include "data/hdf5_util.h"
#include "data/loader.h"
#include "test_util.h"

namespace lockstep::data {
namespace {

using testing::TempDir;

struct Layout {
  std::string name;
  std::vector<hsize_t> chunk;        // empty: contiguous
  std::vector<std::string> filters;  // in pipeline (write) order: shuffle, deflate, fletcher32, scaleoffset
  int64_t n = 103, h = 6, w = 5, c = 1;
  int64_t written = -1;              // rows written (-1 = all); the rest stay unallocated (fill value 0)
  bool expect_raw = true, expect_hdf5 = false;
  bool resizable = false;            // maxshape (None, ...): what h5py needs for chunks longer than N
};
void PrintTo(const Layout& l, std::ostream* os) { *os << l.name; }

uint8_t pixel(const Layout& l, int64_t i, int64_t j) {
  return l.written >= 0 && i >= l.written ? 0 : testing::gen_pixel(i, j);
}

void write_layout(const std::string& path, const Layout& l) {
  h5::quiet_this_thread();
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  hid_t g = H5Gcreate2(f, "train", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  std::vector<hsize_t> dims = {(hsize_t)l.n, (hsize_t)l.h, (hsize_t)l.w};
  if (l.c > 1) dims.push_back(l.c);
  const int64_t d = l.h * l.w * l.c;
  std::vector<hsize_t> maxdims = dims;
  if (l.resizable) maxdims[0] = H5S_UNLIMITED;
  hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), maxdims.data());
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  if (!l.chunk.empty()) {
    ASSERT_EQ(l.chunk.size(), dims.size());
    H5Pset_chunk(dcpl, static_cast<int>(l.chunk.size()), l.chunk.data());
    for (const std::string& flt : l.filters) {
      if (flt == "shuffle") H5Pset_shuffle(dcpl);
      if (flt == "deflate") H5Pset_deflate(dcpl, 6);
      if (flt == "fletcher32") H5Pset_fletcher32(dcpl);
      if (flt == "scaleoffset") H5Pset_scaleoffset(dcpl, H5Z_SO_INT, H5Z_SO_INT_MINBITS_DEFAULT);
    }
  }
  hid_t x = H5Dcreate2(g, "x", H5T_STD_U8LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  ASSERT_GE(x, 0);
  const int64_t rows = l.written >= 0 ? l.written : l.n;
  std::vector<uint8_t> buf(rows * d);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < d; ++j) buf[i * d + j] = testing::gen_pixel(i, j);
  if (rows > 0) {
    hid_t fs = H5Dget_space(x);
    std::vector<hsize_t> start(dims.size(), 0), count = dims;
    count[0] = rows;
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, start.data(), nullptr, count.data(), nullptr);
    hid_t ms = H5Screate_simple(static_cast<int>(count.size()), count.data(), nullptr);
    ASSERT_GE(H5Dwrite(x, H5T_NATIVE_UINT8, ms, fs, H5P_DEFAULT, buf.data()), 0);
    H5Sclose(ms);
    H5Sclose(fs);
  }
  std::vector<uint8_t> y(l.n);
  for (int64_t i = 0; i < l.n; ++i) y[i] = static_cast<uint8_t>(i % 10);
  hsize_t n = l.n;
  hid_t ys = H5Screate_simple(1, &n, nullptr);
  hid_t yd = H5Dcreate2(g, "y", H5T_STD_U8LE, ys, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  H5Dwrite(yd, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, y.data());
  for (hid_t id : {yd}) H5Dclose(id);
  H5Sclose(ys);
  H5Dclose(x);
  H5Pclose(dcpl);
  H5Sclose(space);
  H5Gclose(g);
  H5Fclose(f);
}

class StreamLayouts : public ::testing::TestWithParam<Layout> {};

TEST_P(StreamLayouts, StreamingReturnsTheFilesPixels) {
  const Layout& l = GetParam();
  TempDir d;
  const std::string path = d.file(l.name + ".h5");
  write_layout(path, l);
  const int64_t elems = l.h * l.w * l.c;
  for (CacheMode mode : {CacheMode::Memory, CacheMode::Stream}) {
    SCOPED_TRACE(cache_mode_name(mode));
    DataConfig cfg;
    cfg.path = path;
    cfg.cache = mode;
    cfg.stream_cache_mb = 0;  // the 1 MiB minimum: the large layouts evict
    Dataset ds = open_dataset(cfg);
    ASSERT_EQ(ds.train->size(), l.n);
    // Two epochs of shuffled batches of 37 (a batch spans many blocks, blocks repeat across batches).
    for (int64_t epoch = 0; epoch < 2; ++epoch) {
      std::vector<int64_t> perm = epoch_permutation(l.n, 5, epoch);
      std::vector<uint8_t> out;
      for (int64_t b = 0; b < l.n; b += 37) {
        const int64_t m = std::min<int64_t>(37, l.n - b);
        out.assign(m * elems, 0xEE);
        ds.train->read_raw(perm.data() + b, m, out.data());
        for (int64_t k = 0; k < m; ++k)
          for (int64_t j = 0; j < elems; ++j)
            ASSERT_EQ(out[k * elems + j], pixel(l, perm[b + k], j)) << "sample " << perm[b + k] << " byte " << j;
      }
    }
    StreamStats st = ds.train->stream_stats();
    if (mode == CacheMode::Stream) {
      EXPECT_EQ(st.raw_blocks > 0, l.expect_raw) << st.raw_blocks;
      EXPECT_EQ(st.hdf5_blocks > 0, l.expect_hdf5) << st.hdf5_blocks;
    } else {
      EXPECT_EQ(st.raw_blocks + st.hdf5_blocks, 0);
    }
  }
}

std::vector<Layout> layouts() {
  std::vector<Layout> v;
  // lockstep's own writer order: Fletcher32 then deflate; h5py's: shuffle, deflate, Fletcher32.
  v.push_back({"lockstep_order", {16, 6, 5}, {"fletcher32", "deflate"}});
  v.push_back({"h5py_order", {16, 6, 5}, {"shuffle", "deflate", "fletcher32"}});
  v.push_back({"deflate_rgb", {10, 6, 5, 3}, {"deflate"}, 103, 6, 5, 3});
  v.push_back({"no_filter", {7, 6, 5}, {}});
  v.push_back({"one_row_chunks", {1, 6, 5}, {"deflate"}});
  v.push_back({"whole_file_chunk", {103, 6, 5}, {"deflate", "fletcher32"}});
  Layout longer{"chunk_longer_than_dataset", {128, 6, 5}, {"shuffle", "deflate"}};
  longer.resizable = true;
  v.push_back(longer);
  // Larger than the 1 MiB cache: 3000 x 28x28 in 40-row chunks, 33 of the 75 blocks fit.
  v.push_back({"evicting", {40, 28, 28}, {"fletcher32", "deflate"}, 3000, 28, 28, 1});
  Layout split{"chunks_split_samples", {5, 3, 5}, {"deflate"}};
  split.expect_raw = false, split.expect_hdf5 = true;
  v.push_back(split);
  Layout contiguous{"contiguous", {}, {}};
  contiguous.expect_raw = false, contiguous.expect_hdf5 = true;
  v.push_back(contiguous);
  Layout so{"scaleoffset_fallback", {16, 6, 5}, {"scaleoffset", "deflate"}};
  so.expect_raw = false, so.expect_hdf5 = true;
  v.push_back(so);
  Layout half{"unallocated_chunks", {16, 6, 5}, {"deflate", "fletcher32"}};
  half.written = 48;  // chunks 3.. never written: read as the fill value through H5Dread
  half.expect_hdf5 = true;
  v.push_back(half);
  return v;
}

INSTANTIATE_TEST_SUITE_P(Stream, StreamLayouts, ::testing::ValuesIn(layouts()),
                         [](const auto& info) { return info.param.name; });

TEST(Stream, CorruptChunkIsAnErrorNamingTheFileNotWrongPixels) {
  TempDir d;
  Layout l{"corrupt", {40, 28, 28}, {"fletcher32", "deflate"}, 600, 28, 28, 1};
  const std::string path = d.file("corrupt.h5");
  write_layout(path, l);
  DataConfig cfg;
  cfg.path = path;
  cfg.cache = CacheMode::Stream;
  Dataset ds = open_dataset(cfg);
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(0, std::ios::end);
    const std::streamoff size = f.tellg();
    for (int k = 0; k < 64; ++k) {  // the middle of the file: inside the compressed chunks
      f.seekp(size / 2 + k * 13);
      f.put('\x5a');
    }
  }
  // A fresh open (the first one's statistics pass is not run without standardization, but its
  // cache may hold blocks); read everything and expect an error naming the file and dataset.
  Dataset fresh = open_dataset(cfg);
  std::string msg = "<no error>";
  ::testing::internal::CaptureStderr();
  try {
    std::vector<int64_t> idx(l.n);
    std::iota(idx.begin(), idx.end(), 0);
    std::vector<uint8_t> out(l.n * 784);
    fresh.train->read_raw(idx.data(), l.n, out.data());
  } catch (const DataError& e) {
    msg = e.what();
  }
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("/train/x"), std::string::npos) << msg;
}

}  // namespace
}  // namespace lockstep::data
