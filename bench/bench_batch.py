"""Batch prediction: `agegender predict-batch` (Ray Data, local runner) against `agegender predict`.

    TF_CPP_MIN_LOG_LEVEL=3 python bench/bench_batch.py --data-dir ../shared/utkface/crop_part1_5000 \\
        [--model RUN/model.keras] [--counts 200 1000] [--detect-counts 60 180]

Each command runs as a user runs it (a new process, wall time from start to exit, start-up
included) on the first N images of the folder (sorted names), both on Keras
(``AGEGENDER_RUNTIME=keras`` for predict). Two counts per setup give the steady rate
``(N2 - N1) / (t2 - t1)`` and the fixed start-up cost ``t1 - N1 / rate`` (Python, TensorFlow,
Ray and its workers, the model). Chips are predicted as they are (``--detect none``); the
``--detect-counts`` rows find the faces with MTCNN first. Without ``--model`` a fresh Model A
(``custom_cnn``, 128 px, random weights: the same work per image) is used. Prints Markdown and
writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _images(data_dir: Path, n: int, folder: Path) -> Path:
    """A folder of links to the first ``n`` images (the same files for every command)."""
    if folder.is_dir():
        return folder
    folder.mkdir(parents=True)
    for path in sorted(data_dir.glob("*.jpg"))[:n]:
        (folder / path.name).symlink_to(path.resolve())
    return folder


def _timed(command: list[str]) -> float:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "AGEGENDER_RUNTIME": "keras"}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    seconds = time.perf_counter() - started
    if result.returncode not in (0, 1):  # 1: some inputs gave no result (no face found)
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return seconds


def _setups(model: str, detect: str) -> dict[str, Callable[[Path, Path], list[str]]]:
    cli = [sys.executable, "-m", "agegender.cli"]

    def predict(images: Path, out: Path) -> list[str]:
        return [*cli, "predict", "--model", model, "--detect", detect, "--json", str(images)]

    def batch(workers: int):
        def command(images: Path, out: Path) -> list[str]:
            return [*cli, "predict-batch", str(images), "--model", model, "--detect", detect,
                    "--out", str(out), "--workers", str(workers)]
        return command

    return {"agegender predict": predict, "predict-batch, 1 worker": batch(1),
            "predict-batch, 2 workers": batch(2)}


def measure(model: str, data_dir: Path, counts: list[int], detect: str, scratch: Path,
            rounds: int) -> list[dict]:
    """Every setup on both counts, interleaved, ``rounds`` times; the fastest time of each kept
    (the machine is shared: the other jobs only ever slow a run down)."""
    setups = _setups(model, detect)
    times: dict[tuple[str, int], list[float]] = {(name, n): [] for name in setups for n in counts}
    for _ in range(rounds):
        for n in counts:
            images = _images(data_dir, n, scratch / f"{detect}-{n}")
            for name, command in setups.items():
                times[name, n].append(_timed(command(images, scratch / f"out-{detect}-{n}")))
    rows = []
    for name in setups:
        seconds = [min(times[name, n]) for n in counts]
        (n1, n2), (t1, t2) = counts, seconds
        rate = (n2 - n1) / (t2 - t1) if t2 > t1 else float("nan")
        rows.append({"setup": name, "detect": detect, "counts": counts, "rounds": rounds,
                     "seconds": [round(t, 1) for t in seconds],
                     "all_seconds": {str(n): [round(t, 1) for t in times[name, n]] for n in counts},
                     "images_per_s_end_to_end": [round(n / t, 1) for n, t in zip(counts, seconds,
                                                                                  strict=True)],
                     "steady_images_per_s": round(rate, 1), "start_up_s": round(t1 - n1 / rate, 1)})
        print(f"| {name} | {detect} | " + " | ".join(
            f"{n}: {t:.1f} s ({n / t:.1f}/s)" for n, t in zip(counts, seconds, strict=True))
            + f" | {rate:.1f} | {t1 - n1 / rate:.1f} |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="a folder of UTKFace chips (.jpg)")
    parser.add_argument("--model", default=None, help="a .keras model (default: a fresh Model A)")
    parser.add_argument("--counts", type=int, nargs=2, default=[200, 1000])
    parser.add_argument("--detect-counts", type=int, nargs=2, default=[40, 120])
    parser.add_argument("--rounds", type=int, default=2, help="of the chips (detection: one)")
    parser.add_argument("--out", default=str(HERE / "bench_batch.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as scratch:
        model = args.model
        if model is None:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            from agegender_models import create_model, save_model

            model = str(save_model(create_model("custom_cnn"), Path(scratch) / "model_a.keras"))
        print("| setup | faces | N: wall time (images/s, start-up included) | steady images/s "
              "| start-up s |\n|---|---|---|---|---|", flush=True)
        rows = measure(model, Path(args.data_dir), args.counts, "none", Path(scratch), args.rounds)
        rows += measure(model, Path(args.data_dir), args.detect_counts, "mtcnn", Path(scratch), 1)
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_average_at_end": os.getloadavg()},
              "model": args.model or "fresh custom_cnn (Model A), 128 px", "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
