#include "core/config.h"

#include <algorithm>
#include <fstream>
#include <sstream>

namespace lockstep {

ConfigNode::ConfigNode(YAML::Node node, std::shared_ptr<const std::string> file, std::string path)
    : node_(node), file_(std::move(file)), path_(std::move(path)) {}

std::string ConfigNode::where() const {
  YAML::Mark m;
  if (node_.IsDefined()) m = node_.Mark();
  if ((m.line < 0 || !node_.IsDefined()) && parent_.IsDefined()) m = parent_.Mark();
  std::string s = *file_;
  if (m.line >= 0) s += str_cat(":", m.line + 1, ":", m.column + 1);
  if (!path_.empty()) s += ": " + path_;
  return s;
}

void ConfigNode::fail(const std::string& message) const { throw ConfigError(where() + ": " + message); }

bool ConfigNode::has(const std::string& key) const {
  return node_.IsMap() && node_[key].IsDefined();
}

namespace {
// yaml-cpp returns an *invalid* node for a missing key of a const map, and most calls on an invalid
// node throw; we keep only valid nodes (an Undefined one stands for "absent").
YAML::Node valid_or_undefined(const YAML::Node& n) {
  return n.IsDefined() ? n : YAML::Node(YAML::NodeType::Undefined);
}
}  // namespace

ConfigNode ConfigNode::operator[](const std::string& key) const {
  ConfigNode c(node_.IsMap() ? valid_or_undefined(node_[key]) : YAML::Node(YAML::NodeType::Undefined), file_,
               path_.empty() ? key : path_ + "." + key);
  c.parent_ = node_;
  return c;
}

ConfigNode ConfigNode::operator[](size_t i) const {
  ConfigNode c(node_.IsSequence() && i < node_.size() ? valid_or_undefined(node_[i])
                                                       : YAML::Node(YAML::NodeType::Undefined),
               file_, str_cat(path_, "[", i, "]"));
  c.parent_ = node_;
  return c;
}

std::vector<std::string> ConfigNode::keys() const {
  std::vector<std::string> k;
  if (node_.IsMap())
    for (auto it = node_.begin(); it != node_.end(); ++it) k.push_back(it->first.as<std::string>());
  return k;
}

void ConfigNode::expect_map() const {
  if (!node_.IsMap()) fail("expected a mapping of keys to values");
}
void ConfigNode::expect_seq() const {
  if (!node_.IsSequence()) fail("expected a list");
}

void ConfigNode::allow_keys(const std::vector<std::string>& allowed) const {
  if (!node_.IsDefined() || node_.IsNull()) return;
  expect_map();
  for (auto it = node_.begin(); it != node_.end(); ++it) {
    std::string k = it->first.as<std::string>();
    if (std::find(allowed.begin(), allowed.end(), k) != allowed.end()) continue;
    ConfigNode c(it->first, file_, path_.empty() ? k : path_ + "." + k);  // points at the key itself
    std::string msg = "unknown key '" + k + "'; expected one of: " + join(allowed);
    std::string near = nearest_name(k, allowed);
    if (!near.empty()) msg += "; did you mean '" + near + "'?";
    c.fail(msg);
  }
}

namespace {
template <typename T>
T convert(const ConfigNode& n, const char* what) {
  if (!n.yaml().IsScalar()) n.fail(std::string("expected ") + what);
  try {
    return n.yaml().as<T>();
  } catch (const YAML::Exception&) {
    n.fail(std::string("expected ") + what + ", got '" + n.yaml().Scalar() + "'");
  }
}
}  // namespace

double ConfigNode::as_double() const { return convert<double>(*this, "a number"); }
int64_t ConfigNode::as_int() const { return convert<int64_t>(*this, "an integer"); }
bool ConfigNode::as_bool() const { return convert<bool>(*this, "true or false"); }
std::string ConfigNode::as_string() const { return convert<std::string>(*this, "a string"); }

std::vector<int64_t> ConfigNode::as_int_list() const {
  expect_seq();
  std::vector<int64_t> v;
  for (size_t i = 0; i < size(); ++i) v.push_back((*this)[i].as_int());
  return v;
}
std::vector<double> ConfigNode::as_double_list() const {
  expect_seq();
  std::vector<double> v;
  for (size_t i = 0; i < size(); ++i) v.push_back((*this)[i].as_double());
  return v;
}

double ConfigNode::get(const std::string& key, double def) const {
  ConfigNode c = (*this)[key];
  return c.defined() ? c.as_double() : def;
}
int64_t ConfigNode::get(const std::string& key, int64_t def) const {
  ConfigNode c = (*this)[key];
  return c.defined() ? c.as_int() : def;
}
bool ConfigNode::get(const std::string& key, bool def) const {
  ConfigNode c = (*this)[key];
  return c.defined() ? c.as_bool() : def;
}
std::string ConfigNode::get(const std::string& key, const std::string& def) const {
  ConfigNode c = (*this)[key];
  return c.defined() ? c.as_string() : def;
}

ConfigNode ConfigNode::require(const std::string& key) const {
  ConfigNode c = (*this)[key];
  if (!c.defined()) c.fail("this key is required");
  return c;
}

double ConfigNode::get_in(const std::string& key, double def, double lo, double hi, bool lo_open,
                          bool hi_open) const {
  double v = get(key, def);
  bool ok = (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
  if (!ok)
    (*this)[key].fail(str_cat("expected a value in ", lo_open ? "(" : "[", lo, ", ", hi, hi_open ? ")" : "]",
                              ", got ", v));
  return v;
}

int64_t ConfigNode::get_at_least(const std::string& key, int64_t def, int64_t lo) const {
  int64_t v = get(key, def);
  if (v < lo) (*this)[key].fail(str_cat("expected an integer >= ", lo, ", got ", v));
  return v;
}

std::string ConfigNode::get_choice(const std::string& key, const std::string& def,
                                   const std::vector<std::string>& choices) const {
  std::string v = get(key, def);
  if (std::find(choices.begin(), choices.end(), v) == choices.end()) {
    std::string msg = "unknown value '" + v + "'; expected one of: " + join(choices);
    std::string near = nearest_name(v, choices);
    if (!near.empty()) msg += "; did you mean '" + near + "'?";
    (*this)[key].fail(msg);
  }
  return v;
}

ConfigNode load_config_file(const std::string& file) {
  std::ifstream in(file);
  if (!in) throw ConfigError(file + ": cannot open the run file for reading");
  std::stringstream ss;
  ss << in.rdbuf();
  return load_config_string(ss.str(), file);
}

ConfigNode load_config_string(const std::string& text, const std::string& name) {
  auto file = std::make_shared<const std::string>(name);
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::ParserException& e) {
    throw ConfigError(str_cat(name, ":", e.mark.line + 1, ":", e.mark.column + 1, ": not valid YAML: ", e.msg));
  }
  ConfigNode n(root, file, "");
  if (root.IsDefined() && !root.IsNull()) n.expect_map();
  return n;
}

void set_dotted(YAML::Node root, const std::string& assignment) {
  auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("--set " + assignment + ": expected KEY=VALUE, e.g. --set train.epochs=1");
  std::string key = assignment.substr(0, eq), value = assignment.substr(eq + 1);
  YAML::Node parsed;
  try {
    parsed = YAML::Load(value);
  } catch (const YAML::Exception&) {
    parsed = YAML::Node(value);
  }
  std::vector<std::string> parts;
  std::stringstream ss(key);
  for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
  // yaml-cpp nodes are handles, so walking with copies mutates the tree.
  std::vector<YAML::Node> chain{root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node cur = chain.back();
    if (cur.IsDefined() && !cur.IsNull() && !cur.IsMap())
      throw ConfigError("--set " + assignment + ": '" + parts[i] + "' is inside a value that is not a mapping");
    YAML::Node next = cur[parts[i]];
    chain.push_back(next);
  }
  YAML::Node last = chain.back();
  if (last.IsDefined() && !last.IsNull() && !last.IsMap())
    throw ConfigError("--set " + assignment + ": the parent of '" + parts.back() + "' is not a mapping");
  last[parts.back()] = parsed;
}

static size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string nearest_name(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = SIZE_MAX;
  for (const auto& c : candidates) {
    size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  size_t limit = std::max<size_t>(2, word.size() / 3);
  return best_d <= limit ? best : "";
}

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string s;
  for (size_t i = 0; i < items.size(); ++i) s += (i ? sep : "") + items[i];
  return s;
}

}  // namespace lockstep
