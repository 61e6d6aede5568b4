"""Save/load in the ``.keras`` format. Loading uses Keras safe mode (no pickled lambdas)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import keras

from . import layers as _layers  # noqa: F401  (registers the custom layers)


class ModelFileError(ValueError):
    """A file that should hold a saved model cannot be read as one."""


def model_problem(model: keras.Model) -> str | None:
    """Why ``model`` cannot be used as an age and gender model (one line), or ``None``.

    An agegender model has one image input of a fixed size, ``(batch, height, width, 3)``, and
    ``gender`` and ``age`` outputs: what :func:`create_model`, :func:`ensemble` and
    :func:`flip_tta` build. A model from another library fails here instead of deep inside
    prediction or evaluation.
    """
    inputs = list(getattr(model, "inputs", None) or [])
    if len(inputs) != 1:
        return f"it has {len(inputs)} inputs; an agegender model has one image input"
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 3:
        return f"its input is not a batch of RGB images (batch, height, width, 3): {shape}"
    if shape[1] is None or shape[2] is None:
        return (
            f"its input size is unknown {shape}; an agegender model has a fixed input size "
            "(height, width)"
        )
    try:
        names = [str(n) for n in model.output_names]
    except Exception:  # subclassed models may not name their outputs
        names = []
    if not {"gender", "age"} <= set(names):
        return f"it has no 'gender' and 'age' outputs (its outputs: {names})"
    return None


def save_model(
    model: keras.Model,
    path: str | os.PathLike,
    *,
    include_optimizer: bool = True,
    compress: bool = False,
) -> Path:
    """``model.save(path)``; ``path`` must end in ``.keras``. Returns the path.

    ``include_optimizer=False`` saves the architecture and weights only (a model to predict with:
    Adam's two moments would triple the file); it loads uncompiled. ``compress=True`` writes the
    archive's members deflated (Keras writes them stored): a model to ship or hand over, e.g.
    the shipped default goes 17.3 -> 13.3 MB (its int8 kernels deflate well, float32 ones
    little); Keras loads it unchanged and as fast.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"Models are saved in the `.keras` format. Received: path={str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not include_optimizer and getattr(model, "optimizer", None) is not None:
        # the same layers and weights, never compiled (clone_model would compile the copy too)
        lean = model.__class__.from_config(model.get_config())
        lean.set_weights(model.get_weights())
        model = lean
    model.save(path)
    if compress:
        _deflate(path)
    return path


def _deflate(path: Path) -> None:
    """Rewrite the zip archive at ``path`` with every member deflated (replaced atomically)."""
    writing = path.with_name(path.name + ".deflating")
    try:
        with zipfile.ZipFile(path) as stored, zipfile.ZipFile(
            writing, "w", compression=zipfile.ZIP_DEFLATED
        ) as deflated:
            for member in stored.infolist():
                deflated.writestr(member, stored.read(member), compress_type=zipfile.ZIP_DEFLATED)
        os.replace(writing, path)
    finally:
        writing.unlink(missing_ok=True)


def load_model(
    path: str | os.PathLike, *, compile: bool = True, safe_mode: bool = True
) -> keras.Model:
    """Load a ``.keras`` model saved from :func:`create_model` (safe mode by default).

    Raises ``FileNotFoundError`` for a missing file and :class:`ModelFileError` (one line) for a
    file that is not a valid ``.keras`` archive (corrupt, truncated, another format) or holds a
    model that is not an age and gender model (see :func:`model_problem`: e.g. a model from
    another library, or one without a fixed input size).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Model file not found. Received: path={str(path)!r}")
    if path.suffix != ".keras":
        raise ModelFileError(
            f"Only `.keras` model files can be loaded (weights files go to "
            f"create_model(weights=...)). Received: path={str(path)!r}"
        )
    if not zipfile.is_zipfile(path):
        raise ModelFileError(
            f"{str(path)!r} is not a valid .keras file (not a zip archive: corrupt or truncated)."
        )
    try:
        model = keras.saving.load_model(path, compile=compile, safe_mode=safe_mode)
    except Exception as exc:
        raise ModelFileError(
            f"Could not load model from {str(path)!r} (corrupt or incompatible .keras file): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    problem = model_problem(model)
    if problem is not None:
        raise ModelFileError(f"{str(path)!r} is not an age and gender model: {problem}")
    return model
