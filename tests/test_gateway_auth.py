"""The auth matrix: every RPC of the three services × no token / wrong token / each role.

The ``analyst`` role (``nbo console``, configured by digest) is refused by every RPC.

Missing or unknown token → UNAUTHENTICATED; a role the method does not allow → PERMISSION_DENIED;
the allowed role gets through (to whatever the call itself answers). A device pushing another
device's events → PERMISSION_DENIED. Health and reflection answer without a token. Tokens
configured as ``token_sha256`` work like plain ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_helpers import (
    ANALYST_TOKEN,
    APP_TOKEN,
    DEVICE_TOKEN,
    PUBLISHER_TOKEN,
    Gateway,
    auth,
    bundle_kit,
    config_data,
    publish_chunks,
    running_gateway,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from nbo.v1 import decision_pb2, publish_pb2, sync_pb2

ROLE_TOKENS = {"app": APP_TOKEN, "device": DEVICE_TOKEN, "publisher": PUBLISHER_TOKEN, "analyst": ANALYST_TOKEN}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    kit = bundle_kit(tmp_path_factory.mktemp("kit"))
    # The app token is configured by its SHA-256 only: hashed tokens must work the same.
    data = config_data(trusted_key=kit.pub, hashed_app=True)
    with running_gateway(tmp_path_factory.mktemp("state"), data) as gateway:
        yield gateway


Call = Callable[[Gateway, Any], Any]

# (method, allowed role, call(gateway, metadata))
RPCS: list[tuple[str, str, Call]] = [
    ("DecisionService/Decide", "app", lambda g, m: g.decision.Decide(
        decision_pb2.DecideRequest(customer_id="c", channel="pos"), metadata=m, timeout=10)),
    ("DecisionService/RecordResponse", "app", lambda g, m: g.decision.RecordResponse(
        decision_pb2.RecordResponseRequest(decision_id="d", offer_id="o", outcome=1), metadata=m, timeout=10)),
    ("DecisionService/AwardPoints", "app", lambda g, m: g.decision.AwardPoints(
        decision_pb2.AwardPointsRequest(customer_id="auth-c", points=5, idempotency_key="k", reason="r"),
        metadata=m, timeout=10)),
    ("DecisionService/RedeemPoints", "app", lambda g, m: g.decision.RedeemPoints(
        decision_pb2.RedeemPointsRequest(customer_id="auth-c", points=1, idempotency_key="k2", reason="r"),
        metadata=m, timeout=10)),
    ("DecisionService/GetBalance", "app", lambda g, m: g.decision.GetBalance(
        decision_pb2.GetBalanceRequest(customer_id="auth-c"), metadata=m, timeout=10)),
    ("DecisionService/RecordPayment", "app", lambda g, m: g.decision.RecordPayment(
        decision_pb2.RecordPaymentRequest(customer_id="c", payment_token="tok", amount="1.00", currency="EUR",
                                          idempotency_key="p"), metadata=m, timeout=10)),
    ("SyncService/PushEvents", "device", lambda g, m: g.sync.PushEvents(
        sync_pb2.PushEventsRequest(device_id="pos-1"), metadata=m, timeout=10)),
    ("SyncService/GetLatestBundle", "device", lambda g, m: g.sync.GetLatestBundle(
        sync_pb2.GetLatestBundleRequest(), metadata=m, timeout=10)),
    ("SyncService/DownloadBundle", "device", lambda g, m: list(g.sync.DownloadBundle(
        sync_pb2.DownloadBundleRequest(name="small", version=1), metadata=m, timeout=10))),
    ("SyncService/RecoverDevice", "device", lambda g, m: list(g.sync.RecoverDevice(
        sync_pb2.RecoverDeviceRequest(device_id="pos-1"), metadata=m, timeout=10))),
    ("PublishService/PublishBundle", "publisher", lambda g, m: g.publisher.PublishBundle(
        publish_chunks(b"not a bundle"), metadata=m, timeout=10)),
]

CALLERS: list[tuple[str, Any]] = [
    ("no token", ()),
    ("wrong token", auth("not-a-configured-token")),
    ("not bearer", (("authorization", f"Basic {APP_TOKEN}"),)),
    ("empty bearer", (("authorization", "Bearer "),)),
    ("app", auth(APP_TOKEN)),
    ("device", auth(DEVICE_TOKEN)),
    ("publisher", auth(PUBLISHER_TOKEN)),
    ("analyst", auth(ANALYST_TOKEN)),  # the console's role may call no RPC
]


def outcome(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(("method", "allowed", "call"), RPCS, ids=[r[0] for r in RPCS])
@pytest.mark.parametrize(("caller", "metadata"), CALLERS, ids=[c[0] for c in CALLERS])
def test_auth_matrix(gw: Gateway, method: str, allowed: str, call: Call, caller: str, metadata: Any) -> None:
    code = outcome(lambda: call(gw, metadata))
    if caller not in ROLE_TOKENS:
        assert code == grpc.StatusCode.UNAUTHENTICATED, (method, caller)
    elif caller != allowed:
        assert code == grpc.StatusCode.PERMISSION_DENIED, (method, caller)
    else:
        assert code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                            grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNIMPLEMENTED), (method, caller, code)


def test_refused_calls_change_nothing(gw: Gateway) -> None:
    for _, metadata in CALLERS:
        if metadata != auth(APP_TOKEN):
            outcome(lambda metadata=metadata: gw.decision.AwardPoints(
                decision_pb2.AwardPointsRequest(customer_id="untouched", points=5, idempotency_key="u", reason="r"),
                metadata=metadata))
    assert gw.server.hub.balance("untouched") == 0
    assert all('"untouched"' not in e["payload"] for e in gw.server.hub.events())


def test_a_device_cannot_push_another_devices_events(gw: Gateway) -> None:
    code = outcome(lambda: gw.sync.PushEvents(sync_pb2.PushEventsRequest(device_id="pos-2"),
                                              metadata=auth(DEVICE_TOKEN)))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    event = sync_pb2.Event(event_id="e1", device_id="pos-2", seq=1, type="purchase", created_at=1.0,
                           payload_json="{}")
    code = outcome(lambda: gw.sync.PushEvents(sync_pb2.PushEventsRequest(device_id="pos-1", events=[event]),
                                              metadata=auth(DEVICE_TOKEN)))
    assert code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT)
    assert gw.server.hub.events(device_id="pos-2") == []


def test_health_and_reflection_are_open(gw: Gateway) -> None:
    health = health_pb2_grpc.HealthStub(gw.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    for service in ("nbo.v1.DecisionService", "nbo.v1.SyncService", "nbo.v1.PublishService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING, service
    stub = reflection_pb2_grpc.ServerReflectionStub(gw.channel)
    answers = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"nbo.v1.DecisionService", "nbo.v1.SyncService", "nbo.v1.PublishService",
            "grpc.health.v1.Health"} <= names


def test_unknown_method_needs_a_token(gw: Gateway, tmp_path: Path) -> None:
    call = gw.channel.unary_unary("/nbo.v1.DecisionService/NoSuchMethod")
    assert outcome(lambda: call(b"")) == grpc.StatusCode.UNAUTHENTICATED
    assert outcome(lambda: call(b"", metadata=auth(APP_TOKEN))) == grpc.StatusCode.UNIMPLEMENTED


def test_every_rpc_of_the_proto_is_in_the_matrix() -> None:
    from nbo.v1 import decision_pb2 as d
    from nbo.v1 import publish_pb2 as p
    from nbo.v1 import sync_pb2 as s

    declared = {
        f"{service.name}/{method.name}"
        for module in (d, p, s)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert declared == {method for method, _, _ in RPCS}
    assert publish_pb2  # imported for the stub types above
