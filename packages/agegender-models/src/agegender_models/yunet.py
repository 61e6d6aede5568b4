"""YuNet, libfacedetection's face detector, as a LiteRT (TFLite) network.

libfacedetection (Shiqi Yu et al., BSD-3-Clause) runs YuNet with its own C++ loops; the one wheel
of it on PyPI (``yuface`` 2023.5.1, CPython 3.11 on x86-64 Linux and Windows only) is built
without AVX2, and YuNet took about 25 ms a photo at 640 px there -- half the photo path's time
on 2 cores. The same network run by LiteRT with XNNPACK takes 2-6 ms. So the package ships
YuNet's weights as ``pretrained/yunet.tflite`` (257 KB; its licence is in
``pretrained/THIRD_PARTY_NOTICES.md``) and runs it on any platform TensorFlow runs on; ``yuface``
is needed only to make that file again (:func:`write_tflite`) and by the test that checks it
against libfacedetection, detection for detection.

The network (libfacedetection 2023's ``objectdetect_cnn``, rebuilt from its weight tensors, read
from the library by their symbol names): a 3x3 stride-2 convolution on the pixels (0-255, nothing
subtracted; libfacedetection reads BGR, the kernel here is flipped to take RGB; zero-padded to
multiples of 32 on the right and bottom, and one pixel on the top and left), then units of a 1x1
convolution followed by a 3x3 depthwise one with ReLU, max pooling 2x2; features at strides 8, 16 and 32 joined top-down (nearest upsampling,
sums); per stride, heads for the face class, objectness, the box (4) and 5 landmarks (10). Per
anchor (each cell of each stride): score ``sqrt(sigmoid(cls) * sigmoid(obj))``; box centre
``cell + offset * stride``, size ``exp(.) * stride``; landmarks ``cell + offset * stride``; boxes
scoring 0.2 or more (or the caller's threshold) kept by greedy non-maximum suppression at IoU
0.45, 1,000 candidates, 512 faces at most -- as libfacedetection does, which a test checks. (A
higher threshold keeps exactly libfacedetection's faces above it: greedy suppression only lets a
box be removed by a higher-scoring one.)
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

TFLITE_FILE = Path(__file__).parent / "pretrained" / "yunet.tflite"
STRIDES = (8, 16, 32)
HEADS = (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10))  # the 16 channels of an anchor's row
# (name, input channels, output channels) of the 1x1 + depthwise 3x3 units, in order
_UNITS = (
    [("backbone__model0_dp", 16, 16), ("backbone__model1_dp1", 16, 16), ("backbone__model1_dp2", 16, 32),
     ("backbone__model2_dp1", 32, 32), ("backbone__model2_dp2", 32, 64)]
    + [(f"backbone__model{m}_dp{i}", 64, 64) for m in (3, 4, 5) for i in (1, 2)]
    + [(f"neck__lateral_convs__{lvl}", 64, 64) for lvl in range(3)]
    + [(f"bbox_head__multi_level_{head}__{lvl}", 64, n) for head, n in HEADS for lvl in range(3)]
)
# libfacedetection's decoding settings, as yuface 2023.5.1's library calls detection_output:
# overlap 0.45, confidence 0.2, 1,000 candidates, 512 faces
NMS_IOU = 0.45
SCORE_THRESHOLD = 0.2
TOP_K = 1000
KEEP_TOP_K = 512


def weight_shapes() -> dict[str, int]:
    """Every weight tensor of the network: symbol name -> number of floats."""
    sizes = {"backbone__model0_pw_weight": 16 * 32, "backbone__model0_pw_bias": 16}
    for name, cin, cout in _UNITS:
        sizes |= {f"{name}_pw_weight": cout * cin, f"{name}_pw_bias": cout,
                  f"{name}_dw_weight": 9 * cout, f"{name}_dw_bias": cout}
    return sizes


def libfacedetection(library: str | Path | None = None):
    """libfacedetection's shared library (``yuface``'s, by default), loaded by ctypes; an
    ImportError saying how to install it where it cannot be."""
    import ctypes
    import importlib.util
    import sys

    try:
        if library is None:
            if not sys.platform.startswith("linux"):
                raise ImportError(f"not on this platform ({sys.platform})")
            spec = importlib.util.find_spec("yuface")
            if spec is None or not spec.submodule_search_locations:
                raise ImportError("No module named 'yuface'")
            library = Path(spec.submodule_search_locations[0]) / "libfacedetection.so"
        return ctypes.CDLL(str(library))
    except (ImportError, OSError) as exc:
        raise ImportError(
            "libfacedetection's own YuNet needs the yuface package (pip install 'yuface==2023.5.1'), "
            f"which has wheels for CPython 3.11 on x86-64 Linux (and Windows) only ({exc})"
        ) from None


def libfacedetection_weights(library: str | Path | None = None) -> dict[str, np.ndarray]:
    """YuNet's weights, read from libfacedetection's shared library (``yuface``'s, by default)
    by their exported symbol names."""
    import ctypes

    lib = libfacedetection(library)
    return {name: np.ctypeslib.as_array((ctypes.c_float * n).in_dll(lib, name)).copy()
            for name, n in weight_shapes().items()}


def build_model(weights: Mapping[str, np.ndarray]):
    """The network as a Keras model: RGB uint8 values as float32, (1, H, W, 3) with H and W
    multiples of 32 -> (1, anchors, 16), anchors of stride 8, 16, 32 in turn, each row-major;
    a row holds the raw cls, obj, bbox (4) and kps (10) outputs."""
    import keras
    from keras import layers

    def conv(x, layer, kernel, bias):
        y = layer(x)
        layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
        return y

    def unit(x, name, cin, cout, relu=True):
        w = weights[f"{name}_pw_weight"].reshape(cout, cin)  # [out][in]
        x = conv(x, layers.Conv2D(cout, 1, name=f"{name}_pw"), w.T[None, None], weights[f"{name}_pw_bias"])
        dw = weights[f"{name}_dw_weight"].reshape(3, 3, cout, 1)  # [tap][channel]
        return conv(x, layers.DepthwiseConv2D(3, padding="same", activation="relu" if relu else None,
                                              name=f"{name}_dw"), dw, weights[f"{name}_dw_bias"])

    units = {name: (cin, cout) for name, cin, cout in _UNITS}

    def run(x, name, relu=True):
        return unit(x, name, *units[name], relu=relu)

    image = keras.Input((None, None, 3), batch_size=1, name="image")
    # the first layer: a 3x3 stride-2 convolution centred on even pixels, stored as a 1x1 one over
    # the 27 values (ky, kx, channel; 5 zeros pad them to 32) of BGR pixels; here on RGB
    k0 = weights["backbone__model0_pw_weight"].reshape(16, 32)[:, :27].T.reshape(3, 3, 3, 16)[:, :, ::-1]
    x = layers.ZeroPadding2D(((1, 0), (1, 0)))(image)
    x = conv(x, layers.Conv2D(16, 3, strides=2, activation="relu", name="backbone__model0_pw"),
             k0, weights["backbone__model0_pw_bias"])
    x = layers.MaxPooling2D(2)(run(x, "backbone__model0_dp"))
    x = run(run(x, "backbone__model1_dp1"), "backbone__model1_dp2")
    x = layers.MaxPooling2D(2)(run(run(x, "backbone__model2_dp1"), "backbone__model2_dp2"))
    f8 = run(run(x, "backbone__model3_dp1"), "backbone__model3_dp2")
    f16 = run(run(layers.MaxPooling2D(2)(f8), "backbone__model4_dp1"), "backbone__model4_dp2")
    f32 = run(run(layers.MaxPooling2D(2)(f16), "backbone__model5_dp1"), "backbone__model5_dp2")
    f32 = run(f32, "neck__lateral_convs__2")
    f16 = run(layers.Add()([layers.UpSampling2D(2)(f32), f16]), "neck__lateral_convs__1")
    f8 = run(layers.Add()([layers.UpSampling2D(2)(f16), f8]), "neck__lateral_convs__0")
    rows = []
    for lvl, features in enumerate((f8, f16, f32)):
        heads = [run(features, f"bbox_head__multi_level_{head}__{lvl}", relu=False) for head, _ in HEADS]
        rows.append(layers.Reshape((-1, 16))(layers.Concatenate()(heads)))
    return keras.Model(image, layers.Concatenate(axis=1, name="anchors")(rows), name="yunet")


def tflite_bytes(weights: Mapping[str, np.ndarray]) -> bytes:
    """The network as a TFLite flatbuffer with one signature, ``serve``: image -> anchors."""
    import tempfile

    import keras
    import tensorflow as tf

    model = build_model(weights)
    archive = keras.export.ExportArchive()
    archive.add_endpoint(name="serve", fn=lambda image: {"anchors": model(image, training=False)},
                         input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32, name="image")])
    with tempfile.TemporaryDirectory() as tmp:
        archive.write_out(tmp, verbose=False)
        return tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serve"]).convert()


def write_tflite(path: str | Path = TFLITE_FILE, library: str | Path | None = None) -> Path:
    """Write the shipped ``yunet.tflite`` again from libfacedetection's library::

        python -c "from agegender_models.yunet import write_tflite; write_tflite()"
    """
    path = Path(path)
    path.write_bytes(tflite_bytes(libfacedetection_weights(library)))
    return path


class YuNet:
    """The shipped network on the LiteRT interpreter: :meth:`detect` an RGB uint8 image ->
    (N, 15) float rows: score (0-1), box x, y, w, h, then 5 landmarks (x, y) -- the eye on the
    left of the image, the other eye, the nose tip, the mouth's left and right corners.

    Up to :attr:`INTERPRETERS` interpreters, each kept at the padded image size it last ran
    (portrait and landscape photos of one camera alternate without resizing: resizing one costs
    about 4 ms, as much as a run; the second interpreter holds about 38 MB at 640 px); a new size
    takes the least recently used one. Behind a lock: LiteRT interpreters are not thread-safe,
    and XNNPACK already uses ``threads`` cores (default: ``$OMP_NUM_THREADS`` where set, as
    libfacedetection's OpenMP loops did -- a Ray worker of ``predict-batch`` sets it to its
    share --, else every CPU)."""

    INTERPRETERS = 2

    def __init__(self, path: str | Path = TFLITE_FILE, *, threads: int | None = None) -> None:
        from .runtime import serve_signature

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: YuNet's network file is missing from this installation "
                                    "of agegender-models; reinstall it")
        content, threads = path.read_bytes(), threads or _default_threads()
        self._new_runner = lambda: serve_signature(content, threads)
        # by input shape, oldest first
        self._runners: dict[tuple[int, ...], Any] = {(): self._new_runner()}
        self._lock = threading.Lock()
        self._priors: dict[tuple[int, int], np.ndarray] = {}

    def _anchor_grid(self, height: int, width: int) -> np.ndarray:
        """(anchors, 3): each anchor's cell x, y (pixels) and stride, in the network's order."""
        key = (height, width)
        grid = self._priors.get(key)
        if grid is None:
            parts = []
            for stride in STRIDES:
                ys, xs = np.mgrid[0:height // stride, 0:width // stride]
                parts.append(np.stack([xs.ravel() * stride, ys.ravel() * stride,
                                       np.full(xs.size, stride)], 1))
            grid = np.concatenate(parts).astype(np.float32)
            if len(self._priors) >= 64:  # a folder of many photo sizes: keep the memory bounded
                self._priors.clear()
            self._priors[key] = grid
        return grid

    def raw(self, rgb: np.ndarray) -> np.ndarray:
        """The network's (anchors, 16) output for an RGB uint8 image."""
        h, w = rgb.shape[:2]
        padded = np.zeros((1, *_padded(h, w), 3), np.float32)
        padded[0, :h, :w] = rgb
        with self._lock:
            run = self._runners.pop(padded.shape, None)
            if run is None:
                # the one never run, else a new one while fewer than INTERPRETERS, else the least
                # recently used (the call resizes it)
                if () in self._runners or len(self._runners) >= self.INTERPRETERS:
                    run = self._runners.pop(next(iter(self._runners)))
                else:
                    run = self._new_runner()
            self._runners[padded.shape] = run  # the most recently used, last
            return run(image=padded)["anchors"][0]

    def detect(self, rgb: np.ndarray, score_threshold: float = SCORE_THRESHOLD) -> np.ndarray:
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1 or rgb.dtype != np.uint8:
            raise ValueError(f"YuNet needs an HxWx3 uint8 image (0-255). Received shape {rgb.shape}, "
                             f"dtype {rgb.dtype}")
        out = self.raw(rgb)
        grid = self._anchor_grid(*_padded(*rgb.shape[:2]))
        logits = np.clip(out[:, :2], -88.37626, 88.37626)
        score = np.sqrt(np.prod(1.0 / (1.0 + np.exp(-logits)), axis=1))
        keep = np.flatnonzero(score >= score_threshold)
        if keep.size == 0:
            return np.zeros((0, 15), np.float32)
        keep = keep[np.argsort(-score[keep], kind="stable")][:TOP_K]
        out, cell, stride = out[keep], grid[keep, :2], grid[keep, 2:]
        centre = out[:, 2:4] * stride + cell
        with np.errstate(over="ignore"):
            size = np.exp(out[:, 4:6]) * stride
        corners = np.concatenate([centre - size / 2, centre + size / 2], 1)
        marks = (out[:, 6:16].reshape(-1, 5, 2) * stride[:, None] + cell[:, None]).reshape(-1, 10)
        finite = np.isfinite(corners).all(axis=1) & np.isfinite(marks).all(axis=1)
        if not finite.all():  # a box size past float32 (exp of a wild output): not a face
            keep, corners, marks = keep[finite], corners[finite], marks[finite]
        chosen = _nms(corners, NMS_IOU)[:KEEP_TOP_K]
        boxes = corners[chosen]
        return np.concatenate([score[keep][chosen, None], boxes[:, :2], boxes[:, 2:] - boxes[:, :2],
                               marks[chosen]], 1).astype(np.float32)


def _padded(height: int, width: int) -> tuple[int, int]:
    """The network's input size for an image: each side rounded up to a multiple of 32."""
    return -(-height // 32) * 32, -(-width // 32) * 32


def _default_threads() -> int:
    import os

    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else os.cpu_count() or 1


def _nms(corners: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression over boxes already sorted by score (libfacedetection's:
    a box is kept when its overlap with every kept box is at most ``iou``)."""
    area = np.prod(corners[:, 2:] - corners[:, :2], axis=1)
    kept: list[int] = []
    for i in range(len(corners)):
        if kept:
            k = np.asarray(kept)
            lo = np.maximum(corners[k, :2], corners[i, :2])
            hi = np.minimum(corners[k, 2:], corners[i, 2:])
            inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
            overlap = np.where(inter > 0, inter / (area[k] + area[i] - inter), 0.0)
            if np.any(overlap > iou):
                continue
        kept.append(i)
    return kept

