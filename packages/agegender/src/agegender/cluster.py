"""Training on several machines: ``tf.distribute.MultiWorkerMirroredStrategy``, made safe.

Every worker runs the same command (``agegender train --strategy multi_worker ...``) with its own
``TF_CONFIG``, TensorFlow's description of the cluster and of this process's place in it::

    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                "task": {"type": "worker", "index": 0}}'

Worker 0 (or the ``chief`` task, if the cluster has one) is the chief: it alone holds the run
folder's lock and writes the run folder. Every other worker keeps its own copy of the resume
state (history, checkpoints, backups) in a folder of its own (:func:`worker_folder`), which it
removes when the run finishes; it runs the same training steps (the collective ops must match)
but not the evaluation and the report. When a worker dies the others stop within seconds
(:class:`ClusterError`); started again with the same commands, every worker restores its
``BackupAndRestore`` backup of the last finished epoch and the cluster goes on from there.
Before each fitting phase the workers compare where they resume (:func:`check_callback`), so a
worker that lost its state, or sees other data, stops the cluster with a message instead of
hanging it or training apart from the others.

Importing this module does not import TensorFlow (the command line reads ``TF_CONFIG`` first).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

TASK_TYPES = ("chief", "worker")
WORKER_DIR_ENV = "AGEGENDER_WORKER_DIR"
# the policies a worker may resolve "auto" to, as numbers the workers can exchange
POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


class ClusterError(RuntimeError):
    """The cluster cannot go on: a worker was lost, or the workers disagree (the message says
    what to do). The command line prints it in one line, with exit status 3."""


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in a ``TF_CONFIG`` cluster."""

    task_type: str
    task_id: int
    cluster: Mapping[str, Sequence[str]]

    @property
    def is_chief(self) -> bool:
        """The ``chief`` task, or worker 0 when the cluster has no chief (TensorFlow's rule)."""
        if self.task_type == "chief":
            return True
        return self.task_id == 0 and "chief" not in self.cluster

    @property
    def index(self) -> int:
        """Position among the cluster's tasks: the chief first, then the workers."""
        if self.task_type == "chief":
            return 0
        return self.task_id + (1 if "chief" in self.cluster else 0)

    @property
    def size(self) -> int:
        return sum(len(self.cluster.get(kind, ())) for kind in TASK_TYPES)

    def __str__(self) -> str:
        return f"{self.task_type} {self.task_id} ({self.cluster[self.task_type][self.task_id]})"


def cluster_task(environ: Mapping[str, str] | None = None) -> ClusterTask | None:
    """This process's task from ``TF_CONFIG`` (None when it is not set); ``ValueError`` with one
    line saying what is wrong with it otherwise."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON ({exc}): {text[:200]}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError('TF_CONFIG needs "cluster" and "task" objects, e.g. {"cluster": {"worker": '
                         '["host0:12345", "host1:12345"]}, "task": {"type": "worker", "index": 0}}. '
                         f"Received: {text[:200]}")
    unknown = sorted(set(cluster) - set(TASK_TYPES))
    if unknown or not any(cluster.get(kind) for kind in TASK_TYPES):
        raise ValueError(f"TF_CONFIG cluster: needs a 'worker' list (and at most one 'chief'); "
                         f"{'no ' + str(unknown) + ' tasks (not supported)' if unknown else 'it is empty'}")
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise ValueError(f'TF_CONFIG cluster "{kind}": a list of "host:port" strings. '
                             f"Received: {addresses!r}")
    if len(cluster.get("chief", ())) > 1:
        raise ValueError(f"TF_CONFIG cluster: at most one chief. Received: {cluster['chief']}")
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise ValueError(f"TF_CONFIG task: {{'type': one of {sorted(cluster)}, 'index': a position "
                         f"in its list}}. Received: {task}")
    return ClusterTask(kind, index, {k: list(v) for k, v in cluster.items()})


def worker_folder(out: str | os.PathLike, task: ClusterTask) -> Path:
    """Where a worker other than the chief keeps its resume state for the run folder ``out``:
    ``$AGEGENDER_WORKER_DIR`` (else the system's temporary folder) /
    ``agegender-<run name>-<task>-<hash of the run folder's path>``. It outlives a killed
    process, so the worker started again finds its backup; it is removed when the run finishes."""
    base = Path(os.environ.get(WORKER_DIR_ENV) or tempfile.gettempdir())
    digest = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:12]
    return base / f"agegender-{Path(out).name}-{task.task_type}{task.task_id}-{digest}"


def clear_folder(folder: Path, *, keep: Sequence[str] = ()) -> None:
    """Remove what ``folder`` holds, except the names in ``keep`` (a stale worker state)."""
    for child in folder.iterdir():
        if child.name in keep:
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()


# --------------------------------------------------------------------------------------------------
# Keras 3 under MultiWorkerMirroredStrategy


_patched = False


def patch_keras() -> None:
    """Make Keras 3 (3.15) ``fit`` work under ``MultiWorkerMirroredStrategy`` (the two places it
    does not: keras-team/keras#20585). Both replacements change nothing for other strategies.

    * Before the first step ``fit`` builds the metrics from one batch, got by averaging the first
      distributed batch across replicas with ``strategy.reduce``, which this strategy cannot do
      for a nested batch ("Attempt to convert a value (PerReplica...)"). Only the batch's
      shapes and dtypes are used: this worker's own part serves.
    * Every step's losses and metrics are averaged across workers with ``strategy.reduce(...,
      axis=0)``, which fails on the per-replica scalars they are ("Invalid reduction dimension
      0"): they are averaged across replicas (``axis=None``), as on one machine.
    """
    global _patched
    if _patched:
        return
    import tensorflow as tf
    from keras import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    multi_worker = tf_trainer._collective_all_reduce_multi_worker
    build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    reduce_per_replica = tf_trainer.reduce_per_replica

    def local_part(strategy, value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self.distribute_strategy
        if self._distribute_strategy is None or iterator is None or not multi_worker(strategy):
            return build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            data_batch = tree.map_structure(lambda v: local_part(strategy, v), next(it))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_scalars(values, strategy, reduction):
        if reduction in ("auto", "mean") and multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_scalars
    _patched = True


# --------------------------------------------------------------------------------------------------
# What the workers tell each other


def gather_rows(strategy, row: Sequence[int]) -> list[list[int]]:
    """Every task's ``row`` of small integers, in cluster order (the chief's first).

    An all-reduce (a sum) of a table in which each task fills only its own row, on the first of
    its replicas. Every task must call it at the same point, as any collective op.
    """
    import numpy as np
    import tensorflow as tf

    resolver = strategy.cluster_resolver
    task = ClusterTask(resolver.task_type, int(resolver.task_id), resolver.cluster_spec().as_dict())
    table = np.zeros((task.size, len(row)), dtype=np.int64)
    table[task.index] = row
    local_replicas = len(strategy.extended.worker_devices)

    def contribution():
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        first = tf.equal(replica % local_replicas, 0)
        return tf.where(first, tf.constant(table), tf.zeros_like(table))

    summed = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(contribution), axis=None)
    return np.asarray(summed).astype(int).tolist()


def check_callback(strategy, data_fingerprint: str):
    """A Keras callback that, when a fitting phase starts (after ``BackupAndRestore`` has
    restored), checks that every worker resumes the same phase at the same epoch on the same
    data, and stops them all with a :class:`ClusterError` otherwise."""
    import keras

    fingerprint = int(data_fingerprint[:6], 16)  # 24 bits: enough to tell two datasets apart

    class SameStateOnEveryWorker(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            restored = self.model._initial_epoch  # set by BackupAndRestore when it restored
            mine = [int(self.params["epochs"]), -1 if restored is None else int(restored), fingerprint]
            rows = gather_rows(strategy, mine)
            if all(row == rows[0] for row in rows):
                return
            described = "; ".join(
                f"task {i}: phase ending at epoch {end}, "
                f"{'no backup' if epoch < 0 else f'backup of epoch {epoch}'}, data {data:06x}"
                for i, (end, epoch, data) in enumerate(rows))
            raise ClusterError(
                f"the workers do not resume from the same state ({described}): a worker lost its "
                f"state folder (${WORKER_DIR_ENV} or the temporary folder) or sees other data; "
                "train in a new run folder, or give every worker the same data and state")

    return SameStateOnEveryWorker()


class Agreement:
    """Bring every worker's resume state to the same point before a phase trains.

    A worker killed at an epoch's end may die after the others have saved that epoch's backup
    but before it saved its own (or, at a phase's end, its ``<phase>.weights.h5``). Started
    again, they would resume one epoch (or phase) apart and hang or train apart. So the backups
    keep the epoch before too (``BackupAndRestore(double_checkpoint=True)``), and before each
    phase the workers agree on the latest state every one of them has: a worker ahead goes back
    to its previous backup (or finished phase) and trains that epoch again with the others.
    """

    def __init__(self, strategy) -> None:
        self.strategy = strategy

    def phases(self, done: Sequence[Path]) -> None:
        """``done``: the fitting phases' end-state files, in order; those past the count every
        worker has are removed (that phase trains again from its backup, or from its start)."""
        finished = next((i for i, path in enumerate(done) if not path.is_file()), len(done))
        common = min(row[0] for row in gather_rows(self.strategy, [finished]))
        for path in done[common:finished]:
            path.unlink()
            _log(f"{path.name}: another worker had not finished this phase; it trains again")

    def backup(self, backup_dir: Path) -> None:
        """Make this worker's backup in ``backup_dir`` the latest epoch every worker has."""
        latest, previous = _backup_epochs(backup_dir)
        rows = gather_rows(self.strategy, [latest, previous])
        common = min(row[0] for row in rows)
        stuck = [i for i, (last, before) in enumerate(rows) if common not in (last, before, 0)]
        if stuck:
            raise ClusterError(
                "the workers' backups are too far apart to resume together (task: latest, "
                f"previous epoch: {'; '.join(f'{i}: {a}, {b}' for i, (a, b) in enumerate(rows))}): "
                "train in a new run folder")
        if latest == common:
            return
        if common == 0:
            shutil.rmtree(backup_dir)
        else:
            for name in ("latest.weights.h5", "training_metadata.json"):
                shutil.copyfile(backup_dir / f"{name}.bkp", backup_dir / name)
        _log(f"{backup_dir.name}: back to epoch {common}, the latest every worker has backed up "
             f"(this one had {latest})")


def _backup_epochs(backup_dir: Path) -> tuple[int, int]:
    """(latest, previous) epochs in a ``BackupAndRestore(double_checkpoint=True)`` folder."""
    def epoch(path: Path) -> int:
        return int(json.loads(path.read_text())["epoch"]) if path.is_file() else 0

    meta = backup_dir / "training_metadata.json"
    return epoch(meta), epoch(meta.with_name(meta.name + ".bkp"))


def _log(message: str) -> None:
    import logging

    logging.getLogger("agegender").info(message)
