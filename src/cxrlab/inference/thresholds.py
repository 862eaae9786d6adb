"""Decision thresholds, chosen on validation data only, then applied unchanged to test data."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from ..errors import ConfigError

POLICY_HELP = "0.5, youden, sensitivity:0.95 (screening: miss few sick patients), or fixed:X"


def choose_threshold(policy: str, y: np.ndarray, score: np.ndarray) -> float:
    """The threshold that `policy` picks on (y, score). `sensitivity:S` returns the highest threshold
    whose sensitivity is at least S, i.e. the best specificity that still catches S of the positives."""
    policy = policy.strip().lower()
    if policy == "0.5":
        return 0.5
    if policy.startswith("fixed:"):
        value = _number(policy, policy.split(":", 1)[1])
        if not 0 <= value <= 1:
            raise ConfigError(f"threshold policy {policy!r}: the value must be in [0, 1]")
        return value
    y, score = np.asarray(y).astype(int), np.asarray(score, dtype=float)
    if len(np.unique(y)) < 2:
        raise ConfigError(f"threshold policy {policy!r} needs both classes in the validation data")
    if policy == "youden":
        fpr, tpr, thr = roc_curve(y, score)
        return float(np.clip(thr[np.argmax(tpr - fpr)], 0, 1))
    if policy.startswith("sensitivity:"):
        target = _number(policy, policy.split(":", 1)[1])
        if not 0 < target <= 1:
            raise ConfigError(f"threshold policy {policy!r}: sensitivity must be in (0, 1]")
        positives = np.sort(score[y == 1])
        # the k-th smallest positive score, k chosen so that at least `target` of positives lie at or above it
        k = int(np.floor((1 - target) * len(positives) + 1e-9))
        cut = positives[min(k, len(positives) - 1)]
        # halfway down to the next lower score: the same validation counts, with a margin for new data
        below = score[score < cut]
        return float((cut + below.max()) / 2) if len(below) else float(cut)
    raise ConfigError(f"unknown threshold policy {policy!r}; use {POLICY_HELP}")


def _number(policy: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"threshold policy {policy!r}: {text!r} is not a number") from None
