"""Training: the loop, devices, metrics per epoch, learning curves."""

from .trainer import Run, TrainingDiverged, load_run, model_spec, predict_scores, train

__all__ = ["train", "Run", "TrainingDiverged", "load_run", "model_spec", "predict_scores"]
