#!/usr/bin/env bash
# lsslurm.sh - a Slurm cluster over the simulated hosts of lsnet.sh: one slurmd per host (each in its
# host's namespaces, with the host's address and hostname), slurmctld on node0, one munged.
#
#   lsnet.sh up 2 && lsslurm.sh start      # needs lsnet's hosts; starts munged, slurmctld, one slurmd per host
#   lsslurm.sh run CMD...                   # CMD on node0 (the "login node") with SLURM_CONF set
#   lsslurm.sh stop                         # cancels the jobs, stops the daemons by their pid files
#   lsslurm.sh clean                        # stop, then remove $LSSLURM_DIR
#
# Knobs: LSSLURM_DIR [${TMPDIR:-/tmp}/lsslurm; it and its parents must be searchable by others, as
# munged refuses a socket below a 0700 directory such as mktemp -d's], LSSLURM_CPUS (CPUs per node;
# default 1 when lsnet.sh pinned the hosts with LSNET_PIN=1, else nproc), LSSLURM_MPI (MpiDefault [pmix]).
# LSNET_ID, LSNET_PREFIX and LSNET_NET as given to lsnet.sh up.
# Adopted from ../shared/reference/multinode/lsslurm.sh for tests/cluster/ (label multinode): the hosts
# are found by LSNET_ID (/run/lsnet.$LSNET_ID), and `start` records LSSLURM_DIR in that state directory,
# so that `lsnet.sh reap` can stop the daemons of a test killed before its EXIT trap ran.
#
# Safety rules (keep them when changing this script):
#  * Slurm traffic stays inside lsnet's namespaces: the daemons and clients run inside the hosts and talk
#    over the hosts' own addresses ($LSNET_NET.x, 10.77.0.x by default; the fixed ports 6817/6818 cannot
#    collide with anything, as each host has its own network stack). Nothing in the root namespace uses
#    those addresses: run Slurm commands only through `lsslurm.sh run` (inside node0), since from the root
#    namespace 10.77.0.x would follow the machine's default route. munged runs in the root namespace with
#    a Unix socket only (a file, so every host reaches it: one key, as on a cluster), no network port.
#  * Everything (config, key, sockets, state, spool, logs, node-local TmpFS) lives under $LSSLURM_DIR;
#    nothing in /etc is touched. `stop` stops every daemon `start` started; `clean` also removes the files.
#  * `stop` kills only the daemons it started, by the PIDs in their pid files, after checking that each
#    PID still runs the expected program; never by name. Run it before `lsnet.sh down`: a daemon still
#    inside a host keeps that host's namespaces alive.
# Configuration as tests/cluster/slurm-local.sh (proctrack/linuxproc, task/none, config_overrides,
# cred_expire=5), plus one NodeName per host, SlurmctldHost=node0, %n in the per-node paths and TmpFS.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LSNET=$here/lsnet.sh
BASE=${LSSLURM_DIR:-${TMPDIR:-/tmp}/lsslurm}
CONF=$BASE/etc/slurm.conf
MSOCK=$BASE/munge/munge.socket.2
PREFIX=${LSNET_PREFIX:-node}
NET=${LSNET_NET:-10.77.0}
LSNET_STATE=/run/lsnet.${LSNET_ID:-lst}
N=$(cat "$LSNET_STATE/n" 2>/dev/null || echo 0)   # written by lsnet.sh up
if [[ -z ${LSSLURM_CPUS:-} ]]; then  # lsnet.sh's LSNET_PIN=1 cpusets: one CPU per host
  if [[ -d /sys/fs/cgroup/cpuset/lsnet.${LSNET_ID:-lst} ]]; then LSSLURM_CPUS=1; else LSSLURM_CPUS=$(nproc); fi
fi
export SLURM_CONF=$CONF

log() { echo "[lsslurm $(date +%T)] $*" >&2; }
pid_alive() { # pidfile prog
  local p
  [[ -s $1 ]] || return 1
  p=$(cat "$1") && [[ $p =~ ^[0-9]+$ && -r /proc/$p/comm ]] || return 1
  [[ $(cat "/proc/$p/comm") == "$2"* && $(awk '{print $3}' "/proc/$p/stat") != Z ]]
}
stop_pidfile() {
  local p
  pid_alive "$1" "$2" || { rm -f "$1"; return 0; }
  p=$(cat "$1"); kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 100); do pid_alive "$1" "$2" || break; sleep 0.1; done
  if pid_alive "$1" "$2"; then log "$2 ($p) ignored SIGTERM; SIGKILL"; kill -KILL "$p" || true; fi
  rm -f "$1"
}

write_config() {
  mkdir -p "$BASE"/{etc,state,log,run,munge,spool}
  chmod 755 "$BASE" "$BASE/munge"
  if [[ ! -s $BASE/munge/munge.key ]]; then
    mungekey --create --keyfile="$BASE/munge/munge.key" 2>/dev/null ||
      dd if=/dev/urandom of="$BASE/munge/munge.key" bs=1 count=1024 status=none
  fi
  chmod 600 "$BASE/munge/munge.key"
  local i
  for ((i = 0; i < N; i++)); do mkdir -p "$BASE/spool/slurmd-$PREFIX$i" "$BASE/tmp/$PREFIX$i"; done
  local mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / (N > 0 ? N : 1) - 256 ))
  cat >"$CONF" <<EOF
ClusterName=lsnet
SlurmctldHost=${PREFIX}0($NET.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
AuthInfo=socket=$MSOCK,cred_expire=5
CredType=cred/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/slurmd-%n
# node-local scratch: srun --mpi=pmix keeps its client directory in TmpFS (default /tmp) as
# spmix_appdir_<uid>_<job>.<step>, the same name on every node: with one /tmp for all hosts the second
# node's step fails ("Cannot create client cli tmpdir ... File exists", task launch failed)
TmpFS=$BASE/tmp/%n
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd-%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$BASE/etc/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=${LSSLURM_MPI:-pmix}
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
InactiveLimit=0
MinJobAge=600
MessageTimeout=10
NodeName=${PREFIX}[0-$((N - 1))] NodeAddr=$NET.[1-$N] CPUs=$LSSLURM_CPUS RealMemory=$mem State=UNKNOWN
PartitionName=all Nodes=${PREFIX}[0-$((N - 1))] Default=YES MaxTime=INFINITE State=UP
EOF
  : >"$BASE/etc/plugstack.conf"
}

start() {
  [[ $N -ge 1 ]] || { log "no lsnet hosts: run lsnet.sh up N first"; exit 1; }
  write_config
  echo "$BASE" >"$LSNET_STATE/lsslurm"   # for lsnet.sh reap
  if ! pid_alive "$BASE/munge/munged.pid" munged; then
    rm -f "$MSOCK" "$MSOCK.lock"
    munged --key-file="$BASE/munge/munge.key" --socket="$MSOCK" --pid-file="$BASE/munge/munged.pid" \
      --log-file="$BASE/munge/munged.log" --seed-file="$BASE/munge/munged.seed"
    for _ in $(seq 50); do [[ -S $MSOCK ]] && break; sleep 0.1; done
  fi
  # munge across "hosts": encode on node1, decode on node0 (same munged: one key)
  "$LSNET" exec "${PREFIX}$((N - 1))" munge -S "$MSOCK" -n | "$LSNET" exec "${PREFIX}0" unmunge -S "$MSOCK" >/dev/null \
    || { log "munge self-test failed"; exit 1; }
  pid_alive "$BASE/run/slurmctld.pid" slurmctld || "$LSNET" exec "${PREFIX}0" slurmctld -f "$CONF" -i
  for _ in $(seq 100); do "$LSNET" exec "${PREFIX}0" scontrol ping 2>/dev/null | grep -q 'is UP' && break; sleep 0.1; done
  local i
  for ((i = 0; i < N; i++)); do
    pid_alive "$BASE/run/slurmd-$PREFIX$i.pid" slurmd || "$LSNET" exec "$PREFIX$i" slurmd -f "$CONF" -N "$PREFIX$i"
  done
  local st
  for _ in $(seq 150); do
    st=$("$LSNET" exec "${PREFIX}0" sinfo -h -o %T 2>/dev/null | sort -u | tr '\n' ' ')
    [[ $st == "idle " ]] && { log "up: $N nodes idle; run commands with: $0 run CMD"; return 0; }
    sleep 0.2
  done
  log "nodes not idle: $st"; "$LSNET" exec "${PREFIX}0" sinfo -N >&2; exit 1
}

stop() {
  local i
  if pid_alive "$BASE/run/slurmctld.pid" slurmctld; then
    "$LSNET" exec "${PREFIX}0" scancel --quiet --user=root 2>/dev/null || true; sleep 0.5
  fi
  for f in "$BASE"/run/slurmd-*.pid; do [[ -e $f ]] && stop_pidfile "$f" slurmd; done
  stop_pidfile "$BASE/run/slurmctld.pid" slurmctld
  stop_pidfile "$BASE/munge/munged.pid" munged
  log "down"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  clean) stop; rm -rf "$BASE" ;;
  run) shift; exec "$LSNET" exec "${PREFIX}0" env SLURM_CONF="$CONF" "$@" ;;
  *) sed -n '2,8p' "$0" >&2; exit 2 ;;
esac
