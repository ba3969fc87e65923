"""The hub store: where every terminal's events land exactly once (docs/sync.md, docs/operations.md).

- **Event store** ``hub_events``, keyed by ``(device_id, seq)``. A retried event (same key, same
  ``event_id``) is a no-op; the same key with another ``event_id`` is a conflict and nothing of
  that batch is stored. Events that are individually invalid are stored as *rejected* with the
  reason, so ``acked_through`` moves past them and the device dead-letters them.
- **Authoritative ledger** ``hub_ledger``, keyed by the device-assigned ``entry_id``, so a
  replayed points event can never count twice. Points from many terminals for one customer
  add up; an offline over-redemption is accepted, recorded, and flagged (``flag``/``shortfall``),
  never dropped.
- **Bundle registry** ``hub_bundles`` (name, version, sha256, size, file) with the zip files
  under ``STATE/hub-bundles/``.

One database transaction per pushed batch. The SQL is the same on SQLite and PostgreSQL
(``gateway._db``); on PostgreSQL, concurrent pushes of one device (two replicas behind a load
balancer) serialise on the device's row, and ledger writes on the customers' rows, taken in
sorted order so they cannot deadlock.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbo.sdk import Clock, InputError, LedgerEntry, NotFoundError, StateError, SystemClock
from nbo.sdk.core import (
    AMOUNT_PLACES,
    BUNDLE_NAME_RE,
    CURRENCY_MINOR_UNITS,
    EVENT_TYPES,
    ID_MAX,
    KEY_MAX,
    LEDGER_COLUMNS,
    OUTCOMES,
    PAYMENT_TOKEN_MAX,
    QUANTITY_MAX,
    EventConflictError,
    check_decimal,
    check_id,
    check_int,
    entry_from_payload,
    find_card_data,
    id_problem,
    ledger_balance,
    sha256_file,
)

from ._db import Database, DbTx, open_database

__all__ = [
    "BundleRecord",
    "HeldEvent",
    "HubStore",
    "IncomingEvent",
    "IngestResult",
    "Rejection",
    "validate_payload",
]

SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS hub_devices(
        device_id TEXT PRIMARY KEY,
        acked_through BIGINT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS hub_events(
        device_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        event_id TEXT NOT NULL,
        type TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        payload TEXT NOT NULL,            -- the JSON object exactly as the device sent it
        status TEXT NOT NULL,             -- ok | rejected
        reason TEXT,                      -- why it was rejected
        received_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY(device_id, seq))""",
    # No query ever used this index; it cost every stored event (a push, an app decision) a
    # third b-tree insert. Dropped where an earlier version created it.
    "DROP INDEX IF EXISTS hub_events_by_type",
    """CREATE TABLE IF NOT EXISTS hub_customers(
        customer_id TEXT PRIMARY KEY,     -- one row per customer with ledger entries (also a lock row)
        entries BIGINT NOT NULL,
        points_sum BIGINT NOT NULL,       -- sum of all entries: the balance while nothing can expire
        expiring INTEGER NOT NULL)        -- 1 once any entry has an expires_at: fold the ledger""",
    """CREATE TABLE IF NOT EXISTS hub_ledger(
        entry_id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        kind TEXT NOT NULL,               -- award | redeem | reverse | expire
        points BIGINT NOT NULL,           -- signed
        reason TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION,
        reverses TEXT,
        device_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        flag TEXT,                        -- over_redemption when the balance went below zero
        shortfall BIGINT NOT NULL DEFAULT 0,
        received_at DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS hub_ledger_by_customer ON hub_ledger(customer_id, created_at)",
    """CREATE TABLE IF NOT EXISTS hub_bundles(
        name TEXT NOT NULL,
        version BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        size BIGINT NOT NULL,
        file TEXT NOT NULL,               -- file name under STATE/hub-bundles/
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY(name, version))""",
    # What each device said about itself in its latest push (the console's field view): the
    # highest seq its outbox held (pending = outbox_head - hub_devices.acked_through) and the
    # bundle it runs.
    """CREATE TABLE IF NOT EXISTS hub_device_status(
        device_id TEXT PRIMARY KEY,
        outbox_head BIGINT NOT NULL,
        bundle_name TEXT,
        bundle_version BIGINT,
        pushed_at DOUBLE PRECISION NOT NULL)""",
    # The bundle's bytes in the database too, so every replica sharing a PostgreSQL hub can serve a
    # bundle published to any of them (each one writes its own copy under STATE/hub-bundles/).
    """CREATE TABLE IF NOT EXISTS hub_bundle_parts(
        name TEXT NOT NULL,
        version BIGINT NOT NULL,
        part BIGINT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY(name, version, part))""",
)

_PART_SIZE = 1024 * 1024

SCHEMA_LOCK_KEY = 0x4E42_0001
"""PostgreSQL advisory-lock key held while creating tables (shared by every hub-side schema)."""

_MAX_TYPE = 40  # characters of an unknown event type kept with its rejection
_MAX_PAYLOAD = 256 * 1024
_IN_CHUNK = 400  # parameters per IN (…) list; far below both databases' limits


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """One event as a device pushes it; ``payload`` is the JSON text (or an object)."""

    seq: int
    event_id: str
    type: str
    created_at: float
    payload: str | Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class HeldEvent:
    """An event the hub holds for a device, as stored; ``rejected_reason`` is None for a valid one."""

    seq: int
    event_id: str
    type: str
    created_at: float
    payload: str
    rejected_reason: str | None


@dataclass(frozen=True, slots=True)
class Rejection:
    """An event the hub refused as invalid; the device dead-letters it with ``reason``."""

    seq: int
    event_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one pushed batch did."""

    acked_through: int
    stored: int
    """Events newly stored (valid or rejected)."""
    duplicates: int
    """Events of the batch the hub already held (a retry): no-ops."""
    rejected: tuple[Rejection, ...] = ()
    """Invalid events of the batch, including ones rejected by an earlier try of it."""
    balances: Mapping[str, int] = field(default_factory=dict)
    """Authoritative points balances of the customers named in the batch."""
    flagged: tuple[str, ...] = ()
    """Entry ids of this batch flagged as offline over-redemptions."""


@dataclass(frozen=True, slots=True)
class BundleRecord:
    """A bundle the hub serves."""

    name: str
    version: int
    sha256: str
    size: int
    path: Path
    created_at: float


# -- validation ------------------------------------------------------------------------------


def _need_id(payload: Mapping[str, Any], key: str, *, optional: bool = False, max_len: int = ID_MAX) -> None:
    value = payload.get(key)
    if value is None:
        if optional:
            return
        raise InputError(f"payload.{key} is required", field=f"payload.{key}")
    check_id(value, f"payload.{key}", max_len=max_len)


def _need_number(payload: Mapping[str, Any], key: str) -> None:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"payload.{key} must be a finite number", field=f"payload.{key}")


def _need_amount(payload: Mapping[str, Any], key: str, *, max_places: int) -> None:
    value = payload.get(key)
    if not isinstance(value, str):
        raise InputError(f"payload.{key} must be a decimal string", field=f"payload.{key}")
    check_decimal(value, f"payload.{key}", max_places=max_places)


def validate_payload(type: str, payload: Any) -> None:
    """Check an event payload with the SDK's own rules and limits; ``InputError`` (a ``ValueError``) names the field.

    Ids keep the one id rule (``nbo.sdk.core.check_id``: length, no control or format
    characters, no card data), points stay within the SDK's ±``POINTS_MAX`` with the kind's
    sign, amounts keep the strict decimal grammar and their places, quantities their bound —
    so a rogue or outdated device gets this one event refused, never the batch.
    """
    if type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type!r}")
    if not isinstance(payload, Mapping):
        raise ValueError("payload must be a JSON object")
    if type == "decision":
        if payload.get("compacted") is True and len(payload) == 1:
            return  # the device compacted this decision log entry past its disk budget
        for key in ("decision_id", "customer_id", "channel", "bundle_name"):
            _need_id(payload, key)
        check_int(payload.get("bundle_version"), "payload.bundle_version", minimum=1, maximum=2**63 - 1)
        offers = payload.get("offers")
        if not isinstance(offers, list):
            raise ValueError("payload.offers must be a list")
        for i, offer in enumerate(offers):
            if not isinstance(offer, Mapping):
                raise ValueError(f"payload.offers[{i}] must be an object")
            check_id(offer.get("offer_id"), f"payload.offers[{i}].offer_id")
    elif type == "response":
        for key in ("decision_id", "offer_id", "customer_id"):
            _need_id(payload, key)
        if payload.get("outcome") not in OUTCOMES:
            raise ValueError("payload.outcome must be accepted, declined or ignored")
    elif type == "purchase":
        for key in ("purchase_id", "customer_id"):
            _need_id(payload, key)
        _need_id(payload, "idempotency_key", max_len=KEY_MAX)
        _need_amount(payload, "amount", max_places=AMOUNT_PLACES)
        check_int(payload.get("quantity"), "payload.quantity", minimum=1, maximum=QUANTITY_MAX)
        _need_number(payload, "timestamp")
    elif type == "points":
        for key in ("entry_id", "customer_id"):
            _need_id(payload, key)
        try:
            entry_from_payload(payload)  # the SDK's own reading of a points event: its limits exactly
        except InputError as exc:
            raise InputError(f"payload.{exc}", field=f"payload.{exc.field}") from None
        _need_number(payload, "created_at")
        if payload.get("expires_at") is not None:
            _need_number(payload, "expires_at")
    elif type == "payment":
        for key in ("payment_id", "customer_id"):
            _need_id(payload, key)
        _need_id(payload, "payment_token", max_len=PAYMENT_TOKEN_MAX)
        _need_id(payload, "idempotency_key", max_len=KEY_MAX)
        currency = payload.get("currency")
        if not isinstance(currency, str) or currency not in CURRENCY_MINOR_UNITS:
            raise ValueError("payload.currency must be an active ISO 4217 code")
        minor = CURRENCY_MINOR_UNITS[currency]
        _need_amount(payload, "amount", max_places=AMOUNT_PLACES if minor is None else minor)
        for key in ("store_id", "decision_id", "offer_id"):
            _need_id(payload, key, optional=True)


def _check_structure(device_id: str, events: Sequence[IncomingEvent]) -> None:
    """Problems that make the whole request malformed (rather than one event invalid)."""
    check_id(device_id, "device_id")
    previous = 0
    for i, event in enumerate(events):
        if isinstance(event.seq, bool) or not isinstance(event.seq, int) or event.seq < 1:
            raise InputError(f"events[{i}].seq must be a positive integer", field=f"events[{i}].seq")
        if event.seq <= previous:
            raise InputError(f"events[{i}].seq must be ascending without repeats", field=f"events[{i}].seq")
        previous = event.seq
        check_id(event.event_id, f"events[{i}].event_id")


def _balance(entries: Sequence[LedgerEntry], now: float) -> int:
    """The balance of one customer's ledger: the SDK's pure rule when it has one."""
    return int(ledger_balance(entries, now=now))


def _entry(row: Sequence[Any]) -> LedgerEntry:
    entry_id, customer_id, kind, points, reason, key, created_at, expires_at, reverses = row[:9]
    return LedgerEntry(
        entry_id=entry_id,
        customer_id=customer_id,
        kind=kind,
        points=int(points),
        reason=reason,
        created_at=float(created_at),
        idempotency_key=key,
        expires_at=None if expires_at is None else float(expires_at),
        reverses=reverses,
    )




# -- the store -------------------------------------------------------------------------------


class HubStore:
    """The hub's authoritative store over a :class:`~gateway._db.Database`.

    Open with :meth:`HubStore.open`. Thread-safe: each call is one transaction.
    """

    def __init__(self, db: Database, *, state_dir: str | os.PathLike[str], clock: Clock | None = None) -> None:
        self.db = db
        self.clock: Clock = clock or SystemClock()
        self.bundle_dir = Path(state_dir) / "hub-bundles"
        self.bundle_dir.mkdir(parents=True, exist_ok=True)
        with db.transaction() as tx:
            if db.dialect == "postgresql":
                # Replicas starting together: concurrent CREATE TABLE IF NOT EXISTS can collide in
                # PostgreSQL's catalog (unique violation on pg_type); one creator at a time.
                tx.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_KEY,))
            for ddl in SCHEMA:
                tx.execute(ddl)
        self._upgrade()

    def _upgrade(self) -> None:
        """Bring a hub database created by an earlier version up to this schema."""
        try:
            with self.db.transaction() as tx:
                tx.execute("SELECT points_sum, expiring FROM hub_customers WHERE 1 = 0")
            return
        except StateError:
            pass  # hub_customers predates the per-customer summary: add it, computed from the ledger
        with self.db.transaction() as tx:
            if self.db.dialect == "postgresql":
                tx.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_KEY,))
            tx.execute("ALTER TABLE hub_customers ADD COLUMN points_sum BIGINT NOT NULL DEFAULT 0")
            tx.execute("ALTER TABLE hub_customers ADD COLUMN expiring INTEGER NOT NULL DEFAULT 0")
            tx.execute(
                "UPDATE hub_customers SET points_sum = COALESCE((SELECT SUM(l.points) FROM hub_ledger l "
                "WHERE l.customer_id = hub_customers.customer_id), 0), expiring = CASE WHEN EXISTS "
                "(SELECT 1 FROM hub_ledger l WHERE l.customer_id = hub_customers.customer_id "
                "AND l.expires_at IS NOT NULL) THEN 1 ELSE 0 END"
            )

    @classmethod
    def open(
        cls,
        url: str | None,
        *,
        state_dir: str | os.PathLike[str],
        clock: Clock | None = None,
        schema: str | None = None,
    ) -> HubStore:
        """Open the hub store at ``url`` (``None`` → ``sqlite:`` file ``STATE/hub.sqlite``)."""
        state = Path(state_dir)
        state.mkdir(parents=True, exist_ok=True)
        db = open_database(url or f"sqlite:{(state / 'hub.sqlite').resolve()}", schema=schema)
        try:
            return cls(db, state_dir=state, clock=clock)
        except BaseException:
            db.close()
            raise

    def close(self) -> None:
        """Release the database."""
        self.db.close()

    # -- events ----------------------------------------------------------------------------

    def ingest(
        self,
        device_id: str,
        events: Sequence[IncomingEvent],
        *,
        outbox_head: int = 0,
        active_bundle: tuple[str, int] | None = None,
    ) -> IngestResult:
        """Store one pushed batch idempotently; see the module docstring for the rules.

        ``outbox_head`` (the highest seq the device's outbox holds, 0 = not reported) and
        ``active_bundle`` (name, version the device runs) are kept per device in
        ``hub_device_status`` for the console. Raises :class:`EventConflictError` (nothing
        stored) when a ``(device_id, seq)`` is already held with another ``event_id``, and
        :class:`InputError` for a malformed batch.
        """
        _check_structure(device_id, events)
        if isinstance(outbox_head, bool) or not isinstance(outbox_head, int) or outbox_head < 0:
            raise InputError("outbox_head must be a non-negative integer", field="outbox_head")
        if active_bundle is not None:
            name, version = active_bundle
            if not isinstance(name, str) or not BUNDLE_NAME_RE.match(name):
                raise InputError("active_bundle.name must be a bundle name", field="active_bundle.name")
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                raise InputError("active_bundle.version must be a positive integer", field="active_bundle.version")
        now = self.clock.now()
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT INTO hub_devices(device_id, acked_through, updated_at) VALUES (?, 0, ?) "
                "ON CONFLICT (device_id) DO NOTHING",
                (device_id, now),
            )
            # UPDATE … RETURNING takes the device's row lock on PostgreSQL: concurrent pushes of
            # one device (two replicas) run one after the other. SQLite's writer lock does the same.
            (row,) = tx.execute(
                "UPDATE hub_devices SET updated_at = ? WHERE device_id = ? RETURNING acked_through",
                (now, device_id),
            )
            acked = int(row[0])
            held = self._held(tx, device_id, events)

            rejected: list[Rejection] = []
            new_rows: list[tuple[Any, ...]] = []
            points: list[tuple[IncomingEvent, Mapping[str, Any]]] = []
            customers: set[str] = set()
            duplicates = 0
            for i, event in enumerate(events):
                previous = held.get(event.seq)
                if previous is not None:
                    event_id, status, reason = previous
                    if event_id != event.event_id:
                        raise EventConflictError(
                            f"events[{i}]: seq {event.seq} of device {device_id!r} is already held with "
                            f"a different event_id; the hub holds this device's events through seq {acked}, so "
                            "its state was reset or restored from an older copy: run `nbo recover` on the "
                            "device (docs/operations.md, Recovering a damaged device)",
                            field=f"events[{i}].event_id",
                        )
                    duplicates += 1
                    if status == "rejected":
                        rejected.append(Rejection(event.seq, event.event_id, reason or "rejected"))
                    elif isinstance(cid := _customer_of(event), str):
                        customers.add(cid)
                    continue
                text, payload, reason = _parse(event)
                if reason is None and isinstance(payload, Mapping):
                    cid = payload.get("customer_id")
                    if isinstance(cid, str):
                        customers.add(cid)
                    if event.type == "points":
                        points.append((event, payload))
                    status = "ok"
                else:
                    rejected.append(Rejection(event.seq, event.event_id, reason or "invalid"))
                    status = "rejected"
                created = event.created_at if _finite(event.created_at) else 0.0
                new_rows.append((device_id, event.seq, event.event_id, _storable(str(event.type)[:_MAX_TYPE]), created,
                                 _storable(text), status, reason and _storable(reason), now))
            tx.executemany(
                "INSERT INTO hub_events(device_id, seq, event_id, type, created_at, payload, status, reason, "
                "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                new_rows,
            )
            flagged = self._apply_points(tx, device_id, points, now) if points else ()
            acked = self._advance(tx, device_id, acked)
            tx.execute("UPDATE hub_devices SET acked_through = ? WHERE device_id = ?", (acked, device_id))
            tx.execute(
                "INSERT INTO hub_device_status(device_id, outbox_head, bundle_name, bundle_version, pushed_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET outbox_head = excluded.outbox_head, "
                "bundle_name = excluded.bundle_name, bundle_version = excluded.bundle_version, "
                "pushed_at = excluded.pushed_at",
                (device_id, outbox_head, *(active_bundle or (None, None)), now),
            )
            balances = self._balances(tx, sorted(customers), now)
        return IngestResult(
            acked_through=acked,
            stored=len(new_rows),
            duplicates=duplicates,
            rejected=tuple(rejected),
            balances=balances,
            flagged=flagged,
        )

    def _held(self, tx: DbTx, device_id: str, events: Sequence[IncomingEvent]) -> dict[int, tuple[str, str, str | None]]:
        if not events:
            return {}
        rows = tx.execute(
            "SELECT seq, event_id, status, reason FROM hub_events WHERE device_id = ? AND seq BETWEEN ? AND ?",
            (device_id, events[0].seq, events[-1].seq),
        )
        return {int(seq): (event_id, status, reason) for seq, event_id, status, reason in rows}

    def _advance(self, tx: DbTx, device_id: str, acked: int) -> int:
        # Highest contiguous seq held (rejected events count as held).
        while True:
            rows = tx.execute(
                "SELECT seq FROM hub_events WHERE device_id = ? AND seq > ? ORDER BY seq LIMIT 5000",
                (device_id, acked),
            )
            for (seq,) in rows:
                if int(seq) != acked + 1:
                    return acked
                acked += 1
            if len(rows) < 5000:
                return acked

    def _apply_points(
        self, tx: DbTx, device_id: str, points: Sequence[tuple[IncomingEvent, Mapping[str, Any]]], now: float
    ) -> tuple[str, ...]:
        held = self._held_entries(tx, [p["entry_id"] for _, p in points])
        by_customer: dict[str, list[tuple[int, LedgerEntry]]] = {}
        for event, p in points:
            if p["entry_id"] in held:
                continue  # the same entry arrived through another event: it counts once
            held.add(p["entry_id"])
            entry = LedgerEntry(
                entry_id=p["entry_id"],
                customer_id=p["customer_id"],
                kind=p["kind"],
                points=int(p["points"]),
                reason=p.get("reason") or "",
                created_at=float(p["created_at"]),
                idempotency_key=p["idempotency_key"],
                expires_at=None if p.get("expires_at") is None else float(p["expires_at"]),
                reverses=p.get("reverses"),
            )
            by_customer.setdefault(entry.customer_id, []).append((event.seq, entry))
        ordered = sorted(by_customer)
        tx.executemany(
            "INSERT INTO hub_customers(customer_id, entries, points_sum, expiring) VALUES (?, 0, 0, 0) "
            "ON CONFLICT (customer_id) DO NOTHING",
            [(c,) for c in ordered],
        )
        rows: list[tuple[Any, ...]] = []
        flagged: list[str] = []
        for customer in ordered:
            new = by_customer[customer]
            delta = sum(e.points for _, e in new)
            expiring_now = any(e.expires_at is not None for _, e in new)
            # Row locks in sorted customer order: two replicas writing the same customers cannot
            # deadlock. RETURNING gives the summary after this batch.
            ((points_sum, expiring),) = tx.execute(
                "UPDATE hub_customers SET entries = entries + ?, points_sum = points_sum + ?, "
                "expiring = CASE WHEN ? = 1 THEN 1 ELSE expiring END WHERE customer_id = ? "
                "RETURNING points_sum, expiring",
                (len(new), delta, 1 if expiring_now else 0, customer),
            )
            flags: dict[str, int] = {}
            if any(e.kind == "redeem" for _, e in new):
                if int(expiring):
                    # Lots can expire: fold the ledger (the SDK's own rule) after each entry.
                    ledger = self._ledgers(tx, [customer]).get(customer, [])
                    for _, entry in new:
                        ledger.append(entry)
                        if entry.kind == "redeem":
                            after = _balance(ledger, max(now, entry.created_at))
                            if after < 0:
                                flags[entry.entry_id] = min(-after, -entry.points)
                else:
                    running = int(points_sum) - delta
                    for _, entry in new:
                        running += entry.points
                        if entry.kind == "redeem" and running < 0:
                            flags[entry.entry_id] = min(-running, -entry.points)
            for seq, e in new:
                shortfall = flags.get(e.entry_id)
                if shortfall is not None:
                    # Accepted (it happened at the till) but flagged for the loyalty team.
                    flagged.append(e.entry_id)
                rows.append((e.entry_id, e.customer_id, e.kind, e.points, e.reason, e.idempotency_key, e.created_at,
                             e.expires_at, e.reverses, device_id, seq,
                             None if shortfall is None else "over_redemption", shortfall or 0, now))
        tx.executemany(
            f"INSERT INTO hub_ledger({LEDGER_COLUMNS}, device_id, seq, flag, shortfall, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        return tuple(flagged)

    def _held_entries(self, tx: DbTx, entry_ids: Sequence[str]) -> set[str]:
        held: set[str] = set()
        unique = sorted(set(entry_ids))
        for start in range(0, len(unique), _IN_CHUNK):
            chunk = unique[start:start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            held.update(r[0] for r in tx.execute(f"SELECT entry_id FROM hub_ledger WHERE entry_id IN ({marks})",
                                                 tuple(chunk)))
        return held

    def _ledgers(self, tx: DbTx, customers: Sequence[str]) -> dict[str, list[LedgerEntry]]:
        ledgers: dict[str, list[LedgerEntry]] = {}
        for start in range(0, len(customers), _IN_CHUNK):
            chunk = customers[start:start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            for row in tx.execute(
                f"SELECT {LEDGER_COLUMNS} FROM hub_ledger WHERE customer_id IN ({marks}) "
                "ORDER BY customer_id, created_at, received_at, seq, entry_id",
                tuple(chunk),
            ):
                ledgers.setdefault(row[1], []).append(_entry(row))
        return ledgers

    def _balances(self, tx: DbTx, customers: Sequence[str], now: float) -> dict[str, int]:
        balances = dict.fromkeys(customers, 0)
        expiring: list[str] = []
        for start in range(0, len(customers), _IN_CHUNK):
            chunk = customers[start:start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            for customer, points_sum, exp in tx.execute(
                f"SELECT customer_id, points_sum, expiring FROM hub_customers WHERE customer_id IN ({marks})",
                tuple(chunk),
            ):
                if int(exp):
                    expiring.append(customer)
                else:
                    balances[customer] = int(points_sum)  # nothing can expire: the sum is the balance
        if expiring:
            ledgers = self._ledgers(tx, expiring)
            for customer in expiring:
                balances[customer] = _balance(ledgers.get(customer, []), now)
        return balances

    def acked_through(self, device_id: str) -> int:
        """Highest contiguous seq held for ``device_id`` (0 when none)."""
        with self.db.transaction() as tx:
            rows = tx.execute("SELECT acked_through FROM hub_devices WHERE device_id = ?", (device_id,))
        return int(rows[0][0]) if rows else 0

    def device_position(self, device_id: str) -> tuple[int, int]:
        """``(acked_through, highest seq held)`` of one device; ``(0, 0)`` for a device never seen."""
        with self.db.transaction() as tx:
            rows = tx.execute(
                "SELECT d.acked_through, (SELECT MAX(e.seq) FROM hub_events e WHERE e.device_id = d.device_id) "
                "FROM hub_devices d WHERE d.device_id = ?", (device_id,))
        return (int(rows[0][0]), int(rows[0][1] or 0)) if rows else (0, 0)

    def device_events(self, device_id: str, *, after_seq: int = 0, limit: int = 2000) -> list[HeldEvent]:
        """One device's held events with ``seq > after_seq``, in seq order, at most ``limit``
        (a page of what ``nbo recover`` rebuilds the device from)."""
        with self.db.transaction() as tx:
            rows = tx.execute(
                "SELECT seq, event_id, type, created_at, payload, status, reason FROM hub_events "
                "WHERE device_id = ? AND seq > ? ORDER BY seq LIMIT ?", (device_id, after_seq, limit))
        return [HeldEvent(int(seq), event_id, type_, float(created), payload,
                          None if status == "ok" else (reason or "rejected"))
                for seq, event_id, type_, created, payload, status, reason in rows]

    def events(self, *, device_id: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Stored events (for tests, exports and retraining), oldest first per device."""
        sql = "SELECT device_id, seq, event_id, type, created_at, payload, status, reason FROM hub_events"
        where, params = [], []
        if device_id is not None:
            where.append("device_id = ?")
            params.append(device_id)
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self.db.transaction() as tx:
            rows = tx.execute(sql + " ORDER BY device_id, seq", tuple(params))
        keys = ("device_id", "seq", "event_id", "type", "created_at", "payload", "status", "reason")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    # -- ledger ----------------------------------------------------------------------------

    def balance(self, customer_id: str) -> int:
        """The authoritative points balance of one customer."""
        return self.balances([customer_id])[customer_id]

    def balances(self, customer_ids: Iterable[str]) -> dict[str, int]:
        """Authoritative balances of several customers."""
        customers = sorted(set(customer_ids))
        with self.db.transaction() as tx:
            return self._balances(tx, customers, self.clock.now())

    def ledger(self, customer_id: str) -> list[LedgerEntry]:
        """One customer's hub ledger entries, oldest first."""
        with self.db.transaction() as tx:
            return self._ledgers(tx, [customer_id]).get(customer_id, [])

    def flagged(self) -> list[dict[str, Any]]:
        """Ledger entries flagged as offline over-redemptions, oldest first."""
        with self.db.transaction() as tx:
            rows = tx.execute(
                "SELECT entry_id, customer_id, points, shortfall, device_id, seq, flag FROM hub_ledger "
                "WHERE flag IS NOT NULL ORDER BY received_at, entry_id"
            )
        keys = ("entry_id", "customer_id", "points", "shortfall", "device_id", "seq", "flag")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    # -- bundles ---------------------------------------------------------------------------

    def register_bundle(self, source: bytes | str | os.PathLike[str], *, name: str, version: int) -> BundleRecord:
        """Store a (verified) bundle zip and make it the latest one served.

        Registering the same name and version again with identical bytes is a no-op; with
        different bytes it is an :class:`InputError`.
        """
        if not isinstance(name, str) or not BUNDLE_NAME_RE.match(name):
            raise InputError("bundle name must be 1-64 letters, digits, '.', '_' or '-'", field="name")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise InputError("bundle version must be a positive integer", field="version")
        data = source if isinstance(source, bytes) else _read(Path(source))
        digest = hashlib.sha256(data).hexdigest()
        file_name = f"{name}-{version}.zip"
        target = self.bundle_dir / file_name
        with self.db.transaction() as tx:
            rows = tx.execute("SELECT sha256 FROM hub_bundles WHERE name = ? AND version = ?", (name, version))
            if rows and rows[0][0] != digest:
                raise InputError(f"bundle {name} version {version} is already published with other content",
                                 field="version")
            if not target.exists() or sha256_file(target) != digest:
                _write_atomic(target, data)
            now = self.clock.now()
            if not rows:
                tx.executemany(
                    "INSERT INTO hub_bundle_parts(name, version, part, data) VALUES (?, ?, ?, ?)",
                    [(name, version, i, data[start:start + _PART_SIZE])
                     for i, start in enumerate(range(0, len(data), _PART_SIZE))],
                )
                tx.execute(
                    "INSERT INTO hub_bundles(name, version, sha256, size, file, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (name, version, digest, len(data), file_name, now),
                )
                return BundleRecord(name, version, digest, len(data), target, now)
        return self.bundle(name, version)

    def latest_bundle(self, name: str | None = None) -> BundleRecord | None:
        """The newest version of ``name``, or the most recently published bundle."""
        if name is not None:
            _check_bundle_name(name)
        sql = "SELECT name, version, sha256, size, file, created_at FROM hub_bundles"
        if name is not None:
            sql += " WHERE name = ? ORDER BY version DESC LIMIT 1"
            params: tuple[Any, ...] = (name,)
        else:
            sql += " ORDER BY created_at DESC, version DESC LIMIT 1"
            params = ()
        with self.db.transaction() as tx:
            rows = tx.execute(sql, params)
        return self._record(rows[0]) if rows else None

    def bundle(self, name: str, version: int) -> BundleRecord:
        """One published bundle; :class:`NotFoundError` when unknown."""
        _check_bundle_name(name)
        with self.db.transaction() as tx:
            rows = tx.execute(
                "SELECT name, version, sha256, size, file, created_at FROM hub_bundles WHERE name = ? AND version = ?",
                (name, version),
            )
        if not rows:
            raise NotFoundError(f"no bundle {name!r} version {version} on this hub")
        return self._record(rows[0])

    def read_bundle(self, name: str, version: int, *, offset: int = 0, chunk_size: int = 256 * 1024
                    ) -> tuple[BundleRecord, Iterator[bytes]]:
        """The record and an iterator over the file's bytes from ``offset`` in chunks."""
        record = self.bundle(name, version)
        if offset < 0 or offset > record.size:
            raise InputError(f"offset {offset} is outside the bundle's {record.size} bytes", field="offset")
        if not record.path.exists():
            raise NotFoundError(f"bundle {name!r} version {version} is registered but its file is missing here")
        return record, _chunks(record.path, offset, chunk_size)

    def _record(self, row: Sequence[Any]) -> BundleRecord:
        name, version, sha, size, file_name, created = row
        path = self.bundle_dir / file_name
        if not path.exists():
            self._materialize(name, int(version), sha, path)
        return BundleRecord(name, int(version), sha, int(size), path, float(created))

    def _materialize(self, name: str, version: int, sha: str, path: Path) -> None:
        """Write a bundle published through another replica from the database to this one's disk."""
        with self.db.transaction() as tx:
            parts = tx.execute(
                "SELECT data FROM hub_bundle_parts WHERE name = ? AND version = ? ORDER BY part", (name, version)
            )
        data = b"".join(bytes(p[0]) for p in parts)
        if hashlib.sha256(data).hexdigest() != sha:
            raise StateError(f"bundle {name!r} version {version}: the hub database holds damaged bytes")
        _write_atomic(path, data)


_REDACTED = '{"redacted":"card data"}'


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_loads(text: str) -> Any:
    return json.loads(text, parse_constant=_no_constants)


try:  # orjson (in the [gateway] extra) parses ~3x faster: JSON parsing is most of the ingest cost
    import orjson

    _loads: Any = orjson.loads
except ImportError:  # pragma: no cover - the stdlib parser, held to the same strictness (no NaN)
    _loads = _json_loads


def customer_of(payload: str) -> Any:
    """The ``customer_id`` of a stored payload (JSON text), or None."""
    try:
        parsed = _loads(payload)
    except ValueError:
        return None
    return parsed.get("customer_id") if isinstance(parsed, Mapping) else None


def _customer_of(event: IncomingEvent) -> Any:
    payload = event.payload
    if isinstance(payload, str):
        try:
            payload = _loads(payload)
        except ValueError:
            return None
    cid = payload.get("customer_id") if isinstance(payload, Mapping) else None
    # An id an earlier version let in is never answered back: the device could not apply it.
    return cid if id_problem(cid) is None else None


def _storable(text: str) -> str:
    # PostgreSQL TEXT cannot hold NUL; only an invalid (rejected) payload can contain a raw one.
    return text.replace("\x00", "\\u0000") if "\x00" in text else text


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse(event: IncomingEvent) -> tuple[str, Any, str | None]:
    """(text to store, parsed payload, rejection reason or None)."""
    if isinstance(event.payload, str):
        text = event.payload
        if len(text) > _MAX_PAYLOAD:
            return text[:1024], None, f"payload larger than {_MAX_PAYLOAD} bytes"
        try:
            payload = _loads(text)
        except ValueError as exc:
            return text, None, f"payload is not valid JSON: {exc}"
    else:
        payload = event.payload
        try:
            text = json.dumps(payload, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            return "{}", None, f"payload is not JSON-serialisable: {exc}"
    if not isinstance(event.type, str) or event.type not in EVENT_TYPES:
        return text, payload, f"unknown event type {str(event.type)[:40]!r}"
    if isinstance(payload, Mapping | list):
        # Defence in depth (devices refuse card data first): every string of the payload, keys
        # and ids included, with the SDK's scanner (canonical UUIDs are ids, not card numbers).
        hit = find_card_data(payload, "payload", numbers=True)
        if hit is not None:
            # Never stored, not even as a rejected event: the payload is replaced, the field named.
            return _REDACTED, None, (f"{hit} looks like card data (a card number or sensitive "
                                     "authentication data); the payload was discarded")
    if not _finite(event.created_at):
        return text, payload, "created_at must be a finite number"
    try:
        validate_payload(event.type, payload)
    except ValueError as exc:
        return text, payload, str(exc)
    return text, payload, None


def _check_bundle_name(name: object) -> None:
    # A name a terminal asks for goes into a query: one that no bundle can have (a NUL, which
    # PostgreSQL cannot even compare) is a bad request, not a database error.
    if not isinstance(name, str) or not BUNDLE_NAME_RE.match(name):
        raise InputError("name must be a bundle name: 1-64 letters, digits, '.', '_' or '-'", field="name")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read bundle file {path}: {exc.strerror or exc}", field="path") from exc




def _write_atomic(target: Path, data: bytes) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise StateError(f"cannot store bundle file {target}: {exc.strerror or exc}") from exc


def _chunks(path: Path, offset: int, chunk_size: int) -> Iterator[bytes]:
    with path.open("rb") as f:
        f.seek(offset)
        while block := f.read(chunk_size):
            yield block
