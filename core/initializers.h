// Keras initializers (keras-semantics §1): zeros, ones, constant, random_normal, random_uniform,
// truncated_normal, glorot/he/lecun × normal/uniform, variance_scaling.
//
// Run-file forms: `he_normal`, `{constant: {value: 0.1}}`, `{random_normal: {mean: 0, stddev: 0.05}}`,
// `{variance_scaling: {scale: 2.0, mode: fan_avg, distribution: uniform}}`.
#pragma once

#include <string>

#include "core/config.h"
#include "core/rng.h"
#include "core/tensor.h"

namespace lockstep {

struct Initializer {
  std::string name = "zeros";
  // constant
  double value = 0.0;
  // random_normal / truncated_normal / random_uniform
  double mean = 0.0, stddev = 0.05, minval = -0.05, maxval = 0.05;
  // variance_scaling
  double scale = 1.0;
  std::string mode = "fan_in";                   // fan_in | fan_out | fan_avg
  std::string distribution = "truncated_normal";  // truncated_normal | untruncated_normal | uniform

  static Initializer named(const std::string& name);  // throws ConfigError on unknown names
  // A description in Keras's class names, e.g. "VarianceScaling(scale=2.0, mode=fan_in, ...)".
  std::string describe() const;
};

Initializer parse_initializer(const ConfigNode& node, const std::string& default_name);
const std::vector<std::string>& initializer_names();

// Keras's fans of a weight shape: (in, out) for a Dense kernel; conv kernels multiply the receptive field.
void compute_fans(const Shape& shape, double& fan_in, double& fan_out);
// Fill `w` according to `init`, drawing from `stream`.
void initialize(const Initializer& init, const Tensor& w, const rng::Stream& stream);

}  // namespace lockstep
