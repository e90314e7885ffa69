// Graph (Keras Functional) models built from run-file text: gradients through shared layers, every
// merge, several weighted outputs, rank-3 Dense, Reshape/Flatten, fan-out, BatchNormalization, frozen
// layers and shared Dropout against central finite differences in float64; Model::summary() of the
// Functional goldens (tests/core/golden, tf_keras 2.21) byte for byte from their run-file form; the
// graph errors with file:line; and a Functional chain against the Sequential model, bit for bit.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

#include "tests/core/test_util.h"

#ifndef LOCKSTEP_GOLDEN_DIR
#error "LOCKSTEP_GOLDEN_DIR must name tests/core/golden"
#endif

namespace lockstep::test {
namespace {

std::unique_ptr<Model> graph(const std::string& yaml, DType dtype = DType::F64) {
  return model_from_yaml(yaml, dtype, "run.yaml");
}

int layer_index(const Model& m, const std::string& name) {
  const int l = m.find_layer(name);
  EXPECT_GE(l, 0) << "no layer " << name;
  return l;
}
Layer& layer_named(Model& m, const std::string& name) { return m.layer(layer_index(m, name)); }

// The value (Model::calls() numbering) of output j: an input, or the only call of its layer.
int output_value(const Model& m, int j) {
  const std::string name = m.output_name(j);
  for (int i = 0; i < m.num_inputs(); ++i)
    if (m.input_name(i) == name) return i;
  const int l = layer_index(m, name);
  int v = -1;
  for (size_t k = 0; k < m.calls().size(); ++k)
    if (m.calls()[k].layer == l) {
      EXPECT_EQ(v, -1) << "output layer " << name << " is called more than once";
      v = m.num_inputs() + int(k);
    }
  return v;
}

// dL/d(input i) from each call's own backward in reverse execution order, the gradients of a value
// read by several calls summed here (independently of Model::backward's accumulation); the layers'
// weight gradients are assigned on the way, as in gradcheck_test's layer loop. Only for graphs whose
// layers are called once each (the layer object then is what ran its call).
std::vector<Tensor> layer_loop_input_grads(Model& m, const std::vector<Tensor>& douts, Context& ctx) {
  const int n_in = m.num_inputs();
  const std::vector<LayerCall>& calls = m.calls();
  std::vector<int> calls_of(m.layers().size(), 0);
  for (const LayerCall& c : calls) EXPECT_EQ(++calls_of[size_t(c.layer)], 1) << "shared layer: no layer loop";
  std::vector<Tensor> g(size_t(n_in) + calls.size());
  auto add = [&](int v, const Tensor& t) {
    if (!g[size_t(v)].defined())
      g[size_t(v)] = t.clone();
    else
      ops::axpy(1.0, t, g[size_t(v)]);
  };
  for (int j = 0; j < m.num_outputs(); ++j) add(output_value(m, j), douts[size_t(j)]);
  for (int k = int(calls.size()) - 1; k >= 0; --k) {
    const LayerCall& c = calls[size_t(k)];
    Layer& l = m.layer(c.layer);
    const Tensor dy = g[size_t(n_in + k)];
    if (!dy.defined()) {
      ADD_FAILURE() << "no gradient reached " << l.name();
      continue;
    }
    if (c.inputs.size() == 1 && l.max_inputs() == 1) {
      add(c.inputs[0], l.backward(dy, ctx, true));
    } else {
      std::vector<Tensor> dx = l.backward_multi(dy, ctx, std::vector<bool>(c.inputs.size(), true));
      for (size_t i = 0; i < c.inputs.size(); ++i) add(c.inputs[i], dx[i]);
    }
  }
  return {g.begin(), g.begin() + n_in};
}

std::vector<Tensor> clones(const std::vector<Tensor>& ts) {
  std::vector<Tensor> out;
  for (const Tensor& t : ts) out.push_back(t.clone());
  return out;
}

// L = Σ_j w_j Σ r_j ⊙ out_j = Σ_j douts_j · out_j (douts_j = w_j r_j).
double probe_loss(Model& m, const std::vector<Tensor>& xs, Context ctx, const std::vector<Tensor>& douts) {
  const std::vector<Tensor>& outs = m.forward(xs, ctx);
  double s = 0;
  for (size_t j = 0; j < outs.size(); ++j) s += dot(outs[j], douts[j]);
  return s;
}

struct GraphGradCheck {
  std::vector<GradErr> inputs;  // per model input (empty without the layer loop)
  std::vector<std::string> weight_names;
  std::vector<GradErr> weights;  // per trainable weight
  std::vector<Tensor> douts;     // what Model::backward was given
  Tensor grads;                  // Model::backward's gradients arena
};

// Model::backward's weight gradients (and, with `input_grads`, the layer loop's input gradients) for
// L = Σ_j loss_weights[j] · Σ r_j ⊙ out_j against central differences over every element of every
// input and every trainable weight.
// `analytic_scale` exists only for the self-test that shows a wrong gradient is caught.
GraphGradCheck check_graph_grads(Model& m, const std::vector<Tensor>& xs, const Context& ctx,
                                 std::vector<double> loss_weights = {}, bool input_grads = true,
                                 double analytic_scale = 1.0) {
  EXPECT_EQ(m.dtype(), DType::F64);
  GraphGradCheck out;
  Context c = ctx;
  const std::vector<Tensor> outs = clones(m.forward(xs, c));
  if (loss_weights.empty()) loss_weights.assign(outs.size(), 1.0);
  for (size_t j = 0; j < outs.size(); ++j) {
    Tensor d = randn(outs[j].shape(), 4242 + j);
    ops::scale(d, loss_weights[j]);
    out.douts.push_back(d);
  }
  m.backward(out.douts, c);
  out.grads = m.grads_arena().clone();
  std::vector<Tensor> dxs;
  if (input_grads) {
    Context c2 = ctx;
    m.forward(xs, c2);
    dxs = layer_loop_input_grads(m, out.douts, c2);
    for (const WeightRef& r : m.trainable_weights())
      EXPECT_LT(ops::max_abs_diff(r.weight->grad, out.grads.view(r.grad_offset, r.weight->shape)), 1e-12)
          << m.layer(r.layer).name() << "/" << r.weight->name << ": Model::backward vs the layer loop";
  }
  auto numeric = [&](double* p) {
    const double keep = *p;
    *p = keep + kFdEps;
    const double lp = probe_loss(m, xs, ctx, out.douts);
    *p = keep - kFdEps;
    const double lm = probe_loss(m, xs, ctx, out.douts);
    *p = keep;
    return (lp - lm) / (2 * kFdEps);
  };
  for (size_t i = 0; i < dxs.size(); ++i) {
    GradErr e;
    EXPECT_EQ(dxs[i].shape(), xs[i].shape());
    double* xp = xs[i].data<double>();
    for (int64_t j = 0; j < xs[i].numel(); ++j) e.add(analytic_scale * dxs[i].at(j), numeric(xp + j));
    out.inputs.push_back(e);
  }
  for (const WeightRef& ref : m.trainable_weights()) {
    GradErr e;
    double* wp = ref.weight->value.data<double>();
    for (int64_t j = 0; j < ref.weight->value.numel(); ++j)
      e.add(analytic_scale * out.grads.at(ref.grad_offset + j), numeric(wp + j));
    out.weight_names.push_back(m.layer(ref.layer).name() + "/" + ref.weight->name);
    out.weights.push_back(e);
  }
  return out;
}

void expect_graph_grads_ok(const GraphGradCheck& c, const std::string& what = "") {
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    EXPECT_GT(c.inputs[i].count, 0) << what;
    EXPECT_LT(c.inputs[i].max_err, kFdTol) << what << ": input " << i << " gradient";
    EXPECT_GT(c.inputs[i].numeric_abs_sum, 1e-3) << what << ": input " << i << " gradient is (numerically) zero";
  }
  EXPECT_FALSE(c.weights.empty()) << what;
  for (size_t i = 0; i < c.weights.size(); ++i) {
    EXPECT_LT(c.weights[i].max_err, kFdTol) << what << ": " << c.weight_names[i];
    EXPECT_GT(c.weights[i].numeric_abs_sum, 1e-3) << what << ": " << c.weight_names[i] << " gradient is zero";
  }
}

std::vector<Tensor> random_inputs(const Model& m, int64_t batch, uint64_t seed) {
  std::vector<Tensor> xs;
  for (int i = 0; i < m.num_inputs(); ++i) {
    Shape s{batch};
    s.insert(s.end(), m.input_shapes()[size_t(i)].begin(), m.input_shapes()[size_t(i)].end());
    xs.push_back(randn(s, seed + 17 * uint64_t(i)));
  }
  return xs;
}

const char* kBias = "bias_initializer: {random_normal: {stddev: 0.5}}";

TEST(GraphGrad, CheckerCatchesAWrongGradient) {
  // A check that cannot fail is worthless: a 1% error in the analytic gradients must be flagged.
  auto m = graph(str_cat(R"(model:
  inputs:
    - input: {shape: [5]}
    - input: {shape: [3]}
  layers:
    - dense: {units: 3, activation: tanh, )", kBias, R"(}
      inputs: input_1
    - add: {}
      inputs: [dense, input_2]
)"));
  m->init(1);
  const std::vector<Tensor> xs = {randn({4, 5}, 11), randn({4, 3}, 12)};
  GraphGradCheck bad = check_graph_grads(*m, xs, training_ctx(), {}, true, 1.01);
  ASSERT_EQ(bad.inputs.size(), 2u);
  for (const GradErr& e : bad.inputs) EXPECT_GT(e.max_err, 10 * kFdTol);
  ASSERT_EQ(bad.weights.size(), 2u);
  for (const GradErr& e : bad.weights) EXPECT_GT(e.max_err, 10 * kFdTol);
  expect_graph_grads_ok(check_graph_grads(*m, xs, training_ctx()));
}

// ---- a shared layer ------------------------------------------------------------------------------
const char* kSharedDense = R"(model:
  inputs:
    - input: {name: left, shape: [5]}
    - input: {name: right, shape: [5]}
  layers:
    - dense: {name: shared, units: 4, activation: tanh, bias_initializer: {random_normal: {stddev: 0.5}}}
      inputs: left
    - call: shared
      inputs: right
    - concatenate: {}
      inputs: [shared, "shared[1]"]
    - dense: {name: head, units: 3, activation: elu, bias_initializer: {random_normal: {stddev: 0.5}}}
)";
// The same network with the second call made by a separate layer (its own weights).
const char* kTwinDense = R"(model:
  inputs:
    - input: {name: left, shape: [5]}
    - input: {name: right, shape: [5]}
  layers:
    - dense: {name: shared, units: 4, activation: tanh}
      inputs: left
    - dense: {name: twin, units: 4, activation: tanh}
      inputs: right
    - concatenate: {}
      inputs: [shared, twin]
    - dense: {name: head, units: 3, activation: elu}
)";

void copy_weights(Model& dst, const std::string& dst_layer, Model& src, const std::string& src_layer) {
  Layer& d = layer_named(dst, dst_layer);
  Layer& s = layer_named(src, src_layer);
  ASSERT_EQ(d.weights().size(), s.weights().size());
  for (size_t w = 0; w < d.weights().size(); ++w) d.weights()[w].value.copy_from(s.weights()[w].value);
}

TEST(GraphGrad, SharedDenseGradientIsTheSumOverItsCalls) {
  auto m = graph(kSharedDense);
  m->init(1);
  Layer& shared = layer_named(*m, "shared");
  EXPECT_TRUE(shared.shared());
  // One set of weights: shared 5·4+4 = 24, head 8·3+3 = 27.
  EXPECT_EQ(m->total_params(), 24 + 27);
  const std::vector<Tensor> xs = random_inputs(*m, 6, 100);
  GraphGradCheck c = check_graph_grads(*m, xs, training_ctx(), {}, false);
  expect_graph_grads_ok(c, "shared dense");
  ASSERT_EQ(c.weights.size(), 4u);

  // The sum of the two single-call gradients: the same network with two layers holding the same
  // weights; shared's gradient = shared's + twin's there.
  auto twin = graph(kTwinDense);
  copy_weights(*twin, "shared", *m, "shared");
  copy_weights(*twin, "twin", *m, "shared");
  copy_weights(*twin, "head", *m, "head");
  Context ct = training_ctx();
  const std::vector<Tensor>& to = twin->forward(xs, ct);
  Context cm = training_ctx();
  const std::vector<Tensor> mo = clones(m->forward(xs, cm));
  EXPECT_EQ(ops::max_abs_diff(to[0], mo[0]), 0.0);
  twin->backward(c.douts, ct);
  m->backward(c.douts, cm);
  for (size_t w = 0; w < 2; ++w) {
    Tensor sum = layer_named(*twin, "shared").weights()[w].grad.clone();
    ops::axpy(1.0, layer_named(*twin, "twin").weights()[w].grad, sum);
    EXPECT_LT(ops::max_abs_diff(shared.weights()[w].grad, sum), 1e-13) << shared.weights()[w].name;
    // ...and neither call alone.
    EXPECT_GT(ops::max_abs_diff(shared.weights()[w].grad, layer_named(*twin, "shared").weights()[w].grad), 1e-3);
    EXPECT_GT(ops::max_abs_diff(shared.weights()[w].grad, layer_named(*twin, "twin").weights()[w].grad), 1e-3);
  }
  for (size_t w = 0; w < 2; ++w)
    EXPECT_LT(ops::max_abs_diff(layer_named(*m, "head").weights()[w].grad, layer_named(*twin, "head").weights()[w].grad),
              1e-13);
}

// A layer called three times, its first call (in the file) the last to run: the later calls run first
// (deeper), and on_layer_done reports the layer once, with its gradient already summed.
TEST(GraphGrad, SharedLayerCalledThriceOutOfOrder) {
  auto m = graph(R"(model:
  inputs:
    - input: {shape: [4]}
    - input: {shape: [4]}
  layers:
    - dense: {name: pre, units: 4, activation: elu}
      inputs: input_1
    - dense: {name: s, units: 4, activation: tanh, bias_initializer: {random_normal: {stddev: 0.5}}}
      inputs: pre
    - call: s
      inputs: input_2
    - call: s
      inputs: "s[1]"
    - add: {}
      inputs: [s, "s[2]", input_2]
    - dense: {units: 2}
)");
  m->init(2);
  const std::vector<Tensor> xs = random_inputs(*m, 5, 200);
  expect_graph_grads_ok(check_graph_grads(*m, xs, training_ctx(), {}, false), "thrice");

  Context ctx = training_ctx();
  const std::vector<Tensor> outs = clones(m->forward(xs, ctx));
  std::map<int, int> done;
  Tensor at_done;
  const int s = layer_index(*m, "s");
  m->backward({randn(outs[0].shape(), 5)}, ctx, [&](int l) {
    ++done[l];
    if (l == s) at_done = m->layer(s).weights()[0].grad.clone();
  });
  for (const WeightRef& r : m->trainable_weights()) EXPECT_EQ(done[r.layer], 1) << m->layer(r.layer).name();
  ASSERT_TRUE(at_done.defined());
  EXPECT_EQ(ops::max_abs_diff(at_done, m->layer(s).weights()[0].grad), 0.0);
}

// ---- every merge ---------------------------------------------------------------------------------
struct MergeCase {
  const char* name;
  std::string yaml;
  Shape merge_shape;   // the merge's per-sample output
  Shape output_shape;  // the model's
};

// n inputs of `shape`; the first through a Dense (units = the last dimension), then the merge of
// [dense, input_2, ..., input_n], then Dense(2).
std::string elementwise(const std::string& merge, int n, const std::string& shape, int64_t units) {
  std::string y = "model:\n  inputs:\n";
  for (int i = 0; i < n; ++i) y += "    - input: {shape: " + shape + "}\n";
  y += str_cat("  layers:\n    - dense: {units: ", units, ", activation: tanh, ", kBias, "}\n      inputs: input_1\n");
  y += "    - " + merge + ": {}\n      inputs: [dense";
  for (int i = 2; i <= n; ++i) y += str_cat(", input_", i);
  y += str_cat("]\n    - dense: {units: 2, ", kBias, "}\n");
  return y;
}

std::vector<MergeCase> merge_cases() {
  return {
      {"ConcatenateAxis1Rank3", str_cat(R"(model:
  inputs:
    - input: {shape: [3, 4]}
    - input: {shape: [2, 4]}
  layers:
    - dense: {units: 4, activation: tanh, )", kBias, R"(}
      inputs: input_1
    - concatenate: {axis: 1}
      inputs: [dense, input_2, input_1]
    - dense: {units: 2, )", kBias, "}\n"),
       {8, 4}, {8, 2}},
      {"ConcatenateLastAxis", str_cat(R"(model:
  inputs:
    - input: {shape: [3, 4]}
    - input: {shape: [3, 2]}
  layers:
    - dense: {units: 5, activation: tanh, )", kBias, R"(}
      inputs: input_1
    - concatenate: {axis: -1}
      inputs: [input_2, dense]
    - dense: {units: 2, )", kBias, "}\n"),
       {3, 7}, {3, 2}},
      {"Add3", elementwise("add", 3, "[6]", 6), {6}, {2}},
      {"Subtract", elementwise("subtract", 2, "[6]", 6), {6}, {2}},
      {"Multiply3", elementwise("multiply", 3, "[6]", 6), {6}, {2}},
      {"Average3", elementwise("average", 3, "[6]", 6), {6}, {2}},
      {"Maximum3", elementwise("maximum", 3, "[2, 3]", 3), {2, 3}, {2, 2}},
      {"Minimum3", elementwise("minimum", 3, "[2, 3]", 3), {2, 3}, {2, 2}},
  };
}

class MergeGrad : public ::testing::TestWithParam<MergeCase> {};
TEST_P(MergeGrad, MatchesFiniteDifferences) {
  const MergeCase& mc = GetParam();
  auto m = graph(mc.yaml);
  m->init(3);
  const std::string merge = keras_snake_case(mc.name).substr(0, keras_snake_case(mc.name).find_first_of("_0123456789"));
  EXPECT_EQ(layer_named(*m, merge).output_shape(), mc.merge_shape) << mc.yaml;
  EXPECT_EQ(m->output_shape(), mc.output_shape);
  // Normal draws: no two inputs of maximum/minimum within the differencing step of each other.
  const std::vector<Tensor> xs = random_inputs(*m, 4, 300);
  GraphGradCheck c = check_graph_grads(*m, xs, training_ctx());
  ASSERT_EQ(c.inputs.size(), size_t(m->num_inputs()));
  expect_graph_grads_ok(c, mc.yaml);
}
INSTANTIATE_TEST_SUITE_P(Every, MergeGrad, ::testing::ValuesIn(merge_cases()),
                         [](const ::testing::TestParamInfo<MergeCase>& i) { return std::string(i.param.name); });

TEST(MergeGrad, MaximumAndMinimumPickTheExtremeInput) {
  auto mx = graph("model:\n  inputs:\n    - input: {shape: [3]}\n    - input: {shape: [3]}\n    - input: {shape: [3]}\n"
                  "  layers:\n    - maximum: {}\n      inputs: [input_1, input_2, input_3]\n"
                  "    - minimum: {}\n      inputs: [input_1, input_2, input_3]\n  outputs: [maximum, minimum]\n");
  const std::vector<Tensor> xs = {Tensor::from_vector({1, 3}, std::vector<double>{1, -2, 3}),
                                  Tensor::from_vector({1, 3}, std::vector<double>{2, 5, -1}),
                                  Tensor::from_vector({1, 3}, std::vector<double>{0, 4, 7})};
  Context ctx = inference_ctx();
  const std::vector<Tensor>& outs = mx->forward(xs, ctx);
  EXPECT_EQ(outs[0].to_double_vector(), (std::vector<double>{2, 5, 7}));
  EXPECT_EQ(outs[1].to_double_vector(), (std::vector<double>{0, -2, -1}));
}

// Every merge in one graph with a shared layer, fan-out, Reshape, BatchNormalization, Dropout and two
// outputs (the graph of tests/gpu/gpu_graph_test.cpp, there CUDA against the CPU).
TEST(MergeGrad, EveryMergeInOneGraph) {
  auto m = graph(R"(model:
  inputs:
    - input: {name: a, shape: [3, 4]}
    - input: {name: b, shape: [3, 4]}
  layers:
    - dense: {name: s, units: 4, activation: tanh, bias_initializer: {random_normal: {stddev: 0.5}}}
      inputs: a
    - call: s
      inputs: b
    - add: {}
      inputs: [s, "s[1]", a]
    - subtract: {}
      inputs: [s, b]
    - multiply: {}
      inputs: [add, subtract, "s[1]"]
    - average: {}
      inputs: [add, subtract]
    - maximum: {}
      inputs: [multiply, average, a]
    - minimum: {}
      inputs: [multiply, average, b]
    - concatenate: {axis: 1}
      inputs: [maximum, minimum]
    - concatenate: {name: cat_last, axis: -1}
      inputs: [maximum, minimum]
    - reshape: {target_shape: [-1, 4]}
    - add: {name: join}
      inputs: [concatenate, reshape]
    - batch_normalization: {}
    - dropout: {rate: 0.2}
    - flatten: {}
    - dense: {name: out, units: 5, activation: softmax}
  outputs: [out, s]
)");
  m->init(23);
  EXPECT_EQ(layer_named(*m, "concatenate").output_shape(), (Shape{6, 4}));
  EXPECT_EQ(layer_named(*m, "cat_last").output_shape(), (Shape{3, 8}));
  EXPECT_EQ(layer_named(*m, "reshape").output_shape(), (Shape{6, 4}));
  EXPECT_EQ(m->output_shape(0), (Shape{5}));
  EXPECT_EQ(m->output_shape(1), (Shape{3, 4}));
  GraphGradCheck c = check_graph_grads(*m, random_inputs(*m, 6, 2300), training_ctx(5, 3), {1.0, 0.4}, false);
  EXPECT_EQ(c.weights.size(), 6u);  // s, batch_normalization, out
  expect_graph_grads_ok(c, "every merge");
}

// ---- several outputs, each with its loss weight ----------------------------------------------------
const char* kThreeOutputs = R"(model:
  inputs:
    - input: {name: x, shape: [6]}
  layers:
    - dense: {name: trunk, units: 5, activation: elu, bias_initializer: {random_normal: {stddev: 0.5}}}
    - dense: {name: reg, units: 1, bias_initializer: {random_normal: {stddev: 0.5}}}
    - dense: {name: cls, units: 3, activation: softmax, bias_initializer: {random_normal: {stddev: 0.5}}}
      inputs: trunk
  outputs: [reg, cls, trunk]
)";

TEST(GraphGrad, SeveralOutputsWithLossWeights) {
  auto m = graph(kThreeOutputs);
  m->init(4);
  ASSERT_EQ(m->num_outputs(), 3);
  EXPECT_EQ(m->output_name(0), "reg");
  EXPECT_EQ(m->output_name(1), "cls");
  EXPECT_EQ(m->output_name(2), "trunk");  // also read by reg and cls: its gradient adds three terms
  const std::vector<double> w = {0.3, 2.5, -0.7};
  const std::vector<Tensor> xs = random_inputs(*m, 7, 400);
  GraphGradCheck c = check_graph_grads(*m, xs, training_ctx(), w);
  expect_graph_grads_ok(c, "weighted outputs");

  // The weighted total's gradient is the weighted sum of the outputs' own (each backward alone).
  Tensor sum = c.grads.empty_like(c.grads.shape());
  ops::fill(sum, 0.0);
  for (size_t j = 0; j < 3; ++j) {
    std::vector<Tensor> douts;
    for (size_t i = 0; i < 3; ++i) {
      douts.push_back(c.douts[i].clone());
      if (i != j) ops::fill(douts.back(), 0.0);
    }
    Context ctx = training_ctx();
    m->forward(xs, ctx);
    m->backward(douts, ctx);
    ops::axpy(1.0, m->grads_arena(), sum);
  }
  EXPECT_LT(ops::max_abs_diff(sum, c.grads), 1e-12);
  // The weights matter: unweighted, the gradients differ.
  GraphGradCheck plain = check_graph_grads(*m, xs, training_ctx(), {}, false);
  EXPECT_GT(ops::max_abs_diff(plain.grads, c.grads), 1e-2);
}

// ---- layers on rank-3 values -------------------------------------------------------------------------
TEST(GraphGrad, DenseOnRankThree) {
  auto m = graph(str_cat(R"(model:
  inputs:
    - input: {shape: [3, 4]}
    - input: {shape: [3, 5]}
  layers:
    - dense: {units: 5, activation: elu, )", kBias, R"(}
      inputs: input_1
    - add: {}
      inputs: [dense, input_2]
    - dense: {units: 1, )", kBias, "}\n"));
  m->init(5);
  Layer& d = layer_named(*m, "dense");
  ASSERT_EQ(d.weights().size(), 2u);
  EXPECT_EQ(d.weights()[0].shape, (Shape{4, 5}));  // kernel: last input axis x units
  EXPECT_EQ(d.weights()[1].shape, (Shape{5}));
  EXPECT_EQ(d.output_shape(), (Shape{3, 5}));
  EXPECT_EQ(m->output_shape(), (Shape{3, 1}));
  const std::string s = m->summary();
  EXPECT_NE(s.find(" dense (Dense)               (None, 3, 5)                 25        ['input_1[0][0]']"),
            std::string::npos) << s;  // 4·5 + 5
  expect_graph_grads_ok(check_graph_grads(*m, random_inputs(*m, 3, 500), training_ctx()), "rank-3 dense");
}

TEST(GraphGrad, ReshapeWithMinusOneAndFlattenOnRankThree) {
  auto m = graph(str_cat(R"(model:
  inputs:
    - input: {shape: [2, 3, 4]}
  layers:
    - reshape: {target_shape: [-1, 6]}
    - dense: {units: 3, activation: tanh, )", kBias, R"(}
    - flatten: {}
    - flatten: {name: flat_in}
      inputs: input_1
    - dense: {name: proj, units: 12, )", kBias, R"(}
    - add: {}
      inputs: [flatten, proj]
    - reshape: {target_shape: [3, -1]}
    - dense: {units: 2, )", kBias, "}\n"));
  m->init(6);
  EXPECT_EQ(layer_named(*m, "reshape").output_shape(), (Shape{4, 6}));
  EXPECT_EQ(layer_named(*m, "flatten").output_shape(), (Shape{12}));
  EXPECT_EQ(layer_named(*m, "flat_in").output_shape(), (Shape{24}));
  EXPECT_EQ(layer_named(*m, "reshape_1").output_shape(), (Shape{3, 4}));
  EXPECT_EQ(m->output_shape(), (Shape{3, 2}));
  expect_graph_grads_ok(check_graph_grads(*m, random_inputs(*m, 3, 600), training_ctx()), "reshape/flatten");
}

// ---- fan-out: a value read by several calls (its gradient accumulates) ---------------------------------
TEST(GraphGrad, FanOutAccumulatesGradients) {
  auto m = graph(str_cat(R"(model:
  inputs:
    - input: {shape: [5]}
  layers:
    - dense: {name: d1, units: 4, activation: tanh, )", kBias, R"(}
    - dense: {name: d2, units: 4, activation: elu, )", kBias, R"(}
    - dense: {name: d3, units: 4, activation: sigmoid, )", kBias, R"(}
      inputs: d1
    - add: {}
      inputs: [d2, d3, d1]
    - dense: {name: skip, units: 4, )", kBias, R"(}
      inputs: input_1
    - multiply: {}
      inputs: [add, skip, d1]
    - dense: {units: 2, )", kBias, "}\n"));
  m->init(7);
  // d1 is read by d2, d3, add and multiply; input_1 by d1 and skip.
  expect_graph_grads_ok(check_graph_grads(*m, random_inputs(*m, 6, 700), training_ctx()), "fan-out");
}

// ---- BatchNormalization in a graph -------------------------------------------------------------------
const char* kBnInits =
    "beta_initializer: {random_normal: {stddev: 0.5}}, gamma_initializer: {random_uniform: {minval: 0.5, maxval: 1.5}}, "
    "moving_mean_initializer: {random_normal: {stddev: 0.5}}, "
    "moving_variance_initializer: {random_uniform: {minval: 0.5, maxval: 2.0}}";

std::string bn_graph() {
  return str_cat(R"(model:
  inputs:
    - input: {name: a, shape: [4]}
    - input: {name: b, shape: [4]}
  layers:
    - batch_normalization: {name: bn_in, )", kBnInits, R"(}
      inputs: b
    - dense: {units: 4, activation: tanh, )", kBias, R"(}
      inputs: a
    - batch_normalization: {name: bn, )", kBnInits, R"(}
    - add: {}
      inputs: [bn, bn_in]
    - activation: {activation: tanh}
    - batch_normalization: {name: bn2, )", kBnInits, R"(}
    - dense: {name: head, units: 3, )", kBias, R"(}
  outputs: [head, bn]
)");
}

TEST(GraphGrad, BatchNormalizationTraining) {
  auto m = graph(bn_graph());
  m->init(8);
  const std::vector<Tensor> xs = {randn({6, 4}, 801, 2.0, 0.5), randn({6, 4}, 802, 1.5, -0.3)};
  GraphGradCheck c = check_graph_grads(*m, xs, training_ctx());
  EXPECT_EQ(c.weights.size(), 2u + 2 + 2 + 2 + 2);  // bn_in, dense, bn, bn2, head
  expect_graph_grads_ok(c, "bn training");
  // Training moved the moving statistics (state, not trainable).
  auto fresh = graph(bn_graph());
  fresh->init(8);
  EXPECT_GT(ops::max_abs_diff(layer_named(*fresh, "bn2").weight("moving_mean")->value,
                              layer_named(*m, "bn2").weight("moving_mean")->value), 1e-3);
}

TEST(GraphGrad, BatchNormalizationInference) {
  auto m = graph(bn_graph());
  m->init(9);
  const std::vector<Tensor> xs = {randn({6, 4}, 803, 2.0, 0.5), randn({6, 4}, 804, 1.5, -0.3)};
  expect_graph_grads_ok(check_graph_grads(*m, xs, inference_ctx()), "bn inference");
}

// A BatchNormalization called on two values: batch statistics per call, gamma/beta gradients summed.
TEST(GraphGrad, SharedBatchNormalizationTraining) {
  auto m = graph(str_cat(R"(model:
  inputs:
    - input: {shape: [4]}
    - input: {shape: [4]}
  layers:
    - dense: {units: 4, activation: tanh, )", kBias, R"(}
      inputs: input_1
    - batch_normalization: {name: bn, )", kBnInits, R"(}
    - call: bn
      inputs: input_2
    - multiply: {}
      inputs: [bn, "bn[1]"]
    - dense: {units: 2, )", kBias, R"(}
)"));
  m->init(13);
  const std::vector<Tensor> xs = {randn({6, 4}, 1301, 2.0, 0.5), randn({6, 4}, 1302, 1.5, -0.3)};
  GraphGradCheck c = check_graph_grads(*m, xs, training_ctx(), {}, false);
  EXPECT_EQ(c.weights.size(), 6u);
  expect_graph_grads_ok(c, "shared bn");
}

// Steps of other batch sizes reuse (and regrow) the per-step buffers: each step's gradients equal a
// fresh model's.
TEST(GraphGrad, BatchSizeChangesBetweenSteps) {
  const std::string yaml = str_cat(R"(model:
  inputs:
    - input: {shape: [3, 4]}
    - input: {shape: [2, 4]}
  layers:
    - dense: {name: d, units: 4, activation: tanh, )", kBias, R"(}
      inputs: input_1
    - concatenate: {axis: 1}
      inputs: [d, input_2]
    - dense: {name: s, units: 4, activation: elu, )", kBias, R"(}
    - call: s
      inputs: d
    - maximum: {}
      inputs: ["s[1]", d, input_1]
    - average: {}
      inputs: [maximum, d]
  outputs: [s, average]
)");
  auto m = graph(yaml);
  m->init(14);
  for (int64_t batch : {6, 3, 9, 6}) {
    auto fresh = graph(yaml);
    fresh->init(14);
    const std::vector<Tensor> xs = random_inputs(*m, batch, 1400 + uint64_t(batch));
    std::vector<Tensor> douts;
    Context c1 = training_ctx(), c2 = training_ctx();
    const std::vector<Tensor> o1 = clones(m->forward(xs, c1));
    const std::vector<Tensor>& o2 = fresh->forward(xs, c2);
    for (size_t j = 0; j < o1.size(); ++j) {
      EXPECT_EQ(ops::max_abs_diff(o1[j], o2[j]), 0.0) << batch;
      douts.push_back(randn(o1[j].shape(), 77 + j));
    }
    m->backward(douts, c1);
    fresh->backward(douts, c2);
    EXPECT_EQ(ops::max_abs_diff(m->grads_arena(), fresh->grads_arena()), 0.0) << batch;
  }
}

// A plain gradient-descent step taken inside the backward pass (Context::descent_rate, UpdateStep in
// one process) by the layers that can: w - rate·g for them (their gradients never written), the
// gradient as usual for a shared layer (its later call's backward still reads the weights) and
// nothing for a frozen one.
TEST(GraphGrad, DescentInBackwardIsTheGradientStep) {
  auto m = graph(str_cat(R"(model:
  inputs:
    - input: {shape: [5]}
    - input: {shape: [5]}
  layers:
    - dense: {name: d1, units: 4, activation: tanh, )", kBias, R"(}
      inputs: input_1
    - dense: {name: s, units: 4, )", kBias, R"(}
      inputs: input_1
    - call: s
      inputs: input_2
    - add: {}
      inputs: [d1, s, "s[1]"]
    - dense: {name: frozen, units: 4, activation: elu, trainable: false}
    - dense: {name: mid, units: 4, activation: selu, )", kBias, R"(}
      inputs: add
    - multiply: {}
      inputs: [frozen, mid, d1]
    - dense: {name: head, units: 2, )", kBias, R"(}
)"));
  m->init(15);
  const std::vector<Tensor> xs = random_inputs(*m, 5, 1500);
  const Tensor w0 = m->weights_arena().clone();
  Context c = training_ctx();
  const Tensor dout = randn(m->forward(xs, c)[0].shape(), 1501);
  m->backward({dout}, c);
  const Tensor g = m->grads_arena().clone();
  ops::fill(m->grads_arena(), 7.0);
  Context d = training_ctx();
  m->forward(xs, d);
  d.descent_rate = 0.1;
  m->backward({dout}, d);
  int descended = 0;
  for (const WeightRef& r : m->weight_refs()) {
    const Layer& l = m->layer(r.layer);
    const std::string what = l.name() + "/" + r.weight->name;
    const int64_t n = r.weight->value.numel();
    for (int64_t j = 0; j < n; ++j) {
      const double w = w0.at(r.offset + j), now = m->weights_arena().at(r.offset + j);
      if (r.grad_offset < 0 || !l.trainable()) {
        ASSERT_EQ(now, w) << what;
      } else if (l.descends_in_backward()) {
        ASSERT_NEAR(now, w - 0.1 * g.at(r.grad_offset + j), 1e-14) << what;
        ASSERT_EQ(m->grads_arena().at(r.grad_offset + j), 7.0) << what;
      } else {
        ASSERT_EQ(now, w) << what;
        ASSERT_NEAR(m->grads_arena().at(r.grad_offset + j), g.at(r.grad_offset + j), 1e-14) << what;
      }
    }
    if (r.grad_offset >= 0 && l.descends_in_backward()) ++descended;
  }
  EXPECT_EQ(descended, 2 * 3);  // d1, mid, head
  EXPECT_FALSE(layer_named(*m, "s").descends_in_backward());
}

// ---- frozen layers -----------------------------------------------------------------------------------
TEST(GraphGrad, FrozenLayerWritesNoGradientAndPassesTheInputGradient) {
  auto m = graph(str_cat(R"(model:
  inputs:
    - input: {shape: [5]}
    - input: {shape: [4]}
  layers:
    - dense: {name: d1, units: 4, activation: tanh, )", kBias, R"(}
      inputs: input_1
    - dense: {name: frozen, units: 4, activation: elu, trainable: false, )", kBias, R"(}
    - batch_normalization: {name: frozen_bn, trainable: false, )", kBnInits, R"(}
    - add: {}
      inputs: [frozen_bn, input_2]
    - dense: {name: head, units: 2, )", kBias, "}\n"));
  m->init(10);
  EXPECT_EQ(m->trainable_params(), (5 * 4 + 4) + (4 * 2 + 2));
  EXPECT_EQ(m->total_params(), m->trainable_params() + (4 * 4 + 4) + 4 * 4);
  for (const WeightRef& r : m->trainable_weights())
    EXPECT_TRUE(m->layer(r.layer).name() == "d1" || m->layer(r.layer).name() == "head") << m->layer(r.layer).name();
  // A sentinel in the gradients arena: the frozen layers' slots keep it.
  ops::fill(m->grads_arena(), 7.0);
  const std::vector<Tensor> xs = random_inputs(*m, 5, 1000);
  GraphGradCheck c = check_graph_grads(*m, xs, training_ctx());  // frozen BN: inference mode
  expect_graph_grads_ok(c, "frozen");
  for (const char* name : {"frozen", "frozen_bn"})
    for (const Weight& w : layer_named(*m, name).weights()) {
      if (!w.grad.defined()) continue;
      for (int64_t j = 0; j < w.grad.numel(); ++j) ASSERT_EQ(w.grad.at(j), 7.0) << name << "/" << w.name;
    }
}

TEST(GraphGrad, FrozenSharedLayer) {
  auto m = graph(str_cat(R"(model:
  inputs:
    - input: {shape: [5]}
    - input: {shape: [4]}
  layers:
    - dense: {name: d1, units: 4, activation: tanh, )", kBias, R"(}
      inputs: input_1
    - dense: {name: frozen, units: 4, activation: elu, trainable: false, )", kBias, R"(}
    - dense: {name: d2, units: 4, activation: tanh, )", kBias, R"(}
      inputs: input_2
    - call: frozen
      inputs: d2
    - subtract: {}
      inputs: [frozen, "frozen[1]"]
    - dense: {name: head, units: 2, )", kBias, "}\n"));
  m->init(11);
  ops::fill(m->grads_arena(), 7.0);
  GraphGradCheck c = check_graph_grads(*m, random_inputs(*m, 5, 1100), training_ctx(), {}, false);
  ASSERT_EQ(c.weights.size(), 6u);  // d1, d2, head: both calls' input gradients reach d1 and d2
  expect_graph_grads_ok(c, "frozen shared");
  for (const Weight& w : layer_named(*m, "frozen").weights())
    for (int64_t j = 0; j < w.grad.numel(); ++j) ASSERT_EQ(w.grad.at(j), 7.0) << w.name;
}

// ---- shared Dropout: a mask per call -----------------------------------------------------------------
const char* kSharedDropout = R"(model:
  inputs:
    - input: {shape: [40]}
  layers:
    - dense: {units: 40, activation: tanh, bias_initializer: {random_normal: {stddev: 0.5}}}
    - dropout: {rate: 0.5}
    - call: dropout
      inputs: dense
  outputs: [dropout, "dropout[1]"]
)";

TEST(GraphGrad, SharedDropoutDrawsAMaskPerCall) {
  auto m = graph(kSharedDropout);
  m->init(12);
  const std::vector<Tensor> xs = random_inputs(*m, 8, 1200);
  Context ctx = training_ctx(5, 9);
  const std::vector<Tensor> a = clones(m->forward(xs, ctx));
  // Both calls: each element is 0 or 2·x (rate 0.5), and the two masks differ (same seed and step).
  Context plain = inference_ctx();
  const Tensor x = m->forward(xs, plain)[0].clone();  // inference: the identity
  EXPECT_EQ(ops::max_abs_diff(m->forward(xs, plain)[1], x), 0.0);
  int64_t differ = 0, dropped = 0;
  for (int64_t j = 0; j < x.numel(); ++j) {
    for (const Tensor& o : a) {
      EXPECT_TRUE(o.at(j) == 0.0 || std::abs(o.at(j) - 2 * x.at(j)) < 1e-12) << j;
      dropped += o.at(j) == 0.0;
    }
    differ += (a[0].at(j) == 0.0) != (a[1].at(j) == 0.0);
  }
  EXPECT_GT(dropped, x.numel() / 2);
  EXPECT_GT(differ, x.numel() / 4) << "the two calls of a shared Dropout drew the same mask";
  // The masks are a function of (seed, step, call): the same step again draws the same ones.
  Context again = training_ctx(5, 9);
  const std::vector<Tensor> b = clones(m->forward(xs, again));
  EXPECT_EQ(ops::max_abs_diff(a[0], b[0]), 0.0);
  EXPECT_EQ(ops::max_abs_diff(a[1], b[1]), 0.0);
  // Gradients through both masks.
  expect_graph_grads_ok(check_graph_grads(*m, xs, training_ctx(5, 9), {0.5, 2.0}, false), "shared dropout");
}

// ---- summaries: the goldens from run-file text --------------------------------------------------------
std::string golden(const std::string& file) {
  const std::filesystem::path p = std::filesystem::path(LOCKSTEP_GOLDEN_DIR) / file;
  std::ifstream in(p, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << p;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// (a) make_goldens.py seed_exercise(): unnamed everything (Keras's auto names in creation order).
// Params: Dense(100) on (28, 28) acts on the last axis: 28·100+100 = 2,900 (dense, dense_3);
// Dense(100) on 100: 100·100+100 = 10,100 (x4 in the towers, dense_6); Dense(1) on 100: 101.
// Total 2·2,900 + 5·10,100 + 101 = 56,401.
const char* kSeedExercise = R"(model:
  inputs:
    - input: {shape: [28, 28]}
    - input: {shape: [28, 28]}
  layers:
    - dense: {units: 100, activation: elu}
      inputs: input_1
    - dense: {units: 100, activation: elu}
    - dense: {units: 100, activation: elu}
    - dense: {units: 100, activation: elu}
      inputs: input_2
    - dense: {units: 100, activation: elu}
    - dense: {units: 100, activation: elu}
    - concatenate: {axis: 1}
      inputs: [dense_2, dense_5]
    - dense: {units: 100, activation: elu}
    - dense: {units: 1, activation: sigmoid}
)";

// (b) book_comparison(): Flatten + 5 Dense(100) per tower (Keras creates flatten, dense..dense_4, then
// flatten_1, dense_5..dense_9). Params: 784·100+100 = 78,500 (x2), 100·100+100 = 10,100 (x8),
// Dense(10) on 200: 2,010, Dense(1) on 10: 11. Total 157,000 + 80,800 + 2,010 + 11 = 239,821.
const char* kBookComparison = R"(model:
  inputs:
    - input: {shape: [28, 28]}
    - input: {shape: [28, 28]}
  layers:
    - flatten: {}
      inputs: input_1
    - dense: {units: 100, activation: elu, kernel_initializer: he_normal}
    - dense: {units: 100, activation: elu, kernel_initializer: he_normal}
    - dense: {units: 100, activation: elu, kernel_initializer: he_normal}
    - dense: {units: 100, activation: elu, kernel_initializer: he_normal}
    - dense: {units: 100, activation: elu, kernel_initializer: he_normal}
    - flatten: {}
      inputs: input_2
    - dense: {units: 100, activation: elu, kernel_initializer: he_normal}
    - dense: {units: 100, activation: elu, kernel_initializer: he_normal}
    - dense: {units: 100, activation: elu, kernel_initializer: he_normal}
    - dense: {units: 100, activation: elu, kernel_initializer: he_normal}
    - dense: {units: 100, activation: elu, kernel_initializer: he_normal}
    - concatenate: {}
      inputs: [dense_4, dense_9]
    - dense: {units: 10, activation: elu}
    - dense: {units: 1, activation: sigmoid}
)";

// (c) shared_two_outputs(): one Dense(16) called on both inputs (its weights once: 8·16+16 = 144), Add,
// BatchNormalization (gamma, beta, moving mean, moving variance: 4·16 = 64, the 32 moving ones
// non-trainable), Dense(1): 17, Dense(3): 51. Total 276, trainable 244.
const char* kSharedTwoOutputs = R"(model:
  name: shared_two_outputs
  inputs:
    - input: {shape: [8]}
    - input: {shape: [8]}
  layers:
    - dense: {units: 16, activation: relu}
      inputs: input_1
    - call: dense
      inputs: input_2
    - add: {}
      inputs: [dense, "dense[1]"]
    - batch_normalization: {}
    - dense: {name: regression_output, units: 1}
    - dense: {name: a_very_long_classification_head_name, units: 3, activation: softmax}
      inputs: batch_normalization
  outputs: [regression_output, a_very_long_classification_head_name]
)";

// (d) merges(): Reshape (12) -> (3, 4); Dense(5) on (3, 4): 4·5+5 = 25 (x2); Dense(1) on (3, 5):
// 5·1+1 = 6. Total 56. Keras lists input_2 after dense_1 (by depth from the outputs).
const char* kMerges = R"(model:
  name: merges
  inputs:
    - input: {shape: [12]}
    - input: {shape: [3, 5]}
  layers:
    - reshape: {target_shape: [3, 4]}
      inputs: input_1
    - dense: {units: 5}
    - dense: {units: 5}
      inputs: reshape
    - subtract: {}
      inputs: [dense, dense_1]
    - multiply: {}
      inputs: [dense, input_2]
    - average: {}
      inputs: [subtract, multiply, input_2]
    - maximum: {}
      inputs: [average, dense]
    - minimum: {}
      inputs: [maximum, dense_1]
    - dense: {units: 1}
)";

// (e) shape_forms() is not expressible in a run file: it needs Lambda layers (a three-way split and a
// reduce_sum), which lockstep does not have.

TEST(GraphSummary, SeedExerciseFromRunFileMatchesTfKeras) {
  auto m = graph(kSeedExercise, DType::F32);
  EXPECT_EQ(m->total_params(), 56401);
  EXPECT_EQ(m->summary(), golden("functional_seed_exercise.txt"));
}
TEST(GraphSummary, BookComparisonFromRunFileMatchesTfKeras) {
  auto m = graph(kBookComparison, DType::F32);
  EXPECT_EQ(m->total_params(), 239821);
  EXPECT_EQ(m->summary(), golden("functional_book_comparison.txt"));
}
TEST(GraphSummary, SharedTwoOutputsFromRunFileMatchesTfKeras) {
  auto m = graph(kSharedTwoOutputs, DType::F32);
  EXPECT_EQ(m->total_params(), 276);
  EXPECT_EQ(m->trainable_params(), 244);
  EXPECT_EQ(m->summary(), golden("functional_shared_two_outputs.txt"));
}
TEST(GraphSummary, MergesFromRunFileMatchesTfKeras) {
  auto m = graph(kMerges, DType::F32);
  EXPECT_EQ(m->total_params(), 56);
  EXPECT_EQ(m->summary(), golden("functional_merges.txt"));
}

// A Sequential model opening with an `input` entry is the input_shape one (Keras prints no InputLayer
// row for a Sequential model): 784·300+300 = 235,500; 300·100+100 = 30,100; 100·10+10 = 1,010.
TEST(GraphSummary, SequentialWithInputEntryEqualsInputShape) {
  const char* layers = R"(
    - flatten: {}
    - dense: {units: 300, activation: relu}
    - dense: {units: 100, activation: relu}
    - dense: {units: 10, activation: softmax}
)";
  auto with_entry = graph(str_cat("model:\n  layers:\n    - input: {shape: [28, 28]}", layers), DType::F32);
  auto with_shape = graph(str_cat("model:\n  input_shape: [28, 28]\n  layers:", layers), DType::F32);
  EXPECT_TRUE(with_entry->is_sequential());
  EXPECT_EQ(with_entry->layers().size(), 4u);
  EXPECT_EQ(with_entry->input_shape(), (Shape{28, 28}));
  EXPECT_EQ(with_entry->summary(), with_shape->summary());
  EXPECT_EQ(with_entry->summary(), golden("sequential_mlp.txt"));
  EXPECT_EQ(with_entry->graph_dot(), with_shape->graph_dot());
}

TEST(GraphSummary, GraphDotHasEveryLayerAndEdge) {
  for (const char* yaml : {kSeedExercise, kBookComparison, kSharedTwoOutputs, kMerges}) {
    auto m = graph(yaml, DType::F32);
    const std::string dot = m->graph_dot();
    EXPECT_EQ(dot.rfind("digraph \"" + m->name() + "\" {\n", 0), 0u) << dot;
    size_t edges = 0;
    for (const SummaryRow& r : m->summary_rows()) {
      EXPECT_NE(dot.find("  \"" + r.name + "\" [label=\"{" + r.name + ": " + r.keras_class + "|"), std::string::npos)
          << r.name << "\n" << dot;
      std::vector<std::string> from;
      for (const std::string& c : r.connected_to) {
        const std::string src = c.substr(0, c.find('['));
        if (std::find(from.begin(), from.end(), src) == from.end()) from.push_back(src);
      }
      for (const std::string& src : from) {
        EXPECT_NE(dot.find("  \"" + src + "\" -> \"" + r.name + "\";\n"), std::string::npos)
            << src << " -> " << r.name << "\n" << dot;
        ++edges;
      }
    }
    size_t arrows = 0;
    for (size_t at = dot.find(" -> "); at != std::string::npos; at = dot.find(" -> ", at + 1)) ++arrows;
    EXPECT_EQ(arrows, edges) << dot;
  }
  // The merges model's edges, spelled out.
  const std::string dot = graph(kMerges, DType::F32)->graph_dot();
  for (const char* e : {"\"input_1\" -> \"reshape\"", "\"reshape\" -> \"dense\"", "\"reshape\" -> \"dense_1\"",
                        "\"dense\" -> \"subtract\"", "\"dense_1\" -> \"subtract\"", "\"dense\" -> \"multiply\"",
                        "\"input_2\" -> \"multiply\"", "\"subtract\" -> \"average\"", "\"multiply\" -> \"average\"",
                        "\"input_2\" -> \"average\"", "\"average\" -> \"maximum\"", "\"dense\" -> \"maximum\"",
                        "\"maximum\" -> \"minimum\"", "\"dense_1\" -> \"minimum\"", "\"minimum\" -> \"dense_2\""})
    EXPECT_NE(dot.find(e), std::string::npos) << e << "\n" << dot;
  // A Sequential model's graph: its input, then the chain.
  const std::string seq = graph("model:\n  input_shape: [4]\n  layers:\n    - dense: {units: 3}\n    - dense: {units: 2}\n",
                                DType::F32)->graph_dot();
  for (const char* e : {"  \"input\" -> \"dense\";\n", "  \"dense\" -> \"dense_1\";\n"})
    EXPECT_NE(seq.find(e), std::string::npos) << e << "\n" << seq;
}

// A shared layer whose calls give different shapes prints "multiple" (tf_keras).
TEST(GraphSummary, SharedLayerWithDifferentOutputShapesIsMultiple) {
  auto m = graph(R"(model:
  inputs:
    - input: {shape: [4]}
    - input: {shape: [5, 4]}
  layers:
    - dense: {name: shared, units: 3}
      inputs: input_1
    - call: shared
      inputs: input_2
  outputs: [shared, "shared[1]"]
)", DType::F32);
  const std::string s = m->summary();
  EXPECT_NE(s.find(" shared (Dense)              multiple                     15        ['input_1[0][0]',"),
            std::string::npos) << s;
  EXPECT_EQ(m->output_shape(1), (Shape{5, 3}));
}

// ---- errors: file, line and a clear description --------------------------------------------------------
// The 1-based number of the `nth` line of `yaml` holding `marker`.
int line_of(const std::string& yaml, const std::string& marker, int nth = 1) {
  std::istringstream in(yaml);
  std::string line;
  for (int n = 1; std::getline(in, line); ++n)
    if (line.find(marker) != std::string::npos && --nth == 0) return n;
  ADD_FAILURE() << "no line holds '" << marker << "'";
  return -1;
}

std::string config_error(const std::string& yaml) {
  try {
    graph(yaml, DType::F32);
  } catch (const ConfigError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected a ConfigError, got: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected a ConfigError, nothing was thrown for:\n" << yaml;
  return "";
}

// The error names run.yaml at the line of `marker`, and holds every one of `parts`.
void expect_error_at(const std::string& yaml, const std::string& marker, const std::vector<std::string>& parts,
                     int nth = 1) {
  const std::string msg = config_error(yaml);
  const std::string at = str_cat("run.yaml:", line_of(yaml, marker, nth), ":");
  EXPECT_EQ(msg.rfind(at, 0), 0u) << "expected '" << at << "' at the start of: " << msg;
  for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "missing '" << p << "' in: " << msg;
}

TEST(GraphErrors, Cycle) {
  const std::string yaml = R"(model:
  inputs:
    - input: {shape: [4]}
  layers:
    - add: {name: a}
      inputs: [input_1, b]
    - dense: {name: b, units: 4}
      inputs: a
  outputs: b
)";
  EXPECT_EQ(line_of(yaml, "add: {name: a}"), 5);
  expect_error_at(yaml, "add: {name: a}", {"layer a takes the output of b", "cycle"});
}

TEST(GraphErrors, DanglingLayer) {
  expect_error_at(R"(model:
  inputs:
    - input: {shape: [4]}
  layers:
    - dense: {name: used, units: 3}
    - dense: {name: spare, units: 2}
      inputs: input_1
    - dense: {name: out, units: 1}
      inputs: used
  outputs: out
)", "name: spare", {"spare", "reaches no model output", "dangling"});
}

TEST(GraphErrors, UnusedInput) {
  const std::string yaml = R"(model:
  inputs:
    - input: {name: a, shape: [4]}
    - input: {name: b, shape: [4]}
  layers:
    - dense: {units: 3}
      inputs: a
)";
  EXPECT_EQ(line_of(yaml, "name: b"), 4);
  expect_error_at(yaml, "name: b", {"input b is not used by any output"});
  // With `outputs:` too: still the input's own entry.
  expect_error_at(yaml + "  outputs: [dense]\n", "name: b", {"input b is not used"});
}

TEST(GraphErrors, UnknownNameInInputsSuggestsTheNearest) {
  const std::string yaml = R"(model:
  inputs:
    - input: {name: image, shape: [4]}
  layers:
    - dense: {name: encoder, units: 3}
      inputs: imgae
)";
  EXPECT_EQ(line_of(yaml, "imgae"), 6);
  expect_error_at(yaml, "imgae", {"no layer or input named 'imgae'", "did you mean 'image'?"});
  // In a list, and in outputs.
  expect_error_at(R"(model:
  inputs:
    - input: {shape: [4]}
  layers:
    - dense: {name: encoder, units: 3}
    - concatenate: {}
      inputs: [encoder, encodr]
)", "encodr]", {"'encodr'", "did you mean 'encoder'?"});
  expect_error_at(R"(model:
  inputs:
    - input: {shape: [4]}
  layers:
    - dense: {name: encoder, units: 3}
  outputs: [encoderr]
)", "outputs:", {"'encoderr'", "did you mean 'encoder'?"});
}

TEST(GraphErrors, CallIndexOfALayerCalledOnce) {
  expect_error_at(R"(model:
  inputs:
    - input: {shape: [4]}
  layers:
    - dense: {name: d, units: 3}
    - dense: {units: 2}
      inputs: d[3]
)", "d[3]", {"layer 'd' is called 1 time(s)", "d[0]"});
}

TEST(GraphErrors, ShapeMismatchAtAdd) {
  expect_error_at(R"(model:
  inputs:
    - input: {shape: [4]}
  layers:
    - dense: {name: p, units: 3}
    - dense: {name: q, units: 5}
      inputs: input_1
    - add: {}
      inputs: [p, q]
)", "add: {}", {"layer add (Add) needs inputs of one shape", "(None, 3), (None, 5)"});
}

TEST(GraphErrors, ShapeMismatchAtConcatenate) {
  expect_error_at(R"(model:
  inputs:
    - input: {shape: [3, 4]}
    - input: {shape: [2, 5]}
  layers:
    - concatenate: {axis: -1}
      inputs: [input_1, input_2]
)", "concatenate:", {"Concatenate", "concatenation axis", "(None, 3, 4), (None, 2, 5)"});
  // Axis 1 on rank 2 is fine for (3) and (5); axis 0 is the batch.
  expect_error_at(R"(model:
  inputs:
    - input: {shape: [3]}
    - input: {shape: [5]}
  layers:
    - concatenate: {axis: 0}
      inputs: [input_1, input_2]
)", "concatenate:", {"axis 0", "batch"});
}

TEST(GraphErrors, SubtractWithThreeInputs) {
  expect_error_at(R"(model:
  inputs:
    - input: {shape: [4]}
  layers:
    - dense: {name: p, units: 4}
    - subtract: {}
      inputs: [input_1, p, p]
)", "subtract:", {"Subtract", "exactly 2 inputs", "got 3"});
  expect_error_at(R"(model:
  inputs:
    - input: {shape: [4]}
  layers:
    - add: {}
      inputs: [input_1]
)", "add:", {"Add", "at least 2 inputs", "got 1"});
  expect_error_at(R"(model:
  inputs:
    - input: {shape: [4]}
  layers:
    - dense: {units: 4}
      inputs: [input_1, input_1]
)", "dense:", {"Dense", "one input", "got 2"});
}

TEST(GraphErrors, SharedLayerOnIncompatibleShapes) {
  expect_error_at(R"(model:
  inputs:
    - input: {shape: [4]}
    - input: {shape: [5]}
  layers:
    - dense: {name: s, units: 3}
      inputs: input_1
    - call: s
      inputs: input_2
    - concatenate: {}
      inputs: [s, "s[1]"]
)", "call: s", {"layer s is called on inputs of shape (4,) and (5,)", "shared"});
}

TEST(GraphErrors, InputsInASequentialModel) {
  expect_error_at(R"(model:
  input_shape: [4]
  layers:
    - dense: {units: 3}
    - dense: {units: 2}
      inputs: dense
)", "units: 2", {"`inputs:` wires a graph"});
  expect_error_at(R"(model:
  input_shape: [4]
  layers:
    - dense: {units: 3}
    - call: dense
      inputs: dense
)", "call: dense", {"`call:` wires a graph"});
}

TEST(GraphErrors, InputShapeAndInputsBothGiven) {
  expect_error_at(R"(model:
  input_shape: [4]
  inputs:
    - input: {shape: [4]}
  layers:
    - dense: {units: 2}
)", "input_shape", {"drop input_shape"});
  expect_error_at(R"(model:
  input_shape: [4]
  layers:
    - input: {shape: [4]}
    - dense: {units: 2}
)", "- input:", {"input shape is given twice"});
}

TEST(GraphErrors, DuplicateLayerNames) {
  const std::string yaml = R"(model:
  inputs:
    - input: {shape: [4]}
  layers:
    - dense: {name: hidden, units: 3}
    - dense: {name: hidden, units: 3}
)";
  EXPECT_EQ(line_of(yaml, "name: hidden", 2), 6);
  expect_error_at(yaml, "name: hidden", {"two layers are named 'hidden'"}, 2);
  // A layer named as an input; a repeat further down.
  expect_error_at(R"(model:
  inputs:
    - input: {name: x, shape: [4]}
  layers:
    - dense: {name: hidden, units: 3}
    - dense: {name: x, units: 3}
)", "{name: x, units", {"two layers are named 'x'"});
  expect_error_at(R"(model:
  inputs:
    - input: {shape: [4]}
  layers:
    - dense: {name: hidden, units: 3}
    - dense: {units: 3}
    - dense: {name: hidden, units: 1}
)", "units: 1", {"two layers are named 'hidden'"});
}

TEST(GraphErrors, CallOfAnUnknownLayer) {
  expect_error_at(R"(model:
  inputs:
    - input: {shape: [4]}
  layers:
    - dense: {name: encoder, units: 3}
    - call: encoderr
      inputs: input_1
)", "call: encoderr", {"no layer named 'encoderr'", "did you mean 'encoder'?"});
  expect_error_at(R"(model:
  inputs:
    - input: {shape: [4]}
  layers:
    - dense: {name: encoder, units: 3}
    - call: input_1
      inputs: encoder
)", "call: input_1", {"'input_1' is an input; it cannot be called"});
}

TEST(GraphErrors, OutputListedTwice) {
  // An input listed as an output twice: the error is at the repeat.
  expect_error_at(R"(model:
  inputs:
    - input: {shape: [4]}
  layers:
    - dense: {name: d, units: 3}
  outputs:
    - d
    - input_1
    - input_1
)", "- input_1", {"'input_1'", "listed twice"}, 2);
  // One value named twice (d is d[0]).
  expect_error_at(R"(model:
  inputs:
    - input: {shape: [4]}
  layers:
    - dense: {name: d, units: 3}
  outputs:
    - d
    - d[0]
)", "- d[0]", {"'d[0]'", "listed twice"});
  expect_error_at(R"(model:
  inputs:
    - input: {shape: [4]}
  layers:
    - dense: {name: d, units: 3}
  outputs: [d, input_1, d]
)", "outputs:", {"'d'", "listed twice"});
  // An input may be an output once (Keras allows it).
  auto m = graph("model:\n  inputs:\n    - input: {shape: [4]}\n  layers:\n    - dense: {name: d, units: 3}\n"
                 "  outputs: [d, input_1]\n");
  EXPECT_EQ(m->output_name(1), "input_1");
  EXPECT_EQ(m->output_shape(1), (Shape{4}));
}

// `[a, s[1]]` is not YAML (brackets end a flow list): NAME[k] in a flow list needs quotes ("s[1]"), in
// a block list it does not (`- s[1]`). The parser's error still names the file and line.
TEST(GraphErrors, UnquotedCallIndexInAFlowList) {
  expect_error_at(R"(model:
  inputs:
    - input: {shape: [4]}
  layers:
    - dense: {name: s, units: 3}
    - call: s
      inputs: input_1
  outputs: [s, s[1]]
)", "outputs:", {"not valid YAML"});
  auto m = graph(R"(model:
  inputs:
    - input: {shape: [4]}
  layers:
    - dense: {name: s, units: 3}
    - call: s
      inputs: input_1
  outputs:
    - s
    - s[1]
)");
  EXPECT_EQ(m->num_outputs(), 2);
}

// ---- a Functional chain is the Sequential model ------------------------------------------------------
const char* kChainLayers = R"(
    - flatten: {}
    - batch_normalization: {}
    - dense: {units: 5, activation: selu, kernel_initializer: lecun_normal, bias_initializer: {random_normal: {stddev: 0.3}}}
    - batch_normalization: {gamma_initializer: {random_uniform: {minval: 0.5, maxval: 1.5}}, beta_initializer: {random_normal: {stddev: 0.3}}}
    - activation: {activation: tanh}
    - dense: {units: 4, use_bias: false}
    - dropout: {rate: 0.25}
    - prelu: {alpha_initializer: {random_uniform: {minval: 0.05, maxval: 0.5}}}
    - dense: {units: 3, activation: softmax, bias_initializer: {random_normal: {stddev: 0.3}}}
)";

void expect_bitwise(const Tensor& a, const Tensor& b, const std::string& what) {
  ASSERT_EQ(a.shape(), b.shape()) << what;
  EXPECT_EQ(a.to_double_vector(), b.to_double_vector()) << what;
}

void chain_equals_sequential(DType dtype, bool training) {
  // Dropout's mask derives from the layer's index, which the InputLayer shifts: in training the
  // dropout is inactive (rate 0); at inference it is the identity either way.
  std::string layers = kChainLayers;
  if (training) layers.replace(layers.find("rate: 0.25"), 10, "rate: 0.0");
  auto seq = graph("model:\n  input_shape: [2, 3]\n  layers:" + layers, dtype);
  auto fun = graph("model:\n  inputs:\n    - input: {shape: [2, 3]}\n  layers:" + layers, dtype);
  // The same layers through the general graph path (the input is a second output: not a chain), which
  // folds the input BatchNormalization into the Dense above as the chain does.
  auto gra = graph("model:\n  inputs:\n    - input: {shape: [2, 3]}\n  layers:" + layers +
                       "  outputs: [dense_2, input_1]\n",
                   dtype);
  ASSERT_TRUE(seq->is_sequential());
  ASSERT_FALSE(fun->is_sequential());
  ASSERT_EQ(fun->layers().size(), seq->layers().size() + 1);  // + input_1
  EXPECT_EQ(fun->layer(0).keras_class(), "InputLayer");
  for (size_t i = 0; i < seq->layers().size(); ++i) EXPECT_EQ(fun->layer(int(i) + 1).name(), seq->layer(int(i)).name());
  seq->init(21);
  fun->init(21);
  ASSERT_EQ(fun->weights_arena().numel(), seq->weights_arena().numel());
  ASSERT_EQ(fun->grads_arena().numel(), seq->grads_arena().numel());
  fun->weights_arena().copy_from(seq->weights_arena());
  gra->init(21);
  gra->weights_arena().copy_from(seq->weights_arena());
  EXPECT_EQ(fun->total_params(), seq->total_params());
  EXPECT_EQ(fun->output_activation(), seq->output_activation());
  for (int step = 0; step < 3; ++step) {
    Tensor x = randn({8, 2, 3}, 2100 + uint64_t(step), 1.0, 0.5, dtype);
    Context cs = training ? training_ctx(3, step) : inference_ctx(3, step);
    Context cf = cs, cg = cs;
    const Tensor ys = seq->forward(x, cs).clone();
    const Tensor yf = fun->forward(x, cf).clone();
    const Tensor yg = gra->forward(std::vector<Tensor>{x}, cg)[0].clone();
    expect_bitwise(yf, ys, "output");
    expect_bitwise(yg, ys, "output (graph path)");
    Tensor dout = randn(ys.shape(), 2200 + uint64_t(step), 1.0, 0.0, dtype);
    std::vector<int> done_s, done_f;
    seq->backward(dout, cs, [&](int l) { done_s.push_back(l); });
    fun->backward(dout, cf, [&](int l) { done_f.push_back(l); });
    std::vector<int> done_g;
    gra->backward(std::vector<Tensor>{dout, Tensor()}, cg, [&](int l) { done_g.push_back(l); });
    expect_bitwise(fun->grads_arena(), seq->grads_arena(), "gradients");
    expect_bitwise(fun->weights_arena(), seq->weights_arena(), "weights (moving statistics)");
    expect_bitwise(gra->grads_arena(), seq->grads_arena(), "gradients (graph path)");
    expect_bitwise(gra->weights_arena(), seq->weights_arena(), "weights (graph path)");
    EXPECT_EQ(done_g, done_f) << "layers finish in the same order on the graph path";
    ASSERT_EQ(done_f.size(), done_s.size());
    for (size_t i = 0; i < done_s.size(); ++i) EXPECT_EQ(done_f[i], done_s[i] + 1);  // the same layers, shifted
  }
}

TEST(GraphEquivalence, FunctionalChainEqualsSequentialInference) {
  chain_equals_sequential(DType::F64, false);
  chain_equals_sequential(DType::F32, false);
}

TEST(GraphEquivalence, FunctionalChainEqualsSequentialTrainingWithoutDropout) {
  chain_equals_sequential(DType::F64, true);
  chain_equals_sequential(DType::F32, true);
}

}  // namespace
}  // namespace lockstep::test
