"""The gateway in plaintext, TLS and mutual-TLS modes, with certificates generated here.

A CA, a server certificate for 127.0.0.1/localhost and client certificates (one from the
trusted CA, one from a stranger CA) are made with ``cryptography``'s x509 builder.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_helpers import (
    APP,
    NBO_CLI,
    PUBLISHER_TOKEN,
    bundle_kit,
    config_data,
    running_gateway,
)
from nbo.v1 import decision_pb2
from tls_helpers import health_ok, issue, make_ca, secure


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_cert, ca_key = make_ca(d, "nbo-test-ca")
    stranger, s_cert, s_key = make_ca(d, "stranger-ca")
    return {
        "ca": ca,
        "stranger": stranger,
        "server": issue(d, "server", ca_cert, ca_key, server=True),
        "client": issue(d, "client", ca_cert, ca_key, server=False),
        "rogue_client": issue(d, "rogue", s_cert, s_key, server=False),
        "kit": bundle_kit(d / "kit"),
    }


def decide_code(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        decision_pb2_grpc_stub(channel).Decide(decision_pb2.DecideRequest(customer_id="c", channel="pos"),
                                               metadata=APP, timeout=5)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def decision_pb2_grpc_stub(channel: grpc.Channel) -> Any:
    from nbo.v1 import decision_pb2_grpc

    return decision_pb2_grpc.DecisionServiceStub(channel)


def test_plaintext(pki: dict[str, Any], tmp_path: Path) -> None:
    with running_gateway(tmp_path, config_data(trusted_key=pki["kit"].pub)) as gw:
        assert health_ok(gw.channel)
        # No bundle yet: the call is answered (authenticated) with FAILED_PRECONDITION.
        assert decide_code(gw.channel) == grpc.StatusCode.FAILED_PRECONDITION
        with secure(pki["ca"].cert)(f"127.0.0.1:{gw.port}") as tls_channel:
            assert not health_ok(tls_channel)  # a TLS client cannot talk to a plaintext server


def test_tls(pki: dict[str, Any], tmp_path: Path) -> None:
    tls = {"tls": {"cert": str(pki["server"].cert), "key": str(pki["server"].key)}}
    data = config_data(trusted_key=pki["kit"].pub, extra=tls)
    with running_gateway(tmp_path, data, channel_factory=secure(pki["ca"].cert)) as gw:
        assert health_ok(gw.channel)
        assert decide_code(gw.channel) == grpc.StatusCode.FAILED_PRECONDITION
        with grpc.insecure_channel(f"127.0.0.1:{gw.port}") as plain:
            assert not health_ok(plain)
        with secure(pki["stranger"].cert)(f"127.0.0.1:{gw.port}") as wrong_ca:
            assert not health_ok(wrong_ca)  # the server's certificate is not from this CA


def test_mutual_tls_and_cli_publish(pki: dict[str, Any], tmp_path: Path) -> None:
    tls = {"tls": {"cert": str(pki["server"].cert), "key": str(pki["server"].key),
                   "client_ca": str(pki["ca"].cert)}}
    data = config_data(trusted_key=pki["kit"].pub, extra=tls)
    with running_gateway(tmp_path, data, channel_factory=secure(pki["ca"].cert, pki["client"])) as gw:
        assert health_ok(gw.channel)
        assert decide_code(gw.channel) == grpc.StatusCode.FAILED_PRECONDITION
        target = f"127.0.0.1:{gw.port}"
        with secure(pki["ca"].cert)(target) as no_client_cert:
            assert not health_ok(no_client_cert)
        with secure(pki["ca"].cert, pki["rogue_client"])(target) as rogue:
            assert not health_ok(rogue)
        with grpc.insecure_channel(target) as plain:
            assert not health_ok(plain)

        bundle = pki["kit"].bundle(1)
        base = [*NBO_CLI, "publish", str(bundle), "--hub", target, "--token", PUBLISHER_TOKEN, "--quiet",
                "--ca-file", str(pki["ca"].cert), "--timeout", "20"]
        refused = subprocess.run(base, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and refused.stderr.startswith("error: ")
        ok = subprocess.run([*base, "--client-cert", str(pki["client"].cert), "--client-key", str(pki["client"].key)],
                            capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stderr
        assert "small v1: published" in ok.stdout
        assert decide_code(gw.channel) == grpc.StatusCode.OK
