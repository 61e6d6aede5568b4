"""float32 against mixed bfloat16, per backbone: training and inference throughput in one run.

    TF_CPP_MIN_LOG_LEVEL=2 python bench/bench_precision.py

What ``--precision auto`` should pick on a CPU with native bf16 (AVX512_BF16 / AMX) depends on
the layers: dense convolutions gain, depthwise ones may not. Each backbone is built as training
uses it (the transfer recipe's trainable layers and frozen BatchNorm for the pretrained ones;
random initial weights, none loaded) and fed random uint8 images, so only the network's
arithmetic is compared. Figures are ratios within one run (a shared, noisy machine).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import matmul_peak  # bench/ is the script's folder
from bench_models import MATMUL_REPS, inference, timed_fit

# (backbone, input size, fine-tuned layers as in RESULTS.md's runs; None = all, from scratch)
SETUPS = (
    ("custom_cnn", 128, None),
    ("mobilenet_v2", 192, 60),
    ("mobilenet_v3_small", 128, 30),
    ("resnet50", 128, 30),
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-images", type=int, default=256)
    parser.add_argument("--infer-images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--infer-batch", type=int, default=64)
    parser.add_argument("--backbones", nargs="*", default=[s[0] for s in SETUPS])
    parser.add_argument("--data-dir", help="not used (random images); accepted for `nox -s bench`")
    args = parser.parse_args(argv)

    import keras

    from agegender_models import bf16_supported, compile_model, create_model, set_trainable

    started = time.strftime("%Y-%m-%d %H:%M")
    print(f"{started}; matmul 4096^2: fp32 {matmul_peak('float32', reps=MATMUL_REPS):.0f} GFLOP/s, "
          f"bf16 {matmul_peak('bfloat16', reps=MATMUL_REPS):.0f} GFLOP/s; "
          f"CPU native bf16: {bf16_supported()}", flush=True)
    rng = np.random.default_rng(0)
    rows = []
    for backbone, size, layers in SETUPS:
        if backbone not in args.backbones:
            continue
        x = rng.integers(0, 256, (args.train_images, size, size, 3), dtype=np.uint8)
        y = {"gender": rng.integers(0, 2, (len(x), 1)).astype("float32"),
             "age": rng.uniform(1, 90, (len(x), 1)).astype("float32")}
        measured = {}
        for policy in ("float32", "mixed_bfloat16"):
            keras.utils.set_random_seed(0)
            model = create_model(backbone, input_shape=(size, size, 3), weights=None, precision=policy)
            if layers is not None:
                set_trainable(model, layers, freeze_batchnorm=True)
            compile_model(model)
            train_ips = timed_fit(model, (x, y), len(x), 1, batch_size=args.batch_size)
            infer_ips, latency = inference(model, x[: args.infer_images], args.infer_batch, latency_reps=20)
            measured[policy] = (train_ips, infer_ips, latency)
            print(backbone, size, policy, [round(v, 1) for v in measured[policy]], flush=True)
        (t32, i32, l32), (t16, i16, l16) = measured["float32"], measured["mixed_bfloat16"]
        rows.append(f"| {backbone} | {size} | {t32:.1f} | {t16:.1f} | **{t16 / t32:.2f}×** | "
                    f"{i32:.1f} | {i16:.1f} | **{i16 / i32:.2f}×** | {l32:.1f} / {l16:.1f} ms |")
    print()
    print(f"Training (batch {args.batch_size}, {args.train_images} images, one timed epoch after a "
          f"warm-up one) and inference (batch {args.infer_batch}; latency: one image, median of 20):")
    print()
    print("| backbone | px | train fp32 img/s | train bf16 img/s | bf16 / fp32 | infer fp32 img/s | "
          "infer bf16 img/s | bf16 / fp32 | latency fp32 / bf16 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
