"""Fixtures shared by the packages' tests (this folder is above every packages/*/tests): the tiny
model and images the export tests of agegender-models and of `agegender export` start from, and
how they read an export's predictions."""

from __future__ import annotations

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
