"""A model on a labelled split of UTKFace chips as real photos degrade faces: the chips as they
are, in grayscale, downscaled to 48 or 32 px and scaled back (a small face in a photo), JPEG at
quality 15, and darkened to 40 % (not among the training degradations of `--degrade`).

    python bench/eval_degraded.py --data-dir ../shared/utkface/crop_part1_5000 \
        --split results/model_a/splits/val.csv [--model PATH ...] --out OUT.json

Each condition is applied to the 200 x 200 chip (Pillow), which is then resized to the model's
input (bilinear) and predicted as it is (no detection). Figures per condition: overall, by age
group, by gender and by race (agegender_eval), written as JSON; a table is printed. Several
`--model`s are measured on the same degraded images (each degraded once).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path


def _conditions():
    from PIL import Image, ImageOps

    def small(side):
        return lambda im: im.resize((side, side), Image.BOX).resize(im.size, Image.BILINEAR)

    def jpeg(quality):
        def f(im):
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=quality)
            return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
        return f

    return {
        "as_is": lambda im: im,
        "grayscale": lambda im: ImageOps.grayscale(im).convert("RGB"),
        "small_48px": small(48),
        "small_32px": small(32),
        "jpeg_q15": jpeg(15),
        "dark_40pct": lambda im: im.point(lambda v: int(v * 0.4)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--model", action="append", default=None,
                        help="a .keras file or a shipped name (default: the shipped default); repeatable")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import numpy as np
    from PIL import Image

    import utkface_data
    from agegender.evaluation import evaluate_predictions
    from agegender_models import load_model, load_pretrained

    frame = utkface_data.load_split_file(args.split, root=args.data_dir).reset_index(drop=True)
    chips = [Image.open(args.data_dir / p).convert("RGB") for p in frame["path"]]
    models = {ref or "default": load_model(ref, compile=False) if ref and Path(ref).is_file()
              else load_pretrained(ref) for ref in args.model or [None]}
    summary = {"split": str(args.split), "images": len(frame), "models": {n: {} for n in models}}
    for condition, degrade in _conditions().items():
        degraded = [degrade(im) for im in chips]  # once for every model
        inputs: dict[int, np.ndarray] = {}  # by input side
        for name, model in models.items():
            side = model.input_shape[1]
            if side not in inputs:
                inputs[side] = np.stack([np.asarray(im.resize((side, side), Image.BILINEAR))
                                         for im in degraded]).astype(np.uint8)
            out = model.predict(inputs[side], batch_size=64, verbose=0)
            predictions = {"age": np.asarray(out["age"]).ravel(),
                           "p_female": np.asarray(out["gender"]).ravel()}
            result = evaluate_predictions(frame, predictions).to_dict()
            summary["models"][name][condition] = result
            by_age = result["by_group"]["age_group"]
            print(f"{name} {condition:11s} gender {result['gender_accuracy']:.3f} ("
                  + " / ".join(f"{by_age[g]['gender_accuracy']:.3f}" for g in by_age)
                  + f")  age MAE {result['age_mae']:.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
