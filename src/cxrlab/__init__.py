"""cxrlab: train, evaluate and explain chest X-ray classifiers.

    import cxrlab
    data = cxrlab.load_data("chest_xrays", positive="effusion")
    run = cxrlab.train(cxrlab.TrainConfig(source="chest_xrays", positive="effusion"), "runs/effusion")
    metrics = cxrlab.evaluate("runs/effusion")
    search = cxrlab.tune("chest_xrays", positive="effusion", space="default", trials=24, out="tune/effusion")
    maps = cxrlab.explain("runs/effusion", ["chest_xrays/effusion/00000013_005.png"], ["gradcam"]).maps
    site = cxrlab.choose_site_point("runs/effusion", "hospital-b", policy="sensitivity:0.95")
    both = cxrlab.evaluate("runs/effusion", data="hospital-b")   # both["site"]: at the site's threshold
"""

from importlib import import_module

__version__ = "0.1.0"

# Names load on first use (PEP 562), so `cxrlab --help` and light commands do not pay for torch,
# scikit-learn and matplotlib: importing them all took 16 s on the 2-core machine.
_EXPORTS = {
    "load_data": ".data", "LoadedData": ".data", "DataConfig": ".config", "AugmentConfig": ".config",
    "train": ".training", "TrainConfig": ".config", "Run": ".training", "load_run": ".training", "evaluate": ".evaluation.evaluate",
    "explain": ".saliency", "CxrlabError": ".errors", "DataError": ".errors", "ImageReadError": ".errors",
    "ConfigError": ".errors", "tune": ".tuning", "TuneResult": ".tuning", "RunModel": ".inference",
    "choose_site_point": ".evaluation.sites",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cxrlab' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), "evaluate_run" if name == "evaluate" else name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
