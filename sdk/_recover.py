"""Rebuild a device's damaged or lost state database from what the hub holds (``nbo recover``).

A device that has synced is known to the hub: every event it pushed (``hub_events``, exactly as
sent, with the hub's verdict) and the authoritative balances of its customers. That is enough to
put the device back where the hub last saw it (docs/operations.md, Recovering a damaged device):

- the outbox: every held event, acknowledged; the ones the hub rejected in ``dead_letter`` with
  the hub's reason; the sequence counter continues after the highest seq the hub holds, so the
  next push never reuses one (no ``ALREADY_EXISTS``);
- the tables each event describes, written from its payload as the recording call wrote them:
  decisions and their ``shown`` contacts, responses and their contacts (so contact policies keep
  counting), purchases and the customer measures folded from them, ledger entries (so a repeated
  idempotency key still returns the first entry), payment records;
- the central balance of every customer the events name, covering all of them.

The new database is built in ``STATE/recovering/`` and switched in only when the hub's answer
was complete; the replaced files are moved to ``STATE/damaged-<UTC time>/``, never deleted.
When the replaced file is still readable (it passes ``quick_check``: a device that started
afresh under the same id, an older copy put back), its events the hub never received are
queued again after the hub's highest seq, with their rows — except what the hub already holds
(the same event, or the same ledger entry, purchase, payment, decision or response by its
idempotency key). A damaged file's events are not trusted: they stay in the moved-aside copy.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from . import _ledger, _payments, _records
from ._errors import InputError, NboError, StateError, SyncError
from ._store import Event, SQLiteStateStore, Tx, insert_rows, read_sync_marker, write_sync_marker
from ._types import RecoveryReport

__all__ = ["recover_state"]

_STATE = "state.sqlite"
_SCHEMAS = (_ledger.SCHEMA, _payments.SCHEMA, _records.SCHEMA)


def recover_state(
    state_dir: str | os.PathLike[str],
    target: str,
    *,
    token: str,
    device_id: str | None = None,
    ca_file: str | os.PathLike[str] | None = None,
    client_cert: str | os.PathLike[str] | None = None,
    client_key: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
    force: bool = False,
) -> RecoveryReport:
    """Rebuild ``STATE/state.sqlite`` from the hub at ``target`` (``HOST:PORT``).

    ``device_id`` defaults to the one recorded next to the state (``hub-sync.json``). Refuses
    (``StateError``) the state of another device, and a state that is healthy and as far along
    as the hub knows unless ``force`` (its unsynced events are then queued again); ``SyncError`` when the hub cannot be
    reached, refuses, holds nothing for the device, or the answer was cut (nothing changed then).
    Stop the application using the state directory first.
    """
    state = Path(state_dir)
    path = state / _STATE
    marker = read_sync_marker(path) if state.is_dir() else None
    if device_id is None:
        if marker is None:
            raise InputError(f"{state} records no device id that has synced; pass the device id",
                             field="device_id")
        device_id = marker[0]
    _records.check_id(device_id, "device_id")  # the one id rule, as Client.open applies it
    if marker is not None and marker[0] != device_id:
        raise StateError(f"{state} is the state of device {marker[0]!r} (hub-sync.json), not {device_id!r}: "
                         "recover it under its own device id")
    # A recovery that fails leaves nothing it created: the directories it made, its lock file.
    missing = [p for p in (state, *state.parents) if not p.exists()]
    lock_existed = (state / "sync.lock").exists()
    try:
        state.mkdir(parents=True, exist_ok=True)
        try:
            report = _recover_locked(state, path, target, token=token, device_id=device_id, ca_file=ca_file,
                                     client_cert=client_cert, client_key=client_key, timeout=timeout, force=force)
        except BaseException:
            if missing:
                shutil.rmtree(missing[-1], ignore_errors=True)
            elif not lock_existed:
                (state / "sync.lock").unlink(missing_ok=True)
            raise
    except OSError as exc:  # the disk, not the hub: nothing was switched unless the report came back
        raise StateError(f"recovering {state}: {exc.strerror or exc} ({getattr(exc, 'filename', '') or state})"
                         ) from exc
    return report


def _recover_locked(state: Path, path: Path, target: str, *, token: str, device_id: str,
                    ca_file: str | os.PathLike[str] | None, client_cert: str | os.PathLike[str] | None,
                    client_key: str | os.PathLike[str] | None, timeout: float, force: bool) -> RecoveryReport:
    from . import _sync  # grpc is imported only when syncing or recovering

    with _sync.state_dir_lock(state):
        local = _local_position(path, device_id)
        unsynced = _unsynced(path)
        building = state / "recovering"
        shutil.rmtree(building, ignore_errors=True)  # a recovery cut earlier: start over
        building.mkdir()
        try:
            store = SQLiteStateStore(building / _STATE, device_id=device_id, schemas=_SCHEMAS)
            try:
                counts = _rebuild(store, _sync.fetch_recovery(
                    target, device_id=device_id, token=token, ca_file=ca_file, client_cert=client_cert,
                    client_key=client_key, timeout=timeout), local=local, force=force, device_id=device_id,
                    unsynced=unsynced)
            finally:
                store.close()
            _fold_wal(building / _STATE)
            _fsync(building / _STATE)
            moved = _move_aside(state)
            os.replace(building / _STATE, path)
            _fsync(state)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        acked, max_seq, events, dead, balances, unrestored, carried = counts
        write_sync_marker(path, device_id=device_id, acked_through=acked)
    return RecoveryReport(device_id=device_id, acked_through=acked, max_seq=max_seq, events=events,
                          dead_lettered=dead, balances=balances, moved_aside=str(moved) if moved else None,
                          carried_over=carried, not_restored=unrestored)


def _local_position(path: Path, device_id: str) -> tuple[int, int, int] | None:
    """``(acked seq, last seq, unacked events)`` of a state that opens cleanly; None if it is
    missing or damaged (what recovery is for)."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    owner = _recorded_device(path)
    if owner is not None and owner != device_id:
        raise StateError(f"state database {path} belongs to device {owner!r}, not {device_id!r}: "
                         "recover it under its own device id")
    try:
        store = SQLiteStateStore(path, device_id=device_id, read_only=True)
    except StateError:  # damaged, emptied, older than the hub knows: what recovery is for
        return None
    try:
        with store.read() as tx:
            acked = tx.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox WHERE acked = 1")[0][0]
            last = tx.execute("SELECT value FROM counters WHERE name = 'outbox_seq'")[0][0]
            pending = tx.execute("SELECT COUNT(*) FROM outbox WHERE acked = 0")[0][0]
        return int(acked), int(last), int(pending)
    except NboError:
        return None
    finally:
        store.close()


_Row = tuple[int, str, str, float, str]


def _unsynced(path: Path) -> list[_Row] | None:
    """The replaced state's events the hub had not acknowledged (not dead-lettered), in seq order,
    when the file is still readable (an older copy, a new start under the same id); None when it
    is missing, empty or damaged (its pages cannot be trusted)."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            if conn.execute("PRAGMA quick_check").fetchall() != [("ok",)]:
                return None
            rows = conn.execute(
                "SELECT o.seq, o.event_id, o.type, o.created_at, o.payload FROM outbox o WHERE o.acked = 0 "
                "AND NOT EXISTS (SELECT 1 FROM dead_letter d WHERE d.seq = o.seq) ORDER BY o.seq").fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return [(int(seq), str(e), str(t), float(c), str(p)) for seq, e, t, c, p in rows]


# Per event type: the row that would already exist had the hub (or an earlier carried event)
# recorded the same thing — the idempotency the recording calls themselves enforce.
_ALREADY: dict[str, tuple[str, tuple[str, ...]]] = {
    "points": ("SELECT 1 FROM ledger_entries WHERE entry_id = ?", ("entry_id",)),
    "purchase": ("SELECT 1 FROM purchases WHERE idempotency_key = ?", ("idempotency_key",)),
    "payment": ("SELECT 1 FROM payments WHERE idempotency_key = ?", ("idempotency_key",)),
    "decision": ("SELECT 1 FROM decisions WHERE decision_id = ?", ("decision_id",)),
    "response": ("SELECT 1 FROM responses WHERE decision_id = ? AND offer_id = ?", ("decision_id", "offer_id")),
}


def _carry_over(tx: Tx, rows: list[_Row], next_seq: int) -> tuple[int, int]:
    """Queue the replaced state's unsynced events again after the hub's highest seq, with the
    rows they describe; skip those the hub already holds. (carried, last seq)."""
    carried = 0
    for _, event_id, type_, created_at, text in rows:
        if tx.execute("SELECT 1 FROM outbox WHERE event_id = ?", (event_id,)):
            continue  # the hub holds this very event (pushed from a later state than this copy)
        try:
            payload = json.loads(text)
            sql, keys = _ALREADY.get(type_, ("", ()))
            if sql and tx.execute(sql, tuple(payload[k] for k in keys)):
                continue  # the same award/purchase/payment/decision/response is already recorded
        except (KeyError, TypeError, ValueError):
            pass  # not one we can compare: keep it (the hub validates it like any pushed event)
        next_seq += 1
        tx.execute("INSERT INTO outbox(seq, event_id, type, created_at, payload, acked) VALUES (?, ?, ?, ?, ?, 0)",
                   (next_seq, event_id, type_, created_at, text))
        try:
            _restore(tx, next_seq, type_, created_at, text)
        except (KeyError, TypeError, ValueError, ArithmeticError, InputError):
            pass  # queued for the hub all the same; only its local rows are missing
        carried += 1
    return carried, next_seq


def _recorded_device(path: Path) -> str | None:
    """The device id a state file records, if it can be read at all (else None)."""
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM device_meta WHERE key = 'device_id'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


def _rebuild(store: SQLiteStateStore, pages: Any, *, local: tuple[int, int, int] | None, force: bool,
             device_id: str, unsynced: list[_Row] | None) -> tuple[int, int, int, int, int, tuple[str, ...], int]:
    acked = max_seq = events = dead = customers = 0
    unrestored: list[str] = []
    complete = False
    balances: dict[str, int] = {}
    checked = False
    for page in pages:
        acked, max_seq = page.acked_through, page.max_seq
        if not checked:
            checked = True
            if max_seq == 0:
                raise SyncError(f"the hub holds no events of device {device_id!r}: there is nothing to recover "
                                "from (a device that never synced starts afresh)")
            if local is not None and local[0] >= acked and local[1] >= max_seq and not force:
                raise StateError(
                    f"the state of device {device_id!r} opens cleanly and is as far along as the hub knows "
                    f"(seq {local[1]}, hub acknowledged {acked}): nothing to recover (it holds {local[2]} "
                    "unsynced event(s); --force rebuilds it anyway and queues them again)")
        if page.events:
            with store.transaction() as tx:
                for seq, event_id, type_, created_at, payload, rejected in page.events:
                    if rejected is not None:
                        tx.execute(
                            "INSERT INTO dead_letter(seq, event_id, type, created_at, payload, reason, dead_at) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (seq, event_id, type_, created_at, payload, rejected[:1000], tx.now))
                        dead += 1
                        continue
                    tx.execute("INSERT INTO outbox(seq, event_id, type, created_at, payload, acked) "
                               "VALUES (?, ?, ?, ?, ?, 1)", (seq, event_id, type_, created_at, payload))
                    events += 1
                    try:
                        _restore(tx, seq, type_, created_at, payload)
                    except (KeyError, TypeError, ValueError, ArithmeticError, InputError) as exc:
                        # The hub accepted it, so this does not happen; if it does, the event stays
                        # (acknowledged) and only its rows are missing: say which, do not stop.
                        unrestored.append(f"seq {seq} ({type_}): {type(exc).__name__}: {exc}"[:200])
        balances.update(page.balances)
        complete = page.complete
    if not complete:
        raise SyncError("RecoverDevice: the hub's answer ended early; nothing was changed, run `nbo recover` again")
    carried = 0
    with store.transaction(durable=True) as tx:
        # Balances first: they cover the hub's events; carried entries come after them (seq > max_seq).
        _ledger.apply_central_balances(tx, balances, acked_through=max_seq)
        customers = len(balances)
        last = max_seq
        if unsynced:
            carried, last = _carry_over(tx, unsynced, max_seq)
        tx.execute("UPDATE counters SET value = ? WHERE name = 'outbox_seq'", (last,))
    return acked, max_seq, events, dead, customers, tuple(unrestored), carried


class _At:
    """A transaction whose clock reads ``now``: recording code re-run at the event's own time."""

    __slots__ = ("_tx", "now")

    def __init__(self, tx: Tx, now: float) -> None:
        self._tx = tx
        self.now = now

    def execute(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        return self._tx.execute(sql, params)

    def append_event(self, type: str, payload: Mapping[str, Any]) -> Event:
        raise StateError("restoring an event must not record a new one")

    def append_events(self, type: str, payloads: Sequence[Mapping[str, Any]]) -> list[Event]:
        raise StateError("restoring an event must not record a new one")


def _restore(tx: Tx, seq: int, type_: str, created_at: float, text: str) -> None:
    """Write the rows a held event describes, as the call that recorded it wrote them."""
    payload = json.loads(text)
    if not isinstance(payload, Mapping):
        return
    if type_ == "decision":
        if payload.get("compacted") is True:
            return  # its offers were compacted on the device before it was pushed: only the event remains
        offers = [o for o in payload.get("offers") or () if isinstance(o, Mapping)]
        tx.execute(
            "INSERT INTO decisions(decision_id, customer_id, channel, bundle_name, bundle_version, created_at, offers) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (payload["decision_id"], payload["customer_id"], payload["channel"], payload["bundle_name"],
             int(payload["bundle_version"]), created_at, json.dumps(offers, separators=(",", ":"))))
        insert_rows(
            tx.execute,
            "INSERT INTO contact_history(customer_id, offer_id, category, channel, event, ts, decision_id)",
            "(?, ?, ?, ?, 'shown', ?, ?)",
            [(payload["customer_id"], o["offer_id"], o.get("category") or "", payload["channel"], created_at,
              payload["decision_id"]) for o in offers],
        )
    elif type_ == "response":
        tx.execute("INSERT INTO responses(decision_id, offer_id, customer_id, outcome, ts) VALUES (?, ?, ?, ?, ?) "
                   "ON CONFLICT DO NOTHING",
                   (payload["decision_id"], payload["offer_id"], payload["customer_id"], payload["outcome"],
                    created_at))
        tx.execute(
            "INSERT INTO contact_history(customer_id, offer_id, category, channel, event, ts, decision_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (payload["customer_id"], payload["offer_id"], payload.get("category") or "", payload.get("channel") or "",
             payload["outcome"], created_at, payload["decision_id"]))
    elif type_ == "purchase":
        amount = Decimal(payload["amount"])
        tx.execute(
            "INSERT INTO purchases(purchase_id, customer_id, amount, quantity, ts, created_at, idempotency_key) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (payload["purchase_id"], payload["customer_id"], payload["amount"], int(payload["quantity"]),
             float(payload["timestamp"]), created_at, payload["idempotency_key"]))
        _records._update_profile_after_purchase(_At(tx, created_at), payload["customer_id"],
                                                ts=float(payload["timestamp"]), amount=amount,
                                                quantity=int(payload["quantity"]))
    elif type_ == "points":
        entry = _ledger.entry_from_payload(payload)
        tx.execute(
            f"INSERT INTO ledger_entries({_ledger.LEDGER_COLUMNS}, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (entry.entry_id, entry.customer_id, entry.kind, entry.points, entry.reason, entry.idempotency_key,
             entry.created_at, entry.expires_at, entry.reverses, seq))
    elif type_ == "payment":
        tx.execute(
            "INSERT INTO payments(payment_id, customer_id, payment_token, amount, currency, store_id, decision_id, "
            "offer_id, created_at, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (payload["payment_id"], payload["customer_id"], payload["payment_token"], payload["amount"],
             payload["currency"], payload.get("store_id"), payload.get("decision_id"), payload.get("offer_id"),
             created_at, payload["idempotency_key"]))


def _move_aside(state: Path) -> Path | None:
    """Move ``state.sqlite`` and its ``-wal``/``-shm`` into ``damaged-<UTC time>/``; None if absent."""
    present = [state / f"{_STATE}{suffix}" for suffix in ("", "-wal", "-shm")]
    present = [p for p in present if p.exists()]
    if not present:
        return None
    aside = state / time.strftime("damaged-%Y%m%dT%H%M%SZ", time.gmtime())
    n = 1
    while aside.exists():
        aside = aside.with_name(f"{aside.name.split('.')[0]}.{n}")
        n += 1
    aside.mkdir()
    for p in present:
        os.replace(p, aside / p.name)
    return aside


def _fold_wal(path: Path) -> None:
    """Copy the WAL into the database file and remove it, so that one file holds everything."""
    try:
        conn = sqlite3.connect(str(path))
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StateError(f"cannot finish the rebuilt state database {path}: {exc}") from exc


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

