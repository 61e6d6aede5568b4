"""Keras callbacks of a training run, and the run's history.csv.

``ResumeState`` puts early stopping, the best-model checkpoint and the plateau schedule back
where they were when a killed run is started again; the EMA pair keeps the averaged weights in
the checkpoints. ``train`` assembles them (see ``agegender.phases.callbacks_for``).
"""

from __future__ import annotations

import csv
import json
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
