"""A model on a labelled split of UTKFace chips as `agegender predict` sees them by default:
each chip through face detection, then the model on the chip as it is where its face fills it as
a chip's does (`agegender_models.detect.is_chip`), else on the chip-like crop
(`--crop-chips-again`: always the crop, as `predict` did before it read chips as they are;
`--chip-tolerance T`: the rule's tolerance, Predictor's `chip_tolerance`).

    python bench/eval_split_detect.py --data-dir ../shared/utkface/crop_part1_5000 \
        --split results/model_a/splits/test.csv --detect mtcnn [--model PATH] [--flip-tta] \
        [--crop-chips-again | --chip-tolerance T] [--zoom Z] [--shrink PX] [--min-side PX] \
        --out OUT.json [--predictions OUT.csv]

`--zoom Z` (0 < Z <= 1; 1, the default, leaves the chips as they are) first centre-crops each chip to Z of its side (saved losslessly in a
temporary folder), so that the face fills more of the frame than in a chip: a tight face crop
such as another tool's, which the chip rule must not take for a chip. `--shrink PX` then
shrinks each to PX on its longer side (a face in a small photo); `--min-side PX` is the
detector's `min_side` (an image smaller than it is enlarged to it for detection).

A chip where no face is found counts as missed (reported per age group) and is left out of the
figures, which are overall, by age group, by gender and by race (agegender_eval), written as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from eval_photos import detector_option


def _changed(files: list[str], folder: Path, *, zoom: float = 1.0, shrink: int | None = None) -> list[str]:
    """Each chip centre-cropped to ``zoom`` of its width and height, then (``shrink``) resized
    to ``shrink`` px on its longer side (box filter), as PNG in ``folder``."""
    from PIL import Image

    from agegender_models.imageio import read_image

    out = []
    for i, f in enumerate(files):
        rgb = read_image(f)
        h, w = rgb.shape[:2]
        ch, cw = round(h * zoom), round(w * zoom)
        top, left = (h - ch) // 2, (w - cw) // 2
        image = Image.fromarray(rgb[top:top + ch, left:left + cw])
        if shrink and shrink < max(image.size):
            k = shrink / max(image.size)
            image = image.resize((max(1, round(image.width * k)), max(1, round(image.height * k))), Image.BOX)
        path = folder / f"{i:05d}.png"
        image.save(path)
        out.append(str(path))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--model", default=None, help="a .keras file (default: the shipped model)")
    parser.add_argument("--detect", default="mtcnn", help="detector name, or 'none' for the chips as they are")
    parser.add_argument("--flip-tta", action="store_true")
    parser.add_argument("--crop-chips-again", action="store_true",
                        help="crop every face from its landmarks, chips too (Predictor's chip_tolerance=None)")
    parser.add_argument("--chip-tolerance", type=float, default=None,
                        help="the chip rule's tolerance (default: Predictor's)")
    parser.add_argument("--zoom", type=float, default=1.0,
                        help="centre-crop each chip to this fraction of its side first (default 1: as it is)")
    parser.add_argument("--shrink", type=int, default=None,
                        help="then shrink each chip to this many px on its longer side (a small photo's face)")
    parser.add_argument("--min-side", default=None,
                        help="the detector's min_side: a smaller image is enlarged to it for detection "
                             "('none': never; default: the detector's own)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, default=None,
                        help="also write one row per chip with a face (path, age, gender, race, age_pred, "
                             "p_female: the columns of `agegender evaluate`'s predictions.csv)")
    args = parser.parse_args(argv)
    if args.crop_chips_again and args.chip_tolerance is not None:
        parser.error("--crop-chips-again and --chip-tolerance exclude each other")
    if not 0 < args.zoom <= 1:
        parser.error(f"--zoom must be in (0, 1]. Received: {args.zoom}")

    import tempfile

    import numpy as np

    import utkface_data
    from agegender.evaluation import evaluate_predictions
    from agegender_models import Predictor, flip_tta, load_model, load_pretrained

    model = load_model(args.model) if args.model else load_pretrained()
    if args.flip_tta:
        model = flip_tta(model)
    frame = utkface_data.load_split_file(args.split, root=args.data_dir).reset_index(drop=True)
    files = [str(args.data_dir / p) for p in frame["path"]]
    tolerance = ({"chip_tolerance": None} if args.crop_chips_again else
                 {} if args.chip_tolerance is None else {"chip_tolerance": args.chip_tolerance})
    predictor = Predictor(model, detector=detector_option(args.detect, min_side=args.min_side), **tolerance)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = (files if args.zoom == 1 and not args.shrink
                  else _changed(files, Path(tmp), zoom=args.zoom, shrink=args.shrink))
        started = time.perf_counter()
        results = predictor.predict(inputs, return_errors=True)
        seconds = time.perf_counter() - started
    found = results[0] if isinstance(results, tuple) else results
    back = dict(zip(inputs, files, strict=True))  # the zoomed copies' answers under their chips' names
    found = [{**r, "file": back[r["file"]]} for r in found]
    largest: dict[str, dict] = {}
    for r in found:  # one face per chip: the largest
        area = r["box"][2] * r["box"][3] if "box" in r else 0
        if r["file"] not in largest or area > largest[r["file"]]["_area"]:
            largest[r["file"]] = {**r, "_area": area}
    keep = np.array([f in largest for f in files])
    kept = frame[keep].reset_index(drop=True)
    predictions = {"age": np.array([largest[f]["age"] for f in np.array(files)[keep]]),
                   "p_female": np.array([largest[f]["p_female"] for f in np.array(files)[keep]])}
    result = evaluate_predictions(kept, predictions).to_dict()
    if args.predictions:
        args.predictions.parent.mkdir(parents=True, exist_ok=True)
        kept[["path", "age", "gender", "race"]].assign(
            age_pred=predictions["age"], p_female=predictions["p_female"]).to_csv(args.predictions, index=False)
    groups = utkface_data.age_group(frame["age"].to_numpy())
    found_by_group = {g: round(float(keep[groups == g].mean()), 4) for g in utkface_data.AGE_GROUPS}
    summary = {"detect": args.detect, "flip_tta": args.flip_tta,
               "crop_chips_again": args.crop_chips_again, "chip_tolerance": predictor.chip_tolerance,
               "zoom": args.zoom, "shrink": args.shrink, "min_side": args.min_side, "images": len(files),
               "face_found": round(float(keep.mean()), 4), "face_found_by_age_group": found_by_group,
               "seconds": round(seconds, 1), "metrics": result}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "metrics"}))
    print(f"gender {result['gender_accuracy']:.3f}, age MAE {result['age_mae']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
