#include "comm/shared_reduction.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

namespace lockstep::comm {
namespace detail {
namespace {
template <typename T>
void reduce_typed(T* __restrict dst, const T* __restrict src, int64_t n, ReduceOp op) {
  switch (op) {  // plain loops that -O3 vectorises
    case ReduceOp::Sum:
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(dst[i] + src[i]);
      break;
    case ReduceOp::Max:
      for (int64_t i = 0; i < n; ++i) dst[i] = src[i] > dst[i] ? src[i] : dst[i];
      break;
    case ReduceOp::Min:
      for (int64_t i = 0; i < n; ++i) dst[i] = src[i] < dst[i] ? src[i] : dst[i];
      break;
  }
}
}  // namespace

void reduce_into(void* dst, const void* src, int64_t n, ElemType t, ReduceOp op) {
  switch (t) {
    case ElemType::F32: reduce_typed(static_cast<float*>(dst), static_cast<const float*>(src), n, op); break;
    case ElemType::F64: reduce_typed(static_cast<double*>(dst), static_cast<const double*>(src), n, op); break;
    case ElemType::I64: reduce_typed(static_cast<int64_t*>(dst), static_cast<const int64_t*>(src), n, op); break;
    case ElemType::U8: reduce_typed(static_cast<uint8_t*>(dst), static_cast<const uint8_t*>(src), n, op); break;
  }
}
}  // namespace detail

namespace {
constexpr int64_t kPage = 4096;
constexpr int64_t kTileBytes = 16 << 10;  // one share is reduced in tiles that stay in L1
int64_t round_up(int64_t n, int64_t to) { return (n + to - 1) / to * to; }
int64_t load(int64_t& v) { return std::atomic_ref<int64_t>(v).load(std::memory_order_acquire); }
void store(int64_t& v, int64_t x) { std::atomic_ref<int64_t>(v).store(x, std::memory_order_release); }
}  // namespace

struct SharedReduction::Control {
  alignas(64) int64_t arrived;  // the latest launch whose data this rank has made ready
  alignas(64) int64_t reduced;  // the latest launch whose share this rank has reduced into every region
  alignas(64) Slot slots[kSlots];
};

int64_t SharedReduction::control_bytes() { return round_up(int64_t(sizeof(Control)), kPage); }

int64_t SharedReduction::mapping_bytes(int ranks, int64_t data_bytes) {
  return int64_t(ranks) * (control_bytes() + round_up(std::max<int64_t>(data_bytes, 1), kPage));
}

SharedReduction::SharedReduction(void* base, int ranks, int rank, int64_t data_bytes, std::shared_ptr<void> keep)
    : base_(static_cast<char*>(base)), ranks_(ranks), rank_(rank), data_bytes_(data_bytes),
      stride_(mapping_bytes(1, data_bytes)), keep_(std::move(keep)), tile_(size_t(kTileBytes)) {}

SharedReduction::Control& SharedReduction::control(int q) const {
  return *reinterpret_cast<Control*>(base_ + int64_t(q) * stride_);
}
char* SharedReduction::data_of(int q) const {
  return base_ + int64_t(q) * stride_ + control_bytes();
}

bool SharedReduction::contains(const Buffer& b) const {
  const char* p = static_cast<const char*>(b.data);
  const char* mine = data_of(rank_);
  return b.device == Device::CPU && p >= mine && p + b.bytes() <= mine + data_bytes_;
}

int64_t SharedReduction::min_reduced() const {
  int64_t m = INT64_MAX;
  for (int q = 0; q < ranks_; ++q) m = std::min(m, load(control(q).reduced));
  return m;
}

int64_t SharedReduction::launch(const Buffer& b, ReduceOp op, const std::string& what,
                                std::chrono::milliseconds timeout) {
  LS_CHECK(contains(b), "shared reduction of a buffer outside the shared region");
  const int64_t seq = launched_ + 1;
  if (seq > kSlots && min_reduced() < seq - kSlots) {  // its slot is still read elsewhere
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (min_reduced() < seq - kSlots) {
      progress();
      LS_REQUIRE(timeout.count() <= 0 || std::chrono::steady_clock::now() < deadline, CommError, "rank ", rank_, ": ",
                 what, ": ", kSlots, " earlier all-reduces in shared memory are still unfinished after the ",
                 timeout.count(), " ms timeout (watchdog): a rank is stuck, dead, or called the collectives in a "
                 "different order");
    }
  }
  launched_ = seq;
  const int64_t offset = static_cast<const char*>(b.data) - data_of(rank_);
  Control& me = control(rank_);
  me.slots[seq % kSlots] = Slot{seq, offset, b.count, int32_t(b.type), int32_t(op)};
  store(me.arrived, seq);
  pending_.push_back(Pending{seq, offset, b.count, b.type, op, what});
  return seq;
}

void SharedReduction::progress() {
  while (!pending_.empty()) {
    const Pending& p = pending_.front();
    for (int q = 0; q < ranks_; ++q)
      if (load(control(q).arrived) < p.seq) return;
    for (int q = 0; q < ranks_; ++q) {
      const Slot s = control(q).slots[p.seq % kSlots];
      LS_REQUIRE(s.seq == p.seq && s.offset == p.offset && s.count == p.count && s.type == int32_t(p.type) &&
                     s.op == int32_t(p.op),
                 CommError, "rank ", rank_, ": ", p.what, ": rank ", q, " launched a different all-reduce at this "
                 "place in shared memory (", s.count, " x ", elem_type_name(ElemType(s.type)), " at byte ", s.offset,
                 " of its buffer, ", reduce_op_name(ReduceOp(s.op)), ", against ", p.count, " x ",
                 elem_type_name(p.type), " at byte ", p.offset, ", ", reduce_op_name(p.op),
                 "): every rank must call the collectives in the same order, on the same slices");
    }
    reduce_share(p);
    store(control(rank_).reduced, p.seq);
    pending_.pop_front();
  }
}

void SharedReduction::reduce_share(const Pending& p) {
  const int64_t esize = elem_size(p.type);
  const int64_t begin = p.count * rank_ / ranks_, end = p.count * (rank_ + 1) / ranks_;
  const int64_t tile = kTileBytes / esize;
  char* t = tile_.data();
  for (int64_t i = begin; i < end; i += tile) {
    const int64_t n = std::min(tile, end - i), at = p.offset + i * esize, bytes = n * esize;
    std::memcpy(t, data_of(0) + at, size_t(bytes));  // rank order: the same bits on every rank
    for (int q = 1; q < ranks_; ++q) detail::reduce_into(t, data_of(q) + at, n, p.type, p.op);
    for (int q = 0; q < ranks_; ++q) std::memcpy(data_of(q) + at, t, size_t(bytes));
  }
}

bool SharedReduction::done(int64_t seq) const {
  for (int q = 0; q < ranks_; ++q)
    if (load(control(q).reduced) < seq) return false;
  return true;
}

std::shared_ptr<SharedReduction> create_shared_reduction(int ranks, int rank, int64_t data_bytes,
                                                         const std::function<std::string(std::string)>& share_name,
                                                         const std::function<bool(bool)>& all_ok, std::string* why) {
  static int created = 0;
  const int64_t bytes = SharedReduction::mapping_bytes(ranks, data_bytes);
  auto fail = [&](const std::string& what) {
    if (why->empty()) *why = str_cat(what, ": ", std::strerror(errno));
    return false;
  };
  std::string name;
  int fd = -1;
  bool ok = true;
  if (rank == 0) {
    name = str_cat("/lockstep-", getpid(), "-", created++);
    fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) {
      ok = fail(str_cat("shm_open(", name, ")"));
    } else if (const int rc = posix_fallocate(fd, 0, bytes); rc != 0) {
      errno = rc;
      ok = fail(str_cat("reserving ", bytes, " bytes of /dev/shm for ", name));
    }
  }
  const std::string shared = share_name(ok ? name : std::string());
  if (rank != 0) {
    if (shared.empty()) {
      ok = false;  // rank 0 says why
    } else if ((fd = shm_open(shared.c_str(), O_RDWR, 0600)) < 0) {
      ok = fail(str_cat("shm_open(", shared, ")"));
    }
  }
  void* base = MAP_FAILED;
  if (ok) {
    base = mmap(nullptr, size_t(bytes), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
    if (base == MAP_FAILED) ok = fail(str_cat("mapping ", bytes, " bytes of ", shared));
  }
  if (fd >= 0) close(fd);
  ok = all_ok(ok);  // every rank has it mapped (or gives up) before it is unlinked
  if (rank == 0 && !name.empty() && fd >= 0) shm_unlink(name.c_str());
  if (!ok) {
    if (base != MAP_FAILED) munmap(base, size_t(bytes));
    return nullptr;
  }
  std::shared_ptr<void> keep(base, [bytes](void* p) { munmap(p, size_t(bytes)); });
  return std::make_shared<SharedReduction>(base, ranks, rank, data_bytes, std::move(keep));
}

}  // namespace lockstep::comm
