"""ONet, MTCNN's last stage, as a LiteRT (TFLite) network: five landmarks for a face's patch.

The default detector, ``"yunet-onet"``, places the landmarks of YuNet's faces with ONet (crops
the shipped models read better than YuNet's own landmarks give; see
:class:`agegender_models.detect.YuNetONetDetector`). ONet's weights come inside the ``mtcnn``
wheel (1.0.0, MIT, by Iván de Paz Centeno; the network is Zhang et al.'s, 2016), where they run on
TensorFlow, which costs about 6 s to import. So the package ships ONet's landmark output as
``pretrained/onet.tflite`` (1.6 MB; float32, the weights unchanged; its licence is in
``pretrained/THIRD_PARTY_NOTICES.md``), run on LiteRT like YuNet: the default detector needs
neither TensorFlow nor ``mtcnn`` at run time. ``mtcnn`` and TensorFlow are needed only to make
that file again (:func:`write_tflite`) and by the test that checks it against ``mtcnn``'s ONet.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

TFLITE_FILE = Path(__file__).parent / "pretrained" / "onet.tflite"
PATCH = 48


def tflite_bytes() -> bytes:
    """``mtcnn``'s ONet as a TFLite flatbuffer with one signature, ``serve``: ``patches``
    (N, 48, 48, 3), MTCNN-normalised ((x - 127.5) / 128) -> ``landmarks`` (N, 10), fractions of
    the patch (the five xs, then the five ys)."""
    import tempfile

    import keras
    import tensorflow as tf
    from mtcnn.network.onet import ONet
    from mtcnn.utils.tensorflow import load_weights

    onet = ONet()
    onet.build()
    onet.set_weights(load_weights("onet.lz4"))  # the weights inside the mtcnn wheel
    archive = keras.export.ExportArchive()
    archive.track(onet)
    archive.add_endpoint(name="serve", fn=lambda patches: {"landmarks": onet(patches, training=False)[1]},
                         input_signature=[tf.TensorSpec([None, PATCH, PATCH, 3], tf.float32,
                                                        name="patches")])
    with tempfile.TemporaryDirectory() as tmp:
        archive.write_out(tmp, verbose=False)
        return tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serve"]).convert()


def write_tflite(path: str | Path = TFLITE_FILE) -> Path:
    """Write the shipped ``onet.tflite`` again from the ``mtcnn`` wheel's weights::

        python -c "from agegender_models.onet import write_tflite; write_tflite()"
    """
    path = Path(path)
    path.write_bytes(tflite_bytes())
    return path


class ONet:
    """The shipped network on the LiteRT interpreter: ``onet(patches)`` -> (N, 10) landmarks
    as fractions of each patch (xs, then ys), for (N, 48, 48, 3) float32 MTCNN-normalised
    patches. Behind a lock: LiteRT interpreters are not thread-safe."""

    def __init__(self, path: str | Path = TFLITE_FILE, *, threads: int | None = None) -> None:
        from .runtime import serve_signature

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONet's network file is missing from this installation "
                                    "of agegender-models; reinstall it")
        self._run = serve_signature(path.read_bytes(), threads or 1)
        self._lock = threading.Lock()

    def __call__(self, patches: np.ndarray) -> np.ndarray:
        with self._lock:
            return np.asarray(self._run(patches=np.asarray(patches, np.float32))["landmarks"])
