"""The ``agegender`` command: train, evaluate, predict and export.

    agegender train --recipe model-a-improved --data-dir DIR --out runs/model_a
    agegender evaluate --model runs/model_a/model.keras --data-dir DIR --out eval/
    agegender predict --model runs/model_a/model.keras face1.jpg faces/ --json
    agegender export --model runs/model_a/model.keras --format tflite --out model.tflite

``--help`` answers without importing TensorFlow; TensorFlow is loaded (quietly, unless
``--verbose``) only by the command that needs it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agegender.config import add_train_options, list_recipes, resolve_config

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# agegender_models.detect.DETECTORS and agegender_models.export.FORMATS, repeated here so that
# --help need not import the library (and TensorFlow with it); a test checks that they agree.
DETECTORS = ("mtcnn", "haar")
EXPORT_FORMATS = ("savedmodel", "tflite", "onnx")

EXIT_STATUSES = """\
exit status:
  0  done: every input gave a result
  1  some inputs failed (predict: they are listed under "errors"; the others are predicted)
  2  usage error: a bad option or value, a missing file or extra, a run folder in use or
     started with other options; one line on stderr names it"""


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


def setup(args: argparse.Namespace) -> None:
    """Load TensorFlow (quietly unless --verbose) and show the run's own log lines."""
    from agegender._tf import load_tensorflow

    load_tensorflow(verbose=getattr(args, "verbose", False))
    logger = logging.getLogger("agegender")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("agegender: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (``main`` may run many times in one
    process, as in the tests, with stderr redirected each time)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


# --------------------------------------------------------------------------------------------------
# train


def add_train_arguments(parser: argparse.ArgumentParser, *, recipe: str | None = None) -> None:
    """``--recipe``, one flag per training option, ``--quiet``: for ``agegender train`` and the
    example scripts (``recipe``: the recipe used when ``--recipe`` is not given)."""
    parser.add_argument("--recipe", default=recipe, metavar="NAME_OR_PATH",
                        help=f"a recipe name ({', '.join(list_recipes()) or 'none found'}), a recipe "
                        "TOML file or a run folder's config.json; flags given override it "
                        f"(default: {recipe or 'none: the seed recipe'})")
    add_train_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no per-epoch progress output")


def config_from_args(args: argparse.Namespace):
    """The run's config: defaults, then ``--recipe``, then every flag given."""
    from agegender.config import TrainConfig

    fields = set(TrainConfig.__dataclass_fields__)
    given = {name: value for name, value in vars(args).items() if name in fields}
    return resolve_config(getattr(args, "recipe", None), **given)


def train_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Train as the parsed ``agegender train`` arguments say; print the summary and where the
    model and the report are. Returns the metrics."""
    from agegender.runfolder import RunFolder

    config = config_from_args(args)
    config.validate()  # before TensorFlow loads: a bad option or a folder in use answers at once
    if Path(config.out).is_dir():
        with RunFolder(config.out):
            pass
    setup(args)
    from agegender.evaluation import format_summary
    from agegender.training import train

    metrics = train(config, verbose=0 if args.quiet else "auto")
    run = RunFolder(config.out)
    if metrics.get("finished_earlier"):
        print(f"{run.path} already holds this finished run (nothing trained):")
    print(format_summary(metrics))
    print(f"model:  {run.model_path}")
    print(f"report: {run.report_path}")
    return metrics


def _cmd_train(args: argparse.Namespace) -> int:
    train_from_args(args)
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
    paths = [Path(path) for path in args.model]
    for path in paths:  # every path before loading any: a typo is reported at once
        if not path.is_file():
            raise CLIError(f"model file not found: {path}")
    setup(args)
    from agegender_models import ensemble, flip_tta, load_model

    models = [load_model(path) for path in paths]
    model = models[0] if len(models) == 1 else ensemble(models)
    return flip_tta(model) if args.flip_tta else model


def _model_label(args: argparse.Namespace) -> str:
    label = " + ".join(args.model)
    return f"{label} (flip TTA)" if args.flip_tta else label


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if not args.data_dir:
        raise CLIError("no data: pass --data-dir or set UTKFACE_DIR")
    root = Path(args.data_dir)
    split_path = Path(args.split) if args.split else None
    if split_path is not None and not split_path.is_file():
        raise CLIError(f"split file not found: {split_path}")
    model = _load_for_inference(args)
    import utkface_data
    from agegender.evaluation import format_summary, write_evaluation

    if split_path is not None:
        frame = utkface_data.load_split_file(split_path, root=root)
    else:
        frame = utkface_data.index_folder(root, progress=False).frame
    size = int(model.inputs[0].shape[1])
    result = write_evaluation(model, frame, root, Path(args.out), image_size=size,
                              title=f"Evaluation of {_model_label(args)}",
                              extra={"models": args.model, "data_dir": str(root),
                                     "flip_tta": args.flip_tta})
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


def _rows(predictions: list[dict[str, Any]], detect: bool) -> list[dict[str, Any]]:
    rows = []
    for p in predictions:
        row: dict[str, Any] = {"file": p["file"]}
        if detect:
            row.update(face=p["face"], box=p["box"], confidence=p["confidence"])
        row.update(age=round(float(p["age"]), 1), gender=p["gender"],
                   p_female=round(float(p["p_female"]), 4))
        rows.append(row)
    return rows


def _print_csv(rows, errors, detect: bool) -> None:
    buffer = io.StringIO()
    face_fields = ["face", "box", "confidence"] if detect else []
    writer = csv.DictWriter(buffer, fieldnames=["file", *face_fields, "age", "gender", "p_female", "error"])
    writer.writeheader()
    writer.writerows({**r, "box": " ".join(map(str, r["box"]))} if detect else r for r in rows)
    writer.writerows({"file": e["file"], "error": e["reason"]} for e in errors)
    print(buffer.getvalue(), end="")


def _print_table(rows, errors, detect: bool) -> None:
    width = max([len(r["file"]) for r in rows] + [4])
    face_head = f"  {'face':>4}  {'box (x y w h)':<21}" if detect else ""
    print(f"{'file':<{width}}{face_head}  {'age':>5}  {'gender':<6}  p_female")
    for r in rows:
        face = f"  {r['face']:>4}  {' '.join(map(str, r['box'])):<21}" if detect else ""
        print(f"{r['file']:<{width}}{face}  {r['age']:>5.1f}  {r['gender']:<6}  {r['p_female']:.3f}")
    for e in errors:
        print(f"error: {e['file']}: {e['reason']}", file=sys.stderr)


def _cmd_predict(args: argparse.Namespace) -> int:
    files, errors = expand_inputs(args.inputs)
    model = _load_for_inference(args)
    from agegender_models import Predictor

    # builds the detector before any image is read: a missing 'detect' extra is one clear line
    predictor = Predictor(model, detector=args.detect)
    predictions: list[dict[str, Any]] = []
    if files:
        found, bad = predictor.predict(files, batch_size=args.batch_size, return_errors=True)
        predictions.extend(found)
        errors.extend(bad)
    rows = _rows(predictions, bool(args.detect))
    if args.json:
        print(json.dumps({"predictions": rows, "errors": errors}, indent=2))
    elif args.csv:
        _print_csv(rows, errors, bool(args.detect))
    else:
        _print_table(rows, errors, bool(args.detect))
    return 1 if errors else 0


# --------------------------------------------------------------------------------------------------
# export


def _cmd_export(args: argparse.Namespace) -> int:
    model = _load_for_inference(args)
    from agegender_models.export import export_model

    path = export_model(model, args.out, format=args.format)
    print(f"exported {_model_label(args)} as {args.format}: {path} (input: uint8 RGB images, "
          f"outputs: gender = P(female), age in years)")
    return 0


# --------------------------------------------------------------------------------------------------


def _add_train(commands) -> None:
    train = commands.add_parser(
        "train", help="train a model on a UTKFace folder (a recipe, or the seed's by default)",
        description="Train a model: index + split the data, run the recipe's phases, write the "
        "run folder (config.json, splits/, history.csv, model.keras, metrics.json, report/). "
        "Options: the recipe's, then any flag given. Running again with the same --out resumes an "
        "unfinished run (with the same options); a finished run is not trained again.",
        epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(train)
    train.set_defaults(func=_cmd_train)


def _add_evaluate(commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="evaluate a saved model on labelled images and write a report",
        description="Evaluate a .keras model on a UTKFace folder (or one split CSV from it) and "
        "write OUT/report.md, OUT/metrics.json, plots and OUT/predictions.csv (one row per image: "
        "path, age, gender, race, age_pred, p_female).",
        epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(evaluate)
    evaluate.add_argument("--data-dir", default=os.environ.get("UTKFACE_DIR"),
                          help="folder of UTKFace images (default: $UTKFACE_DIR)")
    evaluate.add_argument("--split", default=None,
                          help="a split CSV (path,age,gender,race; paths relative to --data-dir)")
    evaluate.add_argument("--out", required=True, help="folder for the report")
    evaluate.set_defaults(func=_cmd_evaluate)


def _add_predict(commands) -> None:
    predict = commands.add_parser(
        "predict", help="predict age and gender for images or folders of images",
        description="Predict age and gender. Prints a table; --json or --csv for scripts. "
        "Unreadable images are listed as errors; the others are still predicted.",
        epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter,
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
                         "listed in errors as 'no face found'). Needs the detect extra: "
                         "pip install './packages/agegender[detect]'. Default: inputs are face chips")
    predict.set_defaults(func=_cmd_predict)


def _add_export(commands) -> None:
    export = commands.add_parser(
        "export", help="export a saved model for serving (SavedModel, TFLite or ONNX)",
        description="Export a .keras model (or, with --model more than once, their ensemble; "
        "--flip-tta adds the mirror-image average). The artefact takes raw uint8 RGB images of the "
        "model's input size (an ensemble's: the largest member's; preprocessing inside) and returns "
        "gender (P(female)) and age.",
        epilog=EXIT_STATUSES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(export)
    export.add_argument("--format", choices=EXPORT_FORMATS, default="savedmodel",
                        help="savedmodel (a folder), tflite or onnx (a file; needs the onnx extra: "
                        "pip install './packages/agegender[onnx]')")
    export.add_argument("--out", required=True,
                        help="folder (savedmodel) or file (tflite, onnx) to write")
    export.set_defaults(func=_cmd_export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agegender",
        description="Predict age and gender from face images; train and evaluate the models.",
        epilog="examples:\n"
        "  agegender train --recipe model-a-improved --data-dir ~/UTKFace --out runs/model_a\n"
        "  agegender evaluate --model runs/model_a/model.keras --data-dir ~/UTKFace --out eval\n"
        "  agegender predict --model runs/model_a/model.keras face.jpg photos/ --json\n\n"
        + EXIT_STATUSES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's own start-up and log lines")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_evaluate, _add_predict, _add_export):
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_or_exit(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
