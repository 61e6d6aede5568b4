"""Fixtures for the cross-package tests: a tiny generated UTKFace-style folder."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
# measured "auto" verdicts go to a folder of this test session, not the user's ~/.cache; and
# Predictor/predict run Keras, whose outputs the tests compare exactly ("auto" has its own tests)
if "AGEGENDER_CACHE_DIR" not in os.environ:
    os.environ["AGEGENDER_CACHE_DIR"] = tempfile.mkdtemp(prefix="agegender-test-cache-")
    atexit.register(shutil.rmtree, os.environ["AGEGENDER_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("AGEGENDER_RUNTIME", "keras")

IMAGE_PX = 40


def make_face_folder(folder: Path, n: int = 64, *, seed: int = 0) -> Path:
    """Write ``n`` small synthetic "faces" with valid UTKFace names (ages 1-90, both genders).

    The images carry a weak label signal (brightness follows age, a colour channel follows gender)
    so a tiny model can move its loss, but nothing here is a real face.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        age = int(rng.integers(1, 91))
        gender = i % 2
        race = int(rng.integers(0, 5))
        base = rng.integers(0, 60, size=(IMAGE_PX, IMAGE_PX, 3))
        base[..., 0] += 2 * age
        base[..., 2] += 80 * gender
        pixels = np.clip(base, 0, 255).astype("uint8")
        name = f"{age}_{gender}_{race}_2017011{i:010d}.jpg.chip.jpg"
        Image.fromarray(pixels).save(folder / name, quality=90)
    return folder


@pytest.fixture(scope="session")
def face_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64 valid generated images plus one malformed name and one non-image file."""
    folder = make_face_folder(tmp_path_factory.mktemp("utkface") / "faces")
    Image.new("RGB", (IMAGE_PX, IMAGE_PX)).save(folder / "61_1_20170109142408075.jpg.chip.jpg")
    (folder / "README.txt").write_text("not an image\n")
    return folder


@pytest.fixture(scope="session")
def make_faces():
    """:func:`make_face_folder`, for a test that needs a folder of its own size (test modules
    cannot import conftest under ``--import-mode=importlib``)."""
    return make_face_folder


class WidthDetector:
    """A fake face detector: two faces in 300-px-wide photos, one in 250-px ones, none otherwise
    (it takes, and ignores, a real detector's options)."""

    def __init__(self, **kwargs):
        pass

    def detect_faces(self, image):
        from agegender_models.detect import Face

        faces = {
            300: [Face((10, 20, 60, 60), 0.99), Face((150, 30, 80, 80), 0.98)],
            250: [Face((40, 40, 100, 100), 0.97)],
        }
        return faces.get(image.shape[1], [])


@pytest.fixture(scope="session")
def width_detector() -> type[WidthDetector]:
    """:class:`WidthDetector`, the class (test modules cannot import conftest)."""
    return WidthDetector


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained Model A (``custom_cnn``, 32x32) saved as .keras, one per test module."""
    from agegender_models import create_model, save_model

    return save_model(
        create_model("custom_cnn", input_shape=(32, 32, 3)),
        tmp_path_factory.mktemp("model") / "tiny.keras",
    )
