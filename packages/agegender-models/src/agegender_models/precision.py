"""Mixed precision selection. Layers capture the policy when they are built."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import keras

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")


def _gpu_has_bf16() -> bool:
    try:
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
            if capability is not None and tuple(capability) >= (8, 0):
                return True
    except Exception:  # pragma: no cover - TF missing or broken
        pass
    return False


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.cache
def bf16_supported() -> bool:
    """True on a GPU with native bfloat16 (compute capability 8.0 or newer: Ampere, Hopper, ...),
    or on a CPU with native bfloat16 math (AVX512_BF16 or AMX-BF16).

    Without those, TensorFlow emulates bf16 matmuls/convolutions and mixed precision is
    usually slower than float32.
    """
    return _gpu_has_bf16() or _cpu_has_bf16()


@functools.cache
def _bf16_gpu() -> bool:
    return _gpu_has_bf16()


def resolve_precision(precision: str, *, backbone: str | None = None) -> str:
    """``"auto"`` -> ``"mixed_bfloat16"`` where :func:`bf16_supported`, else ``"float32"``.

    With a registered ``backbone`` name, ``"auto"`` on a CPU (no bf16 GPU) also asks the
    backbone: one whose ``cpu_bf16`` default is False (the MobileNets: on a CPU with AMX their
    depthwise convolutions train no faster in bf16 and infer slower, 0.57-0.70x for
    MobileNetV2, measured in bench/RESULTS.md) stays float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}. Received: precision={precision!r}")
    if precision != "auto":
        return precision
    if not bf16_supported():
        return "float32"
    if backbone is not None and not _bf16_gpu():
        from ._registry import get_backbone

        if not get_backbone(backbone).cfg()["cpu_bf16"]:
            return "float32"
    return "mixed_bfloat16"


def set_precision(precision: str = "auto", *, backbone: str | None = None) -> str:
    """Set the global Keras dtype policy for models built afterwards; returns the policy name.
    ``backbone``: the backbone to be built, for ``"auto"`` (see :func:`resolve_precision`)."""
    policy = resolve_precision(precision, backbone=backbone)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def get_precision() -> str:
    """Name of the active global Keras dtype policy (e.g. ``"float32"``, ``"mixed_bfloat16"``)."""
    return keras.mixed_precision.global_policy().name


# the name the training module records
active_precision = get_precision


def _backbones(model: keras.Model) -> Iterator[keras.layers.Layer]:
    for layer in model.layers:
        if layer.name == "backbone":
            yield layer
        elif isinstance(layer, keras.Model):  # flip_tta / ensemble wrappers
            yield from _backbones(layer)


def model_precision(model: keras.Model) -> str:
    """The dtype policy a built model computes its backbone in (what a training run records).

    For a wrapped model (``flip_tta``, ``ensemble``): the first member backbone's policy that
    is not float32, if there is one.
    """
    policies = [layer.dtype_policy.name for layer in _backbones(model)]
    if not policies:
        return model.dtype_policy.name
    return next((p for p in policies if p != "float32"), policies[0])


@contextlib.contextmanager
def precision_scope(precision: str | None, *, backbone: str | None = None) -> Iterator[str]:
    """Temporarily set the global policy (``None`` keeps the current one)."""
    previous = get_precision()
    if precision is None:
        yield previous
        return
    policy = set_precision(precision, backbone=backbone)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy(previous)
