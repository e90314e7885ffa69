// TensorBoard event files (core/tensorboard.h), against ../shared/reference/tensorboard-events.md:
// CRC-32C and framing on the reference's golden vectors; the two records of §1.4 byte for byte; every
// summary event of the real Keras-written fixtures (../shared/datasets/tfevents/) decoded by
// lockstep's reader and re-encoded identically by its writer; histograms against hand-computed
// buckets; the callback's tags, steps and order for every update_freq and histogram_freq; resumed runs
// read as TensorBoard's two loaders read them (no repeated, missing or reordered steps); corruption
// detection; an unwritable log_dir refused. TensorBoardSample.Write (run by tests/core/tb_check.py)
// writes logs for the independent Python decoder.
#include "core/tensorboard.h"

#include <gtest/gtest.h>

#include <bit>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "core/keras_json.h"
#include "test_util.h"

namespace lockstep {
namespace {

namespace fs = std::filesystem;
using tb::HistogramBucket;
using Logs = TensorBoardCallback::Logs;

std::string hex_bytes(std::string hex) {
  std::erase(hex, ' ');
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out.push_back(char(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

std::string to_hex(const std::string& s) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) out += {d[c >> 4], d[c & 15]};
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// A fresh temporary directory, removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "lockstep-tb-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ../shared/datasets/tfevents beside the checkout (or $LOCKSTEP_TFEVENTS_DIR).
std::string fixtures_dir() {
  if (const char* env = std::getenv("LOCKSTEP_TFEVENTS_DIR")) return env;
  return (fs::path(__FILE__).parent_path() / "../../../shared/datasets/tfevents").lexically_normal().string();
}

// ---- framing and encoding ----------------------------------------------------------------------

TEST(TensorBoardCrc, GoldenVectors) {
  // Reference §1.2 (TensorBoard's own test vectors).
  EXPECT_EQ(tb::crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(tb::crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(tb::masked_crc32c("\x1a\x11" "CRC test, one two"), 0x5794D08Au);
}

TEST(TensorBoardEncode, VersionRecordFraming) {
  // Reference §1.2: wall_time 1599759586.0 and file_version, 24 bytes; header a3 7f 4b 22, footer 12 4b 36 ab.
  const std::string payload = tb::file_version_event(1599759586.0, "");
  EXPECT_EQ(to_hex(payload), to_hex(hex_bytes("09 00 00 80 38 99 d6 d7 41 1a 0d") + "brain.Event:2"));
  EXPECT_EQ(to_hex(tb::frame_record(payload)),
            to_hex(hex_bytes("18 00 00 00 00 00 00 00 a3 7f 4b 22") + payload + hex_bytes("12 4b 36 ab")));
}

TEST(TensorBoardEncode, ReferenceRecordsByteForByte) {
  // Reference §1.4, fixture #2 record 0 (78 bytes) and record 3 (66 bytes), from their field values.
  const std::string r0 = tb::frame_record(tb::file_version_event(1713946901.0));
  EXPECT_EQ(to_hex(r0), to_hex(hex_bytes("3e 00 00 00 00 00 00 00 d9 d2 40 e7 09 00 00 40 45 30 8a d9 41 1a 0d") +
                               "brain.Event:2" + hex_bytes("52 24 0a 22") + "tensorflow.core.util.events_writer" +
                               hex_bytes("ec b1 b2 c9")));
  EXPECT_EQ(r0.size(), 78u);
  const std::string r3 =
      tb::frame_record(tb::scalar_event(std::bit_cast<double>(0x41d98a3045e00829ull), 0, "epoch_loss", std::bit_cast<float>(0x3d298e19u)));
  EXPECT_EQ(to_hex(r3), to_hex(hex_bytes("32 00 00 00 00 00 00 00 24 19 56 ec 09 29 08 e0 45 30 8a d9 41 2a 27 0a 25 0a 0a") +
                               "epoch_loss" + hex_bytes("42 0a 08 01 12 00 22 04 19 8e 29 3d 4a 0b 0a 09 0a 07") + "scalars" +
                               hex_bytes("25 c1 b5 25")));
  EXPECT_EQ(r3.size(), 66u);
  // SessionLog START: 3a 02 08 01, the step as field 2.
  EXPECT_EQ(to_hex(tb::session_log_event(1.0, 150, tb::SessionStatus::Start)),
            to_hex(hex_bytes("09 00 00 00 00 00 00 f0 3f 10 96 01 3a 02 08 01")));
}

TEST(TensorBoardEncode, HistogramTensorLayout) {
  std::vector<HistogramBucket> b(30, HistogramBucket{1, 2, 3});
  const tb::Event e = tb::parse_event(tb::histogram_event(5.0, 7, "dense/kernel_0/histogram", b));
  // Reference §1.4: 08 02, shape 12 08 12 02 08 1e 12 02 08 03, then 22 d0 05 + 720 bytes.
  EXPECT_NE(e.data.find(hex_bytes("42 df 05 08 02 12 08 12 02 08 1e 12 02 08 03 22 d0 05")), std::string::npos);
  ASSERT_EQ(e.values.size(), 1u);
  EXPECT_EQ(e.step, 7);
  EXPECT_EQ(e.values[0].plugin_name, "histograms");
  EXPECT_EQ(e.values[0].plugin_content, "");
  ASSERT_TRUE(e.values[0].histogram());
  EXPECT_EQ(*e.values[0].histogram(), b);
}

// ---- histograms ----------------------------------------------------------------------------------

TEST(TensorBoardHistogram, HandComputedBuckets) {
  // 0..9 and 30: width (30-0)/3 = 10 with k = 3; [0,10) gets 0..9, [10,20) nothing, [20,30] gets 30.
  std::vector<float> x = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 30};
  auto b = tb::histogram_buckets(x.data(), x.size(), 3);
  std::vector<HistogramBucket> want = {{0, 10, 10}, {10, 20, 0}, {20, 30, 1}};
  EXPECT_EQ(b, want);
  // Default k = 30 on [-1, 2]: width 0.1; -1 → 0, 2 → 29 (clamped), 0.5 → floor(1.5/0.1) = 15.
  std::vector<double> y = {-1, 2, 0.5};
  b = tb::histogram_buckets(y.data(), y.size());
  ASSERT_EQ(b.size(), 30u);
  double total = 0;
  for (int i = 0; i < 30; ++i) {
    EXPECT_EQ(b[size_t(i)].left, i == 0 ? -1.0 : -1.0 + double(i) * 0.1);
    EXPECT_EQ(b[size_t(i)].right, i == 29 ? 2.0 : -1.0 + double(i + 1) * 0.1);
    total += b[size_t(i)].count;
  }
  EXPECT_EQ(total, 3);
  EXPECT_EQ(b[0].count, 1);
  EXPECT_EQ(b[29].count, 1);
  EXPECT_EQ(b[size_t(std::floor((0.5 + 1.0) / 0.1))].count, 1);
}

TEST(TensorBoardHistogram, AllEqualSingleEmptyNonFinite) {
  std::vector<float> same(7, 0.25f);
  auto b = tb::histogram_buckets(same.data(), same.size());
  ASSERT_EQ(b.size(), 30u);
  for (int i = 0; i < 29; ++i) EXPECT_EQ(b[size_t(i)], (HistogramBucket{0.25, 0.25, 0}));
  EXPECT_EQ(b[29], (HistogramBucket{0.25, 0.25, 7}));
  float one = -3.5f;
  b = tb::histogram_buckets(&one, 1);
  EXPECT_EQ(b[29], (HistogramBucket{-3.5, -3.5, 1}));
  EXPECT_EQ(b[0], (HistogramBucket{-3.5, -3.5, 0}));
  b = tb::histogram_buckets(static_cast<const float*>(nullptr), 0);
  ASSERT_EQ(b.size(), 30u);
  for (const auto& r : b) EXPECT_EQ(r, (HistogramBucket{0, 0, 0}));
  std::vector<float> bad = {1, std::numeric_limits<float>::quiet_NaN()};
  EXPECT_THROW(tb::histogram_buckets(bad.data(), bad.size()), std::invalid_argument);
}

TEST(TensorBoardHistogram, Tf1HistogramProtoConvertedAsTensorBoardDoes) {
  tb::SummaryValue v;
  v.kind = tb::SummaryValue::Kind::Histo;
  v.histo.min = -1;
  v.histo.max = 3;
  v.histo.bucket_limit = {-2, 0, 1, 2, 4, 1e300};
  v.histo.bucket = {0, 2, 0, 5, 1, 0};
  auto rows = v.histogram();
  ASSERT_TRUE(rows);
  // Empty outer buckets dropped; min and max as the outer edges.
  std::vector<HistogramBucket> want = {{-1, 0, 2}, {0, 1, 0}, {1, 2, 5}, {2, 3, 1}};
  EXPECT_EQ(*rows, want);
}

// ---- reading the real Keras files ----------------------------------------------------------------

// Every summary event re-encoded from its decoded fields by lockstep's writer equals TF's bytes.
void expect_reencodes(const tb::Event& e) {
  if (!e.file_version.empty()) {
    EXPECT_EQ(to_hex(tb::file_version_event(e.wall_time, e.source_writer)), to_hex(e.data));
    return;
  }
  if (e.values.size() != 1) return;
  const tb::SummaryValue& v = e.values[0];
  if (v.tag == "keras") {
    ASSERT_TRUE(v.string());
    EXPECT_EQ(to_hex(tb::keras_model_event(e.wall_time, *v.string())), to_hex(e.data));
  } else if (v.plugin_name == "scalars") {
    ASSERT_TRUE(v.scalar());
    EXPECT_EQ(to_hex(tb::scalar_event(e.wall_time, e.step, v.tag, float(*v.scalar()))), to_hex(e.data)) << v.tag;
  } else if (v.plugin_name == "histograms") {
    ASSERT_TRUE(v.histogram());
    EXPECT_EQ(to_hex(tb::histogram_event(e.wall_time, e.step, v.tag, *v.histogram())), to_hex(e.data)) << v.tag;
  }
}

TEST(TensorBoardFixtures, Tf213TrainFile) {
  const std::string path = fixtures_dir() + "/tfkeras2.13_mnist_cnn_run3200/train/events.out.tfevents.1713946869.LAPTOP-T6KSEJC7.3200.0.v2";
  if (!fs::exists(path)) GTEST_SKIP() << "fixture absent: " << path;
  const tb::EventFile f = tb::read_event_file(path);
  ASSERT_EQ(f.events.size(), 16u);
  EXPECT_FALSE(f.truncated);
  EXPECT_EQ(f.events[0].file_version, "brain.Event:2");
  EXPECT_EQ(f.events[0].wall_time, 1713946869.0);
  EXPECT_EQ(f.events[0].source_writer, "tensorflow.core.util.events_writer");
  const tb::SummaryValue& keras = f.events[1].values.at(0);
  EXPECT_EQ(keras.tag, "keras");
  EXPECT_EQ(keras.plugin_name, "graph_keras_model");
  EXPECT_EQ(keras.plugin_content, "1");
  ASSERT_TRUE(keras.string());
  EXPECT_NE(keras.string()->find("\"keras_version\": \"2.13.1\""), std::string::npos);
  EXPECT_TRUE(f.events[2].has_graph_def);
  EXPECT_EQ(f.events[2].graph_def_bytes, 80485u);
  const std::vector<std::pair<std::string, double>> scalars = {
      {"epoch_loss", 0.31243908405303955}, {"epoch_accuracy", 0.9017166495323181}, {"epoch_lr", 0.0010000000474974513}};
  for (size_t i = 0; i < scalars.size(); ++i) {
    const tb::Event& e = f.events[3 + i];
    EXPECT_EQ(e.step, 0);
    EXPECT_EQ(e.values.at(0).tag, scalars[i].first);
    EXPECT_EQ(e.values[0].tensor.dtype, tb::DT_FLOAT);
    EXPECT_TRUE(e.values[0].tensor.has_shape);
    EXPECT_EQ(e.values[0].plugin_name, "scalars");
    EXPECT_EQ(e.values[0].data_class, 0);
    EXPECT_EQ(e.values[0].scalar().value_or(-1), scalars[i].second);
  }
  const std::vector<std::pair<std::string, double>> hists = {
      {"conv2d/kernel_0/histogram", 800},   {"conv2d/bias_0/histogram", 32},   {"conv2d_1/kernel_0/histogram", 38400},
      {"conv2d_1/bias_0/histogram", 48},    {"dense/kernel_0/histogram", 307200}, {"dense/bias_0/histogram", 256},
      {"dense_1/kernel_0/histogram", 21504}, {"dense_1/bias_0/histogram", 84},  {"dense_2/kernel_0/histogram", 840},
      {"dense_2/bias_0/histogram", 10}};
  for (size_t i = 0; i < hists.size(); ++i) {
    const tb::SummaryValue& v = f.events[6 + i].values.at(0);
    EXPECT_EQ(v.tag, hists[i].first);
    EXPECT_EQ(v.tensor.dtype, tb::DT_DOUBLE);
    EXPECT_EQ(v.tensor.shape, (std::vector<int64_t>{30, 3}));
    EXPECT_EQ(v.plugin_name, "histograms");
    auto rows = v.histogram();
    ASSERT_TRUE(rows);
    double total = 0;
    const double lo = rows->front().left, hi = rows->back().right, width = (hi - lo) / 30.0;
    for (size_t r = 0; r < rows->size(); ++r) {
      total += (*rows)[r].count;
      if (r) {
        EXPECT_EQ((*rows)[r].left, (*rows)[r - 1].right);
      }
      // TF's linspace: min + r·(max - min)/30 exactly (lockstep's formula), the last edge max.
      EXPECT_EQ((*rows)[r].left, r == 0 ? lo : lo + double(r) * width) << v.tag << " row " << r;
    }
    EXPECT_EQ(total, hists[i].second) << v.tag;
  }
  for (const tb::Event& e : f.events) expect_reencodes(e);
}

TEST(TensorBoardFixtures, Tf213ValidationFile) {
  const std::string path = fixtures_dir() + "/tfkeras2.13_mnist_cnn_run3200/validation/events.out.tfevents.1713946901.LAPTOP-T6KSEJC7.3200.1.v2";
  if (!fs::exists(path)) GTEST_SKIP() << "fixture absent: " << path;
  const tb::EventFile f = tb::read_event_file(path);
  ASSERT_EQ(f.events.size(), 5u);
  EXPECT_EQ(f.events[0].wall_time, 1713946901.0);
  const std::vector<std::tuple<int64_t, std::string, double>> want = {
      {600, "evaluation_loss_vs_iterations", 0.04139528051018715},
      {600, "evaluation_accuracy_vs_iterations", 0.9871000051498413},
      {0, "epoch_loss", 0.04139528051018715},
      {0, "epoch_accuracy", 0.9871000051498413}};
  for (size_t i = 0; i < want.size(); ++i) {
    const tb::Event& e = f.events[1 + i];
    EXPECT_EQ(e.step, std::get<0>(want[i]));
    EXPECT_EQ(e.values.at(0).tag, std::get<1>(want[i]));
    EXPECT_EQ(e.values[0].scalar().value_or(-1), std::get<2>(want[i]));
  }
  // The whole file, framing included, is what lockstep writes for these values.
  std::string again;
  for (const tb::Event& e : f.events) {
    expect_reencodes(e);
    again += tb::frame_record(e.data);
  }
  EXPECT_EQ(to_hex(again), to_hex(read_file(path)));
}

TEST(TensorBoardFixtures, Tf25EraSimpleValues) {
  const std::string path = fixtures_dir() + "/tfkeras2.5era_oct_20220105-073757/validation/events.out.tfevents.1641386283.pedram-Z97M-DS3H.26433.3918.v2";
  if (!fs::exists(path)) GTEST_SKIP() << "fixture absent: " << path;
  const tb::EventFile f = tb::read_event_file(path);
  ASSERT_EQ(f.events.size(), 29u);
  EXPECT_EQ(f.events[0].wall_time, 1641386283.0);
  EXPECT_EQ(f.events[0].source_writer, "");
  for (int epoch = 0; epoch < 7; ++epoch) {
    const std::vector<std::pair<int64_t, std::string>> want = {{251 * (epoch + 1), "evaluation_loss_vs_iterations"},
                                                               {251 * (epoch + 1), "evaluation_accuracy_vs_iterations"},
                                                               {epoch, "epoch_loss"},
                                                               {epoch, "epoch_accuracy"}};
    for (size_t i = 0; i < 4; ++i) {
      const tb::Event& e = f.events[size_t(1 + 4 * epoch) + i];
      EXPECT_EQ(e.step, want[i].first);
      EXPECT_EQ(e.values.at(0).tag, want[i].second);
      EXPECT_EQ(e.values[0].kind, tb::SummaryValue::Kind::Simple);
      EXPECT_FALSE(e.values[0].has_metadata);
    }
  }
  EXPECT_EQ(f.events[3].values[0].scalar().value(), 1.5368982553482056);
  EXPECT_EQ(f.events[4].values[0].scalar().value(), 0.33619290590286255);
  EXPECT_EQ(f.events[27].values[0].scalar().value(), 1.3962241411209106);
}

// ---- corruption ----------------------------------------------------------------------------------

TEST(TensorBoardReader, CorruptionIsDetectedTruncationIsNot) {
  TempDir tmp;
  std::string good;
  {
    tb::EventFileWriter w(tmp.path());
    w.write(tb::scalar_event(10.5, 3, "epoch_loss", 0.25f));
    w.write(tb::scalar_event(11.5, 4, "epoch_loss", 0.125f));
    w.close();
    good = read_file(w.path());
    const tb::EventFile f = tb::read_event_file(w.path());
    ASSERT_EQ(f.events.size(), 3u);
    EXPECT_EQ(f.events[2].values.at(0).scalar().value(), 0.125);
  }
  const std::string path = tmp.path() + "/events.out.tfevents.bad";
  // One flipped byte anywhere (length, its CRC, data, data CRC) of every record is detected.
  for (size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] = char(bad[i] ^ 0x20);
    write_file(path, bad);
    tb::EventFile f;
    bool threw = false;
    try {
      f = tb::read_event_file(path);
    } catch (const DataError&) {
      threw = true;
    }
    // A flipped length byte can also make the record look short (truncated); never silently accepted.
    EXPECT_TRUE(threw || (f.truncated && f.events.size() < 3)) << "byte " << i;
    if (threw) {
      const tb::EventFile lenient = tb::read_event_file(path, false);
      EXPECT_FALSE(lenient.error.empty());
      EXPECT_LT(lenient.events.size(), 3u);
    }
  }
  // A short last record: maybe still being written.
  write_file(path, good.substr(0, good.size() - 5));
  const tb::EventFile f = tb::read_event_file(path);
  EXPECT_TRUE(f.truncated);
  EXPECT_EQ(f.events.size(), 2u);
  EXPECT_TRUE(f.error.empty());
}

// ---- options -------------------------------------------------------------------------------------

TensorBoardOptions parse(const std::string& yaml) {
  ConfigNode cfg = load_config_string(yaml, "run.yaml");
  return TensorBoardOptions::from_config(cfg["callbacks"]["tensorboard"]);
}

std::string config_error(const std::string& yaml) {
  try {
    parse(yaml);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

TEST(TensorBoardOptions, KerasNamesAndDefaults) {
  TensorBoardOptions o = parse("callbacks:\n  tensorboard: {}\n");
  EXPECT_EQ(o.log_dir, "logs");
  EXPECT_EQ(o.update_freq, 0);
  EXPECT_EQ(o.histogram_freq, 0);
  EXPECT_TRUE(o.write_graph);
  o = parse("callbacks:\n  tensorboard: {log_dir: tb, update_freq: batch, histogram_freq: 2, write_graph: false, profile_batch: 0}\n");
  EXPECT_EQ(o.log_dir, "tb");
  EXPECT_EQ(o.update_freq, 1);
  EXPECT_EQ(o.histogram_freq, 2);
  EXPECT_FALSE(o.write_graph);
  EXPECT_EQ(parse("callbacks:\n  tensorboard: {update_freq: 100}\n").update_freq, 100);
  EXPECT_EQ(parse("callbacks:\n  tensorboard: {update_freq: epoch}\n").update_freq, 0);
}

TEST(TensorBoardOptions, RefusalsNameTheKey) {
  EXPECT_NE(config_error("callbacks:\n  tensorboard: {update_freq: 0}\n").find("run.yaml:2:"), std::string::npos);
  EXPECT_NE(config_error("callbacks:\n  tensorboard: {update_freq: often}\n").find("callbacks.tensorboard.update_freq"), std::string::npos);
  EXPECT_NE(config_error("callbacks:\n  tensorboard: {profile_batch: 2}\n").find("profile_batch: 0"), std::string::npos);
  EXPECT_NE(config_error("callbacks:\n  tensorboard: {profile_batch: '10,20'}\n").find("profiler"), std::string::npos);
  EXPECT_NE(config_error("callbacks:\n  tensorboard: {histogram_freq: -1}\n").find("histogram_freq"), std::string::npos);
  EXPECT_NE(config_error("callbacks:\n  tensorboard: {write_images: true}\n").find("write_images"), std::string::npos);
  EXPECT_NE(config_error("callbacks:\n  tensorboard: {histogram_frq: 1}\n").find("histogram_freq"), std::string::npos);
}

TEST(TensorBoardOptions, UnwritableLogDirIsRefused) {
  TempDir tmp;
  write_file(tmp.path() + "/file", "x");
  ConfigNode cfg = load_config_string("callbacks:\n  tensorboard: {log_dir: file/logs}\n", "run.yaml");
  try {
    TensorBoardCallback::from_config(cfg["callbacks"]["tensorboard"], tmp.path());
    ADD_FAILURE() << "a log_dir under a regular file was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("run.yaml:2:"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("callbacks.tensorboard.log_dir"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("file/logs"), std::string::npos) << e.what();
  }
  // An existing train/ that is not a directory.
  fs::create_directories(tmp.path() + "/logs2");
  write_file(tmp.path() + "/logs2/train", "x");
  TensorBoardOptions o;
  o.log_dir = "logs2";
  EXPECT_THROW(TensorBoardCallback(o, tmp.path()), ConfigError);
  // A read-only directory (root may write anyway).
  if (::geteuid() != 0) {
    fs::create_directories(tmp.path() + "/ro");
    fs::permissions(tmp.path() + "/ro", fs::perms::owner_read | fs::perms::owner_exec);
    o.log_dir = tmp.path() + "/ro";
    EXPECT_THROW(TensorBoardCallback(o, ""), ConfigError);
    fs::permissions(tmp.path() + "/ro", fs::perms::owner_all);
  }
}

// ---- the callback --------------------------------------------------------------------------------

std::unique_ptr<Model> small_model() {
  auto m = test::model_from_yaml(
      "model:\n  input_shape: [4]\n  layers:\n    - dense: {units: 3, activation: relu}\n"
      "    - batch_normalization: {}\n    - dense: {units: 2, activation: softmax}\n",
      DType::F32);
  m->init(7);
  return m;
}

// One point as a loader holds it.
struct Point {
  int64_t step;
  double value;
  bool operator==(const Point&) const = default;
};
using Series = std::map<std::string, std::vector<Point>>;  // tag -> points in the order held

double point_value(const tb::SummaryValue& v) {
  if (auto s = v.scalar()) return *s;
  if (auto h = v.histogram()) {
    double n = 0;
    for (const auto& b : *h) n += b.count;
    return n;
  }
  return 0;
}

// TensorBoard's Python loader (plugin_event_accumulator, file_version 2): files in name order, every
// value appended to its tag; the run's first SessionLog START starts the session, every later one
// purges every tag's points at steps >= its step.
Series python_loader(const std::string& run_dir) {
  Series s;
  bool seen_start = false;
  for (const std::string& path : tb::event_files(run_dir))
    for (const tb::Event& e : tb::read_event_file(path).events) {
      if (e.session_status == 1) {
        if (seen_start)
          for (auto& [tag, pts] : s) std::erase_if(pts, [&](const Point& p) { return p.step >= e.step; });
        seen_start = true;
        continue;
      }
      for (const tb::SummaryValue& v : e.values) s[v.tag].push_back({e.step, point_value(v)});
    }
  return s;
}

// RustBoard (SessionLog ignored): a newly read point drops the tag's points at steps >= its step.
Series rust_loader(const std::string& run_dir) {
  Series s;
  for (const std::string& path : tb::event_files(run_dir))
    for (const tb::Event& e : tb::read_event_file(path).events)
      for (const tb::SummaryValue& v : e.values) {
        auto& pts = s[v.tag];
        std::erase_if(pts, [&](const Point& p) { return p.step >= e.step; });
        pts.push_back({e.step, point_value(v)});
      }
  return s;
}

std::vector<int64_t> steps_of(const Series& s, const std::string& tag) {
  std::vector<int64_t> out;
  auto it = s.find(tag);
  if (it != s.end())
    for (const Point& p : it->second) out.push_back(p.step);
  return out;
}

std::vector<int64_t> range(int64_t from, int64_t to, int64_t by = 1) {  // [from, to]
  std::vector<int64_t> v;
  for (int64_t i = from; i <= to; i += by) v.push_back(i);
  return v;
}

// A deterministic stand-in for the trainer's fit loop: `epochs` epochs of `steps` steps with
// validation, the logs functions of the step (so a resumed run rewrites the same values).
struct FakeFit {
  int64_t steps = 5;
  int64_t epochs = 3;
  bool validation = true;
  bool lr_log = false;       // logs["lr"] (ReduceLROnPlateau)
  bool lr_schedule = false;  // epoch_learning_rate
  static double loss_at(int64_t step) { return 1.0 / double(step + 1); }
  // Run epochs [first_epoch, last_epoch) from global step `start` (mid-epoch when start > first_epoch·steps);
  // stop after global step `crash_after` (no on_train_end: a killed process) when >= 0.
  void run(TensorBoardCallback& cb, const Model& model, int64_t first_epoch, int64_t start, int64_t crash_after = -1,
           bool crash_after_epoch_logs = false) {
    cb.on_train_begin(model, first_epoch, start);
    int64_t step = start;
    for (int64_t epoch = first_epoch; epoch < epochs; ++epoch) {
      while (step < (epoch + 1) * steps) {
        ++step;
        if (cb.wants_batch(step)) cb.on_train_batch_end(step, {{"loss", loss_at(step)}, {"accuracy", 0.5}});
        if (step == crash_after && !crash_after_epoch_logs) return;
      }
      Logs logs = {{"loss", loss_at(step)}, {"accuracy", 0.5 + 0.01 * double(epoch)}};
      if (validation) {
        cb.on_test_begin();
        cb.on_test_end(step, {{"loss", 2 * loss_at(step)}, {"accuracy", 0.4}});
        logs.push_back({"val_loss", 2 * loss_at(step)});
        logs.push_back({"val_accuracy", 0.4});
      }
      if (lr_log) logs.push_back({"lr", 0.01});
      std::optional<double> lr;
      if (lr_schedule) lr = 0.1 / double(step);
      cb.on_epoch_end(epoch, logs, model, lr);
      if (step == crash_after) return;
    }
    cb.on_train_end();
  }
};

// Wait for the writer thread without ending the callback: tests read files of a "crashed" run after
// destroying it (the destructor flushes, as a crash after TensorFlow's last flush would leave them).
TensorBoardOptions opts(int64_t update_freq = 0, int64_t histogram_freq = 0) {
  TensorBoardOptions o;
  o.update_freq = update_freq;
  o.histogram_freq = histogram_freq;
  return o;
}

std::vector<std::string> tags_in_order(const std::string& file) {
  std::vector<std::string> tags;
  for (const tb::Event& e : tb::read_event_file(file).events)
    for (const tb::SummaryValue& v : e.values) tags.push_back(str_cat(v.tag, "@", e.step));
  return tags;
}

TEST(TensorBoardCallback, EpochUpdateFreqWritesKerasLayout) {
  TempDir tmp;
  auto model = small_model();
  TensorBoardCallback cb(opts(), tmp.path());
  FakeFit{}.run(cb, *model, 0, 0);
  EXPECT_EQ(cb.error(), "");
  const std::vector<std::string> files = cb.files();
  ASSERT_EQ(files.size(), 2u);
  const std::regex name(R"(events\.out\.tfevents\.(\d{10})\.[^.]+(\.[^.]+)*\.(\d+)\.(\d+)\.v2)");
  for (size_t i = 0; i < 2; ++i) {
    const fs::path p(files[i]);
    EXPECT_EQ(p.parent_path().filename(), i == 0 ? "train" : "validation");
    EXPECT_EQ(p.parent_path().parent_path(), fs::path(tmp.path()) / "logs");
    std::smatch m;
    const std::string base = p.filename().string();
    ASSERT_TRUE(std::regex_match(base, m, name)) << base;
    EXPECT_EQ(std::stoll(m[3]), int64_t(getpid()));
    const tb::EventFile f = tb::read_event_file(files[i]);
    EXPECT_EQ(f.events.at(0).file_version, "brain.Event:2");
    EXPECT_EQ(f.events[0].wall_time, double(std::stoll(m[1])));
    EXPECT_EQ(f.events[0].source_writer, tb::kTensorFlowWriter);
    for (size_t k = 1; k < f.events.size(); ++k) {
      EXPECT_EQ(f.events[k].values.size(), 1u);
      EXPECT_GE(f.events[k].wall_time, f.events[0].wall_time);
    }
  }
  EXPECT_EQ(tags_in_order(files[0]),
            (std::vector<std::string>{"keras@0", "epoch_loss@0", "epoch_accuracy@0", "epoch_loss@1", "epoch_accuracy@1",
                                      "epoch_loss@2", "epoch_accuracy@2"}));
  EXPECT_EQ(tags_in_order(files[1]),
            (std::vector<std::string>{"evaluation_loss_vs_iterations@5", "evaluation_accuracy_vs_iterations@5",
                                      "epoch_loss@0", "epoch_accuracy@0", "evaluation_loss_vs_iterations@10",
                                      "evaluation_accuracy_vs_iterations@10", "epoch_loss@1", "epoch_accuracy@1",
                                      "evaluation_loss_vs_iterations@15", "evaluation_accuracy_vs_iterations@15",
                                      "epoch_loss@2", "epoch_accuracy@2"}));
  const tb::EventFile train = tb::read_event_file(files[0]);
  const tb::SummaryValue& keras = train.events[1].values[0];
  EXPECT_EQ(keras.plugin_name, "graph_keras_model");
  EXPECT_EQ(keras.plugin_content, "1");
  EXPECT_EQ(*keras.string(), keras_model_json(*model));
  // Values are float32 casts of the logs.
  EXPECT_EQ(train.events[2].values[0].scalar().value(), double(float(FakeFit::loss_at(5))));
  const Series val = python_loader(tmp.path() + "/logs/validation");
  EXPECT_EQ(val.at("epoch_loss")[2].value, double(float(2 * FakeFit::loss_at(15))));
}

TEST(TensorBoardCallback, BatchAndEveryNUpdateFreq) {
  for (int64_t n : {1, 4}) {
    TempDir tmp;
    auto model = small_model();
    TensorBoardCallback cb(opts(n), tmp.path());
    FakeFit{}.run(cb, *model, 0, 0);
    const Series s = python_loader(tmp.path() + "/logs/train");
    EXPECT_EQ(steps_of(s, "batch_loss"), range(n, 15, n)) << "update_freq " << n;
    EXPECT_EQ(steps_of(s, "batch_accuracy"), range(n, 15, n));
    EXPECT_EQ(steps_of(s, "epoch_loss"), range(0, 2));
    EXPECT_EQ(s.at("batch_loss")[0].value, double(float(FakeFit::loss_at(n))));
    // Train file order: batch points of an epoch before its epoch_* points.
    const auto tags = tags_in_order(cb.files()[0]);
    const auto pos = [&](const std::string& t) { return std::find(tags.begin(), tags.end(), t) - tags.begin(); };
    EXPECT_LT(pos(str_cat("batch_loss@", n)), pos("epoch_loss@0"));
    EXPECT_LT(pos("epoch_loss@0"), pos("batch_loss@12"));
    EXPECT_TRUE(steps_of(python_loader(tmp.path() + "/logs/validation"), "batch_loss").empty());
  }
}

TEST(TensorBoardCallback, HistogramFreqAndLearningRates) {
  for (int64_t freq : {1, 2}) {
    TempDir tmp;
    auto model = small_model();
    TensorBoardCallback cb(opts(0, freq), tmp.path());
    FakeFit fit;
    fit.lr_log = fit.lr_schedule = true;
    fit.run(cb, *model, 0, 0);
    const Series s = python_loader(tmp.path() + "/logs/train");
    const std::vector<std::pair<std::string, double>> weights = {
        {"dense/kernel_0/histogram", 12}, {"dense/bias_0/histogram", 3},
        {"batch_normalization/gamma_0/histogram", 3}, {"batch_normalization/beta_0/histogram", 3},
        {"batch_normalization/moving_mean_0/histogram", 3}, {"batch_normalization/moving_variance_0/histogram", 3},
        {"dense_1/kernel_0/histogram", 6}, {"dense_1/bias_0/histogram", 2}};
    for (const auto& [tag, count] : weights) {
      EXPECT_EQ(steps_of(s, tag), range(0, 2, freq)) << tag;
      for (const Point& p : s.at(tag)) EXPECT_EQ(p.value, count) << tag;
    }
    EXPECT_EQ(steps_of(s, "epoch_lr"), range(0, 2));
    EXPECT_EQ(steps_of(s, "epoch_learning_rate"), range(0, 2));
    EXPECT_EQ(s.at("epoch_learning_rate")[1].value, double(float(0.1 / 10)));
    EXPECT_TRUE(steps_of(python_loader(tmp.path() + "/logs/validation"), "epoch_lr").empty());
    // Epoch 0 in the train file: scalars in Keras's order, then the histograms in layer/weight order.
    const auto tags = tags_in_order(cb.files()[0]);
    std::vector<std::string> first(tags.begin(), tags.begin() + 5 + int(weights.size()));
    std::vector<std::string> want = {"keras@0", "epoch_loss@0", "epoch_accuracy@0", "epoch_lr@0", "epoch_learning_rate@0"};
    for (const auto& w : weights) want.push_back(w.first + "@0");
    EXPECT_EQ(first, want);
    // Histogram rows as TensorBoard computes them from the weights (the last dense layer's kernel).
    const tb::EventFile f = tb::read_event_file(cb.files()[0]);
    for (const tb::Event& e : f.events)
      if (!e.values.empty() && e.values[0].tag == "dense_1/kernel_0/histogram" && e.step == 0) {
        const std::vector<float> w = model->layer(2).weights()[0].value.to_vector();
        EXPECT_EQ(*e.values[0].histogram(), tb::histogram_buckets(w.data(), w.size()));
      }
  }
}

TEST(TensorBoardCallback, WriteGraphFalseAndNoValidation) {
  TempDir tmp;
  auto model = small_model();
  TensorBoardOptions o = opts();
  o.write_graph = false;
  TensorBoardCallback cb(o, tmp.path());
  FakeFit fit;
  fit.validation = false;
  fit.run(cb, *model, 0, 0);
  ASSERT_EQ(cb.files().size(), 1u);
  EXPECT_FALSE(fs::exists(tmp.path() + "/logs/validation"));
  EXPECT_EQ(tags_in_order(cb.files()[0]).front(), "epoch_loss@0");
}

// Every tag of a run, as both loaders hold it, equals the uninterrupted run's.
void expect_same_as_uninterrupted(const std::string& dir, const std::string& reference_dir) {
  for (const char* run : {"train", "validation"}) {
    const Series want = python_loader(reference_dir + "/logs/" + run);
    const Series py = python_loader(dir + "/logs/" + run), rust = rust_loader(dir + "/logs/" + run);
    ASSERT_FALSE(want.empty());
    for (const auto& [tag, pts] : want) {
      EXPECT_EQ(py.count(tag) ? py.at(tag) : std::vector<Point>{}, pts) << run << " " << tag << " (Python loader)";
      EXPECT_EQ(rust.count(tag) ? rust.at(tag) : std::vector<Point>{}, pts) << run << " " << tag << " (RustBoard)";
    }
    for (const auto& [tag, pts] : py)
      if (!want.count(tag)) ADD_FAILURE() << run << ": unexpected tag " << tag;
  }
}

TEST(TensorBoardCallback, ResumeContinuesWithoutRepeatedSteps) {
  auto model = small_model();
  TempDir ref;
  {
    TensorBoardCallback cb(opts(1, 1), ref.path());
    FakeFit{}.run(cb, *model, 0, 0);
  }
  // Preempted after step 12 with a checkpoint there (epoch 2, 2 steps in): nothing past it was written.
  TempDir tmp;
  {
    TensorBoardCallback cb(opts(1, 1), tmp.path());
    FakeFit{}.run(cb, *model, 0, 0, 12);
  }
  {
    TensorBoardCallback cb(opts(1, 1), tmp.path());
    FakeFit{}.run(cb, *model, 2, 12);
    // Nothing to purge: no SessionLog, and no second `keras` tag.
    const tb::EventFile f = tb::read_event_file(cb.files()[0]);
    for (const tb::Event& e : f.events) {
      EXPECT_EQ(e.session_status, -1);
      for (const auto& v : e.values) EXPECT_NE(v.tag, "keras");
    }
    EXPECT_EQ(f.events.at(1).step, 13);
  }
  expect_same_as_uninterrupted(tmp.path(), ref.path());
}

TEST(TensorBoardCallback, ResumeAfterCrashPurgesWhatIsRewritten) {
  auto model = small_model();
  TempDir ref;
  {
    TensorBoardCallback cb(opts(1, 1), ref.path());
    FakeFit{}.run(cb, *model, 0, 0);
  }
  // Killed at step 14, the last checkpoint at step 12: batch points 13 and 14 are rewritten.
  TempDir tmp;
  {
    TensorBoardCallback cb(opts(1, 1), tmp.path());
    FakeFit{}.run(cb, *model, 0, 0, 14);
  }
  {
    TensorBoardCallback cb(opts(1, 1), tmp.path());
    FakeFit{}.run(cb, *model, 2, 12);
    // Two STARTs at 13 (the loader takes a run's first for the session's start), then step 13.
    const tb::EventFile f = tb::read_event_file(cb.files()[0]);
    EXPECT_EQ(f.events.at(1).session_status, 1);
    EXPECT_EQ(f.events.at(1).step, 13);
    EXPECT_EQ(f.events.at(2).session_status, 1);
    EXPECT_EQ(f.events.at(2).step, 13);
    EXPECT_EQ(f.events.at(3).values.at(0).tag, "batch_loss");
    EXPECT_EQ(f.events.at(3).step, 13);
  }
  expect_same_as_uninterrupted(tmp.path(), ref.path());
}

TEST(TensorBoardCallback, ResumeBehindEpochLogsKeepsEarlierBatchPoints) {
  auto model = small_model();
  TempDir ref;
  {
    TensorBoardCallback cb(opts(1, 1), ref.path());
    FakeFit{}.run(cb, *model, 0, 0);
  }
  // Killed after epoch 1's logs (step 10) but before its checkpoint; the last one is at step 7
  // (epoch 1, 2 steps in). Epoch 1's epoch_*/histograms (step 1) and evaluation at 10 are rewritten,
  // so the purge starts at 1 in both runs, and the valid points 1..7 / evaluation at 5 are copied.
  TempDir tmp;
  {
    TensorBoardCallback cb(opts(1, 1), tmp.path());
    FakeFit{}.run(cb, *model, 0, 0, 10, true);
  }
  {
    TensorBoardCallback cb(opts(1, 1), tmp.path());
    FakeFit{}.run(cb, *model, 1, 7);
    const tb::EventFile train = tb::read_event_file(cb.files()[0]);
    EXPECT_EQ(train.events.at(2).session_status, 1);
    EXPECT_EQ(train.events[2].step, 1);
  }
  expect_same_as_uninterrupted(tmp.path(), ref.path());
}

TEST(TensorBoardCallback, FreshRunInOldLogDirReplacesIt) {
  auto model = small_model();
  TempDir ref, tmp;
  {
    TensorBoardCallback cb(opts(2, 1), ref.path());
    FakeFit{}.run(cb, *model, 0, 0);
  }
  for (int i = 0; i < 2; ++i) {
    TensorBoardCallback cb(opts(2, 1), tmp.path());
    FakeFit{}.run(cb, *model, 0, 0);
  }
  expect_same_as_uninterrupted(tmp.path(), ref.path());
  // The second run's keras tag replaced the first (purged with it).
  EXPECT_EQ(python_loader(tmp.path() + "/logs/train").at("keras").size(), 1u);
}

TEST(TensorBoardCallback, FullQueueDropsBatchEventsOnly) {
  TempDir tmp;
  auto model = small_model();
  TensorBoardOptions o = opts(1);
  o.max_pending_batch_events = 0;  // as if the disk never kept up
  TensorBoardCallback cb(o, tmp.path());
  FakeFit{}.run(cb, *model, 0, 0);
  EXPECT_EQ(cb.dropped_batch_events(), 15);
  const Series s = python_loader(tmp.path() + "/logs/train");
  EXPECT_TRUE(steps_of(s, "batch_loss").empty());
  EXPECT_EQ(steps_of(s, "epoch_loss"), range(0, 2));
}

TEST(TensorBoardCallback, WriteErrorStopsWritingNotTraining) {
  TempDir tmp;
  auto model = small_model();
  TensorBoardCallback cb(opts(1), tmp.path());
  cb.on_train_begin(*model);
  // Replace the run directory under the writer: the validation file cannot be created.
  write_file(tmp.path() + "/logs/validation", "not a directory");
  cb.on_test_begin();
  cb.on_test_end(5, {{"loss", 1.0}});
  cb.on_train_batch_end(6, {{"loss", 1.0}});
  cb.on_train_end();
  EXPECT_NE(cb.error().find("validation"), std::string::npos) << cb.error();
}

TEST(TensorBoardKerasJson, SequentialAndFunctional) {
  auto seq = small_model();
  // Complete layer configs (Keras defaults filled in, core/keras_json.h); no batch_input_shape after the
  // InputLayer (keras-files.md §5.2).
  EXPECT_EQ(keras_model_config(*seq),
            "{\"class_name\": \"Sequential\", \"config\": {\"name\": \"sequential\", \"layers\": ["
            "{\"class_name\": \"InputLayer\", \"config\": {\"batch_input_shape\": [null, 4], \"dtype\": \"float32\", "
            "\"sparse\": false, \"ragged\": false, \"name\": \"dense_input\"}}, "
            "{\"class_name\": \"Dense\", \"config\": {\"name\": \"dense\", \"trainable\": true, \"dtype\": \"float32\", "
            "\"units\": 3, \"activation\": \"relu\", \"use_bias\": true, \"kernel_initializer\": {\"class_name\": \"GlorotUniform\", "
            "\"config\": {\"seed\": null}}, \"bias_initializer\": {\"class_name\": \"Zeros\", \"config\": {}}, \"kernel_regularizer\": null, "
            "\"bias_regularizer\": null, \"activity_regularizer\": null, \"kernel_constraint\": null, \"bias_constraint\": null}}, "
            "{\"class_name\": \"BatchNormalization\", \"config\": {\"name\": \"batch_normalization\", \"trainable\": true, "
            "\"dtype\": \"float32\", \"axis\": [1], \"momentum\": 0.99, \"epsilon\": 0.001, \"center\": true, \"scale\": true, "
            "\"beta_initializer\": {\"class_name\": \"Zeros\", \"config\": {}}, \"gamma_initializer\": {\"class_name\": \"Ones\", "
            "\"config\": {}}, \"moving_mean_initializer\": {\"class_name\": \"Zeros\", \"config\": {}}, "
            "\"moving_variance_initializer\": {\"class_name\": \"Ones\", \"config\": {}}, \"beta_regularizer\": null, "
            "\"gamma_regularizer\": null, \"beta_constraint\": null, \"gamma_constraint\": null}}, "
            "{\"class_name\": \"Dense\", \"config\": {\"name\": \"dense_1\", \"trainable\": true, \"dtype\": \"float32\", "
            "\"units\": 2, \"activation\": \"softmax\", \"use_bias\": true, \"kernel_initializer\": {\"class_name\": \"GlorotUniform\", "
            "\"config\": {\"seed\": null}}, \"bias_initializer\": {\"class_name\": \"Zeros\", \"config\": {}}, \"kernel_regularizer\": null, "
            "\"bias_regularizer\": null, \"activity_regularizer\": null, \"kernel_constraint\": null, \"bias_constraint\": null}}]}}");
  EXPECT_EQ(keras_model_json(*seq), keras_model_config(*seq).substr(0, keras_model_config(*seq).size() - 1) +
                                        ", \"keras_version\": \"2.12.0\", \"backend\": \"tensorflow\"}");
  // Functional: two inputs, a shared layer called twice, a merge; list-form inbound nodes.
  auto fn = test::model_from_yaml(
      "model:\n  name: pair\n  inputs:\n    - input: {name: a, shape: [3]}\n    - input: {name: b, shape: [3]}\n"
      "  layers:\n    - dense: {name: shared, units: 2}\n      inputs: a\n    - call: shared\n      inputs: b\n"
      "    - add: {}\n      inputs: [shared, 'shared[1]']\n  outputs: add\n",
      DType::F32);
  const std::string j = keras_model_config(*fn);
  EXPECT_EQ(j.rfind("{\"class_name\": \"Functional\", \"config\": {\"name\": \"pair\", \"trainable\": true, \"layers\": [", 0), 0u) << j;
  EXPECT_NE(j.find("{\"class_name\": \"InputLayer\", \"config\": {\"batch_input_shape\": [null, 3], \"dtype\": \"float32\", "
                   "\"sparse\": false, \"ragged\": false, \"name\": \"a\"}, \"name\": \"a\", \"inbound_nodes\": []}"),
            std::string::npos) << j;
  EXPECT_NE(j.find("\"name\": \"shared\", \"inbound_nodes\": [[[\"a\", 0, 0, {}]], [[\"b\", 0, 0, {}]]]}"), std::string::npos) << j;
  EXPECT_NE(j.find("\"name\": \"add\", \"inbound_nodes\": [[[\"shared\", 0, 0, {}], [\"shared\", 1, 0, {}]]]}"), std::string::npos) << j;
  EXPECT_NE(j.find("\"input_layers\": [[\"a\", 0, 0], [\"b\", 0, 0]], \"output_layers\": [[\"add\", 0, 0]]}}"), std::string::npos) << j;
}

TEST(TensorBoardKerasJson, JsonQuoteIsPythonsEnsureAscii) {
  EXPECT_EQ(json_quote("a\"b\\c\n\x01"), "\"a\\\"b\\\\c\\n\\u0001\"");
  EXPECT_EQ(json_quote("caf\xc3\xa9 \xf0\x9f\x98\x80"), "\"caf\\u00e9 \\ud83d\\ude00\"");
}

// ---- logs for tests/core/tb_check.py ---------------------------------------------------------------

// Writes, under $LOCKSTEP_TB_SAMPLE_DIR: fresh/ (update_freq 2, histogram_freq 1, both learning-rate
// tags), reference/ (update_freq 1, histogram_freq 1, uninterrupted), and three runs that must read
// exactly like reference/: resumed/ (a crash behind the epoch logs, then a resume: the purge-and-copy
// case), crashed/ (a crash mid-epoch, resumed from an earlier step) and rerun/ (two fresh runs in one
// log directory); and expect.txt: per run and tag, the steps and values a
// loader must end with ("run tag step:value step:value ..."), plus the sequential model's JSON.
TEST(TensorBoardSample, Write) {
  const char* out = std::getenv("LOCKSTEP_TB_SAMPLE_DIR");
  if (!out) GTEST_SKIP() << "LOCKSTEP_TB_SAMPLE_DIR not set (tests/core/tb_check.py sets it)";
  const std::string dir = out;
  auto model = small_model();
  {
    TensorBoardCallback cb(opts(2, 1), dir + "/fresh");
    FakeFit fit;
    fit.lr_log = fit.lr_schedule = true;
    fit.run(cb, *model, 0, 0);
  }
  {
    TensorBoardCallback cb(opts(1, 1), dir + "/reference");
    FakeFit{}.run(cb, *model, 0, 0);
  }
  {
    TensorBoardCallback cb(opts(1, 1), dir + "/resumed");
    FakeFit{}.run(cb, *model, 0, 0, 10, true);
  }
  {
    TensorBoardCallback cb(opts(1, 1), dir + "/resumed");
    FakeFit{}.run(cb, *model, 1, 7);
  }
  // crashed/: killed at step 14, resumed from step 12 (a purge at 13); rerun/: two fresh runs.
  {
    TensorBoardCallback cb(opts(1, 1), dir + "/crashed");
    FakeFit{}.run(cb, *model, 0, 0, 14);
  }
  {
    TensorBoardCallback cb(opts(1, 1), dir + "/crashed");
    FakeFit{}.run(cb, *model, 2, 12);
  }
  for (int i = 0; i < 2; ++i) {
    TensorBoardCallback cb(opts(1, 1), dir + "/rerun");
    FakeFit{}.run(cb, *model, 0, 0);
  }
  std::ofstream expect(dir + "/expect.txt");
  expect.precision(17);
  for (const char* name : {"fresh", "reference"})
    for (const char* run : {"train", "validation"}) {
      for (const auto& [tag, pts] : python_loader(dir + "/" + name + "/logs/" + run)) {
        if (tag == "keras") continue;
        expect << name << " " << run << " " << tag;
        for (const Point& p : pts) expect << " " << p.step << ":" << p.value;
        expect << "\n";
      }
    }
  write_file(dir + "/keras.json", keras_model_json(*model));
  SUCCEED();
}

}  // namespace
}  // namespace lockstep
