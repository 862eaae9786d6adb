"""Per-epoch metrics; AUC is undefined (NaN) when a split has one class, never a crash."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def epoch_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> dict:
    acc = float(((scores >= threshold) == (y_true == 1)).mean()) if len(y_true) else float("nan")
    auc = float(roc_auc_score(y_true, scores)) if len(np.unique(y_true)) == 2 else float("nan")
    return {"acc": acc, "auc": auc}
