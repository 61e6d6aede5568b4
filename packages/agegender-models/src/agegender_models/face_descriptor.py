"""dlib's face descriptor network in Keras, and a model blended with read-outs of its features.

Our backbones learn faces from 4,250 UTKFace chips. dlib's face recognition network (Davis King;
"a version of ResNet-34 with a few layers removed and half the filters", 150x150 input, 99.38 %
on LFW) learned them from about 3 million faces of 7,485 people, to tell people apart. A linear
read-out of its pooled features tells gender apart too, and holds up on photos unlike UTKFace's
far better than our own networks do (results/NOTEBOOK.md, "A face descriptor for gender and age"). The
shipped default model averages the two, trusting the descriptor more as the predicted age grows
(:func:`with_descriptor_readouts`, which also blends in an age read-out).

The weights are those of face-api.js, which ported dlib's model to TensorFlow.js and stores each
tensor as uint8 codes with a scale and an offset; ``@vladmandic/face-api`` (MIT; npm) carries the
files in its ``model/`` folder::

    npm pack @vladmandic/face-api@1.7.15 && tar xzf vladmandic-face-api-1.7.15.tgz
    # package/model/face_recognition_model-weights_manifest.json and face_recognition_model.bin

:func:`face_descriptor_model` builds the network from those two files. dlib's author released the
model into the public domain; it was trained in part on the VGG Face and FaceScrub research
datasets. The kernels stay 8-bit inside the model (int8 codes with a scale and an offset per
channel, :class:`QuantizedConv2D`), so the network adds 5.7 MB to a ``.keras`` file instead of
22.6 MB.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from keras import layers

from .layers import BoundedAge, QuantizedConv2D, quantize_kernel

MANIFEST = "face_recognition_model-weights_manifest.json"
DESCRIPTOR_INPUT = 150
FEATURES = 256
# face-api.js' normalisation of RGB 0-255 input: minus these means, then / 255
MEAN_RGB = (122.782, 117.001, 104.298)
# (block name, filters, downsampling) in the order the network runs them
_BLOCKS = (
    ("conv32_1", 32, False), ("conv32_2", 32, False), ("conv32_3", 32, False),
    ("conv64_down", 64, True), ("conv64_1", 64, False), ("conv64_2", 64, False),
    ("conv64_3", 64, False), ("conv128_down", 128, True), ("conv128_1", 128, False),
    ("conv128_2", 128, False), ("conv256_down", 256, True), ("conv256_1", 256, False),
    ("conv256_2", 256, False), ("conv256_down_out", 256, True),
)


class DescriptorWeightsError(ValueError):
    """The face-api.js weight files are missing, damaged or not the face recognition model's."""


def read_face_api_weights(directory: str | Path) -> dict[str, tuple[np.ndarray, float, float]]:
    """``{tensor name: (uint8 codes, scale, offset)}`` from a face-api.js model folder (value =
    codes * scale + offset; float32 tensors come back with scale 1 and offset 0 as float32)."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    try:
        groups = json.loads(manifest_path.read_text(encoding="utf-8"))
        group = groups[0]
        data = b"".join((directory / p).read_bytes() for p in group["paths"])
    except FileNotFoundError as exc:
        raise DescriptorWeightsError(
            f"{exc.filename}: not found; place face-api.js' face recognition model files "
            f"({MANIFEST} and face_recognition_model.bin, from the npm package "
            "@vladmandic/face-api, folder model/) there") from None
    except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise DescriptorWeightsError(f"{manifest_path}: not a face-api.js weights manifest "
                                     f"({type(exc).__name__}: {exc})") from None
    out: dict[str, tuple[np.ndarray, float, float]] = {}
    offset = 0
    for spec in group["weights"]:
        shape = tuple(spec["shape"])
        count = int(np.prod(shape))
        quant = spec.get("quantization")
        if quant and quant.get("dtype") == "uint8":
            nbytes, dtype, scale, base = count, np.uint8, float(quant["scale"]), float(quant["min"])
        elif not quant and spec.get("dtype") == "float32":
            nbytes, dtype, scale, base = 4 * count, np.float32, 1.0, 0.0
        else:
            raise DescriptorWeightsError(f"{manifest_path}: tensor {spec.get('name')!r} has an "
                                         f"unsupported encoding {quant or spec.get('dtype')!r}")
        if offset + nbytes > len(data):
            raise DescriptorWeightsError(f"{manifest_path}: the weight file ends inside tensor "
                                         f"{spec['name']!r}")
        values = np.frombuffer(data, dtype, count, offset).reshape(shape)
        out[spec["name"]] = (values, scale, base)
        offset += nbytes
    if offset != len(data):
        raise DescriptorWeightsError(f"{manifest_path}: {len(data) - offset} bytes left over "
                                     "after the last tensor")
    missing = {"conv32_down/conv/filters", "fc"} - set(out)
    if missing:
        raise DescriptorWeightsError(f"{manifest_path}: not the face recognition model (no "
                                     f"{sorted(missing)})")
    return out


def _value(tensors, name: str) -> np.ndarray:
    codes, scale, base = tensors[name]
    return codes.astype(np.float32) * np.float32(scale) + np.float32(base)


def face_descriptor_model(weights_dir: str | Path, *, name: str = "face_descriptor") -> keras.Model:
    """dlib's network with face-api.js' weights: raw 0-255 RGB faces of 150x150 (aligned like a
    dlib or UTKFace chip) in, the 256 pooled features before its 128-D descriptor out."""
    tensors = read_face_api_weights(weights_dir)
    inputs = keras.Input((DESCRIPTOR_INPUT, DESCRIPTOR_INPUT, 3), name="image")
    mean = np.asarray(MEAN_RGB, np.float32)
    x = layers.Rescaling(1 / 255, offset=-mean / 255, name="normalize")(inputs)
    filled = []

    def conv(x, block: str, stride: int, relu: bool, padding: str = "same"):
        # each conv is followed by a per-channel scale (dlib's affine layer): folded in per
        # output channel, kernel = codes * (scale * s) + offset * s, bias = bias * s + t
        codes, k_scale, k_base = tensors[f"{block}/conv/filters"]
        s = _value(tensors, f"{block}/scale/weights")
        t = _value(tensors, f"{block}/scale/biases")
        bias = _value(tensors, f"{block}/conv/bias") * s + t
        if codes.dtype == np.uint8:
            quantized = ((codes.astype(np.int16) - 128).astype(np.int8), k_scale * s,
                         (k_base + 128 * k_scale) * s)
        else:  # a few tensors are stored as float32: 256 levels per output channel here too
            quantized = quantize_kernel(codes * s)
        layer = QuantizedConv2D(codes.shape[-1], codes.shape[0], strides=stride, padding=padding,
                                name=block.replace("/", "_"))
        y = layer(x)
        filled.append((layer, [quantized[0], quantized[1].astype(np.float32),
                               quantized[2].astype(np.float32), bias.astype(np.float32)]))
        return layers.ReLU()(y) if relu else y

    def block(x, name: str, filters: int, down: bool):
        y = conv(x, f"{name}/conv1", 2 if down else 1, True, "valid" if down else "same")
        y = conv(y, f"{name}/conv2", 1, False)
        if down:
            x = layers.AveragePooling2D(2, 2, "valid")(x)
            if x.shape[1] != y.shape[1]:  # a 3x3 stride-2 'valid' conv of an even side
                y = layers.ZeroPadding2D(((0, 1), (0, 1)))(y)
            if x.shape[-1] != filters:  # the shortcut's new channels are zeros
                c = x.shape[-1]
                widen = layers.Conv2D(filters, 1, use_bias=False, trainable=False,
                                      name=f"{name}_shortcut")
                x = widen(x)
                filled.append((widen, [np.eye(c, filters, dtype=np.float32)[None, None]]))
        return layers.ReLU()(layers.Add()([x, y]))

    x = conv(x, "conv32_down", 2, True, "valid")
    x = layers.MaxPooling2D(3, 2, "valid")(x)
    for block_name, filters, down in _BLOCKS:
        x = block(x, block_name, filters, down)
    x = layers.GlobalAveragePooling2D(name="features")(x)
    model = keras.Model(inputs, x, name=name)
    for layer, values in filled:
        layer.set_weights(values)
    model.trainable = False
    return model


def with_descriptor_readouts(model: keras.Model, descriptor: keras.Model, *,
                             gender: tuple[Sequence[float], float],
                             age: Sequence[tuple[np.ndarray, np.ndarray]],
                             gate_age: float = 10.0, gate_width: float = 4.0, age_weight: float = 0.4,
                             name: str | None = None) -> keras.Model:
    """``model`` blended with read-outs of ``descriptor``'s features: same input and outputs
    (``gender``, ``age``), both networks run on each face.

    * gender: ``p = p_model + trust * (p_descriptor - p_model)``, ``p_descriptor =
      sigmoid(features . coef + intercept)`` (``gender=(coef, intercept)``: a logistic read-out)
      and ``trust = sigmoid((age_model - gate_age) / gate_width)``: dlib's network learned
      adults' faces, and young children's gender is read better by ``model``;
    * age: ``age_model + age_weight * (age_descriptor - age_model)``, clipped to 0-120 years;
      ``age_descriptor`` is a small dense network on the features, given as its layers' ``(kernel,
      bias)`` pairs (ReLU between them, the last one linear with one output; one pair: linear).

    The read-outs are fitted on the descriptor's features of the training images (``agegender
    fit-readouts``); the defaults are the values chosen on our validation split.
    """
    width = descriptor.output_shape[-1]
    coef = np.asarray(gender[0], np.float32).reshape(-1, 1)
    if coef.shape[0] != width:
        raise ValueError(f"`gender` must hold {width} coefficients. Received: {coef.shape[0]}")
    stack, fan_in = [], width
    for kernel, bias in age:
        kernel, bias = np.asarray(kernel, np.float32), np.asarray(bias, np.float32).reshape(-1)
        if kernel.ndim == 1:
            kernel = kernel.reshape(-1, 1)
        if kernel.shape[0] != fan_in or kernel.shape[1] != bias.shape[0]:
            raise ValueError(f"`age` layer {len(stack)} must map {fan_in} inputs with a bias per "
                             f"output. Received: kernel {kernel.shape}, bias {bias.shape}")
        stack.append((kernel, bias))
        fan_in = kernel.shape[1]
    if not stack or fan_in != 1:
        raise ValueError(f"`age` must end in one output. Received: {fan_in if stack else 'no layers'}")
    if not gate_width > 0:
        raise ValueError(f"`gate_width` must be > 0. Received: gate_width={gate_width!r}")
    if not 0 <= age_weight <= 1:
        raise ValueError(f"`age_weight` must be in [0, 1]. Received: age_weight={age_weight!r}")
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    base = model(inputs)
    x = inputs
    if tuple(model.input_shape[1:3]) != (DESCRIPTOR_INPUT, DESCRIPTOR_INPUT):
        # ops, not keras.layers.Resizing (whose call passes training=True on; see ensemble())
        x = keras.ops.image.resize(x, (DESCRIPTOR_INPUT, DESCRIPTOR_INPUT), interpolation="bilinear")
    features = descriptor(x)
    fixed = []

    def dense(units: int, values, activation=None, name=None):
        layer = layers.Dense(units, activation=activation, name=name)
        fixed.append((layer, values))
        return layer

    p_descriptor = dense(1, (coef, np.asarray([gender[1]], np.float32).reshape(1)), "sigmoid",
                         "descriptor_gender")(features)
    age_descriptor = features
    for k, (kernel, bias) in enumerate(stack):
        last = k == len(stack) - 1
        age_descriptor = dense(kernel.shape[1], (kernel, bias), None if last else "relu",
                               "descriptor_age" if last else f"descriptor_age_hidden{k}")(age_descriptor)
    trust = dense(1, (np.asarray([[1 / gate_width]], np.float32),
                      np.asarray([-gate_age / gate_width], np.float32)),
                  "sigmoid", "descriptor_trust")(base["age"])
    for layer, values in fixed:
        layer.set_weights(list(values))
        layer.trainable = False
    gender_out = layers.Add(name="gender", dtype="float32")([
        base["gender"], layers.Multiply()([trust, layers.Subtract()([p_descriptor, base["gender"]])])])
    blended = layers.Add()([base["age"], layers.Rescaling(age_weight)(
        layers.Subtract()([age_descriptor, base["age"]]))])
    age_out = BoundedAge(0.0, 120.0, name="age")(blended)
    return keras.Model(inputs, {"gender": gender_out, "age": age_out},
                       name=name or f"{model.name}_descriptor")
