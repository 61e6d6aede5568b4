"""Reproducible stratified subsets and train/val/test splits, saved as portable CSV files.

Determinism does not depend on row order, numpy version or machine: every row gets a sort key
``blake2b(f"{seed}:{path}")`` and rows are ordered by (stratum, key). Strata are age bin x gender.
Rows are then picked systematically along that order with integer arithmetic, so totals are exact
(``round(n * fraction)``) and each stratum gets its share to within one or two rows.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import NamedTuple

import numpy as np
import pandas as pd

from ._paths import get_data_dir
from .errors import DatasetError
from .index import age_bin
from .naming import AGE_MAX

__all__ = [
    "SPLIT_COLUMNS",
    "SPLIT_NAMES",
    "Splits",
    "leaves_folder",
    "load_split_file",
    "load_splits",
    "save_splits",
    "split_frame",
    "stratum",
    "subset",
]

SPLIT_NAMES = ("train", "val", "test")
SPLIT_COLUMNS = ["path", "age", "gender", "race", "datetime"]
_REQUIRED = ["path", "age", "gender", "race"]


class Splits(NamedTuple):
    """Train, validation and test DataFrames (each sorted by ``path``)."""

    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame


def _check_frame(frame: pd.DataFrame, needed: list[str]) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"frame must be a pandas DataFrame. Received: frame={type(frame).__name__}")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(
            f"frame is missing column(s) {missing}. Received: columns={list(frame.columns)}"
        )
    dup = frame["path"][frame["path"].duplicated()]
    if len(dup):
        raise ValueError(
            f"frame has duplicate paths, e.g. {dup.iloc[0]!r}. Received: {len(dup)} duplicates"
        )


def stratum(frame: pd.DataFrame) -> pd.Series:
    """Stratum label per row: ``"<age bin>|<gender>"``."""
    bins = age_bin(frame["age"].to_numpy())
    return pd.Series(bins, index=frame.index, dtype=object) + "|" + frame["gender"].astype(str)


def _ordered(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Rows ordered by (stratum, seeded hash of path): independent of the input order."""
    keys = [
        hashlib.blake2b(f"{seed}:{p}".encode(), digest_size=8).hexdigest() for p in frame["path"]
    ]
    out = frame.assign(_stratum=stratum(frame).to_numpy(), _key=keys)
    out = out.sort_values(["_stratum", "_key", "path"], kind="mergesort")
    return out.drop(columns=["_stratum", "_key"])


def _systematic(total: int, k: int) -> np.ndarray:
    """Boolean mask choosing exactly k of total positions, evenly spread (integer arithmetic)."""
    i = np.arange(total, dtype=np.int64)
    return ((i + 1) * k) // max(total, 1) - (i * k) // max(total, 1) == 1


def _check_seed(seed: int) -> None:
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer. Received: seed={seed!r}")


def subset(frame: pd.DataFrame, n: int, *, seed: int = 0) -> pd.DataFrame:
    """A reproducible subset of ``n`` rows, stratified by age bin x gender, sorted by path."""
    _check_seed(seed)
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer. Received: n={n!r}")
    _check_frame(frame, ["path", "age", "gender"])
    if n > len(frame):
        raise ValueError(f"n is larger than the number of images ({len(frame)}). Received: n={n}")
    ordered = _ordered(frame, int(seed))
    picked = ordered[_systematic(len(ordered), int(n))]
    return picked.sort_values("path", kind="mergesort").reset_index(drop=True)


def split_frame(
    frame: pd.DataFrame, *, val: float = 0.15, test: float = 0.15, seed: int = 0
) -> Splits:
    """Split into train/val/test, stratified by age bin x gender, deterministic for ``seed``.

    ``val`` and ``test`` are fractions; ``round(len * val)`` rows go to val and
    ``round(len * test)`` to test, the rest to train. Same rows (in any order) and seed give the
    same split on any machine.
    """
    _check_seed(seed)
    for name, value in (("val", val), ("test", test)):
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1:
            raise ValueError(f"{name} must be a fraction in [0, 1). Received: {name}={value!r}")
    if val + test >= 1:
        raise ValueError(
            f"val + test must leave rows for training. Received: val={val}, test={test}"
        )
    _check_frame(frame, ["path", "age", "gender"])
    total = len(frame)
    n_test = int(round(total * test))
    n_val = int(round(total * val))
    if total and n_test + n_val >= total:
        raise ValueError(
            f"{total} rows are too few for val={val}, test={test}: nothing left to train on"
        )
    ordered = _ordered(frame, int(seed))
    is_test = _systematic(total, n_test)
    rest = ordered[~is_test]
    is_val = _systematic(len(rest), n_val)

    def _done(df: pd.DataFrame) -> pd.DataFrame:
        return df.sort_values("path", kind="mergesort").reset_index(drop=True)

    return Splits(train=_done(rest[~is_val]), val=_done(rest[is_val]), test=_done(ordered[is_test]))


def save_splits(splits: Splits, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``train.csv``, ``val.csv``, ``test.csv`` to ``out_dir`` (created if needed).

    Columns ``path,age,gender,race,datetime`` (datetime kept as text), rows sorted by path,
    ``\\n`` line endings, UTF-8: the same splits give byte-identical files on any machine.
    Returns the written paths by split name.
    """
    if not isinstance(splits, tuple) or len(splits) != 3:
        raise ValueError(
            f"splits must be a Splits(train, val, test). Received: {type(splits).__name__}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, df in zip(SPLIT_NAMES, splits, strict=True):
        _check_frame(df, _REQUIRED)
        cols = [c for c in SPLIT_COLUMNS if c in df.columns]
        data = df[cols].sort_values("path", kind="mergesort")
        target = out / f"{name}.csv"
        with target.open("w", encoding="utf-8", newline="") as fh:
            data.to_csv(fh, index=False, lineterminator="\n")
        written[name] = target
    return written


def leaves_folder(path: str) -> bool:
    """Whether a ``path`` column entry points outside the image folder: absolute (``/x``,
    ``C:\\x``, ``\\\\server\\x``) or with a ``..`` part (``/`` or ``\\`` separated). Decided
    from the text alone, without touching the file system."""
    windows = PureWindowsPath(path)
    return (
        PurePosixPath(path).is_absolute()
        or bool(windows.drive or windows.root)
        or ".." in windows.parts
    )


def load_split_file(
    path: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    check_files: bool = True,
) -> pd.DataFrame:
    """Read one split CSV (``path,age,gender,race[,datetime]``, paths relative to ``root``).

    ``root`` is the image folder (``None``: ``UTKFACE_DIR``). With ``check_files`` every
    referenced image must exist; otherwise ``DatasetError`` names the split file and lists the
    missing images.

    Paths that leave the image folder (absolute, or with ``..``; see :func:`leaves_folder`) are
    refused with ``DatasetError`` before any file is looked at, whether or not they exist, so
    a split file can neither read outside the folder nor reveal what exists there.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file is missing: {path}")
    try:
        df = pd.read_csv(path, dtype={"path": str, "datetime": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not a readable split CSV ({exc})") from None
    missing_cols = [c for c in _REQUIRED if c not in df.columns]
    if missing_cols:
        raise DatasetError(f"{path}: missing column(s) {missing_cols}; has {list(df.columns)}")
    for col in ("age", "gender", "race"):
        if not pd.api.types.is_integer_dtype(df[col]):
            raise DatasetError(f"{path}: column {col!r} must hold integers")
    out_of_range = {
        "age": ~df["age"].between(0, AGE_MAX),
        "gender": ~df["gender"].isin([0, 1]),
        "race": ~df["race"].between(0, 4),
    }
    for col, bad in out_of_range.items():
        if bad.any():
            row = df[bad].iloc[0]
            raise DatasetError(
                f"{path}: {int(bad.sum())} row(s) with {col} out of range, "
                f"e.g. {row['path']}: {col}={row[col]}"
            )
    duplicated = df["path"][df["path"].duplicated()]
    if len(duplicated):
        raise DatasetError(f"{path}: {len(duplicated)} path(s) listed twice, e.g. {duplicated.iloc[0]}")
    outside = [p for p in df["path"] if leaves_folder(p)]
    if outside:
        raise DatasetError(
            f"{path}: {len(outside)} path(s) leave the image folder (absolute, or with '..'); "
            f"split files list paths relative to it, e.g. {outside[0]!r}"
        )
    if check_files:
        base = get_data_dir(root)
        missing = [p for p in df["path"] if not (base / p).is_file()]
        if missing:
            shown = "\n".join(f"  {m}" for m in missing[:20])
            more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
            raise DatasetError(
                f"{path}: {len(missing)} image(s) not found under {base}:\n{shown}{more}"
            )
    return df


def load_splits(
    out_dir: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
    check_files: bool = True,
) -> Splits:
    """Read the split CSVs written by ``save_splits``/``utkface-data split``.

    ``root`` is the image folder the ``path`` column is relative to (``None``: ``UTKFACE_DIR``).
    With ``check_files`` every referenced image must exist; otherwise ``DatasetError`` names the
    split file and lists the missing images.
    """
    folder = Path(out_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"split folder does not exist: {folder}")
    splits = Splits(
        *(
            load_split_file(folder / f"{name}.csv", root=root, check_files=check_files)
            for name in SPLIT_NAMES
        )
    )
    for i, first in enumerate(SPLIT_NAMES):
        for second in SPLIT_NAMES[i + 1 :]:
            shared = set(getattr(splits, first)["path"]) & set(getattr(splits, second)["path"])
            if shared:
                raise DatasetError(
                    f"{folder}: {len(shared)} image(s) are in both {first}.csv and {second}.csv "
                    f"(the splits leak into each other), e.g. {sorted(shared)[0]}"
                )
    return splits
