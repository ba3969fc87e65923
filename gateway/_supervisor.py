"""``nbo serve``: N serving processes on one port under one supervisor.

Python runs one interpreter lock per process, so a gateway uses several cores by running
several complete servers — grpc's own answer for Python. :func:`serve` is the
supervisor:

- It **owns the port**. It binds the listen address itself (``SO_REUSEPORT``, not listening)
  and keeps that socket for its whole life, so the port stays reserved across child restarts
  and no server without ``SO_REUSEPORT`` can take it. It then takes the port's **guard**, a
  Linux abstract Unix socket named after the port (``\\0nbo-serve/port/<port>``): one per
  network namespace — the same scope as the TCP port — released by the kernel when the
  supervisor dies, however it dies. A second ``nbo serve`` on the port finds the guard taken
  and fails at start naming the port (``SO_REUSEPORT`` alone would let it silently take a
  share of the calls). Before any child starts, a connect to the port must fail: a server
  of another program listening there with ``SO_REUSEPORT`` is refused as well.
- It starts N **fresh interpreters** (multiprocessing's ``spawn``), each running
  :func:`~._server.create_server` on the same address with ``SO_REUSEPORT``; the kernel
  spreads new connections over them. Each decides in-process (``_decide_batch``), keeps its
  engine under ``STATE/engine-bundles-p<i>`` and shares the hub; a bundle published to any of
  them reaches the others through the hub's registry (each polls it every
  :data:`BUNDLE_POLL_SECONDS`).
- It prints ``listening`` only when every child serves; if one cannot start (bad TLS file,
  hub unreachable, …) it stops the others and fails with that child's one-line reason.
- It **restarts** a child that dies, after a backoff that doubles from 1 s to 30 s (reset
  once a child stayed up 60 s), logging each exit and restart.
- On SIGTERM or SIGINT it forwards SIGTERM to every child; each drains its in-flight calls
  (``grace``) and exits; the supervisor exits when all have. A child whose supervisor vanished
  (kill -9) stops by itself.
- **Metrics**: with ``[metrics] port`` set, children record into prometheus-client's
  multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, a directory the supervisor makes and
  removes) and the supervisor serves ``/metrics`` summing them, so a scrape sees one gateway.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from nbo.sdk import ConfigError

from ._config import GatewayConfig

__all__ = ["BUNDLE_POLL_SECONDS", "PortGuard", "serve"]

log = logging.getLogger("nbo.gateway.supervisor")

BUNDLE_POLL_SECONDS = 1.0
"""How often each serving process looks for a bundle another one received (hub registry)."""
_BACKOFF_FIRST, _BACKOFF_MAX, _STABLE_SECONDS = 1.0, 30.0, 60.0
_START_TIMEOUT = 120.0


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` → (host, port); ``ConfigError`` naming the flag when malformed."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--listen must look like HOST:PORT, got {listen!r}")
    return host, int(port_text)


class PortGuard:
    """The port's reservation and guard, held by the supervisor (see the module docstring)."""

    def __init__(self, listen: str) -> None:
        host, port = split_listen(listen)
        self.host = host
        bind_host = host.strip("[]") or "0.0.0.0"  # noqa: S104 - the operator asked for this address
        try:
            infos = socket.getaddrinfo(bind_host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
        family, kind, proto, _, address = infos[0]
        self._reserved = socket.socket(family, kind, proto)
        self._guard: socket.socket | None = None
        try:
            self._reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                self._reserved.bind(address)
            except OSError as exc:
                raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc} — is another server using "
                                  f"port {port}? choose another --listen port") from None
            self.port = int(self._reserved.getsockname()[1])
            self._guard = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self._guard.bind(f"\0nbo-serve/port/{self.port}")
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                raise ConfigError(f"port {self.port} is already served by another nbo serve; "
                                  "choose another --listen port") from None
            if self._someone_listens(family, address):
                raise ConfigError(f"port {self.port} is already in use by another server; "
                                  "choose another --listen port")
        except BaseException:
            self.close()
            raise

    def _someone_listens(self, family: int, address: Any) -> bool:
        target = ("::1" if family == socket.AF_INET6 else "127.0.0.1") if address[0] in ("0.0.0.0", "::") else address[0]  # noqa: S104
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(2.0)
            try:
                probe.connect((target, self.port))
            except OSError:
                return False
        return True

    @property
    def listen(self) -> str:
        """The address every serving process binds (the port resolved when 0 was asked)."""
        return f"{self.host}:{self.port}"

    def close(self) -> None:
        for sock in (self._guard, self._reserved):
            if sock is not None:
                sock.close()


@dataclass(frozen=True, slots=True)
class _ChildSpec:
    index: int
    config: GatewayConfig
    state_dir: str
    listen: str
    grace: float
    log_level: int


def _child_main(spec: _ChildSpec, conn: Connection) -> None:
    """One serving process: a full gateway on the shared port until SIGTERM or its parent dies."""
    logging.basicConfig(level=spec.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s %(name)s[p{spec.index}] %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor turns Ctrl-C into SIGTERM
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    from ._server import create_server

    state = Path(spec.state_dir)
    try:
        server, _ = create_server(spec.config, state_dir=state, listen=spec.listen, reuse_port=True,
                                  engine_dir=state / f"engine-bundles-p{spec.index}",
                                  bundle_poll_seconds=BUNDLE_POLL_SECONDS)
        server.start()
    except Exception as exc:  # NboError or not: the supervisor prints one line and exits
        conn.send(("error", str(exc) if str(exc) else type(exc).__name__))
        conn.close()
        sys.exit(1)
    conn.send(("ready", os.getpid()))
    conn.close()
    parent = multiprocessing.parent_process()
    if parent is not None:  # a supervisor killed with -9 must not leave servers behind
        def watch() -> None:
            multiprocessing.connection.wait([parent.sentinel])
            stop.set()

        threading.Thread(target=watch, name="nbo-parent-watch", daemon=True).start()
    while not stop.wait(1.0):
        pass
    log.info("event=stopping grace_s=%s", spec.grace)
    server.stop(spec.grace).wait(spec.grace + 30)
    log.info("event=stopped")


class _Child:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: BaseProcess | None = None
        self.conn: Connection | None = None
        self.started_at = 0.0
        self.backoff = _BACKOFF_FIRST
        self.restart_at: float | None = None
        self.ready = False


def serve(
    config: GatewayConfig,
    *,
    state_dir: str | os.PathLike[str],
    listen: str,
    processes: int | None = None,
    grace: float = 10.0,
    ready: Callable[[int], None] | None = None,
) -> None:
    """Run the gateway's serving processes on ``listen`` until SIGTERM/SIGINT (module docstring).

    ``processes``: how many (default ``config.processes``, else the number of cores).
    ``ready(port)`` is called once every process serves. Raises :class:`ConfigError` (one line)
    when the port is taken or a process cannot start.
    """
    if processes is None:
        processes = config.processes if config.processes is not None else (os.cpu_count() or 1)
    if processes < 1:
        raise ConfigError(f"--processes must be at least 1, got {processes}")
    if not config.trusted_keys:
        log.warning("event=no_trusted_keys the configuration has no [trust] keys: every bundle published to "
                    "this gateway will be refused; add [trust] keys = [\"signing.pub\"]")
    state = Path(state_dir)
    state.mkdir(parents=True, exist_ok=True)
    guard = PortGuard(listen)
    metrics_dir: str | None = None
    metrics_http: Any = None
    context = multiprocessing.get_context("spawn")
    children = [_Child(i) for i in range(processes)]
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not stopping.is_set():
            log.info("event=stopping signal=%s grace_s=%s", signal.Signals(signum).name, grace)
        stopping.set()
        try:
            wake_w.send(b"x")
        except OSError:
            pass

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    child_config = replace(config, metrics_port=None)
    try:
        if config.metrics_port is not None:
            metrics_dir = tempfile.mkdtemp(prefix="nbo-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # children inherit it at spawn
            metrics_http = _start_metrics(config, metrics_dir)

        def start(child: _Child) -> None:
            parent_conn, child_conn = context.Pipe(duplex=False)
            spec = _ChildSpec(child.index, child_config, str(state), guard.listen, grace, log.getEffectiveLevel())
            process = context.Process(target=_child_main, args=(spec, child_conn), name=f"nbo-serve-p{child.index}",
                                      daemon=False)
            process.start()
            child_conn.close()
            child.process, child.conn, child.started_at, child.ready = process, parent_conn, time.monotonic(), False
            child.restart_at = None

        for child in children:
            start(child)
        _await_start(children, stopping)
        if stopping.is_set():
            return
        log.info("event=listening address=%s processes=%d tls=%s mtls=%s", guard.listen, processes, config.tls,
                 config.client_ca is not None)
        if metrics_http is not None:
            log.info("event=metrics address=%s:%d path=/metrics", config.metrics_addr, metrics_http.server_port)
        if ready is not None:
            ready(guard.port)

        while not stopping.is_set():
            now = time.monotonic()
            waits: list[Any] = [wake_r]
            timeout = 5.0
            for child in children:
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        log.info("event=process_restarting index=%d", child.index)
                        start(child)
                    else:
                        timeout = min(timeout, child.restart_at - now)
                        continue
                assert child.process is not None and child.conn is not None
                waits.append(child.process.sentinel)
                if not child.ready:
                    waits.append(child.conn)
            for item in multiprocessing.connection.wait(waits, timeout=max(timeout, 0.0)):
                if item is wake_r:
                    wake_r.recv(64)
            for child in children:
                _check_child(child, metrics_dir)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop_children(children, grace)
        if metrics_http is not None:
            metrics_http.shutdown()
            metrics_http.server_close()
        if metrics_dir is not None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
        guard.close()
        wake_r.close()
        wake_w.close()
    log.info("event=stopped")


def _await_start(children: list[_Child], stopping: threading.Event) -> None:
    """Wait until every child reported ready; ``ConfigError`` with the first failure's reason."""
    deadline = time.monotonic() + _START_TIMEOUT
    pending = {child.index: child for child in children}
    while pending and not stopping.is_set():
        conns: dict[Any, _Child] = {child.conn: child for child in pending.values() if child.conn is not None}
        sentinels: dict[Any, _Child] = {child.process.sentinel: child for child in pending.values()
                                        if child.process is not None}
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConfigError(f"the gateway's serving processes did not start within {_START_TIMEOUT:.0f} s")
        for item in multiprocessing.connection.wait([*conns, *sentinels], timeout=min(remaining, 0.5)):
            child = conns.get(item) or sentinels[item]
            message = _receive(child)
            if message is None:
                code = child.process.exitcode if child.process is not None else None
                raise ConfigError(f"a serving process exited at start (exit code {code}); see the log above")
            kind, detail = message
            if kind == "error":
                raise ConfigError(str(detail))
            child.ready = True
            pending.pop(child.index, None)


def _receive(child: _Child) -> tuple[str, Any] | None:
    """The child's start message, or ``None`` when it exited without one."""
    conn = child.conn
    if conn is None:
        return None
    try:
        if conn.poll(0.2):
            message: tuple[str, Any] = conn.recv()
            return message
    except (EOFError, OSError):
        pass
    return None


def _check_child(child: _Child, metrics_dir: str | None) -> None:
    """Note a restarted child's start, or schedule a dead child's restart (with backoff)."""
    process = child.process
    if process is None or child.restart_at is not None:
        return
    if not child.ready and child.conn is not None and child.conn.poll(0):
        message = _receive(child)
        if message is not None and message[0] == "ready":
            child.ready = True
            log.info("event=process_started index=%d pid=%s", child.index, process.pid)
        elif message is not None:
            log.error("event=process_start_failed index=%d detail=%s", child.index, message[1])
    if process.is_alive():
        return
    process.join()
    if metrics_dir is not None and process.pid is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(process.pid, metrics_dir)
    if time.monotonic() - child.started_at >= _STABLE_SECONDS:
        child.backoff = _BACKOFF_FIRST
    log.warning("event=process_exited index=%d pid=%s exit_code=%s restart_in_s=%.0f", child.index, process.pid,
                process.exitcode, child.backoff)
    child.restart_at = time.monotonic() + child.backoff
    child.backoff = min(child.backoff * 2, _BACKOFF_MAX)
    if child.conn is not None:
        child.conn.close()
    child.process = child.conn = None
    child.ready = False


def _stop_children(children: list[_Child], grace: float) -> None:
    """SIGTERM to every child, wait for them to drain and exit; kill what outlives the grace."""
    alive = [c.process for c in children if c.process is not None and c.process.is_alive()]
    for process in alive:
        process.terminate()
    deadline = time.monotonic() + grace + 30
    for process in alive:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.error("event=process_killed pid=%s reason=did_not_stop_in_time", process.pid)
            process.kill()
            process.join()
    for child in children:
        if child.conn is not None:
            child.conn.close()


def _start_metrics(config: GatewayConfig, directory: str) -> Any:
    """The supervisor's ``/metrics``: every serving process's values, summed per metric."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    assert config.metrics_port is not None
    try:
        server, _ = start_http_server(config.metrics_port, addr=config.metrics_addr, registry=registry)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve metrics on {config.metrics_addr}:{config.metrics_port}: {exc.strerror or exc}"
        ) from exc
    return server
