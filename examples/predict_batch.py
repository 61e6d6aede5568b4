"""Ages and genders for a whole collection of images on Ray Data: this machine, or a cluster.

    python examples/predict_batch.py --model runs/model_a/model.keras --images DIR --out results/
    python examples/predict_batch.py --model runs/model_a/model.keras --images 'photos/**/*.jpg' \\
        --detect auto --out results/
    ray start --head   # on a cluster's head node, `ray start --address HEAD:6379` on the others
    python examples/predict_batch.py --model runs/model_a/model.keras --images /shared/photos \\
        --out /shared/results --runner auto

The same job as ``agegender predict-batch`` (``pip install './packages/agegender[batch]'``),
through the Python API: list the inputs (a folder, a glob or a CSV of paths), run them through a
pool of workers that load the model once each, then read the outputs back. Without ``--images``
it makes a few hundred generated 40-px "faces" to show the mechanics.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from agegender.batch import list_inputs, predict_batch
from agegender.cli import run_or_exit


def generated_images(folder: Path, n: int = 300) -> Path:
    """``n`` random 40-px images and one corrupt file (it goes to errors.jsonl, the job goes on)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i:04d}.jpg")
    (folder / "corrupt.jpg").write_bytes(b"not a jpeg")
    return folder


def main(args: argparse.Namespace) -> int:
    images = args.images or str(generated_images(Path(tempfile.mkdtemp(prefix="agegender_images_"))))
    files = list_inputs(images)
    detect = None if args.detect == "none" else args.detect
    summary = predict_batch(files, args.out, models=[args.model], detect=detect, runner=args.runner,
                            workers=args.workers)
    print(json.dumps(summary, indent=2))
    out = Path(args.out)
    with (out / "predictions.jsonl").open() as f:
        first = [json.loads(line) for line, _ in zip(f, range(3), strict=False)]
    print("first rows:", *first, sep="\n  ")
    errors = (out / "errors.jsonl").read_text().splitlines()
    print(f"{len(errors)} errors, e.g. {errors[0] if errors else '-'}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a trained .keras model")
    parser.add_argument("--images", default=None,
                        help="a folder, a quoted glob or a CSV of image paths (default: generated)")
    parser.add_argument("--detect", choices=("auto", "yunet-onet", "yunet", "mtcnn", "haar", "none"), default="none",
                        help="find faces in photos first, e.g. 'auto' as agegender predict does "
                        "(default: none, the inputs are face chips)")
    parser.add_argument("--out", required=True, help="folder for the outputs")
    parser.add_argument("--runner", default="local", help="local, auto or ray://HOST:10001")
    parser.add_argument("--workers", type=int, default=None, help="model copies (default: CPUs)")
    sys.exit(run_or_exit(main, parser.parse_args(), prog=sys.argv[0]))
