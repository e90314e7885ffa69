#!/usr/bin/env bash
# multinode_link_down_test.sh - a link that stops carrying traffic mid-training is caught by lockstep's
# watchdog, which ends the job with exit status 4 and an error naming the collective.
#
#   bash tests/cluster/multinode_link_down_test.sh LOCKSTEP
#
# On 2 simulated hosts x 1 rank (mpirun --timeout 30 inside node0; a tiny real run of 16 epochs x 64
# steps, `--set distributed.timeout_s=5`): once the first checkpoint is written, node1's link goes down
# (`ip -n <node1's netns> link set eth0 down`; this kernel has no netem, and a down link is the cleanest
# "carries nothing"). What happens, and what is asserted:
#   1. rank 0 waits in the next collective (the gradients' all-reduce, as a rule); after timeout_s its
#      watchdog raises the error and the job is aborted: within 4.5 to 20 s of the cut the output holds
#      "lockstep train: communication failure: rank 0: all_reduce(SUM, 203530 x float32 (814.1 kB, cpu))
#      #N [step S] timed out after 5.0 s (watchdog) ..." (any collective's name is accepted) and
#      "aborting the job (exit 4)";
#   2. MPI_Abort cannot reach node1's orted behind the dead link, so mpirun does not finish the teardown
#      by itself: it ends at its --timeout (30 s after its start), with exit status 4, the aborting
#      rank's code. The test asserts status 4 and an end no later than --timeout + 10 s (it does not
#      insist that --timeout was needed: a faster teardown would be fine). The orted left on node1 (it
#      never hears from mpirun again) is killed by PID with everything else left on the hosts (EXIT trap).
# Exit 0 pass, 1 fail, 77 skipped (multinode-lib.sh). ~35 s (mostly mpirun's --timeout).
set -uo pipefail
source "$(dirname "$0")/multinode-lib.sh"
mn_start "$@"
mn_lockstep_arg "$@"
MPI_TIMEOUT=30 WATCHDOG_S=5
TINY_EPOCHS=16 TINY_LIMIT=2048 mn_tiny_run "$LOCKSTEP" "$work/run.yaml"
mn_up 2

echo "== 2 hosts x 1 rank, distributed.timeout_s=$WATCHDOG_S; node1's link goes down after the first checkpoint"
t0=$(mn_now)
mn_bg mn_mpirun_hosts 2 1 "$MPI_TIMEOUT" "$work/run.log" "$LOCKSTEP" train "$work/run.yaml" --threads 1 \
  --set distributed.timeout_s=$WATCHDOG_S --run-dir "$work/run"
job=$mn_last_bg
if ! mn_wait_checkpoint "$work/run" "$job" 60; then
  wait "$job"
  mn_fail "no checkpoint while the job ran (it exited $?): $(tail -5 "$work/run.log")"
  exit 1
fi
ip -n "$LSNET_ID-node1" link set eth0 down || { mn_fail "could not take node1's link down"; exit 1; }
tc=$(mn_now)
echo "link down $(mn_since "$t0") s after mpirun's start (checkpoints: $(ls "$work/run/checkpoints" | tr '\n' ' '))"
seen=""
for ((i = 0; i < (MPI_TIMEOUT + 10) * 20; i++)); do
  if [[ -z $seen ]] && grep -q "timed out after" "$work/run.log"; then seen=$(mn_since "$tc"); fi
  kill -0 "$job" 2>/dev/null || break
  sleep 0.05
done
ended=$(mn_since "$t0")
if kill -0 "$job" 2>/dev/null; then
  mn_fail "mpirun still runs $ended s after its start (--timeout $MPI_TIMEOUT)"
  kill -KILL "$job"
fi
wait "$job"
rc=$?
[[ -z $seen ]] && grep -q "timed out after" "$work/run.log" && seen=$(mn_since "$tc")
msg=$(grep -m1 "communication failure" "$work/run.log")
echo "watchdog: ${seen:-never} s after the cut: $msg"
echo "mpirun exited $rc, $ended s after its start$(grep -q 'time limit for job execution has been reached' "$work/run.log" && echo ", at its --timeout")"
[[ $rc == 4 ]] || mn_fail "mpirun exited $rc, expected 4 (the watchdog's communication failure)"
if [[ -z $seen ]]; then
  mn_fail "no watchdog error: $(tail -8 "$work/run.log")"
else
  awk -v s="$seen" -v w=$WATCHDOG_S 'BEGIN { exit !(s >= w - 0.5 && s <= w + 15) }' ||
    mn_fail "the watchdog fired $seen s after the cut, expected $WATCHDOG_S to $((WATCHDOG_S + 15)) s"
fi
[[ $msg == *"timed out"* && $msg == *"watchdog"* && $msg =~ (all_reduce|broadcast|all_gather|barrier)\( ]] ||
  mn_fail "the error does not name the timed-out all-reduce and the watchdog: $msg"
grep -q "aborting the job (exit 4)" "$work/run.log" || mn_fail "no 'aborting the job (exit 4)' in the output"
[[ ! -e $work/run/final.h5 ]] || mn_fail "final.h5 written: the training was not cut"
mn_end
