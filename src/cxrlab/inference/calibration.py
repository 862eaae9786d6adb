"""Temperature scaling (Guo et al. 2017): fitted on validation scores as part of a run's operating
point, applied by every command that scores an image."""

from __future__ import annotations

import numpy as np

# The temperature is searched within these bounds. When validation scores separate the classes perfectly
# (a small validation split, a strong model), the likelihood keeps rising as T -> 0 and has no minimum:
# unbounded, L-BFGS walked log T off to NaN (seen on 24 validation images). At most 2x sharper: a lower
# bound of 0.05 rounded the top scores of those 24 to exactly 1.0 in float64, tying them, which changes the
# ranking that temperature scaling must keep; and a tiny split is no evidence for more confidence than that.
TEMPERATURE_BOUNDS = (0.5, 20.0)
_EPS = 1e-7


def _logits(score) -> np.ndarray:
    p = np.clip(np.asarray(score, float), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def fit_temperature(y: np.ndarray, score: np.ndarray) -> float:
    """The temperature T in TEMPERATURE_BOUNDS minimising validation NLL of sigmoid(logit / T) (Guo et al. 2017)."""
    from scipy.optimize import minimize_scalar

    logits, target = _logits(score), np.asarray(y, float)

    def nll(log_t: float) -> float:  # binary cross-entropy with logits, in the stable form
        z = logits / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, z) - target * z))

    low, high = np.log(TEMPERATURE_BOUNDS)
    return float(np.exp(minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6}).x))


def apply_temperature(score: np.ndarray, temperature: float) -> np.ndarray:
    return 1 / (1 + np.exp(-_logits(score) / temperature))
