"""Shared tiny models: one build per backbone per test session (ResNet50 builds are slow)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import keras
import numpy as np
import pytest

from agegender_models import backbone_defaults, create_model

# measured "auto" verdicts go to a folder of this test session, not the user's ~/.cache; and
# Predictor runs Keras, whose outputs the tests compare exactly ("auto" has its own tests)
if "AGEGENDER_CACHE_DIR" not in os.environ:
    os.environ["AGEGENDER_CACHE_DIR"] = tempfile.mkdtemp(prefix="agegender-test-cache-")
    atexit.register(shutil.rmtree, os.environ["AGEGENDER_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("AGEGENDER_RUNTIME", "keras")

TINY = (32, 32, 3)


@pytest.fixture(scope="session")
def tiny_models():
    """``tiny_models(name)`` -> a 32x32 model with random weights and the backbone's default
    trainable-layer setting (as a real fine-tuning run would use it)."""
    cache: dict[str, keras.Model] = {}

    def get(name: str) -> keras.Model:
        if name not in cache:
            keras.utils.set_random_seed(0)
            cache[name] = create_model(
                name,
                weights=None,
                input_shape=TINY,
                trainable_layers=backbone_defaults(name)["trainable_layers"],
            )
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tiny_batch():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, *TINY), dtype=np.uint8)
    labels = {
        "gender": np.array([0, 1] * 4, dtype=np.float32),
        "age": rng.uniform(20, 70, size=8).astype(np.float32),
    }
    return images, labels
