"""Every registered backbone: build, outputs, bounds, BatchNorm, training, save/load."""

from __future__ import annotations

import zipfile

import keras
import numpy as np
import pytest

from agegender_models import (
    Preprocess,
    backbone_defaults,
    compile_model,
    create_model,
    ensemble,
    flip_tta,
    list_backbones,
    load_model,
    save_model,
)

BACKBONES = list_backbones()


def test_builtin_backbones_are_registered():
    assert {"custom_cnn", "resnet50", "mobilenet_v2", "mobilenet_v3_small"} <= set(BACKBONES)


@pytest.mark.parametrize("name", BACKBONES)
def test_outputs_names_shapes_dtypes(name, tiny_models, tiny_batch):
    model = tiny_models(name)
    images, _ = tiny_batch
    out = model(images, training=False)
    assert set(out) == {"gender", "age"}
    assert sorted(model.output_names) == ["age", "gender"]
    for key in ("gender", "age"):
        assert tuple(out[key].shape) == (8, 1)
        assert keras.backend.standardize_dtype(out[key].dtype) == "float32"
    gender = np.asarray(out["gender"])
    assert np.all((gender >= 0) & (gender <= 1))
    # preprocessing lives in the model and matches the backbone's declared mode
    assert model.get_layer("preprocess").mode == backbone_defaults(name)["preprocessing"]
    # uint8 and float inputs are the same image
    np.testing.assert_allclose(
        np.asarray(model(images.astype(np.float32), training=False)["age"]),
        np.asarray(out["age"]),
        rtol=1e-6,
    )


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("bias", [10705.0, -50.0])
def test_age_is_bounded(name, bias, tiny_models, tiny_batch):
    model = tiny_models(name)
    dense = model.get_layer("age_dense")
    kernel, old_bias = dense.get_weights()
    try:
        dense.set_weights([np.zeros_like(kernel), np.full_like(old_bias, bias)])
        age = np.asarray(model(tiny_batch[0], training=False)["age"])
    finally:
        dense.set_weights([kernel, old_bias])
    lo, hi = model.get_layer("age").min_age, model.get_layer("age").max_age
    assert (lo, hi) == (0.0, 120.0)
    assert np.all(age == (hi if bias > hi else lo))


@pytest.mark.parametrize("name", BACKBONES)
def test_batchnorm_mode(name, tiny_models, tiny_batch):
    """Pretrained backbones: BatchNorm in inference mode even when the model trains."""
    model = tiny_models(name)
    x = model.get_layer("preprocess")(tiny_batch[0])
    backbone = model.get_layer("backbone")
    inference = np.asarray(backbone(x, training=False))
    training = np.asarray(backbone(x, training=True))
    if backbone_defaults(name)["bn_inference"]:
        np.testing.assert_allclose(training, inference, rtol=1e-5, atol=1e-5)
        bns = [la for la in backbone.layers if isinstance(la, keras.layers.BatchNormalization)]
        assert all(not bn.trainable for bn in bns)
    else:  # trained from scratch: BatchNorm uses batch statistics while training
        assert not np.allclose(training, inference, atol=1e-5)


@pytest.mark.parametrize("name", BACKBONES)
def test_train_steps_reduce_loss_and_respect_freezing(name, tiny_models, tiny_batch):
    model = tiny_models(name)
    images, labels = tiny_batch
    backbone = model.get_layer("backbone")
    frozen = [la for la in backbone.layers if not la.trainable and la.weights]
    before = {id(w): keras.ops.convert_to_numpy(w) for la in frozen for w in la.weights}
    # 1e-4: with random (not ImageNet) features, the seed's 1e-3 overshoots on 8 images
    compile_model(model, learning_rate=1e-4, jit_compile=False)
    loss0 = model.test_on_batch(images, labels, return_dict=True)["loss"]
    for _ in range(3):
        model.train_on_batch(images, labels)
    loss1 = model.test_on_batch(images, labels, return_dict=True)["loss"]
    assert loss1 < loss0
    # frozen layers (and frozen BatchNorm statistics) did not move
    for la in frozen:
        for w in la.weights:
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), before[id(w)], err_msg=f"{la.name}/{w.path}")


@pytest.mark.parametrize("name", BACKBONES)
def test_save_load_round_trip(name, tiny_models, tiny_batch, tmp_path):
    model = tiny_models(name)
    path = save_model(model, tmp_path / f"{name}.keras")
    loaded = load_model(path)
    assert isinstance(loaded.get_layer("preprocess"), Preprocess)
    want = model(tiny_batch[0], training=False)
    got = loaded(tiny_batch[0], training=False)
    for key in ("gender", "age"):
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), rtol=1e-6, atol=1e-6)


def test_save_model_compress_deflates_and_loads_the_same(tiny_models, tiny_batch, tmp_path):
    model = tiny_models("custom_cnn")
    stored = save_model(model, tmp_path / "stored.keras", include_optimizer=False)
    deflated = save_model(model, tmp_path / "deflated.keras", include_optimizer=False, compress=True)
    with zipfile.ZipFile(deflated) as archive:
        assert {m.compress_type for m in archive.infolist()} == {zipfile.ZIP_DEFLATED}
        assert {m.filename for m in archive.infolist()} == set(zipfile.ZipFile(stored).namelist())
    assert deflated.stat().st_size < stored.stat().st_size
    assert not list(tmp_path.glob("*.deflating"))
    want, got = load_model(stored)(tiny_batch[0]), load_model(deflated)(tiny_batch[0])
    for key in ("gender", "age"):
        np.testing.assert_array_equal(np.asarray(got[key]), np.asarray(want[key]))


def test_resnet50_last_30_layers(tiny_models):
    """Model B: nothing before the last 30 ResNet50 layers trains; inside them BatchNorm is
    frozen (inference mode) and the rest trains."""
    backbone = tiny_models("resnet50").get_layer("backbone")
    assert backbone_defaults("resnet50")["trainable_layers"] == 30
    head, tail = backbone.layers[:-30], backbone.layers[-30:]
    assert not any(la.trainable for la in head)
    for la in tail:
        assert la.trainable != isinstance(la, keras.layers.BatchNormalization), la.name
    assert any(isinstance(la, keras.layers.Conv2D) and la.trainable for la in tail)
    # trainable weights of the backbone are exactly the Conv2D kernels/biases of the tail
    expected = {id(w) for la in tail if isinstance(la, keras.layers.Conv2D) for w in la.weights}
    assert {id(w) for w in backbone.trainable_weights} == expected


def test_pretrained_architecture_trained_from_scratch_learns_batchnorm():
    """weights=None and no partial freeze: nothing to preserve, so BatchNorm must train."""
    model = create_model("mobilenet_v3_small", weights=None, input_shape=(32, 32, 3))
    bns = [la for la in model.get_layer("backbone").layers if isinstance(la, keras.layers.BatchNormalization)]
    assert bns and all(bn.trainable for bn in bns)


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small", "resnet50"])
def test_from_scratch_batchnorm_statistics_follow_the_data(name, tmp_path):
    """keras.applications' momentum 0.999 left MobileNetV3Small's inference features constant
    after 11 epochs on 3,500 faces; from scratch we use 0.99, and keep pretrained models' own."""
    scratch = create_model(name, weights=None, input_shape=(32, 32, 3))
    bns = [la for la in scratch.get_layer("backbone").layers if isinstance(la, keras.layers.BatchNormalization)]
    assert bns and all(bn.momentum <= 0.99 for bn in bns)
    # the fix survives saving
    save_model(scratch, tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert all(la.momentum <= 0.99 for la in loaded.get_layer("backbone").layers
               if isinstance(la, keras.layers.BatchNormalization))
    # with pretrained weights the backbone's own statistics settings are left alone
    weights = tmp_path / "backbone.weights.h5"
    scratch.get_layer("backbone").save_weights(weights)
    pretrained = create_model(name, weights=str(weights), input_shape=(32, 32, 3))
    momenta = {la.momentum for la in pretrained.get_layer("backbone").layers
               if isinstance(la, keras.layers.BatchNormalization)}
    assert momenta == {{"resnet50": 0.99}.get(name, 0.999)}  # keras.applications' own values


def test_flip_tta_averages_the_image_and_its_mirror(tiny_models, tiny_batch):
    model = tiny_models("custom_cnn")
    tta = flip_tta(model)
    images, _ = tiny_batch
    mirrored = images[:, :, ::-1]
    plain, flipped, averaged = model(images), model(mirrored), tta(images)
    assert set(averaged) == {"gender", "age"}
    for name in ("gender", "age"):
        expected = (np.asarray(plain[name]) + np.asarray(flipped[name])) / 2
        np.testing.assert_allclose(np.asarray(averaged[name]), expected, rtol=1e-5, atol=1e-5)
        # the mirror's mirror is the image: the average does not depend on orientation
        np.testing.assert_allclose(np.asarray(tta(mirrored)[name]), np.asarray(averaged[name]),
                                   rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(plain["age"]), np.asarray(flipped["age"]))  # the flip matters


def test_ensemble_averages_its_members_resizing_the_input_for_each(tiny_models, tiny_batch, tmp_path):
    small = tiny_models("custom_cnn")  # 32x32
    keras.utils.set_random_seed(1)
    big = create_model("custom_cnn", input_shape=(48, 48, 3))  # the same name as `small`
    images = np.asarray(keras.layers.Resizing(48, 48)(tiny_batch[0].astype("float32")))
    both = ensemble([small, big])
    assert both.input_shape == (None, 48, 48, 3)  # the largest member's size
    out = both(images)
    # the small member gets the input resized as the pipeline's uint8 images are (whole values)
    resized = np.clip(np.round(np.asarray(keras.ops.image.resize(images, (32, 32)))), 0, 255)
    for name in ("gender", "age"):
        expected = (np.asarray(small(resized)[name]) + np.asarray(big(images)[name])) / 2
        np.testing.assert_allclose(np.asarray(out[name]), expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(small(resized)["age"]), np.asarray(big(images)["age"]))
    # saved and loaded like any model; flip TTA composes with it
    loaded = load_model(save_model(both, tmp_path / "ensemble.keras"))
    np.testing.assert_allclose(np.asarray(loaded(images)["age"]), np.asarray(out["age"]), rtol=1e-5)
    assert flip_tta(both)(images)["age"].shape == (8, 1)
    assert ensemble([small, big], image_size=32).input_shape == (None, 32, 32, 3)


def test_ensemble_refuses_what_it_cannot_average(tiny_models):
    model = tiny_models("custom_cnn")
    with pytest.raises(ValueError, match="at least 2 models"):
        ensemble([model])
    inputs = keras.Input((32, 32, 3))
    other = keras.Model(inputs, {"score": keras.layers.Dense(1)(keras.layers.Flatten()(inputs))})
    with pytest.raises(ValueError, match=r"models\[1\]` must be an age/gender model"):
        ensemble([model, other])
    for size in (0, 12.5, True):
        with pytest.raises(ValueError, match="image_size"):
            ensemble([model, model], image_size=size)
