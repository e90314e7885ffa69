#!/usr/bin/env bash
# Graph-model benchmark (issue "Functional models", speed): a graph model must cost no more than the
# same layers as a Sequential model, and the comparison network of launch/configs/pretraining_pairs.yaml
# is timed beside PyTorch (the same network as an nn.Module with two towers, tests/bench/torch_pairs.py).
#
# Per round and batch size, 1 thread:
#   * one train_step_bench process times model (a) in three forms, their windows interleaved (paired in
#     time): Sequential, Functional written as a chain (Model takes the chain paths), and Functional
#     as a general graph (the input also listed as an output: the same calls and flops, but the step
#     runs Model's graph forward and Model::graph_backward). The order of the forms alternates by round.
#   * train_step_bench --model pairs, then torch_pairs.py (interleaved processes).
# Figures are medians over rounds x windows; graph/sequential is the median of the per-window paired
# ratios (wall clock, and per CPU-second of the process, which discounts time-slicing on a shared vCPU).
#
#   bash tests/bench/run_graph_bench.sh [BUILD_DIR] [BATCHES] [ROUNDS]
#   bash tests/bench/run_graph_bench.sh build-bench "32 256" 5
# The peer runs on the torch of peer_python.sh: by default the CPU wheel of torch 2.13.0 in
# BUILD_DIR/venv-torch (created on first use), PYTHON=... overrides; torch_pairs.py puts torch=<version>
# in every line and the table names it.
# KEEP=DIR keeps the raw rows there. Samples/s cells are medians over the rounds' processes (each the
# median of its windows), wall clock, with the CPU-second rate in brackets; the ratios are the figures
# to compare (the machine is shared: absolute rates move with its load, ../shared/bench/BASELINE.md §3).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
batches=${2:-32 256}
rounds=${3:-5}
bench=$build/tests/bench/train_step_bench
peer=$root/tests/bench/torch_pairs.py
[ -x "$bench" ] || { echo "build $bench first (cmake --build $build --target train_step_bench)"; exit 2; }
. "$root/tests/bench/peer_python.sh"
peer_python "$build"
torch_version=$TORCH_VERSION
if [ -n "${KEEP:-}" ]; then out=$KEEP; mkdir -p "$out"; rm -f "$out"/{forms,ls,pt}.txt
else out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi

for r in $(seq "$rounds"); do
  if [ $((r % 2)) = 1 ]; then order=a,a_func,a_graph; else order=a_graph,a_func,a; fi
  for b in $batches; do
    "$bench" --model "$order" --batch-size "$b" --threads 1 --reps 5 --window-sec 0.2 | sed "s/^/round=$r /" >> "$out/forms.txt"
    "$bench" --model pairs --batch-size "$b" --threads 1 --reps 5 --window-sec 0.3 | sed "s/^/round=$r /" >> "$out/ls.txt"
    if [ -n "$torch_version" ]; then
      "$PYTHON" "$peer" --batch-size "$b" --threads 1 --reps 5 --window-sec 0.3 2>/dev/null \
          | sed "s/^/round=$r /" >> "$out/pt.txt" || true
    fi
  done
done

PYTHONPATH="$root/tests/bench" python3 - "$out" "$batches" "$rounds" "$(bench_cpu_line)" \
    "${torch_version:-none}" <<'PY'
import statistics, sys
from bench_rows import med, parse
out, batches, rounds, cpu, tv = sys.argv[1], sys.argv[2].split(), sys.argv[3], sys.argv[4], sys.argv[5]
forms, ls, pt = parse(f"{out}/forms.txt"), parse(f"{out}/ls.txt"), parse(f"{out}/pt.txt")
f = lambda x: f"{x:,.0f}" if x else "-"
wins = lambda row, key="win_sps": [float(v) for v in row[key].split(",")]

def paired(b, form, key):  # per-window ratio form / sequential within each process
    rs = []
    for rnd in sorted({r["round"] for r in forms}):
        get = lambda fm: [r for r in forms if r["round"] == rnd and r["batch"] == b and r["form"] == fm]
        x, s = get(form), get("sequential")
        if x and s:
            rs += [p / q for p, q in zip(wins(x[0], key), wins(s[0], key))]
    if not rs:
        return None
    q = statistics.quantiles(rs, n=4) if len(rs) > 1 else [rs[0]] * 3
    return statistics.median(rs), q[0], q[2]

print(f"CPU: {cpu}. 1 thread, {rounds} round(s). PyTorch peer: torch {tv} (tests/bench/torch_pairs.py).")
print()
print("Model (a) 784-300-100-10, SGD: samples/s, wall (per CPU-second), median over processes; ratios: the")
print("per-window paired ratio to Sequential in the same process, median [quartiles] over rounds x windows.")
print()
print("| batch | Sequential | Functional, chain path | Functional, graph path | functional/sequential | graph/sequential | graph/sequential (CPU-s) |")
print("|---|---|---|---|---|---|---|")
for b in batches:
    sel = lambda fm: [r for r in forms if r["batch"] == b and r["form"] == fm]
    fp = [r["path"] for r in sel("functional")] + [r["path"] for r in sel("graph")]
    cells = [f"{f(med(sel(fm)))} ({f(med(sel(fm), key='cpu_samples_per_sec'))})" for fm in ("sequential", "functional", "graph")]
    rat = lambda x: f"{x[0]:.3f} [{x[1]:.3f}–{x[2]:.3f}]" if x else "-"
    print(f"| {b} | {cells[0]} | {cells[1]} | {cells[2]} | {rat(paired(b, 'functional', 'win_sps'))} | "
          f"{rat(paired(b, 'graph', 'win_sps'))} | {rat(paired(b, 'graph', 'win_cpu_sps'))} |")
paths = {(r["form"], r["path"]) for r in forms}
print()
print("paths taken: " + ", ".join(f"{fm}={p}" for fm, p in sorted(paths)))
print()
print(f"Comparison network of pretraining_pairs.yaml (two towers of Flatten + 5 Dense(100, elu), concatenate,")
print(f"Dense(10, elu), Dense(1, sigmoid); binary cross-entropy; SGD 0.01, Nesterov momentum 0.95): samples/s,")
print(f"wall (per CPU-second), median over processes (interleaved lockstep, PyTorch, lockstep, ...).")
print()
print(f"| batch | lockstep | PyTorch {tv} | lockstep/PyTorch | lockstep/PyTorch (CPU-s) |")
print("|---|---|---|---|---|")
for b in batches:
    L = [r for r in ls if r["batch"] == b]
    P = [r for r in pt if r["batch"] == b]
    lw, pw = med(L), med(P)
    lc, pc = med(L, key="cpu_samples_per_sec"), med(P, key="cpu_samples_per_sec")
    print(f"| {b} | {f(lw)} ({f(lc)}) | {f(pw)} ({f(pc)}) | " + (f"{lw/pw:.2f}x" if lw and pw else "-") + " | "
          + (f"{lc/pc:.2f}x" if lc and pc else "-") + " |")
PY
