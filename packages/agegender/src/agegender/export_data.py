"""Real faces for checking and calibrating exports and runtimes: a run folder's splits.

A model trained by ``agegender train`` sits in its run folder (``RUN/model.keras``) beside
``RUN/splits/{train,test}.csv`` and ``RUN/config.json`` (whose ``data_root`` is the image folder).
Exports are checked on the test split (held out in every run, also after a final fit on
train+val) and int8 exports calibrated on images of the training split. Options override each
part: ``--check-data DIR``, ``--check-split CSV``, ``--calibration-split CSV``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

CALIBRATION_IMAGES = 200


@dataclasses.dataclass
class Faces:
    """What an export is checked and calibrated on, and a note on where it came from."""

    check: object | None = None  # agegender_models.export.CheckSet, or None: generated images
    calibration: np.ndarray | None = None  # uint8 faces, or None: generated images
    note: str = ""


@dataclasses.dataclass
class FaceSources:
    """Where the faces are (nothing loaded yet): split CSVs and their image folder."""

    check_split: Path | None = None
    calibration_split: Path | None = None
    root: Path | None = None
    note: str = ""

    def load(self, size: tuple[int, int], *, calibration: bool = True,
             check_limit: int | None = None) -> Faces:
        """The faces at ``size``; ``Faces(note=...)`` when there are none."""
        from agegender_models.export import CheckSet

        if self.check_split is None or self.root is None:
            return Faces(note=self.note)
        images, labels = load_faces(self.check_split, self.root, size, limit=check_limit)
        check = CheckSet(images, labels, description=f"{len(images)} real faces of {self.check_split}")
        faces = Faces(check=check, note=f"checked on {check.description}")
        if calibration and self.calibration_split is not None:
            faces.calibration, _ = load_faces(self.calibration_split, self.root, size,
                                              limit=CALIBRATION_IMAGES)
            faces.note += (f"; int8 calibrated on {len(faces.calibration)} faces of "
                           f"{self.calibration_split}")
        return faces


def run_folder(model_path: str | os.PathLike) -> Path | None:
    """The run folder a ``model.keras`` belongs to (it holds ``config.json`` and ``splits/``)."""
    folder = Path(model_path).resolve().parent
    if (folder / "config.json").is_file() and (folder / "splits").is_dir():
        return folder
    return None


def _data_root(run: Path | None) -> Path | None:
    """The run's image folder, as recorded (relative to where it was trained, or to the run's
    parent folders), else ``$UTKFACE_DIR``."""
    candidates: list[Path] = []
    if run is not None:
        try:
            root = json.loads((run / "config.json").read_text(encoding="utf-8")).get("data_root")
        except (OSError, ValueError):
            root = None
        if root:
            candidates += [Path(root), *(parent / root for parent in (run, *run.parents))]
    if os.environ.get("UTKFACE_DIR"):
        candidates.append(Path(os.environ["UTKFACE_DIR"]))
    return next((c for c in candidates if c.is_dir()), None)


def load_faces(split: Path, root: Path, size: tuple[int, int], *, limit: int | None = None):
    """``(images uint8 (N, H, W, 3), {"gender", "age"})`` of a split CSV, resized as in training
    (every k-th row when ``limit`` is smaller than the split)."""
    import utkface_data

    frame = utkface_data.load_split_file(split, root=root)
    if limit is not None and len(frame) > limit:
        frame = frame.iloc[:: len(frame) // limit].iloc[:limit]
    dataset = utkface_data.make_dataset(frame, root=root, image_size=size, batch_size=64,
                                        scaling="uint8")
    images, gender, age = [], [], []
    for x, y in dataset:
        images.append(x.numpy())
        gender.append(np.ravel(y["gender"].numpy()))
        age.append(np.ravel(y["age"].numpy()))
    return np.concatenate(images), {"gender": np.concatenate(gender), "age": np.concatenate(age)}


def _given(path: str | None, what: str) -> Path | None:
    if path is None:
        return None
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return Path(path)


def locate_faces(
    model_path: str | os.PathLike,
    *,
    data_dir: str | None = None,
    check_split: str | None = None,
    calibration_split: str | None = None,
) -> FaceSources:
    """Where the real faces to check and calibrate an export of the model at ``model_path`` are:
    the options given, else its run folder's (nothing is loaded). Without a check split or its
    image folder the sources are empty, with a note (exports are then checked on generated
    images); a split given explicitly whose folder is unknown is an error."""
    run = run_folder(model_path)
    check_path = _given(check_split, "--check-split file")
    calibration_path = _given(calibration_split, "--calibration-split file")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise NotADirectoryError(f"--check-data folder not found: {data_dir}")
    if run is not None:
        check_path = check_path or run / "splits" / "test.csv"
        calibration_path = calibration_path or run / "splits" / "train.csv"
    check_path = check_path if check_path and check_path.is_file() else None
    calibration_path = calibration_path if calibration_path and calibration_path.is_file() else None
    if check_path is None:
        return FaceSources(note="no labelled faces: no run folder beside the model, no --check-split")
    root = Path(data_dir) if data_dir else _data_root(run)
    if root is None:
        if check_split is not None:
            raise NotADirectoryError(f"{check_path} lists images, but their folder is unknown: "
                                     "pass --check-data DIR")
        return FaceSources(note=f"the images of {check_path} were not found: pass --check-data DIR")
    return FaceSources(check_path, calibration_path, root)
