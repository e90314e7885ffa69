#!/usr/bin/env bash
# Data-parallel benchmark (issue "Data-parallel training over MPI", speed): samples/s of the trainer's
# step (train_step_bench under mpirun: sync BN, bucketed all-reduce overlapped with backward, update)
# for 1 rank x 1 thread, 1 rank x 2 threads and 2 ranks x 1 thread, the share of the step spent waiting
# for the all-reduce, and beside them PyTorch DistributedDataParallel (gloo), 2 processes x 1 thread
# (../shared/bench/peers/torch_ddp.py). Rounds are interleaved and medians reported; the capacity probe
# (../shared/bench/limits/peak_flops.c --capacity: how many cores two busy threads get right now) runs
# before every round, because this machine's second vCPU is shared (../shared/bench/BASELINE.md §3).
#
# The peer runs on the torch of peer_python.sh: by default the CPU wheel of torch 2.13.0 in
# BUILD_DIR/venv-torch (created on first use), PYTHON=... overrides. Every peer line is recorded with
# torch=<version>, and the table names the version.
#
#   bash tests/bench/run_dist_bench.sh [BUILD_DIR] [MODELS] [GLOBAL_BATCHES] [ROUNDS]
#   bash tests/bench/run_dist_bench.sh build "a d" "32 256" 3
# KEEP=DIR keeps the raw key=value rows there (ls.txt, pt.txt, probe.txt).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
models=${2:-a d}
batches=${3:-32 256}
rounds=${4:-3}
shared=${LOCKSTEP_SHARED:-$root/../shared}
bench=$build/tests/bench/train_step_bench
ddp=$shared/bench/peers/torch_ddp.py
[ -x "$bench" ] || { echo "build $bench first (cmake --build $build --target train_step_bench)"; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
. "$root/tests/bench/peer_python.sh"
[ -f "$ddp" ] || LOCKSTEP_NO_PEER=1
peer_python "$build"
if [ -n "${KEEP:-}" ]; then out=$KEEP; mkdir -p "$out"; rm -f "$out"/{ls,pt,probe}.txt
else out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi
started=$(date -u '+%Y-%m-%d %H:%M UTC'); load0=$(cut -d' ' -f1-3 /proc/loadavg)
probe=""
if [ -f "$shared/bench/limits/peak_flops.c" ]; then
  gcc -O2 -pthread -o "$out/peak_flops" "$shared/bench/limits/peak_flops.c" && probe="$out/peak_flops"
fi

for r in $(seq "$rounds"); do
  [ -n "$probe" ] && { "$probe" --capacity 100 >> "$out/probe.txt" 2>/dev/null || true; }
  for m in $models; do for b in $batches; do
    "$bench" --model "$m" --batch-size "$b" --threads 1 | sed 's/^/cfg=1x1 /' >> "$out/ls.txt"
    "$bench" --model "$m" --batch-size "$b" --threads 2 | sed 's/^/cfg=1x2 /' >> "$out/ls.txt"
    mpirun --timeout 300 --bind-to none -np 2 "$bench" --model "$m" --batch-size "$b" --threads 1 \
        | sed 's/^/cfg=2x1 /' >> "$out/ls.txt"
    if [ -n "$TORCH_VERSION" ]; then
      "$PYTHON" "$ddp" --nprocs 2 --model "$m" --batch-size $((b / 2)) --threads 1 \
          --samples 4096 --reps 5 --window-sec 0.3 2>/dev/null \
          | sed "s/^/cfg=ddp global=$b torch=$TORCH_VERSION /" >> "$out/pt.txt" || true
    fi
  done; done
done
load1=$(cut -d' ' -f1-3 /proc/loadavg)

PYTHONPATH="$root/tests/bench" /usr/bin/python3 - "$out" "$models" "$batches" "$rounds" "$(bench_cpu_line)" \
    "${TORCH_VERSION:-none}" "${TORCH_BUILD:-}" "$started" "$load0" "$load1" <<'PY'
import statistics, sys
from bench_rows import med, parse
out, models, batches = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
rounds, cpu, tv, tb, started, load0, load1 = sys.argv[4:11]
ls, pt, probe = parse(f"{out}/ls.txt"), parse(f"{out}/pt.txt"), parse(f"{out}/probe.txt")
caps = [float(r["cores_equiv"]) for r in probe if "cores_equiv" in r]
print(f"{started}; CPU: {cpu}; PyTorch peer: torch {tv}" + (f" ({tb})" if tb else "") +
      f", DDP gloo; {rounds} round(s); load average {load0} before, {load1} after")
if caps:
    print(f"capacity probe (cores' worth for 2 busy threads): median {statistics.median(caps):.2f}, "
          f"min {min(caps):.2f}, max {max(caps):.2f} over {len(caps)} probes")
print(f"| model | global batch | 1x1 | 1x2 | 2x1 | 2x1 all-reduce wait | DDP 2x1 (torch {tv}) | 2x1 / DDP | 2x1 / 1x1 |")
print("|---|---|---|---|---|---|---|---|---|")
f = lambda x: f"{x:,.0f}" if x else "-"
for m in models:
    for b in batches:
        a11 = med(ls, cfg="1x1", model=m, batch=b)
        a12 = med(ls, cfg="1x2", model=m, batch=b)
        a21 = med(ls, cfg="2x1", model=m, batch=b)
        w21 = med(ls, cfg="2x1", model=m, batch=b, key="comm_wait_pct")
        d = med(pt, cfg="ddp", model=m, **{"global": b})
        print(f"| {m} | {b} | {f(a11)} | {f(a12)} | {f(a21)} | {w21:.1f}% |" if w21 is not None else
              f"| {m} | {b} | {f(a11)} | {f(a12)} | {f(a21)} | - |", end="")
        print(f" {f(d)} | {a21/d:.2f}x |" if a21 and d else f" {f(d)} | - |", end="")
        print(f" {a21/a11:.2f}x |" if a21 and a11 else " - |")
PY
