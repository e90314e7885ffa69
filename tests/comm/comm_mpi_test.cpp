// Multi-rank tests of the MPI communicator, the bucketer and the consistency checks. Run by CTest as
//   mpirun --allow-run-as-root --oversubscribe --timeout 60 -np {2,4} comm_mpi_tests
// on this machine (label mpi; also with LOCKSTEP_RANKS_PER_NODE=2, which makes the communicator treat
// consecutive pairs of ranks as nodes), and across simulated hosts (label multinode,
// tests/cluster/multinode_comm_test.sh: 2 hosts x 1 and 2 hosts x 2 ranks).
// Every test checks closed forms (each rank contributes rank+1, or seeded small integers that sum
// exactly) and all-reduces its verdict, so every rank passes or fails together. There is no skip:
// if MPI does not start, the binary fails.
//
// Nothing assumes one node. The expected placement is derived independently of the communicator: the
// ranks that share a host (local_rank, local_size) from MPI_Comm_split_type(MPI_COMM_TYPE_SHARED); the
// nodes of the reduction likewise, or, when LOCKSTEP_RANKS_PER_NODE=K is set, consecutive groups of K
// ranks (ranks jK..jK+K-1 form node j; the knob changes only how gradients are reduced, not local_size,
// which still sizes the threads of the ranks sharing the real host). The reduction buffer's contract:
// it is defined (shared memory) on every rank whenever size > 1, the device is CPU, numel > 0,
// LOCKSTEP_SHARED_ALLREDUCE is not 0 on any rank, every node holds the same number of ranks and
// /dev/shm works; an all-reduce of a slice of it sums the ranks of each node in rank order, then the
// nodes' sums across the nodes.
//
// DISABLED_Watchdog.* and DISABLED_SharedMismatch.* are run separately (their own CTest entries): a
// rank deliberately stalls (or reduces another slice), the others must get a CommError within the
// timeout and abort the job.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
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
#include "comm/consistency.h"
#include "comm/gradient_bucketer.h"
#include "tests/comm/mpi_gtest_main.h"

namespace lockstep::comm {
namespace {

Communicator* g_comm = nullptr;
Communicator& comm() { return *g_comm; }

// Where the ranks are, as the tests expect it (derived in main(), before any test, without asking the
// communicator). node_of[q] is rank q's node for the reduction, nodes numbered in the order of their
// lowest rank.
struct Placement {
  int local_rank = 0, local_size = 1;  // among the ranks on this host (MPI_COMM_TYPE_SHARED)
  int hosts = 1;
  std::vector<int> node_of;
  int nodes = 1;
  bool uniform = true;  // every node holds the same number of ranks
  std::string source;   // of the nodes: "LOCKSTEP_RANKS_PER_NODE=2" or "MPI_Comm_split_type(SHARED)"
  std::string describe() const {
    return str_cat(node_of.size(), " ranks on ", hosts, " host(s), ", local_size, " on this one; reduced as ", nodes,
                   " node(s) (", source, uniform ? ")" : "; nodes of different sizes)");
  }
};
Placement g_place;

// The node of every rank from a split of MPI_COMM_WORLD (ranks in one part share a node).
std::vector<int> nodes_of(MPI_Comm part, int rank, int size) {
  int leader = rank;
  MPI_Allreduce(&rank, &leader, 1, MPI_INT, MPI_MIN, part);
  std::vector<int> leaders(size_t(size), 0);
  MPI_Allgather(&leader, 1, MPI_INT, leaders.data(), 1, MPI_INT, MPI_COMM_WORLD);
  std::vector<int> sorted = leaders;
  std::sort(sorted.begin(), sorted.end());
  sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
  std::vector<int> node_of(size_t(size), 0);
  for (int q = 0; q < size; ++q)
    node_of[size_t(q)] = int(std::lower_bound(sorted.begin(), sorted.end(), leaders[size_t(q)]) - sorted.begin());
  return node_of;
}

Placement expected_placement(int rank, int size) {
  Placement pl;
  MPI_Comm host;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &host);
  MPI_Comm_rank(host, &pl.local_rank);
  MPI_Comm_size(host, &pl.local_size);
  const std::vector<int> host_of = nodes_of(host, rank, size);
  MPI_Comm_free(&host);
  pl.hosts = *std::max_element(host_of.begin(), host_of.end()) + 1;
  const char* k_env = std::getenv("LOCKSTEP_RANKS_PER_NODE");
  const int k = k_env && *k_env ? std::atoi(k_env) : 0;
  if (k > 0) {
    pl.node_of.assign(size_t(size), 0);
    for (int q = 0; q < size; ++q) pl.node_of[size_t(q)] = q / k;
    pl.source = str_cat("LOCKSTEP_RANKS_PER_NODE=", k);
  } else {
    pl.node_of = host_of;
    pl.source = "MPI_Comm_split_type(SHARED)";
  }
  pl.nodes = *std::max_element(pl.node_of.begin(), pl.node_of.end()) + 1;
  std::vector<int> count(size_t(pl.nodes), 0);
  for (int q = 0; q < size; ++q) ++count[size_t(pl.node_of[size_t(q)])];
  pl.uniform = std::all_of(count.begin(), count.end(), [&](int c) { return c == count[0]; });
  return pl;
}

// Whether allocate_reduction_buffer must hand out shared memory here (see the contract above); the
// same answer on every rank, so ranks skip together.
bool expect_shared_buffer() { return comm().size() > 1 && g_place.uniform; }
#define REQUIRE_SHARED_BUFFER()                                                                          \
  if (!expect_shared_buffer()) GTEST_SKIP() << "no shared reduction buffer expected: " << g_place.describe()

// The verdict of every rank: true only if `ok` on all of them.
bool all_ok(bool ok) { return comm().all_reduce_value<int64_t>(ok ? 1 : 0, ReduceOp::Min) == 1; }
#define EXPECT_ALL(ok) EXPECT_TRUE(all_ok(ok)) << "failed on at least one rank (see its output)"

// nccl-tests style seeded data: a small integer from (seed, rank, index), so any sum is exact.
double seeded(uint64_t seed, int rank, int64_t i) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull ^ (static_cast<uint64_t>(rank) << 40) ^ static_cast<uint64_t>(i);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return static_cast<double>(static_cast<int64_t>(x % 33) - 16);
}

template <typename T>
class AllReduceTyped : public ::testing::Test {};
using ElemTypes = ::testing::Types<float, double, int64_t, uint8_t>;
TYPED_TEST_SUITE(AllReduceTyped, ElemTypes);

// Closed forms per op: SUM of (r+1)+(i%7) = p(p+1)/2 + p(i%7); MAX/MIN of (r+1)(1+i%3).
TYPED_TEST(AllReduceTyped, EveryOpAndSize) {
  using T = TypeParam;
  const int p = comm().size(), r = comm().rank();
  bool ok = true;
  // 0, below p, small (libnbc), and large enough for the ring in every type (>= 64 KiB).
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{3}, int64_t{7}, int64_t{1000}, int64_t{70001}, int64_t{266610}}) {
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
      std::vector<T> v(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i)
        v[static_cast<size_t>(i)] = op == ReduceOp::Sum ? static_cast<T>((r + 1) + i % 7) : static_cast<T>((r + 1) * (1 + i % 3));
      comm().all_reduce(std::span<T>(v), op);
      for (int64_t i = 0; i < n && ok; ++i) {
        T want = op == ReduceOp::Sum ? static_cast<T>(p * (p + 1) / 2 + p * (i % 7))
                 : op == ReduceOp::Max ? static_cast<T>(p * (1 + i % 3))
                                       : static_cast<T>(1 + i % 3);
        if (v[static_cast<size_t>(i)] != want) {
          ADD_FAILURE() << "rank " << r << ": " << reduce_op_name(op) << " n=" << n << " i=" << i << ": got "
                        << +v[static_cast<size_t>(i)] << " want " << +want;
          ok = false;
        }
      }
    }
  }
  EXPECT_ALL(ok);
}

TEST(AllReduce, SeededDataExactSums) {
  const int p = comm().size(), r = comm().rank();
  bool ok = true;
  for (int64_t n : {int64_t{266610}, int64_t{500210}, int64_t{1256410}, int64_t{12345}}) {
    std::vector<float> f(static_cast<size_t>(n));
    std::vector<double> d(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) f[static_cast<size_t>(i)] = static_cast<float>(d[static_cast<size_t>(i)] = seeded(7, r, i));
    comm().all_reduce(std::span<float>(f));
    comm().all_reduce(std::span<double>(d), ReduceOp::Max);
    for (int64_t i = 0; i < n && ok; ++i) {
      double sum = 0, mx = -1e9;
      for (int q = 0; q < p; ++q) {
        sum += seeded(7, q, i);
        mx = std::max(mx, seeded(7, q, i));
      }
      if (f[static_cast<size_t>(i)] != static_cast<float>(sum) || d[static_cast<size_t>(i)] != mx) {
        ADD_FAILURE() << "rank " << r << " n=" << n << " i=" << i << ": sum " << f[static_cast<size_t>(i)] << " want "
                      << sum << ", max " << d[static_cast<size_t>(i)] << " want " << mx;
        ok = false;
      }
    }
  }
  EXPECT_ALL(ok);
}

TEST(AllReduce, TensorOverload) {
  Tensor t = Tensor::full({3, 4}, comm().rank() + 1.0);
  comm().all_reduce(t);
  const double want = comm().size() * (comm().size() + 1) / 2.0;
  bool ok = true;
  for (int64_t i = 0; i < t.numel(); ++i) ok &= t.at(i) == want;
  EXPECT_ALL(ok);
}

// Several outstanding works at once (ring and libnbc paths), completed in reverse order.
TEST(AllReduce, AsyncOverlap) {
  const int p = comm().size(), r = comm().rank();
  const std::vector<int64_t> sizes = {100000, 5, 300000, 17, 65536, 1};
  std::vector<std::vector<float>> bufs;
  for (int64_t n : sizes) bufs.emplace_back(static_cast<size_t>(n), static_cast<float>(r + 1));
  std::vector<std::unique_ptr<Work>> works;
  for (auto& b : bufs) works.push_back(comm().all_reduce_async(std::span<float>(b)));
  // Drive progress a little, as the bucketer does between layers.
  for (int k = 0; k < 10; ++k)
    for (auto& w : works) w->test();
  for (size_t k = works.size(); k-- > 0;) works[k]->wait();
  for (auto& w : works) EXPECT_TRUE(w->is_completed());
  bool ok = true;
  for (auto& b : bufs)
    for (float x : b) ok &= x == static_cast<float>(p * (p + 1) / 2);
  EXPECT_ALL(ok);
}

TEST(Broadcast, FromEveryRoot) {
  const int p = comm().size(), r = comm().rank();
  bool ok = true;
  for (int root = 0; root < p; ++root) {
    std::vector<double> d(1000, r == root ? 10.0 * root + 0.5 : -1.0);
    std::vector<int64_t> i(3, r == root ? (int64_t{1} << 50) + root : 0);
    std::vector<uint8_t> u(70000, r == root ? static_cast<uint8_t>(200 + root) : 0);
    comm().broadcast(std::span<double>(d), root);
    comm().broadcast(std::span<int64_t>(i), root);
    comm().broadcast(std::span<uint8_t>(u), root);
    for (double x : d) ok &= x == 10.0 * root + 0.5;
    for (int64_t x : i) ok &= x == (int64_t{1} << 50) + root;
    for (uint8_t x : u) ok &= x == 200 + root;
  }
  EXPECT_ALL(ok);
  std::vector<float> f(2);
  EXPECT_THROW(comm().broadcast(std::span<float>(f), p), CommError);
}

TEST(AllGather, RankBlocksInOrder) {
  const int p = comm().size(), r = comm().rank();
  const int k = 5;
  std::vector<int64_t> send(k), recv(static_cast<size_t>(k * p), -1);
  for (int j = 0; j < k; ++j) send[static_cast<size_t>(j)] = r * 10 + j;
  comm().all_gather(std::span<const int64_t>(send), std::span<int64_t>(recv));
  bool ok = true;
  for (int q = 0; q < p; ++q)
    for (int j = 0; j < k; ++j) ok &= recv[static_cast<size_t>(q * k + j)] == q * 10 + j;
  EXPECT_ALL(ok);
  std::vector<int64_t> small(static_cast<size_t>(k));
  if (p > 1) {
    EXPECT_THROW(comm().all_gather(std::span<const int64_t>(send), std::span<int64_t>(small)), CommError);
  }
}

TEST(Communicator, DiscoveryAndBarrier) {
  const int p = comm().size(), r = comm().rank();
  EXPECT_EQ(comm().name(), "mpi");
  const char* env_size = std::getenv("OMPI_COMM_WORLD_SIZE");
  ASSERT_NE(env_size, nullptr) << "comm_mpi_tests must run under mpirun";
  EXPECT_EQ(p, std::atoi(env_size));
  EXPECT_EQ(r, std::atoi(std::getenv("OMPI_COMM_WORLD_RANK")));
  EXPECT_EQ(comm().local_size(), g_place.local_size) << g_place.describe();
  EXPECT_EQ(comm().local_rank(), g_place.local_rank) << g_place.describe();
  EXPECT_GE(default_threads_per_rank(comm()), 1);
  EXPECT_EQ(error_rank(), r);
  EXPECT_EQ(detect_comm_kind(), CommKind::Mpi);
  comm().barrier();
  // The local ranks agree on the local size.
  EXPECT_EQ(comm().all_reduce_value<int64_t>(comm().local_size(), ReduceOp::Max),
            comm().all_reduce_value<int64_t>(comm().local_size(), ReduceOp::Min));
}

TEST(Communicator, RefusesCudaBuffers) {
  float fake[4];
  try {
    comm().all_reduce(Buffer{fake, 4, ElemType::F32, Device::CUDA});
    FAIL() << "no throw";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("not CUDA-aware"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(str_cat("rank ", comm().rank())), std::string::npos) << e.what();
  }
  EXPECT_FALSE(comm().supports(Device::CUDA));
  EXPECT_FALSE(comm().poisoned());
  comm().barrier();
}

// ---- all-reduce in the reduction buffer (shared memory on each node) -------------------------------
// On one node or on several that hold the same number of ranks, the MPI communicator must hand out
// shared memory; with several nodes its all-reduces are hierarchical.
TEST(ReductionBuffer, SharedOnEveryNodeAndZeroed) {
  REQUIRE_SHARED_BUFFER();
  Tensor t = comm().allocate_reduction_buffer(266610, DType::F32, Device::CPU);
  ASSERT_TRUE(t.defined()) << "no shared reduction buffer with " << g_place.describe();
  EXPECT_EQ(t.numel(), 266610);
  EXPECT_EQ(t.shape(), (Shape{266610}));
  bool zero = true;
  for (int64_t i = 0; i < t.numel(); ++i) zero &= t.data()[i] == 0.f;
  EXPECT_ALL(zero);
  EXPECT_TRUE(comm().queues_collectives(make_buffer(t)));
  EXPECT_TRUE(comm().queues_collectives(make_buffer(t.view(1000, {5000}))));
  EXPECT_FALSE(comm().queues_collectives(make_buffer(Tensor({1000}))));
  EXPECT_FALSE(comm().allocate_reduction_buffer(100, DType::F32, Device::CUDA).defined());
}

// LOCKSTEP_SHARED_ALLREDUCE=0 turns it off; the ranks decide together, so one rank's setting is
// enough (else some ranks would wait in the mapping's collectives that others skip).
TEST(ReductionBuffer, TurnedOffByTheEnvironmentOnAnyRank) {
  REQUIRE_SHARED_BUFFER();
  for (int who : {-1, comm().size() - 1}) {
    if (who < 0 || comm().rank() == who) setenv("LOCKSTEP_SHARED_ALLREDUCE", "0", 1);
    Tensor t = comm().allocate_reduction_buffer(1000, DType::F32, Device::CPU);
    unsetenv("LOCKSTEP_SHARED_ALLREDUCE");
    EXPECT_ALL(!t.defined());
  }
  EXPECT_ALL(comm().allocate_reduction_buffer(1000, DType::F32, Device::CPU).defined());
}

template <typename T>
class ReductionBufferTyped : public ::testing::Test {};
TYPED_TEST_SUITE(ReductionBufferTyped, ElemTypes);

// Slices of every shape (one element, fewer elements than ranks, unaligned, the whole buffer) with
// every op; what lies outside the slice is left alone.
TYPED_TEST(ReductionBufferTyped, EveryOpOnSlices) {
  using T = TypeParam;
  const int p = comm().size(), r = comm().rank();
  const int64_t n = 70001;
  REQUIRE_SHARED_BUFFER();
  Tensor buf = comm().allocate_reduction_buffer(n, sizeof(T) == 8 ? DType::F64 : DType::F32, Device::CPU);
  ASSERT_TRUE(buf.defined()) << g_place.describe();
  // The communicator reduces raw memory: view the float32/float64 buffer as T (sizes allow it).
  T* a = static_cast<T*>(buf.raw());
  const int64_t cap = n * dtype_size(buf.dtype()) / int64_t(sizeof(T));
  bool ok = true;
  for (auto [off, count] : {std::pair<int64_t, int64_t>{0, cap}, {5, 1}, {7, 3}, {1001, 40000}, {cap - 2, 2}}) {
    for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
      auto value = [&](int64_t i) {
        return op == ReduceOp::Sum ? static_cast<T>((r + 1) + i % 7) : static_cast<T>((r + 1) * (1 + i % 3));
      };
      for (int64_t i = 0; i < cap; ++i) a[i] = i >= off && i < off + count ? value(i) : static_cast<T>(100 + r);
      comm().all_reduce(make_buffer(std::span<T>(a + off, size_t(count))), op);
      for (int64_t i = 0; i < cap && ok; ++i) {
        T want = static_cast<T>(100 + r);
        if (i >= off && i < off + count)
          want = op == ReduceOp::Sum ? static_cast<T>(p * (p + 1) / 2 + p * (i % 7))
                 : op == ReduceOp::Max ? static_cast<T>(p * (1 + i % 3))
                                       : static_cast<T>(1 + i % 3);
        if (a[i] != want) {
          ADD_FAILURE() << "rank " << r << ": " << reduce_op_name(op) << " slice [" << off << ", +" << count
                        << ") element " << i << ": got " << +a[i] << " want " << +want;
          ok = false;
        }
      }
    }
  }
  EXPECT_ALL(ok);
}

// More launches outstanding than the mapping has slots (64), waited on in reverse order; float sums
// of non-integers are bit-identical on every rank (each share is summed once, in rank order).
TEST(ReductionBuffer, ManyInFlightWaitedInAnyOrderSameBitsEverywhere) {
  const int r = comm().rank();
  const int64_t k = 150, len = 1000;
  REQUIRE_SHARED_BUFFER();
  Tensor buf = comm().allocate_reduction_buffer(k * len, DType::F32, Device::CPU);
  ASSERT_TRUE(buf.defined()) << g_place.describe();
  float* a = buf.data();
  for (int64_t i = 0; i < k * len; ++i) a[i] = static_cast<float>(seeded(7, r, i)) * 0.1f + 1e-3f * float(r);
  std::vector<std::unique_ptr<Work>> work;
  for (int64_t j = 0; j < k; ++j) work.push_back(comm().all_reduce_async(make_buffer(buf.view(j * len, {len})), ReduceOp::Sum));
  for (int64_t j = k - 1; j >= 0; --j) work[size_t(j)]->wait();
  std::vector<float> mine(a, a + k * len), root = mine;
  comm().broadcast(std::span<float>(root), 0);
  bool same = std::memcmp(mine.data(), root.data(), mine.size() * sizeof(float)) == 0;
  bool sums = true;
  for (int64_t i = 0; i < k * len && sums; ++i) {
    double want = 0;
    for (int q = 0; q < comm().size(); ++q) want += seeded(7, q, i) * 0.1 + 1e-3 * q;
    sums = std::fabs(mine[size_t(i)] - want) <= 1e-4 * (1 + std::fabs(want));
    if (!sums) ADD_FAILURE() << "rank " << r << " element " << i << ": " << mine[size_t(i)] << " want " << want;
  }
  EXPECT_ALL(same);
  EXPECT_ALL(sums);
}

// A rank waiting on another collective still does its share of a reduction launched before it (the
// others may be waiting for that share before they join the second collective).
TEST(ReductionBuffer, ShareIsDoneWhileWaitingOnAnotherCollective) {
  const int p = comm().size(), r = comm().rank();
  REQUIRE_SHARED_BUFFER();
  Tensor buf = comm().allocate_reduction_buffer(4096, DType::F32, Device::CPU);
  ASSERT_TRUE(buf.defined()) << g_place.describe();
  for (int64_t i = 0; i < buf.numel(); ++i) buf.data()[i] = float(r + 1);
  auto w = comm().all_reduce_async(buf);
  if (r == 0) w->wait();  // rank 0 joins the barrier only after the all-reduce completes
  comm().barrier();       // the others wait here without ever calling w->test()
  w->wait();
  bool ok = true;
  for (int64_t i = 0; i < buf.numel(); ++i) ok &= buf.data()[i] == float(p * (p + 1) / 2);
  EXPECT_ALL(ok);
}

// The order of the sums, which makes a run on H hosts x K ranks bit-identical to one host with
// LOCKSTEP_RANKS_PER_NODE=K: each node sums its ranks' non-integer values in rank order; then the
// nodes' sums are summed across nodes. With one or two nodes that order is fully determined (a+b = b+a),
// so every element must equal it bit for bit; with more, the order across nodes is MPI's, so the
// result must be the same bits on every rank and close to the exact sum.
TEST(ReductionBuffer, SumsEachNodeInRankOrderThenAcrossNodes) {
  const int p = comm().size(), r = comm().rank();
  REQUIRE_SHARED_BUFFER();
  const int64_t n = 300000;  // several tiles and, across nodes, the ring's sizes
  Tensor buf = comm().allocate_reduction_buffer(n, DType::F32, Device::CPU);
  ASSERT_TRUE(buf.defined()) << g_place.describe();
  auto x = [](int q, int64_t i) { return static_cast<float>(seeded(5, q, i)) * 0.1f + 1e-3f * float(q + 1); };
  float* a = buf.data();
  for (int64_t i = 0; i < n; ++i) a[i] = x(r, i);
  comm().all_reduce(buf);
  std::vector<float> root(a, a + n);
  comm().broadcast(std::span<float>(root), 0);
  bool same = std::memcmp(a, root.data(), size_t(n) * sizeof(float)) == 0;
  bool ordered = true;
  for (int64_t i = 0; i < n && ordered; ++i) {
    std::vector<float> node_sum(size_t(g_place.nodes), 0.f);
    std::vector<bool> started(size_t(g_place.nodes), false);
    double exact = 0;
    for (int q = 0; q < p; ++q) {  // rank order within each node
      const size_t j = size_t(g_place.node_of[size_t(q)]);
      node_sum[j] = started[j] ? node_sum[j] + x(q, i) : x(q, i);
      started[j] = true;
      exact += double(x(q, i));
    }
    if (g_place.nodes <= 2) {
      const float want = g_place.nodes == 1 ? node_sum[0] : node_sum[0] + node_sum[1];
      ordered = std::memcmp(&a[i], &want, sizeof want) == 0;
      if (!ordered)
        ADD_FAILURE() << "rank " << r << " element " << i << ": " << a[i] << " is not the sum in node order " << want
                      << " (" << g_place.describe() << ")";
    } else {
      ordered = std::fabs(a[i] - exact) <= 1e-4 * (1 + std::fabs(exact));
      if (!ordered) ADD_FAILURE() << "rank " << r << " element " << i << ": " << a[i] << " want about " << exact;
    }
  }
  EXPECT_ALL(same);
  EXPECT_ALL(ordered);
}

// ---- bucketer -------------------------------------------------------------------------------------
// Arena of 20,000 floats; listed segments get (r+1)*(1 + i%5) at element i; frozen ones a per-rank
// sentinel that must survive untouched. Small caps so segments cross bucket boundaries; one segment
// is larger than the cap.
void bucketer_sums_in_any_mark_order(const Tensor& arena) {
  const int p = comm().size(), r = comm().rank();
  const std::vector<GradientSegment> segs = {{0, 100},     {100, 250},  {350, 4000},   /* frozen [4350,5000) */
                                             {5000, 300},  {5300, 7000}, {12300, 50},  {12350, 7650}};
  ASSERT_EQ(arena.numel(), 20000);
  BucketOptions o;
  o.first_bucket_bytes = 1200;  // 300 floats
  o.bucket_cap_bytes = 8000;    // 2000 floats
  GradientBucketer b(comm(), arena, segs, o);
  ASSERT_GE(b.buckets().size(), 5u);
  auto listed = [&](int64_t i) {
    for (const auto& s : segs)
      if (i >= s.offset && i < s.offset + s.count) return true;
    return false;
  };
  bool ok = true;
  for (int step = 0; step < 3; ++step) {
    float* a = arena.data();
    for (int64_t i = 0; i < arena.numel(); ++i)
      a[i] = listed(i) ? static_cast<float>((r + 1) * (1 + i % 5)) : static_cast<float>(-1000 - r);
    // Even ranks mark in backward order; odd ranks in a scrambled order: launches must still match.
    std::vector<int> order = {6, 5, 4, 3, 2, 1, 0};
    if (r % 2 == 1) order = {2, 6, 0, 4, 5, 1, 3};
    for (int s : order) b.mark_ready(s);
    b.finish();
    for (int64_t i = 0; i < arena.numel(); ++i) {
      const float want = listed(i) ? static_cast<float>(p * (p + 1) / 2 * (1 + i % 5)) : static_cast<float>(-1000 - r);
      if (a[i] != want) {
        ADD_FAILURE() << "rank " << r << " step " << step << " element " << i << ": " << a[i] << " want " << want;
        ok = false;
        break;
      }
    }
  }
  EXPECT_ALL(ok);
}
TEST(GradientBucketer, SumsBucketsInAnyMarkOrder) { bucketer_sums_in_any_mark_order(Tensor({20000})); }
// The same over the communicator's reduction buffer (shared memory on one node), where every ready
// bucket is launched at once (queues_collectives) and reduced in launch order.
TEST(GradientBucketer, SumsBucketsInAnyMarkOrderInTheReductionBuffer) {
  REQUIRE_SHARED_BUFFER();
  Tensor arena = comm().allocate_reduction_buffer(20000, DType::F32, Device::CPU);
  ASSERT_TRUE(arena.defined()) << g_place.describe();
  EXPECT_TRUE(comm().queues_collectives(make_buffer(arena)));
  bucketer_sums_in_any_mark_order(arena);
}

TEST(GradientBucketer, DefaultBucketsAndPostScaleGiveMean) {
  const int p = comm().size(), r = comm().rank();
  // The MLP's gradient size with default buckets (1 MiB first, 4 MiB cap): two buckets.
  Tensor arena({266610});
  std::vector<GradientSegment> segs = {{0, 200704}, {200704, 256}, {200960, 65536}, {266496, 64}, {266560, 50}};
  BucketOptions o;
  o.post_scale = 1.0 / p;
  GradientBucketer b(comm(), arena, segs, o);
  float* a = arena.data();
  for (int64_t i = 0; i < arena.numel(); ++i) a[i] = static_cast<float>(2 * (r + 1));
  for (int s = 4; s >= 0; --s) b.mark_ready(s);
  b.finish();
  bool ok = true;
  for (int64_t i = 0; i < arena.numel(); ++i) ok &= a[i] == static_cast<float>(p + 1);
  EXPECT_ALL(ok);
}

// ---- consistency checks ---------------------------------------------------------------------------
TEST(Consistency, SameConfigPasses) {
  EXPECT_NO_THROW(check_same_on_all_ranks(comm(), "config", "model: mlp\nseed: 3\n"));
  EXPECT_NO_THROW(check_same_on_all_ranks(comm(), "world_size", std::to_string(comm().size())));
}

TEST(Consistency, DifferentConfigThrowsOnEveryRank) {
  const int p = comm().size(), r = comm().rank();
  const std::string mine = r == p - 1 ? "seed: 4" : "seed: 3";
  bool threw = false;
  try {
    check_same_on_all_ranks(comm(), "config", mine);
  } catch (const CommError& e) {
    threw = true;
    const std::string m = e.what();
    EXPECT_NE(m.find("different run files or seeds"), std::string::npos) << m;
    EXPECT_NE(m.find("'config' on rank " + std::to_string(p - 1)), std::string::npos) << m;
  }
  EXPECT_ALL(threw);
  EXPECT_FALSE(comm().poisoned());
  comm().barrier();  // still usable: nobody hung
}

TEST(Consistency, ReplicaDesyncNamesStepAndRank) {
  const int p = comm().size(), r = comm().rank();
  std::vector<float> params(5000);
  for (size_t i = 0; i < params.size(); ++i) params[i] = static_cast<float>(seeded(11, 0, static_cast<int64_t>(i)));
  EXPECT_NO_THROW(check_replicas_identical(comm(), params, 10));
  const int bad = p > 2 ? 2 : 1;
  if (r == bad) params[4321] = std::nextafter(params[4321], 1e9f);
  bool threw = false;
  try {
    check_replicas_identical(comm(), params, 77);
  } catch (const CommError& e) {
    threw = true;
    const std::string m = e.what();
    EXPECT_NE(m.find("diverged at step 77"), std::string::npos) << m;
    EXPECT_NE(m.find("first differing rank: " + std::to_string(bad)), std::string::npos) << m;
  }
  EXPECT_ALL(threw);
}

// ---- watchdog (run on its own: the job is aborted) --------------------------------------------------
// The last rank stalls instead of joining an all-reduce of `grad` (266,610 floats); every other rank
// must get a CommError naming the collective (`expect`), its size and the step within the 2 s
// timeout, then abort the job (exit 3).
void stalled_rank_is_reported(const Tensor& grad, const std::string& expect) {
  const int p = comm().size(), r = comm().rank();
  ASSERT_GE(p, 2);
  comm().barrier();
  comm().set_timeout(std::chrono::seconds(2));
  comm().set_step(42);
  if (r == p - 1) {
    std::this_thread::sleep_for(std::chrono::seconds(40));  // stuck; mpirun --timeout is the backstop
    std::_Exit(99);
  }
  const auto t0 = std::chrono::steady_clock::now();
  try {
    comm().all_reduce(grad);
    FAIL() << "rank " << r << ": no CommError";
  } catch (const CommError& e) {
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const std::string m = e.what();
    const bool named = m.find(expect) != std::string::npos && m.find("[step 42]") != std::string::npos &&
                       m.find("timed out after 2.0 s") != std::string::npos;
    EXPECT_TRUE(named) << m;
    EXPECT_GE(s, 1.9);
    EXPECT_LT(s, 3.5);
    EXPECT_TRUE(comm().poisoned());
    EXPECT_THROW(comm().barrier(), CommError);
    if (named && s >= 1.9 && s < 3.5) std::printf("WATCHDOG_OK rank %d after %.2f s: %s\n", r, s, m.c_str());
    std::fflush(stdout);
    comm().abort(3, m);
  }
}

TEST(DISABLED_Watchdog, StalledRankIsReportedNotHung) {
  stalled_rank_is_reported(Tensor::full({266610}, 1.0), "all_reduce(SUM, 266610 x float32 (1.07 MB, cpu)) #");
}

// The same in the reduction buffer: the others wait in shared memory, not in MPI.
TEST(DISABLED_Watchdog, StalledRankInSharedMemoryIsReportedNotHung) {
  Tensor grad = comm().allocate_reduction_buffer(266610, DType::F32, Device::CPU);
  ASSERT_TRUE(grad.defined());
  stalled_rank_is_reported(grad, "all_reduce(SUM, 266610 x float32 (1.07 MB, cpu), shared memory) #");
}

// Ranks that reduce different slices of the shared buffer at the same place in the sequence get a
// CommError naming both slices, instead of a wrong sum.
TEST(DISABLED_SharedMismatch, DifferentSlicesAreReported) {
  const int r = comm().rank();
  Tensor buf = comm().allocate_reduction_buffer(1000, DType::F32, Device::CPU);
  ASSERT_TRUE(buf.defined());
  comm().set_timeout(std::chrono::seconds(5));
  try {
    comm().all_reduce(buf.view(r == 0 ? 0 : 100, {100}));
    FAIL() << "rank " << r << ": no CommError";
  } catch (const CommError& e) {
    const std::string m = e.what();
    if (m.find("launched a different all-reduce") != std::string::npos)
      std::printf("MISMATCH_OK rank %d: %s\n", r, m.c_str());
    std::fflush(stdout);
    comm().abort(3, m);
  }
}

// Prints failures of ranks other than 0, prefixed with the rank (rank 0 keeps gtest's printer).
}  // namespace
}  // namespace lockstep::comm

int main(int argc, char** argv) {
  using namespace lockstep::comm;
  return lockstep::comm::testing::run_mpi_gtests(argc, argv, "comm_mpi_tests", &g_comm, [](Communicator& c) {
    g_place = expected_placement(c.rank(), c.size());
    if (c.rank() == 0) std::printf("comm_mpi_tests: expected placement: %s\n", g_place.describe().c_str());
  });
}
