"""Training-time augmentation, done per batch on tensors: one random affine (rotation, shift,
zoom, shear; nearest-neighbour sampling) and one brightness/contrast change per image, in a single
grid_sample call.

Written by hand because the libraries do not fit here: torchvision's v2 transforms draw one set of
parameters per call (per image in Python: 3.5 ms per 256 px image on this CPU, as much as a
training step), and kornia's batched version measured no faster on CPU.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ..config import AugmentConfig


class BatchAugment:
    """Callable on float images N x C x H x W in [0, 1]; returns the same shape, in [0, 1]."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg
        if cfg.hflip:
            warnings.warn("horizontal flip is on: flipped chest X-rays put the heart on the right, which is "
                          "anatomically wrong (situs inversus is rare); leave it off unless you know why.",
                          stacklevel=3)

    def _matrices(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        c = self.cfg
        u = lambda lo, hi: torch.empty(n).uniform_(lo, hi, generator=generator)  # noqa: E731
        angle = torch.deg2rad(u(-c.rotation, c.rotation))
        shear = torch.deg2rad(u(-c.shear, c.shear))
        scale = u(1 - c.zoom, 1 + c.zoom)
        tx, ty = u(-c.shift, c.shift) * 2, u(-c.shift, c.shift) * 2  # grid coordinates span [-1, 1]
        cos, sin = torch.cos(angle), torch.sin(angle)
        # output -> input sampling matrix: rotate, shear along x, then zoom (dividing zooms in)
        a = torch.stack([cos, -sin + cos * torch.tan(shear), tx], dim=1) / scale[:, None]
        b = torch.stack([sin, cos + sin * torch.tan(shear), ty], dim=1) / scale[:, None]
        a[:, 2] *= scale
        b[:, 2] *= scale
        theta = torch.stack([a, b], dim=1)
        if c.hflip:
            flip = torch.rand(n, generator=generator) < 0.5
            theta[flip, :, 0] *= -1
        return theta

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        n = x.shape[0]
        theta = self._matrices(n, generator).to(x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # nearest, as torchvision's RandomAffine defaults to: bilinear sampling would blur every training
        # image (random offsets never align with the pixel grid) while validation images stay sharp
        x = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        c = self.cfg
        bright = torch.empty(n, 1, 1, 1).uniform_(1 - c.brightness, 1 + c.brightness, generator=generator)
        contrast = torch.empty(n, 1, 1, 1).uniform_(1 - c.contrast, 1 + c.contrast, generator=generator)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * contrast.to(x) + mean).mul_(bright.to(x)).clamp_(0, 1)


def build_augment(cfg: AugmentConfig) -> BatchAugment | None:
    """The configured augmentation, or None when it is off."""
    return BatchAugment(cfg) if cfg.enabled else None


def augment_uint8(image: torch.Tensor, augment: BatchAugment) -> torch.Tensor:
    """One uint8 C x H x W image through the batch augmentation (for viewing and the per-image API)."""
    out = augment(image[None].float() / 255.0)[0]
    return (out * 255.0).round_().to(torch.uint8)

