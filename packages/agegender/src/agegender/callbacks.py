"""Keras callbacks of a training run, and the run's history.csv.

``ResumeState`` puts early stopping, the best-model checkpoint and the plateau schedule back
where they were when a killed run is started again; the EMA pair keeps the averaged weights in
the checkpoints. ``train`` assembles them (see ``agegender.phases.callbacks_for``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from agegender.config import MONITORS


def best_index(values: list[float], monitor: str) -> int:
    """Index of the best value (the first of equals, as Keras' callbacks keep the first)."""
    pick = min if MONITORS[monitor] == "min" else max
    return pick(range(len(values)), key=values.__getitem__)


def replayed_rates(source: str | os.PathLike | Sequence[float]) -> list[float]:
    """The learning rate of every epoch logged in a run's ``history.csv`` (its ``learning_rate``
    column, in epoch order), or a recipe's list of rates: what ``lr_schedule="replay"`` sets at
    the start of each epoch."""
    if not isinstance(source, str | os.PathLike):
        rates = [float(rate) for rate in source]
        if not rates or not all(rate > 0 for rate in rates):
            raise ValueError(f"lr_history: needs at least one rate, all positive. Received: {rates}")
        return rates
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"lr_history: no such file: {path} (a run folder's history.csv)")
    rows = read_history(path)
    try:
        rates = [float(row["learning_rate"]) for row in sorted(rows, key=lambda r: int(r["epoch"]))]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"lr_history {path}: needs 'epoch' and 'learning_rate' columns with numbers in every "
            f"row, as a run's history.csv has ({type(exc).__name__}: {exc})"
        ) from None
    if not rates:
        raise ValueError(f"lr_history {path}: no epochs in it")
    if not all(rate > 0 for rate in rates):
        raise ValueError(f"lr_history {path}: learning rates must be positive")
    return rates


def read_history(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def logged(rows: list[dict[str, str]], key: str) -> list[float]:
    """The values of ``key`` in history rows, skipping those never logged (CSVLogger writes "NA"
    for a key an epoch did not log, such as every val_* key of a fit without validation)."""
    return [float(r[key]) for r in rows if r.get(key) not in (None, "", "NA")]


def backed_up_epochs(backup_dir: Path) -> int:
    """Epochs finished according to BackupAndRestore's metadata (0 when there is no backup)."""
    meta = backup_dir / "training_metadata.json"
    return int(json.loads(meta.read_text())["epoch"]) if meta.is_file() else 0


def make_resume_callback(history_path: Path, backup_dir: Path, early_stopping, checkpoint,
                          first_epoch: int = 0, plateau=None, monitor: str = "val_loss"):
    """A callback that, on (re)start, aligns history.csv and the callbacks' state with the backup.

    ``first_epoch`` is where this ``fit`` starts without a backup (the fine-tuning phase of the
    transfer recipe starts after the warm-up epochs, which stay in history.csv). Early stopping
    and the checkpoint watch ``monitor``; the plateau schedule watches val_loss. Without a
    validation split (the final fit) there is no early stopping or best checkpoint (``None``).
    """
    import keras

    class ResumeState(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            initial_epoch = max(first_epoch, backed_up_epochs(backup_dir))
            rows = [r for r in read_history(history_path) if int(r["epoch"]) < initial_epoch]
            if history_path.exists():
                # Drop epochs that were logged but not backed up (killed in between): the backup
                # is written last at the end of an epoch, so those epochs are trained again.
                with history_path.open("w", newline="") as f:
                    if rows:
                        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                        writer.writeheader()
                        writer.writerows(rows)
            watched = logged(rows, monitor)
            if watched and early_stopping is not None:
                best = best_index(watched, monitor)
                early_stopping.best = watched[best]
                early_stopping.best_epoch = best
                early_stopping.wait = len(watched) - 1 - best
                checkpoint.best = watched[best]
            losses = logged(rows, "val_loss")
            if plateau is not None and losses:
                # its counter restarts at the best epoch or at its last cut, whichever is later
                # (the rate logged for an epoch is the one it trained with: a cut at epoch i
                # shows as a lower rate from epoch i + 1 on)
                best = best_index(losses, "val_loss")
                rates = [float(r["learning_rate"]) for r in rows if r.get("learning_rate")]
                cuts = [i - 1 for i in range(1, len(rates)) if rates[i] < rates[i - 1]]
                plateau.best = losses[best]
                plateau.wait = len(losses) - 1 - max([best, *cuts])

    return ResumeState()


def make_ema_callbacks(backup_dir: Path):
    """``(first, last)``: ``SwapEMAWeights(swap_on_epoch=True)`` that also knows a restored
    backup's state, and a callback to run after every other one that keeps the averages when
    training stops early.

    The averaged weights are in the model from each epoch's end to the next epoch's begin (and
    while validating), so the checkpoints and the backup hold them, with the raw weights in the
    optimizer. After a restore they are swapped back before training goes on. Keras prepares the
    end of ``fit`` (``finalize_variable_values`` copies the optimizer's averages into the model)
    only at the last epoch; ``last`` does it at an epoch where a callback (early stopping) stops.
    """
    import keras

    class EMAWeights(keras.callbacks.SwapEMAWeights):
        def __init__(self):
            super().__init__(swap_on_epoch=True)

        def on_train_begin(self, logs=None):
            # BackupAndRestore loads this file when it exists, saved at an epoch's end
            self._ema_weights_in_model = (backup_dir / "latest.weights.h5").is_file()

    swap = EMAWeights()

    class KeepAveragesOnStop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if self.model.stop_training and swap._ema_weights_in_model:
                swap._finalize_ema_values()

    return swap, KeepAveragesOnStop()


def whole_file_callbacks():
    """``(ModelCheckpoint, BackupAndRestore)`` classes whose files are replaced whole.

    Keras writes ``best.weights.h5`` and the backup in place: a process killed while it writes
    (on a cluster, any worker at an epoch's end) leaves half a file that the run cannot read
    when it starts again ("truncated file", "bad object header version number"). These write a
    file beside the target and rename it over the target (atomic on one file system), so the
    target is always the previous state or the new one.
    """
    import keras

    class WholeFileModelCheckpoint(keras.callbacks.ModelCheckpoint):
        """``ModelCheckpoint`` to one fixed ``filepath`` (``*.weights.h5``), written whole."""

        def __init__(self, filepath, **kwargs):
            self.target = Path(filepath)
            self.writing = self.target.with_name("writing-" + self.target.name)
            self.writing.unlink(missing_ok=True)  # half written by a process killed earlier
            super().__init__(str(self.writing), **kwargs)

        def _save_model(self, epoch, batch, logs):
            super()._save_model(epoch, batch, logs)
            if self.writing.exists():  # written now (not kept: the best is still an earlier one)
                os.replace(self.writing, self.target)

    class WholeFileBackupAndRestore(keras.callbacks.BackupAndRestore):
        """``BackupAndRestore`` whose weights and epoch files are each replaced whole.

        The epoch file also names the weights it goes with (their SHA-256): a kill between the
        two renames leaves the new weights with the old epoch, and a restart then goes back to
        the epoch before (``double_checkpoint``, the pair it kept) instead of training on from
        weights that are not the epoch's (on a cluster, other weights than the other workers').
        """

        def _save_model(self):
            folder = Path(self.backup_dir)
            folder.mkdir(parents=True, exist_ok=True)
            weights, meta = Path(self._weights_path), Path(self._training_metadata_path)
            if self.double_checkpoint:
                for path, previous in ((weights, self._prev_weights_path),
                                       (meta, self._prev_training_metadata_path)):
                    if path.exists():
                        _replace_with_copy(path, Path(previous))
            writing = folder / "writing.weights.h5"
            self.model.save_weights(str(writing), overwrite=True)
            temporary = folder / "writing_metadata.json"
            temporary.write_text(json.dumps({"epoch": self._current_epoch,
                                             "batch": self._last_batch_seen,
                                             "weights_sha256": _sha256(writing)}))
            os.replace(writing, weights)
            os.replace(temporary, meta)

        def _load_model(self):
            weights, meta = Path(self._weights_path), Path(self._training_metadata_path)
            if weights.is_file() and meta.is_file():
                expected = json.loads(meta.read_text()).get("weights_sha256")
                if expected is not None and expected != _sha256(weights):
                    if Path(self._prev_weights_path).is_file():
                        # Keras' on_train_begin then restores the previous pair and loads it
                        raise OSError(f"{weights} is not the epoch {meta.name} records "
                                      "(killed between the two renames)")
                    logging.getLogger("agegender").warning(
                        "%s: newer than the epoch %s records (killed between the two renames); "
                        "that epoch trains again from them", weights, meta.name)
            super()._load_model()

    return WholeFileModelCheckpoint, WholeFileBackupAndRestore


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _replace_with_copy(source: Path, target: Path) -> None:
    import shutil

    writing = target.with_name("writing-" + target.name)
    shutil.copyfile(source, writing)
    os.replace(writing, target)
