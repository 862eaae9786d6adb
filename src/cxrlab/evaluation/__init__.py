"""Evaluation: predictions from a run directory, metrics with patient-level bootstrap CIs."""

from .metrics import binary_metrics, bootstrap_ci
from .predict import load_run_model, predict_split

__all__ = ["load_run_model", "predict_split", "binary_metrics", "bootstrap_ci"]
