"""What flip TTA and ensembles cost at inference: single-image latency and batch throughput of
each model alone, with ``flip_tta``, and of their ``ensemble`` with and without it, in one run.

    TF_CPP_MIN_LOG_LEVEL=2 python bench/bench_inference_options.py \\
        --data-dir ../shared/utkface/crop_part1_5000 --model runs/mnv2_192/model.keras \\
        --model runs/model_a_d025/model.keras [--out bench/bench_inference_options.json]

Each round times every variant once, in a rotating order; ratios are taken within a round
against the first model alone, figures are medians over rounds. Prints a Markdown table.
``nox -s bench`` gives it one model ($AGEGENDER_MODEL): the ensemble rows need ``--model`` twice.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import cpu_name  # noqa: E402
from bench_detect import DEFAULT_MODEL  # noqa: E402
from bench_export import load_images  # noqa: E402
from bench_models import inference  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", action="append", default=None,
                        help="trained .keras model; repeat for an ensemble (default: "
                        "$AGEGENDER_MODEL)")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-reps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.model = args.model or ([DEFAULT_MODEL] if DEFAULT_MODEL else None)
    if not args.model:
        parser.error("no model: pass --model or set AGEGENDER_MODEL")
    for path in args.model:
        if not Path(path).is_file():
            parser.error(f"model not found: {path} (pass --model or set AGEGENDER_MODEL)")

    from agegender_models import ensemble, flip_tta, load_model

    models = [load_model(path) for path in args.model]
    variants = {}
    for i, (path, model) in enumerate(zip(args.model, models, strict=True)):
        label = Path(path).parent.name
        label = label if label not in variants else f"{label} ({i + 1})"  # the same folder name twice
        variants[label] = model
        variants[f"{label} + flip TTA"] = flip_tta(model)
    if len(models) > 1:
        both = ensemble(models)
        variants["ensemble"] = both
        variants["ensemble + flip TTA"] = flip_tta(both)
    images = {}
    for model in variants.values():
        size = tuple(model.input_shape[1:3])
        if size not in images:
            images[size] = load_images(args.data_dir, args.images, size)

    names = list(variants)
    rows = {name: {"ips": [], "ms": [], "ips_ratio": [], "ms_ratio": []} for name in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        measured = {}
        for name in order:
            model = variants[name]
            measured[name] = inference(model, images[tuple(model.input_shape[1:3])],
                                       args.batch_size, args.latency_reps)
        base_ips, base_ms = measured[names[0]]
        for name, (ips, ms) in measured.items():
            rows[name]["ips"].append(ips)
            rows[name]["ms"].append(ms)
            rows[name]["ips_ratio"].append(ips / base_ips)
            rows[name]["ms_ratio"].append(ms / base_ms)

    result = {"cpu": cpu_name(), "models": args.model, "rounds": args.rounds,
              "batch_size": args.batch_size, "images": args.images,
              "variants": {name: {key: statistics.median(values) for key, values in row.items()}
                           | {f"{key}_all": values for key, values in row.items()}
                           for name, row in rows.items()}}
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"| variant | single-image latency (median) | vs {names[0]} | "
          f"batch-{args.batch_size} throughput | vs {names[0]} |")
    print("|---|---:|---:|---:|---:|")
    for name, row in result["variants"].items():
        print(f"| {name} | {row['ms']:.1f} ms | {row['ms_ratio']:.2f}× | {row['ips']:.1f} img/s | "
              f"{row['ips_ratio']:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
