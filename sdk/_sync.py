"""Sync client. PLACEHOLDER: implemented by the sync work (issue 5)."""

from __future__ import annotations

from typing import Any

from ._types import SyncReport


def sync(client: Any, target: str, *, token: str, **options: Any) -> SyncReport:
    raise NotImplementedError
