#include "test_util.h"

#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "data/convert.h"

namespace lockstep::data::testing {

namespace fs = std::filesystem;

TempDir::TempDir() {
  std::string tmpl = (fs::temp_directory_path() / "lockstep-data-XXXXXX").string();
  char* p = mkdtemp(tmpl.data());
  if (!p) throw std::runtime_error("mkdtemp failed");
  path_ = p;
}
TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

void make_idx_dir(const std::string& dir, int64_t n_train, int64_t n_test, bool gz) {
  const std::string ext = gz ? ".gz" : "";
  for (auto [prefix, n] : {std::pair<std::string, int64_t>{"train", n_train}, {"t10k", n_test}}) {
    std::vector<uint8_t> x(n * 784), y(n);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < 784; ++j) x[i * 784 + j] = gen_pixel(i, j);
      y[i] = static_cast<uint8_t>(gen_label(i));
    }
    write_idx(dir + "/" + prefix + "-images-idx3-ubyte" + ext, {n, 28, 28}, x);
    write_idx(dir + "/" + prefix + "-labels-idx1-ubyte" + ext, {n}, y);
  }
}

void make_cifar_dir(const std::string& dir, int64_t n_per_batch, int batches, int64_t n_test) {
  auto write = [](const std::string& path, int64_t n, int64_t offset) {
    std::ofstream o(path, std::ios::binary);
    for (int64_t i = offset; i < offset + n; ++i) {
      o.put(static_cast<char>(gen_label(i)));
      for (int ch = 0; ch < 3; ++ch)
        for (int p = 0; p < 1024; ++p) o.put(static_cast<char>(gen_pixel(i, p * 3 + ch)));
    }
  };
  for (int b = 1; b <= batches; ++b)
    write(dir + "/data_batch_" + std::to_string(b) + ".bin", n_per_batch, (b - 1) * n_per_batch);
  write(dir + "/test_batch.bin", n_test, 0);
  std::ofstream m(dir + "/batches.meta.txt");
  for (const auto& n : class_names_of(SourceFormat::Cifar10)) m << n << "\n";
  m << "\n";
}

void write_index_file(const std::string& path, int64_t n_train, int64_t n_test, const std::vector<int32_t>& train_labels) {
  RawDataset ds;
  ds.name = "index";
  for (int k = 0; k < 10; ++k) ds.class_names.push_back("c" + std::to_string(k));
  ds.source = "generated";
  auto fill = [](RawSplit& s, int64_t n, int64_t offset) {
    s.n = n, s.h = 2, s.w = 2, s.c = 1;
    s.x.resize(n * 4);
    s.y.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      uint32_t v = static_cast<uint32_t>(i + offset);
      for (int b = 0; b < 4; ++b) s.x[i * 4 + b] = static_cast<uint8_t>(v >> (8 * b));
      s.y[i] = static_cast<int32_t>(i % 10);
    }
  };
  fill(ds.train, n_train, 0);
  if (!train_labels.empty()) {
    LS_CHECK(int64_t(train_labels.size()) == n_train, "write_index_file: one label per training sample");
    ds.train.y = train_labels;
  }
  fill(ds.test, n_test, 1000000);
  write_dataset_file(ds, path);
}

int64_t decode_index(const float* s) {
  int64_t v = 0;
  for (int b = 0; b < 4; ++b) v |= static_cast<int64_t>(s[b]) << (8 * b);
  return v;
}

int shell(const std::string& cmd) {
  int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

}  // namespace lockstep::data::testing
