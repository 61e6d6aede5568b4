"""Offline-first weights resolution for backbones.

``weights`` is ``None`` (random init), ``"imagenet"`` or a path to a weights file for the
*backbone* (the file keras.applications would download, ``.h5`` or ``.weights.h5``).

For ``"imagenet"`` nothing is downloaded: the expected keras.applications file is looked up
in, in order,

1. every folder in ``$AGEGENDER_WEIGHTS_DIR`` (``os.pathsep``-separated),
2. the Keras cache, ``$KERAS_HOME/models`` (default ``~/.keras/models``),

and when absent a :class:`WeightsNotFoundError` names the file, the folders and the
``weights=PATH`` alternative at once (no hanging download, no socket traceback).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

WEIGHTS_DIR_ENV = "AGEGENDER_WEIGHTS_DIR"
_KERAS_SIZES = (96, 128, 160, 192, 224)


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are not on disk and will not be downloaded."""


class WeightsMismatchError(ValueError):
    """A weights file does not fit the backbone architecture it is loaded into."""


def keras_cache_dir() -> Path:
    """``$KERAS_HOME/models``, or ``~/.keras/models`` (where keras.applications caches)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def weights_search_dirs() -> list[Path]:
    """Folders searched for ``weights="imagenet"``, in order."""
    dirs = [Path(p) for p in os.environ.get(WEIGHTS_DIR_ENV, "").split(os.pathsep) if p]
    return [*dirs, keras_cache_dir()]


def imagenet_file_names(file_patterns: tuple[str, ...], input_shape) -> list[str]:
    rows = int(input_shape[0]) if int(input_shape[0]) in _KERAS_SIZES else 224
    names: list[str] = []
    for pattern in file_patterns:
        name = pattern.format(rows=rows)
        if name not in names:
            names.append(name)
    return names


def find_imagenet_weights(backbone: str, file_patterns: tuple[str, ...], input_shape) -> Path:
    """Path of the ImageNet weights file for ``backbone``, or :class:`WeightsNotFoundError`."""
    names = imagenet_file_names(file_patterns, input_shape)
    if not names:
        raise ValueError(
            f"Backbone {backbone!r} has no ImageNet weights; use weights=None or a path. "
            "Received: weights='imagenet'"
        )
    dirs = weights_search_dirs()
    for folder in dirs:
        for name in names:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    where = ", ".join(str(d) for d in dirs)
    raise WeightsNotFoundError(
        f"ImageNet weights for backbone {backbone!r} not found and not downloaded "
        f"(this package never downloads). Put the file '{names[0]}' into {dirs[-1]} "
        f"(the Keras cache; also searched: ${WEIGHTS_DIR_ENV}) or pass weights=PATH to a "
        f"weights file for this backbone, or weights=None for random initialisation. "
        f"Searched: {where}"
    )


def load_backbone_weights(model, path: str | os.PathLike, backbone: str) -> None:
    """``model.load_weights(path)``, with any mismatch reported as :class:`WeightsMismatchError`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"Weights file not found. Received: weights={str(path)!r}")
    if not (path.name.endswith(".h5") or path.name.endswith(".hdf5")):
        raise ValueError(
            "A weights path must be a `.weights.h5` or legacy `.h5` file. "
            f"Received: weights={str(path)!r}"
        )
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(str(path))
    except Exception as exc:
        raise WeightsMismatchError(
            f"Weights file {str(path)!r} does not fit backbone {backbone!r} "
            f"(input {tuple(model.input_shape[1:])}): it was probably saved from another "
            f"architecture. Keras said: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        ) from exc
    problems = [
        str(w.message)
        for w in caught
        if "could not be loaded" in str(w.message) or "Skipping" in str(w.message)
    ]
    if problems:
        raise WeightsMismatchError(
            f"Weights file {str(path)!r} does not fit backbone {backbone!r}: "
            f"{problems[0].splitlines()[0]}"
        )
