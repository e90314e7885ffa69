#!/usr/bin/env bash
# mpirun-hostfile.sh - lockstep training on several machines listed in a hostfile (Open MPI, over ssh).
#
#   HOSTFILE=hosts.txt bash cluster/mpirun-hostfile.sh
#   HOSTFILE=hosts.txt PER_NODE=4 THREADS=4 IFACE=eth0 bash cluster/mpirun-hostfile.sh --set train.epochs=3
#
# hosts.txt, one machine per line with the ranks it may run:
#   node01 slots=4
#   node02 slots=4
# Requirements: passwordless ssh from this machine to every host; the same Open MPI and the lockstep binary
# at the same path on every host (or --prefix, below); RUN_DIR and the data on a filesystem every host
# sees (rank 0 writes the checkpoints; every rank reads them on resume).
#
# Change these (environment variables; defaults in brackets):
#   HOSTFILE   the hostfile [hosts.txt]
#   PER_NODE   ranks per host [1]; NP total ranks [hosts x PER_NODE]
#   THREADS    CPU threads per rank [this machine's hardware threads (nproc) / PER_NODE]; each rank is
#              bound to THREADS hardware threads, so PER_NODE x THREADS must fit every host
#   LOCKSTEP   the lockstep binary, absolute path valid on every host [`lockstep` on PATH]
#   RUN_FILE   the run file [launch/configs/fashion_mnist_mlp.yaml]; RUN_DIR [runs/<run file name>]
#   IFACE      network interface(s) for MPI traffic, e.g. eth0 or 10.0.0.0/24 [unset: Open MPI picks;
#              set it when hosts have several networks (docker0, virbr0...) or the job hangs at start]
#   TIMEOUT    seconds after which mpirun ends the whole job, exit status 110 [86400]
#   MPIRUN     [mpirun]; MPIRUN_ARGS more flags, e.g. "--prefix /opt/openmpi" (Open MPI not on PATH
#              on the remote hosts) or "--mca plm_rsh_agent 'ssh -p 2222'"
# The environment variables below are passed to every rank with -x; add your own with -x in MPIRUN_ARGS.
# Exit status: the trainer's (0 finished, 2 bad input, 3 NaN loss, 4 communication failure, 75 stopped
# after `kill -USR1 <mpirun pid>`), 110 TIMEOUT expired, 128+N a rank killed by signal N.
set -euo pipefail
HOSTFILE=${HOSTFILE:-hosts.txt}
[ -r "$HOSTFILE" ] || { echo "mpirun-hostfile: no hostfile '$HOSTFILE' (set HOSTFILE)" >&2; exit 2; }
hosts=$(grep -cvE '^[[:space:]]*(#|$)' "$HOSTFILE")
PER_NODE=${PER_NODE:-1}
NP=${NP:-$(( hosts * PER_NODE ))}
cores=$(nproc)
THREADS=${THREADS:-$(( cores / PER_NODE > 0 ? cores / PER_NODE : 1 ))}
LOCKSTEP=${LOCKSTEP:-lockstep}
RUN_FILE=${RUN_FILE:-launch/configs/fashion_mnist_mlp.yaml}
RUN_DIR=${RUN_DIR:-runs/$(basename "$RUN_FILE" .yaml)}
TIMEOUT=${TIMEOUT:-86400}
MPIRUN=${MPIRUN:-mpirun}
MPIRUN_ARGS=${MPIRUN_ARGS:-}
# HDF5's file locks fail on many shared filesystems (NFS: errno 37, Lustre: 524); checkpoints are written
# to a temporary name and renamed, so nothing relies on them.
export HDF5_USE_FILE_LOCKING=${HDF5_USE_FILE_LOCKING:-FALSE}

flags=(--timeout "$TIMEOUT" --hostfile "$HOSTFILE" -np "$NP" --use-hwthread-cpus --map-by "ppr:$PER_NODE:node:PE=$THREADS" --bind-to hwthread
       -x PATH -x HDF5_USE_FILE_LOCKING)
[ -n "${LD_LIBRARY_PATH:-}" ] && flags+=(-x LD_LIBRARY_PATH)
[ "$(id -u)" = 0 ] && flags+=(--allow-run-as-root)
[ -n "${IFACE:-}" ] && flags+=(--mca btl_tcp_if_include "$IFACE" --mca oob_tcp_if_include "$IFACE")
echo "mpirun-hostfile: $NP ranks ($PER_NODE per host x $hosts hosts) x $THREADS threads, $RUN_FILE -> $RUN_DIR" >&2
# shellcheck disable=SC2086  # MPIRUN_ARGS is split on purpose
exec "$MPIRUN" "${flags[@]}" $MPIRUN_ARGS \
  "$LOCKSTEP" train "$RUN_FILE" --run-dir "$RUN_DIR" --resume auto --threads "$THREADS" "$@"
