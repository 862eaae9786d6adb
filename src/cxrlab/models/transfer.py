"""Transfer learning: freeze a backbone, or leave its last N stages trainable."""

from __future__ import annotations

from torch import nn

from .registry import TimmClassifier, backbone_of


def _stage_names(backbone: nn.Module) -> list[str]:
    """Module names of the backbone's stages, in forward order (timm's feature_info, or the
    conv layers of our own CNNs)."""
    info = getattr(backbone, "feature_info", None)
    if info is not None:
        return [f["module"] for f in info]
    return [name for name, m in backbone.named_children() if isinstance(m, nn.Conv2d)]


def set_trainable_blocks(model: nn.Module, blocks: int | None) -> None:
    """None: everything trains. 0: the backbone is frozen (feature extraction, head only).
    N > 0: the last N stages of the backbone and everything after them train; earlier ones are frozen.
    Frozen BatchNorm layers also stop updating their running statistics (see `freeze_bn_stats`)."""
    for p in model.parameters():
        p.requires_grad = True
    if blocks is None:
        return
    backbone = backbone_of(model)
    params = list(backbone.named_parameters())
    start = len(params)
    if blocks > 0:
        stages = _stage_names(backbone)
        first = stages[max(0, len(stages) - blocks)]
        start = next(i for i, (n, _) in enumerate(params) if n == first or n.startswith(first + "."))
    for i, (_, p) in enumerate(params):
        p.requires_grad = i >= start


def freeze_bn_stats(model: nn.Module) -> None:
    """Put BatchNorm layers whose parameters are frozen in eval mode (call after model.train())."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def is_timm(model: nn.Module) -> bool:
    return isinstance(model, TimmClassifier)
