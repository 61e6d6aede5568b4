"""Which files of a folder are images: the one rule ``agegender predict`` and ``predict-batch``
list folders by.

    files, passed_over = list_images("photos/", recursive=True)

A file is taken by the ending of its name (:data:`IMAGE_SUFFIXES`, any case): the formats the
models library reads (``agegender_models.imageio``; HEIC/HEIF with its ``heif`` extra, and
without it each such file is an error that says so, never skipped). Nothing is passed over
silently: the note says how many files were not images by name (with their endings), how many
were hidden (a name starting with ``.``, such as macOS's ``._IMG_0001.jpg`` resource files),
how many were named like images but are no regular files (a pipe would block the reader), and
how many subfolders were not read (``recursive=False``), were symbolic links (never followed: no
loops) or could not be read (no permission). A broken link named like an image is listed: it
is an error, with its reason, when read.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif",
                  ".avif", ".heic", ".heif")


def list_images(folder: str | os.PathLike, *, recursive: bool = False) -> tuple[list[str], str | None]:
    """The image files in ``folder`` (sorted; with ``recursive``, at any depth) and a one-line
    note of what was passed over (None when nothing was)."""
    found: list[str] = []
    other: Counter[str] = Counter()
    passed: Counter[str] = Counter()

    def unreadable(exc: OSError) -> None:
        if exc.filename == os.fspath(folder):  # the folder itself: an OSError that names it
            raise exc
        passed["subfolder{s} that could not be read"] += 1

    for top, dirs, names in os.walk(folder, onerror=unreadable):
        for name in names:
            if name.startswith("."):
                passed["hidden file{s}"] += 1
            elif name.lower().endswith(IMAGE_SUFFIXES):
                path = os.path.join(top, name)
                if os.path.isfile(path) or os.path.islink(path):  # a broken link: an error later
                    found.append(path)
                else:  # a pipe or a device named like an image: reading it could wait forever
                    passed["special file{s} (not a regular file)"] += 1
            else:
                other[Path(name).suffix.lower() or "no ending"] += 1
        passed["hidden folder{s}"] += sum(d.startswith(".") for d in dirs)
        links = [d for d in dirs if not d.startswith(".") and os.path.islink(os.path.join(top, d))]
        passed["link{s} to a folder (not followed)"] += len(links)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in links)
        if not recursive:
            passed["subfolder{s} (--recursive reads them)"] += len(dirs)
            dirs.clear()
    parts = [f"{_count(sum(other.values()), 'file{s}')} not named as images ({', '.join(sorted(other))})"
             ] if other else []
    parts += [_count(n, noun) for noun, n in passed.items() if n]
    note = f"{folder}: passed over {_and(parts)}" if parts else None
    return sorted(found), note


def _count(n: int, noun: str) -> str:
    """``_count(3, "subfolder{s}")`` is ``3 subfolders``."""
    return f"{n} {noun.format(s='' if n == 1 else 's')}"


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
