"""Attack class: deeply nested request messages.

A ``google.protobuf.Struct`` nested ~60 levels deep in ``Decide``'s ``context`` or ``profile``
(with or without a token) used to fail inside grpcio's decoder: ``INTERNAL`` and a logged
traceback. Now a request that does not decode is refused ``INVALID_ARGUMENT`` (or
``UNAUTHENTICATED`` without a token) and one that decodes but nests more than
``MAX_STRUCT_DEPTH`` (8) levels is refused naming the field; the log holds one line per
refusal, with no traceback and nothing of the payload.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from gateway_helpers import APP, Gateway, bundle_kit, config_data, publish, running_gateway
from google.protobuf import struct_pb2
from nbo.v1 import decision_pb2

MARKER = "nested-payload-marker-4111"


def nested(depth: int) -> struct_pb2.Struct:
    """A Struct ``depth`` levels deep with a marker string at the bottom."""
    top = struct_pb2.Struct()
    inner = top
    for _ in range(depth):
        inner = inner.fields["k"].struct_value
    inner.fields["leaf"].string_value = MARKER
    return top


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    kit = bundle_kit(tmp_path_factory.mktemp("kit"))
    with running_gateway(tmp_path_factory.mktemp("state"), config_data(trusted_key=kit.pub)) as gateway:
        publish(gateway, kit.bundle(1))
        yield gateway


def decisions(gw: Gateway) -> int:
    with gw.server.hub.db.transaction() as tx:
        return int(tx.execute("SELECT COUNT(*) FROM decisions")[0][0])


def assert_quiet_log(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        text = record.getMessage()
        assert MARKER not in text
        assert record.exc_info is None, f"{record.name} logged a traceback: {text}"
        assert "Traceback" not in text and "deserializ" not in text


@pytest.mark.parametrize("field", ["context", "profile"])
@pytest.mark.parametrize("depth", [40, 60, 200])
def test_undecodable_nesting_is_invalid_argument(gw: Gateway, caplog: pytest.LogCaptureFixture,
                                                field: str, depth: int) -> None:
    caplog.set_level(logging.DEBUG)
    before = decisions(gw)
    request = decision_pb2.DecideRequest(customer_id="c1", channel="app")
    getattr(request, field).CopyFrom(nested(depth))
    with pytest.raises(grpc.RpcError) as info:
        gw.decision.Decide(request, metadata=APP, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert MARKER not in (info.value.details() or "")
    assert decisions(gw) == before
    assert_quiet_log(caplog)


def test_without_a_token_it_is_unauthenticated(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    request = decision_pb2.DecideRequest(customer_id="c1", channel="app")
    request.context.CopyFrom(nested(60))
    with pytest.raises(grpc.RpcError) as info:
        gw.decision.Decide(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert_quiet_log(caplog)


@pytest.mark.parametrize("depth", [9, 20])
def test_nesting_past_the_fixed_depth_is_refused_naming_the_field(gw: Gateway, caplog: pytest.LogCaptureFixture,
                                                                  depth: int) -> None:
    caplog.set_level(logging.DEBUG)
    request = decision_pb2.DecideRequest(customer_id="c1", channel="app")
    request.context.CopyFrom(nested(depth))
    with pytest.raises(grpc.RpcError) as info:
        gw.decision.Decide(request, metadata=APP, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "context.k is nested more than 8 levels deep"
    assert_quiet_log(caplog)


def test_garbage_bytes_are_invalid_argument_too(gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    call = gw.channel.unary_unary("/nbo.v1.DecisionService/Decide")
    with pytest.raises(grpc.RpcError) as info:
        call(b"\xff\xff\xff\xff" + MARKER.encode(), metadata=APP, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_quiet_log(caplog)


def test_a_flat_request_still_decides(gw: Gateway, tmp_path: Path) -> None:
    request = decision_pb2.DecideRequest(customer_id="c1", channel="app")
    request.context.update({"basket_total": 12.5})
    assert gw.decision.Decide(request, metadata=APP, timeout=10).offers
