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

namespace {
uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
float float_of(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t to_bf16(float f) {
  const uint32_t u = bits_of(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // NaN stays a NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);                  // nearest, ties to even
}
float from_bf16(uint16_t h) { return float_of(uint32_t(h) << 16); }
uint16_t to_fp16(float f) {
  const _Float16 h = static_cast<_Float16>(f);  // IEEE binary16, nearest even (F16C where the CPU has it)
  uint16_t u;
  std::memcpy(&u, &h, 2);
  return u;
}
float from_fp16(uint16_t u) {
  _Float16 h;
  std::memcpy(&h, &u, 2);
  return static_cast<float>(h);
}
}  // namespace

void encode16(Compression c, const float* src, uint16_t* dst, int64_t n) {
  if (c == Compression::BF16) {
    for (int64_t i = 0; i < n; ++i) dst[i] = to_bf16(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = to_fp16(src[i]);
  }
}

void decode16(Compression c, const uint16_t* src, float* dst, int64_t n, bool accumulate) {
  if (c == Compression::BF16) {
    if (accumulate) for (int64_t i = 0; i < n; ++i) dst[i] += from_bf16(src[i]);
    else for (int64_t i = 0; i < n; ++i) dst[i] = from_bf16(src[i]);
  } else {
    if (accumulate) for (int64_t i = 0; i < n; ++i) dst[i] += from_fp16(src[i]);
    else for (int64_t i = 0; i < n; ++i) dst[i] = from_fp16(src[i]);
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
  pending_.push_back(Pending{seq, offset, b.count, b.type, op, what, nullptr});
  return seq;
}

bool SharedReduction::all_arrived(const Pending& p) const {
  for (int q = 0; q < ranks_; ++q)
    if (load(control(q).arrived) < p.seq) return false;
  return true;
}

void SharedReduction::check_slots(const Pending& p) const {
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
}

void SharedReduction::progress() {
  for (bool moved = true; moved;) {
    moved = false;
    // Stage 1 (and 2 across nodes): in launch order, sum the share of every launch all ranks made ready.
    moved |= sum_ready();
    // Stage 3: complete in launch order (frees room for more inter-node all-reduces).
    moved |= complete_ready() && across_nodes() && summed_ < pending_.size();
  }
}

bool SharedReduction::sum_ready() {
  bool moved = false;
  while (summed_ < pending_.size()) {
    Pending& p = pending_[summed_];
    if (!all_arrived(p)) break;
    if (across_nodes() && in_flight_ >= std::max(1, inter_.max_in_flight)) break;
    check_slots(p);
    reduce_share(p, !across_nodes());
    if (across_nodes()) {
      const auto [begin, end] = share_of(p);
      const int64_t esize = elem_size(p.type);
      p.inter = inter_.start(Buffer{data_of(rank_) + p.offset + begin * esize, end - begin, p.type, Device::CPU}, p.op,
                             p.what);
      ++in_flight_;
    }
    ++summed_;
    moved = true;
  }
  return moved;
}

bool SharedReduction::complete_ready() {
  bool moved = false;
  while (summed_ > 0) {
    Pending& p = pending_.front();
    if (p.inter) {
      if (!p.inter->test()) break;
      --in_flight_;
      p.inter.reset();
      scatter_share(p);
    }
    store(control(rank_).reduced, p.seq);
    pending_.pop_front();
    --summed_;
    moved = true;
  }
  return moved;
}

std::pair<int64_t, int64_t> SharedReduction::share_of(const Pending& p) const {
  return {p.count * rank_ / ranks_, p.count * (rank_ + 1) / ranks_};
}

void SharedReduction::reduce_share(const Pending& p, bool everywhere) {
  const int64_t esize = elem_size(p.type);
  const auto [begin, end] = share_of(p);
  if (ranks_ == 1) return;  // the share is the whole slice, already in place
  const int64_t tile = kTileBytes / esize;
  char* t = tile_.data();
  for (int64_t i = begin; i < end; i += tile) {
    const int64_t n = std::min(tile, end - i), at = p.offset + i * esize, bytes = n * esize;
    std::memcpy(t, data_of(0) + at, size_t(bytes));  // rank order: the same bits on every rank
    for (int q = 1; q < ranks_; ++q) detail::reduce_into(t, data_of(q) + at, n, p.type, p.op);
    if (everywhere) {
      for (int q = 0; q < ranks_; ++q) std::memcpy(data_of(q) + at, t, size_t(bytes));
    } else {
      std::memcpy(data_of(rank_) + at, t, size_t(bytes));
    }
  }
}

void SharedReduction::scatter_share(const Pending& p) {
  const int64_t esize = elem_size(p.type);
  const auto [begin, end] = share_of(p);
  const int64_t at = p.offset + begin * esize, bytes = (end - begin) * esize;
  for (int q = 0; q < ranks_; ++q)
    if (q != rank_) std::memcpy(data_of(q) + at, data_of(rank_) + at, size_t(bytes));
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
