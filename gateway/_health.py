"""What the health service reports beyond "the process is up": can the hub take writes, and
is the served bundle past its ``expires_at``.

A :class:`HealthMonitor` thread checks both every ``interval`` seconds:

- **Hub writes.** It commits a 64 KiB write to the hub (``hub_write_probe``, one row,
  replaced each time); 1 MiB instead while writes are failing, or when calls answered
  ``UNAVAILABLE`` since the last check (a full database file still takes a small write into
  the room a failed bigger one left, so a small probe alone would report it healthy). When
  the probe fails — the disk is full, the database cannot grow, the PostgreSQL hub refuses
  writes — the services whose calls write (``nbo.v1.DecisionService``,
  ``nbo.v1.SyncService``, ``nbo.v1.PublishService``) turn ``NOT_SERVING``, so a load balancer
  checking them sends their traffic elsewhere; the overall status (``""``) stays ``SERVING``
  because reads (``GetBalance``, ``GetLatestBundle``, ``DownloadBundle``) still answer. The
  next probe that succeeds turns them back. Logged on each change (``event=hub_writes_failing``
  / ``event=hub_writes_restored``), gauge ``nbo_hub_writable``.
- **Bundle expiry.** A bundle past its ``expires_at`` keeps serving — refusing to decide would
  leave every channel's slot empty, and a bundle is checked for expiry when it is installed —
  but the gauge ``nbo_bundle_expired`` turns 1 and ``event=bundle_expired`` is logged once
  per bundle, for the operator to publish a newer one.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

from grpc_health.v1 import health, health_pb2
from nbo.sdk import Clock, NboError
from nbo.sdk.core import parse_iso

from ._engine_host import EngineHost
from ._hub import HubStore
from ._metrics import GatewayMetrics

__all__ = ["PROBE_BYTES", "THOROUGH_PROBE_BYTES", "HealthMonitor"]

log = logging.getLogger("nbo.gateway")

PROBE_BYTES = 64 * 1024
"""Size of the write the probe commits: more than a page, so that a database that cannot grow fails it."""
THOROUGH_PROBE_BYTES = 1024 * 1024
"""Size of the probe while writes fail or after calls failed UNAVAILABLE."""


class HealthMonitor:
    """Probes hub writes and bundle expiry, and sets the health statuses and gauges from them."""

    def __init__(self, *, hub: HubStore, engine: EngineHost, health_servicer: health.HealthServicer,
                 write_services: Sequence[str], metrics: GatewayMetrics, clock: Clock) -> None:
        self._hub = hub
        self._engine = engine
        self._health = health_servicer
        self._write_services = tuple(write_services)
        self._metrics = metrics
        self._clock = clock
        self._writable: bool | None = None
        self._expired_warned: tuple[str, int] | None = None
        self._unavailable_seen = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def hub_writable(self) -> bool | None:
        """What the last probe found (``None`` before the first)."""
        return self._writable

    def check(self) -> None:
        """Probe once and update the statuses (the thread calls this every interval)."""
        unavailable = self._unavailable_answers()
        thorough = self._writable is False or unavailable > self._unavailable_seen
        self._unavailable_seen = unavailable
        problem = self._probe_writes(THOROUGH_PROBE_BYTES if thorough else PROBE_BYTES)
        writable = problem is None
        if writable != self._writable:
            if writable:
                if self._writable is not None:
                    log.warning("event=hub_writes_restored")
            else:
                log.error("event=hub_writes_failing detail=%s", problem)
            status = health_pb2.HealthCheckResponse.SERVING if writable else health_pb2.HealthCheckResponse.NOT_SERVING
            for service in self._write_services:
                self._health.set(service, status)
            self._writable = writable
        self._metrics.hub_writable.set(1 if writable else 0)
        self._check_expiry()

    def _unavailable_answers(self) -> float:
        """How many calls have answered UNAVAILABLE so far (the metrics' own count)."""
        total = 0.0
        for family in self._metrics.rpc_errors.collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("code") == "UNAVAILABLE":
                    total += sample.value
        return total

    def _probe_writes(self, size: int) -> str | None:
        try:
            with self._hub.db.transaction() as tx:
                tx.execute("CREATE TABLE IF NOT EXISTS hub_write_probe (id INTEGER PRIMARY KEY, pad BYTEA)")
                tx.execute("DELETE FROM hub_write_probe")
                # Random bytes: PostgreSQL would compress zeros to nothing.
                tx.execute("INSERT INTO hub_write_probe (id, pad) VALUES (?, ?)", (1, os.urandom(size)))
        except NboError as exc:
            return " ".join(str(exc).split())[:300]
        return None

    def _check_expiry(self) -> None:
        active = self._engine.active
        expires = active.info.expires_at if active is not None else None
        expired = False
        if active is not None and expires:
            try:
                expired = parse_iso(expires).timestamp() <= self._clock.now()
            except ValueError:  # verified at install; a bad value here would be a bug, not an expiry
                expired = False
        self._metrics.bundle_expired.set(1 if expired else 0)
        if expired and active is not None:
            key = (active.info.name, active.info.version)
            if key != self._expired_warned:
                log.warning("event=bundle_expired bundle=%s version=%d expires_at=%s (still serving; publish a "
                            "newer bundle)", key[0], key[1], expires)
                self._expired_warned = key

    def start(self, interval: float) -> None:
        """Check now, then every ``interval`` seconds in a daemon thread."""
        self.check()

        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    self.check()
                except Exception as exc:  # a failed check must not end the thread; the next one retries
                    log.warning("event=health_check_failed error=%s", type(exc).__name__)

        self._thread = threading.Thread(target=run, name="nbo-health-monitor", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread (before the hub store closes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
