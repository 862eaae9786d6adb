"""Learning curves from history.csv."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def plot_learning_curves(history: pd.DataFrame, path: str | Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, metric in zip(axes, ("loss", "acc", "auc")):
        for split in ("train", "val"):
            col = f"{split}_{metric}"
            if col in history and history[col].notna().any():
                ax.plot(history["epoch"], history[col], marker="o", label=split)
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
