"""`agegender predict-batch` on Ray Data's local runner: a few hundred generated chips, a corrupt
file and a fake detector, against what `agegender predict --json` says for the same images.

One Ray session serves the module (its start-up is most of the cost); each job starts its own
workers (Ray actors), which load the model once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agegender.cli import main

ray = pytest.importorskip("ray", reason="the batch extra (Ray Data) is not installed")


@pytest.fixture(scope="module")
def ray_session(width_detector):
    from ray import cloudpickle  # the pickler Ray sends the workers' arguments with

    # the fake detector goes to the workers by value: they cannot import the tests' conftest
    cloudpickle.register_pickle_by_value(sys.modules[width_detector.__module__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(sys.modules[width_detector.__module__])


@pytest.fixture(scope="module")
def chips(tmp_path_factory: pytest.TempPathFactory, make_faces) -> Path:
    """300 generated chips in two sub-folders, two corrupt images and a text file."""
    root = tmp_path_factory.mktemp("batch")
    make_faces(root / "chips" / "a", n=150, seed=1)
    make_faces(root / "chips" / "b", n=150, seed=2)
    (root / "chips" / "b" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "chips" / "truncated.png").write_bytes(b"\x89PNG\r\n")
    (root / "chips" / "notes.txt").write_text("not an image\n")
    return root / "chips"


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_batch_writes_the_rows_of_predict_json_and_lists_bad_images(
        ray_session, model_path: Path, chips: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("AGEGENDER_RUNTIME", "keras")  # predict's runner: the one the workers use
    out = tmp_path / "out"
    code = main(["predict-batch", str(chips), "--model", str(model_path), "--out", str(out),
                 "--detect", "none", "--workers", "2", "--batch-size", "16"])
    printed = capsys.readouterr()
    assert code == 1, printed.err  # two inputs gave no result: not a full success
    assert "302 inputs: 300 predictions" in printed.out
    rows, errors = _jsonl(out / "predictions.jsonl"), _jsonl(out / "errors.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["inputs"], summary["predictions"], summary["errors"]) == (302, 300, 2)
    assert 1 <= summary["workers"] <= 2  # each worker loaded the model once, in its own process

    # what `agegender predict --json` gives for the same files, in the same order
    files = sorted(str(p) for p in chips.rglob("*") if p.suffix in {".jpg", ".png"})
    assert main(["predict", "--model", str(model_path), "--detect", "none", "--json", *files]) == 1
    expected = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in rows] == [r["file"] for r in expected["predictions"]]
    assert all(set(r) == {"file", "age", "gender", "p_female"} for r in rows)
    got, want = np.array([[r["age"], r["p_female"]] for r in rows]), np.array(
        [[r["age"], r["p_female"]] for r in expected["predictions"]])
    # batches are cut differently (Ray's blocks): the same up to float rounding
    np.testing.assert_allclose(got, want, atol=0.11)
    # p_female is rounded to 4 decimals in the rows: one at 0.5 may have been just above it
    assert all(r["gender"] == ("female" if r["p_female"] > 0.5 else "male") or abs(r["p_female"] - 0.5) < 1e-4
               for r in rows)
    assert errors == expected["errors"]
    assert {Path(e["file"]).name for e in errors} == {"corrupt.jpg", "truncated.png"}


def test_predict_batch_with_a_detector_gives_one_row_per_face(ray_session, model_path: Path,
                                                              width_detector,
                                                              tmp_path: Path) -> None:
    from agegender.batch import list_inputs, predict_batch

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    widths = {"two": 300, "one": 250, "none": 200}
    for i in range(12):
        kind = list(widths)[i % 3]
        Image.fromarray(rng.integers(0, 256, (180, widths[kind], 3), dtype=np.uint8)).save(
            photos / f"{i:02d}_{kind}.jpg")
    summary = predict_batch(list_inputs(str(photos / "*.jpg")), tmp_path / "out",
                            models=[model_path], detect=width_detector(), workers=1)
    rows, errors = _jsonl(tmp_path / "out" / "predictions.jsonl"), _jsonl(tmp_path / "out" / "errors.jsonl")
    assert (summary["predictions"], summary["errors"]) == (12, 4)  # 4 x 2 faces + 4 x 1
    assert [(Path(r["file"]).name, r["face"]) for r in rows[:3]] == [
        ("00_two.jpg", 0), ("00_two.jpg", 1), ("01_one.jpg", 0)]
    assert rows[0]["box"] == [10, 20, 60, 60] and rows[0]["confidence"] == pytest.approx(0.99)
    assert all(set(r) == {"file", "face", "box", "confidence", "age", "gender", "p_female"}
               for r in rows)
    assert {e["reason"] for e in errors} == {"no face found"}
    assert sorted(Path(e["file"]).name for e in errors) == ["02_none.jpg", "05_none.jpg",
                                                           "08_none.jpg", "11_none.jpg"]
