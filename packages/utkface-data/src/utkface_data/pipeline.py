"""``tf.data`` input pipeline from an index or split frame (the only module that imports TensorFlow).

Files are read and decoded in parallel (``num_parallel_calls=AUTOTUNE``, in chunks of 16),
resized to ``image_size`` and kept as uint8 until the final batch-level scaling, so a cache holds
the compact form. Only the list of paths lives in memory; images stream unless ``cache`` is set.

Bad files are named, never dropped silently:

* Before anything runs (``check_files=True``), every file is checked cheaply in Python without
  decoding (:func:`file_problem`: missing, empty, not JPEG/PNG, truncated, PNG header over
  ``max_pixels``). ``on_error="raise"`` raises ``FileNotFoundError``/``DatasetError`` listing
  them; ``on_error="skip"`` leaves them out with a ``UserWarning`` per file.
* A file that passes those checks but that the decoder rejects (corrupt data inside) is caught
  during iteration: each chunk is decoded under ``ignore_errors`` and compared with its input, so
  the failure keeps its path. ``"raise"`` stops with ``tf.errors.InvalidArgumentError``
  ("assertion failed: [utkface_data: unreadable image ...] [<path>]"); ``"skip"`` prints a
  warning naming the file to stderr and goes on without it.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._paths import get_data_dir
from .errors import DatasetError
from .index import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

__all__ = ["SCALINGS", "file_problem", "make_dataset"]

# Files decoded per parallel call: decoder failures are caught per chunk (see make_dataset).
_CHUNK = 16

SCALINGS = ("uint8", "unit", "float")
_ERROR_PREFIX = "utkface_data: unreadable image"
_DECODE_ERROR = "utkface_data: unreadable image (corrupt image data; the decoder failed):"


def _resolve_paths(frame: pd.DataFrame, root: str | os.PathLike[str] | None) -> list[str]:
    paths = frame["path"].astype(str).tolist()
    if root is None and all(os.path.isabs(p) for p in paths):
        return paths
    base = get_data_dir(root)
    return [str(base / p) for p in paths]


def _check_args(
    frame: Any,
    image_size: Any,
    batch_size: Any,
    scaling: Any,
    cache: Any,
    on_error: Any,
    max_pixels: Any,
) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame. Received: frame={type(frame).__name__}")
    missing = [c for c in ("path", "age", "gender") if c not in frame.columns]
    if missing:
        raise ValueError(
            f"frame is missing column(s) {missing}. Received: columns={list(frame.columns)}"
        )
    if len(frame) == 0:
        raise ValueError("frame has no rows. Received: len(frame)=0")
    if (
        not isinstance(image_size, Sequence)
        or len(image_size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in image_size)
    ):
        raise ValueError(
            f"image_size must be (height, width) positive ints. Received: image_size={image_size!r}"
        )
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive integer. Received: batch_size={batch_size!r}"
        )
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}. Received: scaling={scaling!r}")
    if cache is not None and not isinstance(cache, str | os.PathLike):
        raise ValueError(f"cache must be None, 'memory' or a file path. Received: cache={cache!r}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip'. Received: on_error={on_error!r}")
    if not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(
            f"max_pixels must be a positive integer. Received: max_pixels={max_pixels!r}"
        )


def file_problem(path: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Cheap check of one image file without decoding it: ``None`` if it looks usable, else the
    reason. Reads only the first 24 bytes and the last KiB: missing or empty file, not a JPEG/PNG
    signature, JPEG without an end-of-image marker near its end (truncated; padding or trailing
    data after the marker is fine, as for the decoders), PNG without ``IEND`` (truncated) or
    whose header claims more than ``max_pixels`` pixels."""
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as fh:
            head = fh.read(24)
            fh.seek(max(size - 1024, 0))
            tail = fh.read()
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot read file: {exc}"
    if head.startswith(b"\xff\xd8\xff"):
        return None if b"\xff\xd9" in tail else "truncated JPEG (no end-of-image marker)"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(head) >= 24:
            width, height = struct.unpack(">II", head[16:24])
            if width * height > max_pixels:
                return f"image too large: {width}x{height} pixels exceeds max_pixels={max_pixels}"
        return None if b"IEND" in tail else "truncated PNG (no IEND chunk)"
    return "not a JPEG or PNG file (bad signature)"


def _cache_file(prefix: str | os.PathLike[str], paths: Sequence[str], gender: np.ndarray,
                age: np.ndarray, image_size: tuple[int, int]) -> str:
    """A file-cache prefix that names its content: TensorFlow reuses an existing cache file
    as it is, so another frame, label set or image size must not land on the same prefix."""
    digest = hashlib.blake2b(digest_size=8)
    for path, g, a in zip(paths, gender.tolist(), age.tolist(), strict=True):
        digest.update(f"{path},{g},{a}\n".encode())
    digest.update(f"{image_size[0]}x{image_size[1]}".encode())
    return f"{Path(prefix)}.{digest.hexdigest()}"


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
        on_error: ``"raise"`` (an error naming the file) or ``"skip"`` (the file is left out
            and a warning names it); see the module docstring.
        check_files: check every file up front without decoding (exists, non-empty, JPEG/PNG
            signature, not truncated, size guard); about 20 us per file.
        max_pixels: decompression-bomb guard for PNG headers.
        shuffle_buffer: shuffle buffer size (default: all records when streaming, at most 2048
            decoded images after a cache).

    Targets are float32 vectors of shape ``(batch,)``: gender 0/1 and age in years.

    With ``on_error="raise"`` no row can be dropped while iterating (every row comes out or
    iteration stops with an error), so the dataset's ``cardinality()`` is known: ``ceil(rows /
    batch_size)`` batches (``floor`` with ``drop_remainder``; infinite with ``repeat``), and Keras
    shows ``n/n`` steps. With ``"skip"`` a corrupt file found by the decoder is left out at run
    time, so the number of batches is unknown until the end of the first pass.
    """
    _check_args(frame, image_size, batch_size, scaling, cache, on_error, max_pixels)
    import tensorflow as tf

    paths = _resolve_paths(frame, root)
    gender = frame["gender"].to_numpy(dtype=np.float32)
    age = frame["age"].to_numpy(dtype=np.float32)
    if check_files:
        paths, gender, age = _usable_rows(paths, gender, age, on_error=on_error, max_pixels=max_pixels)
    # without shuffling, rows always come out in frame order (predictions line up with labels)
    deterministic = seed is not None or not shuffle

    ds = tf.data.Dataset.from_tensor_slices((paths, {"gender": gender, "age": age}))
    if shuffle and cache is None:
        # Shuffle only the (path, label) records: cheap, and images still stream.
        ds = ds.shuffle(shuffle_buffer or len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = _decode_images(ds, len(paths), image_size, on_error=on_error, deterministic=deterministic)
    if cache is not None:
        ds = ds.cache("" if str(cache) == "memory" else _cache_file(cache, paths, gender, age, image_size))
        if shuffle:
            ds = ds.shuffle(
                shuffle_buffer or min(len(paths), 2048), seed=seed, reshuffle_each_iteration=True
            )
    if repeat:
        ds = ds.repeat()
    if augment:
        ds = _augment_images(ds, image_size, seed=seed, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if scaling != "uint8":
        ds = _scale_images(ds, scaling)
    return ds.prefetch(tf.data.AUTOTUNE)


def _bad_files_error(bad: list[tuple[str, str]]) -> Exception:
    """The error for ``on_error="raise"``: ``FileNotFoundError`` if files are missing, else a
    ``DatasetError`` listing every unusable file with its reason."""
    missing = [p for p, why in bad if why == "file not found"]
    if missing:
        listed = ", ".join(missing[:10]) + (
            f" ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        return FileNotFoundError(
            f"{len(missing)} image file(s) listed in the frame do not exist: {listed}"
        )
    shown = "\n".join(f"  {p}: {why}" for p, why in bad[:20])
    more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
    return DatasetError(
        f"{len(bad)} unusable image file(s) (on_error='skip' leaves them out):\n{shown}{more}"
    )


def _usable_rows(
    paths: list[str], gender: np.ndarray, age: np.ndarray, *, on_error: str, max_pixels: int
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The up-front file check (:func:`file_problem` on every file): raises for bad files with
    ``on_error="raise"``; with ``"skip"`` leaves them out, warning once per file."""
    problems = [file_problem(p, max_pixels=max_pixels) for p in paths]
    bad = [(p, why) for p, why in zip(paths, problems, strict=True) if why is not None]
    if not bad:
        return paths, gender, age
    if on_error == "raise":
        raise _bad_files_error(bad)
    for p, why in bad:
        # stacklevel 3: the warning points at make_dataset's caller
        warnings.warn(f"{_ERROR_PREFIX} skipped: {p}: {why}", stacklevel=3)
    keep = np.array([why is None for why in problems])
    if not keep.any():
        raise DatasetError(
            f"none of the {len(paths)} image files is usable, e.g. {bad[0][0]}: {bad[0][1]}"
        )
    return [p for p, k in zip(paths, keep, strict=True) if k], gender[keep], age[keep]


def _decoder(height: int, width: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """path -> RGB uint8 image of ``(height, width, 3)`` (bilinear resize, rounded)."""
    import tensorflow as tf

    def decode(path: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(
            tf.io.read_file(path), channels=3, dtype=tf.uint8, expand_animations=False
        )
        image = tf.image.resize(image, (height, width), method="bilinear", antialias=False)
        return tf.ensure_shape(
            tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8), (height, width, 3)
        )

    return decode


def _report_failures(failed: tf.Tensor, on_error: str) -> tf.Operation:
    """The op that reports the paths the decoder rejected: an assertion that fails
    (``"raise"``) or a warning printed to stderr (``"skip"``)."""
    import tensorflow as tf

    if on_error == "raise":
        # InvalidArgumentError: "assertion failed: [utkface_data: unreadable image ...] [<path>...]"
        return tf.debugging.Assert(
            tf.equal(tf.size(failed), 0), [_DECODE_ERROR, failed], summarize=_CHUNK
        )
    return tf.cond(
        tf.size(failed) > 0,
        lambda: tf.print(
            "WARNING:", _ERROR_PREFIX, "skipped (corrupt image data):", failed, output_stream=sys.stderr
        ),
        lambda: tf.no_op(),
    )


def _chunk_loader(height: int, width: int, on_error: str) -> Callable[..., Any]:
    """(chunk of paths, targets) -> (decoded images, targets of the images that decoded)."""
    import tensorflow as tf

    decode = _decoder(height, width)

    def load_chunk(
        chunk: tf.Tensor, target: dict[str, tf.Tensor]
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        # Decode a few files under ignore_errors and compare what came out with what went in:
        # a file the decoder rejects is then known by name (TF's own decode error names no file).
        k = tf.shape(chunk, out_type=tf.int64)[0]
        decoded = (
            tf.data.Dataset.range(k)
            .map(lambda i: (decode(chunk[i]), i))
            .ignore_errors()
            .batch(_CHUNK)
            .concatenate(
                tf.data.Dataset.from_tensors(
                    (tf.zeros((0, height, width, 3), tf.uint8), tf.zeros((0,), tf.int64))
                )
            )
        )
        images, index = decoded.take(1).get_single_element()
        seen = tf.scatter_nd(index[:, None], tf.ones_like(index), k[None])
        failed = tf.boolean_mask(chunk, tf.equal(seen, 0))
        with tf.control_dependencies([_report_failures(failed, on_error)]):
            images = tf.identity(images)
        return images, {key: tf.gather(value, index) for key, value in target.items()}

    return load_chunk


def _decode_images(
    ds: tf.data.Dataset, rows: int, image_size: tuple[int, int], *, on_error: str,
    deterministic: bool,
) -> tf.data.Dataset:
    """(path, targets) records -> (uint8 image, targets), decoded in parallel chunks."""
    import tensorflow as tf

    ds = (
        ds.batch(_CHUNK)
        .map(_chunk_loader(*image_size, on_error), num_parallel_calls=tf.data.AUTOTUNE,
             deterministic=deterministic)
        .unbatch()
    )
    if on_error == "raise":
        # Every row comes out or iteration stops with an error: the length is known (unbatch
        # loses it), and Keras can show n/n steps and stop each epoch without running dry.
        ds = ds.apply(tf.data.experimental.assert_cardinality(rows))
    return ds


def _augment_images(
    ds: tf.data.Dataset, image_size: tuple[int, int], *, seed: int | None, deterministic: bool
) -> tf.data.Dataset:
    """Random jitter per image (see :func:`_augment`), seeded from a random stream."""
    import tensorflow as tf

    height, width = image_size
    noise = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((ds, noise)).map(
        lambda el, s: (_augment(el[0], s, height, width), el[1]),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )


def _scale_images(ds: tf.data.Dataset, scaling: str) -> tf.data.Dataset:
    """uint8 batches -> float32 in 0-255 (``"float"``) or [0, 1] (``"unit"``)."""
    import tensorflow as tf

    scale = 1.0 / 255.0 if scaling == "unit" else 1.0
    return ds.map(
        lambda x, y: (tf.cast(x, tf.float32) * scale, y), num_parallel_calls=tf.data.AUTOTUNE
    )


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
