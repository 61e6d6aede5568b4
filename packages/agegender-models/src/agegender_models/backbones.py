"""Built-in backbones. Each is a small entry-point function plus a plain defaults dict.

An entry-point function builds the *architecture only* (random initialisation); weights
(``None``, ``"imagenet"`` or a path) are resolved and loaded by the factory, so that the
offline search path and its errors are the same for every backbone.
"""

from __future__ import annotations

import keras
from keras import layers

from ._registry import register_backbone

# --- Model A --------------------------------------------------------------------------

CUSTOM_CNN_FILTERS = (64, 128, 256, 512)
CUSTOM_CNN_CFG = {
    "input_shape": (128, 128, 3),
    "preprocessing": "unit",  # [0, 1], as the seed
    "weights": None,
    "trainable_layers": None,
    "min_size": 16,  # four 2x2 poolings
    "bn_inference": False,  # trained from scratch: BatchNorm learns its statistics
    "head": "flatten",
    "dense": (512, 512),
    "dropout": 0.5,
}


@register_backbone(default_cfg=CUSTOM_CNN_CFG)
def custom_cnn(*, input_shape, name="backbone"):
    """Model A's feature extractor: four blocks of Conv2D(3x3, same, relu) -> MaxPooling2D(2)
    -> BatchNormalization with 64/128/256/512 filters. The factory adds Flatten, two
    Dense(512) + Dropout and the two heads."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, filters in enumerate(CUSTOM_CNN_FILTERS, start=1):
        x = layers.Conv2D(
            filters, 3, padding="same", activation="relu", name=f"block{i}_conv"
        )(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
        x = layers.BatchNormalization(name=f"block{i}_bn")(x)
    return keras.Model(inputs, x, name=name)


# --- Model B --------------------------------------------------------------------------

RESNET50_CFG = {
    "input_shape": (128, 128, 3),
    "preprocessing": "caffe",  # keras.applications.resnet50.preprocess_input
    "weights": "imagenet",
    "imagenet_files": ("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",),
    "trainable_layers": 30,  # the seed: last 30 layers trainable, the rest frozen
    "min_size": 32,
    "bn_inference": True,
    "head": "flatten",
    "dense": (512,),
    "dropout": 0.5,
}


@register_backbone(default_cfg=RESNET50_CFG)
def resnet50(*, input_shape, name="backbone"):
    """Model B's feature extractor: keras.applications ResNet50 without its top."""
    return keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=tuple(input_shape), name=name
    )


# --- light backbones for CPUs ---------------------------------------------------------

MOBILENET_V2_CFG = {
    "input_shape": (128, 128, 3),
    "preprocessing": "tf",  # keras.applications.mobilenet_v2.preprocess_input
    "weights": "imagenet",
    # {rows} = input height if keras.applications ships that size (96..224), else 224
    "imagenet_files": (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5",
        "mobilenet_v2_1.0_224_no_top_tfslim.weights.h5",
    ),
    "trainable_layers": 30,
    "min_size": 32,
    "bn_inference": True,
    "head": "avg",
    "dense": (256,),
    "dropout": 0.3,
}


@register_backbone(default_cfg=MOBILENET_V2_CFG)
def mobilenet_v2(*, input_shape, name="backbone"):
    """keras.applications MobileNetV2 (alpha 1.0) without its top; 2.3 M parameters."""
    return keras.applications.MobileNetV2(
        alpha=1.0, include_top=False, weights=None, input_shape=tuple(input_shape), name=name
    )


# same conventions as MobileNetV2 ([-1, 1] scaling done by our layer instead of the Rescaling
# keras would put inside, frozen BatchNorm, avg-pool head); only the weights file differs
MOBILENET_V3_SMALL_CFG = {
    **MOBILENET_V2_CFG,
    "imagenet_files": ("weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",),
}


@register_backbone(default_cfg=MOBILENET_V3_SMALL_CFG)
def mobilenet_v3_small(*, input_shape, name="backbone"):
    """keras.applications MobileNetV3Small (alpha 1.0) without its top; 0.9 M parameters."""
    return keras.applications.MobileNetV3Small(
        alpha=1.0,
        include_top=False,
        weights=None,
        input_shape=tuple(input_shape),
        include_preprocessing=False,
        name=name,
    )
