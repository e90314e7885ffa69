#!/usr/bin/env bash
# multinode_host_killed_test.sh - a host lost mid-training ends the whole job promptly, and the same command
# with `--resume auto` then finishes bit-identically to an uninterrupted run.
#
#   bash tests/cluster/multinode_host_killed_test.sh LOCKSTEP
#
# On 2 simulated hosts x 2 ranks (mpirun inside node0, lsnet-agent; a tiny real run of 8 epochs x 64
# steps, a checkpoint every 20 steps, --threads 1, --resume auto from the start):
#   1. the uninterrupted run;
#   2. the same command in a fresh run directory; once its first checkpoint is written, SIGKILL to every
#      rank on node1. Each rank writes its PID before it executes lockstep (a /bin/sh wrapper); a PID is
#      killed only if that process's uts namespace is node1's (lsnet.sh uts) and it runs lockstep-main,
#      and the set must equal the lockstep processes found on node1 by namespace. Asserts: the job ends
#      (mpirun exits) within 30 s of the kill, with status 137 (128 + SIGKILL, as
#      cluster/mpirun-hostfile.sh documents), output naming a lost rank of node1 ("process rank 2 ...
#      on node node1 exited on signal 9"), and no final.h5;
#   3. the same command again: it resumes from a checkpoint past step 0, exits 0, and its final weights
#      are bit-identical to 1's (same-weights.py).
# Exit 0 pass, 1 fail, 77 skipped (multinode-lib.sh). ~15-25 s on a busy 2-core machine; every mpirun
# bounded by --timeout 120.
set -uo pipefail
source "$(dirname "$0")/multinode-lib.sh"
mn_start "$@"
mn_lockstep_arg "$@"
TINY_EPOCHS=8 TINY_LIMIT=2048 mn_tiny_run "$LOCKSTEP" "$work/run.yaml"
mkdir -p "$work/pids"
# the same command every time: the wrapper records "<host>.<rank>" = PID, then becomes lockstep
# shellcheck disable=SC2016  # expanded by the wrapper's sh
cmd=(/bin/sh -c 'echo $$ >"$0/$(cat /proc/sys/kernel/hostname).$OMPI_COMM_WORLD_RANK"; exec "$@"' "$work/pids"
     "$LOCKSTEP" train "$work/run.yaml" --threads 1 --resume auto --set checkpoint.every_steps=20)
mn_up 2

echo "== 1. uninterrupted, 2 hosts x 2 ranks"
t0=$(mn_now)
mn_mpirun_hosts 2 2 120 "$work/full.log" "${cmd[@]}" --run-dir "$work/full"
rc=$?
if [[ $rc == 0 ]]; then mn_ok "uninterrupted ($(mn_since "$t0") s)"; else mn_fail "uninterrupted run exited $rc: $(tail -5 "$work/full.log")"; fi

echo "== 2. the same, every rank on node1 killed (SIGKILL) after the first checkpoint"
rm -f "$work"/pids/*
mn_bg mn_mpirun_hosts 2 2 120 "$work/killed.log" "${cmd[@]}" --run-dir "$work/run"
job=$mn_last_bg
if mn_wait_checkpoint "$work/run" "$job" 100; then
  uts=$("$L" uts node1)
  main=$(dirname "$LOCKSTEP")/lockstep-main
  victims=()
  for f in "$work"/pids/node1.*; do
    [[ -e $f ]] || continue
    p=$(cat "$f")
    if [[ $(readlink "/proc/$p/ns/uts") == "uts:[$uts]" && $(readlink -f "/proc/$p/exe") == "$(readlink -f "$main")" ]]; then
      victims+=("$p")
    else
      mn_fail "PID $p of $f is not lockstep on node1 (uts $(readlink "/proc/$p/ns/uts"), exe $(readlink "/proc/$p/exe"))"
    fi
  done
  on_host=$(for p in $(mn_host_pids node1); do
              [[ $(readlink -f "/proc/$p/exe" 2>/dev/null) == "$(readlink -f "$main")" ]] && echo "$p"; done | sort | tr '\n' ' ')
  [[ $(printf '%s\n' "${victims[@]}" | sort | tr '\n' ' ') == "$on_host" ]] ||
    mn_fail "the PID files (${victims[*]}) and node1's lockstep processes ($on_host) differ"
  [[ ${#victims[@]} == 2 ]] || mn_fail "expected 2 ranks on node1, found ${#victims[@]}"
  echo "killing node1's ranks: ${victims[*]} (checkpoints: $(ls "$work/run/checkpoints" | tr '\n' ' '))"
  tk=$(mn_now)
  kill -KILL "${victims[@]}"
  for ((i = 0; i < 600; i++)); do kill -0 "$job" 2>/dev/null || break; sleep 0.05; done
  took=$(mn_since "$tk")
  if kill -0 "$job" 2>/dev/null; then mn_fail "the job still runs 30 s after node1's ranks were killed"; fi
  wait "$job"
  rc=$?
  mn_ok "mpirun exited $rc, $took s after the kill"
  [[ $rc == 137 ]] || mn_fail "mpirun exited $rc, expected 137 (a rank killed by signal 9)"
  if grep -Eq "rank [23] .*node1.*(signal 9|Killed)" "$work/killed.log"; then
    mn_ok "$(grep -Eo "process rank [23] .*node1.*(signal 9|Killed)[^.]*" "$work/killed.log" | head -1)"
  else
    mn_fail "no output naming a lost rank of node1: $(tail -8 "$work/killed.log")"
  fi
  [[ ! -e $work/run/final.h5 ]] || mn_fail "the killed run wrote final.h5: it was not cut mid-training"
else
  wait "$job"
  mn_fail "no checkpoint while the job ran (it exited $?): $(tail -5 "$work/killed.log")"
fi

echo "== 3. the same command again: resumes"
t0=$(mn_now)
mn_mpirun_hosts 2 2 120 "$work/resume.log" "${cmd[@]}" --run-dir "$work/run"
rc=$?
if [[ $rc == 0 ]]; then mn_ok "resumed run exited 0 ($(mn_since "$t0") s)"; else mn_fail "resumed run exited $rc: $(tail -5 "$work/resume.log")"; fi
grep -Eq "Resuming from .*global step [1-9]" "$work/resume.log" || mn_fail "the rerun did not resume from a checkpoint past step 0"
grep -E "Resuming from" "$work/resume.log"
mn_same "$work/full/final.h5" "$work/run/final.h5" || mn_fail "resumed final weights differ from the uninterrupted run's"
mn_end
