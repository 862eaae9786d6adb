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


def _patient_draws(patients: np.ndarray, n_resamples: int, seed: int):
    """(inverse, draws): each image's patient index, and per resample the patients drawn with
    replacement (as many draws as patients)."""
    ids, inverse = np.unique(np.asarray(patients).astype(str), return_inverse=True)
    rng = np.random.default_rng(seed)
    return inverse, (rng.integers(0, len(ids), len(ids)) for _ in range(n_resamples))


def patient_resamples(patients: np.ndarray, n_resamples: int, seed: int):
    """Row indices of bootstrap resamples that draw whole patients with replacement."""
    inverse, draws = _patient_draws(patients, n_resamples, seed)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(inverse.max() + 2 if len(inverse) else 1))
    for picked in draws:
        yield np.concatenate([order[starts[i]:starts[i + 1]] for i in picked])


def patient_weights(patients: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """The same resamples as `patient_resamples`, as weights (resamples x images): how many times
    each image's patient was drawn. Metrics on weights score all resamples in one array operation."""
    inverse, draws = _patient_draws(patients, n_resamples, seed)
    n_ids = int(inverse.max()) + 1 if len(inverse) else 0
    return np.stack([np.bincount(picked, minlength=n_ids)[inverse] for picked in draws]).astype(float)


def auc_weighted(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC per row of `weights` (resamples x images), ties counted half: the Mann-Whitney
    statistic with case weights. Written here because scikit-learn scores one resample per call,
    and 1,000 calls of roc_auc_score took 13 s of the demo's evaluation; equal to it (tested)."""
    y = np.asarray(y).astype(bool)
    order = np.argsort(score, kind="stable")
    s, y, w = np.asarray(score, float)[order], y[order], np.atleast_2d(weights)[:, order]
    below = np.searchsorted(s, s[y], "left")  # negatives strictly below each positive's score ...
    upto = np.searchsorted(s, s[y], "right")  # ... and up to it (ties)
    out = np.empty(len(w))
    for start in range(0, len(w), 100):  # chunks of resamples bound the memory on large test sets
        chunk = w[start:start + 100]
        cum_neg = np.concatenate([np.zeros((len(chunk), 1)), np.cumsum(chunk * ~y, axis=1)], axis=1)
        w_pos = chunk[:, y]
        pairs = (w_pos * (cum_neg[:, below] + cum_neg[:, upto]) / 2).sum(1)
        total = w_pos.sum(1) * cum_neg[:, -1]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + 100] = np.where(total > 0, pairs / np.where(total > 0, total, 1), np.nan)
    return out


def bootstrap_ci(y: np.ndarray, score: np.ndarray, patients: np.ndarray, metric=auc_weighted,
                 n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                 weights: np.ndarray | None = None) -> tuple[float, float, float]:
    """(point, low, high): percentile CI, resampling patients with replacement so that one
    patient's images stay together (images of a patient are not independent). `metric(y, score,
    weights)` gives one value per row of weights, NaN where a resample lacks a class it needs;
    those resamples are skipped. `weights`: resamples already drawn (`patient_weights`), so several
    metrics of the same images share them instead of drawing them again."""
    y, score = np.asarray(y), np.asarray(score, float)
    point = float(metric(y, score, np.ones((1, len(y))))[0])
    if np.isnan(point):
        return float("nan"), float("nan"), float("nan")
    stats = metric(y, score, patient_weights(patients, n_resamples, seed) if weights is None else weights)
    return (point, *percentile_ci(stats, level))


def percentile_ci(stats: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap statistics, resamples where the metric is undefined (NaN) left out."""
    stats = np.asarray(stats, float)
    stats = stats[~np.isnan(stats)]
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha]) if len(stats) else (np.nan, np.nan)
    return float(low), float(high)


def _weighted_rate(w: np.ndarray, mask: np.ndarray, hit: np.ndarray) -> np.ndarray:
    w = np.atleast_2d(w)[:, mask]
    total = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (w @ hit[mask].astype(float)) / np.where(total > 0, total, 1), np.nan)


def sensitivity_at(threshold: float):
    """Weighted sensitivity at `threshold`, a metric for `bootstrap_ci`."""
    def metric(y, score, w):
        return _weighted_rate(w, np.asarray(y) == 1, np.asarray(score) >= threshold)
    return metric


def specificity_at(threshold: float):
    """Weighted specificity at `threshold`, a metric for `bootstrap_ci`."""
    def metric(y, score, w):
        return _weighted_rate(w, np.asarray(y) == 0, np.asarray(score) < threshold)
    return metric


def call_rate_cis(y: np.ndarray, score: np.ndarray, patients: np.ndarray, threshold: float, n_resamples: int = 1000,
                  seed: int = 0, level: float = 0.95, weights: np.ndarray | None = None) -> dict:
    """{"sensitivity": (low, high), "specificity": (low, high)} at `threshold`: patient-bootstrap percentile
    intervals, except where a rate is exactly 0 or 1. There every resample agrees, and the bootstrap's
    zero-width interval would claim certainty from a handful of patients ("sensitivity 100%, 95% CI
    100-100%"); such a rate gets the Clopper-Pearson exact interval (scipy) of its hits over the patients it
    is measured on (positives' patients for sensitivity), the units the bootstrap resamples."""
    from scipy.stats import binomtest

    y, score, patients = np.asarray(y), np.asarray(score, float), np.asarray(patients)
    cis = {}
    for name, metric, cls in (("sensitivity", sensitivity_at(threshold), 1), ("specificity", specificity_at(threshold), 0)):
        point, low, high = bootstrap_ci(y, score, patients, metric, n_resamples, seed, level, weights)
        n = len(np.unique(patients[y == cls]))
        if point in (0.0, 1.0) and n:  # then every resample agrees: low == high
            exact = binomtest(int(point) * n, n).proportion_ci(level, method="exact")
            low, high = float(exact.low), float(exact.high)
        cis[name] = (low, high)
    return cis
