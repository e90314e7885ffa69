// TensorBoard event files written the way tf.keras 2.12-2.15's `TensorBoard` callback writes them
// (../shared/reference/tensorboard-events.md, "the reference" below; tf_keras 2.16-2.21 is unchanged).
//
//   callbacks:
//     tensorboard: {log_dir: logs, update_freq: epoch, histogram_freq: 0, write_graph: true, profile_batch: 0}
//
// Layout: <log_dir>/train and <log_dir>/validation, one new file per directory and writer
// (events.out.tfevents.<%010d seconds>.<host>.<pid>.<n>.v2, n a process-wide counter from 0), each a
// TFRecord stream (length, masked CRC-32C of the length, an Event message, masked CRC-32C of it).
// Tags, steps and order (reference §2.2, §3):
//   train       keras (step 0, the model's Keras JSON, plugin graph_keras_model) when write_graph;
//               batch_<m> at train step k (1-based, optimizer iterations after the step) when k % N == 0
//               (update_freq batch = 1, N); epoch_<m> at the 0-based epoch, then epoch_lr (logs["lr"])
//               and epoch_learning_rate (a per-step schedule's rate); histograms
//               <layer>/<weight>_0/histogram at epochs with epoch % histogram_freq == 0;
//   validation  evaluation_<m>_vs_iterations at the optimizer's iterations, then epoch_<m> (val_ stripped).
// Scalars are TF2 summaries (DT_FLOAT rank-0 tensors, plugin "scalars"), histograms DT_DOUBLE [30, 3]
// tensors (plugin "histograms"), byte for byte as TensorFlow serialises them (tested against
// ../shared/datasets/tfevents/).
//
// Writing happens on a background thread (TensorBoardCallback below); the protobuf messages are
// hand-encoded (about ten fields of eight messages: no libprotobuf, and byte-exact control of what
// proto3 omits), CRC-32C comes from Boost.CRC.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "core/config.h"
#include "core/model.h"

namespace lockstep {

namespace tb {

// ---- framing ---------------------------------------------------------------------------------------

// CRC-32C (Castagnoli, reflected, init and final XOR 0xFFFFFFFF) and TensorFlow's mask of it:
// ((c >> 15) | (c << 17)) + 0xa282ead8.
uint32_t crc32c(std::string_view data);
uint32_t mask_crc(uint32_t crc);
inline uint32_t masked_crc32c(std::string_view data) { return mask_crc(crc32c(data)); }
// One TFRecord: uint64 length, masked CRC of those 8 bytes, data, masked CRC of data (little-endian).
std::string frame_record(std::string_view data);

// ---- protobuf wire format (proto3: callers leave out zero and empty fields) ------------------------

class ProtoWriter {
 public:
  ProtoWriter& varint(int field, uint64_t value);
  ProtoWriter& fixed64(int field, double value);       // double
  ProtoWriter& fixed32(int field, float value);        // float
  ProtoWriter& bytes(int field, std::string_view value);  // string, bytes or a nested message
  const std::string& str() const { return out_; }

 private:
  void key(int field, int wire_type);
  void raw_varint(uint64_t v);
  std::string out_;
};

// TensorFlow's DataType numbers and SessionLog statuses.
enum DataType : int { DT_FLOAT = 1, DT_DOUBLE = 2, DT_INT32 = 3, DT_STRING = 7, DT_INT64 = 9 };
enum class SessionStatus : int { Unspecified = 0, Start = 1, Stop = 2, Checkpoint = 3 };

// One histogram bucket: [left, right) (the last one closed) and its count.
struct HistogramBucket {
  double left = 0, right = 0, count = 0;
  bool operator==(const HistogramBucket&) const = default;
};
inline constexpr int kHistogramBuckets = 30;  // TensorBoard's DEFAULT_BUCKET_COUNT

// TensorBoard >= 2.8's histogram (plugins/histogram/summary_v2.py, reference §2.4), in float64: k
// buckets of width (max - min)/k, index floor((x - min)/width) clamped to k-1, edges min + i·width
// with the last edge max; all values equal v: k rows [v, v, 0] but the last [v, v, n]; no data: k rows
// of zeros. Non-finite data: std::invalid_argument (TensorFlow would write NaN edges).
std::vector<HistogramBucket> histogram_buckets(const float* data, size_t n, int k = kHistogramBuckets);
std::vector<HistogramBucket> histogram_buckets(const double* data, size_t n, int k = kHistogramBuckets);

// Serialized Event messages, field for field as TF 2.x's SummaryFileWriter writes them (reference §1.4):
// wall_time always, step only when non-zero, one Summary.Value per event, metadata on every value.
inline constexpr const char* kTensorFlowWriter = "tensorflow.core.util.events_writer";
// The first record: file_version "brain.Event:2" and source_metadata.writer.
std::string file_version_event(double wall_time, const std::string& writer = kTensorFlowWriter);
// tf.summary.scalar: DT_FLOAT, an empty (present) tensor_shape, 4 bytes of tensor_content, plugin "scalars".
std::string scalar_event(double wall_time, int64_t step, const std::string& tag, float value);
// tf.summary.histogram: DT_DOUBLE [k, 3] in tensor_content, plugin "histograms".
std::string histogram_event(double wall_time, int64_t step, const std::string& tag,
                            const std::vector<HistogramBucket>& buckets);
// The `keras` tag (step 0): DT_STRING scalar in string_val, plugin "graph_keras_model", content "1".
std::string keras_model_event(double wall_time, const std::string& model_json);
// Event{step, session_log{status}} (a resumed run's START: TensorBoard's loader purges the run's
// events at steps >= step).
std::string session_log_event(double wall_time, int64_t step, SessionStatus status);

// ---- reading -------------------------------------------------------------------------------------

struct TensorValue {
  int dtype = 0;
  bool has_shape = false;
  std::vector<int64_t> shape;
  std::string content;  // tensor_content: raw little-endian
  std::vector<float> float_val;
  std::vector<double> double_val;
  std::vector<std::string> string_val;
};

// TF1 HistogramProto.
struct HistoValue {
  double min = 0, max = 0, num = 0, sum = 0, sum_squares = 0;
  std::vector<double> bucket_limit, bucket;
};

struct SummaryValue {
  enum class Kind { Empty, Simple, Tensor, Histo, Other };
  std::string tag;
  bool has_metadata = false;
  std::string plugin_name, plugin_content;
  int data_class = 0;
  Kind kind = Kind::Empty;
  float simple_value = 0;
  TensorValue tensor;
  HistoValue histo;
  // The value of a scalar summary: simple_value, or a rank-0 (or shapeless) DT_FLOAT/DT_DOUBLE tensor
  // from tensor_content or float_val/double_val. nullopt for anything else.
  std::optional<double> scalar() const;
  // Histogram rows: a [k, 3] DT_DOUBLE/DT_FLOAT tensor, or a TF1 HistogramProto converted as
  // TensorBoard's data_compat does (empty outer buckets dropped, min/max as the outer edges).
  std::optional<std::vector<HistogramBucket>> histogram() const;
  // A DT_STRING scalar's string (the keras tag's JSON).
  std::optional<std::string> string() const;
};

struct Event {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;   // the version record's "brain.Event:2"; empty otherwise
  std::string source_writer;  // source_metadata.writer
  bool has_graph_def = false;
  size_t graph_def_bytes = 0;
  int session_status = -1;    // SessionLog status; -1: no session_log
  std::vector<SummaryValue> values;
  std::string data;           // the serialized Event (the record's payload)
};

struct EventFile {
  std::string path;
  std::vector<Event> events;
  bool truncated = false;  // a short last record (maybe still being written): not an error
  std::string error;       // non-strict reading: the corruption that stopped it ("" if none)
};

// Decode one serialized Event (unknown fields skipped). DataError on malformed wire data.
Event parse_event(std::string_view data);
// Read an event file, checking both CRCs of every record and rejecting a NaN wall_time. strict: a
// corrupt record throws DataError naming the file, the record and its offset; otherwise reading stops
// there with `error` set (TensorBoard's Python loader stops silently at the first bad record).
EventFile read_event_file(const std::string& path, bool strict = true);
// The event files of one run directory (basenames containing "tfevents"), in the order TensorBoard
// reads them (sorted by name). Empty when the directory does not exist.
std::vector<std::string> event_files(const std::string& dir);

// ---- writing one file ------------------------------------------------------------------------------

// events.out.tfevents.<%010d seconds>.<host>.<pid>.<counter>.v2
std::string event_file_name(int64_t seconds, const std::string& host, int64_t pid, int64_t counter);
// The next value of the process-wide file counter (TensorFlow's SummaryFileWriter counter, from 0).
int64_t next_file_counter();
// gethostname(), "localhost" when it fails.
std::string host_name();
// Seconds since the epoch as a double (TensorFlow: NowMicros() / 1e6).
double now_seconds();

// One new event file in `dir` (created with its parents), never an existing one: the name's timestamp
// is now, or one more than the newest event file already in `dir` if that one is not older (so the
// new file sorts last, where TensorBoard reads it last). The first record (file_version_event with the
// same integer seconds as the name) is written and flushed by the constructor. Not thread-safe.
// Errors (std::runtime_error) name the file and the system's message.
class EventFileWriter {
 public:
  explicit EventFileWriter(const std::string& dir);
  ~EventFileWriter();
  EventFileWriter(const EventFileWriter&) = delete;
  EventFileWriter& operator=(const EventFileWriter&) = delete;
  const std::string& path() const { return path_; }
  int64_t seconds() const { return seconds_; }
  void write(std::string_view event_data);  // buffered
  void flush();
  void close();

 private:
  std::string path_;
  int64_t seconds_ = 0;
  std::FILE* file_ = nullptr;
};

}  // namespace tb

// ---- the callback --------------------------------------------------------------------------------

// callbacks.tensorboard, with Keras's names and defaults. Only what lockstep writes is configurable;
// Keras's other arguments are accepted at their defaults only (profile_batch 0, write_images false,
// write_steps_per_second false, embeddings_freq 0) and refused otherwise with a ConfigError.
struct TensorBoardOptions {
  std::string log_dir = "logs";  // relative: to the base directory given to the callback (the run directory)
  int64_t update_freq = 0;       // 0: "epoch" (no batch_* tags); N >= 1: batch_* every N train steps ("batch": 1)
  int64_t histogram_freq = 0;    // weight histograms every N epochs (0: none)
  bool write_graph = true;       // the `keras` tag (the model's Keras JSON: the Graphs dashboard)
  std::string where = "callbacks.tensorboard.log_dir";  // for messages: FILE:LINE:COL: key
  // The writer thread's bounds (see TensorBoardCallback).
  size_t max_pending_batch_events = 4096;
  size_t max_pending_histogram_bytes = size_t(256) << 20;

  // Parse `callbacks.tensorboard` (every rank can, with the same errors); touches no file. An empty
  // map (`tensorboard: {}`) gives Keras's defaults.
  static TensorBoardOptions from_config(const ConfigNode& node);
};

// Rank 0 constructs it (the other ranks hold none: one writer per run, or TensorBoard shows N copies).
// Every method returns at once: events go to a background thread through a queue, and the thread
// encodes, frames and writes them (and computes histograms from a snapshot of the weights).
//   * The queue never blocks the caller. batch_* events are dropped (counted, one warning on stderr)
//     while max_pending_batch_events are waiting, i.e. when the disk is far behind: they are a
//     sampled view anyway, and a training step must not wait for a file system. Epoch-level events
//     (epoch_*, evaluation_*, keras, the resume marker) are never dropped: a few per epoch. A
//     histogram snapshot is skipped (warning) while more than max_pending_histogram_bytes of weight
//     snapshots wait.
//   * A write error (disk full) is reported once on stderr and stops this callback's writing; training
//     goes on (error() returns it).
//   * Files are flushed whenever the queue runs empty and at on_train_end, which waits for the thread.
// Resume (and a fresh start in a log directory with old files): on_train_begin's position says which
// points a run now rewrites: steps >= initial_step + 1 for batch_* and evaluation_*, epochs >=
// initial_epoch for epoch_* and histograms (and on a fresh start, everything). The thread reads the old
// files of each run directory as TensorBoard's Python loader does (SessionLog START purges included);
// if some point of a tag would be rewritten, the new file starts with SessionLog START at the
// smallest such step s, which makes that loader drop every point of the run at steps >= s, followed
// by copies of the older points at steps >= s that stay valid (e.g. batch_* points of earlier steps
// when s is an epoch number), in their original order. That loader takes a run's first START for the
// start of a session and purges only at later ones (plugin_event_accumulator
// _CheckForRestartAndMaybePurge), so a run without a START so far gets two. RustBoard ignores
// SessionLog but drops every stored point of a tag at or after each newly read step, which the copies
// and the new points turn into the same result. Without anything to rewrite (a clean preemption) the
// new file has no SessionLog. A resumed run writes the `keras` tag only if the run has none.
class TensorBoardCallback {
 public:
  // Keras's logs in Keras's key order (loss, the metrics, ...): std::map would sort them.
  using Logs = std::vector<std::pair<std::string, double>>;

  // Creates <base_dir>/<log_dir> (an absolute log_dir as it is) and checks it can hold new files:
  // ConfigError "FILE:LINE:COL: callbacks.tensorboard.log_dir: ..." otherwise (exit status 2). Starts
  // the writer thread; nothing is written before on_train_begin.
  TensorBoardCallback(TensorBoardOptions options, const std::string& base_dir);
  static std::unique_ptr<TensorBoardCallback> from_config(const ConfigNode& node, const std::string& base_dir);
  // Finishes like on_train_end() if that was not called.
  ~TensorBoardCallback();
  TensorBoardCallback(const TensorBoardCallback&) = delete;
  TensorBoardCallback& operator=(const TensorBoardCallback&) = delete;

  const TensorBoardOptions& options() const { return options_; }
  const std::string& log_dir() const { return log_dir_; }  // resolved

  // Before the first step: opens <log_dir>/train and writes the `keras` tag (write_graph).
  // initial_epoch: the 0-based epoch about to run (or continue); initial_step: the optimizer's
  // iterations so far (0 and 0 for a fresh run).
  void on_train_begin(const Model& model, int64_t initial_epoch = 0, int64_t initial_step = 0);
  // Whether on_train_batch_end(step, ...) writes anything (update_freq N, step % N == 0): lets the
  // caller skip building the logs.
  bool wants_batch(int64_t step) const { return options_.update_freq > 0 && step > 0 && step % options_.update_freq == 0; }
  // After each train step. step: 1-based, the optimizer's iterations after the step (Keras's
  // _train_counter on a fresh run); logs: the epoch's running means so far (the progress bar's loss and
  // metrics). Writes batch_<m> at `step` when wants_batch(step).
  void on_train_batch_end(int64_t step, const Logs& logs);
  // Around each validation pass: opens <log_dir>/validation on the first call.
  void on_test_begin();
  // iterations: the optimizer's iterations (global steps done); logs: loss and metrics without the
  // val_ prefix. Writes evaluation_<m>_vs_iterations at `iterations`.
  void on_test_end(int64_t iterations, const Logs& logs);
  // logs: the epoch's logs in Keras's order (loss, metrics, val_loss, val_metrics, then "lr" when
  // ReduceLROnPlateau or a per-epoch schedule sets it); lockstep-only keys such as "seconds" are the
  // caller's to leave out. Writes epoch_<m> (train: keys without val_; validation: val_ keys, prefix
  // stripped) at `epoch`, then epoch_learning_rate = learning_rate when given (a per-step schedule's
  // rate at the optimizer's iterations), then the weight histograms when epoch % histogram_freq == 0
  // (copied now; a GPU model's weights come to the host here).
  void on_epoch_end(int64_t epoch, const Logs& logs, const Model& model,
                    std::optional<double> learning_rate = std::nullopt);
  // Blocks until everything handed over so far is written and flushed. The trainer calls it before each
  // checkpoint: a crash after the checkpoint then loses no point that the resumed run would not rewrite.
  void wait_written();
  // Writes what is queued, closes the files and stops the thread (waits for it).
  void on_train_end();

  // Diagnostics (tests, the trainer's closing message).
  int64_t dropped_batch_events() const { return dropped_batch_.load(); }
  int64_t skipped_histograms() const { return skipped_histograms_.load(); }
  std::string error() const;
  // Paths of the files created so far (after on_train_end: all of them).
  std::vector<std::string> files() const;

 private:
  enum Run { kTrain = 0, kValidation = 1 };
  struct WeightSnapshot {
    std::string tag;
    std::vector<float> f32;
    std::vector<double> f64;
  };
  struct Job {
    enum class Kind { Open, Scalars, Histograms, Keras, Close };
    Kind kind = Kind::Scalars;
    int run = kTrain;
    double wall_time = 0;
    int64_t step = 0;
    bool droppable = false;
    std::vector<std::pair<std::string, double>> scalars;  // tag, value
    std::vector<WeightSnapshot> weights;
    std::string text;
    size_t bytes = 0;  // histogram snapshot bytes
  };
  struct RunWriter {
    std::unique_ptr<tb::EventFileWriter> file;
    bool has_keras = false;  // a valid `keras` point survives from an earlier file
    bool dirty = false;
  };

  void push(Job job);
  void worker();
  void execute(Job& job);
  void open_run(int run);
  // The step from which the points of `tag` are rewritten by this run.
  int64_t rewrite_from(const std::string& tag) const;
  void fail(const std::string& message);

  TensorBoardOptions options_;
  std::string log_dir_;
  int64_t initial_epoch_ = 0, initial_step_ = 0;
  bool began_ = false, ended_ = false, validation_opened_ = false;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  uint64_t queued_ = 0, written_ = 0;  // jobs handed over, and jobs written and flushed (wait_written)
  std::condition_variable written_cv_;
  size_t pending_batch_ = 0, pending_histogram_bytes_ = 0;
  bool closing_ = false;
  std::string error_;
  std::vector<std::string> files_;
  std::atomic<int64_t> dropped_batch_{0}, skipped_histograms_{0};
  std::atomic<bool> failed_{false};
  bool warned_drop_ = false;

  RunWriter runs_[2];  // the writer thread's
  std::thread thread_;
};

}  // namespace lockstep
