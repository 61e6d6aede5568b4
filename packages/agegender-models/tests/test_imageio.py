"""agegender_models.imageio and what Predictor makes of it: upright pixels, modes converted,
errors that name the file, no input dropped silently, foreign models refused in one line.

(That the training pipeline reads the same pixels, and that every reader refuses a
decompression bomb, is checked across packages in tests/test_image_readers.py.)
"""

from __future__ import annotations

import os
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from agegender_models import (
    ImageReadError,
    ModelFileError,
    Predictions,
    Predictor,
    load_model,
    read_image,
    save_model,
)
from agegender_models.imageio import ImageTooLargeError, to_rgb

os.environ.setdefault("AGEGENDER_RUNTIME", "keras")  # outputs compared exactly


def _picture(size=(60, 80), seed: int = 0) -> np.ndarray:
    """A smooth, asymmetric (h, w, 3) picture."""
    small = np.random.default_rng(seed).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize(size[::-1], Image.Resampling.BILINEAR))


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.fixture(scope="module")
def linear_model() -> keras.Model:
    """A tiny age and gender model that sees every pixel where it is (a dense layer on the
    flattened image), so a picture shown the wrong way up gets clearly other outputs."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    weights = keras.initializers.RandomNormal(stddev=1.0, seed=0)
    outputs = {
        "gender": keras.layers.Dense(1, activation="sigmoid", name="gender")(x),
        "age": keras.layers.Dense(1, kernel_initializer=weights, name="age")(x),
    }
    return keras.Model(inputs, outputs)


# ------------------------------------------------------------------------------------------------
# EXIF orientation


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_sideways_photo_predicts_like_the_upright_one(linear_model, tmp_path, suffix) -> None:
    picture = _picture()
    upright = tmp_path / f"upright{suffix}"
    Image.fromarray(picture).save(upright, quality=95)
    # as a phone stores a photo taken turned: pixels turned, EXIF 6 says "show turned back"
    sideways = tmp_path / f"sideways{suffix}"
    Image.fromarray(np.rot90(picture, 1)).save(sideways, quality=95, exif=_exif(6))
    ignored = tmp_path / f"ignored{suffix}"  # the same pixels without the tag
    Image.fromarray(np.rot90(picture, 1)).save(ignored, quality=95)

    up, side, wrong = Predictor(linear_model).predict([upright, sideways, ignored])
    # PNG: the same pixels, the same outputs; JPEG: two lossy encodings of one picture
    tolerance = {"age": 1e-4, "p_female": 1e-6} if suffix == ".png" else {"age": 0.1, "p_female": 0.01}
    for key, tol in tolerance.items():
        assert side[key] == pytest.approx(up[key], abs=tol)
    # the test can fail: shown as stored, the picture gets other outputs
    assert abs(wrong["age"] - up["age"]) > 5.0


def test_all_eight_orientations_match_pillows_exif_transpose(tmp_path: Path) -> None:
    from PIL import ImageOps

    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.png"
        Image.fromarray(_picture()).save(path, exif=_exif(orientation))
        with Image.open(path) as im:
            want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
            assert im.mode == "RGB"
        np.testing.assert_array_equal(read_image(path), want)
        with Image.open(path) as im:  # an opened PIL image follows the same rules
            np.testing.assert_array_equal(to_rgb(im), want)


# ------------------------------------------------------------------------------------------------
# modes


def test_a_16_bit_png_predicts_like_its_8_bit_version(linear_model, tmp_path: Path) -> None:
    gray8 = _picture()[..., 0]
    deep = tmp_path / "deep.png"
    Image.fromarray(gray8.astype(np.uint16) * 257).save(deep)  # I;16, the same picture
    with Image.open(deep) as im:
        assert im.mode == "I;16"
    shallow = tmp_path / "shallow.png"
    Image.fromarray(gray8).save(shallow)
    np.testing.assert_array_equal(read_image(deep), read_image(shallow))
    a, b = Predictor(linear_model).predict([deep, shallow])
    assert (a["age"], a["p_female"]) == (b["age"], b["p_female"])


@pytest.mark.parametrize(
    ("image", "want"),
    [
        (Image.new("RGBA", (4, 3), (10, 20, 30, 0)), [255, 255, 255]),  # transparent: white
        (Image.new("RGBA", (4, 3), (10, 20, 30, 255)), [10, 20, 30]),
        (Image.new("RGBA", (4, 3), (10, 20, 30, 128)), [132, 137, 142]),  # round((c a + 255 (255 - a)) / 255)
        (Image.new("LA", (4, 3), (100, 128)), [177, 177, 177]),
        (Image.new("CMYK", (4, 3), (255, 0, 0, 0)), [0, 255, 255]),  # cyan
        (Image.new("CMYK", (4, 3), (0, 0, 0, 255)), [0, 0, 0]),
        (Image.new("1", (4, 3), 1), [255, 255, 255]),
        (Image.new("I;16", (4, 3), 0x8000), [128, 128, 128]),  # convert("RGB") gives 255
    ],
    ids=["rgba0", "rgba255", "rgba128", "la", "cmyk_cyan", "cmyk_black", "bilevel", "i16"],
)
def test_modes_convert_by_the_rules(image: Image.Image, want: list[int]) -> None:
    rgb = to_rgb(image)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    assert (rgb == want).all(), rgb[0, 0]


def test_a_heic_photo_reads_upright_like_its_jpeg(tmp_path: Path) -> None:
    """An iPhone's format, through the 'heif' extra (the tests install it): the rotation its
    EXIF tag asks for is applied once, as for a JPEG with the same tag."""
    pytest.importorskip("pillow_heif", reason="the 'heif' extra is not installed")
    picture = Image.fromarray(_picture((60, 80)))
    picture.save(tmp_path / "side.heic", exif=_exif(6).tobytes(), quality=95)
    picture.save(tmp_path / "side.jpg", exif=_exif(6).tobytes(), quality=95)
    heic, jpeg = read_image(tmp_path / "side.heic"), read_image(tmp_path / "side.jpg")
    assert heic.shape == jpeg.shape == (80, 60, 3)
    assert np.abs(heic.astype(int) - jpeg).mean() < 4  # two lossy codecs of the same pixels
    picture.convert("RGBA").save(tmp_path / "alpha.heic")
    assert read_image(tmp_path / "alpha.heic").shape == (60, 80, 3)


def test_a_heic_photo_without_the_plugin_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    from agegender_models import imageio

    heif = tmp_path / "IMG_0001.HEIC"
    heif.write_bytes(b"\0\0\0\x18ftypheic" + bytes(40))  # an HEIF header, as an iPhone writes
    monkeypatch.setattr(imageio, "pillow_heif", None)
    monkeypatch.setattr(Image, "ID", [i for i in Image.ID if i != "HEIF"])  # Pillow without it
    with pytest.raises(ImageReadError, match=r"IMG_0001\.HEIC: cannot read image: a HEIC/HEIF photo: "
                                             r"reading it needs the pillow-heif plugin \(pip install "
                                             r"'agegender-models\[heif\]'; from a checkout of agegender: "
                                             r"pip install '\./packages/agegender-models\[heif\]'\)$"):
        read_image(heif)
    assert imageio.unsupported_format(b"\0\0\0\x18ftypavif") is None  # Pillow reads AVIF itself
    assert imageio.unsupported_format(b"\0\0\0\x1cftypmif1\0\0\0\0mif1avif") is None  # an AVIF too
    assert imageio.unsupported_format(b"\0\0\0\x1cftypmif1\0\0\0\0mif1heic") is not None


def test_floating_point_pixels_are_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "scan.tif"
    Image.fromarray(_picture()[..., 0].astype(np.float32) / 255).save(path)
    with pytest.raises(ImageReadError, match=r"scan\.tif: cannot read image: 32-bit floating-point"):
        read_image(path)


# ------------------------------------------------------------------------------------------------
# errors


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(FileNotFoundError, match=r"link\.jpg is a broken symbolic link \(to .*gone\.jpg\)$"):
        read_image(tmp_path / "link.jpg")
    with pytest.raises(ImageReadError, match=r": cannot read image: a folder, not an image file$"):
        read_image(tmp_path)
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ImageReadError, match=r"notes\.jpg: cannot read image: not an image"):
        read_image(text)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png: cannot read image: empty file$"):
        read_image(empty)
    whole = tmp_path / "whole.jpg"
    Image.fromarray(_picture()).save(whole)
    cut = tmp_path / "cut.jpg"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 3 // 4])  # the header whole, the pixel data cut
    with pytest.raises(ImageReadError, match=r"cut\.jpg: cannot decode image") as info:
        read_image(cut)
    assert "\n" not in str(info.value)
    with pytest.raises(ImageReadError, match="max_pixels"):
        read_image(whole, max_pixels=79 * 60)
    with pytest.raises(ValueError, match="Received: max_pixels=0"):
        read_image(whole, max_pixels=0)


def test_predict_returns_results_and_errors_together(linear_model, tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(_picture()).save(good)
    folder = tmp_path / "a_folder.jpg"
    folder.mkdir()
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    inputs = [good, folder, tmp_path / "missing.png", text]
    predictor = Predictor(linear_model)

    with pytest.warns(UserWarning, match=r"3 input\(s\) gave no result.*a_folder\.jpg"):
        results = predictor.predict(inputs)
    assert isinstance(results, Predictions) and isinstance(results, list)
    assert [r["file"] for r in results] == [str(good)]
    assert [e["file"] for e in results.errors] == [str(p) for p in inputs[1:]]
    assert all(e["reason"] and "\n" not in e["reason"] for e in results.errors)
    assert results.errors == predictor.errors
    # the tuple form is unchanged (and does not warn)
    found, errors = predictor.predict(inputs, return_errors=True)
    assert found == list(results) and errors == results.errors
    # nothing readable at all: still the errors, never a bare []
    with pytest.warns(UserWarning):
        none = predictor.predict([text])
    assert none == [] and none.errors == [{"file": str(text), "reason": none.errors[0]["reason"]}]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_an_unreadable_file_is_an_error_entry(linear_model, tmp_path: Path) -> None:
    locked = tmp_path / "locked.png"
    Image.fromarray(_picture()).save(locked)
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as a user whom chmod 000 does not stop (root)")
        results = Predictor(linear_model).predict([locked], return_errors=True)
        assert results[0] == [] and results[1][0]["file"] == str(locked)
        assert "Permission" in results[1][0]["reason"]
    finally:
        locked.chmod(0o644)


# ------------------------------------------------------------------------------------------------
# models from elsewhere


def _foreign(tmp_path: Path, name: str, model: keras.Model) -> Path:
    path = tmp_path / f"{name}.keras"
    model.save(path)  # keras itself: a valid .keras file
    return path


def test_a_foreign_keras_model_is_one_clear_line(tmp_path: Path) -> None:
    inputs = keras.Input((32, 32, 3))
    classifier = keras.Model(
        inputs, keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(inputs))
    )
    flexible_in = keras.Input((None, None, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(flexible_in)
    flexible = keras.Model(
        flexible_in,
        {"gender": keras.layers.Dense(1, name="gender")(pooled),
         "age": keras.layers.Dense(1, name="age")(pooled)},
    )
    cases = {
        "classifier": (classifier, "no 'gender' and 'age' outputs"),
        "flexible": (flexible, "input size is unknown"),
    }
    for name, (model, why) in cases.items():
        path = _foreign(tmp_path, name, model)
        for load in (load_model, Predictor):
            with pytest.raises(ModelFileError) as info:
                load(path)
            message = str(info.value)
            assert "\n" not in message and why in message and path.name in message
            assert "not an age and gender model" in message
        with pytest.raises(ValueError, match=why):  # the model itself, not a file
            Predictor(model)


def test_our_own_models_still_load(tmp_path: Path, tiny_models) -> None:
    path = save_model(tiny_models("custom_cnn"), tmp_path / "ours.keras")
    assert Predictor(path).input_size == (32, 32)


def _gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    return Image.fromarray(np.concatenate([np.broadcast_to(x, (height, width, 1)),
                                           np.broadcast_to(y, (height, width, 1)),
                                           np.full((height, width, 1), 90.0)], -1).astype(np.uint8))


def test_a_large_jpeg_is_decoded_reduced_and_upright(tmp_path: Path) -> None:
    from agegender_models.imageio import read_image_reduced

    path = tmp_path / "big.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 1400x1000, shown 1000x1400
    _gradient(1400, 1000).save(path, quality=95, exif=exif)
    full = to_rgb(path)
    assert full.shape == (1400, 1000, 3)
    rgb, factor = read_image_reduced(path, 300)  # 1/4 keeps 350 >= 300; 1/8 (175) would not
    assert (rgb.shape, factor) == ((350, 250, 3), 4)
    # the same picture, as a block average of the whole decode
    blocks = full.reshape(350, 4, 250, 4, 3).mean(axis=(1, 3))
    assert np.abs(blocks - rgb).mean() < 2.0
    assert read_image_reduced(path, 700)[1] == 2 and read_image_reduced(path, 701)[1] == 1
    png = tmp_path / "big.png"
    _gradient(1400, 1000).save(png)
    rgb, factor = read_image_reduced(png, 300)  # only JPEGs scale while decoding
    assert (rgb.shape, factor) == ((1000, 1400, 3), 1)
    with pytest.raises(ImageTooLargeError, match="1400x1000 = 1400000 pixels exceeds max_pixels=1000000"):
        read_image_reduced(path, 300, max_pixels=1_000_000)  # the full size counts, not decoded
    with pytest.raises(ValueError, match="reduce_to=0"):
        read_image_reduced(path, 0)
    # a narrow one: the factor is the scale libjpeg used (8), not the widths' ratio (44 / 6 = 7)
    strip = tmp_path / "strip.jpg"
    _gradient(44, 6000).save(strip)
    rgb, factor = read_image_reduced(strip, 640)
    assert (rgb.shape, factor) == ((750, 6, 3), 8)


def test_an_image_files_bytes_read_as_the_file_does(linear_model, tmp_path: Path) -> None:
    """Bytes (a web upload, an object store) by the same rules as the file: orientation, the
    reduced decode, the pixel limit, one-line errors named ``<bytes>``."""
    from agegender_models.imageio import read_image_reduced

    path = tmp_path / "big.jpg"
    _gradient(1400, 1000).save(path, quality=95, exif=_exif(6))
    data = path.read_bytes()
    for encoded in (data, bytearray(data)):
        np.testing.assert_array_equal(read_image(encoded), read_image(path))
        np.testing.assert_array_equal(to_rgb(encoded), read_image(path))
        got, want = read_image_reduced(encoded, 300), read_image_reduced(path, 300)
        assert got[1] == want[1] == 4
        np.testing.assert_array_equal(got[0], want[0])
    pixels = _picture()  # a memoryview stays what it was: an array's pixels
    np.testing.assert_array_equal(to_rgb(memoryview(pixels)), pixels)
    with pytest.raises(ImageTooLargeError, match=r"^<bytes>: image too large: 1400x1000"):
        read_image(data, max_pixels=1_000_000)
    with pytest.raises(ImageReadError, match=r"^<bytes>: cannot read image: not an image"):
        read_image(b"just some text")
    with pytest.raises(ImageReadError, match=r"^<bytes>: cannot read image: empty file"):
        read_image(b"")
    with pytest.raises(ImageReadError, match=r"^<bytes>: cannot decode image: .*truncated"):
        read_image(data[:2000])
    # Predictor: one input or a list of them, never iterated as numbers
    predictor = Predictor(linear_model)
    (one,) = predictor.predict(data)
    assert one["file"] is None and one["age"] == predictor.predict([path])[0]["age"]
    found, errors = predictor.predict([data, b"not an image", path], return_errors=True)
    assert [r["file"] for r in found] == [None, str(path)]
    assert errors == [{"file": "<bytes>", "reason": "cannot read image: not an image Pillow can "
                                                    "read (unknown format or not an image file)"}]
