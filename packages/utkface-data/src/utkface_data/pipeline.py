"""``tf.data`` input pipeline from an index or split frame (the only module that imports TensorFlow).

Files are read and decoded in parallel (``num_parallel_calls=AUTOTUNE``, in chunks of 16),
resized to ``image_size`` and kept as uint8 until the final batch-level scaling, so a cache holds
the compact form. Only the list of paths lives in memory; images stream unless ``cache`` is set.

Images are read by the rules of every reader in the project (``agegender_models.imageio``
reads files for prediction the same way; a cross-package test compares the pixels): EXIF
orientation applied, 16-bit samples to their high byte, CMYK as ``(255 - C) * (255 - K) // 255``,
transparency composited onto white, JPEG decoded with the accurate integer DCT (as Pillow does),
no image over ``max_pixels`` decoded. :func:`read_image` reads one file this way.

Bad files are named, never dropped silently:

* Before anything runs, every file's header is read without decoding (:func:`file_problem`;
  about 50 us a file): missing, empty, not JPEG/PNG, unreadable header, truncated, more pixels
  than ``max_pixels`` (JPEG and PNG; always refused, even with ``check_files=False``).
  ``on_error="raise"`` raises ``FileNotFoundError``/``DatasetError`` listing them;
  ``on_error="skip"`` leaves them out with a ``UserWarning`` per file.
* A file that passes those checks but that the decoder rejects (corrupt data inside) is caught
  during iteration: each chunk is decoded under ``ignore_errors`` and compared with its input, so
  the failure keeps its path. ``"raise"`` stops with ``tf.errors.InvalidArgumentError``
  ("assertion failed: [utkface_data: unreadable image ...] [<path>]"); ``"skip"`` prints a
  warning naming the file to stderr and goes on without it.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ._images import DEFAULT_MAX_PIXELS, ImageProbe, probe_image
from ._paths import get_data_dir
from .errors import DatasetError

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

__all__ = ["SCALINGS", "file_problem", "make_dataset", "read_image"]

# Files decoded per parallel call: decoder failures are caught per chunk (see make_dataset).
_CHUNK = 16

SCALINGS = ("uint8", "unit", "float")
_ERROR_PREFIX = "utkface_data: unreadable image"
_DECODE_ERROR = "utkface_data: unreadable image (corrupt image data; the decoder failed):"
# Part of every file-cache name: a cache written by an older decoder is not reused.
_DECODER_VERSION = "2: exif, alpha on white, accurate dct"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"


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
    """Cheap check of one image file without decoding its pixels: ``None`` if it looks usable,
    else the reason. Reads the header (Pillow) and the last KiB: missing or empty file, not a
    JPEG/PNG signature, a header that cannot be read or that claims more than ``max_pixels``
    pixels (JPEG or PNG), JPEG without an end-of-image marker near its end (truncated; padding
    or trailing data after the marker is fine, as for the decoders), PNG without ``IEND``."""
    return probe_image(path, max_pixels=max_pixels).problem


def read_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """One file as the pipeline reads it, before resizing: an upright H x W x 3 uint8 array.

    Raises ``FileNotFoundError`` for a missing file and ``DatasetError`` naming the file for
    one that :func:`file_problem` refuses (a decompression bomb is never decoded) or that the
    decoder rejects.
    """
    import tensorflow as tf

    probe = probe_image(path, max_pixels=max_pixels)
    if probe.problem == "file not found":
        raise FileNotFoundError(f"image file not found: {path}")
    if probe.problem is not None:
        raise DatasetError(f"{path}: {probe.problem}")
    try:
        image = _decode_rgb(tf.io.read_file(os.fspath(path)), tf.constant(probe.orientation))
    except tf.errors.OpError as exc:
        raise DatasetError(f"{path}: corrupt image data (the decoder failed)") from exc
    return image.numpy()


def _cache_file(prefix: str | os.PathLike[str], paths: Sequence[str], gender: np.ndarray,
                age: np.ndarray, image_size: tuple[int, int]) -> str:
    """A file-cache prefix that names its content: TensorFlow reuses an existing cache file
    as it is, so another frame, label set, image size or decoder must not land on the same
    prefix."""
    digest = hashlib.blake2b(digest_size=8)
    for path, g, a in zip(paths, gender.tolist(), age.tolist(), strict=True):
        digest.update(f"{path},{g},{a}\n".encode())
    digest.update(f"{image_size[0]}x{image_size[1]}".encode())
    digest.update(_DECODER_VERSION.encode())
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
    degrade: float = 0.0,
    tight_crop: float = 0.0,
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
        degrade: with ``augment``, the probability of each of three photo degradations, drawn
            independently per image: downscaling to 24-96 px and back (a small face in a
            photo), JPEG re-encoding at quality 10-60, grayscale. 0 (the default) leaves the
            jitter exactly as without it.
        tight_crop: with ``augment``, the probability that an image is also cropped tighter
            around its centre, the face made 1.1-1.3 times larger (as a face image from another
            tool's detector box, which shows less of the head than a chip). 0 (the default)
            leaves the jitter exactly as without it.
        cache: ``None`` (stream), ``"memory"``, or a file path prefix for ``Dataset.cache``;
            decoded, resized uint8 images are cached, augmentation is applied after the cache.
        seed: seeds shuffle and augmentation; when not None the element order is deterministic.
        on_error: ``"raise"`` (an error naming the file) or ``"skip"`` (the file is left out
            and a warning names it); see the module docstring.
        check_files: refuse bad files up front from their headers (exists, non-empty, JPEG/PNG
            signature, readable header, not truncated); about 50 us per file. The headers are
            read even with ``False`` (for the EXIF orientation and the pixel limit); then only
            the decoder finds the other problems, while iterating.
        max_pixels: decompression-bomb guard: an image whose header claims more pixels is
            refused, never decoded (default 64 million, as every reader of the project).
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
    for name, value in (("degrade", degrade), ("tight_crop", tight_crop)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1]. Received: {name}={value}")
    import tensorflow as tf

    paths = _resolve_paths(frame, root)
    gender = frame["gender"].to_numpy(dtype=np.float32)
    age = frame["age"].to_numpy(dtype=np.float32)
    paths, orientation, gender, age = _usable_rows(
        paths, gender, age, on_error=on_error, max_pixels=max_pixels, check_files=check_files
    )
    # without shuffling, rows always come out in frame order (predictions line up with labels)
    deterministic = seed is not None or not shuffle

    ds = tf.data.Dataset.from_tensor_slices(
        ((paths, orientation), {"gender": gender, "age": age})
    )
    if shuffle and cache is None:
        # Shuffle only the (path, label) records: cheap, and images still stream.
        ds = ds.shuffle(shuffle_buffer or len(paths), seed=seed, reshuffle_each_iteration=True)
    ds = _decode_images(ds, len(paths), image_size, on_error=on_error, deterministic=deterministic,
                        orient=bool((orientation != 1).any()))
    if cache is not None:
        ds = ds.cache("" if str(cache) == "memory" else _cache_file(cache, paths, gender, age, image_size))
        if shuffle:
            ds = ds.shuffle(
                shuffle_buffer or min(len(paths), 2048), seed=seed, reshuffle_each_iteration=True
            )
    if repeat:
        ds = ds.repeat()
    if augment:
        ds = _augment_images(ds, image_size, seed=seed, deterministic=deterministic,
                             degrade=degrade, tight_crop=tight_crop)
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


def _problem(probe: ImageProbe, check_files: bool) -> str | None:
    return probe.problem if check_files or probe.too_large else None


def _usable_rows(
    paths: list[str], gender: np.ndarray, age: np.ndarray, *, on_error: str, max_pixels: int,
    check_files: bool,
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Read every file's header (:func:`probe_image`): the EXIF orientations, and the bad files
    (all of them with ``check_files``, else only those over ``max_pixels``). Raises for bad
    files with ``on_error="raise"``; with ``"skip"`` leaves them out, warning once per file.
    Returns the paths, orientations and targets of the rows kept."""
    probes = [probe_image(p, max_pixels=max_pixels) for p in paths]
    orientation = np.array([p.orientation for p in probes], dtype=np.int32)
    problems = [_problem(p, check_files) for p in probes]
    bad = [(p, why) for p, why in zip(paths, problems, strict=True) if why is not None]
    if not bad:
        return paths, orientation, gender, age
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
    kept = [p for p, k in zip(paths, keep, strict=True) if k]
    return kept, orientation[keep], gender[keep], age[keep]


def _on_white(rgba: tf.Tensor) -> tf.Tensor:
    """RGBA uint8 -> RGB uint8 composited onto white: ``round((c a + 255 (255 - a)) / 255)``."""
    import tensorflow as tf

    color = tf.cast(rgba[..., :3], tf.float32)
    alpha = tf.cast(rgba[..., 3:], tf.float32)
    return tf.cast(tf.round((color * alpha + 255.0 * (255.0 - alpha)) / 255.0), tf.uint8)


def _orient(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Apply an EXIF orientation (1-8) as ``PIL.ImageOps.exif_transpose`` does."""
    import tensorflow as tf

    def transpose(x: tf.Tensor) -> tf.Tensor:
        return tf.transpose(x, [1, 0, 2])

    branches = [
        lambda: image,  # 1: upright
        lambda: tf.reverse(image, [1]),  # 2: mirrored left-right
        lambda: tf.image.rot90(image, 2),  # 3: upside down
        lambda: tf.reverse(image, [0]),  # 4: mirrored top-bottom
        lambda: transpose(image),  # 5: transposed
        lambda: tf.image.rot90(image, 3),  # 6: shown turned 90 degrees clockwise
        lambda: tf.image.rot90(transpose(image), 2),  # 7: transversed
        lambda: tf.image.rot90(image, 1),  # 8: shown turned 90 degrees counter-clockwise
    ]
    index = tf.clip_by_value(tf.cast(orientation, tf.int32) - 1, 0, 7)
    return tf.switch_case(index, branches)


def _png_rgb(data: tf.Tensor) -> tf.Tensor:
    """PNG bytes -> RGB uint8: transparency (an alpha channel, or a ``tRNS`` colour key or
    palette entry) composited onto white; 16-bit samples keep their high byte."""
    import tensorflow as tf

    rgba = tf.io.decode_png(data, channels=4)
    # decode_png's added alpha is wrong (2**bits - 1) for palette and gray images of under 8
    # bits: use it only when the file has transparency (colour type 4 or 6, or a tRNS chunk
    # before the image data)
    color_type = tf.strings.substr(data, 25, 1)
    header = tf.strings.split(data, sep="IDAT", maxsplit=1)[0]
    has_alpha = tf.logical_or(
        tf.reduce_any(tf.equal(color_type, [b"\x04", b"\x06"])),
        tf.size(tf.strings.split(header, sep="tRNS", maxsplit=1)) > 1,
    )
    return tf.cond(has_alpha, lambda: _on_white(rgba), lambda: rgba[..., :3])


def _decode_rgb(data: tf.Tensor, orientation: tf.Tensor | None) -> tf.Tensor:
    """Encoded bytes -> upright RGB uint8 ``(h, w, 3)`` by the module's reading rules
    (``orientation=None``: the images are known to be upright; no orientation op)."""
    import tensorflow as tf

    head = tf.strings.substr(data, 0, 8)
    image = tf.case(
        [
            (tf.equal(head, _PNG_SIGNATURE), lambda: _png_rgb(data)),
            # JPEG: the accurate integer DCT, as Pillow decodes (TensorFlow's default is the
            # fast one, a few levels off); CMYK converted by TensorFlow's formula
            (
                tf.equal(tf.strings.substr(data, 0, 3), _JPEG_SIGNATURE),
                lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
            ),
        ],
        default=lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
        exclusive=False,
    )
    image = tf.ensure_shape(image, (None, None, 3))
    return image if orientation is None else _orient(image, orientation)


def _decoder(height: int, width: int, orient: bool) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """(path, EXIF orientation) -> RGB uint8 image of ``(height, width, 3)`` (bilinear resize,
    rounded). ``orient=False`` when every image is upright (the op costs ~30 % of decoding)."""
    import tensorflow as tf

    def decode(path: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
        image = _decode_rgb(tf.io.read_file(path), orientation if orient else None)
        image = tf.image.resize(image, (height, width), method="bilinear", antialias=False)
        return tf.ensure_shape(
            _to_uint8(image), (height, width, 3)
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


def _chunk_loader(height: int, width: int, on_error: str, orient: bool) -> Callable[..., Any]:
    """((chunk of paths, orientations), targets) -> (decoded images, targets of the images
    that decoded)."""
    import tensorflow as tf

    decode = _decoder(height, width, orient)

    def load_chunk(
        files: tuple[tf.Tensor, tf.Tensor], target: dict[str, tf.Tensor]
    ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        chunk, orientation = files
        # Decode a few files under ignore_errors and compare what came out with what went in:
        # a file the decoder rejects is then known by name (TF's own decode error names no file).
        k = tf.shape(chunk, out_type=tf.int64)[0]
        decoded = (
            tf.data.Dataset.range(k)
            .map(lambda i: (decode(chunk[i], orientation[i]), i))
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
    deterministic: bool, orient: bool = True,
) -> tf.data.Dataset:
    """((path, orientation), targets) records -> (uint8 image, targets), decoded in parallel
    chunks (``orient=False``: every image is upright, no orientation op)."""
    import tensorflow as tf

    ds = (
        ds.batch(_CHUNK)
        .map(_chunk_loader(*image_size, on_error, orient), num_parallel_calls=tf.data.AUTOTUNE,
             deterministic=deterministic)
        .unbatch()
    )
    if on_error == "raise":
        # Every row comes out or iteration stops with an error: the length is known (unbatch
        # loses it), and Keras can show n/n steps and stop each epoch without running dry.
        ds = ds.apply(tf.data.experimental.assert_cardinality(rows))
    return ds


def _augment_images(
    ds: tf.data.Dataset, image_size: tuple[int, int], *, seed: int | None, deterministic: bool,
    degrade: float = 0.0, tight_crop: float = 0.0,
) -> tf.data.Dataset:
    """Random jitter per image (see :func:`_tighten`, :func:`_augment`, :func:`_degrade`),
    seeded from a random stream."""
    import tensorflow as tf

    height, width = image_size

    def one(image: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
        if tight_crop > 0:
            image = _tighten(image, s, tight_crop)
        image = _augment(image, s, height, width)
        return _degrade(image, s, degrade) if degrade > 0 else image

    noise = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((ds, noise)).map(
        lambda el, s: (one(el[0], s), el[1]),
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
    return _to_uint8(x)


def _to_uint8(x: tf.Tensor) -> tf.Tensor:
    """Float pixels rounded and clipped to uint8 (as every resize and jitter here ends)."""
    import tensorflow as tf

    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def _tighten(image: tf.Tensor, seed: tf.Tensor, probability: float) -> tf.Tensor:
    """With ``probability``, the centre 1/1.3-1/1.1 of the image scaled back to its size: the
    face 1.1-1.3 times larger, as in a tight face crop. uint8 in, uint8 out."""
    import tensorflow as tf

    seed = tf.cast(seed, tf.int64)
    s = [seed + tf.constant([200, i], tf.int64) for i in range(2)]
    size = tf.shape(image)[:2]

    def tighter(x: tf.Tensor) -> tf.Tensor:
        keep = 1.0 / tf.random.stateless_uniform([], s[1], 1.1, 1.3)
        inner = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * keep), tf.int32), 1)
        top, left = (size[0] - inner[0]) // 2, (size[1] - inner[1]) // 2
        crop = x[top:top + inner[0], left:left + inner[1]]
        up = tf.image.resize(crop, size, method="bilinear")
        return _to_uint8(up)

    return tf.cond(tf.random.stateless_uniform([], s[0]) < probability, lambda: tighter(image),
                   lambda: image)


def _degrade(image: tf.Tensor, seed: tf.Tensor, probability: float) -> tf.Tensor:
    """What real photos do to a face, each with ``probability``: downscaled to 24-96 px and
    scaled back (a small face), JPEG at quality 10-60, grayscale. uint8 in, uint8 out."""
    import tensorflow as tf

    seed = tf.cast(seed, tf.int64)
    s = [seed + tf.constant([100, i], tf.int64) for i in range(5)]
    size = tf.shape(image)[:2]

    def coin(i: int) -> tf.Tensor:
        return tf.random.stateless_uniform([], s[i]) < probability

    def small(x: tf.Tensor) -> tf.Tensor:
        side = tf.random.stateless_uniform([], s[1], 24, 97, dtype=tf.int32)
        low = tf.image.resize(x, tf.stack([side, side]), method="area")
        up = tf.image.resize(low, size, method="bilinear")
        return _to_uint8(up)

    def jpeg(x: tf.Tensor) -> tf.Tensor:
        return tf.image.stateless_random_jpeg_quality(x, 10, 60, s[3])

    def gray(x: tf.Tensor) -> tf.Tensor:
        return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x))

    x = tf.cond(coin(0), lambda: small(image), lambda: image)
    x = tf.cond(coin(2), lambda: jpeg(x), lambda: x)
    x = tf.cond(coin(4), lambda: gray(x), lambda: x)
    return tf.ensure_shape(x, image.shape)
