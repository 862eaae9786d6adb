"""Load on a local `cxrlab serve`: 200 POST /api/predict requests at concurrency 8, without and with a
Grad-CAM heatmap; errors, p50/p99 latency and requests/s. The server runs in its own process (as a
user runs it), the client in this one; loopback only, bounded in count and time.
Run: python benchmarks/serve_load.py RUN_DIR IMAGE [--requests 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx


def start_server(run: str, backend: str = "auto") -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cxrlab = Path(sys.executable).with_name("cxrlab")
    proc = subprocess.Popen([str(cxrlab), "serve", run, "--port", str(port), "--backend", backend], stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start within 60 s")


def load(url: str, data: bytes, params: dict, requests: int, concurrency: int) -> dict:
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        def one(_):
            t = time.perf_counter()
            r = client.post(url, params=params, files={"file": ("x.png", data)})
            return (time.perf_counter() - t) * 1000, r.status_code == 200

        for _ in range(5):
            one(0)  # warm-up
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            results = list(pool.map(one, range(requests)))
        wall = time.perf_counter() - t0
    lat = sorted(r[0] for r in results)
    return {"errors": sum(not ok for _, ok in results), "p50": statistics.median(lat),
            "p99": lat[max(0, int(len(lat) * 0.99) - 1)], "rps": requests / wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run")
    ap.add_argument("image")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--backend", default="auto", help="the server's: torch, onnxruntime or auto")
    args = ap.parse_args()
    data = open(args.image, "rb").read()
    proc, base = start_server(args.run, args.backend)
    try:
        print(f"server pid {proc.pid} (backend {args.backend}), {os.cpu_count()} CPUs, {args.requests} requests at "
              f"concurrency {args.concurrency}")
        print("| request | requests | errors | p50 ms | p99 ms | requests/s |")
        print("|---|---|---|---|---|---|")
        for name, params in (("predict", {}), ("predict + Grad-CAM heatmap", {"heatmap": "true", "method": "gradcam"})):
            r = load(f"{base}/api/predict", data, params, args.requests, args.concurrency)
            print(f"| {name} | {args.requests} | {r['errors']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['rps']:.1f} |",
                  flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
