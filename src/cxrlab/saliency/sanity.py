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
PASS_RULE = (f"a method fails when its maps keep a mean Spearman rank correlation >= {FAIL_SPEARMAN} with the trained "
             "model's maps at the last step whose model still responds to its input (degenerate steps, where "
             "the output no longer depends on the input, are not compared)")


def layers_top_down(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Parameterised leaf layers (conv, linear, norm) from the output towards the input."""
    leaves = [(n, m) for n, m in model.named_modules()
              if not list(m.children()) and any(True for _ in m.parameters(recurse=False))]
    return leaves[::-1]


def reinitialise(module: nn.Module, seed: int) -> None:
    """The layer as a freshly built one has it: its own initialisation (`reset_parameters`), seeded,
    and its buffers too: a batch-norm layer gets fresh running statistics (mean 0, variance 1), not
    the trained ones. Keeping trained statistics under random weights is what made every input give
    one logit in the old check."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()  # batch norm: also reset_running_stats()
        else:
            for name, p in module.named_parameters(recurse=False):
                if p.dim() > 1:
                    nn.init.kaiming_normal_(p)
                else:
                    p.normal_(0, 0.1)
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()


def responds_to_input(model: nn.Module, batch: torch.Tensor, tol: float = 1e-6) -> bool:
    """Does the model's output still differ between the images (and a blank and a noise image)? A model
    that gives every input one logit has nothing left for a saliency map to explain."""
    probe = torch.cat([batch, torch.zeros_like(batch[:1]), torch.randn_like(batch[:1])])
    with torch.no_grad():
        out = model.eval()(probe).float().reshape(-1)
    return bool((out.max() - out.min()) > tol * (1 + out.abs().max()))


def _hog(x: np.ndarray) -> np.ndarray:
    from skimage.feature import hog

    cell = max(4, x.shape[0] // 16)
    return hog(x, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(1, 1), feature_vector=True)


def signed_gradcam(model: nn.Module, batch: torch.Tensor, layer: nn.Module) -> np.ndarray:
    """Grad-CAM before its ReLU, sum_k mean(d logit / d A_k) A_k, scaled by its largest magnitude to
    [-1, 1] and upsampled: the signed ("diverging") map Adebayo et al. compare beside the absolute one.
    pytorch-grad-cam returns only the rectified map, so this one is computed here."""
    acts = {}
    handle = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    try:
        with torch.enable_grad():
            x = batch.clone().requires_grad_(True)
            logits = model.eval()(x).reshape(-1)
            grads = torch.autograd.grad(logits.sum(), acts["a"])[0]
    finally:
        handle.remove()
    cam = (grads.mean(dim=(2, 3), keepdim=True) * acts["a"]).sum(1, keepdim=True).detach()
    cam = nn.functional.interpolate(cam, size=batch.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    scale = cam.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    return (cam / scale).numpy().astype(np.float32)


def similarity(a: np.ndarray, b: np.ndarray, signed: bool = False) -> tuple[float, float, float]:
    """Mean Spearman rank correlation, SSIM, and Pearson correlation of histograms of oriented gradients
    (Adebayo et al.'s three measures) between two stacks of maps (N x H x W in [0, 1], or in [-1, 1]
    when `signed`)."""
    rs, ss, hs = [], [], []
    for x, y in zip(a, b):
        if x.min() == x.max() or y.min() == y.max():
            r = h = 0.0  # a constant map carries no ranking and no edges
        else:
            r = spearmanr(x.ravel(), y.ravel()).statistic
            hx, hy = _hog(x), _hog(y)
            h = np.corrcoef(hx, hy)[0, 1] if hx.std() > 0 and hy.std() > 0 else 0.0
        rs.append(0.0 if np.isnan(r) else float(r))
        hs.append(0.0 if np.isnan(h) else float(h))
        ss.append(float(structural_similarity(x, y, data_range=2.0 if signed else 1.0)))
    return float(np.mean(rs)), float(np.mean(ss)), float(np.mean(hs))


def maps_differ_between_images(maps: np.ndarray, tol: float = 1e-3) -> bool:
    """Are the maps of different images different? One fixed pattern for every input is degenerate."""
    return len(maps) < 2 or float(np.abs(maps - maps[:1]).max()) > tol


MapFn = Callable[[nn.Module, torch.Tensor], np.ndarray]


def _map_fn(method, target_layer_name: str | None) -> MapFn:
    if callable(method):
        return method
    from .methods import resolve_layer

    return lambda model, batch: compute_maps(model, batch, method,
                                             resolve_layer(model, target_layer_name, batch.shape[-1]))


def cascading_randomization(model: nn.Module, batch: torch.Tensor, methods: dict[str, object],
                            target_layer_name: str | None = None, seed: int = 0) -> pd.DataFrame:
    """One row per (method, randomised-down-to layer): Spearman, SSIM and HOG correlation against the
    trained maps, whether the randomised model still responds to its input, whether its maps still
    differ between images, and the step's verdict (`passes`, `fails` or `degenerate`).
    `methods` maps a display name to a method name or to a callable(model, batch) -> maps."""
    model = explainable_copy(model)
    fns = {name: _map_fn(m, target_layer_name) for name, m in methods.items()}
    if methods.get("gradcam") == "gradcam":  # the signed map beside the absolute one (Adebayo et al.)
        from .methods import resolve_layer

        fns["gradcam (signed)"] = lambda m, b: signed_gradcam(m, b, resolve_layer(m, target_layer_name, b.shape[-1]))
    reference = {name: fn(model, batch) for name, fn in fns.items()}
    randomised = copy.deepcopy(model)
    rows = []
    modules = dict(randomised.named_modules())
    for step, (layer, _) in enumerate(layers_top_down(model), start=1):
        reinitialise(modules[layer], seed * 1000 + step)
        responds = responds_to_input(randomised, batch)
        for name, fn in fns.items():
            maps = fn(randomised, batch)
            r, s, h = similarity(reference[name], maps, signed=name.endswith("(signed)"))
            varies = maps_differ_between_images(maps)
            verdict = "degenerate" if not (responds and varies) else ("fails" if r >= FAIL_SPEARMAN else "passes")
            rows.append({"method": name, "step": step, "randomised_down_to": layer, "spearman": r, "ssim": s,
                         "hog": h, "model_responds": responds, "maps_vary": varies, "verdict": verdict})
    return pd.DataFrame(rows)


def verdicts(table: pd.DataFrame) -> pd.DataFrame:
    """Per method, at the last step that is not degenerate (see PASS_RULE): its similarities and
    whether it passes; `undetermined` when every step is degenerate."""
    out = {}
    for method, rows in table.groupby("method", sort=False):
        usable = rows[rows["verdict"] != "degenerate"]
        if usable.empty:
            out[method] = {"step": None, "randomised_down_to": None, "spearman": float("nan"), "ssim": float("nan"),
                           "hog": float("nan"), "degenerate_steps": len(rows), "verdict": "undetermined",
                           "passes": False}
            continue
        last = usable.iloc[-1]
        out[method] = {"step": int(last["step"]), "randomised_down_to": last["randomised_down_to"],
                       "spearman": last["spearman"], "ssim": last["ssim"], "hog": last["hog"],
                       "degenerate_steps": int((rows["verdict"] == "degenerate").sum()),
                       "verdict": "passes" if last["spearman"] < FAIL_SPEARMAN else "fails",
                       "passes": bool(last["spearman"] < FAIL_SPEARMAN)}
    return pd.DataFrame.from_dict(out, orient="index")
