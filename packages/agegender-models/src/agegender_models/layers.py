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
