// Every CUDA op against the CPU op on the same random inputs (label gpu).
//
// Tolerances: kernels that are pure IEEE arithmetic in the CPU's order are expected bit for bit
// (EXPECT_GPU_BITWISE: dropout/RReLU masks, uniform fills, elementwise arithmetic); kernels that call
// exp/log/tanh (CUDA's libm differs from glibc by a few ulps) are held to 1e-5 relative; sgemm
// (cuBLAS vs OpenBLAS summation order) to 2e-5; float64 reductions to 1e-10 of the sum of magnitudes; the batch-norm and
// optimizer kernels, designed to be bit-identical, are held to 1e-6 and their bit differences counted.
#include <limits>

#include "core/error.h"
#include "tests/gpu/gpu_test_util.h"
#ifdef LOCKSTEP_HAVE_CUDA
#include "core/kernels/cuda.h"
#endif

namespace lockstep::gpu_test {
namespace {

constexpr double kLibmTol = 1e-5;
constexpr double kGemmTol = 2e-5;
constexpr double kTightTol = 1e-6;

// ---- runtime (these run everywhere: they check the no-GPU behaviour too) ------------------------------
TEST(GpuRuntime, AvailabilityQueryNeverThrows) {
  bool a = false;
  EXPECT_NO_THROW(a = cuda_available());
  std::printf("[ gpu      ] cuda_available() = %s%s\n", a ? "true" : "false", a ? "" : " -> GPU tests skip");
  if (!a) {
    // Without a device, asking for CUDA memory is an error, never a crash.
    EXPECT_THROW((void)Tensor(Shape{4}, Device::CUDA), Error);
  }
}

TEST_F(Gpu, PoolReusesBlocksWithoutNewMallocs) {
#ifdef LOCKSTEP_HAVE_CUDA
  for (int i = 0; i < 3; ++i) {
    Tensor a({1000}, Device::CUDA), b({3, 7}, Device::CUDA), c({1 << 21}, Device::CUDA);
  }
  const int64_t before = cuda::pool_malloc_count();
  for (int i = 0; i < 10; ++i) {
    Tensor a({1000}, Device::CUDA), b({3, 7}, Device::CUDA), c({1 << 21}, Device::CUDA);
    ops::fill(c, 1.0);
  }
  EXPECT_EQ(cuda::pool_malloc_count(), before) << "the steady state must not call cudaMalloc";
  EXPECT_GT(cuda::pool_cached_bytes(), 0);
#endif
}

TEST_F(Gpu, CopiesRoundTrip) {
  Tensor c = cpu_uniform({5, 7}, 1);
  Tensor g = on_gpu(c);
  EXPECT_EQ(g.device(), Device::CUDA);
  EXPECT_GPU_BITWISE(g, c);
  Tensor g2 = g.clone();
  EXPECT_GPU_BITWISE(g2, c);
  Tensor d = Tensor::from_vector({3}, std::vector<double>{1.5, -2.0, 3.25});
  Tensor dg = d.to(Device::CUDA);  // float64 on the device: copies work, ops do not
  EXPECT_GPU_BITWISE(dg, d);
}

// ---- elementwise and reductions --------------------------------------------------------------------
TEST_F(Gpu, Elementwise) {
  const Shape s{1000, 3};
  Tensor x = cpu_uniform(s, 2), y = cpu_uniform(s, 3);
  Tensor gx = on_gpu(x), gy = on_gpu(y);
  ops::fill(x, 0.75);
  ops::fill(gx, 0.75);
  EXPECT_GPU_BITWISE(gx, x);
  x = cpu_uniform(s, 2);
  gx = on_gpu(x);
  ops::scale(x, -1.3);
  ops::scale(gx, -1.3);
  EXPECT_GPU_BITWISE(gx, x);
  for (double b : {0.0, 1.0, 0.37}) {
    ops::axpby(0.5, x, b, y);
    ops::axpby(0.5, gx, b, gy);
    EXPECT_GPU_BITWISE(gy, y);
  }
  ops::axpy(-2.0, x, y);
  ops::axpy(-2.0, gx, gy);
  EXPECT_GPU_BITWISE(gy, y);
  Tensor o(s), go(s, Device::CUDA);
  ops::mul(x, y, o);
  ops::mul(gx, gy, go);
  EXPECT_GPU_BITWISE(go, o);
  ops::clip_by_value(o, -0.2, 0.3);
  ops::clip_by_value(go, -0.2, 0.3);
  EXPECT_GPU_BITWISE(go, o);
  Tensor o2(s), go2(s, Device::CUDA);
  ops::copy(o, o2);
  ops::copy(go, go2);
  EXPECT_GPU_BITWISE(go2, o2);
}

TEST_F(Gpu, Reductions) {
  for (int64_t n : {int64_t(1), int64_t(255), int64_t(257), int64_t(100000), int64_t(1 << 20) + 3}) {
    Tensor x = cpu_normal({n}, 4), y = cpu_normal({n}, 5);
    Tensor gx = on_gpu(x), gy = on_gpu(y);
    EXPECT_NEAR(ops::sum(gx), ops::sum(x), 1e-10 * (1 + ops::sum_abs(x))) << n;
    EXPECT_NEAR(ops::sum_squares(gx), ops::sum_squares(x), 1e-10 * (1 + ops::sum_squares(x))) << n;
    EXPECT_NEAR(ops::sum_abs(gx), ops::sum_abs(x), 1e-10 * (1 + ops::sum_abs(x))) << n;
    EXPECT_EQ(ops::max_abs_diff(gx, gy), ops::max_abs_diff(x, y)) << n;  // a max is order-free
    EXPECT_TRUE(ops::all_finite(gx));
    // deterministic: the same bits twice
    EXPECT_EQ(ops::sum(gx), ops::sum(gx));
  }
  Tensor x = cpu_normal({1000}, 6);
  std::vector<float> v = x.to_vector();
  v[517] = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(ops::all_finite(Tensor::from_vector({1000}, v, Device::CUDA)));
  v[517] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(ops::all_finite(Tensor::from_vector({1000}, v, Device::CUDA)));
  EXPECT_EQ(ops::sum(Tensor({0}, Device::CUDA)), 0.0);
}

// ---- merges --------------------------------------------------------------------------------------------
// Concatenate / Maximum / Minimum: pure copies and comparisons, so bit for bit.
TEST_F(Gpu, ConcatBlockBitwise) {
  struct Case {
    int64_t outer;
    std::vector<int64_t> cols;  // the parts' columns, in order
  };
  const Case cases[] = {{1, {3, 5, 1}}, {7, {3, 1, 5}}, {33, {17}}, {4, {0, 6, 0, 1}}, {301, {150, 1, 270}},
                        {1, {100003, 2}}};
  for (const Case& c : cases) {
    int64_t wc = 0;
    for (int64_t k : c.cols) wc += k;
    SCOPED_TRACE(testing::Message() << "outer " << c.outer << " whole_cols " << wc);
    Tensor whole = Tensor::full({c.outer, wc}, -7.0), gwhole = Tensor::full({c.outer, wc}, -7.0, Device::CUDA);
    Tensor src = cpu_normal({c.outer, wc}, 70), gsrc = on_gpu(src);
    int64_t off = 0;
    uint64_t seed = 71;
    for (int64_t k : c.cols) {
      Tensor part = cpu_normal({c.outer, k}, seed++);
      ops::concat_block(part, whole, c.outer, off, true);
      ops::concat_block(on_gpu(part), gwhole, c.outer, off, true);
      EXPECT_GPU_BITWISE(gwhole, whole);  // columns not yet written keep -7 on both
      Tensor back = Tensor::full({c.outer, k}, -7.0), gback = Tensor::full({c.outer, k}, -7.0, Device::CUDA);
      ops::concat_block(back, src, c.outer, off, false);
      ops::concat_block(gback, gsrc, c.outer, off, false);
      EXPECT_GPU_BITWISE(gback, back);
      off += k;
    }
    EXPECT_GPU_BITWISE(gsrc, src);  // the slice's source stays unchanged
  }
}

TEST_F(Gpu, ExtremumForwardBackwardBitwise) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (int64_t n : {int64_t(1), int64_t(1001), int64_t(100003)}) {
    std::vector<float> av = cpu_normal({n}, 80).to_vector(), bv = cpu_normal({n}, 81).to_vector();
    for (int64_t i = 0; i < n; i += 4) bv[size_t(i)] = av[size_t(i)];  // ties
    if (n > 20) {  // NaN in a, in b, in both; infinities; a tie of -0 and +0
      av[1] = nan;
      bv[2] = nan;
      av[3] = bv[3] = nan;
      av[5] = inf;
      bv[6] = -inf;
      av[9] = -0.0f;
      bv[9] = 0.0f;
    }
    const Tensor a = Tensor::from_vector({n}, av), b = Tensor::from_vector({n}, bv), dy = cpu_normal({n}, 82);
    const Tensor ga = on_gpu(a), gb = on_gpu(b), gdy = on_gpu(dy);
    for (bool is_max : {true, false}) {
      SCOPED_TRACE(testing::Message() << "n " << n << (is_max ? " max" : " min"));
      Tensor out({n}), gout({n}, Device::CUDA);
      ops::extremum(is_max, a, b, out);
      ops::extremum(is_max, ga, gb, gout);
      EXPECT_GPU_BITWISE(gout, out);
      if (n > 20) {  // compared as doubles, -0 == +0: check the sign of the tie's result
        EXPECT_TRUE(std::signbit(gout.to_vector()[9])) << "a tie of -0 and +0 gives a";
      }
      // in place: out aliases a
      Tensor ga2 = on_gpu(a);
      ops::extremum(is_max, ga2, gb, ga2);
      EXPECT_GPU_BITWISE(ga2, out);
      for (int which = 0; which < 3; ++which) {  // both gradients, da only, db only
        Tensor da = Tensor::full({n}, -3.0), db = Tensor::full({n}, -3.0);
        Tensor gda = Tensor::full({n}, -3.0, Device::CUDA), gdb = Tensor::full({n}, -3.0, Device::CUDA);
        ops::extremum_backward(is_max, a, b, dy, which == 2 ? Tensor() : da, which == 1 ? Tensor() : db);
        ops::extremum_backward(is_max, ga, gb, gdy, which == 2 ? Tensor() : gda, which == 1 ? Tensor() : gdb);
        EXPECT_GPU_BITWISE(gda, da);
        EXPECT_GPU_BITWISE(gdb, db);
      }
    }
  }
}

// ---- products ----------------------------------------------------------------------------------------
TEST_F(Gpu, GemmAllTransposes) {
  const int64_t m = 37, n = 19, k = 23;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      Tensor a = ta ? cpu_uniform({k, m}, 7) : cpu_uniform({m, k}, 7);
      Tensor b = tb ? cpu_uniform({n, k}, 8) : cpu_uniform({k, n}, 8);
      Tensor c = cpu_uniform({m, n}, 9), gc = on_gpu(c);
      ops::gemm(ta, tb, 0.7, a, b, 0.4, c);
      ops::gemm(ta, tb, 0.7, on_gpu(a), on_gpu(b), 0.4, gc);
      EXPECT_GPU_NEAR(gc, c, kGemmTol);
      // beta = 0 must ignore C's contents (NaN included)
      Tensor c0 = Tensor::full({m, n}, NAN), gc0 = Tensor::full({m, n}, NAN, Device::CUDA);
      ops::gemm(ta, tb, 1.0, a, b, 0.0, c0);
      ops::gemm(ta, tb, 1.0, on_gpu(a), on_gpu(b), 0.0, gc0);
      EXPECT_GPU_NEAR(gc0, c0, kGemmTol);
    }
  // k = 0: C = beta*C
  Tensor a({4, 0}), b({0, 3}), c = cpu_uniform({4, 3}, 10), gc = on_gpu(c);
  ops::gemm(false, false, 1.0, a, b, 0.5, c);
  ops::gemm(false, false, 1.0, on_gpu(a), on_gpu(b), 0.5, gc);
  EXPECT_GPU_BITWISE(gc, c);
}

TEST_F(Gpu, BiasAddAndGrad) {
  Tensor y = cpu_uniform({33, 10}, 11), b = cpu_uniform({10}, 12);
  Tensor gy = on_gpu(y);
  ops::bias_add(y, b);
  ops::bias_add(gy, on_gpu(b));
  EXPECT_GPU_BITWISE(gy, y);
  for (double beta : {0.0, 0.5}) {
    Tensor db = cpu_uniform({10}, 13), gdb = on_gpu(db);
    ops::bias_grad(y, db, beta);
    ops::bias_grad(gy, gdb, beta);
    EXPECT_GPU_BITWISE(gdb, db);
  }
}

// ---- activations ---------------------------------------------------------------------------------------
TEST_F(Gpu, ActivationsForwardBackward) {
  using A = ops::Activation;
  const A all[] = {A::Linear, A::Sigmoid, A::Tanh, A::Relu, A::LeakyRelu, A::Elu,
                   A::Selu,   A::Softmax, A::Softplus, A::Softsign, A::Swish};
  for (A act : all) {
    SCOPED_TRACE(int(act));
    Tensor x = cpu_normal({13, 7}, 14, 3.0), dy = cpu_normal({13, 7}, 15);
    Tensor y(x.shape()), dx(x.shape());
    Tensor gx = on_gpu(x), gdy = on_gpu(dy), gy(x.shape(), Device::CUDA), gdx(x.shape(), Device::CUDA);
    ops::activation_forward(act, 0.3, x, y);
    ops::activation_forward(act, 0.3, gx, gy);
    EXPECT_GPU_NEAR(gy, y, kLibmTol);
    // backward from the CPU's y on both sides, so only the backward kernel is compared
    Tensor gyc = on_gpu(y);
    ops::activation_backward(act, 0.3, x, y, dy, dx);
    ops::activation_backward(act, 0.3, gx, gyc, gdy, gdx);
    EXPECT_GPU_NEAR(gdx, dx, kLibmTol);
    // in place (y aliases x; dx aliases dy), as the layers use them
    Tensor x2 = x.clone(), gx2 = on_gpu(x);
    ops::activation_forward(act, 0.3, x2, x2);
    ops::activation_forward(act, 0.3, gx2, gx2);
    EXPECT_GPU_NEAR(gx2, x2, kLibmTol);
  }
}

TEST_F(Gpu, PReLU) {
  // x [B=5, 4, 3]; alpha shared over axis 1 (stride 0) and unshared.
  for (bool shared : {true, false}) {
    ops::Broadcast map;
    map.nd = 2;
    map.dims[0] = 4;
    map.dims[1] = 3;
    map.stride[0] = shared ? 0 : 3;
    map.stride[1] = 1;
    const int64_t na = shared ? 3 : 12;
    Tensor x = cpu_normal({5, 4, 3}, 16), alpha = cpu_uniform({na}, 17, 0.0, 0.5), dy = cpu_normal({5, 4, 3}, 18);
    Tensor y(x.shape()), dx(x.shape()), da({na});
    Tensor gy(x.shape(), Device::CUDA), gdx(x.shape(), Device::CUDA), gda({na}, Device::CUDA);
    ops::prelu_forward(x, alpha, map, y);
    ops::prelu_forward(on_gpu(x), on_gpu(alpha), map, gy);
    EXPECT_GPU_BITWISE(gy, y);
    ops::prelu_backward(x, alpha, map, dy, dx, da);
    ops::prelu_backward(on_gpu(x), on_gpu(alpha), map, on_gpu(dy), gdx, gda);
    EXPECT_GPU_BITWISE(gdx, dx);
    EXPECT_GPU_BITWISE(gda, da);
  }
}

TEST_F(Gpu, RReLUSlopesBitwise) {
  const int64_t n = 4099;  // not a multiple of 4: the last Philox block is partial
  Tensor x = cpu_normal({n}, 19), dy = cpu_normal({n}, 20);
  Tensor sl({n}), y({n}), dx({n});
  Tensor gsl({n}, Device::CUDA), gy({n}, Device::CUDA), gdx({n}, Device::CUDA);
  const rng::Stream s{123, 456};
  ops::rrelu_forward_train(x, 0.125, 0.333, s, sl, y);
  ops::rrelu_forward_train(on_gpu(x), 0.125, 0.333, s, gsl, gy);
  EXPECT_GPU_BITWISE(gsl, sl);
  EXPECT_GPU_BITWISE(gy, y);
  ops::rrelu_backward(x, sl, dy, dx);
  ops::rrelu_backward(on_gpu(x), gsl, on_gpu(dy), gdx);
  EXPECT_GPU_BITWISE(gdx, dx);
}

// ---- dropout -------------------------------------------------------------------------------------------
TEST_F(Gpu, DropoutMasksBitwise) {
  for (int64_t n : {int64_t(1), int64_t(7), int64_t(100003)}) {
    for (double rate : {0.1, 0.5}) {
      Tensor x = cpu_normal({n}, 21);
      Tensor m({n}), y({n}), gm({n}, Device::CUDA), gy({n}, Device::CUDA);
      const rng::Stream s{99, rng::mix(5, 6)};
      ops::dropout_forward(x, rate, s, m, y);
      ops::dropout_forward(on_gpu(x), rate, s, gm, gy);
      EXPECT_GPU_BITWISE(gm, m);
      EXPECT_GPU_BITWISE(gy, y);
      ops::alpha_dropout_forward(x, rate, s, m, y);
      ops::alpha_dropout_forward(on_gpu(x), rate, s, gm, gy);
      EXPECT_GPU_BITWISE(gm, m);
      EXPECT_GPU_BITWISE(gy, y);
    }
  }
}

// ---- batch normalization -------------------------------------------------------------------------------
TEST_F(Gpu, BatchNorm) {
  struct Case {
    Shape shape;
    int axis;
  };
  for (const Case& cs : {Case{{32, 8}, 1}, Case{{6, 5, 4}, 1}, Case{{3, 4, 5, 6}, -1}}) {
    SCOPED_TRACE(shape_str(cs.shape));
    const ops::FeatureView v = ops::feature_view(cs.shape, cs.axis);
    const int64_t C = v.channels;
    const double eps = 1e-3, count = double(v.count());
    Tensor x = cpu_normal(cs.shape, 22, 2.0), dy = cpu_normal(cs.shape, 23);
    Tensor gamma = cpu_uniform({C}, 24, 0.5, 1.5), beta = cpu_uniform({C}, 25);
    Tensor gx = on_gpu(x), gdy = on_gpu(dy), ggamma = on_gpu(gamma), gbeta = on_gpu(beta);

    Tensor st({2 * C}, Device::CPU, DType::F64), gst({2 * C}, Device::CUDA, DType::F64);
    ops::bn_sums(x, v, st);
    ops::bn_sums(gx, v, gst);
    EXPECT_GPU_NEAR(gst, st, 1e-14);
    EXPECT_EQ(count_different(gst, st), 0) << "bn_sums: the CPU's float64 order was meant to be kept";

    Tensor mean({C}), var({C}), gmean({C}, Device::CUDA), gvar({C}, Device::CUDA);
    ops::bn_moments(st, count, mean, var);
    ops::bn_moments(on_gpu(st), count, gmean, gvar);
    EXPECT_GPU_BITWISE(gmean, mean);
    EXPECT_GPU_BITWISE(gvar, var);

    for (bool affine : {true, false}) {
      Tensor y(cs.shape), gy(cs.shape, Device::CUDA);
      ops::bn_apply(x, v, mean, var, affine ? gamma : Tensor(), affine ? beta : Tensor(), eps, y);
      ops::bn_apply(gx, v, gmean, gvar, affine ? ggamma : Tensor(), affine ? gbeta : Tensor(), eps, gy);
      EXPECT_GPU_NEAR(gy, y, kTightTol);
      EXPECT_EQ(count_different(gy, y), 0) << "bn_apply bits";
    }

    Tensor mv = cpu_uniform({C}, 26), gmv = on_gpu(mv);
    ops::bn_update_moving(mv, mean, 0.99);
    ops::bn_update_moving(gmv, gmean, 0.99);
    EXPECT_GPU_BITWISE(gmv, mv);

    Tensor sums({2 * C}, Device::CPU, DType::F64), gsums({2 * C}, Device::CUDA, DType::F64);
    ops::bn_backward_sums(dy, x, v, mean, var, eps, sums);
    ops::bn_backward_sums(gdy, gx, v, gmean, gvar, eps, gsums);
    EXPECT_GPU_NEAR(gsums, sums, 1e-14);
    EXPECT_EQ(count_different(gsums, sums), 0) << "bn_backward_sums bits";

    for (bool affine : {true, false}) {
      Tensor dx(cs.shape), gdx(cs.shape, Device::CUDA);
      ops::bn_backward_apply(dy, x, v, mean, var, affine ? gamma : Tensor(), eps, sums, count, dx);
      ops::bn_backward_apply(gdy, gx, v, gmean, gvar, affine ? ggamma : Tensor(), eps, on_gpu(sums), count, gdx);
      EXPECT_GPU_NEAR(gdx, dx, kTightTol);
      EXPECT_EQ(count_different(gdx, dx), 0) << "bn_backward_apply bits";
      ops::bn_backward_inference(dy, v, var, affine ? gamma : Tensor(), eps, dx);
      ops::bn_backward_inference(gdy, v, gvar, affine ? ggamma : Tensor(), eps, gdx);
      EXPECT_GPU_BITWISE(gdx, dx);
    }

    // A ReLU absorbed (Layer::absorb_relu): bn_apply's relu and the backward ops gated by its output.
    {
      Tensor y(cs.shape), gy(cs.shape, Device::CUDA);
      ops::bn_apply(x, v, mean, var, gamma, beta, eps, y, true);
      ops::bn_apply(gx, v, gmean, gvar, ggamma, gbeta, eps, gy, true);
      EXPECT_EQ(count_different(gy, y), 0) << "bn_apply with relu bits";
      Tensor rs({2 * C}, Device::CPU, DType::F64), grs({2 * C}, Device::CUDA, DType::F64);
      ops::bn_backward_sums(dy, x, v, mean, var, eps, rs, y);
      ops::bn_backward_sums(gdy, gx, v, gmean, gvar, eps, grs, gy);
      EXPECT_EQ(count_different(grs, rs), 0) << "gated bn_backward_sums bits";
      Tensor dx(cs.shape), gdx(cs.shape, Device::CUDA);
      ops::bn_backward_apply(dy, x, v, mean, var, gamma, eps, rs, count, dx, y);
      ops::bn_backward_apply(gdy, gx, v, gmean, gvar, ggamma, eps, on_gpu(rs), count, gdx, gy);
      EXPECT_EQ(count_different(gdx, dx), 0) << "gated bn_backward_apply bits";
      ops::bn_backward_inference(dy, v, var, gamma, eps, dx, y);
      ops::bn_backward_inference(gdy, v, gvar, ggamma, eps, gdx, gy);
      EXPECT_GPU_BITWISE(gdx, dx);
      Tensor s2(cs.shape), gs2(cs.shape, Device::CUDA);
      ops::add(x, dy, s2, true);
      ops::add(gx, gdy, gs2, true);
      EXPECT_GPU_BITWISE(gs2, s2);
    }

    Tensor dg({C}), db({C}), gdg({C}, Device::CUDA), gdb({C}, Device::CUDA);
    ops::bn_param_grads(sums, dg, db);
    ops::bn_param_grads(on_gpu(sums), gdg, gdb);
    EXPECT_GPU_BITWISE(gdg, dg);
    EXPECT_GPU_BITWISE(gdb, db);
  }
}

// The input-BN fold under a Dense (Model::backward): x̂ᵀ·dz by cuBLAS, then the per-row fold.
TEST_F(Gpu, DenseNormalizedGrads) {
  const int64_t rows = 32, in = 150, out = 40;
  Tensor xhat = cpu_normal({rows, in}, 61), dz = cpu_normal({rows, out}, 62), w = cpu_normal({in, out}, 63);
  Tensor gamma = cpu_uniform({in}, 64, 0.5, 1.5), beta = cpu_normal({in}, 65), s({out});
  ops::bias_grad(dz, s);
  for (bool affine : {true, false}) {
    Tensor dw({in, out}), gdw({in, out}, Device::CUDA);
    Tensor sums({2 * in}, Device::CPU, DType::F64), gsums({2 * in}, Device::CUDA, DType::F64);
    ops::dense_normalized_grads(xhat, dz, w, s, affine ? gamma : Tensor(), affine ? beta : Tensor(), dw, sums);
    ops::dense_normalized_grads(on_gpu(xhat), on_gpu(dz), on_gpu(w), on_gpu(s), affine ? on_gpu(gamma) : Tensor(),
                                affine ? on_gpu(beta) : Tensor(), gdw, gsums);
    EXPECT_GPU_NEAR(gdw, dw, 1e-5);
    EXPECT_GPU_NEAR(gsums, sums, 1e-5);
    // Descending: the step w -= 0.25·dw taken in the fold, the sums from the kernel before it.
    Tensor w2 = w.clone(), gw2 = on_gpu(w);
    ops::dense_normalized_grads(xhat, dz, w2, s, affine ? gamma : Tensor(), affine ? beta : Tensor(), dw, sums, 0.25);
    ops::dense_normalized_grads(on_gpu(xhat), on_gpu(dz), gw2, on_gpu(s), affine ? on_gpu(gamma) : Tensor(),
                                affine ? on_gpu(beta) : Tensor(), gdw, gsums, 0.25);
    EXPECT_GPU_NEAR(gw2, w2, 1e-5);
    EXPECT_GPU_NEAR(gsums, sums, 1e-5);
  }
}

// ---- losses ---------------------------------------------------------------------------------------------
TEST_F(Gpu, Losses) {
  const int64_t B = 9, K = 6;
  Tensor z = cpu_normal({B, K}, 27, 2.0);
  std::vector<float> lab(B);
  for (int64_t i = 0; i < B; ++i) lab[size_t(i)] = float((i * 5) % K);
  Tensor y = Tensor::from_vector({B}, lab);
  Tensor t = cpu_uniform({B, K}, 28, 0.0, 1.0);  // dense targets (not normalised: exercises tsum)
  // probabilities, some outside the clip range
  Tensor p = cpu_uniform({B, K}, 29, 0.0, 1.0);
  {
    std::vector<float> pv = p.to_vector();
    pv[3] = 0.0f;
    pv[10] = 1.0f;
    p = Tensor::from_vector({B, K}, pv);
  }
  Tensor zs = z.clone();
  ops::activation_forward(ops::Activation::Softmax, 0, z, zs);

  using Fn = void (*)(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double);
  struct Case {
    const char* name;
    Fn fn;
    const Tensor* pred;
    const Tensor* target;
  };
  const Case cases[] = {{"softmax_xent_sparse", ops::softmax_xent_sparse, &z, &y},
                        {"softmax_xent_dense", ops::softmax_xent_dense, &z, &t},
                        {"sigmoid_xent", ops::sigmoid_xent, &z, &t},
                        {"sparse_xent_probs", ops::sparse_xent_probs, &zs, &y},
                        {"categorical_xent_probs", ops::categorical_xent_probs, &p, &t},
                        {"binary_xent_probs", ops::binary_xent_probs, &p, &t},
                        {"mse", ops::mse, &z, &t}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    for (bool with_grad : {true, false}) {
      Tensor loss({B}), g({B, K}), gloss({B}, Device::CUDA), gg({B, K}, Device::CUDA);
      c.fn(*c.pred, *c.target, loss, with_grad ? g : Tensor(), 0.25);
      c.fn(on_gpu(*c.pred), on_gpu(*c.target), gloss, with_grad ? gg : Tensor(), 0.25);
      EXPECT_GPU_NEAR(gloss, loss, kLibmTol);
      if (with_grad) EXPECT_GPU_NEAR(gg, g, kLibmTol);
    }
  }
  // invalid labels are reported as on the CPU
  std::vector<float> bad = lab;
  bad[4] = float(K);
  Tensor gbad = Tensor::from_vector({B}, bad, Device::CUDA);
  Tensor gloss({B}, Device::CUDA);
  EXPECT_THROW(ops::softmax_xent_sparse(on_gpu(z), gbad, gloss, Tensor(), 1.0), DataError);
  bad[4] = 1.5f;
  gbad = Tensor::from_vector({B}, bad, Device::CUDA);
  EXPECT_THROW(ops::sparse_xent_probs(on_gpu(zs), gbad, gloss, Tensor(), 1.0), DataError);
}

TEST_F(Gpu, Accuracy) {
  const int64_t B = 40, K = 5;
  Tensor pred = cpu_uniform({B, K}, 30, 0.0, 1.0), dense = cpu_uniform({B, K}, 31, 0.0, 1.0);
  std::vector<float> lab(B);
  for (int64_t i = 0; i < B; ++i) lab[size_t(i)] = float((i * 3) % K);
  Tensor y = Tensor::from_vector({B}, lab);
  for (auto kind : {ops::AccuracyKind::Sparse, ops::AccuracyKind::Categorical, ops::AccuracyKind::Binary}) {
    const Tensor& tgt = kind == ops::AccuracyKind::Sparse ? y : dense;
    Tensor out({B}), gout({B}, Device::CUDA);
    ops::accuracy(kind, pred, tgt, out);
    ops::accuracy(kind, on_gpu(pred), on_gpu(tgt), gout);
    EXPECT_GPU_BITWISE(gout, out);
  }
}

// ---- regularization and constraints -------------------------------------------------------------------
TEST_F(Gpu, RegularizationAndMaxNorm) {
  Tensor w = cpu_normal({50, 20}, 32), g = cpu_normal({50, 20}, 33);
  Tensor gw = on_gpu(w), gg = on_gpu(g);
  EXPECT_NEAR(ops::l1l2_penalty(gw, 0.01, 0.002), ops::l1l2_penalty(w, 0.01, 0.002), 1e-12);
  ops::l1l2_grad(w, g, 0.01, 0.002);
  ops::l1l2_grad(gw, gg, 0.01, 0.002);
  EXPECT_GPU_BITWISE(gg, g);
  const ops::FeatureView v{3, 4, 5};
  Tensor m = cpu_normal({60}, 34), gm = on_gpu(m);
  ops::max_norm(m, v, 1.5);
  ops::max_norm(gm, v, 1.5);
  EXPECT_GPU_BITWISE(gm, m);
}

// ---- optimizers (three updates each) -------------------------------------------------------------------
TEST_F(Gpu, OptimizerUpdates) {
  const int64_t n = 3001;
  auto run = [&](const char* name, auto&& update, int nslots) {
    SCOPED_TRACE(name);
    Tensor w = cpu_normal({n}, 35);
    std::vector<Tensor> cs, gs;
    for (int i = 0; i < nslots; ++i) {
      cs.push_back(Tensor::zeros({n}));
      gs.push_back(Tensor::zeros({n}, Device::CUDA));
    }
    Tensor gw = on_gpu(w);
    for (int step = 0; step < 3; ++step) {
      Tensor g = cpu_normal({n}, 36 + uint64_t(step), 0.1);
      update(w, g, cs);
      update(gw, on_gpu(g), gs);
    }
    EXPECT_GPU_NEAR(gw, w, kTightTol);
    EXPECT_EQ(count_different(gw, w), 0) << name << ": bits differ";
    for (int i = 0; i < nslots; ++i) EXPECT_GPU_NEAR(gs[size_t(i)], cs[size_t(i)], kTightTol);
  };
  run("sgd", [](const Tensor& w, const Tensor& g, std::vector<Tensor>&) { ops::sgd_update(w, g, 0.1); }, 0);
  for (bool nest : {false, true})
    run(nest ? "nesterov" : "momentum",
        [nest](const Tensor& w, const Tensor& g, std::vector<Tensor>& s) { ops::momentum_update(w, g, s[0], 0.1, 0.9, nest); }, 1);
  run("adagrad", [](const Tensor& w, const Tensor& g, std::vector<Tensor>& s) { ops::adagrad_update(w, g, s[0], 0.1, 1e-7); }, 1);
  run("rmsprop", [](const Tensor& w, const Tensor& g, std::vector<Tensor>& s) {
    ops::rmsprop_update(w, g, s[0], Tensor(), Tensor(), 0.01, 0.9, 0.0, 1e-7);
  }, 1);
  run("rmsprop_momentum_centered", [](const Tensor& w, const Tensor& g, std::vector<Tensor>& s) {
    ops::rmsprop_update(w, g, s[0], s[1], s[2], 0.01, 0.9, 0.5, 1e-7);
  }, 3);
  run("adam", [](const Tensor& w, const Tensor& g, std::vector<Tensor>& s) {
    ops::adam_update(w, g, s[0], s[1], Tensor(), 0.001, 0.9, 0.999, 1e-7);
  }, 2);
  run("amsgrad", [](const Tensor& w, const Tensor& g, std::vector<Tensor>& s) {
    ops::adam_update(w, g, s[0], s[1], s[2], 0.001, 0.9, 0.999, 1e-7);
  }, 3);
  run("adamax", [](const Tensor& w, const Tensor& g, std::vector<Tensor>& s) {
    ops::adamax_update(w, g, s[0], s[1], 0.002, 0.9, 0.999, 1e-7);
  }, 2);
  run("nadam", [](const Tensor& w, const Tensor& g, std::vector<Tensor>& s) {
    ops::NadamCoeffs c{0.002, 0.9, 0.999, 1e-7, 1.0 / (1 - 0.855), 1.0 / (1 - 0.855 * 0.9), 1.0 / (1 - 0.999), 0.95, 0.96};
    ops::nadam_update(w, g, s[0], s[1], c);
  }, 2);
}

// ---- random fills -------------------------------------------------------------------------------------
TEST_F(Gpu, RandomFills) {
  const int64_t n = 10007;
  const rng::Stream s{2024, 77};
  Tensor u({n}), gu({n}, Device::CUDA);
  ops::random_uniform(u, -0.05, 0.05, s);
  ops::random_uniform(gu, -0.05, 0.05, s);
  EXPECT_GPU_BITWISE(gu, u);
  // normal / truncated normal go through double log/cos/sqrt: CUDA's and glibc's may differ in the last
  // bit of a double, which after rounding to float shows up rarely, if ever.
  Tensor nr({n}), gnr({n}, Device::CUDA);
  ops::random_normal(nr, 0.1, 0.5, s);
  ops::random_normal(gnr, 0.1, 0.5, s);
  EXPECT_GPU_NEAR(gnr, nr, 1e-6);
  std::printf("[ gpu      ] random_normal: %lld of %lld floats differ from the CPU's bits\n",
              (long long)count_different(gnr, nr), (long long)n);
  ops::truncated_normal(nr, 0.0, 0.05, s);
  ops::truncated_normal(gnr, 0.0, 0.05, s);
  EXPECT_GPU_NEAR(gnr, nr, 1e-6);
}

}  // namespace
}  // namespace lockstep::gpu_test
