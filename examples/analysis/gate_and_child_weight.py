"""Two three-seed ensembles compared on the validation split, each blended with read-outs of dlib's
face descriptor and each with the blend's gate chosen for it, cross-fitted so that the choice does
not count itself (results/NOTEBOOK.md, "The child weight and the blend's gate chosen together").

    python examples/analysis/gate_and_child_weight.py \
        --baseline runs/mnv2_train_deg01_s0/model.keras ... --candidate runs/mnv2_train_deg01_cgw3_s0/model.keras ... \
        --face-api package/model --data-dir ../shared/utkface/crop_part1_5000 \
        --splits results/model_a/splits > results/.../gate_and_child_weight.json

Read-outs are fitted on the training split with ``fit-readouts``' defaults; each ensemble's
outputs are averaged and then blended, as the shipped model does. Gate grid GATE_AGE x GATE_WIDTH.
The validation split is cut into two halves stratified by age group and gender (seed 0); on each
half the gate is the one chosen on the other (most images right; ties: the nearest to the
default), and the images right are summed over both halves. Writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

GATE_AGE = (6, 8, 10, 12, 14)
GATE_WIDTH = (1, 2, 4, 6)


def halves(strata: np.ndarray, seed: int = 0) -> np.ndarray:
    """0/1 per row: two halves with each stratum split as evenly as it can be."""
    rng = np.random.default_rng(seed)
    half = np.zeros(len(strata), dtype=int)
    for value in np.unique(strata):
        rows = rng.permutation(np.flatnonzero(strata == value))
        half[rows[len(rows) // 2:]] = 1
    return half


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag in ("--baseline", "--candidate"):
        parser.add_argument(flag, type=Path, nargs="+", required=True)
    for flag in ("--face-api", "--data-dir", "--splits"):
        parser.add_argument(flag, type=Path, required=True)
    args = parser.parse_args(argv)

    import utkface_data
    from agegender.evaluation import predict_frame
    from agegender.readouts import (
        DEFAULTS,
        age_readout,
        descriptor_features,
        fit_readouts,
        gender_blend,
    )
    from agegender_models import load_model
    from agegender_models.face_descriptor import face_descriptor_model

    frames = {s: utkface_data.load_split_file(args.splits / f"{s}.csv", root=args.data_dir)
              for s in ("train", "val")}
    own, sizes = {}, set()
    for name, paths in (("baseline", args.baseline), ("candidate", args.candidate)):
        members = []
        for path in paths:
            model = load_model(path)
            sizes.add(size := int(model.inputs[0].shape[1]))
            members.append(predict_frame(model, frames["val"], args.data_dir, image_size=size))
        own[name] = members
    if len(sizes) > 1:  # the descriptor's features are read once, at the models' one input size
        parser.error(f"every model must take one input size. Received: {sorted(sizes)}")
    descriptor = face_descriptor_model(args.face_api)
    features = {s: descriptor_features(descriptor, f, args.data_dir, image_size=size)
                for s, f in frames.items()}
    train = frames["train"]
    readouts = fit_readouts(features["train"], train["gender"].to_numpy(), train["age"].to_numpy())
    coef, intercept = readouts["gender"]
    p_descriptor = 1 / (1 + np.exp(-(features["val"] @ coef + intercept)))
    age_descriptor = age_readout(readouts["age"], features["val"])

    val = frames["val"]
    gender, age = val["gender"].to_numpy(), val["age"].to_numpy(dtype=float)
    group = utkface_data.age_group(val["age"].to_numpy())
    half = halves(np.asarray([f"{g}/{s}" for g, s in zip(group, gender, strict=True)]))
    grid = list(itertools.product(GATE_AGE, GATE_WIDTH))
    default = (DEFAULTS["gate_age"], DEFAULTS["gate_width"])

    def right(p_own, age_own, gate) -> np.ndarray:
        p = gender_blend(p_own, p_descriptor, age_own, gate_age=gate[0], gate_width=gate[1])
        return (p > 0.5) == gender

    def counts(ok: np.ndarray) -> dict[str, int]:
        return {"all": int(ok.sum()), **{g: int(ok[group == g].sum()) for g in utkface_data.AGE_GROUPS}}

    def choose(p_own, age_own, rows: np.ndarray) -> tuple[float, float]:
        return max(grid, key=lambda g: (right(p_own, age_own, g)[rows].sum(),
                                        -abs(g[0] - default[0]) - abs(g[1] - default[1])))

    out: dict = {"gate_grid": {"gate_age": GATE_AGE, "gate_width": GATE_WIDTH},
                 "halves": [int((half == h).sum()) for h in (0, 1)],
                 "images": {"all": len(val), **{g: int((group == g).sum())
                                                 for g in utkface_data.AGE_GROUPS}}}
    for name, members in own.items():
        p_own = np.mean([m["p_female"] for m in members], axis=0)
        age_own = np.mean([m["age"] for m in members], axis=0)
        blended_age = np.clip(age_own + DEFAULTS["age_weight"] * (age_descriptor - age_own), 0, 120)
        crossed = np.zeros(len(val), dtype=bool)
        chosen_on_half = []
        for h in (0, 1):
            gate = choose(p_own, age_own, half != h)
            chosen_on_half.append(gate)
            crossed[half == h] = right(p_own, age_own, gate)[half == h]
        whole = choose(p_own, age_own, np.ones(len(val), dtype=bool))
        out[name] = {
            "models": [str(p) for p in (args.baseline if name == "baseline" else args.candidate)],
            "cross_fitted": counts(crossed),
            "gates_chosen_on_the_other_half": chosen_on_half,
            "gate_chosen_on_all": whole,
            "at_gate_chosen_on_all": counts(right(p_own, age_own, whole)),
            "at_default_gate": counts(right(p_own, age_own, default)),
            "alone": counts((p_own > 0.5) == gender),
            "age_mae_blended": round(float(np.abs(blended_age - age).mean()), 3),
            "grid": [{"gate_age": g[0], "gate_width": g[1], **counts(right(p_own, age_own, g))}
                     for g in grid],
        }
    gate = tuple(out["candidate"]["gate_chosen_on_all"])
    out["seed_pairs_at_candidate_gate"] = [
        {"baseline": counts(right(b["p_female"], b["age"], gate)),
         "candidate": counts(right(c["p_female"], c["age"], gate))}
        for b, c in zip(own["baseline"], own["candidate"], strict=True)]
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
