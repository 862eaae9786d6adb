"""Load on a local `cxrlab serve`: 200 POST /api/predict requests at concurrency 8, without and with a
Grad-CAM heatmap; errors, p50/p99 latency and requests/s. Bounded in count and time, loopback only.
Run: python benchmarks/serve_load.py RUN_DIR IMAGE [--requests 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import uvicorn

from cxrlab.serving.app import create_app


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run")
    ap.add_argument("image")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(args.run), host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    data = open(args.image, "rb").read()
    url = f"http://127.0.0.1:{port}/api/predict"
    print("| request | requests | errors | p50 ms | p99 ms | requests/s |")
    print("|---|---|---|---|---|---|")
    for name, params in (("predict", {}), ("predict + Grad-CAM heatmap", {"heatmap": "true", "method": "gradcam"})):
        with httpx.Client(timeout=60) as client:
            def one(_):
                t = time.perf_counter()
                r = client.post(url, params=params, files={"file": ("x.png", data)})
                return (time.perf_counter() - t) * 1000, r.status_code == 200
            for _ in range(5):
                one(0)  # warm-up
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                results = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - t0
        lat = sorted(r[0] for r in results)
        errors = sum(not ok for _, ok in results)
        print(f"| {name} | {args.requests} | {errors} | {statistics.median(lat):.1f} | "
              f"{lat[int(len(lat) * 0.99) - 1]:.1f} | {args.requests / wall:.1f} |", flush=True)
    server.should_exit = True
    return 0


if __name__ == "__main__":
    sys.exit(main())
