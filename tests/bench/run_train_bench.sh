#!/usr/bin/env bash
# Training-step benchmark: lockstep vs the PyTorch peer measured in the same run, and the GEMM
# roofline of the step (../shared/bench/limits/sgemm_bench.c: the step's time if everything but its
# matrix products were free). Rounds are interleaved (lockstep, PyTorch, lockstep, ...) and medians
# reported, because this machine's second vCPU is shared (see ../shared/bench/BASELINE.md §3).
#
#   bash tests/bench/run_train_bench.sh [BUILD_DIR] [MODELS] [BATCHES] [THREADS] [ROUNDS]
#   bash tests/bench/run_train_bench.sh build "a" "32 256" "1 2" 3
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
models=${2:-a}
batches=${3:-32 256}
threads_list=${4:-1 2}
rounds=${5:-3}
shared=${LOCKSTEP_SHARED:-$root/../shared}
bench=$build/tests/bench/train_step_bench
peer=$shared/bench/peers/torch_mlp.py
[ -x "$bench" ] || { echo "build $bench first (cmake --build $build --target train_step_bench)"; exit 2; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# GEMM roofline (1 and 2 threads) from the shared sgemm bench, built here.
if [ -f "$shared/bench/limits/sgemm_bench.c" ]; then
  gcc -O2 -o "$out/sgemm_bench" "$shared/bench/limits/sgemm_bench.c" \
      -I/usr/include/x86_64-linux-gnu/openblas-pthread -lopenblas -lm
  for m in $models; do
    gm=$m; [ "$m" = b ] && gm=a; [ "$m" = e ] && gm=d
    "$out/sgemm_bench" --model "$gm" --batch "$(echo $batches | tr ' ' ,)" --threads "$(echo $threads_list | tr ' ' ,)" \
        --reps 5 --square 0 > "$out/roof_$m.txt" 2>&1 || true
  done
fi

for r in $(seq "$rounds"); do
  for m in $models; do for b in $batches; do for t in $threads_list; do
    "$bench" --model "$m" --batch-size "$b" --threads "$t" >> "$out/ls.txt"
    if [ -f "$peer" ] && /usr/bin/python3 -c 'import torch' 2>/dev/null; then
      /usr/bin/python3 "$peer" --model "$m" --batch-size "$b" --threads "$t" --reps 5 --window-sec 0.3 \
          >> "$out/pt.txt" 2>/dev/null || true
    fi
  done; done; done
done

PYTHONPATH="$root/tests/bench" /usr/bin/python3 - "$out" "$models" "$batches" "$threads_list" <<'PY'
import sys
from bench_rows import med, parse
out, models, batches, threads = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
ls, pt = parse(f"{out}/ls.txt"), parse(f"{out}/pt.txt")
for r in ls + pt:
    r.setdefault("batch", r.get("batch_size"))  # a peer's batch_size stands for batch
def roof(m, b, t):
    for kv in parse(f"{out}/roof_{m}.txt"):
        if kv.get("batch") == b and kv.get("threads") == t:
            for k in ("bound_samples_per_sec", "samples_per_sec_bound", "bound"):
                if k in kv: return float(kv[k])
            if "roofline_ms" in kv: return 1e3 * int(b) / float(kv["roofline_ms"])
    return None
print("| model | batch | threads | lockstep samples/s | PyTorch samples/s | lockstep/PyTorch | GEMM roofline samples/s | lockstep/roofline |")
print("|---|---|---|---|---|---|---|---|")
for m in models:
    for b in batches:
        for t in threads:
            a, p, r = (med(ls, model=m, batch=b, threads=t), med(pt, model=m, batch=b, threads=t),
                       roof(m, b, t))
            f = lambda x: f"{x:,.0f}" if x else "-"
            print(f"| {m} | {b} | {t} | {f(a)} | {f(p)} | {a/p:.2f}x |" if a and p else f"| {m} | {b} | {t} | {f(a)} | {f(p)} | - |", end="")
            print(f" {f(r)} | {a/r:.0%} |" if a and r else f" {f(r)} | - |")
PY
