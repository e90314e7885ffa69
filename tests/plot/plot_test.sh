#!/usr/bin/env bash
# plot_test.sh LOCKSTEP CASE - `lockstep plot` as a user runs it; the SVG is read back with python3's
# xml.etree (check_svg.py): well-formed, one <path class="series"> per expected curve, the legend's labels.
#   three_epoch_run    trains a tiny MLP for 3 epochs on generated data (an exponential per-epoch schedule,
#                      so the rate changes) and plots the run: loss, accuracy, val_loss, val_accuracy, and
#                      the learning rate on a second panel; the PNG when rsvg-convert is installed, and
#                      without it (PATH emptied) the SVG alone and a message saying how to get a PNG.
#   two_runs_overlaid  two history.csv files written here, overlaid: twice the curves, labelled "RUN: loss";
#                      a constant rate gives no learning-rate panel; empty validation columns no curves;
#                      a NaN a gap in the line.
#   bad_input          exit 2 and the file named: a missing run directory, one without history.csv, a
#                      malformed history.csv (header, cell count, a word for a number, no rows), an
#                      unwritable --out, an unsupported --out extension.
set -uo pipefail
bin=${1:?usage: plot_test.sh PATH/TO/lockstep CASE}
case_=${2:?usage: plot_test.sh PATH/TO/lockstep CASE}
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3
[ -x "$py" ] || { echo "SKIP: $py is needed to check the SVG"; exit 77; }
tmp=$(mktemp -d "${TMPDIR:-/tmp}/lockstep-plot.XXXXXX")
trap '[ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
check() { # SVG check_svg.py-args...
  "$py" "$here/check_svg.py" "$@" || fail "check_svg.py $*"
}

# history.csv of 3 epochs: write_history DIR LR0 DECAY [VALIDATION=1]
write_history() {
  mkdir -p "$1"
  "$py" - "$1/history.csv" "$2" "$3" "${4:-1}" <<'PY'
import math, sys
path, lr0, decay, val = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
with open(path, "w") as f:
    f.write("epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds\n")
    for e in range(1, 4):
        l, a = 0.9 * math.exp(-e / 2) + 0.1, 1 - 0.7 * math.exp(-e / 2)
        v = f"{1.1 * l:.17g},{a - 0.03:.17g}" if val else ","
        f.write(f"{e},{l:.17g},{a:.17g},{v},{lr0 * decay ** (e - 1):.17g},0.5\n")
PY
}

case $case_ in
three_epoch_run)
  # ---- a tiny dataset (random 28x28 images, 10 classes) and a 3-epoch run -------------------------
  mkdir -p "$tmp/idx"
  "$py" - "$tmp/idx" <<'PY' || exit 1
import os, random, struct, sys
random.seed(3)
out = sys.argv[1]
def idx(name, n, images):
    with open(f"{out}/{name}", "wb") as f:
        if images:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28)); f.write(bytes(random.randrange(256) for _ in range(n * 784)))
        else:
            f.write(struct.pack(">II", 0x801, n)); f.write(bytes(i % 10 for i in range(n)))
idx("train-images-idx3-ubyte", 320, True); idx("train-labels-idx1-ubyte", 320, False)
idx("t10k-images-idx3-ubyte", 64, True); idx("t10k-labels-idx1-ubyte", 64, False)
PY
  "$bin" data convert --format mnist --src "$tmp/idx" --out "$tmp/data.h5" >/dev/null || { echo "FAIL: data convert"; exit 1; }
  cat >"$tmp/run.yaml" <<YAML
name: plot_test
seed: 7
data: {path: $tmp/data.h5, validation: {first: 64}, scale: 255}
model:
  input_shape: [28, 28]
  layers:
    - flatten: {}
    - dense: {units: 16, activation: relu}
    - dense: {units: 10, activation: softmax}
loss: sparse_categorical_crossentropy
metrics: [accuracy]
optimizer: {name: sgd, learning_rate: 0.02}
schedule: {name: exponential_decay, decay_steps: 1, decay_rate: 0.5, per: epoch}
train: {epochs: 3, batch_size: 32, verbose: 0}
YAML
  "$bin" train "$tmp/run.yaml" --run-dir "$tmp/run" --threads 1 >"$tmp/train.log" 2>&1 ||
    { cat "$tmp/train.log"; echo "FAIL: lockstep train"; exit 1; }
  rows=$(($(wc -l <"$tmp/run/history.csv") - 1))
  [ "$rows" = 3 ] || fail "history.csv has $rows rows, expected 3"
  head -2 "$tmp/run/history.csv"

  # ---- the plot ----------------------------------------------------------------------------------
  "$bin" plot "$tmp/run" --out "$tmp/curves.svg" >"$tmp/out.txt" 2>&1 || { cat "$tmp/out.txt"; fail "lockstep plot exited $?"; }
  cat "$tmp/out.txt"
  check "$tmp/curves.svg" --main loss,accuracy,val_loss,val_accuracy --lr "learning rate" --points 3
  if command -v rsvg-convert >/dev/null; then
    grep -q "curves.png" "$tmp/out.txt" || fail "stdout does not name the PNG"
    [ "$(head -c 8 "$tmp/curves.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "curves.png is not a PNG"
  else
    echo "note: rsvg-convert is not installed; the PNG path is not checked"
  fi
  # without rsvg-convert: the SVG alone, and how to get a PNG
  rm -f "$tmp/curves.svg" "$tmp/curves.png"
  PATH=/nonexistent "$bin" plot "$tmp/run" --out "$tmp/curves.svg" >"$tmp/out.txt" 2>&1 || fail "lockstep plot without rsvg-convert exited $?"
  cat "$tmp/out.txt"
  [ -f "$tmp/curves.svg" ] && [ ! -e "$tmp/curves.png" ] || fail "without rsvg-convert: expected the SVG alone"
  grep -q "only the SVG" "$tmp/out.txt" && grep -q "librsvg2-bin" "$tmp/out.txt" ||
    fail "without rsvg-convert: stdout should say only the SVG was written and how to get a PNG"
  # a history.csv named directly plots the same curves
  "$bin" plot "$tmp/run/history.csv" --out "$tmp/direct.svg" >/dev/null || fail "plot of history.csv itself"
  check "$tmp/direct.svg" --main loss,accuracy,val_loss,val_accuracy --lr "learning rate"
  ;;

two_runs_overlaid)
  write_history "$tmp/lr-0.01" 0.01 1
  write_history "$tmp/lr-0.001" 0.001 1
  "$bin" plot "$tmp/lr-0.01" "$tmp/lr-0.001" --out "$tmp/both.svg" || fail "lockstep plot of two runs exited $?"
  main=""
  for r in lr-0.01 lr-0.001; do
    for c in loss accuracy val_loss val_accuracy; do main+="$r: $c,"; done
  done
  check "$tmp/both.svg" --main "$main" --lr "lr-0.01: learning rate,lr-0.001: learning rate" --points 3
  # one of them alone: half the curves; the rate constant: no learning-rate panel
  "$bin" plot "$tmp/lr-0.01" --out "$tmp/one.svg" >/dev/null || fail "lockstep plot of one run exited $?"
  check "$tmp/one.svg" --main loss,accuracy,val_loss,val_accuracy --no-lr --points 3
  # the same run twice: both drawn, told apart
  "$bin" plot "$tmp/lr-0.01" "$tmp/lr-0.01" --out "$tmp/twice.svg" >/dev/null || fail "the same run twice"
  check "$tmp/twice.svg" --main "lr-0.01: loss,lr-0.01: accuracy,lr-0.01: val_loss,lr-0.01: val_accuracy,lr-0.01 #2: loss,lr-0.01 #2: accuracy,lr-0.01 #2: val_loss,lr-0.01 #2: val_accuracy" --no-lr
  # two runs of the same directory name: told apart by their parents
  write_history "$tmp/x/run" 0.01 1
  write_history "$tmp/y/run" 0.01 1 0
  "$bin" plot "$tmp/x/run" "$tmp/y/run" --out "$tmp/same-name.svg" >/dev/null || fail "runs named alike"
  # no validation (empty val_ columns): no validation curves
  check "$tmp/same-name.svg" --main "x/run: loss,x/run: accuracy,x/run: val_loss,x/run: val_accuracy,y/run: loss,y/run: accuracy" --no-lr
  # a NaN loss: a gap in its line
  write_history "$tmp/nan" 0.01 0.5
  sed -i '3s/^2,[^,]*,/2,nan,/' "$tmp/nan/history.csv"
  "$bin" plot "$tmp/nan" --out "$tmp/nan.svg" >/dev/null || fail "a NaN loss"
  check "$tmp/nan.svg" --main loss,accuracy,val_loss,val_accuracy --lr "learning rate" --gaps loss
  ;;

bad_input)
  expect_2() { # NAME WANTED-IN-STDERR lockstep-args...
    local name=$1 want=$2
    shift 2
    "$bin" plot "$@" >"$tmp/out.txt" 2>"$tmp/err.txt"
    local rc=$?
    echo "$name: exit $rc: $(head -c 300 "$tmp/err.txt")"
    [ "$rc" = 2 ] || fail "$name: exit $rc, expected 2"
    grep -qF -- "$want" "$tmp/err.txt" || fail "$name: the message does not name $want"
  }
  write_history "$tmp/good" 0.01 1
  mkdir -p "$tmp/empty-dir" "$tmp/header" "$tmp/cells" "$tmp/word" "$tmp/no-rows" "$tmp/zero"
  printf 'step,loss\n1,0.5\n' >"$tmp/header/history.csv"
  printf 'epoch,loss,lr,seconds\n1,0.5,0.01,1\n2,0.4,0.01\n' >"$tmp/cells/history.csv"
  printf 'epoch,loss,lr,seconds\n1,0.5,0.01,1\n2,low,0.01,1\n' >"$tmp/word/history.csv"
  printf 'epoch,loss,lr,seconds\n' >"$tmp/no-rows/history.csv"
  : >"$tmp/zero/history.csv"
  expect_2 "missing run directory" "$tmp/missing" "$tmp/good" "$tmp/missing" --out "$tmp/o.svg"
  expect_2 "no history.csv" "$tmp/empty-dir/history.csv" "$tmp/empty-dir" --out "$tmp/o.svg"
  expect_2 "not a history header" "$tmp/header/history.csv:1" "$tmp/header" --out "$tmp/o.svg"
  expect_2 "a short row" "$tmp/cells/history.csv:3" "$tmp/cells" --out "$tmp/o.svg"
  expect_2 "a word for a number" "$tmp/word/history.csv:3: column 'loss'" "$tmp/word" --out "$tmp/o.svg"
  expect_2 "no rows" "$tmp/no-rows/history.csv" "$tmp/no-rows" --out "$tmp/o.svg"
  expect_2 "an empty file" "$tmp/zero/history.csv" "$tmp/zero" --out "$tmp/o.svg"
  expect_2 "unwritable --out" "$tmp/no/such/dir/o.svg" "$tmp/good" --out "$tmp/no/such/dir/o.svg"
  expect_2 "--out .pdf" "$tmp/o.pdf" "$tmp/good" --out "$tmp/o.pdf"
  expect_2 "no run directory" "RUN_DIR" --out "$tmp/o.svg"
  [ ! -e "$tmp/o.svg" ] || fail "an SVG was written despite the errors"
  ;;
*)
  echo "plot_test.sh: unknown case $case_"
  exit 2
  ;;
esac
[ "$failures" = 0 ] && echo "PASS: $case_" || { echo "$failures failure(s)"; exit 1; }
