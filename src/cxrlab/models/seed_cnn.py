"""The lesson's small CNNs, written exactly as the lesson builds them (Keras 'same' padding), in plain
PyTorch layers. cxrlab's CPU speed-ups are applied to them from outside (`cxrlab.accel`)."""

from __future__ import annotations

import torch
from torch import nn

# (out_channels, kernel) of the seed lesson's seven convolutions; a 2x2 max-pool follows the first six.
SEED_CONVS = [(8, 3), (8, 3), (12, 3), (12, 3), (20, 5), (20, 5), (50, 5)]


def keras_init(module: nn.Module) -> None:
    """Keras defaults (Glorot-uniform kernels, zero biases), as the lesson's model starts. PyTorch's
    default init is about 1.7x smaller per layer here, and the 10-layer net then sits on a plateau
    for many epochs before it learns."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SeedCNN(nn.Module):
    """seed-cnn (54,627 parameters at in_chans=1) and, with batch_norm=True, seed-cnn-bn
    (BatchNorm after each conv, before ReLU). Global average pooling makes it size-agnostic
    and gives CAM its feature maps (`features`) and weights (`head[0]`... through the MLP)."""

    def __init__(self, in_chans: int = 1, batch_norm: bool = False, dropout: float = 0.6, outputs: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_chans
        for i, (c_out, k) in enumerate(SEED_CONVS):
            layers.append(nn.Conv2d(c_in, c_out, k, padding="same", bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            # max-pool, then ReLU: the same function and gradients as the lesson's ReLU-then-pool (ReLU is
            # monotone, so it commutes with max), with the ReLU on a quarter of the values: seed-cnn
            # trains about 14% faster on CPU (BENCHMARKS.md). Parameter names are unchanged.
            if i < len(SEED_CONVS) - 1:
                layers.append(nn.MaxPool2d(2))
            layers.append(nn.ReLU())
            c_in = c_out
        self.features = nn.Sequential(*layers)
        # CPU batch norm trains slowly in channels_last on these narrow layers (training/device.py)
        self.cpu_channels_last_training = not batch_norm
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in, 128), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, outputs))
        keras_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


class KaggleCNN(nn.Module):
    """The HPC use case's from-scratch network: valid convs 16, 32, 64, 64 with BN, ReLU,
    max-pool and dropout 0.2/0.2/0.4, flatten, Dense 64, dropout 0.5, one logit."""

    def __init__(self, in_chans: int = 1, image_size: int = 224, outputs: int = 1):
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = in_chans
        for c_out, drop in ((16, 0.0), (32, 0.2), (64, 0.2), (64, 0.4)):
            blocks += [nn.Conv2d(c_in, c_out, 3), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
            if drop:
                blocks.append(nn.Dropout(drop))
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, in_chans, image_size, image_size)).numel()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, outputs))
        keras_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))
