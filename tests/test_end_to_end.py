"""End to end: train on generated images, resume after a kill, distribute, predict, evaluate.

Tiny on purpose (64 images of 40 px, 32 px model input, 1-3 epochs): this checks the mechanics a
user relies on, not model quality (that is RESULTS.md's job, on real data).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from agegender.cli import main as cli_main
from agegender.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
TINY = {"n": 64, "image_size": 32, "batch_size": 16, "seed": 0}
METRIC_KEYS = {"n", "gender_accuracy", "age_mae", "age_rmse", "age_cs", "age_mae_by_bin", "by_group"}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``agegender ARGS`` in this process (a new one would start TensorFlow again, ~10 s each);
    the tests that need a process of their own (the entry point, logical CPUs) start one."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli_main(list(args))
        except SystemExit as exit_:  # argparse refusing an option
            code = exit_.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _tiny_flags() -> list[str]:
    """TINY as `agegender train` flags."""
    return [f for k, v in TINY.items() for f in ("--" + k.replace("_", "-"), str(v))]


def _cli_process(*args: str, unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``agegender ARGS`` in a process of its own, without the environment variables ``unset``."""
    env = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run(
        [sys.executable, "-m", "agegender.cli", *args],
        capture_output=True, text=True, timeout=300, env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )


@pytest.fixture(scope="module")
def trained_run(face_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "model_a"
    train(TrainConfig(out=str(out), data_dir=str(face_folder), epochs=2, **TINY), verbose=0)
    return out


def test_run_folder_has_every_output(trained_run: Path, face_folder: Path) -> None:
    from agegender_models import load_model

    config = json.loads((trained_run / "config.json").read_text())
    assert config["config"]["backbone"] == "custom_cnn"
    assert config["config"]["seed"] == 0
    assert config["precision"] in {"float32", "mixed_bfloat16"}
    assert len(config["dataset_fingerprint"]) == 64
    assert {"tensorflow", "keras", "utkface-data", "agegender-models", "agegender-eval"} <= set(
        config["versions"]
    )
    # the malformed name and the text file are reported, not silently dropped
    report = config["index_report"]
    assert report["files_seen"] == 66
    assert [q["file"] for q in report["quarantined"]] == ["61_1_20170109142408075.jpg.chip.jpg"]
    assert report["not_images"] == ["README.txt"]

    splits = {name: pd.read_csv(trained_run / "splits" / f"{name}.csv") for name in ("train", "val", "test")}
    assert sum(len(s) for s in splits.values()) == 64
    assert set(splits["train"]["path"]).isdisjoint(splits["test"]["path"])

    history = pd.read_csv(trained_run / "history.csv")
    assert list(history["epoch"]) == [0, 1]
    assert {"loss", "val_loss", "val_gender_accuracy", "val_age_mae"} <= set(history.columns)

    model = load_model(trained_run / "model.keras")
    assert set(model.output_names) == {"gender", "age"}

    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2
    for split in ("validation", "test"):
        assert set(metrics[split]) >= METRIC_KEYS
        assert set(metrics[split]["by_group"]["age_group"]) <= {"under 10", "10–17", "18+"}
    assert metrics["test"]["n"] == len(splits["test"])
    assert (trained_run / "report" / "report.md").is_file()
    assert len(pd.read_csv(trained_run / "report" / "predictions.csv")) == len(splits["test"])
    assert list((trained_run / "report").glob("*.png"))
    # a finished run keeps no resume state, and its model no optimizer state
    assert not (trained_run / "checkpoints").exists()
    assert getattr(model, "optimizer", None) is None
    assert (trained_run / ".lock").read_text() == ""  # released


# argv: run folder, data folder, epoch to kill in (mid-epoch, SIGKILL; -1: none), file that
# records every epoch begun, TrainConfig options as JSON
KILL_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    import keras
    from agegender.training import TrainConfig, train

    out, data_dir, kill_epoch, begun, options = sys.argv[1:]

    class KillMidEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            with open(begun, "a") as f:
                f.write(f"{epoch}\\n")
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == int(kill_epoch) and batch == 1:
                os.kill(os.getpid(), signal.SIGKILL)

    config = TrainConfig(out=out, data_dir=data_dir, **json.loads(options))
    train(config, verbose=0, callbacks=[KillMidEpoch()])
    """
)


def _run_killable(out: Path, face_folder: Path, kill_epoch: int, begun: Path, **options):
    script = out.parent / "kill.py"
    script.write_text(KILL_SCRIPT)
    return subprocess.run(
        [sys.executable, str(script), str(out), str(face_folder), str(kill_epoch), str(begun),
         json.dumps(options)],
        capture_output=True, text=True, timeout=300,
    )


def _epoch_recorder():
    """A callback that lists the epochs it sees begin (in ``.epochs``)."""
    import keras

    class Recorder(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs: list[int] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append(epoch)

    return Recorder()


def test_resume_after_kill_continues_from_last_finished_epoch(face_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    killed = _run_killable(out, face_folder, 1, tmp_path / "begun.txt", epochs=3, **TINY)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == [0]
    assert not (out / "metrics.json").exists()

    # resumed with another learning rate: refused, naming it (it used to train on at the old
    # rate while config.json recorded the new one)
    stored = (out / "config.json").read_text()
    changed = _cli("train", "--data-dir", str(face_folder), "--out", str(out), "--epochs", "3",
                   *_tiny_flags(), "--lr", "5e-4")
    assert changed.returncode == 2
    assert "unfinished run trained with other options (lr: the run has 0.001, asked 0.0005)" in changed.stderr
    assert (out / "config.json").read_text() == stored

    recorder = _epoch_recorder()
    train(TrainConfig(out=str(out), data_dir=str(face_folder), epochs=3, **TINY), verbose=0,
          callbacks=[recorder])
    assert recorder.epochs == [1, 2]  # epoch 0 is not trained again
    assert list(pd.read_csv(out / "history.csv")["epoch"]) == [0, 1, 2]
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 3


def test_run_stopped_after_its_last_epoch_is_not_trained_again(face_folder: Path, tmp_path: Path) -> None:
    """Stopped in the evaluation, after the last epoch (Keras has deleted its backup by then):
    the restart trains no epoch, keeps history.csv and writes the results."""
    import shutil

    out = tmp_path / "run"
    config = TrainConfig(out=str(out), data_dir=str(face_folder), epochs=2, keep_checkpoints=True, **TINY)
    train(config, verbose=0)
    history = (out / "history.csv").read_text()
    (out / "metrics.json").unlink()
    shutil.rmtree(out / "report")

    recorder = _epoch_recorder()
    metrics = train(config, verbose=0, callbacks=[recorder])
    assert recorder.epochs == []
    assert (out / "history.csv").read_text() == history
    assert metrics["epochs_run"] == 2
    assert (out / "report" / "report.md").is_file()


def test_mirrored_strategy_on_two_logical_cpus(face_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "mirrored"
    result = _cli_process("train", "--data-dir", str(face_folder), "--n", "32", "--epochs", "1",
                  "--image-size", "32", "--batch-size", "8", "--strategy", "mirrored",
                  "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["strategy"] == "MirroredStrategy"
    assert config["replicas"] == 2
    assert (out / "model.keras").is_file()


def test_cli_predict_json_lists_bad_files_and_predicts_good_ones(trained_run: Path, face_folder: Path,
                                                                 tmp_path: Path) -> None:
    good = sorted(face_folder.glob("*.jpg"))[:3]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(good[0].read_bytes()[:200])
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    result = _cli("predict", "--detect", "none", "--model", str(trained_run / "model.keras"), "--json",
                  *map(str, good), str(corrupt), str(empty), str(tmp_path / "missing.jpg"))
    assert result.returncode == 1, result.stderr[-3000:]  # some inputs failed: not a success
    payload = json.loads(result.stdout)
    assert [p["file"] for p in payload["predictions"]] == [str(p) for p in good]
    for p in payload["predictions"]:
        assert p["gender"] in {"male", "female"}
        assert 0.0 <= p["p_female"] <= 1.0
        assert 0.0 <= p["age"] <= 120.0
    errors = {e["file"]: e["reason"] for e in payload["errors"]}
    assert set(errors) == {str(corrupt), str(empty), str(tmp_path / "missing.jpg")}
    assert "no image" in errors[str(empty)]


def test_cli_predict_missing_model_is_one_clear_line(tmp_path: Path) -> None:
    result = _cli("predict", "--model", str(tmp_path / "nope.keras"), str(tmp_path))
    assert result.returncode == 2
    assert "model file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_evaluate_writes_metrics(trained_run: Path, face_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = _cli("evaluate", "--model", str(trained_run / "model.keras"), "--data-dir",
                  str(face_folder), "--split", str(trained_run / "splits" / "test.csv"),
                  "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= METRIC_KEYS
    split = pd.read_csv(trained_run / "splits" / "test.csv")
    assert metrics["n"] == len(split)
    assert "5" in metrics["age_cs"]
    # one row per image, in the split's order; the metrics follow from its columns
    rows = pd.read_csv(out / "predictions.csv")
    assert list(rows.columns) == ["path", "age", "gender", "race", "age_pred", "p_female"]
    assert rows["path"].tolist() == split["path"].tolist()
    assert rows["age"].tolist() == split["age"].tolist()
    assert (rows["age_pred"] - rows["age"]).abs().mean() == pytest.approx(metrics["age_mae"], rel=1e-6)
    accuracy = ((rows["p_female"] > 0.5).astype(int) == rows["gender"]).mean()
    assert accuracy == pytest.approx(metrics["gender_accuracy"], abs=1e-9)


def test_cli_evaluate_folder_without_images_is_clear(trained_run: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    result = _cli("evaluate", "--model", str(trained_run / "model.keras"), "--data-dir",
                  str(tmp_path), "--out", str(tmp_path / "eval"))
    assert result.returncode == 2
    assert str(tmp_path) in result.stderr
    assert "Traceback" not in result.stderr


def test_example_prints_seed_format_lines(face_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "example"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "reproduce_model_a.py"), "--data-dir",
         str(face_folder), "--n", "48", "--epochs", "1", "--seed", "1", "--image-size", "32",
         "--quiet", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Validation Accuracy for Gender Classification: " in result.stdout
    assert "(seed reported 0.902)" in result.stdout
    assert "Validation MAE for Age Estimation: " in result.stdout
    assert (out / "model.keras").is_file()


def test_model_b_example_without_weights_says_which_file(face_folder: Path, tmp_path: Path) -> None:
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras_home"), "AGEGENDER_WEIGHTS_DIR": ""}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "reproduce_model_b.py"), "--data-dir",
         str(face_folder), "--n", "32", "--epochs", "1", "--image-size", "32", "--out",
         str(tmp_path / "b")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 2
    assert "resnet50" in result.stderr.lower()
    assert ".h5" in result.stderr
    assert "Traceback" not in result.stderr


def test_predictions_cover_a_grayscale_and_rgba_image(trained_run: Path, tmp_path: Path) -> None:
    from agegender_models import Predictor

    gray = tmp_path / "gray.png"
    Image.new("L", (50, 70), 128).save(gray)
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (90, 60), (10, 20, 30, 128)).save(rgba)
    results = Predictor(trained_run / "model.keras").predict([gray, rgba])
    assert [r["file"] for r in results] == [str(gray), str(rgba)]


def test_compare_backbones_writes_one_table_for_the_same_split(face_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "compare_backbones.py"), "--data-dir",
         str(face_folder), "--n", "48", "--epochs", "1", "--image-size", "32", "--quiet",
         "--backbones", "custom_cnn", "mobilenet_v3_small", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(out / "comparison.csv")
    assert list(table["backbone"]) == ["custom_cnn", "mobilenet_v3_small"]
    assert {"gender_acc", "age_mae", "cs5", "age_mae[18+]"} <= set(table.columns)
    assert (out / "comparison.png").stat().st_size > 0
    assert "| custom_cnn |" in (out / "comparison.md").read_text()
    # every backbone trained and was tested on the one shared split
    shared = pd.read_csv(out / "splits" / "test.csv")["path"].tolist()
    for backbone in ("custom_cnn", "mobilenet_v3_small"):
        assert pd.read_csv(out / backbone / "splits" / "test.csv")["path"].tolist() == shared


def test_model_b_example_trains_from_a_local_weights_file(face_folder: Path, tmp_path: Path) -> None:
    """ResNet50's ImageNet file cannot be downloaded here: the mechanics run on a file we save."""
    import keras

    weights = _backbone_weights_file("resnet50", tmp_path)
    keras.backend.clear_session()
    out = tmp_path / "model_b"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "reproduce_model_b.py"), "--data-dir",
         str(face_folder), "--n", "48", "--epochs", "1", "--image-size", "32", "--quiet",
         "--weights", str(weights), "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(seed reported 0.8)" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["backbone"] == "resnet50"
    assert config["config"]["weights"] == str(weights)
    assert (out / "model.keras").is_file()


def _resume_files(tmp_path: Path, history_csv: str, backed_up_epochs: int) -> tuple[Path, Path]:
    """history.csv with these rows and a BackupAndRestore folder that has finished that many epochs."""
    history = tmp_path / "history.csv"
    history.write_text(history_csv)
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "training_metadata.json").write_text(json.dumps({"epoch": backed_up_epochs, "batch": 0}))
    return history, backup


def test_resume_state_restores_history_and_callback_state(tmp_path: Path) -> None:
    """The bookkeeping of a resumed run, without training: 3 epochs backed up, 4 logged."""
    import keras

    from agegender.callbacks import make_resume_callback

    history, backup = _resume_files(tmp_path, "epoch,loss,val_loss\n0,5,3.0\n1,4,1.0\n2,3,2.0\n3,2,2.5\n", 3)
    early = keras.callbacks.EarlyStopping(patience=10)
    early.on_train_begin()
    best = keras.callbacks.ModelCheckpoint(tmp_path / "m.keras", save_best_only=True)
    make_resume_callback(history, backup, early, best).on_train_begin()
    assert pd.read_csv(history)["epoch"].tolist() == [0, 1, 2]  # epoch 3 is trained again
    assert (early.best, early.wait, early.best_epoch, best.best) == (1.0, 1, 1, 1.0)


def test_resume_state_follows_the_monitored_metric(tmp_path: Path) -> None:
    """Watching gender accuracy (higher is better): its best epoch is 2, the loss's is 1; the
    plateau schedule keeps following the loss."""
    import keras

    from agegender.callbacks import make_resume_callback

    history, backup = _resume_files(tmp_path, "epoch,learning_rate,val_loss,val_gender_accuracy\n0,0.001,3.0,0.6\n"
                                     "1,0.001,1.0,0.7\n2,0.001,2.0,0.8\n3,0.001,2.5,0.8\n", 4)
    early = keras.callbacks.EarlyStopping(monitor="val_gender_accuracy", mode="max", patience=10)
    best = keras.callbacks.ModelCheckpoint(tmp_path / "m.keras", monitor="val_gender_accuracy",
                                           mode="max", save_best_only=True)
    plateau = keras.callbacks.ReduceLROnPlateau(patience=3)
    for callback in (early, plateau):
        callback.on_train_begin()
    make_resume_callback(history, backup, early, best, plateau=plateau,
                          monitor="val_gender_accuracy").on_train_begin()
    assert (early.best, early.wait, early.best_epoch, best.best) == (0.8, 1, 2, 0.8)
    assert (plateau.best, plateau.wait) == (1.0, 2)


def test_best_model_by_gender_accuracy(face_folder: Path, tmp_path: Path, monkeypatch) -> None:
    """monitor="val_gender_accuracy": early stopping and the best-model checkpoint watch it (higher
    is better), the plateau schedule the loss; the reported best epoch is the accuracy's."""
    import keras

    watched = []

    def spy(cls):
        class Spy(cls):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                watched.append((cls.__name__, self))
        return Spy

    for name in ("EarlyStopping", "ModelCheckpoint", "ReduceLROnPlateau"):
        monkeypatch.setattr(keras.callbacks, name, spy(getattr(keras.callbacks, name)))
    out = tmp_path / "run"
    metrics = train(TrainConfig(out=str(out), data_dir=str(face_folder), epochs=2, lr_schedule="plateau",
                                monitor="val_gender_accuracy", **TINY), verbose=0)
    seen = {(name, c.monitor, getattr(c, "save_best_only", None)) for name, c in watched}
    assert seen == {
        ("EarlyStopping", "val_gender_accuracy", None), ("ModelCheckpoint", "val_gender_accuracy", True),
        ("ReduceLROnPlateau", "val_loss", None)}
    # higher is better for the two that watch accuracy (their comparison, set up by fit)
    for _, c in watched:
        if c.monitor == "val_gender_accuracy":
            assert c.monitor_op(0.9, 0.8) and not c.monitor_op(0.8, 0.9)
    history = pd.read_csv(out / "history.csv")
    assert metrics["best_epoch"] == int(np.argmax(history["val_gender_accuracy"].to_numpy())) + 1
    with pytest.raises(ValueError, match="monitor must be one of"):
        TrainConfig(out=str(tmp_path / "x"), monitor="val_acc").validate()


def test_resume_state_restores_the_plateau_counter(tmp_path: Path) -> None:
    """Best at epoch 1, the rate cut at the end of epoch 2 (lower from epoch 3): 1 epoch waited since."""
    import keras

    from agegender.callbacks import make_resume_callback

    history, backup = _resume_files(tmp_path, "epoch,learning_rate,val_loss\n0,0.001,3.0\n1,0.001,1.0\n2,0.001,2.0\n"
                                     "3,0.0005,2.5\n", 4)
    early = keras.callbacks.EarlyStopping(patience=10)
    best = keras.callbacks.ModelCheckpoint(tmp_path / "m.keras", save_best_only=True)
    plateau = keras.callbacks.ReduceLROnPlateau(patience=3)
    for callback in (early, plateau):
        callback.on_train_begin()
    make_resume_callback(history, backup, early, best, plateau=plateau).on_train_begin()
    assert (plateau.best, plateau.wait) == (1.0, 1)
    assert (early.best, early.wait) == (1.0, 2)


def test_finished_run_folder_is_not_trained_again(trained_run: Path, face_folder: Path) -> None:
    before = (trained_run / "history.csv").read_text(), (trained_run / "model.keras").stat().st_mtime
    metrics = train(TrainConfig(out=str(trained_run), data_dir=str(face_folder), epochs=2, **TINY))
    assert metrics == {**json.loads((trained_run / "metrics.json").read_text()), "finished_earlier": True}
    flags = ["train", "--data-dir", str(face_folder), "--out", str(trained_run), "--epochs", "2", *_tiny_flags()]
    same = _cli(*flags)
    assert same.returncode == 0
    assert "already holds this finished run (nothing trained)" in same.stdout
    assert f"model:  {trained_run / 'model.keras'}" in same.stdout
    # asked again with other options: refused (it used to exit 0 with the old run's metrics)
    other = _cli(*flags, "--backbone", "mobilenet_v2")
    assert other.returncode == 2
    assert "finished run trained with other options (backbone: the run has 'custom_cnn', asked 'mobilenet_v2'" in other.stderr
    assert ((trained_run / "history.csv").read_text(), (trained_run / "model.keras").stat().st_mtime) == before


def test_unfinished_run_refuses_changed_options(face_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"config": {"backbone": "custom_cnn", "n": 64, "seed": 0}}))
    with pytest.raises(ValueError, match=r"unfinished run .*n: the run has 64, asked 32"):
        train(TrainConfig(out=str(out), data_dir=str(face_folder), **{**TINY, "n": 32}))
    # an option added later counts with its default for a run folder written before it
    with pytest.raises(ValueError, match=r"ema: the run has None, asked 0.99"):
        train(TrainConfig(out=str(out), data_dir=str(face_folder), ema=0.99, **TINY))


def test_too_small_splits_fail_before_writing(face_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="split would be empty"):
        train(TrainConfig(out=str(out), data_dir=str(face_folder), **{**TINY, "n": 3}))
    assert not (out / "splits").exists()


def test_cli_train_without_data_is_one_clear_line(tmp_path: Path) -> None:
    result = _cli_process("train", "--out", str(tmp_path / "r"), unset=("UTKFACE_DIR",))
    assert result.returncode == 2
    assert "UTKFACE_DIR" in result.stderr
    assert "Traceback" not in result.stderr


def test_head_refit_changes_only_the_output_layers(face_folder: Path, tmp_path: Path) -> None:
    import keras
    import numpy as np

    from agegender_models import load_model

    out = tmp_path / "refit"
    metrics = train(TrainConfig(out=str(out), data_dir=str(face_folder), epochs=1, head_refit_epochs=1,
                                keep_checkpoints=True, **TINY), verbose=0)
    assert set(metrics["before_head_refit"]) == {"validation", "test"}
    before = load_model(out / "checkpoints" / "trained.keras")
    after = load_model(out / "model.keras")
    assert all(la.rate == 0.0 for la in after.layers if isinstance(la, keras.layers.Dropout))
    for layer in before.layers:
        old = [np.asarray(w) for w in layer.get_weights()]
        new = [np.asarray(w) for w in after.get_layer(layer.name).get_weights()]
        same = all(np.array_equal(a, b) for a, b in zip(old, new, strict=True))
        assert same == (layer.name not in ("age_dense", "gender")), layer.name


def _backbone_weights_file(backbone: str, tmp_path: Path) -> Path:
    """A local weights file of a freshly initialised 32 px ``backbone`` (stands in for ImageNet's)."""
    from agegender_models import create_model

    weights = tmp_path / f"{backbone}.weights.h5"
    create_model(backbone, weights=None, input_shape=(32, 32, 3)).get_layer("backbone").save_weights(weights)
    return weights


def _train_with_backbone_snapshots(config: TrainConfig) -> list[tuple[str, dict[str, list]]]:
    """Train; return the backbone's weights by layer name at the begin and end of each fit."""
    import keras
    import numpy as np

    snapshots: list[tuple[str, dict[str, list[np.ndarray]]]] = []

    class Snapshot(keras.callbacks.Callback):
        def _take(self, when: str) -> None:
            backbone = self.model.get_layer("backbone")
            snapshots.append((when, {la.name: [np.array(w) for w in la.get_weights()] for la in backbone.layers}))

        def on_train_begin(self, logs=None):
            self._take("begin")

        def on_train_end(self, logs=None):
            self._take("end")

    train(config, callbacks=[Snapshot()], verbose=0)
    return snapshots


def _moved(before: dict[str, list], after: dict[str, list], name: str) -> bool:
    import numpy as np

    return not all(np.array_equal(a, b) for a, b in zip(before[name], after[name], strict=True))


def test_transfer_recipe_freezes_then_unfreezes_exactly_the_last_layers(face_folder: Path,
                                                                        tmp_path: Path) -> None:
    """Warm-up: nothing in the backbone moves. Fine-tuning: only the last N backbone layers'
    weights move, and no BatchNorm statistic or scale (inference mode) anywhere."""
    import keras

    from agegender_models import create_model

    weights = _backbone_weights_file("mobilenet_v2", tmp_path)
    n_last = 10
    config = TrainConfig(out=str(tmp_path / "run"), data_dir=str(face_folder), backbone="mobilenet_v2",
                         weights=str(weights), warmup_epochs=1, epochs=2, trainable_layers=n_last,
                         lr=1e-2, lr_schedule="plateau", **TINY)
    snapshots = _train_with_backbone_snapshots(config)
    assert [when for when, _ in snapshots] == ["begin", "end", "begin", "end"]
    names = list(snapshots[0][1])
    last = set(names[-n_last:])

    (_, warm_begin), (_, warm_end), (_, tune_begin), (_, tune_end) = snapshots
    assert not [name for name in names if _moved(warm_begin, warm_end, name)]
    changed = {name for name in names if _moved(tune_begin, tune_end, name)}
    backbone = create_model("mobilenet_v2", weights=None, input_shape=(32, 32, 3)).get_layer("backbone")
    batchnorm = {la.name for la in backbone.layers if isinstance(la, keras.layers.BatchNormalization)}
    assert changed, "fine-tuning moved nothing"
    assert changed <= last - batchnorm
    assert changed == {name for name in last - batchnorm if warm_begin[name]}
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert history["epoch"].tolist() == [0, 1]
    # the fine-tuning phase ran at a tenth of the warm-up's rate
    assert history["learning_rate"].tolist() == pytest.approx([1e-2, 1e-3])


def test_transfer_recipe_needs_pretrained_weights(face_folder: Path, tmp_path: Path) -> None:
    config = TrainConfig(out=str(tmp_path / "run"), data_dir=str(face_folder), backbone="mobilenet_v2",
                         warmup_epochs=1, epochs=2, **TINY)
    with pytest.raises(ValueError, match="needs pretrained weights"):
        train(config, verbose=0)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("cluster", "task", "expected"),
    [
        (None, None, True),  # default / mirrored: no cluster
        ({"chief": ["a:1"], "worker": ["b:1"]}, ("chief", 0), True),
        ({"chief": ["a:1"], "worker": ["b:1"]}, ("worker", 0), False),
        ({"worker": ["a:1", "b:1"]}, ("worker", 0), True),
        ({"worker": ["a:1", "b:1"]}, ("worker", 1), False),
    ],
)
def test_only_the_chief_writes_the_run_folder(cluster, task, expected) -> None:
    from types import SimpleNamespace

    import tensorflow as tf

    from agegender.training import is_chief

    if cluster is None:
        strategy = tf.distribute.get_strategy()
    else:
        resolver = SimpleNamespace(task_type=task[0], task_id=task[1],
                                   cluster_spec=lambda: tf.train.ClusterSpec(cluster))
        strategy = SimpleNamespace(cluster_resolver=resolver)
    assert is_chief(strategy) is expected


def test_cli_dropout_option_reaches_the_model_and_rejects_bad_rates(face_folder: Path, tmp_path: Path) -> None:
    from agegender.cli import build_parser, config_from_args

    def config(*flags: str):
        return config_from_args(build_parser().parse_args(["train", "--out", "o", *flags]))

    assert config().dropout is None
    assert config("--dropout", "0.25").dropout == 0.25
    assert config().monitor == "val_loss"
    assert config("--monitor", "val_age_mae").monitor == "val_age_mae"
    for bad, message in (("1", "dropout must be in"), ("-0.1", "dropout must be in"), ("half", "--dropout")):
        result = _cli("train", "--data-dir", str(face_folder), "--out", str(tmp_path / "r"), "--dropout", bad)
        assert result.returncode == 2
        assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()


def test_transfer_recipe_lets_batchnorm_learn_where_the_backbone_says_so(face_folder: Path,
                                                                         tmp_path: Path) -> None:
    """custom_cnn's BatchNorm learns (bn_inference False): fine-tuning its last block moves that
    block's BatchNorm too, and nothing before the block."""
    weights = _backbone_weights_file("custom_cnn", tmp_path)
    config = TrainConfig(out=str(tmp_path / "run"), data_dir=str(face_folder), weights=str(weights),
                         warmup_epochs=1, epochs=2, trainable_layers=3, lr=1e-2, **TINY)
    (_, _), (_, _), (_, tune_begin), (_, tune_end) = _train_with_backbone_snapshots(config)
    changed = {name for name in tune_begin if _moved(tune_begin, tune_end, name)}
    assert changed == {"block4_conv", "block4_bn"}


def test_transfer_recipe_resumes_in_either_phase_after_a_kill(face_folder: Path, tmp_path: Path) -> None:
    """Killed in the warm-up's last epoch and again in fine-tuning: each restart redoes only the
    killed epoch, in the right phase and at that phase's learning rate."""
    weights = _backbone_weights_file("custom_cnn", tmp_path)
    out, begun = tmp_path / "run", tmp_path / "begun.txt"
    options = {"weights": str(weights), "warmup_epochs": 2, "epochs": 4, "trainable_layers": 3,
               "lr": 1e-3, "lr_schedule": "plateau", **TINY}
    for kill_epoch, expected_rc in ((1, -9), (3, -9), (-1, 0)):
        result = _run_killable(out, face_folder, kill_epoch, begun, **options)
        assert result.returncode == expected_rc, result.stderr[-3000:]
    history = pd.read_csv(out / "history.csv")
    assert begun.read_text().split() == ["0", "1", "1", "2", "3", "3"], history.to_string()
    assert history["epoch"].tolist() == [0, 1, 2, 3]
    assert history["learning_rate"].tolist() == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 4


def test_cli_flip_tta_predicts_and_evaluates(trained_run: Path, face_folder: Path, tmp_path: Path) -> None:
    model = str(trained_run / "model.keras")
    good = sorted(face_folder.glob("*.jpg"))[:2]
    plain = json.loads(_cli("predict", "--detect", "none", "--model", model, "--json", *map(str, good)).stdout)
    result = _cli("predict", "--detect", "none", "--model", model, "--json", "--flip-tta", *map(str, good))
    assert result.returncode == 0, result.stderr[-3000:]
    tta = json.loads(result.stdout)
    assert [p["file"] for p in tta["predictions"]] == [p["file"] for p in plain["predictions"]]
    assert all(0.0 <= p["p_female"] <= 1.0 for p in tta["predictions"])
    result = _cli("evaluate", "--model", model, "--data-dir", str(face_folder), "--flip-tta",
                  "--out", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n"] > 0
    assert "flip_tta" in (tmp_path / "eval" / "report.md").read_text()


def test_cli_ensemble_averages_the_models(trained_run: Path, face_folder: Path, tmp_path: Path) -> None:
    """`--model A --model B`: each prediction is the mean of A's and B's (same input size, so
    no resizing inside); evaluate reports the pair; a missing second model is one clear line."""
    import keras

    from agegender_models import create_model, load_model, save_model

    trained = str(trained_run / "model.keras")
    keras.utils.set_random_seed(7)
    shape = load_model(trained).input_shape[1:]
    other_model = create_model("custom_cnn", input_shape=shape)
    age_dense = other_model.get_layer("age_dense")  # ages about 25 years above the trained model's
    kernel, bias = age_dense.get_weights()
    age_dense.set_weights([kernel, bias + 25.0])
    other = str(save_model(other_model, tmp_path / "other.keras"))
    images = [str(p) for p in sorted(face_folder.glob("*.jpg"))[:3]]
    runs = {}
    for name, models in (("a", [trained]), ("b", [other]), ("pair", [trained, other])):
        args = [arg for path in models for arg in ("--model", path)]
        result = _cli("predict", "--detect", "none", *args, "--json", *images)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[name] = json.loads(result.stdout)["predictions"]
    for a, b, pair in zip(runs["a"], runs["b"], runs["pair"], strict=True):
        assert abs(a["age"] - b["age"]) > 5  # two different models
        # the JSON rounds ages to 0.1 years and P(female) to 4 decimals
        assert pair["age"] == pytest.approx((a["age"] + b["age"]) / 2, abs=0.11)
        assert pair["p_female"] == pytest.approx((a["p_female"] + b["p_female"]) / 2, abs=2e-3)
    result = _cli("evaluate", "--model", trained, "--model", other, "--data-dir", str(face_folder),
                  "--out", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["models"] == [trained, other]
    assert f"{trained} + {other}" in (tmp_path / "eval" / "report.md").read_text()
    missing = _cli("evaluate", "--model", trained, "--model", str(tmp_path / "no.keras"),
                   "--data-dir", str(face_folder), "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "model file not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_ema_weights_are_validated_kept_and_restored_after_a_kill(face_folder: Path, tmp_path: Path) -> None:
    """With ema the checkpoints hold the averaged weights that were validated, and a
    resumed run goes on training the raw weights (the averages back in the optimizer)."""
    import keras

    from agegender_models import create_model

    out = tmp_path / "run"
    options = {"epochs": 3, "ema": 0.9, **TINY}
    killed = _run_killable(out, face_folder, 1, tmp_path / "begun.txt", **options)
    assert killed.returncode == -9, killed.stderr[-2000:]
    numpy = keras.ops.convert_to_numpy
    # epoch 0, the only one finished, is the best so far: its validated (averaged) weights
    saved = create_model("custom_cnn", input_shape=(32, 32, 3))
    saved.load_weights(out / "checkpoints" / "best.weights.h5")
    averaged = [numpy(w) for w in saved.trainable_weights]

    class Recorder(keras.callbacks.Callback):
        seen: list = []

        def on_epoch_begin(self, epoch, logs=None):
            if not self.seen:  # the first resumed epoch, after the callbacks of the run folder
                optimizer = self.model.optimizer
                self.seen.append(([numpy(w) for w in self.model.trainable_weights],
                                  [numpy(v) for v in optimizer._model_variables_moving_average]))

    metrics = train(TrainConfig(out=str(out), data_dir=str(face_folder), **options), verbose=0,
                    callbacks=[Recorder()])
    weights, moving = Recorder.seen[0]
    assert all(np.allclose(m, a) for m, a in zip(moving, averaged, strict=True))
    assert not all(np.allclose(w, a) for w, a in zip(weights, averaged, strict=True))
    # the kept model is the one validated at its best epoch: its figures are the logged ones
    history = pd.read_csv(out / "history.csv")
    best = history.loc[history["val_loss"].idxmin()]
    assert metrics["validation"]["age_mae"] == pytest.approx(best["val_age_mae"], rel=1e-3)
    assert metrics["validation"]["gender_accuracy"] == pytest.approx(best["val_gender_accuracy"], abs=1e-6)


def test_ema_warmup_stopped_early_hands_the_averages_to_fine_tuning(face_folder: Path,
                                                                      tmp_path: Path) -> None:
    """Keras copies the averages into the model at the end of fit only after the last epoch; a
    warm-up stopped earlier must still hand the averaged weights (the validated ones) on."""
    import keras

    numpy = keras.ops.convert_to_numpy
    weights = _backbone_weights_file("custom_cnn", tmp_path)

    class StopFirstEpoch(keras.callbacks.Callback):
        seen: dict = {}

        def on_epoch_begin(self, epoch, logs=None):
            self.seen.setdefault(f"begin {epoch}", [numpy(w) for w in self.model.weights])

        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:  # the averages are in the model here (put there by the run's callback)
                self.seen["validated 0"] = [numpy(w) for w in self.model.weights]
                self.model.stop_training = True

    config = TrainConfig(out=str(tmp_path / "run"), data_dir=str(face_folder), weights=str(weights),
                         warmup_epochs=2, epochs=3, trainable_layers=3, ema=0.9, **TINY)
    train(config, verbose=0, callbacks=[StopFirstEpoch()])
    seen = StopFirstEpoch.seen
    assert "begin 1" not in seen and "begin 2" in seen  # the warm-up stopped, fine-tuning began
    # fine-tuning started from the validated weights: the averages, not the raw weights
    for validated, started in zip(seen["validated 0"], seen["begin 2"], strict=True):
        np.testing.assert_allclose(started, validated, rtol=1e-6, atol=1e-7)


def test_ema_momentum_outside_zero_one_is_refused(face_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ema must be in"):
        train(TrainConfig(out=str(tmp_path / "run"), data_dir=str(face_folder), ema=1.0, **TINY))
    assert not (tmp_path / "run").exists()


def _weights(path: Path) -> list[np.ndarray]:
    import keras

    return [keras.ops.convert_to_numpy(w) for w in keras.models.load_model(path).weights]


def test_final_fit_trains_on_train_and_val_at_replayed_rates_and_resumes(face_folder: Path,
                                                                          tmp_path: Path) -> None:
    """fit_on="train+val": every epoch sees both splits' images, runs at the rate the earlier run
    logged for it (its last rate after), a kill resumes where it was, the last epoch is kept
    (averaged weights, before the head refit) and only the test split is reported."""
    import keras

    from agegender_models import create_model

    lr_history = tmp_path / "earlier_history.csv"
    pd.DataFrame({"epoch": [2, 0, 1], "learning_rate": [5e-4, 1e-2, 2e-3], "loss": [1, 3, 2]}).to_csv(
        lr_history, index=False)  # out of order on purpose: rates go by epoch
    out = tmp_path / "run"
    options = {"epochs": 4, "fit_on": "train+val", "lr_schedule": "replay", "lr_history": str(lr_history),
               "ema": 0.9, "head_refit_epochs": 1, "keep_checkpoints": True, **TINY}
    killed = _run_killable(out, face_folder, 1, tmp_path / "begun.txt", **options)
    assert killed.returncode == -9, killed.stderr[-2000:]

    class Seen(keras.callbacks.Callback):
        rates: dict = {}
        batches: dict = {}

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            self.rates[epoch] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

        def on_train_batch_end(self, batch, logs=None):
            self.batches[self.epoch] = batch + 1

    metrics = train(TrainConfig(out=str(out), data_dir=str(face_folder), **options), verbose=0,
                    callbacks=[Seen()])
    splits = {name: len(pd.read_csv(out / "splits" / f"{name}.csv")) for name in ("train", "val", "test")}
    fitted_on = json.loads((out / "config.json").read_text())["fit_on"]
    assert fitted_on == {"splits": "train+val", "images": splits["train"] + splits["val"]}
    assert Seen.rates == pytest.approx({1: 2e-3, 2: 5e-4, 3: 5e-4})  # resumed in epoch 1
    steps = -(-(splits["train"] + splits["val"]) // TINY["batch_size"])
    assert steps > -(-splits["train"] // TINY["batch_size"])  # the validation images add a batch
    assert set(Seen.batches.values()) == {steps}
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2, 3]
    assert history["learning_rate"].tolist() == pytest.approx([1e-2, 2e-3, 5e-4, 5e-4])
    assert metrics["epochs_run"] == 4 and metrics["best_epoch"] == 4
    assert "validation" not in metrics and metrics["test"]["n"] == splits["test"]
    assert set(metrics["before_head_refit"]) == {"test"}
    # the model kept before the head refit is the last epoch's (its averaged weights)
    last = create_model("custom_cnn", input_shape=(32, 32, 3))
    last.load_weights(out / "checkpoints" / "final-fit.weights.h5")
    for kept, final in zip(_weights(out / "checkpoints" / "trained.keras"), last.weights, strict=True):
        np.testing.assert_array_equal(kept, keras.ops.convert_to_numpy(final))


def test_final_fit_and_replay_refuse_what_they_cannot_do(face_folder: Path, tmp_path: Path) -> None:
    from agegender.cli import build_parser, config_from_args

    base = {"out": str(tmp_path / "run"), "data_dir": str(face_folder)}
    good = tmp_path / "history.csv"
    good.write_text("epoch,learning_rate\n0,0.001\n")
    no_rates = tmp_path / "no_rates.csv"
    no_rates.write_text("epoch,loss\n0,1.0\n")
    bad_rate = tmp_path / "bad_rate.csv"
    bad_rate.write_text("epoch,learning_rate\n0,fast\n")
    cases = [
        ({"fit_on": "train+val", "lr_schedule": "plateau"}, ValueError, "leaves no validation split"),
        ({"fit_on": "val"}, ValueError, "fit_on must be one of"),
        ({"lr_schedule": "replay"}, ValueError, "go together"),
        ({"lr_history": str(good)}, ValueError, "go together"),
        ({"lr_schedule": "replay", "lr_history": str(tmp_path / "none.csv")}, FileNotFoundError, "none.csv"),
        ({"lr_schedule": "replay", "lr_history": str(no_rates)}, ValueError, "no_rates.csv: needs"),
        ({"lr_schedule": "replay", "lr_history": str(bad_rate)}, ValueError, "bad_rate.csv: needs"),
    ]
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            train(TrainConfig(**base, **options), verbose=0)
    assert not (tmp_path / "run").exists()  # refused before anything was written

    args = build_parser().parse_args(["train", "--out", "o", "--fit-on", "train+val",
                                      "--lr-schedule", "replay", "--lr-history", str(good)])
    config = config_from_args(args)
    assert (config.fit_on, config.lr_schedule, config.lr_history) == ("train+val", "replay", str(good))
    result = _cli("train", "--data-dir", str(face_folder), "--out", str(tmp_path / "cli"),
                  "--fit-on", "train+val", "--lr-schedule", "plateau")
    assert result.returncode == 2 and "leaves no validation split" in result.stderr
    assert result.stderr.count("\n") == 1


def test_child_gender_weight_weighs_children_against_the_others(face_folder: Path, tmp_path: Path) -> None:
    """--child-gender-weight W: in the training batches a child's gender loss weighs W times
    another's, the weights' mean over the training images is 1, age is unweighted; the
    validation batches carry no weights; a run trains with them."""
    import utkface_data
    from agegender.data import batches

    frame = utkface_data.index_folder(face_folder, progress=False).frame
    config = TrainConfig(out=str(tmp_path / "w"), data_dir=str(face_folder), child_gender_weight=3.0, **TINY)
    ages, weights = [], []
    for _, targets, sample_weights in batches(frame, face_folder, config, training=True, augment=False):
        ages.append(targets["age"].numpy())
        weights.append(sample_weights["gender"].numpy())
        assert (sample_weights["age"].numpy() == 1).all()
    ages, weights = np.concatenate(ages), np.concatenate(weights)
    children = ages < 10
    assert 0 < children.sum() < len(ages)  # the folder has both
    assert np.allclose(weights[children], 3 * weights[~children][0])
    assert weights.mean() == pytest.approx(1.0, abs=1e-5)
    assert len(next(iter(batches(frame, face_folder, config, training=False)))) == 2
    metrics = train(dataclasses.replace(config, epochs=1), verbose=0)
    assert np.isfinite(metrics["test"]["gender_accuracy"])
    assert json.loads((tmp_path / "w" / "config.json").read_text())["config"]["child_gender_weight"] == 3.0
