// MpiCommunicator: the Communicator over Open MPI, for CPU buffers.
//
// The class lives in mpi_communicator.cpp so that users of the interface never include <mpi.h>;
// this header only exposes the factory (make_communicator calls it) and the wait policy.
//
// Design:
//  * MPI is initialised once per process with MPI_THREAD_FUNNELED (only the creating thread calls
//    MPI) unless the program already did; the communicator works on a duplicate of MPI_COMM_WORLD
//    with MPI_ERRORS_RETURN, and every failing MPI call becomes a CommError naming the rank, the
//    call (its source text) and MPI's error string. MPI is finalised when the last MpiCommunicator
//    is destroyed, unless it is poisoned (MPI_Finalize would hang on a half-finished collective).
//  * Every collective is non-blocking and completes by polling (see WaitPolicy), so blocking calls
//    share the watchdog. all_reduce of >= kRingMinBytes runs our own ring (reduce-scatter +
//    all-gather over MPI_Isend/MPI_Irecv, advanced by each test()): Open MPI 4.1's MPI_Iallreduce
//    (libnbc) takes 2x the time of MPI_Allreduce at 1 MB on 2 ranks here (239 vs 118 us), the ring
//    matches it. Smaller all-reduces, broadcast, all_gather and barrier use MPI_I* directly.
//  * allocate_reduction_buffer: with every rank on one node, a shared mapping (comm/shared_reduction.h);
//    all_reduce of a slice of it is reduced in place through shared memory, with no MPI call, 3-13x
//    faster than the ring here (the kernel copy CMA and the rendezvous are gone). With ranks on several
//    nodes (MPI_COMM_TYPE_SHARED, or groups of LOCKSTEP_RANKS_PER_NODE ranks), the same buffer is
//    reduced HIERARCHICALLY: within each node through shared memory, where each of the node's L ranks
//    sums 1/L of the slice; then each rank all-reduces its 1/L with the same-index ranks of the other
//    nodes over a ring on a sub-communicator (a node's share of the traffic is split over its ranks,
//    which run their rings side by side); then the results return through shared memory. Up to
//    kInterNodeInFlight slices cross the nodes at once; ReductionOptions::compression sends them as
//    bf16/fp16. Every node must hold the same number of ranks, else the flat ring below is used. Every test() also
//    does this rank's share of any such reduction that all ranks have launched, so a rank waiting on
//    another collective never holds the others up. LOCKSTEP_SHARED_ALLREDUCE=0 on any rank turns it off.
//  * Device::CUDA buffers are refused: Debian's Open MPI is not CUDA-aware.
#pragma once

#include <chrono>
#include <memory>

#include "comm/communicator.h"

namespace lockstep::comm {

// Throws CommError if MPI cannot be initialised or was already finalised in this process.
std::unique_ptr<Communicator> make_mpi_communicator();

// How Work::wait polls: spin on MPI_Test for `spin`, then MPI_Test + sched_yield until `yield`
// (hands the core to any other runnable task, e.g. an oversubscribed rank or a busy OpenMP thread,
// without sleeping), then MPI_Test + sleeps of elapsed/20 clamped to [min_sleep, max_sleep], so the
// sleeping costs at most ~2% of an already long wait. Measured (comm_allreduce_bench, 2 ranks, rank 0
// late by 1/5/20 ms): no latency cost against pure spinning (within +-20 us). An earlier setting that
// slept from 5 ms on cost +0.9 ms at 5 ms and +3.8 ms at 20 ms of skew on this loaded 2-core VM.
struct WaitPolicy {
  std::chrono::microseconds spin{200};
  std::chrono::microseconds yield{50000};
  std::chrono::microseconds min_sleep{50};
  std::chrono::microseconds max_sleep{1000};
};
void set_wait_policy(const WaitPolicy& policy);
WaitPolicy wait_policy();

// All-reduces of at least this many bytes use the ring.
inline constexpr int64_t kRingMinBytes = 64 * 1024;
// Hierarchical all-reduce: slices of the reduction buffer whose rings across nodes may run at once
// (ReductionOptions::inter_node_in_flight and LOCKSTEP_INTER_NODE_IN_FLIGHT override it).
inline constexpr int kInterNodeInFlight = 2;
// ... and their rings are driven by a background thread every this many microseconds (MPI initialised
// with MPI_THREAD_MULTIPLE when the launcher's environment shows several nodes; LOCKSTEP_PROGRESS_US
// overrides it, 0: no thread).
inline constexpr int kProgressIntervalUs = 200;

}  // namespace lockstep::comm
