"""Task: which label is positive and which negative, turning a multi-label manifest into 0/1; or K
findings scored at once (multi-label)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..errors import DataError
from .sources import LABEL_SEP, Manifest

REST = "rest"  # --negative rest: every image without the positive finding (CheXNet's binary tasks)
NORMAL_NAMES = {"normal", "no finding", "no_finding", "nofinding", "no-finding", "negative", "healthy"}


@dataclass
class Task:
    """A binary task. Positives carry `positive` (possibly with other findings); negatives carry
    only labels from `negatives` (or, with negatives ("rest",), anything else); every other image is
    excluded and counted."""

    positive: str
    negatives: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"positive": self.positive, "negatives": list(self.negatives)}


def _resolve(name: str, available: list[str]) -> str:
    by_fold = {a.casefold(): a for a in available}
    found = by_fold.get(name.strip().casefold())
    if found is None:
        raise DataError(f"unknown label {name!r}; the data has: {', '.join(available)}")
    return found


def make_task(manifest: Manifest, positive: str | None = None,
              negative: str | list[str] | None = None) -> Task:
    """Resolve the names given (case-insensitive) against the manifest's labels.
    Defaults: the negative is the label named like 'normal' / 'No Finding'; with two classes,
    the positive is the other one."""
    available = list(manifest.label_counts())
    normals = [a for a in available if a.casefold() in NORMAL_NAMES]
    names = [negative] if isinstance(negative, str) else list(negative or [])
    if [n.strip().casefold() for n in names] == [REST] and REST not in {a.casefold() for a in available}:
        if positive is None:
            raise DataError("--negative rest needs --positive: every image without it is then a negative")
        return Task(_resolve(positive, available), (REST,))
    if negative is None or negative == []:
        if normals:
            negatives = normals[:1]
        elif positive is not None and len(available) == 2:
            negatives = [a for a in available if a != _resolve(positive, available)]
        else:
            raise DataError(f"which label is negative? None is named like 'normal' or 'No Finding'; "
                            f"pass --negative (labels: {', '.join(available)})")
    else:
        negatives = [_resolve(n, available) for n in ([negative] if isinstance(negative, str) else negative)]
    if positive is None:
        others = [a for a in available if a not in negatives]
        if len(others) != 1:
            raise DataError(f"which label is positive? Pass --positive, one of: {', '.join(others)}")
        positive = others[0]
    positive = _resolve(positive, available)
    if positive in negatives:
        raise DataError(f"label {positive!r} cannot be both positive and negative")
    return Task(positive, tuple(negatives))


def label_frame(manifest: Manifest, task: Task) -> tuple[pd.DataFrame, dict[str, int]]:
    """The task's images with y (1 positive, 0 negative) and the count of excluded images per
    label set. An empty class is an error: a classifier cannot learn from one class."""
    sets = manifest.frame["labels"].str.split(LABEL_SEP).map(frozenset)
    is_pos = sets.map(lambda s: task.positive in s)
    is_neg = ~is_pos if task.negatives == (REST,) else ~is_pos & sets.map(lambda s: s <= set(task.negatives))
    frame = manifest.frame[is_pos | is_neg].copy()
    frame["y"] = is_pos[is_pos | is_neg].astype(int)
    excluded = manifest.frame.loc[~(is_pos | is_neg), "labels"].value_counts()
    for value, name in ((1, task.positive), (0, " or ".join(task.negatives))):
        if not (frame["y"] == value).any():
            raise DataError(f"{manifest.root}: no images labelled {name!r}; both classes need images.")
    return frame.reset_index(drop=True), {str(k): int(v) for k, v in excluded.items()}


ANY_FINDING = "any finding"


@dataclass
class MultiLabelTask:
    """K findings scored at once. Every image is kept: its label for each finding is 1, 0, or missing
    (NaN: not labelled, the torchxrayvision convention) and missing labels are left out of the loss and the
    metrics. `positive` / `negatives` describe the images with any finding against those with none, so
    summaries and counts read as for a binary task."""

    findings: tuple[str, ...]
    normals: tuple[str, ...] = ()

    @property
    def positive(self) -> str:
        return ANY_FINDING

    @property
    def negatives(self) -> tuple[str, ...]:
        return self.normals or ("no listed finding",)

    @property
    def columns(self) -> list[str]:
        """The frame's label columns, in the findings' order (the model's outputs)."""
        return [label_column(f) for f in self.findings]

    def to_dict(self) -> dict:
        return {"findings": list(self.findings), "normals": list(self.normals), "positive": self.positive,
                "negatives": list(self.negatives)}


def label_column(finding: str) -> str:
    return f"y:{finding}"


def make_multilabel_task(manifest: Manifest, findings: str | list[str]) -> MultiLabelTask:
    """'all' (every label of the data but the normal ones), or the named findings (case-insensitive)."""
    available = list(manifest.label_counts())
    normals = tuple(a for a in available if a.casefold() in NORMAL_NAMES)
    if isinstance(findings, str):
        findings = [f for f in findings.split(",") if f.strip()]
    if [f.strip().casefold() for f in findings] == ["all"]:
        chosen = [a for a in available if a not in normals]
    else:
        chosen = [_resolve(f, available) for f in findings]
    if not chosen:
        raise DataError(f"no findings to score; the data has: {', '.join(available)}")
    doubled = {f for f in chosen if chosen.count(f) > 1}
    if doubled:
        raise DataError(f"finding(s) named twice: {', '.join(sorted(doubled))}")
    named_normal = [f for f in chosen if f in normals]
    if named_normal:
        raise DataError(f"{named_normal[0]!r} means no finding: it is the absence of every finding, not one of them")
    return MultiLabelTask(tuple(chosen), normals)


def multilabel_frame(manifest: Manifest, task: MultiLabelTask) -> tuple[pd.DataFrame, dict[str, int]]:
    """Every image with one 0/1 column per finding (`y:<finding>`, NaN where a source marks a label
    unknown; no reader produces it today, merged data sets will) and y = 1 when any of them is present. A finding without positive images is an error."""
    sets = manifest.frame["labels"].str.split(LABEL_SEP).map(frozenset)
    frame = manifest.frame.copy()
    for finding, column in zip(task.findings, task.columns):
        frame[column] = sets.map(lambda s, f=finding: float(f in s))
        if frame[column].sum() == 0:
            raise DataError(f"{manifest.root}: no images labelled {finding!r}")
    frame["y"] = (frame[task.columns].fillna(0).sum(axis=1) > 0).astype(int)
    return frame.reset_index(drop=True), {}
