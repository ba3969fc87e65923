"""The state-store seam: one small interface, a device (SQLite) and a hub implementation.

Domain code (profiles, contact history, decisions, ledger, payments) is written once against
:class:`Tx` with portable SQL (``?`` placeholders, ``INSERT … ON CONFLICT``, no autoincrement,
``DOUBLE PRECISION`` epoch seconds, JSON as TEXT), so the gateway's hub-backed store (SQLite or
PostgreSQL) runs the very same code. Every state change and the event describing it are written
in one transaction: on a device the event goes to the **outbox** (gapless ``seq``), on the hub
straight into the hub's event log.

Each domain module declares its own ``SCHEMA`` (a tuple of DDL statements); stores apply the
schemas they are given at open.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ._clock import Clock, SystemClock
from ._errors import DamagedStateError, StateError
from ._vocabulary import EVENT_TYPES

__all__ = ["CORE_SCHEMA", "SYNC_MARKER", "Event", "SQLiteStateStore", "StateStore", "Tx", "read_sync_marker",
           "write_sync_marker"]

log = logging.getLogger("nbo.sdk")

Params = Sequence[Any] | Mapping[str, Any]

# Tables shared by several domain modules. Portable between SQLite and PostgreSQL.
CORE_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS profiles(
        customer_id TEXT PRIMARY KEY,
        profile TEXT NOT NULL,            -- JSON object: measures and profile fields
        updated_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS decisions(
        decision_id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        bundle_name TEXT NOT NULL,
        bundle_version INTEGER NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        offers TEXT NOT NULL)             -- JSON list of shown offers with score parts""",
    """CREATE TABLE IF NOT EXISTS contact_history(
        customer_id TEXT NOT NULL,
        offer_id TEXT NOT NULL,
        category TEXT NOT NULL,
        channel TEXT NOT NULL,
        event TEXT NOT NULL,              -- shown | accepted | declined | ignored
        ts DOUBLE PRECISION NOT NULL,
        decision_id TEXT)""",
    # Contact policies count one kind of event each (shows, declines…) of a customer in a
    # window: this index finds exactly those rows, never the customer's whole history.
    "CREATE INDEX IF NOT EXISTS contact_history_by_event ON contact_history(customer_id, event, ts)",
    # Its predecessor, (customer_id, ts), made a policy on declines read every show too.
    "DROP INDEX IF EXISTS contact_history_by_customer",
)

# Device-only tables: the outbox and what surrounds it.
DEVICE_SCHEMA: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS outbox(
        seq INTEGER PRIMARY KEY,          -- gapless per device, from counters('outbox_seq')
        event_id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,               -- decision | response | purchase | points | payment
        created_at DOUBLE PRECISION NOT NULL,
        payload TEXT NOT NULL,            -- JSON object
        acked INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox(acked, seq)",
    """CREATE TABLE IF NOT EXISTS dead_letter(
        seq INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL,
        type TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        payload TEXT NOT NULL,
        reason TEXT NOT NULL,
        dead_at DOUBLE PRECISION NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS device_meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


@dataclass(frozen=True, slots=True)
class Event:
    """One outbox / event-log entry (docs/ledger.md)."""

    event_id: str
    device_id: str
    seq: int
    type: str
    created_at: float
    payload: Mapping[str, Any]


class Tx(Protocol):
    """An open transaction on a state store."""

    now: float
    """The clock reading taken when the transaction began; use it for every timestamp."""

    def execute(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Run one statement with ``?`` placeholders; return all rows (empty for writes)."""
        ...

    def append_event(self, type: str, payload: Mapping[str, Any]) -> Event:
        """Record the event describing this transaction's change (outbox or hub log)."""
        ...

    def append_events(self, type: str, payloads: Sequence[Mapping[str, Any]]) -> list[Event]:
        """:meth:`append_event` for several events of one type, in order (consecutive seqs)."""
        ...


class StateStore(Protocol):
    """Where profiles, contact history, decisions, ledger and events live."""

    def transaction(self, *, durable: bool = False) -> AbstractContextManager[Tx]:
        """Context manager yielding a :class:`Tx`; commits on exit, rolls back on error.

        ``durable=True`` makes the commit fsync'd before it returns (money and points).
        """
        ...

    def read(self) -> AbstractContextManager[Tx]:
        """Context manager yielding a :class:`Tx` for reading only (nothing is committed)."""
        ...

    def close(self) -> None: ...




class _SQLiteTx:
    __slots__ = ("_conn", "_store", "now")

    def __init__(self, store: SQLiteStateStore, conn: sqlite3.Connection, now: float) -> None:
        self._store = store
        self._conn = conn
        self.now = now

    def execute(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def append_event(self, type: str, payload: Mapping[str, Any]) -> Event:
        return self.append_events(type, [payload])[0]

    def append_events(self, type: str, payloads: Sequence[Mapping[str, Any]]) -> list[Event]:
        if type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type!r}")
        if not payloads:
            return []
        (last,) = self._conn.execute(
            "UPDATE counters SET value = value + ? WHERE name = 'outbox_seq' RETURNING value", (len(payloads),)
        ).fetchone()
        first = int(last) - len(payloads) + 1
        events = [
            Event(event_id=str(uuid.uuid4()), device_id=self._store.device_id, seq=first + n, type=type,
                  created_at=self.now, payload=payload)
            for n, payload in enumerate(payloads)
        ]
        insert_rows(
            self.execute,
            "INSERT INTO outbox(seq, event_id, type, created_at, payload)",
            "(?, ?, ?, ?, ?)",
            [(e.seq, e.event_id, type, self.now, _encode_payload(e.payload)) for e in events],
        )
        return events


def _stdlib_payload(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))


try:  # orjson (the [gateway] extra) encodes an event payload ~10x faster: a decision writes one
    import orjson

    def _encode_payload(payload: Mapping[str, Any]) -> str:
        try:
            return orjson.dumps(payload).decode()  # the same compact JSON values
        except TypeError:  # a value orjson does not take (e.g. an int beyond 64 bits): as before
            return _stdlib_payload(payload)

except ImportError:  # pragma: no cover - a core install without the gateway extra
    _encode_payload = _stdlib_payload


ROWS_PER_INSERT = 500
"""Rows per multi-row INSERT: well under every SQLite and PostgreSQL limit on bound parameters."""


def insert_rows(execute: Callable[[str, Sequence[Any]], object], head: str, row: str,
                rows: Sequence[Sequence[Any]]) -> None:
    """``rows`` as multi-row INSERTs (portable: SQLite and PostgreSQL) rather than one per row.

    ``execute(sql, params)`` runs a statement (a :class:`Tx`'s); ``head`` is the ``INSERT INTO
    t(columns)`` part, ``row`` one row's placeholders, e.g. ``"(?, ?, 'shown')"``.
    """
    for at in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[at:at + ROWS_PER_INSERT]
        execute(f"{head} VALUES {', '.join([row] * len(chunk))}", [v for r in chunk for v in r])


def damaged_hint(exc: sqlite3.DatabaseError) -> str:
    """What to do about a state file SQLite cannot read ("not a database", "malformed").

    Only for the plain ``DatabaseError`` SQLite raises on a damaged file: a locked, full or
    closed database (its subclasses) is not damaged.
    """
    if type(exc) is not sqlite3.DatabaseError:
        return ""
    return RECOVER_HINT


RECOVER_HINT = (" — the file is damaged or not an nbo state database: run `nbo recover` to rebuild it from the "
                "hub (docs/operations.md, Recovering a damaged device)")

SYNC_MARKER = "hub-sync.json"
"""File next to ``state.sqlite`` recording that this device has synced: its device id and the
highest seq the hub acknowledged. It lives outside the database so that it survives what
damages the database, and tells a damaged, emptied or rolled-back state file from a new one."""


def read_sync_marker(state_path: Path) -> tuple[str, int] | None:
    """``(device_id, acked_through)`` from the marker next to ``state_path``, or None if never synced."""
    marker = state_path.with_name(SYNC_MARKER)
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        return str(data["device_id"]), int(data["acked_through"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DamagedStateError(f"{marker} is unreadable ({exc}); it records that this device has synced — "
                                "run `nbo recover` (docs/operations.md, Recovering a damaged device)") from exc


def write_sync_marker(state_path: Path, *, device_id: str, acked_through: int) -> None:
    """Write the marker atomically and durably (temp file, fsync, rename, fsync the directory)."""
    marker = state_path.with_name(SYNC_MARKER)
    tmp = marker.with_name(f".{SYNC_MARKER}.tmp")
    with tmp.open("w", encoding="utf-8") as out:
        json.dump({"device_id": device_id, "acked_through": int(acked_through)}, out)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, marker)
    try:
        fd = os.open(marker.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - a platform without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _refuse_lost(path: Path, device_id: str, marker: tuple[str, int] | None) -> None:
    """A device that has synced must never start over from a missing or empty state file."""
    if marker is None:
        return
    owner, acked = marker
    if owner != device_id:
        raise StateError(f"{path.with_name(SYNC_MARKER)} records device {owner!r}, not {device_id!r}")
    if not path.exists() or path.stat().st_size == 0:
        what = "is missing" if not path.exists() else "is empty (0 bytes)"
        raise DamagedStateError(
            f"state database {path} {what}, but device {device_id!r} has synced with a hub (acknowledged "
            f"through seq {acked}); opening it would start a new device under the same id. Run `nbo recover` "
            "to rebuild it from the hub (docs/operations.md, Recovering a damaged device)")


def _refuse_rolled_back(path: Path, device_id: str, marker: tuple[str, int] | None, seq: int) -> None:
    if marker is not None and seq < marker[1]:
        raise DamagedStateError(
            f"state database {path} ends at seq {seq}, but the hub acknowledged device {device_id!r} through "
            f"seq {marker[1]}: it is an older copy (a restored backup?). Run `nbo recover` to rebuild it from "
            "the hub (docs/operations.md, Recovering a damaged device)")


def check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    """``PRAGMA quick_check``: every page of every b-tree is readable and well formed.

    Not the full ``integrity_check`` (which also matches indexes to tables): about 1–1.6 ms per
    MB of database, 2–3 times cheaper (bench/bench_store_open.py).
    """
    rows = conn.execute("PRAGMA quick_check").fetchall()
    if rows != [("ok",)]:
        first = " ".join(str(rows[0][0]).split())[:200] if rows else "no answer"
        raise DamagedStateError(f"state database {path} failed its integrity check ({first})" + RECOVER_HINT)


class SQLiteStateStore:
    """The device's state database: one SQLite file in WAL mode, with the outbox.

    One connection guarded by a lock: SQLite serialises writers anyway, and decisions are
    short. ``durable`` transactions run with ``synchronous=FULL``; the rest with ``NORMAL``,
    which in WAL mode survives a process crash (only an OS crash can lose the last commits).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        device_id: str,
        clock: Clock | None = None,
        schemas: Sequence[Sequence[str]] = (),
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.device_id = device_id
        self.clock: Clock = clock or SystemClock()
        self._lock = threading.RLock()
        self._sync_full = False
        self.read_only = read_only
        marker = read_sync_marker(self.path)
        self._marker_acked = marker[1] if marker is not None else 0
        _refuse_lost(self.path, device_id, marker)
        if read_only:
            self._conn = _open_for_reading(self.path, device_id, marker)
            self._checkpointer: WalCheckpointer | None = None
            return
        try:
            self._conn = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=30.0
            )
        except sqlite3.DatabaseError as exc:
            raise StateError(f"cannot open state database {self.path}: {exc}") from exc
        try:
            check_integrity(self._conn, self.path)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            limit_wal(self._conn)
            with self._write() as conn:
                for ddl in (*CORE_SCHEMA, *DEVICE_SCHEMA, *(s for schema in schemas for s in schema)):
                    conn.execute(ddl)
                conn.execute("INSERT INTO counters(name, value) VALUES ('outbox_seq', 0) ON CONFLICT DO NOTHING")
                row = conn.execute("SELECT value FROM device_meta WHERE key = 'device_id'").fetchone()
                if row is None:
                    conn.execute("INSERT INTO device_meta(key, value) VALUES ('device_id', ?)", (device_id,))
                elif row[0] != device_id:
                    raise StateError(
                        f"state database {self.path} belongs to device {row[0]!r}, not {device_id!r}"
                    )
                (seq,) = conn.execute("SELECT value FROM counters WHERE name = 'outbox_seq'").fetchone()
                _refuse_rolled_back(self.path, device_id, marker, int(seq))
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            error = DamagedStateError if damaged_hint(exc) else StateError
            raise error(f"cannot open state database {self.path}: {exc}{damaged_hint(exc)}") from exc
        except BaseException:
            self._conn.close()
            raise
        # WAL checkpoints run in the background, off the request path: with SQLite's default
        # auto-checkpoint, one commit in every few hundred copies the WAL into the database
        # file (~1 ms), which was the p99 of decide (bench/bench_decide.py, docs/decisions.md).
        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        self._checkpointer = WalCheckpointer(self.path)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[_SQLiteTx]:
        if self.read_only:
            raise StateError(f"state database {self.path} is open read-only; open it without read_only to change it")
        with self._lock:
            if durable != self._sync_full:
                self._conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                self._sync_full = durable
            try:
                with self._write() as conn:
                    yield _SQLiteTx(self, conn, self.clock.now())
            except sqlite3.DatabaseError as exc:
                raise StateError(f"state database {self.path}: {exc}{damaged_hint(exc)}") from exc

    @contextmanager
    def read(self) -> Iterator[_SQLiteTx]:
        """A read-only view (no BEGIN IMMEDIATE, no commit cost)."""
        with self._lock:
            try:
                yield _SQLiteTx(self, self._conn, self.clock.now())
            except sqlite3.DatabaseError as exc:
                raise StateError(f"state database {self.path}: {exc}{damaged_hint(exc)}") from exc

    def note_synced(self, acked_through: int) -> None:
        """Record outside the database that the hub acknowledged this device through ``acked_through``
        (:data:`SYNC_MARKER`); from then on a missing, empty or older state file is refused at open."""
        if acked_through <= self._marker_acked:
            return
        try:
            write_sync_marker(self.path, device_id=self.device_id, acked_through=acked_through)
        except OSError as exc:  # the sync itself succeeded; the next one writes the marker again
            log.warning("event=sync_marker_unwritten path=%s error=%s", self.path.with_name(SYNC_MARKER),
                        exc.strerror or exc)
            return
        self._marker_acked = acked_through

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()  # first, so that closing the main connection checkpoints last
        with self._lock:
            self._conn.close()


def _open_for_reading(path: Path, device_id: str, marker: tuple[str, int] | None) -> sqlite3.Connection:
    """A connection that cannot write to an existing device state database (``read_only=True``).

    ``query_only`` on a read-write connection rather than ``mode=ro``: SQLite removes the
    ``-wal`` and ``-shm`` files a WAL reader needs when its last connection closes, so the
    directory is left exactly as it was; a read-only connection would leave them behind. Where
    the file or directory is not writable, ``mode=ro`` is the fallback.
    """
    if not path.is_file():
        raise StateError(f"{path.parent} is not a device state directory (no {path.name})")
    try:
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, isolation_level=None,
                                   check_same_thread=False, timeout=30.0)
        except sqlite3.OperationalError:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                   check_same_thread=False, timeout=30.0)
        try:
            conn.execute("PRAGMA query_only=ON")
            check_integrity(conn, path)
            row = conn.execute("SELECT value FROM device_meta WHERE key = 'device_id'").fetchone()
            (seq,) = conn.execute("SELECT value FROM counters WHERE name = 'outbox_seq'").fetchone()
        except BaseException:
            conn.close()
            raise
    except sqlite3.DatabaseError as exc:
        error = DamagedStateError if damaged_hint(exc) else StateError
        raise error(f"cannot read state database {path}: {exc}{damaged_hint(exc)}") from exc
    if row is None or row[0] != device_id:
        conn.close()
        owner = "records no device id" if row is None else f"belongs to device {row[0]!r}, not {device_id!r}"
        raise StateError(f"state database {path} {owner}")
    try:
        _refuse_rolled_back(path, device_id, marker, int(seq))
    except BaseException:
        conn.close()
        raise
    return conn


_CHECKPOINT_WAIT_MS = 1000
_RESTART_WAIT_MS = 50

WAL_SIZE_LIMIT = 128 * 1024 * 1024
"""``journal_size_limit`` of every writing connection: when the log starts over, a ``-wal``
file left larger by a burst (or by a reader that kept it from restarting) is cut back to this.
Above a busy gateway's steady state (tens of MB), so the file is not cut and regrown at every
restart."""


def limit_wal(conn: sqlite3.Connection) -> None:
    """Set :data:`WAL_SIZE_LIMIT` on a connection that writes to a WAL database."""
    conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")


class WalCheckpointer:
    """A daemon thread with its own connection that checkpoints the WAL and keeps it small.

    Every ``interval`` it runs ``wal_checkpoint(PASSIVE)``, which copies the log into the
    database without blocking writers or readers (SQLite releases the GIL while it copies).
    That alone never lets the log start over under a steady stream of commits: SQLite rewinds
    the WAL only when a writer begins while *every* frame is already copied, and new commits
    land while a long PASSIVE pass runs. The log would then grow without bound (measured: 450 MB
    of WAL for a 47 MB database after a minute of gateway decisions), and every page read would
    search a growing WAL index. So once the log holds ``restart_frames`` or more, a second
    PASSIVE pass copies what arrived during the first (little), and ``wal_checkpoint(RESTART)``
    copies the last few frames while holding writers back for that moment, then lets the next
    writer start the log from its beginning (the file is reused; see :data:`WAL_SIZE_LIMIT`).
    """

    def __init__(self, path: Path, *, interval: float = 0.5, restart_frames: int = 4096) -> None:
        self._path = path
        self._interval = interval
        self._restart_frames = restart_frames
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"nbo-wal-checkpoint:{path.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(str(self._path), isolation_level=None, check_same_thread=False,
                                   timeout=_CHECKPOINT_WAIT_MS / 1000)
        except sqlite3.Error:
            return
        try:
            while not self._stopped.wait(self._interval):
                try:
                    self.checkpoint(conn)
                except sqlite3.Error:
                    continue  # busy or gone: try again next time; the main connection still works
        finally:
            conn.close()

    def checkpoint(self, conn: sqlite3.Connection) -> int:
        """One round (see the class): the log's length in frames as the round found it, or -1
        when the restart gave up (a reader still needed the log; the next round tries again)."""
        _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames < self._restart_frames:
            return int(frames)
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        # RESTART holds writers back while it copies the last frames and waits for readers of
        # the log to finish: never long — if that takes more than a moment it gives up (the
        # log restarts a round later) rather than stall a decision behind a slow reader.
        conn.execute(f"PRAGMA busy_timeout={_RESTART_WAIT_MS}")
        try:
            busy, frames, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        finally:
            conn.execute(f"PRAGMA busy_timeout={_CHECKPOINT_WAIT_MS}")
        return -1 if busy else int(frames)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
