"""Defaults the docs state must be the code's defaults (docs/sync.md once said 500 after the
SDK's sync batch had become 2,000)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from nbo.sdk import ClientConfig

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _as_number(text: str) -> int:
    number, unit = re.fullmatch(r"([\d,]+)\s*(MiB|KiB)?", text.strip()).groups()  # type: ignore[union-attr]
    return int(number.replace(",", "")) * {None: 1, "KiB": 1024, "MiB": 1024 * 1024}[unit]


@pytest.mark.parametrize("field", ["sync_batch_size", "decision_log_budget_bytes"])
def test_every_stated_default_of_client_config_is_the_code_default(field: str) -> None:
    expected = getattr(ClientConfig(), field)
    stated = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for match in re.finditer(rf"`(?:ClientConfig\.)?{field}`\s*\(default ([\d,]+(?:\s*[KM]iB)?)", text):
            stated.append((doc.name, _as_number(match.group(1))))
    assert stated, f"no doc states the default of {field}"
    assert all(value == expected for _, value in stated), (expected, stated)
