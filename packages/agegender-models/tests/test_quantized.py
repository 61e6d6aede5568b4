"""quantized_copy: a model's large kernels stored as int8 codes, and dequantized_copy undoing it;
folded_copy: BatchNormalization and ReLU6 folded into the convolutions."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from agegender_models import ensemble, load_model, save_model
from agegender_models.layers import (
    QuantizedConv2D,
    QuantizedDense,
    _leaves,
    dequantized_copy,
    folded_copy,
    quantize_kernel,
    quantized_copy,
)


def test_quantize_kernel_is_within_half_a_step_per_channel() -> None:
    kernel = np.random.default_rng(0).normal(0, 1, (3, 3, 8, 4)).astype(np.float32)
    kernel[..., 2] *= 100  # each output channel gets its own scale
    codes, scale, offset = quantize_kernel(kernel)
    assert codes.dtype == np.int8 and codes.shape == kernel.shape and scale.shape == (4,)
    error = np.abs(codes.astype(np.float32) * scale + offset - kernel)
    assert np.all(error <= scale / 2 + 1e-6 * np.abs(kernel).max())


def test_a_mobilenet_keeps_its_outputs_and_saves_smaller(tiny_models, tiny_batch, tmp_path: Path) -> None:
    model = tiny_models("mobilenet_v2")
    compact = quantized_copy(model, min_weights=4096)
    kinds = {type(la) for la in _leaves(compact)}
    assert {QuantizedConv2D, QuantizedDense} <= kinds
    # small kernels (the first layers': most of the rounding's effect) stay float32, large ones do not
    for source, target in zip(_leaves(model), _leaves(compact), strict=True):
        if type(source) in (keras.layers.Conv2D, keras.layers.Dense):
            size = int(np.prod(source.kernel.shape))
            assert isinstance(target, (QuantizedConv2D, QuantizedDense)) == (size >= 4096), source.name
    assert not compact.trainable_weights
    want, got = model(tiny_batch[0]), compact(tiny_batch[0])
    np.testing.assert_allclose(np.asarray(got["gender"]), np.asarray(want["gender"]), atol=0.05)
    np.testing.assert_allclose(np.asarray(got["age"]), np.asarray(want["age"]), atol=2.0)
    plain = save_model(model, tmp_path / "plain.keras", include_optimizer=False)
    small = save_model(compact, tmp_path / "small.keras", include_optimizer=False)
    assert small.stat().st_size < 0.5 * plain.stat().st_size
    again = load_model(small)
    np.testing.assert_array_equal(np.asarray(again(tiny_batch[0])["age"]), np.asarray(got["age"]))
    # converters get float32 kernels back: plain layers, the quantized model's outputs
    restored = dequantized_copy(again)
    assert not {QuantizedConv2D, QuantizedDense} & {type(la) for la in _leaves(restored)}
    np.testing.assert_allclose(np.asarray(restored(tiny_batch[0])["age"]), np.asarray(got["age"]),
                               rtol=1e-5, atol=1e-4)


def test_an_ensemble_is_quantized_member_by_member(tiny_models, tiny_batch) -> None:
    both = ensemble([tiny_models("mobilenet_v2"), tiny_models("custom_cnn")])
    compact = quantized_copy(both, min_weights=0)
    left = [la for la in _leaves(compact) if type(la) in (keras.layers.Conv2D, keras.layers.Dense)]
    assert not left  # every plain convolution and dense layer, the custom CNN's with their ReLU too
    relu = [la for la in _leaves(compact) if isinstance(la, QuantizedConv2D)
            and keras.activations.serialize(la.activation) == "relu"]
    assert relu
    assert sum(isinstance(la, (QuantizedConv2D, QuantizedDense)) for la in _leaves(compact)) > 30
    np.testing.assert_allclose(np.asarray(compact(tiny_batch[0])["gender"]),
                               np.asarray(both(tiny_batch[0])["gender"]), atol=0.05)


def test_a_dense_layer_without_bias_on_sequences_and_in_bfloat16() -> None:
    inputs = keras.Input((5, 64))
    layer = keras.layers.Dense(32, use_bias=False, activation="tanh", name="d")
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(0).normal(0, 1, (2, 5, 64)).astype(np.float32)
    compact = quantized_copy(model, min_weights=0)
    assert isinstance(compact.get_layer("d"), QuantizedDense) and compact.output_shape == (None, 5, 32)
    np.testing.assert_allclose(np.asarray(compact(x)), np.asarray(model(x)), atol=0.02)
    # under mixed_bfloat16 the kernel is computed in float32 and rounded once (not its parts)
    halves = keras.layers.Dense(32, use_bias=False, name="d", dtype="mixed_bfloat16")
    mixed = quantized_copy(keras.Model(inputs, halves(inputs)), min_weights=0).get_layer("d")
    assert mixed.compute_dtype == "bfloat16"
    codes, scale, offset, _ = mixed.get_weights()
    want = keras.ops.cast(codes.astype(np.float32) * scale + offset, "bfloat16")
    np.testing.assert_array_equal(np.asarray(keras.ops.cast(mixed._kernel(), "float32")),
                                  np.asarray(keras.ops.cast(want, "float32")))


@pytest.mark.parametrize("layer", [
    keras.layers.Conv2D(4, 3, dilation_rate=2, name="dilated"),
    keras.layers.Conv2D(4, (1, 3), name="oblong"),
    keras.layers.DepthwiseConv2D(3, name="depthwise"),
])
def test_what_a_quantized_layer_cannot_compute_stays_as_it_is(layer) -> None:
    inputs = keras.Input((9, 9, 4))
    model = keras.Model(inputs, layer(inputs))
    compact = quantized_copy(model, min_weights=0)
    assert type(compact.layers[-1]) is type(layer)
    x = np.random.default_rng(0).normal(0, 1, (2, 9, 9, 4)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(compact(x)), np.asarray(model(x)))


# ------------------------------------------------------------------------------------------------
# folded_copy: BatchNormalization and ReLU6 folded into the convolutions


def _with_statistics(model: keras.Model) -> keras.Model:
    """Random BatchNormalization statistics, so that folding them has something to get wrong."""
    rng = np.random.default_rng(1)
    for layer in _leaves(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, n))
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, n))
            layer.gamma.assign(rng.uniform(0.5, 1.5, n))
            layer.beta.assign(rng.normal(0, 0.3, n))
    return model


def _chains() -> keras.Model:
    """Conv -> BN -> ReLU6, depthwise (multiplier 2) -> BN -> ReLU, conv -> BN -> Add (no ReLU), a
    conv whose output two layers read (not folded), and a nested model."""
    layers = keras.layers
    inner_in = keras.Input((8, 8, 6))
    y = layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, use_bias=False)(inner_in)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU()(y)
    inner = keras.Model(inner_in, y, name="inner")
    x_in = keras.Input((16, 16, 3))
    x = layers.Conv2D(6, 3, strides=2, padding="same", use_bias=False)(x_in)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(6.0)(x)
    x = inner(x)
    skip = layers.Conv2D(12, 1)(x)
    a = layers.BatchNormalization()(layers.Conv2D(12, 1, use_bias=True)(x))
    x = layers.Add()([a, skip])
    shared = layers.Conv2D(4, 1)(x)  # read by a BN and by the output: stays as it is
    x = layers.Concatenate()([layers.BatchNormalization()(shared), shared])
    return keras.Model(x_in, layers.GlobalAveragePooling2D()(x))


def test_folding_keeps_the_outputs_with_fewer_layers() -> None:
    keras.utils.set_random_seed(0)
    model = _with_statistics(_chains())
    folded = folded_copy(model)
    x = np.random.default_rng(0).normal(0, 1, (4, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(folded(x)), np.asarray(model(x)), atol=1e-5, rtol=1e-5)
    kinds = [type(la).__name__ for la in _leaves(folded)]
    assert kinds.count("BatchNormalization") == 1  # the shared convolution's, not folded
    assert "ReLU" not in kinds
    convs = {la.name: la for la in _leaves(folded) if isinstance(la, keras.layers.Conv2D)}
    activations = sorted(keras.activations.serialize(la.activation) for la in convs.values())
    assert activations.count("relu6") == 1 and folded.get_layer("inner").layers[1].activation \
        is keras.activations.relu
    assert not folded.trainable


def test_a_convolution_or_batchnorm_whose_output_is_a_model_output_keeps_it() -> None:
    layers = keras.layers
    x_in = keras.Input((8, 8, 3))
    conv = layers.Conv2D(4, 3, padding="same")(x_in)  # an output itself: BN not folded into it
    y = layers.ReLU()(layers.BatchNormalization()(conv))
    z = layers.Conv2D(4, 1)(y)
    normed = layers.BatchNormalization()(z)  # an output itself: folded, but its ReLU not fused
    model = _with_statistics(keras.Model(x_in, [conv, normed, layers.ReLU(6.0)(normed)]))
    folded = folded_copy(model)
    x = np.random.default_rng(0).normal(0, 1, (2, 8, 8, 3)).astype(np.float32)
    for want, got in zip(model(x), folded(x), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    assert [type(la).__name__ for la in _leaves(folded)].count("BatchNormalization") == 1


def test_a_folded_mobilenet_is_smaller_to_load_and_quantizes_with_its_relu6(
        tiny_models, tiny_batch, tmp_path: Path) -> None:
    model = _with_statistics(tiny_models("mobilenet_v2"))
    images, _ = tiny_batch
    folded = folded_copy(model)
    want, got = model(images), folded(images)
    for key in ("gender", "age"):
        np.testing.assert_allclose(np.asarray(got[key]), np.asarray(want[key]), atol=1e-4, rtol=1e-4)
    assert len(_leaves(folded)) < 0.5 * len(_leaves(model))
    compact = quantized_copy(folded, min_weights=4096)
    relu6 = [la for la in _leaves(compact) if isinstance(la, QuantizedConv2D)
             and keras.activations.serialize(la.activation) == "relu6"]
    assert relu6  # folded expansions keep their ReLU6 and still store int8 kernels
    save_model(compact, tmp_path / "c.keras", include_optimizer=False)
    loaded = load_model(tmp_path / "c.keras")
    np.testing.assert_allclose(np.asarray(loaded(images)["age"]), np.asarray(compact(images)["age"]),
                               atol=1e-4)
    plain = dequantized_copy(loaded)  # what the converters get: the activation comes back too
    np.testing.assert_allclose(np.asarray(plain(images)["age"]), np.asarray(compact(images)["age"]),
                               atol=1e-3)


def _with_four_arrays_per_int8_layer(path: Path, out: Path) -> list[list[np.ndarray]]:
    """Rewrite a saved ``.keras`` file as sessions 12-13 saved int8 layers (codes, scale, offset
    and bias apart, four arrays): ``out``, and each int8 layer's four arrays in file order."""
    import zipfile

    import h5py

    weights_file = out.parent / "model.weights.h5"
    with zipfile.ZipFile(path) as archive:
        archive.extract("model.weights.h5", out.parent)
        others = {n: archive.read(n) for n in archive.namelist() if n != "model.weights.h5"}
    rewritten = []
    with h5py.File(weights_file, "r+") as weights:
        groups = []
        weights.visititems(lambda name, item: groups.append(name) if name.endswith("/vars")
                           and len(item) == 2 and item["0"].dtype == np.int8 else None)
        for name in groups:
            codes, params = weights[name]["0"][()], weights[name]["1"][()]
            del weights[name]["1"]
            for i, array in enumerate([params[0], params[1], params[2]], start=1):
                weights[name].create_dataset(str(i), data=array)
            rewritten.append([codes, params[0], params[1], params[2]])
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in others.items():
            archive.writestr(name, data)
        archive.write(weights_file, "model.weights.h5")
    return rewritten


def test_int8_layers_hold_two_variables_and_load_files_saved_with_four(tmp_path: Path) -> None:
    layer = QuantizedConv2D(4, 3)
    layer.build((None, 8, 8, 2))
    assert [v.name for v in layer.weights] == ["codes", "params"]
    codes = np.arange(72, dtype=np.int8).reshape(3, 3, 2, 4)
    scale, offset, bias = (np.full(4, v, np.float32) for v in (0.5, -1.0, 2.0))
    layer.set_weights([codes, scale, offset, bias])
    for got, want in zip(layer.get_weights(), [codes, scale, offset, bias], strict=True):
        np.testing.assert_array_equal(got, want)
    # models saved by sessions 12-13 hold each int8 layer as four arrays: a generated one loads
    rng = np.random.default_rng(0)
    inputs = keras.Input((8, 8, 2))
    x = QuantizedConv2D(4, 3, name="conv")(inputs)
    outputs = QuantizedDense(3, name="dense")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    model.get_layer("conv").set_weights([codes, scale, offset, bias])
    model.get_layer("dense").set_weights([rng.integers(-128, 128, (256, 3), dtype=np.int8),
                                          *rng.normal(0, 1, (3, 3)).astype(np.float32)])
    model.save(tmp_path / "two.keras")
    stored = _with_four_arrays_per_int8_layer(tmp_path / "two.keras", tmp_path / "four.keras")
    assert len(stored) == 2
    loaded = keras.saving.load_model(tmp_path / "four.keras", compile=False)
    for name in ("conv", "dense"):
        want = model.get_layer(name).get_weights()
        assert any(all(np.array_equal(a, b) for a, b in zip(arrays, want, strict=True)) for arrays in stored)
        for got, expected in zip(loaded.get_layer(name).get_weights(), want, strict=True):
            np.testing.assert_array_equal(got, expected)
    images = rng.normal(0, 1, (2, 8, 8, 2)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(loaded(images)), np.asarray(model(images)))
