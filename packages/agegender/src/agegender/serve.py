"""``agegender serve``: an HTTP API and a web page for photos.

    agegender serve                              # the shipped model, http://127.0.0.1:8000/
    agegender serve --model runs/a/model.keras --port 8080 --workers 2

Endpoints (JSON in and out, except the page and its two assets):

* ``POST /v1/predict`` -- a multipart form with one or more files in the field ``image``. Each
  file is read and its faces found and predicted as ``agegender predict`` does (its default
  detector, ``auto``, and decoding; for a model outside a run folder, such as the shipped ones,
  the same answers: ``predict`` checks a run folder's model on its real faces when it chooses
  the runtime); the answer is the ``agegender predict --json``
  contract, ``{"predictions": [{file, face, box, confidence, age, gender, p_female}],
  "errors": [{file, reason}]}``, where ``file`` is the upload's own file name (its last path
  component, control characters removed; never a path on the server).
* ``GET /healthz`` -- ``{"status": "ok", "model": NAME}``.
* ``GET /v1/models`` -- the served model: name, input size, detector, runtime and, for a shipped
  model, its model card's headline figures.
* ``GET /`` -- one page: choose or drop a photo, see each face boxed and labelled, and the list.
  Its script and style sheet are served by the app (``/static/...``); nothing comes from another
  host, so it works offline. ``/openapi.json`` describes the API; FastAPI's ``/docs`` page is off
  because it loads Swagger UI from a CDN.

Status codes of ``POST /v1/predict``:

* **200** -- at least one file was a readable image. Files that gave no result (unreadable, too
  large, no face found) are listed in ``errors``, each with its reason; the good files of the same
  request are predicted all the same (as ``agegender predict`` does, which exits 1 then).
* When no file of the request is a readable image, a 4xx with the same body plus ``detail``:
  **413** every file is over the size limit (``--max-upload-mb``, per file) or the pixel limit
  (a decompression bomb: refused from its header, never decoded), **415** none is an image
  (no known image format, or empty; a HEIC photo where the ``heif`` extra is not installed), **422** the files are corrupt (a known format that does not
  decode), or fail for mixed reasons.
* **400** a malformed request: not ``multipart/form-data``, no file in the field ``image``, more
  than ``MAX_FILES`` files; **413** the whole request body is over ``REQUEST_FILES`` times the
  per-file limit (it is refused unread); **503** more than ``MAX_PENDING`` requests are waiting
  (with ``Retry-After``). Any of these answers ``{"detail": REASON}``; nothing answers with a
  traceback.

**Concurrency.** The model is loaded once per worker process. Every model and detector call of
a worker runs in one inference thread (a single-thread executor): Keras, TFLite interpreters and
MTCNN are not safe to call from several threads at once, and on a small CPU one thread that uses
every core for its tensor operations is as fast as several that compete (bench/RESULTS.md,
``bench_serve.py``). The uploads are read by the request; decoding and predicting happen in
that thread, one file at a time, so one worker holds at most one decoded photo at a time. ``--workers N`` starts
N processes, each with its own model (N times the memory).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import unicodedata
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from io import BytesIO
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

SERVE_INSTALL = "pip install './packages/agegender[serve]'"
try:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException
except ImportError as exc:  # pragma: no cover - exercised by a test that hides fastapi
    raise ImportError(f"`agegender serve` needs the 'serve' extra: {SERVE_INSTALL} ({exc})") from exc

DEFAULT_MAX_UPLOAD_MB = 10.0
MAX_FILES = 16
"""The most files one ``POST /v1/predict`` may carry."""
REQUEST_FILES = 4
"""A request body may be at most this many times the per-file limit (plus 1 MB for the form's
own bytes): a larger one is refused unread, whole, with 413."""
MAX_PENDING = 64
"""Requests waiting for the inference thread beyond this get 503 at once."""
CONFIG_ENV = "AGEGENDER_SERVE_CONFIG"
"""How ``--workers N`` hands the options to each worker process (JSON)."""

log = logging.getLogger("agegender.serve")

# --------------------------------------------------------------------------------------------------
# uploads


class UploadError(Exception):
    """One uploaded file cannot be used: ``status`` is the HTTP status it stands for, ``reason``
    the one line that goes into ``errors``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def safe_filename(name: str | None, index: int) -> str:
    """The upload's own file name as the client sent it, without any folder part (``/`` or ``\\``)
    or control character, at most 200 characters; ``image-<index>`` when nothing is left."""
    text = unicodedata.normalize("NFC", name or "")
    text = re.split(r"[/\\]", text)[-1]
    text = _UNSAFE.sub("", text).strip()
    if text in ("", ".", ".."):
        return f"image-{index}"
    return text[:200]


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def check_upload(data: bytes, *, max_pixels: int) -> None:
    """What an uploaded file's header tells, before anything is decoded: empty or not an image
    (415; a HEIC photo without the ``heif`` extra says so), over the pixel limit (413: a
    decompression bomb is never decoded), a header Pillow cannot parse (422). The file is then
    decoded by the predictor, as ``agegender predict`` decodes a file (a large JPEG at a reduced
    scale for the detector), so both answer alike. Raises :class:`UploadError`."""
    from agegender_models.imageio import (
        ImageTooLargeError,
        check_size,
        refused_by_pillow,
        unreadable,
    )

    if not data:
        raise UploadError(415, unreadable(data))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise UploadError(413, refused_by_pillow(exc, max_pixels)) from None
    except UnidentifiedImageError:
        raise UploadError(415, unreadable(data[:64])) from None
    except Exception as exc:  # a header Pillow recognises but cannot parse
        raise UploadError(422, f"corrupt image: {_one_line(exc)}") from None
    with image:
        try:
            check_size(image, max_pixels=max_pixels, name="upload")
        except ImageTooLargeError as exc:
            raise UploadError(413, exc.reason) from None


def decode_status(reason: str) -> tuple[int, str]:
    """The status and reason of a file the predictor could not use: a file that did not decode
    is corrupt (422), one too large 413; anything else (no face found) was a readable image (200)."""
    if reason.startswith("image too large"):
        return 413, reason
    if reason.startswith(("cannot read image", "cannot decode image")):
        return 422, f"corrupt image: {reason}"
    return 200, reason


def _request_status(statuses: list[int]) -> int:
    """The status of a request none of whose files could be read (see the module docstring)."""
    distinct = set(statuses)
    return distinct.pop() if len(distinct) == 1 else 422


# --------------------------------------------------------------------------------------------------
# the model


@dataclass
class ServedModel:
    """A loaded model with what the API says about it; ``predictor`` runs it."""

    name: str
    source: str  # "shipped" or "file"
    predictor: Any
    summary: str | None = None
    figures: dict[str, Any] | None = None
    detector: str = "auto"

    def describe(self) -> dict[str, Any]:
        h, w = self.predictor.input_size
        runner = getattr(self.predictor, "runner", None)
        return {
            "name": self.name,
            "source": self.source,
            "input_size": [h, w],
            "detector": self.detector,
            "runtime": getattr(runner, "name", None),
            "summary": self.summary,
            "figures": self.figures,
        }


def shipped_models() -> list[str]:
    """The shipped models' names, the default first (as ``agegender_models.list_pretrained``),
    read from the library's registry file without importing the library and TensorFlow: the
    parent process of ``--workers N`` only supervises and should not hold a model's worth of
    memory. A test checks that the two agree."""
    import importlib.util

    spec = importlib.util.find_spec("agegender_models")
    folder = Path(next(iter(spec.submodule_search_locations))) / "pretrained"
    registry = json.loads((folder / "registry.json").read_text(encoding="utf-8"))
    default = registry["default"]
    return [default, *sorted(name for name in registry["models"] if name != default)]


def resolve_model(spec: str | None) -> tuple[str, str]:
    """``("shipped", name)`` or ``("file", path)`` for ``--model``; ``ValueError`` naming the
    shipped models when ``spec`` is neither."""
    shipped = shipped_models()
    if spec is None:
        return "shipped", shipped[0]
    if spec in shipped:
        return "shipped", spec
    path = Path(spec)
    if path.is_file():
        return "file", str(path)
    raise ValueError(f"--model {spec!r} is neither a shipped model ({', '.join(shipped)}) nor a "
                     "model file (.keras)")


def load_served_model(model: Any = None, *, detector: Any = "auto", runtime: Any = None,
                      max_pixels: int | None = None) -> ServedModel:
    """Load the model to serve: ``None`` (the shipped default), a shipped name, a ``.keras`` path,
    or a ``keras.Model`` (tests). ``detector``: a name or an object with ``detect_faces``."""
    from agegender_models import Predictor, pretrained_info
    from agegender_models.imageio import DEFAULT_MAX_PIXELS

    summary = figures = None
    if model is None or isinstance(model, str | os.PathLike):
        # a shipped name or a file, as Predictor loads it: its "auto" runtime is then filed under
        # the file (a later start finds it without loading the model)
        source, value = resolve_model(None if model is None else os.fspath(model))
        if source == "shipped":
            info = pretrained_info(value)
            name, summary, figures = value, info.get("summary"), info.get("figures")
        else:
            name = Path(value).name
    else:
        source, name, value = "object", str(getattr(model, "name", "model")), model
    predictor = Predictor(value, detector=detector, runtime=runtime,
                          max_pixels=max_pixels or DEFAULT_MAX_PIXELS)
    return ServedModel(name=name, source=source, predictor=predictor, summary=summary,
                       figures=figures, detector=predictor.detector_name)


class _Inference:
    """The one thread that runs the model and the detector for this worker."""

    def __init__(self, served: ServedModel, *, max_pixels: int) -> None:
        self.served = served
        self.max_pixels = max_pixels
        self.pending = 0
        self._executor: ThreadPoolExecutor | None = None  # started by the first request

    def predict_files(self, items: list[tuple[int, str, bytes]]) -> tuple[list, list, bool]:
        """Runs in the inference thread: decode and predict each ``(index, name, bytes)`` in
        turn. Returns (predictions, errors as ``(index, status, {file, reason})``, whether any
        file was a readable image)."""
        predictions: list[dict[str, Any]] = []
        errors: list[tuple[int, int, dict[str, str]]] = []
        readable = False
        for index, name, data in items:
            try:
                check_upload(data, max_pixels=self.max_pixels)
            except UploadError as exc:
                errors.append((index, exc.status, {"file": name, "reason": exc.reason}))
                continue
            found, failed = self.served.predictor.predict([data], return_errors=True)
            predictions.extend({**p, "file": name} for p in found)
            readable = readable or bool(found)
            for error in failed:
                status, reason = decode_status(error["reason"])
                readable = readable or status == 200
                errors.append((index, status, {"file": name, "reason": reason}))
        return predictions, errors, readable

    async def run(self, items: list[tuple[int, str, bytes]]):
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix="agegender-inference")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.predict_files, items)

    def close(self) -> None:
        """At the server's shutdown: finish the running call, drop the waiting ones (a server
        started again on the same app starts a new thread)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------------
# the app


class _BodyTooLarge(Exception):
    pass


class _BodyLimit:
    """ASGI middleware: a POST body over ``limit`` bytes is refused with 413 -- at once when its
    Content-Length says so, else as soon as the bytes received pass the limit."""

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                await _detail(400, "bad Content-Length header")(scope, receive, send)
                return
            if int(length) > self.limit:
                await _detail(413, _too_large(self.limit))(scope, receive, send)
                return
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge
            return message

        await self.app(scope, limited_receive, send)


def _too_large(limit: int) -> str:
    return (f"request too large: more than {limit / 1e6:.1f} MB in all (at most {REQUEST_FILES} "
            "times the per-file limit); send fewer or smaller files per request")


def _detail(status: int, detail: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"detail": detail, **extra}, status_code=status, headers=headers)


_STATIC = {  # the page's own assets: name -> media type (served from agegender/static/)
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_PAGE_HEADERS = {
    # nothing from another host: scripts, styles and images only from the app (and the
    # photo the user chose, shown from a blob: URL)
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
_PREDICT_DOC = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["image"],
            "properties": {"image": {"type": "array", "items": {"type": "string", "format": "binary"},
                                     "description": f"one to {MAX_FILES} image files"}},
        }}},
    },
    "responses": {
        "200": {"description": "{predictions: [{file, face, box, confidence, age, gender, "
                "p_female}], errors: [{file, reason}]}"},
        "400": {"description": "malformed request: {detail}"},
        "413": {"description": "every file (or the request) too large: {detail, predictions, errors}"},
        "415": {"description": "no file is an image: {detail, predictions, errors}"},
        "422": {"description": "every file corrupt or refused: {detail, predictions, errors}"},
        "503": {"description": "too many requests waiting: {detail}"},
    },
}


def _static(name: str) -> bytes:
    return resources.files("agegender").joinpath("static", name).read_bytes()


async def _read_form_files(request: Request, file_limit: int) -> tuple[list, list]:
    """The ``image`` files of a multipart request: ``(items, errors)``, items as ``(index, name,
    bytes)``, errors as ``(index, status, {file, reason})``; raises :class:`UploadError` (or ``_BodyTooLarge``) for a malformed request."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UploadError(400, "send the images as multipart/form-data in the field 'image' "
                          "(curl -F image=@photo.jpg ...)")
    try:
        form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES + 16)
    except MultiPartException as exc:
        raise UploadError(400, f"malformed multipart form: {exc}") from None
    try:
        uploads = form.getlist("image")
        if not uploads:
            fields = ", ".join(sorted(set(form.keys()))) or "none"
            raise UploadError(400, f"no file in the form field 'image' (fields sent: {fields})")
        items: list[tuple[int, str, bytes]] = []
        errors: list[tuple[int, int, dict[str, str]]] = []
        for index, upload in enumerate(uploads):
            if not isinstance(upload, UploadFile):
                errors.append((index, 400, {"file": f"image-{index}", "reason": "not a file: send "
                               "the image as a file (curl -F image=@photo.jpg)"}))
                continue
            name = safe_filename(upload.filename, index)
            data = await upload.read(file_limit + 1)
            if len(data) > file_limit:
                errors.append((index, 413, {"file": name, "reason": f"file too large: over the "
                               f"{file_limit / 1e6:g} MB limit per file (--max-upload-mb)"}))
                continue
            items.append((index, name, data))
        return items, errors
    finally:
        await form.close()


def create_app(model: Any = None, *, detector: Any = "auto", runtime: Any = None,
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_pixels: int | None = None,
               served: ServedModel | None = None) -> FastAPI:
    """The FastAPI app serving ``model`` (``None``: the shipped default; a shipped name, a
    ``.keras`` path or a ``keras.Model``), loaded now, once. ``detector``: ``"auto"`` (what
    ``agegender predict`` uses for photos: YuNet with MTCNN's landmarks), a detector name or an object with ``detect_faces``.
    ``max_upload_mb``: the limit per file; ``max_pixels``: the library's pixel limit (default
    :data:`agegender_models.imageio.DEFAULT_MAX_PIXELS`)."""
    from agegender_models.imageio import DEFAULT_MAX_PIXELS

    if not max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb must be > 0. Received: {max_upload_mb}")
    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    served = served or load_served_model(model, detector=detector, runtime=runtime,
                                         max_pixels=max_pixels)
    inference = _Inference(served, max_pixels=max_pixels)
    file_limit = int(max_upload_mb * 1_000_000)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        inference.close()

    app = FastAPI(title="agegender", version="0.1.0", lifespan=lifespan, docs_url=None,
                  redoc_url=None, description="Age and gender from face photos. See GET / for "
                  "the web page, POST /v1/predict for the API.")
    app.state.served = served
    app.state.inference = inference
    app.add_middleware(_BodyLimit, limit=REQUEST_FILES * file_limit + 1_000_000)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:  # never a traceback
        log.error("internal error on %s: %s", request.url.path, _one_line(exc))
        return _detail(500, "internal error (logged by the server)")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """``{"status": "ok", "model": NAME}``: the model is loaded and the server answers."""
        return {"status": "ok", "model": served.name}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        """The served model: name, input size, detector, runtime, the model card's figures."""
        return {"models": [served.describe()]}

    @app.post("/v1/predict", openapi_extra=_PREDICT_DOC)
    async def predict(request: Request) -> JSONResponse:
        """Ages and genders of the faces in the uploaded photos (see the module docstring)."""
        if inference.pending >= MAX_PENDING:
            return _detail(503, f"server busy: {inference.pending} requests waiting; retry later")
        inference.pending += 1
        try:
            try:
                items, errors = await _read_form_files(request, file_limit)
            except UploadError as exc:
                return _detail(exc.status, exc.reason)
            except _BodyTooLarge:
                return _detail(413, _too_large(REQUEST_FILES * file_limit + 1_000_000))
            predictions, more, readable = await inference.run(items) if items else ([], [], False)
        finally:
            inference.pending -= 1
        errors = sorted(errors + more, key=lambda e: e[0])  # in upload order
        body = _contract(predictions, [e for _, _, e in errors])
        if readable or not errors:
            return JSONResponse(body)
        status = _request_status([s for _, s, _ in errors])
        return JSONResponse({"detail": f"no usable image: {errors[0][2]['reason']}", **body},
                            status_code=status)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return Response(_static("index.html"), media_type=_STATIC["index.html"],
                        headers=_PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in _STATIC or name == "index.html":
            return _detail(404, "Not Found")
        return Response(_static(name), media_type=_STATIC[name], headers=_PAGE_HEADERS)

    return app


def _contract(predictions: list[dict[str, Any]], errors: list[dict[str, str]]) -> dict[str, Any]:
    """``agegender predict --json``'s body: the same rows, rounded the same way."""
    from agegender.cli import _rows

    return {"predictions": _rows(predictions, True), "errors": errors}


# --------------------------------------------------------------------------------------------------
# the command


def needs_tensorflow(spec: str | None) -> bool:
    """Whether serving ``--model`` loads Keras and TensorFlow: not when the runtime it runs on
    (``"auto"``'s choice, or ``$AGEGENDER_RUNTIME``'s) is cached for its file on this machine (the
    model then runs from that conversion)."""
    from agegender_models.predict import _model_file
    from agegender_models.runtime import has_cached_runner

    _, value = resolve_model(spec)
    path, digest = _model_file(value)
    return not has_cached_runner(path, digest=digest)


def app_from_env() -> FastAPI:
    """The app of one ``--workers`` process: options from ``$AGEGENDER_SERVE_CONFIG``."""
    options = json.loads(os.environ.get(CONFIG_ENV) or "{}")
    from agegender._tf import load_tensorflow

    verbose = bool(options.pop("verbose", False))
    if needs_tensorflow(options.get("model")):
        load_tensorflow(verbose=verbose)
    return create_app(options.get("model"), max_upload_mb=options.get("max_upload_mb",
                                                                      DEFAULT_MAX_UPLOAD_MB))


def _check_options(args) -> None:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0-65535. Received: {args.port}")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1. Received: {args.workers}")
    if not args.max_upload_mb > 0:
        raise ValueError(f"--max-upload-mb must be > 0. Received: {args.max_upload_mb}")


def serve_from_args(args, *, setup=None) -> int:
    """``agegender serve``: check the options and the model, then run uvicorn until stopped.
    ``setup()`` loads TensorFlow (the command's quiet start-up) in the process that loads the
    model: this one with one worker; each worker process, not this one, with several; neither
    when the model runs from its cached runtime (:func:`needs_tensorflow`)."""
    import uvicorn

    _check_options(args)
    resolve_model(args.model)  # a typo is one line, before any worker starts
    where = f"http://{args.host}:{args.port}/"
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"agegender serve: listening on {args.host}: reachable from other machines, "
              "without authentication", file=sys.stderr)
    log_level = "info" if args.verbose else "warning"
    if args.workers == 1:
        if setup is not None and needs_tensorflow(args.model):
            setup()
        app = create_app(args.model, max_upload_mb=args.max_upload_mb)
        print(f"agegender serve: {app.state.served.name} on {where} (Ctrl-C stops)", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level=log_level)
        return 0
    os.environ[CONFIG_ENV] = json.dumps({"model": args.model, "max_upload_mb": args.max_upload_mb,
                                         "verbose": bool(args.verbose)})
    print(f"agegender serve: {args.workers} workers on {where}, each loading the model "
          "(Ctrl-C stops)", flush=True)
    uvicorn.run("agegender.serve:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=log_level)
    return 0
