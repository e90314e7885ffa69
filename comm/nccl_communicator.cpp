// NcclCommunicator (see nccl_communicator.h). Compiled with the CUDA backend only.
#include "comm/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "core/kernels/cuda.h"

namespace lockstep::comm {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::chrono::seconds kExitGrace{10};  // after an abort, how long the host may take to notice
constexpr int kExitComm = 4;                    // the `lockstep` command's status for a communication failure

ncclDataType_t nccl_type(ElemType t) {
  switch (t) {
    case ElemType::F32: return ncclFloat32;
    case ElemType::F64: return ncclFloat64;
    case ElemType::I64: return ncclInt64;
    case ElemType::U8: return ncclUint8;
  }
  return ncclFloat32;
}
ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Max: return ncclMax;
    case ReduceOp::Min: return ncclMin;
  }
  return ncclSum;
}

// A launched GPU collective: its completion event (on the communication stream) and its deadline.
struct Pending {
  cudaEvent_t done = nullptr;
  bool has_deadline = false;
  Clock::time_point deadline;
  std::string what;
  ~Pending() {
    if (done) (void)cudaEventDestroy(done);
  }
};

// What the communicator, its Work handles and the watchdog thread share.
struct State {
  int rank = 0;
  int device = 0;
  ncclComm_t comm = nullptr;
  std::atomic<bool> failed{false};
  std::atomic<bool> aborted{false};
  std::mutex mu;                                 // guards failure, pending
  std::string failure;                           // the first failure's message
  std::vector<std::shared_ptr<Pending>> pending;  // launched, not yet seen complete by the watchdog

  std::string failure_message() {
    std::lock_guard<std::mutex> lock(mu);
    return failure;
  }
  // Record the first failure and abort NCCL (releases kernels stalled on a dead peer). Thread-safe.
  void fail(const std::string& why) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (failure.empty()) failure = why;
    }
    failed = true;
    if (!aborted.exchange(true) && comm) (void)ncclCommAbort(comm);
  }
};

class NcclCommunicator;

// A GPU collective. wait() orders the compute stream after it (no host block); test() polls it.
class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<State> st, std::shared_ptr<Pending> p, cudaStream_t compute, std::chrono::milliseconds timeout)
      : st_(std::move(st)), p_(std::move(p)), compute_(compute), timeout_(timeout) {}
  ~NcclWork() override {
    if (!waited_ && !st_->failed) (void)cudaStreamWaitEvent(compute_, p_->done, 0);
  }
  using Work::wait;
  bool test() override {
    check();
    const cudaError_t e = cudaEventQuery(p_->done);
    if (e == cudaSuccess) return true;
    if (e == cudaErrorNotReady) return false;
    (void)cudaGetLastError();
    st_->fail(str_cat("rank ", st_->rank, ": ", p_->what, " failed on the GPU: ", cudaGetErrorString(e)));
    check();
    return false;
  }
  void wait(std::chrono::milliseconds) override {
    // The deadline is the watchdog's (launch + timeout); here the compute stream is made to wait.
    check();
    if (waited_) return;
    const cudaError_t e = cudaStreamWaitEvent(compute_, p_->done, 0);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      st_->fail(str_cat("rank ", st_->rank, ": ", p_->what, ": cudaStreamWaitEvent failed: ", cudaGetErrorString(e)));
      check();
    }
    waited_ = true;
  }
  std::string description() const override { return p_->what; }

 protected:
  std::chrono::milliseconds default_timeout() const override { return timeout_; }

 private:
  void check() const {
    if (st_->failed) throw CommError(st_->failure_message());
  }
  std::shared_ptr<State> st_;
  std::shared_ptr<Pending> p_;
  cudaStream_t compute_;
  std::chrono::milliseconds timeout_;
  bool waited_ = false;
};

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(std::unique_ptr<Communicator> boot) : boot_(std::move(boot)) {
    st_ = std::make_shared<State>();
    st_->rank = boot_->rank();
    const int n = lockstep::cuda::device_count();
    LS_REQUIRE(n > 0, CommError, "rank ", rank(), ": the NCCL communicator needs a CUDA device, and none is usable");
    // NCCL refuses two ranks of one communicator on the same GPU; every rank of a node sees the same
    // counts, so all of them stop here together rather than some hanging in ncclCommInitRank.
    LS_REQUIRE(boot_->local_size() <= n, CommError, "rank ", rank(), ": the NCCL communicator needs one GPU per rank: ",
               boot_->local_size(), " ranks on this node, ", n, " visible GPU(s)");
    st_->device = boot_->local_rank() % n;
    lockstep::cuda::set_device(st_->device);
    ncclUniqueId id{};
    if (rank() == 0) nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    boot_->broadcast(std::span<uint8_t>(reinterpret_cast<uint8_t*>(&id), sizeof id), 0);
    boot_->barrier();  // every rank alive and holding the id before the (unbounded) NCCL init
    nccl_check(ncclCommInitRank(&st_->comm, size(), id, rank()), "ncclCommInitRank");
    cuda_check(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    compute_ = static_cast<cudaStream_t>(lockstep::cuda::compute_stream());
    watchdog_ = std::thread([this] { watchdog_loop(); });
  }

  ~NcclCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(stop_mu_);
      stop_ = true;
    }
    stop_cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    if (st_->comm) {
      if (st_->failed || poisoned()) {
        if (!st_->aborted.exchange(true)) (void)ncclCommAbort(st_->comm);
      } else {
        (void)cudaStreamSynchronize(comm_stream_);
        (void)ncclCommDestroy(st_->comm);
      }
    }
    if (comm_stream_) (void)cudaStreamDestroy(comm_stream_);
  }

  int rank() const override { return boot_->rank(); }
  int size() const override { return boot_->size(); }
  int local_rank() const override { return boot_->local_rank(); }
  int local_size() const override { return boot_->local_size(); }
  std::string name() const override { return "nccl"; }
  bool supports(Device d) const override { return d == Device::CUDA || boot_->supports(d); }
  bool queues_collectives(const Buffer& b) const override {
    return b.device == Device::CUDA || boot_->queues_collectives(b);
  }
  // Host buffers are reduced by the MPI communicator underneath, so it is the one to place them.
  Tensor allocate_reduction_buffer(int64_t numel, DType dtype, Device device,
                                   const ReductionOptions& options) override {
    return device == Device::CPU ? boot_->allocate_reduction_buffer(numel, dtype, device, options) : Tensor{};
  }
  std::string describe_reduction(const Tensor& buffer) const override { return boot_->describe_reduction(buffer); }
  void set_stream(void* stream) override {
    compute_ = stream ? static_cast<cudaStream_t>(stream) : static_cast<cudaStream_t>(lockstep::cuda::compute_stream());
  }

  std::unique_ptr<Work> all_reduce_async(Buffer buf, ReduceOp op) override {
    check_buffer("all_reduce", buf);
    if (buf.device == Device::CPU) return forward([&] { return boot_->all_reduce_async(buf, op); });
    return launch(str_cat("all_reduce(", reduce_op_name(op), ", ", buf.describe(), ")"), [&](cudaStream_t s) {
      return ncclAllReduce(buf.data, buf.data, size_t(buf.count), nccl_type(buf.type), nccl_op(op), st_->comm, s);
    });
  }
  std::unique_ptr<Work> broadcast_async(Buffer buf, int root) override {
    check_buffer("broadcast", buf);
    LS_REQUIRE(root >= 0 && root < size(), CommError, "rank ", rank(), ": broadcast from root ", root, " of ", size(),
               " ranks");
    if (buf.device == Device::CPU) return forward([&] { return boot_->broadcast_async(buf, root); });
    return launch(str_cat("broadcast(root ", root, ", ", buf.describe(), ")"), [&](cudaStream_t s) {
      return ncclBroadcast(buf.data, buf.data, size_t(buf.count), nccl_type(buf.type), root, st_->comm, s);
    });
  }
  std::unique_ptr<Work> all_gather_async(Buffer send, Buffer recv) override {
    check_buffer("all_gather", send);
    check_buffer("all_gather", recv);
    LS_REQUIRE(send.type == recv.type && send.device == recv.device, CommError, "rank ", rank(), ": all_gather from ",
               send.describe(), " into ", recv.describe(), ": element types or devices differ");
    LS_REQUIRE(recv.count == int64_t(size()) * send.count, CommError, "rank ", rank(), ": all_gather of ",
               send.describe(), " into ", recv.describe(), ": the receive buffer must hold size() x send.count = ",
               int64_t(size()) * send.count, " elements");
    if (send.device == Device::CPU) return forward([&] { return boot_->all_gather_async(send, recv); });
    return launch(str_cat("all_gather(", send.describe(), ")"), [&](cudaStream_t s) {
      return ncclAllGather(send.data, recv.data, size_t(send.count), nccl_type(send.type), st_->comm, s);
    });
  }
  std::unique_ptr<Work> barrier_async() override {
    check_not_poisoned("barrier");
    return forward([&] { return boot_->barrier_async(); });
  }

  [[noreturn]] void abort(int code, const std::string& message) override {
    st_->fail(message);  // releases any stalled NCCL kernel first
    boot_->abort(code, message);
    std::abort();  // not reached: the bootstrap's abort does not return
  }

  void mark_failed() { poison(); }

 private:
  // A CPU-buffer collective on the bootstrap, in this communicator's sequence; its CommErrors poison us.
  class ForwardWork final : public Work {
   public:
    ForwardWork(std::unique_ptr<Work> inner, NcclCommunicator* owner, std::chrono::milliseconds timeout)
        : inner_(std::move(inner)), owner_(owner), timeout_(timeout) {}
    using Work::wait;
    bool test() override {
      try {
        return inner_->test();
      } catch (const CommError&) {
        owner_->mark_failed();
        throw;
      }
    }
    void wait(std::chrono::milliseconds timeout) override {
      try {
        inner_->wait(timeout);
      } catch (const CommError&) {
        owner_->mark_failed();
        throw;
      }
    }
    std::string description() const override { return inner_->description(); }

   protected:
    std::chrono::milliseconds default_timeout() const override { return timeout_; }

   private:
    std::unique_ptr<Work> inner_;
    NcclCommunicator* owner_;
    std::chrono::milliseconds timeout_;
  };

  template <typename F>
  std::unique_ptr<Work> forward(F&& start) {
    check_failed();
    (void)next_sequence();
    boot_->set_timeout(timeout());
    boot_->set_label(label());
    try {
      return std::make_unique<ForwardWork>(start(), this, timeout());
    } catch (const CommError&) {
      poison();
      throw;
    }
  }

  template <typename F>
  std::unique_ptr<Work> launch(const std::string& what_base, F&& call) {
    check_failed();
    const int64_t seq = next_sequence();
    auto p = std::make_shared<Pending>();
    p->what = str_cat(what_base, " #", seq, label().empty() ? "" : " [" + label() + "]");
    // Order the communication stream after the compute stream's work so far (e.g. the kernels that
    // produced the gradients of this bucket).
    cudaEvent_t ready = nullptr;
    cuda_check(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    cudaError_t e = cudaEventRecord(ready, compute_);
    if (e == cudaSuccess) e = cudaStreamWaitEvent(comm_stream_, ready, 0);
    (void)cudaEventDestroy(ready);  // released once the wait is resolved
    cuda_check(e, "ordering the communication stream after the compute stream");
    const ncclResult_t r = call(comm_stream_);
    if (r != ncclSuccess) {
      poison();
      st_->fail(str_cat("rank ", rank(), ": ", p->what, " failed: ", ncclGetErrorString(r)));
      throw CommError(st_->failure_message());
    }
    cuda_check(cudaEventCreateWithFlags(&p->done, cudaEventDisableTiming), "cudaEventCreateWithFlags");
    cuda_check(cudaEventRecord(p->done, comm_stream_), "cudaEventRecord");
    if (timeout().count() > 0) {
      p->has_deadline = true;
      p->deadline = Clock::now() + timeout();
    }
    {
      std::lock_guard<std::mutex> lock(st_->mu);
      st_->pending.push_back(p);
    }
    return std::make_unique<NcclWork>(st_, p, compute_, timeout());
  }

  void check_failed() {
    if (st_->failed) {
      poison();
      throw CommError(st_->failure_message());
    }
  }
  void nccl_check(ncclResult_t r, const char* what) {
    if (r != ncclSuccess) throw CommError(str_cat("rank ", rank(), ": ", what, " failed: ", ncclGetErrorString(r)));
  }
  void cuda_check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      poison();
      throw CommError(str_cat("rank ", rank(), ": ", what, " failed: ", cudaGetErrorString(e)));
    }
  }

  // Every 10 ms: drop completed collectives; fail on an NCCL error, a GPU error, or a collective past
  // its deadline. After a failure, exit the process if it is still alive kExitGrace later.
  void watchdog_loop() {
    (void)cudaSetDevice(st_->device);
    std::optional<Clock::time_point> exit_at;
    std::unique_lock<std::mutex> stop_lock(stop_mu_);
    while (!stop_) {
      stop_cv_.wait_for(stop_lock, std::chrono::milliseconds(10));
      if (stop_) break;
      if (exit_at) {
        if (Clock::now() >= *exit_at) {
          std::fprintf(stderr, "%s\nrank %d: the NCCL communicator was aborted and the process did not exit; exiting with status %d\n",
                       st_->failure_message().c_str(), st_->rank, kExitComm);
          std::fflush(stderr);
          std::_Exit(kExitComm);
        }
        continue;
      }
      std::string why;
      {
        std::lock_guard<std::mutex> lock(st_->mu);
        const Clock::time_point now = Clock::now();
        std::vector<std::shared_ptr<Pending>> still;
        for (auto& p : st_->pending) {
          const cudaError_t e = cudaEventQuery(p->done);
          if (e == cudaSuccess) continue;
          if (e != cudaErrorNotReady && why.empty()) why = str_cat(p->what, " failed on the GPU: ", cudaGetErrorString(e));
          if (why.empty() && p->has_deadline && now > p->deadline)
            why = str_cat(p->what, " did not complete within the timeout (a peer is stalled, dead or skipped it)");
          still.push_back(p);
        }
        st_->pending.swap(still);
        if (why.empty() && st_->comm) {
          ncclResult_t async = ncclSuccess;
          if (ncclCommGetAsyncError(st_->comm, &async) == ncclSuccess && async != ncclSuccess && async != ncclInProgress)
            why = str_cat("NCCL reported an asynchronous error: ", ncclGetErrorString(async),
                          st_->pending.empty() ? std::string() : " (during " + st_->pending.front()->what + ")");
        }
      }
      if (!why.empty() && !st_->failed) {
        st_->fail(str_cat("rank ", st_->rank, ": ", why));
        exit_at = Clock::now() + kExitGrace;
      }
    }
  }

  std::unique_ptr<Communicator> boot_;
  std::shared_ptr<State> st_;
  cudaStream_t comm_stream_ = nullptr;
  cudaStream_t compute_ = nullptr;
  std::thread watchdog_;
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stop_ = false;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(std::unique_ptr<Communicator> bootstrap) {
  LS_REQUIRE(bootstrap != nullptr, CommError, "make_nccl_communicator: no bootstrap communicator");
  return std::make_unique<NcclCommunicator>(std::move(bootstrap));
}

}  // namespace lockstep::comm
