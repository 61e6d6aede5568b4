"""Keras age and gender models with pluggable backbones.

    from agegender_models import create_model, compile_model, list_backbones, load_model

    model = compile_model(create_model("custom_cnn"))       # Model A, raw 0-255 RGB in
    model = create_model("resnet50", weights="imagenet")      # Model B (offline search)

``create_model`` does not compile; :func:`compile_model` does (the seed's setup).
"""

from . import backbones as _backbones  # noqa: F401  (registers the built-in backbones)
from ._factory import (
    compile_model,
    create_model,
    ensemble,
    flip_tta,
    freeze_backbone,
    set_trainable,
)
from ._registry import (
    ENTRY_POINT_GROUP,
    BackboneSpec,
    backbone_defaults,
    get_backbone,
    list_backbones,
    load_backbone_plugins,
    register_backbone,
)
from .export import ExportFormatError, export_model
from .layers import BoundedAge, Preprocess
from .precision import bf16_supported, get_precision, model_precision, set_precision
from .predict import Predictor, predict
from .saving import ModelFileError, load_model, save_model
from .weights import WeightsMismatchError, WeightsNotFoundError, weights_search_dirs

__version__ = "0.1.0"

__all__ = [
    "ENTRY_POINT_GROUP",
    "ExportFormatError",
    "BackboneSpec",
    "BoundedAge",
    "ModelFileError",
    "Predictor",
    "Preprocess",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "backbone_defaults",
    "bf16_supported",
    "compile_model",
    "create_model",
    "ensemble",
    "export_model",
    "flip_tta",
    "freeze_backbone",
    "get_backbone",
    "get_precision",
    "list_backbones",
    "load_backbone_plugins",
    "load_model",
    "model_precision",
    "predict",
    "register_backbone",
    "save_model",
    "set_precision",
    "set_trainable",
    "weights_search_dirs",
]
