"""Real-data smoke run (``nox -s slow``): a few hundred real UTKFace chips through the whole stack."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agegender.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("UTKFACE_DIR", ROOT.parent / "shared" / "utkface" / "crop_part1_5000"))

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not DATA.is_dir(), reason=f"real UTKFace folder not found: {DATA}"),
]


def test_model_a_smoke_on_real_images(tmp_path: Path) -> None:
    out = tmp_path / "model_a"
    metrics = train(
        TrainConfig(out=str(out), data_dir=str(DATA), n=300, epochs=2, image_size=64, seed=0),
        verbose=0,
    )
    config = json.loads((out / "config.json").read_text())
    # the two malformed names of crop_part1 are quarantined and reported
    assert len(config["index_report"]["quarantined"]) == 2
    assert config["split_sizes"] == {"train": 210, "val": 45, "test": 45}
    assert metrics["epochs_run"] == 2
    for split in ("validation", "test"):
        result = metrics[split]
        assert 0.0 <= result["gender_accuracy"] <= 1.0
        # a smoke bound, not a quality bar: predicting the mean age gives about 20 years here,
        # while outputs stuck at a bound (0 or 120) or NaN from a broken pipeline do not pass
        assert result["age_mae"] < 30.0
        assert set(result["by_group"]["age_group"]) == {"under 10", "10–17", "18+"}
    assert (out / "report" / "report.md").is_file()
