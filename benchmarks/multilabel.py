"""Multi-label benchmark (issue 19) on the NIH subset: one model for the 14 findings against the binary
default recipe, on the same patient split.

Per split seed (0, 1, 2 by default):
1. `cxrlab train NIH --findings all` with the default recipe: wall time, and the per-finding test AUC with
   its patient-bootstrap CI, the macro mean with its CI;
2. for Effusion and Pneumonia, the binary default recipe (`--positive F --negative "No Finding"`) trained
   on the multi-label run's split file, so both are scored on the same test patients; the multi-label
   model's finding is scored as the same binary task (`evaluate --finding F`).

Run: python benchmarks/multilabel.py [--splits 0,1,2] [--out DIR]
Prints one JSON line per run and a summary (also DIR/results.json), with the CPU model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pandas as pd  # noqa: E402

from accuracy import SHARED  # noqa: E402
from tune import cpu_model  # noqa: E402

from cxrlab.config import DataConfig, TrainConfig  # noqa: E402
from cxrlab.evaluation.evaluate import evaluate_run  # noqa: E402
from cxrlab.training import train  # noqa: E402

NIH = str(SHARED / "nih-cxr14-subset")
BINARY = ("Effusion", "Pneumonia")


def one_split(seed: int, out: Path) -> dict:
    t0 = time.perf_counter()
    multi = train(TrainConfig(source=NIH, findings="all", data=DataConfig(split_seed=seed)), out / f"multi-{seed}",
                  overwrite=True)
    trained = time.perf_counter() - t0
    m = evaluate_run(multi.dir)
    result = {"split_seed": seed, "multi_train_seconds": round(trained, 1), "multi_wall_seconds":
              round(time.perf_counter() - t0, 1), "epochs": multi.info["epochs_run"], "macro_auc": m["macro_auc"],
              "macro_auc_ci": m["macro_auc_ci"],
              "per_finding": {r["finding"]: {"auc": r["auc"], "ci": [r["auc_low"], r["auc_high"]],
                                             "test_positives": r["positives"]} for r in m["findings"]}, "binary": {}}
    for finding in BINARY:
        t1 = time.perf_counter()
        binary = train(TrainConfig(source=NIH, positive=finding, negative=["No Finding"], split_file=str(multi.dir.split),
                                   data=DataConfig(split_seed=seed)), out / f"{finding}-{seed}", overwrite=True)
        b = evaluate_run(binary.dir)
        one = evaluate_run(multi.dir, finding=finding)
        same = set(pd.read_csv(Path(b["folder"]) / "predictions.csv")["path"]) == \
            set(pd.read_csv(Path(one["folder"]) / "predictions.csv")["path"])
        result["binary"][finding] = {"binary_auc": b["auc"], "binary_ci": b["ci95"]["auc"],
                                     "multilabel_auc": one["auc"], "multilabel_ci": one["ci95"]["auc"],
                                     "test_images": b["n"], "same_test_images": same,
                                     "binary_seconds": round(time.perf_counter() - t1, 1)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("/tmp/cxrlab-multilabel"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"cpu": cpu_model(), "recipe": "default (TrainConfig defaults)", "splits": []}
    for seed in (int(s) for s in args.splits.split(",")):
        results["splits"].append(one_split(seed, args.out))
        print(json.dumps(results["splits"][-1]), flush=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    rows = []
    for finding in next(iter(results["splits"]))["per_finding"]:
        aucs = [s["per_finding"][finding]["auc"] for s in results["splits"]]
        rows.append({"finding": finding, **{f"split {s['split_seed']}": f"{s['per_finding'][finding]['auc']:.3f} "
                                            f"[{s['per_finding'][finding]['ci'][0]:.2f}, {s['per_finding'][finding]['ci'][1]:.2f}]"
                                            for s in results["splits"]},
                     "mean": sum(a for a in aucs if a == a) / max(1, sum(a == a for a in aucs))})
    print(pd.DataFrame(rows).to_string(index=False))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
