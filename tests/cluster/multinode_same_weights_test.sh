#!/usr/bin/env bash
# multinode_same_weights_test.sh - the same run file trains the same model on simulated hosts as on one.
#
#   bash tests/cluster/multinode_same_weights_test.sh LOCKSTEP
#
# A tiny real run (make-tiny-run.sh: 784-256-10 MLP, global batch 32, TINY_LIMIT 2048 samples = 64
# steps, 1 epoch, --threads 1), trained
#   - by one process (no MPI);
#   - on this machine (one host, root namespace) with N ranks, N = 2 (plain), and N = 4 and 8 with
#     LOCKSTEP_RANKS_PER_NODE=K, which makes the communicator treat consecutive groups of K ranks as
#     nodes: the sums are then taken in exactly the order of H = N/K hosts x K ranks;
#   - across H simulated hosts x K ranks (mpirun inside node0, lsnet-agent, `--mca mpi_yield_when_idle 1`
#     as 8 ranks share 2 CPUs): 2x1, 2x2, 4x1, 4x2.
# Asserts, for each H x K:
#   1. the run succeeds, and its start-up line says how gradients are reduced: hierarchically
#      (`grep -i hierarch`; loose on purpose) as there are H > 1 nodes (so does the one-host
#      reference's with LOCKSTEP_RANKS_PER_NODE=K);
#   2. its final weights are BIT-IDENTICAL to the one-host run with the same N and
#      LOCKSTEP_RANKS_PER_NODE=K. For 2x1 the reference is the plain 2-rank run: with 2 ranks every order
#      gives the same sum (a+b = b+a). With more ranks the order depends on the topology (float addition
#      is not associative), and the hierarchical all-reduce (each node's ranks in rank order through
#      shared memory, then the nodes' sums over MPI) makes it the knob's order;
#   3. its final weights are within rtol 1e-3 (same-weights.py --rtol; measured: 1.4e-4 of a dataset's
#      largest value) of the one-process run, which sums each batch's gradient in one piece.
# Exit 0 pass, 1 fail, 77 skipped (multinode-lib.sh). ~30-40 s on a busy 2-core machine; every mpirun
# bounded by --timeout 120.
set -uo pipefail
source "$(dirname "$0")/multinode-lib.sh"
mn_start "$@"
mn_lockstep_arg "$@"
RTOL=1e-3
TINY_EPOCHS=1 TINY_LIMIT=2048 mn_tiny_run "$LOCKSTEP" "$work/run.yaml"
train=("$LOCKSTEP" train "$work/run.yaml" --threads 1)

echo "== one process"
"${train[@]}" --run-dir "$work/one" >"$work/one.log" 2>&1 || mn_fail "one process: $(tail -3 "$work/one.log")"

echo "== one host: 2 ranks; 4 ranks with LOCKSTEP_RANKS_PER_NODE=1 and =2; 8 ranks with =2"
for nk in 2:0 4:1 4:2 8:2; do
  n=${nk%:*} k=${nk#*:} t0=$(mn_now)
  if [[ $k == 0 ]]; then
    mn_mpirun_local "$n" 120 "$work/ref$n.log" "${train[@]}" --run-dir "$work/ref$n"
  else
    LOCKSTEP_RANKS_PER_NODE=$k mn_mpirun_local "$n" 120 "$work/ref${n}k$k.log" "${train[@]}" --run-dir "$work/ref${n}k$k"
  fi
  rc=$? name=ref$n; [[ $k != 0 ]] && name=ref${n}k$k
  if [[ $rc == 0 ]]; then mn_ok "$name ($(mn_since "$t0") s)"; else mn_fail "$name exited $rc: $(tail -5 "$work/$name.log")"; fi
  if [[ $k != 0 ]] && ! grep -qi hierarch "$work/$name.log"; then
    mn_fail "$name: $n ranks as $((n / k)) nodes of $k, yet the start-up line does not say hierarchical:" \
      "$(grep -i 'rank(s)' "$work/$name.log")"
  fi
done

mn_up 4
for hk in 2:1 2:2 4:1 4:2; do
  h=${hk%:*} k=${hk#*:} n=$((${hk%:*} * ${hk#*:})) t0=$(mn_now)
  echo "== $h hosts x $k ranks"
  mn_mpirun_hosts "$h" "$k" 120 "$work/m${h}x$k.log" "${train[@]}" --run-dir "$work/m${h}x$k"
  rc=$?
  if [[ $rc != 0 ]]; then mn_fail "$h x $k exited $rc: $(tail -5 "$work/m${h}x$k.log")"; continue; fi
  mn_ok "$h x $k trained ($(mn_since "$t0") s): $(grep -m1 'rank(s)' "$work/m${h}x$k.log")"
  grep -qi hierarch "$work/m${h}x$k.log" || mn_fail "$h x $k: the start-up line does not say hierarchical"
  ref=ref${n}k$k; [[ $n == 2 ]] && ref=ref2
  mn_same "$work/$ref/final.h5" "$work/m${h}x$k/final.h5" || mn_fail "$h x $k: final weights differ from $ref's"
  mn_same "$work/one/final.h5" "$work/m${h}x$k/final.h5" --rtol "$RTOL" || mn_fail "$h x $k: not within $RTOL of one process"
done
mn_end
