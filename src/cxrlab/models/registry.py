"""`create_model(spec, ...)`: the lesson's networks by name, torchxrayvision's chest X-ray DenseNet, any
other name goes to timm."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import XRV_MODEL
from ..errors import ConfigError, CxrlabError
from .seed_cnn import KaggleCNN, SeedCNN

OWN_MODELS = {"seed-cnn", "seed-cnn-bn", "kaggle-cnn", XRV_MODEL}
TIMM_EXAMPLES = ["resnet18", "resnet50", "densenet121", "efficientnet_b0", "mobilenetv3_large_100", "vgg16"]


@dataclass
class ModelSpec:
    """What a run directory records so that a new image is preprocessed exactly as in training."""

    name: str
    in_chans: int = 1
    image_size: int = 256
    normalization: str = "standardize"
    dropout: float = 0.6
    head_hidden: int = 256
    num_outputs: int = 1  # one logit per finding (multi-label), in the order config.yaml's findings list them


def model_spec(cfg) -> ModelSpec:
    """The spec a training config (`TrainConfig`) asks for: what a run directory needs to rebuild its model."""
    channels = 3 if cfg.data.normalization == "imagenet" else 1
    outputs = len(cfg.findings) if cfg.findings and cfg.findings != ["all"] else 1
    return ModelSpec(cfg.model, channels, cfg.data.image_size, cfg.data.normalization, cfg.dropout,
                     num_outputs=outputs)


class TimmClassifier(nn.Module):
    """A timm backbone (global average pooled features) with the seeds' head: Dense + ReLU,
    dropout, one logit."""

    def __init__(self, name: str, in_chans: int, pretrained: bool, hidden: int, dropout: float, outputs: int = 1):
        super().__init__()
        import timm

        try:
            self.backbone = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans)
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ConfigError(f"unknown model {name!r}: use one of {sorted(OWN_MODELS)} or a timm "
                                  f"model name such as {', '.join(TIMM_EXAMPLES)}") from None
            raise
        except OSError as exc:  # no internet / no hub access
            raise CxrlabError(f"cannot download ImageNet weights for {name} ({exc.__class__.__name__}). "
                              "Connect to the internet once (timm caches them under ~/.cache/huggingface), "
                              "or pass --weights PATH to a local .safetensors/.pth file.") from None
        self.head = nn.Sequential(nn.Linear(self.backbone.num_features, hidden), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(hidden, outputs))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


@dataclass
class WeightReport:
    """How a weights file fitted the backbone it was loaded into: tensors matched by name and shape,
    the backbone's tensors it lacked (missing) or had in another shape, and its tensors the backbone
    does not have (unexpected: e.g. the source model's own classifier, which cxrlab replaces)."""

    source: str
    matched: int
    missing: list[str]
    mismatched: list[str]
    unexpected: list[str]
    prefix: str = ""

    @property
    def complete(self) -> bool:
        return not self.missing and not self.mismatched

    def text(self) -> str:
        def some(names):
            return f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""
        return (f"{self.matched} tensors matched, {len(self.missing)} missing{some(self.missing)}, "
                f"{len(self.mismatched)} of another shape{some(self.mismatched)}, "
                f"{len(self.unexpected)} unexpected{some(self.unexpected)}")

    def to_dict(self) -> dict:
        return {"source": self.source, "matched": self.matched, "missing": self.missing,
                "mismatched": self.mismatched, "unexpected": self.unexpected, "prefix": self.prefix}


def _counted(names) -> set[str]:
    # BatchNorm's step counter is bookkeeping, not a weight: old files lack it, and it never fails a load
    return {n for n in names if not n.endswith("num_batches_tracked")}


def load_backbone_weights(target: nn.Module, state: dict, source: str, allow_partial: bool = False) -> WeightReport:
    """Load `state` into `target` strictly: every tensor of `target` must be in `state` with its shape,
    unless `allow_partial`. A common prefix (`features.` of a torchxrayvision state dict, `backbone.` of a
    cxrlab run, `module.` of DDP) is stripped when that is what makes the names match."""
    own = target.state_dict()
    prefix = max(("", "features.", "backbone.", "module.", "model."),
                 key=lambda p: sum(k[len(p):] in own for k in state if k.startswith(p)))
    renamed = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}
    fits = {k for k in _counted(renamed) & set(own) if tuple(renamed[k].shape) == tuple(own[k].shape)}
    report = WeightReport(str(source), len(fits), sorted(_counted(own) - set(renamed)),
                          sorted(k for k in _counted(renamed) & set(own) if k not in fits),
                          sorted(_counted(renamed) - set(own)), prefix)
    if not fits:
        raise CxrlabError(f"{source}: none of its tensors fit this backbone ({report.text()}); is it another architecture?")
    if not report.complete and not allow_partial:
        raise CxrlabError(f"{source}: does not fit every backbone tensor: {report.text()}. Pass "
                          "--allow-partial-weights to train with the tensors that fit (the rest start at random).")
    target.load_state_dict({k: renamed[k] for k in fits | (set(renamed) & set(own) - _counted(own))}, strict=False)
    return report


def build_model(spec: ModelSpec, pretrained: str | None = None, weights: str | Path | None = None,
                allow_partial: bool = False) -> tuple[nn.Module, WeightReport | None]:
    """The model of `spec` and, when weights were loaded into its backbone, how they fitted.
    `pretrained='imagenet'`: timm's weights (needs internet once); `'xrv:NAME'`: torchxrayvision's chest
    X-ray weights (internet once, or `weights` a local copy); `weights`: a local state dict for the
    backbone, read without executing code from the file, strictly (see `load_backbone_weights`)."""
    from .xrv import XrvClassifier, download_xrv_state, xrv_name

    if pretrained not in (None, "imagenet") and not str(pretrained).startswith("xrv:"):
        raise ConfigError(f"--pretrained must be imagenet or xrv:NAME, got {pretrained!r}")
    xrv = bool(pretrained and pretrained.startswith("xrv:"))
    if xrv and spec.name != XRV_MODEL:
        raise ConfigError(f"--pretrained {pretrained} builds {XRV_MODEL}, not {spec.name}")
    if pretrained == "imagenet" and spec.name in OWN_MODELS:
        raise ConfigError(f"{spec.name} has no pretrained weights; use a timm backbone such as resnet18")
    if spec.name in ("seed-cnn", "seed-cnn-bn"):
        model: nn.Module = SeedCNN(spec.in_chans, batch_norm=spec.name.endswith("-bn"), dropout=spec.dropout,
                                   outputs=spec.num_outputs)
    elif spec.name == "kaggle-cnn":
        model = KaggleCNN(spec.in_chans, spec.image_size, outputs=spec.num_outputs)
    elif spec.name == XRV_MODEL:
        model = XrvClassifier(spec.head_hidden, spec.dropout, outputs=spec.num_outputs)
    else:
        model = TimmClassifier(spec.name, spec.in_chans, pretrained == "imagenet", spec.head_hidden, spec.dropout,
                               spec.num_outputs)
    target = model.backbone if hasattr(model, "backbone") else model
    report = None
    if weights:
        from ..checkpoint import load_state_dict

        report = load_backbone_weights(target, load_state_dict(weights), weights, allow_partial)
    elif xrv:
        name = xrv_name(pretrained)
        report = load_backbone_weights(target, download_xrv_state(name), f"torchxrayvision {name}", allow_partial)
    return model, report


def create_model(spec: ModelSpec, pretrained: str | None = None, weights: str | Path | None = None,
                 allow_partial: bool = False) -> nn.Module:
    """`build_model` without the report."""
    return build_model(spec, pretrained, weights, allow_partial)[0]


def check_input_size(model: nn.Module, spec: ModelSpec) -> None:
    """One forward pass of a blank image: a size the network's pooling cannot take is a clear error
    before training, not a shape traceback in the first batch."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, spec.in_chans, spec.image_size, spec.image_size))
    except RuntimeError as exc:
        if "size" not in str(exc).lower():
            raise
        raise ConfigError(f"--image-size {spec.image_size} is too small for {spec.name} "
                          f"({str(exc).splitlines()[0]}); use a larger size, e.g. 128 or 256") from None
    finally:
        model.train(was_training)


def backbone_of(model: nn.Module) -> nn.Module:
    return model.backbone if hasattr(model, "backbone") else model.features


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def list_models() -> list[str]:
    return sorted(OWN_MODELS) + TIMM_EXAMPLES
