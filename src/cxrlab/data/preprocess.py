"""Normalisation of uint8 image batches, done on tensors (per batch, not per image in Python)."""

from __future__ import annotations

import torch

IMAGENET_MEAN = 0.485, 0.456, 0.406
IMAGENET_STD = 0.229, 0.224, 0.225


def normalize(batch: torch.Tensor, mode: str, channels: int = 1) -> torch.Tensor:
    """uint8 N x 1 x H x W -> float32 N x C x H x W.

    standardize: each image to zero mean, unit variance (the lesson's per-image standardisation);
    unit: [0, 1]; imagenet: [0, 1], replicated to 3 channels, ImageNet mean/std (pretrained backbones).
    """
    x = batch.float().div_(255.0)
    if mode == "standardize":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        x = (x - mean) / std
    elif mode == "imagenet":
        x = x.expand(-1, 3, -1, -1)
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std
    elif mode != "unit":
        raise ValueError(f"unknown normalization {mode!r}")
    return x.expand(-1, channels, -1, -1).contiguous() if channels != 1 else x
