"""The SDK's sync and `nbo sync` over TLS and mutual TLS, with certificates generated here."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nbo.gateway import GatewayServer, create_server, parse_config
from nbo.sdk import Client, SyncError
from tls_helpers import issue, make_ca

TOKENS = [{"token": "tok-dev-1", "role": "device", "device_id": "dev-1"}]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_cert, ca_key = make_ca(d, "sync-ca")
    return {
        "ca": ca,
        "server": issue(d, "server", ca_cert, ca_key, server=True),
        "client": issue(d, "client", ca_cert, ca_key, server=False),
    }


def gateway(tmp_path: Path, pki: dict[str, Any], *, mutual: bool) -> GatewayServer:
    tls: dict[str, str] = {"cert": str(pki["server"].cert), "key": str(pki["server"].key)}
    if mutual:
        tls["client_ca"] = str(pki["ca"].cert)
    server, _ = create_server(parse_config({"tokens": TOKENS, "tls": tls}), state_dir=tmp_path / "hub")
    server.start()
    return server


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Client]:
    with Client.open(tmp_path / "dev", device_id="dev-1", trusted_keys=[]) as client:
        client.award_points("c1", 42, idempotency_key="k1", reason="x")
        yield client


def test_sync_over_tls(tmp_path: Path, pki: dict[str, Any], device: Client) -> None:
    server = gateway(tmp_path, pki, mutual=False)
    try:
        target = f"127.0.0.1:{server.port}"
        with pytest.raises(SyncError):
            device.sync(target, token="tok-dev-1", timeout=3)  # plaintext against a TLS hub
        report = device.sync(target, token="tok-dev-1", ca_file=pki["ca"].cert)
        assert report.pushed == 1 and server.hub.balance("c1") == 42
    finally:
        server.stop(0).wait(10)


def test_sync_over_mutual_tls_and_cli(tmp_path: Path, pki: dict[str, Any], device: Client) -> None:
    server = gateway(tmp_path, pki, mutual=True)
    try:
        target = f"127.0.0.1:{server.port}"
        with pytest.raises(SyncError):
            device.sync(target, token="tok-dev-1", ca_file=pki["ca"].cert, timeout=3)  # no client certificate
        device.award_points("c1", 8, idempotency_key="k2", reason="x")
        device.close()
        cli = [sys.executable, "-c", "import sys; from nbo.cli import main; sys.exit(main())", "sync",
               "--state", str(tmp_path / "dev"), "--hub", target, "--token", "tok-dev-1",
               "--ca-file", str(pki["ca"].cert)]
        refused = subprocess.run(cli, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and refused.stderr.startswith("error: ")
        ok = subprocess.run([*cli, "--client-cert", str(pki["client"].cert), "--client-key", str(pki["client"].key)],
                            capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stderr
        assert "pushed 2 events" in ok.stdout
        assert server.hub.balance("c1") == 50
    finally:
        server.stop(0).wait(10)
