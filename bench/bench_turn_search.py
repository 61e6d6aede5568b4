"""What the sideways-photo search costs on upright photos: the photo path with YuNet's
``turn_below`` at its default (0.9) against ``None`` (never turned), in one run, alternating.

    python bench/bench_turn_search.py --photos ../shared/photos [--rounds 3] --out OUT.json

Each round times ``Predictor().predict`` on every photo of the folder once per setting (model
and detectors loaded and warmed before); the best round of each is kept, as photos per second.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


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
    files = sorted(str(p) for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    settings = {"turn_below=0.9 (default)": 0.9, "turn_below=None": None}
    predictors = {k: Predictor(model, detector=get_detector("yunet-onet", turn_below=t)) for k, t in settings.items()}
    for predictor in predictors.values():
        predictor.predict(files[:4], return_errors=True)
    best = dict.fromkeys(settings, float("inf"))
    for _ in range(args.rounds):
        for name, predictor in predictors.items():
            started = time.perf_counter()
            predictor.predict(files, return_errors=True)
            best[name] = min(best[name], time.perf_counter() - started)
    cpu = cpu_description()
    out = {"command": "python " + " ".join(sys.argv), "photos": len(files), "rounds": args.rounds,
           "cpu": cpu["model"], "avx512_bf16": cpu["avx512_bf16"], "amx": cpu["amx_bf16"],
           "photos_per_s": {k: round(len(files) / s, 1) for k, s in best.items()}}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["photos_per_s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
