"""Face stage: detector interface, UTKFace-like crops, and Predictor on whole photos.

Generated images only. A fake detector (any object with ``detect_faces``) makes the cropping,
multi-face, no-face and error paths deterministic; the real detectors (the ``detect`` extra) run
once each on generated images to check they run and return faces of the right type. Tests on
real faces read ``$UTKFACE_DIR`` and are marked slow.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from agegender_models import Predictor, create_model
from agegender_models import detect as det
from agegender_models.detect import (
    CHIP_BOX_CENTER,
    CHIP_BOX_WIDTH,
    CHIP_EYE_CENTER,
    CHIP_EYE_DISTANCE,
    CHIP_MISMATCH,
    LANDMARK_GEOMETRY,
    Face,
    chip_mismatch,
    crop_face,
    get_detector,
    is_chip,
    to_rgb,
)

SIZE = 200
SHARED_PHOTOS = Path(__file__).resolve().parents[3].parent / "shared" / "photos"
SHARED_UTKFACE = SHARED_PHOTOS.parent / "utkface" / "crop_part1_5000"


class FakeDetector:
    """Returns ``faces`` for every image and records the shapes it was given."""

    def __init__(self, faces=(), error: Exception | None = None):
        self.faces = list(faces)
        self.error = error
        self.shapes: list[tuple[int, ...]] = []

    def detect_faces(self, image):
        self.shapes.append(np.asarray(image).shape)
        if self.error is not None:
            raise self.error
        return list(self.faces)


def _face_from_eyes(eyes_center, eye_distance, angle_deg, detector: str = "mtcnn") -> Face:
    """A face whose landmarks sit exactly where a chip's would (by ``detector``'s measured
    geometry), rotated by ``angle_deg``."""
    _, chip_eye_distance, chip_eye_mouth = LANDMARK_GEOMETRY[detector]
    a = math.radians(angle_deg)
    u = np.array([math.cos(a), math.sin(a)])  # along the eye line
    # eyes on whole pixels, so that dots drawn there are centred on them
    left = np.round(np.asarray(eyes_center) - eye_distance / 2 * u)
    right = np.round(np.asarray(eyes_center) + eye_distance / 2 * u)
    ex, ey = (left + right) / 2
    eye_distance = float(np.linalg.norm(right - left))
    u = (right - left) / eye_distance
    n = np.array([-u[1], u[0]])  # down the face
    mouth = np.array([ex, ey]) + eye_distance * (chip_eye_mouth / chip_eye_distance) * n
    side = eye_distance / chip_eye_distance
    return Face(
        (ex - side / 2, ey - side / 3, side, side),
        0.99,
        {
            "left_eye": tuple(left),
            "right_eye": tuple(right),
            "mouth_left": tuple(mouth - 0.3 * side * u),
            "mouth_right": tuple(mouth + 0.3 * side * u),
        },
        detector,
    )


def _dot(image: np.ndarray, xy, color, r: int = 3) -> None:
    x, y = round(xy[0]), round(xy[1])
    image[y - r : y + r + 1, x - r : x + r + 1] = color


def _centroid(chip: np.ndarray, color) -> tuple[float, float]:
    """Centre of the pixels of ``color``, in the continuous frame (pixel i covers [i, i + 1))."""
    mask = np.all(np.abs(chip.astype(int) - np.asarray(color)) < 60, axis=-1)
    assert mask.sum() > 0, f"colour {color} not found in the crop"
    ys, xs = np.nonzero(mask)
    return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


# ------------------------------------------------------------------------------------------------
# Face, to_rgb, get_detector


def test_face_rejects_a_bad_box() -> None:
    with pytest.raises(ValueError, match=r"Received: box=\(1, 2, 0, 5\)"):
        Face((1, 2, 0, 5))
    with pytest.raises(ValueError, match="Received: box="):
        Face((1, 2, float("nan"), 5))


@pytest.mark.parametrize(
    "image",
    [
        np.full((30, 40), 7, np.uint8),  # grayscale
        np.full((30, 40, 1), 7, np.uint8),
        np.full((30, 40, 4), 7, np.uint8),  # RGBA
        np.full((30, 40, 3), 7.2, np.float32),
        Image.new("LA", (40, 30), (7, 255)),
        Image.new("RGBA", (40, 30), (7, 7, 7, 255)),  # opaque (transparency: on white)
    ],
    ids=["gray", "gray1", "rgba", "float", "pil_la", "pil_rgba"],
)
def test_to_rgb_accepts_gray_and_rgba(image) -> None:
    rgb = to_rgb(image)
    assert rgb.shape == (30, 40, 3)
    assert rgb.dtype == np.uint8
    assert np.all(rgb == 7)


def test_to_rgb_rejects_other_shapes() -> None:
    with pytest.raises(ValueError, match=r"Received: image.shape=\(3, 4, 5\)"):
        to_rgb(np.zeros((3, 4, 5)))


def test_get_detector_by_name_instance_and_unknown() -> None:
    fake = FakeDetector()
    assert get_detector(fake) is fake
    with pytest.raises(ValueError, match=r"\['auto', 'yunet-onet', 'yunet', 'mtcnn', 'haar'\]. Received: detector='yolo'"):
        get_detector("yolo")
    with pytest.raises(TypeError, match="detect_faces"):
        get_detector(object())


def test_auto_is_yunet_onet_whether_or_not_mtcnn_is_installed(monkeypatch) -> None:
    assert det.resolve_detector_name("auto") == "yunet-onet"
    monkeypatch.setitem(sys.modules, "mtcnn", None)  # `import mtcnn` now raises ImportError
    assert isinstance(get_detector(), det.YuNetONetDetector)  # "auto" is the default
    assert det.resolve_detector_name("haar") == "haar"


def test_the_shipped_onet_is_mtcnns_onet() -> None:
    pytest.importorskip("mtcnn")
    from mtcnn.network.onet import ONet
    from mtcnn.utils.tensorflow import load_weights

    from agegender_models.onet import ONet as ShippedONet

    reference = ONet()
    reference.build()
    reference.set_weights(load_weights("onet.lz4"))
    rng = np.random.default_rng(0)
    shipped = ShippedONet()
    for n in (1, 3):  # one face and a group photo's batch
        patches = (rng.integers(0, 256, (n, 48, 48, 3)).astype(np.float32) - 127.5) / 128
        expected = np.asarray(reference(patches, training=False)[1])
        # measured: 8e-7 at most (float32, the same weights)
        np.testing.assert_allclose(shipped(patches), expected, atol=1e-5)


def test_a_missing_onet_file_is_one_clear_error(tmp_path) -> None:
    from agegender_models.onet import ONet

    with pytest.raises(FileNotFoundError, match="onet.tflite: ONet's network file is missing"):
        ONet(tmp_path / "onet.tflite")


def test_yunet_runs_without_the_yuface_wheel(monkeypatch) -> None:
    # the network ships with the package; yuface (libfacedetection's C++) is only the tests' reference
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "yuface" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'yuface==2023.5.1'.*CPython 3.11 on x86-64 Linux"):
        det._import_yuface()
    detector = get_detector("yunet")
    assert detector.detect_faces(np.zeros((100, 120, 3), np.uint8)) == []


def _anchors(height: int, width: int) -> np.ndarray:
    """Raw network output for a (padded) height x width image: every anchor scoring ~0."""
    n = sum((height // s) * (width // s) for s in (8, 16, 32))
    raw = np.zeros((n, 16), np.float32)
    raw[:, :2] = -12.0
    return raw


def test_yunet_decodes_anchors_as_libfacedetection_does(monkeypatch) -> None:
    from agegender_models.yunet import YuNet

    raw = _anchors(64, 64)  # a 50x60 image is padded to 64x64: 8x8 + 4x4 + 2x2 anchors
    # stride 8, cell (x 2, y 3): score sqrt(sigmoid(3) * sigmoid(3)) = sigmoid(3); centre
    # (16 + 0.5 * 8, 24 + 0.25 * 8), size (8 * 2, 8 * 4); every landmark one stride from the cell
    raw[3 * 8 + 2] = [3, 3, 0.5, 0.25, np.log(2), np.log(4)] + [1.0] * 10
    # the next cell's box overlaps it (IoU 0.78 > 0.45) with a lower score: suppressed
    raw[3 * 8 + 3] = [2, 2, -0.25, 0.25, np.log(2), np.log(4)] + [0.0] * 10
    # stride 32, cell (x 1, y 1): apart, score 0.7
    raw[64 + 16 + 3] = [np.log(0.7 / 0.3)] * 2 + [0, 0, 0, 0] + [0.0] * 10
    network = YuNet()
    monkeypatch.setattr(network, "raw", lambda rgb: raw)
    rows = network.detect(np.zeros((50, 60, 3), np.uint8))
    assert rows.shape == (2, 15)
    sigmoid3 = 1 / (1 + np.exp(-3.0))
    np.testing.assert_allclose(rows[0], [sigmoid3, 12, 10, 16, 32] + [24, 32] * 5, rtol=1e-5)
    np.testing.assert_allclose(rows[1], [0.7, 16, 16, 32, 32] + [32, 32] * 5, rtol=1e-5)
    assert len(network.detect(np.zeros((50, 60, 3), np.uint8), score_threshold=0.8)) == 1
    with pytest.raises(ValueError, match="HxWx3"):
        network.detect(np.zeros((50, 60), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        network.detect(np.zeros((50, 60, 3), np.float32))


def _yunet_images():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8), np.zeros((64, 64, 3), np.uint8)]
    for name in ("fr_obama.jpg", "fnp_multiface.jpg"):  # real faces, where the project has them
        path = SHARED_PHOTOS / name
        if path.is_file():
            images.append(to_rgb(path))
    return images


def test_yunet_onet_keeps_yunets_faces_and_places_onets_landmarks_on_the_square(monkeypatch) -> None:
    detector = get_detector("yunet-onet")
    found = Face((100.0, 50.0, 40.0, 60.0), 0.9, {"left_eye": (0.0, 0.0)}, "yunet")
    monkeypatch.setattr(det.YuNetDetector, "_detect", lambda self, rgb: [found])
    seen = []

    def onet(patches):  # every landmark at 1/4 of the square across, 3/4 down
        seen.append(np.asarray(patches))
        return np.concatenate([np.full((len(patches), 5), 0.25), np.full((len(patches), 5), 0.75)], 1)

    detector._onet = onet
    image = np.zeros((300, 400, 3), np.uint8)
    image[50:110, 100:140] = 255  # YuNet's box, white
    (face,) = detector.detect_faces(image)
    assert face.box == found.box and face.confidence == found.confidence
    assert face.detector == "yunet-onet" and set(face.landmarks) == set(det.LANDMARKS)
    # the square: 60 px around the box centre (120, 80), from (90, 50); x0 + f * (side + 1) - 1
    assert face.landmarks["nose"] == pytest.approx((90 + 0.25 * 61 - 1, 50 + 0.75 * 61 - 1))
    # ONet saw that square as 48x48, MTCNN-normalised: the box white (1.0), its sides black
    patch = seen[0][0]
    assert patch.shape == (48, 48, 3)
    assert patch[24, 24, 0] == pytest.approx(127.5 / 128) and patch[24, 2, 0] == pytest.approx(-127.5 / 128)
    assert LANDMARK_GEOMETRY["yunet-onet"] == LANDMARK_GEOMETRY["mtcnn"]


@pytest.mark.skipif(not (SHARED_PHOTOS / "fr_obama.jpg").is_file(), reason="needs ../shared/photos")
def test_yunet_onet_landmarks_are_mtcnns_on_a_real_face() -> None:
    pytest.importorskip("mtcnn")
    rgb = to_rgb(SHARED_PHOTOS / "fr_obama.jpg")
    (hybrid,) = get_detector("yunet-onet").detect_faces(rgb)
    (own,) = get_detector("yunet").detect_faces(rgb)
    (mtcnn,) = get_detector("mtcnn").detect_faces(rgb)
    assert hybrid.box == own.box
    # measured: at most 3.1 px from MTCNN's on this 100-px-wide face (YuNet's own: up to 11 px)
    for key in det.LANDMARKS:
        assert np.hypot(*np.subtract(hybrid.landmarks[key], mtcnn.landmarks[key])) < 4.5, key


def test_yunet_calls_libfacedetection_as_its_own_binding_does_without_leaking() -> None:
    binding = pytest.importorskip("yuface.yuface")
    call = det._import_yuface()
    for rgb in _yunet_images():
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        assert np.array_equal(call(bgr)[:, :15], np.asarray(binding.detect(bgr))[:, :15])

    def rss_mb() -> float:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    image = np.zeros((96, 96, 3), np.uint8)
    call(image)
    before = rss_mb()
    for _ in range(500):
        call(image)
    # yuface's own binding keeps 36 KB a call: 17.6 MB here
    assert rss_mb() - before < 4.0


def test_shipped_yunet_finds_libfacedetections_faces() -> None:
    # libfacedetection's C++ on the same pixels: the same faces, scores and landmarks (it writes
    # them as int16, truncated: score * 100 and pixels)
    call = det._import_yuface() if importlib_spec("yuface") else pytest.skip("needs the yuface wheel")
    from agegender_models.yunet import YuNet

    network, compared = YuNet(), 0
    # and every photo of ../shared/photos where present, at most 640 px as the detector sees it
    shrunk = []
    for path in sorted(SHARED_PHOTOS.glob("*.*g")) if SHARED_PHOTOS.is_dir() else []:  # jpg, png
        image = Image.fromarray(to_rgb(path))
        image.thumbnail((640, 640), Image.Resampling.BILINEAR)
        shrunk.append(np.asarray(image))
    for rgb in _yunet_images() + shrunk:
        expected = call(np.ascontiguousarray(rgb[..., ::-1]))[:, :15].astype(np.float64)
        rows = network.detect(rgb).astype(np.float64)
        assert rows.shape == expected.shape
        truncated = np.concatenate([np.trunc(rows[:, :1] * 100), np.trunc(rows[:, 1:])], 1)
        assert np.abs(truncated - expected).max(initial=0) <= 1
        compared += len(rows)
    if not compared:
        pytest.skip("no face to compare: needs ../shared/photos")


def test_shipped_yunet_is_libfacedetections_network(tmp_path: Path) -> None:
    # the shipped file is what write_tflite() makes from the yuface library's weights
    if not importlib_spec("yuface"):
        pytest.skip("needs the yuface wheel")
    from agegender_models import yunet

    made = yunet.write_tflite(tmp_path / "yunet.tflite")
    image = np.random.default_rng(3).integers(0, 256, (96, 160, 3), dtype=np.uint8)
    np.testing.assert_allclose(yunet.YuNet(made).raw(image), yunet.YuNet().raw(image), atol=1e-4)


def importlib_spec(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


@pytest.mark.parametrize("module, name", [("mtcnn", "mtcnn"), ("cv2", "haar")])
def test_missing_extra_names_the_install_command(monkeypatch, module: str, name: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'agegender-models\[detect\]'"):
        get_detector(name)
    model = create_model("custom_cnn", input_shape=(32, 32, 3))
    with pytest.raises(ImportError, match=r"agegender-models\[detect\]"):
        Predictor(model, detector=name)


def test_the_detectors_are_imported_only_when_asked_for() -> None:
    # (keras itself imports cv2 when it is installed, so sys.modules cannot tell; the source can)
    import ast

    package = Path(det.__file__).parent
    top_level = set()
    for path in package.glob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:  # module level only
            if isinstance(node, ast.Import):
                top_level |= {(path.name, a.name.split(".")[0]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top_level.add((path.name, node.module.split(".")[0]))
    assert ("detect.py", "numpy") in top_level  # the checker sees module-level imports
    assert not {(f, m) for f, m in top_level if m in {"mtcnn", "cv2", "yuface"}}


# ------------------------------------------------------------------------------------------------
# crop_face


@pytest.mark.parametrize("angle", [0.0, 20.0, -35.0])
@pytest.mark.parametrize("eye_distance", [30.0, 77.5, 300.0])
def test_landmark_crop_levels_the_eyes_where_a_chip_has_them(
    angle: float, eye_distance: float
) -> None:
    image = np.zeros((1200, 1400, 3), np.uint8)
    face = _face_from_eyes((700.0, 560.0), eye_distance, angle)
    _dot(image, face.landmarks["left_eye"], (255, 0, 0), r=max(2, int(eye_distance / 25)))
    _dot(image, face.landmarks["right_eye"], (0, 0, 255), r=max(2, int(eye_distance / 25)))
    chip = crop_face(image, face, SIZE)
    assert chip.shape == (SIZE, SIZE, 3) and chip.dtype == np.uint8
    (lx, ly), (rx, ry) = _centroid(chip, (255, 0, 0)), _centroid(chip, (0, 0, 255))
    cx, cy = CHIP_EYE_CENTER[0] * SIZE, CHIP_EYE_CENTER[1] * SIZE
    half = CHIP_EYE_DISTANCE * SIZE / 2
    assert abs(ly - ry) < 1.0  # level
    assert lx == pytest.approx(cx - half, abs=1.0)
    assert rx == pytest.approx(cx + half, abs=1.0)
    assert (ly + ry) / 2 == pytest.approx(cy, abs=1.0)


def _chip_face(side: float, angle: float = 0.0, shift=(0.0, 0.0)) -> Face:
    """A face placed in a ``side``-pixel square image where a chip's face sits."""
    cx, cy = CHIP_EYE_CENTER
    # _face_from_eyes takes pixel indices; the chip frame works on pixel centres (+0.5)
    return _face_from_eyes((cx * side - 0.5 + shift[0], cy * side - 0.5 + shift[1]),
                           CHIP_EYE_DISTANCE * side, angle)


@pytest.mark.parametrize("side", [200, 64, 500])
def test_chip_mismatch_is_near_zero_for_a_chip_and_large_for_a_face_in_a_photo(side: int) -> None:
    assert chip_mismatch(_chip_face(side), side, side) < 0.02
    # a tilt counts in radians: 8 degrees is a chip, 20 degrees is left to crop_face to level
    assert chip_mismatch(_chip_face(side, angle=8.0), side, side) == pytest.approx(
        math.radians(8.0), abs=0.04)  # eyes on whole pixels: coarse at 64 px
    assert chip_mismatch(_chip_face(side, angle=20.0), side, side) > CHIP_MISMATCH
    assert is_chip(_chip_face(side), side, side)
    assert not is_chip(_chip_face(side, angle=20.0), side, side)
    # a taller image is not a chip even where the face's square nearly fits it (it would be
    # stretched into the model's square input)
    assert chip_mismatch(_chip_face(side), side, side * 6 // 5) <= CHIP_MISMATCH
    assert not is_chip(_chip_face(side), side, side * 6 // 5)
    # the same face in a wider photo, in a smaller or larger square, or moved off centre
    assert chip_mismatch(_chip_face(side), 2 * side, side) > CHIP_MISMATCH
    assert chip_mismatch(_chip_face(side), side * 3 // 2, side * 3 // 2) > CHIP_MISMATCH
    assert chip_mismatch(_chip_face(side), side // 2, side // 2) > CHIP_MISMATCH
    assert chip_mismatch(_chip_face(side, shift=(0.3 * side, 0)), side, side) > CHIP_MISMATCH
    with pytest.raises(ValueError, match="must be positive"):
        chip_mismatch(_chip_face(side), 0, side)


@pytest.mark.skipif(not (SHARED_UTKFACE.is_dir() and SHARED_PHOTOS.is_dir()),
                    reason="needs ../shared/utkface and ../shared/photos")
def test_real_chips_are_under_the_chip_mismatch_limit_and_real_photos_over_it() -> None:
    detector = get_detector("yunet-onet")

    def mismatches(path: Path) -> list[float]:
        rgb = to_rgb(path)
        return [chip_mismatch(f, rgb.shape[1], rgb.shape[0]) for f in detector.detect_faces(rgb)]

    chips = sorted(SHARED_UTKFACE.glob("*.chip.jpg"))[:40]
    photos = sorted(SHARED_PHOTOS.glob("*.jpg"))[:20]
    assert len(chips) == 40 and len(photos) == 20
    chip_values = [min(mismatches(p)) for p in chips]
    photo_values = [v for p in photos for v in mismatches(p)]
    assert max(chip_values) <= CHIP_MISMATCH and min(photo_values) > CHIP_MISMATCH


@pytest.mark.parametrize("angle", [0.0, 20.0])
def test_yunet_landmarks_are_cropped_by_yunets_own_geometry(angle: float) -> None:
    # YuNet puts its landmarks elsewhere on a face than MTCNN (bench/chip_geometry_yunet.json):
    # cropped by MTCNN's numbers its chips would sit 2.5 px left and 2.7 % too small
    image = np.zeros((1000, 1000, 3), np.uint8)
    face = _face_from_eyes((500.0, 450.0), 80.0, angle, detector="yunet")
    _dot(image, face.landmarks["left_eye"], (255, 0, 0))
    _dot(image, face.landmarks["right_eye"], (0, 0, 255))
    chip = crop_face(image, face, SIZE)
    (lx, ly), (rx, ry) = _centroid(chip, (255, 0, 0)), _centroid(chip, (0, 0, 255))
    (cx, cy), distance, _ = LANDMARK_GEOMETRY["yunet"]
    assert abs(ly - ry) < 1.0
    assert (lx + rx) / 2 == pytest.approx(cx * SIZE, abs=0.6)
    assert (ly + ry) / 2 == pytest.approx(cy * SIZE, abs=0.6)
    assert rx - lx == pytest.approx(distance * SIZE, abs=1.0)
    assert abs(cx - CHIP_EYE_CENTER[0]) * SIZE > 2  # the two geometries do differ


def test_box_crop_uses_the_measured_box_geometry() -> None:
    image = np.zeros((400, 500, 3), np.uint8)
    face = Face((150, 100, 120, 120))  # no landmarks, as from Haar
    _dot(image, (210, 160), (0, 255, 0))  # the box centre: pixel 210 covers [210, 211)
    _dot(image, (240, 160), (255, 0, 255))  # a quarter box width right of the centre
    chip = crop_face(image, face, SIZE)
    gx, gy = _centroid(chip, (0, 255, 0))
    k = SIZE * CHIP_BOX_WIDTH / 120  # chip pixels per image pixel
    expected = (CHIP_BOX_CENTER[0] * SIZE + 0.5 * k, CHIP_BOX_CENTER[1] * SIZE + 0.5 * k)
    assert (gx, gy) == pytest.approx(expected, abs=1.0)
    mx, _ = _centroid(chip, (255, 0, 255))
    assert mx - gx == pytest.approx(CHIP_BOX_WIDTH * SIZE / 4, abs=1.0)


def test_crop_from_a_huge_photo_is_antialiased() -> None:
    # 6000x4000 with a 1-pixel checkerboard face: a crop that skips pixels instead of averaging
    # them shows black and white stripes; an antialiased one is an even grey
    image = np.zeros((4000, 6000, 3), np.uint8)
    yy, xx = np.mgrid[1000:3000, 2000:4000]
    image[1000:3000, 2000:4000] = (((yy + xx) % 2) * 255)[..., None]
    chip = crop_face(image, Face((2200, 1300, 1500, 1500)), SIZE)
    centre = chip[60:140, 60:140].astype(float)
    assert abs(centre.mean() - 127.5) < 10
    assert centre.std() < 10


def test_crop_at_the_border_repeats_the_edge_and_outside_is_an_error() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    image[:, :50] = 200
    chip = crop_face(image, Face((-30, -30, 80, 80)), 64)
    assert chip.shape == (64, 64, 3)
    assert chip[0, 0].tolist() == [200, 200, 200]  # edge pixel repeated, not black
    with pytest.raises(ValueError, match="outside the image"):
        crop_face(image, Face((5000, 5000, 80, 80)), 64)


def test_crop_face_validates_its_arguments() -> None:
    image = np.zeros((50, 50, 3), np.uint8)
    with pytest.raises(ValueError, match="Received: size=4"):
        crop_face(image, Face((0, 0, 10, 10)), 4)
    with pytest.raises(TypeError, match="must be a Face"):
        crop_face(image, {"box": [0, 0, 10, 10]})


def test_builtin_detectors_downscale_big_photos_and_map_faces_back() -> None:
    class Recorder(det._DownscalingDetector):
        def _detect(self, rgb):
            self.seen = rgb.shape
            return [Face((100, 50, 40, 40), 0.9, {"left_eye": (110, 60)}), Face((10, 20, 30, 30))]

    recorder = Recorder(max_side=1000)
    faces = recorder.detect_faces(np.zeros((4000, 6000), np.uint8))
    assert recorder.seen == (667, 1000, 3)
    assert [f.box for f in faces] == [(60.0, 120.0, 180.0, 180.0), (600.0, 300.0, 240.0, 240.0)]
    assert faces[1].landmarks == {"left_eye": (660.0, 360.0)}
    with pytest.raises(ValueError, match="Received: max_side=10"):
        Recorder(max_side=10)


def test_builtin_detectors_enlarge_small_photos_to_min_side_and_map_faces_back() -> None:
    class Recorder(det._DownscalingDetector):
        def _detect(self, rgb):
            self.seen = rgb.shape
            return [Face((100, 50, 40, 40), 0.9, {"left_eye": (110, 60)})]

    recorder = Recorder(max_side=1000, min_side=300)
    (face,) = recorder.detect_faces(np.zeros((100, 150, 3), np.uint8))
    assert recorder.seen == (200, 300, 3)
    assert face.box == (50.0, 25.0, 20.0, 20.0) and face.landmarks == {"left_eye": (55.0, 30.0)}
    recorder.detect_faces(np.zeros((300, 200, 3), np.uint8))  # min_side reached: as it is
    assert recorder.seen == (300, 200, 3)
    assert Recorder(max_side=1000).min_side is None
    for bad in (0, 2000, 1.5, True):
        with pytest.raises(ValueError, match=f"Received: min_side={bad!r}"):
            Recorder(max_side=1000, min_side=bad)


# ------------------------------------------------------------------------------------------------
# Predictor with a detector


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return create_model("custom_cnn", input_shape=(32, 32, 3))


def _photo(path: Path, mode: str = "RGB", size=(320, 240), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def test_predict_one_result_per_face_matching_its_crop(model, tmp_path: Path) -> None:
    photo = _photo(tmp_path / "group.png")
    faces = [Face((10 + 15 * i, 20 + 7 * (i % 3), 40, 40), 0.9) for i in range(20)]
    predictor = Predictor(model, detector=FakeDetector(faces))
    results, errors = predictor.predict([photo], return_errors=True, batch_size=8)
    assert errors == []
    assert [r["face"] for r in results] == list(range(20))
    assert [r["box"] for r in results] == [[round(v) for v in f.box] for f in faces]
    assert {r["file"] for r in results} == {str(photo)}
    # each result is the model's output on that face's chip, resized as in training
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    from agegender_models.predict import _to_rgb_array

    chips = np.stack([_to_rgb_array(crop_face(rgb, f), (32, 32)) for f in faces])
    expected = model(chips, training=False)
    np.testing.assert_allclose(
        [r["age"] for r in results], np.asarray(expected["age"]).reshape(-1), rtol=1e-4, atol=1e-3
    )
    np.testing.assert_allclose(
        [r["p_female"] for r in results],
        np.asarray(expected["gender"]).reshape(-1),
        rtol=1e-4,
        atol=1e-4,
    )


def test_predict_reads_an_image_that_already_is_a_chip_as_it_is(
    model, tmp_path: Path, monkeypatch
) -> None:
    from agegender_models.predict import _to_rgb_array

    cropped = []
    monkeypatch.setattr(det, "crop_face", lambda image, face, size=SIZE: cropped.append(face)
                        or crop_face(image, face, size))
    chip = _photo(tmp_path / "chip.png", size=(200, 200))
    photo = _photo(tmp_path / "photo.png", size=(320, 240), seed=1)
    in_chip, in_photo = _chip_face(200), _chip_face(200, shift=(60, 20))
    results, errors = Predictor(model, detector=FakeDetector([in_chip])).predict(
        [chip], return_errors=True)
    assert errors == [] and len(results) == 1 and cropped == []
    assert results[0]["box"] == [round(v) for v in in_chip.box]
    as_is = model(_to_rgb_array(chip, (32, 32))[None], training=False)
    assert results[0]["p_female"] == pytest.approx(float(np.asarray(as_is["gender"]).ravel()[0]),
                                                   abs=1e-5)
    # the same face moved inside a larger photo is cropped, not taken whole
    results = Predictor(model, detector=FakeDetector([in_photo])).predict([photo])
    assert len(results) == 1 and cropped == [in_photo]
    # chip_tolerance=None crops every face again, chips too
    Predictor(model, detector=FakeDetector([in_chip]), chip_tolerance=None).predict([chip])
    assert cropped == [in_photo, in_chip]
    with pytest.raises(ValueError, match="chip_tolerance"):
        Predictor(model, chip_tolerance=1.5)
    # a large chip is shrunk to a chip's size with antialiasing (as crop_face would) first
    big = tmp_path / "big.png"
    Image.open(chip).resize((800, 800), Image.Resampling.NEAREST).save(big)
    [result] = Predictor(model, detector=FakeDetector([_chip_face(800)])).predict([big])
    shrunk = Image.open(big).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    want = model(_to_rgb_array(shrunk, (32, 32))[None], training=False)
    assert result["p_female"] == pytest.approx(float(np.asarray(want["gender"]).ravel()[0]), abs=1e-5)
    assert len(cropped) == 2


def test_predict_no_face_is_an_error_entry_and_others_still_predicted(
    model, tmp_path: Path
) -> None:
    class OnlyWide:  # a face in the wide photo, none in the square one
        def detect_faces(self, image):
            return [Face((5, 5, 30, 30))] if image.shape[1] > image.shape[0] else []

    wide = _photo(tmp_path / "wide.jpg", size=(120, 80))
    square = _photo(tmp_path / "square.jpg", size=(80, 80))
    results, errors = Predictor(model, detector=OnlyWide()).predict(
        [square, wide], return_errors=True
    )
    assert [r["file"] for r in results] == [str(wide)]
    assert errors == [{"file": str(square), "reason": "no face found"}]


def test_predict_gray_rgba_and_corrupt_files_with_a_detector(model, tmp_path: Path) -> None:
    gray = _photo(tmp_path / "gray.png", "L")
    rgba = _photo(tmp_path / "rgba.png", "RGBA")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(_photo(tmp_path / "x.jpg").read_bytes()[:150])
    fake = FakeDetector([Face((50, 40, 100, 100), 0.95)])
    results, errors = Predictor(model, detector=fake).predict(
        [gray, corrupt, rgba], return_errors=True
    )
    assert [r["file"] for r in results] == [str(gray), str(rgba)]
    assert fake.shapes == [(240, 320, 3), (240, 320, 3)]  # the detector always gets RGB
    assert len(errors) == 1 and errors[0]["file"] == str(corrupt)
    assert errors[0]["reason"].startswith(("cannot read image", "cannot decode image"))


def test_predict_detector_failure_is_one_line_naming_the_problem(model, tmp_path: Path) -> None:
    import tensorflow as tf

    deep = tf.errors.InvalidArgumentError(
        None,
        None,
        "Input to reshape is a tensor with 0 values\n"
        "\t [[{{node Reshape}}]]\n" + "stack frame\n" * 50,
    )
    photo = _photo(tmp_path / "p.png")
    results, errors = Predictor(model, detector=FakeDetector(error=deep)).predict(
        [photo], return_errors=True
    )
    assert results == []
    assert len(errors) == 1 and errors[0]["file"] == str(photo)
    reason = errors[0]["reason"]
    assert reason.startswith("face detection failed: InvalidArgumentError: Input to reshape")
    assert "\n" not in reason and len(reason) <= 300


def test_predict_huge_photo_detects_small_and_crops_from_the_original(
    model, tmp_path: Path
) -> None:
    class Downscaling(det._DownscalingDetector):
        def _detect(self, rgb):
            self.seen = rgb.shape
            return [Face((100, 60, 50, 50), 0.9)]  # in the downscaled image

    path = tmp_path / "huge.jpg"
    Image.new("RGB", (6000, 4000), (90, 120, 150)).save(path)
    detector = Downscaling(max_side=1200)
    results, errors = Predictor(model, detector=detector).predict([path], return_errors=True)
    assert errors == []
    assert detector.seen == (800, 1200, 3)
    assert results[0]["box"] == [500, 300, 250, 250]  # in pixels of the 6000x4000 original


def test_predict_crops_a_large_face_from_the_reduced_decode_a_small_one_from_the_whole(
    model, tmp_path: Path, monkeypatch
) -> None:
    predict_module = sys.modules["agegender_models.predict"]  # the package exports predict()

    class Downscaling(det._DownscalingDetector):
        face = Face((0, 0, 1, 1), 0.9)

        def _detect(self, rgb):
            self.seen = rgb.shape
            return [self.face]  # in the downscaled image

    path = tmp_path / "huge.jpg"
    Image.new("RGB", (6000, 4000), (90, 120, 150)).save(path)
    whole_reads = []
    real_to_rgb = predict_module.to_rgb
    def to_rgb(image, **kwargs):  # files read whole (to_rgb also converts the crops)
        if isinstance(image, str | os.PathLike):
            whole_reads.append(image)
        return real_to_rgb(image, **kwargs)

    monkeypatch.setattr(predict_module, "to_rgb", to_rgb)
    detector = Downscaling(max_side=1200)
    predictor = Predictor(model, detector=detector)
    # JPEG decoded at 1/4 (1500x1000), shrunk to 1200x800 for the detector; a face whose chip
    # is 600 / 1.045 * 1.25 = 718 px there (over 200): cropped from that decode, boxed in the photo's pixels
    detector.face = Face((100, 60, 600, 600), 0.9)
    (result,) = predictor.predict([path])
    assert detector.seen == (800, 1200, 3) and whole_reads == []
    assert result["box"] == [500, 300, 3000, 3000]
    # a 60-px chip there: the photo is read again whole and the face cropped from it
    detector.face = Face((100, 60, 50, 50), 0.9)
    (result,) = predictor.predict([path])
    assert len(whole_reads) == 1 and result["box"] == [500, 300, 250, 250]


def test_predict_applies_exif_orientation_before_detecting(model, tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored 320x240, shown 240x320
    Image.fromarray(np.zeros((240, 320, 3), np.uint8)).save(path, exif=exif)
    fake = FakeDetector([Face((10, 10, 50, 50))])
    Predictor(model, detector=fake).predict([path])
    assert fake.shapes == [(320, 240, 3)]


def test_predict_without_a_detector_is_unchanged(model, tmp_path: Path) -> None:
    photo = _photo(tmp_path / "p.png")
    result = Predictor(model).predict([photo])
    assert list(result[0]) == ["file", "age", "gender", "p_female"]


def test_predict_reads_ahead_in_threads_keeps_the_order_and_reports_progress(
    model, tmp_path: Path
) -> None:
    class SomeFaces:  # a face in every other photo, two in every third; called by two threads
        def detect_faces(self, image):
            n = int(image[0, 0, 0]) % 3
            return [Face((5 + 40 * i, 5, 30, 30)) for i in range(n)]

    photos = [_photo(tmp_path / f"p{i:02d}.png", seed=i) for i in range(23)]
    photos.insert(7, tmp_path / "missing.jpg")
    outcomes = {}
    for workers in (1, 2):
        calls = []
        predictor = Predictor(model, detector=SomeFaces())
        outcomes[workers] = predictor.predict(photos, batch_size=4, return_errors=True,
                                              workers=workers, progress=calls.append)
        assert calls == [1] * len(photos)  # once per input, the unreadable one too
    assert outcomes[1] == outcomes[2]  # the same rows and errors, in the same order
    results, errors = outcomes[2]
    assert [(r["file"], r["face"]) for r in results] == sorted((r["file"], r["face"]) for r in results)
    assert any(e["reason"] == "no face found" for e in errors)
    assert {e["file"] for e in errors if e["reason"] != "no face found"} == {str(photos[7])}
    with pytest.raises(ValueError, match="Received: workers=0"):
        predictor.predict(photos, workers=0)


# ------------------------------------------------------------------------------------------------
# the real detectors (the `detect` extra) on generated images


MODULES = {"mtcnn": "mtcnn", "haar": "cv2", "yunet": "numpy", "yunet-onet": "numpy"}


@pytest.mark.parametrize("name", ["yunet-onet", "yunet", "mtcnn", "haar"])
def test_real_detector_runs_on_generated_images(name: str) -> None:
    pytest.importorskip(MODULES[name])
    detector = get_detector(name, max_side=512)
    rng = np.random.default_rng(0)
    for image in (
        rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8),
        rng.integers(0, 256, size=(4000, 6000), dtype=np.uint8),  # huge and grayscale
        rng.integers(0, 256, size=(100, 90, 4), dtype=np.uint8),  # RGBA
        np.zeros((8, 8, 3), np.uint8),  # tinier than any face
    ):
        faces = detector.detect_faces(image)
        assert isinstance(faces, list)
        assert all(isinstance(f, Face) for f in faces)


# ------------------------------------------------------------------------------------------------
# real faces (slow; $UTKFACE_DIR)

DATA = os.environ.get("UTKFACE_DIR")


@pytest.mark.slow
@pytest.mark.skipif(not DATA or not Path(DATA).is_dir(), reason="set UTKFACE_DIR to a chip folder")
@pytest.mark.parametrize("name", ["yunet-onet", "yunet", "mtcnn", "haar"])
def test_real_chips_pasted_into_a_photo_are_found_and_recropped(name: str) -> None:
    pytest.importorskip(MODULES[name])
    detector = get_detector(name)
    chips = sorted(p for p in Path(DATA).glob("*.chip.jpg"))[::500][:8]
    rng = np.random.default_rng(0)
    corrs = []
    for path in chips:
        chip = np.asarray(Image.open(path).convert("RGB"))
        photo = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
        photo[100:300, 200:400] = chip
        faces = [
            f
            for f in detector.detect_faces(photo)
            if 200 <= f.box[0] + f.box[2] / 2 <= 400 and 100 <= f.box[1] + f.box[3] / 2 <= 300
        ]
        if faces:
            crop = crop_face(photo, faces[0]).astype(float)
            a, b = crop[40:160, 40:160].ravel(), chip[40:160, 40:160].astype(float).ravel()
            corrs.append(np.corrcoef(a, b)[0, 1])
    assert len(corrs) >= 6, f"{name} found {len(corrs)}/{len(chips)} pasted chips"
    # the re-crop lines up with the chip (measured: mean 0.86-0.88 for both detectors; the same
    # faces cropped 20 px off or with the other detector's geometry: 0.45-0.65)
    assert np.mean(corrs) > 0.75, corrs


def test_yunet_uses_omp_num_threads_where_set(monkeypatch) -> None:
    # as libfacedetection's OpenMP loops did: a predict-batch worker sets it to its share of CPUs
    from agegender_models import yunet

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert yunet._default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert yunet._default_threads() == (os.cpu_count() or 1)
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert yunet._default_threads() == (os.cpu_count() or 1)


def test_yunet_keeps_two_interpreters_by_image_size_with_the_same_outputs() -> None:
    from agegender_models.yunet import YuNet

    rng = np.random.default_rng(4)
    images = [rng.integers(0, 256, shape, dtype=np.uint8)
              for shape in ((96, 160, 3), (160, 96, 3), (64, 64, 3))]
    fresh = [YuNet().raw(image) for image in images]  # each on an interpreter of its own
    network = YuNet()
    for i in (0, 1, 0, 1, 2, 0, 2):  # portrait and landscape alternate, then a third size
        np.testing.assert_allclose(network.raw(images[i]), fresh[i], atol=1e-5)
        assert len(network._runners) <= YuNet.INTERPRETERS
    # the two most recent sizes (64x64, then 96x160 padded to 96x160) are kept, newest last
    assert list(network._runners) == [(1, 96, 160, 3), (1, 64, 64, 3)]


@pytest.mark.parametrize("shape", [(30, 50), (41, 23)])
def test_a_face_found_turned_maps_back_to_the_images_pixels(shape) -> None:
    image = np.zeros(shape, np.uint8)
    image[5:9, 10:13] = 1  # a "face": rows 5-8, columns 10-12
    image[6, 11] = 2  # an "eye"
    for turns in (1, 2, 3):
        turned = np.rot90(image, turns)
        rows, cols = np.nonzero(turned)
        (ey,), (ex,) = np.nonzero(turned == 2)
        found = Face((cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1), 0.9,
                     {"left_eye": (float(ex), float(ey))}, "yunet")
        back = det._turned_back(found, turns, image.shape)
        assert back.box == (10, 5, 3, 4) and back.landmarks["left_eye"] == (11, 6), turns
        assert back.confidence == 0.9 and back.detector == "yunet"


def test_a_sideways_photo_is_searched_turned_and_its_faces_come_back_upright(monkeypatch) -> None:
    # a fake YuNet: a face (the white block) scores scores[0] when the grey bar is above it,
    # scores[1] otherwise
    scores = [0.95, 0.5]

    def fake(self, rgb):
        calls.append(rgb.shape)
        ys, xs = np.nonzero(rgb[..., 0] == 255)
        bar_y, _ = np.nonzero(rgb[..., 0] == 128)
        upright = bar_y.mean() < ys.min()
        return [Face((xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1), scores[0] if upright else scores[1],
                     {"left_eye": (float(xs.min()), float(ys.min()))}, "yunet")]

    monkeypatch.setattr(det.YuNetDetector, "_detect", fake)
    upright = np.zeros((60, 80, 3), np.uint8)
    upright[10:14, 20:60] = 128  # the bar, above
    upright[30:50, 30:45] = 255  # the face
    # (the fakes' photos are small: not enlarged, so that the fake sees the pixels drawn here)
    detector = get_detector("yunet", min_side=None)
    calls = []
    (face,) = detector.detect_faces(upright)
    assert face.confidence == 0.95 and face.box == (30, 30, 15, 20) and len(calls) == 1  # not searched
    sideways = np.ascontiguousarray(np.rot90(upright, 1))  # turned a quarter, counter-clockwise
    calls = []
    (face,) = detector.detect_faces(sideways)
    assert len(calls) == 4 and face.confidence == 0.95  # all four turns; the upright one won
    ys, xs = np.nonzero(sideways[..., 0] == 255)
    assert face.box == (xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1)  # in the sideways photo's pixels
    assert face.landmarks["left_eye"] == (30 - 30 + 30, 80 - 1 - 30)  # (30, 30) upright, turned
    # the turn it kept: three quarter turns counter-clockwise bring the sideways photo upright
    assert detector.detect_faces_turned(sideways) == ([face], 3)
    assert detector.detect_faces_turned(upright)[1] is None  # not searched
    calls = []
    assert get_detector("yunet", min_side=None, turn_below=None).detect_faces(sideways)[0].confidence == 0.5
    with pytest.raises(ValueError, match="turn_below"):
        get_detector("yunet", min_side=None, turn_below=True)
    # a weak face a little better turned (under TURN_MIN_SCORE, or within TURN_MARGIN) stays as it is
    for scores[:] in ([0.72, 0.68], [0.93, 0.89]):
        calls = []
        (face,), turns = detector.detect_faces_turned(sideways)
        assert len(calls) == 4 and face.confidence == scores[1] and turns == 0  # searched, not turned
    with pytest.raises(ValueError, match="turn_below"):
        get_detector("yunet", min_side=None, turn_below=1.5)


def test_yunet_onet_places_landmarks_only_on_the_turn_it_keeps(monkeypatch) -> None:
    # YuNet (fake): a face scores 0.95 in the image turned back upright, 0.5 as given
    monkeypatch.setattr(det.YuNetDetector, "_detect", lambda self, rgb: [
        Face((10, 10, 20, 20), 0.95 if rgb[0, -1, 0] == 7 else 0.5, {}, "yunet")])
    detector = get_detector("yunet-onet", min_side=None)
    patches = []

    def onet(batch):
        patches.append(len(batch))
        return np.full((len(batch), 10), 0.5)

    detector._onet = onet
    upright = np.zeros((60, 80, 3), np.uint8)
    upright[0, -1] = 7
    (face,) = detector.detect_faces(np.ascontiguousarray(np.rot90(upright, 1)))
    assert face.confidence == 0.95 and face.detector == "yunet-onet"
    assert patches == [1, 1]  # the photo as given, then the kept turn; not the other two turns


def test_a_group_photos_faces_stay_for_one_face_found_turned(monkeypatch) -> None:
    # upright: two faces at 0.8 (searched again); turned 180 degrees: one face at 0.95
    def fake(self, rgb):
        upright = rgb[0, 0, 0] == 7
        if upright:
            return [Face((10, 10, 20, 20), 0.8), Face((50, 10, 20, 20), 0.8)]
        return [Face((10, 10, 20, 20), 0.95)] if rgb[-1, -1, 0] == 7 else []

    monkeypatch.setattr(det.YuNetDetector, "_detect", fake)
    image = np.zeros((60, 80, 3), np.uint8)
    image[0, 0] = 7
    faces = get_detector("yunet", min_side=None).detect_faces(image)
    assert [f.confidence for f in faces] == [0.8, 0.8]


@pytest.mark.skipif(not (SHARED_PHOTOS / "fr_obama.jpg").is_file(), reason="needs ../shared/photos")
@pytest.mark.parametrize("name", ["yunet", "yunet-onet"])
@pytest.mark.parametrize("turns", [1, 2, 3])
def test_a_real_photo_turned_without_exif_reads_as_upright(turns, name) -> None:
    rgb = to_rgb(SHARED_PHOTOS / "fr_obama.jpg")
    detector = get_detector(name)
    (upright,) = detector.detect_faces(rgb)
    (found,) = detector.detect_faces(np.ascontiguousarray(np.rot90(rgb, turns)))
    assert found.confidence == pytest.approx(upright.confidence, abs=0.02)
    # the chip cropped from the turned photo is the upright photo's, to a few pixels' noise
    chip = crop_face(np.rot90(rgb, turns), found)
    assert np.abs(chip.astype(float) - crop_face(rgb, upright).astype(float)).mean() < 12
    # a small photo, enlarged for detection and searched turned: the same crop as upright
    small = Image.fromarray(rgb)
    small.thumbnail((120, 120), Image.LANCZOS)
    small = np.asarray(small)
    (upright,), _ = detector.detect_faces_turned(small)
    (found,), kept = detector.detect_faces_turned(np.ascontiguousarray(np.rot90(small, turns)))
    assert kept == 4 - turns
    chip = crop_face(np.rot90(small, turns), found)
    assert np.abs(chip.astype(float) - crop_face(small, upright).astype(float)).mean() < 3


@pytest.mark.skipif(not (SHARED_PHOTOS / "fr_biden.jpg").is_file(), reason="needs ../shared/photos")
@pytest.mark.parametrize("name", ["yunet", "yunet-onet"])
def test_a_small_photos_face_is_found_enlarged_and_cropped_from_the_photo(name) -> None:
    whole = Image.fromarray(to_rgb(SHARED_PHOTOS / "fr_biden.jpg"))
    small = whole.copy()
    small.thumbnail((64, 64), Image.LANCZOS)  # the face about 15 px wide
    rgb = np.asarray(small)
    assert get_detector(name, min_side=None).detect_faces(rgb) == []  # as YuNet sees it as it is
    (face,) = get_detector(name).detect_faces(rgb)
    (big,) = get_detector(name).detect_faces(np.asarray(whole))
    k = max(small.size) / max(whole.size)
    assert np.allclose(face.box, np.asarray(big.box) * k, atol=3)  # in the small photo's pixels
    assert crop_face(rgb, face).shape == (200, 200, 3)


@pytest.mark.skipif(not (SHARED_PHOTOS / "fr_obama.jpg").is_file(), reason="needs ../shared/photos")
def test_a_large_sideways_jpeg_gives_boxes_in_the_whole_photos_pixels(model, tmp_path: Path) -> None:
    # 2,274 px: decoded at half size for YuNet (640 px), the face cropped from the whole photo
    upright = Image.fromarray(to_rgb(SHARED_PHOTOS / "fr_obama.jpg")).resize((1820, 2274))
    upright.save(tmp_path / "upright.jpg", quality=95)
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.jpg", quality=95)
    predictor = Predictor(model, detector="yunet")
    (up,) = predictor.predict([tmp_path / "upright.jpg"])
    (side,) = predictor.predict([tmp_path / "sideways.jpg"])
    # the sideways box is the upright one turned a quarter counter-clockwise: (y, W - x - w, h, w)
    x, y, w, h = up["box"]
    assert np.allclose(side["box"], [y, 1820 - x - w, h, w], atol=12)
    assert abs(side["age"] - up["age"]) < 3 and abs(side["p_female"] - up["p_female"]) < 0.1
