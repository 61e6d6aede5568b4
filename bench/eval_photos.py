"""Gender accuracy on real photos with labels (``../shared/photos/labels.csv``): the photo path.

    python bench/eval_photos.py --photos ../shared/photos --detect mtcnn [--model PATH] [--flip-tta]

Each labelled photo (gender male/female; rows without a gender are skipped) goes through
``Predictor(model, detector=...)``: detect, crop like a UTKFace chip, predict. The photo's answer is
its largest face (a portrait's subject; the label names one person or a photo of one gender).
Reports faces found, gender accuracy overall and for women and men, and photos per second, as
JSON on stdout. Photos whose ``notes`` give a FairFace ``age_group=LO-HI`` (or ``70+``) also
measure age: the share whose predicted age falls in the group (``LO <= age < HI + 1``) and the mean
distance in years from the group of the others (``age_groups``: all, and by FairFace group 0-9, 10-19, 20+).
Without ``--model`` the shipped default model is used.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


def _labels(photos: Path) -> dict[str, str]:
    with (photos / "labels.csv").open(newline="", encoding="utf-8") as f:
        return {row["file"]: row["gender"] for row in csv.DictReader(f) if row["gender"] in ("male", "female")}


def _age_groups(photos: Path) -> dict[str, tuple[int, int | None]]:
    """FairFace's age group of each photo that names one in its notes: (first year, last year or None)."""
    groups = {}
    with (photos / "labels.csv").open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            m = re.search(r"age_group=(\d+)(?:-(\d+)|\+)", row.get("notes") or "")
            if m:
                groups[row["file"]] = (int(m.group(1)), int(m.group(2)) if m.group(2) else None)
    return groups


def summarise_age_groups(groups: dict[str, tuple[int, int | None]], faces: dict[str, dict]) -> dict:
    by_name = {Path(f).name: r for f, r in faces.items()}
    bands = {"all": (0, None), "0-9": (0, 9), "10-19": (10, 19), "20+": (20, None)}
    out = {}
    for band, (b_lo, b_hi) in bands.items():
        outside = []
        for name, (lo, hi) in groups.items():
            if name not in by_name or lo < b_lo or (b_hi is not None and lo > b_hi):
                continue
            age = float(by_name[name]["age"])
            top = float("inf") if hi is None else hi + 1
            outside.append(0.0 if lo <= age < top else (lo - age if age < lo else age - top))
        missed = [d for d in outside if d > 0]
        # mean_years_outside: over every photo, one inside its group counting 0;
        # mean_years_outside_when_outside: over the photos outside their group only
        out[band] = {"photos": len(outside),
                     "within_group": round(sum(d == 0 for d in outside) / len(outside), 4) if outside else None,
                     "mean_years_outside": round(sum(outside) / len(outside), 2) if outside else None,
                     "mean_years_outside_when_outside": round(sum(missed) / len(missed), 2) if missed else None}
    return out


def _largest_faces(results) -> dict[str, dict]:
    best: dict[str, dict] = {}
    for r in results:
        area = r["box"][2] * r["box"][3] if "box" in r else 0
        if r["file"] not in best or area > best[r["file"]]["_area"]:
            best[r["file"]] = {**r, "_area": area}
    return best


def summarise(labels: dict[str, str], faces: dict[str, dict]) -> dict:
    out: dict = {"photos": len(labels), "face_found": sum(Path(f).name in labels for f in faces)}
    by_name = {Path(f).name: r for f, r in faces.items()}
    for group in ("all", "female", "male"):
        names = [n for n, g in labels.items() if group == "all" or g == group]
        found = [n for n in names if n in by_name]
        right = sum(by_name[n]["gender"] == labels[n] for n in found)
        out[group] = {"photos": len(names), "found": len(found),
                      "gender_accuracy_of_found": round(right / len(found), 4) if found else None,
                      "gender_accuracy_of_all": round(right / len(names), 4) if names else None}
    return out


def detector_option(name: str, **options: str | None):
    """``--detect NAME`` (``none``: no detector) with detector options given on the command line
    as text: a number, ``none`` (the option off) or not given (None: the detector's default)."""
    if name == "none":
        return None
    from agegender_models.detect import get_detector

    given = {k: None if v == "none" else float(v) if "." in v else int(v)
             for k, v in options.items() if v is not None}
    return get_detector(name, **given)


def _shrunk(files: list[str], side: int, folder: Path) -> list[str]:
    """Each photo (upright) shrunk to ``side`` px on its longer side, as JPEG 90 under its own
    name in ``folder`` (a ``.png`` name holds JPEG data: every reader goes by the content)."""
    from PIL import Image

    from agegender_models.imageio import read_image

    out = []
    for f in files:
        image = Image.fromarray(read_image(f))
        image.thumbnail((side, side), Image.LANCZOS)
        path = folder / Path(f).name
        image.save(path, format="JPEG", quality=90)
        out.append(str(path))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path("../shared/photos"))
    parser.add_argument("--model", default=None, help="a .keras file (default: the shipped model)")
    parser.add_argument("--detect", default="mtcnn", help="detector name, or 'none' for whole photos")
    parser.add_argument("--flip-tta", action="store_true")
    parser.add_argument("--threshold", type=float, default=0.5, help="P(female) above which 'female'")
    parser.add_argument("--details", action="store_true", help="also list each photo's answer")
    parser.add_argument("--shrink", type=int, default=None,
                        help="shrink each photo to this many px on its longer side first (JPEG 90)")
    parser.add_argument("--min-side", default=None,
                        help="the detector's min_side: a smaller photo is enlarged to it for detection "
                             "('none': never; default: the detector's own)")
    args = parser.parse_args(argv)

    from agegender_models import Predictor, flip_tta, load_model, load_pretrained

    model = load_model(args.model) if args.model else load_pretrained()
    if args.flip_tta:
        model = flip_tta(model)
    labels = _labels(args.photos)
    files = [str(args.photos / name) for name in sorted(labels)]
    predictor = Predictor(model, detector=detector_option(args.detect, min_side=args.min_side), threshold=args.threshold)
    with tempfile.TemporaryDirectory() as tmp:
        if args.shrink:
            files = _shrunk(files, args.shrink, Path(tmp))
        started = time.perf_counter()
        results = predictor.predict(files, return_errors=True)
        found, errors = results if isinstance(results, tuple) else (results, results.errors)
        seconds = time.perf_counter() - started
    faces = _largest_faces(found)
    summary = summarise(labels, faces)
    summary["faces"] = dict(sorted(Counter(Path(r["file"]).name for r in found).items()))
    summary["age_groups"] = summarise_age_groups(_age_groups(args.photos), faces)
    if args.details:
        summary["details"] = [{"file": Path(f).name, "label": labels[Path(f).name], "gender": r["gender"],
                               "p_female": round(float(r["p_female"]), 4), "age": round(float(r["age"]), 1),
                               "box": r.get("box")} for f, r in sorted(faces.items())]
    summary.update(detector=args.detect, flip_tta=args.flip_tta, threshold=args.threshold, model=args.model or "shipped default",
                   shrink=args.shrink, min_side=args.min_side, seconds=round(seconds, 1), photos_per_s=round(len(files) / seconds, 2),
                   errors=[{**e, "file": Path(e["file"]).name} for e in errors])
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
