"""dlib's face descriptor in Keras (face-api.js weights) and the model blended with its read-outs."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from agegender_models import create_model, get_runner, load_model, save_model
from agegender_models.face_descriptor import (
    DESCRIPTOR_INPUT,
    FEATURES,
    MANIFEST,
    DescriptorWeightsError,
    face_descriptor_model,
    read_face_api_weights,
    with_descriptor_readouts,
)
from agegender_models.layers import QuantizedConv2D, dequantized_copy


@pytest.mark.parametrize("stride,padding", [(1, "same"), (2, "valid")])
def test_quantized_conv_is_a_conv_with_the_dequantized_kernel(stride, padding, tmp_path) -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(-128, 128, (3, 3, 4, 5)).astype(np.int8)
    scale, offset, bias = rng.uniform(0.001, 0.01, 5), rng.normal(0, 0.1, 5), rng.normal(0, 1, 5)
    x = rng.normal(0, 1, (2, 9, 9, 4)).astype(np.float32)
    inputs = keras.Input((9, 9, 4))
    layer = QuantizedConv2D(5, 3, strides=stride, padding=padding)
    model = keras.Model(inputs, layer(inputs))
    layer.set_weights([codes, scale, offset, bias])
    reference = keras.layers.Conv2D(5, 3, strides=stride, padding=padding)
    reference.build((None, 9, 9, 4))
    reference.set_weights([codes.astype(np.float32) * scale + offset, bias])
    np.testing.assert_allclose(model.predict(x, verbose=0), reference(x), rtol=1e-5, atol=1e-5)
    assert model.output_shape == reference.compute_output_shape((None, 9, 9, 4))
    # kept as int8 in a saved model: a quarter of a float32 kernel
    assert layer.weights[0].dtype == "int8" and not layer.trainable_weights
    model.save(tmp_path / "q.keras")
    again = keras.saving.load_model(tmp_path / "q.keras")
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


def test_the_descriptor_reads_face_api_weights_exactly(fake_face_api: Path) -> None:
    descriptor = face_descriptor_model(fake_face_api)
    assert descriptor.input_shape == (None, DESCRIPTOR_INPUT, DESCRIPTOR_INPUT, 3)
    assert descriptor.output_shape == (None, FEATURES)
    assert not descriptor.trainable_weights
    # the first convolution, by hand from the file: ((x - mean) / 255) * kernel + bias, then the
    # per-channel scale, at the top-left output pixel (7x7, stride 2, 'valid'; before its ReLU)
    tensors = read_face_api_weights(fake_face_api)

    def value(name):
        codes, scale, base = tensors[name]
        return codes.astype(np.float64) * scale + base

    x = np.random.default_rng(1).integers(0, 256, (1, 150, 150, 3)).astype(np.float32)
    first = keras.Model(descriptor.input, descriptor.get_layer("conv32_down").output)
    got = first.predict(x, verbose=0)[0, 0, 0]
    patch = (x[0, :7, :7] - np.array([122.782, 117.001, 104.298])) / 255
    conv = np.einsum("ijc,ijcf->f", patch, value("conv32_down/conv/filters"))
    conv += value("conv32_down/conv/bias")
    want = conv * value("conv32_down/scale/weights") + value("conv32_down/scale/biases")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # float32-stored tensors (the 64-filter block) are requantized per channel: within half a step
    codes, _, _ = tensors["conv64_1/conv1/conv/filters"]
    assert codes.dtype == np.float32
    layer = descriptor.get_layer("conv64_1_conv1")
    q, scale, offset, _ = layer.get_weights()
    folded = codes * value("conv64_1/conv1/scale/weights")
    assert np.abs(q.astype(np.float64) * scale + offset - folded).max() <= scale.max() / 2 + 1e-6


def _reference_features(tensors, x: np.ndarray) -> np.ndarray:
    """The network written out plainly from face-api.js' description (float weights, the scale
    layer applied after each convolution): an independent check of the Keras wiring."""
    import tensorflow as tf

    def value(name):
        codes, scale, base = tensors[name]
        return tf.constant(codes.astype(np.float32) * np.float32(scale) + np.float32(base))

    def conv(x, name, stride, padding="SAME", relu=True):
        y = tf.nn.conv2d(x, value(f"{name}/conv/filters"), stride, padding) + value(f"{name}/conv/bias")
        y = y * value(f"{name}/scale/weights") + value(f"{name}/scale/biases")
        return tf.nn.relu(y) if relu else y

    def block(x, name, down):
        y = conv(conv(x, f"{name}/conv1", 2 if down else 1, "VALID" if down else "SAME"),
                 f"{name}/conv2", 1, relu=False)
        if down:
            x = tf.nn.avg_pool2d(x, 2, 2, "VALID")
            if x.shape[1] != y.shape[1]:
                y = tf.pad(y, [[0, 0], [0, 1], [0, 1], [0, 0]])
            if x.shape[-1] != y.shape[-1]:
                x = tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, y.shape[-1] - x.shape[-1]]])
        return tf.nn.relu(x + y)

    x = (tf.constant(x) - np.array([122.782, 117.001, 104.298], np.float32)) / 255
    x = tf.nn.max_pool2d(conv(x, "conv32_down", 2, "VALID"), 3, 2, "VALID")
    for name in ["conv32_1", "conv32_2", "conv32_3", "conv64_down", "conv64_1", "conv64_2",
                 "conv64_3", "conv128_down", "conv128_1", "conv128_2", "conv256_down",
                 "conv256_1", "conv256_2", "conv256_down_out"]:
        x = block(x, name, name.endswith(("down", "down_out")))
    return tf.reduce_mean(x, axis=[1, 2]).numpy()


def test_the_whole_network_matches_a_plain_reference(fake_face_api: Path) -> None:
    x = np.random.default_rng(6).integers(0, 256, (2, 150, 150, 3)).astype(np.float32)
    got = face_descriptor_model(fake_face_api).predict(x, verbose=0)
    want = _reference_features(read_face_api_weights(fake_face_api), x)
    # the float32-stored tensors are requantized to 8 bits: a small difference, not a wiring one
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 0.02


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_bad_face_api_folders_are_one_clear_error(fake_face_api: Path, tmp_path: Path) -> None:
    with pytest.raises(DescriptorWeightsError, match=f"{MANIFEST}: not found; place .*@vladmandic/face-api"):
        face_descriptor_model(tmp_path)
    truncated = _copy(fake_face_api, tmp_path / "truncated")
    data = (truncated / "face_recognition_model.bin").read_bytes()
    (truncated / "face_recognition_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(DescriptorWeightsError, match="the weight file ends inside tensor"):
        read_face_api_weights(truncated)
    longer = _copy(fake_face_api, tmp_path / "longer")
    (longer / "face_recognition_model.bin").write_bytes(data + b"\0" * 8)
    with pytest.raises(DescriptorWeightsError, match="8 bytes left over"):
        read_face_api_weights(longer)
    other = tmp_path / "other"
    other.mkdir()
    (other / "face_recognition_model.bin").write_bytes(np.zeros(4, np.float32).tobytes())
    (other / MANIFEST).write_text(json.dumps([{"paths": ["face_recognition_model.bin"], "weights": [
        {"name": "dense/kernel", "shape": [2, 2], "dtype": "float32"}]}]))
    with pytest.raises(DescriptorWeightsError, match="not the face recognition model"):
        read_face_api_weights(other)
    (other / MANIFEST).write_text("{not json")
    with pytest.raises(DescriptorWeightsError, match="not a face-api.js weights manifest"):
        read_face_api_weights(other)


@pytest.fixture(scope="module")
def blended_parts(fake_face_api: Path):
    base = create_model("custom_cnn", input_shape=(32, 32, 3))
    descriptor = face_descriptor_model(fake_face_api)
    rng = np.random.default_rng(2)
    gender = (rng.normal(0, 0.5, FEATURES), 0.3)
    age = [(rng.normal(0, 0.2, (FEATURES, 8)), rng.normal(0, 1, 8)), (rng.normal(0, 3, (8, 1)), [30.0])]
    model = with_descriptor_readouts(base, descriptor, gender=gender, age=age, gate_age=10,
                                     gate_width=4, age_weight=0.2)
    return base, descriptor, gender, age, model


def test_the_blend_is_the_documented_formula(blended_parts, tmp_path: Path) -> None:
    base, descriptor, gender, age, model = blended_parts
    x = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    out = model.predict(x, verbose=0)
    own = base.predict(x, verbose=0)
    features = descriptor.predict(np.asarray(keras.ops.image.resize(x, (150, 150))), verbose=0)
    p_descriptor = 1 / (1 + np.exp(-(features @ gender[0] + gender[1])))
    trust = 1 / (1 + np.exp(-(own["age"].ravel() - 10) / 4))
    want_gender = own["gender"].ravel() + trust * (p_descriptor - own["gender"].ravel())
    hidden = np.maximum(features @ age[0][0] + age[0][1], 0)
    age_descriptor = (hidden @ age[1][0]).ravel() + age[1][1][0]
    want_age = np.clip(own["age"].ravel() + 0.2 * (age_descriptor - own["age"].ravel()), 0, 120)
    np.testing.assert_allclose(out["gender"].ravel(), want_gender, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["age"].ravel(), want_age, rtol=1e-4, atol=1e-3)
    # saved and loaded as one .keras file, the same predictions
    again = load_model(save_model(model, tmp_path / "blend.keras", include_optimizer=False))
    for key in ("gender", "age"):
        np.testing.assert_allclose(again.predict(x, verbose=0)[key], out[key], rtol=1e-6, atol=1e-6)


def test_the_blend_runs_on_tflite_like_on_keras(blended_parts) -> None:
    model = blended_parts[-1]
    x = np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    p_keras, age_keras = get_runner(model, "keras")(x)
    p_lite, age_lite = get_runner(model, "tflite")(x)
    np.testing.assert_allclose(p_lite, p_keras, atol=1e-4)
    np.testing.assert_allclose(age_lite, age_keras, atol=1e-2)


def test_converters_get_float32_kernels(blended_parts) -> None:
    base, model = blended_parts[0], blended_parts[-1]
    assert dequantized_copy(base) is base  # nothing to do
    copy = dequantized_copy(model)
    layers = [layer for layer in copy._flatten_layers(recursive=True)]
    assert not any(isinstance(layer, QuantizedConv2D) for layer in layers)
    assert copy.get_layer("face_descriptor").get_layer("conv32_down").kernel.dtype == "float32"
    x = np.random.default_rng(5).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    for key, value in model.predict(x, verbose=0).items():
        np.testing.assert_allclose(copy.predict(x, verbose=0)[key], value, rtol=1e-5, atol=1e-5)
    # TFLite then has constant kernels: no int8 -> float cast left for it to run
    import tensorflow as tf

    from agegender_models.export import convert_model

    def casts(m) -> int:
        interpreter = tf.lite.Interpreter(model_content=convert_model(m, "tflite"))
        return [op["op_name"] for op in interpreter._get_ops_details()].count("CAST")

    assert casts(model) == casts(base)  # the input's cast only (29 more without the copy)


def test_bad_blend_settings_are_refused(blended_parts) -> None:
    base, descriptor, gender, age, _ = blended_parts
    with pytest.raises(ValueError, match="`gender` must hold 256 coefficients. Received: 3"):
        with_descriptor_readouts(base, descriptor, gender=([1, 2, 3], 0), age=age)
    with pytest.raises(ValueError, match=r"`age` layer 1 must map 8 inputs .* kernel \(7, 1\)"):
        with_descriptor_readouts(base, descriptor, gender=gender, age=[age[0], (np.zeros((7, 1)), [0])])
    with pytest.raises(ValueError, match="`age` must end in one output. Received: 8"):
        with_descriptor_readouts(base, descriptor, gender=gender, age=age[:1])
    with pytest.raises(ValueError, match="`gate_width` must be > 0"):
        with_descriptor_readouts(base, descriptor, gender=gender, age=age, gate_width=0)
    with pytest.raises(ValueError, match=r"`age_weight` must be in \[0, 1\]"):
        with_descriptor_readouts(base, descriptor, gender=gender, age=age, age_weight=1.5)
