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
:class:`ExportFormatError` naming that command.

**Any model exports, whatever precision it computes in**: a model trained in ``mixed_bfloat16``
(whose bfloat16 convolutions neither TFLite nor ONNX Runtime's CPU provider can run) is exported
as its float32 copy (:func:`agegender_models.precision.float32_copy`: the same weights), and
int8-stored kernels (:class:`agegender_models.layers.QuantizedConv2D`, in the shipped default's
face descriptor, and ``QuantizedDense``, from ``quantized_copy``) as float32 ones (:func:`agegender_models.layers.dequantized_copy`), which the
converters fold into constants and TFLite runs on its accelerated kernels.

**Quantization** (``quantize=``, TFLite and ONNX): ``"float16"`` stores the weights in float16
(half the file); ``"int8"`` is post-training static quantization calibrated on ``calibration``
images (the run's training split, through the application; generated images otherwise):
TFLite's converter with a representative dataset, ONNX Runtime's ``quantize_static`` (QDQ,
per-channel int8 weights, uint8 activations). Inputs and outputs stay uint8 / float32.

**Every export is checked before it is written** (:func:`check_parity`): the artefact and the
Keras model predict a :class:`CheckSet` (real labelled faces when given, e.g. the run's test
split; generated images otherwise), and their gender accuracy must agree within
:data:`MAX_GENDER_POINTS` points and their age MAE within :data:`MAX_AGE_YEARS` years, or
:class:`ExportParityError` says by how much they missed and nothing is written. On generated
images, which have no labels, the Keras model's own predictions are the labels: the export must
agree on at least 99.5 % of the genders and its mean age difference must stay within 0.15 years,
a stricter test. A converter failure is one line (:class:`ExportConversionError`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np

from .layers import dequantized_copy
from .precision import float32_copy
from .runtime import Runner, artefact_runner, keras_runner, savedmodel_runner
from .saving import load_model

FORMATS = ("savedmodel", "tflite", "onnx")
QUANTIZATIONS = ("none", "float16", "int8")
ONNX_OPSET = 17  # read by ONNX Runtime 1.13 (2022) and later
# the packages are not on PyPI yet: the hint names the checkout's folder too
ONNX_INSTALL = ("pip install 'agegender-models[onnx]' (from a checkout of agegender: "
                "pip install './packages/agegender-models[onnx]')")
MAX_GENDER_POINTS = 0.5  # gender accuracy: |export - Keras| in percentage points
MAX_AGE_YEARS = 0.15  # age MAE: |export - Keras| in years
GENERATED_CHECK_IMAGES = 256
GENERATED_CALIBRATION_IMAGES = 100


class ExportFormatError(ValueError):
    """The requested export format is unknown or not available (e.g. its converter is missing)."""


class ExportConversionError(ExportFormatError):
    """A converter (TFLite, tf2onnx, ONNX Runtime's quantizer) failed; the message is one line."""


class ExportParityError(ValueError):
    """The export's predictions miss the Keras model's by more than the tolerances."""


# --------------------------------------------------------------------------------------------------
# check data


@dataclasses.dataclass
class CheckSet:
    """Images to check an export on: uint8 ``(N, H, W, 3)`` at the model's input size, with
    ``labels`` (``{"gender": 0/1 (1 = female), "age": years}``) for real faces, or ``None``
    (the Keras model's own predictions are then the labels); ``description`` names them."""

    images: np.ndarray
    labels: dict[str, np.ndarray] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
            raise ValueError(f"CheckSet images must be a non-empty (N, H, W, 3) array. "
                             f"Received shape {images.shape}")
        self.images = images.astype(np.uint8, copy=False)
        if self.labels is not None:
            self.labels = {k: np.asarray(self.labels[k], np.float32).reshape(-1)
                           for k in ("gender", "age")}
            if any(len(v) != len(images) for v in self.labels.values()):
                raise ValueError("CheckSet labels must have one gender and one age per image")
        if not self.description:
            kind = "labelled images" if self.labels is not None else "generated images"
            self.description = f"{len(images)} {kind}"


def generated_faces(n: int, size: tuple[int, int], *, seed: int = 0) -> np.ndarray:
    """``n`` smooth random colour images (uint8, ``size`` = (h, w)): a coarse 6x6 pattern
    upsampled bilinearly plus pixel noise, closer to a photo's statistics than white noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((w, h), Image.BILINEAR), np.float32)
        out[i] = np.clip(np.rint(smooth + rng.normal(0, 6, smooth.shape)), 0, 255).astype(np.uint8)
    return out


def _size(model: keras.Model) -> tuple[int, int]:
    return tuple(int(d) for d in model.inputs[0].shape[1:3])  # type: ignore[return-value]


def _check_set(model: keras.Model, check: CheckSet | bool | None) -> CheckSet:
    if isinstance(check, CheckSet):
        if check.images.shape[1:3] != _size(model):
            raise ValueError(f"CheckSet images are {check.images.shape[1:3]}, the model takes "
                             f"{_size(model)}")
        return check
    return CheckSet(generated_faces(GENERATED_CHECK_IMAGES, _size(model), seed=2))


@dataclasses.dataclass(frozen=True)
class Parity:
    """The Keras model against an export on a :class:`CheckSet`."""

    what: str
    description: str
    keras_accuracy: float
    export_accuracy: float
    keras_mae: float
    export_mae: float
    labelled: bool = True
    """False: faces without labels (generated images); the Keras model's own answers are the
    reference, so Keras scores 1 and 0 by construction."""

    @property
    def points(self) -> float:
        return 100 * (self.export_accuracy - self.keras_accuracy)

    @property
    def years(self) -> float:
        return self.export_mae - self.keras_mae

    @property
    def passed(self) -> bool:
        # rounded: a difference of exactly the tolerance passes despite float round-off
        return round(abs(self.points), 6) <= MAX_GENDER_POINTS and round(abs(self.years), 6) <= MAX_AGE_YEARS

    def describe(self) -> str:
        if not self.labelled:
            return (f"on {self.description}: the same gender as Keras for "
                    f"{100 * self.export_accuracy:.2f} % (allowed ≥ {100 - MAX_GENDER_POINTS:g} %), "
                    f"age {self.export_mae:.3f} years from Keras' on average (allowed "
                    f"{MAX_AGE_YEARS})")
        return (f"on {self.description}: gender accuracy {self.export_accuracy:.4f} vs Keras "
                f"{self.keras_accuracy:.4f} ({self.points:+.2f} points, allowed "
                f"±{MAX_GENDER_POINTS}); age MAE {self.export_mae:.3f} vs Keras "
                f"{self.keras_mae:.3f} ({self.years:+.3f} years, allowed ±{MAX_AGE_YEARS})")


def check_parity(model: keras.Model, runner: Runner, check: CheckSet | bool | None = None, *,
                 what: str = "the export", reference: tuple | None = None) -> Parity:
    """Compare ``runner`` (an export) with the Keras ``model`` on ``check`` (default: generated
    images); raise :class:`ExportParityError` saying by how much it missed. ``reference``: the
    Keras model's ``(p_female, age)`` on those images, when already computed."""
    check = _check_set(model, check)
    ref_p, ref_age = reference or keras_runner(model).run(check.images)
    got_p, got_age = runner.run(check.images)
    if check.labels is None:
        gender, age = (ref_p > 0.5).astype(np.float32), ref_age
    else:
        gender, age = check.labels["gender"], check.labels["age"]
    parity = Parity(
        what, check.description,
        keras_accuracy=float(np.mean((ref_p > 0.5) == (gender > 0.5))),
        export_accuracy=float(np.mean((got_p > 0.5) == (gender > 0.5))),
        keras_mae=float(np.mean(np.abs(ref_age - age))),
        export_mae=float(np.mean(np.abs(got_age - age))),
        labelled=check.labels is not None,
    )
    if not (np.isfinite(got_p).all() and np.isfinite(got_age).all()):
        raise ExportParityError(f"{what} fails the parity check: it predicts NaN or infinity")
    if not parity.passed:
        raise ExportParityError(f"{what} fails the parity check {parity.describe()}")
    return parity


# --------------------------------------------------------------------------------------------------
# converters


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


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """The line of a converter's message that says what failed (TFLite's run to 64 KB)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    line = next((x for x in lines if "error" in x.lower()), lines[0] if lines else type(exc).__name__)
    return line if len(line) <= limit else line[: limit - 3] + "..."


@contextlib.contextmanager
def _converting(what: str) -> Iterator[None]:
    """Any converter failure -> :class:`ExportConversionError` in one line; converter chatter
    (tf2onnx's optimizer tracebacks, ONNX Runtime's quantizer advice on the root logger) hidden."""
    loggers = [logging.getLogger(name) for name in ("tf2onnx", "")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():  # the int8 calibrator's tf.lite.Interpreter deprecation
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            yield
    except (ExportFormatError, ExportParityError):
        raise
    except Exception as exc:
        verb = "" if what.startswith("running") else " conversion"
        raise ExportConversionError(f"{what}{verb} failed: {_one_line(exc)}") from exc
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


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
    proto, _ = tf2onnx.convert.from_function(function, input_signature=[spec], opset=ONNX_OPSET)
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"  # the batch size (tf2onnx: "unk__12")
    return proto.SerializeToString()


def _onnx_quantized(content: bytes, quantize: str, calibration: np.ndarray) -> bytes:
    import onnx

    if quantize == "float16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        return convert_float_to_float16(onnx.load_from_string(content), keep_io_types=True).SerializeToString()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"image": calibration[i : i + 16]} for i in range(0, len(calibration), 16)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, target = (Path(tmp) / n for n in ("f.onnx", "p.onnx", "q.onnx"))
        source.write_bytes(content)
        try:  # shape inference and graph clean-up, as ONNX Runtime's documentation advises
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        except Exception:  # it is advice, not a requirement
            prepared = source
        quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
        return target.read_bytes()


def _tflite_bytes(model: keras.Model, quantize: str = "none",
                  calibration: np.ndarray | None = None) -> bytes:
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "savedmodel"
        _serving_archive(model).write_out(str(saved), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=["serve"])
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":  # integer kernels where TFLite has them, float I/O kept

            def representative():
                for i in range(len(calibration)):
                    yield {"image": calibration[i : i + 1]}

            converter.representative_dataset = representative
            with _converter_debug_line_dropped():
                return converter.convert()
        return converter.convert()


@contextlib.contextmanager
def _converter_debug_line_dropped() -> Iterator[None]:
    """TFLite's quantizer writes one debug line to file descriptor 2 whatever the log level
    (``llvm::dbgs() << "fully_quantize: ..."``): during the block, descriptor 2 goes to a
    temporary file, whose other lines are written back after it (all of them if it raises).
    The application's ``agegender._tf`` holds descriptor 2 alike while TensorFlow loads; neither
    can use the other's (this library does not import the application, and that one runs before
    this library, which imports Keras, can be imported)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (closed, as under some daemons)
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        raised = True
        try:
            yield
            raised = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines = sink.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(x for x in lines if raised or not x.startswith("fully_quantize: ")))
            sys.stderr.flush()


def _calibration(model: keras.Model, calibration: np.ndarray | None) -> np.ndarray:
    if calibration is None:
        return generated_faces(GENERATED_CALIBRATION_IMAGES, _size(model), seed=1)
    calibration = np.asarray(calibration)
    if calibration.ndim != 4 or calibration.shape[1:] != (*_size(model), 3) or not len(calibration):
        raise ValueError(f"calibration images must be (N, {_size(model)[0]}, {_size(model)[1]}, 3). "
                         f"Received shape {calibration.shape}")
    return calibration.astype(np.uint8, copy=False)


def _check_options(format: str, quantize: str) -> None:
    if format not in FORMATS:
        raise ExportFormatError(f"`format` must be one of {FORMATS}. Received: format={format!r}")
    if quantize not in QUANTIZATIONS:
        raise ExportFormatError(
            f"`quantize` must be one of {QUANTIZATIONS}. Received: quantize={quantize!r}")
    if format == "savedmodel" and quantize != "none":
        raise ExportFormatError(f"quantize={quantize!r} applies to 'tflite' and 'onnx' exports; "
                                "a SavedModel is float32")
    if format == "onnx":
        _import_tf2onnx()  # before loading the model: a missing extra is reported at once


def convert_model(model: keras.Model, format: str, *, quantize: str = "none",
                  calibration: np.ndarray | None = None) -> bytes:
    """The ``"tflite"`` or ``"onnx"`` file's bytes for ``model`` (its float32 copy; see the
    module docstring), unchecked. A converter failure raises :class:`ExportConversionError`."""
    _check_options(format, quantize)
    if format == "savedmodel":
        raise ExportFormatError("a SavedModel is a folder: use export_model")
    model = dequantized_copy(float32_copy(model))
    what = f"{format}" + ("" if quantize == "none" else f" {quantize}")
    data = _calibration(model, calibration) if quantize == "int8" else None
    with _converting(what):
        if format == "tflite":
            return _tflite_bytes(model, quantize, data)
        content = _onnx_bytes(model)
        if quantize != "none":
            content = _onnx_quantized(content, quantize, data)
        return content


def _replace(out: Path) -> None:
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()


def export_model(
    model_or_path: keras.Model | str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str = "savedmodel",
    quantize: str = "none",
    check: CheckSet | bool = True,
    calibration: np.ndarray | None = None,
    return_parity: bool = False,
) -> Path | tuple[Path, Parity | None]:
    """Export ``model_or_path`` (a model or a ``.keras`` file) to ``out``; returns the path
    (with ``return_parity=True``: ``(path, parity)``).

    ``format="savedmodel"`` writes a folder, ``"tflite"`` and ``"onnx"`` one file; ``quantize``
    (``"none"``, ``"float16"``, ``"int8"``; TFLite and ONNX) with ``calibration`` images for
    int8 (uint8 at the model's input size; default: generated). ``check``: a :class:`CheckSet`
    of real faces, ``True`` (generated images) or ``False`` (no check). An existing file or
    SavedModel at ``out`` is replaced, but only by an export that passed; any other non-empty
    folder is refused. Raises :class:`ExportFormatError` (unknown option, missing converter),
    :class:`ExportConversionError` (a converter failed) or :class:`ExportParityError`.
    """
    _check_options(format, quantize)
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
    what = f"the {format} export" + ("" if quantize == "none" else f" ({quantize})")
    if check is not False:
        check = _check_set(model, check)  # a wrong image size is said before converting
    out.parent.mkdir(parents=True, exist_ok=True)
    parity = None
    if format == "savedmodel":
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            with _converting("savedmodel"):
                _serving_archive(dequantized_copy(float32_copy(model))).write_out(
                    str(staging / "sm"), verbose=False)
            if check is not False:
                with _converting(f"running {what}"):
                    parity = check_parity(model, savedmodel_runner(staging / "sm"), check, what=what)
            _replace(out)
            shutil.move(str(staging / "sm"), str(out))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    else:
        content = convert_model(model, format, quantize=quantize, calibration=calibration)
        if check is not False:
            with _converting(f"running {what}"):  # e.g. a runtime that cannot load the file
                runner = artefact_runner(format, content, quantize=quantize)
                parity = check_parity(model, runner, check, what=what)
        _replace(out)
        out.write_bytes(content)
    return (out, parity) if return_parity else out

