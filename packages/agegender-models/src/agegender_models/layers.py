"""Serializable layers that travel inside saved models."""

from __future__ import annotations

import keras
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


@keras.saving.register_keras_serializable(package=PACKAGE)
class QuantizedConv2D(keras.layers.Layer):
    """A 2-D convolution whose kernel is kept as int8 codes with a scale and an offset per output
    channel (``kernel = codes * scale + offset``), dequantized when called: a quarter of a
    float32 kernel's size in a saved model. For pretrained weights stored that way (see
    :mod:`agegender_models.face_descriptor`); not trainable.
    """

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, padding: str = "same",
                 **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides = int(filters), int(kernel_size), int(strides)
        if padding not in ("same", "valid"):
            raise ValueError(f"`padding` must be 'same' or 'valid'. Received: padding={padding!r}")
        self.padding = padding
        self.trainable = False

    def build(self, input_shape):
        shape = (self.kernel_size, self.kernel_size, int(input_shape[-1]), self.filters)
        self.codes = self.add_weight(name="codes", shape=shape, dtype="int8", initializer="zeros",
                                     trainable=False)
        self.scale = self.add_weight(name="scale", shape=(self.filters,), initializer="ones",
                                     trainable=False)
        self.offset = self.add_weight(name="offset", shape=(self.filters,), initializer="zeros",
                                      trainable=False)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros",
                                    trainable=False)

    def call(self, inputs):
        kernel = ops.cast(self.codes, self.compute_dtype) * ops.cast(self.scale, self.compute_dtype)
        kernel = kernel + ops.cast(self.offset, self.compute_dtype)
        y = ops.conv(inputs, kernel, strides=self.strides, padding=self.padding)
        return y + ops.cast(self.bias, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        def side(n):
            if n is None:
                return None
            return -(-n // self.strides) if self.padding == "same" else (n - self.kernel_size) // self.strides + 1
        return (input_shape[0], side(input_shape[1]), side(input_shape[2]), self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size, strides=self.strides,
                      padding=self.padding)
        return config


def dequantized_copy(model: keras.Model) -> keras.Model:
    """``model`` itself if it has no :class:`QuantizedConv2D`; else a copy where each is a plain
    ``Conv2D`` holding its float32 kernel (the same outputs). What converters get: TFLite does not
    fold the dequantization of large kernels, and runs convolutions whose kernels are computed at
    run time without its accelerated (XNNPACK) kernels, about 3x slower."""
    import numpy as np

    def leaves(m: keras.Model) -> list:
        return [layer for layer in m._flatten_layers(include_self=False, recursive=True)
                if not isinstance(layer, keras.Model)]

    if not any(isinstance(layer, QuantizedConv2D) for layer in leaves(model)):
        return model

    def plain(layer):
        if isinstance(layer, QuantizedConv2D):
            return keras.layers.Conv2D(layer.filters, layer.kernel_size, strides=layer.strides,
                                       padding=layer.padding, name=layer.name, trainable=False)
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=plain, recursive=True)
    for source, target in zip(leaves(model), leaves(copy), strict=True):
        if isinstance(source, QuantizedConv2D):
            codes, scale, offset, bias = source.get_weights()
            target.set_weights([codes.astype(np.float32) * scale + offset, bias])
        elif source.weights:
            target.set_weights(source.get_weights())
    return copy
