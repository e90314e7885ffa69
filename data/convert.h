// Converters from the official distributions to the lockstep HDF5 layout.
//   fashion-mnist, mnist: the four IDX files, gzipped (.gz) or not, under their official names
//     (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte;
//     MNIST's "train-images.idx3-ubyte" spelling is accepted too).
//   cifar10: the binary version: data_batch_1..5.bin, test_batch.bin, batches.meta.txt
//     (3,073-byte records: 1 label byte, then 1024 R, 1024 G, 1024 B bytes, row-major 32x32).
#pragma once

#include <string>
#include <vector>

#include "data/dataset.h"

namespace lockstep::data {

enum class SourceFormat { FashionMnist, Mnist, Cifar10 };
SourceFormat parse_source_format(const std::string& name);  // DataError listing the known names
const char* source_format_name(SourceFormat f);
std::vector<std::string> class_names_of(SourceFormat f);   // CIFAR-10: read from batches.meta.txt instead

// IDX file (gzipped or raw; detected from the content). DataError naming the file on a wrong
// magic number, wrong dimensions or a size that does not match the header.
struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;
};
IdxArray read_idx(const std::string& path, int expected_rank);
// Write an IDX ubyte file (tests; gzip when the name ends with .gz).
void write_idx(const std::string& path, const std::vector<int64_t>& dims, const std::vector<uint8_t>& data);

struct ConvertOptions {
  SourceFormat format = SourceFormat::FashionMnist;
  std::string src_dir;
  std::string out_file;
  bool partial = false;  // cifar10: accept a subset of data_batch_1..5.bin (at least data_batch_1)
  int compression_level = 4;
};
// Read the official files, check them, write `out_file` atomically. Returns what was written.
RawDataset convert(const ConvertOptions& opt);

// MD5 of a file as lowercase hex (OpenSSL EVP).
std::string md5_file(const std::string& path);

}  // namespace lockstep::data
