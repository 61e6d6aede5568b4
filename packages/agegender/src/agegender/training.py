"""Train and evaluate an age/gender model on a UTKFace folder: one run, as a list of named steps.

    from agegender.config import resolve_config
    from agegender.training import train

    metrics = train(resolve_config("model-a-improved", data_dir="UTKFace", out="runs/a"))

Defaults reproduce the seed's recipe: 5,000 images, 128x128, Adam (lr 1e-3), binary cross-entropy
for gender + MAE for age with equal weights, early stopping on the validation loss with patience 10
and the best weights kept. Every option is a field of :class:`agegender.config.TrainConfig`; the
phases a config runs (warm-up, fine-tuning, head refit, the final fit on train+val) are described
in :mod:`agegender.phases`.

A run folder holds::

    config.json        every option, seed, library versions, dataset fingerprint, precision, devices
    splits/            train.csv, val.csv, test.csv (paths relative to the data folder)
    history.csv        one row per finished epoch (Keras CSVLogger)
    model.keras        the kept model (by ``monitor``, default the lowest validation loss; the
                       last epoch in a final fit; heads refitted if asked), without optimizer state
    metrics.json       validation and test results (agegender-eval keys; with a head refit also
                       the results before it, under "before_head_refit"); written last
    report/            report.md, metrics.json, plots and predictions.csv for the test split
    checkpoints/       the resume state while the run is unfinished (each phase's backup and end
                       weights, the best weights so far); removed when the run finishes unless
                       ``keep_checkpoints``
    .lock              held by the process training in the folder (see agegender.runfolder)

A run killed at any point and started again with the same ``out`` continues from the last
finished epoch of its phase (``keras.callbacks.BackupAndRestore``), with early stopping, the
best-model checkpoint and ``history.csv`` picking up where they were. It must be started with
the same options (those that change training); a finished run is not trained again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import platform
import shutil
import time
import warnings
from typing import Any

from agegender import cluster
from agegender.callbacks import best_index, read_history, replayed_rates
from agegender.config import STRATEGIES, TrainConfig
from agegender.data import batches, fingerprint, index_summary, prepare_splits
from agegender.evaluation import evaluate_frame, write_evaluation
from agegender.phases import FitContext, load_weights, plan_phases, refit_heads, run_fit_phases
from agegender.runfolder import LOCK_NAME, RunFolder

log = logging.getLogger("agegender")

SEED_RECIPE = {
    "model_a": {"gender_accuracy": 0.902, "age_mae": 6.84},
    "model_b": {"gender_accuracy": 0.80, "age_mae": 8.51},
}


# --------------------------------------------------------------------------------------------------
# Distribution


def make_strategy(name: str = "default"):
    """Return a ``tf.distribute`` strategy by name.

    ``mirrored`` uses every GPU; on a machine without one it splits the CPU into two logical devices
    (this must happen before TensorFlow initialises its devices: call it first). ``multi_worker``
    reads the cluster from ``TF_CONFIG`` as TensorFlow documents (see :mod:`agegender.cluster`:
    only the chief writes the run folder, a killed cluster resumes from its last backup).
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}. Received: strategy={name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi_worker":
        if cluster.cluster_task() is None:
            raise ValueError("strategy='multi_worker' needs the TF_CONFIG environment variable "
                             "(the cluster and this process's task in it; see agegender.cluster)")
        cluster.patch_keras()
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
# The run


def train(config: TrainConfig, *, verbose: int | str = "auto", callbacks: list | None = None) -> dict[str, Any]:
    """Run one training job (see the module docstring); returns the metrics dict.

    ``callbacks`` are extra Keras callbacks, run after the run folder's own. An unfinished run
    folder is resumed; a finished one is not trained again (its metrics are returned, with
    ``"finished_earlier": True``). Either refuses options that change training and differ from
    the folder's (:class:`agegender.runfolder.RunFolderError`), and a folder another process is
    training in.
    """
    config.validate()
    if config.lr_history is not None:  # the rates themselves are the option (config.json keeps them)
        config = dataclasses.replace(config, lr_history=replayed_rates(config.lr_history))
    strategy = make_strategy(config.strategy)  # before anything initialises TensorFlow's devices
    chief = is_chief(strategy)
    # Every worker runs the same fit (the split is deterministic); only the chief's files count.
    # The others keep their resume state in a folder of their own, removed once the run is done.
    folder = config.out if chief else cluster.worker_folder(config.out, cluster.cluster_task())
    try:
        with RunFolder(folder) as run:
            if run.took_over:
                log.warning("%s: took over the stale lock of %s (no longer running)", run.path, run.took_over)
            metrics = _train_in(run, dataclasses.replace(config, out=str(run.path)), strategy,
                                verbose, callbacks or [])
    except _peer_errors() as exc:
        if config.strategy != "multi_worker":
            raise
        raise cluster.ClusterError(_lost_task(exc, folder if not chief else None)) from None
    if not chief:
        shutil.rmtree(folder, ignore_errors=True)
    return metrics


def _peer_errors() -> tuple[type[Exception], ...]:
    """What a collective op raises when another task of the cluster is gone."""
    import tensorflow as tf

    return (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
            tf.errors.DeadlineExceededError)


def _lost_task(exc, kept: str | None) -> str:
    """One line for TensorFlow's many-line report of a lost peer: which task, and why."""
    import re

    text = getattr(exc, "message", str(exc))
    task = cluster.cluster_task()
    # a peer is named by its address or its device path ("/job:worker/replica:0/task:1", or
    # "/job:worker/task:1" when a restarted peer reconnects with a new incarnation); never itself
    lost = [f"{kind} {index}" for kind, addresses in (task.cluster.items() if task else ())
            for index, address in enumerate(addresses)
            if (kind, index) != (task.task_type, task.task_id)
            and (address in text or re.search(rf"/job:{kind}(/replica:\d+)?/task:{index}(?!\d)", text))]
    found = re.search(r"Collective ops is aborted by: (.*)", text)
    reason = found.group(1) if found else (text.strip().splitlines() or [""])[-1]
    state = f" (this worker's resume state is kept in {kept})" if kept else ""
    return (f"the cluster lost {', '.join(lost) or 'a task'} ({type(exc).__name__}: "
            f"{reason.strip()[:300]}): start every worker again with the same command; the run "
            f"resumes from its last finished epoch{state}")


def _train_in(run: RunFolder, config: TrainConfig, strategy, verbose, callbacks: list) -> dict[str, Any]:
    """The steps of a run, in order, in a folder this process holds."""
    from agegender_models.precision import choose_precision, set_precision

    # "auto" measures (once per machine, cached); a run started earlier keeps what it trained in
    earlier = run.stored().get("precision_resolved") if config.precision == "auto" else None
    choice = None if earlier else choose_precision(
        config.precision, backbone=config.backbone, image_size=config.image_size,
        batch_size=config.batch_size)
    precision = set_precision(earlier or choice.policy)
    chief = is_chief(strategy)
    stored = run.check_options(config, precision=precision) if chief else {}
    if config.strategy == "multi_worker":
        precision, chief_finished = _join_cluster(run, strategy, precision)
        if chief_finished and not chief:
            return {"chief": False, "finished_earlier": True}
    if run.finished:
        log.info("%s holds a finished run with these options: results in %s and %s", run.path,
                 run.metrics_path, run.report_path)
        return {**json.loads(run.metrics_path.read_text()), "finished_earlier": True}
    log.info("precision: %s", choice.describe() if choice else f"{precision} (asked: auto; "
             "the run's own, chosen when it started)")
    splits, root, report = prepare_splits(config, run.path)
    fit_frame = _fit_frame(config, splits)
    model, phases = _build(config, strategy, fit_frame)
    _write_config(run, config, stored, model=model, precision=precision, strategy=strategy,
                  splits=splits, root=root, report=report, fit_frame=fit_frame, phases=phases)
    started = time.perf_counter()
    if config.strategy == "multi_worker":  # every worker checks that all resume alike
        import pandas as pd

        data = fingerprint(pd.concat([splits.train, splits.val, splits.test]))
        callbacks = [cluster.check_callback(strategy, data), *callbacks]
    trained = _fit(run, config, model, phases, strategy, fit_frame, splits, root, verbose, callbacks)
    if not chief:  # the chief alone refits the heads (if asked), evaluates and writes the report
        return {"chief": False, "epochs_run": len(read_history(run.history_path))}
    final, before_refit = _head_refit(run, config, trained, phases, fit_frame, splits, root, verbose)
    metrics = _evaluate(run, config, final, splits, root, wall_s=time.perf_counter() - started)
    if before_refit is not None:
        metrics["before_head_refit"] = before_refit
    run.metrics_path.write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    if not config.keep_checkpoints:
        run.remove_checkpoints()
    return metrics


def _join_cluster(run: RunFolder, strategy, precision: str) -> tuple[str, bool]:
    """Agree with the other workers on the chief's precision policy; returns it and whether the
    chief's run is finished. A worker whose chief starts a new run clears the state it kept
    from an earlier one (its folder is named after the run folder's path)."""
    from agegender_models.precision import set_precision

    started = run.config_path.is_file()
    policy, finished, chief_started = cluster.gather_rows(
        strategy, [cluster.POLICIES.index(precision), int(run.finished), int(started)])[0]
    if not is_chief(strategy) and started and not chief_started:
        log.info("%s: cleared this worker's state of an earlier run (the chief starts afresh)", run.path)
        cluster.clear_folder(run.path, keep=(LOCK_NAME,))
    chosen = cluster.POLICIES[policy]
    if chosen != precision:
        log.info("precision: %s, the chief's (this worker chose %s)", chosen, precision)
        set_precision(chosen)
    return chosen, bool(finished)


def _fit_frame(config: TrainConfig, splits):
    """The images trained on: the training split, or training + validation for the final fit."""
    import pandas as pd

    if config.fit_on == "train+val":
        return pd.concat([splits.train, splits.val], ignore_index=True)
    return splits.train


def _optimizer_factory(config: TrainConfig):
    import keras

    def optimizer(learning_rate: float):
        if config.ema is None:
            return keras.optimizers.Adam(learning_rate=learning_rate)
        return keras.optimizers.Adam(learning_rate=learning_rate, use_ema=True, ema_momentum=config.ema)

    return optimizer


def _build(config: TrainConfig, strategy, fit_frame):
    """The model as its first phase trains it (compiled), and the run's phases."""
    import keras

    from agegender_models import compile_model, create_model, get_backbone

    keras.utils.set_random_seed(config.seed)
    phases = plan_phases(config, get_backbone(config.backbone).cfg())
    model_kwargs: dict[str, Any] = {"age_bias": float(fit_frame["age"].mean())}
    if config.dropout is not None:
        model_kwargs["dropout"] = config.dropout
    if config.warmup_epochs:
        model_kwargs["trainable_layers"] = 0
    elif config.trainable_layers is not None:
        model_kwargs["trainable_layers"] = config.trainable_layers
    with strategy.scope():
        model = create_model(config.backbone, input_shape=(config.image_size, config.image_size, 3),
                             weights=config.weights, **model_kwargs)
        compile_model(model, optimizer=_optimizer_factory(config)(config.lr),
                      loss_weights={"gender": config.gender_weight, "age": config.age_weight})
    return model, phases


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for dist in ("tensorflow", "keras", "numpy", "pandas", "utkface-data", "agegender-models",
                 "agegender-eval", "agegender"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = "not installed"
    return found


def _write_config(run: RunFolder, config: TrainConfig, stored: dict[str, Any], *, model, precision,
                  strategy, splits, root, report, fit_frame, phases) -> None:
    import pandas as pd

    from agegender_models.precision import model_precision

    run_config = {
        "config": config.to_dict(),
        "precision": model_precision(model),
        "precision_resolved": precision,
        "strategy": type(strategy).__name__,
        "replicas": strategy.num_replicas_in_sync,
        "data_root": str(root),
        "dataset_fingerprint": fingerprint(pd.concat([splits.train, splits.val, splits.test])),
        "split_sizes": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "fit_on": {"splits": config.fit_on, "images": len(fit_frame)},
        "phases": [phase.describe() for phase in phases],
        "versions": _versions(),
        "platform": platform.platform(),
        "seed_recipe": SEED_RECIPE,
    }
    if report is not None:
        run_config["index_report"] = index_summary(report)
    elif "index_report" in stored:
        run_config["index_report"] = stored["index_report"]
    run.config_path.write_text(json.dumps(run_config, indent=2, default=str) + "\n")


def _fit(run: RunFolder, config: TrainConfig, model, phases, strategy, fit_frame, splits, root,
         verbose, callbacks):
    """Run the fitting phases (resumable) and return the kept model, lean, loaded afresh
    (``checkpoints/trained.keras``: written once every fitting phase has run)."""
    from agegender_models import load_model, save_model

    trained = run.checkpoints / "trained.keras"
    if not trained.is_file():
        run.checkpoints.mkdir(exist_ok=True)
        replicas = strategy.num_replicas_in_sync
        ctx = FitContext(
            config=config, checkpoints=run.checkpoints, history_path=run.history_path,
            best_weights=run.checkpoints / "best.weights.h5",
            train_ds=batches(fit_frame, root, config, training=True, replicas=replicas),
            val_ds=batches(splits.val, root, config, training=False, replicas=replicas),
            strategy=strategy, optimizer=_optimizer_factory(config),
            rates=list(config.lr_history) if config.lr_history is not None else None,
            verbose=verbose, extra_callbacks=callbacks,
            agreement=cluster.Agreement(strategy) if config.strategy == "multi_worker" else None,
        )
        run_fit_phases(model, phases, ctx)
        load_weights(model, ctx.best_weights)
        writing = trained.with_name("writing-" + trained.name)  # whole or not at all
        save_model(model, writing, include_optimizer=False)
        writing.replace(trained)
    # outside the strategy: the head refit and the evaluation run on one device
    return load_model(trained)


def _held_out(config: TrainConfig, splits) -> dict[str, Any]:
    """The splits the model has not been trained on."""
    if config.fit_on == "train+val":
        return {"test": splits.test}
    return {"validation": splits.val, "test": splits.test}


def _head_refit(run: RunFolder, config: TrainConfig, trained, phases, fit_frame, splits, root, verbose):
    """Refit the heads if the plan says so; writes ``model.keras``. Returns (the final model,
    the held-out results before the refit or None)."""
    from agegender_models import save_model

    refit = [phase for phase in phases if phase.name == "head refit"]
    if not refit:
        save_model(trained, run.model_path, include_optimizer=False)
        return trained, None
    size = config.image_size
    before = {name: evaluate_frame(trained, frame, root, image_size=size)[0].to_dict()
              for name, frame in _held_out(config, splits).items()}
    phase = refit[0]
    log.info("phase %d/%d %s", len(phases), len(phases), phase.describe())
    val_ds = batches(splits.val, root, config, training=False) if phase.validated else None
    refit_heads(
        trained, batches(fit_frame, root, config, training=True, augment=False), val_ds,
        epochs=phase.epochs[1], learning_rate=phase.learning_rate,
        loss_weights={"gender": config.gender_weight, "age": config.age_weight}, verbose=verbose,
    )
    save_model(trained, run.model_path, include_optimizer=False)
    return trained, before


def _best_epoch(config: TrainConfig, history) -> int | None:
    if history is None or not len(history):
        return None
    if config.fit_on == "train+val":
        return len(history)  # the last epoch is the one kept
    if config.monitor not in history:
        return None
    return int(history["epoch"].iloc[best_index(history[config.monitor].tolist(), config.monitor)]) + 1


def _evaluate(run: RunFolder, config: TrainConfig, model, splits, root, *, wall_s: float) -> dict[str, Any]:
    """Held-out figures and the test split's report; the metrics dict."""
    import pandas as pd

    history = pd.read_csv(run.history_path) if run.history_path.exists() else None
    if history is not None:
        # without validation (the final fit) CSVLogger still writes empty val_* columns
        history = history.dropna(axis=1, how="all")
    best_epoch = _best_epoch(config, history)
    size = config.image_size
    results = {name: evaluate_frame(model, frame, root, image_size=size)[0].to_dict()
               for name, frame in _held_out(config, splits).items() if name != "test"}
    results["test"] = write_evaluation(
        model, splits.test, root, run.path / "report", image_size=size,
        title=f"{config.backbone} on the held-out test split", history=history, best_epoch=best_epoch,
        extra={"split": "test", "backbone": config.backbone, "fit_on": config.fit_on},
    ).to_dict()
    return {
        "backbone": config.backbone,
        "fit_on": config.fit_on,
        "epochs_run": len(read_history(run.history_path)),
        "best_epoch": best_epoch,
        "wall_s_this_session": round(wall_s, 1),
        **results,
    }
