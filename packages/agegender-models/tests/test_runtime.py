"""Runtimes: Keras, TFLite, ONNX Runtime; "auto" picks the fastest that passed parity, once."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from agegender_models import Predictor, create_model
from agegender_models import export as export_module
from agegender_models import runtime as runtime_module
from agegender_models.export import ExportFormatError, ExportParityError, generated_faces
from agegender_models.runtime import (
    RUNTIMES,
    Runner,
    clear_runtime_cache,
    get_runner,
    runtime_verdicts,
)

SIZE = (32, 32)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(4)
    return create_model("custom_cnn", input_shape=(*SIZE, 3))


@pytest.fixture(scope="module")
def artefacts(model):
    """The model's float32 TFLite and ONNX files, converted once for the module."""
    found = {"tflite": export_module.convert_model(model, "tflite")}
    if runtime_module.onnx_available():
        found["onnx"] = export_module.convert_model(model, "onnx")
    return found


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AGEGENDER_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture()
def stubbed(artefacts, cache, monkeypatch):
    """``auto`` with the converter replaced by the module's artefacts (an int8 candidate gets
    the float32 file) and the timings by ``speeds`` (images/s per candidate name); ``calls``
    counts the measurements."""
    speeds: dict[str, float] = {}
    calls = {"timed": 0, "converted": []}

    def convert(model, format, *, quantize="none", calibration=None):
        calls["converted"].append((format, quantize))
        return artefacts[format]

    def time_runners(runners, images, rounds=3):
        calls["timed"] += 1
        return ({name: speeds.get(name, 1.0) for name in runners},
                {name: 1.0 for name in runners})

    monkeypatch.setattr(export_module, "convert_model", convert)
    monkeypatch.setattr(runtime_module, "_time_runners", time_runners)
    monkeypatch.setattr(runtime_module, "onnx_available", lambda: "onnx" in artefacts)
    return speeds, calls


def _images(n: int = 6) -> np.ndarray:
    return generated_faces(n, SIZE, seed=3)


def test_keras_runtime_is_the_model_itself(model) -> None:
    images = _images()
    predictor = Predictor(model, runtime="keras")
    assert predictor.runner.name == "keras" and predictor.runner.describe() == "keras (asked)"
    rows = predictor.predict(images)
    want = model(images, training=False)
    assert [r["age"] for r in rows] == [float(a) for a in np.ravel(want["age"])]


@pytest.mark.parametrize("runtime", ["tflite", "onnx"])
def test_forced_runtime_matches_keras_and_is_converted_once(model, runtime, cache, monkeypatch) -> None:
    if runtime == "onnx":
        pytest.importorskip("tf2onnx")
    images = _images()
    runner = get_runner(model, runtime)
    assert runner.name == runtime
    got = runner(images)
    want = model(images, training=False)
    np.testing.assert_allclose(got[0], np.ravel(want["gender"]), atol=1e-4)
    np.testing.assert_allclose(got[1], np.ravel(want["age"]), atol=1e-2)
    # the next one loads the converted file from the cache
    monkeypatch.setattr(export_module, "convert_model", lambda *a, **k: pytest.fail("converted"))
    again = Predictor(model, runtime=runtime)
    assert again.runner.name == runtime
    np.testing.assert_allclose(again.runner(images)[1], got[1])


def test_auto_picks_the_fastest_runtime_that_passed_parity(model, stubbed, monkeypatch) -> None:
    speeds, calls = stubbed
    speeds.update({"keras": 100, "tflite": 150, "onnx": 120, "tflite int8": 260, "onnx int8": 300})
    real_check = export_module.check_parity

    def check(model, runner, check=None, *, what="the export", reference=None):
        if what == "onnx int8":  # the fastest, but it misses the Keras model's predictions
            raise ExportParityError("onnx int8 fails the parity check on 256 generated images: ...")
        return real_check(model, runner, check, what=what, reference=reference)

    monkeypatch.setattr(export_module, "check_parity", check)
    calibration = _images(16)
    runner = get_runner(model, "auto", calibration=calibration)
    assert runner.name == "tflite int8" and (runner.runtime, runner.quantize) == ("tflite", "int8")
    verdict = runner.verdict
    assert verdict["runtime"] == "tflite int8"
    if runtime_module.onnx_available():
        assert "onnx int8" in verdict["skipped"] and "onnx int8" not in verdict["throughput_ips"]
        assert "not used: onnx int8: onnx int8 fails the parity check" in runner.describe()
    assert runner.describe().startswith("tflite int8 (auto: images/s at batch 32: keras 100, tflite 150")
    np.testing.assert_allclose(runner(_images())[1], np.ravel(model(_images())["age"]), atol=1e-2)


def test_auto_keeps_keras_unless_clearly_faster(model, stubbed) -> None:
    speeds, _ = stubbed
    speeds.update({"keras": 100, "tflite": 103, "onnx": 101})  # within the noise
    assert get_runner(model, "auto").name == "keras"
    speeds.update({"keras": 100, "tflite": 90, "onnx": 80})
    assert get_runner(model, "auto", cache=False).name == "keras"


def test_int8_candidates_need_calibration_faces(model, stubbed) -> None:
    _, calls = stubbed
    get_runner(model, "auto")
    assert all(quantize == "none" for _, quantize in calls["converted"])
    calls["converted"].clear()
    get_runner(model, "auto", calibration=_images(8))
    assert ("tflite", "int8") in calls["converted"]


def test_auto_verdict_is_cached_and_cleared(model, stubbed, cache) -> None:
    speeds, calls = stubbed
    speeds.update({"keras": 100, "tflite": 200, "onnx": 150})
    first = get_runner(model, "auto")
    assert first.name == "tflite" and first.verdict["fresh"] and calls["timed"] == 1
    assert "measured now" in first.describe()
    speeds.update({"tflite": 10})  # would lose if measured again
    again = get_runner(model, "auto")
    assert again.name == "tflite" and calls["timed"] == 1 and "measured 20" in again.describe()
    np.testing.assert_allclose(again(_images())[1], first(_images())[1])
    # only the winner's file is kept, with the verdict
    [verdict] = runtime_verdicts()
    assert verdict["runtime"] == "tflite"
    assert sorted(p.name for p in (cache / "runtimes" / verdict["key"]).iterdir()) == [
        "model.tflite", "verdict.json"]
    # another model (other weights) is measured on its own
    keras.utils.set_random_seed(5)
    other = create_model("custom_cnn", input_shape=(*SIZE, 3))
    get_runner(other, "auto")
    assert calls["timed"] == 2 and len(runtime_verdicts()) == 2
    assert clear_runtime_cache() == 2 and runtime_verdicts() == []
    speeds.update({"onnx": 10})
    assert get_runner(model, "auto").name == "keras" and calls["timed"] == 3


def test_faces_given_as_functions_are_read_only_to_measure(model, stubbed) -> None:
    read = []

    def calibration():
        read.append("calibration")
        return _images(8)

    get_runner(model, "auto", calibration=calibration)
    get_runner(model, "auto", calibration=calibration)
    assert read == ["calibration"]


def test_runtime_default_from_the_environment_and_errors(model, artefacts, cache, monkeypatch) -> None:
    monkeypatch.setenv("AGEGENDER_RUNTIME", "tflite")
    assert Predictor(model).runner.name == "tflite"
    monkeypatch.setenv("AGEGENDER_RUNTIME", "cuda")
    with pytest.raises(ValueError, match=r"`runtime` must be one of \('auto', 'keras', 'tflite', "
                       r"'onnx'\). Received: runtime='cuda'"):
        Predictor(model)
    assert RUNTIMES == ("auto", "keras", "tflite", "onnx")
    monkeypatch.setattr(runtime_module, "onnx_available", lambda: False)
    with pytest.raises(ExportFormatError, match=r"runtime 'onnx' needs tf2onnx and onnxruntime; "
                       r"install the extra: pip install 'agegender-models\[onnx\]'"):
        get_runner(model, "onnx")
    # a Runner is used as given
    runner = Runner("keras", lambda x: (np.zeros(len(x)), np.full(len(x), 42.0)))
    assert Predictor(model, runtime=runner).predict(_images(2))[0]["age"] == 42.0


def test_auto_measures_for_real(model, cache) -> None:
    """No stubs: the candidates are converted, checked and timed, one is kept."""
    runner = get_runner(model, "auto")
    verdict = runner.verdict
    expected = {"keras", "tflite"} | ({"onnx"} if runtime_module.onnx_available() else set())
    assert set(verdict["throughput_ips"]) == expected and verdict["skipped"] == {}
    assert runner.name in expected and all(v > 0 for v in verdict["latency_ms"].values())
    got = runner(_images())
    np.testing.assert_allclose(got[1], np.ravel(model(_images())["age"]), atol=1e-2)


# ------------------------------------------------------------------------------------------------
# a model file run on "auto" before starts from the cache, without Keras or TensorFlow


@pytest.fixture()
def saved(model, stubbed, cache, tmp_path, monkeypatch):
    """The module's model saved as ``model.keras``; "auto" as for a user (TFLite the faster):
    (path, speeds, calls)."""
    from agegender_models import save_model

    monkeypatch.delenv("AGEGENDER_RUNTIME", raising=False)
    speeds, calls = stubbed
    speeds.update({"keras": 100, "tflite": 200, "onnx": 150})
    path = tmp_path / "model.keras"
    save_model(model, path)
    return path, speeds, calls

NO_TENSORFLOW = """
import json, sys
sys.modules["tensorflow"] = sys.modules["keras"] = None  # importing either now fails
import numpy as np
from agegender_models import Predictor
predictor = Predictor(sys.argv[1])
images = np.load(sys.argv[2])
print(json.dumps({"runner": predictor.runner.name, "size": predictor.input_size,
                  "ages": [r["age"] for r in predictor.predict(images)]}))
"""


def test_a_model_file_run_on_auto_before_starts_without_tensorflow(model, saved, tmp_path) -> None:
    import json
    import subprocess
    import sys

    from agegender_models import save_model
    from agegender_models.runtime import cached_runner

    path, _, calls = saved
    assert cached_runner(path) is None  # never run from this file
    first = Predictor(path)
    assert first.runner.name == "tflite" and calls["timed"] == 1
    # asked only whether there is one: answered from the JSON files, no runtime started
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime_module, "artefact_runner", lambda *a, **k: pytest.fail("started"))
        assert runtime_module.has_cached_runner(path)
    expected = [r["age"] for r in first.predict(_images(3))]
    # a new process where importing TensorFlow or Keras fails gets the same answers
    np.save(tmp_path / "images.npy", _images(3))
    result = subprocess.run([sys.executable, "-c", NO_TENSORFLOW, str(path), str(tmp_path / "images.npy")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.splitlines()[-1])
    assert got["runner"] == "tflite" and got["size"] == list(SIZE)
    np.testing.assert_allclose(got["ages"], expected, rtol=1e-6)
    # here: the cached start; the Keras model loads only when asked for
    again = Predictor(path)
    assert calls["timed"] == 1 and again._model is None
    assert again.model.count_params() == model.count_params()
    # other bytes (another model, or the file changed) are not that verdict
    keras.utils.set_random_seed(6)
    save_model(create_model("custom_cnn", input_shape=(*SIZE, 3)), path)
    assert cached_runner(path) is None


def test_a_cached_keras_verdict_loads_the_model(saved) -> None:
    from agegender_models.runtime import cached_runner

    path, speeds, _ = saved
    speeds.update({"keras": 100, "tflite": 10, "onnx": 10})
    assert Predictor(path).runner.name == "keras"
    assert cached_runner(path) is None  # Keras won: the model must be loaded to run it
    assert not runtime_module.has_cached_runner(path)
    predictor = Predictor(path)
    assert predictor.runner.name == "keras" and predictor._model is not None

    # other settings are other verdicts: threads, int8 calibration, a check on real faces
    speeds.update({"keras": 10, "tflite": 200})
    clear_runtime_cache()
    Predictor(path)
    assert cached_runner(path) is not None
    assert cached_runner(path, threads=99) is None and cached_runner(path, int8=True) is None
    assert cached_runner(path, check="given") is None


@pytest.mark.parametrize("runtime", ["tflite", "onnx"])
def test_a_forced_runtime_starts_from_its_conversion_without_the_model(model, saved, runtime,
                                                                        monkeypatch) -> None:
    """--runtime tflite took 9 s a photo where "auto" (which chose TFLite) took 0.4: Keras was
    loaded and the model fingerprinted on every start, and converted a second time."""
    from agegender_models.runtime import cached_runner

    if runtime not in runtime_module.SUFFIX or (runtime == "onnx" and not runtime_module.onnx_available()):
        pytest.skip(f"{runtime} is not installed")
    path, _, calls = saved
    assert cached_runner(path, runtime=runtime) is None and cached_runner(path, runtime="keras") is None
    first = Predictor(path, runtime=runtime)
    assert first.runner.name == runtime and first._model is not None
    assert calls["converted"] == [(runtime, "none")]
    expected = first.predict(_images(3))
    assert runtime_module.has_cached_runner(path, runtime=runtime)
    assert not runtime_module.has_cached_runner(path)  # "auto" never ran: nothing to start from
    assert not runtime_module.has_cached_runner(path, runtime="keras")  # Keras needs the model
    again = Predictor(path, runtime=runtime)
    assert again._model is None and again.runner.name == runtime
    assert [r["age"] for r in again.predict(_images(3))] == [r["age"] for r in expected]
    assert calls["converted"] == [(runtime, "none")]  # converted once
    monkeypatch.setenv("AGEGENDER_RUNTIME", runtime)  # the variable forces it too
    assert Predictor(path)._model is None


def test_a_forced_runtime_runs_autos_conversion_when_auto_chose_it(model, saved, cache) -> None:
    from agegender_models.runtime import cached_runner

    path, _, calls = saved
    assert Predictor(path).runner.name == "tflite"  # "auto" converted every candidate once
    converted = list(calls["converted"])
    forced = Predictor(path, runtime="tflite")
    assert forced._model is None and forced.runner.name == "tflite"
    assert calls["converted"] == converted  # nothing converted again
    assert not (cache / "runtimes" / "forced").exists()  # and no second copy written
    assert get_runner(model, "tflite").name == "tflite" and calls["converted"] == converted
    # another runtime than "auto"'s choice is converted when forced
    if runtime_module.onnx_available():
        assert cached_runner(path, runtime="onnx") is None


def test_resize_is_tensorflows_bilinear_resize_pixel_for_pixel() -> None:
    import tensorflow as tf

    from agegender_models.imageio import resize_bilinear

    rng = np.random.default_rng(0)
    for (h, w), size in [((200, 200), (192, 192)), ((200, 200), (224, 224)), ((37, 91), (128, 128)),
                         ((500, 300), (160, 128)), ((1, 1), (5, 5)), ((3, 7), (2, 2))]:
        image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        expected = tf.image.resize(image, size, method="bilinear", antialias=False).numpy()
        expected = np.clip(np.rint(expected), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(resize_bilinear(image, size), expected)


def test_a_read_only_cache_is_read_never_fatal(model, saved, monkeypatch) -> None:
    from agegender_models.runtime import cached_runner

    path, _, calls = saved
    get_runner(model, "auto")  # the verdict cached, as a baked image would hold it

    def read_only(path, data):
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr(runtime_module, "write_json", read_only)
    predictor = Predictor(path)  # its file's record cannot be written: read, not fatal
    assert predictor.runner.name == "tflite" and calls["timed"] == 1
    assert cached_runner(path) is None


def test_a_file_replaced_while_its_model_loads_is_not_filed(model, saved) -> None:
    from agegender_models import save_model
    from agegender_models.runtime import cached_runner, file_digest

    path, _, _ = saved
    before = file_digest(path)
    keras.utils.set_random_seed(8)
    save_model(create_model("custom_cnn", input_shape=(*SIZE, 3)), path)  # a checkpoint lands
    get_runner(model, "auto", source=path, source_digest=before)
    assert cached_runner(path) is None  # the new bytes are not the loaded model's
    get_runner(model, "auto", source=path)  # no digest given: filed as it is now
    assert cached_runner(path) is not None


def test_the_lazily_loaded_model_is_the_runners_or_an_error(model, saved) -> None:
    import time

    from agegender_models import ModelFileError, save_model

    path, _, _ = saved
    Predictor(path)
    predictor = Predictor(path)
    assert predictor._model is None
    time.sleep(0.01)  # another modification time
    keras.utils.set_random_seed(9)
    save_model(create_model("custom_cnn", input_shape=(*SIZE, 3)), path)
    with pytest.raises(ModelFileError, match="has changed since this Predictor was made from it"):
        predictor.model  # noqa: B018
    predictor.model = model  # set by hand, as before
    assert predictor.model is model


def test_the_public_submodules_are_attributes_of_the_package() -> None:
    import subprocess
    import sys

    probe = ("import sys, agegender_models as m; "
             "print(m.layers.quantized_copy.__name__, m.imageio.resize_bilinear.__name__, "
             "m.predict.__name__, m.detect.get_detector.__name__)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["quantized_copy", "resize_bilinear", "predict", "get_detector"]


def test_the_lazy_names_are_the_ones_type_checkers_see() -> None:
    """``__init__`` lists its public names twice: ``_EXPORTS`` (loaded on first use) and the
    ``TYPE_CHECKING`` imports (what IDEs read). The two lists must not drift apart."""
    import ast
    import inspect

    import agegender_models

    tree = ast.parse(inspect.getsource(agegender_models))
    (block,) = [node for node in tree.body if isinstance(node, ast.If)
                and getattr(node.test, "id", None) == "TYPE_CHECKING"]
    seen = {f".{node.module}": tuple(alias.name for alias in node.names) for node in block.body}
    assert seen == agegender_models._EXPORTS
    for name in agegender_models._MODULE_OF:  # and every name resolves
        assert getattr(agegender_models, name) is not None
