"""The ``agegender`` command: train, evaluate and predict.

    agegender train --data-dir DIR --out runs/model_a            # the seed's Model A recipe
    agegender evaluate --model runs/model_a/model.keras --data-dir DIR --out eval/
    agegender predict --model runs/model_a/model.keras face1.jpg faces/ --json
    agegender predict --model runs/model_a/model.keras --detect mtcnn photo.jpg   # whole photos
    agegender export --model runs/model_a/model.keras --format tflite --out model.tflite

``train`` and ``evaluate`` need the ``app`` extra (``pip install "agegender-models[app]"``);
``predict`` and ``export`` need only this package, except ``predict --detect`` (the ``detect``
extra, ``pip install "agegender-models[detect]"``) and ``export --format onnx`` (the ``onnx`` extra).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# before anything imports TensorFlow (agegender_models imports keras), or its start-up lines print
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# training.py imports the 'app' extra (utkface_data, agegender_eval) only inside its functions
from agegender.training import FIT_ON, LR_SCHEDULES, MONITORS, STRATEGIES  # noqa: E402
from agegender_models.detect import DETECTORS  # noqa: E402
from agegender_models.export import FORMATS as EXPORT_FORMATS  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class CLIError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


# Errors that describe the user's input (a missing file, a bad option, a missing extra): one line
# on stderr and exit status 2, never a traceback.
USER_ERRORS = (CLIError, FileNotFoundError, NotADirectoryError, ValueError, ImportError)


def run_or_exit(func, *args, prog: str = "agegender") -> int:
    """Call ``func(*args)``; a user error becomes one line on stderr and exit status 2."""
    try:
        return int(func(*args))
    except USER_ERRORS as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


# --------------------------------------------------------------------------------------------------
# train


def _rate(text: str) -> float:
    """argparse type for a rate in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def add_train_arguments(parser: argparse.ArgumentParser, *, backbone: str = "custom_cnn") -> None:
    """Options shared by ``agegender train`` and the ``examples/reproduce_*.py`` scripts."""
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", default=os.environ.get("UTKFACE_DIR"),
                      help="folder of UTKFace images (default: $UTKFACE_DIR)")
    data.add_argument("--splits", default=None,
                      help="folder with train.csv/val.csv/test.csv to reuse instead of splitting")
    data.add_argument("--n", type=int, default=5000, help="images to use (stratified subset; default 5000)")
    data.add_argument("--seed", type=int, default=0, help="seed for subset, split and training (default 0)")
    data.add_argument("--val", type=float, default=0.15, help="validation fraction (default 0.15)")
    data.add_argument("--test", type=float, default=0.15, help="test fraction (default 0.15)")
    data.add_argument("--image-size", type=int, default=128, help="square input size (default 128)")
    data.add_argument("--augment", action="store_true", help="flip/brightness/contrast/crop jitter")
    data.add_argument("--no-cache", action="store_true", help="do not cache decoded images in memory")

    model = parser.add_argument_group("model")
    model.add_argument("--backbone", default=backbone, help=f"registered backbone (default {backbone})")
    model.add_argument("--weights", default=None,
                       help="backbone weights: 'imagenet' or a local weights file (default: none)")
    model.add_argument("--trainable-layers", type=int, default=None,
                       help="fine-tune only the last N backbone layers (backbone default otherwise)")
    model.add_argument("--dropout", type=_rate, default=None,
                       help="dropout rate after each dense layer (backbone default otherwise: "
                       "0.5 for custom_cnn)")

    fit = parser.add_argument_group("training")
    fit.add_argument("--epochs", type=int, default=100, help="maximum epochs; early stopping applies")
    fit.add_argument("--batch-size", type=int, default=32, help="global batch size (default 32)")
    fit.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    fit.add_argument("--patience", type=int, default=10, help="early-stopping patience (default 10)")
    fit.add_argument("--monitor", choices=tuple(MONITORS),
                     default="val_loss", help="what early stopping and the kept best model watch "
                     "(default val_loss; the learning-rate schedule always follows val_loss)")
    fit.add_argument("--gender-weight", type=float, default=1.0, help="loss weight of the gender head")
    fit.add_argument("--age-weight", type=float, default=1.0, help="loss weight of the age head")
    fit.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                     help="'plateau' halves the learning rate when the validation loss stalls; "
                     "'replay' sets each epoch's rate from --lr-history")
    fit.add_argument("--lr-history", default=None, metavar="HISTORY_CSV",
                     help="with --lr-schedule replay: an earlier run's history.csv whose logged "
                     "learning rates are replayed epoch by epoch")
    fit.add_argument("--fit-on", choices=FIT_ON, default="train",
                     help="'train+val' is the final fit: train on both splits for exactly --epochs "
                     "epochs and keep the last (no validation, early stopping or plateau; the test "
                     "split stays held out). Default: train")
    fit.add_argument("--warmup-epochs", type=int, default=0,
                     help="transfer recipe (needs --weights): train N epochs with the backbone frozen, "
                     "then unfreeze --trainable-layers and go on at --finetune-lr (default 0: off)")
    fit.add_argument("--finetune-lr", type=float, default=None,
                     help="learning rate after the warm-up (default: --lr / 10)")
    fit.add_argument("--ema", type=float, default=None, metavar="MOMENTUM",
                     help="keep a moving average of the weights (e.g. 0.99) and validate, checkpoint "
                     "and keep the averaged weights (default: off)")
    fit.add_argument("--head-refit-epochs", type=int, default=0,
                     help="after training, refit the two output layers for N epochs with dropout off "
                     "(removes dropout's train/inference mismatch; default 0 = the seed's recipe)")
    fit.add_argument("--precision", choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"],
                     default="auto", help="'auto' = mixed bfloat16 where the hardware supports it and, on a "
                     "CPU, the backbone gains from it (not the MobileNets); default auto")
    fit.add_argument("--no-mixed-precision", action="store_true", help="same as --precision float32")
    fit.add_argument("--strategy", choices=STRATEGIES, default="default",
                     help="tf.distribute strategy ('mirrored' splits the CPU in two without a GPU)")
    parser.add_argument("--out", required=True, help="run folder (an existing one is resumed)")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress output")


def config_from_args(args: argparse.Namespace):
    from agegender.training import TrainConfig

    return TrainConfig(
        out=args.out, data_dir=args.data_dir, splits=args.splits, backbone=args.backbone, n=args.n,
        seed=args.seed, val=args.val, test=args.test, image_size=args.image_size,
        batch_size=args.batch_size, epochs=args.epochs, patience=args.patience,
        learning_rate=args.lr, gender_loss_weight=args.gender_weight,
        age_loss_weight=args.age_weight, lr_schedule=args.lr_schedule, augment=args.augment,
        precision="float32" if args.no_mixed_precision else args.precision,
        strategy=args.strategy, weights=args.weights, trainable_layers=args.trainable_layers,
        cache=None if args.no_cache else "memory", head_refit_epochs=args.head_refit_epochs,
        warmup_epochs=args.warmup_epochs, finetune_learning_rate=args.finetune_lr,
        ema_momentum=args.ema, monitor=args.monitor, fit_on=args.fit_on, lr_history=args.lr_history,
        model_kwargs={} if args.dropout is None else {"dropout": args.dropout},
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from agegender.evaluation import format_summary
    from agegender.training import train

    metrics = train(config_from_args(args), verbose=0 if args.quiet else "auto")
    print(format_summary(metrics))
    print(f"run folder: {args.out} (best model: {Path(args.out) / 'model.keras'})")
    return 0


# --------------------------------------------------------------------------------------------------
# evaluate


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` (repeatable: an ensemble) and ``--flip-tta``, for evaluate/predict/export."""
    parser.add_argument("--model", required=True, action="append",
                        help="saved model (.keras); give it more than once to average several "
                        "models (an ensemble; input size: the largest member's)")
    parser.add_argument("--flip-tta", action="store_true",
                        help="average each prediction with the one on the mirrored image (2x slower)")


def _load_for_inference(args: argparse.Namespace):
    from agegender_models import ensemble, flip_tta, load_model

    paths = [Path(path) for path in args.model]
    for path in paths:  # every path before loading any: a typo is reported at once
        if not path.is_file():
            raise CLIError(f"model file not found: {path}")
    models = [load_model(path) for path in paths]
    model = models[0] if len(models) == 1 else ensemble(models)
    return flip_tta(model) if args.flip_tta else model


def _model_label(args: argparse.Namespace) -> str:
    label = " + ".join(args.model)
    return f"{label} (flip TTA)" if args.flip_tta else label


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import utkface_data
    from agegender.evaluation import write_evaluation

    model = _load_for_inference(args)
    if not args.data_dir:
        raise CLIError("no data: pass --data-dir or set UTKFACE_DIR")
    root = Path(args.data_dir)
    if args.split:
        split_path = Path(args.split)
        if not split_path.is_file():
            raise CLIError(f"split file not found: {split_path}")
        frame = utkface_data.load_split_file(split_path, root=root)
    else:
        frame = utkface_data.index_folder(root, progress=False).frame
    size = int(model.inputs[0].shape[1])
    result = write_evaluation(model, frame, root, Path(args.out), image_size=size,
                              title=f"Evaluation of {_model_label(args)}",
                              extra={"models": args.model, "data_dir": str(root),
                                     "flip_tta": args.flip_tta})
    from agegender.evaluation import format_summary

    print(format_summary({"evaluation": result.to_dict()}))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


# --------------------------------------------------------------------------------------------------
# predict


def expand_inputs(inputs: Sequence[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Files as given, folders expanded to their image files; returns (files, errors)."""
    files: list[str] = []
    errors: list[dict[str, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(str(p) for p in path.iterdir()
                           if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
            if not found:
                errors.append({"file": item, "reason": "folder contains no image files"})
            files.extend(found)
        elif path.is_file():
            files.append(item)
        else:
            errors.append({"file": item, "reason": "no such file or folder"})
    return files, errors


def _cmd_predict(args: argparse.Namespace) -> int:
    from agegender_models import Predictor

    files, errors = expand_inputs(args.inputs)
    model = _load_for_inference(args)
    # builds the detector before any image is read: a missing 'detect' extra is one clear line
    predictor = Predictor(model, detector=args.detect)
    predictions: list[dict[str, Any]] = []
    if files:
        found, bad = predictor.predict(files, batch_size=args.batch_size, return_errors=True)
        predictions.extend(found)
        errors.extend(bad)
    rows = []
    for p in predictions:
        row: dict[str, Any] = {"file": p["file"]}
        if args.detect:
            row.update(face=p["face"], box=p["box"], confidence=p["confidence"])
        row.update(age=round(float(p["age"]), 1), gender=p["gender"],
                   p_female=round(float(p["p_female"]), 4))
        rows.append(row)
    if args.json:
        print(json.dumps({"predictions": rows, "errors": errors}, indent=2))
    elif args.csv:
        buffer = io.StringIO()
        face_fields = ["face", "box", "confidence"] if args.detect else []
        writer = csv.DictWriter(
            buffer, fieldnames=["file", *face_fields, "age", "gender", "p_female", "error"]
        )
        writer.writeheader()
        writer.writerows(
            {**r, "box": " ".join(map(str, r["box"]))} if args.detect else r for r in rows
        )
        writer.writerows({"file": e["file"], "error": e["reason"]} for e in errors)
        print(buffer.getvalue(), end="")
    else:
        width = max([len(r["file"]) for r in rows] + [4])
        face_head = f"  {'face':>4}  {'box (x y w h)':<21}" if args.detect else ""
        print(f"{'file':<{width}}{face_head}  {'age':>5}  {'gender':<6}  p_female")
        for r in rows:
            face = (f"  {r['face']:>4}  {' '.join(map(str, r['box'])):<21}" if args.detect else "")
            print(f"{r['file']:<{width}}{face}  {r['age']:>5.1f}  {r['gender']:<6}  {r['p_female']:.3f}")
        for e in errors:
            print(f"error: {e['file']}: {e['reason']}", file=sys.stderr)
    if not rows:
        return 1
    return 0


# --------------------------------------------------------------------------------------------------
# export


def _cmd_export(args: argparse.Namespace) -> int:
    from agegender_models.export import export_model

    path = export_model(_load_for_inference(args), args.out, format=args.format)
    print(f"exported {_model_label(args)} as {args.format}: {path} (input: uint8 RGB images, "
          f"outputs: gender = P(female), age in years)")
    return 0


# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agegender",
        description="Predict age and gender from face images; train and evaluate the models.",
        epilog="Examples:\n"
        "  agegender train --data-dir ~/UTKFace --out runs/model_a\n"
        "  agegender evaluate --model runs/model_a/model.keras --data-dir ~/UTKFace --out eval\n"
        "  agegender predict --model runs/model_a/model.keras face.jpg photos/ --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a model on a UTKFace folder (the seed's recipe by default)",
        description="Train a model: index + split the data, fit with early stopping, write the run "
        "folder (config.json, splits/, history.csv, model.keras, metrics.json, report/). "
        "Running again with the same --out resumes after the last finished epoch.",
    )
    add_train_arguments(train)
    train.set_defaults(func=_cmd_train)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a saved model on labelled images and write a report",
        description="Evaluate a .keras model on a UTKFace folder (or one split CSV from it) and "
        "write OUT/report.md, OUT/metrics.json, plots and OUT/predictions.csv (one row per image: "
        "path, age, gender, race, age_pred, p_female).",
    )
    add_model_arguments(evaluate)
    evaluate.add_argument("--data-dir", default=os.environ.get("UTKFACE_DIR"),
                          help="folder of UTKFace images (default: $UTKFACE_DIR)")
    evaluate.add_argument("--split", default=None,
                          help="a split CSV (path,age,gender,race; paths relative to --data-dir)")
    evaluate.add_argument("--out", required=True, help="folder for the report")
    evaluate.set_defaults(func=_cmd_evaluate)

    predict = commands.add_parser(
        "predict", help="predict age and gender for images or folders of images",
        description="Predict age and gender. Prints a table; --json or --csv for scripts. "
        "Unreadable images are listed as errors; the others are still predicted.",
    )
    add_model_arguments(predict)
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders")
    fmt = predict.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON object")
    fmt.add_argument("--csv", action="store_true", help="print CSV")
    predict.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    predict.add_argument("--detect", choices=DETECTORS, default=None,
                         help="find the faces in ordinary photos and crop each like a UTKFace chip "
                         "(one result per face, with 'face' and 'box'; a photo with no face is "
                         "listed in errors as 'no face found'). Needs "
                         "pip install 'agegender-models[detect]'. Default: inputs are face chips")
    predict.set_defaults(func=_cmd_predict)

    export = commands.add_parser(
        "export", help="export a saved model for serving (SavedModel, TFLite or ONNX)",
        description="Export a .keras model (or, with --model more than once, their ensemble; "
        "--flip-tta adds the mirror-image average). The artefact takes raw uint8 RGB images of the "
        "model's input size (an ensemble's: the largest member's; preprocessing inside) and returns "
        "gender (P(female)) and age.",
    )
    add_model_arguments(export)
    export.add_argument("--format", choices=EXPORT_FORMATS, default="savedmodel",
                        help="savedmodel (a folder), tflite or onnx (a file; needs "
                        "pip install 'agegender-models[onnx]')")
    export.add_argument("--out", required=True,
                        help="folder (savedmodel) or file (tflite, onnx) to write")
    export.set_defaults(func=_cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_or_exit(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
