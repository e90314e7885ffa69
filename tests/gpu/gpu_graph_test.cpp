// A graph model (Keras Functional form) on the GPU (label gpu): two inputs, a shared Dense, every merge
// (add, subtract, multiply, average, maximum, minimum, concatenate on axis 1 and -1), Reshape, fan-out,
// BatchNormalization, Dropout and two outputs, built from the same run-file text on both devices with
// the CPU's initial weights copied to the GPU; one training forward/backward and an inference forward
// compared with the CPU's. Tolerance: |gpu - cpu| <= 1e-4 (1 + |cpu|) in float32, as
// gpu_train_test.cpp; dropout masks are drawn bit for bit alike on both devices.
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/model.h"
#include "tests/gpu/gpu_test_util.h"

namespace lockstep::gpu_test {
namespace {

const char* kGraph = R"(inputs:
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
)";

std::unique_ptr<Model> make(Device device) {
  return Model::from_config(load_config_string(kGraph, "gpu-graph-model"), device, DType::F32);
}

TEST_F(Gpu, GraphModelForwardBackwardMatchesCpu) {
  auto cpu = make(Device::CPU);
  auto gpu = make(Device::CUDA);
  cpu->init(23);
  gpu->weights_arena().copy_from(cpu->weights_arena());
  ASSERT_EQ(cpu->num_outputs(), 2);
  const int64_t B = 16;
  const std::vector<Tensor> xc = {cpu_normal({B, 3, 4}, 301), cpu_normal({B, 3, 4}, 302)};
  const std::vector<Tensor> xg = {on_gpu(xc[0]), on_gpu(xc[1])};
  Context ctx;
  ctx.training = true;
  ctx.seed = 5;
  ctx.step = 3;
  ctx.global_batch = B;
  Context cc = ctx, cg = ctx;
  std::vector<Tensor> oc, og;
  for (const Tensor& t : cpu->forward(xc, cc)) oc.push_back(t.clone());
  for (const Tensor& t : gpu->forward(xg, cg)) og.push_back(t.to(Device::CPU));
  ASSERT_EQ(oc.size(), og.size());
  for (size_t j = 0; j < oc.size(); ++j) EXPECT_GPU_NEAR(og[j], oc[j], 1e-4);
  const std::vector<Tensor> dc = {cpu_normal(oc[0].shape(), 303), cpu_normal(oc[1].shape(), 304)};
  cpu->backward(dc, cc);
  gpu->backward({on_gpu(dc[0]), on_gpu(dc[1])}, cg);
  EXPECT_GPU_NEAR(gpu->grads_arena(), cpu->grads_arena(), 1e-4);
  // The moving statistics (in the weights arena) moved alike.
  EXPECT_GPU_NEAR(gpu->weights_arena(), cpu->weights_arena(), 1e-4);
  // Inference: moving statistics, dropout off.
  Context ic, ig;
  const Tensor pc = cpu->forward(xc, ic)[0].clone();
  const Tensor pg = gpu->forward(xg, ig)[0].to(Device::CPU);
  EXPECT_GPU_NEAR(pg, pc, 1e-4);
}

TEST_F(Gpu, GraphModelIsDeterministic) {
  auto a = make(Device::CUDA);
  auto b = make(Device::CUDA);
  a->init(29);
  b->init(29);
  const std::vector<Tensor> xs = {on_gpu(cpu_normal({8, 3, 4}, 311)), on_gpu(cpu_normal({8, 3, 4}, 312))};
  Context ca, cb;
  ca.training = cb.training = true;
  ca.seed = cb.seed = 7;
  std::vector<Tensor> douts;
  for (const Tensor& t : a->forward(xs, ca)) douts.push_back(on_gpu(cpu_normal(t.shape(), 313)));
  b->forward(xs, cb);
  a->backward(douts, ca);
  b->backward(douts, cb);
  EXPECT_GPU_BITWISE(a->grads_arena(), b->grads_arena());
  EXPECT_GPU_BITWISE(a->weights_arena(), b->weights_arena());
}

}  // namespace
}  // namespace lockstep::gpu_test
