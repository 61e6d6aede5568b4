"""Export a model for serving without this library: TensorFlow SavedModel, TFLite or ONNX.

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

ONNX (one file, opset :data:`ONNX_OPSET`; runs with ``onnxruntime``, no TensorFlow needed)::

    import onnxruntime as ort
    session = ort.InferenceSession("model.onnx")
    gender, age = session.run(["gender", "age"], {"image": batch_uint8})

Writing ONNX needs the ``onnx`` extra (``pip install 'agegender-models[onnx]'``: the ``tf2onnx``
converter, and ``onnxruntime`` to check the result); without it :func:`export_model` raises
:class:`ExportFormatError` naming that command. ONNX Runtime's CPU provider cannot load bfloat16
convolutions and the TFLite converter rejects them, so only float32 models go to ONNX or TFLite;
for a ``precision="mixed_bfloat16"`` model, copy its weights into
``create_model(..., precision="float32")`` first (a SavedModel takes it as is). The same holds
for every member of an :func:`~agegender_models.ensemble` and for a
:func:`~agegender_models.flip_tta` wrapper's model.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import keras

from .precision import model_precision
from .saving import load_model

FORMATS = ("savedmodel", "tflite", "onnx")
ONNX_OPSET = 17  # read by ONNX Runtime 1.13 (2022) and later
ONNX_INSTALL = "pip install 'agegender-models[onnx]'"


class ExportFormatError(ValueError):
    """The requested export format is unknown or not available (e.g. its converter is missing)."""


def _serving_function(model: keras.Model):
    """``(serve, input_spec)``: raw uint8 RGB in, flat float32 ``gender`` and ``age`` out."""
    import tensorflow as tf

    height, width, channels = model.inputs[0].shape[1:]

    def serve(image):
        out = model(tf.cast(image, tf.float32), training=False)
        return {
            "gender": tf.reshape(tf.cast(out["gender"], tf.float32), [-1]),
            "age": tf.reshape(tf.cast(out["age"], tf.float32), [-1]),
        }

    return serve, tf.TensorSpec([None, height, width, channels], tf.uint8, name="image")


def _serving_archive(model: keras.Model):
    serve, spec = _serving_function(model)
    archive = keras.export.ExportArchive()
    # no archive.track(model): the endpoint captures the variables it needs, and tracking the
    # model as well stores every weight twice (keras-team/keras#23553: a 149 MB SavedModel for
    # Model A's 74 MB of weights). Our models hold no lookup tables or other resources to track.
    archive.add_endpoint(name="serve", fn=serve, input_signature=[spec])
    return archive


def _import_tf2onnx():
    try:
        import tf2onnx
    except ImportError as exc:
        raise ExportFormatError(
            f"ONNX export needs the tf2onnx converter, which could not be imported ({exc}); "
            f"install the extra: {ONNX_INSTALL}"
        ) from exc
    return tf2onnx


def _onnx_bytes(model: keras.Model) -> bytes:
    import tensorflow as tf

    tf2onnx = _import_tf2onnx()
    serve, spec = _serving_function(model)
    function = tf.function(serve, input_signature=[spec])
    # tf2onnx logs non-fatal optimizer failures (it then skips that graph optimization, e.g. for
    # mobilenet_v3_small) with full tracebacks: keep only its errors
    tf2onnx_logger = logging.getLogger("tf2onnx")
    level = tf2onnx_logger.level
    tf2onnx_logger.setLevel(logging.ERROR)
    try:
        proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=ONNX_OPSET)
    finally:
        tf2onnx_logger.setLevel(level)
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"  # the batch size (tf2onnx: "unk__12")
    return proto.SerializeToString()


def _tflite_bytes(model: keras.Model) -> bytes:
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "savedmodel"
        _serving_archive(model).write_out(str(saved), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=["serve"])
        return converter.convert()


def export_model(
    model_or_path: keras.Model | str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str = "savedmodel",
) -> Path:
    """Export ``model_or_path`` (a model or a ``.keras`` file) to ``out``; returns the path.

    ``format="savedmodel"`` writes a folder, ``"tflite"`` and ``"onnx"`` one file. An existing
    file or SavedModel at ``out`` is replaced; any other non-empty folder is refused.
    ``"tflite"`` and ``"onnx"`` need a float32 model, ``"onnx"`` also the ``onnx`` extra;
    otherwise :class:`ExportFormatError`.
    """
    if format not in FORMATS:
        raise ExportFormatError(f"`format` must be one of {FORMATS}. Received: format={format!r}")
    if format == "onnx":
        _import_tf2onnx()  # before loading the model: a missing extra is reported at once
    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not (out / "saved_model.pb").is_file():
        raise FileExistsError(
            f"{out} is a folder that holds something other than a SavedModel: not replacing it"
        )
    model = (
        model_or_path
        if isinstance(model_or_path, keras.Model)
        else load_model(model_or_path, compile=False)
    )
    if format in ("tflite", "onnx") and model_precision(model) != "float32":
        # ONNX Runtime's CPU provider cannot load bfloat16 convolutions; TFLite's converter
        # fails on them ("Could not translate MLIR to FlatBuffer")
        raise ExportFormatError(
            f"{format} export needs a float32 model; this one computes in "
            f"{model_precision(model)!r}: rebuild it with create_model(..., precision='float32') "
            "and set_weights(model.get_weights()), or export 'savedmodel'"
        )
    # convert first, so that a failed conversion leaves an existing export at `out` in place
    artefact = None
    if format == "tflite":
        artefact = _tflite_bytes(model)
    elif format == "onnx":
        artefact = _onnx_bytes(model)
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
    if artefact is None:
        _serving_archive(model).write_out(str(out), verbose=False)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(artefact)
    return out
