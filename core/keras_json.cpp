#include "core/keras_json.h"

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/layers.h"

namespace lockstep {

namespace {

// Appends one UTF-8 sequence starting at s[i] as \uXXXX (surrogate pairs above U+FFFF); a malformed
// byte is escaped on its own (Latin-1 reading).
size_t escape_utf8(const std::string& s, size_t i, std::string* out) {
  const auto u = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = u(i);
  uint32_t cp = c;
  size_t len = 1;
  if (c >= 0xC0 && c < 0xE0) len = 2, cp = c & 0x1F;
  else if (c >= 0xE0 && c < 0xF0) len = 3, cp = c & 0x0F;
  else if (c >= 0xF0 && c < 0xF8) len = 4, cp = c & 0x07;
  bool ok = len > 1 && i + len <= s.size();
  for (size_t k = 1; ok && k < len; ++k) {
    if ((u(i + k) & 0xC0) != 0x80) ok = false;
    else cp = (cp << 6) | (u(i + k) & 0x3F);
  }
  if (!ok) cp = c, len = 1;
  char buf[16];
  if (cp >= 0x10000) {
    cp -= 0x10000;
    std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
  } else {
    std::snprintf(buf, sizeof buf, "\\u%04x", cp);
  }
  *out += buf;
  return len;
}

std::string shape_json(const Shape& per_sample) {
  std::string s = "[null";
  for (int64_t d : per_sample) s += ", " + std::to_string(d);
  return s + "]";
}

std::string int_list(const Shape& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

const char* bool_json(bool b) { return b ? "true" : "false"; }

std::string dtype_json(const Model& model) { return model.dtype() == DType::F64 ? "\"float64\"" : "\"float32\""; }

bool has_weight(const Layer& l, const std::string& name) {
  for (const Weight& w : l.weights())
    if (w.name == name) return true;
  return false;
}

// The keys after name/trainable/dtype (and batch_input_shape) that the public Layer interface gives.
std::string layer_extra_keys(const Layer& l) {
  const std::string cls = l.keras_class();
  if (cls == "Flatten") return ", \"data_format\": \"channels_last\"";
  if (cls == "Dense") {
    const Shape& out = l.output_shape();
    return str_cat(", \"units\": ", out.empty() ? 0 : out.back(), ", \"activation\": ",
                   json_quote(activation_name(l.output_activation())), ", \"use_bias\": ", bool_json(has_weight(l, "bias")));
  }
  if (cls == "Activation") return ", \"activation\": " + json_quote(activation_name(l.output_activation()));
  if (cls == "BatchNormalization")
    return str_cat(", \"center\": ", bool_json(has_weight(l, "beta")), ", \"scale\": ", bool_json(has_weight(l, "gamma")));
  if (cls == "Reshape") return ", \"target_shape\": " + int_list(l.output_shape());
  return "";
}

std::string layer_config(const Model& model, const Layer& l, const std::string& batch_input_shape) {
  std::string c = "{\"name\": " + json_quote(l.name()) + ", \"trainable\": " + bool_json(l.trainable()) +
                  ", \"dtype\": " + dtype_json(model);
  if (!batch_input_shape.empty()) c += ", \"batch_input_shape\": " + batch_input_shape;
  return c + layer_extra_keys(l) + "}";
}

std::string input_layer_config(const Model& model, const std::string& name, const Shape& shape) {
  return "{\"batch_input_shape\": " + shape_json(shape) + ", \"dtype\": " + dtype_json(model) +
         ", \"sparse\": false, \"ragged\": false, \"name\": " + json_quote(name) + "}";
}

// Model::value_ref's "name[node][0]" as (name, node).
std::pair<std::string, int> parse_ref(const std::string& ref) {
  const std::string suffix = "[0]";
  LS_CHECK(ref.size() > suffix.size() && ref.compare(ref.size() - suffix.size(), suffix.size(), suffix) == 0,
           "unexpected value reference '", ref, "'");
  const std::string head = ref.substr(0, ref.size() - suffix.size());  // name[node]
  const size_t open = head.rfind('[');
  LS_CHECK(open != std::string::npos && head.back() == ']', "unexpected value reference '", ref, "'");
  return {head.substr(0, open), std::stoi(head.substr(open + 1, head.size() - open - 2))};
}

std::string node_entry(const std::pair<std::string, int>& r, bool with_kwargs) {
  return "[" + json_quote(r.first) + ", " + std::to_string(r.second) + ", 0" + (with_kwargs ? ", {}]" : "]");
}

std::string sequential_config(const Model& model) {
  const auto& layers = model.layers();
  std::string s = "{\"name\": " + json_quote(model.name()) + ", \"layers\": [";
  const std::string first = layers.empty() ? std::string("sequential") : layers[0]->name();
  s += "{\"class_name\": \"InputLayer\", \"config\": " + input_layer_config(model, first + "_input", model.input_shape()) + "}";
  for (size_t i = 0; i < layers.size(); ++i)
    s += ", {\"class_name\": " + json_quote(layers[i]->keras_class()) +
         ", \"config\": " + layer_config(model, *layers[i], i == 0 ? shape_json(model.input_shape()) : "") + "}";
  return s + "]}";
}

std::string functional_config(const Model& model) {
  const auto& layers = model.layers();
  const auto& calls = model.calls();
  const int n_in = model.num_inputs();
  std::vector<int> consumers(size_t(n_in) + calls.size(), 0);
  for (const LayerCall& c : calls)
    for (int v : c.inputs) ++consumers[size_t(v)];
  std::string s = "{\"name\": " + json_quote(model.name()) + ", \"trainable\": true, \"layers\": [";
  for (size_t l = 0; l < layers.size(); ++l) {
    const Layer& layer = *layers[l];
    if (l) s += ", ";
    s += "{\"class_name\": " + json_quote(layer.keras_class()) + ", \"config\": ";
    if (const auto* in = dynamic_cast<const InputLayer*>(&layer)) s += input_layer_config(model, layer.name(), in->shape());
    else s += layer_config(model, layer, "");
    s += ", \"name\": " + json_quote(layer.name()) + ", \"inbound_nodes\": [";
    // This layer's calls in node order (Keras: one inbound node per call).
    std::vector<std::pair<int, size_t>> mine;  // node index, call
    for (size_t k = 0; k < calls.size(); ++k)
      if (calls[k].layer == int(l)) mine.push_back({parse_ref(model.value_ref(n_in + int(k))).second, k});
    std::sort(mine.begin(), mine.end());
    for (size_t j = 0; j < mine.size(); ++j) {
      s += j ? ", [" : "[";
      const auto& ins = calls[mine[j].second].inputs;
      for (size_t i = 0; i < ins.size(); ++i) s += (i ? ", " : "") + node_entry(parse_ref(model.value_ref(ins[i])), true);
      s += "]";
    }
    s += "]}";
  }
  s += "], \"input_layers\": [";
  for (int i = 0; i < n_in; ++i) s += (i ? ", " : "") + node_entry({model.input_name(i), 0}, false);
  s += "], \"output_layers\": [";
  for (int j = 0; j < model.num_outputs(); ++j) {
    // The output's value is not public: take the call of the output's layer that nothing consumes
    // (else its last call); an output that is a model input is that input's node 0.
    const std::string name = model.output_name(j);
    std::pair<std::string, int> ref{name, 0};
    for (size_t k = 0; k < calls.size(); ++k) {
      if (layers[size_t(calls[k].layer)]->name() != name) continue;
      const int v = n_in + int(k);
      ref = parse_ref(model.value_ref(v));
      if (consumers[size_t(v)] == 0) break;
    }
    s += (j ? ", " : "") + node_entry(ref, false);
  }
  return s + "]}";
}

}  // namespace

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c >= 0x80) {
          i += escape_utf8(s, i, &out);
          continue;
        }
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += char(c);
        }
    }
    ++i;
  }
  return out + "\"";
}

std::string keras_model_config(const Model& model) {
  if (model.is_sequential()) return "{\"class_name\": \"Sequential\", \"config\": " + sequential_config(model) + "}";
  return "{\"class_name\": \"Functional\", \"config\": " + functional_config(model) + "}";
}

std::string keras_model_json(const Model& model, const std::string& keras_version, const std::string& backend) {
  std::string s = keras_model_config(model);
  s.pop_back();  // the closing brace
  return s + ", \"keras_version\": " + json_quote(keras_version) + ", \"backend\": " + json_quote(backend) + "}";
}

}  // namespace lockstep
