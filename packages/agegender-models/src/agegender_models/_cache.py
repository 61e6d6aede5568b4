"""Where measured verdicts are kept: the precision ``auto`` picks and the runtime ``auto`` picks.

``cache_dir()`` follows scikit-learn's ``get_data_home``: an argument, else
``$AGEGENDER_CACHE_DIR``, else ``$XDG_CACHE_HOME/agegender``, else ``~/.cache/agegender``.
A verdict holds only for the machine it was measured on: :func:`machine_id` names the CPU (model
name and a hash of its feature flags) and any GPU.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

CACHE_ENV = "AGEGENDER_CACHE_DIR"


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The cache folder (not created here): ``path``, else ``$AGEGENDER_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/agegender``, else ``~/.cache/agegender``."""
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "agegender"


def _cpuinfo() -> tuple[str, str]:
    """(model name, feature flags) from /proc/cpuinfo; ``platform`` where there is none."""
    name, flags = "", ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not name:
                name = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = value.strip()
    return name or platform.processor() or platform.machine() or "unknown CPU", flags


def cpu_description() -> dict[str, Any]:
    """The CPU as benchmarks record it: model name, logical CPUs, AVX512_BF16, AMX."""
    name, flags = _cpuinfo()
    words = set(flags.split())
    return {"model": name, "cpus": os.cpu_count(), "avx512_bf16": "avx512_bf16" in words,
            "amx_bf16": "amx_bf16" in words, "avx512_vnni": "avx512_vnni" in words}


def _gpu_names() -> list[str]:
    """The NVIDIA GPUs its driver shows (``/proc/driver/nvidia/gpus/*/information``), read without
    importing TensorFlow: a verdict's key is then known before TensorFlow loads, or without it."""
    names = []
    with contextlib.suppress(OSError):
        for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
            for line in info.read_text(encoding="utf-8", errors="replace").splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "Model":
                    names.append(value.strip())
    return names


@functools.cache
def machine_id() -> str:
    """``"<CPU model> flags:<12 hex>"`` (+ ``" gpu:<names>"``): what a measured verdict holds for."""
    name, flags = _cpuinfo()
    digest = hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:12]
    # CUDA_VISIBLE_DEVICES="" (or -1) hides the GPUs from TensorFlow: measured without them
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1")
    gpus = [] if hidden else _gpu_names()
    return f"{name} flags:{digest}" + (f" gpu:{','.join(gpus)}" if gpus else "")


def read_json(path: Path) -> dict[str, Any]:
    """A cache file's content; ``{}`` when it is missing or unreadable (it is then rewritten)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_bytes(path: Path, data: bytes) -> None:
    """Write atomically (a temporary file renamed), so that a concurrent reader never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically (:func:`write_bytes`)."""
    write_bytes(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
