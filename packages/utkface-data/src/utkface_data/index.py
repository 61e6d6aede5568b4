"""Index a UTKFace folder into a DataFrame, with a report that reconciles every file seen."""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ._images import DEFAULT_MAX_PIXELS, refused_by_pillow, too_large
from ._paths import get_data_dir
from .errors import DatasetError, MalformedNameError
from .naming import (
    GENDER_NAMES,
    RACE_NAMES,
    FaceLabels,
    load_corrections,
    looks_like_image,
    parse_filename,
)

__all__ = [
    "AGE_GROUPS",
    "DEFAULT_MAX_PIXELS",
    "STRATIFY_AGE_EDGES",
    "STRATIFY_AGE_LABELS",
    "DatasetIndex",
    "IndexReport",
    "age_bin",
    "age_group",
    "check_image",
    "index_folder",
]

# The project's reporting age groups (every result is given overall *and* per group): label ->
# lower edge in years, inclusive; the last group is open-ended. Labels use an en dash. The
# application passes this mapping to ``agegender_eval.evaluate(age_groups=...)``.
AGE_GROUPS: Mapping[str, int] = {"under 10": 0, "10–17": 10, "18+": 18}

# Finer bins that stratified subsets/splits and the index report use: edges (the last is an
# exclusive upper bound above AGE_MAX) and one label per bin.
STRATIFY_AGE_EDGES: tuple[int, ...] = (0, 10, 18, 30, 45, 60, 117)
STRATIFY_AGE_LABELS: tuple[str, ...] = ("0-9", "10-17", "18-29", "30-44", "45-59", "60+")

COLUMNS = ["path", "age", "gender", "race", "datetime"]


def _ages(ages: Iterable[int] | int) -> np.ndarray:
    arr = np.asarray(ages)
    if arr.size and (not np.issubdtype(arr.dtype, np.number) or np.any(arr < 0)):
        raise ValueError(f"ages must be non-negative numbers. Received: ages={arr[:5]!r}")
    return arr


def age_group(ages: Iterable[int] | int) -> np.ndarray:
    """Map ages to the reporting groups in ``AGE_GROUPS``: "under 10" (0-9), "10–17", "18+"."""
    arr = _ages(ages)
    idx = np.searchsorted(np.asarray(list(AGE_GROUPS.values())[1:]), arr, side="right")
    return np.asarray(list(AGE_GROUPS), dtype=object)[idx]


def age_bin(ages: Iterable[int] | int) -> np.ndarray:
    """Map ages to the stratification bins ``STRATIFY_AGE_LABELS`` (0-9, 10-17, 18-29, 30-44, 45-59, 60+)."""
    arr = _ages(ages)
    idx = np.searchsorted(np.asarray(STRATIFY_AGE_EDGES[1:-1]), arr, side="right")
    return np.asarray(STRATIFY_AGE_LABELS, dtype=object)[idx]


@dataclass
class IndexReport:
    """What ``index_folder`` saw. ``indexed + len(quarantined) + len(not_images) == files_seen``.

    ``set_aside`` lists the entries that could not be scanned, as ``{"path", "reason"}``: folders
    that cannot be read, symlink loops, broken symlinks, links to a folder already scanned,
    entries that are neither files nor folders. They are not files seen (their contents are
    unknown), but they are counted and named, never skipped silently.
    """

    root: str
    files_seen: int
    indexed: int
    quarantined: list[dict[str, str]] = field(default_factory=list)
    not_images: list[str] = field(default_factory=list)
    corrected: list[str] = field(default_factory=list)
    # corrections-table keys that matched no file (a typo or a file that is gone): not applied
    unused_corrections: list[str] = field(default_factory=list)
    by_gender: dict[str, int] = field(default_factory=dict)
    by_race: dict[str, int] = field(default_factory=dict)
    by_age_bin: dict[str, int] = field(default_factory=dict)
    by_age_group: dict[str, int] = field(default_factory=dict)
    verified_images: bool = False
    set_aside: list[dict[str, str]] = field(default_factory=list)

    @property
    def reconciles(self) -> bool:
        return self.indexed + len(self.quarantined) + len(self.not_images) == self.files_seen

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (the ``utkface-data index --json`` output)."""
        return {
            "root": self.root,
            "files_seen": self.files_seen,
            "indexed": self.indexed,
            "quarantined": [dict(q) for q in self.quarantined],
            "not_images": list(self.not_images),
            "set_aside": [dict(e) for e in self.set_aside],
            "corrected": list(self.corrected),
            "unused_corrections": list(self.unused_corrections),
            "by_gender": dict(self.by_gender),
            "by_race": dict(self.by_race),
            "by_age_bin": dict(self.by_age_bin),
            "by_age_group": dict(self.by_age_group),
            "verified_images": self.verified_images,
        }

    def __str__(self) -> str:
        lines = [
            f"UTKFace index of {self.root}",
            f"  files seen:   {self.files_seen}",
            f"  indexed:      {self.indexed}"
            + (f" ({len(self.corrected)} by corrections)" if self.corrected else ""),
            f"  quarantined:  {len(self.quarantined)}",
            f"  not images:   {len(self.not_images)}",
            f"  set aside:    {len(self.set_aside)} (folders and links that could not be scanned)",
            f"  images decoded and checked: {'yes' if self.verified_images else 'no (use --verify-images)'}",
        ]
        total = max(self.indexed, 1)
        for title, counts in (
            ("gender", self.by_gender),
            ("race", self.by_race),
            ("age bin", self.by_age_bin),
            ("age group", self.by_age_group),
        ):
            lines.append(f"By {title}:")
            for key, n in counts.items():
                lines.append(f"  {key:<10} {n:>7}  {100 * n / total:5.1f}%")
        if self.quarantined:
            lines.append("Quarantined (left out of the index):")
            lines.extend(f"  {q['file']}: {q['reason']}" for q in self.quarantined)
        if self.not_images:
            lines.append("Not images (ignored):")
            lines.extend(f"  {n}" for n in self.not_images)
        if self.set_aside:
            lines.append("Set aside (not scanned):")
            lines.extend(f"  {e['path']}: {e['reason']}" for e in self.set_aside)
        if self.unused_corrections:
            lines.append("Corrections that matched no file (not applied):")
            lines.extend(f"  {n}" for n in self.unused_corrections)
        return "\n".join(lines)


@dataclass
class DatasetIndex:
    """An indexed UTKFace folder: ``frame`` (one row per usable image), ``root`` and ``report``."""

    frame: pd.DataFrame
    root: Path
    report: IndexReport

    def __len__(self) -> int:
        return len(self.frame)

    def absolute_paths(self) -> list[str]:
        return [str(self.root / p) for p in self.frame["path"]]


def check_image(
    path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[dict[str, Any] | None, str | None]:
    """Fully decode one image with PIL. Returns ``(info, None)`` or ``(None, reason)``.

    ``info`` has ``width``, ``height`` and ``mode`` (the stored mode: "RGB", "L", "RGBA", ...).
    The size is checked from the header *before* decoding, so a decompression bomb is
    rejected without allocating it.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height, mode, fmt = im.width, im.height, im.mode, im.format
            if width * height > max_pixels:
                return None, too_large(width, height, max_pixels)
            if fmt not in ("JPEG", "PNG"):
                return None, f"unsupported image format {fmt} (expected JPEG or PNG)"
            im.load()
    except Image.DecompressionBombError as exc:
        return None, refused_by_pillow(exc, max_pixels)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for bad data
        return None, f"cannot decode image: {type(exc).__name__}: {exc}"
    return {"width": width, "height": height, "mode": mode}, None


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or str(exc)


def _kind(entry: os.DirEntry[str]) -> tuple[str, str]:
    """``("dir" | "file", "")``, or ``("other", why it cannot be scanned)``."""
    try:
        if entry.is_dir(follow_symlinks=True):
            return "dir", ""
        if entry.is_file(follow_symlinks=True):
            return "file", ""
    except OSError as exc:  # ELOOP (a link to itself, a to b to a), EACCES, ...
        return "other", _why(exc)
    if entry.is_symlink():
        return "other", "broken symlink (its target does not exist)"
    return "other", "not a regular file or folder"


def _revisit(link: str, folder: Path, first: str) -> str:
    """Why a link to a folder already scanned (as ``first``) is not scanned again."""
    real = os.path.realpath(link)
    inside = os.path.realpath(folder)
    if inside == real or inside.startswith(real.rstrip(os.sep) + os.sep):
        return f"symlink loop (leads back to {first!r}, already scanned)"
    return f"the same folder as {first!r} (already scanned)"


def _scan(root: Path, recursive: bool) -> tuple[list[str], list[dict[str, str]]]:
    """Relative POSIX paths of every regular file under root (top level unless recursive), and
    the entries set aside (``{"path", "reason"}``: unreadable folders, symlink loops, ...)."""
    found: list[str] = []
    set_aside: list[dict[str, str]] = []

    def rel(path: str | Path) -> str:
        return Path(path).relative_to(root).as_posix()

    stack = [root]
    visited = {os.path.realpath(root): "."}  # each real folder is scanned once
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            if folder == root:
                raise
            set_aside.append({"path": rel(folder), "reason": f"unreadable folder ({_why(exc)})"})
            continue
        for entry in entries:
            kind, reason = _kind(entry)
            if kind == "file":
                found.append(rel(entry.path))
            elif kind == "other":
                set_aside.append({"path": rel(entry.path), "reason": reason})
            elif recursive:
                real = os.path.realpath(entry.path)
                if real in visited:
                    why = _revisit(entry.path, folder, visited[real])
                    set_aside.append({"path": rel(entry.path), "reason": why})
                else:
                    visited[real] = rel(entry.path)
                    stack.append(Path(entry.path))
    found.sort()
    set_aside.sort(key=lambda e: e["path"])
    return found, set_aside


def _unusable(path: Path) -> str | None:
    """Why a listed file cannot be used without opening it: empty or unreadable."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    except OSError as exc:
        return f"cannot read file ({_why(exc)})"
    if not os.access(path, os.R_OK):
        return "unreadable file (permission denied)"
    return None


def _counts(
    values: Iterable[Any], order: Iterable[Any], names: Mapping[Any, str] | None = None
) -> dict[str, int]:
    series = pd.Series(list(values), dtype=object)
    vc = series.value_counts()
    return {(names[k] if names else str(k)): int(vc.get(k, 0)) for k in order}


def index_folder(
    directory: str | os.PathLike[str] | None = None,
    *,
    recursive: bool = False,
    verify_images: bool = False,
    corrections: str | os.PathLike[str] | Mapping[str, FaceLabels] | None = None,
    strict: bool = False,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
) -> DatasetIndex:
    """Index a folder of UTKFace images.

    Args:
        directory: the image folder; ``None`` uses the ``UTKFACE_DIR`` environment variable.
        recursive: also index sub-folders (paths stay relative to ``directory``).
        verify_images: decode every image with PIL (in threads) and quarantine the ones that
            cannot be decoded, are empty or exceed ``max_pixels``; adds ``width``, ``height``,
            ``mode`` columns.
        corrections: CSV (``file,age,gender,race[,datetime]``) or mapping that gives labels for
            named files, used instead of the file name (e.g. for the known malformed names).
        strict: raise ``DatasetError`` naming every malformed or unreadable file (and every
            entry set aside) instead of quarantining them.
        progress: show a tqdm progress bar (stderr) for long scans.
        max_pixels: with ``verify_images``, images whose header claims more pixels are
            quarantined without being decoded (the decompression-bomb guard every reader of
            the project applies; default 64 million).

    Empty and unreadable files are quarantined with their reason. Entries that cannot be
    scanned -- unreadable sub-folders, symlink loops, broken symlinks, links to a folder already
    scanned -- are set aside (``report.set_aside``), named and counted; they never abort the scan.

    Returns a ``DatasetIndex``: ``frame`` sorted by ``path`` with columns path, age, gender,
    race, datetime (+ width, height, mode when verified), the ``root`` and a ``report``.

    Raises ``FileNotFoundError``/``NotADirectoryError`` for a missing folder and
    ``DatasetError`` when the folder holds no usable images (or, with ``strict``, any bad file).
    """
    if not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(
            f"max_pixels must be a positive integer. Received: max_pixels={max_pixels!r}"
        )
    if workers is not None and (not isinstance(workers, int) or workers <= 0):
        raise ValueError(
            f"workers must be a positive integer or None. Received: workers={workers!r}"
        )
    root = get_data_dir(directory)
    table = load_corrections(corrections)

    files, set_aside = _scan(root, recursive)
    rows: list[dict[str, Any]] = []
    quarantined: list[dict[str, str]] = []
    not_images: list[str] = []
    corrected: list[str] = []
    used: set[str] = set()
    for rel in tqdm(
        # on a terminal only (None: tqdm's own test), never into a log file or a pipe
        files, desc="index", unit="file", disable=True if not progress or len(files) < 2000 else None,
        leave=False,
    ):
        name = rel.rsplit("/", 1)[-1]
        if not looks_like_image(name):
            not_images.append(rel)
            continue
        key = rel if rel in table else name
        labels = table.get(key)
        if labels is not None:
            corrected.append(rel)
            used.add(key)
        else:
            try:
                labels = parse_filename(name)
            except MalformedNameError as exc:
                quarantined.append({"file": rel, "reason": f"malformed name: {exc.reason}"})
                continue
        problem = _unusable(root / rel)
        if problem is not None:
            quarantined.append({"file": rel, "reason": problem})
            continue
        rows.append(
            {
                "path": rel,
                "age": labels.age,
                "gender": labels.gender,
                "race": labels.race,
                "datetime": labels.datetime,
            }
        )

    if verify_images and rows:
        from PIL import Image

        n_workers = workers or min(8, (os.cpu_count() or 1) + 1)
        # Pillow warns at open about images over its own limit; ours refuses them by name. The
        # filter is set here, in this thread, around the pool (catch_warnings is not thread-safe)
        with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=n_workers) as pool:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            results = list(
                tqdm(
                    pool.map(lambda r: check_image(root / r["path"], max_pixels=max_pixels), rows),
                    total=len(rows),
                    desc="verify",
                    unit="img",
                    disable=True if not progress or len(rows) < 200 else None,
                    leave=False,
                )
            )
        kept = []
        for row, (info, reason) in zip(rows, results, strict=True):
            if reason is not None:
                quarantined.append({"file": row["path"], "reason": reason})
            else:
                kept.append({**row, **info})  # type: ignore[dict-item]
        rows = kept

    quarantined.sort(key=lambda q: q["file"])
    if strict and (quarantined or set_aside):
        bad = [(q["file"], q["reason"]) for q in quarantined]
        bad += [(e["path"], e["reason"]) for e in set_aside]
        raise DatasetError(
            f"{len(bad)} bad file(s) or folder(s) in {root} (strict mode):\n"
            + "\n".join(f"  {name}: {reason}" for name, reason in bad)
        )
    extra = ["width", "height", "mode"] if verify_images else []
    frame = pd.DataFrame(rows, columns=COLUMNS + extra)
    frame = frame.astype({"age": "int64", "gender": "int64", "race": "int64", "datetime": str})
    if verify_images:
        frame = frame.astype({"width": "int64", "height": "int64", "mode": str})
    frame = frame.sort_values("path", kind="mergesort").reset_index(drop=True)

    report = IndexReport(
        root=str(root),
        files_seen=len(files),
        indexed=len(frame),
        quarantined=quarantined,
        not_images=not_images,
        corrected=sorted(corrected),
        unused_corrections=sorted(set(table) - used),
        by_gender=_counts(frame["gender"], GENDER_NAMES, GENDER_NAMES),
        by_race=_counts(frame["race"], RACE_NAMES, RACE_NAMES),
        by_age_bin=_counts(age_bin(frame["age"].to_numpy()), STRATIFY_AGE_LABELS),
        by_age_group=_counts(age_group(frame["age"].to_numpy()), AGE_GROUPS),
        verified_images=verify_images,
        set_aside=set_aside,
    )
    if frame.empty:
        aside = (
            f"; {len(set_aside)} entries set aside, e.g. {set_aside[0]['path']}: "
            f"{set_aside[0]['reason']}"
            if set_aside
            else ""
        )
        if not files:
            raise DatasetError(
                f"folder is empty: {root}"
                + ("" if recursive else " (use recursive=True / --recursive for sub-folders)")
                + aside
            )
        detail = "; ".join(f"{q['file']}: {q['reason']}" for q in quarantined[:3])
        raise DatasetError(
            f"no usable UTKFace images in {root}: {len(files)} file(s) seen, "
            f"{len(not_images)} not images, {len(quarantined)} quarantined"
            + (f" (e.g. {detail})" if detail else "")
            + aside
        )
    return DatasetIndex(frame=frame, root=root, report=report)
