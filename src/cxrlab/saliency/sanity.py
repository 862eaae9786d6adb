"""Model-parameter randomisation test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

Layers are re-initialised one after another from the output down (cascading). A method whose maps
stay similar after the weights are destroyed explains the image, not the model: it fails.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from .methods import compute_maps, explainable_copy

FAIL_SPEARMAN = 0.5  # mean rank correlation with the trained model's maps, once every layer is random


def layers_top_down(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Parameterised leaf layers (conv, linear, norm) from the output towards the input."""
    leaves = [(n, m) for n, m in model.named_modules()
              if not list(m.children()) and any(True for _ in m.parameters(recurse=False))]
    return leaves[::-1]


def _reinit(module: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters(recurse=False):
            if name == "weight" and p.dim() > 1:
                nn.init.kaiming_normal_(p, generator=generator)
            else:
                p.normal_(0, 0.1, generator=generator)


def similarity(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean Spearman rank correlation and SSIM between two stacks of maps (N x H x W in [0, 1])."""
    rs, ss = [], []
    for x, y in zip(a, b):
        if x.min() == x.max() or y.min() == y.max():
            r = 0.0  # a constant map carries no ranking
        else:
            r = spearmanr(x.ravel(), y.ravel()).statistic
        rs.append(0.0 if np.isnan(r) else float(r))
        ss.append(float(structural_similarity(x, y, data_range=1.0)))
    return float(np.mean(rs)), float(np.mean(ss))


MapFn = Callable[[nn.Module, torch.Tensor], np.ndarray]


def _map_fn(method, target_layer_name: str | None) -> MapFn:
    if callable(method):
        return method
    from .methods import resolve_layer

    return lambda model, batch: compute_maps(model, batch, method, resolve_layer(model, target_layer_name))


def cascading_randomization(model: nn.Module, batch: torch.Tensor, methods: dict[str, object],
                            target_layer_name: str | None = None, seed: int = 0) -> pd.DataFrame:
    """One row per (method, randomised-down-to layer): Spearman and SSIM against the trained maps.
    `methods` maps a display name to a method name or to a callable(model, batch) -> maps."""
    model = explainable_copy(model)
    fns = {name: _map_fn(m, target_layer_name) for name, m in methods.items()}
    reference = {name: fn(model, batch) for name, fn in fns.items()}
    randomised = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    modules = dict(randomised.named_modules())
    for step, (layer, _) in enumerate(layers_top_down(model), start=1):
        _reinit(modules[layer], gen)
        for name, fn in fns.items():
            r, s = similarity(reference[name], fn(randomised, batch))
            rows.append({"method": name, "step": step, "randomised_down_to": layer, "spearman": r, "ssim": s})
    return pd.DataFrame(rows)


def verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """Per method: similarity once every layer is random, and pass/fail."""
    last = table[table["step"] == table["step"].max()].set_index("method")
    return pd.DataFrame({"spearman_all_random": last["spearman"], "ssim_all_random": last["ssim"],
                         "passes": last["spearman"] < FAIL_SPEARMAN})
