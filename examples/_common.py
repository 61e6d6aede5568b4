"""Shared glue for the reproduction examples (argument parsing, data folder, seed-format output)."""

from __future__ import annotations

import argparse
import sys

from agegender.cli import add_train_arguments, config_from_args, run_or_exit
from agegender.evaluation import format_summary

DATA_HELP = (
    "no UTKFace folder given: pass --data-dir DIR or set UTKFACE_DIR. UTKFace (non-commercial "
    "research licence) is at https://susanqq.github.io/UTKFace/ ; the 'crop_part1' archive of "
    "aligned and cropped faces is what the seed used."
)


def run(description: str, *, backbone: str, seed_numbers: dict[str, float], **overrides) -> int:
    parser = argparse.ArgumentParser(description=description)
    add_train_arguments(parser, backbone=backbone)
    parser.set_defaults(**overrides)
    args = parser.parse_args()
    if not args.data_dir:
        print(f"error: {DATA_HELP}", file=sys.stderr)
        return 2
    return run_or_exit(_train_and_report, args, seed_numbers, prog=sys.argv[0])


def _train_and_report(args: argparse.Namespace, seed_numbers: dict[str, float]) -> int:
    from agegender.training import train

    metrics = train(config_from_args(args), verbose=0 if args.quiet else "auto")
    print(format_summary(metrics))
    val = metrics.get("validation")  # absent after a final fit on train+val
    if val is not None:
        print(f"Validation Accuracy for Gender Classification: {val['gender_accuracy']:.3f} "
              f"(seed reported {seed_numbers['gender_accuracy']})")
        print(f"Validation MAE for Age Estimation: {val['age_mae']:.2f} "
              f"(seed reported {seed_numbers['age_mae']})")
    print(f"run folder: {args.out}")
    return 0
