// The hierarchical all-reduce of the reduction buffer (comm/mpi_communicator.h, comm/shared_reduction.h),
// run by CTest under mpirun on one host with LOCKSTEP_RANKS_PER_NODE=K (consecutive groups of K ranks
// act as nodes; the same code path as ranks on separate hosts) and without it (one node).
//
// Every rank can compute every rank's input (a pure function of rank and index), so each test
// predicts the result BIT FOR BIT from the documented order of summation: within a node, ranks in
// rank order (t = v0; t = t + v1; ...); across nodes, the ring: chunk c of a share starts as node
// c's sum and each next node adds its own (acc = x[c+k] + acc); compressed, every value that
// travels is rounded to 16 bits (detail::encode16/decode16) and the chunk's final sum is rounded once
// for every rank. Inputs are non-integers of mixed magnitude, so another order would show up.
// Every test all-reduces its verdict, so every rank passes or fails together.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "comm/shared_reduction.h"
#include "tests/comm/mpi_gtest_main.h"

namespace lockstep::comm {
namespace {

Communicator* g_comm = nullptr;
Communicator& comm() { return *g_comm; }
bool all_ok(bool ok) { return comm().all_reduce_value<int64_t>(ok ? 1 : 0, ReduceOp::Min) == 1; }
#define EXPECT_ALL(ok) EXPECT_TRUE(all_ok(ok)) << "failed on at least one rank (see its output)"

// Ranks per node as the communicator groups them: LOCKSTEP_RANKS_PER_NODE, else every rank on one
// node (CTest runs these on one host).
int ranks_per_node() {
  const char* v = std::getenv("LOCKSTEP_RANKS_PER_NODE");
  return v != nullptr && *v != '\0' ? std::atoi(v) : comm().size();
}

// Rank q's input at element i of slice `s`: mixed magnitudes and signs, never an integer.
float input(int q, int s, int64_t i) {
  uint64_t x = (uint64_t(s) << 48) ^ (uint64_t(q) << 32) ^ uint64_t(i) ^ 0x9E3779B97F4A7C15ull;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  const double u = double(x % 1000003) / 1000003.0 - 0.5;  // (-0.5, 0.5)
  const double scale = std::ldexp(1.0, int((x >> 20) % 12) - 6);  // 2^-6 .. 2^5
  return float(u * scale + 1e-3);
}

float round16(Compression c, float v) {
  if (c == Compression::None) return v;
  uint16_t w;
  detail::encode16(c, &v, &w, 1);
  float out;
  detail::decode16(c, &w, &out, 1, false);
  return out;
}

// The documented result at element i of a slice of `count` elements.
float expected(int s, int64_t count, int64_t i, Compression c) {
  const int p = comm().size(), L = ranks_per_node(), n = p / L;
  auto node_sum = [&](int k) {
    float t = input(k * L, s, i);
    for (int q = 1; q < L; ++q) t = t + input(k * L + q, s, i);
    return t;
  };
  if (n == 1) return node_sum(0);
  // the share of the slice holding i, and the ring's chunk of that share
  int l = 0;
  while (!(count * l / L <= i && i < count * (l + 1) / L)) ++l;
  const int64_t begin = count * l / L, share = count * (l + 1) / L - begin, j = i - begin;
  const int64_t base = share / n, rem = share % n;
  int chunk = 0;
  while (!(j < (chunk + 1) * base + std::min<int64_t>(chunk + 1, rem))) ++chunk;
  float acc = node_sum(chunk);
  for (int k = 1; k < n; ++k) acc = node_sum((chunk + k) % n) + round16(c, acc);
  return round16(c, acc);
}

// Launches every slice at once (interleaved with other collectives when asked), waits in reverse
// order, then compares every element with expected().
bool check_slices(Compression c, const std::vector<int64_t>& sizes, bool interleave) {
  const int r = comm().rank();
  int64_t total = 0;
  for (int64_t n : sizes) total += n;
  Tensor buf = comm().allocate_reduction_buffer(total, DType::F32, Device::CPU, ReductionOptions{c, 0});
  if (!buf.defined()) {
    ADD_FAILURE() << "rank " << r << ": no reduction buffer";
    return false;
  }
  float* d = buf.data<float>();
  std::vector<std::unique_ptr<Work>> work;
  int64_t at = 0;
  for (size_t s = 0; s < sizes.size(); ++s) {
    for (int64_t i = 0; i < sizes[s]; ++i) d[at + i] = input(r, int(s), i);
    if (interleave && r == int(s) % comm().size()) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    work.push_back(comm().all_reduce_async(make_buffer(std::span<float>(d + at, size_t(sizes[s]))), ReduceOp::Sum));
    if (interleave) comm().all_reduce_value<int64_t>(int64_t(s));  // another collective between launches
    at += sizes[s];
  }
  for (size_t w = work.size(); w-- > 0;) work[w]->wait();
  bool ok = true;
  at = 0;
  for (size_t s = 0; s < sizes.size() && ok; ++s) {
    for (int64_t i = 0; i < sizes[s] && ok; ++i) {
      const float want = expected(int(s), sizes[s], i, c), got = d[at + i];
      if (std::memcmp(&want, &got, 4) != 0) {
        ADD_FAILURE() << "rank " << r << ": " << compression_name(c) << " slice " << s << " (" << sizes[s]
                      << " elements) element " << i << ": got " << got << " want " << want;
        ok = false;
      }
    }
    at += sizes[s];
  }
  return ok;
}

// Sizes: below the number of ranks (empty shares and chunks), odd, and past the ring's 64 KiB.
const std::vector<int64_t> kSizes = {1, 3, 7, 1001, 70001, 266610};

TEST(Hierarchical, ExactOrderUncompressed) { EXPECT_ALL(check_slices(Compression::None, kSizes, false)); }
TEST(Hierarchical, ExactOrderBf16) { EXPECT_ALL(check_slices(Compression::BF16, kSizes, false)); }
TEST(Hierarchical, ExactOrderFp16) { EXPECT_ALL(check_slices(Compression::FP16, kSizes, false)); }

// More slices than may cross the nodes at once, other collectives between the launches, ranks late.
TEST(Hierarchical, ManyInFlightBetweenOtherCollectives) {
  std::vector<int64_t> sizes;
  for (int s = 0; s < 12; ++s) sizes.push_back(5000 + 977 * s);
  EXPECT_ALL(check_slices(Compression::None, sizes, true));
  EXPECT_ALL(check_slices(Compression::BF16, sizes, true));
}

// Compression applies to float32 sums only: doubles and MAX are exact.
TEST(Hierarchical, CompressionLeavesDoublesAndMaxExact) {
  const int p = comm().size(), r = comm().rank();
  bool ok = true;
  Tensor d = comm().allocate_reduction_buffer(5000, DType::F64, Device::CPU, ReductionOptions{Compression::BF16, 0});
  ok &= d.defined();
  if (d.defined()) {
    double* x = d.data<double>();
    for (int64_t i = 0; i < 5000; ++i) x[i] = (r + 1) * (1.0 + 1e-9 * double(i));
    comm().all_reduce(d);
    for (int64_t i = 0; i < 5000 && ok; ++i) {
      double want = 0;
      for (int q = 0; q < p; ++q) want += (q + 1) * (1.0 + 1e-9 * double(i));
      ok &= std::fabs(x[i] - want) <= 1e-12 * want;  // float64 on the wire: no 16-bit rounding
    }
  }
  Tensor f = comm().allocate_reduction_buffer(3000, DType::F32, Device::CPU, ReductionOptions{Compression::BF16, 0});
  ok &= f.defined();
  if (f.defined()) {
    float* x = f.data<float>();
    for (int64_t i = 0; i < 3000; ++i) x[i] = input(r, 0, i);
    comm().all_reduce(f, ReduceOp::Max);
    for (int64_t i = 0; i < 3000 && ok; ++i) {
      float want = input(0, 0, i);
      for (int q = 1; q < p; ++q) want = std::max(want, input(q, 0, i));
      ok &= x[i] == want;
    }
  }
  if (!ok) ADD_FAILURE() << "rank " << r << ": compressed buffer changed a float64 SUM or a MAX";
  EXPECT_ALL(ok);
}

TEST(Hierarchical, DescribedForTheLog) {
  const int n = comm().size() / ranks_per_node();
  Tensor b = comm().allocate_reduction_buffer(100, DType::F32, Device::CPU, ReductionOptions{Compression::BF16, 0});
  const std::string d = comm().describe_reduction(b);
  bool ok = n == 1 ? d == "shared memory"
                   : d.find("hierarchical") != std::string::npos && d.find(str_cat(n, " nodes")) != std::string::npos &&
                         d.find("bf16") != std::string::npos;
  if (!ok) ADD_FAILURE() << "rank " << comm().rank() << ": described as '" << d << "' with " << n << " node(s)";
  EXPECT_ALL(ok && comm().describe_reduction(Tensor({4})).empty());
}

// The 16-bit formats themselves (every rank checks the same values).
TEST(WireFormat, RoundsToNearestEvenAndKeepsSpecials) {
  bool ok = true;
  auto bf = [](float v) { return round16(Compression::BF16, v); };
  auto hf = [](float v) { return round16(Compression::FP16, v); };
  ok &= bf(1.0f) == 1.0f && bf(-2.5f) == -2.5f && hf(0.333251953125f) == 0.333251953125f;
  ok &= bf(1.0f + 1.0f / 256) == 1.0f;                  // a tie: to the even 1.0
  ok &= bf(1.0f + 3.0f / 256) == 1.0f + 1.0f / 64;      // a tie: to the even 1 + 2/128
  ok &= hf(65504.0f) == 65504.0f && std::isinf(hf(70000.0f));  // fp16's largest finite, then infinity
  ok &= std::isnan(bf(std::nanf(""))) && std::isnan(hf(std::nanf(""))) && std::isinf(bf(INFINITY));
  ok &= std::fabs(bf(3.14159f) - 3.14159f) <= 3.14159f / 256;  // 8 significant bits
  if (!ok) ADD_FAILURE() << "16-bit rounding";
  EXPECT_ALL(ok);
}

}  // namespace
}  // namespace lockstep::comm

int main(int argc, char** argv) {
  return lockstep::comm::testing::run_mpi_gtests(argc, argv, "comm_hier_tests", &lockstep::comm::g_comm);
}
