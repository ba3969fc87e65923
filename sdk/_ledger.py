"""The loyalty ledger: append-only award / redeem / reverse / expire entries (docs/ledger.md).

Two layers:

* a **pure core** — :func:`fold`, :func:`ledger_balance`, :func:`available_lots` — that turns
  an ordered list of :class:`~nbo.sdk.LedgerEntry` into a balance and FIFO lots at a moment.
  No I/O: the device and the hub fold the same entries the same way.
* **store operations** — :func:`award`, :func:`redeem`, :func:`reverse`, :func:`balance`,
  :func:`apply_central_balances` — written against the :class:`~nbo.sdk._store.Tx` seam with
  portable SQL. Each writes its entry and its ``points`` event in one durable (fsync'd)
  transaction.

Semantics (also in ``docs/ledger.md``):

* Every award is a **lot** with an optional ``expires_at``. Redemptions consume live lots
  oldest-expiring first (lots that never expire last, ties by age) — FIFO by expiry.
* Expiry is **lazy**: when a redeem, reverse or balance touches a customer, every lot past
  its ``expires_at`` with points left gets one ``expire`` entry for the remainder
  (``reverses`` = the lot's entry id, idempotency key ``expire:<lot id>``), so the hub sees
  the expiry as an ordinary event. A lot expires at most once.
* **Idempotency**: a repeated key returns the first entry unchanged; the same key with
  different arguments raises ``LedgerError("idempotency key … was already used with different
  arguments")``. Keys are unique per store (device), across customers and operations.
* **Reversal** is exact and happens once per entry. Reversing an award removes its points
  (from its own lot first, then FIFO), and is refused with ``LedgerError`` if the customer's
  balance is below the award (the points were spent: reverse the redemption first) or if the
  award has already expired. Reversing a redeem gives the points back to the lots it drew
  from (to a non-expiring credit where that lot has expired meanwhile). ``reverse`` and
  ``expire`` entries cannot themselves be reversed.
* **Offline balance** = last central balance received from the hub + the local entries the
  hub had not yet seen when it computed it (outbox ``seq`` > ``as_of_seq``), net of expiry.
  The central balance is folded as an opening, non-expiring credit; the hub owns the expiry
  of lots it already holds.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ._errors import InputError, LedgerError, UnknownReferenceError
from ._records import (
    check_id,
    check_instant,
    check_int,
    check_text,
    key_reused,
)
from ._store import StateStore, Tx
from ._types import LedgerEntry
from ._vocabulary import KEY_MAX, POINTS_KINDS, POINTS_MAX, REASON_MAX

__all__ = [
    "POINTS_MAX",
    "REASON_MAX",
    "SCHEMA",
    "LedgerState",
    "Lot",
    "apply_central_balances",
    "available_lots",
    "award",
    "balance",
    "balance_in",
    "entries",
    "entry_from_payload",
    "entry_to_payload",
    "fold",
    "ledger_balance",
    "redeem",
    "reverse",
]


SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS ledger_entries(
        entry_id TEXT PRIMARY KEY,        -- UUID v5 of (store identity, idempotency key)
        customer_id TEXT NOT NULL,
        kind TEXT NOT NULL,               -- award | redeem | reverse | expire
        points BIGINT NOT NULL,           -- signed: awards +, redemptions and expiries -
        reason TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,    -- unique per store through entry_id (see _entry_id)
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION,      -- awards only
        reverses TEXT,                    -- reverse: the entry reversed; expire: the lot expired
        seq BIGINT NOT NULL)              -- seq of the event that carried it (device outbox seq)""",
    "CREATE INDEX IF NOT EXISTS ledger_by_customer ON ledger_entries(customer_id, seq)",
    # Partial (SQLite and PostgreSQL both have them): awards and redeems add no index page to
    # their commit, and the database itself guarantees an entry is reversed at most once.
    "CREATE UNIQUE INDEX IF NOT EXISTS ledger_reversed_once ON ledger_entries(reverses) WHERE kind = 'reverse'",
    """CREATE TABLE IF NOT EXISTS central_balances(
        customer_id TEXT PRIMARY KEY,
        balance BIGINT NOT NULL,          -- the hub's authoritative balance ...
        as_of_seq BIGINT NOT NULL,        -- ... covering this device's events up to this seq
        updated_at DOUBLE PRECISION NOT NULL)""",
)

_EXPIRE_KEY_PREFIX = "expire:"
LEDGER_COLUMNS = "entry_id, customer_id, kind, points, reason, idempotency_key, created_at, expires_at, reverses"


# -- the pure core ------------------------------------------------------------------------------


@dataclass(slots=True)
class Lot:
    """Points from one award (``entry_id``) still on the books; ``None`` = the central credit."""

    entry_id: str | None
    remaining: int
    expires_at: float | None
    position: int

    def live_at(self, t: float) -> bool:
        return self.expires_at is None or self.expires_at > t

    def order(self) -> tuple[bool, float, int]:
        # Oldest-expiring first, then lots that never expire; the credit comes after every lot.
        return (self.expires_at is None, self.expires_at or 0.0, self.position)


@dataclass(slots=True)
class LedgerState:
    """The result of folding a customer's entries: balance, lots and what was reversed."""

    balance: int
    credit: Lot
    """The opening (central) balance plus credits with no lot; may go negative on a hub."""
    lots: dict[str, Lot] = field(default_factory=dict)
    reversed: set[str] = field(default_factory=set)
    expired: set[str] = field(default_factory=set)
    allocations: dict[str, list[tuple[str | None, int]]] = field(default_factory=dict)

    def due(self, now: float) -> list[Lot]:
        """Lots past their expiry with points left: what an ``expire`` entry must remove now."""
        return sorted((lot for lot in self.lots.values()
                       if lot.remaining > 0 and not lot.live_at(now) and lot.entry_id not in self.expired),
                      key=Lot.order)

    def live_lots(self, now: float) -> list[Lot]:
        """Award lots with points left that can still be redeemed at ``now``, in FIFO order."""
        return sorted((lot for lot in self.lots.values() if lot.remaining > 0 and lot.live_at(now)),
                      key=Lot.order)


def _consume(state: LedgerState, points: int, t: float, first: Lot | None = None) -> list[tuple[str | None, int]]:
    """Take ``points`` from live lots in FIFO order (``first`` before the others).

    Whatever the lots cannot cover comes from the central credit, which may go negative: on a
    device that is refused before writing; on the hub it is recorded offline over-redemption.
    """
    taken: list[tuple[str | None, int]] = []
    need = points
    order = state.live_lots(t)
    if first is not None:
        order = [first, *(lot for lot in order if lot is not first)]
    for lot in order:
        if need == 0:
            break
        if lot.remaining <= 0:
            continue
        take = min(lot.remaining, need)
        lot.remaining -= take
        need -= take
        taken.append((lot.entry_id, take))
    if need:
        state.credit.remaining -= need
        taken.append((None, need))
    return taken


def fold(entries: Iterable[LedgerEntry], *, opening: int = 0) -> LedgerState:
    """Fold one customer's entries, in the order they were written, into a :class:`LedgerState`.

    ``opening`` is a central balance the entries come on top of (0 on the hub). Entries that
    refer to lots or redemptions outside the given list (already inside ``opening``) draw
    from or give back to the central credit.
    """
    state = LedgerState(balance=opening, credit=Lot(None, opening, None, -1))
    for position, entry in enumerate(entries):
        t = entry.created_at
        state.balance += entry.points
        if entry.kind == "award":
            state.lots[entry.entry_id] = Lot(entry.entry_id, entry.points, entry.expires_at, position)
        elif entry.kind == "redeem":
            state.allocations[entry.entry_id] = _consume(state, -entry.points, t)
        elif entry.kind == "expire":
            lot = state.lots.get(entry.reverses or "")
            target = lot if lot is not None else state.credit
            target.remaining += entry.points
            if entry.reverses:
                state.expired.add(entry.reverses)
        elif entry.kind == "reverse":
            target_id = entry.reverses or ""
            state.reversed.add(target_id)
            if entry.points < 0:  # reversing an award
                _consume(state, -entry.points, t, first=state.lots.get(target_id))
            else:  # reversing a redeem: back to the lots it drew from while they live
                allocation = state.allocations.get(target_id, [(None, entry.points)])
                for lot_id, amount in allocation:
                    lot = state.lots.get(lot_id) if lot_id is not None else None
                    if lot is not None and lot.live_at(t) and lot_id not in state.expired:
                        lot.remaining += amount
                    else:
                        state.credit.remaining += amount
    return state


def ledger_balance(entries: Iterable[LedgerEntry], *, now: float, opening: int = 0) -> int:
    """The balance at ``now``: ``opening`` + every entry, minus lots expired but not yet written."""
    state = fold(entries, opening=opening)
    return state.balance - sum(lot.remaining for lot in state.due(now))


def available_lots(entries: Iterable[LedgerEntry], *, now: float, opening: int = 0) -> list[Lot]:
    """The lots a redemption at ``now`` would draw from, in the order it would draw."""
    return fold(entries, opening=opening).live_lots(now)


def entry_to_payload(entry: LedgerEntry) -> dict[str, Any]:
    """The ``points`` event payload of an entry (contract in the shared brief)."""
    return {
        "entry_id": entry.entry_id,
        "customer_id": entry.customer_id,
        "kind": entry.kind,
        "points": entry.points,
        "reason": entry.reason,
        "idempotency_key": entry.idempotency_key,
        "created_at": entry.created_at,
        "expires_at": entry.expires_at,
        "reverses": entry.reverses,
    }


def entry_from_payload(payload: Mapping[str, Any]) -> LedgerEntry:
    """Validate a ``points`` event payload (e.g. on the hub) into a :class:`LedgerEntry`.

    Raises ``InputError`` naming the bad field; the hub dead-letters such an event.
    """
    if not isinstance(payload, Mapping):
        raise InputError("points payload must be an object", field="payload")
    kind = payload.get("kind")
    if kind not in POINTS_KINDS:
        raise InputError("kind must be award, redeem, reverse or expire", field="kind")
    points = check_int(payload.get("points"), "points", minimum=-POINTS_MAX, maximum=POINTS_MAX)
    sign_ok = {"award": points > 0, "redeem": points < 0, "expire": points < 0, "reverse": points != 0}[kind]
    if not sign_ok:
        must = {"award": "positive", "redeem": "negative", "expire": "negative", "reverse": "not zero"}[kind]
        raise InputError(f"points of a {kind} entry must be {must}", field="points")
    created_at = payload.get("created_at")
    if isinstance(created_at, bool) or not isinstance(created_at, int | float):
        raise InputError("created_at must be epoch seconds", field="created_at")
    expires_at = payload.get("expires_at")
    if expires_at is not None and (isinstance(expires_at, bool) or not isinstance(expires_at, int | float)):
        raise InputError("expires_at must be epoch seconds or null", field="expires_at")
    reverses = payload.get("reverses")
    if kind in ("reverse", "expire"):
        check_id(reverses, "reverses")
    elif reverses is not None:
        raise InputError(f"a {kind} entry reverses nothing", field="reverses")
    return LedgerEntry(
        entry_id=check_id(payload.get("entry_id"), "entry_id"),
        customer_id=check_id(payload.get("customer_id"), "customer_id"),
        kind=kind,
        points=points,
        reason=check_text(payload.get("reason"), "reason", max_len=REASON_MAX),
        created_at=float(created_at),
        idempotency_key=check_id(payload.get("idempotency_key"), "idempotency_key", max_len=KEY_MAX + 16),
        expires_at=None if expires_at is None else float(expires_at),
        reverses=reverses,
    )


# -- store operations -----------------------------------------------------------------------------


def _row_to_entry(row: Sequence[Any]) -> LedgerEntry:
    entry_id, customer_id, kind, points, reason, key, created_at, expires_at, reverses = row
    return LedgerEntry(
        entry_id=entry_id, customer_id=customer_id, kind=kind, points=int(points), reason=reason,
        created_at=float(created_at), idempotency_key=key,
        expires_at=None if expires_at is None else float(expires_at), reverses=reverses,
    )


def _check_points(points: object) -> int:
    return check_int(points, "points", minimum=1, maximum=POINTS_MAX)


def _check_common(idempotency_key: object, reason: object) -> tuple[str, str]:
    key = check_id(idempotency_key, "idempotency_key", max_len=KEY_MAX)
    if key.startswith(_EXPIRE_KEY_PREFIX):
        raise InputError(f"idempotency keys starting with {_EXPIRE_KEY_PREFIX!r} are reserved for expiry entries",
                         field="idempotency_key")
    text = check_text(reason, "reason", max_len=REASON_MAX)
    return key, text


_LEDGER_NAMESPACE = uuid.UUID("6f1d3c52-8a0e-4f5b-9a3e-0b7c2d9e4a11")


@functools.lru_cache(maxsize=64)
def _store_namespace(identity: str) -> uuid.UUID:
    return uuid.uuid5(_LEDGER_NAMESPACE, identity)


def _entry_id(store: StateStore | Tx, key: str) -> str:
    """The entry id an idempotency key maps to on this store: a name-based UUID (RFC 4122 v5).

    Deriving the id from (store identity, key) makes the primary key do the idempotency check
    — one index fewer on every durable commit — and keeps ids from different devices apart
    when the hub gathers them (the same key on two devices gives two ids).
    """
    device_id = getattr(store, "device_id", None)
    identity = f"device:{device_id}" if device_id else "hub"
    return str(uuid.uuid5(_store_namespace(identity), key))


def _first_result(tx: Tx, entry_id: str, call: tuple[Any, ...]) -> LedgerEntry | None:
    """The entry an earlier call with the same key wrote, if its arguments match ``call``.

    ``call`` is ``(kind, customer_id or reverses, signed points, reason, expires_at)`` —
    for a reverse, the customer and points are the target's, so they are not compared.
    """
    rows = tx.execute(f"SELECT {LEDGER_COLUMNS} FROM ledger_entries WHERE entry_id = ?", (entry_id,))
    if not rows:
        return None
    first = _row_to_entry(rows[0])
    if first.kind == "reverse":
        names: tuple[str, ...] = ("call", "entry_id", "reason")
        was: tuple[Any, ...] = ("reverse", first.reverses, first.reason)
        now: tuple[Any, ...] = (call[0], call[1], call[3]) if call[0] == "reverse" else (call[0], None, call[3])
    else:
        names = ("call", "customer_id", "points", "reason", "expires_at")
        was = (first.kind, first.customer_id, first.points, first.reason, first.expires_at)
        now = call
    if was != now:
        raise LedgerError(key_reused(first.idempotency_key, dict(zip(names, was, strict=True)),
                                     dict(zip(names, now, strict=True))))
    return first


def _write(tx: Tx, entry: LedgerEntry) -> LedgerEntry:
    event = tx.append_event("points", entry_to_payload(entry))
    tx.execute(
        f"INSERT INTO ledger_entries({LEDGER_COLUMNS}, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (entry.entry_id, entry.customer_id, entry.kind, entry.points, entry.reason, entry.idempotency_key,
         entry.created_at, entry.expires_at, entry.reverses, event.seq),
    )
    return entry


def _opening(tx: Tx, customer_id: str) -> tuple[int, int]:
    rows = tx.execute("SELECT balance, as_of_seq FROM central_balances WHERE customer_id = ?", (customer_id,))
    return (int(rows[0][0]), int(rows[0][1])) if rows else (0, 0)


def _window(tx: Tx, customer_id: str, as_of_seq: int) -> list[LedgerEntry]:
    """The customer's entries the central balance does not include yet, in write order."""
    rows = tx.execute(
        f"SELECT {LEDGER_COLUMNS} FROM ledger_entries WHERE customer_id = ? AND seq > ? ORDER BY seq",
        (customer_id, as_of_seq),
    )
    return [_row_to_entry(row) for row in rows]


def _settle(tx: Tx, customer_id: str, store: StateStore) -> LedgerState:
    """Write the ``expire`` entries now due for the customer; return the folded state after them."""
    opening, as_of = _opening(tx, customer_id)
    window = _window(tx, customer_id, as_of)
    state = fold(window, opening=opening)
    due = state.due(tx.now)
    if not due:
        return state
    for lot in due:
        assert lot.entry_id is not None
        key = f"{_EXPIRE_KEY_PREFIX}{lot.entry_id}"
        entry = LedgerEntry(
            entry_id=_entry_id(store, key), customer_id=customer_id, kind="expire", points=-lot.remaining,
            reason="expired", created_at=tx.now, idempotency_key=key, reverses=lot.entry_id,
        )
        _write(tx, entry)
        window.append(entry)
    return fold(window, opening=opening)


def award(store: StateStore, customer_id: str, points: int, *, idempotency_key: str, reason: str,
          expires_at: datetime | None) -> LedgerEntry:
    """Award ``points`` (1..10^9) as a new lot, durably; a repeated key returns the first entry."""
    check_id(customer_id, "customer_id")
    points = _check_points(points)
    key, text = _check_common(idempotency_key, reason)
    expiry = None if expires_at is None else check_instant(expires_at, "expires_at")
    with store.transaction(durable=True) as tx:
        new_id = _entry_id(store, key)
        first = _first_result(tx, new_id, ("award", customer_id, points, text, expiry))
        if first is not None:
            return first
        if expiry is not None and expiry <= tx.now:
            raise InputError("expires_at must be in the future", field="expires_at")
        entry = LedgerEntry(
            entry_id=new_id, customer_id=customer_id, kind="award", points=points, reason=text,
            created_at=tx.now, idempotency_key=key, expires_at=expiry,
        )
        return _write(tx, entry)


def redeem(store: StateStore, customer_id: str, points: int, *, idempotency_key: str, reason: str) -> LedgerEntry:
    """Redeem ``points`` from the oldest-expiring lots, durably; beyond the balance → ``LedgerError``."""
    check_id(customer_id, "customer_id")
    points = _check_points(points)
    key, text = _check_common(idempotency_key, reason)
    with store.transaction(durable=True) as tx:
        new_id = _entry_id(store, key)
        first = _first_result(tx, new_id, ("redeem", customer_id, -points, text, None))
        if first is not None:
            return first
        state = _settle(tx, customer_id, store)
        if points > state.balance:
            raise LedgerError(
                f"cannot redeem {points} points: the available balance is {max(state.balance, 0)}")
        entry = LedgerEntry(
            entry_id=new_id, customer_id=customer_id, kind="redeem", points=-points, reason=text,
            created_at=tx.now, idempotency_key=key,
        )
        return _write(tx, entry)


def reverse(store: StateStore, entry_id: str, *, idempotency_key: str, reason: str) -> LedgerEntry:
    """Reverse an award or a redemption exactly, once, durably (see the module docstring)."""
    check_id(entry_id, "entry_id")
    key, text = _check_common(idempotency_key, reason)
    with store.transaction(durable=True) as tx:
        new_id = _entry_id(store, key)
        first = _first_result(tx, new_id, ("reverse", entry_id, None, text, None))
        if first is not None:
            return first
        rows = tx.execute(f"SELECT {LEDGER_COLUMNS} FROM ledger_entries WHERE entry_id = ?", (entry_id,))
        if not rows:
            raise UnknownReferenceError(f"unknown ledger entry {entry_id!r}", field="entry_id")
        target = _row_to_entry(rows[0])
        if target.kind not in ("award", "redeem"):
            raise LedgerError(f"a {target.kind} entry cannot be reversed; only awards and redemptions can")
        if tx.execute("SELECT 1 FROM ledger_entries WHERE kind = 'reverse' AND reverses = ?", (entry_id,)):
            raise LedgerError(f"ledger entry {entry_id!r} has already been reversed")
        state = _settle(tx, target.customer_id, store)
        if target.kind == "award":
            if target.expires_at is not None and target.expires_at <= tx.now:
                raise LedgerError(f"award {entry_id!r} has expired; its points are no longer on the books")
            if state.balance < target.points:
                raise LedgerError(
                    f"reversing award {entry_id!r} would make the balance negative "
                    f"({state.balance} < {target.points}): reverse the redemption first")
        entry = LedgerEntry(
            entry_id=new_id, customer_id=target.customer_id, kind="reverse", points=-target.points,
            reason=text, created_at=tx.now, idempotency_key=key, reverses=entry_id,
        )
        return _write(tx, entry)


def balance(store: StateStore, customer_id: str) -> int:
    """Central balance + local entries it does not include, net of expiry (expiries written)."""
    check_id(customer_id, "customer_id")
    with store.transaction() as tx:
        opening, as_of = _opening(tx, customer_id)
        state = fold(_window(tx, customer_id, as_of), opening=opening)
        if not state.due(tx.now):
            return state.balance
    # Something expired: write it down durably (points movements are never NORMAL-synced).
    with store.transaction(durable=True) as tx:
        return _settle(tx, customer_id, store).balance


def balance_in(tx: Tx, customer_id: str) -> int:
    """The balance inside an open transaction, net of due expiry, without writing anything.

    For code that already holds a transaction (the decision engine filling
    ``points_balance``, the hub answering balances): same number as :func:`balance`.
    """
    opening, as_of = _opening(tx, customer_id)
    return ledger_balance(_window(tx, customer_id, as_of), now=tx.now, opening=opening)


def entries(store: StateStore, customer_id: str) -> list[LedgerEntry]:
    """Every ledger entry of a customer on this store, in write order."""
    check_id(customer_id, "customer_id")
    with store.transaction() as tx:
        return _window(tx, customer_id, -1)


def apply_central_balances(tx: Tx, balances: Mapping[str, int], *, acked_through: int) -> list[tuple[str, str]]:
    """Store the hub's authoritative balances, each covering this device's events ≤ ``acked_through``.

    Called by the sync client inside the transaction that marks events acked. An answer older
    than the one already stored (smaller ``acked_through``) is ignored, so a late reply to an
    earlier batch cannot roll a balance back. A balance this device cannot apply (a customer id
    that breaks the id rule, a balance out of range) is skipped, never raised: it is returned as
    ``(customer_id, reason)`` for the caller to dead-letter, and the others are stored.
    """
    refused: list[tuple[str, str]] = []
    try:
        check_int(acked_through, "acked_through", minimum=0, maximum=2**62)
    except InputError as exc:
        return [(customer_id, str(exc)) for customer_id in balances]
    rows: list[tuple[Any, ...]] = []
    for customer_id, value in balances.items():
        try:
            check_id(customer_id, "customer_id")
            check_int(value, "balance", minimum=-(2**62), maximum=2**62)
        except InputError as exc:
            refused.append((customer_id, str(exc)))
            continue
        rows.append((customer_id, value, acked_through, tx.now))
    # Multi-row upserts: a sync batch can carry thousands of balances (one statement each
    # would dominate the sync's cost on the device).
    for start in range(0, len(rows), 200):
        chunk = rows[start:start + 200]
        tx.execute(
            "INSERT INTO central_balances(customer_id, balance, as_of_seq, updated_at) VALUES "
            + ", ".join(["(?, ?, ?, ?)"] * len(chunk))
            + " ON CONFLICT(customer_id) DO UPDATE SET balance = excluded.balance, "
            "as_of_seq = excluded.as_of_seq, updated_at = excluded.updated_at "
            "WHERE central_balances.as_of_seq <= excluded.as_of_seq",
            [v for row in chunk for v in row],
        )
    return refused
