"""`data summary`: counts, patients, image sizes and modes, duplicates, unreadable files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from . import LoadedData
from .tasks import Task


def _class_name(task: Task, y) -> str:
    return task.positive if y == 1 else "/".join(task.negatives)


def summarize(data: LoadedData) -> dict:
    """A JSON-ready description of the loaded data; every figure is counted, none estimated."""
    frame, info = data.frame, data.info
    out: dict = {
        "source": data.manifest.root,
        "layout": data.manifest.kind,
        "images": int(len(frame)),
        "patients": int(frame["patient"].nunique()),
        "patient_id_from": {k: int(v) for k, v in frame["patient_source"].value_counts().items()},
        "labels_in_source": data.manifest.label_counts(),
        "image_size_used": data.config.image_size,
        "views": {(k or "unknown"): int(v) for k, v in frame["view"].fillna("").value_counts().items()},
        "cache": data.cache_status,
    }
    if data.task is not None:
        out["task"] = data.task.to_dict()
        out["excluded_by_task"] = data.excluded
        cls = frame["y"].map(lambda y: _class_name(data.task, y))
        out["classes"] = {k: int(v) for k, v in cls.value_counts().items()}
        table = pd.crosstab(frame["split"], cls)
        out["by_split"] = {s: {c: int(n) for c, n in row.items()} for s, row in table.iterrows()}
        out["patients_by_split"] = {s: int(n) for s, n in frame.groupby("split")["patient"].nunique().items()}
        if data.multilabel:  # per finding and split: positive images and positive patients
            from . import finding_counts

            counts = finding_counts(frame, data.task)
            out["findings"] = {f: {split: {kind: int(counts.loc[f, (split, kind)]) for kind in ("images", "patients")}
                                   for split in ("train", "val", "test")} for f in data.task.findings}
    sizes = (info["width"].astype(str) + "x" + info["height"].astype(str)).value_counts()
    out["original_sizes"] = {k: int(v) for k, v in sizes.head(10).items()}
    out["modes"] = {k: int(v) for k, v in info["mode"].value_counts().items()}
    dup_groups = [sorted(g) for _, g in frame.groupby(info["sha1"].to_numpy())["path"] if len(g) > 1]
    out["exact_duplicates"] = {"groups": len(dup_groups), "examples": dup_groups[:20]}
    if "split" in frame and data.task is not None:
        split_sets = frame.groupby(info["sha1"].to_numpy())["split"].nunique()
        out["exact_duplicates"]["across_splits"] = int((split_sets > 1).sum())
    out["skipped"] = {"count": len(data.skipped), "files": data.skipped}
    out["notes"] = data.notes
    return out


def write_summary(data: LoadedData, out_dir: str | Path, augment_samples: int = 8) -> dict:
    """summary.json and the PNG plots (class bars, sample grid per class, augmented samples)."""
    from . import plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(data)
    files = {"summary": "summary.json"}
    files["class_distribution"] = plots.class_distribution(summary, out_dir / "class_distribution.png")
    files["samples"] = plots.sample_grid(data, out_dir / "samples.png")
    if augment_samples:
        files["augmentation"] = plots.augmentation_grid(data, out_dir / "augmentation.png", augment_samples)
    summary["files"] = {k: Path(v).name for k, v in files.items()}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
