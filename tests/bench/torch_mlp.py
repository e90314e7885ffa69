#!/usr/bin/env python3
"""PyTorch peer of train_step_bench --model a..e: ../shared/bench/peers/torch_mlp.py (read-only there),
copied here for three changes that the current PyTorch (the CPU wheel of torch 2.13.0) needs:

  * the line carries torch=<version> (and torch_blas / torch_cpu from torch.__config__), so every
    figure is recorded with the peer that gave it;
  * cpu_samples_per_sec / win_cpu_sps: samples per CPU-second of the process (x threads) for each
    window, as train_step_bench and torch_pairs.py report, for a machine shared with other work;
  * blas= is the BLAS torch itself uses. The shared peer asks the system's libopenblas.so.0 (ctypes)
    for its core name and sizes its pool: right for Debian's torch 1.13, which calls that OpenBLAS,
    but the PyPI wheel links MKL, so it reported an OpenBLAS core torch never runs and loaded a second
    BLAS with its own thread pool into the process. Here the system OpenBLAS is touched only when
    torch's BLAS is OpenBLAS.

--thread-policy keeps the shared peer's default (passive), which was chosen for Debian's torch 1.13
(two pools spinning against each other). The wheel has one OpenMP pool, where passive costs a wake-up
per op (2 threads: a/32 18k against 43k samples/s with spin, c/32 0.9k against 3.4k):
run_train_bench.sh passes --thread-policy spin for a torch on MKL. With 1 thread it makes no difference.

Everything else (the models, data, optimizers, thread environment, loop, warm-up and windows) is the
shared peer's: the models and helpers are imported from ../shared/bench/peers (mlp_models.py,
threadenv.py; LOCKSTEP_SHARED overrides the folder holding bench/). One line, e.g.

  model=a mode=train batch=32 threads=1 ... samples_per_sec=... cpu_samples_per_sec=... torch=2.13.0+cpu

  python tests/bench/torch_mlp.py --model a --batch-size 32 --threads 1
"""
import argparse
import math
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.environ.get("LOCKSTEP_SHARED", os.path.join(HERE, "..", "..", "..", "shared"))
sys.path.insert(0, os.path.join(SHARED, "bench", "peers"))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="a", choices=["a", "b", "c", "d", "e"])
    p.add_argument("--act", default=None, help="override activation (a/b: relu|leaky_relu)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads and BLAS threads")
    p.add_argument("--blas-threads", type=int, default=None, help="BLAS threads (default: --threads)")
    p.add_argument("--thread-policy", default="passive", choices=["passive", "passive-blas", "spin"],
                   help="thread-pool wait policy, see threadenv.py (default passive)")
    p.add_argument("--mode", default="train", choices=["train", "infer"])
    p.add_argument("--samples", type=int, default=20000, help="synthetic dataset size N")
    p.add_argument("--steps", type=int, default=None, help="total timed steps (split over --reps windows)")
    p.add_argument("--epochs", type=float, default=None, help="total timed epochs over --samples")
    p.add_argument("--reps", type=int, default=5, help="timed windows; samples_per_sec is their median")
    p.add_argument("--window-sec", type=float, default=0.4, help="window length when neither --steps nor --epochs")
    p.add_argument("--min-steps", type=int, default=5, help="minimum steps per time-based window")
    p.add_argument("--warmup", type=int, default=10, help="warm-up steps (at least --warmup-sec too)")
    p.add_argument("--warmup-sec", type=float, default=0.3)
    p.add_argument("--foreach", default="on", choices=["auto", "on", "off"],
                   help="optimizer multi-tensor (foreach) kernels (torch leaves them off on CPU by default)")
    p.add_argument("--jit", action="store_true", help="torch.jit.trace the model (default: eager)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    a = parse(argv)
    import threadenv  # no torch inside: thread counts and wait policy before torch loads
    a.blas_threads = threadenv.apply(a.threads, a.blas_threads, a.thread_policy)
    import statistics
    import torch
    import mlp_models as M

    cfg = torch.__config__.show()
    m = re.search(r"BLAS_INFO=(\w+)", cfg)
    torch_blas = m.group(1) if m else "?"
    m = re.search(r"CPU capability usage: (\w+)", cfg)
    torch_cpu = m.group(1) if m else "?"

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    if torch_blas.startswith("open"):
        M.set_blas_threads(a.blas_threads)
    torch.manual_seed(a.seed)

    net, make_opt, dims = M.build(a.model, a.act)
    x, y = M.make_data(a.samples, M.input_dim(a.model), a.seed)
    B = a.batch_size
    if x.shape[0] < B:
        sys.exit("--samples must be >= --batch-size")
    if a.jit:
        net = torch.jit.trace(net, x[:B])
    foreach = {"auto": None, "on": True, "off": False}[a.foreach]
    opt = make_opt(net.parameters(), foreach)
    if a.mode == "infer":
        net.eval()
    step = M.make_step(net, opt, a.mode)
    it = M.batches(x, y, B)
    now = M.now

    t_end = now() + a.warmup_sec
    k = 0
    while k < a.warmup or now() < t_end:
        step(*next(it))
        k += 1

    per_win = None
    if a.steps is not None:
        per_win = max(1, math.ceil(a.steps / a.reps))
    elif a.epochs is not None:
        per_win = max(1, math.ceil(a.epochs * (a.samples // B) / a.reps))

    step_s, rates, cpu_rates = [], [], []
    for _ in range(a.reps):
        w0, c0 = now(), time.process_time()
        k = 0
        while True:
            t0 = now()
            step(*next(it))
            t1 = now()
            step_s.append(t1 - t0)
            k += 1
            if per_win is not None:
                if k >= per_win:
                    break
            elif t1 - w0 >= a.window_sec and k >= a.min_steps:
                break
        rates.append(k * B / (t1 - w0))
        cpu_rates.append(k * B / max(time.process_time() - c0, 1e-9) * a.threads)

    s = M.summarize(step_s, rates)
    fwd, tr_min, _ = M.flops_per_sample(dims)
    flops = tr_min if a.mode == "train" else fwd
    if torch_blas.startswith("open"):
        core, bthreads = M.blas_info()
    else:
        core, bthreads = torch_blas, a.blas_threads
    out = {
        "model": a.model, "mode": a.mode, "batch": B, "threads": a.threads,
        "blas": core, "blas_threads": bthreads, "policy": a.thread_policy,
        "jit": int(a.jit), "foreach": a.foreach,
        "samples_per_sec": s["samples_per_sec"],
        "step_ms_median": s["step_ms_median"],
        "step_ms_p10": s["step_ms_p10"], "step_ms_p90": s["step_ms_p90"],
        "win_sps_min": s["win_min"], "win_sps_max": s["win_max"],
        "win_sps": ",".join(f"{r:.1f}" for r in rates),
        "cpu_samples_per_sec": statistics.median(cpu_rates),
        "win_cpu_sps": ",".join(f"{r:.1f}" for r in cpu_rates),
        "reps": a.reps, "timed_steps": len(step_s),
        "params": sum(p.numel() for p in net.parameters()),
        "fwd_flops_per_sample": fwd, "train_flops_per_sample": tr_min,
        "gflops": flops * s["samples_per_sec"] / 1e9,
        "torch": torch.__version__, "torch_blas": torch_blas, "torch_cpu": torch_cpu,
    }
    print(M.fmt_line(out), flush=True)


if __name__ == "__main__":
    main()
