"""The sync client: push the outbox to the hub, learn balances, fetch newer bundles (docs/sync.md).

One :func:`sync` call:

1. pushes pending outbox events in ``seq`` order, ``client.config.sync_batch_size`` per
   ``PushEvents`` call;
2. after each answer, in one durable transaction: moves the events the hub rejected into
   ``dead_letter`` with the hub's reason, marks every event up to ``acked_through`` acked, and
   stores the hub's authoritative balances (:func:`sdk._ledger.apply_central_balances`);
3. asks for the latest bundle and, when it is newer than anything this device installed,
   downloads it into ``STATE/downloads/<name>-<version>.part`` — resuming from the bytes
   already there — checks its SHA-256 and installs it through ``client.install_bundle`` (the
   normal verified path).

A crash anywhere is safe: the hub stores events idempotently by ``(device_id, seq)``, so a
batch whose answer was lost is simply sent again. One sync runs at a time per state
directory (a thread lock plus an advisory file lock). :class:`SyncLoop` retries forever with
exponential backoff and full jitter (1 s doubling to 5 min).

This module is the only one in the SDK that imports grpc: deciding never loads it.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from nbo.v1 import common_pb2, sync_pb2, sync_pb2_grpc

from . import _ledger, _records
from ._bundle import sha256_file
from ._errors import HubUnavailableError, InputError, NboError, SyncError
from ._types import BundleInfo, SyncReport

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["DEFAULT_TIMEOUT", "RecoveryPage", "SyncLoop", "backoff_delay", "fetch_recovery", "run_forever",
           "state_dir_lock", "sync"]

log = logging.getLogger("nbo.sync")

DEFAULT_TIMEOUT = 30.0
"""Seconds allowed for each RPC (a download chunk stream gets ten times this)."""

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", 32 * 1024 * 1024),
    ("grpc.max_send_message_length", 32 * 1024 * 1024),
    # Keep long syncs (big backlogs, big downloads) alive through NATs; the hub permits pings
    # every 10 s, so 30 s is well inside its policy.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # A terminal retries itself with backoff: fail fast rather than queue behind a dead link.
    ("grpc.enable_retries", 0),
)

_BATCH_BYTES = 8 * 1024 * 1024

_PERMANENT = {
    grpc.StatusCode.UNAUTHENTICATED: "the hub does not accept this token",
    grpc.StatusCode.PERMISSION_DENIED: "this token may not sync this device",
    grpc.StatusCode.ALREADY_EXISTS: ("the hub holds different events under this device's sequence numbers: "
                                     "its state was reset or restored from an older copy; run `nbo recover` "
                                     "(docs/operations.md, Recovering a damaged device)"),
    grpc.StatusCode.INVALID_ARGUMENT: "the hub refused the request",
}


_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


# -- one sync at a time ----------------------------------------------------------------------

_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


@contextmanager
def _exclusive(client: Client) -> Iterator[None]:
    """Hold this client's sync lock and the state directory's file lock."""
    with _locks_guard:
        lock = _locks.setdefault(client, threading.Lock())
    with lock, state_dir_lock(Path(client.state_dir)):
        yield


@contextmanager
def state_dir_lock(state_dir: Path) -> Iterator[None]:
    """The advisory file lock ``STATE/sync.lock``: one sync (or recovery) per state directory."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: the thread lock has to do
        yield
        return
    with (state_dir / "sync.lock").open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # another process syncing: wait for it
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# -- the channel -----------------------------------------------------------------------------


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}", field=what.replace(" ", "_")) from exc


def open_channel(
    target: str,
    *,
    ca_file: str | os.PathLike[str] | None = None,
    client_cert: str | os.PathLike[str] | None = None,
    client_key: str | os.PathLike[str] | None = None,
) -> grpc.Channel:
    """A channel to ``HOST:PORT``: TLS when ``ca_file`` or a client certificate is given."""
    if not isinstance(target, str) or ":" not in target:
        raise InputError("target must be HOST:PORT", field="target")
    if (client_cert is None) != (client_key is None):
        raise InputError("client_cert and client_key must be given together", field="client_cert")
    if ca_file is None and client_cert is None:
        return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, "ca file") if ca_file is not None else None,
        private_key=_read(client_key, "client key") if client_key is not None else None,
        certificate_chain=_read(client_cert, "client cert") if client_cert is not None else None,
    )
    return grpc.secure_channel(target, credentials, options=CHANNEL_OPTIONS)


def _sync_error(exc: grpc.RpcError, what: str) -> SyncError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    hint = _PERMANENT.get(code) if isinstance(code, grpc.StatusCode) else None
    if code in _TRANSIENT:
        hint = "events stay queued; check the hub address and that it is running, then sync again"
    message = f"{what} failed: {name}: {details}" + (f" ({hint})" if hint else "")
    return HubUnavailableError(message) if code in _TRANSIENT else SyncError(message)


# -- pushing ---------------------------------------------------------------------------------


def _pending_batch(client: Client, limit: int, *, after: int = 0) -> list[tuple[int, str, str, float, str]]:
    """The next ``limit`` unacknowledged events with ``seq > after``, in seq order."""
    with client._store.read() as tx:
        rows = tx.execute(
            "SELECT o.seq, o.event_id, o.type, o.created_at, o.payload FROM outbox o WHERE o.acked = 0 "
            "AND o.seq > ? AND NOT EXISTS (SELECT 1 FROM dead_letter d WHERE d.seq = o.seq) ORDER BY o.seq LIMIT ?",
            (after, limit),
        )
    batch: list[tuple[int, str, str, float, str]] = []
    size = 0
    for s, e, t, c, p in rows:
        size += len(p) + len(e) + 64
        if batch and size > _BATCH_BYTES:
            break  # keep every request far below the hub's message limit, whatever the payloads
        batch.append((int(s), e, t, float(c), p))
    return batch


def _outbox_head(client: Client) -> int:
    """The highest seq the outbox holds (0 when empty): the hub shows head − acked as pending."""
    with client._store.read() as tx:
        rows = tx.execute("SELECT MAX(seq) FROM outbox")
    return int(rows[0][0] or 0) if rows else 0


def _apply_answer(client: Client, response: sync_pb2.PushEventsResponse) -> tuple[int, int, int]:
    """Dead-letter, ack and store balances in one durable transaction; (dead, balances, refused).

    Nothing in one answer can stop the acknowledgement: a balance this device cannot apply
    goes to ``answer_dead_letter`` with the reason (``refused``) and the rest is applied.
    """
    balances = {b.customer_id: int(b.balance) for b in response.balances}
    refused: list[tuple[str, str]] = []
    with client._store.transaction(durable=True) as tx:
        dead = 0
        for rejected in response.rejected:
            rows = tx.execute(
                "SELECT seq, event_id, type, created_at, payload FROM outbox WHERE seq = ? AND event_id = ?",
                (rejected.seq, rejected.event_id),
            )
            if not rows:
                continue  # already moved by an earlier answer
            seq, event_id, type_, created_at, payload = rows[0]
            tx.execute(
                "INSERT INTO dead_letter(seq, event_id, type, created_at, payload, reason, dead_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(seq) DO NOTHING",
                (seq, event_id, type_, created_at, payload, rejected.reason[:1000] or "rejected by the hub", tx.now),
            )
            tx.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            dead += 1
        tx.execute("UPDATE outbox SET acked = 1 WHERE acked = 0 AND seq <= ?", (int(response.acked_through),))
        if balances:
            refused = _ledger.apply_central_balances(tx, balances, acked_through=int(response.acked_through))
            for customer_id, reason in refused:
                _records.dead_letter_answer(tx, kind="balance", subject=customer_id,
                                            acked_through=int(response.acked_through), reason=reason)
    for customer_id, reason in refused:
        log.warning("event=sync_answer_refused kind=balance subject=%s reason=%s",
                    _records.fingerprint(customer_id), reason)
    return dead, len(balances) - len(refused), len(refused)


# -- downloading -----------------------------------------------------------------------------




def _wants(client: Client, ref: common_pb2.BundleRef) -> bool:
    """Is ``ref`` newer than anything this device has installed under that name?"""
    highest = client._bundles.highest_versions().get(ref.name, 0)
    return int(ref.version) > int(highest)


def _download(stub: Any, client: Client, ref: common_pb2.BundleRef, *, metadata: Any, timeout: float) -> Path:
    """Fetch ``ref`` into ``downloads/<name>-<version>.part`` (resuming), verify, return the zip path."""
    downloads = Path(client.state_dir) / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    stem = f"{ref.name}-{ref.version}"
    if "/" in stem or stem.startswith("."):
        raise SyncError(f"the hub offered a bundle with an unsafe name {ref.name!r}")
    part = downloads / f"{stem}.part"
    done = downloads / f"{stem}.zip"
    if done.exists() and done.stat().st_size == ref.size and sha256_file(done) == ref.sha256:
        return done  # fetched before but not installed (e.g. refused): no need to fetch it again
    offset = part.stat().st_size if part.exists() else 0
    if offset > ref.size:  # not this file: start again
        part.unlink()
        offset = 0
    if offset < ref.size:
        request = sync_pb2.DownloadBundleRequest(name=ref.name, version=ref.version, offset=offset)
        try:
            with part.open("ab") as out:
                for chunk in stub.DownloadBundle(request, metadata=metadata, timeout=timeout * 10):
                    if chunk.sha256 != ref.sha256 or chunk.total_size != ref.size:
                        out.close()
                        part.unlink(missing_ok=True)
                        raise SyncError(f"bundle {stem} changed on the hub during the download; will retry")
                    if chunk.offset != offset:
                        raise SyncError(f"bundle {stem}: chunk at offset {chunk.offset}, expected {offset}")
                    out.write(chunk.data)
                    offset += len(chunk.data)
                    # flush as we go so a cut download keeps what arrived (resume from here)
                    out.flush()
                out.flush()
                os.fsync(out.fileno())
        except grpc.RpcError as exc:
            raise _sync_error(exc, f"downloading bundle {stem} (kept {offset} bytes to resume)") from exc
    if offset != ref.size:
        raise SyncError(f"bundle {stem}: download ended at {offset} of {ref.size} bytes; will resume")
    if sha256_file(part) != ref.sha256:
        part.unlink(missing_ok=True)
        raise SyncError(f"bundle {stem}: SHA-256 mismatch after download; discarded, will fetch again")
    os.replace(part, done)
    return done


# -- the sync --------------------------------------------------------------------------------


def sync(
    client: Client,
    target: str,
    *,
    token: str,
    ca_file: str | os.PathLike[str] | None = None,
    client_cert: str | os.PathLike[str] | None = None,
    client_key: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    download: bool = True,
) -> SyncReport:
    """Push the outbox to the hub at ``target`` (``HOST:PORT``), then pick up a newer bundle.

    Raises :class:`SyncError` when the hub cannot be reached or refuses the push (events stay
    queued; call again later — :class:`SyncLoop` does that with backoff). A failed bundle
    download or install does not raise: it is listed in the report's ``errors`` and retried
    (resuming) next time.
    """
    if not isinstance(token, str) or not token:
        raise InputError("token must be a non-empty string", field="token")
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise InputError("timeout must be a positive number of seconds", field="timeout")
    with _exclusive(client):
        channel = open_channel(target, ca_file=ca_file, client_cert=client_cert, client_key=client_key)
        try:
            return _sync(client, sync_pb2_grpc.SyncServiceStub(channel), token=token, timeout=float(timeout),
                         download=download)
        finally:
            channel.close()


def _sync(client: Client, stub: Any, *, token: str, timeout: float, download: bool) -> SyncReport:
    metadata = (("authorization", f"Bearer {token}"),)
    batch_size = max(1, int(client.config.sync_batch_size))
    pushed = dead = balances = refused = 0
    acked_through = 0
    latest: common_pb2.BundleRef | None = None
    errors: list[str] = []
    # Overlap without reordering: while the hub stores batch k, the device records the answer
    # to k-1 and reads and encodes batch k+1; k+1 is sent the moment the answer to k arrives.
    # Batches leave one at a time and in order, so the hub always sees them in seq order.
    after = 0
    first = True
    active = client.bundle
    status: dict[str, Any] = {}
    if active is not None:
        status["active_bundle"] = sync_pb2.ActiveBundle(name=active.name, version=active.version)

    def build_next() -> tuple[sync_pb2.PushEventsRequest, int] | None:
        nonlocal after, first
        rows = _pending_batch(client, batch_size, after=after)
        if not rows and not first:
            return None
        # With nothing pending, one empty push still tells the hub this device synced, its
        # outbox head and its bundle (the console's field view).
        first = False
        if rows:
            after = rows[-1][0]
        request = sync_pb2.PushEventsRequest(
            device_id=client.device_id,
            events=[
                sync_pb2.Event(event_id=e, device_id=client.device_id, seq=s, type=t, created_at=c, payload_json=p)
                for s, e, t, c, p in rows
            ],
            outbox_head=_outbox_head(client),
            **status,
        )
        return request, len(rows)

    def send(built: tuple[sync_pb2.PushEventsRequest, int] | None) -> tuple[Any, int] | None:
        if built is None:
            return None
        return stub.PushEvents.future(built[0], metadata=metadata, timeout=timeout), built[1]

    in_flight = send(build_next())
    prepared = build_next() if in_flight is not None else None
    try:
        while in_flight is not None:
            future, count = in_flight
            in_flight = None
            try:
                response = future.result()
            except grpc.RpcError as exc:
                raise _sync_error(exc, "PushEvents") from exc
            in_flight, prepared = send(prepared), None
            d, b, r = _apply_answer(client, response)
            if in_flight is not None:
                prepared = build_next()
            pushed += count
            dead += d
            balances += b
            refused += r
            acked_through = max(acked_through, int(response.acked_through))
            if response.HasField("latest_bundle"):
                latest = response.latest_bundle
    finally:
        if in_flight is not None:
            in_flight[0].cancel()
    if refused:
        errors.append(f"{refused} balance(s) in the hub's answers could not be applied (a customer id this "
                      "device refuses); kept in answer_dead_letter, everything else was applied")
    if acked_through:
        # Outside the database: from now on an emptied or older state file is refused at open.
        client._store.note_synced(acked_through)
    if after and acked_through < after:
        # The hub is missing an earlier event of ours (a gap it cannot close): say where.
        errors.append(f"hub acknowledged through seq {acked_through}, but events up to {after} were pushed")
    bundle_installed: BundleInfo | None = None
    if download:
        try:
            if latest is None:
                answer = stub.GetLatestBundle(sync_pb2.GetLatestBundleRequest(), metadata=metadata, timeout=timeout)
                latest = answer.bundle if answer.HasField("bundle") else None
            if latest is not None and _wants(client, latest):
                path = _download(stub, client, latest, metadata=metadata, timeout=timeout)
                bundle_installed = client.install_bundle(path)
                path.unlink(missing_ok=True)
        except grpc.RpcError as exc:
            error = _sync_error(exc, "GetLatestBundle or DownloadBundle")
            if pushed == 0 and latest is None:
                raise error from exc  # the hub was not reached at all: a failed sync
            errors.append(str(error))
        except NboError as exc:
            errors.append(f"bundle: {exc}")
    # Acked decision logs are what compaction removes first, so keep the outbox in budget now.
    try:
        _records.compact_decisions(client._store, budget_bytes=client.config.decision_log_budget_bytes)
    except NboError as exc:
        errors.append(f"compaction: {exc}")
    report = SyncReport(
        pushed=pushed,
        acked_through=acked_through,
        dead_lettered=dead,
        balances_updated=balances,
        bundle_installed=bundle_installed,
        errors=tuple(errors),
    )
    log.info("event=sync pushed=%d acked_through=%d dead=%d balances=%d bundle=%s errors=%d", pushed,
             acked_through, dead, balances, bundle_installed.version if bundle_installed else "-", len(errors))
    return report


# -- recovering a damaged device -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecoveryPage:
    """One piece of what the hub holds for a device (a ``RecoveryChunk`` as plain data)."""

    acked_through: int
    max_seq: int
    events: tuple[tuple[int, str, str, float, str, str | None], ...]
    """``(seq, event_id, type, created_at, payload JSON, rejected reason or None)`` in seq order."""
    balances: Mapping[str, int]
    complete: bool


def fetch_recovery(
    target: str,
    *,
    device_id: str,
    token: str,
    ca_file: str | os.PathLike[str] | None = None,
    client_cert: str | os.PathLike[str] | None = None,
    client_key: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> Iterator[RecoveryPage]:
    """Stream ``RecoverDevice`` from the hub at ``target``; :class:`SyncError` when it fails.

    ``timeout`` bounds the whole stream at a hundred times the per-call timeout (a device's whole
    history can be large); the caller checks that the last page is ``complete``.
    """
    if not isinstance(token, str) or not token:
        raise InputError("token must be a non-empty string", field="token")
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise InputError("timeout must be a positive number of seconds", field="timeout")
    channel = open_channel(target, ca_file=ca_file, client_cert=client_cert, client_key=client_key)
    try:
        stub = sync_pb2_grpc.SyncServiceStub(channel)
        stream = stub.RecoverDevice(sync_pb2.RecoverDeviceRequest(device_id=device_id),
                                    metadata=(("authorization", f"Bearer {token}"),), timeout=float(timeout) * 100)
        try:
            for chunk in stream:
                yield RecoveryPage(
                    acked_through=int(chunk.acked_through),
                    max_seq=int(chunk.max_seq),
                    events=tuple(
                        (int(h.event.seq), h.event.event_id, h.event.type, float(h.event.created_at),
                         h.event.payload_json, h.rejected_reason if h.HasField("rejected_reason") else None)
                        for h in chunk.events),
                    balances={b.customer_id: int(b.balance) for b in chunk.balances},
                    complete=bool(chunk.complete),
                )
        except grpc.RpcError as exc:
            raise _sync_error(exc, "RecoverDevice") from exc
        finally:
            stream.cancel()
    finally:
        channel.close()


# -- retrying forever ------------------------------------------------------------------------


def backoff_delay(attempt: int, *, initial: float = 1.0, cap: float = 300.0,
                  rng: Callable[[], float] = random.random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, initial × 2^attempt)]."""
    return rng() * min(cap, initial * (2 ** min(attempt, 62)))


@dataclass
class SyncLoop:
    """Sync every ``interval`` seconds; after a failure retry with backoff; never give up.

    ``sleep`` and ``rng`` are injectable so tests run without real waiting; ``stop`` ends the
    loop at the next wait.
    """

    client: Client
    target: str
    token: str
    interval: float = 60.0
    initial_backoff: float = 1.0
    max_backoff: float = 300.0
    sleep: Callable[[float], None] = time.sleep
    rng: Callable[[], float] = random.random
    options: Mapping[str, Any] | None = None
    on_report: Callable[[SyncReport], None] | None = None
    on_error: Callable[[Exception, float], None] | None = None

    def __post_init__(self) -> None:
        self.failures = 0
        self.stop_event = threading.Event()
        self._retry_in = 0.0

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt: ``interval`` after a success, else backoff."""
        return self.interval if self.failures == 0 else self._retry_in

    def run_once(self) -> SyncReport | None:
        """One attempt; returns the report, or None after a failure (counted for backoff)."""
        try:
            report = sync(self.client, self.target, token=self.token, **dict(self.options or {}))
        except Exception as exc:  # never give up: every failure is retried with backoff
            self.failures += 1
            delay = self._retry_in = backoff_delay(self.failures - 1, initial=self.initial_backoff,
                                                   cap=self.max_backoff, rng=self.rng)
            log.warning("event=sync_failed attempt=%d retry_in_s=%.1f error=%s", self.failures, delay, exc)
            if self.on_error is not None:
                self.on_error(exc, delay)
            return None
        self.failures = 0
        if self.on_report is not None:
            self.on_report(report)
        return report

    def run_forever(self, *, max_attempts: int | None = None) -> None:
        """Loop until :meth:`stop` (or ``max_attempts``, for tests)."""
        attempts = 0
        while not self.stop_event.is_set():
            self.run_once()
            attempts += 1
            if max_attempts is not None and attempts >= max_attempts:
                return
            if self.stop_event.is_set():
                return
            delay = self.next_delay()
            if self.sleep is time.sleep:
                self.stop_event.wait(delay)
            else:
                self.sleep(delay)

    def stop(self) -> None:
        """Ask :meth:`run_forever` to return at its next wait."""
        self.stop_event.set()


def run_forever(client: Client, target: str, *, token: str, **kwargs: Any) -> None:
    """Run a :class:`SyncLoop` (keyword arguments as its fields) until interrupted."""
    SyncLoop(client, target, token, **kwargs).run_forever()
