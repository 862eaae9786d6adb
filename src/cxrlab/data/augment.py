"""Training-time augmentation from the config: torchvision's RandomAffine and ColorJitter, as configured
here, computed for a whole batch at once (`BatchAugment`), one random draw per image.

Test-time views (`tta_views`, `with_views`) reuse the same ranges on whole batches: a few fixed
transforms, each applied alike to every image."""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..config import AugmentConfig

# torchvision is not imported here: its __init__ imports its models and ops, and with them torch._dynamo (1.1 s of
# every augmented `cxrlab train` on this CPU; BENCHMARKS.md, sessions 4 and 15). The one helper it gave this module,
# the inverse affine matrix, is `_inverse_affine` below; tests check it and the batches against torchvision's.


class BatchAugment:
    """v2.RandomAffine(rotation, translate, scale, shear; nearest, fill 0), then v2.ColorJitter(brightness,
    contrast) in its random order, then (if on) a horizontal flip: the same transforms, parameter
    distributions and pixel arithmetic as torchvision's, for uint8 batches N x 1 x H x W (or one 1 x H x W
    image), drawn from torch's global generator as torchvision does.

    Written for batches because torchvision's v2 transforms draw one set of parameters per call: per
    image in Python they were most of the default recipe's augmentation cost (BENCHMARKS.md). Here the
    affine is one grid_sample call over the batch (the sampling grids are torchvision's own, per image) and
    the colour changes are tensor ops. Given the same parameters, each image is torchvision's result bit
    for bit (tests). An earlier batched version (session 2) used its own affine matrices, bilinear
    sampling and float colour arithmetic, and lost test AUC for a reason never found; this one leaves no
    difference to find."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg
        if cfg.hflip:
            warnings.warn("horizontal flip is on: flipped chest X-rays put the heart on the right, which is "
                          "anatomically wrong (situs inversus is rare); leave it off unless you know why.",
                          stacklevel=3)

    def params(self, n: int, height: int, width: int) -> dict[str, torch.Tensor]:
        """n images' draws, each from torchvision's distribution: angle U(-r, r) degrees; shifts of
        round(U(-f, f) x size) pixels; scale U(1 - z, 1 + z); x shear U(-s, s) degrees; brightness and
        contrast factors U(1 - b, 1 + b); brightness before contrast with probability 1/2 (ColorJitter's
        random order); a flip with probability 1/2 when hflip is on."""
        c = self.cfg

        def uniform(r: float, centre: float = 0.0, low: float = -np.inf) -> torch.Tensor:
            return torch.empty(n, dtype=torch.float64).uniform_(max(centre - r, low), centre + r)

        return {"angle": uniform(c.rotation), "tx": uniform(c.shift * width).round(),
                "ty": uniform(c.shift * height).round(), "scale": uniform(c.zoom, 1.0), "shear": uniform(c.shear),
                "brightness": uniform(c.brightness, 1.0, low=0.0), "contrast": uniform(c.contrast, 1.0, low=0.0),
                "brightness_first": torch.rand(n) < 0.5, "flip": (torch.rand(n) < 0.5) & c.hflip}

    def __call__(self, images: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        single = images.dim() == 3
        x = images[None] if single else images
        n, _, h, w = x.shape
        p = self.params(n, h, w) if params is None else params
        out = _color(_affine(x, p), p)
        if p["flip"].any():
            out = torch.where(p["flip"].view(-1, 1, 1, 1), out.flip(-1), out)
        return out[0] if single else out


def _affine(x: torch.Tensor, p: dict, bmm: bool = False) -> torch.Tensor:
    """torchvision's affine_image (nearest, fill 0) with each image's own matrix, as one grid_sample; the
    result as floats holding whole values 0-255 (what torchvision rounds and casts to uint8). bmm: the grid
    by torchvision's bmm (`_affine_grid`)."""
    n, _, h, w = x.shape
    theta = torch.tensor([image_matrix(p, i) for i in range(n)], dtype=torch.float32)
    grid = _affine_grid(theta, h, w, bmm)
    out = torch.nn.functional.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round_()  # fill 0 is grid_sample's zero padding


def _affine_grid(theta: torch.Tensor, h: int, w: int, bmm: bool = False) -> torch.Tensor:
    """torchvision's _affine_grid for N images at once (N x 6 float32 inverse matrices -> the N x H x W x 2
    sampling grid): its base grid of pixel centres (x, y, 1) times each matrix rescaled to grid_sample's [-1, 1],
    (x * a + y * b) + t per coordinate. torchvision multiplies them with bmm; here they are those float32
    products and sums, separable in rows and columns and made as two planes per image (grid_sample reads the
    grid through its strides), because that bmm, of an inner dimension of 3, was half of the augmentation's
    time (9 of 17.6 ms a batch of 16 at 256 px on an AMD EPYC, where MKL's gemm computes exactly these
    operations; BENCHMARKS.md, session 17)."""
    n = len(theta)
    xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w).view(1, 1, 1, w)
    ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h).view(1, 1, h, 1)
    rescaled = theta.view(n, 2, 3).transpose(1, 2).div(torch.tensor([0.5 * w, 0.5 * h]))
    if bmm:  # torchvision's own call, so its rounding on any CPU: for grids made once (the test-time views)
        base = torch.stack([xs.expand(1, 1, h, w), ys.expand(1, 1, h, w), torch.ones(1, 1, h, w)], -1)
        return base.view(1, h * w, 3).expand(n, -1, -1).bmm(rescaled).view(n, h, w, 2)
    a, b, t = rescaled.unbind(1)
    grid = torch.add(xs * a.reshape(n, 2, 1, 1), ys * b.reshape(n, 2, 1, 1)).add_(t.reshape(n, 2, 1, 1))
    return grid.permute(0, 2, 3, 1)


def image_matrix(p: dict, i: int) -> list[float]:
    """Image i's inverse affine matrix (`_inverse_affine`) from a batch's drawn parameters."""
    return _inverse_affine(float(p["angle"][i]), float(p["tx"][i]), float(p["ty"][i]), float(p["scale"][i]),
                           float(p["shear"][i]))


def _inverse_affine(angle: float, tx: float, ty: float, scale: float, shear_x: float) -> list[float]:
    """torchvision's _get_inverse_affine_matrix(center=[0, 0], angle, [tx, ty], scale, [shear_x, 0]), the same
    float operations in the same order: the 2 x 3 matrix taking output pixels (from the centre) to input ones,
    M^-1 = C RSS^-1 C^-1 T^-1 with RSS = rotation(angle) scale shear_x (degrees; y-shear 0, as RandomAffine
    draws it here)."""
    rot, sx, sy = math.radians(angle), math.radians(shear_x), math.radians(0.0)
    cos_sy, tan_sx, rot_minus_sy = math.cos(sy), math.tan(sx), rot - sy
    a = math.cos(rot_minus_sy) / cos_sy
    b = -(a * tan_sx + math.sin(rot))
    c = math.sin(rot_minus_sy) / cos_sy
    d = math.cos(rot) - c * tan_sx
    matrix = [d / scale, -b / scale, 0.0, -c / scale, a / scale, 0.0]
    matrix[2] += 0.0 - matrix[0] * (0.0 + tx) - matrix[1] * (0.0 + ty)
    matrix[5] += 0.0 - matrix[3] * (0.0 + tx) - matrix[4] * (0.0 + ty)
    return matrix


def _color(x: torch.Tensor, p: dict) -> torch.Tensor:
    """ColorJitter's brightness and contrast, in each image's order, with torchvision's uint8 arithmetic
    (float products, clamped to 255 and truncated after each step): brightness x * b; contrast
    x * c + mean * (1 - c). x holds whole values 0-255 as floats; returns uint8.

    Each step is x * f + mean * g for the whole batch, (f, g) = (b, 0) or (c, 1 - c) per image: mean * 0 adds an
    exact zero, so a brightness step is torchvision's product. Truncation is floor (the values are not negative),
    and the last one the int32 cast, because ATen's trunc and float-to-uint8 kernels are not vectorised (1 ms
    each a batch of 16 at 256 px, floor 0.09 ms)."""
    brightness, contrast = p["brightness"].to(torch.float32), p["contrast"].to(torch.float32)
    blend = (1.0 - p["contrast"]).to(torch.float32)
    for step, is_brightness in enumerate((p["brightness_first"], ~p["brightness_first"])):
        factor = torch.where(is_brightness, brightness, contrast).view(-1, 1, 1, 1)
        mean_weight = blend.masked_fill(is_brightness, 0.0).view(-1, 1, 1, 1)
        mean = x.mean(dim=(-3, -2, -1), keepdim=True)
        x = x.mul(factor).add_(mean.mul_(mean_weight)).clamp_(0, 255)
        if step == 0:
            x = x.floor_()
    return x.to(torch.int32).to(torch.uint8)


def build_augment(cfg: AugmentConfig) -> BatchAugment | None:
    """The configured augmentation, for a uint8 batch N x 1 x H x W or one 1 x H x W image; None when off."""
    return BatchAugment(cfg) if cfg.enabled else None


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


def _view_params(views: tuple[View, ...], height: int, width: int) -> dict:
    """The views as `_affine`'s per-image parameters, translations rounded to whole pixels as torchvision's
    RandomAffine makes them."""
    def column(values) -> torch.Tensor:  # float64: the views' Python floats exactly
        return torch.tensor(list(values), dtype=torch.float64)

    return {"angle": column(v.angle for v in views), "scale": column(v.scale for v in views),
            "tx": column(round(v.translate[0] * width) for v in views),
            "ty": column(round(v.translate[1] * height) for v in views), "shear": column(v.shear for v in views)}


@functools.lru_cache(maxsize=16)
def _view_maps(views: tuple[View, ...], height: int, width: int) -> torch.Tensor:
    """Where each output pixel of each view comes from: len(views) * H * W numbers, 1 + the source pixel's
    index, 0 for torchvision's fill. Made by the augmentation's nearest-neighbour affine (torchvision's, bit
    for bit), applied to images of row and column numbers (float32 holds them exactly), so a gather through
    the map is its result."""
    rows = torch.arange(1, height + 1, dtype=torch.float32).view(height, 1).expand(height, width)
    cols = torch.arange(1, width + 1, dtype=torch.float32).view(1, width).expand(height, width)
    coords = torch.stack([rows, cols])[None].expand(len(views), 2, height, width)  # one copy per view
    r, c = _affine(coords, _view_params(views, height, width), bmm=True).long().unbind(1)
    return torch.where(r > 0, (r - 1) * width + c, 0).view(-1)  # a fill pixel has row and column 0


def with_views(batch: torch.Tensor, views: list[View]) -> torch.Tensor:
    """uint8 N x 1 x H x W -> (1 + len(views)) * N images: the batch itself, then each view of it:
    torchvision's affine, brightness and contrast (and flip), bit for bit (tests).

    The geometry of every view is a gather through fixed maps (`_view_maps`) instead of torchvision's
    affine per view, whose many small operations per call took 39% of a server's batch under load against
    20% alone (BENCHMARKS.md, session 13). The colour is torchvision's uint8 arithmetic on floats holding whole
    values (x * b, clamped and truncated; then x * c + mean * (1 - c), clamped and truncated), for all views at
    once: per view, with uint8 round trips, it was 26 ms of 8 images' 72 views, more than half the forward
    pass (BENCHMARKS.md, session 17)."""
    if not views:
        return batch
    n, c, h, w = batch.shape
    if c != 1:
        raise ValueError(f"test-time views take one-channel uint8 batches, got {c} channels")
    k = len(views)
    maps = _view_maps(tuple(views), h, w).view(k, h * w)
    padded = torch.cat([batch.new_zeros(n, 1), batch.reshape(n, h * w)], 1)  # index 0: torchvision's fill
    # view, image, pixel
    x = torch.gather(padded.expand(k, n, h * w + 1), 2, maps.view(k, 1, h * w).expand(k, n, h * w))

    def per_view(values) -> torch.Tensor:
        return torch.tensor(list(values), dtype=torch.float32).view(k, 1, 1)

    x = torch.mul(x, per_view(v.brightness for v in views)).clamp_(0, 255).floor_()  # F.adjust_brightness
    mean = x.mean(dim=-1, keepdim=True)  # F.adjust_contrast: each view of each image with its mean
    x = x.mul_(per_view(v.contrast for v in views)).add_(mean.mul_(per_view(1.0 - v.contrast for v in views)))
    out = torch.empty((1 + k) * n, 1, h, w, dtype=torch.uint8)
    out[:n] = batch
    out[n:].view(k, n, h * w).copy_(x.clamp_(0, 255).to(torch.int32))  # int32 truncates, as uint8 does
    for v, view in enumerate(views):
        if view.flip:
            out[(1 + v) * n:(2 + v) * n] = out[(1 + v) * n:(2 + v) * n].flip(-1)
    return out


def mean_over_views(values: torch.Tensor, views: int) -> torch.Tensor:
    """(1 + views) * N values (or rows of K values), in `with_views` order -> N means (N x K)."""
    return values.reshape(1 + views, -1, *values.shape[1:]).mean(0)
