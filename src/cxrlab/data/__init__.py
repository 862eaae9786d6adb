"""The data layer: source -> manifest -> task -> cached images -> patient-grouped split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..config import DataConfig
from ..errors import DataError, ImageReadError
from .augment import build_augment
from .cache import ImageCache
from .dataset import XrayDataset
from .sources import Manifest, read_source
from .split import load_split, make_split, save_split
from .tasks import MultiLabelTask, Task, label_frame, make_multilabel_task, make_task, multilabel_frame

__all__ = ["LoadedData", "load_data", "Manifest", "Task", "read_source", "make_task", "save_split"]


@dataclass
class LoadedData:
    """Everything later steps need. `frame` has one row per usable image (path, labels, patient,
    patient_source, split, and y when there is a task); `row` indexes `images` (N x S x S uint8)."""

    manifest: Manifest
    task: Task | MultiLabelTask | None
    frame: pd.DataFrame
    images: np.ndarray
    info: pd.DataFrame
    config: DataConfig
    cache_status: str
    excluded: dict[str, int] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> pd.DataFrame:
        """Images per split and class, with patients per split: what a notebook shows first."""
        frame = self.frame
        if self.task is None or "split" not in frame:
            return frame.groupby("labels").size().rename("images").to_frame()
        names = {1: self.task.positive, 0: " / ".join(self.task.negatives)}
        table = pd.crosstab(frame["split"], frame["y"].map(names)).reindex(["train", "val", "test"]).fillna(0)
        table["patients"] = frame.groupby("split")["patient"].nunique()
        return table.astype(int)

    def plot(self, per_class: int = 6, seed: int = 0):
        """A row of random images per class (a matplotlib Figure)."""
        from .plots import sample_figure

        return sample_figure(self, per_class, seed)

    def _repr_html_(self) -> str:
        from .. import display

        task = f"{self.task.positive} vs {' / '.join(self.task.negatives)}" if self.task else "no task chosen"
        counts = self.counts()
        rows = [[idx, *row] for idx, row in zip(counts.index, counts.to_numpy().tolist())]
        notes = "".join(f"<p>note: {display.html.escape(n)}</p>" for n in self.notes)
        return (display.heading(f"{len(self.frame)} images, {self.frame['patient'].nunique()} patients",
                                f"{self.manifest.root} ({self.manifest.kind}); {task}; "
                                f"{self.images.shape[-1]} px, cache {self.cache_status}")
                + display.table(["split", *counts.columns], rows) + notes
                + display.figure(self.plot(per_class=4), width=520))

    @property
    def multilabel(self) -> bool:
        return isinstance(self.task, MultiLabelTask)

    def indices(self, split: str) -> np.ndarray:
        return self.frame.loc[self.frame["split"] == split, "row"].to_numpy()

    def targets(self) -> np.ndarray:
        """Labels by image row: N (0/1) for a binary task, N x K (0/1, NaN unknown) for a multi-label one."""
        rows = self.frame["row"].to_numpy()
        if self.multilabel:
            labels = np.full((len(self.images), len(self.task.findings)), np.nan, np.float32)
            labels[rows] = self.frame[self.task.columns].to_numpy(np.float32)
            return labels
        labels = np.zeros(len(self.images), np.float32)
        labels[rows] = self.frame["y"].to_numpy()
        return labels

    def dataset(self, split: str, augment: bool = False) -> XrayDataset:
        if self.task is None:
            raise DataError("no task: pass --positive (and --negative) to choose the classes")
        labels = self.targets()
        transform = build_augment(self.config.augment) if augment else None
        return XrayDataset(self.images, labels, self.indices(split), transform)


def _keep_views(frame: pd.DataFrame, views: list[str], source: str) -> tuple[pd.DataFrame, str]:
    """Only the images whose view position is one of `views`; a source that records no views, or none of
    these, is an error naming what it has."""
    known = frame["view"].fillna("").str.upper()
    if (known == "").all():
        raise DataError(f"{source}: --views {','.join(views)}: no image says its view (DICOM ViewPosition, or a "
                        "'View Position' column in the CSV)")
    keep = known.isin(views)
    if not keep.any():
        have = ", ".join(f"{v or 'unknown'} {n}" for v, n in known.value_counts().items())
        raise DataError(f"{source}: no image has view {' or '.join(views)}; its views: {have}")
    left_out = known[~keep].replace("", "unknown").value_counts()
    note = (f"--views {','.join(views)}: {int((~keep).sum())} image(s) of other views left out "
            f"({', '.join(f'{v} {n}' for v, n in left_out.items())})" if len(left_out) else
            f"--views {','.join(views)}: every image has one of these views")
    return frame[keep.to_numpy()].reset_index(drop=True), note


FEW_POSITIVE_PATIENTS = 5  # below this, a finding's validation or test AUC says little


def finding_counts(frame: pd.DataFrame, task: MultiLabelTask) -> pd.DataFrame:
    """Per finding and split: positive images and positive patients (what a multi-label summary shows)."""
    columns = pd.MultiIndex.from_product([("train", "val", "test"), ("images", "patients")])
    table = pd.DataFrame(0, index=pd.Index(task.findings, name="finding"), columns=columns)
    for finding, column in zip(task.findings, task.columns):
        for split in ("train", "val", "test"):
            part = frame[(frame["split"] == split) & (frame[column] == 1)]
            table.loc[finding, (split, "images")] = len(part)
            table.loc[finding, (split, "patients")] = part["patient"].nunique()
    return table


def _few_positive_patients(frame: pd.DataFrame, task: MultiLabelTask) -> list[str]:
    counts = finding_counts(frame, task)
    notes = []
    for split in ("val", "test"):
        few = counts[(split, "patients")]
        few = few[few < FEW_POSITIVE_PATIENTS]
        if len(few):
            notes.append(f"fewer than {FEW_POSITIVE_PATIENTS} positive patients in {split} for "
                         + ", ".join(f"{f} ({n})" for f, n in few.items())
                         + f": their {split} AUC has a very wide interval, or none")
    return notes


def load_data(source: str | Path, positive: str | None = None, negative: str | list[str] | None = None,
              images_dir: str | Path | None = None, config: DataConfig | None = None,
              split_file: str | Path | None = None,
              progress: Callable[[int, int], None] | None = None,
              findings: str | list[str] | None = None) -> LoadedData:
    """Read `source`, choose the task, decode (or reuse) the cached images, and split by patient.

    Without `positive`, a task is still chosen when the data makes it obvious (two classes, one
    named like 'normal'); otherwise all images are loaded without labels y and without a split.
    """
    cfg = config or DataConfig()
    manifest = read_source(source, images_dir, cfg.on_bad_image)
    skipped = list(manifest.skipped)
    task, excluded = None, {}
    if findings:
        if positive is not None:
            raise DataError("give --positive (one finding against --negative) or --findings (several at once), not both")
        task = make_multilabel_task(manifest, findings)
    else:
        try:
            task = make_task(manifest, positive, negative)
        except DataError:
            if positive is not None or negative:
                raise
    if isinstance(task, MultiLabelTask):
        frame, excluded = multilabel_frame(manifest, task)
    elif task is not None:
        frame, excluded = label_frame(manifest, task)
    else:
        frame = manifest.frame.copy()
    notes: list[str] = []
    if cfg.views:
        frame, note = _keep_views(frame, cfg.views, manifest.root)
        notes.append(note)
    cache = ImageCache(cfg.cache_dir, cfg.decode_workers).load(frame["path"].tolist(), cfg.image_size, progress)
    frame["row"] = np.arange(len(frame))
    info = cache.info
    bad = info["error"] != ""
    if bad.any():
        if cfg.on_bad_image == "error":
            first = int(np.flatnonzero(bad.to_numpy())[0])
            exc = ImageReadError(frame["path"].iat[first], info["error"].iat[first])
            if bad.sum() > 1:
                exc.args = (f"{exc.args[0]} ({int(bad.sum())} unreadable images in all)",)
            raise exc
        skipped += [{"path": p, "reason": r} for p, r in zip(frame["path"][bad], info["error"][bad])]
        frame = frame[~bad.to_numpy()].reset_index(drop=True)
    if task is not None:
        classes = [] if isinstance(task, MultiLabelTask) else [(1, task.positive), (0, " or ".join(task.negatives))]
        for value, name in classes:  # a binary task needs both classes; a multi-label one is checked per finding
            if not (frame["y"] == value).any():
                why = " and ".join(w for w, on in ((f"keeping views {','.join(cfg.views or [])}", cfg.views),
                                                   ("skipping bad images", skipped)) if on)
                raise DataError(f"no readable images labelled {name!r} are left after {why or 'loading'}")
        if split_file:
            frame["split"] = load_split(split_file, frame).to_numpy()
        else:
            val, test = cfg.fractions()
            split, split_notes = make_split(frame, val, test, cfg.split_seed, cfg.val_policy,
                                            task.columns if isinstance(task, MultiLabelTask) else None)
            notes += split_notes
            frame["split"] = split.to_numpy()
    if isinstance(task, MultiLabelTask) and "split" in frame:
        notes += _few_positive_patients(frame, task)
    if skipped:
        notes.append(f"{len(skipped)} file(s) skipped as unreadable or not images; see 'skipped'")
    if (frame["patient_source"] == "image").any():
        n = int((frame["patient_source"] == "image").sum())
        notes.append(f"{n} image(s) have no known patient id: each is treated as its own patient")
    return LoadedData(manifest, task, frame, cache.images, info.iloc[frame["row"]].reset_index(drop=True),
                      cfg, cache.status, excluded, skipped, notes)
