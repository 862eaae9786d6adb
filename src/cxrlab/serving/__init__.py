"""Using a trained model: predict, export (ONNX, TorchScript), serve a web page, API and quiz."""

from .predictor import Prediction, Predictor

__all__ = ["Predictor", "Prediction"]
