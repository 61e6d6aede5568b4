"""One vocabulary: the age groups, gender names and race names are defined once, in `utkface_data`
(UTKFace's encoding and the project's reporting groups). `agegender_eval` takes them as arguments,
`agegender_models` names only its own output, and the application passes `utkface_data`'s on to
every report. Checked here, across packages."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import utkface_data
from agegender.evaluation import evaluate_predictions

ROOT = Path(__file__).resolve().parents[1]
OWNER = ROOT / "packages" / "utkface-data" / "src" / "utkface_data"
VOCABULARY = ("AGE_GROUPS", "GENDER_NAMES", "RACE_NAMES")
AMBIGUOUS = ("AGE_BINS",)  # meant stratification edges in one package and decades in another


def _sources() -> list[Path]:
    files = sorted((ROOT / "packages").glob("*/src/**/*.py")) + sorted(
        (ROOT / "bench").glob("*.py")
    )
    assert any(OWNER in p.parents for p in files) and len(files) > 10
    return files


def _assigned_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def _vocabulary_literals(tree: ast.AST, words: set[str]) -> set[str]:
    """Words of the vocabulary written as string literals (docstrings aside)."""
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and id(node) not in docstrings and node.value in words
    }


def _words() -> set[str]:
    # gender names are left out: the model's output and the metric keys name the classes
    # themselves (checked against the dataset's names below)
    return set(utkface_data.RACE_NAMES.values()) | set(utkface_data.AGE_GROUPS)


def test_vocabulary_is_defined_once_in_utkface_data() -> None:
    where: dict[str, list[str]] = {name: [] for name in (*VOCABULARY, *AMBIGUOUS)}
    for path in _sources():
        for name in _assigned_names(ast.parse(path.read_text(encoding="utf-8"))) & set(where):
            where[name].append(str(path.relative_to(ROOT)))
    assert all(
        len(where[name]) == 1 and where[name][0].startswith("packages/utkface-data/")
        for name in VOCABULARY
    ), where
    assert not any(where[name] for name in AMBIGUOUS), where


def test_no_copy_of_the_names_under_another_name() -> None:
    words = _words()
    copies = {}
    for path in _sources():
        if OWNER in path.parents:
            continue
        found = _vocabulary_literals(ast.parse(path.read_text(encoding="utf-8")), words)
        if found:
            copies[str(path.relative_to(ROOT))] = sorted(found)
    assert not copies, f"use utkface_data's names instead of copies: {copies}"


def test_the_checks_see_a_copy() -> None:
    source = 'NAMES = {0: "Asian"}\nRACE_NAMES: dict = {}\n"""under 10 in a docstring is fine."""\nx = f"{1} 18+"\n'
    tree = ast.parse(source)
    assert _assigned_names(tree) >= {"NAMES", "RACE_NAMES"}
    assert _vocabulary_literals(tree, _words()) == {"Asian"}


@pytest.fixture(scope="module")
def report() -> tuple[pd.DataFrame, dict]:
    ages = [0, 9, 10, 17, 18, 40, 116, 30, 60, 5]
    frame = pd.DataFrame(
        {"age": ages, "gender": [0, 1] * 5, "race": [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]}
    )
    rng = np.random.default_rng(0)
    predictions = {
        "age": frame["age"] + rng.normal(0, 3, len(frame)),
        "p_female": rng.random(len(frame)),
    }
    result = evaluate_predictions(frame, predictions)
    return frame, result


def test_application_reports_use_utkface_data_names(report) -> None:
    frame, result = report
    metrics = result.to_dict()
    assert list(metrics["by_group"]["age_group"]) == list(utkface_data.AGE_GROUPS)
    assert list(metrics["by_group"]["gender"]) == list(utkface_data.GENDER_NAMES.values())
    assert list(metrics["by_group"]["race"]) == list(utkface_data.RACE_NAMES.values())
    assert metrics["gender_confusion_matrix"]["labels"] == list(utkface_data.GENDER_NAMES.values())
    assert metrics["eval_config"]["age_groups"] == dict(utkface_data.AGE_GROUPS)
    # every sample lands in the group utkface_data's own age_group() gives it
    assert list(result.samples["age_group"].astype(str)) == list(
        utkface_data.age_group(frame["age"])
    )
    assert result.to_markdown().split("\n## ")[1].startswith("Overall and by age group")


def test_class_names_outside_the_dataset_agree_with_its_codes() -> None:
    from agegender_eval import GENDER_KEY_SUFFIXES
    from agegender_models.predict import PREDICTED_GENDER_NAMES

    codes = tuple(utkface_data.GENDER_NAMES[i] for i in (0, 1))
    # the predictor writes "female" for P(female) > threshold, i.e. for the dataset's code 1
    assert codes == PREDICTED_GENDER_NAMES
    # metrics.json keys (gender_f1_female, ...) name code 1 as the dataset does
    assert codes == GENDER_KEY_SUFFIXES
