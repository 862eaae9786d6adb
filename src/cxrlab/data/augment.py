"""Training-time augmentation from the config, with torchvision's v2 transforms, one image at a time
in the Dataset.

A batched version on tensors (one affine_grid/grid_sample call per batch) was 30x cheaper per image,
and matched these transforms' geometry statistics, but its models scored lower on NIH effusion test
patients (test AUC 0.75-0.76 in 3 runs against 0.88-0.91 in 2 runs, same split and seed; cause not
found), so the measured-good path stays. See BENCHMARKS.md."""

from __future__ import annotations

import warnings

from torchvision.transforms import v2

from ..config import AugmentConfig


def build_augment(cfg: AugmentConfig) -> v2.Compose | None:
    """A transform for uint8 1 x H x W tensors, or None when augmentation is off."""
    if not cfg.enabled:
        return None
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
