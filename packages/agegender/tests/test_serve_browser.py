"""The page of `agegender serve` in a real browser: headless Chromium (Debian's `chromium`
package; `.ci/run` installs it) driven by Playwright, launched with the system browser
(`executable_path`; Playwright's own browser download is never used).

The server runs in a thread on a free 127.0.0.1 port with a tiny model and a fake detector (two
faces at known boxes), so what the page must show is known exactly. Screenshots go to the test's
tmp dir.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="needs the serve extra: pip install './packages/agegender[serve]'")
playwright_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (a test dependency)")

from agegender import serve  # noqa: E402
from agegender_models import create_model  # noqa: E402
from agegender_models.detect import Face  # noqa: E402

COLOURS = {"female": (230, 60, 140), "male": (40, 120, 230)}  # as agegender.annotate and app.js
FACES = [Face((40, 50, 120, 140), 0.99), Face((400, 80, 160, 180), 0.97)]


def chromium() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


pytestmark = pytest.mark.skipif(
    chromium() is None, reason="no system Chromium (apt-get install chromium; .ci/run installs it)")


class TwoFaces:
    """Two faces in 640-px-wide photos, none otherwise."""

    def detect_faces(self, image):
        return list(FACES) if image.shape[1] == 640 else []


@pytest.fixture(scope="module")
def server_url(live_server):
    app = serve.create_app(create_model("custom_cnn", input_shape=(32, 32, 3)), detector=TwoFaces())
    server, thread, port = live_server(app)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server_url):
    """A page on `/`, with every request it makes and every console error recorded."""
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.requests, page.console_errors = [], []
    page.on("request", lambda request: page.requests.append(request.url))
    page.on("console", lambda m: m.type == "error" and page.console_errors.append(m.text))
    page.on("pageerror", lambda exc: page.console_errors.append(str(exc)))
    page.goto(server_url + "/")
    page.wait_for_selector("body[data-state=ready]")
    yield page
    context.close()


def a_photo(path: Path) -> Path:
    """A 640 x 480 photo: a grey background with two skin-coloured ovals where the faces are."""
    image = Image.new("RGB", (640, 480), (128, 128, 128))
    pixels = np.asarray(image).copy()
    yy, xx = np.mgrid[0:480, 0:640]
    for face in FACES:
        x, y, w, h = face.box
        inside = ((xx - x - w / 2) / (w / 2)) ** 2 + ((yy - y - h / 2) / (h / 2)) ** 2 < 0.8
        pixels[inside] = (224, 180, 150)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=92)
    path.write_bytes(buffer.getvalue())
    return path


def label(face: dict) -> str:
    return f"{face['gender'][0].upper()} {round(face['age'])}"


def test_the_page_shows_each_face_boxed_and_labelled(page, server_url, tmp_path) -> None:
    photo = a_photo(tmp_path / "two people.jpg")
    with page.expect_response("**/v1/predict") as answer:
        page.set_input_files("#file", str(photo))
    expected = json.loads(answer.value.body())["predictions"]
    assert [f["box"] for f in expected] == [[40, 50, 120, 140], [400, 80, 160, 180]]
    page.wait_for_selector("body[data-state=done]")
    page.screenshot(path=str(tmp_path / "serve_page.png"), full_page=True)

    assert page.inner_text("#status") == "2 faces in two people.jpg."
    rows = page.locator("#faces tbody tr")
    assert rows.count() == 2
    for i, face in enumerate(expected):
        cells = rows.nth(i).locator("td").all_inner_texts()
        assert cells[:4] == [str(i), label(face), face["gender"], f"{face['age']:.1f}"]
        assert cells[6] == " ".join(map(str, face["box"]))

    # the boxes are drawn on the canvas, in the gender's colour, where the faces are
    canvas = page.locator("#photo")
    assert canvas.get_attribute("data-faces") == "2"
    scale = float(canvas.get_attribute("data-scale"))
    for face in expected:
        x, y, w, h = (v * scale for v in face["box"])
        for px, py in ((x, y + h / 2), (x + w, y + h / 2), (x + w / 2, y + h)):  # left, right, bottom edges
            rgba = page.evaluate(
                "([x, y]) => Array.from(document.getElementById('photo').getContext('2d')"
                ".getImageData(x, y, 1, 1).data)", [round(px), round(py)])
            assert all(abs(a - b) <= 30 for a, b in zip(rgba[:3], COLOURS[face["gender"]], strict=True)), (
                face, (px, py), rgba)
    # ... and the label above each box: its background in the same colour
    for face in expected:
        x, y = (v * scale for v in face["box"][:2])
        rgba = page.evaluate(
            "([x, y]) => Array.from(document.getElementById('photo').getContext('2d')"
            ".getImageData(x, y, 1, 1).data)", [round(x + 1), round(y - 2)])
        assert all(abs(a - b) <= 30 for a, b in zip(rgba[:3], COLOURS[face["gender"]], strict=True))

    assert all(url.startswith(server_url) or url.startswith("blob:") for url in page.requests), page.requests
    assert page.console_errors == []


def test_dropping_a_file_that_is_not_an_image_shows_the_reason(page, tmp_path) -> None:
    page.evaluate("""() => {
        const data = new DataTransfer();
        data.items.add(new File(["not a picture"], "notes.txt", {type: "text/plain"}));
        document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
    }""")
    page.wait_for_selector("body[data-state=done]")
    page.screenshot(path=str(tmp_path / "serve_page_error.png"), full_page=True)
    assert "not an image" in page.inner_text("#status")
    assert page.inner_text("#errors") == ("notes.txt: cannot read image: not an image Pillow can "
                                          "read (unknown format or not an image file)")
    assert page.locator("#faces tbody tr").count() == 0
