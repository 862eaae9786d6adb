"""Pictures of the data: class distribution, a sample grid per class, what augmentation does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
# matplotlib through its object-oriented Figure API: no pyplot, so no backend switch or figure
# registry in the process (a notebook importing cxrlab keeps its own)
from matplotlib.figure import Figure
import torch

from .augment import build_augment


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def class_distribution(summary: dict, path: Path) -> Path:
    """Bars per class, stacked by split when there is one."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    if "by_split" in summary:
        splits = [s for s in ("train", "val", "test") if s in summary["by_split"]]
        classes = list(summary["classes"])
        bottom = np.zeros(len(classes))
        for s in splits:
            vals = np.array([summary["by_split"][s].get(c, 0) for c in classes])
            ax.bar(classes, vals, bottom=bottom, label=s)
            bottom += vals
        ax.legend(title="split")
    else:
        counts = summary["labels_in_source"]
        ax.bar(list(counts), list(counts.values()))
        ax.tick_params(axis="x", rotation=60)
    ax.set_ylabel("images")
    ax.set_title(f"{summary['images']} images, {summary['patients']} patients")
    return _save(fig, path)


def sample_grid(data, path: Path, per_class: int = 6, seed: int = 0) -> Path:
    """sample_figure, saved to `path`."""
    return _save(sample_figure(data, per_class, seed), path)


def sample_figure(data, per_class: int = 6, seed: int = 0) -> Figure:
    """A row of random images per class (per label when there is no task)."""
    frame = data.frame
    key = frame["y"].map({1: data.task.positive, 0: "/".join(data.task.negatives)}) if data.task else frame["labels"]
    classes = sorted(key.unique())[:8]
    rng = np.random.default_rng(seed)
    fig = Figure(figsize=(per_class * 1.6, len(classes) * 1.8))
    axes = fig.subplots(len(classes), per_class, squeeze=False)
    for r, cls in enumerate(classes):
        rows = frame.loc[key == cls, "row"].to_numpy()
        pick = rng.choice(rows, size=min(per_class, len(rows)), replace=False)
        for c in range(per_class):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(pick):
                ax.imshow(data.images[pick[c]], cmap="gray", vmin=0, vmax=255)
        axes[r, 0].set_title(cls, loc="left", fontsize=9)
    return fig


def augmentation_grid(data, path: Path, n: int = 8, seed: int = 0) -> Path:
    """One training image and n random augmentations of it, with the configured ranges
    (or the default ranges when augmentation is off, to show what turning it on would do)."""
    cfg = dataclasses.replace(data.config.augment, enabled=True)
    transform = build_augment(cfg)
    torch.manual_seed(seed)
    source = data.images[int(data.frame["row"].iat[0])]
    fig = Figure(figsize=((n + 1) * 1.6, 2.5))
    axes = fig.subplots(1, n + 1)
    axes[0].imshow(source, cmap="gray", vmin=0, vmax=255)
    axes[0].set_title("original", fontsize=10)
    img = torch.from_numpy(np.array(source)).unsqueeze(0)
    for ax in axes[1:]:
        ax.imshow(transform(img)[0].numpy(), cmap="gray", vmin=0, vmax=255)
    for ax in axes:
        ax.axis("off")
    ranges = ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(cfg).items() if k != "enabled")
    fig.suptitle(f"augmentation: {ranges}", fontsize=11)  # readable at a glance at the figure's width
    return _save(fig, path)

