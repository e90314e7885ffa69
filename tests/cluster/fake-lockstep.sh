#!/usr/bin/env bash
# fake-lockstep.sh - a stand-in for `lockstep train` that follows the trainer's command-line and exit-status
# contract, so that the Slurm plumbing of cluster/*.sbatch can be tested without the real trainer:
#
#   fake-lockstep.sh train RUN.yaml [--set KEY=VALUE]... [--run-dir DIR] [--resume auto|PATH] [--threads N]
#
# It "trains" for `train.steps` steps of `train.step_seconds` seconds each, checkpointing every
# `checkpoint.every_steps` (keys read from the run file in block style, overridable with --set); the "weights" are a SHA-256 chain over the step numbers and the seed, so a
# resumed run ends with the same final weights as an uninterrupted one only if it resumed from exactly the
# step it checkpointed. Rank 0 (OMPI_COMM_WORLD_RANK / PMIX_RANK / SLURM_PROCID) writes
#   DIR/checkpoints/ckpt-STEP.txt  (tmp + rename; the last line `commit` marks it complete)
#   DIR/history.csv, DIR/config.yaml, DIR/final.h5 (text here, HDF5 from the real trainer)
# Exit status: 0 finished; 2 bad input; 75 stopped by SIGTERM/SIGINT/the checkpoint signal (after writing a
# checkpoint). The signal handlers are installed first and stay installed until exit: repeated signals are
# harmless. FAKE_LOCKSTEP_FAULT=resume_skips_a_step makes a resume skip one step (to check that the tests
# notice a wrong resume).
set -u
stop=0
trap 'stop=1' USR1 USR2 TERM INT
ts() { date +%T.%N | cut -c1-12; }
rank=${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-${SLURM_PROCID:-0}}}
say() { echo "$(ts) fake-lockstep[rank $rank]: $*"; }
bad() { echo "fake-lockstep: error: $*" >&2; exit 2; }

[[ ${1:-} == train ]] || bad "usage: $0 train RUN.yaml [--set K=V]... [--run-dir DIR] [--resume auto|PATH] [--threads N]"
shift
run_file=${1:-}; shift || true
[[ -f $run_file ]] || bad "run file '$run_file' not found"
run_dir="" resume="" threads=1
declare -A set=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --set) [[ ${2:-} == *=* ]] || bad "--set wants KEY=VALUE"; set[${2%%=*}]=${2#*=}; shift 2 ;;
    --run-dir) run_dir=${2:?}; shift 2 ;;
    --resume) resume=${2:?}; shift 2 ;;
    --threads) threads=${2:?}; shift 2 ;;
    *) bad "unknown option '$1'" ;;
  esac
done
key() { # dotted key -> value: --set first, then `  leaf: value` in the run file
  local k=$1 leaf=${1##*.}
  if [[ -n ${set[$k]+x} ]]; then echo "${set[$k]}"; return; fi
  sed -n "s/^[[:space:]]*${leaf}:[[:space:]]*\([^#[:space:]]*\).*/\1/p" "$run_file" | head -1
}
steps=$(key train.steps); step_s=$(key train.step_seconds); seed=$(key seed)
every=$(key checkpoint.every_steps); every=${every:-0}
[[ $steps =~ ^[0-9]+$ ]] || bad "$run_file: train.steps must be an integer (got '$steps')"
[[ $step_s =~ ^[0-9.]+$ ]] || bad "$run_file: train.step_seconds must be a number (got '$step_s')"
[[ -n $run_dir ]] || run_dir=runs/$(basename "$run_file" .yaml)
ck=$run_dir/checkpoints
[[ $rank == 0 ]] && mkdir -p "$ck"

# resume: newest complete checkpoint (auto) or the one named
step=0 w=$(echo "seed ${seed:-0}" | sha256sum | cut -c1-64)
load() { # file -> sets step, w; fails on an incomplete file
  [[ $(tail -1 "$1" 2>/dev/null) == commit ]] || return 1
  step=$(sed -n 's/^step //p' "$1"); w=$(sed -n 's/^weights //p' "$1")
}
case $resume in
  "") ;;
  auto)
    for f in $(ls -1 "$ck"/ckpt-*.txt 2>/dev/null | sort -r); do
      if load "$f"; then say "resuming from $f (step $step)"; break; else say "skipping incomplete $f"; fi
    done
    [[ $step == 0 ]] && say "no checkpoint in $ck: starting fresh" ;;
  *) load "$resume" || bad "checkpoint '$resume' is missing or incomplete"; say "resuming from $resume (step $step)" ;;
esac
# fault injection for testing the tests: a resume that skips one step must be caught by the comparison
if [[ ${FAKE_LOCKSTEP_FAULT:-} == resume_skips_a_step && $step -gt 0 ]]; then step=$((step + 1)); say "FAULT: skipped step $step"; fi
[[ $rank == 0 ]] && { cp "$run_file" "$run_dir/config.yaml"; rm -f "$run_dir/.stopped"; }
say "start: step $step of $steps, job ${SLURM_JOB_ID:-none} restart ${SLURM_RESTART_COUNT:-0}, threads $threads, local rank ${SLURM_LOCALID:-${OMPI_COMM_WORLD_LOCAL_RANK:-0}}, CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}"

save() { # rank 0 writes checkpoint STEP atomically
  [[ $rank == 0 ]] || return 0
  local f=$ck/ckpt-$(printf %08d "$step").txt
  printf 'step %s\nweights %s\ncommit\n' "$step" "$w" >"$f.tmp" && mv "$f.tmp" "$f"
  say "checkpoint $f"
}
while [[ $step -lt $steps ]]; do
  if [[ $stop == 1 ]]; then
    # like the real trainer's barrier after a checkpoint: no rank leaves before rank 0 has written it
    # (mpirun and srun --kill-on-bad-exit end the whole job when the first rank exits non-zero)
    if [[ $rank == 0 ]]; then save; : >"$run_dir/.stopped"
    else for _ in $(seq 300); do [[ -e $run_dir/.stopped ]] && break; sleep 0.1; done; fi
    say "stopped by a signal at step $step: exit 75"; exit 75
  fi
  sleep "$step_s" & wait $! 2>/dev/null    # a trapped signal interrupts the wait, not the step
  wait $! 2>/dev/null                       # ...so finish the step's sleep before counting it
  step=$((step + 1))
  w=$(echo "$w $step" | sha256sum | cut -c1-64)
  [[ $rank == 0 ]] && echo "$step,$w" >>"$run_dir/history.csv"
  [[ $every -gt 0 && $((step % every)) == 0 && $step -lt $steps ]] && save
done
if [[ $rank == 0 ]]; then
  save
  printf 'fake-lockstep final weights\nstep %s\nweights %s\n' "$step" "$w" >"$run_dir/final.h5.tmp"
  mv "$run_dir/final.h5.tmp" "$run_dir/final.h5"
fi
say "finished at step $step: exit 0"
exit 0
