"""Training-time augmentation from the config, with torchvision's v2 transforms."""

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
