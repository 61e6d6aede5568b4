"""Find faces in ordinary photos and crop them the way UTKFace chips are cropped.

The models are trained on UTKFace chips: faces detected, aligned (eyes level) and cropped tightly
to 200x200. Fed a whole photo, or a face cropped differently, they give wrong ages. This module
turns a photo into chips::

    from agegender_models.detect import crop_face, get_detector, to_rgb

    detector = get_detector()                    # "auto"; or "yunet-onet", "yunet", "mtcnn", "haar", or any
                                                 # object with a detect_faces() method
    image = to_rgb("photo.jpg")                  # or a PIL image, or an HxW/HxWx3/HxWx4 array
    for face in detector.detect_faces(image):
        chip = crop_face(image, face)            # 200x200x3 uint8, like a UTKFace chip

Files and PIL images are read by :func:`agegender_models.imageio.to_rgb`, the package's one
image reader: EXIF orientation applied (boxes are in pixels of the upright photo), 16-bit, CMYK,
palette and transparent images converted by its rules, images over its pixel limit refused
before decoding.

Detectors (each works offline: the first two ship their networks with this package; the last
two, ``pip install 'agegender-models[detect]'``, ship their weights in their wheels):

* ``"auto"`` (default): ``"yunet-onet"``.
* ``"yunet-onet"``: YuNet's faces, each given five landmarks by MTCNN's last stage (ONet) on a
  48x48 patch: YuNet's speed, and crops the models read as well as MTCNN's. Both networks ship
  with this package and run on LiteRT (:mod:`agegender_models.onet`; no extra, no TensorFlow).
* ``"yunet"``: YuNet, libfacedetection's detector, its network shipped with this package and run
  by LiteRT (:mod:`agegender_models.yunet`; no extra needed); a box, a confidence and five
  landmarks per face, many times faster than MTCNN on 2 CPU cores.
* ``"mtcnn"``: the ``mtcnn`` package (TensorFlow); a box, a confidence and five landmarks.
* ``"haar"``: OpenCV's frontal-face Haar cascade; a box only (no landmarks, no rotation).
  Lighter, misses turned faces.

Crops are aligned on the landmarks, by each detector's own measured geometry. An image that
already is such a chip (square, a face filling it as a chip's face does, level:
:func:`is_chip`) is better read as it is than cropped again; :class:`~agegender_models.Predictor`
does so.

Any object with a ``detect_faces(image) -> list[Face]`` method can be passed instead of a name
(tests use a fake one). Large photos are downscaled so their longer side is at most ``max_side``
for detection, and small ones enlarged to ``min_side`` where a detector has one (YuNet's: 160
px); boxes and landmarks are mapped back and the crop is taken from the original.

**Chip geometry.** The constants below were measured by running both detectors on 1,000 real
chips of ``crop_part1_5000`` (random sample, seed 0; each chip edge-padded by 50 % so nothing is
clipped) -- medians, as fractions of the chip side::

    python bench/measure_chip_geometry.py --data-dir ../shared/utkface/crop_part1_5000 \\
        --n 1000 --seed 0 --out bench/chip_geometry.json

YuNet's were measured the same way (``--yunet-only``, bench/chip_geometry_yunet.json).
A landmark crop puts the midpoint of the eyes at ``CHIP_EYE_CENTER`` with the eyes level, and
scales the face so that the chip side equals the mean of two estimates, ``eye distance /
CHIP_EYE_DISTANCE`` and ``eye-to-mouth distance / CHIP_EYE_MOUTH`` (on the measured chips this
mean predicted the chip side better than either alone or their maximum; see bench/RESULTS.md).
A box-only crop (Haar, or a face without landmarks) puts the box centre at ``CHIP_BOX_CENTER`` and
makes the chip side ``box width / CHIP_BOX_WIDTH``. Pixels outside the photo repeat its edge.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

# one image reader for the package: a path, a PIL image or an array -> upright RGB uint8
# (EXIF orientation, 16-bit/CMYK/alpha rules, pixel limit); re-exported here
from .imageio import to_rgb
from .onet import PATCH as ONET_PATCH  # numpy only: the network loads when a detector is built

CHIP_SIZE = 200
# MTCNN landmarks in a chip (fractions of the chip side; medians over 1,000 chips). MTCNN gives
# landmarks as pixel indices (measured eye centre 0.4900, 0.2900); here they are pixel centres,
# +0.5 px of 200.
CHIP_EYE_CENTER = (0.4925, 0.2925)
CHIP_EYE_DISTANCE = 0.3901
CHIP_EYE_MOUTH = 0.3961
# YuNet's landmarks sit elsewhere on the same face (its eye centre 2.5 px of 200 to the left,
# eyes 2.7 % further apart, mouth 2.2 % nearer): its own medians over the same 1,000 chips
# (pixel centres; bench/chip_geometry_yunet.json), so that both detectors crop alike.
LANDMARK_GEOMETRY = {
    "mtcnn": (CHIP_EYE_CENTER, CHIP_EYE_DISTANCE, CHIP_EYE_MOUTH),
    # MTCNN's landmark network on YuNet's boxes (YuNetONetDetector): MTCNN's geometry
    "yunet-onet": (CHIP_EYE_CENTER, CHIP_EYE_DISTANCE, CHIP_EYE_MOUTH),
    "yunet": ((0.4800, 0.2925), 0.4005, 0.3876),
}
# Haar boxes in a chip (fractions of the chip side; medians over 1,000 chips)
CHIP_BOX_CENTER = (0.4950, 0.4150)
CHIP_BOX_WIDTH = 1.0450

# A face whose chip_mismatch() is at most this is read from the whole image, which already is a
# chip: cropping it again would only resample it twice and move it by the landmarks' noise. Set
# from geometry alone: 4,245 of 4,248 train+val UTKFace chips are under its size and centre
# terms (max 0.28), the 118 faces of ../shared/photos all over them (min 0.335; FairFace's looser
# crops 0.36-0.6). Its tilt term (0.25 rad, 14°) leaves a tilted face to crop_face, which levels
# it: UTKFace's chips are level (4 of those 4,245 over 15°, by ONet's landmarks) and training
# does not rotate them.
CHIP_MISMATCH = 0.25
# ... and only a square image (to within this fraction of its side): UTKFace's chips are square,
# and a taller or wider image would be stretched into the model's square input
CHIP_SQUARE = 0.05

DETECTORS = ("auto", "yunet-onet", "yunet", "mtcnn", "haar")
# the packages are not on PyPI yet: the hint names the checkout's folder too
EXTRA_HINT = ("pip install 'agegender-models[detect]' (from a checkout of agegender: "
              "pip install './packages/agegender-models[detect]')")
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True)
class Face:
    """One detected face, in pixels of the image given to the detector.

    ``box`` is ``(x, y, width, height)``; ``landmarks`` maps some of ``LANDMARKS`` to ``(x, y)``
    ("left" = the eye on the left of the upright face: of the image, unless the face was found
    in the image turned, see :class:`YuNetDetector`) or is empty for box-only detectors.
    ``detector`` names whose landmarks they are (a key of ``LANDMARK_GEOMETRY``; others are
    taken as MTCNN's), which :func:`crop_face` needs to crop like a chip.
    """

    box: tuple[float, float, float, float]
    confidence: float = 1.0
    landmarks: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    detector: str = "mtcnn"

    def __post_init__(self) -> None:
        box = tuple(float(v) for v in self.box)
        if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
            raise ValueError(
                f"`box` must be (x, y, width, height) with width, height > 0. Received: box={self.box!r}"
            )
        object.__setattr__(self, "box", box)
        object.__setattr__(self, "confidence", float(self.confidence))
        marks = {str(k): (float(v[0]), float(v[1])) for k, v in dict(self.landmarks).items()}
        object.__setattr__(self, "landmarks", marks)

    def scaled(self, factor: float) -> Face:
        """The same face in an image ``factor`` times as large."""
        return Face(
            tuple(v * factor for v in self.box),
            self.confidence,
            {k: (x * factor, y * factor) for k, (x, y) in self.landmarks.items()},
            self.detector,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [round(v) for v in self.box],
            "confidence": round(self.confidence, 4),
            "landmarks": {k: [round(x, 1), round(y, 1)] for k, (x, y) in self.landmarks.items()},
        }


@runtime_checkable
class FaceDetector(Protocol):
    """Anything with ``detect_faces(image) -> list[Face]`` (image: HxWx3 uint8 RGB)."""

    def detect_faces(self, image: np.ndarray) -> list[Face]: ...


def _missing_extra(name: str, exc: ImportError) -> ImportError:
    return ImportError(f"the {name!r} face detector needs the 'detect' extra: {EXTRA_HINT} ({exc})")


class _DownscalingDetector:
    """Shared by the built-in detectors: check the image, downscale it to ``max_side`` (or
    enlarge it to ``min_side``, where given), detect, map the faces back, sort them left to
    right."""

    name = ""

    def __init__(self, *, max_side: int = 1024, min_face_size: int = 20, min_side: int | None = None) -> None:
        if not isinstance(max_side, int) or max_side < 64:
            raise ValueError(f"`max_side` must be an int >= 64. Received: max_side={max_side!r}")
        if min_side is not None and (isinstance(min_side, bool) or not isinstance(min_side, int)
                                     or not 0 < min_side <= max_side):
            raise ValueError(f"`min_side` must be None or an int in [1, max_side={max_side}]. "
                             f"Received: min_side={min_side!r}")
        self.min_side = min_side
        if not isinstance(min_face_size, int) or min_face_size < 12:
            raise ValueError(
                f"`min_face_size` must be an int >= 12. Received: min_face_size={min_face_size!r}"
            )
        self.max_side = max_side
        self.min_face_size = min_face_size

    def _detect(self, rgb: np.ndarray) -> list[Face]:  # pragma: no cover - abstract
        raise NotImplementedError

    # a photo whose best face scores below this is also searched turned (None: never); see
    # YuNetDetector, the one detector whose scores it was measured for
    turn_below: float | None = None

    def detect_faces(self, image: Any) -> list[Face]:
        return self.detect_faces_turned(image)[0]

    def detect_faces_turned(self, image: Any) -> tuple[list[Face], int | None]:
        """:meth:`detect_faces`, and the quarter turns (counter-clockwise) its faces were found
        at: None when the photo was not searched turned (see ``turn_below``), else 0-3."""
        rgb = to_rgb(image)
        faces = self._refine(rgb, self._find(rgb))
        if self.turn_below is None or _best_score(faces, default=-1.0) >= self.turn_below:
            return faces, None
        turns, found = _best_turn(rgb, faces, self._find)
        if turns == 0:
            return faces, 0
        turned = np.ascontiguousarray(np.rot90(rgb, turns))
        return _left_to_right([_turned_back(f, turns, rgb.shape) for f in self._refine(turned, found)]), turns

    def _refine(self, rgb: np.ndarray, faces: list[Face]) -> list[Face]:
        """Faces found in ``rgb`` made final (a subclass places other landmarks); the search
        for a turn scores the faces before this, and refines only the turn it keeps."""
        return faces

    def _find(self, rgb: np.ndarray) -> list[Face]:
        """Faces in ``rgb``, detected with its longer side shrunk to ``max_side`` or enlarged
        to ``min_side`` (a small photo's faces are too small for the network as they are),
        in ``rgb``'s own pixels."""
        h, w = rgb.shape[:2]
        side = max(h, w)
        target = min(self.max_side, max(side, self.min_side or 0))
        factor = side / target
        if factor != 1.0:
            resample = Image.Resampling.BILINEAR if factor > 1 else Image.Resampling.BICUBIC
            rgb = np.asarray(Image.fromarray(rgb).resize(
                (max(1, round(w / factor)), max(1, round(h / factor))), resample))
        return _left_to_right([f.scaled(factor) if factor != 1.0 else f for f in self._detect(rgb)])

    def __repr__(self) -> str:
        turn = "" if self.turn_below is None else f", turn_below={self.turn_below}"
        enlarge = "" if self.min_side is None else f", min_side={self.min_side}"
        return (
            f"{type(self).__name__}(max_side={self.max_side}{enlarge}, min_face_size={self.min_face_size}{turn})"
        )


def _confidence(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"`min_confidence` must be in [0, 1]. Received: min_confidence={value!r}")
    return float(value)


class MTCNNDetector(_DownscalingDetector):
    """MTCNN (the ``mtcnn`` package, TensorFlow): boxes, confidences and five landmarks.

    Faces below ``min_confidence`` are dropped.
    """

    name = "mtcnn"

    def __init__(
        self, *, min_confidence: float = 0.9, max_side: int = 1024, min_face_size: int = 20,
        min_side: int | None = None,
    ) -> None:
        super().__init__(max_side=max_side, min_face_size=min_face_size, min_side=min_side)
        self.min_confidence = _confidence(min_confidence)
        try:
            from mtcnn import MTCNN
        except ImportError as exc:
            raise _missing_extra(self.name, exc) from None
        self._mtcnn = MTCNN()

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        if min(rgb.shape[:2]) < 12:  # below MTCNN's smallest window
            return []
        found = self._mtcnn.detect_faces(rgb, min_face_size=self.min_face_size)
        return [
            Face(
                tuple(float(v) for v in f["box"]),
                float(f["confidence"]),
                {k: (float(v[0]), float(v[1])) for k, v in f.get("keypoints", {}).items()},
            )
            for f in found
            if float(f["confidence"]) >= self.min_confidence and f["box"][2] > 0 and f["box"][3] > 0
        ]


class YuNetDetector(_DownscalingDetector):
    """YuNet (libfacedetection's network, BSD-3-Clause; shipped with this package as
    ``pretrained/yunet.tflite`` and run by LiteRT: :class:`agegender_models.yunet.YuNet`):
    boxes, confidences and five landmarks. The same detections as libfacedetection's own C++
    (checked face for face against the ``yuface`` wheel by a test), 2-4x faster than it on 2
    cores and on any platform TensorFlow runs on.

    The photo is shrunk to ``max_side`` (640 px by default: the network's speed follows the pixel
    count; on ``../shared/photos`` it found a face in every photo MTCNN did at 640 px, see
    bench/RESULTS.md). Faces below ``min_confidence`` or narrower than ``min_face_size`` pixels
    (of the photo as the network sees it: shrunk, or enlarged, below) are dropped: at 0.6, 32 of the 33 photos of ``../shared/photos`` whose
    faces are counted get exactly that count (0.8: all 33, but a third of 0.6's faces in a
    crowd). (libfacedetection never returns a face under 0.2; a lower ``min_confidence`` does.)

    **Small photos.** A photo under ``min_side`` (160 px) on its longer side is enlarged to it
    (bicubic) for detection; the faces come back in its own pixels. As they are, YuNet misses
    faces of about 10-16 px: the 68 labelled photos of ``../shared/photos`` shrunk to 64 px had
    a face found in 55, at 96 px in 63; enlarged, in all 68 at both (gender of their largest
    faces 0.65 -> 0.82 and 0.81 -> 0.87). 160 was chosen among 160-320 by a rule written before
    the sweep (notebook); it enlarges none of the 200-px UTKFace chips. ``min_side=None``
    enlarges nothing.

    **Sideways photos.** A photo whose best face scores below ``turn_below`` (0.9), or that has
    none, is searched again turned 90, 180 and 270 degrees, and the turn whose best face scores
    highest wins; its faces come back in the photo's own pixels, their landmarks where the eyes
    and mouth are, so :func:`crop_face` turns each face upright. YuNet's landmarks stay upright on
    a sideways face, so without this a photo turned without an EXIF tag is read wrong (the 68
    labelled photos turned 90 degrees: faces in 35, gender 0.28). A turn wins only clearly: its
    best face at least 0.85 and 0.05 over the photo as it is (``TURN_MIN_SCORE``,
    ``TURN_MARGIN``), and no fewer faces. The thresholds were set on detection scores alone (no
    labels) of the 74 photos of ``../shared/photos`` (0.877-0.952 upright, at most 0.882 turned
    90 or 270 degrees) and of the 1,500 UTKFace validation and test chips; see the notebook for
    how they hold on the training chips, which they were not set on. ``turn_below=None`` turns
    nothing.
    """

    name = "yunet"

    def __init__(
        self, *, min_confidence: float = 0.6, max_side: int = 640, min_face_size: int = 12,
        turn_below: float | None = 0.9, min_side: int | None = 160,
    ) -> None:
        super().__init__(max_side=max_side, min_face_size=min_face_size, min_side=min_side)
        self.min_confidence = _confidence(min_confidence)
        if turn_below is not None and (isinstance(turn_below, bool) or not (
                isinstance(turn_below, int | float) and 0 <= turn_below <= 1)):
            raise ValueError(f"`turn_below` must be in [0, 1] or None. Received: turn_below={turn_below!r}")
        self.turn_below = None if turn_below is None else float(turn_below)
        from .yunet import YuNet

        self._network = YuNet()

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        faces = []
        # a row: confidence (0-1), box x, y, w, h, then 5 landmarks (x, y): the eye on the left
        # of the image, the other eye, the nose tip, the mouth corners left and right
        for row in self._network.detect(rgb, score_threshold=self.min_confidence).astype(np.float64):
            confidence, box, marks = row[0], row[1:5], row[5:15].reshape(5, 2)
            if min(box[2], box[3]) < self.min_face_size:
                continue
            faces.append(Face(tuple(float(v) for v in box), float(confidence),
                              {k: (float(x), float(y)) for k, (x, y) in zip(LANDMARKS, marks, strict=True)},
                              self.name))
        return faces


# libfacedetection's one entry point, `int* facedetect_cnn(unsigned char* result_buffer,
# unsigned char* bgr, int width, int height, int step)` (C++ name, as built into yuface 2023.5.1's
# Linux wheel): the reference the shipped network is tested against (and was made from: see
# agegender_models.yunet). Called through ctypes with a buffer of our own, because yuface's own
# binding mallocs a 36 KB result buffer per call and never frees it.
_FACEDETECT_SYMBOL = "_Z14facedetect_cnnPhS_iii"
_RESULT_BUFFER_BYTES = 0x9000  # the size libfacedetection writes into: a count, then 16 shorts a face


def _import_yuface():
    """libfacedetection's own YuNet, from the ``yuface`` wheel (not a dependency: the tests'
    reference): a function BGR uint8 HxWx3 -> (N, 16) int16 rows."""
    import ctypes

    from .yunet import libfacedetection

    library = libfacedetection()
    try:
        entry = getattr(library, _FACEDETECT_SYMBOL)
    except AttributeError as exc:
        raise ImportError(f"this libfacedetection has no {_FACEDETECT_SYMBOL} ({exc}): "
                          "pip install 'yuface==2023.5.1'") from None
    entry.restype = ctypes.c_void_p
    entry.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]

    def detect(bgr: np.ndarray) -> np.ndarray:
        bgr = np.ascontiguousarray(bgr, dtype=np.uint8)
        h, w = bgr.shape[:2]
        buffer = np.zeros(_RESULT_BUFFER_BYTES, np.uint8)
        entry(buffer.ctypes.data, bgr.ctypes.data, w, h, w * 3)  # ctypes lets the GIL go
        n = int(buffer[:4].view(np.int32)[0])
        return buffer[4 : 4 + 32 * n].view(np.int16).reshape(n, 16).copy()

    return detect


class YuNetONetDetector(YuNetDetector):
    """YuNet finds the faces; MTCNN's last stage, ONet, places their five landmarks.

    On the same faces MTCNN's landmarks gave crops the then-shipped ``mobilenet-v2-dlib-utkface`` reads better than YuNet's
    (68 labelled real photos: 0.912 against 0.853 gender accuracy; 750 test chips cropped again:
    0.897 / 4.41 against 0.891 / 4.42; see the model card), and ONet alone is cheap: one 48x48 patch per
    face, the square around YuNet's box, as MTCNN feeds it the square around its own proposal.
    Boxes and confidences stay YuNet's; landmarks are cropped by MTCNN's measured geometry.
    ONet ships with the package as a LiteRT network (:mod:`agegender_models.onet`), made from the
    ``mtcnn`` wheel's weights: no extra, and no TensorFlow, is needed.
    """

    name = "yunet-onet"
    _PATCH = ONET_PATCH

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from .onet import ONet

        self._onet = ONet()  # (N, 48, 48, 3) MTCNN-normalised patches -> (N, 10) landmarks

    def _refine(self, rgb: np.ndarray, faces: list[Face]) -> list[Face]:
        if not faces:
            return faces
        height, width = rgb.shape[:2]
        squares, patches = [], []
        for face in faces:
            x, y, w, h = face.box
            side = max(w, h)
            x0, y0 = x + w / 2 - side / 2, y + h / 2 - side / 2
            squares.append((x0, y0, side))
            # only the part of the photo under the square (plus a pixel) becomes a PIL image
            left, top = max(0, math.floor(x0) - 1), max(0, math.floor(y0) - 1)
            right = min(width, math.ceil(x0 + side) + 1)
            bottom = min(height, math.ceil(y0 + side) + 1)
            region = Image.fromarray(rgb[top:max(bottom, top + 1), left:max(right, left + 1)])
            # outside the photo: grey, MTCNN's 0 after its (x - 127.5) / 128
            patch = region.transform((self._PATCH, self._PATCH), Image.Transform.EXTENT,
                                     (x0 - left, y0 - top, x0 + side - left, y0 + side - top),
                                     Image.Resampling.BILINEAR, fillcolor=(128, 128, 128))
            patches.append(np.asarray(patch, dtype=np.float32))
        marks = self._onet((np.stack(patches) - 127.5) / 128)
        refined = []
        # ONet's landmarks are fractions of the square: x0 + f * (side + 1) - 1, as
        # mtcnn.utils.landmarks.adjust_landmarks maps them (xs first, then ys)
        for face, (x0, y0, side), m in zip(faces, squares, np.asarray(marks), strict=True):
            xs, ys = x0 + m[:5] * (side + 1) - 1, y0 + m[5:] * (side + 1) - 1
            refined.append(Face(face.box, face.confidence,
                                {k: (float(xs[i]), float(ys[i])) for i, k in enumerate(LANDMARKS)},
                                self.name))
        return refined


class HaarDetector(_DownscalingDetector):
    """OpenCV's frontal-face Haar cascade (``opencv-python-headless`` < 5 ships the file):
    boxes only; ``confidence`` is 1.0."""

    name = "haar"

    def __init__(
        self,
        *,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        max_side: int = 1024,
        min_face_size: int = 30,
        min_side: int | None = None,
    ) -> None:
        super().__init__(max_side=max_side, min_face_size=min_face_size, min_side=min_side)
        if not scale_factor > 1.0:
            raise ValueError(f"`scale_factor` must be > 1. Received: scale_factor={scale_factor!r}")
        if not isinstance(min_neighbors, int) or min_neighbors < 0:
            raise ValueError(
                f"`min_neighbors` must be an int >= 0. Received: min_neighbors={min_neighbors!r}"
            )
        self.scale_factor = float(scale_factor)
        self.min_neighbors = min_neighbors
        try:
            import cv2
        except ImportError as exc:
            raise _missing_extra(self.name, exc) from None
        self._cv2 = cv2
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise ImportError(
                f"OpenCV has no Haar cascade file at {path} (OpenCV 5 dropped them): {EXTRA_HINT}"
            )

    def _detect(self, rgb: np.ndarray) -> list[Face]:
        gray = self._cv2.cvtColor(rgb, self._cv2.COLOR_RGB2GRAY)
        boxes = self._cascade.detectMultiScale(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_face_size, self.min_face_size),
        )
        return [Face(tuple(float(v) for v in b), detector=self.name) for b in boxes]


def _best_score(faces: list[Face], default: float = 0.0) -> float:
    return max((f.confidence for f in faces), default=default)


def _left_to_right(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda f: (f.box[0], f.box[1]))


def _turned_back(face: Face, turns: int, shape: tuple[int, ...]) -> Face:
    """``face``, found in ``np.rot90(image, turns)``, in the pixels of ``image`` (``shape``)."""
    x, y, w, h = face.box
    marks = dict(face.landmarks)
    for step in range(turns, 0, -1):
        width = shape[0] if step % 2 == 0 else shape[1]  # the image's width before this turn
        # np.rot90 turns counter-clockwise: pixel (x, y) before lands at (y, width - 1 - x)
        x, y, w, h = width - y - h, x, h, w
        marks = {k: (width - 1 - my, mx) for k, (mx, my) in marks.items()}
    return Face((x, y, w, h), face.confidence, marks, face.detector)


# a turn replaces the photo as it is only if its best face scores at least TURN_MIN_SCORE and
# TURN_MARGIN more than the photo's own best, and it finds at least as many faces: a weak face
# that merely scores a little higher turned (an 85-year-old's chip: 0.68 upright, 0.72 turned)
# stays as it is, and so do a group photo's faces for one face found turned
TURN_MIN_SCORE = 0.85
TURN_MARGIN = 0.05


def _best_turn(rgb: np.ndarray, upright: list[Face], find) -> tuple[int, list[Face]]:
    """``(turns, faces)``: the turn (0-3 quarter turns counter-clockwise, ``np.rot90``'s) whose
    best face scores highest, if that is a clear win (``TURN_MIN_SCORE``, ``TURN_MARGIN``, no
    fewer faces; ties: the smaller turn), and its faces as ``find`` gives them in the turned
    image (``upright`` itself for 0)."""
    as_is = _best_score(upright)
    best, chosen, turns = as_is, upright, 0
    for k in (1, 2, 3):
        found = find(np.ascontiguousarray(np.rot90(rgb, k)))
        score = _best_score(found)
        if (score > best and score >= TURN_MIN_SCORE and score >= as_is + TURN_MARGIN
                and len(found) >= len(upright)):
            best, chosen, turns = score, found, k
    return turns, chosen


_CLASSES = {"yunet-onet": YuNetONetDetector, "yunet": YuNetDetector, "mtcnn": MTCNNDetector,
            "haar": HaarDetector}


def resolve_detector_name(name: str) -> str:
    """``"auto"`` -> ``"yunet-onet"`` (both networks ship with the package); other names as
    given."""
    return "yunet-onet" if name == "auto" else name


def get_detector(detector: str | FaceDetector = "auto", **kwargs: Any) -> FaceDetector:
    """A detector by name (``"auto"``, ``"yunet-onet"``, ``"yunet"``, ``"mtcnn"``, ``"haar"``;
    ``kwargs`` go to its constructor), or ``detector`` itself when it already has a ``detect_faces`` method."""
    if isinstance(detector, str):
        detector = resolve_detector_name(detector)
        if detector not in _CLASSES:
            raise ValueError(
                f"Unknown face detector. Expected one of {list(DETECTORS)}. Received: detector={detector!r}"
            )
        return _CLASSES[detector](**kwargs)
    if kwargs:
        raise ValueError(
            f"Options are only for detectors given by name. Received: {sorted(kwargs)}"
        )
    if not callable(getattr(detector, "detect_faces", None)):
        raise TypeError(
            "`detector` must be a name in "
            f"{list(DETECTORS)} or an object with a detect_faces(image) method. "
            f"Received: detector={detector!r}"
        )
    return detector


def detect_faces(image: Any, detector: str | FaceDetector = "auto") -> list[Face]:
    """Faces in ``image`` (a file path, a PIL image or an array; see :func:`to_rgb`), left to
    right. Builds the detector each call: keep one from :func:`get_detector` to detect in many
    images."""
    return list(get_detector(detector).detect_faces(to_rgb(image)))


def _chip_frame(face: Face) -> tuple[tuple[float, float], tuple[float, float], float, float]:
    """(anchor in the image, anchor in the unit chip, chip side in image pixels, angle in radians)."""
    # landmarks are pixel indices; pixel i covers [i, i + 1) in the continuous frame used here
    marks = {k: (x + 0.5, y + 0.5) for k, (x, y) in face.landmarks.items()}
    eye_center, eye_distance_in_chip, eye_mouth_in_chip = LANDMARK_GEOMETRY.get(
        face.detector, LANDMARK_GEOMETRY["mtcnn"])
    if "left_eye" in marks and "right_eye" in marks:
        left, right = np.asarray(marks["left_eye"]), np.asarray(marks["right_eye"])
        eyes = (left + right) / 2
        dx, dy = right - left
        eye_distance = float(np.hypot(dx, dy))
        sides = [eye_distance / eye_distance_in_chip] if eye_distance > 0 else []
        if "mouth_left" in marks and "mouth_right" in marks:
            mouth = (np.asarray(marks["mouth_left"]) + np.asarray(marks["mouth_right"])) / 2
            sides.append(float(np.linalg.norm(mouth - eyes)) / eye_mouth_in_chip)
        if sides and min(sides) > 0:
            angle = math.atan2(dy, dx) if eye_distance > 0 else 0.0
            return (float(eyes[0]), float(eyes[1])), eye_center, float(np.mean(sides)), angle
    x, y, w, h = face.box
    return (x + w / 2, y + h / 2), CHIP_BOX_CENTER, w / CHIP_BOX_WIDTH, 0.0


def _chip_to_image(face: Face, size: int):
    """(``to_image``: chip pixel (u, v) -> image point, image pixels per chip pixel, the rotation's
    cos and sin times that scale) for a ``size``-pixel chip of ``face``."""
    (ax, ay), (ux, uy), side, angle = _chip_frame(face)
    k = side / size
    cos, sin = math.cos(angle) * k, math.sin(angle) * k
    ox, oy = ux * size, uy * size

    def to_image(u: float, v: float) -> tuple[float, float]:
        return ax + cos * (u - ox) - sin * (v - oy), ay + sin * (u - ox) + cos * (v - oy)

    return to_image, k, cos, sin


def chip_side(face: Face) -> float:
    """The side, in the image's pixels, of the chip :func:`crop_face` would cut around ``face``."""
    return _chip_frame(face)[2]


def chip_mismatch(face: Face, width: int, height: int) -> float:
    """How far the square :func:`crop_face` would take for ``face`` is from the whole
    ``width`` x ``height`` image: the largest of |side / width - 1|, |side / height - 1|, the
    square's centre offset as a fraction of width and of height, and its tilt in radians. Near 0
    when the image already is a chip cropped like UTKFace's (train+val chips: median 0.028,
    99.9 % 0.22); photos of a face, however tightly framed, are 0.3 or more (see
    ``CHIP_MISMATCH``)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"`width` and `height` must be positive. Received: {width}x{height}")
    to_image, k, cos, sin = _chip_to_image(face, CHIP_SIZE)
    cx, cy = to_image(CHIP_SIZE / 2, CHIP_SIZE / 2)
    side = k * CHIP_SIZE
    return max(abs(side / width - 1), abs(side / height - 1),
               abs(cx - width / 2) / width, abs(cy - height / 2) / height,
               abs(math.atan2(sin, cos)))


def is_chip(face: Face, width: int, height: int, tolerance: float = CHIP_MISMATCH) -> bool:
    """Whether a ``width`` x ``height`` image already is a chip of ``face``: square to within
    ``CHIP_SQUARE`` and its :func:`chip_mismatch` at most ``tolerance``."""
    square = abs(width - height) <= CHIP_SQUARE * max(width, height)
    return square and chip_mismatch(face, width, height) <= tolerance


def crop_face(image: Any, face: Face, size: int = CHIP_SIZE) -> np.ndarray:
    """A ``size`` x ``size`` x 3 uint8 chip of ``face`` cropped from ``image`` like UTKFace's:
    aligned on the eyes when the face has landmarks, else placed by its box (see the module
    docstring for the measured geometry). Downscaling is antialiased; pixels outside the image
    repeat its edge."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise ValueError(f"`size` must be an int >= 8. Received: size={size!r}")
    if not isinstance(face, Face):
        raise TypeError(f"`face` must be a Face. Received: face={face!r}")
    rgb = to_rgb(image)
    to_image, k, cos, sin = _chip_to_image(face, size)
    corners = np.array([to_image(u, v) for u in (0, size) for v in (0, size)])
    x0, y0 = (int(math.floor(c)) - 2 for c in corners.min(axis=0))
    x1, y1 = (int(math.ceil(c)) + 2 for c in corners.max(axis=0))
    h, w = rgb.shape[:2]
    # the part of the image under the chip, edge-padded where the chip leaves the image
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if cx0 >= cx1 or cy0 >= cy1:
        raise ValueError(
            f"`face` lies outside the image. Received: face.box={face.box}, image {w}x{h}"
        )
    region = np.pad(
        rgb[cy0:cy1, cx0:cx1],
        ((cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1), (0, 0)),
        mode="edge",
    )
    patch = Image.fromarray(region)
    rx = ry = 1.0
    if k > 1.0:  # shrink first with an antialiased resize, then warp at about 1:1
        rw, rh = max(1, round(patch.width / k)), max(1, round(patch.height / k))
        rx, ry = rw / patch.width, rh / patch.height
        patch = patch.resize((rw, rh), Image.Resampling.BILINEAR)
    # PIL's affine maps each output (u, v) to an input point (a u + b v + c, d u + e v + f)
    cx, cy = to_image(0.0, 0.0)
    coeffs = (cos * rx, -sin * rx, (cx - x0) * rx, sin * ry, cos * ry, (cy - y0) * ry)
    chip = patch.transform((size, size), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)
    return np.asarray(chip, dtype=np.uint8)
