"""Environment of the application's tests."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import threading
import time

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# measured "auto" verdicts go to a folder of this test session, not the user's ~/.cache; and
# `agegender predict` runs Keras, whose outputs the tests compare exactly ("auto" has its own tests)
if "AGEGENDER_CACHE_DIR" not in os.environ:
    os.environ["AGEGENDER_CACHE_DIR"] = tempfile.mkdtemp(prefix="agegender-test-cache-")
    atexit.register(shutil.rmtree, os.environ["AGEGENDER_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("AGEGENDER_RUNTIME", "keras")


def serve_in_thread(app):
    """``app`` served by uvicorn on a free 127.0.0.1 port in a thread: (server, thread, port).
    Stop it with ``server.should_exit = True`` and ``thread.join()``."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server, thread, sock.getsockname()[1]


@pytest.fixture(scope="session")
def live_server():
    """:func:`serve_in_thread` (test modules cannot import conftest under
    ``--import-mode=importlib``)."""
    return serve_in_thread
