"""Attack class: the gateway's world degrades under it — the hub's disk fills up, the bundle
it serves expires.

A full disk used to leave ``Health`` reporting ``SERVING`` while every write failed. Now a
probe commits a 64 KiB write every ``health_probe_seconds``; while that fails the services
whose calls write turn ``NOT_SERVING`` (the overall status and reads stay up), and they turn
back once writes succeed again.

How the full disk is made, reproducibly and without root: ``nbo serve`` runs with a file-size
limit (``RLIMIT_FSIZE``, soft limit only) a little above the hub's size, so the kernel refuses
to grow any of its files — what a full disk does to SQLite (``SQLITE_FULL`` / a write error) —
and the test "frees the disk" by lifting the limit of the running processes (``prlimit``).

A bundle past its ``expires_at`` after install keeps serving (documented: refusing would leave
every slot empty) and is reported: gauge ``nbo_bundle_expired`` and one ``event=bundle_expired``.
"""

from __future__ import annotations

import logging
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from bundle_fixtures import make_bundle
from gateway_helpers import (
    APP,
    NBO_CLI,
    bundle_kit,
    config_data,
    free_port,
    publish,
    running_gateway,
    toml_text,
    wait_for,
    wait_serving,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nbo.sdk import ManualClock
from nbo.v1 import decision_pb2, decision_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (the supervisor and its serving processes)."""
    found = [pid]
    for tid in Path(f"/proc/{pid}/task").iterdir():
        children = (tid / "children").read_text().split()
        for child in children:
            found.extend(descendants(int(child)))
    return found


def status(port: int, service: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                        timeout=5).status


@pytest.fixture()
def full_disk_gateway(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """`nbo serve` whose files cannot grow past a little more than the hub already holds."""
    kit = bundle_kit(tmp_path / "kit")
    data = config_data(trusted_key=kit.pub)
    data["server"] = {"health_probe_seconds": 0.2}
    config = tmp_path / "gateway.toml"
    config.write_text(toml_text(data))
    state = tmp_path / "state"
    # First, in-process and without a limit: create the hub and publish the bundle.
    with running_gateway(state, data) as gw:
        publish(gw, kit.bundle(1))
    largest = max(p.stat().st_size for p in state.rglob("*") if p.is_file())
    limit = largest + 1024 * 1024

    def cap_file_size() -> None:  # in the child, before exec: the soft limit only, so it can be lifted
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    log = tmp_path / "limited.log"
    for attempt in range(3):  # a free port can be taken by another process before the server binds it
        port = free_port()
        args = [*NBO_CLI, "serve", "--state", str(state), "--listen", f"127.0.0.1:{port}", "--config", str(config),
                "--processes", "1"]
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, preexec_fn=cap_file_size)  # noqa: PLW1509
        try:
            wait_serving(port, proc=proc, timeout=60)
            break
        except AssertionError:
            proc.kill()
            proc.wait(30)
            if attempt == 2 or "cannot listen" not in log.read_text(errors="replace"):
                raise
    try:
        yield proc, port, log
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


def test_health_reports_writes_not_serving_while_the_disk_is_full(
    full_disk_gateway: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, port, log = full_disk_gateway
    assert status(port, "nbo.v1.DecisionService") == SERVING
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = decision_pb2_grpc.DecisionServiceStub(channel)
        # Fill the hub with decisions until a write fails.
        failed = None
        for n in range(20_000):
            try:
                stub.Decide(decision_pb2.DecideRequest(customer_id=f"fill-{n}", channel="app"), metadata=APP,
                            timeout=10)
            except grpc.RpcError as exc:
                failed = exc
                break
        assert failed is not None, "the hub never filled up"
        assert failed.code() == grpc.StatusCode.UNAVAILABLE
        wait_for(lambda: status(port, "nbo.v1.DecisionService") == NOT_SERVING, timeout=30,
                 what="DecisionService to report NOT_SERVING")
        assert status(port, "nbo.v1.SyncService") == NOT_SERVING
        assert status(port, "nbo.v1.PublishService") == NOT_SERVING
        assert status(port, "") == SERVING  # the process answers, reads too:
        assert stub.GetBalance(decision_pb2.GetBalanceRequest(customer_id="fill-0"), metadata=APP,
                               timeout=10).balance == 0
        # Free the disk: lift the file-size limit of the running processes.
        for pid in descendants(proc.pid):
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        wait_for(lambda: status(port, "nbo.v1.DecisionService") == SERVING, timeout=30,
                 what="DecisionService to report SERVING again")
        assert stub.Decide(decision_pb2.DecideRequest(customer_id="after", channel="app"), metadata=APP,
                           timeout=10).offers
    text = log.read_text(errors="replace")
    assert "event=hub_writes_failing" in text and "event=hub_writes_restored" in text


def test_an_expired_bundle_keeps_serving_and_is_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="nbo.gateway")
    kit = bundle_kit(tmp_path / "kit")
    bundle = make_bundle(tmp_path / "b", key=kit.key, version=1, expires_at="2026-06-01T00:00:00Z")
    clock = ManualClock(1_767_225_600.0)  # 2026-01-01: valid at install
    data = config_data(trusted_key=kit.pub)
    data["server"] = {"health_probe_seconds": 0.1}
    with running_gateway(tmp_path / "state", data, clock=clock) as gw:
        publish(gw, bundle)
        metrics = gw.server.metrics
        assert metrics is not None

        def expired() -> float | None:
            return metrics.registry.get_sample_value("nbo_bundle_expired")

        wait_for(lambda: expired() == 0, timeout=10, what="the expiry gauge")
        clock.advance(200 * 86400)  # 2026-07-20: past expires_at
        wait_for(lambda: expired() == 1, timeout=10, what="the expiry gauge to turn 1")
        answer = gw.decision.Decide(decision_pb2.DecideRequest(customer_id="c1", channel="app"), metadata=APP,
                                    timeout=10)
        assert answer.bundle_version == 1 and answer.offers  # enforced only at install: still serving
    warnings = [r.getMessage() for r in caplog.records if "event=bundle_expired" in r.getMessage()]
    assert len(warnings) == 1 and "version=1" in warnings[0]
