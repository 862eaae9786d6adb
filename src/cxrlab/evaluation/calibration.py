"""Calibration: Brier score, expected calibration error, temperature scaling fitted on validation."""

from __future__ import annotations

import numpy as np
import torch
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


def fit_temperature(y: np.ndarray, score: np.ndarray) -> float:
    """The temperature T minimising validation NLL of sigmoid(logit / T) (Guo et al. 2017)."""
    eps = 1e-7
    p = np.clip(np.asarray(score, float), eps, 1 - eps)
    logits = torch.tensor(np.log(p / (1 - p)))
    target = torch.tensor(np.asarray(y, float))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits / log_t.exp(), target)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def apply_temperature(score: np.ndarray, temperature: float) -> np.ndarray:
    eps = 1e-7
    p = np.clip(np.asarray(score, float), eps, 1 - eps)
    return 1 / (1 + np.exp(-np.log(p / (1 - p)) / temperature))
