"""`--runtime`, `export --quantize` checked on the run's real faces, `agegender cache`, and the
measured precision in a training run's log."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from agegender import cli
from agegender_models import create_model, save_model
from agegender_models import export as export_module
from agegender_models import precision as precision_module
from agegender_models import runtime as runtime_module

PX = 40


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``agegender ARGS`` in this process (another would start TensorFlow again)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(args))
        except SystemExit as exit_:  # argparse refusing an option
            code = exit_.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _faces(folder: Path, n: int, *, seed: int) -> list[dict]:
    """``n`` generated images with UTKFace names (bluer for female); the split rows."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        age, gender = int(rng.integers(1, 80)), i % 2
        pixels = rng.integers(0, 120, (PX, PX, 3))
        pixels[..., 2] += 100 * gender
        name = f"{age}_{gender}_0_2017{seed:02d}{i:08d}.jpg.chip.jpg"
        Image.fromarray(pixels.astype("uint8")).save(folder / name, quality=95)
        rows.append({"path": name, "age": age, "gender": gender, "race": 0})
    return rows


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A run folder as `agegender train` leaves it, with a model trained in mixed bfloat16."""
    import pandas as pd

    base = tmp_path_factory.mktemp("fast")
    data = base / "faces"
    run = base / "run"
    (run / "splits").mkdir(parents=True)
    for split, n, seed in (("train", 24, 1), ("test", 16, 2)):
        pd.DataFrame(_faces(data, n, seed=seed)).to_csv(run / "splits" / f"{split}.csv", index=False)
    (run / "config.json").write_text(json.dumps({"data_root": str(data), "precision": "mixed_bfloat16"}))
    keras.utils.set_random_seed(0)
    model = create_model("custom_cnn", input_shape=(32, 32, 3), precision="mixed_bfloat16")
    save_model(model, run / "model.keras")
    return run


def test_flags_match_the_library_and_are_documented() -> None:
    from agegender_models.export import QUANTIZATIONS

    assert cli.RUNTIMES == runtime_module.RUNTIMES
    assert cli.QUANTIZATIONS == QUANTIZATIONS
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert "--runtime {auto,keras,tflite,onnx}" in commands["predict"].format_help()
    export_help = commands["export"].format_help()
    for flag in ("--quantize {none,float16,int8}", "--check-data DIR", "--check-split CSV",
                 "--calibration-split CSV"):
        assert flag in export_help
    assert "--clear" in commands["cache"].format_help()


def test_predict_runtime_flag(run_folder: Path) -> None:
    image = str(sorted((run_folder.parent / "faces").iterdir())[0])
    model = str(run_folder / "model.keras")
    chips = ("--detect", "none")  # generated images: no face to find
    keras_run = _cli("predict", "--model", model, *chips, "--runtime", "keras", "--json", image)
    tflite_run = _cli("predict", "--model", model, *chips, "--runtime", "tflite", "--json", image)
    assert keras_run.returncode == tflite_run.returncode == 0, tflite_run.stderr
    assert "agegender: runtime: keras (asked)" in keras_run.stderr
    assert "agegender: runtime: tflite (asked)" in tflite_run.stderr
    [want] = json.loads(keras_run.stdout)["predictions"]
    [got] = json.loads(tflite_run.stdout)["predictions"]
    assert got["age"] == pytest.approx(want["age"], abs=0.5)  # the bf16 model vs its float32 copy
    bad = _cli("predict", "--model", model, *chips, "--runtime", "cuda", image)
    assert bad.returncode == 2 and "invalid choice: 'cuda'" in bad.stderr


def test_the_runtimes_native_notice_is_dropped_and_everything_else_kept(capfd) -> None:
    import os

    from agegender._tf import NATIVE_NOISE, native_noise_dropped

    def write() -> None:  # as C++ writes: to file descriptor 2, past sys.stderr
        os.write(2, f"{NATIVE_NOISE[0]}\nkept: a real warning\n".encode())

    with native_noise_dropped():
        write()
    err = capfd.readouterr().err
    assert "kept: a real warning" in err and "XNNPACK" not in err
    with native_noise_dropped(verbose=True):
        write()
    assert "XNNPACK" in capfd.readouterr().err
    with pytest.raises(RuntimeError), native_noise_dropped():  # a failure shows everything
        write()
        raise RuntimeError("boom")
    assert "XNNPACK" in capfd.readouterr().err


def test_predict_auto_uses_the_run_folder_faces(run_folder: Path, monkeypatch) -> None:
    """`predict` with "auto" gives it the run's test faces to check on and training faces to
    calibrate int8 on, read only if there is something to measure."""
    seen = {}

    def auto(model, *, check, calibration, threads, cache, source, source_digest):
        seen.update(check=check(), calibration=calibration(), source=source, digest=source_digest)
        return runtime_module.keras_runner(model)

    monkeypatch.setattr(runtime_module, "_auto", auto)
    monkeypatch.delenv("AGEGENDER_RUNTIME")
    image = next((run_folder.parent / "faces").iterdir())
    result = _cli("predict", "--model", str(run_folder / "model.keras"), "--detect", "none", str(image))
    assert result.returncode == 0, result.stderr
    assert seen["check"].images.shape == (16, 32, 32, 3)
    assert seen["check"].description == f"16 real faces of {run_folder / 'splits' / 'test.csv'}"
    assert sorted(seen["check"].labels["gender"]) == [0.0] * 8 + [1.0] * 8
    assert seen["calibration"].shape == (24, 32, 32, 3)
    # its verdict filed under the file, as hashed before it was loaded
    assert seen["source"] == str(run_folder / "model.keras")
    assert seen["digest"] == runtime_module.file_digest(run_folder / "model.keras")


NO_TENSORFLOW = ("import sys; sys.modules['tensorflow'] = sys.modules['keras'] = None; "
                 "from agegender.cli import main; sys.exit(main(sys.argv[1:]))")


def test_predict_starts_from_a_cached_runtime_without_tensorflow(tmp_path, monkeypatch) -> None:
    """A model file run on "auto" before: the next `predict` imports neither TensorFlow nor
    Keras, and answers as the first did."""
    import sys

    monkeypatch.setenv("AGEGENDER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("AGEGENDER_RUNTIME")
    monkeypatch.setattr(runtime_module, "onnx_available", lambda: False)  # one conversion: TFLite
    keras.utils.set_random_seed(3)
    model = tmp_path / "model.keras"  # outside a run folder, as the shipped models are
    save_model(create_model("custom_cnn", input_shape=(PX, PX, 3)), model)
    rows = _faces(tmp_path / "faces", 2, seed=9)
    images = [str(tmp_path / "faces" / row["path"]) for row in rows]
    args = ["predict", "--model", str(model), "--detect", "none", "--json", *images]
    first = _cli(*args)
    assert first.returncode == 0, first.stderr
    assert "runtime: tflite (auto" in first.stderr
    again = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, *args], capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "runtime: tflite (auto" in again.stderr and "measured 20" in again.stderr
    want, got = json.loads(first.stdout)["predictions"], json.loads(again.stdout)["predictions"]
    assert [r["file"] for r in got] == images
    assert [r["age"] for r in got] == pytest.approx([r["age"] for r in want], rel=1e-6)
    # TFLite asked for by name runs "auto"'s conversion, also without TensorFlow
    forced = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, *args, "--runtime", "tflite"],
                            capture_output=True, text=True, timeout=300)
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert "runtime: tflite (asked)" in forced.stderr
    got = json.loads(forced.stdout)["predictions"]
    assert [r["age"] for r in got] == pytest.approx([r["age"] for r in want], rel=1e-6)
    # flip TTA (a model made from the file), Keras asked for and MTCNN (TensorFlow's) load the
    # model as before
    for extra in (["--flip-tta"], ["--runtime", "keras"], ["--detect", "mtcnn"]):
        loaded = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, *args, *extra],
                                capture_output=True, text=True, timeout=300)
        assert loaded.returncode != 0 and "import of keras halted" in loaded.stderr, extra


def test_export_a_mixed_bfloat16_run_checked_on_its_test_faces(run_folder: Path, tmp_path) -> None:
    """The issue's failure: a model trained in mixed bfloat16 did not export to TFLite."""
    out = tmp_path / "m.tflite"
    result = _cli("export", "--model", str(run_folder / "model.keras"), "--format", "tflite",
                  "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 0
    assert (f"parity with the Keras model on 16 real faces of {run_folder / 'splits' / 'test.csv'}: "
            "gender accuracy") in result.stdout


def test_export_that_misses_parity_fails_in_one_line(run_folder: Path, tmp_path, monkeypatch) -> None:
    keras.utils.set_random_seed(7)
    other = create_model("custom_cnn", input_shape=(32, 32, 3), age_bias=90.0)
    real = export_module._tflite_bytes
    monkeypatch.setattr(export_module, "_tflite_bytes", lambda model, *a: real(other, *a))
    out = tmp_path / "m.tflite"
    result = _cli("export", "--model", str(run_folder / "model.keras"), "--format", "tflite",
                  "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.startswith("agegender: error: the tflite export fails the parity check "
                                    "on 16 real faces of")
    assert "years, allowed ±0.15)" in result.stderr
    assert result.stderr.count("\n") == 1 and not out.exists()


def test_export_converter_failure_and_bad_options_are_one_line(run_folder: Path, tmp_path,
                                                               monkeypatch) -> None:
    import tensorflow as tf

    model = str(run_folder / "model.keras")
    missing = _cli("export", "--model", model, "--format", "tflite", "--check-split",
                   str(tmp_path / "no.csv"), "--out", str(tmp_path / "m.tflite"))
    assert missing.returncode == 2 and "--check-split file not found" in missing.stderr
    quantized_savedmodel = _cli("export", "--model", model, "--quantize", "int8", "--out",
                                str(tmp_path / "sm"))
    assert quantized_savedmodel.returncode == 2
    assert "a SavedModel is float32" in quantized_savedmodel.stderr

    class Broken:
        optimizations, target_spec, representative_dataset = [], tf.lite.TargetSpec(), None

        def convert(self):
            raise RuntimeError("line one of many\n" * 500)

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", lambda *a, **k: Broken())
    broken = _cli("export", "--model", model, "--format", "tflite", "--out", str(tmp_path / "m.tflite"))
    assert broken.returncode == 2
    assert broken.stderr == "agegender: error: tflite conversion failed: line one of many\n"


def test_cache_command_shows_and_clears(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("AGEGENDER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(precision_module, "mixed_candidate", lambda: "mixed_bfloat16")
    monkeypatch.setattr(precision_module, "measure_step_times",
                        lambda policies, **w: {"float32": 0.3, "mixed_bfloat16": 0.6})
    empty = _cli("cache")
    assert empty.returncode == 0 and f"cache folder: {tmp_path / 'cache'}" in empty.stdout
    assert "precision 'auto' verdicts: none" in empty.stdout
    precision_module.choose_precision("auto", backbone="custom_cnn", image_size=64)
    shown = _cli("cache")
    assert "custom_cnn 64px batch 32: float32 (float32 300 ms, mixed_bfloat16 600 ms;" in shown.stdout
    cleared = _cli("cache", "--clear")
    assert cleared.returncode == 0 and "1 precision and 0 runtime verdicts" in cleared.stdout
    assert "precision 'auto' verdicts: none" in _cli("cache").stdout


class _Stop(Exception):
    """Raised where a run would start reading its data: the precision steps are done by then."""


@pytest.fixture()
def run_until_data(tmp_path, monkeypatch):
    """``run(config)``: a training run up to its data step, with stubbed step timings (float32
    80 ms, bf16 50 ms) on a machine offering bf16; returns the log lines; ``measured`` lists
    the workloads timed."""
    from agegender import training

    monkeypatch.setenv("AGEGENDER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(precision_module, "mixed_candidate", lambda: "mixed_bfloat16")
    measured: list[dict] = []

    def stub(policies, **workload):
        measured.append(workload)
        return {"float32": 0.080, "mixed_bfloat16": 0.050}

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(precision_module, "measure_step_times", stub)
    monkeypatch.setattr(training, "prepare_splits", stop)

    def run(config, caplog) -> list[str]:
        caplog.clear()
        logger = logging.getLogger("agegender")  # the command's logger may not propagate (cli.setup)
        logger.addHandler(caplog.handler)
        try:
            with caplog.at_level(logging.INFO, logger="agegender"), pytest.raises(_Stop):
                training.train(config, verbose=0)
        finally:
            logger.removeHandler(caplog.handler)
        return [r.getMessage() for r in caplog.records]

    return run, measured


def test_training_logs_the_measured_precision(run_until_data, tmp_path, caplog) -> None:
    from agegender.config import TrainConfig

    run, measured = run_until_data
    config = TrainConfig(out=str(tmp_path / "run"), data_dir=str(tmp_path), image_size=48,
                         batch_size=8)
    lines = run(config, caplog)
    assert measured == [{"backbone": "custom_cnn", "image_size": 48, "batch_size": 8,
                         "mode": "train", "steps": 3}]
    assert ("precision: mixed_bfloat16 (asked: auto; 3 training steps of custom_cnn at 48 px, "
            "batch 8: float32 80 ms, mixed_bfloat16 50 ms per step; the faster kept; measured now, "
            f"cached in {tmp_path / 'cache' / 'precision.json'})") in lines
    from agegender_models.precision import get_precision

    assert get_precision() == "mixed_bfloat16"
    keras.mixed_precision.set_global_policy("float32")
    # a second run on this machine: the cached verdict, nothing measured
    lines = run(TrainConfig(**{**config.to_dict(), "out": str(tmp_path / "run2")}), caplog)
    assert len(measured) == 1 and any("measured 20" in line for line in lines)
    keras.mixed_precision.set_global_policy("float32")


def test_a_resumed_auto_run_keeps_its_precision(run_until_data, tmp_path, caplog) -> None:
    """A run started in float32 is resumed in float32, even where "auto" now says bf16."""
    from agegender.config import TrainConfig

    run, measured = run_until_data
    config = TrainConfig(out=str(tmp_path / "run"), data_dir=str(tmp_path), image_size=48)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps(
        {"config": config.to_dict(), "precision_resolved": "float32"}))
    lines = run(config, caplog)
    assert measured == []
    assert "precision: float32 (asked: auto; the run's own, chosen when it started)" in lines
