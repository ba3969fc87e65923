"""`nbo publish`. PLACEHOLDER until implemented by the gateway work (issue 6)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    del sub
