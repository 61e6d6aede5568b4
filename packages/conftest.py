"""Fixtures shared by the packages' tests (this folder is above every packages/*/tests): the tiny
model and images the export tests of agegender-models and of `agegender export` start from, how
they read an export's predictions, and a face-api.js weights folder of random weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def keras_outputs(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """``model``'s predictions for uint8 ``images``, flattened: {'gender': (N,), 'age': (N,)}."""
    out = model(images.astype("float32"), training=False)
    return {k: np.ravel(np.asarray(out[k])) for k in ("gender", "age")}


def onnx_outputs(path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """The ONNX export at ``path`` run on ``images`` by ONNX Runtime (skips without it)."""
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    gender, age = session.run(["gender", "age"], {"image": images})
    return {"gender": gender, "age": age}


@pytest.fixture(scope="module")
def tiny_model():
    """A fresh 32x32 Model A (``custom_cnn``, random weights), one per test module."""
    from agegender_models import create_model

    return create_model("custom_cnn", input_shape=(32, 32, 3))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Five random uint8 RGB images of ``tiny_model``'s input size."""
    return np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3)).astype("uint8")


@pytest.fixture(scope="session")
def run_keras():
    """:func:`keras_outputs` (test modules cannot import conftest under
    ``--import-mode=importlib``)."""
    return keras_outputs


@pytest.fixture(scope="session")
def run_onnx():
    """:func:`onnx_outputs` (test modules cannot import conftest under
    ``--import-mode=importlib``)."""
    return onnx_outputs


def write_fake_face_api(folder: Path, *, seed: int = 0) -> Path:
    """A face-api.js face recognition model folder with random weights of the real shapes and
    encodings (uint8-quantized tensors, and float32 ones for the 64-filter convolutions, as in
    the real file): what ``agegender_models.face_descriptor`` reads, without the 6 MB download."""
    from agegender_models.face_descriptor import _BLOCKS, MANIFEST

    rng = np.random.default_rng(seed)
    convs = [("conv32_down", 7, 3, 32)]
    channels = 32
    for name, filters, _down in _BLOCKS:
        convs += [(f"{name}/conv1", 3, channels, filters), (f"{name}/conv2", 3, filters, filters)]
        channels = filters
    specs, chunks = [], []

    def add(name: str, values: np.ndarray, quantize: bool) -> None:
        spec = {"name": name, "shape": list(values.shape), "dtype": "float32"}
        if quantize:
            low, high = float(values.min()), float(values.max())
            scale = (high - low) / 255 or 1.0
            spec["quantization"] = {"dtype": "uint8", "scale": scale, "min": low}
            chunks.append(np.round((values - low) / scale).astype(np.uint8).tobytes())
        else:
            chunks.append(values.astype(np.float32).tobytes())
        specs.append(spec)

    for name, k, cin, cout in convs:
        add(f"{name}/conv/filters", rng.normal(0, (2 / (k * k * cin)) ** 0.5, (k, k, cin, cout)),
            quantize=not name.startswith("conv64"))
        add(f"{name}/conv/bias", rng.normal(0, 0.01, cout), quantize=True)
        add(f"{name}/scale/weights", rng.uniform(0.5, 1.0, cout), quantize=True)
        add(f"{name}/scale/biases", rng.normal(0, 0.05, cout), quantize=True)
    add("fc", rng.normal(0, 0.05, (256, 128)), quantize=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "face_recognition_model.bin").write_bytes(b"".join(chunks))
    manifest = [{"paths": ["face_recognition_model.bin"], "weights": specs}]
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def fake_face_api(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`write_fake_face_api` in a folder of this test session."""
    return write_fake_face_api(tmp_path_factory.mktemp("face_api"))
