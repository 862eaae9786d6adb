"""`cxrlab compare`: several runs' key metrics side by side, and their ROC curves in one figure."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..runs import RunDir
from . import plots

COLUMNS = ["run", "model", "images", "auc", "auc_ci", "sensitivity", "sensitivity_ci", "specificity",
           "specificity_ci", "accuracy", "majority_rate", "threshold", "policy", "train_seconds"]


def _ci(pair) -> str:
    return "undefined" if pair[0] is None else f"{pair[0]:.3f}-{pair[1]:.3f}"


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub-style table (pandas needs the extra `tabulate` package for this; three lines do)."""
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def compare_runs(run_dirs: list[str | Path], split: str = "test", out: str | Path = "comparison") -> pd.DataFrame:
    """Evaluate runs that have not been evaluated, then write comparison.csv, comparison.md and
    roc_comparison.png into `out`. Returns the table."""
    from .evaluate import evaluate_run

    rows, curves = [], []
    for d in run_dirs:
        run = RunDir(d)
        metrics_path = run.eval_dir(split) / "metrics.json"
        if not metrics_path.exists():
            evaluate_run(run, split=split)
        m = json.loads(metrics_path.read_text())
        info = run.read_info()
        rows.append({"run": str(run.path), "model": info["model"]["name"], "images": m["n"], "auc": m["auc"],
                     "auc_ci": _ci(m["ci95"]["auc"]), "sensitivity": m["sensitivity"],
                     "sensitivity_ci": _ci(m["ci95"]["sensitivity"]), "specificity": m["specificity"],
                     "specificity_ci": _ci(m["ci95"]["specificity"]), "accuracy": m["accuracy"],
                     "majority_rate": m["majority_rate"], "threshold": m["operating_point"]["threshold"],
                     "policy": m["operating_point"]["policy"], "train_seconds": info["train_seconds"]})
        scores = pd.read_csv(run.eval_dir(split) / f"{split}_yscores.csv")
        curves.append((f"{run.path.name} ({info['model']['name']})", scores["y_true"].to_numpy(), scores["y_score"].to_numpy()))
    table = pd.DataFrame(rows, columns=COLUMNS)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(markdown_table(table))
    plots.roc_overlay(curves, out / "roc_comparison.png")
    return table
