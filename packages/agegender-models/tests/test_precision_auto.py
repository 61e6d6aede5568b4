"""precision "auto": measured, cached per machine and workload, clearable; exports of any model."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from agegender_models import create_model, flip_tta, float32_copy, get_precision, model_precision
from agegender_models import precision as precision_module
from agegender_models.precision import (
    choose_precision,
    clear_precision_cache,
    measure_step_times,
    precision_verdicts,
    set_precision,
)


@pytest.fixture()
def bf16_machine(monkeypatch, tmp_path):
    """A machine offering mixed bfloat16, an empty cache, and stubbed step timings:
    ``timings.update(float32=..., mixed_bfloat16=...)`` sets them; ``calls`` lists the workloads
    measured."""
    monkeypatch.setenv("AGEGENDER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(precision_module, "mixed_candidate", lambda: "mixed_bfloat16")
    timings = {"float32": 0.200, "mixed_bfloat16": 0.100}
    calls: list[dict] = []

    def stub(policies, **workload):
        calls.append(workload)
        return {p: timings[p] for p in policies}

    monkeypatch.setattr(precision_module, "measure_step_times", stub)
    return timings, calls


@pytest.mark.parametrize(("f32", "bf16", "expected"), [
    (0.200, 0.100, "mixed_bfloat16"),  # an AMX CPU: bf16 twice as fast
    (0.100, 0.160, "float32"),  # AVX512_BF16 without AMX: bf16 slower
    (0.100, 0.099, "float32"),  # within the noise: not worth mixed precision
])
def test_auto_keeps_the_faster_policy(bf16_machine, f32, bf16, expected) -> None:
    timings, calls = bf16_machine
    timings.update(float32=f32, mixed_bfloat16=bf16)
    choice = choose_precision("auto", backbone="custom_cnn", image_size=64, batch_size=16)
    assert choice.policy == expected
    assert choice.source == "measured"
    assert calls == [{"backbone": "custom_cnn", "image_size": 64, "batch_size": 16, "mode": "train",
                      "steps": 3}]
    # the log line names the pick and both timings
    line = choice.describe()
    assert line.startswith(f"{expected} (asked: auto;")
    assert f"float32 {1000 * f32:.0f} ms" in line and f"mixed_bfloat16 {1000 * bf16:.0f} ms" in line
    assert "custom_cnn at 64 px, batch 16" in line


def test_verdict_is_cached_per_workload_and_cleared(bf16_machine, tmp_path) -> None:
    timings, calls = bf16_machine
    first = choose_precision("auto", backbone="custom_cnn", image_size=64)
    timings.update(float32=0.1, mixed_bfloat16=0.5)  # would flip the verdict if measured again
    again = choose_precision("auto", backbone="custom_cnn", image_size=64)
    assert len(calls) == 1 and again.source == "cached" and again.policy == first.policy
    assert again.timings == first.timings and "measured 20" in again.describe()
    # another size, backbone or mode is another workload
    assert choose_precision("auto", backbone="custom_cnn", image_size=96).policy == "float32"
    choose_precision("auto", backbone="custom_cnn", image_size=64, mode="inference")
    choose_precision("auto", backbone="mobilenet_v2", image_size=64)
    assert len(calls) == 4
    verdicts = precision_verdicts()
    assert len(verdicts) == 4
    key = next(k for k in verdicts if "custom_cnn 64px" in k and "| train |" in k)
    assert precision_module.machine_id() in key and "tensorflow" in key
    assert verdicts[key]["policy"] == "mixed_bfloat16"
    # cleared: measured again, now with the other timings
    assert clear_precision_cache() == 4
    assert not (tmp_path / "cache" / "precision.json").exists()
    assert choose_precision("auto", backbone="custom_cnn", image_size=64).policy == "float32"
    assert len(calls) == 5
    # cache=False measures even with a verdict stored
    choose_precision("auto", backbone="custom_cnn", image_size=64, cache=False)
    assert len(calls) == 6


def test_another_machine_or_tensorflow_measures_again(bf16_machine, monkeypatch) -> None:
    _, calls = bf16_machine
    choose_precision("auto", image_size=64)
    monkeypatch.setattr(precision_module, "machine_id", lambda: "another CPU flags:0123")
    choose_precision("auto", image_size=64)
    import tensorflow as tf

    monkeypatch.setattr(tf, "__version__", "9.99.0")
    choose_precision("auto", image_size=64)
    assert len(calls) == 3


def test_unreadable_cache_is_measured_again_and_rewritten(bf16_machine, tmp_path) -> None:
    _, calls = bf16_machine
    path = tmp_path / "cache" / "precision.json"
    path.parent.mkdir(parents=True)
    path.write_text("{ not json")
    assert choose_precision("auto", image_size=64).policy == "mixed_bfloat16"
    assert len(calls) == 1 and len(json.loads(path.read_text())["verdicts"]) == 1


def test_explicit_precision_is_not_measured(bf16_machine) -> None:
    _, calls = bf16_machine
    assert choose_precision("float32").describe() == "float32 (asked)"
    assert choose_precision("mixed_bfloat16").policy == "mixed_bfloat16"
    with pytest.raises(ValueError, match="must be one of"):
        choose_precision("bf16")
    assert calls == []


def test_set_precision_and_create_model_use_the_measured_verdict(bf16_machine) -> None:
    _, calls = bf16_machine
    before = get_precision()
    try:
        assert set_precision("auto", backbone="custom_cnn", image_size=32) == "mixed_bfloat16"
        assert get_precision() == "mixed_bfloat16"
    finally:
        keras.mixed_precision.set_global_policy(before)
    model = create_model("custom_cnn", input_shape=(48, 48, 3), precision="auto")
    assert model_precision(model) == "mixed_bfloat16" and get_precision() == before
    # create_model measured its own input size
    assert [c["image_size"] for c in calls] == [32, 48]


def test_measurement_times_both_policies() -> None:
    """The real measurement (no stub) on a tiny model: a time per step for each policy (a
    training step traces for about 5 s: one policy only there)."""
    times = measure_step_times(("float32", "mixed_bfloat16"), backbone="custom_cnn", image_size=32,
                               batch_size=4, mode="inference", steps=2, warmup=1)
    assert set(times) == {"float32", "mixed_bfloat16"} and all(t > 0 for t in times.values())
    train = measure_step_times(("float32",), backbone="custom_cnn", image_size=32, batch_size=4,
                               steps=1, warmup=1)
    assert train["float32"] > 0


def test_float32_copy_has_the_same_weights_and_predictions() -> None:
    keras.utils.set_random_seed(3)
    mixed = create_model("custom_cnn", input_shape=(32, 32, 3), precision="mixed_bfloat16")
    for model in (mixed, flip_tta(mixed)):
        copy = float32_copy(model)
        assert copy is not model and model_precision(copy) == "float32"
        assert {layer.dtype_policy.name for layer in copy._flatten_layers()} == {"float32"}
        assert all(np.array_equal(a, b) for a, b in
                   zip(model.get_weights(), copy.get_weights(), strict=True))
        x = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("uint8")
        ages = np.ravel(model(x)["age"]), np.ravel(copy(x)["age"])
        np.testing.assert_allclose(ages[0], ages[1], atol=0.5)  # bf16 rounding, not another model
    plain = create_model("custom_cnn", input_shape=(32, 32, 3))
    assert float32_copy(plain) is plain
