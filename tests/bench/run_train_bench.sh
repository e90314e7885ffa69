#!/usr/bin/env bash
# Training-step benchmark: lockstep vs the PyTorch peer measured in the same run, the GEMM roofline of
# the step (../shared/bench/limits/sgemm_bench.c: the step's time if everything but its matrix products
# were free, with OpenBLAS's products) and the FMA-peak bound (../shared/bench/limits/peak_flops.c: the
# step's GEMM FLOPs at the FMA peak measured now, best of AVX2 and AVX-512: on Zen 4 both give 32 FP32
# FLOP/cycle/core, on Zen 5 AVX-512 gives twice AVX2). Rounds are interleaved (lockstep, PyTorch,
# lockstep, ...) and medians reported, because this machine's second vCPU is shared (see
# ../shared/bench/BASELINE.md §3); the capacity probe runs before every round.
#
# The peer is tests/bench/torch_mlp.py (../shared/bench/peers/torch_mlp.py's loop and models, recording
# torch=<version> and CPU-second rates; its docstring says why it is copied) run by the torch of
# peer_python.sh: by default the CPU wheel of torch 2.13.0 in BUILD_DIR/venv-torch (created on first
# use), PYTHON=... overrides. The table names the version. Samples/s are wall clock; the CPU-s ratio
# compares samples per CPU-second of each process (1 thread: what a quiet core would give; on a machine
# loaded by other work it is the steadier figure, see ../shared/bench/BASELINE.md §3).
# The peer's thread-pool policy (threadenv.py) is `passive` for a torch on the system OpenBLAS (Debian's
# 1.13: an OpenMP pool and OpenBLAS's own, which spin against each other) and the stock `spin` for a
# torch on MKL (the PyPI wheel: MKL threads in torch's one OpenMP pool; `passive` there puts a wake-up
# in every op: 2 threads ran 0.24-0.75x as fast); PEER_THREAD_POLICY=passive|passive-blas|spin overrides.
#
#   bash tests/bench/run_train_bench.sh [BUILD_DIR] [MODELS] [BATCHES] [THREADS] [ROUNDS]
#   bash tests/bench/run_train_bench.sh build "a b c d e" "32 256" "1 2" 3
# KEEP=DIR keeps the raw key=value rows there (ls.txt, pt.txt, roof_*.txt, peak.txt, probe.txt).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
models=${2:-a}
batches=${3:-32 256}
threads_list=${4:-1 2}
rounds=${5:-3}
shared=${LOCKSTEP_SHARED:-$root/../shared}
bench=$build/tests/bench/train_step_bench
peer=$root/tests/bench/torch_mlp.py
[ -x "$bench" ] || { echo "build $bench first (cmake --build $build --target train_step_bench)"; exit 2; }
. "$root/tests/bench/peer_python.sh"
[ -f "$shared/bench/peers/mlp_models.py" ] || LOCKSTEP_NO_PEER=1
peer_python "$build"
case "${TORCH_BUILD:-}" in open*) policy=passive ;; *) policy=spin ;; esac
policy=${PEER_THREAD_POLICY:-$policy}
if [ -n "${KEEP:-}" ]; then out=$KEEP; mkdir -p "$out"; rm -f "$out"/{ls,pt,peak,probe}.txt "$out"/roof_*.txt
else out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi
started=$(date -u '+%Y-%m-%d %H:%M UTC'); load0=$(cut -d' ' -f1-3 /proc/loadavg)

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
# The FMA peak for each thread count and the capacity probe, before every round (the peak is the best
# of the rounds: other work on the machine only ever lowers it).
probe=""
if [ -f "$shared/bench/limits/peak_flops.c" ]; then
  gcc -O2 -pthread -o "$out/peak_flops" "$shared/bench/limits/peak_flops.c" && probe="$out/peak_flops"
fi

for r in $(seq "$rounds"); do
  if [ -n "$probe" ]; then
    "$probe" --capacity 100 >> "$out/probe.txt" 2>/dev/null || true
    "$probe" --threads "$(echo $threads_list | tr ' ' ,)" --ms 150 --reps 5 >> "$out/peak.txt" 2>/dev/null || true
  fi
  for m in $models; do for b in $batches; do for t in $threads_list; do
    "$bench" --model "$m" --batch-size "$b" --threads "$t" | sed "s/^/round=$r /" >> "$out/ls.txt"
    if [ -n "$TORCH_VERSION" ]; then
      LOCKSTEP_SHARED=$shared "$PYTHON" "$peer" --model "$m" --batch-size "$b" --threads "$t" --reps 5 \
          --window-sec 0.3 --thread-policy "$policy" 2>/dev/null | sed "s/^/round=$r /" >> "$out/pt.txt" || true
    fi
  done; done; done
done
load1=$(cut -d' ' -f1-3 /proc/loadavg)

PYTHONPATH="$root/tests/bench" /usr/bin/python3 - "$out" "$models" "$batches" "$threads_list" "$rounds" \
    "$(bench_cpu_line)" "${TORCH_VERSION:-none}" "${TORCH_BUILD:-}" "$started" "$load0" "$load1" "$policy" <<'PY'
import os, re, statistics, sys
from bench_rows import med, parse
parse_line = lambda l: re.findall(r"(\w+)=([^\s]+)", l)
out, models, batches, threads = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split()
rounds, cpu, tv, tb, started, load0, load1, policy = sys.argv[5:13]
ls, pt, probe = (parse(f"{out}/{n}.txt") for n in ("ls", "pt", "probe"))
for r in ls + pt:
    r.setdefault("batch", r.get("batch_size"))  # a peer's batch_size stands for batch
# GEMM FLOPs of a training step per sample (../shared/bench/BASELINE.md §4: forward, weight gradients,
# input gradients except the first layer's); b and e have a's and d's products.
FLOPS = {"a": 1126800, "b": 1126800, "c": 7006800, "d": 2374800, "e": 2374800}
def roof(m, b, t):
    for kv in parse(f"{out}/roof_{m}.txt"):
        if kv.get("batch") == b and kv.get("threads") == t:
            for k in ("bound_samples_per_sec", "samples_per_sec_bound", "bound"):
                if k in kv: return float(kv[k])
            if "roofline_ms" in kv: return 1e3 * int(b) / float(kv["roofline_ms"])
    return None
# peak.txt: "fma_avx2_ymm threads=1 gflops=115.7 ...", "clock_add_chain threads=1 ghz_per_thread=3.62"
peak = [dict(parse_line(l), kind=l.split()[0]) for l in open(f"{out}/peak.txt")] if os.path.exists(f"{out}/peak.txt") else []
def fma(t):  # best of the AVX2 and AVX-512 FMA loops at t threads over the rounds, GFLOP/s
    v = [float(r["gflops"]) for r in peak if r.get("threads") == t and "gflops" in r]
    return max(v) if v else None
caps = [float(r["cores_equiv"]) for r in probe if "cores_equiv" in r]
print(f"{started}; CPU: {cpu}; PyTorch peer: torch {tv}" + (f" ({tb}, thread policy {policy})" if tb else "") +
      f"; {rounds} round(s); load average {load0} before, {load1} after")
if caps:
    print(f"capacity probe (cores' worth for 2 busy threads): median {statistics.median(caps):.2f}, "
          f"min {min(caps):.2f}, max {max(caps):.2f} over {len(caps)} probes")
for t in threads:
    best = {}
    for r in peak:
        if r.get("threads") == t:
            v = float(r.get("gflops", r.get("ghz_per_thread", 0)))
            best[r["kind"]] = max(best.get(r["kind"], 0), v)
    if best:
        print(f"FMA peak, {t} thread(s), best of {rounds} run(s): " +
              ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in best.items() if k.startswith("fma")) +
              (f"; clock {best['clock_add_chain']:.2f} GHz per thread" if "clock_add_chain" in best else ""))
print()
print(f"| model | batch | threads | lockstep samples/s | PyTorch {tv} samples/s | lockstep/PyTorch | "
      f"lockstep/PyTorch (CPU-s) | GEMM roofline samples/s | lockstep/roofline | FMA-peak bound samples/s | "
      f"lockstep/FMA peak |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
f = lambda x: f"{x:,.0f}" if x else "-"
for m in models:
    for b in batches:
        for t in threads:
            a, p, r = (med(ls, model=m, batch=b, threads=t), med(pt, model=m, batch=b, threads=t),
                       roof(m, b, t))
            k = fma(t) * 1e9 / FLOPS[m] if fma(t) and m in FLOPS else None
            ac, pc = (med(rows, model=m, batch=b, threads=t, key="cpu_samples_per_sec") for rows in (ls, pt))
            print(f"| {m} | {b} | {t} | {f(a)} | {f(p)} | " + (f"{a/p:.2f}x" if a and p else "-") +
                  " | " + (f"{ac/pc:.2f}x" if ac and pc else "-") + f" | {f(r)} | " + (f"{a/r:.0%}" if a and r else "-") +
                  f" | {f(k)} | " + (f"{a/k:.0%}" if a and k else "-") + " |")
PY
