"""Exports against Keras: file size, parity on real images, single-image latency and batch
throughput of Keras, the SavedModel signature, the TFLite interpreter and ONNX Runtime, in one run.

    TF_CPP_MIN_LOG_LEVEL=2 python bench/bench_export.py --data-dir ../shared/utkface/crop_part1_5000 \\
        [--model runs/model_a/model.keras]

Without ``--model`` a fresh Model A (``create_model("custom_cnn")``, 128x128, random weights) is
exported. Each round times every runtime once, in a rotating order, so that load from other
processes on a shared machine hits them alike; figures are medians over rounds and ratios are
taken within each round. Needs the ``onnx`` extra for the ONNX row. Writes ``--out`` (JSON) and
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import cpu_name, default_data_dir  # bench/ is the script's folder

HERE = Path(__file__).resolve().parent


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def load_images(data_dir: Path, n: int, size: tuple[int, int]) -> np.ndarray:
    """``n`` real face chips (every k-th file, sorted) resized as ``Predictor`` resizes them."""
    from PIL import Image

    from agegender_models.predict import _to_rgb_array

    files = sorted(p for p in data_dir.iterdir() if p.suffix.lower() == ".jpg")
    if len(files) < n:
        raise SystemExit(f"{data_dir}: {len(files)} .jpg files, need {n}")
    picked = files[:: len(files) // n][:n]
    images = []
    for f in picked:
        with Image.open(f) as img:
            images.append(_to_rgb_array(img, size))
    return np.stack(images)


def make_runners(model, paths: dict[str, Path], threads: int) -> dict[str, dict]:
    """name -> {"one": f(batch of 1), "batch": f(batch)}; each returns (gender, age) numpy arrays."""
    import tensorflow as tf

    runners = {
        "Keras (predict_on_batch)": {
            "one": lambda x: _pair(model.predict_on_batch(x)),
            "batch": lambda x: _pair(model.predict_on_batch(x)),
            "format": None,
        }
    }
    serve = tf.saved_model.load(str(paths["savedmodel"])).signatures["serve"]

    def run_savedmodel(x):
        return _pair({k: v.numpy() for k, v in serve(image=tf.constant(x)).items()})

    runners["SavedModel (signature)"] = {
        "one": run_savedmodel,
        "batch": run_savedmodel,
        "format": "savedmodel",
    }
    # one interpreter per batch size: alternating shapes on one would reallocate at every call
    tflite = {}
    for key in ("one", "batch"):
        interpreter = tf.lite.Interpreter(str(paths["tflite"]), num_threads=threads)
        tflite[key] = interpreter.get_signature_runner("serve")
    runners[f"TFLite (Interpreter, {threads} threads)"] = {
        "one": lambda x: _pair(tflite["one"](image=x)),
        "batch": lambda x: _pair(tflite["batch"](image=x)),
        "format": "tflite",
    }
    if "onnx" in paths:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(
            str(paths["onnx"]), options, providers=["CPUExecutionProvider"]
        )

        def run_onnx(x):
            gender, age = session.run(["gender", "age"], {"image": x})
            return gender, age

        runners[f"ONNX Runtime ({threads} threads)"] = {
            "one": run_onnx,
            "batch": run_onnx,
            "format": "onnx",
        }
    return runners


def _pair(out) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.asarray(out["gender"], np.float32).reshape(-1),
        np.asarray(out["age"], np.float32).reshape(-1),
    )


def _ratio(row: dict, key: str) -> str:
    """The median ratio over rounds and, in brackets, the range of the per-round ratios."""
    rounds = row[f"{key}_rounds"]
    return f"{row[key]:.2f}× ({min(rounds):.2f}–{max(rounds):.2f})"


def _parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=None,
        help="a .keras model (default: a fresh Model A, 128x128, random weights)",
    )
    parser.add_argument(
        "--data-dir",
        default=default_data_dir(),
        help="folder of real UTKFace images (default: $UTKFACE_DIR)",
    )
    parser.add_argument(
        "--images", type=int, default=64, help="real images for parity and throughput"
    )
    parser.add_argument(
        "--batch", type=int, default=32, help="batch size for throughput (default 32)"
    )
    parser.add_argument(
        "--latency-reps", type=int, default=30, help="batch-1 calls per round (median)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="TFLite / ONNX Runtime threads")
    parser.add_argument(
        "--out",
        default=None,
        help="results JSON (default: bench/bench_export.json with --model; with the fresh "
        "untrained model bench/bench_export_untrained.json, so the recorded figures stay)",
    )
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = str(HERE / ("bench_export.json" if args.model else "bench_export_untrained.json"))
    return args


def _load_model(path: str | None):
    """(model, its name in the report): the ``--model`` file, or a fresh seeded Model A."""
    import keras

    from agegender_models import create_model, load_model

    if path:
        return load_model(path, compile=False), path
    keras.utils.set_random_seed(0)
    return create_model("custom_cnn"), 'create_model("custom_cnn") (fresh, random weights)'


def _formats() -> list[str]:
    """The export formats to measure: ONNX only where its extra is installed."""
    formats = ["savedmodel", "tflite"]
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401

        formats.append("onnx")
    except ImportError:
        print("ONNX skipped: pip install 'agegender-models[onnx]'", flush=True)
    return formats


def _export_all(model, formats: list[str], folder: str, result: dict) -> dict[str, Path]:
    """Export to every format under ``folder``; records size and export time in ``result``."""
    from agegender_models.export import export_model

    paths = {}
    for fmt in formats:
        target = (
            Path(folder)
            / {"savedmodel": "savedmodel", "tflite": "model.tflite", "onnx": "model.onnx"}[fmt]
        )
        start = time.perf_counter()
        paths[fmt] = export_model(model, target, format=fmt)
        result["formats"][fmt] = {
            "size_mb": round(_size_mb(paths[fmt]), 2),
            "export_s": round(time.perf_counter() - start, 1),
        }
        print(fmt, result["formats"][fmt], flush=True)
    if "onnx" in formats:
        import onnxruntime
        import tf2onnx

        result["versions"].update(
            onnxruntime=onnxruntime.__version__, tf2onnx=tf2onnx.__version__
        )
    return paths


def _parity(runners: dict, names: list[str], images: np.ndarray, batch: int):
    """Max abs difference to Keras on every real image, batch by batch; and Keras' outputs."""
    reference = [
        runners[names[0]]["batch"](images[i : i + batch]) for i in range(0, len(images), batch)
    ]
    parity = {}
    for name in names[1:]:
        diffs = [0.0, 0.0]
        for j, i in enumerate(range(0, len(images), batch)):
            got = runners[name]["batch"](images[i : i + batch])
            for k in (0, 1):
                diffs[k] = max(diffs[k], float(np.abs(got[k] - reference[j][k]).max()))
        parity[name] = {"gender": diffs[0], "age": diffs[1]}
    ref_all = (
        np.concatenate([r[0] for r in reference]),
        np.concatenate([r[1] for r in reference]),
    )
    return parity, ref_all


def _time_round(runner: dict, one: np.ndarray, batches: list[np.ndarray], reps: int):
    """(median single-image latency in ms, batch throughput in images/s) of one runtime."""
    calls = []
    for _ in range(reps):
        t = time.perf_counter()
        runner["one"](one)
        calls.append(time.perf_counter() - t)
    t = time.perf_counter()
    for batch in batches:
        runner["batch"](batch)
    return 1000 * statistics.median(calls), sum(map(len, batches)) / (time.perf_counter() - t)


def _time_runtimes(runners: dict, names: list[str], images: np.ndarray, args):
    """Warm up every runtime, then time them in rounds in rotating order:
    name -> per-round latencies (ms) and throughputs (images/s)."""
    one = images[:1]
    batches = [
        images[i : i + args.batch] for i in range(0, len(images) - args.batch + 1, args.batch)
    ]
    for name in names:
        runners[name]["one"](one)
        runners[name]["batch"](batches[0])
    latency = {name: [] for name in names}
    throughput = {name: [] for name in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            ms, ips = _time_round(runners[name], one, batches, args.latency_reps)
            latency[name].append(ms)
            throughput[name].append(ips)
        print(
            f"round {r + 1}: "
            + ", ".join(
                f"{n}: {latency[n][-1]:.1f} ms, {throughput[n][-1]:.1f} img/s" for n in names
            ),
            flush=True,
        )
    return latency, throughput


def _rows(names: list[str], latency: dict, throughput: dict, parity: dict) -> dict[str, dict]:
    """Per runtime: medians, per-round figures and per-round ratios to Keras (``names[0]``)."""
    keras_name = names[0]
    rows = {}
    for name in names:
        rows[name] = {
            "latency_ms_median": statistics.median(latency[name]),
            "throughput_ips_median": statistics.median(throughput[name]),
            "latency_ms_rounds": [round(v, 2) for v in latency[name]],
            "throughput_ips_rounds": [round(v, 2) for v in throughput[name]],
            # ratios within each round (same load), then the median over rounds
            "latency_vs_keras_rounds": [
                round(a / b, 3) for a, b in zip(latency[name], latency[keras_name], strict=True)
            ],
            "throughput_vs_keras_rounds": [
                round(a / b, 3)
                for a, b in zip(throughput[name], throughput[keras_name], strict=True)
            ],
            "max_abs_diff": parity.get(name),
        }
    for row in rows.values():
        for key in ("latency_vs_keras", "throughput_vs_keras"):
            row[key] = statistics.median(row[f"{key}_rounds"])
    return rows


def _table(result: dict, runners: dict, keras_size: str, load: tuple) -> list[str]:
    """The Markdown report: a header line and one table row per runtime."""
    size, rows = result["input_size"], result["runtimes"]
    lines = [
        f"Model: {result['model']}, input {size[0]}x{size[1]}; {result['images']} real images; "
        f"batch {result['batch']}; {result['rounds']} interleaved rounds; load average "
        f"{load[0]:.1f} before, {load[1]:.1f} after.",
        "",
        "| runtime | file size | max abs diff vs Keras (gender / age) | single-image latency "
        "(median) | vs Keras (range over rounds) | batch throughput | vs Keras (range) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        fmt = runners[name]["format"]
        size_txt = f"{result['formats'][fmt]['size_mb']:.1f} MB" if fmt else keras_size
        diff = (
            "—"
            if fmt is None
            else f"{row['max_abs_diff']['gender']:.1e} / {row['max_abs_diff']['age']:.1e}"
        )
        lines.append(
            f"| {name} | {size_txt} | {diff} | {row['latency_ms_median']:.1f} ms | "
            f"{_ratio(row, 'latency_vs_keras')} | {row['throughput_ips_median']:.1f} img/s | "
            f"{_ratio(row, 'throughput_vs_keras')} |"
        )
    return lines


def main(argv=None) -> int:
    args = _parse_args(argv)

    import keras
    import tensorflow as tf

    model, model_name = _load_model(args.model)
    size = tuple(int(d) for d in model.inputs[0].shape[1:3])
    keras_size = f"{_size_mb(Path(args.model)):.1f} MB (.keras)" if args.model else "—"
    images = load_images(Path(args.data_dir), args.images, size)
    formats = _formats()

    load_before = os.getloadavg()
    result: dict = {
        "command": "python bench/bench_export.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "model": model_name,
        "input_size": list(size),
        "images": len(images),
        "batch": args.batch,
        "latency_reps": args.latency_reps,
        "rounds": args.rounds,
        "threads": args.threads,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "formats": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths = _export_all(model, formats, tmp, result)
        runners = make_runners(model, paths, args.threads)
        names = list(runners)
        parity, ref_all = _parity(runners, names, images, args.batch)
        latency, throughput = _time_runtimes(runners, names, images, args)
    load_after = os.getloadavg()

    result["runtimes"] = _rows(names, latency, throughput, parity)
    result["keras_output_range"] = {
        "gender": [float(ref_all[0].min()), float(ref_all[0].max())],
        "age": [float(ref_all[1].min()), float(ref_all[1].max())],
    }
    result["loadavg_before_after"] = [round(load_before[0], 2), round(load_after[0], 2)]
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")

    lines = _table(result, runners, keras_size, (load_before[0], load_after[0]))
    print("\n" + "\n".join(lines))
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
