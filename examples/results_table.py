"""Print a run folder's results as Markdown: overall and by age group, validation and test.

    python examples/results_table.py runs/model_a_improved [runs/other ...]

Reads ``metrics.json`` and ``config.json`` of each run folder written by
``agegender train`` / ``examples/reproduce_*.py``; nothing is recomputed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from utkface_data import AGE_GROUPS

GROUP_ORDER = tuple(AGE_GROUPS)  # the reporting groups, in order


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def run_table(run: Path) -> str:
    metrics = json.loads((run / "metrics.json").read_text())
    config = json.loads((run / "config.json").read_text())
    lines = [
        f"### `{run.name}` — backbone `{metrics['backbone']}`",
        "",
        f"epochs run {metrics['epochs_run']} (best epoch {metrics.get('best_epoch')}), precision "
        f"{config['precision']}, split sizes {config['split_sizes']}, dataset fingerprint "
        f"`{config['dataset_fingerprint'][:12]}…`",
        "",
        "| split | group | n | gender accuracy | age MAE | age RMSE | CS@5 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for split in ("validation", "test"):
        result = metrics[split]
        rows = [("overall", result)]
        groups = result["by_group"].get("age_group", {})
        rows += [(g, groups[g]) for g in GROUP_ORDER if g in groups]
        for name, values in rows:
            lines.append(
                f"| {split} | {name} | {values['n']} | {_fmt(values['gender_accuracy'], 3)} | "
                f"{_fmt(values['age_mae'], 2)} | {_fmt(values.get('age_rmse'), 2)} | "
                f"{_fmt(values['age_cs']['5'], 3)} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    args = parser.parse_args(argv)
    for run in args.runs:
        missing = [name for name in ("metrics.json", "config.json") if not (run / name).is_file()]
        if missing:
            print(f"error: {run} has no {' or '.join(missing)} (not a finished run folder)", file=sys.stderr)
            return 2
        print(run_table(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
