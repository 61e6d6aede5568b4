"""Shared glue for the reproduction examples: a recipe, the data folder, the seed's output lines."""

from __future__ import annotations

import argparse
import sys

from agegender.cli import add_train_arguments, run_or_exit, train_from_args


def run(description: str, *, recipe: str, seed_numbers: dict[str, float]) -> int:
    """Train ``recipe`` (any ``agegender train`` flag overrides it) and print the seed's lines."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser, recipe=recipe)
    args = parser.parse_args()
    return run_or_exit(_train_and_report, args, seed_numbers, prog=sys.argv[0])


def _train_and_report(args: argparse.Namespace, seed_numbers: dict[str, float]) -> int:
    metrics = train_from_args(args)
    val = metrics.get("validation")  # absent after a final fit on train+val
    if val is not None:
        print(f"Validation Accuracy for Gender Classification: {val['gender_accuracy']:.3f} "
              f"(seed reported {seed_numbers['gender_accuracy']})")
        print(f"Validation MAE for Age Estimation: {val['age_mae']:.2f} "
              f"(seed reported {seed_numbers['age_mae']})")
    return 0
