#include "core/trainer.h"
#include "core/keras_io.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>

#include <array>
#include <cstring>

#include "comm/consistency.h"
#include "core/checkpoint.h"
#include "core/ops.h"
#include "data/loader.h"
#ifdef LOCKSTEP_HAVE_CUDA
#include "core/kernels/cuda.h"
#endif

namespace lockstep {

namespace fs = std::filesystem;

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ---- signals: finish the step, checkpoint, exit kExitPreempted ------------------------------------
volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

std::string signal_name(int sig) {
  switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
    case SIGUSR2: return "SIGUSR2";
    default: return str_cat("signal ", sig);
  }
}

std::string fmt_value(double v) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(4) << v;
  return os.str();
}

// Keras's progress line: "1719/1719 [==============================] - 4s 2ms/step - loss: 0.5 - ...".
std::string progress_line(int64_t done, int64_t total, double elapsed, const std::map<std::string, double>& v,
                          const std::vector<std::string>& order, bool bar) {
  std::ostringstream os;
  const int width = 30;
  const int digits = int(std::to_string(total).size());
  os << std::setw(digits) << done << "/" << total;
  if (bar) {
    os << " [";
    const int filled = total > 0 ? int(double(width) * double(done) / double(total)) : width;
    for (int i = 0; i < width; ++i) {
      if (i < filled - 1 || (i == filled - 1 && done == total)) os << '=';
      else if (i == filled - 1) os << '>';
      else os << '.';
    }
    os << "]";
  }
  const double per_step = elapsed / double(std::max<int64_t>(done, 1));
  os << " - " << int(std::round(elapsed)) << "s ";
  if (per_step >= 1.0) os << int(std::round(per_step)) << "s/step";
  else if (per_step >= 1e-3) os << int(std::round(per_step * 1e3)) << "ms/step";
  else os << int(std::round(per_step * 1e6)) << "us/step";
  for (const auto& k : order) {
    auto it = v.find(k);
    if (it != v.end()) os << " - " << k << ": " << fmt_value(it->second);
  }
  return os.str();
}

std::string csv_cell(double v) {
  std::ostringstream os;
  os << std::setprecision(17) << v;
  return os.str();
}

// ---- test-only fault injection (tests/trainer/guarantees_test.cpp; never set these in production) ----
//   LOCKSTEP_TEST_SIGNAL=RANK:STEP:SIG  rank RANK raises signal SIG (e.g. 10 = SIGUSR1, 9 = SIGKILL) just
//                                       before global step STEP, through the real handlers.
//   LOCKSTEP_TEST_DESYNC=RANK:STEP      after global step STEP's update, rank RANK adds 1e-3 to its first
//                                       weight: the replica check must name it.
struct TestHook {
  int rank = -1;
  int64_t step = -1;
  int sig = 0;
};
TestHook read_test_hook(const char* name) {
  TestHook h;
  const char* v = std::getenv(name);
  long long step = -1;
  if (v && std::sscanf(v, "%d:%lld:%d", &h.rank, &step, &h.sig) >= 2) h.step = step;
  return h;
}

int parse_signal(const ConfigNode& node) {
  const std::string s = node.get_choice("signal", "USR1", {"USR1", "USR2", "SIGUSR1", "SIGUSR2", "none"});
  if (s == "none") return 0;
  return s.find("USR2") != std::string::npos ? SIGUSR2 : SIGUSR1;
}

}  // namespace

void install_stop_handlers(int warning_signal) {
  // A signal that arrives at any time from here on (data loading, start-up, a checkpoint, after the
  // run) only sets the flag: the training loop finishes its step, checkpoints and returns. The flag
  // is never cleared, so a signal during start-up is not lost; a second signal does nothing more.
  std::vector<int> sigs = {SIGTERM, SIGINT};
  if (warning_signal) sigs.push_back(warning_signal);
  for (int sig : sigs) {
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(sig, &sa, nullptr);
  }
}

int warning_signal_of(const ConfigNode& run) { return parse_signal(run["checkpoint"]); }

namespace {
// checkpoints/ckpt-<global step, 10 digits>.h5 of a run directory, oldest first (the names sort by step).
std::vector<std::string> periodic_checkpoints(const std::string& run_dir) {
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(run_dir) / "checkpoints", ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind("ckpt-", 0) == 0 && e.path().extension() == ".h5") files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}
}  // namespace

std::string default_run_dir(const std::string& name) {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", std::localtime(&t));
  return "runs/" + name + "-" + buf;
}

// ---- batches on the model's device -----------------------------------------------------------------

// Copies a batch's tensors to the model's device: host data -> a page-locked staging buffer ->
// cudaMemcpyAsync on the compute stream (the kernels of the step are queued behind it). The staging
// buffers rotate, two batches' worth (x, a second input of pairs, y), and one is refilled only once its previous copy has
// completed (its event), so the host never overwrites data still being transferred. On the CPU the
// batch passes through untouched.
class BatchStager {
 public:
  explicit BatchStager(Device device) : device_(device) {}
  ~BatchStager() {
#ifdef LOCKSTEP_HAVE_CUDA
    for (Slot& s : slots_) {
      if (s.event) {
        try {
          cuda::event_wait_host(s.event);
        } catch (const std::exception&) {
        }
        cuda::event_destroy(s.event);
      }
      cuda::host_free_pinned(s.host);
    }
#endif
  }
  BatchStager(const BatchStager&) = delete;
  BatchStager& operator=(const BatchStager&) = delete;

  data::Batch stage(const data::Batch& b) {
    if (device_ == Device::CPU) return b;
    data::Batch d = b;
    d.x = put(b.x);
    for (Tensor& x : d.extra_x) x = put(x);
    d.y = put(b.y);
    return d;
  }

 private:
  struct Slot {
    void* host = nullptr;
    int64_t bytes = 0;
    void* event = nullptr;
  };
  Tensor put(const Tensor& t) {
    if (!t.defined() || t.device() == device_) return t;
#ifdef LOCKSTEP_HAVE_CUDA
    Slot& s = slots_[next_++ % slots_.size()];
    if (s.event) {
      cuda::event_wait_host(s.event);
      cuda::event_destroy(s.event);
      s.event = nullptr;
    }
    const int64_t bytes = t.numel() * dtype_size(t.dtype());
    if (s.bytes < bytes) {
      cuda::host_free_pinned(s.host);
      s.host = nullptr;
      s.bytes = 0;
      s.host = cuda::host_alloc_pinned(bytes);
      s.bytes = bytes;
    }
    if (bytes > 0) std::memcpy(s.host, t.raw(), size_t(bytes));
    Tensor d(t.shape(), device_, t.dtype());
    s.event = cuda::copy_to_device_async(d.raw(), s.host, bytes);
    return d;
#else
    return t.to(device_);
#endif
  }

  Device device_;
  std::array<Slot, 6> slots_{};  // two batches of up to three tensors (x, a second input, y)
  size_t next_ = 0;
};

// ---- construction --------------------------------------------------------------------------------

Trainer::Trainer(const ConfigNode& run, const std::string& run_file, comm::Communicator& comm)
    : run_(run), run_file_(run_file), comm_(comm) {
  run_.expect_map();
  run_.allow_keys({"name", "seed", "device", "data", "model", "loss", "loss_weights", "metrics", "optimizer", "schedule",
                   "callbacks", "train", "checkpoint", "distributed", "transfer"});
  name_ = run_.get("name", fs::path(run_file).stem().string());
  seed_ = uint64_t(run_.get_at_least("seed", 42, 0));
  const std::string device = run_.get_choice("device", "auto", {"auto", "cpu", "cuda"});
  if (device == "cuda" && !cuda_available())
    run_["device"].fail("device: cuda was asked for, but this lockstep has no usable CUDA backend or no GPU");
  // Several ranks on GPUs need a communicator for device buffers (gradients, synchronized BN, the
  // initial broadcast); the MPI one takes CPU buffers only, so `auto` then stays on the CPU.
  const bool comm_takes_gpu = comm_.size() == 1 || comm_.supports(Device::CUDA);
  if (device == "cuda" && !comm_takes_gpu)
    run_["device"].fail(str_cat("device: cuda with ", comm_.size(), " ranks needs a communicator for GPU buffers (NCCL); the ",
                                comm_.name(), " communicator takes CPU buffers only"));
  device_ = device == "cuda" || (device == "auto" && cuda_available() && comm_takes_gpu) ? Device::CUDA : Device::CPU;
#ifdef LOCKSTEP_HAVE_CUDA
  // Each rank takes GPU local_rank mod the visible devices (CUDA_VISIBLE_DEVICES is applied by the
  // runtime: indices count the visible devices only). Before any CUDA allocation.
  if (device_ == Device::CUDA) cuda::set_device(comm_.local_rank() % std::max(cuda::device_count(), 1));
#endif
  stager_ = std::make_unique<BatchStager>(device_);
  ConfigNode train = run_["train"];
  if (train.defined()) train.allow_keys({"epochs", "batch_size", "shuffle", "verbose"});
  epochs_ = train.get_at_least("epochs", 1, 1);
  batch_size_ = train.get_at_least("batch_size", 32, 1);
  shuffle_ = train.get("shuffle", true);
  // verbose (Keras's): 1 = progress bar, 2 = one line per epoch, 0 = silent. Default: the bar for a
  // single process on a terminal, else one line per epoch (Open MPI gives ranks a pseudo-terminal even
  // when the job's output goes to a file).
  verbose_ = train.has("verbose") ? int(train.get_in("verbose", 1, 0, 2)) : (comm_.size() == 1 ? 1 : 2);
  if (batch_size_ % comm_.size() != 0)
    train["batch_size"].fail(str_cat("the global batch (", batch_size_, ") must be divisible by the number of ranks (",
                                     comm_.size(), "): each rank takes batch_size/ranks samples of it"));
  ConfigNode dist = run_["distributed"];
  if (dist.defined())
    dist.allow_keys({"bucket_mb", "first_bucket_mb", "timeout_s", "check_every_steps", "compression"});
  // What crosses nodes in the hierarchical all-reduce (Horovod's compression); off by default.
  reduction_options_.compression =
      comm::parse_compression(dist.get_choice("compression", "none", {"none", "bf16", "fp16"}));
  bucket_options_.bucket_cap_bytes = int64_t(dist.get_in("bucket_mb", 4.0, 0.0, 1024.0, true) * (1 << 20));
  bucket_options_.first_bucket_bytes = int64_t(dist.get_in("first_bucket_mb", 1.0, 0.0, 1024.0, true) * (1 << 20));
  check_every_steps_ = dist.get_at_least("check_every_steps", 100, 0);
  // The watchdog: a collective of the training loop not complete within timeout_s (default 30 s)
  // aborts the job naming it. Start-up (data loading, the run-file comparison, a resume) may take
  // longer on some ranks than on others, so until the loop starts the bound is max(timeout_s, 600 s).
  step_timeout_ = std::chrono::milliseconds(int64_t(1000 * dist.get_in("timeout_s", 30.0, 0.1, 1e7)));
  comm_.set_timeout(std::max(step_timeout_, std::chrono::milliseconds(600'000)));
  ConfigNode ck = run_["checkpoint"];
  if (ck.defined()) ck.allow_keys({"every_epochs", "every_steps", "keep", "save_best", "monitor", "signal"});
  ckpt_every_epochs_ = ck.get_at_least("every_epochs", 1, 0);
  ckpt_every_steps_ = ck.get_at_least("every_steps", 0, 0);
  ckpt_keep_ = ck.get_at_least("keep", 3, 1);
  ckpt_save_best_ = ck.get("save_best", false);
  warning_signal_ = parse_signal(ck);

  // Every rank must run the same resolved run file and seed.
  comm::check_same_on_all_ranks(comm_, "the resolved run file (--set overrides and seed included)", resolved_yaml());

  const fs::path dir = fs::path(run_file).parent_path();
  dataset_ = data::open_dataset(data::parse_data_config(run_["data"], dir.string()));
  // model: {from_keras: FILE}: the run file's model becomes the Keras file's, translated (so the
  // checkpoints' run_config is self-contained); its weights replace the initial ones below.
  if (YAML::Node translated; resolve_from_keras(run_["model"], &translated, &keras_weights_)) {
    YAML::Node root = run_.yaml();
    root["model"] = translated;
  }
  model_ = Model::from_config(run_["model"], device_);
  {
    ConfigNode m = run_["model"];
    ConfigNode where = m.has("inputs") ? m["inputs"] : m.has("input_shape") ? m["input_shape"] : m["layers"][0];
    const int given = dataset_.train->num_inputs();
    if (model_->num_inputs() != given)
      where.fail(str_cat("the model has ", model_->num_inputs(), " input(s) but the data gives ", given,
                         given == 2 ? " (image pairs: data.pairs)" : "",
                         model_->num_inputs() == 2 ? " (a model of two inputs trains on pairs: set data.pairs)" : ""));
    // Images [H, W] feed an input declared [H, W, 1] (the book's X[..., np.newaxis]); Model::forward reshapes.
    Shape with_channel = dataset_.train->sample_shape();
    with_channel.push_back(1);
    for (int i = 0; i < model_->num_inputs(); ++i)
      if (model_->input_shapes()[size_t(i)] != dataset_.train->sample_shape() &&
          model_->input_shapes()[size_t(i)] != with_channel)
        where.fail(str_cat("the data's samples are ", shape_str(dataset_.train->sample_shape()), " but input ",
                           model_->input_name(i), "'s shape is ", shape_str(model_->input_shapes()[size_t(i)])));
  }
  model_->init(seed_);
  if (!keras_weights_.empty()) load_keras_weights(keras_weights_, *model_);
  parse_heads();
  optimizer_ = Optimizer::from_config(run_["optimizer"]);
  optimizer_->bind(*model_);

  // Schedules and callbacks.
  ConfigNode sch = run_["schedule"];
  schedule_ = LearningRateSchedule::from_config(sch, optimizer_->learning_rate());
  ConfigNode cb = run_["callbacks"];
  if (cb.defined()) cb.allow_keys({"early_stopping", "reduce_lr_on_plateau", "tensorboard"});
  if (cb.has("tensorboard")) tensorboard_ = TensorBoardOptions::from_config(cb["tensorboard"]);
  if (cb.has("early_stopping"))
    early_stopping_ = std::make_unique<EarlyStopping>(EarlyStopping::from_config(cb["early_stopping"]));
  if (cb.has("reduce_lr_on_plateau"))
    plateau_ = std::make_unique<ReduceLROnPlateau>(ReduceLROnPlateau::from_config(cb["reduce_lr_on_plateau"]));
  if (sch.defined() && sch["name"].as_string() == "reduce_lr_on_plateau") {
    if (plateau_) sch.fail("performance scheduling is given twice (schedule and callbacks.reduce_lr_on_plateau)");
    plateau_ = std::make_unique<ReduceLROnPlateau>(ReduceLROnPlateau::from_config(sch, true));
  }
  if (plateau_ && schedule_)
    cb["reduce_lr_on_plateau"].fail("ReduceLROnPlateau sets the rate itself; it cannot be combined with a `schedule:`");
  const std::vector<std::string> keys = logged_keys(dataset_.validation != nullptr);
  auto check_monitor = [&](const ConfigNode& node, const std::string& monitor) {
    if (std::find(keys.begin(), keys.end(), monitor) == keys.end())
      node.fail(str_cat("monitor '", monitor, "' is not logged by this run; expected one of ", join(keys),
                        dataset_.validation ? "" : " (val_* needs `data.validation`)"));
  };
  if (early_stopping_) check_monitor(cb["early_stopping"]["monitor"], early_stopping_->monitor());
  if (plateau_) check_monitor(cb.has("reduce_lr_on_plateau") ? cb["reduce_lr_on_plateau"]["monitor"] : sch["monitor"],
                              plateau_->monitor());
  ckpt_monitor_ = ck.get("monitor", early_stopping_ ? early_stopping_->monitor()
                                                     : (dataset_.validation ? "val_loss" : "loss"));
  if (ckpt_save_best_) check_monitor(ck["monitor"], ckpt_monitor_);
  const bool monitor_max = ckpt_monitor_.find("acc") != std::string::npos;
  ckpt_best_ = monitor_max ? -INFINITY : INFINITY;

  // Transfer learning / warm start: weights of some layers from a saved model, never modifying it.
  ConfigNode tr = run_["transfer"];
  if (tr.defined()) {
    tr.allow_keys({"from", "layers", "freeze_epochs", "unfreeze_learning_rate"});
    ConfigNode from = tr.require("from");
    fs::path src = from.as_string();
    if (src.is_relative()) src = dir / src;
    transfer_source_ = src.string();
    ConfigNode ls = tr["layers"];
    const int n = int(model_->layers().size());
    if (!ls.defined() || (ls.is_scalar() && ls.as_string() == "all")) {
      for (int i = 0; i < n; ++i) transferred_.push_back(i);
    } else {
      ls.expect_seq();
      for (size_t k = 0; k < ls.size(); ++k) {
        ConfigNode e = ls[k];
        int idx = -1;
        try {
          idx = int(e.as_int());
          if (idx < 0) idx += n;
          if (idx < 0 || idx >= n) e.fail(str_cat("layer index out of range: the model has ", n, " layers"));
        } catch (const ConfigError&) {
          if (e.yaml().IsScalar() && !std::all_of(e.as_string().begin(), e.as_string().end(),
                                                 [](char c) { return std::isdigit(static_cast<unsigned char>(c)) || c == '-'; })) {
            idx = model_->find_layer(e.as_string());
            if (idx < 0) {
              std::vector<std::string> names;
              for (auto& l : model_->layers()) names.push_back(l->name());
              std::string hint = nearest_name(e.as_string(), names);
              e.fail(str_cat("no layer named '", e.as_string(), "' in this model; its layers are ", join(names),
                             hint.empty() ? "" : str_cat(" (did you mean '", hint, "'?)")));
            }
          } else {
            throw;
          }
        }
        transferred_.push_back(idx);
      }
    }
    try {
      load_checkpoint(src.string(), *model_, &transferred_);
    } catch (const CheckpointError& e) {
      from.fail(str_cat("cannot take the layers from it: ", e.what()));
    }
    freeze_epochs_ = tr.get_at_least("freeze_epochs", 0, 0);
    unfreeze_lr_ = tr.get_in("unfreeze_learning_rate", optimizer_->learning_rate(), 0.0, INFINITY, true);
    if (freeze_epochs_ > 0) set_frozen(true);
  }
  // Replicas start identical: rank 0's weights everywhere (they already are, being a pure function of
  // the seed and the files; the broadcast makes it true whatever happened).
  comm_.broadcast(model_->weights_arena(), 0);
  update_ = std::make_unique<UpdateStep>(*model_, comm_, bucket_options_, reduction_options_);
}

Trainer::~Trainer() = default;

// Keras's compile(): `loss` is one loss for every output, a list in output order, or a mapping from
// output names; `loss_weights` a list or mapping (1 each by default); `metrics` a list for every
// output or a mapping from output names to lists.
void Trainer::parse_heads() {
  const int n = model_->num_outputs();
  std::vector<std::string> names;
  for (int j = 0; j < n; ++j) names.push_back(model_->output_name(j));
  // Whether a node is a per-output mapping (every key an output name) or a list of one entry per output.
  auto per_output = [&](const ConfigNode& node, const char* what) -> std::vector<ConfigNode> {
    std::vector<ConfigNode> out(static_cast<size_t>(n));
    if (node.is_seq() && std::string(what) != "metrics") {
      if (int(node.size()) != n)
        node.fail(str_cat("expected one ", what, " per output (", n, ": ", join(names), "), got ", node.size()));
      for (int j = 0; j < n; ++j) out[size_t(j)] = node[size_t(j)];
      return out;
    }
    bool by_name = node.is_map() && node.size() > 0;
    for (const std::string& k : by_name ? node.keys() : std::vector<std::string>{})
      by_name = by_name && std::find(names.begin(), names.end(), k) != names.end();
    if (!by_name) {
      for (auto& o : out) o = node;
      return out;
    }
    node.allow_keys(names);
    for (int j = 0; j < n; ++j) {
      if (!node.has(names[size_t(j)]) && std::string(what) == "loss")
        node.fail(str_cat("no loss for output '", names[size_t(j)], "'; the outputs are ", join(names)));
      out[size_t(j)] = node[names[size_t(j)]];
    }
    return out;
  };
  std::vector<ConfigNode> losses = per_output(run_["loss"], "loss");
  ConfigNode lw = run_["loss_weights"];
  std::vector<ConfigNode> weights = lw.defined() ? per_output(lw, "loss weight") : std::vector<ConfigNode>(static_cast<size_t>(n));
  if (lw.defined() && lw.is_scalar()) lw.fail(str_cat("expected a list (one weight per output) or a mapping {output: weight}"));
  ConfigNode mn = run_["metrics"];
  std::vector<ConfigNode> metrics = mn.defined() ? per_output(mn, "metrics") : std::vector<ConfigNode>(static_cast<size_t>(n));
  heads_.clear();
  heads_.resize(size_t(n));
  for (int j = 0; j < n; ++j) {
    Head& h = heads_[size_t(j)];
    h.name = names[size_t(j)];
    LossSpec spec = parse_loss(losses[size_t(j)]);
    h.loss = std::make_unique<LossFunction>(spec, fusable_output(spec, model_->output_activation(j)));
    model_->set_fused_output(j, h.loss->fused());
    const ConfigNode& w = weights[size_t(j)];
    h.weight = w.defined() ? w.as_double() : 1.0;
    if (!(h.weight >= 0) || !std::isfinite(h.weight)) w.fail(str_cat("expected a loss weight >= 0, got ", h.weight));
  }
  metrics_.clear();
  if (n > 1)
    for (int j = 0; j < n; ++j) metrics_.push_back({names[size_t(j)] + "_loss", j, true, {}});
  for (int j = 0; j < n; ++j)
    for (const MetricSpec& m : parse_metrics(metrics[size_t(j)]))
      metrics_.push_back({n > 1 ? names[size_t(j)] + "_" + m.name : m.name, j, false, m});
}

std::vector<Tensor> Trainer::inputs_of(const data::Batch& b) {
  std::vector<Tensor> xs{b.x};
  xs.insert(xs.end(), b.extra_x.begin(), b.extra_x.end());
  return xs;
}

void Trainer::logged_sums(const std::vector<Tensor>& outs, const Tensor& y, int64_t n, double* out) {
  std::vector<Tensor> preds(heads_.size());
  for (size_t i = 0; i < metrics_.size(); ++i) {
    const Logged& l = metrics_[i];
    Head& h = heads_[size_t(l.head)];
    if (l.is_loss) {
      out[i] = h.loss_sum;
      continue;
    }
    if (n == 0) {
      out[i] = 0.0;
      continue;
    }
    if (!preds[size_t(l.head)].defined()) preds[size_t(l.head)] = h.loss->predictions(outs[size_t(l.head)]);
    Tensor per_sample = h.metric_buf.get({n}, device_, DType::F32);
    h.loss->metric(l.metric, preds[size_t(l.head)], y, per_sample);
    out[i] = ops::sum(per_sample);
  }
}

std::vector<std::string> Trainer::logged_keys(bool with_validation) const {
  std::vector<std::string> k = {"loss"};
  for (const auto& m : metrics_) k.push_back(m.name);
  if (with_validation) {
    k.push_back("val_loss");
    for (const auto& m : metrics_) k.push_back("val_" + m.name);
  }
  return k;
}

std::string Trainer::resolved_yaml() const {
  YAML::Emitter e;
  e << run_.yaml();
  return e.c_str();
}

void Trainer::load_weights(const std::string& checkpoint) {
  load_checkpoint(checkpoint, *model_);
  comm_.broadcast(model_->weights_arena(), 0);
}

void Trainer::set_frozen(bool frozen) {
  for (int i : transferred_) model_->layer(i).set_trainable(!frozen);
  frozen_ = frozen;
  if (update_) update_->rebuild();
}

void Trainer::new_optimizer(double learning_rate) {
  // Keras: unfreezing means compile() again, i.e. a fresh optimizer (state reset) with the new rate.
  optimizer_ = Optimizer::from_config(run_["optimizer"]);
  optimizer_->set_learning_rate(learning_rate);
  optimizer_->bind(*model_);
}

// ---- one step ------------------------------------------------------------------------------------

void Trainer::train_step(const data::Batch& host_batch, int64_t global_step, double* sums) {
  const data::Batch b = stager_->stage(host_batch);
  Context ctx;
  ctx.training = true;
  ctx.seed = seed_;
  ctx.step = global_step;
  ctx.global_batch = b.global_count;
  // This rank's slice of the global batch starts at rank*n/world (data::ShardedLoader::shard_indices).
  ctx.sample_offset = int64_t(comm_.rank()) * b.global_count / comm_.size();
  if (comm_.size() > 1) ctx.all_reduce_sum = [this](const Tensor& t) { comm_.all_reduce(t); };
  const std::vector<Tensor>& outs = model_->forward(inputs_of(b), ctx);
  const int64_t n = b.local_count;
  // The gradient of the global mean loss: each sample weighs 1/global_batch on every rank (times its
  // output's loss weight).
  const double scale = 1.0 / double(std::max<int64_t>(b.global_count, 1));
  douts_.resize(heads_.size());
  sums[0] = 0.0;
  for (size_t j = 0; j < heads_.size(); ++j) {
    Head& h = heads_[j];
    Tensor per_sample = h.per_sample_buf.get({n}, device_, DType::F32);
    douts_[j] = h.dout_buf.get(outs[j].shape(), outs[j]);
    h.loss->compute(outs[j], b.y, per_sample, douts_[j], h.weight * scale);
    h.loss_sum = n > 0 ? ops::sum(per_sample) : 0.0;
    sums[0] += h.weight * h.loss_sum;
  }
  sums[1] = double(n);
  logged_sums(outs, b.y, n, sums + 2);
  update_->run(douts_, ctx, *optimizer_);
}

// ---- evaluation and prediction ---------------------------------------------------------------------

std::map<std::string, double> Trainer::evaluate(const data::Split& split, bool mc) {
  const int64_t eval_batch = std::max<int64_t>(batch_size_, comm_.size());
  data::ShardedLoader loader(std::shared_ptr<const data::Split>(&split, [](const data::Split*) {}),
                             eval_batch - eval_batch % comm_.size(), comm_.rank(), comm_.size(), seed_, false,
                             data::LastBatch::Keep, 2, data::Augment::Off);
  loader.start_epoch(0);
  std::vector<double> sums(2 + metrics_.size(), 0.0);
  data::Batch hb;
  while (loader.next(hb)) {
    if (hb.local_count == 0) continue;
    const data::Batch b = stager_->stage(hb);
    Context ctx;
    ctx.mc_dropout = mc;
    ctx.seed = seed_;
    ctx.sample_offset = int64_t(comm_.rank()) * b.global_count / comm_.size();
    const std::vector<Tensor>& outs = model_->forward(inputs_of(b), ctx);
    for (Head& h : heads_) {
      Tensor ps = h.per_sample_buf.get({b.local_count}, device_, DType::F32);
      h.loss->compute(outs[size_t(&h - heads_.data())], b.y, ps, Tensor(), 1.0);
      h.loss_sum = ops::sum(ps);
      sums[0] += h.weight * h.loss_sum;
    }
    std::vector<double> batch(metrics_.size());
    logged_sums(outs, b.y, b.local_count, batch.data());
    for (size_t i = 0; i < metrics_.size(); ++i) sums[2 + i] += batch[i];
    sums[1] += double(b.local_count);
  }
  if (comm_.size() > 1) comm_.all_reduce(std::span<double>(sums));
  std::map<std::string, double> out;
  const double count = std::max(sums[1], 1.0);
  // As Keras: the reported loss includes the regularization penalties.
  out["loss"] = sums[0] / count + model_->regularization_loss();
  for (size_t i = 0; i < metrics_.size(); ++i) out[metrics_[i].name] = sums[2 + i] / count;
  return out;
}

void Trainer::predict(const data::Split& split, int mc_samples, Tensor* mean, Tensor* stddev,
                      std::vector<int32_t>* labels) {
  // Predictions are computed on rank 0 (the others have nothing to write).
  if (comm_.rank() != 0) return;
  data::ShardedLoader loader(std::shared_ptr<const data::Split>(&split, [](const data::Split*) {}), batch_size_, 0, 1,
                             seed_, false, data::LastBatch::Keep, 2, data::Augment::Off);
  const int64_t n = loader.positions();  // a paired split's pair count may differ from its image count
  if (labels) labels->clear();
  const int passes = std::max(mc_samples, 1);
  Tensor sum, sumsq;
  int64_t row = 0;
  loader.start_epoch(0);
  data::Batch hb;
  while (loader.next(hb)) {
    const data::Batch b = stager_->stage(hb);
    if (labels)
      for (int64_t i = 0; i < hb.local_count; ++i) labels->push_back(int32_t(hb.y.data()[i]));
    for (int p = 0; p < passes; ++p) {
      Context ctx;
      ctx.mc_dropout = mc_samples > 0;
      ctx.seed = seed_;
      ctx.step = int64_t(p) * loader.steps_per_epoch() + b.step;  // a different mask per pass and batch
      Tensor prob = heads_[0].loss->predictions(model_->forward(inputs_of(b), ctx)[0]);
      const int64_t k = prob.numel() / std::max<int64_t>(b.local_count, 1);
      if (!sum.defined()) {
        sum = Tensor::zeros({n, k}, Device::CPU, DType::F64);
        sumsq = Tensor::zeros({n, k}, Device::CPU, DType::F64);
      }
      std::vector<float> v = prob.to_vector();
      double* s = sum.data<double>() + row * k;
      double* q = sumsq.data<double>() + row * k;
      for (size_t i = 0; i < v.size(); ++i) {
        s[i] += v[i];
        q[i] += double(v[i]) * v[i];
      }
    }
    row += b.local_count;
  }
  if (!sum.defined()) return;
  const int64_t k = sum.dim(1);
  *mean = Tensor({n, k});
  *stddev = Tensor({n, k});
  for (int64_t i = 0; i < n * k; ++i) {
    const double m = sum.data<double>()[i] / passes;
    const double var = std::max(sumsq.data<double>()[i] / passes - m * m, 0.0);
    mean->data()[i] = float(m);
    stddev->data()[i] = float(std::sqrt(var));
  }
}

std::vector<Trainer::LrPoint> Trainer::lr_find(double min_rate, double max_rate) {
  data::ShardedLoader loader(dataset_.train, batch_size_, comm_.rank(), comm_.size(), seed_, shuffle_,
                             dataset_.config.last_batch, dataset_.config.prefetch, data::Augment::On);
  const int64_t steps = loader.steps_per_epoch();
  const double factor = std::exp(std::log(max_rate / min_rate) / double(std::max<int64_t>(steps, 1)));
  std::vector<LrPoint> out;
  std::vector<double> sums(2 + metrics_.size(), 0.0), step(2 + metrics_.size(), 0.0);
  double lr = min_rate, loss_sum = 0, count = 0;
  loader.start_epoch(0);
  data::Batch b;
  int64_t i = 0;
  while (loader.next(b)) {
    optimizer_->set_learning_rate(lr);
    train_step(b, i, step.data());
    if (comm_.size() > 1) comm_.all_reduce(std::span<double>(step));
    const double reg = model_->regularization_loss();
    const double batch_loss = step[0] / std::max(step[1], 1.0) + reg;
    loss_sum += step[0];
    count += step[1];
    // Keras's logs["loss"] at batch end: the running mean since the epoch began.
    out.push_back({lr, loss_sum / std::max(count, 1.0) + reg, batch_loss});
    if (!std::isfinite(batch_loss)) break;
    lr *= factor;
    ++i;
  }
  return out;
}

// ---- checkpoints ---------------------------------------------------------------------------------

struct Trainer::Resume {
  int64_t epoch = 0, step_in_epoch = 0;
  std::vector<double> sums;
  std::string history_csv;
  std::string path;
};

CheckpointContents Trainer::model_state(const std::string& history_csv) const {
  CheckpointContents c;
  c.run_config = resolved_yaml();
  for (auto& [n, t] : optimizer_->state()) c.optimizer.emplace_back(n, t);
  for (auto& [k, v] : optimizer_->scalar_state()) c.state["optimizer." + k] = v;
  c.state["global_step"] = double(optimizer_->iterations());
  c.state["learning_rate"] = optimizer_->learning_rate();
  c.state["seed"] = double(seed_);
  c.strings["history_csv"] = history_csv;
  return c;
}

std::string Trainer::write_checkpoint(const std::string& run_dir, const std::string& file, int64_t epoch,
                                      int64_t step_in_epoch, const std::vector<double>& sums,
                                      const std::string& history_csv) {
  const std::string path = (fs::path(run_dir) / "checkpoints" / file).string();
  std::string error;
  if (comm_.rank() == 0) {
    CheckpointContents c = model_state(history_csv);
    c.state["epoch"] = double(epoch);
    c.state["step_in_epoch"] = double(step_in_epoch);
    c.state["world_size"] = double(comm_.size());
    c.state["frozen"] = frozen_ ? 1.0 : 0.0;
    c.state["checkpoint_best"] = ckpt_best_;
    // Every rank's random state: draws are pure functions of (seed, step, layer) and (seed, epoch).
    c.state["rng.seed"] = double(seed_);
    c.state["rng.step"] = double(optimizer_->iterations());
    for (size_t i = 0; i < sums.size(); ++i) c.state[str_cat("epoch_sums.", i)] = sums[i];
    if (early_stopping_) {
      for (auto& [k, v] : early_stopping_->state()) c.state[k] = v;
      if (early_stopping_->best_weights().defined())
        c.tensors.emplace_back("early_stopping_best_weights", early_stopping_->best_weights());
    }
    if (plateau_)
      for (auto& [k, v] : plateau_->state()) c.state[k] = v;
    try {
      save_checkpoint(path, *model_, c);
    } catch (const UserError& e) {
      error = e.what();
    }
  }
  // Every rank learns whether the write worked, so none waits for a rank that gave up.
  if (comm_.size() > 1) {
    const int ok = comm_.all_reduce_value<int64_t>(error.empty() ? 1 : 0, comm::ReduceOp::Min);
    if (!ok) throw CheckpointError(error.empty() ? "rank 0 could not write checkpoint " + path : error);
  } else if (!error.empty()) {
    throw CheckpointError(error);
  }
  return path;
}

bool Trainer::restore(const std::string& path, Resume* r) {
  // A checkpoint of another run file: the sections that define the model and its training must match.
  {
    ConfigNode theirs = load_config_string(checkpoint_run_config(path), path + ":run_config");
    for (const char* key : {"model", "loss", "optimizer", "data", "seed"}) {
      YAML::Emitter a, b;
      a << run_[key].yaml();
      b << theirs[key].yaml();
      if (std::string(a.c_str()) != std::string(b.c_str()))
        throw CheckpointError(str_cat(path, ": written by a run whose `", key, ":` differs from ", run_file_,
                                      "'s (a checkpoint of another model or run file); start a new run directory "
                                      "or use transfer.from to take its weights"));
    }
  }
  CheckpointContents c = load_checkpoint(path, *model_);
  auto num = [&](const std::string& k) {
    auto it = c.state.find(k);
    if (it == c.state.end()) throw CheckpointError(str_cat(path, ": training_state attribute '", k, "' is missing"));
    return it->second;
  };
  if (num("frozen") == 0.0 && frozen_) {
    set_frozen(false);
    new_optimizer(unfreeze_lr_);
  }
  std::map<std::string, double> scalars;
  for (auto& [k, v] : c.state)
    if (k.rfind("optimizer.", 0) == 0) scalars[k.substr(10)] = v;
  optimizer_->load_state(c.optimizer, scalars, path);
  optimizer_->set_learning_rate(num("learning_rate"));
  r->epoch = int64_t(num("epoch"));
  r->step_in_epoch = int64_t(num("step_in_epoch"));
  r->sums.assign(2 + metrics_.size(), 0.0);
  for (size_t i = 0; i < r->sums.size(); ++i) r->sums[i] = num(str_cat("epoch_sums.", i));
  ckpt_best_ = num("checkpoint_best");
  if (early_stopping_) {
    early_stopping_->load_state(c.state);
    for (auto& [n, t] : c.tensors)
      if (n == "early_stopping_best_weights") early_stopping_->set_best_weights(t);
  }
  if (plateau_) plateau_->load_state(c.state);
  r->history_csv = c.strings.count("history_csv") ? c.strings["history_csv"] : "";
  r->path = path;
  const int64_t world = int64_t(num("world_size"));
  if (world != comm_.size() && comm_.rank() == 0)
    std::cerr << "warning: " << path << " was written by a run on " << world << " rank(s), resuming on "
              << comm_.size() << ": each global batch holds the same samples, but they are split differently "
              << "across ranks (and synchronized BN and the gradient sums add in a different order), so the run "
              << "will not be bit-identical to one that was not interrupted\n";
  return true;
}

std::string Trainer::find_resume_checkpoint(const std::string& run_dir, const std::string& resume, Resume* r) {
  if (resume != "auto") {
    restore(resume, r);
    return resume;
  }
  // Newest first; a corrupt or truncated file is reported and skipped. Every rank reads the same files
  // and therefore reaches the same choice; rank 0 reports.
  std::vector<std::string> files = periodic_checkpoints(run_dir);
  std::reverse(files.begin(), files.end());
  for (const auto& f : files) {
    try {
      restore(f, r);
      return f;
    } catch (const CheckpointError& e) {
      if (comm_.rank() == 0) std::cerr << "warning: skipping checkpoint " << e.what() << "\n";
      // A partly applied restore is overwritten by the next candidate (or by a fresh start below).
    }
  }
  return "";
}

// ---- fit -----------------------------------------------------------------------------------------

FitResult Trainer::fit(const std::string& run_dir, const std::string& resume) {
  const bool root = comm_.rank() == 0;
  FitResult result;
  std::unique_ptr<TensorBoardCallback> tensorboard;  // rank 0's, when callbacks.tensorboard is set
  {
    std::string error;
    if (root) {
      std::error_code ec;
      fs::create_directories(fs::path(run_dir) / "checkpoints", ec);
      if (ec) error = str_cat(run_dir, ": cannot create the run directory (", ec.message(), ")");
      else if (access((fs::path(run_dir) / "checkpoints").c_str(), W_OK) != 0)
        error = str_cat(run_dir, "/checkpoints: the run directory is not writable");
      // The TensorBoard callback creates and probes its log_dir now: an unusable one stops the run here.
      if (error.empty() && tensorboard_) try {
          tensorboard = std::make_unique<TensorBoardCallback>(*tensorboard_, run_dir);
        } catch (const ConfigError& e) {
          error = e.what();
        }
    }
    const int ok = comm_.size() > 1 ? comm_.all_reduce_value<int64_t>(error.empty() ? 1 : 0, comm::ReduceOp::Min) : error.empty();
    if (!ok) throw UserError(error.empty() ? run_dir + ": rank 0 cannot use the run directory or the TensorBoard log_dir" : error);
  }

  Resume r;
  r.sums.assign(2 + metrics_.size(), 0.0);
  std::string header = "epoch,loss";
  for (const auto& m : metrics_) header += "," + m.name;
  header += ",val_loss";
  for (const auto& m : metrics_) header += ",val_" + m.name;
  header += ",lr,seconds\n";
  r.history_csv = header;
  if (!resume.empty()) {
    const std::string from = find_resume_checkpoint(run_dir, resume, &r);
    if (from.empty()) {
      if (root) std::cout << "No checkpoint to resume from in " << run_dir << "/checkpoints: starting fresh\n";
      // Undo anything a rejected candidate loaded.
      model_->init(seed_);
      if (!keras_weights_.empty()) load_keras_weights(keras_weights_, *model_);
      if (!transfer_source_.empty()) {
        load_checkpoint(transfer_source_, *model_, &transferred_);
        if (freeze_epochs_ > 0 && !frozen_) set_frozen(true);
      }
      optimizer_ = Optimizer::from_config(run_["optimizer"]);
      optimizer_->bind(*model_);
      r = Resume{};
      r.sums.assign(2 + metrics_.size(), 0.0);
      r.history_csv = header;
    } else {
      result.last_checkpoint = from;
    }
    comm_.broadcast(model_->weights_arena(), 0);
  }

  std::ofstream csv;
  if (root) {
    std::ofstream(fs::path(run_dir) / "config.yaml") << resolved_yaml() << "\n";
    csv.open(fs::path(run_dir) / "history.csv", std::ios::trunc);
    if (!csv) throw UserError(run_dir + "/history.csv: cannot write");
    csv << r.history_csv << std::flush;
  }
  std::string history_csv = r.history_csv;

  data::ShardedLoader loader(dataset_.train, batch_size_, comm_.rank(), comm_.size(), seed_, shuffle_,
                             dataset_.config.last_batch, dataset_.config.prefetch, data::Augment::On);
  const int64_t steps = loader.steps_per_epoch();
  if (schedule_) schedule_->set_run_length(steps, epochs_);
  if (root && !result.last_checkpoint.empty())
    std::cout << "Resuming from " << result.last_checkpoint << " (epoch " << r.epoch + 1 << ", step " << r.step_in_epoch
              << " of the epoch, global step " << r.epoch * steps + r.step_in_epoch << ")\n";
  const std::vector<std::string> order = logged_keys(false);
  const bool tty = root && verbose_ == 1 && isatty(STDOUT_FILENO);
  install_stop_handlers(warning_signal_);  // normally done already, before start-up (lockstep train)
  if (root && verbose_ > 0)
    std::cout << "Train on " << dataset_.train->size() << " samples"
              << (dataset_.validation ? str_cat(", validate on ", dataset_.validation->size(), " samples") : "")
              << "; " << comm_.size() << " rank(s) x "
              << (device_ == Device::CUDA ? std::string("1 GPU") : str_cat(ops::num_threads(), " thread(s)"))
              << (update_->gradients_in_reduction_buffer() ? str_cat(" (gradients reduced: ", update_->reduction_description(), ")")
                                                            : std::string())
              << ", global batch " << batch_size_ << ", " << steps << " steps per epoch\n";

  const size_t nsums = 2 + metrics_.size();
  std::vector<double> step_sums(nsums + 1, 0.0);  // + the stop flag
  std::vector<std::string> kept = periodic_checkpoints(run_dir);  // oldest first
  // The global step: batches done since the run began (checkpoint names, random draws, schedules). Not
  // the optimizer's iterations, which restart at an unfreeze (transfer.freeze_epochs) as Keras's compile()
  // does: named by them, the unfrozen epochs' checkpoints overwrote the frozen ones', and a run resumed
  // after the unfreeze drew other dropout masks than the uninterrupted run.
  int64_t global_step = r.epoch * steps + r.step_in_epoch;
  auto checkpoint = [&](int64_t epoch, int64_t done, const std::vector<double>& sums) {
    if (tensorboard) tensorboard->wait_written();  // the logs up to the checkpoint are on disk first
    char name[64];
    std::snprintf(name, sizeof name, "ckpt-%010lld.h5", static_cast<long long>(global_step));
    const std::string path = write_checkpoint(run_dir, name, epoch, done, sums, history_csv);
    result.last_checkpoint = path;
    if (std::find(kept.begin(), kept.end(), path) == kept.end()) kept.push_back(path);
    // Prune only now that a newer one is complete.
    while (int64_t(kept.size()) > ckpt_keep_) {
      if (root) std::remove(kept.front().c_str());
      kept.erase(kept.begin());
    }
  };

  // TensorBoard's step: batches done since the run began (the optimizer's iterations restart at an
  // unfreeze, as Keras's compile() does; the logs' steps go on).
  if (tensorboard) tensorboard->on_train_begin(*model_, r.epoch, r.epoch * steps + r.step_in_epoch);
  comm_.set_timeout(step_timeout_);
  const TestHook test_signal = read_test_hook("LOCKSTEP_TEST_SIGNAL"), test_desync = read_test_hook("LOCKSTEP_TEST_DESYNC");
  for (int64_t epoch = r.epoch; epoch < epochs_; ++epoch) {
    const bool resumed_epoch = epoch == r.epoch && r.step_in_epoch > 0;
    const int64_t first = resumed_epoch ? r.step_in_epoch : 0;
    std::vector<double> sums = resumed_epoch ? r.sums : std::vector<double>(nsums, 0.0);
    if (transferred_.size() && frozen_ && epoch >= freeze_epochs_) {
      set_frozen(false);
      new_optimizer(unfreeze_lr_);
      if (root && verbose_ > 0)
        std::cout << "Unfreezing the " << transferred_.size() << " transferred layer(s) at epoch " << epoch + 1
                  << ", learning rate " << unfreeze_lr_ << "\n";
    }
    if (root && verbose_ > 0) std::cout << "Epoch " << epoch + 1 << "/" << epochs_ << "\n" << std::flush;
    const double t0 = now_s();
    loader.start_epoch(epoch, first);
    data::Batch b;
    int64_t done = first;
    while (loader.next(b)) {
      comm_.set_step(global_step);
      if (schedule_) {
        optimizer_->set_learning_rate(schedule_->learning_rate(global_step, epoch));
        if (schedule_->cycles_momentum() && optimizer_->has_momentum())
          optimizer_->set_momentum(schedule_->momentum(global_step));
      }
      if (test_signal.rank == comm_.rank() && test_signal.step == global_step) std::raise(test_signal.sig);
      train_step(b, global_step, step_sums.data());
      if (test_desync.rank == comm_.rank() && test_desync.step == global_step) model_->weights_arena().data()[0] += 1e-3f;
      step_sums[nsums] = g_stop_signal ? 1.0 : 0.0;
      if (comm_.size() > 1) comm_.all_reduce(std::span<double>(step_sums));
      const double reg = model_->regularization_loss();
      const double batch_loss = step_sums[0] / std::max(step_sums[1], 1.0) + reg;
      if (!std::isfinite(batch_loss)) {
        if (tty) std::cout << "\n";
        throw NonFiniteLoss(str_cat(
            "the loss became ", std::isnan(batch_loss) ? "NaN" : (batch_loss > 0 ? "+inf" : "-inf"), " at epoch ", epoch + 1, ", step ", done + 1, " (global step ", global_step,
            "); training stopped", result.last_checkpoint.empty() ? "" : str_cat(", the last good checkpoint is ", result.last_checkpoint),
            ". Lower the learning rate, add gradient clipping (optimizer.clipnorm / global_clipnorm) or check the "
            "data scaling"));
      }
      for (size_t i = 0; i < nsums; ++i) sums[i] += step_sums[i];
      ++global_step;
      ++done;
      if (tensorboard && tensorboard->wants_batch(epoch * steps + done)) {
        // Keras's batch logs: the running means of the epoch so far.
        TensorBoardCallback::Logs bl{{"loss", sums[0] / std::max(sums[1], 1.0) + reg}};
        for (size_t i = 0; i < metrics_.size(); ++i) bl.emplace_back(metrics_[i].name, sums[2 + i] / std::max(sums[1], 1.0));
        tensorboard->on_train_batch_end(epoch * steps + done, bl);
      }
      if (check_every_steps_ > 0 && comm_.size() > 1 && global_step % check_every_steps_ == 0) {
        const Tensor w = model_->weights_arena().device() == Device::CPU ? model_->weights_arena()
                                                                          : model_->weights_arena().to(Device::CPU);
        comm::check_replicas_identical(comm_, std::span<const float>(w.data(), size_t(w.numel())), global_step);
      }
      if (tty && (done % 25 == 0 || done == steps)) {
        std::map<std::string, double> v{{"loss", sums[0] / std::max(sums[1], 1.0) + reg}};
        for (size_t i = 0; i < metrics_.size(); ++i) v[metrics_[i].name] = sums[2 + i] / std::max(sums[1], 1.0);
        std::cout << "\r" << progress_line(done, steps, now_s() - t0, v, order, true) << std::flush;
      }
      if (step_sums[nsums] > 0) {
        if (tty) std::cout << "\n";
        checkpoint(epoch, done, sums);
        if (root)
          std::cout << "Stopped by " << (g_stop_signal ? signal_name(g_stop_signal) : std::string("a signal on another rank"))
                    << " at epoch " << epoch + 1 << ", step " << done << "; checkpoint " << result.last_checkpoint
                    << " written; resume with --resume auto\n"
                    << std::flush;
        result.preempted = true;
        return result;
      }
      if (ckpt_every_steps_ > 0 && global_step % ckpt_every_steps_ == 0 && done < steps) checkpoint(epoch, done, sums);
    }

    // End of epoch: validation, logs, callbacks, checkpoints.
    EpochLog log;
    log.epoch = epoch;
    log.values["loss"] = sums[0] / std::max(sums[1], 1.0) + model_->regularization_loss();
    for (size_t i = 0; i < metrics_.size(); ++i) log.values[metrics_[i].name] = sums[2 + i] / std::max(sums[1], 1.0);
    if (dataset_.validation) {
      if (tensorboard) tensorboard->on_test_begin();
      const std::map<std::string, double> v = evaluate(*dataset_.validation);
      for (auto& [k, val] : v) log.values["val_" + k] = val;
      if (tensorboard) {
        TensorBoardCallback::Logs tl;
        for (const std::string& k : logged_keys(false)) tl.emplace_back(k, v.at(k));
        tensorboard->on_test_end(epoch * steps + done, tl);
      }
    }
    log.values["lr"] = optimizer_->effective_learning_rate();
    log.values["seconds"] = now_s() - t0;
    if (root && verbose_ > 0) {
      std::cout << (tty ? "\r" : "")
                << progress_line(steps, steps, log.values["seconds"], log.values, logged_keys(dataset_.validation != nullptr), tty)
                << "\n"
                << std::flush;
    }
    {
      std::ostringstream row;
      row << epoch + 1 << "," << csv_cell(log.values["loss"]);
      for (const auto& m : metrics_) row << "," << csv_cell(log.values[m.name]);
      row << "," << (log.values.count("val_loss") ? csv_cell(log.values["val_loss"]) : "");
      for (const auto& m : metrics_)
        row << "," << (log.values.count("val_" + m.name) ? csv_cell(log.values["val_" + m.name]) : "");
      row << "," << csv_cell(log.values["lr"]) << "," << std::fixed << std::setprecision(3) << log.values["seconds"] << "\n";
      history_csv += row.str();
      if (root) csv << row.str() << std::flush;
    }
    if (tensorboard) {
      TensorBoardCallback::Logs logs;
      for (const std::string& k : logged_keys(dataset_.validation != nullptr))
        if (log.values.count(k)) logs.emplace_back(k, log.values[k]);
      // Keras: `lr` in the logs (epoch_lr) from ReduceLROnPlateau or a per-epoch scheduler; a
      // LearningRateSchedule object gives epoch_learning_rate; a constant rate gives neither.
      if (plateau_ || (schedule_ && schedule_->per_epoch())) logs.emplace_back("lr", optimizer_->learning_rate());
      std::optional<double> lr;
      if (schedule_ && !schedule_->per_epoch()) lr = schedule_->learning_rate(global_step, epoch);
      tensorboard->on_epoch_end(epoch, logs, *model_, lr);
    }
    if (plateau_) {
      const double lr = plateau_->on_epoch_end(epoch, log.values, optimizer_->learning_rate());
      if (lr != optimizer_->learning_rate() && root && verbose_ > 0)
        std::cout << "Epoch " << epoch + 1 << ": ReduceLROnPlateau reducing learning rate to " << lr << ".\n";
      optimizer_->set_learning_rate(lr);
    }
    bool stop = false;
    if (early_stopping_ && early_stopping_->on_epoch_end(epoch, log.values, *model_)) {
      stop = true;
      result.early_stopped = true;
      if (root && verbose_ > 0) std::cout << "Epoch " << epoch + 1 << ": early stopping\n";
    }
    if (ckpt_save_best_) {
      const double cur = log.values[ckpt_monitor_];
      const bool max = ckpt_monitor_.find("acc") != std::string::npos;
      if (max ? cur > ckpt_best_ : cur < ckpt_best_) {
        ckpt_best_ = cur;
        write_checkpoint(run_dir, "best.h5", epoch + 1, 0, std::vector<double>(nsums, 0.0), history_csv);
      }
    }
    result.history.push_back(log);
    if (ckpt_every_epochs_ > 0 && ((epoch + 1) % ckpt_every_epochs_ == 0 || epoch + 1 == epochs_ || stop))
      checkpoint(epoch + 1, 0, std::vector<double>(nsums, 0.0));
    if (stop) break;
    if (g_stop_signal && comm_.size() == 1) {
      // A signal during validation: the epoch's checkpoint above (or this one) holds everything.
      if (!(ckpt_every_epochs_ > 0 && ((epoch + 1) % ckpt_every_epochs_ == 0))) checkpoint(epoch + 1, 0, std::vector<double>(nsums, 0.0));
      if (root) std::cout << "Stopped by " << signal_name(g_stop_signal) << " after epoch " << epoch + 1 << "\n";
      result.preempted = true;
      return result;
    }
  }
  if (tensorboard) tensorboard->on_train_end();
  if (early_stopping_) early_stopping_->on_train_end(*model_);
  if (root) {
    CheckpointContents c = model_state(history_csv);
    // Epochs finished by the whole run, not only by this process (a resumed run starts at r.epoch).
    c.state["epochs_done"] = double(r.epoch + int64_t(result.history.size()));
    save_checkpoint((fs::path(run_dir) / "final.h5").string(), *model_, c);
    if (verbose_ > 0) std::cout << "Saved " << (fs::path(run_dir) / "final.h5").string() << "\n";
  }
  return result;
}

}  // namespace lockstep
