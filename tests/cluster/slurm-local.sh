#!/bin/bash
# slurm-local.sh - start/stop a throw-away single-node Slurm "cluster" (munged + slurmctld + slurmd)
# for the tests of cluster/*.sbatch (tests/cluster/slurm_requeue_test.sh). Adapted from
# ../shared/reference/reliability/slurm-local.sh (FINDINGS.md §1b): added `check` (why Slurm cannot run
# here; the tests skip on it), a cred_expire of 5 s, fake GPUs, and ports and job ids chosen per cluster
# directory so that two checkouts (or two tests) can run their clusters on one machine at once. Everything (keys, sockets, state, logs) lives under $SLURM_LOCAL_DIR;
# nothing in /etc is touched. Tested: Debian 12, slurm-wlm 22.05.8, munge 0.5.15, running as root, no systemd,
# no usable cgroups (proctrack/linuxproc + task/none).
#
# usage: slurm-local.sh check|start|stop|restart|status|env|clean
#   check   exit 0 if this machine can run the cluster, else prints the reason and exits 1
#   start   idempotent; (re)writes config, starts missing daemons, waits until the node is idle
#   stop    idempotent; stops our daemons by the PIDs recorded in their pid files (never by name)
#   env     prints 'export SLURM_CONF=...' - eval "$(slurm-local.sh env)" before sbatch/srun/squeue
#   clean   stop + remove state (job ids restart at 1)
# knobs (env): SLURM_LOCAL_DIR (default ${TMPDIR:-/tmp}/slurm-local), SLURM_LOCAL_CPUS (default: nproc;
#   may exceed the real core count - config_overrides makes slurmd trust it), SLURM_LOCAL_CTLD_PORT and
#   SLURM_LOCAL_SLURMD_PORT (default: free ports picked at the first start and kept in $DIR/ports),
#   SLURM_LOCAL_MPI (MpiDefault, default none; pmix also works),
#   SLURM_LOCAL_CRED_EXPIRE (default 5 s; also the requeue->restart delay, Slurm default 120 s),
#   SLURM_LOCAL_GPUS (default 0): N fake GPUs (GRES gpu:N) whose device files are character devices
#   aliasing /dev/null under $DIR/dev (slurmd refuses regular files), so that --gpus-per-node works and
#   Slurm sets CUDA_VISIBLE_DEVICES; nothing can compute on them.
set -euo pipefail

BASE=${SLURM_LOCAL_DIR:-${TMPDIR:-/tmp}/slurm-local}
HOST=$(hostname -s)
CPUS=${SLURM_LOCAL_CPUS:-$(nproc)}
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
MPI_DEFAULT=${SLURM_LOCAL_MPI:-none}
CRED_EXPIRE=${SLURM_LOCAL_CRED_EXPIRE:-5}
GPUS=${SLURM_LOCAL_GPUS:-0}
CONF=$BASE/etc/slurm.conf
MSOCK=$BASE/munge/munge.socket.2
export SLURM_CONF=$CONF

log() { echo "[slurm-local $(date +%T)] $*" >&2; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }  # no bc in slim images

pid_alive() { # pidfile -> 0 if the recorded pid is alive and is the expected program
  local f=$1 prog=$2 p
  [[ -s $f ]] || return 1
  p=$(cat "$f" 2>/dev/null) || return 1
  [[ $p =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$p/comm ]] || return 1
  [[ $(cat /proc/$p/comm 2>/dev/null) == "$prog"* ]] || return 1
  # zombies count as dead
  [[ $(awk '{print $3}' /proc/$p/stat 2>/dev/null) != Z ]]
}

free_port() { # a TCP port nobody listens on now (the kernel's choice for port 0)
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

pick_ports() {
  if [[ -n ${SLURM_LOCAL_CTLD_PORT:-} && -n ${SLURM_LOCAL_SLURMD_PORT:-} ]]; then
    CTLD_PORT=$SLURM_LOCAL_CTLD_PORT; SLURMD_PORT=$SLURM_LOCAL_SLURMD_PORT; return
  fi
  if [[ -s $BASE/ports ]]; then read -r CTLD_PORT SLURMD_PORT <"$BASE/ports"; return; fi
  mkdir -p "$BASE"
  CTLD_PORT=$(free_port); SLURMD_PORT=$(free_port)
  while [[ $SLURMD_PORT == "$CTLD_PORT" ]]; do SLURMD_PORT=$(free_port); done
  echo "$CTLD_PORT $SLURMD_PORT" >"$BASE/ports"
}

check() { # why this machine cannot run the cluster (empty: it can)
  local why=() b
  [[ $(id -u) == 0 ]] || why+=("not root (slurmd must run as root to start job steps)")
  for b in munged mungekey munge unmunge slurmctld slurmd sbatch srun scontrol sinfo squeue scancel; do
    command -v "$b" >/dev/null || why+=("$b not installed (LOCKSTEP_WITH_SLURM=1 bash launch/install-deps.sh)")
  done
  [[ -x /usr/bin/python3 ]] || why+=("/usr/bin/python3 missing")
  if [[ ${#why[@]} -gt 0 ]]; then printf '%s\n' "${why[@]}"; return 1; fi
}

write_config() {
  pick_ports
  mkdir -p "$BASE"/{etc,state,spool,log,run,munge} "$BASE/spool/slurmd-$HOST"  # slurmd does not create %n dirs itself
  chmod 755 "$BASE" "$BASE/munge"   # munged: socket dir must be o+x; key itself stays 0600
  if [[ ! -s $BASE/munge/munge.key ]]; then
    mungekey --create --keyfile="$BASE/munge/munge.key" 2>/dev/null ||
      dd if=/dev/urandom of="$BASE/munge/munge.key" bs=1 count=1024 status=none
  fi
  chmod 600 "$BASE/munge/munge.key"
  local gres_types="" node_gres=""
  : >"$BASE/etc/gres.conf"
  if [[ $GPUS -gt 0 ]]; then
    mkdir -p "$BASE/dev"
    for ((i = 0; i < GPUS; i++)); do
      [[ -c $BASE/dev/gpu$i ]] || mknod "$BASE/dev/gpu$i" c 1 3   # same device numbers as /dev/null
    done
    echo "Name=gpu File=$BASE/dev/gpu[0-$((GPUS - 1))]" >"$BASE/etc/gres.conf"
    gres_types="GresTypes=gpu"; node_gres="Gres=gpu:$GPUS"
  fi
  cat >"$CONF.tmp" <<EOF
# generated by slurm-local.sh - single node CI cluster
ClusterName=lockstep-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
# cred_expire also sets how long a requeued job sits PENDING (Reason=BeginTime) before restarting; default 120 s
AuthInfo=socket=$MSOCK,cred_expire=$CRED_EXPIRE
CredType=cred/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/slurmd-%n
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$BASE/etc/plugstack.conf
# no cgroups in CI containers/VMs: track processes by /proc walking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=$MPI_DEFAULT
SchedulerType=sched/backfill
# CI: schedule pending jobs (e.g. requeued ones whose BeginTime passed) within ~1-2 s instead of 30-60 s
SchedulerParameters=sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# trust the configured CPUs even if they exceed the hardware (lets 4-8 ranks run on a 2-core runner)
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
# fast turnaround for tests: short SIGTERM->SIGKILL grace at time limit, quick scheduling
KillWait=5
OverTimeLimit=0
InactiveLimit=0
MinJobAge=600
# job ids unique per cluster: the pmix plugin keys its files by uid and job id (/tmp/spmix_appdir_<uid>_<job>.<step>),
# so two local clusters starting both at job 1 broke each other's srun --mpi=pmix ("task 0 launch failed")
FirstJobId=$(( CTLD_PORT * 100 ))
MessageTimeout=10
$gres_types
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $node_gres State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  if [[ -f $CONF ]] && ! cmp -s "$CONF.tmp" "$CONF" && pid_alive "$BASE/run/slurmctld.pid" slurmctld; then
    log "WARNING: generated config differs from the running one; use '$0 restart' to apply it"
  fi
  mv "$CONF.tmp" "$CONF"
  : >"$BASE/etc/plugstack.conf"   # keep /etc/slurm/plugstack.conf.d/* out of the test cluster
}

start_munge() {
  if pid_alive "$BASE/munge/munged.pid" munged; then return 0; fi
  rm -f "$MSOCK" "$MSOCK.lock"
  munged --key-file="$BASE/munge/munge.key" --socket="$MSOCK" \
    --pid-file="$BASE/munge/munged.pid" --log-file="$BASE/munge/munged.log" \
    --seed-file="$BASE/munge/munged.seed"
  for _ in $(seq 50); do [[ -S $MSOCK ]] && break; sleep 0.1; done
  munge -S "$MSOCK" -n | unmunge -S "$MSOCK" >/dev/null || { log "munge self-test failed"; exit 1; }
}

start_slurmctld() {
  pid_alive "$BASE/run/slurmctld.pid" slurmctld && return 0
  # -i: ignore/recover from unreadable state files rather than refusing to start
  slurmctld -f "$CONF" -i
  for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q 'is UP' && return 0; sleep 0.1; done
  log "slurmctld did not come up; see $BASE/log/slurmctld.log"; tail -20 "$BASE/log/slurmctld.log" >&2; exit 1
}

start_slurmd() {
  pid_alive "$BASE/run/slurmd.pid" slurmd && return 0
  slurmd -f "$CONF" -N "$HOST"
}

wait_node_idle() {
  local st
  for _ in $(seq 150); do
    st=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1)
    case $st in
      idle|mixed|allocated) return 0 ;;
      drain*|down*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.2
  done
  log "node not idle (state=$st)"; scontrol show node "$HOST" >&2; tail -20 "$BASE/log/slurmd.log" >&2; exit 1
}

stop_pidfile() { # pidfile prog
  local f=$1 prog=$2 p
  pid_alive "$f" "$prog" || { rm -f "$f"; return 0; }
  p=$(cat "$f")
  kill -TERM "$p" 2>/dev/null || true
  for _ in $(seq 100); do [[ -d /proc/$p ]] && [[ $(awk '{print $3}' /proc/$p/stat 2>/dev/null) != Z ]] || break; sleep 0.1; done
  if [[ -d /proc/$p ]] && [[ $(awk '{print $3}' /proc/$p/stat 2>/dev/null) != Z ]]; then
    log "$prog ($p) ignored SIGTERM for 10 s; SIGKILL"; kill -KILL "$p" 2>/dev/null || true
  fi
  rm -f "$f"
}

case ${1:-} in
  check) check ;;
  start)
    t0=$(date +%s.%N)
    write_config; start_munge; start_slurmctld; start_slurmd; wait_node_idle
    log "up in $(elapsed "$t0") s; export SLURM_CONF=$CONF"
    ;;
  stop)
    t0=$(date +%s.%N)
    # running jobs die with slurmd's children only if we cancel them first
    if pid_alive "$BASE/run/slurmctld.pid" slurmctld; then scancel --quiet --user="$(id -un)" 2>/dev/null || true; sleep 0.5; fi
    stop_pidfile "$BASE/run/slurmd.pid" slurmd
    stop_pidfile "$BASE/run/slurmctld.pid" slurmctld
    stop_pidfile "$BASE/munge/munged.pid" munged
    log "down in $(elapsed "$t0") s"
    ;;
  restart) "$0" stop; "$0" start ;;
  status)
    for d in "munge/munged.pid munged" "run/slurmctld.pid slurmctld" "run/slurmd.pid slurmd"; do
      set -- $d; if pid_alive "$BASE/$1" "$2"; then echo "$2: running (pid $(cat "$BASE/$1"))"; else echo "$2: stopped"; fi
    done
    pid_alive "$BASE/run/slurmctld.pid" slurmctld && sinfo || true
    ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  clean) "$0" stop; rm -rf "$BASE/state" "$BASE/spool" "$BASE/log" "$BASE/run" "$BASE/ports" ;;
  *) echo "usage: $0 check|start|stop|restart|status|env|clean" >&2; exit 2 ;;
esac
