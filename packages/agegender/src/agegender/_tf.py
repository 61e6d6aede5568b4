"""Import TensorFlow without its start-up lines (oneDNN notices, CUDA probes, absl's preamble).

Those lines come from C++ before any Python setting can act on them, so they are caught at the
file-descriptor level while TensorFlow loads and probes its devices, and shown only if that fails.
``verbose=True`` leaves everything as TensorFlow prints it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

_loaded = False


@contextlib.contextmanager
def _native_stderr_held() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file; replay it if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def load_tensorflow(*, verbose: bool = False) -> None:
    """Import TensorFlow and Keras (and probe the devices) quietly unless ``verbose``."""
    global _loaded
    if _loaded:
        return
    if verbose:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with _native_stderr_held():
            import absl.logging
            import keras  # noqa: F401
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe ("failed call to cuInit") runs here
            tf.get_logger().setLevel("ERROR")
            absl.logging.set_verbosity(absl.logging.ERROR)
    _loaded = True
