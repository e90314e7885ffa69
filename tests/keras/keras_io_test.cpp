// Keras .h5 export/import (core/keras_io.h, docs/keras.md): structure of exported files, round trips,
// every fixture of ../shared/datasets/keras-h5 read or refused by name, bad input. No TensorFlow needed.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <tuple>

#include "core/checkpoint.h"
#include "core/keras_io.h"
#include "core/keras_json.h"
#include <nlohmann/json.hpp>
#include "core/model.h"
#include "core/trainer.h"
#include "comm/local_communicator.h"
#include "data/dataset.h"

namespace lockstep {
namespace {
namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "lockstep-keras-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::unique_ptr<Model> build(const std::string& yaml, uint64_t seed = 3) {
  ConfigNode c = load_config_string(yaml);
  auto m = Model::from_config(c["model"]);
  m->init(seed);
  return m;
}

std::unique_ptr<Model> import(const std::string& path, const std::string& weights = "") {
  auto m = Model::from_config(ConfigNode(keras_model_yaml(path), std::make_shared<const std::string>(path), "model"));
  const std::string w = weights.empty() ? path : weights;
  if (w.size() < 5 || w.substr(w.size() - 5) != ".json") load_keras_weights(w, *m);
  return m;
}

std::vector<float> values(const Tensor& t) {
  Tensor c = t.to(Device::CPU).to(DType::F32);
  return std::vector<float>(c.data<float>(), c.data<float>() + c.numel());
}

void expect_same_weights(const Model& a, const Model& b) {
  ASSERT_EQ(a.layers().size(), b.layers().size());
  for (size_t i = 0; i < a.layers().size(); ++i) {
    const auto& la = *a.layers()[i];
    const Layer* lb = b.layers()[size_t(b.find_layer(la.name()))].get();
    ASSERT_EQ(la.weights().size(), lb->weights().size()) << la.name();
    for (size_t k = 0; k < la.weights().size(); ++k)
      EXPECT_EQ(values(la.weights()[k].value), values(lb->weights()[k].value)) << la.name() << "/" << la.weights()[k].name;
  }
}

const char* kSequential = R"(model:
  name: seq
  input_shape: [4, 3]
  layers:
    - flatten: {}
    - dense: {units: 5, activation: selu, kernel_initializer: lecun_normal, kernel_regularizer: {l2: 0.0001}, kernel_constraint: {max_norm: 1.0}}
    - batch_normalization: {momentum: 0.9}
    - leaky_relu: {alpha: 0.2}
    - dropout: {rate: 0.2}
    - dense: {units: 4}
    - prelu: {}
    - elu: {alpha: 0.7}
    - alpha_dropout: {rate: 0.1}
    - relu: {}
    - reshape: {target_shape: [2, 2]}
    - flatten: {}
    - activation: {activation: tanh}
    - dense: {units: 3, activation: softmax}
)";

const char* kFunctional = R"(model:
  name: fn
  inputs:
    - input: {name: a, shape: [3]}
    - input: {name: b, shape: [3]}
  layers:
    - dense: {name: d1, units: 4, activation: relu}
      inputs: a
    - dense: {name: d2, units: 4}
      inputs: b
    - add: {}
      inputs: [d1, d2]
    - subtract: {}
      inputs: [d1, d2]
    - multiply: {}
      inputs: [d1, d2]
    - average: {}
      inputs: [d1, d2]
    - maximum: {}
      inputs: [d1, d2]
    - minimum: {}
      inputs: [d1, d2]
    - concatenate: {axis: -1}
      inputs: [add, subtract, multiply, average, maximum, minimum]
    - softmax: {}
  outputs: softmax
)";

// Every convolutional layer, with non-default arguments where they have some.
const char* kCnnSequential = R"(model:
  name: cnn
  input_shape: [9, 8, 2]
  layers:
    - conv2d: {filters: 4, kernel_size: 3, padding: same, activation: relu, kernel_initializer: he_normal,
               kernel_regularizer: {l2: 0.0001}, bias_regularizer: {l1: 0.00001}, kernel_constraint: {max_norm: 2.0}}
    - batch_normalization: {}
    - conv2d: {filters: 6, kernel_size: [3, 2], strides: [2, 1], groups: 2, use_bias: false, trainable: false}
    - depthwise_conv2d: {kernel_size: 2, depth_multiplier: 2, dilation_rate: 2, activation: tanh,
                         depthwise_initializer: lecun_uniform, depthwise_regularizer: {l1_l2: {l1: 0.001, l2: 0.002}},
                         depthwise_constraint: {max_norm: {max_value: 3.0, axis: 2}}}
    - zero_padding2d: {padding: [[1, 0], [2, 1]]}
    - max_pooling2d: {pool_size: 2, strides: 1, padding: same}
    - spatial_dropout2d: {rate: 0.25, seed: 5}
    - average_pooling2d: {pool_size: [2, 3]}
    - zero_padding2d: {padding: 1}
    - global_max_pooling2d: {keepdims: true}
    - flatten: {}
    - dense: {units: 3, activation: softmax}
)";

const char* kCnnFunctional = R"(model:
  name: resblock
  inputs:
    - input: {name: image, shape: [8, 8, 3]}
  layers:
    - conv2d: {name: stem, filters: 4, kernel_size: 3, padding: same}
      inputs: image
    - depthwise_conv2d: {name: dw, kernel_size: 3, padding: same}
    - conv2d: {name: pw, filters: 4, kernel_size: 1}
    - add: {name: res}
      inputs: [stem, pw]
    - zero_padding2d: {name: pad, padding: [1, 1]}
    - spatial_dropout2d: {name: sdrop, rate: 0.1}
    - global_average_pooling2d: {name: gap}
    - dense: {name: out, units: 2, activation: softmax}
  outputs: out
)";

std::string root_string(const std::string& path, const char* name, H5T_cset_t* cset, bool* vlen) {
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t a = H5Aopen(f, name, H5P_DEFAULT);
  hid_t t = H5Aget_type(a);
  *cset = H5Tget_cset(t);
  *vlen = H5Tis_variable_str(t) > 0;
  H5Tclose(t);
  H5Aclose(a);
  H5Fclose(f);
  return "";
}

TEST(KerasExport, StringTypesFollowTheProfile) {
  TempDir tmp;
  auto m = build(kSequential);
  const std::string p = tmp.path() + "/m.h5";
  write_keras_h5(p, *m, ConfigNode(), nullptr);
  H5T_cset_t cs;
  bool vlen;
  root_string(p, "keras_version", &cs, &vlen);
  EXPECT_EQ(cs, H5T_CSET_UTF8);
  EXPECT_TRUE(vlen);
  root_string(p, "model_config", &cs, &vlen);
  EXPECT_EQ(cs, H5T_CSET_ASCII);
  EXPECT_TRUE(vlen);
  EXPECT_TRUE(is_keras_file(p));
}

TEST(KerasExport, SequentialRoundTripIsBitIdentical) {
  TempDir tmp;
  auto m = build(kSequential);
  const std::string p = tmp.path() + "/m.h5";
  write_keras_h5(p, *m, ConfigNode(), nullptr);
  auto back = import(p);
  expect_same_weights(*m, *back);
  EXPECT_EQ(keras_model_config(*m), keras_model_config(*back));
  EXPECT_EQ(m->summary(), back->summary());
  // Export again: the same file contents (configs equal).
  const std::string p2 = tmp.path() + "/m2.h5";
  write_keras_h5(p2, *back, ConfigNode(), nullptr);
  EXPECT_EQ(python_json_dump(keras_model_config_json(*back)), keras_model_config(*import(p2)));
}

TEST(KerasExport, FunctionalRoundTripIsBitIdentical) {
  TempDir tmp;
  auto m = build(kFunctional);
  const std::string p = tmp.path() + "/f.h5";
  write_keras_h5(p, *m, ConfigNode(), nullptr);
  auto back = import(p);
  expect_same_weights(*m, *back);
  EXPECT_EQ(keras_model_config(*m), keras_model_config(*back));
}

TEST(KerasExport, CompleteLayerConfigs) {
  auto m = build(kSequential);
  const std::string j = keras_model_config(*m);
  for (const char* want :
       {"\"kernel_regularizer\": {\"class_name\": \"L2\", \"config\": {\"l2\": 9.999999747378752e-05}}",
        "\"kernel_initializer\": {\"class_name\": \"LecunNormal\", \"config\": {\"seed\": null}}",
        "\"kernel_constraint\": {\"class_name\": \"MaxNorm\", \"config\": {\"max_value\": 1.0, \"axis\": 0}}",
        "\"axis\": [1], \"momentum\": 0.9, \"epsilon\": 0.001", "\"alpha\": 0.20000000298023224",
        "\"rate\": 0.2, \"noise_shape\": null, \"seed\": null", "\"alpha\": 0.699999988079071",
        "\"max_value\": null, \"negative_slope\": 0.0, \"threshold\": 0.0", "\"target_shape\": [2, 2]",
        "\"shared_axes\": null", "\"activity_regularizer\": null"})
    EXPECT_NE(j.find(want), std::string::npos) << want << "\n" << j;
}

TEST(KerasExport, ConvolutionalRoundTripsAreBitIdentical) {
  TempDir tmp;
  for (const char* yaml : {kCnnSequential, kCnnFunctional}) {
    auto m = build(yaml);
    const std::string p = tmp.path() + "/c.h5";
    write_keras_h5(p, *m, ConfigNode(), nullptr);
    auto back = import(p);
    expect_same_weights(*m, *back);
    EXPECT_EQ(keras_model_config(*m), keras_model_config(*back));
    EXPECT_EQ(m->summary(), back->summary());
    EXPECT_EQ(m->total_params(), back->total_params());
  }
}

// The keys and values tf_keras 2.x writes (tests/keras/keras_roundtrip.py loads them in tf_keras and Keras 3).
TEST(KerasExport, CompleteConvolutionalLayerConfigs) {
  const std::string j = keras_model_config(*build(kCnnSequential));
  for (const char* want :
       {"{\"class_name\": \"InputLayer\", \"config\": {\"batch_input_shape\": [null, 9, 8, 2]",
        "{\"class_name\": \"Conv2D\", \"config\": {\"name\": \"conv2d\", \"trainable\": true, \"dtype\": \"float32\", "
        "\"filters\": 4, \"kernel_size\": [3, 3], \"strides\": [1, 1], \"padding\": \"same\", \"data_format\": \"channels_last\", "
        "\"dilation_rate\": [1, 1], \"groups\": 1, \"activation\": \"relu\", \"use_bias\": true, "
        "\"kernel_initializer\": {\"class_name\": \"HeNormal\", \"config\": {\"seed\": null}}, "
        "\"bias_initializer\": {\"class_name\": \"Zeros\", \"config\": {}}, "
        "\"kernel_regularizer\": {\"class_name\": \"L2\", \"config\": {\"l2\": 9.999999747378752e-05}}, "
        "\"bias_regularizer\": {\"class_name\": \"L1\", \"config\": {\"l1\": 9.999999747378752e-06}}, "
        "\"activity_regularizer\": null, "
        "\"kernel_constraint\": {\"class_name\": \"MaxNorm\", \"config\": {\"max_value\": 2.0, \"axis\": 0}}, "
        "\"bias_constraint\": null}}",
        "\"name\": \"conv2d_1\", \"trainable\": false, \"dtype\": \"float32\", \"filters\": 6, \"kernel_size\": [3, 2], "
        "\"strides\": [2, 1], \"padding\": \"valid\", \"data_format\": \"channels_last\", \"dilation_rate\": [1, 1], "
        "\"groups\": 2, \"activation\": \"linear\", \"use_bias\": false",
        "{\"class_name\": \"DepthwiseConv2D\", \"config\": {\"name\": \"depthwise_conv2d\", \"trainable\": true, "
        "\"dtype\": \"float32\", \"kernel_size\": [2, 2], \"strides\": [1, 1], \"padding\": \"valid\", "
        "\"data_format\": \"channels_last\", \"dilation_rate\": [2, 2], \"activation\": \"tanh\", \"use_bias\": true, "
        "\"bias_initializer\": {\"class_name\": \"Zeros\", \"config\": {}}, \"bias_regularizer\": null, "
        "\"activity_regularizer\": null, \"bias_constraint\": null, \"depth_multiplier\": 2, "
        "\"depthwise_initializer\": {\"class_name\": \"LecunUniform\", \"config\": {\"seed\": null}}, "
        "\"depthwise_regularizer\": {\"class_name\": \"L1L2\", \"config\": {\"l1\": 0.0010000000474974513, \"l2\": 0.0020000000949949026}}, "
        "\"depthwise_constraint\": {\"class_name\": \"MaxNorm\", \"config\": {\"max_value\": 3.0, \"axis\": 2}}}}",
        "{\"class_name\": \"ZeroPadding2D\", \"config\": {\"name\": \"zero_padding2d\", \"trainable\": true, "
        "\"dtype\": \"float32\", \"padding\": [[1, 0], [2, 1]], \"data_format\": \"channels_last\"}}",
        "{\"class_name\": \"MaxPooling2D\", \"config\": {\"name\": \"max_pooling2d\", \"trainable\": true, "
        "\"dtype\": \"float32\", \"pool_size\": [2, 2], \"padding\": \"same\", \"strides\": [1, 1], \"data_format\": \"channels_last\"}}",
        "{\"class_name\": \"SpatialDropout2D\", \"config\": {\"name\": \"spatial_dropout2d\", \"dtype\": \"float32\", "
        "\"rate\": 0.25, \"data_format\": \"channels_last\", \"seed\": 5}}",
        "{\"class_name\": \"AveragePooling2D\", \"config\": {\"name\": \"average_pooling2d\", \"trainable\": true, "
        "\"dtype\": \"float32\", \"pool_size\": [2, 3], \"padding\": \"valid\", \"strides\": [2, 3], \"data_format\": \"channels_last\"}}",
        "\"name\": \"zero_padding2d_1\", \"trainable\": true, \"dtype\": \"float32\", \"padding\": [[1, 1], [1, 1]]",
        "{\"class_name\": \"GlobalMaxPooling2D\", \"config\": {\"name\": \"global_max_pooling2d\", \"trainable\": true, "
        "\"dtype\": \"float32\", \"data_format\": \"channels_last\", \"keepdims\": true}}"})
    EXPECT_NE(j.find(want), std::string::npos) << want << "\n" << j;
  const std::string f = keras_model_config(*build(kCnnFunctional));
  EXPECT_NE(f.find("\"padding\": [[1, 1], [1, 1]]"), std::string::npos) << f;
  EXPECT_NE(f.find("\"data_format\": \"channels_last\", \"keepdims\": false}"), std::string::npos) << f;
}

// A layer kind keras_layer_json has no entry for is refused by name, not written with the base keys.
class UnknownToKeras : public Layer {
 public:
  std::string key() const override { return "fancy_layer"; }
  std::string keras_class() const override { return "Fancy"; }
  std::unique_ptr<Layer> clone() const override { return std::make_unique<UnknownToKeras>(*this); }
  Shape build(const Shape& in) override { return in; }
  Tensor forward(const Tensor& x, Context&) override { return x; }
  Tensor backward(const Tensor& dy, Context&, bool) override { return dy; }
};

TEST(KerasExport, UnknownLayerKindsAreRefused) {
  auto m = build(kSequential);
  UnknownToKeras l;
  l.set_name("my_fancy");
  try {
    keras_layer_json(*m, l);
    ADD_FAILURE() << "accepted";
  } catch (const UserError& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("my_fancy"), std::string::npos) << w;
    EXPECT_NE(w.find("fancy_layer"), std::string::npos) << w;
  }
  // Every layer kind of the run file has an export (a model with one of each builds and exports).
  for (const char* yaml : {kSequential, kFunctional, kCnnSequential, kCnnFunctional})
    EXPECT_NO_THROW(keras_model_config(*build(yaml)));
}

TEST(KerasExport, RReluAndMcDropoutAreWrittenAsTheirKerasEquivalents) {
  auto m = build("model:\n  input_shape: [3]\n  layers:\n    - rrelu: {lower: 0.1, upper: 0.3}\n    - mc_dropout: {rate: 0.5}\n"
                 "    - mc_alpha_dropout: {rate: 0.5}\n");
  const std::string j = keras_model_config(*m);
  EXPECT_NE(j.find("{\"class_name\": \"LeakyReLU\", \"config\": {\"name\": \"r_re_lu\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"class_name\": \"Dropout\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"class_name\": \"AlphaDropout\""), std::string::npos) << j;
  EXPECT_EQ(keras_export_notes(*m).size(), 3u);
}

// For check_export.py: a Sequential and a Functional export under $LOCKSTEP_KERAS_SAMPLE_DIR (with a
// training_config and optimizer state, as `lockstep export` writes them).
TEST(KerasExport, WriteSample) {
  const char* out = std::getenv("LOCKSTEP_KERAS_SAMPLE_DIR");
  if (!out) GTEST_SKIP() << "LOCKSTEP_KERAS_SAMPLE_DIR not set (tests/keras/check_export.py sets it)";
  ConfigNode run = load_config_string("loss: sparse_categorical_crossentropy\nmetrics: [accuracy]\n"
                                      "optimizer: {name: nadam, learning_rate: 0.002}\n");
  for (const auto& [name, yaml] : {std::pair{"sequential", kSequential}, std::pair{"functional", kFunctional}}) {
    auto m = build(yaml);
    CheckpointContents c;
    c.state["optimizer.iterations"] = 7;
    c.state["optimizer.momentum_cache"] = 0.5;
    for (const char* slot : {"m", "v"})  // Keras's legacy Nadam order: all m, then all v
      for (const WeightRef& r : m->weight_refs())
        if (r.grad_offset >= 0)
          c.optimizer.emplace_back(str_cat("Nadam/", m->layers()[size_t(r.layer)]->name(), "/", r.weight->name, "/", slot, ":0"),
                                   r.weight->value.to(DType::F32));
    write_keras_h5(std::string(out) + "/" + name + ".h5", *m, run, &c);
  }
}

// Keras builds optimizer slots for model.trainable_weights only and tf.keras loads optimizer_weights
// by position with a length check: the slots lockstep keeps for a frozen layer (trainable: false) must
// be left out, or tf_keras refuses the whole state (found by tests/keras/keras_roundtrip.py).
TEST(KerasExport, OptimizerWeightsLeaveOutFrozenLayers) {
  TempDir d;
  ConfigNode run = load_config_string("loss: sparse_categorical_crossentropy\noptimizer: {name: adam}\n");
  auto m = build(R"(model:
  input_shape: [3]
  layers:
    - dense: {name: d0, units: 4}
    - dense: {name: frozen, units: 4, trainable: false}
    - batch_normalization: {name: bn}
    - dense: {name: d2, units: 2}
)");
  CheckpointContents c;
  c.state["optimizer.iterations"] = 3;
  for (const char* slot : {"m", "v"})
    for (const WeightRef& r : m->weight_refs())
      if (r.grad_offset >= 0)
        c.optimizer.emplace_back(str_cat("Adam/", m->layers()[size_t(r.layer)]->name(), "/", r.weight->name, "/", slot, ":0"),
                                 r.weight->value.to(DType::F32));
  const std::string p = d.path() + "/m.h5";
  write_keras_h5(p, *m, run, &c);
  hid_t f = H5Fopen(p.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t g = H5Gopen2(f, "optimizer_weights", H5P_DEFAULT);
  hid_t a = H5Aopen(g, "weight_names", H5P_DEFAULT);
  hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
  const size_t width = H5Tget_size(t);
  const hssize_t n = H5Sget_simple_extent_npoints(sp);
  std::vector<char> buf(width * size_t(n));
  ASSERT_GE(H5Aread(a, t, buf.data()), 0);
  std::vector<std::string> names;
  for (hssize_t i = 0; i < n; ++i) names.emplace_back(&buf[size_t(i) * width], strnlen(&buf[size_t(i) * width], width));
  H5Sclose(sp), H5Tclose(t), H5Aclose(a), H5Gclose(g), H5Fclose(f);
  // Keras's legacy Adam order: iter, then m of every trainable weight, then v.
  std::vector<std::string> want = {"Adam/iter:0"};
  for (const char* slot : {"m", "v"})
    for (const char* w : {"d0/kernel", "d0/bias", "bn/gamma", "bn/beta", "d2/kernel", "d2/bias"})
      want.push_back(str_cat("Adam/", w, "/", slot, ":0"));
  EXPECT_EQ(names, want);
}

// The text of a run file's top-level section `key` (up to the next top-level key).
std::string yaml_section(const std::string& file, const std::string& key) {
  std::ifstream in(file);
  std::string line, out;
  bool on = false;
  while (std::getline(in, line)) {
    if (!line.empty() && line[0] != ' ') on = line.rfind(key, 0) == 0;
    if (on) out += (line.rfind(key, 0) == 0 ? line.substr(key.size()) : line) + "\n";
  }
  return out;
}

// transfer: {from: a Keras .h5, freeze_epochs} (the chapter's model B on A). The trainer named periodic
// checkpoints by the optimizer's iterations, which restart at the unfreeze (a fresh optimizer, as Keras's
// compile()): the unfrozen epochs' checkpoints overwrote the frozen ones' (ckpt-4 held epoch 3), and a
// run resumed after the unfreeze took that count for its global step, so its dropout masks differed from
// the uninterrupted run's (found by tests/keras/keras_roundtrip.py). Names are global steps now.
TEST(KerasTransfer, CheckpointsAfterAnUnfreezeKeepGlobalStepsAndResumeBitIdentically) {
  TempDir d;
  const std::string dir = d.path();
  data::RawDataset ds;
  ds.name = "tiny";
  for (int k = 0; k < 4; ++k) ds.class_names.push_back(str_cat("c", k));
  for (data::RawSplit* sp : {&ds.train, &ds.test}) {
    sp->n = sp == &ds.train ? 64 : 16, sp->h = 4, sp->w = 4;
    for (int64_t i = 0; i < sp->n * 16; ++i) sp->x.push_back(uint8_t((i * 37 + i / 16 * 11) % 251));
    for (int64_t i = 0; i < sp->n; ++i) sp->y.push_back(int32_t(i % 4));
  }
  data::write_dataset_file(ds, dir + "/data.h5", 1);
  auto a = build(R"(model:
  input_shape: [4, 4]
  layers:
    - flatten: {name: flat}
    - dense: {name: h1, units: 8, activation: selu}
    - dense: {name: h2, units: 8, activation: selu}
    - dense: {name: out_a, units: 4, activation: softmax}
)");
  write_keras_h5(dir + "/model_A.h5", *a, ConfigNode(), nullptr);
  const std::string run_file = dir + "/b.yaml";
  std::ofstream(run_file) << "seed: 5\ndata: {path: data.h5, scale: 255}\n"
                             "model:\n  input_shape: [4, 4]\n  layers:\n    - flatten: {name: flat}\n"
                             "    - dense: {name: h1, units: 8, activation: selu}\n    - dropout: {rate: 0.3}\n"
                             "    - dense: {name: h2, units: 8, activation: selu}\n"
                             "    - dense: {name: head, units: 4, activation: softmax}\n"
                             "loss: sparse_categorical_crossentropy\noptimizer: {name: sgd, learning_rate: 0.05}\n"
                             "transfer: {from: model_A.h5, layers: [h1, h2], freeze_epochs: 1}\n"
                             "checkpoint: {keep: 10}\ntrain: {epochs: 4, batch_size: 16, verbose: 0}\n";
  comm::LocalCommunicator local;
  {
    Trainer t(load_config_file(run_file), run_file, local);
    t.fit(dir + "/ref", "");
  }
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir + "/ref/checkpoints")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"ckpt-0000000004.h5", "ckpt-0000000008.h5", "ckpt-0000000012.h5",
                                             "ckpt-0000000016.h5"}));
  // Resume from epoch 2's checkpoint (after the unfreeze at epoch 2): epochs 3 and 4 draw the dropout
  // masks of global steps 8..15, as the uninterrupted run did: the same final model, bit for bit.
  fs::create_directories(dir + "/resumed/checkpoints");
  fs::copy_file(dir + "/ref/checkpoints/ckpt-0000000008.h5", dir + "/resumed/checkpoints/ckpt-0000000008.h5");
  {
    Trainer t(load_config_file(run_file), run_file, local);
    t.fit(dir + "/resumed", "auto");
  }
  const std::string model_b = "model:" + yaml_section(run_file, "model:");
  auto ref = build(model_b), res = build(model_b);
  load_checkpoint(dir + "/ref/final.h5", *ref);
  load_checkpoint(dir + "/resumed/final.h5", *res);
  expect_same_weights(*ref, *res);
}

// ---- the fixtures (../shared/datasets/keras-h5) ----------------------------------------------------

std::string fixtures() {
  const char* env = std::getenv("LOCKSTEP_KERAS_FIXTURES");
  return env ? env : LOCKSTEP_KERAS_FIXTURES_DIR;
}

TEST(KerasImport, EveryFixtureIsReadOrRefusedByName) {
  const std::string dir = fixtures();
  if (!fs::exists(dir)) GTEST_SKIP() << dir << " is absent (the shared datasets are not checked out)";
  const std::map<std::string, int64_t> params = {
      {"Kuz-man__kv2.2.4-tf__my_model_A.h5", 276158},
      {"hopezh__kv2.3.0-tf__my_model_A.h5", 276158},
      {"s-samarth__kv2.3.0-tf__bn_model__my_model_A.h5", 271346},
      {"sankalptambe__kv2.4.0__my_model_A.h5", 276158},
      {"dl4j__kv2.4.0__some_loss.h5", 101770},
      {"lopezbec__kv2.6.0__grid_model.h5", 199210},
      {"TeguhPermana666__kv2.9.0__droput_alpha.h5", 266610},
      {"TeguhPermana666__kv2.9.0__droput_reguler.h5", 266610},
      {"TeguhPermana666__kv2.9.0__MCdroput_reguler.h5", 266610},
      {"r0cd7b__kv2.10.0__my_model_A.h5", 276158},
      {"d-t-n__kv2.12.0__my_model_A.h5", 276158},
      {"d-t-n__kv2.13.1__my_model_with_a_custom_metric_v2.h5", 301},
      {"joakor89__kv2.14.0__my_model_with_a_custom_loss.h5", 301},
      {"Joel-Mendez0__kv3.3.3__my_keras_model.h5", 3908},
      {"dl4j__kv2.2.4-tf__adv_act_0_elu.h5", 0},
      {"dl4j__kv2.2.4-tf__adv_act_1_leaky_relu.h5", 0},
      {"dl4j__kv2.2.4-tf__adv_act_2_prelu.h5", 6},
      {"dl4j__kv2.2.4-tf__misc_3_alpha_dropout.h5", 15},
      {"dl4j__kv2.2.4-tf__mlp_1_dense_act_dropout.h5", 24},
      {"dl4j__kv2.3.1__ELU_0_model.h5", 544},
      {"dl4j__kv2.3.1__LeakyReLU_0_model.h5", 544}};
  TempDir tmp;
  for (const auto& [file, n] : params) {
    SCOPED_TRACE(file);
    const std::string p = dir + "/" + file;
    ASSERT_TRUE(fs::exists(p));
    std::unique_ptr<Model> m;
    ASSERT_NO_THROW(m = import(p));
    EXPECT_EQ(m->total_params(), n);
    // Import then export: the weights come back bit for bit.
    const std::string out = tmp.path() + "/x.h5";
    write_keras_h5(out, *m, ConfigNode(), nullptr);
    auto back = import(out);
    expect_same_weights(*m, *back);
    EXPECT_EQ(keras_model_config(*m), keras_model_config(*back));
  }
  // Weights-only file + model.to_json().
  auto hls = import(dir + "/hls4ml__kv2.0.8__KERAS_3layer_batch_norm.json", dir + "/hls4ml__kv2.0.8__KERAS_3layer_batch_norm_weights.h5");
  EXPECT_EQ(hls->total_params(), 4921);
  // Not models: refused by name.
  for (const char* f : {"dl4j__kv2.3.1__ELU_0_inputs_and_outputs.h5", "hls4ml__kv2.0.8__KERAS_3layer_batch_norm_weights.h5"}) {
    try {
      keras_model_yaml(dir + "/" + f);
      ADD_FAILURE() << f << " was accepted";
    } catch (const UserError& e) {
      EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
    }
  }
}

TEST(KerasImport, NumericGroundTruth) {
  const std::string dir = fixtures();
  if (!fs::exists(dir)) GTEST_SKIP() << dir << " is absent";
  for (const char* stem : {"ELU_0", "LeakyReLU_0"}) {
    SCOPED_TRACE(stem);
    auto m = import(dir + "/dl4j__kv2.3.1__" + std::string(stem) + "_model.h5");
    const std::string io = dir + "/dl4j__kv2.3.1__" + std::string(stem) + "_inputs_and_outputs.h5";
    hid_t f = H5Fopen(io.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    auto read = [&](const std::string& name, Shape shape) {
      Tensor t(shape);
      hid_t d = H5Dopen2(f, name.c_str(), H5P_DEFAULT);
      EXPECT_GE(d, 0) << name;
      H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data());
      H5Dclose(d);
      return t;
    };
    Tensor x = read("inputs/dense_input", {2, 16});
    // predictions/<last layer>
    const std::string last = m->layers().back()->name();
    Tensor want = read("predictions/" + last, {2, 32});
    H5Fclose(f);
    Context ctx;
    Tensor y = m->forward(x, ctx);
    const auto a = values(y), b = values(want);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-5);
  }
}

// ---- bad input ---------------------------------------------------------------------------------------

void expect_refused(const std::function<void()>& f, const std::vector<std::string>& words) {
  try {
    f();
    ADD_FAILURE() << "accepted";
  } catch (const UserError& e) {
    for (const auto& w : words) EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what() << " lacks " << w;
  }
}

TEST(KerasImport, BadInput) {
  TempDir tmp;
  auto m = build(kSequential);
  const std::string good = tmp.path() + "/good.h5";
  write_keras_h5(good, *m, ConfigNode(), nullptr);
  // Truncated.
  const std::string cut = tmp.path() + "/cut.h5";
  {
    std::ifstream in(good, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  expect_refused([&] { auto x = import(cut); }, {"cut.h5"});
  // Not HDF5 at all.
  const std::string junk = tmp.path() + "/junk.h5";
  std::ofstream(junk) << "not an hdf5 file";
  expect_refused([&] { keras_model_yaml(junk); }, {"junk.h5", "not an HDF5 file"});
  // An HDF5 file that is not Keras's (a lockstep checkpoint is not a Keras file either).
  const std::string ck = tmp.path() + "/ck.h5";
  save_checkpoint(ck, *m, CheckpointContents{"model: {}", {}, {}, {}, {}});
  EXPECT_FALSE(is_keras_file(ck));
  expect_refused([&] { keras_model_yaml(ck); }, {"ck.h5", "not a Keras model file"});
  // A JSON with an unknown layer.
  const std::string js = tmp.path() + "/m.json";
  std::ofstream(js) << R"({"class_name": "Sequential", "config": {"name": "s", "layers": [)"
                       R"({"class_name": "InputLayer", "config": {"batch_input_shape": [null, 3], "name": "in"}},)"
                       R"({"class_name": "Conv3D", "config": {"name": "conv3d", "filters": 3}}]}})";
  expect_refused([&] { keras_model_yaml(js); }, {"m.json", "conv3d", "Conv3D"});
  // Convolutional layers with what lockstep lacks: refused by file, layer and feature.
  auto one_layer = [&](const std::string& cls, const std::string& cfg) {
    std::ofstream(js) << R"({"class_name": "Sequential", "config": {"name": "s", "layers": [)"
                         R"({"class_name": "InputLayer", "config": {"batch_input_shape": [null, 8, 8, 3], "name": "in"}},)"
                         R"({"class_name": ")" << cls << R"(", "config": {"name": "x", )" << cfg << "}}]}}";
    return [&] { keras_model_yaml(js); };
  };
  for (const auto& [cls, cfg, why] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"Conv2D", R"("filters": 2, "kernel_size": [3, 3], "data_format": "channels_first")", "channels_first"},
           {"Conv2D", R"("filters": 2, "kernel_size": [3, 3], "bias_constraint": {"class_name": "MaxNorm", "config": {}})", "bias_constraint"},
           {"Conv2D", R"("filters": 2, "kernel_size": [3, 3], "activity_regularizer": {"class_name": "L2", "config": {}})", "activity_regularizer"},
           {"Conv2D", R"("filters": 2, "kernel_size": [3, 3], "padding": "causal")", "padding causal"},
           {"Conv2D", R"("filters": 2)", "kernel_size"},
           {"DepthwiseConv2D", R"("kernel_size": [3, 3], "groups": 3)", "groups"},
           {"MaxPooling2D", R"("pool_size": [2, 2], "data_format": "channels_first")", "channels_first"},
           {"GlobalAveragePooling2D", R"("data_format": "channels_first")", "channels_first"},
           {"ZeroPadding2D", R"("padding": [1, 2, 3])", "padding"},
           {"SpatialDropout2D", R"("rate": 0.2, "noise_shape": [null, 1, 1, 3])", "noise_shape"},
           {"Conv2D", R"("filters": 2, "kernel_size": 3, "kernel_constraint": {"class_name": "MaxNorm", "config": {"max_value": 2, "axis": [0, 1, 2]}})",
            "several axes"}}) {
    SCOPED_TRACE(cls + " " + why);
    expect_refused(one_layer(cls, cfg), {"m.json", "'x'", cls, why});
  }
  // Broken JSON.
  const std::string bad = tmp.path() + "/bad.json";
  std::ofstream(bad) << "{\"class_name\": ";
  expect_refused([&] { keras_model_yaml(bad); }, {"bad.json", "not valid JSON"});
  // Weights that do not match the architecture: a layer missing, a shape differing.
  auto other = build("model:\n  input_shape: [4, 3]\n  layers:\n    - flatten: {}\n    - dense: {units: 6}\n");
  expect_refused([&] { load_keras_weights(good, *other); }, {"good.h5", "dense", "shape"});
  auto renamed = build("model:\n  input_shape: [4, 3]\n  layers:\n    - flatten: {}\n    - dense: {name: zz, units: 5}\n");
  expect_refused([&] { load_keras_weights(good, *renamed); }, {"good.h5", "zz"});
}

}  // namespace
}  // namespace lockstep
