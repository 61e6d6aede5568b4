from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from utkface_data import (
    AGE_GROUPS,
    STRATIFY_AGE_EDGES,
    STRATIFY_AGE_LABELS,
    DatasetError,
    FaceLabels,
    age_bin,
    age_group,
    check_image,
    index_folder,
)


def _reasons(idx) -> dict[str, str]:
    return {q["file"]: q["reason"] for q in idx.report.quarantined}


def test_index_clean_folder(utk_folder: Path) -> None:
    idx = index_folder(utk_folder, progress=False)
    assert idx.root == utk_folder
    assert len(idx.frame) == 24
    assert list(idx.frame.columns[:5]) == ["path", "age", "gender", "race", "datetime"]
    assert idx.frame["path"].is_monotonic_increasing
    assert idx.frame["age"].dtype == np.int64
    r = idx.report
    assert (r.files_seen, r.indexed, r.quarantined, r.not_images) == (24, 24, [], [])
    assert sum(r.by_gender.values()) == sum(r.by_race.values()) == sum(r.by_age_bin.values()) == 24
    assert r.by_gender == {"male": 12, "female": 12}
    assert list(r.by_age_group) == list(AGE_GROUPS)


def test_index_messy_folder_quarantines_and_reconciles(messy_folder: Path) -> None:
    idx = index_folder(messy_folder, progress=False)
    r = idx.report
    assert r.reconciles and r.indexed + len(r.quarantined) + len(r.not_images) == r.files_seen
    assert sorted(r.not_images) == [".DS_Store", "README.txt"]
    reasons = _reasons(idx)
    assert set(reasons) == {
        "61_1_20170109142408075.jpg.chip.jpg",
        "53__0_20170116184028385.jpg",
        "55_0_0_20170116232725357jpg.chip.jpg",
        "24_0_1_20170116220224657 .jpg.chip.jpg",
        "44_1_4_20170116235150272.pg",
        "30_1_0_20170103000000999.jpg",
    }
    assert "0 bytes" in reasons["30_1_0_20170103000000999.jpg"]
    assert "malformed name" in reasons["53__0_20170116184028385.jpg"]
    # Without decoding, the truncated JPEG is indexed; with --verify-images it is quarantined.
    assert "32_1_0_20170103000000997.jpg" in set(idx.frame["path"])
    assert not set(reasons) & set(idx.frame["path"])
    json.dumps(r.to_dict())
    text = str(r)
    assert "53__0_20170116184028385.jpg" in text and "files seen" in text


def test_index_verify_images(messy_folder: Path, image_writer) -> None:
    image_writer(messy_folder / "8_0_1_20170103000000001.png", mode="RGBA")
    image_writer(messy_folder / "9_1_2_20170103000000002.jpg", mode="L")
    (messy_folder / "10_1_2_20170103000000003.jpg").write_text("this is text, not a JPEG")
    idx = index_folder(messy_folder, verify_images=True, progress=False)
    reasons = _reasons(idx)
    assert "cannot decode" in reasons["32_1_0_20170103000000997.jpg"]
    assert "cannot decode" in reasons["10_1_2_20170103000000003.jpg"]
    modes = dict(zip(idx.frame["path"], idx.frame["mode"], strict=True))
    assert modes["8_0_1_20170103000000001.png"] == "RGBA"
    assert modes["9_1_2_20170103000000002.jpg"] == "L"
    assert set(idx.frame["width"]) == {24}
    assert idx.report.reconciles and idx.report.verified_images


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height but holds almost no data (a bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_decompression_bomb_guard(tmp_path: Path) -> None:
    bomb = tmp_path / "20_0_0_20170103000000001.png"
    _png_header_only(bomb, 10_000, 8_000)  # 80 Mpx claimed (the limit: 64), a few bytes of data
    info, reason = check_image(bomb)
    assert info is None and "too large" in reason and "10000x8000" in reason
    _, reason = check_image(bomb, max_pixels=10**9)
    assert "cannot decode" in reason  # guard off: the missing pixel data is reported, no crash
    _png_header_only(bomb, 100_000, 100_000)
    _, reason = check_image(bomb, max_pixels=10**12)
    assert "too large" in reason  # PIL's own bomb check also ends up as a reason


def test_huge_image_quarantined(utk_folder: Path, image_writer) -> None:
    image_writer(utk_folder / "20_0_0_20170103000000001.jpg", size=(300, 200))
    idx = index_folder(utk_folder, verify_images=True, max_pixels=50_000, progress=False)
    assert "too large" in _reasons(idx)["20_0_0_20170103000000001.jpg"]
    assert idx.report.indexed == 24


def test_strict_names_every_bad_file(messy_folder: Path) -> None:
    with pytest.raises(DatasetError) as info:
        index_folder(messy_folder, strict=True, progress=False)
    message = str(info.value)
    for name in (
        "61_1_20170109142408075.jpg.chip.jpg",
        "53__0_20170116184028385.jpg",
        "30_1_0_20170103000000999.jpg",
    ):
        assert name in message


def test_corrections_index_malformed_file(messy_folder: Path, tmp_path: Path) -> None:
    csv = tmp_path / "corrections.csv"
    csv.write_text(
        "file,age,gender,race,datetime\n61_1_20170109142408075.jpg.chip.jpg,61,1,3,20170109142408075\n"
    )
    idx = index_folder(messy_folder, corrections=csv, progress=False)
    assert idx.report.unused_corrections == []
    row = idx.frame.set_index("path").loc["61_1_20170109142408075.jpg.chip.jpg"]
    assert (row["age"], row["gender"], row["race"]) == (61, 1, 3)
    assert idx.report.corrected == ["61_1_20170109142408075.jpg.chip.jpg"]
    assert "61_1_20170109142408075.jpg.chip.jpg" not in _reasons(idx)
    assert idx.report.reconciles
    mapping = {"53__0_20170116184028385.jpg": FaceLabels(53, 0, 0, "")}
    assert "53__0_20170116184028385.jpg" in set(
        index_folder(messy_folder, corrections=mapping, progress=False).frame["path"]
    )


def test_corrections_that_match_no_file_are_reported(messy_folder: Path) -> None:
    mapping = {
        "53__0_20170116184028385.jpg": FaceLabels(53, 0, 0, ""),
        "typo_20170116184028385.jpg": FaceLabels(40, 1, 2, ""),
    }
    report = index_folder(messy_folder, corrections=mapping, progress=False).report
    assert report.unused_corrections == ["typo_20170116184028385.jpg"]
    assert report.to_dict()["unused_corrections"] == ["typo_20170116184028385.jpg"]
    assert "matched no file" in str(report) and "typo_20170116184028385.jpg" in str(report)


def test_recursive(utk_folder: Path, image_writer) -> None:
    image_writer(utk_folder / "part2" / "deep" / "40_0_1_20170103000000001.jpg")
    flat = index_folder(utk_folder, progress=False)
    deep = index_folder(utk_folder, recursive=True, progress=False)
    assert len(deep.frame) == len(flat.frame) + 1
    assert "part2/deep/40_0_1_20170103000000001.jpg" in set(deep.frame["path"])


def test_recursive_symlink_loop_terminates(utk_folder: Path) -> None:
    (utk_folder / "loop").symlink_to(utk_folder, target_is_directory=True)
    idx = index_folder(utk_folder, recursive=True, progress=False)
    assert idx.report.files_seen == 24 and idx.report.reconciles


def test_missing_and_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        index_folder(tmp_path / "nope", progress=False)
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match="file.txt"):
        index_folder(f, progress=False)


def test_empty_and_no_images(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="empty"):
        index_folder(tmp_path, progress=False)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="no usable UTKFace images.*1 not images"):
        index_folder(tmp_path, progress=False)


def test_directory_from_env(utk_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UTKFACE_DIR", str(utk_folder))
    assert len(index_folder(progress=False).frame) == 24
    monkeypatch.delenv("UTKFACE_DIR")
    with pytest.raises(FileNotFoundError, match="UTKFACE_DIR"):
        index_folder(progress=False)


def test_argument_validation(utk_folder: Path) -> None:
    with pytest.raises(ValueError, match="Received: max_pixels=0"):
        index_folder(utk_folder, max_pixels=0)


def test_age_group_and_bin() -> None:
    assert list(age_group([0, 9, 10, 17, 18, 116])) == [
        "under 10",
        "under 10",
        "10–17",
        "10–17",
        "18+",
        "18+",
    ]
    assert list(age_bin([0, 10, 18, 30, 45, 60, 116])) == [
        "0-9",
        "10-17",
        "18-29",
        "30-44",
        "45-59",
        "60+",
        "60+",
    ]
    with pytest.raises(ValueError, match="Received"):
        age_group([-1])
    # each group/bin starts at its own edge: labels and edges are defined together
    assert list(age_group(list(AGE_GROUPS.values()))) == list(AGE_GROUPS)
    assert list(age_bin(STRATIFY_AGE_EDGES[:-1])) == list(STRATIFY_AGE_LABELS)


@pytest.mark.slow
def test_real_folder(shared_dir: Path) -> None:
    idx = index_folder(shared_dir, progress=False)
    r = idx.report
    assert r.files_seen >= 5002 and r.reconciles
    names = {q["file"] for q in r.quarantined}
    if shared_dir.name == "crop_part1_5000":
        assert (r.files_seen, r.indexed) == (5002, 5000)
        assert names == {
            "61_1_20170109142408075.jpg.chip.jpg",
            "61_3_20170109150557335.jpg.chip.jpg",
        }


# --- entries that cannot be scanned: set aside with a reason, counted, never fatal -------------


def test_symlink_loops_and_broken_links_are_set_aside(utk_folder: Path) -> None:
    (utk_folder / "self").symlink_to("self")  # a link to itself: ELOOP
    (utk_folder / "ping").symlink_to("pong")  # ping -> pong -> ping
    (utk_folder / "pong").symlink_to("ping")
    (utk_folder / "gone.jpg").symlink_to("nowhere.jpg")
    sub = utk_folder / "sub"
    sub.mkdir()
    (sub / "back").symlink_to("..")  # a folder loop: only a recursive scan would follow it
    (sub / "twin").symlink_to(sub)  # the same folder again

    flat = index_folder(utk_folder, progress=False).report
    assert len(flat.set_aside) == 4 and flat.indexed == 24 and flat.reconciles
    reasons = {e["path"]: e["reason"] for e in flat.set_aside}
    assert reasons == {
        "self": "symlink loop",
        "ping": "symlink loop",
        "pong": "symlink loop",
        "gone.jpg": "broken symlink (its target does not exist)",
    }

    deep = index_folder(utk_folder, recursive=True, progress=False).report
    reasons = {e["path"]: e["reason"] for e in deep.set_aside}
    assert reasons["sub/back"] == "symlink loop (leads back to '.', already scanned)"
    assert reasons["sub/twin"] == "symlink loop (leads back to 'sub', already scanned)"
    assert len(deep.set_aside) == 6 and deep.indexed == 24 and deep.reconciles
    assert deep.to_dict()["set_aside"] == deep.set_aside
    assert "set aside:    6" in str(deep) and "sub/back: symlink loop" in str(deep)
    with pytest.raises(DatasetError, match="strict mode"):
        index_folder(utk_folder, strict=True, progress=False)


def _unreadable(path: Path) -> bool:
    """chmod 000 ``path``; False (and restored) when that does not stop this user (root)."""
    path.chmod(0)
    if os.access(path, os.R_OK):
        path.chmod(0o755)
        return False
    return True


def test_unreadable_subfolder_and_file_for_real(utk_folder: Path, image_writer) -> None:
    locked = utk_folder / "locked"
    image_writer(locked / "30_1_0_20170103000000099.jpg")
    secret = image_writer(utk_folder / "31_1_0_20170103000000098.jpg")
    if not (_unreadable(locked) and _unreadable(secret)):
        pytest.skip("chmod 000 does not stop this user (root); see the simulated test below")
    try:
        report = index_folder(utk_folder, recursive=True, progress=False).report
    finally:
        locked.chmod(0o755)
        secret.chmod(0o644)
    assert report.set_aside == [
        {"path": "locked", "reason": "unreadable folder (permission denied)"}
    ]
    assert _reasons_of(report)["31_1_0_20170103000000098.jpg"] == "unreadable file (permission denied)"
    assert report.indexed == 24 and report.reconciles


def _reasons_of(report) -> dict[str, str]:
    return {q["file"]: q["reason"] for q in report.quarantined}


def test_unreadable_subfolder_and_file_simulated(
    utk_folder: Path, image_writer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, with the permission errors simulated (chmod does not stop root)."""
    import errno

    from utkface_data import index as index_module

    locked = utk_folder / "locked"
    image_writer(locked / "30_1_0_20170103000000099.jpg")
    secret = image_writer(utk_folder / "31_1_0_20170103000000098.jpg")
    scandir, access = os.scandir, os.access

    def fake_scandir(path):
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(index_module.os, "scandir", fake_scandir)
    monkeypatch.setattr(
        index_module.os, "access", lambda p, mode: Path(p) != secret and access(p, mode)
    )
    report = index_folder(utk_folder, recursive=True, progress=False).report
    assert report.set_aside == [
        {"path": "locked", "reason": "unreadable folder (permission denied)"}
    ]
    assert _reasons_of(report)[secret.name] == "unreadable file (permission denied)"
    assert report.indexed == 24 and report.files_seen == 25 and report.reconciles


def test_a_folder_of_only_loops_says_so(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(DatasetError, match=r"folder is empty: .*1 entries set aside, e.g. loop: symlink loop"):
        index_folder(tmp_path, progress=False)
