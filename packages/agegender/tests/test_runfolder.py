"""A run folder nothing can corrupt: one writer at a time, stale locks taken over, options kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agegender.config import TrainConfig
from agegender.runfolder import RunFolder, RunFolderError

HOLDER = textwrap.dedent(
    """
    import sys, time
    from agegender.runfolder import RunFolder
    run = RunFolder(sys.argv[1])
    run.acquire()
    print("locked", flush=True)
    time.sleep(120)
    """
)


@pytest.fixture
def holder(tmp_path: Path):
    """A process that holds ``tmp_path/run``'s lock (killed with SIGKILL at the end)."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    process = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    yield process
    process.kill()
    process.wait(timeout=30)


def test_a_folder_in_use_is_refused_naming_the_other_process(holder, tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match=rf"run is in use by process {holder.pid} on "):
        RunFolder(tmp_path / "run").acquire()


def test_a_lock_left_by_a_killed_process_is_taken_over(holder, tmp_path: Path) -> None:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    run = RunFolder(tmp_path / "run")
    with run:
        assert run.took_over is not None and f"process {holder.pid} " in run.took_over
        owner = json.loads((tmp_path / "run" / ".lock").read_text())
        assert owner["pid"] == os.getpid()
    # released cleanly: the next one takes it without a stale owner
    again = RunFolder(tmp_path / "run")
    with again:
        assert again.took_over is None


def test_cli_train_on_a_folder_in_use_refuses_at_once(holder, tmp_path: Path) -> None:
    """Two `agegender train` on one --out used to interleave history.csv for good."""
    data = tmp_path / "data"
    data.mkdir()
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "agegender.cli", "train", "--data-dir", str(data), "--out",
         str(tmp_path / "run"), "--epochs", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"agegender: error: {tmp_path / 'run'} is in use by process {holder.pid}")
    assert result.stderr.count("\n") == 1
    assert time.perf_counter() - started < 60
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]  # nothing written


def _stored(run: Path, config: TrainConfig, *, finished: bool, precision: str = "float32") -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.json").write_text(json.dumps({"config": config.to_dict(), "precision_resolved": precision}))
    if finished:
        (run / "metrics.json").write_text("{}")


@pytest.mark.parametrize("finished", [False, True])
def test_changed_options_are_refused_naming_each_with_both_values(tmp_path: Path, finished: bool) -> None:
    run = tmp_path / "run"
    _stored(run, TrainConfig(out=str(run), lr=1e-3), finished=finished)
    state = "a finished run" if finished else "an unfinished run"
    with pytest.raises(RunFolderError, match=rf"holds {state} trained with other options "
                       r"\(backbone: the run has 'custom_cnn', asked 'mobilenet_v2'; "
                       r"lr: the run has 0.001, asked 0.0005\)"):
        RunFolder(run).check_options(TrainConfig(out=str(run), lr=5e-4, backbone="mobilenet_v2"))
    with pytest.raises(RunFolderError, match=r"precision \(resolved\): the run has 'float32', asked 'mixed_bfloat16'"):
        RunFolder(run).check_options(TrainConfig(out=str(run)), precision="mixed_bfloat16")
    # what does not change training may differ
    assert RunFolder(run).check_options(TrainConfig(out=str(run), cache=False, keep_checkpoints=True),
                                        precision="float32")
