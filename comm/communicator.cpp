#include "comm/communicator.h"

#include <sched.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <thread>

#include "comm/launch_env.h"
#include "comm/local_communicator.h"
#include "comm/mpi_communicator.h"
#ifdef LOCKSTEP_HAVE_CUDA
#include "comm/nccl_communicator.h"
#endif

namespace lockstep::comm {

const char* elem_type_name(ElemType t) {
  switch (t) {
    case ElemType::F32: return "float32";
    case ElemType::F64: return "float64";
    case ElemType::I64: return "int64";
    case ElemType::U8: return "uint8";
  }
  return "?";
}

int64_t elem_size(ElemType t) {
  switch (t) {
    case ElemType::F32: return 4;
    case ElemType::F64: return 8;
    case ElemType::I64: return 8;
    case ElemType::U8: return 1;
  }
  return 0;
}

ElemType elem_type_of(DType t) { return t == DType::F32 ? ElemType::F32 : ElemType::F64; }

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return "SUM";
    case ReduceOp::Max: return "MAX";
    case ReduceOp::Min: return "MIN";
  }
  return "?";
}

const char* compression_name(Compression c) {
  switch (c) {
    case Compression::None: return "none";
    case Compression::BF16: return "bf16";
    case Compression::FP16: return "fp16";
  }
  return "?";
}

Compression parse_compression(const std::string& s) {
  if (s == "none") return Compression::None;
  if (s == "bf16") return Compression::BF16;
  if (s == "fp16") return Compression::FP16;
  throw ConfigError(str_cat("compression must be none, bf16 or fp16 (got '", s, "')"));
}

std::string Buffer::describe() const {
  char size[32];
  const double b = static_cast<double>(bytes());
  if (b >= 1e6) std::snprintf(size, sizeof size, "%.2f MB", b / 1e6);
  else if (b >= 1e3) std::snprintf(size, sizeof size, "%.1f kB", b / 1e3);
  else std::snprintf(size, sizeof size, "%lld B", static_cast<long long>(bytes()));
  return str_cat(count, " x ", elem_type_name(type), " (", size, ", ", device_name(device), ")");
}

Buffer make_buffer(const Tensor& t) {
  return Buffer{t.raw(), t.numel(), elem_type_of(t.dtype()), t.device()};
}

void Work::wait() { wait(default_timeout()); }

void Communicator::check_not_poisoned(const char* collective) const {
  LS_REQUIRE(!poisoned_, CommError, "rank ", rank(), ": ", collective, " on the ", name(),
             " communicator after an earlier collective failed or timed out; the job must be aborted "
             "(Communicator::abort) because the ranks no longer agree on the collective sequence");
}

void Communicator::check_buffer(const char* collective, const Buffer& b) const {
  check_not_poisoned(collective);
  LS_REQUIRE(b.count >= 0, CommError, "rank ", rank(), ": ", collective, ": negative element count ", b.count);
  LS_REQUIRE(b.count == 0 || b.data != nullptr, CommError, "rank ", rank(), ": ", collective,
             ": null data pointer for ", b.describe());
  LS_REQUIRE(supports(b.device), CommError, "rank ", rank(), ": ", collective, " of ", b.describe(),
             ": the ", name(), " communicator does not accept ", device_name(b.device),
             " buffers", b.device == Device::CUDA
                 ? " (Debian's Open MPI is not CUDA-aware: use the NCCL communicator, or copy the buffer to the host)"
                 : "");
}

CommKind parse_comm_kind(const std::string& s) {
  if (s == "auto") return CommKind::Auto;
  if (s == "local") return CommKind::Local;
  if (s == "mpi") return CommKind::Mpi;
  if (s == "nccl") return CommKind::Nccl;
  throw ConfigError(str_cat("unknown communicator '", s, "': expected auto, local, mpi or nccl"));
}

const char* comm_kind_name(CommKind k) {
  switch (k) {
    case CommKind::Auto: return "auto";
    case CommKind::Local: return "local";
    case CommKind::Mpi: return "mpi";
    case CommKind::Nccl: return "nccl";
  }
  return "?";
}

CommKind detect_comm_kind() { return detect_comm_kind(process_env); }

std::unique_ptr<Communicator> make_communicator(CommKind kind) {
  if (kind == CommKind::Auto) {
    const char* forced = process_env("LOCKSTEP_COMM");
    kind = forced && *forced && std::string(forced) != "auto" ? parse_comm_kind(forced) : detect_comm_kind();
  }
  std::unique_ptr<Communicator> c;
  if (kind == CommKind::Nccl) {
#ifdef LOCKSTEP_HAVE_CUDA
    c = make_nccl_communicator(make_mpi_communicator());
#else
    throw CommError("the NCCL communicator was asked for, but this lockstep was built without the CUDA backend");
#endif
  } else if (kind == CommKind::Mpi) {
    c = make_mpi_communicator();
  } else {
    c = std::make_unique<LocalCommunicator>();
  }
  set_error_rank(c->rank());
  return c;
}

int threads_per_rank(int affinity_cores, int hardware_cores, int local_size) {
  affinity_cores = std::max(affinity_cores, 1);
  hardware_cores = std::max(hardware_cores, affinity_cores);
  local_size = std::max(local_size, 1);
  // Bound by the launcher to a disjoint share (e.g. mpirun with np <= cores binds one core each):
  // the affinity set is already this rank's share.
  if (affinity_cores < hardware_cores && affinity_cores * local_size <= hardware_cores) return affinity_cores;
  return std::max(1, affinity_cores / local_size);
}

int default_threads_per_rank(const Communicator& comm) {
  int hw = static_cast<int>(std::thread::hardware_concurrency());
  int affinity = hw;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) affinity = CPU_COUNT(&set);
  if (hw <= 0) hw = affinity;
  return threads_per_rank(affinity, hw, comm.local_size());
}

}  // namespace lockstep::comm
