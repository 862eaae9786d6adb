"""cxrlab's CPU speed-ups, kept apart from the models: `accelerate(model)` swaps a plain model's
layers, in place, for faster ones that compute the same function (tests), and `plain(model)` swaps
them back, for code that hooks layers (saliency) or traces the model (export). The parameters and
their names do not change, so checkpoints are the same either way.

- 2x2 max-pools become `FastMaxPool2x2`: without gradients two elementwise maxima of strided views
  (about 2x faster seed-cnn inference), with gradients the hand-written kernel (`kernels.py`) when it
  is built, else ATen's; traced, always ATen's.
- seed-cnn (no batch norm) becomes `FastSeedCNN`: its first convolution, max-pool and ReLU fused in one
  kernel, so the full-resolution feature map is never stored (with the max-pool kernel, seed-cnn
  trains about 1.7x faster on CPU, BENCHMARKS.md).

The trainer and RunModel apply it on CPU only: on CUDA the models run as written.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..models.seed_cnn import SeedCNN
from .kernels import conv1_pool, pool2x2


class FastMaxPool2x2(nn.MaxPool2d):
    """2x2 max-pool, stride 2, with the same values and gradients as ATen's max_pool2d (tests), faster on
    CPU, where ATen's kernel is slow on 8-50-channel maps and writes int64 argmax indices."""

    def __init__(self):  # built directly (tests); `accelerate` swaps the class of an existing nn.MaxPool2d(2)
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_tracing() or torch.jit.is_scripting():
            return super().forward(x)
        if x.requires_grad and torch.is_grad_enabled():
            fused = pool2x2(x)
            return super().forward(x) if fused is None else fused
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2  # odd sizes: floor, as max_pool2d does
        cols = torch.maximum(x[..., :h, 0:w:2], x[..., :h, 1:w:2])
        return torch.maximum(cols[..., 0::2, :], cols[..., 1::2, :])


class FastSeedCNN(SeedCNN):
    """seed-cnn with its first block (conv, max-pool, ReLU) fused when nothing hooks it."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self._first_block_fusable():
            h = conv1_pool(x, self.features[0], relu=True)
            if h is not None:
                for layer in itertools.islice(self.features, 3, None):  # no new Sequential per call
                    h = layer(h)
                return self.pool(h)
        return self.pool(self.features(x))

    def _first_block_fusable(self) -> bool:
        """conv, max-pool, ReLU (no batch norm between), with nothing hooked on them (a saliency
        method may read them)."""
        first = tuple(itertools.islice(self.features, 3))
        return (isinstance(first[1], nn.MaxPool2d) and isinstance(first[2], nn.ReLU)
                and not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                            or m._backward_pre_hooks for m in first))


def _is_plain_2x2_pool(m: nn.Module) -> bool:
    return (type(m) is nn.MaxPool2d and m.kernel_size in (2, (2, 2)) and m.stride in (2, (2, 2))
            and m.padding in (0, (0, 0)) and m.dilation in (1, (1, 1)) and not m.ceil_mode and not m.return_indices)


def accelerate(model: nn.Module) -> nn.Module:
    """Swap in the fast layers (in place); returns the model."""
    for m in model.modules():
        if _is_plain_2x2_pool(m):
            m.__class__ = FastMaxPool2x2
    if type(model) is SeedCNN and not any(isinstance(m, nn.BatchNorm2d) for m in model.features):
        model.__class__ = FastSeedCNN
    return model


def plain(model: nn.Module) -> nn.Module:
    """Undo `accelerate` (in place): the model as its file writes it. Returns the model."""
    for m in model.modules():
        if type(m) is FastMaxPool2x2:
            m.__class__ = nn.MaxPool2d
    if type(model) is FastSeedCNN:
        model.__class__ = SeedCNN
    return model


__all__ = ["accelerate", "plain", "FastMaxPool2x2", "FastSeedCNN"]
