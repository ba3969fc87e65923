"""Sync end to end over a real gRPC server on 127.0.0.1:0: push, ack, dead letters, balances,
bundle download/resume/install, auth, the SyncService wire errors, and the retry loop."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from bundle_fixtures import make_bundle, make_keys
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from nbo.gateway import GatewayServer, create_server, parse_config
from nbo.sdk import Client, ClientConfig, ManualClock, SyncError
from nbo.sdk._records import list_events, outbox_summary
from nbo.sdk._sync import backoff_delay
from nbo.sdk.core import SyncLoop
from nbo.v1 import sync_pb2, sync_pb2_grpc
from sync_helpers import BACKENDS, running_gateway

TOKENS = [
    {"token": "tok-dev-1", "role": "device", "device_id": "dev-1"},
    {"token": "tok-dev-2", "role": "device", "device_id": "dev-2"},
    {"token": "tok-app", "role": "app"},
]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]) -> dict[int, Path]:
    out = tmp_path_factory.mktemp("bundles")
    return {v: make_bundle(out, key=keys[0], version=v) for v in (1, 2)}


@pytest.fixture(params=BACKENDS)
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GatewayServer]:
    """A gateway on the SQLite hub and on the PostgreSQL hub (issue 6: the same suite on both)."""
    data: dict[str, Any] = {"tokens": TOKENS}
    with running_gateway(request.param, tmp_path / "hub", data) as server:
        yield server


def target(server: GatewayServer) -> str:
    return f"127.0.0.1:{server.port}"


def open_client(path: Path, keys: tuple[Path, Path], device: str = "dev-1", *, batch: int = 500) -> Client:
    return Client.open(path, device_id=device, trusted_keys=[keys[1]], config=ClientConfig(sync_batch_size=batch))


def append(client: Client, type_: str, payload: dict[str, Any]) -> None:
    with client._store.transaction() as tx:
        tx.append_event(type_, payload)


def response_payload(customer: str) -> dict[str, Any]:
    return {"decision_id": str(uuid.uuid4()), "offer_id": "o1", "customer_id": customer, "category": "xsell",
            "channel": "pos", "outcome": "accepted"}


def test_sync_pushes_everything_once_in_batches(tmp_path: Path, gateway: GatewayServer,
                                                keys: tuple[Path, Path]) -> None:
    with open_client(tmp_path / "dev", keys, batch=7) as client:
        for i in range(10):
            client.award_points("c1", 10 + i, idempotency_key=f"a{i}", reason="purchase")
        client.redeem_points("c1", 30, idempotency_key="r1", reason="coffee")
        for _ in range(20):
            append(client, "response", response_payload("c2"))
        assert client.pending_events() == 31
        report = client.sync(target(gateway), token="tok-dev-1")
        assert report.pushed == 31 and report.acked_through == 31 and report.errors == ()
        assert report.balances_updated >= 1
        assert client.pending_events() == 0
        assert gateway.hub.balance("c1") == sum(10 + i for i in range(10)) - 30
        assert client.points_balance("c1") == gateway.hub.balance("c1")
        events = gateway.hub.events(device_id="dev-1")
        assert [e["seq"] for e in events] == list(range(1, 32))
        assert len({e["event_id"] for e in events}) == 31
        # a second sync has nothing to push and changes nothing
        again = client.sync(target(gateway), token="tok-dev-1")
        assert again.pushed == 0
        assert len(gateway.hub.events()) == 31
        # recording continues after sync; the next sync picks up only the new events
        client.award_points("c1", 5, idempotency_key="late", reason="x")
        assert client.sync(target(gateway), token="tok-dev-1").pushed == 1
        assert client.points_balance("c1") == gateway.hub.balance("c1") == 120


def test_rejected_events_go_to_the_dead_letter_and_the_queue_moves(tmp_path: Path, gateway: GatewayServer,
                                                                   keys: tuple[Path, Path]) -> None:
    with open_client(tmp_path / "dev", keys) as client:
        append(client, "response", response_payload("c1"))
        append(client, "payment", {"customer_id": "c1", "amount": 12.5})  # float money, missing fields
        append(client, "response", response_payload("c1"))
        report = client.sync(target(gateway), token="tok-dev-1")
        assert report.acked_through == 3 and report.dead_lettered == 1
        assert client.pending_events() == 0
        [dead] = list_events(client._store, status="dead_lettered")
        assert dead["seq"] == 2 and "payload.payment_id" in dead["reason"]
        summary = outbox_summary(client._store)
        assert summary["acked"] == 2 and summary["dead_lettered"] == 1 and summary["pending"] == 0
        assert [e["status"] for e in gateway.hub.events()] == ["ok", "rejected", "ok"]


def test_nbo_events_shows_pending_acked_and_dead(tmp_path: Path, gateway: GatewayServer, keys: tuple[Path, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from nbo.cli import main

    with open_client(tmp_path / "dev", keys) as client:
        append(client, "response", response_payload("c1"))
        append(client, "payment", {"customer_id": "c1"})
        client.sync(target(gateway), token="tok-dev-1")
        client.award_points("c7", 5, idempotency_key="k", reason="x")
    assert main(["events", "--state", str(tmp_path / "dev"), "--status", "all"]) == 0
    out = capsys.readouterr().out
    assert "outbox of dev-1" in out and "dead_lettered" in out and "payload.payment_id" in out
    assert "pending" in out and "acked" in out
    assert main(["events", "--state", str(tmp_path / "dev"), "--status", "dead", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["pending"] == 1 and lines[0]["acked"] == 1 and lines[0]["dead_lettered"] == 1
    assert [e["seq"] for e in lines[1:]] == [2]
    assert main(["events", "--state", str(tmp_path / "nowhere")]) == 1


def test_balances_from_two_terminals_reconcile(tmp_path: Path, gateway: GatewayServer,
                                               keys: tuple[Path, Path]) -> None:
    with open_client(tmp_path / "a", keys, "dev-1") as a, open_client(tmp_path / "b", keys, "dev-2") as b:
        a.award_points("c1", 100, idempotency_key="a1", reason="signup")
        a.sync(target(gateway), token="tok-dev-1")
        append(b, "response", response_payload("c1"))  # b sees the customer: learns the balance
        b.sync(target(gateway), token="tok-dev-2")
        assert b.points_balance("c1") == 100
        # both offline: each redeems what it believes is there
        a.redeem_points("c1", 80, idempotency_key="a2", reason="tv")
        b.redeem_points("c1", 60, idempotency_key="b2", reason="radio")
        a.sync(target(gateway), token="tok-dev-1")
        b.sync(target(gateway), token="tok-dev-2")
        assert gateway.hub.balance("c1") == 100 - 80 - 60
        assert [f["device_id"] for f in gateway.hub.flagged()] == ["dev-2"]
        append(a, "response", response_payload("c1"))
        a.sync(target(gateway), token="tok-dev-1")
        assert a.points_balance("c1") == b.points_balance("c1") == gateway.hub.balance("c1") == -40


def test_auth_errors(tmp_path: Path, gateway: GatewayServer, keys: tuple[Path, Path]) -> None:
    with open_client(tmp_path / "dev", keys) as client:
        append(client, "response", response_payload("c1"))
        for token, code in [("nope", "UNAUTHENTICATED"), ("tok-dev-2", "PERMISSION_DENIED"),
                            ("tok-app", "PERMISSION_DENIED")]:
            with pytest.raises(SyncError, match=code):
                client.sync(target(gateway), token=token)
        assert client.pending_events() == 1
        assert gateway.hub.events() == []


def test_unreachable_hub_raises_sync_error_and_keeps_events(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    with open_client(tmp_path / "dev", keys) as client:
        client.award_points("c1", 10, idempotency_key="a", reason="x")
        with pytest.raises(SyncError, match="UNAVAILABLE"):
            client.sync("127.0.0.1:1", token="tok-dev-1", timeout=2)
        assert client.pending_events() == 1
        assert client.points_balance("c1") == 10


def test_bundle_download_installs_through_verified_path(tmp_path: Path, gateway: GatewayServer,
                                                         keys: tuple[Path, Path], bundles: dict[int, Path]) -> None:
    gateway.hub.register_bundle(bundles[1], name="small", version=1)
    with open_client(tmp_path / "dev", keys) as client:
        report = client.sync(target(gateway), token="tok-dev-1")
        assert report.bundle_installed is not None and report.bundle_installed.version == 1
        assert client.bundle is not None and client.bundle.version == 1
        assert not list((tmp_path / "dev" / "downloads").iterdir())
        assert client.sync(target(gateway), token="tok-dev-1").bundle_installed is None
        gateway.hub.register_bundle(bundles[2], name="small", version=2)
        assert client.sync(target(gateway), token="tok-dev-1").bundle_installed is not None
        assert client.bundle is not None and client.bundle.version == 2


def test_cut_download_resumes_from_the_part_file(tmp_path: Path, gateway: GatewayServer,
                                                 keys: tuple[Path, Path], bundles: dict[int, Path]) -> None:
    data = bundles[1].read_bytes()
    gateway.hub.register_bundle(data, name="small", version=1)
    downloads = tmp_path / "dev" / "downloads"
    downloads.mkdir(parents=True)
    part = downloads / "small-1.part"
    part.write_bytes(data[: len(data) // 3])  # what arrived before the link was cut
    with open_client(tmp_path / "dev", keys) as client:
        report = client.sync(target(gateway), token="tok-dev-1")
        assert report.errors == () and report.bundle_installed is not None
        assert not part.exists()


def test_corrupt_part_file_is_discarded_and_fetched_again(tmp_path: Path, gateway: GatewayServer,
                                                          keys: tuple[Path, Path], bundles: dict[int, Path]) -> None:
    data = bundles[1].read_bytes()
    gateway.hub.register_bundle(data, name="small", version=1)
    downloads = tmp_path / "dev" / "downloads"
    downloads.mkdir(parents=True)
    (downloads / "small-1.part").write_bytes(b"\0" * 100)
    with open_client(tmp_path / "dev", keys) as client:
        report = client.sync(target(gateway), token="tok-dev-1")
        assert report.bundle_installed is None and "SHA-256 mismatch" in report.errors[0]
        assert client.bundle is None
        report = client.sync(target(gateway), token="tok-dev-1")
        assert report.bundle_installed is not None and report.errors == ()


def test_untrusted_bundle_is_refused_and_reported(tmp_path: Path, gateway: GatewayServer,
                                                   keys: tuple[Path, Path], bundles: dict[int, Path]) -> None:
    gateway.hub.register_bundle(bundles[1], name="small", version=1)
    other_pub = make_keys(tmp_path / "other")[1]
    with Client.open(tmp_path / "dev", device_id="dev-1", trusted_keys=[other_pub]) as client:
        report = client.sync(target(gateway), token="tok-dev-1")
        assert report.bundle_installed is None and report.errors and report.errors[0].startswith("bundle:")
        assert client.bundle is None
        kept = tmp_path / "dev" / "downloads" / "small-1.zip"
        first = kept.stat().st_mtime_ns
        again = client.sync(target(gateway), token="tok-dev-1")  # refused again, without fetching again
        assert again.errors and kept.stat().st_mtime_ns == first


def test_concurrent_syncs_of_one_client_push_each_event_once(tmp_path: Path, gateway: GatewayServer,
                                                             keys: tuple[Path, Path]) -> None:
    with open_client(tmp_path / "dev", keys, batch=10) as client:
        for i in range(200):
            client.award_points(f"c{i % 7}", 1, idempotency_key=f"k{i}", reason="x")
        reports: list[Any] = []
        threads = [threading.Thread(target=lambda: reports.append(client.sync(target(gateway), token="tok-dev-1")))
                   for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(r.pushed for r in reports) == 200  # one sync in flight: no batch sent twice
        assert len(gateway.hub.events()) == 200
        assert sum(gateway.hub.balances([f"c{i}" for i in range(7)]).values()) == 200


# -- the wire, directly ----------------------------------------------------------------------


def stub(server: GatewayServer) -> sync_pb2_grpc.SyncServiceStub:
    return sync_pb2_grpc.SyncServiceStub(grpc.insecure_channel(target(server)))


AUTH = (("authorization", "Bearer tok-dev-1"),)


def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_download_rpc_chunks_offsets_and_errors(gateway: GatewayServer) -> None:
    data = bytes(range(256)) * 4000  # 1,024,000 bytes: four 256 KiB chunks
    gateway.hub.register_bundle(data, name="b", version=3)
    s = stub(gateway)
    chunks = list(s.DownloadBundle(sync_pb2.DownloadBundleRequest(name="b", version=3, offset=0), metadata=AUTH))
    assert len(chunks) == 4 and max(len(c.data) for c in chunks) == 256 * 1024
    assert b"".join(c.data for c in chunks) == data
    assert [c.offset for c in chunks] == [0, 262144, 524288, 786432]
    assert all(c.total_size == len(data) and c.sha256 == hashlib.sha256(data).hexdigest() for c in chunks)
    tail = list(s.DownloadBundle(sync_pb2.DownloadBundleRequest(name="b", version=3, offset=1_000_000), metadata=AUTH))
    assert b"".join(c.data for c in tail) == data[1_000_000:]
    end = list(s.DownloadBundle(sync_pb2.DownloadBundleRequest(name="b", version=3, offset=len(data)), metadata=AUTH))
    assert [c.data for c in end] == [b""]
    for request, code in [
        (sync_pb2.DownloadBundleRequest(name="b", version=3, offset=len(data) + 1), grpc.StatusCode.OUT_OF_RANGE),
        (sync_pb2.DownloadBundleRequest(name="b", version=9), grpc.StatusCode.NOT_FOUND),
        (sync_pb2.DownloadBundleRequest(name="", version=3), grpc.StatusCode.INVALID_ARGUMENT),
        (sync_pb2.DownloadBundleRequest(name="b", version=3, offset=-1), grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        assert code_of(lambda r=request: list(s.DownloadBundle(r, metadata=AUTH))) == code
    assert code_of(lambda: list(s.DownloadBundle(sync_pb2.DownloadBundleRequest(name="b", version=3)))) == \
        grpc.StatusCode.UNAUTHENTICATED


def test_get_latest_bundle_rpc(gateway: GatewayServer) -> None:
    s = stub(gateway)
    empty = s.GetLatestBundle(sync_pb2.GetLatestBundleRequest(), metadata=AUTH)
    assert not empty.available and not empty.HasField("bundle")
    gateway.hub.register_bundle(b"one", name="b", version=4)
    answer = s.GetLatestBundle(sync_pb2.GetLatestBundleRequest(current_version=2), metadata=AUTH)
    assert answer.available and answer.bundle.version == 4 and answer.bundle.size == 3
    assert not s.GetLatestBundle(sync_pb2.GetLatestBundleRequest(current_version=4), metadata=AUTH).available
    assert not s.GetLatestBundle(sync_pb2.GetLatestBundleRequest(name="other"), metadata=AUTH).HasField("bundle")


def test_push_rpc_errors(gateway: GatewayServer) -> None:
    s = stub(gateway)

    def event(seq: int, device: str = "dev-1", event_id: str | None = None) -> sync_pb2.Event:
        return sync_pb2.Event(event_id=event_id or str(uuid.uuid4()), device_id=device, seq=seq, type="response",
                              created_at=1.0, payload_json=json.dumps(response_payload("c")))

    push = s.PushEvents
    assert code_of(lambda: push(sync_pb2.PushEventsRequest(device_id="", events=[event(1)]), metadata=AUTH)) == \
        grpc.StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: push(sync_pb2.PushEventsRequest(device_id="dev-1", events=[event(1, "dev-2")]),
                                metadata=AUTH)) == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as info:
        push(sync_pb2.PushEventsRequest(device_id="dev-1", events=[event(0)]), metadata=AUTH)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "events[0].seq" in info.value.details()
    first = event(1)
    assert push(sync_pb2.PushEventsRequest(device_id="dev-1", events=[first]), metadata=AUTH).acked_through == 1
    assert push(sync_pb2.PushEventsRequest(device_id="dev-1", events=[first]), metadata=AUTH).acked_through == 1
    assert code_of(lambda: push(sync_pb2.PushEventsRequest(device_id="dev-1", events=[event(1)]), metadata=AUTH)) == \
        grpc.StatusCode.ALREADY_EXISTS
    assert len(gateway.hub.events()) == 1


def test_push_answer_carries_balances_latest_bundle_and_rejections(gateway: GatewayServer) -> None:
    """docs/sync.md on the wire: acked_through, the authoritative balances of the batch's customers,
    the latest bundle, and the events refused as invalid (with their reason)."""
    s = stub(gateway)

    def event(seq: int, type_: str, payload: dict[str, Any]) -> sync_pb2.Event:
        return sync_pb2.Event(event_id=str(uuid.uuid4()), device_id="dev-1", seq=seq, type=type_, created_at=1.0,
                              payload_json=json.dumps(payload))

    award = {"entry_id": str(uuid.uuid4()), "customer_id": "w1", "kind": "award", "points": 40, "reason": "r",
             "idempotency_key": "k1", "created_at": 1.0, "expires_at": None, "reverses": None}
    first = s.PushEvents(sync_pb2.PushEventsRequest(device_id="dev-1", events=[
        event(1, "points", award), event(2, "response", response_payload("w2"))]), metadata=AUTH)
    assert first.acked_through == 2 and not first.HasField("latest_bundle") and list(first.rejected) == []
    assert {b.customer_id: b.balance for b in first.balances} == {"w1": 40, "w2": 0}
    gateway.hub.register_bundle(b"bundle bytes", name="small", version=3)
    redeem = {**award, "entry_id": str(uuid.uuid4()), "kind": "redeem", "points": -55, "idempotency_key": "k2"}
    second = s.PushEvents(sync_pb2.PushEventsRequest(device_id="dev-1", events=[
        event(3, "points", redeem), event(4, "gossip", {"customer_id": "w1"})]), metadata=AUTH)
    assert second.acked_through == 4
    assert {b.customer_id: b.balance for b in second.balances}["w1"] == -15  # over-redemption accepted
    assert (second.latest_bundle.name, second.latest_bundle.version, second.latest_bundle.size) == ("small", 3, 12)
    assert [r.seq for r in second.rejected] == [4] and second.rejected[0].reason


def test_health_and_reflection_are_open(gateway: GatewayServer) -> None:
    channel = grpc.insecure_channel(target(gateway))
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="nbo.v1.SyncService")).status == \
        health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    [answer] = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answer.list_services_response.service}
    assert "nbo.v1.SyncService" in names and "grpc.health.v1.Health" in names


# -- retrying forever ------------------------------------------------------------------------


def test_backoff_is_full_jitter_doubling_to_five_minutes() -> None:
    assert [backoff_delay(n, rng=lambda: 1.0) for n in range(11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert backoff_delay(3, rng=lambda: 0.25) == 2.0
    assert backoff_delay(10_000, rng=lambda: 1.0) == 300


def test_sync_loop_never_gives_up_and_catches_up(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    """Hub unreachable for a (simulated) day: recording keeps working; the loop backs off to
    5 minutes, never stops, and catches up once the hub is back."""
    clock = ManualClock()
    hub_state = tmp_path / "hub"
    box: dict[str, GatewayServer] = {}
    delays: list[float] = []

    with Client.open(tmp_path / "dev", device_id="dev-1", trusted_keys=[keys[1]], clock=clock) as client:
        # reserve a port, then close it: nothing listens there while the hub is "down"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]

        def fake_sleep(seconds: float) -> None:
            delays.append(seconds)
            clock.advance(seconds)
            client.award_points("c1", 1, idempotency_key=f"k{len(delays)}", reason="while offline")
            if clock.now() - 1_700_000_000 > 86_400 and "hub" not in box:
                box["hub"], _ = create_server(parse_config({"tokens": TOKENS}), state_dir=hub_state,
                                              listen=f"127.0.0.1:{port}")
                box["hub"].start()

        loop = SyncLoop(client, f"127.0.0.1:{port}", "tok-dev-1", sleep=fake_sleep, rng=lambda: 1.0,
                        options={"timeout": 2.0}, interval=60.0)
        reports: list[Any] = []
        loop.on_report = reports.append
        loop.run_forever(max_attempts=320)
        assert "hub" in box and reports, "the hub came back and the loop reached it"
        assert max(delays) == 300.0 and delays[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
        assert 60.0 in delays  # after catching up it waits the normal interval
        loop.run_once()
        assert client.pending_events() == 0
        assert box["hub"].hub.balance("c1") == client.points_balance("c1") == len(delays)
        box["hub"].stop(0).wait(5)


def test_recording_never_loads_grpc_only_sync_does(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from nbo.sdk import Client, SyncError\n"
        f"c = Client.open({str(tmp_path / 'dev')!r}, device_id='dev-1', trusted_keys=[])\n"
        "c.award_points('c1', 5, idempotency_key='k', reason='x'); c.pending_events()\n"
        "before = sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'google'))\n"
        "try:\n    c.sync('127.0.0.1:1', token='t', timeout=2)\nexcept SyncError:\n    pass\n"
        "print(before, 'grpc' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] True"


def test_batches_are_cut_by_size_as_well_as_count(tmp_path: Path, gateway: GatewayServer,
                                                  keys: tuple[Path, Path]) -> None:
    from nbo.sdk._sync import _pending_batch

    with open_client(tmp_path / "dev", keys) as client:
        for _ in range(50):  # ~200 KB each: 50 of them would be one 10 MB request
            payload = response_payload("c1")
            payload["note"] = "x" * 200_000
            append(client, "response", payload)
        first = _pending_batch(client, 500)
        assert 35 <= len(first) < 50
        report = client.sync(target(gateway), token="tok-dev-1")
        assert report.pushed == 50 and client.pending_events() == 0


def test_nbo_sync_forever_keeps_syncing_until_interrupted(tmp_path: Path, gateway: GatewayServer,
                                                           keys: tuple[Path, Path]) -> None:
    import signal
    import subprocess
    import sys
    import time

    with open_client(tmp_path / "dev", keys) as client:
        client.award_points("c1", 3, idempotency_key="k1", reason="x")
    cmd = [sys.executable, "-c", "import sys; from nbo.cli import main; sys.exit(main())", "sync",
           "--state", str(tmp_path / "dev"), "--hub", target(gateway), "--token", "tok-dev-1", "--forever",
           "--interval", "0.2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()

    def pushed_nonzero() -> int:
        return sum(1 for line in list(lines) if line.startswith("pushed ") and not line.startswith("pushed 0 "))

    try:
        deadline = time.monotonic() + 30
        while pushed_nonzero() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gateway.hub.balance("c1") == 3
        with open_client(tmp_path / "dev", keys) as client:  # recording goes on while it loops
            client.award_points("c1", 4, idempotency_key="k2", reason="x")
        # Wait for the loop's own report of the second push: the hub can hold the event before
        # the device has recorded the answer and printed it (a SIGINT then would cut that sync).
        while pushed_nonzero() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gateway.hub.balance("c1") == 7
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(10)
        err = proc.stderr.read() if proc.stderr is not None else ""
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert proc.returncode == 0, err
    assert pushed_nonzero() == 2, lines


def test_sync_compacts_acked_decision_logs_past_the_budget(tmp_path: Path, gateway: GatewayServer,
                                                           keys: tuple[Path, Path]) -> None:
    config = ClientConfig(sync_batch_size=50, decision_log_budget_bytes=2_000)
    with Client.open(tmp_path / "dev", device_id="dev-1", trusted_keys=[keys[1]], config=config) as client:
        for i in range(40):
            append(client, "decision", {"decision_id": str(uuid.uuid4()), "customer_id": "c1", "channel": "pos",
                                        "bundle_name": "b", "bundle_version": 1, "strategy": "",
                                        "offers": [{"offer_id": f"o{i}", "score": 1.0, "pad": "x" * 100}]})
        client.award_points("c1", 10, idempotency_key="k", reason="purchase")
        report = client.sync(target(gateway), token="tok-dev-1")
        assert report.pushed == 41 and report.errors == ()
        summary = outbox_summary(client._store)
        assert summary["compacted_decisions"] > 0 and summary["payload_bytes"] <= 2_000
        # the hub holds every decision; the points event is never compacted on the device
        assert len(gateway.hub.events(device_id="dev-1")) == 41
        assert [e["type"] for e in list_events(client._store, status="acked", limit=100)].count("points") == 1
