// lockstep's own Winograd convolutions (see winograd_cpu.h). F(4x4, 3x3) on the points 0, 1, -1, 2, -1/2 and
// infinity (Toom-Cook; the matrices below, generated as wincnn does, checked against the direct sum): a 4x4
// output tile y = Aᵀ·[(G·g·Gᵀ) ⊙ (Bᵀ·d·B)]·A for the 6x6 input tile d; over channels the ⊙ becomes, per
// transform point p (36), the product M_p[tiles, K] = V_p[tiles, C]·U_p[C, K]. F(2x2, 3x3) likewise with
// 4x4 tiles and 16 points.
//
// Layouts (row-major): V [points][tiles of the block][C], M [points][tiles][K], U [points][C][K]. The
// transforms work on chunks of 16 channels (one AVX-512 vector; loops of a compile-time length the compiler
// vectorises, the matrices compile-time constants), a channel at a time for the rest.
//
// Where the time goes (one Zen 4 core, batch 32, the networks' 3x3 layers with 32-256 channels): the products
// 70-80% at 100-112 GFLOP/s (the core's FMA peak is ~115), the input and output transforms 15-25%, the
// kernel's transform (and for the input gradient its transpose) 3-15% (most at 7x7x256, where the transformed
// kernel, 9.4 MiB, is as large as the maps).
#include "core/kernels/winograd_cpu.h"

#include <libxsmm.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/kernels/cpu.h"

namespace lockstep::kernels::winograd {

using ops::Window2d;

namespace {

constexpr int kLanes = 16;

// A correlation out[n, oh, ow, k] = Σ in[n, oh - pad_t + i, ow - pad_l + j, c]·g[i, j, c, k] (zeros outside in).
// Tiles of m x m outputs.
struct Plane {
  int64_t n = 0, h = 0, w = 0, c = 0;  // input map
  int64_t oh = 0, ow = 0, k = 0;       // output map
  int64_t pad_t = 0, pad_l = 0;
  int64_t m = 4;
  int64_t tiles_h() const { return (oh + m - 1) / m; }
  int64_t tiles_w() const { return (ow + m - 1) / m; }
  int64_t tiles() const { return n * tiles_h() * tiles_w(); }
};

// Tiles per block. A block's transformed tiles (V and M, all points) are about 640 KiB, so that they stay in the
// core's L2 (1 MiB on Zen 4) between the transforms and the products (measured flat from 256 KiB to 1 MiB: the
// products ran at 100-112 GFLOP/s with 8 to 128 tiles), but a block also reads the whole transformed kernel U
// (36·C·K floats, 9.4 MiB at 256x256) once: the forward and input-gradient blocks take at least 2·C·K/(C+K)
// tiles, so that U moves at most half the bytes of the block's own tiles. With L2-sized blocks alone the CNN's
// 128-256-channel layers read U 8-60 times per call (an estimated 1.2 GB from L3 per step at batch 64): one
// rank alone runs about as fast either way (the layers timed alone: 0-20% slower with the larger blocks, the
// step within its noise), but 2 ranks x 1 thread, whose L3 and memory are shared, went from 1.59-1.89x one
// rank (median 1.72x of 10 paired runs, train_step_bench --vs-one-rank) to 1.81-1.94x (median 1.88x of 10). The kernel gradient also reads and writes its sums
// S_p [C, K] once a block: its blocks are about 2 MiB and take at least C·K/(C+K) tiles (7x7x256 layers: 128
// tiles, 10-15% faster than 2 MiB blocks alone; 2·C·K/(C+K) measured no better on 2 ranks).
int64_t tiles_per_block(int64_t tiles, int points, int64_t c, int64_t k, int threads, bool filter) {
  const int64_t bytes = (filter ? 2048 : 640) * 1024;
  int64_t tb = bytes / (points * (c + k) * int64_t(sizeof(float)));
  tb = std::max<int64_t>(tb, (filter ? 1 : 2) * c * k / (c + k));
  tb = std::clamp<int64_t>(tb, 8, 512);
  if (threads > 1) {
    // A multiple of the threads' count of blocks, of even sizes: each thread the same work.
    int64_t blocks = (tiles + tb - 1) / tb;
    blocks = (blocks + threads - 1) / threads * threads;
    tb = (tiles + blocks - 1) / blocks;
  }
  return std::max<int64_t>(1, std::min(tb, tiles));
}

std::vector<float>& scratch(int which) {
  static thread_local std::vector<float> v[4];
  return v[which];
}
float* scratch_of(int which, int64_t n) {
  auto& v = scratch(which);
  if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
  return v.data();
}
// A run of zeros at least n long (the positions outside a map), made by the calling thread before the workers
// read it.
const float* zeros_of(int64_t n) {
  static thread_local std::vector<float> z;
  if (z.size() < static_cast<size_t>(n)) z.assign(static_cast<size_t>(n), 0.0f);
  return z.data();
}

// Runs f(item, thread) for items [0, n) over the OpenMP threads (statically: each thread the same items on
// every call), each thread's products on one thread (kernels::gemm then runs libxsmm in the calling thread).
template <typename F> void parallel_items(int64_t n, int threads, F&& f) {
  if (threads <= 1 || n <= 1) {
    for (int64_t i = 0; i < n; ++i) f(i, 0);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    omp_set_num_threads(1);
    const int t = omp_get_thread_num();
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) f(i, t);
  }
}

// ---- transforms -------------------------------------------------------------------------------------------
// Σ_i c[i]·v(i) over a compile-time row of coefficients, in i's order: zeros skipped, ±1 as additions.
template <typename S, int N, typename V>
inline S combine(const double (&c)[N], V v) {
  S acc = 0;
  bool first = true;
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i) {
    if (c[i] == 0) continue;
    const S x = v(i);
    const S term = c[i] == 1 ? x : c[i] == -1 ? -x : S(c[i]) * x;
    acc = first ? term : acc + term;
    first = false;
  }
  return acc;
}

// out = Lm·in·Rmᵀ for in [A][B] (in(i, j) points at L channels), Lm [P][A], Rm [Q][B] compile-time matrices:
// the loops unroll, zero coefficients drop out, ±1 become additions. Column pass, then row pass; vectorised
// over the L channels. S is the arithmetic's type (double for the kernel's transforms: U rounded once).
template <typename S, int L, int P, int A, int Q, int B, const double (&Lm)[P][A], const double (&Rm)[Q][B],
          typename In, typename Out>
inline void transform2d(In in, Out out) {
  S t[P][B][L];
#pragma GCC unroll 8
  for (int j = 0; j < B; ++j) {
    const float* col[A];
#pragma GCC unroll 8
    for (int i = 0; i < A; ++i) col[i] = in(i, j);
#pragma omp simd
    for (int l = 0; l < L; ++l) {
#pragma GCC unroll 8
      for (int p = 0; p < P; ++p) t[p][j][l] = combine<S>(Lm[p], [&](int i) { return S(col[i][l]); });
    }
  }
#pragma GCC unroll 8
  for (int p = 0; p < P; ++p) {
    float* dst[Q];
#pragma GCC unroll 8
    for (int q = 0; q < Q; ++q) dst[q] = out(p, q);
#pragma omp simd
    for (int l = 0; l < L; ++l) {
#pragma GCC unroll 8
      for (int q = 0; q < Q; ++q) dst[q][l] = float(combine<S>(Rm[q], [&](int j) { return t[p][j][l]; }));
    }
  }
}

// F(4x4, 3x3) on the points 0, 1, -1, 2, -1/2 and infinity: against Lavin and Gray's 0, ±1, ±2 about half the
// rounding error (a float simulation of 32-channel tiles: 99.9th percentile of the error over the bound's
// scale 0.39 against 0.89), the same multiplications.
constexpr double kBt4[6][6] = {{1, 1.5, -2, -1.5, 1, 0},     {0, -1, -2.5, -0.5, 1, 0}, {0, 1, 0.5, -2.5, 1, 0},
                               {0, -0.5, -1, 0.5, 1, 0},     {0, 2, -1, -2, 1, 0},      {0, 1, 1.5, -2, -1.5, 1}};
constexpr double kG4[6][3] = {{1, 0, 0},
                              {-1.0 / 3, -1.0 / 3, -1.0 / 3},
                              {1.0 / 3, -1.0 / 3, 1.0 / 3},
                              {1.0 / 15, 2.0 / 15, 4.0 / 15},
                              {-16.0 / 15, 8.0 / 15, -4.0 / 15},
                              {0, 0, 1}};
constexpr double kAt4[4][6] = {
    {1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -0.5, 0}, {0, 1, 1, 4, 0.25, 0}, {0, 1, -1, 8, -0.125, 1}};
// F(2x2, 3x3): Bᵀ = [1 0 -1 0;  0 1 1 0;  0 -1 1 0;  0 1 0 -1], G = [1 0 0;  1/2 1/2 1/2;  1/2 -1/2 1/2;  0 0 1],
// Aᵀ = [1 1 1 0;  0 1 -1 -1].
constexpr double kBt2[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
constexpr double kG2[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
constexpr double kAt2[2][4] = {{1, 1, 1, 0}, {0, 1, -1, -1}};

template <int R, int C> struct Transposed {
  double v[C][R];
  constexpr explicit Transposed(const double (&m)[R][C]) : v{} {
    for (int i = 0; i < R; ++i)
      for (int j = 0; j < C; ++j) v[j][i] = m[i][j];
  }
};
constexpr Transposed<4, 6> kA4t(kAt4);  // A [6][4]
constexpr Transposed<6, 3> kG4t(kG4);   // Gᵀ [3][6]
constexpr Transposed<2, 4> kA2t(kAt2);
constexpr Transposed<4, 3> kG2t(kG2);

// The five transforms of F(M x M, 3x3) (T = M + 2: tile side, kPoints = T·T), on L channels from c0 / k0:
//   input       dst[p·ps] = (Bᵀ·d·B)[p], d[i][j] = src[i·T + j] + c0 (6x6 -> 6x6);
//   output      (Aᵀ·m·A)[r][s] -> dst(r, s) + k0 for r < nr, s < nc, m[p] = src[p·ps] (6x6 -> 4x4);
//   kernel      dst[p·ps + k0] = (G·g·Gᵀ)[p], g[i][j] = src[(i·3 + j)·ts + k0] (3x3 -> 6x6, in double);
//   grad        dst[p·ps] = (A·e·Aᵀ)[p], e[r][s] = src[r·M + s] + k0 (4x4 -> 6x6);
//   kernel_grad dst[(i·3 + j)·ts + k0] = (Gᵀ·s·G)[i][j], s[p] = src[p·ps + k0] (6x6 -> 3x3, in double).
template <int M> struct Wino;
template <int M, const double (&Bt)[M + 2][M + 2], const double (&G)[M + 2][3],
          const double (&At)[M][M + 2], const double (&A)[M + 2][M], const double (&Gt)[3][M + 2]>
struct WinoOf {
  static constexpr int kTile = M + 2, kPoints = kTile * kTile;
  template <int L> static void input(const float* const* src, int64_t c0, float* dst, int64_t ps) {
    transform2d<float, L, kTile, kTile, kTile, kTile, Bt, Bt>([&](int i, int j) { return src[i * kTile + j] + c0; },
                                                           [&](int p, int q) { return dst + (p * kTile + q) * ps; });
  }
  template <int L>
  static void output(const float* src, int64_t ps, float* dst, int64_t rs, int64_t cs, int64_t k0, int nr, int nc) {
    float spill[M * M][L];
    transform2d<float, L, M, kTile, M, kTile, At, At>(
        [&](int i, int j) { return src + (i * kTile + j) * ps; },
        [&](int r, int s) { return r < nr && s < nc ? dst + r * rs + s * cs + k0 : spill[r * M + s]; });
  }
  template <int L> static void kernel(const float* src, int64_t ts, int64_t k0, float* dst, int64_t ps) {
    transform2d<double, L, kTile, 3, kTile, 3, G, G>([&](int i, int j) { return src + (i * 3 + j) * ts + k0; },
                                                    [&](int p, int q) { return dst + (p * kTile + q) * ps + k0; });
  }
  template <int L> static void grad(const float* const* src, int64_t k0, float* dst, int64_t ps) {
    transform2d<float, L, kTile, M, kTile, M, A, A>([&](int r, int s) { return src[r * M + s] + k0; },
                                                   [&](int p, int q) { return dst + (p * kTile + q) * ps; });
  }
  template <int L> static void kernel_grad(const float* src, int64_t ps, int64_t k0, float* dst, int64_t ts) {
    transform2d<double, L, 3, kTile, 3, kTile, Gt, Gt>([&](int a, int b) { return src + (a * kTile + b) * ps + k0; },
                                                      [&](int i, int j) { return dst + (i * 3 + j) * ts + k0; });
  }
};
template <> struct Wino<4> : WinoOf<4, kBt4, kG4, kAt4, kA4t.v, kG4t.v> {};
template <> struct Wino<2> : WinoOf<2, kBt2, kG2, kAt2, kA2t.v, kG2t.v> {};


// ---- tiles ------------------------------------------------------------------------------------------------
struct Tile {
  int64_t n, ty, tx;
};
Tile tile_of(const Plane& P, int64_t t) {
  const int64_t tw = P.tiles_w(), th = P.tiles_h();
  return {t / (th * tw), (t / tw) % th, t % tw};
}

// V[p·ps + c] for tile t of the input map (zeros outside it).
template <int M>
void transform_input_tile(const float* in, const Plane& P, const Tile& tl, const float* zeros, float* v, int64_t ps) {
  constexpr int T = Wino<M>::kTile;
  const float* src[T * T];
  const int64_t r0 = tl.ty * M - P.pad_t, c0 = tl.tx * M - P.pad_l;
  for (int i = 0; i < T; ++i)
    for (int j = 0; j < T; ++j) {
      const int64_t r = r0 + i, c = c0 + j;
      src[i * T + j] = r >= 0 && r < P.h && c >= 0 && c < P.w ? in + ((tl.n * P.h + r) * P.w + c) * P.c : zeros;
    }
  int64_t c = 0;
  for (; c + kLanes <= P.c; c += kLanes) Wino<M>::template input<kLanes>(src, c, v + c, ps);
  for (; c < P.c; ++c) Wino<M>::template input<1>(src, c, v + c, ps);
}

// M[p·ps + k] of tile t -> its outputs inside the output map.
// Then the epilogue (if any) on those outputs, a row of the tile at a time (nc pixels x K channels, contiguous).
template <int M>
void transform_output_tile(const float* m, int64_t ps, const Plane& P, const Tile& tl, float* out,
                           const Epilogue<float>* ep) {
  const int nr = int(std::min<int64_t>(M, P.oh - tl.ty * M)), nc = int(std::min<int64_t>(M, P.ow - tl.tx * M));
  float* dst = out + ((tl.n * P.oh + tl.ty * M) * P.ow + tl.tx * M) * P.k;
  int64_t k = 0;
  for (; k + kLanes <= P.k; k += kLanes) Wino<M>::template output<kLanes>(m + k, ps, dst, P.ow * P.k, P.k, k, nr, nc);
  for (; k < P.k; ++k) Wino<M>::template output<1>(m + k, ps, dst, P.ow * P.k, P.k, k, nr, nc);
  if (ep)
    for (int r = 0; r < nr; ++r) ep->apply(dst + r * P.ow * P.k, nc, P.k);
}

// dM[p·ps + k] for tile t of the output gradient (zeros outside it).
template <int M>
void transform_grad_tile(const float* dy, const Plane& P, const Tile& tl, const float* zeros, float* dm, int64_t ps) {
  const float* src[M * M];
  for (int r = 0; r < M; ++r)
    for (int s = 0; s < M; ++s) {
      const int64_t oh = tl.ty * M + r, ow = tl.tx * M + s;
      src[r * M + s] = oh < P.oh && ow < P.ow ? dy + ((tl.n * P.oh + oh) * P.ow + ow) * P.k : zeros;
    }
  int64_t k = 0;
  for (; k + kLanes <= P.k; k += kLanes) Wino<M>::template grad<kLanes>(src, k, dm + k, ps);
  for (; k < P.k; ++k) Wino<M>::template grad<1>(src, k, dm + k, ps);
}

// U[p][c][k] = (G·g·Gᵀ)[p] for g[i][j][c][k] = src[((i·3 + j)·C + c)·K + k].
template <int M> void transform_kernel(const float* src, int64_t C, int64_t K, float* u, int threads) {
  parallel_items(C, C * K >= 4096 ? threads : 1, [&](int64_t c, int) {
    const float* g = src + c * K;
    float* d = u + c * K;
    int64_t k = 0;
    for (; k + kLanes <= K; k += kLanes) Wino<M>::template kernel<kLanes>(g, C * K, k, d, C * K);
    for (; k < K; ++k) Wino<M>::template kernel<1>(g, C * K, k, d, C * K);
  });
}

int threads_now() { return omp_in_parallel() ? 1 : std::max(1, omp_get_max_threads()); }

// out = the correlation of `in` with the transformed kernel U [points][C][K] (Plane P).
template <int M>
void correlate(const float* in, const Plane& P, const float* u, float* out, int threads,
               const Epilogue<float>* ep = nullptr) {
  constexpr int kP = Wino<M>::kPoints;
  const int64_t T = P.tiles();
  if (T == 0) return;
  const int64_t C = P.c, K = P.k;
  const int64_t tb = tiles_per_block(T, kP, C, K, threads, false), blocks = (T + tb - 1) / tb;
  const float* zeros = zeros_of(C);
  parallel_items(blocks, int(std::min<int64_t>(threads, blocks)), [&](int64_t b, int) {
    const int64_t t0 = b * tb, nb = std::min(tb, T - t0);
    float* v = scratch_of(0, kP * tb * C);
    float* m = scratch_of(1, kP * tb * K);
    for (int64_t i = 0; i < nb; ++i) transform_input_tile<M>(in, P, tile_of(P, t0 + i), zeros, v + i * C, tb * C);
    for (int p = 0; p < kP; ++p)
      gemm(Cpu{}, false, false, nb, K, C, 1.0f, v + p * tb * C, C, u + p * C * K, K, 0.0f, m + p * tb * K, K);
    for (int64_t i = 0; i < nb; ++i) transform_output_tile<M>(m + i * K, tb * K, P, tile_of(P, t0 + i), out, ep);
  });
}

Plane forward_plane(const Window2d& g, int m) {
  Plane P;
  P.n = g.batch, P.h = g.in_h, P.w = g.in_w, P.c = g.in_c, P.oh = g.out_h, P.ow = g.out_w, P.k = g.out_c;
  P.pad_t = g.pad_top, P.pad_l = g.pad_left, P.m = m;
  return P;
}
// dx is the correlation of dy with the kernel rotated by 180 degrees, its channels swapped, padded by
// 2 - pad before each axis.
Plane backward_data_plane(const Window2d& g, int m) {
  Plane P;
  P.n = g.batch, P.h = g.out_h, P.w = g.out_w, P.c = g.out_c, P.oh = g.in_h, P.ow = g.in_w, P.k = g.in_c;
  P.pad_t = 2 - g.pad_top, P.pad_l = 2 - g.pad_left, P.m = m;
  return P;
}
// wr[i][j][k][c] = w[2 - i][2 - j][c][k] (libxsmm's transpose: a quarter of the time of plain loops at 256x256).
const float* rotated_kernel(const float* w, int64_t C, int64_t K) {
  static const bool ready = [] {
    libxsmm_init();
    return true;
  }();
  (void)ready;
  float* wr = scratch_of(3, 9 * C * K);
  for (int tap = 0; tap < 9; ++tap)
    libxsmm_otrans(wr + tap * C * K, w + (8 - tap) * C * K, sizeof(float), libxsmm_blasint(K), libxsmm_blasint(C),
                   libxsmm_blasint(K), libxsmm_blasint(C));
  return wr;
}

template <int M> void forward_impl(const float* x, const float* w, const Window2d& g, float* y, const Epilogue<float>& ep) {
  const int threads = threads_now();
  float* u = scratch_of(2, Wino<M>::kPoints * g.in_c * g.out_c);
  transform_kernel<M>(w, g.in_c, g.out_c, u, threads);
  correlate<M>(x, forward_plane(g, M), u, y, threads, ep.empty() ? nullptr : &ep);
}

template <int M> void backward_data_impl(const float* dy, const float* w, const Window2d& g, float* dx) {
  const int threads = threads_now();
  const float* wr = rotated_kernel(w, g.in_c, g.out_c);
  float* u = scratch_of(2, Wino<M>::kPoints * g.in_c * g.out_c);
  transform_kernel<M>(wr, g.out_c, g.in_c, u, threads);
  correlate<M>(dy, backward_data_plane(g, M), u, dx, threads);
}

template <int M> void backward_filter_impl(const float* x, const float* dy, const Window2d& g, float* dw) {
  constexpr int kP = Wino<M>::kPoints;
  int threads = threads_now();
  const int64_t C = g.in_c, K = g.out_c, CK = C * K;
  Plane P;
  P.n = g.batch, P.h = g.in_h, P.w = g.in_w, P.c = C, P.oh = g.out_h, P.ow = g.out_w, P.k = K;
  P.pad_t = g.pad_top, P.pad_l = g.pad_left, P.m = M;
  const int64_t T = P.tiles();
  if (T == 0) return std::fill(dw, dw + 9 * CK, 0.0f);
  const int64_t tb = tiles_per_block(T, kP, C, K, threads, true), blocks = (T + tb - 1) / tb;
  threads = int(std::min<int64_t>(threads, blocks));
  // Each thread sums its blocks' products into its own S [points][C][K] (blocks dealt statically, so each
  // thread has one), then the threads' sums are added in thread order.
  std::vector<float*> sums(size_t(threads), nullptr);
  std::vector<int64_t> done(size_t(threads), 0);
  const float* zeros = zeros_of(std::max(C, K));
  parallel_items(blocks, threads, [&](int64_t b, int t) {
    const int64_t t0 = b * tb, nb = std::min(tb, T - t0);
    float* v = scratch_of(0, kP * tb * C);
    float* m = scratch_of(1, kP * tb * K);
    float* s = scratch_of(2, kP * CK);
    sums[size_t(t)] = s;
    for (int64_t i = 0; i < nb; ++i) {
      const Tile tl = tile_of(P, t0 + i);
      transform_input_tile<M>(x, P, tl, zeros, v + i * C, tb * C);
      transform_grad_tile<M>(dy, P, tl, zeros, m + i * K, tb * K);
    }
    const float beta = done[size_t(t)]++ ? 1.0f : 0.0f;
    for (int p = 0; p < kP; ++p)
      gemm_weight_grad(Cpu{}, C, K, nb, v + p * tb * C, C, m + p * tb * K, K, beta, s + p * CK, K);
  });
  float* s = sums[0];
  if (threads > 1) {
    const int64_t n = kP * CK;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t i0 = 0; i0 < n; i0 += 4096) {
      const int64_t i1 = std::min(n, i0 + 4096);
      for (int t = 1; t < threads; ++t) {
        const float* o = sums[size_t(t)];
#pragma omp simd
        for (int64_t i = i0; i < i1; ++i) s[i] += o[i];
      }
    }
  }
  parallel_items(C, CK >= 4096 ? threads : 1, [&](int64_t c, int) {
    int64_t k = 0;
    for (; k + kLanes <= K; k += kLanes) Wino<M>::template kernel_grad<kLanes>(s + c * K, CK, k, dw + c * K, CK);
    for (; k < K; ++k) Wino<M>::template kernel_grad<1>(s + c * K, CK, k, dw + c * K, CK);
  });
}

// ---- direct: where neither tile size meets the error bound (a handful of terms per output) ----------------
// Forward and input gradient: per output row, the rows' 3x3 windows side by side (im2col of one row, zeros
// outside the map) times the kernel as [(i, j, c), k], one product through kernels::gemm.
void direct_correlate(const float* in, const Plane& P, const float* wk, float* out, int threads) {
  const int64_t taps_c = 9 * P.c;
  const float* zeros = zeros_of(P.c);
  parallel_items(P.n * P.oh, threads, [&](int64_t r, int) {
    const int64_t n = r / P.oh, oh = r % P.oh;
    float* col = scratch_of(0, P.ow * taps_c);
    for (int64_t ow = 0; ow < P.ow; ++ow)
      for (int64_t i = 0; i < 3; ++i)
        for (int64_t j = 0; j < 3; ++j) {
          const int64_t ih = oh - P.pad_t + i, iw = ow - P.pad_l + j;
          const float* src = ih >= 0 && ih < P.h && iw >= 0 && iw < P.w ? in + ((n * P.h + ih) * P.w + iw) * P.c : zeros;
          std::memcpy(col + ow * taps_c + (i * 3 + j) * P.c, src, sizeof(float) * size_t(P.c));
        }
    gemm(Cpu{}, false, false, P.ow, P.k, taps_c, 1.0f, col, taps_c, wk, P.k, 0.0f, out + (n * P.oh + oh) * P.ow * P.k,
         P.k);
  });
}
// Kernel gradient: per tap, Σ over the positions it meets of x ⊗ dy, vectorised over the output channels.
void direct_backward_filter(const float* x, const float* dy, const Window2d& g, float* dw, int threads) {
  const int64_t C = g.in_c, K = g.out_c;
  parallel_items(9, threads, [&](int64_t tap, int) {
    const int64_t kh = tap / 3, kw = tap % 3;
    float* d = dw + tap * C * K;
    std::fill(d, d + C * K, 0.0f);
    for (int64_t n = 0; n < g.batch; ++n)
      for (int64_t oh = 0; oh < g.out_h; ++oh) {
        const int64_t ih = oh - g.pad_top + kh;
        if (ih < 0 || ih >= g.in_h) continue;
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t iw = ow - g.pad_left + kw;
          if (iw < 0 || iw >= g.in_w) continue;
          const float* xi = x + ((n * g.in_h + ih) * g.in_w + iw) * C;
          const float* e = dy + ((n * g.out_h + oh) * g.out_w + ow) * K;
          for (int64_t c = 0; c < C; ++c) {
            const float a = xi[c];
            float* dc = d + c * K;
#pragma omp simd
            for (int64_t k = 0; k < K; ++k) dc[k] += a * e[k];
          }
        }
      }
  });
}

// Which algorithm an op runs: F(4x4, 3x3) where its rounding error was measured well within the bound,
// F(2x2, 3x3) (a smaller error: points 0, ±1) where that one is, else the direct loops above (0). Winograd's
// error at an output scales with the magnitudes in its whole tile, the bound with that output's own terms, so
// the rule counts the fewest terms any output sums: channels times the taps inside the map (a corner of a
// 'same' layer reads 4 of 9, an input-gradient corner of a 'valid' one 1), or for the kernel gradient the
// positions a tap meets. Measured (tests/core/winograd_test.cpp and sweeps of 1-256 channels, maps 1x1 to
// 32x32, ~9000 geometries): F(4x4) within 3.6 of the bound's 8 from 64 terms (ResNet-20's 16-channel 'same'
// layers have 64 at the corners), 5-18 below (and 10-10^5 in a 'valid' layer's input-gradient corners with
// 1-16 channels); F(2x2) within 2.8 from 16 terms, 6-1400 below.
enum class Op { Forward, BackwardData, BackwardFilter };
// Along one axis (map `in`, output `out`, `pad` before): the fewest taps an output reads inside the map
// (forward), an input position is read by (input gradient), or outputs a tap meets (kernel gradient).
int64_t fewest(Op op, int64_t in, int64_t out, int64_t pad) {
  int64_t least = 3 * std::max(in, out) + 3;
  if (op == Op::BackwardFilter) {
    for (int64_t k = 0; k < 3; ++k) {
      int64_t n = 0;
      for (int64_t o = 0; o < out; ++o) n += o - pad + k >= 0 && o - pad + k < in;
      least = std::min(least, n);
    }
    return least;
  }
  const int64_t positions = op == Op::Forward ? out : in;
  for (int64_t i = 0; i < positions; ++i) {
    int64_t n = 0;
    for (int64_t k = 0; k < 3; ++k) {
      const int64_t j = op == Op::Forward ? i - pad + k : i + pad - k;
      n += j >= 0 && j < (op == Op::Forward ? in : out);
    }
    least = std::min(least, n);
  }
  return least;
}
int tile_m(const Window2d& g, Op op) {
  const int64_t per = op == Op::Forward ? g.in_c : op == Op::BackwardData ? g.out_c : g.batch;
  const int64_t terms = per * fewest(op, g.in_h, g.out_h, g.pad_top) * fewest(op, g.in_w, g.out_w, g.pad_left);
  return terms >= 64 ? 4 : terms >= 16 ? 2 : 0;
}

}  // namespace

bool supports(const Window2d& g) {
  return g.k_h == 3 && g.k_w == 3 && g.stride_h == 1 && g.stride_w == 1 && g.dil_h == 1 && g.dil_w == 1 &&
         g.groups == 1 && g.pad_top >= 0 && g.pad_top <= 2 && g.pad_left >= 0 && g.pad_left <= 2 && g.batch >= 0 &&
         g.in_c >= 1 && g.out_c >= 1 && g.out_h >= 0 && g.out_w >= 0;
}

const char* algorithm(const Window2d& g, const char* op) {
  const std::string o = op;
  const Op which = o == "fwd" ? Op::Forward : o == "bwd_data" ? Op::BackwardData : Op::BackwardFilter;
  switch (tile_m(g, which)) {
    case 4: return "F(4x4,3x3)";
    case 2: return "F(2x2,3x3)";
    default: return "direct";
  }
}

void forward(const float* x, const float* w, const Window2d& g, float* y, const Epilogue<float>& ep) {
  switch (tile_m(g, Op::Forward)) {
    case 4: return forward_impl<4>(x, w, g, y, ep);
    case 2: return forward_impl<2>(x, w, g, y, ep);
    default:
      direct_correlate(x, forward_plane(g, 1), w, y, threads_now());
      return ep.apply_in_blocks(y, g.batch * g.out_h * g.out_w, g.out_c);
  }
}
void backward_data(const float* dy, const float* w, const Window2d& g, float* dx) {
  switch (tile_m(g, Op::BackwardData)) {
    case 4: return backward_data_impl<4>(dy, w, g, dx);
    case 2: return backward_data_impl<2>(dy, w, g, dx);
    default: return direct_correlate(dy, backward_data_plane(g, 1), rotated_kernel(w, g.in_c, g.out_c), dx, threads_now());
  }
}
void backward_filter(const float* x, const float* dy, const Window2d& g, float* dw) {
  switch (tile_m(g, Op::BackwardFilter)) {
    case 4: return backward_filter_impl<4>(x, dy, g, dw);
    case 2: return backward_filter_impl<2>(x, dy, g, dw);
    default: return direct_backward_filter(x, dy, g, dw, threads_now());
  }
}

}  // namespace lockstep::kernels::winograd
