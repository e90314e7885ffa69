#!/usr/bin/env bash
# Convolutional-network benchmark (issue "convolutional layers", speed): samples/s of one training step
# (forward, loss, backward, optimizer update) of HML2 ch. 14's Fashion-MNIST CNN
# (launch/configs/fashion_mnist_cnn.yaml, train_step_bench --model cnn) and ResNet-20
# (launch/configs/cifar10_resnet20.yaml, --model resnet20), 1 thread, beside
#   * PyTorch: the same networks as nn.Modules (tests/bench/torch_cnn.py, same loss and optimizers: Nadam with
#     Keras's defaults for the CNN, SGD 0.1 momentum 0.9 with l2(1e-4) on the kernels for ResNet-20), timed
#     contiguous (NCHW) and channels-last in one process; the table takes the faster format of each process;
#   * the limit: the step's convolution and product FLOPs at the core's FMA peak, measured now by
#     ../shared/bench/limits/peak_flops.c (best of its AVX2 and AVX-512 loops, best over the rounds). The FLOPs
#     are counted by train_step_bench from the layers: 2 x multiply-adds (Conv2D out_h·out_w·kernel elements,
#     Dense kernel elements) x 3 (forward, input gradient, kernel gradient), x 2 for the first layer, whose
#     input gradient is never computed. Pooling, BN, activations, the loss and the update are not counted.
# and 2 ranks x 1 thread (mpirun -np 2, the trainer's step with its all-reduce) against 1 rank at global
# batch 128, both timed in the same mpirun (train_step_bench --vs-one-rank 1: between the 2-rank windows one rank,
# rank 0 and rank 1 in turns, times the model alone at the global batch while the other sleeps), so the ratio
# pairs windows seconds apart.
# Rounds are interleaved (lockstep, PyTorch, ...; the order flips every round) and medians reported: the
# machine's vCPUs are shared (../shared/bench/BASELINE.md §3). Every row records the 1-minute load average
# before its process; CPU-s figures are samples per CPU-second of the process (1 thread: the rate on a quiet
# core when time-sliced), the steadier figure on a loaded machine.
#
#   bash tests/bench/run_cnn_bench.sh BUILD_DIR [MODELS] [BATCHES] [ROUNDS]
#   bash tests/bench/run_cnn_bench.sh build-bench "cnn resnet20" "32 128" 3
# Environment: REPS (timed windows per process, default 3), WINDOW (seconds, default 1.0), DIST=0 skips the
# 2-rank runs, PEAK_GFLOPS=X takes X as the FMA peak when it is above the one measured now (peak_flops.c
# times wall clock: on a loaded machine it measures a share of the core, e.g. 37 GFLOP/s at load 5 against
# 116.4 quiet; the CPU-s column is then the one to read against a quiet peak), GEMM=1 also runs conv_gemm_bench (kernels::gemm's routing against OpenBLAS and libxsmm on the
# networks' product shapes; build it with --target conv_gemm_bench), KEEP=DIR keeps the raw key=value rows
# (REPORT_ONLY=1 with KEEP=DIR prints the tables of the rows kept there again, running nothing),
# PYTHON / LOCKSTEP_NO_PEER as in peer_python.sh, CONV_ROUTES="own auto" times lockstep's step once per
# convolution route (ops::ConvRoute: own = lockstep's im2col kernels, onednn = oneDNN's direct kernels, winograd =
# lockstep's Winograd wherever it takes the shape, direct = the per-shape rule without Winograd, auto = the per-shape rule) in one
# process, windows interleaved (train_step_bench --conv-routes), each against the same PyTorch process: a
# before/after of the oneDNN route in one run (the 2-rank runs take the default route). Unset: the
# process's route (LOCKSTEP_CONV, else auto).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
models=${2:-cnn resnet20}
batches=${3:-32 128}
rounds=${4:-3}
reps=${REPS:-3}
window=${WINDOW:-1.0}
shared=${LOCKSTEP_SHARED:-$root/../shared}
bench=$build/tests/bench/train_step_bench
gemm_bench=$build/tests/bench/conv_gemm_bench
peer=$root/tests/bench/torch_cnn.py
[ -x "$bench" ] || { echo "build $bench first (cmake --build $build --target train_step_bench)"; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
. "$root/tests/bench/peer_python.sh"
report_only=${REPORT_ONLY:-0}
if [ "$report_only" = 1 ]; then
  [ -n "${KEEP:-}" ] && [ -d "$KEEP" ] || { echo "REPORT_ONLY=1 needs KEEP=DIR, a folder of kept rows"; exit 2; }
  out=$KEEP rounds_run=0
  TORCH_VERSION=$(sed -n 's/.* torch=\([^ ]*\).*/\1/p' "$out/pt.txt" 2>/dev/null | head -1)
  TORCH_BUILD=""
else
  peer_python "$build"
  rounds_run=$rounds
fi
if [ "$report_only" = 1 ]; then :
elif [ -n "${KEEP:-}" ]; then out=$KEEP; mkdir -p "$out"; rm -f "$out"/{ls,pt,dist,peak,probe,gemm}.txt
else out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi
started=$(date -u '+%Y-%m-%d %H:%M UTC'); load0=$(cut -d' ' -f1-3 /proc/loadavg)
[ "$report_only" = 1 ] && started="rows kept in $out (REPORT_ONLY)"
probe=""
if [ -f "$shared/bench/limits/peak_flops.c" ] && [ "$report_only" = 0 ]; then
  # As ../shared/bench/BASELINE.md §9 builds it (the intrinsics carry their own target attributes).
  gcc -O2 -pthread -o "$out/peak_flops" "$shared/bench/limits/peak_flops.c" && probe="$out/peak_flops"
fi
load() { cut -d' ' -f1 /proc/loadavg; }
ls_base=(--threads 1 --reps "$reps" --window-sec "$window" --warmup-steps 2 --min-steps 2)
ls_args=("${ls_base[@]}")
if [ -n "${CONV_ROUTES:-}" ]; then ls_args+=(--conv-routes "$(echo ${CONV_ROUTES} | tr ' ' ,)"); fi
pt_args=(--threads 1 --reps "$reps" --window-sec "$window" --warmup 2 --min-steps 2)
# The 2 ranks are bound to a core each, as cluster/mpirun-local.sh launches ranks x threads that fit the cores
# (unbound, the two ranks of this 2-vCPU VM sometimes shared one core: windows of one run spread 638-975
# samples/s); with fewer than 2 cores they share one, unbound.
bind=(--bind-to core)
[ "$(nproc)" -ge 2 ] || bind=(--oversubscribe --bind-to none)

run_lockstep() {  # model batch round
  local l; l=$(load)
  "$bench" --model "$1" --batch-size "$2" "${ls_args[@]}" | sed "s/^/round=$3 load=$l /" >> "$out/ls.txt"
  if [ "${DIST:-1}" = 1 ] && [ "$2" = 128 ]; then  # 2 ranks x 1 thread at global batch 128, right after 1 rank
    l=$(load)
    mpirun --allow-run-as-root --timeout 600 "${bind[@]}" -np 2 "$bench" --model "$1" --batch-size "$2" \
        "${ls_base[@]}" --vs-one-rank 1 | sed "s/^/round=$3 load=$l /" >> "$out/dist.txt" || echo "mpirun failed ($1, $2)" >&2
  fi
}
run_peer() {
  [ -n "$TORCH_VERSION" ] || return 0
  local l; l=$(load)
  "$PYTHON" "$peer" --model "$1" --batch-size "$2" "${pt_args[@]}" 2>/dev/null \
      | sed "s/^/round=$3 load=$l /" >> "$out/pt.txt" || true
}

for r in $(seq "$rounds_run"); do
  if [ -n "$probe" ]; then
    "$probe" --capacity 100 | sed "s/^/load=$(load) /" >> "$out/probe.txt" 2>/dev/null || true
    "$probe" --threads 1 --ms 150 --reps 5 >> "$out/peak.txt" 2>/dev/null || true
  fi
  for m in $models; do for b in $batches; do
    if [ $((r % 2)) = 1 ]; then run_lockstep "$m" "$b" "$r"; run_peer "$m" "$b" "$r"
    else run_peer "$m" "$b" "$r"; run_lockstep "$m" "$b" "$r"; fi
  done; done
done
if [ "${GEMM:-0}" = 1 ] && [ -x "$gemm_bench" ] && [ "$report_only" = 0 ]; then
  "$gemm_bench" --models "$(echo $models | tr ' ' ,)" --batches "$(echo $batches | tr ' ' ,)" > "$out/gemm.txt"
fi
load1=$(cut -d' ' -f1-3 /proc/loadavg)

PYTHONPATH="$root/tests/bench" /usr/bin/python3 - "$out" "$models" "$batches" "$rounds" "$(bench_cpu_line)" \
    "${TORCH_VERSION:-none}" "${TORCH_BUILD:-}" "$started" "$load0" "$load1" "$reps" "$window" "${PEAK_GFLOPS:-0}" <<'PY'
import os, re, statistics, sys
from bench_rows import parse
out, models, batches = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
rounds, cpu, tv, tb, started, load0, load1, reps, window, peak_env = sys.argv[4:14]
ls, pt, dist, probe, gemm = (parse(f"{out}/{n}.txt") for n in ("ls", "pt", "dist", "probe", "gemm"))
peak = [dict(re.findall(r"(\w+)=([^\s]+)", l), kind=l.split()[0]) for l in open(f"{out}/peak.txt")] \
    if os.path.exists(f"{out}/peak.txt") else []
measured = max([float(r["gflops"]) for r in peak if "gflops" in r and r.get("threads") == "1"], default=None)
fma = max(measured or 0.0, float(peak_env)) or None
sel = lambda rows, m, b: [r for r in rows if r.get("model") == m and r.get("batch") == b]
routes = sorted({r.get("conv", "-") for r in ls},
                key=lambda c: {"own": 0, "onednn": 1, "direct": 2, "winograd": 3, "auto": 4}.get(c, 5)) or ["-"]
by_route = lambda rows, c: [r for r in rows if r.get("conv", "-") == c]
med = lambda v: statistics.median(v) if v else None
f = lambda x: f"{x:,.0f}" if x else "-"
loads = lambda rows: f"{min(float(r['load']) for r in rows):.1f}–{max(float(r['load']) for r in rows):.1f}" if rows else "-"

def peer_best(rows):
    """Per peer process (round), the faster memory format's row; with the format chosen."""
    best = {}
    for r in rows:
        k = r["round"]
        if k not in best or float(r["samples_per_sec"]) > float(best[k]["samples_per_sec"]):
            best[k] = r
    return list(best.values())

caps = [float(r["cores_equiv"]) for r in probe if "cores_equiv" in r]
print(f"{started}; CPU: {cpu}; PyTorch peer: torch {tv}" + (f" ({tb})" if tb else "") +
      f"; {rounds} round(s) x {reps} windows of >= {window} s; load average {load0} before, {load1} after")
if caps:
    print(f"capacity probe (cores' worth for 2 busy threads): median {statistics.median(caps):.2f}, "
          f"min {min(caps):.2f}, max {max(caps):.2f}")
if fma:
    print(f"FMA peak, 1 thread: measured now (best of AVX2 / AVX-512 over the rounds) " +
          (f"{measured:.1f}" if measured else "-") + f" GFLOP/s; the % columns use {fma:.1f}" +
          (" (PEAK_GFLOPS)" if fma != measured else ""))
print()
print("Samples/s: median over rounds of each process's median window, wall clock (per CPU-second in brackets);")
print("lockstep/PyTorch: median over rounds of the ratio of the two processes of the round (adjacent in time).")
print("PyTorch: the faster memory format of each process (cl = channels-last, cf = contiguous: how many rounds")
print("each won). FLOPs: the step's conv + dense products per sample (3x forward, 2x for the first layer).")
print()
print("conv: lockstep's convolution route (own: its own kernels; onednn; auto: the per-shape rule; -: not recorded).")
print()
print(f"| model | batch | conv | lockstep | PyTorch {tv} | format | lockstep/PyTorch | (CPU-s) | step GFLOP/sample | "
      f"lockstep GFLOP/s | % FMA peak | % FMA peak (CPU-s) | load |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for m in models:
  for b in batches:
    for route in routes:
        L, P = by_route(sel(ls, m, b), route), peer_best(sel(pt, m, b))
        lw, lc = med([float(r["samples_per_sec"]) for r in L]), med([float(r["cpu_samples_per_sec"]) for r in L])
        pw, pc = med([float(r["samples_per_sec"]) for r in P]), med([float(r["cpu_samples_per_sec"]) for r in P])
        def paired(key):
            v = [float(l[key]) / float(p[key]) for l in L for p in P if l["round"] == p["round"]]
            return med(v)
        rw, rc = paired("samples_per_sec"), paired("cpu_samples_per_sec")
        fmts = [r["memory_format"] for r in P]
        fmt = "/".join(f"{k} {fmts.count(n)}" for n, k in (("channels_last", "cl"), ("contiguous", "cf")) if n in fmts)
        fl = float(L[0]["train_flops_per_sample"]) if L else None
        g, gc = (lw * fl * 1e-9 if lw and fl else None), (lc * fl * 1e-9 if lc and fl else None)
        print(f"| {m} | {b} | {route} | {f(lw)} ({f(lc)}) | {f(pw)} ({f(pc)}) | {fmt or '-'} | " +
              (f"{rw:.2f}x" if rw else "-") + " | " + (f"{rc:.2f}x" if rc else "-") + " | " +
              (f"{fl * 1e-9:.3f}" if fl else "-") + " | " + (f"{g:.1f}" if g else "-") + " | " +
              (f"{g / fma:.0%}" if g and fma else "-") + " | " + (f"{gc / fma:.0%}" if gc and fma else "-") +
              f" | {loads(L + P)} |")
if len(routes) > 1:
    print()
    print(f"Route against route in the same lockstep process (windows interleaved): median over rounds of each")
    print(f"process's median per-window ratio to the {routes[0]} route.")
    print()
    print("| model | batch | " + " | ".join(f"{c} / {routes[0]}" for c in routes[1:]) + " |")
    print("|---|---|" + "---|" * (len(routes) - 1))
    for m in models:
        for b in batches:
            # vs_first is each window's rate over the process's first route's (CONV_ROUTES order): per round,
            # the ratio of route c's to routes[0]'s, then the median over rounds.
            rows = sel(ls, m, b)
            base = {r["round"]: float(r["vs_first"]) for r in by_route(rows, routes[0]) if "vs_first" in r}
            cells = [med([float(r["vs_first"]) / base[r["round"]] for r in by_route(rows, c)
                          if "vs_first" in r and r["round"] in base]) for c in routes[1:]]
            print(f"| {m} | {b} | " + " | ".join(f"{x:.2f}x" if x else "-" for x in cells) + " |")
if dist:
    print()
    print("2 ranks x 1 thread (mpirun -np 2) against 1 rank x 1 thread, global batch 128, samples/s. In-run: the")
    print("one rank's windows run inside the same mpirun between the 2-rank windows, rank 0 and rank 1 in turns alone;")
    print("ratio: per round the median of the paired windows' ratios, then the median over rounds. Separate: against")
    print("the 1-rank process run just before the mpirun. CPU-s: 2 x rank 0's samples per CPU-second / the in-run")
    print("1-rank figure (the busy-polling all-reduce wait counts as CPU time): a projection when cores are shared.")
    print("all-reduce wait: rank 0's share of the step blocked on the gradient buckets; sync BN: inside synchronized")
    print("BN's all-reduces (the batch statistics and their gradient sums), waits included; by rank: both, per rank.")
    print()
    print("| model | 1x1 in-run | 2x1 | 2x1 / 1x1 in-run | per round | 2x1 / 1x1 separate | 2x1 / 1x1 (CPU-s) | all-reduce wait | sync BN | blocked by rank | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m in models:
        two = sel(dist, m, "128")
        one = [r for r in sel(ls, m, "128") if r.get("conv", "-") in {t.get("conv", "-") for t in two}]
        per = [float(t["vs_one_rank"]) for t in two if "vs_one_rank" in t]
        sep = []
        for t in two:
            o = [r for r in one if r["round"] == t["round"]]
            if o:
                sep.append(float(t["samples_per_sec"]) / float(o[0]["samples_per_sec"]))
        a = med([float(r["one_rank_sps"]) for r in two if "one_rank_sps" in r])
        d = med([float(r["samples_per_sec"]) for r in two])
        w = med([float(r["comm_wait_pct"]) for r in two])
        dc = med([float(r["cpu_samples_per_sec"]) for r in two])
        bn = med([float(r["sync_bn_pct"]) for r in two if "sync_bn_pct" in r])
        by_rank = [[float(x) for x in r["blocked_pct_by_rank"].split(",")] for r in two if "blocked_pct_by_rank" in r]
        by_rank = ", ".join(f"{med(list(col)):.1f}%" for col in zip(*by_rank)) if by_rank else "-"
        print(f"| {m} | {f(a)} | {f(d)} | " + (f"{med(per):.2f}x" if per else "-") + " | " +
              ", ".join(f"{x:.2f}" for x in per) + " | " + (f"{med(sep):.2f}x" if sep else "-") + " | " +
              (f"{2 * dc / a:.2f}x" if a and dc else "-") + " | " +
              (f"{w:.1f}%" if w is not None else "-") + " | " + (f"{bn:.1f}%" if bn is not None else "-") +
              f" | {by_rank} | {loads(two)} |")
if gemm:
    print()
    print("Products of the step (conv_gemm_bench): per model and batch, ms per step by way (thread CPU time),")
    print("and per shape which is faster: kernels::gemm's route, OpenBLAS directly, libxsmm directly.")
    print()
    print("| model | batch | op | kernels::gemm ms | OpenBLAS ms | best-per-shape ms | gemm GFLOP/s | OpenBLAS GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in gemm:
        if "gemm_ms" in r:
            print(f"| {r['model']} | {r['batch']} | {r['op']} | {r['gemm_ms']} | {r['openblas_ms']} | {r['best_ms']} | "
                  f"{r['gemm_gflops']} | {r['openblas_gflops']} |")
    print()
    print("| model | batch | layer | op | m x n x k | calls | route | route µs | OpenBLAS µs | libxsmm µs | OpenBLAS/route time |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in gemm:
        if "layer" in r:
            print(f"| {r['model']} | {r['batch']} | {r['layer']} | {r['op']} | {r['m']}x{r['n']}x{r['k']} | {r['calls']} | "
                  f"{r['route']} | {float(r['gemm_us']):,.0f} | {float(r['openblas_us']):,.0f} | "
                  f"{float(r['xsmm_us']):,.0f} | {1 / float(r['openblas_vs_route']):.2f} |")
PY
