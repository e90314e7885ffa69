// The `lockstep` command: one binary for every verb; runs as a single process, under mpirun, or
// under srun. Exit status: 0 success, 2 bad input (run file, data, checkpoint, flags), 1 any other
// failure (see core/error.h).
#include <boost/program_options.hpp>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include "core/config.h"
#include "core/error.h"
#include "core/model.h"
#include "core/ops.h"
#include "core/checkpoint.h"
#include "core/keras_io.h"
#include "core/trainer.h"
#include "core/scaling.h"
#include "core/scaling_probe.h"
#include "comm/communicator.h"
#include "comm/mpi_communicator.h"
#include "data/cli.h"
#include "plot.h"

namespace po = boost::program_options;
using namespace lockstep;

namespace {

const char* kUsage = R"(usage: lockstep VERB [ARGS] [--help]

verbs:
  train RUN.yaml            train (one process, or every rank under mpirun / srun)
  evaluate RUN.yaml --checkpoint PATH   loss and metrics of a saved model on the test split
  predict RUN.yaml --checkpoint PATH --out FILE [--mc-samples N]   class probabilities (MC dropout)
  lr-find RUN.yaml          one epoch with an exponentially growing rate: loss vs learning rate
  summary RUN.yaml          print the model's table (layers, output shapes, parameter counts); also a Keras .h5/.json
  export CHECKPOINT --out MODEL.h5   a checkpoint as a Keras .h5 (tf_keras / Keras 3 load_model)
  plot RUN_DIR... --out curves.svg   learning curves of runs (history.csv), overlaid; a PNG too with rsvg-convert
  scale-estimate RUN.yaml --nodes N --ranks-per-node R --network 25gbit   predicted step time and efficiency, 1-512 ranks
  data convert|fetch|inspect  datasets: official files -> lockstep's HDF5 layout, download, inspect

Exit status: 0 success; 2 bad input (run file, data, checkpoint, flags); 3 the loss became NaN or
infinite; 4 communication failure (a collective failed or timed out, replicas diverged); 75 stopped by
SIGTERM/SIGINT/SIGUSR1 after writing a checkpoint (requeue and resume with --resume auto); 1 other.

Run `lockstep VERB --help` for a verb's options and examples.
)";

// Options every verb shares.
void add_common(po::options_description& d, int& threads, std::vector<std::string>& sets) {
  d.add_options()("help,h", "show this help")                                                     //
      ("threads", po::value<int>(&threads)->default_value(0), "CPU threads per rank (0: the cores this rank owns)")  //
      ("set", po::value<std::vector<std::string>>(&sets)->composing(),
       "override a key of the run file: --set train.epochs=1 (repeatable)");
}

// --device for the verbs that run a model: the run file's `device:` key, overridden.
void add_device(po::options_description& d, std::string& device) {
  d.add_options()("device", po::value<std::string>(&device),
                  "auto (a GPU when one is usable, else the CPU), cpu or cuda; overrides the run file's device:");
}
void apply_device(const std::string& device, std::vector<std::string>& sets) {
  if (device.empty()) return;
  if (device != "auto" && device != "cpu" && device != "cuda")
    throw UserError(str_cat("--device must be auto, cpu or cuda (got '", device, "')"));
  sets.push_back("device=" + device);
}

ConfigNode load_run_file(const std::string& path, const std::vector<std::string>& sets) {
  ConfigNode cfg = load_config_file(path);
  for (const auto& s : sets) set_dotted(cfg.yaml(), s);
  return cfg;
}

// Parse `args` with `d` (+ the run file as the first positional); false when --help was printed.
bool parse(const std::vector<std::string>& args, po::options_description& d, std::string& run_file, const char* verb) {
  d.add_options()("run-file", po::value<std::string>(&run_file), "the run file");
  po::positional_options_description pos;
  pos.add("run-file", 1);
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(d).positional(pos).run(), vm);
  po::notify(vm);
  if (vm.count("help")) {
    std::cout << d;
    return false;
  }
  if (run_file.empty()) throw UserError(str_cat(verb, ": a run file is required (lockstep ", verb, " RUN.yaml)"));
  return true;
}

int cmd_summary(const std::vector<std::string>& args) {
  int threads = 0;
  std::vector<std::string> sets;
  std::string run_file;
  std::string plot;
  po::options_description d("lockstep summary RUN.yaml [options]\n\n"
                            "Prints the model's table in Keras's model.summary() form (Functional models: with\n"
                            "the \"Connected to\" column); --plot draws the graph as keras.utils.plot_model does,\n"
                            "with Graphviz's dot (apt-get install graphviz).\n"
                            "Example:\n  lockstep summary launch/configs/fashion_mnist_mlp.yaml\n"
                            "  lockstep summary launch/configs/pretraining_pairs.yaml --plot model.svg\n\nOptions");
  add_common(d, threads, sets);
  d.add_options()("plot", po::value<std::string>(&plot), "also draw the model's graph into this file (.svg, .png or .pdf)");
  if (!parse(args, d, run_file, "summary")) return 0;
  std::unique_ptr<Model> model;
  // An .h5 that is no Keras model goes to the Keras reader too, whose error names what it found.
  if (run_file.ends_with(".h5") || run_file.ends_with(".hdf5") || is_keras_file(run_file)) {
    // A Keras .h5 or model.to_json() file: its architecture as lockstep builds it (docs/keras.md).
    model = Model::from_config(ConfigNode(keras_model_yaml(run_file), std::make_shared<const std::string>(run_file), "model"));
  } else {
    ConfigNode cfg = load_run_file(run_file, sets);
    model = Model::from_config(cfg["model"]);
  }
  std::cout << model->summary();
  if (!plot.empty()) {
    try {
      render_dot(model->graph_dot(), plot);
    } catch (const std::runtime_error& e) {
      throw UserError(str_cat("summary --plot: ", e.what()));
    }
    std::cout << "Graph written to " << plot << "\n";
  }
  return 0;
}

// `lockstep export CHECKPOINT --out model.h5`: a lockstep checkpoint as a Keras legacy .h5 (docs/keras.md).
int cmd_export(const std::vector<std::string>& args) {
  int threads = 0;
  std::vector<std::string> sets;
  std::string checkpoint, out;
  po::options_description d(
      "lockstep export CHECKPOINT --out MODEL.h5\n\n"
      "Writes the checkpoint's model (architecture from its stored run file, weights, loss/metrics/optimizer and\n"
      "the optimizer's state) as the .h5 file Keras's model.save() writes, which tf_keras.models.load_model and\n"
      "keras.saving.load_model open. rrelu is written as LeakyReLU (its inference function) and\n"
      "mc_dropout/mc_alpha_dropout as Dropout/AlphaDropout, with a note (docs/keras.md).\n"
      "Example:\n  lockstep export runs/model_a/final.h5 --out my_model_A.h5\n\nOptions");
  add_common(d, threads, sets);
  d.add_options()("out", po::value<std::string>(&out), "the Keras file to write (.h5)");
  if (!parse(args, d, checkpoint, "export")) return 0;
  if (out.empty()) throw UserError("export: --out MODEL.h5 is required");
  if (is_keras_file(checkpoint)) throw UserError(str_cat("export: ", checkpoint, " is already a Keras file"));
  for (const std::string& note : export_checkpoint_to_keras(checkpoint, out)) std::cerr << "note: " << note << "\n";
  std::cout << "Keras model written to " << out << "\n";
  return 0;
}

int cmd_plot(const std::vector<std::string>& args) {
  std::vector<std::string> run_dirs;
  std::string out;
  po::options_description d(
      "lockstep plot RUN_DIR [RUN_DIR...] [--out curves.svg]\n\n"
      "Draws the learning curves of runs from their history.csv, as the chapter's\n"
      "pd.DataFrame(history.history).plot(): loss and each metric by epoch (validation dashed), y from 0 to 1\n"
      "when every value lies there; the learning rate on a panel below when it changes (log scale past 10x).\n"
      "Several runs are overlaid (\"RUN: loss\", a marker shape per run). Writes an SVG, and the PNG next to it\n"
      "when rsvg-convert is installed (apt-get install librsvg2-bin). A RUN_DIR may also be a history.csv.\n"
      "Examples:\n  lockstep plot runs/exp1 --out curves.svg\n"
      "  lockstep plot runs/lr-0.01 runs/lr-0.001 --out compare.svg\n\nOptions");
  d.add_options()("help,h", "show this help")  //
      ("out", po::value<std::string>(&out)->default_value("curves.svg"), "the SVG to write (.png: the SVG next to it, then the PNG)")  //
      ("run-dir", po::value<std::vector<std::string>>(&run_dirs), "run directories");
  po::positional_options_description pos;
  pos.add("run-dir", -1);
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(d).positional(pos).run(), vm);
  po::notify(vm);
  if (vm.count("help")) {
    std::cout << d;
    return 0;
  }
  std::cout << plot::plot_runs(run_dirs, out).message;
  return 0;
}

// What every verb that trains or evaluates needs: the communicator, threads, the resolved run file.
// For fail(): abort the job from any rank. Shared with the verb's Session so that the communicator
// outlives the Session, which an exception unwinds before fail() runs (a dangling pointer here made
// every rank segfault instead of exiting with the error's status under mpirun).
std::shared_ptr<comm::Communicator> g_comm;

// Start-up and signals: the stop signals (SIGTERM, SIGINT, SIGUSR1, SIGUSR2) are blocked from the first
// instruction of main() until `lockstep train` has installed its handlers (or another verb restores the
// default actions). A blocked signal stays pending, through the re-execution that sets OMP_WAIT_POLICY
// too (execve keeps the mask and the pending set), and is delivered the moment the mask is lifted: a
// warning signal at any moment after launch ends a run with status 75 (after one step and a checkpoint
// once training has started), instead of killing it with status 138 before its handler exists.
constexpr int kStopSignals[] = {SIGTERM, SIGINT, SIGUSR1, SIGUSR2};
void set_stop_signals_blocked(bool blocked) {
  sigset_t set;
  sigemptyset(&set);
  for (int sig : kStopSignals) sigaddset(&set, sig);
  sigprocmask(blocked ? SIG_BLOCK : SIG_UNBLOCK, &set, nullptr);
}


struct Session {
  std::shared_ptr<comm::Communicator> comm;
  ConfigNode run;
};

Session start_session(const std::string& run_file, const std::vector<std::string>& sets, int threads) {
  Session s;
  s.comm = comm::make_communicator();
  g_comm = s.comm;
  ops::set_num_threads(threads > 0 ? threads : comm::default_threads_per_rank(*s.comm));
  s.run = load_run_file(run_file, sets);
  return s;
}

int cmd_train(const std::vector<std::string>& args) {
  int threads = 0;
  std::vector<std::string> sets;
  std::string run_file, run_dir, resume;
  po::options_description d(
      "lockstep train RUN.yaml [--set KEY=VALUE]... [--run-dir DIR] [--resume auto|PATH]\n\n"
      "Trains the run file's model. Under mpirun or srun every rank runs this same command; train.batch_size\n"
      "is the global batch. The run directory receives history.csv, config.yaml, checkpoints/ and final.h5.\n"
      "On SIGTERM, SIGINT or checkpoint.signal (SIGUSR1) the step finishes, a checkpoint is written and the\n"
      "exit status is 75; `--resume auto` then continues bit-identically.\n\n"
      "Examples:\n"
      "  lockstep train launch/configs/fashion_mnist_mlp.yaml\n"
      "  lockstep train launch/configs/fashion_mnist_mlp.yaml --set train.epochs=1 --set optimizer.learning_rate=0.01\n"
      "  lockstep train run.yaml --run-dir runs/exp1 --resume auto\n"
      "  mpirun -np 4 lockstep train run.yaml --run-dir runs/exp1\n\nOptions");
  std::string device;
  add_common(d, threads, sets);
  add_device(d, device);
  d.add_options()("run-dir", po::value<std::string>(&run_dir), "run directory (default runs/<name>-<timestamp>)")  //
      ("resume", po::value<std::string>(&resume),
       "auto: continue from the newest valid checkpoint in the run directory (fresh if none); or a checkpoint path");
  if (!parse(args, d, run_file, "train")) return 0;
  apply_device(device, sets);
  if (!resume.empty() && run_dir.empty())
    throw UserError("train: --resume needs --run-dir (the directory whose checkpoints/ to continue from)");
  // Before anything else (reading the run file, MPI, data loading, resume): a stop signal during
  // start-up is kept, not fatal. SIGTERM/SIGINT first: when another rank fails early, srun's
  // --kill-on-bad-exit SIGTERMs this one, which must still end with its own error status, not 143.
  install_stop_handlers(0);
  install_stop_handlers(warning_signal_of(load_run_file(run_file, sets)));
  set_stop_signals_blocked(false);  // a signal held since launch is delivered to its handler now
  Session s = start_session(run_file, sets, threads);
  Trainer trainer(s.run, run_file, *s.comm);
  if (run_dir.empty()) {
    // Every rank must use the same directory: rank 0's timestamp.
    std::string dir = s.comm->rank() == 0 ? default_run_dir(trainer.run_name()) : std::string();
    int64_t n = int64_t(dir.size());
    s.comm->broadcast(std::span<int64_t>(&n, 1), 0);
    std::vector<uint8_t> buf(static_cast<size_t>(n));
    std::copy(dir.begin(), dir.end(), buf.begin());
    if (n > 0) s.comm->broadcast(std::span<uint8_t>(buf), 0);
    run_dir.assign(buf.begin(), buf.end());
  }
  if (s.comm->rank() == 0) std::cout << "Run directory: " << run_dir << "\n";
  FitResult r = trainer.fit(run_dir, resume);
  return r.preempted ? kExitPreempted : 0;
}

// The split `--split NAME` of evaluate and predict names, or a UserError naming the verb.
std::shared_ptr<const data::Split> named_split(const Trainer& trainer, const std::string& split, const char* verb) {
  const auto& ds = trainer.dataset();
  std::shared_ptr<const data::Split> sp = split == "test" ? ds.test : split == "validation" ? ds.validation
                                        : split == "train"                                 ? ds.train
                                                                                           : nullptr;
  if (!sp) throw UserError(str_cat(verb, ": split '", split, "' is not available (expected test, validation or train)"));
  return sp;
}

int cmd_evaluate(const std::vector<std::string>& args) {
  int threads = 0;
  std::vector<std::string> sets;
  std::string run_file, checkpoint, split = "test";
  po::options_description d(
      "lockstep evaluate RUN.yaml --checkpoint PATH [--split test|validation|train]\n\n"
      "Loss and metrics of a saved model over a whole split (reduced across ranks).\n\n"
      "Example:\n  lockstep evaluate run.yaml --checkpoint runs/exp1/final.h5\n\nOptions");
  std::string device;
  add_common(d, threads, sets);
  add_device(d, device);
  d.add_options()("checkpoint", po::value<std::string>(&checkpoint), "the model to evaluate (a checkpoint or final.h5)")  //
      ("split", po::value<std::string>(&split)->default_value("test"), "test, validation or train")                    //
      ("mc-dropout", "keep dropout active (MC dropout)");
  po::variables_map vm;
  if (!parse(args, d, run_file, "evaluate")) return 0;
  apply_device(device, sets);
  if (checkpoint.empty()) throw UserError("evaluate: --checkpoint PATH is required");
  const bool mc = std::find(args.begin(), args.end(), "--mc-dropout") != args.end();
  Session s = start_session(run_file, sets, threads);
  Trainer trainer(s.run, run_file, *s.comm);
  trainer.load_weights(checkpoint);
  const std::shared_ptr<const data::Split> sp = named_split(trainer, split, "evaluate");
  auto v = trainer.evaluate(*sp, mc);
  if (s.comm->rank() == 0) {
    std::cout << split << " (" << sp->size() << " samples):";
    for (const auto& [k, x] : v) std::cout << " " << k << ": " << x;
    std::cout << "\n";
  }
  return 0;
}

int cmd_predict(const std::vector<std::string>& args) {
  int threads = 0, mc = 0;
  std::vector<std::string> sets;
  std::string run_file, checkpoint, out, split = "test";
  po::options_description d(
      "lockstep predict RUN.yaml --checkpoint PATH --out FILE [--mc-samples N] [--split test]\n\n"
      "Class probabilities for every sample of a split, in order. With --mc-samples N, MC dropout: the mean\n"
      "over N stochastic passes (dropout kept on, batch norm in inference mode) and their standard deviation.\n"
      "FILE.h5: datasets probabilities, std, predictions, labels; FILE.csv: one row per sample.\n\n"
      "Example:\n  lockstep predict run.yaml --checkpoint runs/exp1/final.h5 --mc-samples 100 --out pred.h5\n\nOptions");
  std::string device;
  add_common(d, threads, sets);
  add_device(d, device);
  d.add_options()("checkpoint", po::value<std::string>(&checkpoint), "the model (a checkpoint or final.h5)")  //
      ("out", po::value<std::string>(&out), "output file (.h5 or .csv)")                                    //
      ("mc-samples", po::value<int>(&mc)->default_value(0), "MC dropout passes (0: one deterministic pass)")   //
      ("split", po::value<std::string>(&split)->default_value("test"), "test, validation or train");
  if (!parse(args, d, run_file, "predict")) return 0;
  apply_device(device, sets);
  if (checkpoint.empty()) throw UserError("predict: --checkpoint PATH is required");
  if (out.empty()) throw UserError("predict: --out FILE is required");
  if (mc < 0) throw UserError("predict: --mc-samples must be >= 0");
  Session s = start_session(run_file, sets, threads);
  Trainer trainer(s.run, run_file, *s.comm);
  trainer.load_weights(checkpoint);
  const std::shared_ptr<const data::Split> sp = named_split(trainer, split, "predict");
  Tensor mean, sd;
  std::vector<int32_t> labels;  // per row as the model sees it (image pairs: the pair's label)
  trainer.predict(*sp, mc, &mean, &sd, &labels);
  if (s.comm->rank() == 0) {
    save_predictions(out, mean, mc > 0 ? sd : Tensor(), labels);
    std::cout << "Wrote " << labels.size() << " predictions to " << out << "\n";
  }
  return 0;
}

int cmd_lr_find(const std::vector<std::string>& args) {
  int threads = 0;
  std::vector<std::string> sets;
  std::string run_file, out;
  double min_rate = 1e-5, max_rate = 10;
  po::options_description d(
      "lockstep lr-find RUN.yaml [--min-rate 1e-5] [--max-rate 10] [--out lr_find.csv]\n\n"
      "The chapter's learning-rate finder: one epoch from the untrained model, the rate growing exponentially\n"
      "from min to max; writes step,learning_rate,loss,batch_loss (loss: the running mean, as Keras logs it).\n"
      "Pick 1cycle's max_rate about 10x below the rate where the loss starts to climb.\n\n"
      "Example:\n  lockstep lr-find launch/configs/fashion_mnist_mlp.yaml --out lr.csv\n\nOptions");
  add_common(d, threads, sets);
  d.add_options()("min-rate", po::value<double>(&min_rate)->default_value(1e-5), "first rate")  //
      ("max-rate", po::value<double>(&max_rate)->default_value(10.0), "last rate")               //
      ("out", po::value<std::string>(&out)->default_value("lr_find.csv"), "output CSV");
  if (!parse(args, d, run_file, "lr-find")) return 0;
  if (!(min_rate > 0 && max_rate > min_rate)) throw UserError("lr-find: expected 0 < --min-rate < --max-rate");
  Session s = start_session(run_file, sets, threads);
  Trainer trainer(s.run, run_file, *s.comm);
  auto pts = trainer.lr_find(min_rate, max_rate);
  if (s.comm->rank() == 0) {
    std::ofstream f(out);
    if (!f) throw UserError(out + ": cannot write");
    f << "step,learning_rate,loss,batch_loss\n" << std::setprecision(10);
    size_t best = 0;
    for (size_t i = 0; i < pts.size(); ++i) {
      f << i << "," << pts[i].rate << "," << pts[i].loss << "," << pts[i].batch_loss << "\n";
      if (std::isfinite(pts[i].loss) && pts[i].loss < pts[best].loss) best = i;
    }
    if (!pts.empty())
      std::cout << "Wrote " << pts.size() << " points to " << out << "; lowest loss " << pts[best].loss << " at rate "
                << pts[best].rate << "; suggested max_rate (10x lower): " << pts[best].rate / 10 << "\n";
  }
  return 0;
}

// `lockstep scale-estimate`: the scaling model of docs/scaling.md (core/scaling.h) fed with this
// machine's measurements of the run file's training step (core/scaling_probe.h).
std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) {
      const size_t c = line.find(':');
      if (c != std::string::npos) return line.substr(line.find_first_not_of(' ', c + 1));
    }
  return "unknown CPU";
}

std::string fixed(double v, int digits) {
  std::ostringstream o;
  o << std::fixed << std::setprecision(digits) << v;
  return o.str();
}
std::string grouped(double v) {  // 53333 -> "53,333"
  std::string s = fixed(v, 0), out;
  const size_t start = s[0] == '-' ? 1 : 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > start && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return out;
}
std::string mb(double bytes) { return fixed(bytes / 1e6, bytes < 1e5 ? 3 : 2) + " MB"; }

int cmd_scale_estimate(const std::vector<std::string>& args) {
  std::vector<std::string> sets;
  std::string run_file, network = "25gbit", compression, shaper_burst = "0";
  int threads = 1, nodes = 1, per_node = 1, max_ranks = 512, in_flight = 0;
  double step_ms = 0.0, measure_sec = 1.0, alpha_us = scaling::kMeasuredAlphaS * 1e6,
         efficiency = scaling::kMeasuredTcpEfficiency, efficiency_large = scaling::kMeasuredTcpEfficiencyLarge,
         ceiling_gbit = scaling::kMeasuredTcpCeilingBytesPerS * 8e-9,
         step_cpu_us = scaling::kMeasuredStepCpuS * 1e6, tcp_cpu_ns = scaling::kMeasuredTcpCpuSPerByte * 1e9;
  bool weak_only = false, kv = false;
  po::options_description d(
      "lockstep scale-estimate RUN.yaml [--nodes N] [--ranks-per-node R] [--network 25gbit] [--step-ms MS]\n\n"
      "Predicts the step time, samples/s, exposed all-reduce time and scaling efficiency of the run file's\n"
      "training on 1 to 512 ranks (powers of 2 as nodes x R) and on the requested N x R, from one rank's\n"
      "training steps timed on this machine (the run file's model at its per-rank batch, synthetic input)\n"
      "and an alpha-beta model of the hierarchical all-reduce: shared memory within a node (its cost\n"
      "measured here), a ring across nodes over a link of --network's rate (latency and TCP efficiency\n"
      "measured on simulated hosts), overlapped with the backward pass bucket by bucket. Weak scaling holds\n"
      "the per-rank batch at the run file's train.batch_size; strong scaling holds the global batch there.\n"
      "Assumptions and limits: docs/scaling.md.\n\n"
      "Examples:\n"
      "  lockstep scale-estimate launch/configs/fashion_mnist_mlp.yaml --nodes 4 --ranks-per-node 8 --network 25gbit\n"
      "  lockstep scale-estimate run.yaml --nodes 2 --network 10gbit --step-ms 12.5 --set distributed.compression=bf16\n\n"
      "Options");
  d.add_options()("help,h", "show this help")  //
      ("nodes", po::value<int>(&nodes)->default_value(1), "nodes of the requested configuration (>= 1)")  //
      ("ranks-per-node", po::value<int>(&per_node)->default_value(1), "ranks per node (>= 1); the table's nodes x R")  //
      ("network", po::value<std::string>(&network)->default_value("25gbit"),
       "the link of each node, per direction, as tc writes rates: 25gbit, 10gbit, 100mbit")  //
      ("step-ms", po::value<double>(&step_ms),
       "one rank's step at the run file's batch in ms, instead of measuring (split by the layers' FLOPs)")  //
      ("compression", po::value<std::string>(&compression),
       "what crosses nodes: none, bf16 or fp16 (default: the run file's distributed.compression, else none)")  //
      ("in-flight", po::value<int>(&in_flight),
       "buckets whose all-reduce may cross nodes at once (default: LOCKSTEP_INTER_NODE_IN_FLIGHT, else 2)")  //
      ("alpha-us", po::value<double>(&alpha_us)->default_value(alpha_us, fixed(alpha_us, 1)),
       "latency of one ring step across nodes, microseconds (measured on simulated hosts)")  //
      ("tcp-efficiency", po::value<double>(&efficiency)->default_value(efficiency, fixed(efficiency, 2)),
       "payload rate of MPI over TCP / the link rate, messages up to 64 KiB (measured)")  //
      ("tcp-efficiency-large", po::value<double>(&efficiency_large)->default_value(efficiency_large, fixed(efficiency_large, 2)),
       "the same for larger messages (Open MPI's rendezvous; measured at 5 Gbit/s: see docs/scaling.md for slower links)")  //
      ("tcp-ceiling-gbit", po::value<double>(&ceiling_gbit)->default_value(ceiling_gbit, fixed(ceiling_gbit, 1)),
       "the most MPI over TCP carries per direction whatever the link, Gbit/s (measured here, unshaped; 0: no limit)")  //
      ("step-cpu-us", po::value<double>(&step_cpu_us)->default_value(step_cpu_us, fixed(step_cpu_us, 1)),
       "CPU a ring step takes from the rank beyond its bytes, microseconds (measured here)")  //
      ("tcp-cpu-ns", po::value<double>(&tcp_cpu_ns)->default_value(tcp_cpu_ns, fixed(tcp_cpu_ns, 2)),
       "CPU per byte a rank sends or receives across nodes, nanoseconds (measured here)")  //
      ("shaper-burst", po::value<std::string>(&shaper_burst)->default_value("0"),
       "model a tc tbf shaper with this burst (640kb), as on simulated hosts; 0: a real link")  //
      ("threads", po::value<int>(&threads)->default_value(1), "CPU threads of the measured rank")  //
      ("measure-sec", po::value<double>(&measure_sec)->default_value(1.0), "seconds of timed steps per batch size")  //
      ("max-ranks", po::value<int>(&max_ranks)->default_value(512), "the table's largest number of ranks")  //
      ("weak-only", po::bool_switch(&weak_only), "leave out the strong-scaling table (no extra batch sizes measured)")  //
      ("kv", po::bool_switch(&kv), "also print every row as one line of key=value fields (for scripts)")  //
      ("set", po::value<std::vector<std::string>>(&sets)->composing(),
       "override a key of the run file: --set train.batch_size=64 (repeatable)");
  if (!parse(args, d, run_file, "scale-estimate")) return 0;
  if (nodes < 1) throw UserError(str_cat("scale-estimate: --nodes must be a whole number >= 1 (got ", nodes, ")"));
  if (per_node < 1)
    throw UserError(str_cat("scale-estimate: --ranks-per-node must be a whole number >= 1 (got ", per_node, ")"));
  if (max_ranks < 1) throw UserError(str_cat("scale-estimate: --max-ranks must be >= 1 (got ", max_ranks, ")"));
  if (threads < 1) throw UserError(str_cat("scale-estimate: --threads must be >= 1 (got ", threads, ")"));
  if (!(measure_sec > 0.0)) throw UserError(str_cat("scale-estimate: --measure-sec must be > 0 (got ", measure_sec, ")"));
  const bool step_given = std::any_of(args.begin(), args.end(), [](const std::string& a) { return a.rfind("--step-ms", 0) == 0; });
  if (step_given && !(step_ms > 0.0 && std::isfinite(step_ms)))
    throw UserError(str_cat("scale-estimate: --step-ms must be a time in milliseconds > 0 (got ", step_ms, ")"));
  if (!(alpha_us >= 0.0)) throw UserError(str_cat("scale-estimate: --alpha-us must be >= 0 (got ", alpha_us, ")"));
  if (!(efficiency > 0.0 && efficiency <= 1.0))
    throw UserError(str_cat("scale-estimate: --tcp-efficiency must lie in (0, 1] (got ", efficiency, ")"));
  if (!(efficiency_large > 0.0 && efficiency_large <= 1.0))
    throw UserError(str_cat("scale-estimate: --tcp-efficiency-large must lie in (0, 1] (got ", efficiency_large, ")"));
  if (!(ceiling_gbit >= 0.0))
    throw UserError(str_cat("scale-estimate: --tcp-ceiling-gbit must be >= 0 (got ", ceiling_gbit, ")"));
  if (!(step_cpu_us >= 0.0)) throw UserError(str_cat("scale-estimate: --step-cpu-us must be >= 0 (got ", step_cpu_us, ")"));
  if (!(tcp_cpu_ns >= 0.0)) throw UserError(str_cat("scale-estimate: --tcp-cpu-ns must be >= 0 (got ", tcp_cpu_ns, ")"));
  const double rate = scaling::parse_link_rate(network, "scale-estimate: --network");
  const double burst = scaling::parse_size_bytes(shaper_burst, "scale-estimate: --shaper-burst");
  for (const std::string& s : sets)
    if (s.find('=') == std::string::npos)
      throw UserError(str_cat("scale-estimate: --set expects KEY=VALUE (got '", s, "')"));
  ConfigNode run = load_run_file(run_file, sets);
  run.expect_map();
  const int batch = int(run["train"].get_at_least("batch_size", 32, 1));
  ConfigNode dist = run["distributed"];
  comm::BucketOptions bucket_opts;
  bucket_opts.bucket_cap_bytes = int64_t(dist.get_in("bucket_mb", 4.0, 0.0, 1024.0, true) * (1 << 20));
  bucket_opts.first_bucket_bytes = int64_t(dist.get_in("first_bucket_mb", 1.0, 0.0, 1024.0, true) * (1 << 20));
  if (compression.empty()) compression = dist.get("compression", std::string("none"));
  if (compression != "none" && compression != "bf16" && compression != "fp16")
    throw UserError(str_cat("scale-estimate: --compression (or distributed.compression) must be none, bf16 or fp16 (got '",
                            compression, "')"));
  if (in_flight == 0) {  // what the communicator would use (comm/mpi_communicator.h)
    in_flight = comm::kInterNodeInFlight;
    if (const char* e = std::getenv("LOCKSTEP_INTER_NODE_IN_FLIGHT"); e && std::atoi(e) > 0) in_flight = std::atoi(e);
  }
  if (in_flight < 1) throw UserError(str_cat("scale-estimate: --in-flight must be >= 1 (got ", in_flight, ")"));
  ops::set_num_threads(threads);

  // The run file's step, measured (or given) at the run file's batch and, for strong scaling, at
  // batch / ranks.
  scaling::StepProbe probe(run);
  std::vector<int> rank_counts;
  for (int p = 1; p <= max_ranks; p *= 2) rank_counts.push_back(p);
  const int requested = nodes * per_node;
  auto placement = [&](int p) -> std::optional<scaling::Placement> {
    if (p <= per_node) return scaling::Placement{1, p};
    if (p % per_node != 0) return std::nullopt;
    return scaling::Placement{p / per_node, per_node};
  };
  std::map<int, scaling::BackwardProfile> profiles;  // per-rank batch -> profile
  std::map<int, int> steps_of;
  auto profile_at = [&](int b) -> const scaling::BackwardProfile& {
    auto it = profiles.find(b);
    if (it != profiles.end()) return it->second;
    scaling::BackwardProfile prof;
    if (step_ms > 0.0) {
      prof = scaling::apportioned_profile(step_ms * 1e-3 * b / batch, probe.forward_flops(),
                                          probe.backward_flops_by_progress_point());
    } else {
      prof = probe.measure(b, b == batch ? measure_sec : measure_sec / 2, 5);
      steps_of[b] = probe.last_steps();
    }
    return profiles.emplace(b, prof).first->second;
  };
  const scaling::BackwardProfile& base = profile_at(batch);
  const std::vector<scaling::BucketSpec> buckets = probe.buckets(bucket_opts);
  std::vector<double> bucket_bytes;
  for (const auto& b : buckets) bucket_bytes.push_back(b.bytes);
  std::vector<int> ls;
  for (int L = 2; L <= std::min(per_node, 64); L *= 2) ls.push_back(L);
  if (per_node > 1 && per_node <= 64 && std::find(ls.begin(), ls.end(), per_node) == ls.end()) ls.push_back(per_node);
  scaling::CommModel model;
  model.shm = scaling::measure_shared_memory(bucket_bytes, ls, std::min(measure_sec / 2, 0.5));
  model.reduce_s_per_byte = scaling::measure_reduce_per_byte(0.05);
  scaling::measure_codec_per_byte(compression, 0.05, &model.encode_s_per_byte, &model.decode_s_per_byte);
  model.link.rate_bits_per_s = rate;
  model.link.alpha_s = alpha_us * 1e-6;
  model.link.efficiency = efficiency;
  model.link.efficiency_large = efficiency_large;
  model.link.ceiling_bytes_per_s = ceiling_gbit * 1e9 / 8;
  model.link.step_cpu_s = step_cpu_us * 1e-6;
  model.link.cpu_s_per_byte = tcp_cpu_ns * 1e-9;
  model.link.burst_bytes = burst;
  model.wire_factor = compression == "none" ? 1.0 : 0.5;
  model.in_flight = in_flight;

  // What was measured.
  const std::string cpu = cpu_model();
  std::cout << "lockstep scale-estimate " << run_file << ": " << grouped(double(probe.trainable_params()))
            << " trainable parameters, " << mb(double(probe.gradient_bytes())) << " of float32 gradients in "
            << buckets.size() << " bucket(s) (first_bucket_mb " << fixed(bucket_opts.first_bucket_bytes / 1048576.0, 2)
            << ", bucket_mb " << fixed(bucket_opts.bucket_cap_bytes / 1048576.0, 2) << "):";
  for (size_t i = 0; i < buckets.size() && i < 8; ++i) std::cout << (i ? " + " : " ") << mb(buckets[i].bytes);
  std::cout << (buckets.size() > 8 ? " + ..." : "") << "\n";
  if (step_ms > 0.0) {
    std::cout << "Compute: --step-ms " << step_ms << " ms per step at " << batch
              << " samples per rank (given, not measured), split into forward " << fixed(base.forward_s * 1e3, 3)
              << " ms and backward " << fixed(base.backward_s * 1e3, 3)
              << " ms by the layers' product FLOPs; other batches scale it linearly.\n";
  } else {
    std::cout << "Compute, measured on this machine (" << cpu << ", " << threads << " thread(s), load average "
              << [] {
                   std::ifstream f("/proc/loadavg");
                   std::string a, b, c;
                   f >> a >> b >> c;
                   return a + " " + b + " " + c;
                 }()
              << "): " << steps_of[batch] << " training steps of the run file's model at " << batch
              << " samples per rank on synthetic input " << probe.input_description() << " ("
              << probe.loss_description() << "), medians:\n"
              << "  forward + loss " << fixed(base.forward_s * 1e3, 3) << " ms, backward "
              << fixed(base.backward_s * 1e3, 3) << " ms (" << base.progress_s.size()
              << " layers with gradients, timed as each finishes), update " << fixed(base.update_s * 1e3, 3)
              << " ms";
    if (base.single_rank_step_s > 0.0)
      std::cout << "; one process's step " << fixed(base.single_rank_step_s * 1e3, 3)
                << " ms (plain SGD taken inside the backward pass)";
    std::cout << "\n";
  }
  std::cout << "Shared memory (measured here, emulated on one core): one rank's part of the in-place all-reduce,";
  if (ls.empty()) std::cout << " not needed (1 rank per node)";
  for (int L : ls) std::cout << " " << L << " ranks " << fixed(model.shm.per_byte(L) * 1e9, 3) << " ns/byte,";
  std::cout << " " << fixed(model.shm.alpha_s * 1e6, 2) << " us per bucket; ring sum "
            << fixed(model.reduce_s_per_byte * 1e9, 3) << " ns/byte";
  if (compression != "none")
    std::cout << ", " << compression << " encode " << fixed(model.encode_s_per_byte * 1e9, 3) << " and decode "
              << fixed(model.decode_s_per_byte * 1e9, 3) << " ns per float32 byte";
  std::cout << "\n";
  std::cout << "Network: " << scaling::rate_str(rate) << " per node and direction; MPI over TCP: efficiency "
            << fixed(efficiency, 2) << " (messages over 64 KiB: " << fixed(efficiency_large, 2) << "), at most "
            << fixed(ceiling_gbit, 1) << " Gbit/s => " << fixed(model.link.wire_bytes_per_s() / 1e9, 3) << " ("
            << fixed(model.link.wire_bytes_per_s(1e9) / 1e9, 3) << ") GB/s of payload; per ring step " << fixed(alpha_us, 1)
            << " us of latency and " << fixed(step_cpu_us, 1) << " us of the rank's CPU, plus " << fixed(tcp_cpu_ns, 2)
            << " ns per byte sent or received (measured on simulated hosts, docs/scaling.md; --alpha-us, "
               "--tcp-efficiency[-large], --tcp-ceiling-gbit, --step-cpu-us, --tcp-cpu-ns override)";
  if (burst > 0) std::cout << "; a tc tbf shaper's burst of " << grouped(burst) << " bytes passes at once";
  std::cout << "\n";
  std::cout << "All-reduce: hierarchical (shared memory within a node, then a ring of 2(n-1) steps across n nodes), "
            << in_flight << " bucket(s) across nodes at once, compression " << compression
            << (compression == "none" ? "" : " (half the bytes cross nodes)") << "\n";

  struct Row {
    int ranks;
    scaling::Placement pl;
    int per_rank, global;
    scaling::StepEstimate e;
    bool requested;
  };
  // Efficiency: samples/s against `ranks` x one rank's samples/s (weak: at the same per-rank batch;
  // strong: the speed-up over one rank with the whole batch, / ranks).
  std::vector<std::string> kv_lines;
  auto print = [&](const std::vector<Row>& rows, double one_rank_rate, const char* kind) {
    std::cout << "  ranks  nodes x R  batch/rank  global batch   step ms   samples/s  all-reduce ms (exposed)  efficiency\n";
    for (const Row& r : rows) {
      const double sps = r.global / r.e.step_s;
      const double eff = sps / (r.ranks * one_rank_rate);
      char line[256];
      std::snprintf(line, sizeof line, "%s%5d  %4d x %-3d  %10d  %12d  %8.3f  %10s  %23.3f  %9.1f%%\n",
                    r.requested ? "* " : "  ", r.ranks, r.pl.nodes, r.pl.ranks_per_node, r.per_rank, r.global,
                    r.e.step_s * 1e3, grouped(sps).c_str(), r.e.exposed_s * 1e3, 100.0 * eff);
      std::cout << line;
      kv_lines.push_back(str_cat("scaling=", kind, " ranks=", r.ranks, " nodes=", r.pl.nodes, " ranks_per_node=",
                                 r.pl.ranks_per_node, " requested=", r.requested ? 1 : 0, " batch_per_rank=", r.per_rank,
                                 " global_batch=", r.global, " step_ms=", fixed(r.e.step_s * 1e3, 4),
                                 " samples_per_sec=", fixed(sps, 1), " exposed_ms=", fixed(r.e.exposed_s * 1e3, 4),
                                 " comm_cpu_ms=", fixed(r.e.comm_cpu_s * 1e3, 4), " allreduce_ms=",
                                 fixed(r.e.allreduce_s * 1e3, 4), " compute_ms=", fixed(r.e.compute_s * 1e3, 4),
                                 " efficiency=", fixed(eff, 4), " network=", network, " compression=", compression));
    }
  };
  // The table's rows (powers of 2 placed as nodes x R), then the requested N x R unless it is one of them.
  std::vector<std::pair<int, scaling::Placement>> configs;
  for (int p : rank_counts)
    if (auto pl = placement(p)) configs.push_back({p, *pl});
  auto same = [](scaling::Placement a, scaling::Placement b) { return a.nodes == b.nodes && a.ranks_per_node == b.ranks_per_node; };
  const scaling::Placement want{nodes, per_node};
  if (std::none_of(configs.begin(), configs.end(), [&](const auto& c) { return same(c.second, want); })) {
    configs.push_back({requested, want});
    std::stable_sort(configs.begin(), configs.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  }
  std::vector<Row> weak;
  for (const auto& [p, pl] : configs)
    weak.push_back({p, pl, batch, batch * p, scaling::estimate_step(base, buckets, model, pl), same(pl, want)});
  const double one = weak.front().e.step_s;
  std::cout << "\nWeak scaling: the per-rank batch held at the run file's " << batch
            << " (global batch = " << batch << " x ranks); efficiency = samples/s / (ranks x one rank's)."
            << " * = the requested " << nodes << " x " << per_node << ".\n";
  print(weak, batch / one, "weak");
  if (!weak_only) {
    std::vector<Row> strong;
    for (const auto& [p, pl] : configs) {
      if (batch % p != 0) continue;
      const scaling::BackwardProfile& prof = profile_at(batch / p);
      strong.push_back({p, pl, batch / p, batch, scaling::estimate_step(prof, buckets, model, pl), same(pl, want)});
    }
    std::cout << "\nStrong scaling: the global batch held at the run file's " << batch
              << " (per-rank batch = " << batch << " / ranks, ";
    if (step_ms > 0.0) std::cout << "compute scaled linearly from --step-ms";
    else std::cout << "each per-rank batch's steps measured";
    std::cout << "); efficiency = speed-up / ranks. Ranks that do not divide " << batch << " are left out.\n";
    print(strong, batch / one, "strong");
  }
  std::cout << "\nBelow 100%: the all-reduce's CPU work (shared-memory sums, which a CPU trainer cannot overlap) and "
               "what is left of it after the backward pass. Assumptions and where they stop being right: "
               "docs/scaling.md\n";
  if (kv) {
    std::cout << "\n";
    for (const std::string& l : kv_lines) std::cout << l << "\n";
  }
  return 0;
}

}  // namespace

// Report an error and exit with `code`. Under several ranks an error seen by one rank must end the
// whole job (the others would wait in a collective): MPI_Abort with the same code.
//
// Errors once: a user error (status 2) that every rank meets, such as a bad run file or a missing data
// file, is printed by rank 0 alone. The other ranks wait a grace period before reporting, and rank 0's
// abort (or its non-zero exit, before the communicator exists: the launcher then ends the job) ends
// them first; an error that only they meet is still reported, after the grace period.
int launcher_value(std::initializer_list<const char*> names, int fallback) {
  for (const char* n : names)
    if (const char* v = std::getenv(n); v && *v) return std::atoi(v);
  return fallback;
}

// Print `line` (one write, so that lines of several ranks do not interleave) and abort the job.
volatile std::sig_atomic_t g_report_code = 2;
extern "C" void exit_with_report_code(int) { _exit(g_report_code); }

int report(const std::string& verb, const std::string& line, int code) {
  const int rank = g_comm ? g_comm->rank() : launcher_value({"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"}, 0);
  const int size = g_comm ? g_comm->size() : launcher_value({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"}, 1);
  if (code == 2 && size > 1 && rank != 0) {
    // Rank 0's abort (or srun's --kill-on-bad-exit) signals this process: end it quietly with its own
    // error status, not the signal's 143 (the stop handlers would only note the signal).
    g_report_code = code;
    for (int sig : {SIGTERM, SIGINT, SIGUSR1, SIGUSR2}) std::signal(sig, exit_with_report_code);
    set_stop_signals_blocked(false);
    std::this_thread::sleep_for(std::chrono::seconds(3));
  }
  const std::string text = size > 1 ? str_cat(line, " (rank ", rank, ")\n") : line + "\n";
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
  set_stop_signals_blocked(false);  // an error before train's handlers: the default actions again
  if (g_comm && g_comm->size() > 1) g_comm->abort(code, str_cat("lockstep ", verb, ": the error above"));
  return code;
}

int fail(const std::string& verb, const char* kind, const std::string& what, int code) {
  return report(verb, str_cat("lockstep ", verb, ": ", kind, ": ", what), code);
}

int run_verb(int argc, char** argv);

int main(int argc, char** argv) {
  const int rc = run_verb(argc, argv);
  g_comm.reset();  // the communicator (MPI_Finalize) ends here, after any error was reported
  return rc;
}

int run_verb(int argc, char** argv) {
  set_stop_signals_blocked(true);
  ops::ensure_passive_openmp(argv);
  // Only `train` stops cleanly on a signal; every other verb takes the default actions at once.
  if (argc < 2 || std::string(argv[1]) != "train") set_stop_signals_blocked(false);
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string verb = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  const std::map<std::string, int (*)(const std::vector<std::string>&)> verbs = {
      {"summary", cmd_summary},
      {"export", cmd_export},
      {"train", cmd_train},
      {"evaluate", cmd_evaluate},
      {"predict", cmd_predict},
      {"lr-find", cmd_lr_find},
      {"plot", cmd_plot},
      {"scale-estimate", cmd_scale_estimate},
      {"data", [](const std::vector<std::string>& a) { return data::run_data_command(a); }}};
  try {
    auto it = verbs.find(verb);
    if (it == verbs.end()) {
      std::vector<std::string> names;
      for (const auto& [k, v] : verbs) names.push_back(k);
      std::string near = nearest_name(verb, names);
      throw UserError("unknown verb '" + verb + "'; expected one of: " + join(names) +
                      (near.empty() ? "" : "; did you mean '" + near + "'?"));
    }
    return it->second(args);
  } catch (const po::error& e) {
    return report(verb, str_cat("lockstep ", verb, ": ", e.what(), " (see lockstep ", verb, " --help)"), 2);
  } catch (const UserError& e) {
    return fail(verb, "error", e.what(), 2);
  } catch (const NonFiniteLoss& e) {
    return fail(verb, "error", e.what(), kExitNonFinite);
  } catch (const CommError& e) {
    return fail(verb, "communication failure", e.what(), kExitComm);
  } catch (const std::exception& e) {
    return fail(verb, "fatal", e.what(), 1);
  }
}
