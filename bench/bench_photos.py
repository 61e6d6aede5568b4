"""The photo path end to end: read -> find the faces -> align and crop -> batch predict, in photos/s.

    TF_CPP_MIN_LOG_LEVEL=3 python bench/bench_photos.py --photos ../shared/photos \
        --detectors yunet mtcnn --out bench/bench_photos.json

What ``agegender predict PHOTOS`` runs (``Predictor(model, detector=...).predict(files)``: the
shipped model on its default runtime, photos read and their faces found and cropped by worker
threads ahead of the model), timed from the first photo read to the last result, the model and
detector loaded before. Two folders:

* ``../shared/photos`` as it is (74 real photos: portraits, group photos, small and large);
* a folder of a few hundred photos made from them: each photo as stored, mirrored, with its
  longer side at 2,000 px and at 640 px, written as JPEG (quality 90) to a temporary folder.

For each detector: photos/s, faces found and photos with a face, with 1 and 2 reading threads
(``--workers``); best of ``--rounds`` rounds, after one untimed warm-up photo. The CPU's name and
its bf16/AMX flags are written with the figures (this machine is shared: compare ratios measured
in one run; ``--models A B`` times several models in one run). ``--libfacedetection`` also times
each YuNet detector with libfacedetection's own C++ (the ``yuface`` wheel, the engine before the
shipped LiteRT network) in the same run. ``--phone-size`` adds a third folder, the 74 photos at
4,032 px on their longer side (a 12-megapixel phone photo's), timed also with every JPEG decoded
whole (``Predictor`` decodes a large JPEG at 1/2-1/8 scale for the detector).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

EXTENSIONS = {".jpg", ".jpeg", ".png"}


def photos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS)


def make_variants(photos: list[Path], out: Path) -> list[Path]:
    """Each photo as stored, mirrored, at 2,000 px and at 640 px on its longer side (JPEG 90)."""
    from PIL import Image, ImageOps

    written = []
    for path in photos:
        with Image.open(path) as im:
            image = ImageOps.exif_transpose(im).convert("RGB")
        w, h = image.size
        variants = {
            "asis": image,
            "mirror": ImageOps.mirror(image),
            "2000": image.resize((round(w * 2000 / max(w, h)), round(h * 2000 / max(w, h)))),
            "640": image.resize((round(w * 640 / max(w, h)), round(h * 640 / max(w, h)))),
        }
        for name, variant in variants.items():
            target = out / f"{path.stem}_{name}.jpg"
            variant.save(target, quality=90)
            written.append(target)
    return written


class LibfacedetectionYuNet:
    """libfacedetection's own C++ YuNet (yuface's library), in place of the shipped network."""

    def __init__(self) -> None:
        import threading

        from agegender_models.detect import _import_yuface

        self._call, self._lock = _import_yuface(), threading.Lock()

    def detect(self, rgb, score_threshold: float = 0.2):
        import numpy as np

        with self._lock:  # as the detector locked it before
            rows = self._call(np.ascontiguousarray(rgb[..., ::-1]))[:, :15].astype(np.float32)
        rows[:, 0] /= 100
        return rows[rows[:, 0] >= score_threshold]


def make_phone_size(photos: list[Path], out: Path, side: int = 4032) -> list[Path]:
    """Each photo with its longer side at ``side`` px (JPEG 90): phone-photo sized files."""
    from PIL import Image, ImageOps

    written = []
    for path in photos:
        with Image.open(path) as im:
            image = ImageOps.exif_transpose(im).convert("RGB")
        w, h = image.size
        target = out / f"{path.stem}_{side}.jpg"
        image.resize((round(w * side / max(w, h)), round(h * side / max(w, h)))).save(target, quality=90)
        written.append(target)
    return written


@contextlib.contextmanager
def whole_decode():
    """Predictor decodes every file whole inside this block (as before reduced decoding)."""
    from agegender_models.imageio import read_image

    module = sys.modules["agegender_models.predict"]  # the package exports a predict() function
    real = module.read_image_reduced
    module.read_image_reduced = lambda path, reduce_to, *, max_pixels: (
        read_image(path, max_pixels=max_pixels), 1)
    try:
        yield
    finally:
        module.read_image_reduced = real


def measure(predictor, files: list[Path], workers: int, rounds: int) -> dict:
    names = [str(f) for f in files]
    predictor.predict(names[:1], return_errors=True)  # warm-up
    best = None
    for _ in range(rounds):
        start = time.perf_counter()
        results, errors = predictor.predict(names, return_errors=True, workers=workers)
        seconds = time.perf_counter() - start
        if best is None or seconds < best["seconds"]:
            best = {"seconds": round(seconds, 2), "photos_per_s": round(len(names) / seconds, 2),
                    "faces": len(results), "photos_with_a_face": len({r["file"] for r in results}),
                    "errors": len(errors)}
    return best


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path("../shared/photos"))
    parser.add_argument("--detectors", nargs="+", default=["yunet", "mtcnn"])
    parser.add_argument("--models", nargs="+", default=[None], metavar="NAME_OR_PATH",
                        help="shipped model names or .keras files, each timed in the same run "
                        "(default: the shipped default)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-slow", action="store_true",
                        help="time MTCNN on the 74 photos only (it takes minutes on the larger folder)")
    parser.add_argument("--libfacedetection", action="store_true",
                        help="also time YuNet run by libfacedetection's C++ (needs the yuface wheel)")
    parser.add_argument("--phone-size", action="store_true",
                        help="also time the photos at 4,032 px, decoded reduced and whole")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here (JSON)")
    args = parser.parse_args(argv)

    from agegender_models import Predictor
    from agegender_models._cache import cpu_description
    from agegender_models.pretrained import list_pretrained

    for ref in args.models:
        if ref and not Path(ref).is_file() and ref not in list_pretrained():
            parser.error(f"--models: {ref} is neither a file nor a shipped model ({', '.join(list_pretrained())})")
    if len(set(args.models)) != len(args.models):
        parser.error("--models: a model is given twice")
    # by name or file, as predict loads them (None: the shipped default)
    models = {ref or "default": ref for ref in args.models}
    cpu = cpu_description()
    photos = photos_in(args.photos)
    result = {"command": "python bench/bench_photos.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "cpu": cpu["model"], "avx512_bf16": cpu["avx512_bf16"], "amx": cpu["amx_bf16"],
              "folders": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {f"{args.photos.name} ({len(photos)} photos)": photos}
        variants = make_variants(photos, Path(tmp))
        folders[f"{len(variants)} photos made from them"] = variants
        if args.phone_size:
            folders[f"{len(photos)} photos at 4,032 px"] = make_phone_size(photos, Path(tmp))
        predictors = {}
        for name, model in models.items():
            prefix = f"{name}, " if len(models) > 1 else ""
            for detector in args.detectors:
                predictors[f"{prefix}{detector}"] = predictor = Predictor(model, detector=detector)
                if args.libfacedetection and detector.startswith("yunet"):
                    old = Predictor(model, detector=detector)
                    old.detector._network = LibfacedetectionYuNet()
                    predictors[f"{prefix}{detector} (libfacedetection)"] = old
            described = predictor.runner.describe()
            result["runtime"] = {**result.get("runtime", {}), name: described} if len(models) > 1 else described
        for label, files in folders.items():
            rows = result["folders"].setdefault(label, {})
            phone = label.endswith("4,032 px")
            for key, predictor in predictors.items():
                if key.endswith("mtcnn") and args.skip_slow and files is not photos:
                    continue
                for workers in (1, 2):
                    rows[f"{key}, {workers} thread(s)"] = row = measure(
                        predictor, files, workers, args.rounds)
                    print(f"{label}: {key}, {workers} thread(s): {row}", flush=True)
                    if phone:
                        with whole_decode():
                            rows[f"{key}, decoded whole, {workers} thread(s)"] = row = measure(
                                predictor, files, workers, args.rounds)
                        print(f"{label}: {key}, decoded whole, {workers} thread(s): {row}", flush=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
