"""What the sideways-photo search costs on upright photos: the photo path with YuNet's
``turn_below`` at its default (0.9) against ``None`` (never turned), in one run, alternating.

    python bench/bench_turn_search.py --photos ../shared/photos [--rounds 3] --out OUT.json

On the photos of the folder and on the few hundred made from them (``bench_photos.py``'s
variants: mirrored, 2,000 px, 640 px), each round times ``Predictor().predict`` once per setting
(2 reading threads; model and detectors loaded and warmed before); the best round of each is
kept. Also counts the photos the search runs on (best face under ``turn_below``) and those it
turns.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench_photos import make_variants, measure, photos_in


def _searched_and_turned(files: list[Path], detector) -> tuple[int, int]:
    from agegender_models.imageio import read_image

    turns = [detector.detect_faces_turned(read_image(f))[1] for f in files]
    return sum(t is not None for t in turns), sum(bool(t) for t in turns)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path("../shared/photos"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from agegender_models import Predictor, load_pretrained
    from agegender_models._cache import cpu_description
    from agegender_models.detect import get_detector

    model = load_pretrained()
    detectors = {"turn_below=0.9 (default)": get_detector("yunet-onet"),
                 "turn_below=None": get_detector("yunet-onet", turn_below=None)}
    predictors = {k: Predictor(model, detector=d) for k, d in detectors.items()}
    photos = photos_in(args.photos)
    cpu = cpu_description()
    out = {"command": "python " + " ".join(sys.argv), "rounds": args.rounds, "cpu": cpu["model"],
           "avx512_bf16": cpu["avx512_bf16"], "amx": cpu["amx_bf16"],
           "runtime": predictors["turn_below=None"].runner.describe(), "folders": {}}
    with tempfile.TemporaryDirectory() as tmp:
        made = make_variants(photos, Path(tmp))
        for label, files in ((f"{len(photos)} photos", photos), (f"{len(made)} photos made from them", made)):
            best: dict[str, dict] = {}
            for _ in range(args.rounds):
                for name, predictor in predictors.items():
                    got = measure(predictor, files, workers=2, rounds=1)
                    if name not in best or got["seconds"] < best[name]["seconds"]:
                        best[name] = got
            searched, turned = _searched_and_turned(files, detectors["turn_below=0.9 (default)"])
            out["folders"][label] = {
                "photos": len(files), "searched": searched, "turned": turned, **best}
            print(label, {k: v["photos_per_s"] for k, v in best.items()}, "searched", searched,
                  "turned", turned, file=sys.stderr)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
