"""Options defined once: the flags, config.json and recipes all come from TrainConfig."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from agegender.cli import build_parser, config_from_args
from agegender.config import (
    TrainConfig,
    add_train_options,
    list_recipes,
    load_recipe,
    recipes_dir,
    resolve_config,
    training_differences,
)

RECIPES = ["mobilenet-v2-final", "mobilenet-v2-final-childweight", "mobilenet-v2-final-degrade", "mobilenet-v2-transfer", "model-a-improved", "model-a-seed", "model-b-seed"]


def _parse(*flags: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *flags]))


def test_every_field_is_a_flag_with_the_field_default() -> None:
    parser = argparse.ArgumentParser()
    add_train_options(parser)
    flags = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(flags) == {f.name for f in dataclasses.fields(TrainConfig)}
    for f in dataclasses.fields(TrainConfig):
        assert flags[f.name].option_strings[0] == "--" + f.name.replace("_", "-")
        assert flags[f.name].default is argparse.SUPPRESS  # "not given" is told from the default
        assert f.metadata["help"]
    # nothing given: the defaults (the seed's recipe); given: typed values
    assert _parse("--out", "o") == TrainConfig(out="o")
    config = _parse("--out", "o", "--image-size", "64", "--lr", "5e-4", "--augment", "--no-cache",
                    "--dropout", "0.25", "--monitor", "val_age_mae", "--degrade", "0.2",
                    "--tight-crop", "0.3")
    assert (config.image_size, config.lr, config.augment, config.cache, config.dropout, config.monitor,
            config.degrade, config.tight_crop) == (64, 5e-4, True, False, 0.25, "val_age_mae", 0.2, 0.3)


def test_the_documented_recipes_exist_and_are_valid() -> None:
    assert set(RECIPES) <= set(list_recipes())
    for name in list_recipes():
        text = (recipes_dir() / f"{name}.toml").read_text()
        assert text.startswith(f"# {name}:"), f"{name}: starts with a comment saying what it is"
        assert "measured" in text.lower(), f"{name}: the comment gives its measured result"
        config = resolve_config(name, out="o", data_dir="d")
        config.validate()
    assert resolve_config("model-a-seed", out="o") == TrainConfig(out="o", n=5000)
    final = resolve_config("mobilenet-v2-final", out="o")
    assert (final.fit_on, final.lr_schedule, len(final.lr_history)) == ("train+val", "replay", 20)


def test_flags_override_the_recipe() -> None:
    config = _parse("--recipe", "model-a-improved", "--out", "o", "--epochs", "3", "--no-augment")
    assert (config.lr, config.dropout, config.head_refit_epochs) == (5e-4, 0.25, 2)  # the recipe's
    assert (config.epochs, config.augment) == (3, False)  # the flags'


def test_a_run_folders_config_json_is_a_recipe(tmp_path: Path) -> None:
    original = resolve_config("mobilenet-v2-transfer", out="runs/a", data_dir="data", seed=3)
    (tmp_path / "config.json").write_text(json.dumps({"config": original.to_dict(), "versions": {}}))
    again = _parse("--recipe", str(tmp_path / "config.json"), "--out", "runs/b")
    assert again == dataclasses.replace(original, out="runs/b")  # the folder is the caller's


def test_bad_recipes_are_refused_naming_the_file(tmp_path: Path) -> None:
    typo = tmp_path / "typo.toml"
    typo.write_text('backbone = "custom_cnn"\nlearning_rate = 0.1\n')
    with pytest.raises(ValueError, match=r"typo.toml: unknown options \['learning_rate'\]"):
        load_recipe(typo)
    broken = tmp_path / "broken.toml"
    broken.write_text("epochs = = 3\n")
    with pytest.raises(ValueError, match="broken.toml: not a valid TOML"):
        load_recipe(broken)
    with pytest.raises(ValueError, match="no recipe 'no-such-recipe'.*model-a-seed"):
        load_recipe("no-such-recipe")


def test_resume_compares_only_what_changes_training() -> None:
    stored = TrainConfig(out="a", data_dir="x", lr=1e-3).to_dict()
    # where the run is and how it is shown may differ
    same = TrainConfig(out="b", data_dir="y", lr=1e-3, cache=False, keep_checkpoints=True)
    assert training_differences(stored, same) == []
    changed = TrainConfig(out="a", data_dir="x", lr=5e-4, batch_size=16, augment=True)
    assert training_differences(stored, changed) == [
        "augment: the run has False, asked True", "batch_size: the run has 32, asked 16",
        "lr: the run has 0.001, asked 0.0005"]
    # an option missing from an older config.json had its default then
    assert training_differences({"lr": 1e-3}, TrainConfig(out="a", ema=0.99)) == [
        "ema: the run has None, asked 0.99"]


@pytest.mark.parametrize(("options", "message"), [
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"lr": 0}, "lr must be positive"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"ema": 1.0}, r"ema must be in \[0, 1\)"),
    ({"val": 0.5, "test": 0.5}, "sum is below 1"),
    ({"monitor": "val_acc"}, "monitor must be one of"),
    ({"warmup_epochs": 2}, "needs pretrained weights"),
    ({"lr_schedule": "replay"}, "go together"),
    ({"n": 2}, "n must be at least 3"),
    ({"degrade": 1.5, "augment": True}, r"degrade must be a probability in \[0, 1\]"),
    ({"degrade": 0.2}, "it needs augment"),
    ({"tight_crop": -0.1, "augment": True}, r"tight_crop must be a probability in \[0, 1\]"),
    ({"tight_crop": 0.2}, "tight_crop is part of the training augmentation: it needs augment"),
    ({"child_gender_weight": 0}, "child_gender_weight must be positive"),
    ({"finetune_lr": 1e-4}, "finetune_lr is the learning rate after the warm-up: it needs warmup_epochs"),
])
def test_each_bad_option_is_named(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(out="o", data_dir="d", **options).validate()


def test_help_lists_the_recipes_and_exit_statuses(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    assert "model-a-improved" in text and "--image-size" in text
    assert "exit status:" in text and "2  usage error" in text


def test_the_phases_say_what_learns() -> None:
    from agegender.phases import plan_phases

    cfg = {"trainable_layers": 30, "bn_inference": True}
    seed_b = resolve_config("model-b-seed", out="o")
    assert [p.describe() for p in plan_phases(seed_b, cfg)] == [
        "training: epochs 1-100, lr 0.001, last 30 backbone layers learn, on train (validated on val)"]
    final = resolve_config("mobilenet-v2-final", out="o")
    assert [p.describe() for p in plan_phases(final, {"trainable_layers": 30, "bn_inference": True})] == [
        "warm-up: epochs 1-2, lr 0.001, backbone frozen, new layers learn, on train+val (no validation)",
        "fine-tuning: epochs 3-20, lr 0.0001, last 60 backbone layers learn (BatchNorm frozen), "
        "on train+val (no validation)",
        "head refit: epoch 1, lr 0.0001, the two output layers only, dropout off, on train+val (no validation)"]
