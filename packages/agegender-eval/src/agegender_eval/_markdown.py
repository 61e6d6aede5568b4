"""Markdown rendering of an :class:`~agegender_eval.evaluate.EvalResult` (no tabulate dependency)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from agegender_eval.metrics import GENDER_KEY_SUFFIXES

if TYPE_CHECKING:
    from agegender_eval.evaluate import EvalResult

SMALL_GROUP = 30
"""Groups with fewer samples than this are flagged in the Markdown tables."""

FIGURE_SECTIONS = {
    "training_curves": "training",
    "age_scatter": "overall",
    "error_distribution": "overall",
    "confusion_matrix": "gender",
    "mae_by_bin": "bins",
    "fairness": "fairness",
    "sample_grid": "samples",
}

_LABELS = {
    "n": "n",
    "gender_accuracy": "gender acc.",
    "gender_f1_male": "F1 male",
    "gender_f1_female": "F1 female",
    "age_mae": "age MAE",
    "age_rmse": "age RMSE",
    "age_bias": "age bias",
}


def _fmt(key: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key == "n":
        return f"{int(value):,}"
    if key.startswith("age_cs_") or key.startswith("gender_"):
        return f"{100 * float(value):.1f} %"
    if key == "age_bias":
        return f"{float(value):+.2f}"
    return f"{float(value):.2f}"


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def md_table(df: pd.DataFrame, columns: Sequence[str], *, index_label: str, small: int = SMALL_GROUP) -> str:
    """Render ``df[columns]`` with its index as first column; right-aligned numbers."""
    header = [index_label, *(_label(c) for c in columns)]
    lines = [
        "| " + " | ".join(_escape(h) for h in header) + " |",
        "|" + "|".join([":---", *(["---:"] * len(columns))]) + "|",
    ]
    for idx, row in df.iterrows():
        name = _escape(str(idx))
        if "n" in row and small and int(row["n"]) < small and str(idx) != "overall":
            name += " †"
        if str(idx) == "overall":
            name = f"**{name}**"
        lines.append("| " + " | ".join([name, *(_fmt(c, row[c]) for c in columns)]) + " |")
    return "\n".join(lines)


def _label(key: str) -> str:
    if key in _LABELS:
        return _LABELS[key]
    if key.startswith("age_cs_"):
        return f"CS@{key[len('age_cs_'):]}"
    return key.replace("gender_", "").replace("_", " ")


def _images(images: Mapping[str, str], section: str) -> list[str]:
    out = []
    for name, path in images.items():
        if FIGURE_SECTIONS.get(name) == section:
            out.append(f"![{name.replace('_', ' ')}]({path})")
    return out


def render_markdown(result: EvalResult, *, title: str | None, images: Mapping[str, str]) -> str:
    o = result.overall
    cs_cols = [f"age_cs_{k}" for k in (f"{k:g}" for k in result.cs_ks)]
    headline = ["n", "gender_accuracy", "gender_f1_male", "gender_f1_female", "age_mae", "age_rmse", "age_bias", *cs_cols]
    out: list[str] = []
    if title:
        out += [f"# {title}", ""]
    omitted = f"; {result.n_omitted} sample(s) with NaN predictions omitted" if result.n_omitted else ""
    out += [
        f"{int(o['n']):,} samples{omitted}. Gender: predicted female when p_female > {result.threshold:g}. "
        "Age errors in years; bias = mean(predicted − true) (positive: predicted too old); "
        "CS@k = share of predictions within k years. "
        f"† = fewer than {SMALL_GROUP} samples, read with care.",
        "",
    ]
    if any(FIGURE_SECTIONS.get(name) == "training" for name in images):
        out += ["## Training", "", *_images(images, "training"), ""]

    if "age_group" in result.by_group:
        out += ["## Overall and by age group", "", md_table(result.age_group_table, headline, index_label="age group"), ""]
    else:
        out += ["## Overall", "", md_table(result.age_group_table, headline, index_label="", small=0), ""]
    out += [*_images(images, "overall"), ""] if _images(images, "overall") else []

    out += ["## Gender", ""]
    # confusion rows are gender codes 0, 1 (labelled with the caller's names); metric keys use the schema's suffixes
    per_class = pd.DataFrame(
        {
            "n": result.confusion.sum(axis=1).to_numpy(),
            "gender_precision": [o[f"gender_precision_{k}"] for k in GENDER_KEY_SUFFIXES],
            "gender_recall": [o[f"gender_recall_{k}"] for k in GENDER_KEY_SUFFIXES],
            "gender_f1": [o[f"gender_f1_{k}"] for k in GENDER_KEY_SUFFIXES],
        },
        index=list(result.confusion.index),
    )
    out += [md_table(per_class, list(per_class.columns), index_label="class", small=0), ""]
    cm = result.confusion
    cm_lines = ["| true \\ predicted | " + " | ".join(cm.columns) + " |", "|:---|" + "---:|" * len(cm.columns)]
    for idx, row in cm.iterrows():
        cm_lines.append(f"| {idx} | " + " | ".join(f"{int(v):,}" for v in row) + " |")
    out += ["Confusion matrix (counts):", "", *cm_lines, ""]
    out += [*_images(images, "gender"), ""] if _images(images, "gender") else []

    out += ["## Age by bin", "", md_table(result.by_group["age_bin"], headline, index_label="true age"), ""]
    out += [*_images(images, "bins"), ""] if _images(images, "bins") else []

    out += ["## Fairness", "", "Every metric by group, to see where the model is worse than overall.", ""]
    for col in result.group_columns:
        if col in ("age_group", "age_bin"):
            continue
        label = "true gender" if col == "gender" else col
        table = pd.concat([o.to_frame("overall").T, result.by_group[col]])
        out += [f"### By {label}", "", md_table(table, headline, index_label=label), ""]
    out += [*_images(images, "fairness"), ""] if _images(images, "fairness") else []

    if _images(images, "samples"):
        out += ["## Sample predictions", "", *_images(images, "samples"), ""]
    others = [f"![{n.replace('_', ' ')}]({p})" for n, p in images.items() if n not in FIGURE_SECTIONS]
    if others:
        out += ["## Other figures", "", *others, ""]
    return "\n".join(out).rstrip() + "\n"
