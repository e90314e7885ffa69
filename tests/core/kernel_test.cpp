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

// Float products take libxsmm (small, one thread, no transposed B, beta 0 or 1) or OpenBLAS (the
// rest): every combination against a double reference, on both sides of the size limit.
TEST(KernelGemm, FloatProductsOnBothPathsMatchADoubleReference) {
  struct Case {
    int64_t m, n, k;
  };
  // 2^20-element weights are the libxsmm limit: 1024x1025 and a 1100-deep gradient go to OpenBLAS.
  const Case cases[] = {{32, 100, 100}, {7, 300, 784}, {33, 10, 1}, {256, 1025, 1024}, {1100, 30, 20}, {20, 30, 1100}};
  for (int threads : {1, 2}) {
    ops::set_num_threads(threads);
    for (const Case& c : cases)
      for (bool ta : {false, true})
        for (bool tb : {false, true})
          for (double beta : {0.0, 1.0, 0.5}) {
            Tensor a(ta ? Shape{c.k, c.m} : Shape{c.m, c.k}), b(tb ? Shape{c.n, c.k} : Shape{c.k, c.n});
            Tensor out({c.m, c.n});
            ops::random_normal(a, 0.0, 1.0, rng::Stream{5, 1});
            ops::random_normal(b, 0.0, 1.0, rng::Stream{5, 2});
            ops::random_normal(out, 0.0, 1.0, rng::Stream{5, 3});
            const std::vector<float> av = a.to_vector(), bv = b.to_vector(), c0 = out.to_vector();
            ops::gemm(ta, tb, 1.0, a, b, beta, out);
            const std::vector<float> got = out.to_vector();
            double worst = 0;
            for (int64_t i = 0; i < c.m; i += std::max<int64_t>(1, c.m / 9))
              for (int64_t j = 0; j < c.n; j += std::max<int64_t>(1, c.n / 11)) {
                double r = beta * c0[size_t(i * c.n + j)], mag = std::abs(r);
                for (int64_t q = 0; q < c.k; ++q) {
                  const double x = av[size_t(ta ? q * c.m + i : i * c.k + q)];
                  const double y = bv[size_t(tb ? j * c.k + q : q * c.n + j)];
                  r += x * y;
                  mag += std::abs(x * y);
                }
                worst = std::max(worst, std::abs(got[size_t(i * c.n + j)] - r) / (mag + 1e-30));
              }
            EXPECT_LT(worst, 1e-5) << c.m << "x" << c.n << "x" << c.k << " ta=" << ta << " tb=" << tb
                                   << " beta=" << beta << " threads=" << threads;
          }
  }
  ops::set_num_threads(1);
}

}  // namespace
// A prefetch is a hint: for reading or writing, on views and both dtypes, it changes no value.
TEST(KernelPrefetch, ChangesNothing) {
  const Tensor f = ramp(1000, -3, 5), d = Tensor::from_vector({7}, std::vector<double>{1, 2, 3, 4, 5, 6, 7});
  const std::vector<float> f0 = f.to_vector();
  const std::vector<double> d0 = d.to_double_vector();
  for (bool write : {false, true}) {
    ops::prefetch(f, write);
    ops::prefetch(f.view(17, {983}), write);  // to the very end of the block
    ops::prefetch(d.view(3, {4}), write);
    ops::prefetch(Tensor(), write);           // undefined: ignored
  }
  EXPECT_EQ(f.to_vector(), f0);
  EXPECT_EQ(d.to_double_vector(), d0);
}

}  // namespace lockstep
