"""Batch prediction from image arrays or files."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import keras
import numpy as np
from PIL import Image, ImageOps

from .detect import to_rgb  # numpy/PIL only; the detectors' packages load lazily
from .saving import load_model

PREDICTED_GENDER_NAMES: tuple[str, str] = ("male", "female")
"""What ``Predictor`` writes as ``gender``: index 1 when the model's ``gender`` output, P(female),
is above the threshold, else index 0 (the training labels' codes: 0 male, 1 female)."""


def _to_rgb_array(image: Any, size: tuple[int, int]) -> np.ndarray:
    """Any PIL image or HxW / HxWxC array (0-255) -> uint8 HxWx3 at ``size`` (h, w)."""
    arr = to_rgb(image)
    h, w = size
    if arr.shape[:2] != (h, w):
        # exactly as utkface_data's training pipeline resizes (bilinear, no antialiasing, rounded):
        # a model must see the same pixels at serving time as in training
        import tensorflow as tf

        resized = tf.image.resize(arr, (h, w), method="bilinear", antialias=False).numpy()
        arr = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    return arr


class _DetectionError(RuntimeError):
    """The detector raised on one image (its message is already a complete reason)."""


def _reason(exc: BaseException, limit: int = 300) -> str:
    """One short line for an error list (TensorFlow messages can run to pages)."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    text = (
        first if isinstance(exc, _DetectionError) else f"{type(exc).__name__}: {first}".rstrip(": ")
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."


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

    **Photos, not chips.** The models expect UTKFace-like chips (a face aligned and cropped
    tightly). For ordinary photos pass ``detector="mtcnn"`` (or ``"haar"``, or any object with a
    ``detect_faces`` method; see :mod:`agegender_models.detect`, which needs
    ``pip install 'agegender-models[detect]'``). Each face found is cropped like a chip and
    predicted, giving one dict per face, in input order and left to right within an image::

        {"file", "face": int, "box": [x, y, w, h], "confidence": float, "age", "gender", "p_female"}

    (``box`` in pixels of the photo as stored, after its EXIF orientation is applied). A photo with
    no face is listed in ``errors`` as ``{"file": ..., "reason": "no face found"}``.
    """

    def __init__(
        self,
        model_or_path: keras.Model | str | os.PathLike,
        *,
        threshold: float = 0.5,
        detector: Any = None,
    ):
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
        self.detector = None
        if detector is not None:
            from .detect import get_detector  # the detectors import the 'detect' extra lazily

            self.detector = get_detector(detector)

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
            raise ValueError(
                f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}"
            )
        self.errors = []
        files: list[str | None] = []
        arrays: list[np.ndarray] = []
        extras: list[dict[str, Any]] = []  # per crop: face index, box, confidence (detector only)
        for item in self._items(images_or_paths):
            file = os.fspath(item) if isinstance(item, str | os.PathLike) else None
            try:
                if self.detector is not None:
                    faces = self._faces(item, file)
                    if not faces:
                        self.errors.append({"file": file or "<array>", "reason": "no face found"})
                    for extra, arr in faces:
                        files.append(file)
                        arrays.append(arr)
                        extras.append(extra)
                    continue
                if file is not None:
                    with Image.open(Path(file)) as img:
                        img.load()
                        arr = _to_rgb_array(img, self.input_size)
                else:
                    arr = _to_rgb_array(item, self.input_size)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}" if self.detector is None else _reason(exc)
                self.errors.append({"file": file or "<array>", "reason": reason})
                continue
            files.append(file)
            arrays.append(arr)
            extras.append({})
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
                        **extras[start + j],
                        "age": float(age[j]),
                        "gender": PREDICTED_GENDER_NAMES[int(p_female[j] > self.threshold)],
                        "p_female": float(p_female[j]),
                    }
                )
        return (results, list(self.errors)) if return_errors else results

    def _faces(self, item: Any, file: str | None) -> list[tuple[dict[str, Any], np.ndarray]]:
        """Detect the faces in one image and crop each like a UTKFace chip, at the model's size."""
        from .detect import CHIP_SIZE, crop_face, to_rgb

        if file is not None:
            with Image.open(Path(file)) as img:
                img.load()
                rgb = to_rgb(ImageOps.exif_transpose(img))
        else:
            rgb = to_rgb(item)
        try:
            faces = list(self.detector.detect_faces(rgb))
        except Exception as exc:
            raise _DetectionError(f"face detection failed: {_reason(exc)}") from None
        out = []
        for index, face in enumerate(faces):
            chip = crop_face(rgb, face, CHIP_SIZE)
            extra = {
                "face": index,
                "box": [round(v) for v in face.box],
                "confidence": round(face.confidence, 4),
            }
            out.append((extra, _to_rgb_array(chip, self.input_size)))
        return out


def predict(
    model_or_path: keras.Model | str | os.PathLike,
    images_or_paths: Any,
    *,
    batch_size: int = 32,
    detector: Any = None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """One-shot :class:`Predictor`: returns ``(results, errors)``."""
    return Predictor(model_or_path, detector=detector).predict(
        images_or_paths, batch_size=batch_size, return_errors=True
    )
