// SharedReduction: in-place all-reduce through shared memory, for ranks that share one node.
//
// WHAT THIS REPRESENTS
//   One shared mapping that every rank of the group maps whole: for each rank, a control block and a
//   data region of the same size. Rank r's data region is the memory it hands out as its reduction
//   buffer (Communicator::allocate_reduction_buffer); the other ranks read and write it directly.
//   An all-reduce of the slice [offset, offset + count) of the data regions is then one pass over
//   memory, with no copy through a transport and no system call: rank r reduces its 1/p share of the
//   slice by reading that share in every rank's region, in rank order (so every rank gets the very
//   same bits), and writes the result into every rank's region.
//
//   Against the MPI ring over Open MPI's shared-memory transport (which copies each chunk through
//   the kernel, process_vm_readv): 2 ranks, 1.2 MB, 35-45 us against 150-190 us; 2.0 MB, 70-140 us
//   against 260-530 us (a throwaway MPI_Win_allocate_shared probe on this 2-vCPU VM, docs/performance.md).
//
// PROTOCOL (per rank, in its control block; all counters only grow)
//   launch(s):  write slot s % kSlots = {s, offset, count, type, op}, then `arrived = s` (release).
//   progress(): reductions are done in launch order; for the oldest not yet done, once every rank's
//               `arrived >= s` (acquire): check that every rank's slot describes the same slice (a
//               mismatch means the ranks called collectives in a different order: CommError), reduce
//               this rank's share into every region, then `reduced = s` (release).
//   done(s):    every rank's `reduced >= s`: every share of every region holds the result.
//   A rank writes into another rank's region only for a reduction that rank has launched, and a
//   rank's reduction completes only after every rank has finished writing: the region is the
//   caller's again (until its next launch) as soon as done(s).
//   A slot is reused after kSlots launches, once every rank has reduced the launch that used it.
//
// ACROSS NODES (the hierarchical all-reduce; set_inter_node)
//   The group is then the ranks of ONE node, and the same-index ranks of the other nodes hold the
//   same shares. progress() splits a launch into three stages: (1) once every rank has arrived, rank
//   r sums its share over the regions in rank order into ITS OWN region only (no other rank reads
//   share r of any region, so this is safe before the others are done); (2) it starts the all-reduce
//   of that share across the nodes (InterNode::start, e.g. a ring over MPI), at most
//   `max_in_flight` at once, in launch order on every rank; (3) once that completes, it copies the
//   share into every other region and sets `reduced`. The sum is (node sums in rank order) combined
//   across nodes in the inter-node all-reduce's order: the same bits run after run on one topology.
//
// LIFETIME AND FAILURE
//   The mapping is created by the lowest rank (a POSIX shm object, its size reserved with
//   posix_fallocate so that a full /dev/shm is an error here and not a SIGBUS later), opened by the
//   others, and unlinked as soon as every rank has it mapped, so nothing is left behind by a crash.
//   A rank that dies leaves the others waiting: callers bound every wait (the communicator's
//   watchdog). Not thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace lockstep::comm {

namespace detail {
// dst[i] = op(dst[i], src[i]) for n elements of type t.
void reduce_into(void* dst, const void* src, int64_t n, ElemType t, ReduceOp op);
// The 16-bit wire formats of Compression::BF16 / FP16 (not None): float32 -> 16 bits, rounded to
// nearest even (a NaN stays a NaN; FP16 overflows to infinity above 65504), and back, either
// replacing dst or added to it (accumulate) in float32.
void encode16(Compression c, const float* src, uint16_t* dst, int64_t n);
void decode16(Compression c, const uint16_t* src, float* dst, int64_t n, bool accumulate);
}  // namespace detail

class SharedReduction {
 public:
  static constexpr int kSlots = 64;  // launches that may be outstanding at once

  // The bytes of the mapping for `ranks` ranks with `data_bytes` of data each.
  static int64_t mapping_bytes(int ranks, int64_t data_bytes);
  // Over a mapping of mapping_bytes(ranks, data_bytes) bytes at `base`, zeroed when created, that
  // stays mapped while `keep` lives.
  SharedReduction(void* base, int ranks, int rank, int64_t data_bytes, std::shared_ptr<void> keep);

  void* data() const { return data_of(rank_); }  // this rank's region
  // Whether `b` lies inside this rank's region.
  bool contains(const Buffer& b) const;

  // The stage across nodes: `start` begins the all-reduce of this rank's share of a launch (a Buffer
  // inside this rank's region; count may be 0) with the ranks holding that share on the other nodes.
  struct InterNode {
    std::function<std::unique_ptr<Work>(const Buffer& share, ReduceOp op, const std::string& what)> start;
    int max_in_flight = 2;
  };
  // Call before the first launch, on every rank of the group alike.
  void set_inter_node(InterNode stage) { inter_ = std::move(stage); }
  bool across_nodes() const { return static_cast<bool>(inter_.start); }
  // For logs (MpiCommunicator::describe_reduction).
  void set_description(std::string d) { description_ = std::move(d); }
  const std::string& description() const { return description_; }

  // Start reducing `b` (inside this rank's region); returns the launch's sequence number. When
  // kSlots earlier launches are still being reduced somewhere, first helps them along for up to
  // `timeout` (<= 0: no limit), then throws CommError naming `what`.
  int64_t launch(const Buffer& b, ReduceOp op, const std::string& what, std::chrono::milliseconds timeout);
  // Do this rank's share of every launch whose data every rank has made ready, in launch order.
  // Throws CommError if the ranks launched different slices.
  void progress();
  // Whether launch `seq` is complete on every rank.
  bool done(int64_t seq) const;

 private:
  struct Slot {
    int64_t seq, offset, count;
    int32_t type, op;
  };
  struct Control;  // in the mapping, at the start of each rank's part
  struct Pending {
    int64_t seq, offset, count;
    ElemType type;
    ReduceOp op;
    std::string what;
    std::unique_ptr<Work> inter;  // its share's all-reduce across nodes, once started
  };
  static int64_t control_bytes();  // a control block, rounded up to whole pages
  Control& control(int q) const;
  char* data_of(int q) const;
  int64_t min_reduced() const;
  bool sum_ready();       // stages 1-2 of every launch that can go; whether any did
  bool complete_ready();  // stage 3 of every launch that can end; whether any did
  bool all_arrived(const Pending& p) const;
  void check_slots(const Pending& p) const;
  std::pair<int64_t, int64_t> share_of(const Pending& p) const;  // [begin, end) elements of this rank's share
  // Sums this rank's share over every region in rank order into every region (`everywhere`) or into
  // this rank's region only.
  void reduce_share(const Pending& p, bool everywhere);
  void scatter_share(const Pending& p);  // this rank's region's share into every other region

  char* base_;
  int ranks_, rank_;
  int64_t data_bytes_, stride_;
  std::shared_ptr<void> keep_;
  int64_t launched_ = 0;
  std::deque<Pending> pending_;  // launched here, not yet complete here (`reduced` not yet set)
  size_t summed_ = 0;            // pending_[0, summed_) have had their share summed (stage 1)
  int in_flight_ = 0;            // inter-node all-reduces started and not yet seen complete
  InterNode inter_;
  std::string description_ = "shared memory";
  std::vector<char> tile_;
};

// Creates the mapping for the `ranks` ranks of one node. `share_name(name)` must make rank 0's
// name known to every rank and `all_ok(ok)` must return whether `ok` was true on every rank (both
// collectives of the caller's transport). Returns null on every rank when any rank could not map it,
// with the reason in `*why` on the ranks that failed.
std::shared_ptr<SharedReduction> create_shared_reduction(int ranks, int rank, int64_t data_bytes,
                                                         const std::function<std::string(std::string)>& share_name,
                                                         const std::function<bool(bool)>& all_ok, std::string* why);

}  // namespace lockstep::comm
