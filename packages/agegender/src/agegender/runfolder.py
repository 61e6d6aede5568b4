"""A run folder nothing can corrupt: one process at a time, the same options on resume.

    with RunFolder(out) as run:          # refuses at once if another process holds the folder
        run.check_options(config)        # refuses a changed option on resume, naming it
        ...

The lock is an advisory ``fcntl`` lock on ``OUT/.lock``, which holds the owner's process id and
host. The operating system releases it when the process dies, however it dies, so a lock left by a
killed process is recognised as stale (the file is there, nobody holds it) and taken over.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

from agegender.config import TrainConfig, training_differences

LOCK_NAME = ".lock"


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (in use, or started with other options)."""


class RunFolder:
    """The files of one training run, and the lock that makes this process their only writer."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.path = Path(out)
        self._lock_file = None
        self.took_over: str | None = None  # the stale lock's owner, when one was taken over

    # paths ----------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.json"

    @property
    def model_path(self) -> Path:
        return self.path / "model.keras"

    @property
    def report_path(self) -> Path:
        return self.path / "report" / "report.md"

    @property
    def history_path(self) -> Path:
        return self.path / "history.csv"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def finished(self) -> bool:
        return self.metrics_path.is_file()

    # the lock -------------------------------------------------------------------------------
    def __enter__(self) -> RunFolder:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the folder's lock or raise :class:`RunFolderError` naming the process holding it."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock_path = self.path / LOCK_NAME
        handle = open(lock_path, "a+")  # noqa: SIM115 - held open for the run's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = _describe(handle.read())
            handle.close()
            raise RunFolderError(
                f"{self.path} is in use by {owner}: wait for it to finish, stop it, or use "
                "another --out"
            ) from None
        handle.seek(0)
        previous = handle.read().strip()
        if previous:
            self.took_over = _describe(previous)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)[:300],
        }) + "\n")
        handle.flush()
        self._lock_file = handle

    def release(self) -> None:
        if self._lock_file is None:
            return
        self._lock_file.seek(0)
        self._lock_file.truncate()  # an empty lock file: nobody was killed holding it
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()
        self._lock_file = None

    # the stored options ---------------------------------------------------------------------
    def stored(self) -> dict[str, Any]:
        """The run's ``config.json`` ({} before the run has written one)."""
        if not self.config_path.is_file():
            return {}
        try:
            return json.loads(self.config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunFolderError(f"{self.config_path} is not valid JSON ({exc}); use another --out") from None

    def check_options(self, config: TrainConfig, *, precision: str | None = None) -> dict[str, Any]:
        """Refuse to go on with options that change training and differ from the stored ones
        (``precision``: the policy resolved now, compared with the one the run trained in).
        Returns the stored config.json ({} for a new run)."""
        stored = self.stored()
        if not stored:
            return stored
        changed = training_differences(stored.get("config", {}), config)
        before = stored.get("precision_resolved")
        if precision is not None and before is not None and before != precision:
            changed.append(f"precision (resolved): the run has {before!r}, asked {precision!r}")
        if changed:
            state = "a finished run" if self.finished else "an unfinished run"
            raise RunFolderError(
                f"{self.path} holds {state} trained with other options ({'; '.join(changed)}): "
                f"{'ask again with its options' if self.finished else 'resume it with its options'} "
                "or use another --out"
            )
        return stored

    def remove_checkpoints(self) -> None:
        shutil.rmtree(self.checkpoints, ignore_errors=True)


def _describe(text: str) -> str:
    """'process 123 on host (since ..., COMMAND)' from a lock file's content."""
    try:
        owner = json.loads(text)
        return (f"process {owner['pid']} on {owner['host']} (since {owner['since']}: "
                f"{owner.get('command', '?')})")
    except (json.JSONDecodeError, KeyError, TypeError):
        return "another process"
