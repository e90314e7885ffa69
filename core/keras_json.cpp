#include "core/keras_json.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
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

using ojson = nlohmann::ordered_json;

double f32(double x) { return double(float(x)); }

ojson batch_shape(const Shape& per_sample) {
  ojson a = ojson::array();
  a.push_back(nullptr);
  for (int64_t d : per_sample) a.push_back(d);
  return a;
}

const char* dtype_name(const Model& model) { return model.dtype() == DType::F64 ? "float64" : "float32"; }

ojson cls(const std::string& name, ojson config) {
  ojson o;
  o["class_name"] = name;
  o["config"] = std::move(config);
  return o;
}

// A run-file initializer (`he_normal`, `{constant: {value: 0.1}}`, ...) as Keras's legacy form.
ojson initializer_json(const ConfigNode& node, const std::string& def) {
  std::string name = def;
  ConfigNode args;
  if (node.defined()) {
    if (node.is_scalar()) {
      name = node.as_string();
    } else {
      name = node.keys().at(0);
      args = node[name];
    }
  }
  const bool map = args.defined() && args.is_map();
  auto num = [&](const char* k, double d) { return map ? args.get(k, d) : d; };
  ojson seed = nullptr;
  if (map && args.has("seed")) seed = args["seed"].as_int();
  ojson c = ojson::object();
  static const std::vector<std::pair<std::string, std::string>> vs = {
      {"glorot_uniform", "GlorotUniform"}, {"glorot_normal", "GlorotNormal"}, {"he_normal", "HeNormal"},
      {"he_uniform", "HeUniform"},         {"lecun_normal", "LecunNormal"},   {"lecun_uniform", "LecunUniform"}};
  for (const auto& [k, v] : vs)
    if (name == k) {
      c["seed"] = seed;
      return cls(v, c);
    }
  if (name == "zeros") return cls("Zeros", c);
  if (name == "ones") return cls("Ones", c);
  if (name == "constant") {
    c["value"] = args.defined() && args.is_scalar() ? args.as_double() : num("value", 0.0);
    return cls("Constant", c);
  }
  if (name == "random_normal" || name == "truncated_normal") {
    c["mean"] = num("mean", 0.0);
    c["stddev"] = num("stddev", 0.05);
    c["seed"] = seed;
    return cls(name == "random_normal" ? "RandomNormal" : "TruncatedNormal", c);
  }
  if (name == "random_uniform") {
    c["minval"] = num("minval", -0.05);
    c["maxval"] = num("maxval", 0.05);
    c["seed"] = seed;
    return cls("RandomUniform", c);
  }
  if (name == "variance_scaling") {
    c["scale"] = num("scale", 1.0);
    c["mode"] = map ? args.get("mode", "fan_in") : std::string("fan_in");
    std::string dist = map ? args.get("distribution", "truncated_normal") : std::string("truncated_normal");
    c["distribution"] = dist == "normal" ? "truncated_normal" : dist;
    c["seed"] = seed;
    return cls("VarianceScaling", c);
  }
  throw UserError(str_cat("initializer '", name, "' has no Keras equivalent"));
}

ojson regularizer_json(const ConfigNode& node) {
  const Regularizer r = parse_regularizer(node);
  if (!r.active()) return nullptr;
  ojson c = ojson::object();
  if (r.l1 != 0 && r.l2 != 0) {
    c["l1"] = f32(r.l1);
    c["l2"] = f32(r.l2);
    return cls("L1L2", c);
  }
  if (r.l1 != 0) {
    c["l1"] = f32(r.l1);
    return cls("L1", c);
  }
  c["l2"] = f32(r.l2);
  return cls("L2", c);
}

ojson constraint_json(const ConfigNode& node) {
  const MaxNormConstraint m = parse_constraint(node);
  if (!m.active()) return nullptr;
  ojson c;
  c["max_value"] = m.max_value;
  c["axis"] = m.axis;
  return cls("MaxNorm", c);
}

ojson input_layer_config(const Model& model, const std::string& name, const Shape& shape) {
  ojson c;
  c["batch_input_shape"] = batch_shape(shape);
  c["dtype"] = dtype_name(model);
  c["sparse"] = false;
  c["ragged"] = false;
  c["name"] = name;
  return c;
}

// The activation string of a Dense/Activation layer (Keras's function names).
std::string activation_json(const Layer& l) {
  const ConfigNode a = l.args()["activation"];
  if (a.defined() && a.is_map()) {
    double alpha = 0;
    const ops::Activation act = parse_activation(a, &alpha);
    const double def = act == ops::Activation::LeakyRelu ? 0.2 : act == ops::Activation::Elu ? 1.0 : alpha;
    if (alpha != def)
      throw UserError(str_cat("layer '", l.name(), "': activation ", activation_name(act), " with alpha ", alpha,
                              " has no Keras activation string (Keras's function uses alpha ", def,
                              "); use a linear ", l.keras_class(), " followed by a ",
                              act == ops::Activation::Elu ? "ELU" : "LeakyReLU", " layer"));
  }
  return activation_name(l.output_activation());
}

// A window argument (kernel_size, strides, dilation_rate, pool_size: an int or [h, w]) as Keras's
// [h, w]; `def` when absent or null.
ojson pair_json(const ConfigNode& a, const char* key, std::pair<int64_t, int64_t> def) {
  const ConfigNode n = a[key];
  if (n.defined()) {
    if (n.is_scalar()) def = {n.as_int(), n.as_int()};
    else if (const std::vector<int64_t> v = n.as_int_list(); v.size() == 2) def = {v[0], v[1]};
  }
  return ojson::array({def.first, def.second});
}

// ZeroPadding2D's padding (an int, [rows, columns] or [[top, bottom], [left, right]]; default 1) as
// Keras's [[top, bottom], [left, right]].
ojson padding2d_json(const ConfigNode& a) {
  int64_t p[4] = {1, 1, 1, 1};
  const ConfigNode n = a["padding"];
  if (n.defined()) {
    if (n.is_scalar()) {
      p[0] = p[1] = p[2] = p[3] = n.as_int();
    } else if (n.size() == 2 && n[0].is_scalar() && n[1].is_scalar()) {
      p[0] = p[1] = n[0].as_int();
      p[2] = p[3] = n[1].as_int();
    } else if (n.size() == 2) {
      const std::vector<int64_t> h = n[0].as_int_list(), w = n[1].as_int_list();
      if (h.size() == 2 && w.size() == 2) p[0] = h[0], p[1] = h[1], p[2] = w[0], p[3] = w[1];
    }
  }
  return ojson::array({ojson::array({p[0], p[1]}), ojson::array({p[2], p[3]})});
}

ojson seed_json(const ConfigNode& a) { return a.has("seed") && a["seed"].defined() ? ojson(a["seed"].as_int()) : ojson(nullptr); }

}  // namespace

ojson keras_layer_json(const Model& model, const Layer& l) {
  if (const auto* in = dynamic_cast<const InputLayer*>(&l))
    return cls("InputLayer", input_layer_config(model, l.name(), in->shape()));
  const ConfigNode& a = l.args();
  const std::string key = l.key();
  std::string cname = l.keras_class();
  ojson c;
  c["name"] = l.name();
  c["trainable"] = l.trainable();
  c["dtype"] = dtype_name(model);
  if (key == "flatten") {
    c["data_format"] = "channels_last";
  } else if (key == "dense") {
    const Shape& out = l.output_shape();
    c["units"] = a.defined() ? a.get("units", int64_t(0)) : (out.empty() ? 0 : out.back());
    c["activation"] = activation_json(l);
    c["use_bias"] = a.get("use_bias", true);
    c["kernel_initializer"] = initializer_json(a["kernel_initializer"], "glorot_uniform");
    c["bias_initializer"] = initializer_json(a["bias_initializer"], "zeros");
    c["kernel_regularizer"] = regularizer_json(a["kernel_regularizer"]);
    c["bias_regularizer"] = regularizer_json(a["bias_regularizer"]);
    c["activity_regularizer"] = nullptr;
    c["kernel_constraint"] = constraint_json(a["kernel_constraint"]);
    c["bias_constraint"] = nullptr;
  } else if (key == "batch_normalization") {
    // Keras stores the built axis as a list of positive axes of the batched input.
    const int rank = int(l.input_shape().size()) + 1;
    int axis = int(a.get("axis", int64_t(-1)));
    if (axis < 0) axis += rank;
    c["axis"] = ojson::array({axis});
    c["momentum"] = a.get("momentum", 0.99);
    c["epsilon"] = a.get("epsilon", 1e-3);
    c["center"] = a.get("center", true);
    c["scale"] = a.get("scale", true);
    c["beta_initializer"] = initializer_json(a["beta_initializer"], "zeros");
    c["gamma_initializer"] = initializer_json(a["gamma_initializer"], "ones");
    c["moving_mean_initializer"] = initializer_json(a["moving_mean_initializer"], "zeros");
    c["moving_variance_initializer"] = initializer_json(a["moving_variance_initializer"], "ones");
    c["beta_regularizer"] = nullptr;
    c["gamma_regularizer"] = nullptr;
    c["beta_constraint"] = nullptr;
    c["gamma_constraint"] = nullptr;
  } else if (key == "activation") {
    c["activation"] = activation_json(l);
  } else if (key == "relu") {
    c["max_value"] = nullptr;
    c["negative_slope"] = 0.0;
    c["threshold"] = 0.0;
  } else if (key == "softmax") {
    c["axis"] = -1;
  } else if (key == "leaky_relu") {
    c["alpha"] = f32(a.get("alpha", 0.3));
  } else if (key == "elu") {
    c["alpha"] = f32(a.get("alpha", 1.0));
  } else if (key == "rrelu") {
    cname = "LeakyReLU";
    c["alpha"] = f32((a.get("lower", 1.0 / 8) + a.get("upper", 1.0 / 3)) / 2);
  } else if (key == "prelu") {
    c["alpha_initializer"] = initializer_json(a["alpha_initializer"], "zeros");
    c["alpha_regularizer"] = regularizer_json(a["alpha_regularizer"]);
    c["alpha_constraint"] = constraint_json(a["alpha_constraint"]);
    if (a.has("shared_axes")) c["shared_axes"] = a["shared_axes"].as_int_list();
    else c["shared_axes"] = nullptr;
  } else if (key == "dropout" || key == "mc_dropout") {
    cname = "Dropout";
    c["rate"] = a.get("rate", 0.0);
    c["noise_shape"] = nullptr;
    c["seed"] = seed_json(a);
  } else if (key == "alpha_dropout" || key == "mc_alpha_dropout") {
    cname = "AlphaDropout";
    c["rate"] = a.get("rate", 0.0);
    c["seed"] = seed_json(a);
  } else if (key == "reshape") {
    c["target_shape"] = a.defined() && a.has("target_shape") ? ojson(a["target_shape"].as_int_list())
                                                              : ojson(l.output_shape());
  } else if (key == "concatenate") {
    c["axis"] = a.get("axis", int64_t(-1));
  } else if (key == "conv2d" || key == "depthwise_conv2d") {
    // Keys and order as tf_keras 2.x writes them. DepthwiseConv2D is written without `groups`:
    // tf_keras writes `groups: 1` for it, but Keras 3's DepthwiseConv2D refuses that key (it cannot
    // load tf_keras's own file); tf_keras's default is the same 1.
    const bool dw = key == "depthwise_conv2d";
    const std::string k = dw ? "depthwise" : "kernel";
    if (!dw) c["filters"] = a.get("filters", int64_t(0));
    c["kernel_size"] = pair_json(a, "kernel_size", {1, 1});
    c["strides"] = pair_json(a, "strides", {1, 1});
    c["padding"] = a.get("padding", "valid");
    c["data_format"] = "channels_last";
    c["dilation_rate"] = pair_json(a, "dilation_rate", {1, 1});
    if (!dw) c["groups"] = a.get("groups", int64_t(1));
    c["activation"] = activation_json(l);
    c["use_bias"] = a.get("use_bias", true);
    if (!dw) c["kernel_initializer"] = initializer_json(a["kernel_initializer"], "glorot_uniform");
    c["bias_initializer"] = initializer_json(a["bias_initializer"], "zeros");
    if (!dw) c["kernel_regularizer"] = regularizer_json(a["kernel_regularizer"]);
    c["bias_regularizer"] = regularizer_json(a["bias_regularizer"]);
    c["activity_regularizer"] = nullptr;
    if (!dw) c["kernel_constraint"] = constraint_json(a["kernel_constraint"]);
    c["bias_constraint"] = nullptr;
    if (dw) {
      c["depth_multiplier"] = a.get("depth_multiplier", int64_t(1));
      c["depthwise_initializer"] = initializer_json(a["depthwise_initializer"], "glorot_uniform");
      c["depthwise_regularizer"] = regularizer_json(a["depthwise_regularizer"]);
      c["depthwise_constraint"] = constraint_json(a["depthwise_constraint"]);
    }
  } else if (key == "max_pooling2d" || key == "average_pooling2d") {
    const ojson pool = pair_json(a, "pool_size", {2, 2});
    c["pool_size"] = pool;
    c["padding"] = a.get("padding", "valid");
    c["strides"] = pair_json(a, "strides", {pool[0].get<int64_t>(), pool[1].get<int64_t>()});
    c["data_format"] = "channels_last";
  } else if (key == "global_average_pooling2d" || key == "global_max_pooling2d") {
    c["data_format"] = "channels_last";
    c["keepdims"] = a.get("keepdims", false);
  } else if (key == "zero_padding2d") {
    c["padding"] = padding2d_json(a);
    c["data_format"] = "channels_last";
  } else if (key == "spatial_dropout2d") {
    // Keras 3's SpatialDropout2D takes only rate, data_format, seed, name and dtype (no `trainable`,
    // no `noise_shape`: it refuses tf_keras's own config); tf_keras takes these too.
    ojson s;
    s["name"] = l.name();
    s["dtype"] = dtype_name(model);
    s["rate"] = a.get("rate", 0.0);
    s["data_format"] = "channels_last";
    s["seed"] = seed_json(a);
    return cls(cname, s);
  } else if (key == "add" || key == "subtract" || key == "multiply" || key == "average" || key == "maximum" ||
             key == "minimum") {
    // The base keys only.
  } else {
    // A layer added to lockstep without its Keras config here would be written with the base keys
    // only: a file Keras cannot load, or loads with other defaults. Refuse it instead.
    throw UserError(str_cat("layer '", l.name(), "' (", key, "): no Keras export for this layer kind yet "
                            "(core/keras_json.cpp keras_layer_json)"));
  }
  return cls(cname, c);
}

std::vector<std::string> keras_export_notes(const Model& model) {
  std::vector<std::string> notes;
  for (const auto& l : model.layers()) {
    const std::string k = l->key();
    if (k == "rrelu")
      notes.push_back(str_cat("layer '", l->name(), "' (rrelu) is written as LeakyReLU with alpha = (lower + upper) / 2, "
                              "its inference function; Keras has no RReLU (training with random slopes is lost)"));
    if (k == "mc_dropout" || k == "mc_alpha_dropout")
      notes.push_back(str_cat("layer '", l->name(), "' (", k, ") is written as ", k == "mc_dropout" ? "Dropout" : "AlphaDropout",
                              ": Keras applies it only in training (MC dropout needs model(x, training=True) "
                              "or the book's custom MCDropout class)"));
  }
  return notes;
}

namespace {

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

ojson node_entry(const std::pair<std::string, int>& r, bool with_kwargs) {
  ojson e = ojson::array({r.first, r.second, 0});
  if (with_kwargs) e.push_back(ojson::object());
  return e;
}

ojson sequential_config(const Model& model) {
  const auto& layers = model.layers();
  ojson c;
  c["name"] = model.name();
  ojson ls = ojson::array();
  const std::string first = layers.empty() ? std::string("sequential") : layers[0]->name();
  ls.push_back(cls("InputLayer", input_layer_config(model, first + "_input", model.input_shape())));
  for (const auto& l : layers) ls.push_back(keras_layer_json(model, *l));
  c["layers"] = std::move(ls);
  return c;
}

ojson functional_config(const Model& model) {
  const auto& layers = model.layers();
  const auto& calls = model.calls();
  const int n_in = model.num_inputs();
  std::vector<int> consumers(size_t(n_in) + calls.size(), 0);
  for (const LayerCall& c : calls)
    for (int v : c.inputs) ++consumers[size_t(v)];
  ojson cfg;
  cfg["name"] = model.name();
  cfg["trainable"] = true;
  ojson ls = ojson::array();
  for (size_t l = 0; l < layers.size(); ++l) {
    const Layer& layer = *layers[l];
    ojson e = keras_layer_json(model, layer);
    e["name"] = layer.name();
    ojson nodes = ojson::array();
    // This layer's calls in node order (Keras: one inbound node per call).
    std::vector<std::pair<int, size_t>> mine;  // node index, call
    for (size_t k = 0; k < calls.size(); ++k)
      if (calls[k].layer == int(l)) mine.push_back({parse_ref(model.value_ref(n_in + int(k))).second, k});
    std::sort(mine.begin(), mine.end());
    for (const auto& [node, k] : mine) {
      ojson ins = ojson::array();
      for (int v : calls[k].inputs) ins.push_back(node_entry(parse_ref(model.value_ref(v)), true));
      nodes.push_back(std::move(ins));
    }
    e["inbound_nodes"] = std::move(nodes);
    ls.push_back(std::move(e));
  }
  cfg["layers"] = std::move(ls);
  ojson ins = ojson::array();
  for (int i = 0; i < n_in; ++i) ins.push_back(node_entry({model.input_name(i), 0}, false));
  cfg["input_layers"] = std::move(ins);
  ojson outs = ojson::array();
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
    outs.push_back(node_entry(ref, false));
  }
  cfg["output_layers"] = std::move(outs);
  return cfg;
}

void dump(const ojson& j, std::string* out) {
  switch (j.type()) {
    case ojson::value_t::object: {
      *out += '{';
      bool first = true;
      for (const auto& [k, v] : j.items()) {
        if (!first) *out += ", ";
        first = false;
        *out += json_quote(k) + ": ";
        dump(v, out);
      }
      *out += '}';
      return;
    }
    case ojson::value_t::array: {
      *out += '[';
      for (size_t i = 0; i < j.size(); ++i) {
        if (i) *out += ", ";
        dump(j[i], out);
      }
      *out += ']';
      return;
    }
    case ojson::value_t::string: *out += json_quote(j.get<std::string>()); return;
    case ojson::value_t::number_float: {
      const double d = j.get<double>();
      if (std::isnan(d)) *out += "NaN";
      else if (std::isinf(d)) *out += d > 0 ? "Infinity" : "-Infinity";
      else *out += j.dump();
      return;
    }
    default: *out += j.dump(); return;
  }
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

ojson keras_model_config_json(const Model& model) {
  if (model.is_sequential()) return cls("Sequential", sequential_config(model));
  return cls("Functional", functional_config(model));
}

std::string python_json_dump(const ojson& j) {
  std::string s;
  dump(j, &s);
  return s;
}

std::string keras_model_config(const Model& model) { return python_json_dump(keras_model_config_json(model)); }

std::string keras_model_json(const Model& model, const std::string& keras_version, const std::string& backend) {
  ojson j = keras_model_config_json(model);
  j["keras_version"] = keras_version;
  j["backend"] = backend;
  return python_json_dump(j);
}

}  // namespace lockstep
