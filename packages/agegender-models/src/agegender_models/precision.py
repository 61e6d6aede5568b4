"""Mixed precision selection. Layers capture the policy when they are built.

``"auto"`` is decided by measuring, not by CPU flags: a CPU with AVX512_BF16 but no AMX may run
bfloat16 convolutions slower than float32 (measured in bench/RESULTS.md), an AMX one twice as
fast. :func:`choose_precision` times a few training (or inference) steps of the actual backbone at
the actual input size in float32 and in the mixed policy the hardware offers
(:func:`mixed_candidate`), keeps the faster and caches the verdict per machine, backbone, size,
batch and TensorFlow version in ``<cache_dir>/precision.json`` (see
:func:`agegender_models._cache.cache_dir`; :func:`clear_precision_cache` forgets it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._cache import cache_dir, machine_id, read_json, write_json

if TYPE_CHECKING:  # Keras loads when a policy is set or read, not at import
    import keras

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", "auto")
MODES = ("train", "inference")
CACHE_FILE = "precision.json"
# the mixed policy is kept only when its step takes at most this share of float32's: a gain
# within the noise of a few steps is not worth the export conversion and the rounding
MIXED_MAX_TIME_RATIO = 0.97
DEFAULT_BACKBONE = "custom_cnn"


def _gpu_capabilities() -> list[tuple[int, ...]]:
    try:
        import tensorflow as tf

        found = []
        for gpu in tf.config.list_physical_devices("GPU"):
            capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
            if capability is not None:
                found.append(tuple(capability))
        return found
    except Exception:  # pragma: no cover - TF missing or broken
        return []


def _gpu_has_bf16() -> bool:
    return any(capability >= (8, 0) for capability in _gpu_capabilities())


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
    always slower than float32. With them it may still be slower (AVX512_BF16 without AMX):
    ``"auto"`` measures (:func:`choose_precision`).
    """
    return _gpu_has_bf16() or _cpu_has_bf16()


@functools.cache
def _bf16_gpu() -> bool:
    return _gpu_has_bf16()


def mixed_candidate() -> str | None:
    """The mixed policy this hardware offers, or None: ``"mixed_bfloat16"`` where
    :func:`bf16_supported`, ``"mixed_float16"`` on an older GPU with float16 tensor cores
    (compute capability 7.x), else None (emulated bf16 is several times slower: not measured)."""
    if bf16_supported():
        return "mixed_bfloat16"
    if any(capability >= (7, 0) for capability in _gpu_capabilities()):
        return "mixed_float16"
    return None


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"`precision` must be one of {PRECISIONS}. Received: precision={precision!r}")
    return precision


# --------------------------------------------------------------------------------------------------
# the measurement


@dataclasses.dataclass(frozen=True)
class PrecisionChoice:
    """What ``precision`` resolved to, and why.

    ``source``: ``"asked"`` (not ``"auto"``), ``"hardware"`` (``"auto"`` on hardware without a
    mixed policy: float32, nothing measured), ``"measured"`` (now) or ``"cached"`` (an earlier
    measurement on this machine); ``timings``: seconds per step, per policy, when measured.
    """

    policy: str
    asked: str
    source: str
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    workload: str = ""
    cache_file: str = ""
    measured_at: str = ""

    def describe(self) -> str:
        """One line for a run log, e.g. ``mixed_bfloat16 (asked: auto; 3 training steps ...)``."""
        if self.source == "asked":
            return f"{self.policy} (asked)"
        if self.source == "hardware":
            return f"{self.policy} (asked: auto; no mixed precision on this hardware, not measured)"
        times = ", ".join(f"{p} {1000 * s:.0f} ms" for p, s in self.timings.items())
        when = "measured now" if self.source == "measured" else f"measured {self.measured_at}"
        return (f"{self.policy} (asked: auto; {self.workload}: {times} per step; the faster kept; "
                f"{when}, cached in {self.cache_file})")


def _workload(backbone: str, size: int, batch_size: int, mode: str, steps: int) -> str:
    kind = "training" if mode == "train" else "inference"
    return f"{steps} {kind} steps of {backbone} at {size} px, batch {batch_size}"


def _build_for_timing(backbone: str, size: int, policy: str, mode: str):
    from ._factory import compile_model, create_model
    from ._registry import get_backbone

    # random weights (nothing to load), the backbone's fine-tuned layers as training sets them
    model = create_model(backbone, input_shape=(size, size, 3), weights=None, precision=policy,
                         trainable_layers=get_backbone(backbone).cfg()["trainable_layers"])
    if mode == "train":
        compile_model(model)
    return model


def measure_step_times(
    policies: tuple[str, ...],
    *,
    backbone: str,
    image_size: int,
    batch_size: int = 32,
    mode: str = "train",
    steps: int = 3,
    warmup: int = 2,
) -> dict[str, float]:
    """Median seconds per step of ``backbone`` at ``image_size`` under each policy (random uint8
    images; training: ``train_on_batch``, inference: ``predict_on_batch``). The policies' steps
    alternate, so that load from other processes hits them alike."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8)
    y = {"gender": rng.integers(0, 2, (batch_size, 1)).astype("float32"),
         "age": rng.uniform(1, 90, (batch_size, 1)).astype("float32")}
    models = {p: _build_for_timing(backbone, image_size, p, mode) for p in policies}

    def step(model) -> float:
        start = time.perf_counter()
        if mode == "train":
            model.train_on_batch(x, y)
        else:
            model.predict_on_batch(x)
        return time.perf_counter() - start

    for model in models.values():
        for _ in range(warmup):  # tracing, allocation
            step(model)
    times: dict[str, list[float]] = {p: [] for p in policies}
    for _ in range(steps):
        for policy, model in models.items():
            times[policy].append(step(model))
    return {p: statistics.median(t) for p, t in times.items()}


def _cache_key(backbone: str, size: int, batch_size: int, mode: str) -> str:
    import tensorflow as tf

    return f"{machine_id()} | tensorflow {tf.__version__} | {mode} | {backbone} {size}px batch {batch_size}"


def choose_precision(
    precision: str = "auto",
    *,
    backbone: str | None = None,
    image_size: int | None = None,
    batch_size: int = 32,
    mode: str = "train",
    steps: int = 3,
    cache: bool = True,
) -> PrecisionChoice:
    """Resolve ``precision``; ``"auto"`` by measuring (see the module docstring).

    ``backbone`` (default ``custom_cnn``) and ``image_size`` (default: the backbone's) name the
    workload to time, ``mode`` whether training steps or inference steps; ``cache=False``
    measures again (and stores the new verdict).
    """
    check_precision(precision)
    if precision != "auto":
        return PrecisionChoice(precision, precision, "asked")
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
    from ._registry import get_backbone

    backbone = backbone or DEFAULT_BACKBONE
    cfg = get_backbone(backbone).cfg()  # an unknown name is named here, before any measuring
    candidate = mixed_candidate()
    if candidate is None:
        return PrecisionChoice("float32", "auto", "hardware")
    size = int(image_size or cfg["input_shape"][0])
    path = cache_dir() / CACHE_FILE
    key = _cache_key(backbone, size, batch_size, mode)
    workload = _workload(backbone, size, batch_size, mode, steps)
    stored = read_json(path)
    entry = stored.get("verdicts", {}).get(key) if cache else None
    if isinstance(entry, dict) and entry.get("policy") in ("float32", candidate):
        return PrecisionChoice(entry["policy"], "auto", "cached", dict(entry.get("timings_s", {})),
                               entry.get("workload", workload), str(path), entry.get("measured_at", ""))
    timings = measure_step_times(("float32", candidate), backbone=backbone, image_size=size,
                                 batch_size=batch_size, mode=mode, steps=steps)
    faster = timings[candidate] <= MIXED_MAX_TIME_RATIO * timings["float32"]
    policy = candidate if faster else "float32"
    now = datetime.datetime.now().isoformat(timespec="seconds")
    stored.setdefault("verdicts", {})[key] = {
        "policy": policy, "timings_s": timings, "workload": workload, "measured_at": now,
    }
    write_json(path, stored)
    return PrecisionChoice(policy, "auto", "measured", timings, workload, str(path), now)


def precision_verdicts() -> dict[str, dict[str, Any]]:
    """The cached ``"auto"`` verdicts: key (machine | TF version | mode | workload) -> verdict."""
    return dict(read_json(cache_dir() / CACHE_FILE).get("verdicts", {}))


def clear_precision_cache() -> int:
    """Forget every cached ``"auto"`` verdict (the next ``"auto"`` measures); returns how many."""
    path = Path(cache_dir()) / CACHE_FILE
    count = len(read_json(path).get("verdicts", {}))
    path.unlink(missing_ok=True)
    return count


def resolve_precision(
    precision: str,
    *,
    backbone: str | None = None,
    image_size: int | None = None,
    batch_size: int = 32,
    mode: str = "train",
) -> str:
    """The policy name ``precision`` resolves to (``"auto"``: see :func:`choose_precision`)."""
    return choose_precision(precision, backbone=backbone, image_size=image_size,
                            batch_size=batch_size, mode=mode).policy


def set_precision(
    precision: str = "auto",
    *,
    backbone: str | None = None,
    image_size: int | None = None,
    batch_size: int = 32,
    mode: str = "train",
) -> str:
    """Set the global Keras dtype policy for models built afterwards; returns the policy name.
    ``backbone``, ``image_size``, ``batch_size``, ``mode``: the workload ``"auto"`` measures
    (see :func:`choose_precision`)."""
    import keras

    policy = resolve_precision(precision, backbone=backbone, image_size=image_size,
                               batch_size=batch_size, mode=mode)
    keras.mixed_precision.set_global_policy(policy)
    return policy


def get_precision() -> str:
    """Name of the active global Keras dtype policy (e.g. ``"float32"``, ``"mixed_bfloat16"``)."""
    import keras

    return keras.mixed_precision.global_policy().name


# the name the training module records
active_precision = get_precision


def _backbones(model: keras.Model) -> Iterator[keras.layers.Layer]:
    import keras

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


def _float32_config(obj: Any) -> Any:
    """A model config with every mixed dtype policy replaced by float32."""
    if isinstance(obj, dict):
        if obj.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and isinstance(
            obj.get("config"), dict
        ):
            return {**obj, "config": {**obj["config"], "name": "float32"}}
        return {key: _float32_config(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [_float32_config(value) for value in obj]
    return "float32" if obj in ("mixed_bfloat16", "mixed_float16") else obj


def _policies(model: keras.Model) -> set[str]:
    return {layer.dtype_policy.name for layer in model._flatten_layers(include_self=True)}


def float32_copy(model: keras.Model) -> keras.Model:
    """``model`` itself if it computes in float32 throughout; else the same architecture rebuilt
    under float32 with the same weights (mixed policies keep float32 variables, so the copy is
    exact). What exports run: TFLite and ONNX have no bfloat16 convolutions."""
    if _policies(model) <= {"float32"}:
        return model
    from . import layers as _layers  # noqa: F401  (registers the custom layers for from_config)

    with precision_scope("float32"):
        copy = model.__class__.from_config(_float32_config(model.get_config()))
    copy.set_weights(model.get_weights())
    return copy


@contextlib.contextmanager
def precision_scope(
    precision: str | None, *, backbone: str | None = None, image_size: int | None = None
) -> Iterator[str]:
    """Temporarily set the global policy (``None`` keeps the current one; ``"auto"``: see
    :func:`choose_precision`, for ``backbone`` at ``image_size``)."""
    previous = get_precision()
    if precision is None:
        yield previous
        return
    policy = set_precision(precision, backbone=backbone, image_size=image_size)
    try:
        yield policy
    finally:
        import keras

        keras.mixed_precision.set_global_policy(previous)
