"""Parse, index, split and stream the UTKFace dataset.

The parser, index, splits and CLI need only numpy/pandas/Pillow; ``make_dataset`` imports
TensorFlow on first use (install the ``tf`` extra).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from ._paths import ENV_VAR, get_data_dir
from .errors import DatasetError, MalformedNameError
from .index import (
    AGE_GROUPS,
    STRATIFY_AGE_EDGES,
    STRATIFY_AGE_LABELS,
    DatasetIndex,
    IndexReport,
    age_bin,
    age_group,
    check_image,
    index_folder,
)
from .naming import GENDER_NAMES, RACE_NAMES, FaceLabels, load_corrections, parse_filename
from .splits import Splits, load_split_file, load_splits, save_splits, split_frame, subset

if TYPE_CHECKING:  # pragma: no cover
    from .pipeline import make_dataset

__all__ = [
    "AGE_GROUPS",
    "ENV_VAR",
    "GENDER_NAMES",
    "RACE_NAMES",
    "STRATIFY_AGE_EDGES",
    "STRATIFY_AGE_LABELS",
    "DatasetError",
    "DatasetIndex",
    "FaceLabels",
    "IndexReport",
    "MalformedNameError",
    "Splits",
    "age_bin",
    "age_group",
    "check_image",
    "get_data_dir",
    "index_folder",
    "load_corrections",
    "load_split_file",
    "load_splits",
    "make_dataset",
    "parse_filename",
    "save_splits",
    "split_frame",
    "subset",
]


def __getattr__(name: str) -> Any:
    # make_dataset lives in the TensorFlow module; import it only when asked for.
    if name == "make_dataset":
        from .pipeline import make_dataset

        return make_dataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
