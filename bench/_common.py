"""What the bench scripts share: the default data folder, the CPU's name and the matmul peak.

Imported as ``_common`` from the scripts' own folder (``python bench/bench_x.py`` puts bench/ first
on ``sys.path``).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

DATA_DIR = "../shared/utkface/crop_part1_5000"


def default_data_dir() -> str:
    """``--data-dir``'s default: $UTKFACE_DIR, else the shared UTKFace folder."""
    return os.environ.get("UTKFACE_DIR", DATA_DIR)


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo, else the platform's word for it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def matmul_peak(dtype: str, n: int = 4096, reps: int = 3) -> float:
    """GFLOP/s of the best of ``reps`` n×n matmuls in ``dtype`` (after a warm-up one)."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((n, n)), dtype)
    b = tf.cast(tf.random.normal((n, n)), dtype)
    f = tf.function(lambda x, y: tf.matmul(x, y))
    f(a, b).numpy()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        f(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9
