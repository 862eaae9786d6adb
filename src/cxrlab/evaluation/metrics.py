"""Binary metrics and patient-level bootstrap confidence intervals (scikit-learn does the maths)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (average_precision_score, balanced_accuracy_score, classification_report,
                             confusion_matrix, f1_score, roc_auc_score)


def _ratio(a: int, b: int) -> float:
    return float(a / b) if b else float("nan")


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> dict:
    """Every number a clinician asks for at one threshold. AUC and AP are NaN, with a reason,
    when the data has one class."""
    y = np.asarray(y).astype(int)
    score = np.asarray(score, float)
    pred = (score >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y, pred, labels=[0, 1]).ravel())
    two_classes = len(np.unique(y)) == 2
    out = {
        "n": int(len(y)), "positives": int(y.sum()), "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, len(y)), "majority_rate": float(max(y.mean(), 1 - y.mean())) if len(y) else float("nan"),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if two_classes else float("nan"),
        "auc": float(roc_auc_score(y, score)) if two_classes else float("nan"),
        "average_precision": float(average_precision_score(y, score)) if two_classes else float("nan"),
        "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        "false_negatives": fn, "false_positives": fp,
        "classification_report": classification_report(y, pred, labels=[0, 1], output_dict=True, zero_division=0),
    }
    if not two_classes:
        out["auc_undefined_reason"] = f"the data has one class only ({int(y.sum())} positives of {len(y)})"
    return out


def patient_resamples(patients: np.ndarray, n_resamples: int, seed: int):
    """Row indices of bootstrap resamples that draw whole patients with replacement."""
    ids, inverse = np.unique(np.asarray(patients).astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(ids) + 1))
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        picked = rng.integers(0, len(ids), len(ids))
        yield np.concatenate([order[starts[i]:starts[i + 1]] for i in picked])


def bootstrap_ci(y: np.ndarray, score: np.ndarray, patients: np.ndarray, metric=roc_auc_score,
                 n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """(point, low, high): percentile CI, resampling patients with replacement so that one
    patient's images stay together (images of a patient are not independent). Resamples with
    one class only are skipped for metrics that need both."""
    y, score = np.asarray(y), np.asarray(score)
    try:
        point = float(metric(y, score))
    except ValueError:
        return float("nan"), float("nan"), float("nan")
    stats = []
    for rows in patient_resamples(patients, n_resamples, seed):
        try:
            value = metric(y[rows], score[rows])
        except ValueError:
            continue
        if not np.isnan(value):
            stats.append(value)
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha]) if stats else (np.nan, np.nan)
    return point, float(low), float(high)


def sensitivity_at(threshold: float):
    def metric(y, score):
        pos = np.asarray(y) == 1
        return np.mean(np.asarray(score)[pos] >= threshold) if pos.any() else np.nan
    return metric


def specificity_at(threshold: float):
    def metric(y, score):
        neg = np.asarray(y) == 0
        return np.mean(np.asarray(score)[neg] < threshold) if neg.any() else np.nan
    return metric
