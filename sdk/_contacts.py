"""Profiles, contact history and decision records over the state-store seam.

Written once against :class:`~._store.Tx` with portable SQL (``?`` placeholders, JSON as
TEXT, epoch seconds as DOUBLE PRECISION), so a device's SQLite store and the gateway's hub
store (SQLite or PostgreSQL) run the same code. Tables come from ``CORE_SCHEMA``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ._errors import StateError
from ._store import Tx

__all__ = ["contact_history", "load_profile", "record_decision"]


def load_profile(tx: Tx, customer_id: str) -> dict[str, Any]:
    """The stored profile of ``customer_id``; empty when the customer is unknown."""
    rows = tx.execute("SELECT profile FROM profiles WHERE customer_id = ?", (customer_id,))
    if not rows:
        return {}
    try:
        profile = json.loads(rows[0][0])
    except (TypeError, json.JSONDecodeError) as exc:
        raise StateError(f"stored profile of customer {customer_id!r} is not valid JSON: {exc}") from exc
    if not isinstance(profile, dict):
        raise StateError(f"stored profile of customer {customer_id!r} is not a JSON object")
    return profile


def contact_history(tx: Tx, customer_id: str, *, since: float) -> list[tuple[str, str, str, str, float]]:
    """The customer's contact events at or after ``since``: (offer_id, category, channel, event, ts)."""
    rows = tx.execute(
        "SELECT offer_id, category, channel, event, ts FROM contact_history WHERE customer_id = ? AND ts >= ?",
        (customer_id, since),
    )
    # the columns are NOT NULL TEXT and DOUBLE PRECISION: SQLite (column affinity) and
    # PostgreSQL both return str and float already, so the rows need no conversion
    return rows


# JSON has no NaN/Infinity: offers arrive with non-finite numbers already replaced by null,
# and allow_nan=False makes a slip an error rather than invalid JSON in the decisions table.
_encode_offers = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def record_decision(
    tx: Tx,
    *,
    decision_id: str,
    customer_id: str,
    channel: str,
    bundle_name: str,
    bundle_version: int,
    strategy: str,
    offers: Sequence[Mapping[str, Any]],
) -> None:
    """Write the decision, a ``shown`` contact per offer, and the ``decision`` event, in ``tx``.

    ``offers`` are the shown offers in rank order, each with ``offer_id``, ``category``,
    ``rank``, ``propensity``, ``value``, ``weight``, ``lever``, ``score`` and
    ``selection_probability`` (the event payload contract), numbers finite or None (JSON has
    no NaN/Infinity; the caller records a non-finite score part as None). They become the
    event's payload as they are.
    """
    clean = offers
    tx.execute(
        "INSERT INTO decisions(decision_id, customer_id, channel, bundle_name, bundle_version, created_at, offers)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (decision_id, customer_id, channel, bundle_name, bundle_version, tx.now,
         _encode_offers(clean)),
    )
    if clean:  # one multi-row INSERT (portable: SQLite and PostgreSQL) rather than one per offer
        params: list[Any] = []
        for offer in clean:
            params += [customer_id, offer["offer_id"], offer["category"], channel, tx.now, decision_id]
        tx.execute(
            "INSERT INTO contact_history(customer_id, offer_id, category, channel, event, ts, decision_id) VALUES "
            + ", ".join(["(?, ?, ?, ?, 'shown', ?, ?)"] * len(clean)),
            params,
        )
    tx.append_event(
        "decision",
        {
            "decision_id": decision_id,
            "customer_id": customer_id,
            "channel": channel,
            "bundle_name": bundle_name,
            "bundle_version": bundle_version,
            "strategy": strategy,
            "offers": clean,
        },
    )
