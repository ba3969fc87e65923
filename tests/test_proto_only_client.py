"""A client built from `proto/` alone, in a fresh virtualenv that cannot import the project,
decides, records a response, awards and redeems points and pays against a real `nbo serve`.

The fresh virtualenv gets grpcio / grpcio-tools / protobuf by a ``.pth`` line pointing at the
test environment's site-packages — whose own ``.pth`` files (among them the editable install
of nbo-edge) are *not* processed from there, so ``nbo`` is not importable. The client runs
isolated (``-I``: no PYTHONPATH, no script directory, no user site) and only sees a copy of
the ``.proto`` files; it generates its stubs with grpc_tools into a temp dir at start.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_helpers import (
    APP_TOKEN,
    NBO_CLI,
    PUBLISHER_TOKEN,
    bundle_kit,
    config_data,
    free_port,
    start_serve_process,
    toml_text,
    wait_serving,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "mobile_backend_client.py"


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("fresh-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Third-party wheels only: a plain path line, so the editable-install .pth there never runs.
    Path(site, "grpc_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    probe = subprocess.run([str(python), "-I", "-c", "import grpc, grpc_tools, google.protobuf; import nbo.sdk"],
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'nbo" in probe.stderr, probe.stderr
    return python


@pytest.fixture(scope="module")
def proto_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("proto")
    for proto in (ROOT / "proto" / "nbo" / "v1").glob("*.proto"):
        target = dest / "nbo" / "v1" / proto.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(proto, target)
    return dest


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    base = tmp_path_factory.mktemp("serve")
    kit = bundle_kit(base / "kit")
    config = base / "gateway.toml"
    config.write_text(toml_text(config_data(trusted_key=kit.pub)))
    port = free_port()
    proc = start_serve_process(base / "state", config, port=port)
    try:
        wait_serving(port, proc=proc)
        published = subprocess.run([*NBO_CLI, "publish", str(kit.bundle(1)), "--hub", f"127.0.0.1:{port}",
                                    "--token", PUBLISHER_TOKEN, "--quiet"], capture_output=True, text=True, timeout=60)
        assert published.returncode == 0, published.stderr
        yield port, base / "state"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_client_from_proto_alone(fresh_python: Path, proto_copy: Path, served: tuple[int, Path]) -> None:
    port, state = served
    run = subprocess.run(
        [str(fresh_python), "-I", str(EXAMPLE), "--target", f"127.0.0.1:{port}", "--token", APP_TOKEN,
         "--customer", "proto-only-1", "--proto-dir", str(proto_copy)],
        capture_output=True, text=True, timeout=120, cwd=proto_copy,
    )
    assert run.returncode == 0, run.stderr
    line = next(out for out in run.stdout.splitlines() if out.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result["nbo_importable_as_project"] is False
    assert result["bundle_version"] == 1 and result["offers"]
    assert result["award_balance"] == 100 and result["redeem_balance"] == 70 and result["balance"] == 70
    assert result["payment_amount"] == "19.99"
    assert result["over_redeem"] == "FAILED_PRECONDITION"

    # The gateway holds what the client did, in the hub's event log as app events.
    from nbo.gateway import HubStore

    hub = HubStore.open(None, state_dir=state)
    try:
        types = [e["type"] for e in hub.events(device_id="app")]
        payloads = [json.loads(e["payload"]) for e in hub.events(device_id="app")]
        assert hub.balance("proto-only-1") == 70
    finally:
        hub.close()
    assert types == ["decision", "response", "points", "points", "payment"]
    assert payloads[1]["offer_id"] == result["recorded"] and payloads[4]["payment_id"] == result["payment_id"]
