"""The libraries cannot import each other's constants (one-way arrows), so the definitions that
reports put side by side -- age groups, race and gender names -- are checked to agree here."""

from __future__ import annotations

import numpy as np

import agegender_eval
import utkface_data
from agegender_models.predict import GENDERS

AGES = [0, 9, 10, 17, 18, 45, 116]


def test_age_groups_agree() -> None:
    assert tuple(agegender_eval.AGE_GROUPS) == utkface_data.AGE_GROUPS
    from_data = list(utkface_data.age_group(AGES))
    from_eval = list(agegender_eval.assign_age_bins(np.array(AGES), agegender_eval.AGE_GROUPS))
    assert from_data == from_eval == ["under 10", "under 10", "10–17", "10–17", "18+", "18+", "18+"]


def test_race_and_gender_names_agree() -> None:
    assert agegender_eval.RACE_NAMES == utkface_data.RACE_NAMES
    assert agegender_eval.GENDER_NAMES == utkface_data.GENDER_NAMES
    assert tuple(utkface_data.GENDER_NAMES[i] for i in (0, 1)) == GENDERS
