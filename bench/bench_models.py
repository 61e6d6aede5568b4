"""Model A training/inference throughput: agegender_models factory + utkface_data pipeline
(fp32 and mixed bf16) against a plain seed-style baseline (the same architecture written
directly in Keras, fed float32 numpy arrays), all in one run.

    TF_CPP_MIN_LOG_LEVEL=2 python bench/bench_models.py --data-dir ../shared/utkface/crop_part1_5000

Figures are ratios within one run (shared, noisy 2-core machine). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _common import default_data_dir, matmul_peak  # bench/ is the script's folder

MATMUL_REPS = 5  # matmul_peak: the best of 5 runs
GFLOP_PER_IMAGE = 1.9  # Model A forward at 128x128 (3x3 'same' convs 64/128/256/512 + dense)


def seed_baseline_model():
    """Model A exactly as a seed script writes it (no preprocessing layer: inputs are /255)."""
    import keras
    from keras import layers

    inputs = keras.Input((128, 128, 3))
    x = inputs
    for f in (64, 128, 256, 512):
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
        x = layers.BatchNormalization()(x)
    x = layers.Flatten()(x)
    for _ in range(2):
        x = layers.Dense(512, activation="relu")(x)
        x = layers.Dropout(0.5)(x)
    gender = layers.Dense(1, activation="sigmoid", name="gender")(x)
    age = layers.Dense(1, name="age")(x)
    model = keras.Model(inputs, {"gender": gender, "age": age})
    model.compile(
        optimizer="adam",
        loss={"gender": "binary_crossentropy", "age": "mae"},
        metrics={"gender": ["accuracy"], "age": ["mae"]},
    )
    return model


def load_numpy(frame, root: Path):
    from PIL import Image

    x = np.stack(
        [
            np.asarray(Image.open(root / p).convert("RGB").resize((128, 128)), dtype=np.float32)
            / 255.0
            for p in frame["path"]
        ]
    )
    y = {
        "gender": frame["gender"].to_numpy(np.float32),
        "age": frame["age"].to_numpy(np.float32),
    }
    return x, y


def timed_fit(model, data, n_images: int, epochs: int, **fit_kwargs) -> float:
    model.fit(data[0] if isinstance(data, tuple) else data,
              data[1] if isinstance(data, tuple) else None,
              epochs=1, verbose=0, **fit_kwargs)  # warm-up: tracing, caches
    t = time.perf_counter()
    model.fit(data[0] if isinstance(data, tuple) else data,
              data[1] if isinstance(data, tuple) else None,
              epochs=epochs, verbose=0, **fit_kwargs)
    return n_images * epochs / (time.perf_counter() - t)


def inference(model, images: np.ndarray, batch_size: int, latency_reps: int):
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    batch = tf.constant(images[:batch_size])
    fn(batch)
    n = len(images)
    t = time.perf_counter()
    for i in range(0, n - batch_size + 1, batch_size):
        out = fn(tf.constant(images[i : i + batch_size]))
    out["age"].numpy()
    done = (n // batch_size) * batch_size
    ips = done / (time.perf_counter() - t)
    one = tf.constant(images[:1])
    fn(one)["age"].numpy()
    lat = []
    for _ in range(latency_reps):
        t = time.perf_counter()
        fn(one)["age"].numpy()
        lat.append(time.perf_counter() - t)
    return ips, 1000 * statistics.median(lat)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=default_data_dir())
    parser.add_argument("--train-images", type=int, default=512)
    parser.add_argument("--infer-images", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs after one warm-up epoch")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch (seed: 32)")
    parser.add_argument("--infer-batch", type=int, default=128)
    parser.add_argument("--jit", choices=["auto", "true", "false"], default="false",
                        help="XLA for our models' train step (compile_model(jit_compile=...))")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    from agegender_models import bf16_supported, compile_model, create_model, get_precision

    root = Path(args.data_dir)
    try:
        from utkface_data import index_folder, make_dataset

        frame = index_folder(root, progress=False).frame
        pipeline = "utkface_data.make_dataset (uint8, cache='memory')"
    except ImportError:  # pragma: no cover
        sys.exit("utkface_data is required for this benchmark")
    n = max(args.train_images, args.infer_images)
    frame = frame.sample(n=min(n, len(frame)), random_state=0).reset_index(drop=True)
    train = frame.iloc[: args.train_images]
    jit = {"auto": "auto", "true": True, "false": False}[args.jit]
    rows = []

    peak32 = matmul_peak("float32", reps=MATMUL_REPS)
    peak16 = matmul_peak("bfloat16", reps=MATMUL_REPS)
    print(f"matmul 4096^2: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s; "
          f"CPU native bf16: {bf16_supported()}", flush=True)

    if not args.skip_baseline:
        keras.mixed_precision.set_global_policy("float32")
        x, y = load_numpy(train, root)
        keras.utils.set_random_seed(0)
        base = seed_baseline_model()
        ips = timed_fit(base, (x, y), len(x), args.epochs, batch_size=args.batch_size, shuffle=True)
        rows.append(("seed baseline (numpy float32, fit)", "float32", ips))
        print(rows[-1], flush=True)
        del x, base

    ds = make_dataset(train, root=root, image_size=(128, 128), batch_size=args.batch_size,
                      scaling="uint8", shuffle=True, cache="memory")
    infer_ds = make_dataset(frame.iloc[: args.infer_images], root=root, batch_size=256,
                            scaling="uint8", cache="memory")
    infer_images = np.concatenate([b[0].numpy() for b in infer_ds])
    models = {}
    for policy in ("float32", "mixed_bfloat16"):
        keras.utils.set_random_seed(0)
        model = create_model("custom_cnn", weights=None, precision=policy)
        compile_model(model, jit_compile=jit)
        ips = timed_fit(model, ds, len(train), args.epochs)
        rows.append((f"agegender_models + {pipeline}", policy, ips))
        print(rows[-1], flush=True)
        models[policy] = model
    print(f"global policy after the run: {get_precision()}")

    base_ips = rows[0][2] if not args.skip_baseline else float("nan")
    lines = [
        f"matmul 4096²: **{peak32:.0f} GFLOP/s fp32, {peak16:.0f} GFLOP/s bf16** (same run); "
        f"native bf16 on this CPU: {bf16_supported()}",
        "",
        f"Training, Model A 128×128, batch {args.batch_size}, {len(train)} images, "
        f"{args.epochs} timed epoch(s) after a warm-up epoch, jit_compile={args.jit}:",
        "",
        "| setup | policy | images/s | vs baseline | GFLOP/s (3× fwd) |",
        "|---|---|---:|---:|---:|",
    ]
    for name, policy, ips in rows:
        lines.append(f"| {name} | {policy} | {ips:.1f} | {ips / base_ips:.2f}× | "
                     f"{ips * 3 * GFLOP_PER_IMAGE:.0f} |")
    lines += ["", f"Inference, Model A, {len(infer_images)} images:", "",
              f"| policy | batch {args.infer_batch} images/s | GFLOP/s | single-image latency (median) |",
              "|---|---:|---:|---:|"]
    for policy, model in models.items():
        ips, ms = inference(model, infer_images, args.infer_batch, latency_reps=30)
        lines.append(f"| {policy} | {ips:.1f} | {ips * GFLOP_PER_IMAGE:.0f} | {ms:.1f} ms |")
        print(lines[-1], flush=True)
    print(f"\nTF {tf.__version__}, Keras {keras.__version__}\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
