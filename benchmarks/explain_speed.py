"""Saliency speed: one 256 x 256 image with seed-cnn, per method (median of N calls, ms), and
Score-CAM's batching (masked inputs scored 16 vs 64 at a time).
Run: python benchmarks/explain_speed.py [--calls 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from cxrlab.models import ModelSpec, create_model
from cxrlab.saliency.methods import compute_maps, default_target_layer, explainable_copy


def timed(fn, calls: int) -> float:
    fn()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=20)
    args = ap.parse_args()
    model = explainable_copy(create_model(ModelSpec("seed-cnn")))
    layer = default_target_layer(model)
    x = torch.randn(1, 1, 256, 256)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| method | ms per 256x256 image (median) |")
    print("|---|---|")
    for method in ("cam", "gradcam", "gradcam++", "scorecam"):
        print(f"| {method} | {timed(lambda: compute_maps(model, x, method, layer), args.calls):.1f} |", flush=True)
    for bs in (16, 64):
        ms = timed(lambda: compute_maps(model, x, "scorecam", layer, batch_size=bs), max(3, args.calls // 4))
        print(f"| scorecam, masked inputs in batches of {bs} | {ms:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
