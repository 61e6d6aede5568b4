"""``create_model``, ``compile_model`` and the transfer-learning helpers.

``create_model`` does **not** compile: it returns an uncompiled functional ``keras.Model``
(so a caller can freeze layers or pick a policy first); call :func:`compile_model`.

The model takes raw RGB 0-255 images (uint8 or float; cast inside) of ``input_shape`` and
returns a dict with exactly two outputs, both float32 of shape ``(batch, 1)``:

* ``gender``: sigmoid probability of *female* (UTKFace gender 1);
* ``age``: years, clipped to ``age_range`` (see :class:`~agegender_models.layers.BoundedAge`).

Layer names: ``image`` (input) -> ``preprocess`` -> ``backbone`` (a nested model) -> pooling
(``flatten`` / ``avg_pool`` / ``max_pool``) -> ``dense1``, ``dropout1``, ... -> ``gender`` and
``age_dense`` -> ``age``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import keras
from keras import layers

from ._registry import get_backbone
from .layers import PREPROCESSING_MODES, BoundedAge, Preprocess
from .precision import check_precision, precision_scope
from .weights import find_imagenet_weights, load_backbone_weights

HEADS = ("flatten", "avg", "max")
DEFAULT_AGE_RANGE = (0.0, 120.0)
# UTKFace's mean age; the age Dense bias starts here so MAE training starts near its optimum
DEFAULT_AGE_BIAS = 33.0
# BatchNorm momentum of a backbone trained from scratch (see create_model)
FROM_SCRATCH_BN_MOMENTUM = 0.99
_UNSET: Any = object()


def _validate_input_shape(input_shape, min_size: int) -> tuple[int, int, int]:
    if (
        not isinstance(input_shape, Sequence)
        or len(input_shape) != 3
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in input_shape)
    ):
        raise ValueError(
            "`input_shape` must be a (height, width, 3) tuple of ints. "
            f"Received: input_shape={input_shape!r}"
        )
    h, w, c = input_shape
    if c != 3:
        raise ValueError(
            f"`input_shape` must have 3 (RGB) channels. Received: input_shape={tuple(input_shape)}"
        )
    if h < min_size or w < min_size:
        raise ValueError(
            f"`input_shape` is too small for this backbone: height and width must be at least "
            f"{min_size}. Received: input_shape={tuple(input_shape)}"
        )
    return int(h), int(w), int(c)


def _check_weights(weights) -> None:
    if weights is not None and not isinstance(weights, str | os.PathLike):
        raise ValueError(
            "`weights` must be None, 'imagenet' or a path to a weights file. "
            f"Received: weights={weights!r}"
        )


def _check_trainable_layers(trainable_layers) -> None:
    if trainable_layers is not None and (
        not isinstance(trainable_layers, int) or isinstance(trainable_layers, bool)
        or trainable_layers < 0
    ):
        raise ValueError(
            "`trainable_layers` must be None or a non-negative int. "
            f"Received: trainable_layers={trainable_layers!r}"
        )


def _resolve_head(cfg: dict, head, dense, dropout) -> tuple[str, tuple[int, ...], float]:
    """``head``, ``dense`` and ``dropout``, each checked after its backbone default is filled in."""
    head = cfg["head"] if head is None else head
    if head not in HEADS:
        raise ValueError(f"`head` must be one of {HEADS}. Received: head={head!r}")
    dense = tuple(cfg["dense"] if dense is None else dense)
    if not all(isinstance(u, int) and not isinstance(u, bool) and u > 0 for u in dense):
        raise ValueError(f"`dense` must be a sequence of positive ints. Received: dense={dense!r}")
    dropout = float(cfg["dropout"] if dropout is None else dropout)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
    return head, dense, dropout


def _check_age(age_range, age_bias) -> None:
    if (
        not isinstance(age_range, Sequence) or len(age_range) != 2
        or not 0 <= age_range[0] < age_range[1]
    ):
        raise ValueError(
            f"`age_range` must be (min, max) with 0 <= min < max. Received: age_range={age_range!r}"
        )
    if not age_range[0] <= age_bias <= age_range[1]:
        raise ValueError(
            f"`age_bias` must lie inside age_range={tuple(age_range)}. Received: age_bias={age_bias!r}"
        )


@dataclasses.dataclass(frozen=True)
class _ModelArgs:
    """``create_model``'s arguments after validation, with the backbone's defaults filled in."""

    shape: tuple[int, int, int]
    weights_path: str | None  # resolved: an existing file, or None for random weights
    trainable_layers: int | None
    head: str
    dense: tuple[int, ...]
    dropout: float
    bn_frozen: bool


def _resolve_args(backbone: str, cfg: dict, *, input_shape, weights, trainable_layers, head,
                  dense, dropout, age_range, age_bias, precision) -> _ModelArgs:
    """Validate every argument (first the shape, last the weights file) before anything is built;
    ``_UNSET``/``None`` take the backbone's defaults."""
    shape = _validate_input_shape(
        cfg["input_shape"] if input_shape is None else input_shape, int(cfg["min_size"])
    )
    if weights is _UNSET:
        weights = cfg["weights"]
        # an "imagenet" default must not break users who only want the architecture offline:
        # it is still an error if the file is missing (explicit beats silent random init)
    _check_weights(weights)
    if trainable_layers is _UNSET:
        trainable_layers = cfg["trainable_layers"] if weights is not None else None
    _check_trainable_layers(trainable_layers)
    head, dense, dropout = _resolve_head(cfg, head, dense, dropout)
    _check_age(age_range, age_bias)
    if precision is not None:
        check_precision(precision)
    if cfg["preprocessing"] not in PREPROCESSING_MODES:
        raise ValueError(
            f"Backbone {backbone!r} declares an unknown preprocessing mode. "
            f"Received: preprocessing={cfg['preprocessing']!r}"
        )
    # resolve weights before building anything: a missing file fails fast
    if weights == "imagenet":
        weights_path = find_imagenet_weights(backbone, tuple(cfg["imagenet_files"]), shape)
    else:
        weights_path = None if weights is None else os.fspath(weights)
    # BatchNorm of a keras.applications backbone stays in inference mode when fine-tuning
    # (pretrained weights or a partly frozen backbone); trained from scratch, it must learn
    bn_frozen = bool(cfg["bn_inference"]) and (weights_path is not None or trainable_layers is not None)
    return _ModelArgs(shape, weights_path, trainable_layers, head, dense, dropout, bn_frozen)


def _build_backbone(spec, backbone: str, args: _ModelArgs) -> keras.Model:
    """The backbone model, with its weights loaded (or BatchNorm set up for training from
    scratch); call under the model's precision scope."""
    features = spec.fn(input_shape=args.shape, name="backbone")
    if not isinstance(features, keras.Model):
        raise TypeError(
            f"Backbone entry point {backbone!r} must return a keras.Model. "
            f"Received: {type(features).__name__}"
        )
    if args.trainable_layers is not None and args.trainable_layers > len(features.layers):
        raise ValueError(
            f"`trainable_layers` is larger than backbone {backbone!r}, which has "
            f"{len(features.layers)} layers. Received: trainable_layers={args.trainable_layers}"
        )
    if args.weights_path is not None:
        load_backbone_weights(features, args.weights_path, backbone)
    elif not args.bn_frozen:
        # Trained from scratch, BatchNorm's moving statistics must catch up with weights that
        # change fast. keras.applications uses momentum 0.999 (made for ImageNet-length
        # runs): after ~1,200 steps on UTKFace, MobileNetV3Small's inference-mode features
        # were still constant across images (std 2e-7 vs 0.39 with batch statistics) and it
        # predicted one age for every face. Keras' default 0.99 follows within an epoch.
        for layer in features.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = min(layer.momentum, FROM_SCRATCH_BN_MOMENTUM)
    return features


def _build_heads(x, args: _ModelArgs, age_range, age_bias) -> dict:
    """Backbone features -> pooling, dense layers and the ``gender`` and ``age`` outputs."""
    if len(x.shape) == 4:
        pool = {
            "flatten": layers.Flatten(name="flatten"),
            "avg": layers.GlobalAveragePooling2D(name="avg_pool"),
            "max": layers.GlobalMaxPooling2D(name="max_pool"),
        }[args.head]
        x = pool(x)
    for i, units in enumerate(args.dense, start=1):
        x = layers.Dense(units, activation="relu", name=f"dense{i}")(x)
        if args.dropout > 0:
            x = layers.Dropout(args.dropout, name=f"dropout{i}")(x)
    gender = layers.Dense(1, activation="sigmoid", dtype="float32", name="gender")(x)
    age = layers.Dense(
        1,
        dtype="float32",
        bias_initializer=keras.initializers.Constant(float(age_bias)),
        name="age_dense",
    )(x)
    age = BoundedAge(age_range[0], age_range[1], name="age")(age)
    return {"gender": gender, "age": age}


def create_model(
    backbone: str = "custom_cnn",
    *,
    input_shape: tuple[int, int, int] | None = None,
    weights: str | os.PathLike | None = _UNSET,
    trainable_layers: int | None = _UNSET,
    head: str | None = None,
    dense: Sequence[int] | None = None,
    dropout: float | None = None,
    age_range: tuple[float, float] = DEFAULT_AGE_RANGE,
    age_bias: float = DEFAULT_AGE_BIAS,
    precision: str | None = None,
    name: str | None = None,
) -> keras.Model:
    """Build an (uncompiled) age + gender model on a registered backbone.

    Args:
        backbone: a name from :func:`list_backbones`.
        input_shape: ``(H, W, 3)``; default: the backbone's (128x128 for the built-ins).
        weights: ``None`` (random), ``"imagenet"`` (searched offline, see
            :mod:`agegender_models.weights`) or a path to a backbone weights file.
            Default: the backbone's (``None`` for ``custom_cnn``, ``"imagenet"`` otherwise).
        trainable_layers: ``None`` = whole backbone trainable; ``N`` = only its last ``N``
            layers (``0`` = frozen). Default: the backbone's (30 for ``resnet50``), except
            that with ``weights=None`` the default is ``None`` (random weights must train).
        head: pooling between backbone and dense layers: ``"flatten"``, ``"avg"``, ``"max"``.
        dense: widths of the shared dense layers (each followed by ReLU and dropout).
        dropout: dropout rate after each dense layer, in ``[0, 1)``.
        age_range: ``(min, max)`` years the age output is clipped to.
        age_bias: initial bias of the age output (the training set's mean age).
        precision: ``"float32"``, ``"mixed_bfloat16"`` or ``"auto"`` for this model only
            (``"auto"`` times training steps of this backbone at this size in both, once per
            machine: see :func:`~agegender_models.precision.choose_precision`); ``None`` uses the global
            policy (see :func:`set_precision`). Outputs stay float32.
        name: model name; default ``"agegender_<backbone>"``.

    Raises:
        ValueError: unknown backbone or invalid argument (the message names it).
        WeightsNotFoundError: ``"imagenet"`` weights are not on disk / a path does not exist.
        WeightsMismatchError: the weights file belongs to another architecture.
    """
    spec = get_backbone(backbone)
    cfg = spec.cfg()
    args = _resolve_args(
        backbone, cfg, input_shape=input_shape, weights=weights, trainable_layers=trainable_layers,
        head=head, dense=dense, dropout=dropout, age_range=age_range, age_bias=age_bias,
        precision=precision,
    )
    with precision_scope(precision, backbone=backbone, image_size=args.shape[0]):
        features = _build_backbone(spec, backbone, args)
        inputs = keras.Input(shape=args.shape, name="image")
        x = Preprocess(cfg["preprocessing"], name="preprocess")(inputs)
        # keras.applications backbones are called with training=False (the documented
        # transfer-learning idiom), but Keras 3.15's Functional.call overrides that stored
        # argument with the outer `training` during fit; what actually keeps BatchNorm in
        # inference mode is set_trainable freezing every BatchNorm layer (tested).
        x = features(x, training=False) if args.bn_frozen else features(x)
        outputs = _build_heads(x, args, age_range, age_bias)
        model = keras.Model(inputs, outputs, name=name or f"agegender_{backbone}")
    set_trainable(model, args.trainable_layers, freeze_batchnorm=args.bn_frozen)
    return model


def _backbone_of(model: keras.Model) -> keras.Model:
    try:
        return model.get_layer("backbone")
    except ValueError:
        raise ValueError(
            f"Model {model.name!r} has no layer named 'backbone'; "
            "was it built by agegender_models.create_model?"
        ) from None


def set_trainable(
    model: keras.Model, trainable_layers: int | None, *, freeze_batchnorm: bool = True
) -> keras.Model:
    """Make only the last ``trainable_layers`` layers of the backbone trainable.

    ``None`` unfreezes the whole backbone, ``0`` freezes it all. The preprocessing layer has
    no weights; the dense layers and heads after the backbone are always trainable.
    With ``freeze_batchnorm`` (default), every BatchNormalization layer of the backbone is
    frozen, which in Keras 3 also makes it run in inference mode (moving statistics are
    neither used from the batch nor updated) — including inside the trainable last N layers.
    (Calling the backbone with ``training=False`` alone is not enough in Keras 3.15: a
    functional model passes the outer ``training=True`` of ``fit`` on to nested models, so
    a trainable BatchNorm would update its statistics. Do not set ``model.trainable = True``
    by hand on a pretrained model; call this function.)
    Recompile the model afterwards for the change to take effect in ``fit``.
    Returns the model.
    """
    bb = _backbone_of(model)
    n_layers = len(bb.layers)
    if trainable_layers is not None and (
        not isinstance(trainable_layers, int) or isinstance(trainable_layers, bool)
        or not 0 <= trainable_layers <= n_layers
    ):
        raise ValueError(
            f"`trainable_layers` must be None or an int in [0, {n_layers}] (the backbone has "
            f"{n_layers} layers). Received: trainable_layers={trainable_layers!r}"
        )
    model.trainable = True
    bb.trainable = True
    first = 0 if trainable_layers is None else n_layers - trainable_layers
    for i, layer in enumerate(bb.layers):
        layer.trainable = i >= first
        if freeze_batchnorm and isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    return model


def freeze_backbone(model: keras.Model) -> keras.Model:
    """Freeze the whole backbone (feature extraction); the head stays trainable."""
    return set_trainable(model, 0)


def compile_model(
    model: keras.Model,
    *,
    learning_rate: float = 1e-3,
    loss_weights: dict[str, float] | None = None,
    optimizer: keras.optimizers.Optimizer | None = None,
    jit_compile: bool | str = "auto",
    steps_per_execution: int = 1,
) -> keras.Model:
    """Compile with the seed's setup: Adam, binary cross-entropy for ``gender``, MAE for
    ``age``; metrics accuracy (gender) and MAE (age). ``loss_weights`` e.g.
    ``{"gender": 1.0, "age": 0.1}``; default: equal weights, as the seed. Returns the model.

    In the log, ``age_loss`` (Keras' per-output loss tracker) and ``age_mae`` (the metric) are
    the same MAE when the dataset's length is known, as ``utkface_data.make_dataset``'s is.
    On a dataset of unknown length, Keras 3.15 counts one extra, empty step per epoch in the
    per-output loss trackers (not in ``loss`` or the metrics): ``age_loss`` then comes out
    smaller by ``steps / (steps + 1)``. The trackers also weight every batch alike, so a
    smaller last batch moves ``age_loss`` slightly; ``age_mae`` is the mean over images.
    """
    if not (isinstance(learning_rate, int | float) and learning_rate > 0):
        raise ValueError(f"`learning_rate` must be > 0. Received: learning_rate={learning_rate!r}")
    if loss_weights is not None and set(loss_weights) != {"gender", "age"}:
        raise ValueError(
            "`loss_weights` must have exactly the keys 'gender' and 'age'. "
            f"Received: loss_weights={loss_weights!r}"
        )
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(learning_rate=learning_rate),
        loss={"gender": "binary_crossentropy", "age": "mae"},
        loss_weights=loss_weights,
        metrics={"gender": ["accuracy"], "age": ["mae"]},
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return model


def _average_outputs(results: Sequence[dict]) -> dict:
    """``{"gender", "age"}``: each the float32 average of the results' outputs."""
    return {
        name: layers.Average(dtype="float32", name=name)([r[name] for r in results])
        for name in ("gender", "age")
    }


def flip_tta(model: keras.Model) -> keras.Model:
    """Test-time augmentation: a model that averages ``model``'s outputs on each image and on
    its mirror image (left-right flip). Same input (``image``) and outputs (``gender``, ``age``);
    twice the inference cost. Train the plain model; predict, evaluate or export this one.
    """
    inputs = keras.Input(shape=model.input_shape[1:], dtype=model.inputs[0].dtype, name="image")
    outputs = _average_outputs([model(inputs), model(keras.ops.flip(inputs, axis=2))])
    return keras.Model(inputs, outputs, name=f"{model.name}_flip_tta")


def _is_age_gender_model(model: Any) -> bool:
    return (isinstance(model, keras.Model) and isinstance(model.output, dict)
            and set(model.output) == {"gender", "age"})


def ensemble(models: Sequence[keras.Model], *, image_size: int | None = None) -> keras.Model:
    """A model that averages the outputs (P(female) and age) of several trained models.

    The ensemble takes raw RGB images of ``image_size`` (default: the largest member input).
    A member whose input size differs gets the ensemble's input resized again inside (bilinear,
    rounded to whole 0-255 values as the data pipeline's uint8 images are), so it sees an image
    resized twice rather than once as in training: close, not identical. Same outputs
    (``gender``, ``age``); the cost is the sum of the members'. Members may share a name (two
    runs of one backbone): each is wrapped as ``member{i}``. Combine with :func:`flip_tta` as
    ``flip_tta(ensemble(models))``.
    """
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"`models` must hold at least 2 models. Received: {len(models)}")
    shapes = []
    for i, model in enumerate(models):
        if not _is_age_gender_model(model):
            raise ValueError(
                f"`models[{i}]` must be an age/gender model (a dict of outputs 'gender' and "
                f"'age'). Received: {model!r}"
            )
        shape = model.input_shape[1:]
        if len(shape) != 3 or shape[-1] != 3 or shape[0] is None or shape[1] is None:
            raise ValueError(f"`models[{i}]` must take fixed-size RGB images. Received input "
                             f"shape {model.input_shape}")
        shapes.append(shape)
    if image_size is None:
        image_size = max(max(s[0], s[1]) for s in shapes)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"`image_size` must be a positive integer. Received: {image_size!r}")
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    results = []
    for i, (model, shape) in enumerate(zip(models, shapes, strict=True)):
        member_in = keras.Input(shape=shape, name="image")
        member = keras.Model(member_in, model(member_in), name=f"member{i}")
        x = inputs
        if tuple(shape[:2]) != (image_size, image_size):
            # ops, not keras.layers.Resizing: that layer's call defaults to training=True,
            # which Keras then passes on to the members' BatchNorm and Dropout layers
            x = keras.ops.image.resize(x, shape[:2], interpolation="bilinear")
            x = keras.ops.clip(keras.ops.round(x), 0.0, 255.0)
        results.append(member(x))
    return keras.Model(inputs, _average_outputs(results), name="ensemble")
