"""The gender threshold that gives women and men the same recall, and what it does, on a
predictions CSV (``agegender evaluate``'s predictions.csv, or ``bench/eval_split_detect.py
--predictions``).

    agegender evaluate --model runs/replica3d_train/model.keras --data-dir ../shared/utkface/crop_part1_5000 \\
        --split results/model_a/splits/val.csv --out runs/val_replica3d
    python examples/analysis/balanced_threshold.py runs/val_replica3d/predictions.csv [--at 0.535]

Thresholds 0.30-0.70 in steps of 0.005; t* is the one with the smallest |recall(women) -
recall(men)| (ties: nearest 0.5). Prints, as JSON, each listed threshold's accuracy (images
right), recall of women and men, and the same under 10 and for 18+ (session 16's rule, notebook).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

GRID = np.round(np.arange(0.30, 0.70 + 1e-9, 0.005), 3)


def figures(frame: pd.DataFrame, threshold: float) -> dict:
    def part(f: pd.DataFrame) -> dict:
        said = (f["p_female"] > threshold).astype(int)
        women, men = f["gender"] == 1, f["gender"] == 0
        return {"images": len(f), "right": int((said == f["gender"]).sum()),
                "recall_women": round(float((said[women] == 1).mean()), 4),
                "recall_men": round(float((said[men] == 0).mean()), 4)}
    return {"threshold": threshold, "all": part(frame), "under 10": part(frame[frame["age"] < 10]),
            "18+": part(frame[frame["age"] >= 18])}


def balanced(frame: pd.DataFrame) -> float:
    def gap(t):
        f = figures(frame, t)["all"]
        return abs(f["recall_women"] - f["recall_men"]), abs(t - 0.5)
    return float(min(GRID, key=gap))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", help="CSV with columns age, gender (0 male, 1 female), p_female")
    parser.add_argument("--at", type=float, action="append", default=[], help="also report this threshold")
    args = parser.parse_args(argv)
    frame = pd.read_csv(args.predictions)
    best = balanced(frame)
    out = {"predictions": args.predictions, "balanced_threshold": best,
           "figures": [figures(frame, t) for t in sorted({0.5, best, *args.at})]}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
