"""Issue 6 items 4, 5 and 6: `nbo serve --tls-cert/--tls-key/--client-ca --hub-db` as command-line
flags (not only the TOML tables), in a real `nbo serve` process.

The configuration file has neither a ``[tls]`` nor a ``[hub]`` table: mutual TLS and the hub
database location come from the flags alone, so a flag that is parsed but not applied fails here. The process's log is then checked for
structured lines and for the absence of every token, key and card number it was shown.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
import pytest
from gateway_helpers import (
    APP,
    APP_TOKEN,
    DEVICE_TOKEN,
    NBO_CLI,
    PUBLISHER_TOKEN,
    auth,
    bundle_kit,
    config_data,
    free_port,
    serve_log,
    start_serve_process,
    toml_text,
)
from nbo.gateway import HubStore
from nbo.v1 import decision_pb2, decision_pb2_grpc
from tls_helpers import health_ok, issue, make_ca, secure

WRONG_TOKEN = "wrong-token-3f9a1c77"
CARD = "4111 1111 1111 1111"


def test_serve_flags_turn_on_mutual_tls_and_place_the_hub_database(tmp_path: Path) -> None:
    ca, ca_cert, ca_key = make_ca(tmp_path / "pki", "flags-ca")
    server_pem = issue(tmp_path / "pki", "server", ca_cert, ca_key, server=True)
    client_pem = issue(tmp_path / "pki", "client", ca_cert, ca_key, server=False)
    kit = bundle_kit(tmp_path / "kit")
    config = tmp_path / "gateway.toml"
    data = config_data(trusted_key=kit.pub)
    assert "tls" not in data and "hub" not in data
    config.write_text(toml_text(data))
    hub_file = tmp_path / "elsewhere" / "flag-hub.sqlite"
    hub_file.parent.mkdir()
    state = tmp_path / "state"
    port = free_port()
    target = f"127.0.0.1:{port}"
    proc = start_serve_process(state, config, port=port, extra_args=[
        "--tls-cert", str(server_pem.cert), "--tls-key", str(server_pem.key), "--client-ca", str(ca.cert),
        "--hub-db", f"sqlite://{hub_file}"])
    try:
        with secure(ca.cert, client_pem)(target) as mtls:
            deadline = time.monotonic() + 30
            while not health_ok(mtls):
                assert proc.poll() is None, serve_log(state).read_text()
                assert time.monotonic() < deadline, serve_log(state).read_text()
                time.sleep(0.2)
        # --tls-cert/--tls-key: plaintext is refused; --client-ca: TLS without a client certificate is too.
        with grpc.insecure_channel(target) as plain:
            assert not health_ok(plain)
        with secure(ca.cert)(target) as no_client_cert:
            assert not health_ok(no_client_cert)

        bundle = kit.bundle(1)
        done = subprocess.run([*NBO_CLI, "publish", str(bundle), "--hub", target, "--token", PUBLISHER_TOKEN,
                               "--quiet", "--ca-file", str(ca.cert), "--client-cert", str(client_pem.cert),
                               "--client-key", str(client_pem.key), "--timeout", "30"],
                              capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr

        # Calls that put secrets in front of the server: a wrong token, right tokens, card data.
        with secure(ca.cert, client_pem)(target) as mtls:
            stub = decision_pb2_grpc.DecisionServiceStub(mtls)
            with pytest.raises(grpc.RpcError) as refused:
                stub.Decide(decision_pb2.DecideRequest(customer_id="c1", channel="pos"),
                            metadata=auth(WRONG_TOKEN), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert stub.Decide(decision_pb2.DecideRequest(customer_id="c1", channel="pos"), metadata=APP,
                               timeout=10).offers
            with pytest.raises(grpc.RpcError) as card:
                stub.RecordPayment(decision_pb2.RecordPaymentRequest(
                    customer_id="c1", payment_token=CARD, amount="1.00", currency="EUR", idempotency_key="k"),
                    metadata=APP, timeout=10)
            assert card.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        proc.terminate()
        proc.wait(30)
    # Structured logs (key=value events), and no secret or card number in them.
    log = serve_log(state).read_text()
    assert "event=listening" in log and "mtls=True" in log and "event=bundle_published" in log, log
    for secret in (WRONG_TOKEN, APP_TOKEN, PUBLISHER_TOKEN, DEVICE_TOKEN, CARD, CARD.replace(" ", ""),
                   client_pem.key.read_text().splitlines()[1], server_pem.key.read_text().splitlines()[1]):
        assert secret not in log, secret
    # --hub-db: the published bundle is registered in the database the flag named, and the
    # default location under the state directory was never created.
    assert hub_file.exists()
    assert not (state / "hub.sqlite").exists()
    hub = HubStore.open(f"sqlite://{hub_file}", state_dir=state)
    try:
        latest = hub.latest_bundle()
        assert latest is not None and latest.version == 1
    finally:
        hub.close()
