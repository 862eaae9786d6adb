"""cxrlab's CPU speed-ups, kept apart from the models: `accelerate(model)` swaps a plain model's
layers, in place, for faster ones that compute the same function (tests), and `plain(model)` swaps
them back, for code that hooks layers (saliency) or traces the model (export). The parameters and
their names do not change, so checkpoints are the same either way.

- 2x2 max-pools become `FastMaxPool2x2`: without gradients two elementwise maxima of strided views
  (about 2x faster seed-cnn inference), with gradients the hand-written kernel (`kernels.py`) when it
  is built, else ATen's; traced, always ATen's.
- seed-cnn becomes `FastSeedCNN`: its first convolution, max-pool and ReLU fused in one kernel, so the
  full-resolution feature map is never stored (with the max-pool kernel, seed-cnn trains about 1.7x
  faster on CPU, BENCHMARKS.md). In seed-cnn-bn, each batch norm runs fused with the max-pool and ReLU
  after it, and the first one is folded into the first convolution, so seed-cnn-bn trains in
  channels_last with the same kernels (ATen's CPU batch norm is slow on these narrow maps).

The trainer and RunModel apply it on CPU only: on CUDA the models run as written.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ..models.seed_cnn import SeedCNN
from .kernels import _library, bn_pool, conv1_bn_pool, conv1_pool, pool2x2


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
    """seed-cnn(-bn) with each block (conv, [batch norm], max-pool, ReLU) fused where a kernel applies
    and nothing hooks the block's layers (a saliency method may read them); any other block runs its
    layers as written."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for block in _blocks(self.features):
            h = _run_block(h, block, first=h is x)
        return self.pool(h)


def _blocks(features: nn.Sequential) -> list[list[nn.Module]]:
    """The layers grouped per convolution: [conv, (batch norm), (max-pool), ReLU]."""
    blocks: list[list[nn.Module]] = []
    for m in features:
        if isinstance(m, nn.Conv2d) or not blocks:
            blocks.append([])
        blocks[-1].append(m)
    return blocks


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _fusable(block: list[nn.Module]) -> bool:
    """conv, (batch norm), 2x2 max-pool, ReLU, with nothing hooked on them."""
    kinds = [type(m) for m in block]
    middle = [nn.BatchNorm2d, FastMaxPool2x2] if len(block) == 4 else [FastMaxPool2x2]
    return (isinstance(block[0], nn.Conv2d) and kinds[1:-1] == middle and kinds[-1] is nn.ReLU
            and not any(_hooked(m) for m in block))


def _run_block(h: torch.Tensor, block: list[nn.Module], first: bool) -> torch.Tensor:
    if _fusable(block):
        conv, bn = block[0], (block[1] if len(block) == 4 else None)
        out = None
        if first:
            out = conv1_pool(h, conv, relu=True) if bn is None else conv1_bn_pool(h, conv, bn)
        if out is not None:
            return out
        h = conv(h)
        out = bn_pool(h, bn, relu=True) if bn is not None else None
        if out is not None:
            return out
        block = block[1:]
    for m in block:
        h = m(h)
    return h


def _is_plain_2x2_pool(m: nn.Module) -> bool:
    return (type(m) is nn.MaxPool2d and m.kernel_size in (2, (2, 2)) and m.stride in (2, (2, 2))
            and m.padding in (0, (0, 0)) and m.dilation in (1, (1, 1)) and not m.ceil_mode and not m.return_indices)


def accelerate(model: nn.Module) -> nn.Module:
    """Swap in the fast layers (in place); returns the model."""
    for m in model.modules():
        if _is_plain_2x2_pool(m):
            m.__class__ = FastMaxPool2x2
    if type(model) is SeedCNN:
        model.__class__ = FastSeedCNN
        if _has_batch_norm(model) and _library() is not None:
            model.cpu_channels_last_training = True  # batch norm runs in the kernels, not ATen's slow one
    return model


def runs_in_kernels(model: nn.Module) -> bool:
    """Whether an accelerated model's blocks run in cxrlab's compiled kernels (seed-cnn and seed-cnn-bn with
    the kernels built): on CPU these score faster than ONNX Runtime runs the exported model (BENCHMARKS.md)."""
    return type(model) is FastSeedCNN and _library() is not None


def _has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def plain(model: nn.Module) -> nn.Module:
    """Undo `accelerate` (in place): the model as its file writes it. Returns the model."""
    for m in model.modules():
        if type(m) is FastMaxPool2x2:
            m.__class__ = nn.MaxPool2d
    if type(model) is FastSeedCNN:
        model.__class__ = SeedCNN
        model.cpu_channels_last_training = not _has_batch_norm(model)  # as SeedCNN sets it
    return model


__all__ = ["accelerate", "plain", "runs_in_kernels", "FastMaxPool2x2", "FastSeedCNN"]
