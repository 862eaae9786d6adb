"""cxrlab: train, evaluate and explain chest X-ray classifiers.

    import cxrlab
    data = cxrlab.load_data("chest_xrays", positive="effusion")
    run = cxrlab.train(cxrlab.TrainConfig(source="chest_xrays", positive="effusion"), "runs/effusion")
    metrics = cxrlab.evaluate("runs/effusion")
    maps = cxrlab.explain("runs/effusion", ["chest_xrays/effusion/00000013_005.png"], ["gradcam"]).maps
"""

from .config import AugmentConfig, DataConfig, TrainConfig
from .data import LoadedData, load_data
from .errors import ConfigError, CxrlabError, DataError, ImageReadError
from .evaluation.evaluate import evaluate_run as evaluate
from .saliency import explain
from .training import Run, train

__version__ = "0.1.0"
__all__ = ["load_data", "LoadedData", "DataConfig", "AugmentConfig", "train", "TrainConfig", "Run", "evaluate", "explain",
           "CxrlabError", "DataError", "ImageReadError", "ConfigError"]
