// Model summaries built from run-file text (the `summary` verb's path), config errors with their
// file:line, key and near-miss suggestion, and run-to-run determinism.
#include <gtest/gtest.h>

#include <cstring>
#include <regex>
#include <type_traits>

#include "tests/core/test_util.h"

namespace lockstep::test {
namespace {

// ---- summaries -----------------------------------------------------------------------------------
std::string summary_of(const std::string& yaml) {
  ConfigNode cfg = load_config_string(yaml, "run.yaml");
  auto m = Model::from_config(cfg["model"]);  // as launch/main.cpp cmd_summary
  return m->summary();
}
// tf_keras prints "Total params: 266610 (1.02 MB)": the count without separators, then its size.
void expect_totals(const std::string& s, const char* total, const char* trainable, const char* non_trainable) {
  auto plain = [](std::string n) { return std::erase(n, ','), n; };
  EXPECT_NE(s.find(std::string("\nTotal params: ") + plain(total) + " ("), std::string::npos) << s;
  EXPECT_NE(s.find(std::string("\nTrainable params: ") + plain(trainable) + " ("), std::string::npos) << s;
  EXPECT_NE(s.find(std::string("\nNon-trainable params: ") + plain(non_trainable) + " ("), std::string::npos) << s;
}
bool has_row(const std::string& s, const std::string& pattern) { return std::regex_search(s, std::regex(pattern)); }

TEST(Summary, Mlp784_300_100_10) {
  std::string s = summary_of(R"(model:
  name: fashion_mlp
  input_shape: [28, 28]
  layers:
    - flatten: {}
    - dense: {units: 300, activation: relu}
    - dense: {units: 100, activation: relu}
    - dense: {units: 10, activation: softmax}
)");
  expect_totals(s, "266,610", "266,610", "0");
  EXPECT_NE(s.find("Model: \"fashion_mlp\""), std::string::npos);
  EXPECT_TRUE(has_row(s, R"(flatten \(Flatten\) +\(None, 784\) +0)")) << s;
  EXPECT_TRUE(has_row(s, R"(dense \(Dense\) +\(None, 300\) +235500)")) << s;
  EXPECT_TRUE(has_row(s, R"(dense_1 \(Dense\) +\(None, 100\) +30100)")) << s;
  EXPECT_TRUE(has_row(s, R"(dense_2 \(Dense\) +\(None, 10\) +1010)")) << s;
}

TEST(Summary, BatchNormAfterFlattenAndEachHiddenDense) {
  std::string s = summary_of(R"(model:
  input_shape: [28, 28]
  layers:
    - flatten: {}
    - batch_normalization: {}
    - dense: {units: 300, activation: relu}
    - batch_normalization: {}
    - dense: {units: 100, activation: relu}
    - batch_normalization: {}
    - dense: {units: 10, activation: softmax}
)");
  expect_totals(s, "271,346", "268,978", "2,368");
  // tf_keras wraps the first column at 26 characters onto a continuation line
  EXPECT_TRUE(has_row(s, R"(batch_normalization \(Batch +\(None, 784\) +3136 *\n Normalization\))")) << s;
  EXPECT_TRUE(has_row(s, R"(batch_normalization_1 \(Bat +\(None, 300\) +1200 *\n chNormalization\))")) << s;
  EXPECT_TRUE(has_row(s, R"(batch_normalization_2 \(Bat +\(None, 100\) +400)")) << s;
}

TEST(Summary, BatchNormBeforeActivationWithoutBias) {
  std::string s = summary_of(R"(model:
  input_shape: [28, 28]
  layers:
    - flatten: {}
    - batch_normalization: {}
    - dense: {units: 300, use_bias: false}
    - batch_normalization: {}
    - activation: {activation: relu}
    - dense: {units: 100, use_bias: false}
    - batch_normalization: {}
    - activation: {activation: relu}
    - dense: {units: 10, activation: softmax}
)");
  expect_totals(s, "270,946", "268,578", "2,368");
  EXPECT_TRUE(has_row(s, R"(dense \(Dense\) +\(None, 300\) +235200)")) << s;
  EXPECT_TRUE(has_row(s, R"(activation \(Activation\) +\(None, 300\) +0)")) << s;
}

TEST(Summary, FrozenLayerMovesItsWeightsToNonTrainable) {
  std::string s = summary_of(R"(model:
  input_shape: [28, 28]
  layers:
    - flatten: {}
    - dense: {units: 300, activation: relu, trainable: false}
    - prelu: {}
    - dense: {units: 10, activation: softmax}
)");
  expect_totals(s, "238,810", "3,310", "235,500");
}

// ---- config errors -----------------------------------------------------------------------------------
static_assert(std::is_base_of_v<UserError, ConfigError>, "ConfigError must be a UserError (exit status 2)");

std::string config_error(const std::string& yaml) {
  try {
    model_from_yaml(yaml, DType::F32, "run.yaml");
  } catch (const ConfigError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected a ConfigError, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected a ConfigError, nothing was thrown for:\n" << yaml;
  return "";
}
void expect_contains(const std::string& msg, const std::vector<std::string>& parts) {
  for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "missing '" << p << "' in: " << msg;
}
std::string mlp_with(const std::string& second_layer) {
  return "model:\n  input_shape: [28, 28]\n  layers:\n    - flatten: {}\n    - " + second_layer +
         "\n    - dense: {units: 10, activation: softmax}\n";
}

TEST(ConfigErrors, UnknownLayerNamesFileLineKeyAndSuggestion) {
  std::string msg = config_error(mlp_with("dnse: {units: 300}"));  // the entry is on line 5
  expect_contains(msg, {"run.yaml:5:", "model.layers[1]", "unknown layer 'dnse'", "did you mean 'dense'?"});
  EXPECT_TRUE(std::regex_search(msg, std::regex(R"(^run\.yaml:5:\d+: model\.layers\[1\])"))) << msg;
  msg = config_error(mlp_with("batch_normalisation: {}"));
  expect_contains(msg, {"run.yaml:5:", "did you mean 'batch_normalization'?"});
  // also caught as a UserError
  EXPECT_THROW(model_from_yaml(mlp_with("dense_layer: {units: 3}"), DType::F32), UserError);
}

TEST(ConfigErrors, UnknownKeyInsideALayer) {
  std::string msg = config_error(mlp_with("dense: {units: 300, activaton: relu}"));
  expect_contains(msg, {"run.yaml:5:", "model.layers[1].dense.activaton", "unknown key 'activaton'",
                        "did you mean 'activation'?"});
  msg = config_error(mlp_with("batch_normalization: {momentun: 0.9}"));
  expect_contains(msg, {"run.yaml:5:", "model.layers[1].batch_normalization.momentun", "did you mean 'momentum'?"});
}

TEST(ConfigErrors, WrongTypes) {
  expect_contains(config_error(mlp_with("dense: {units: ten}")),
                  {"run.yaml:5:", "model.layers[1].dense.units", "expected an integer", "'ten'"});
  expect_contains(config_error(mlp_with("dense: {units: 3, use_bias: maybe}")),
                  {"model.layers[1].dense.use_bias", "expected true or false", "'maybe'"});
  expect_contains(config_error(mlp_with("dense: {units: [3]}")), {"model.layers[1].dense.units", "expected an integer"});
  expect_contains(config_error(mlp_with("dropout: 0.2")), {"model.layers[1].dropout", "expected a mapping"});
  expect_contains(config_error("model:\n  input_shape: 784\n  layers:\n    - dense: {units: 3}\n"),
                  {"run.yaml:2:", "model.input_shape", "expected a list"});
  expect_contains(config_error(mlp_with("dense: {units: 3, activation: rleu}")),
                  {"model.layers[1].dense.activation", "unknown activation 'rleu'", "did you mean 'relu'?"});
  expect_contains(config_error(mlp_with("dense: {units: 3, kernel_initializer: he_norml}")),
                  {"model.layers[1].dense.kernel_initializer", "unknown initializer 'he_norml'", "did you mean 'he_normal'?"});
  expect_contains(config_error(mlp_with("dense: {activation: relu}")), {"model.layers[1].dense.units", "required"});
}

TEST(ConfigErrors, DropoutRateOutOfRange) {
  for (const char* layer : {"dropout: {rate: 1.0}", "dropout: {rate: 1}", "alpha_dropout: {rate: 1.5}",
                            "mc_dropout: {rate: -0.1}"}) {
    std::string msg = config_error(mlp_with(layer));
    expect_contains(msg, {"run.yaml:5:", ".rate", "expected a rate in [0, 1)"});
  }
  expect_contains(config_error(mlp_with("dropout: {rate: 1.0}")), {"got 1"});
  // the edge that is allowed
  EXPECT_NO_THROW(model_from_yaml(mlp_with("dropout: {rate: 0.999}"), DType::F32));
}

TEST(ConfigErrors, ImpossibleShapes) {
  expect_contains(config_error("model:\n  input_shape: [10]\n  layers:\n    - batch_normalization: {axis: 2}\n"),
                  {"run.yaml:4:", "model.layers", "batch_normalization", "axis 2", "(None, 10)"});
  expect_contains(config_error("model:\n  input_shape: [4, 5]\n  layers:\n    - prelu: {shared_axes: [3]}\n"),
                  {"model.layers", "shared axis 3"});
  expect_contains(config_error("model:\n  input_shape: [0, 28]\n  layers:\n    - flatten: {}\n"),
                  {"run.yaml:2:", "model.input_shape", "positive"});
  expect_contains(config_error("model:\n  input_shape: []\n  layers:\n    - flatten: {}\n"), {"model.input_shape"});
  expect_contains(config_error("model:\n  input_shape: [5]\n  layers:\n    - dense: {units: 0}\n"),
                  {"model.layers[0].dense.units", "positive"});
  expect_contains(config_error("model:\n  input_shape: [5]\n  layers: []\n"), {"model.layers", "at least one layer"});
  expect_contains(config_error("model:\n  input_shape: [5]\n  layers:\n    - dense: {units: 3, name: a}\n"
                               "    - dense: {units: 3, name: a}\n"),
                  {"two layers are named 'a'"});
  expect_contains(config_error("model:\n  input_shape: [5]\n  layers:\n    - rrelu: {lower: 0.5, upper: 0.1}\n"),
                  {"model.layers[0].rrelu.upper", "must not be below lower"});
}

TEST(ConfigErrors, InvalidYamlNamesThePosition) {
  try {
    load_config_string("model:\n  input_shape: [28, 28\n  layers: []\n", "bad.yaml");
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    expect_contains(e.what(), {"bad.yaml:", "not valid YAML"});
  }
}

// ---- determinism ------------------------------------------------------------------------------------
const char* kDetModel = R"(model:
  input_shape: [8, 8]
  layers:
    - flatten: {}
    - dense: {units: 64, activation: selu, kernel_initializer: lecun_normal}
    - alpha_dropout: {rate: 0.1}
    - dense: {units: 48, use_bias: false}
    - batch_normalization: {}
    - prelu: {}
    - rrelu: {}
    - dropout: {rate: 0.3}
    - dense: {units: 10, activation: softmax}
)";

struct RunResult {
  std::vector<float> out, grads, weights;
};
RunResult train_steps(int steps) {
  auto m = model_from_yaml(kDetModel, DType::F32);
  m->init(1234);
  Tensor x = randn({32, 8, 8}, 99, 1.0, 0.0, DType::F32);
  RunResult r;
  for (int s = 0; s < steps; ++s) {
    Context ctx = training_ctx(1234, s);
    Tensor y = m->forward(x, ctx);
    r.out = y.to_vector();
    Tensor dy = randn(y.shape(), 100 + uint64_t(s), 1.0, 0.0, DType::F32);
    m->backward(dy, ctx);
    r.grads = m->grads_arena().to_vector();
    for (const WeightRef& w : m->trainable_weights()) ops::axpy(-0.01, w.weight->grad, w.weight->value);
  }
  r.weights = m->weights_arena().to_vector();
  return r;
}
bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(Determinism, IdenticalRunsAreBitIdentical) {
  RunResult a = train_steps(3), b = train_steps(3);
  EXPECT_TRUE(bit_equal(a.out, b.out));
  EXPECT_TRUE(bit_equal(a.grads, b.grads));
  EXPECT_TRUE(bit_equal(a.weights, b.weights));  // includes BN moving statistics
  // and the runs did something: another step count gives other weights
  RunResult c = train_steps(2);
  EXPECT_FALSE(bit_equal(a.weights, c.weights));
}

TEST(Determinism, RandomDrawsDoNotDependOnThreadCount) {
  const int before = ops::num_threads();
  auto draw = [](int threads) {
    ops::set_num_threads(threads);
    Tensor w({300, 400});  // above the kernels' parallel threshold
    initialize(Initializer::named("he_normal"), w, rng::Stream{5, 6});
    Tensor x = Tensor::full({300, 400}, 1.0), mask({300, 400}), y({300, 400});
    ops::dropout_forward(x, 0.4, rng::Stream{5, 7}, mask, y);
    std::vector<float> out = w.to_vector(), yv = y.to_vector();
    out.insert(out.end(), yv.begin(), yv.end());
    return out;
  };
  std::vector<float> one = draw(1), two = draw(2), four = draw(4);
  ops::set_num_threads(before);
  EXPECT_TRUE(bit_equal(one, two));
  EXPECT_TRUE(bit_equal(one, four));
}

}  // namespace
}  // namespace lockstep::test
