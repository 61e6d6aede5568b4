"""The labelled photos changed as users' photos differ, each variant through the photo path.

    python bench/eval_photo_variants.py --photos ../shared/photos --detect yunet-onet \
        [--model PATH] [--turn-below none] --out OUT.json

Each labelled photo of ``labels.csv`` is written again, in a temporary folder, as:

* ``as_is``: unchanged (the reference);
* ``rotated_20``: turned 20 degrees (a tilted camera; grey corners);
* ``rotated_90_no_exif``: turned 90 degrees with no EXIF tag to undo it (a sideways photo whose
  tag was stripped); ``rotated_180_no_exif``: upside down;
* ``small_320``: shrunk to 320 px on its longer side;
* ``grayscale``;
* ``tight_crop``: a square around its largest face as found in ``as_is``, 1.3 times YuNet's box
  (a face image from another tool, tighter than a UTKFace chip).

and predicted by ``Predictor(model, detector=...)`` as ``bench/eval_photos.py`` does (a photo's
answer is its largest face). Per variant: photos with a face, gender accuracy (all, women, men),
how many answers keep the as-is gender, and the mean change of the predicted age, as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from eval_photos import _labels, _largest_faces, detector_option, summarise

VARIANTS = ("as_is", "rotated_20", "rotated_90_no_exif", "rotated_180_no_exif", "small_320", "grayscale",
            "tight_crop")


def _variant(rgb, name: str, box):
    """``rgb`` (an upright uint8 array) changed as ``name`` says, as a PIL image; None when the
    variant needs a face and the photo has none."""
    from PIL import Image, ImageOps

    image = Image.fromarray(rgb)
    if name == "as_is":
        return image
    if name == "rotated_20":
        return image.rotate(20, expand=True, resample=Image.Resampling.BILINEAR, fillcolor=(128, 128, 128))
    if name == "rotated_90_no_exif":
        return image.transpose(Image.Transpose.ROTATE_90)
    if name == "rotated_180_no_exif":
        return image.transpose(Image.Transpose.ROTATE_180)
    if name == "small_320":
        return ImageOps.contain(image, (320, 320), Image.Resampling.LANCZOS)
    if name == "grayscale":
        return image.convert("L").convert("RGB")
    if name == "tight_crop":
        if box is None:
            return None
        x, y, w, h = box
        side = 1.3 * max(w, h)
        cx, cy = x + w / 2, y + h / 2
        return image.crop((round(cx - side / 2), round(cy - 0.55 * side),
                           round(cx + side / 2), round(cy + 0.45 * side)))
    raise ValueError(f"unknown variant {name!r}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path("../shared/photos"))
    parser.add_argument("--model", default=None, help="a .keras file (default: the shipped model)")
    parser.add_argument("--detect", default="yunet-onet", help="detector name")
    parser.add_argument("--turn-below", default=None,
                        help="YuNet's turn_below: a number, or 'none' to turn nothing (default: the detector's)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from agegender_models import Predictor, load_model, load_pretrained
    from agegender_models.imageio import read_image

    model = load_model(args.model) if args.model else load_pretrained()
    detector = detector_option(args.detect, turn_below=args.turn_below)
    predictor = Predictor(model, detector=detector)
    labels = _labels(args.photos)
    upright = {name: read_image(args.photos / name) for name in sorted(labels)}
    reference: dict[str, dict] = {}
    out: dict = {"photos": len(labels), "model": args.model or "shipped default", "detect": args.detect,
                 "turn_below": getattr(detector, "turn_below", None), "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in VARIANTS:
            folder = Path(tmp) / variant
            folder.mkdir()
            files = []
            for name, rgb in upright.items():
                image = _variant(rgb, variant, reference.get(name, {}).get("box"))
                if image is not None:
                    image.save(folder / f"{name}.png")  # lossless: only the variant's change
                    files.append(str(folder / f"{name}.png"))
            found, _ = predictor.predict(files, return_errors=True)
            faces = {Path(f).name[: -len(".png")]: r for f, r in _largest_faces(found).items()}
            if variant == "as_is":
                reference = faces
            summary = summarise(labels, faces)
            both = [n for n in faces if n in reference]
            summary["same_gender_as_is"] = sum(faces[n]["gender"] == reference[n]["gender"] for n in both)
            summary["mean_age_change_years"] = round(
                sum(abs(float(faces[n]["age"]) - float(reference[n]["age"])) for n in both) / len(both), 2
            ) if both else None
            out["variants"][variant] = summary
            print(f"{variant}: faces in {summary['face_found']}, gender {summary['all']['gender_accuracy_of_all']}, "
                  f"same as as_is {summary['same_gender_as_is']}/{len(both)}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
