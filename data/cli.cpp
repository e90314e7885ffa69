#include "data/cli.h"

#include <boost/program_options.hpp>

#include <iomanip>
#include <iostream>

#include "core/error.h"
#include "data/convert.h"
#include "data/dataset.h"
#include "data/fetch.h"

namespace lockstep::data {

namespace po = boost::program_options;

namespace {

const char* kUsage =
    "usage: lockstep data COMMAND [options]\n"
    "  convert   official files -> lockstep HDF5 dataset\n"
    "  fetch     download the official files and verify their MD5s\n"
    "  inspect   print shapes, class counts and sample labels of a dataset file\n"
    "Run `lockstep data COMMAND --help` for the options and an example.\n";

int cmd_convert(const std::vector<std::string>& args, std::ostream& out) {
  po::options_description desc(
      "lockstep data convert --format fashion-mnist|mnist|cifar10 --src DIR --out FILE.h5\n\n"
      "Converts the official files in DIR (Fashion-MNIST/MNIST: the four IDX files, gzipped or not;\n"
      "CIFAR-10: data_batch_1..5.bin, test_batch.bin, batches.meta.txt) into the lockstep HDF5 layout.\n"
      "The output is written to FILE.h5.tmp and renamed only when complete.\n\n"
      "Example:\n  lockstep data convert --format fashion-mnist --src ~/data/fashion --out fashion-mnist.h5\n\n"
      "Options");
  std::string format, src, dst;
  int level = 4;
  desc.add_options()("help,h", "show this help")(
      "format", po::value(&format)->required(), "fashion-mnist, mnist or cifar10")(
      "src", po::value(&src)->required(), "folder with the official files")(
      "out", po::value(&dst)->required(), "output HDF5 file")(
      "partial", "cifar10: accept fewer than five training batches")(
      "compression", po::value(&level)->default_value(4), "gzip level 0-9 of the image chunks");
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(desc).run(), vm);
  if (vm.count("help")) {
    out << desc << "\n";
    return 0;
  }
  po::notify(vm);
  LS_REQUIRE(level >= 0 && level <= 9, DataError, "--compression must be 0..9, got ", level);
  ConvertOptions opt;
  opt.format = parse_source_format(format);
  opt.src_dir = src;
  opt.out_file = dst;
  opt.partial = vm.count("partial") > 0;
  opt.compression_level = level;
  RawDataset ds = convert(opt);
  out << "wrote " << dst << ": train " << ds.train.n << " x " << ds.train.h << "x" << ds.train.w << "x" << ds.train.c
      << ", test " << ds.test.n << ", " << ds.class_names.size() << " classes\n";
  return 0;
}

int cmd_fetch(const std::vector<std::string>& args, std::ostream& out) {
  po::options_description desc(
      "lockstep data fetch NAME --dir DIR [--mirror URL]\n\n"
      "Downloads the official files of NAME (fashion-mnist, mnist, cifar10) into DIR and checks the\n"
      "MD5 checksums the distributions publish. --mirror (or LOCKSTEP_DATA_MIRROR) replaces the base URL,\n"
      "e.g. file:///srv/datasets/fashion-mnist/ or http://127.0.0.1:8000/.\n\n"
      "Example:\n  lockstep data fetch fashion-mnist --dir ~/data/fashion\n"
      "  lockstep data convert --format fashion-mnist --src ~/data/fashion --out fashion-mnist.h5\n\n"
      "Options");
  std::string name, dir, mirror;
  desc.add_options()("help,h", "show this help")("name", po::value(&name)->required(), "dataset name")(
      "dir", po::value(&dir)->required(), "target folder")("mirror", po::value(&mirror), "base URL to fetch from");
  po::positional_options_description pos;
  pos.add("name", 1);
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(desc).positional(pos).run(), vm);
  if (vm.count("help")) {
    out << desc << "\n";
    return 0;
  }
  po::notify(vm);
  SourceFormat f = parse_source_format(name);
  FetchSpec spec = fetch_spec(f);
  fetch(spec, dir, mirror, &out);
  out << "done; convert with: lockstep data convert --format " << spec.name << " --src " << dir
      << (spec.convert_src_hint == "." ? "" : "/" + spec.convert_src_hint) << " --out " << spec.name << ".h5"
      << (f == SourceFormat::Cifar10 ? "" : "") << "\n";
  return 0;
}

int cmd_inspect(const std::vector<std::string>& args, std::ostream& out) {
  po::options_description desc(
      "lockstep data inspect FILE.h5\n\n"
      "Prints the layout, shapes, per-class counts and the first labels of a lockstep dataset file.\n\n"
      "Example:\n  lockstep data inspect fashion-mnist.h5\n\nOptions");
  std::string file;
  desc.add_options()("help,h", "show this help")("file", po::value(&file)->required(), "dataset file");
  po::positional_options_description pos;
  pos.add("file", 1);
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(desc).positional(pos).run(), vm);
  if (vm.count("help")) {
    out << desc << "\n";
    return 0;
  }
  po::notify(vm);
  FileSummary s = summarize_file(file);
  out << file << "\n";
  if (!s.name.empty()) out << "  name:    " << s.name << "\n";
  if (!s.source.empty()) out << "  source:  " << s.source << "\n";
  if (!s.source_md5.empty()) out << "  md5:     " << s.source_md5 << "\n";
  out << "  classes: " << s.class_names.size() << "\n";
  for (const SplitSummary& sp : s.splits) {
    out << "  /" << sp.name << "/x  " << sp.x_type << " [";
    for (size_t i = 0; i < sp.x_dims.size(); ++i) out << (i ? ", " : "") << sp.x_dims[i];
    out << "]    /" << sp.name << "/y  " << sp.y_type << "\n";
    out << "    class counts:\n";
    for (size_t k = 0; k < sp.class_counts.size(); ++k)
      out << "      " << std::setw(3) << k << " " << std::left << std::setw(14)
          << (k < s.class_names.size() ? s.class_names[k] : "") << std::right << std::setw(8) << sp.class_counts[k]
          << "\n";
    out << "    first labels:";
    for (int64_t v : sp.first_labels) out << " " << v;
    out << "\n";
  }
  return 0;
}

}  // namespace

int run_data_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    (args.empty() ? err : out) << kUsage;
    return args.empty() ? 2 : 0;
  }
  const std::string& cmd = args[0];
  std::vector<std::string> rest(args.begin() + 1, args.end());
  try {
    if (cmd == "convert") return cmd_convert(rest, out);
    if (cmd == "fetch") return cmd_fetch(rest, out);
    if (cmd == "inspect") return cmd_inspect(rest, out);
    err << "lockstep data: unknown command '" << cmd << "'\n" << kUsage;
    return 2;
  } catch (const po::error& e) {
    err << "lockstep data " << cmd << ": " << e.what() << " (see `lockstep data " << cmd << " --help`)\n";
    return 2;
  } catch (const UserError& e) {
    err << "error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    err << "internal error: " << e.what() << "\n";
    return 1;
  }
}

int run_data_command(const std::vector<std::string>& args) { return run_data_command(args, std::cout, std::cerr); }

}  // namespace lockstep::data
