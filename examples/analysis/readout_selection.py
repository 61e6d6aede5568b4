"""How `agegender fit-readouts`' defaults were chosen: on the validation split, with a model and
read-outs that never saw it.

    agegender train --recipe mobilenet-v2-transfer --data-dir ../shared/utkface/crop_part1_5000 \
        --splits results/model_a/splits --seed 0 --out runs/mnv2_trainonly
    python examples/analysis/readout_selection.py --model runs/mnv2_trainonly/model.keras \
        --face-api package/model --data-dir ../shared/utkface/crop_part1_5000 \
        --splits results/model_a/splits > results/mobilenet_v2_192_ema_rerun_s0_readouts/selection.json

Read-outs of dlib's face descriptor fitted on the training split (gender: logistic regression with
C in GENDER_C; age: a one-hidden-layer network of AGE_HIDDEN units, 0 = ridge, with L2 alpha in
AGE_ALPHA), blended with the model's own predictions on the validation split for every (gate age,
gate width) and age weight of the grids; writes every candidate's validation figures and the best
(gender accuracy; age MAE), as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

GENDER_C = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
GATE_AGE = (6, 8, 10, 12, 14, 16, 18, 20)
GATE_WIDTH = (1, 2, 4, 6, 8)
AGE_HIDDEN = (0, 64, 256)
AGE_ALPHA = (0.3, 1.0, 3.0, 10.0, 100.0)
AGE_WEIGHT = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--model", "--face-api", "--data-dir", "--splits"):
        parser.add_argument(flag, type=Path, required=True)
    args = parser.parse_args(argv)

    import utkface_data
    from agegender.evaluation import predict_frame
    from agegender.readouts import age_readout, descriptor_features, fit_readouts, gender_blend
    from agegender_models import load_model
    from agegender_models.face_descriptor import face_descriptor_model

    model = load_model(args.model)
    size = int(model.inputs[0].shape[1])
    descriptor = face_descriptor_model(args.face_api)
    frames = {s: utkface_data.load_split_file(args.splits / f"{s}.csv", root=args.data_dir)
              for s in ("train", "val")}
    features = {s: descriptor_features(descriptor, f, args.data_dir, image_size=size)
                for s, f in frames.items()}
    own = predict_frame(model, frames["val"], args.data_dir, image_size=size)
    gender, age = frames["val"]["gender"].to_numpy(), frames["val"]["age"].to_numpy(dtype=float)
    train_gender, train_age = frames["train"]["gender"].to_numpy(), frames["train"]["age"].to_numpy()

    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    rows = []
    for c in GENDER_C:
        coef, intercept = fit_readouts(features["train"], train_gender, train_age, gender_c=c)["gender"]
        p_descriptor = sigmoid(features["val"] @ coef + intercept)
        for gate_age, gate_width in itertools.product(GATE_AGE, GATE_WIDTH):
            p = gender_blend(own["p_female"], p_descriptor, own["age"], gate_age=gate_age,
                             gate_width=gate_width)
            rows.append({"gender_c": c, "gate_age": gate_age, "gate_width": gate_width,
                         "gender_accuracy": round(float(((p > 0.5) == gender).mean()), 4)})
    ages = []
    for hidden, alpha in itertools.product(AGE_HIDDEN, AGE_ALPHA):
        stack = fit_readouts(features["train"], train_gender, train_age, age_hidden=hidden,
                             age_alpha=alpha)["age"]
        age_descriptor = age_readout(stack, features["val"])
        for weight in AGE_WEIGHT:
            blended = np.clip(own["age"] + weight * (age_descriptor - own["age"]), 0, 120)
            ages.append({"age_hidden": hidden, "age_alpha": alpha, "age_weight": weight,
                         "age_mae": round(float(np.abs(blended - age).mean()), 3)})
    best_gender = max(rows, key=lambda r: r["gender_accuracy"])
    best_age = min(ages, key=lambda r: r["age_mae"])
    json.dump({"model": str(args.model), "validation_images": len(gender),
               "model_alone": {"gender_accuracy": round(float(((own["p_female"] > 0.5) == gender).mean()), 4),
                               "age_mae": round(float(np.abs(own["age"] - age).mean()), 3)},
               "best_gender": best_gender, "best_age": best_age,
               "gender_candidates": sorted(rows, key=lambda r: -r["gender_accuracy"]),
               "age_candidates": sorted(ages, key=lambda r: r["age_mae"])}, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
