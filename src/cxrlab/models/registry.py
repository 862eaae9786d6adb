"""`create_model(name, ...)`: the lesson's networks by name, any other name goes to timm."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, CxrlabError
from .seed_cnn import KaggleCNN, SeedCNN

OWN_MODELS = {"seed-cnn", "seed-cnn-bn", "kaggle-cnn"}
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


def model_spec(cfg) -> ModelSpec:
    """The spec a training config (`TrainConfig`) asks for: what a run directory needs to rebuild its model."""
    channels = 3 if cfg.data.normalization == "imagenet" else 1
    return ModelSpec(cfg.model, channels, cfg.data.image_size, cfg.data.normalization, cfg.dropout)


class TimmClassifier(nn.Module):
    """A timm backbone (global average pooled features) with the seeds' head: Dense + ReLU,
    dropout, one logit."""

    def __init__(self, name: str, in_chans: int, pretrained: bool, hidden: int, dropout: float):
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
                                  nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def create_model(spec: ModelSpec, pretrained: str | None = None, weights: str | Path | None = None) -> nn.Module:
    """Build the model of `spec`. `pretrained='imagenet'` loads timm's weights (needs internet once);
    `weights` loads a local state dict into the backbone without executing code from the file."""
    if spec.name in ("seed-cnn", "seed-cnn-bn"):
        model: nn.Module = SeedCNN(spec.in_chans, batch_norm=spec.name.endswith("-bn"), dropout=spec.dropout)
    elif spec.name == "kaggle-cnn":
        model = KaggleCNN(spec.in_chans, spec.image_size)
    else:
        model = TimmClassifier(spec.name, spec.in_chans, pretrained == "imagenet", spec.head_hidden, spec.dropout)
    if pretrained not in (None, "imagenet"):
        raise ConfigError(f"--pretrained must be 'imagenet' or omitted, got {pretrained!r}")
    if pretrained and spec.name in OWN_MODELS:
        raise ConfigError(f"{spec.name} has no pretrained weights; use a timm backbone such as resnet18")
    if weights:
        from ..checkpoint import load_state_dict

        target = model.backbone if isinstance(model, TimmClassifier) else model
        state = load_state_dict(weights)
        if not set(state) & set(target.state_dict()):
            raise CxrlabError(f"{weights}: none of its tensors match {spec.name}'s backbone "
                              f"(e.g. it has {next(iter(state), 'nothing')}).")
        try:
            target.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches: another architecture or in_chans
            raise CxrlabError(f"{weights}: does not fit {spec.name} (in_chans={spec.in_chans}): "
                              f"{str(exc).splitlines()[-1].strip()}") from None
    return model


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
    return model.backbone if isinstance(model, TimmClassifier) else model.features


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def list_models() -> list[str]:
    return sorted(OWN_MODELS) + TIMM_EXAMPLES
