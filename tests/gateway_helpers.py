"""Helpers for the gateway tests: a configured gateway on 127.0.0.1:0, tokens, stubs, publishing."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from bundle_fixtures import make_bundle, make_keys, small_catalog
from nbo.gateway import GatewayServer, HubStore, create_server, parse_config
from nbo.sdk import Clock
from nbo.v1 import decision_pb2_grpc, publish_pb2, publish_pb2_grpc, sync_pb2_grpc

APP_TOKEN = "app-token-0123456789"
DEVICE_TOKEN = "device-token-pos-1"
DEVICE2_TOKEN = "device-token-pos-2"
PUBLISHER_TOKEN = "publisher-token-abcdef"
ANALYST_TOKEN = "analyst-token-console-42"

TOKENS: dict[str, str] = {"app": APP_TOKEN, "device": DEVICE_TOKEN, "publisher": PUBLISHER_TOKEN}


NBO_CLI: tuple[str, ...] = (sys.executable, "-c", "import sys; from nbo.cli import main; sys.exit(main())")
"""The `nbo` command line, run by the interpreter of the tests."""


def auth(token: str) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying a bearer token."""
    return (("authorization", f"Bearer {token}"),)


APP = auth(APP_TOKEN)
DEVICE = auth(DEVICE_TOKEN)
PUBLISHER = auth(PUBLISHER_TOKEN)


def config_data(
    *, trusted_key: Path, hub_db: str | None = None, extra: Mapping[str, Any] | None = None, hashed_app: bool = False
) -> dict[str, Any]:
    """A gateway configuration mapping (what the TOML file would hold)."""
    app: dict[str, Any] = (
        {"token_sha256": hashlib.sha256(APP_TOKEN.encode()).hexdigest(), "role": "app"}
        if hashed_app
        else {"token": APP_TOKEN, "role": "app"}
    )
    data: dict[str, Any] = {
        "tokens": [
            app,
            {"token": DEVICE_TOKEN, "role": "device", "device_id": "pos-1"},
            {"token": DEVICE2_TOKEN, "role": "device", "device_id": "pos-2"},
            {"token": PUBLISHER_TOKEN, "role": "publisher"},
            # the console's role, by digest: it opens no RPC
            {"token_sha256": hashlib.sha256(ANALYST_TOKEN.encode()).hexdigest(), "role": "analyst"},
        ],
        "trust": {"keys": [str(trusted_key)]},
    }
    if hub_db is not None:
        data["hub"] = {"db": hub_db}
    for key, value in (extra or {}).items():
        data[key] = value
    return data


def toml_text(data: Mapping[str, Any]) -> str:
    """A tiny TOML writer for the configuration mappings above (strings, ints, lists, tables)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(type(v))

    lines: list[str] = []
    for token in data.get("tokens", []):
        lines.append("[[tokens]]")
        lines.extend(f"{k} = {value(v)}" for k, v in token.items())
        lines.append("")
    for table, body in data.items():
        if table == "tokens":
            continue
        lines.append(f"[{table}]")
        lines.extend(f"{k} = {value(v)}" for k, v in body.items())
        lines.append("")
    return "\n".join(lines)


@dataclass
class Gateway:
    """A started in-process gateway and a channel to it."""

    server: GatewayServer
    port: int
    channel: grpc.Channel
    state_dir: Path

    @property
    def decision(self) -> decision_pb2_grpc.DecisionServiceStub:
        return decision_pb2_grpc.DecisionServiceStub(self.channel)

    @property
    def sync(self) -> sync_pb2_grpc.SyncServiceStub:
        return sync_pb2_grpc.SyncServiceStub(self.channel)

    @property
    def publisher(self) -> publish_pb2_grpc.PublishServiceStub:
        return publish_pb2_grpc.PublishServiceStub(self.channel)


@contextmanager
def running_gateway(
    state_dir: Path,
    data: Mapping[str, Any],
    *,
    clock: Clock | None = None,
    hub_schema: str | None = None,
    channel_factory: Any = None,
    bundle_poll_seconds: float = 0,
) -> Iterator[Gateway]:
    """Build, start and finally stop (drained) a gateway from a configuration mapping."""
    config = parse_config(data, base_dir=state_dir)
    server, port = create_server(
        config,
        state_dir=state_dir,
        listen="127.0.0.1:0",
        clock=clock,
        hub_schema=hub_schema,
        bundle_poll_seconds=bundle_poll_seconds,
    )
    server.start()
    channel = (
        channel_factory(f"127.0.0.1:{port}") if channel_factory is not None else grpc.insecure_channel(f"127.0.0.1:{port}")
    )
    try:
        yield Gateway(server=server, port=port, channel=channel, state_dir=state_dir)
    finally:
        channel.close()
        server.stop(grace=2).wait(10)


def publish_chunks(data: bytes, *, chunk: int = 64 * 1024, filename: str = "bundle.zip",
                   sha256: str | None = None, total_size: int | None = None) -> Iterator[publish_pb2.PublishChunk]:
    """The client stream of one upload."""
    meta = publish_pb2.PublishMetadata(
        filename=filename,
        total_size=len(data) if total_size is None else total_size,
        sha256=hashlib.sha256(data).hexdigest() if sha256 is None else sha256,
    )
    first = publish_pb2.PublishChunk(metadata=meta, data=data[:chunk])
    yield first
    for start in range(chunk, len(data), chunk):
        yield publish_pb2.PublishChunk(data=data[start:start + chunk])


def publish(gateway: Gateway, path: Path, *, token: str = PUBLISHER_TOKEN) -> publish_pb2.PublishBundleResponse:
    """Upload a bundle through PublishService."""
    response: publish_pb2.PublishBundleResponse = gateway.publisher.PublishBundle(
        publish_chunks(path.read_bytes()), metadata=auth(token), timeout=60
    )
    return response


def policy_catalog(*, max_shows: int = 2, window_days: float = 7) -> dict[str, Any]:
    """The small test catalog with an "at most N shows a week" contact policy on every offer."""
    catalog = small_catalog()
    catalog["exploration"] = {"epsilon": 0.0}
    catalog["contact_policies"] = [
        {
            "policy_id": "max_shows_week",
            "applies_to": "*",
            "scope": "offer",
            "event": "shown",
            "max_count": max_shows,
            "window_days": window_days,
            "description": f"at most {max_shows} shows a week",
        }
    ]
    return catalog


@dataclass
class BundleKit:
    """Signing keys and bundles built with them."""

    key: Path
    pub: Path
    directory: Path

    def bundle(self, version: int, *, catalog: Mapping[str, Any] | None = None, name: str = "small") -> Path:
        return make_bundle(self.directory / f"v{version}", key=self.key, version=version, name=name,
                           catalog=catalog, created_at="2026-01-01T00:00:00Z")


class DecideCalls:
    """Requests submitted to a ``DecideBatcher`` from threads of their own; each one's decision
    or exception collected by name."""

    def __init__(self, decider: Any) -> None:
        self.decider = decider
        self.results: dict[str, Any] = {}
        self.threads: list[threading.Thread] = []

    def submit(self, name: str, args: Any, **kw: Any) -> None:
        def run() -> None:
            try:
                self.results[name] = self.decider.submit(args, **kw)
            except BaseException as exc:  # KeyboardInterrupt included: a test raises it
                self.results[name] = exc

        thread = threading.Thread(target=run, name=f"call-{name}")
        thread.start()
        self.threads.append(thread)

    def join(self) -> dict[str, Any]:
        for thread in self.threads:
            thread.join(30)
            assert not thread.is_alive(), f"{thread.name} still waits"
        return self.results


def bench_setup(base: Path, *, catalog: str = "realistic") -> tuple[Path, Path]:
    """What the gateway benchmarks serve: (a signed bundle, a gateway configuration trusting its
    key), written under ``base``. ``catalog``: ``"realistic"`` — 200 offers, 10 rules, 2 contact
    policies, one 100-tree gradient-boosting model (``engine_fixtures.synthetic_spec``, the
    catalog ``bench_decide.py`` measures); ``"small"`` — the 5-offer test catalog. No exploration."""
    key, pub = make_keys(base / "keys")
    if catalog == "realistic":
        from engine_fixtures import signed_bundle, synthetic_spec, train_model

        spec = synthetic_spec(200, name="retail200")
        spec["exploration"] = {"epsilon": 0.0}
        bundle = signed_bundle(base / "bundle", spec, key=key, models={"gbt0": train_model(100, 0, 2000)[0]})
    elif catalog == "small":
        small = small_catalog()
        small["exploration"] = {"epsilon": 0.0}
        bundle = make_bundle(base / "bundle", key=key, version=1, catalog=small)
    else:
        raise ValueError(f"unknown bench catalog {catalog!r}")
    config = base / "gateway.toml"
    config.write_text(toml_text(config_data(trusted_key=pub)))
    return bundle, config


def bundle_kit(directory: Path) -> BundleKit:
    key, pub = make_keys(directory / "keys")
    return BundleKit(key=key, pub=pub, directory=directory / "bundles")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_log(state_dir: Path) -> Path:
    """Where :func:`start_serve_process` sends the gateway's output."""
    return state_dir.parent / f"{state_dir.name}.serve.log"


def start_serve_process(
    state_dir: Path, config_path: Path, *, port: int, extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `nbo serve` in its own process (same interpreter as the tests).

    Its output goes to :func:`serve_log` (not a pipe, so a chatty server can never block).
    """
    # One serving process unless the test asks for more: a bundle published to one process
    # reaches the others only through the hub's registry (within a second), not at once.
    processes = [] if "--processes" in extra_args else ["--processes", "1"]
    args = [*NBO_CLI, "serve", "--state", str(state_dir), "--listen", f"127.0.0.1:{port}", "--config",
            str(config_path), *processes, *extra_args]
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    with serve_log(state_dir).open("ab") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def wait_serving(port: int, *, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until the health service of the gateway on ``port`` answers SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"the gateway process exited with {proc.returncode}; see its log")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"gateway on port {port} did not become ready in {timeout}s")


def wait_draining(port: int, *, timeout: float = 30.0) -> None:
    """Wait until the gateway on ``port`` has begun to stop: its health service no longer says
    SERVING (NOT_SERVING, or a new call is refused)."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # a new connection each time
            try:
                status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
            except grpc.RpcError:
                return
            if status != health_pb2.HealthCheckResponse.SERVING:
                return
        time.sleep(0.01)
    raise AssertionError(f"gateway on port {port} did not begin to stop within {timeout}s")


def scrape_metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The supervisor's /metrics as {(sample name, labels): value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def publish_file(port: int, bundle: Path) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        publish_pb2_grpc.PublishServiceStub(channel).PublishBundle(
            publish_chunks(bundle.read_bytes()), metadata=PUBLISHER, timeout=60)


def wait_bundle_version(metrics_port: int, version: int, timeout: float) -> float:
    """Seconds until every serving process serves ``version`` (the gauge's live minimum)."""
    started = time.monotonic()
    while scrape_metrics(metrics_port).get(("nbo_bundle_version", ())) != version:
        assert time.monotonic() - started < timeout, f"not every serving process serves v{version}"
        time.sleep(0.05)  # polling the scrape, not deciding a race
    return time.monotonic() - started


@dataclass
class Replicas:
    """Gateways (``nbo serve`` processes) sharing one hub database, on ``ports``."""

    ports: tuple[int, ...]
    url: str
    state: Path
    kit: Any = None

    def target(self, i: int) -> str:
        return f"127.0.0.1:{self.ports[i % len(self.ports)]}"

    def hub(self) -> HubStore:
        return HubStore.open(self.url, state_dir=self.state / "inspect")


def with_search_path(url: str, schema: str) -> str:
    """A PostgreSQL URL whose connections use ``schema`` (``options=-csearch_path=…``)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    query.append(("options", f"-csearch_path={schema}"))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


@contextmanager
def postgres_replicas(tmp_path: Path, *, base_url: str, schema: str, catalog: Mapping[str, Any], replicas: int = 2,
                      processes: int = 1) -> Iterator[Replicas]:
    """``replicas`` `nbo serve --processes N` gateways on one PostgreSQL hub in its own ``schema``
    (created here, dropped afterwards), each with ``catalog``'s bundle published (`nbo publish`)
    and served by every one of its processes."""
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = with_search_path(base_url, schema)
    kit = bundle_kit(tmp_path / "kit")
    config = tmp_path / "gateway.toml"
    config.write_text(toml_text(config_data(trusted_key=kit.pub, hub_db=url)))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = tuple(free_port() for _ in range(replicas))
        metrics = tuple(free_port() for _ in range(replicas))
        for i, (port, metrics_port) in enumerate(zip(ports, metrics, strict=True)):
            procs.append(start_serve_process(tmp_path / f"replica-{i}", config, port=port, extra_args=[
                "--processes", str(processes), "--metrics-port", str(metrics_port)]))
        for port, proc in zip(ports, procs, strict=True):
            wait_serving(port, proc=proc, timeout=90)
        bundle = kit.bundle(1, catalog=catalog)
        for port in ports:  # each replica serves bundle files from its own state directory
            done = subprocess.run([*NBO_CLI, "publish", str(bundle), "--hub", f"127.0.0.1:{port}", "--token",
                                   PUBLISHER_TOKEN, "--quiet"], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
        for metrics_port in metrics:  # every process of every replica decides with it
            wait_bundle_version(metrics_port, 1, timeout=30)
        yield Replicas(ports=ports, url=url, state=tmp_path, kit=kit)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')



def wait_for(condition: Callable[[], bool], *, timeout: float, what: str, every: float = 0.05) -> None:
    """Poll ``condition`` until it holds; ``AssertionError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
