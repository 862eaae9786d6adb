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


def comparability_warnings(run_dirs: list[str | Path], split: str, finding_dirs: list[Path | None] | None = None) -> list[str]:
    """What makes a side-by-side table misleading: other tasks, or other images in the split (for a
    multi-label run, those its one-finding evaluation in `finding_dirs` scored: a subset of its split)."""
    labels = run_labels(run_dirs)
    tasks, images = {}, {}
    for k, (label, d) in enumerate(zip(labels, run_dirs)):
        task = RunDir(d).read_info().get("task") or {}
        tasks[label] = {"positive": task.get("positive"), "negatives": task.get("negatives")}
        if finding_dirs is not None and finding_dirs[k] is not None:
            m = json.loads((finding_dirs[k] / "metrics.json").read_text())
            tasks[label] = m.get("classes", tasks[label])
            images[label] = frozenset(pd.read_csv(finding_dirs[k] / "predictions.csv")["path"])
        else:
            frame = RunDir(d).read_split()
            images[label] = frozenset(frame["path"] if split == "all" else frame.loc[frame["split"] == split, "path"])
    warnings = []
    if len({str(t) for t in tasks.values()}) > 1:
        warnings.append("the runs have different tasks: " + "; ".join(
            f"{k}: {t['positive']} vs {' / '.join(t['negatives'] or [])}" for k, t in tasks.items() if t))
    if len(set(images.values())) > 1:
        warnings.append(f"the runs' {split} sets differ (" + ", ".join(f"{k}: {len(v)} images" for k, v in images.items())
                        + "): their metrics are not measured on the same patients")
    return warnings


def compare_runs(run_dirs: list[str | Path], split: str = "test", out: str | Path = "comparison",
                 finding: str | None = None, negative: str | list[str] | None = None) -> pd.DataFrame:
    """Evaluate runs that have not been evaluated, then write comparison.csv, comparison.md and
    roc_comparison.png into `out`. A multi-label run takes part through one `finding`, scored as a binary
    task against `negative` (evaluate --finding). Returns the table; `table.attrs["warnings"]` says what
    makes the comparison unfair (other tasks or test sets)."""
    from ..errors import CxrlabError
    from .evaluate import evaluate_run, finding_eval_dir

    rows, curves, eval_dirs = [], [], []
    labels = run_labels(run_dirs)
    for label, d in zip(labels, run_dirs):
        run = RunDir(d)
        multilabel = "findings" in (run.read_info().get("task") or {})
        if multilabel and not finding:
            raise CxrlabError(f"{run.path} scores several findings: pass --finding to compare one of them")
        folder = finding_eval_dir(run, split, finding) if multilabel else run.eval_dir(split)
        metrics_path = folder / "metrics.json"
        if multilabel:  # always again: --negative may differ from the last time
            evaluate_run(run, split=split, finding=finding, data_negative=negative)
        elif not metrics_path.exists():
            evaluate_run(run, split=split)
        eval_dirs.append(folder if multilabel else None)
        m = json.loads(metrics_path.read_text())
        info = run.read_info()
        rows.append({"run": label, "model": info["model"]["name"], "images": m["n"], "auc": m["auc"],
                     "auc_ci": _ci(m["ci95"]["auc"]), "sensitivity": m["sensitivity"],
                     "sensitivity_ci": _ci(m["ci95"]["sensitivity"]), "specificity": m["specificity"],
                     "specificity_ci": _ci(m["ci95"]["specificity"]), "accuracy": m["accuracy"],
                     "majority_rate": m["majority_rate"], "threshold": m["operating_point"]["threshold"],
                     "policy": m["operating_point"]["policy"], "train_seconds": info["train_seconds"]})
        scores = pd.read_csv(folder / f"{split}_yscores.csv")
        curves.append((f"{label} ({info['model']['name']})", scores["y_true"].to_numpy(), scores["y_score"].to_numpy()))
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.attrs["warnings"] = comparability_warnings(run_dirs, split, eval_dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(markdown_table(table) + "".join(f"\n**Warning:** {w}\n" for w in table.attrs["warnings"]))
    plots.roc_overlay(curves, out / "roc_comparison.png")
    return table
