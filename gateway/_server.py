"""Building and running the gateway's gRPC server.

:func:`create_server` builds a server bound to an address (tests use ``127.0.0.1:0``) without
starting it; :func:`serve` runs one until SIGTERM/SIGINT and then drains in-flight calls.

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
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from types import FrameType
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nbo.sdk._clock import Clock
from nbo.sdk._errors import ConfigError
from nbo.v1 import sync_pb2, sync_pb2_grpc

from ._auth import Authenticator, AuthInterceptor
from ._config import GatewayConfig
from ._hub import HubStore
from ._sync_service import SyncServicer

__all__ = ["SERVER_OPTIONS", "GatewayServer", "create_server", "serve"]

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


def create_server(
    config: GatewayConfig,
    *,
    state_dir: str | os.PathLike[str],
    listen: str = "127.0.0.1:0",
    max_workers: int = 16,
    clock: Clock | None = None,
    hub_schema: str | None = None,
) -> tuple[GatewayServer, int]:
    """Build (not start) the gateway bound to ``listen``; returns the server and its port.

    ``hub_schema`` keeps a PostgreSQL hub's tables in their own schema (tests).
    """
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    credentials = _credentials(config)
    hub = HubStore.open(config.hub_db, state_dir=state, clock=clock, schema=hub_schema)
    try:
        auth = Authenticator(config.tokens)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="nbo-rpc"),
            interceptors=[AuthInterceptor(auth)],
            options=list(SERVER_OPTIONS),
            maximum_concurrent_rpcs=max_workers * 8,
        )
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

        services = [sync_pb2.DESCRIPTOR.services_by_name["SyncService"].full_name]
        sync_pb2_grpc.add_SyncServiceServicer_to_server(SyncServicer(hub, auth), server)

        for name in ("", *services):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection((*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)

        try:
            if credentials is not None:
                port = server.add_secure_port(listen, credentials)
            else:
                port = server.add_insecure_port(listen)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {listen}: {exc}") from exc
        if port == 0:
            raise ConfigError(f"cannot listen on {listen}")
    except BaseException:
        hub.close()
        raise
    return GatewayServer(server, port=port, hub=hub, health_servicer=health_servicer), port


def serve(
    config: GatewayConfig,
    *,
    state_dir: str | os.PathLike[str],
    listen: str,
    grace: float = 10.0,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Run the gateway until SIGTERM or SIGINT, then drain in-flight calls for ``grace`` s."""
    server, port = create_server(config, state_dir=state_dir, listen=listen)
    server.start()
    host = listen.rsplit(":", 1)[0]
    log.info("event=listening address=%s:%d tls=%s mtls=%s", host, port, config.tls, config.client_ca is not None)
    if ready is not None:
        ready(port)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("event=stopping signal=%s grace_s=%s", signal.Signals(signum).name, grace)
        server.stop(grace)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not server.wait_for_termination(timeout=1.0):
            pass
    except KeyboardInterrupt:
        server.stop(grace).wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    log.info("event=stopped")
