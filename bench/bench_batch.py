"""Batch prediction: `agegender predict-batch` (Ray Data, local runner) against `agegender predict`.

    TF_CPP_MIN_LOG_LEVEL=3 python bench/bench_batch.py --data-dir ../shared/utkface/crop_part1_5000 \\
        [--model RUN/model.keras] [--n 1000] [--detect-n 120]

On the first N images of the folder (sorted names), the same files for every setup, all on Keras:

* **end to end**: each command run as a user runs it (a new process, wall time from start to
  exit: Python, TensorFlow, Ray and its workers, the model, the images);
* **steady**: images per second once results flow, start-up excluded. For ``predict-batch`` the
  job's own ``summary.json`` (``steady_rows_per_s``: rows after the first batch over the time
  after it); for ``predict`` its code in this process (``Predictor(model).predict(files)``, the
  model loaded before the clock starts).

Chips are predicted as they are (``--detect none``); ``--detect-n`` images then go through MTCNN
face detection first. Without ``--model`` a fresh Model A (``custom_cnn``, 128 px, random
weights: the same work per image) is used. Prints Markdown and writes ``--out`` (JSON).
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "agegender.cli"]


def _images(data_dir: Path, n: int) -> list[str]:
    return [str(p) for p in sorted(data_dir.glob("*.jpg"))[:n]]


def _timed(command: list[str]) -> float:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "AGEGENDER_RUNTIME": "keras"}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    seconds = time.perf_counter() - started
    if result.returncode not in (0, 1):  # 1: some inputs gave no result (no face found)
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return seconds


def _steady_predict(model: str, files: list[str], detect: str) -> float:
    """Images per second of predict's own code, the model loaded before the clock starts."""
    from agegender_models import Predictor, load_model

    predictor = Predictor(load_model(model), detector=None if detect == "none" else detect,
                          runtime="keras")
    predictor.predict(files[:32], return_errors=True)  # warm-up: the first call traces
    started = time.perf_counter()
    predictor.predict(files, return_errors=True)
    return len(files) / (time.perf_counter() - started)


def measure(model: str, files: list[str], detect: str, scratch: Path) -> list[dict]:
    folder = scratch / f"images-{detect}"
    folder.mkdir()
    for file in files:
        (folder / Path(file).name).symlink_to(Path(file).resolve())
    n = len(files)
    rows = [{"setup": "agegender predict", "detect": detect, "n": n,
             "end_to_end_s": round(_timed([*CLI, "predict", "--model", model, "--detect", detect,
                                           "--json", str(folder)]), 1),
             "steady_images_per_s": round(_steady_predict(model, files, detect), 1)}]
    for workers in (1, 2):
        out = scratch / f"out-{detect}-{workers}"
        seconds = _timed([*CLI, "predict-batch", str(folder), "--model", model, "--detect", detect,
                          "--out", str(out), "--workers", str(workers)])
        summary = json.loads((out / "summary.json").read_text())
        rows.append({"setup": f"predict-batch, {workers} worker{'s' * (workers > 1)}",
                     "detect": detect, "n": n, "end_to_end_s": round(seconds, 1),
                     # a rate only when results flowed for most of the job: a small job's rows
                     # may arrive in one burst at its end (too few blocks), which is no rate
                     "steady_images_per_s": summary["steady_rows_per_s"]
                     if summary["first_rows_after_s"] < 0.5 * summary["seconds"] else None,
                     "first_rows_after_s": summary["first_rows_after_s"],
                     "workers_used": summary["workers"]})
    for row in rows:
        print(f"| {row['setup']} | {detect} | {n} | {row['end_to_end_s']} s "
              f"({n / row['end_to_end_s']:.1f}/s) | {row['steady_images_per_s']} |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="a folder of UTKFace chips (.jpg)")
    parser.add_argument("--model", default=None, help="a .keras model (default: a fresh Model A)")
    parser.add_argument("--n", type=int, default=1000, help="chips (default 1000)")
    parser.add_argument("--detect-n", type=int, default=120, help="images through MTCNN (default 120)")
    parser.add_argument("--out", default=str(HERE / "bench_batch.json"))
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from agegender._tf import load_tensorflow

    load_tensorflow()
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as scratch:
        model = args.model
        if model is None:
            from agegender_models import create_model, save_model

            model = str(save_model(create_model("custom_cnn"), Path(scratch) / "model_a.keras"))
        print("| setup | faces | images | end to end (start-up included) | steady images/s |\n"
              "|---|---|---|---|---|", flush=True)
        data = Path(args.data_dir)
        rows = measure(model, _images(data, args.n), "none", Path(scratch))
        rows += measure(model, _images(data, args.detect_n), "mtcnn", Path(scratch))
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "load_average_at_end": os.getloadavg()},
              "model": args.model or "fresh custom_cnn (Model A), 128 px", "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
