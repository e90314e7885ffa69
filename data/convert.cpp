#include "data/convert.h"

#include <openssl/evp.h>
#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>

#include "core/config.h"
#include "core/error.h"

namespace lockstep::data {

namespace fs = std::filesystem;

SourceFormat parse_source_format(const std::string& name) {
  if (name == "fashion-mnist" || name == "fashion_mnist") return SourceFormat::FashionMnist;
  if (name == "mnist") return SourceFormat::Mnist;
  if (name == "cifar10" || name == "cifar-10") return SourceFormat::Cifar10;
  std::string near = nearest_name(name, {"fashion-mnist", "mnist", "cifar10"});
  throw DataError(str_cat("unknown dataset format '", name, "': expected fashion-mnist, mnist or cifar10",
                          near.empty() ? "" : str_cat(" (did you mean '", near, "'?)")));
}

const char* source_format_name(SourceFormat f) {
  switch (f) {
    case SourceFormat::FashionMnist: return "fashion-mnist";
    case SourceFormat::Mnist: return "mnist";
    case SourceFormat::Cifar10: return "cifar10";
  }
  return "?";
}

std::vector<std::string> class_names_of(SourceFormat f) {
  switch (f) {
    case SourceFormat::FashionMnist:  // zalandoresearch/fashion-mnist README, "Labels"
      return {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"};
    case SourceFormat::Mnist: return {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
    case SourceFormat::Cifar10:
      return {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};
  }
  return {};
}

std::string md5_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LS_REQUIRE(in, DataError, path, ": cannot open for reading");
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_md5(), nullptr);
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), buf.size());
    if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(in.gcount()));
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  std::string hex;
  char tmp[3];
  for (unsigned i = 0; i < len; ++i) {
    std::snprintf(tmp, sizeof tmp, "%02x", md[i]);
    hex += tmp;
  }
  return hex;
}

namespace {

// Whole file, decompressed when gzipped (gzread passes plain files through unchanged).
std::vector<uint8_t> read_maybe_gz(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  LS_REQUIRE(f != nullptr, DataError, path, ": cannot open for reading");
  gzbuffer(f, 1 << 17);
  std::vector<uint8_t> out;
  std::vector<uint8_t> buf(1 << 20);
  for (;;) {
    int n = gzread(f, buf.data(), static_cast<unsigned>(buf.size()));
    if (n < 0) {
      int err = 0;
      std::string msg = gzerror(f, &err);
      gzclose(f);
      throw DataError(str_cat(path, ": corrupt or truncated gzip data (", msg, ")"));
    }
    if (n == 0) break;
    out.insert(out.end(), buf.begin(), buf.begin() + n);
  }
  // A truncated gzip stream ends without error on some zlib versions: check the end state.
  int err = 0;
  const char* msg = gzerror(f, &err);
  std::string m = msg ? msg : "";
  gzclose(f);
  LS_REQUIRE(err == Z_OK || err == Z_STREAM_END, DataError, path, ": corrupt or truncated gzip data (", m, ")");
  return out;
}

uint32_t be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

}  // namespace

IdxArray read_idx(const std::string& path, int expected_rank) {
  std::vector<uint8_t> raw = read_maybe_gz(path);
  const uint32_t expected_magic = 0x0800u | static_cast<uint32_t>(expected_rank);
  LS_REQUIRE(raw.size() >= 4, DataError, path, ": too short for an IDX file (", raw.size(), " bytes)");
  uint32_t magic = be32(raw.data());
  LS_REQUIRE(magic == expected_magic, DataError, path, ": wrong IDX magic number 0x", std::hex, magic,
             " (expected 0x", expected_magic, std::dec, ": unsigned bytes, ", expected_rank, " dimension",
             expected_rank > 1 ? "s" : "", ")");
  const size_t header = 4 + 4 * static_cast<size_t>(expected_rank);
  LS_REQUIRE(raw.size() >= header, DataError, path, ": truncated IDX header (", raw.size(), " bytes, expected ",
             header, ")");
  IdxArray a;
  size_t count = 1;
  for (int i = 0; i < expected_rank; ++i) {
    a.dims.push_back(be32(raw.data() + 4 + 4 * i));
    count *= static_cast<size_t>(a.dims.back());
  }
  LS_REQUIRE(raw.size() == header + count, DataError, path, ": IDX size mismatch: the header promises ", count,
             " bytes of data, the file has ", raw.size() - header, raw.size() < header + count ? " (truncated)" : "");
  a.data.assign(raw.begin() + header, raw.end());
  return a;
}

void write_idx(const std::string& path, const std::vector<int64_t>& dims, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out = {0, 0, 8, static_cast<uint8_t>(dims.size())};
  for (int64_t d : dims)
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<uint8_t>(d >> s));
  out.insert(out.end(), data.begin(), data.end());
  if (path.size() > 3 && path.substr(path.size() - 3) == ".gz") {
    gzFile f = gzopen(path.c_str(), "wb");
    LS_REQUIRE(f != nullptr, DataError, path, ": cannot create");
    gzwrite(f, out.data(), static_cast<unsigned>(out.size()));
    gzclose(f);
  } else {
    std::ofstream o(path, std::ios::binary);
    o.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size()));
    LS_REQUIRE(o.good(), DataError, path, ": cannot write");
  }
}

namespace {

// The IDX file for `stem` in `dir`: the official name, with or without .gz, or MNIST's "x.idx3" spelling.
std::string find_idx(const std::string& dir, const std::string& stem) {
  std::string dotted = stem;  // train-images-idx3-ubyte -> train-images.idx3-ubyte
  size_t p = dotted.rfind("-idx");
  if (p != std::string::npos) dotted[p] = '.';
  for (const std::string& name : {stem + ".gz", stem, dotted + ".gz", dotted}) {
    fs::path f = fs::path(dir) / name;
    if (fs::exists(f)) return f.string();
  }
  throw DataError(str_cat(dir, ": missing ", stem, ".gz (or ", stem,
                          "); expected the four official IDX files (train-images-idx3-ubyte, ",
                          "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte)"));
}

RawSplit read_idx_pair(const std::string& img_path, const std::string& lbl_path, int num_classes,
                       std::string& md5s) {
  IdxArray img = read_idx(img_path, 3);
  IdxArray lbl = read_idx(lbl_path, 1);
  LS_REQUIRE(img.dims[0] == lbl.dims[0], DataError, img_path, " has ", img.dims[0], " images but ", lbl_path, " has ",
             lbl.dims[0], " labels (expected the same number)");
  for (size_t i = 0; i < lbl.data.size(); ++i)
    LS_REQUIRE(lbl.data[i] < num_classes, DataError, lbl_path, ": label ", int(lbl.data[i]), " at index ", i,
               " is outside the class range 0..", num_classes - 1);
  RawSplit s;
  s.n = img.dims[0], s.h = img.dims[1], s.w = img.dims[2], s.c = 1;
  s.x = std::move(img.data);
  s.y.assign(lbl.data.begin(), lbl.data.end());
  for (const auto& f : {img_path, lbl_path})
    md5s += (md5s.empty() ? "" : ";") + fs::path(f).filename().string() + "=" + md5_file(f);
  return s;
}

constexpr int64_t kCifarRecord = 1 + 3 * 1024;

void read_cifar_batch(const std::string& path, RawSplit& s, std::string& md5s) {
  std::ifstream in(path, std::ios::binary);
  LS_REQUIRE(in, DataError, path, ": cannot open for reading");
  std::vector<uint8_t> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LS_REQUIRE(!raw.empty() && raw.size() % kCifarRecord == 0, DataError, path, ": size ", raw.size(),
             " bytes is not a whole number of 3,073-byte CIFAR-10 records (1 label byte + 3,072 pixel bytes)");
  const int64_t n = static_cast<int64_t>(raw.size()) / kCifarRecord;
  s.h = 32, s.w = 32, s.c = 3;
  const size_t base = s.x.size();
  s.x.resize(base + n * 3072);
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* r = raw.data() + i * kCifarRecord;
    LS_REQUIRE(r[0] < 10, DataError, path, ": record ", i, " has label ", int(r[0]), " (expected 0..9)");
    s.y.push_back(r[0]);
    uint8_t* dst = s.x.data() + base + i * 3072;
    for (int p = 0; p < 1024; ++p)  // planar RGB -> interleaved HWC
      for (int ch = 0; ch < 3; ++ch) dst[p * 3 + ch] = r[1 + ch * 1024 + p];
  }
  s.n += n;
  md5s += (md5s.empty() ? "" : ";") + fs::path(path).filename().string() + "=" + md5_file(path);
}

RawDataset read_sources(const ConvertOptions& opt) {
  RawDataset ds;
  ds.name = source_format_name(opt.format);
  LS_REQUIRE(fs::is_directory(opt.src_dir), DataError, opt.src_dir, ": not a directory (expected the folder with ",
             "the official ", ds.name, " files)");
  if (opt.format != SourceFormat::Cifar10) {
    ds.class_names = class_names_of(opt.format);
    ds.source = opt.format == SourceFormat::FashionMnist
                    ? "Fashion-MNIST, official IDX files (github.com/zalandoresearch/fashion-mnist)"
                    : "MNIST, official IDX files (yann.lecun.com/exdb/mnist)";
    ds.train = read_idx_pair(find_idx(opt.src_dir, "train-images-idx3-ubyte"),
                             find_idx(opt.src_dir, "train-labels-idx1-ubyte"), 10, ds.source_md5);
    ds.test = read_idx_pair(find_idx(opt.src_dir, "t10k-images-idx3-ubyte"),
                            find_idx(opt.src_dir, "t10k-labels-idx1-ubyte"), 10, ds.source_md5);
    return ds;
  }
  ds.source = "CIFAR-10, binary version (www.cs.toronto.edu/~kriz/cifar.html)";
  fs::path meta = fs::path(opt.src_dir) / "batches.meta.txt";
  LS_REQUIRE(fs::exists(meta), DataError, meta.string(), ": missing (expected the CIFAR-10 binary version: ",
             "data_batch_1..5.bin, test_batch.bin, batches.meta.txt)");
  {
    std::ifstream in(meta);
    std::string line;
    while (std::getline(in, line)) {
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
      if (!line.empty()) ds.class_names.push_back(line);
    }
    LS_REQUIRE(ds.class_names.size() == 10, DataError, meta.string(), ": expected 10 class names, one per line, found ",
               ds.class_names.size());
  }
  int batches = 0;
  for (int b = 1; b <= 5; ++b) {
    fs::path f = fs::path(opt.src_dir) / str_cat("data_batch_", b, ".bin");
    if (!fs::exists(f)) {
      LS_REQUIRE(opt.partial && b > 1, DataError, f.string(), ": missing (expected data_batch_1.bin .. ",
                 "data_batch_5.bin; pass --partial to convert a subset)");
      break;
    }
    read_cifar_batch(f.string(), ds.train, ds.source_md5);
    ++batches;
  }
  if (batches < 5) ds.source += str_cat(" [partial: ", batches, " of 5 training batches]");
  fs::path t = fs::path(opt.src_dir) / "test_batch.bin";
  LS_REQUIRE(fs::exists(t), DataError, t.string(), ": missing (expected the CIFAR-10 test batch)");
  read_cifar_batch(t.string(), ds.test, ds.source_md5);
  return ds;
}

}  // namespace

RawDataset convert(const ConvertOptions& opt) {
  LS_REQUIRE(!opt.out_file.empty(), DataError, "no output file given (--out FILE.h5)");
  RawDataset ds = read_sources(opt);
  write_dataset_file(ds, opt.out_file, opt.compression_level);
  return ds;
}

}  // namespace lockstep::data
