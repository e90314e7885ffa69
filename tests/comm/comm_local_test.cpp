// Unit tests of comm/ that need no MPI: the local communicator, launch discovery from a faked
// environment, the thread rule, the bucket layout and bookkeeping, checksums.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/consistency.h"
#include "comm/gradient_bucketer.h"
#include "comm/launch_env.h"
#include "comm/local_communicator.h"

namespace lockstep::comm {
namespace {

EnvLookup fake_env(std::map<std::string, std::string> vars) {
  auto shared = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [shared](const char* name) -> const char* {
    auto it = shared->find(name);
    return it == shared->end() ? nullptr : it->second.c_str();
  };
}

// ---- local communicator ---------------------------------------------------------------------------
TEST(LocalCommunicator, Identity) {
  LocalCommunicator c;
  EXPECT_EQ(c.rank(), 0);
  EXPECT_EQ(c.size(), 1);
  EXPECT_EQ(c.local_rank(), 0);
  EXPECT_EQ(c.local_size(), 1);
  EXPECT_EQ(c.name(), "local");
  std::vector<float> f = {1.5f, -2.f, 3.f};
  for (ReduceOp op : {ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min}) {
    c.all_reduce(std::span<float>(f), op);
    EXPECT_EQ(f, (std::vector<float>{1.5f, -2.f, 3.f}));
  }
  std::vector<double> d = {1.0, 2.0};
  std::vector<int64_t> i = {-5, 1LL << 40};
  std::vector<uint8_t> u = {0, 255};
  c.all_reduce(std::span<double>(d));
  c.all_reduce(std::span<int64_t>(i), ReduceOp::Max);
  c.all_reduce(std::span<uint8_t>(u), ReduceOp::Min);
  EXPECT_EQ(i[1], 1LL << 40);
  EXPECT_EQ(u[1], 255);
  c.broadcast(std::span<double>(d), 0);
  EXPECT_EQ(d[1], 2.0);
  c.barrier();
  EXPECT_EQ(c.all_reduce_value<int64_t>(7), 7);
  EXPECT_EQ(c.launched(), 9);
}

TEST(LocalCommunicator, AllGatherCopies) {
  LocalCommunicator c;
  std::vector<int64_t> send = {4, 5, 6}, recv(3, 0);
  c.all_gather(std::span<const int64_t>(send), std::span<int64_t>(recv));
  EXPECT_EQ(recv, send);
  std::vector<int64_t> wrong(4);
  EXPECT_THROW(c.all_gather(std::span<const int64_t>(send), std::span<int64_t>(wrong)), CommError);
}

TEST(LocalCommunicator, ChecksArguments) {
  LocalCommunicator c;
  std::vector<float> f(4);
  EXPECT_THROW(c.broadcast(std::span<float>(f), 1), CommError);
  EXPECT_THROW(c.all_reduce(Buffer{nullptr, 3, ElemType::F32, Device::CPU}), CommError);
  EXPECT_NO_THROW(c.all_reduce(Buffer{nullptr, 0, ElemType::F32, Device::CPU}));
  EXPECT_TRUE(c.supports(Device::CUDA));
}

TEST(LocalCommunicator, AsyncWorkIsComplete) {
  LocalCommunicator c;
  c.set_step(12);
  Tensor t = Tensor::full({2, 3}, 2.0);
  auto w = c.all_reduce_async(t);
  EXPECT_TRUE(w->is_completed());
  EXPECT_TRUE(w->test());
  w->wait();
  EXPECT_NE(w->description().find("all_reduce(SUM, 6 x float32"), std::string::npos) << w->description();
  EXPECT_NE(w->description().find("[step 12]"), std::string::npos) << w->description();
  EXPECT_DOUBLE_EQ(t.at(5), 2.0);
}

TEST(LocalCommunicator, TimeoutAndLabel) {
  LocalCommunicator c;
  EXPECT_EQ(c.timeout(), Communicator::kDefaultTimeout);
  c.set_timeout(std::chrono::seconds(3));
  EXPECT_EQ(c.timeout(), std::chrono::milliseconds(3000));
  c.set_label("warm-up");
  EXPECT_EQ(c.label(), "warm-up");
}

TEST(Factory, LocalAndParse) {
  auto c = make_communicator(CommKind::Local);
  EXPECT_EQ(c->name(), "local");
  EXPECT_EQ(error_rank(), 0);
  EXPECT_EQ(parse_comm_kind("auto"), CommKind::Auto);
  EXPECT_EQ(parse_comm_kind("mpi"), CommKind::Mpi);
  EXPECT_EQ(parse_comm_kind("local"), CommKind::Local);
  EXPECT_EQ(parse_comm_kind("nccl"), CommKind::Nccl);
  try {
    parse_comm_kind("nccl2");
    FAIL() << "no throw";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("auto, local, mpi or nccl"), std::string::npos);
  }
}

TEST(Buffer, DescribeAndTensor) {
  Tensor t = Tensor::zeros({4, 5}, Device::CPU, DType::F64);
  Buffer b = make_buffer(t);
  EXPECT_EQ(b.count, 20);
  EXPECT_EQ(b.type, ElemType::F64);
  EXPECT_EQ(b.bytes(), 160);
  EXPECT_EQ(b.describe(), "20 x float64 (160 B, cpu)");
  EXPECT_EQ(elem_size(ElemType::U8), 1);
  EXPECT_STREQ(elem_type_name(ElemType::I64), "int64");
}

// ---- launch discovery -----------------------------------------------------------------------------
TEST(LaunchEnv, DetectKind) {
  EXPECT_EQ(detect_comm_kind(fake_env({})), CommKind::Local);
  EXPECT_EQ(detect_comm_kind(fake_env({{"OMPI_COMM_WORLD_SIZE", "2"}})), CommKind::Mpi);
  EXPECT_EQ(detect_comm_kind(fake_env({{"PMIX_RANK", "0"}})), CommKind::Mpi);
  EXPECT_EQ(detect_comm_kind(fake_env({{"PMI_RANK", "3"}})), CommKind::Mpi);
  // sbatch's batch shell: SLURM_NTASKS but no task id -> a local run.
  EXPECT_EQ(detect_comm_kind(fake_env({{"SLURM_NTASKS", "4"}, {"SLURM_JOB_ID", "9"}})), CommKind::Local);
  EXPECT_EQ(detect_comm_kind(fake_env({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}})), CommKind::Local);
  EXPECT_EQ(detect_comm_kind(fake_env({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}, {"PMIX_RANK", "1"}})),
            CommKind::Mpi);
  try {
    detect_comm_kind(fake_env({{"SLURM_PROCID", "1"}, {"SLURM_STEP_NUM_TASKS", "2"}}));
    FAIL() << "no throw";
  } catch (const CommError& e) {
    EXPECT_NE(std::string(e.what()).find("--mpi=pmix"), std::string::npos) << e.what();
  }
}

TEST(LaunchEnv, SlurmTasksPerNode) {
  EXPECT_EQ(slurm_tasks_on_node("4", 0), 4);
  EXPECT_EQ(slurm_tasks_on_node("2(x3),1", 0), 2);
  EXPECT_EQ(slurm_tasks_on_node("2(x3),1", 2), 2);
  EXPECT_EQ(slurm_tasks_on_node("2(x3),1", 3), 1);
  EXPECT_EQ(slurm_tasks_on_node("2(x3),1", 4), -1);
  EXPECT_EQ(slurm_tasks_on_node("1,3(x2)", 2), 3);
  EXPECT_EQ(slurm_tasks_on_node("x", 0), -1);
  EXPECT_EQ(slurm_tasks_on_node("2(3)", 0), -1);
  EXPECT_EQ(slurm_tasks_on_node("", 0), -1);
}

TEST(LaunchEnv, LocalPlacement) {
  auto p = local_placement_from_env(fake_env({{"OMPI_COMM_WORLD_RANK", "3"}, {"OMPI_COMM_WORLD_SIZE", "4"},
                                              {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}}),
                                    3, 4);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->local_rank, 1);
  EXPECT_EQ(p->local_size, 2);
  // Variables of another world (rank disagrees): not trusted.
  EXPECT_FALSE(local_placement_from_env(fake_env({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "4"},
                                                  {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
                                                  {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}}),
                                        3, 4));
  auto s = local_placement_from_env(fake_env({{"SLURM_PROCID", "6"}, {"SLURM_NTASKS", "7"}, {"SLURM_LOCALID", "0"},
                                              {"SLURM_NODEID", "3"}, {"SLURM_TASKS_PER_NODE", "2(x3),1"}}),
                                    6, 7);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->local_rank, 0);
  EXPECT_EQ(s->local_size, 1);
  auto s2 = local_placement_from_env(
      fake_env({{"SLURM_PROCID", "1"}, {"SLURM_NTASKS", "2"}, {"SLURM_LOCALID", "1"}, {"SLURM_NTASKS_PER_NODE", "2"}}),
      1, 2);
  ASSERT_TRUE(s2);
  EXPECT_EQ(s2->local_rank, 1);
  EXPECT_EQ(s2->local_size, 2);
  EXPECT_FALSE(local_placement_from_env(fake_env({}), 0, 2));
}

TEST(Threads, PerRankRule) {
  EXPECT_EQ(threads_per_rank(8, 8, 2), 4);   // unbound: share the machine
  EXPECT_EQ(threads_per_rank(8, 8, 3), 2);
  EXPECT_EQ(threads_per_rank(2, 2, 4), 1);   // oversubscribed: at least 1
  EXPECT_EQ(threads_per_rank(1, 2, 2), 1);   // mpirun bound each rank to one core
  EXPECT_EQ(threads_per_rank(4, 16, 4), 4);  // bound to a disjoint share of 4
  EXPECT_EQ(threads_per_rank(8, 8, 1), 8);
  EXPECT_EQ(threads_per_rank(0, 0, 0), 1);
  LocalCommunicator c;
  EXPECT_GE(default_threads_per_rank(c), 1);
}

// ---- bucket layout ----------------------------------------------------------------------------------
std::vector<GradientSegment> contiguous(const std::vector<int64_t>& counts) {
  std::vector<GradientSegment> s;
  int64_t off = 0;
  for (int64_t c : counts) {
    s.push_back({off, c});
    off += c;
  }
  return s;
}

TEST(GradientBucketer, ReverseOrderAndCaps) {
  LocalCommunicator c;
  Tensor arena = Tensor::zeros({1000});
  // first bucket 400 B = 100 floats, cap 800 B = 200 floats
  BucketOptions o;
  o.first_bucket_bytes = 400;
  o.bucket_cap_bytes = 800;
  GradientBucketer b(c, arena, contiguous({50, 60, 70, 80, 90, 100, 40}), o);
  const auto& bk = b.buckets();
  // reverse: 40 (seg 6) + 100 would exceed 100 -> bucket0 = {6}; 100+90 = 190 <= 200 -> {5,4};
  // 80 + 70 = 150, +60 = 210 > 200 -> {3,2}; {1,0} = 110.
  ASSERT_EQ(bk.size(), 4u);
  EXPECT_EQ(bk[0].segments, (std::vector<int>{6}));
  EXPECT_EQ(bk[1].segments, (std::vector<int>{5, 4}));
  EXPECT_EQ(bk[2].segments, (std::vector<int>{3, 2}));
  EXPECT_EQ(bk[3].segments, (std::vector<int>{1, 0}));
  EXPECT_EQ(bk[0].offset, 450);
  EXPECT_EQ(bk[0].count, 40);
  EXPECT_EQ(bk[1].offset, 260);
  EXPECT_EQ(bk[1].count, 190);
  EXPECT_EQ(bk[3].offset, 0);
  EXPECT_EQ(bk[3].count, 110);
}

// Model a's layout, kernel then bias per layer: 784x300 (+300), 300x100 (+100), 100x10 (+10). The first
// bucket (1 MiB = 262,144 floats) holds the last two layers (31,110 floats) and could take the first
// layer's bias too, but then it would wait for that layer's backward pass: grouped by layer, it stops
// before it. Without groups it takes the bias.
TEST(GradientBucketer, KeepsALayersWeightsTogether) {
  LocalCommunicator c;
  Tensor arena = Tensor::zeros({266610});
  for (bool grouped : {true, false}) {
    SCOPED_TRACE(str_cat("grouped=", grouped));
    std::vector<GradientSegment> segs = contiguous({235200, 300, 30000, 100, 1000, 10});
    if (grouped)
      for (size_t i = 0; i < segs.size(); ++i) segs[i].group = int(i / 2);
    GradientBucketer b(c, arena, segs, BucketOptions{});
    const auto& bk = b.buckets();
    ASSERT_EQ(bk.size(), 2u);
    EXPECT_EQ(bk[0].segments, grouped ? (std::vector<int>{5, 4, 3, 2}) : (std::vector<int>{5, 4, 3, 2, 1}));
    EXPECT_EQ(bk[1].segments, grouped ? (std::vector<int>{1, 0}) : (std::vector<int>{0}));
  }
  // A group larger than a bucket is split between its segments, never inside one.
  BucketOptions small;
  small.first_bucket_bytes = small.bucket_cap_bytes = 4 * 1000;
  std::vector<GradientSegment> segs = contiguous({3000, 300, 500, 10});
  for (size_t i = 0; i < segs.size(); ++i) segs[i].group = int(i / 2);  // {3000, 300}, {500, 10}
  GradientBucketer b(c, arena, segs, small);
  ASSERT_EQ(b.buckets().size(), 3u);
  EXPECT_EQ(b.buckets()[0].segments, (std::vector<int>{3, 2}));
  EXPECT_EQ(b.buckets()[1].segments, (std::vector<int>{1}));  // the group of 3,300 does not fit whole
  EXPECT_EQ(b.buckets()[2].segments, (std::vector<int>{0}));
}

TEST(GradientBucketer, HugeSegmentAndGaps) {
  LocalCommunicator c;
  Tensor arena = Tensor::zeros({10000});
  BucketOptions o;
  o.first_bucket_bytes = 400;
  o.bucket_cap_bytes = 800;
  // seg0 [0,10), frozen gap [10,20), seg1 [20,30), seg2 [30,5030) huge, seg3 [5030,5040)
  GradientBucketer b(c, arena, {{0, 10}, {20, 10}, {30, 5000}, {5030, 10}}, o);
  const auto& bk = b.buckets();
  ASSERT_EQ(bk.size(), 4u);
  EXPECT_EQ(bk[0].segments, (std::vector<int>{3}));
  EXPECT_EQ(bk[1].segments, (std::vector<int>{2}));
  EXPECT_EQ(bk[1].count, 5000);
  EXPECT_EQ(bk[2].segments, (std::vector<int>{1}));  // the gap closes it
  EXPECT_EQ(bk[3].segments, (std::vector<int>{0}));
}

TEST(GradientBucketer, DefaultsOneBucketForSmallModel) {
  LocalCommunicator c;
  Tensor arena = Tensor::zeros({1000});
  GradientBucketer b(c, arena, contiguous({100, 200, 300, 400}));
  ASSERT_EQ(b.buckets().size(), 1u);
  EXPECT_EQ(b.buckets()[0].count, 1000);
  EXPECT_EQ(b.options().first_bucket_bytes, 1 << 20);
  EXPECT_EQ(b.options().bucket_cap_bytes, 4 << 20);
}

TEST(GradientBucketer, RejectsBadSegments) {
  LocalCommunicator c;
  Tensor arena = Tensor::zeros({100});
  EXPECT_THROW(GradientBucketer(c, arena, {{0, 10}, {5, 10}}), UserError);   // overlap
  EXPECT_THROW(GradientBucketer(c, arena, {{95, 10}}), UserError);          // outside
  EXPECT_THROW(GradientBucketer(c, arena, {{0, 0}}), UserError);            // empty
  BucketOptions o;
  o.bucket_cap_bytes = 0;
  EXPECT_THROW(GradientBucketer(c, arena, {{0, 10}}, o), UserError);
  EXPECT_THROW(GradientBucketer(c, Tensor::zeros({10}, Device::CPU, DType::F64), {{0, 10}}), UserError);
}

TEST(GradientBucketer, LaunchesInBucketOrder) {
  LocalCommunicator c;
  Tensor arena = Tensor::zeros({100});
  BucketOptions o;
  o.first_bucket_bytes = 40;
  o.bucket_cap_bytes = 40;
  GradientBucketer b(c, arena, contiguous({10, 10, 10}), o);  // buckets {2}, {1}, {0}
  ASSERT_EQ(b.buckets().size(), 3u);
  const int64_t before = c.launched();
  b.mark_ready(0);  // last bucket: must wait for the others
  EXPECT_EQ(b.launched(), 0);
  b.mark_ready(2);
  EXPECT_EQ(b.launched(), 1);
  b.mark_ready(1);
  EXPECT_EQ(b.launched(), 3);
  EXPECT_THROW(b.mark_ready(1), UserError);
  EXPECT_THROW(b.mark_ready(3), UserError);
  b.finish();
  EXPECT_EQ(c.launched() - before, 3);
  // next step starts clean
  b.mark_all_ready();
  b.finish();
  EXPECT_EQ(c.launched() - before, 6);
}

// A communicator whose all-reduces complete only when the test says so (or at once with
// `complete_at_once`), which may claim to queue collectives itself (as NCCL does on its stream), and
// which logs the sequence of collectives: "ar<count>" for an all-reduce, "barrier".
class HeldCommunicator : public Communicator {
 public:
  explicit HeldCommunicator(bool queues, bool complete_at_once = false)
      : queues_(queues), at_once_(complete_at_once) {}
  struct Held {
    bool done = false;
  };
  class HeldWork : public Work {
   public:
    explicit HeldWork(std::shared_ptr<Held> h) : h_(std::move(h)) {}
    bool test() override { return h_->done; }
    void wait(std::chrono::milliseconds) override { h_->done = true; }
    std::string description() const override { return "held all_reduce"; }

   protected:
    std::chrono::milliseconds default_timeout() const override { return std::chrono::milliseconds(1000); }

   private:
    std::shared_ptr<Held> h_;
  };
  int rank() const override { return 0; }
  int size() const override { return 2; }
  int local_rank() const override { return 0; }
  int local_size() const override { return 2; }
  std::string name() const override { return "held"; }
  bool supports(Device) const override { return true; }
  bool queues_collectives(const Buffer&) const override { return queues_; }
  std::unique_ptr<Work> all_reduce_async(Buffer b, ReduceOp) override {
    log.push_back(str_cat("ar", b.count));
    return hold();
  }
  std::unique_ptr<Work> broadcast_async(Buffer, int) override { return hold(); }
  std::unique_ptr<Work> all_gather_async(Buffer, Buffer) override { return hold(); }
  std::unique_ptr<Work> barrier_async() override {
    log.push_back("barrier");
    return hold();
  }
  [[noreturn]] void abort(int, const std::string& m) override { throw CommError(m); }
  int in_flight() const {
    int n = 0;
    for (const auto& h : held) n += !h->done;
    return n;
  }
  std::vector<std::shared_ptr<Held>> held;
  std::vector<std::string> log;

 private:
  std::unique_ptr<Work> hold() {
    held.push_back(std::make_shared<Held>());
    held.back()->done = at_once_;
    return std::make_unique<HeldWork>(held.back());
  }
  bool queues_, at_once_;
};

TEST(GradientBucketer, KeepsOneBucketInFlightUnlessTheTransportQueues) {
  BucketOptions o;
  o.first_bucket_bytes = 40;
  o.bucket_cap_bytes = 40;
  for (bool queues : {false, true})
    for (bool one : {true, false}) {
      SCOPED_TRACE(str_cat("queues_collectives=", queues, " one_in_flight=", one));
      const bool serial = one && !queues;
      HeldCommunicator c(queues);
      Tensor arena = Tensor::zeros({30});
      o.one_in_flight = one;
      GradientBucketer b(c, arena, contiguous({10, 10, 10}), o);  // buckets {2}, {1}, {0}
      b.mark_ready(2);
      EXPECT_EQ(b.launched(), 1);
      b.mark_ready(1);  // ready: launched here, after waiting for the first when serial
      EXPECT_EQ(b.launched(), 2);
      EXPECT_EQ(c.in_flight(), serial ? 1 : 2);
      b.mark_ready(0);
      EXPECT_EQ(b.launched(), 3);
      EXPECT_EQ(c.in_flight(), serial ? 1 : 3);
      b.finish();  // waits for the rest, in order
      EXPECT_EQ(c.held.size(), 3u);
      EXPECT_EQ(c.in_flight(), 0);
      b.mark_all_ready();  // the next step starts clean
      EXPECT_EQ(b.launched(), 3);
      b.finish();
      EXPECT_EQ(c.held.size(), 6u);
    }
}

// The ordering contract under sync BN: the backward pass issues its own all-reduces between the
// buckets', so a bucket's place in the sequence of collectives must not depend on how fast the one
// before it completes (which differs between ranks). Here the sequence is the same whether every
// all-reduce completes at once or only when waited for.
TEST(GradientBucketer, LaunchesAtTheSamePlaceWhateverTheTiming) {
  BucketOptions o;
  o.first_bucket_bytes = 40;
  o.bucket_cap_bytes = 40;
  for (bool one : {true, false}) {
    std::vector<std::string> logs[2];
    for (bool fast : {false, true}) {
      SCOPED_TRACE(str_cat("one_in_flight=", one, " complete_at_once=", fast));
      HeldCommunicator c(false, fast);
      Tensor arena = Tensor::zeros({60});
      o.one_in_flight = one;
      GradientBucketer b(c, arena, contiguous({10, 20, 30}), o);  // buckets {2}, {1}, {0}
      for (int s : {2, 1, 0}) {
        b.mark_ready(s);
        c.barrier();  // sync BN's all-reduce in the layer below
      }
      b.finish();
      logs[fast] = c.log;
    }
    EXPECT_EQ(logs[0], logs[1]) << "one_in_flight=" << one;
    EXPECT_EQ(logs[0], (std::vector<std::string>{"ar30", "barrier", "ar20", "barrier", "ar10", "barrier"}));
  }
}

TEST(GradientBucketer, FinishNamesMissingSegments) {
  LocalCommunicator c;
  Tensor arena = Tensor::zeros({100});
  GradientBucketer b(c, arena, contiguous({10, 10, 10}));
  b.mark_ready(2);
  try {
    b.finish();
    FAIL() << "no throw";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("(0, 1)"), std::string::npos) << e.what();
  }
}

TEST(GradientBucketer, PostScaleAndFrozenUntouched) {
  LocalCommunicator c;
  Tensor arena = Tensor::full({30}, 2.0);
  BucketOptions o;
  o.post_scale = 0.5;
  GradientBucketer b(c, arena, {{0, 10}, {20, 10}}, o);
  b.mark_all_ready();
  b.finish();
  EXPECT_DOUBLE_EQ(arena.at(0), 1.0);
  EXPECT_DOUBLE_EQ(arena.at(15), 2.0);  // not listed: untouched
  EXPECT_DOUBLE_EQ(arena.at(29), 1.0);
}

// ---- consistency --------------------------------------------------------------------------------
TEST(Consistency, Fnv1a64KnownValues) {
  EXPECT_EQ(fnv1a64(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cull);
  EXPECT_EQ(fnv1a64("foobar"), 0x85944171f73967e8ull);
}

TEST(Consistency, ChecksumSeesEveryBit) {
  std::vector<float> v(1001);
  std::iota(v.begin(), v.end(), 0.f);
  const uint64_t h = checksum(std::span<const float>(v));
  EXPECT_EQ(h, checksum(std::span<const float>(v)));
  v[1000] = std::nextafter(v[1000], 2000.f);
  EXPECT_NE(h, checksum(std::span<const float>(v)));
  std::vector<float> z1 = {0.f}, z2 = {-0.f};
  EXPECT_NE(checksum(std::span<const float>(z1)), checksum(std::span<const float>(z2)));
  Tensor t = Tensor::from_vector({3}, std::vector<float>{1, 2, 3});
  std::vector<float> same = {1, 2, 3};
  EXPECT_EQ(checksum(t), checksum(std::span<const float>(same)));
}

TEST(Consistency, SingleRankAlwaysAgrees) {
  LocalCommunicator c;
  EXPECT_NO_THROW(check_same_on_all_ranks(c, "config", "seed: 1"));
  std::vector<float> p = {1, 2};
  EXPECT_NO_THROW(check_replicas_identical(c, p, 5));
}

}  // namespace
}  // namespace lockstep::comm
