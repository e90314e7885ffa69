#include "core/tensorboard.h"

#include <fcntl.h>
#include <unistd.h>

#include <boost/crc.hpp>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <set>
#include <sstream>
#include <stdexcept>

#include "core/error.h"
#include "core/keras_json.h"

namespace fs = std::filesystem;

namespace lockstep {

namespace tb {

// ---- framing ---------------------------------------------------------------------------------------

uint32_t crc32c(std::string_view data) {
  // CRC-32C: polynomial 0x1EDC6F41, reflected in and out, init and final XOR 0xFFFFFFFF.
  boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> crc;
  crc.process_bytes(data.data(), data.size());
  return crc.checksum();
}

uint32_t mask_crc(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

namespace {

void put_le(std::string* out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out->push_back(char((v >> (8 * i)) & 0xff));
}

uint64_t get_le(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t(static_cast<unsigned char>(p[i])) << (8 * i);
  return v;
}

}  // namespace

std::string frame_record(std::string_view data) {
  std::string out;
  out.reserve(data.size() + 16);
  put_le(&out, data.size(), 8);
  put_le(&out, masked_crc32c(std::string_view(out.data(), 8)), 4);
  out.append(data);
  put_le(&out, masked_crc32c(data), 4);
  return out;
}

// ---- protobuf encoding -----------------------------------------------------------------------------

void ProtoWriter::raw_varint(uint64_t v) {
  while (v >= 0x80) {
    out_.push_back(char((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out_.push_back(char(v));
}

void ProtoWriter::key(int field, int wire_type) { raw_varint((uint64_t(field) << 3) | uint64_t(wire_type)); }

ProtoWriter& ProtoWriter::varint(int field, uint64_t value) {
  key(field, 0);
  raw_varint(value);
  return *this;
}

ProtoWriter& ProtoWriter::fixed64(int field, double value) {
  key(field, 1);
  put_le(&out_, std::bit_cast<uint64_t>(value), 8);
  return *this;
}

ProtoWriter& ProtoWriter::fixed32(int field, float value) {
  key(field, 5);
  put_le(&out_, std::bit_cast<uint32_t>(value), 4);
  return *this;
}

ProtoWriter& ProtoWriter::bytes(int field, std::string_view value) {
  key(field, 2);
  raw_varint(value.size());
  out_.append(value);
  return *this;
}

// ---- events ----------------------------------------------------------------------------------------

namespace {

// Field numbers (tensorboard/compat/proto/*.proto).
enum : int {
  kEventWallTime = 1, kEventStep = 2, kEventFileVersion = 3, kEventGraphDef = 4, kEventSummary = 5,
  kEventSessionLog = 7, kEventSourceMetadata = 10,
  kSummaryValue = 1,
  kValueTag = 1, kValueSimpleValue = 2, kValueHisto = 5, kValueTensor = 8, kValueMetadata = 9,
  kMetadataPluginData = 1, kMetadataDataClass = 4,
  kPluginName = 1, kPluginContent = 2,
  kTensorDtype = 1, kTensorShape = 2, kTensorContent = 4, kTensorFloatVal = 5, kTensorDoubleVal = 6,
  kTensorStringVal = 8,
  kShapeDim = 2, kDimSize = 1,
};

std::string metadata(const std::string& plugin, const std::string& content) {
  ProtoWriter pd;
  pd.bytes(kPluginName, plugin);
  if (!content.empty()) pd.bytes(kPluginContent, content);
  ProtoWriter md;
  md.bytes(kMetadataPluginData, pd.str());
  return md.str();
}

std::string shape(const std::vector<int64_t>& dims) {
  ProtoWriter s;
  for (int64_t d : dims) {
    ProtoWriter dim;
    if (d != 0) dim.varint(kDimSize, uint64_t(d));
    s.bytes(kShapeDim, dim.str());
  }
  return s.str();
}

// Event{wall_time, step, summary{value{tag, tensor, metadata}}}.
std::string summary_event(double wall_time, int64_t step, const std::string& tag, const std::string& tensor,
                          const std::string& meta) {
  ProtoWriter value;
  value.bytes(kValueTag, tag).bytes(kValueTensor, tensor).bytes(kValueMetadata, meta);
  ProtoWriter summary;
  summary.bytes(kSummaryValue, value.str());
  ProtoWriter event;
  event.fixed64(kEventWallTime, wall_time);
  if (step != 0) event.varint(kEventStep, uint64_t(step));
  event.bytes(kEventSummary, summary.str());
  return event.str();
}

template <typename T>
std::vector<HistogramBucket> buckets_of(const T* data, size_t n, int k) {
  std::vector<HistogramBucket> out(size_t(std::max(k, 0)));
  if (n == 0 || k <= 0) return out;
  double lo = double(data[0]), hi = lo;
  for (size_t i = 0; i < n; ++i) {
    const double v = double(data[i]);
    if (!std::isfinite(v)) throw std::invalid_argument(str_cat("non-finite value ", v, " at index ", i));
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  const double range = hi - lo;
  if (range == 0) {
    for (auto& b : out) b = {hi, hi, 0.0};
    out.back().count = double(n);
    return out;
  }
  const double width = range / double(k);
  for (size_t i = 0; i < n; ++i) {
    const int64_t idx = std::min<int64_t>(int64_t(std::floor((double(data[i]) - lo) / width)), k - 1);
    out[size_t(idx)].count += 1.0;
  }
  // tf.linspace(min, max, k + 1): min + i·(max - min)/k, the last edge then forced to max.
  for (int i = 0; i < k; ++i) {
    out[size_t(i)].left = i == 0 ? lo : lo + double(i) * width;
    out[size_t(i)].right = i + 1 == k ? hi : lo + double(i + 1) * width;
  }
  return out;
}

}  // namespace

std::vector<HistogramBucket> histogram_buckets(const float* data, size_t n, int k) { return buckets_of(data, n, k); }
std::vector<HistogramBucket> histogram_buckets(const double* data, size_t n, int k) { return buckets_of(data, n, k); }

std::string file_version_event(double wall_time, const std::string& writer) {
  ProtoWriter event;
  event.fixed64(kEventWallTime, wall_time).bytes(kEventFileVersion, "brain.Event:2");
  if (!writer.empty()) {
    ProtoWriter source;
    source.bytes(1, writer);
    event.bytes(kEventSourceMetadata, source.str());
  }
  return event.str();
}

std::string scalar_event(double wall_time, int64_t step, const std::string& tag, float value) {
  ProtoWriter tensor;
  std::string content;
  put_le(&content, std::bit_cast<uint32_t>(value), 4);
  tensor.varint(kTensorDtype, DT_FLOAT).bytes(kTensorShape, "").bytes(kTensorContent, content);
  return summary_event(wall_time, step, tag, tensor.str(), metadata("scalars", ""));
}

std::string histogram_event(double wall_time, int64_t step, const std::string& tag,
                            const std::vector<HistogramBucket>& buckets) {
  std::string content;
  content.reserve(buckets.size() * 24);
  for (const HistogramBucket& b : buckets) {
    put_le(&content, std::bit_cast<uint64_t>(b.left), 8);
    put_le(&content, std::bit_cast<uint64_t>(b.right), 8);
    put_le(&content, std::bit_cast<uint64_t>(b.count), 8);
  }
  ProtoWriter tensor;
  tensor.varint(kTensorDtype, DT_DOUBLE).bytes(kTensorShape, shape({int64_t(buckets.size()), 3}));
  if (!content.empty()) tensor.bytes(kTensorContent, content);
  return summary_event(wall_time, step, tag, tensor.str(), metadata("histograms", ""));
}

std::string keras_model_event(double wall_time, const std::string& model_json) {
  ProtoWriter tensor;
  tensor.varint(kTensorDtype, DT_STRING).bytes(kTensorShape, "").bytes(kTensorStringVal, model_json);
  return summary_event(wall_time, 0, "keras", tensor.str(), metadata("graph_keras_model", "1"));
}

std::string session_log_event(double wall_time, int64_t step, SessionStatus status) {
  ProtoWriter log;
  if (status != SessionStatus::Unspecified) log.varint(1, uint64_t(status));
  ProtoWriter event;
  event.fixed64(kEventWallTime, wall_time);
  if (step != 0) event.varint(kEventStep, uint64_t(step));
  event.bytes(kEventSessionLog, log.str());
  return event.str();
}

// ---- decoding --------------------------------------------------------------------------------------

namespace {

struct Field {
  int number = 0;
  int wire = 0;
  uint64_t value = 0;        // varint, fixed64 and fixed32 bits
  std::string_view bytes;    // length-delimited
};

class ProtoReader {
 public:
  explicit ProtoReader(std::string_view data) : d_(data) {}
  bool next(Field* f) {
    if (p_ >= d_.size()) return false;
    const uint64_t key = varint();
    f->number = int(key >> 3);
    f->wire = int(key & 7);
    if (f->number == 0) throw DataError("protobuf: field number 0");
    switch (f->wire) {
      case 0: f->value = varint(); break;
      case 1: f->value = fixed(8); break;
      case 5: f->value = fixed(4); break;
      case 2: {
        const uint64_t n = varint();
        if (n > d_.size() - p_) throw DataError(str_cat("protobuf: field ", f->number, " runs past the end of its message"));
        f->bytes = d_.substr(p_, size_t(n));
        p_ += size_t(n);
        break;
      }
      default: throw DataError(str_cat("protobuf: unsupported wire type ", f->wire, " (field ", f->number, ")"));
    }
    return true;
  }

 private:
  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ >= d_.size()) throw DataError("protobuf: truncated varint");
      const auto b = static_cast<unsigned char>(d_[p_++]);
      v |= uint64_t(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    throw DataError("protobuf: varint longer than 10 bytes");
  }
  uint64_t fixed(int n) {
    if (d_.size() - p_ < size_t(n)) throw DataError("protobuf: truncated fixed-width field");
    const uint64_t v = get_le(d_.data() + p_, n);
    p_ += size_t(n);
    return v;
  }
  std::string_view d_;
  size_t p_ = 0;
};

// A repeated double/float field, packed or not.
void add_doubles(const Field& f, std::vector<double>* out) {
  if (f.wire == 1) return out->push_back(std::bit_cast<double>(f.value));
  if (f.wire != 2 || f.bytes.size() % 8) throw DataError("protobuf: bad packed double field");
  for (size_t i = 0; i < f.bytes.size(); i += 8) out->push_back(std::bit_cast<double>(get_le(f.bytes.data() + i, 8)));
}

void add_floats(const Field& f, std::vector<float>* out) {
  if (f.wire == 5) return out->push_back(std::bit_cast<float>(uint32_t(f.value)));
  if (f.wire != 2 || f.bytes.size() % 4) throw DataError("protobuf: bad packed float field");
  for (size_t i = 0; i < f.bytes.size(); i += 4) out->push_back(std::bit_cast<float>(uint32_t(get_le(f.bytes.data() + i, 4))));
}

void expect_wire(const Field& f, int wire, const char* what) {
  if (f.wire != wire) throw DataError(str_cat("protobuf: ", what, " (field ", f.number, ") has wire type ", f.wire));
}

TensorValue parse_tensor(std::string_view data) {
  TensorValue t;
  ProtoReader r(data);
  Field f;
  while (r.next(&f)) {
    switch (f.number) {
      case kTensorDtype: expect_wire(f, 0, "TensorProto.dtype"); t.dtype = int(f.value); break;
      case kTensorShape: {
        expect_wire(f, 2, "TensorProto.tensor_shape");
        t.has_shape = true;
        ProtoReader sr(f.bytes);
        Field sf;
        while (sr.next(&sf)) {
          if (sf.number != kShapeDim) continue;
          expect_wire(sf, 2, "TensorShapeProto.dim");
          int64_t size = 0;
          ProtoReader dr(sf.bytes);
          Field df;
          while (dr.next(&df))
            if (df.number == kDimSize) size = int64_t(df.value);
          t.shape.push_back(size);
        }
        break;
      }
      case kTensorContent: expect_wire(f, 2, "TensorProto.tensor_content"); t.content.assign(f.bytes); break;
      case kTensorFloatVal: add_floats(f, &t.float_val); break;
      case kTensorDoubleVal: add_doubles(f, &t.double_val); break;
      case kTensorStringVal: expect_wire(f, 2, "TensorProto.string_val"); t.string_val.emplace_back(f.bytes); break;
      default: break;
    }
  }
  return t;
}

HistoValue parse_histo(std::string_view data) {
  HistoValue h;
  ProtoReader r(data);
  Field f;
  while (r.next(&f)) {
    if (f.number >= 1 && f.number <= 5) {
      expect_wire(f, 1, "HistogramProto scalar");
      const double v = std::bit_cast<double>(f.value);
      (f.number == 1 ? h.min : f.number == 2 ? h.max : f.number == 3 ? h.num : f.number == 4 ? h.sum : h.sum_squares) = v;
    } else if (f.number == 6) {
      add_doubles(f, &h.bucket_limit);
    } else if (f.number == 7) {
      add_doubles(f, &h.bucket);
    }
  }
  return h;
}

SummaryValue parse_value(std::string_view data) {
  SummaryValue v;
  ProtoReader r(data);
  Field f;
  while (r.next(&f)) {
    switch (f.number) {
      case kValueTag: expect_wire(f, 2, "Summary.Value.tag"); v.tag.assign(f.bytes); break;
      case kValueSimpleValue:
        expect_wire(f, 5, "Summary.Value.simple_value");
        v.kind = SummaryValue::Kind::Simple;
        v.simple_value = std::bit_cast<float>(uint32_t(f.value));
        break;
      case kValueHisto:
        expect_wire(f, 2, "Summary.Value.histo");
        v.kind = SummaryValue::Kind::Histo;
        v.histo = parse_histo(f.bytes);
        break;
      case kValueTensor:
        expect_wire(f, 2, "Summary.Value.tensor");
        v.kind = SummaryValue::Kind::Tensor;
        v.tensor = parse_tensor(f.bytes);
        break;
      case kValueMetadata: {
        expect_wire(f, 2, "Summary.Value.metadata");
        v.has_metadata = true;
        ProtoReader mr(f.bytes);
        Field mf;
        while (mr.next(&mf)) {
          if (mf.number == kMetadataPluginData) {
            expect_wire(mf, 2, "SummaryMetadata.plugin_data");
            ProtoReader pr(mf.bytes);
            Field pf;
            while (pr.next(&pf)) {
              if (pf.number == kPluginName) v.plugin_name.assign(pf.bytes);
              else if (pf.number == kPluginContent) v.plugin_content.assign(pf.bytes);
            }
          } else if (mf.number == kMetadataDataClass) {
            v.data_class = int(mf.value);
          }
        }
        break;
      }
      case 4: case 6: case 7:  // image, audio, node_name
        if (f.number != 7) v.kind = SummaryValue::Kind::Other;
        break;
      default: break;
    }
  }
  return v;
}

}  // namespace

Event parse_event(std::string_view data) {
  Event e;
  e.data.assign(data);
  ProtoReader r(data);
  Field f;
  while (r.next(&f)) {
    switch (f.number) {
      case kEventWallTime: expect_wire(f, 1, "Event.wall_time"); e.wall_time = std::bit_cast<double>(f.value); break;
      case kEventStep: expect_wire(f, 0, "Event.step"); e.step = int64_t(f.value); break;
      case kEventFileVersion: expect_wire(f, 2, "Event.file_version"); e.file_version.assign(f.bytes); break;
      case kEventGraphDef:
        expect_wire(f, 2, "Event.graph_def");
        e.has_graph_def = true;
        e.graph_def_bytes = f.bytes.size();
        break;
      case kEventSummary: {
        expect_wire(f, 2, "Event.summary");
        ProtoReader sr(f.bytes);
        Field sf;
        while (sr.next(&sf))
          if (sf.number == kSummaryValue) {
            expect_wire(sf, 2, "Summary.value");
            e.values.push_back(parse_value(sf.bytes));
          }
        break;
      }
      case kEventSessionLog: {
        expect_wire(f, 2, "Event.session_log");
        e.session_status = 0;
        ProtoReader lr(f.bytes);
        Field lf;
        while (lr.next(&lf))
          if (lf.number == 1) e.session_status = int(lf.value);
        break;
      }
      case kEventSourceMetadata: {
        expect_wire(f, 2, "Event.source_metadata");
        ProtoReader mr(f.bytes);
        Field mf;
        while (mr.next(&mf))
          if (mf.number == 1 && mf.wire == 2) e.source_writer.assign(mf.bytes);
        break;
      }
      default: break;
    }
  }
  return e;
}

std::optional<double> SummaryValue::scalar() const {
  if (kind == Kind::Simple) return double(simple_value);
  if (kind != Kind::Tensor) return std::nullopt;
  const TensorValue& t = tensor;
  if (!t.shape.empty()) return std::nullopt;  // rank 0, or no shape (RustBoard: rank 0)
  if (t.dtype == DT_FLOAT) {
    if (t.content.size() == 4) return double(std::bit_cast<float>(uint32_t(get_le(t.content.data(), 4))));
    if (t.content.empty() && t.float_val.size() == 1) return double(t.float_val[0]);
  } else if (t.dtype == DT_DOUBLE) {
    if (t.content.size() == 8) return std::bit_cast<double>(get_le(t.content.data(), 8));
    if (t.content.empty() && t.double_val.size() == 1) return t.double_val[0];
  }
  return std::nullopt;
}

std::optional<std::vector<HistogramBucket>> SummaryValue::histogram() const {
  if (kind == Kind::Histo) {
    // TensorBoard's data_compat._migrate_histogram_value.
    const std::vector<double>& counts = histo.bucket;
    const size_t n = counts.size();
    size_t start = 0;
    while (start < n && !(counts[start] > 0)) ++start;
    if (start == n) return std::vector<HistogramBucket>{};
    size_t end = n - 1;
    while (!(counts[end] > 0)) --end;
    std::vector<HistogramBucket> rows;
    for (size_t i = start; i <= end; ++i) {
      const double left = i == start ? histo.min : (i - 1 < histo.bucket_limit.size() ? histo.bucket_limit[i - 1] : histo.max);
      const double right = i == end ? histo.max : (i < histo.bucket_limit.size() ? histo.bucket_limit[i] : histo.max);
      // TensorBoard builds these rows as float32.
      rows.push_back({double(float(left)), double(float(right)), double(float(counts[i]))});
    }
    return rows;
  }
  if (kind != Kind::Tensor || tensor.shape.size() != 2 || tensor.shape[1] != 3) return std::nullopt;
  const int64_t k = tensor.shape[0];
  std::vector<double> flat;
  if (tensor.dtype == DT_DOUBLE) {
    if (tensor.content.size() == size_t(k) * 24) {
      for (int64_t i = 0; i < k * 3; ++i) flat.push_back(std::bit_cast<double>(get_le(tensor.content.data() + 8 * i, 8)));
    } else {
      flat = tensor.double_val;
    }
  } else if (tensor.dtype == DT_FLOAT) {
    if (tensor.content.size() == size_t(k) * 12) {
      for (int64_t i = 0; i < k * 3; ++i) flat.push_back(std::bit_cast<float>(uint32_t(get_le(tensor.content.data() + 4 * i, 4))));
    } else {
      flat.assign(tensor.float_val.begin(), tensor.float_val.end());
    }
  } else {
    return std::nullopt;
  }
  if (flat.size() != size_t(k) * 3) return std::nullopt;
  std::vector<HistogramBucket> rows(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) rows[size_t(i)] = {flat[size_t(3 * i)], flat[size_t(3 * i + 1)], flat[size_t(3 * i + 2)]};
  return rows;
}

std::optional<std::string> SummaryValue::string() const {
  if (kind != Kind::Tensor || tensor.dtype != DT_STRING || !tensor.shape.empty() || tensor.string_val.size() != 1)
    return std::nullopt;
  return tensor.string_val[0];
}

EventFile read_event_file(const std::string& path, bool strict) {
  EventFile out;
  out.path = path;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(str_cat(path, ": cannot open (", std::strerror(errno), ")"));
  std::string buf((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t off = 0;
  for (size_t index = 0; off < buf.size(); ++index) {
    auto corrupt = [&](const std::string& what) {
      const std::string msg = str_cat(path, ": record ", index, " at byte ", off, ": ", what);
      if (strict) throw DataError(msg);
      out.error = msg;
    };
    if (buf.size() - off < 12) {
      out.truncated = true;
      break;
    }
    const uint64_t len = get_le(buf.data() + off, 8);
    const uint32_t len_crc = uint32_t(get_le(buf.data() + off + 8, 4));
    if (masked_crc32c(std::string_view(buf.data() + off, 8)) != len_crc) {
      corrupt("the length's CRC does not match");
      break;
    }
    if (len > buf.size() - off - 12 || buf.size() - off - 12 - len < 4) {
      out.truncated = true;
      break;
    }
    const std::string_view data(buf.data() + off + 12, size_t(len));
    const uint32_t data_crc = uint32_t(get_le(buf.data() + off + 12 + len, 4));
    if (masked_crc32c(data) != data_crc) {
      corrupt("the data's CRC does not match");
      break;
    }
    try {
      Event e = parse_event(data);
      if (std::isnan(e.wall_time)) {
        corrupt("NaN wall_time");
        break;
      }
      out.events.push_back(std::move(e));
    } catch (const DataError& e) {
      corrupt(e.what());
      break;
    }
    off += 12 + size_t(len) + 4;
  }
  return out;
}

std::vector<std::string> event_files(const std::string& dir) {
  std::vector<std::string> files;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return files;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.find("tfevents") != std::string::npos && entry.is_regular_file(ec)) files.push_back(entry.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

// ---- writing ---------------------------------------------------------------------------------------

std::string event_file_name(int64_t seconds, const std::string& host, int64_t pid, int64_t counter) {
  char stamp[32];
  std::snprintf(stamp, sizeof stamp, "%010lld", static_cast<long long>(seconds));
  return str_cat("events.out.tfevents.", stamp, ".", host, ".", pid, ".", counter, ".v2");
}

int64_t next_file_counter() {
  static std::atomic<int64_t> counter{0};
  return counter++;
}

std::string host_name() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == 0) return "localhost";
  return buf;
}

double now_seconds() {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                      std::chrono::system_clock::now().time_since_epoch()).count();
  return double(us) / 1e6;
}

namespace {

// The timestamp in an event file's name ("...tfevents.<digits>..."), -1 if none.
int64_t name_seconds(const std::string& path) {
  const std::string name = fs::path(path).filename().string();
  const size_t p = name.find("tfevents.");
  if (p == std::string::npos) return -1;
  int64_t v = -1;
  const char* b = name.data() + p + 9;
  const char* e = name.data() + name.size();
  if (std::from_chars(b, e, v).ec != std::errc()) return -1;
  return v;
}

}  // namespace

EventFileWriter::EventFileWriter(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error(str_cat(dir, ": cannot create the directory (", ec.message(), ")"));
  const double now = now_seconds();
  seconds_ = int64_t(std::floor(now));
  for (const std::string& f : event_files(dir)) seconds_ = std::max(seconds_, name_seconds(f) + 1);
  path_ = (fs::path(dir) / event_file_name(seconds_, host_name(), int64_t(getpid()), next_file_counter())).string();
  const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error(str_cat(path_, ": cannot create (", std::strerror(errno), ")"));
  file_ = ::fdopen(fd, "wb");
  if (!file_) {
    ::close(fd);
    throw std::runtime_error(str_cat(path_, ": cannot open (", std::strerror(errno), ")"));
  }
  write(file_version_event(double(seconds_)));
  flush();
}

EventFileWriter::~EventFileWriter() {
  try {
    close();
  } catch (...) {
  }
}

void EventFileWriter::write(std::string_view event_data) {
  if (!file_) throw std::runtime_error(str_cat(path_, ": write after close"));
  const std::string rec = frame_record(event_data);
  if (std::fwrite(rec.data(), 1, rec.size(), file_) != rec.size())
    throw std::runtime_error(str_cat(path_, ": write failed (", std::strerror(errno), ")"));
}

void EventFileWriter::flush() {
  if (file_ && std::fflush(file_) != 0) throw std::runtime_error(str_cat(path_, ": write failed (", std::strerror(errno), ")"));
}

void EventFileWriter::close() {
  if (!file_) return;
  std::FILE* f = file_;
  file_ = nullptr;
  const bool ok = std::fflush(f) == 0;
  const int err = errno;
  if (std::fclose(f) != 0 || !ok)
    throw std::runtime_error(str_cat(path_, ": write failed (", std::strerror(ok ? errno : err), ")"));
}

}  // namespace tb

// ---- options -------------------------------------------------------------------------------------

TensorBoardOptions TensorBoardOptions::from_config(const ConfigNode& node) {
  TensorBoardOptions o;
  o.where = node["log_dir"].where();
  if (!node.defined()) return o;
  node.expect_map();
  node.allow_keys({"log_dir", "histogram_freq", "write_graph", "write_images", "write_steps_per_second",
                   "update_freq", "profile_batch", "embeddings_freq", "embeddings_metadata"});
  o.log_dir = node.get("log_dir", "logs");
  if (o.log_dir.empty()) node["log_dir"].fail("expected a directory (Keras's default: logs)");
  o.histogram_freq = node.get_at_least("histogram_freq", 0, 0);
  o.write_graph = node.get("write_graph", true);
  if (node.has("update_freq")) {
    const ConfigNode u = node["update_freq"];
    const std::string s = u.is_scalar() ? u.as_string() : std::string();
    int64_t n = 0;
    const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (s == "epoch") o.update_freq = 0;
    else if (s == "batch") o.update_freq = 1;
    else if (ec == std::errc() && end == s.data() + s.size() && n >= 1) o.update_freq = n;
    else u.fail("expected epoch, batch or a number of batches >= 1 (Keras's update_freq)");
  }
  // Keras's other arguments, at their defaults only.
  if (node.has("profile_batch")) {
    const ConfigNode p = node["profile_batch"];
    if (!p.is_scalar() || p.as_string() != "0")
      p.fail("lockstep does not run TensorFlow's profiler: only profile_batch: 0 (Keras's default) is accepted");
  }
  if (node.get("write_images", false))
    node["write_images"].fail("weight images are not written by lockstep: only write_images: false (Keras's default)");
  if (node.get("write_steps_per_second", false))
    node["write_steps_per_second"].fail("not supported by lockstep: only write_steps_per_second: false (Keras's default)");
  if (node.get_at_least("embeddings_freq", 0, 0) != 0)
    node["embeddings_freq"].fail("embeddings are not written by lockstep: only embeddings_freq: 0 (Keras's default)");
  if (node["embeddings_metadata"].defined())
    node["embeddings_metadata"].fail("embeddings are not written by lockstep: leave embeddings_metadata out");
  return o;
}

// ---- the callback --------------------------------------------------------------------------------

namespace {

const char* kRunDirs[2] = {"train", "validation"};

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

// Whether new files can be created in `dir` (tried: access() says yes to root on a read-only mount).
std::string probe_writable(const fs::path& dir) {
  const fs::path probe = dir / str_cat(".lockstep-tensorboard-probe-", getpid());
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return std::strerror(errno);
  ::close(fd);
  ::unlink(probe.c_str());
  return "";
}

}  // namespace

TensorBoardCallback::TensorBoardCallback(TensorBoardOptions options, const std::string& base_dir)
    : options_(std::move(options)) {
  fs::path dir(options_.log_dir);
  if (dir.is_relative() && !base_dir.empty()) dir = fs::path(base_dir) / dir;
  dir = dir.lexically_normal();
  log_dir_ = dir.string();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw ConfigError(str_cat(options_.where, ": cannot create the log directory ", log_dir_, " (", ec.message(), ")"));
  if (!fs::is_directory(dir, ec)) throw ConfigError(str_cat(options_.where, ": ", log_dir_, " is not a directory"));
  for (const fs::path& d : {dir, dir / kRunDirs[0], dir / kRunDirs[1]}) {
    if (d != dir && !fs::exists(d, ec)) continue;
    const std::string why = fs::is_directory(d, ec) ? probe_writable(d) : std::string("not a directory");
    if (!why.empty())
      throw ConfigError(str_cat(options_.where, ": cannot write event files in ", d.string(), " (", why, ")"));
  }
  thread_ = std::thread([this] { worker(); });
}

std::unique_ptr<TensorBoardCallback> TensorBoardCallback::from_config(const ConfigNode& node, const std::string& base_dir) {
  return std::make_unique<TensorBoardCallback>(TensorBoardOptions::from_config(node), base_dir);
}

TensorBoardCallback::~TensorBoardCallback() {
  try {
    on_train_end();
  } catch (...) {
  }
  if (thread_.joinable()) thread_.join();
}

std::string TensorBoardCallback::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

std::vector<std::string> TensorBoardCallback::files() const {
  std::lock_guard<std::mutex> lock(mu_);
  return files_;
}

void TensorBoardCallback::wait_written() {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t target = queued_;
  written_cv_.wait(lock, [&] { return written_ >= target || !thread_.joinable(); });
}

void TensorBoardCallback::push(Job job) {
  bool warn_drop = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closing_) return;
    if (job.droppable && pending_batch_ >= options_.max_pending_batch_events) {
      ++dropped_batch_;
      warn_drop = !warned_drop_;
      warned_drop_ = true;
    } else {
      if (job.droppable) ++pending_batch_;
      pending_histogram_bytes_ += job.bytes;
      queue_.push_back(std::move(job));
      ++queued_;
    }
  }
  if (warn_drop)
    std::cerr << "warning: TensorBoard: " << log_dir_ << " is not keeping up (" << options_.max_pending_batch_events
              << " batch events waiting): batch_* points are dropped until it does\n";
  else
    cv_.notify_one();
}

void TensorBoardCallback::on_train_begin(const Model& model, int64_t initial_epoch, int64_t initial_step) {
  if (began_ || ended_) return;
  began_ = true;
  initial_epoch_ = initial_epoch;
  initial_step_ = initial_step;
  Job open;
  open.kind = Job::Kind::Open;
  open.run = kTrain;
  push(std::move(open));
  if (options_.write_graph) {
    Job keras;
    keras.kind = Job::Kind::Keras;
    keras.wall_time = tb::now_seconds();
    keras.text = keras_model_json(model);
    push(std::move(keras));
  }
}

void TensorBoardCallback::on_train_batch_end(int64_t step, const Logs& logs) {
  if (!wants_batch(step) || failed_.load() || logs.empty()) return;
  Job j;
  j.kind = Job::Kind::Scalars;
  j.run = kTrain;
  j.wall_time = tb::now_seconds();
  j.step = step;
  j.droppable = true;
  j.scalars.reserve(logs.size());
  for (const auto& [name, value] : logs) j.scalars.emplace_back("batch_" + name, value);
  push(std::move(j));
}

void TensorBoardCallback::on_test_begin() {
  if (validation_opened_ || ended_) return;
  validation_opened_ = true;
  Job open;
  open.kind = Job::Kind::Open;
  open.run = kValidation;
  push(std::move(open));
}

void TensorBoardCallback::on_test_end(int64_t iterations, const Logs& logs) {
  on_test_begin();
  if (logs.empty()) return;
  Job j;
  j.kind = Job::Kind::Scalars;
  j.run = kValidation;
  j.wall_time = tb::now_seconds();
  j.step = iterations;
  for (const auto& [name, value] : logs) j.scalars.emplace_back("evaluation_" + name + "_vs_iterations", value);
  push(std::move(j));
}

void TensorBoardCallback::on_epoch_end(int64_t epoch, const Logs& logs, const Model& model,
                                       std::optional<double> learning_rate) {
  if (ended_) return;
  const double wall = tb::now_seconds();
  Job train, val;
  train.kind = val.kind = Job::Kind::Scalars;
  train.run = kTrain;
  val.run = kValidation;
  train.wall_time = val.wall_time = wall;
  train.step = val.step = epoch;
  for (const auto& [name, value] : logs) {
    if (starts_with(name, "val_")) val.scalars.emplace_back("epoch_" + name.substr(4), value);
    else train.scalars.emplace_back("epoch_" + name, value);
  }
  if (learning_rate) train.scalars.emplace_back("epoch_learning_rate", *learning_rate);
  if (!train.scalars.empty()) push(std::move(train));
  if (!val.scalars.empty()) {
    on_test_begin();
    push(std::move(val));
  }
  if (options_.histogram_freq <= 0 || epoch % options_.histogram_freq != 0) return;
  // Snapshot the weights (model.layers order, each layer's weights in order, state included).
  size_t need = 0;
  for (const auto& layer : model.layers())
    for (const Weight& w : layer->weights()) need += size_t(shape_numel(w.shape)) * size_t(dtype_size(model.dtype()));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (pending_histogram_bytes_ > 0 && pending_histogram_bytes_ + need > options_.max_pending_histogram_bytes) {
      ++skipped_histograms_;
      std::cerr << "warning: TensorBoard: " << log_dir_ << " is not keeping up: the weight histograms of epoch " << epoch
                << " are skipped\n";
      return;
    }
  }
  Job h;
  h.kind = Job::Kind::Histograms;
  h.run = kTrain;
  h.wall_time = wall;
  h.step = epoch;
  h.bytes = need;
  for (const auto& layer : model.layers())
    for (const Weight& w : layer->weights()) {
      WeightSnapshot s;
      s.tag = layer->name() + "/" + w.name + "_0/histogram";  // weight.name "dense/kernel:0", ':' -> '_'
      if (w.value.dtype() == DType::F64) s.f64 = w.value.to_double_vector();
      else s.f32 = w.value.to_vector();
      h.weights.push_back(std::move(s));
    }
  push(std::move(h));
}

void TensorBoardCallback::on_train_end() {
  if (ended_) return;
  ended_ = true;
  Job close;
  close.kind = Job::Kind::Close;
  push(std::move(close));
  {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
  if (dropped_batch_ > 0)
    std::cerr << "warning: TensorBoard: " << dropped_batch_ << " batch_* point(s) were dropped (" << log_dir_
              << " did not keep up)\n";
}

void TensorBoardCallback::fail(const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!error_.empty()) return;
    error_ = message;
  }
  failed_ = true;
  std::cerr << "warning: TensorBoard: " << message << "; no more TensorBoard events are written\n";
}

int64_t TensorBoardCallback::rewrite_from(const std::string& tag) const {
  constexpr int64_t kNever = std::numeric_limits<int64_t>::max();
  const bool fresh = initial_epoch_ == 0 && initial_step_ == 0;
  if (tag == "keras") return fresh ? 0 : kNever;
  // Histograms first: "batch_normalization/gamma_0/histogram" is not a batch_* scalar.
  if (ends_with(tag, "/histogram") || starts_with(tag, "epoch_")) return initial_epoch_;
  if (starts_with(tag, "batch_") || (starts_with(tag, "evaluation_") && ends_with(tag, "_vs_iterations")))
    return fresh ? 0 : initial_step_ + 1;
  return fresh ? 0 : kNever;  // not ours: kept on a resume
}

void TensorBoardCallback::open_run(int run) {
  RunWriter& rw = runs_[run];
  if (rw.file) return;
  const std::string dir = (fs::path(log_dir_) / kRunDirs[run]).string();
  // What TensorBoard's Python loader holds for this run now: every summary event of the existing
  // files in order, less those a SessionLog START purged (steps >= its step).
  struct Point {
    int64_t step;
    bool stale;
    bool keras;
    std::string data;
  };
  std::vector<Point> points;
  bool seen_start = false;  // the loader takes a run's first START for a session's start: no purge
  for (const std::string& path : tb::event_files(dir)) {
    tb::EventFile f = tb::read_event_file(path, false);
    if (!f.error.empty())
      std::cerr << "warning: TensorBoard: " << f.error << " (the rest of that file is ignored, as TensorBoard does)\n";
    for (tb::Event& e : f.events) {
      if (e.session_status == int(tb::SessionStatus::Start)) {
        if (seen_start) std::erase_if(points, [&](const Point& p) { return p.step >= e.step; });
        seen_start = true;
        continue;
      }
      if (e.values.empty()) continue;
      Point p{e.step, false, false, std::move(e.data)};
      for (const tb::SummaryValue& v : e.values) {
        p.stale = p.stale || e.step >= rewrite_from(v.tag);
        p.keras = p.keras || v.tag == "keras";
      }
      points.push_back(std::move(p));
    }
  }
  int64_t purge_from = std::numeric_limits<int64_t>::max();
  for (const Point& p : points)
    if (p.stale) purge_from = std::min(purge_from, p.step);
  rw.file = std::make_unique<tb::EventFileWriter>(dir);
  {
    std::lock_guard<std::mutex> lock(mu_);
    files_.push_back(rw.file->path());
  }
  rw.dirty = true;
  rw.has_keras = false;
  if (purge_from != std::numeric_limits<int64_t>::max()) {
    // The loader purges at a run's second and later STARTs only (plugin_event_accumulator
    // _CheckForRestartAndMaybePurge: the first one starts the session), so a run without one gets two.
    const double now = tb::now_seconds();
    if (!seen_start) rw.file->write(tb::session_log_event(now, purge_from, tb::SessionStatus::Start));
    rw.file->write(tb::session_log_event(now, purge_from, tb::SessionStatus::Start));
    for (const Point& p : points)
      if (!p.stale && p.step >= purge_from) rw.file->write(p.data);
  }
  for (const Point& p : points)
    if (!p.stale && p.keras) rw.has_keras = true;
}

void TensorBoardCallback::execute(Job& job) {
  switch (job.kind) {
    case Job::Kind::Open: open_run(job.run); return;
    case Job::Kind::Close: return;
    case Job::Kind::Keras: {
      open_run(kTrain);
      RunWriter& rw = runs_[kTrain];
      if (rw.has_keras) return;
      rw.file->write(tb::keras_model_event(job.wall_time, job.text));
      rw.has_keras = rw.dirty = true;
      return;
    }
    case Job::Kind::Scalars: {
      open_run(job.run);
      RunWriter& rw = runs_[job.run];
      for (const auto& [tag, value] : job.scalars) rw.file->write(tb::scalar_event(job.wall_time, job.step, tag, float(value)));
      rw.dirty = true;
      return;
    }
    case Job::Kind::Histograms: {
      open_run(kTrain);
      RunWriter& rw = runs_[kTrain];
      for (const WeightSnapshot& w : job.weights) {
        std::vector<tb::HistogramBucket> b;
        try {
          b = w.f64.empty() ? tb::histogram_buckets(w.f32.data(), w.f32.size()) : tb::histogram_buckets(w.f64.data(), w.f64.size());
        } catch (const std::invalid_argument& e) {
          std::cerr << "warning: TensorBoard: " << w.tag << " at epoch " << job.step << " is not written: " << e.what() << "\n";
          continue;
        }
        rw.file->write(tb::histogram_event(job.wall_time, job.step, w.tag, b));
      }
      rw.dirty = true;
      return;
    }
  }
}

void TensorBoardCallback::worker() {
  for (;;) {
    std::deque<Job> jobs;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return !queue_.empty(); });
      jobs.swap(queue_);
      // What is taken is no longer pending: the queue may fill again while these are written (so at
      // most twice the bounds are held).
      pending_batch_ = 0;
      pending_histogram_bytes_ = 0;
    }
    bool close = false;
    for (Job& job : jobs) {
      if (job.kind == Job::Kind::Close) close = true;
      if (failed_.load()) continue;
      try {
        execute(job);
      } catch (const std::exception& e) {
        fail(e.what());
      }
      job.weights.clear();
    }
    for (RunWriter& rw : runs_) {
      if (!rw.file || !rw.dirty || failed_.load()) continue;
      try {
        rw.file->flush();
        rw.dirty = false;
      } catch (const std::exception& e) {
        fail(e.what());
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      written_ += jobs.size();
    }
    written_cv_.notify_all();
    if (close) {
      for (RunWriter& rw : runs_) {
        if (!rw.file) continue;
        try {
          rw.file->close();
        } catch (const std::exception& e) {
          fail(e.what());
        }
      }
      return;
    }
  }
}

}  // namespace lockstep
