"""Domain-shift benchmark (issue 22): train on one real data set, evaluate on the other, same task
(pneumonia against normal), at the source site's threshold and at one re-chosen on the new site.

For each direction (NIH -> Kermany, Kermany -> NIH):
1. `cxrlab train` with the default recipe on the source (split seed 0); its own test split is scored.
2. `cxrlab threshold RUN --data TARGET --sample 0.5` chooses the stored policy (sensitivity:0.95) on half
   of the target's patients;
3. `cxrlab evaluate RUN --data TARGET` scores the other half at both thresholds, with patient-bootstrap CIs.

Run: python benchmarks/domain_shift.py [--out DIR] [--directions nih-kermany,kermany-nih]
Prints one JSON object (also DIR/results.json) with the CPU model and every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import TASKS  # noqa: E402
from tune import cpu_model  # noqa: E402

from cxrlab.config import DataConfig, TrainConfig  # noqa: E402
from cxrlab.evaluation.evaluate import evaluate_run  # noqa: E402
from cxrlab.evaluation.sites import choose_site_point  # noqa: E402
from cxrlab.training import train  # noqa: E402

SOURCES = {"nih": "nih-pneumonia", "kermany": "kermany"}


def calls(m: dict) -> dict:
    ci = m["ci95"]
    return {"threshold": m["threshold"], "sensitivity": m["sensitivity"], "sensitivity_ci": ci["sensitivity"],
            "specificity": m["specificity"], "specificity_ci": ci["specificity"]}


def direction(source: str, target: str, out: Path) -> dict:
    src, tgt = TASKS[SOURCES[source]], TASKS[SOURCES[target]]
    cfg = TrainConfig(source=src["source"], positive=src["positive"], negative=src["negative"],
                      data=DataConfig(split_seed=0))
    t0 = time.perf_counter()
    run = train(cfg, out / f"{source}-run", overwrite=True).dir.path
    trained = time.perf_counter() - t0
    own = evaluate_run(run)
    t1 = time.perf_counter()
    site = choose_site_point(run, tgt["source"], site=target, sample=0.5, positive=tgt["positive"],
                             negative=tgt["negative"])
    shifted = evaluate_run(run, data=tgt["source"], data_positive=tgt["positive"], data_negative=tgt["negative"],
                           site=target)
    scored = time.perf_counter() - t1
    return {"direction": f"{source} -> {target}", "train_seconds": round(trained, 1),
            "site_seconds": round(scored, 1),
            "source_test": {"n": own["n"], "patients": own["patients"], "auc": own["auc"], "auc_ci": own["ci95"]["auc"],
                            **calls(own)},
            "target": {"n": shifted["n"], "patients": shifted["patients"], "positives": shifted["positives"],
                       "auc": shifted["auc"], "auc_ci": shifted["ci95"]["auc"],
                       "sample_images": site.sample_images, "sample_positives": site.point.val_positives,
                       "at_source_threshold": calls(shifted),
                       "at_site_threshold": calls({**shifted["site"], "ci95": shifted["site"]["ci95"]})}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/cxrlab-domain-shift"))
    parser.add_argument("--directions", default="nih-kermany,kermany-nih")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"cpu": cpu_model(), "recipe": "default (TrainConfig defaults), split seed 0", "runs": []}
    for pair in args.directions.split(","):
        source, target = pair.split("-")
        results["runs"].append(direction(source, target, args.out))
        print(json.dumps(results["runs"][-1]), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
