"""Per-epoch metrics; AUC is undefined (NaN) when a split has one class, never a crash."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def _auc(y: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(y, scores)) if len(np.unique(y)) == 2 else float("nan")


def epoch_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict:
    """acc and auc. For N x K labels (multi-label, NaN = not labelled): each finding's AUC over its
    labelled images (`aucs`), `auc` their mean over the findings where it is defined, and `acc` over the
    labelled entries."""
    if np.ndim(y_true) == 1:
        acc = float(((scores >= threshold) == (y_true == 1)).mean()) if len(y_true) else float("nan")
        return {"acc": acc, "auc": _auc(y_true, scores)}
    known = ~np.isnan(y_true)
    aucs = [_auc(y_true[known[:, k], k], scores[known[:, k], k]) for k in range(y_true.shape[1])]
    defined = [a for a in aucs if not np.isnan(a)]
    acc = float(((scores >= threshold) == (y_true == 1))[known].mean()) if known.any() else float("nan")
    return {"acc": acc, "auc": float(np.mean(defined)) if defined else float("nan"), "aucs": aucs}
