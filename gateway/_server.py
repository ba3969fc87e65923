"""Building and running the gateway's gRPC server.

:func:`create_server` builds a server bound to an address (tests use ``127.0.0.1:0``) without
starting it; ``nbo serve`` runs several of them on one port (``gateway/_supervisor.py``).

Channel settings, and why:

- ``grpc.max_receive_message_length`` = 32 MiB: a push batch of a few thousand events, or a
  publish chunk, fits with room to spare; anything bigger is refused with
  ``RESOURCE_EXHAUSTED`` before it is parsed. ``grpc.max_send_message_length`` likewise.
- ``grpc.keepalive_time_ms`` = 60 s, ``grpc.keepalive_timeout_ms`` = 20 s: the server pings
  idle connections once a minute and drops those that do not answer within 20 s, so a
  terminal that vanished (power cut, NAT timeout) does not hold a connection forever.
- ``grpc.http2.min_ping_interval_without_data_ms`` = 10 s and
  ``grpc.keepalive_permit_without_calls`` = 1: clients may keep their own keepalive as often
  as every 10 s, even between calls, without being disconnected for "too many pings".
- ``grpc.max_connection_idle_ms`` = 30 min: idle connections are closed politely (GOAWAY).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nbo.sdk import Clock, ConfigError
from nbo.v1 import decision_pb2, decision_pb2_grpc, publish_pb2, publish_pb2_grpc, sync_pb2, sync_pb2_grpc

from ._auth import Authenticator, AuthInterceptor
from ._call_limits import CallBudgets, CallLimits
from ._config import GatewayConfig
from ._decide_batch import DecideBatcher, decide_batch
from ._decision_service import DecisionServicer
from ._decode_guard import DecodeGuard
from ._engine_host import EngineHost
from ._health import HealthMonitor
from ._hub import HubStore
from ._hub_state import HubStateStore
from ._metrics import GatewayMetrics, MetricsInterceptor
from ._publish_service import PublishServicer
from ._sync_service import SyncServicer

__all__ = ["SERVER_OPTIONS", "GatewayServer", "create_server"]

log = logging.getLogger("nbo.gateway")

MAX_MESSAGE_BYTES = 32 * 1024 * 1024

SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_connection_idle_ms", 30 * 60_000),
)


class GatewayServer:
    """A built gateway: the gRPC server plus what it owns (hub store, health status).

    ``start()``, ``stop(grace)`` and ``wait_for_termination()`` behave like ``grpc.Server``'s;
    ``stop`` also marks the server NOT_SERVING first and closes the hub store once drained.
    """

    def __init__(self, server: grpc.Server, *, port: int, hub: HubStore, health_servicer: health.HealthServicer,
                 closers: tuple[Callable[[], None], ...] = ()) -> None:
        self.grpc_server = server
        self.port = port
        self.hub = hub
        self.health = health_servicer
        self._closers = closers
        # Set by create_server: the gateway's engine, its decider (the batcher), its metrics
        # and the /metrics port.
        self.engine: EngineHost | None = None
        self.decider: DecideBatcher | None = None
        self.metrics: GatewayMetrics | None = None
        self.budgets: CallBudgets | None = None
        self.metrics_port: int | None = None
        self._stopped = threading.Event()
        self._closed = False
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start serving."""
        self.grpc_server.start()

    def stop(self, grace: float | None = None) -> threading.Event:
        """Stop accepting calls, let in-flight calls finish within ``grace`` s, then close."""
        self.health.enter_graceful_shutdown()
        done = self.grpc_server.stop(grace)

        def finish() -> None:
            done.wait()
            self._close()
            self._stopped.set()

        threading.Thread(target=finish, name="nbo-gateway-stop", daemon=True).start()
        return self._stopped

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for close in self._closers:
            close()
        self.hub.close()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops (or ``timeout``); True when it stopped."""
        return self._stopped.wait(timeout)

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Register more services (before :meth:`start`)."""
        self.grpc_server.add_generic_rpc_handlers(handlers)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def _credentials(config: GatewayConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    cert = _read(config.tls_cert, "TLS certificate")
    key = _read(config.tls_key, "TLS key")
    client_ca = _read(config.client_ca, "client CA") if config.client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _probe_listen(listen: str, *, reuse_port: bool) -> None:
    """Fail with one clear line when the address cannot be bound, before grpc's core logs its own.

    The probe binds as the server will: with SO_REUSEPORT only for the serving processes of
    one ``nbo serve`` (``reuse_port``); port 0 (any free port) is not probed.
    """
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"--listen must look like HOST:PORT, got {listen!r}")
    port = int(port_text)
    if port == 0:
        return
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - the operator asked for this address
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {listen}: {exc.strerror or exc} — is another server using port {port}? "
                "choose another --listen port"
            ) from None


def create_server(
    config: GatewayConfig,
    *,
    state_dir: str | os.PathLike[str],
    listen: str = "127.0.0.1:0",
    max_workers: int | None = None,
    clock: Clock | None = None,
    hub_schema: str | None = None,
    bundle_poll_seconds: float = 5.0,
    reuse_port: bool = False,
    engine_dir: str | os.PathLike[str] | None = None,
    limits: CallLimits | None = None,
) -> tuple[GatewayServer, int]:
    """Build (not start) the gateway bound to ``listen``; returns the server and its port.

    ``hub_schema`` keeps a PostgreSQL hub's tables in their own schema (tests).
    ``bundle_poll_seconds``: how often the engine looks for a bundle another replica published
    (0 = never); at build the engine already switches to the hub's latest bundle.
    The Prometheus endpoint starts here when ``config.metrics_port`` is set.
    ``reuse_port``: bind with ``SO_REUSEPORT``, sharing the port with the other serving
    processes of one ``nbo serve`` (``gateway/_supervisor.py`` owns the port and keeps every
    other server off it); otherwise the bind is exclusive and a taken port is an error.
    ``engine_dir``: where the engine keeps its bundles (default ``STATE/engine-bundles``).
    ``limits``: thread budgets per kind of call and stream time limits (default: the
    configuration's ``[limits]``); ``max_workers`` overrides its ``decision_threads``.
    """
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    credentials = _credentials(config)
    hub = HubStore.open(config.hub_db, state_dir=state, clock=clock, schema=hub_schema)
    closers: list[Callable[[], None]] = []
    try:
        auth = Authenticator(config.tokens)
        metrics = GatewayMetrics()
        engine = EngineHost(
            Path(engine_dir) if engine_dir is not None else state / "engine-bundles",
            trusted_keys=config.trusted_keys,
            clock=clock,
            on_switch=lambda info: metrics.bundle_version.set(info.version),
        )
        hub_state = HubStateStore(hub, clock=clock, on_events=lambda events: metrics.record_app_event(len(events)))
        closers.append(hub_state.close)
        decider = DecideBatcher(lambda batch: decide_batch(hub_state, batch))
        closers.insert(0, decider.close)  # drain queued decisions before the hub store closes
        call_limits = limits if limits is not None else config.limits
        if max_workers is not None:
            call_limits = replace(call_limits, decision_threads=max_workers)
        budgets = CallBudgets(call_limits, metrics=metrics)
        closers.append(budgets.close)
        server = grpc.server(
            budgets.default_pool,
            # The budgets outermost (they name the executor of the behaviour gRPC runs), then
            # metrics, so refused (unauthenticated) calls are counted too; the decode guard
            # innermost, so its deserializer is the one every outer wrapper copies.
            interceptors=[budgets, MetricsInterceptor(metrics), AuthInterceptor(auth), DecodeGuard()],
            options=[*SERVER_OPTIONS, ("grpc.so_reuseport", 1 if reuse_port else 0)],
            maximum_concurrent_rpcs=budgets.total_threads() * 8,
        )
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

        services = [
            sync_pb2.DESCRIPTOR.services_by_name["SyncService"].full_name,
            decision_pb2.DESCRIPTOR.services_by_name["DecisionService"].full_name,
            publish_pb2.DESCRIPTOR.services_by_name["PublishService"].full_name,
        ]
        sync_pb2_grpc.add_SyncServiceServicer_to_server(SyncServicer(hub, auth), server)
        decision_pb2_grpc.add_DecisionServiceServicer_to_server(
            DecisionServicer(engine=engine, state=hub_state, decider=decider, metrics=metrics), server)
        publish_pb2_grpc.add_PublishServiceServicer_to_server(
            PublishServicer(engine=engine, hub=hub, spool_dir=state / "publish-spool"), server
        )
        _follow_hub(engine, hub)  # a bundle another process received is served from the start
        if bundle_poll_seconds > 0:
            closers.append(_start_bundle_poller(engine, hub, bundle_poll_seconds))

        for name in ("", *services):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        if config.health_probe_seconds > 0:
            monitor = HealthMonitor(hub=hub, engine=engine, health_servicer=health_servicer, write_services=services,
                                    metrics=metrics, clock=engine.clock)
            monitor.start(config.health_probe_seconds)
            closers.append(monitor.close)
        reflection.enable_server_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

        _probe_listen(listen, reuse_port=reuse_port)
        try:
            if credentials is not None:
                port = server.add_secure_port(listen, credentials)
            else:
                port = server.add_insecure_port(listen)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {listen}: {exc}") from exc
        if port == 0:
            raise ConfigError(f"cannot listen on {listen}")
        metrics_port = None
        if config.metrics_port is not None:
            try:
                metrics_port = metrics.start_http(config.metrics_port, addr=config.metrics_addr)
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve metrics on {config.metrics_addr}:{config.metrics_port}: {exc.strerror or exc}"
                ) from exc
            closers.append(metrics.stop_http)
    except BaseException:
        for close in closers:
            close()
        hub.close()
        raise
    gateway = GatewayServer(server, port=port, hub=hub, health_servicer=health_servicer, closers=tuple(closers))
    gateway.engine, gateway.metrics, gateway.metrics_port = engine, metrics, metrics_port
    gateway.decider = decider
    gateway.budgets = budgets
    return gateway, port


def _follow_hub(engine: EngineHost, hub: HubStore) -> None:
    """Switch the engine to the hub's latest bundle of its name when that one is newer."""
    active = engine.active
    latest = hub.latest_bundle(active.info.name if active is not None else None)
    if latest is not None:
        engine.refresh((latest.name, latest.version, latest.path))


def _start_bundle_poller(engine: EngineHost, hub: HubStore, interval: float) -> Callable[[], None]:
    """Follow the hub's bundle registry so a bundle published to another replica is served here too."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval):
            try:
                _follow_hub(engine, hub)
            except Exception as exc:  # a poll must never kill the thread; the next one retries
                log.warning("event=bundle_poll_failed error=%s", type(exc).__name__)

    thread = threading.Thread(target=run, name="nbo-bundle-poll", daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join(timeout=5)

    return close
