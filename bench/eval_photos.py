"""Gender accuracy on real photos with labels (``../shared/photos/labels.csv``): the photo path.

    python bench/eval_photos.py --photos ../shared/photos --detect mtcnn [--model PATH] [--flip-tta]

Each labelled photo (gender male/female; rows without a gender are skipped) goes through
``Predictor(model, detector=...)``: detect, crop like a UTKFace chip, predict. The photo's answer is
its largest face (a portrait's subject; the label names one person or a photo of one gender).
Reports faces found, gender accuracy overall and for women and men, and photos per second, as
JSON on stdout. Without ``--model`` the shipped default model is used.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path


def _labels(photos: Path) -> dict[str, str]:
    with (photos / "labels.csv").open(newline="", encoding="utf-8") as f:
        return {row["file"]: row["gender"] for row in csv.DictReader(f) if row["gender"] in ("male", "female")}


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path("../shared/photos"))
    parser.add_argument("--model", default=None, help="a .keras file (default: the shipped model)")
    parser.add_argument("--detect", default="mtcnn", help="detector name, or 'none' for whole photos")
    parser.add_argument("--flip-tta", action="store_true")
    parser.add_argument("--threshold", type=float, default=0.5, help="P(female) above which 'female'")
    parser.add_argument("--details", action="store_true", help="also list each photo's answer")
    args = parser.parse_args(argv)

    from agegender_models import Predictor, flip_tta, load_model, load_pretrained

    model = load_model(args.model) if args.model else load_pretrained()
    if args.flip_tta:
        model = flip_tta(model)
    labels = _labels(args.photos)
    files = [str(args.photos / name) for name in sorted(labels)]
    predictor = Predictor(model, detector=None if args.detect == "none" else args.detect,
                          threshold=args.threshold)
    started = time.perf_counter()
    results = predictor.predict(files, return_errors=True)
    found, errors = results if isinstance(results, tuple) else (results, results.errors)
    seconds = time.perf_counter() - started
    faces = _largest_faces(found)
    summary = summarise(labels, faces)
    if args.details:
        summary["details"] = [{"file": Path(f).name, "label": labels[Path(f).name], "gender": r["gender"],
                               "p_female": round(float(r["p_female"]), 4), "age": round(float(r["age"]), 1),
                               "box": r.get("box")} for f, r in sorted(faces.items())]
    summary.update(detector=args.detect, flip_tta=args.flip_tta, threshold=args.threshold, model=args.model or "shipped default",
                   seconds=round(seconds, 1), photos_per_s=round(len(files) / seconds, 2),
                   errors=[{**e, "file": Path(e["file"]).name} for e in errors])
    json.dump(summary, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
