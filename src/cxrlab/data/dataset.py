"""Torch dataset over cached uint8 images; augmentation and normalisation per batch, in the collate."""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from .preprocess import normalize


class CachedRows:
    """Rows of the image cache's .npy file, read with pread. Pages of a memory map stay in the
    process's resident set once touched (an epoch over 50,000 images would hold 3.3 GB); pages read
    with pread stay in the OS file cache only, so RSS does not grow with the data set."""

    def __init__(self, images: np.memmap):
        self.path, self.offset, self.shape = images.filename, images.offset, images.shape
        self.row_bytes = int(np.prod(self.shape[1:]))
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, row: int) -> np.ndarray:
        buf = bytearray(self.row_bytes)  # the training loader reads one image at a time
        self._read_into(buf, row)
        return np.frombuffer(buf, np.uint8).reshape(self.shape[1:])

    def read(self, rows) -> np.ndarray:
        """Several rows as one uint8 array, each read straight into it."""
        out = np.empty((len(rows), *self.shape[1:]), np.uint8)
        for i, row in enumerate(rows):
            self._read_into(out[i], row)
        return out

    def _read_into(self, buf, row: int) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        if os.preadv(self._fd, [buf], self.offset + int(row) * self.row_bytes) != self.row_bytes:
            raise OSError(f"{self.path}: short read at row {row}; the image cache is damaged, delete it")

    def __getstate__(self):  # worker processes open their own descriptor
        return {**self.__dict__, "_fd": None}

    def __del__(self):
        if self._fd is not None:
            os.close(self._fd)


def read_rows(images: np.ndarray, rows) -> np.ndarray:
    """`images[rows]` as a uint8 array; rows of the image cache's memory map are read with pread (`CachedRows`),
    so scoring a split does not pull its pages into the resident set."""
    if isinstance(images, np.memmap):
        return CachedRows(images).read(rows)
    return np.asarray(images[np.asarray(rows)])


class XrayDataset(Dataset):
    """Yields (uint8 1 x H x W tensor, float label). Normalise batches with `collate` or
    `normalize` so the per-pixel float work is vectorised over the batch."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray, augment=None):
        if isinstance(images, np.memmap):
            images = CachedRows(images)
        self.images, self.labels, self.indices, self.augment = images, labels, np.asarray(indices), augment

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        row = int(self.indices[i])
        img = self.images[row]
        img = torch.from_numpy(img if img.flags.writeable else np.array(img)).unsqueeze(0)
        if self.augment is not None:
            img = self.augment(img)
        label = self.labels[row]
        return img, torch.from_numpy(np.array(label, np.float32)) if np.ndim(label) else torch.tensor(float(label))


def make_collate(mode: str, channels: int = 1, augment=None):
    """A DataLoader collate_fn that stacks uint8 images, augments the batch when given a `BatchAugment`
    (one random draw per image), and normalises it."""

    def collate(batch):
        images = torch.stack([b[0] for b in batch])
        labels = torch.stack([b[1] for b in batch])
        if augment is not None:
            images = augment(images)
        return normalize(images, mode, channels), labels

    return collate
