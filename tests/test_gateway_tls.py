"""The gateway in plaintext, TLS and mutual-TLS modes, with certificates generated here.

A CA, a server certificate for 127.0.0.1/localhost and client certificates (one from the
trusted CA, one from a stranger CA) are made with ``cryptography``'s x509 builder.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from gateway_helpers import (
    APP,
    NBO_CLI,
    PUBLISHER_TOKEN,
    bundle_kit,
    config_data,
    running_gateway,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nbo.v1 import decision_pb2


@dataclass
class Pem:
    cert: Path
    key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pem:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Pem(cert_path, key_path)


def make_ca(directory: Path, common: str) -> tuple[Pem, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common)).issuer_name(_name(common)).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, common, cert, key), cert, key


def issue(directory: Path, stem: str, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, *,
          server: bool) -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(stem)).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return _write(directory, stem, builder.sign(ca_key, hashes.SHA256()), key)


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


def secure(ca: Path, client: Pem | None = None) -> Callable[[str], grpc.Channel]:
    def factory(target: str) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca.read_bytes(),
            private_key=client.key.read_bytes() if client else None,
            certificate_chain=client.cert.read_bytes() if client else None,
        )
        return grpc.secure_channel(target, creds)
    return factory


def health_ok(channel: grpc.Channel) -> bool:
    try:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    except grpc.RpcError:
        return False
    return bool(status == health_pb2.HealthCheckResponse.SERVING)


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
