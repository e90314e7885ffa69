// NcclCommunicator: the Communicator for GPU buffers (NCCL), built on a bootstrap communicator (MPI).
//
// Design:
//  * The bootstrap (an MpiCommunicator) provides rank, size and placement, broadcasts NCCL's unique
//    id from rank 0, and carries every collective on CPU buffers (the trainer's metric sums, the
//    run-directory broadcast, consistency checks), so `supports()` is true for both devices. Both
//    kinds of collective take their place in one sequence, as the ordering contract requires.
//  * The process's GPU is local_rank mod the visible devices (the trainer picks the same one).
//  * GPU collectives run on a dedicated communication stream, ordered after the compute stream
//    (set_stream; default: the CUDA backend's compute stream) with an event recorded at launch.
//    Work::wait() makes the compute stream wait for the collective's completion event: the host does
//    not block, and the kernels that read the result are queued behind it.
//  * Watchdog: a thread polls every launched GPU collective (cudaEventQuery) and
//    ncclCommGetAsyncError. When a collective fails or is still pending at its deadline (launch +
//    timeout()), it aborts the NCCL communicator (ncclCommAbort, which releases the stalled kernels),
//    marks the communicator failed (the next call on it throws CommError naming the collective), and,
//    if the process has not exited 10 s later (e.g. the host is blocked on the compute stream), prints
//    the error and exits with status 4, which makes mpirun/srun tear the job down. A failed or stalled
//    peer therefore ends the job within timeout() + 10 s.
//
// Opt-in: LOCKSTEP_COMM=nccl (see make_communicator) or make_communicator(CommKind::Nccl).
// Only built with the CUDA backend (LOCKSTEP_HAVE_CUDA).
#pragma once

#include <memory>

#include "comm/communicator.h"

namespace lockstep::comm {

// Takes ownership of `bootstrap` (size() > 1 expected; works for 1 too). Sets the CUDA device to
// bootstrap->local_rank() mod the visible devices. Throws CommError if CUDA or NCCL cannot start.
std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator> bootstrap);

}  // namespace lockstep::comm
