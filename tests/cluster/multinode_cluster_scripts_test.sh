#!/usr/bin/env bash
# multinode_cluster_scripts_test.sh - lockstep's own cluster/ scripts, UNCHANGED, across 2 simulated
# hosts, against the same run on one host (the recipe of ../shared/reference/multinode/README.md, §4,
# adopted from its lockstep-2host-test.sh).
#
#   bash tests/cluster/multinode_cluster_scripts_test.sh LOCKSTEP
#
#   0. a tiny real run (make-tiny-run.sh, 1 epoch of 64 steps) and the reference: cluster/mpirun-hostfile.sh
#      with the hostfile `localhost slots=2` (2 ranks), on this machine;
#   1. mpirun: cluster/mpirun-hostfile.sh run inside node0 with the hostfile node0,node1 (1 rank each;
#      PER_NODE=1 THREADS=1) and MPIRUN_ARGS="--mca plm_rsh_agent lsnet-agent" (the hosts pinned to one
#      CPU each, so the script's own --bind-to hwthread works; without cpusets --bind-to none is added);
#      it must exit 0, its log must say the gradients are reduced hierarchically (`grep -i hierarch`: 2
#      nodes), and its final weights must be bit-identical to the reference's (2 ranks: a+b = b+a);
#   2. Slurm: lsslurm.sh start (munged, slurmctld on node0, one slurmd per host), then
#      `sbatch --nodes=2 --ntasks-per-node=1 --cpus-per-task=1 cluster/slurm-multi-node.sbatch`
#      (srun --mpi=pmix); the job must end COMPLETED on node[0-1], its output must say hierarchical, and
#      its final weights must be bit-identical to the reference's.
# Exit 0 pass, 1 fail, 77 skipped (multinode-lib.sh; also without the Slurm daemons and clients). About
# 20 s on a busy 2-core machine; every wait is bounded (mpirun --timeout 120, the Slurm job 120 s).
set -uo pipefail
MN_TOOLS="munged munge unmunge slurmctld slurmd sbatch srun scontrol squeue sinfo scancel"
source "$(dirname "$0")/multinode-lib.sh"
mn_start "$@"
mn_lockstep_arg "$@"
bind=""; [[ $mn_pin == 1 ]] || bind=" --bind-to none"
TINY_EPOCHS=1 TINY_LIMIT=2048 mn_tiny_run "$LOCKSTEP" "$work/run.yaml"

echo "== reference: cluster/mpirun-hostfile.sh, 2 ranks on this machine"
t0=$(mn_now)
echo "localhost slots=2" >"$work/hosts1"
if HOSTFILE=$work/hosts1 PER_NODE=2 THREADS=1 TIMEOUT=120 LOCKSTEP=$LOCKSTEP RUN_FILE=$work/run.yaml RUN_DIR=$work/ref \
  bash "$mn_repo/cluster/mpirun-hostfile.sh" >"$work/ref.log" 2>&1; then mn_ok "reference ($(mn_since "$t0") s)"
else mn_fail "reference run: $(tail -3 "$work/ref.log")"; fi

mn_up 2
echo "== cluster/mpirun-hostfile.sh across node0, node1"
t0=$(mn_now)
printf 'node0 slots=1\nnode1 slots=1\n' >"$work/hosts2"
"$L" exec node0 env HOSTFILE="$work/hosts2" PER_NODE=1 THREADS=1 TIMEOUT=120 LOCKSTEP="$LOCKSTEP" RUN_FILE="$work/run.yaml" \
  RUN_DIR="$work/mpi2" MPIRUN_ARGS="--mca plm_rsh_agent $AGENT$bind" \
  bash "$mn_repo/cluster/mpirun-hostfile.sh" >"$work/mpi2.log" 2>&1
rc=$?
if [[ $rc == 0 ]]; then mn_ok "mpirun-hostfile.sh across 2 hosts ($(mn_since "$t0") s)"; else mn_fail "mpirun across hosts exited $rc: $(tail -5 "$work/mpi2.log")"; fi
grep -qi hierarch "$work/mpi2.log" || mn_fail "mpirun across hosts: the log does not say hierarchical: $(grep 'rank(s)' "$work/mpi2.log")"
mn_same "$work/ref/final.h5" "$work/mpi2/final.h5" || mn_fail "mpirun across hosts: final weights differ"

echo "== Slurm: sbatch --nodes=2 cluster/slurm-multi-node.sbatch"
t0=$(mn_now)
export LSSLURM_DIR=$work/slurm
mn_slurm=$LSSLURM_DIR   # for the EXIT trap
"$S" start || { mn_fail "lsslurm.sh start"; exit 1; }
job=$("$S" run env LOCKSTEP="$LOCKSTEP" RUN_FILE="$work/run.yaml" RUN_DIR="$work/slurm2" \
  sbatch --parsable --nodes=2 --ntasks-per-node=1 --cpus-per-task=1 --time=5 --output="$work/slurm-%j.out" \
  "$mn_repo/cluster/slurm-multi-node.sbatch")
[[ $job =~ ^[0-9]+$ ]] || { mn_fail "sbatch: $job"; exit 1; }
for _ in $(seq 240); do [[ -z $("$S" run squeue -h -j "$job" -o %T 2>/dev/null) ]] && break; sleep 0.5; done
state=$("$S" run scontrol show job "$job" | grep -o 'JobState=[A-Z]*')
if [[ $state == JobState=COMPLETED ]]; then mn_ok "slurm job $job COMPLETED ($(mn_since "$t0") s with the daemons' start)"
else mn_fail "slurm job $job: $state: $(tail -5 "$work"/slurm-*.out)"; fi
grep -q "on node\[0-1\]" "$work"/slurm-*.out || mn_fail "slurm job did not span node0 and node1"
grep -qi hierarch "$work"/slurm-*.out || mn_fail "slurm job: the output does not say hierarchical"
mn_same "$work/ref/final.h5" "$work/slurm2/final.h5" || mn_fail "slurm across hosts: final weights differ"
mn_end
