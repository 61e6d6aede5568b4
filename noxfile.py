"""Sessions for the agegender workspace. `nox -l` lists them; `nox -s tests` is the CI run."""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests", "lint"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
PYTHON = "3.11"
# Editable installs of the three libraries and the application, with the extras the tests use
# ('onnx': tf2onnx + onnxruntime for the ONNX export tests and bench/bench_export.py, about 100 MB
# installed next to TensorFlow's 1.8 GB; 'detect': the face detectors; 'serve': FastAPI + uvicorn
# for `agegender serve`; 'batch': Ray Data for `agegender predict-batch`; 'heif': HEIC photos).
PACKAGES = [
    "-e", "packages/utkface-data[tf]",
    "-e", "packages/agegender-eval",
    "-e", "packages/agegender-models[onnx,detect,heif]",
    "-e", "packages/agegender[onnx,detect,serve,batch,heif]",
]
# httpx2 (httpx for Starlette < 1.0) drives FastAPI's TestClient; playwright drives the system
# Chromium (.ci/run installs Debian's) in the browser test of `agegender serve`, without downloading
# a browser of its own.
# yuface is libfacedetection's own YuNet (one wheel: CPython 3.11, x86-64 Linux and Windows): the
# reference the shipped YuNet network is tested against, detection for detection.
TEST_DEPS = ["pytest>=8", "hypothesis>=6.100", "httpx2>=2.16", "httpx>=0.27", "playwright>=1.40",
             "yuface==2023.5.1; python_version == '3.11' and platform_machine == 'x86_64' and sys_platform == 'linux'"]
QUIET_TF = {"TF_CPP_MIN_LOG_LEVEL": "2", "MPLBACKEND": "Agg"}
# uv installs without compiling bytecode, and where PYTHONDONTWRITEBYTECODE is set (as on our CI
# machines) Python never writes it either: then every process that imports TensorFlow and Keras
# (the CLI tests' subprocesses, Ray's workers) compiled their sources again, about 7 s each on 2
# cores (a one-photo `agegender predict`: 14.8 s against 7.8 s compiled). pip compiles by default.
INSTALL_ENV = {"UV_COMPILE_BYTECODE": "1"}


def _shared_data() -> str:
    return os.environ.get("UTKFACE_DIR", str(ROOT.parent / "shared" / "utkface" / "crop_part1_5000"))


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit tests of every package plus cross-package tests (fast; no real-data training)."""
    session.install(*PACKAGES, *TEST_DEPS, env=INSTALL_ENV)
    session.run("pytest", *session.posargs, env=QUIET_TF)


@nox.session(python=PYTHON, default=False)
def slow(session: nox.Session) -> None:
    """Real-data tests on ../shared/utkface (a few hundred images; minutes)."""
    session.install(*PACKAGES, *TEST_DEPS, env=INSTALL_ENV)
    session.run("pytest", "-m", "slow", *session.posargs, env={**QUIET_TF, "UTKFACE_DIR": _shared_data()})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """Ruff lint (rules and import order from the root pyproject.toml)."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks on the real UTKFace folder; figures go to bench/RESULTS.md by hand."""
    session.install(*PACKAGES, env=INSTALL_ENV)
    scripts = session.posargs or sorted(str(p) for p in (ROOT / "bench").glob("bench_*.py"))
    # these measure a trained model: $AGEGENDER_MODEL, else runs/model_a
    model = Path(os.environ.get("AGEGENDER_MODEL", ROOT / "runs" / "model_a" / "model.keras"))
    for script in scripts:
        model_args = []
        if Path(script).name in ("bench_detect.py", "bench_inference_options.py"):
            if not model.is_file():
                session.warn(f"skipped {script}: no trained model at {model} (set AGEGENDER_MODEL)")
                continue
            model_args = ["--model", str(model)]
        session.run("python", script, "--data-dir", _shared_data(), *model_args, env=QUIET_TF)


@nox.session(python=PYTHON, default=False)
def examples(session: nox.Session) -> None:
    """Run the Model A example on a small slice of the real data (a smoke run of the README job)."""
    session.install(*PACKAGES, env=INSTALL_ENV)
    session.run(
        "python", "examples/reproduce_model_a.py", "--data-dir", _shared_data(),
        "--n", "300", "--epochs", "2", "--out", str(ROOT / "runs" / "nox-example"),
        *session.posargs, env=QUIET_TF,
    )
