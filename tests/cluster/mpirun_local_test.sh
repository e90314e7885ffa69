#!/usr/bin/env bash
# mpirun_local_test.sh - cluster/mpirun-local.sh and cluster/mpirun-hostfile.sh on this machine:
#   1. the uninterrupted run: mpirun-hostfile.sh with a hostfile naming only localhost (2 ranks);
#   2. mpirun-local.sh (2 ranks), stopped with `kill -USR1 <mpirun>` mid-run: exit 75 after a checkpoint;
#   3. mpirun-local.sh again: resumes (`--resume auto`) from that checkpoint and exits 0;
# passes when 2 and 3 have the statuses above, 3 resumed from a checkpoint past step 0, and its final
# weights are bit-identical to 1's. Every mpirun is bounded by --timeout (TIMEOUT, default 150 s).
#
#   bash tests/cluster/mpirun_local_test.sh [--trainer fake|real] [--lockstep PATH]
# The trainer is one variable, as in slurm_requeue_test.sh (fake: tests/cluster/fake-lockstep.sh).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
TRAINER=${TRAINER:-fake}
LOCKSTEP=${LOCKSTEP:-}
while [ $# -gt 0 ]; do
  case $1 in
    --trainer) TRAINER=$2; shift 2 ;;
    --lockstep) LOCKSTEP=$2; shift 2 ;;
    *) echo "usage: $0 [--trainer fake|real] [--lockstep PATH]" >&2; exit 2 ;;
  esac
done
command -v mpirun >/dev/null || { echo "SKIPPED: mpirun not installed"; exit 77; }
work=$(mktemp -d "${TMPDIR:-/tmp}/lockstep-mpirun-test.XXXXXX")
failed=0
fail() { echo "FAIL: $*"; failed=1; }
trap '[ $failed = 1 ] && echo "work directory kept: $work" || rm -rf "$work"' EXIT

case $TRAINER in
  fake) LOCKSTEP=$here/fake-lockstep.sh; RUN_FILE=$here/fake-run.yaml
        ARGS=(--set train.steps=12 --set train.step_seconds=0.4 --set checkpoint.every_steps=2); STOP_AFTER=0.5
        RESUME_RE='resum(ing|ed) from .*\(step [1-9][0-9]*\)' ;;
  real) LOCKSTEP=${LOCKSTEP:-$root/build/launch/lockstep}; RUN_FILE=$work/tiny-run.yaml; ARGS=(); STOP_AFTER=${STOP_AFTER:-0.5}
        RESUME_RE='Resuming from .*global step [1-9]' 
        bash "$here/make-tiny-run.sh" "$LOCKSTEP" "$work" "$RUN_FILE" || { fail "could not prepare the tiny run"; exit 1; } ;;
  *) echo "TRAINER must be fake or real" >&2; exit 2 ;;
esac
export LOCKSTEP RUN_FILE TIMEOUT=${TIMEOUT:-150} THREADS=1   # the real tiny run takes 20-60 s on a busy 2-core machine
export OMPI_MCA_btl_vader_single_copy_mechanism=none   # harmless outside containers (FINDINGS.md §1a)

echo "== 1. uninterrupted: mpirun-hostfile.sh, hostfile = this machine"
echo "localhost slots=2" >"$work/hosts"   # Open MPI starts local ranks for localhost without ssh
HOSTFILE=$work/hosts PER_NODE=2 RUN_DIR=$work/ref bash "$root/cluster/mpirun-hostfile.sh" "${ARGS[@]}"
rc=$?; [ $rc = 0 ] || fail "uninterrupted run exited $rc"

echo "== 2. mpirun-local.sh, kill -USR1 <mpirun> once its first checkpoint is written"
NP=2 RUN_DIR=$work/run bash "$root/cluster/mpirun-local.sh" "${ARGS[@]}" &
pid=$!
# A first complete checkpoint means the ranks are training with their signal handlers in place; a fixed
# sleep could signal before start-up ends on a loaded machine, or after a fast run has finished.
waited=0
until ls "$work/run/checkpoints" 2>/dev/null | grep -qv '\.tmp$'; do
  kill -0 $pid 2>/dev/null || break
  [ "$waited" -ge $((TIMEOUT * 4)) ] && break
  sleep 0.25; waited=$((waited + 1))
done
if kill -0 $pid 2>/dev/null; then
  sleep "$STOP_AFTER"; kill -USR1 $pid
else
  fail "the run ended before it could be signalled (no checkpoint seen while it ran)"
fi
wait $pid; rc=$?
[ $rc = 75 ] || fail "stopped run exited $rc, expected 75"

echo "== 3. mpirun-local.sh again: resumes"
NP=2 RUN_DIR=$work/run bash "$root/cluster/mpirun-local.sh" "${ARGS[@]}" 2>&1 | tee "$work/resume.log"
rc=${PIPESTATUS[0]}
[ $rc = 0 ] || fail "resumed run exited $rc"
grep -qE "$RESUME_RE" "$work/resume.log" || fail "the second run did not resume from a checkpoint past step 0"
if [ -f "$work/ref/final.h5" ] && [ -f "$work/run/final.h5" ]; then
  /usr/bin/python3 "$here/same-weights.py" "$work/ref/final.h5" "$work/run/final.h5" || fail "final weights differ"
else
  fail "final.h5 missing"
fi
[ $failed = 0 ] && echo PASS || echo FAILED
exit $failed
