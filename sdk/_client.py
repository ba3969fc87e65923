"""``Client``: the front door of the embedded engine.

A thin shell that owns the edges (the state database, the bundle directory, the clock) and
hands plain data to the pure core. Each method is a few lines; the work lives in the private
modules it calls.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

from . import _bundle, _engine, _ledger, _payments, _records
from ._clock import Clock, SystemClock
from ._errors import BundleError, NotReadyError
from ._runtime import LoadedBundle, load_bundle, stage_and_load
from ._store import SQLiteStateStore
from ._types import BundleInfo, Decision, LedgerEntry, PaymentRecord, SyncReport
from ._vocabulary import DEFAULT_LIMIT

__all__ = ["Client", "ClientConfig"]

log = logging.getLogger("nbo.sdk")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Tunables of an embedded client. Defaults suit a POS terminal."""

    decision_log_budget_bytes: int = 64 * 1024 * 1024
    """Decision events past this outbox size are compacted oldest-first (money never is)."""
    sync_batch_size: int = 2000
    """Events per ``PushEvents`` batch."""


class Client:
    """An embedded NBO engine bound to one device's state directory.

    Open with :meth:`Client.open`; use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        device_id: str,
        trusted_keys: Iterable[bytes | str | os.PathLike[str]],
        clock: Clock | None = None,
        config: ClientConfig | None = None,
        read_only: bool = False,
    ) -> None:
        _records.check_id(device_id, "device_id")
        self.state_dir = state_dir
        self.device_id = device_id
        self.clock: Clock = clock or SystemClock()
        self.config = config or ClientConfig()
        if not read_only:
            state_dir.mkdir(parents=True, exist_ok=True)
        self._store = SQLiteStateStore(
            state_dir / "state.sqlite",
            device_id=device_id,
            clock=self.clock,
            schemas=(_ledger.SCHEMA, _payments.SCHEMA, _records.SCHEMA),
            read_only=read_only,
        )
        self._install_lock = threading.Lock()
        self._active: LoadedBundle | None = None
        self._bundle_problem: str | None = None
        try:
            self._bundles = _bundle.BundleStore(
                state_dir / "bundles", trusted_keys=_bundle.load_trusted_keys(trusted_keys), clock=self.clock
            )
        except BaseException:
            self._store.close()  # a bad key must not leak the open state database
            raise
        try:
            current = self._bundles.active()
            if current is not None:
                self._active = load_bundle(current.directory, current.manifest, current.info)
        except BundleError as exc:
            # A damaged bundle must not stop a terminal from recording money and points or from
            # syncing: it opens without one, decide() says why, and an install or rollback heals it.
            self._bundle_problem = str(exc)
            log.error("event=bundle_unusable_at_open state_dir=%s detail=%s", state_dir, exc)

    @classmethod
    def open(
        cls,
        state_dir: str | os.PathLike[str],
        *,
        device_id: str,
        trusted_keys: Iterable[bytes | str | os.PathLike[str]],
        clock: Clock | None = None,
        config: ClientConfig | None = None,
        read_only: bool = False,
    ) -> Client:
        """Open (creating if needed) the device state in ``state_dir``.

        ``trusted_keys`` are the contents of ``signing.pub`` files, or paths to them; only
        bundles signed by one of them are installed. ``read_only=True`` opens an existing
        state directory for looking only: nothing is created or written (``StateError`` if
        it is not a device state directory); decide with ``dry_run=True`` on such a client.
        """
        return cls(Path(state_dir), device_id=device_id, trusted_keys=trusted_keys, clock=clock, config=config,
                   read_only=read_only)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Release the state database. The client cannot be used afterwards."""
        self._store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- bundles ---------------------------------------------------------------------------

    @property
    def bundle(self) -> BundleInfo | None:
        """The active bundle, or ``None`` before the first install."""
        active = self._active
        return active.info if active is not None else None

    def install_bundle(self, path: str | os.PathLike[str], *, force: bool = False) -> BundleInfo:
        """Verify and install a bundle, then switch to it atomically.

        Refuses (``BundleError``) a bad signature or hash, an untrusted key, a version lower
        than the highest ever installed, or the same version built again (unless ``force``), or
        a ``min_sdk`` newer than this SDK. On any failure the active bundle keeps serving,
        untouched. The very bundle that is active already (the same manifest) installs
        nothing and returns its info: running the same install twice is not an error.
        """
        with self._install_lock:
            active = self._active
            if not force and active is not None and self._bundles.is_active_copy(Path(path)):
                return active.info
            staged, loaded = stage_and_load(self._bundles, Path(path), force=force)
            info = self._bundles.commit(staged)
            self._active = replace(loaded, info=info)
            self._bundle_problem = None
            return info

    def rollback(self) -> BundleInfo:
        """Switch back to the previously active bundle (one step)."""
        with self._install_lock:
            previous = self._bundles.previous()
            if previous is None:
                raise NotReadyError("there is no previous bundle to roll back to")
            loaded = load_bundle(previous.directory, previous.manifest, previous.info)
            info = self._bundles.rollback()
            self._active = replace(loaded, info=info)
            self._bundle_problem = None
            return info

    def _require_bundle(self) -> LoadedBundle:
        active = self._active
        if active is None:
            if self._bundle_problem is not None:
                raise NotReadyError(
                    f"the installed bundle is unusable ({self._bundle_problem}); install a new one "
                    "(`nbo sync`, or `nbo bundle install --force`) or roll back (`nbo bundle rollback`)"
                )
            raise NotReadyError("no bundle installed: call install_bundle() (or `nbo sync`) first")
        return active

    # -- deciding --------------------------------------------------------------------------

    def decide(
        self,
        customer_id: str,
        *,
        channel: str,
        context: Mapping[str, Any] | None = None,
        profile: Mapping[str, Any] | None = None,
        limit: int = DEFAULT_LIMIT,
        explain: bool = False,
        dry_run: bool = False,
    ) -> Decision:
        """Rank the offers for ``customer_id`` on ``channel`` now, from the active bundle.

        The decision is recorded (an outbox event, a contact counted by the contact policies)
        unless ``dry_run``: then it is only computed, e.g. for an analyst trying a customer.
        """
        return _engine.decide(
            self._require_bundle(),
            self._store,
            customer_id=customer_id,
            channel=channel,
            context=context,
            profile=profile,
            limit=limit,
            explain=explain,
            record=not dry_run,
        )

    # -- after the offer -------------------------------------------------------------------

    def record_response(self, decision_id: str, offer_id: str, outcome: str) -> None:
        """Record ``accepted | declined | ignored`` for an offer of a recorded decision."""
        _records.record_response(self._store, decision_id, offer_id, outcome)

    def record_purchase(
        self,
        customer_id: str,
        *,
        amount: Decimal | str,
        idempotency_key: str,
        timestamp: datetime | None = None,
        quantity: int = 1,
    ) -> None:
        """Record a purchase and bring the customer's measures up to date."""
        _records.record_purchase(
            self._store,
            customer_id,
            amount=amount,
            idempotency_key=idempotency_key,
            timestamp=timestamp,
            quantity=quantity,
        )

    def award_points(
        self,
        customer_id: str,
        points: int,
        *,
        idempotency_key: str,
        reason: str,
        expires_at: datetime | None = None,
    ) -> LedgerEntry:
        """Award points (fsync'd before returning); a repeated key returns the first entry."""
        return _ledger.award(
            self._store, customer_id, points, idempotency_key=idempotency_key, reason=reason, expires_at=expires_at
        )

    def redeem_points(self, customer_id: str, points: int, *, idempotency_key: str, reason: str) -> LedgerEntry:
        """Redeem points; beyond the available balance raises ``LedgerError``."""
        return _ledger.redeem(self._store, customer_id, points, idempotency_key=idempotency_key, reason=reason)

    def reverse_points(self, entry_id: str, *, idempotency_key: str, reason: str) -> LedgerEntry:
        """Reverse an earlier ledger entry exactly."""
        return _ledger.reverse(self._store, entry_id, idempotency_key=idempotency_key, reason=reason)

    def points_balance(self, customer_id: str) -> int:
        """Last synced central balance plus local unsynced entries, net of expiry."""
        return _ledger.balance(self._store, customer_id)

    def record_payment(
        self,
        customer_id: str,
        *,
        payment_token: str,
        amount: Decimal | str,
        currency: str,
        idempotency_key: str,
        store_id: str | None = None,
        decision_id: str | None = None,
        offer_id: str | None = None,
    ) -> PaymentRecord:
        """Record a payment-linked record; card data is refused with ``PaymentDataError``."""
        return _payments.record_payment(
            self._store,
            customer_id,
            payment_token=payment_token,
            amount=amount,
            currency=currency,
            idempotency_key=idempotency_key,
            store_id=store_id,
            decision_id=decision_id,
            offer_id=offer_id,
        )

    # -- outbox and sync -------------------------------------------------------------------

    def pending_events(self) -> int:
        """Events in the outbox not yet acknowledged by the hub."""
        return _records.pending_events(self._store)

    def acked_through(self) -> int:
        """The highest outbox seq the hub has acknowledged (0 before the first acknowledgement)."""
        with self._store.read() as tx:
            rows = tx.execute("SELECT MAX(seq) FROM outbox WHERE acked = 1")
        return int(rows[0][0] or 0) if rows else 0

    def outbox_summary(self) -> dict[str, Any]:
        """Outbox counts: ``pending``/``acked``/``dead_lettered`` in total and ``by_type``."""
        return _records.outbox_summary(self._store)

    def outbox_events(self, *, status: str = "pending", limit: int = 50) -> list[dict[str, Any]]:
        """The oldest ``limit`` outbox events in ``status`` (``pending``, ``acked``, ``dead_lettered``, ``all``)."""
        return _records.list_events(self._store, status=status, limit=limit)

    def sync(self, target: str, *, token: str, **options: Any) -> SyncReport:
        """Push the outbox to the hub at ``target`` (``HOST:PORT``) and pick up a newer bundle."""
        from . import _sync  # grpc is imported only when syncing

        return _sync.sync(self, target, token=token, **options)
