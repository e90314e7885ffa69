// Datasets in the lockstep HDF5 layout, the run file's `data:` section, and the preprocessing the
// chapter does (validation split, scaling, standardization, class filtering, sample limits).
//
// Layout (docs/data.md; stable, files written by h5py in it load too):
//   /train/x  uint8 [N, H, W, C] (or [N, H, W] for C = 1), chunked + compressed
//   /train/y  integer [N] (uint8 or int32 written; any integer type read)
//   /test/x, /test/y   the same (optional when only training)
//   root attributes: class_names (strings), source, source_md5, name, format, format_version = 1
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/tensor.h"
#include "data/augment.h"
#include "data/pairs.h"

namespace lockstep::data {

enum class Standardize { None, PerPixel, PerChannel };
enum class CacheMode { Auto, Memory, Stream };
enum class LastBatch { Keep, Drop, Pad };
const char* standardize_name(Standardize s);
const char* cache_mode_name(CacheMode c);
const char* last_batch_name(LastBatch l);

// Which samples of the file's training split become the validation split (taken before any class
// filtering, as the chapter does: X_valid, X_train = X_train_full[:5000], X_train_full[5000:]).
struct ValidationSpec {
  enum class Kind { None, First, Last, Fraction } kind = Kind::None;
  int64_t count = 0;      // First / Last
  double fraction = 0.0;  // Fraction: the last floor(N*f)... see docs/configuration.md (Keras validation_split)
};

// A python slice [start:stop) of the file's training split, taken before the validation split is carved
// and before class filtering. Negative values count from the end (as python); a stop beyond the
// file's size, or an empty slice, is refused once the size is known (open_dataset).
struct SubsetSpec {
  std::optional<int64_t> start, stop;  // absent: 0, N
  bool active() const { return start.has_value() || stop.has_value(); }
};

struct DataConfig {
  std::string path;                       // resolved file path
  SubsetSpec subset;                      // `subset: {start: I, stop: J}`
  ValidationSpec validation;
  double scale = 1.0;                     // x / scale
  Standardize standardize = Standardize::None;
  std::vector<int64_t> classes;           // keep only these, relabelled 0..K-1 in this order (empty = all)
  std::vector<int64_t> binary_positive;   // optional: label = 1 if the original class is listed, else 0
  int64_t limit_per_class = -1;           // training split only: first N per original class (-1 = all)
  int64_t limit = -1;                     // training split only: first N after filtering (-1 = all)
  CacheMode cache = CacheMode::Auto;
  int64_t memory_limit_mb = 2048;         // auto: hold a split in memory when its images fit in this
  int64_t stream_cache_mb = 256;          // streaming: decoded image blocks cached per file group (min 1 MiB)
  LastBatch last_batch = LastBatch::Keep;
  int prefetch = 2;                       // batches prepared ahead by the background thread
  std::optional<PairSpec> pairs;          // `pairs: {...}`: every split yields image pairs (data/pairs.h)
  std::optional<AugmentSpec> augment;     // `augment: {...}`: the training split's random crop / flip (data/augment.h)
};

// Parse the run file's `data:` node. Relative paths resolve against `run_file_dir`, then the CWD.
DataConfig parse_data_config(const ConfigNode& data_node, const std::string& run_file_dir);

// Per-element affine preprocessing: float(x) = raw * a[j] + b[j], j the element within a sample.
struct Normalization {
  Standardize kind = Standardize::None;
  double scale = 1.0;
  std::vector<double> mean;  // in scaled units; per pixel (H*W*C) or per channel (C); empty for None
  std::vector<double> std;   // population std (ddof 0), same shape as mean
  static constexpr double kEpsilon = 1e-7;  // divisor = max(std, kEpsilon), as Keras's Normalization
};

// Streaming counters (all zero for an in-memory split): blocks decoded from raw chunks by lockstep,
// blocks read through H5Dread (filters or layouts not decoded here), and block cache hits.
struct StreamStats {
  int64_t raw_blocks = 0, hdf5_blocks = 0, cache_hits = 0, cache_capacity_blocks = 0, block_rows = 0;
};

class SampleSource;  // memory, or whole HDF5 chunks decoded into a bounded cache (dataset.cpp)

// One split after filtering: `size()` samples of [H, W, C] uint8 and int32 labels in 0..classes-1.
// Thread-safe for concurrent reads.
class Split {
 public:
  Split(std::string name, std::shared_ptr<SampleSource> source, std::vector<int32_t> labels,
        int64_t num_classes);
  ~Split();
  const std::string& name() const { return name_; }
  int64_t size() const { return static_cast<int64_t>(labels_.size()); }
  int64_t height() const;
  int64_t width() const;
  int64_t channels() const;
  int64_t sample_elems() const;                       // H*W*C
  Shape sample_shape() const;                         // [H, W] when C == 1, else [H, W, C]
  const std::vector<int32_t>& labels() const { return labels_; }
  int64_t num_classes() const { return num_classes_; }
  bool in_memory() const;
  std::string where() const;                          // "FILE:/train/x" for messages
  StreamStats stream_stats() const;                   // shared by the splits of one file group

  // Raw pixels of samples idx[0..n) (split indices, any order) into out[n * sample_elems()].
  void read_raw(const int64_t* idx, int64_t n, uint8_t* out) const;
  // Preprocessed float32 pixels into out[n * sample_elems()].
  void read_float(const int64_t* idx, int64_t n, float* out) const;

  void set_normalization(const Normalization& norm);
  const Normalization& normalization() const { return norm_; }

  // Pairing (data/pairs.h): with a spec, the loader yields pairs of images instead of single images.
  // `fixed`: every epoch gets epoch 0's draw (validation and test: a fixed draw); otherwise a fresh
  // draw per epoch (training).
  void set_pairing(std::optional<PairSpec> spec, bool fixed);
  const std::optional<PairSpec>& pairing() const { return pairing_; }
  bool pairs_fixed() const { return pairs_fixed_; }
  int num_inputs() const { return pairing_ ? 2 : 1; }  // model inputs per sample, each of sample_shape()

  // Augmentation (data/augment.h): set on the training split only (open_dataset); a loader applies it
  // when it is a training loader (ShardedLoader's `augment`). Refuses a spec the image size cannot take.
  void set_augment(std::optional<AugmentSpec> spec);
  const std::optional<AugmentSpec>& augment() const { return augment_; }

 private:
  std::string name_;
  std::shared_ptr<SampleSource> source_;
  std::vector<int32_t> labels_;
  int64_t num_classes_;
  Normalization norm_;
  std::vector<float> a_, b_;  // per element of a sample
  std::optional<PairSpec> pairing_;
  bool pairs_fixed_ = false;
  std::optional<AugmentSpec> augment_;
};

struct Dataset {
  std::shared_ptr<const Split> train, validation, test;  // validation/test may be null
  std::vector<std::string> class_names;                   // after filtering/relabelling
  Normalization normalization;
  DataConfig config;
};

// Open the file in `config.path`, check the layout, apply the preprocessing. DataError on bad files.
Dataset open_dataset(const DataConfig& config);

// Raw contents of a dataset file (for converters, tests and `inspect`).
struct RawSplit {
  int64_t n = 0, h = 0, w = 0, c = 1;
  std::vector<uint8_t> x;     // n*h*w*c
  std::vector<int32_t> y;     // n
};
struct RawDataset {
  std::string name;                      // "fashion-mnist"
  std::vector<std::string> class_names;
  std::string source;                    // where the files came from
  std::string source_md5;                // "file=md5;file=md5"
  RawSplit train, test;
};

// Write `ds` in the layout to `path` atomically: PATH.tmp, fsync, rename, fsync(dir). On failure
// the tmp file is removed and the previous `path` (if any) is untouched.
void write_dataset_file(const RawDataset& ds, const std::string& path, int compression_level = 4);

// Summary used by `lockstep data inspect`.
struct SplitSummary {
  std::string name;
  std::vector<int64_t> x_dims;
  std::string x_type, y_type;
  std::vector<int64_t> class_counts;
  std::vector<int64_t> first_labels;
};
struct FileSummary {
  std::vector<std::string> class_names;
  std::string name, source, source_md5;
  std::vector<SplitSummary> splits;
};
FileSummary summarize_file(const std::string& path);

}  // namespace lockstep::data
