// Whole training steps on the GPU (label gpu): a small MLP with batch normalization and dropout,
// built from the same run-file text on both devices with the CPU's initial weights copied to the GPU,
// trained for a few steps on the same batches; and two GPU runs compared bit for bit.
#include <memory>
#include <string>

#include "core/config.h"
#include "core/losses.h"
#include "core/model.h"
#include "core/optimizers.h"
#include "tests/gpu/gpu_test_util.h"

namespace lockstep::gpu_test {
namespace {

const char* kMlp = R"(input_shape: [12]
layers:
  - dense: {units: 32, activation: relu}
  - batch_normalization: {}
  - dropout: {rate: 0.25}
  - dense: {units: 16, activation: tanh}
  - batch_normalization: {momentum: 0.9}
  - dense: {units: 5, activation: softmax}
)";

struct TrainRun {
  std::unique_ptr<Model> model;
  std::unique_ptr<Optimizer> opt;
  std::unique_ptr<LossFunction> loss;
  std::vector<double> losses;  // mean loss of each step
};

TrainRun make_run(Device device, const std::string& opt_yaml, const Tensor* init_weights) {
  TrainRun r;
  r.model = Model::from_config(load_config_string(kMlp, "gpu-test-model"), device, DType::F32);
  r.model->init(17);
  if (init_weights) r.model->weights_arena().copy_from(*init_weights);
  LossSpec spec;  // sparse_categorical_crossentropy
  r.loss = std::make_unique<LossFunction>(spec, fusable_output(spec, r.model->output_activation()));
  r.model->set_fused_output(r.loss->fused());
  r.opt = Optimizer::from_config(load_config_string(opt_yaml, "gpu-test-optimizer"));
  r.opt->bind(*r.model);
  return r;
}

// `steps` training steps on fixed batches (generated on the CPU, copied to the model's device).
void train(TrainRun& r, int steps) {
  const int64_t B = 24;
  const Device dev = r.model->device();
  Tensor per_sample({B}, dev), dout({B, 5}, dev);
  for (int s = 0; s < steps; ++s) {
    Tensor x = cpu_normal({B, 12}, 100 + uint64_t(s));
    std::vector<float> lab(B);
    for (int64_t i = 0; i < B; ++i) lab[size_t(i)] = float((i * 7 + s) % 5);
    Tensor y = Tensor::from_vector({B}, lab);
    Context ctx;
    ctx.training = true;
    ctx.seed = 5;
    ctx.step = s;
    ctx.global_batch = B;
    Tensor out = r.model->forward(x.to(dev), ctx);
    r.loss->compute(out, y.to(dev), per_sample, dout, 1.0 / double(B));
    r.losses.push_back(ops::sum(per_sample) / double(B));
    r.model->backward(dout, ctx);
    r.opt->apply(*r.model);
  }
}

TEST_F(Gpu, MlpTrainingStepsMatchCpu) {
  // SGD with momentum: the update is linear in the gradient, so GPU/CPU differences stay at rounding
  // level (Adam would turn the rounding noise of the BN-cancelled dense bias gradients into lr-sized
  // steps of either sign).
  const std::string opt = "{name: sgd, learning_rate: 0.05, momentum: 0.9}";
  TrainRun cpu = make_run(Device::CPU, opt, nullptr);
  Tensor w0 = cpu.model->weights_arena().clone();
  TrainRun gpu = make_run(Device::CUDA, opt, &w0);
  EXPECT_GPU_BITWISE(gpu.model->weights_arena(), w0);
  train(cpu, 4);
  train(gpu, 4);
  ASSERT_EQ(cpu.losses.size(), gpu.losses.size());
  for (size_t i = 0; i < cpu.losses.size(); ++i) EXPECT_NEAR(gpu.losses[i], cpu.losses[i], 1e-4 * (1 + cpu.losses[i])) << "step " << i;
  // weights (and BN moving statistics, which live in the same arena) after 4 steps
  EXPECT_GPU_NEAR(gpu.model->weights_arena(), cpu.model->weights_arena(), 1e-4);
  EXPECT_GPU_NEAR(gpu.model->grads_arena(), cpu.model->grads_arena(), 1e-4);
  std::printf("[ gpu      ] MLP: max rel weight diff GPU vs CPU after 4 steps: %.3g\n",
              max_rel_err(gpu.model->weights_arena(), cpu.model->weights_arena()));
  // inference forward (moving statistics, dropout off) agrees too
  Tensor x = cpu_normal({10, 12}, 999);
  Context ctx;
  Tensor oc = cpu.loss->predictions(cpu.model->forward(x, ctx));
  Tensor og = gpu.loss->predictions(gpu.model->forward(x.to(Device::CUDA), ctx));
  EXPECT_GPU_NEAR(og, oc, 1e-4);
}

TEST_F(Gpu, TrainingIsDeterministic) {
  // Adam on purpose: it amplifies any difference in rounding, so bit-identical weights after 5 steps
  // mean every kernel (cuBLAS included) computed the same bits twice.
  const std::string opt = "{name: adam, learning_rate: 0.01}";
  TrainRun a = make_run(Device::CUDA, opt, nullptr);
  TrainRun b = make_run(Device::CUDA, opt, nullptr);
  EXPECT_GPU_BITWISE(a.model->weights_arena(), b.model->weights_arena());
  train(a, 5);
  train(b, 5);
  EXPECT_EQ(a.losses, b.losses);
  EXPECT_GPU_BITWISE(a.model->weights_arena(), b.model->weights_arena());
  EXPECT_GPU_BITWISE(a.model->grads_arena(), b.model->grads_arena());
  EXPECT_GPU_BITWISE(a.opt->state()[0].second, b.opt->state()[0].second);
}

TEST_F(Gpu, InitializersOnTheDevice) {
  // Model::init on the GPU draws the same numbers as on the CPU (uniform bit for bit; normal-based
  // initializers within float rounding of the double Box-Muller).
  auto mc = Model::from_config(load_config_string(kMlp, "m"), Device::CPU, DType::F32);
  auto mg = Model::from_config(load_config_string(kMlp, "m"), Device::CUDA, DType::F32);
  mc->init(3);
  mg->init(3);
  EXPECT_GPU_NEAR(mg->weights_arena(), mc->weights_arena(), 1e-6);
}

}  // namespace
}  // namespace lockstep::gpu_test
