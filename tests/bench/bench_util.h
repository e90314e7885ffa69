// Small pieces the benchmarks share (conv_gemm_bench, conv_onednn_bench, train_step_bench).
#pragma once

#include <string>
#include <vector>

#include "core/layers.h"
#include "core/model.h"

namespace lockstep::bench {

// "a,b,,c" -> {"a", "b", "c"}.
inline std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  for (size_t p = 0; p <= s.size();) {
    size_t q = s.find(',', p);
    if (q == std::string::npos) q = s.size();
    if (q > p) out.push_back(s.substr(p, q - p));
    p = q + 1;
  }
  return out;
}

// Per call of m (m.calls() order): whether a training step computes that call's input gradient, i.e. a
// trainable weight lies upstream of one of its inputs (Model::graph_backward's rule; the calls are in a
// topological order).
inline std::vector<char> computes_input_gradient(const Model& m) {
  const auto& calls = m.calls();
  const size_t n_in = size_t(m.num_inputs());
  std::vector<char> upstream(n_in + calls.size(), 0), dx(calls.size(), 0);  // upstream: a trainable weight at or below the value
  for (size_t k = 0; k < calls.size(); ++k) {
    const Layer& l = *m.layers()[size_t(calls[k].layer)];
    char up = 0;
    if (l.trainable())
      for (const Weight& w : l.weights()) up |= w.trainable;
    for (int v : calls[k].inputs) dx[k] |= upstream[size_t(v)];
    upstream[n_in + k] = up | dx[k];
  }
  return dx;
}

}  // namespace lockstep::bench
