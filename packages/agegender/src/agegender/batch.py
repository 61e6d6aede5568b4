"""Batch prediction on Ray Data: ages and genders for a folder, a glob or a CSV of images.

    agegender predict-batch photos/ --model runs/a/model.keras --out results/
    agegender predict-batch 'shards/**/*.jpg' --model runs/a/model.keras --out results/ --runner auto

The driver (this process) lists the inputs and streams them through a Ray Data pipeline whose
``map_batches`` stage is a pool of actors: each actor loads the model once (the model file's
bytes travel through Ray's object store, so only the images need to be readable on the workers)
and predicts batches of files with :class:`agegender_models.Predictor`, the code ``agegender
predict`` runs. The rows come back in input order and the driver writes

    OUT/predictions.jsonl   one JSON object a line, the fields of ``agegender predict --json``'s
                            rows: file, age, gender, p_female (with --detect one row per face,
                            with face, box and confidence)
    OUT/errors.jsonl        {"file", "reason"} for every input that gave no result (unreadable,
                            not an image, no face found): never fatal to the job
    OUT/summary.json        counts, workers, seconds, images per second, the runner

``runner="local"`` starts Ray on this machine (every CPU); on a cluster only the runner changes:
``"auto"`` joins the cluster that ``ray start`` made on this machine, ``"ray://HOST:10001"`` one
elsewhere (Ray Client). Ray is the ``batch`` extra: ``pip install './packages/agegender[batch]'``.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agegender._tf import _native_stderr_held
from agegender.inputs import list_images

GLOB_CHARS = set("*?[")
CSV_COLUMNS = ("path", "file")  # the column a CSV of inputs names its images in (else its first)

log = logging.getLogger("agegender")


# --------------------------------------------------------------------------------------------------
# Inputs


def list_inputs(source: str, *, root: str | os.PathLike | None = None) -> list[str]:
    """The image paths ``source`` names, sorted: a folder (its image files, at any depth, by
    :func:`agegender.inputs.list_images`; what it passes over is logged), a glob
    (``'photos/**/*.jpg'``), a CSV file (the ``path`` or ``file`` column, else the first; a
    relative path is relative to ``root``, default the CSV's folder) or one image file.
    ``ValueError`` (one line) when it names none."""
    path = Path(source)
    if GLOB_CHARS & set(source) and not path.exists():
        found = sorted(p for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not found:
            raise ValueError(f"no file matches {source!r}")
        return found
    if path.is_dir():
        try:
            found, note = list_images(path, recursive=True)
        except OSError as exc:
            raise ValueError(f"cannot list folder: {path}: {exc.strerror or exc}") from None
        if note:
            log.info("%s", note)
        if not found:
            raise ValueError(f"no image files in {path}")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"no such file, folder or glob match: {source}")
    if path.suffix.lower() == ".csv":
        return _csv_inputs(path, Path(root) if root is not None else path.parent)
    return [str(path)]


def _csv_inputs(path: Path, root: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise ValueError(f"{path}: an empty CSV (expected a 'path' column of image paths)")
        column = next((c for c in CSV_COLUMNS if c in reader.fieldnames), reader.fieldnames[0])
        paths = [row[column].strip() for row in reader if (row.get(column) or "").strip()]
    if not paths:
        raise ValueError(f"{path}: no image paths in its {column!r} column")
    return [p if Path(p).is_absolute() else str(root / p) for p in paths]


# --------------------------------------------------------------------------------------------------
# The workers


class PredictWorker:
    """One copy of the model, in one Ray actor: loaded once, then called on batches of files.

    Returns, for every input of a batch, a row per face (or per image) and a row per failure:
    ``{"file", "result": the JSON of a Predictor result or error, "error": bool, "worker": pid}``
    (strings and flags only, so every batch has the same Arrow schema)."""

    def __init__(self, models: Sequence[bytes], *, flip_tta: bool = False, detect: Any = None,
                 threads: int = 1, batch_size: int = 32) -> None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the CPUs Ray gave this actor
        from agegender._tf import load_tensorflow

        load_tensorflow()
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        from agegender_models import Predictor

        self.predictor = Predictor(load_inference_model(models, flip_tta=flip_tta), detector=detect,
                                   runtime="keras")
        self.batch_size = batch_size
        self.pid = os.getpid()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        found, bad = self.predict([str(f) for f in batch["file"]])
        rows = ([(p["file"], json.dumps(p, default=float), False) for p in found]
                + [(e["file"], json.dumps(e), True) for e in bad])
        return {
            "file": np.array([r[0] for r in rows], dtype=object),
            "result": np.array([r[1] for r in rows], dtype=object),
            "error": np.array([r[2] for r in rows], dtype=bool),
            "worker": np.full(len(rows), self.pid, dtype=np.int64),
        }

    def predict(self, files: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """(results, errors) for ``files``; nothing raises: a batch that fails as a whole is
        predicted file by file, and a file that still fails is an error with its reason."""
        try:
            return self.predictor.predict(files, batch_size=self.batch_size, return_errors=True)
        except Exception:  # noqa: BLE001 - isolate the file that broke the batch
            found: list[dict[str, Any]] = []
            bad: list[dict[str, str]] = []
            for file in files:
                try:
                    one, errors = self.predictor.predict([file], return_errors=True)
                except Exception as exc:  # noqa: BLE001 - reported, never fatal to the job
                    one, errors = [], [{"file": file, "reason": f"{type(exc).__name__}: {exc}"}]
                found.extend(one)
                bad.extend(errors)
            return found, bad


def load_inference_model(models: Sequence[bytes], *, flip_tta: bool = False):
    """The model ``agegender predict --model ... [--flip-tta]`` would run, from the ``.keras``
    files' bytes (several: their ensemble)."""
    import tempfile

    from agegender_models import ensemble, load_model
    from agegender_models import flip_tta as with_flip

    loaded = []
    with tempfile.TemporaryDirectory(prefix="agegender_batch_") as folder:
        for i, content in enumerate(models):
            path = Path(folder) / f"model{i}.keras"
            path.write_bytes(content)
            loaded.append(load_model(path))
    model = loaded[0] if len(loaded) == 1 else ensemble(loaded)
    return with_flip(model) if flip_tta else model


# --------------------------------------------------------------------------------------------------
# The job


def predict_batch(files: Sequence[str], out: str | os.PathLike, *, models: Sequence[str | os.PathLike],
                  flip_tta: bool = False, detect: Any = None, runner: str = "local",
                  workers: int | None = None, cpus_per_worker: int = 1, batch_size: int = 32,
                  verbose: bool = False) -> dict[str, Any]:
    """Predict ``files`` on Ray and write ``out`` (see the module docstring); returns the summary.

    ``runner``: ``"local"`` (Ray on this machine), ``"auto"`` (the cluster ``ray start`` made
    here) or a cluster address (``"ray://HOST:10001"``); when Ray is already initialised in this
    process, that session is used (and left running). ``workers``: model copies (Ray actors;
    default: the cluster's CPUs // ``cpus_per_worker``), each with ``cpus_per_worker`` CPUs.
    ``detect``: a detector name (``"mtcnn"``, ``"haar"``) or a picklable object with a
    ``detect_faces`` method (see :mod:`agegender_models.detect`)."""
    ray = _import_ray()
    out = Path(out)
    contents = [Path(m).read_bytes() for m in models]  # read before Ray starts: a typo fails fast
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if not verbose:  # Ray's native start-up and actor notes; shown if the job fails
            stack.enter_context(_native_stderr_held())
        counts = _run(ray, files, out, runner=runner, workers=workers, contents=contents,
                      flip_tta=flip_tta, detect=detect, cpus_per_worker=cpus_per_worker,
                      batch_size=batch_size, verbose=verbose)
    seconds = time.perf_counter() - started
    summary = {
        "inputs": len(files), **counts, "seconds": round(seconds, 2),
        "images_per_s": round(len(files) / seconds, 1) if seconds else None,
        "runner": runner, "cpus_per_worker": cpus_per_worker, "batch_size": batch_size,
        "models": [str(m) for m in models], "flip_tta": flip_tta,
        "detect": detect if detect is None or isinstance(detect, str) else type(detect).__name__,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _run(ray, files, out: Path, *, runner, workers, contents, flip_tta, detect, cpus_per_worker,
         batch_size, verbose) -> dict[str, Any]:
    """Start (or join) Ray, run the pipeline, write the outputs; returns the counts."""
    ours = not ray.is_initialized()
    if ours:
        _start_ray(ray, runner, verbose=verbose)
    _quiet_data(ray, verbose=verbose)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        workers = workers or max(1, cpus // cpus_per_worker)
        dataset = ray.data.from_items([{"file": f} for f in files],
                                      override_num_blocks=max(1, min(len(files), 4 * workers)))
        predicted = dataset.map_batches(
            PredictWorker, batch_format="numpy", batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus_per_worker,
            fn_constructor_kwargs={"models": contents, "flip_tta": flip_tta, "detect": detect,
                                   "threads": cpus_per_worker, "batch_size": batch_size})
        return {**_write_outputs(predicted, out, detect=detect is not None), "workers_asked": workers}
    finally:
        if ours:
            ray.shutdown()


def _write_outputs(predicted, out: Path, *, detect: bool) -> dict[str, Any]:
    """Stream the pipeline's rows into predictions.jsonl and errors.jsonl (the rows of
    ``agegender predict --json``)."""
    from agegender.cli import _rows

    out.mkdir(parents=True, exist_ok=True)
    counts = {"predictions": 0, "errors": 0}
    pids: set[int] = set()
    started, first = time.perf_counter(), None  # first: (seconds, rows) when the first rows came
    with (out / "predictions.jsonl").open("w") as good, (out / "errors.jsonl").open("w") as bad:
        for batch in predicted.iter_batches(batch_format="numpy", batch_size=None):
            if first is None:
                first = (time.perf_counter() - started, len(batch["result"]))
            pids.update(int(pid) for pid in batch["worker"])
            for result, failed in zip(batch["result"], batch["error"], strict=True):
                row = json.loads(result)
                if failed:
                    bad.write(json.dumps({"file": row["file"], "reason": row["reason"]}) + "\n")
                else:
                    good.write(json.dumps(_rows([row], detect)[0]) + "\n")
                counts["errors" if failed else "predictions"] += 1
    seconds = time.perf_counter() - started
    rows = counts["predictions"] + counts["errors"]
    steady = (rows - first[1]) / (seconds - first[0]) if first and seconds > first[0] else None
    # the pipeline's pace once results flow (start-up of Ray's workers and the model excluded)
    return {**counts, "workers": len(pids), "first_rows_after_s": round(first[0], 2) if first else None,
            "steady_rows_per_s": round(steady, 1) if steady else None}


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError("predict-batch needs Ray Data, the batch extra: "
                          "pip install './packages/agegender[batch]'") from None
    return ray


def _start_ray(ray, runner: str, *, verbose: bool) -> None:
    """Start or join Ray quietly (its progress bars and start-up notes only with ``verbose``)."""
    options: dict[str, Any] = {"logging_level": logging.INFO if verbose else logging.ERROR, "log_to_driver": verbose,
                               "include_dashboard": False, "ignore_reinit_error": True}
    try:
        if runner == "local":
            ray.init(address="local", num_cpus=os.cpu_count(), **options)
        else:
            options.pop("include_dashboard")  # a cluster has its own
            # a wrong address: give up after two tries (about 80 s) rather than Ray's twenty
            os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "2")
            ray.init(address=runner, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ValueError(f"cannot start or join Ray with --runner {runner!r}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
                         ) from None


def _quiet_data(ray, *, verbose: bool) -> None:
    """Rows in input order; Ray Data's progress bars and notes only with ``verbose``."""
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows come out in input order
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose
