"""agegender.inputs: which files of a folder are images, and a count of everything passed over."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agegender.inputs import IMAGE_SUFFIXES, list_images


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    names = ("a.jpg", "b.JPEG", "c.heic", "d.tiff", "e.webp", "f.avif", "notes.txt", "raw.CR2", "README",
             "._a.jpg", ".DS_Store", "sub/g.png", "sub/deeper/h.gif", ".git/i.jpg")
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_a_folder_gives_its_images_and_counts_the_rest(folder: Path) -> None:
    files, note = list_images(folder)
    assert files == [str(folder / n) for n in ("a.jpg", "b.JPEG", "c.heic", "d.tiff", "e.webp", "f.avif")]
    assert note == (f"{folder}: passed over 3 files not named as images (.cr2, .txt, no ending), "
                    "2 hidden files, 1 hidden folder and 1 subfolder (--recursive reads them)")


def test_recursive_reads_subfolders_but_not_hidden_ones(folder: Path) -> None:
    files, note = list_images(folder, recursive=True)
    assert files[-2:] == [str(folder / "sub/deeper/h.gif"), str(folder / "sub/g.png")]
    assert len(files) == 8
    assert note.endswith("2 hidden files and 1 hidden folder")


def test_a_pipe_named_like_an_image_is_passed_over(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "stream.jpg")  # opening it would wait for a writer
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")  # listed: an error, when read
    assert list_images(tmp_path) == ([str(tmp_path / "gone.jpg")],
                                     f"{tmp_path}: passed over 1 special file (not a regular file)")


def test_nothing_passed_over_gives_no_note(tmp_path: Path) -> None:
    (tmp_path / "only.png").write_bytes(b"x")
    assert list_images(tmp_path) == ([str(tmp_path / "only.png")], None)


def test_links_to_folders_are_not_followed(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "loop")
    for recursive in (False, True):
        files, note = list_images(tmp_path, recursive=recursive)
        assert files == [str(tmp_path / "a.jpg")]
        assert note == f"{tmp_path}: passed over 1 link to a folder (not followed)"


def test_an_unreadable_subfolder_is_counted_and_an_unreadable_folder_is_an_error(
        tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "a.jpg").write_bytes(b"x")
    locked = tmp_path / "locked"
    locked.mkdir()
    scandir = os.scandir

    def no_permission(path="."):  # as chmod 0 does for a user other than root
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", no_permission)
    files, note = list_images(tmp_path, recursive=True)
    assert files == [str(tmp_path / "a.jpg")]
    assert note == f"{tmp_path}: passed over 1 subfolder that could not be read"
    with pytest.raises(PermissionError, match="locked"):
        list_images(locked)


def test_every_format_the_reader_opens_is_listed() -> None:
    from PIL import Image, features

    pillow = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    heif = {".heic", ".heif"}  # read with the models library's 'heif' extra
    wanted = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
    if features.check("avif"):
        wanted.add(".avif")
    assert wanted <= set(IMAGE_SUFFIXES) <= pillow | heif | {".jfif", ".jpe"}
