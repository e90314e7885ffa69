#include "core/summary.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>
#include <utility>

namespace lockstep {
namespace {

using ShapeList = std::vector<std::vector<int64_t>>;

// Python's str() of a shape tuple with a None batch axis: "(None, 28, 28)", "(None,)".
std::string tuple_str(const std::vector<int64_t>& shape) {
  std::string s = "(None";
  if (shape.empty()) return s + ",)";
  for (int64_t d : shape) s += ", " + std::to_string(d);
  return s + ")";
}

std::string list_str(const ShapeList& shapes) {
  std::string s = "[";
  for (size_t i = 0; i < shapes.size(); ++i) s += (i ? ", " : "") + tuple_str(shapes[i]);
  return s + "]";
}

// Keras's layer.output_shape as print_summary str()s it: an InputLayer's is a list of one tuple.
std::string output_shape_str(const SummaryRow& r, const char* unknown) {
  if (r.output_shapes.empty()) return unknown;
  if (r.output_shapes.size() == 1 && r.keras_class != "InputLayer") return tuple_str(r.output_shapes[0]);
  return list_str(r.output_shapes);
}

// Python's repr() of a str (ASCII; other bytes pass through).
std::string py_repr(const std::string& s) {
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == '\\' || c == q) out += '\\', out += char(c);
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else out += char(c);
  }
  return out + q;
}

// Python's str() of a list of str: "['input_1[0][0]', 'input_2[0][0]']".
std::string str_list(const std::vector<std::string>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + py_repr(v[i]);
  return s + "]";
}

// layer_utils.print_summary's print_row (nested_level 0), line by line.
void print_row(std::ostringstream& os, std::vector<std::string> left, const std::vector<int>& positions) {
  auto any_left = [&] { return std::any_of(left.begin(), left.end(), [](const std::string& s) { return !s.empty(); }); };
  while (any_left()) {
    std::string line;
    for (size_t col = 0; col < left.size(); ++col) {
      const int start = col > 0 ? positions[col - 1] : 0;
      const int end = positions[col];
      const bool last = col == positions.size() - 1;
      const int space = last ? 0 : 2;
      int cutoff = end - start - space - (last ? 0 : 1);
      std::string fit = left[col].substr(0, size_t(std::max(cutoff, 0)));
      // Break after the end of a tuple/dict/list/str item, at the earliest such place.
      size_t best = std::string::npos;
      for (const char* brk : {"),", "},", "],", "',"}) {
        const size_t at = fit.find(brk);
        if (at != std::string::npos) best = std::min(best, at + 2);
      }
      if (best != std::string::npos) {
        cutoff = int(best);
        fit = fit.substr(0, best);
      }
      if (col == 0) line += " ";
      line += fit;
      line += std::string(size_t(space), ' ');
      left[col] = left[col].substr(std::min(left[col].size(), size_t(std::max(cutoff, 0))));
      if (int(line.size()) < positions[col]) line += std::string(size_t(positions[col]) - line.size(), ' ');
    }
    os << line << "\n";
  }
}

// readable_memory_size: "{:.2f} {unit}" in steps of 1024.
std::string readable_memory_size(double bytes) {
  static const char* units[] = {"Byte", "KB", "MB", "GB", "TB", "PB"};
  char buf[64];
  for (const char* unit : units) {
    if (bytes / 1024 < 1) {
      std::snprintf(buf, sizeof buf, "%.2f %s", bytes, unit);
      return buf;
    }
    bytes /= 1024;
  }
  std::snprintf(buf, sizeof buf, "%.2f %s", bytes, units[5]);
  return buf;
}

std::string summary_table(const std::string& model_name, const std::vector<SummaryRow>& rows,
                          int64_t total_params, int64_t trainable_params, bool functional) {
  const int width = functional ? 98 : 65;
  const std::vector<int> positions = functional ? std::vector<int>{29, 58, 68, 98} : std::vector<int>{29, 55, 65};
  std::vector<std::string> header = {"Layer (type)", "Output Shape", "Param #"};
  if (functional) header.push_back("Connected to");
  std::ostringstream os;
  os << "Model: \"" << model_name << "\"\n" << std::string(size_t(width), '_') << "\n";
  print_row(os, header, positions);
  os << std::string(size_t(width), '=') << "\n";
  for (const SummaryRow& r : rows) {
    std::vector<std::string> fields = {r.name + " (" + r.keras_class + ")", output_shape_str(r, "multiple"),
                                       std::to_string(r.params)};
    if (functional) fields.push_back(str_list(r.connected_to));
    print_row(os, fields, positions);
    os << std::string(size_t(width), ' ') << "\n";
  }
  os << std::string(size_t(width), '=') << "\n";
  const int64_t non_trainable = total_params - trainable_params;
  auto count = [](int64_t n) { return std::to_string(n) + " (" + readable_memory_size(double(n) * 4) + ")"; };
  os << "Total params: " << count(total_params) << "\n";
  os << "Trainable params: " << count(trainable_params) << "\n";
  os << "Non-trainable params: " << count(non_trainable) << "\n";
  os << std::string(size_t(width), '_') << "\n";
  return os.str();
}

// A DOT double-quoted string (DOT's only escape there is \", other backslashes stay as written).
std::string dot_quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '\\';
    out += c;
  }
  return out + "\"";
}

// Escapes the characters a record label gives meaning to.
std::string record_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '{' || c == '}' || c == '|' || c == '<' || c == '>') out += '\\';
    out += c;
  }
  return out;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

std::string read_all(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::string functional_summary(const std::string& model_name, const std::vector<SummaryRow>& rows,
                               int64_t total_params, int64_t trainable_params) {
  return summary_table(model_name, rows, total_params, trainable_params, true);
}

std::string sequential_summary(const std::string& model_name, const std::vector<SummaryRow>& rows,
                               int64_t total_params, int64_t trainable_params) {
  return summary_table(model_name, rows, total_params, trainable_params, false);
}

std::string graph_dot(const std::string& model_name, const std::vector<SummaryRow>& rows,
                      const std::vector<std::vector<std::vector<int64_t>>>& input_shapes) {
  if (!input_shapes.empty() && input_shapes.size() != rows.size())
    throw std::invalid_argument("graph_dot: " + std::to_string(input_shapes.size()) + " input shape entries for " +
                                std::to_string(rows.size()) + " rows");
  std::set<std::string> names;
  for (const SummaryRow& r : rows) names.insert(r.name);
  std::ostringstream os;
  os << "digraph " << dot_quote(model_name) << " {\n";
  os << "  graph [rankdir=TB, concentrate=true, dpi=96];\n";
  os << "  node [shape=record];\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const SummaryRow& r = rows[i];
    std::string in = "?";
    if (!input_shapes.empty() && !input_shapes[i].empty()) {
      const ShapeList& s = input_shapes[i];
      in = s.size() == 1 && r.keras_class != "InputLayer" ? tuple_str(s[0]) : list_str(s);
    }
    const std::string label = "{" + record_escape(r.name + ": " + r.keras_class) + "|{input:|" + record_escape(in) +
                              "}|{output:|" + record_escape(output_shape_str(r, "?")) + "}}";
    os << "  " << dot_quote(r.name) << " [label=" << dot_quote(label) << "];\n";
  }
  std::set<std::pair<std::string, std::string>> drawn;
  for (const SummaryRow& r : rows) {
    for (const std::string& c : r.connected_to) {
      const std::string from = c.substr(0, c.find('['));
      if (!names.count(from))
        throw std::invalid_argument("graph_dot: " + r.name + " is connected to " + c + ", but no row is named " + from);
      if (!drawn.insert({from, r.name}).second) continue;
      os << "  " << dot_quote(from) << " -> " << dot_quote(r.name) << ";\n";
    }
  }
  os << "}\n";
  return os.str();
}

void render_dot(const std::string& dot_text, const std::string& out_path) {
  namespace fs = std::filesystem;
  std::string ext = fs::path(out_path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  std::string format;
  if (ext == ".svg") format = "svg";
  else if (ext == ".png") format = "png";
  else if (ext == ".pdf") format = "pdf";
  else
    throw std::runtime_error("render_dot: cannot write " + out_path + ": unsupported extension '" + ext +
                             "' (use .svg, .png or .pdf)");
  if (std::system("command -v dot >/dev/null 2>&1") != 0)
    throw std::runtime_error("render_dot: cannot write " + out_path +
                             ": Graphviz's `dot` is not installed (install Graphviz: apt-get install graphviz)");

  std::string tmpl = (fs::temp_directory_path() / "lockstep-dot-XXXXXX").string();
  const int fd = mkstemp(tmpl.data());
  if (fd < 0) throw std::runtime_error("render_dot: cannot write " + out_path + ": no temporary file");
  ::close(fd);
  const fs::path dot_file = tmpl, err_file = tmpl + ".err";
  {
    std::ofstream f(dot_file, std::ios::binary);
    f << dot_text;
  }
  const std::string cmd = "dot -T" + format + " -o " + shell_quote(out_path) + " " + shell_quote(dot_file.string()) +
                          " 2>" + shell_quote(err_file.string());
  const int status = std::system(cmd.c_str());
  const std::string err = read_all(err_file);
  std::error_code ec;
  fs::remove(dot_file, ec);
  fs::remove(err_file, ec);
  const int code = status == -1 ? -1 : (WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  if (code == 127)
    throw std::runtime_error("render_dot: cannot write " + out_path +
                             ": Graphviz's `dot` is not installed (install Graphviz: apt-get install graphviz)");
  if (code != 0)
    throw std::runtime_error("render_dot: `dot -T" + format + "` failed writing " + out_path + " (exit " +
                             std::to_string(code) + ")" + (err.empty() ? "" : ": " + err));
}

}  // namespace lockstep
