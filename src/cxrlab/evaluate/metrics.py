"""Binary metrics and patient-level bootstrap confidence intervals (scikit-learn does the maths)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy beside the majority-class rate, AUC (NaN with one class), sensitivity, specificity."""
    y = np.asarray(y).astype(int)
    pred = (np.asarray(score) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    return {
        "n": int(len(y)), "positives": int(y.sum()),
        "accuracy": float((tp + tn) / len(y)), "majority_rate": float(max(y.mean(), 1 - y.mean())),
        "auc": float(roc_auc_score(y, score)) if len(np.unique(y)) == 2 else float("nan"),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else float("nan"),
        "specificity": float(tn / (tn + fp)) if tn + fp else float("nan"),
        "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn), "threshold": float(threshold),
    }


def youden_threshold(y: np.ndarray, score: np.ndarray) -> float:
    fpr, tpr, thr = roc_curve(y, score)
    return float(np.clip(thr[np.argmax(tpr - fpr)], 0, 1))


def bootstrap_ci(y: np.ndarray, score: np.ndarray, patients: np.ndarray, metric=roc_auc_score,
                 n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(point, low, high): percentile CI, resampling patients with replacement so that one
    patient's images stay together (images of a patient are not independent)."""
    y, score, patients = np.asarray(y), np.asarray(score), np.asarray(patients).astype(str)
    point = float(metric(y, score))
    ids, inverse = np.unique(patients, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == i) for i in range(len(ids))]
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_resamples):
        rows = np.concatenate([rows_of[i] for i in rng.integers(0, len(ids), len(ids))])
        if len(np.unique(y[rows])) == 2:
            stats.append(metric(y[rows], score[rows]))
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha]) if stats else (np.nan, np.nan)
    return point, float(low), float(high)
