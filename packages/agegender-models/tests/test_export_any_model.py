"""Exports of any model (mixed bfloat16 too), quantized ones, the parity check before writing,
and converter failures in one line."""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest

from agegender_models import compile_model, create_model, ensemble, flip_tta
from agegender_models.export import (
    MAX_AGE_YEARS,
    CheckSet,
    ExportConversionError,
    ExportFormatError,
    ExportParityError,
    check_parity,
    export_model,
    generated_faces,
)
from agegender_models.runtime import Runner, onnx_runner, savedmodel_runner, tflite_runner

SIZE = (32, 32)


def labelled_faces(n: int, *, seed: int) -> CheckSet:
    """Generated images with labels a model can learn: bluer for female, redder for male, the
    age (20-45 years) in the green channel."""
    x = generated_faces(n, SIZE, seed=seed).astype("int16")
    gender = (np.arange(n) % 2).astype("float32")
    shift = np.where(gender[:, None, None] > 0, 40, -40)
    x[..., 2] += shift
    x[..., 0] -= shift
    x = np.clip(x, 0, 255).astype("uint8")
    age = 20 + x[..., 1].mean((1, 2)) / 10
    return CheckSet(x, {"gender": gender, "age": age}, description=f"{n} generated labelled images")


@pytest.fixture(scope="module")
def trained_tiny():
    """A 32x32 Model A fitted on :func:`labelled_faces`, so that it is as decided as a trained
    model (an untrained one gives P(female) near 0.5 for every image, where int8 rounding flips
    genders by chance)."""
    keras.utils.set_random_seed(0)
    model = create_model("custom_cnn", input_shape=(*SIZE, 3))
    train = labelled_faces(256, seed=11)
    compile_model(model, jit_compile=False)
    model.fit(train.images, train.labels, epochs=2, batch_size=32, verbose=0)
    # BatchNorm's moving statistics (momentum 0.99) are far from the data after 16 steps: set
    # them to the training images' own, as a long run would have them
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(train.images, training=True)
    return model


@pytest.fixture(scope="module")
def mixed_model():
    keras.utils.set_random_seed(1)
    return create_model("custom_cnn", input_shape=(*SIZE, 3), precision="mixed_bfloat16")


def _runner(format: str, path: Path) -> Runner:
    if format == "savedmodel":
        return savedmodel_runner(path)
    make = tflite_runner if format == "tflite" else onnx_runner
    return make(path.read_bytes())


@pytest.mark.parametrize("format", ["savedmodel", "tflite", "onnx"])
def test_a_mixed_bfloat16_model_exports_to_every_format(mixed_model, format: str, tmp_path) -> None:
    """The issue's failure: a bf16 model's TFLite conversion died with 64 KB of MLIR errors."""
    if format == "onnx":
        pytest.importorskip("tf2onnx")
    # also inside the wrappers that `export --flip-tta` and `--model A --model B` build (once)
    models = [mixed_model]
    if format == "savedmodel":
        plain = create_model("custom_cnn", input_shape=(*SIZE, 3))
        models.append(flip_tta(ensemble([plain, mixed_model])))
    for i, model in enumerate(models):
        out = tmp_path / f"m{i}.{format}"
        path, parity = export_model(model, out, format=format, return_parity=True)
        assert path == out and out.exists() and parity.passed
        # no labels: agreement with Keras is said as such, not as Keras' "accuracy 1.0000"
        assert not parity.labelled and "accuracy" not in parity.describe()
        assert re.search(r"the same gender as Keras for 1?\d?\d\.\d\d % \(allowed ≥ 99\.5 %\), age "
                         r"\d\.\d{3} years from Keras' on average", parity.describe()), parity.describe()
        images = generated_faces(8, SIZE, seed=4)
        got = _runner(format, out)(images)
        want = model(images, training=False)  # the bf16 model itself
        np.testing.assert_allclose(got[1], np.ravel(want["age"]), atol=0.5)
        np.testing.assert_allclose(got[0], np.ravel(want["gender"]), atol=0.02)


@pytest.mark.parametrize("format", ["tflite", "onnx"])
@pytest.mark.parametrize("quantize", ["float16", "int8"])
def test_quantized_exports_pass_the_parity_check(trained_tiny, format, quantize, tmp_path, capfd) -> None:
    if format == "onnx":
        pytest.importorskip("tf2onnx")
    check = labelled_faces(256, seed=2)
    out = tmp_path / f"q.{format}"
    capfd.readouterr()
    path, parity = export_model(trained_tiny, out, format=format, quantize=quantize,
                                check=check, return_parity=True)
    # TFLite's quantizer prints a debug line from C++ whatever the log level: held back
    assert "fully_quantize" not in capfd.readouterr().err
    assert parity.passed and parity.description == "256 generated labelled images"
    assert parity.labelled and "gender accuracy" in parity.describe()
    assert parity.keras_accuracy > 0.95  # a decided model: the check means something
    assert abs(parity.years) <= MAX_AGE_YEARS
    # really quantized: a smaller file than the float32 weights (float16: half; int8: a quarter) ...
    ratio = path.stat().st_size / (4 * trained_tiny.count_params())
    assert ratio < (0.6 if quantize == "float16" else 0.35), ratio
    # ... whose predictions differ from the Keras model's, within the tolerances
    images = generated_faces(32, SIZE, seed=5)
    exact = np.ravel(trained_tiny.predict_on_batch(images)["age"])
    approx = _runner(format, path)(images)[1]
    assert 0 < np.abs(exact - approx).max() < 2


def test_check_on_labelled_faces_compares_accuracy_and_mae(trained_tiny) -> None:
    images = generated_faces(64, SIZE, seed=6)
    ref_p, ref_age = (np.ravel(v) for v in trained_tiny.predict_on_batch(images).values())
    labels = {"gender": (np.arange(64) % 2).astype("float32"), "age": np.full(64, 30.0)}
    check = CheckSet(images, labels, description="64 labelled faces")

    def shifted(by_years: float, flip: int = 0) -> Runner:
        def run(x):
            out = trained_tiny.predict_on_batch(x)
            p = np.ravel(out["gender"]).copy()
            p[:flip] = 1 - p[:flip]
            return p, np.ravel(out["age"]) + by_years
        return Runner("fake", run)

    ok = check_parity(trained_tiny, shifted(0.0), check)
    assert ok.passed and ok.description == "64 labelled faces"
    assert ok.keras_mae == pytest.approx(np.mean(np.abs(ref_age - 30.0)), rel=1e-5)
    # an age shift larger than the tolerance fails, saying by how much
    if np.all(ref_age < 30.0 - 0.3):
        with pytest.raises(ExportParityError, match=r"age MAE .*\(-0\.300 years, allowed ±0\.15\)"):
            check_parity(trained_tiny, shifted(0.3), check, what="the fake export")
    # flipped genders: 2 of 64 images can change the accuracy by up to 3.1 points
    with pytest.raises(ExportParityError, match=r"the fake export fails the parity check on 64 "
                       r"labelled faces: gender accuracy .* points, allowed ±0\.5\)"):
        check_parity(trained_tiny, shifted(0.0, flip=1), check, what="the fake export")


def test_an_export_that_misses_parity_is_not_written(trained_tiny, tmp_path, monkeypatch) -> None:
    """The converter is swapped for one that converts another model: the check catches it."""
    from agegender_models import export as export_module

    keras.utils.set_random_seed(9)
    other = create_model("custom_cnn", input_shape=(*SIZE, 3), age_bias=60.0)
    real = export_module._tflite_bytes
    monkeypatch.setattr(export_module, "_tflite_bytes", lambda model, *a: real(other, *a))
    out = tmp_path / "m.tflite"
    out.write_bytes(b"an earlier export")
    with pytest.raises(ExportParityError) as error:
        export_model(trained_tiny, out, format="tflite")
    message = str(error.value)
    assert message.startswith("the tflite export fails the parity check on 256 generated images")
    assert "\n" not in message and "years from Keras' on average (allowed 0.15)" in message
    assert out.read_bytes() == b"an earlier export"


def test_broken_tflite_converter_is_one_line(trained_tiny, tmp_path, monkeypatch) -> None:
    import tensorflow as tf

    class Broken:
        """What TF 2.21 raised on a bfloat16 model: 64 KB of MLIR diagnostics."""

        optimizations, target_spec, representative_dataset = [], tf.lite.TargetSpec(), None

        def convert(self):
            from tensorflow.lite.python.convert import ConverterError

            raise ConverterError(
                "<unknown>:0: note: see current operation\n" * 300
                + "<unknown>:0: error: 'tfl.conv_2d' op operand #0 must be tensor of float32 values\n"
                + "Could not translate MLIR to FlatBuffer.\n" * 50)

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", lambda *a, **k: Broken())
    with pytest.raises(ExportConversionError) as error:
        export_model(trained_tiny, tmp_path / "m.tflite", format="tflite", quantize="int8")
    assert str(error.value) == ("tflite int8 conversion failed: <unknown>:0: error: 'tfl.conv_2d' "
                                "op operand #0 must be tensor of float32 values")
    assert isinstance(error.value, ExportFormatError)  # a ValueError: the CLI's one-line path
    assert not (tmp_path / "m.tflite").exists()


def test_broken_onnx_converter_is_one_line(trained_tiny, tmp_path, monkeypatch) -> None:
    tf2onnx = pytest.importorskip("tf2onnx")

    def from_function(*args, **kwargs):
        raise RuntimeError("Unsupported ops: Counter({'XlaConvV2': 4})\n" + "detail\n" * 100)

    monkeypatch.setattr(tf2onnx.convert, "from_function", from_function)
    with pytest.raises(ExportConversionError, match=r"^onnx conversion failed: Unsupported ops: "
                       r"Counter\(\{'XlaConvV2': 4\}\)$"):
        export_model(trained_tiny, tmp_path / "m.onnx", format="onnx")


def test_quantize_options_are_checked(trained_tiny, tmp_path) -> None:
    with pytest.raises(ExportFormatError, match="a SavedModel is float32"):
        export_model(trained_tiny, tmp_path / "sm", format="savedmodel", quantize="int8")
    with pytest.raises(ExportFormatError, match=r"`quantize` must be one of \('none', 'float16', 'int8'\)"):
        export_model(trained_tiny, tmp_path / "m.tflite", format="tflite", quantize="int4")
    with pytest.raises(ValueError, match=r"calibration images must be \(N, 32, 32, 3\)"):
        export_model(trained_tiny, tmp_path / "m.tflite", format="tflite", quantize="int8",
                     calibration=np.zeros((4, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="CheckSet images are"):
        export_model(trained_tiny, tmp_path / "m.tflite", format="tflite",
                     check=CheckSet(np.zeros((4, 64, 64, 3), np.uint8)))
    assert not list(tmp_path.iterdir())
