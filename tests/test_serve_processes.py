"""`nbo serve --processes N`: N serving processes on one port under a supervisor that owns it."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import grpc
from gateway_helpers import (
    APP,
    bench_setup,
    free_port,
    publish_chunks,
    serve_log,
    start_serve_process,
    wait_serving,
)
from gateway_helpers import PUBLISHER as PUBLISHER_AUTH
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
