"""The command line behaves like a good Unix tool: fast help, quiet start, telling exit statuses."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agegender import cli

# TensorFlow's and absl's start-up lines (C++ logging before absl::InitializeLog, oneDNN and CUDA
# notices, the cuInit failure on a machine without a GPU)
TF_NOISE = re.compile(r"absl::InitializeLog|^[IWE]\d{4} |oneDNN custom operations|cuda|cuInit", re.M)


def _agegender(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "agegender.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**environ, **(env or {})})


def test_help_answers_fast_without_tensorflow() -> None:
    """`agegender --help` used to take about 5 s and print TensorFlow's start-up lines."""
    probe = ("import sys, time; t = time.perf_counter(); from agegender.cli import build_parser; "
             "build_parser(); print(time.perf_counter() - t, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    seconds, tf_loaded, keras_loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert (tf_loaded, keras_loaded) == ("False", "False")
    for command in ([], ["train"], ["evaluate"], ["predict"], ["export"]):
        started = time.perf_counter()
        result = _agegender(*command, "--help")
        elapsed = time.perf_counter() - started
        assert result.returncode == 0 and result.stderr == "", result.stderr
        assert "exit status:" in result.stdout
        # under 1 s on an idle 2-core machine (about 0.15 s measured); generous for a loaded one
        assert elapsed < 5, f"agegender {' '.join(command)} --help took {elapsed:.1f} s"


def test_cli_choices_match_the_library() -> None:
    """--detect and --format list the library's names without importing it (for a fast --help)."""
    from agegender_models.detect import DETECTORS
    from agegender_models.export import FORMATS

    assert cli.DETECTORS == DETECTORS
    assert cli.EXPORT_FORMATS == FORMATS


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from agegender_models import create_model, save_model

    return save_model(create_model("custom_cnn", input_shape=(32, 32, 3)),
                      tmp_path_factory.mktemp("model") / "m.keras")


def test_tensorflow_start_up_lines_are_not_shown(tiny_model_file: Path, tmp_path: Path) -> None:
    image = tmp_path / "face.jpg"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(image)
    result = _agegender("predict", "--detect", "none", "--model", str(tiny_model_file), "--json", str(image))
    assert result.returncode == 0, result.stderr[-2000:]
    assert not TF_NOISE.search(result.stderr), result.stderr[-2000:]
    assert result.stdout.lstrip().startswith("{")
    # YuNet runs on LiteRT whatever runs the model: its XNNPACK notice is held back too
    result = _agegender("predict", "--detect", "yunet", "--runtime", "keras", "--model",
                        str(tiny_model_file), str(image))
    assert result.returncode == 1 and "no face found" in result.stderr, result.stderr[-2000:]
    assert not TF_NOISE.search(result.stderr) and "XNNPACK" not in result.stderr, result.stderr[-2000:]


def test_predict_lists_a_folders_images_and_says_what_it_passed_over(tiny_model_file: Path,
                                                                     tmp_path: Path, capsys) -> None:
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(photos / "face.tif")
    Image.fromarray(np.full((40, 40, 3), 60, np.uint8)).save(photos / "sub" / "face.png")
    (photos / "notes.txt").write_text("x")
    args = ["predict", "--detect", "none", "--model", str(tiny_model_file), "--json", str(photos)]
    assert cli.main(args) == 0
    out, err = capsys.readouterr()
    assert [r["file"] for r in json.loads(out)["predictions"]] == [str(photos / "face.tif")]
    assert (f"{photos}: passed over 1 file not named as images (.txt) and 1 subfolder "
            "(--recursive reads them)") in err
    assert cli.main([*args, "--recursive"]) == 0
    out, err = capsys.readouterr()
    assert [r["file"] for r in json.loads(out)["predictions"]] == [str(photos / "face.tif"),
                                                                   str(photos / "sub" / "face.png")]
    assert "subfolder" not in err


def test_predict_checks_its_inputs_and_annotate_folder_before_loading_a_model(
        tiny_model_file: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    original = photos / "face.jpg"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(original)
    before = original.read_bytes()

    def no_model(args):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cli, "_load_for_inference", no_model)
    # annotated copies written into the photos' own folder would replace them
    for target in (str(photos), f"{photos}/"):
        assert cli.main(["predict", "--annotate", target, str(photos)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"agegender: error: --annotate {target}: the folder holds 1 of the input photos (first: "
            f"{original}), which their annotated copies could replace; choose another folder")
    assert original.read_bytes() == before
    (tmp_path / "afile").write_text("x")
    assert cli.main(["predict", "--annotate", str(tmp_path / "afile"), str(original)]) == 2
    assert "not a folder (a file of that name exists)" in capsys.readouterr().err
    assert cli.main(["predict", "--batch-size", "0", str(original)]) == 2
    assert "--batch-size must be a positive integer. Received: 0" in capsys.readouterr().err
    # nothing readable: the errors at once, no model loaded, no table header over nothing
    assert cli.main(["predict", str(tmp_path / "missing.jpg")]) == 1
    out, err = capsys.readouterr()
    assert out == "" and f"error: {tmp_path / 'missing.jpg'}: no such file or folder" in err


def test_annotate_never_writes_over_an_input_and_says_where_a_clash_went(
        tiny_model_file: Path, tmp_path: Path, capsys) -> None:
    for folder, grey in (("a", 90), ("b", 60)):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((40, 40, 3), grey, np.uint8)).save(tmp_path / folder / "face.jpg")
    out = tmp_path / "out"
    assert cli.main(["predict", "--detect", "none", "--model", str(tiny_model_file), "--annotate", str(out),
                     str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["face-2.jpg", "face.jpg"]
    assert f"annotated {tmp_path / 'b' / 'face.jpg'} as {out / 'face-2.jpg'}" in err
    assert f"annotated 2 photos in {out}" in err
    from agegender.annotate import write_annotated

    written = write_annotated([], [str(tmp_path / "a" / "face.jpg")], tmp_path / "a")  # the library
    assert written == [tmp_path / "a" / "face-2.jpg"]


def test_annotate_keeps_the_subfolders_of_a_folder_read_recursively(tiny_model_file: Path,
                                                                     tmp_path: Path, capsys) -> None:
    """`-r --annotate` wrote every photo flat into the folder (photos/2024/a.jpg -> out/a-2.jpg)."""
    photos = tmp_path / "photos"
    for sub in ("", "2024", "2024/june"):
        (photos / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(photos / sub / "a.jpg")
    single = tmp_path / "b.png"
    Image.fromarray(np.full((40, 40, 3), 60, np.uint8)).save(single)
    out = tmp_path / "out"
    assert cli.main(["predict", "--detect", "none", "--model", str(tiny_model_file), "-r",
                     "--annotate", str(out), str(photos), str(single)]) == 0
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg"))
    assert written == ["2024/a.jpg", "2024/june/a.jpg", "a.jpg", "b.jpg"]
    assert " as " not in capsys.readouterr().err  # no clash to report


def test_annotate_never_writes_over_a_photo_already_in_its_folder(tiny_model_file: Path,
                                                                  tmp_path: Path, capsys) -> None:
    """`-r --annotate photos/2024 photos` wrote photos/a.jpg's copy over the user's photos/2024/a.jpg
    (the folder's own files are passed over as earlier copies, so it was not an input)."""
    photos = tmp_path / "photos"
    (photos / "2024").mkdir(parents=True)
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(photos / "a.jpg")
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(photos / "2024" / "a.jpg")
    theirs = (photos / "2024" / "a.jpg").read_bytes()
    args = ["predict", "--detect", "none", "--model", str(tiny_model_file), "-r",
            "--annotate", str(photos / "2024"), str(photos)]
    for _ in range(2):  # the second run replaces its own copy, and still not the photo
        assert cli.main(args) == 0
        assert (photos / "2024" / "a.jpg").read_bytes() == theirs
        assert sorted(p.name for p in (photos / "2024").iterdir()) == ["a-2.jpg", "a.jpg"]
    assert f"annotated {photos / 'a.jpg'} as {photos / '2024' / 'a-2.jpg'}" in capsys.readouterr().err


def test_annotate_inside_an_input_folder_read_recursively_skips_its_own_copies(
        tiny_model_file: Path, tmp_path: Path, capsys) -> None:
    photos = tmp_path / "photos"
    (photos / "out").mkdir(parents=True)
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(photos / "face.jpg")
    args = ["predict", "--detect", "none", "--model", str(tiny_model_file), "--json", "-r",
            "--annotate", str(photos / "out"), str(photos)]
    for _ in range(2):  # the second run finds the first run's copy in photos/out
        assert cli.main(args) == 0
        out, err = capsys.readouterr()
        assert [r["file"] for r in json.loads(out)["predictions"]] == [str(photos / "face.jpg")]
    assert f"{photos / 'out'}: passed over 1 file in the --annotate folder" in err
    assert sorted(p.name for p in (photos / "out").iterdir()) == ["face.jpg"]


def test_predict_without_a_detector_says_when_images_look_like_photos(
        tiny_model_file: Path, tmp_path: Path, capsys) -> None:
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "chip.jpg")
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(tmp_path / "photo.jpg")
    args = ["predict", "--detect", "none", "--model", str(tiny_model_file)]
    assert cli.main([*args, str(tmp_path / "chip.jpg")]) == 0
    assert "square" not in capsys.readouterr().err
    assert cli.main([*args, str(tmp_path / "chip.jpg"), str(tmp_path / "photo.jpg")]) == 0
    assert (f"1 of the images are far from square (e.g. {tmp_path / 'photo.jpg'}: 60x40), yet without a "
            "detector each is read whole as one face chip") in capsys.readouterr().err


def test_predict_help_names_the_default_model(capsys) -> None:
    from agegender_models.pretrained import default_pretrained

    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    text = re.sub(r"-\n\s*", "-", capsys.readouterr().out)  # argparse wraps after hyphens too
    assert f"(default: {default_pretrained()})" in " ".join(text.split())


def test_predict_exit_status_says_whether_every_input_gave_a_result(tiny_model_file: Path,
                                                                     tmp_path: Path, capsys) -> None:
    good = tmp_path / "face.jpg"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(good)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    assert cli.main(["predict", "--detect", "none", "--model", str(tiny_model_file), str(good)]) == 0
    assert "inputs:" not in capsys.readouterr().err  # one input: nothing to count
    assert cli.main(["predict", "--detect", "none", "--model", str(tiny_model_file), str(good), str(bad)]) == 1
    out, err = capsys.readouterr()
    assert str(good) in out and f"error: {bad}" in err
    assert "agegender: 2 inputs: 1 prediction, 1 error\n" in err  # several inputs: counted
    assert cli.main(["predict", "--model", str(tmp_path / "none.keras"), str(good)]) == 2
    assert capsys.readouterr().err.strip() == (f"agegender: error: model file not found: {tmp_path / 'none.keras'} "
                                               "(not a file, nor a shipped model (mobilenet-v2-utkface, mobilenet-v2x3-dlib-childweight-utkface, "
                                               "mobilenet-v2x3-dlib-degrade-utkface))")


def test_predict_lists_errors_in_the_order_the_inputs_were_given(tiny_model_file: Path,
                                                                   tmp_path: Path, capsys) -> None:
    good = tmp_path / "face.jpg"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(good)
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "empty").mkdir()
    given = [tmp_path / "broken.jpg", tmp_path / "missing.jpg", good, tmp_path / "empty"]
    assert cli.main(["predict", "--detect", "none", "--model", str(tiny_model_file), "--json",
                     *map(str, given)]) == 1
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert "agegender: 4 inputs: 1 prediction, 3 errors\n" in err  # the missing ones counted too
    # the unreadable file is found out after the missing one and the empty folder: still first
    assert [e["file"] for e in result["errors"]] == [str(given[0]), str(given[1]), str(given[3])]
    assert [p["file"] for p in result["predictions"]] == [str(good)]


def test_predict_reads_one_image_from_standard_input(tiny_model_file: Path, tmp_path: Path,
                                                     capsys, monkeypatch) -> None:
    import io

    face = tmp_path / "face.png"
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(face)

    class Piped(io.TextIOWrapper):
        def isatty(self) -> bool:
            return False

    def stdin(data: bytes) -> None:
        monkeypatch.setattr(sys, "stdin", Piped(io.BytesIO(data)))

    args = ["predict", "--detect", "none", "--model", str(tiny_model_file), "--json"]
    stdin(face.read_bytes())
    assert cli.main([*args, "-", str(face)]) == 0
    first, second = json.loads(capsys.readouterr().out)["predictions"]
    assert first["file"] == "-" and second["file"] == str(face)
    assert first["age"] == pytest.approx(second["age"])  # the same image, read from the pipe
    stdin(b"")
    assert cli.main([*args, "-"]) == 1
    assert json.loads(capsys.readouterr().out)["errors"] == [
        {"file": "-", "reason": "cannot read image: empty file"}]
    assert cli.main([*args, "-", "-"]) == 2
    assert "'-' (an image on standard input) can be given once" in capsys.readouterr().err

    class Terminal(Piped):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal(io.BytesIO(b"")))
    assert cli.main([*args, "-"]) == 2
    assert "which is a terminal here: pipe one in" in capsys.readouterr().err


def test_a_usage_error_is_one_line(capsys) -> None:
    """argparse printed its whole usage block before the error; every other error is one line."""
    for argv, words in ((["predict", "--json", "--csv", "x.jpg"], "argument --csv: not allowed with argument --json"),
                        (["predict", "--detect", "foo", "x.jpg"], "argument --detect: invalid choice: 'foo'"),
                        (["bogus"], "argument COMMAND: invalid choice: 'bogus'")):
        with pytest.raises(SystemExit) as stopped:
            cli.main(argv)
        err = capsys.readouterr().err
        assert stopped.value.code == 2 and err.count("\n") == 1 and words in err, err
        assert err.endswith(f"(see {'agegender predict' if argv[0] == 'predict' else 'agegender'} --help)\n")
