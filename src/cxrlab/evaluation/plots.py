"""Evaluation figures: ROC with a bootstrap band and the operating point, precision-recall,
confusion matrix, score histograms, sensitivity/specificity against threshold, reliability."""

from __future__ import annotations

from pathlib import Path

import numpy as np
# matplotlib through its object-oriented Figure API: no pyplot, so no backend switch or figure
# registry in the process (a notebook importing cxrlab keeps its own)
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, precision_recall_curve, roc_curve

from .metrics import patient_resamples

FPR_GRID = np.linspace(0, 1, 101)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def roc_band(y, score, patients, n_resamples: int = 200, seed: int = 0):
    """(low, high) TPR over FPR_GRID from patient-level bootstrap resamples."""
    curves = []
    for rows in patient_resamples(patients, n_resamples, seed):
        if len(np.unique(y[rows])) == 2:
            fpr, tpr, _ = roc_curve(y[rows], score[rows])
            curves.append(np.interp(FPR_GRID, fpr, tpr))
    if not curves:
        return None
    return np.quantile(curves, 0.025, axis=0), np.quantile(curves, 0.975, axis=0)


def roc_plot(y, score, patients, metrics: dict, path: Path, title: str = "") -> Path:
    return _save(roc_figure(y, score, patients, metrics, title), path)


def roc_figure(y, score, patients, metrics: dict, title: str = "") -> Figure:
    """The ROC curve with its patient-bootstrap band and the operating point."""
    fig = Figure(figsize=(4.5, 4.5))
    _roc_axes(fig.subplots(), y, score, patients, metrics, title)
    return fig


def roc_grid_figure(panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, dict]]) -> Figure:
    """Small multiples: one ROC panel (band, operating point) per (finding, y, score, patients, metrics)."""
    cols = min(5, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(3.0 * cols, 3.1 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax, (name, y, score, patients, metrics) in zip(axes, panels):
        _roc_axes(ax, y, score, patients, metrics, f"{name} (AUC {metrics['auc']:.2f})", small=True)
    for ax in axes[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def auc_bars_figure(names: list[str], aucs, lows, highs, mean: tuple[float, float, float]) -> Figure:
    """Per-finding test AUC with its 95% CI as horizontal bars, the macro mean as a line."""
    fig = Figure(figsize=(6, 0.32 * len(names) + 1.2))
    ax = fig.subplots()
    order = np.argsort(aucs)
    aucs, lows, highs = np.asarray(aucs)[order], np.asarray(lows)[order], np.asarray(highs)[order]
    ax.barh(np.arange(len(names)), aucs, xerr=[aucs - lows, highs - aucs], color="steelblue", ecolor="0.3", capsize=2)
    ax.set_yticks(np.arange(len(names)), [names[i] for i in order], fontsize=8)
    ax.axvline(0.5, color="grey", ls="--", lw=0.8)
    ax.axvline(mean[0], color="crimson", lw=1, label=f"mean {mean[0]:.3f} [{mean[1]:.3f}, {mean[2]:.3f}]")
    ax.set(xlim=(0, 1), xlabel="AUC [95% CI, patient bootstrap]")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def _roc_axes(ax, y, score, patients, metrics: dict, title: str, small: bool = False) -> None:
    if len(np.unique(y)) == 2:
        fpr, tpr, _ = roc_curve(y, score)
        band = roc_band(y, score, patients)
        if band is not None:
            ax.fill_between(FPR_GRID, band[0], band[1], alpha=0.25, label="95% CI (patient bootstrap)")
        ax.plot(fpr, tpr, label=f"AUC {metrics['auc']:.3f}")
        ax.plot(1 - metrics["specificity"], metrics["sensitivity"], "o", color="crimson",
                label=f"operating point (t={metrics['threshold']:.3f})")
    else:
        ax.text(0.5, 0.5, "ROC undefined: one class", ha="center")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    ax.set(xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title=title or "ROC", xlim=(0, 1), ylim=(0, 1.01))
    if small:
        ax.title.set_fontsize(9)
    else:
        ax.legend(loc="lower right", fontsize=8)


def pr_plot(y, score, path: Path) -> Path:
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    if len(np.unique(y)) == 2:
        precision, recall, _ = precision_recall_curve(y, score)
        ax.plot(recall, precision)
        ax.axhline(np.mean(y), ls="--", color="grey", lw=0.8, label=f"prevalence {np.mean(y):.2f}")
        ax.legend(fontsize=8)
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    return _save(fig, path)


def confusion_plot(metrics: dict, labels: list[str], path: Path) -> Path:
    cm = metrics["confusion_matrix"]
    matrix = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    fig = Figure(figsize=(4, 3.6))
    ax = fig.subplots()
    ConfusionMatrixDisplay(matrix, display_labels=labels).plot(ax=ax, colorbar=False, cmap="Blues")
    ax.set_title(f"threshold {metrics['threshold']:.3f}")
    return _save(fig, path)


def histogram_plot(y, score, threshold: float, labels: list[str], path: Path) -> Path:
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    bins = np.linspace(0, 1, 26)
    for value, name in ((0, labels[0]), (1, labels[1])):
        ax.hist(score[y == value], bins=bins, alpha=0.6, label=name)
    ax.axvline(threshold, color="crimson", ls="--", label="threshold")
    ax.set(xlabel="predicted probability", ylabel="images", title="Scores per class")
    ax.legend(fontsize=8)
    return _save(fig, path)


def threshold_plot(y, score, threshold: float, path: Path) -> Path:
    grid = np.linspace(0, 1, 201)
    sens = [np.mean(score[y == 1] >= t) if (y == 1).any() else np.nan for t in grid]
    spec = [np.mean(score[y == 0] < t) if (y == 0).any() else np.nan for t in grid]
    fig = Figure(figsize=(5, 3.2))
    ax = fig.subplots()
    ax.plot(grid, sens, label="sensitivity")
    ax.plot(grid, spec, label="specificity")
    ax.axvline(threshold, color="crimson", ls="--", label="chosen threshold")
    ax.set(xlabel="threshold", ylim=(0, 1.02), title="Sensitivity and specificity against threshold")
    ax.legend(fontsize=8)
    return _save(fig, path)


def reliability_plot(calibration: dict, path: Path) -> Path:
    curve = calibration["curve"]
    fig = Figure(figsize=(4.5, 4.5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8, label="perfect calibration")
    ax.plot(curve["mean_predicted"], curve["fraction_positive"], "o-",
            label=f"model (ECE {calibration['ece']:.3f}, Brier {calibration['brier']:.3f})")
    ax.set(xlabel="mean predicted probability", ylabel="observed fraction positive", title="Reliability",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    return _save(fig, path)


def roc_overlay(curves: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> Path:
    """One ROC per run, for `compare`."""
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for name, y, score in curves:
        if len(np.unique(y)) == 2:
            fpr, tpr, _ = roc_curve(y, score)
            from sklearn.metrics import roc_auc_score

            ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, score):.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC comparison", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
