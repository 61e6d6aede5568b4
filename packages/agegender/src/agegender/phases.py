"""A training run as named phases.

:func:`plan_phases` turns a config into the phases it runs, each saying its epochs, learning rate,
what learns and on which data:

* ``warm-up`` (the transfer recipe, ``warmup_epochs``): the backbone frozen, the new layers learn;
* ``fine-tuning``: the last ``trainable_layers`` backbone layers unfrozen (BatchNorm frozen where
  the backbone says so), at ``finetune_lr``;
* ``training``: one phase at ``lr`` when there is no warm-up;
* ``head refit`` (``head_refit_epochs``): the two output layers only, dropout off, on the kept model.

With ``fit_on="train+val"`` (the final fit) the same phases run on both splits without validation.
:func:`run_fit_phases` runs the fitting phases, each resumable on its own: a finished phase leaves
``checkpoints/<phase>.weights.h5`` and is skipped on restart, an interrupted one continues from its
``BackupAndRestore`` backup. :func:`callbacks_for` is the one place the callbacks are assembled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agegender.callbacks import (
    backed_up_epochs,
    make_ema_callbacks,
    make_resume_callback,
    whole_file_callbacks,
)
from agegender.config import MONITORS, TrainConfig

log = logging.getLogger("agegender")

HEAD_LAYERS = ("age_dense", "gender")  # the two output layers the head refit fits


@dataclass(frozen=True)
class Phase:
    """One step of a run: ``epochs`` is ``(first, end)`` in the run's epoch count (the head
    refit counts its own); ``unfreeze`` the backbone layers unfrozen when the phase starts
    (``None``: as the model was built)."""

    name: str
    epochs: tuple[int, int]
    learning_rate: float
    learns: str
    data: str
    validated: bool
    unfreeze: int | None = None
    freeze_batchnorm: bool = True

    @property
    def slug(self) -> str:
        return self.name.replace(" ", "-")

    def describe(self) -> str:
        first, end = self.epochs
        span = f"epochs {first + 1}-{end}" if end - first > 1 else f"epoch {end}"
        check = "validated on val" if self.validated else "no validation"
        return (f"{self.name}: {span}, lr {self.learning_rate:g}, {self.learns}, on {self.data} "
                f"({check})")


def finetune_lr(config: TrainConfig) -> float:
    """The rate after the warm-up (and of the head refit): ``finetune_lr``, else ``lr / 10``
    after a warm-up, else ``lr``."""
    if config.warmup_epochs:
        return config.finetune_lr or config.lr / 10
    return config.lr


def plan_phases(config: TrainConfig, backbone_cfg: dict[str, Any]) -> list[Phase]:
    """The phases ``config`` runs, in order (``backbone_cfg``: the backbone's defaults)."""
    common = {"data": config.fit_on, "validated": config.fit_on == "train"}
    phases = []
    if config.warmup_epochs:
        unfrozen = config.trainable_layers
        if unfrozen is None:
            unfrozen = backbone_cfg["trainable_layers"]
        bn = bool(backbone_cfg["bn_inference"])
        phases.append(Phase("warm-up", (0, config.warmup_epochs), config.lr,
                            "backbone frozen, new layers learn", **common))
        phases.append(Phase(
            "fine-tuning", (config.warmup_epochs, config.epochs), finetune_lr(config),
            f"last {unfrozen} backbone layers learn" + (" (BatchNorm frozen)" if bn else ""),
            unfreeze=unfrozen, freeze_batchnorm=bn, **common))
    else:
        layers = config.trainable_layers
        if layers is None and config.weights is not None:  # create_model's default then
            layers = backbone_cfg["trainable_layers"]
        learns = "all layers learn" if layers is None else f"last {layers} backbone layers learn"
        name = "final fit" if config.fit_on == "train+val" else "training"
        phases.append(Phase(name, (0, config.epochs), config.lr, learns, **common))
    if config.head_refit_epochs:
        phases.append(Phase("head refit", (0, config.head_refit_epochs), finetune_lr(config),
                            "the two output layers only, dropout off", **common))
    return phases


@dataclass
class FitContext:
    """What every fitting phase shares."""

    config: TrainConfig
    checkpoints: Path
    history_path: Path
    best_weights: Path
    train_ds: Any
    val_ds: Any
    strategy: Any
    optimizer: Callable[[float], Any]
    rates: list[float] | None
    verbose: int | str
    extra_callbacks: list
    # several workers (agegender.cluster.Agreement): they agree on where to resume each phase
    agreement: Any = None


def callbacks_for(phase: Phase, ctx: FitContext, backup_dir: Path) -> list:
    """Every callback of a fitting phase, in the order they must run.

    At train begin EarlyStopping and ReduceLROnPlateau reset their state, then ResumeState
    restores it from history.csv (trimmed to the backed-up epochs) before CSVLogger opens the
    file. At epoch end the EMA swap runs first (the averaged weights go into the model before the
    others see the epoch end), the backup is written last (an epoch it records is also in
    history.csv and the checkpoints), then the caller's callbacks and the EMA keeper.
    """
    import keras

    config = ctx.config
    checkpoint, backup = whole_file_callbacks()  # a kill while they write leaves no half file
    early_stopping = plateau = replay = None
    if phase.validated:
        mode = MONITORS[config.monitor]
        early_stopping = keras.callbacks.EarlyStopping(
            monitor=config.monitor, mode=mode, patience=config.patience, restore_best_weights=False)
        best = checkpoint(
            ctx.best_weights, monitor=config.monitor, mode=mode, save_best_only=True,
            save_weights_only=True)
    else:  # the final fit: every epoch runs and the last one is kept
        best = checkpoint(ctx.best_weights, save_weights_only=True)
    if config.lr_schedule == "plateau":
        plateau = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=max(2, config.patience // 3), min_lr=1e-6)
    rates = ctx.rates
    if rates is not None:
        # epoch i trains at the rate the earlier run's epoch i trained at (its last rate after)
        replay = keras.callbacks.LearningRateScheduler(lambda epoch, _: rates[min(epoch, len(rates) - 1)])
    ema_first, ema_last = make_ema_callbacks(backup_dir) if config.ema else (None, None)
    ordered = [
        ema_first, replay, best, early_stopping, plateau,
        make_resume_callback(ctx.history_path, backup_dir, early_stopping, best, phase.epochs[0],
                             plateau, config.monitor),
        keras.callbacks.CSVLogger(str(ctx.history_path), append=True),
        # several workers keep the epoch before too, to go back to one they all have
        backup(str(backup_dir), double_checkpoint=ctx.agreement is not None),
        *ctx.extra_callbacks,
        ema_last,
    ]
    return [callback for callback in ordered if callback is not None]


def _prepare(model, phase: Phase, ctx: FitContext, first: bool) -> None:
    """Unfreeze what the phase trains and compile at its rate (the first phase's model was
    built and compiled as it trains)."""
    if first:
        return
    from agegender_models import compile_model, set_trainable

    config = ctx.config
    with ctx.strategy.scope():
        if phase.unfreeze is not None:
            set_trainable(model, phase.unfreeze, freeze_batchnorm=phase.freeze_batchnorm)
        compile_model(model, optimizer=ctx.optimizer(phase.learning_rate),
                      loss_weights={"gender": config.gender_weight, "age": config.age_weight})


def run_fit_phases(model, phases: list[Phase], ctx: FitContext) -> None:
    """Run every fitting phase not finished yet; a finished one is skipped (its end state is
    loaded when the next one starts)."""
    handover: Path | None = None
    fitting = [phase for phase in phases if phase.name != "head refit"]
    if ctx.agreement is not None:
        ctx.agreement.phases([ctx.checkpoints / f"{phase.slug}.weights.h5" for phase in fitting])
    for i, phase in enumerate(fitting):
        done = ctx.checkpoints / f"{phase.slug}.weights.h5"
        if done.is_file():
            handover = done
            log.info("phase %s: finished earlier, skipped", phase.describe())
            continue
        if handover is not None:
            load_weights(model, handover)
            handover = None
        _prepare(model, phase, ctx, first=i == 0)
        log.info("phase %d/%d %s", i + 1, len(phases), phase.describe())
        backup_dir = ctx.checkpoints / f"backup-{phase.slug}"
        if ctx.agreement is not None:
            ctx.agreement.backup(backup_dir)
        if backed_up_epochs(backup_dir):
            log.info("phase %s: resumes after epoch %d (its backup)", phase.name,
                     backed_up_epochs(backup_dir))
        # Keras 3.15: a restoring BackupAndRestore sets model._initial_epoch, which fit prefers
        # to its initial_epoch argument, and nothing clears it: after a resumed warm-up the
        # fine-tuning fit would start again at the warm-up's restored epoch (tested).
        model._initial_epoch = None
        model.fit(ctx.train_ds, validation_data=ctx.val_ds if phase.validated else None,
                  initial_epoch=phase.epochs[0], epochs=phase.epochs[1], shuffle=False,
                  verbose=ctx.verbose,
                  callbacks=callbacks_for(phase, ctx, backup_dir))
        writing = done.with_name("writing-" + done.name)  # whole or not at all: a kill mid-write
        model.save_weights(writing)                        # must not leave a phase "finished"
        writing.replace(done)


def load_weights(model, path: Path) -> None:
    """The model's weights from a file a phase saved. The optimizer state saved with them is not
    wanted (the next phase compiles its own), so Keras' warning that it skipped it is not shown."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)


def refit_heads(model, train_ds, val_ds, *, epochs: int, learning_rate: float, loss_weights,
                verbose: int | str = "auto"):
    """The head refit: only the two output layers learn, with dropout off.

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
        layer.trainable = layer.name in HEAD_LAYERS
    compile_model(model, learning_rate=learning_rate, loss_weights=loss_weights)
    model.fit(train_ds, validation_data=val_ds, epochs=epochs, shuffle=False, verbose=verbose)
    return model
