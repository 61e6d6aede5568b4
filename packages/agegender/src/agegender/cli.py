"""The ``agegender`` command: train, evaluate, predict and export.

    agegender train --recipe model-a-improved --data-dir DIR --out runs/model_a
    agegender evaluate --model runs/model_a/model.keras --data-dir DIR --out eval/
    agegender predict --model runs/model_a/model.keras face1.jpg faces/ --json
    agegender predict-batch faces/ --model runs/model_a/model.keras --out results/   # on Ray
    agegender export --model runs/model_a/model.keras --format tflite --out model.tflite
    agegender fit-readouts --model runs/mnv2/model.keras --face-api DIR --data-dir DIR \
        --splits runs/mnv2/splits --out runs/mnv2_readouts     # + dlib's face descriptor

``--help`` answers without importing TensorFlow; TensorFlow is loaded (quietly, unless
``--verbose``) only by the command that needs it.
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib.util
import io
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from agegender.cluster import ClusterError, cluster_task
from agegender.config import add_train_options, list_recipes, resolve_config
from agegender.inputs import IMAGE_SUFFIXES, list_images
from agegender.readouts import DEFAULTS as READOUT_DEFAULTS

# agegender_models.detect.DETECTORS and agegender_models.export.FORMATS, repeated here so that
# --help need not import the library (and TensorFlow with it); a test checks that they agree.
DETECTORS = ("auto", "yunet-onet", "yunet", "mtcnn", "haar")
EXPORT_FORMATS = ("savedmodel", "tflite", "onnx")
QUANTIZATIONS = ("none", "float16", "int8")  # agegender_models.export.QUANTIZATIONS
RUNTIMES = ("auto", "keras", "tflite", "onnx")  # agegender_models.runtime.RUNTIMES

EXIT_STATUSES = """\
exit status:
  0  done: every input gave a result
  1  some inputs failed (predict: they are listed under "errors", a missing input file among
     them; the others are predicted)
  2  usage error: a bad option or value, a missing file named by an option (--model,
     --splits, ...) or a missing extra, a run folder in use or started with other options;
     one line on stderr names it
  3  train --strategy multi_worker: the cluster lost a worker, or the workers disagree; one
     line says what to do (start every worker again: the run resumes from its last epoch)"""


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
    except ClusterError as exc:  # multi-worker training: a lost worker, or workers that disagree
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 3


def setup(args: argparse.Namespace) -> None:
    """Load TensorFlow (quietly unless --verbose) and show the run's own log lines."""
    from agegender._tf import load_tensorflow

    load_tensorflow(verbose=getattr(args, "verbose", False))
    _show_log_lines()


def _show_log_lines() -> None:
    """The run's log lines on stderr as ``agegender: ...``; the library's own progress lines
    (agegender_models.runtime's "auto") show the same way."""
    for logger in (logging.getLogger("agegender"), logging.getLogger("agegender_models")):
        if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("agegender: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            # shown once: TensorFlow's converters may give the root logger a handler of its own
            logger.propagate = False


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
    task = cluster_task() if config.strategy == "multi_worker" else None
    if config.strategy == "multi_worker" and task is None:
        raise CLIError("--strategy multi_worker needs TF_CONFIG: the cluster and this process's "
                       "task in it (see packages/agegender/README.md, 'Several machines')")
    if (task is None or task.is_chief) and Path(config.out).is_dir():  # only the chief locks it
        with RunFolder(config.out):
            pass
    setup(args)
    from agegender.evaluation import format_summary
    from agegender.training import train

    metrics = train(config, verbose=0 if args.quiet else "auto")
    if task is not None and not task.is_chief:
        done = "nothing to train, the run is finished" if metrics.get("finished_earlier") else "trained"
        print(f"{task}: {done}; the chief writes the run folder {config.out}")
        return metrics
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


def add_model_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--model`` (repeatable: an ensemble; not ``required``: the shipped default model) and
    ``--flip-tta``, for evaluate/predict/export."""
    shipped = _shipped_models().get("default") or "the model that ships with agegender-models"
    default = "" if required else f" (default: {shipped})"
    parser.add_argument("--model", required=required, action="append", metavar="NAME_OR_PATH",
                        help="a saved model (.keras) or the name of a shipped one"
                        f"{_shipped_names_text()}; give it more than once to average several "
                        f"models (an ensemble; input size: the largest member's){default}")
    parser.add_argument("--flip-tta", action="store_true",
                        help="average each prediction with the one on the mirrored image (2x slower)")


@functools.cache
def _shipped_models() -> dict[str, object]:
    """agegender_models' registry of shipped models, read without importing the library (and
    TensorFlow with it), once a process (every subcommand's --model help names them); {} if it
    cannot be found."""
    spec = importlib.util.find_spec("agegender_models")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        registry = Path(folder) / "pretrained" / "registry.json"
        if registry.is_file():
            return json.loads(registry.read_text(encoding="utf-8"))
    return {}


def _shipped_names_text() -> str:
    names = sorted(_shipped_models().get("models", {}))
    return f" ({', '.join(names)})" if names else ""


def _check_model_ref(ref: str) -> None:
    """A ``--model`` value must be a file or a shipped model's name (checked without TensorFlow)."""
    if not Path(ref).is_file() and ref not in _shipped_models().get("models", {}):
        raise CLIError(f"model file not found: {ref} (not a file, nor a shipped model"
                       f"{_shipped_names_text()})")


def _model_path(ref: str) -> Path:
    """A checked ``--model`` value as a file: a shipped name becomes its file (checksum verified)."""
    from agegender_models.pretrained import pretrained_path

    return Path(ref) if Path(ref).is_file() else pretrained_path(ref)


def _checked_model_refs(args: argparse.Namespace) -> list[str]:
    """--model's references (the shipped default when none), every one checked before any is
    loaded: a typo is reported at once."""
    refs = args.model or [_shipped_models().get("default", "")]
    for ref in refs:
        _check_model_ref(ref)
    return refs


def _load_for_inference(args: argparse.Namespace):
    refs = _checked_model_refs(args)
    setup(args)
    from agegender_models import ensemble, flip_tta, load_model
    from agegender_models.runtime import readable_digest

    # later steps see paths only
    args.model = [str(_model_path(ref)) for ref in refs]
    paths = [Path(path) for path in args.model]
    # one file's SHA-256, taken before it is loaded: its "auto" verdict is filed under it
    args.model_digest = readable_digest(paths[0]) if len(paths) == 1 else None
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


def expand_inputs(inputs: Sequence[str], *, recursive: bool = False,
                  ) -> tuple[list[str], list[dict[str, str]], list[str], dict[str, int]]:
    """Files as given, folders expanded to their image files (:mod:`agegender.inputs`); returns
    (files, errors, notes of what the folders' listings passed over, and each file's or refused
    input's place in the order given: errors are listed in it)."""
    files: list[str] = []
    errors: list[dict[str, str]] = []
    notes: list[str] = []
    places: dict[str, int] = {}

    def refuse(item: str, reason: str) -> None:
        errors.append({"file": item, "reason": reason})
        places.setdefault(item, len(places))

    for item in inputs:
        path = Path(item)
        found = []
        if path.is_dir():
            try:
                found, note = list_images(path, recursive=recursive)
            except OSError as exc:
                refuse(item, f"cannot list folder: {exc.strerror or exc}")
                continue
            if not found:
                refuse(item, "folder contains no image files")
            notes.extend([note] if note else [])
        elif path.is_file():
            found = [item]
        else:
            refuse(item, "no such file or folder")
        files.extend(found)
        for file in found:
            places.setdefault(file, len(places))
    return files, errors, notes, places


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
    if rows:  # no header over nothing: every input is an error line
        print(f"{'file':<{width}}{face_head}  {'age':>5}  {'gender':<6}  p_female")
    for r in rows:
        face = f"  {r['face']:>4}  {' '.join(map(str, r['box'])):<21}" if detect else ""
        print(f"{r['file']:<{width}}{face}  {r['age']:>5.1f}  {r['gender']:<6}  {r['p_female']:.3f}")
    for e in errors:
        print(f"error: {e['file']}: {e['reason']}", file=sys.stderr)


def _outside_annotate(folder: str, inputs: Sequence[str], files: list[str], notes: list[str],
                      ) -> tuple[list[str], list[str]]:
    """Where --annotate DIR lies inside an input folder read with -r, the files listed from DIR
    (an earlier run's annotated copies) are not inputs: left out, and counted."""
    out = Path(folder).resolve()
    if not any(Path(i).is_dir() and Path(i).resolve() in out.parents for i in inputs):
        return files, notes
    kept = [f for f in files if out not in Path(f).resolve().parents]
    if len(kept) == len(files):
        return files, notes
    n = len(files) - len(kept)
    return kept, [*notes, f"{folder}: passed over {n} file{'s' if n != 1 else ''} in the --annotate folder"]


def _check_annotate(folder: str, files: list[str]) -> None:
    """--annotate DIR, before anything is loaded: a folder that can be made, holding none of the
    inputs (their annotated copies would replace them)."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise CLIError(f"--annotate {folder}: not a folder (a file of that name exists)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"--annotate {folder}: cannot make the folder: {exc.strerror or exc}") from None
    folder_path = path.resolve()
    inside = [f for f in files if Path(f).resolve().parent == folder_path]
    if inside:
        raise CLIError(f"--annotate {folder}: the folder holds {len(inside)} of the input photos "
                       f"(first: {inside[0]}), which their annotated copies could replace; "
                       "choose another folder")


STDIN = "-"


def _cmd_predict(args: argparse.Namespace) -> int:
    """``predict``; ``-`` among the inputs is one image read from standard input (kept in a
    temporary file while the command runs, and named ``-`` in the results)."""
    if STDIN not in args.inputs:
        return _predict(args)
    if args.inputs.count(STDIN) > 1:
        raise CLIError("'-' (an image on standard input) can be given once")
    if sys.stdin is None or sys.stdin.isatty():
        raise CLIError("'-' reads an image from standard input, which is a terminal here: "
                       "pipe one in (agegender predict - < photo.jpg)")
    import tempfile

    data = sys.stdin.buffer.read()
    with tempfile.TemporaryDirectory(prefix="agegender_stdin_") as folder:
        args.stdin_file = str(Path(folder) / "stdin")
        Path(args.stdin_file).write_bytes(data)
        args.inputs = [args.stdin_file if item == STDIN else item for item in args.inputs]
        return _predict(args)


def _predict(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be a positive integer. Received: {args.batch_size}")
    files, errors, notes, places = expand_inputs(args.inputs, recursive=args.recursive)
    unlisted = len(errors)  # inputs that are not there (a missing file, an empty folder)
    if args.annotate:
        files, notes = _outside_annotate(args.annotate, args.inputs, files, notes)
        _check_annotate(args.annotate, files)
    detector = None if args.detect == "none" else args.detect
    # a model run on "auto" here before starts from its cached runtime, without TensorFlow
    predictor = _cached_predictor(args, detector) if files else None
    cached = predictor is not None
    if files and not cached:
        model = _load_for_inference(args)
    else:  # a cached runtime, or nothing to read (a --model typo is still reported)
        _checked_model_refs(args)
        _show_log_lines()
    for note in notes:
        logging.getLogger("agegender").info("%s", note)
    if not files:
        _print_results([], errors, args, bool(detector))
        return 1
    import numpy as np

    from agegender._tf import native_noise_dropped
    from agegender_models import Predictor

    if not cached:
        # builds the detector before any image is read: a missing 'detect' extra is one clear line
        predictor = Predictor(model, detector=detector, runtime="keras")
    if predictor.detector is not None:
        # YuNet runs on LiteRT whatever runs the model: TFLite's XNNPACK notice (printed once a
        # process) comes here, held back, rather than amid the runtime's first measurement
        with native_noise_dropped(verbose=args.verbose):
            predictor.detector.detect_faces(np.zeros((64, 64, 3), np.uint8))
    if cached:
        logging.getLogger("agegender").info("runtime: %s", predictor.runner.describe())
    else:  # the model loaded here: its runtime chosen now (or read from the cache)
        predictor.runner = _runner(args, model)
    if predictor.detector is not None:
        logging.getLogger("agegender").info("faces found by %s", predictor.detector_name)
    from tqdm import tqdm

    with native_noise_dropped(verbose=args.verbose):  # TFLite's XNNPACK notice, first call
        predictor.runner(np.zeros((1, *predictor.input_size, 3), np.uint8))
    # a progress bar on stderr for several inputs, when it is a terminal (never in a pipe)
    with tqdm(total=len(files), unit="image", file=sys.stderr, leave=False,
              disable=None if len(files) > 1 else True) as bar:
        predictions, bad = predictor.predict(files, batch_size=args.batch_size, return_errors=True,
                                             progress=bar.update)
    errors.extend(bad)
    errors.sort(key=lambda error: places.get(error["file"], len(places)))  # in the order given
    if args.annotate:
        _annotate(args.annotate, predictions, files, errors,
                  roots=[item for item in args.inputs if Path(item).is_dir()] if args.recursive else [])
    inputs = len(files) + unlisted  # every input given, those missing too
    if inputs > 1:  # the count a user would otherwise make from the rows

        def count(n: int, what: str) -> str:
            return f"{n} {what}{'' if n == 1 else 's'}"

        logging.getLogger("agegender").info(
            "%s: %s, %s", count(inputs, "input"),
            count(len(predictions), "face" if detector else "prediction"), count(len(errors), "error"))
    _print_results(predictions, errors, args, bool(detector))
    return 1 if errors else 0


def _print_results(predictions, errors, args: argparse.Namespace, detect: bool) -> None:
    stdin = getattr(args, "stdin_file", None)
    if stdin is not None:  # the image read from standard input is "-", as it was given
        predictions = [{**p, "file": STDIN} if p.get("file") == stdin else p for p in predictions]
        errors = [{**e, "file": STDIN} if e.get("file") == stdin else e for e in errors]
    rows = _rows(predictions, detect)
    if args.json:
        print(json.dumps({"predictions": rows, "errors": errors}, indent=2))
    elif args.csv:
        _print_csv(rows, errors, detect)
    else:
        _print_table(rows, errors, detect)


def _annotate(out_dir: str, predictions, files: list[str], errors: list[dict[str, str]], *,
              roots: list[str]) -> None:
    """--annotate: each photo that could be read, its faces boxed and labelled; a photo found in
    a subfolder of an input folder (``-r``) keeps its subfolder below ``out_dir``."""
    from PIL import Image

    from agegender.annotate import write_annotated
    from agegender_models.imageio import read_image

    unreadable = {e["file"] for e in errors if e["reason"] != "no face found"}
    readable = [f for f in files if f not in unreadable]
    written = write_annotated(predictions, readable, out_dir, roots=roots,
                              read=lambda path: Image.fromarray(read_image(path)))
    log = logging.getLogger("agegender")
    for file, target in zip(readable, written, strict=True):
        if target.stem != Path(file).stem:  # another input has its name
            log.info("annotated %s as %s", file, target)
    log.info("annotated %d photo%s in %s", len(written), "" if len(written) == 1 else "s", out_dir)


def _cmd_predict_batch(args: argparse.Namespace) -> int:
    _show_log_lines()  # list_inputs says what a folder's listing passed over
    refs = _checked_model_refs(args)
    for name in ("workers", "cpus_per_worker", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be a positive integer. "
                           f"Received: {getattr(args, name)}")
    from agegender.batch import list_inputs, predict_batch  # Ray is imported only by the job

    files = list_inputs(args.input, root=args.root)
    if not all(Path(ref).is_file() for ref in refs):
        setup(args)  # a shipped name: the library finds (and checks) its file, quietly
    models = [ref if Path(ref).is_file() else str(_model_path(ref)) for ref in refs]
    summary = predict_batch(files, args.out, models=models, flip_tta=args.flip_tta,
                            detect=None if args.detect == "none" else args.detect,
                            runner=args.runner, workers=args.workers,
                            cpus_per_worker=args.cpus_per_worker, batch_size=args.batch_size,
                            verbose=args.verbose)
    out = Path(args.out)
    print(f"{summary['inputs']} inputs: {summary['predictions']} predictions in "
          f"{out / 'predictions.jsonl'}, {summary['errors']} errors in {out / 'errors.jsonl'} "
          f"({summary['workers']} workers, {summary['images_per_s']} images/s)")
    return 1 if summary["errors"] else 0


# --------------------------------------------------------------------------------------------------
# export


def _cached_predictor(args: argparse.Namespace, detector: str | None):
    """predict's Predictor on the runtime cached for its model file (one model, no flip TTA;
    for ``--runtime auto`` a model outside a run folder with real faces, as the shipped ones
    are), built without TensorFlow; ``None`` where there is none yet (the model is then loaded)."""
    from agegender_models.runtime import has_cached_runner, is_auto

    refs = _checked_model_refs(args)
    # MTCNN runs on TensorFlow: then it loads as the slow path loads it, quietly
    if len(refs) != 1 or args.flip_tta or detector == "mtcnn":
        return None
    from agegender.export_data import locate_faces

    path = _model_path(refs[0])
    if is_auto(args.runtime):
        sources = locate_faces(path)
        if sources.check_split is not None and sources.root is not None:
            return None  # its verdict was checked on the run's real faces: _runner's cache key
    if not has_cached_runner(path, runtime=args.runtime):
        return None
    from agegender_models.predict import Predictor

    args.model = [str(path)]
    return Predictor(path, detector=detector, runtime=args.runtime)


def _runner(args: argparse.Namespace, model):
    """The runtime ``--runtime`` asks for; "auto" checks on the run folder's real faces (and
    considers int8 exports calibrated on them) when the model sits in one."""
    from agegender_models.runtime import get_runner

    runtime = args.runtime or os.environ.get("AGEGENDER_RUNTIME") or "auto"
    # one model file, as it is: its runner is also filed under the file (_cached_predictor)
    source = args.model[0] if len(args.model) == 1 and not args.flip_tta else None
    digest = getattr(args, "model_digest", None)
    if runtime != "auto":
        runner = get_runner(model, runtime, source=source, source_digest=digest)
    else:
        from agegender.export_data import locate_faces

        sources = locate_faces(args.model[0])
        size = tuple(int(d) for d in model.inputs[0].shape[1:3])
        loaded: list = []  # the faces are read only if "auto" has no cached verdict yet

        def faces():
            if not loaded:
                loaded.append(sources.load(size, check_limit=512))
            return loaded[0]

        real = sources.check_split is not None and sources.root is not None
        runner = get_runner(
            model, "auto", check=(lambda: faces().check) if real else None,
            calibration=(lambda: faces().calibration) if real and sources.calibration_split else None,
            source=source, source_digest=digest)
    logging.getLogger("agegender").info("runtime: %s", runner.describe())
    return runner


def _cmd_export(args: argparse.Namespace) -> int:
    for option in ("check_split", "calibration_split"):
        if getattr(args, option) and not Path(getattr(args, option)).is_file():
            raise CLIError(f"--{option.replace('_', '-')} file not found: {getattr(args, option)}")
    model = _load_for_inference(args)
    from agegender.export_data import locate_faces
    from agegender_models.export import export_model

    size = tuple(int(d) for d in model.inputs[0].shape[1:3])
    sources = locate_faces(args.model[0], data_dir=args.check_data, check_split=args.check_split,
                           calibration_split=args.calibration_split)
    faces = sources.load(size, calibration=args.quantize == "int8")
    path, parity = export_model(model, args.out, format=args.format, quantize=args.quantize,
                                check=faces.check or True, calibration=faces.calibration,
                                return_parity=True)
    quantized = "" if args.quantize == "none" else f", {args.quantize}"
    print(f"exported {_model_label(args)} as {args.format}{quantized}: {path} (input: uint8 RGB "
          f"images, outputs: gender = P(female), age in years)")
    print(f"parity with the Keras model {parity.describe()}"
          + ("" if faces.check else f" ({faces.note})"))
    if args.quantize == "int8" and faces.calibration is None:
        print("int8 ranges calibrated on generated images: check the export on real faces "
              "(--check-data, --check-split, --calibration-split)")
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    # the verdicts are JSON files: nothing here loads TensorFlow
    from agegender_models._cache import cache_dir
    from agegender_models.precision import clear_precision_cache, precision_verdicts
    from agegender_models.runtime import clear_runtime_cache, runtime_verdicts

    if args.clear:
        precision, runtime = clear_precision_cache(), clear_runtime_cache()
        print(f"cleared {cache_dir()}: {precision} precision and {runtime} runtime verdicts")
        return 0
    print(f"cache folder: {cache_dir()} (set AGEGENDER_CACHE_DIR to move it)")
    print("precision 'auto' verdicts:" if precision_verdicts() else "precision 'auto' verdicts: none")
    for key, verdict in precision_verdicts().items():
        times = ", ".join(f"{p} {1000 * t:.0f} ms" for p, t in verdict.get("timings_s", {}).items())
        print(f"  {key}: {verdict.get('policy')} ({times}; {verdict.get('measured_at')})")
    print("runtime 'auto' verdicts:" if runtime_verdicts() else "runtime 'auto' verdicts: none")
    for verdict in runtime_verdicts():
        speeds = ", ".join(f"{n} {v}" for n, v in verdict.get("throughput_ips", {}).items())
        print(f"  model {verdict['key']}: {verdict.get('runtime')} (images/s: {speeds}; "
              f"{verdict.get('measured_at')})")
    return 0


# --------------------------------------------------------------------------------------------------


def _subcommand(commands, name: str, help: str, description: str, func, *,
                model: bool | None = None) -> argparse.ArgumentParser:
    """``agegender NAME``'s parser: its line in ``agegender --help``, its description, the exit
    statuses as epilog, ``func`` to run; ``model`` adds ``--model`` and ``--flip-tta``
    (True: ``--model`` required; False: optional, the shipped model by default)."""
    parser = commands.add_parser(name, help=help, description=description, epilog=EXIT_STATUSES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    if model is not None:
        add_model_arguments(parser, required=model)
    parser.set_defaults(func=func)
    return parser


def _add_train(commands) -> None:
    train = _subcommand(
        commands, "train",
        help="train a model on a UTKFace folder (a recipe, or the seed's by default)",
        description="Train a model: index + split the data, run the recipe's phases, write the "
        "run folder (config.json, splits/, history.csv, model.keras, metrics.json, report/). "
        "Options: the recipe's, then any flag given. Running again with the same --out resumes an "
        "unfinished run (with the same options); a finished run is not trained again.",
        func=_cmd_train,
    )
    add_train_arguments(train)


def _add_evaluate(commands) -> None:
    evaluate = _subcommand(
        commands, "evaluate",
        help="evaluate a saved model on labelled images and write a report",
        description="Evaluate a .keras model on a UTKFace folder (or one split CSV from it) and "
        "write OUT/report.md, OUT/metrics.json, plots and OUT/predictions.csv (one row per image: "
        "path, age, gender, race, age_pred, p_female).",
        func=_cmd_evaluate, model=False,
    )
    evaluate.add_argument("--data-dir", default=os.environ.get("UTKFACE_DIR"),
                          help="folder of UTKFace images (default: $UTKFACE_DIR)")
    evaluate.add_argument("--split", default=None,
                          help="a split CSV (path,age,gender,race; paths relative to --data-dir)")
    evaluate.add_argument("--out", required=True, help="folder for the report")


def _add_predict(commands) -> None:
    predict = _subcommand(
        commands, "predict",
        help="predict age and gender for images or folders of images",
        description="Predict age and gender. Prints a table; --json or --csv for scripts. "
        "Unreadable images are listed as errors; the others are still predicted.",
        func=_cmd_predict, model=False,
    )
    predict.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR",
                         help="image files (any format Pillow reads; HEIC with the 'heif' extra) "
                         f"or folders: their files named as images ({' '.join(IMAGE_SUFFIXES)}); "
                         "what a folder's listing passes over is counted on stderr; '-': one "
                         "image read from standard input (named '-' in the results, 'stdin' "
                         "when annotated)")
    predict.add_argument("-r", "--recursive", action="store_true",
                         help="read the folders' subfolders too (symbolic links to folders are "
                         "not followed)")
    fmt = predict.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON object")
    fmt.add_argument("--csv", action="store_true", help="print CSV")
    predict.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    predict.add_argument("--detect", choices=(*DETECTORS, "none"), default="auto",
                         help="how faces are found: each photo's faces are detected and cropped "
                         "like a UTKFace chip (an image that already is one, square with a level "
                         "face filling it, is read as it is), one result per face with 'face', 'box' and "
                         "'confidence' (a photo with no face is listed in errors as 'no face "
                         "found'). 'auto' (default): yunet-onet, YuNet's faces with "
                         "MTCNN's landmarks (its last stage), 'yunet' YuNet's own landmarks (crops "
                         "the models read less well); 'mtcnn' is about 5x slower; 'haar' "
                         "is lighter and less accurate; 'none' takes every input as one "
                         "pre-cropped face (a UTKFace-style chip)")
    predict.add_argument("--annotate", default=None, metavar="DIR",
                         help="also write each photo to DIR with every face boxed and labelled "
                         "('F 31': gender, age)")
    predict.add_argument("--runtime", choices=RUNTIMES, default=None,
                         help="what runs the model: 'auto' (default; $AGEGENDER_RUNTIME overrides "
                         "it) the fastest of Keras, TFLite and ONNX Runtime (with int8 exports when "
                         "the model's run folder has its faces) that matches the Keras model, "
                         "measured once per model and machine and cached; or force one")


def _add_predict_batch(commands) -> None:
    batch = _subcommand(
        commands, "predict-batch",
        help="predict a folder, glob or CSV of images on Ray (this machine or a cluster)",
        description="Batch prediction on Ray Data: the inputs are spread over a pool of workers, "
        "each loading the model once. Writes OUT/predictions.jsonl (one JSON object a line, the "
        "rows of predict --json: file, face, box, confidence, age, gender, p_female; one per "
        "face, or per image with --detect none), OUT/errors.jsonl (file, reason: unreadable images, no face "
        "found; never fatal to the job) and OUT/summary.json. On a cluster only --runner changes. "
        "Needs the batch extra: pip install './packages/agegender[batch]'.",
        func=_cmd_predict_batch, model=False,
    )
    batch.add_argument("input", metavar="INPUT",
                       help="a folder (its images, at any depth), a quoted glob ('photos/**/*.jpg') "
                       "or a CSV of image paths (column 'path' or 'file', else the first)")
    batch.add_argument("--out", required=True, help="folder for predictions.jsonl, errors.jsonl, summary.json")
    batch.add_argument("--root", default=None,
                       help="folder that relative paths in a CSV are relative to (default: the CSV's)")
    batch.add_argument("--detect", choices=(*DETECTORS, "none"), default="auto",
                       help="as predict's: faces found and cropped like chips, one row per face "
                       "(a photo without one is an error, 'no face found'); 'none' takes every "
                       "input as one pre-cropped chip. Default: auto (yunet-onet)")
    batch.add_argument("--runner", default="local", metavar="local|auto|ADDRESS",
                       help="'local' (default): Ray on this machine; 'auto': the Ray cluster started "
                       "here with 'ray start'; 'ray://HOST:10001': a cluster elsewhere")
    batch.add_argument("--workers", type=int, default=None,
                       help="model copies (Ray actors); default: the cluster's CPUs / --cpus-per-worker")
    batch.add_argument("--cpus-per-worker", type=int, default=1, help="CPUs (and TensorFlow threads) "
                       "per worker (default 1)")
    batch.add_argument("--batch-size", type=int, default=32, help="images per model call (default 32)")


def _add_export(commands) -> None:
    export = _subcommand(
        commands, "export",
        help="export a saved model for serving (SavedModel, TFLite or ONNX)",
        description="Export a .keras model (or, with --model more than once, their ensemble; "
        "--flip-tta adds the mirror-image average). The artefact takes raw uint8 RGB images of the "
        "model's input size (an ensemble's: the largest member's; preprocessing inside) and returns "
        "gender (P(female)) and age.",
        func=_cmd_export, model=False,
    )
    export.add_argument("--format", choices=EXPORT_FORMATS, default="savedmodel",
                        help="savedmodel (a folder), tflite or onnx (a file; needs the onnx extra: "
                        "pip install './packages/agegender[onnx]')")
    export.add_argument("--out", required=True,
                        help="folder (savedmodel) or file (tflite, onnx) to write")
    export.add_argument("--quantize", choices=QUANTIZATIONS, default="none",
                        help="tflite and onnx: float16 weights (half the size) or int8 "
                        "(post-training, calibrated on the run's training split). Default: none")
    export.add_argument("--check-data", default=None, metavar="DIR",
                        help="image folder of the check and calibration splits (default: the run "
                        "folder's data_root, else $UTKFACE_DIR)")
    export.add_argument("--check-split", default=None, metavar="CSV",
                        help="labelled faces to check the export on before it is written: gender "
                        "accuracy within 0.5 points and age MAE within 0.15 years of the Keras "
                        "model (default: the run folder's splits/test.csv; without one, generated "
                        "images against the Keras model's own predictions)")
    export.add_argument("--calibration-split", default=None, metavar="CSV",
                        help="faces to calibrate --quantize int8 on (200 of them; default: the run "
                        "folder's splits/train.csv, else generated images)")


def _add_cache(commands) -> None:
    cache = _subcommand(
        commands, "cache",
        help="show or clear the measured 'auto' verdicts (precision, runtime)",
        description="Precision 'auto' (train) and runtime 'auto' (predict) measure once per "
        "machine and model and keep the verdict in the cache folder ($AGEGENDER_CACHE_DIR, "
        "default ~/.cache/agegender). Show them, or --clear them to measure again.",
        func=_cmd_cache,
    )
    cache.add_argument("--clear", action="store_true", help="forget every verdict and artefact")


def _cmd_fit_readouts(args: argparse.Namespace) -> int:
    for ref in args.model:
        _check_model_ref(ref)
    for label, folder in (("--face-api", args.face_api), ("--data-dir", args.data_dir),
                          ("--splits", args.splits)):
        if not folder or not Path(folder).is_dir():
            raise CLIError(f"{label}: folder not found: {folder}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise CLIError(f"--out: {args.out} exists and is not a folder")
    for flag, value, ok, rule in (
        ("--gender-c", args.gender_c, args.gender_c > 0, "> 0"),
        ("--age-hidden", args.age_hidden, args.age_hidden >= 0, ">= 0"),
        ("--age-alpha", args.age_alpha, args.age_alpha >= 0, ">= 0"),
        ("--gate-width", args.gate_width, args.gate_width > 0, "> 0"),
        ("--age-weight", args.age_weight, 0 <= args.age_weight <= 1, "in [0, 1]"),
    ):
        if not ok:
            raise CLIError(f"{flag} must be {rule}. Received: {value}")
    setup(args)
    from agegender.evaluation import format_summary
    from agegender.readouts import run_fit_readouts

    options = {key: getattr(args, key) for key in ("gender_c", "age_hidden", "age_alpha",
                                                   "gate_age", "gate_width", "age_weight")}
    metrics = run_fit_readouts(model_paths=[_model_path(ref) for ref in args.model],
                               face_api=Path(args.face_api), data_dir=Path(args.data_dir),
                               splits=Path(args.splits), out=Path(args.out), fit_on=args.fit_on,
                               int8_kernels=args.int8_kernels,
                               fold_batchnorm=args.fold_batchnorm, **options)
    print(format_summary({"test": metrics["test"]}) if "test" in metrics else "no test split")
    print(f"model: {Path(args.out) / 'model.keras'}")
    return 0


def _add_fit_readouts(commands) -> None:
    from_defaults = "(default: %(default)s, chosen on our validation split)"
    fit = _subcommand(
        commands, "fit-readouts",
        help="blend a trained model with read-outs of dlib's face descriptor (the shipped model's "
        "last step)",
        description="Fit a logistic (gender) and a small neural-network (age) read-out of dlib's "
        "face recognition network's features on the training images, blend them into the model's "
        "outputs and write "
        "OUT/model.keras, OUT/config.json, OUT/metrics.json and, when SPLITS has test.csv, the "
        "blended model's test report (OUT/report/). Needs face-api.js' face recognition weights "
        "(npm package @vladmandic/face-api, folder model/: face_recognition_model-weights_manifest"
        ".json and face_recognition_model.bin). About a minute on 2 CPU cores.",
        func=_cmd_fit_readouts,
    )
    fit.add_argument("--model", required=True, action="append", metavar="NAME_OR_PATH",
                     help="the trained model (.keras) or a shipped model's name; give it more "
                     "than once to blend the read-outs into their ensemble (outputs averaged)")
    fit.add_argument("--int8-kernels", action="store_true",
                     help="store the model's large convolution and dense kernels as int8 codes with "
                     "a scale per output channel (about a quarter of the size; predictions move "
                     "a little: measure them)")
    fit.add_argument("--fold-batchnorm", action="store_true",
                     help="fold each model's BatchNormalization (and ReLU6) into the convolution "
                     "before it: the same outputs, fewer layers, about half the load time")
    fit.add_argument("--face-api", required=True, metavar="DIR",
                     help="folder holding face-api.js' face recognition model files")
    fit.add_argument("--data-dir", default=os.environ.get("UTKFACE_DIR"),
                     help="folder of UTKFace images (default: $UTKFACE_DIR)")
    fit.add_argument("--splits", required=True, metavar="DIR",
                     help="folder of split CSVs (train.csv, val.csv, test.csv), e.g. a run's splits/")
    fit.add_argument("--fit-on", default="train+val", choices=("train", "train+val"),
                     help="the images the read-outs are fitted on (default: train+val)")
    fit.add_argument("--out", required=True, help="folder to write")
    fit.add_argument("--gender-c", type=float, default=READOUT_DEFAULTS["gender_c"],
                     help=f"inverse L2 strength of the gender read-out {from_defaults}")
    fit.add_argument("--age-hidden", type=int, default=READOUT_DEFAULTS["age_hidden"],
                     help=f"hidden ReLU units of the age read-out; 0: a linear (ridge) read-out "
                     f"{from_defaults}")
    fit.add_argument("--age-alpha", type=float, default=READOUT_DEFAULTS["age_alpha"],
                     help=f"L2 strength of the age read-out {from_defaults}")
    fit.add_argument("--gate-age", type=float, default=READOUT_DEFAULTS["gate_age"],
                     help=f"predicted age (years) at which the descriptor's gender gets half the "
                     f"weight {from_defaults}")
    fit.add_argument("--gate-width", type=float, default=READOUT_DEFAULTS["gate_width"],
                     help=f"how fast that weight grows with age: 27 %% at gate-age minus this, 73 %% "
                     f"at gate-age plus this {from_defaults}")
    fit.add_argument("--age-weight", type=float, default=READOUT_DEFAULTS["age_weight"],
                     help=f"weight of the descriptor's age {from_defaults}")


def _cmd_serve(args: argparse.Namespace) -> int:
    # the serve extra (FastAPI, uvicorn) loads only here, before TensorFlow: a missing one says so
    from agegender.serve import serve_from_args

    return serve_from_args(args, setup=lambda: setup(args))


def _add_serve(commands) -> None:
    serve = _subcommand(
        commands, "serve",
        help="an HTTP API and a web page: age and gender of the faces in photos",
        description="Serve a model over HTTP: POST /v1/predict (multipart, field 'image', one or "
        "more photos; answers as predict --json, faces found as predict finds them by default), GET /healthz, "
        "GET /v1/models, and a web page at / (choose or drop a photo). Needs the serve extra: "
        "pip install './packages/agegender[serve]'. The model is loaded once per worker.",
        func=_cmd_serve,
    )
    serve.add_argument("--model", default=None, metavar="NAME_OR_PATH",
                       help="a shipped model's name or a .keras file (default: the shipped model)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; "
                       "0.0.0.0 opens it to the network, without authentication)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes, each with its own copy of the model (default 1)")
    serve.add_argument("--max-upload-mb", type=float, default=10.0, metavar="MB",
                       help="largest file accepted, per file (default 10); images over the "
                       "library's pixel limit are refused too, without being decoded")


class _Parser(argparse.ArgumentParser):
    """A usage error in one line on stderr, as every other error (argparse prints the whole
    usage block before it); the subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    for add in (_add_train, _add_evaluate, _add_predict, _add_predict_batch, _add_export,
                _add_fit_readouts, _add_cache, _add_serve):
        add(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_or_exit(args.func, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
