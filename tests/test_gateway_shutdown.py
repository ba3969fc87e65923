"""SIGTERM drains a real `nbo serve` process: calls in flight finish, new calls are refused,
the process exits cleanly within the grace period, and nothing half-done is left behind.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
from gateway_helpers import (
    APP,
    PUBLISHER,
    bundle_kit,
    config_data,
    free_port,
    publish_chunks,
    serve_log,
    start_serve_process,
    toml_text,
    wait_draining,
    wait_serving,
)
from nbo.gateway import HubStore
from nbo.v1 import decision_pb2, decision_pb2_grpc, publish_pb2, publish_pb2_grpc


def test_sigterm_drains_in_flight_calls(tmp_path: Path) -> None:
    kit = bundle_kit(tmp_path / "kit")
    v1, v2 = kit.bundle(1), kit.bundle(2)
    config = tmp_path / "gateway.toml"
    config.write_text(toml_text(config_data(trusted_key=kit.pub)))
    port = free_port()
    proc = start_serve_process(tmp_path / "state", config, port=port)
    try:
        wait_serving(port, proc=proc)
        target = f"127.0.0.1:{port}"
        with grpc.insecure_channel(target) as channel:
            publish_pb2_grpc.PublishServiceStub(channel).PublishBundle(
                publish_chunks(v1.read_bytes()), metadata=PUBLISHER, timeout=30)

        # A slow upload is in flight when SIGTERM arrives; it must complete.
        sent_half = threading.Event()
        draining = threading.Event()
        data = v2.read_bytes()

        def slow_chunks() -> Iterator[publish_pb2.PublishChunk]:
            chunks = list(publish_chunks(data, chunk=max(1, len(data) // 8)))
            for i, chunk in enumerate(chunks):
                if i == len(chunks) // 2:
                    sent_half.set()
                    draining.wait(30)  # the rest of the upload is sent while the server drains
                yield chunk

        upload: dict[str, object] = {}

        def do_upload() -> None:
            with grpc.insecure_channel(target) as ch:
                try:
                    upload["response"] = publish_pb2_grpc.PublishServiceStub(ch).PublishBundle(
                        slow_chunks(), metadata=PUBLISHER, timeout=30)
                except grpc.RpcError as exc:
                    upload["error"] = exc.code()

        # Decide load from several clients throughout.
        stop = threading.Event()
        codes: list[grpc.StatusCode] = []
        answered = threading.Condition()

        def load(i: int) -> None:
            with grpc.insecure_channel(target) as ch:
                stub = decision_pb2_grpc.DecisionServiceStub(ch)
                while not stop.is_set():
                    try:
                        stub.Decide(decision_pb2.DecideRequest(customer_id=f"s{i}", channel="pos"), metadata=APP,
                                    timeout=5)
                        code = grpc.StatusCode.OK
                    except grpc.RpcError as exc:
                        code = exc.code()
                    with answered:
                        codes.append(code)
                        answered.notify_all()
                    if code is not grpc.StatusCode.OK:
                        return  # the server is going away

        uploader = threading.Thread(target=do_upload)
        loaders = [threading.Thread(target=load, args=(i,)) for i in range(4)]
        uploader.start()
        for t in loaders:
            t.start()
        assert sent_half.wait(20)
        with answered:
            assert answered.wait_for(lambda: len(codes) >= 20, timeout=20)  # decisions are flowing
        assert not upload  # the upload is still in flight
        proc.send_signal(signal.SIGTERM)
        wait_draining(port)  # new calls are refused now; the upload's second half follows
        draining.set()
        uploader.join(30)
        stop.set()
        for t in loaders:
            t.join(30)
        assert proc.wait(timeout=30) == 0, serve_log(tmp_path / "state").read_text()[-2000:]

        response = upload.get("response")
        assert response is not None, upload
        assert response.accepted and response.version == 2  # type: ignore[attr-defined]
        assert codes and codes[0] is grpc.StatusCode.OK
        # Calls either completed or were refused because the server was stopping — nothing else.
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}

        # New calls are refused once it is gone.
        with grpc.insecure_channel(target) as ch:
            try:
                decision_pb2_grpc.DecisionServiceStub(ch).Decide(
                    decision_pb2.DecideRequest(customer_id="late", channel="pos"), metadata=APP, timeout=2)
                raise AssertionError("a stopped gateway answered")
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # The drained upload is fully registered and every decision made is in the event log.
    hub = HubStore.open(None, state_dir=tmp_path / "state")
    try:
        assert hub.latest_bundle("small").version == 2  # type: ignore[union-attr]
        decided = sum(1 for c in codes if c is grpc.StatusCode.OK)
        logged = [e for e in hub.events(device_id="app") if e["type"] == "decision"]
        assert len(logged) >= decided
        assert [e["seq"] for e in hub.events(device_id="app")] == list(range(1, len(hub.events(device_id="app")) + 1))
    finally:
        hub.close()
    assert not list((tmp_path / "state" / "publish-spool").iterdir())


def test_nbo_serve_metrics_port(tmp_path: Path) -> None:
    import urllib.request

    kit = bundle_kit(tmp_path / "kit")
    config = tmp_path / "gateway.toml"
    config.write_text(toml_text(config_data(trusted_key=kit.pub)))
    port, metrics_port = free_port(), free_port()
    proc = start_serve_process(tmp_path / "state", config, port=port, extra_args=("--metrics-port", str(metrics_port)))
    try:
        wait_serving(port, proc=proc)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                decision_pb2_grpc.DecisionServiceStub(channel).Decide(
                    decision_pb2.DecideRequest(customer_id="m", channel="pos"), metadata=APP, timeout=5)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION  # no bundle yet
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        assert 'nbo_rpc_errors_total{code="FAILED_PRECONDITION",method="DecisionService/Decide"} 1.0' in text
        assert "nbo_bundle_version 0.0" in text
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
