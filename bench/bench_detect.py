"""Faces in the wild: detect -> crop -> predict, against predicting on the original chips.

Each held-out test chip (200x200) is scaled by a random factor in [--scale-min, --scale-max]
and pasted at a random position onto a --width x --height background (half random noise, half a
smooth random texture; fixed seed). The photo then goes through ``Predictor(model,
detector=...)``: detect the faces, crop each like a UTKFace chip, predict. The face whose box
overlaps the pasted chip most (IoU >= 0.3) is "the" face; an image without one is a miss.

Reported per detector, overall and by age group (under 10, 10-17, 18+): detection rate, age MAE
and gender accuracy on the detected faces, and the same two metrics on the *same* images
predicted from their original chips (the issue's target: MAE within +0.5 years, gender accuracy
within -1 point). The whole photo resized to the model input ("no detection") is reported too.

    TF_CPP_MIN_LOG_LEVEL=2 python bench/bench_detect.py --data-dir ../shared/utkface/crop_part1_5000 \\
        --model ../main/runs/model_a_improved/model.keras --n 750 --seed 0 --out bench/detect_results.json

Needs the ``detect`` extra (``pip install 'agegender-models[detect]'``) and ``utkface-data``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from agegender_models import Predictor, load_model
from utkface_data import AGE_GROUPS, GENDER_NAMES, age_group, load_split_file

ROOT = Path(__file__).resolve().parents[1]
# the trained model the benchmarks that need one measure when --model is not given
# (nox -s bench passes its own default, runs/model_a, and skips them when it is missing)
DEFAULT_MODEL = os.environ.get("AGEGENDER_MODEL")


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    if rng.random() < 0.5:
        return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    cells = rng.integers(
        0, 256, size=(int(rng.integers(4, 24)), int(rng.integers(4, 24)), 3), dtype=np.uint8
    )
    texture = Image.fromarray(cells).resize((width, height), Image.Resampling.BICUBIC)
    return np.array(texture.filter(ImageFilter.GaussianBlur(2)))


def _photo(chip: Image.Image, rng: np.random.Generator, args: argparse.Namespace):
    """(photo, pasted box [x, y, w, h], scale)."""
    scale = float(rng.uniform(args.scale_min, args.scale_max))
    side = round(chip.width * scale)
    side = min(side, args.width, args.height)
    face = chip.resize((side, side), Image.Resampling.BILINEAR)
    x = int(rng.integers(0, args.width - side + 1))
    y = int(rng.integers(0, args.height - side + 1))
    photo = _background(rng, args.width, args.height)
    photo[y : y + side, x : x + side] = np.asarray(face)
    return photo, (x, y, side, side), scale


def _iou(a, b) -> float:
    ax1, ay1, ax2, ay2 = a[0], a[1], a[0] + a[2], a[1] + a[3]
    bx1, by1, bx2, by2 = b[0], b[1], b[0] + b[2], b[1] + b[3]
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _metrics(age_true, gender_true, age_pred, gender_pred) -> dict[str, float]:
    if len(age_true) == 0:
        return {"n": 0, "age_mae": None, "gender_accuracy": None}
    return {
        "n": int(len(age_true)),
        "age_mae": float(np.mean(np.abs(np.asarray(age_pred) - np.asarray(age_true)))),
        "gender_accuracy": float(np.mean(np.asarray(gender_pred) == np.asarray(gender_true))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="UTKFace chip folder")
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="trained .keras model (default: $AGEGENDER_MODEL)",
    )
    parser.add_argument(
        "--split",
        default=str(ROOT / "results" / "model_a" / "splits" / "test.csv"),
        help="held-out split CSV (paths relative to --data-dir)",
    )
    parser.add_argument("--n", type=int, default=750, help="test images to use (random sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detectors", nargs="+", default=["mtcnn", "haar"])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--scale-min", type=float, default=0.4)
    parser.add_argument("--scale-max", type=float, default=1.5)
    parser.add_argument("--out", default="bench/detect_results.json")
    args = parser.parse_args()
    if not args.model:
        parser.error("no model: pass --model or set AGEGENDER_MODEL")
    if not Path(args.model).is_file():
        parser.error(f"model not found: {args.model} (pass --model or set AGEGENDER_MODEL)")

    frame = load_split_file(args.split, root=args.data_dir)
    if args.n < len(frame):
        frame = frame.sample(n=args.n, random_state=args.seed).sort_values("path")
    model = load_model(args.model)
    paths = [str(Path(args.data_dir) / p) for p in frame["path"]]
    ages = frame["age"].to_numpy()
    genders = frame["gender"].to_numpy()
    groups = np.asarray([str(g) for g in age_group(ages)])
    gender_names = np.asarray([GENDER_NAMES[int(g)] for g in genders])

    chips = Predictor(model).predict(paths, return_errors=False)
    chip_age = np.array([r["age"] for r in chips])
    chip_gender = np.array([r["gender"] for r in chips])

    rng = np.random.default_rng(args.seed)
    photos = [_photo(Image.open(p).convert("RGB"), rng, args) for p in paths]

    # no detection: the whole photo resized to the model input
    whole = Predictor(model).predict(np.stack([p for p, _, _ in photos]))
    whole_age = np.array([r["age"] for r in whole])
    whole_gender = np.array([r["gender"] for r in whole])

    def table(mask, age_pred, gender_pred) -> dict:
        out = {"all": _metrics(ages[mask], gender_names[mask], age_pred[mask], gender_pred[mask])}
        for g in AGE_GROUPS:
            m = mask & (groups == g)
            out[g] = _metrics(ages[m], gender_names[m], age_pred[m], gender_pred[m])
        return out

    everyone = np.ones(len(paths), dtype=bool)
    result = {
        "command": "python bench/bench_detect.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
        ),
        "machine": platform.processor() or platform.machine(),
        "n": len(paths),
        "groups": {g: int(np.sum(groups == g)) for g in AGE_GROUPS},
        "chips": table(everyone, chip_age, chip_gender),
        "whole_photo_no_detection": table(everyone, whole_age, whole_gender),
        "detectors": {},
    }
    for name in args.detectors:
        predictor = Predictor(model, detector=name)
        found = np.zeros(len(paths), dtype=bool)
        age_pred = np.full(len(paths), np.nan)
        gender_pred = np.full(len(paths), "", dtype=object)
        extra_faces = 0
        start = time.perf_counter()
        for i, (photo, box, _) in enumerate(photos):
            faces = predictor.predict(photo)
            best = max(faces, key=lambda f: _iou(f["box"], box), default=None)
            if best is not None and _iou(best["box"], box) >= 0.3:
                found[i] = True
                age_pred[i] = best["age"]
                gender_pred[i] = best["gender"]
                extra_faces += len(faces) - 1
            else:
                extra_faces += len(faces)
        seconds = time.perf_counter() - start
        scales = np.array([s for _, _, s in photos])
        rate = {"all": float(found.mean())}
        rate.update(
            {g: float(found[groups == g].mean()) for g in AGE_GROUPS if np.any(groups == g)}
        )
        for lo, hi in ((0.4, 0.6), (0.6, 1.0), (1.0, 1.5)):
            m = (scales >= lo) & (scales < hi)
            rate[f"scale {lo}-{hi}"] = float(found[m].mean()) if np.any(m) else None
        result["detectors"][name] = {
            "detection_rate": rate,
            "other_faces_reported": int(extra_faces),
            "seconds_per_photo": seconds / len(paths),
            "detected": table(found, age_pred, gender_pred),
            "chips_same_images": table(found, chip_age, chip_gender),
        }
        print(f"{name}: detection rate {rate['all']:.3f}, {seconds / len(paths):.2f} s/photo")

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(_markdown(result))
    print(f"written: {args.out}")


def _fmt(m: dict) -> str:
    if not m["n"]:
        return "– | –"
    return f"{m['age_mae']:.2f} | {m['gender_accuracy']:.3f}"


def _markdown(result: dict) -> str:
    lines = [
        "| input | group | n | detected | age MAE | gender acc. | chips (same images): MAE | gender acc. |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for group in ("all", *AGE_GROUPS):
        chips = result["chips"][group]
        lines.append(f"| original chips | {group} | {chips['n']} | – | {_fmt(chips)} | – | – |")
    for group in ("all", *AGE_GROUPS):
        whole = result["whole_photo_no_detection"][group]
        lines.append(
            f"| whole photo, no detection | {group} | {whole['n']} | – | {_fmt(whole)} | "
            f"{_fmt(result['chips'][group])} |"
        )
    for name, d in result["detectors"].items():
        for group in ("all", *AGE_GROUPS):
            det = d["detected"][group]
            total = result["n"] if group == "all" else result["groups"][group]
            lines.append(
                f"| {name} → crop | {group} | {total} | {d['detection_rate'].get(group, 0):.3f} | "
                f"{_fmt(det)} | {_fmt(d['chips_same_images'][group])} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
