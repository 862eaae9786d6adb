"""Temperature scaling (Guo et al. 2017): fitted on validation scores as part of a run's operating
point, applied by every command that scores an image."""

from __future__ import annotations

import numpy as np
import torch


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
