"""Cold start: how long one photo takes from a new process to its answer, as a user waits for it.

    python bench/bench_cold_start.py --photo ../shared/photos/fr_obama.jpg --rounds 5 \\
        [--arm old=/path/to/worktree] [--out bench/bench_cold_start.json]

Each arm runs, in a new process, ``python -m agegender.cli predict PHOTO --json`` (the shipped
default model and detector) and ``python -c "from agegender_models import Predictor; ..."`` (the
library, ``Predictor(detector="auto").predict(PHOTO)``), timed from start to exit. The arm
``new`` is the code installed here; ``--arm NAME=WORKTREE`` adds one whose packages come from
another checkout (its four ``packages/*/src`` first on ``PYTHONPATH``), e.g. a ``git worktree``
of an earlier commit. One untimed run per arm and command first fills the runtime cache (the
first run on a machine times the model's runtimes, once); then the arms alternate, ``--rounds``
times, so load from other processes hits them alike. Prints medians and writes ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# answers rounded as predict --json rounds them: the arms' runtimes may differ in the last digits
LIBRARY = ("import sys; from agegender_models import Predictor; "
           "print([(r['box'], r['gender'], round(r['age'], 1), round(r['p_female'], 3)) "
           "for r in Predictor(detector='auto').predict(sys.argv[1])])")


def commands(photo: str) -> dict[str, list[str]]:
    return {"agegender predict PHOTO --json": [sys.executable, "-m", "agegender.cli", "predict",
                                                photo, "--json"],
            "Predictor(detector='auto').predict(PHOTO)": [sys.executable, "-c", LIBRARY, photo]}


def arm_env(worktree: str | None) -> dict[str, str]:
    env = {**os.environ}
    if worktree:
        sources = [str(p) for p in sorted(Path(worktree, "packages").glob("*/src"))]
        env["PYTHONPATH"] = os.pathsep.join(sources + [env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", default="../shared/photos/fr_obama.jpg")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--arm", action="append", default=[], metavar="NAME=WORKTREE",
                        help="another checkout to compare with the installed code (repeatable)")
    parser.add_argument("--out", help="write the figures here (JSON)")
    args = parser.parse_args()
    arms = {"new": arm_env(None)}
    for item in args.arm:
        name, _, worktree = item.partition("=")
        if not Path(worktree, "packages").is_dir():
            raise SystemExit(f"--arm {item}: {worktree} is not a checkout of this project")
        arms[name] = arm_env(worktree)
    runs = commands(args.photo)
    seconds: dict[str, dict[str, list[float]]] = {c: {a: [] for a in arms} for c in runs}
    answers: dict[str, dict[str, str]] = {c: {} for c in runs}
    for label, command in runs.items():  # untimed: fills each arm's runtime cache
        for arm, env in arms.items():
            answers[label][arm] = timed(command, env)[1]
    names = list(arms)
    for r in range(args.rounds):
        for label, command in runs.items():
            for arm in names[r % len(names):] + names[:r % len(names)]:
                seconds[label][arm].append(round(timed(command, arms[arm])[0], 3))
    medians = {c: {a: round(statistics.median(v), 2) for a, v in s.items()} for c, s in seconds.items()}
    for label in runs:
        row = ", ".join(f"{a} {m:.2f} s" for a, m in medians[label].items())
        print(f"{label}: {row} (median of {args.rounds})")
    from agegender_models._cache import cpu_description

    cpu = cpu_description()
    report = {"command": "python " + " ".join(sys.argv), "cpu": cpu["model"],
              "avx512_bf16": cpu["avx512_bf16"], "amx": cpu["amx_bf16"], "photo": args.photo,
              "date": time.strftime("%Y-%m-%d %H:%M"), "rounds": args.rounds,
              "median_s": medians, "seconds": seconds,
              "same_answers": {c: len(set(a.values())) == 1 for c, a in answers.items()},
              "arms": {a: e.get("PYTHONPATH", "installed") for a, e in arms.items()}}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
