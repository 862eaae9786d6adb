"""Evaluation: read-only metrics with patient-level bootstrap CIs, on scores from a `RunModel`."""

from .metrics import binary_metrics, bootstrap_ci

__all__ = ["binary_metrics", "bootstrap_ci"]
