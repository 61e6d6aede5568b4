"""Every option of a training run, defined once.

:class:`TrainConfig` is the single definition: each field carries its help text, its group and
whether it changes training (``trains``) in its metadata. From it come

* the ``agegender train`` flags (:func:`add_train_options`): ``--image-size`` is the field
  ``image_size``, with the field's default, type and choices;
* ``config.json`` in the run folder (``dataclasses.asdict``) and the comparison on resume
  (:func:`training_differences`: the fields with ``trains=True``);
* recipe files (:func:`load_recipe`): a TOML file of field names and values, e.g.
  ``recipes/model-a-improved.toml``; a finished run's ``config.json`` is a recipe too.

Importing this module does not import TensorFlow (``agegender --help`` stays fast).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STRATEGIES = ("default", "mirrored", "multi_worker")
LR_SCHEDULES = ("constant", "plateau", "replay")
FIT_ON = ("train", "train+val")
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
# What early stopping and the best-model checkpoint may watch, and which way is better. The
# learning-rate schedule always follows val_loss (a smooth signal for the optimizer).
MONITORS = {"val_loss": "min", "val_gender_accuracy": "max", "val_age_mae": "min"}
GROUPS = ("data", "model", "training", "run folder")


def _option(default: Any, help: str, *, group: str, trains: bool = True,
            choices: Sequence[str] | None = None, metavar: str | None = None,
            recipe: bool = True) -> Any:
    """A config field: its default and what the CLI, config.json and recipes need to know.

    ``trains``: the option changes what is trained (a resumed run must keep it); ``recipe``:
    it may be set by a recipe file (not the run folder itself).
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "group": group, "trains": trains, "choices": choices, "metavar": metavar,
        "recipe": recipe,
    })


@dataclass
class TrainConfig:
    """Every option of a training run (the defaults are the seed's recipe)."""

    # data
    data_dir: str | None = _option(
        None, "folder of UTKFace images (default: $UTKFACE_DIR)", group="data", trains=False)
    splits: str | None = _option(
        None, "folder with train.csv/val.csv/test.csv to reuse instead of splitting", group="data")
    n: int | None = _option(5000, "images to use (a stratified subset)", group="data")
    seed: int = _option(0, "seed for the subset, the split and training", group="data")
    val: float = _option(0.15, "validation fraction", group="data")
    test: float = _option(0.15, "test fraction", group="data")
    image_size: int = _option(128, "square input size in pixels", group="data")
    augment: bool = _option(False, "flip/brightness/contrast/crop jitter", group="data")
    degrade: float = _option(
        0.0, "with augment: probability of each photo degradation per training image "
        "(downscaled to 24-96 px and back, JPEG quality 10-60, grayscale)", group="data",
        metavar="P")
    tight_crop: float = _option(
        0.0, "with augment: probability that a training image is also cropped tighter around "
        "its centre (the face 1.1-1.3x larger, as in another tool's tight face crop)",
        group="data", metavar="P")
    cache: bool = _option(True, "cache decoded images in memory", group="data", trains=False)
    # model
    backbone: str = _option("custom_cnn", "registered backbone (custom_cnn is Model A)",
                            group="model")
    weights: str | None = _option(
        None, "backbone weights: 'imagenet' (found offline) or a weights file", group="model")
    trainable_layers: int | None = _option(
        None, "fine-tune only the last N backbone layers (default: the backbone's)",
        group="model")
    dropout: float | None = _option(
        None, "dropout rate after each dense layer (default: the backbone's; 0.5 for custom_cnn)",
        group="model")
    # training
    epochs: int = _option(100, "maximum epochs, warm-up included; early stopping applies",
                          group="training")
    batch_size: int = _option(32, "global batch size", group="training")
    lr: float = _option(1e-3, "Adam learning rate", group="training")
    patience: int = _option(10, "early-stopping patience in epochs", group="training")
    monitor: str = _option(
        "val_loss", "what early stopping and the kept model watch (the learning-rate schedule "
        "always follows val_loss)", group="training", choices=tuple(MONITORS))
    gender_weight: float = _option(1.0, "loss weight of the gender head", group="training")
    age_weight: float = _option(1.0, "loss weight of the age head", group="training")
    child_gender_weight: float = _option(
        1.0, "weight of the gender loss of images under 10 years against the others' (weights "
        "scaled to a mean of 1 over the training images); `agegender fit-readouts` leaves "
        "children's gender to this network", group="training", metavar="W")
    lr_schedule: str = _option(
        "constant", "'plateau' halves the rate when the validation loss stalls; 'replay' sets "
        "each epoch's rate from --lr-history", group="training", choices=LR_SCHEDULES)
    lr_history: str | list[float] | None = _option(
        None, "with --lr-schedule replay: a validated run's history.csv whose logged rates are "
        "replayed epoch by epoch (a recipe may list the rates)", group="training",
        metavar="HISTORY_CSV")
    fit_on: str = _option(
        "train", "'train+val' is the final fit: both splits, exactly --epochs epochs, the last "
        "kept (no validation; the test split stays held out)", group="training", choices=FIT_ON)
    warmup_epochs: int = _option(
        0, "transfer recipe (needs --weights): N epochs with the backbone frozen, then the last "
        "--trainable-layers unfrozen at --finetune-lr", group="training")
    finetune_lr: float | None = _option(
        None, "learning rate after the warm-up (default: --lr / 10)", group="training")
    ema: float | None = _option(
        None, "keep a moving average of the weights with this momentum (e.g. 0.99); validate, "
        "checkpoint and keep the averaged weights", group="training", metavar="MOMENTUM")
    head_refit_epochs: int = _option(
        0, "after training, refit the two output layers for N epochs with dropout off",
        group="training")
    precision: str = _option(
        "auto", "'auto': the faster of float32 and the hardware's mixed policy, timed on a few "
        "training steps of this backbone and size once per machine (see `agegender cache`)",
        group="training", choices=PRECISIONS)
    strategy: str = _option(
        "default", "tf.distribute strategy ('mirrored' splits the CPU in two without a GPU; "
        "'multi_worker' reads TF_CONFIG)", group="training", choices=STRATEGIES)
    # run folder
    out: str = _option("", "run folder (an unfinished one is resumed)", group="run folder",
                       trains=False, recipe=False)
    keep_checkpoints: bool = _option(
        False, "keep checkpoints/ (the resume state) when the run finishes", group="run folder",
        trains=False)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first option that is out of range."""
        for rule in _RULES:
            message = rule(self)
            if message:
                raise ValueError(message)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _positive_ints(c: TrainConfig) -> str | None:
    for name in ("batch_size", "epochs", "patience", "image_size"):
        if getattr(c, name) < 1:
            return f"{name} must be a positive integer. Received: {name}={getattr(c, name)}"
    for name in ("warmup_epochs", "head_refit_epochs"):
        if getattr(c, name) < 0:
            return f"{name} must be >= 0. Received: {name}={getattr(c, name)}"
    return None


def _positive_rates(c: TrainConfig) -> str | None:
    for name in ("lr", "finetune_lr", "child_gender_weight"):
        value = getattr(c, name)
        if value is not None and value <= 0:
            return f"{name} must be positive. Received: {name}={value}"
    return None


def _fractions(c: TrainConfig) -> str | None:
    if not 0 < c.val < 1 or not 0 < c.test < 1 or c.val + c.test >= 1:
        return ("val and test must be fractions in (0, 1) whose sum is below 1. "
                f"Received: val={c.val}, test={c.test}")
    for name in ("dropout", "ema"):
        value = getattr(c, name)
        if value is not None and not 0 <= value < 1:
            return f"{name} must be in [0, 1). Received: {name}={value}"
    if c.ema == 0:
        return "ema must be in (0, 1). Received: ema=0"
    for name in ("degrade", "tight_crop"):  # probabilities inside the training augmentation
        value = getattr(c, name)
        if not 0 <= value <= 1:
            return f"{name} must be a probability in [0, 1]. Received: {name}={value}"
        if value and not c.augment:
            return (f"{name} is part of the training augmentation: it needs augment (--augment). "
                    f"Received: {name}={value}, augment=False")
    return None


def _choices(c: TrainConfig) -> str | None:
    for f in dataclasses.fields(c):
        allowed = f.metadata.get("choices")
        if allowed and getattr(c, f.name) not in allowed:
            return f"{f.name} must be one of {list(allowed)}. Received: {f.name}={getattr(c, f.name)!r}"
    return None


def _sizes(c: TrainConfig) -> str | None:
    if c.n is not None and c.n < 3:
        return f"n must be at least 3 (one image per split). Received: n={c.n}"
    if c.image_size < 32:
        return f"image_size must be at least 32. Received: image_size={c.image_size}"
    return None


def _warmup(c: TrainConfig) -> str | None:
    if c.warmup_epochs and c.weights is None:
        return ("warmup_epochs (the transfer recipe's frozen-backbone phase) needs pretrained "
                "weights: pass weights ('imagenet' or a weights file). Received: weights=None")
    if c.finetune_lr is not None and not c.warmup_epochs:
        return ("finetune_lr is the learning rate after the warm-up: it needs warmup_epochs. "
                f"Received: finetune_lr={c.finetune_lr}, warmup_epochs=0")
    if c.warmup_epochs >= c.epochs:
        return ("warmup_epochs must be smaller than epochs (the maximum, warm-up included). "
                f"Received: warmup_epochs={c.warmup_epochs}, epochs={c.epochs}")
    return None


def _schedule(c: TrainConfig) -> str | None:
    if c.fit_on == "train+val" and c.lr_schedule == "plateau":
        return ("lr_schedule='plateau' follows the validation loss, and fit_on='train+val' leaves "
                "no validation split: replay the rates of a validated run (lr_schedule='replay', "
                "lr_history=its history.csv) or use 'constant'")
    if (c.lr_schedule == "replay") != (c.lr_history is not None):
        return ("lr_schedule='replay' and lr_history (the history.csv whose learning rates are "
                f"replayed) go together. Received: lr_schedule={c.lr_schedule!r}, "
                f"lr_history={c.lr_history!r}")
    return None


def _data(c: TrainConfig) -> str | None:
    if not c.out:
        return "no run folder: pass out (--out)"
    if c.data_dir is None and not os.environ.get("UTKFACE_DIR"):
        return ("no data: pass data_dir (--data-dir) or set the UTKFACE_DIR environment variable "
                "to a folder of UTKFace images (split files hold paths relative to it); UTKFace "
                "(non-commercial research licence) is at https://susanqq.github.io/UTKFace/, the "
                "'crop_part1' archive of aligned and cropped faces is what the seed used")
    return None


_RULES: tuple[Callable[[TrainConfig], str | None], ...] = (
    _sizes, _positive_ints, _positive_rates, _fractions, _choices, _warmup, _schedule, _data,
)


# --------------------------------------------------------------------------------------------------
# The command line


def _scalar_type(annotation: Any) -> type:
    """``int`` for ``int | None`` and so on; ``str`` for anything with a ``str`` in it."""
    hints = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for kind in (bool, int, float):
        if kind in hints:
            return kind
    return str


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """Add one flag per :class:`TrainConfig` field. Every flag defaults to "not given"
    (``argparse.SUPPRESS``), so :func:`resolve_config` can tell a given flag from a default."""
    hints = typing.get_type_hints(TrainConfig)
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        kind = _scalar_type(hints[f.name])
        default = "required" if f.name == "out" else f"default: {f.default}"
        options: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": f.name,
                                   "help": f"{meta['help']} ({default})"}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options.update(type=kind, metavar=meta["metavar"])
            if meta["choices"]:
                options.update(choices=meta["choices"], metavar=None)
        groups[meta["group"]].add_argument(_flag(f.name), **options)


# --------------------------------------------------------------------------------------------------
# Recipes


def recipes_dir() -> Path:
    """Where named recipes live: the ``recipes`` folder shipped in the package (a wheel), else the
    checkout's top-level ``recipes/`` (an editable install)."""
    here = Path(__file__).resolve().parent
    shipped = here / "recipes"
    return shipped if shipped.is_dir() else here.parents[3] / "recipes"


def list_recipes() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.toml"))


def load_recipe(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The options a recipe sets: a recipe name (``recipes/NAME.toml``), a TOML file, or a run
    folder's ``config.json`` (its ``config``). Unknown keys are refused, naming the file."""
    path = Path(name_or_path)
    if not path.is_file():
        named = recipes_dir() / f"{name_or_path}.toml"
        if not named.is_file():
            raise ValueError(f"no recipe {str(name_or_path)!r}: not a file, and not one of "
                             f"{list_recipes()} (in {recipes_dir()})")
        path = named
    try:
        if path.suffix == ".json":
            values = json.loads(path.read_text(encoding="utf-8")).get("config")
        else:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ValueError(f"recipe {path}: not a valid TOML recipe or config.json ({exc})") from None
    if not isinstance(values, dict):
        raise ValueError(f"recipe {path}: no 'config' table in it (a run folder's config.json has one)")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"recipe {path}: unknown options {unknown}; valid: {sorted(fields)}")
    # the run folder is the caller's, never a recipe's (a run's config.json names its own)
    return {k: v for k, v in values.items() if fields[k].metadata["recipe"]}


def resolve_config(recipe: str | os.PathLike | None = None, **given: Any) -> TrainConfig:
    """Defaults, then the recipe's options, then ``given`` (the command line's flags)."""
    values = load_recipe(recipe) if recipe is not None else {}
    values.update(given)
    return TrainConfig(**values)


def training_differences(stored: Mapping[str, Any], config: TrainConfig) -> list[str]:
    """``name: the run has X, asked Y`` for every option that changes training and differs from
    ``stored`` (a run folder's config); options missing there had their default."""
    now = json.loads(json.dumps(config.to_dict()))
    changed = []
    for f in dataclasses.fields(TrainConfig):
        if not f.metadata["trains"]:
            continue
        before = stored.get(f.name, f.default)
        if before != now[f.name]:
            changed.append(f"{f.name}: the run has {before!r}, asked {now[f.name]!r}")
    return changed
