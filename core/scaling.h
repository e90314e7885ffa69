// The scaling model behind `lockstep scale-estimate` (docs/scaling.md): step time, samples/s and
// efficiency of a data-parallel run on N nodes x R ranks, from one rank's measured compute and an
// alpha-beta model of the hierarchical all-reduce with measured parameters. Pure arithmetic: no
// timing, no MPI (core/scaling_probe.h measures the inputs).
//
// THE ALL-REDUCE BEING MODELLED (comm/shared_reduction.h, ACROSS NODES)
//   The gradients live in shared memory; GradientBucketer launches each bucket (reverse layer order,
//   first_bucket_mb then bucket_mb) as soon as the backward pass has made it ready. For a bucket of s
//   bytes on n nodes x L ranks per node:
//     1. each rank sums its 1/L share over the L regions of its node, in rank order (CPU work of the
//        rank's thread, inside the communicator's progress calls);
//     2. n > 1: each rank all-reduces its share (s/L bytes, halved by bf16/fp16 compression) with the
//        same-index ranks of the other nodes: a ring of 2(n-1) steps, each sending share/n. The L rings
//        of a node run at once and share the node's link, so a step puts s/n bytes (x wire factor) on
//        the link. At most `in_flight` buckets are past stage 1 and not yet complete;
//     3. n > 1: the reduced share is copied into the other L-1 regions.
//   With one node, 1-3 are one pass (SharedReduction's in-place all-reduce).
//
// COSTS
//   shared memory:   t_shm(s, L) = alpha_shm + s * c_shm(L)         (one rank's part, L ranks; 0 at L = 1)
//                    stage 1 takes (L+1)/(2L) of the per-byte part, stage 3 the other 1/2 (bytes moved)
//   one ring step:   alpha + max((s/n) w / B,  o_step + 2 (s/(nL)) w c_tcp),  B = min(eta rate/8, ceiling)
//                    w = 1 (float32) or 1/2 (bf16, fp16); eta: the payload share of the link rate that
//                    MPI over TCP reaches, one figure for messages (s/(nL) w) up to Open MPI's TCP eager
//                    limit of 64 KiB and one past it; ceiling: the TCP path's limit on this machine; o_step and
//                    c_tcp: the rank's CPU per step and per byte it sends or receives (taken from its
//                    compute while it computes). A token-bucket shaper (LinkCost::burst_bytes: the
//                    simulated hosts' tc tbf; off for real links) lets saved-up bytes pass at the ceiling.
//   ring CPU:        (s/(nL)) * per-byte sum (or encode + decode) per step on the rank's thread
//   isolated bucket: t_shm + 2(n-1) * step                          (what allreduce_seconds returns)
//
// OVERLAP (estimate_step)
//   An event simulation of one rank's step: the backward pass is a sequence of progress points (the
//   times its layers finish, where mark_ready calls the communicator); the communicator works only
//   there and, after the backward pass, continuously (finish() waits). CPU work of the all-reduce
//   (stages 1 and 3, ring sums, the TCP path's share of each step) delays the rest of the backward
//   pass: a CPU trainer cannot hide it; after the backward pass it runs while the rank waits for the
//   link. A ring step's bytes move in the background once posted (comm/'s progress thread drives Open
//   MPI), but the next step is posted only at a progress point. Buckets share the link in launch order. Step = forward + backward + update + (what the simulation adds after the backward pass and
//   the CPU work it inserted): the "all-reduce (exposed)" figure.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace lockstep::scaling {

// "25gbit", "10Gbit", "100mbit", "2.5gbit", "800kbit" (tc's rate units, in bits per second) -> bit/s.
// Anything else: UserError naming `flag` and the expected form.
double parse_link_rate(const std::string& text, const std::string& flag = "--network");
// 25e9 -> "25 Gbit/s".
std::string rate_str(double bits_per_s);
// "640kb", "1mb", "4096" (tc's sizes: b, kb, mb, gb, 1024-based) -> bytes; UserError naming `flag`.
double parse_size_bytes(const std::string& text, const std::string& flag);

// The link's measured parameters (docs/scaling.md, "Measured parameters"): MPI over TCP between two
// simulated hosts (one CPU each) on this project's 2-vCPU machine, through tests/bench/link_probe.
// `lockstep scale-estimate` uses them unless --alpha-us, --tcp-efficiency, --tcp-efficiency-large,
// --tcp-ceiling-gbit, --step-cpu-us or --tcp-cpu-ns say otherwise.
inline constexpr double kMeasuredAlphaS = 15e-6;             // latency of a ring step
inline constexpr double kMeasuredTcpEfficiency = 0.95;       // payload rate / link rate under a TBF cap
inline constexpr double kMeasuredTcpEfficiencyLarge = 0.95;  // the same past the eager limit (5 Gbit/s, 0.5-1 MB)
inline constexpr double kMeasuredTcpCeilingBytesPerS = 1.3e9;  // the TCP path unshaped, per direction
inline constexpr double kMeasuredStepCpuS = 18e-6;           // CPU of a ring step beyond its bytes
inline constexpr double kMeasuredTcpCpuSPerByte = 0.14e-9;   // CPU per byte sent or received

// One rank's part of the in-place reduction of a bucket through shared memory with L ranks per node.
struct SharedMemoryCost {
  double alpha_s = 0.0;              // per bucket: the arrival flags, the slot check
  std::map<int, double> per_byte_s;  // L -> seconds per byte of the bucket (measured L; others interpolated)
  // Seconds per bucket byte with L ranks: 0 for L = 1; the measured L's figure; between two measured L
  // linear in log2 L; past the largest, the largest's.
  double per_byte(int ranks_per_node) const;
  double seconds(double bucket_bytes, int ranks_per_node) const;
};

// The inter-node link, per node and direction.
struct LinkCost {
  double rate_bits_per_s = 25e9;
  double alpha_s = 0.0;     // latency of a ring step (a message each way), MPI over TCP
  // Payload bytes/s reached by MPI over TCP / (rate / 8): for a ring step's message up to Open MPI's
  // TCP eager limit (sent at once), and for a larger one (a rendezvous: a handshake, then fragments).
  double efficiency = 1.0;
  double efficiency_large = 1.0;
  double eager_limit_bytes = 65536.0;
  double ceiling_bytes_per_s = 0.0;  // the TCP path's own limit, per direction (unshaped); 0: none
  // CPU of the rank per ring step: posting and completing it, the polls in between, the progress
  // thread (step_cpu_s), and the TCP path per byte it sends or receives (cpu_s_per_byte). Taken from
  // the rank's compute while it computes; hidden while it waits.
  double step_cpu_s = 0.0;
  double cpu_s_per_byte = 0.0;
  // A token-bucket shaper's burst (tc tbf, as on the simulated hosts), bytes; 0: a real link. Up to
  // this many bytes, saved while the link idles at `rate`, pass at the ceiling instead of the rate.
  double burst_bytes = 0.0;
  // Payload bytes per second on the wire for a message of `message_bytes`: min(efficiency (or
  // efficiency_large past the eager limit) * rate / 8, ceiling).
  double wire_bytes_per_s(double message_bytes = 0.0) const;
};

struct CommModel {
  SharedMemoryCost shm;
  LinkCost link;
  double reduce_s_per_byte = 0.0;  // summing a received chunk into the share (ring), per float32 byte
  double encode_s_per_byte = 0.0;  // compression: float32 -> 16 bits, per float32 byte
  double decode_s_per_byte = 0.0;  // compression: 16 bits -> float32 (added or stored), per float32 byte
  double wire_factor = 1.0;        // bytes on the wire per float32 byte: 1, or 0.5 with bf16/fp16
  int in_flight = 2;               // buckets whose inter-node all-reduce may run at once (>= 1)
};

struct Placement {
  int nodes = 1, ranks_per_node = 1;
  int ranks() const { return nodes * ranks_per_node; }
};

// Seconds of one ring step of a bucket of `bucket_bytes` (float32) across p.nodes nodes, alone: the
// latency plus the longer of the node's s/n bytes (x wire factor) on the link and the rank's TCP CPU
// work for its s/(nL) bytes each way.
double ring_step_seconds(const CommModel& m, double bucket_bytes, Placement p);
// The rank's CPU seconds for the transport of one ring step: o_step + (its chunk sent and one received) x c_tcp.
double ring_step_tcp_cpu_seconds(const CommModel& m, double bucket_bytes, Placement p);
// The CPU seconds of ring step `step` (0 .. 2(n-1)-1) on a rank, on chunks of share/n: a
// reduce-scatter step sums the received chunk (compressed: encodes the chunk it sends, decodes and adds
// the one received); an all-gather step receives in place (compressed: decodes it; the first also
// rounds the rank's own summed chunk: an encode and a decode).
double ring_step_cpu_seconds(const CommModel& m, double bucket_bytes, Placement p, int step);
// One bucket's all-reduce alone (nothing else in flight, no compute): t_shm + 2(n-1) steps (+ their CPU).
double allreduce_seconds(const CommModel& m, double bucket_bytes, Placement p);

// One rank's compute at one per-rank batch, measured or apportioned.
struct BackwardProfile {
  double forward_s = 0.0;   // forward + loss
  double backward_s = 0.0;  // the backward pass
  double update_s = 0.0;    // regularisation gradients, the optimizer, constraints (the N-rank path)
  // One process's whole step as UpdateStep runs it with one rank (plain SGD steps inside the
  // backward pass); 0: forward + backward + update.
  double single_rank_step_s = 0.0;
  // The times (from the start of the backward pass) at which layers' gradients are final and
  // mark_ready calls the communicator: ascending, the last at most backward_s.
  std::vector<double> progress_s;
  double compute_s() const { return forward_s + backward_s + update_s; }
};

// A gradient bucket: its bytes (float32) and the progress point (index into progress_s) at which the
// last of its gradients is ready.
struct BucketSpec {
  double bytes = 0.0;
  int ready_at = 0;
};

struct StepEstimate {
  double step_s = 0.0;       // the whole step of one rank
  double compute_s = 0.0;    // forward + backward + update, no communication
  double comm_cpu_s = 0.0;   // CPU work of the all-reduce on the rank (stages 1 and 3, ring sums, TCP)
  double exposed_s = 0.0;    // step_s - compute_s: what the all-reduce adds to the step
  double allreduce_s = 0.0;  // the buckets' all-reduces one after another, alone (no overlap)
};

// One step of one rank with the buckets (in launch order) on placement p. With one rank: the single
// rank's step, no communication.
StepEstimate estimate_step(const BackwardProfile& profile, const std::vector<BucketSpec>& buckets, const CommModel& m,
                           Placement p);

// The FLOPs apportionment when the backward pass is not measured (--step-ms): a step of `step_s`
// split into forward and backward by the products' FLOPs, each layer's backward by its share of the
// backward FLOPs (layers in backward order, as the progress points come). Layers with no products
// take no time. `layer_backward_flops` in backward order; update_s = 0.
BackwardProfile apportioned_profile(double step_s, double forward_flops, const std::vector<double>& layer_backward_flops);

}  // namespace lockstep::scaling
