#!/usr/bin/env python3
"""PyTorch peer of train_step_bench --model cnn / --model resnet20: the two convolutional networks of
launch/configs/fashion_mnist_cnn.yaml and launch/configs/cifar10_resnet20.yaml as nn.Modules, trained on
synthetic images (uniform in [0, 1), as train_step_bench's). Prints one key=value line per memory format
timed, in the format of torch_mlp.py / torch_pairs.py, with the torch version in it:

  impl=pytorch model=cnn batch=32 threads=1 memory_format=channels_last samples_per_sec=... torch=2.13.0+cpu

Networks (same shapes, parameters and FLOPs as the run files):
  cnn       HML2 ch. 14: Conv2d 64@7x7 'same' + ReLU, MaxPool 2, 2 x Conv2d 128@3x3, MaxPool 2, 2 x Conv2d
            256@3x3, MaxPool 2, Flatten, Linear 128 + ReLU, Dropout 0.5, Linear 64 + ReLU, Dropout 0.5,
            Linear 10 (1,413,834 parameters). Optimizer: NAdam with Keras's defaults (lr 1e-3, betas 0.9 /
            0.999, eps 1e-7, momentum_decay 4e-3: Keras's momentum schedule mu_t = b1(1 - 0.5·0.96^(0.004 t))),
            the run file's optimizer.
  resnet20  Keras's resnet_v1 (depth 20): conv 16@3x3 + BN + ReLU, three stacks of 3 blocks (16, 32, 64
            filters; conv-BN-ReLU-conv-BN, + shortcut, ReLU; the first block of stacks 2 and 3 has stride 2 and
            a 1x1 stride-2 projection shortcut without BN), AvgPool 8, Linear 10 (273,066 trainable
            parameters, plus BN's 1,376 running statistics). Convolutions with bias (Keras's default), BN eps
            1e-3, momentum 0.01 (Keras 0.99). Optimizer: SGD lr 0.1, momentum 0.9 (the run file's, at a
            constant rate), with weight decay 2e-4 on the convolution kernels only (= Keras's l2(1e-4) penalty
            1e-4·Σw², whose gradient is 2e-4·w).
  Loss: cross-entropy on the logits (what Keras's softmax + sparse_categorical_crossentropy computes, and
  what lockstep fuses), mean over the batch.

'same' padding: stride-1 convolutions pad symmetrically in TF and here. A 3x3 stride-2 convolution on an even
input (ResNet-20's 32->16 and 16->8) is padded by TF with 0 rows/columns before and 1 after; --pad tf does
that with an explicit F.pad (a copy of the input per call), --pad symmetric (the default) pads 1 on each
side inside the convolution: the same output shape and FLOPs, windows shifted by one pixel, and PyTorch's
fastest form (so the ratio is not flattered by the extra copy).

--memory-format both (the default) builds the network twice (same initial weights), once contiguous (NCHW)
and once channels-last (NHWC: input batches and weights in torch.channels_last, which lets oneDNN skip its
reorders), warms both up and interleaves their timed windows in one process; each prints its line. The
caller reports the faster (run_cnn_bench.sh does).
The loop is torch_mlp.py's: contiguous batch views of preloaded float32 tensors, zero_grad(set_to_none),
warm-up (>= --warmup steps and --warmup-sec), then --reps windows of >= --window-sec and >= --min-steps;
samples_per_sec is the median window rate, cpu_samples_per_sec the median of samples per CPU-second.

  python tests/bench/torch_cnn.py --model resnet20 --batch-size 128 --threads 1
"""
import argparse
import math
import os
import statistics
import sys
import time


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cnn", choices=["cnn", "resnet20"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--memory-format", default="both", choices=["both", "contiguous", "channels_last"])
    p.add_argument("--channels-last", action="store_true", help="same as --memory-format channels_last")
    p.add_argument("--pad", default="symmetric", choices=["symmetric", "tf"],
                   help="stride-2 3x3 'same' padding: symmetric (1, 1) or TF's (0 before, 1 after)")
    p.add_argument("--samples", type=int, default=1024, help="synthetic images N")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--window-sec", type=float, default=1.0)
    p.add_argument("--min-steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--warmup-sec", type=float, default=0.3)
    p.add_argument("--foreach", default="on", choices=["auto", "on", "off"])
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    a = parse(argv)
    if a.channels_last:
        a.memory_format = "channels_last"
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[k] = str(a.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as torch_pairs.py; no effect on 1 thread
    import copy
    import re
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(a.seed)

    class Conv(nn.Module):
        """Conv2d with TF's 'same' padding."""

        def __init__(self, cin, cout, k, stride=1):
            super().__init__()
            self.tf_pad = None
            pad = (k - 1) // 2
            if stride == 2 and k == 3 and a.pad == "tf":
                self.tf_pad, pad = (0, 1, 0, 1), 0
            elif stride == 2 and k == 1:
                pad = 0
            self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad)
            nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")
            nn.init.zeros_(self.conv.bias)

        def forward(self, x):
            return self.conv(F.pad(x, self.tf_pad) if self.tf_pad else x)

    def cnn():
        return nn.Sequential(
            Conv(1, 64, 7), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            Conv(64, 128, 3), nn.ReLU(inplace=True), Conv(128, 128, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            Conv(128, 256, 3), nn.ReLU(inplace=True), Conv(256, 256, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(3 * 3 * 256, 128), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(128, 64), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(64, 10))

    def bn(c):
        return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1, self.b1 = Conv(cin, cout, 3, stride), bn(cout)
            self.c2, self.b2 = Conv(cout, cout, 3), bn(cout)
            self.short = Conv(cin, cout, 1, stride) if stride != 1 or cin != cout else None

        def forward(self, x):
            y = self.b2(self.c2(F.relu(self.b1(self.c1(x)), inplace=True)))
            return F.relu(y + (self.short(x) if self.short is not None else x), inplace=True)

    class ResNet20(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.bn = Conv(3, 16, 3), bn(16)
            blocks, cin = [], 16
            for s, c in enumerate((16, 32, 64)):
                for b in range(3):
                    blocks.append(Block(cin, c, 2 if s > 0 and b == 0 else 1))
                    cin = c
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            x = self.blocks(F.relu(self.bn(self.stem(x)), inplace=True))
            return self.head(torch.flatten(F.avg_pool2d(x, 8), 1))

    if a.model == "cnn":
        base, shape = cnn(), (1, 28, 28)
    else:
        base, shape = ResNet20(), (3, 32, 32)

    def make_opt(net):
        foreach = {"auto": None, "on": True, "off": False}[a.foreach]
        if a.model == "cnn":
            return torch.optim.NAdam(net.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7, momentum_decay=4e-3,
                                     foreach=foreach)
        kernels = [m.conv.weight for m in net.modules() if isinstance(m, Conv)]
        ids = {id(p) for p in kernels}
        rest = [p for p in net.parameters() if id(p) not in ids]
        return torch.optim.SGD([{"params": kernels, "weight_decay": 2e-4}, {"params": rest, "weight_decay": 0.0}],
                               lr=0.1, momentum=0.9, foreach=foreach)

    N, B = a.samples, a.batch_size
    if N < B:
        sys.exit("--samples must be >= --batch-size")
    g = torch.Generator().manual_seed(a.seed)
    x_all = torch.rand((N,) + shape, generator=g)
    y_all = torch.randint(0, 10, (N,), generator=g)

    formats = ["contiguous", "channels_last"] if a.memory_format == "both" else [a.memory_format]
    runs = []
    for fmt in formats:
        net = copy.deepcopy(base)
        x = x_all
        if fmt == "channels_last":
            net = net.to(memory_format=torch.channels_last)
            x = x_all.contiguous(memory_format=torch.channels_last)
        net.train()
        opt = make_opt(net)

        def batches(x=x):
            i = 0
            while True:
                if i + B > N:
                    i = 0
                yield x[i:i + B], y_all[i:i + B]
                i += B

        def step(bx, by, net=net, opt=opt):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(bx), by).backward()
            opt.step()

        runs.append({"fmt": fmt, "net": net, "step": step, "it": batches(), "rates": [], "cpu": [], "steps": []})

    now = time.perf_counter
    for r in runs:  # warm-up
        t_end = now() + a.warmup_sec
        k = 0
        while k < a.warmup or now() < t_end:
            r["step"](*next(r["it"]))
            k += 1
    for _ in range(a.reps):  # windows, the formats interleaved
        for r in runs:
            w0, c0 = now(), time.process_time()
            k = 0
            while True:
                t0 = now()
                r["step"](*next(r["it"]))
                t1 = now()
                r["steps"].append(t1 - t0)
                k += 1
                if t1 - w0 >= a.window_sec and k >= a.min_steps:
                    break
            r["rates"].append(k * B / (t1 - w0))
            r["cpu"].append(k * B / max(time.process_time() - c0, 1e-9) * a.threads)

    cfg = torch.__config__.show()
    m = re.search(r"BLAS_INFO=(\w+)", cfg)
    blas = m.group(1) if m else "?"
    m = re.search(r"CPU capability usage: (\w+)", cfg)
    cap = m.group(1) if m else "?"
    for r in runs:
        out = {
            "impl": "pytorch", "model": a.model, "mode": "train", "batch": B, "threads": a.threads,
            "memory_format": r["fmt"], "pad": a.pad, "foreach": a.foreach,
            "samples_per_sec": statistics.median(r["rates"]),
            "step_ms_median": statistics.median(r["steps"]) * 1e3,
            "win_sps_min": min(r["rates"]), "win_sps_max": max(r["rates"]),
            "win_sps": ",".join(f"{v:.1f}" for v in r["rates"]),
            "cpu_samples_per_sec": statistics.median(r["cpu"]),
            "win_cpu_sps": ",".join(f"{v:.1f}" for v in r["cpu"]),
            "reps": a.reps, "timed_steps": len(r["steps"]),
            "params": sum(p.numel() for p in r["net"].parameters() if p.requires_grad),
            "torch": torch.__version__, "torch_blas": blas, "torch_cpu": cap,
            "mkldnn": int(torch.backends.mkldnn.is_available()),
        }
        print(" ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in out.items()), flush=True)


if __name__ == "__main__":
    main()
