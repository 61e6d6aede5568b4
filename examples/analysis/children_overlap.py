"""Children under 10 on the test split, image by image: which of them each run gets wrong (gender).

    TF_CPP_MIN_LOG_LEVEL=3 python examples/analysis/children_overlap.py > results/ensembles/children_overlap.json

Run from the repository root (every path here is relative to it). Needs the trained run folders
named below (runs/ is not committed). No TTA.
"""
import json

import numpy as np

from agegender.evaluation import predict_frame
from agegender_models import load_model
from utkface_data import load_split_file

root = "../shared/utkface/crop_part1_5000"
frame = load_split_file("results/model_a/splits/test.csv", root=root)
runs = {"A": ("runs/model_a_d025/model.keras", 128), "MN-60": ("runs/mnv2_192/model.keras", 192),
        "MN-100": ("runs/mnv2_192_t100/model.keras", 192), "MN-224": ("runs/mnv2_224/model.keras", 224),
        "MN-EMA": ("runs/mnv2_192_ema/model.keras", 192)}
wrong = {}
for name, (path, size) in runs.items():
    out = predict_frame(load_model(path), frame, root, image_size=size)
    wrong[name] = (out["p_female"] > 0.5).astype(int) != frame["gender"].to_numpy()
kids = frame["age"].to_numpy() < 10
res = {"n_under_10": int(kids.sum())}
for group, names in {"MobileNetV2 runs": ["MN-60", "MN-100", "MN-224", "MN-EMA"], "all five": list(runs)}.items():
    w = np.stack([wrong[n][kids] for n in names])
    res[group] = {"wrong_by_each": {n: int(wrong[n][kids].sum()) for n in names},
                  "wrong_by_all": int(w.all(0).sum()), "wrong_by_any": int(w.any(0).sum()),
                  # wrong in more than half of the runs (a tie is not counted)
                  "wrong_by_majority": int((w.sum(0) > len(names) / 2).sum())}
print(json.dumps(res, indent=1))
