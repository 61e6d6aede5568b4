"""Train several registered backbones on the same split with the same budget and compare them.

    python examples/compare_backbones.py --data-dir DIR --out runs/compare \
        --backbones custom_cnn mobilenet_v2 mobilenet_v3_small \
        --weights-for mobilenet_v2=../shared/weights/mobilenet_v2_1.0_224_no_top_tfslim.weights.h5

With ``--warmup-epochs N`` the backbones given pretrained weights follow the transfer recipe
(frozen backbone for N epochs, then fine-tuning); the others train as usual.

Writes ``OUT/splits/`` (shared by every backbone), one run folder per backbone, and
``OUT/comparison.md`` / ``OUT/comparison.csv`` / ``OUT/comparison.png`` (test split, overall and by
age group).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from agegender.cli import add_train_arguments, config_from_args, run_or_exit, setup


def _weights(pairs: list[str]) -> dict[str, str]:
    found = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: --weights-for expects BACKBONE=PATH_OR_imagenet. Received: {pair!r}")
        found[name] = value
    return found


def comparison_rows(runs: dict[str, dict]) -> list[dict]:
    rows = []
    for backbone, metrics in runs.items():
        test = metrics["test"]
        row = {
            "backbone": backbone,
            "epochs": metrics["epochs_run"],
            "wall_s": metrics["wall_s_this_session"],
            "gender_acc": test["gender_accuracy"],
            "age_mae": test["age_mae"],
            "cs5": test["age_cs"]["5"],
        }
        for group, values in test["by_group"].get("age_group", {}).items():
            row[f"gender_acc[{group}]"] = values["gender_accuracy"]
            row[f"age_mae[{group}]"] = values["age_mae"]
        rows.append(row)
    return rows


def markdown_table(table) -> str:
    """A GitHub Markdown table (floats to 3 decimals) without extra dependencies."""
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in table.itertuples(index=False)]
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    parser.add_argument("--backbones", nargs="+", default=["custom_cnn", "mobilenet_v2", "mobilenet_v3_small"])
    parser.add_argument("--weights-for", nargs="*", default=[], metavar="BACKBONE=WEIGHTS",
                        help="weights per backbone (a file or 'imagenet'); others use --weights")
    args = parser.parse_args()
    return run_or_exit(compare, args, prog=sys.argv[0])


def compare(args: argparse.Namespace) -> int:
    import pandas as pd

    per_backbone = _weights(args.weights_for)
    base = config_from_args(args)
    dataclasses.replace(base, warmup_epochs=0).validate()  # the warm-up is checked per backbone
    setup(args)
    from agegender.data import prepare_splits
    from agegender.training import train

    out = Path(base.out)
    prepare_splits(base, out)  # one split for every backbone
    runs = {}
    for backbone in args.backbones:
        weights = per_backbone.get(backbone, base.weights)
        config = dataclasses.replace(
            base, backbone=backbone, out=str(out / backbone), splits=str(out / "splits"),
            weights=weights,
            # the transfer recipe's frozen warm-up only means something with pretrained weights
            warmup_epochs=base.warmup_epochs if weights is not None else 0,
        )
        print(f"== {backbone}", flush=True)
        runs[backbone] = train(config, verbose=0 if args.quiet else "auto")

    table = pd.DataFrame(comparison_rows(runs))
    table.to_csv(out / "comparison.csv", index=False)
    (out / "comparison.md").write_text(markdown_table(table))
    print(table.to_string(index=False))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_mae) = plt.subplots(1, 2, figsize=(11, 4))
    groups = ["overall"] + [c[len("age_mae["):-1] for c in table.columns if c.startswith("age_mae[")]
    width = 0.8 / max(1, len(table))
    for i, row in table.iterrows():
        acc = [row["gender_acc"]] + [row[f"gender_acc[{g}]"] for g in groups[1:]]
        mae = [row["age_mae"]] + [row[f"age_mae[{g}]"] for g in groups[1:]]
        xs = [j + i * width for j in range(len(groups))]
        ax_acc.bar(xs, acc, width, label=row["backbone"])
        ax_mae.bar(xs, mae, width, label=row["backbone"])
    for ax, title in ((ax_acc, "Gender accuracy (test)"), (ax_mae, "Age MAE, years (test)")):
        ax.set_xticks([j + width * (len(table) - 1) / 2 for j in range(len(groups))], groups)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=110)
    print(f"comparison: {out / 'comparison.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
