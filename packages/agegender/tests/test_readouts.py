"""`agegender fit-readouts`: read-outs of dlib's face descriptor fitted and blended into a model."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agegender.cli import main as cli_main
from agegender.readouts import MIN_IMAGES, ReadoutError, age_readout, fit_readouts, gender_blend
from agegender_models import create_model, load_model, save_model


def test_fit_readouts_recovers_a_linear_signal_on_raw_features() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(5.0, [1.0, 3.0, 0.5, 2.0], (400, 4))  # offsets and scales differ
    gender = (features[:, 0] - 5.0 + 0.3 * rng.normal(size=400) > 0).astype(int)
    age = 30 + 4 * (features[:, 1] - 5.0) + rng.normal(0, 0.5, 400)
    out = fit_readouts(features, gender, age, gender_c=10.0, age_hidden=0, age_alpha=0.1)
    coef, intercept = out["gender"]
    accuracy = ((features @ coef + intercept > 0) == gender).mean()
    assert accuracy > 0.9 and abs(coef[0]) > 5 * abs(coef[2])
    ((kernel, bias),) = out["age"]  # age_hidden=0: one linear layer
    assert np.abs(features @ kernel.ravel() + bias[0] - age).mean() < 0.6
    assert kernel[1, 0] == pytest.approx(4.0, rel=0.05)


def test_the_mlp_age_readout_works_on_raw_features_and_beats_a_line_on_a_curve() -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(50.0, [10.0, 0.1, 3.0], (1500, 3))  # far from standardised
    age = 20 + 3 * np.abs(features[:, 0] - 50.0) + rng.normal(0, 1, 1500)
    gender = (rng.random(1500) > 0.5).astype(int)
    mlp = fit_readouts(features, gender, age, age_hidden=32, age_alpha=0.01)["age"]
    line = fit_readouts(features, gender, age, age_hidden=0, age_alpha=0.01)["age"]
    assert [k.shape for k, _ in mlp] == [(3, 32), (32, 1)]
    mlp_mae = np.abs(age_readout(mlp, features) - age).mean()
    line_mae = np.abs(age_readout(line, features) - age).mean()
    assert mlp_mae < 0.5 * line_mae and mlp_mae < 4


def test_gender_blend_trusts_the_descriptor_as_the_predicted_age_grows() -> None:
    p_model, p_descriptor = np.array([0.2, 0.2, 0.2, 0.9]), np.array([0.8, 0.8, 0.8, 0.1])
    ages = np.array([-40.0, 14.0, 80.0, 20.0])  # far below the gate, at it, far above; one step past
    got = gender_blend(p_model, p_descriptor, ages, gate_age=14, gate_width=6)
    np.testing.assert_allclose(got[:3], [0.2, 0.5, 0.8], atol=1e-3)
    trust = 1 / (1 + np.exp(-1.0))  # (20 - 14) / 6
    assert got[3] == pytest.approx(0.9 + trust * (0.1 - 0.9))
    # the defaults are fit-readouts' own gate: half the weight at 10 years
    assert gender_blend([0.0], [1.0], [10.0])[0] == pytest.approx(0.5)


def test_fit_readouts_needs_both_genders_and_enough_images() -> None:
    with pytest.raises(ReadoutError, match=r"at least 2 images each. Received counts \[25, 0\]"):
        fit_readouts(np.zeros((25, 3)), np.zeros(25), np.arange(25.0))
    with pytest.raises(ReadoutError, match=f"at least {MIN_IMAGES} images to fit on. Received: 9"):
        fit_readouts(np.zeros((9, 3)), np.arange(9) % 2, np.arange(9.0))


def _data(folder: Path, n: int = 36) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    images, splits = folder / "faces", folder / "splits"
    images.mkdir(parents=True)
    splits.mkdir()
    rows = []
    for i in range(n):
        age, gender, race = int(rng.integers(1, 80)), i % 2, int(rng.integers(0, 5))
        name = f"{age}_{gender}_{race}_2017011{i:010d}.jpg.chip.jpg"
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(images / name)
        rows.append({"path": name, "age": age, "gender": gender, "race": race,
                     "datetime": f"2017011{i:010d}"})
    for split, part in (("train", rows[:20]), ("val", rows[20:28]), ("test", rows[28:])):
        with (splits / f"{split}.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(part)
    return images, splits


@pytest.fixture(scope="module")
def base_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = create_model("custom_cnn", input_shape=(32, 32, 3))
    return save_model(model, tmp_path_factory.mktemp("base") / "base.keras", include_optimizer=False)


def test_cli_fits_blends_and_evaluates(base_model_file: Path, fake_face_api: Path, tmp_path: Path,
                                       capsys) -> None:
    images, splits = _data(tmp_path)
    out = tmp_path / "run"
    status = cli_main(["fit-readouts", "--model", str(base_model_file), "--face-api",
                       str(fake_face_api), "--data-dir", str(images), "--splits", str(splits),
                       "--fit-on", "train+val", "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    assert "test: gender accuracy" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["images"] == 28 and config["fit_on"] == "train+val" and config["gate_age"] == 10.0
    assert config["age_hidden"] == 256 and config["age_weight"] == 0.4
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 8 and (out / "report" / "predictions.csv").is_file()
    # the blended model: the base's input and outputs, both networks inside
    model = load_model(out / "model.keras")
    assert tuple(model.inputs[0].shape[1:]) == (32, 32, 3)
    assert {layer.name for layer in model.layers} >= {"face_descriptor", "descriptor_gender"}
    chip = next(images.iterdir())
    assert cli_main(["predict", "--model", str(out / "model.keras"), "--detect", "none",
                     "--json", str(chip)]) == 0
    row = json.loads(capsys.readouterr().out)["predictions"][0]
    assert 0 <= row["p_female"] <= 1 and 0 <= row["age"] <= 120


def test_cli_blends_an_ensemble_with_int8_kernels(base_model_file: Path, fake_face_api: Path,
                                                  tmp_path: Path, capsys) -> None:
    images, splits = _data(tmp_path)
    out = tmp_path / "run"
    status = cli_main(["fit-readouts", "--model", str(base_model_file), "--model",
                       str(base_model_file), "--int8-kernels", "--fold-batchnorm",
                       "--face-api", str(fake_face_api),
                       "--data-dir", str(images), "--splits", str(splits), "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == f"{base_model_file} + {base_model_file}" and config["int8_kernels"]
    assert config["fold_batchnorm"]
    model = load_model(out / "model.keras")
    names = {la.name: type(la).__name__ for la in model._flatten_layers(recursive=True)}
    assert {"member0", "member1"} <= set(names)  # the ensemble of the two, inside the blend
    assert "QuantizedDense" in names.values()
    assert names["descriptor_gender"] == names["descriptor_age"] == "Dense"  # read-outs: float32
    with zipfile.ZipFile(out / "model.keras") as archive:  # written deflated
        assert {m.compress_type for m in archive.infolist()} == {zipfile.ZIP_DEFLATED}


def test_cli_folds_batchnorm_into_a_mobilenets_convolutions(fake_face_api: Path, tmp_path: Path,
                                                            capsys) -> None:
    images, splits = _data(tmp_path)
    base = save_model(create_model("mobilenet_v2", input_shape=(32, 32, 3), weights=None),
                      tmp_path / "mnv2.keras", include_optimizer=False)
    out = tmp_path / "run"
    status = cli_main(["fit-readouts", "--model", str(base), "--fold-batchnorm", "--face-api",
                       str(fake_face_api), "--data-dir", str(images), "--splits", str(splits),
                       "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["fold_batchnorm"]
    before = [type(la).__name__ for la in load_model(base)._flatten_layers(recursive=True)]
    after = [type(la).__name__ for la in load_model(out / "model.keras")._flatten_layers(recursive=True)]
    assert before.count("BatchNormalization") > 40 and after.count("BatchNormalization") == 0


@pytest.mark.parametrize("case,message", [
    ("no face-api folder", "--face-api: folder not found"),
    ("out is a file", "exists and is not a folder"),
    ("bad gate width", "--gate-width must be > 0. Received: 0.0"),
    ("bad age weight", "--age-weight must be in [0, 1]. Received: 1.5"),
    ("too few images", "the read-outs need at least 20 images to fit on. Received: 5"),
    ("empty face-api folder", "face_recognition_model-weights_manifest.json: not found; place"),
    ("no train split", "split file not found: "),
    ("missing model", "model file not found: nope.keras"),
])
def test_cli_bad_input_is_one_line(case: str, message: str, base_model_file: Path,
                                   fake_face_api: Path, tmp_path: Path, capsys) -> None:
    images, splits = _data(tmp_path, n=6)
    face_api, model, extra = fake_face_api, str(base_model_file), []
    out = tmp_path / "run"
    if case == "out is a file":
        out.write_text("not a folder")
    elif case == "bad gate width":
        extra = ["--gate-width", "0"]
    elif case == "bad age weight":
        extra = ["--age-weight", "1.5"]
    elif case == "too few images":
        images, splits = _data(tmp_path / "more")
        train = splits / "train.csv"
        train.write_text("".join(train.read_text().splitlines(keepends=True)[:6]))  # 5 rows
        extra = ["--fit-on", "train"]
    elif case == "no face-api folder":
        face_api = tmp_path / "nowhere"
    elif case == "empty face-api folder":
        face_api = tmp_path / "empty"
        face_api.mkdir()
    elif case == "no train split":
        (splits / "train.csv").unlink()
    else:
        model = "nope.keras"
    status = cli_main(["fit-readouts", "--model", model, "--face-api", str(face_api), "--data-dir",
                       str(images), "--splits", str(splits), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert status == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run" / "model.keras").exists()


def test_a_blended_model_is_not_blended_again(base_model_file: Path, fake_face_api: Path,
                                              tmp_path: Path, capsys) -> None:
    images, splits = _data(tmp_path)
    args = ["fit-readouts", "--face-api", str(fake_face_api), "--data-dir", str(images),
            "--splits", str(splits)]
    assert cli_main([*args, "--model", str(base_model_file), "--out", str(tmp_path / "a")]) == 0
    capsys.readouterr()
    again = tmp_path / "a" / "model.keras"
    assert cli_main([*args, "--model", str(again), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "already holds dlib's face descriptor" in err and err.count("\n") == 1
