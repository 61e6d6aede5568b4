"""Evaluate a model on labelled UTKFace images: predictions, metrics, the report.

Composes ``utkface_data`` (the images, as ``tf.data``) and ``agegender_eval`` (metrics, plots,
report) around a Keras model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import agegender_eval
import utkface_data


def predict_frame(model, frame, root: Path, *, image_size: int, batch_size: int = 64) -> dict[str, Any]:
    """Predict age and P(female) for every row of a split frame (in order)."""
    import numpy as np

    dataset = utkface_data.make_dataset(
        frame, root=root, image_size=(image_size, image_size), batch_size=batch_size, scaling="uint8"
    )
    # (images, labels) batches: predict uses the images. No dataset.map here: AutoGraph would
    # read this file's source while running, wrong if the file changed since the start
    outputs = model.predict(dataset, verbose=0)
    return {
        "age": np.asarray(outputs["age"], dtype="float64").reshape(-1),
        "p_female": np.asarray(outputs["gender"], dtype="float64").reshape(-1),
    }


def evaluate_predictions(frame, predictions: dict[str, Any]):
    """Score predictions for the rows of a split frame (in order), with the dataset's vocabulary:
    ``utkface_data``'s age groups, gender names and race names label every breakdown of the report."""
    frame = frame.reset_index(drop=True)
    return agegender_eval.evaluate(
        frame[["age", "gender"]],
        predictions,
        groups=frame[["race"]],
        age_groups=utkface_data.AGE_GROUPS,
        gender_names=utkface_data.GENDER_NAMES,
        group_names={"race": utkface_data.RACE_NAMES},
    )


def evaluate_frame(model, frame, root: Path, *, image_size: int, batch_size: int = 64):
    """Evaluate a model on a split frame; returns an ``agegender_eval`` result and the predictions."""
    predictions = predict_frame(model, frame, root, image_size=image_size, batch_size=batch_size)
    return evaluate_predictions(frame, predictions), predictions


def write_evaluation(model, frame, root: Path, out: Path, *, image_size: int, title: str,
                     history=None, best_epoch: int | None = None, extra: dict[str, Any] | None = None):
    """Evaluate on ``frame`` and write ``out/report.md``, ``out/metrics.json``, the plots and
    ``out/predictions.csv`` (one row per image: its labels, predicted age and P(female), for error
    analysis without running the model again)."""
    result, predictions = evaluate_frame(model, frame, root, image_size=image_size)
    figures = agegender_eval.standard_figures(result, history=history, early_stopping_epoch=best_epoch)
    agegender_eval.write_report(result, figures, out, title=title, extra=extra)
    rows = frame.reset_index(drop=True)[["path", "age", "gender", "race"]].assign(
        age_pred=predictions["age"], p_female=predictions["p_female"])
    rows.to_csv(Path(out) / "predictions.csv", index=False)
    return result


def format_summary(metrics: dict[str, Any]) -> str:
    """A short human summary of results (overall and by age group): ``metrics`` maps a label
    (e.g. "validation", "test") to an ``agegender_eval`` result dict."""
    lines = []
    for split, result in metrics.items():
        if not isinstance(result, dict) or "gender_accuracy" not in result:
            continue
        lines.append(
            f"{split:>10}: gender accuracy {result['gender_accuracy']:.3f}, age MAE "
            f"{result['age_mae']:.2f}, CS@5 {result['age_cs']['5']:.3f} (n={result['n']})"
        )
        for group, values in result.get("by_group", {}).get("age_group", {}).items():
            lines.append(
                f"{'':>10}  {group:>8}: gender accuracy {values['gender_accuracy']:.3f}, "
                f"age MAE {values['age_mae']:.2f} (n={values['n']})"
            )
    return "\n".join(lines)
