#!/usr/bin/env bash
# slurm_requeue_test.sh - submits cluster/*.sbatch to a real one-node Slurm (slurm-local.sh: munged,
# slurmctld and slurmd on localhost) and checks that a job cut by its time limit checkpoints, requeues
# itself, resumes, and ends with the same weights as an uninterrupted run.
#
#   bash tests/cluster/slurm_requeue_test.sh [--trainer fake|real] [--lockstep PATH] [--keep]
#
# Three jobs run side by side on the local cluster (6 CPUs, 2 fake GPUs advertised), 2 tasks each, srun --mpi=pmix:
#   ref  cluster/slurm-multi-node.sbatch (--nodes=1 --time=5): the uninterrupted run;
#   pre  cluster/slurm-preemptible.sbatch --time=1 --signal=B:USR1@30: Slurm warns the batch shell within
#        the first ~30 s of every incarnation; the script forwards the signal, the trainer checkpoints and
#        exits 75, the script requeues the job, the next incarnation resumes with `--resume auto`.
#   gpu  cluster/slurm-single-node-gpus.sbatch --gpus-per-node=2 on fake GPUs (slurm-local.sh SLURM_LOCAL_GPUS):
#        each rank must see CUDA_VISIBLE_DEVICES=0,1 (skipped where mknod is not allowed);
#   bad  cluster/slurm-preemptible.sbatch on a missing run file: must end FAILED with exit 2, not requeued.
# Then (NODEFAIL=1, the default with the real trainer):
#   nf   cluster/slurm-preemptible.sbatch; once it has a checkpoint the node is set DOWN: Slurm cancels the
#        step and requeues the job itself; it must resume and end COMPLETED with the reference's weights.
# Passes when ref, pre and gpu end COMPLETED with exit 0, `pre` was requeued at least once and resumed from a
# checkpoint, and every final.h5 holds the reference's weights bit for bit (same-weights.py). Bounded: the whole test
# gives up after DEADLINE_S (default 400 s) and cancels its jobs; the cluster is stopped on every exit.
#
# The trainer is one variable, TRAINER (--trainer):
#   fake  tests/cluster/fake-lockstep.sh, a stand-in that follows `lockstep train`'s contract (default)
#   real  the lockstep binary (--lockstep PATH, default build/launch/lockstep) on tests/cluster/tiny-run.yaml
#
# Exit status: 0 pass, 1 fail, 77 skipped with the reason printed (not root, Slurm/munge not installed:
# `slurm-local.sh check`). When the check passes but the cluster does not start, that is a failure (a
# broken harness must not hide behind a skip) unless LOCKSTEP_SLURM_OPTIONAL=1.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
TRAINER=${TRAINER:-fake}
LOCKSTEP=${LOCKSTEP:-}
KEEP=0
DEADLINE_S=${DEADLINE_S:-400}
while [ $# -gt 0 ]; do
  case $1 in
    --trainer) TRAINER=$2; shift 2 ;;
    --lockstep) LOCKSTEP=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    *) echo "usage: $0 [--trainer fake|real] [--lockstep PATH] [--keep]" >&2; exit 2 ;;
  esac
done

t0=$(date +%s)
say() { echo "[slurm-test +$(( $(date +%s) - t0 ))s] $*"; }
skip() { echo "SKIPPED: $*"; exit 77; }
failed=0
fail() { echo "FAIL: $*"; failed=1; }

why=$(bash "$here/slurm-local.sh" check) || skip "cannot run a local Slurm here: $(echo "$why" | paste -sd';')"

work=$(mktemp -d "${TMPDIR:-/tmp}/lockstep-slurm-test.XXXXXX")
chmod 755 "$work"   # munged wants o+x on every directory above its socket
# 2 fake GPUs (device nodes aliasing /dev/null) for slurm-single-node-gpus.sbatch, where mknod is allowed
GPUS=2
mknod "$work/probe" c 1 3 2>/dev/null && rm -f "$work/probe" || GPUS=0
export SLURM_LOCAL_DIR=$work/slurm SLURM_LOCAL_CPUS=6 SLURM_LOCAL_GPUS=$GPUS
# Safety net: the daemons detach from this script, so if it is SIGKILLed (e.g. by ctest's TIMEOUT) its EXIT
# trap never runs and they would live on. A detached reaper stops them (and removes the work directory)
# DEADLINE_S + 40 s from now unless the normal cleanup below has already killed the reaper.
reaper_pid=$(setsid bash -c 'sleep "$1"; SLURM_LOCAL_DIR="$2/slurm" bash "$3" stop; rm -rf "$2"' reaper \
  "$((DEADLINE_S + 40))" "$work" "$here/slurm-local.sh" >/dev/null 2>&1 </dev/null & echo $!)
cleanup() {
  bash "$here/slurm-local.sh" stop >/dev/null 2>&1
  kill -- -"$reaper_pid" 2>/dev/null   # its process group: the bash and its sleep
  if [ "$KEEP" = 1 ] || [ "$failed" = 1 ]; then echo "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'fail "interrupted"; exit 1' INT TERM

# RESUME_RE: the trainer's log line for a resume from a checkpoint past step 0.
# WARN_ON_CHECKPOINT=1: besides Slurm's own --signal warning, the test sends the same warning to the batch
# shell (scancel --batch --signal=USR1, exactly what --signal=B:USR1 does) as soon as the first incarnation
# has written a checkpoint, so a fast trainer is still cut mid-run; the fake trainer (40 s) relies on
# Slurm's warning alone, which proves the --signal path.
case $TRAINER in
  fake)
    LOCKSTEP=$here/fake-lockstep.sh
    RUN_FILE=$here/fake-run.yaml
    RESUME_RE=${RESUME_RE:-'resum(ing|ed) from .*\(step [1-9][0-9]*\)'}
    WARN_ON_CHECKPOINT=${WARN_ON_CHECKPOINT:-0}
    NODEFAIL=${NODEFAIL:-0} ;;   # the stand-in's 40 s run would make the node-failure phase long
  real)
    LOCKSTEP=${LOCKSTEP:-$root/build/launch/lockstep}
    [ -x "$LOCKSTEP" ] || { fail "no lockstep binary at $LOCKSTEP"; exit 1; }
    RUN_FILE=$work/tiny-run.yaml
    bash "$here/make-tiny-run.sh" "$LOCKSTEP" "$work" "$RUN_FILE" || { fail "could not prepare the tiny run"; exit 1; }
    RESUME_RE=${RESUME_RE:-'Resuming from .*global step [1-9]'}
    WARN_ON_CHECKPOINT=${WARN_ON_CHECKPOINT:-1}
    NODEFAIL=${NODEFAIL:-1}
    export STARTUP_S=${STARTUP_S:-3} ;;   # the tiny run starts training within ~1 s and trains ~10 s or more (calibrated)
  *) echo "TRAINER must be fake or real" >&2; exit 2 ;;
esac
say "trainer: $TRAINER ($LOCKSTEP), run file $RUN_FILE, work $work"

if ! start_log=$(bash "$here/slurm-local.sh" start 2>&1); then
  echo "$start_log"; tail -20 "$SLURM_LOCAL_DIR"/log/*.log 2>/dev/null
  [ "${LOCKSTEP_SLURM_OPTIONAL:-0}" = 1 ] && skip "the local Slurm did not start (log above)"
  fail "the local Slurm did not start although '$here/slurm-local.sh check' passed (log above)"; exit 1
fi
eval "$(bash "$here/slurm-local.sh" env)"
say "$(echo "$start_log" | tail -1)"

export LOCKSTEP RUN_FILE THREADS=1
submit() { # name script sbatch-flags... -> job id
  local name=$1 script=$2; shift 2
  RUN_DIR=$work/$name sbatch --parsable --chdir="$work" --job-name="$name" --output="$work/$name.out" \
    --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 "$@" "$root/cluster/$script"
}
ref=$(submit ref slurm-multi-node.sbatch --time=5) || { fail "sbatch of the reference job"; exit 1; }
pre=$(submit pre slurm-preemptible.sbatch --time=1 --signal=B:USR1@30) || { fail "sbatch of the preemptible job"; exit 1; }
bad=$(RUN_FILE=$work/missing.yaml submit bad slurm-preemptible.sbatch --time=1) || { fail "sbatch of the bad-input job"; exit 1; }
jobs=("$ref" "$pre" "$bad")
say "submitted: bad=$bad (slurm-preemptible.sbatch on a missing run file: must fail with status 2, unrequeued)"
say "submitted: ref=$ref (slurm-multi-node.sbatch), pre=$pre (slurm-preemptible.sbatch --time=1 --signal=B:USR1@30)"
gpu=""
if [ "$GPUS" -gt 0 ]; then
  gpu=$(submit gpu slurm-single-node-gpus.sbatch --time=5 --gpus-per-node=2) || { fail "sbatch of the GPU job"; exit 1; }
  jobs+=("$gpu"); say "submitted: gpu=$gpu (slurm-single-node-gpus.sbatch --gpus-per-node=2, fake GPUs)"
else
  say "NOTE: mknod not permitted here: slurm-single-node-gpus.sbatch is not submitted"
fi

field() { scontrol show job "$1" 2>/dev/null | grep -oP "(?<=\b$2=)\S+" | head -1; }
final_state() { case $1 in COMPLETED|FAILED|TIMEOUT|CANCELLED|NODE_FAIL|OUT_OF_MEMORY|BOOT_FAIL|DEADLINE|PREEMPTED) return 0;; esac; return 1; }
declare -A last=()
warned=0
while :; do
  if [ "$WARN_ON_CHECKPOINT" = 1 ] && [ $warned = 0 ] && [ "$(field "$pre" JobState)" = RUNNING ] &&
     [ "$(field "$pre" Restarts)" = 0 ] && ls "$work/pre/checkpoints" 2>/dev/null | grep -qv '\.tmp$'; then
    say "first checkpoint written: warning the batch shell (scancel --batch --signal=USR1 $pre)"
    scancel --batch --signal=USR1 "$pre"; warned=1
  fi
  done_all=1
  for j in "${jobs[@]}"; do
    st=$(field "$j" JobState); rs=$(field "$j" Restarts); reason=$(field "$j" Reason)
    key="$st restarts=$rs reason=$reason"
    [ "${last[$j]:-}" != "$key" ] && { say "job $j: $key"; last[$j]=$key; }
    final_state "$st" || done_all=0
  done
  [ $done_all = 1 ] && break
  if [ $(( $(date +%s) - t0 )) -ge "$DEADLINE_S" ]; then
    fail "jobs not finished after ${DEADLINE_S}s"; scancel "${jobs[@]}" 2>/dev/null; break
  fi
  sleep 0.25
done

for j in ref pre bad ${gpu:+gpu}; do echo "----- $j.out"; cat "$work/$j.out" 2>/dev/null; done
echo "-----"
[ "$(field "$ref" JobState)" = COMPLETED ] && [ "$(field "$ref" ExitCode)" = 0:0 ] ||
  fail "reference job $ref: $(field "$ref" JobState) exit $(field "$ref" ExitCode)"
[ "$(field "$pre" JobState)" = COMPLETED ] && [ "$(field "$pre" ExitCode)" = 0:0 ] ||
  fail "preemptible job $pre: $(field "$pre" JobState) exit $(field "$pre" ExitCode)"
restarts=$(field "$pre" Restarts)
[ "${restarts:-0}" -ge 1 ] || fail "preemptible job $pre was never requeued (Restarts=${restarts:-?})"
stops=$(grep -c 'training step exited with status 75' "$work/pre.out")
requeues=$(grep -c 'requeueing job' "$work/pre.out")
resumes=$(grep -cE "$RESUME_RE" "$work/pre.out")
[ "$stops" -ge 1 ] && [ "$requeues" -ge 1 ] || fail "pre.out shows $stops exits with status 75 and $requeues requeues"
[ "$resumes" -ge 1 ] || fail "pre.out shows no resume from a checkpoint past step 0"
if [ -f "$work/ref/final.h5" ] && [ -f "$work/pre/final.h5" ]; then
  /usr/bin/python3 "$here/same-weights.py" "$work/ref/final.h5" "$work/pre/final.h5" ||
    fail "the requeued run's final weights differ from the uninterrupted run's"
else
  fail "final.h5 missing: $(ls "$work"/ref "$work"/pre 2>&1 | paste -sd' ')"
fi
[ "$(field "$bad" JobState)" = FAILED ] && [ "$(field "$bad" ExitCode)" = 2:0 ] && [ "$(field "$bad" Restarts)" = 0 ] ||
  fail "bad-input job $bad: $(field "$bad" JobState) exit $(field "$bad" ExitCode) restarts $(field "$bad" Restarts), expected FAILED 2:0 0"
if [ -n "$gpu" ]; then
  [ "$(field "$gpu" JobState)" = COMPLETED ] && [ "$(field "$gpu" ExitCode)" = 0:0 ] ||
    fail "GPU job $gpu: $(field "$gpu" JobState) exit $(field "$gpu" ExitCode)"
  grep -q 'GPUs 0,1$' "$work/gpu.out" || fail "GPU job: the batch shell did not get CUDA_VISIBLE_DEVICES=0,1"
  if [ "$TRAINER" = fake ]; then   # the stand-in prints each rank's CUDA_VISIBLE_DEVICES
    seen=$(grep -c 'CUDA_VISIBLE_DEVICES=0,1' "$work/gpu.out")
    [ "$seen" -ge 2 ] || fail "GPU job: $seen of 2 ranks saw CUDA_VISIBLE_DEVICES=0,1"
  fi
  if [ -f "$work/gpu/final.h5" ]; then
    /usr/bin/python3 "$here/same-weights.py" "$work/ref/final.h5" "$work/gpu/final.h5" || fail "GPU job's final weights differ"
  else
    fail "GPU job wrote no final.h5"
  fi
fi
say "preemptible job: $restarts requeue(s), $stops checkpoint-and-exit(s) with status 75, $resumes resume(s)"

# Phase 2 (NODEFAIL=1), after the others: the node fails under a running preemptible job. Slurm cancels
# the step (SIGTERM: the trainer writes a checkpoint and exits 75) and requeues the --requeue job by
# itself, without the script; the next incarnation must resume and end with the reference's weights.
if [ "$NODEFAIL" = 1 ] && [ -f "$work/ref/final.h5" ]; then
  node=$(hostname -s)
  nf=$(submit nf slurm-preemptible.sbatch --time=5 --signal=B:USR1@30) || { fail "sbatch of the node-failure job"; exit 1; }
  say "submitted: nf=$nf (slurm-preemptible.sbatch); the node goes DOWN once it has a checkpoint"
  until ls "$work/nf/checkpoints" 2>/dev/null | grep -qv '\.tmp$'; do
    final_state "$(field "$nf" JobState)" && break
    [ $(( $(date +%s) - t0 )) -ge "$DEADLINE_S" ] && break
    sleep 0.25
  done
  say "scontrol update NodeName=$node State=DOWN (job $nf: $(field "$nf" JobState))"
  scontrol update NodeName="$node" State=DOWN Reason=lockstep-test-node-failure
  sleep 2
  # ReturnToService=2 brings a live slurmd's node back by itself; RESUME is then refused ("Invalid node state")
  scontrol update NodeName="$node" State=RESUME 2>/dev/null || true
  while ! final_state "$(field "$nf" JobState)"; do
    if [ $(( $(date +%s) - t0 )) -ge "$DEADLINE_S" ]; then fail "node-failure job not finished after ${DEADLINE_S}s"; scancel "$nf"; break; fi
    sleep 0.5
  done
  echo "----- nf.out"; grep -vE '^ *[0-9]+/[0-9]+ - |^Epoch [0-9]+/' "$work/nf.out"; echo "-----"
  [ "$(field "$nf" JobState)" = COMPLETED ] && [ "$(field "$nf" ExitCode)" = 0:0 ] && [ "$(field "$nf" Restarts)" -ge 1 ] ||
    fail "node-failure job $nf: $(field "$nf" JobState) exit $(field "$nf" ExitCode) restarts $(field "$nf" Restarts), expected COMPLETED 0:0 >=1"
  # slurmstepd's 'CANCELLED ... DUE TO NODE FAILURE' or srun's 'Node failure on NODE', whichever wins the race
  grep -qE 'DUE TO NODE FAILURE|Node failure on' "$work/nf.out" || fail "nf.out does not show the node failure"
  grep -qE "$RESUME_RE" "$work/nf.out" || fail "the node-failure job did not resume from a checkpoint past step 0"
  if [ -f "$work/nf/final.h5" ]; then
    /usr/bin/python3 "$here/same-weights.py" "$work/ref/final.h5" "$work/nf/final.h5" || fail "the node-failure job's final weights differ"
  else
    fail "the node-failure job wrote no final.h5"
  fi
  say "node-failure job: requeued by Slurm $(field "$nf" Restarts) time(s)"
fi
if [ $failed = 0 ]; then say "PASS"; else say "FAILED"; fi
exit $failed
