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
from collections.abc import Callable, Iterator

_loaded = False


# what the runtimes print from C++ on their first call, whatever the log level
NATIVE_NOISE = ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)


@contextlib.contextmanager
def _native_stderr_held(keep: Callable[[str], bool] = lambda line: False) -> Iterator[None]:
    """Send file descriptor 2 to a temporary file during the block; then write back the lines
    ``keep`` accepts (every line if the block raises)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (closed, as under some daemons): nothing to hold
        yield
        return
    raised = False
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            raised = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines = sink.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if raised or keep(line)))
            sys.stderr.flush()


def native_noise_dropped(*, verbose: bool = False) -> contextlib.AbstractContextManager:
    """Everything the block writes to stderr but ``NATIVE_NOISE`` (everything when ``verbose``)."""
    if verbose:
        return contextlib.nullcontext()
    return _native_stderr_held(keep=lambda line: line.strip() not in NATIVE_NOISE)


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
