"""Keras age and gender models with pluggable backbones.

    from agegender_models import create_model, compile_model, list_backbones, load_model

    model = compile_model(create_model("custom_cnn"))       # Model A, raw 0-255 RGB in
    model = create_model("resnet50", weights="imagenet")      # Model B (offline search)

``create_model`` does not compile; :func:`compile_model` does (the seed's setup).
"""

import importlib
from typing import TYPE_CHECKING, Any

# imported now: the function `predict` must win over its submodule's name (which an import of
# agegender_models.predict would otherwise set here); numpy and Pillow only, no TensorFlow
from .predict import Predictions, Predictor, predict

# Every public name, by the module that defines it. They load on first use (PEP 562): a
# Predictor on a cached runtime, and the default detector, run without importing Keras and
# TensorFlow (about 6 s), which load only when something asks for them.
_EXPORTS = {
    "._factory": ("compile_model", "create_model", "ensemble", "flip_tta", "freeze_backbone",
                  "set_trainable"),
    "._registry": ("ENTRY_POINT_GROUP", "BackboneSpec", "backbone_defaults", "get_backbone",
                   "list_backbones", "load_backbone_plugins", "register_backbone"),
    ".export": ("CheckSet", "ExportConversionError", "ExportFormatError", "ExportParityError",
                "export_model"),
    ".imageio": ("ImageReadError", "ImageTooLargeError", "read_image"),
    ".layers": ("BoundedAge", "Preprocess"),
    ".precision": ("bf16_supported", "choose_precision", "float32_copy", "get_precision",
                   "model_precision", "set_precision"),
    ".pretrained": ("list_pretrained", "load_pretrained", "pretrained_info"),
    ".runtime": ("Runner", "get_runner"),
    ".saving": ("ModelFileError", "load_model", "model_problem", "save_model"),
    ".weights": ("WeightsMismatchError", "WeightsNotFoundError", "weights_search_dirs"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
# the public submodules, reachable as attributes after `import agegender_models` as before
_SUBMODULES = ("backbones", "detect", "export", "face_descriptor", "imageio", "layers", "onet",
               "precision", "pretrained", "runtime", "saving", "weights", "yunet")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)  # which binds it here
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if module in ("._factory", "._registry"):
        importlib.import_module(".backbones", __name__)  # the built-in backbones register first
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF, *_SUBMODULES})


if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
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
    from .export import (
        CheckSet,
        ExportConversionError,
        ExportFormatError,
        ExportParityError,
        export_model,
    )
    from .imageio import ImageReadError, ImageTooLargeError, read_image
    from .layers import BoundedAge, Preprocess
    from .precision import (
        bf16_supported,
        choose_precision,
        float32_copy,
        get_precision,
        model_precision,
        set_precision,
    )
    from .pretrained import list_pretrained, load_pretrained, pretrained_info
    from .runtime import Runner, get_runner
    from .saving import ModelFileError, load_model, model_problem, save_model
    from .weights import WeightsMismatchError, WeightsNotFoundError, weights_search_dirs

__version__ = "0.1.0"

__all__ = [
    "ENTRY_POINT_GROUP",
    "CheckSet",
    "ExportConversionError",
    "ExportFormatError",
    "ExportParityError",
    "BackboneSpec",
    "BoundedAge",
    "ImageReadError",
    "ImageTooLargeError",
    "ModelFileError",
    "Predictions",
    "Predictor",
    "Preprocess",
    "Runner",
    "WeightsMismatchError",
    "WeightsNotFoundError",
    "backbone_defaults",
    "bf16_supported",
    "choose_precision",
    "compile_model",
    "create_model",
    "ensemble",
    "export_model",
    "flip_tta",
    "float32_copy",
    "freeze_backbone",
    "get_backbone",
    "get_precision",
    "get_runner",
    "list_backbones",
    "list_pretrained",
    "load_backbone_plugins",
    "load_model",
    "load_pretrained",
    "model_precision",
    "model_problem",
    "predict",
    "pretrained_info",
    "read_image",
    "register_backbone",
    "save_model",
    "set_precision",
    "set_trainable",
    "weights_search_dirs",
]
