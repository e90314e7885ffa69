// Helpers of the GPU tests: every CUDA op is run on the same random inputs as the CPU op and compared,
// either bit for bit (where the kernels promise it: masks, random fills, pure IEEE arithmetic) or
// within a stated tolerance |gpu - cpu| <= tol * (1 + |cpu|).
//
// Without a CUDA device (or in a build without the CUDA backend) every test skips with the reason.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/ops.h"
#include "core/tensor.h"

namespace lockstep::gpu_test {

inline const char* no_gpu_reason() {
#ifdef LOCKSTEP_HAVE_CUDA
  return "no CUDA device: cuda_available() is false (no GPU, no driver, or CUDA_VISIBLE_DEVICES hides them)";
#else
  return "no CUDA device: this lockstep was built without the CUDA backend (LOCKSTEP_CUDA=OFF or no toolkit)";
#endif
}

// Fixture of every test that needs a GPU.
class Gpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << no_gpu_reason();
  }
};

inline Tensor cpu_uniform(const Shape& shape, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Tensor t(shape, Device::CPU, DType::F32);
  ops::random_uniform(t, lo, hi, rng::Stream{seed, 0x5EED});
  return t;
}
inline Tensor cpu_normal(const Shape& shape, uint64_t seed, double sd = 1.0) {
  Tensor t(shape, Device::CPU, DType::F32);
  ops::random_normal(t, 0.0, sd, rng::Stream{seed, 0x5EEE});
  return t;
}
inline Tensor on_gpu(const Tensor& t) { return t.to(Device::CUDA); }

// Largest |g - c| / (1 + |c|); NaNs must sit at the same places.
inline double max_rel_err(const Tensor& gpu, const Tensor& cpu) {
  EXPECT_EQ(gpu.numel(), cpu.numel());
  std::vector<double> g = gpu.to_double_vector(), c = cpu.to_double_vector();
  double m = 0;
  for (size_t i = 0; i < g.size() && i < c.size(); ++i) {
    if (std::isnan(c[i]) || std::isnan(g[i])) {
      if (std::isnan(c[i]) != std::isnan(g[i])) return INFINITY;
      continue;
    }
    if (std::isinf(c[i]) || std::isinf(g[i])) {
      if (c[i] != g[i]) return INFINITY;
      continue;
    }
    m = std::max(m, std::abs(g[i] - c[i]) / (1.0 + std::abs(c[i])));
  }
  return m;
}
// Elements whose bits differ (float32 or float64 tensors; compared as doubles, which is exact).
inline int64_t count_different(const Tensor& gpu, const Tensor& cpu) {
  std::vector<double> g = gpu.to_double_vector(), c = cpu.to_double_vector();
  int64_t n = 0;
  for (size_t i = 0; i < g.size() && i < c.size(); ++i)
    if (!(g[i] == c[i] || (std::isnan(g[i]) && std::isnan(c[i])))) ++n;
  return n + int64_t(g.size() > c.size() ? g.size() - c.size() : c.size() - g.size());
}

#define EXPECT_GPU_NEAR(gpu, cpu, tol)                                                                 \
  do {                                                                                                 \
    const double ls_err_ = ::lockstep::gpu_test::max_rel_err((gpu), (cpu));                            \
    EXPECT_LE(ls_err_, (tol)) << #gpu " vs " #cpu ": max |gpu-cpu|/(1+|cpu|) = " << ls_err_;            \
  } while (0)
#define EXPECT_GPU_BITWISE(gpu, cpu)                                                                   \
  do {                                                                                                 \
    EXPECT_EQ(::lockstep::gpu_test::count_different((gpu), (cpu)), 0) << #gpu " vs " #cpu ": elements " \
                                                                         "differ in their bits";        \
  } while (0)

}  // namespace lockstep::gpu_test
