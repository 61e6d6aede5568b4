"""`evaluate`: breakdowns reconcile, contract keys, JSON/Markdown, edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agegender_eval import AGE_GROUPS, EvalResult, evaluate

CONTRACT_KEYS = {"n", "gender_accuracy", "age_mae", "age_rmse", "age_cs", "age_mae_by_bin", "by_group"}


def make_data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    age = rng.integers(0, 100, n)
    gender = rng.integers(0, 2, n)
    y_true = {"age": age, "gender": gender}
    y_pred = {"age": age + rng.normal(0, 5, n), "p_female": rng.random(n)}
    groups = {"race": rng.integers(0, 5, n)}
    return y_true, y_pred, groups


@st.composite
def datasets(draw):
    n = draw(st.integers(1, 40))
    age = draw(st.lists(st.integers(0, 100), min_size=n, max_size=n))
    gender = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    pred = draw(st.lists(st.floats(-5, 110), min_size=n, max_size=n))
    pf = draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
    race = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    return {"age": age, "gender": gender}, {"age": pred, "p_female": pf}, {"race": race}


@settings(max_examples=25, deadline=None)
@given(datasets())
def test_group_breakdowns_reconcile_with_overall(data):
    y_true, y_pred, groups = data
    r = evaluate(y_true, y_pred, groups=groups)
    n = len(y_true["age"])
    assert r.n == n
    assert list(r.by_group) == ["age_group", "age_bin", "gender", "race"]
    for col, table in r.by_group.items():
        assert table["n"].sum() == n, col
        assert (table["n"] > 0).all()
        # n-weighted group means give back the overall mean metrics
        for metric in ("age_mae", "age_bias", "gender_accuracy", "age_cs_5"):
            assert (table[metric] * table["n"]).sum() / n == pytest.approx(r.overall[metric]), (col, metric)
    err = np.abs(np.array(y_pred["age"]) - np.array(y_true["age"]))
    assert r.overall["age_mae"] == pytest.approx(err.mean())
    d = json.loads(r.to_json())
    assert sum(d["age_n_by_bin"].values()) == n
    assert sum(v["n"] for v in d["by_group"]["age_group"].values()) == n


@settings(max_examples=20, deadline=None)
@given(datasets())
def test_perfect_predictions_give_zero_error_and_full_accuracy(data):
    y_true, _, _ = data
    r = evaluate(y_true, {"age": y_true["age"], "p_female": y_true["gender"]})
    assert r.overall["age_mae"] == 0.0
    assert r.overall["age_rmse"] == 0.0
    assert r.overall["gender_accuracy"] == 1.0
    assert all(r.overall[f"age_cs_{k}"] == 1.0 for k in (1, 3, 5, 10))


def test_age_groups_default_to_project_groups():
    y_true = {"age": [0, 9, 10, 17, 18, 60], "gender": [0, 1, 0, 1, 0, 1]}
    r = evaluate(y_true, {"age": [1, 9, 10, 17, 18, 60], "p_female": [0, 1, 0, 1, 0, 1]})
    t = r.by_group["age_group"]
    assert list(t.index) == list(AGE_GROUPS) == ["under 10", "10–17", "18+"]
    assert list(t["n"]) == [2, 2, 2]
    assert t.loc["under 10", "age_mae"] == 0.5
    assert list(r.age_group_table.index) == ["overall", "under 10", "10–17", "18+"]


def test_configurable_bins_groups_and_cs():
    y_true = {"age": [5, 15, 25, 35], "gender": [0, 1, 0, 1]}
    y_pred = {"age": [7, 15, 20, 35], "gender": [0.2, 0.8, 0.4, 0.6]}  # `gender` accepted as probability
    r = evaluate(y_true, y_pred, age_bins=(0, 20), age_groups={"child": 0, "adult": 18}, cs_ks=(2, 0))
    assert list(r.by_group["age_bin"].index) == ["0–19", "20+"]
    assert list(r.by_group["age_group"].index) == ["child", "adult"]
    d = r.to_dict()
    assert d["age_cs"] == {"0": 0.5, "2": 0.75}
    assert d["age_mae_by_bin"] == {"0–19": 1.0, "20+": 2.5}
    assert d["eval_config"]["age_groups"] == {"child": 0.0, "adult": 18.0}


def test_race_codes_are_named_and_extra_groups_kept():
    y_true = {"age": [20, 30, 40, 50], "gender": [0, 1, 0, 1]}
    y_pred = {"age": [20, 30, 40, 50], "p_female": [0, 1, 0, 1]}
    groups = pd.DataFrame({"race": [0, 1, 4, np.nan], "camera": ["a", "b", "a", None]})
    r = evaluate(y_true, y_pred, groups=groups)
    assert list(r.by_group["race"].index) == ["White", "Black", "Others", "unknown"]
    assert dict(r.by_group["camera"]["n"]) == {"a": 2, "b": 1, "unknown": 1}
    mixed = evaluate(y_true, y_pred, groups={"race": [2, None, 2, 3]})
    assert dict(mixed.by_group["race"]["n"]) == {"Asian": 2, "Indian": 1, "unknown": 1}
    with pytest.raises(ValueError, match="race"):
        evaluate(y_true, y_pred, groups={"race": [0, 1, 7, 2]})


def test_contract_keys_and_strict_json(tmp_path):
    y_true, y_pred, groups = make_data()
    r = evaluate(y_true, y_pred, groups=groups)
    path = tmp_path / "m.json"
    r.to_json(path, extra={"model": "small"})
    d = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert set(d) >= CONTRACT_KEYS
    assert d["model"] == "small"
    assert d["n"] == 200 and isinstance(d["n"], int)
    assert "5" in d["age_cs"]
    assert set(d["by_group"]) == {"age_group", "age_bin", "gender", "race"}
    white = d["by_group"]["race"]["White"]
    assert {"n", "gender_accuracy", "age_mae", "age_cs"} <= set(white)
    assert d["gender_confusion_matrix"]["labels"] == ["male", "female"]
    assert np.sum(d["gender_confusion_matrix"]["matrix"]) == 200
    with pytest.raises(ValueError, match="overwrite"):
        r.to_json(extra={"age_mae": 1})


def test_one_sample_group_is_reported_with_undefined_ratios_as_null():
    y_true = {"age": [30, 31, 32], "gender": [0, 0, 1]}
    y_pred = {"age": [30, 33, 32], "p_female": [0.1, 0.2, 0.9]}
    r = evaluate(y_true, y_pred)
    female = r.by_group["gender"].loc["female"]
    assert female["n"] == 1
    assert female["gender_accuracy"] == 1.0
    assert math.isnan(female["gender_recall_male"])  # no true male in this group
    d = json.loads(r.to_json())
    assert d["by_group"]["gender"]["female"]["gender_recall_male"] is None
    assert d["by_group"]["gender"]["female"]["age_rmse"] == 0.0


def test_nan_predictions_raise_or_are_omitted():
    y_true = {"age": [10, 20, 30], "gender": [0, 1, 0]}
    y_pred = {"age": [10, np.nan, 31], "p_female": [0.1, 0.9, 0.2]}
    with pytest.raises(ValueError, match="nan_policy='omit'"):
        evaluate(y_true, y_pred)
    r = evaluate(y_true, y_pred, groups={"race": [0, 1, 2]}, nan_policy="omit")
    assert r.n == 2 and r.n_omitted == 1
    assert r.overall["age_mae"] == 0.5
    assert list(r.by_group["race"].index) == ["White", "Asian"]
    assert r.to_dict()["n_omitted"] == 1
    with pytest.raises(ValueError, match="Every prediction"):
        evaluate({"age": [1], "gender": [0]}, {"age": [np.nan], "p_female": [0.5]}, nan_policy="omit")


def test_keras_predict_shapes_and_dataframes_are_accepted():
    y_true = pd.DataFrame({"age": [10, 20], "gender": [0, 1], "race": [0, 1]})
    y_pred = {"age": np.array([[11.0], [19.0]]), "gender": np.array([[0.1], [0.9]])}
    r = evaluate(y_true, y_pred, groups=y_true[["race"]])
    assert r.overall["age_mae"] == 1.0 and r.overall["gender_accuracy"] == 1.0


@pytest.mark.parametrize(
    ("y_true", "y_pred", "kwargs", "match"),
    [
        ({"age": [], "gender": []}, {"age": [], "p_female": []}, {}, "at least one sample"),
        ({"age": [1, 2], "gender": [0, 1]}, {"age": [1], "p_female": [0.5]}, {}, "same length"),
        ({"age": [1, 2], "gender": [0, 2]}, {"age": [1, 2], "p_female": [0.5, 0.5]}, {}, "0 \\(male\\) or 1"),
        ({"age": [1, 2], "gender": [0, 1]}, {"age": [1, 2], "p_female": [0.5, 1.2]}, {}, "probabilities"),
        ({"age": [np.nan, 2], "gender": [0, 1]}, {"age": [1, 2], "p_female": [0.5, 0.5]}, {}, "NaN"),
        ({"age": [-1, 2], "gender": [0, 1]}, {"age": [1, 2], "p_female": [0.5, 0.5]}, {}, ">= 0"),
        ({"age": [1], "gender": [0]}, {"age": [1]}, {}, "p_female' or 'gender'"),
        ([1, 2], {"age": [1], "p_female": [0.5]}, {}, "mapping or DataFrame"),
        ({"age": [1], "gender": [0]}, {"age": [1], "p_female": [0.5]}, {"threshold": 2}, "threshold"),
        ({"age": [1], "gender": [0]}, {"age": [1], "p_female": [0.5]}, {"nan_policy": "drop"}, "nan_policy"),
        ({"age": [1], "gender": [0]}, {"age": [1], "p_female": [0.5]}, {"groups": {"race": [0, 1]}}, "one row per sample"),
        ({"age": [1], "gender": [0]}, {"age": [1], "p_female": [0.5]}, {"groups": {"gender": [0]}}, "built-in"),
        ({"age": [1], "gender": [0]}, {"age": [1], "p_female": [0.5]}, {"age_groups": (10, 18)}, "first edge"),
    ],
)
def test_invalid_input_raises_clear_error(y_true, y_pred, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        evaluate(y_true, y_pred, **kwargs)
    assert "Received" in str(info.value)


def test_markdown_shows_overall_and_age_groups_first():
    y_true, y_pred, groups = make_data()
    r = evaluate(y_true, y_pred, groups=groups)
    md = r.to_markdown(title="Run 1", images={"mae_by_bin": "mae_by_bin.png", "custom": "custom.png"})
    assert md.startswith("# Run 1")
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Overall and by age group"
    assert headings.index("## Age by bin") < headings.index("## Fairness")
    first_table = md.split("## Overall and by age group")[1].split("##")[0]
    rows = [line.split("|")[1].strip() for line in first_table.splitlines() if line.startswith("| ") and "age group" not in line]
    assert [r_.rstrip(" †") for r_ in rows] == ["**overall**", "under 10", "10–17", "18+"]
    assert "### By race" in md and "| White" in md
    assert "![mae by bin](mae_by_bin.png)" in md.split("## Age by bin")[1].split("## Fairness")[0]
    assert "## Other figures" in md and "(custom.png)" in md


def test_fairness_table_is_long_and_starts_with_overall():
    y_true, y_pred, groups = make_data(60)
    r = evaluate(y_true, y_pred, groups=groups)
    ft = r.fairness_table()
    assert ft.iloc[0][["group", "value"]].tolist() == ["overall", "all"]
    assert ft.groupby("group")["n"].sum().drop("overall").eq(60).all()
    assert isinstance(r, EvalResult) and "age_mae" in repr(r)
