#include "core/initializers.h"

#include <algorithm>
#include <cmath>

#include "core/ops.h"

namespace lockstep {

namespace {
// Standard deviation of a unit normal truncated to [-2, 2] (Keras's correction, keras-semantics §1).
constexpr double kTruncatedStd = 0.87962566103423978;

Initializer vs(double scale, const char* mode, const char* dist) {
  Initializer i;
  i.name = "variance_scaling";
  i.scale = scale;
  i.mode = mode;
  i.distribution = dist;
  return i;
}
}  // namespace

const std::vector<std::string>& initializer_names() {
  static const std::vector<std::string> names = {
      "zeros",         "ones",         "constant",     "random_normal", "random_uniform", "truncated_normal",
      "glorot_normal", "glorot_uniform", "he_normal",  "he_uniform",    "lecun_normal",   "lecun_uniform",
      "variance_scaling"};
  return names;
}

Initializer Initializer::named(const std::string& name) {
  if (name == "glorot_uniform") return vs(1.0, "fan_avg", "uniform");
  if (name == "glorot_normal") return vs(1.0, "fan_avg", "truncated_normal");
  if (name == "he_normal") return vs(2.0, "fan_in", "truncated_normal");
  if (name == "he_uniform") return vs(2.0, "fan_in", "uniform");
  if (name == "lecun_normal") return vs(1.0, "fan_in", "truncated_normal");
  if (name == "lecun_uniform") return vs(1.0, "fan_in", "uniform");
  if (name == "variance_scaling") return vs(1.0, "fan_in", "truncated_normal");
  Initializer i;
  i.name = name;
  if (name == "ones") {
    i.name = "constant";
    i.value = 1.0;
  }
  if (std::find(initializer_names().begin(), initializer_names().end(), name) == initializer_names().end())
    throw ConfigError("unknown initializer '" + name + "'");
  return i;
}

std::string Initializer::describe() const {
  if (name == "variance_scaling")
    return str_cat("VarianceScaling(scale=", scale, ", mode=", mode, ", distribution=", distribution, ")");
  if (name == "constant") return str_cat("Constant(value=", value, ")");
  if (name == "random_normal") return str_cat("RandomNormal(mean=", mean, ", stddev=", stddev, ")");
  if (name == "truncated_normal") return str_cat("TruncatedNormal(mean=", mean, ", stddev=", stddev, ")");
  if (name == "random_uniform") return str_cat("RandomUniform(minval=", minval, ", maxval=", maxval, ")");
  return "Zeros()";
}

Initializer parse_initializer(const ConfigNode& node, const std::string& default_name) {
  if (!node.defined()) return Initializer::named(default_name);
  std::string name;
  ConfigNode args;
  if (node.is_scalar()) {
    name = node.as_string();
  } else if (node.is_map() && node.size() == 1) {
    name = node.keys()[0];
    args = node[name];
  } else {
    node.fail("expected an initializer name (e.g. he_normal) or a one-key mapping such as {constant: {value: 0.1}}");
  }
  const auto& names = initializer_names();
  if (std::find(names.begin(), names.end(), name) == names.end()) {
    std::string msg = "unknown initializer '" + name + "'; expected one of: " + join(names);
    std::string near = nearest_name(name, names);
    if (!near.empty()) msg += "; did you mean '" + near + "'?";
    node.fail(msg);
  }
  Initializer init = Initializer::named(name);
  if (!args.defined()) return init;
  if (name == "constant") {
    if (args.is_scalar()) {
      init.value = args.as_double();
      return init;
    }
    args.allow_keys({"value"});
    init.value = args.get("value", 0.0);
  } else if (name == "random_normal" || name == "truncated_normal") {
    args.allow_keys({"mean", "stddev", "seed"});
    init.mean = args.get("mean", 0.0);
    init.stddev = args.get_in("stddev", 0.05, 0.0, 1e30);
  } else if (name == "random_uniform") {
    args.allow_keys({"minval", "maxval", "seed"});
    init.minval = args.get("minval", -0.05);
    init.maxval = args.get("maxval", 0.05);
    if (init.maxval < init.minval) args["maxval"].fail("maxval must not be below minval");
  } else if (init.name == "variance_scaling") {
    args.allow_keys({"scale", "mode", "distribution", "seed"});
    init.scale = args.get_in("scale", init.scale, 0.0, 1e30, true);
    init.mode = args.get_choice("mode", init.mode, {"fan_in", "fan_out", "fan_avg"});
    std::string dist = args.get_choice("distribution", init.distribution,
                                       {"truncated_normal", "untruncated_normal", "uniform", "normal"});
    init.distribution = dist == "normal" ? "truncated_normal" : dist;  // Keras maps "normal" likewise
  } else {
    args.allow_keys({"seed"});
  }
  return init;
}

void compute_fans(const Shape& shape, double& fan_in, double& fan_out) {
  if (shape.empty()) {
    fan_in = fan_out = 1;
  } else if (shape.size() == 1) {
    fan_in = fan_out = double(shape[0]);
  } else if (shape.size() == 2) {
    fan_in = double(shape[0]);
    fan_out = double(shape[1]);
  } else {
    double receptive = 1;
    for (size_t i = 0; i + 2 < shape.size(); ++i) receptive *= double(shape[i]);
    fan_in = double(shape[shape.size() - 2]) * receptive;
    fan_out = double(shape.back()) * receptive;
  }
}

void initialize(const Initializer& init, const Tensor& w, const rng::Stream& stream) {
  if (init.name == "zeros") return ops::fill(w, 0.0);
  if (init.name == "constant") return ops::fill(w, init.value);
  if (init.name == "random_normal") return ops::random_normal(w, init.mean, init.stddev, stream);
  if (init.name == "truncated_normal") return ops::truncated_normal(w, init.mean, init.stddev, stream);
  if (init.name == "random_uniform") return ops::random_uniform(w, init.minval, init.maxval, stream);
  LS_CHECK(init.name == "variance_scaling", "initializer ", init.name);
  double fan_in, fan_out;
  compute_fans(w.shape(), fan_in, fan_out);
  double n = init.mode == "fan_in" ? fan_in : init.mode == "fan_out" ? fan_out : (fan_in + fan_out) / 2.0;
  double s = init.scale / std::max(1.0, n);
  if (init.distribution == "truncated_normal") return ops::truncated_normal(w, 0.0, std::sqrt(s) / kTruncatedStd, stream);
  if (init.distribution == "untruncated_normal") return ops::random_normal(w, 0.0, std::sqrt(s), stream);
  double limit = std::sqrt(3.0 * s);
  ops::random_uniform(w, -limit, limit, stream);
}

}  // namespace lockstep
