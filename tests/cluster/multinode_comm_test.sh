#!/usr/bin/env bash
# multinode_comm_test.sh - comm_mpi_tests (tests/comm/comm_mpi_test.cpp) across simulated hosts.
#
#   bash tests/cluster/multinode_comm_test.sh HOSTS PER_HOST COMM_MPI_TESTS
#
# Checks, on HOSTS simulated hosts with PER_HOST ranks each (mpirun inside node0, lsnet-agent instead of
# ssh, TCP between hosts, each host its own /dev/shm):
#   1. the whole suite passes: every collective over TCP; the expected placement is derived from
#      MPI_Comm_split_type(SHARED) (one node per host), so Communicator.DiscoveryAndBarrier checks
#      local_size = PER_HOST (the line "expected placement: ..." printed by the suite must say HOSTS
#      hosts and nodes); the reduction buffer is shared memory on every host, and its all-reduces
#      sum each host's ranks in rank order, then across hosts (ReductionBuffer.*, GradientBucketer.*);
#   2. the watchdog across hosts (DISABLED_Watchdog.StalledRankIsReportedNotHung): the last rank stalls,
#      the others must report the all-reduce timing out (WATCHDOG_OK) and the job must end (mpirun
#      --timeout 60 is the backstop).
# Exit 0 pass, 1 fail, 77 skipped (multinode-lib.sh: not root, no namespaces, tools missing, lock busy).
set -uo pipefail
source "$(dirname "$0")/multinode-lib.sh"
mn_start "$@"
[[ $# == 3 ]] || { echo "usage: $0 HOSTS PER_HOST COMM_MPI_TESTS" >&2; exit 2; }
H=$1 K=$2 BIN=$(readlink -f "$3")
[[ -x $BIN ]] || { mn_fail "no comm_mpi_tests at $3"; exit 1; }
mn_up "$H"

echo "== comm_mpi_tests on $H hosts x $K ranks"
t0=$(mn_now)
mn_mpirun_hosts "$H" "$K" 120 "$work/suite.log" "$BIN"
rc=$?
grep -E "expected placement|PASSED|FAILED|SKIPPED" "$work/suite.log" | sed 's/\x1b\[[0-9;]*m//g'
if [[ $rc == 0 ]]; then mn_ok "suite passed ($(mn_since "$t0") s)"; else mn_fail "suite exited $rc: $(tail -20 "$work/suite.log")"; fi
grep -qF "expected placement: $((H * K)) ranks on $H host(s), $K on this one; reduced as $H node(s)" "$work/suite.log" ||
  mn_fail "placement is not $H hosts x $K ranks"

echo "== watchdog across hosts: a stalled rank is reported, the job ends"
t0=$(mn_now)
mn_mpirun_hosts "$H" "$K" 60 "$work/watchdog.log" "$BIN" --gtest_also_run_disabled_tests \
  --gtest_filter=DISABLED_Watchdog.StalledRankIsReportedNotHung
rc=$?
if grep -qE "WATCHDOG_OK rank [0-9]+ after [0-9.]+ s: rank [0-9]+: all_reduce\(SUM, 266610 x float32 \(1.07 MB, cpu\)\) " "$work/watchdog.log" &&
  ! grep -q "no CommError" "$work/watchdog.log"; then
  mn_ok "watchdog: $(grep -m1 -o 'WATCHDOG_OK rank [0-9]* after [0-9.]* s' "$work/watchdog.log"), mpirun exited $rc after $(mn_since "$t0") s"
else
  mn_fail "watchdog across hosts (mpirun exited $rc): $(tail -20 "$work/watchdog.log")"
fi
mn_end
