"""Export a model for serving without this library: TensorFlow SavedModel or TFLite.

The exported artefact takes what a camera or an image decoder gives: a batch of raw RGB images,
``uint8`` of shape ``(N, H, W, 3)`` at the model's input size. Preprocessing is inside (it is part
of every model built by :func:`create_model`), so the artefact cannot be fed the wrong scaling.
It returns ``gender`` (probability of female, shape ``(N,)``) and ``age`` (years, shape ``(N,)``).

SavedModel (a folder; signature ``serve``)::

    import tensorflow as tf
    serve = tf.saved_model.load("model_savedmodel").signatures["serve"]
    out = serve(image=tf.constant(batch_uint8))          # {"gender": ..., "age": ...}

TFLite (one file; runs with ``tf.lite.Interpreter`` or the ``ai-edge-litert`` runtime)::

    interpreter = tf.lite.Interpreter("model.tflite")
    runner = interpreter.get_signature_runner("serve")
    out = runner(image=batch_uint8)                     # {"gender": ..., "age": ...}

ONNX is not available yet: asking for it raises :class:`ExportFormatError` with that message.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import keras

from .saving import load_model

FORMATS = ("savedmodel", "tflite", "onnx")


class ExportFormatError(ValueError):
    """The requested export format is unknown or not available."""


def _serving_archive(model: keras.Model):
    import tensorflow as tf

    height, width, channels = model.inputs[0].shape[1:]
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(image):
        out = model(tf.cast(image, tf.float32), training=False)
        return {
            "gender": tf.reshape(tf.cast(out["gender"], tf.float32), [-1]),
            "age": tf.reshape(tf.cast(out["age"], tf.float32), [-1]),
        }

    archive.add_endpoint(
        name="serve",
        fn=serve,
        input_signature=[tf.TensorSpec([None, height, width, channels], tf.uint8, name="image")],
    )
    return archive


def export_model(model_or_path: keras.Model | str | os.PathLike, out: str | os.PathLike, *,
                 format: str = "savedmodel") -> Path:
    """Export ``model_or_path`` (a model or a ``.keras`` file) to ``out``; returns the path.

    ``format="savedmodel"`` writes a folder, ``"tflite"`` one ``.tflite`` file. An existing
    file or SavedModel at ``out`` is replaced; any other non-empty folder is refused.
    """
    if format not in FORMATS:
        raise ExportFormatError(f"`format` must be one of {FORMATS}. Received: format={format!r}")
    if format == "onnx":
        raise ExportFormatError(
            "ONNX export is not available yet: export to 'savedmodel' and convert it with "
            "tf2onnx (python -m tf2onnx.convert --saved-model DIR --output model.onnx), or use 'tflite'"
        )
    model = model_or_path if isinstance(model_or_path, keras.Model) else load_model(model_or_path, compile=False)
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not (out / "saved_model.pb").is_file():
        raise FileExistsError(f"{out} is a folder that holds something other than a SavedModel: not replacing it")
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    archive = _serving_archive(model)
    if format == "savedmodel":
        archive.write_out(str(out), verbose=False)
        return out

    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "savedmodel"
        archive.write_out(str(saved), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=["serve"])
        flatbuffer = converter.convert()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(flatbuffer)
    return out
