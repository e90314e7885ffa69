#!/usr/bin/env bash
# Trains every run file of launch/configs/ for one short epoch on small data so none of them rots:
# each must exit 0 and leave history.csv with one row per epoch and final.h5; `lockstep summary` must
# accept each; `predict --mc-samples`, `evaluate` and `lr-find` run once.
#
#   bash tests/configs/run_configs.sh BUILD/launch/lockstep [CONFIG.yaml...]
#
# Data: Fashion-MNIST, MNIST and the partial CIFAR-10 of ../shared/datasets (or $LOCKSTEP_DATASETS)
# converted with `lockstep data convert`; without them, tiny random IDX / CIFAR-binary files are
# generated (python3, standard library only; MNIST on its own when only it is absent). Exit 77 (CTest:
# skipped) when neither is possible.
# The heavy convolutional run files (fashion_mnist_cnn, cifar10_resnet20) train on 64 images, the
# CIFAR-10 ones on the partial CIFAR-10 (its first 4,000 training images).
# Run files that take another's final.h5 (transfer.from) run after it: model_b_on_a after model_a,
# pretrained_classifier after pretraining_pairs. Pair runs (data.pairs) draw 256 pairs per epoch.
set -uo pipefail
bin=${1:?usage: run_configs.sh PATH/TO/lockstep [CONFIG.yaml...]}
shift
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
root=$(cd "$(dirname "$0")/../.." && pwd)
datasets=${LOCKSTEP_DATASETS:-$root/../shared/datasets}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/lockstep-configs.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
t0=$(date +%s)
failures=()

log() { printf '%s\n' "$*"; }
fail() { failures+=("$1"); log "FAIL: $1"; }

# ---- data ---------------------------------------------------------------------------------------
mkdir -p "$tmp/src/fashion" "$tmp/src/cifar" "$tmp/src/mnist"
if [ -f "$datasets/fashion-mnist/train-images-idx3-ubyte.gz" ] && [ -f "$datasets/cifar-10/data_batch_1.first4000.bin" ]; then
  log "data: converting $datasets/fashion-mnist and the partial $datasets/cifar-10"
  fashion_src=$datasets/fashion-mnist
  ln -s "$datasets/cifar-10/data_batch_1.first4000.bin" "$tmp/src/cifar/data_batch_1.bin"
  ln -s "$datasets/cifar-10/test_batch.first1000.bin" "$tmp/src/cifar/test_batch.bin"
  ln -s "$datasets/cifar-10/batches.meta.txt" "$tmp/src/cifar/batches.meta.txt"
elif command -v python3 >/dev/null; then
  log "data: $datasets is absent; generating small random IDX and CIFAR-10 binary files"
  fashion_src=$tmp/src/fashion
  python3 - "$tmp/src/fashion" "$tmp/src/cifar" <<'PY' || exit 1
import os, random, struct, sys
random.seed(7)
fash, cif = sys.argv[1], sys.argv[2]
def idx(path, n, images):
    with open(path, "wb") as f:
        if images:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28)); f.write(os.urandom(n * 784))
        else:
            f.write(struct.pack(">II", 0x801, n)); f.write(bytes(i % 10 for i in range(n)))
idx(f"{fash}/train-images-idx3-ubyte", 1200, True); idx(f"{fash}/train-labels-idx1-ubyte", 1200, False)
idx(f"{fash}/t10k-images-idx3-ubyte", 200, True); idx(f"{fash}/t10k-labels-idx1-ubyte", 200, False)
def batch(path, n):
    with open(path, "wb") as f:
        for i in range(n):
            f.write(bytes([i % 10])); f.write(os.urandom(3072))
batch(f"{cif}/data_batch_1.bin", 600); batch(f"{cif}/test_batch.bin", 100)
with open(f"{cif}/batches.meta.txt", "w") as f:
    f.write("\n".join(["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]) + "\n")
PY
else
  log "SKIP: neither $datasets nor python3 is available to make test data"
  exit 77
fi
# MNIST (the exercise 10 run files): the real files when present, else a small random IDX set.
if [ -f "$datasets/mnist/train-images-idx3-ubyte.gz" ]; then
  log "data: converting $datasets/mnist"
  mnist_src=$datasets/mnist
elif command -v python3 >/dev/null; then
  log "data: $datasets/mnist is absent; generating small random MNIST IDX files"
  mnist_src=$tmp/src/mnist
  python3 - "$mnist_src" <<'PY' || exit 1
import os, struct, sys
d = sys.argv[1]
def idx(path, n, images):
    with open(path, "wb") as f:
        if images:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28)); f.write(os.urandom(n * 784))
        else:
            f.write(struct.pack(">II", 0x801, n)); f.write(bytes(i % 10 for i in range(n)))
idx(f"{d}/train-images-idx3-ubyte", 1200, True); idx(f"{d}/train-labels-idx1-ubyte", 1200, False)
idx(f"{d}/t10k-images-idx3-ubyte", 200, True); idx(f"{d}/t10k-labels-idx1-ubyte", 200, False)
PY
else
  log "SKIP: neither $datasets/mnist nor python3 is available to make test data"
  exit 77
fi
"$bin" data convert --format fashion-mnist --src "$fashion_src" --out "$tmp/fashion.h5" --compression 1 >/dev/null ||
  { log "FAIL: converting Fashion-MNIST"; exit 1; }
"$bin" data convert --format mnist --src "$mnist_src" --out "$tmp/mnist.h5" --compression 1 >/dev/null ||
  { log "FAIL: converting MNIST"; exit 1; }
"$bin" data convert --format cifar10 --src "$tmp/src/cifar" --out "$tmp/cifar10.h5" --partial --compression 1 >/dev/null ||
  { log "FAIL: converting CIFAR-10"; exit 1; }
t_data=$(date +%s)
log "data ready in $((t_data - t0)) s"

# ---- one short epoch per run file -----------------------------------------------------------------
if [ $# -gt 0 ]; then configs=("$@"); else configs=("$root"/launch/configs/*.yaml); fi
# Run files that take their layers from another run's final.h5 go last: model_b_on_a (from model_a),
# pretrained_classifier (from pretraining_pairs).
is_transfer() { [[ $(basename "$1") == model_b_on_a.yaml || $(basename "$1") == pretrained_classifier.yaml ]]; }
ordered=()
for c in "${configs[@]}"; do is_transfer "$c" || ordered+=("$c"); done
for c in "${configs[@]}"; do is_transfer "$c" && ordered+=("$c"); done

for cfg in "${ordered[@]}"; do
  name=$(basename "$cfg" .yaml)
  data=$tmp/fashion.h5
  [[ $name == cifar10* ]] && data=$tmp/cifar10.h5
  grep -Eq '^ *(data: *\{ *)?path: *[^ ,}]*/mnist\.h5' "$cfg" && data=$tmp/mnist.h5
  epochs=1
  sets=(--set "data.path=$data" --set "data.limit=256" --set "data.validation={first: 200}"
        --set "train.epochs=$epochs" --set "train.verbose=2")
  # A slice of the training split (split #2 of exercise 10: {start: 55000}): its last 500 images, which
  # the generated files have too; validation comes from the slice.
  grep -Eq '^ *(data:.*[{,] *)?subset:' "$cfg" && sets+=(--set "data.subset={start: -500}")
  # Pairs (data.pairs): 256 per epoch, whatever the split's size.
  grep -Eq '^ *pairs:|[{,] *pairs:' "$cfg" && sets+=(--set "data.pairs.per_epoch=256")
  # The convolutional networks that are heavy on one core (ResNet-20: ~41 M multiply-adds per 32x32
  # image, the Fashion-MNIST CNN ~90 M per image, forward alone): 64 training and 64 validation images.
  if [[ $name == cifar10_resnet20 || $name == fashion_mnist_cnn ]]; then
    sets+=(--set "data.limit=64" --set "data.validation={first: 64}")
  fi
  if [[ $name == model_b_on_a ]]; then
    # Two epochs, the first frozen: exercises the unfreezing and the fresh optimizer.
    epochs=2
    sets+=(--set "train.epochs=2" --set "transfer.freeze_epochs=1" --set "transfer.from=$tmp/runs/model_a/final.h5")
  fi
  if [[ $name == pretrained_classifier ]]; then
    # DNN A's hidden layers from pretraining_pairs' final.h5, frozen (the run file's freeze_epochs).
    sets+=(--set "transfer.from=$tmp/runs/pretraining_pairs/final.h5")
  fi
  s0=$(date +%s%N)
  if ! "$bin" summary "$cfg" --threads 1 "${sets[@]}" >"$tmp/$name.summary.txt" 2>&1; then
    fail "$name: lockstep summary"; sed 's/^/    /' "$tmp/$name.summary.txt" | tail -5
  fi
  run=$tmp/runs/$name
  if ! "$bin" train "$cfg" --threads 1 --run-dir "$run" "${sets[@]}" >"$tmp/$name.log" 2>&1; then
    fail "$name: lockstep train exited $?"; sed 's/^/    /' "$tmp/$name.log" | tail -8; continue
  fi
  rows=$(($(wc -l <"$run/history.csv") - 1))
  [ "$rows" -eq "$epochs" ] || fail "$name: history.csv has $rows row(s), expected $epochs"
  [ -s "$run/final.h5" ] || fail "$name: no final.h5"
  last=$(tail -1 "$run/history.csv")
  ms=$((($(date +%s%N) - s0) / 1000000))
  printf '  %-36s %3d.%d s  history: %s\n' "$name" $((ms / 1000)) $((ms % 1000 / 100)) "${last:0:70}"
done

# ---- the other verbs, once ----------------------------------------------------------------------------
common=(--threads 1 --set "data.path=$tmp/fashion.h5" --set "data.limit=256" --set "data.validation={first: 200}")
if [ -s "$tmp/runs/mc_dropout/final.h5" ]; then
  if "$bin" predict "$root/launch/configs/mc_dropout.yaml" "${common[@]}" --checkpoint "$tmp/runs/mc_dropout/final.h5" \
       --mc-samples 3 --out "$tmp/mc.h5" >"$tmp/predict.log" 2>&1 && [ -s "$tmp/mc.h5" ]; then
    log "  predict --mc-samples 3: ok"
  else
    fail "predict --mc-samples 3"; tail -5 "$tmp/predict.log"
  fi
fi
if [ -s "$tmp/runs/model_b/final.h5" ]; then
  if "$bin" evaluate "$root/launch/configs/model_b.yaml" "${common[@]}" --checkpoint "$tmp/runs/model_b/final.h5" \
       >"$tmp/evaluate.log" 2>&1; then
    log "  evaluate: $(tail -1 "$tmp/evaluate.log")"
  else
    fail "evaluate"; tail -5 "$tmp/evaluate.log"
  fi
fi
if [ -f "$root/launch/configs/schedule_one_cycle.yaml" ]; then
  if "$bin" lr-find "$root/launch/configs/schedule_one_cycle.yaml" "${common[@]}" --out "$tmp/lr.csv" >"$tmp/lr.log" 2>&1 &&
     [ "$(wc -l <"$tmp/lr.csv")" -gt 2 ]; then
    log "  lr-find: $(($(wc -l <"$tmp/lr.csv") - 1)) points"
  else
    fail "lr-find"; tail -5 "$tmp/lr.log"
  fi
fi

log "${#ordered[@]} run file(s) in $(($(date +%s) - t0)) s, ${#failures[@]} failure(s)"
[ ${#failures[@]} -eq 0 ]
