"""`evaluate`: breakdowns reconcile, contract keys, JSON/Markdown, edge cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agegender_eval import EvalResult, evaluate

CONTRACT_KEYS = {"n", "gender_accuracy", "age_mae", "age_rmse", "age_cs", "age_mae_by_bin", "by_group"}

# A caller's vocabulary (the application passes utkface_data's); made-up names, so that a test
# fails if the package labelled anything with names of its own.
AGE_GROUPS = {"child": 0, "teen": 10, "adult": 18}
GENDER_NAMES = {0: "man", 1: "woman"}
RACE_NAMES = {0: "alpha", 1: "beta", 2: "gamma", 3: "delta", 4: "epsilon"}
VOCABULARY = {"age_groups": AGE_GROUPS, "gender_names": GENDER_NAMES, "group_names": {"race": RACE_NAMES}}


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
    r = evaluate(y_true, y_pred, groups=groups, **VOCABULARY)
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


def test_age_groups_are_the_callers_and_head_the_table():
    y_true = {"age": [0, 9, 10, 17, 18, 60], "gender": [0, 1, 0, 1, 0, 1]}
    y_pred = {"age": [1, 9, 10, 17, 18, 60], "p_female": [0, 1, 0, 1, 0, 1]}
    r = evaluate(y_true, y_pred, age_groups=AGE_GROUPS)
    t = r.by_group["age_group"]
    assert list(t.index) == ["child", "teen", "adult"]
    assert list(t["n"]) == [2, 2, 2]
    assert t.loc["child", "age_mae"] == 0.5
    assert list(r.age_group_table.index) == ["overall", "child", "teen", "adult"]
    assert r.to_dict()["eval_config"]["age_groups"] == {"child": 0.0, "teen": 10.0, "adult": 18.0}


def test_without_a_vocabulary_codes_are_labels_and_there_are_no_age_groups():
    y_true = {"age": [5, 15, 25, 35], "gender": [0, 1, 0, 1]}
    y_pred = {"age": [5, 15, 25, 35], "p_female": [0.2, 0.8, 0.7, 0.9]}
    r = evaluate(y_true, y_pred, groups={"race": [3, 0, None, 3]})
    assert list(r.by_group) == ["age_bin", "gender", "race"]
    assert "age_group" not in r.samples
    assert list(r.age_group_table.index) == ["overall"]
    assert list(r.by_group["gender"].index) == ["0", "1"]
    assert list(r.confusion.index) == list(r.confusion.columns) == ["0", "1"]
    assert list(r.by_group["race"].index) == ["0", "3", "unknown"]  # ordered by code
    d = r.to_dict()
    assert d["eval_config"]["age_groups"] == {}
    assert d["gender_confusion_matrix"]["labels"] == ["0", "1"]
    assert "gender_f1_female" in d  # metric keys are the schema, whatever the labels
    md = r.to_markdown()
    assert md.split("\n## ")[1].startswith("Overall\n")
    assert "| 1 | 2 | 66.7 % | 100.0 % | 80.0 % |" in md  # code 1: read from the `_female` keys


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


def test_group_codes_are_named_by_the_caller_and_extra_groups_kept():
    y_true = {"age": [20, 30, 40, 50], "gender": [0, 1, 0, 1]}
    y_pred = {"age": [20, 30, 40, 50], "p_female": [0, 1, 0, 1]}
    groups = pd.DataFrame({"race": [0, 1, 4, np.nan], "camera": ["a", "b", "a", None]})
    r = evaluate(y_true, y_pred, groups=groups, group_names={"race": RACE_NAMES})
    assert list(r.by_group["race"].index) == ["alpha", "beta", "epsilon", "unknown"]
    assert dict(r.by_group["camera"]["n"]) == {"a": 2, "b": 1, "unknown": 1}
    mixed = evaluate(y_true, y_pred, groups={"race": [2, None, 2, 3]}, group_names={"race": RACE_NAMES})
    assert dict(mixed.by_group["race"]["n"]) == {"gamma": 2, "delta": 1, "unknown": 1}
    with pytest.raises(ValueError, match="race"):
        evaluate(y_true, y_pred, groups={"race": [0, 1, 7, 2]}, group_names={"race": RACE_NAMES})
    gendered = evaluate(y_true, y_pred, gender_names=GENDER_NAMES)
    assert list(gendered.by_group["gender"].index) == ["man", "woman"]
    assert gendered.confusion.loc["woman", "woman"] == 2


def test_contract_keys_and_strict_json(tmp_path):
    y_true, y_pred, groups = make_data()
    r = evaluate(y_true, y_pred, groups=groups, **VOCABULARY)
    path = tmp_path / "m.json"
    r.to_json(path, extra={"model": "small"})
    d = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert set(d) >= CONTRACT_KEYS
    assert d["model"] == "small"
    assert d["n"] == 200 and isinstance(d["n"], int)
    assert "5" in d["age_cs"]
    assert set(d["by_group"]) == {"age_group", "age_bin", "gender", "race"}
    alpha = d["by_group"]["race"]["alpha"]
    assert {"n", "gender_accuracy", "age_mae", "age_cs"} <= set(alpha)
    assert list(d["by_group"]["age_group"]) == ["child", "teen", "adult"]
    assert d["gender_confusion_matrix"]["labels"] == ["man", "woman"]
    assert np.sum(d["gender_confusion_matrix"]["matrix"]) == 200
    with pytest.raises(ValueError, match="overwrite"):
        r.to_json(extra={"age_mae": 1})


def test_one_sample_group_is_reported_with_undefined_ratios_as_null():
    y_true = {"age": [30, 31, 32], "gender": [0, 0, 1]}
    y_pred = {"age": [30, 33, 32], "p_female": [0.1, 0.2, 0.9]}
    r = evaluate(y_true, y_pred, gender_names=GENDER_NAMES)
    female = r.by_group["gender"].loc["woman"]
    assert female["n"] == 1
    assert female["gender_accuracy"] == 1.0
    assert math.isnan(female["gender_recall_male"])  # no true male in this group
    d = json.loads(r.to_json())
    assert d["by_group"]["gender"]["woman"]["gender_recall_male"] is None
    assert d["by_group"]["gender"]["woman"]["age_rmse"] == 0.0


def test_nan_predictions_raise_or_are_omitted():
    y_true = {"age": [10, 20, 30], "gender": [0, 1, 0]}
    y_pred = {"age": [10, np.nan, 31], "p_female": [0.1, 0.9, 0.2]}
    with pytest.raises(ValueError, match="nan_policy='omit'"):
        evaluate(y_true, y_pred)
    r = evaluate(y_true, y_pred, groups={"race": [0, 1, 2]}, group_names={"race": RACE_NAMES}, nan_policy="omit")
    assert r.n == 2 and r.n_omitted == 1
    assert r.overall["age_mae"] == 0.5
    assert list(r.by_group["race"].index) == ["alpha", "gamma"]
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
        ({"age": [1], "gender": [0]}, {"age": [1], "p_female": [0.5]}, {"gender_names": {0: "m"}}, "codes 0 and 1"),
        ({"age": [1], "gender": [0]}, {"age": [1], "p_female": [0.5]}, {"gender_names": {0: "m", 1: "m"}}, "two different"),
        ({"age": [1], "gender": [0]}, {"age": [1], "p_female": [0.5]}, {"group_names": {"race": {0: "a"}}}, "not in `groups`"),
        ({"age": [1], "gender": [0]}, {"age": [1], "p_female": [0.5]}, {"groups": {"race": [0]}, "group_names": {"race": ["a"]}}, "code -> name"),
    ],
)
def test_invalid_input_raises_clear_error(y_true, y_pred, kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        evaluate(y_true, y_pred, **kwargs)
    assert "Received" in str(info.value)


def test_markdown_shows_overall_and_age_groups_first():
    y_true, y_pred, groups = make_data()
    r = evaluate(y_true, y_pred, groups=groups, **VOCABULARY)
    md = r.to_markdown(title="Run 1", images={"mae_by_bin": "mae_by_bin.png", "custom": "custom.png"})
    assert md.startswith("# Run 1")
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Overall and by age group"
    assert headings.index("## Age by bin") < headings.index("## Fairness")
    first_table = md.split("## Overall and by age group")[1].split("##")[0]
    rows = [line.split("|")[1].strip() for line in first_table.splitlines() if line.startswith("| ") and "age group" not in line]
    assert [r_.rstrip(" †") for r_ in rows] == ["**overall**", "child", "teen", "adult"]
    assert "### By race" in md and "| alpha" in md
    assert "| woman |" in md.split("## Gender")[1].split("##")[0]
    assert "![mae by bin](mae_by_bin.png)" in md.split("## Age by bin")[1].split("## Fairness")[0]
    assert "## Other figures" in md and "(custom.png)" in md


def test_fairness_table_is_long_and_starts_with_overall():
    y_true, y_pred, groups = make_data(60)
    r = evaluate(y_true, y_pred, groups=groups, **VOCABULARY)
    ft = r.fairness_table()
    assert ft.iloc[0][["group", "value"]].tolist() == ["overall", "all"]
    assert ft.groupby("group")["n"].sum().drop("overall").eq(60).all()
    assert isinstance(r, EvalResult) and "age_mae" in repr(r)
