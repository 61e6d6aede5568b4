"""``tf.data`` input pipeline from an index or split frame (the only module that imports TensorFlow).

Each element is read, checked and decoded in parallel (``num_parallel_calls=AUTOTUNE``), resized
to ``image_size`` and kept as uint8 until the final batch-level scaling, so a cache holds the
compact form. Only the list of paths lives in memory; images stream unless ``cache`` is set.

Bad files: before decoding, each file's bytes are checked in the graph (non-empty, JPEG/PNG
signature, JPEG end-of-image marker so truncated files are caught, PNG header size under
``max_pixels``), and the decode itself runs in a one-element dataset under ``ignore_errors`` so
a decoder failure is turned into a reason attached to the file's path. A bad file then either
stops iteration with an ``InvalidArgumentError`` whose message names the file and the problem
(``on_error="raise"``, the default) or is skipped with a warning on stderr that names it
(``on_error="skip"``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._paths import get_data_dir
from .index import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

__all__ = ["SCALINGS", "make_dataset"]

SCALINGS = ("uint8", "unit", "float")
_ERROR_PREFIX = "utkface_data: unreadable image"


def _resolve_paths(frame: pd.DataFrame, root: str | os.PathLike[str] | None) -> list[str]:
    paths = frame["path"].astype(str).tolist()
    if root is None and all(os.path.isabs(p) for p in paths):
        return paths
    base = get_data_dir(root)
    return [str(base / p) for p in paths]


def _check_args(frame: Any, image_size: Any, batch_size: Any, scaling: Any, cache: Any, on_error: Any, max_pixels: Any) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame. Received: frame={type(frame).__name__}")
    missing = [c for c in ("path", "age", "gender") if c not in frame.columns]
    if missing:
        raise ValueError(f"frame is missing column(s) {missing}. Received: columns={list(frame.columns)}")
    if len(frame) == 0:
        raise ValueError("frame has no rows. Received: len(frame)=0")
    if (
        not isinstance(image_size, Sequence)
        or len(image_size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in image_size)
    ):
        raise ValueError(f"image_size must be (height, width) positive ints. Received: image_size={image_size!r}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}. Received: scaling={scaling!r}")
    if cache is not None and not isinstance(cache, str | os.PathLike):
        raise ValueError(f"cache must be None, 'memory' or a file path. Received: cache={cache!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip'. Received: on_error={on_error!r}")
    if not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive integer. Received: max_pixels={max_pixels!r}")


def _problem(data: tf.Tensor, max_pixels: int) -> tf.Tensor:
    """Empty string when the bytes look like a complete JPEG/PNG, else the reason (graph ops)."""
    import tensorflow as tf

    n = tf.strings.length(data)
    head = tf.strings.substr(data, 0, tf.minimum(n, 8))
    tail = tf.strings.substr(data, tf.maximum(n - 2, 0), tf.minimum(n, 2))
    is_jpeg = tf.equal(tf.strings.substr(head, 0, tf.minimum(n, 3)), b"\xff\xd8\xff")
    is_png = tf.equal(head, b"\x89PNG\r\n\x1a\n")

    def png_pixels() -> tf.Tensor:
        wh = tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.uint8)
        wh = tf.cast(wh, tf.float64)
        w = ((wh[0] * 256 + wh[1]) * 256 + wh[2]) * 256 + wh[3]
        h = ((wh[4] * 256 + wh[5]) * 256 + wh[6]) * 256 + wh[7]
        return w * h

    pixels = tf.cond(is_png & (n >= 24), png_pixels, lambda: tf.constant(0.0, tf.float64))
    return tf.case(
        [
            (tf.equal(n, 0), lambda: tf.constant("empty file (0 bytes)")),
            (
                tf.logical_not(is_jpeg | is_png),
                lambda: tf.constant("not a JPEG or PNG file (bad signature)"),
            ),
            (
                is_jpeg & tf.not_equal(tail, b"\xff\xd9"),
                lambda: tf.constant("truncated JPEG (no end-of-image marker)"),
            ),
            (
                pixels > max_pixels,
                lambda: tf.constant(f"image too large (more than max_pixels={max_pixels} pixels)"),
            ),
        ],
        default=lambda: tf.constant(""),
        exclusive=False,
    )


def make_dataset(
    frame: pd.DataFrame,
    *,
    root: str | os.PathLike[str] | None = None,
    image_size: tuple[int, int] = (128, 128),
    batch_size: int = 32,
    scaling: str = "uint8",
    shuffle: bool = False,
    augment: bool = False,
    cache: str | os.PathLike[str] | None = None,
    seed: int | None = 0,
    drop_remainder: bool = False,
    repeat: bool = False,
    on_error: str = "raise",
    check_files: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    shuffle_buffer: int | None = None,
) -> tf.data.Dataset:
    """Build a batched ``tf.data.Dataset`` of ``(images, {"gender": ..., "age": ...})``.

    Args:
        frame: rows with ``path`` (relative to ``root``, or absolute), ``age`` and ``gender``;
            an index ``.frame`` or a split DataFrame.
        root: the image folder (``None``: absolute paths, else ``UTKFACE_DIR``).
        image_size: ``(height, width)`` to resize to (bilinear), default 128x128.
        scaling: ``"uint8"`` raw RGB uint8; ``"float"`` float32 in 0-255; ``"unit"`` float32 in
            [0, 1]. Images are always RGB (grayscale/RGBA/PNG converted).
        shuffle: reshuffle every epoch (seeded when ``seed`` is not None).
        augment: training-only jitter: horizontal flip, brightness +-10%, contrast 0.9-1.1,
            up to 10% crop-and-resize.
        cache: ``None`` (stream), ``"memory"``, or a file path prefix for ``Dataset.cache``;
            decoded, resized uint8 images are cached, augmentation is applied after the cache.
        seed: seeds shuffle and augmentation; when not None the element order is deterministic.
        on_error: ``"raise"`` (iteration stops with an error naming the file) or ``"skip"``
            (the element is dropped and a warning naming the file goes to stderr).
        check_files: check up front that every file exists (``FileNotFoundError`` lists them).

    Targets are float32 vectors of shape ``(batch,)``: gender 0/1 and age in years.
    """
    _check_args(frame, image_size, batch_size, scaling, cache, on_error, max_pixels)
    import tensorflow as tf

    paths = _resolve_paths(frame, root)
    if check_files:
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            shown = ", ".join(missing[:10]) + (f" ... and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise FileNotFoundError(f"{len(missing)} image file(s) listed in the frame do not exist: {shown}")
    height, width = image_size
    deterministic = seed is not None
    gender = frame["gender"].to_numpy(dtype=np.float32)
    age = frame["age"].to_numpy(dtype=np.float32)

    ds = tf.data.Dataset.from_tensor_slices((paths, {"gender": gender, "age": age}))
    if shuffle and cache is None:
        # Shuffle only the (path, label) records: cheap, and images still stream.
        ds = ds.shuffle(shuffle_buffer or len(paths), seed=seed, reshuffle_each_iteration=True)

    def decode(data: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
        image = tf.image.resize(image, (height, width), method="bilinear", antialias=False)
        return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)

    def load(path: tf.Tensor, target: dict[str, tf.Tensor]) -> tf.data.Dataset:
        # One tiny dataset per file: the decode runs under ignore_errors, and if it yields
        # nothing the fallback element carries the reason, so the failure keeps its file name.
        data = tf.io.read_file(path)
        problem = _problem(data, max_pixels)
        decoded = (
            tf.data.Dataset.from_tensors(data)
            .filter(lambda _: tf.equal(problem, ""))
            .map(lambda d: (tf.ensure_shape(decode(d), (height, width, 3)), tf.constant("")))
            .ignore_errors()
        )
        reason = tf.where(tf.equal(problem, ""), "corrupt image data (the decoder failed)", problem)
        fallback = tf.data.Dataset.from_tensors((tf.zeros((height, width, 3), tf.uint8), reason))
        return decoded.concatenate(fallback).take(1).map(lambda image, why: (image, why, path, target))

    ds = ds.interleave(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if on_error == "skip":

        def keep(image: tf.Tensor, why: tf.Tensor, path: tf.Tensor, target: Any) -> tf.Tensor:
            def warn() -> tf.Tensor:
                printed = tf.print("WARNING:", _ERROR_PREFIX, "skipped:", path, "-", why, output_stream=sys.stderr)
                with tf.control_dependencies([printed]):
                    return tf.constant(False)

            return tf.cond(tf.equal(why, ""), lambda: tf.constant(True), warn)

        ds = ds.filter(keep).map(lambda image, why, path, target: (image, target))
    else:

        def check(image: tf.Tensor, why: tf.Tensor, path: tf.Tensor, target: Any) -> tuple[tf.Tensor, Any]:
            # InvalidArgumentError "assertion failed: [utkface_data: unreadable image] [<path>] [<reason>]"
            ok = tf.debugging.Assert(tf.equal(why, ""), [_ERROR_PREFIX, path, why], summarize=3)
            with tf.control_dependencies([ok]):
                return tf.identity(image), target

        ds = ds.map(check)
    if cache is not None:
        ds = ds.cache("" if str(cache) == "memory" else str(Path(cache)))
        if shuffle:
            ds = ds.shuffle(shuffle_buffer or min(len(paths), 2048), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if augment:
        noise = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, noise)).map(
            lambda el, s: (_augment(el[0], s, height, width), el[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=deterministic,
        )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if scaling != "uint8":
        scale = 1.0 / 255.0 if scaling == "unit" else 1.0
        ds = ds.map(lambda x, y: (tf.cast(x, tf.float32) * scale, y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _augment(image: tf.Tensor, seed: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Flip, brightness, contrast and crop jitter with stateless ops (reproducible per seed)."""
    import tensorflow as tf

    seed = tf.cast(seed, tf.int64)
    s = [seed + tf.constant([0, i], tf.int64) for i in range(5)]
    x = tf.cast(image, tf.float32)
    x = tf.image.stateless_random_flip_left_right(x, s[0])
    x = x + tf.random.stateless_uniform([], s[1], -25.5, 25.5)
    x = tf.image.stateless_random_contrast(x, 0.9, 1.1, s[2])
    scale = tf.random.stateless_uniform([], s[3], 1.0, 1.1)
    big = tf.cast(tf.math.ceil(tf.constant([height, width], tf.float32) * scale), tf.int32)
    x = tf.image.resize(x, big, method="bilinear")
    x = tf.image.stateless_random_crop(x, (height, width, 3), s[4])
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)
