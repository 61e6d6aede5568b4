"""`agegender predict-batch`'s inputs (a folder, a glob, a CSV) and its command line, without Ray
(the job itself runs in the root tests/test_predict_batch.py)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agegender.batch import list_inputs
from agegender.cli import main


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("a/1.jpg", "a/2.PNG", "a/deep/3.jpeg", "b/4.jpg", "b/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_a_folder_gives_its_images_at_any_depth_sorted(tree: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="agegender"):
        assert list_inputs(str(tree)) == [str(tree / n) for n in ("a/1.jpg", "a/2.PNG", "a/deep/3.jpeg",
                                                                   "b/4.jpg")]
    assert caplog.messages == [f"{tree}: passed over 1 file not named as images (.txt)"]



def test_a_folder_that_cannot_be_listed_is_one_line(tree: Path, monkeypatch) -> None:
    scandir = os.scandir

    def no_permission(path="."):  # as chmod 0 does for a user other than root
        if Path(path) == tree / "b":
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", no_permission)
    assert list_inputs(str(tree))[-1] == str(tree / "a/deep/3.jpeg")
    with pytest.raises(ValueError, match=f"cannot list folder: {tree / 'b'}: Permission denied"):
        list_inputs(str(tree / "b"))


def test_a_glob_gives_the_files_it_matches(tree: Path) -> None:
    assert list_inputs(str(tree / "**" / "*.jpg")) == [str(tree / "a/1.jpg"), str(tree / "b/4.jpg")]
    with pytest.raises(ValueError, match="no file matches"):
        list_inputs(str(tree / "*.gif"))


def test_a_csv_gives_its_path_column_relative_to_its_folder_or_root(tree: Path) -> None:
    listing = tree / "b" / "list.csv"
    listing.write_text("age,path\n30,4.jpg\n40,/abs/x.jpg\n,\n")
    assert list_inputs(str(listing)) == [str(tree / "b" / "4.jpg"), "/abs/x.jpg"]
    assert list_inputs(str(listing), root=tree) == [str(tree / "4.jpg"), "/abs/x.jpg"]
    (tree / "first.csv").write_text("image\na/1.jpg\n")  # no path/file column: the first
    assert list_inputs(str(tree / "first.csv")) == [str(tree / "a/1.jpg")]
    (tree / "empty.csv").write_text("path\n")
    with pytest.raises(ValueError, match="no image paths"):
        list_inputs(str(tree / "empty.csv"))


def test_nothing_to_predict_is_one_line_and_status_2(tree: Path, tmp_path: Path, capsys) -> None:
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    for source, message in ((tmp_path / "missing", "no such file"),
                            (tree / "a" / "deep" / "*.gif", "no file matches")):
        code = main(["predict-batch", str(source), "--model", str(model), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
    code = main(["predict-batch", str(tree), "--model", str(tmp_path / "nope.keras"), "--out", "o"])
    assert code == 2 and "model file not found" in capsys.readouterr().err
    code = main(["predict-batch", str(tree), "--model", str(model), "--out", "o", "--workers", "0"])
    assert code == 2 and "--workers must be a positive integer" in capsys.readouterr().err
    # a folder of no images: what its listing passed over is on stderr, then the one error line
    (tree / "c").mkdir()
    (tree / "c" / "notes.txt").write_text("x")
    code = main(["predict-batch", str(tree / "c"), "--model", str(model), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines() == [
        f"agegender: {tree / 'c'}: passed over 1 file not named as images (.txt)",
        f"agegender: error: no image files in {tree / 'c'}"], err


def test_help_answers_fast_without_tensorflow_or_ray() -> None:
    probe = ("import sys; from agegender.cli import build_parser; import agegender.batch; "
             "build_parser(); print(any(m in sys.modules for m in ('tensorflow', 'keras', 'ray')))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True).stdout.split() == ["False"]
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "agegender.cli", "predict-batch", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--runner" in result.stdout and "exit status:" in result.stdout
    assert time.perf_counter() - started < 5


def test_predict_batch_takes_a_shipped_model_by_name_or_by_default(tree: Path, tmp_path: Path,
                                                                   monkeypatch, capsys) -> None:
    import agegender.batch as batch
    from agegender_models import pretrained_info
    from agegender_models.pretrained import pretrained_path

    seen = []

    def fake_predict_batch(files, out, *, models, **options):
        seen.append(models)
        return {"inputs": len(files), "predictions": 0, "errors": 0, "workers": 1, "images_per_s": 0}

    monkeypatch.setattr(batch, "predict_batch", fake_predict_batch)
    assert main(["predict-batch", str(tree), "--out", str(tmp_path / "o")]) == 0
    assert main(["predict-batch", str(tree), "--model", "mobilenet-v2-utkface",
                 "--out", str(tmp_path / "o")]) == 0
    assert seen == [[str(pretrained_path(pretrained_info()["name"]))],
                    [str(pretrained_path("mobilenet-v2-utkface"))]]
    capsys.readouterr()
