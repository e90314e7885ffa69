// Helpers for the data tests: temporary folders and small generated files in each official format.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "data/dataset.h"

namespace lockstep::data::testing {

class TempDir {
 public:
  TempDir();
  ~TempDir();
  std::string path() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Pixel j of generated image i (any format): a deterministic byte.
inline uint8_t gen_pixel(int64_t i, int64_t j) { return static_cast<uint8_t>((i * 31 + j * 7) % 251); }
inline int gen_label(int64_t i) { return static_cast<int>((i * 7 + 3) % 10); }

// The four IDX files of a tiny MNIST-like set (28x28), gzipped or not.
void make_idx_dir(const std::string& dir, int64_t n_train, int64_t n_test, bool gz);
// CIFAR-10 binary files: `batches` data_batch_k.bin of n_per_batch records, test_batch.bin, batches.meta.txt.
void make_cifar_dir(const std::string& dir, int64_t n_per_batch, int batches, int64_t n_test);

// A dataset file whose sample i of each split has pixels = little-endian bytes of the value
// (i + offset): H = W = 2, C = 1; label = i % 10. Train values 0..n_train-1, test 1000000 + i.
// `train_labels`, when given, replace the training split's labels (i % 10; one per training sample).
void write_index_file(const std::string& path, int64_t n_train, int64_t n_test,
                      const std::vector<int32_t>& train_labels = {});
int64_t decode_index(const float* sample);  // inverse of the above (scale 1, no standardization)

// A run file's `data:` section given as YAML text, parsed as the trainer parses it (paths relative to `dir`).
inline DataConfig parse(const std::string& yaml, const std::string& dir = "/runs") {
  ConfigNode root = load_config_string(yaml, "run.yaml");
  return parse_data_config(root["data"], dir);
}

// The message of the ConfigError/DataError `f` throws, prefixed with its kind, or "<no error>".
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const ConfigError& e) {
    return std::string("ConfigError: ") + e.what();
  } catch (const DataError& e) {
    return std::string("DataError: ") + e.what();
  }
  return "<no error>";
}

// Run a shell command, return its exit status.
int shell(const std::string& cmd);

}  // namespace lockstep::data::testing
