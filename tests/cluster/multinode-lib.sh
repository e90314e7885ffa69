# multinode-lib.sh - sourced by the multinode tests (tests/cluster/multinode_*_test.sh, CTest label
# multinode): simulated hosts (lsnet.sh, lsnet-agent, lsslurm.sh next to this file) on one machine.
#
#   source "$(dirname "$0")/multinode-lib.sh"; mn_start "$@"     (first thing in a test)
#
# mn_start: skips (exit 77, reason printed) when not root, when network/uts/mount namespaces cannot be
# made, or when a tool is missing (mpirun, iproute2, util-linux, flock, /usr/bin/python3 with h5py, and
# whatever MN_TOOLS adds: the Slurm daemons for the Slurm test); then re-executes the test under
# `flock -w ${LSNET_LOCK_WAIT:-900} /tmp/lsnet.lock` (every user of simulated hosts on this machine holds
# that lock from `up` to `down`; exit 77 if it is not free in time), removes sets of hosts left by killed
# holders (`lsnet.sh reap`), and makes a fresh work directory in /tmp (all hosts see it, as a cluster's
# shared file system; 755, as munged needs). Every name the hosts get carries LSNET_ID=lst<PID>, unique
# while this test runs.
# On any exit (EXIT trap): the processes the test started in the background (mn_bg) are killed by PID,
# the Slurm daemons stopped by their pid files (lsslurm.sh stop), whatever still runs on the hosts killed
# by PID (mn_sweep: the processes in the hosts' uts namespaces, which only this test's commands can have
# entered), and the hosts removed (lsnet.sh down); the work directory is removed when the test passed,
# kept (and named) when it failed. MN_PIN=0 leaves the hosts unpinned even where cpusets exist (the
# fallback of machines with cgroup v2 only).
# Traffic stays inside the hosts' namespaces (lsnet.sh's safety rules); mpirun runs inside node0.
# shellcheck shell=bash
mn_here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mn_repo=$(cd "$mn_here/../.." && pwd)
L=$mn_here/lsnet.sh
S=$mn_here/lsslurm.sh
AGENT=$mn_here/lsnet-agent
mn_failed=0
mn_bg_pids=()
mn_skip() { echo "SKIPPED: $*"; exit 77; }
mn_fail() { echo "FAIL: $*"; mn_failed=1; }
# LOCKSTEP = the test's one argument, the trainer, made absolute (a path valid on every host).
mn_lockstep_arg() {
  [[ $# == 1 ]] || { echo "usage: $0 LOCKSTEP" >&2; exit 2; }
  LOCKSTEP=$(readlink -f "$1")
  [[ -x $LOCKSTEP ]] || { mn_fail "no lockstep binary at $1"; exit 1; }
}
mn_ok() { echo "ok: $*"; }
mn_now() { date +%s.%N; }
mn_since() { awk -v a="$1" -v b="$(mn_now)" 'BEGIN { printf "%.1f", b - a }'; }

mn_start() {
  [[ $(id -u) == 0 ]] || mn_skip "needs root (network namespaces, cpusets)"
  local b
  for b in ip tc nsenter unshare mountpoint flock mpirun ${MN_TOOLS:-}; do
    command -v "$b" >/dev/null || mn_skip "$b missing (bash launch/install-deps.sh; Slurm: LOCKSTEP_WITH_SLURM=1)"
  done
  [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import h5py, numpy' 2>/dev/null ||
    mn_skip "/usr/bin/python3 with h5py and numpy missing (python3-h5py)"
  unshare --net --uts --mount true 2>/dev/null || mn_skip "cannot create network/uts/mount namespaces here"
  # LSNET_LOCK_HELD=1: the caller holds the lock already (e.g. `flock /tmp/lsnet.lock ctest -L multinode`;
  # a second flock on the file would wait for the first)
  if [[ ${MN_LOCK_HELD:-} != 1 && ${LSNET_LOCK_HELD:-} != 1 ]]; then
    echo "multinode: waiting for /tmp/lsnet.lock (up to ${LSNET_LOCK_WAIT:-900} s; exit 77 if it stays taken)"
    MN_LOCK_HELD=1 MN_LOCK_T0=$(mn_now) exec flock -E 77 -w "${LSNET_LOCK_WAIT:-900}" /tmp/lsnet.lock bash "$0" "$@"
  fi
  [[ -n ${MN_LOCK_T0:-} ]] && echo "multinode: holding /tmp/lsnet.lock (waited $(mn_since "$MN_LOCK_T0") s)"
  mn_t0=$(mn_now)
  "$L" reap
  export LSNET_ID=lst$$ LSNET_OWNER=$$ LSNET_PREFIX=node
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  export OMPI_MCA_btl_vader_single_copy_mechanism=none   # harmless outside containers
  # pinned hosts (host I on CPU I mod nproc) when the cgroup-v1 cpuset hierarchy exists (MN_PIN=0: never),
  # else unbound ranks on every CPU (cgroup v2 machines)
  if [[ ${MN_PIN:-1} != 0 && -e /sys/fs/cgroup/cpuset/cpuset.cpus ]]; then mn_pin=1; else mn_pin=0; fi
  work=$(mktemp -d /tmp/lsmn.XXXXXX)
  chmod 755 "$work"
  trap mn_cleanup EXIT
  trap 'exit 130' INT TERM
}

# shellcheck disable=SC2317  # run by the EXIT trap
mn_cleanup() {
  local p
  for p in "${mn_bg_pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  for p in "${mn_bg_pids[@]}"; do wait "$p" 2>/dev/null; done
  if [[ -n ${mn_slurm:-} ]]; then LSSLURM_DIR=$mn_slurm "$S" stop >/dev/null 2>&1; fi
  mn_sweep
  "$L" down >/dev/null 2>&1
  if [[ $mn_failed == 0 ]]; then rm -rf "$work"; else echo "work directory kept: $work"; fi
}

# mn_host_pids HOST: the PIDs of the processes running on HOST: those whose uts namespace is the host's
# (lsnet.sh uts HOST). The hosts are made fresh by this test, so every such process is one it started.
mn_host_pids() {
  local uts f p
  uts=$("$L" uts "$1" 2>/dev/null) || return 0
  for f in /proc/[0-9]*/ns/uts; do
    [[ $(readlink "$f" 2>/dev/null) == "uts:[$uts]" ]] || continue
    p=${f#/proc/}; p=${p%%/*}
    [[ $p != "$$" && $p != "$BASHPID" ]] && echo "$p"
  done
}

# mn_sweep: SIGKILL, by PID, whatever is still running on this test's hosts (an orted that lost its
# mpirun behind a cut link stays forever, and would keep the namespaces alive); repeated until none is left
mn_sweep() {
  local n h p pids i
  n=$(cat "/run/lsnet.$LSNET_ID/n" 2>/dev/null || echo 0)
  for i in 1 2 3 4 5 6 7 8 9 10; do
    pids=()
    for ((h = 0; h < n; h++)); do while read -r p; do [[ -n $p ]] && pids+=("$p"); done < <(mn_host_pids "node$h"); done
    [[ ${#pids[@]} == 0 ]] && return 0
    [[ $i == 1 ]] && echo "multinode: killing what is left on the hosts: ${pids[*]}" >&2
    kill -KILL "${pids[@]}" 2>/dev/null
    sleep 0.2
  done
}

# mn_up N: N hosts node0..node{N-1}, pinned when possible
mn_up() { LSNET_PIN=$mn_pin "$L" up "$1" || { mn_fail "lsnet.sh up $1"; exit 1; }; }

# mn_tiny_run LOCKSTEP RUN_FILE: the tiny real run of tests/cluster/make-tiny-run.sh in $work (its
# knobs, TINY_EPOCHS and TINY_LIMIT, from the caller's environment)
mn_tiny_run() {
  bash "$mn_repo/tests/cluster/make-tiny-run.sh" "$1" "$work" "$2" >/dev/null || { mn_fail "could not prepare the tiny run"; exit 1; }
}

# mn_mpirun_hosts H K TIMEOUT LOG PROGRAM ARGS...: mpirun, inside node0, of H*K ranks: K on each of
# node0..node{H-1}, launched there by lsnet-agent; unbound (each pinned host has one CPU), yielding
# when idle (more ranks than CPUs), every wait bounded by --timeout. Variables named in MN_X (e.g.
# "LOCKSTEP_SHARED_ALLREDUCE") are passed to every rank. Returns mpirun's status; output in LOG.
mn_mpirun_hosts() {
  local h=$1 k=$2 t=$3 log=$4 hosts="" i v x=()
  shift 4
  for ((i = 0; i < h; i++)); do hosts+="${hosts:+,}node$i:$k"; done
  for v in ${MN_X:-}; do x+=(-x "$v"); done
  "$L" exec node0 mpirun --allow-run-as-root --oversubscribe --timeout "$t" --mca plm_rsh_agent "$AGENT" \
    --host "$hosts" -np $((h * k)) --map-by "ppr:$k:node" --bind-to none --mca mpi_yield_when_idle 1 \
    --mca btl self,vader,tcp -x PATH -x HDF5_USE_FILE_LOCKING=FALSE "${x[@]}" "$@" >"$log" 2>&1
}

# mn_mpirun_local N TIMEOUT LOG PROGRAM ARGS...: the one-host reference: N ranks on this machine (root
# namespace, its /dev/shm), same flags; LOCKSTEP_RANKS_PER_NODE and LOCKSTEP_SHARED_ALLREDUCE as set
# in the caller's environment reach every rank.
mn_mpirun_local() {
  local n=$1 t=$2 log=$3 v x=()
  shift 3
  for v in LOCKSTEP_RANKS_PER_NODE LOCKSTEP_SHARED_ALLREDUCE ${MN_X:-}; do [[ -n ${!v:-} ]] && x+=(-x "$v"); done
  mpirun --allow-run-as-root --oversubscribe --timeout "$t" -np "$n" --bind-to none --mca mpi_yield_when_idle 1 \
    --mca btl self,vader,tcp -x HDF5_USE_FILE_LOCKING=FALSE "${x[@]}" "$@" >"$log" 2>&1
}

# mn_bg CMD...: run CMD in the background, remembered for the EXIT trap; its PID in $mn_last_bg
mn_bg() { "$@" & mn_last_bg=$!; mn_bg_pids+=("$mn_last_bg"); }

# mn_wait_checkpoint RUN_DIR PID SECONDS: wait until RUN_DIR/checkpoints holds a complete checkpoint
# (the ranks are training, past start-up) while PID runs; 0 if so, 1 if PID ended or time ran out first
mn_wait_checkpoint() {
  local i
  for ((i = 0; i < $3 * 20; i++)); do
    ls "$1/checkpoints" 2>/dev/null | grep -q '^ckpt-.*\.h5$' && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# mn_same A B [--rtol R]: final weights bit-identical (or within R, same-weights.py); prints the verdict
mn_same() {
  local a=$1 b=$2; shift 2
  /usr/bin/python3 "$mn_repo/tests/cluster/same-weights.py" "$@" "$a" "$b"
}

# mn_end: the verdict line and the exit status
mn_end() {
  if [[ $mn_failed == 0 ]]; then echo "PASS ($(mn_since "$mn_t0") s under the lock)"; else echo "FAILED"; fi
  exit $mn_failed
}
