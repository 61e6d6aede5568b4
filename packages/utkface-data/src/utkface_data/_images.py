"""What the index and the ``tf.data`` pipeline know about an image file before decoding it.

:func:`probe_image` reads a file's header (Pillow, no pixel data) and its last KiB: it refuses
missing, empty, non-JPEG/PNG, truncated and too-large files (the pixel limit, checked from the
header, so a decompression bomb is never decoded) and returns the EXIF orientation that the
pipeline's decoder applies. No TensorFlow here.

The reading rules are those of ``agegender_models.imageio`` (this package cannot import it; a
cross-package test checks that both readers give the same pixels): EXIF orientation applied,
16-bit samples to their high byte, CMYK as ``(255 - C) * (255 - K) // 255``, transparency
composited onto white, the same :data:`DEFAULT_MAX_PIXELS`.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_PIXELS", "ImageProbe", "exif_orientation", "probe_image", "too_large"]

# Decompression-bomb guard of every reader (agegender_models.imageio uses the same value):
# 8000 x 8000; 48-50 megapixel phone photos pass, a 12000 x 12000 PNG of 17 KB does not.
DEFAULT_MAX_PIXELS = 64_000_000

_JPEG = b"\xff\xd8\xff"
_PNG = b"\x89PNG\r\n\x1a\n"
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class ImageProbe:
    """``problem``: why the file is unusable (``None`` if it looks usable); ``orientation``: its
    EXIF orientation, 1-8 (1: upright); ``too_large``: refused by the pixel limit."""

    problem: str | None
    orientation: int = 1
    too_large: bool = False


def too_large(width: int, height: int, max_pixels: int) -> str:
    """The reason given for an image over the pixel limit."""
    return _over_the_limit(f"{width}x{height} = {width * height} pixels", max_pixels)


def _over_the_limit(pixels: str, max_pixels: int) -> str:
    return f"image too large: {pixels} exceeds max_pixels={max_pixels} (decompression-bomb guard; not decoded)"


def refused_by_pillow(exc: BaseException, max_pixels: int) -> str:
    """The same reason for an image so large that Pillow refuses even its header (over twice
    ``PIL.Image.MAX_IMAGE_PIXELS``: ``DecompressionBombError``, whose message names only the
    number of pixels); ``agegender_models.imageio.refused_by_pillow`` words it alike."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return _over_the_limit(f"{found.group(1)} pixels" if found else "more pixels than Pillow opens",
                           max_pixels)


def exif_orientation(image) -> int:  # image: PIL.Image.Image (Pillow imported lazily)
    """The EXIF orientation (1-8) in ``image``'s header, 1 when absent or invalid; never decodes
    the pixels (a PNG ``eXIf`` chunk counts when it comes before the image data)."""
    from PIL import Image

    raw = image.info.get("exif")
    if not raw:
        return 1
    try:
        exif = Image.Exif()
        exif.load(raw)
        value = exif.get(_ORIENTATION_TAG, 1)
    except Exception:  # a damaged EXIF block does not make the picture unreadable
        return 1
    return value if isinstance(value, int) and value in range(1, 9) else 1


def _read_ends(path: str | os.PathLike[str]) -> tuple[bytes, bytes] | str:
    """The first 24 bytes and the last KiB, or the reason they cannot be read."""
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
    except PermissionError:
        return "unreadable file (permission denied)"
    except OSError as exc:
        return f"cannot read file: {exc.strerror or exc}"
    return head, tail


def _header(path: str | os.PathLike[str], max_pixels: int) -> ImageProbe:
    """Open the file with Pillow (header only): size against the limit, EXIF orientation."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit at open; the size is checked here, by name
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                width, height = im.size
                orientation = exif_orientation(im)
    except Image.DecompressionBombError as exc:
        return ImageProbe(refused_by_pillow(exc, max_pixels), 1, True)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for bad headers
        first = (str(exc).strip().splitlines() or [""])[0]
        return ImageProbe(f"unreadable image header: {type(exc).__name__}: {first}".rstrip(": "))
    if width * height > max_pixels:
        return ImageProbe(too_large(width, height, max_pixels), orientation, True)
    return ImageProbe(None, orientation)


def probe_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageProbe:
    """Check one image file without decoding its pixels (about 50 us): missing or empty file,
    not a JPEG/PNG signature, header over ``max_pixels`` or unreadable, JPEG without an
    end-of-image marker near its end or PNG without ``IEND`` (truncated; padding or trailing data
    after the marker is fine, as for the decoders). Also returns the EXIF orientation."""
    ends = _read_ends(path)
    if isinstance(ends, str):
        return ImageProbe(ends)
    head, tail = ends
    if head.startswith(_JPEG):
        end_ok, truncated = b"\xff\xd9" in tail, "truncated JPEG (no end-of-image marker)"
    elif head.startswith(_PNG):
        end_ok, truncated = b"IEND" in tail, "truncated PNG (no IEND chunk)"
    else:
        return ImageProbe("not a JPEG or PNG file (bad signature)")
    probe = _header(path, max_pixels)
    if not probe.too_large and not end_ok:  # a cut header is a truncated file too
        return ImageProbe(truncated, probe.orientation)
    return probe
