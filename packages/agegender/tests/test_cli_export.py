"""`agegender export`: the command line around agegender_models.export_model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agegender.cli import main as cli_main
from agegender_models import create_model, save_model


def test_missing_onnx_converter_is_one_line(tiny_model, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # `import tf2onnx` raises ImportError
    # the CLI: one line on stderr naming the extra, exit status 2, no traceback
    model_path = save_model(tiny_model, tmp_path / "m.keras")
    status = cli_main(
        [
            "export",
            "--model",
            str(model_path),
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "m.onnx"),
        ]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("agegender: error: ONNX export needs the tf2onnx converter")
    assert "pip install 'agegender-models[onnx]'" in err and "'./packages/agegender-models[onnx]'" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()



def _cli_export(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-m", "agegender.cli", "export", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def test_cli_export_from_a_keras_file(tiny_model, tmp_path: Path) -> None:
    model_path = save_model(tiny_model, tmp_path / "m.keras")
    ok = _cli_export("--model", str(model_path), "--format", "tflite", "--out", str(tmp_path / "m.tflite"))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "m.tflite").stat().st_size > 0
    missing = _cli_export("--model", str(tmp_path / "no.keras"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 2
    assert "model file not found" in missing.stderr
    assert "Traceback" not in missing.stderr


@pytest.mark.parametrize("format", ["tflite", "onnx"])
def test_cli_exports_an_ensemble_with_flip_tta(tiny_model, images, run_keras, run_onnx,
                                                format: str, tmp_path: Path) -> None:
    """`export --model A --model B --flip-tta`: the artefact is what evaluate/predict use."""
    import keras
    import tensorflow as tf

    from agegender_models import ensemble, flip_tta

    if format == "onnx":
        pytest.importorskip("tf2onnx")
    keras.utils.set_random_seed(1)
    # another age bias than tiny_model's: the ensemble's ages differ from tiny_model's by years,
    # whatever the random weights (two random models' outputs alone were once within 0.01)
    small = create_model("custom_cnn", input_shape=(24, 24, 3), age_bias=60.0)
    paths = [str(save_model(m, tmp_path / f"{i}.keras")) for i, m in enumerate((tiny_model, small))]
    out = tmp_path / f"ensemble.{format}"
    ok = _cli_export("--model", paths[0], "--model", paths[1], "--flip-tta", "--format", format,
                     "--out", str(out))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "flip TTA" in ok.stdout
    if format == "tflite":
        got = tf.lite.Interpreter(str(out)).get_signature_runner("serve")(image=images)
    else:
        got = run_onnx(out, images)
    ref = run_keras(flip_tta(ensemble([tiny_model, small])), images)
    plain = run_keras(tiny_model, images)
    assert np.abs(plain["age"] - ref["age"]).max() > 0.01  # the wrapping changes the predictions
    np.testing.assert_allclose(got["gender"], ref["gender"], atol=1e-4)
    np.testing.assert_allclose(got["age"], ref["age"], atol=1e-2)


