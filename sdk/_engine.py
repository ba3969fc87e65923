"""The decision pipeline. PLACEHOLDER: implemented by the decision-engine work (issue 4)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._runtime import LoadedBundle
from ._store import StateStore
from ._types import Decision


def decide(
    bundle: LoadedBundle,
    store: StateStore,
    *,
    customer_id: str,
    channel: str,
    context: Mapping[str, Any] | None,
    profile: Mapping[str, Any] | None,
    limit: int,
    explain: bool,
) -> Decision:
    raise NotImplementedError
