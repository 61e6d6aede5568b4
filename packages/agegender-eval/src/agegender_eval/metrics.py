"""Metric primitives on plain arrays: age errors, cumulative score, gender classification, binning.

Every function validates its arguments first and raises ``ValueError("... Received: x=...")``.
Undefined ratios (0/0, e.g. precision of a class that is never predicted) are ``nan``; they are
written as ``null`` in JSON.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

AGE_DECADE_EDGES: tuple[int, ...] = (0, 11, 21, 31, 41, 51, 61, 71, 81)
"""Default ``age_bins`` of :func:`~agegender_eval.evaluate`, as lower edges: 0–10, 11–20, …, 71–80, 81+."""

DEFAULT_CS_KS: tuple[int, ...] = (1, 3, 5, 10)
"""Default k values (years) for the cumulative score CS@k."""

AgeBinSpec = Sequence[float] | Mapping[str, float]

GENDER_KEY_SUFFIXES: tuple[str, str] = ("male", "female")
"""Suffixes of the per-class metric keys (``gender_f1_male``, ``gender_f1_female``) for gender codes
0 and 1: part of the ``metrics.json`` schema, named like the input ``p_female`` (the probability of
code 1). The labels shown for the codes in tables and plots are the caller's ``gender_names``."""


# --------------------------------------------------------------------------- validation helpers


def as_1d(values: Any, name: str) -> np.ndarray:
    """Return ``values`` as a 1-D float array (an ``(n, 1)`` column, as Keras predicts, is flattened)."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{name}` must be numeric. Received: {name}={values!r:.200}") from exc
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(
            f"`{name}` must be one-dimensional (or an (n, 1) column). Received: {name} with shape {arr.shape}"
        )
    return arr


def _check_pair(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if len(a) != len(b):
        raise ValueError(
            f"`{names[0]}` and `{names[1]}` must have the same length. "
            f"Received: len({names[0]})={len(a)}, len({names[1]})={len(b)}"
        )
    if len(a) == 0:
        raise ValueError(f"Metrics need at least one sample. Received: len({names[0]})=0")
    for arr, name in zip((a, b), names, strict=True):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise ValueError(
                f"`{name}` must be finite (no NaN/inf); {int(bad.sum())} value(s) are not, "
                f"first at index {int(np.argmax(bad))}. Received: {name}[{int(np.argmax(bad))}]={arr[bad][0]}"
            )


def _age_pair(age_true: Any, age_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = as_1d(age_true, "age_true")
    p = as_1d(age_pred, "age_pred")
    _check_pair(t, p, ("age_true", "age_pred"))
    return t, p


def validate_cs_ks(cs_ks: Iterable[float]) -> tuple[float, ...]:
    """Validate and sort the k values of CS@k (non-empty, finite, >= 0, no duplicates)."""
    try:
        ks = tuple(cs_ks)
    except TypeError as exc:
        raise ValueError(f"`cs_ks` must be a sequence of numbers. Received: cs_ks={cs_ks!r}") from exc
    if not ks:
        raise ValueError(f"`cs_ks` must not be empty. Received: cs_ks={cs_ks!r}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | float | np.integer | np.floating):
            raise ValueError(f"`cs_ks` must contain numbers. Received: cs_ks={cs_ks!r}")
        if not math.isfinite(k) or k < 0:
            raise ValueError(f"`cs_ks` values must be finite and >= 0. Received: cs_ks={cs_ks!r}")
    if len(set(ks)) != len(ks):
        raise ValueError(f"`cs_ks` must not contain duplicates. Received: cs_ks={cs_ks!r}")
    return tuple(int(k) if float(k).is_integer() else float(k) for k in sorted(ks))


def cs_key(k: float) -> str:
    """JSON/column key for CS@k: ``5 -> "5"``, ``2.5 -> "2.5"``."""
    return f"{k:g}"


def validate_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.integer | np.floating):
        raise ValueError(f"`threshold` must be a number in [0, 1]. Received: threshold={threshold!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"`threshold` must be in [0, 1]. Received: threshold={threshold!r}")
    return float(threshold)


# --------------------------------------------------------------------------------- age metrics


def mean_absolute_error(age_true: Any, age_pred: Any) -> float:
    """Mean of ``|age_pred - age_true|`` in years."""
    t, p = _age_pair(age_true, age_pred)
    return float(np.mean(np.abs(p - t)))


def root_mean_squared_error(age_true: Any, age_pred: Any) -> float:
    """Square root of the mean squared age error, in years."""
    t, p = _age_pair(age_true, age_pred)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def mean_signed_error(age_true: Any, age_pred: Any) -> float:
    """Bias: mean of ``age_pred - age_true``; positive means the model predicts too old."""
    t, p = _age_pair(age_true, age_pred)
    return float(np.mean(p - t))


def cumulative_score(age_true: Any, age_pred: Any, ks: Iterable[float] = DEFAULT_CS_KS) -> dict[str, float]:
    """CS@k: share of predictions with ``|error| <= k`` years, for each k (keys as strings, sorted).

    >>> cumulative_score([20, 30], [21, 40], ks=(1, 5))
    {'1': 0.5, '5': 0.5}
    """
    t, p = _age_pair(age_true, age_pred)
    return _cs(np.abs(p - t), validate_cs_ks(ks))


def _cs(abs_err: np.ndarray, ks: tuple[float, ...]) -> dict[str, float]:
    return {cs_key(k): float(np.mean(abs_err <= k)) for k in ks}


def age_metrics(age_true: Any, age_pred: Any, *, cs_ks: Iterable[float] = DEFAULT_CS_KS) -> dict[str, float]:
    """All age metrics of one slice as a flat dict: ``age_mae``, ``age_rmse``, ``age_bias``, ``age_cs_<k>``."""
    t, p = _age_pair(age_true, age_pred)
    ks = validate_cs_ks(cs_ks)
    err = p - t
    abs_err = np.abs(err)
    out = {
        "age_mae": float(np.mean(abs_err)),
        "age_rmse": float(np.sqrt(np.mean(err**2))),
        "age_bias": float(np.mean(err)),
    }
    for key, share in _cs(abs_err, ks).items():
        out[f"age_cs_{key}"] = share
    return out


# ----------------------------------------------------------------------------------- age bins


def _is_int(x: float) -> bool:
    return float(x).is_integer()


def normalize_age_bins(bins: AgeBinSpec | None, *, default: AgeBinSpec = AGE_DECADE_EDGES, name: str = "age_bins") -> tuple[tuple[float, ...], tuple[str, ...]]:
    """Turn an age-bin spec into ``(lower_edges, labels)``.

    A spec is either a sequence of increasing lower edges (inclusive; the last bin is open-ended),
    labelled automatically (``(0, 11, 21)`` gives ``"0–10", "11–20", "21+"``), or a mapping
    ``label -> lower edge`` (``{"child": 0, "adult": 18}``).
    """
    spec = default if bins is None else bins
    if isinstance(spec, Mapping):
        items = list(spec.items())
        labels = [str(k) for k, _ in items]
        edges_raw = [v for _, v in items]
    else:
        if isinstance(spec, str | bytes):
            raise ValueError(f"`{name}` must be a sequence of lower edges or a mapping label -> edge. Received: {name}={bins!r}")
        edges_raw = list(spec)
        labels = []
    if not edges_raw:
        raise ValueError(f"`{name}` must contain at least one bin. Received: {name}={bins!r}")
    try:
        edges = [float(e) for e in edges_raw]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"`{name}` edges must be numbers. Received: {name}={bins!r}") from exc
    if any(not math.isfinite(e) for e in edges):
        raise ValueError(f"`{name}` edges must be finite. Received: {name}={bins!r}")
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
        raise ValueError(f"`{name}` edges must be strictly increasing. Received: {name}={bins!r}")
    if labels:
        if len(set(labels)) != len(labels):
            raise ValueError(f"`{name}` labels must be unique. Received: {name}={bins!r}")
    else:
        for i, lo in enumerate(edges):
            if i == len(edges) - 1:
                labels.append(f"{lo:g}+")
            elif _is_int(lo) and _is_int(edges[i + 1]):
                hi = edges[i + 1] - 1
                labels.append(f"{lo:g}" if hi == lo else f"{lo:g}–{hi:g}")
            else:
                labels.append(f"[{lo:g}, {edges[i + 1]:g})")
    return tuple(edges), tuple(labels)


def assign_age_bins(ages: Any, bins: AgeBinSpec | None = None, *, default: AgeBinSpec = AGE_DECADE_EDGES, name: str = "age_bins") -> pd.Categorical:
    """Label each (true) age with its bin; returns an ordered ``pandas.Categorical`` with every bin as a category.

    Raises if an age is below the first edge or not finite.
    """
    edges, labels = normalize_age_bins(bins, default=default, name=name)
    a = as_1d(ages, "ages")
    if not np.isfinite(a).all():
        raise ValueError(f"`ages` must be finite to be binned. Received: ages with {int((~np.isfinite(a)).sum())} non-finite value(s)")
    idx = np.searchsorted(np.asarray(edges), a, side="right") - 1
    if (idx < 0).any():
        raise ValueError(
            f"Every age must be >= the first edge of `{name}` ({edges[0]:g}). "
            f"Received: age={a[idx < 0].min():g}, {name}={bins!r}"
        )
    return pd.Categorical.from_codes(idx, categories=list(labels), ordered=True)


def mae_by_bin(age_true: Any, age_pred: Any, *, bins: AgeBinSpec | None = None) -> pd.DataFrame:
    """MAE per bin of the true age: DataFrame indexed by bin label with columns ``n`` and ``age_mae``.

    Every configured bin is listed; an empty bin has ``n == 0`` and ``age_mae`` nan.
    """
    t, p = _age_pair(age_true, age_pred)
    cat = assign_age_bins(t, bins)
    df = pd.DataFrame({"bin": cat, "abs_err": np.abs(p - t)})
    g = df.groupby("bin", observed=False)["abs_err"]
    out = pd.DataFrame({"n": g.size().astype(int), "age_mae": g.mean()})
    out.index = out.index.astype(str)
    out.index.name = "age_bin"
    return out


# -------------------------------------------------------------------------------- gender metrics


def _gender_pair(gender_true: Any, p_female: Any) -> tuple[np.ndarray, np.ndarray]:
    g = as_1d(gender_true, "gender_true")
    p = as_1d(p_female, "p_female")
    _check_pair(g, p, ("gender_true", "p_female"))
    check_gender_labels(g)
    check_probabilities(p)
    return g, p


def check_gender_labels(g: np.ndarray, name: str = "gender_true") -> None:
    bad = (g != 0) & (g != 1)
    if bad.any():
        raise ValueError(
            f"`{name}` labels must be 0 (male) or 1 (female). "
            f"Received: {name} containing {sorted(set(g[bad].tolist()))[:5]}"
        )


def check_probabilities(p: np.ndarray, name: str = "p_female") -> None:
    bad = (p < 0) | (p > 1)
    if bad.any():
        raise ValueError(
            f"`{name}` must be probabilities in [0, 1] (or 0/1 labels). "
            f"Received: {name} with min={p.min():g}, max={p.max():g}"
        )


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else math.nan


def gender_metrics(gender_true: Any, p_female: Any, *, threshold: float = 0.5) -> dict[str, float]:
    """Gender accuracy and per-class precision/recall/F1 as a flat dict.

    A sample is predicted female when ``p_female > threshold`` (the rule Keras'
    ``BinaryAccuracy`` uses, so numbers match the training log). Keys: ``gender_accuracy``,
    ``gender_{precision,recall,f1}_{male,female}``. Undefined ratios are nan.
    """
    thr = validate_threshold(threshold)
    g, p = _gender_pair(gender_true, p_female)
    true_f = g == 1
    pred_f = p > thr
    out = {"gender_accuracy": float(np.mean(true_f == pred_f))}
    male, female = GENDER_KEY_SUFFIXES
    for name, t_c, p_c in ((male, ~true_f, ~pred_f), (female, true_f, pred_f)):
        hit = float(np.sum(t_c & p_c))
        precision = _ratio(hit, float(p_c.sum()))
        recall = _ratio(hit, float(t_c.sum()))
        if math.isnan(precision) or math.isnan(recall):
            f1 = math.nan
        elif precision + recall == 0:
            f1 = 0.0
        else:
            f1 = 2 * precision * recall / (precision + recall)
        out[f"gender_precision_{name}"] = precision
        out[f"gender_recall_{name}"] = recall
        out[f"gender_f1_{name}"] = f1
    return out


def gender_labels(gender_names: Mapping[int, str] | None) -> tuple[str, str]:
    """Labels of gender codes 0 and 1: ``gender_names[0], gender_names[1]``, or ``"0", "1"`` without names."""
    if gender_names is None:
        return ("0", "1")
    if not isinstance(gender_names, Mapping) or set(gender_names) != {0, 1}:
        raise ValueError(
            f"`gender_names` must map the gender codes 0 and 1 (only) to names. Received: gender_names={gender_names!r}"
        )
    labels = (gender_names[0], gender_names[1])
    if not all(isinstance(x, str) and x for x in labels) or labels[0] == labels[1]:
        raise ValueError(f"`gender_names` must be two different non-empty strings. Received: gender_names={gender_names!r}")
    return labels


def confusion_matrix(
    gender_true: Any, p_female: Any, *, threshold: float = 0.5, gender_names: Mapping[int, str] | None = None
) -> pd.DataFrame:
    """2×2 counts: rows = true gender (code 0, code 1), columns = predicted gender.

    Rows and columns are labelled ``gender_names[0], gender_names[1]`` (e.g. the dataset's
    ``utkface_data.GENDER_NAMES``), or ``"0", "1"`` when no names are given.
    """
    labels = list(gender_labels(gender_names))
    thr = validate_threshold(threshold)
    g, p = _gender_pair(gender_true, p_female)
    pred = (p > thr).astype(int)
    true = g.astype(int)
    cm = np.zeros((2, 2), dtype=int)
    np.add.at(cm, (true, pred), 1)
    return pd.DataFrame(
        cm,
        index=pd.Index(labels, name="true"),
        columns=pd.Index(labels, name="predicted"),
    )
