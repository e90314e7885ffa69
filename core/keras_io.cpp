#include "core/keras_io.h"

#include <hdf5.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/hdf5_handle.h"
#include "core/keras_json.h"
#include "core/ops.h"

namespace lockstep {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

constexpr const char* kKerasVersion = "2.12.0";  // what the exported files claim (any 2.x loads, §10.5)

using hdf5::Handle;
using hdf5::Quiet;

// ---- writing (§5.2) ------------------------------------------------------------------------------

void attr_vlen(hid_t obj, const char* name, const std::string& value, H5T_cset_t cset) {
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, cset);
  H5Tset_strpad(type, H5T_STR_NULLTERM);
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  const char* p = value.c_str();
  if (attr < 0 || H5Awrite(attr, type, &p) < 0) throw Error(str_cat("writing attribute ", name));
}

// 1-D fixed-length NULLPAD ASCII; an empty list is float64 with dataspace (0,) as h5py writes it.
void attr_names(hid_t obj, const char* name, const std::vector<std::string>& values) {
  if (values.empty()) {
    hsize_t n = 0;
    Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose);
    Handle attr(H5Acreate2(obj, name, H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
    if (attr < 0) throw Error(str_cat("writing attribute ", name));
    return;
  }
  size_t width = 1;
  for (const auto& v : values) width = std::max(width, v.size());
  std::vector<char> buf(width * values.size(), '\0');
  for (size_t i = 0; i < values.size(); ++i) std::memcpy(&buf[i * width], values[i].data(), values[i].size());
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type, width);
  H5Tset_cset(type, H5T_CSET_ASCII);
  H5Tset_strpad(type, H5T_STR_NULLPAD);
  hsize_t n = values.size();
  Handle space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  Handle attr(H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT), H5Aclose);
  if (attr < 0 || H5Awrite(attr, type, buf.data()) < 0) throw Error(str_cat("writing attribute ", name));
}

void write_dataset(hid_t parent, const std::string& name, const Tensor& t) {
  Tensor c = t.device() == Device::CPU && t.dtype() == DType::F32 ? t : t.to(Device::CPU).to(DType::F32);
  std::vector<hsize_t> dims(c.shape().begin(), c.shape().end());
  Handle space(dims.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(int(dims.size()), dims.data(), nullptr), H5Sclose);
  Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
  H5Pset_create_intermediate_group(lcpl, 1);
  Handle ds(H5Dcreate2(parent, name.c_str(), H5T_IEEE_F32LE, space, lcpl, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
  if (ds < 0 || H5Dwrite(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, c.data()) < 0)
    throw Error("writing dataset " + name);
}

ojson yaml_to_json(const YAML::Node& n) {
  if (!n.IsDefined() || n.IsNull()) return nullptr;
  if (n.IsSequence()) {
    ojson a = ojson::array();
    for (const auto& e : n) a.push_back(yaml_to_json(e));
    return a;
  }
  if (n.IsMap()) {
    ojson o = ojson::object();
    for (const auto& kv : n) o[kv.first.as<std::string>()] = yaml_to_json(kv.second);
    return o;
  }
  return n.as<std::string>();
}

double f32(double x) { return double(float(x)); }

// The legacy OptimizerV2 config (§3): name, clipping when set, then the class's hyper-parameters,
// float32-cast. `decay` only when set (Keras 3 warns about it).
ojson optimizer_json(const ConfigNode& node) {
  std::string name = "rmsprop";
  const bool map = node.defined() && node.is_map();
  if (node.defined()) name = map ? node["name"].as_string() : node.as_string();
  std::transform(name.begin(), name.end(), name.begin(), ::tolower);
  auto num = [&](const char* k, double d) { return f32(map ? node.get(k, d) : d); };
  static const std::map<std::string, std::string> cls = {{"sgd", "SGD"},         {"adam", "Adam"},     {"nadam", "Nadam"},
                                                         {"rmsprop", "RMSprop"}, {"adagrad", "Adagrad"}, {"adamax", "Adamax"}};
  const std::string cname = cls.at(name);
  ojson c;
  c["name"] = cname;
  for (const char* k : {"clipnorm", "clipvalue", "global_clipnorm"})
    if (map && node.has(k)) c[k] = num(k, 0.0);
  c["learning_rate"] = num("learning_rate", name == "sgd" ? 0.01 : 0.001);
  if (map && node.has("decay") && node.get("decay", 0.0) != 0.0) c["decay"] = num("decay", 0.0);
  if (name == "sgd") {
    c["momentum"] = num("momentum", 0.0);
    c["nesterov"] = map ? node.get("nesterov", false) : false;
  } else if (name == "rmsprop") {
    c["rho"] = num("rho", 0.9);
    c["momentum"] = num("momentum", 0.0);
    c["epsilon"] = map ? node.get("epsilon", 1e-7) : 1e-7;
    c["centered"] = map ? node.get("centered", false) : false;
  } else if (name == "adagrad") {
    c["initial_accumulator_value"] = num("initial_accumulator_value", 0.1);
    c["epsilon"] = map ? node.get("epsilon", 1e-7) : 1e-7;
  } else {
    c["beta_1"] = num("beta_1", 0.9);
    c["beta_2"] = num("beta_2", 0.999);
    c["epsilon"] = map ? node.get("epsilon", 1e-7) : 1e-7;
    if (name == "adam") c["amsgrad"] = map ? node.get("amsgrad", false) : false;
  }
  ojson o;
  o["class_name"] = cname;
  o["config"] = c;
  return o;
}

// Whether Keras's optimizer has the slot `<Opt>/<layer>/<weight>/<slot>:0`. Keras builds slots for
// model.trainable_weights only, and tf.keras loads optimizer_weights by position with a length check:
// a slot of a frozen layer (trainable: false, whose slots lockstep keeps) would make it refuse the
// whole optimizer state ("Error in loading the saved optimizer state").
bool keras_has_slot(const Model& model, const std::string& name) {
  const size_t a = name.find('/'), b = a == std::string::npos ? a : name.find('/', a + 1),
               c = b == std::string::npos ? b : name.find('/', b + 1);
  if (c == std::string::npos) return true;
  const int li = model.find_layer(name.substr(a + 1, b - a - 1));
  if (li < 0) return true;
  const Layer& l = *model.layers()[size_t(li)];
  if (!l.trainable()) return false;
  const std::string weight = name.substr(b + 1, c - b - 1);
  for (const Weight& w : l.weights())
    if (w.name == weight) return w.trainable;
  return true;
}

}  // namespace

void write_keras_h5(const std::string& path, const Model& model, const ConfigNode& run, const CheckpointContents* state) {
  Quiet quiet;
  const std::string model_config = python_json_dump(keras_model_config_json(model));
  std::string training_config;
  if (run.defined() && run.is_map() && (run.has("loss") || run.has("optimizer"))) {
    ojson t;
    t["loss"] = run.has("loss") ? yaml_to_json(run["loss"].yaml()) : ojson(nullptr);
    t["metrics"] = run.has("metrics") ? yaml_to_json(run["metrics"].yaml()) : ojson(nullptr);
    t["weighted_metrics"] = nullptr;
    t["loss_weights"] = run.has("loss_weights") ? yaml_to_json(run["loss_weights"].yaml()) : ojson(nullptr);
    t["optimizer_config"] = optimizer_json(run["optimizer"]);
    training_config = python_json_dump(t);
  }
  const std::string tmp = path + ".tmp";
  {
    Handle file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), H5Fclose);
    if (file < 0) throw UserError(str_cat(path, ": cannot create the file (is the directory writable?)"));
    try {
      attr_vlen(file, "keras_version", kKerasVersion, H5T_CSET_UTF8);
      attr_vlen(file, "backend", "tensorflow", H5T_CSET_UTF8);
      attr_vlen(file, "model_config", model_config, H5T_CSET_ASCII);
      if (!training_config.empty()) attr_vlen(file, "training_config", training_config, H5T_CSET_ASCII);
      Handle mw(H5Gcreate2(file, "model_weights", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
      // Sequential: every layer; Functional: InputLayers included (model.layers order, §2.2/§2.3).
      std::vector<const Layer*> layers;
      for (const auto& l : model.layers()) layers.push_back(l.get());
      std::vector<std::string> names;
      for (const Layer* l : layers) names.push_back(l->name());
      attr_names(mw, "layer_names", names);
      attr_vlen(mw, "backend", "tensorflow", H5T_CSET_ASCII);
      attr_vlen(mw, "keras_version", kKerasVersion, H5T_CSET_ASCII);
      std::vector<const Layer*> sorted = layers;
      std::sort(sorted.begin(), sorted.end(), [](const Layer* a, const Layer* b) { return a->name() < b->name(); });
      for (const Layer* l : sorted) {
        Handle g(H5Gcreate2(mw, l->name().c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
        // Keras: trainable weights first, then the others (BN: gamma, beta, moving_mean, moving_variance).
        std::vector<const Weight*> ws;
        for (const Weight& w : l->weights())
          if (w.trainable) ws.push_back(&w);
        for (const Weight& w : l->weights())
          if (!w.trainable) ws.push_back(&w);
        std::vector<std::string> wn;
        for (const Weight* w : ws) {
          wn.push_back(l->name() + "/" + w->name + ":0");
          write_dataset(g, wn.back(), w->value);
        }
        attr_names(g, "weight_names", wn);
      }
      Handle top(H5Gcreate2(mw, "top_level_model_weights", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
      attr_names(top, "weight_names", {});
      // optimizer_weights: <Opt>/iter:0 (int64 scalar), Nadam's momentum_cache, then the slots in
      // lockstep's order, which is Keras 2.10's (slot type by slot type, weights in model order).
      if (state && !training_config.empty() && state->state.count("optimizer.iterations")) {
        const std::string opt = optimizer_json(run["optimizer"])["class_name"].get<std::string>();
        Handle ow(H5Gcreate2(file, "optimizer_weights", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
        std::vector<std::string> on;
        {
          const int64_t it = int64_t(state->state.at("optimizer.iterations"));
          Handle space(H5Screate(H5S_SCALAR), H5Sclose);
          Handle lcpl(H5Pcreate(H5P_LINK_CREATE), H5Pclose);
          H5Pset_create_intermediate_group(lcpl, 1);
          on.push_back(opt + "/iter:0");
          Handle ds(H5Dcreate2(ow, on.back().c_str(), H5T_STD_I64LE, space, lcpl, H5P_DEFAULT, H5P_DEFAULT), H5Dclose);
          if (ds < 0 || H5Dwrite(ds, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, &it) < 0)
            throw Error("writing optimizer iterations");
        }
        if (auto mc = state->state.find("optimizer.momentum_cache"); mc != state->state.end()) {
          Tensor t(Shape{});
          ops::fill(t, mc->second);
          on.push_back(opt + "/momentum_cache:0");
          write_dataset(ow, on.back(), t);
        }
        for (const auto& [n, t] : state->optimizer) {
          if (!keras_has_slot(model, n)) continue;
          on.push_back(n);
          write_dataset(ow, n, t);
        }
        attr_names(ow, "weight_names", on);
      }
      if (H5Fflush(file, H5F_SCOPE_GLOBAL) < 0) throw Error("flush failed");
    } catch (const std::exception& e) {
      std::remove(tmp.c_str());
      throw UserError(str_cat(path, ": writing the Keras file failed (", e.what(), ")"));
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw UserError(str_cat(path, ": cannot move the finished file into place"));
  }
}

std::vector<std::string> export_checkpoint_to_keras(const std::string& checkpoint, const std::string& out) {
  const std::string yaml = checkpoint_run_config(checkpoint);
  ConfigNode run = load_config_string(yaml, checkpoint + " (run_config)");
  auto model = Model::from_config(run["model"]);
  CheckpointContents c = load_checkpoint(checkpoint, *model);
  std::vector<std::string> notes = keras_export_notes(*model);
  write_keras_h5(out, *model, run, &c);
  return notes;
}

// ---- reading (§6) --------------------------------------------------------------------------------

namespace {

// A string attribute, scalar or 1-D, vlen or fixed, any CSET; chunked name0..nameN when `name` is
// missing; float64 (0,) = empty. `present` false when absent altogether.
std::vector<std::string> read_strings(hid_t obj, const std::string& name, const std::string& file, bool* present = nullptr) {
  if (present) *present = true;
  std::vector<std::string> out;
  if (H5Aexists(obj, name.c_str()) <= 0) {
    if (H5Aexists(obj, (name + "0").c_str()) > 0) {
      for (int k = 0; H5Aexists(obj, (name + std::to_string(k)).c_str()) > 0; ++k)
        for (auto& s : read_strings(obj, name + std::to_string(k), file)) out.push_back(std::move(s));
      return out;
    }
    if (present) *present = false;
    return out;
  }
  Handle attr(H5Aopen(obj, name.c_str(), H5P_DEFAULT), H5Aclose);
  Handle type(H5Aget_type(attr), H5Tclose);
  Handle space(H5Aget_space(attr), H5Sclose);
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  if (H5Tget_class(type) != H5T_STRING) {
    if (n == 0) return out;
    throw CheckpointError(str_cat(file, ": attribute '", name, "' is not a string (not a Keras file?)"));
  }
  if (n <= 0) return out;
  if (H5Tis_variable_str(type) > 0) {
    std::vector<char*> ptrs(size_t(n), nullptr);
    Handle mem(H5Tcopy(H5T_C_S1), H5Tclose);
    H5Tset_size(mem, H5T_VARIABLE);
    H5Tset_cset(mem, H5Tget_cset(type));
    if (H5Aread(attr, mem, ptrs.data()) < 0) throw CheckpointError(str_cat(file, ": cannot read attribute '", name, "'"));
    for (char* p : ptrs) out.emplace_back(p ? p : "");
    H5Dvlen_reclaim(mem, space, H5P_DEFAULT, ptrs.data());
    return out;
  }
  const size_t width = H5Tget_size(type);
  std::vector<char> buf(width * size_t(n));
  Handle mem(H5Tcopy(type), H5Tclose);
  if (H5Aread(attr, mem, buf.data()) < 0) throw CheckpointError(str_cat(file, ": cannot read attribute '", name, "'"));
  const bool spacepad = H5Tget_strpad(type) == H5T_STR_SPACEPAD;
  for (hssize_t i = 0; i < n; ++i) {
    std::string s(&buf[size_t(i) * width], strnlen(&buf[size_t(i) * width], width));
    if (spacepad) s.erase(s.find_last_not_of(' ') + 1);
    out.push_back(std::move(s));
  }
  return out;
}

std::string read_string(hid_t obj, const std::string& name, const std::string& file) {
  auto v = read_strings(obj, name, file);
  return v.empty() ? std::string() : v[0];
}

Handle open_h5(const std::string& path) {
  if (!fs::exists(path)) throw CheckpointError(path + ": no such file");
  if (H5Fis_hdf5(path.c_str()) <= 0) throw CheckpointError(path + ": not an HDF5 file (truncated or corrupt?)");
  Handle file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (file < 0) throw CheckpointError(path + ": cannot open the HDF5 file (truncated or corrupt?)");
  return file;
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

ojson parse_json(const std::string& text, const std::string& what) {
  try {
    // Python's json.dumps may write NaN/Infinity (allow_nan); they never appear in configs lockstep reads.
    return ojson::parse(text);
  } catch (const std::exception& e) {
    throw CheckpointError(str_cat(what, ": not valid JSON (", e.what(), ")"));
  }
}

// ---- model_config -> run-file YAML ---------------------------------------------------------------

struct Translator {
  std::string file;

  [[noreturn]] void refuse(const std::string& layer, const std::string& cls, const std::string& why) const {
    throw UserError(str_cat(file, ": layer '", layer, "' (", cls, "): ", why));
  }

  static const ojson& cfg_of(const ojson& o) {
    static const ojson empty = ojson::object();
    return o.contains("config") && o["config"].is_object() ? o["config"] : empty;
  }

  static bool is_null(const ojson& c, const char* k) { return !c.contains(k) || c[k].is_null(); }

  // A Keras initializer (legacy or module form) as a run-file initializer.
  YAML::Node initializer(const ojson& init, const std::string& layer, const std::string& cls) const {
    YAML::Node n;
    if (init.is_string()) {
      n = init.get<std::string>();
      return n;
    }
    const std::string c = init.value("class_name", "");
    const ojson& a = cfg_of(init);
    auto num = [&](const char* k, double d) { return a.contains(k) && a[k].is_number() ? a[k].get<double>() : d; };
    static const std::map<std::string, std::string> simple = {
        {"GlorotUniform", "glorot_uniform"}, {"GlorotNormal", "glorot_normal"}, {"HeNormal", "he_normal"},
        {"HeUniform", "he_uniform"},         {"LecunNormal", "lecun_normal"},   {"LecunUniform", "lecun_uniform"},
        {"Zeros", "zeros"},                  {"Ones", "ones"},                  {"glorot_uniform", "glorot_uniform"},
        {"zeros", "zeros"},                  {"ones", "ones"}};
    if (auto it = simple.find(c); it != simple.end()) {
      n = it->second;
      return n;
    }
    if (c == "Constant") {
      n["constant"]["value"] = num("value", 0.0);
    } else if (c == "RandomNormal" || c == "TruncatedNormal") {
      YAML::Node& t = n;
      t[c == "RandomNormal" ? "random_normal" : "truncated_normal"]["mean"] = num("mean", 0.0);
      t[c == "RandomNormal" ? "random_normal" : "truncated_normal"]["stddev"] = num("stddev", 0.05);
    } else if (c == "RandomUniform") {
      n["random_uniform"]["minval"] = num("minval", -0.05);
      n["random_uniform"]["maxval"] = num("maxval", 0.05);
    } else if (c == "VarianceScaling") {
      std::string dist = a.value("distribution", "truncated_normal");
      if (dist == "normal") dist = "truncated_normal";
      n["variance_scaling"]["scale"] = num("scale", 1.0);
      n["variance_scaling"]["mode"] = a.value("mode", "fan_in");
      n["variance_scaling"]["distribution"] = dist;
    } else {
      refuse(layer, cls, str_cat("initializer '", c, "' is not supported"));
    }
    return n;
  }

  YAML::Node regularizer(const ojson& r, const std::string& layer, const std::string& cls) const {
    YAML::Node n;
    const std::string c = r.value("class_name", "");
    const ojson& a = cfg_of(r);
    auto num = [&](const char* k) { return a.contains(k) && a[k].is_number() ? a[k].get<double>() : 0.0; };
    if (c == "L2" || c == "l2") n["l2"] = num("l2");
    else if (c == "L1" || c == "l1") n["l1"] = num("l1");
    else if (c == "L1L2" || c == "l1_l2") {
      if (num("l1") != 0) n["l1"] = num("l1");
      if (num("l2") != 0) n["l2"] = num("l2");
      if (!n.size()) return YAML::Node();
    } else refuse(layer, cls, str_cat("regularizer '", c, "' is not supported"));
    return n;
  }

  YAML::Node constraint(const ojson& r, const std::string& layer, const std::string& cls) const {
    const std::string c = r.value("class_name", "");
    if (c != "MaxNorm" && c != "max_norm") refuse(layer, cls, str_cat("constraint '", c, "' is not supported (only MaxNorm)"));
    const ojson& a = cfg_of(r);
    YAML::Node n;
    n["max_norm"]["max_value"] = a.contains("max_value") ? a["max_value"].get<double>() : 2.0;
    int axis = 0;
    if (a.contains("axis") && a["axis"].is_number_integer()) {
      axis = a["axis"].get<int>();
    } else if (a.contains("axis") && a["axis"].is_array()) {
      // Keras's usual convolution constraint is MaxNorm(axis=[0, 1, 2]); lockstep's max_norm has one axis.
      if (a["axis"].size() != 1 || !a["axis"][0].is_number_integer())
        refuse(layer, cls, str_cat("MaxNorm over several axes (axis ", a["axis"].dump(), ") is not supported (one axis only)"));
      axis = a["axis"][0].get<int>();
    }
    n["max_norm"]["axis"] = axis;
    return n;
  }

  std::string activation(const ojson& c, const std::string& layer, const std::string& cls) const {
    if (is_null(c, "activation")) return "linear";
    if (!c["activation"].is_string()) refuse(layer, cls, "a serialized activation object is not supported");
    std::string a = c["activation"].get<std::string>();
    static const std::set<std::string> ok = {"linear", "sigmoid", "tanh", "relu", "elu", "selu", "softmax",
                                             "softplus", "softsign", "swish", "leaky_relu"};
    if (!ok.count(a)) refuse(layer, cls, str_cat("activation '", a, "' is not supported by lockstep"));
    return a;
  }

  // Maps are [height, width, channels]: data_format channels_last (null: Keras's default, the same).
  void channels_last(const ojson& c, const std::string& layer, const std::string& cls) const {
    if (is_null(c, "data_format")) return;
    const std::string f = c["data_format"].is_string() ? c["data_format"].get<std::string>() : c["data_format"].dump();
    if (f != "channels_last")
      refuse(layer, cls, str_cat("data_format ", f, " is not supported (channels_last only: maps are [height, width, channels])"));
  }

  // kernel_size, strides, dilation_rate, pool_size: an int or [h, w], as [h, w].
  YAML::Node window_pair(const ojson& c, const char* key, const std::string& layer, const std::string& cls) const {
    const ojson& v = c.at(key);
    YAML::Node s(YAML::NodeType::Sequence);
    if (v.is_number_integer()) {
      s.push_back(v.get<int64_t>());
      s.push_back(v.get<int64_t>());
    } else if (v.is_array() && v.size() == 2 && v[0].is_number_integer() && v[1].is_number_integer()) {
      s.push_back(v[0].get<int64_t>());
      s.push_back(v[1].get<int64_t>());
    } else {
      refuse(layer, cls, str_cat(key, " ", v.dump(), " is not supported (an integer or two integers)"));
    }
    return s;
  }

  // Window padding: valid or same (Keras lower-cases it too).
  std::string window_padding(const ojson& c, const std::string& layer, const std::string& cls) const {
    if (is_null(c, "padding")) return "valid";
    std::string p = c["padding"].is_string() ? c["padding"].get<std::string>() : c["padding"].dump();
    std::transform(p.begin(), p.end(), p.begin(), ::tolower);
    if (p != "valid" && p != "same") refuse(layer, cls, str_cat("padding ", p, " is not supported (valid or same)"));
    return p;
  }

  // {lockstep_key: {args}} for one Keras layer entry.
  YAML::Node layer(const ojson& entry) const {
    const std::string cls = entry.value("class_name", "");
    const ojson& c = cfg_of(entry);
    const std::string name = c.value("name", entry.value("name", ""));
    if (entry.contains("module") && entry["module"].is_string()) {
      const std::string mod = entry["module"].get<std::string>();
      if (mod.rfind("keras", 0) != 0) refuse(name, cls, str_cat("a custom layer (module '", mod, "') is not supported"));
    }
    YAML::Node args(YAML::NodeType::Map);
    if (!name.empty()) args["name"] = name;
    if (c.contains("trainable") && c["trainable"].is_boolean() && !c["trainable"].get<bool>()) args["trainable"] = false;
    if (c.contains("dtype") && c["dtype"].is_string() && c["dtype"].get<std::string>() != "float32")
      refuse(name, cls, str_cat("dtype ", c["dtype"].get<std::string>(), " is not supported (float32 only)"));
    if (c.contains("dtype") && c["dtype"].is_object()) {
      const ojson& p = cfg_of(c["dtype"]);
      if (p.value("name", "float32") != "float32") refuse(name, cls, "mixed precision policies are not supported");
    }
    auto num = [&](const char* k, double d) { return c.contains(k) && c[k].is_number() ? c[k].get<double>() : d; };
    std::string key;
    if (cls == "Flatten") {
      key = "flatten";
      if (c.value("data_format", "channels_last") != "channels_last") refuse(name, cls, "data_format channels_first is not supported");
    } else if (cls == "Dense") {
      key = "dense";
      args["units"] = c.at("units").get<int64_t>();
      const std::string act = activation(c, name, cls);
      if (act != "linear") args["activation"] = act;
      if (c.contains("use_bias") && !c["use_bias"].get<bool>()) args["use_bias"] = false;
      if (!is_null(c, "kernel_initializer")) args["kernel_initializer"] = initializer(c["kernel_initializer"], name, cls);
      if (!is_null(c, "bias_initializer")) args["bias_initializer"] = initializer(c["bias_initializer"], name, cls);
      if (!is_null(c, "kernel_regularizer")) {
        YAML::Node r = regularizer(c["kernel_regularizer"], name, cls);
        if (r.IsDefined() && r.size()) args["kernel_regularizer"] = r;
      }
      if (!is_null(c, "bias_regularizer")) {
        YAML::Node r = regularizer(c["bias_regularizer"], name, cls);
        if (r.IsDefined() && r.size()) args["bias_regularizer"] = r;
      }
      if (!is_null(c, "kernel_constraint")) args["kernel_constraint"] = constraint(c["kernel_constraint"], name, cls);
      if (!is_null(c, "activity_regularizer")) refuse(name, cls, "activity_regularizer is not supported");
      if (!is_null(c, "bias_constraint")) refuse(name, cls, "bias_constraint is not supported");
    } else if (cls == "BatchNormalization") {
      key = "batch_normalization";
      int axis = -1;
      if (c.contains("axis")) {
        const ojson& ax = c["axis"];
        if (ax.is_array()) {
          if (ax.size() != 1) refuse(name, cls, "normalising over several axes is not supported");
          axis = ax[0].get<int>();
        } else {
          axis = ax.get<int>();
        }
      }
      args["axis"] = axis;
      args["momentum"] = num("momentum", 0.99);
      args["epsilon"] = num("epsilon", 1e-3);
      if (c.contains("center") && !c["center"].get<bool>()) args["center"] = false;
      if (c.contains("scale") && !c["scale"].get<bool>()) args["scale"] = false;
      for (const char* k : {"beta_initializer", "gamma_initializer", "moving_mean_initializer", "moving_variance_initializer"})
        if (!is_null(c, k)) args[k] = initializer(c[k], name, cls);
      for (const char* k : {"beta_regularizer", "gamma_regularizer", "beta_constraint", "gamma_constraint"})
        if (!is_null(c, k)) refuse(name, cls, str_cat(k, " is not supported"));
      if (c.value("renorm", false)) refuse(name, cls, "renorm is not supported");
      if (!is_null(c, "virtual_batch_size")) refuse(name, cls, "virtual_batch_size is not supported");
    } else if (cls == "Dropout" || cls == "AlphaDropout") {
      key = cls == "Dropout" ? "dropout" : "alpha_dropout";
      args["rate"] = num("rate", 0.0);
      if (!is_null(c, "noise_shape")) refuse(name, cls, "noise_shape is not supported");
      if (c.contains("seed") && c["seed"].is_number_integer()) args["seed"] = c["seed"].get<int64_t>();
    } else if (cls == "Activation") {
      key = "activation";
      args["activation"] = activation(c, name, cls);
    } else if (cls == "ReLU") {
      key = "relu";
      if (!is_null(c, "max_value") || num("negative_slope", 0) != 0 || num("threshold", 0) != 0)
        refuse(name, cls, "max_value/negative_slope/threshold are not supported (plain ReLU only)");
    } else if (cls == "Softmax") {
      key = "softmax";
      if (c.contains("axis") && !(c["axis"].is_number_integer() && c["axis"].get<int>() == -1))
        refuse(name, cls, "softmax over an axis other than -1 is not supported");
    } else if (cls == "LeakyReLU") {
      key = "leaky_relu";
      args["alpha"] = c.contains("negative_slope") ? num("negative_slope", 0.3) : num("alpha", 0.3);
    } else if (cls == "ELU") {
      key = "elu";
      args["alpha"] = num("alpha", 1.0);
    } else if (cls == "PReLU") {
      key = "prelu";
      if (!is_null(c, "alpha_initializer")) args["alpha_initializer"] = initializer(c["alpha_initializer"], name, cls);
      if (!is_null(c, "alpha_regularizer")) {
        YAML::Node r = regularizer(c["alpha_regularizer"], name, cls);
        if (r.IsDefined() && r.size()) args["alpha_regularizer"] = r;
      }
      if (!is_null(c, "alpha_constraint")) args["alpha_constraint"] = constraint(c["alpha_constraint"], name, cls);
      if (!is_null(c, "shared_axes")) {
        YAML::Node s(YAML::NodeType::Sequence);
        const ojson& sa = c["shared_axes"];
        if (sa.is_array()) for (const auto& v : sa) s.push_back(v.get<int64_t>());
        else s.push_back(sa.get<int64_t>());
        args["shared_axes"] = s;
      }
    } else if (cls == "Reshape") {
      key = "reshape";
      YAML::Node t(YAML::NodeType::Sequence);
      for (const auto& v : c.at("target_shape")) t.push_back(v.get<int64_t>());
      args["target_shape"] = t;
    } else if (cls == "Concatenate") {
      key = "concatenate";
      args["axis"] = c.contains("axis") ? c["axis"].get<int>() : -1;
    } else if (cls == "Add" || cls == "Subtract" || cls == "Multiply" || cls == "Average" || cls == "Maximum" ||
               cls == "Minimum") {
      key = keras_snake_case(cls);
    } else if (cls == "Conv2D" || cls == "DepthwiseConv2D") {
      const bool dw = cls == "DepthwiseConv2D";
      const std::string k = dw ? "depthwise" : "kernel";
      key = dw ? "depthwise_conv2d" : "conv2d";
      channels_last(c, name, cls);
      if (dw) {
        args["depth_multiplier"] = c.contains("depth_multiplier") ? c["depth_multiplier"].get<int64_t>() : int64_t(1);
      } else {
        if (!c.contains("filters") || !c["filters"].is_number_integer()) refuse(name, cls, "no filters");
        args["filters"] = c["filters"].get<int64_t>();
      }
      if (!c.contains("kernel_size")) refuse(name, cls, "no kernel_size");
      args["kernel_size"] = window_pair(c, "kernel_size", name, cls);
      if (!is_null(c, "strides")) args["strides"] = window_pair(c, "strides", name, cls);
      args["padding"] = window_padding(c, name, cls);
      if (!is_null(c, "dilation_rate")) args["dilation_rate"] = window_pair(c, "dilation_rate", name, cls);
      // tf_keras writes groups: 1 for DepthwiseConv2D as well (it means nothing there).
      if (!is_null(c, "groups") && c["groups"].get<int64_t>() != 1) {
        if (dw) refuse(name, cls, "groups other than 1 is not supported");
        args["groups"] = c["groups"].get<int64_t>();
      }
      const std::string act = activation(c, name, cls);
      if (act != "linear") args["activation"] = act;
      if (c.contains("use_bias") && !c["use_bias"].get<bool>()) args["use_bias"] = false;
      for (const std::string& init : {k + "_initializer", std::string("bias_initializer")})
        if (!is_null(c, init.c_str())) args[init] = initializer(c[init], name, cls);
      for (const std::string& reg : {k + "_regularizer", std::string("bias_regularizer")})
        if (!is_null(c, reg.c_str())) {
          YAML::Node r = regularizer(c[reg], name, cls);
          if (r.IsDefined() && r.size()) args[reg] = r;
        }
      if (!is_null(c, (k + "_constraint").c_str())) args[k + "_constraint"] = constraint(c[k + "_constraint"], name, cls);
      if (!is_null(c, "activity_regularizer")) refuse(name, cls, "activity_regularizer is not supported");
      if (!is_null(c, "bias_constraint")) refuse(name, cls, "bias_constraint is not supported");
    } else if (cls == "MaxPooling2D" || cls == "AveragePooling2D") {
      key = cls == "MaxPooling2D" ? "max_pooling2d" : "average_pooling2d";
      channels_last(c, name, cls);
      if (!is_null(c, "pool_size")) args["pool_size"] = window_pair(c, "pool_size", name, cls);
      if (!is_null(c, "strides")) args["strides"] = window_pair(c, "strides", name, cls);  // null: pool_size
      args["padding"] = window_padding(c, name, cls);
    } else if (cls == "GlobalAveragePooling2D" || cls == "GlobalMaxPooling2D") {
      key = cls == "GlobalMaxPooling2D" ? "global_max_pooling2d" : "global_average_pooling2d";
      channels_last(c, name, cls);
      if (c.contains("keepdims") && c["keepdims"].is_boolean() && c["keepdims"].get<bool>()) args["keepdims"] = true;
    } else if (cls == "ZeroPadding2D") {
      key = "zero_padding2d";
      channels_last(c, name, cls);
      int64_t p[4] = {1, 1, 1, 1};  // top, bottom, left, right
      if (!is_null(c, "padding")) {
        const ojson& v = c["padding"];
        auto is_int_pair = [](const ojson& x) {
          return x.is_array() && x.size() == 2 && x[0].is_number_integer() && x[1].is_number_integer();
        };
        if (v.is_number_integer()) {
          p[0] = p[1] = p[2] = p[3] = v.get<int64_t>();
        } else if (is_int_pair(v)) {
          p[0] = p[1] = v[0].get<int64_t>();
          p[2] = p[3] = v[1].get<int64_t>();
        } else if (v.is_array() && v.size() == 2 && is_int_pair(v[0]) && is_int_pair(v[1])) {
          p[0] = v[0][0].get<int64_t>(), p[1] = v[0][1].get<int64_t>();
          p[2] = v[1][0].get<int64_t>(), p[3] = v[1][1].get<int64_t>();
        } else {
          refuse(name, cls, str_cat("padding ", v.dump(), " is not supported"));
        }
      }
      YAML::Node pad(YAML::NodeType::Sequence), h(YAML::NodeType::Sequence), w(YAML::NodeType::Sequence);
      h.push_back(p[0]), h.push_back(p[1]), w.push_back(p[2]), w.push_back(p[3]);
      pad.push_back(h), pad.push_back(w);
      args["padding"] = pad;
    } else if (cls == "SpatialDropout2D") {
      key = "spatial_dropout2d";
      channels_last(c, name, cls);
      args["rate"] = num("rate", 0.0);
      if (!is_null(c, "noise_shape")) refuse(name, cls, "noise_shape is not supported");
      if (c.contains("seed") && c["seed"].is_number_integer()) args["seed"] = c["seed"].get<int64_t>();
    } else if (cls == "Sequential" || cls == "Functional" || cls == "Model") {
      refuse(name, cls, "nested models are not supported");
    } else if (cls == "MCDropout" || cls == "MCAlphaDropout") {
      refuse(name, cls, "a custom layer class (the book's MC dropout); export it from Keras as Dropout/AlphaDropout, or "
                        "write the model in a run file with mc_dropout/mc_alpha_dropout");
    } else {
      refuse(name, cls, "this Keras layer class is not supported by lockstep");
    }
    YAML::Node out;
    out[key] = args;
    return out;
  }

  static YAML::Node shape_of(const ojson& dims, bool drop_batch) {
    YAML::Node s(YAML::NodeType::Sequence);
    for (size_t i = drop_batch ? 1 : 0; i < dims.size(); ++i) {
      if (dims[i].is_null()) throw UserError("unknown (None) dimension in an input shape");
      s.push_back(dims[i].get<int64_t>());
    }
    return s;
  }

  YAML::Node input_shape_of(const ojson& c, const std::string& name) const {
    for (const char* k : {"batch_input_shape", "batch_shape"})
      if (c.contains(k) && c[k].is_array()) {
        try {
          return shape_of(c[k], true);
        } catch (const UserError&) {
          refuse(name, "InputLayer", "inputs with unknown (None) dimensions are not supported");
        }
      }
    return YAML::Node();
  }

  YAML::Node sequential(const ojson& config) const {
    const ojson& layers = config.is_array() ? config : config.at("layers");
    YAML::Node m;
    if (config.is_object() && config.contains("name")) m["name"] = config["name"].get<std::string>();
    YAML::Node ls(YAML::NodeType::Sequence);
    YAML::Node shape;
    for (const auto& e : layers) {
      const ojson& c = cfg_of(e);
      if (e.value("class_name", "") == "InputLayer") {
        shape = input_shape_of(c, c.value("name", "input"));
        continue;
      }
      if (!shape.IsDefined() || shape.IsNull()) shape = input_shape_of(c, c.value("name", ""));
      ls.push_back(layer(e));
    }
    if ((!shape.IsDefined() || shape.IsNull()) && config.is_object() && config.contains("build_input_shape"))
      shape = shape_of(config["build_input_shape"], true);
    if (!shape.IsDefined() || shape.IsNull())
      throw UserError(file + ": the Sequential model has no input shape (no InputLayer, batch_input_shape or build_input_shape)");
    m["input_shape"] = shape;
    m["layers"] = ls;
    return m;
  }

  // Inbound tensors of one node: list form [[name, node, tensor, kwargs], ...] or dict form
  // {"args": [...], "kwargs": {...}} with __keras_tensor__ keras_history.
  void collect_history(const ojson& v, std::vector<std::pair<std::string, int>>* out, const std::string& layer) const {
    if (v.is_object()) {
      if (v.value("class_name", "") == "__keras_tensor__") {
        const ojson& h = cfg_of(v).at("keras_history");
        if (h.at(2).get<int>() != 0) refuse(layer, "", "layers with several outputs are not supported");
        out->push_back({h.at(0).get<std::string>(), h.at(1).get<int>()});
        return;
      }
      for (const auto& [k, x] : v.items()) collect_history(x, out, layer);
    } else if (v.is_array()) {
      for (const auto& x : v) collect_history(x, out, layer);
    }
  }

  std::vector<std::pair<std::string, int>> node_inputs(const ojson& node, const std::string& layer) const {
    std::vector<std::pair<std::string, int>> ins;
    if (node.is_object()) {
      collect_history(node.contains("args") ? node["args"] : ojson::array(), &ins, layer);
      if (node.contains("kwargs") && node["kwargs"].is_object())
        for (const auto& [k, v] : node["kwargs"].items())
          if (k != "mask" && k != "training") collect_history(v, &ins, layer);
      return ins;
    }
    for (const auto& t : node) {
      if (t.size() > 2 && t[2].get<int>() != 0) refuse(layer, "", "layers with several outputs are not supported");
      if (t.size() > 3 && t[3].is_object() && !t[3].empty()) {
        for (const auto& [k, v] : t[3].items())
          if (k != "training" && k != "mask") refuse(layer, "", str_cat("call argument '", k, "' is not supported"));
      }
      ins.push_back({t.at(0).get<std::string>(), t.at(1).get<int>()});
    }
    return ins;
  }

  static std::string ref(const std::pair<std::string, int>& r) {
    return r.second == 0 ? r.first : str_cat(r.first, "[", r.second, "]");
  }

  static std::vector<std::pair<std::string, int>> endpoints(const ojson& v) {
    std::vector<std::pair<std::string, int>> out;
    if (v.is_array() && !v.empty() && v[0].is_string()) {
      out.push_back({v[0].get<std::string>(), v.size() > 1 ? v[1].get<int>() : 0});
      return out;
    }
    for (const auto& e : v) out.push_back({e.at(0).get<std::string>(), e.size() > 1 ? e[1].get<int>() : 0});
    return out;
  }

  YAML::Node functional(const ojson& config) const {
    YAML::Node m;
    if (config.contains("name")) m["name"] = config["name"].get<std::string>();
    YAML::Node ins(YAML::NodeType::Sequence), ls(YAML::NodeType::Sequence), outs(YAML::NodeType::Sequence);
    std::set<std::string> input_names;
    for (const auto& e : config.at("layers")) {
      const std::string cls = e.value("class_name", "");
      const ojson& c = cfg_of(e);
      const std::string name = e.value("name", c.value("name", ""));
      if (cls == "InputLayer") {
        YAML::Node in;
        in["input"]["name"] = name;
        YAML::Node shape = input_shape_of(c, name);
        if (!shape.IsDefined() || shape.IsNull()) refuse(name, cls, "no batch_input_shape/batch_shape");
        in["input"]["shape"] = shape;
        ins.push_back(in);
        input_names.insert(name);
        continue;
      }
      const ojson nodes = e.value("inbound_nodes", ojson::array());
      if (nodes.empty()) refuse(name, cls, "a layer that is never called");
      for (size_t k = 0; k < nodes.size(); ++k) {
        YAML::Node entry = k == 0 ? layer(e) : YAML::Node();
        if (k > 0) entry["call"] = name;
        YAML::Node from(YAML::NodeType::Sequence);
        for (const auto& r : node_inputs(nodes[k], name)) from.push_back(ref(r));
        entry["inputs"] = from.size() == 1 ? from[0] : from;
        ls.push_back(entry);
      }
    }
    // The model's input order is input_layers' order.
    YAML::Node ordered(YAML::NodeType::Sequence);
    for (const auto& [n, node] : endpoints(config.at("input_layers")))
      for (size_t i = 0; i < ins.size(); ++i)
        if (ins[i]["input"]["name"].as<std::string>() == n) ordered.push_back(ins[i]);
    if (ordered.size() != ins.size())
      throw UserError(file + ": input_layers does not list every InputLayer (unused inputs are not supported)");
    for (const auto& r : endpoints(config.at("output_layers"))) outs.push_back(ref(r));
    m["inputs"] = ordered;
    m["layers"] = ls;
    m["outputs"] = outs.size() == 1 ? outs[0] : outs;
    return m;
  }

  YAML::Node model(const ojson& mc) const {
    if (!mc.is_object() || !mc.contains("class_name"))
      throw CheckpointError(file + ": model_config has no class_name (not a Keras model JSON?)");
    const std::string cls = mc["class_name"].get<std::string>();
    const ojson& c = mc.contains("config") ? mc["config"] : ojson();
    if (cls == "Sequential") return sequential(c);
    if (cls == "Functional" || cls == "Model") return functional(c);
    throw UserError(str_cat(file, ": model class '", cls, "' is not supported (Sequential, Functional or Model; "
                                  "subclassed models have no config)"));
  }
};

ojson read_model_config(const std::string& path) {
  if (ends_with(path, ".json")) {
    std::ifstream in(path);
    if (!in) throw CheckpointError(path + ": cannot read the file");
    std::stringstream ss;
    ss << in.rdbuf();
    return parse_json(ss.str(), path);
  }
  Quiet quiet;
  Handle file = open_h5(path);
  if (H5Aexists(file, "model_config") <= 0) {
    if (H5Aexists(file, "layer_names") > 0)
      throw CheckpointError(path + ": a weights-only file (model.save_weights): give the architecture as "
                                   "`from_keras: model.json` with `weights: " + path + "`");
    throw CheckpointError(path + ": no model_config attribute: not a Keras model file");
  }
  return parse_json(read_string(file, "model_config", path), path + " (model_config)");
}

}  // namespace

bool is_keras_file(const std::string& path) {
  if (ends_with(path, ".json")) return true;
  Quiet quiet;
  if (!fs::exists(path) || H5Fis_hdf5(path.c_str()) <= 0) return false;
  Handle file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
  if (file < 0) return false;
  if (H5Aexists(file, "format") > 0) {
    try {
      if (read_string(file, "format", path) == "lockstep-checkpoint") return false;
    } catch (...) {
    }
  }
  return H5Aexists(file, "model_config") > 0 || H5Aexists(file, "layer_names") > 0 ||
         H5Lexists(file, "model_weights", H5P_DEFAULT) > 0;
}

YAML::Node keras_model_yaml(const std::string& path) {
  ojson mc = read_model_config(path);
  try {
    return Translator{path}.model(mc);
  } catch (const nlohmann::json::exception& e) {
    throw CheckpointError(str_cat(path, ": unexpected model_config structure (", e.what(), ")"));
  }
}

void load_keras_weights(const std::string& path, Model& model, const std::vector<int>* only_layers) {
  Quiet quiet;
  Handle file = open_h5(path);
  const bool full = H5Lexists(file, "model_weights", H5P_DEFAULT) > 0;
  Handle root(H5Gopen2(file, full ? "model_weights" : "/", H5P_DEFAULT), H5Gclose);
  bool present = false;
  const std::vector<std::string> layer_names = read_strings(root, "layer_names", path, &present);
  if (!present) throw CheckpointError(path + ": no model_weights/layer_names: not a Keras model or weights file");
  std::vector<int> wanted;
  if (only_layers) wanted = *only_layers;
  else
    for (int i = 0; i < int(model.layers().size()); ++i) wanted.push_back(i);
  for (int li : wanted) {
    Layer& layer = model.layer(li);
    if (layer.weights().empty()) continue;
    const std::string& lname = layer.name();
    if (std::find(layer_names.begin(), layer_names.end(), lname) == layer_names.end() ||
        H5Lexists(root, lname.c_str(), H5P_DEFAULT) <= 0)
      throw CheckpointError(str_cat(path, ": no weights for layer '", lname, "' (the file's layers are ", join(layer_names), ")"));
    Handle g(H5Gopen2(root, lname.c_str(), H5P_DEFAULT), H5Gclose);
    if (g < 0) throw CheckpointError(str_cat(path, ": cannot open group for layer '", lname, "'"));
    const std::vector<std::string> wn = read_strings(g, "weight_names", path);
    if (wn.size() != layer.weights().size())
      throw CheckpointError(str_cat(path, ": layer '", lname, "' has ", wn.size(), " weights in the file but ",
                                    layer.weights().size(), " in the model (", layer.keras_class(), ")"));
    for (Weight& w : layer.weights()) {
      const std::string* found = nullptr;
      for (const auto& n : wn) {
        std::string last = n.substr(n.rfind('/') == std::string::npos ? 0 : n.rfind('/') + 1);
        if (ends_with(last, ":0")) last.resize(last.size() - 2);
        // Keras 3 names DepthwiseConv2D's depthwise_kernel `kernel` (tf.keras: depthwise_kernel).
        if (last == w.name || (w.name == "depthwise_kernel" && last == "kernel")) found = &n;
      }
      if (!found)
        throw CheckpointError(str_cat(path, ": layer '", lname, "' has no weight '", w.name, "' (it has ", join(wn), ")"));
      // Hard links only (no soft/external links: Keras 3 refuses them too).
      H5L_info_t info;
      if (H5Lexists(g, found->c_str(), H5P_DEFAULT) <= 0 || H5Lget_info(g, found->c_str(), &info, H5P_DEFAULT) < 0)
        throw CheckpointError(str_cat(path, ": layer '", lname, "': dataset '", *found, "' is missing"));
      if (info.type != H5L_TYPE_HARD)
        throw CheckpointError(str_cat(path, ": layer '", lname, "': dataset '", *found, "' is a soft or external link (refused)"));
      Handle ds(H5Dopen2(g, found->c_str(), H5P_DEFAULT), H5Dclose);
      if (ds < 0) throw CheckpointError(str_cat(path, ": layer '", lname, "': '", *found, "' is not a dataset"));
      Handle sp(H5Dget_space(ds), H5Sclose);
      Handle type(H5Dget_type(ds), H5Tclose);
      if (H5Tget_class(type) != H5T_FLOAT)
        throw CheckpointError(str_cat(path, ": layer '", lname, "': dataset '", *found, "' is not floating point"));
      const int nd = H5Sget_simple_extent_ndims(sp);
      std::vector<hsize_t> dims(size_t(std::max(nd, 0)));
      H5Sget_simple_extent_dims(sp, dims.data(), nullptr);
      const Shape got(dims.begin(), dims.end());
      if (got != w.shape)
        throw CheckpointError(str_cat(path, ": layer '", lname, "' weight '", w.name, "' has shape ", shape_str(got),
                                      " in the file, the model expects ", shape_str(w.shape)));
      Tensor t(w.shape);
      if (H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data()) < 0)
        throw CheckpointError(str_cat(path, ": cannot read layer '", lname, "' weight '", w.name, "' (truncated or corrupt file?)"));
      w.value.copy_from(t.to(w.value.dtype()).to(w.value.device()));
    }
  }
}

bool resolve_from_keras(const ConfigNode& model, YAML::Node* translated, std::string* weights) {
  if (!model.defined() || !model.is_map() || !model.has("from_keras")) return false;
  model.allow_keys({"from_keras", "weights"});
  const fs::path dir = fs::path(model.file()).parent_path();
  auto resolve = [&](const ConfigNode& n) {
    fs::path p = n.as_string();
    if (p.is_relative() && model.file().front() != '<') p = dir / p;
    return p.string();
  };
  const std::string src = resolve(model["from_keras"]);
  try {
    *translated = keras_model_yaml(src);
  } catch (const UserError& e) {
    model["from_keras"].fail(e.what());
  }
  *weights = model.has("weights") ? resolve(model["weights"]) : ends_with(src, ".json") ? std::string() : src;
  return true;
}

}  // namespace lockstep
