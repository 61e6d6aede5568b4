"""Fake UTKFace folders generated in tmp_path (tiny images), in the tensorflow-datasets style."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Real-data tests look here unless UTKFACE_DIR says otherwise.
SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "utkface" / "crop_part1_5000"


def write_image(
    path: Path, *, size: tuple[int, int] = (24, 24), mode: str = "RGB", seed: int = 0
) -> Path:
    """Write a small random image; the format follows the extension (JPEG for .jpg files)."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
    fmt = "PNG" if path.name.lower().endswith(".png") else "JPEG"
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def utk_name(age: int, gender: int, race: int, i: int, ext: str = ".jpg.chip.jpg") -> str:
    return f"{age}_{gender}_{race}_20170103{i:09d}{ext}"


@pytest.fixture
def image_writer() -> Callable[..., Path]:
    return write_image


@pytest.fixture
def utk_folder(tmp_path: Path) -> Path:
    """24 valid images over several ages/genders/races; no bad files."""
    root = tmp_path / "utk"
    root.mkdir()
    ages = [1, 5, 9, 12, 15, 17, 20, 25, 33, 40, 50, 70]
    i = 0
    for age in ages:
        for gender in (0, 1):
            write_image(root / utk_name(age, gender, i % 5, i), seed=i)
            i += 1
    return root


@pytest.fixture
def messy_folder(utk_folder: Path) -> Path:
    """utk_folder plus the known malformed names, non-images, a 0-byte file and a broken JPEG."""
    root = utk_folder
    for bad in (
        "61_1_20170109142408075.jpg.chip.jpg",
        "53__0_20170116184028385.jpg",
        "55_0_0_20170116232725357jpg.chip.jpg",
        "24_0_1_20170116220224657 .jpg.chip.jpg",
        "44_1_4_20170116235150272.pg",
    ):
        write_image(root / bad)
    (root / "README.txt").write_text("not an image\n")
    (root / ".DS_Store").write_bytes(b"\0\0")
    (root / "30_1_0_20170103000000999.jpg").write_bytes(b"")
    good = write_image(root / "31_1_0_20170103000000998.jpg", size=(32, 32))
    data = good.read_bytes()
    (root / "32_1_0_20170103000000997.jpg").write_bytes(data[: len(data) // 2])  # truncated
    good.unlink()
    return root


@pytest.fixture
def shared_dir() -> Path:
    path = Path(os.environ.get("UTKFACE_DIR", SHARED))
    if not path.is_dir():
        pytest.skip(f"real UTKFace folder not found: {path} (set UTKFACE_DIR)")
    return path
