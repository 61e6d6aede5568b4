"""Metric primitives: properties against plain numpy, and argument validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agegender_eval import (
    AGE_DECADE_EDGES,
    age_metrics,
    assign_age_bins,
    confusion_matrix,
    cumulative_score,
    gender_metrics,
    mae_by_bin,
    mean_absolute_error,
    mean_signed_error,
    root_mean_squared_error,
)

ages = st.integers(min_value=0, max_value=116)
pred_ages = st.floats(min_value=-20, max_value=140, allow_nan=False, allow_infinity=False)


@st.composite
def age_pairs(draw, min_size=1, max_size=60):
    n = draw(st.integers(min_value=min_size, max_value=max_size))
    t = draw(st.lists(ages, min_size=n, max_size=n))
    p = draw(st.lists(pred_ages, min_size=n, max_size=n))
    return np.array(t, dtype=float), np.array(p, dtype=float)


@settings(max_examples=60, deadline=None)
@given(age_pairs())
def test_age_errors_match_plain_numpy(pair):
    t, p = pair
    mae = mean_absolute_error(t, p)
    assert mae >= 0
    assert mae == pytest.approx(np.abs(p - t).mean())
    assert root_mean_squared_error(t, p) == pytest.approx(np.sqrt(((p - t) ** 2).mean()))
    assert mean_signed_error(t, p) == pytest.approx((p - t).mean())
    # RMSE >= MAE >= |bias| always holds
    assert root_mean_squared_error(t, p) >= mae - 1e-9 >= abs(mean_signed_error(t, p)) - 2e-9


@settings(max_examples=60, deadline=None)
@given(age_pairs(), st.lists(st.integers(0, 30), min_size=2, max_size=6, unique=True))
def test_cumulative_score_is_monotone_in_k_and_a_share(pair, ks):
    t, p = pair
    cs = cumulative_score(t, p, ks=ks)
    values = [cs[str(k)] for k in sorted(ks)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values == sorted(values)
    assert cs[str(max(ks))] == pytest.approx(np.mean(np.abs(p - t) <= max(ks)))


def test_cumulative_score_counts_the_boundary_as_within():
    assert cumulative_score([20, 30, 40], [25, 36, 40], ks=(5,)) == {"5": pytest.approx(2 / 3)}


@settings(max_examples=40, deadline=None)
@given(age_pairs())
def test_mae_by_bin_counts_sum_to_total_and_weighted_mean_is_mae(pair):
    t, p = pair
    table = mae_by_bin(t, p)
    assert list(table.index) == ["0–10", "11–20", "21–30", "31–40", "41–50", "51–60", "61–70", "71–80", "81+"]
    assert table["n"].sum() == len(t)
    full = table[table["n"] > 0]
    assert (full["age_mae"] * full["n"]).sum() / len(t) == pytest.approx(mean_absolute_error(t, p))
    assert table.loc[table["n"] == 0, "age_mae"].isna().all()


def test_age_bins_edges_and_labels():
    cat = assign_age_bins([0, 10, 11, 20, 21, 80, 81, 116])
    assert list(cat.astype(str)) == ["0–10", "0–10", "11–20", "11–20", "21–30", "71–80", "81+", "81+"]
    groups = assign_age_bins([0, 9, 10, 17, 18], {"kids": 0, "teens": 10, "adults": 18})
    assert list(groups.astype(str)) == ["kids", "kids", "teens", "teens", "adults"]
    assert list(assign_age_bins([2.5, 7.5], (0, 5)).categories) == ["0–4", "5+"]
    assert list(assign_age_bins([0.5], (0, 0.5, 1)).astype(str)) == ["[0.5, 1)"]
    assert list(assign_age_bins([0, 81], AGE_DECADE_EDGES).categories) == list(cat.categories)


@pytest.mark.parametrize(
    ("bins", "match"),
    [((), "at least one"), ((10, 5), "strictly increasing"), ((0, float("nan")), "finite"), ("0,10", "sequence")],
)
def test_invalid_bins_are_rejected(bins, match):
    with pytest.raises(ValueError, match=match):
        assign_age_bins([5], bins)


def test_age_below_first_edge_is_an_error():
    with pytest.raises(ValueError, match="first edge"):
        assign_age_bins([3], (5, 10))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.floats(0, 1)), min_size=1, max_size=60),
    st.floats(0.05, 0.95),
)
def test_gender_metrics_match_confusion_matrix(rows, threshold):
    g = np.array([r[0] for r in rows])
    p = np.array([r[1] for r in rows])
    m = gender_metrics(g, p, threshold=threshold)
    cm = confusion_matrix(g, p, threshold=threshold).to_numpy()
    assert cm.sum() == len(g)
    assert m["gender_accuracy"] == pytest.approx(np.mean(g == (p > threshold)))
    assert m["gender_accuracy"] == pytest.approx(np.trace(cm) / len(g))
    for i, name in enumerate(("male", "female")):
        recall = m[f"gender_recall_{name}"]
        if cm[i].sum() == 0:
            assert math.isnan(recall)
        else:
            assert recall == pytest.approx(cm[i, i] / cm[i].sum())
        precision = m[f"gender_precision_{name}"]
        if cm[:, i].sum() == 0:
            assert math.isnan(precision)
        else:
            assert precision == pytest.approx(cm[i, i] / cm[:, i].sum())


def test_threshold_moves_the_decision_and_uses_strict_greater():
    g, p = [0, 1, 1], [0.3, 0.5, 0.8]
    assert gender_metrics(g, p)["gender_accuracy"] == pytest.approx(2 / 3)  # 0.5 is not > 0.5
    assert gender_metrics(g, p, threshold=0.4)["gender_accuracy"] == 1.0
    assert confusion_matrix(g, p).loc["1", "0"] == 1  # labelled with the codes unless named
    named = confusion_matrix(g, p, gender_names={0: "man", 1: "woman"})
    assert named.loc["woman", "man"] == 1 and list(named.columns) == ["man", "woman"]


def test_perfect_predictions():
    t = np.array([1, 9, 30, 70])
    assert age_metrics(t, t) == {"age_mae": 0.0, "age_rmse": 0.0, "age_bias": 0.0, "age_cs_1": 1.0, "age_cs_3": 1.0, "age_cs_5": 1.0, "age_cs_10": 1.0}
    m = gender_metrics([0, 1, 1, 0], [0.0, 1.0, 1.0, 0.0])
    assert m["gender_accuracy"] == 1.0
    assert m["gender_f1_male"] == m["gender_f1_female"] == 1.0


def test_keras_style_column_predictions_are_accepted():
    assert mean_absolute_error([10, 20], np.array([[12.0], [20.0]])) == 1.0


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: mean_absolute_error([], []), "at least one sample"),
        (lambda: mean_absolute_error([1, 2], [1]), "same length"),
        (lambda: mean_absolute_error([1, 2], [1, float("nan")]), "finite"),
        (lambda: mean_absolute_error([[1, 2], [3, 4]], [1, 2]), "one-dimensional"),
        (lambda: mean_absolute_error(["a"], [1]), "numeric"),
        (lambda: cumulative_score([1], [1], ks=()), "must not be empty"),
        (lambda: cumulative_score([1], [1], ks=(-1,)), ">= 0"),
        (lambda: cumulative_score([1], [1], ks=(5, 5)), "duplicates"),
        (lambda: gender_metrics([0, 2], [0.1, 0.9]), "0 \\(male\\) or 1 \\(female\\)"),
        (lambda: gender_metrics([0, 1], [0.1, 1.5]), "probabilities"),
        (lambda: gender_metrics([0, 1], [0.1, 0.9], threshold=1.5), "threshold"),
    ],
)
def test_invalid_arguments_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "Received" in str(info.value)
