#include "comm/launch_env.h"

#include <cstdlib>
#include <string>

namespace lockstep::comm {
namespace {

bool set(const EnvLookup& env, const char* name) {
  const char* v = env(name);
  return v != nullptr && *v != '\0';
}

// A non-negative integer, or -1 when unset or not a plain number.
int as_int(const EnvLookup& env, const char* name) {
  const char* v = env(name);
  if (v == nullptr || *v == '\0') return -1;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < 0 || x > 1 << 30) return -1;
  return static_cast<int>(x);
}

}  // namespace

const char* process_env(const char* name) { return std::getenv(name); }

CommKind detect_comm_kind(const EnvLookup& env) {
  // mpirun/mpiexec (Open MPI sets OMPI_COMM_WORLD_*, PMIx launchers PMIX_RANK, MPICH/Hydra and
  // srun --mpi=pmi2 PMI_RANK): MPI_Init will find its peers.
  if (set(env, "OMPI_COMM_WORLD_SIZE") || set(env, "PMIX_RANK") || set(env, "PMI_RANK")) return CommKind::Mpi;
  // An srun task without PMI: MPI_Init would make each task a singleton of rank 0, and N replicas
  // would silently train alone. One task is fine as a local run.
  if (set(env, "SLURM_PROCID")) {
    int tasks = as_int(env, "SLURM_STEP_NUM_TASKS");
    if (tasks < 0) tasks = as_int(env, "SLURM_NTASKS");
    LS_REQUIRE(tasks <= 1, CommError, "srun started ", tasks, " tasks (this is SLURM_PROCID=",
               env("SLURM_PROCID"), ") but set no PMIx/PMI variables, so MPI cannot connect them and each "
               "task would train alone; launch with `srun --mpi=pmix` (Debian's Open MPI supports only PMIx) "
               "or with mpirun inside the allocation");
  }
  return CommKind::Local;
}

int slurm_tasks_on_node(const std::string& spec, int node_id) {
  // Comma-separated entries "N" or "N(xK)".
  if (node_id < 0) return -1;
  size_t pos = 0;
  int node = 0;
  while (pos < spec.size()) {
    size_t comma = spec.find(',', pos);
    std::string item = spec.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    pos = comma == std::string::npos ? spec.size() : comma + 1;
    char* end = nullptr;
    long n = std::strtol(item.c_str(), &end, 10);
    if (end == item.c_str() || n <= 0) return -1;
    long repeat = 1;
    if (*end == '(') {
      if (end[1] != 'x') return -1;
      char* end2 = nullptr;
      repeat = std::strtol(end + 2, &end2, 10);
      if (end2 == end + 2 || *end2 != ')' || end2[1] != '\0' || repeat <= 0) return -1;
    } else if (*end != '\0') {
      return -1;
    }
    if (node_id < node + repeat) return static_cast<int>(n);
    node += static_cast<int>(repeat);
  }
  return -1;
}

std::optional<LocalPlacement> local_placement_from_env(const EnvLookup& env, int rank, int size) {
  // Open MPI's mpirun, when its world is ours.
  const int ompi_rank = as_int(env, "OMPI_COMM_WORLD_RANK");
  const int ompi_size = as_int(env, "OMPI_COMM_WORLD_SIZE");
  const int ompi_lr = as_int(env, "OMPI_COMM_WORLD_LOCAL_RANK");
  const int ompi_ls = as_int(env, "OMPI_COMM_WORLD_LOCAL_SIZE");
  if (ompi_rank == rank && ompi_size == size && ompi_lr >= 0 && ompi_ls > 0 && ompi_lr < ompi_ls &&
      ompi_ls <= size)
    return LocalPlacement{ompi_lr, ompi_ls, "OMPI_COMM_WORLD_LOCAL_RANK/SIZE"};

  // srun: SLURM_LOCALID plus the tasks on this node.
  const int procid = as_int(env, "SLURM_PROCID");
  const int localid = as_int(env, "SLURM_LOCALID");
  int tasks = as_int(env, "SLURM_STEP_NUM_TASKS");
  if (tasks < 0) tasks = as_int(env, "SLURM_NTASKS");
  if (procid == rank && tasks == size && localid >= 0) {
    int local_size = as_int(env, "SLURM_NTASKS_PER_NODE");
    const char* source = "SLURM_LOCALID + SLURM_NTASKS_PER_NODE";
    const int node = as_int(env, "SLURM_NODEID");
    for (const char* var : {"SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"}) {
      if (local_size > 0) break;
      const char* spec = env(var);
      if (spec != nullptr) {
        local_size = slurm_tasks_on_node(spec, node);
        source = var == std::string("SLURM_STEP_TASKS_PER_NODE") ? "SLURM_LOCALID + SLURM_STEP_TASKS_PER_NODE"
                                                                 : "SLURM_LOCALID + SLURM_TASKS_PER_NODE";
      }
    }
    if (local_size > 0 && localid < local_size && local_size <= size)
      return LocalPlacement{localid, local_size, source};
  }
  return std::nullopt;
}

}  // namespace lockstep::comm
