"""Offline weights, bad input, safe-mode loading, precision, Predictor."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from agegender_models import (
    ModelFileError,
    Predictor,
    WeightsMismatchError,
    WeightsNotFoundError,
    create_model,
    get_precision,
    load_model,
    model_precision,
    predict,
    save_model,
    set_precision,
    set_trainable,
)
from agegender_models.precision import bf16_supported, resolve_precision

SHARED_MOBILENET = Path("/work/shared/weights/mobilenet_v2_1.0_224_no_top_tfslim.weights.h5")


@pytest.fixture()
def empty_keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv("AGEGENDER_WEIGHTS_DIR", raising=False)
    return tmp_path / "keras_home" / "models"


def _same_weights(a: keras.Model, b: keras.Model) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights(), strict=True))


# --- weights ---------------------------------------------------------------------------


def test_missing_imagenet_weights_is_one_clear_error(empty_keras_home):
    with pytest.raises(WeightsNotFoundError) as info:
        create_model("resnet50")  # default weights="imagenet"
    msg = str(info.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    assert str(empty_keras_home) in msg
    assert "weights=PATH" in msg and "AGEGENDER_WEIGHTS_DIR" in msg


def test_imagenet_found_in_agegender_weights_dir(tmp_path, empty_keras_home, monkeypatch):
    source = create_model("mobilenet_v2", weights=None, input_shape=(32, 32, 3))
    folder = tmp_path / "weights"
    folder.mkdir()
    source.get_layer("backbone").save_weights(folder / "mobilenet_v2_1.0_224_no_top_tfslim.weights.h5")
    monkeypatch.setenv("AGEGENDER_WEIGHTS_DIR", str(folder))
    model = create_model("mobilenet_v2", weights="imagenet", input_shape=(32, 32, 3))
    assert _same_weights(model.get_layer("backbone"), source.get_layer("backbone"))


def test_weights_path_route_resnet50(tiny_models, tmp_path):
    source = tiny_models("resnet50").get_layer("backbone")
    path = tmp_path / "r50.weights.h5"
    source.save_weights(path)
    model = create_model("resnet50", weights=path, input_shape=(32, 32, 3))
    assert _same_weights(model.get_layer("backbone"), source)
    # with weights given, the seed's default applies: only the last 30 layers train
    assert not any(la.trainable for la in model.get_layer("backbone").layers[:-30])


def test_weights_for_another_architecture(tiny_models, tmp_path):
    path = tmp_path / "mnv3.weights.h5"
    tiny_models("mobilenet_v3_small").get_layer("backbone").save_weights(path)
    with pytest.raises(WeightsMismatchError, match="does not fit backbone 'mobilenet_v2'"):
        create_model("mobilenet_v2", weights=path, input_shape=(32, 32, 3))


def test_weights_path_missing_or_not_h5(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="nope.weights.h5"):
        create_model("mobilenet_v3_small", weights=tmp_path / "nope.weights.h5")
    with pytest.raises(ValueError, match="no ImageNet weights"):
        create_model("custom_cnn", weights="imagenet")


@pytest.mark.skipif(not SHARED_MOBILENET.is_file(), reason="shared offline weights not present")
def test_shared_mobilenet_v2_weights_load(tiny_models):
    model = create_model("mobilenet_v2", weights=SHARED_MOBILENET, input_shape=(64, 64, 3))
    random = tiny_models("mobilenet_v2").get_layer("backbone")
    assert not _same_weights(model.get_layer("backbone"), random)


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_shape": (32, 32, 1)}, "3 \\(RGB\\) channels"),
        ({"input_shape": (32, 32)}, "input_shape"),
        ({"backbone": "resnet50", "input_shape": (16, 16, 3)}, "too small"),
        ({"input_shape": (8, 8, 3)}, "at least 16"),
        ({"dropout": 1.5}, "dropout"),
        ({"head": "attention"}, "head"),
        ({"trainable_layers": -1}, "trainable_layers"),
        ({"weights": 3}, "weights"),
        ({"precision": "fp8"}, "precision"),
        ({"age_range": (50, 10)}, "age_range"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, match):
    kwargs = {"backbone": "custom_cnn", "weights": None, **kwargs}
    with pytest.raises(ValueError, match=match):
        create_model(kwargs.pop("backbone"), **kwargs)


def test_trainable_layers_larger_than_backbone():
    with pytest.raises(ValueError, match="larger than backbone 'mobilenet_v3_small'"):
        create_model("mobilenet_v3_small", weights=None, input_shape=(32, 32, 3),
                     trainable_layers=10_000)


def test_set_trainable_freezes_exactly(tiny_models):
    model = tiny_models("mobilenet_v3_small")
    bb = model.get_layer("backbone")
    n = len(bb.layers)
    try:
        set_trainable(model, 0)
        assert bb.trainable_weights == []
        assert model.trainable_weights  # the head still trains
        set_trainable(model, 12)
        for i, la in enumerate(bb.layers):
            expect = i >= n - 12 and not isinstance(la, keras.layers.BatchNormalization)
            assert la.trainable == expect, la.name
        set_trainable(model, None)
        assert all(la.trainable != isinstance(la, keras.layers.BatchNormalization) for la in bb.layers)
        with pytest.raises(ValueError, match=f"\\[0, {n}\\]"):
            set_trainable(model, n + 1)
    finally:
        set_trainable(model, 30)


def test_corrupt_and_missing_model_files(tmp_path, tiny_models):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.keras")
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(ModelFileError, match="not a valid .keras file"):
        load_model(garbage)
    good = save_model(tiny_models("custom_cnn"), tmp_path / "good.keras")
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ModelFileError):
        load_model(truncated)


def test_load_uses_safe_mode(tmp_path):
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ModelFileError, match="safe_mode|Lambda|lambda"):
        load_model(path)


# --- precision -------------------------------------------------------------------------


def test_precision_scoped_and_outputs_float32(tiny_batch):
    before = get_precision()
    model = create_model("custom_cnn", weights=None, input_shape=(32, 32, 3),
                         precision="mixed_bfloat16")
    assert get_precision() == before
    assert model_precision(model) == "mixed_bfloat16"
    out = model(tiny_batch[0])
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in out.values())
    try:
        assert set_precision("float32") == "float32" == get_precision()
    finally:
        keras.mixed_precision.set_global_policy(before)


# --- Predictor -------------------------------------------------------------------------


def test_predictor_files_arrays_and_errors(tiny_models, tmp_path):
    model = tiny_models("custom_cnn")
    gray = tmp_path / "gray.png"
    Image.fromarray(np.full((50, 40), 128, np.uint8)).save(gray)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((20, 70, 4), np.uint8)).save(rgba)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 nope")
    files = [gray, broken, tmp_path / "missing.jpg", rgba]

    predictor = Predictor(model)
    with pytest.warns(UserWarning, match=r"2 input\(s\) gave no result"):
        results = predictor.predict(files, batch_size=2)
    assert [r["file"] for r in results] == [str(gray), str(rgba)]
    assert [e["file"] for e in predictor.errors] == [str(broken), str(tmp_path / "missing.jpg")]
    assert results.errors == predictor.errors  # returned with the results, never dropped
    for r in results:
        assert set(r) == {"file", "age", "gender", "p_female"}
        assert r["gender"] == ("female" if r["p_female"] > 0.5 else "male")
        assert 0.0 <= r["age"] <= 120.0
    # same numbers as the model on the converted image
    want = model(np.full((1, 32, 32, 3), 128, np.uint8), training=False)
    assert results[0]["age"] == pytest.approx(float(want["age"][0, 0]), rel=1e-5)

    # arrays, and a saved model path, with (results, errors)
    path = save_model(model, tmp_path / "m.keras")
    batch = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    res, errors = predict(path, batch)
    assert len(res) == 3 and errors == [] and all(r["file"] is None for r in res)


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_auto_precision_wants_a_gpu_with_native_bf16(monkeypatch, tmp_path, capability, expected) -> None:
    """A T4/V100 (compute capability < 8) emulates bf16: "auto" must stay float32 there."""
    import builtins

    import tensorflow as tf

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"] if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda device: {"compute_capability": capability})
    no_bf16_cpu = tmp_path / "cpuinfo"
    no_bf16_cpu.write_text("flags : fpu avx2 avx512f\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda path, *a, **k: real_open(
        no_bf16_cpu if path == "/proc/cpuinfo" else path, *a, **k))
    assert bf16_supported.__wrapped__() is expected


def test_auto_precision_is_float32_where_the_hardware_has_no_mixed_policy(monkeypatch) -> None:
    """No bf16 GPU or CPU: emulated bf16 is several times slower, so nothing is measured."""
    from agegender_models import precision

    monkeypatch.setattr(precision, "bf16_supported", lambda: False)
    monkeypatch.setattr(precision, "_gpu_capabilities", lambda: [])
    monkeypatch.setattr(precision, "measure_step_times", lambda *a, **k: pytest.fail("measured"))
    assert precision.mixed_candidate() is None
    for backbone in ("custom_cnn", "mobilenet_v2", None):
        assert resolve_precision("auto", backbone=backbone) == "float32"
    # an older GPU offers float16 tensor cores; a bf16 CPU or GPU bfloat16
    monkeypatch.setattr(precision, "_gpu_capabilities", lambda: [(7, 5)])
    assert precision.mixed_candidate() == "mixed_float16"
    monkeypatch.setattr(precision, "bf16_supported", lambda: True)
    assert precision.mixed_candidate() == "mixed_bfloat16"
    with pytest.raises(ValueError, match="Unknown backbone.*no_such_net"):
        resolve_precision("auto", backbone="no_such_net")


def test_save_without_optimizer_state(tiny_batch, tmp_path):
    """A model to predict with need not carry Adam's moments (twice its weights)."""
    import io
    import zipfile

    import h5py

    from agegender_models import compile_model, create_model, load_model, save_model

    images, labels = tiny_batch
    model = compile_model(create_model("custom_cnn", input_shape=images.shape[1:]))
    model.fit(images, labels, epochs=1, verbose=0)

    def stored_optimizer_vars(path) -> int:
        with zipfile.ZipFile(path) as archive:
            weights = h5py.File(io.BytesIO(archive.read("model.weights.h5")))
            return len(weights["optimizer"]["vars"]) if "optimizer" in weights else 0

    full = save_model(model, tmp_path / "full.keras")
    lean = save_model(model, tmp_path / "lean.keras", include_optimizer=False)
    assert stored_optimizer_vars(full) > 0
    assert stored_optimizer_vars(lean) == 0
    reloaded = load_model(lean)
    np.testing.assert_allclose(reloaded.predict(images, verbose=0)["age"],
                               model.predict(images, verbose=0)["age"], rtol=1e-6)
    assert model.optimizer is not None  # the caller's model is left compiled
