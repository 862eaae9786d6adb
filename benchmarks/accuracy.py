"""Accuracy benchmark: the seed lesson's recipe against cxrlab's default, on real data.

For each task and each of several patient-level split seeds, train each recipe, pick a threshold
on validation (Youden), and score the held-out test split: AUC with a patient-level 95% bootstrap
CI, accuracy beside the majority-class rate, sensitivity and specificity, wall time.
Run: python benchmarks/accuracy.py [--tasks nih-effusion,nih-pneumonia,kermany,demo] [--seeds 0,1,2]
     [--train-seeds 1] [--recipes seed,default,long] [--out results.json]
(demo: the demo's synthetic data sets, one per seed, made here; no shared data needed)

One run's test AUC on NIH's ~100-image test splits moves by up to 0.12 with the training seed alone
(BENCHMARKS.md), so `--train-seeds 3` trains each recipe from 3 seeds per split and reports their mean.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from cxrlab.allocator import keep_freed_memory
from cxrlab.config import RECIPES as NAMED_RECIPES
from cxrlab.config import DataConfig, TrainConfig, with_overrides
from cxrlab.demo import make_demo_data
from cxrlab.evaluation import binary_metrics, bootstrap_ci
from cxrlab.inference import RunModel, run_tta
from cxrlab.inference.thresholds import choose_threshold
from cxrlab.training import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TASKS = {
    "nih-effusion": dict(source=str(SHARED / "nih-cxr14-subset"), positive="Effusion", negative=["No Finding"]),
    "nih-pneumonia": dict(source=str(SHARED / "nih-cxr14-subset"), positive="Pneumonia", negative=["No Finding"]),
    "kermany": dict(source=str(SHARED / "kermany-pneumonia"), positive="PNEUMONIA", negative=["NORMAL"]),
}
# (a) the lesson: seed-cnn, per-image standardisation, 256 px, Adam, batch 16, 10 epochs, best val
# loss, no augmentation, no class weights, a constant learning rate, plain-image scores.
SEED_RECIPE = NAMED_RECIPES["lesson"]
# (b) cxrlab's default: the TrainConfig defaults (what `cxrlab train` does with no options), scored
# as cxrlab scores its runs (8 test-time views; `--set tta=0` for the plain image).
DEFAULT_RECIPE: dict = {}
# (c) cxrlab's earlier default (`--recipe long`): 40 epochs, the plateau schedule
RECIPES = {"seed": SEED_RECIPE, "default": DEFAULT_RECIPE, "long": NAMED_RECIPES["long"]}


def training_seeds(split_seed: int, count: int) -> list[int]:
    """The first is the split seed itself (the runs of earlier sessions); the others are 1000 apart."""
    return [split_seed + 1000 * m for m in range(count)]


def task_config(task: str, seed: int, workdir: Path, cache: str) -> TrainConfig:
    """The task's data; "demo": the demo's data set number `seed` (make_demo_data at 128 px, written once into
    workdir), split as `cxrlab train` splits it. A small data set, where a short budget showed its cost."""
    if task == "demo":
        folder = workdir / f"demo-{seed}"
        data = folder / "data" if folder.is_dir() else make_demo_data(folder, seed=seed, size=128)
        return TrainConfig(source=str(data), positive="effusion", data=DataConfig(cache_dir=cache))
    return TrainConfig(**TASKS[task], data=DataConfig(cache_dir=cache, split_seed=seed))


def run_one(task: str, recipe: str, seed: int, train_seed: int, workdir: Path, cache: str, extra: dict) -> dict:
    base = task_config(task, seed, workdir, cache)
    cfg = with_overrides(base, **{**RECIPES[recipe], **(extra if recipe == "default" else {})}, seed=train_seed)
    t0 = time.perf_counter()
    run = train(cfg, workdir / f"{task}-{recipe}-{seed}-{train_seed}", overwrite=True)
    model = RunModel(run.dir.path)
    data = model.own_data()
    val, test = model.score_data(data, "val"), model.score_data(data, "test")
    wall = time.perf_counter() - t0
    thr = choose_threshold("youden", val["y"].to_numpy(), val["score"].to_numpy())
    m = binary_metrics(test["y"], test["score"], thr)
    auc, lo, hi = bootstrap_ci(test["y"].to_numpy(), test["score"].to_numpy(), test["patient"].to_numpy())
    return {"task": task, "recipe": recipe, "seed": seed, "train_seed": train_seed, "auc": auc, "auc_ci": [lo, hi], **{
        k: m[k] for k in ("accuracy", "majority_rate", "sensitivity", "specificity", "threshold", "n", "positives")},
        "tta": run_tta(run.config), "epochs_run": run.info["epochs_run"], "best_epoch": run.best_epoch, "wall_s": wall}


def main() -> int:
    keep_freed_memory()  # as cxrlab's own processes do (cli.main)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tasks", default=",".join(TASKS), help="of " + ", ".join([*TASKS, "demo"]))
    ap.add_argument("--recipes", default="seed,default")
    ap.add_argument("--seeds", default="0,1,2", help="patient-level split seeds")
    ap.add_argument("--train-seeds", type=int, default=1, help="training runs per split (seeds 1000 apart)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="change the default recipe for this run, e.g. --set model=seed-cnn-bn (YAML values)")
    args = ap.parse_args()
    extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    if not SHARED.is_dir() and set(args.tasks.split(",")) - {"demo"}:
        print(f"no data at {SHARED}", file=sys.stderr)
        return 1
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = [(task, recipe, seed, train_seed) for task in args.tasks.split(",")
                for recipe in args.recipes.split(",") for seed in map(int, args.seeds.split(","))
                for train_seed in training_seeds(seed, args.train_seeds)]
        for task, recipe, seed, train_seed in runs:
            r = run_one(task, recipe, seed, train_seed, Path(tmp), str(Path(tmp) / "cache"), extra)
            results.append(r)
            print(f"{task:14} {recipe:8} split {seed} training seed {train_seed}: AUC {r['auc']:.3f} "
                  f"[{r['auc_ci'][0]:.3f}, {r['auc_ci'][1]:.3f}]  acc {r['accuracy']:.3f} "
                  f"(majority {r['majority_rate']:.3f})  sens {r['sensitivity']:.2f} spec {r['specificity']:.2f}  "
                  f"epochs {r['epochs_run']}  views {r['tta']}  {r['wall_s']:.0f}s", flush=True)
            if args.out:
                args.out.write_text(json.dumps(results, indent=1))
    print("\n| task | recipe | mean test AUC | spread (min-max) | mean acc (majority) | mean sens / spec | mean wall s |")
    print("|---|---|---|---|---|---|---|")
    for task in args.tasks.split(","):
        for recipe in args.recipes.split(","):
            rs = [r for r in results if r["task"] == task and r["recipe"] == recipe]
            aucs = [r["auc"] for r in rs]
            print(f"| {task} | {recipe} | {statistics.mean(aucs):.3f} | {min(aucs):.3f}-{max(aucs):.3f} | "
                  f"{statistics.mean(r['accuracy'] for r in rs):.3f} ({statistics.mean(r['majority_rate'] for r in rs):.3f}) | "
                  f"{statistics.mean(r['sensitivity'] for r in rs):.2f} / {statistics.mean(r['specificity'] for r in rs):.2f} | "
                  f"{statistics.mean(r['wall_s'] for r in rs):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
