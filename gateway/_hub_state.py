"""The hub-backed state store (docs/operations.md): the SDK's domain code, run over the hub database.

The gateway decides, records responses, runs the ledger and writes payment records with the
very same ``sdk._engine`` / ``sdk._records`` / ``sdk._ledger`` / ``sdk._payments`` functions a
terminal uses. They only see the :class:`~nbo.sdk._store.StateStore` / ``Tx`` seam; this module
implements it over the hub's :class:`~gateway._db.Database` (SQLite or PostgreSQL), so every
replica sharing one PostgreSQL hub sees the same profiles, contact history and ledger.

- **Tables**: ``CORE_SCHEMA`` plus the domain modules' ``SCHEMA`` tables live in the hub
  database next to the hub's own ``hub_*`` tables.
- **Events**: ``Tx.append_event`` writes straight into the hub event log ``hub_events`` in the
  same transaction as the state change (no outbox hop), as device :attr:`source_id` (``app``)
  with a gapless ``seq`` taken from that source's ``hub_devices`` row, locked by the
  ``UPDATE … RETURNING`` — on PostgreSQL two replicas therefore hand out seqs one after the
  other, never the same one twice. ``acked_through`` of the source is that counter.
- **Ledger**: a ``points`` event is applied to the hub's authoritative ledger ``hub_ledger``
  in the same transaction, through the hub's own apply function, so app points count exactly
  like points pushed by terminals. :meth:`HubStateStore.ledger_transaction` makes the SDK
  ledger see the hub's authoritative balance (all terminals + app) as its opening balance, so
  a redeem on the gateway is checked against it.
- **Durability**: money and points commit with an fsync; decisions and responses do not wait
  for one (see :meth:`HubStateStore.transaction`).
- **Contact policies across replicas**: :meth:`HubStateStore.decision_batch` opens one
  transaction holding per-customer locks (PostgreSQL transaction-scoped advisory locks, taken in
  key order; the SQLite hub's writer lock already serialises everything) in which every
  transaction the domain code opens on this thread joins, so reading the contact history and
  recording the decision are atomic for that customer whichever replica answers. The gateway
  runs several decisions in one such transaction (``gateway/_decide_batch.py``), after their
  rules and models ran outside it (``nbo.sdk.core.prepare_many``, in a :meth:`HubStateStore.read`
  view that takes no write lock).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from nbo.sdk import Clock, StateError, SystemClock
from nbo.sdk.core import (
    CORE_SCHEMA,
    EVENT_TYPES,
    LEDGER_SCHEMA,
    PAYMENT_SCHEMA,
    RECORD_SCHEMA,
    Event,
    WalCheckpointer,
    insert_rows,
    limit_wal,
)

from ._config import RESERVED_DEVICE_ID
from ._db import Database, DbTx, SQLiteDatabase
from ._hub import SCHEMA_LOCK_KEY, HubStore, IncomingEvent, validate_payload

__all__ = ["APP_SOURCE", "HubStateStore", "HubTx"]

try:  # orjson (the [gateway] extra) encodes an event payload ~10x faster than the stdlib
    import orjson

    def _encode(payload: Mapping[str, Any]) -> str:
        # Same compact text as json.dumps(separators=(",", ":")); the payload contracts hold no
        # non-finite numbers (the SDK records them as null), so allow_nan has nothing to refuse.
        return orjson.dumps(payload).decode()  # orjson.JSONEncodeError is a TypeError

except ImportError:  # pragma: no cover - the gateway extra installs it

    def _encode(payload: Mapping[str, Any]) -> str:
        return json.dumps(payload, separators=(",", ":"), allow_nan=False)


APP_SOURCE = RESERVED_DEVICE_ID
"""The ``device_id`` under which the gateway's own (app-channel) events enter the event log."""

_MMAP_BYTES = 256 * 1024 * 1024
_CACHE_KIB = 64 * 1024


class _RelaxedSQLite:
    """A second connection to the SQLite hub file with ``synchronous=NORMAL``.

    For transactions that are not money or points (decisions, responses): in WAL mode a
    NORMAL commit survives a process crash, only an OS crash can lose the last ones — the same
    trade the device store makes for decisions, and it saves an fsync per ``Decide``. Writers
    of both connections are serialised by SQLite's own lock (``BEGIN IMMEDIATE``).
    """

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            # No checkpoint inside a Decide's commit: a background thread does them (as on devices).
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
            limit_wal(self._conn)
            # Decisions read profiles and contact histories all over the file: read it through a
            # memory map and a larger page cache rather than a system call per page (measured in
            # bench/RESULTS.md: ~50–80 µs of CPU less per Decide). Virtual address space, not RSS.
            self._conn.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
            self._conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        except sqlite3.Error as exc:
            raise StateError(f"cannot open hub database {path}: {exc}") from exc
        self._checkpointer = WalCheckpointer(Path(path))

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    def transaction(self) -> AbstractContextManager[_RelaxedSQLite]:
        """A write transaction (``BEGIN IMMEDIATE``: waits for, then holds, the writer lock)."""
        return self._begin("IMMEDIATE")

    def reading(self) -> AbstractContextManager[_RelaxedSQLite]:
        """A deferred (read) transaction: a snapshot of the file that takes no writer lock."""
        return self._begin("DEFERRED")

    @contextmanager
    def _begin(self, mode: str) -> Iterator[_RelaxedSQLite]:
        with self._lock:
            try:
                self._conn.execute(f"BEGIN {mode}")
            except sqlite3.Error as exc:
                raise StateError(f"hub database {self.path}: {exc}") from exc
            try:
                yield self
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StateError(f"hub database {self.path}: {exc}") from exc
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the failing statement already ended the transaction

    def close(self) -> None:
        self._checkpointer.stop()
        with self._lock:
            self._conn.close()


# Namespace of the advisory locks this module takes (the other key is the customer's hash).
_ADVISORY_NAMESPACE = 0x4E42  # "NB"


class HubTx:
    """An open transaction of the hub-backed store (implements ``sdk._store.Tx``)."""

    __slots__ = ("_db_tx", "_store", "events", "now")

    def __init__(self, store: HubStateStore, db_tx: DbTx, now: float) -> None:
        self._store = store
        self._db_tx = db_tx
        self.now = now
        self.events: list[Event] = []

    @property
    def db(self) -> DbTx:
        """The underlying database transaction (for the hub's own functions)."""
        return self._db_tx

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        if isinstance(params, Mapping):
            raise TypeError("the hub state store takes positional ? parameters only")
        return self._db_tx.execute(sql, params)

    def append_event(self, type: str, payload: Mapping[str, Any]) -> Event:
        return self.append_events(type, [payload])[0]

    def append_events(self, type: str, payloads: Sequence[Mapping[str, Any]]) -> list[Event]:
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        if not payloads:
            return []
        texts = []
        for payload in payloads:
            try:
                validate_payload(type, payload)
                texts.append(_encode(payload))
            except (TypeError, ValueError) as exc:
                # The SDK builds these payloads: a bad one is a bug, never the caller's input.
                raise StateError(f"refusing to log an invalid {type} event: {exc}") from exc
        source = self._store.source_id
        rows = self._db_tx.execute(
            "UPDATE hub_devices SET acked_through = acked_through + ?, updated_at = ? WHERE device_id = ? "
            "RETURNING acked_through",
            (len(payloads), self.now, source),
        )
        if not rows:
            raise StateError(f"hub event source {source!r} is not registered")
        first = int(rows[0][0]) - len(payloads) + 1
        events = [
            Event(event_id=str(uuid.uuid4()), device_id=source, seq=first + n, type=type, created_at=self.now,
                  payload=payload)
            for n, payload in enumerate(payloads)
        ]
        insert_rows(
            self._db_tx.execute,
            "INSERT INTO hub_events(device_id, seq, event_id, type, created_at, payload, status, reason, received_at)",
            "(?, ?, ?, ?, ?, ?, 'ok', NULL, ?)",
            [(source, e.seq, e.event_id, type, self.now, text, self.now) for e, text in zip(events, texts, strict=True)],
        )
        if type == "points":
            # The hub's own apply step: one ledger, whichever way the points arrived.
            self._store.hub._apply_points(self._db_tx, source, [
                (IncomingEvent(seq=e.seq, event_id=e.event_id, type=type, created_at=self.now, payload=text), e.payload)
                for e, text in zip(events, texts, strict=True)
            ], self.now)
        self.events.extend(events)
        return events


class HubStateStore:
    """``sdk._store.StateStore`` over the hub database; shared by all threads of a gateway.

    Transactions are re-entrant per thread: a transaction opened while another is open on the
    same thread joins it (one commit at the outer end). That is what lets the gateway wrap one
    SDK call in a locked transaction.
    """

    def __init__(
        self,
        hub: HubStore,
        *,
        clock: Clock | None = None,
        source_id: str = APP_SOURCE,
        schemas: Sequence[Sequence[str]] = (LEDGER_SCHEMA, PAYMENT_SCHEMA, RECORD_SCHEMA),
        on_events: Callable[[Sequence[Event]], None] | None = None,
    ) -> None:
        self.hub = hub
        self.db: Database = hub.db
        self.clock: Clock = clock or hub.clock or SystemClock()
        self.source_id = source_id
        self._on_events = on_events
        self._local = threading.local()
        self._relaxed = _RelaxedSQLite(str(self.db.path)) if isinstance(self.db, SQLiteDatabase) else None
        now = self.clock.now()
        with self.db.transaction() as tx:
            if self.db.dialect == "postgresql":
                tx.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_KEY,))  # replicas start together
            for ddl in (*CORE_SCHEMA, *(s for schema in schemas for s in schema)):
                tx.execute(ddl)
            tx.execute(
                "INSERT INTO hub_devices(device_id, acked_through, updated_at) VALUES (?, 0, ?) "
                "ON CONFLICT (device_id) DO NOTHING",
                (source_id, now),
            )

    # -- the StateStore seam ----------------------------------------------------------------

    def _current(self) -> HubTx | None:
        return getattr(self._local, "tx", None)

    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[HubTx]:
        """One transaction (joins the thread's open one, if any).

        ``durable=True`` (money, points) commits with an fsync: the SQLite hub's own
        ``synchronous=FULL`` connection, an ordinary PostgreSQL commit. Other transactions use
        ``synchronous=NORMAL`` on SQLite and ``synchronous_commit=off`` on PostgreSQL. A joined
        transaction commits with the outer one's durability, so the gateway opens money and
        points work with :meth:`ledger_transaction` (durable) and only decisions with
        :meth:`decision_batch`.
        """
        current = self._current()
        if current is not None:
            yield current
            return
        with self._outer(durable=durable) as tx:
            yield tx

    @contextmanager
    def read(self) -> Iterator[HubTx]:
        """A transaction used only for reading: it takes no write lock (joins the thread's open one, if any).

        On the SQLite hub a deferred transaction (in WAL mode it never blocks a writer, nor
        waits for one); on PostgreSQL an ordinary transaction, without advisory locks. What
        ``decide_many`` reads before its rules and models run (``prepare_many``).
        """
        current = self._current()
        if current is not None:
            yield current
            return
        with self._outer(durable=False, reading=True) as tx:
            yield tx

    @contextmanager
    def _outer(self, *, durable: bool, reading: bool = False) -> Iterator[HubTx]:
        database: Database = self.db if durable or self._relaxed is None else self._relaxed
        opened = self._relaxed.reading() if reading and self._relaxed is not None else database.transaction()
        with opened as db_tx:
            if not durable and self.db.dialect == "postgresql":
                db_tx.execute("SET LOCAL synchronous_commit TO OFF")
            tx = HubTx(self, db_tx, self.clock.now())
            self._local.tx = tx
            try:
                yield tx
            finally:
                self._local.tx = None
        # Only after the commit: a rolled-back event was never ingested.
        if tx.events and self._on_events is not None:
            self._on_events(tuple(tx.events))

    def close(self) -> None:
        """Close the relaxed SQLite connection (the hub store owns its own)."""
        if self._relaxed is not None:
            self._relaxed.close()

    # -- gateway helpers --------------------------------------------------------------------

    @contextmanager
    def decision_batch(self, customer_ids: Sequence[str]) -> Iterator[HubTx]:
        """One transaction serialised, for each of ``customer_ids``, across threads and replicas.

        Every transaction the SDK opens on this thread inside it joins it, so decisions' contact-
        history reads and their writes happen under one lock (the gateway decides a batch of
        requests in it). On PostgreSQL the customers'
        transaction-scoped advisory locks are taken in ascending key order, so two replicas'
        batches cannot deadlock; the SQLite hub's writer lock already serialises everything.
        """
        if self._current() is not None:
            raise StateError("decision_batch cannot be nested in another transaction")
        with self._outer(durable=False) as tx:
            if self.db.dialect == "postgresql":
                keys = tx.execute(
                    "SELECT DISTINCT hashtext(c) AS k FROM unnest(?::text[]) AS t(c) ORDER BY k",
                    (sorted(set(customer_ids)),),
                )
                for (key,) in keys:
                    tx.execute("SELECT pg_advisory_xact_lock(?, ?)", (_ADVISORY_NAMESPACE, key))
                # The decisions' time is when the locks are held: a contact another replica
                # recorded while this one waited is then never "in the future" of this decision.
                tx.now = self.clock.now()
            yield tx

    @contextmanager
    def ledger_transaction(self, customer_id: str) -> Iterator[HubTx]:
        """A transaction in which the SDK ledger sees the hub's authoritative balance.

        Locks the app source's row and then the customer's ledger row (the order every app
        write takes them, so two of them cannot deadlock; device pushes never take the app
        row), then writes the hub balance (all terminals + app, net of expiry) as the SDK
        ledger's central balance covering every app entry so far. A redeem inside it is thus
        checked against exactly what the hub holds, and nothing can change it before commit.
        """
        if self._current() is not None:
            raise StateError("ledger_transaction cannot be nested in another transaction")
        with self._outer(durable=True) as tx:
            rows = tx.execute(
                "UPDATE hub_devices SET updated_at = ? WHERE device_id = ? RETURNING acked_through",
                (tx.now, self.source_id),
            )
            if not rows:
                raise StateError(f"hub event source {self.source_id!r} is not registered")
            as_of = int(rows[0][0])
            # Take the customer's ledger row lock (the one terminal pushes take) when the row
            # exists. A customer without it has no entries anywhere yet: the balance read below is
            # 0, and a concurrent first push can only be refused against, never over-spent.
            tx.execute("UPDATE hub_customers SET entries = entries WHERE customer_id = ?", (customer_id,))
            balance = self.hub._balances(tx.db, [customer_id], tx.now)[customer_id]
            tx.execute(
                "INSERT INTO central_balances(customer_id, balance, as_of_seq, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (customer_id) DO UPDATE SET balance = excluded.balance, "
                "as_of_seq = excluded.as_of_seq, updated_at = excluded.updated_at",
                (customer_id, balance, as_of, tx.now),
            )
            yield tx

    def hub_balance(self, customer_id: str) -> int:
        """The hub's authoritative balance of one customer (joins an open transaction)."""
        with self.transaction() as tx:
            return self.hub._balances(tx.db, [customer_id], tx.now)[customer_id]
