"""Metrics, reports and plots for age and gender predictions.

Works on plain arrays, pandas DataFrames and Keras ``History.history`` dicts; it never imports
TensorFlow/Keras or the other agegender packages: a dataset's vocabulary (age groups, gender and
race names) is passed in by the caller (``evaluate(age_groups=..., gender_names=..., group_names=...)``).

>>> from agegender_eval import evaluate, write_report
"""

from agegender_eval.evaluate import BUILTIN_GROUPS, SCHEMA_VERSION, EvalResult, evaluate
from agegender_eval.metrics import (
    AGE_DECADE_EDGES,
    DEFAULT_CS_KS,
    GENDER_KEY_SUFFIXES,
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
from agegender_eval.plots import (
    plot_age_scatter,
    plot_confusion_matrix,
    plot_error_distribution,
    plot_fairness,
    plot_mae_by_bin,
    plot_sample_grid,
    plot_training_curves,
    save_figure,
    standard_figures,
)
from agegender_eval.report import write_report

__version__ = "0.1.0"

__all__ = [
    "AGE_DECADE_EDGES",
    "BUILTIN_GROUPS",
    "DEFAULT_CS_KS",
    "GENDER_KEY_SUFFIXES",
    "SCHEMA_VERSION",
    "EvalResult",
    "age_metrics",
    "assign_age_bins",
    "confusion_matrix",
    "cumulative_score",
    "evaluate",
    "gender_metrics",
    "mae_by_bin",
    "mean_absolute_error",
    "mean_signed_error",
    "plot_age_scatter",
    "plot_confusion_matrix",
    "plot_error_distribution",
    "plot_fairness",
    "plot_mae_by_bin",
    "plot_sample_grid",
    "plot_training_curves",
    "root_mean_squared_error",
    "save_figure",
    "standard_figures",
    "write_report",
]
