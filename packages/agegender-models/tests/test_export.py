"""Exports take raw uint8 RGB and give the Keras model's predictions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agegender_models import create_model, save_model
from agegender_models.export import ExportFormatError, export_model


@pytest.fixture(scope="module")
def tiny_model():
    return create_model("custom_cnn", input_shape=(32, 32, 3))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3)).astype("uint8")


def _reference(model, images):
    out = model(images.astype("float32"), training=False)
    return {k: np.ravel(np.asarray(out[k])) for k in ("gender", "age")}


def test_savedmodel_matches_keras(tiny_model, images, tmp_path: Path) -> None:
    import tensorflow as tf

    path = export_model(tiny_model, tmp_path / "sm", format="savedmodel")
    serve = tf.saved_model.load(str(path)).signatures["serve"]
    out = serve(image=tf.constant(images))
    ref = _reference(tiny_model, images)
    assert out["gender"].shape == (5,)
    np.testing.assert_allclose(out["gender"].numpy(), ref["gender"], atol=1e-5)
    np.testing.assert_allclose(out["age"].numpy(), ref["age"], atol=1e-3)


def test_tflite_matches_keras(tiny_model, images, tmp_path: Path) -> None:
    import tensorflow as tf

    path = export_model(tiny_model, tmp_path / "model.tflite", format="tflite")
    runner = tf.lite.Interpreter(str(path)).get_signature_runner("serve")
    out = runner(image=images)
    ref = _reference(tiny_model, images)
    np.testing.assert_allclose(out["gender"], ref["gender"], atol=1e-4)
    np.testing.assert_allclose(out["age"], ref["age"], atol=1e-2)


def test_export_refuses_unknown_and_unavailable_formats(tiny_model, tmp_path: Path) -> None:
    with pytest.raises(ExportFormatError, match="must be one of"):
        export_model(tiny_model, tmp_path / "x", format="coreml")
    with pytest.raises(ExportFormatError, match="ONNX export is not available yet"):
        export_model(tiny_model, tmp_path / "x.onnx", format="onnx")


def test_cli_export_from_a_keras_file(tiny_model, tmp_path: Path) -> None:
    model_path = save_model(tiny_model, tmp_path / "m.keras")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    ok = subprocess.run(
        [sys.executable, "-m", "agegender_models.cli", "export", "--model", str(model_path),
         "--format", "tflite", "--out", str(tmp_path / "m.tflite")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "m.tflite").stat().st_size > 0
    missing = subprocess.run(
        [sys.executable, "-m", "agegender_models.cli", "export", "--model", str(tmp_path / "no.keras"),
         "--out", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert missing.returncode == 2
    assert "model file not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_export_never_replaces_an_unrelated_folder(tiny_model, tmp_path: Path) -> None:
    precious = tmp_path / "models"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="other than a SavedModel"):
        export_model(tiny_model, precious, format="savedmodel")
    assert (precious / "notes.txt").read_text() == "keep me"
