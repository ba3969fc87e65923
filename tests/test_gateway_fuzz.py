"""Fuzzed DecisionService and PublishService inputs: always a status, never UNKNOWN or INTERNAL,
and a refused call leaves the hub's state exactly as it was.

Hypothesis generates field values (empty, huge, control characters, card-like digits, NaN and
infinities, nested structures, extreme integers, unknown enum values); a second set of tests
sends raw bytes as the request message, and one request larger than the message-size limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from bundle_fixtures import small_catalog
from gateway_helpers import APP, PUBLISHER, Gateway, bundle_kit, config_data, publish, running_gateway
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nbo.gateway._db import open_database
from nbo.v1 import decision_pb2, publish_pb2
from sync_helpers import BACKENDS, postgres_url, unique_schema

ACCEPTABLE = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.FAILED_PRECONDITION}
TABLES = ("hub_events", "hub_ledger", "profiles", "decisions", "contact_history", "ledger_entries", "payments",
          "responses")

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", params=BACKENDS)
def gw(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway per hub backend (SQLite, PostgreSQL): fuzzed input must not reach either as an error."""
    kit = bundle_kit(tmp_path_factory.mktemp("kit"))
    catalog = small_catalog()
    url = schema = None
    if request.param == "postgresql":
        url, schema = postgres_url(), unique_schema()
    try:
        with running_gateway(tmp_path_factory.mktemp("state"), config_data(trusted_key=kit.pub, hub_db=url),
                             hub_schema=schema) as gateway:
            assert gateway.server.hub.db.dialect == request.param
            publish(gateway, kit.bundle(1, catalog=catalog))
            gateway.decision.AwardPoints(decision_pb2.AwardPointsRequest(
                customer_id="known", points=50, idempotency_key="seed", reason="seed"), metadata=APP)
            yield gateway
    finally:
        if url is not None:
            db = open_database(url, schema=schema)
            db.drop_schema()  # type: ignore[attr-defined]
            db.close()


def snapshot(gw: Gateway) -> dict[str, int]:
    with gw.server.hub.db.transaction() as tx:
        return {t: int(tx.execute(f"SELECT COUNT(*) FROM {t}")[0][0]) for t in TABLES}  # noqa: S608


def call_and_check(gw: Gateway, call: Any) -> grpc.StatusCode:
    before = snapshot(gw)
    try:
        call()
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
        assert exc.details(), "an error status must say why"
        assert "Traceback" not in (exc.details() or "")
    assert code in ACCEPTABLE, code
    if code is not grpc.StatusCode.OK:
        assert snapshot(gw) == before, "a refused call changed the hub state"
    return code


texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "known", "4111 1111 1111 1111", "4111-1111-1111-1111", "cvv=123", "%B4111",
                     "\x00", "é" * 300, "x" * 5000, "pos", "app", "EUR", "19.99", "-1", "NaN", "1e999"]),
)
ids = st.one_of(st.sampled_from(["known", "c1", ""]), st.text(max_size=20))
ints64 = st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.sampled_from([0, 1, -1, 10**9, 10**9 + 1]))
scalars = st.one_of(
    st.none(), st.booleans(), st.text(max_size=30),
    st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(2**60), max_value=2**60),
)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=10)
structs = st.dictionaries(st.one_of(st.text(max_size=12), st.sampled_from(
    ["age", "frequency", "lifecycle_stage", "do_not_contact", "owned_products", "hour", "channel", "monetary"])),
    json_values, max_size=6)


def to_struct(data: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    for key, value in data.items():
        try:
            s.update({key: value})
        except (ValueError, TypeError):
            s.update({key: None if isinstance(value, float) and math.isnan(value) else str(value)})
    return s


@FUZZ
@given(customer=ids, channel=st.one_of(st.sampled_from(["pos", "app", "web", "email", ""]), st.text(max_size=10)),
       context=st.none() | structs, profile=st.none() | structs,
       limit=st.none() | st.integers(min_value=-(2**31), max_value=2**31 - 1), explain=st.booleans())
def test_fuzz_decide(gw: Gateway, customer: str, channel: str, context: Any, profile: Any, limit: Any,
                     explain: bool) -> None:
    request = decision_pb2.DecideRequest(customer_id=customer, channel=channel, explain=explain)
    if context is not None:
        request.context.CopyFrom(to_struct(context))
    if profile is not None:
        request.profile.CopyFrom(to_struct(profile))
    if limit is not None:
        request.limit = limit
    call_and_check(gw, lambda: gw.decision.Decide(request, metadata=APP, timeout=10))


@FUZZ
@given(decision=ids, offer=ids, outcome=st.integers(min_value=-5, max_value=10))
def test_fuzz_record_response(gw: Gateway, decision: str, offer: str, outcome: int) -> None:
    request = decision_pb2.RecordResponseRequest(decision_id=decision, offer_id=offer, outcome=outcome)
    call_and_check(gw, lambda: gw.decision.RecordResponse(request, metadata=APP, timeout=10))


@FUZZ
@given(customer=ids, points=ints64, key=texts, reason=texts,
       expires=st.none() | st.integers(min_value=-(2**40), max_value=2**40), nanos=st.integers(-5, 2 * 10**9),
       redeem=st.booleans())
def test_fuzz_points(gw: Gateway, customer: str, points: int, key: str, reason: str, expires: Any, nanos: int,
                     redeem: bool) -> None:
    if redeem:
        rr = decision_pb2.RedeemPointsRequest(customer_id=customer, points=points, idempotency_key=key, reason=reason)
        call_and_check(gw, lambda: gw.decision.RedeemPoints(rr, metadata=APP, timeout=10))
        return
    request = decision_pb2.AwardPointsRequest(customer_id=customer, points=points, idempotency_key=key, reason=reason)
    if expires is not None:
        request.expires_at.seconds = expires
        request.expires_at.nanos = nanos if -(2**31) <= nanos < 2**31 else 0
    call_and_check(gw, lambda: gw.decision.AwardPoints(request, metadata=APP, timeout=10))
    # The authoritative balance is always the sum of the hub ledger.
    with gw.server.hub.db.transaction() as tx:
        rows = tx.execute("SELECT customer_id, SUM(points) FROM hub_ledger GROUP BY customer_id")
    for cust, total in rows:
        assert gw.server.hub.balance(cust) == int(total)


@FUZZ
@given(customer=ids, token=texts, amount=texts, currency=texts, key=texts,
       store=st.none() | texts, decision=st.none() | ids, offer=st.none() | ids)
def test_fuzz_record_payment(gw: Gateway, customer: str, token: str, amount: str, currency: str, key: str,
                             store: Any, decision: Any, offer: Any) -> None:
    request = decision_pb2.RecordPaymentRequest(customer_id=customer, payment_token=token, amount=amount,
                                                currency=currency, idempotency_key=key)
    for name, value in (("store_id", store), ("decision_id", decision), ("offer_id", offer)):
        if value is not None:
            setattr(request, name, value)
    call_and_check(gw, lambda: gw.decision.RecordPayment(request, metadata=APP, timeout=10))


@FUZZ
@given(customer=ids)
def test_fuzz_get_balance(gw: Gateway, customer: str) -> None:
    call_and_check(gw, lambda: gw.decision.GetBalance(decision_pb2.GetBalanceRequest(customer_id=customer),
                                                        metadata=APP, timeout=10))


METHODS = ["Decide", "RecordResponse", "AwardPoints", "RedeemPoints", "GetBalance", "RecordPayment"]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=st.sampled_from(METHODS), raw=st.binary(max_size=200))
def test_malformed_messages_get_a_status(gw: Gateway, method: str, raw: bytes) -> None:
    call = gw.channel.unary_unary(f"/nbo.v1.DecisionService/{method}")
    before = snapshot(gw)
    try:
        call(raw, metadata=APP, timeout=10)
        code = grpc.StatusCode.OK
    except grpc.RpcError as exc:
        code = exc.code()
    # Bytes that do not parse are refused INVALID_ARGUMENT (gateway/_decode_guard.py); bytes
    # that happen to parse are an ordinary request. Never UNKNOWN.
    assert code is not grpc.StatusCode.UNKNOWN
    if code is not grpc.StatusCode.OK:
        assert snapshot(gw) == before


def test_oversized_request_is_refused(gw: Gateway) -> None:
    before = snapshot(gw)
    with pytest.raises(grpc.RpcError) as info:
        gw.decision.Decide(decision_pb2.DecideRequest(customer_id="x" * (33 * 1024 * 1024), channel="pos"),
                           metadata=APP, timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert snapshot(gw) == before


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.tuples(st.booleans(), st.integers(-5, 10**13), st.text(max_size=70), st.binary(max_size=300)),
                       max_size=4))
def test_fuzz_publish(gw: Gateway, chunks: list[tuple[bool, int, str, bytes]]) -> None:
    def stream() -> Iterator[publish_pb2.PublishChunk]:
        for with_meta, size, sha, data in chunks:
            chunk = publish_pb2.PublishChunk(data=data)
            if with_meta:
                chunk.metadata.CopyFrom(publish_pb2.PublishMetadata(filename="f.zip", total_size=size, sha256=sha))
            yield chunk

    before = snapshot(gw)
    active = gw.server.engine.active  # type: ignore[union-attr]
    with pytest.raises(grpc.RpcError) as info:
        gw.publisher.PublishBundle(stream(), metadata=PUBLISHER, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert snapshot(gw) == before
    assert gw.server.engine.active is active  # type: ignore[union-attr]
    assert gw.server.hub.latest_bundle().version == 1  # type: ignore[union-attr]
