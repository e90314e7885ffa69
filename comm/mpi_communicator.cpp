#include "comm/mpi_communicator.h"

#include <mpi.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "comm/launch_env.h"
#include "comm/shared_reduction.h"

namespace lockstep::comm {
namespace detail {

[[noreturn]] void throw_mpi_error(int rc, const char* expr, const char* file, int line, const std::string& context) {
  char text[MPI_MAX_ERROR_STRING] = {0};
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) std::snprintf(text, sizeof text, "unknown MPI error");
  int cls = rc;
  MPI_Error_class(rc, &cls);
  throw CommError(str_cat("rank ", error_rank(), ": MPI call `", expr, "` failed (", file, ":", line, "): ", text,
                          " (MPI error ", rc, ", class ", cls, ")", context.empty() ? "" : " during ", context));
}

}  // namespace detail
}  // namespace lockstep::comm

// LS_MPI_CHECK(expr): run an MPI call; on failure throw CommError with the rank, the expression
// text, file:line and MPI's error string. Needs MPI_ERRORS_RETURN on the communicator involved.
#define LS_MPI_CHECK(expr)                                                                      \
  do {                                                                                          \
    const int ls_mpi_rc_ = (expr);                                                              \
    if (ls_mpi_rc_ != MPI_SUCCESS)                                                              \
      ::lockstep::comm::detail::throw_mpi_error(ls_mpi_rc_, #expr, __FILE__, __LINE__, "");     \
  } while (0)
// The same, naming the collective it belongs to.
#define LS_MPI_CHECK_IN(expr, context)                                                          \
  do {                                                                                          \
    const int ls_mpi_rc_ = (expr);                                                              \
    if (ls_mpi_rc_ != MPI_SUCCESS)                                                              \
      ::lockstep::comm::detail::throw_mpi_error(ls_mpi_rc_, #expr, __FILE__, __LINE__, context); \
  } while (0)

namespace lockstep::comm {
namespace {

using Clock = std::chrono::steady_clock;

WaitPolicy g_policy;
int g_instances = 0;           // live MpiCommunicators
bool g_we_initialised = false;  // MPI_Init_thread was ours, so MPI_Finalize is too
int g_thread_level = MPI_THREAD_SINGLE;

// Whether the launcher put ranks on several nodes (or LOCKSTEP_RANKS_PER_NODE asks to act so), read
// before MPI_Init: then MPI is initialised with MPI_THREAD_MULTIPLE, for the ProgressThread.
bool several_nodes_from_env() {
  auto num = [](const char* name) {
    const char* v = std::getenv(name);
    return v != nullptr && *v != '\0' ? std::atol(v) : 0L;
  };
  if (num("LOCKSTEP_RANKS_PER_NODE") > 0) return true;
  if (num("SLURM_JOB_NUM_NODES") > 1 || num("SLURM_NNODES") > 1) return true;
  const long size = num("OMPI_COMM_WORLD_SIZE"), local = num("OMPI_COMM_WORLD_LOCAL_SIZE");
  return size > 0 && local > 0 && local < size;
}

// Background progress for the rings across nodes. Open MPI moves a message larger than its eager
// limit (64 KiB over TCP) only inside MPI calls, and the trainer calls into MPI only between layers,
// so without help a bucket's ring mostly advances once the backward pass is over. While any such ring
// is in flight, this thread calls MPI_Iprobe (on a communicator of its own, a tag nothing uses) every
// `interval`, which drives Open MPI's progress engine for every pending transfer; it never touches a
// request or a buffer. Needs MPI_THREAD_MULTIPLE; LOCKSTEP_PROGRESS_US sets the interval (0: no thread).
class ProgressThread {
 public:
  ProgressThread(MPI_Comm comm, std::chrono::microseconds interval)
      : comm_(comm), interval_(interval), thread_([this] { run(); }) {}
  ~ProgressThread() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
    MPI_Comm_free(&comm_);
  }
  void add() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (active_++ == 0) wake_.notify_all();
  }
  void remove() {
    std::lock_guard<std::mutex> lock(mutex_);
    --active_;
  }

 private:
  static constexpr int kNeverTag = 32767;  // no message carries it: the probe only drives progress
  void run() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (true) {
      wake_.wait(lock, [&] { return stop_ || active_ > 0; });
      if (stop_) return;
      lock.unlock();
      int flag = 0;
      MPI_Iprobe(MPI_ANY_SOURCE, kNeverTag, comm_, &flag, MPI_STATUS_IGNORE);
      std::this_thread::sleep_for(interval_);
      lock.lock();
    }
  }
  MPI_Comm comm_;
  std::chrono::microseconds interval_;
  std::mutex mutex_;
  std::condition_variable wake_;
  int active_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

MPI_Datatype mpi_type(ElemType t) {
  switch (t) {
    case ElemType::F32: return MPI_FLOAT;
    case ElemType::F64: return MPI_DOUBLE;
    case ElemType::I64: return MPI_INT64_T;
    case ElemType::U8: return MPI_UINT8_T;
  }
  return MPI_DATATYPE_NULL;
}

MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return MPI_SUM;
    case ReduceOp::Max: return MPI_MAX;
    case ReduceOp::Min: return MPI_MIN;
  }
  return MPI_OP_NULL;
}

using detail::reduce_into;

std::string seconds_str(std::chrono::milliseconds ms) {
  char s[32];
  std::snprintf(s, sizeof s, "%.1f s", static_cast<double>(ms.count()) / 1000.0);
  return s;
}

class MpiCommunicator;

// A launched collective: subclasses say how to advance it.
class MpiWork : public Work {
 public:
  MpiWork(MpiCommunicator& comm, std::string description) : comm_(comm), description_(std::move(description)) {}
  using Work::wait;
  bool test() final;
  void wait(std::chrono::milliseconds timeout) final;
  std::string description() const final { return description_; }

 protected:
  std::chrono::milliseconds default_timeout() const final;
  // Advance; true once complete. May throw CommError.
  virtual bool progress() = 0;
  // For derived destructors (progress() is gone by the base destructor): wait for a pending
  // collective, bounded by the timeout; false if it failed or had to be abandoned, in which case MPI
  // may still write into its buffers.
  bool settle();
  MpiCommunicator& comm_;
  std::string description_;

 private:
  bool done_ = false;
  bool failed_ = false;
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator();
  // A communicator over `comm` (taken over and freed here), made by its parent for one stage of a
  // collective (the hierarchical all-reduce's ring across nodes); `family` is set once any
  // communicator of the family fails, so that pending work is abandoned rather than waited for.
  MpiCommunicator(MPI_Comm comm, std::shared_ptr<std::atomic<bool>> family);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }
  std::string name() const override { return "mpi"; }
  bool supports(Device d) const override { return d == Device::CPU; }

  // The typed overloads of the base stay visible.
  using Communicator::all_reduce_async;
  std::unique_ptr<Work> all_reduce_async(Buffer buf, ReduceOp op) override;
  std::unique_ptr<Work> broadcast_async(Buffer buf, int root) override;
  std::unique_ptr<Work> all_gather_async(Buffer send, Buffer recv) override;
  std::unique_ptr<Work> barrier_async() override;
  [[noreturn]] void abort(int code, const std::string& message) override;
  bool queues_collectives(const Buffer& buf) const override { return shared_for(buf) != nullptr; }
  Tensor allocate_reduction_buffer(int64_t numel, DType dtype, Device device,
                                   const ReductionOptions& options) override;
  std::string describe_reduction(const Tensor& buffer) const override {
    if (!buffer.defined()) return {};
    auto s = shared_for(make_buffer(buffer));
    return s ? s->description() : std::string();
  }
  // The ring all-reduce of `buf` over this communicator, whatever its size (the inter-node stage).
  std::unique_ptr<Work> ring_all_reduce(const Buffer& buf, ReduceOp op, Compression wire, const std::string& what);

  // The shared mapping `buf` lies in (allocate_reduction_buffer), or null.
  std::shared_ptr<SharedReduction> shared_for(const Buffer& buf) const {
    for (const auto& w : shared_)
      if (auto s = w.lock(); s && s->contains(buf)) return s;
    return nullptr;
  }
  // This rank's share of every shared-memory reduction that every rank has made ready. Every test()
  // calls it, so that a rank waiting on any collective still does its part of those.
  void drive_shared() {
    for (const auto& w : shared_)
      if (auto s = w.lock()) s->progress();
  }

  MPI_Comm comm() const { return comm_; }
  void mark_failed() {
    poison();
    family_->store(true);
  }
  bool family_failed() const { return family_->load(); }
  ProgressThread* progress_thread() const { return progress_.get(); }
  void set_progress_thread(std::shared_ptr<ProgressThread> t) { progress_ = std::move(t); }
  std::string describe_launch(const std::string& what) {
    const int64_t seq = next_sequence();
    return str_cat(what, " #", seq, label().empty() ? "" : " [" + label() + "]");
  }
  int ring_tag() { return static_cast<int>(ring_tags_++ % static_cast<int64_t>(tag_ub_)); }
  // Scratch memory for ring all-reduces, reused across calls (fresh pages would fault every call).
  std::vector<char> take_scratch(size_t bytes) {
    // The smallest pooled buffer that fits (several buckets of different sizes are in flight per
    // step: handing a small one to a big bucket would reallocate and fault fresh pages every step).
    size_t best = scratch_.size();
    for (size_t i = 0; i < scratch_.size(); ++i)
      if (scratch_[i].size() >= bytes && (best == scratch_.size() || scratch_[i].size() < scratch_[best].size()))
        best = i;
    if (best == scratch_.size()) return std::vector<char>(bytes);
    std::vector<char> s = std::move(scratch_[best]);
    scratch_.erase(scratch_.begin() + static_cast<std::ptrdiff_t>(best));
    return s;
  }
  void give_scratch(std::vector<char> s) {
    if (scratch_.size() < kMaxScratch) {
      scratch_.push_back(std::move(s));
    } else {  // replace the smallest
      auto it = std::min_element(scratch_.begin(), scratch_.end(),
                                 [](const auto& a, const auto& b) { return a.size() < b.size(); });
      if (it->size() < s.size()) *it = std::move(s);
    }
  }

 private:
  std::string where(const char* collective) const { return str_cat("rank ", rank_, ": ", collective); }
  void check_count(const char* collective, const Buffer& b) const {
    LS_REQUIRE(b.count <= INT_MAX, CommError, where(collective), " of ", b.describe(),
               ": more than 2^31-1 elements in one MPI call; split the buffer");
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  int tag_ub_ = 32767;
  int64_t ring_tags_ = 0;
  std::vector<std::weak_ptr<SharedReduction>> shared_;  // alive while their buffers are
  std::shared_ptr<std::atomic<bool>> family_ = std::make_shared<std::atomic<bool>>(false);
  std::shared_ptr<ProgressThread> progress_;  // drives this communicator's rings in the background, or null
  static constexpr size_t kMaxScratch = 16;
  std::vector<std::vector<char>> scratch_;
};

// ---- MpiWork --------------------------------------------------------------------------------------
std::chrono::milliseconds MpiWork::default_timeout() const { return comm_.timeout(); }

bool MpiWork::test() {
  if (done_) return true;
  LS_REQUIRE(!failed_, CommError, "rank ", comm_.rank(), ": ", description_, " already failed");
  try {
    comm_.drive_shared();
    done_ = progress();
  } catch (...) {
    failed_ = true;
    comm_.mark_failed();
    throw;
  }
  return done_;
}

void MpiWork::wait(std::chrono::milliseconds timeout) {
  if (test()) return;
  const WaitPolicy policy = g_policy;
  const auto start = Clock::now();
  const bool bounded = timeout.count() > 0;
  const auto deadline = bounded ? start + timeout : Clock::time_point::max();
  while (!test()) {
    const auto now = Clock::now();
    if (now >= deadline) {
      failed_ = true;
      comm_.mark_failed();
      throw CommError(str_cat(
          "rank ", comm_.rank(), ": ", description_, " timed out after ", seconds_str(timeout),
          " (watchdog): at least one of the ", comm_.size(), " ranks did not join this collective: it is stuck, "
          "dead, or called the collectives in a different order (every rank must call them in the same order). "
          "The job must be aborted; raise the timeout if a rank is legitimately slow here"));
    }
    const auto waited = now - start;
    if (waited < policy.spin) continue;
    if (waited < policy.yield) {
      sched_yield();
      continue;
    }
    auto nap = std::chrono::duration_cast<std::chrono::microseconds>(waited / 20);
    nap = std::clamp(nap, policy.min_sleep, policy.max_sleep);
    if (bounded) nap = std::min(nap, std::chrono::duration_cast<std::chrono::microseconds>(deadline - now) +
                                         std::chrono::microseconds(1));
    std::this_thread::sleep_for(nap);
  }
}

bool MpiWork::settle() {
  if (done_) return true;
  if (failed_) return false;
  if (comm_.poisoned() || comm_.family_failed()) {
    std::fprintf(stderr, "lockstep: rank %d: abandoning unfinished %s (the communicator already failed)\n",
                 comm_.rank(), description_.c_str());
    return false;
  }
  try {
    wait();
    return true;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "lockstep: rank %d: unfinished collective dropped: %s\n", comm_.rank(), e.what());
    return false;
  }
}

// One MPI request (MPI_I* collectives).
class RequestWork final : public MpiWork {
 public:
  RequestWork(MpiCommunicator& comm, std::string description) : MpiWork(comm, std::move(description)) {}
  ~RequestWork() override { settle(); }
  MPI_Request* request() { return &request_; }

 protected:
  bool progress() override {
    int flag = 0;
    LS_MPI_CHECK_IN(MPI_Test(&request_, &flag, MPI_STATUS_IGNORE), description_);
    return flag != 0;
  }

 private:
  MPI_Request request_ = MPI_REQUEST_NULL;
};

// In-place ring all-reduce: p-1 reduce-scatter steps then p-1 all-gather steps; in each, one
// ~count/p chunk goes to the right neighbour while one comes from the left. Each test() advances as
// many steps as have arrived. Chunk c covers [off(c), off(c) + len(c)); chunks may be empty.
// Compressed (float32 SUM only, Compression::BF16/FP16): what travels is 16 bits per value. A
// reduce-scatter step sends its chunk's partial sums rounded to 16 bits, and the receiver adds them
// to its own float32 chunk; the rank that ends with a chunk fully summed rounds it once, keeps the
// rounded values itself and passes those same 16-bit words round the all-gather, so every rank ends
// with the same bits.
class RingAllReduceWork final : public MpiWork {
 public:
  RingAllReduceWork(MpiCommunicator& comm, std::string description, Buffer buf, ReduceOp op,
                    Compression wire = Compression::None)
      : MpiWork(comm, std::move(description)), buf_(buf), op_(op), p_(comm.size()), r_(comm.rank()),
        esize_(elem_size(buf.type)), wire_(wire) {
    LS_CHECK(wire_ == Compression::None || (buf.type == ElemType::F32 && op == ReduceOp::Sum),
             "compressed ring all-reduce of ", buf.describe(), " with ", reduce_op_name(op));
    type_ = compressed() ? MPI_UINT16_T : mpi_type(buf.type);
    tag_ = comm.ring_tag();
    scratch_ = comm.take_scratch(static_cast<size_t>(len(0) * (compressed() ? 2 : esize_)));
    if (compressed()) stage_ = comm.take_scratch(static_cast<size_t>(buf.count * 2));
    post();
    if ((background_ = comm.progress_thread())) background_->add();
  }
  ~RingAllReduceWork() override {
    const bool settled = settle();
    leave_background();
    if (settled) {
      comm_.give_scratch(std::move(scratch_));
      if (compressed()) comm_.give_scratch(std::move(stage_));
    } else {  // MPI may still write into them: leak
      static_cast<void>(new std::vector<char>(std::move(scratch_)));
      static_cast<void>(new std::vector<char>(std::move(stage_)));
    }
  }

 protected:
  bool progress() override {
    while (step_ < 2 * (p_ - 1)) {
      int flag = 0;
      LS_MPI_CHECK_IN(MPI_Testall(2, requests_, &flag, MPI_STATUSES_IGNORE), description_);
      if (!flag) return false;
      const int rc = recv_chunk();
      if (step_ < p_ - 1) {
        if (compressed()) detail::decode16(wire_, words(scratch_), floats(off(rc)), len(rc), true);
        else reduce_into(at(off(rc)), scratch_.data(), len(rc), buf_.type, op_);
      } else if (compressed()) {
        detail::decode16(wire_, words(stage_) + off(rc), floats(off(rc)), len(rc), false);
      }
      ++step_;
      if (step_ < 2 * (p_ - 1)) post();
    }
    leave_background();
    return true;
  }

 private:
  void leave_background() {
    if (background_) background_->remove();
    background_ = nullptr;
  }
  bool compressed() const { return wire_ != Compression::None; }
  int64_t off(int c) const {
    const int64_t base = buf_.count / p_, rem = buf_.count % p_;
    return c * base + std::min<int64_t>(c, rem);
  }
  int64_t len(int c) const {
    const int64_t base = buf_.count / p_, rem = buf_.count % p_;
    return base + (c < rem ? 1 : 0);
  }
  char* at(int64_t elem) const { return static_cast<char*>(buf_.data) + elem * esize_; }
  float* floats(int64_t elem) const { return static_cast<float*>(buf_.data) + elem; }
  static uint16_t* words(std::vector<char>& v) { return reinterpret_cast<uint16_t*>(v.data()); }
  int send_chunk() const { return step_ < p_ - 1 ? (r_ - step_ + p_) % p_ : (r_ + 1 - (step_ - (p_ - 1)) + p_) % p_; }
  int recv_chunk() const { return step_ < p_ - 1 ? (r_ - step_ - 1 + p_) % p_ : (r_ - (step_ - (p_ - 1)) + p_) % p_; }
  void post() {
    const int right = (r_ + 1) % p_, left = (r_ - 1 + p_) % p_;
    const int sc = send_chunk(), rc = recv_chunk();
    const bool scatter = step_ < p_ - 1;
    void* dst = nullptr;
    const void* src = nullptr;
    if (!compressed()) {
      dst = scatter ? static_cast<void*>(scratch_.data()) : static_cast<void*>(at(off(rc)));
      src = at(off(sc));
    } else {
      uint16_t* stage = words(stage_);
      dst = scatter ? static_cast<void*>(scratch_.data()) : static_cast<void*>(stage + off(rc));
      if (scatter) {
        detail::encode16(wire_, floats(off(sc)), stage + off(sc), len(sc));
      } else if (step_ == p_ - 1) {  // this rank's fully summed chunk: rounded once, for every rank alike
        detail::encode16(wire_, floats(off(sc)), stage + off(sc), len(sc));
        detail::decode16(wire_, stage + off(sc), floats(off(sc)), len(sc), false);
      }  // later all-gather steps pass on the words received in the step before
      src = stage + off(sc);
    }
    LS_MPI_CHECK_IN(MPI_Irecv(dst, static_cast<int>(len(rc)), type_, left, tag_, comm_.comm(), &requests_[0]),
                    description_);
    LS_MPI_CHECK_IN(MPI_Isend(src, static_cast<int>(len(sc)), type_, right, tag_, comm_.comm(), &requests_[1]),
                    description_);
  }

  Buffer buf_;
  ReduceOp op_;
  MPI_Datatype type_ = MPI_DATATYPE_NULL;
  int p_, r_;
  int64_t esize_;
  Compression wire_;
  int tag_ = 0;
  int step_ = 0;
  std::vector<char> scratch_, stage_;
  MPI_Request requests_[2] = {MPI_REQUEST_NULL, MPI_REQUEST_NULL};
  ProgressThread* background_ = nullptr;  // registered with while in flight
};

// An all-reduce of a slice of the shared reduction buffer (comm/shared_reduction.h): launched by
// the constructor, advanced by every test() (MpiWork::test drives all shared reductions).
class SharedAllReduceWork final : public MpiWork {
 public:
  SharedAllReduceWork(MpiCommunicator& comm, std::string description, std::shared_ptr<SharedReduction> shared,
                      const Buffer& buf, ReduceOp op)
      : MpiWork(comm, std::move(description)), shared_(std::move(shared)) {
    seq_ = shared_->launch(buf, op, description_, comm.timeout());
  }
  ~SharedAllReduceWork() override { settle(); }

 protected:
  bool progress() override { return shared_->done(seq_); }

 private:
  std::shared_ptr<SharedReduction> shared_;
  int64_t seq_ = 0;
};

// ---- MpiCommunicator ------------------------------------------------------------------------------
MpiCommunicator::MpiCommunicator() {
  int finalized = 0, initialized = 0;
  MPI_Finalized(&finalized);
  LS_REQUIRE(!finalized, CommError,
             "MPI was already finalised in this process (an earlier MPI communicator was destroyed); create one "
             "MPI communicator for the whole run");
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = MPI_THREAD_SINGLE;
    LS_MPI_CHECK(MPI_Init_thread(nullptr, nullptr,
                                 several_nodes_from_env() ? MPI_THREAD_MULTIPLE : MPI_THREAD_FUNNELED, &provided));
    g_we_initialised = true;
    g_thread_level = provided;
    LS_REQUIRE(provided >= MPI_THREAD_FUNNELED, CommError, "MPI_Init_thread gave thread level ", provided,
               " but lockstep needs MPI_THREAD_FUNNELED (", MPI_THREAD_FUNNELED, ")");
  }
  if (!g_we_initialised) LS_MPI_CHECK(MPI_Query_thread(&g_thread_level));
  LS_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  LS_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm_));
  LS_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  LS_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  LS_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  set_error_rank(rank_);
  ++g_instances;

  void* attr = nullptr;
  int flag = 0;
  LS_MPI_CHECK(MPI_Comm_get_attr(comm_, MPI_TAG_UB, &attr, &flag));
  if (flag && attr != nullptr) tag_ub_ = std::max(1, *static_cast<int*>(attr));

  if (auto placement = local_placement_from_env(process_env, rank_, size_)) {
    local_rank_ = placement->local_rank;
    local_size_ = placement->local_size;
  } else {
    MPI_Comm node = MPI_COMM_NULL;
    LS_MPI_CHECK(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
    LS_MPI_CHECK(MPI_Comm_rank(node, &local_rank_));
    LS_MPI_CHECK(MPI_Comm_size(node, &local_size_));
    LS_MPI_CHECK(MPI_Comm_free(&node));
  }
}

MpiCommunicator::MpiCommunicator(MPI_Comm comm, std::shared_ptr<std::atomic<bool>> family)
    : comm_(comm), family_(std::move(family)) {
  LS_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  LS_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  LS_MPI_CHECK(MPI_Comm_size(comm_, &size_));
  void* attr = nullptr;
  int flag = 0;
  LS_MPI_CHECK(MPI_Comm_get_attr(comm_, MPI_TAG_UB, &attr, &flag));
  if (flag && attr != nullptr) tag_ub_ = std::max(1, *static_cast<int*>(attr));
  local_rank_ = 0;
  local_size_ = 1;
  ++g_instances;  // MPI stays initialised while it lives (a reduction buffer may outlive its parent)
}

MpiCommunicator::~MpiCommunicator() {
  --g_instances;
  progress_.reset();  // its thread calls MPI: stopped before anything is freed or finalised
  if (poisoned() || family_failed()) return;  // a collective is half done: freeing or finalising would hang
  if (comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  if (g_instances == 0 && g_we_initialised) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
}

std::unique_ptr<Work> MpiCommunicator::all_reduce_async(Buffer buf, ReduceOp op) {
  check_buffer("all_reduce", buf);
  auto shared = shared_for(buf);  // only ever set under several ranks
  std::string what = describe_launch(
      str_cat("all_reduce(", reduce_op_name(op), ", ", buf.describe(), shared ? ", shared memory)" : ")"));
  if (shared) return std::make_unique<SharedAllReduceWork>(*this, std::move(what), std::move(shared), buf, op);
  if (size_ > 1 && buf.bytes() >= kRingMinBytes && buf.count >= size_)
    return ring_all_reduce(buf, op, Compression::None, what);
  check_count("all_reduce", buf);
  auto w = std::make_unique<RequestWork>(*this, what);
  LS_MPI_CHECK_IN(MPI_Iallreduce(MPI_IN_PLACE, buf.data, static_cast<int>(buf.count), mpi_type(buf.type), mpi_op(op),
                                 comm_, w->request()),
                  what);
  return w;
}

std::unique_ptr<Work> MpiCommunicator::ring_all_reduce(const Buffer& buf, ReduceOp op, Compression wire,
                                                       const std::string& what) {
  LS_REQUIRE(buf.count / size_ < INT_MAX, CommError, where("all_reduce"), " of ", buf.describe(),
             ": chunks over 2^31-1 elements");
  return std::make_unique<RingAllReduceWork>(*this, what, buf, op, wire);
}

namespace {
// An integer of at least `least` (0 or 1) from the environment, `def` when unset; CommError naming the
// variable otherwise.
int env_int(const char* name, int def, int least) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return def;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  LS_REQUIRE(*end == '\0' && n >= least && n <= INT_MAX, CommError, "rank ", error_rank(), ": ", name, "='", v,
             least > 0 ? "' is not a positive integer" : "' is not a count (0 or more)");
  return static_cast<int>(n);
}
}  // namespace

Tensor MpiCommunicator::allocate_reduction_buffer(int64_t numel, DType dtype, Device device,
                                                  const ReductionOptions& options) {
  // Whether to try is decided together (the environment could differ between ranks); every rank then
  // takes part in the same collectives below or none does.
  const char* env = std::getenv("LOCKSTEP_SHARED_ALLREDUCE");
  int want = device == Device::CPU && size_ > 1 && numel > 0 && !(env != nullptr && std::strcmp(env, "0") == 0);
  LS_MPI_CHECK_IN(MPI_Allreduce(MPI_IN_PLACE, &want, 1, MPI_INT, MPI_MIN, comm_), "allocate_reduction_buffer");
  if (!want) return {};

  // The nodes: the ranks that share memory (MPI_COMM_TYPE_SHARED: one per host), or consecutive
  // groups of LOCKSTEP_RANKS_PER_NODE ranks (to run the several-node path on one host, as tests and
  // benchmarks do). Every node must hold the same number of ranks: each rank of a node then owns one
  // share of every all-reduce, and all-reduces it with the same-index ranks of the other nodes.
  const int group = env_int("LOCKSTEP_RANKS_PER_NODE", 0, 1);
  LS_REQUIRE(group == 0 || size_ % group == 0, CommError, "rank ", rank_, ": LOCKSTEP_RANKS_PER_NODE=", group,
             " does not divide the ", size_, " ranks into nodes");
  MPI_Comm node = MPI_COMM_NULL, across = MPI_COMM_NULL;
  if (group > 0) LS_MPI_CHECK_IN(MPI_Comm_split(comm_, rank_ / group, rank_, &node), "allocate_reduction_buffer");
  else LS_MPI_CHECK_IN(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
                       "allocate_reduction_buffer");
  int node_rank = 0, node_size = 1;
  LS_MPI_CHECK(MPI_Comm_rank(node, &node_rank));
  LS_MPI_CHECK(MPI_Comm_size(node, &node_size));
  int sizes[2] = {node_size, -node_size};  // min and -max of the ranks per node
  LS_MPI_CHECK_IN(MPI_Allreduce(MPI_IN_PLACE, sizes, 2, MPI_INT, MPI_MIN, comm_), "allocate_reduction_buffer");
  if (sizes[0] != -sizes[1]) {
    MPI_Comm_free(&node);
    if (rank_ == 0)
      std::fprintf(stderr, "lockstep: the nodes hold different numbers of ranks (%d to %d): gradients are reduced "
                   "over one MPI ring across all ranks instead of hierarchically\n", sizes[0], -sizes[1]);
    return {};
  }
  const int nodes = size_ / node_size;

  auto share_name = [&](std::string name) {
    char buf[256] = {0};
    std::snprintf(buf, sizeof buf, "%s", name.c_str());
    LS_MPI_CHECK_IN(MPI_Bcast(buf, sizeof buf, MPI_CHAR, 0, node), "allocate_reduction_buffer");
    return std::string(buf);
  };
  auto all_ok = [&](bool ok) {
    int v = ok ? 1 : 0;
    LS_MPI_CHECK_IN(MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT, MPI_MIN, node), "allocate_reduction_buffer");
    return v != 0;
  };
  std::string why;
  auto shared = create_shared_reduction(node_size, node_rank, numel * dtype_size(dtype), share_name, all_ok, &why);
  MPI_Comm_free(&node);
  int ok = shared != nullptr;  // on every node
  LS_MPI_CHECK_IN(MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, comm_), "allocate_reduction_buffer");
  if (!ok) {
    if (!why.empty())
      std::fprintf(stderr, "lockstep: rank %d: no all-reduce through shared memory (%s); reducing over MPI instead\n",
                   rank_, why.c_str());
    return {};
  }
  if (nodes > 1) {
    LS_MPI_CHECK_IN(MPI_Comm_split(comm_, node_rank, rank_, &across), "allocate_reduction_buffer");
    auto ring = std::make_shared<MpiCommunicator>(across, family_);
    ring->set_timeout(timeout());
    const int interval_us = env_int("LOCKSTEP_PROGRESS_US", kProgressIntervalUs, 0);
    if (g_thread_level >= MPI_THREAD_MULTIPLE && interval_us > 0) {
      MPI_Comm probe = MPI_COMM_NULL;
      LS_MPI_CHECK_IN(MPI_Comm_dup(across, &probe), "allocate_reduction_buffer");
      ring->set_progress_thread(std::make_shared<ProgressThread>(probe, std::chrono::microseconds(interval_us)));
    }
    const Compression wire = dtype == DType::F32 ? options.compression : Compression::None;
    int in_flight = options.inter_node_in_flight > 0 ? options.inter_node_in_flight : kInterNodeInFlight;
    if (const int e = env_int("LOCKSTEP_INTER_NODE_IN_FLIGHT", 0, 1)) in_flight = e;
    shared->set_inter_node(SharedReduction::InterNode{
        [ring, wire](const Buffer& share, ReduceOp op, const std::string& what) {
          return ring->ring_all_reduce(share, op, op == ReduceOp::Sum ? wire : Compression::None,
                                       str_cat(what, " across nodes"));
        },
        in_flight});
    shared->set_description(str_cat("hierarchical: shared memory within each of ", nodes, " nodes x ", node_size,
                                     " rank(s), a ring across the nodes",
                                     wire == Compression::None ? "" : str_cat(" carrying ", compression_name(wire)),
                                     ", ", in_flight, " in flight",
                                     ring->progress_thread() ? ", progressed in the background" : ""));
  }
  std::erase_if(shared_, [](const auto& w) { return w.expired(); });
  shared_.push_back(shared);
  return Tensor::wrap(shared->data(), {numel}, Device::CPU, dtype, shared);
}

std::unique_ptr<Work> MpiCommunicator::broadcast_async(Buffer buf, int root) {
  check_buffer("broadcast", buf);
  check_count("broadcast", buf);
  LS_REQUIRE(root >= 0 && root < size_, CommError, where("broadcast"), ": root ", root, " is not a rank of the ",
             size_, "-rank job");
  std::string what = describe_launch(str_cat("broadcast(root ", root, ", ", buf.describe(), ")"));
  auto w = std::make_unique<RequestWork>(*this, what);
  LS_MPI_CHECK_IN(MPI_Ibcast(buf.data, static_cast<int>(buf.count), mpi_type(buf.type), root, comm_, w->request()),
                  what);
  return w;
}

std::unique_ptr<Work> MpiCommunicator::all_gather_async(Buffer send, Buffer recv) {
  check_buffer("all_gather", send);
  check_buffer("all_gather", recv);
  check_count("all_gather", recv);
  LS_REQUIRE(send.type == recv.type, CommError, where("all_gather"), " from ", send.describe(), " into ",
             recv.describe(), ": element types differ");
  LS_REQUIRE(recv.count == send.count * size_, CommError, where("all_gather"), " of ", send.describe(), " into ",
             recv.describe(), ": the receive buffer must hold size() x send.count = ", send.count * size_,
             " elements");
  std::string what = describe_launch(str_cat("all_gather(", send.describe(), ")"));
  auto w = std::make_unique<RequestWork>(*this, what);
  const MPI_Datatype t = mpi_type(send.type);
  LS_MPI_CHECK_IN(MPI_Iallgather(send.data, static_cast<int>(send.count), t, recv.data, static_cast<int>(send.count), t,
                                 comm_, w->request()),
                  what);
  return w;
}

std::unique_ptr<Work> MpiCommunicator::barrier_async() {
  check_not_poisoned("barrier");
  std::string what = describe_launch("barrier");
  auto w = std::make_unique<RequestWork>(*this, what);
  LS_MPI_CHECK_IN(MPI_Ibarrier(comm_, w->request()), what);
  return w;
}

void MpiCommunicator::abort(int code, const std::string& message) {
  std::fflush(stdout);
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  std::fprintf(stderr, "lockstep: rank %d/%d (%s pid %d): aborting the job (exit %d): %s\n", rank_, size_, host,
               static_cast<int>(getpid()), code, message.c_str());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);  // MPI_Abort does not return; in case it does
}

}  // namespace

void set_wait_policy(const WaitPolicy& policy) { g_policy = policy; }
WaitPolicy wait_policy() { return g_policy; }

std::unique_ptr<Communicator> make_mpi_communicator() { return std::make_unique<MpiCommunicator>(); }

}  // namespace lockstep::comm
