"""The loyalty ledger. PLACEHOLDER: implemented by the responses/points/sync work (issue 5)."""

from __future__ import annotations

from datetime import datetime

from ._store import StateStore
from ._types import LedgerEntry

SCHEMA: tuple[str, ...] = ()


def award(store: StateStore, customer_id: str, points: int, *, idempotency_key: str, reason: str,
          expires_at: datetime | None) -> LedgerEntry:
    raise NotImplementedError


def redeem(store: StateStore, customer_id: str, points: int, *, idempotency_key: str, reason: str) -> LedgerEntry:
    raise NotImplementedError


def reverse(store: StateStore, entry_id: str, *, idempotency_key: str, reason: str) -> LedgerEntry:
    raise NotImplementedError


def balance(store: StateStore, customer_id: str) -> int:
    raise NotImplementedError
