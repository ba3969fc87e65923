"""Responses, purchases and the outbox view. PLACEHOLDER: issue 5 work."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from ._store import StateStore

SCHEMA: tuple[str, ...] = ()


def record_response(store: StateStore, decision_id: str, offer_id: str, outcome: str) -> None:
    raise NotImplementedError


def record_purchase(store: StateStore, customer_id: str, *, amount: Decimal | str, idempotency_key: str,
                    timestamp: datetime | None, quantity: int) -> None:
    raise NotImplementedError


def pending_events(store: StateStore) -> int:
    raise NotImplementedError
