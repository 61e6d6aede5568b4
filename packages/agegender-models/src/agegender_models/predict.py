"""Batch prediction from image arrays or files."""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

# both numpy/PIL only: the detectors' own packages load when a detector is built
from .detect import CHIP_MISMATCH
from .imageio import (
    DEFAULT_MAX_PIXELS,
    ENCODED,
    ImageReadError,
    read_image_reduced,
    resize_bilinear,
    to_rgb,
)

if TYPE_CHECKING:
    import keras

PREDICTED_GENDER_NAMES: tuple[str, str] = ("male", "female")
"""What ``Predictor`` writes as ``gender``: index 1 when the model's ``gender`` output, P(female),
is above the threshold, else index 0 (the training labels' codes: 0 male, 1 female)."""


# without a detector, an image whose longer side is over this times its shorter one is not a face
# chip (UTKFace's are square; a 3:2 photo is 1.5)
FAR_FROM_SQUARE = 1.25


def _to_rgb_array(
    image: Any, size: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """A file path, PIL image or HxW / HxWxC array (0-255) -> uint8 HxWx3 at ``size`` (h, w)
    (files and PIL images read by :func:`agegender_models.imageio.to_rgb`)."""
    arr = to_rgb(image, max_pixels=max_pixels)
    h, w = size
    if arr.shape[:2] != (h, w):
        # exactly as utkface_data's training pipeline resizes (bilinear, no antialiasing, rounded):
        # a model must see the same pixels at serving time as in training
        arr = resize_bilinear(arr, (h, w))
    return arr


class _DetectionError(RuntimeError):
    """The detector raised on one image (its message is already a complete reason)."""


def _reason(exc: BaseException, limit: int = 300) -> str:
    """One short line for an error list (TensorFlow messages can run to pages)."""
    if isinstance(exc, ImageReadError):  # the list names the file already
        return exc.reason
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    text = (
        first if isinstance(exc, _DetectionError) else f"{type(exc).__name__}: {first}".rstrip(": ")
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Predictions(list):
    """What :meth:`Predictor.predict` returns: the list of result dicts, in input order, and
    ``errors``, one ``{"file", "reason"}`` dict per input that gave no result (unreadable, too
    large, no face found). A list, so code written for the plain list keeps working."""

    def __init__(
        self, results: Iterable[dict[str, Any]] = (), errors: Iterable[dict[str, str]] = ()
    ) -> None:
        super().__init__(results)
        self.errors: list[dict[str, str]] = list(errors)

    def __repr__(self) -> str:
        return f"Predictions({list.__repr__(self)}, errors={self.errors!r})"


def _model_file(ref: str | os.PathLike | None) -> tuple[Path, str | None]:
    """The file of a ``.keras`` path or of a shipped model's name (``None``: the default), and
    its SHA-256 where the registry gives it (checked here)."""
    from .pretrained import list_pretrained, pretrained_info, pretrained_path

    if ref is None or (not os.path.isfile(ref) and str(ref) in list_pretrained()):
        name = None if ref is None else str(ref)
        return pretrained_path(name), pretrained_info(name)["sha256"]
    return Path(ref), None


def _load_file(path: Path) -> keras.Model:
    from .saving import load_model

    return load_model(path, compile=False)


class Predictor:
    """Age and gender for images.

    ``Predictor(model_or_path)`` takes a model from :func:`create_model`, a ``.keras`` path
    (loaded in safe mode) or the name of a shipped model; ``Predictor()`` uses the shipped
    default (:func:`agegender_models.load_pretrained`). :meth:`predict` takes one image, file path
    or image file's contents (``bytes`` or ``bytearray``: an upload; ``"file"`` is then None,
    ``"<bytes>"`` in ``errors``), a list of them, or an ``(N, H, W, 3)`` array; images
    are 0-255 RGB of any size/mode and are converted to RGB and resized to the model's input
    size. Files, bytes and PIL images are read by
    :func:`agegender_models.imageio.read_image`: EXIF orientation applied, 16-bit, CMYK,
    palette and transparent images converted by its rules (as the training pipeline reads them),
    images over ``max_pixels`` (default 64 million) refused without being decoded.

    It returns a :class:`Predictions` list, one dict per readable image, in input order::

        {"file": str | None, "age": float, "gender": "male" | "female", "p_female": float}

    ``gender`` is "female" when ``p_female > threshold`` (strictly, as Keras' binary accuracy and
    ``agegender_eval`` count it).

    **No input is dropped silently.** An input that gives no result (unreadable, too large, no
    face found) is not fatal: the others are still predicted, and it is listed with its reason
    as ``{"file", "reason"}`` in the returned list's ``errors`` (also ``predictor.errors``,
    reset at each call). ``predict(..., return_errors=True)`` returns ``(results, errors)``
    instead; without it, a ``UserWarning`` also says how many inputs failed.

    A model that is not an age and gender model (another library's, or one without a fixed
    input size) is refused at once with one line (``ValueError``; ``ModelFileError`` for a file).

    **Photos, not chips.** The models expect UTKFace-like chips (a face aligned and cropped
    tightly). For ordinary photos pass ``detector="auto"`` (YuNet with MTCNN's landmarks,
    ``"yunet-onet"``; or ``"yunet"``, ``"mtcnn"``, ``"haar"``, or any object with a
    ``detect_faces`` method; see :mod:`agegender_models.detect`: the YuNet detectors ship with the
    package, the others need ``pip install 'agegender-models[detect]'``). Each face
    found is cropped like a chip and predicted, giving one dict per face, in input order and left
    to right within an image (an image that already is a UTKFace-like chip, square with a level
    face filling it as a chip's does, is read as it is: :func:`~agegender_models.detect.is_chip`
    with ``chip_tolerance``; ``chip_tolerance=None`` crops every face again)::

        {"file", "face": int, "box": [x, y, w, h], "confidence": float, "age", "gender", "p_female"}

    (``box`` in pixels of the photo as stored, after its EXIF orientation is applied; YuNet's
    detectors also find the faces of a photo turned without its EXIF tag, see
    :class:`~agegender_models.detect.YuNetDetector`). A photo with no face is listed in
    ``errors`` as ``{"file": ..., "reason": "no face found"}``.

    **Runtime.** ``runtime="auto"`` (the default; ``$AGEGENDER_RUNTIME`` overrides it) runs the
    model on the fastest of Keras, TFLite and ONNX Runtime that passed a parity check against it,
    measured once per model and machine and cached; ``"keras"``, ``"tflite"`` or ``"onnx"``
    forces one, and a :class:`~agegender_models.runtime.Runner` is used as is (see
    :mod:`agegender_models.runtime`). ``predictor.runner.describe()`` says which runs. A model
    given by its path or name that has run on this machine before (on ``"auto"``, or on the
    ``"tflite"`` or ``"onnx"`` asked for now) starts from that cached runtime without loading
    Keras or TensorFlow (:func:`~agegender_models.runtime.cached_runner`; ``predictor.model``
    loads the Keras model when asked for).
    """

    def __init__(
        self,
        model_or_path: keras.Model | str | os.PathLike | None = None,
        *,
        threshold: float = 0.5,
        detector: Any = None,
        runtime: Any = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        chip_tolerance: float | None = CHIP_MISMATCH,
    ):
        from .runtime import Runner, cached_runner, get_runner, readable_digest

        self._source: Path | None = None
        digest = None
        if model_or_path is None or isinstance(model_or_path, str | os.PathLike):
            self._source, digest = _model_file(model_or_path)  # None: the shipped default
            if digest is None and self._source.is_file():
                digest = readable_digest(self._source)  # taken before the model is loaded
        self._digest = digest
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"`threshold` must be in (0, 1). Received: threshold={threshold}")
        if not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels <= 0:
            raise ValueError(
                f"`max_pixels` must be a positive int. Received: max_pixels={max_pixels!r}"
            )
        if chip_tolerance is not None and not (isinstance(chip_tolerance, int | float)
                                               and 0 <= chip_tolerance < 1):
            raise ValueError("`chip_tolerance` must be in [0, 1) or None. "
                             f"Received: chip_tolerance={chip_tolerance!r}")
        self.max_pixels = max_pixels
        self.chip_tolerance = chip_tolerance
        self.threshold = float(threshold)
        self.errors: list[dict[str, str]] = []
        self.detector = None
        self._detect_lock = threading.Lock()
        if detector is not None:
            from .detect import get_detector  # the detectors import the 'detect' extra lazily

            self.detector = get_detector(detector)
        # a model file run before: the runtime "auto" measured (or the one forced, converted),
        # without loading Keras
        cached = None
        if digest is not None and not isinstance(runtime, Runner):
            cached = cached_runner(self._source, runtime=runtime, digest=digest)
        self._model: keras.Model | None = None
        self._model_lock = threading.Lock()
        if cached is not None:
            self.runner, self.input_size = cached
            return
        model = model_or_path if self._source is None else _load_file(self._source)
        import keras

        from .saving import model_problem

        if not isinstance(model, keras.Model):
            raise TypeError(
                f"Predictor needs a keras.Model or a .keras path. Received: {type(model)}"
            )
        problem = model_problem(model)
        if problem is not None:
            raise ValueError(f"Predictor needs an age and gender model: {problem}")
        self._model = model
        self.input_size = tuple(int(d) for d in model.input_shape[1:3])
        # "auto" may convert and time the model once (cached)
        self.runner = get_runner(model, runtime, source=self._source, source_digest=digest)

    @property
    def model(self) -> keras.Model:
        """The Keras model; loaded on first use when the runner came from the cache (the file
        must still be the one the runner was made from)."""
        with self._model_lock:
            if self._model is None:
                from .runtime import file_digest
                from .saving import ModelFileError

                if file_digest(self._source) != self._digest:
                    raise ModelFileError(f"{self._source} has changed since this Predictor was "
                                         "made from it; make a new Predictor")
                self._model = _load_file(self._source)
        return self._model

    @model.setter
    def model(self, value: keras.Model) -> None:
        self._model = value

    @property
    def detector_name(self) -> str | None:
        """The detector's name (``"yunet-onet"``, ``"mtcnn"``, ...; another object's class name), or
        None when images are taken as chips."""
        if self.detector is None:
            return None
        return getattr(self.detector, "name", "") or type(self.detector).__name__

    def _items(self, images_or_paths: Any) -> list[Any]:
        if isinstance(images_or_paths, str | os.PathLike | Image.Image | ENCODED):
            return [images_or_paths]
        if isinstance(images_or_paths, np.ndarray):
            return list(images_or_paths) if images_or_paths.ndim == 4 else [images_or_paths]
        if isinstance(images_or_paths, Iterable):
            return list(images_or_paths)
        raise TypeError(
            "Expected an image, a path, an (N, H, W, 3) array or a list of them. "
            f"Received: {type(images_or_paths).__name__}"
        )

    def predict(
        self,
        images_or_paths: Any,
        *,
        batch_size: int = 32,
        return_errors: bool = False,
        progress: Callable[[int], Any] | None = None,
        workers: int | None = None,
    ) -> Predictions | tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """Predict. Returns :class:`Predictions` (the results, with ``.errors``); with
        ``return_errors=True`` the tuple ``(results, errors)``. Inputs that give no result are
        in ``errors`` with their reason, never dropped silently (see the class docstring).

        Inputs are read (and their faces found and cropped) by ``workers`` threads (default:
        up to 2, the CPUs there are), a few inputs ahead of the model, which runs a batch as soon
        as ``batch_size`` faces are ready; results keep the input order. ``progress`` is called
        with 1 after each input (e.g. a ``tqdm`` bar's ``update``)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}"
            )
        if workers is None:
            workers = max(1, min(2, os.cpu_count() or 1))
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"`workers` must be a positive int. Received: workers={workers!r}")
        results = Predictions()
        self.errors = results.errors  # the same list
        self._not_square: list[tuple[Any, int, int]] = []
        pending: list[tuple[str | None, dict[str, Any], np.ndarray]] = []
        for file, unnamed, outcome in self._prepared(self._items(images_or_paths), workers):
            if isinstance(outcome, BaseException):
                self.errors.append({"file": file or unnamed, "reason": _reason(outcome)})
            elif not outcome:
                self.errors.append({"file": file or unnamed, "reason": "no face found"})
            else:
                pending.extend((file, extra, arr) for extra, arr in outcome)
            while len(pending) >= batch_size:
                self._run(pending[:batch_size], results)
                del pending[:batch_size]
            if progress is not None:
                progress(1)
        if pending:
            self._run(pending, results)
        self._warn_not_square()
        return self._returned(results, return_errors)

    def _prepared(self, items: list[Any], workers: int):
        """``(file, its name in errors when it has none, crops or the exception)`` per input, in
        order; read ``workers`` at a time, a few inputs ahead (PIL's decoder and the model
        release the GIL)."""
        def prepare(item):
            try:
                return self._prepare(item)
            except Exception as exc:
                return exc

        files = [os.fspath(i) if isinstance(i, str | os.PathLike) else None for i in items]
        unnamed = ["<bytes>" if isinstance(i, ENCODED) else "<array>" for i in items]
        if workers == 1 or len(items) < 2:
            for file, name, item in zip(files, unnamed, items, strict=True):
                yield file, name, prepare(item)
            return
        from concurrent.futures import ThreadPoolExecutor

        ahead = 4 * workers  # bounded: a folder of 100,000 photos is not read into memory at once
        with ThreadPoolExecutor(workers, thread_name_prefix="agegender-read") as pool:
            queue = [pool.submit(prepare, item) for item in items[:ahead]]
            for i, file in enumerate(files):
                outcome = queue[i].result()
                queue[i] = None  # let the crops go once they are predicted
                if i + ahead < len(items):
                    queue.append(pool.submit(prepare, items[i + ahead]))
                yield file, unnamed[i], outcome

    def _prepare(self, item: Any) -> list[tuple[dict[str, Any], np.ndarray]]:
        """One input -> its model-sized crops: every face found (detector), else the image."""
        if self.detector is not None:
            return self._faces(item)
        rgb = to_rgb(item, max_pixels=self.max_pixels)
        height, width = rgb.shape[:2]
        if max(height, width) > FAR_FROM_SQUARE * min(height, width):
            self._not_square.append((item, width, height))
        return [({}, _to_rgb_array(rgb, self.input_size))]

    def _warn_not_square(self) -> None:
        """Without a detector every image is read whole as one face: say so when some are
        shaped like photos rather than face chips."""
        if self._not_square:
            item, width, height = self._not_square[0]
            name = (os.fspath(item) if isinstance(item, str | os.PathLike)
                    else "<bytes>" if isinstance(item, ENCODED) else "an array")
            logging.getLogger("agegender_models").warning(
                "%d of the images are far from square (e.g. %s: %dx%d), yet without a detector "
                "each is read whole as one face chip; for photos, find the faces (detector='auto'; "
                "agegender predict without --detect none)", len(self._not_square), name, width, height)

    def _run(self, batch: list[tuple[str | None, dict[str, Any], np.ndarray]],
             results: Predictions) -> None:
        p_female, age = self.runner(np.stack([arr for _, _, arr in batch]))
        for j, (file, extra, _) in enumerate(batch):
            results.append(
                {
                    "file": file,
                    **extra,
                    "age": float(age[j]),
                    "gender": PREDICTED_GENDER_NAMES[int(p_female[j] > self.threshold)],
                    "p_female": float(p_female[j]),
                }
            )

    def _returned(
        self, results: Predictions, return_errors: bool
    ) -> Predictions | tuple[list[dict[str, Any]], list[dict[str, str]]]:
        if return_errors:
            return list(results), list(results.errors)
        if results.errors:
            first = results.errors[0]
            warnings.warn(
                f"{len(results.errors)} input(s) gave no result, listed in the returned "
                f"list's .errors; e.g. {first['file']}: {first['reason']}",
                UserWarning,
                stacklevel=3,
            )
        return results

    def _faces(self, item: Any) -> list[tuple[dict[str, Any], np.ndarray]]:
        """Detect the faces in one image and crop each like a UTKFace chip, at the model's size."""
        from .detect import CHIP_SIZE, chip_side, crop_face, is_chip

        # a file (or its bytes): upright, by imageio's rules; a large JPEG decoded at a reduced
        # scale when the detector shrinks photos anyway (its max_side), read again whole only if
        # a face would be cropped from fewer pixels than a chip has
        detect_side = getattr(self.detector, "max_side", None)
        if isinstance(item, str | os.PathLike | ENCODED) and isinstance(detect_side, int) and detect_side >= 1:
            rgb, factor = read_image_reduced(item, detect_side, max_pixels=self.max_pixels)
        else:
            rgb, factor = to_rgb(item, max_pixels=self.max_pixels), 1
        try:
            with self._detect_lock:  # one image at a time: detectors need not be thread-safe
                faces = list(self.detector.detect_faces(rgb))
        except Exception as exc:
            raise _DetectionError(f"face detection failed: {_reason(exc)}") from None
        if factor > 1 and any(chip_side(face) < CHIP_SIZE for face in faces):
            rgb = to_rgb(item, max_pixels=self.max_pixels)
            faces, factor = [face.scaled(factor) for face in faces], 1
        out = []
        height, width = rgb.shape[:2]
        for index, face in enumerate(faces):
            tolerance = self.chip_tolerance
            if tolerance is not None and is_chip(face, width, height, tolerance):
                # already a chip: as it is, shrunk (antialiased, as crop_face shrinks) if larger
                chip = rgb if max(width, height) <= CHIP_SIZE else np.asarray(
                    Image.fromarray(rgb).resize((CHIP_SIZE, CHIP_SIZE), Image.Resampling.BILINEAR))
            else:
                chip = crop_face(rgb, face, CHIP_SIZE)
            extra = {
                "face": index,
                "box": [round(v * factor) for v in face.box],  # pixels of the whole photo
                "confidence": round(face.confidence, 4),
            }
            out.append((extra, _to_rgb_array(chip, self.input_size)))
        return out


def predict(
    model_or_path: keras.Model | str | os.PathLike,
    images_or_paths: Any,
    *,
    batch_size: int = 32,
    detector: Any = None,
    runtime: Any = None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """One-shot :class:`Predictor`: returns ``(results, errors)``."""
    return Predictor(model_or_path, detector=detector, runtime=runtime).predict(
        images_or_paths, batch_size=batch_size, return_errors=True
    )
