"""cxrlab: train, evaluate and explain chest X-ray classifiers.

    import cxrlab
    data = cxrlab.load_data("chest_xrays", positive="effusion")
    run = cxrlab.train(cxrlab.TrainConfig(source="chest_xrays", positive="effusion"), "runs/effusion")
"""

from .config import AugmentConfig, DataConfig, TrainConfig
from .data import LoadedData, load_data
from .errors import ConfigError, CxrlabError, DataError, ImageReadError
from .training import Run, train

__version__ = "0.1.0"
__all__ = ["load_data", "LoadedData", "DataConfig", "AugmentConfig", "train", "TrainConfig", "Run",
           "CxrlabError", "DataError", "ImageReadError", "ConfigError"]
