"""Where a model runs: Keras, TFLite (XNNPACK) or ONNX Runtime; ``"auto"`` picks the fastest.

A :class:`Runner` takes raw uint8 RGB images ``(N, H, W, 3)`` at the model's input size and
returns ``(p_female, age)``, two float32 arrays of shape ``(N,)``, whatever runs underneath.
:func:`get_runner` makes one for a Keras model:

* ``"keras"``: the model itself (``model(x, training=False)``), exactly as before.
* ``"tflite"`` / ``"onnx"``: its float32 export (:func:`agegender_models.export.convert_model`),
  run by the LiteRT interpreter (``ai-edge-litert``, a dependency; XNNPACK on) or ONNX
  Runtime's CPU provider (the ``onnx`` extra).
* ``"auto"`` (the default; ``$AGEGENDER_RUNTIME`` overrides it): each runtime present, float32,
  and with ``calibration`` faces also its int8 export, is converted, checked against the Keras
  model (:func:`agegender_models.export.check_parity`: gender accuracy within 0.5 points and age
  MAE within 0.15 years, on ``check`` faces or generated images), and timed on batches of 32
  images in interleaved rounds; the fastest that passed is kept. The verdict and the winning
  artefact are cached per model (a hash of its architecture and weights), machine, library
  versions and thread count under ``<cache_dir>/runtimes/`` (``agegender cache --clear``,
  :func:`clear_runtime_cache`), so the conversions and timings run once. A model loaded from a
  ``.keras`` file (``source``) also has its verdict filed under the file's SHA-256, so that
  :func:`cached_runner` finds the winner again without loading the model: a process that only
  predicts then needs neither Keras nor TensorFlow (about 6 s to import). A forced ``"tflite"``
  or ``"onnx"`` reuses ``"auto"``'s conversion when ``"auto"`` chose that runtime, unquantized,
  with its default check and the same threads (else converts once, cached), and is filed under
  the file too.

int8 candidates need real ``calibration`` faces: quantization ranges calibrated on generated
images would pass a check on generated images and could still fail on faces.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._cache import cache_dir, machine_id, read_json, write_bytes, write_json

RUNTIMES = ("auto", "keras", "tflite", "onnx")
RUNTIME_ENV = "AGEGENDER_RUNTIME"
RUNTIMES_FOLDER = "runtimes"
FILES_FOLDER = "files"  # under RUNTIMES_FOLDER: a model file's SHA-256 -> its model's fingerprint
TIMING_BATCH = 32
# an exported runtime replaces Keras only when clearly faster (timings on a shared machine wobble)
MIN_SPEEDUP = 1.05
SUFFIX = {"tflite": ".tflite", "onnx": ".onnx"}

log = logging.getLogger("agegender_models.runtime")


def _pair(gender: Any, age: Any) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(gender, dtype=np.float32).reshape(-1),
            np.asarray(age, dtype=np.float32).reshape(-1))


class Runner:
    """``runner(images)`` -> ``(p_female, age)``; ``name`` (e.g. ``"tflite int8"``), ``runtime``,
    ``quantize``, and for ``"auto"`` the ``verdict`` (timings, parity, what was skipped)."""

    def __init__(self, runtime: str, fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                 *, quantize: str = "none", verdict: dict[str, Any] | None = None):
        self.runtime = runtime
        self.quantize = quantize
        self.verdict = verdict or {}
        self._fn = fn

    @property
    def name(self) -> str:
        return self.runtime if self.quantize == "none" else f"{self.runtime} {self.quantize}"

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._fn(np.ascontiguousarray(images, dtype=np.uint8))

    def run(self, images: np.ndarray, batch_size: int = TIMING_BATCH) -> tuple[np.ndarray, np.ndarray]:
        """Every image, in batches: ``(p_female, age)`` of shape ``(N,)``."""
        parts = [self(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def describe(self) -> str:
        """One line: the runtime and, for ``"auto"``, the measured throughputs."""
        if not self.verdict:
            return f"{self.name} (asked)"
        speeds = ", ".join(f"{name} {ips:.0f}" for name, ips in self.verdict["throughput_ips"].items())
        skipped = "; ".join(f"{k}: {v}" for k, v in self.verdict.get("skipped", {}).items())
        when = "measured now" if self.verdict.get("fresh") else f"measured {self.verdict['measured_at']}"
        return (f"{self.name} (auto: images/s at batch {TIMING_BATCH}: {speeds}"
                + (f"; not used: {skipped}" if skipped else "") + f"; {when})")

    def __repr__(self) -> str:
        return f"Runner({self.name!r})"


# --------------------------------------------------------------------------------------------------
# the runtimes


def _threads(threads: int | None) -> int:
    return int(threads or os.cpu_count() or 1)


def keras_runner(model) -> Runner:
    """The Keras model itself, called as :class:`~agegender_models.Predictor` always has."""

    def run(images: np.ndarray):
        out = model(images, training=False)
        return _pair(out["gender"], out["age"])

    return Runner("keras", run)


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # deprecated since TF 2.20, same calls
    return Interpreter


def serve_signature(content: bytes, threads: int):
    """A new LiteRT interpreter of a TFLite flatbuffer, as its ``serve`` signature's runner."""
    with warnings.catch_warnings():  # tf.lite.Interpreter's deprecation notice
        warnings.simplefilter("ignore")
        interpreter = _interpreter_class()(model_content=content, num_threads=threads)
    return interpreter.get_signature_runner("serve")


def tflite_runner(content: bytes, *, threads: int | None = None, quantize: str = "none") -> Runner:
    """A TFLite flatbuffer (its ``serve`` signature), one interpreter per batch size (resizing
    one interpreter at every change of batch size would reallocate it each time)."""
    runners: dict[int, Any] = {}

    def run(images: np.ndarray):
        n = len(images)
        if n not in runners:
            runners[n] = serve_signature(content, _threads(threads))
        out = runners[n](image=images)
        return _pair(out["gender"], out["age"])

    return Runner("tflite", run, quantize=quantize)


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError:
        return False
    return True


def onnx_runner(content: bytes, *, threads: int | None = None, quantize: str = "none") -> Runner:
    """An ONNX model on ONNX Runtime's CPU provider."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        from .export import ONNX_INSTALL, ExportFormatError  # (export imports Keras)

        raise ExportFormatError(f"the onnx runtime needs onnxruntime ({exc}); install the extra: "
                                f"{ONNX_INSTALL}") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads(threads)
    options.log_severity_level = 3
    session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])

    def run(images: np.ndarray):
        gender, age = session.run(["gender", "age"], {"image": images})
        return _pair(gender, age)

    return Runner("onnx", run, quantize=quantize)


def savedmodel_runner(path: str | os.PathLike) -> Runner:
    """A SavedModel folder's ``serve`` signature."""
    import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures["serve"]

    def run(images: np.ndarray):
        out = serve(image=tf.constant(images))
        return _pair(out["gender"].numpy(), out["age"].numpy())

    return Runner("savedmodel", run)


def artefact_runner(runtime: str, content: bytes, *, threads: int | None = None,
                    quantize: str = "none") -> Runner:
    make = {"tflite": tflite_runner, "onnx": onnx_runner}[runtime]
    return make(content, threads=threads, quantize=quantize)


# --------------------------------------------------------------------------------------------------
# choosing


def _resolve_runtime(runtime: str | None) -> str:
    runtime = runtime if runtime is not None else os.environ.get(RUNTIME_ENV) or "auto"
    if runtime not in RUNTIMES:
        raise ValueError(f"`runtime` must be one of {RUNTIMES}. Received: runtime={runtime!r}")
    return runtime


def is_auto(runtime: Any) -> bool:
    """Whether ``runtime`` (a :func:`get_runner` argument) means ``"auto"``."""
    return not isinstance(runtime, Runner) and _resolve_runtime(runtime) == "auto"


def model_fingerprint(model) -> str:
    """A hash of the model's architecture and weights (what a cached verdict belongs to)."""
    digest = hashlib.sha256(model.to_json().encode())
    for weight in model.weights:
        digest.update(np.ascontiguousarray(np.asarray(weight)).tobytes())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in ("tensorflow", "keras", "onnxruntime", "tf2onnx", "ai-edge-litert", "agegender-models"):
        with contextlib.suppress(PackageNotFoundError):
            found[dist] = version(dist)
    return found


def _candidates(calibration: np.ndarray | None) -> list[tuple[str, str]]:
    found = [("tflite", "none")] + ([("onnx", "none")] if onnx_available() else [])
    if calibration is not None:
        found += [(runtime, "int8") for runtime, _ in list(found)]
    return found


def _time_runners(runners: dict[str, Runner], images: np.ndarray, rounds: int = 3):
    """Per runner: median batch throughput (images/s) and single-image latency (ms), measured
    in rounds with the order rotating (load from other processes hits them alike)."""
    names = list(runners)
    batch, one = images[:TIMING_BATCH], images[:1]
    for runner in runners.values():  # warm-up: tracing, allocation
        runner(batch)
        runner(one)
    ips: dict[str, list[float]] = {n: [] for n in names}
    latency: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            runners[name](batch)
            ips[name].append(len(batch) / (time.perf_counter() - start))
            start = time.perf_counter()
            runners[name](one)
            latency[name].append(1000 * (time.perf_counter() - start))
    return ({n: statistics.median(v) for n, v in ips.items()},
            {n: statistics.median(v) for n, v in latency.items()})


def _pick(throughput: dict[str, float]) -> str:
    best = max(throughput, key=throughput.__getitem__)
    return best if throughput[best] >= MIN_SPEEDUP * throughput["keras"] else "keras"


def _measure(model, check, calibration, threads):
    """Convert, check and time every candidate: (runners, contents, verdict)."""
    from .export import (
        ExportFormatError,
        ExportParityError,
        _check_set,
        check_parity,
        convert_model,
        generated_faces,
    )

    size = tuple(int(d) for d in model.inputs[0].shape[1:3])
    runners: dict[str, Runner] = {"keras": keras_runner(model)}
    contents: dict[str, bytes] = {}
    skipped: dict[str, str] = {}
    check = _check_set(model, check)
    reference = runners["keras"].run(check.images)  # the Keras model's, once for every candidate
    log.info("runtime auto: timing this model's runtimes, once per model and machine (about a "
             "minute; the verdict is cached)")
    for runtime, quantize in _candidates(calibration):
        name = runtime if quantize == "none" else f"{runtime} {quantize}"
        log.info("runtime auto: converting and checking %s", name)
        try:
            content = convert_model(model, runtime, quantize=quantize, calibration=calibration)
            runner = artefact_runner(runtime, content, threads=threads, quantize=quantize)
            check_parity(model, runner, check, what=name, reference=reference)
        except (ExportFormatError, ExportParityError) as exc:
            skipped[name] = str(exc)
            continue
        except Exception as exc:  # a runtime that cannot run its own file: never fatal here
            skipped[name] = f"{name} failed to run: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            continue
        runners[name], contents[name] = runner, content
    images = generated_faces(TIMING_BATCH, size, seed=7)
    throughput, latency = _time_runners(runners, images)
    verdict = {
        "runtime": _pick(throughput),
        "throughput_ips": {k: round(v, 1) for k, v in throughput.items()},
        "latency_ms": {k: round(v, 2) for k, v in latency.items()},
        "skipped": skipped,
        "measured_at": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    return runners, contents, verdict


def _check_label(check) -> str:
    return "generated" if check is None else getattr(check, "description", "given")


def _cache_key(fingerprint: str, *, int8: bool, check: str, threads: int) -> str:
    parts = {
        "model": fingerprint, "machine": machine_id(), "versions": _versions(),
        "threads": threads, "int8": int8, "check": check,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex); computed once a process for a file as it is (its
    path, modification time and size)."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def readable_digest(path: str | os.PathLike) -> str | None:
    """:func:`file_digest`, or None when the file cannot be read (loading it then says why, in
    one line)."""
    try:
        return file_digest(path)
    except OSError:
        return None


def _file_record(digest: str) -> Path:
    return cache_dir() / RUNTIMES_FOLDER / FILES_FOLDER / f"{digest}.json"


def _filed_model(source, digest: str | None) -> tuple[str, tuple[int, int]] | None:
    """The fingerprint and input size filed for the model file ``source`` (by a run on
    ``"auto"`` or a forced runtime); None when the file has no record (or is unreadable)."""
    digest = digest or readable_digest(source)
    if digest is None:
        return None
    record = read_json(_file_record(digest))
    fingerprint, size = record.get("fingerprint"), record.get("input_size")
    if not isinstance(fingerprint, str) or not isinstance(size, list) or len(size) != 2:
        return None
    return fingerprint, (int(size[0]), int(size[1]))


def _forced_path(fingerprint: str, runtime: str) -> Path:
    return cache_dir() / RUNTIMES_FOLDER / "forced" / f"{fingerprint[:24]}{SUFFIX[runtime]}"


def _forced_artefact(fingerprint: str, runtime: str, threads: int) -> Path | None:
    """The converted file a forced ``runtime`` runs for this model: ``"auto"``'s own when it
    chose that runtime, unquantized, with its default check (the same conversion), else one
    converted when the runtime was forced before; None when there is neither."""
    key = _cache_key(fingerprint, int8=False, check="generated", threads=threads)
    winner = _winner(cache_dir() / RUNTIMES_FOLDER / key)
    if winner is not None and winner[1] == runtime and winner[2] == "none":
        return winner[3]
    path = _forced_path(fingerprint, runtime)
    return path if path.is_file() else None


def _filed_artefact(source, runtime: str, *, check: str, int8: bool, threads: int,
                    digest: str | None) -> tuple[Path, str, tuple[int, int]] | None:
    """What :func:`cached_runner` runs for the model file ``source``: for ``"auto"`` the folder
    of its verdict, for a forced runtime the converted file; with the runtime (``"auto"``, or the
    forced one) and the model's input size. None when nothing is filed."""
    filed = _filed_model(source, digest)
    if filed is None:
        return None
    fingerprint, size = filed
    if runtime == "auto":
        key = _cache_key(fingerprint, int8=int8, check=check, threads=threads)
        return cache_dir() / RUNTIMES_FOLDER / key, runtime, size
    if runtime == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        return None  # (running a conversion needs ONNX Runtime, not tf2onnx, which imports TF)
    path = _forced_artefact(fingerprint, runtime, threads)
    return None if path is None else (path, runtime, size)


def cached_runner(source: str | os.PathLike, *, runtime: str | None = None,
                  check: str = "generated", int8: bool = False, threads: int | None = None,
                  digest: str | None = None) -> tuple[Runner, tuple[int, int]] | None:
    """The runner already made for the model in the ``.keras`` file ``source``, and the model's
    input size, found without loading the model (no Keras, no TensorFlow): ``None`` when there is
    none yet or when it needs the model. ``runtime`` as :func:`get_runner` takes it: for
    ``"auto"``, the runtime measured when the model was run from this file on this machine (with
    these library versions and settings; None when Keras itself won); for ``"tflite"`` or
    ``"onnx"``, that conversion of the model made before (by ``"auto"`` or by forcing it);
    ``"keras"`` is always None. ``check`` (``"auto"`` only): ``"generated"`` (``get_runner``'s
    ``check=None``), the ``description`` of the :class:`~agegender_models.export.CheckSet` given,
    or ``"given"`` for one given as a function; ``int8``: whether calibration faces were given;
    ``digest``: the file's SHA-256 when known."""
    runtime, threads = _resolve_runtime(runtime), _threads(threads)
    if runtime == "keras":
        return None
    filed = _filed_artefact(source, runtime, check=check, int8=int8, threads=threads, digest=digest)
    if filed is None:
        return None
    path, runtime, size = filed
    if runtime == "auto":
        runner = _from_cache(path, None, threads)
    else:
        runner = artefact_runner(runtime, path.read_bytes(), threads=threads)
    return None if runner is None else (runner, size)


def has_cached_runner(source: str | os.PathLike, *, runtime: str | None = None,
                      check: str = "generated", int8: bool = False, threads: int | None = None,
                      digest: str | None = None) -> bool:
    """Whether :func:`cached_runner` would find a runner, answered from the cache's files
    alone: no artefact read, no runtime started."""
    runtime, threads = _resolve_runtime(runtime), _threads(threads)
    if runtime == "keras":
        return False
    filed = _filed_artefact(source, runtime, check=check, int8=int8, threads=threads, digest=digest)
    if filed is None or filed[1] != "auto":
        return filed is not None
    winner = _winner(filed[0])
    return winner is not None and winner[3] is not None


def _winner(folder: Path) -> tuple[dict[str, Any], str, str, Path | None] | None:
    """The verdict cached in ``folder``, its runtime, its quantization and its artefact (None
    when Keras won); None when there is no verdict or its artefact is missing."""
    verdict = read_json(folder / "verdict.json")
    name = verdict.get("runtime")
    if not isinstance(name, str):
        return None
    if name == "keras":
        return verdict, "keras", "none", None
    runtime, _, quantize = name.partition(" ")
    path = folder / f"model{SUFFIX.get(runtime, '')}"
    if runtime not in SUFFIX or not path.is_file():
        return None
    return verdict, runtime, quantize or "none", path


def _from_cache(folder: Path, model, threads: int) -> Runner | None:
    winner = _winner(folder)
    if winner is None:
        return None
    verdict, runtime, quantize, path = winner
    if path is None:  # Keras won
        if model is None:  # asked without the model (cached_runner): it must be loaded
            return None
        runner = keras_runner(model)
    else:
        runner = artefact_runner(runtime, path.read_bytes(), threads=threads, quantize=quantize)
    runner.verdict = verdict
    return runner


def _remember_file(source, digest: str | None, fingerprint: str, model) -> None:
    """File the model's fingerprint under its file's SHA-256, for :func:`cached_runner`: not when
    the file changed since ``digest`` was taken (before the model was loaded), nor when it is
    filed already; never fatal (a cache on a read-only disk is read, not written)."""
    with contextlib.suppress(OSError):
        now = file_digest(source)
        if digest is not None and now != digest:
            return
        record = {"fingerprint": fingerprint,
                  "input_size": [int(d) for d in model.inputs[0].shape[1:3]]}
        if read_json(_file_record(now)) != record:
            write_json(_file_record(now), record)


def _auto(model, *, check, calibration, threads: int, cache: bool, source, source_digest) -> Runner:
    fingerprint = model_fingerprint(model)
    if source is not None:  # cached_runner finds this verdict from the file, without the model
        _remember_file(source, source_digest, fingerprint, model)
    key = _cache_key(fingerprint, int8=calibration is not None, check=_check_label(check),
                     threads=threads)
    folder = cache_dir() / RUNTIMES_FOLDER / key
    if cache:
        found = _from_cache(folder, model, threads)
        if found is not None:
            return found
    # faces given as functions are read only now, when there is something to measure
    check = check() if callable(check) else check
    calibration = calibration() if callable(calibration) else calibration
    runners, contents, verdict = _measure(model, check, calibration, threads)
    name = verdict["runtime"]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    if name != "keras":  # written whole before it is named: another process may be reading
        write_bytes(folder / f"model{SUFFIX[runners[name].runtime]}", contents[name])
    write_json(folder / "verdict.json", verdict)
    runner = runners[name]
    runner.verdict = {**verdict, "fresh": True}
    return runner


def get_runner(
    model,
    runtime: str | Runner | None = None,
    *,
    check: Any = None,
    calibration: np.ndarray | None = None,
    threads: int | None = None,
    cache: bool = True,
    source: str | os.PathLike | None = None,
    source_digest: str | None = None,
) -> Runner:
    """A :class:`Runner` for the Keras ``model`` (see the module docstring).

    ``runtime``: ``"auto"``, ``"keras"``, ``"tflite"``, ``"onnx"``, or a :class:`Runner`
    (returned as is); ``None``: ``$AGEGENDER_RUNTIME``, else ``"auto"``. ``check``: an
    :class:`agegender_models.export.CheckSet` of real faces for ``"auto"``'s parity check
    (default: generated images); ``calibration``: uint8 faces at the model's input size, which
    also make ``"auto"`` consider int8 exports. Either may be a function returning it, called
    only when there is no cached verdict to use. ``threads``: TFLite/ONNX Runtime threads
    (default: every CPU); ``cache=False`` measures (or converts) again. A forced ``"tflite"`` or
    ``"onnx"`` runs ``"auto"``'s conversion when ``"auto"`` chose that runtime, else converts
    the model once (cached). ``source``: the ``.keras`` file the model was loaded from; the
    verdict or conversion is then also filed under the file's SHA-256, for
    :func:`cached_runner` to find without loading the model (``source_digest``: that SHA-256
    taken before the model was loaded; a file replaced since is then not filed).
    """
    if isinstance(runtime, Runner):
        return runtime
    runtime = _resolve_runtime(runtime)
    if runtime == "keras":
        return keras_runner(model)
    threads = _threads(threads)
    if runtime == "auto":
        return _auto(model, check=check, calibration=calibration, threads=threads, cache=cache,
                     source=source, source_digest=source_digest)
    from .export import convert_model

    if runtime == "onnx" and not onnx_available():
        from .export import ONNX_INSTALL, ExportFormatError

        raise ExportFormatError(f"runtime 'onnx' needs tf2onnx and onnxruntime; install the extra: "
                                f"{ONNX_INSTALL}")
    fingerprint = model_fingerprint(model)
    if source is not None:  # cached_runner finds this conversion from the file, without the model
        _remember_file(source, source_digest, fingerprint, model)
    found = _forced_artefact(fingerprint, runtime, threads) if cache else None
    if found is not None:
        content = found.read_bytes()
    else:
        content = convert_model(model, runtime)
        with contextlib.suppress(OSError):  # a read-only cache is not written
            write_bytes(_forced_path(fingerprint, runtime), content)
    return artefact_runner(runtime, content, threads=threads)


def runtime_verdicts() -> list[dict[str, Any]]:
    """The cached ``"auto"`` verdicts (one per model, machine and setting)."""
    root = cache_dir() / RUNTIMES_FOLDER
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.glob("*/verdict.json")):
        verdict = read_json(path)
        if verdict:
            found.append({"key": path.parent.name, **verdict})
    return found


def clear_runtime_cache() -> int:
    """Forget every cached runtime verdict and converted artefact; returns how many verdicts."""
    count = len(runtime_verdicts())
    shutil.rmtree(cache_dir() / RUNTIMES_FOLDER, ignore_errors=True)
    return count
