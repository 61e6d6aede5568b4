"""Plots render headless with the expected axes; `write_report` writes the folder the scripts read."""

from __future__ import annotations

import json
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from agegender_eval import (
    evaluate,
    plot_age_scatter,
    plot_confusion_matrix,
    plot_error_distribution,
    plot_fairness,
    plot_mae_by_bin,
    plot_sample_grid,
    plot_training_curves,
    save_figure,
    standard_figures,
    write_report,
)

EPOCHS = 6
HISTORY = {
    key: list(np.linspace(start, end, EPOCHS))
    for key, start, end in [
        ("loss", 30, 10),
        ("val_loss", 32, 12),
        ("age_loss", 300, 60),
        ("val_age_loss", 310, 80),
        ("age_mae", 14, 6),
        ("val_age_mae", 15, 8),
        ("gender_loss", 0.7, 0.3),
        ("val_gender_loss", 0.7, 0.4),
        ("gender_accuracy", 0.6, 0.9),
        ("val_gender_accuracy", 0.6, 0.85),
    ]
}


@pytest.fixture(scope="module")
def result():
    rng = np.random.default_rng(1)
    n = 120
    age = rng.integers(0, 90, n)
    gender = rng.integers(0, 2, n)
    return evaluate(
        {"age": age, "gender": gender},
        {"age": age + rng.normal(0, 4, n), "p_female": rng.random(n)},
        groups={"race": rng.integers(0, 5, n)},
        age_groups={"child": 0, "teen": 10, "adult": 18},
        gender_names={0: "man", 1: "woman"},
        group_names={"race": dict(enumerate("ABCDE"))},
    )


def _axes(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def test_training_curves_from_history_dict_and_csvlogger_frame():
    fig = plot_training_curves(HISTORY, early_stopping_epoch=4)
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in _axes(fig)]
    assert titles == ["Age: MAE", "Age: loss", "Gender: accuracy", "Gender: loss"]
    mae_ax = _axes(fig)[0]
    assert mae_ax.get_xlabel() == "epoch" and mae_ax.get_ylabel() == "MAE (years)"
    labels = [line.get_label() for line in mae_ax.get_lines()]
    assert labels == ["train", "validation", "best epoch, kept (4)"]
    assert list(mae_ax.get_lines()[1].get_ydata()) == HISTORY["val_age_mae"]
    assert list(mae_ax.get_lines()[2].get_xdata()) == [4, 4]

    # CSVLogger rows may come unsorted; `epoch` (0-based) orders them and is not plotted
    frame = pd.DataFrame({"epoch": range(EPOCHS), **HISTORY}).iloc[::-1]
    fig2 = plot_training_curves(frame)
    line = _axes(fig2)[0].get_lines()[0]
    assert list(line.get_xdata()) == list(range(1, EPOCHS + 1))
    assert list(line.get_ydata()) == HISTORY["age_mae"]


def test_training_curves_single_output_and_errors():
    fig = plot_training_curves({"loss": [3, 2, 1], "val_loss": [3, 2.5, 2]})
    assert [ax.get_title() for ax in _axes(fig)] == ["Loss"]
    with pytest.raises(ValueError, match="no epochs"):
        plot_training_curves({})
    with pytest.raises(ValueError, match="one value per epoch"):
        plot_training_curves({"loss": [1, 2], "val_loss": [1]})
    with pytest.raises(ValueError, match="early_stopping_epoch"):
        plot_training_curves(HISTORY, early_stopping_epoch=0)
    with pytest.raises(ValueError, match="expected metrics"):
        plot_training_curves({"lr": [0.1, 0.01]})


def test_training_curves_keep_the_epoch_numbers_of_a_history_with_a_gap():
    # a CSVLogger file of a run whose first phase stopped after epoch 0 and went on at epoch 2
    frame = pd.DataFrame({"epoch": [3, 0, 2], "loss": [1.0, 3.0, 2.0], "val_loss": [1.5, 3.0, 2.5]})
    fig = plot_training_curves(frame, early_stopping_epoch=4)
    (ax,) = _axes(fig)
    assert [list(line.get_xdata()) for line in ax.lines[:2]] == [[1, 3, 4], [1, 3, 4]]
    assert list(ax.lines[1].get_ydata()) == [3.0, 2.5, 1.5]
    with pytest.raises(ValueError, match=r"epochs \(1-based: 1, 3, 4\)"):
        plot_training_curves(frame, early_stopping_epoch=2)


def test_result_plots_have_expected_axes(result):
    scatter = plot_age_scatter(result.samples["age_true"], result.samples["age_pred"])
    ax = _axes(scatter)[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("true age (years)", "predicted age (years)")
    assert "identity (perfect)" in [line.get_label() for line in ax.get_lines()]
    hexbin = plot_age_scatter([1, 2, 3], [2, 2, 2], kind="hexbin")
    assert any(a.get_label() == "<colorbar>" for a in hexbin.axes)

    err = plot_error_distribution(result.samples["age_true"], result.samples["age_pred"], hue=result.samples["age_group"])
    ax = _axes(err)[0]
    assert ax.get_xlabel() == "age error: predicted − true (years)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["child", "teen", "adult"]

    bins = plot_mae_by_bin(result)
    ax = _axes(bins)[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(result.by_group["age_bin"].index)
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx(list(result.by_group["age_bin"]["age_mae"]))

    cm = plot_confusion_matrix(result)
    ax = _axes(cm)[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted gender", "true gender")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["man", "woman"]
    counts = result.confusion.to_numpy()
    assert f"{counts[0, 0]:,}" in [t.get_text().split("\n")[0] for t in ax.texts]

    fair = plot_fairness(result, metrics=("age_mae", "gender_accuracy"))
    assert [ax.get_title() for ax in _axes(fair)[:3]] == ["by age_group", "by gender", "by race"]
    assert len(_axes(fair)) == 6
    with pytest.raises(ValueError, match="metrics"):
        plot_fairness(result, metrics=("nope",))
    with pytest.raises(ValueError, match="by"):
        plot_fairness(result, by=("camera",))


def test_sample_grid_titles_and_validation():
    rng = np.random.default_rng(0)
    images = rng.random((5, 8, 8, 3))
    y_true = {"age": [3, 15, 30, 45, 80], "gender": [0, 1, 0, 1, 0]}
    y_pred = {"age": [4, 15, 40, 45, 80], "p_female": [0.1, 0.2, 0.3, 0.9, 0.4]}
    fig = plot_sample_grid(images, y_true, y_pred, n=4, select="worst", gender_names={0: "M", 1: "F"})
    shown = [ax for ax in fig.axes if ax.get_title()]
    assert len(shown) == 4
    assert shown[0].get_title() == "true 30 M\npred 40 M (0.30)"  # worst age error first
    wrong = [ax for ax in shown if ax.get_title().startswith("true 15 F")]
    assert wrong and wrong[0].title.get_color() != shown[0].title.get_color()
    gray = plot_sample_grid((images[..., :1] * 255).astype("uint8"), y_true, y_pred, n=20)
    assert len([ax for ax in gray.axes if ax.get_title()]) == 5
    assert gray.axes[0].get_title() == "true 3 0\npred 4 0 (0.10)"  # codes without gender_names
    with pytest.raises(ValueError, match="one image per label"):
        plot_sample_grid(images[:3], y_true, y_pred)
    with pytest.raises(ValueError, match="images"):
        plot_sample_grid(np.zeros((5, 8)), y_true, y_pred)
    with pytest.raises(ValueError, match="`n`"):
        plot_sample_grid(images, y_true, y_pred, n=0)


def test_write_report_contract(result, tmp_path):
    figures = standard_figures(result, HISTORY, early_stopping_epoch=5)
    assert set(figures) == {"training_curves", "age_scatter", "error_distribution", "mae_by_bin", "confusion_matrix", "fairness"}
    out = tmp_path / "report"
    path = write_report(result, figures, out, title="Smoke run", extra={"config": {"epochs": 6}, "seed": 1}, formats=("png", "svg"))
    assert path == out / "report.md"
    for name in figures:
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    md = path.read_text()
    assert md.startswith("# Smoke run")
    assert md.index("## Overall and by age group") < md.index("## Age by bin") < md.index("## Fairness")
    for name in figures:
        assert f"]({name}.png)" in md  # relative links
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"n", "gender_accuracy", "age_mae", "age_rmse", "age_cs", "age_mae_by_bin", "by_group"} <= set(metrics)
    assert "5" in metrics["age_cs"] and metrics["n"] == result.n
    assert metrics["seed"] == 1 and metrics["config"] == {"epochs": 6}  # `config` is free for the run config
    assert metrics["age_mae"] == pytest.approx(result.overall["age_mae"])


def test_write_report_without_figures_and_bad_arguments(result, tmp_path):
    path = write_report(result, None, tmp_path)
    assert (tmp_path / "metrics.json").exists() and "![" not in path.read_text()
    with pytest.raises(ValueError, match="file-name safe"):
        write_report(result, {"../evil": Figure()}, tmp_path)
    with pytest.raises(ValueError, match="Figures"):
        write_report(result, {"x": "not a figure"}, tmp_path)
    with pytest.raises(ValueError, match="EvalResult"):
        write_report({"n": 1}, {}, tmp_path)
    with pytest.raises(ValueError, match="overwrite"):
        write_report(result, {}, tmp_path / "new", extra={"n": 3})
    assert not (tmp_path / "new" / "metrics.json").exists()


def test_save_figure_formats(tmp_path):
    fig = plot_age_scatter([1, 2], [1, 3])
    assert save_figure(fig, tmp_path / "a.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match="png"):
        save_figure(fig, tmp_path / "a.jpg")


def test_never_imports_tensorflow_or_sibling_packages():
    code = (
        "import sys, agegender_eval; "
        "bad = [m for m in ('tensorflow', 'keras', 'agegender_models', 'utkface_data') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_standard_figures_from_frames_tuple():
    y_true = {"age": [5, 15, 30, 60], "gender": [0, 1, 0, 1]}
    y_pred = {"age": [6, 14, 33, 55], "p_female": [0.2, 0.7, 0.6, 0.9]}
    figs = standard_figures((y_true, y_pred, {"race": [0, 1, 2, 3]}))
    assert "training_curves" not in figs
    assert [ax.get_title() for ax in _axes(figs["fairness"])][:2] == ["by gender", "by race"]  # no age groups given
    with pytest.raises(ValueError, match="EvalResult"):
        standard_figures([y_true, y_pred])
