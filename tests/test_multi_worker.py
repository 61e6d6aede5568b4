"""Multi-worker training on one machine: two `agegender train --strategy multi_worker` processes on
127.0.0.1, as two hosts would run it (each with its own TF_CONFIG).

Tiny on purpose (92 generated images: 64 to train on, 4 steps of 16 per epoch, 32 px): the
mechanics a user relies on (one run folder, the same result as one process, a killed worker
rejoining), not model quality. Every process is started with a deadline and killed at the end.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

DEADLINE_S = 240  # for a whole cluster run, restarts included (about 40 s on an idle 2-core machine)
TRAIN = ["--n", "92", "--image-size", "32", "--batch-size", "16", "--precision", "float32",
         "--dropout", "0", "--quiet"]
RUN_FILES = ("config.json", "splits/train.csv", "splits/val.csv", "splits/test.csv", "history.csv",
             "model.keras", "metrics.json", "report/report.md", "report/predictions.csv")


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class Launcher:
    """Starts `agegender train` processes (logs in files) and kills what is left at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[subprocess.Popen] = []
        self.logs: dict[str, list[Path]] = {}

    def start(self, name: str, args: list[str], tf_config: dict | None = None) -> subprocess.Popen:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
               "AGEGENDER_WORKER_DIR": str(self.root / "worker-state")}
        env.pop("TF_CONFIG", None)
        if tf_config is not None:
            env["TF_CONFIG"] = json.dumps(tf_config)
        logs = self.logs.setdefault(name, [])
        log = self.root / f"{name}.{len(logs)}.log"
        logs.append(log)
        with log.open("w") as handle:
            process = subprocess.Popen([sys.executable, "-m", "agegender.cli", "train", *args],
                                       stdout=handle, stderr=subprocess.STDOUT, env=env)
        self.started.append(process)
        return process

    def text(self, name: str, attempt: int = -1) -> str:
        return self.logs[name][attempt].read_text()

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    started = Launcher(tmp_path)
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory, make_faces) -> Path:
    return make_faces(tmp_path_factory.mktemp("cluster") / "faces", n=92)


def _cluster(n: int = 2) -> dict:
    return {"worker": [f"127.0.0.1:{port}" for port in _free_ports(n)]}


def _task(cluster: dict, index: int) -> dict:
    return {"cluster": cluster, "task": {"type": "worker", "index": index}}


def _wait(processes: dict[str, subprocess.Popen], launcher: Launcher, deadline: float) -> None:
    """Wait for every process to exit 0 (a failure shows its log)."""
    for name, process in processes.items():
        try:
            code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} still running after {DEADLINE_S} s:\n{launcher.text(name)[-3000:]}")
        assert code == 0, f"{name} exited {code}:\n{launcher.text(name)[-3000:]}"


def _assert_one_complete_run_folder(runs: Path, out: Path, launcher: Launcher, epochs: int,
                                    others: tuple[str, ...] = ()) -> dict:
    # no worker wrote a run folder of its own
    assert sorted(p.name for p in runs.iterdir()) == sorted([out.name, *others])
    missing = [name for name in RUN_FILES if not (out / name).is_file()]
    assert not missing, f"run folder incomplete, missing {missing}"
    assert not (out / "checkpoints").exists()  # the resume state is removed once the run is done
    # the other worker kept its resume state in a folder of its own and removed it at the end
    state = launcher.root / "worker-state"
    assert not state.exists() or not any(state.iterdir()), list(state.iterdir())
    config = json.loads((out / "config.json").read_text())
    assert config["strategy"] == "CollectiveAllReduceStrategy"  # MultiWorkerMirroredStrategy's class
    assert config["replicas"] == 2
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == list(range(epochs))  # every epoch once, in order
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_run"] == epochs
    return metrics


def test_two_workers_write_one_run_folder_and_match_one_process(faces: Path, tmp_path: Path,
                                                                launcher: Launcher) -> None:
    """Two workers train one model into one run folder, with the same result as one process with
    the same global batch: `--strategy mirrored` on two logical CPUs, two replicas of 8 as the
    cluster has (the default strategy, one replica of 16, differs by BatchNorm's per-replica
    statistics: 0.7 years of validation MAE on this run)."""
    runs = tmp_path / "runs"
    out = runs / "cluster"
    epochs = 2
    # the head refit is a fit on the chief alone, after the others have left: it must not wait
    # for them (no collective op outside the cluster's training)
    common = ["--data-dir", str(faces), "--epochs", str(epochs), "--head-refit-epochs", "1", *TRAIN]
    cluster = _cluster()
    deadline = time.monotonic() + DEADLINE_S
    processes = {
        f"worker{i}": launcher.start(f"worker{i}", [*common, "--strategy", "multi_worker", "--out",
                                                     str(out)], _task(cluster, i))
        for i in range(2)
    }
    processes["reference"] = launcher.start(
        "reference", [*common, "--strategy", "mirrored", "--out", str(runs / "reference")])
    _wait(processes, launcher, deadline)

    metrics = _assert_one_complete_run_folder(runs, out, launcher, epochs, ("reference",))
    assert "trained; the chief writes the run folder" in launcher.text("worker1")
    assert not (runs / "reference" / "checkpoints").exists()
    reference = json.loads((runs / "reference" / "metrics.json").read_text())
    # stated tolerance: 1e-3 years and exact gender accuracy (measured: equal to ~1e-6)
    for split in ("validation", "test"):
        assert metrics[split]["age_mae"] == pytest.approx(reference[split]["age_mae"], abs=1e-3)
        assert metrics[split]["gender_accuracy"] == reference[split]["gender_accuracy"]
    assert metrics["best_epoch"] == reference["best_epoch"]
    assert metrics["before_head_refit"]["test"]["age_mae"] == pytest.approx(
        reference["before_head_refit"]["test"]["age_mae"], abs=1e-3)
    ours, theirs = pd.read_csv(out / "history.csv"), pd.read_csv(runs / "reference" / "history.csv")
    for column in ("loss", "val_loss", "age_mae", "val_age_mae"):
        assert ours[column].tolist() == pytest.approx(theirs[column].tolist(), rel=1e-4), column


def test_a_killed_worker_restarted_resumes_the_cluster_from_its_backup(faces: Path, tmp_path: Path,
                                                                       launcher: Launcher) -> None:
    """Worker 1 is killed mid-run (SIGKILL, once the chief has logged two epochs) and started again
    at once, as a job scheduler would. The chief loses it within seconds and stops with exit
    status 3 and one line; started again, both resume from the same backup (epoch 1 or 2: a kill
    at an epoch's end may leave worker 1 without the backup the chief saved, and the chief then
    goes back to the one before) and finish: one run folder, every epoch once in history.csv."""
    runs = tmp_path / "runs"
    out = runs / "cluster"
    epochs = 5
    cluster = _cluster()
    args = ["--data-dir", str(faces), "--epochs", str(epochs), *TRAIN, "--strategy", "multi_worker",
            "--out", str(out)]
    names = ("worker0", "worker1")
    deadline = time.monotonic() + DEADLINE_S
    processes = {name: launcher.start(name, args, _task(cluster, i)) for i, name in enumerate(names)}
    history = out / "history.csv"
    while not (history.is_file() and len(history.read_text().splitlines()) >= 3):  # header + 2 epochs
        assert time.monotonic() < deadline, "no epoch finished in time"
        for name, process in processes.items():
            assert process.poll() is None, f"{name} exited early:\n{launcher.text(name)[-3000:]}"
        time.sleep(0.1)
    processes["worker1"].kill()
    processes["worker1"].wait(timeout=30)
    processes["worker1"] = launcher.start("worker1", args, _task(cluster, 1))

    exits: dict[str, list[int]] = {name: [] for name in names}
    while True:
        assert time.monotonic() < deadline, f"the cluster did not finish in time: exits {exits}"
        codes = {name: process.poll() for name, process in processes.items()}
        if all(code == 0 for code in codes.values()):
            break
        for name, code in codes.items():
            if code not in (None, 0):  # a scheduler's restart policy: on failure, start it again
                exits[name].append(code)
                assert code == 3 and len(exits[name]) <= 2, (
                    f"{name} exited {code}:\n{launcher.text(name)[-3000:]}")
                processes[name] = launcher.start(name, args, _task(cluster, names.index(name)))
        time.sleep(0.2)

    assert exits["worker0"] == [3], exits  # the chief lost worker 1 once, and said so in one line
    lost = launcher.text("worker0", 0)
    # TensorFlow words the loss several ways (the peer named by address or device path, or not
    # at all); test_cluster.py checks the naming on the words seen so far
    assert re.search(r"agegender: error: the cluster lost (worker 1|a task) \(", lost), lost
    assert "Traceback" not in lost and lost.count("agegender: error:") == 1, lost
    # both resumed from the same backup of an epoch that had finished, not from the start
    resumed = [re.findall(r"resumes after epoch (\d+)", launcher.text(name)) for name in names]
    assert resumed[0] == resumed[1] and len(resumed[0]) == 1 and int(resumed[0][0]) in (1, 2), (
        launcher.text("worker0"), launcher.text("worker1"))
    _assert_one_complete_run_folder(runs, out, launcher, epochs)
