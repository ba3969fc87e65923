"""Responses, purchases, and the device's view of its outbox (docs/ledger.md).

Everything here is written once against the :class:`~nbo.sdk._store.Tx` seam with portable
SQL, so a hub-backed store runs the same code. Each state change and the event describing it
are written in one transaction; purchases (money) commit durably.

Decisions taken here (documented in ``docs/ledger.md``):

* A response is recorded once per shown offer of a decision. Repeating the same outcome is a
  no-op (a retried call is harmless); a *different* outcome for an offer that already has one
  is an :class:`InputError` on ``outcome`` — the first answer stands.
* An unknown decision raises :class:`UnknownReferenceError` (a :class:`NotFoundError` naming
  the field: unknown ids map to ``NOT_FOUND``); an offer that decision did not show is an
  :class:`InputError` on ``offer_id`` (a bad argument: ``INVALID_ARGUMENT``).
* A purchase's idempotency key makes a retried call a no-op; the same key with different
  arguments is an :class:`InputError` on ``idempotency_key``.
* Decision-log compaction never creates a ``seq`` gap: acknowledged decision events are
  deleted, unacknowledged ones keep their row and get the payload ``{"compacted": true}``.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
import uuid
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from . import _measures
from ._carddata import is_card_data, payment_data_error
from ._errors import InputError, UnknownReferenceError
from ._store import StateStore, Tx
from ._vocabulary import AMOUNT_MAX, AMOUNT_PLACES, EVENT_STATUSES, ID_MAX, KEY_MAX, OUTCOMES, QUANTITY_MAX

__all__ = [
    "OUTCOMES",
    "SCHEMA",
    "check_decimal",
    "check_id",
    "check_int",
    "check_optional_id",
    "check_text",
    "compact_decisions",
    "dead_letter_answer",
    "fingerprint",
    "id_problem",
    "list_events",
    "outbox_summary",
    "pending_events",
    "record_purchase",
    "record_response",
]


SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS responses(
        decision_id TEXT NOT NULL,
        offer_id TEXT NOT NULL,
        customer_id TEXT NOT NULL,
        outcome TEXT NOT NULL,            -- accepted | declined | ignored
        ts DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (decision_id, offer_id))""",
    """CREATE TABLE IF NOT EXISTS purchases(
        purchase_id TEXT PRIMARY KEY,     -- uuid4
        customer_id TEXT NOT NULL,
        amount TEXT NOT NULL,             -- canonical decimal string: never a float
        quantity INTEGER NOT NULL,
        ts DOUBLE PRECISION NOT NULL,     -- when the purchase happened (epoch seconds)
        created_at DOUBLE PRECISION NOT NULL,
        idempotency_key TEXT NOT NULL UNIQUE)""",
    "CREATE INDEX IF NOT EXISTS purchases_by_customer ON purchases(customer_id, ts)",
    # Parts of a hub's sync answer this device could not apply (a balance for a customer id that
    # breaks the id rule): kept with the reason instead of failing the whole answer, as refused
    # pushes are kept in dead_letter. ``subject`` is a fingerprint, never the id itself.
    """CREATE TABLE IF NOT EXISTS answer_dead_letter(
        refusal_id TEXT PRIMARY KEY,      -- uuid4
        kind TEXT NOT NULL,               -- balance
        subject TEXT NOT NULL,            -- 'sha256:<16 hex>' of the id, or 'card data'
        acked_through BIGINT NOT NULL,    -- the answer it came with
        reason TEXT NOT NULL,
        dead_at DOUBLE PRECISION NOT NULL)""",
)


# -- argument checks shared by the ledger, payments, records and the hub ------------------------


def id_problem(value: object, *, max_len: int = ID_MAX) -> str | None:
    """Why ``value`` breaks the id rule (a phrase to follow the field's name), or None.

    The one id rule, for every id at every entry point (the SDK's arguments, the gateway's
    requests, the events a device pushes): a ``str`` of 1 to ``max_len`` characters (code
    points); every character printable in Python's sense (:meth:`str.isprintable`), i.e. none
    of Unicode's control (Cc: NUL, ``\\r``, ``\\n``, tab …), format (Cf: zero-width spaces and
    joiners, soft hyphen, byte-order mark, bidi controls …), surrogate (Cs), private-use (Co)
    or unassigned (Cn) characters, no line or paragraph separator (Zl, Zp) and no space other
    than U+0020; and no space at either end. The phrase never quotes the value.
    """
    if not isinstance(value, str):
        return "must be a string"
    if not value or len(value) > max_len:
        return f"must be 1 to {max_len} characters"
    if not value.isprintable():
        return ("must not contain control, format or separator characters "
                "(NUL, CR, LF, tab, zero-width or non-ASCII spaces)")
    if value[0] == " " or value[-1] == " ":
        return "must not start or end with a space"
    return None


def check_id(value: object, field: str, *, max_len: int = ID_MAX) -> str:
    """``value`` if it keeps the id rule (:func:`id_problem`) and holds no card data.

    ``InputError`` naming ``field`` otherwise — :class:`PaymentDataError` when it looks like
    card data (:mod:`._carddata`); neither message carries the value.
    """
    if isinstance(value, str) and len(value) <= max_len and is_card_data(value):
        raise payment_data_error(field)  # first: the more useful answer when both apply
    problem = id_problem(value, max_len=max_len)
    if problem is not None:
        raise InputError(f"{field} {problem}", field=field)
    assert isinstance(value, str)
    return value


def check_optional_id(value: object, field: str, *, max_len: int = ID_MAX) -> str | None:
    return None if value is None else check_id(value, field, max_len=max_len)


def check_text(value: object, field: str, *, max_len: int) -> str:
    """Free text (a reason): 1 to ``max_len`` characters, not all space, no control character
    but tab, and no card data (``PaymentDataError``)."""
    if not isinstance(value, str):
        raise InputError(f"{field} must be a string", field=field)
    if not value.strip() or len(value) > max_len:
        raise InputError(f"{field} must be 1 to {max_len} characters", field=field)
    if is_card_data(value):
        raise payment_data_error(field)
    if any(unicodedata.category(c) in ("Cc", "Cs") and c != "\t" for c in value):
        raise InputError(f"{field} must not contain control characters", field=field)
    return value


_AMOUNT_TEXT = re.compile(r"[0-9]{1,24}(?:\.[0-9]{1,24})?")


def check_decimal(value: object, field: str, *, max_places: int, maximum: int = AMOUNT_MAX) -> Decimal:
    """A positive exact amount: ``Decimal``, int, or a plain decimal string — never a float.

    A string must be ASCII digits with at most one ``.`` between digits (``"12"``,
    ``"12.50"``): no sign, space, underscore, exponent, or any other kind of digit (so
    ``"1_000"``, ``" 1.00"``, ``"1e3"`` and full-width digits are refused, not read).
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise InputError(f"{field} must be a Decimal or a decimal string, not a float (no float money)",
                         field=field)
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, str):
        if is_card_data(value):
            raise payment_data_error(field)
        if len(value) > 64 or not _AMOUNT_TEXT.fullmatch(value) or not value.isascii():
            raise InputError(f"{field} must be a plain decimal number such as 12.50 (ASCII digits and one "
                             "optional '.'; no sign, spaces, underscores or exponent)", field=field)
        amount = Decimal(value)
    else:
        raise InputError(f"{field} must be a Decimal or a decimal string", field=field)
    if not amount.is_finite():
        raise InputError(f"{field} must be a finite number", field=field)
    if amount <= 0:
        raise InputError(f"{field} must be greater than zero", field=field)
    if amount > maximum:
        raise InputError(f"{field} must be at most {maximum}", field=field)
    exponent = amount.normalize().as_tuple().exponent
    assert isinstance(exponent, int)  # finite, checked above
    if -exponent > max_places:
        raise InputError(f"{field} has more than {max_places} decimal places", field=field)
    return amount


def check_int(value: object, field: str, *, minimum: int, maximum: int) -> int:
    """An int (not a bool) in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{field} must be an integer", field=field)
    if not minimum <= value <= maximum:
        raise InputError(f"{field} must be between {minimum} and {maximum}", field=field)
    return value


def check_instant(value: object, field: str) -> float:
    """A timezone-aware ``datetime`` to epoch seconds (a naive one is ambiguous: refused)."""
    if not isinstance(value, datetime):
        raise InputError(f"{field} must be a timezone-aware datetime", field=field)
    if value.tzinfo is None or value.utcoffset() is None:
        raise InputError(f"{field} must be timezone-aware (UTC recommended)", field=field)
    return value.timestamp()


def canonical_json(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def format_decimal(amount: Decimal) -> str:
    """The canonical text of an amount: fixed-point, no exponent, no trailing zeros."""
    text = format(amount.normalize(), "f")
    return text


# -- responses --------------------------------------------------------------------------------


def record_response(store: StateStore, decision_id: str, offer_id: str, outcome: str) -> None:
    """Record ``accepted | declined | ignored`` for an offer shown by a recorded decision.

    Writes a ``contact_history`` row (event = outcome, with the decision's channel and the
    offer's category) and a ``response`` event in one transaction. Repeating the same outcome
    is a no-op; a different outcome for the same offer raises ``InputError`` (field
    ``outcome``). Unknown decision → ``UnknownReferenceError`` (field ``decision_id``); an
    offer not shown by it → field ``offer_id``.
    """
    check_id(decision_id, "decision_id")
    check_id(offer_id, "offer_id")
    if not isinstance(outcome, str) or outcome not in OUTCOMES:
        raise InputError("outcome must be one of accepted, declined, ignored", field="outcome")
    with store.transaction() as tx:
        rows = tx.execute("SELECT customer_id, channel, offers FROM decisions WHERE decision_id = ?",
                          (decision_id,))
        if not rows:
            raise UnknownReferenceError(f"unknown decision {decision_id!r}", field="decision_id")
        customer_id, channel, offers_json = rows[0]
        category = _shown_offer_category(offers_json, offer_id)
        if category is None:
            raise InputError(f"offer {offer_id!r} was not shown in decision {decision_id!r}", field="offer_id")
        previous = tx.execute("SELECT outcome FROM responses WHERE decision_id = ? AND offer_id = ?",
                              (decision_id, offer_id))
        if previous:
            if previous[0][0] == outcome:
                return  # a retried call: already recorded
            raise InputError(
                f"offer {offer_id!r} of decision {decision_id!r} already has the response "
                f"{previous[0][0]!r}; a response is recorded once", field="outcome")
        tx.execute("INSERT INTO responses(decision_id, offer_id, customer_id, outcome, ts) VALUES (?, ?, ?, ?, ?)",
                   (decision_id, offer_id, customer_id, outcome, tx.now))
        tx.execute(
            "INSERT INTO contact_history(customer_id, offer_id, category, channel, event, ts, decision_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (customer_id, offer_id, category, channel, outcome, tx.now, decision_id),
        )
        tx.append_event("response", {
            "decision_id": decision_id,
            "offer_id": offer_id,
            "customer_id": customer_id,
            "category": category,
            "channel": channel,
            "outcome": outcome,
        })


def _shown_offer_category(offers_json: str, offer_id: str) -> str | None:
    """The category of ``offer_id`` in a decision's stored offer list, or None if not shown."""
    try:
        offers = json.loads(offers_json)
    except (TypeError, ValueError):
        return None
    if not isinstance(offers, list):
        return None
    for offer in offers:
        if isinstance(offer, Mapping) and offer.get("offer_id") == offer_id:
            return str(offer.get("category") or "")
    return None


# -- purchases --------------------------------------------------------------------------------


def record_purchase(store: StateStore, customer_id: str, *, amount: Decimal | str, idempotency_key: str,
                    timestamp: datetime | None, quantity: int) -> None:
    """Record a purchase (durably) and bring the customer's profile measures up to date.

    ``amount`` is a ``Decimal`` or decimal string > 0 with at most 4 decimal places (a float
    is refused: no float money). ``timestamp`` defaults to now. A repeated idempotency key
    with the same arguments is a no-op; with different arguments, ``InputError``.
    """
    check_id(customer_id, "customer_id")
    check_id(idempotency_key, "idempotency_key", max_len=KEY_MAX)
    value = check_decimal(amount, "amount", max_places=AMOUNT_PLACES)
    check_int(quantity, "quantity", minimum=1, maximum=QUANTITY_MAX)
    when = None if timestamp is None else check_instant(timestamp, "timestamp")
    amount_text = format_decimal(value)
    with store.transaction(durable=True) as tx:
        ts = tx.now if when is None else when
        first = tx.execute(
            "SELECT customer_id, amount, quantity, ts FROM purchases WHERE idempotency_key = ?",
            (idempotency_key,))
        if first:
            same = (first[0][0] == customer_id and Decimal(first[0][1]) == value and first[0][2] == quantity
                    and (when is None or first[0][3] == when))
            if same:
                return
            raise InputError(key_reused(
                idempotency_key,
                {"customer_id": first[0][0], "amount": Decimal(first[0][1]), "quantity": first[0][2],
                 "timestamp": first[0][3]},
                {"customer_id": customer_id, "amount": value, "quantity": quantity,
                 **({"timestamp": when} if when is not None else {})},
            ), field="idempotency_key")
        purchase_id = str(uuid.uuid4())
        tx.execute(
            "INSERT INTO purchases(purchase_id, customer_id, amount, quantity, ts, created_at, idempotency_key) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (purchase_id, customer_id, amount_text, quantity, ts, tx.now, idempotency_key),
        )
        _update_profile_after_purchase(tx, customer_id, ts=ts, amount=value, quantity=quantity)
        tx.append_event("purchase", {
            "purchase_id": purchase_id,
            "customer_id": customer_id,
            "amount": amount_text,
            "quantity": quantity,
            "timestamp": ts,
            "idempotency_key": idempotency_key,
        })


def _update_profile_after_purchase(tx: Tx, customer_id: str, *, ts: float, amount: Decimal, quantity: int) -> None:
    """Fold the purchase into the customer's stored profile with the shared measures code.

    ``sdk._measures.update_measures`` is the same per-purchase step training folds over the
    transaction history (``derive_features``), so device and model cannot drift.
    """
    rows = tx.execute("SELECT profile FROM profiles WHERE customer_id = ?", (customer_id,))
    stored: Any = None
    if rows:
        try:
            stored = json.loads(rows[0][0])
        except ValueError:
            stored = None  # an unreadable profile is rebuilt from this purchase on
    profile = _measures.update_measures(
        stored if isinstance(stored, dict) else None,
        [{"timestamp": ts, "amount": amount, "quantity": quantity}],
        as_of=tx.now,
    )
    tx.execute(
        "INSERT INTO profiles(customer_id, profile, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT(customer_id) DO UPDATE SET profile = excluded.profile, updated_at = excluded.updated_at",
        (customer_id, json.dumps(profile, separators=(",", ":")), tx.now),
    )


# -- the outbox as the device sees it ------------------------------------------------------------


def fingerprint(value: str) -> str:
    """What may be kept of an id that could not be kept: a short hash, or nothing of card data."""
    if is_card_data(value):
        return "card data"
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def dead_letter_answer(tx: Tx, *, kind: str, subject: str, acked_through: int, reason: str) -> None:
    """Keep one refused part of a sync answer (``answer_dead_letter``); ``subject`` is the raw id."""
    tx.execute(
        "INSERT INTO answer_dead_letter(refusal_id, kind, subject, acked_through, reason, dead_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (str(uuid.uuid4()), kind, fingerprint(subject), acked_through, reason[:1000], tx.now))


def pending_events(store: StateStore) -> int:
    """Outbox events not yet acknowledged by the hub (dead-lettered ones excluded)."""
    with store.read() as tx:
        (count,) = tx.execute(
            "SELECT COUNT(*) FROM outbox o WHERE o.acked = 0 "
            "AND NOT EXISTS (SELECT 1 FROM dead_letter d WHERE d.seq = o.seq)")[0]
    return int(count)




def outbox_summary(store: StateStore) -> dict[str, Any]:
    """Counts for ``nbo events``: pending, acked, dead-lettered — in total and by event type.

    Also reports ``compacted_decisions`` (decision events compacted so far),
    ``payload_bytes`` (what the decision-log budget is measured against) and
    ``answers_dead_lettered`` (parts of hub answers this device could not apply).
    """
    summary: dict[str, Any] = {status: 0 for status in EVENT_STATUSES}
    by_type: dict[str, dict[str, int]] = {}
    with store.read() as tx:
        rows = tx.execute(
            "SELECT o.type, CASE WHEN o.acked <> 0 THEN 'acked' "
            "WHEN EXISTS (SELECT 1 FROM dead_letter d WHERE d.seq = o.seq) THEN 'dead_lettered' "
            "ELSE 'pending' END AS status, COUNT(*) FROM outbox o GROUP BY 1, 2")
        # Dead-lettered events the sync client moved out of the outbox count too.
        rows += tx.execute(
            "SELECT d.type, 'dead_lettered', COUNT(*) FROM dead_letter d "
            "WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.seq = d.seq) GROUP BY 1")
        compacted = tx.execute("SELECT value FROM counters WHERE name = 'compacted_decisions'")
        (refused,) = tx.execute("SELECT COUNT(*) FROM answer_dead_letter")[0]
        (size,) = tx.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox")[0]
    for event_type, status, count in rows:
        summary[status] += int(count)
        per = by_type.setdefault(event_type, {s: 0 for s in EVENT_STATUSES})
        per[status] += int(count)
    summary["by_type"] = dict(sorted(by_type.items()))
    summary["compacted_decisions"] = int(compacted[0][0]) if compacted else 0
    summary["payload_bytes"] = int(size)
    summary["answers_dead_lettered"] = int(refused)
    return summary


def list_events(store: StateStore, *, status: str = "pending", limit: int = 50) -> list[dict[str, Any]]:
    """Outbox events for ``nbo events``, oldest first.

    ``status`` is ``pending``, ``acked``, ``dead_lettered`` or ``all``. Each item has
    ``seq, event_id, type, created_at, status, reason`` (the dead-letter reason or None) and
    ``payload`` (the decoded JSON object).
    """
    if status not in (*EVENT_STATUSES, "all"):
        raise InputError("status must be pending, acked, dead_lettered or all", field="status")
    check_int(limit, "limit", minimum=1, maximum=100_000)
    status_sql = (
        "CASE WHEN o.acked <> 0 THEN 'acked' WHEN d.seq IS NOT NULL THEN 'dead_lettered' ELSE 'pending' END")
    outbox_part = (
        f"SELECT o.seq, o.event_id, o.type, o.created_at, o.payload, {status_sql} AS status, d.reason "
        "FROM outbox o LEFT JOIN dead_letter d ON d.seq = o.seq")
    moved_part = (
        "SELECT d.seq, d.event_id, d.type, d.created_at, d.payload, 'dead_lettered' AS status, d.reason "
        "FROM dead_letter d WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.seq = d.seq)")
    sql = f"SELECT * FROM ({outbox_part} UNION ALL {moved_part}) AS e"
    params: tuple[Any, ...] = ()
    if status != "all":
        sql += " WHERE status = ?"
        params = (status,)
    sql += " ORDER BY seq LIMIT ?"
    with store.read() as tx:
        rows = tx.execute(sql, (*params, limit))
    events = []
    for seq, event_id, event_type, created_at, payload, row_status, reason in rows:
        try:
            decoded = json.loads(payload)
        except ValueError:
            decoded = {"unreadable": True}
        events.append({"seq": int(seq), "event_id": event_id, "type": event_type,
                       "created_at": float(created_at), "status": row_status, "reason": reason,
                       "payload": decoded})
    return events


COMPACTED_PAYLOAD = '{"compacted":true}'


def compact_decisions(store: StateStore, *, budget_bytes: int) -> int:
    """Shrink the decision log until the outbox payloads fit ``budget_bytes``; return how many.

    Oldest first: acknowledged decision events are deleted (the hub has them); then
    unacknowledged ones keep their row — so ``seq`` stays gapless for the pusher — but their
    payload becomes ``{"compacted": true}``. Response, purchase, points and payment events are
    never touched. ``counters('compacted_decisions')`` counts every event compacted.
    """
    check_int(budget_bytes, "budget_bytes", minimum=0, maximum=2**62)
    with store.transaction() as tx:
        (size,) = tx.execute("SELECT COALESCE(SUM(LENGTH(payload)), 0) FROM outbox")[0]
        excess = int(size) - budget_bytes
        if excess <= 0:
            return 0
        compacted = 0
        # Acked first (oldest first): deleting them loses nothing the hub does not hold.
        candidates = tx.execute(
            "SELECT seq, LENGTH(payload), acked FROM outbox WHERE type = 'decision' AND payload <> ? "
            "ORDER BY acked DESC, seq", (COMPACTED_PAYLOAD,))
        delete_through: list[int] = []
        blank: list[int] = []
        for seq, length, acked in candidates:
            if excess <= 0:
                break
            if acked:
                delete_through.append(int(seq))
                excess -= int(length)
            else:
                blank.append(int(seq))
                excess -= int(length) - len(COMPACTED_PAYLOAD)
        for seq in delete_through:
            tx.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
        for seq in blank:
            tx.execute("UPDATE outbox SET payload = ? WHERE seq = ?", (COMPACTED_PAYLOAD, seq))
        compacted = len(delete_through) + len(blank)
        if compacted:
            tx.execute(
                "INSERT INTO counters(name, value) VALUES ('compacted_decisions', ?) "
                "ON CONFLICT(name) DO UPDATE SET value = counters.value + excluded.value",
                (compacted,))
        return compacted


def key_reused(key: str, first: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """The message for an idempotency key used again with other arguments: which key, what differs.

    ``first`` and ``now`` map argument names to the first call's and this call's values; only
    the arguments that differ are named (values shortened; they are already validated, so
    they hold no card data).
    """

    def shown(value: Any) -> str:
        text = format(value, "f") if isinstance(value, Decimal) else repr(value)
        return text if len(text) <= 40 else text[:39] + "…"

    differ = [f"{name} {shown(first[name])} then, {shown(now[name])} now" for name in now
              if name in first and first[name] != now[name]]
    detail = "; ".join(differ) if differ else "other arguments"
    return f"idempotency key {shown(key)} was already used with different arguments ({detail})"

