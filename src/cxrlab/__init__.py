"""cxrlab: train, evaluate and explain chest X-ray classifiers.

The public Python API grows with the workflow; today it loads and summarises data:

    import cxrlab
    data = cxrlab.load_data("chest_xrays", positive="effusion")
"""

from .config import AugmentConfig, DataConfig
from .data import LoadedData, load_data
from .errors import ConfigError, CxrlabError, DataError, ImageReadError

__version__ = "0.1.0"
__all__ = ["load_data", "LoadedData", "DataConfig", "AugmentConfig",
           "CxrlabError", "DataError", "ImageReadError", "ConfigError"]
