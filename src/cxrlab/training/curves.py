"""Learning curves from history.csv."""

from __future__ import annotations

from pathlib import Path

# matplotlib through its object-oriented Figure API: no pyplot, so no backend switch or figure
# registry in the process (a notebook importing cxrlab keeps its own)
from matplotlib.figure import Figure
import pandas as pd


def plot_learning_curves(history: pd.DataFrame, path: str | Path) -> Path:
    learning_curves_figure(history).savefig(path, dpi=100)
    return Path(path)


def learning_curves_figure(history: pd.DataFrame) -> Figure:
    """Loss, accuracy and AUC per epoch, training and validation."""
    fig = Figure(figsize=(12, 3.2))
    axes = fig.subplots(1, 3)
    titles = {"loss": "loss: BCE, unweighted (train and val alike)", "acc": "accuracy", "auc": "AUC"}
    for ax, metric in zip(axes, ("loss", "acc", "auc")):
        for split in ("train", "val"):
            col = f"{split}_{metric}"
            if col in history and history[col].notna().any():
                ax.plot(history["epoch"], history[col], marker="o", label=split)
        ax.set_title(titles[metric])
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    return fig
