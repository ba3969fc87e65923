"""Payment-linked records. PLACEHOLDER: implemented by the responses/points/sync work (issue 5)."""

from __future__ import annotations

from decimal import Decimal

from ._store import StateStore
from ._types import PaymentRecord

SCHEMA: tuple[str, ...] = ()


def record_payment(store: StateStore, customer_id: str, *, payment_token: str, amount: Decimal | str,
                   currency: str, idempotency_key: str, store_id: str | None, decision_id: str | None,
                   offer_id: str | None) -> PaymentRecord:
    raise NotImplementedError
