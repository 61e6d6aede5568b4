"""Serializable layers that travel inside saved models."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

PACKAGE = "agegender_models"

# mode -> what it does to raw 0-255 RGB
PREPROCESSING_MODES = {
    "unit": "x / 255 -> [0, 1] (Model A)",
    "tf": "x / 127.5 - 1 -> [-1, 1] (MobileNet; keras.applications mode 'tf')",
    "caffe": "RGB->BGR, minus ImageNet BGR means, no scaling (ResNet50; mode 'caffe')",
    "torch": "x / 255, minus ImageNet mean, divided by std (mode 'torch')",
    "raw": "float cast only (the backbone normalises internally)",
}
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Preprocess(keras.layers.Layer):
    """Raw RGB 0-255 (uint8 or float, any dtype) -> what the backbone expects.

    Always computes in float32 (also under a mixed policy), so the ImageNet mean subtraction
    is not rounded to bfloat16; the next layer casts to its compute dtype.
    """

    def __init__(self, mode: str = "unit", **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if mode not in PREPROCESSING_MODES:
            raise ValueError(
                f"`mode` must be one of {sorted(PREPROCESSING_MODES)}. Received: mode={mode!r}"
            )
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if self.mode == "unit":
            return x / 255.0
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype="float32")
        if self.mode == "torch":
            x = x / 255.0
            mean = ops.convert_to_tensor(_TORCH_MEAN, dtype="float32")
            std = ops.convert_to_tensor(_TORCH_STD, dtype="float32")
            return (x - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config["mode"] = self.mode
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class BoundedAge(keras.layers.Layer):
    """Clips the age regression output to ``[min_age, max_age]`` years.

    Why a straight-through clip (forward: ``clip(x)``; backward: identity):

    * predictions can never leave the sane range (no "age 10705"), in training or serving;
    * unlike a plain clip, a prediction outside the range still gets the MAE gradient that
      pulls it back inside (a plain clip has zero gradient there: dead samples);
    * unlike a scaled sigmoid, the gradient is not squashed near the bounds (babies and
      centenarians are exactly where a sigmoid saturates) and the MAE step size stays the
      same in years over the whole range.

    Together with the age Dense layer's bias initialised at the dataset's mean age (~33 for
    UTKFace), training starts from the MAE-optimal constant neighbourhood instead of 0.
    Output is float32 also under mixed precision.
    """

    def __init__(self, min_age: float = 0.0, max_age: float = 120.0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if not (0 <= float(min_age) < float(max_age)):
            raise ValueError(
                "`min_age` must be >= 0 and below `max_age`. "
                f"Received: min_age={min_age}, max_age={max_age}"
            )
        self.min_age = float(min_age)
        self.max_age = float(max_age)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        clipped = ops.clip(x, self.min_age, self.max_age)
        return x + ops.stop_gradient(clipped - x)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)
        config.update(min_age=self.min_age, max_age=self.max_age)
        return config


class _Dequantizing:
    """What the int8-kernel layers share: their weights (codes, a scale and an offset per output
    channel, a bias) and the kernel ``codes * scale + offset``, computed in float32 (in bfloat16
    the offset and the sum would round by about one code step), then cast once to the layer's
    compute dtype.

    Two variables hold them: the codes, and ``params`` (3 x channels: scale, offset, bias), since
    loading a model creates every variable one by one (about 1 ms each here; the shipped default
    has 95 such layers). ``get_weights`` / ``set_weights`` keep the four arrays ``[codes, scale,
    offset, bias]``, and files saved with four variables a layer (before) load as they were."""

    def _add_quantized_weights(self, shape: tuple[int, ...]) -> None:
        channels = shape[-1]
        self.codes = self.add_weight(name="codes", shape=shape, dtype="int8", initializer="zeros",
                                     trainable=False)
        self.params = self.add_weight(name="params", shape=(3, channels), trainable=False,
                                      initializer=lambda shape, dtype=None: ops.concatenate(
                                          [ops.ones((1, channels)), ops.zeros((2, channels))]))

    @property
    def scale(self):
        return self.params[0]

    @property
    def offset(self):
        return self.params[1]

    @property
    def bias(self):
        return self.params[2]

    def get_weights(self):
        codes, params = (np.asarray(v.numpy()) for v in (self.codes, self.params))
        return [codes, params[0], params[1], params[2]]

    def set_weights(self, weights):
        codes, scale, offset, bias = weights
        self.codes.assign(np.asarray(codes, np.int8))
        self.params.assign(np.stack([np.asarray(v, np.float32) for v in (scale, offset, bias)]))

    def load_own_variables(self, store):
        if len(store.keys()) == 4:  # saved with codes, scale, offset and bias apart
            self.set_weights([store[str(i)] for i in range(4)])
        else:
            super().load_own_variables(store)

    def _kernel(self):
        kernel = ops.cast(self.codes, "float32") * ops.cast(self.scale, "float32")
        return ops.cast(kernel + ops.cast(self.offset, "float32"), self.compute_dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantizedConv2D(_Dequantizing, keras.layers.Layer):
    """A 2-D convolution whose kernel is kept as int8 codes with a scale and an offset per output
    channel (``kernel = codes * scale + offset``), dequantized when called: a quarter of a
    float32 kernel's size in a saved model. For pretrained weights stored that way (see
    :mod:`agegender_models.face_descriptor`); not trainable.
    """

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, padding: str = "same",
                 activation=None, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides = int(filters), int(kernel_size), int(strides)
        if padding not in ("same", "valid"):
            raise ValueError(f"`padding` must be 'same' or 'valid'. Received: padding={padding!r}")
        self.padding = padding
        self.activation = keras.activations.get(activation)
        self.trainable = False

    def build(self, input_shape):
        self._add_quantized_weights((self.kernel_size, self.kernel_size, int(input_shape[-1]),
                                     self.filters))

    def call(self, inputs):
        kernel = self._kernel()
        y = ops.conv(inputs, kernel, strides=self.strides, padding=self.padding)
        return self.activation(y + ops.cast(self.bias, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        def side(n):
            if n is None:
                return None
            return -(-n // self.strides) if self.padding == "same" else (n - self.kernel_size) // self.strides + 1
        return (input_shape[0], side(input_shape[1]), side(input_shape[2]), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                      padding=self.padding, activation=keras.activations.serialize(self.activation))
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantizedDense(_Dequantizing, keras.layers.Layer):
    """A dense layer whose kernel is kept as int8 codes with a scale and an offset per output
    unit, like :class:`QuantizedConv2D` (made by :func:`quantized_copy`); not trainable."""

    def __init__(self, units: int, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.activation = keras.activations.get(activation)
        self.trainable = False

    def build(self, input_shape):
        self._add_quantized_weights((int(input_shape[-1]), self.units))

    def call(self, inputs):
        kernel = self._kernel()
        return self.activation(ops.matmul(inputs, kernel) + ops.cast(self.bias, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, activation=keras.activations.serialize(self.activation))
        return config


QUANTIZED = (QuantizedConv2D, QuantizedDense)


def quantize_kernel(kernel):
    """int8 codes, scale and offset per output channel (last axis) spanning each channel's range:
    ``kernel ~= codes * scale + offset``, within half a step (``scale / 2``)."""
    flat = kernel.reshape(-1, kernel.shape[-1])
    low, high = flat.min(axis=0), flat.max(axis=0)
    scale = np.maximum(high - low, 1e-12) / 255
    codes = np.clip(np.round((kernel - low) / scale), 0, 255) - 128
    return codes.astype(np.int8), scale.astype(np.float32), (low + 128 * scale).astype(np.float32)


def _leaves(model: keras.Model) -> list:
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if not isinstance(layer, keras.Model)]


def _quantizable(layer, min_weights: int) -> bool:
    """A plain Dense, or a plain Conv2D that :class:`QuantizedConv2D` computes the same (square
    kernel, equal strides, no dilation or groups, channels last), with a kernel of
    at least ``min_weights`` weights. An activation is kept (folded_copy puts ReLU6 there)."""
    if type(layer) not in (keras.layers.Dense, keras.layers.Conv2D):
        return False
    if int(np.prod(layer.kernel.shape)) < min_weights:
        return False
    if type(layer) is keras.layers.Dense:
        return True
    config = layer.get_config()
    kernel, strides = tuple(config["kernel_size"]), tuple(config["strides"])
    return (kernel[0] == kernel[1] and strides[0] == strides[1]
            and tuple(config["dilation_rate"]) == (1, 1) and config.get("groups", 1) == 1
            and config["padding"] in ("same", "valid")
            and config.get("data_format", "channels_last") == "channels_last")


def quantized_copy(model: keras.Model, *, min_weights: int = 16384) -> keras.Model:
    """A copy of ``model`` whose plain ``Conv2D`` and ``Dense`` layers are :class:`QuantizedConv2D`
    and :class:`QuantizedDense` (int8 kernels, a scale and an offset per output channel): a
    quarter of their float32 size in a saved model, for a model to ship (they hold 97 % of a
    MobileNetV2 model's weights). Kernels of fewer than ``min_weights`` weights stay float32:
    in MobileNetV2 the first blocks' small kernels cause most of the rounding's effect (with the
    default, 3 % of its kernel weights stay float32 and the mean change of the predicted age on
    300 faces falls from 0.28 to 0.08 years, of P(female) from 0.011 to 0.004).
    Outputs change by the rounding (check them on real images before shipping); the copy is
    frozen (``trainable = False``). Other layers are copied unchanged; :func:`dequantized_copy`
    undoes the storage."""

    def compact(layer):
        if not _quantizable(layer, min_weights):
            return layer.__class__.from_config(layer.get_config())
        if isinstance(layer, keras.layers.Dense):
            return QuantizedDense(layer.units, layer.activation, name=layer.name,
                                  dtype=layer.dtype_policy)
        return QuantizedConv2D(layer.filters, layer.kernel_size[0], strides=layer.strides[0],
                               padding=layer.padding, activation=layer.activation,
                               name=layer.name, dtype=layer.dtype_policy)

    copy = keras.models.clone_model(model, clone_function=compact, recursive=True)
    for source, target in zip(_leaves(model), _leaves(copy), strict=True):
        if isinstance(target, QUANTIZED) and not isinstance(source, QUANTIZED):
            kernel = keras.ops.convert_to_numpy(source.kernel)
            bias = (keras.ops.convert_to_numpy(source.bias) if source.use_bias
                    else np.zeros(kernel.shape[-1], np.float32))
            target.set_weights([*quantize_kernel(kernel), bias])
        elif source.weights:
            target.set_weights(source.get_weights())
    copy.trainable = False
    return copy


def dequantized_copy(model: keras.Model) -> keras.Model:
    """``model`` itself if it has no :class:`QuantizedConv2D` or :class:`QuantizedDense`; else a
    copy where each is a plain ``Conv2D`` or ``Dense`` holding its float32 kernel (the same
    outputs). What converters get: TFLite does not
    fold the dequantization of large kernels, and runs convolutions whose kernels are computed at
    run time without its accelerated (XNNPACK) kernels, about 3x slower."""
    if not any(isinstance(layer, QUANTIZED) for layer in _leaves(model)):
        return model

    def plain(layer):
        if isinstance(layer, QuantizedConv2D):
            return keras.layers.Conv2D(layer.filters, layer.kernel_size, strides=layer.strides,
                                       padding=layer.padding, activation=layer.activation,
                                       name=layer.name, trainable=False, dtype=layer.dtype_policy)
        if isinstance(layer, QuantizedDense):
            return keras.layers.Dense(layer.units, layer.activation, name=layer.name,
                                      trainable=False, dtype=layer.dtype_policy)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=plain, recursive=True)
    for source, target in zip(_leaves(model), _leaves(copy), strict=True):
        if isinstance(source, QUANTIZED):
            codes, scale, offset, bias = source.get_weights()
            target.set_weights([codes.astype(np.float32) * scale + offset, bias])
        elif source.weights:
            target.set_weights(source.get_weights())
    return copy


def _only_user(layer):
    """The one layer that takes ``layer``'s output, when ``layer`` is called once and its output
    goes to exactly one call of one layer; else None."""
    if len(layer._inbound_nodes) != 1 or len(layer._outbound_nodes) != 1:
        return None
    return layer._outbound_nodes[0].operation


def _folds(model: keras.Model) -> dict[int, tuple]:
    """id(convolution) -> (convolution, its BatchNormalization, the ReLU after it or None), for
    every plain Conv2D / DepthwiseConv2D (no activation, channels last) whose output only a
    BatchNormalization over the channels reads."""
    # a tensor that is some (nested) model's output must keep its value: nothing is folded into it
    models = [model, *(la for la in model._flatten_layers(recursive=True) if isinstance(la, keras.Model))]
    outputs = {id(tensor) for m in models for tensor in keras.tree.flatten(m.outputs)}
    found = {}
    for conv in _leaves(model):
        if type(conv) not in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D):
            continue
        config = conv.get_config()
        if config["activation"] != "linear" or config.get("data_format") == "channels_first":
            continue
        bn = _only_user(conv)
        if (type(bn) is not keras.layers.BatchNormalization or len(bn._inbound_nodes) != 1
                or id(conv.output) in outputs):
            continue
        if bn.axis not in (-1, len(conv.output.shape) - 1):
            continue
        relu = _only_user(bn)
        fusable = (type(relu) is keras.layers.ReLU and len(relu._inbound_nodes) == 1
                   and id(bn.output) not in outputs
                   and relu.max_value in (None, 6.0) and float(relu.negative_slope) == 0.0
                   and float(relu.threshold) == 0.0)
        found[id(conv)] = (conv, bn, relu if fusable else None)
    return found


def _folded_weights(conv, bn) -> list[np.ndarray]:
    """``conv``'s kernel and bias with ``bn`` (inference statistics) folded in."""
    kernel = keras.ops.convert_to_numpy(conv.kernel)
    dtype, kernel = kernel.dtype, kernel.astype(np.float64)
    depthwise = isinstance(conv, keras.layers.DepthwiseConv2D)
    # DepthwiseConv2D's output channel c * multiplier + m comes from kernel[..., c, m]
    shape = kernel.shape[-2:] if depthwise else kernel.shape[-1:]
    channels = int(np.prod(shape))

    def weight(variable, default):
        return (np.full(channels, default) if variable is None
                else keras.ops.convert_to_numpy(variable).astype(np.float64))

    bias = weight(conv.bias if conv.use_bias else None, 0.0)
    gamma, beta = weight(bn.gamma, 1.0), weight(bn.beta, 0.0)
    mean, variance = weight(bn.moving_mean, 0.0), weight(bn.moving_variance, 1.0)
    scale = gamma / np.sqrt(variance + bn.epsilon)
    return [(kernel * scale.reshape(shape)).astype(dtype),
            ((bias - mean) * scale + beta).astype(dtype)]


def folded_copy(model: keras.Model) -> keras.Model:
    """A copy of ``model`` for inference with each BatchNormalization that follows a plain
    ``Conv2D`` or ``DepthwiseConv2D`` folded into that convolution's kernel and bias, and a
    ReLU (or ReLU6) that follows it made the convolution's activation: the same outputs (to
    float rounding, about 1e-5), fewer layers and weights to build when it is loaded (MobileNetV2:
    154 layers to 67, 260 weight arrays to 104). BatchNormalization is applied with its moving
    statistics, as at inference: the copy is not for training (it is frozen). Nested models are
    folded too; layers that are not part of such a chain are copied unchanged."""
    folds = _folds(model)
    removed = {id(layer) for _, bn, relu in folds.values() for layer in (bn, relu) if layer}
    pairs = []  # (copy's layer, the original it takes its weights from, its BatchNormalization)

    def clone(layer):
        if id(layer) in removed:
            return _Skipped()
        config = layer.get_config()
        fold = folds.get(id(layer))
        if fold is not None:
            config.update(use_bias=True, activation="linear" if fold[2] is None
                          else ("relu6" if fold[2].max_value == 6.0 else "relu"))
        copy = layer.__class__.from_config(config)
        pairs.append((copy, layer, fold[1] if fold else None))
        return copy

    def call(layer, *args, **kwargs):
        return args[0] if isinstance(layer, _Skipped) else layer(*args, **kwargs)

    copy = keras.models.clone_model(model, clone_function=clone, call_function=call, recursive=True)
    for target, source, bn in pairs:
        if bn is not None:
            target.set_weights(_folded_weights(source, bn))
        elif source.weights:
            target.set_weights(source.get_weights())
    copy.trainable = False
    return copy


class _Skipped:
    """What :func:`folded_copy` clones a folded-away layer into: its call passes the input on."""
