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
//  * Device::CUDA buffers are refused: Debian's Open MPI is not CUDA-aware.
#pragma once

#include <chrono>
#include <memory>

#include "comm/communicator.h"

namespace lockstep::comm {

// Throws CommError if MPI cannot be initialised or was already finalised in this process.
std::unique_ptr<Communicator> make_mpi_communicator();

// How Work::wait polls: spin on MPI_Test for `spin`, then MPI_Test + sched_yield until `yield`,
// then MPI_Test + sleeps of elapsed/20 clamped to [min_sleep, max_sleep]. A rank that waits long
// for a busy one thus gives its core away (this machine has 2), at a latency cost of <= ~5% of the
// wait so far. Measured in tests/bench/allreduce_bench.cpp.
struct WaitPolicy {
  std::chrono::microseconds spin{200};
  std::chrono::microseconds yield{5000};
  std::chrono::microseconds min_sleep{50};
  std::chrono::microseconds max_sleep{1000};
};
void set_wait_policy(const WaitPolicy& policy);
WaitPolicy wait_policy();

// All-reduces of at least this many bytes use the ring.
inline constexpr int64_t kRingMinBytes = 64 * 1024;

}  // namespace lockstep::comm
