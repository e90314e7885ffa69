// The convolutional layers through whole models (their ops alone: conv_ops_test.cpp): central
// finite-difference gradient checks in float64 of small models through Conv2D (strides, same/valid,
// dilation, groups, activations, bias), DepthwiseConv2D (multiplier 2), MaxPooling2D/AveragePooling2D
// (same padding too), the global pools (keepdims), ZeroPadding2D (asymmetric), SpatialDropout2D
// (training with its fixed mask, inference) and BatchNormalization on 4-D maps in training mode; a
// residual block (`add`) in a Functional graph; the weights' names and shapes in Keras's layout and the
// initializers' fans; [H, W] images feeding an input declared [H, W, 1].
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <regex>
#include <sstream>

#include "tests/core/test_util.h"

namespace lockstep::test {
namespace {

const char* kBias = "bias_initializer: {random_normal: {stddev: 0.5}}";
const char* kBnInits =
    "beta_initializer: {random_normal: {stddev: 0.5}}, gamma_initializer: {random_uniform: {minval: 0.5, maxval: 1.5}}";

// A Sequential model: `layers` are YAML list entries, one per line ("- conv2d: {...}").
std::unique_ptr<Model> seq(const std::string& input_shape, const std::vector<std::string>& layers,
                           DType dtype = DType::F64) {
  std::string yaml = "model:\n  input_shape: " + input_shape + "\n  layers:\n";
  for (const std::string& l : layers) yaml += "    - " + l + "\n";
  return model_from_yaml(yaml, dtype);
}

Shape batched(int64_t n, const Shape& s) {
  Shape b{n};
  b.insert(b.end(), s.begin(), s.end());
  return b;
}

// Both paths of the analytic gradients against central differences: the layer loop (input gradient,
// each layer's backward) and Model::backward (weights).
void expect_model_grads_ok(Model& m, const Tensor& x, const Context& ctx, const std::string& what) {
  ModelGradCheck loop = check_model_grads(m, x, ctx);
  EXPECT_FALSE(loop.weights.empty()) << what;
  expect_grads_ok(loop, true, what + " (layer loop)");
  ModelGradCheck model = check_model_grads(m, x, ctx, true);
  expect_grads_ok(model, false, what + " (Model::backward)");
}

// ---- Conv2D ------------------------------------------------------------------------------------------
struct ConvCase {
  const char* input;   // per-sample shape
  const char* conv;    // the conv2d entry's arguments (bias initializer added)
  Shape out;           // its per-sample output
  Shape kernel;        // Keras's [kh, kw, in/groups, filters]
};
std::ostream& operator<<(std::ostream& os, const ConvCase& c) { return os << c.input << " " << c.conv; }

const ConvCase kConvCases[] = {
    {"[6, 7, 3]", "filters: 4, kernel_size: 3", {4, 5, 4}, {3, 3, 3, 4}},
    {"[6, 7, 3]", "filters: 4, kernel_size: 3, padding: same", {6, 7, 4}, {3, 3, 3, 4}},
    // same with an even kernel: TensorFlow pads the extra row/column at the bottom/right
    {"[5, 6, 2]", "filters: 2, kernel_size: 2, padding: same", {5, 6, 2}, {2, 2, 2, 2}},
    {"[6, 6, 2]", "filters: 2, kernel_size: 4, strides: 2, padding: same", {3, 3, 2}, {4, 4, 2, 2}},
    {"[7, 8, 3]", "filters: 3, kernel_size: [3, 2], strides: [2, 3], padding: same", {4, 3, 3}, {3, 2, 3, 3}},
    {"[7, 8, 2]", "filters: 3, kernel_size: 3, strides: 2", {3, 3, 3}, {3, 3, 2, 3}},
    {"[5, 6, 3]", "filters: 4, kernel_size: 1, strides: 2, padding: same", {3, 3, 4}, {1, 1, 3, 4}},
    {"[7, 8, 2]", "filters: 3, kernel_size: 3, dilation_rate: 2, padding: same", {7, 8, 3}, {3, 3, 2, 3}},
    {"[7, 8, 2]", "filters: 3, kernel_size: [2, 3], dilation_rate: [3, 1]", {4, 6, 3}, {2, 3, 2, 3}},
    {"[5, 6, 4]", "filters: 6, kernel_size: 3, groups: 2, padding: same", {5, 6, 6}, {3, 3, 2, 6}},
    {"[5, 6, 4]", "filters: 4, kernel_size: 2, groups: 4, strides: 2", {2, 3, 4}, {2, 2, 1, 4}},
    {"[5, 5, 2]", "filters: 3, kernel_size: 3, padding: same, activation: tanh", {5, 5, 3}, {3, 3, 2, 3}},
    {"[5, 5, 2]", "filters: 3, kernel_size: 3, padding: same, activation: elu", {5, 5, 3}, {3, 3, 2, 3}},
    {"[5, 5, 2]", "filters: 3, kernel_size: 3, padding: same, activation: relu", {5, 5, 3}, {3, 3, 2, 3}},
    {"[5, 5, 2]", "filters: 3, kernel_size: 3, padding: same, activation: selu", {5, 5, 3}, {3, 3, 2, 3}},
    {"[5, 5, 2]", "filters: 3, kernel_size: 3, padding: same, activation: swish", {5, 5, 3}, {3, 3, 2, 3}},
    {"[5, 5, 2]", "filters: 3, kernel_size: 3, padding: same, activation: {leaky_relu: {alpha: 0.2}}", {5, 5, 3},
     {3, 3, 2, 3}},
    {"[5, 5, 2]", "filters: 3, kernel_size: 3, activation: sigmoid, use_bias: false", {3, 3, 3}, {3, 3, 2, 3}},
};

class Conv2DGrad : public ::testing::TestWithParam<ConvCase> {};
TEST_P(Conv2DGrad, WholeModelMatchesFiniteDifferences) {
  const ConvCase& c = GetParam();
  // The conv under test, then a second conv reading its output and a dense head.
  auto m = seq(c.input, {str_cat("conv2d: {", c.conv, ", ", kBias, "}"),
                         str_cat("conv2d: {filters: 2, kernel_size: 1, activation: tanh, ", kBias, "}"), "flatten: {}",
                         str_cat("dense: {units: 3, ", kBias, "}")});
  const Layer& conv = m->layer(0);
  EXPECT_EQ(conv.output_shape(), c.out);
  ASSERT_GE(conv.weights().size(), 1u);
  EXPECT_EQ(conv.weights()[0].name, "kernel");
  EXPECT_EQ(conv.weights()[0].shape, c.kernel);
  const bool bias = std::string(c.conv).find("use_bias: false") == std::string::npos;
  ASSERT_EQ(conv.weights().size(), bias ? 2u : 1u);
  if (bias) {
    EXPECT_EQ(conv.weights()[1].name, "bias");
    EXPECT_EQ(conv.weights()[1].shape, (Shape{c.out[2]}));
  }
  m->init(3);
  expect_model_grads_ok(*m, randn(batched(2, m->input_shape()), 31), training_ctx(), c.conv);
}
INSTANTIATE_TEST_SUITE_P(Variants, Conv2DGrad, ::testing::ValuesIn(kConvCases));

// ---- DepthwiseConv2D ---------------------------------------------------------------------------------
TEST(DepthwiseConv2DGrad, MultiplierTwoWholeModel) {
  for (const char* args : {"kernel_size: 3, depth_multiplier: 2, padding: same",
                           "kernel_size: [3, 2], depth_multiplier: 2, strides: 2",
                           "kernel_size: 3, depth_multiplier: 2, dilation_rate: 2, padding: same, activation: elu"}) {
    auto m = seq("[5, 6, 3]", {str_cat("depthwise_conv2d: {", args, ", ", kBias, "}"), "flatten: {}",
                               str_cat("dense: {units: 3, activation: tanh, ", kBias, "}")});
    const Layer& dw = m->layer(0);
    EXPECT_EQ(dw.key(), "depthwise_conv2d");
    EXPECT_EQ(dw.keras_class(), "DepthwiseConv2D");
    ASSERT_EQ(dw.weights().size(), 2u);
    EXPECT_EQ(dw.weights()[0].name, "depthwise_kernel");
    EXPECT_EQ(dw.weights()[0].shape[2], 3);  // [kh, kw, in, multiplier]
    EXPECT_EQ(dw.weights()[0].shape[3], 2);
    EXPECT_EQ(dw.weights()[1].shape, (Shape{6}));
    EXPECT_EQ(dw.output_shape()[2], 6);
    m->init(4);
    expect_model_grads_ok(*m, randn(batched(2, m->input_shape()), 41), training_ctx(), args);
  }
}

// ---- pooling -------------------------------------------------------------------------------------------
TEST(Pooling2DGrad, MaxAndAverageIncludingSamePadding) {
  struct Case {
    const char* input;
    const char* pool;
    Shape out;
  };
  for (const Case& c : std::vector<Case>{
           {"[6, 7, 2]", "max_pooling2d: {}", {3, 3, 2}},
           {"[7, 8, 2]", "max_pooling2d: {pool_size: 3, strides: 2, padding: same}", {4, 4, 2}},
           {"[5, 7, 2]", "max_pooling2d: {pool_size: [3, 2], strides: [1, 2]}", {3, 3, 2}},
           {"[5, 7, 2]", "max_pooling2d: {pool_size: 2, padding: same}", {3, 4, 2}},
           {"[6, 7, 2]", "average_pooling2d: {}", {3, 3, 2}},
           {"[5, 7, 2]", "average_pooling2d: {pool_size: 2, padding: same}", {3, 4, 2}},
           {"[7, 8, 2]", "average_pooling2d: {pool_size: 3, strides: 2, padding: same}", {4, 4, 2}},
           {"[5, 7, 2]", "average_pooling2d: {pool_size: [2, 3], strides: 1}", {4, 5, 2}},
       }) {
    // A conv below (its kernel's gradient passes through the pool) and a dense head above.
    auto m = seq(c.input, {str_cat("conv2d: {filters: 2, kernel_size: 3, padding: same, activation: tanh, ", kBias, "}"),
                           c.pool, "flatten: {}", str_cat("dense: {units: 3, ", kBias, "}")});
    EXPECT_EQ(m->layer(1).output_shape(), c.out) << c.pool;
    EXPECT_TRUE(m->layer(1).weights().empty());
    m->init(5);
    expect_model_grads_ok(*m, randn(batched(3, m->input_shape()), 51), training_ctx(), c.pool);
  }
}

// A ReLU convolution whose output only a max pooling reads: Model::build pairs them and the pooling does the
// ReLU's backward in its own pass (Layer::set_relu_gate). The gradients (input and weights, through the layer
// loop and Model::backward) equal bit for bit those of the same network with the ReLU as a separate
// Activation layer, which is never paired, in float64 and float32 (windows apart, overlapping, padded), and
// match central differences.
TEST(Pooling2DGrad, ReluConvUnderAMaxPoolFusedGivesTheSeparateBits) {
  for (const char* pool : {"max_pooling2d: {}", "max_pooling2d: {pool_size: 3, strides: 2, padding: same}",
                           "max_pooling2d: {pool_size: 2, padding: same}"})
    for (DType dt : {DType::F64, DType::F32}) {
      const std::string conv = str_cat("conv2d: {filters: 4, kernel_size: 3, padding: same, ", kBias);
      const std::string head = str_cat("dense: {units: 3, ", kBias, "}");
      auto fused = seq("[6, 7, 3]", {conv + ", activation: relu}", pool, "flatten: {}", head}, dt);
      auto apart = seq("[6, 7, 3]", {conv + "}", "activation: {activation: relu}", pool, "flatten: {}", head}, dt);
      fused->init(5);
      apart->init(6);
      for (size_t w = 0; w < 2; ++w) {
        apart->layer(0).weights()[w].value.copy_from(fused->layer(0).weights()[w].value);
        apart->layer(4).weights()[w].value.copy_from(fused->layer(3).weights()[w].value);
      }
      const Tensor x = randn(batched(4, fused->input_shape()), 61, 1.0, 0.0, dt);
      Context ctx = training_ctx();
      auto grads = [&](Model& m, bool layer_loop) {
        const Tensor y = m.forward(x, ctx);
        const Tensor r = randn(y.shape(), 4242, 1.0, 0.0, dt);
        Tensor g = r;
        if (layer_loop)
          for (int i = int(m.layers().size()) - 1; i >= 0; --i) g = m.layer(i).backward(g, ctx, true);
        else
          m.backward(r, ctx);
        std::vector<double> v = m.grads_arena().to_double_vector();
        if (layer_loop) {
          const std::vector<double> dx = g.to_double_vector();
          v.insert(v.end(), dx.begin(), dx.end());
        }
        return v;
      };
      for (bool layer_loop : {true, false}) {
        const std::vector<double> a = grads(*fused, layer_loop), b = grads(*apart, layer_loop);
        ASSERT_EQ(a.size(), b.size());
        size_t differ = 0, nonzero = 0;
        for (size_t i = 0; i < a.size(); ++i) differ += a[i] != b[i], nonzero += a[i] != 0;
        EXPECT_EQ(differ, 0u) << pool << " " << dtype_name(dt) << (layer_loop ? " layer loop" : " Model::backward");
        EXPECT_GT(nonzero, a.size() / 2) << pool;
      }
      if (dt == DType::F64) expect_model_grads_ok(*fused, x, training_ctx(), pool);
    }
}

TEST(GlobalPooling2DGrad, AverageAndMaxWithAndWithoutKeepdims) {
  struct Case {
    const char* pool;
    Shape out;
    const char* next;  // the layer above
  };
  for (const Case& c : std::vector<Case>{
           {"global_average_pooling2d: {}", {3}, "dense: {units: 3, activation: tanh}"},
           {"global_max_pooling2d: {}", {3}, "dense: {units: 3, activation: tanh}"},
           {"global_average_pooling2d: {keepdims: true}", {1, 1, 3}, "conv2d: {filters: 2, kernel_size: 1}"},
           {"global_max_pooling2d: {keepdims: true}", {1, 1, 3}, "conv2d: {filters: 2, kernel_size: 1}"},
       }) {
    auto m = seq("[4, 5, 2]", {str_cat("conv2d: {filters: 3, kernel_size: 3, padding: same, ", kBias, "}"), c.pool,
                               c.next, "flatten: {}", str_cat("dense: {units: 2, ", kBias, "}")});
    EXPECT_EQ(m->layer(1).output_shape(), c.out) << c.pool;
    m->init(6);
    expect_model_grads_ok(*m, randn(batched(3, m->input_shape()), 61), training_ctx(), c.pool);
  }
}

// ---- ZeroPadding2D ---------------------------------------------------------------------------------------
TEST(ZeroPadding2DGrad, AsymmetricPaddingUnderAValidConv) {
  auto m = seq("[4, 5, 2]", {"zero_padding2d: {padding: [[1, 2], [0, 3]]}",
                             str_cat("conv2d: {filters: 2, kernel_size: 3, activation: elu, ", kBias, "}"),
                             "flatten: {}", str_cat("dense: {units: 3, ", kBias, "}")});
  EXPECT_EQ(m->layer(0).output_shape(), (Shape{7, 8, 2}));
  EXPECT_EQ(m->layer(1).output_shape(), (Shape{5, 6, 2}));
  m->init(7);
  const Tensor x = randn(batched(2, m->input_shape()), 71);
  expect_model_grads_ok(*m, x, training_ctx(), "zero_padding2d");
  // The padded map: x at rows 1..4, columns 0..4; zeros elsewhere.
  Context ctx = inference_ctx();
  const Tensor y = m->layer(0).forward(x, ctx);
  ASSERT_EQ(y.shape(), (Shape{2, 7, 8, 2}));
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t i = 0; i < 7; ++i)
      for (int64_t j = 0; j < 8; ++j)
        for (int64_t c = 0; c < 2; ++c) {
          const bool inside = i >= 1 && i < 5 && j < 5;
          const double want = inside ? x.at(((n * 4 + i - 1) * 5 + j) * 2 + c) : 0.0;
          ASSERT_EQ(y.at(((n * 7 + i) * 8 + j) * 2 + c), want) << n << " " << i << " " << j << " " << c;
        }
  // The other forms of `padding`.
  EXPECT_EQ(seq("[4, 5, 2]", {"zero_padding2d: {}"})->output_shape(), (Shape{6, 7, 2}));
  EXPECT_EQ(seq("[4, 5, 2]", {"zero_padding2d: {padding: 2}"})->output_shape(), (Shape{8, 9, 2}));
  EXPECT_EQ(seq("[4, 5, 2]", {"zero_padding2d: {padding: [1, 3]}"})->output_shape(), (Shape{6, 11, 2}));
}

// ---- SpatialDropout2D ------------------------------------------------------------------------------------
std::vector<std::string> spatial_dropout_model() {
  return {str_cat("conv2d: {filters: 6, kernel_size: 3, padding: same, activation: tanh, ", kBias, "}"),
          "spatial_dropout2d: {rate: 0.5}", "flatten: {}", str_cat("dense: {units: 3, ", kBias, "}")};
}

TEST(SpatialDropout2DGrad, TrainingWithItsFixedMask) {
  auto m = seq("[4, 4, 2]", spatial_dropout_model());
  m->init(8);
  const Tensor x = randn({4, 4, 4, 2}, 81);
  // The mask is a function of (seed, step, layer): every pass of the check draws the same one.
  expect_model_grads_ok(*m, x, training_ctx(3, 17), "spatial_dropout2d training");
  // Whole channels dropped: each (sample, channel) map is all zero or all x / (1 - rate), and both occur.
  Layer& conv = m->layer(0);
  Context c2 = training_ctx(3, 17);
  const Tensor h = conv.forward(x, c2).clone();
  const Tensor y = m->layer(1).forward(h, c2);
  int dropped = 0, kept = 0;
  for (int64_t n = 0; n < 4; ++n)
    for (int64_t c = 0; c < 6; ++c) {
      int zeros = 0, scaled = 0;
      for (int64_t p = 0; p < 16; ++p) {
        const int64_t k = (n * 16 + p) * 6 + c;
        zeros += y.at(k) == 0.0;
        scaled += std::abs(y.at(k) - 2.0 * h.at(k)) <= 1e-15 * (1 + std::abs(h.at(k)));
      }
      EXPECT_TRUE(zeros == 16 || scaled == 16) << "sample " << n << " channel " << c << ": not one draw per map";
      dropped += zeros == 16;
      kept += scaled == 16;
    }
  EXPECT_GT(dropped, 0);
  EXPECT_GT(kept, 0);
}

TEST(SpatialDropout2DGrad, InferenceIsTheIdentity) {
  auto m = seq("[4, 4, 2]", spatial_dropout_model());
  m->init(9);
  const Tensor x = randn({3, 4, 4, 2}, 91);
  expect_model_grads_ok(*m, x, inference_ctx(), "spatial_dropout2d inference");
  Context ctx = inference_ctx();
  const Tensor h = m->layer(0).forward(x, ctx).clone();
  EXPECT_EQ(ops::max_abs_diff(m->layer(1).forward(h, ctx), h), 0.0);
}

// Each rank draws its slice of the global batch's mask (first sample at ctx.sample_offset).
TEST(SpatialDropout2D, MaskOfABatchSliceIsThatSliceOfTheWholeBatchsMask) {
  auto m = seq("[3, 3, 5]", {"spatial_dropout2d: {rate: 0.4}"});
  const Tensor x = Tensor::full({6, 3, 3, 5}, 1.0, Device::CPU, DType::F64);
  Context whole = training_ctx(5, 9);
  whole.global_batch = 6;
  const std::vector<double> all = m->forward(x, whole).to_double_vector();
  for (int world : {2, 3}) {
    std::vector<double> joined;
    for (int r = 0; r < world; ++r) {
      const int64_t n = 6 / world;
      Context ctx = training_ctx(5, 9);
      ctx.global_batch = 6;
      ctx.sample_offset = r * n;
      const std::vector<double> part = m->forward(Tensor::full({n, 3, 3, 5}, 1.0, Device::CPU, DType::F64), ctx)
                                           .to_double_vector();
      joined.insert(joined.end(), part.begin(), part.end());
    }
    EXPECT_EQ(joined, all) << world << " slices";
  }
}

// ---- BatchNormalization on 4-D maps ----------------------------------------------------------------------
TEST(ConvBatchNormGrad, TrainingModeOnFeatureMaps) {
  auto m = seq("[5, 5, 2]", {"conv2d: {filters: 3, kernel_size: 3, padding: same, use_bias: false}",
                             str_cat("batch_normalization: {", kBnInits, "}"), "relu: {}",
                             "conv2d: {filters: 4, kernel_size: 3, strides: 2, use_bias: false}",
                             str_cat("batch_normalization: {", kBnInits, "}"), "activation: {activation: tanh}",
                             "global_average_pooling2d: {}", str_cat("dense: {units: 3, ", kBias, "}")});
  m->init(10);
  EXPECT_EQ(m->layer(1).weights()[0].shape, (Shape{3}));  // per channel
  const Tensor x = randn({4, 5, 5, 2}, 101, 1.5, 0.3);
  expect_model_grads_ok(*m, x, training_ctx(), "conv + BN training");
  // Keras's fused BN on 4-D maps keeps the unbiased variance over N·H·W (momentum 0: the batch's).
  auto bn = seq("[3, 4, 2]", {"batch_normalization: {momentum: 0.0}"});
  const Tensor xb = randn({2, 3, 4, 2}, 102, 2.0, 0.5);
  Context ctx = training_ctx();
  bn->init(1);
  bn->forward(xb, ctx);
  for (int64_t c = 0; c < 2; ++c) {
    double s = 0, s2 = 0;
    for (int64_t k = c; k < xb.numel(); k += 2) s += xb.at(k);
    const double mean = s / 24;  // N·H·W = 2·3·4
    for (int64_t k = c; k < xb.numel(); k += 2) s2 += (xb.at(k) - mean) * (xb.at(k) - mean);
    EXPECT_NEAR(bn->layer(0).weight("moving_mean")->value.at(c), mean, 1e-12);
    EXPECT_NEAR(bn->layer(0).weight("moving_variance")->value.at(c), s2 / 23, 1e-12);
  }
}

// ---- a residual network in a Functional graph -----------------------------------------------------------
// A stem, an identity block (add of the stem's output and the block's) and a projection block (a 1x1
// stride-2 shortcut), as in ResNet-20 (launch/configs/cifar10_resnet20.yaml).
std::string residual_yaml(const std::string& input_shape = "[6, 6, 3]") {
  return str_cat(R"(model:
  name: residual
  inputs:
    - input: {name: image, shape: )", input_shape, R"(}
  layers:
    - conv2d: {name: stem, filters: 4, kernel_size: 3, padding: same, use_bias: false}
      inputs: image
    - batch_normalization: {name: bn_stem, )", kBnInits, R"(}
    - activation: {name: relu_stem, activation: relu}
    - conv2d: {name: b1_conv1, filters: 4, kernel_size: 3, padding: same, use_bias: false}
    - batch_normalization: {name: b1_bn1, )", kBnInits, R"(}
    - activation: {name: b1_relu1, activation: relu}
    - conv2d: {name: b1_conv2, filters: 4, kernel_size: 3, padding: same, use_bias: false}
    - batch_normalization: {name: b1_bn2, )", kBnInits, R"(}
    - add: {name: b1_add}
      inputs: [relu_stem, b1_bn2]
    - activation: {name: b1_out, activation: relu}
    - conv2d: {name: b2_conv1, filters: 5, kernel_size: 3, strides: 2, padding: same, use_bias: false}
    - batch_normalization: {name: b2_bn1, )", kBnInits, R"(}
    - activation: {name: b2_relu1, activation: elu}
    - conv2d: {name: b2_conv2, filters: 5, kernel_size: 3, padding: same, use_bias: false}
    - batch_normalization: {name: b2_bn2, )", kBnInits, R"(}
    - conv2d: {name: b2_shortcut, filters: 5, kernel_size: 1, strides: 2, padding: same, )", kBias, R"(}
      inputs: b1_out
    - add: {name: b2_add}
      inputs: [b2_shortcut, b2_bn2]
    - activation: {name: b2_out, activation: tanh}
    - average_pooling2d: {name: pool, pool_size: 3}
    - flatten: {name: flatten}
    - dense: {name: logits, units: 3, )", kBias, R"(}
  outputs: logits
)");
}

// dL/d(image) from each call's backward in reverse execution order, the gradients of a value read by
// several calls (the residual's fan-out) summed here, independently of Model::backward.
Tensor graph_input_grad(Model& m, const Tensor& dout, Context& ctx) {
  const std::vector<LayerCall>& calls = m.calls();
  const int out_layer = m.find_layer(m.output_name(0));
  std::vector<Tensor> g(1 + calls.size());
  auto add = [&](int v, const Tensor& t) {
    if (!g[size_t(v)].defined()) g[size_t(v)] = t.clone();
    else ops::axpy(1.0, t, g[size_t(v)]);
  };
  for (size_t k = 0; k < calls.size(); ++k)
    if (calls[k].layer == out_layer) add(1 + int(k), dout);
  for (int k = int(calls.size()) - 1; k >= 0; --k) {
    const LayerCall& c = calls[size_t(k)];
    Layer& l = m.layer(c.layer);
    const Tensor dy = g[size_t(1 + k)];
    if (!dy.defined()) {
      ADD_FAILURE() << "no gradient reached " << l.name();
      continue;
    }
    const std::vector<Tensor> dx = l.backward_multi(dy, ctx, std::vector<bool>(c.inputs.size(), true));
    for (size_t i = 0; i < c.inputs.size(); ++i) add(c.inputs[i], dx[i]);
  }
  return g[0];
}

TEST(ResidualGraphGrad, IdentityAndProjectionBlocksWithAdd) {
  auto m = model_from_yaml(residual_yaml());
  ASSERT_FALSE(m->is_sequential());
  EXPECT_EQ(m->output_shape(), (Shape{3}));
  EXPECT_EQ(m->layer(m->find_layer("b2_add")).output_shape(), (Shape{3, 3, 5}));
  m->init(11);
  const Tensor x = randn({3, 6, 6, 3}, 111, 1.0, 0.2);
  // Weights: Model::backward against central differences (every conv, BN and the head).
  ModelGradCheck c = check_model_grads(*m, x, training_ctx(), true);
  EXPECT_EQ(c.weights.size(), 1u + 2 + 4 * (1 + 2) + 2 + 2);  // convs before a BN have no bias
  expect_grads_ok(c, false, "residual graph");
  // The input gradient, through both branches of each block.
  const Tensor r = randn({3, 3}, 4242);
  Context ctx = training_ctx();
  m->forward(x, ctx);
  m->backward(r, ctx);
  const Tensor via_model = m->grads_arena().clone();
  Context c2 = training_ctx();
  m->forward(x, c2);
  const Tensor dx = graph_input_grad(*m, r, c2);
  // The layer loop assigned the same weight gradients.
  EXPECT_LT(ops::max_abs_diff(via_model, m->grads_arena()), 1e-12);
  ASSERT_EQ(dx.shape(), x.shape());
  GradErr e;
  double* xp = x.data<double>();
  for (int64_t j = 0; j < x.numel(); ++j) {
    const double keep = xp[j];
    xp[j] = keep + kFdEps;
    Context a = training_ctx();
    const double lp = dot(m->forward(x, a), r);
    xp[j] = keep - kFdEps;
    Context b = training_ctx();
    const double lm = dot(m->forward(x, b), r);
    xp[j] = keep;
    e.add(dx.at(j), (lp - lm) / (2 * kFdEps));
  }
  EXPECT_LT(e.max_err, kFdTol) << "residual graph: input gradient";
  EXPECT_GT(e.numeric_abs_sum, 1e-3);
}

TEST(ResidualGraphGrad, InferenceMode) {
  auto m = model_from_yaml(residual_yaml());
  m->init(12);
  expect_grads_ok(check_model_grads(*m, randn({2, 6, 6, 3}, 121), inference_ctx(), true), false, "residual inference");
}

// BatchNormalization and Add under an Activation('relu') that alone reads them (bn_stem, b1_bn1, b1_add in
// residual_yaml): Model::build has the producer apply the ReLU and do its backward (Layer::absorb_relu), the
// ReLU layer passing through. Outputs, moving statistics, weight gradients (Model::backward) and the input
// gradient (each call's backward) equal bit for bit those of the same graph with a linear Activation before
// each ReLU (never paired), in float64 and float32, in training and inference mode.
TEST(ReluAbsorbed, BatchNormAndAddUnderAReluGiveTheSeparateBits) {
  const std::string fused_yaml = residual_yaml();
  std::string apart_yaml;
  {
    std::istringstream in(fused_yaml);
    std::string line;
    const std::regex relu(R"(^(\s*)- activation: \{name: (\w+), activation: relu\}$)");
    std::smatch m;
    int inserted = 0;
    while (std::getline(in, line)) {
      if (std::regex_match(line, m, relu))
        apart_yaml += str_cat(m[1].str(), "- activation: {name: ", m[2].str(), "_linear, activation: linear}\n"), ++inserted;
      apart_yaml += line + "\n";
    }
    ASSERT_EQ(inserted, 3);
  }
  for (DType dt : {DType::F64, DType::F32})
    for (bool training : {true, false}) {
      SCOPED_TRACE(str_cat(dtype_name(dt), training ? " training" : " inference"));
      auto fused = model_from_yaml(fused_yaml, dt), apart = model_from_yaml(apart_yaml, dt);
      fused->init(11);
      ASSERT_EQ(fused->weights_arena().numel(), apart->weights_arena().numel());
      apart->weights_arena().copy_from(fused->weights_arena());
      const Tensor x = randn({3, 6, 6, 3}, 111, 1.0, 0.2, dt);
      const Tensor r = randn({3, 3}, 4242, 1.0, 0.0, dt);
      auto run = [&](Model& m) {
        Context ctx = training ? training_ctx() : inference_ctx();
        std::vector<double> v = m.forward(x, ctx).to_double_vector();
        m.backward(r, ctx);
        for (const Tensor& t : {m.weights_arena(), m.grads_arena()}) {
          const std::vector<double> w = t.to_double_vector();
          v.insert(v.end(), w.begin(), w.end());
        }
        Context c2 = training ? training_ctx() : inference_ctx();
        m.forward(x, c2);
        const std::vector<double> dx = graph_input_grad(m, r, c2).to_double_vector();
        v.insert(v.end(), dx.begin(), dx.end());
        return v;
      };
      const std::vector<double> a = run(*fused), b = run(*apart);
      ASSERT_EQ(a.size(), b.size());
      size_t differ = 0, zero = 0;
      for (size_t i = 0; i < a.size(); ++i) differ += a[i] != b[i], zero += a[i] == 0;
      EXPECT_EQ(differ, 0u);
      EXPECT_LT(zero, a.size() / 4);
      // The pairing took place: the fused graph's ReLU layers return their input itself.
      for (const char* name : {"relu_stem", "b1_relu1", "b1_out"}) {
        Context ctx = training_ctx();
        const Tensor t = randn({2, 6, 6, 4}, 7, 1.0, 0.0, dt);
        EXPECT_EQ(fused->layer(fused->find_layer(name)).forward(t, ctx).raw(), t.raw()) << name;
        EXPECT_NE(apart->layer(apart->find_layer(name)).forward(t, ctx).raw(), t.raw()) << name;
      }
    }
}

// A layer paired in one model is unpaired when it is built into another where no ReLU follows it.
TEST(ReluAbsorbed, PairingIsUndoneInTheNextModel) {
  auto first = model_from_yaml(residual_yaml());
  std::vector<std::unique_ptr<Layer>> layers;
  layers.push_back(std::move(first->layers()[size_t(first->find_layer("bn_stem"))]));
  Model alone({6, 6, 4}, std::move(layers));
  alone.init(3);
  Context ctx = training_ctx();
  const Tensor x = randn({2, 6, 6, 4}, 8, 1.0, 0.0, alone.dtype());
  const Tensor y = alone.forward(x, ctx);
  size_t negative = 0;
  for (double v : y.to_double_vector()) negative += v < 0;
  EXPECT_GT(negative, 0u) << "a BatchNormalization without a ReLU after it kept applying one";
}

// ---- [H, W] images into an input declared [H, W, 1] -------------------------------------------------------
TEST(ChannelAxis, ImagesWithoutChannelAxisFeedAnInputDeclaredWithOne) {
  for (const std::string& yaml :
       {std::string("model:\n  layers:\n    - input: {shape: [5, 6, 1]}\n"
                    "    - conv2d: {filters: 3, kernel_size: 3, padding: same, activation: tanh}\n"
                    "    - max_pooling2d: {}\n    - flatten: {}\n    - dense: {units: 2}\n"),
        std::string("model:\n  inputs:\n    - input: {shape: [5, 6, 1]}\n  layers:\n"
                    "    - conv2d: {filters: 3, kernel_size: 3, padding: same, activation: tanh}\n"
                    "    - max_pooling2d: {}\n    - flatten: {}\n    - dense: {units: 2}\n")}) {
    auto m = model_from_yaml(yaml);
    m->init(13);
    const Tensor x3 = randn({4, 5, 6}, 131);
    const Tensor x4 = x3.clone().reshape({4, 5, 6, 1});
    Context a = training_ctx(), b = training_ctx();
    const Tensor y3 = m->forward(x3, a).clone();
    m->backward(Tensor::full(y3.shape(), 1.0, Device::CPU, DType::F64), a);
    const Tensor g3 = m->grads_arena().clone();
    const Tensor y4 = m->forward(x4, b).clone();
    m->backward(Tensor::full(y4.shape(), 1.0, Device::CPU, DType::F64), b);
    EXPECT_EQ(ops::max_abs_diff(y3, y4), 0.0) << yaml;
    EXPECT_EQ(ops::max_abs_diff(g3, m->grads_arena()), 0.0) << yaml;
    // Other shapes are still refused.
    Context c = training_ctx();
    EXPECT_THROW(m->forward(randn({4, 6, 5}, 132), c), Error) << yaml;
    EXPECT_THROW(m->forward(randn({4, 5, 6, 2}, 133), c), Error) << yaml;
  }
}

// ---- weights in Keras's layout, initializers' fans ---------------------------------------------------------
TEST(ConvWeights, KerasNamesShapesAndParamCounts) {
  auto m = seq("[8, 8, 16]", {"conv2d: {filters: 64, kernel_size: [3, 5], groups: 2, padding: same}",
                              "depthwise_conv2d: {kernel_size: 3, depth_multiplier: 4, use_bias: false}",
                              "conv2d: {filters: 8, kernel_size: 1, use_bias: false}", "batch_normalization: {}",
                              "depthwise_conv2d: {kernel_size: 2}"},
               DType::F32);
  struct Want {
    const char* layer;
    std::vector<std::pair<const char*, Shape>> weights;
  };
  const std::vector<Want> want = {
      {"conv2d", {{"kernel", {3, 5, 8, 64}}, {"bias", {64}}}},
      {"depthwise_conv2d", {{"depthwise_kernel", {3, 3, 64, 4}}}},
      {"conv2d_1", {{"kernel", {1, 1, 256, 8}}}},
      {"batch_normalization", {{"gamma", {8}}, {"beta", {8}}, {"moving_mean", {8}}, {"moving_variance", {8}}}},
      {"depthwise_conv2d_1", {{"depthwise_kernel", {2, 2, 8, 1}}, {"bias", {8}}}},
  };
  ASSERT_EQ(m->layers().size(), want.size());
  for (size_t l = 0; l < want.size(); ++l) {
    EXPECT_EQ(m->layer(int(l)).name(), want[l].layer);
    ASSERT_EQ(m->layer(int(l)).weights().size(), want[l].weights.size()) << want[l].layer;
    for (size_t w = 0; w < want[l].weights.size(); ++w) {
      EXPECT_EQ(m->layer(int(l)).weights()[w].name, want[l].weights[w].first) << want[l].layer;
      EXPECT_EQ(m->layer(int(l)).weights()[w].shape, want[l].weights[w].second) << want[l].layer;
    }
  }
  EXPECT_EQ(m->output_shape(), (Shape{5, 5, 8}));
  // 3·5·8·64 + 64; 3·3·64·4; 256·8; 4·8 (16 non-trainable); 2·2·8 + 8.
  EXPECT_EQ(m->total_params(), 7744 + 2304 + 2048 + 32 + 40);
  EXPECT_EQ(m->trainable_params(), m->total_params() - 16);
}

// Sample standard deviation and largest magnitude of a weight.
std::pair<double, double> spread(const Tensor& w) {
  const std::vector<double> v = w.to_double_vector();
  double s = 0, s2 = 0, mx = 0;
  for (double x : v) s += x;
  const double mean = s / double(v.size());
  for (double x : v) {
    s2 += (x - mean) * (x - mean);
    mx = std::max(mx, std::abs(x));
  }
  return {std::sqrt(s2 / double(v.size() - 1)), mx};
}

TEST(ConvWeights, HeAndGlorotFansCountTheReceptiveField) {
  // Keras: fan_in = kh·kw·(kernel's input axis), fan_out = kh·kw·(its output axis).
  struct Case {
    const char* input;
    const char* layer;
    double fan_in, fan_out;
  };
  for (const Case& c : std::vector<Case>{
           {"[9, 9, 32]", "conv2d: {filters: 128, kernel_size: 3, kernel_initializer: he_normal}", 9 * 32, 9 * 128},
           {"[9, 9, 32]", "conv2d: {filters: 128, kernel_size: 3}", 9 * 32, 9 * 128},  // glorot_uniform
           {"[9, 9, 32]", "conv2d: {filters: 128, kernel_size: [3, 5], groups: 4, kernel_initializer: he_uniform}",
            15 * 8, 15 * 128},
           {"[9, 9, 32]", "conv2d: {filters: 128, kernel_size: 3, groups: 2}", 9 * 16, 9 * 128},
           {"[9, 9, 128]", "depthwise_conv2d: {kernel_size: 5, depth_multiplier: 3, depthwise_initializer: he_normal}",
            25 * 128, 25 * 3},
           {"[9, 9, 128]", "depthwise_conv2d: {kernel_size: 5, depth_multiplier: 3}", 25 * 128, 25 * 3},
       }) {
    auto m = seq(c.input, {c.layer}, DType::F32);
    m->init(14);
    const Weight& k = m->layer(0).weights()[0];
    double fan_in = 0, fan_out = 0;
    compute_fans(k.shape, fan_in, fan_out);
    EXPECT_EQ(fan_in, c.fan_in) << c.layer;
    EXPECT_EQ(fan_out, c.fan_out) << c.layer;
    const auto [sd, mx] = spread(k.value);
    const std::string layer = c.layer;
    if (layer.find("he_normal") != std::string::npos) {
      // Truncated at two standard deviations of the underlying normal, whose stddev is sqrt(2/fan_in)/0.8796...
      const double want = std::sqrt(2.0 / c.fan_in);
      EXPECT_NEAR(sd, want, 0.03 * want) << c.layer;
      EXPECT_LE(mx, 2 * want / 0.87962566103423978 * (1 + 1e-6)) << c.layer;
    } else if (layer.find("he_uniform") != std::string::npos) {
      const double limit = std::sqrt(6.0 / c.fan_in);
      EXPECT_LE(mx, limit) << c.layer;
      EXPECT_GT(mx, 0.99 * limit) << c.layer;
      EXPECT_NEAR(sd, limit / std::sqrt(3.0), 0.03 * limit) << c.layer;
    } else {  // glorot_uniform
      const double limit = std::sqrt(6.0 / (c.fan_in + c.fan_out));
      EXPECT_LE(mx, limit) << c.layer;
      EXPECT_GT(mx, 0.99 * limit) << c.layer;
      EXPECT_NEAR(sd, limit / std::sqrt(3.0), 0.03 * limit) << c.layer;
    }
    // The bias starts at zero.
    ASSERT_EQ(m->layer(0).weights().size(), 2u);
    EXPECT_EQ(ops::max_abs_diff(m->layer(0).weights()[1].value,
                                Tensor::full(m->layer(0).weights()[1].shape, 0.0, Device::CPU, DType::F32)),
              0.0);
  }
}

}  // namespace
}  // namespace lockstep::test
