// Launch discovery from the environment: was this process started by mpirun/mpiexec or srun, and
// where does it sit on its node. Pure functions of an environment lookup, so the unit tests can fake
// any launcher (style habit 14); the communicators pass `process_env`.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "comm/communicator.h"

namespace lockstep::comm {

// Returns the value of an environment variable, or nullptr when unset.
using EnvLookup = std::function<const char*(const char*)>;
const char* process_env(const char* name);  // std::getenv

// The kind `CommKind::Auto` resolves to (see make_communicator). Throws CommError when srun started
// several tasks without PMI/PMIx (no MPI could connect them).
CommKind detect_comm_kind(const EnvLookup& env);

struct LocalPlacement {
  int local_rank = 0;
  int local_size = 1;
  std::string source;  // which variables it came from, for messages
};
// Local rank and size from the launcher's variables, trusted only when they agree with the MPI rank
// and size: Open MPI's OMPI_COMM_WORLD_LOCAL_RANK/LOCAL_SIZE, else Slurm's SLURM_LOCALID with
// SLURM_NTASKS_PER_NODE or SLURM_STEP_TASKS_PER_NODE/SLURM_TASKS_PER_NODE (indexed by SLURM_NODEID).
// nullopt when neither applies (the caller then asks MPI_Comm_split_type).
std::optional<LocalPlacement> local_placement_from_env(const EnvLookup& env, int rank, int size);

// Slurm's compressed tasks-per-node list ("2(x3),1" = 2,2,2,1): the entry of node `node_id`, or -1
// when the text is malformed or too short.
int slurm_tasks_on_node(const std::string& spec, int node_id);

}  // namespace lockstep::comm
