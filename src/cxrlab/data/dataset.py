"""Torch dataset over cached uint8 images: augmentation per image, normalisation per batch."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .preprocess import normalize


class XrayDataset(Dataset):
    """Yields (uint8 1 x H x W tensor, float label). Normalise batches with `collate` or
    `normalize` so the per-pixel float work is vectorised over the batch."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, augment=None):
        self.images, self.labels, self.indices, self.augment = images, labels, np.asarray(indices), augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        row = int(self.indices[i])
        img = torch.from_numpy(np.array(self.images[row])).unsqueeze(0)
        if self.augment is not None:
            img = self.augment(img)
        return img, torch.tensor(float(self.labels[row]))


def make_collate(mode: str, channels: int = 1):
    """A DataLoader collate_fn that stacks uint8 images and normalises the batch."""

    def collate(batch):
        images = torch.stack([b[0] for b in batch])
        labels = torch.stack([b[1] for b in batch])
        return normalize(images, mode, channels), labels

    return collate
