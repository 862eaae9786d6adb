"""Calibration as evaluation reports it: Brier score, expected calibration error, the reliability curve.
Temperature scaling itself is part of a run's operating point (`cxrlab.inference.calibration`)."""

from __future__ import annotations

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss


def expected_calibration_error(y: np.ndarray, score: np.ndarray, bins: int = 10) -> float:
    """Mean |observed rate - mean score| over equal-width score bins, weighted by bin size.
    (scikit-learn gives the curve, not this summary number.)"""
    y, score = np.asarray(y, float), np.asarray(score, float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(score, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(y[mask].mean() - score[mask].mean())
    return float(ece)


def calibration_summary(y: np.ndarray, score: np.ndarray, bins: int = 10) -> dict:
    frac_pos, mean_pred = calibration_curve(y, score, n_bins=bins, strategy="uniform")
    return {"brier": float(brier_score_loss(y, score)), "ece": expected_calibration_error(y, score, bins),
            "curve": {"mean_predicted": mean_pred.tolist(), "fraction_positive": frac_pos.tolist()}}
