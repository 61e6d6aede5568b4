"""``agegender predict --detect``: whole photos in, one result per face out (the JSON contract).

The CLI runs in-process with a tiny untrained model; the named detector is replaced by a fake one
(faces decided by the photo's width) so the paths are deterministic without real faces.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agegender.cli import main
from agegender_models import detect as det


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h), mode in [
        ("a_two.jpg", (300, 200), "RGB"),
        ("b_gray.png", (250, 180), "L"),
        ("c_none.jpg", (200, 200), "RGB"),
        ("d_rgba.png", (250, 180), "RGBA"),
    ]:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode).save(
            folder / name
        )
    (folder / "e_corrupt.jpg").write_bytes((folder / "a_two.jpg").read_bytes()[:120])
    return folder


def test_predict_detect_json_one_row_per_face(
    monkeypatch, capsys, model_path, photos, width_detector
) -> None:
    monkeypatch.setitem(det._CLASSES, "mtcnn", width_detector)
    code = main(["predict", "--model", str(model_path), "--detect", "mtcnn", "--json", str(photos)])
    payload = json.loads(capsys.readouterr().out)
    assert code == 1  # a photo without a face and a corrupt one: some inputs failed
    assert set(payload) == {"predictions", "errors"}
    rows = payload["predictions"]
    assert [(Path(r["file"]).name, r["face"], r["box"]) for r in rows] == [
        ("a_two.jpg", 0, [10, 20, 60, 60]),
        ("a_two.jpg", 1, [150, 30, 80, 80]),
        ("b_gray.png", 0, [40, 40, 100, 100]),
        ("d_rgba.png", 0, [40, 40, 100, 100]),
    ]
    for r in rows:
        assert r["gender"] in {"male", "female"} and 0.0 <= r["p_female"] <= 1.0
    errors = {Path(e["file"]).name: e["reason"] for e in payload["errors"]}
    assert set(errors) == {"c_none.jpg", "e_corrupt.jpg"}
    assert errors["c_none.jpg"] == "no face found"
    assert "Traceback" not in errors["e_corrupt.jpg"]


def test_predict_detect_csv_and_table_show_the_box(
    monkeypatch, capsys, model_path, photos, width_detector
) -> None:
    monkeypatch.setitem(det._CLASSES, "haar", width_detector)
    two = str(photos / "a_two.jpg")
    assert main(["predict", "--model", str(model_path), "--detect", "haar", "--csv", two]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "file,face,box,confidence,age,gender,p_female,error"
    assert lines[2].startswith(f"{two},1,150 30 80 80,0.98,")
    assert main(["predict", "--model", str(model_path), "--detect", "haar", two]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "box (x y w h)" in table[0] and "150 30 80 80" in table[2]


def test_predict_detect_no_face_anywhere_exits_1_with_the_reasons(
    monkeypatch, capsys, model_path, photos, width_detector
) -> None:
    monkeypatch.setitem(det._CLASSES, "mtcnn", width_detector)
    code = main(
        [
            "predict",
            "--model",
            str(model_path),
            "--detect",
            "mtcnn",
            "--json",
            str(photos / "c_none.jpg"),
        ]
    )
    assert code == 1
    assert json.loads(capsys.readouterr().out) == {
        "predictions": [],
        "errors": [{"file": str(photos / "c_none.jpg"), "reason": "no face found"}],
    }


def test_predict_detect_without_the_extra_is_one_clear_line(
    monkeypatch, capsys, model_path, photos
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "mtcnn", None)
    code = main(["predict", "--model", str(model_path), "--detect", "mtcnn", str(photos)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "pip install 'agegender-models[detect]'" in err and "'./packages/agegender-models[detect]'" in err


def test_predict_detect_haar_for_real_on_faceless_photos(capsys, model_path, tmp_path) -> None:
    pytest.importorskip("cv2")
    smooth = np.linspace(0, 255, 320 * 240 * 3).reshape(240, 320, 3).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "gradient.png")
    code = main(
        [
            "predict",
            "--model",
            str(model_path),
            "--detect",
            "haar",
            "--json",
            str(tmp_path / "gradient.png"),
        ]
    )
    payload = json.loads(capsys.readouterr().out)
    assert code == 1
    assert payload["errors"] == [
        {"file": str(tmp_path / "gradient.png"), "reason": "no face found"}
    ]


def test_predict_says_which_detector_ran_once_even_when_the_root_logger_prints(
    monkeypatch, capsys, model_path, photos, width_detector
) -> None:
    import logging

    monkeypatch.setitem(det._CLASSES, "mtcnn", width_detector)
    monkeypatch.setattr(width_detector, "name", "mtcnn", raising=False)
    # TensorFlow's converters call logging.basicConfig(): the root logger then prints too
    root_handler = logging.StreamHandler()
    logging.getLogger().addHandler(root_handler)
    try:
        main(["predict", "--model", str(model_path), "--detect", "mtcnn", str(photos / "a_two.jpg")])
    finally:
        logging.getLogger().removeHandler(root_handler)
    err = capsys.readouterr().err
    assert err.count("faces found by mtcnn") == 1, err
    assert "INFO:agegender" not in err
