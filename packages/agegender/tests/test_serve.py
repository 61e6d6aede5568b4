"""`agegender serve`: the HTTP API in-process (FastAPI's TestClient), a live server under
concurrent requests, and the command itself in a subprocess.

A tiny untrained model keeps it fast; the detector is a fake one (faces decided by the photo's
width, as in tests/test_predict_detect.py), so the paths are deterministic without real faces.
One test serves the shipped model with the real MTCNN detector.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="needs the serve extra: pip install './packages/agegender[serve]'")

from fastapi.testclient import TestClient  # noqa: E402

from agegender import cli, serve  # noqa: E402
from agegender_models import create_model, save_model  # noqa: E402
from agegender_models import detect as det  # noqa: E402
from agegender_models.detect import Face  # noqa: E402

SHARED_PHOTOS = Path(__file__).resolve().parents[3].parent / "shared" / "photos"


class WidthDetector:
    """Two faces in 300-px-wide photos, one in 250-px ones, none otherwise; remembers the
    threads it was called from."""

    threads: set[int] = set()

    def __init__(self, **kwargs):
        pass

    def detect_faces(self, image):
        WidthDetector.threads.add(threading.get_ident())
        faces = {
            300: [Face((10, 20, 60, 60), 0.99), Face((150, 30, 80, 80), 0.98)],
            250: [Face((40, 40, 100, 100), 0.97)],
        }
        return faces.get(image.shape[1], [])


def photo(width: int, height: int = 200, *, fmt: str = "JPEG", mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims width x height pixels (a decompression bomb:
    it must be refused from the header, never decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


GOOD = photo(300)  # two faces
BAD = {  # kind: (file name, bytes, status when alone, words the reason must contain)
    "not an image": ("notes.txt", b"just some text, not a picture", 415, "not an image"),
    "empty file": ("empty.jpg", b"", 415, "empty"),
    "corrupt": ("cut.jpg", GOOD[:400], 422, "corrupt image"),
    # its header is whole: found out while the predictor decodes it
    "truncated pixels": ("half.jpg", GOOD[:2000], 422, "corrupt image: cannot decode image: OSError: image file is truncated"),
    "bomb over the library's limit": ("bomb.png", png_header(9000, 9000), 413, "too large"),
    "bomb over Pillow's guard": ("huge.png", png_header(40000, 40000), 413, "too large: 1600000000 pixels exceeds"),
    "oversize upload": ("big.png", photo(400, 400, fmt="PNG"), 413, "file too large"),
}
MAX_UPLOAD_MB = 0.3  # the tests' app: 300 KB per file (big.png above is about 480 KB)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(create_model("custom_cnn", input_shape=(32, 32, 3)),
                      tmp_path_factory.mktemp("model") / "tiny.keras")


@pytest.fixture(scope="module")
def app(model_path):
    return serve.create_app(str(model_path), detector=WidthDetector(), max_upload_mb=MAX_UPLOAD_MB)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as test_client:
        yield test_client


def post(client, *files: tuple[str, bytes]):
    return client.post("/v1/predict", files=[("image", (name, data, "application/octet-stream"))
                                              for name, data in files])


def test_healthz_and_models(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "model": "tiny.keras"}
    (model,) = client.get("/v1/models").json()["models"]
    assert model["name"] == "tiny.keras" and model["input_size"] == [32, 32]
    assert model["source"] == "file" and model["runtime"] == "keras"


def test_predict_answers_as_predict_json_does(client, model_path, tmp_path, monkeypatch, capsys) -> None:
    """The same photos through the API and through `agegender predict --detect mtcnn --json`
    give the same rows, rounded the same way; `file` is the upload's name."""
    files = {"a_two.jpg": GOOD, "b_gray.png": photo(250, 180, fmt="PNG", mode="L", seed=1),
             "c_none.jpg": photo(200, seed=2)}
    response = post(client, *files.items())
    assert response.status_code == 200
    body = response.json()
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    monkeypatch.setitem(det._CLASSES, "mtcnn", WidthDetector)
    code = cli.main(["predict", "--model", str(model_path), "--detect", "mtcnn", "--json",
                     *(str(tmp_path / name) for name in files)])
    expected = json.loads(capsys.readouterr().out)
    assert code == 1  # c_none.jpg: no face found
    for row in expected["predictions"] + expected["errors"]:
        row["file"] = Path(row["file"]).name
    assert body == expected
    assert [(r["file"], r["face"], r["box"]) for r in body["predictions"]] == [
        ("a_two.jpg", 0, [10, 20, 60, 60]), ("a_two.jpg", 1, [150, 30, 80, 80]),
        ("b_gray.png", 0, [40, 40, 100, 100])]
    assert list(body["predictions"][0]) == ["file", "face", "box", "confidence", "age", "gender",
                                            "p_female"]
    assert body["errors"] == [{"file": "c_none.jpg", "reason": "no face found"}]


class ReducedDetector:
    """Shrinks photos to 640 px as YuNet's detectors do (``max_side``): `predict` decodes a large
    JPEG for it at a reduced scale. It finds a face only in that reduced image (700 px wide)."""

    max_side = 640

    def detect_faces(self, image):
        return [Face((200, 150, 300, 300), 0.99)] if image.shape[1] == 700 else []


def test_a_large_jpeg_is_read_as_predict_reads_it(model_path, tmp_path) -> None:
    """The API decoded uploads whole where `predict` decodes a large JPEG reduced for the
    detector: the same photo got other numbers through the two."""
    from agegender_models import Predictor

    x = np.linspace(0, 255, 1400)[None, :, None]
    y = np.linspace(0, 255, 1000)[:, None, None]
    picture = np.concatenate([np.broadcast_to(x, (1000, 1400, 1)), np.broadcast_to(y, (1000, 1400, 1)),
                              np.full((1000, 1400, 1), 90.0)], -1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, "JPEG", quality=90)
    (tmp_path / "large.jpg").write_bytes(buffer.getvalue())
    expected = Predictor(model_path, detector=ReducedDetector()).predict([tmp_path / "large.jpg"])
    with TestClient(serve.create_app(str(model_path), detector=ReducedDetector())) as client:
        response = post(client, ("large.jpg", buffer.getvalue()))
    assert response.status_code == 200, response.text
    (row,) = response.json()["predictions"]
    assert row["box"] == expected[0]["box"] == [400, 300, 600, 600]  # in the photo's own pixels
    assert row["age"] == pytest.approx(expected[0]["age"], abs=0.05)
    assert row["p_female"] == pytest.approx(expected[0]["p_female"], abs=5e-4)


def test_a_photo_without_a_face_is_200_with_the_reason(client) -> None:
    response = post(client, ("plain.jpg", photo(200)))
    assert response.status_code == 200
    assert response.json() == {"predictions": [],
                               "errors": [{"file": "plain.jpg", "reason": "no face found"}]}


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_upload_alone_is_a_4xx_naming_the_problem(client, kind) -> None:
    name, data, status, words = BAD[kind]
    response = post(client, (name, data))
    assert response.status_code == status
    body = response.json()
    assert body["predictions"] == []
    assert [e["file"] for e in body["errors"]] == [name]
    assert words in body["errors"][0]["reason"] and words in body["detail"]
    assert "Traceback" not in response.text


@pytest.mark.parametrize("kind", list(BAD))
def test_a_bad_upload_never_fails_the_good_files_beside_it(client, kind) -> None:
    name, data, _, words = BAD[kind]
    response = post(client, ("first.jpg", GOOD), (name, data), ("last.jpg", GOOD))
    assert response.status_code == 200
    body = response.json()
    assert [(r["file"], r["face"]) for r in body["predictions"]] == [
        ("first.jpg", 0), ("first.jpg", 1), ("last.jpg", 0), ("last.jpg", 1)]
    assert len(body["errors"]) == 1 and body["errors"][0]["file"] == name
    assert words in body["errors"][0]["reason"]


def test_bad_uploads_of_different_kinds_together_are_422(client) -> None:
    response = post(client, BAD["not an image"][:2], BAD["corrupt"][:2], BAD["oversize upload"][:2])
    assert response.status_code == 422
    assert [e["file"] for e in response.json()["errors"]] == ["notes.txt", "cut.jpg", "big.png"]


def test_a_heic_upload_is_read_or_refused_saying_what_to_install(client, monkeypatch) -> None:
    pytest.importorskip("pillow_heif", reason="the 'heif' extra is not installed")
    from agegender_models import imageio

    heic = io.BytesIO()
    Image.open(io.BytesIO(GOOD)).save(heic, format="HEIF")
    response = post(client, ("IMG_0001.HEIC", heic.getvalue()))
    assert response.status_code == 200 and len(response.json()["predictions"]) == 2
    monkeypatch.setattr(imageio, "pillow_heif", None)  # as where the extra is not installed
    monkeypatch.setattr(Image, "ID", [i for i in Image.ID if i != "HEIF"])
    response = post(client, ("IMG_0001.HEIC", heic.getvalue()))
    assert response.status_code == 415
    assert response.json()["errors"] == [{"file": "IMG_0001.HEIC", "reason": (
        "cannot read image: a HEIC/HEIF photo: reading it needs the pillow-heif plugin (pip install 'agegender-models[heif]'; "
        "from a checkout of agegender: pip install './packages/agegender-models[heif]')")}]


def test_malformed_requests_are_400_with_a_reason(client) -> None:
    cases = [
        client.post("/v1/predict", content=b"{}", headers={"content-type": "application/json"}),
        client.post("/v1/predict", files=[("photo", ("a.jpg", GOOD, "image/jpeg"))]),
        client.post("/v1/predict", data={"image": "not a file"},
                    files=[("other", ("a.txt", b"x", "text/plain"))]),
        post(client, *[(f"{i}.jpg", GOOD) for i in range(serve.MAX_FILES + 1)]),
    ]
    reasons = ["multipart/form-data", "no file in the form field 'image' (fields sent: photo)",
               "not a file", "Too many files"]
    for response, words in zip(cases, reasons, strict=True):
        assert response.status_code == 400, response.text
        assert words in json.dumps(response.json())


def test_a_request_over_the_body_limit_is_refused_unread(client) -> None:
    limit = serve.REQUEST_FILES * int(MAX_UPLOAD_MB * 1e6) + 1_000_000
    big = b"\0" * (limit + 1)
    response = post(client, ("huge.bin", big))  # Content-Length says it: refused before reading
    assert response.status_code == 413 and "request too large" in response.json()["detail"]

    def chunks():  # no Content-Length: refused when the bytes received pass the limit
        yield b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.bin\"\r\n\r\n"
        for _ in range(limit // 65536 + 2):
            yield b"\0" * 65536

    response = client.post("/v1/predict", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.status_code == 413 and "request too large" in response.json()["detail"]


def multipart(files: list[tuple[str, bytes]], boundary: str = "agegenderboundary") -> bytes:
    """A multipart body with the file names exactly as given (httpx would escape some bytes)."""
    return b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
                    f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
                    + data + b"\r\n" for name, data in files) + f"--{boundary}--\r\n".encode()


def test_file_names_are_the_uploads_own_never_a_path(client, model_path) -> None:
    names = ["../../etc/passwd.jpg", "C:\\Users\\me\\Pictures\\me.jpg", "tab\tand\x01ctl.jpg", ".."]
    response = client.post("/v1/predict", content=multipart([(name, GOOD) for name in names]),
                           headers={"content-type": "multipart/form-data; boundary=agegenderboundary"})
    files = sorted({r["file"] for r in response.json()["predictions"]})
    assert files == sorted(["passwd.jpg", "me.jpg", "tabandctl.jpg", "image-3"])
    for path in (str(model_path.parent), os.getcwd(), "/tmp"):
        assert path not in response.text


def test_the_page_and_its_assets_come_from_the_app(client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    # every asset from the app itself: no src/href to another host (the browser test also
    # watches every request the page makes)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text)
    assert re.findall(r'(?:src|href)="([^"]+)"', page.text) == [
        "data:,", "/static/style.css", "/static/app.js", "/openapi.json"]
    for asset, kind in (("app.js", "javascript"), ("style.css", "css")):
        response = client.get(f"/static/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert "http://" not in response.text and "https://" not in response.text
    assert 'accept="image/*,.heic,.heif"' in page.text  # iPhone photos are offered too
    assert client.get("/static/serve.py").status_code == 404
    assert client.get("/static/..%2Fserve.py").status_code == 404
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


def test_a_full_queue_is_503_with_retry_after(client, monkeypatch) -> None:
    monkeypatch.setattr(serve, "MAX_PENDING", 0)
    response = post(client, ("a.jpg", GOOD))
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "server busy" in response.json()["detail"]


def _post_raw(port: int, files: list[tuple[str, bytes]]) -> tuple[int, dict]:
    boundary = "agegenderboundary"
    body = multipart(files, boundary)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/v1/predict", body,
                           {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_concurrent_requests_run_the_model_in_one_thread_and_agree(app, live_server) -> None:
    """16 requests from 8 threads at once against a live server: each answer equals the one the
    same photo gets alone, and every model/detector call ran in the single inference thread."""
    server, thread, port = live_server(app)
    try:
        photos = [(f"p{i}.jpg", photo(300 if i % 3 else 250, seed=i)) for i in range(16)]
        alone = [_post_raw(port, [p]) for p in photos]
        WidthDetector.threads.clear()
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda p: _post_raw(port, [p]), photos))
        assert together == alone
        assert all(status == 200 for status, _ in together)
        assert len(WidthDetector.threads) == 1
        assert threading.get_ident() not in WidthDetector.threads
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_serve_without_the_extra_is_one_line_exit_2(monkeypatch, capsys) -> None:
    monkeypatch.delitem(sys.modules, "agegender.serve", raising=False)
    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install './packages/agegender[serve]'" in err


@pytest.mark.parametrize("argv, words", [
    (["--model", "no-such-model"], "neither a shipped model"),
    (["--port", "70000"], "--port must be 0-65535"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--max-upload-mb", "0"], "--max-upload-mb must be > 0"),
])
def test_serve_refuses_bad_options_in_one_line(capsys, argv, words) -> None:
    assert cli.main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_shipped_model_names_are_read_as_the_library_lists_them() -> None:
    from agegender_models import list_pretrained

    assert serve.shipped_models() == list_pretrained()


def test_tensorflow_loads_only_without_a_cached_runtime(model_path, monkeypatch) -> None:
    from agegender_models import runtime

    seen = []

    def cached(path, *, digest=None, **_):
        seen.append((Path(path), digest))
        return Path(path) == model_path

    monkeypatch.setattr(runtime, "has_cached_runner", cached)
    monkeypatch.delenv("AGEGENDER_RUNTIME", raising=False)  # "auto", as for a user
    assert serve.needs_tensorflow(str(model_path)) is False
    assert serve.needs_tensorflow(None) is True  # the shipped default: no runtime cached here
    default = seen[-1]
    assert default[0].suffix == ".keras" and len(default[1]) == 64  # its registry SHA-256


def test_a_runtime_asked_for_by_the_environment_starts_from_its_conversion(model_path, tmp_path,
                                                                           monkeypatch) -> None:
    from agegender_models import Predictor

    monkeypatch.setenv("AGEGENDER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AGEGENDER_RUNTIME", "tflite")
    assert serve.needs_tensorflow(str(model_path)) is True  # never converted here
    Predictor(model_path)  # converts it once, filed under the file
    assert serve.needs_tensorflow(str(model_path)) is False
    monkeypatch.setenv("AGEGENDER_RUNTIME", "keras")  # Keras runs the model itself
    assert serve.needs_tensorflow(str(model_path)) is True


def test_serve_help_loads_neither_tensorflow_nor_fastapi() -> None:
    probe = ("import sys, contextlib, io\nfrom agegender.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
             "    main(['serve', '--help'])\n"
             "print(*(m in sys.modules for m in ('tensorflow', 'keras', 'fastapi', 'uvicorn')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         check=True).stdout.split()
    assert out == ["False"] * 4


def test_the_command_starts_serves_and_stops(model_path) -> None:
    """`agegender serve --model FILE --port P` in its own process: 127.0.0.1 by default, health,
    model, a bad upload answered 415, and Ctrl-C stops it with status 0."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "agegender.cli", "serve", "--model", str(model_path), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        health = None
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(OSError):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/healthz")
                health = json.loads(connection.getresponse().read())
                break
            time.sleep(0.25)
        assert health == {"status": "ok", "model": "tiny.keras"}, process.stderr and process.poll()
        status, body = _post_raw(port, [("notes.txt", b"not an image")])
        assert status == 415 and body["errors"] == [
            {"file": "notes.txt", "reason": "cannot read image: not an image Pillow can read "
                                            "(unknown format or not an image file)"}]
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert f"tiny.keras on http://127.0.0.1:{port}/" in out
        assert "Traceback" not in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture(scope="module")
def default_client():
    """The shipped model with the real MTCNN detector, as `agegender serve` runs by default."""
    with TestClient(serve.create_app()) as test_client:
        yield test_client


def test_the_shipped_model_is_served_by_default(default_client) -> None:
    from agegender_models import list_pretrained, pretrained_info

    name = list_pretrained()[0]
    assert default_client.get("/healthz").json() == {"status": "ok", "model": name}
    (model,) = default_client.get("/v1/models").json()["models"]
    info = pretrained_info(name)
    assert model["input_size"] == [info["input_size"]] * 2
    from agegender_models.detect import resolve_detector_name

    assert model["figures"] == info["figures"]
    assert model["detector"] == resolve_detector_name("auto")  # the name of the one that runs
    assert "card" not in model  # a path on the server
    response = post(default_client, ("noise.jpg", photo(320, 240)), BAD["corrupt"][:2])
    assert response.status_code == 200
    assert response.json()["errors"][0] == {"file": "noise.jpg", "reason": "no face found"}


def test_the_shipped_model_finds_a_real_face(default_client) -> None:
    path = SHARED_PHOTOS / "fr_obama.jpg"
    if not path.is_file():
        pytest.skip(f"no real photo at {path} (the project's shared/photos)")
    response = post(default_client, (path.name, path.read_bytes()))
    assert response.status_code == 200
    (face,) = response.json()["predictions"]
    assert face["file"] == "fr_obama.jpg" and face["gender"] == "male" and face["confidence"] > 0.9
    assert 20 <= face["age"] <= 80
