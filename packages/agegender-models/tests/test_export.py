"""Exports take raw uint8 RGB and give the Keras model's predictions."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from agegender_models import create_model
from agegender_models.export import ExportFormatError, export_model
from agegender_models.predict import _to_rgb_array

ROOT = Path(__file__).resolve().parents[3]
DATA = Path(os.environ.get("UTKFACE_DIR", ROOT.parent / "shared" / "utkface" / "crop_part1_5000"))


def test_savedmodel_matches_keras(tiny_model, images, run_keras, tmp_path: Path) -> None:
    import tensorflow as tf

    path = export_model(tiny_model, tmp_path / "sm", format="savedmodel")
    serve = tf.saved_model.load(str(path)).signatures["serve"]
    out = serve(image=tf.constant(images))
    ref = run_keras(tiny_model, images)
    assert out["gender"].shape == (5,)
    np.testing.assert_allclose(out["gender"].numpy(), ref["gender"], atol=1e-5)
    np.testing.assert_allclose(out["age"].numpy(), ref["age"], atol=1e-3)
    # each weight is stored once (keras.export.ExportArchive.track() would store it twice)
    weights_bytes = sum(int(np.prod(w.shape)) * 4 for w in tiny_model.weights)
    stored = sum(f.stat().st_size for f in (path / "variables").iterdir())
    assert weights_bytes <= stored < 1.1 * weights_bytes


def test_tflite_matches_keras(tiny_model, images, run_keras, tmp_path: Path) -> None:
    import tensorflow as tf

    path = export_model(tiny_model, tmp_path / "model.tflite", format="tflite")
    runner = tf.lite.Interpreter(str(path)).get_signature_runner("serve")
    out = runner(image=images)
    ref = run_keras(tiny_model, images)
    np.testing.assert_allclose(out["gender"], ref["gender"], atol=1e-4)
    np.testing.assert_allclose(out["age"], ref["age"], atol=1e-2)


def test_onnx_matches_keras(tiny_model, images, run_keras, run_onnx, tmp_path: Path) -> None:
    pytest.importorskip("tf2onnx")
    ort = pytest.importorskip("onnxruntime")
    path = export_model(tiny_model, tmp_path / "model.onnx", format="onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # the same interface as the SavedModel/TFLite signatures: uint8 (N, H, W, 3) in, (N,) out
    assert [(i.name, i.type, i.shape) for i in session.get_inputs()] == [
        ("image", "tensor(uint8)", ["N", 32, 32, 3])
    ]
    assert {(o.name, o.type, tuple(o.shape)) for o in session.get_outputs()} == {
        ("gender", "tensor(float)", ("N",)),
        ("age", "tensor(float)", ("N",)),
    }
    out = run_onnx(path, images)
    ref = run_keras(tiny_model, images)
    assert out["gender"].shape == (5,)
    np.testing.assert_allclose(out["gender"], ref["gender"], atol=1e-5)
    np.testing.assert_allclose(out["age"], ref["age"], atol=1e-3)
    one = run_onnx(path, images[:1])  # any batch size, including 1
    np.testing.assert_allclose(one["age"], ref["age"][:1], atol=1e-3)


def test_export_refuses_unknown_formats(tiny_model, tmp_path: Path) -> None:
    with pytest.raises(ExportFormatError, match="must be one of"):
        export_model(tiny_model, tmp_path / "x", format="coreml")


def test_missing_onnx_converter_names_the_extra(
    tiny_model, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # `import tf2onnx` raises ImportError
    (tmp_path / "model.onnx").write_bytes(b"an earlier export")
    with pytest.raises(ExportFormatError, match=r"pip install 'agegender-models\[onnx\]'"):
        export_model(tiny_model, tmp_path / "model.onnx", format="onnx")
    assert (tmp_path / "model.onnx").read_bytes() == b"an earlier export"


def test_export_never_replaces_an_unrelated_folder(tiny_model, tmp_path: Path) -> None:
    precious = tmp_path / "models"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="other than a SavedModel"):
        export_model(tiny_model, precious, format="savedmodel")
    assert (precious / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason=f"real UTKFace folder not found: {DATA}")
@pytest.mark.parametrize("format", ["savedmodel", "tflite", "onnx"])
def test_exports_match_keras_on_real_images(format: str, run_keras, run_onnx,
                                            tmp_path: Path) -> None:
    """32 real face chips, resized as :class:`Predictor` resizes them, through each export."""
    import keras
    import tensorflow as tf
    from PIL import Image

    if format == "onnx":
        pytest.importorskip("tf2onnx")
        pytest.importorskip("onnxruntime")
    files = sorted(DATA.glob("*.jpg"))[::150][:32]
    assert len(files) == 32
    keras.utils.set_random_seed(0)
    model = create_model("custom_cnn", input_shape=(64, 64, 3))
    images = np.stack([_to_rgb_array(Image.open(f), (64, 64)) for f in files])
    ref = run_keras(model, images)
    path = export_model(model, tmp_path / f"model.{format}", format=format)
    if format == "savedmodel":
        serve = tf.saved_model.load(str(path)).signatures["serve"]
        out = {k: v.numpy() for k, v in serve(image=tf.constant(images)).items()}
    elif format == "tflite":
        out = tf.lite.Interpreter(str(path)).get_signature_runner("serve")(image=images)
    else:
        out = run_onnx(path, images)
    # the tolerance is far below what a wrong input scaling (0-1 instead of 0-255) changes
    wrong = run_keras(model, images / 255.0)
    for key, atol in (("gender", 1e-4), ("age", 1e-3)):
        assert np.abs(wrong[key] - ref[key]).max() > 10 * atol
        diff = np.abs(out[key] - ref[key]).max()
        assert diff <= atol, f"{format} {key}: max |diff| {diff} > {atol}"
