#include "core/model.h"

#include <algorithm>
#include <iomanip>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "core/ops.h"

namespace lockstep {

namespace {
constexpr int64_t kAlign = 16;  // floats: each weight starts on a 64-byte boundary
int64_t align_up(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

std::string with_commas(int64_t v) {
  const std::string digits = std::to_string(v);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}
}  // namespace

std::string keras_snake_case(const std::string& name) {
  std::string s = std::regex_replace(name, std::regex("(.)([A-Z][a-z]+)"), "$1_$2");
  s = std::regex_replace(s, std::regex("([a-z])([A-Z])"), "$1_$2");
  for (auto& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

Model::Model(Shape input_shape, std::vector<std::unique_ptr<Layer>> layers, std::string name, Device device, DType dtype)
    : input_shape_(std::move(input_shape)), layers_(std::move(layers)), name_(std::move(name)), device_(device),
      dtype_(dtype) {
  LS_REQUIRE(!layers_.empty(), ConfigError, "model: at least one layer is required");
  std::map<std::string, int> counters;
  std::set<std::string> taken;
  for (auto& l : layers_)
    if (!l->name().empty()) {
      LS_REQUIRE(taken.insert(l->name()).second, ConfigError, "model: two layers are named '", l->name(), "'");
    }
  Shape shape = input_shape_;
  for (size_t i = 0; i < layers_.size(); ++i) {
    Layer& l = *layers_[i];
    l.set_index(int(i));
    if (l.name().empty()) {
      std::string stem = keras_snake_case(l.keras_class()), n;
      do {
        int c = counters[stem]++;
        n = c == 0 ? stem : stem + "_" + std::to_string(c);
      } while (taken.count(n));
      taken.insert(n);
      l.set_name(n);
    }
    shape = l.build(shape);
  }
  allocate();
}

std::unique_ptr<Model> Model::from_config(const ConfigNode& m, Device device, DType dtype) {
  if (!m.defined()) m.fail("the run file needs a `model:` section with input_shape and layers");
  m.allow_keys({"name", "input_shape", "layers"});
  ConfigNode is = m.require("input_shape");
  Shape input = is.as_int_list();
  if (input.empty()) is.fail("expected a non-empty list of positive dimensions, e.g. [28, 28]");
  for (int64_t d : input)
    if (d < 1) is.fail(str_cat("expected positive dimensions, got ", shape_str(input)));
  ConfigNode ls = m.require("layers");
  ls.expect_seq();
  if (ls.size() == 0) ls.fail("expected at least one layer");
  std::vector<std::unique_ptr<Layer>> layers;
  for (size_t i = 0; i < ls.size(); ++i) layers.push_back(make_layer(ls[i]));
  // Shape errors from build() name the layer; add the file position of the layer list.
  try {
    return std::make_unique<Model>(input, std::move(layers), m.get("name", "sequential"), device, dtype);
  } catch (const ConfigError& e) {
    ls.fail(e.what());
  }
}

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
  bind_gradients();
}

void Model::bind_gradients() {
  for (WeightRef& r : refs_)
    if (r.grad_offset >= 0) r.weight->grad = grads_.view(r.grad_offset, r.weight->shape);
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

ops::Activation Model::output_activation() const { return layers_.back()->output_activation(); }

void Model::set_fused_output(ops::Activation act) {
  fused_ = act;
  layers_.back()->set_emit_logits(act != ops::Activation::Linear);
}

Tensor Model::forward(const Tensor& x, Context& ctx) {
  LS_CHECK(x.rank() == int(input_shape_.size()) + 1, "model input ", shape_str(x.shape()), " for input_shape ",
           shape_str(input_shape_));
  Tensor h = x;
  for (auto& l : layers_) h = l->forward(h, ctx);
  return h;
}

void Model::prefetch_backward(int i, bool descending) {
  // Half of a 1 MiB L2: a layer with larger operands runs long products that stream their own
  // operands, and prefetching it all would only evict what the layer above is computing with.
  constexpr int64_t kBudget = int64_t(512) << 10;
  touches_.clear();
  layers_[size_t(i)]->backward_operands(&touches_, descending);
  int64_t bytes = 0;
  for (const Layer::Touch& t : touches_)
    if (t.tensor->defined()) bytes += t.tensor->numel() * dtype_size(t.tensor->dtype());
  if (bytes > kBudget) return;
  for (const Layer::Touch& t : touches_) ops::prefetch(*t.tensor, t.write);
}

void Model::backward(const Tensor& dout, Context& ctx, const std::function<void(int)>& on_layer_done) {
  // The first layer that needs an input gradient is the one after the earliest trainable weight.
  int first_needed = int(layers_.size());
  for (size_t i = 0; i < layers_.size(); ++i) {
    bool has = false;
    for (const Weight& w : layers_[i]->weights()) has = has || (w.trainable && layers_[i]->trainable());
    if (has) {
      first_needed = int(i);
      break;
    }
  }
  Tensor g = dout;
  for (int i = int(layers_.size()) - 1; i >= 0 && i >= first_needed; --i) {
    if (i == first_needed + 1) {
      // A normalisation at the bottom (BN on the inputs) takes its sums from the layer above, which
      // then never forms its input gradient (Layer::normalized_output).
      NormalizedOutput below;
      if (layers_[size_t(first_needed)]->normalized_output(&below) &&
          layers_[size_t(i)]->backward_to_normalized(g, ctx, below)) {
        if (on_layer_done) on_layer_done(i);
        layers_[size_t(first_needed)]->backward_from_sums(below);
        if (on_layer_done) on_layer_done(first_needed);
        return;
      }
    }
    // The layer below's operands are cold by now (model c holds ~10 MB of weights, gradients and saved
    // activations against a 1 MB L2): fetch them while this layer computes.
    if (i > first_needed) prefetch_backward(i - 1, ctx.descent_rate > 0.0);
    g = layers_[size_t(i)]->backward(g, ctx, i > first_needed);
    if (on_layer_done) on_layer_done(i);
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
  // tf.keras 2.x print_summary: line_length 65, columns end at 29, 55, 65.
  const int width = 65;
  const int pos[3] = {29, 55, 65};
  auto row = [&](const std::vector<std::string>& fields) {
    std::string line;
    for (int i = 0; i < 3; ++i) {
      std::string f = (i == 0 ? " " : (line.empty() || line.back() == ' ' ? "" : " ")) + fields[size_t(i)];
      line += f;
      if (int(line.size()) > pos[i]) line = line.substr(0, size_t(pos[i]));
      line += std::string(size_t(pos[i]) - line.size(), ' ');
    }
    return line + "\n";
  };
  std::ostringstream os;
  os << "Model: \"" << name_ << "\"\n" << std::string(width, '_') << "\n";
  os << row({"Layer (type)", "Output Shape", "Param #"}) << std::string(width, '=') << "\n";
  for (const auto& l : layers_) {
    int64_t n = 0;
    for (const Weight& w : l->weights()) n += shape_numel(w.shape);
    Shape out = l->output_shape();
    std::string shape = "(None";
    for (int64_t d : out) shape += ", " + std::to_string(d);
    shape += ")";
    os << row({l->name() + " (" + l->keras_class() + ")", shape, std::to_string(n)});
    os << std::string(width, ' ') << "\n";
  }
  const int64_t total = total_params(), trainable = trainable_params();
  os << std::string(width, '=') << "\n";
  os << "Total params: " << with_commas(total) << "\n";
  os << "Trainable params: " << with_commas(trainable) << "\n";
  os << "Non-trainable params: " << with_commas(total - trainable) << "\n";
  os << std::string(width, '_') << "\n";
  return os.str();
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
