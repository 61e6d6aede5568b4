"""The model that ships: `agegender predict` works out of the box, offline; photos by default;
`--annotate` draws readable boxes and labels."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agegender import annotate as ann
from agegender.cli import main
from agegender_models import detect as det
from agegender_models import list_pretrained, load_pretrained, pretrained_info
from agegender_models import pretrained as pre
from agegender_models.detect import Face
from agegender_models.saving import ModelFileError


def test_the_shipped_model_loads_offline_with_its_checksum() -> None:
    info = pretrained_info()
    assert list_pretrained() == ["mobilenet-v2x3-dlib-childweight-utkface", "mobilenet-v2-utkface",
                                 "mobilenet-v2x3-dlib-degrade-utkface"]  # the default first
    assert info["name"] == "mobilenet-v2x3-dlib-childweight-utkface"
    models = {}
    for name in list_pretrained():
        # at most 15 MB per model, in the repository and in the wheel (which deflates it again)
        data = pre.pretrained_path(name).read_bytes()
        assert len(data) < 15e6 and len(zlib.compress(data, 6)) < 15e6
        models[name] = model = load_pretrained(name)
        size = pretrained_info(name)["input_size"]
        assert tuple(model.inputs[0].shape[1:]) == (size, size, 3)
        assert set(model.output_names) == {"gender", "age"}
    # the default holds dlib's face descriptor, its kernels int8, and its two read-outs; and three
    # MobileNetV2 members, BatchNorm folded into their convolutions
    default = models[info["name"]]
    assert {"face_descriptor", "descriptor_gender", "descriptor_age"} <= {layer.name for layer in default.layers}
    kernels = [w for w in default.get_layer("face_descriptor").weights if w.name == "codes"]
    assert len(kernels) == 29 and {w.dtype for w in kernels} == {"int8"}
    kinds = [type(la).__name__ for la in default._flatten_layers(recursive=True)]
    assert kinds.count("BatchNormalization") == 0 and {"member0", "member1", "member2"} <= {
        la.name for la in default._flatten_layers(recursive=True)}
    # dlib's gender gated by the predicted age as chosen on validation for this model: half its
    # weight at 14 years, the gate's width 6 (results/NOTEBOOK.md, session 17)
    kernel, bias = default.get_layer("descriptor_trust").get_weights()
    assert (1 / kernel.item(), -bias.item() / kernel.item()) == pytest.approx((6.0, 14.0), rel=1e-5)
    assert Path(info["card"]).is_file() and "non-commercial" in Path(info["card"]).read_text()
    with pytest.raises(ValueError, match="no pretrained model 'nope'"):
        load_pretrained("nope")


def test_a_damaged_shipped_model_is_refused(tmp_path: Path, monkeypatch) -> None:
    copy = tmp_path / "pretrained"
    shutil.copytree(pre.PRETRAINED_DIR, copy)
    target = copy / pretrained_info()["file"]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    monkeypatch.setattr(pre, "PRETRAINED_DIR", copy)
    with pytest.raises(ModelFileError, match="is damaged .*reinstall agegender-models"):
        load_pretrained()


def _photo(path: Path, width: int, height: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_predict_without_a_model_uses_the_shipped_one(tmp_path: Path, capsys) -> None:
    chips = [_photo(tmp_path / f"chip{i}.jpg", 200, 200, seed=i) for i in range(2)]
    assert main(["predict", "--detect", "none", "--json", *map(str, chips)]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert [r["file"] for r in rows] == [str(c) for c in chips]
    assert all(r["gender"] in {"male", "female"} and 0 <= r["age"] <= 120 for r in rows)
    # photos by default: faces are looked for, and noise has none
    assert main(["predict", "--json", str(chips[0])]) == 1
    assert json.loads(capsys.readouterr().out)["errors"] == [{"file": str(chips[0]), "reason": "no face found"}]


class TwoFaces:
    """A fake detector: two faces in every photo, placed by the photo's size."""

    def __init__(self, **kwargs):
        pass

    def detect_faces(self, image):
        h, w = image.shape[:2]
        return [Face((w // 10, h // 4, w // 4, h // 3), 0.99), Face((w // 2, h // 4, w // 4, h // 3), 0.98)]


@pytest.mark.parametrize(("width", "height"), [(320, 240), (2400, 1600)])
def test_annotate_writes_each_photo_boxed_and_labelled(tmp_path: Path, monkeypatch, capsys,
                                                        width: int, height: int) -> None:
    for name in ("yunet-onet", "mtcnn"):  # what the default, --detect auto, may pick
        monkeypatch.setitem(det._CLASSES, name, TwoFaces)
    photo = _photo(tmp_path / "group.png", width, height)
    out = tmp_path / "annotated"
    assert main(["predict", "--json", "--annotate", str(out), str(photo)]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert len(rows) == 2
    written = Image.open(out / "group.jpg").convert("RGB")
    assert written.size == (width, height)
    pixels = np.asarray(written).astype(int)
    for row in rows:
        x, y, w, h = row["box"]
        colour = np.array(ann.COLOURS[row["gender"]])
        # the box's bottom edge is drawn in the gender's colour (JPEG: approximately)
        edge = pixels[y + h - 1, x + w // 4: x + 3 * w // 4]
        assert np.abs(edge - colour).mean() < 40
    # the label is big enough to read: its font grows with the photo (at least 12 px)
    assert ann.label(rows[0]) in {f"F {round(rows[0]['age'])}", f"M {round(rows[0]['age'])}"}


def test_a_label_at_the_photos_right_edge_moves_left_to_stay_whole() -> None:
    face = {"box": [290, 100, 30, 40], "gender": "male", "age": 100.2}  # "M 100": wider than 30 px
    drawn = np.asarray(ann.annotate(Image.new("RGB", (320, 240)), [face])).astype(int)
    above = drawn[:100]  # the label sits above the box
    filled = np.argwhere(np.abs(above - np.array(ann.COLOURS["male"])).sum(axis=2) == 0)
    xs = filled[:, 1]
    # the whole label (wider than the 30 px left of the edge) fits: it starts left of the box
    assert len(xs) and xs.min() < 290 and xs.max() <= 319


def test_labels_of_faces_side_by_side_do_not_hide_each_other() -> None:
    faces = [{"box": [10, 50, 30, 30], "gender": "male", "age": 40.0},
             {"box": [25, 50, 30, 30], "gender": "female", "age": 38.0}]
    drawn = np.asarray(ann.annotate(Image.new("RGB", (320, 240)), faces)).astype(int)

    def rows(gender: str) -> np.ndarray:
        return np.argwhere(np.abs(drawn - np.array(ann.COLOURS[gender])).sum(axis=2) == 0)[:, 0]

    assert rows("male").min() < 50  # the first label above its box
    assert rows("female").min() >= 50  # the second inside its box, not over the first


def test_labels_in_a_crowd_leave_the_other_faces_visible() -> None:
    """A crowd of 30-px faces on a 1000-px photo: each label sat above its face, over the face
    of the row behind, and was twice as wide as a face."""
    faces = [{"box": [100, 100, 30, 36], "gender": "male", "age": 55.0},  # the row behind
             {"box": [100, 140, 30, 36], "gender": "female", "age": 42.0}]  # just in front
    drawn = np.asarray(ann.annotate(Image.new("RGB", (1000, 640)), faces)).astype(int)
    behind = drawn[100 + 3:136 - 3, 100 + 3:130 - 3]  # inside the first face's box line
    assert not (np.abs(behind - np.array(ann.COLOURS["female"])).sum(axis=2) == 0).any()
    female = np.argwhere(np.abs(drawn - np.array(ann.COLOURS["female"])).sum(axis=2) == 0)
    assert female[:, 1].max() - female[:, 1].min() < 2 * 30  # the label no wider than 2 faces


def test_predictor_without_a_model_uses_the_shipped_one(tmp_path: Path) -> None:
    from agegender_models import Predictor

    chip = _photo(tmp_path / "chip.jpg", 200, 200)
    default, named = Predictor(), Predictor("mobilenet-v2x3-dlib-childweight-utkface")
    assert default.predict([chip])[0]["p_female"] == pytest.approx(named.predict([chip])[0]["p_female"])
    assert tuple(default.model.inputs[0].shape[1:3]) == (192, 192)
