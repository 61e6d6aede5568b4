"""Environment of the application's tests."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# measured "auto" verdicts go to a folder of this test session, not the user's ~/.cache; and
# `agegender predict` runs Keras, whose outputs the tests compare exactly ("auto" has its own tests)
if "AGEGENDER_CACHE_DIR" not in os.environ:
    os.environ["AGEGENDER_CACHE_DIR"] = tempfile.mkdtemp(prefix="agegender-test-cache-")
    atexit.register(shutil.rmtree, os.environ["AGEGENDER_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("AGEGENDER_RUNTIME", "keras")
