"""Batch prediction from image arrays or files."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import keras
import numpy as np
from PIL import Image

from .saving import load_model

GENDERS = ("male", "female")  # UTKFace: 0 = male, 1 = female


def _to_rgb_array(image: Any, size: tuple[int, int]) -> np.ndarray:
    """Any PIL image or HxW / HxWxC array (0-255) -> uint8 HxWx3 at ``size`` (h, w)."""
    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim == 3 and arr.shape[-1] == 4:
            arr = arr[..., :3]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
            raise ValueError(f"expected an HxW or HxWx{{1,3,4}} image, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            arr = np.clip(np.rint(arr.astype(np.float64)), 0, 255).astype(np.uint8)
        image = Image.fromarray(arr)
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    h, w = size
    if arr.shape[:2] != (h, w):
        # exactly as utkface_data's training pipeline resizes (bilinear, no antialiasing, rounded):
        # a model must see the same pixels at serving time as in training
        import tensorflow as tf

        resized = tf.image.resize(arr, (h, w), method="bilinear", antialias=False).numpy()
        arr = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    return arr


class Predictor:
    """Age and gender for images.

    ``Predictor(model_or_path)`` takes a model from :func:`create_model` or a ``.keras`` path
    (loaded in safe mode). :meth:`predict` takes one image or file path, a list of them, or
    an ``(N, H, W, 3)`` array; images are 0-255 RGB of any size/mode and are converted to RGB
    and resized to the model's input size.

    It returns one dict per readable image, in input order::

        {"file": str | None, "age": float, "gender": "male" | "female", "p_female": float}

    ``gender`` is "female" when ``p_female > threshold`` (strictly, as Keras' binary accuracy and
    ``agegender_eval`` count it).

    Unreadable files are not fatal: they are listed in ``predictor.errors`` as
    ``{"file", "reason"}`` (reset at each call) and the other images are still predicted.
    """

    def __init__(self, model_or_path: keras.Model | str | os.PathLike, *, threshold: float = 0.5):
        if isinstance(model_or_path, str | os.PathLike):
            model_or_path = load_model(model_or_path, compile=False)
        if not isinstance(model_or_path, keras.Model):
            raise TypeError(
                f"Predictor needs a keras.Model or a .keras path. Received: {type(model_or_path)}"
            )
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"`threshold` must be in (0, 1). Received: threshold={threshold}")
        self.model = model_or_path
        self.threshold = float(threshold)
        self.input_size = tuple(int(d) for d in self.model.input_shape[1:3])
        self.errors: list[dict[str, str]] = []

    def _items(self, images_or_paths: Any) -> list[Any]:
        if isinstance(images_or_paths, str | os.PathLike | Image.Image):
            return [images_or_paths]
        if isinstance(images_or_paths, np.ndarray):
            return list(images_or_paths) if images_or_paths.ndim == 4 else [images_or_paths]
        if isinstance(images_or_paths, Iterable):
            return list(images_or_paths)
        raise TypeError(
            "Expected an image, a path, an (N, H, W, 3) array or a list of them. "
            f"Received: {type(images_or_paths).__name__}"
        )

    def predict(
        self, images_or_paths: Any, *, batch_size: int = 32, return_errors: bool = False
    ) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """Predict; with ``return_errors=True`` returns ``(results, errors)``."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}")
        self.errors = []
        files: list[str | None] = []
        arrays: list[np.ndarray] = []
        for item in self._items(images_or_paths):
            file = os.fspath(item) if isinstance(item, str | os.PathLike) else None
            try:
                if file is not None:
                    with Image.open(Path(file)) as img:
                        img.load()
                        arr = _to_rgb_array(img, self.input_size)
                else:
                    arr = _to_rgb_array(item, self.input_size)
            except Exception as exc:
                self.errors.append(
                    {"file": file or "<array>", "reason": f"{type(exc).__name__}: {exc}"}
                )
                continue
            files.append(file)
            arrays.append(arr)
        if not arrays:
            return ([], list(self.errors)) if return_errors else []
        results: list[dict[str, Any]] = []
        for start in range(0, len(arrays), batch_size):
            batch = np.stack(arrays[start : start + batch_size])
            out = self.model(batch, training=False)
            p_female = np.asarray(out["gender"], dtype=np.float32).reshape(-1)
            age = np.asarray(out["age"], dtype=np.float32).reshape(-1)
            for j in range(len(batch)):
                results.append(
                    {
                        "file": files[start + j],
                        "age": float(age[j]),
                        "gender": GENDERS[int(p_female[j] > self.threshold)],
                        "p_female": float(p_female[j]),
                    }
                )
        return (results, list(self.errors)) if return_errors else results


def predict(
    model_or_path: keras.Model | str | os.PathLike, images_or_paths: Any, *, batch_size: int = 32
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """One-shot :class:`Predictor`: returns ``(results, errors)``."""
    return Predictor(model_or_path).predict(
        images_or_paths, batch_size=batch_size, return_errors=True
    )
