// Reading run files: a YAML node that knows which file and which dotted key it came from, so every
// error says `FILE:LINE:COL: KEY: what was expected` (and suggests the nearest valid name for a typo).
// All errors are ConfigError (exit status 2).
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"

namespace lockstep {

class ConfigNode {
 public:
  ConfigNode() = default;
  ConfigNode(YAML::Node node, std::shared_ptr<const std::string> file, std::string path);

  const YAML::Node& yaml() const { return node_; }
  const std::string& path() const { return path_; }
  const std::string& file() const { return *file_; }
  // "FILE:LINE:COL: KEY" for messages.
  std::string where() const;

  bool defined() const { return node_.IsDefined() && !node_.IsNull(); }
  bool is_map() const { return node_.IsMap(); }
  bool is_seq() const { return node_.IsSequence(); }
  bool is_scalar() const { return node_.IsScalar(); }
  bool has(const std::string& key) const;
  // Child by key (may be undefined: then `where()` points at this node).
  ConfigNode operator[](const std::string& key) const;
  ConfigNode operator[](size_t i) const;
  size_t size() const { return node_.size(); }
  std::vector<std::string> keys() const;

  // Refuse keys outside `allowed`, naming the nearest allowed one.
  void allow_keys(const std::vector<std::string>& allowed) const;
  void expect_map() const;
  void expect_seq() const;

  // Typed reads of this node.
  double as_double() const;
  int64_t as_int() const;
  bool as_bool() const;
  std::string as_string() const;
  std::vector<int64_t> as_int_list() const;
  std::vector<double> as_double_list() const;

  // Typed reads of a child, with a default when absent.
  double get(const std::string& key, double def) const;
  int64_t get(const std::string& key, int64_t def) const;
  int get(const std::string& key, int def) const { return static_cast<int>(get(key, static_cast<int64_t>(def))); }
  bool get(const std::string& key, bool def) const;
  std::string get(const std::string& key, const std::string& def) const;
  std::string get(const std::string& key, const char* def) const { return get(key, std::string(def)); }
  // Required child.
  ConfigNode require(const std::string& key) const;

  // Range checks that name the key.
  double get_in(const std::string& key, double def, double lo, double hi, bool lo_open = false,
                bool hi_open = false) const;
  int64_t get_at_least(const std::string& key, int64_t def, int64_t lo) const;
  std::string get_choice(const std::string& key, const std::string& def,
                         const std::vector<std::string>& choices) const;

  [[noreturn]] void fail(const std::string& message) const;

 private:
  YAML::Node node_;
  YAML::Node parent_;  // for the position of absent keys
  std::shared_ptr<const std::string> file_ = std::make_shared<const std::string>("<config>");
  std::string path_;
};

ConfigNode load_config_file(const std::string& file);
ConfigNode load_config_string(const std::string& text, const std::string& name = "<string>");

// Apply `--set a.b.c=VALUE` to a YAML tree (VALUE parsed as YAML, so lists and maps work).
void set_dotted(YAML::Node root, const std::string& assignment);

// The candidate closest to `word` by edit distance, or "" when none is reasonably close.
std::string nearest_name(const std::string& word, const std::vector<std::string>& candidates);
std::string join(const std::vector<std::string>& items, const std::string& sep = ", ");

}  // namespace lockstep
