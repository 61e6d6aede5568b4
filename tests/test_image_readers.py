"""Real images read right everywhere: one set of rules for every reader of the project.

Prediction reads files with ``agegender_models.imageio.read_image`` (Pillow); training and
evaluation with ``utkface_data``'s tf.data pipeline (TensorFlow's decoders), which cannot import
``agegender_models``. Both must give the same pixels -- EXIF orientation applied, 16-bit, CMYK,
palette and transparent images converted alike -- or a model sees other pixels when serving than
when it was trained and evaluated. And every reader refuses a decompression bomb by name
without decoding it. All images are generated here.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile, ImageOps

tf = pytest.importorskip("tensorflow")

import utkface_data  # noqa: E402
from agegender_models import (  # noqa: E402
    ImageTooLargeError,
    Predictor,
    create_model,
    imageio,
    read_image,
)
from agegender_models import detect as det  # noqa: E402
from agegender_models.predict import _to_rgb_array  # noqa: E402
from utkface_data import pipeline  # noqa: E402

SIZE = (30, 40)  # (height, width) of the generated pictures


def _picture(seed: int = 0) -> np.ndarray:
    """A smooth, asymmetric RGB picture: every orientation of it looks different."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize(SIZE[::-1], Image.Resampling.BILINEAR))


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _alpha(seed: int = 1) -> np.ndarray:
    alpha = np.random.default_rng(seed).integers(0, 256, SIZE, dtype=np.uint8)
    alpha[0, :4] = (0, 255, 128, 1)  # fully transparent, opaque and in between
    return alpha


def _tricky(folder: Path) -> dict[str, Path]:
    """The images that readers get wrong, written with Pillow, by name."""
    rgb = _picture()
    out: dict[str, Path] = {}

    def save(name: str, image: Image.Image, **kwargs) -> None:
        out[name] = folder / name
        image.save(out[name], **kwargs)

    for orientation in range(1, 9):
        save(f"exif{orientation}.jpg", Image.fromarray(rgb), exif=_exif(orientation), quality=95)
    save("exif6.png", Image.fromarray(rgb), exif=_exif(6))  # PNG eXIf chunk
    sixteen = np.random.default_rng(2).integers(0, 65536, SIZE).astype(np.uint16)
    save("gray16.png", Image.fromarray(sixteen))  # I;16
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"), quality=95)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    save("palette.png", palette)  # 4 bits per pixel, no transparency
    save("palette_transparent.png", palette, transparency=3)
    save("la.png", Image.fromarray(np.dstack([rgb[..., 0], _alpha()]), "LA"))
    save("rgba.png", Image.fromarray(np.dstack([rgb, _alpha()]), "RGBA"))
    save("rgb_colour_key.png", Image.fromarray(rgb), transparency=tuple(int(v) for v in rgb[0, 0]))
    save("gray.jpg", Image.fromarray(rgb[..., 1]), quality=95)
    save("bilevel.png", Image.fromarray(rgb[..., 2]).convert("1"))
    return out


@pytest.fixture(scope="module")
def tricky(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _tricky(tmp_path_factory.mktemp("tricky"))


def test_one_pixel_limit_for_every_reader() -> None:
    assert imageio.DEFAULT_MAX_PIXELS == utkface_data.index.DEFAULT_MAX_PIXELS
    assert imageio.DEFAULT_MAX_PIXELS == utkface_data.pipeline.DEFAULT_MAX_PIXELS


@pytest.mark.parametrize(
    "name",
    [f"exif{o}.jpg" for o in range(1, 9)]
    + ["exif6.png", "gray16.png", "cmyk.jpg", "palette.png", "palette_transparent.png",
       "la.png", "rgba.png", "rgb_colour_key.png", "gray.jpg", "bilevel.png"],
)
def test_prediction_and_training_readers_give_the_same_pixels(tricky, name: str) -> None:
    served = read_image(tricky[name])
    trained = pipeline.read_image(tricky[name])
    assert served.dtype == trained.dtype == np.uint8
    np.testing.assert_array_equal(served, trained)


def test_the_shared_rules_are_the_right_ones(tricky) -> None:
    upright = _picture()
    # EXIF: as Pillow's exif_transpose shows the photo (6 = shown turned 90 degrees clockwise)
    for orientation in range(1, 9):
        with Image.open(tricky[f"exif{orientation}.jpg"]) as im:
            want = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        np.testing.assert_array_equal(read_image(tricky[f"exif{orientation}.jpg"]), want)
    assert read_image(tricky["exif6.png"]).shape == (SIZE[1], SIZE[0], 3)
    np.testing.assert_array_equal(read_image(tricky["exif6.png"]), np.rot90(upright, -1))
    # 16-bit: the high byte, not Image.convert("RGB")'s all-white
    sixteen = np.random.default_rng(2).integers(0, 65536, SIZE).astype(np.uint16)
    np.testing.assert_array_equal(read_image(tricky["gray16.png"])[..., 1], sixteen >> 8)
    with Image.open(tricky["gray16.png"]) as im:
        assert (np.asarray(im.convert("RGB")) == 255).mean() > 0.98  # the bug this rule avoids
    # CMYK: close to the RGB it was made from (a lossy round trip)
    cmyk = read_image(tricky["cmyk.jpg"]).astype(int)
    assert np.abs(cmyk - upright).mean() < 3
    # transparency on white: transparent -> 255, opaque -> the colour, half -> in between
    rgba = read_image(tricky["rgba.png"])
    np.testing.assert_array_equal(rgba[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(rgba[0, 1], upright[0, 1])
    want = np.rint((upright[0, 2].astype(float) * 128 + 255 * 127) / 255)
    np.testing.assert_array_equal(rgba[0, 2], want)
    np.testing.assert_array_equal(read_image(tricky["rgb_colour_key.png"])[0, 0], [255] * 3)
    la = read_image(tricky["la.png"])
    assert la[0, 0].tolist() == [255] * 3 and la[0, 1].tolist() == [upright[0, 1, 0]] * 3
    with Image.open(tricky["palette_transparent.png"]) as im:
        keyed = np.asarray(im) == 3
    assert keyed.any() and (read_image(tricky["palette_transparent.png"])[keyed] == 255).all()
    with Image.open(tricky["palette.png"]) as im:
        np.testing.assert_array_equal(read_image(tricky["palette.png"]), im.convert("RGB"))


def test_a_model_sees_the_same_pixels_in_training_and_serving(tricky, tmp_path: Path) -> None:
    """The batches of make_dataset (training, evaluation) and what Predictor feeds the model."""
    names = sorted(tricky)
    frame = pd.DataFrame({"path": [str(tricky[n]) for n in names], "age": 30, "gender": 0})
    batches = utkface_data.make_dataset(frame, image_size=(24, 24), batch_size=64)
    trained = np.concatenate([x.numpy() for x, _ in batches])
    served = np.stack([_to_rgb_array(tricky[n], (24, 24)) for n in names])
    np.testing.assert_array_equal(trained, served)


# ------------------------------------------------------------------------------------------------
# decompression bombs


def _png_bomb(path: Path, side: int = 12_000) -> Path:
    """A valid 1-bit PNG of side x side pixels (144 million for 12000): about 17 KB."""
    row = b"\0" * (1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", data)
        + chunk(b"IEND", b"")
    )
    return path


def _jpeg_bomb(path: Path, side: int = 12_000) -> Path:
    """A small JPEG whose frame header claims side x side pixels."""
    Image.new("RGB", (16, 16), (90, 120, 150)).save(path)
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def never_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding a bomb with Pillow, or anything with the pipeline's decoder, fails the test."""
    load = ImageFile.ImageFile.load

    def small_only(self, *args, **kwargs):
        if self.size[0] * self.size[1] > 1_000_000:
            raise AssertionError(f"a decompression bomb was decoded: {self.size}")
        return load(self, *args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline decoded a decompression bomb")

    monkeypatch.setattr(ImageFile.ImageFile, "load", small_only)
    monkeypatch.setattr(pipeline, "_decode_rgb", refuse)


def _tiny_model():
    return create_model("custom_cnn", input_shape=(32, 32, 3))


@pytest.fixture(scope="module")
def tiny_model():
    return _tiny_model()


def _predictor(path: Path, model) -> str:
    results, errors = Predictor(model).predict([path], return_errors=True)
    assert results == [] and len(errors) == 1 and errors[0]["file"] == str(path)
    return errors[0]["reason"]


def _predictor_detecting(path: Path, model) -> str:
    class NeverCalled:
        def detect_faces(self, image):
            raise AssertionError("the detector got a bomb")

    results, errors = Predictor(model, detector=NeverCalled()).predict([path], return_errors=True)
    assert results == [] and len(errors) == 1 and errors[0]["file"] == str(path)
    return errors[0]["reason"]


class _NoFaces:
    def detect_faces(self, image):
        return []


def _detection(path: Path, model) -> str:
    with pytest.raises(ImageTooLargeError) as info:
        det.detect_faces(path, detector=_NoFaces())
    return str(info.value)


def _read_image(path: Path, model) -> str:
    with pytest.raises(ImageTooLargeError) as info:
        read_image(path)
    return str(info.value)


def _index(path: Path, model) -> str:
    Image.new("RGB", (8, 8)).save(path.parent / "31_1_0_20170109142408076.jpg")  # one to keep
    report = utkface_data.index_folder(path.parent, verify_images=True, progress=False).report
    return next(q["reason"] for q in report.quarantined if q["file"] == path.name)


def _pipeline_check(path: Path, model) -> str:
    frame = pd.DataFrame({"path": [str(path)], "age": [30], "gender": [1]})
    with pytest.raises(utkface_data.DatasetError) as info:
        utkface_data.make_dataset(frame, check_files=False)  # the pixel limit is always on
    return str(info.value)


def _pipeline_read(path: Path, model) -> str:
    with pytest.raises(utkface_data.DatasetError) as info:
        pipeline.read_image(path)
    return str(info.value)


READERS: dict[str, Callable[[Path, object], str]] = {
    "Predictor": _predictor,
    "Predictor+detector": _predictor_detecting,
    "detect_faces": _detection,
    "read_image": _read_image,
    "index --verify-images": _index,
    "make_dataset": _pipeline_check,
    "pipeline.read_image": _pipeline_read,
}


@pytest.mark.parametrize("bomb", [_png_bomb, _jpeg_bomb], ids=["png", "jpeg"])
@pytest.mark.parametrize("reader", list(READERS))
def test_every_reader_refuses_a_bomb_by_name_without_decoding(
    reader: str, bomb, tiny_model, tmp_path: Path, never_decode
) -> None:
    path = bomb(tmp_path / f"20_0_0_20170103000000001.{'png' if bomb is _png_bomb else 'jpg'}")
    if bomb is _png_bomb:
        assert path.stat().st_size < 40_000
    started = time.perf_counter()
    reason = READERS[reader](path, tiny_model)
    assert time.perf_counter() - started < 2.0
    assert "too large" in reason and "12000x12000" in reason
    if reader not in ("Predictor", "Predictor+detector", "index --verify-images"):
        assert str(path) in reason  # the error names the file (the lists name it beside)


@pytest.mark.parametrize("reader", list(READERS))
def test_every_reader_words_pillows_own_refusal_as_the_pixel_limit(
    reader: str, tiny_model, tmp_path: Path, never_decode
) -> None:
    # 400 million pixels: over twice Pillow's MAX_IMAGE_PIXELS, so Pillow refuses the header
    # itself (DecompressionBombError); the reason still reads as every reader's pixel limit
    path = _jpeg_bomb(tmp_path / "20_0_0_20170103000000001.jpg", side=20_000)
    reason = READERS[reader](path, tiny_model)
    assert "image too large: 400000000 pixels exceeds max_pixels=64000000" in reason, reason
    assert "Pillow" not in reason and "DOS attack" not in reason


# ------------------------------------------------------------------------------------------------
# the agegender command


def test_cli_predict_reads_a_sideways_phone_photo_upright(tmp_path: Path, capsys) -> None:
    from agegender.cli import main
    from agegender_models import save_model

    model = save_model(_tiny_model(), tmp_path / "tiny.keras")
    upright = tmp_path / "upright.png"
    Image.fromarray(_picture()).save(upright)
    sideways = tmp_path / "sideways.png"  # stored turned, to be shown turned back (EXIF 6)
    Image.fromarray(np.rot90(_picture(), 1)).save(sideways, exif=_exif(6))
    ignored = tmp_path / "ignored.png"  # the same stored pixels, shown as stored
    Image.fromarray(np.rot90(_picture(), 1)).save(ignored)
    files = [str(upright), str(sideways), str(ignored)]
    code = main(["predict", "--detect", "none", "--model", str(model), "--json", *files])
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert code == 0 and [r["file"] for r in rows] == files
    assert (rows[1]["age"], rows[1]["p_female"]) == (rows[0]["age"], rows[0]["p_female"])
    assert rows[2]["p_female"] != rows[0]["p_female"]  # what ignoring EXIF would give


def test_cli_refuses_a_foreign_keras_model_in_one_line(tmp_path: Path, capsys) -> None:
    import keras

    from agegender.cli import main

    inputs = keras.Input((32, 32, 3))
    logits = keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(inputs))
    foreign = tmp_path / "classifier.keras"
    keras.Model(inputs, logits).save(foreign)
    image = tmp_path / "face.png"
    Image.fromarray(_picture()).save(image)
    for command in (["predict", str(image)], ["export", "--format", "savedmodel", "--out",
                                                str(tmp_path / "out")]):
        code = main([command[0], "--model", str(foreign), *command[1:]])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert "not an age and gender model" in err and "'gender' and 'age'" in err


def test_evaluate_on_a_folder_with_a_symlink_loop_and_an_escaping_split(tmp_path: Path,
                                                                      capsys) -> None:
    from agegender.cli import main
    from agegender_models import save_model

    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(_picture(i)).save(folder / f"{20 + i}_{i % 2}_0_2017011{i:010d}.jpg")
    (folder / "loop").symlink_to("loop")  # aborted the index, and so train and evaluate
    model = save_model(_tiny_model(), tmp_path / "tiny.keras")
    code = main(["evaluate", "--model", str(model), "--data-dir", str(folder),
                 "--out", str(tmp_path / "eval")])
    out, err = capsys.readouterr()
    assert code == 0, err
    escaping = tmp_path / "test.csv"
    pd.DataFrame({"path": ["../tiny.keras"], "age": [30], "gender": [0], "race": [0]}).to_csv(
        escaping, index=False)
    code = main(["evaluate", "--model", str(model), "--data-dir", str(folder), "--split",
                 str(escaping), "--out", str(tmp_path / "eval2")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "leave the image folder" in err
