"""Heatmaps over the X-ray: one image, methods side by side, or a grid of many images."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def overlay_grid(images: np.ndarray, maps: dict[str, np.ndarray], titles: list[str], path: Path,
                 alpha: float = 0.45) -> Path:
    """Rows: images; columns: the X-ray, then one heatmap per method, each with a colour bar."""
    methods = list(maps)
    n, cols = len(images), len(methods) + 1
    fig, axes = plt.subplots(n, cols, figsize=(3.1 * cols, 3.2 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(images[i], cmap="gray", vmin=0, vmax=255)
        axes[i, 0].set_title(titles[i], fontsize=8)
        for j, method in enumerate(methods, start=1):
            ax = axes[i, j]
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
            heat = ax.imshow(maps[method][i], cmap="jet", alpha=alpha, vmin=0, vmax=1)
            ax.set_title(method, fontsize=9)
            fig.colorbar(heat, ax=ax, fraction=0.046, pad=0.02)
        for ax in axes[i]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def sanity_figure(table, path: Path) -> Path:
    """Spearman and SSIM against the number of layers randomised (top down), one line per method."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, col in zip(axes, ("spearman", "ssim")):
        for method, rows in table.groupby("method"):
            ax.plot(rows["step"], rows[col], marker="o", label=method)
        ax.set_xticks(table["step"].unique())
        ax.set_xticklabels(table.drop_duplicates("step")["randomised_down_to"], rotation=60, fontsize=7)
        ax.set(ylabel=col, ylim=(-0.2, 1.05), title=f"{col} with the trained model's maps")
        ax.axhline(0, color="grey", lw=0.6)
        ax.legend(fontsize=8)
    fig.suptitle("Cascading model-parameter randomisation (top layer first)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
