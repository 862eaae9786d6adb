"""Backbones that know chest X-rays: torchxrayvision's DenseNet-121, trained on hundreds of thousands of
chest X-rays (`--pretrained xrv:densenet121-res224-all`), with cxrlab's head.

torchxrayvision (an optional extra, `pip install cxrlab[xrv]`) builds the network and downloads its
weights from its own release page (internet once; it caches them in ~/.torchxrayvision). Its models
take one channel at 224 px with intensities in [-1024, 1024]: the config records that preprocessing
(`normalization: xrv`, `image_size: 224`), so predict, serve and export read new images the same way.
The downloaded file is a pickled network; it is read with `torch.load(weights_only=True)`, allowing only
the layer classes of that network, so loading it runs no code from the file."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import XRV_WEIGHTS
from ..errors import ConfigError, CxrlabError

STAGES = ("denseblock1", "denseblock2", "denseblock3", "denseblock4")  # the stages fine-tuning unfreezes


def _xrv():
    try:
        import torchxrayvision
    except ImportError:
        raise ConfigError("--pretrained xrv:... needs torchxrayvision: pip install 'cxrlab[xrv]'") from None
    return torchxrayvision


class XrvClassifier(nn.Module):
    """torchxrayvision's DenseNet-121 features (ReLU, global average pool: its `features2`) with the seeds'
    head: Dense + ReLU, dropout, one logit. Built at random weights; `load_xrv_weights` fills them."""

    def __init__(self, hidden: int, dropout: float, outputs: int = 1):
        super().__init__()
        densenet = _xrv().models.DenseNet(weights=None, in_channels=1)
        self.backbone = densenet.features
        self.backbone.feature_info = [{"module": name} for name in STAGES]  # as timm backbones list theirs
        self.head = nn.Sequential(nn.Linear(densenet.classifier.in_features, hidden), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(hidden, outputs))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(F.relu(self.backbone(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def xrv_name(pretrained: str) -> str:
    """'xrv:densenet121-res224-all' -> 'densenet121-res224-all', checked against the supported weights."""
    name = pretrained.split(":", 1)[1]
    if name not in XRV_WEIGHTS:
        raise ConfigError(f"--pretrained {pretrained}: unknown torchxrayvision weights; use one of "
                          f"{', '.join('xrv:' + n for n in XRV_WEIGHTS)}")
    return name


def download_xrv_state(name: str) -> dict:
    """The state dict of torchxrayvision's weights `name`, downloaded once by torchxrayvision and read
    without executing code from the file (only its network's layer classes may be unpickled)."""
    xrv = _xrv()
    try:
        path = xrv.models.get_weights(name)
    except Exception as exc:  # requests' connection errors, a blocked host, a partial download
        raise CxrlabError(f"cannot download torchxrayvision's weights {name} ({exc.__class__.__name__}): it needs "
                          "internet once (they are then cached in ~/.torchxrayvision/models_data), or pass --weights "
                          "PATH to a local copy of the same architecture's state dict") from None
    layers = [nn.BatchNorm2d, nn.Linear, nn.ReLU, nn.Sequential, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
              nn.Conv2d, nn.Dropout, xrv.models._DenseLayer, xrv.models._DenseBlock, xrv.models._Transition,
              xrv.models.DenseNet]
    try:
        with torch.serialization.safe_globals(layers):
            network = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CxrlabError(f"{path}: cannot read torchxrayvision's weights {name} safely "
                          f"({str(exc).splitlines()[0][:200]}); delete the file to download it again") from None
    return network.state_dict() if isinstance(network, nn.Module) else network
