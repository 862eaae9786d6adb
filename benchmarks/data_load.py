"""Cold and warm load of the NIH subset (1,300 PNGs, 512 -> 256) through cxrlab's image cache.

Cold: an empty cache directory (every image decoded and resized, in parallel).
Warm: the same call again (cache hit: identities checked, arrays memory-mapped).
Run: python benchmarks/data_load.py [--repeats 3] [--data ../shared/data/nih-cxr14-subset]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cxrlab.config import DataConfig
from cxrlab.data import load_data

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih-cxr14-subset"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=DEFAULT)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    if not args.data.exists():
        print(f"no data at {args.data}; nothing to measure", file=sys.stderr)
        return 1
    cold, warm, n = [], [], 0
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            cfg = DataConfig(image_size=args.size, cache_dir=cache)
            t = time.perf_counter()
            data = load_data(args.data, config=cfg)
            cold.append(time.perf_counter() - t)
            n = len(data.frame)
            t = time.perf_counter()
            again = load_data(args.data, config=cfg)
            np.asarray(again.images).sum()  # touch every pixel once, as training would
            warm.append(time.perf_counter() - t)
            assert again.cache_status == "hit"
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.machine()) if os.path.exists("/proc/cpuinfo") else platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"| load ({n} images, -> {args.size}px) | median s | images/s |")
    print("|---|---|---|")
    for name, times in (("cold (empty cache)", cold), ("warm (cache hit)", warm)):
        med = statistics.median(times)
        print(f"| {name} | {med:.3f} | {n / med:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
