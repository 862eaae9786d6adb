"""Training-time augmentation from the config, with torchvision's v2 transforms, one image at a time
in the Dataset.

A batched version on tensors (one affine_grid/grid_sample call per batch) was 30x cheaper per image,
and matched these transforms' geometry statistics, but its models scored lower on NIH effusion test
patients (test AUC 0.75-0.76 in 3 runs against 0.88-0.91 in 2 runs, same split and seed; cause not
found), so the measured-good path stays. See BENCHMARKS.md.

Test-time views (`tta_views`, `with_views`) reuse the same ranges on whole batches: a few fixed
transforms, each applied alike to every image."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..config import AugmentConfig

# torchvision is imported where a transform is made, not with this module: its __init__ imports its models and
# ops, and with them torch._dynamo (2.5 s of a lesson-recipe `cxrlab train`, which never augments; BENCHMARKS.md)


def build_augment(cfg: AugmentConfig) -> v2.Compose | None:
    """A transform for uint8 1 x H x W tensors, or None when augmentation is off."""
    if not cfg.enabled:
        return None
    from torchvision.transforms import v2

    steps = [
        v2.RandomAffine(degrees=cfg.rotation, translate=(cfg.shift, cfg.shift),
                        scale=(1 - cfg.zoom, 1 + cfg.zoom), shear=cfg.shear),
        v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast),
    ]
    if cfg.hflip:
        warnings.warn("horizontal flip is on: flipped chest X-rays put the heart on the right, which is "
                      "anatomically wrong (situs inversus is rare); leave it off unless you know why.",
                      stacklevel=2)
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


@dataclass(frozen=True)
class View:
    """One test-time view: the same transform for every image of a batch."""

    angle: float
    translate: tuple[float, float]  # fractions of width and height
    scale: float
    shear: float
    brightness: float
    contrast: float
    flip: bool = False


def tta_views(cfg: AugmentConfig, copies: int, seed: int = 0) -> list[View]:
    """`copies` views drawn once, seeded, from the training augmentation's ranges. Fixed views rather
    than a fresh draw per image: an image's score then does not depend on the batch it was scored in,
    so evaluation, `cxrlab predict` and the server give the same score."""
    rng = np.random.default_rng(seed)

    def draw(r: float) -> float:
        return float(rng.uniform(-r, r))

    return [View(draw(cfg.rotation), (draw(cfg.shift), draw(cfg.shift)), 1 + draw(cfg.zoom), draw(cfg.shear),
                 1 + draw(cfg.brightness), 1 + draw(cfg.contrast), bool(cfg.hflip and rng.random() < 0.5))
            for _ in range(copies)]


def with_views(batch: torch.Tensor, views: list[View]) -> torch.Tensor:
    """uint8 N x 1 x H x W -> (1 + len(views)) * N images: the batch itself, then each view of it."""
    h, w = batch.shape[-2:]
    out = [batch]
    if views:
        from torchvision.transforms.v2 import functional as F
    for v in views:
        x = F.affine(batch, angle=v.angle, translate=[round(v.translate[0] * w), round(v.translate[1] * h)],
                     scale=v.scale, shear=[v.shear, 0.0])
        x = F.adjust_contrast(F.adjust_brightness(x, v.brightness), v.contrast)
        out.append(F.horizontal_flip(x) if v.flip else x)
    return torch.cat(out)


def mean_over_views(values: torch.Tensor, views: int) -> torch.Tensor:
    """(1 + views) * N values (or rows of K values), in `with_views` order -> N means (N x K)."""
    return values.reshape(1 + views, -1, *values.shape[1:]).mean(0)
