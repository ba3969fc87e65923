"""The golden decision cases (tests/golden/decide_cases.json) and how to check an answer against
one: shared by the pure-core, Client and gateway runs of the cases."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

CASES = json.loads((Path(__file__).parent / "golden" / "decide_cases.json").read_text())["cases"]
DEFAULT_NOW = "2026-03-02T10:00:00Z"
DAY = 86_400.0


def case_now(case: dict[str, Any]) -> float:
    return datetime.fromisoformat(case.get("now", DEFAULT_NOW).replace("Z", "+00:00")).timestamp()


def case_history(case: dict[str, Any]) -> list[tuple[str, str, str, str, float]]:
    now = case_now(case)
    return [(h["offer_id"], h["category"], h["channel"], h["event"], now - h["days_ago"] * DAY)
            for h in case.get("history", [])]


def check_case(case: dict[str, Any], offers: list[tuple[str, float]], strategy: str,
           excluded: list[tuple[str, str, str, str]]) -> None:
    expected = case["expected"]
    assert [o for o, _ in offers] == expected["offers"], case["name"]
    assert [s for _, s in offers] == pytest.approx(expected["scores"]), case["name"]
    assert strategy == expected["strategy"], case["name"]
    assert [e[:3] for e in excluded] == [tuple(x[:3]) for x in expected["excluded"]], case["name"]
    for got, want in zip(excluded, expected["excluded"], strict=True):
        if len(want) > 3:
            assert got[3].startswith(want[3]), (case["name"], got)
