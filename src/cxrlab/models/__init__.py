"""Model registry: one `create_model(name, ...)` for the lesson's CNNs and any timm backbone."""

from .registry import ModelSpec, count_parameters, create_model, list_models, model_spec

__all__ = ["create_model", "list_models", "count_parameters", "ModelSpec", "model_spec"]
