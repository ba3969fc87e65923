"""DecisionService over a real gateway on loopback, on the SQLite hub and on PostgreSQL.

Every RPC, every error mapping of the proto comments, app events in the hub's event log with
gapless seqs, app points counting in the hub's authoritative ledger together with terminal
points, card data refused and absent from disk and logs, metrics, and a hot swap under load.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from bundle_fixtures import small_catalog
from gateway_helpers import (
    APP,
    DEVICE,
    Gateway,
    bundle_kit,
    config_data,
    publish,
    running_gateway,
)
from google.protobuf import struct_pb2, timestamp_pb2
from nbo.gateway._db import open_database
from nbo.v1 import decision_pb2, sync_pb2
from sync_helpers import points, postgres_url, unique_schema

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    kit = bundle_kit(tmp_path_factory.mktemp("kit"))
    catalog = small_catalog()
    catalog["exploration"] = {"epsilon": 0.0}  # deterministic rankings for the assertions below
    kit.v1 = kit.bundle(1, catalog=catalog)
    kit.v2 = kit.bundle(2, catalog=catalog)
    return kit


@pytest.fixture(scope="module", params=BACKENDS)
def gw(request: pytest.FixtureRequest, kit: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway per backend with bundle v1 published; tests use their own customer ids."""
    state = tmp_path_factory.mktemp(f"gw-{request.param}")
    url = schema = None
    if request.param == "postgresql":
        url, schema = postgres_url(), unique_schema()
    data = config_data(trusted_key=kit.pub, hub_db=url, extra={"metrics": {"port": 0}})
    try:
        with running_gateway(state, data, hub_schema=schema) as gateway:
            assert publish(gateway, kit.v1).accepted
            yield gateway
    finally:
        if url is not None:
            db = open_database(url, schema=schema)
            db.drop_schema()  # type: ignore[attr-defined]
            db.close()


def cid() -> str:
    return f"cust-{uuid.uuid4().hex[:12]}"


def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details() or ""


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(data)
    return s


def app_events(gw: Gateway) -> list[dict[str, Any]]:
    return gw.server.hub.events(device_id="app")


# -- Decide ---------------------------------------------------------------------------------------


def test_decide_ranks_offers_from_the_published_bundle(gw: Gateway) -> None:
    customer = cid()
    before = len(app_events(gw))
    response = gw.decision.Decide(decision_pb2.DecideRequest(customer_id=customer, channel="pos"), metadata=APP)
    assert response.customer_id == customer and response.channel == "pos"
    assert response.bundle_name == "small" and response.bundle_version == 1
    assert uuid.UUID(response.decision_id)
    assert 1 <= len(response.offers) <= 3
    assert [o.rank for o in response.offers] == list(range(1, len(response.offers) + 1))
    assert response.offers[0].offer_id == "PRIVACY_NOTICE" and response.offers[0].mandatory  # mandatory first
    scored = [o for o in response.offers if not o.mandatory]
    assert [o.score for o in scored] == sorted((o.score for o in scored), reverse=True)
    for offer in scored:
        assert offer.score == pytest.approx(offer.propensity * offer.value * offer.weight * offer.lever, rel=1e-5)
    assert not response.excluded  # explain was off
    assert response.created_at.seconds > 1_700_000_000
    events = app_events(gw)
    assert len(events) == before + 1
    payload = json.loads(events[-1]["payload"])
    assert events[-1]["type"] == "decision" and payload["decision_id"] == response.decision_id


def test_decide_options_limit_profile_context_explain(gw: Gateway) -> None:
    response = gw.decision.Decide(
        decision_pb2.DecideRequest(
            customer_id=cid(), channel="app", limit=1, explain=True,
            context=struct({"store": "S12", "basket_value": 41.5, "hour": 20}),
            profile=struct({"age": 16, "lifecycle_stage": "active", "frequency": 7}),
        ),
        metadata=APP,
    )
    assert len(response.offers) == 1
    excluded = {(e.offer_id, e.rule_id) for e in response.excluded}
    assert ("CARD_GOLD", "adults_only") in excluded  # the profile's age reached the rule
    for exclusion in response.excluded:
        assert exclusion.kind in ("business", "communication", "hygiene")
    # A hygiene rule removes everything scored: the fallback fills the slot.
    response = gw.decision.Decide(
        decision_pb2.DecideRequest(customer_id=cid(), channel="pos", explain=True,
                                   profile=struct({"do_not_contact": True})),
        metadata=APP,
    )
    assert {e.rule_id for e in response.excluded} >= {"do_not_contact"}
    assert all(o.mandatory or o.fallback for o in response.offers)


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        ({"customer_id": "", "channel": "pos"}, "customer_id"),
        ({"customer_id": "x" * 5000, "channel": "pos"}, "customer_id"),
        ({"customer_id": "c", "channel": ""}, "channel"),
        ({"customer_id": "c", "channel": "fax"}, "channel"),
        ({"customer_id": "c", "channel": "pos", "limit": 0}, "limit"),
        ({"customer_id": "c", "channel": "pos", "limit": 101}, "limit"),
        ({"customer_id": "c", "channel": "pos", "profile": struct({"frequency": {"n": 1}})}, "profile.frequency"),
        ({"customer_id": "c", "channel": "pos", "profile": struct({"monetary": float("nan")})}, "profile.monetary"),
        ({"customer_id": "c", "channel": "pos", "context": struct({"basket": float("inf")})}, "context.basket"),
    ],
)
def test_decide_bad_arguments_name_the_field(gw: Gateway, request_kwargs: dict[str, Any], field: str) -> None:
    before = len(app_events(gw))
    code, details = code_of(lambda: gw.decision.Decide(decision_pb2.DecideRequest(**request_kwargs), metadata=APP))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details
    assert len(app_events(gw)) == before


def test_decide_without_a_bundle_is_failed_precondition(kit: Any, tmp_path: Path) -> None:
    with running_gateway(tmp_path, config_data(trusted_key=kit.pub)) as fresh:
        code, details = code_of(
            lambda: fresh.decision.Decide(decision_pb2.DecideRequest(customer_id="c", channel="pos"), metadata=APP))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "bundle" in details


def test_decide_honours_deadlines(gw: Gateway) -> None:
    # A deadline already (nearly) over: the call either made it or ends DEADLINE_EXCEEDED — no other
    # status, no hang. Over 30 tries some must run out (the exact split depends on timing).
    codes = []
    for _ in range(30):
        try:
            gw.decision.Decide(decision_pb2.DecideRequest(customer_id=cid(), channel="pos"), metadata=APP,
                               timeout=0.000001)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}
    assert grpc.StatusCode.DEADLINE_EXCEEDED in codes


# -- RecordResponse --------------------------------------------------------------------------------


def test_record_response_and_its_errors(gw: Gateway) -> None:
    customer = cid()
    decision = gw.decision.Decide(decision_pb2.DecideRequest(customer_id=customer, channel="pos"), metadata=APP)
    offer = decision.offers[-1].offer_id
    echo = gw.decision.RecordResponse(
        decision_pb2.RecordResponseRequest(decision_id=decision.decision_id, offer_id=offer,
                                           outcome=decision_pb2.OUTCOME_DECLINED),
        metadata=APP,
    )
    assert (echo.decision_id, echo.offer_id, echo.outcome) == (decision.decision_id, offer, decision_pb2.OUTCOME_DECLINED)
    last = app_events(gw)[-1]
    assert last["type"] == "response" and json.loads(last["payload"])["outcome"] == "declined"
    # The decline now excludes that offer (contact policy no_repeat_after_decline), via the hub store.
    again = gw.decision.Decide(decision_pb2.DecideRequest(customer_id=customer, channel="pos", explain=True),
                               metadata=APP)
    assert offer not in {o.offer_id for o in again.offers}
    assert (offer, "no_repeat_after_decline") in {(e.offer_id, e.rule_id) for e in again.excluded}

    before = len(app_events(gw))
    cases = [
        (decision_pb2.RecordResponseRequest(decision_id=str(uuid.uuid4()), offer_id=offer, outcome=1),
         grpc.StatusCode.NOT_FOUND, "decision"),
        (decision_pb2.RecordResponseRequest(decision_id=decision.decision_id, offer_id="NOPE", outcome=1),
         grpc.StatusCode.INVALID_ARGUMENT, "offer"),
        (decision_pb2.RecordResponseRequest(decision_id=decision.decision_id, offer_id=offer, outcome=0),
         grpc.StatusCode.INVALID_ARGUMENT, "outcome"),
        (decision_pb2.RecordResponseRequest(decision_id=decision.decision_id, offer_id=offer, outcome=9),
         grpc.StatusCode.INVALID_ARGUMENT, "outcome"),
    ]
    for request, expected, word in cases:
        code, details = code_of(lambda request=request: gw.decision.RecordResponse(request, metadata=APP))
        assert code == expected, (request, details)
        assert word in details
    assert len(app_events(gw)) == before


# -- ledger ---------------------------------------------------------------------------------------


def test_award_redeem_balance_idempotency(gw: Gateway) -> None:
    customer = cid()
    assert gw.decision.GetBalance(decision_pb2.GetBalanceRequest(customer_id=customer), metadata=APP).balance == 0
    award = decision_pb2.AwardPointsRequest(customer_id=customer, points=100, idempotency_key=f"a-{customer}",
                                            reason="welcome bonus")
    first = gw.decision.AwardPoints(award, metadata=APP)
    assert first.balance == 100 and first.entry.kind == "award" and first.entry.points == 100
    assert not first.entry.HasField("expires_at")
    repeat = gw.decision.AwardPoints(award, metadata=APP)
    assert repeat.entry == first.entry and repeat.balance == 100
    redeem = decision_pb2.RedeemPointsRequest(customer_id=customer, points=30, idempotency_key=f"r-{customer}",
                                              reason="coffee")
    spent = gw.decision.RedeemPoints(redeem, metadata=APP)
    assert spent.entry.points == -30 and spent.balance == 70
    assert gw.decision.RedeemPoints(redeem, metadata=APP).entry == spent.entry
    code, details = code_of(lambda: gw.decision.RedeemPoints(
        decision_pb2.RedeemPointsRequest(customer_id=customer, points=71, idempotency_key=f"r2-{customer}",
                                         reason="too much"), metadata=APP))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "70" in details
    assert gw.decision.GetBalance(decision_pb2.GetBalanceRequest(customer_id=customer), metadata=APP).balance == 70
    assert gw.server.hub.balance(customer) == 70  # the hub's authoritative ledger holds the app points
    seqs = [e["seq"] for e in app_events(gw)]
    assert seqs == list(range(1, len(seqs) + 1))  # gapless


def test_award_with_expiry(gw: Gateway) -> None:
    customer = cid()
    future = timestamp_pb2.Timestamp()
    future.FromDatetime(datetime.now(UTC) + timedelta(days=30))
    response = gw.decision.AwardPoints(
        decision_pb2.AwardPointsRequest(customer_id=customer, points=5, idempotency_key=f"e-{customer}",
                                        reason="promo", expires_at=future), metadata=APP)
    assert response.entry.expires_at.seconds == future.seconds
    past = timestamp_pb2.Timestamp()
    past.FromDatetime(datetime.now(UTC) - timedelta(days=1))
    code, details = code_of(lambda: gw.decision.AwardPoints(
        decision_pb2.AwardPointsRequest(customer_id=customer, points=5, idempotency_key=f"e2-{customer}",
                                        reason="promo", expires_at=past), metadata=APP))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "expires_at" in details


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"customer_id": "", "points": 1, "idempotency_key": "k", "reason": "r"}, "customer_id"),
        ({"customer_id": "c", "points": 0, "idempotency_key": "k", "reason": "r"}, "points"),
        ({"customer_id": "c", "points": -5, "idempotency_key": "k", "reason": "r"}, "points"),
        ({"customer_id": "c", "points": 2**62, "idempotency_key": "k", "reason": "r"}, "points"),
        ({"customer_id": "c", "points": 1, "idempotency_key": "", "reason": "r"}, "idempotency_key"),
        ({"customer_id": "c", "points": 1, "idempotency_key": "k", "reason": ""}, "reason"),
    ],
)
def test_points_bad_arguments(gw: Gateway, kwargs: dict[str, Any], field: str) -> None:
    before = len(app_events(gw))
    for call, request in ((gw.decision.AwardPoints, decision_pb2.AwardPointsRequest(**kwargs)),
                          (gw.decision.RedeemPoints, decision_pb2.RedeemPointsRequest(**kwargs))):
        code, details = code_of(lambda call=call, request=request: call(request, metadata=APP))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details
    assert len(app_events(gw)) == before


def test_balance_is_authoritative_across_terminals_and_app(gw: Gateway) -> None:
    customer = cid()
    terminal_award = points(customer, 50)
    push = sync_pb2.PushEventsRequest(device_id="pos-1", events=[
        sync_pb2.Event(event_id=str(uuid.uuid4()), device_id="pos-1", seq=gw.server.hub.acked_through("pos-1") + 1,
                       type="points", created_at=terminal_award["created_at"],
                       payload_json=json.dumps(terminal_award)),
    ])
    pushed = gw.sync.PushEvents(push, metadata=DEVICE)
    assert {b.customer_id: b.balance for b in pushed.balances}[customer] == 50
    app = gw.decision.AwardPoints(decision_pb2.AwardPointsRequest(
        customer_id=customer, points=25, idempotency_key=f"a-{customer}", reason="app"), metadata=APP)
    assert app.balance == 75
    # The terminal's points can be redeemed through the app: the redeem is checked against the hub.
    spent = gw.decision.RedeemPoints(decision_pb2.RedeemPointsRequest(
        customer_id=customer, points=60, idempotency_key=f"r-{customer}", reason="app"), metadata=APP)
    assert spent.balance == 15
    assert gw.decision.GetBalance(decision_pb2.GetBalanceRequest(customer_id=customer), metadata=APP).balance == 15
    # A terminal's next push learns the balance that includes the app's entries.
    terminal_redeem = points(customer, -5)
    push2 = sync_pb2.PushEventsRequest(device_id="pos-1", events=[
        sync_pb2.Event(event_id=str(uuid.uuid4()), device_id="pos-1", seq=gw.server.hub.acked_through("pos-1") + 1,
                       type="points", created_at=terminal_redeem["created_at"],
                       payload_json=json.dumps(terminal_redeem)),
    ])
    assert {b.customer_id: b.balance for b in gw.sync.PushEvents(push2, metadata=DEVICE).balances}[customer] == 10


# -- payments -------------------------------------------------------------------------------------


def test_record_payment_and_idempotency(gw: Gateway) -> None:
    customer = cid()
    decision = gw.decision.Decide(decision_pb2.DecideRequest(customer_id=customer, channel="pos"), metadata=APP)
    request = decision_pb2.RecordPaymentRequest(
        customer_id=customer, payment_token="tok_9f8e7d", amount="19.9", currency="eur",
        idempotency_key=f"p-{customer}", store_id="S12", decision_id=decision.decision_id,
        offer_id=decision.offers[0].offer_id)
    first = gw.decision.RecordPayment(request, metadata=APP).payment
    assert first.amount == "19.90" and first.currency == "EUR" and first.store_id == "S12"
    assert first.decision_id == decision.decision_id and first.offer_id == decision.offers[0].offer_id
    assert gw.decision.RecordPayment(request, metadata=APP).payment == first
    last = app_events(gw)[-1]
    assert last["type"] == "payment" and json.loads(last["payload"])["payment_id"] == first.payment_id
    plain = gw.decision.RecordPayment(decision_pb2.RecordPaymentRequest(
        customer_id=customer, payment_token="tok_2", amount="5", currency="USD", idempotency_key=f"p2-{customer}"),
        metadata=APP).payment
    assert not plain.HasField("store_id") and not plain.HasField("decision_id")


CARD = "4111 1111 1111 1111"


@pytest.mark.parametrize("field", ["payment_token", "store_id", "customer_id", "idempotency_key"])
def test_card_numbers_are_refused_and_never_stored_or_logged(
    gw: Gateway, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    values = {"customer_id": cid(), "payment_token": "tok_ok", "amount": "3.00", "currency": "EUR",
              "idempotency_key": f"card-{uuid.uuid4()}", "store_id": "S1"}
    values[field] = CARD
    before = len(app_events(gw))
    with caplog.at_level(logging.DEBUG):
        code, details = code_of(lambda: gw.decision.RecordPayment(
            decision_pb2.RecordPaymentRequest(**values), metadata=APP))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details
    assert CARD not in details and "4111111111111111" not in details
    assert len(app_events(gw)) == before
    assert CARD not in caplog.text and "4111111111111111" not in caplog.text
    for path in gw.state_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert CARD.encode() not in data and b"4111111111111111" not in data, path


def test_cvv_field_and_bad_amounts(gw: Gateway) -> None:
    base = {"customer_id": cid(), "payment_token": "tok_ok", "currency": "EUR"}
    for amount, word in (("abc", "amount"), ("-1", "amount"), ("1e400", "amount"), ("", "amount")):
        code, details = code_of(lambda amount=amount: gw.decision.RecordPayment(decision_pb2.RecordPaymentRequest(
            **base, amount=amount, idempotency_key=str(uuid.uuid4())), metadata=APP))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and word in details, amount
    code, details = code_of(lambda: gw.decision.RecordPayment(decision_pb2.RecordPaymentRequest(
        **{**base, "currency": "XXQ"}, amount="1.00", idempotency_key=str(uuid.uuid4())), metadata=APP))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "currency" in details


# -- metrics and hot swap --------------------------------------------------------------------------


def test_metrics_endpoint_counts_decisions_and_errors(gw: Gateway) -> None:
    gw.decision.Decide(decision_pb2.DecideRequest(customer_id=cid(), channel="pos"), metadata=APP)
    code_of(lambda: gw.decision.GetBalance(decision_pb2.GetBalanceRequest(customer_id=""), metadata=APP))
    # A terminal pushes an event created an hour ago: the sync lag shows it.
    old = points(cid(), 5, created_at=time.time() - 3600)
    gw.sync.PushEvents(sync_pb2.PushEventsRequest(device_id="pos-1", events=[sync_pb2.Event(
        event_id=str(uuid.uuid4()), device_id="pos-1", seq=gw.server.hub.acked_through("pos-1") + 1, type="points",
        created_at=old["created_at"], payload_json=json.dumps(old))]), metadata=DEVICE)
    assert gw.server.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{gw.server.metrics_port}/metrics", timeout=5).read().decode()
    lag = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("nbo_sync_lag_seconds "))
    assert 3590 < lag < 3700
    assert 'nbo_events_ingested_total{source="device"}' in text
    assert 'nbo_decisions_total{bundle="small:1"}' in text
    assert "nbo_decide_latency_seconds_bucket" in text
    assert 'nbo_rpc_errors_total{code="INVALID_ARGUMENT",method="DecisionService/GetBalance"}' in text
    assert 'nbo_events_ingested_total{source="app"}' in text
    assert "nbo_sync_lag_seconds" in text and "nbo_bundle_version 1.0" in text


def test_hot_swap_under_concurrent_decide_load(kit: Any, tmp_path: Path) -> None:
    with running_gateway(tmp_path, config_data(trusted_key=kit.pub)) as g:
        publish(g, kit.v1)
        stop = threading.Event()
        failures: list[BaseException] = []
        versions: list[int] = []
        lock = threading.Lock()

        def load() -> None:
            stub = g.decision
            while not stop.is_set():
                try:
                    r = stub.Decide(decision_pb2.DecideRequest(customer_id=cid(), channel="pos"), metadata=APP,
                                    timeout=20)
                    with lock:
                        versions.append(r.bundle_version)
                except BaseException as exc:  # every failure counts
                    failures.append(exc)

        threads = [threading.Thread(target=load) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        try:
            while len(versions) < 20 and not failures and time.monotonic() < deadline:
                stop.wait(0.01)
            response = publish(g, kit.v2)
            assert response.accepted and response.version == 2
            seen = len(versions)
            while len(versions) < seen + 20 and not failures and time.monotonic() < deadline:
                stop.wait(0.01)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert not failures
        assert versions[0] == 1 and versions[-1] == 2
        # Once a call saw v2, no later call went back to v1 (per completion order, allowing in-flight).
        assert set(versions) == {1, 2}
