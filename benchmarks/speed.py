"""Training and inference speed of seed-cnn (256 x 256 x 1) in cxrlab, lever by lever.

Rows: steady-state training throughput (batch 16, Adam, BCE), inference throughput (batch 64) and
single-image latency (p50, p99), for fp32 NCHW (a plain port), channels_last, bf16 autocast, and
both. cxrlab uses channels_last always and bf16 where the CPU has native bf16.
The Keras reference side of issue 6 (benchmarks/reference/seed_keras.py) is not written yet.
Run: python benchmarks/speed.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time

import torch

from cxrlab.models import ModelSpec, create_model
from cxrlab.training.device import cpu_has_native_bf16

LEVERS = {"fp32 NCHW (plain port)": (False, False), "channels_last": (True, False),
          "bf16 autocast": (False, True), "channels_last + bf16 (cxrlab)": (True, True)}


def _ctx(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def train_throughput(channels_last: bool, bf16: bool, steps: int = 20, batch: int = 16) -> float:
    torch.manual_seed(0)
    model = create_model(ModelSpec("seed-cnn"))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(batch, 1, 256, 256).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,)).float()

    def step():
        opt.zero_grad(set_to_none=True)
        with _ctx(bf16):
            out = model(x).float().reshape(-1)
        torch.nn.functional.binary_cross_entropy_with_logits(out, y).backward()
        opt.step()

    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t)


@torch.no_grad()
def inference(channels_last: bool, bf16: bool, batches: int = 10, batch: int = 64, singles: int = 100):
    model = create_model(ModelSpec("seed-cnn")).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(batch, 1, 256, 256).contiguous(memory_format=fmt)
    one = torch.randn(1, 1, 256, 256).contiguous(memory_format=fmt)
    with _ctx(bf16):
        for _ in range(2):
            model(x)
        t = time.perf_counter()
        for _ in range(batches):
            model(x)
        throughput = batch * batches / (time.perf_counter() - t)
        lat = []
        for _ in range(singles):
            t = time.perf_counter()
            model(one)
            lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return throughput, lat[len(lat) // 2], lat[int(len(lat) * 0.99) - 1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.machine()) if os.path.exists("/proc/cpuinfo") else platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"native bf16: {cpu_has_native_bf16()}")
    print(f"medians of {args.repeats} repetitions\n")
    print("| lever | train img/s (batch 16) | inference img/s (batch 64) | latency p50 ms | latency p99 ms |")
    print("|---|---|---|---|---|")
    for name, (cl, bf) in LEVERS.items():
        tr = statistics.median(train_throughput(cl, bf) for _ in range(args.repeats))
        runs = [inference(cl, bf) for _ in range(args.repeats)]
        inf, p50, p99 = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"| {name} | {tr:.0f} | {inf:.0f} | {p50:.1f} | {p99:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
