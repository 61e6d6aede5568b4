from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

tf = pytest.importorskip("tensorflow")

from utkface_data import DatasetError, index_folder, make_dataset  # noqa: E402

SIZE = (16, 16)


@pytest.fixture
def frame(utk_folder: Path) -> pd.DataFrame:
    return index_folder(utk_folder, progress=False).frame


def _collect(ds):
    xs, gs, ages = [], [], []
    for x, y in ds:
        xs.append(x.numpy())
        gs.append(y["gender"].numpy())
        ages.append(y["age"].numpy())
    return np.concatenate(xs), np.concatenate(gs), np.concatenate(ages)


def test_batches_shapes_targets_and_scalings(frame: pd.DataFrame, utk_folder: Path) -> None:
    ds = make_dataset(frame, root=utk_folder, image_size=SIZE, batch_size=8)
    x, y = next(iter(ds))
    assert x.dtype == tf.uint8 and tuple(x.shape) == (8, 16, 16, 3)
    assert (
        set(y) == {"gender", "age"}
        and y["gender"].dtype == tf.float32
        and tuple(y["age"].shape) == (8,)
    )
    images, genders, ages = _collect(ds)
    assert len(images) == len(frame)
    np.testing.assert_array_equal(
        ages, frame["age"].to_numpy(np.float32)
    )  # order kept without shuffle
    np.testing.assert_array_equal(genders, frame["gender"].to_numpy(np.float32))
    unit, _, _ = _collect(make_dataset(frame, root=utk_folder, image_size=SIZE, scaling="unit"))
    flt, _, _ = _collect(make_dataset(frame, root=utk_folder, image_size=SIZE, scaling="float"))
    assert unit.dtype == np.float32 and unit.min() >= 0.0 and unit.max() <= 1.0
    np.testing.assert_allclose(flt, images.astype(np.float32))
    np.testing.assert_allclose(unit, images / 255.0, atol=1e-6)


def test_pixels_match_pil(tmp_path: Path, image_writer) -> None:
    from PIL import Image

    png = image_writer(tmp_path / "5_0_0_20170103000000001.png", size=(24, 24))
    jpg = image_writer(tmp_path / "6_0_0_20170103000000002.jpg", size=(24, 24))
    frame = index_folder(tmp_path, progress=False).frame
    images, _, _ = _collect(make_dataset(frame, root=tmp_path, image_size=(24, 24)))
    with Image.open(png) as im:
        np.testing.assert_array_equal(images[0], np.asarray(im))  # lossless, same size: exact
    with Image.open(jpg) as im:  # the accurate DCT, as Pillow: the pixels prediction sees
        np.testing.assert_array_equal(images[1], np.asarray(im))


def test_grayscale_rgba_png_become_rgb(tmp_path: Path, image_writer) -> None:
    image_writer(tmp_path / "1_0_0_20170103000000001.jpg", mode="L", size=(20, 30))
    image_writer(tmp_path / "2_1_1_20170103000000002.png", mode="RGBA")
    image_writer(tmp_path / "3_0_2_20170103000000003.PNG", mode="L")
    frame = index_folder(tmp_path, progress=False).frame
    images, _, ages = _collect(make_dataset(frame, root=tmp_path, image_size=SIZE))
    assert images.shape == (3, 16, 16, 3)
    assert list(ages) == [1.0, 2.0, 3.0]
    assert np.array_equal(images[0, ..., 0], images[0, ..., 1])  # gray replicated


def _with_bad_files(utk_folder: Path, frame: pd.DataFrame) -> pd.DataFrame:
    good = (utk_folder / frame["path"].iloc[0]).read_bytes()
    (utk_folder / "40_0_0_20170103000000001.jpg").write_bytes(good[: len(good) // 2])
    (utk_folder / "41_0_0_20170103000000002.jpg").write_bytes(b"")
    (utk_folder / "42_0_0_20170103000000003.jpg").write_text("plain text, not an image")
    corrupt = bytearray(good)
    dht = corrupt.index(b"\xff\xc4") + 5  # a Huffman table's 16 code counts: bogus (> 256)
    corrupt[dht : dht + 16] = b"\xff" * 16
    # markers and header intact (Pillow opens it): only the decoder can tell
    (utk_folder / "43_0_0_20170103000000004.jpg").write_bytes(bytes(corrupt))
    # As if from a split file written before the files went bad (the index would quarantine them).
    extra = pd.DataFrame(
        {
            "path": [f"4{i}_0_0_2017010300000000{i + 1}.jpg" for i in range(4)],
            "age": 99,
            "gender": 0,
            "race": 0,
        }
    )
    return pd.concat([frame, extra], ignore_index=True)


def test_bad_files_named_before_training(frame: pd.DataFrame, utk_folder: Path) -> None:
    bad = _with_bad_files(utk_folder, frame)
    with pytest.raises(DatasetError) as info:
        make_dataset(bad, root=utk_folder, image_size=SIZE)
    message = str(info.value)
    for name, reason in (
        ("40_0_0_20170103000000001.jpg", "truncated JPEG"),
        ("41_0_0_20170103000000002.jpg", "0 bytes"),
        ("42_0_0_20170103000000003.jpg", "not a JPEG or PNG"),
    ):
        line = next(line for line in message.splitlines() if name in line)
        assert reason in line
    assert "43_0_0" not in message  # markers intact: only the decoder can tell


def test_decoder_failure_during_iteration_names_file(frame: pd.DataFrame, utk_folder: Path) -> None:
    bad = _with_bad_files(utk_folder, frame)
    for name in ("43_0_0_20170103000000004.jpg", "40_0_0_20170103000000001.jpg"):
        rows = pd.concat([frame.iloc[:20], bad[bad["path"] == name], frame.iloc[20:]])
        ds = make_dataset(rows, root=utk_folder, image_size=SIZE, batch_size=4, check_files=False)
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"unreadable image.*{name}"):
            _collect(ds)


def test_skip_mode_drops_and_names_files(frame: pd.DataFrame, utk_folder: Path, capfd) -> None:
    bad = _with_bad_files(utk_folder, frame)
    with pytest.warns(UserWarning) as record:
        ds = make_dataset(bad, root=utk_folder, image_size=SIZE, on_error="skip")
    warned = "\n".join(str(w.message) for w in record)
    for name, reason in (
        ("40_0_0_20170103000000001.jpg", "truncated"),
        ("41_0_0_20170103000000002.jpg", "empty file (0 bytes)"),
        ("42_0_0_20170103000000003.jpg", "not a JPEG or PNG"),
    ):
        assert f"{name}: {reason}" in warned
    images, _, ages = _collect(ds)
    assert len(images) == len(frame) and 99.0 not in ages
    err = capfd.readouterr().err
    assert "43_0_0_20170103000000004.jpg" in err and "skipped" in err


def test_missing_file_fails_before_training(frame: pd.DataFrame, utk_folder: Path) -> None:
    (utk_folder / frame["path"].iloc[5]).unlink()
    with pytest.raises(FileNotFoundError, match=frame["path"].iloc[5]):
        make_dataset(frame, root=utk_folder)


def test_cache_shuffle_augment(frame: pd.DataFrame, utk_folder: Path, tmp_path: Path) -> None:
    kw = dict(root=utk_folder, image_size=SIZE, batch_size=6, shuffle=True, seed=1)
    plain, _, plain_age = _collect(make_dataset(frame, **kw))
    for cache in ("memory", str(tmp_path / "cache")):
        ds = make_dataset(frame, cache=cache, **kw)
        e1, _, a1 = _collect(ds)
        e2, _, a2 = _collect(ds)
        assert sorted(a1) == sorted(a2) == sorted(plain_age)
        assert not np.array_equal(a1, a2)  # reshuffled each epoch
    assert list(tmp_path.glob("cache*"))
    aug1, _, age1 = _collect(make_dataset(frame, augment=True, **kw))
    aug2, _, age2 = _collect(make_dataset(frame, augment=True, **kw))
    np.testing.assert_array_equal(aug1, aug2)  # reproducible for a seed
    np.testing.assert_array_equal(age1, plain_age)
    assert aug1.shape == plain.shape and not np.array_equal(aug1, plain)


def _jitter_and_always(frame: pd.DataFrame, utk_folder: Path, option: str, kw: dict, step: str, monkeypatch):
    """An augmentation option's probability: 0 never runs its ``step`` (the jitter stays exactly
    as without the option), 1 gives the same images for a seed, every time. Returns (the jitter
    alone, the option always on)."""
    from utkface_data import pipeline

    jitter, _, _ = _collect(make_dataset(frame, **kw))
    with monkeypatch.context() as patch:
        patch.setattr(pipeline, step, lambda *a, **k: pytest.fail(f"{step} ran at {option}=0"))
        none, _, _ = _collect(make_dataset(frame, **{option: 0.0}, **kw))
    np.testing.assert_array_equal(none, jitter)
    every1, _, ages1 = _collect(make_dataset(frame, **{option: 1.0}, **kw))
    every2, _, ages2 = _collect(make_dataset(frame, **{option: 1.0}, **kw))
    np.testing.assert_array_equal(every1, every2)
    np.testing.assert_array_equal(ages1, ages2)
    assert every1.shape == jitter.shape and every1.dtype == np.uint8
    return jitter, every1


def test_degrade(frame: pd.DataFrame, utk_folder: Path, monkeypatch) -> None:
    kw = dict(root=utk_folder, image_size=(48, 48), batch_size=6, shuffle=True, seed=1, augment=True)
    jitter, every1 = _jitter_and_always(frame, utk_folder, "degrade", kw, "_degrade", monkeypatch)
    # probability 1: every image is grayscale (all three applied), and not the jittered one
    assert (every1[..., 0] == every1[..., 1]).all() and (every1[..., 1] == every1[..., 2]).all()
    assert not (jitter[..., 0] == jitter[..., 1]).all()
    some, _, _ = _collect(make_dataset(frame, degrade=0.5, **kw))
    gray = [(im[..., 0] == im[..., 1]).all() and (im[..., 1] == im[..., 2]).all() for im in some]
    assert 0 < sum(gray) < len(gray)
    with pytest.raises(ValueError, match="degrade must be a probability"):
        make_dataset(frame, root=utk_folder, augment=True, degrade=-0.1)


def test_tight_crop(frame: pd.DataFrame, utk_folder: Path, monkeypatch) -> None:
    from utkface_data.pipeline import _tighten

    kw = dict(root=utk_folder, image_size=(48, 48), batch_size=6, shuffle=True, seed=1, augment=True)
    jitter, every1 = _jitter_and_always(frame, utk_folder, "tight_crop", kw, "_tighten", monkeypatch)
    assert not np.array_equal(every1, jitter)
    # the centre scaled up 1.1-1.3x: a 4-pixel frame of a 100-pixel image (cut at 4.5 % a side
    # at least) is gone, the centre stays, the size too
    image = np.full((100, 100, 3), 255, np.uint8)
    image[:4], image[-4:], image[:, :4], image[:, -4:] = 0, 0, 0, 0
    image[45:55, 45:55] = 0
    for seed in range(5):
        out = _tighten(tf.constant(image), tf.constant([seed, 0], tf.int64), 1.0).numpy()
        assert out.shape == image.shape and out[:6].min() > 200 and out[:, -6:].min() > 200
        assert out[50, 50].max() < 50
        np.testing.assert_array_equal(_tighten(tf.constant(image), tf.constant([seed, 0], tf.int64), 0.0), image)
    with pytest.raises(ValueError, match="tight_crop must be a probability"):
        make_dataset(frame, root=utk_folder, augment=True, tight_crop=1.5)


def test_repeat_drop_remainder(frame: pd.DataFrame, utk_folder: Path) -> None:
    ds = make_dataset(
        frame, root=utk_folder, image_size=SIZE, batch_size=5, repeat=True, drop_remainder=True
    )
    batches = list(ds.take(7))
    assert all(b[0].shape[0] == 5 for b in batches)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scaling": "minus1"}, "Received: scaling='minus1'"),
        ({"image_size": (0, 10)}, "Received: image_size=\\(0, 10\\)"),
        ({"batch_size": 0}, "Received: batch_size=0"),
        ({"on_error": "ignore"}, "Received: on_error='ignore'"),
        ({"cache": 3}, "Received: cache=3"),
    ],
)
def test_argument_validation(
    frame: pd.DataFrame, utk_folder: Path, kwargs: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        make_dataset(frame, root=utk_folder, **kwargs)


@pytest.mark.slow
def test_real_images_stream(shared_dir: Path) -> None:
    idx = index_folder(shared_dir, progress=False)
    ds = make_dataset(idx.frame.iloc[:64], root=shared_dir, batch_size=32, scaling="unit")
    x, y = next(iter(ds))
    assert tuple(x.shape) == (32, 128, 128, 3) and float(x.numpy().max()) <= 1.0


def test_jpeg_with_bytes_after_the_end_marker_is_usable(tmp_path: Path) -> None:
    from PIL import Image

    from utkface_data.pipeline import file_problem

    path = tmp_path / "30_0_0_20170101000000000.jpg"
    Image.new("RGB", (20, 20), (200, 100, 50)).save(path)
    path.write_bytes(path.read_bytes() + b"\x00" * 100)  # padding after FFD9, as some cameras write
    assert file_problem(str(path)) is None
    path.write_bytes(path.read_bytes()[:300])  # really truncated
    assert file_problem(str(path)) == "truncated JPEG (no end-of-image marker)"


def test_file_cache_prefix_is_not_shared_by_different_frames(frame: pd.DataFrame, utk_folder: Path,
                                                             tmp_path: Path) -> None:
    prefix = str(tmp_path / "cache")
    first, second = frame.iloc[:3], frame.iloc[3:6]
    for part in (first, second):
        ages = [a for _, y in make_dataset(part, root=utk_folder, cache=prefix, batch_size=8) for a in y["age"].numpy()]
        assert ages == part["age"].astype("float32").tolist()


@pytest.mark.parametrize(
    ("batch_size", "drop_remainder", "kwargs"),
    [
        (5, False, {}),
        (5, True, {}),
        (8, False, {"shuffle": True, "augment": True, "cache": "memory", "scaling": "unit"}),
        (7, True, {"shuffle": True, "check_files": False}),
    ],
)
def test_cardinality_is_known(frame: pd.DataFrame, utk_folder: Path, batch_size: int,
                              drop_remainder: bool, kwargs: dict) -> None:
    ds = make_dataset(frame, root=utk_folder, image_size=SIZE, batch_size=batch_size,
                      drop_remainder=drop_remainder, **kwargs)
    n = len(frame)
    expected = n // batch_size if drop_remainder else -(-n // batch_size)
    assert int(ds.cardinality()) == expected == len(list(ds))
    repeated = make_dataset(frame, root=utk_folder, image_size=SIZE, repeat=True)
    assert int(repeated.cardinality()) == tf.data.INFINITE_CARDINALITY


def test_cardinality_is_unknown_when_the_decoder_may_skip_files(frame: pd.DataFrame,
                                                               utk_folder: Path) -> None:
    ds = make_dataset(frame, root=utk_folder, image_size=SIZE, on_error="skip")
    assert int(ds.cardinality()) == tf.data.UNKNOWN_CARDINALITY


def test_keras_fit_knows_the_steps_and_logs_per_output_losses_right(
    frame: pd.DataFrame, utk_folder: Path
) -> None:
    # With a dataset of unknown length, Keras 3 ran each epoch until the data ran out, showed
    # "1/Unknown" steps, warned, and its per-output loss trackers counted the step that found
    # no data as one more batch: age_loss (MAE) came out smaller than the age MAE metric by a
    # factor steps / (steps + 1). With a known length both are the same number.
    import warnings

    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((*SIZE, 3))
    x = keras.layers.Dropout(0.5)(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, {
        "gender": keras.layers.Dense(1, activation="sigmoid", name="gender")(x),
        "age": keras.layers.Dense(1, name="age")(x),
    })
    model.compile(optimizer="adam", loss={"gender": "binary_crossentropy", "age": "mae"},
                  metrics={"age": ["mae"]})
    kw = dict(root=utk_folder, image_size=SIZE, batch_size=8, scaling="unit")
    steps = []

    class Steps(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            steps.append(self.params["steps"])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(make_dataset(frame, shuffle=True, **kw), shuffle=False, epochs=2,
                            validation_data=make_dataset(frame, **kw), verbose=0,
                            callbacks=[Steps()]).history
    np.testing.assert_allclose(history["age_loss"], history["age_mae"], rtol=1e-5)
    np.testing.assert_allclose(history["val_age_loss"], history["val_age_mae"], rtol=1e-5)
    assert steps == [3, 3]
    assert not [w for w in caught if issubclass(w.category, UserWarning | RuntimeWarning)]


# --- real images: EXIF orientation, modes, the pixel limit on JPEG headers too -------------------


def _exif(orientation: int):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def test_exif_rotated_images_come_out_upright(tmp_path: Path) -> None:
    from PIL import Image, ImageOps

    rng = np.random.default_rng(0)
    upright = np.asarray(
        Image.fromarray(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)).resize((32, 24))
    )
    stored = np.rot90(upright, 1)  # a phone's sideways photo: shown turned back (EXIF 6)
    Image.fromarray(stored).save(tmp_path / "30_0_0_20170103000000001.jpg", exif=_exif(6))
    Image.fromarray(stored).save(tmp_path / "31_0_0_20170103000000002.png", exif=_exif(6))
    Image.fromarray(upright).save(tmp_path / "32_0_0_20170103000000003.png")
    frame = index_folder(tmp_path, progress=False).frame
    images, _, _ = _collect(make_dataset(frame, root=tmp_path, image_size=(24, 32)))
    with Image.open(tmp_path / "30_0_0_20170103000000001.jpg") as im:
        np.testing.assert_array_equal(images[0], np.asarray(ImageOps.exif_transpose(im)))
    np.testing.assert_array_equal(images[1], upright)  # lossless: exactly the upright picture
    np.testing.assert_array_equal(images[2], upright)


def test_16_bit_and_transparent_pngs(tmp_path: Path) -> None:
    from PIL import Image

    deep = np.random.default_rng(0).integers(0, 65536, (16, 16)).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "30_0_0_20170103000000001.png")  # I;16
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:8, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "31_0_0_20170103000000002.png")
    frame = index_folder(tmp_path, progress=False).frame
    images, _, _ = _collect(make_dataset(frame, root=tmp_path, image_size=(16, 16)))
    np.testing.assert_array_equal(images[0][..., 0], deep >> 8)  # the high byte, not white
    assert (images[1][:8] == [200, 0, 0]).all() and (images[1][8:] == 255).all()  # on white


def test_jpeg_headers_are_checked_for_the_pixel_limit(tmp_path: Path) -> None:
    import struct
    import time

    from PIL import Image

    from utkface_data.pipeline import file_problem

    path = tmp_path / "30_0_0_20170103000000001.jpg"
    Image.new("RGB", (16, 16), (90, 120, 150)).save(path)
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 12_000, 12_000)  # claims 144 million pixels
    path.write_bytes(bytes(data))
    started = time.perf_counter()
    reason = file_problem(str(path))
    assert time.perf_counter() - started < 1.0
    assert reason is not None and reason.startswith("image too large: 12000x12000")
    assert file_problem(str(path), max_pixels=200_000_000) is None
    frame = pd.DataFrame({"path": [path.name], "age": [30], "gender": [0]})
    with pytest.raises(DatasetError, match=r"30_0_0_20170103000000001.jpg: image too large"):
        make_dataset(frame, root=tmp_path, check_files=False)  # the limit is always on
