// CPU kernels: the float exp behind ELU/SELU/sigmoid/softmax against double-precision references, and
// the threaded paths (above the parallel threshold) against the 1-thread results.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/ops.h"
#include "core/tensor.h"

namespace lockstep {
namespace {

Tensor ramp(int64_t n, double lo, double hi) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = float(lo + (hi - lo) * double(i) / double(n - 1));
  return Tensor::from_vector({n}, v);
}

// max |got - ref| / max(|ref|, floor)
template <typename Ref>
double max_rel_err(const Tensor& x, const Tensor& y, Ref ref, double floor) {
  double worst = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double r = ref(double(x.at(i)));
    worst = std::max(worst, std::abs(y.at(i) - r) / std::max(std::abs(r), floor));
  }
  return worst;
}

TEST(KernelExp, EluSeluSigmoidMatchDoubleReferences) {
  ops::set_num_threads(1);
  const Tensor x = ramp(400001, -80.0, 80.0);
  Tensor y(x.shape());
  ops::activation_forward(ops::Activation::Elu, 1.0, x, y);
  // exp(x) - 1 near 0 cancels in float whichever exp is used: absolute error against 1-sized values.
  EXPECT_LT(max_rel_err(x, y, [](double v) { return v > 0 ? v : std::expm1(v); }, 1.0), 2e-7);
  ops::activation_forward(ops::Activation::Selu, 0.0, x, y);
  EXPECT_LT(max_rel_err(x, y,
                        [](double v) { return ops::kSeluScale * (v > 0 ? v : ops::kSeluAlpha * std::expm1(v)); }, 1.0),
            4e-7);
  ops::activation_forward(ops::Activation::Sigmoid, 0.0, x, y);
  EXPECT_LT(max_rel_err(x, y, [](double v) { return 1.0 / (1.0 + std::exp(-v)); }, 1e-30), 4e-7);
  // No overflow or NaN at the extremes.
  const Tensor big = Tensor::from_vector({4}, std::vector<float>{-1e30f, -100.f, 100.f, 1e30f});
  Tensor s(big.shape());
  ops::activation_forward(ops::Activation::Sigmoid, 0.0, big, s);
  EXPECT_NEAR(s.at(0), 0.0, 1e-30);
  EXPECT_EQ(s.at(3), 1.0);
  ops::activation_forward(ops::Activation::Elu, 1.0, big, s);
  EXPECT_EQ(s.at(0), -1.0);
  EXPECT_EQ(s.at(3), 1e30f);
}

TEST(KernelExp, SoftmaxRowsMatchDoubleReference) {
  ops::set_num_threads(1);
  const int64_t rows = 50, cols = 1000;
  Tensor x({rows, cols});
  ops::random_normal(x, 0.0, 10.0, rng::Stream{7, 1});
  Tensor y(x.shape());
  ops::activation_forward(ops::Activation::Softmax, 0.0, x, y);
  double worst = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double m = -1e300, z = 0;
    for (int64_t c = 0; c < cols; ++c) m = std::max(m, x.at(r * cols + c));
    for (int64_t c = 0; c < cols; ++c) z += std::exp(x.at(r * cols + c) - m);
    for (int64_t c = 0; c < cols; ++c) {
      const double ref = std::exp(x.at(r * cols + c) - m) / z;
      if (ref > 1e-30) worst = std::max(worst, std::abs(y.at(r * cols + c) - ref) / ref);
    }
  }
  // The row sum is accumulated in float (as TF does): ~sqrt(1000) ulps over 1000 classes.
  EXPECT_LT(worst, 1e-5);
}

// Above the parallel threshold the work is split over threads in contiguous shares: elementwise
// results must equal the 1-thread results bit for bit, and sums must not depend on the run.
TEST(KernelThreads, TwoThreadsGiveTheOneThreadElementwiseResults) {
  const int64_t n = (1 << 18) + 37;
  Tensor x({n});
  ops::random_normal(x, 0.0, 3.0, rng::Stream{3, 4});
  auto run = [&](int threads) {
    ops::set_num_threads(threads);
    Tensor y(x.shape()), dx(x.shape());
    ops::activation_forward(ops::Activation::Selu, 0.0, x, y);
    ops::activation_backward(ops::Activation::Selu, 0.0, x, y, x, dx);
    ops::axpy(0.5, y, dx);
    return std::make_pair(dx.to_vector(), ops::sum_squares(dx));
  };
  auto one = run(1), two = run(2), again = run(2);
  ops::set_num_threads(1);
  EXPECT_EQ(one.first, two.first);
  EXPECT_EQ(two.second, again.second);
  EXPECT_NEAR(one.second, two.second, 1e-9 * std::abs(one.second));
}

}  // namespace
}  // namespace lockstep
