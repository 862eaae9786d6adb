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
    def cell(column: str, v) -> str:
        if not isinstance(v, float):
            return str(v)
        return f"{v:.6g}" if column == "threshold" else f"{v:.3f}"  # 0.999998 is not 1.000

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(c, v) for c, v in zip(table.columns, row)) + " |"
              for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def run_labels(run_dirs: list[str | Path]) -> list[str]:
    """Distinct short names: each run's folder name, with as many parent folders as it takes to tell
    runs apart (a/run and b/run, not run and run)."""
    parts = [Path(d).resolve().parts for d in run_dirs]
    for k in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(d) for d in run_dirs]


def comparability_warnings(run_dirs: list[str | Path], split: str) -> list[str]:
    """What makes a side-by-side table misleading: other tasks, or other images in the split."""
    labels = run_labels(run_dirs)
    tasks = {label: RunDir(d).read_info().get("task") for label, d in zip(labels, run_dirs)}
    images = {}
    for label, d in zip(labels, run_dirs):
        frame = RunDir(d).read_split()
        images[label] = frozenset(frame["path"] if split == "all" else frame.loc[frame["split"] == split, "path"])
    warnings = []
    if len({str(t) for t in tasks.values()}) > 1:
        warnings.append("the runs have different tasks: " + "; ".join(
            f"{k}: {t['positive']} vs {' / '.join(t['negatives'])}" for k, t in tasks.items() if t))
    if len(set(images.values())) > 1:
        warnings.append(f"the runs' {split} sets differ (" + ", ".join(f"{k}: {len(v)} images" for k, v in images.items())
                        + "): their metrics are not measured on the same patients")
    return warnings


def compare_runs(run_dirs: list[str | Path], split: str = "test", out: str | Path = "comparison") -> pd.DataFrame:
    """Evaluate runs that have not been evaluated, then write comparison.csv, comparison.md and
    roc_comparison.png into `out`. Returns the table; `table.attrs["warnings"]` says what makes the
    comparison unfair (other tasks or test sets)."""
    from .evaluate import evaluate_run

    rows, curves = [], []
    labels = run_labels(run_dirs)
    for label, d in zip(labels, run_dirs):
        run = RunDir(d)
        metrics_path = run.eval_dir(split) / "metrics.json"
        if not metrics_path.exists():
            evaluate_run(run, split=split)
        m = json.loads(metrics_path.read_text())
        info = run.read_info()
        rows.append({"run": label, "model": info["model"]["name"], "images": m["n"], "auc": m["auc"],
                     "auc_ci": _ci(m["ci95"]["auc"]), "sensitivity": m["sensitivity"],
                     "sensitivity_ci": _ci(m["ci95"]["sensitivity"]), "specificity": m["specificity"],
                     "specificity_ci": _ci(m["ci95"]["specificity"]), "accuracy": m["accuracy"],
                     "majority_rate": m["majority_rate"], "threshold": m["operating_point"]["threshold"],
                     "policy": m["operating_point"]["policy"], "train_seconds": info["train_seconds"]})
        scores = pd.read_csv(run.eval_dir(split) / f"{split}_yscores.csv")
        curves.append((f"{label} ({info['model']['name']})", scores["y_true"].to_numpy(), scores["y_score"].to_numpy()))
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs["warnings"] = comparability_warnings(run_dirs, split)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(markdown_table(table) + "".join(f"\n**Warning:** {w}\n" for w in table.attrs["warnings"]))
    plots.roc_overlay(curves, out / "roc_comparison.png")
    return table
