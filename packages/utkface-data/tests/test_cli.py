from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from utkface_data.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([*argv, "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_index_json_contract(messy_folder: Path, capsys) -> None:
    code, out, _ = _run(capsys, "index", str(messy_folder), "--json")
    assert code == 0
    report = json.loads(out)
    assert isinstance(report["files_seen"], int) and isinstance(report["indexed"], int)
    assert all(set(q) >= {"file", "reason"} for q in report["quarantined"])
    assert (
        report["indexed"] + len(report["quarantined"]) + len(report["not_images"])
        == report["files_seen"]
    )
    assert report["files_seen"] == 24 + 5 + 2 + 2


def test_index_json_verify_and_recursive(messy_folder: Path, image_writer, capsys) -> None:
    image_writer(messy_folder / "sub" / "40_0_1_20170103000000001.jpg")
    code, out, _ = _run(
        capsys, "index", str(messy_folder), "--json", "--verify-images", "--recursive"
    )
    report = json.loads(out)
    assert code == 0 and report["files_seen"] == 24 + 5 + 2 + 2 + 1
    reasons = {q["file"]: q["reason"] for q in report["quarantined"]}
    assert "cannot decode" in reasons["32_1_0_20170103000000997.jpg"]
    assert "sub/40_0_1_20170103000000001.jpg" not in reasons
    assert (
        report["indexed"] + len(report["quarantined"]) + len(report["not_images"])
        == report["files_seen"]
    )


def test_index_text(utk_folder: Path, capsys) -> None:
    code, out, _ = _run(capsys, "index", str(utk_folder))
    assert code == 0 and "files seen:   24" in out and "female" in out


def test_split_files_byte_identical(utk_folder: Path, tmp_path: Path, capsys) -> None:
    args = ["split", str(utk_folder), "--n", "20", "--seed", "0", "--val", "0.2", "--test", "0.2"]
    assert _run(capsys, *args, "--out", str(tmp_path / "a"))[0] == 0
    assert _run(capsys, *args, "--out", str(tmp_path / "b"))[0] == 0
    sizes = {}
    for name in ("train", "val", "test"):
        a = (tmp_path / "a" / f"{name}.csv").read_bytes()
        assert a == (tmp_path / "b" / f"{name}.csv").read_bytes()
        df = pd.read_csv(tmp_path / "a" / f"{name}.csv")
        assert list(df.columns[:4]) == ["path", "age", "gender", "race"]
        assert all((utk_folder / p).is_file() and not Path(p).is_absolute() for p in df["path"])
        sizes[name] = len(df)
    assert sizes == {"train": 12, "val": 4, "test": 4}


@pytest.mark.parametrize(
    ("make", "argv", "match"),
    [
        (lambda t: t / "missing", ["index"], "does not exist"),
        (lambda t: t, ["index", "--json"], "empty"),
        (lambda t: (t / "a.txt").write_text("x") and t, ["index"], "no usable"),
        (lambda t: (t / "f.txt").write_text("x") and t / "f.txt", ["index"], "not a directory"),
    ],
)
def test_errors_exit_nonzero_one_line(tmp_path: Path, capsys, make, argv, match) -> None:
    target = make(tmp_path)
    code, out, err = _run(capsys, argv[0], str(target), *argv[1:])
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("utkface-data: error:") and match in err


def test_strict_error_names_files(messy_folder: Path, capsys) -> None:
    code, _, err = _run(capsys, "index", str(messy_folder), "--strict")
    assert code == 1 and err.count("\n") == 1 and "53__0_20170116184028385.jpg" in err


def test_split_bad_n(utk_folder: Path, tmp_path: Path, capsys) -> None:
    code, _, err = _run(
        capsys, "split", str(utk_folder), "--n", "999", "--out", str(tmp_path / "o")
    )
    assert code == 1 and "n=999" in err


def test_entry_point_without_tensorflow(utk_folder: Path) -> None:
    # The CLI and data API must work (and import fast) without importing TensorFlow.
    code = (
        "import sys, json; from utkface_data.cli import main; import utkface_data;"
        f"rc = main(['index', {str(utk_folder)!r}, '--json', '--no-progress']);"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["indexed"] == 24


def test_index_sets_symlink_loops_aside_instead_of_aborting(utk_folder: Path, capsys) -> None:
    (utk_folder / "loop").symlink_to("loop")
    (utk_folder / "sub").mkdir()
    (utk_folder / "sub" / "up").symlink_to("..")
    code, out, err = _run(capsys, "index", str(utk_folder), "--recursive", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["indexed"] == 24
    assert [e["path"] for e in report["set_aside"]] == ["loop", "sub/up"]
    assert all(e["reason"].startswith("symlink loop") for e in report["set_aside"])
    code, out, _ = _run(capsys, "index", str(utk_folder))
    assert code == 0 and "set aside:    1" in out and "loop: symlink loop" in out
