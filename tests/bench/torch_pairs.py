#!/usr/bin/env python3
"""PyTorch peer of train_step_bench --model pairs: the comparison network of
launch/configs/pretraining_pairs.yaml (HML2 ch. 11, exercise 10) as an nn.Module with two towers,
trained on synthetic pairs of [28, 28] "images". Prints ONE key=value line in the format of
../shared/bench/peers/torch_mlp.py, with the torch version in it:

  model=pairs mode=train batch=32 threads=1 ... samples_per_sec=... step_ms_median=... torch=2.13.0+cpu

Network: per tower Flatten + 5 x (Linear(100) + ELU) (He-normal kernels, as the run file), the two
towers' outputs concatenated, Linear(10) + ELU, Linear(1); the loss is binary cross-entropy on the
logit (BCEWithLogits: what Keras computes for a sigmoid output with binary_crossentropy, and what
lockstep fuses), mean over the batch; SGD lr 0.01, momentum 0.95, Nesterov (foreach kernels).
The loop is torch_mlp.py's: contiguous batch views of preloaded float32 tensors, zero_grad(set_to_none),
warm-up (>= --warmup steps and --warmup-sec), then --reps windows of >= --window-sec; samples_per_sec
is the median window rate. Thread counts and OMP_WAIT_POLICY=PASSIVE are set before torch is imported
(../shared/bench/peers/threadenv.py explains why).

  python tests/bench/torch_pairs.py --batch-size 32 --threads 1
"""
import argparse
import math
import os
import statistics
import sys
import time


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--samples", type=int, default=4096, help="synthetic pairs N (train_step_bench uses 4096)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--window-sec", type=float, default=0.3)
    p.add_argument("--min-steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--warmup-sec", type=float, default=0.3)
    p.add_argument("--foreach", default="on", choices=["auto", "on", "off"])
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    a = parse(argv)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[k] = str(a.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(a.seed)

    def he_dense(n_in, n_out):
        # Keras he_normal: truncated normal, stddev sqrt(2 / fan_in) / 0.8796 cut at 2 stddev.
        lin = nn.Linear(n_in, n_out)
        std = math.sqrt(2.0 / n_in) / 0.87962566103423978
        nn.init.trunc_normal_(lin.weight, 0.0, std, -2 * std, 2 * std)
        nn.init.zeros_(lin.bias)
        return lin

    def tower():
        layers = [nn.Flatten()]
        n = 28 * 28
        for _ in range(5):
            layers += [he_dense(n, 100), nn.ELU(inplace=True)]
            n = 100
        return nn.Sequential(*layers)

    class Pairs(nn.Module):
        def __init__(self):
            super().__init__()
            self.tower_a, self.tower_b = tower(), tower()
            self.hidden = nn.Sequential(he_dense(200, 10), nn.ELU(inplace=True))
            self.output = nn.Linear(10, 1)  # Keras default glorot_uniform, zero bias
            nn.init.xavier_uniform_(self.output.weight)
            nn.init.zeros_(self.output.bias)

        def forward(self, xa, xb):
            return self.output(self.hidden(torch.cat([self.tower_a(xa), self.tower_b(xb)], dim=1)))

    net = Pairs()
    foreach = {"auto": None, "on": True, "off": False}[a.foreach]
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.95, nesterov=True, foreach=foreach)

    rng = np.random.default_rng(a.seed)
    N, B = a.samples, a.batch_size
    if N < B:
        sys.exit("--samples must be >= --batch-size")
    xa = torch.from_numpy(rng.integers(0, 256, size=(N, 28, 28), dtype=np.uint8)).float().div_(255.0).contiguous()
    xb = torch.from_numpy(rng.integers(0, 256, size=(N, 28, 28), dtype=np.uint8)).float().div_(255.0).contiguous()
    y = torch.from_numpy(rng.integers(0, 2, size=(N, 1)).astype(np.float32))

    def batches():
        n = N - N % B
        i = 0
        while True:
            if i + B > n:
                i = 0
            yield xa[i:i + B], xb[i:i + B], y[i:i + B]
            i += B

    def step(ba, bb, by):
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(net(ba, bb), by)
        loss.backward()
        opt.step()

    it = batches()
    now = time.perf_counter
    t_end = now() + a.warmup_sec
    k = 0
    while k < a.warmup or now() < t_end:
        step(*next(it))
        k += 1
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
            if t1 - w0 >= a.window_sec and k >= a.min_steps:
                break
        rates.append(k * B / (t1 - w0))
        # samples per CPU-second of the process (x threads): the rate on a quiet core when time-sliced
        cpu_rates.append(k * B / (time.process_time() - c0) * a.threads)

    def pct(vals, q):
        s = sorted(vals)
        x = (len(s) - 1) * q
        lo, hi = int(math.floor(x)), int(math.ceil(x))
        return s[lo] + (s[hi] - s[lo]) * (x - lo)

    cfg = torch.__config__.show()
    blas = "mkl" if "BLAS_INFO=mkl" in cfg else "openblas" if "BLAS_INFO=open" in cfg else "?"
    out = {
        "impl": "pytorch", "model": "pairs", "mode": "train", "batch": B, "threads": a.threads,
        "blas": blas, "policy": os.environ.get("OMP_WAIT_POLICY", ""), "foreach": a.foreach,
        "samples_per_sec": statistics.median(rates),
        "step_ms_median": statistics.median(step_s) * 1e3,
        "step_ms_p10": pct(step_s, 0.10) * 1e3, "step_ms_p90": pct(step_s, 0.90) * 1e3,
        "win_sps_min": min(rates), "win_sps_max": max(rates),
        "win_sps": ",".join(f"{r:.1f}" for r in rates),
        "cpu_samples_per_sec": statistics.median(cpu_rates),
        "win_cpu_sps": ",".join(f"{r:.1f}" for r in cpu_rates),
        "reps": a.reps, "timed_steps": len(step_s),
        "params": sum(p.numel() for p in net.parameters()),
        "torch": torch.__version__,
    }
    print(" ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in out.items()), flush=True)


if __name__ == "__main__":
    main()
