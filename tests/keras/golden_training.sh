#!/usr/bin/env bash
# CTest driver of golden_training.py (label keras): the Keras venv first (exit 77 = skip when it cannot
# be made), then every case in one Python process.
#   golden_training.sh VENV_DIR LOCKSTEP [golden_training.py options]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${1:?usage: golden_training.sh VENV_DIR LOCKSTEP [options]}
lockstep=${2:?usage: golden_training.sh VENV_DIR LOCKSTEP [options]}
shift 2
py=$(bash "$here/keras_venv.sh" "$venv") || exit $?
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec "$py" "$here/golden_training.py" --lockstep "$lockstep" "$@"
