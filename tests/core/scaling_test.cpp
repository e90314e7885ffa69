// The scaling model of `lockstep scale-estimate` (core/scaling.h, label unit): the alpha-beta arithmetic
// of the hierarchical all-reduce, the overlap simulation against hand-computed timelines, the FLOPs
// apportionment, and the command's exit status 2 with the flag named on bad input.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "core/error.h"
#include "core/scaling.h"

using namespace lockstep;
using namespace lockstep::scaling;

namespace {

constexpr double kTol = 1e-12;

// A model with round numbers: 1 GB/s of payload, 10 us per ring step, shared memory 1 ns/byte with
// 2 ranks and 2 ns/byte with 8, 1 us per bucket; ring sums 0.1 ns/byte.
CommModel round_model() {
  CommModel m;
  m.link.rate_bits_per_s = 8e9;
  m.link.efficiency = 1.0;
  m.link.alpha_s = 10e-6;
  m.shm.alpha_s = 1e-6;
  m.shm.per_byte_s = {{2, 1e-9}, {8, 2e-9}};
  m.reduce_s_per_byte = 0.1e-9;
  m.in_flight = 2;
  return m;
}

}  // namespace

TEST(ScalingRate, ParsesTcUnits) {
  EXPECT_DOUBLE_EQ(parse_link_rate("25gbit"), 25e9);
  EXPECT_DOUBLE_EQ(parse_link_rate("10Gbit"), 10e9);
  EXPECT_DOUBLE_EQ(parse_link_rate("2.5gbit"), 2.5e9);
  EXPECT_DOUBLE_EQ(parse_link_rate("100mbit"), 100e6);
  EXPECT_DOUBLE_EQ(parse_link_rate("800kbit"), 800e3);
  EXPECT_DOUBLE_EQ(parse_link_rate("25gbit/s"), 25e9);
  EXPECT_EQ(rate_str(25e9), "25 Gbit/s");
  EXPECT_EQ(rate_str(100e6), "100 Mbit/s");
}

TEST(ScalingRate, RefusesOtherFormsNamingTheFlag) {
  for (const char* bad : {"25gb", "25", "fast", "", "gbit", "-1gbit", "0gbit", "1.2.3gbit", "25 gbit", "25GB/s"}) {
    try {
      parse_link_rate(bad, "--network");
      ADD_FAILURE() << "'" << bad << "' was accepted";
    } catch (const UserError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("--network"), std::string::npos) << msg;
      EXPECT_NE(msg.find("25gbit"), std::string::npos) << msg;
      EXPECT_NE(msg.find(std::string("'") + bad + "'"), std::string::npos) << msg;
    }
  }
}

TEST(ScalingCost, ARingStepIsTheLongerOfTheWireAndTheRanksCpuWork) {  // and eager vs rendezvous
  CommModel m = round_model();     // 1 GB/s, 10 us
  m.link.efficiency = 0.8;         // messages up to the eager limit (64 KiB)
  m.link.efficiency_large = 0.5;   // larger ones: 0.5 GB/s of payload
  EXPECT_NEAR(m.link.wire_bytes_per_s(65536), 0.8e9, 1e-3);
  EXPECT_NEAR(m.link.wire_bytes_per_s(65537), 0.5e9, 1e-3);
  EXPECT_NEAR(ring_step_seconds(m, 64e3, {2, 1}), 10e-6 + 32e3 / 0.8e9, kTol);  // 32 kB messages: eager
  m.link.ceiling_bytes_per_s = 0.25e9;  // the TCP path's own limit
  EXPECT_NEAR(m.link.wire_bytes_per_s(1e6), 0.25e9, 1e-3);
  m.link.ceiling_bytes_per_s = 0.0;
  // 2 nodes x 1 rank, a 2 MB bucket: 1 MB per step on the link (2 ms); the rank sends and receives 1 MB.
  m.link.step_cpu_s = 5e-6;
  m.link.cpu_s_per_byte = 0.5e-9;  // 1 ms + 5 us of CPU: the wire is longer
  EXPECT_NEAR(ring_step_tcp_cpu_seconds(m, 2e6, {2, 1}), 1.005e-3, kTol);
  EXPECT_NEAR(ring_step_seconds(m, 2e6, {2, 1}), 10e-6 + 2e-3, kTol);
  m.link.cpu_s_per_byte = 2e-9;  // 4 ms of CPU: CPU-bound
  EXPECT_NEAR(ring_step_seconds(m, 2e6, {2, 1}), 10e-6 + 4.005e-3, kTol);
  // 2 nodes x 4 ranks: the link carries the same 1 MB, each rank's CPU a quarter of it.
  EXPECT_NEAR(ring_step_tcp_cpu_seconds(m, 2e6, {2, 4}), 1.005e-3, kTol);
  EXPECT_NEAR(ring_step_seconds(m, 2e6, {2, 4}), 10e-6 + 2e-3, kTol);
}

TEST(ScalingCost, SizesAsTcWritesThem) {
  EXPECT_DOUBLE_EQ(parse_size_bytes("640kb", "--shaper-burst"), 640.0 * 1024);
  EXPECT_DOUBLE_EQ(parse_size_bytes("1mb", "--shaper-burst"), 1048576.0);
  EXPECT_DOUBLE_EQ(parse_size_bytes("4096", "--shaper-burst"), 4096.0);
  EXPECT_DOUBLE_EQ(parse_size_bytes("0", "--shaper-burst"), 0.0);
  EXPECT_THROW(parse_size_bytes("640kbit", "--shaper-burst"), UserError);
  EXPECT_THROW(parse_size_bytes("lots", "--shaper-burst"), UserError);
}

TEST(ScalingCost, SharedMemoryPerByteInterpolatesInLog2OfTheRanks) {
  SharedMemoryCost c;
  c.alpha_s = 1e-6;
  c.per_byte_s = {{2, 1e-9}, {8, 4e-9}};
  EXPECT_EQ(c.per_byte(1), 0.0);
  EXPECT_EQ(c.seconds(1e6, 1), 0.0);  // one rank per node: nothing to reduce
  EXPECT_DOUBLE_EQ(c.per_byte(2), 1e-9);
  EXPECT_NEAR(c.per_byte(4), 2.5e-9, 1e-21);  // halfway between log2 2 and log2 8
  EXPECT_DOUBLE_EQ(c.per_byte(8), 4e-9);
  EXPECT_DOUBLE_EQ(c.per_byte(64), 4e-9);  // past the largest measured: the largest's
  EXPECT_NEAR(c.seconds(1e6, 2), 1e-6 + 1e-3, kTol);
}

TEST(ScalingCost, AllReduceOfOneBucketByHand) {
  const CommModel m = round_model();
  const double s = 4e6;  // 4 MB
  // One node, 2 ranks: the in-place pass only.
  EXPECT_NEAR(allreduce_seconds(m, s, {1, 2}), 1e-6 + 4e-3, kTol);
  // 2 nodes x 1 rank: two ring steps of alpha + (s/2)/B, and the reduce-scatter step's sum of s/2.
  EXPECT_NEAR(allreduce_seconds(m, s, {2, 1}), 2 * (10e-6 + 2e-3) + 2e6 * 0.1e-9, kTol);
  // 4 nodes x 8 ranks: shared memory (the one-node pass + 1/(2L) more), 6 steps of alpha + (s/4)/B (the
  // 8 rings share the link: s/4 per step, not s/32), 3 reduce-scatter sums of s/(4*8).
  const double shm = 1e-6 + s * 2e-9 + s * 2e-9 / 16;
  EXPECT_NEAR(allreduce_seconds(m, s, {4, 8}), shm + 6 * (10e-6 + 1e-3) + 3 * (s / 32) * 0.1e-9, kTol);
  // The link's time per step does not depend on the ranks per node.
  EXPECT_DOUBLE_EQ(ring_step_seconds(m, s, {4, 1}), ring_step_seconds(m, s, {4, 8}));
}

TEST(ScalingCost, CompressionHalvesTheBytesOnTheLinkAndAddsTheCodec) {
  CommModel m = round_model();
  m.wire_factor = 0.5;
  m.encode_s_per_byte = 0.3e-9;
  m.decode_s_per_byte = 0.2e-9;
  const double s = 4e6;
  EXPECT_NEAR(ring_step_seconds(m, s, {2, 1}), 10e-6 + 1e-3, kTol);
  // 3 nodes x 1 rank, chunk s/3: 2 reduce-scatter steps (encode + decode), the first all-gather step
  // (encode + 2 decodes), the second (a decode).
  const double chunk = s / 3;
  EXPECT_NEAR(ring_step_cpu_seconds(m, s, {3, 1}, 0), chunk * 0.5e-9, kTol);
  EXPECT_NEAR(ring_step_cpu_seconds(m, s, {3, 1}, 1), chunk * 0.5e-9, kTol);
  EXPECT_NEAR(ring_step_cpu_seconds(m, s, {3, 1}, 2), chunk * 0.7e-9, kTol);
  EXPECT_NEAR(ring_step_cpu_seconds(m, s, {3, 1}, 3), chunk * 0.2e-9, kTol);
  EXPECT_NEAR(allreduce_seconds(m, s, {3, 1}), 4 * (10e-6 + s / 3 * 0.5 / 1e9) + chunk * 1.9e-9, kTol);
}

TEST(ScalingStep, OneRankIsTheSingleProcessStep) {
  BackwardProfile prof;
  prof.forward_s = 1e-3, prof.backward_s = 2e-3, prof.update_s = 0.5e-3, prof.single_rank_step_s = 3e-3;
  prof.progress_s = {1e-3, 2e-3};
  const StepEstimate e = estimate_step(prof, {{1e6, 0}, {1e6, 1}}, round_model(), {1, 1});
  EXPECT_DOUBLE_EQ(e.step_s, 3e-3);
  EXPECT_DOUBLE_EQ(e.exposed_s, 0.0);
  prof.single_rank_step_s = 0.0;  // no folded update: forward + backward + update
  EXPECT_DOUBLE_EQ(estimate_step(prof, {{1e6, 0}}, round_model(), {1, 1}).step_s, 3.5e-3);
}

TEST(ScalingStep, OneNodeAddsEveryBucketsSharedMemoryWork) {
  // The in-place sums run on the rank's own thread: nothing hides them.
  BackwardProfile prof;
  prof.forward_s = 1e-3, prof.backward_s = 2e-3, prof.update_s = 0.5e-3;
  prof.progress_s = {0.5e-3, 1.5e-3, 2e-3};
  const std::vector<BucketSpec> buckets = {{1e6, 0}, {2e6, 1}, {1e6, 2}};
  const StepEstimate e = estimate_step(prof, buckets, round_model(), {1, 2});
  const double shm = 3 * 1e-6 + 4e6 * 1e-9;
  EXPECT_NEAR(e.step_s, 3.5e-3 + shm, kTol);
  EXPECT_NEAR(e.comm_cpu_s, shm, kTol);
  EXPECT_NEAR(e.exposed_s, shm, kTol);
  EXPECT_NEAR(e.allreduce_s, shm, kTol);
}

TEST(ScalingStep, ABucketReadyAtTheEndIsExposedWhole) {
  BackwardProfile prof;
  prof.forward_s = 1e-3, prof.backward_s = 2e-3, prof.update_s = 0.5e-3;
  prof.progress_s = {2e-3};
  const CommModel m = round_model();
  const StepEstimate e = estimate_step(prof, {{4e6, 0}}, m, {2, 1});
  EXPECT_NEAR(e.step_s, 3.5e-3 + allreduce_seconds(m, 4e6, {2, 1}), kTol);
  EXPECT_NEAR(e.allreduce_s, allreduce_seconds(m, 4e6, {2, 1}), kTol);
}

TEST(ScalingStep, RingStepsAdvanceOnlyAtProgressPoints) {
  // Bucket 0 (2 MB: steps of 10 us + 1 ms) is ready at 0.1 ms of a 10 ms backward pass; bucket 1
  // (tiny) at its end.
  CommModel m = round_model();
  m.reduce_s_per_byte = 0.0;
  const std::vector<BucketSpec> buckets = {{2e6, 0}, {4.0, 1}};
  const double tiny = 2 * (10e-6 + 2.0 / 1e9);
  BackwardProfile coarse;  // one progress point between: step 2 is posted only at the end
  coarse.backward_s = 10e-3;
  coarse.progress_s = {0.1e-3, 10e-3};
  StepEstimate e = estimate_step(coarse, buckets, m, {2, 1});
  // Step 1 of bucket 0 arrives at 1.11 ms but step 2 is posted only at 10 ms, after bucket 1's first
  // step (2 ns on the link): it arrives at 10 ms + 2 ns + 1 ms + 10 us; bucket 1's second step follows.
  EXPECT_NEAR(e.step_s, 10e-3 + 2e-9 + 1.01e-3 + tiny / 2, 1e-9);
  BackwardProfile fine = coarse;  // a layer finishes every 0.1 ms: both steps hide under the backward pass
  fine.progress_s.clear();
  for (int j = 1; j <= 100; ++j) fine.progress_s.push_back(j * 0.1e-3);
  std::vector<BucketSpec> fine_buckets = {{2e6, 0}, {4.0, 99}};
  e = estimate_step(fine, fine_buckets, m, {2, 1});
  EXPECT_NEAR(e.step_s, 10e-3 + tiny, 1e-9);
  EXPECT_NEAR(e.exposed_s, tiny, 1e-9);
}

TEST(ScalingStep, BucketsShareTheLinkAndAtMostInFlightCrossAtOnce) {
  CommModel m = round_model();
  m.reduce_s_per_byte = 0.0;
  m.link.alpha_s = 0.0;
  BackwardProfile prof;
  prof.backward_s = 1e-3;
  prof.progress_s = {1e-3};
  // Three 2 MB buckets ready together at the end: each step moves 1 MB = 1 ms on the link.
  const std::vector<BucketSpec> buckets = {{2e6, 0}, {2e6, 0}, {2e6, 0}};
  for (int in_flight : {1, 2, 3}) {
    m.in_flight = in_flight;
    // The link is busy back to back whatever the in-flight count: 6 ms of steps after the backward pass.
    EXPECT_NEAR(estimate_step(prof, buckets, m, {2, 1}).step_s, 7e-3, 1e-9) << in_flight;
  }
  // With latency, a second bucket in flight hides its first step's latency behind the first bucket.
  m.link.alpha_s = 100e-6;
  m.in_flight = 1;
  const double one = estimate_step(prof, buckets, m, {2, 1}).step_s;
  m.in_flight = 2;
  const double two = estimate_step(prof, buckets, m, {2, 1}).step_s;
  EXPECT_NEAR(one, 1e-3 + 6 * (1e-3 + 100e-6), 1e-9);
  EXPECT_LT(two, one);
}

TEST(ScalingStep, AShapersBurstLetsSavedBytesPassAtTheCeiling) {
  // tc tbf at 1 GB/s with a 1 MB burst; the TCP path's ceiling 4 GB/s. One 4 MB bucket (2 MB steps)
  // ready at the end of a 10 ms backward pass: the bucket of tokens is full.
  CommModel m = round_model();
  m.reduce_s_per_byte = 0.0;
  m.link.alpha_s = 0.0;
  m.link.burst_bytes = 1e6;
  m.link.ceiling_bytes_per_s = 4e9;
  BackwardProfile prof;
  prof.backward_s = 10e-3;
  prof.progress_s = {10e-3};
  // Step 1: 1 MB at 4 GB/s + 1 MB at 1 GB/s = 1.25 ms; step 2 follows at once: no tokens, 2 ms.
  EXPECT_NEAR(estimate_step(prof, {{4e6, 0}}, m, {2, 1}).step_s, 10e-3 + 1.25e-3 + 2e-3, 1e-9);
  m.link.burst_bytes = 0.0;  // a real link: 2 + 2 ms
  EXPECT_NEAR(estimate_step(prof, {{4e6, 0}}, m, {2, 1}).step_s, 14e-3, 1e-9);
}

TEST(ScalingStep, TcpCpuWorkDelaysComputeButHidesInWaits) {
  CommModel m = round_model();
  m.reduce_s_per_byte = 0.0;
  m.link.alpha_s = 0.0;
  m.link.cpu_s_per_byte = 0.25e-9;  // a 2 MB bucket: 0.5 ms of CPU per step (1 MB sent + 1 MB received)
  // Ready at the end: the CPU work runs while the rank waits for the wire (1 ms per step).
  BackwardProfile end;
  end.backward_s = 10e-3;
  end.progress_s = {10e-3};
  StepEstimate e = estimate_step(end, {{2e6, 0}}, m, {2, 1});
  EXPECT_NEAR(e.step_s, 12e-3, 1e-9);
  EXPECT_NEAR(e.comm_cpu_s, 1e-3, 1e-9);
  // Ready at 1 ms of the 10 ms backward pass (a layer every 0.5 ms): the wire hides, the CPU work
  // (2 x 0.5 ms) lengthens the backward pass.
  BackwardProfile early;
  early.backward_s = 10e-3;
  for (int j = 1; j <= 20; ++j) early.progress_s.push_back(j * 0.5e-3);
  e = estimate_step(early, {{2e6, 1}}, m, {2, 1});
  EXPECT_NEAR(e.step_s, 11e-3, 1e-9);
  EXPECT_NEAR(e.exposed_s, 1e-3, 1e-9);
}

TEST(ScalingStep, ApportionedProfileSplitsByFlops) {
  // forward 2 units, the layers' backward 1 + 3 units: forward 1/3 of the step.
  const BackwardProfile p = apportioned_profile(6e-3, 2.0, {1.0, 3.0});
  EXPECT_NEAR(p.forward_s, 2e-3, kTol);
  EXPECT_NEAR(p.backward_s, 4e-3, kTol);
  ASSERT_EQ(p.progress_s.size(), 2u);
  EXPECT_NEAR(p.progress_s[0], 1e-3, kTol);
  EXPECT_NEAR(p.progress_s[1], 4e-3, kTol);
  EXPECT_NEAR(p.single_rank_step_s, 6e-3, kTol);
}

// ---- the command ---------------------------------------------------------------------------------

#ifdef LOCKSTEP_BIN
namespace {
struct CliRun {
  int rc = -1;
  std::string out, err;
};
std::string read_all(const std::filesystem::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}
CliRun scale_estimate(const std::string& args) {
  const auto dir = std::filesystem::temp_directory_path() / ("scaling_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const std::string cmd = std::string("timeout 120 ") + LOCKSTEP_BIN + " scale-estimate " + args + " >" +
                          (dir / "out").string() + " 2>" + (dir / "err").string();
  CliRun r;
  const int st = std::system(cmd.c_str());
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.out = read_all(dir / "out");
  r.err = read_all(dir / "err");
  std::filesystem::remove_all(dir);
  return r;
}
std::string tiny_run_file() {
  const auto path = std::filesystem::temp_directory_path() / ("scaling_tiny_" + std::to_string(::getpid()) + ".yaml");
  std::ofstream f(path);
  f << "name: tiny\nmodel:\n  input_shape: [20]\n  layers:\n"
       "    - dense: {units: 30, activation: relu}\n    - dense: {units: 5, activation: softmax}\n"
       "loss: sparse_categorical_crossentropy\noptimizer: {name: sgd}\ntrain: {batch_size: 16}\n";
  return path.string();
}
}  // namespace

TEST(ScalingCli, BadInputExits2NamingTheFlag) {
  const std::string run = tiny_run_file();
  struct Case {
    std::string args, expect;
  };
  const std::vector<Case> cases = {
      {run + " --network 25gb", "--network: expected a link rate such as 25gbit"},
      {run + " --network fast", "got 'fast'"},
      {run + " --nodes 0", "--nodes must be a whole number >= 1 (got 0)"},
      {run + " --ranks-per-node -2", "--ranks-per-node must be a whole number >= 1 (got -2)"},
      {run + " --step-ms 0", "--step-ms must be a time in milliseconds > 0"},
      {run + " --compression zip", "--compression (or distributed.compression) must be none, bf16 or fp16 (got 'zip')"},
      {run + " --nodes two", "--nodes"},
      {"/nonexistent/run.yaml --nodes 2", "/nonexistent/run.yaml: cannot open the run file"},
      {"--nodes 2", "a run file is required"},
  };
  for (const Case& c : cases) {
    const CliRun r = scale_estimate(c.args);
    EXPECT_EQ(r.rc, 2) << c.args << "\n" << r.err << r.out;
    EXPECT_NE(r.err.find(c.expect), std::string::npos) << c.args << ": expected '" << c.expect << "' in\n" << r.err;
    EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
  }
  std::filesystem::remove(run);
}

TEST(ScalingCli, TableFrom1To512RanksPlusTheRequestedConfiguration) {
  const std::string run = tiny_run_file();
  const CliRun r = scale_estimate(run + " --nodes 3 --ranks-per-node 4 --network 10gbit --step-ms 2 --measure-sec 0.05");
  ASSERT_EQ(r.rc, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("--step-ms 2 ms per step at 16 samples per rank (given, not measured)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Weak scaling: the per-rank batch held at the run file's 16"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Strong scaling: the global batch held at the run file's 16"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("10 Gbit/s"), std::string::npos) << r.out;
  for (const char* row : {"    1     1 x 1", "    4     1 x 4", "    8     2 x 4", "  512   128 x 4", "*    12     3 x 4"})
    EXPECT_NE(r.out.find(row), std::string::npos) << row << "\n" << r.out;
  EXPECT_NE(r.out.find("2.000"), std::string::npos) << "the one-rank step is the given 2 ms\n" << r.out;
  std::filesystem::remove(run);
}
#endif
