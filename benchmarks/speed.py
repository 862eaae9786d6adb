"""cxrlab against the seed lesson's own Keras pipeline, side by side on this machine (issue 6).

Both sides run back to back, several repetitions each; the table gives medians and how many times
better cxrlab is (rates: cxrlab / reference; times: reference / cxrlab).
The reference is benchmarks/reference/seed_keras.py in its own virtual environment with TensorFlow
(`make bench-env` creates .venv-bench). Rows:
  1. training throughput, seed-cnn 256x256x1, batch 16, random data (steady state)
  2. inference throughput at batch 64; single-image latency p50 / p99
  3. the lesson's whole workflow on NIH Effusion vs No Finding: read images from disk, preprocess,
     train 10 epochs (best val loss), predict the test split; wall seconds and test AUC (same split)
  4. frozen-backbone transfer: resnet18 at 224 px, backbone frozen, 10 epochs, cxrlab with and without
     feature caching (without is what the seeds do: the frozen network runs every epoch)
  5. data: cold and warm load of the NIH subset (the reference reads with PIL every run)
  6. memory: peak RSS of the workflow on the NIH subset, and of one training epoch on a synthetic
     50,000-image set at 256 px (HDF5 source, image cache on disk)
  7. recipes (issue 21): `cxrlab train --evaluate` (training, then the test split's evaluation with its
     CIs, CSVs and figures, in one process) as a user runs it (warm image cache),
     the default recipe against the lesson's, back to back per repetition, on NIH effusion and NIH
     pneumonia (Kermany too with --recipe-tasks); with seed-cnn-bn's training rate beside seed-cnn's in
     row 1b and the default run's test-time-view scoring rate (1 + 8 views per image) in row 8
Also `--levers`: cxrlab's own speed levers one by one (fp32 NCHW, channels_last, bf16, both).
Run: python benchmarks/speed.py [--repeats 3] [--rows train,infer,workflow,frozen,data,memory]
     [--reference-python .venv-bench/bin/python] [--smoke] [--levers]
--smoke: one tiny repetition of every row on synthetic data (what CI runs to keep this script working);
         with --levers, 2 training steps and 1 inference batch a lever.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxrlab.allocator import keep_freed_memory
from cxrlab.accel import accelerate
from cxrlab.models import ModelSpec, create_model
from cxrlab.device import autocast, cpu_has_native_bf16
from cxrlab.training.device import adam, training_memory_format

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "benchmarks" / "reference" / "seed_keras.py"
NIH = ROOT.parent / "shared" / "data" / "nih-cxr14-subset"
CPU = torch.device("cpu")
ALL_ROWS = "train,infer,workflow,frozen,data,memory,recipes"
SHARED = ROOT.parent / "shared" / "data"
RECIPE_TASKS = {
    "nih-effusion": (NIH, "Effusion", ["No Finding"]),
    "nih-pneumonia": (NIH, "Pneumonia", ["No Finding"]),
    "kermany": (SHARED / "kermany-pneumonia", "PNEUMONIA", ["NORMAL"]),
}


# -- cxrlab side: the code paths `cxrlab train` and `cxrlab predict` use ------------------------------
def train_throughput(steps: int, batch: int = 16, model_name: str = "seed-cnn") -> float:
    torch.manual_seed(0)
    model = accelerate(create_model(ModelSpec(model_name)))  # as the trainer does on CPU
    fmt = training_memory_format(model, CPU)
    model = model.to(memory_format=fmt)
    opt = adam(model.parameters(), CPU)
    x = torch.randn(batch, 1, 256, 256).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch,)).float()

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(CPU):
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
def inference(batches: int, singles: int, batch: int = 64) -> dict:
    model = accelerate(create_model(ModelSpec("seed-cnn"))).eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 1, 256, 256).contiguous(memory_format=torch.channels_last)
    one = x[:1].contiguous(memory_format=torch.channels_last)
    with autocast(CPU):
        model(x)
        for _ in range(3):
            model(one)  # oneDNN builds its kernels for each new shape once
        t = time.perf_counter()
        for _ in range(batches):
            model(x).float().numpy()
        rate = batch * batches / (time.perf_counter() - t)
        lat = []
        for _ in range(singles):
            t = time.perf_counter()
            model(one).float().numpy()
            lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return {"infer_img_s": rate, "latency_p50_ms": lat[len(lat) // 2],
            "latency_p99_ms": lat[max(0, int(len(lat) * 0.99) - 1)]}


def lesson_config(source: str, positive: str, negative: list[str] | None, cache: str, epochs: int = 10, **kw):
    """The lesson's recipe as a cxrlab config; cxrlab's speed levers (bf16 where native, channels_last,
    the image cache) stay on, as they are in `cxrlab train --model seed-cnn`."""
    from cxrlab.config import TrainConfig

    data = kw.pop("data", {})
    return TrainConfig.recipe("lesson", source=source, positive=positive, negative=negative, epochs=epochs,
                              precision="auto", cache_dir=cache, image_size=data.get("image_size", 256),
                              normalization=data.get("normalization", "standardize"), **kw)


def workflow(source: str, positive: str, negative: list[str] | None, workdir: Path, epochs: int,
             seed: int = 0) -> dict:
    """Cold cache to test predictions, as the reference does it: wall seconds and test AUC."""
    from sklearn.metrics import roc_auc_score

    from cxrlab.inference import RunModel
    from cxrlab.training import train

    t0 = time.perf_counter()
    run = train(lesson_config(source, positive, negative, str(workdir / "cache"), epochs, seed=seed),
                workdir / "run", overwrite=True)
    model = RunModel(run.dir.path)
    test = model.score_data(model.own_data(), "test")
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "train_s": run.info["train_seconds"], "test_auc": roc_auc_score(test["y"], test["score"]),
            "split": str(run.dir.split)}


def cli_recipe(source: str, positive: str, negative: list[str] | None, out: Path, recipe: str,
               extra: tuple[str, ...] = ()) -> dict:
    """`cxrlab train --recipe R --evaluate` (then the test split's evaluation with the run's views, as
    `cxrlab evaluate RUN` makes it) as a user runs it: wall seconds of the process, epochs run, test AUC."""
    cxrlab = str(Path(sys.executable).with_name("cxrlab"))
    neg = [a for n in (negative or []) for a in ("--negative", n)]
    t0 = time.perf_counter()
    subprocess.run([cxrlab, "train", source, "--positive", positive, *neg, "--recipe", recipe, "--out", str(out),
                    "--overwrite", "--evaluate", *extra], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    info = json.loads((out / "run.json").read_text())
    metrics = json.loads((out / "eval" / "test" / "metrics.json").read_text())
    return {"wall_s": wall, "epochs": info["epochs_run"], "test_auc": metrics["auc"]}


def view_scoring_rate(run: Path) -> float:
    """Images per second that RunModel scores the run's validation and test images with its views."""
    from cxrlab.inference import RunModel

    model = RunModel(run)
    data = model.own_data()
    model.score_data(data, "val")  # warm
    t0 = time.perf_counter()
    scored = model.score_data(data, "test")
    return len(scored["y"]) / (time.perf_counter() - t0)


def frozen_transfer(source: str, positive: str, negative, workdir: Path, epochs: int, cached: bool) -> float:
    from cxrlab.training import train

    cfg = lesson_config(source, positive, negative, str(workdir / "cache"), epochs, trainable_blocks=0,
                        cache_features=cached, data={"image_size": 224})
    cfg.model = "resnet18"
    t = time.perf_counter()
    run = train(cfg, workdir / f"frozen-{cached}", overwrite=True)
    assert run.info["features_cached"] == cached
    return time.perf_counter() - t


def data_load(source: str, positive: str, negative, workdir: Path) -> dict:
    from cxrlab.config import DataConfig
    from cxrlab.data import load_data

    cache = tempfile.mkdtemp(dir=workdir)
    t = time.perf_counter()
    load_data(source, positive, negative, config=DataConfig(cache_dir=cache))
    cold = time.perf_counter() - t
    t = time.perf_counter()
    again = load_data(source, positive, negative, config=DataConfig(cache_dir=cache))
    np.asarray(again.images).sum()  # touch every pixel once, as training would
    return {"cold_s": cold, "warm_s": time.perf_counter() - t, "n": len(again.frame)}


# -- memory: each measurement in a fresh process, so peaks do not carry over -------------------------
def synthetic_h5(path: Path, n: int, size: int = 256) -> Path:
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as h5:
        images = h5.create_dataset("image", (n, size, size), np.uint8, chunks=(1, size, size))
        for start in range(0, n, 1000):
            stop = min(n, start + 1000)
            images[start:stop] = rng.integers(0, 256, (stop - start, size, size), dtype=np.uint8)
        h5.create_dataset("label", data=(np.arange(n) % 4 == 0).astype(np.uint8))
    return path


def own_peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not ru_maxrss: Linux carries the parent's peak into a child across
    fork and exec, so a probe started after the other rows reported speed.py's 1.8 GB as its own (session 15)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_probe(args) -> int:
    """Child process: one training run, then its own and its decode workers' peak RSS (MB)."""
    from cxrlab.training import train

    workdir = Path(args.workdir)
    cfg = lesson_config(args.probe_source, args.probe_positive, args.probe_negative or None,
                        str(workdir / "cache"), args.probe_epochs)
    run = train(cfg, workdir / "mem-run", overwrite=True)
    print(json.dumps({"images": int(sum(c["images"] for c in run.info["counts"].values())),
                      "train_images": run.info["counts"]["train"]["images"],
                      "peak_rss_mb": own_peak_rss_mb(),
                      "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
    return 0


def memory(source: str, positive: str, negative: list[str], workdir: Path, epochs: int) -> dict:
    cmd = [sys.executable, __file__, "--probe-source", source, "--probe-positive", positive,
           "--probe-epochs", str(epochs), "--workdir", str(workdir)]
    for neg in negative:
        cmd += ["--probe-negative", neg]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- reference side ---------------------------------------------------------------------------------
def reference(python: str, *args: str) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([python, str(REFERENCE), *args], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the Keras reference failed:\n{out.stderr[-3000:]}")
    # process_s: the script as a user runs it, TensorFlow's import included (its own timings start after)
    return {**json.loads(out.stdout.strip().splitlines()[-1]), "process_s": time.perf_counter() - t0}


# -- report -----------------------------------------------------------------------------------------
def auc_difference(ours: list[float], refs: list[float]) -> tuple[float, float, float]:
    """Mean difference and its 95% CI. Seed i draws different initial weights in PyTorch and in Keras,
    so the runs are not paired: Welch's t interval for independent samples."""
    from scipy.stats import ttest_ind

    ci = ttest_ind(ours, refs, equal_var=False).confidence_interval(0.95)
    return statistics.mean(ours) - statistics.mean(refs), float(ci.low), float(ci.high)


def median(values) -> float:
    return statistics.median(values)


def fmt(value: float, unit: str) -> str:
    return f"{value:,.1f} {unit}" if unit else f"{value:.3f}"


def row(name: str, ours: float, ref: float | None, unit: str, higher_is_better: bool, target: str = "") -> None:
    """One table row; the ratio is always 'how many times better cxrlab is' (> 1: cxrlab wins)."""
    if ref is None:
        print(f"| {name} | {fmt(ours, unit)} | - | - | {target} |", flush=True)
        return
    ratio = ours / ref if higher_is_better else ref / ours
    print(f"| {name} | {fmt(ours, unit)} | {fmt(ref, unit)} | {ratio:.2f}x | {target} |", flush=True)


def machine() -> str:
    cpu = platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name")), cpu)
    return (f"{cpu}, {os.cpu_count()} cores, python {platform.python_version()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads, native bf16: {cpu_has_native_bf16()})")


def _variant(fmt, lesson_order: bool, aten_pool: bool) -> torch.nn.Module:
    """seed-cnn with one of cxrlab's model-level levers undone."""
    from torch import nn

    model = create_model(ModelSpec("seed-cnn"))
    if not aten_pool:  # ATen's pools (and so no fused first block): the model as its file writes it
        accelerate(model)
    layers = list(model.features)
    if lesson_order:  # ReLU, then max-pool
        for i in range(len(layers) - 1):
            if isinstance(layers[i], nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
                layers[i], layers[i + 1] = layers[i + 1], layers[i]
    model.features = nn.Sequential(*layers)
    return model.to(memory_format=fmt)


LEVER_SMOKE = {"steps": 2, "batches": 1}  # --levers --smoke: enough to keep the table working (CI)


def lever_rates(repeats: int, fmt=torch.channels_last, bf16: bool = True, lesson_order: bool = False,
                aten_pool: bool = False, kernels: bool = True, steps: int = 20, batches: int = 5) -> dict:
    """Training (batch 16, `steps` timed) and inference (batch 64, `batches` timed) img/s of seed-cnn,
    medians of `repeats`."""
    from cxrlab.accel import kernels as cpu_kernels

    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    train_rates, infer_rates = [], []
    lib = cpu_kernels._library()
    cpu_kernels._state["lib"] = lib if kernels else None
    for _ in range(repeats):
        torch.manual_seed(0)
        model = _variant(fmt, lesson_order, aten_pool)
        opt = adam(model.parameters(), CPU)
        x, y = torch.randn(16, 1, 256, 256).contiguous(memory_format=fmt), torch.randint(0, 2, (16,)).float()
        t = None
        for i in range(steps + 3):
            if i == 3:
                t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with ctx():
                out = model(x).float().reshape(-1)
            torch.nn.functional.binary_cross_entropy_with_logits(out, y).backward()
            opt.step()
        train_rates.append(16 * steps / (time.perf_counter() - t))
        model.eval()
        xb = torch.randn(64, 1, 256, 256).contiguous(memory_format=fmt)
        with torch.no_grad(), ctx():
            model(xb)
            t = time.perf_counter()
            for _ in range(batches):
                model(xb)
        infer_rates.append(64 * batches / (time.perf_counter() - t))
    cpu_kernels._state["lib"] = lib
    return {"train": median(train_rates), "infer": median(infer_rates)}


def levers(repeats: int, smoke: bool = False) -> None:
    """cxrlab's levers on seed-cnn, each undone alone from the full set (the reference is not involved).
    The malloc lever is process-wide, so its row runs in a child process with CXRLAB_MALLOC=system.
    smoke: 2 training steps and 1 inference batch a row (CI keeps the table working; on a CPU without native
    bf16 the bf16 rows are emulated and 20 steps took minutes). cxrlab itself uses bf16 only where it is native."""
    steps = LEVER_SMOKE if smoke else {}
    rows = {"all of cxrlab's levers (channels_last, bf16, pool before ReLU, inference pooling, malloc, "
            "CPU kernels)": {},
            "- CPU kernels (fused first block, fused max-pool; CXRLAB_KERNELS=aten)": {"kernels": False},
            "- channels_last (NCHW)": {"fmt": torch.contiguous_format},
            "- bf16 autocast (fp32)": {"bf16": False},
            "- channels_last and bf16 (the plain port, other levers on)": {"fmt": torch.contiguous_format, "bf16": False},
            "- pool before ReLU (the lesson's ReLU, then pool; the fused first block needs it too)":
                {"lesson_order": True},
            "- inference pooling and the CPU kernels (ATen's max_pool2d everywhere)": {"aten_pool": True}}
    print("| seed-cnn, 256 px | train img/s (batch 16) | inference img/s (batch 64) |\n|---|---|---|")
    for name, kw in rows.items():
        r = lever_rates(repeats, **kw, **steps)
        print(f"| {name} | {r['train']:.0f} | {r['infer']:.0f} |", flush=True)
    out = subprocess.run([sys.executable, __file__, "--lever-row", "--repeats", str(repeats),
                          *(["--smoke"] if smoke else [])], capture_output=True,
                         text=True, check=True, env={**os.environ, "CXRLAB_MALLOC": "system"}).stdout
    r = json.loads(out.strip().splitlines()[-1])
    print(f"| - malloc keeps large buffers (system malloc) | {r['train']:.0f} | {r['infer']:.0f} |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", default=ALL_ROWS)
    ap.add_argument("--reference-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--no-reference", action="store_true", help="cxrlab side only")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--levers", action="store_true")
    ap.add_argument("--lever-row", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--synthetic-images", type=int, default=50_000)
    ap.add_argument("--recipe-tasks", default="nih-effusion,nih-pneumonia",
                    help=f"row 7's tasks, from {', '.join(RECIPE_TASKS)}")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--probe-source", help=argparse.SUPPRESS)
    ap.add_argument("--probe-positive", help=argparse.SUPPRESS)
    ap.add_argument("--probe-negative", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--probe-epochs", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    keep_freed_memory()  # as cxrlab's own processes do (cli.main)
    if args.probe_source:
        return memory_probe(args)
    if args.lever_row:
        print(json.dumps(lever_rates(args.repeats, **(LEVER_SMOKE if args.smoke else {}))))
        return 0
    if args.levers:
        levers(args.repeats, args.smoke)
        return 0
    rows = args.rows.split(",")
    ref_python = None if args.no_reference else args.reference_python
    if ref_python and not Path(ref_python).exists():
        print(f"no reference environment at {ref_python}: run `make bench-env` (TensorFlow, the [bench] extra), "
              "or pass --no-reference", file=sys.stderr)
        return 1
    repeats = 1 if args.smoke else args.repeats
    steps, batches, singles, epochs = (2, 1, 5, 1) if args.smoke else (20, 10, 100, 10)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        if args.smoke or not NIH.exists():
            from cxrlab.demo import make_demo_data

            print(f"{'smoke run' if args.smoke else 'no ' + str(NIH)}: synthetic demo data stands in for NIH")
            source, positive, negative = str(make_demo_data(work / "demo", n_patients=40, size=128, difficulty="easy")), "effusion", None
        else:
            source, positive, negative = str(NIH), "Effusion", ["No Finding"]
        print(f"machine: {machine()}")
        if ref_python:
            print(f"reference: {reference(ref_python, 'versions')['versions']}")
        print(f"medians of {repeats} repetition(s)\n")
        print("| row | cxrlab | Keras reference | cxrlab advantage (>1: cxrlab better) | target |")
        print("|---|---|---|---|---|")
        if "train" in rows:
            plain_rates, bn_rates = [], []
            for _ in range(repeats):  # back to back, so that both see the same machine
                plain_rates.append(train_throughput(steps))
                bn_rates.append(train_throughput(steps, model_name="seed-cnn-bn"))
            ours = median(plain_rates)
            ref = median(reference(ref_python, "train-throughput", "--steps", str(steps))["train_img_s"]
                         for _ in range(repeats)) if ref_python else None
            row("1. training, seed-cnn batch 16", ours, ref, "img/s", True, ">= 2x")
            ratios = [b / a for a, b in zip(plain_rates, bn_rates)]
            each = ", ".join(f"{r:.2f}" for r in ratios)
            print(f"| 1b. training, seed-cnn-bn batch 16 (the default recipe's network) | {fmt(median(bn_rates), 'img/s')} "
                  f"| | {median(ratios):.2f}x seed-cnn's (per repetition: {each}) | >= 0.85x seed-cnn |", flush=True)
        if "infer" in rows:
            ours = [inference(batches, singles) for _ in range(repeats)]
            refs = [reference(ref_python, "inference", "--batches", str(batches), "--singles", str(singles))
                    for _ in range(repeats)] if ref_python else None
            for key, label, unit, up, target in (("infer_img_s", "2. inference, batch 64", "img/s", True, ">= 2x"),
                                                 ("latency_p50_ms", "2. latency p50, 1 image", "ms", False, ""),
                                                 ("latency_p99_ms", "2. latency p99, 1 image", "ms", False, "")):
                row(label, median(o[key] for o in ours), median(r[key] for r in refs) if refs else None,
                    unit, up, target)
        if "workflow" in rows:
            # each repetition trains from another seed, on both sides: one run's test AUC on 95 images
            # moves by about 0.05 with the seed alone, so AUC is compared as the mean over repetitions
            ours = [workflow(source, positive, negative, work / f"wf{i}", epochs, seed=i) for i in range(repeats)]
            refs = [reference(ref_python, "workflow", "--split", ours[0]["split"], "--epochs", str(epochs),
                              "--workdir", str(work), "--seed", str(i)) for i in range(repeats)] if ref_python else None
            (work / "split.csv").write_bytes(Path(ours[0]["split"]).read_bytes())
            row("3. workflow: disk to test predictions", median(o["wall_s"] for o in ours),
                median(r["wall_s"] for r in refs) if refs else None, "s", False, ">= 1.5x")
            row(f"3. workflow: test AUC (same split), mean of {repeats} seeds",
                statistics.mean(o["test_auc"] for o in ours),
                statistics.mean(r["test_auc"] for r in refs) if refs else None, "", True, "no worse")
            print("   per seed: cxrlab " + ", ".join(f"{o['test_auc']:.3f}" for o in ours)
                  + ("; Keras " + ", ".join(f"{r['test_auc']:.3f}" for r in refs) if refs else ""), flush=True)
            if refs and repeats > 1:
                d, lo, hi = auc_difference([o["test_auc"] for o in ours], [r["test_auc"] for r in refs])
                print(f"   cxrlab - Keras: {d:+.3f}, 95% CI {lo:+.3f} to {hi:+.3f} (Welch; the seeds differ "
                      "between frameworks, so the sides are independent samples)", flush=True)
        if "frozen" in rows:
            recompute = median(frozen_transfer(source, positive, negative, work, epochs, False) for _ in range(repeats))
            cached = median(frozen_transfer(source, positive, negative, work, epochs, True) for _ in range(repeats))
            print(f"| 4. frozen resnet18 224 px, {epochs} epochs: cached / recomputed (the seeds' way) | "
                  f"{cached:.1f} s | {recompute:.1f} s | {recompute / cached:.2f}x | >= 5x |", flush=True)
        if "data" in rows:
            ours = [data_load(source, positive, negative, work) for _ in range(repeats)]
            split = work / "split.csv"
            if ref_python and not split.exists():
                workflow(source, positive, negative, work / "wf-split", 1)  # only for its split.csv
                split = work / "wf-split" / "run" / "split.csv"
            refs = [reference(ref_python, "load", "--split", str(split)) for _ in range(repeats)] if ref_python else None
            ref_load = median(r["load_s"] for r in refs) if refs else None
            n = ours[0]["n"]
            row(f"5. cold load, {n} images", median(o["cold_s"] for o in ours), ref_load, "s", False)
            row(f"5. warm load, {n} images (the reference reads them again)", median(o["warm_s"] for o in ours),
                ref_load, "s", False)
        if "recipes" in rows:
            tasks = args.recipe_tasks.split(",") if not args.smoke else ["demo"]
            for task in tasks:
                src, pos, neg = (source, positive, negative) if task == "demo" else RECIPE_TASKS[task]
                if not Path(src).exists():
                    print(f"| 7. recipes, {task} | (no {src}) | | | |")
                    continue
                runs = {"lesson": [], "default": []}
                keras = []
                for i in range(repeats):
                    for name in runs:
                        runs[name].append(cli_recipe(str(src), pos, neg, work / f"{task}-{name}-{i}", name,
                                                     ("--epochs", "1") if args.smoke else ()))
                    if ref_python and task in ("nih-effusion", "demo"):  # the lesson's own task
                        keras.append(reference(ref_python, "workflow", "--split", str(work / f"{task}-lesson-{i}" / "split.csv"),
                                               "--epochs", "1" if args.smoke else "10", "--workdir", str(work))["process_s"])
                ratios = [d["wall_s"] / l["wall_s"] for l, d in zip(runs["lesson"], runs["default"])]
                target = "<= 2x" if task == "kermany" else "<= 1.5x"
                for name, r in runs.items():
                    epochs_run = ", ".join(str(x["epochs"]) for x in r)
                    aucs = ", ".join(f"{x['test_auc']:.3f}" for x in r)
                    print(f"| 7. {task}, {name} recipe: train --evaluate | {fmt(median(x['wall_s'] for x in r), 's')} "
                          f"| | epochs {epochs_run}; test AUC {aucs} | |", flush=True)
                each = ", ".join(f"{x:.2f}" for x in ratios)
                print(f"| 7. {task}: default / lesson wall time | | | {median(ratios):.2f}x (per repetition: {each}) "
                      f"| {target} |", flush=True)
                if keras:
                    lesson = [x["wall_s"] for x in runs["lesson"]]
                    each = ", ".join(f"{k / c:.2f}" for k, c in zip(keras, lesson))
                    print(f"| 7. {task}: the lesson as a user runs it, cxrlab CLI (train --evaluate) against the "
                          f"Keras script (whole process) | {fmt(median(lesson), 's')} | {fmt(median(keras), 's')} | "
                          f"{median(keras) / median(lesson):.2f}x (per repetition: {each}) | >= 2x |", flush=True)
                rate = view_scoring_rate(work / f"{task}-default-0")
                print(f"| 8. {task}: test-time-view scoring, default run (1 + 8 views) | {fmt(rate, 'img/s')} | | | |",
                      flush=True)
        if "memory" in rows:
            nih = memory(source, positive, negative or [], work / "mem-nih", epochs)
            n_syn = 300 if args.smoke else args.synthetic_images
            h5 = synthetic_h5(work / "synthetic.h5", n_syn)
            syn = memory(str(h5), "positive", ["negative"], work / "mem-syn", 1)
            (work / "synthetic.h5").unlink()
            print(f"| 6. peak RSS, workflow on {nih['images']} images | {nih['peak_rss_mb']:,.0f} MB "
                  f"(decode workers {nih['worker_peak_rss_mb']:,.0f}) | | | < 2,000 MB |")
            print(f"| 6. peak RSS, 1 epoch on {syn['images']:,} synthetic images ({syn['train_images']:,} trained) | "
                  f"{syn['peak_rss_mb']:,.0f} MB (decode workers {syn['worker_peak_rss_mb']:,.0f}) | | "
                  f"{syn['peak_rss_mb'] / nih['peak_rss_mb']:.2f}x the small set | about 1x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
