"""Task: which label is positive and which negative, turning a multi-label manifest into 0/1."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..errors import DataError
from .sources import LABEL_SEP, Manifest

NORMAL_NAMES = {"normal", "no finding", "no_finding", "nofinding", "no-finding", "negative", "healthy"}


@dataclass
class Task:
    """A binary task. Positives carry `positive` (possibly with other findings); negatives carry
    only labels from `negatives`; every other image is excluded and counted."""

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
    is_neg = ~is_pos & sets.map(lambda s: s <= set(task.negatives))
    frame = manifest.frame[is_pos | is_neg].copy()
    frame["y"] = is_pos[is_pos | is_neg].astype(int)
    excluded = manifest.frame.loc[~(is_pos | is_neg), "labels"].value_counts()
    for value, name in ((1, task.positive), (0, " or ".join(task.negatives))):
        if not (frame["y"] == value).any():
            raise DataError(f"{manifest.root}: no images labelled {name!r}; both classes need images.")
    return frame.reset_index(drop=True), {str(k): int(v) for k, v in excluded.items()}
