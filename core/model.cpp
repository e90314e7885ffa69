#include "core/model.h"
#include "core/keras_io.h"

#include <algorithm>
#include <iomanip>
#include <map>
#include <numeric>
#include <regex>
#include <set>
#include <sstream>

#include "core/ops.h"
#include "core/summary.h"

namespace lockstep {

namespace {
constexpr int64_t kAlign = 16;  // floats: each weight starts on a 64-byte boundary
int64_t align_up(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

}  // namespace

std::string keras_snake_case(const std::string& name) {
  std::string s = std::regex_replace(name, std::regex("(.)([A-Z][a-z]+)"), "$1_$2");
  s = std::regex_replace(s, std::regex("([a-z])([A-Z])"), "$1_$2");
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

namespace {
// A graph error at one call (in the order given) or one input: Model::from_config points at that
// call's or input's entry.
class GraphError : public ConfigError {
 public:
  GraphError(int call, const std::string& what, int input = -1) : ConfigError(what), call_(call), input_(input) {}
  int call() const { return call_; }
  int input() const { return input_; }

 private:
  int call_, input_;
};

// Keras's automatic names, in creation order: the class's snake_case stem, then stem_1, stem_2, ...;
// inputs are input_1, input_2, ... (tf.keras 2.x's Input()). Names given in the run file are kept.
void assign_keras_names(std::vector<std::unique_ptr<Layer>>& layers) {
  std::map<std::string, int> counters;
  std::set<std::string> taken;
  for (auto& l : layers)
    if (!l->name().empty())
      LS_REQUIRE(taken.insert(l->name()).second, ConfigError, "model: two layers are named '", l->name(), "'");
  for (auto& l : layers) {
    if (!l->name().empty()) continue;
    const bool input = l->keras_class() == "InputLayer";
    std::string stem = input ? "input" : keras_snake_case(l->keras_class()), n;
    do {
      int c = counters[stem]++;
      n = input ? stem + "_" + std::to_string(c + 1) : c == 0 ? stem : stem + "_" + std::to_string(c);
    } while (taken.count(n));
    taken.insert(n);
    l->set_name(n);
  }
}
}  // namespace

Graph Graph::chain(Shape input_shape, int num_layers) {
  Graph g;
  g.input_shapes = {std::move(input_shape)};
  g.input_layers = {-1};
  for (int i = 0; i < num_layers; ++i) g.calls.push_back({i, {i}});
  g.outputs = {num_layers};
  return g;
}

Model::Model(Shape input_shape, std::vector<std::unique_ptr<Layer>> layers, std::string name, Device device, DType dtype)
    : layers_(std::move(layers)), sequential_(true), name_(std::move(name)), device_(device), dtype_(dtype) {
  LS_REQUIRE(!layers_.empty(), ConfigError, "model: at least one layer is required");
  assign_keras_names(layers_);
  build(Graph::chain(std::move(input_shape), int(layers_.size())));
}

Model::Model(Graph graph, std::vector<std::unique_ptr<Layer>> layers, std::string name, Device device, DType dtype)
    : layers_(std::move(layers)), name_(std::move(name)), device_(device), dtype_(dtype) {
  assign_keras_names(layers_);
  build(std::move(graph));
}

void Model::build(Graph g) {
  const int n_in = int(g.input_shapes.size()), n_calls = int(g.calls.size()), n_layers = int(layers_.size());
  LS_REQUIRE(n_in >= 1, ConfigError, "model: at least one input is required");
  LS_REQUIRE(n_calls >= 1, ConfigError, "model: at least one layer is required");
  LS_REQUIRE(!g.outputs.empty(), ConfigError, "model: at least one output is required");
  LS_CHECK(int(g.input_layers.size()) == n_in, "Graph: one input layer entry per input");
  const int n_values = n_in + n_calls;
  auto layer_of_value = [&](int v) { return v < n_in ? g.input_layers[size_t(v)] : g.calls[size_t(v - n_in)].layer; };
  auto value_name = [&](int v) {
    const int l = layer_of_value(v);
    return l >= 0 ? layers_[size_t(l)]->name() : std::string("input");
  };
  for (int k = 0; k < n_calls; ++k) {
    const LayerCall& c = g.calls[size_t(k)];
    LS_CHECK(c.layer >= 0 && c.layer < n_layers, "Graph: call ", k, " of layer ", c.layer, " out of range");
    if (layers_[size_t(c.layer)]->keras_class() == "InputLayer")
      throw GraphError(k, str_cat("layer ", layers_[size_t(c.layer)]->name(), " is an input; it cannot be called"));
    for (int v : c.inputs) LS_CHECK(v >= 0 && v < n_values, "Graph: call ", k, " reads value ", v, " out of range");
  }
  for (int v : g.outputs) LS_CHECK(v >= 0 && v < n_values, "Graph: output value ", v, " out of range");

  // Keras's traversal (tf.keras Functional._map_graph_network): a depth-first walk from the outputs
  // numbers the layers in the order it meets them and lists the calls when they finish; a call met
  // again while in progress closes a cycle.
  std::vector<int> layer_seen(static_cast<size_t>(n_layers) + 1, -1);  // +1: the inputs of a Sequential model
  auto seen_slot = [&](int v) { const int l = layer_of_value(v); return size_t(l < 0 ? n_layers : l); };
  int next_seen = 0;
  std::vector<char> state(size_t(n_values), 0);  // 0 new, 1 in progress, 2 done
  std::vector<int> finished;
  std::function<void(int, int)> visit = [&](int v, int from) {
    if (state[size_t(v)] == 2) return;
    if (state[size_t(v)] == 1)
      throw GraphError(from - n_in, str_cat("layer ", value_name(from), " takes the output of ", value_name(v),
                                            ", which depends on ", value_name(from), "'s own output: the layers form a cycle"));
    if (layer_seen[seen_slot(v)] < 0) layer_seen[seen_slot(v)] = next_seen++;
    state[size_t(v)] = 1;
    if (v >= n_in)
      for (int u : g.calls[size_t(v - n_in)].inputs) visit(u, v);
    state[size_t(v)] = 2;
    finished.push_back(v);
  };
  for (int v : g.outputs) visit(v, v);
  for (int v = 0; v < n_values; ++v)
    if (state[size_t(v)] != 2) {
      if (v < n_in) throw GraphError(-1, str_cat("input ", value_name(v), " is not used by any output"), v);
      throw GraphError(v - n_in, str_cat("the output of layer ", value_name(v),
                                         " reaches no model output (a dangling layer): use it, or list it in `outputs`"));
    }
  // Depths from the outputs: a value is deeper than every call that reads it; a layer takes the
  // deepest of its calls' depths.
  std::vector<int> depth(size_t(n_values), 0), layer_depth(size_t(n_layers) + 1, 0);
  for (auto it = finished.rbegin(); it != finished.rend(); ++it) {
    const int v = *it;
    int d = std::max(depth[size_t(v)], layer_depth[seen_slot(v)]);
    layer_depth[seen_slot(v)] = d;
    depth[size_t(v)] = d;
    if (v >= n_in)
      for (int u : g.calls[size_t(v - n_in)].inputs) depth[size_t(u)] = std::max(depth[size_t(u)], d + 1);
  }
  // Layers deepest first, then in traversal order (Keras's model.layers); unused layers last.
  std::vector<int> layer_order(static_cast<size_t>(n_layers));
  std::iota(layer_order.begin(), layer_order.end(), 0);
  auto seen_of = [&](int l) { return layer_seen[size_t(l)] < 0 ? INT32_MAX : layer_seen[size_t(l)]; };
  std::stable_sort(layer_order.begin(), layer_order.end(), [&](int a, int b) {
    if (layer_depth[size_t(a)] != layer_depth[size_t(b)]) return layer_depth[size_t(a)] > layer_depth[size_t(b)];
    return seen_of(a) < seen_of(b);
  });
  std::vector<int> new_layer(static_cast<size_t>(n_layers));
  for (int i = 0; i < n_layers; ++i) new_layer[size_t(layer_order[size_t(i)])] = i;
  for (int l = 0; l < n_layers; ++l)
    LS_REQUIRE(layer_seen[size_t(l)] >= 0, ConfigError, "layer ", layers_[size_t(l)]->name(),
               " is never called: give it `inputs:` or remove it");
  // Calls deepest first (a topological order), then by layer, then in the order given.
  std::vector<int> call_order(static_cast<size_t>(n_calls));
  std::iota(call_order.begin(), call_order.end(), 0);
  std::stable_sort(call_order.begin(), call_order.end(), [&](int a, int b) {
    const int da = depth[size_t(n_in + a)], db = depth[size_t(n_in + b)];
    if (da != db) return da > db;
    return new_layer[size_t(g.calls[size_t(a)].layer)] < new_layer[size_t(g.calls[size_t(b)].layer)];
  });
  std::vector<int> new_value(static_cast<size_t>(n_values));
  for (int v = 0; v < n_in; ++v) new_value[size_t(v)] = v;
  for (int k = 0; k < n_calls; ++k) new_value[size_t(n_in + call_order[size_t(k)])] = n_in + k;
  // Keras's node index: the calls of a layer numbered in the order they were made (given).
  std::vector<int> given_number(static_cast<size_t>(n_calls));
  calls_of_layer_.assign(size_t(n_layers), 0);
  for (int k = 0; k < n_calls; ++k) given_number[size_t(k)] = calls_of_layer_[size_t(new_layer[size_t(g.calls[size_t(k)].layer)])]++;

  // Apply the orders.
  std::vector<std::unique_ptr<Layer>> ordered(static_cast<size_t>(n_layers));
  for (int l = 0; l < n_layers; ++l) ordered[size_t(new_layer[size_t(l)])] = std::move(layers_[size_t(l)]);
  layers_ = std::move(ordered);
  input_shapes_ = g.input_shapes;
  input_layers_.clear();
  for (int l : g.input_layers) input_layers_.push_back(l < 0 ? -1 : new_layer[size_t(l)]);
  calls_.clear();
  call_number_.clear();
  for (int k = 0; k < n_calls; ++k) {
    const LayerCall& c = g.calls[size_t(call_order[size_t(k)])];
    LayerCall nc{new_layer[size_t(c.layer)], {}};
    for (int v : c.inputs) nc.inputs.push_back(new_value[size_t(v)]);
    calls_.push_back(std::move(nc));
    call_number_.push_back(given_number[size_t(call_order[size_t(k)])]);
  }
  outputs_.clear();
  for (int v : g.outputs) outputs_.push_back(new_value[size_t(v)]);
  std::vector<int> given_call(static_cast<size_t>(n_calls));  // execution position -> position given (for errors)
  for (int k = 0; k < n_calls; ++k) given_call[size_t(k)] = call_order[size_t(k)];

  // Clones for the later calls of shared layers, made before anything is built.
  for (int i = 0; i < n_layers; ++i) layers_[size_t(i)]->set_index(i);
  ops_.assign(size_t(n_calls), nullptr);
  clones_.clear();
  for (int k = 0; k < n_calls; ++k) {
    Layer& l = *layers_[size_t(calls_[size_t(k)].layer)];
    if (calls_of_layer_[size_t(calls_[size_t(k)].layer)] > 1) l.set_shared(true);
  }
  for (int k = 0; k < n_calls; ++k) {
    Layer& l = *layers_[size_t(calls_[size_t(k)].layer)];
    if (call_number_[size_t(k)] == 0) {
      ops_[size_t(k)] = &l;
      continue;
    }
    std::unique_ptr<Layer> c = l.clone();
    c->set_name(l.name());
    c->set_index(n_layers + int(clones_.size()));
    c->set_shared(true);
    ops_[size_t(k)] = c.get();
    clones_.push_back(std::move(c));
  }
  // Build: the inputs, then every call in order (the first call of a layer builds it in the run order
  // too: its first call in the order given may run later, but shapes agree or are refused below).
  for (int i = 0; i < n_in; ++i) {
    for (int64_t d : input_shapes_[size_t(i)])
      if (d < 1)
        throw GraphError(-1, str_cat("input ", value_name(i), ": expected positive dimensions, got ",
                                     shape_str(input_shapes_[size_t(i)])), i);
    if (input_layers_[size_t(i)] >= 0) layers_[size_t(input_layers_[size_t(i)])]->build(input_shapes_[size_t(i)]);
  }
  std::vector<Shape> shapes(static_cast<size_t>(n_values));
  for (int i = 0; i < n_in; ++i) shapes[size_t(i)] = input_shapes_[size_t(i)];
  for (int k = 0; k < n_calls; ++k) {
    Layer& l = op(k);
    const LayerCall& c = calls_[size_t(k)];
    std::vector<Shape> in;
    for (int v : c.inputs) in.push_back(shapes[size_t(v)]);
    try {
      LS_REQUIRE(int(in.size()) >= l.min_inputs() && int(in.size()) <= l.max_inputs(), ConfigError, "layer ", l.name(),
                 " (", l.keras_class(), ") takes ",
                 l.max_inputs() == 1               ? std::string("one input")
                 : l.max_inputs() == l.min_inputs() ? str_cat("exactly ", l.min_inputs(), " inputs")
                                                    : str_cat("at least ", l.min_inputs(), " inputs"),
                 ", got ", in.size());
      shapes[size_t(n_in + k)] = l.build_multi(in);
    } catch (const GraphError&) {
      throw;
    } catch (const ConfigError& e) {
      throw GraphError(given_call[size_t(k)], e.what());
    }
  }
  // A shared layer's calls must need the same weights.
  for (int k = 0; k < n_calls; ++k) {
    if (call_number_[size_t(k)] == 0) continue;
    Layer& first = *layers_[size_t(calls_[size_t(k)].layer)];
    Layer& again = op(k);
    bool same = first.weights().size() == again.weights().size();
    for (size_t w = 0; same && w < first.weights().size(); ++w) same = first.weights()[w].shape == again.weights()[w].shape;
    if (!same)
      throw GraphError(given_call[size_t(k)],
                       str_cat("layer ", first.name(), " is called on inputs of shape ", shape_str(first.input_shape()),
                               " and ", shape_str(again.input_shape()),
                               ", which need weights of different shapes (a shared layer's calls share its weights)"));
  }
  consumers_.assign(size_t(n_values), 0);
  for (const LayerCall& c : calls_)
    for (int v : c.inputs) ++consumers_[size_t(v)];
  // Pairings across layers, undone first (a layer may have been paired in another model).
  for (int k = 0; k < n_calls; ++k) {
    Layer& l = op(k);
    l.set_relu_gate(false);
    l.set_relu_backward_in_consumer(false);
    l.set_relu_in_producer(false);
    l.absorb_relu(false);
  }
  // Pairs of calls where the producer's output feeds the consumer alone (and is no model output), neither
  // layer shared:
  //  * a ReLU convolution under a max pooling: the pooling's backward does the ReLU's too, in its own pass
  //    (Layer::set_relu_gate);
  //  * a BatchNormalization or an Add under a ReLU layer: the producer applies the ReLU in its own passes
  //    and the ReLU layer passes through (Layer::absorb_relu).
  for (int k2 = 0; k2 < n_calls; ++k2) {
    const LayerCall& c = calls_[size_t(k2)];
    const int v = c.inputs.size() == 1 ? c.inputs[0] : -1, k = v - n_in;
    if (k < 0 || consumers_[size_t(v)] != 1 || std::count(outputs_.begin(), outputs_.end(), v) > 0) continue;
    Layer &producer = op(k), &consumer = op(k2);
    if (producer.shared() || consumer.shared()) continue;
    if (producer.output_activation() == ops::Activation::Relu && consumer.set_relu_gate(true) &&
        !producer.set_relu_backward_in_consumer(true))
      consumer.set_relu_gate(false);
    if (consumer.set_relu_in_producer(true) && !producer.absorb_relu(true)) consumer.set_relu_in_producer(false);
  }
  chain_ = n_in == 1 && outputs_.size() == 1 && clones_.empty() && outputs_[0] == n_in + n_calls - 1;
  for (int k = 0; chain_ && k < n_calls; ++k) chain_ = calls_[size_t(k)].inputs == std::vector<int>{n_in + k - 1};
  fused_.assign(outputs_.size(), ops::Activation::Linear);
  outs_.assign(outputs_.size(), Tensor());
  allocate();
}

namespace {
// A reference to a value in a Functional run file: "name" (a layer's first call or an input),
// "name[k]" or "name[k][0]" (Keras's node notation: the layer's k-th call).
struct ValueRef {
  std::string name;
  int call = 0;
};
ValueRef parse_ref(const ConfigNode& node) {
  const std::string s = node.as_string();
  static const std::regex re(R"(^\s*([^\[\]\s]+)\s*(?:\[\s*(\d+)\s*\](?:\s*\[\s*0\s*\])?)?\s*$)");
  std::smatch m;
  if (!std::regex_match(s, m, re))
    node.fail(str_cat("expected a layer or input name, or NAME[k] for a layer's k-th call (Keras's node index), got '",
                      s, "'"));
  return {m[1].str(), m[2].matched ? std::stoi(m[2].str()) : 0};
}

std::unique_ptr<Model> functional_from_config(const ConfigNode& m, Device device, DType dtype) {
  m.allow_keys({"name", "inputs", "layers", "outputs"});
  std::vector<std::unique_ptr<Layer>> layers;
  Graph g;
  // Inputs: `- input: {name, shape}` (or `- {name, shape}`).
  ConfigNode ins = m.require("inputs");
  ins.expect_seq();
  if (ins.size() == 0) ins.fail("expected at least one input, e.g. `- input: {name: image, shape: [28, 28]}`");
  std::vector<ConfigNode> input_nodes;
  for (size_t i = 0; i < ins.size(); ++i) {
    ConfigNode e = ins[i];
    std::unique_ptr<Layer> l;
    if (e.is_map() && e.has("input") && e.size() == 1) {
      l = make_layer(e);
    } else if (e.is_map() && e.has("shape")) {
      e.allow_keys({"name", "shape"});
      YAML::Node wrapped;
      wrapped["input"] = e.yaml();
      l = make_layer(ConfigNode(wrapped, std::make_shared<const std::string>(e.file()), e.path()));
    } else {
      e.fail("expected an input such as `- input: {name: image_a, shape: [28, 28]}`");
    }
    g.input_shapes.push_back(static_cast<InputLayer&>(*l).shape());
    g.input_layers.push_back(int(layers.size()));
    layers.push_back(std::move(l));
    input_nodes.push_back(e);
  }
  // Layers: `- KIND: {args}` with an optional `inputs:` (default: the entry before), or
  // `- call: NAME` with `inputs:` (the layer NAME called again, its weights shared).
  ConfigNode ls = m.require("layers");
  ls.expect_seq();
  if (ls.size() == 0) ls.fail("expected at least one layer");
  struct Entry {
    ConfigNode node;
    int layer;
    int call;  // of that layer
  };
  std::vector<Entry> entries;
  std::vector<int> layer_of_entry_layer;  // per new layer object: its entry
  for (size_t i = 0; i < ls.size(); ++i) {
    ConfigNode e = ls[i];
    if (!e.is_map()) e.fail("each layer is a mapping such as `- dense: {units: 100}` (with `inputs:` to say what it takes)");
    if (e.has("call")) {
      e.allow_keys({"call", "inputs"});
      entries.push_back({e, -1, 0});
      continue;
    }
    for (const std::string& k : e.keys())
      if (k == "input") e.fail("inputs are declared under `model.inputs`, not among the layers");
    std::unique_ptr<Layer> l = make_layer(e, {"inputs"});
    entries.push_back({e, int(layers.size()), 0});
    layers.push_back(std::move(l));
  }
  // Names as Keras gives them, for the references below.
  {
    std::vector<std::unique_ptr<Layer>> tmp;
    for (auto& l : layers) tmp.push_back(std::move(l));
    try {
      // assign_keras_names throws on duplicates; say where.
      std::set<std::string> seen;
      for (size_t i = 0; i < tmp.size(); ++i)
        if (!tmp[i]->name().empty() && !seen.insert(tmp[i]->name()).second) {
          ConfigNode where = ls;
          for (const Entry& en : entries)
            if (en.layer == int(i)) where = en.node;
          for (size_t k = 0; k < input_nodes.size(); ++k)
            if (g.input_layers[k] == int(i)) where = input_nodes[k];
          where.fail(str_cat("two layers are named '", tmp[i]->name(), "': layer names must be unique"));
        }
      assign_keras_names(tmp);
    } catch (const ConfigError& e) {
      m.fail(e.what());
    }
    layers = std::move(tmp);
  }
  std::map<std::string, int> by_name;
  for (size_t i = 0; i < layers.size(); ++i) by_name[layers[i]->name()] = int(i);
  std::vector<std::string> names;
  for (auto& l : layers) names.push_back(l->name());
  auto unknown = [&](const ConfigNode& node, const std::string& name, const std::string& what) {
    const std::string near = nearest_name(name, names);
    node.fail(str_cat("no ", what, " named '", name, "'; the model has ", join(names),
                      near.empty() ? "" : str_cat(" (did you mean '", near, "'?)")));
  };
  // Resolve `call:` entries and number every layer's calls in file order.
  std::vector<int> calls_made(layers.size(), 0);
  for (Entry& en : entries) {
    if (en.layer < 0) {
      ConfigNode c = en.node["call"];
      const std::string name = c.as_string();
      auto it = by_name.find(name);
      if (it == by_name.end()) unknown(c, name, "layer");
      if (layers[size_t(it->second)]->keras_class() == "InputLayer") c.fail(str_cat("'", name, "' is an input; it cannot be called"));
      en.layer = it->second;
    }
    en.call = calls_made[size_t(en.layer)]++;
  }
  const int n_in = int(g.input_shapes.size());
  auto value_of = [&](const ConfigNode& node) -> int {
    const ValueRef r = parse_ref(node);
    auto it = by_name.find(r.name);
    if (it == by_name.end()) unknown(node, r.name, "layer or input");
    for (int i = 0; i < n_in; ++i)
      if (g.input_layers[size_t(i)] == it->second) {
        if (r.call != 0) node.fail(str_cat("input '", r.name, "' has a single output: write '", r.name, "'"));
        return i;
      }
    if (r.call >= calls_made[size_t(it->second)])
      node.fail(str_cat("layer '", r.name, "' is called ", calls_made[size_t(it->second)], " time(s); its calls are ",
                        r.name, "[0]", calls_made[size_t(it->second)] > 1 ? str_cat("..", r.name, "[", calls_made[size_t(it->second)] - 1, "]") : ""));
    for (size_t k = 0; k < entries.size(); ++k)
      if (entries[k].layer == it->second && entries[k].call == r.call) return n_in + int(k);
    LS_CHECK(false, "unreachable");
  };
  for (size_t k = 0; k < entries.size(); ++k) {
    const Entry& en = entries[k];
    LayerCall c{en.layer, {}};
    ConfigNode from = en.node["inputs"];
    if (from.defined()) {
      if (from.is_seq()) {
        if (from.size() == 0) from.fail("expected at least one input");
        for (size_t i = 0; i < from.size(); ++i) c.inputs.push_back(value_of(from[i]));
      } else {
        c.inputs.push_back(value_of(from));
      }
    } else if (en.node.has("call")) {
      en.node.fail("a `call:` needs `inputs:` (what the layer is called on this time)");
    } else if (k > 0) {
      c.inputs.push_back(n_in + int(k) - 1);
    } else if (n_in == 1) {
      c.inputs.push_back(0);
    } else {
      en.node.fail(str_cat("the first layer needs `inputs:`: the model has ", n_in, " inputs"));
    }
    g.calls.push_back(std::move(c));
  }
  ConfigNode outs = m["outputs"];
  if (!outs.defined()) {
    g.outputs.push_back(n_in + int(entries.size()) - 1);
  } else if (outs.is_seq()) {
    if (outs.size() == 0) outs.fail("expected at least one output");
    for (size_t i = 0; i < outs.size(); ++i) g.outputs.push_back(value_of(outs[i]));
  } else {
    g.outputs.push_back(value_of(outs));
  }
  for (size_t i = 0; i < g.outputs.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      if (g.outputs[i] == g.outputs[j])
        outs[i].fail(str_cat("'", outs[i].as_string(), "' is listed twice in outputs (the same value as output ", j,
                             ", '", outs[j].as_string(), "')"));
  try {
    return std::make_unique<Model>(std::move(g), std::move(layers), m.get("name", "model"), device, dtype);
  } catch (const GraphError& e) {
    if (e.call() >= 0) entries[size_t(e.call())].node.fail(e.what());
    if (e.input() >= 0) input_nodes[size_t(e.input())].fail(e.what());
    (outs.defined() ? outs : ins).fail(e.what());
  } catch (const ConfigError& e) {
    ls.fail(e.what());
  }
}
}  // namespace

std::unique_ptr<Model> Model::from_config(const ConfigNode& m, Device device, DType dtype) {
  if (!m.defined()) m.fail("the run file needs a `model:` section with input_shape and layers (or inputs, layers, outputs)");
  m.expect_map();
  // `model: {from_keras: FILE}`: the Keras file's architecture, as the run-file form (core/keras_io.h).
  if (YAML::Node translated; m.has("from_keras")) {
    std::string weights;
    resolve_from_keras(m, &translated, &weights);
    return from_config(ConfigNode(translated, std::make_shared<const std::string>(m.file()), m.path()), device, dtype);
  }
  if (m.has("inputs") || m.has("outputs")) {
    if (m.has("input_shape"))
      m["input_shape"].fail("a model with `inputs:` (Keras's Functional form) declares each input's shape there; drop input_shape");
    return functional_from_config(m, device, dtype);
  }
  m.allow_keys({"name", "input_shape", "layers"});
  ConfigNode ls = m.require("layers");
  ls.expect_seq();
  if (ls.size() == 0) ls.fail("expected at least one layer");
  for (size_t i = 0; i < ls.size(); ++i)
    if (ls[i].is_map() && (ls[i].has("inputs") || ls[i].has("call")))
      ls[i].fail(str_cat("`", ls[i].has("call") ? "call" : "inputs",
                         ":` wires a graph: declare the model's `inputs:` (Keras's Functional form) to use it"));
  // Keras's Sequential takes its input shape from input_shape or from a leading InputLayer.
  size_t first = 0;
  Shape input;
  if (ls[0].is_map() && ls[0].has("input")) {
    if (m.has("input_shape")) ls[0].fail("the input shape is given twice (input_shape and an `input` layer)");
    std::unique_ptr<Layer> in = make_layer(ls[0]);
    input = static_cast<InputLayer&>(*in).shape();
    first = 1;
    if (ls.size() == 1) ls.fail("expected at least one layer after the input");
  } else {
    ConfigNode is = m.require("input_shape");
    input = is.as_int_list();
    if (input.empty()) is.fail("expected a non-empty list of positive dimensions, e.g. [28, 28]");
    for (int64_t d : input)
      if (d < 1) is.fail(str_cat("expected positive dimensions, got ", shape_str(input)));
  }
  std::vector<std::unique_ptr<Layer>> layers;
  for (size_t i = first; i < ls.size(); ++i) {
    if (ls[i].is_map() && ls[i].has("input")) ls[i].fail("an `input` may only be the first layer of a Sequential model");
    layers.push_back(make_layer(ls[i]));
  }
  // Shape errors from build() name the layer; add the file position of that layer's entry.
  try {
    return std::make_unique<Model>(input, std::move(layers), m.get("name", "sequential"), device, dtype);
  } catch (const GraphError& e) {
    if (e.call() >= 0) ls[first + size_t(e.call())].fail(e.what());
    ls.fail(e.what());
  } catch (const ConfigError& e) {
    ls.fail(e.what());
  }
}

int64_t Model::arena_span(int64_t numel) { return align_up(numel); }

void Model::allocate() {
  // Gradient-carrying weights first, each at the same offset in both arenas (so an optimizer can
  // update weights_[0, gn) from grads_ in one pass), then the state (BN's moving statistics).
  int64_t gn = 0;
  refs_.clear();
  for (size_t i = 0; i < layers_.size(); ++i)
    for (Weight& w : layers_[i]->weights())
      if (w.trainable) {
        refs_.push_back({int(i), &w, gn, gn});
        gn += align_up(shape_numel(w.shape));
      }
  int64_t wn = gn;
  for (size_t i = 0; i < layers_.size(); ++i)
    for (Weight& w : layers_[i]->weights())
      if (!w.trainable) {
        refs_.push_back({int(i), &w, wn, -1});
        wn += align_up(shape_numel(w.shape));
      }
  // refs_ in layer order (then declaration order), as callers expect.
  std::stable_sort(refs_.begin(), refs_.end(), [](const WeightRef& a, const WeightRef& b) {
    if (a.layer != b.layer) return a.layer < b.layer;
    return a.weight < b.weight;
  });
  weights_ = Tensor::zeros({std::max<int64_t>(wn, 1)}, device_, dtype_);
  grads_ = Tensor::zeros({std::max<int64_t>(gn, 1)}, device_, dtype_);
  for (WeightRef& r : refs_) r.weight->value = weights_.view(r.offset, r.weight->shape);
  // A later call of a shared layer reads the first call's weights and writes its own gradients, which
  // the backward pass adds to the first call's.
  clone_weights_.clear();
  int64_t cn = 0;
  for (size_t k = 0; k < calls_.size(); ++k) {
    if (call_number_[k] == 0) continue;
    Layer& first = *layers_[size_t(calls_[k].layer)];
    for (size_t w = 0; w < first.weights().size(); ++w) {
      Weight& mine = ops_[k]->weights()[w];
      mine.value = first.weights()[w].value;
      if (mine.trainable) {
        clone_weights_.push_back({calls_[k].layer, &mine, &first.weights()[w], cn});
        cn += align_up(shape_numel(mine.shape));
      }
    }
  }
  clone_grads_ = cn > 0 ? Tensor::zeros({cn}, device_, dtype_) : Tensor();
  bind_gradients();
}

void Model::bind_gradients() {
  for (WeightRef& r : refs_)
    if (r.grad_offset >= 0) r.weight->grad = grads_.view(r.grad_offset, r.weight->shape);
  for (CloneWeight& c : clone_weights_) c.mine->grad = clone_grads_.view(c.offset, c.mine->shape);
}

void Model::place_gradients(const Tensor& arena) {
  LS_CHECK(arena.defined() && arena.numel() == grads_.numel() && arena.dtype() == grads_.dtype() &&
               arena.device() == grads_.device(),
           "place_gradients: the new arena must match the gradients arena (", grads_.numel(), " x ",
           dtype_name(grads_.dtype()), " on ", device_name(grads_.device()), ")");
  Tensor flat = arena.reshape({arena.numel()});
  flat.copy_from(grads_);
  grads_ = flat;
  bind_gradients();
}

void Model::init(uint64_t seed) {
  for (auto& l : layers_) l->init_weights(seed);
}

int Model::find_layer(const std::string& name) const {
  for (size_t i = 0; i < layers_.size(); ++i)
    if (layers_[i]->name() == name) return int(i);
  return -1;
}

std::string Model::input_name(int input) const {
  const int l = input_layers_.at(size_t(input));
  return l >= 0 ? layers_[size_t(l)]->name() : std::string("input");
}

std::string Model::output_name(int output) const {
  const int v = outputs_.at(size_t(output));
  return v < num_inputs() ? input_name(v) : layers_[size_t(calls_[size_t(v - num_inputs())].layer)]->name();
}

std::string Model::value_ref(int v) const {
  if (v < num_inputs()) return input_name(v) + "[0][0]";
  const int k = v - num_inputs();
  return str_cat(layers_[size_t(calls_[size_t(k)].layer)]->name(), "[", call_number_[size_t(k)], "][0]");
}

Shape Model::value_shape(int v) const {
  return v < num_inputs() ? input_shapes_[size_t(v)] : ops_[size_t(v - num_inputs())]->output_shape();
}

ops::Activation Model::output_activation(int output) const {
  const int v = outputs_.at(size_t(output));
  if (v < num_inputs() || consumers_[size_t(v)] > 0) return ops::Activation::Linear;
  return ops_[size_t(v - num_inputs())]->output_activation();
}

void Model::set_fused_output(int output, ops::Activation act) {
  LS_CHECK(act == ops::Activation::Linear || output_activation(output) != ops::Activation::Linear,
           "set_fused_output: output ", output, " cannot emit logits");
  fused_.at(size_t(output)) = act;
  const int v = outputs_[size_t(output)];
  if (v >= num_inputs()) ops_[size_t(v - num_inputs())]->set_emit_logits(act != ops::Activation::Linear);
}

void Model::sync_clones() {
  for (size_t k = 0; k < calls_.size(); ++k)
    if (call_number_[k] > 0) ops_[k]->set_trainable(layers_[size_t(calls_[k].layer)]->trainable());
}

const std::vector<Tensor>& Model::forward(const std::vector<Tensor>& xs, Context& ctx) {
  const int n_in = num_inputs();
  LS_CHECK(int(xs.size()) == n_in, "model ", name_, " takes ", n_in, " inputs, given ", xs.size());
  inputs_.resize(size_t(n_in));
  for (int i = 0; i < n_in; ++i) {
    const Shape& s = input_shapes_[size_t(i)];
    const Tensor& x = xs[size_t(i)];
    // Images [H, W] feed an input declared [H, W, 1] (the book's X[..., np.newaxis]).
    const bool add_channel = !s.empty() && s.back() == 1 && x.rank() == int(s.size());
    bool ok = x.rank() == int(s.size()) + 1 || add_channel;
    for (size_t d = 0; ok && d + (add_channel ? 1 : 0) < s.size(); ++d) ok = x.dim(int(d) + 1) == s[d];
    LS_CHECK(ok, "model input ", input_name(i), ": ", shape_str(x.shape()), " for shape ", shape_str(s));
    if (add_channel) {
      Shape b{x.dim(0)};
      b.insert(b.end(), s.begin(), s.end());
      inputs_[size_t(i)] = x.reshape(b);
    } else {
      inputs_[size_t(i)] = x;
    }
  }
  const std::vector<Tensor>& xs_in = inputs_;
  if (chain_) {
    Tensor h = xs_in[0];
    for (Layer* l : ops_) h = l->forward(h, ctx);
    outs_[0] = h;
    return outs_;
  }
  sync_clones();
  values_.resize(size_t(n_in) + calls_.size());
  for (int i = 0; i < n_in; ++i) values_[size_t(i)] = xs_in[size_t(i)];
  std::vector<Tensor> in;
  for (size_t k = 0; k < calls_.size(); ++k) {
    in.clear();
    for (int v : calls_[k].inputs) in.push_back(values_[size_t(v)]);
    values_[size_t(n_in) + k] = in.size() == 1 && ops_[k]->max_inputs() == 1 ? ops_[k]->forward(in[0], ctx)
                                                                             : ops_[k]->forward_multi(in, ctx);
  }
  for (size_t j = 0; j < outputs_.size(); ++j) outs_[j] = values_[size_t(outputs_[j])];
  return outs_;
}

Tensor Model::forward(const Tensor& x, Context& ctx) {
  LS_CHECK(num_outputs() == 1, "model ", name_, " has ", num_outputs(), " outputs");
  return forward(std::vector<Tensor>{x}, ctx)[0];
}

void Model::prefetch_backward(int k, bool descending) {
  // Half of a 1 MiB L2: a layer with larger operands runs long products that stream their own
  // operands, and prefetching it all would only evict what the layer above is computing with.
  constexpr int64_t kBudget = int64_t(512) << 10;
  touches_.clear();
  op(k).backward_operands(&touches_, descending);
  int64_t bytes = 0;
  for (const Layer::Touch& t : touches_)
    if (t.tensor->defined()) bytes += t.tensor->numel() * dtype_size(t.tensor->dtype());
  if (bytes > kBudget) return;
  for (const Layer::Touch& t : touches_) ops::prefetch(*t.tensor, t.write);
}

namespace {
bool has_trainable_weights(const Layer& l) {
  if (!l.trainable()) return false;
  for (const Weight& w : l.weights())
    if (w.trainable) return true;
  return false;
}
}  // namespace

void Model::backward(const Tensor& dout, Context& ctx, const std::function<void(int)>& on_layer_done) {
  backward(std::vector<Tensor>{dout}, ctx, on_layer_done);
}

void Model::backward(const std::vector<Tensor>& douts, Context& ctx, const std::function<void(int)>& on_layer_done) {
  LS_CHECK(douts.size() == outputs_.size(), "model ", name_, ": ", douts.size(), " output gradients for ",
           outputs_.size(), " outputs");
  if (chain_)
    chain_backward(douts[0], ctx, on_layer_done);
  else
    graph_backward(douts, ctx, on_layer_done);
}

void Model::chain_backward(const Tensor& dout, Context& ctx, const std::function<void(int)>& on_layer_done) {
  const int n = int(calls_.size());
  auto done = [&](int k) {
    if (on_layer_done) on_layer_done(calls_[size_t(k)].layer);
  };
  // The first call that needs an input gradient is the one after the earliest trainable weight.
  int first_needed = n;
  for (int k = 0; k < n; ++k)
    if (has_trainable_weights(op(k))) {
      first_needed = k;
      break;
    }
  Tensor g = dout;
  for (int i = n - 1; i >= 0 && i >= first_needed; --i) {
    if (i == first_needed + 1) {
      // A normalisation at the bottom (BN on the inputs) takes its sums from the layer above, which
      // then never forms its input gradient (Layer::normalized_output).
      NormalizedOutput below;
      if (op(first_needed).normalized_output(&below) && op(i).backward_to_normalized(g, ctx, below)) {
        done(i);
        op(first_needed).backward_from_sums(below);
        done(first_needed);
        return;
      }
    }
    // The layer below's operands are cold by now (model c holds ~10 MB of weights, gradients and saved
    // activations against a 1 MB L2): fetch them while this layer computes.
    if (i > first_needed) prefetch_backward(i - 1, ctx.descent_rate > 0.0);
    g = op(i).backward(g, ctx, i > first_needed);
    done(i);
  }
}

void Model::graph_backward(const std::vector<Tensor>& douts, Context& ctx, const std::function<void(int)>& on_layer_done) {
  const int n_in = num_inputs(), n_calls = int(calls_.size()), n_values = n_in + n_calls;
  // A value needs its gradient when a trainable weight lies upstream of it, or in the call making it.
  std::vector<char> need(size_t(n_values), 0);
  pending_.assign(layers_.size(), 0);
  for (int k = 0; k < n_calls; ++k) {
    bool any = has_trainable_weights(op(k));
    for (int v : calls_[size_t(k)].inputs) any = any || need[size_t(v)];
    need[size_t(n_in + k)] = any;
    if (any) ++pending_[size_t(calls_[size_t(k)].layer)];
  }
  value_grads_.assign(size_t(n_values), Tensor());
  grad_owned_.assign(size_t(n_values), 0);
  grad_bufs_.resize(size_t(n_values));
  // Gradients from several readers add up in the value's own buffer; a single one is used as it is.
  auto accumulate = [&](int v, const Tensor& g) {
    Tensor& slot = value_grads_[size_t(v)];
    if (!slot.defined()) {
      slot = g;
      return;
    }
    if (!grad_owned_[size_t(v)]) {
      Tensor own = grad_bufs_[size_t(v)].get(g.shape(), g);
      ops::add(slot, g, own);  // in one pass: the bits of copying slot and adding g
      slot = own;
      grad_owned_[size_t(v)] = 1;
      return;
    }
    ops::axpy(1.0, g, slot);
  };
  for (size_t j = 0; j < outputs_.size(); ++j)
    if (need[size_t(outputs_[j])]) accumulate(outputs_[j], douts[j]);
  // A call's backward is done: after a layer's last call, a shared layer's gradient is the sum over its
  // calls, and the layer's gradients are final.
  auto finish = [&](int k) {
    const int layer = calls_[size_t(k)].layer;
    if (--pending_[size_t(layer)] > 0) return;
    if (layers_[size_t(layer)]->shared() && layers_[size_t(layer)]->trainable())
      for (const CloneWeight& cw : clone_weights_)
        if (cw.layer == layer) ops::axpy(1.0, cw.mine->grad, cw.first->grad);
    if (on_layer_done) on_layer_done(layer);
  };
  std::vector<bool> need_dx;
  for (int k = n_calls - 1; k >= 0; --k) {
    const int v = n_in + k;
    if (!need[size_t(v)]) continue;
    const LayerCall& c = calls_[size_t(k)];
    const Tensor& dy = value_grads_[size_t(v)];
    LS_CHECK(dy.defined(), "model ", name_, ": no gradient reached the output of ", op(k).name());
    // A normalisation whose inputs need no gradient (BN on a model input), read only by this call,
    // takes its sums from this call's products, as in the chain (Layer::normalized_output).
    if (c.inputs.size() == 1 && c.inputs[0] >= n_in && consumers_[size_t(c.inputs[0])] == 1 &&
        calls_of_layer_[size_t(c.layer)] == 1) {
      const int j = c.inputs[0] - n_in;
      bool below_needs = calls_of_layer_[size_t(calls_[size_t(j)].layer)] != 1;
      for (int u : calls_[size_t(j)].inputs) below_needs = below_needs || need[size_t(u)];
      NormalizedOutput below;
      if (!below_needs && op(j).normalized_output(&below) && op(k).backward_to_normalized(dy, ctx, below)) {
        finish(k);
        op(j).backward_from_sums(below);
        finish(j);
        need[size_t(c.inputs[0])] = 0;
        continue;
      }
    }
    need_dx.assign(c.inputs.size(), false);
    for (size_t i = 0; i < c.inputs.size(); ++i) need_dx[i] = need[size_t(c.inputs[i])] != 0;
    if (c.inputs.size() == 1 && op(k).max_inputs() == 1) {
      Tensor dx = op(k).backward(dy, ctx, need_dx[0]);
      if (need_dx[0]) accumulate(c.inputs[0], dx);
    } else {
      std::vector<Tensor> dx = op(k).backward_multi(dy, ctx, need_dx);
      for (size_t i = 0; i < c.inputs.size(); ++i)
        if (need_dx[i]) accumulate(c.inputs[i], dx[i]);
    }
    finish(k);
  }
}

std::vector<WeightRef> Model::trainable_weights() const {
  std::vector<WeightRef> out;
  for (const WeightRef& r : refs_)
    if (r.grad_offset >= 0 && layers_[size_t(r.layer)]->trainable()) out.push_back(r);
  return out;
}

int64_t Model::total_params() const {
  int64_t n = 0;
  for (const WeightRef& r : refs_) n += r.weight->value.numel();
  return n;
}
int64_t Model::trainable_params() const {
  int64_t n = 0;
  for (const WeightRef& r : trainable_weights()) n += r.weight->value.numel();
  return n;
}

std::string Model::summary() const {
  // tf_keras's print_summary (core/summary.h): Sequential's table, or Functional's with "Connected to".
  if (sequential_) return sequential_summary(name_, summary_rows(), total_params(), trainable_params());
  return functional_summary(name_, summary_rows(), total_params(), trainable_params());
}

std::vector<SummaryRow> Model::summary_rows(std::vector<std::vector<Shape>>* input_shapes) const {
  std::vector<SummaryRow> rows;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = *layers_[l];
    SummaryRow r;
    r.name = layer.name();
    r.keras_class = layer.keras_class();
    for (const Weight& w : layer.weights()) r.params += shape_numel(w.shape);
    std::vector<Shape> ins;
    if (layer.keras_class() == "InputLayer") {
      r.output_shapes.push_back(layer.output_shape());
      ins.push_back(layer.output_shape());
    }
    // The layer's calls in Keras's node order.
    std::vector<int> mine;
    for (size_t k = 0; k < calls_.size(); ++k)
      if (calls_[k].layer == int(l)) mine.push_back(int(k));
    std::sort(mine.begin(), mine.end(), [&](int a, int b) { return call_number_[size_t(a)] < call_number_[size_t(b)]; });
    for (int k : mine) {
      // Keras prints a shared layer's output shape once when its calls agree, else "multiple".
      const Shape out = value_shape(num_inputs() + k);
      if (k == mine[0]) r.output_shapes.push_back(out);
      else if (!r.output_shapes.empty() && r.output_shapes[0] != out) r.output_shapes.clear();
      for (int v : calls_[size_t(k)].inputs) {
        r.connected_to.push_back(value_ref(v));
        if (call_number_[size_t(k)] == 0) ins.push_back(value_shape(v));
      }
    }
    if (input_shapes) input_shapes->push_back(ins);
    rows.push_back(std::move(r));
  }
  return rows;
}

std::string Model::graph_dot() const {
  std::vector<std::vector<Shape>> ins;
  std::vector<SummaryRow> rows = summary_rows(&ins);
  if (sequential_) {
    // plot_model draws a Sequential model's input too (its InputLayer), and chains the layers.
    SummaryRow input;
    input.name = "input";
    input.keras_class = "InputLayer";
    input.output_shapes = {input_shapes_[0]};
    for (size_t i = 0; i < rows.size(); ++i) rows[i].connected_to = {i == 0 ? "input[0][0]" : rows[i - 1].name + "[0][0]"};
    rows.insert(rows.begin(), input);
    ins.insert(ins.begin(), std::vector<Shape>{input_shapes_[0]});
  }
  return lockstep::graph_dot(name_, rows, ins);
}

double Model::regularization_loss() const {
  double p = 0;
  for (const WeightRef& r : trainable_weights())
    if (r.weight->regularizer.active())
      p += ops::l1l2_penalty(r.weight->value, r.weight->regularizer.l1, r.weight->regularizer.l2);
  return p;
}

void Model::add_regularization_grads() {
  for (const WeightRef& r : trainable_weights())
    if (r.weight->regularizer.active())
      ops::l1l2_grad(r.weight->value, r.weight->grad, r.weight->regularizer.l1, r.weight->regularizer.l2);
}

void Model::apply_constraints() {
  for (const WeightRef& r : trainable_weights()) {
    const MaxNormConstraint& c = r.weight->constraint;
    if (!c.active()) continue;
    const Shape& s = r.weight->shape;
    const int axis = c.axis < 0 ? c.axis + int(s.size()) : c.axis;
    LS_REQUIRE(axis >= 0 && axis < int(s.size()), ConfigError, "layer ", layers_[size_t(r.layer)]->name(),
               ": max_norm axis ", c.axis, " out of range for weight ", shape_str(s));
    ops::max_norm(r.weight->value, ops::feature_view(s, axis), c.max_value);
  }
}

}  // namespace lockstep
