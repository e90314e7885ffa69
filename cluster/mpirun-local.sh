#!/usr/bin/env bash
# mpirun-local.sh - lockstep training with N ranks on this machine (Open MPI's mpirun).
#
#   bash cluster/mpirun-local.sh                                   # the variables below
#   NP=4 THREADS=2 RUN_FILE=my.yaml bash cluster/mpirun-local.sh --set train.epochs=3   # extra args go to `lockstep train`
#
# Change these (environment variables; defaults in brackets):
#   LOCKSTEP   the lockstep binary [build/launch/lockstep if it exists, else `lockstep` on PATH]
#   RUN_FILE   the run file [launch/configs/fashion_mnist_mlp.yaml]
#   RUN_DIR    where checkpoints/, history.csv, config.yaml, final.h5 go [runs/<run file name>]
#   NP         ranks [2]
#   THREADS    CPU threads per rank [cores / NP, at least 1]
#   TIMEOUT    seconds after which mpirun ends the whole job, exit status 110 [86400]. Always keep a bound:
#              a rank that dies ends the job by itself, but a stuck rank would hang it forever.
#   MPIRUN     the mpirun command [mpirun]; MPIRUN_ARGS more mpirun flags, e.g. "--mca btl self,vader,tcp"
#
# What the script adds to mpirun:
#   --allow-run-as-root  only when run as root (Open MPI refuses root otherwise; in containers)
#   --use-hwthread-cpus --map-by slot:PE=THREADS --bind-to hwthread   when NP x THREADS fits the hardware
#              threads (nproc): each rank gets its own THREADS of them (without PE=, mpirun binds each rank
#              to ONE core and its threads share it)
#   --oversubscribe --bind-to none            when it does not (more ranks than cores: allowed, slow)
# In Docker also export OMPI_MCA_btl_vader_single_copy_mechanism=none (no ptrace for CMA).
#
# Stopping and resuming: `kill -USR1 <mpirun pid>` (mpirun forwards USR1/USR2 to every rank) makes the
# trainer write a checkpoint and exit with status 75; running the script again continues from it
# (`--resume auto`). Ctrl-C/SIGTERM to mpirun gives the ranks only 1 s before SIGKILL
# (odls_base_sigkill_timeout), usually too little to write a checkpoint.
# Exit status: the trainer's (0 finished, 2 bad input, 3 NaN loss, 4 communication failure, 75 stopped),
# 110 TIMEOUT expired, 128+N a rank killed by signal N.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${LOCKSTEP:-}" ]; then
  if [ -x "$here/build/launch/lockstep" ]; then LOCKSTEP=$here/build/launch/lockstep; else LOCKSTEP=lockstep; fi
fi
RUN_FILE=${RUN_FILE:-launch/configs/fashion_mnist_mlp.yaml}
RUN_DIR=${RUN_DIR:-runs/$(basename "$RUN_FILE" .yaml)}
NP=${NP:-2}
cores=$(nproc)
THREADS=${THREADS:-$(( cores / NP > 0 ? cores / NP : 1 ))}
TIMEOUT=${TIMEOUT:-86400}
MPIRUN=${MPIRUN:-mpirun}
MPIRUN_ARGS=${MPIRUN_ARGS:-}

flags=(--timeout "$TIMEOUT" -np "$NP")
[ "$(id -u)" = 0 ] && flags+=(--allow-run-as-root)
if [ $(( NP * THREADS )) -le "$cores" ]; then
  flags+=(--use-hwthread-cpus --map-by "slot:PE=$THREADS" --bind-to hwthread)
else
  flags+=(--oversubscribe --bind-to none)
fi
echo "mpirun-local: $NP ranks x $THREADS threads ($cores cores), $RUN_FILE -> $RUN_DIR" >&2
# shellcheck disable=SC2086  # MPIRUN_ARGS is split on purpose
exec "$MPIRUN" "${flags[@]}" $MPIRUN_ARGS \
  "$LOCKSTEP" train "$RUN_FILE" --run-dir "$RUN_DIR" --resume auto --threads "$THREADS" "$@"
