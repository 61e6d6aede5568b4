"""Read image files the same way everywhere: upright, RGB, and never a decompression bomb.

    from agegender_models.imageio import read_image

    rgb = read_image("photo.jpg")   # H x W x 3 uint8, as an image viewer shows the photo
    rgb = read_image(data)          # the same from the file's bytes (an upload, an object store)

:class:`~agegender_models.Predictor` and :mod:`agegender_models.detect` read files (and
convert PIL images) only through this module. ``utkface_data``'s training pipeline has its
own reader (it cannot import this package) that applies the same rules, and a cross-package
test (``tests/test_image_readers.py``) checks that the two give the same pixels:

* **EXIF orientation** (tag 274, read from the file's header) is applied, so a phone photo taken
  sideways comes out upright.
* **16-bit** images keep the high byte of each sample (65535 -> 255), as libpng and TensorFlow
  do; ``Image.convert("RGB")`` would clip a 16-bit grayscale PNG to an all-white image.
* **CMYK** (JPEG): ``R = (255 - C) * (255 - K) // 255`` (likewise G, B), TensorFlow's
  formula; no colour management.
* **Transparency** (RGBA, LA, a palette or a colour key with transparency) is composited onto
  white, as a viewer shows the picture on a white page: ``round((c * a + 255 * (255 - a)) / 255)``.
* Palette, 1-bit, grayscale and the other modes: Pillow's ``convert("RGB")``.
* **A pixel limit** (``max_pixels``, default :data:`DEFAULT_MAX_PIXELS`): an image whose header
  claims more pixels is refused with :class:`ImageTooLargeError` before anything is decoded.
  Pillow's own guard (``Image.MAX_IMAGE_PIXELS``; refusal at twice that) applies as well.
* Multi-frame files (GIF, TIFF): the first frame.
* **HEIC/HEIF** (an iPhone's photos) with the optional ``heif`` extra (``pip install
  'agegender-models[heif]'``: the ``pillow-heif`` plugin, registered with Pillow when this module
  is imported); without it such a file is refused with a reason that says so. The plugin applies
  the photo's rotation itself and leaves its EXIF orientation at 1, so nothing turns twice.
* 32-bit floating-point pixels (a TIFF of mode ``F``) are refused by name: they have no
  standard 0-255 scale.

:func:`read_image_reduced` reads a large JPEG at 1/2, 1/4 or 1/8 of its size straight from its
DCT coefficients (libjpeg's scaled decoding, Pillow's ``draft``), several times faster than
decoding it whole and shrinking it: what face detection needs from a phone photo.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from typing import Any

import numpy as np
from PIL import Image

try:  # the optional `heif` extra
    import pillow_heif
except ImportError:
    pillow_heif = None
else:
    # Pillow's common formats (JPEG, PNG, ...) first: a JPEG is then recognised before the
    # plugin's own check of its header (registered first, it was tried on every file)
    Image.preinit()
    pillow_heif.register_heif_opener()

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ENCODED",
    "ImageReadError",
    "ImageTooLargeError",
    "check_size",
    "exif_orientation",
    "read_image",
    "read_image_reduced",
    "resize_bilinear",
    "to_rgb",
    "unreadable",
    "unsupported_format",
]

ENCODED = bytes | bytearray
"""The types read as an image file's bytes (what a web upload or an object store gives); a path
given as bytes is not one of them (``os.fsdecode`` it first)."""

DEFAULT_MAX_PIXELS = 64_000_000
"""The largest image read (width x height): 8000 x 8000. 48-50 megapixel phone photos pass
(8160 x 6120); a 12000 x 12000 PNG of 17 KB does not. ``utkface_data`` uses the same value."""

_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transposition that shows the stored pixels upright (as
# PIL.ImageOps.exif_transpose does)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
# the ISO base media file brands of HEIF images coded with HEVC (the major brand: bytes 8-12,
# after "ftyp"); "mif1"/"msf1" (any HEIF) count unless an AVIF brand is among the compatible ones
_HEIC_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx")
_HEIF_BRANDS = (b"mif1", b"msf1")


class ImageReadError(ValueError):
    """An image file cannot be read. ``path`` names it, ``reason`` says why (one line); the
    message is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ImageTooLargeError(ImageReadError):
    """The image's header claims more than ``max_pixels`` pixels (a decompression bomb, or a
    photo too large to read): refused before decoding."""


def _check_max_pixels(max_pixels: Any) -> int:
    if not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels <= 0:
        raise ValueError(
            f"`max_pixels` must be a positive int. Received: max_pixels={max_pixels!r}"
        )
    return max_pixels


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) stored in ``image``'s header; 1 (upright) when there is none
    or it is invalid. Never decodes the pixels (a PNG's ``eXIf`` chunk counts when it comes
    before the image data)."""
    raw = image.info.get("exif")
    try:
        if raw:
            exif = Image.Exif()
            exif.load(raw)
        elif image.format in (None, "JPEG", "PNG"):
            return 1  # no EXIF block (PNG's getexif() would decode the image to look further)
        else:
            exif = image.getexif()  # TIFF and others keep the tags in their header
        value = exif.get(_ORIENTATION_TAG, 1)
    except Exception:  # a damaged EXIF block does not make the picture unreadable
        return 1
    return value if isinstance(value, int) and value in range(1, 9) else 1


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA uint8 -> RGB uint8 composited onto white, rounded (the exact integer form of
    ``round((c * a + 255 * (255 - a)) / 255)``: the quotient is never exactly x.5)."""
    color = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:].astype(np.uint32)
    return ((color * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _pixels_to_rgb(image: Image.Image) -> np.ndarray:
    """A loaded PIL image of any mode -> H x W x 3 uint8 by the module's rules."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return np.asarray(image, dtype=np.uint8)
    if mode in _SIXTEEN_BIT:
        gray = (np.clip(np.asarray(image).astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "CMYK":
        cmyk = np.asarray(image).astype(np.uint32)
        return ((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) // 255).astype(np.uint8)
    if mode in _ALPHA_MODES or "transparency" in image.info:
        return _on_white(np.asarray(image.convert("RGBA"), dtype=np.uint8))
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def refused_by_pillow(exc: BaseException, max_pixels: int) -> str:
    """The pixel limit's reason for an image so large that Pillow refuses even its header (over
    twice ``Image.MAX_IMAGE_PIXELS``: ``DecompressionBombError``, which names only its pixels)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return _over_the_limit(f"{found.group(1)} pixels" if found else "more pixels than Pillow opens",
                           max_pixels)


def _over_the_limit(pixels: str, max_pixels: int) -> str:
    return f"image too large: {pixels} exceeds max_pixels={max_pixels} (decompression-bomb guard; not decoded)"


def check_size(image: Image.Image, *, max_pixels: int, name: str) -> None:
    """Refuse an opened (not yet decoded) image whose header claims more than ``max_pixels``
    pixels: :class:`ImageTooLargeError` naming ``name``."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(name, _over_the_limit(f"{width}x{height} = {width * height} pixels",
                                                        max_pixels))


def _image_to_rgb(image: Image.Image, *, max_pixels: int, name: str, reduce_to: int | None = None,
                  ) -> np.ndarray:
    """Check the size from the header, decode (a JPEG at a reduced scale whose longer side stays
    at least ``reduce_to``, when given), orient and convert one PIL image."""
    check_size(image, max_pixels=max_pixels, name=name)
    # MPO: a phone's JPEG with a second picture (a depth map, a preview) after the first
    if reduce_to is not None and image.format in ("JPEG", "MPO") and max(image.size) >= 2 * reduce_to:
        width, height = image.size
        factor = max(image.size) / reduce_to  # draft keeps at least the requested size
        image.draft(image.mode, (max(1, int(width / factor)), max(1, int(height / factor))))
    if image.mode == "F":  # from the header: refused before anything is decoded
        raise ImageReadError(name, "cannot read image: 32-bit floating-point pixels (mode F) have no "
                                   "standard 0-255 scale; save it with 8 or 16 bits per sample")
    orientation = exif_orientation(image)
    try:
        image.load()
        if orientation != 1:
            image = image.transpose(_TRANSPOSE[orientation])
        return np.ascontiguousarray(_pixels_to_rgb(image))
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for bad data
        raise ImageReadError(name, f"cannot decode image: {_one_line(exc)}") from None


def read_image(path: str | os.PathLike | bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file (a path, or the file's contents as ``bytes`` or ``bytearray``, named
    ``<bytes>`` in errors) as an upright H x W x 3 uint8 RGB array (see the module docstring for
    the rules).

    Raises ``FileNotFoundError`` for a missing file, :class:`ImageTooLargeError` for an image
    over ``max_pixels`` (not decoded) and :class:`ImageReadError` for anything else that cannot
    be read (not an image, corrupt or truncated data, no permission); both name the file.
    """
    return _read(path, max_pixels=max_pixels)[0]


def read_image_reduced(path: str | os.PathLike | bytes, reduce_to: int, *,
                       max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, int]:
    """:func:`read_image`, but a JPEG at least twice ``reduce_to`` on its longer side is decoded
    at 1/2, 1/4 or 1/8 of its size (the smallest that keeps the longer side at least
    ``reduce_to``). Returns ``(rgb, factor)``: a pixel (x, y) of ``rgb`` is (x * factor,
    y * factor) of the full image (factor 1: read whole). ``max_pixels`` applies to the full
    size, before anything is decoded."""
    if not isinstance(reduce_to, int) or reduce_to < 1:
        raise ValueError(f"`reduce_to` must be a positive int. Received: reduce_to={reduce_to!r}")
    return _read(path, max_pixels=max_pixels, reduce_to=reduce_to)


def _read(path: str | os.PathLike | bytes, *, max_pixels: int, reduce_to: int | None = None,
          ) -> tuple[np.ndarray, int]:
    _check_max_pixels(max_pixels)
    encoded = isinstance(path, ENCODED)
    name = "<bytes>" if encoded else os.fspath(path)
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit at open; the size is checked below, by name
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(path) if encoded else name)
    except FileNotFoundError:
        if os.path.islink(name):
            raise FileNotFoundError(f"image file not found: {name} is a broken symbolic link "
                                    f"(to {os.readlink(name)})") from None
        raise FileNotFoundError(f"image file not found: {name}") from None
    except IsADirectoryError:
        raise ImageReadError(name, "cannot read image: a folder, not an image file") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(name, refused_by_pillow(exc, max_pixels)) from None
    except Image.UnidentifiedImageError:
        if encoded:
            head = bytes(path[:64])
        else:
            with open(name, "rb") as f:
                head = f.read(64)
        raise ImageReadError(name, unreadable(head)) from None
    except Exception as exc:
        raise ImageReadError(name, f"cannot read image: {_one_line(exc)}") from None
    with image:
        rgb = _image_to_rgb(image, max_pixels=max_pixels, name=name, reduce_to=reduce_to)
        # the scale libjpeg decoded at (Pillow's draft() keeps it; sizes are rounded up, so
        # the sizes' ratio is not it for a narrow image)
        config = getattr(image, "decoderconfig", ())
        return rgb, int(config[0]) if reduce_to is not None and config else 1


def unsupported_format(head: bytes) -> str | None:
    """Why a file that Pillow (with the plugins installed) did not recognise is still an image
    we know of, from its first bytes ``head`` (its ``ftyp`` box: 64 are enough); None when it
    is none we know."""
    if head[4:8] != b"ftyp" or pillow_heif is not None:
        return None
    brand, compatible = head[8:12], head[16:int.from_bytes(head[:4], "big")]
    if brand in _HEIC_BRANDS or (brand in _HEIF_BRANDS and b"avif" not in compatible and b"avis" not in compatible):
        return ("a HEIC/HEIF photo: reading it needs the pillow-heif plugin (pip install "
                "'agegender-models[heif]'; from a checkout of agegender: pip install './packages/agegender-models[heif]')")
    return None


def unreadable(head: bytes) -> str:
    """Why a file Pillow does not recognise is not read, from its first 64 bytes: empty, a format
    that needs an extra (HEIC), or not an image. The reason every reader (``predict``,
    ``serve``) gives."""
    reason = ("empty file" if not head else unsupported_format(head)
              or "not an image Pillow can read (unknown format or not an image file)")
    return f"cannot read image: {reason}"


def to_rgb(image: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image file path, an image file's bytes, a PIL image or an H x W / H x W x 1 /
    H x W x 3 / H x W x 4 array (0-255) -> H x W x 3 uint8 RGB.

    Paths and bytes go through :func:`read_image`; PIL images follow the same rules
    (orientation, modes, ``max_pixels`` before decoding a lazily opened one). Arrays are taken
    as they are: gray is repeated, a fourth channel is dropped, other dtypes are rounded and
    clipped to 0-255.
    """
    if isinstance(image, str | os.PathLike | ENCODED):
        return read_image(image, max_pixels=max_pixels)
    if isinstance(image, Image.Image):
        name = getattr(image, "filename", "") or "<image>"
        return _image_to_rgb(image, max_pixels=_check_max_pixels(max_pixels), name=name)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim != 3 or arr.shape[-1] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(
            f"`image` must be an HxW or HxWx{{1,3,4}} array. Received: image.shape={arr.shape}"
        )
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _bilinear_axis(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index along one axis: the lower and upper source index and the weight of
    the upper, with half-pixel centres, as TensorFlow's resize computes them (float32)."""
    scale = np.float32(in_size / out_size)
    source = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(source)
    lower = np.maximum(floor, 0).astype(np.intp)
    upper = np.minimum(np.ceil(source), in_size - 1).astype(np.intp)
    return lower, upper, (source - floor).astype(np.float32)


def resize_bilinear(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An HxWxC uint8 image resized to ``size`` (h, w) as ``tf.image.resize(..., "bilinear",
    antialias=False)`` resizes it (half-pixel centres, float32), rounded back to uint8: the
    training pipeline's resize, in numpy, so that prediction needs no TensorFlow."""
    height, width = size
    y0, y1, dy = _bilinear_axis(height, rgb.shape[0])
    x0, x1, dx = _bilinear_axis(width, rgb.shape[1])
    top, bottom = rgb[y0], rgb[y1]  # the rows needed, then the pixels, before float32
    top_left, top_right = top[:, x0].astype(np.float32), top[:, x1].astype(np.float32)
    bottom_left, bottom_right = bottom[:, x0].astype(np.float32), bottom[:, x1].astype(np.float32)
    dx = dx[None, :, None]
    top = top_left + (top_right - top_left) * dx
    bottom = bottom_left + (bottom_right - bottom_left) * dx
    out = top + (bottom - top) * dy[:, None, None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
