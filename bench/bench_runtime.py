"""How close to the limit: precision, the matmul peak and its share, and every runtime, in one run.

    TF_CPP_MIN_LOG_LEVEL=3 python bench/bench_runtime.py --data-dir ../shared/utkface/crop_part1_5000 \\
        [--mobilenet RUN/model.keras] [--model-a RUN/model.keras]

For Model A (``custom_cnn``, 128 px) and MobileNetV2 (192 px), on this machine:

1. the CPU (model name, AVX512_BF16, AMX) and the measured matmul peak (4096², GFLOP/s) in
   float32 and bfloat16 (measured at the start and at the end, the higher kept);
2. training and inference throughput in float32 and mixed bfloat16
   (``agegender_models.precision.measure_step_times``: the two policies' steps alternate; random
   weights, the backbone's default fine-tuned layers), the GFLOP/s they reach (forward FLOPs
   counted by TensorFlow's profiler; training = 3x forward, given for Model A only, which trains
   whole) and that share of the peak of the precision in use; and what
   ``--precision auto`` (``choose_precision``, measuring on its own) picks, against the better
   of the two;
3. every runtime (Keras, TFLite float32 / float16 / int8, ONNX Runtime float32 / int8): its parity
   with the Keras model on real faces (the run's test split when the model sits in a run folder,
   else every k-th image of the folder), batch-32 throughput and single-image latency (medians
   over rounds in rotating order), and what ``runtime="auto"`` would pick.

Without ``--model-a`` / ``--mobilenet`` (and no shipped pretrained model) a fresh model with
random weights is used: its speed figures hold, its parity figures say little (an untrained
model's P(female) sits near 0.5 for every face, where int8 rounding flips genders by chance).
Prints Markdown and writes ``--out`` (JSON).
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
from _common import default_data_dir, matmul_peak  # bench/ is the script's folder

HERE = Path(__file__).resolve().parent
SETUPS = (("Model A", "custom_cnn", 128), ("MobileNetV2", "mobilenet_v2", 192))
POLICIES = ("float32", "mixed_bfloat16")
RUNTIMES = (("tflite", "none"), ("tflite", "float16"), ("tflite", "int8"), ("onnx", "none"),
            ("onnx", "int8"))


def forward_gflop(model) -> float:
    """Floating-point operations of one image's forward pass (TensorFlow's profiler)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    spec = tf.TensorSpec([1, *model.inputs[0].shape[1:]], tf.float32)
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    graph = convert_variables_to_constants_v2(concrete).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    info = tf.compat.v1.profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(),
                                         cmd="op", options=options)
    return info.total_float_ops / 1e9


# --------------------------------------------------------------------------------------------------
# precision


def precision_figures(backbone: str, size: int, args, peaks: dict[str, float], gflop: float) -> dict:
    from agegender_models.precision import choose_precision, measure_step_times

    train = measure_step_times(POLICIES, backbone=backbone, image_size=size,
                               batch_size=args.batch, steps=args.train_steps)
    infer = measure_step_times(POLICIES, backbone=backbone, image_size=size, batch_size=args.batch,
                               mode="inference", steps=args.infer_steps)
    rows = {}
    for policy in POLICIES:
        peak = peaks["float32" if policy == "float32" else "bfloat16"]
        train_ips, infer_ips = args.batch / train[policy], args.batch / infer[policy]
        rows[policy] = {
            "train_ips": train_ips, "train_gflops": 3 * gflop * train_ips,
            "train_share": 3 * gflop * train_ips / peak,
            "infer_ips": infer_ips, "infer_gflops": gflop * infer_ips,
            "infer_share": gflop * infer_ips / peak,
        }
        print(backbone, size, policy, {k: round(v, 3) for k, v in rows[policy].items()}, flush=True)
    choice = choose_precision("auto", backbone=backbone, image_size=size, batch_size=args.batch,
                              cache=False)
    best = max(rows[p]["train_ips"] for p in POLICIES)
    auto = {"policy": choice.policy, "describe": choice.describe(),
            "vs_best": rows[choice.policy]["train_ips"] / best}
    print("auto:", auto, flush=True)
    return {"policies": rows, "auto": auto}


# --------------------------------------------------------------------------------------------------
# runtimes


def _bench_model(label: str, backbone: str, size: int, path: str | None):
    """(model, description, model file or None): the given file, the shipped pretrained model
    for MobileNetV2, or a fresh one with random weights."""
    import keras

    from agegender_models import create_model, load_model

    if path:
        return load_model(path, compile=False), f"{path} (trained)", path
    if backbone == "mobilenet_v2":
        try:
            from agegender_models.pretrained import load_pretrained, pretrained_path

            return load_pretrained(), f"the shipped pretrained model ({pretrained_path()})", None
        except Exception as exc:  # not shipped in this checkout
            print(f"no shipped pretrained model ({type(exc).__name__}): an untrained one", flush=True)
    keras.utils.set_random_seed(0)
    model = create_model(backbone, input_shape=(size, size, 3), weights=None)
    return model, f'create_model("{backbone}", input {size}) with random weights (untrained)', None


def _faces(model_file: str | None, data_dir: Path, size: int, args):
    """(CheckSet of real faces, calibration faces): the run folder's test/train splits when the
    model sits in one, else every k-th image of ``data_dir`` (disjoint slices)."""
    import utkface_data
    from agegender.export_data import locate_faces
    from agegender_models.export import CheckSet

    if model_file:
        sources = locate_faces(model_file, data_dir=str(data_dir))
        if sources.check_split is not None and sources.calibration_split is not None:
            from agegender.export_data import load_faces

            images, labels = load_faces(sources.check_split, sources.root, (size, size),
                                        limit=args.check_images)
            calibration, _ = load_faces(sources.calibration_split, sources.root, (size, size),
                                        limit=args.calibration_images)
            return (CheckSet(images, labels, description=f"{len(images)} real faces of "
                             f"{sources.check_split}"), calibration)
    frame = utkface_data.index_folder(data_dir, progress=False).frame.sort_values("path")
    n = args.check_images + args.calibration_images
    picked = frame.iloc[:: max(1, len(frame) // n)].iloc[:n]
    dataset = utkface_data.make_dataset(picked, root=data_dir, image_size=(size, size),
                                        batch_size=64, scaling="uint8")
    images = np.concatenate([x.numpy() for x, _ in dataset])
    labels = {"gender": picked["gender"].to_numpy(np.float32), "age": picked["age"].to_numpy(np.float32)}
    k = args.check_images
    check = CheckSet(images[:k], {key: v[:k] for key, v in labels.items()},
                     description=f"{k} real faces (every {len(frame) // n}th image of {data_dir})")
    return check, images[k:]


def _time(runners: dict, images: np.ndarray, args) -> tuple[dict, dict]:
    """Medians over rounds (rotating order): batch throughput (images/s) and latency (ms)."""
    batches = [images[i : i + args.batch] for i in range(0, args.batch * args.batches, args.batch)]
    names = list(runners)
    for runner in runners.values():
        runner(batches[0])
        runner(images[:1])
    ips = {n: [] for n in names}
    latency = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            for batch in batches:
                runners[name](batch)
            ips[name].append(sum(map(len, batches)) / (time.perf_counter() - start))
            calls = []
            for _ in range(args.latency_reps):
                start = time.perf_counter()
                runners[name](images[:1])
                calls.append(1000 * (time.perf_counter() - start))
            latency[name].append(statistics.median(calls))
    return ({n: statistics.median(v) for n, v in ips.items()},
            {n: statistics.median(v) for n, v in latency.items()})


def runtime_figures(model, check, calibration, args, gflop: float, peak: float) -> dict:
    from agegender_models.export import (
        ExportFormatError,
        ExportParityError,
        check_parity,
        convert_model,
    )
    from agegender_models.runtime import (
        Runner,
        _pair,
        _pick,
        artefact_runner,
        keras_runner,
        onnx_available,
    )

    runners = {"keras": keras_runner(model)}
    reference = runners["keras"].run(check.images)
    rows: dict[str, dict] = {"keras": {"size_mb": 4 * model.count_params() / 1e6, "parity": "—"}}
    # Keras' compiled predict function: not what Predictor's "keras" runtime calls (the model,
    # eagerly, as before), but the fair Keras baseline for a batch
    def compiled(x):
        out = model.predict_on_batch(x)
        return _pair(out["gender"], out["age"])

    runners["keras predict_on_batch"] = Runner("keras predict_on_batch", compiled)
    rows["keras predict_on_batch"] = {"size_mb": rows["keras"]["size_mb"], "parity": "—"}
    for runtime, quantize in RUNTIMES:
        name = runtime if quantize == "none" else f"{runtime} {quantize}"
        if runtime == "onnx" and not onnx_available():
            print(f"{name}: skipped (no onnx extra)", flush=True)
            continue
        start = time.perf_counter()
        try:
            content = convert_model(model, runtime, quantize=quantize, calibration=calibration)
        except ExportFormatError as exc:
            rows[name] = {"error": str(exc)}
            continue
        row = {"convert_s": time.perf_counter() - start, "size_mb": len(content) / 1e6}
        runner = artefact_runner(runtime, content, threads=args.threads, quantize=quantize)
        try:
            parity = check_parity(model, runner, check, what=name, reference=reference)
            row.update(passed=True, parity=parity.describe())
        except ExportParityError as exc:
            row.update(passed=False, parity=str(exc))
        row.update(points=None, years=None)
        got = runner.run(check.images)
        labels = check.labels
        row["points"] = 100 * (np.mean((got[0] > 0.5) == (labels["gender"] > 0.5))
                               - np.mean((reference[0] > 0.5) == (labels["gender"] > 0.5)))
        row["years"] = float(np.mean(np.abs(got[1] - labels["age"]))
                             - np.mean(np.abs(reference[1] - labels["age"])))
        rows[name] = row
        runners[name] = runner
        print(name, {k: v for k, v in row.items() if k != "parity"}, flush=True)
    ips, latency = _time(runners, check.images, args)
    for name in runners:
        rows[name].update(ips=ips[name], latency_ms=latency[name], vs_keras=ips[name] / ips["keras"],
                          gflops=gflop * ips[name], share=gflop * ips[name] / peak)
    # what runtime="auto" chooses from (agegender_models.runtime: float32 and int8 exports; a
    # float16 file runs in float32 on a CPU) among those that passed
    eligible = {n: ips[n] for n in ("keras", "tflite", "onnx", "tflite int8", "onnx int8")
                if n in runners and (n == "keras" or rows[n].get("passed"))}
    return {"rows": rows, "auto": _pick(eligible)}


# --------------------------------------------------------------------------------------------------
# report


def _rescale(results: dict, peaks: dict[str, float]) -> None:
    """The shares of the peak against the higher of the two peak measurements."""
    results["matmul_gflops"] = peaks
    for entry in results["models"].values():
        for policy, row in entry.get("precision", {}).get("policies", {}).items():
            peak = peaks["float32" if policy == "float32" else "bfloat16"]
            row["train_share"] = row["train_gflops"] / peak
            row["infer_share"] = row["infer_gflops"] / peak
        for row in entry.get("runtimes", {}).get("rows", {}).values():
            if "gflops" in row:
                row["share"] = row["gflops"] / peaks["float32"]


def _precision_table(results: dict) -> list[str]:
    lines = ["| model | px | fwd GFLOP/img | policy | train img/s | train GFLOP/s (share of peak) | "
             "infer img/s (batch) | infer GFLOP/s (share of peak) | auto picks (its train img/s vs the better) |",
             "|---|---:|---:|---|---:|---:|---:|---:|---|"]
    for label, entry in results["models"].items():
        fig = entry["precision"]
        for policy, row in fig["policies"].items():
            auto = fig["auto"]
            pick = f"**{auto['policy']}** ({auto['vs_best']:.2f}×)" if policy == "float32" else ""
            # training FLOPs = 3x forward only for a backbone trained whole (Model A from scratch);
            # a partly frozen one (the MobileNet's default fine-tuning) needs less backward work
            train = (f"{row['train_gflops']:.0f} ({100 * row['train_share']:.0f} %)"
                     if entry["backbone"] == "custom_cnn" else "— (partly frozen)")
            lines.append(
                f"| {label} | {entry['size']} | {entry['gflop']:.2f} | {policy} | {row['train_ips']:.1f} | "
                f"{train} | {row['infer_ips']:.1f} | "
                f"{row['infer_gflops']:.0f} ({100 * row['infer_share']:.0f} %) | {pick} |")
    return lines


def _runtime_table(label: str, entry: dict) -> list[str]:
    fig = entry["runtimes"]
    lines = [f"{label} ({entry['model']}), {entry['check']}; auto picks **{fig['auto']}**:", "",
             "| runtime | file MB | convert s | gender acc. Δ points / age MAE Δ years vs Keras | parity | "
             "batch-32 img/s | vs Keras | GFLOP/s (share of the float32 peak) | single-image latency |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    for name, row in fig["rows"].items():
        if "error" in row:
            lines.append(f"| {name} | — | — | — | conversion failed: {row['error']} | — | — | — | — |")
            continue
        keras = name.startswith("keras")
        delta = "—" if keras else f"{row['points']:+.2f} / {row['years']:+.3f}"
        passed = "—" if keras else ("passed" if row["passed"] else "**failed**")
        convert = "—" if keras else f"{row['convert_s']:.0f}"
        lines.append(f"| {name} | {row['size_mb']:.1f} | {convert} | {delta} | {passed} | "
                     f"{row['ips']:.1f} | {row['vs_keras']:.2f}× | {row['gflops']:.0f} "
                     f"({100 * row['share']:.0f} %) | {row['latency_ms']:.1f} ms |")
    return lines


def _parse(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--model-a", default=None, help="a trained Model A .keras (default: untrained)")
    parser.add_argument("--mobilenet", default=None,
                        help="a trained MobileNetV2 .keras (default: the shipped one, else untrained)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=6, help="timed training steps per policy")
    parser.add_argument("--infer-steps", type=int, default=10, help="timed inference batches per policy")
    parser.add_argument("--check-images", type=int, default=256, help="real faces for parity")
    parser.add_argument("--calibration-images", type=int, default=100, help="faces for int8 calibration")
    parser.add_argument("--batches", type=int, default=4, help="batches per throughput round")
    parser.add_argument("--latency-reps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="TFLite/ONNX threads (default: all)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["precision", "runtimes"])
    parser.add_argument("--out", default=str(HERE / "bench_runtime.json"))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    started = time.perf_counter()
    import keras
    import tensorflow as tf

    from agegender_models._cache import cpu_description

    cpu = cpu_description()
    print(f"CPU: {cpu}", flush=True)
    # the peak is measured again at the end and the higher kept: load from other processes on a
    # shared machine only ever lowers it
    peaks = {"float32": matmul_peak("float32"), "bfloat16": matmul_peak("bfloat16")}
    print(f"matmul 4096²: {peaks}", flush=True)
    results: dict = {
        "command": "python bench/bench_runtime.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu": cpu, "matmul_gflops": peaks, "loadavg_before": os.getloadavg()[0],
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__}, "models": {},
    }
    with tempfile.TemporaryDirectory() as cache:
        os.environ["AGEGENDER_CACHE_DIR"] = cache  # auto measures afresh, the user's cache untouched
        for label, backbone, size in SETUPS:
            model, description, model_file = _bench_model(
                label, backbone, size, args.model_a if backbone == "custom_cnn" else args.mobilenet)
            entry = {"backbone": backbone, "size": size, "model": description,
                     "gflop": forward_gflop(model)}
            if "precision" not in args.skip:
                entry["precision"] = precision_figures(backbone, size, args, peaks, entry["gflop"])
            if "runtimes" not in args.skip:
                check, calibration = _faces(model_file, Path(args.data_dir), size, args)
                entry["check"] = check.description
                entry["runtimes"] = runtime_figures(model, check, calibration, args, entry["gflop"],
                                                    peaks["float32"])
            results["models"][label] = entry
    results["loadavg_after"] = os.getloadavg()[0]
    end_peaks = {"float32": matmul_peak("float32"), "bfloat16": matmul_peak("bfloat16")}
    results["matmul_gflops_start_end"] = {k: [peaks[k], end_peaks[k]] for k in peaks}
    print(f"matmul 4096² at the end: {end_peaks}", flush=True)
    _rescale(results, {k: max(peaks[k], end_peaks[k]) for k in peaks})
    peaks = results["matmul_gflops"]
    results["wall_s"] = time.perf_counter() - started
    Path(args.out).write_text(json.dumps(results, indent=2, default=float) + "\n")

    print(f"\nCPU: {cpu['model']}, {cpu['cpus']} CPUs; AVX512_BF16: {cpu['avx512_bf16']}, "
          f"AMX-BF16: {cpu['amx_bf16']}; TF {tf.__version__}; load average "
          f"{results['loadavg_before']:.1f} before, {results['loadavg_after']:.1f} after; "
          f"{results['wall_s'] / 60:.1f} min")
    print(f"matmul 4096² (the higher of a measurement at the start and one at the end): float32 "
          f"{peaks['float32']:.0f} GFLOP/s, bfloat16 {peaks['bfloat16']:.0f} GFLOP/s\n")
    if "precision" not in args.skip:
        print("\n".join(_precision_table(results)) + "\n")
    if "runtimes" not in args.skip:
        for label, entry in results["models"].items():
            print("\n".join(_runtime_table(label, entry)) + "\n")
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
