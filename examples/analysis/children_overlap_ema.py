"""Children under 10 on the test split: which of them each of the five `--ema` runs gets wrong
(gender, flip TTA), from the per-image predictions that `agegender evaluate` wrote.

    python examples/analysis/children_overlap_ema.py > results/ensembles/children_overlap_ema.json

Run from the repository root (every path here is relative to it). Needs the evaluation folders
named below (runs/ is not committed; the commands are in results/NOTEBOOK.md).
Also checks that the five-run ensemble's P(female) is the mean of its members' (it should be: the
ensemble and flip TTA both average).
"""
import json

import numpy as np
import pandas as pd

members = {"MN-EMA": "mnema", "MN-EMA-s1": "mnema40", "MN-EMA-s2": "mnema40s2",
           "MN-EMA-acc-s3": "mnema_acc_s3", "MN-EMA-acc-s4": "mnema_acc_s4"}


def load(name: str) -> pd.DataFrame:
    return pd.read_csv(f"runs/eval/{name}_tta_test/predictions.csv").set_index("path").sort_index()


frames = {label: load(name) for label, name in members.items()}
ensemble = load("mnema_x5")
assert all(f.index.equals(ensemble.index) for f in frames.values()), "the runs predicted other images"
truth = ensemble["gender"].to_numpy()
kids = ensemble["age"].to_numpy() < 10


def wrong_of(frame: pd.DataFrame) -> np.ndarray:
    # predicted female when p_female > 0.5, the rule of agegender_eval.gender_metrics
    return (frame["p_female"].to_numpy() > 0.5).astype(int) != truth


wrong = {label: wrong_of(f) for label, f in frames.items()}
w = np.stack([wrong[label][kids] for label in members])
mean_p = np.mean([f["p_female"].to_numpy() for f in frames.values()], axis=0)
print(json.dumps({
    "n_under_10": int(kids.sum()),
    "wrong_by_each": {label: int(wrong[label][kids].sum()) for label in members},
    "wrong_by_all": int(w.all(0).sum()),
    "wrong_by_any": int(w.any(0).sum()),
    "wrong_by_more_than_half": int((w.sum(0) > len(members) / 2).sum()),
    "wrong_by_ensemble": int(wrong_of(ensemble)[kids].sum()),
    "max_abs_ensemble_minus_member_mean": float(np.abs(ensemble["p_female"].to_numpy() - mean_p).max()),
}, indent=2))
