"""Does a gender threshold other than 0.5, chosen on the validation split, help on the test split?

    agegender evaluate --model M [--model M2] --flip-tta --split results/model_a/splits/val.csv --out runs/eval/NAME_val ...
    agegender evaluate ... --split results/model_a/splits/test.csv --out runs/eval/NAME_test ...
    python examples/analysis/threshold_check.py NAME [NAME ...] > results/ensembles/threshold_check.json

Run from the repository root (every path here is relative to it). Reads the two predictions.csv
files per NAME (runs/ is not committed). Thresholds 0.20-0.80 in steps of 0.02; one for all images,
and one per *predicted* age group (the true age is unknown at inference). The threshold with the
best validation accuracy is then applied to the test split.
"""
import json
import sys

import numpy as np
import pandas as pd

GRID = np.round(np.arange(0.20, 0.801, 0.02), 2)
GROUPS = {"under 10": (0, 10), "10-17": (10, 18), "18+": (18, np.inf)}


def accuracy(frame: pd.DataFrame, threshold: float) -> float:
    return float(((frame["p_female"] > threshold).astype(int) == frame["gender"]).mean())


def per_group(frame: pd.DataFrame, thresholds: dict[str, float]) -> float:
    correct = 0
    for name, (lo, hi) in GROUPS.items():
        part = frame[(frame["age_pred"] >= lo) & (frame["age_pred"] < hi)]
        correct += accuracy(part, thresholds[name]) * len(part) if len(part) else 0
    return correct / len(frame)


def best(frame: pd.DataFrame) -> float:
    # the grid point nearest 0.5 among the best, so a flat curve keeps the usual threshold
    return float(max(GRID, key=lambda t: (accuracy(frame, t), -abs(t - 0.5))))


result = {}
for name in sys.argv[1:]:
    val = pd.read_csv(f"runs/eval/{name}_val/predictions.csv")
    test = pd.read_csv(f"runs/eval/{name}_test/predictions.csv")
    one = best(val)
    groups = {g: best(val[(val["age_pred"] >= lo) & (val["age_pred"] < hi)]) for g, (lo, hi) in GROUPS.items()}
    result[name] = {
        "threshold_0.5": {"val": accuracy(val, 0.5), "test": accuracy(test, 0.5)},
        "one_threshold": {"threshold": one, "val": accuracy(val, one), "test": accuracy(test, one)},
        "per_predicted_age_group": {"thresholds": groups, "val": per_group(val, groups),
                                    "test": per_group(test, groups)},
    }
print(json.dumps(result, indent=1))
