#!/usr/bin/env bash
# Errors once: under N ranks, an error every rank meets (a missing data file, a bad run file, a bad
# flag) is printed by rank 0 alone, and the job exits 2.
#   bash errors_once_test.sh PATH/TO/lockstep
set -uo pipefail
bin=${1:?usage: errors_once_test.sh PATH/TO/lockstep}
command -v mpirun >/dev/null || { echo "SKIP: no mpirun"; exit 77; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/lockstep-errors-once.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fails=0
cat > "$tmp/missing_data.yaml" <<'YAML'
name: missing_data
data: {path: /nonexistent/lockstep/x.h5}
model: {input_shape: [28, 28], layers: [{flatten: {}}, {dense: {units: 10, activation: softmax}}]}
loss: sparse_categorical_crossentropy
YAML
cat > "$tmp/bad_key.yaml" <<'YAML'
name: bad_key
data: {path: /nonexistent/lockstep/x.h5}
model: {input_shape: [28, 28], layers: [{flatten: {}}, {dense: {unitz: 10}}]}
loss: sparse_categorical_crossentropy
trian: {epochs: 1}
YAML
check() {  # NAME PATTERN ARGS...
  local name=$1 pattern=$2; shift 2
  mpirun --timeout 60 --oversubscribe -np 4 "$bin" "$@" > "$tmp/out" 2> "$tmp/err"
  local rc=$? n
  n=$(grep -c -- "$pattern" "$tmp/err")
  if [ "$rc" -ne 2 ] || [ "$n" -ne 1 ]; then
    echo "FAIL: $name: exit $rc (expected 2), '$pattern' printed $n time(s) (expected once)"; sed 's/^/  | /' "$tmp/err"
    fails=$((fails + 1))
  else
    echo "ok: $name: printed once, exit 2"
  fi
}
check "missing data file" "no such file" train "$tmp/missing_data.yaml" --run-dir "$tmp/r1"
check "misspelt run-file key" "trian" train "$tmp/bad_key.yaml" --run-dir "$tmp/r2"
check "unknown flag (before the communicator)" "unrecognised option" train "$tmp/missing_data.yaml" --bogus
check "summary of a bad layer argument" "unitz" summary "$tmp/bad_key.yaml"
echo "$((4 - fails)) passed, $fails failed"
[ "$fails" -eq 0 ]
