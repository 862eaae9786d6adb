"""Search benchmark (issue 20): `cxrlab tune` on real data, against the default recipe on the same split.

1. A TPE search with median pruning over the default space (24 trials): wall time, trials pruned, the best
   trial's validation AUC and its test AUC with the patient-bootstrap CI (scored once), and the optimism.
2. The default recipe trained on the same split and seed, scored the same way.
3. The same 8 trials (the search's first 8 parameter sets, enqueued, no pruning) with 1 worker and with 2.

Run: python benchmarks/tune.py [--task nih-pneumonia] [--trials 24] [--parallel 8] [--split-seed 0]
     [--out DIR] [--skip-parallel]
Running it again with the same --out continues the search instead of starting over.
Prints one JSON object (also DIR/results.json) with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna  # noqa: E402

from accuracy import TASKS  # noqa: E402
from cxrlab.allocator import keep_freed_memory  # noqa: E402
from cxrlab.config import DataConfig, TrainConfig  # noqa: E402
from cxrlab.evaluation.evaluate import evaluate_run  # noqa: E402
from cxrlab.training import train  # noqa: E402
from cxrlab.tuning import tune  # noqa: E402
from cxrlab.tuning.storage import open_storage  # noqa: E402
from cxrlab.tuning.study import quiet_optuna  # noqa: E402


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def base_config(task: str, split_seed: int) -> TrainConfig:
    spec = dict(TASKS[task])
    return TrainConfig(source=spec["source"], positive=spec["positive"], negative=spec["negative"],
                       data=DataConfig(split_seed=split_seed))


def printer(row: dict) -> None:
    value = "" if row["value"] is None else f"{row['value']:.4f}"
    print(f"  trial {row['number']:>2} {row['state']:<8} {value:<7} {row.get('epochs_run')} ep "
          f"{row['seconds'] or 0:.0f}s {row['params']}", flush=True)


def search(task: str, trials: int, split_seed: int, out: Path) -> dict:
    t0 = time.perf_counter()
    result = tune(TASKS[task]["source"], config=base_config(task, split_seed), space="default", trials=trials,
                  out=out, sampler="tpe", pruner="median", on_trial=printer)
    wall = time.perf_counter() - t0
    s = result.summary
    return {"wall_s": wall, "complete": s["complete"], "pruned": s["pruned"], "failed": s["failed"],
            "best": s["best"], "test": s["test"], "optimism": s.get("optimism"),
            "trial_seconds": result.trials["seconds"].tolist(), "states": result.trials["state"].tolist()}


def default_on_split(task: str, split_seed: int, split: Path, out: Path) -> dict:
    cfg = base_config(task, split_seed)
    cfg = TrainConfig(**{**cfg.__dict__, "split_file": str(split)})
    t0 = time.perf_counter()
    run = train(cfg, out, overwrite=True)
    metrics = evaluate_run(out)
    return {"wall_s": time.perf_counter() - t0, "val_auc": run.info["best_score"], "test_auc": metrics["auc"],
            "test_ci95": metrics["ci95"]["auc"], "epochs_run": run.info["epochs_run"]}


def parallel(task: str, split_seed: int, params: list[dict], split: Path, out: Path, workers: int) -> dict:
    """The same trials (enqueued in order) with `workers` processes; no pruning, so the work is the same.
    A folder left by an interrupted attempt is started afresh (its timing would not be one run's)."""
    shutil.rmtree(out, ignore_errors=True)
    with quiet_optuna():
        study = optuna.create_study(storage=open_storage(None, out), study_name=out.name, direction="maximize")
        for p in params:
            study.enqueue_trial(p)
    cfg = base_config(task, split_seed)
    cfg = TrainConfig(**{**cfg.__dict__, "split_file": str(split)})
    t0 = time.perf_counter()
    result = tune(TASKS[task]["source"], config=cfg, space="default", trials=len(params), out=out,
                  sampler="tpe", pruner="none", workers=workers, on_trial=printer)
    return {"workers": workers, "wall_s": time.perf_counter() - t0, "complete": result.summary["complete"],
            "trial_seconds": result.trials["seconds"].tolist()}


def once(path: Path, compute):
    """A part's result, computed once: a rerun after an interruption skips the parts already done."""
    if path.exists():
        return json.loads(path.read_text())
    result = compute()
    path.write_text(json.dumps(result, indent=2))
    return result


def main() -> int:
    keep_freed_memory()  # as cxrlab's own processes do (cli.main)
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", default="nih-pneumonia", choices=sorted(TASKS))
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--parallel", type=int, default=8, help="trials of the 1-worker / 2-worker comparison")
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/cxrlab-tune-bench"))
    ap.add_argument("--skip-parallel", action="store_true")
    args = ap.parse_args()
    if not Path(TASKS[args.task]["source"]).exists():
        print(f"{TASKS[args.task]['source']} is absent: this benchmark needs ../shared/data", file=sys.stderr)
        return 1
    results = {"cpu": cpu_model(), "task": args.task, "split_seed": args.split_seed}
    out = args.out
    print(f"search: {args.trials} trials, TPE, median pruning ({results['cpu']})", flush=True)
    results["search"] = search(args.task, args.trials, args.split_seed, out / "search")
    split = out / "search" / "split.csv"
    print("default recipe on the same split", flush=True)
    results["default"] = once(out / "default.json", lambda: default_on_split(args.task, args.split_seed, split,
                                                                             out / "default"))
    if not args.skip_parallel:
        with quiet_optuna():
            first = optuna.load_study(study_name="search", storage=open_storage(None, out / "search"))
        params = [t.params for t in sorted(first.trials, key=lambda t: t.number)
                  if t.state.is_finished() and t.params][: args.parallel]
        results["parallel"] = []
        for workers in (1, 2):
            print(f"the same {len(params)} trials with {workers} worker(s)", flush=True)
            results["parallel"].append(once(out / f"parallel-{workers}.json", lambda: parallel(
                args.task, args.split_seed, params, split, out / f"parallel-{workers}", workers)))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
