// Keras's Functional model.summary() table and plot_model's DOT graph (core/summary.h): the tables for
// five models, built here by hand, equal tf_keras 2.21's output byte for byte (tests/core/golden/,
// made by make_goldens.py there), and so do Model::summary() of the convolutional run files of
// launch/configs (what `lockstep summary` prints); the graph has every node and edge; dot renders it to SVG.
#include "core/summary.h"

#include <gtest/gtest.h>

#include "core/config.h"
#include "core/model.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <unistd.h>

#ifndef LOCKSTEP_GOLDEN_DIR
#error "LOCKSTEP_GOLDEN_DIR must name tests/core/golden"
#endif

namespace lockstep {
namespace {

namespace fs = std::filesystem;
using Shapes = std::vector<std::vector<int64_t>>;

std::string golden(const std::string& file) {
  const fs::path p = fs::path(LOCKSTEP_GOLDEN_DIR) / file;
  std::ifstream in(p, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << p;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

SummaryRow input(const std::string& name, std::vector<int64_t> shape) {
  return {name, "InputLayer", {std::move(shape)}, 0, {}};
}
SummaryRow row(const std::string& name, const std::string& cls, std::vector<int64_t> shape, int64_t params,
               std::vector<std::string> from) {
  return {name, cls, {std::move(shape)}, params, std::move(from)};
}
int64_t dense_params(int64_t in, int64_t units) { return in * units + units; }
int64_t sum_params(const std::vector<SummaryRow>& rows) {
  int64_t n = 0;
  for (const SummaryRow& r : rows) n += r.params;
  return n;
}

// (a) The seed exercise: Dense(100, elu) x3 per tower on the (28, 28) inputs, no Flatten.
std::vector<SummaryRow> seed_exercise() {
  return {
      input("input_1", {28, 28}),
      input("input_2", {28, 28}),
      row("dense", "Dense", {28, 100}, dense_params(28, 100), {"input_1[0][0]"}),
      row("dense_3", "Dense", {28, 100}, dense_params(28, 100), {"input_2[0][0]"}),
      row("dense_1", "Dense", {28, 100}, dense_params(100, 100), {"dense[0][0]"}),
      row("dense_4", "Dense", {28, 100}, dense_params(100, 100), {"dense_3[0][0]"}),
      row("dense_2", "Dense", {28, 100}, dense_params(100, 100), {"dense_1[0][0]"}),
      row("dense_5", "Dense", {28, 100}, dense_params(100, 100), {"dense_4[0][0]"}),
      row("concatenate", "Concatenate", {56, 100}, 0, {"dense_2[0][0]", "dense_5[0][0]"}),
      row("dense_6", "Dense", {56, 100}, dense_params(100, 100), {"concatenate[0][0]"}),
      row("dense_7", "Dense", {56, 1}, dense_params(100, 1), {"dense_6[0][0]"}),
  };
}

// (b) The book's comparison network: Flatten + 5 Dense(100) per tower, Concatenate, Dense(10), Dense(1).
std::vector<SummaryRow> book_comparison() {
  std::vector<SummaryRow> rows = {input("input_1", {28, 28}), input("input_2", {28, 28}),
                                  row("flatten", "Flatten", {784}, 0, {"input_1[0][0]"}),
                                  row("flatten_1", "Flatten", {784}, 0, {"input_2[0][0]"})};
  // Keras orders the towers' layers by depth, alternating: dense, dense_5, dense_1, dense_6, ...
  for (int k = 0; k < 5; ++k) {
    for (int tower = 0; tower < 2; ++tower) {
      const int id = tower * 5 + k;
      const std::string from = k == 0 ? (tower == 0 ? "flatten" : "flatten_1") : "dense_" + std::to_string(id - 1);
      rows.push_back(row(id == 0 ? "dense" : "dense_" + std::to_string(id), "Dense", {100},
                         dense_params(k == 0 ? 784 : 100, 100), {(from == "dense_0" ? "dense" : from) + "[0][0]"}));
    }
  }
  rows.push_back(row("concatenate", "Concatenate", {200}, 0, {"dense_4[0][0]", "dense_9[0][0]"}));
  rows.push_back(row("dense_10", "Dense", {10}, dense_params(200, 10), {"concatenate[0][0]"}));
  rows.push_back(row("dense_11", "Dense", {1}, dense_params(10, 1), {"dense_10[0][0]"}));
  return rows;
}

// (c) One Dense called on both inputs, Add, BatchNormalization, two outputs (one with a long name).
std::vector<SummaryRow> shared_two_outputs() {
  return {
      input("input_1", {8}),
      input("input_2", {8}),
      row("dense", "Dense", {16}, dense_params(8, 16), {"input_1[0][0]", "input_2[0][0]"}),
      row("add", "Add", {16}, 0, {"dense[0][0]", "dense[1][0]"}),
      row("batch_normalization", "BatchNormalization", {16}, 4 * 16, {"add[0][0]"}),
      row("regression_output", "Dense", {1}, dense_params(16, 1), {"batch_normalization[0][0]"}),
      row("a_very_long_classification_head_name", "Dense", {3}, dense_params(16, 3), {"batch_normalization[0][0]"}),
  };
}

// (d) Reshape, Dense on rank 3, Subtract, Multiply, Average of three, Maximum, Minimum.
std::vector<SummaryRow> merges() {
  return {
      input("input_1", {12}),
      row("reshape", "Reshape", {3, 4}, 0, {"input_1[0][0]"}),
      row("dense", "Dense", {3, 5}, dense_params(4, 5), {"reshape[0][0]"}),
      row("dense_1", "Dense", {3, 5}, dense_params(4, 5), {"reshape[0][0]"}),
      input("input_2", {3, 5}),
      row("subtract", "Subtract", {3, 5}, 0, {"dense[0][0]", "dense_1[0][0]"}),
      row("multiply", "Multiply", {3, 5}, 0, {"dense[0][0]", "input_2[0][0]"}),
      row("average", "Average", {3, 5}, 0, {"subtract[0][0]", "multiply[0][0]", "input_2[0][0]"}),
      row("maximum", "Maximum", {3, 5}, 0, {"average[0][0]", "dense[0][0]"}),
      row("minimum", "Minimum", {3, 5}, 0, {"maximum[0][0]", "dense_1[0][0]"}),
      row("dense_2", "Dense", {3, 1}, dense_params(5, 1), {"minimum[0][0]"}),
  };
}

TEST(FunctionalSummary, SeedExerciseMatchesTfKeras) {
  const auto rows = seed_exercise();
  ASSERT_EQ(sum_params(rows), 56401);
  EXPECT_EQ(functional_summary("model", rows, 56401, 56401), golden("functional_seed_exercise.txt"));
}

TEST(FunctionalSummary, BookComparisonMatchesTfKeras) {
  const auto rows = book_comparison();
  ASSERT_EQ(sum_params(rows), 239821);
  EXPECT_EQ(functional_summary("model", rows, 239821, 239821), golden("functional_book_comparison.txt"));
}

TEST(FunctionalSummary, SharedLayerTwoOutputsMatchesTfKeras) {
  // BatchNormalization: gamma, beta trainable; moving mean and variance (32) not.
  const auto rows = shared_two_outputs();
  ASSERT_EQ(sum_params(rows), 276);
  EXPECT_EQ(functional_summary("shared_two_outputs", rows, 276, 244), golden("functional_shared_two_outputs.txt"));
}

TEST(FunctionalSummary, MergesMatchTfKeras) {
  const auto rows = merges();
  ASSERT_EQ(sum_params(rows), 56);
  EXPECT_EQ(functional_summary("merges", rows, 56, 56), golden("functional_merges.txt"));
}

TEST(FunctionalSummary, SequentialTableMatchesTfKeras) {
  const std::vector<SummaryRow> rows = {
      row("flatten", "Flatten", {784}, 0, {}),
      row("dense", "Dense", {300}, dense_params(784, 300), {}),
      row("dense_1", "Dense", {100}, dense_params(300, 100), {}),
      row("dense_2", "Dense", {10}, dense_params(100, 10), {}),
  };
  EXPECT_EQ(sequential_summary("sequential", rows, 266610, 266610), golden("sequential_mlp.txt"));
}

// (e) The Output Shape column's other forms: three outputs (a list, wrapped), a shared layer whose
// calls give different shapes ("multiple"), a rank-0 per-sample output, a multi-output layer's tensors.
std::vector<SummaryRow> shape_forms() {
  return {
      input("input_1", {1000}),
      {"split", "Lambda", {{500}, {496}, {4}}, 0, {"input_1[0][0]"}},
      {"shared", "Dense", {}, dense_params(4, 3), {"split[0][2]", "input_2[0][0]"}},
      input("input_2", {5, 4}),
      {"scalar", "Lambda", {{}}, 0, {"shared[0][0]"}},
      row("cat", "Concatenate", {996}, 0, {"split[0][0]", "split[0][1]"}),
  };
}

TEST(FunctionalSummary, ShapeFormsMatchTfKeras) {
  EXPECT_EQ(functional_summary("shape_forms", shape_forms(), 15, 15), golden("functional_shape_forms.txt"));
}

std::vector<std::vector<std::vector<int64_t>>> input_shapes_of(const std::vector<SummaryRow>& rows) {
  // Each row's inputs are the outputs of the rows it is connected to (an InputLayer's: its own).
  std::vector<std::vector<std::vector<int64_t>>> out;
  for (const SummaryRow& r : rows) {
    Shapes in;
    if (r.keras_class == "InputLayer") in = r.output_shapes;
    for (const std::string& c : r.connected_to) {
      const size_t tensor = std::stoul(c.substr(c.rfind('[') + 1));  // "split[0][2]": tensor 2
      for (const SummaryRow& s : rows)
        if (s.name == c.substr(0, c.find('[')) && tensor < s.output_shapes.size()) in.push_back(s.output_shapes[tensor]);
    }
    out.push_back(in);
  }
  return out;
}

TEST(GraphDot, HasEveryNodeAndEdge) {
  for (const auto& rows : {seed_exercise(), book_comparison(), shared_two_outputs(), merges(), shape_forms()}) {
    const std::string dot = graph_dot("model", rows, input_shapes_of(rows));
    EXPECT_EQ(dot.rfind("digraph \"model\" {\n", 0), 0u) << dot;
    EXPECT_NE(dot.find("rankdir=TB"), std::string::npos);
    for (const SummaryRow& r : rows) {
      EXPECT_NE(dot.find("  \"" + r.name + "\" [label=\"{" + r.name + ": " + r.keras_class + "|"), std::string::npos)
          << r.name << "\n" << dot;
      for (const std::string& c : r.connected_to)
        EXPECT_NE(dot.find("  \"" + c.substr(0, c.find('[')) + "\" -> \"" + r.name + "\";\n"), std::string::npos)
            << c << " -> " << r.name << "\n" << dot;
    }
  }
  const auto rows = shared_two_outputs();
  const std::string dot = graph_dot("shared_two_outputs", rows, input_shapes_of(rows));
  // Shapes as plot_model shows them; the shared layer's two calls feed add over one edge.
  EXPECT_NE(dot.find("\"input_1\" [label=\"{input_1: InputLayer|{input:|[(None, 8)]}|{output:|[(None, 8)]}}\"];"),
            std::string::npos) << dot;
  EXPECT_NE(dot.find("\"add\" [label=\"{add: Add|{input:|[(None, 16), (None, 16)]}|{output:|(None, 16)}}\"];"),
            std::string::npos) << dot;
  size_t edges = 0;
  for (size_t at = dot.find("\"dense\" -> \"add\""); at != std::string::npos; at = dot.find("\"dense\" -> \"add\"", at + 1))
    ++edges;
  EXPECT_EQ(edges, 1u);
  // No input shapes: "?".
  EXPECT_NE(graph_dot("m", rows, {}).find("{add: Add|{input:|?}|"), std::string::npos);
}

TEST(GraphDot, RefusesUnknownInboundAndWrongShapeCount) {
  auto rows = merges();
  EXPECT_THROW(graph_dot("m", rows, {{}}), std::invalid_argument);
  rows.push_back(row("orphan", "Dense", {1}, 2, {"nowhere[0][0]"}));
  EXPECT_THROW(graph_dot("m", rows, {}), std::invalid_argument);
}

// The convolutional run files of launch/configs, built as `lockstep summary` builds them (float32),
// against tf_keras 2.21's model.summary() of the same Keras models (make_goldens.py).
std::unique_ptr<Model> run_file_model(const std::string& name) {
  const fs::path p = fs::path(LOCKSTEP_GOLDEN_DIR) / ".." / ".." / ".." / "launch" / "configs" / name;
  return Model::from_config(load_config_file(p.string())["model"], Device::CPU, DType::F32);
}

TEST(RunFileSummary, FashionMnistCnnMatchesTfKeras) {
  auto m = run_file_model("fashion_mnist_cnn.yaml");
  EXPECT_EQ(m->total_params(), 1413834);
  EXPECT_EQ(m->trainable_params(), 1413834);
  EXPECT_EQ(m->summary(), golden("sequential_fashion_mnist_cnn.txt"));
}

TEST(RunFileSummary, Cifar10CnnMatchesTfKeras) {
  auto m = run_file_model("cifar10_cnn.yaml");
  EXPECT_EQ(m->total_params(), 289642);
  EXPECT_EQ(m->total_params() - m->trainable_params(), 896);
  EXPECT_EQ(m->summary(), golden("sequential_cifar10_cnn.txt"));
}

TEST(RunFileSummary, Cifar10ResNet20MatchesTfKeras) {
  auto m = run_file_model("cifar10_resnet20.yaml");
  EXPECT_EQ(m->total_params(), 274442);
  EXPECT_EQ(m->total_params() - m->trainable_params(), 1376);
  EXPECT_EQ(m->summary(), golden("functional_cifar10_resnet20.txt"));
}

bool have_dot() { return std::system("command -v dot >/dev/null 2>&1") == 0; }

TEST(RenderDot, WritesSvg) {
  if (!have_dot()) GTEST_SKIP() << "Graphviz's dot is not installed (apt-get install graphviz)";
  const auto rows = seed_exercise();
  const fs::path out = fs::temp_directory_path() / ("lockstep_summary_test_" + std::to_string(::getpid()) + ".svg");
  render_dot(graph_dot("model", rows, input_shapes_of(rows)), out.string());
  std::ifstream in(out);
  std::ostringstream ss;
  ss << in.rdbuf();
  const std::string svg = ss.str();
  fs::remove(out);
  EXPECT_NE(svg.find("<svg"), std::string::npos);
  for (const SummaryRow& r : rows) EXPECT_NE(svg.find(r.name + ": " + r.keras_class), std::string::npos) << r.name;
}

TEST(RenderDot, FailuresNameTheOutputPath) {
  EXPECT_THROW(
      try { render_dot("digraph {}", "/tmp/graph.jpg"); } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("/tmp/graph.jpg"), std::string::npos) << e.what();
        throw;
      },
      std::runtime_error);
  // dot missing: no PATH to find it on.
  const char* old = std::getenv("PATH");
  const std::string saved = old ? old : "";
  ::setenv("PATH", "/nonexistent", 1);
  try {
    render_dot("digraph {}", "/tmp/graph.svg");
    ADD_FAILURE() << "render_dot without dot on PATH did not throw";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("/tmp/graph.svg"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("install Graphviz: apt-get install graphviz"), std::string::npos) << e.what();
  }
  ::setenv("PATH", saved.c_str(), 1);
  if (!have_dot()) return;
  // dot present but the input is not DOT: its error comes through.
  try {
    render_dot("this is not dot {", "/tmp/lockstep_summary_bad.svg");
    ADD_FAILURE() << "render_dot on bad input did not throw";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("/tmp/lockstep_summary_bad.svg"), std::string::npos) << e.what();
  }
  std::filesystem::remove("/tmp/lockstep_summary_bad.svg");
}

}  // namespace
}  // namespace lockstep
