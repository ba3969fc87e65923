"""PublishService and `nbo publish` against a real gateway on loopback.

Upload checks (metadata, size, sha256, cap), signature verification before anything is
stored, version ordering and idempotent re-publish, publish-then-decide with the new version,
terminals seeing the bundle, restart keeping the engine's bundle, and the CLI.
"""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from bundle_fixtures import make_bundle, make_keys, small_catalog
from gateway_helpers import (
    APP,
    DEVICE,
    NBO_CLI,
    PUBLISHER,
    PUBLISHER_TOKEN,
    Gateway,
    bundle_kit,
    config_data,
    publish,
    publish_chunks,
    running_gateway,
)
from nbo.v1 import decision_pb2, publish_pb2, sync_pb2


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    kit = bundle_kit(tmp_path_factory.mktemp("kit"))
    kit.v1 = kit.bundle(1)
    catalog = small_catalog()
    catalog["offers"].append({
        "offer_id": "NEW_IN_V2", "name": "Only in version 2", "category": "xsell", "expected_volume": 1000,
        "margin": 1000, "duration": 10, "channels": ["pos"],
    })
    kit.v2 = kit.bundle(2, catalog=catalog)
    # The same name and version with other bytes.
    kit.v2_other = make_bundle(kit.directory / "v2-other", key=kit.key, version=2, created_at="2026-02-01T00:00:00Z")
    other_key, _ = make_keys(kit.directory / "other-keys")
    kit.untrusted = make_bundle(kit.directory / "untrusted", key=other_key, version=5)
    return kit


@pytest.fixture()
def gw(kit: Any, tmp_path: Path) -> Iterator[Gateway]:
    with running_gateway(tmp_path / "state", config_data(trusted_key=kit.pub)) as gateway:
        yield gateway


def upload(gw: Gateway, chunks: Any) -> publish_pb2.PublishBundleResponse:
    response: publish_pb2.PublishBundleResponse = gw.publisher.PublishBundle(chunks, metadata=PUBLISHER, timeout=30)
    return response


def refused(gw: Gateway, chunks: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        upload(gw, chunks)
    return info.value.code(), info.value.details() or ""


def nothing_stored(gw: Gateway) -> None:
    assert gw.server.hub.latest_bundle() is None
    assert gw.server.engine is not None and gw.server.engine.active is None
    assert not [p for p in (gw.state_dir / "hub-bundles").iterdir()]
    engine_dir = gw.state_dir / "engine-bundles"
    assert not engine_dir.exists() or not [p for p in engine_dir.rglob("*.onnx")]
    assert not list((gw.state_dir / "publish-spool").iterdir())


def latest(gw: Gateway) -> sync_pb2.GetLatestBundleResponse:
    response: sync_pb2.GetLatestBundleResponse = gw.sync.GetLatestBundle(
        sync_pb2.GetLatestBundleRequest(current_version=0), metadata=DEVICE)
    return response


def test_publish_then_decide_and_terminals_see_it(gw: Gateway, kit: Any) -> None:
    data = kit.v1.read_bytes()
    response = upload(gw, publish_chunks(data, chunk=4096))
    assert response.accepted and (response.name, response.version) == ("small", 1)
    assert response.offers == 5 and response.sha256 == hashlib.sha256(data).hexdigest()
    ref = latest(gw)
    assert ref.available and ref.bundle.version == 1 and ref.bundle.sha256 == response.sha256
    downloaded = b"".join(c.data for c in gw.sync.DownloadBundle(
        sync_pb2.DownloadBundleRequest(name="small", version=1, offset=0), metadata=DEVICE))
    assert downloaded == data
    decision = gw.decision.Decide(decision_pb2.DecideRequest(customer_id="c1", channel="pos"), metadata=APP)
    assert decision.bundle_version == 1 and "NEW_IN_V2" not in {o.offer_id for o in decision.offers}

    response = publish(gw, kit.v2)
    assert response.accepted and response.version == 2 and response.offers == 6
    decision = gw.decision.Decide(decision_pb2.DecideRequest(customer_id="c1", channel="pos", limit=5), metadata=APP)
    assert decision.bundle_version == 2 and "NEW_IN_V2" in {o.offer_id for o in decision.offers}
    assert latest(gw).bundle.version == 2
    assert not list((gw.state_dir / "publish-spool").iterdir())  # the spooled upload is gone


def test_republish_is_idempotent_and_versions_must_increase(gw: Gateway, kit: Any) -> None:
    assert publish(gw, kit.v2).accepted
    again = publish(gw, kit.v2)
    assert not again.accepted and again.version == 2
    code, details = refused(gw, publish_chunks(kit.v1.read_bytes()))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "not newer" in details
    code, details = refused(gw, publish_chunks(kit.v2_other.read_bytes()))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "other content" in details
    assert gw.server.hub.latest_bundle().sha256 == hashlib.sha256(kit.v2.read_bytes()).hexdigest()  # type: ignore[union-attr]
    assert gw.server.engine.active.info.version == 2  # type: ignore[union-attr]


def test_untrusted_and_tampered_bundles_are_refused_before_anything_is_stored(gw: Gateway, kit: Any) -> None:
    code, details = refused(gw, publish_chunks(kit.untrusted.read_bytes()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and ("key" in details or "signature" in details)
    nothing_stored(gw)

    # Tamper with the catalog inside the zip: the manifest's sha256 no longer matches.
    tampered = gw.state_dir.parent / "tampered.zip"
    with zipfile.ZipFile(kit.v1) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            payload = src.read(item)
            if item.filename.endswith(".sqlite"):
                payload = payload[:-1] + bytes([payload[-1] ^ 0xFF])
            dst.writestr(item, payload)
    code, details = refused(gw, publish_chunks(tampered.read_bytes()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "sha256" in details
    nothing_stored(gw)

    code, details = refused(gw, publish_chunks(b"this is not a zip file at all"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    nothing_stored(gw)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda d: publish_chunks(d, sha256="0" * 64), "sha256"),
        (lambda d: publish_chunks(d, sha256="not-hex"), "sha256"),
        (lambda d: publish_chunks(d, total_size=len(d) + 10), "total_size"),
        (lambda d: publish_chunks(d, total_size=len(d) - 10), "total_size"),
        (lambda d: publish_chunks(d, total_size=0), "total_size"),
        (lambda d: publish_chunks(d, total_size=10**12), "total_size"),
        (lambda d: iter([publish_pb2.PublishChunk(data=d)]), "metadata"),
        (lambda d: iter([]), "metadata"),
        (lambda d: iter([*publish_chunks(d), publish_pb2.PublishChunk(
            metadata=publish_pb2.PublishMetadata(filename="x", total_size=1, sha256="0" * 64))]), "metadata"),
    ],
)
def test_malformed_uploads_name_the_field(gw: Gateway, kit: Any, make: Any, field: str) -> None:
    code, details = refused(gw, make(kit.v1.read_bytes()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details
    nothing_stored(gw)


def test_a_restarted_gateway_serves_its_installed_bundle(kit: Any, tmp_path: Path) -> None:
    data = config_data(trusted_key=kit.pub)
    with running_gateway(tmp_path, data) as first:
        publish(first, kit.v2)
    with running_gateway(tmp_path, data) as second:
        decision = second.decision.Decide(decision_pb2.DecideRequest(customer_id="c", channel="pos"), metadata=APP)
        assert decision.bundle_version == 2
        assert latest(second).bundle.version == 2


def _nbo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NBO_CLI, *args], capture_output=True, text=True, timeout=60)


def test_cli_publish(gw: Gateway, kit: Any) -> None:
    result = _nbo("publish", str(kit.v1), "--hub", f"127.0.0.1:{gw.port}", "--token", PUBLISHER_TOKEN)
    assert result.returncode == 0, result.stderr
    assert "small v1: published, 5 offers" in result.stdout
    assert "100%" in result.stderr  # the progress bar
    result = _nbo("publish", str(kit.v1), "--hub", f"127.0.0.1:{gw.port}", "--token", PUBLISHER_TOKEN)
    assert result.returncode == 0 and "already published" in result.stdout
    result = _nbo("publish", str(kit.v2), "--hub", f"127.0.0.1:{gw.port}", "--token", "wrong-token", "--quiet")
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "UNAUTHENTICATED" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    result = _nbo("publish", str(kit.directory / "missing.zip"), "--hub", f"127.0.0.1:{gw.port}", "--token", "t")
    assert result.returncode == 1 and "cannot read" in result.stderr
    assert gw.server.engine.active.info.version == 1  # type: ignore[union-attr]


def test_a_replica_follows_the_registry(kit: Any, tmp_path: Path) -> None:
    """Two gateways on one hub database: B switches to what A published, without a publish of its
    own and without shared storage (the hub database holds the bundle's bytes; B writes its copy)."""
    import time

    hub_db = f"sqlite:{tmp_path / 'shared-hub.sqlite'}"
    data = config_data(trusted_key=kit.pub, hub_db=hub_db)
    with running_gateway(tmp_path / "a", data) as a, \
            running_gateway(tmp_path / "b", data, bundle_poll_seconds=0.2) as b:
        publish(a, kit.v2)
        deadline = time.monotonic() + 10
        while b.server.engine.active is None and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.05)
        assert (b.state_dir / "hub-bundles" / "small-2.zip").read_bytes() == kit.v2.read_bytes()
        decision = b.decision.Decide(decision_pb2.DecideRequest(customer_id="c", channel="pos"), metadata=APP)
        assert decision.bundle_version == 2
