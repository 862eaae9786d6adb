"""Normalisation of uint8 image batches, done on tensors (per batch, not per image in Python): the
training and inference path. `images.normalize_array` is the same function in numpy, for the exported
model's standalone predictor."""

from __future__ import annotations

import torch

from .images import IMAGENET_MEAN, IMAGENET_STD  # one definition, shared with the torch-free path


def normalize(batch: torch.Tensor, mode: str, channels: int = 1) -> torch.Tensor:
    """uint8 N x 1 x H x W -> float32 N x C x H x W.

    standardize: each image to zero mean, unit variance (the lesson's per-image standardisation);
    unit: [0, 1]; imagenet: [0, 1], replicated to 3 channels, ImageNet mean/std (pretrained backbones);
    xrv: [-1024, 1024], torchxrayvision's range (its chest X-ray weights).
    """
    if mode == "standardize":
        x = _standardize(batch.float(), whole=batch.dtype == torch.uint8)
        return x.expand(-1, channels, -1, -1).contiguous() if channels != 1 else x
    if mode == "xrv":  # torchxrayvision's `normalize(img, 255)`: [0, 255] -> [-1024, 1024]
        return batch.float().mul_(2048.0 / 255.0).sub_(1024.0).expand(-1, channels, -1, -1).contiguous()
    x = batch.float().div_(255.0)
    if mode == "imagenet":
        x = x.expand(-1, 3, -1, -1)
        mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std
    elif mode != "unit":
        raise ValueError(f"unknown normalization {mode!r}")
    return x.expand(-1, channels, -1, -1).contiguous() if channels != 1 else x


def _standardize(x: torch.Tensor, whole: bool = False) -> torch.Tensor:
    """Each image of x (0-255 floats; `whole`: whole values, as from uint8) to zero mean and unit sample std,
    in place: a sum, the centring, one dot product per image and a division, 2x faster than Tensor.std on a
    batch of 16 at 256 px, equal within 1e-5 (tests)."""
    flat = x.view(len(x), -1)
    n = flat.shape[1]
    # the exact sum: in float32 while every partial sum of whole values is below 2^24 (up to 256 x 256 px),
    # which was 0.5 against 4-20 ms for the float64 sum of 72 images (BENCHMARKS.md, session 17)
    total = flat.sum(1).double() if whole and n * 255 < 2**24 else flat.sum(1, dtype=torch.float64)
    mean = total.div_(n).float()
    flat.sub_(mean[:, None])
    var = torch.linalg.vecdot(flat, flat).div_(max(n - 1, 1))
    return x.div_(var.sqrt_().clamp_min_(255e-6).view((-1,) + (1,) * (x.dim() - 1)))  # blank images stay 0
