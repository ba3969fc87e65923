"""`nbo serve --processes N`: N serving processes on one port under a supervisor that owns it."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from gateway_helpers import (
    APP,
    bench_setup,
    bundle_kit,
    config_data,
    free_port,
    publish_chunks,
    publish_file,
    scrape_metrics,
    serve_log,
    start_serve_process,
    toml_text,
    wait_bundle_version,
    wait_serving,
)
from gateway_helpers import PUBLISHER as PUBLISHER_AUTH
from nbo.gateway._supervisor import BUNDLE_POLL_SECONDS
from nbo.v1 import decision_pb2, decision_pb2_grpc, publish_pb2_grpc


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


def test_processes_share_the_port_serve_one_bundle_and_a_second_serve_is_refused(tmp_path: Path) -> None:
    _, config = bench_setup(tmp_path / "setup", catalog="small")
    bundle = tmp_path / "setup" / "bundle" / "small-v1.zip"
    port = free_port()
    state = tmp_path / "state"
    proc = start_serve_process(state, config, port=port, extra_args=["--processes", "2"])
    try:
        wait_serving(port, proc=proc, timeout=60)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            publish_pb2_grpc.PublishServiceStub(channel).PublishBundle(
                publish_chunks(bundle.read_bytes()), metadata=PUBLISHER_AUTH, timeout=60)
        # New connections land on either process; both must come to decide with the bundle
        # (the other one through the hub's registry), and no call may fail on the way.
        served = 0
        for _ in range(400):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    decision_pb2_grpc.DecisionServiceStub(channel).Decide(
                        decision_pb2.DecideRequest(customer_id="C1", channel="pos"), metadata=APP, timeout=10)
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION  # not yet followed
                    served = 0
                    continue
            served += 1
            if served == 20:
                break
        assert served == 20, "not every serving process came to serve the published bundle"

        second = start_serve_process(tmp_path / "state2", config, port=port, extra_args=["--processes", "1"])
        assert second.wait(timeout=60) == 1
        text = serve_log(tmp_path / "state2").read_text()
        assert f"port {port} is already served by another nbo serve" in text
        assert "Traceback" not in text
    finally:
        assert _stop(proc) == 0
    log = serve_log(state).read_text()
    assert "event=stopped" in log and "[p0] event=stopped" in log and "[p1] event=stopped" in log


def test_a_serving_process_that_dies_is_restarted(tmp_path: Path) -> None:
    _, config = bench_setup(tmp_path / "setup", catalog="small")
    port = free_port()
    state = tmp_path / "state"
    proc = start_serve_process(state, config, port=port, extra_args=["--processes", "2"])
    try:
        wait_serving(port, proc=proc, timeout=60)
        children = subprocess.run(["pgrep", "-P", str(proc.pid), "-f", "multiprocessing.spawn"],
                                  capture_output=True, text=True, check=True).stdout.split()
        assert len(children) == 2
        subprocess.run(["kill", "-9", children[0]], check=True)
        log = serve_log(state)
        for _ in range(600):
            if "event=process_started index=" in log.read_text():
                break
            assert proc.poll() is None, "the supervisor exited"
            time.sleep(0.1)  # polling the log, not deciding a race
        text = log.read_text()
        assert "event=process_exited" in text and "restart_in_s=1" in text
        assert "event=process_started" in text
        wait_serving(port, proc=proc, timeout=30)
    finally:
        assert _stop(proc) == 0


def test_a_port_taken_by_another_server_fails_with_one_line(tmp_path: Path) -> None:
    import socket

    _, config = bench_setup(tmp_path / "setup", catalog="small")
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = start_serve_process(tmp_path / "state", config, port=port, extra_args=["--processes", "2"])
        assert proc.wait(timeout=60) == 1
    text = serve_log(tmp_path / "state").read_text()
    assert f"port {port}" in text and "Traceback" not in text
    assert len([line for line in text.splitlines() if line.startswith("error:")]) == 1


def test_a_config_with_the_removed_decision_worker_switch_is_refused_with_one_line(tmp_path: Path) -> None:
    _, config = bench_setup(tmp_path / "setup", catalog="small")
    config.write_text(config.read_text() + "\n[decisions]\nworker_process = true\n")
    proc = start_serve_process(tmp_path / "state", config, port=free_port())
    assert proc.wait(timeout=60) != 0
    text = serve_log(tmp_path / "state").read_text()
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in text
    assert "worker_process was removed" in errors[0] and "[server] processes" in errors[0]


def test_a_bundle_switch_across_processes_under_load_fails_no_call_and_metrics_count_one_gateway(
    tmp_path: Path,
) -> None:
    kit = bundle_kit(tmp_path / "kit")
    config = tmp_path / "gateway.toml"
    config.write_text(toml_text(config_data(trusted_key=kit.pub)))
    port, metrics_port = free_port(), free_port()
    proc = start_serve_process(tmp_path / "state", config, port=port,
                               extra_args=["--processes", "2", "--metrics-port", str(metrics_port)])
    stop = threading.Event()
    calls: list[tuple[float, int]] = []  # (start, bundle version answered) of every call that succeeded
    failures: list[str] = []

    def client(n: int) -> None:
        k = 0
        while not stop.is_set():
            # a new connection every few calls: the kernel spreads them over both processes
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = decision_pb2_grpc.DecisionServiceStub(channel)
                for _ in range(5):
                    k += 1
                    started = time.monotonic()
                    try:
                        answer = stub.Decide(decision_pb2.DecideRequest(customer_id=f"L{n}-{k}", channel="pos"),
                                             metadata=APP, timeout=30)
                    except grpc.RpcError as exc:
                        failures.append(f"{exc.code().name}: {exc.details()}")
                        continue
                    calls.append((started, answer.bundle_version))

    try:
        wait_serving(port, proc=proc, timeout=60)
        publish_file(port, kit.bundle(1))
        wait_bundle_version(metrics_port, 1, timeout=30)
        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        while len(calls) < 200:
            assert not failures, failures[:3]
            time.sleep(0.05)  # polling the load's progress
        publish_file(port, kit.bundle(2))
        published = time.monotonic()
        # docs/operations.md: the process that received it at once, the others within the
        # poll interval plus the time to load it (a generous bound on a shared machine)
        switch_s = wait_bundle_version(metrics_port, 2, timeout=BUNDLE_POLL_SECONDS + 20)
        switched = published + switch_s
        # calls that started after every process had switched (a moment's margin for calls
        # that had taken the old bundle just before): enough of them, on new connections
        while sum(1 for started, _ in list(calls) if started > switched + 0.5) < 200:
            assert not failures, failures[:3]
            time.sleep(0.05)  # polling the load's progress
        stop.set()
        for thread in threads:
            thread.join(60)
        assert failures == []
        assert {v for _, v in calls} == {1, 2}
        late = [v for started, v in calls if started > switched + 0.5]
        assert late and set(late) == {2}, "a call started after the switch was answered by the old bundle"

        metrics = scrape_metrics(metrics_port)
        decided = sum(v for (name, _), v in metrics.items() if name == "nbo_decisions_total")
        assert decided == len(calls)
        ok = metrics[("nbo_rpc_total", (("code", "OK"), ("method", "DecisionService/Decide")))]
        assert ok == len(calls)
        assert metrics[("nbo_decide_latency_seconds_count", ())] == len(calls)
        by_bundle = {dict(labels)["bundle"]: v for (name, labels), v in metrics.items()
                     if name == "nbo_decisions_total"}
        assert by_bundle == {"small:1": sum(1 for _, v in calls if v == 1), "small:2": sum(1 for _, v in calls if v == 2)}
    finally:
        stop.set()
        assert _stop(proc) == 0


def test_sigterm_lets_a_call_in_flight_on_a_serving_process_finish(tmp_path: Path) -> None:
    kit = bundle_kit(tmp_path / "kit")
    config = tmp_path / "gateway.toml"
    config.write_text(toml_text(config_data(trusted_key=kit.pub)))
    bundle = kit.bundle(1).read_bytes()
    port = free_port()
    state = tmp_path / "state"
    proc = start_serve_process(state, config, port=port, extra_args=["--processes", "2", "--grace", "30"])
    release = threading.Event()

    def upload() -> Iterator[Any]:
        chunks = publish_chunks(bundle, chunk=4096)
        yield next(chunks)
        release.wait(60)  # the rest only once the gateway is stopping
        yield from chunks

    answer: list[Any] = []
    try:
        wait_serving(port, proc=proc, timeout=60)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        future = publish_pb2_grpc.PublishServiceStub(channel).PublishBundle.future(
            upload(), metadata=PUBLISHER_AUTH, timeout=90)
        spool = state / "publish-spool"
        deadline = time.monotonic() + 30
        while not list(spool.glob(".upload-*")):  # a serving process is inside the call
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.05)  # polling the spool directory
        proc.send_signal(signal.SIGTERM)
        log = serve_log(state)
        while log.read_text().count("] event=stopping") < 2:  # both processes are draining
            assert time.monotonic() < deadline + 30, log.read_text()
            time.sleep(0.05)  # polling the log
        release.set()
        answer.append(future.result(timeout=60))
        channel.close()
        assert proc.wait(timeout=60) == 0
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
    assert answer[0].accepted and answer[0].version == 1
    text = serve_log(state).read_text()
    assert "event=bundle_published" in text and "[p0] event=stopped" in text and "[p1] event=stopped" in text
