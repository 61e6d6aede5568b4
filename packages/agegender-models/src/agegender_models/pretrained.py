"""Trained models that ship inside this package: predict out of the box, offline.

    from agegender_models import Predictor, list_pretrained, load_pretrained

    print(list_pretrained())              # ['mobilenet-v2x3-dlib-childweight-utkface', ...]
    model = load_pretrained()             # the default
    Predictor().predict(["face.jpg"])     # Predictor() uses the default too

Each model is a ``.keras`` file (no optimizer state) in ``agegender_models/pretrained/`` with its
SHA-256 in ``registry.json`` (checked on load: a damaged install is an error, not a silently wrong
model) and its ``MODEL_CARD.md`` beside it: data, recipe, measured figures, intended use and known
limits. The weights were trained on UTKFace, whose licence allows non-commercial research use only;
that licence binds these weights too. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


@lru_cache(maxsize=1)
def _registry() -> dict[str, Any]:
    return json.loads((PRETRAINED_DIR / "registry.json").read_text(encoding="utf-8"))


def default_pretrained() -> str:
    """The name of the model used when none is named."""
    return _registry()["default"]


def list_pretrained() -> list[str]:
    """Names of the models that ship with this package (the default first)."""
    names = sorted(_registry()["models"])
    default = default_pretrained()
    return [default, *[n for n in names if n != default]]


def pretrained_info(name: str | None = None) -> dict[str, Any]:
    """What the registry says of a shipped model: ``file``, ``sha256``, ``input_size``,
    ``summary`` and the headline ``figures`` of its model card (``name=None``: the default)."""
    name = name or default_pretrained()
    models = _registry()["models"]
    if name not in models:
        raise ValueError(f"no pretrained model {name!r}; shipped: {list_pretrained()}")
    return {"name": name, **models[name], "card": str(PRETRAINED_DIR / models[name]["card"])}


def pretrained_path(name: str | None = None, *, verify: bool = True) -> Path:
    """The ``.keras`` file of a shipped model, its checksum verified unless ``verify=False``."""
    info = pretrained_info(name)
    path = PRETRAINED_DIR / info["file"]
    if not path.is_file():
        raise FileNotFoundError(f"pretrained model {info['name']!r}: {path} is missing from this "
                                "installation; reinstall agegender-models")
    if verify:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != info["sha256"]:
            from .saving import ModelFileError

            raise ModelFileError(f"pretrained model {info['name']!r}: {path} is damaged (SHA-256 "
                                 f"{digest[:12]}..., expected {info['sha256'][:12]}...); reinstall "
                                 "agegender-models")
    return path


def load_pretrained(name: str | None = None, *, verify: bool = True):
    """Load a shipped model (``name=None``: the default) as a Keras model, offline."""
    from .saving import load_model

    return load_model(pretrained_path(name, verify=verify))
