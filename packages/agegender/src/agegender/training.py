"""Train and evaluate an age/gender model on a UTKFace folder.

This is the application layer of ``agegender_models``: it composes ``utkface_data`` (index, splits,
``tf.data``), the model factories of this package and ``agegender_eval`` (metrics, report). The core
modules of this package never import it, and it needs the ``app`` extra::

    pip install "agegender-models[app]"

Defaults reproduce the seed's recipe: 5,000 images, 128x128, Adam (lr 1e-3), binary cross-entropy for
gender + MAE for age with equal weights, early stopping on the validation loss with patience 10 and
the best weights restored. Every option can be changed; everything used is written to
``config.json`` in the run folder.

A run folder holds::

    config.json        every option, seed, library versions, dataset fingerprint, precision, devices
    splits/            train.csv, val.csv, test.csv (paths relative to the data folder)
    history.csv        one row per finished epoch (Keras CSVLogger)
    checkpoints/       last.keras (every epoch), backup/ (resume state), with a warm-up
                       warmup.weights.h5 (the model after it) and, with a head refit,
                       best_before_head_refit.keras; fitted.json once every epoch has run
    model.keras        the best model (by ``monitor``, default the lowest validation loss;
                       heads refitted if asked)
    metrics.json       validation and test results (agegender-eval keys; with a head refit
                       also the results before it, under "before_head_refit")
    report/            report.md, metrics.json, plots and predictions.csv for the test split

With ``warmup_epochs`` (needs pretrained ``weights``) the run follows the transfer recipe: first
the whole backbone is frozen and only the new layers learn for ``warmup_epochs`` epochs at
``learning_rate``; then the last ``trainable_layers`` backbone layers (the backbone's default when
not given) are unfrozen, BatchNorm staying frozen in inference mode, and training goes on at
``finetune_learning_rate`` (default ``learning_rate / 10``) up to ``epochs`` in all. Both phases
write the same history.csv and checkpoints; early stopping and the best model span both.

With ``ema_momentum`` (e.g. 0.99) the optimizer also keeps an exponential moving average of the
weights (Polyak averaging, ``use_ema`` of Keras optimizers); validation, early stopping, the
checkpoints and the final model use the averaged weights, training goes on with the raw ones.

``monitor`` picks what early stopping and the best model watch: ``val_loss`` (default),
``val_gender_accuracy`` or ``val_age_mae``. The validation loss mixes the two tasks with the loss
weights, and the gender part (cross-entropy) can rise from overconfidence while accuracy still
improves; the learning-rate schedule follows ``val_loss`` in every case.

``fit_on="train+val"`` is the final fit: once a run with a validation split has chosen the
recipe and its length, train again on the training and validation images together (the test
split stays held out) for exactly ``epochs`` epochs, keeping the last. There is nothing to
validate on, so there is no early stopping, no best-model choice and no plateau schedule;
``lr_schedule="replay"`` replays, epoch by epoch, the learning rates that the earlier run logged
in its ``history.csv`` (``lr_history``), its plateau cuts included. ``metrics.json`` then has
test figures only (the validation images were trained on).

A run killed at any point and started again with the same ``out`` folder continues from the last
finished epoch (``keras.callbacks.BackupAndRestore``), with early stopping, the best-model checkpoint
and ``history.csv`` picking up where they were.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import utkface_data
from agegender.evaluation import evaluate_frame, finite_datasets, write_evaluation

STRATEGIES = ("default", "mirrored", "multi_worker")
LR_SCHEDULES = ("constant", "plateau", "replay")
FIT_ON = ("train", "train+val")
SEED_RECIPE = {
    "model_a": {"gender_accuracy": 0.902, "age_mae": 6.84},
    "model_b": {"gender_accuracy": 0.80, "age_mae": 8.51},
}


# What early stopping and the best-model checkpoint may watch, and which way is better. The
# learning-rate schedule always follows val_loss (a smooth signal for the optimizer).
MONITORS = {"val_loss": "min", "val_gender_accuracy": "max", "val_age_mae": "min"}


def _best_index(values: list[float], monitor: str) -> int:
    """Index of the best value (the first of equals, as Keras' callbacks keep the first)."""
    pick = min if MONITORS[monitor] == "min" else max
    return pick(range(len(values)), key=values.__getitem__)


@dataclass
class TrainConfig:
    """Every option of a training run; serialised as-is into ``config.json``."""

    out: str
    data_dir: str | None = None
    splits: str | None = None
    backbone: str = "custom_cnn"
    n: int | None = 5000
    seed: int = 0
    val: float = 0.15
    test: float = 0.15
    image_size: int = 128
    batch_size: int = 32
    epochs: int = 100
    patience: int = 10
    learning_rate: float = 1e-3
    gender_loss_weight: float = 1.0
    age_loss_weight: float = 1.0
    lr_schedule: str = "constant"
    augment: bool = False
    precision: str = "auto"
    strategy: str = "default"
    weights: str | None = None
    trainable_layers: int | None = None
    cache: str | None = "memory"
    head_refit_epochs: int = 0
    warmup_epochs: int = 0
    finetune_learning_rate: float | None = None
    ema_momentum: float | None = None
    monitor: str = "val_loss"
    fit_on: str = "train"
    lr_history: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.n is not None and self.n < 3:
            raise ValueError(f"n must be at least 3 (one image per split). Received: n={self.n}")
        if not 0 < self.val < 1 or not 0 < self.test < 1 or self.val + self.test >= 1:
            raise ValueError(
                "val and test must be fractions in (0, 1) whose sum is below 1. "
                f"Received: val={self.val}, test={self.test}"
            )
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32. Received: image_size={self.image_size}")
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor must be one of {sorted(MONITORS)}. Received: monitor={self.monitor!r}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0. Received: warmup_epochs={self.warmup_epochs}")
        if self.warmup_epochs and self.weights is None:
            raise ValueError(
                "warmup_epochs (the transfer recipe's frozen-backbone phase) needs pretrained weights: "
                "pass weights ('imagenet' or a weights file). Received: weights=None"
            )
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                "warmup_epochs must be smaller than epochs (the maximum, warm-up included). "
                f"Received: warmup_epochs={self.warmup_epochs}, epochs={self.epochs}"
            )
        if self.finetune_learning_rate is not None and self.finetune_learning_rate <= 0:
            raise ValueError(
                f"finetune_learning_rate must be positive. Received: {self.finetune_learning_rate}"
            )
        if self.ema_momentum is not None and not 0 < self.ema_momentum < 1:
            raise ValueError(f"ema_momentum must be in (0, 1). Received: ema_momentum={self.ema_momentum}")
        if self.head_refit_epochs < 0:
            raise ValueError(
                f"head_refit_epochs must be >= 0. Received: head_refit_epochs={self.head_refit_epochs}"
            )
        for name in ("batch_size", "epochs", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive. Received: learning_rate={self.learning_rate}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}. Received: strategy={self.strategy!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule must be one of {LR_SCHEDULES}. Received: lr_schedule={self.lr_schedule!r}"
            )
        if self.fit_on not in FIT_ON:
            raise ValueError(f"fit_on must be one of {FIT_ON}. Received: fit_on={self.fit_on!r}")
        if self.fit_on == "train+val" and self.lr_schedule == "plateau":
            raise ValueError(
                "lr_schedule='plateau' follows the validation loss, and fit_on='train+val' leaves no "
                "validation split: replay the rates of a validated run (lr_schedule='replay', "
                "lr_history=its history.csv) or use 'constant'"
            )
        if (self.lr_schedule == "replay") != (self.lr_history is not None):
            raise ValueError(
                "lr_schedule='replay' and lr_history (the history.csv whose learning rates are "
                f"replayed) go together. Received: lr_schedule={self.lr_schedule!r}, "
                f"lr_history={self.lr_history!r}"
            )
        if self.lr_history is not None:
            replayed_rates(self.lr_history)  # a missing or malformed file fails before training
        if self.data_dir is None and not os.environ.get("UTKFACE_DIR"):
            raise ValueError(
                "no data: pass data_dir (--data-dir) or set the UTKFACE_DIR environment variable "
                "to a folder of UTKFace images (split files hold paths relative to it)"
            )


def replayed_rates(path: str | os.PathLike) -> list[float]:
    """The learning rate of every epoch logged in a run's ``history.csv`` (its ``learning_rate``
    column, in epoch order): what ``lr_schedule="replay"`` sets at the start of each epoch."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"lr_history: no such file: {path} (a run folder's history.csv)")
    rows = _read_history(path)
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


# --------------------------------------------------------------------------------------------------
# Distribution


def make_strategy(name: str = "default"):
    """Return a ``tf.distribute`` strategy by name.

    ``mirrored`` uses every GPU; on a machine without one it splits the CPU into two logical devices
    (this must happen before TensorFlow initialises its devices: call it first). ``multi_worker``
    reads the cluster from ``TF_CONFIG`` as TensorFlow documents; only the chief writes the run
    folder (:func:`is_chief`), the other workers write to a temporary folder. Not tested on a real
    cluster, and resuming a killed multi-worker run is not supported (each worker's resume state
    would differ).
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}. Received: strategy={name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    cpu = tf.config.list_physical_devices("CPU")[0]
    with contextlib.suppress(RuntimeError):  # devices already initialised: use what exists
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
        )
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) < 2:
        warnings.warn(
            "strategy='mirrored': TensorFlow's devices were already initialised, so the CPU could "
            "not be split in two; training runs on one replica. Choose the strategy first.",
            stacklevel=2,
        )
    return tf.distribute.MirroredStrategy(devices=devices)


def is_chief(strategy) -> bool:
    """Whether this process writes the run folder: always, except on a multi-worker cluster, where
    only the chief does (the ``chief`` task, or worker 0 when the cluster has no chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and not has_chief


# --------------------------------------------------------------------------------------------------
# Resumable bookkeeping


def _read_history(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _logged(rows: list[dict[str, str]], key: str) -> list[float]:
    """The values of ``key`` in history rows, skipping those never logged (CSVLogger writes "NA"
    for a key an epoch did not log, such as every val_* key of a fit without validation)."""
    return [float(r[key]) for r in rows if r.get(key) not in (None, "", "NA")]


def _backed_up_epochs(backup_dir: Path) -> int:
    """Epochs finished according to BackupAndRestore's metadata (0 when there is no backup)."""
    meta = backup_dir / "training_metadata.json"
    return int(json.loads(meta.read_text())["epoch"]) if meta.is_file() else 0


def _make_resume_callback(history_path: Path, backup_dir: Path, early_stopping, checkpoint,
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
            initial_epoch = max(first_epoch, _backed_up_epochs(backup_dir))
            rows = [r for r in _read_history(history_path) if int(r["epoch"]) < initial_epoch]
            if history_path.exists():
                # Drop epochs that were logged but not backed up (killed in between): the backup
                # is written last at the end of an epoch, so those epochs are trained again.
                with history_path.open("w", newline="") as f:
                    if rows:
                        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                        writer.writeheader()
                        writer.writerows(rows)
            watched = _logged(rows, monitor)
            if watched and early_stopping is not None:
                best_index = _best_index(watched, monitor)
                early_stopping.best = watched[best_index]
                early_stopping.best_epoch = best_index
                early_stopping.wait = len(watched) - 1 - best_index
                checkpoint.best = watched[best_index]
            losses = _logged(rows, "val_loss")
            if plateau is not None and losses:
                # its counter restarts at the best epoch or at its last cut, whichever is later
                # (the rate logged for an epoch is the one it trained with: a cut at epoch i
                # shows as a lower rate from epoch i + 1 on)
                best_index = _best_index(losses, "val_loss")
                rates = [float(r["learning_rate"]) for r in rows if r.get("learning_rate")]
                cuts = [i - 1 for i in range(1, len(rates)) if rates[i] < rates[i - 1]]
                plateau.best = losses[best_index]
                plateau.wait = len(losses) - 1 - max([best_index, *cuts])

    return ResumeState()


def _make_ema_callbacks(backup_dir: Path):
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


# --------------------------------------------------------------------------------------------------
# Data


def _fingerprint(frame) -> str:
    """SHA-256 over the sorted (path, age, gender, race) rows of the images used."""
    digest = hashlib.sha256()
    for row in frame.sort_values("path").itertuples(index=False):
        digest.update(f"{row.path},{row.age},{row.gender},{row.race}\n".encode())
    return digest.hexdigest()


def prepare_splits(config: TrainConfig, out: Path):
    """Index + subset + split (or load the given split files); returns (splits, root, index report)."""
    splits_out = out / "splits"
    if config.splits is not None or (splits_out / "train.csv").exists():
        # Given split files, or resuming: keep exactly the split the run started with.
        root = utkface_data.get_data_dir(config.data_dir)
        splits = utkface_data.load_splits(config.splits or splits_out, root=root)
        report = None
    else:
        index = utkface_data.index_folder(config.data_dir, progress=False)
        root = index.root
        frame = index.frame
        if config.n is not None and config.n < len(frame):
            frame = utkface_data.subset(frame, config.n, seed=config.seed)
        splits = utkface_data.split_frame(frame, val=config.val, test=config.test, seed=config.seed)
        report = index.report
    empty = [name for name, part in zip(("train", "val", "test"), splits, strict=True) if len(part) == 0]
    if empty:
        raise ValueError(
            f"the {'/'.join(empty)} split would be empty with n={config.n}, val={config.val}, "
            f"test={config.test}: use more images or larger fractions"
        )
    utkface_data.save_splits(splits, splits_out)
    return splits, Path(root), report


def _dataset(frame, root: Path, config: TrainConfig, *, training: bool, replicas: int = 1):
    """Training/validation batches.

    With several replicas the last partial batch is dropped (Keras' ``tf.distribute`` path fails
    on a batch that does not split evenly), and the batch is shrunk when the split is smaller than
    one batch. This affects only the per-epoch figures; the final validation and test metrics
    are computed on every image with the best model, outside the strategy.
    """
    batch_size = config.batch_size
    if replicas > 1:
        batch_size = max(replicas, min(batch_size, len(frame) // replicas * replicas))
    return utkface_data.make_dataset(
        frame,
        root=root,
        image_size=(config.image_size, config.image_size),
        batch_size=batch_size,
        scaling="uint8",
        shuffle=training,
        augment=training and config.augment,
        cache=config.cache,
        seed=config.seed,
        drop_remainder=replicas > 1,
    )


# --------------------------------------------------------------------------------------------------
# Training


def refit_heads(model, train_ds, val_ds, *, epochs: int, learning_rate: float, loss_weights,
                verbose: int | str = "auto"):
    """Refit only the two output layers, with dropout off and everything else frozen.

    Dropout before a regression head leaves a train/inference mismatch: the head is fitted to
    dropped-out activations, and without dropout its ages shift. A few epochs on the frozen
    features, as they are at inference, remove it. The model keeps its layers (the dropout rate
    is stored as 0, which changes nothing at inference). Returns the model.
    """
    import keras

    from agegender_models import compile_model

    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
        layer.trainable = layer.name in ("age_dense", "gender")
    compile_model(model, learning_rate=learning_rate, loss_weights=loss_weights)
    with finite_datasets():
        model.fit(train_ds, validation_data=val_ds, epochs=epochs, shuffle=False, verbose=verbose)
    return model


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for dist in ("tensorflow", "keras", "numpy", "pandas", "utkface-data", "agegender-models",
                 "agegender-eval"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "not installed"
    return found


# Options that define a run: a resumed run folder must be started with the same values.
RUN_DEFINING = ("backbone", "n", "seed", "val", "test", "splits", "image_size", "weights",
                "trainable_layers", "warmup_epochs", "ema_momentum", "monitor", "fit_on", "model_kwargs")


def _previous_run(out: Path, config: TrainConfig) -> dict[str, Any]:
    """The config.json of an unfinished run in ``out`` ({} if none); refuses changed options."""
    path = out / "config.json"
    if not path.is_file():
        return {}
    previous = json.loads(path.read_text())
    before = previous.get("config", {})
    now = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    # a key missing from an older run's config.json had its default then (options are added
    # with the default that keeps the old behaviour)
    default = json.loads(json.dumps(dataclasses.asdict(TrainConfig(out=config.out)), default=str))
    changed = [f"{key}={before.get(key, default[key])!r} -> {now[key]!r}" for key in RUN_DEFINING
               if before.get(key, default[key]) != now[key]]
    if changed:
        raise ValueError(
            f"{out} holds an unfinished run started with other options ({', '.join(changed)}); "
            "resume it with the same options or use a new --out"
        )
    return previous


def train(config: TrainConfig, *, verbose: int | str = "auto", callbacks: list | None = None) -> dict[str, Any]:
    """Run one training job as described in the module docstring; returns the metrics dict.

    ``callbacks`` are extra Keras callbacks, run after the run folder's own. An unfinished run
    folder is resumed (its options that define the run must not change); a finished one (it has
    ``metrics.json``) is not trained again: its metrics are returned as they are.
    """
    config.validate()
    out = Path(config.out)
    if (out / "metrics.json").is_file():
        warnings.warn(f"{out} holds a finished run: not training again (use a new --out)", stacklevel=2)
        return json.loads((out / "metrics.json").read_text())
    previous = _previous_run(out, config)
    out.mkdir(parents=True, exist_ok=True)
    strategy = make_strategy(config.strategy)  # before anything initialises TensorFlow's devices
    if not is_chief(strategy):
        # every worker runs the same fit (the split is deterministic); only the chief's files count
        out = Path(tempfile.mkdtemp(prefix="agegender_worker_"))
        config = dataclasses.replace(config, out=str(out))

    import keras
    import pandas as pd

    from agegender_models import compile_model, create_model, get_backbone, set_trainable
    from agegender_models.precision import model_precision, set_precision

    keras.utils.set_random_seed(config.seed)

    def _optimizer(learning_rate: float):
        if config.ema_momentum is None:
            return keras.optimizers.Adam(learning_rate=learning_rate)
        return keras.optimizers.Adam(learning_rate=learning_rate, use_ema=True,
                                     ema_momentum=config.ema_momentum)

    finetune_lr = config.learning_rate
    if config.warmup_epochs:
        finetune_lr = config.finetune_learning_rate or config.learning_rate / 10
    precision = set_precision(config.precision, backbone=config.backbone)
    splits, root, report = prepare_splits(config, out)

    final_fit = config.fit_on == "train+val"
    # the final fit trains on the validation images too: nothing is left to validate on
    fit_frame = pd.concat([splits.train, splits.val], ignore_index=True) if final_fit else splits.train

    with strategy.scope():
        model_kwargs = {"age_bias": float(fit_frame["age"].mean()), **config.model_kwargs}
        if config.warmup_epochs:
            model_kwargs["trainable_layers"] = 0
        elif config.trainable_layers is not None:
            model_kwargs["trainable_layers"] = config.trainable_layers
        model = create_model(
            config.backbone,
            input_shape=(config.image_size, config.image_size, 3),
            weights=config.weights,
            **model_kwargs,
        )
        compile_model(
            model,
            optimizer=_optimizer(config.learning_rate),
            loss_weights={"gender": config.gender_loss_weight, "age": config.age_loss_weight},
        )

    run_config = {
        "config": dataclasses.asdict(config),
        "precision": model_precision(model),
        "precision_requested": config.precision,
        "precision_resolved": precision,
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "data_root": str(root),
        "dataset_fingerprint": _fingerprint(pd.concat([splits.train, splits.val, splits.test])),
        "split_sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "fit_on": {"splits": config.fit_on, "images": len(fit_frame)},
        "versions": _versions(),
        "platform": platform.platform(),
        "seed_recipe": SEED_RECIPE,
    }
    if report is None and "index_report" in previous:
        run_config["index_report"] = previous["index_report"]
    elif report is not None:
        run_config["index_report"] = {
            "files_seen": report.files_seen,
            "indexed": report.indexed,
            "quarantined": list(report.quarantined),
            "not_images": list(report.not_images),
        }
    (out / "config.json").write_text(json.dumps(run_config, indent=2, default=str) + "\n")

    replicas = strategy.num_replicas_in_sync
    train_ds = _dataset(fit_frame, root, config, training=True, replicas=replicas)
    val_ds = None if final_fit else _dataset(splits.val, root, config, training=False, replicas=replicas)

    history_path = out / "history.csv"
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    loss_weights = {"gender": config.gender_loss_weight, "age": config.age_loss_weight}
    rates = replayed_rates(config.lr_history) if config.lr_schedule == "replay" else None

    def fit(first_epoch: int, last_epoch: int, backup_dir: Path) -> None:
        mode = MONITORS[config.monitor]
        if final_fit:  # every epoch runs and the last one is kept
            early_stopping = None
            best_checkpoint = keras.callbacks.ModelCheckpoint(out / "model.keras")
        else:
            early_stopping = keras.callbacks.EarlyStopping(
                monitor=config.monitor, mode=mode, patience=config.patience, restore_best_weights=False
            )
            best_checkpoint = keras.callbacks.ModelCheckpoint(
                out / "model.keras", monitor=config.monitor, mode=mode, save_best_only=True
            )
        # Order matters. At train begin EarlyStopping and ReduceLROnPlateau reset their state, then
        # ResumeState restores it from history.csv (trimmed to the backed-up epochs) before
        # CSVLogger opens the file. At epoch end the backup is written last, so an epoch it records
        # is also in history.csv and the checkpoints.
        plateau = None
        if config.lr_schedule == "plateau":
            plateau = keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.5, patience=max(2, config.patience // 3), min_lr=1e-6
            )
        replay = None
        if rates is not None:
            # epoch i trains at the rate the earlier run's epoch i trained at (its last rate after)
            replay = keras.callbacks.LearningRateScheduler(lambda epoch, _: rates[min(epoch, len(rates) - 1)])
        ema_first, ema_last = _make_ema_callbacks(backup_dir) if config.ema_momentum else (None, None)
        own_callbacks = [
            # first: it puts the averaged weights in the model before the others see the epoch end
            *([ema_first] if ema_first is not None else []),
            *([replay] if replay is not None else []),
            best_checkpoint,
            keras.callbacks.ModelCheckpoint(checkpoints / "last.keras"),
            *([early_stopping] if early_stopping is not None else []),
            *([plateau] if plateau is not None else []),
            _make_resume_callback(history_path, backup_dir, early_stopping, best_checkpoint,
                                  first_epoch, plateau, config.monitor),
        ]
        own_callbacks += [
            keras.callbacks.CSVLogger(str(history_path), append=True),
            keras.callbacks.BackupAndRestore(str(backup_dir)),
        ]
        # Keras 3.15: a restoring BackupAndRestore sets model._initial_epoch, which fit prefers to
        # its initial_epoch argument, and nothing clears it: after a resumed warm-up, the
        # fine-tuning fit would start again at the warm-up's restored epoch (tested).
        model._initial_epoch = None
        with finite_datasets():
            model.fit(train_ds, validation_data=val_ds, initial_epoch=first_epoch, epochs=last_epoch,
                      shuffle=False, verbose=verbose,
                      callbacks=own_callbacks + list(callbacks or []) + ([ema_last] if ema_last else []))

    started = time.perf_counter()
    # Written when every epoch has run. BackupAndRestore deletes its backup at the end of a fit,
    # so a run stopped later (in the head refit or the evaluation) would otherwise train again
    # from the first epoch and cut history.csv back to it. (A head refit also keeps
    # best_before_head_refit.keras, written only after the last epoch: runs from before this
    # marker existed are recognised by it.)
    fitted = checkpoints / "fitted.json"
    kept = checkpoints / "best_before_head_refit.keras"
    if fitted.is_file() or kept.is_file():
        pass  # every epoch has already run: nothing to fit
    elif config.warmup_epochs:
        # The transfer recipe. Phase 1: the whole backbone frozen (create_model was given
        # trainable_layers=0), only the new layers learn, at learning_rate. Phase 2: the last
        # trainable_layers backbone layers are unfrozen (BatchNorm frozen, in inference mode, for
        # backbones with bn_inference) and training goes on at the lower finetune_learning_rate.
        warm = checkpoints / "warmup.weights.h5"
        if warm.is_file():  # resumed after the warm-up had finished
            model.load_weights(warm)
        else:
            fit(0, config.warmup_epochs, checkpoints / "backup_warmup")
            model.save_weights(warm)
        backbone_cfg = get_backbone(config.backbone).cfg()
        unfrozen = config.trainable_layers
        if unfrozen is None:  # the backbone's default, as without a warm-up
            unfrozen = backbone_cfg["trainable_layers"]
        with strategy.scope():
            # BatchNorm stays in inference mode where the backbone says so (keras.applications);
            # a backbone whose BatchNorm learns (custom_cnn) keeps learning in its unfrozen layers
            set_trainable(model, unfrozen, freeze_batchnorm=bool(backbone_cfg["bn_inference"]))
            compile_model(model, optimizer=_optimizer(finetune_lr), loss_weights=loss_weights)
        fit(config.warmup_epochs, config.epochs, checkpoints / "backup")
    else:
        fit(0, config.epochs, checkpoints / "backup")
    if not fitted.is_file():
        fitted.write_text(json.dumps({"epochs_run": len(_read_history(history_path))}) + "\n")
    wall_s = time.perf_counter() - started

    from agegender_models import load_model, save_model

    best = load_model(out / "model.keras")
    size = config.image_size
    # the splits the model has not been trained on
    held_out = {"test": splits.test} if final_fit else {"validation": splits.val, "test": splits.test}
    before_refit = None
    if config.head_refit_epochs:
        if kept.is_file():  # resumed after a refit was interrupted: start from the trained model
            best = load_model(kept)
        else:
            save_model(best, kept)
        before_refit = {name: evaluate_frame(best, frame, root, image_size=size)[0].to_dict()
                        for name, frame in held_out.items()}
        plain = dataclasses.replace(config, augment=False)
        refit_heads(
            best, _dataset(fit_frame, root, plain, training=True), val_ds,
            epochs=config.head_refit_epochs, learning_rate=finetune_lr,
            loss_weights=loss_weights, verbose=verbose,
        )
        save_model(best, out / "model.keras")
    history = pd.read_csv(history_path) if history_path.exists() else None
    if history is not None:
        # without validation (the final fit) CSVLogger still writes empty val_* columns
        history = history.dropna(axis=1, how="all")
    epochs_run = 0 if history is None else len(history)
    best_epoch = None
    if final_fit and epochs_run:
        best_epoch = epochs_run  # the last epoch is the one kept
    elif history is not None and config.monitor in history and len(history):
        best_epoch = int(history["epoch"].iloc[_best_index(history[config.monitor].tolist(), config.monitor)]) + 1
    results = {name: evaluate_frame(best, frame, root, image_size=size)[0].to_dict()
               for name, frame in held_out.items() if name != "test"}  # the test split's report below
    results["test"] = write_evaluation(
        best, splits.test, root, out / "report", image_size=size,
        title=f"{config.backbone} on the held-out test split", history=history, best_epoch=best_epoch,
        extra={"split": "test", "backbone": config.backbone, "fit_on": config.fit_on},
    ).to_dict()
    metrics = {
        "backbone": config.backbone,
        "fit_on": config.fit_on,
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "wall_s_this_session": round(wall_s, 1),
        **results,
    }
    if before_refit is not None:
        metrics["before_head_refit"] = before_refit
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    return metrics
