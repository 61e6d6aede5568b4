"""bench/eval_photos.py's age-group figure: FairFace groups read from labels.csv, edges counted right."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "eval_photos", Path(__file__).resolve().parents[1] / "bench" / "eval_photos.py")
eval_photos = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(eval_photos)


def test_age_groups_are_read_from_the_notes(tmp_path):
    (tmp_path / "labels.csv").write_text(
        "file,gender,age,source,notes\n"
        'a.jpg,female,,x,"FairFace age_group=3-9; crop"\n'
        'b.jpg,male,,x,"FairFace age_group=70+; crop"\n'
        "c.jpg,male,,x,portrait\n", encoding="utf-8")
    assert eval_photos._age_groups(tmp_path) == {"a.jpg": (3, 9), "b.jpg": (70, None)}


def test_age_group_edges_and_distances():
    groups = {"a.jpg": (3, 9), "b.jpg": (3, 9), "c.jpg": (20, 29), "d.jpg": (70, None), "e.jpg": (0, 2)}
    faces = {"/p/a.jpg": {"age": 9.9}, "/p/b.jpg": {"age": 12.0}, "/p/c.jpg": {"age": 18.5},
             "/p/d.jpg": {"age": 95.0}}  # e.jpg: no face found, not counted
    out = eval_photos.summarise_age_groups(groups, faces)
    assert out["all"]["photos"] == 4
    assert out["all"]["within_group"] == pytest.approx(0.5)
    # b: 12.0 is 2.0 past 10 (the end of 3-9); c: 18.5 is 1.5 before 20
    assert out["all"]["mean_years_outside"] == pytest.approx((0 + 2.0 + 1.5 + 0) / 4, abs=0.01)
    assert out["all"]["mean_years_outside_when_outside"] == pytest.approx((2.0 + 1.5) / 2, abs=0.01)
    assert out["0-9"] == {"photos": 2, "within_group": 0.5, "mean_years_outside": 1.0,
                          "mean_years_outside_when_outside": 2.0}
    assert out["20+"]["within_group"] == pytest.approx(0.5)
    assert out["10-19"]["photos"] == 0 and out["10-19"]["within_group"] is None
    assert out["20+"]["photos"] == 2
