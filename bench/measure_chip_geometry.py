"""Where do the face detectors put the face inside a UTKFace chip?

UTKFace chips are faces that were detected, aligned and cropped to 200x200. To crop a face from an
ordinary photo so that it looks like a chip, we run our detectors on the chips themselves and
record, relative to the chip size:

* MTCNN: the eye centre (x, y), the distance between the eyes, the eye-centre-to-mouth-centre
  distance, the eye-line angle, and the box;
* OpenCV Haar (frontal face, default cascade): the box (centre and size);
* YuNet (``agegender_models.detect.YuNetDetector``, its default settings): as MTCNN.

Each chip is padded by 50 % on every side (edge-replicated) before detection, so boxes and
landmarks near the chip border are not clipped; coordinates are mapped back to the chip. The
medians printed at the end are the constants in ``agegender_models.detect``.

    TF_CPP_MIN_LOG_LEVEL=2 python bench/measure_chip_geometry.py \
        --data-dir ../shared/utkface/crop_part1_5000 --n 1000 --seed 0 --out bench/chip_geometry.json

Needs the ``detect`` extra (``pip install 'agegender-models[detect]'``) and ``utkface-data``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from utkface_data import AGE_GROUPS, age_group, index_folder

PAD = 0.5  # pad fraction on each side


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    q = np.percentile(a, [5, 25, 50, 75, 95])
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        "p05": float(q[0]),
        "p25": float(q[1]),
        "median": float(q[2]),
        "p75": float(q[3]),
        "p95": float(q[4]),
    }


def _largest(faces, key):
    return max(faces, key=key) if faces else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="folder of 200x200 UTKFace chips")
    parser.add_argument("--n", type=int, default=1000, help="chips to measure (random sample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/chip_geometry.json")
    parser.add_argument("--yunet-only", action="store_true",
                        help="measure YuNet alone (written to --out; MTCNN's and Haar's are in "
                        "bench/chip_geometry.json)")
    args = parser.parse_args()
    if args.yunet_only:
        return _measure_yunet(args)

    import cv2
    from mtcnn import MTCNN

    index = index_folder(args.data_dir, progress=False)  # quarantines the malformed names
    frame = index.frame.sample(n=min(args.n, len(index.frame)), random_state=args.seed)
    mtcnn = MTCNN()
    haar = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    m = {
        k: []
        for k in (
            "eye_cx",
            "eye_cy",
            "eye_dist",
            "eye_mouth",
            "angle_deg",
            "box_cx",
            "box_cy",
            "box_w",
            "box_h",
        )
    }
    h = {k: [] for k in ("box_cx", "box_cy", "box_w", "box_h")}
    found = {"mtcnn": 0, "haar": 0}
    groups = {g: {"n": 0, "mtcnn": 0, "haar": 0} for g in AGE_GROUPS}
    start = time.perf_counter()
    for path, age in zip(frame["path"], frame["age"], strict=True):
        chip = np.asarray(Image.open(Path(args.data_dir) / path).convert("RGB"))
        size = chip.shape[0]
        pad = int(round(PAD * size))
        padded = np.pad(chip, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        group = str(age_group(int(age)))
        groups[group]["n"] += 1

        faces = mtcnn.detect_faces(padded, fit_to_image=False)
        face = _largest(faces, key=lambda f: f["box"][2] * f["box"][3])
        if face is not None:
            found["mtcnn"] += 1
            groups[group]["mtcnn"] += 1
            k = {
                name: np.asarray(p, dtype=np.float64) - pad for name, p in face["keypoints"].items()
            }
            eyes = (k["left_eye"] + k["right_eye"]) / 2
            mouth = (k["mouth_left"] + k["mouth_right"]) / 2
            dx, dy = k["right_eye"] - k["left_eye"]
            x, y, w, hh = (float(v) for v in face["box"])
            m["eye_cx"].append(eyes[0] / size)
            m["eye_cy"].append(eyes[1] / size)
            m["eye_dist"].append(float(np.hypot(dx, dy)) / size)
            m["eye_mouth"].append(float(np.linalg.norm(mouth - eyes)) / size)
            m["angle_deg"].append(float(np.degrees(np.arctan2(dy, dx))))
            m["box_cx"].append((x - pad + w / 2) / size)
            m["box_cy"].append((y - pad + hh / 2) / size)
            m["box_w"].append(w / size)
            m["box_h"].append(hh / size)

        gray = cv2.cvtColor(padded, cv2.COLOR_RGB2GRAY)
        boxes = haar.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(40, 40))
        box = _largest(list(boxes), key=lambda b: b[2] * b[3])
        if box is not None:
            found["haar"] += 1
            groups[group]["haar"] += 1
            x, y, w, hh = (float(v) for v in box)
            h["box_cx"].append((x - pad + w / 2) / size)
            h["box_cy"].append((y - pad + hh / 2) / size)
            h["box_w"].append(w / size)
            h["box_h"].append(hh / size)

    # How well does each landmark-based estimate of the chip side predict the real one (1.0)?
    # Each estimate is normalised by its median, so the spread (p05-p95) is what counts.
    eye = np.asarray(m["eye_dist"]) / np.median(m["eye_dist"])
    mouth = np.asarray(m["eye_mouth"]) / np.median(m["eye_mouth"])
    estimates = {
        "eyes": eye,
        "eye_mouth": mouth,
        "max": np.maximum(eye, mouth),
        "mean": (eye + mouth) / 2,
    }
    side = {}
    for name, est in estimates.items():
        est = est / np.median(est)
        side[name] = {
            **_stats(list(est)),
            "abs_log_error_mean": float(np.mean(np.abs(np.log(est)))),
        }

    n = len(frame)
    result = {
        "command": "python bench/measure_chip_geometry.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "n": n,
        "seconds": round(time.perf_counter() - start, 1),
        "detection_rate": {k: v / n for k, v in found.items()},
        "by_age_group": groups,
        "mtcnn": {k: _stats(v) for k, v in m.items()},
        "haar": {k: _stats(v) for k, v in h.items()},
        "side_estimators": side,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{n} chips in {result['seconds']} s; detection rate {result['detection_rate']}")
    for det in ("mtcnn", "haar"):
        for key, s in result[det].items():
            print(
                f"{det:>5} {key:>9}: median {s['median']:.4f}  IQR [{s['p25']:.4f}, {s['p75']:.4f}]"
                f"  p05-p95 [{s['p05']:.4f}, {s['p95']:.4f}]"
            )
    for name, s in side.items():
        print(
            f"side from {name:>9}: p05-p95 [{s['p05']:.3f}, {s['p95']:.3f}]"
            f"  mean |log error| {s['abs_log_error_mean']:.4f}"
        )
    print(f"written: {args.out}")


def _measure_yunet(args) -> None:
    from agegender_models.detect import YuNetDetector

    index = index_folder(args.data_dir, progress=False)
    frame = index.frame.sample(n=min(args.n, len(index.frame)), random_state=args.seed)
    detector = YuNetDetector()
    m = {k: [] for k in ("eye_cx", "eye_cy", "eye_dist", "eye_mouth", "angle_deg", "box_cx", "box_cy",
                         "box_w", "box_h")}
    groups = {g: {"n": 0, "yunet": 0} for g in AGE_GROUPS}
    start = time.perf_counter()
    for path, age in zip(frame["path"], frame["age"], strict=True):
        chip = np.asarray(Image.open(Path(args.data_dir) / path).convert("RGB"))
        size = chip.shape[0]
        pad = int(round(PAD * size))
        group = str(age_group(int(age)))
        groups[group]["n"] += 1
        faces = detector.detect_faces(np.pad(chip, ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
        face = _largest(faces, key=lambda f: f.box[2] * f.box[3])
        if face is None:
            continue
        groups[group]["yunet"] += 1
        # as in agegender_models.detect: a landmark is a pixel index, its centre is +0.5
        k = {name: np.asarray(p, dtype=np.float64) + 0.5 - pad for name, p in face.landmarks.items()}
        eyes = (k["left_eye"] + k["right_eye"]) / 2
        mouth = (k["mouth_left"] + k["mouth_right"]) / 2
        dx, dy = k["right_eye"] - k["left_eye"]
        x, y, w, hh = face.box
        for key, value in (("eye_cx", eyes[0] / size), ("eye_cy", eyes[1] / size),
                           ("eye_dist", float(np.hypot(dx, dy)) / size),
                           ("eye_mouth", float(np.linalg.norm(mouth - eyes)) / size),
                           ("angle_deg", float(np.degrees(np.arctan2(dy, dx)))),
                           ("box_cx", (x - pad + w / 2) / size), ("box_cy", (y - pad + hh / 2) / size),
                           ("box_w", w / size), ("box_h", hh / size)):
            m[key].append(float(value))
    n = len(frame)
    result = {
        "command": "python bench/measure_chip_geometry.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not False),
        "n": n, "seconds": round(time.perf_counter() - start, 1),
        "detection_rate": {"yunet": sum(g["yunet"] for g in groups.values()) / n},
        "by_age_group": groups,
        "yunet": {k: _stats(v) for k, v in m.items()},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for key, st in result["yunet"].items():
        print(f"yunet {key:>9}: median {st['median']:.4f}  p05-p95 [{st['p05']:.4f}, {st['p95']:.4f}]")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
