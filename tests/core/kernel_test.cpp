// CPU kernels: the float exp behind ELU/SELU/sigmoid/softmax against double-precision references, and
// the threaded paths (above the parallel threshold) against the 1-thread results.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#include "core/error.h"
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


// ---- merges: concat_block, extremum, extremum_backward against plain loops, float and double ------------
namespace {

Tensor make(const Shape& shape, const std::vector<double>& v, DType dt) {
  if (dt == DType::F64) return Tensor::from_vector(shape, v);
  return Tensor::from_vector(shape, std::vector<float>(v.begin(), v.end()));
}
std::vector<double> normal_values(int64_t n, uint64_t seed, DType dt) {
  Tensor t({n}, Device::CPU, dt);
  ops::random_normal(t, 0.0, 1.0, rng::Stream{seed, 0xC0C});
  return t.to_double_vector();
}
// Equal values, or NaN in both (the values were computed in T, so comparing as doubles is exact).
int64_t count_mismatches(const std::vector<double>& got, const std::vector<double>& want) {
  int64_t bad = std::abs(int64_t(got.size()) - int64_t(want.size()));
  for (size_t i = 0; i < got.size() && i < want.size(); ++i)
    if (!(got[i] == want[i] || (std::isnan(got[i]) && std::isnan(want[i])))) ++bad;
  return bad;
}

struct ConcatCase {
  int64_t outer;
  std::vector<int64_t> widths;  // the parts' columns, concatenated in order
  int64_t inner;                // trailing axis of the parts' shapes [outer, width, inner]
};

}  // namespace

TEST(KernelMerges, ConcatBlockMatchesALoopBothDirections) {
  const ConcatCase cases[] = {
      {1, {3, 5, 1}, 1},          // outer 1: contiguous blocks at offsets 0, 3, 8
      {1, {70001, 3}, 1},         // outer 1, above the parallel threshold
      {7, {3, 1, 5}, 1},          // odd sizes
      {5, {2, 3}, 3},             // concatenation along a middle axis of [5, w, 3]
      {13, {9}, 1},               // one part: the whole (contiguous, outer > 1)
      {4, {0, 6, 0, 1}, 1},       // empty parts
      {301, {150, 1, 270}, 1},    // rows over threads (301*421 elements)
  };
  for (int threads : {1, 2}) {
    ops::set_num_threads(threads);
    for (DType dt : {DType::F32, DType::F64})
      for (const ConcatCase& c : cases) {
        int64_t wc = 0;
        for (int64_t w : c.widths) wc += w * c.inner;
        SCOPED_TRACE(testing::Message() << "outer " << c.outer << " whole_cols " << wc << " "
                                        << dtype_name(dt) << " threads " << threads);
        const Shape whole_shape{c.outer, wc / c.inner, c.inner};
        // Forward: each part into a whole filled with a sentinel; columns not yet written keep it.
        Tensor whole = Tensor::full(whole_shape, -77.0, Device::CPU, dt);
        std::vector<double> want(size_t(c.outer * wc), -77.0);
        std::vector<Tensor> parts;
        int64_t off = 0;
        uint64_t seed = 100;
        for (int64_t w : c.widths) {
          const int64_t pc = w * c.inner;
          const std::vector<double> pv = normal_values(c.outer * pc, seed++, dt);
          parts.push_back(make({c.outer, w, c.inner}, pv, dt));
          ops::concat_block(parts.back(), whole, c.outer, off, true);
          for (int64_t r = 0; r < c.outer; ++r)
            for (int64_t j = 0; j < pc; ++j) want[size_t(r * wc + off + j)] = pv[size_t(r * pc + j)];
          EXPECT_EQ(count_mismatches(whole.to_double_vector(), want), 0) << "after the part at " << off;
          off += pc;
        }
        // Backward: slice each part back out of a fresh whole.
        const std::vector<double> wv = normal_values(c.outer * wc, 999, dt);
        const Tensor src = make(whole_shape, wv, dt);
        off = 0;
        for (const Tensor& p : parts) {
          const int64_t pc = p.numel() / c.outer;
          Tensor got = Tensor::full(p.shape(), -77.0, Device::CPU, dt);
          ops::concat_block(got, src, c.outer, off, false);
          std::vector<double> ref(size_t(p.numel()));
          for (int64_t r = 0; r < c.outer; ++r)
            for (int64_t j = 0; j < pc; ++j) ref[size_t(r * pc + j)] = wv[size_t(r * wc + off + j)];
          EXPECT_EQ(count_mismatches(got.to_double_vector(), ref), 0) << "slice at " << off;
          EXPECT_EQ(count_mismatches(src.to_double_vector(), wv), 0) << "the whole must stay unchanged";
          off += pc;
        }
      }
  }
  ops::set_num_threads(1);
}

TEST(KernelMerges, ConcatBlockRejectsBadViews) {
  Tensor whole({4, 6}), part({4, 2}), part_d({4, 2}, Device::CPU, DType::F64);
  EXPECT_NO_THROW(ops::concat_block(part, whole, 4, 4, true));    // the last two columns
  EXPECT_THROW(ops::concat_block(part, whole, 4, 5, true), Error);   // past the row's end
  EXPECT_THROW(ops::concat_block(part, whole, 4, -1, false), Error);
  EXPECT_THROW(ops::concat_block(part, whole, 0, 0, true), Error);   // no rows
  EXPECT_THROW(ops::concat_block(part, whole, 3, 0, true), Error);   // 3 does not divide 24 or 8
  EXPECT_THROW(ops::concat_block(Tensor({5}), whole, 4, 0, true), Error);
  EXPECT_THROW(ops::concat_block(part_d, whole, 4, 0, true), Error);  // dtypes differ
  EXPECT_THROW(ops::concat_block(Tensor(), whole, 4, 0, true), Error);
}

TEST(KernelMerges, ExtremumMatchesALoop) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  for (int threads : {1, 2})
    for (int64_t n : {int64_t(1), int64_t(1001), int64_t(1 << 17) + 3}) {
      ops::set_num_threads(threads);
      for (DType dt : {DType::F32, DType::F64})
        for (bool is_max : {true, false}) {
          SCOPED_TRACE(testing::Message() << "n " << n << " " << dtype_name(dt) << (is_max ? " max" : " min")
                                          << " threads " << threads);
          std::vector<double> av = normal_values(n, 1, dt), bv = normal_values(n, 2, dt);
          for (int64_t i = 0; i < n; i += 5) bv[size_t(i)] = av[size_t(i)];  // ties
          if (n > 20) {  // NaNs and infinities on either side, and both
            av[3] = nan;
            bv[4] = nan;
            av[6] = bv[6] = nan;
            av[7] = inf;
            bv[8] = -inf;
            av[9] = -0.0;
            bv[9] = 0.0;
          }
          std::vector<double> want(static_cast<size_t>(n));
          for (size_t i = 0; i < want.size(); ++i) {
            const bool pick_a = is_max ? av[i] >= bv[i] : av[i] <= bv[i];
            want[i] = pick_a ? av[i] : bv[i];
          }
          const Tensor a = make({n}, av, dt), b = make({n}, bv, dt);
          Tensor out({n}, Device::CPU, dt);
          ops::extremum(is_max, a, b, out);
          EXPECT_EQ(count_mismatches(out.to_double_vector(), want), 0);
          if (n > 20) {
            const std::vector<double> o = out.to_double_vector();
            EXPECT_TRUE(std::isnan(o[3]) == false && o[3] == bv[3]) << "NaN in a alone gives b";
            EXPECT_TRUE(std::isnan(o[4]) && std::isnan(o[6])) << "NaN in b gives NaN";
            EXPECT_TRUE(std::signbit(o[9])) << "a tie of -0 and +0 gives a";
          }
          // out aliasing a, then b
          Tensor a2 = a.clone(), b2 = b.clone();
          ops::extremum(is_max, a2, b, a2);
          ops::extremum(is_max, a, b2, b2);
          EXPECT_EQ(count_mismatches(a2.to_double_vector(), want), 0);
          EXPECT_EQ(count_mismatches(b2.to_double_vector(), want), 0);
        }
    }
  ops::set_num_threads(1);
  EXPECT_THROW(ops::extremum(true, Tensor({3}), Tensor({4}), Tensor({3})), Error);
  EXPECT_THROW(ops::extremum(true, Tensor({3}), Tensor({3}), Tensor({3}, Device::CPU, DType::F64)), Error);
}

TEST(KernelMerges, ExtremumBackwardTiesGoToA) {
  // Hand-checked: a = [1, 2, 3, 5], b = [1, 3, 2, 5] (ties at 0 and 3), dy = [10, 20, 30, 40].
  {
    const Tensor a = Tensor::from_vector({4}, std::vector<float>{1, 2, 3, 5});
    const Tensor b = Tensor::from_vector({4}, std::vector<float>{1, 3, 2, 5});
    const Tensor dy = Tensor::from_vector({4}, std::vector<float>{10, 20, 30, 40});
    Tensor da({4}), db({4});
    ops::extremum_backward(true, a, b, dy, da, db);
    EXPECT_EQ(da.to_vector(), (std::vector<float>{10, 0, 30, 40}));
    EXPECT_EQ(db.to_vector(), (std::vector<float>{0, 20, 0, 0}));
    ops::extremum_backward(false, a, b, dy, da, db);
    EXPECT_EQ(da.to_vector(), (std::vector<float>{10, 20, 0, 40}));
    EXPECT_EQ(db.to_vector(), (std::vector<float>{0, 0, 30, 0}));
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (int threads : {1, 2})
    for (int64_t n : {int64_t(1), int64_t(777), int64_t(1 << 17) + 5}) {
      ops::set_num_threads(threads);
      for (DType dt : {DType::F32, DType::F64})
        for (bool is_max : {true, false}) {
          SCOPED_TRACE(testing::Message() << "n " << n << " " << dtype_name(dt) << (is_max ? " max" : " min")
                                          << " threads " << threads);
          std::vector<double> av = normal_values(n, 3, dt), bv = normal_values(n, 4, dt);
          const std::vector<double> dyv = normal_values(n, 5, dt);
          for (int64_t i = 0; i < n; i += 3) bv[size_t(i)] = av[size_t(i)];  // ties
          if (n > 20) {
            av[4] = nan;
            bv[5] = nan;
          }
          std::vector<double> want_da(static_cast<size_t>(n)), want_db(static_cast<size_t>(n));
          for (size_t i = 0; i < want_da.size(); ++i) {
            const bool pick_a = is_max ? av[i] >= bv[i] : av[i] <= bv[i];
            want_da[i] = pick_a ? dyv[i] : 0.0;
            want_db[i] = pick_a ? 0.0 : dyv[i];
          }
          const Tensor a = make({n}, av, dt), b = make({n}, bv, dt), dy = make({n}, dyv, dt);
          for (int which = 0; which < 3; ++which) {  // both, da only, db only
            Tensor da = Tensor::full({n}, -5.0, Device::CPU, dt), db = Tensor::full({n}, -5.0, Device::CPU, dt);
            ops::extremum_backward(is_max, a, b, dy, which == 2 ? Tensor() : da, which == 1 ? Tensor() : db);
            const std::vector<double> untouched(size_t(n), -5.0);
            EXPECT_EQ(count_mismatches(da.to_double_vector(), which == 2 ? untouched : want_da), 0) << which;
            EXPECT_EQ(count_mismatches(db.to_double_vector(), which == 1 ? untouched : want_db), 0) << which;
          }
          // Neither gradient wanted: nothing to do, no error.
          EXPECT_NO_THROW(ops::extremum_backward(is_max, a, b, dy, Tensor(), Tensor()));
        }
    }
  ops::set_num_threads(1);
  const Tensor a({6}), b({6}), dy({6});
  Tensor da({6}), db({6});
  ops::fill(a, 1.0);
  ops::fill(b, 2.0);
  ops::fill(dy, 3.0);
  EXPECT_THROW(ops::extremum_backward(true, a, b, dy, dy, db), Error);  // da aliases dy
  EXPECT_THROW(ops::extremum_backward(true, a, b, dy, da, b), Error);   // db aliases b
  EXPECT_THROW(ops::extremum_backward(true, a, b, dy, da, da), Error);  // da aliases db
  EXPECT_THROW(ops::extremum_backward(true, a, b, Tensor({5}), da, db), Error);
  EXPECT_THROW(ops::extremum_backward(true, a, b, dy, Tensor({5}), db), Error);
}

}  // namespace lockstep
