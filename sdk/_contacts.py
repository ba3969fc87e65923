"""Profiles, contact history and decision records over the state-store seam.

Written once against :class:`~._store.Tx` with portable SQL (``?`` placeholders, JSON as
TEXT, epoch seconds as DOUBLE PRECISION), so a device's SQLite store and the gateway's hub
store (SQLite or PostgreSQL) run the same code. Tables come from ``CORE_SCHEMA``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ._errors import StateError
from ._store import Tx, insert_rows

__all__ = [
    "DecisionRecord",
    "contact_counts",
    "parse_profile",
    "record_decisions",
    "stored_profiles",
]


def parse_profile(customer_id: str, text: Any) -> dict[str, Any]:
    """A stored profile's JSON text as a dict; ``StateError`` naming the customer if it is not one."""
    try:
        profile = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise StateError(f"stored profile of customer {customer_id!r} is not valid JSON: {exc}") from exc
    if not isinstance(profile, dict):
        raise StateError(f"stored profile of customer {customer_id!r} is not a JSON object")
    return profile


def _placeholders(n: int) -> str:
    return ", ".join(["?"] * n)


def stored_profiles(tx: Tx, customer_ids: Sequence[str]) -> dict[str, Any]:
    """The stored profile texts of several customers in one query (unknown ones are absent);
    parse each with :func:`parse_profile`, so a damaged one fails only its own customer."""
    ids = list(dict.fromkeys(customer_ids))
    rows = tx.execute(f"SELECT customer_id, profile FROM profiles WHERE customer_id IN ({_placeholders(len(ids))})",
                      ids)
    return dict(rows)


def contact_counts(
    tx: Tx, customer_ids: Sequence[str], *, now: float, windows: Sequence[float], events: Sequence[str]
) -> dict[str, list[tuple[str, str, str, str, float, int]]]:
    """What the contact policies need of several customers' histories, in one query.

    Events of the kinds in ``events`` (those the policies count: a policy on declines never
    needs the many ``shown`` rows, and the index ``(customer_id, event, ts)`` skips them) in
    the last ``max(windows)`` seconds up to ``now``, counted per offer, category,
    channel and event within each *band* between consecutive window starts (``now - w`` for
    each ``w`` in ``windows``): ``(offer_id, category, channel, event, ts, count)`` rows where
    ``ts`` is the latest of the counted events. Every event of a row lies on the same side of
    every window start, so a policy counting rows in its window (``_policy.policy_blocked``)
    gets exactly the count it would from the single events, without reading them one by one.
    """
    ids = list(dict.fromkeys(customer_ids))
    out: dict[str, list[tuple[str, str, str, str, float, int]]] = {c: [] for c in ids}
    kinds = sorted(set(events))
    if not ids or not kinds or not windows:
        return out
    starts = sorted({now - w for w in windows}, reverse=True)  # newest band first
    band = "CASE " + " ".join(f"WHEN ts >= ? THEN {k}" for k in range(len(starts))) + f" ELSE {len(starts)} END"
    rows = tx.execute(
        "SELECT customer_id, offer_id, category, channel, event, MAX(ts), COUNT(*) FROM contact_history "
        f"WHERE customer_id IN ({_placeholders(len(ids))}) AND event IN ({_placeholders(len(kinds))}) "
        "AND ts >= ? AND ts <= ? "
        f"GROUP BY customer_id, offer_id, category, channel, event, {band}",
        [*ids, *kinds, starts[-1], now, *starts],
    )
    for customer_id, *row in rows:
        out[customer_id].append(tuple(row))  # type: ignore[arg-type]  # the six columns above
    return out


# JSON has no NaN/Infinity: offers arrive with non-finite numbers already replaced by null,
# and allow_nan=False makes a slip an error rather than invalid JSON in the decisions table.
_stdlib_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

try:  # orjson (the [gateway] extra): ~1 µs instead of ~10; the same JSON values, compact too
    import orjson

    def _encode_offers(offers: Any) -> str:
        return orjson.dumps(offers).decode()

except ImportError:  # pragma: no cover - a core install without the gateway extra

    def _encode_offers(offers: Any) -> str:
        return _stdlib_encode(offers)


class DecisionRecord(NamedTuple):
    """One decision to record.

    ``offers`` are the shown offers in rank order, each with ``offer_id``, ``category``,
    ``rank``, ``propensity``, ``value``, ``weight``, ``lever``, ``score`` and
    ``selection_probability`` (the event payload contract), numbers finite or None (JSON has
    no NaN/Infinity; the caller records a non-finite score part as None). They become the
    event's payload as they are, and so do ``inputs`` (the models' raw customer and context
    values, by input name), ``eligible`` (the offers in play with their probabilities,
    docs/learning.md), ``funnel`` (candidates and removals per rule, docs/decisions.md),
    ``experiment`` (id, arm, kind, hash version) and ``shadow`` (the shadow arms' rankings,
    docs/experiments.md), when given.
    """

    decision_id: str
    customer_id: str
    channel: str
    bundle_name: str
    bundle_version: int
    strategy: str
    offers: Sequence[Mapping[str, Any]]
    inputs: Mapping[str, Any] | None = None
    eligible: Mapping[str, Any] | None = None
    funnel: Mapping[str, Any] | None = None
    experiment: Mapping[str, Any] | None = None
    shadow: Sequence[Mapping[str, Any]] | None = None


def record_decisions(tx: Tx, records: Sequence[DecisionRecord]) -> None:
    """Write each decision, a ``shown`` contact per offer, and its ``decision`` event, in ``tx``
    (multi-row INSERTs, then the events)."""
    if not records:
        return
    now = tx.now
    insert_rows(
        tx.execute,
        "INSERT INTO decisions(decision_id, customer_id, channel, bundle_name, bundle_version, created_at, offers)",
        "(?, ?, ?, ?, ?, ?, ?)",
        [(r.decision_id, r.customer_id, r.channel, r.bundle_name, r.bundle_version, now, _encode_offers(r.offers))
         for r in records],
    )
    insert_rows(
        tx.execute,
        "INSERT INTO contact_history(customer_id, offer_id, category, channel, event, ts, decision_id)",
        "(?, ?, ?, ?, 'shown', ?, ?)",
        [(r.customer_id, offer["offer_id"], offer["category"], r.channel, now, r.decision_id)
         for r in records for offer in r.offers],
    )
    tx.append_events("decision", [_payload(r) for r in records])


def _payload(r: DecisionRecord) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "decision_id": r.decision_id,
        "customer_id": r.customer_id,
        "channel": r.channel,
        "bundle_name": r.bundle_name,
        "bundle_version": r.bundle_version,
        "strategy": r.strategy,
        "offers": r.offers,
    }
    if r.inputs is not None:
        payload["inputs"] = r.inputs
    if r.eligible is not None:
        payload["eligible"] = r.eligible
    if r.funnel is not None:
        payload["funnel"] = r.funnel
    if r.experiment is not None:
        payload["experiment"] = r.experiment
    if r.shadow:
        payload["shadow"] = r.shadow
    return payload
