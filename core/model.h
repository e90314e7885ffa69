// A model: a graph of layer calls built from the run file's `model:` section (Keras's Sequential or
// Functional form), with every weight in one flat arena and every gradient in another (views bound
// into the layers' `Weight`s). One arena means one all-reduce covers the gradients, the optimizer is
// one loop per weight, and a checkpoint is one write.
//
// The graph. Values are the model's inputs (0..num_inputs-1) and the outputs of the calls
// (num_inputs + k for call k). A call runs a layer on values; a layer called more than once (Keras: one
// layer object applied to several tensors) shares its weights between the calls, each later call running
// a clone with its own caches, and its gradient is the sum over the calls. Calls run in Keras's order
// (by depth from the outputs, then by discovery), which is topological; a Sequential model is the chain
// of its layers and takes the chain's fast paths (the input-BN fold, prefetching).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/layers.h"
#include "core/summary.h"
#include "core/tensor.h"

namespace lockstep {

struct WeightRef {
  int layer;
  Weight* weight;
  int64_t offset;       // in the weights arena
  int64_t grad_offset;  // in the gradients arena (-1 for state)
};

// One call of a layer (Keras: calling a layer object on tensors).
struct LayerCall {
  int layer = 0;            // index in the layer list given to the model
  std::vector<int> inputs;  // values: [0, num_inputs) the model's inputs, num_inputs + k the output of call k
};

// A graph model's wiring. Input i's InputLayer is layers[input_layers[i]] (-1: none, Sequential).
struct Graph {
  std::vector<Shape> input_shapes;
  std::vector<int> input_layers;
  std::vector<LayerCall> calls;  // in any order: the model sorts them (a cycle is refused)
  std::vector<int> outputs;      // values
  // A Sequential stack over one input: layers 0..n-1 called in order.
  static Graph chain(Shape input_shape, int num_layers);
};

class Model {
 public:
  // A Sequential model.
  Model(Shape input_shape, std::vector<std::unique_ptr<Layer>> layers, std::string name = "sequential",
        Device device = Device::CPU, DType dtype = DType::F32);
  // A Functional model: `layers` are the distinct layer objects in creation order (InputLayers included),
  // unnamed ones named as Keras names them in that order. ConfigError on a cycle, a layer or input that
  // reaches no output, or shapes a layer refuses.
  Model(Graph graph, std::vector<std::unique_ptr<Layer>> layers, std::string name = "model",
        Device device = Device::CPU, DType dtype = DType::F32);
  // Build from `model:`: {input_shape, layers} (Sequential) or {inputs, layers, outputs} (Functional).
  static std::unique_ptr<Model> from_config(const ConfigNode& model, Device device = Device::CPU,
                                            DType dtype = DType::F32);

  // Initialise every weight from `seed` (a pure function of seed, layer index and weight index).
  void init(uint64_t seed);

  // Forward through every call; xs[i] is [B, input_shapes()[i]...]. Returns the outputs, each the logits
  // when its activation is fused into the loss (set_fused_output), else the output layer's output. The
  // tensors are owned by the layers and valid until the next forward.
  const std::vector<Tensor>& forward(const std::vector<Tensor>& xs, Context& ctx);
  // One input, one output.
  Tensor forward(const Tensor& x, Context& ctx);
  // Backward from dL/d(output j) for every output. `on_layer_done(i)` runs once layer i's weight
  // gradients are final (after its last call's backward, the calls' gradients summed); gradient
  // bucketing launches all-reduces from it. Layers finish in reverse call order.
  void backward(const std::vector<Tensor>& douts, Context& ctx, const std::function<void(int)>& on_layer_done = {});
  void backward(const Tensor& dout, Context& ctx, const std::function<void(int)>& on_layer_done = {});

  // Make output j's layer emit logits for a loss that applies `act` itself (Linear: no fusion).
  void set_fused_output(int output, ops::Activation act);
  void set_fused_output(ops::Activation act) { set_fused_output(0, act); }
  ops::Activation fused_output(int output = 0) const { return fused_.at(size_t(output)); }
  // The activation of output j's layer (Linear when that value also feeds another call: not fusable).
  ops::Activation output_activation(int output = 0) const;

  int num_inputs() const { return int(input_shapes_.size()); }
  int num_outputs() const { return int(outputs_.size()); }
  const std::vector<Shape>& input_shapes() const { return input_shapes_; }
  const Shape& input_shape() const { return input_shapes_.at(0); }
  Shape output_shape(int output = 0) const { return value_shape(outputs_.at(size_t(output))); }
  // Names: of input i (its InputLayer's, "input" for a Sequential model) and of output j (its layer's).
  std::string input_name(int input) const;
  std::string output_name(int output) const;
  bool is_sequential() const { return sequential_; }
  std::vector<std::unique_ptr<Layer>>& layers() { return layers_; }
  const std::vector<std::unique_ptr<Layer>>& layers() const { return layers_; }
  Layer& layer(int i) { return *layers_.at(size_t(i)); }
  int find_layer(const std::string& name) const;  // -1 when absent
  const std::string& name() const { return name_; }
  Device device() const { return device_; }
  DType dtype() const { return dtype_; }
  // The calls in execution order, and the layer objects that run them (a clone for a layer's later calls).
  const std::vector<LayerCall>& calls() const { return calls_; }
  // Keras's "Connected to" for value v: "name[node][0]".
  std::string value_ref(int v) const;
  Shape value_shape(int v) const;

  const Tensor& weights_arena() const { return weights_; }
  const Tensor& grads_arena() const { return grads_; }
  // The elements a weight of `numel` elements takes in the arenas: each starts on a 64-byte boundary,
  // and the padding up to the next one stays zero.
  static int64_t arena_span(int64_t numel);
  // Move the gradients into `arena` (same numel, dtype and device as grads_arena(); e.g. memory that
  // the communicator reduces in place, Communicator::allocate_reduction_buffer) and point every
  // weight's gradient view into it. The current gradients are copied over.
  void place_gradients(const Tensor& arena);
  const std::vector<WeightRef>& weight_refs() const { return refs_; }
  // Gradient-carrying weights of the layers that are trainable now, in layer order.
  std::vector<WeightRef> trainable_weights() const;

  int64_t total_params() const;
  int64_t trainable_params() const;
  // Keras's model.summary() table (Sequential's, or Functional's with its "Connected to" column).
  std::string summary() const;
  // keras.utils.plot_model(show_shapes=True)'s graph, in Graphviz's DOT language.
  std::string graph_dot() const;
  // The table's rows (layers in Keras's order); `input_shapes` receives each layer's first call's inputs.
  std::vector<SummaryRow> summary_rows(std::vector<std::vector<Shape>>* input_shapes = nullptr) const;

  // l1/l2 penalties of all trainable weights (added once per step to the mean data loss).
  double regularization_loss() const;
  // g += d(penalty)/dw for every trainable regularised weight.
  void add_regularization_grads();
  // Max-norm constraints, after each optimizer update.
  void apply_constraints();

 private:
  void build(Graph graph);
  void allocate();
  // Point every gradient-carrying weight's `grad` at its slice of grads_ (and the clones' at theirs).
  void bind_gradients();
  // Prefetch what layer i's backward will touch (Layer::backward_operands) unless it is too big to stay.
  void prefetch_backward(int i, bool descending);
  void chain_backward(const Tensor& dout, Context& ctx, const std::function<void(int)>& on_layer_done);
  void graph_backward(const std::vector<Tensor>& douts, Context& ctx, const std::function<void(int)>& on_layer_done);
  Layer& op(int call) { return *ops_[size_t(call)]; }
  void sync_clones();

  std::vector<Shape> input_shapes_;
  std::vector<int> input_layers_;
  std::vector<std::unique_ptr<Layer>> layers_;
  std::vector<std::unique_ptr<Layer>> clones_;  // run the later calls of shared layers
  std::vector<LayerCall> calls_;                // execution order
  std::vector<Layer*> ops_;                     // per call: layers_[layer] or a clone
  std::vector<int> call_number_;                // per call: which call of its layer (Keras's node index)
  std::vector<int> calls_of_layer_;             // per layer
  std::vector<int> outputs_;
  std::vector<int> consumers_;                  // per value: calls that read it
  bool sequential_ = false, chain_ = false;
  std::string name_;
  Device device_;
  DType dtype_;
  std::vector<ops::Activation> fused_;
  Tensor weights_, grads_, clone_grads_;
  std::vector<WeightRef> refs_;
  struct CloneWeight {
    int layer;
    Weight* mine;   // a later call's gradient-carrying weight
    Weight* first;  // the same weight of the layer's first call
    int64_t offset; // of its gradient in clone_grads_
  };
  std::vector<CloneWeight> clone_weights_;
  std::vector<Layer::Touch> touches_;  // prefetch_backward()'s scratch
  // Per-step scratch of the graph path.
  std::vector<Tensor> values_, outs_, value_grads_;
  std::vector<Tensor> inputs_;  // this forward's inputs, given their channel axis where the model declares one
  std::vector<char> grad_owned_;
  std::vector<Buffer> grad_bufs_;
  std::vector<int> pending_;
};

// Keras's automatic layer name stem for a class: to_snake_case("LeakyReLU") == "leaky_re_lu".
std::string keras_snake_case(const std::string& class_name);

}  // namespace lockstep
