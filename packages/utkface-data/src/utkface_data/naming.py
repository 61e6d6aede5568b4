"""UTKFace file-name parser and the optional corrections table.

UTKFace stores the labels in the file name: ``[age]_[gender]_[race]_[datetime].jpg`` (the aligned
and cropped faces add ``.chip.jpg``). Age is 0-116, gender 0 (male) or 1 (female), race
0 White, 1 Black, 2 Asian, 3 Indian, 4 Others; datetime is ``yyyymmddHHMMSSfff`` as digits.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import MalformedNameError

__all__ = [
    "AGE_MAX",
    "GENDER_NAMES",
    "IMAGE_EXTENSIONS",
    "RACE_NAMES",
    "FaceLabels",
    "looks_like_image",
    "load_corrections",
    "parse_filename",
]

AGE_MAX = 116
# UTKFace's label codes and their names: the project's one definition (reports, plots and the
# application use these; the other libraries take them as arguments).
GENDER_NAMES: Mapping[int, str] = {0: "male", 1: "female"}
RACE_NAMES: Mapping[int, str] = {0: "White", 1: "Black", 2: "Asian", 3: "Indian", 4: "Others"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

# Strict: three small integers, a digit-only datetime and a known extension, nothing else.
_NAME_RE = re.compile(
    r"^(?P<age>\d{1,3})_(?P<gender>\d)_(?P<race>\d)_(?P<datetime>\d{8,20})"
    r"(?P<ext>\.(?:jpg|jpeg|png)(?:\.chip\.(?:jpg|jpeg|png))?)$",
    re.IGNORECASE,
)
_EXT_RE = re.compile(r"\.(?:jpg|jpeg|png)(?:\.chip\.(?:jpg|jpeg|png))?$", re.IGNORECASE)
# Something that was meant to be a UTKFace name: starts with a number and an underscore.
_LABELLED_RE = re.compile(r"^\d+_")


@dataclass(frozen=True)
class FaceLabels:
    """Labels carried by one UTKFace file name."""

    age: int
    gender: int
    race: int
    datetime: str

    def __post_init__(self) -> None:
        _check_ranges(self.age, self.gender, self.race, name=None)


def _check_ranges(age: int, gender: int, race: int, *, name: str | None) -> None:
    problems = []
    if not 0 <= age <= AGE_MAX:
        problems.append(f"age {age} is outside 0-{AGE_MAX}")
    if gender not in GENDER_NAMES:
        problems.append(f"gender {gender} is not 0 (male) or 1 (female)")
    if race not in RACE_NAMES:
        problems.append(f"race {race} is outside 0-4")
    if problems:
        if name is None:
            raise ValueError(
                "; ".join(problems) + f". Received: age={age}, gender={gender}, race={race}"
            )
        raise MalformedNameError(name, "; ".join(problems))


def _explain(name: str) -> str:
    """A human reason why ``name`` does not match the strict pattern."""
    if name != name.strip() or " " in name:
        return "contains whitespace"
    ext = _EXT_RE.search(name)
    if ext is None:
        return "extension is not .jpg, .jpeg, .png or .jpg.chip.jpg"
    stem = name[: ext.start()]
    fields = stem.split("_")
    if any(f == "" for f in fields):
        return "empty label field (double or trailing underscore)"
    if len(fields) != 4:
        return (
            f"{len(fields)} label fields, expected 4 (age_gender_race_datetime); "
            "a field is missing or extra"
        )
    bad = [f for f in fields if not f.isdigit()]
    if bad:
        return f"non-numeric label field {bad[0]!r}"
    age, gender, race, dt = fields
    if len(gender) != 1 or len(race) != 1:
        return "gender and race must be single digits"
    if len(age) > 3:
        return f"age {age} is outside 0-{AGE_MAX}"
    if not 8 <= len(dt) <= 20:
        return f"datetime {dt!r} should be 8-20 digits (yyyymmddHHMMSSfff)"
    # If the extension is glued to the datetime (``...357jpg.chip.jpg``) we end up here too.
    return "does not match age_gender_race_datetime.jpg"


def parse_filename(name: str | os.PathLike[str]) -> FaceLabels:
    """Parse a UTKFace file name (or path; only the last component is used) into ``FaceLabels``.

    Accepts ``.jpg``, ``.jpeg``, ``.png`` and ``.jpg.chip.jpg`` case-insensitively. Raises
    ``MalformedNameError`` (a ``ValueError``) with the reason when the name does not match
    ``age_gender_race_datetime`` exactly or a label is out of range.
    """
    base = os.path.basename(os.fspath(name))
    m = _NAME_RE.match(base)
    if m is None:
        # A glued extension such as "...357jpg.chip.jpg" also lands here.
        raise MalformedNameError(base, _explain(base))
    age, gender, race = int(m["age"]), int(m["gender"]), int(m["race"])
    _check_ranges(age, gender, race, name=base)
    return FaceLabels(age=age, gender=gender, race=race, datetime=m["datetime"])


def looks_like_image(name: str) -> bool:
    """True for names the indexer treats as images: an image extension, or a UTKFace-style
    ``<number>_...`` name (so a malformed ``44_1_4_...pg`` is quarantined, not ignored)."""
    base = os.path.basename(name)
    if base.startswith("."):
        return False
    return base.lower().endswith(IMAGE_EXTENSIONS) or bool(_LABELLED_RE.match(base))


def load_corrections(
    corrections: str | os.PathLike[str] | Mapping[str, FaceLabels] | None,
) -> dict[str, FaceLabels]:
    """Read a corrections table: CSV with header ``file,age,gender,race`` and optional ``datetime``.

    ``file`` is the image's file name (or its path relative to the indexed folder, POSIX
    slashes). A mapping ``{file: FaceLabels}`` is accepted as is. Every row is validated; an
    error names the CSV file and line.
    """
    if corrections is None:
        return {}
    if isinstance(corrections, Mapping):
        out = {}
        for key, value in corrections.items():
            if not isinstance(value, FaceLabels):
                raise ValueError(
                    "corrections mapping values must be FaceLabels. "
                    f"Received: corrections[{key!r}]={value!r}"
                )
            out[str(key)] = value
        return out
    path = Path(corrections)
    if not path.is_file():
        raise FileNotFoundError(f"corrections file does not exist: {path}")
    out = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        required = {"file", "age", "gender", "race"}
        missing = required - set(reader.fieldnames or [])
        if missing:
            raise ValueError(
                f"{path}: corrections CSV needs columns file,age,gender,race[,datetime]; "
                f"missing {sorted(missing)}. Received: columns={reader.fieldnames}"
            )
        for line, row in enumerate(reader, start=2):
            file = (row["file"] or "").strip()
            try:
                if not file:
                    raise ValueError("empty file name")
                dt = (row.get("datetime") or "").strip()
                if not dt:
                    found = re.search(r"\d{8,20}", file)
                    dt = found.group(0) if found else ""
                labels = FaceLabels(
                    age=int(row["age"]),
                    gender=int(row["gender"]),
                    race=int(row["race"]),
                    datetime=dt,
                )
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}, line {line}: invalid correction ({exc})") from None
            if file in out:
                raise ValueError(f"{path}, line {line}: duplicate correction for {file!r}")
            out[file] = labels
    return out
