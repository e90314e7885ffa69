// The Communicator: how the replicas of a data-parallel job talk to each other.
//
// WHAT THIS REPRESENTS
//   One process's handle on a group of `size()` processes ("ranks") that each run a replica of the
//   model. Implementations: LocalCommunicator (one process, identity collectives, no MPI at run
//   time), MpiCommunicator (Open MPI, CPU buffers only) and, later, an NCCL communicator for device
//   buffers. `make_communicator(kind)` is the only place that chooses between them.
//
// THE ORDERING CONTRACT (read this before calling anything)
//   Every rank calls the collectives of a communicator in the SAME ORDER, with the same element
//   type, op, root and count. Collectives are matched by their position in that sequence, not by
//   name or buffer: if rank 0 calls all_reduce then broadcast while rank 1 calls broadcast then
//   all_reduce, the job computes garbage or hangs. Async collectives count at the moment they are
//   launched (`*_async`), not when they are waited on, and may be waited on in any order.
//   GradientBucketer (gradient_bucketer.h) keeps this contract for gradients by launching buckets
//   in a fixed order.
//
// UNITS AND BUFFERS
//   Counts are always in ELEMENTS of the buffer's ElemType, never bytes. A Buffer names its memory,
//   its element type and its Device. The MPI implementation refuses Device::CUDA buffers (Debian's
//   Open MPI is not CUDA-aware); `supports(device)` says what an implementation accepts.
//   For device communicators `set_stream` names the stream the collectives are ordered on (a
//   cudaStream_t passed as void*); host-side Work::wait then means "enqueued after the stream's
//   prior work", never a host synchronisation on the hot path.
//
// WATCHDOG
//   Every wait (Work::wait and the blocking collectives, which are async + wait) has a deadline:
//   the communicator's `timeout()` unless given explicitly. On expiry wait() throws CommError naming
//   the rank, the collective, its size, its sequence number and the communicator's current label
//   (`set_label` / `set_step`), e.g. "step 120". A rank that is stuck or that skipped a collective
//   then shows up as an error on the others instead of a hang.
//
// ERRORS
//   Every failure is a lockstep::CommError whose message starts with "rank R:" and names the
//   collective. After a CommError from a collective the communicator is POISONED: further calls throw
//   at once, and the only sensible next step is `abort(code, message)`, which tears down the whole
//   job (MPI cannot recover a half-finished collective; see FINDINGS.md §0.4). A poisoned
//   MpiCommunicator does not call MPI_Finalize on destruction (it would hang); exiting without it
//   makes mpirun tear the job down too.
//
// THREAD SAFETY
//   None. Create, call and destroy a communicator (and its Work handles) from one thread. The MPI
//   implementation initialises MPI with MPI_THREAD_FUNNELED: OpenMP threads may compute, but only
//   the thread that created the communicator calls MPI.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace lockstep::comm {

// ---- element types, ops, buffers ------------------------------------------------------------------
enum class ElemType { F32, F64, I64, U8 };
const char* elem_type_name(ElemType t);  // "float32", "float64", "int64", "uint8"
int64_t elem_size(ElemType t);           // bytes per element

template <typename T> constexpr ElemType elem_type_of() {
  if constexpr (std::is_same_v<T, float>) return ElemType::F32;
  else if constexpr (std::is_same_v<T, double>) return ElemType::F64;
  else if constexpr (std::is_same_v<T, int64_t>) return ElemType::I64;
  else if constexpr (std::is_same_v<T, uint8_t>) return ElemType::U8;
  else static_assert(sizeof(T) == 0, "collectives take float, double, int64_t or uint8_t");
}
ElemType elem_type_of(DType t);

enum class ReduceOp { Sum, Max, Min };
const char* reduce_op_name(ReduceOp op);  // "SUM", "MAX", "MIN"

// What crosses nodes in a hierarchical all-reduce of float32 gradients (Horovod's compression):
// None sends float32; BF16 and FP16 send each value rounded to nearest-even in 16 bits, and the sums
// are formed in float32 (see comm/shared_reduction.h). FP16 overflows above 65504.
enum class Compression { None, BF16, FP16 };
const char* compression_name(Compression c);  // "none", "bf16", "fp16"
// "none" | "bf16" | "fp16"; anything else is a ConfigError listing these.
Compression parse_compression(const std::string& s);

// How the reduction buffer (allocate_reduction_buffer) is reduced across nodes.
struct ReductionOptions {
  Compression compression = Compression::None;
  // All-reduces of its slices that may cross the nodes at once (0: the implementation's default,
  // which LOCKSTEP_INTER_NODE_IN_FLIGHT overrides).
  int inter_node_in_flight = 0;
};

// A typed, contiguous region of memory on one device. Does not own the memory: it must stay alive
// (and untouched) until the collective using it has completed.
struct Buffer {
  void* data = nullptr;
  int64_t count = 0;  // elements
  ElemType type = ElemType::F32;
  Device device = Device::CPU;

  int64_t bytes() const { return count * elem_size(type); }
  std::string describe() const;  // "266610 x float32 (1.07 MB, cpu)"
};
template <typename T>
Buffer make_buffer(std::span<T> s, Device device = Device::CPU) {
  return Buffer{static_cast<void*>(s.data()), static_cast<int64_t>(s.size()), elem_type_of<std::remove_cv_t<T>>(),
                device};
}
// The whole tensor (contiguous by construction), with its dtype and device.
Buffer make_buffer(const Tensor& t);

// ---- Work: a launched collective ------------------------------------------------------------------
// Returned by the *_async collectives. The buffers of the collective must not be touched until it
// completes. A Work must not outlive its communicator. Destroying a pending Work waits for it (bounded by the timeout; on expiry it reports to
// stderr and abandons it, since the job is being aborted anyway).
class Work {
 public:
  virtual ~Work() = default;
  // Drives progress (MPI progresses non-blocking collectives only inside MPI calls) and returns
  // whether the collective has completed. Throws CommError if it failed.
  virtual bool test() = 0;
  bool is_completed() { return test(); }
  // Blocks until completion, with the communicator's default timeout / the given one (<= 0: none).
  // Throws CommError on failure or on expiry of the deadline.
  void wait();
  virtual void wait(std::chrono::milliseconds timeout) = 0;
  // "all_reduce(SUM, 266610 x float32 (1.07 MB, cpu)) #17 [step 3]"
  virtual std::string description() const = 0;

 protected:
  virtual std::chrono::milliseconds default_timeout() const = 0;
};

// ---- the interface --------------------------------------------------------------------------------
class Communicator {
 public:
  static constexpr std::chrono::milliseconds kDefaultTimeout{std::chrono::minutes(5)};

  virtual ~Communicator() = default;
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  virtual int rank() const = 0;        // 0 .. size()-1
  virtual int size() const = 0;        // ranks in the job
  virtual int local_rank() const = 0;  // 0 .. local_size()-1 among the ranks on this node
  virtual int local_size() const = 0;  // ranks on this node
  virtual std::string name() const = 0;  // "local", "mpi", "nccl"
  // Whether collectives accept buffers on `device`.
  virtual bool supports(Device device) const = 0;
  // Device communicators: order collectives on this stream (cudaStream_t as void*). No-op on CPU ones.
  virtual void set_stream(void* stream) { (void)stream; }
  // Whether all-reduces of `buf` launched together run one after another by themselves (NCCL's
  // stream; MPI's shared-memory reductions, done in launch order), so launching early costs nothing.
  // When false (MPI's transport), collectives in flight at once share the memory bandwidth and
  // advance only inside test() calls, so callers do better to keep one in flight
  // (GradientBucketer: BucketOptions::one_in_flight).
  virtual bool queues_collectives(const Buffer& buf) const {
    (void)buf;
    return false;
  }

  // Memory for a buffer that is all-reduced in place again and again (the gradient arena): `numel`
  // zeroed elements of `dtype` on `device`. COLLECTIVE: every rank calls it at the same point with the
  // same arguments. An implementation that can reduce such memory more cheaply than ordinary memory
  // returns it (MPI with every rank on one node: a shared mapping that the ranks reduce directly, no
  // copy through the transport); otherwise an undefined Tensor, and the caller keeps its own memory.
  // all_reduce of a slice of it is matched across ranks by the slice's offset and count, which must
  // then be the same on every rank (a mismatch is a CommError, not a wrong sum).
  // With ranks on several nodes (MPI), the buffer is reduced hierarchically: through shared memory
  // within each node, then across nodes (comm/mpi_communicator.h), as `options` say.
  virtual Tensor allocate_reduction_buffer(int64_t numel, DType dtype, Device device,
                                           const ReductionOptions& options = {}) {
    (void)numel, (void)dtype, (void)device, (void)options;
    return {};
  }
  // How all_reduce of slices of `buffer` (one of allocate_reduction_buffer's) runs, for logs:
  // "shared memory", "shared memory within 2 nodes x 2 ranks, then a ring across the nodes (bf16)";
  // empty for any other tensor.
  virtual std::string describe_reduction(const Tensor& buffer) const {
    (void)buffer;
    return {};
  }

  // Non-blocking collectives (the primitives; the blocking forms below wait on these).
  // all_reduce: in place; every rank ends with op over all ranks' buffers, element by element.
  virtual std::unique_ptr<Work> all_reduce_async(Buffer buf, ReduceOp op) = 0;
  // broadcast: every rank ends with root's buffer.
  virtual std::unique_ptr<Work> broadcast_async(Buffer buf, int root) = 0;
  // all_gather: recv.count == size() * send.count; rank r's send lands at recv[r * send.count].
  virtual std::unique_ptr<Work> all_gather_async(Buffer send, Buffer recv) = 0;
  virtual std::unique_ptr<Work> barrier_async() = 0;

  // Tear down the whole job with this exit status after printing `message` with the rank. Never
  // returns; safe to call after a CommError.
  [[noreturn]] virtual void abort(int code, const std::string& message) = 0;

  // Blocking collectives: the async form + Work::wait() with the default timeout.
  void all_reduce(Buffer buf, ReduceOp op = ReduceOp::Sum) { all_reduce_async(buf, op)->wait(); }
  void broadcast(Buffer buf, int root) { broadcast_async(buf, root)->wait(); }
  void all_gather(Buffer send, Buffer recv) { all_gather_async(send, recv)->wait(); }
  void barrier() { barrier_async()->wait(); }

  // Typed conveniences.
  template <typename T> void all_reduce(std::span<T> s, ReduceOp op = ReduceOp::Sum) { all_reduce(make_buffer(s), op); }
  template <typename T> std::unique_ptr<Work> all_reduce_async(std::span<T> s, ReduceOp op = ReduceOp::Sum) {
    return all_reduce_async(make_buffer(s), op);
  }
  template <typename T> void broadcast(std::span<T> s, int root) { broadcast(make_buffer(s), root); }
  template <typename T> void all_gather(std::span<const T> send, std::span<T> recv) {
    all_gather(make_buffer(std::span<T>(const_cast<T*>(send.data()), send.size())), make_buffer(recv));
  }
  void all_reduce(const Tensor& t, ReduceOp op = ReduceOp::Sum) { all_reduce(make_buffer(t), op); }
  std::unique_ptr<Work> all_reduce_async(const Tensor& t, ReduceOp op = ReduceOp::Sum) {
    return all_reduce_async(make_buffer(t), op);
  }
  void broadcast(const Tensor& t, int root) { broadcast(make_buffer(t), root); }
  // Scalars.
  template <typename T> T all_reduce_value(T v, ReduceOp op = ReduceOp::Sum) {
    all_reduce(std::span<T>(&v, 1), op);
    return v;
  }

  // Watchdog: the deadline of every wait that does not give its own (<= 0: wait forever).
  void set_timeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }
  std::chrono::milliseconds timeout() const { return timeout_; }
  // A label copied into the description of every collective launched from now on ("step 12").
  void set_label(std::string label) { label_ = std::move(label); }
  void set_step(int64_t step) { label_ = str_cat("step ", step); }
  const std::string& label() const { return label_; }
  // Collectives launched so far (the sequence number of the next one).
  int64_t launched() const { return launched_; }
  // Whether a collective failed or timed out (see ERRORS above).
  bool poisoned() const { return poisoned_; }

 protected:
  Communicator() = default;
  // Implementations call these: checks common to all collectives, the next sequence number.
  void check_buffer(const char* collective, const Buffer& b) const;
  int64_t next_sequence() { return launched_++; }
  void poison() { poisoned_ = true; }
  void check_not_poisoned(const char* collective) const;

 private:
  std::chrono::milliseconds timeout_ = kDefaultTimeout;
  std::string label_;
  int64_t launched_ = 0;
  bool poisoned_ = false;
};

// ---- the factory ----------------------------------------------------------------------------------
enum class CommKind { Auto, Local, Mpi, Nccl };
// "auto" | "local" | "mpi" | "nccl"; anything else is a ConfigError listing these.
CommKind parse_comm_kind(const std::string& s);
const char* comm_kind_name(CommKind k);

// Auto: MPI when the process was started by a launcher (mpirun/mpiexec: OMPI_COMM_WORLD_SIZE,
// PMIX_RANK, PMI_RANK; srun: SLURM_PROCID with more than one task), Local otherwise, so a plain
// `./lockstep` runs as one process without initialising MPI. Calls set_error_rank(rank()).
// Throws CommError if MPI is asked for but cannot start, or if srun started several tasks without
// a PMI/PMIx environment (each would silently train alone).
// Nccl: an MPI communicator wrapped by the NCCL one (GPU buffers over NCCL, CPU buffers over MPI;
// comm/nccl_communicator.h); CommError in a build without the CUDA backend. Auto resolves to Nccl
// only when asked for with the environment variable LOCKSTEP_COMM=nccl (also: mpi, local, auto).
std::unique_ptr<Communicator> make_communicator(CommKind kind = CommKind::Auto);

// The kind Auto resolves to in this environment (CommError in the srun-without-PMI case).
CommKind detect_comm_kind();

// Threads each rank should use for compute: the cores this process may run on (sched_getaffinity,
// else hardware_concurrency) shared among the ranks on this node; at least 1. If the launcher bound
// each rank to its own cores (affinity × local ranks fits in the machine), the affinity set is the
// rank's own share and is used whole.
int default_threads_per_rank(const Communicator& comm);
// The rule above as a pure function (unit-tested).
int threads_per_rank(int affinity_cores, int hardware_cores, int local_size);

}  // namespace lockstep::comm
