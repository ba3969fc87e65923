"""examples/cdnow_clv.py on the real CDNOW data: beats the BG/NBD reference AUC."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cdnow_example_beats_the_bgnbd_reference() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "examples/cdnow_clv.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    auc = float(re.search(r"ROC AUC \(buys again, holdout customers\): ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert auc >= 0.763, out
    assert "23570 customers" in out and "29.9% buy again" in out
    assert "no customer on both sides: True" in out
    model_mae = float(re.search(r"CLV error .*: model ([0-9.]+) \| CLV-measure rate ([0-9.]+) \| training mean ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    baseline = float(re.search(r"training mean ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert model_mae < baseline  # the model's spend forecast beats predicting the average
