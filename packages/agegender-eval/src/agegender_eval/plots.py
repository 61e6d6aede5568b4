"""Plots as :class:`matplotlib.figure.Figure` objects (no pyplot state; render headless).

Every function builds its own ``Figure`` (so nothing accumulates in ``pyplot``), validates its
inputs first and returns the figure; save it with :func:`save_figure` or ``fig.savefig``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from agegender_eval.evaluate import EvalResult, evaluate
from agegender_eval.metrics import as_1d, gender_labels, validate_threshold

TRAIN_COLOR = "#1f77b4"
VAL_COLOR = "#ff7f0e"
GOOD = "#2a9d3a"
BAD = "#d62728"

# (history key, panel title, y label); the first matching set wins.
_HEAD_PANELS = (
    ("age_mae", "Age: MAE", "MAE (years)"),
    ("age_loss", "Age: loss", "loss"),
    ("gender_accuracy", "Gender: accuracy", "accuracy"),
    ("gender_loss", "Gender: loss", "loss"),
)
_GENERIC_PANELS = (
    ("mae", "MAE", "MAE (years)"),
    ("accuracy", "Accuracy", "accuracy"),
    ("loss", "Loss", "loss"),
)


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 120) -> Path:
    """Save ``fig``; the format follows the suffix (``.png``, ``.svg``, ``.pdf``)."""
    if not isinstance(fig, Figure):
        raise ValueError(f"`fig` must be a matplotlib Figure. Received: fig of type {type(fig).__name__}")
    p = Path(path)
    if p.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ValueError(f"`path` must end in .png, .svg or .pdf. Received: path={str(path)!r}")
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=dpi)
    return p


# ------------------------------------------------------------------------------ training curves


def _history_frame(history: Any) -> pd.DataFrame:
    """The history as a DataFrame with one row per epoch and a 0-based ``epoch`` column."""
    if hasattr(history, "history") and isinstance(history.history, Mapping):
        history = history.history  # a keras.callbacks.History object
    if isinstance(history, pd.DataFrame):
        df = history.copy()
        if "epoch" in df.columns:
            df = df.sort_values("epoch")
        df = df.reset_index(drop=True)
    elif isinstance(history, Mapping):
        lengths = {str(k): len(v) for k, v in history.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"Every metric in `history` must have one value per epoch. Received: lengths {lengths}")
        df = pd.DataFrame({str(k): list(v) for k, v in history.items()})
    else:
        raise ValueError(
            "`history` must be a Keras History.history dict, a History, or a CSVLogger DataFrame. "
            f"Received: history of type {type(history).__name__}"
        )
    if df.empty or len(df.columns.drop("epoch", errors="ignore")) == 0:
        raise ValueError(f"`history` has no epochs. Received: history with columns {list(df.columns)} and {len(df)} rows")
    if "epoch" not in df.columns:
        df["epoch"] = range(len(df))
    return df


def _span(epochs: np.ndarray) -> str:
    contiguous = len(epochs) == epochs[-1] - epochs[0] + 1
    return f"{epochs[0]}-{epochs[-1]}" if contiguous else ", ".join(map(str, epochs))


def plot_training_curves(history: Any, *, early_stopping_epoch: int | None = None, title: str | None = None) -> Figure:
    """Train vs validation curves per epoch: age MAE and loss, gender accuracy and loss.

    ``history`` is ``History.history`` (metric → list per epoch), a ``History``, or the DataFrame of
    a Keras ``CSVLogger`` file (its ``epoch`` column is used for ordering). Panels are drawn for the
    keys present (``age_mae``, ``age_loss``, ``gender_accuracy``, ``gender_loss``; a single-output
    model falls back to ``mae``/``accuracy``/``loss``). Epochs are shown 1-based;
    ``early_stopping_epoch`` (1-based, e.g. the best epoch restored by ``EarlyStopping``) is marked
    with a dashed vertical line. A CSVLogger history may skip epochs (a phase stopped early):
    they are drawn at their own epoch numbers.
    """
    df = _history_frame(history)
    n_epochs = len(df)
    epochs = df["epoch"].to_numpy(dtype=int) + 1
    if early_stopping_epoch is not None and (
        isinstance(early_stopping_epoch, bool)
        or not isinstance(early_stopping_epoch, int | np.integer)
        or early_stopping_epoch not in epochs
    ):
        raise ValueError(
            f"`early_stopping_epoch` must be one of the history's epochs (1-based: {_span(epochs)}). "
            f"Received: early_stopping_epoch={early_stopping_epoch!r}"
        )
    panels = [p for p in _HEAD_PANELS if p[0] in df.columns or f"val_{p[0]}" in df.columns]
    if not panels:
        panels = [p for p in _GENERIC_PANELS if p[0] in df.columns or f"val_{p[0]}" in df.columns]
    if not panels:
        raise ValueError(
            "`history` has none of the expected metrics (age_mae, age_loss, gender_accuracy, gender_loss, "
            f"mae, accuracy, loss). Received: history keys {list(df.columns)}"
        )
    ncols = 2 if len(panels) > 1 else 1
    nrows = int(np.ceil(len(panels) / ncols))
    fig = _new_figure(5.2 * ncols, 3.4 * nrows)
    with sns.axes_style("whitegrid"):
        axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (key, panel_title, ylabel) in zip(axes.flat, panels, strict=False):
        if key in df.columns:
            ax.plot(epochs, df[key], color=TRAIN_COLOR, marker="o", ms=3, label="train")
        if f"val_{key}" in df.columns:
            ax.plot(epochs, df[f"val_{key}"], color=VAL_COLOR, marker="o", ms=3, label="validation")
        if early_stopping_epoch is not None:
            ax.axvline(early_stopping_epoch, color="grey", ls="--", lw=1.2, label=f"best epoch, kept ({early_stopping_epoch})")
        ax.set_title(panel_title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if n_epochs <= 20:
            ax.set_xticks(epochs)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


# ------------------------------------------------------------------------------------ age plots


def _age_pair(age_true: Any, age_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    t = as_1d(age_true, "age_true")
    p = as_1d(age_pred, "age_pred")
    if len(t) != len(p):
        raise ValueError(f"`age_true` and `age_pred` must have the same length. Received: {len(t)} and {len(p)}")
    if len(t) == 0:
        raise ValueError("Nothing to plot. Received: empty age_true/age_pred")
    ok = np.isfinite(t) & np.isfinite(p)
    if not ok.all():
        raise ValueError(f"`age_true`/`age_pred` must be finite. Received: {int((~ok).sum())} NaN/inf value(s)")
    return t, p


def plot_age_scatter(age_true: Any, age_pred: Any, *, kind: str = "auto", title: str | None = None) -> Figure:
    """Predicted vs true age with the identity line; ``kind`` "scatter", "hexbin" or "auto" (hexbin above 2,000 points)."""
    if kind not in ("auto", "scatter", "hexbin"):
        raise ValueError(f"`kind` must be 'auto', 'scatter' or 'hexbin'. Received: kind={kind!r}")
    t, p = _age_pair(age_true, age_pred)
    if kind == "auto":
        kind = "hexbin" if len(t) > 2000 else "scatter"
    fig = _new_figure(5.5, 5.0)
    with sns.axes_style("whitegrid"):
        ax = fig.add_subplot()
    lo = float(min(t.min(), p.min(), 0))
    hi = float(max(t.max(), p.max())) + 1
    if kind == "hexbin":
        hb = ax.hexbin(t, p, gridsize=40, cmap="viridis", mincnt=1, extent=(lo, hi, lo, hi))
        fig.colorbar(hb, ax=ax, label="count")
    else:
        ax.scatter(t, p, s=10, alpha=0.5, color=TRAIN_COLOR, edgecolors="none")
    ax.plot([lo, hi], [lo, hi], color="black", ls="--", lw=1, label="identity (perfect)")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("true age (years)")
    ax.set_ylabel("predicted age (years)")
    mae = float(np.mean(np.abs(p - t)))
    ax.set_title(title or f"Predicted vs true age (n={len(t):,}, MAE {mae:.2f})")
    ax.legend(loc="upper left", fontsize="small")
    return fig


def plot_error_distribution(
    age_true: Any,
    age_pred: Any,
    *,
    hue: Sequence[Any] | None = None,
    hue_label: str = "group",
    bins: int = 40,
    title: str | None = None,
) -> Figure:
    """Histogram of the signed age error (predicted − true), optionally split by ``hue`` (e.g. age group).

    Each group is normalised on its own (percent of that group), so small groups stay visible.
    """
    t, p = _age_pair(age_true, age_pred)
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"`bins` must be a positive int. Received: bins={bins!r}")
    err = p - t
    data = pd.DataFrame({"error": err})
    if hue is not None:
        h = pd.Series(hue).reset_index(drop=True)
        if len(h) != len(err):
            raise ValueError(f"`hue` must have one value per sample ({len(err)}). Received: len(hue)={len(h)}")
        if isinstance(h.dtype, pd.CategoricalDtype):
            order = [str(c) for c in h.cat.remove_unused_categories().cat.categories]
        else:
            order = [str(c) for c in pd.unique(h)]
        data[hue_label] = pd.Categorical(h.astype(str), categories=order, ordered=True)
    fig = _new_figure(6.5, 4.0)
    with sns.axes_style("whitegrid"):
        ax = fig.add_subplot()
    sns.histplot(
        data=data,
        x="error",
        hue=hue_label if hue is not None else None,
        bins=int(bins),
        element="step" if hue is not None else "bars",
        stat="percent",
        common_norm=False,
        ax=ax,
        color=TRAIN_COLOR,
    )
    ax.axvline(0, color="black", lw=1)
    ax.axvline(float(err.mean()), color=BAD, ls="--", lw=1.2, label=f"mean (bias) {err.mean():+.2f}")
    ax.set_xlabel("age error: predicted − true (years)")
    ax.set_ylabel("share of samples (%)")
    ax.set_title(title or f"Age error distribution (n={len(err):,}, bias {err.mean():+.2f})")
    if hue is None:
        ax.legend(fontsize="small")
    return fig


def _result_or_table(obj: Any, key: str, what: str) -> pd.DataFrame:
    if isinstance(obj, EvalResult):
        return obj.by_group[key]
    if isinstance(obj, pd.DataFrame):
        return obj
    raise ValueError(f"`{what}` must be an EvalResult or a DataFrame. Received: {what} of type {type(obj).__name__}")


def plot_mae_by_bin(result: EvalResult | pd.DataFrame, *, title: str | None = None) -> Figure:
    """Bar chart of age MAE per true-age bin, with the sample count on each bar and the overall MAE.

    Takes an :class:`EvalResult` or a DataFrame indexed by bin with columns ``n`` and ``age_mae``
    (e.g. :func:`~agegender_eval.metrics.mae_by_bin`).
    """
    table = _result_or_table(result, "age_bin", "result")
    missing = {"n", "age_mae"} - set(table.columns)
    if missing:
        raise ValueError(f"The bin table needs columns 'n' and 'age_mae'. Received: columns {list(table.columns)}")
    if table.empty:
        raise ValueError("Nothing to plot. Received: an empty bin table")
    fig = _new_figure(max(6.0, 0.7 * len(table) + 2), 4.0)
    with sns.axes_style("whitegrid"):
        ax = fig.add_subplot()
    labels = [str(i) for i in table.index]
    mae = table["age_mae"].to_numpy(dtype=float)
    bars = ax.bar(labels, np.nan_to_num(mae), color=TRAIN_COLOR)
    for bar, n in zip(bars, table["n"], strict=True):
        ax.annotate(f"n={int(n):,}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    if isinstance(result, EvalResult):
        overall = float(result.overall["age_mae"])
    else:
        w = table["n"].to_numpy(dtype=float)
        ok = np.isfinite(mae)
        overall = float(np.sum(mae[ok] * w[ok]) / np.sum(w[ok])) if w[ok].sum() else float("nan")
    if np.isfinite(overall):
        ax.axhline(overall, color=BAD, ls="--", lw=1.2, label=f"overall MAE {overall:.2f}")
        ax.legend(fontsize="small")
    ax.set_xlabel("true age (years)")
    ax.set_ylabel("MAE (years)")
    ax.set_title(title or "Age MAE by true-age bin")
    ax.margins(y=0.12)
    return fig


# -------------------------------------------------------------------------------- gender plots


def plot_confusion_matrix(result: EvalResult | pd.DataFrame | np.ndarray, *, normalize: bool = True, title: str | None = None) -> Figure:
    """Heatmap of the 2×2 gender confusion matrix (rows true, columns predicted).

    Cells show the count and, with ``normalize=True``, the share of the true class (row %),
    which the colour encodes.
    """
    if isinstance(result, EvalResult):
        cm = result.confusion.to_numpy()
        labels = [str(c) for c in result.confusion.columns]
    else:
        cm = np.asarray(result)
        labels = [str(c) for c in result.columns] if isinstance(result, pd.DataFrame) else list(gender_labels(None))
    if cm.shape != (2, 2) or not np.isfinite(cm.astype(float)).all() or (cm < 0).any():
        raise ValueError(f"The confusion matrix must be 2×2 non-negative counts. Received: shape {cm.shape}")
    counts = cm.astype(float)
    row = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, row, out=np.zeros_like(counts), where=row > 0)
    annot = np.array(
        [[f"{int(c):,}\n({100 * s:.1f} %)" if normalize else f"{int(c):,}" for c, s in zip(cr, sr, strict=True)] for cr, sr in zip(counts, share, strict=True)]
    )
    fig = _new_figure(4.8, 4.0)
    ax = fig.add_subplot()
    sns.heatmap(
        share if normalize else counts,
        annot=annot,
        fmt="",
        cmap="Blues",
        vmin=0,
        vmax=1 if normalize else None,
        xticklabels=labels,
        yticklabels=labels,
        cbar_kws={"label": "share of true class" if normalize else "count"},
        ax=ax,
        square=True,
    )
    ax.set_xlabel("predicted gender")
    ax.set_ylabel("true gender")
    acc = np.trace(counts) / counts.sum() if counts.sum() else float("nan")
    ax.set_title(title or f"Gender confusion matrix (accuracy {100 * acc:.1f} %)")
    return fig


# ------------------------------------------------------------------------------------ fairness


def plot_fairness(
    result: EvalResult,
    *,
    metrics: Sequence[str] = ("age_mae", "gender_accuracy"),
    by: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Bar charts of ``metrics`` (rows) by group (columns: ``age_group``, ``gender``, ``race``, …).

    The dashed line is the overall value; counts are written under each group name.
    """
    if not isinstance(result, EvalResult):
        raise ValueError(f"`result` must be an EvalResult. Received: result of type {type(result).__name__}")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in metrics if m not in result.overall.index or m == "n"]
    if not metrics or unknown:
        raise ValueError(f"`metrics` must be metric names of the result {list(result.overall.index[1:])}. Received: metrics={metrics!r}")
    if by is None:
        by = [c for c in result.group_columns if c != "age_bin"]
    by = [by] if isinstance(by, str) else list(by)
    missing = [b for b in by if b not in result.by_group]
    if not by or missing:
        raise ValueError(f"`by` must name breakdowns of the result {list(result.by_group)}. Received: by={by!r}")
    widths = [max(2.2, 0.55 * len(result.by_group[b]) + 1.0) for b in by]
    fig = _new_figure(sum(widths) + 1, 3.2 * len(metrics))
    with sns.axes_style("whitegrid"):
        axes = fig.subplots(len(metrics), len(by), squeeze=False, gridspec_kw={"width_ratios": widths})
    for i, metric in enumerate(metrics):
        for j, col in enumerate(by):
            ax = axes[i, j]
            table = result.by_group[col]
            vals = table[metric].to_numpy(dtype=float)
            names = [f"{idx}\nn={int(n):,}" for idx, n in zip(table.index, table["n"], strict=True)]
            palette = sns.color_palette("deep", len(table))
            ax.bar(names, np.nan_to_num(vals), color=palette)
            ax.axhline(float(result.overall[metric]), color="black", ls="--", lw=1, label="overall")
            ax.tick_params(axis="x", labelsize=8)
            if i == 0:
                ax.set_title(f"by {col}")
            if j == 0:
                ax.set_ylabel(_metric_label(metric))
            if metric.startswith("gender_") or metric.startswith("age_cs_"):
                ax.set_ylim(0, 1.05)
            if i == 0 and j == len(by) - 1:
                ax.legend(fontsize="small", loc="lower right")
    fig.suptitle(title or "Fairness: metrics by group")
    return fig


def _metric_label(metric: str) -> str:
    labels = {
        "age_mae": "age MAE (years)",
        "age_rmse": "age RMSE (years)",
        "age_bias": "age bias (years)",
        "gender_accuracy": "gender accuracy",
    }
    if metric in labels:
        return labels[metric]
    if metric.startswith("age_cs_"):
        return f"CS@{metric[len('age_cs_'):]} (share)"
    return metric.replace("_", " ")


# --------------------------------------------------------------------------------- sample grid


def _images_array(images: Any) -> np.ndarray:
    arr = np.asarray(images)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] not in (3, 4)):
        raise ValueError(f"`images` must be (N, H, W), (N, H, W, 1) or (N, H, W, 3). Received: shape {arr.shape}")
    if arr.dtype.kind not in "uif":
        raise ValueError(f"`images` must be numeric. Received: dtype {arr.dtype}")
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        top = float(arr[finite].max()) if finite.any() else 1.0
        arr = np.clip(arr / 255.0 if top > 1.0 else arr, 0.0, 1.0)
    return arr


def plot_sample_grid(
    images: Any,
    y_true: Mapping[str, Any] | pd.DataFrame,
    y_pred: Mapping[str, Any] | pd.DataFrame,
    *,
    n: int = 16,
    ncols: int | None = None,
    threshold: float = 0.5,
    select: str = "first",
    seed: int = 0,
    gender_names: Mapping[int, str] | None = None,
) -> Figure:
    """Grid of faces titled with true and predicted labels (green: gender right, red: wrong).

    ``images``: (N, H, W[, C]) uint8 or float (0–1 or 0–255). ``y_true``/``y_pred`` as for
    :func:`~agegender_eval.evaluate.evaluate`. ``select``: ``"first"`` n, ``"random"`` n
    (``seed``), or ``"worst"`` n by absolute age error. ``gender_names``: how the gender codes
    0, 1 are written in the titles (e.g. ``{0: "M", 1: "F"}``); the codes without it.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"`n` must be a positive int. Received: n={n!r}")
    if select not in ("first", "random", "worst"):
        raise ValueError(f"`select` must be 'first', 'random' or 'worst'. Received: select={select!r}")
    if ncols is not None and (isinstance(ncols, bool) or not isinstance(ncols, int | np.integer) or ncols < 1):
        raise ValueError(f"`ncols` must be a positive int. Received: ncols={ncols!r}")
    thr = validate_threshold(threshold)
    short = gender_labels(gender_names)
    imgs = _images_array(images)
    result = evaluate(y_true, y_pred, threshold=thr)  # validates labels/predictions and lengths
    s = result.samples
    if len(imgs) != len(s):
        raise ValueError(f"`images` must have one image per label. Received: {len(imgs)} images, {len(s)} labels")
    k = min(int(n), len(s))
    if select == "first":
        idx = np.arange(k)
    elif select == "random":
        idx = np.sort(np.random.default_rng(seed).choice(len(s), size=k, replace=False))
    else:
        idx = np.argsort(-np.abs(s["age_error"].to_numpy()), kind="stable")[:k]
    cols = int(ncols) if ncols else int(min(k, max(1, int(np.ceil(np.sqrt(k))))))
    rows = int(np.ceil(k / cols))
    fig = _new_figure(2.1 * cols, 2.5 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, i in zip(axes.flat, idx, strict=False):
        row = s.iloc[int(i)]
        img = imgs[int(i)]
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0 if img.ndim == 2 else None, vmax=(255 if img.dtype.kind in "ui" else 1) if img.ndim == 2 else None)
        ok = int(row["gender_true"]) == int(row["gender_pred"])
        ax.set_title(
            f"true {row['age_true']:.0f} {short[int(row['gender_true'])]}\n"
            f"pred {row['age_pred']:.0f} {short[int(row['gender_pred'])]} ({row['p_female']:.2f})",
            fontsize=9,
            color=GOOD if ok else BAD,
        )
    fig.suptitle("Sample predictions: true vs predicted age, gender (p_female)", fontsize=10)
    return fig


# ------------------------------------------------------------------------------------- bundle


def standard_figures(result_or_frames: Any, history: Any = None, *, early_stopping_epoch: int | None = None) -> dict[str, Figure]:
    """The figures of a full report, name → Figure.

    ``result_or_frames`` is an :class:`EvalResult` or a ``(y_true, y_pred)`` / ``(y_true, y_pred,
    groups)`` tuple passed to :func:`evaluate` (with its defaults: no age groups, codes as labels).
    Names: ``training_curves`` (only with ``history``), ``age_scatter``, ``error_distribution``
    (split by age group when the result has them), ``mae_by_bin``, ``confusion_matrix``, ``fairness``.
    """
    if isinstance(result_or_frames, EvalResult):
        result = result_or_frames
    elif isinstance(result_or_frames, tuple) and len(result_or_frames) in (2, 3):
        result = evaluate(*result_or_frames[:2], groups=result_or_frames[2] if len(result_or_frames) == 3 else None)
    else:
        raise ValueError(
            "`result_or_frames` must be an EvalResult or a (y_true, y_pred[, groups]) tuple. "
            f"Received: {type(result_or_frames).__name__}"
        )
    s = result.samples
    figs: dict[str, Figure] = {}
    if history is not None:
        figs["training_curves"] = plot_training_curves(history, early_stopping_epoch=early_stopping_epoch)
    figs["age_scatter"] = plot_age_scatter(s["age_true"], s["age_pred"])
    if "age_group" in s:
        figs["error_distribution"] = plot_error_distribution(s["age_true"], s["age_pred"], hue=s["age_group"], hue_label="age group")
    else:
        figs["error_distribution"] = plot_error_distribution(s["age_true"], s["age_pred"])
    figs["mae_by_bin"] = plot_mae_by_bin(result)
    figs["confusion_matrix"] = plot_confusion_matrix(result)
    figs["fairness"] = plot_fairness(result)
    return figs
