"""`evaluate`: one entry point from true/predicted labels to a tidy, serialisable result."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from agegender_eval.metrics import (
    AGE_DECADE_EDGES,
    DEFAULT_CS_KS,
    AgeBinSpec,
    age_metrics,
    as_1d,
    assign_age_bins,
    check_gender_labels,
    check_probabilities,
    confusion_matrix,
    cs_key,
    gender_labels,
    gender_metrics,
    normalize_age_bins,
    validate_cs_ks,
    validate_threshold,
)

SCHEMA_VERSION = 1
BUILTIN_GROUPS = ("age_group", "age_bin", "gender")
"""Breakdowns derived from ``y_true``, in this order (``age_group`` only when ``age_groups`` is
given); columns of ``groups`` (e.g. ``race``) follow. ``groups`` may not use these names."""

_NAN_POLICIES = ("raise", "omit")


@dataclass(frozen=True)
class EvalResult:
    """Result of :func:`evaluate`.

    Attributes:
        overall: metric name → value for all samples (``n``, ``gender_accuracy``, ``age_mae``, …).
        by_group: group column (``age_group``, ``age_bin``, ``gender``, then ``groups`` columns)
            → DataFrame indexed by group value, one row per non-empty group, columns ``n`` + metrics.
        confusion: 2×2 gender confusion matrix (rows true, columns predicted).
        samples: one row per sample (``age_true``, ``age_pred``, ``age_error``, ``gender_true``,
            ``p_female``, ``gender_pred`` and the group columns) — what the plots use.
        threshold, cs_ks, age_bins, age_groups: the configuration used (bins as label → lower edge;
            ``age_groups`` is empty when none were given).
        n_omitted: rows dropped because a prediction was NaN (``nan_policy="omit"``).
    """

    overall: pd.Series
    by_group: dict[str, pd.DataFrame]
    confusion: pd.DataFrame
    samples: pd.DataFrame
    threshold: float
    cs_ks: tuple[float, ...]
    age_bins: dict[str, float]
    age_groups: dict[str, float]
    n_omitted: int = 0
    group_columns: tuple[str, ...] = field(default=BUILTIN_GROUPS)

    # ------------------------------------------------------------------ accessors
    @property
    def n(self) -> int:
        return int(self.overall["n"])

    @property
    def age_group_table(self) -> pd.DataFrame:
        """Overall row followed by one row per age group (the headline table; only the overall
        row when the result has no ``age_groups``)."""
        overall = self.overall.to_frame("overall").T
        if "age_group" not in self.by_group:
            return overall
        return pd.concat([overall, self.by_group["age_group"]])

    def fairness_table(self) -> pd.DataFrame:
        """Long table of every breakdown: columns ``group``, ``value``, ``n`` and the metrics.

        The first row is ``group="overall"``; use it to see where the model is worse than average.
        """
        rows = [pd.DataFrame([self.overall]).assign(group="overall", value="all")]
        for col, df in self.by_group.items():
            rows.append(df.reset_index(names="value").assign(group=col))
        out = pd.concat(rows, ignore_index=True)
        out["value"] = out["value"].astype(str)
        cols = ["group", "value", *self.overall.index]
        out = out[cols]
        out["n"] = out["n"].astype(int)
        return out

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (NaN → ``None``). Schema: see the package README (``metrics.json``)."""
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        out.update(_metrics_json(self.overall))
        out["threshold"] = self.threshold
        out["n_omitted"] = int(self.n_omitted)
        cm = self.confusion
        out["gender_confusion_matrix"] = {
            "labels": [str(c) for c in cm.columns],
            "rows": "true",
            "columns": "predicted",
            "matrix": cm.to_numpy().astype(int).tolist(),
        }
        bins = self.by_group["age_bin"]
        out["age_mae_by_bin"] = {str(k): _clean(v) for k, v in bins["age_mae"].items()}
        out["age_n_by_bin"] = {str(k): int(v) for k, v in bins["n"].items()}
        out["by_group"] = {
            col: {str(val): _metrics_json(row) for val, row in df.iterrows()}
            for col, df in self.by_group.items()
        }
        out["eval_config"] = {
            "threshold": self.threshold,
            "cs_ks": [cs_key(k) for k in self.cs_ks],
            "age_bins": dict(self.age_bins),
            "age_groups": dict(self.age_groups),
            "positive_class": "female (p_female > threshold)",
        }
        return out

    def to_json(self, path: str | Path | None = None, *, indent: int = 2, extra: Mapping[str, Any] | None = None) -> str:
        """Serialise :meth:`to_dict` (plus ``extra`` top-level keys) to strict JSON; write it if ``path``."""
        data = merge_extra(self.to_dict(), extra)
        text = json.dumps(data, indent=indent, allow_nan=False, ensure_ascii=False, default=_json_default)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def to_markdown(self, *, title: str | None = None, images: Mapping[str, str] | None = None) -> str:
        """GitHub-flavoured Markdown: overall + age-group table first, then gender, age bins, fairness.

        ``images`` maps figure name → relative path; known names (``training_curves``,
        ``age_scatter``, ``error_distribution``, ``mae_by_bin``, ``confusion_matrix``,
        ``fairness``, ``sample_grid``) are placed in their section, others at the end.
        """
        from agegender_eval._markdown import render_markdown

        return render_markdown(self, title=title, images=images or {})

    def __repr__(self) -> str:
        o = self.overall
        return (
            f"EvalResult(n={self.n}, gender_accuracy={o['gender_accuracy']:.4f}, "
            f"age_mae={o['age_mae']:.3f}, groups={list(self.by_group)})"
        )


def merge_extra(data: dict[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge ``extra`` top-level keys into a metrics dict; refuses to overwrite a metric key."""
    if extra is None:
        return data
    if not isinstance(extra, Mapping):
        raise ValueError(f"`extra` must be a mapping of extra top-level keys. Received: extra={extra!r}")
    clash = sorted(set(map(str, extra)) & set(data))
    if clash:
        raise ValueError(f"`extra` must not overwrite metric keys {clash}. Received: extra keys={sorted(map(str, extra))}")
    return {**data, **{str(k): v for k, v in extra.items()}}


def _clean(v: Any) -> Any:
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return None if math.isnan(v) else float(v)
    return v


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if math.isnan(obj) else float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | tuple):
        return list(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def _metrics_json(row: pd.Series) -> dict[str, Any]:
    """Flat metric row → JSON dict with ``n`` as int and ``age_cs_<k>`` nested into ``age_cs``."""
    out: dict[str, Any] = {}
    cs: dict[str, Any] = {}
    for key, val in row.items():
        if key == "n":
            out["n"] = int(val)
        elif str(key).startswith("age_cs_"):
            cs[str(key)[len("age_cs_") :]] = _clean(val)
        else:
            out[str(key)] = _clean(val)
    out["age_cs"] = cs
    return out


# ---------------------------------------------------------------------------------- inputs


def _column(obj: Any, names: tuple[str, ...], arg: str) -> Any:
    if not isinstance(obj, Mapping | pd.DataFrame):
        raise ValueError(
            f"`{arg}` must be a mapping or DataFrame with columns {names}. Received: {arg} of type {type(obj).__name__}"
        )
    for name in names:
        if name in obj:
            return obj[name]
    keys = list(obj.columns) if isinstance(obj, pd.DataFrame) else list(obj.keys())
    raise ValueError(f"`{arg}` must have a column {' or '.join(repr(n) for n in names)}. Received: {arg} with keys {keys}")


def _group_frame(groups: Any, n: int) -> pd.DataFrame:
    if groups is None:
        return pd.DataFrame(index=range(n))
    if isinstance(groups, pd.DataFrame):
        df = groups.reset_index(drop=True).copy()
    elif isinstance(groups, Mapping):
        try:
            df = pd.DataFrame({str(k): list(np.asarray(v).ravel()) for k, v in groups.items()})
        except ValueError as exc:
            lens = {k: len(np.asarray(v).ravel()) for k, v in groups.items()}
            raise ValueError(f"`groups` columns must all have the same length. Received: lengths {lens}") from exc
    else:
        raise ValueError(f"`groups` must be a mapping or DataFrame of grouping columns. Received: groups of type {type(groups).__name__}")
    if len(df.columns) and len(df) != n:
        raise ValueError(f"`groups` must have one row per sample ({n}). Received: {len(df)} rows")
    reserved = set(BUILTIN_GROUPS) | {"age_true", "age_pred", "age_error", "gender_true", "p_female", "gender_pred"}
    clash = sorted(set(map(str, df.columns)) & reserved)
    if clash:
        raise ValueError(f"`groups` must not contain the built-in columns {clash} (they are derived from y_true). Received: groups columns {list(df.columns)}")
    df.columns = [str(c) for c in df.columns]
    return df


def _check_group_names(group_names: Any, columns: Iterable[str]) -> dict[str, Mapping[Any, str]]:
    if group_names is None:
        return {}
    if not isinstance(group_names, Mapping) or not all(isinstance(v, Mapping) for v in group_names.values()):
        raise ValueError(
            "`group_names` must map a `groups` column to a mapping code -> name, e.g. "
            f"{{'race': {{0: 'name', ...}}}}. Received: group_names={group_names!r:.200}"
        )
    unknown = sorted(set(map(str, group_names)) - set(columns))
    if unknown:
        raise ValueError(f"`group_names` names columns that are not in `groups` ({list(columns)}). Received: group_names for {unknown}")
    for col, names in group_names.items():
        if not names or not all(isinstance(v, str) for v in names.values()):
            raise ValueError(f"`group_names[{col!r}]` must map codes to strings. Received: {names!r:.200}")
    return {str(k): v for k, v in group_names.items()}


def _coded_column(values: pd.Series, names: Mapping[Any, str] | None, col: str) -> pd.Series:
    """A grouping column → group labels; NaN/None → ``"unknown"``.

    Numeric codes are named with ``names`` (ordered as in ``names``; a code missing from it is an
    error) or, without names, written as integers (ordered by code). Strings pass through.
    """
    if values.dtype == object:  # e.g. ints mixed with None
        coerced = pd.to_numeric(values, errors="coerce")
        if coerced.isna().sum() == values.isna().sum():
            values = coerced
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return _generic_group(values)
    v = values.to_numpy(dtype=float)
    known = ~np.isnan(v)
    if names is not None:
        bad = known & ~np.isin(v, list(names))
        if bad.any():
            raise ValueError(
                f"`{col}` codes must be keys of group_names[{col!r}] ({dict(names)}). "
                f"Received: {col} containing {sorted(set(v[bad].tolist()))[:5]}"
            )
        code_names = dict(names)
    else:
        if not np.all(np.mod(v[known], 1) == 0):
            return _generic_group(values)
        code_names = {c: str(int(c)) for c in sorted(set(v[known].tolist()))}
    labels = [code_names[x] if ok else "unknown" for x, ok in zip(v, known, strict=True)]
    cats = list(dict.fromkeys([*code_names.values(), "unknown"]))
    return pd.Series(pd.Categorical(labels, categories=cats, ordered=True))


def _generic_group(values: pd.Series) -> pd.Series:
    return values.astype(object).where(values.notna(), "unknown").astype(str)


# -------------------------------------------------------------------------------- evaluate


def _slice_metrics(df: pd.DataFrame, threshold: float, cs_ks: tuple[float, ...]) -> dict[str, float]:
    out: dict[str, float] = {"n": float(len(df))}
    out.update(gender_metrics(df["gender_true"].to_numpy(), df["p_female"].to_numpy(), threshold=threshold))
    out.update(age_metrics(df["age_true"].to_numpy(), df["age_pred"].to_numpy(), cs_ks=cs_ks))
    return out


def evaluate(
    y_true: Mapping[str, Any] | pd.DataFrame,
    y_pred: Mapping[str, Any] | pd.DataFrame,
    *,
    groups: Mapping[str, Any] | pd.DataFrame | None = None,
    threshold: float = 0.5,
    cs_ks: Iterable[float] = DEFAULT_CS_KS,
    age_bins: AgeBinSpec | None = None,
    age_groups: AgeBinSpec | None = None,
    gender_names: Mapping[int, str] | None = None,
    group_names: Mapping[str, Mapping[Any, str]] | None = None,
    nan_policy: str = "raise",
) -> EvalResult:
    """Evaluate age and gender predictions overall and broken down by group.

    Args:
        y_true: mapping or DataFrame with ``age`` (years, >= 0) and ``gender`` (0 male, 1 female).
        y_pred: mapping or DataFrame with ``age`` and ``p_female`` (probability of female;
            a ``gender`` column is accepted as the same probability, or as hard 0/1 labels).
            ``(n, 1)`` arrays as returned by Keras ``predict`` are accepted.
        groups: optional extra grouping columns (mapping or DataFrame, one row per sample).
            Integer codes are named with ``group_names``; missing values become the group
            ``"unknown"``.
        threshold: predict female when ``p_female > threshold``.
        cs_ks: the k values (years) of CS@k.
        age_bins: fine bins of the true age (lower edges or label → lower edge); default
            ``AGE_DECADE_EDGES``: 0–10, 11–20, …, 81+.
        age_groups: the reporting age groups (label → lower edge, or lower edges), e.g. the
            dataset's ``utkface_data.AGE_GROUPS``: an ``age_group`` breakdown that
            heads the report. Without it there is no ``age_group`` breakdown.
        gender_names: names of the gender codes, ``{0: name, 1: name}``, used for the ``gender``
            breakdown and the confusion matrix; without it the codes ``"0"``, ``"1"`` are shown.
            (Metric keys such as ``gender_f1_female`` do not change: they are the schema.)
        group_names: for a ``groups`` column of integer codes, code → name
            (``{"race": utkface_data.RACE_NAMES}``); a code missing from it is an error. Columns without
            names show their codes.
        nan_policy: ``"raise"`` (default) raises on a NaN/inf prediction; ``"omit"`` drops those
            rows and records how many in ``n_omitted``. A NaN in ``y_true`` always raises.

    Returns:
        :class:`EvalResult` with breakdowns ``age_group``, ``age_bin``, ``gender`` (true gender)
        and one per ``groups`` column. Groups with no samples are left out; a group with one
        sample is reported (its ``n`` says how much to trust it). Undefined ratios are NaN.

    Raises:
        ValueError: empty input, mismatched lengths, NaN/inf values, gender labels outside {0, 1},
            probabilities outside [0, 1], negative true ages, or invalid options.
    """
    thr = validate_threshold(threshold)
    ks = validate_cs_ks(cs_ks)
    if nan_policy not in _NAN_POLICIES:
        raise ValueError(f"`nan_policy` must be one of {_NAN_POLICIES}. Received: nan_policy={nan_policy!r}")
    bin_edges, bin_labels = normalize_age_bins(age_bins, default=AGE_DECADE_EDGES, name="age_bins")
    grp_edges, grp_labels = normalize_age_bins(age_groups, name="age_groups") if age_groups is not None else ((), ())
    gender_label = gender_labels(gender_names)

    age_true = as_1d(_column(y_true, ("age",), "y_true"), "y_true['age']")
    gender_true = as_1d(_column(y_true, ("gender",), "y_true"), "y_true['gender']")
    age_pred = as_1d(_column(y_pred, ("age",), "y_pred"), "y_pred['age']")
    p_female = as_1d(_column(y_pred, ("p_female", "gender"), "y_pred"), "y_pred['p_female']")

    lengths = {
        "y_true['age']": len(age_true),
        "y_true['gender']": len(gender_true),
        "y_pred['age']": len(age_pred),
        "y_pred['p_female']": len(p_female),
    }
    if len(set(lengths.values())) != 1:
        raise ValueError(f"`y_true` and `y_pred` columns must all have the same length. Received: lengths {lengths}")
    n_in = len(age_true)
    if n_in == 0:
        raise ValueError("`evaluate` needs at least one sample. Received: empty y_true/y_pred (length 0)")
    for name, arr in (("y_true['age']", age_true), ("y_true['gender']", gender_true)):
        if not np.isfinite(arr).all():
            raise ValueError(f"`{name}` must not contain NaN/inf. Received: {int((~np.isfinite(arr)).sum())} non-finite value(s)")
    if (age_true < 0).any():
        raise ValueError(f"True ages must be >= 0. Received: y_true['age'] with min {age_true.min():g}")
    check_gender_labels(gender_true, "y_true['gender']")
    gdf = _group_frame(groups, n_in)
    names_by_column = _check_group_names(group_names, gdf.columns)

    bad_pred = ~(np.isfinite(age_pred) & np.isfinite(p_female))
    if bad_pred.any():
        if nan_policy == "raise":
            raise ValueError(
                f"`y_pred` contains {int(bad_pred.sum())} NaN/inf prediction(s) (first at index {int(np.argmax(bad_pred))}); "
                "pass nan_policy='omit' to drop them. Received: nan_policy='raise'"
            )
        keep = ~bad_pred
        if not keep.any():
            raise ValueError(f"Every prediction is NaN/inf; nothing to evaluate. Received: {n_in} NaN prediction(s)")
        age_true, gender_true, age_pred, p_female = age_true[keep], gender_true[keep], age_pred[keep], p_female[keep]
        gdf = gdf.loc[keep].reset_index(drop=True) if len(gdf.columns) else pd.DataFrame(index=range(int(keep.sum())))
    check_probabilities(p_female, "y_pred['p_female']")

    samples = pd.DataFrame(
        {
            "age_true": age_true,
            "age_pred": age_pred,
            "age_error": age_pred - age_true,
            "gender_true": gender_true.astype(int),
            "p_female": p_female,
            "gender_pred": (p_female > thr).astype(int),
            "age_bin": assign_age_bins(age_true, age_bins, default=AGE_DECADE_EDGES, name="age_bins"),
            "gender": pd.Categorical.from_codes(gender_true.astype(int), categories=list(gender_label), ordered=True),
        }
    )
    builtin = ("age_bin", "gender")
    if age_groups is not None:
        samples.insert(6, "age_group", assign_age_bins(age_true, age_groups, name="age_groups"))
        builtin = BUILTIN_GROUPS
    extra_cols: list[str] = []
    for col in gdf.columns:
        samples[col] = _coded_column(gdf[col], names_by_column.get(col), col)
        extra_cols.append(col)

    overall = pd.Series(_slice_metrics(samples, thr, ks), name="overall")
    group_columns = (*builtin, *extra_cols)
    by_group: dict[str, pd.DataFrame] = {}
    for col in group_columns:
        rows = {}
        for val, sub in samples.groupby(col, observed=True, sort=True):
            rows[str(val)] = _slice_metrics(sub, thr, ks)
        frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(overall.index))
        frame.index.name = col
        frame["n"] = frame["n"].astype(int)
        by_group[col] = frame

    return EvalResult(
        overall=overall,
        by_group=by_group,
        confusion=confusion_matrix(gender_true, p_female, threshold=thr, gender_names=gender_names),
        samples=samples,
        threshold=thr,
        cs_ks=ks,
        age_bins=dict(zip(bin_labels, bin_edges, strict=True)),
        age_groups=dict(zip(grp_labels, grp_edges, strict=True)),
        n_omitted=int(n_in - len(samples)),
        group_columns=group_columns,
    )
