"""Feature caching for a frozen backbone: its output does not change between epochs, so it is
computed once and the head trains on the stored vectors (the seeds recompute it every epoch)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from ..device import autocast


@torch.no_grad()
def extract_features(model, loader: DataLoader, device: torch.device, precision: str) -> TensorDataset:
    """(features, labels) of every batch of `loader`, in order, with the backbone in eval mode."""
    model.eval()
    feats, labels = [], []
    for x, y in loader:
        with autocast(device, precision):
            f = model.forward_features(x.to(device, memory_format=torch.channels_last))
        feats.append(f.float().cpu())
        labels.append(y)
    return TensorDataset(torch.cat(feats), torch.cat(labels))
