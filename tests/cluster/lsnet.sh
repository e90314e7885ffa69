#!/usr/bin/env bash
# lsnet.sh - a throw-away cluster of N simulated hosts on one Linux machine, made of namespaces.
#
#   lsnet.sh up N                create hosts node0..node{N-1} (refused while this LSNET_ID is up: run down first)
#   lsnet.sh down                remove every namespace, link, mount and cpuset this script made (safe to repeat)
#   lsnet.sh exec H CMD...       run CMD on host H (node1, or 1): its network, hostname, /etc/hosts, /dev/shm, CPU
#   lsnet.sh shape RATE [BURST]  cap every link, both directions, with TBF (e.g. 1gbit 128kb; BURST default 1mb)
#   lsnet.sh unshape             remove the caps
#   lsnet.sh status              one line per host: address, root qdisc, CPUs
#   lsnet.sh reap                `down` every set of hosts whose owner (the process that ran `up`) is gone
#   lsnet.sh uts H               the inode of host H's uts namespace (compare with /proc/PID/ns/uts)
#
# Adopted from ../shared/reference/multinode/lsnet.sh for lockstep's multinode tests (tests/cluster/,
# CTest label multinode). Changes: every name this script makes carries LSNET_ID (below), so that two
# sets of hosts, or this copy and the reference one, never share a namespace, state directory or cpuset;
# `up` records its owner and `reap` removes the sets of owners that are gone; `uts` for finding the
# processes of one host.
#
# One at a time: every user of these hosts (the tests, and anyone experimenting by hand on the same
# machine) holds the lock /tmp/lsnet.lock from `up` to `down`, e.g. `flock -w 900 /tmp/lsnet.lock CMD`
# (the tests re-execute themselves under it). Simulated hosts share the machine's CPUs: two sets at once
# would time-share them, and timings and timeouts would mean nothing. While the lock is held, a set of
# hosts left over from a killed holder is necessarily stale; `reap` removes it (its owner is gone), and
# as the tests use a fresh LSNET_ID per run, a leftover can never make a later run fail or skip.
#
# Safety rules (keep them when changing this script):
#  * Traffic stays inside the namespaces this script creates. The range $LSNET_NET.0/24 (default
#    10.77.0.0/24) exists only inside them: the root network namespace is never given an address, route
#    or interface on it (each veth pair is created inside the switch namespace with its peer inside the
#    host, and the bridge lives in the switch namespace), and no route leads out of the hosts'
#    namespaces. Never address these hosts from the root namespace (there the range would follow the
#    machine's default route): run mpirun, the Slurm commands and every other client inside a host, with
#    `exec`.
#  * The host names resolve only inside the hosts (an /etc/hosts bound in each `exec`'s own mount
#    namespace); the machine's /etc is never written. resolv.conf is empty there: no DNS server is asked.
#  * `down` removes everything `up` made: the $LSNET_ID-* namespaces (which takes the veths and the bridge
#    with them), the uts pins and the shm tmpfs under /run/lsnet.$LSNET_ID, the lsnet.$LSNET_ID cpusets,
#    and /run/netns when `ip netns` mounted it and no namespace is left in it. It touches no other
#    LSNET_ID's names.
#  * This script kills no process. Stop what you started inside the hosts, by PID (lsslurm.sh stop does),
#    before `down`: a process still inside a namespace keeps it alive. `down` moves any process left in
#    an lsnet cpuset back to the root cpuset. `reap` stops a dead owner's Slurm daemons through
#    lsslurm.sh stop (by their pid files, after checking the program), nothing else.
#
# Per host I:
#   netns  $LSNET_ID-nodeI   lo + eth0 = $LSNET_NET.(I+1)/24, a veth whose peer vI sits on bridge br0
#                      inside netns $LSNET_ID-sw (the "switch"); IPv6 off
#   uts ns /run/lsnet.$LSNET_ID/uts/nodeI   hostname nodeI
#   each `exec` gets a mount namespace of its own: the machine's mounts, plus /etc/hosts (node0.. =
#                      $LSNET_NET.x) and an empty /etc/resolv.conf bound over /etc, and a /dev/shm of the
#                      host's own (a directory of the tmpfs /run/lsnet.$LSNET_ID/shm), so that shared memory
#                      between "hosts" fails as it would between machines.
#   Not `ip netns exec`: it mounts a fresh /sys, which hides /sys/fs/cgroup, and slurmd then dies with
#   "Unable to initialize cgroup plugin". Not one pinned mount namespace per host either: one pinned
#   before another host's pins exist cannot see them, so an agent inside node0 could not enter node1.
# The net and uts namespaces are kept by bind mounts (as `ip netns` keeps its own). Everything else
# (files, /tmp, PIDs, users, and the CPUs unless LSNET_PIN=1) is shared by all hosts, as on a cluster with
# a shared file system. Needs root, iproute2 (ip, tc) and util-linux (unshare, nsenter, mountpoint); the
# IPv6 switch and the hostnames are written to /proc/sys, so neither procps nor hostname is needed.
#
# Knobs, read at `up` (give every later command of the same hosts the same LSNET_ID and LSNET_PREFIX; the
# environment passes them on to lsnet-agent and lsslurm.sh):
#   LSNET_ID          tag of every name made: namespaces $LSNET_ID-sw and $LSNET_ID-nodeI, state directory
#                     /run/lsnet.$LSNET_ID, cpuset lsnet.$LSNET_ID; 1-16 of [a-z0-9] [lst]. The reference
#                     copy's names (lsn-*, /run/lsnet, cpuset lsnet) are never matched.
#   LSNET_OWNER       PID of the process that owns the hosts (what `reap` checks) [the caller of `up`]
#   LSNET_PREFIX      host name prefix [node]
#   LSNET_NET         first three octets of the hosts' /24 [10.77.0]
#   LSNET_SHARED_SHM=1  one /dev/shm for all hosts (the machine's own) instead of one per host
#   LSNET_PIN=1       host I gets CPU (I mod nproc): a cgroup-v1 cpuset lsnet.$LSNET_ID/nodeI that `exec`
#                     puts every process in; Open MPI's hwloc honours it. taskset would not do: hwloc
#                     ignores affinity masks and binds outside them. Without LSNET_PIN every host sees all
#                     CPUs, and mpirun's default binding (by core when np <= 2) puts rank 0 of every host
#                     on CPU 0, so two "hosts" time-share one core (8 B all-reduce: 8 ms instead of 16 us):
#                     then pass `--bind-to none` to mpirun. Needs the cgroup-v1 cpuset hierarchy at
#                     /sys/fs/cgroup/cpuset.
set -euo pipefail
ID=${LSNET_ID:-lst}
[[ $ID =~ ^[a-z0-9]{1,16}$ ]] || { echo "lsnet: LSNET_ID must be 1-16 of [a-z0-9]: '$ID'" >&2; exit 2; }
PREFIX=${LSNET_PREFIX:-node}
NET=${LSNET_NET:-10.77.0}
STATE=/run/lsnet.$ID
CPUSET=/sys/fs/cgroup/cpuset
CPUS=$CPUSET/lsnet.$ID
SW=$ID-sw
here=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)

host_index() { # node3 | 3 -> 3
  local h=${1#"$PREFIX"}
  [[ $h =~ ^[0-9]+$ ]] || { echo "lsnet: no such host: $1" >&2; exit 2; }
  echo "$h"
}
hosts_count() { cat "$STATE/n" 2>/dev/null || echo 0; }
# "PID STARTTIME" of a process (the start time tells a reused PID apart), or nothing
proc_id() { [[ -r /proc/$1/stat ]] && echo "$1 $(sed 's/^.*) //' "/proc/$1/stat" | awk '{print $20}')"; }

# IPv6 off in a network namespace (written to /proc/sys: procps's sysctl is not in every base image)
no_ipv6() {
  # shellcheck disable=SC2016
  ip netns exec "$1" /bin/sh -c 'for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6; do
    [ ! -e "$f" ] || echo 1 >"$f"; done'
}

up() {
  local n=$1 i owner
  [[ $n =~ ^[0-9]+$ && $n -ge 1 && $n -le 200 ]] || { echo "lsnet: N must be 1..200" >&2; exit 2; }
  [[ -e $STATE/n ]] && { echo "lsnet: $ID already up ($(hosts_count) hosts); run down first" >&2; exit 1; }
  if [[ ${LSNET_PIN:-0} == 1 && ! -e $CPUSET/cpuset.cpus ]]; then  # checked before anything is made
    echo "lsnet: LSNET_PIN=1 needs the cgroup-v1 cpuset hierarchy at $CPUSET; without it, leave LSNET_PIN" \
      "unset and pass --bind-to none to mpirun" >&2
    exit 2
  fi
  owner=${LSNET_OWNER:-$PPID}
  mkdir -p "$STATE/uts" "$STATE/shm"
  proc_id "$owner" >"$STATE/owner"
  if [[ ${LSNET_SHARED_SHM:-0} != 1 ]]; then mount -t tmpfs -o mode=755 "lsnet-shm-$ID" "$STATE/shm"; fi
  echo "$PREFIX" >"$STATE/prefix"
  echo "$n" >"$STATE/n"
  { echo "127.0.0.1 localhost"; for ((i = 0; i < n; i++)); do echo "$NET.$((i + 1)) $PREFIX$i"; done; } >"$STATE/hosts"
  : >"$STATE/resolv.conf"
  ip netns add "$SW"
  no_ipv6 "$SW"
  ip -n "$SW" link set lo up
  ip -n "$SW" link add br0 type bridge
  ip -n "$SW" link set br0 up
  if [[ ${LSNET_PIN:-0} == 1 ]]; then
    mkdir -p "$CPUS"
    cat "$CPUSET/cpuset.mems" >"$CPUS/cpuset.mems"; cat "$CPUSET/cpuset.cpus" >"$CPUS/cpuset.cpus"
  fi
  for ((i = 0; i < n; i++)); do
    local ns=$ID-$PREFIX$i
    ip netns add "$ns"
    no_ipv6 "$ns"
    ip -n "$ns" link set lo up
    # the pair is born inside the switch with its peer inside the host: it never exists in the root namespace
    ip -n "$SW" link add "v$i" type veth peer name eth0 netns "$ns"
    ip -n "$SW" link set "v$i" master br0 up
    ip -n "$ns" addr add "$NET.$((i + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    touch "$STATE/uts/$PREFIX$i"
    if mountpoint -q "$STATE/shm"; then mkdir -p "$STATE/shm/$PREFIX$i"; chmod 1777 "$STATE/shm/$PREFIX$i"; fi
    # shellcheck disable=SC2016  # $1 is the inner sh's argument
    unshare --uts="$STATE/uts/$PREFIX$i" /bin/sh -c 'echo "$1" >/proc/sys/kernel/hostname' sh "$PREFIX$i"
    if [[ ${LSNET_PIN:-0} == 1 ]]; then
      mkdir -p "$CPUS/$PREFIX$i"
      cat "$CPUSET/cpuset.mems" >"$CPUS/$PREFIX$i/cpuset.mems"
      echo $((i % $(nproc))) >"$CPUS/$PREFIX$i/cpuset.cpus"
    fi
  done
  echo "lsnet: $n hosts up ($ID): ${PREFIX}0..${PREFIX}$((n - 1)) = $NET.1..$NET.$n" >&2
}

down() {
  local f p
  for f in /run/netns/"$ID"-*; do [[ -e $f ]] && { ip netns del "$(basename "$f")" || true; }; done
  for f in "$STATE"/uts/*; do
    [[ -e $f ]] || continue
    umount "$f" 2>/dev/null || true
    rm -f "$f"
  done
  if mountpoint -q "$STATE/shm" 2>/dev/null; then umount "$STATE/shm" || umount -l "$STATE/shm" || true; fi
  if [[ -d $CPUS ]]; then  # a cgroup goes only once empty: leftovers (ours) move to the root
    for f in "$CPUS"/*/; do
      [[ -d $f ]] || continue
      while read -r p; do echo "$p" >"$CPUSET/tasks" 2>/dev/null || true; done <"$f/tasks"
      rmdir "$f" || true
    done
    while read -r p; do echo "$p" >"$CPUSET/tasks" 2>/dev/null || true; done <"$CPUS/tasks"
    rmdir "$CPUS" || true
  fi
  rm -rf "$STATE"
  # `ip netns add` made /run/netns a mount point; leave it as it was found when no namespace is left
  if mountpoint -q /run/netns 2>/dev/null && [[ -z $(ls -A /run/netns) ]]; then umount /run/netns && rmdir /run/netns; fi
  echo "lsnet: down ($ID)" >&2
}

# Sets of hosts whose owner is gone: left by a holder of the lock that was killed (SIGKILL, a CTest
# timeout) before its EXIT trap ran. Their Slurm daemons (lsslurm.sh wrote its directory into the state)
# are stopped by their pid files, then the hosts go down.
reap() {
  local d id owner
  for d in /run/lsnet.*/; do
    [[ -d $d ]] || continue
    id=${d%/}; id=${id#/run/lsnet.}
    [[ $id =~ ^[a-z0-9]{1,16}$ ]] || continue
    owner=$(cat "$d/owner" 2>/dev/null || true)
    if [[ -n $owner && $(proc_id "${owner%% *}") == "$owner" ]]; then continue; fi
    echo "lsnet: reaping $id (owner ${owner:-unknown} is gone)" >&2
    if [[ -s $d/lsslurm ]]; then
      LSNET_ID=$id LSNET_PREFIX=$(cat "$d/prefix" 2>/dev/null || echo node) LSSLURM_DIR=$(cat "$d/lsslurm") \
        "$here/lsslurm.sh" stop >/dev/null 2>&1 || true
    fi
    LSNET_ID=$id "$here/lsnet.sh" down || true
  done
}

do_exec() {
  local i
  i=$(host_index "$1"); shift
  [[ -e $STATE/uts/$PREFIX$i ]] || { echo "lsnet: host $PREFIX$i is not up ($ID)" >&2; exit 2; }
  if [[ -d $CPUS/$PREFIX$i ]]; then echo $$ >"$CPUS/$PREFIX$i/tasks"; fi
  local shm=-
  [[ -d $STATE/shm/$PREFIX$i ]] && shm=$STATE/shm/$PREFIX$i
  # shellcheck disable=SC2016  # $1..$3 are the inner sh's arguments
  exec nsenter --net="/run/netns/$ID-$PREFIX$i" --uts="$STATE/uts/$PREFIX$i" -- \
    unshare --mount --propagation private -- /bin/sh -c \
    'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/resolv.conf &&
     { [ "$3" = - ] || mount --bind "$3" /dev/shm; } && shift 3 && exec "$@"' \
    sh "$STATE/hosts" "$STATE/resolv.conf" "$shm" "$@"
}

# RATE [BURST]: a TBF on both ends of every link (host eth0 egress, switch-side vI egress) = RATE per
# direction per host. Choose BURST at about RATE x 1 ms (128kb at 1gbit, 1.25mb at 10gbit): with the 1mb
# default at 1gbit, a 1 MB message passes at line speed. Latency is not shaped (that needs sch_netem).
shape() {
  local rate=$1 burst=${2:-1mb} n i
  n=$(hosts_count)
  for ((i = 0; i < n; i++)); do
    tc -n "$ID-$PREFIX$i" qdisc replace dev eth0 root tbf rate "$rate" burst "$burst" latency 5ms
    tc -n "$SW" qdisc replace dev "v$i" root tbf rate "$rate" burst "$burst" latency 5ms
  done
}

unshape() {
  local n i
  n=$(hosts_count)
  for ((i = 0; i < n; i++)); do
    tc -n "$ID-$PREFIX$i" qdisc del dev eth0 root 2>/dev/null || true
    tc -n "$SW" qdisc del dev "v$i" root 2>/dev/null || true
  done
}

status() {
  local n i
  n=$(hosts_count)
  echo "hosts ($ID): $n"
  for ((i = 0; i < n; i++)); do
    echo "$PREFIX$i: $(ip -n "$ID-$PREFIX$i" -br addr show eth0) | $(tc -n "$ID-$PREFIX$i" qdisc show dev eth0 | head -1)" \
      "| cpus $(cat "$CPUS/$PREFIX$i/cpuset.cpus" 2>/dev/null || echo all)"
  done
}

uts() { local i; i=$(host_index "$1"); stat -L -c %i "$STATE/uts/$PREFIX$i"; }

case ${1:-} in
  up) up "${2:?N}" ;;
  down) down ;;
  exec) shift; do_exec "$@" ;;
  shape) shape "${2:?RATE}" "${3:-}" ;;
  unshape) unshape ;;
  status) status ;;
  reap) reap ;;
  uts) uts "${2:?HOST}" ;;
  *) sed -n '2,11p' "$0" >&2; exit 2 ;;
esac
