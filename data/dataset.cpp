#include "data/dataset.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <atomic>
#include <mutex>
#include <system_error>
#include <thread>
#include <numeric>
#include <set>

#include "core/error.h"
#include "data/hdf5_util.h"

#include <zlib.h>

namespace lockstep::data {

namespace fs = std::filesystem;
using h5::Handle;

const char* standardize_name(Standardize s) {
  switch (s) {
    case Standardize::None: return "none";
    case Standardize::PerPixel: return "per_pixel";
    case Standardize::PerChannel: return "per_channel";
  }
  return "?";
}
const char* cache_mode_name(CacheMode c) {
  switch (c) {
    case CacheMode::Auto: return "auto";
    case CacheMode::Memory: return "memory";
    case CacheMode::Stream: return "stream";
  }
  return "?";
}
const char* last_batch_name(LastBatch l) {
  switch (l) {
    case LastBatch::Keep: return "keep";
    case LastBatch::Drop: return "drop";
    case LastBatch::Pad: return "pad";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// data: section

DataConfig parse_data_config(const ConfigNode& node, const std::string& run_file_dir) {
  node.expect_map();
  node.allow_keys({"path", "validation", "scale", "standardize", "classes", "binary_positive", "limit_per_class",
                   "limit", "cache", "memory_limit_mb", "stream_cache_mb", "last_batch", "prefetch", "subset",
                   "pairs", "augment"});
  DataConfig c;
  // Only touch keys that are present: ConfigNode::operator[] on an absent key throws YAML::InvalidNode
  // in the current core/config.cpp (reported to the lead), so defaults are applied here.
  if (!node.has("path")) node.fail("the key `path` is required (the dataset file, e.g. fashion-mnist.h5)");
  ConfigNode p = node["path"];
  std::string path = p.as_string();
  if (fs::path(path).is_relative()) {
    fs::path rel = fs::path(run_file_dir.empty() ? "." : run_file_dir) / path;
    if (fs::exists(rel) || !fs::exists(path)) path = rel.lexically_normal().string();
  }
  c.path = path;

  if (node.has("subset")) {
    ConfigNode sub = node["subset"];
    if (!sub.is_map()) sub.fail("expected a mapping {start: I, stop: J} (a python slice of the file's training split)");
    sub.allow_keys({"start", "stop"});
    if (sub.has("start")) c.subset.start = sub["start"].as_int();
    if (sub.has("stop")) c.subset.stop = sub["stop"].as_int();
    // Decidable before the file is opened only when both count from the same end.
    if (c.subset.start && c.subset.stop && (*c.subset.start < 0) == (*c.subset.stop < 0) &&
        *c.subset.start >= *c.subset.stop)
      sub.fail(str_cat("start = ", *c.subset.start, " >= stop = ", *c.subset.stop, " selects no images"));
  }
  if (node.has("pairs")) {
    ConfigNode pn = node["pairs"];
    if (!pn.is_map())
      pn.fail("expected a mapping {same_fraction: F, same_label: 0|1, per_epoch: N} (`pairs: {}` for the defaults)");
    pn.allow_keys({"same_fraction", "same_label", "per_epoch"});
    PairSpec ps;
    if (pn.has("same_fraction")) ps.same_fraction = pn.get_in("same_fraction", ps.same_fraction, 0.0, 1.0);
    if (pn.has("same_label")) {
      const int64_t v = pn["same_label"].as_int();
      if (v != 0 && v != 1)
        pn["same_label"].fail(str_cat("expected 0 or 1 (the label of a same-class pair), got ", v));
      ps.same_label = static_cast<int>(v);
    }
    if (pn.has("per_epoch")) ps.per_epoch = pn.get_at_least("per_epoch", ps.per_epoch, 0);
    c.pairs = ps;
  }
  if (node.has("augment")) {
    ConfigNode an = node["augment"];
    if (!an.is_map())
      an.fail("expected a mapping {random_crop: {padding: P}, horizontal_flip: true|false} "
              "(either key may be left out)");
    an.allow_keys({"random_crop", "horizontal_flip"});
    AugmentSpec as;
    if (an.has("random_crop")) {
      ConfigNode rc = an["random_crop"];
      if (!rc.is_map()) rc.fail("expected a mapping {padding: P} (zero-pad each side by P, then crop back to H x W)");
      rc.allow_keys({"padding"});
      if (!rc.has("padding")) rc.fail("the key `padding` is required (e.g. {padding: 4} for CIFAR-10's 32x32 images)");
      as.crop_padding = rc.get_at_least("padding", int64_t{0}, 0);
      as.padding_where = rc["padding"].where();
    }
    if (an.has("horizontal_flip")) as.horizontal_flip = an["horizontal_flip"].as_bool();
    c.augment = as;
  }

  if (node.has("validation")) {
    ConfigNode v = node["validation"];
    if (v.defined()) {
      v.expect_map();
      v.allow_keys({"first", "last", "fraction"});
      LS_REQUIRE(v.size() == 1, ConfigError, v.where(),
                 ": give exactly one of {first: N}, {last: N}, {fraction: F}");
      if (v.has("first")) {
        c.validation.kind = ValidationSpec::Kind::First;
        c.validation.count = v.get_at_least("first", int64_t{0}, 1);
      } else if (v.has("last")) {
        c.validation.kind = ValidationSpec::Kind::Last;
        c.validation.count = v.get_at_least("last", int64_t{0}, 1);
      } else {
        c.validation.kind = ValidationSpec::Kind::Fraction;
        c.validation.fraction = v.get_in("fraction", 0.1, 0.0, 1.0, true, true);
      }
    }
  }
  auto choice = [&](const std::string& key, const std::string& def, const std::vector<std::string>& choices) {
    return node.has(key) ? node.get_choice(key, def, choices) : def;
  };
  if (node.has("scale")) c.scale = node.get_in("scale", 1.0, 0.0, 1e300, true, false);
  std::string st = choice("standardize", "none", {"none", "per_pixel", "per_channel"});
  c.standardize = st == "per_pixel" ? Standardize::PerPixel
                  : st == "per_channel" ? Standardize::PerChannel : Standardize::None;
  auto int_list = [&](const std::string& key) {
    std::vector<int64_t> out;
    if (!node.has(key) || !node[key].defined()) return out;
    out = node[key].as_int_list();
    std::set<int64_t> seen;
    for (int64_t v : out) {
      if (v < 0) node[key].fail(str_cat("class ", v, " is negative"));
      if (!seen.insert(v).second) node[key].fail(str_cat("class ", v, " is listed twice"));
    }
    if (out.empty()) node[key].fail("expected a non-empty list of class indices");
    return out;
  };
  c.classes = int_list("classes");
  c.binary_positive = int_list("binary_positive");
  if (!c.classes.empty()) {
    for (int64_t v : c.binary_positive)
      if (std::find(c.classes.begin(), c.classes.end(), v) == c.classes.end())
        node["binary_positive"].fail(str_cat("class ", v, " is not in `classes`"));
  }
  if (node.has("limit_per_class")) c.limit_per_class = node.get_at_least("limit_per_class", int64_t{-1}, 1);
  if (node.has("limit")) c.limit = node.get_at_least("limit", int64_t{-1}, 1);
  std::string cache = choice("cache", "auto", {"auto", "memory", "stream"});
  c.cache = cache == "memory" ? CacheMode::Memory : cache == "stream" ? CacheMode::Stream : CacheMode::Auto;
  if (node.has("memory_limit_mb")) c.memory_limit_mb = node.get_at_least("memory_limit_mb", c.memory_limit_mb, 0);
  if (node.has("stream_cache_mb")) c.stream_cache_mb = node.get_at_least("stream_cache_mb", c.stream_cache_mb, 0);
  std::string lb = choice("last_batch", "keep", {"keep", "drop", "pad"});
  c.last_batch = lb == "drop" ? LastBatch::Drop : lb == "pad" ? LastBatch::Pad : LastBatch::Keep;
  if (node.has("prefetch")) c.prefetch = static_cast<int>(node.get_at_least("prefetch", int64_t{2}, 1));
  return c;
}

// ---------------------------------------------------------------------------------------------
// Sample sources

class SampleSource {
 public:
  virtual ~SampleSource() = default;
  int64_t h = 0, w = 0, c = 1;
  int64_t elems() const { return h * w * c; }
  virtual bool in_memory() const = 0;
  virtual std::string where() const = 0;
  // Pointer to sample i's pixels when held in memory, else nullptr.
  virtual const uint8_t* row_ptr(int64_t i) const = 0;
  virtual void read(const int64_t* idx, int64_t n, uint8_t* out) const = 0;
  virtual StreamStats stats() const { return {}; }
};

namespace {

class MemorySource : public SampleSource {
 public:
  std::vector<uint8_t> data;
  std::string where_;
  bool in_memory() const override { return true; }
  std::string where() const override { return where_; }
  const uint8_t* row_ptr(int64_t i) const override { return data.data() + i * elems(); }
  void read(const int64_t* idx, int64_t n, uint8_t* out) const override {
    const int64_t d = elems();
    for (int64_t k = 0; k < n; ++k) std::memcpy(out + k * d, data.data() + idx[k] * d, d);
  }
};

// HDF5's Fletcher32 (H5_checksum_fletcher32 in H5checksum.c, HDF5 1.10): 16-bit big-endian words,
// sums folded every 360 words, an odd trailing byte as the high byte of a last word.
uint32_t hdf5_fletcher32(const uint8_t* data, size_t nbytes) {
  size_t len = nbytes / 2;
  uint32_t sum1 = 0, sum2 = 0;
  while (len) {
    size_t tlen = len > 360 ? 360 : len;
    len -= tlen;
    do {
      sum1 += static_cast<uint32_t>((static_cast<uint16_t>(data[0]) << 8) | data[1]);
      data += 2;
      sum2 += sum1;
    } while (--tlen);
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  }
  if (nbytes % 2) {
    sum1 += static_cast<uint32_t>(static_cast<uint16_t>(*data) << 8);
    sum2 += sum1;
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  }
  sum1 = (sum1 & 0xffff) + (sum1 >> 16);
  sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  return (sum2 << 16) | sum1;
}

// The images dataset of one file group, read in whole blocks of rows (a block = one HDF5 chunk
// along N when the dataset is chunked) into a bounded cache of decoded blocks shared by the splits
// of that group. A block is decoded once per stay in the cache, however many samples a batch takes
// from it; HDF5's own chunk cache is off (the per-hyperslab H5Dread cost, ~30 us, was the old limit).
//
// Decoding a block: when the chunks span whole samples and every filter of the pipeline is one we
// undo here (deflate, shuffle of 1-byte elements = identity, fletcher32), H5Dread_chunk fetches the
// raw chunk and zlib inflates it in this process; otherwise (other filters, chunks that split a
// sample, contiguous layout, unallocated chunks, or a raw decode that fails) one H5Dread of the
// block's chunk-aligned rows does it, so any file h5py writes reads the same.
class ChunkedImages {
 public:
  std::string file_name, dataset_path;
  Handle file, dset;
  int64_t n = 0, d = 0;         // rows, bytes per row
  int64_t block_rows = 1;       // rows per cache block
  bool raw_path = false;        // H5Dread_chunk + our own filters
  int dims_rank = 4;
  std::vector<int64_t> dims;
  std::vector<H5Z_filter_t> filters;  // pipeline order (write order)

  std::string where() const { return file_name + ":" + dataset_path; }

  void init(int64_t cache_bytes) {
    h5::DatasetInfo info = h5::describe(dset.get());
    dims = info.dims;
    dims_rank = static_cast<int>(info.dims.size());
    n = info.dims[0];
    d = 1;
    for (size_t i = 1; i < info.dims.size(); ++i) d *= info.dims[i];
    Handle dcpl(H5Dget_create_plist(dset.get()), Handle::Kind::Plist);
    block_rows = std::max<int64_t>(1, (64 << 10) / std::max<int64_t>(d, 1));  // contiguous: ~64 KiB blocks
    if (dcpl.valid() && H5Pget_layout(dcpl.get()) == H5D_CHUNKED) {
      hsize_t cdims[8] = {0};
      int cr = H5Pget_chunk(dcpl.get(), 8, cdims);
      bool whole_samples = cr == dims_rank;
      for (int i = 1; whole_samples && i < cr; ++i) whole_samples = static_cast<int64_t>(cdims[i]) == info.dims[i];
      block_rows = std::max<int64_t>(1, static_cast<int64_t>(cdims[0]));
      bool known = whole_samples;
      int nf = H5Pget_nfilters(dcpl.get());
      for (int i = 0; i < nf; ++i) {
        unsigned flags = 0, cd[8] = {0};
        size_t ncd = 8;
        char name[64];
        H5Z_filter_t id = H5Pget_filter2(dcpl.get(), static_cast<unsigned>(i), &flags, &ncd, cd, sizeof name, name,
                                         nullptr);
        filters.push_back(id);
        if (id == H5Z_FILTER_DEFLATE || id == H5Z_FILTER_FLETCHER32) continue;
        if (id == H5Z_FILTER_SHUFFLE && (ncd == 0 || cd[0] <= 1)) continue;  // 1-byte elements: identity
        known = false;
      }
      raw_path = known && nf <= 31;
    } else {
      block_rows = std::min<int64_t>(block_rows, std::max<int64_t>(n, 1));
    }
    // (A chunk longer than the dataset stays one block of the chunk's length: its raw form decodes
    // to the whole chunk, fill rows included.)
    const int64_t block_bytes = block_rows * d;
    capacity_ = static_cast<size_t>(std::max<int64_t>(4, cache_bytes / std::max<int64_t>(block_bytes, 1)));
    const int64_t nblocks = (n + block_rows - 1) / block_rows;
    capacity_ = std::min<size_t>(capacity_, static_cast<size_t>(std::max<int64_t>(nblocks, 1)));
    slot_of_block_.assign(static_cast<size_t>(nblocks), -1);
  }

  // Copy rows order[i].first (sorted ascending) to out + order[i].second * d.
  void gather(const std::vector<std::pair<int64_t, int64_t>>& order, uint8_t* out) {
    std::lock_guard<std::mutex> lock(mu_);
    decode_missing_in_parallel(order);
    for (size_t i = 0; i < order.size();) {
      const int64_t block = order[i].first / block_rows;
      const uint8_t* base = block_data(block);
      const int64_t first = block * block_rows;
      for (; i < order.size() && order[i].first / block_rows == block; ++i)
        std::memcpy(out + order[i].second * d, base + (order[i].first - first) * d, static_cast<size_t>(d));
    }
  }

  StreamStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    StreamStats st = stats_;
    st.cache_capacity_blocks = static_cast<int64_t>(capacity_);
    st.block_rows = block_rows;
    return st;
  }

 private:
  struct Slot {
    int64_t block = -1;
    bool referenced = false;
    bool pinned = false;  // holds a block of the batch being gathered: not evictable
    std::vector<uint8_t> data;
  };
  struct Scratch {
    std::vector<uint8_t> raw, inflated;
  };

  int64_t rows_of(int64_t block) const { return std::min(block_rows, n - block * block_rows); }

  // A free slot: a new one below capacity, else CLOCK (second chance) eviction of an unpinned one.
  int32_t take_slot() {
    if (slots_.size() < capacity_) {
      slots_.emplace_back();
      return static_cast<int32_t>(slots_.size() - 1);
    }
    for (size_t tries = 0;; ++tries) {
      LS_CHECK(tries <= 2 * slots_.size() + 1, "stream cache: every slot is pinned");
      Slot& c = slots_[hand_];
      if (!c.pinned && !c.referenced) break;
      if (!c.pinned) c.referenced = false;
      hand_ = (hand_ + 1) % slots_.size();
    }
    const int32_t s = static_cast<int32_t>(hand_);
    hand_ = (hand_ + 1) % slots_.size();
    if (slots_[s].block >= 0) slot_of_block_[slots_[s].block] = -1;
    slots_[s].block = -1;
    return s;
  }

  const uint8_t* block_data(int64_t block) {
    int32_t s = slot_of_block_[block];
    if (s >= 0) {
      ++stats_.cache_hits;
      slots_[s].referenced = true;
      return slots_[s].data.data();
    }
    s = take_slot();
    Slot& slot = slots_[s];
    slot.data.resize(static_cast<size_t>(block_rows * d));
    load(block, rows_of(block), slot.data.data(), scratch_, stats_);
    slot.block = block;
    slot.referenced = true;
    slot_of_block_[block] = s;
    return slot.data.data();
  }

  // When a batch misses several blocks, decode them on up to decode_threads_ threads (the caller
  // included) before the serial gather, which then only hits. inflate is ~80 % of a cold read's
  // time and runs in parallel; HDF5's own calls serialise on its library lock. Skipped when the
  // batch's blocks exceed the cache (the serial path then decodes and copies one block at a time).
  void decode_missing_in_parallel(const std::vector<std::pair<int64_t, int64_t>>& order) {
    if (decode_threads_ < 2) return;
    batch_blocks_.clear();
    for (const auto& [row, k] : order)
      if (batch_blocks_.empty() || batch_blocks_.back() != row / block_rows) batch_blocks_.push_back(row / block_rows);
    size_t missing = 0;
    for (int64_t b : batch_blocks_) missing += slot_of_block_[b] < 0;
    if (missing < 4 || batch_blocks_.size() > capacity_) return;
    std::vector<int64_t> need;
    std::vector<int32_t> dest;
    for (int64_t b : batch_blocks_) {
      const int32_t s = slot_of_block_[b];
      if (s >= 0) slots_[s].pinned = true;
    }
    for (int64_t b : batch_blocks_) {
      if (slot_of_block_[b] >= 0) continue;
      const int32_t s = take_slot();
      slots_[s].pinned = true;
      slots_[s].data.resize(static_cast<size_t>(block_rows * d));
      need.push_back(b);
      dest.push_back(s);
    }
    const int threads = static_cast<int>(std::min<size_t>(static_cast<size_t>(decode_threads_), need.size() / 2));
    std::atomic<size_t> next{0};
    std::vector<char> ok(need.size(), 0);
    std::vector<std::exception_ptr> errors(threads);
    std::vector<StreamStats> counts(threads);
    std::vector<Scratch> scratch(threads > 0 ? threads - 1 : 0);
    auto work = [&](int t) {
      h5::quiet_this_thread();  // HDF5's error printing is switched off per thread
      Scratch& sc = t == 0 ? scratch_ : scratch[t - 1];
      for (size_t i; (i = next.fetch_add(1)) < need.size();) {
        try {
          load(need[i], rows_of(need[i]), slots_[dest[i]].data.data(), sc, counts[t]);
          ok[i] = 1;
        } catch (...) {
          if (!errors[t]) errors[t] = std::current_exception();
        }
      }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) {
      try {
        pool.emplace_back(work, t);
      } catch (const std::system_error&) {  // no thread to be had: the caller decodes the rest
        break;
      }
    }
    work(0);
    for (std::thread& th : pool) th.join();
    for (size_t i = 0; i < need.size(); ++i) {
      Slot& slot = slots_[dest[i]];
      if (!ok[i]) continue;
      slot.block = need[i];
      slot.referenced = true;
      slot_of_block_[need[i]] = dest[i];
      --stats_.cache_hits;  // the gather that follows counts it as a hit; it was a decode
    }
    for (Slot& slot : slots_) slot.pinned = false;
    for (const StreamStats& c : counts) stats_.raw_blocks += c.raw_blocks, stats_.hdf5_blocks += c.hdf5_blocks;
    for (const std::exception_ptr& e : errors)
      if (e) std::rethrow_exception(e);
  }

  void load(int64_t block, int64_t rows, uint8_t* dst, Scratch& sc, StreamStats& st) {
    if (raw_path && load_raw(block, rows, dst, sc)) {
      ++st.raw_blocks;
      return;
    }
    ++st.hdf5_blocks;
    hsize_t start[4] = {static_cast<hsize_t>(block * block_rows), 0, 0, 0};
    hsize_t count[4] = {static_cast<hsize_t>(rows), 0, 0, 0};
    for (int i = 1; i < dims_rank; ++i) count[i] = static_cast<hsize_t>(dims[i]);
    Handle fspace(H5Dget_space(dset.get()), Handle::Kind::Dataspace);
    H5Sselect_hyperslab(fspace.get(), H5S_SELECT_SET, start, nullptr, count, nullptr);
    hsize_t mdims[2] = {static_cast<hsize_t>(rows), static_cast<hsize_t>(d)};
    Handle mspace(H5Screate_simple(2, mdims, nullptr), Handle::Kind::Dataspace);
    if (H5Dread(dset.get(), H5T_NATIVE_UINT8, mspace.get(), fspace.get(), H5P_DEFAULT, dst) < 0)
      throw DataError(str_cat(where(), ": reading images ", start[0], "..", start[0] + rows - 1, " failed (",
                              h5::last_error(), "); the file may be corrupt or truncated"));
  }

  // Raw chunk + our filters. False (and the caller falls back to H5Dread, which reports real
  // corruption with HDF5's own message) when the chunk is unallocated or anything does not decode.
  bool load_raw(int64_t block, int64_t rows, uint8_t* dst, Scratch& sc) {
    (void)rows;
    hsize_t offset[4] = {static_cast<hsize_t>(block * block_rows), 0, 0, 0};
    hsize_t stored = 0;
    if (H5Dget_chunk_storage_size(dset.get(), offset, &stored) < 0 || stored == 0) {
      h5::last_error();
      return false;
    }
    std::vector<uint8_t>& raw_ = sc.raw;
    std::vector<uint8_t>& inflated_ = sc.inflated;
    raw_.resize(static_cast<size_t>(stored));
    uint32_t mask = 0;
    if (H5Dread_chunk(dset.get(), H5P_DEFAULT, offset, &mask, raw_.data()) < 0) {
      h5::last_error();
      return false;
    }
    const size_t want = static_cast<size_t>(block_rows * d);
    std::vector<uint8_t>* cur = &raw_;
    size_t len = static_cast<size_t>(stored);
    for (int i = static_cast<int>(filters.size()) - 1; i >= 0; --i) {
      if (mask & (1u << i)) continue;  // the filter was skipped for this chunk
      switch (filters[i]) {
        case H5Z_FILTER_FLETCHER32: {
          if (len < 4) return false;
          len -= 4;
          const uint8_t* p = cur->data();
          uint32_t stored_sum = static_cast<uint32_t>(p[len]) | static_cast<uint32_t>(p[len + 1]) << 8 |
                                static_cast<uint32_t>(p[len + 2]) << 16 | static_cast<uint32_t>(p[len + 3]) << 24;
          uint32_t sum = hdf5_fletcher32(p, len);
          // HDF5 also accepts the byte-swapped form written by 1.6.0-1.6.2.
          uint32_t rev = ((sum & 0x0000ff00u) >> 8) | ((sum & 0x000000ffu) << 8) | ((sum & 0xff000000u) >> 8) |
                         ((sum & 0x00ff0000u) << 8);
          if (stored_sum != sum && stored_sum != rev) return false;
          break;
        }
        case H5Z_FILTER_DEFLATE: {
          std::vector<uint8_t>* next = cur == &raw_ ? &inflated_ : &raw_;
          next->resize(want + 64);  // the decoded data plus any checksum still to strip
          uLongf out_len = static_cast<uLongf>(next->size());
          if (uncompress(next->data(), &out_len, cur->data(), static_cast<uLong>(len)) != Z_OK) return false;
          cur = next;
          len = out_len;
          break;
        }
        case H5Z_FILTER_SHUFFLE: break;  // 1-byte elements
        default: return false;
      }
    }
    if (len != want) return false;
    std::memcpy(dst, cur->data(), want);
    return true;
  }

  std::mutex mu_;
  size_t capacity_ = 4, hand_ = 0;
  std::vector<Slot> slots_;
  std::vector<int32_t> slot_of_block_;
  Scratch scratch_;
  StreamStats stats_;
  int decode_threads_ = static_cast<int>(std::clamp<unsigned>(std::thread::hardware_concurrency(), 1, 8));
  std::vector<int64_t> batch_blocks_;
};

class StreamSource : public SampleSource {
 public:
  std::shared_ptr<ChunkedImages> images;
  std::vector<int64_t> rows;  // split index -> row in the file's dataset
  bool in_memory() const override { return false; }
  std::string where() const override { return images->where(); }
  const uint8_t* row_ptr(int64_t) const override { return nullptr; }
  StreamStats stats() const override { return images->stats(); }

  // Sorted file rows, gathered block by block from the decoded-block cache.
  void read(const int64_t* idx, int64_t n, uint8_t* out) const override {
    h5::quiet_this_thread();
    if (n == 0) return;
    thread_local std::vector<std::pair<int64_t, int64_t>> order;  // (file row, output slot)
    order.resize(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) order[k] = {rows[idx[k]], k};
    std::sort(order.begin(), order.end());
    images->gather(order, out);
  }
};

struct FileSplit {
  std::string group;          // "train" / "test"
  bool present = false;
  std::vector<int64_t> dims;  // x dims (rank 3 or 4)
  std::vector<int64_t> labels;
  int64_t n() const { return dims.empty() ? 0 : dims[0]; }
};

FileSplit read_split_layout(hid_t file, const std::string& fname, const std::string& group, bool required) {
  FileSplit s;
  s.group = group;
  if (!h5::path_exists(file, "/" + group)) {
    LS_REQUIRE(!required, DataError, fname, ": group /", group, " is missing (expected /", group, "/x and /", group,
               "/y)");
    return s;
  }
  s.present = true;
  const std::string xp = "/" + group + "/x", yp = "/" + group + "/y";
  Handle x = h5::open_dataset(file, fname, xp);
  h5::DatasetInfo xi = h5::describe(x.get());
  LS_REQUIRE((xi.dims.size() == 3 || xi.dims.size() == 4) && xi.type_class == H5T_INTEGER && xi.type_size == 1 &&
                 !xi.is_signed,
             DataError, fname, ": dataset ", xp, ": expected uint8 images of shape [N, H, W, C] (or [N, H, W]), found ",
             xi.type_str(), " ", xi.dims_str());
  for (size_t i = 1; i < xi.dims.size(); ++i)
    LS_REQUIRE(xi.dims[i] > 0, DataError, fname, ": dataset ", xp, ": image dimensions must be positive, found ",
               xi.dims_str());
  s.dims = xi.dims;
  if (s.dims.size() == 3) s.dims.push_back(1);
  Handle y = h5::open_dataset(file, fname, yp);
  h5::DatasetInfo yi = h5::describe(y.get());
  LS_REQUIRE(yi.dims.size() == 1 && yi.type_class == H5T_INTEGER, DataError, fname, ": dataset ", yp,
             ": expected integer labels of shape [N] (uint8 or int32), found ", yi.type_str(), " ", yi.dims_str());
  LS_REQUIRE(yi.dims[0] == s.n(), DataError, fname, ": dataset ", yp, " has ", yi.dims[0], " labels but ", xp, " has ",
             s.n(), " images (expected the same length)");
  s.labels.resize(s.n());
  if (s.n() > 0 && H5Dread(y.get(), H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, s.labels.data()) < 0)
    throw DataError(str_cat(fname, ": dataset ", yp, ": cannot read labels (", h5::last_error(), ")"));
  return s;
}

std::vector<uint8_t> read_all_images(hid_t file, const std::string& fname, const std::string& path, size_t bytes) {
  Handle x = h5::open_dataset(file, fname, path);
  std::vector<uint8_t> buf(bytes);
  if (bytes > 0 && H5Dread(x.get(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()) < 0)
    throw DataError(str_cat(fname, ": dataset ", path, ": cannot read images (", h5::last_error(),
                            "); the file may be corrupt or truncated"));
  return buf;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Split

Split::Split(std::string name, std::shared_ptr<SampleSource> source, std::vector<int32_t> labels, int64_t num_classes)
    : name_(std::move(name)), source_(std::move(source)), labels_(std::move(labels)), num_classes_(num_classes) {
  set_normalization(Normalization{});
}
Split::~Split() = default;
void Split::set_pairing(std::optional<PairSpec> spec, bool fixed) {
  pairing_ = std::move(spec);
  pairs_fixed_ = pairing_.has_value() && fixed;
}
void Split::set_augment(std::optional<AugmentSpec> spec) {
  if (spec) check_augment(*spec, height(), width(), where());
  augment_ = std::move(spec);
}
int64_t Split::height() const { return source_->h; }
int64_t Split::width() const { return source_->w; }
int64_t Split::channels() const { return source_->c; }
int64_t Split::sample_elems() const { return source_->elems(); }
Shape Split::sample_shape() const {
  if (source_->c == 1) return {source_->h, source_->w};
  return {source_->h, source_->w, source_->c};
}
bool Split::in_memory() const { return source_->in_memory(); }
std::string Split::where() const { return source_->where(); }
StreamStats Split::stream_stats() const { return source_->stats(); }

void Split::read_raw(const int64_t* idx, int64_t n, uint8_t* out) const {
  for (int64_t k = 0; k < n; ++k)
    LS_CHECK(idx[k] >= 0 && idx[k] < size(), "sample index ", idx[k], " outside split ", name_, " of size ", size());
  source_->read(idx, n, out);
}

void Split::set_normalization(const Normalization& norm) {
  norm_ = norm;
  const int64_t d = sample_elems(), c = channels();
  a_.assign(d, static_cast<float>(1.0 / norm.scale));
  b_.assign(d, 0.0f);
  if (norm.kind == Standardize::None) return;
  for (int64_t j = 0; j < d; ++j) {
    size_t s = norm.kind == Standardize::PerPixel ? j : j % c;
    double div = std::max(norm.std[s], Normalization::kEpsilon);
    a_[j] = static_cast<float>(1.0 / (norm.scale * div));
    b_[j] = static_cast<float>(-norm.mean[s] / div);
  }
}

namespace {
// dst[j] = src[j] * a[j] + b[j]; the restrict qualifiers let the compiler vectorise without the
// run-time overlap checks it otherwise inserts (out never aliases the per-element tables).
void affine_u8_to_f32(const uint8_t* __restrict src, const float* __restrict a, const float* __restrict b,
                      float* __restrict dst, int64_t d) {
  for (int64_t j = 0; j < d; ++j) dst[j] = static_cast<float>(src[j]) * a[j] + b[j];
}
}  // namespace

void Split::read_float(const int64_t* idx, int64_t n, float* out) const {
  const int64_t d = sample_elems();
  const float* a = a_.data();
  const float* b = b_.data();
  if (source_->in_memory()) {
    for (int64_t k = 0; k < n; ++k)
      LS_CHECK(idx[k] >= 0 && idx[k] < size(), "sample index ", idx[k], " outside split ", name_);
    // Touch every row first (prefetch), so the DRAM misses of the batch's rows overlap instead of
    // stalling the conversion one row at a time.
    for (int64_t k = 0; k < n; ++k) {
      const uint8_t* row = source_->row_ptr(idx[k]);
      for (int64_t off = 0; off < d; off += 64) __builtin_prefetch(row + off);
    }
    for (int64_t k = 0; k < n; ++k) affine_u8_to_f32(source_->row_ptr(idx[k]), a, b, out + k * d, d);
    return;
  }
  thread_local std::vector<uint8_t> scratch;
  scratch.resize(n * d);
  read_raw(idx, n, scratch.data());
  for (int64_t k = 0; k < n; ++k) affine_u8_to_f32(scratch.data() + k * d, a, b, out + k * d, d);
}

// ---------------------------------------------------------------------------------------------
// open_dataset

namespace {

// The rows of the file's split that make up one lockstep split, with their mapped labels.
struct Selection {
  std::vector<int64_t> rows;
  std::vector<int32_t> labels;
};

Selection select(const std::vector<int64_t>& file_labels, int64_t begin, int64_t end, const DataConfig& cfg,
                 bool training, const std::map<int64_t, int32_t>& class_map) {
  Selection s;
  std::map<int64_t, int64_t> per_class;
  for (int64_t r = begin; r < end; ++r) {
    int64_t y = file_labels[r];
    auto it = class_map.find(y);
    if (it == class_map.end()) continue;
    if (training && cfg.limit_per_class > 0 && per_class[y]++ >= cfg.limit_per_class) continue;
    if (training && cfg.limit > 0 && static_cast<int64_t>(s.rows.size()) >= cfg.limit) break;
    s.rows.push_back(r);
    s.labels.push_back(it->second);
  }
  return s;
}

// Streaming: decoded blocks cached per file group. Random reads touch every block, so cache as
// much as data.stream_cache_mb allows (default 256 MiB), never more than the whole dataset.
int64_t chunk_cache_bytes_for(int64_t total_bytes, int64_t limit_mb) {
  const int64_t max_bytes = limit_mb << 20;
  return std::max<int64_t>(1 << 20, std::min(total_bytes + (1 << 20), max_bytes));
}

}  // namespace

Dataset open_dataset(const DataConfig& cfg) {
  h5::quiet_this_thread();
  const std::string& fname = cfg.path;
  auto file = std::make_shared<Handle>(h5::open_file_read(fname));
  auto version = h5::read_int_attr(file->get(), "format_version", fname);
  LS_REQUIRE(!version || *version == 1, DataError, fname, ": format_version ", version.value_or(0),
             " is not supported (this lockstep reads version 1)");
  auto names = h5::read_string_list_attr(file->get(), "class_names", fname);

  FileSplit tr = read_split_layout(file->get(), fname, "train", true);
  FileSplit te = read_split_layout(file->get(), fname, "test", false);
  if (te.present)
    LS_REQUIRE(std::equal(tr.dims.begin() + 1, tr.dims.end(), te.dims.begin() + 1), DataError, fname,
               ": /test/x images are ", te.dims[1], "x", te.dims[2], "x", te.dims[3], " but /train/x images are ",
               tr.dims[1], "x", tr.dims[2], "x", tr.dims[3]);

  int64_t num_file_classes = 0;
  if (names) {
    num_file_classes = static_cast<int64_t>(names->size());
    LS_REQUIRE(num_file_classes > 0, DataError, fname, ": attribute class_names is empty");
  } else {
    for (auto* s : {&tr, &te})
      for (int64_t y : s->labels) num_file_classes = std::max(num_file_classes, y + 1);
  }
  for (auto* s : {&tr, &te}) {
    for (int64_t i = 0; i < s->n(); ++i) {
      int64_t y = s->labels[i];
      LS_REQUIRE(y >= 0 && y < num_file_classes, DataError, fname, ": dataset /", s->group, "/y: label ", y,
                 " at index ", i, " is outside the class range 0..", num_file_classes - 1,
                 names ? " (the file's class_names attribute lists " + std::to_string(num_file_classes) + " classes)"
                       : "");
    }
  }
  std::vector<std::string> file_names = names ? *names : std::vector<std::string>{};
  if (!names)
    for (int64_t k = 0; k < num_file_classes; ++k) file_names.push_back(std::to_string(k));

  // Class filtering / relabelling.
  std::map<int64_t, int32_t> class_map;
  std::vector<int64_t> kept = cfg.classes;
  if (kept.empty())
    for (int64_t k = 0; k < num_file_classes; ++k) kept.push_back(k);
  for (int64_t k : kept)
    LS_REQUIRE(k < num_file_classes, DataError, fname, ": data.classes lists class ", k, " but the file has ",
               num_file_classes, " classes (0..", num_file_classes - 1, ")");
  for (int64_t k : cfg.binary_positive)
    LS_REQUIRE(k < num_file_classes, DataError, fname, ": data.binary_positive lists class ", k,
               " but the file has ", num_file_classes, " classes");
  Dataset ds;
  ds.config = cfg;
  const bool binary = !cfg.binary_positive.empty();
  for (size_t i = 0; i < kept.size(); ++i) {
    bool pos = std::find(cfg.binary_positive.begin(), cfg.binary_positive.end(), kept[i]) != cfg.binary_positive.end();
    class_map[kept[i]] = binary ? (pos ? 1 : 0) : static_cast<int32_t>(i);
    if (!binary) ds.class_names.push_back(file_names[kept[i]]);
  }
  if (binary) {
    std::string neg, pos;
    for (int64_t k : kept) {
      bool p = class_map[k] == 1;
      std::string& s = p ? pos : neg;
      s += (s.empty() ? "" : "|") + file_names[k];
    }
    ds.class_names = {neg.empty() ? "none" : neg, pos};
  }
  const int64_t num_classes = static_cast<int64_t>(ds.class_names.size());

  // Subset: a python slice [lo, hi) of the file's training split, before the validation split.
  int64_t lo = 0, hi = tr.n();
  if (cfg.subset.active()) {
    const int64_t nf = tr.n();
    if (cfg.subset.start) {
      lo = *cfg.subset.start < 0 ? nf + *cfg.subset.start : *cfg.subset.start;
      LS_REQUIRE(lo >= 0, DataError, fname, ": data.subset.start = ", *cfg.subset.start,
                 " reaches before the first of the ", nf, " images of /train");
    }
    if (cfg.subset.stop) {
      LS_REQUIRE(*cfg.subset.stop <= nf, DataError, fname, ": data.subset.stop = ", *cfg.subset.stop,
                 " is beyond the ", nf, " images of /train");
      hi = *cfg.subset.stop < 0 ? nf + *cfg.subset.stop : *cfg.subset.stop;
      LS_REQUIRE(hi >= 0, DataError, fname, ": data.subset.stop = ", *cfg.subset.stop,
                 " reaches before the first of the ", nf, " images of /train");
    }
    LS_REQUIRE(lo < hi, DataError, fname, ": data.subset selects no images of /train (", nf, " images): start = ",
               cfg.subset.start ? str_cat(*cfg.subset.start) : std::string("0"), ", stop = ",
               cfg.subset.stop ? str_cat(*cfg.subset.stop) : str_cat(nf), " (start must be below stop)");
  }
  const char* train_what = cfg.subset.active() ? "data.subset of /train" : "/train";

  // Validation split: positions within the subset of the file's training split, before filtering.
  const int64_t n = hi - lo;
  int64_t tb = 0, te_ = n, vb = 0, ve = 0;
  switch (cfg.validation.kind) {
    case ValidationSpec::Kind::None: break;
    case ValidationSpec::Kind::First:
      LS_REQUIRE(cfg.validation.count < n, DataError, fname, ": data.validation.first = ", cfg.validation.count,
                 " leaves no training samples (", train_what, " has ", n, ")");
      vb = 0, ve = cfg.validation.count, tb = ve;
      break;
    case ValidationSpec::Kind::Last:
      LS_REQUIRE(cfg.validation.count < n, DataError, fname, ": data.validation.last = ", cfg.validation.count,
                 " leaves no training samples (", train_what, " has ", n, ")");
      vb = n - cfg.validation.count, ve = n, te_ = vb;
      break;
    case ValidationSpec::Kind::Fraction: {
      int64_t split_at = static_cast<int64_t>(std::floor(static_cast<double>(n) * (1.0 - cfg.validation.fraction)));
      vb = split_at, ve = n, te_ = split_at;
      break;
    }
  }
  Selection s_train = select(tr.labels, lo + tb, lo + te_, cfg, true, class_map);
  Selection s_val = select(tr.labels, lo + vb, lo + ve, cfg, false, class_map);
  Selection s_test = te.present ? select(te.labels, 0, te.n(), cfg, false, class_map) : Selection{};
  LS_REQUIRE(!s_train.rows.empty(), DataError, fname, ": no training samples left after the validation split and ",
             "class filtering");

  const int64_t h = tr.dims[1], w = tr.dims[2], c = tr.dims[3], d = h * w * c;
  const int64_t limit_bytes = cfg.memory_limit_mb << 20;
  auto use_memory = [&](int64_t file_rows) {
    if (cfg.cache == CacheMode::Memory) return true;
    if (cfg.cache == CacheMode::Stream) return false;
    return file_rows * d <= limit_bytes;
  };
  auto make_sources = [&](const FileSplit& fsplit, std::vector<const Selection*> sels) {
    std::vector<std::shared_ptr<SampleSource>> out;
    const std::string xp = "/" + fsplit.group + "/x";
    if (use_memory(fsplit.n())) {
      std::vector<uint8_t> all = read_all_images(file->get(), fname, xp, static_cast<size_t>(fsplit.n() * d));
      for (const Selection* sel : sels) {
        auto m = std::make_shared<MemorySource>();
        m->h = h, m->w = w, m->c = c;
        m->where_ = fname + ":" + xp + " (in memory)";
        m->data.resize(sel->rows.size() * d);
        for (size_t i = 0; i < sel->rows.size(); ++i)
          std::memcpy(m->data.data() + i * d, all.data() + sel->rows[i] * d, d);
        out.push_back(m);
      }
    } else {
      auto img = std::make_shared<ChunkedImages>();
      img->file_name = fname;
      img->dataset_path = xp;
      img->file = h5::open_file_read(fname);
      Handle dapl(H5Pcreate(H5P_DATASET_ACCESS), Handle::Kind::Plist);
      H5Pset_chunk_cache(dapl.get(), 0, 0, 1.0);  // we cache decoded blocks ourselves
      hid_t ds_id = H5Dopen2(img->file.get(), xp.c_str(), dapl.get());
      LS_REQUIRE(ds_id >= 0, DataError, fname, ": cannot open ", xp, " (", h5::last_error(), ")");
      img->dset = Handle(ds_id, Handle::Kind::Dataset);
      img->init(chunk_cache_bytes_for(fsplit.n() * d, cfg.stream_cache_mb));
      for (const Selection* sel : sels) {
        auto st = std::make_shared<StreamSource>();
        st->h = h, st->w = w, st->c = c;
        st->images = img;
        st->rows = sel->rows;
        out.push_back(st);
      }
    }
    return out;
  };
  std::vector<const Selection*> train_sels = {&s_train};
  if (cfg.validation.kind != ValidationSpec::Kind::None) train_sels.push_back(&s_val);
  auto srcs = make_sources(tr, train_sels);
  auto train = std::make_shared<Split>("train", srcs[0], s_train.labels, num_classes);
  std::shared_ptr<Split> val, test;
  if (srcs.size() > 1) val = std::make_shared<Split>("validation", srcs[1], s_val.labels, num_classes);
  if (te.present) test = std::make_shared<Split>("test", make_sources(te, {&s_test})[0], s_test.labels, num_classes);

  // Statistics of the training split (after the validation split and filtering), exact integer sums.
  Normalization norm;
  norm.kind = cfg.standardize;
  norm.scale = cfg.scale;
  if (cfg.standardize != Standardize::None) {
    const int64_t groups = cfg.standardize == Standardize::PerPixel ? d : c;
    std::vector<uint64_t> sum(groups, 0), sq(groups, 0);
    constexpr int64_t kBlock = 4096;
    std::vector<uint8_t> buf(kBlock * d);
    std::vector<int64_t> idx(kBlock);
    const int64_t ntr = train->size();
    for (int64_t b = 0; b < ntr; b += kBlock) {
      int64_t m = std::min(kBlock, ntr - b);
      std::iota(idx.begin(), idx.begin() + m, b);
      train->read_raw(idx.data(), m, buf.data());
      for (int64_t k = 0; k < m; ++k) {
        const uint8_t* p = buf.data() + k * d;
        for (int64_t j = 0; j < d; ++j) {
          int64_t g = groups == d ? j : j % c;
          sum[g] += p[j];
          sq[g] += static_cast<uint64_t>(p[j]) * p[j];
        }
      }
    }
    const double count = static_cast<double>(ntr) * static_cast<double>(d / groups);
    norm.mean.resize(groups);
    norm.std.resize(groups);
    for (int64_t g = 0; g < groups; ++g) {
      double mean = static_cast<double>(sum[g]) / count;
      double var = std::max(0.0, static_cast<double>(sq[g]) / count - mean * mean);
      norm.mean[g] = mean / cfg.scale;
      norm.std[g] = std::sqrt(var) / cfg.scale;
    }
  }
  for (auto& s : {train, val, test})
    if (s) s->set_normalization(norm);
  if (cfg.pairs) {
    // Training: a fresh draw per epoch; validation and test: one fixed draw, one pair per image.
    PairSpec eval = *cfg.pairs;
    eval.per_epoch = 0;
    train->set_pairing(cfg.pairs, false);
    if (val) val->set_pairing(eval, true);
    if (test) test->set_pairing(eval, true);
    for (auto& s : {train, val, test})
      if (s) PairSampler check(*s, *s->pairing(), 0);  // refuses splits that cannot give their pairs, now
  }
  // Augmentation: the training split only (validation, test and predict see the images as stored).
  if (cfg.augment && cfg.augment->active()) train->set_augment(cfg.augment);
  ds.normalization = norm;
  ds.train = train;
  ds.validation = val;
  ds.test = test;
  return ds;
}

// ---------------------------------------------------------------------------------------------
// Writing

namespace {

void write_split(hid_t file, const std::string& group, const RawSplit& s, int level) {
  LS_CHECK(static_cast<int64_t>(s.x.size()) == s.n * s.h * s.w * s.c, "images buffer size mismatch");
  LS_CHECK(static_cast<int64_t>(s.y.size()) == s.n, "labels buffer size mismatch");
  Handle g(H5Gcreate2(file, group.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), Handle::Kind::Group);
  LS_REQUIRE(g.valid(), DataError, "cannot create group ", group, " (", h5::last_error(), ")");
  const int64_t d = s.h * s.w * s.c;
  hsize_t dims[4] = {(hsize_t)s.n, (hsize_t)s.h, (hsize_t)s.w, (hsize_t)s.c};
  Handle space(H5Screate_simple(4, dims, nullptr), Handle::Kind::Dataspace);
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), Handle::Kind::Plist);
  if (s.n > 0) {
    // ~16 KiB chunks: random single-sample reads decompress little; Fletcher32 detects corruption.
    hsize_t rows = static_cast<hsize_t>(std::clamp<int64_t>(16384 / std::max<int64_t>(d, 1), 1, s.n));
    hsize_t chunk[4] = {rows, (hsize_t)s.h, (hsize_t)s.w, (hsize_t)s.c};
    H5Pset_chunk(dcpl.get(), 4, chunk);
    H5Pset_fletcher32(dcpl.get());
    H5Pset_deflate(dcpl.get(), level);
  }
  Handle x(H5Dcreate2(g.get(), "x", H5T_STD_U8LE, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
           Handle::Kind::Dataset);
  LS_REQUIRE(x.valid(), DataError, "cannot create ", group, "/x (", h5::last_error(), ")");
  if (s.n > 0)
    LS_REQUIRE(H5Dwrite(x.get(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, s.x.data()) >= 0, DataError,
               "cannot write ", group, "/x (", h5::last_error(), ")");
  bool small = std::all_of(s.y.begin(), s.y.end(), [](int32_t v) { return v >= 0 && v <= 255; });
  hsize_t n = s.n;
  Handle yspace(H5Screate_simple(1, &n, nullptr), Handle::Kind::Dataspace);
  Handle y(H5Dcreate2(g.get(), "y", small ? H5T_STD_U8LE : H5T_STD_I32LE, yspace.get(), H5P_DEFAULT, H5P_DEFAULT,
                      H5P_DEFAULT),
           Handle::Kind::Dataset);
  LS_REQUIRE(y.valid(), DataError, "cannot create ", group, "/y (", h5::last_error(), ")");
  if (s.n > 0)
    LS_REQUIRE(H5Dwrite(y.get(), H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, s.y.data()) >= 0, DataError,
               "cannot write ", group, "/y (", h5::last_error(), ")");
}

void fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

void write_dataset_file(const RawDataset& ds, const std::string& path, int level) {
  h5::quiet_this_thread();
  const std::string tmp = path + ".tmp";
  // The output's folder is made if missing (`--out runs/data/x.h5` on a fresh checkout).
  if (const fs::path dir = fs::path(path).parent_path(); !dir.empty()) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    LS_REQUIRE(!ec, DataError, path, ": cannot create its folder ", dir.string(), " (", ec.message(), ")");
  }
  try {
    {
      Handle f(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), Handle::Kind::File);
      LS_REQUIRE(f.valid(), DataError, tmp, ": cannot create the output file (", h5::last_error(), ")");
      h5::write_string_attr(f.get(), "format", "lockstep-dataset");
      h5::write_int_attr(f.get(), "format_version", 1);
      h5::write_string_attr(f.get(), "name", ds.name);
      h5::write_string_list_attr(f.get(), "class_names", ds.class_names);
      h5::write_string_attr(f.get(), "source", ds.source);
      h5::write_string_attr(f.get(), "source_md5", ds.source_md5);
      write_split(f.get(), "train", ds.train, level);
      write_split(f.get(), "test", ds.test, level);
      LS_REQUIRE(f.reset() >= 0, DataError, tmp, ": closing the output file failed (", h5::last_error(), ")");
    }
    fsync_path(tmp, false);
    LS_REQUIRE(std::rename(tmp.c_str(), path.c_str()) == 0, DataError, path, ": cannot rename ", tmp, " into place: ",
               std::strerror(errno));
    fs::path dir = fs::path(path).parent_path();
    fsync_path(dir.empty() ? "." : dir.string(), true);
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

FileSummary summarize_file(const std::string& path) {
  h5::quiet_this_thread();
  Handle f = h5::open_file_read(path);
  FileSummary out;
  out.class_names = h5::read_string_list_attr(f.get(), "class_names", path).value_or(std::vector<std::string>{});
  out.name = h5::read_string_attr(f.get(), "name", path).value_or("");
  out.source = h5::read_string_attr(f.get(), "source", path).value_or("");
  out.source_md5 = h5::read_string_attr(f.get(), "source_md5", path).value_or("");
  for (const char* g : {"train", "test"}) {
    FileSplit s = read_split_layout(f.get(), path, g, std::string(g) == "train");
    if (!s.present) continue;
    SplitSummary ss;
    ss.name = g;
    Handle x = h5::open_dataset(f.get(), path, str_cat("/", g, "/x"));
    Handle y = h5::open_dataset(f.get(), path, str_cat("/", g, "/y"));
    h5::DatasetInfo xi = h5::describe(x.get());
    ss.x_dims = xi.dims;
    ss.x_type = xi.type_str();
    ss.y_type = h5::describe(y.get()).type_str();
    int64_t k = static_cast<int64_t>(out.class_names.size());
    for (int64_t v : s.labels) k = std::max(k, v + 1);
    ss.class_counts.assign(k, 0);
    for (int64_t i = 0; i < s.n(); ++i) {
      int64_t v = s.labels[i];
      LS_REQUIRE(v >= 0, DataError, path, ": dataset /", g, "/y: label ", v, " at index ", i, " is negative");
      LS_REQUIRE(out.class_names.empty() || v < static_cast<int64_t>(out.class_names.size()), DataError, path,
                 ": dataset /", g, "/y: label ", v, " at index ", i, " is outside the class range 0..",
                 out.class_names.size() - 1);
      ss.class_counts[v]++;
      if (i < 10) ss.first_labels.push_back(v);
    }
    out.splits.push_back(ss);
  }
  return out;
}

}  // namespace lockstep::data
