// The `lockstep` command: one binary for every verb; runs as a single process, under mpirun, or
// under srun. Exit status: 0 success, 2 bad input (run file, data, checkpoint, flags), 1 any other
// failure (see core/error.h).
#include <boost/program_options.hpp>

#include <cstdio>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "core/model.h"
#include "core/ops.h"
#include "data/cli.h"

namespace po = boost::program_options;
using namespace lockstep;

namespace {

const char* kUsage = R"(usage: lockstep VERB [ARGS] [--help]

verbs:
  summary RUN.yaml          print the model's table (layers, output shapes, parameter counts)
  data convert|fetch|inspect  datasets: official files -> lockstep's HDF5 layout, download, inspect

Run `lockstep VERB --help` for a verb's options and examples.
)";

// Options every verb shares.
void add_common(po::options_description& d, int& threads, std::vector<std::string>& sets) {
  d.add_options()("help,h", "show this help")                                                     //
      ("threads", po::value<int>(&threads)->default_value(0), "CPU threads per rank (0: the cores this rank owns)")  //
      ("set", po::value<std::vector<std::string>>(&sets)->composing(),
       "override a key of the run file: --set train.epochs=1 (repeatable)");
}

ConfigNode load_run_file(const std::string& path, const std::vector<std::string>& sets) {
  ConfigNode cfg = load_config_file(path);
  for (const auto& s : sets) set_dotted(cfg.yaml(), s);
  return cfg;
}

int cmd_summary(const std::vector<std::string>& args) {
  int threads = 0;
  std::vector<std::string> sets;
  std::string run_file;
  po::options_description d("lockstep summary RUN.yaml [options]\n\n"
                            "Prints the model's table in Keras's model.summary() form.\n"
                            "Example:\n  lockstep summary launch/configs/fashion_mnist_mlp.yaml\n\nOptions");
  add_common(d, threads, sets);
  d.add_options()("run-file", po::value<std::string>(&run_file), "the run file");
  po::positional_options_description pos;
  pos.add("run-file", 1);
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(d).positional(pos).run(), vm);
  po::notify(vm);
  if (vm.count("help")) {
    std::cout << d;
    return 0;
  }
  if (run_file.empty()) throw UserError("summary: a run file is required (lockstep summary RUN.yaml)");
  ConfigNode cfg = load_run_file(run_file, sets);
  auto model = Model::from_config(cfg["model"]);
  std::cout << model->summary();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  ops::ensure_passive_openmp(argv);
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string verb = argv[1];
  std::vector<std::string> args(argv + 2, argv + argc);
  const std::map<std::string, int (*)(const std::vector<std::string>&)> verbs = {
      {"summary", cmd_summary},
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
    std::cerr << "lockstep " << verb << ": " << e.what() << " (see lockstep " << verb << " --help)\n";
    return 2;
  } catch (const UserError& e) {
    std::cerr << "lockstep " << verb << ": error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "lockstep " << verb << ": fatal: " << e.what() << "\n";
    return 1;
  }
}
