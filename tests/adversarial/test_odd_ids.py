"""Attack class: odd ids that wedge sync (issue 18, point 2).

An id with a trailing ``\\r``, a NUL, a zero-width space, a bidi override or surrounding
spaces used to be accepted by ``decide()``; the hub answered a balance for it, the device
refused that answer inside the transaction that acknowledges events, and nothing was acked
again (on PostgreSQL the hub failed with "text cannot contain NUL" and answered UNAVAILABLE
for ever). Now one id rule (``nbo.sdk.core.id_problem``) holds at every entry point — the
SDK, the gateway's RPCs, the events a device pushes — and a sync answer the device cannot
apply for one record is dead-lettered while everything else is acknowledged.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_helpers import (
    APP,
    DEVICE,
    DEVICE_TOKEN,
)
from nbo.sdk import Client, InputError, ManualClock, _sync
from nbo.sdk.core import BUNDLE_NAME_RE, ID_MAX, check_id, id_problem
from nbo.v1 import common_pb2, decision_pb2, sync_pb2

T0 = 1_700_000_000.0

ODD = {
    "trailing CR": "cust-1\r",
    "NUL": "cust\x001",
    "trailing LF": "cust-1\n",
    "tab": "cust\t1",
    "leading space": " cust-1",
    "trailing space": "cust-1 ",
    "zero-width space": "cust\u200b1",
    "byte-order mark": "\ufeffcust-1",
    "bidi override": "cust\u202e1",
    "line separator": "cust\u20281",
    "no-break space": "cust\u00a01",
    "escape": "cust\x1b[31m",
    "lone surrogate": "cust\ud8001",
    "private use": "cust\ue0001",
    "empty": "",
    "too long": "c" * (ID_MAX + 1),
}


@pytest.mark.parametrize("name", sorted(ODD))
def test_the_one_id_rule_refuses_every_odd_id(name: str) -> None:
    value = ODD[name]
    assert id_problem(value) is not None
    with pytest.raises(InputError) as info:
        check_id(value, "customer_id")
    assert info.value.field == "customer_id"
    assert value not in str(info.value) or not value


@pytest.mark.parametrize("value", ["cust-1", "Ünïcødé kunde", "客户-17", "a b", "x" * ID_MAX, "O'Brien #4"])
def test_ordinary_ids_keep_the_rule(value: str) -> None:
    assert id_problem(value) is None and check_id(value, "customer_id") == value


def _open(state: Path, pub: Path, device_id: str = "pos-1") -> Client:
    return Client.open(state, device_id=device_id, trusted_keys=[pub.read_bytes()], clock=ManualClock(T0))


@pytest.mark.parametrize("name", sorted(ODD))
def test_every_sdk_entry_point_refuses_odd_ids(tmp_path: Path, device_bundle: tuple[Path, Path], name: str) -> None:
    zip_path, pub = device_bundle
    value = ODD[name]
    with _open(tmp_path / "state", pub) as client:
        client.install_bundle(zip_path)
        decision = client.decide("c-ok", channel="pos")
        entry = client.award_points("c-ok", 10, idempotency_key="seed", reason="seed")
        calls = [
            lambda: client.decide(value, channel="pos"),
            lambda: client.decide(value, channel="pos", dry_run=True),
            lambda: client.record_response(value, decision.offers[0].offer_id, "accepted"),
            lambda: client.record_response(decision.decision_id, value, "accepted"),
            lambda: client.award_points(value, 1, idempotency_key="k1", reason="r"),
            lambda: client.award_points("c-ok", 1, idempotency_key=value, reason="r"),
            lambda: client.redeem_points(value, 1, idempotency_key="k2", reason="r"),
            lambda: client.reverse_points(value, idempotency_key="k3", reason="r"),
            lambda: client.reverse_points(entry.entry_id, idempotency_key=value, reason="r"),
            lambda: client.points_balance(value),
            lambda: client.record_purchase(value, amount="1", idempotency_key="k4"),
            lambda: client.record_payment(value, payment_token="tok", amount="1.00", currency="EUR",
                                          idempotency_key="k5"),
            lambda: client.record_payment("c-ok", payment_token="tok", amount="1.00", currency="EUR",
                                          idempotency_key="k6", store_id=value),
        ]
        before = client.outbox_summary()["pending"]
        for i, call in enumerate(calls):
            with pytest.raises(InputError):
                call()
            assert client.outbox_summary()["pending"] == before, i
    with pytest.raises(InputError):
        _open(tmp_path / "other", pub, device_id=value)


# -- through the gateway, on SQLite and on PostgreSQL ------------------------------------------------

# What gRPC can carry (strings on the wire are UTF-8: no lone surrogate).
WIRE = {k: v for k, v in ODD.items() if k != "lone surrogate"}


@pytest.mark.postgres
def test_every_rpc_refuses_odd_ids(hub_gateway: Any) -> None:
    gw = hub_gateway.gateway
    d = gw.decision
    for name, value in WIRE.items():
        requests = [
            (d.Decide, decision_pb2.DecideRequest(customer_id=value, channel="pos")),
            (d.AwardPoints, decision_pb2.AwardPointsRequest(customer_id=value, points=1, idempotency_key="k",
                                                             reason="r")),
            (d.AwardPoints, decision_pb2.AwardPointsRequest(customer_id="c-ok", points=1, idempotency_key=value,
                                                             reason="r")),
            (d.RedeemPoints, decision_pb2.RedeemPointsRequest(customer_id=value, points=1, idempotency_key="k",
                                                               reason="r")),
            (d.GetBalance, decision_pb2.GetBalanceRequest(customer_id=value)),
            (d.RecordResponse, decision_pb2.RecordResponseRequest(decision_id=value, offer_id="o",
                                                                   outcome=decision_pb2.OUTCOME_ACCEPTED)),
            (d.RecordPayment, decision_pb2.RecordPaymentRequest(customer_id=value, payment_token="tok",
                                                                 amount="1.00", currency="EUR",
                                                                 idempotency_key=str(uuid.uuid4()))),
        ]
        for method, request in requests:
            with pytest.raises(grpc.RpcError) as info:
                method(request, metadata=APP)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, info.value.details())
        for bundle_call in (
            lambda v=value: list(gw.sync.DownloadBundle(sync_pb2.DownloadBundleRequest(name=v, version=1),
                                                        metadata=DEVICE)),
            lambda v=value: gw.sync.GetLatestBundle(sync_pb2.GetLatestBundleRequest(name=v), metadata=DEVICE),
        ):
            with pytest.raises(grpc.RpcError) as info:
                bundle_call()
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, info.value.details())
    # the gateway is still answering, and the hub holds nothing of them
    assert gw.decision.GetBalance(decision_pb2.GetBalanceRequest(customer_id="c-ok"), metadata=APP).balance == 0


def _old_sdk_event(client: Client, type_: str, payload: dict[str, Any]) -> None:
    """What an older SDK (which accepted any id) left in the outbox."""
    with client._store.transaction(durable=True) as tx:
        tx.append_event(type_, payload)


def _points(customer: str, pts: int = 5) -> dict[str, Any]:
    return {"entry_id": str(uuid.uuid4()), "customer_id": customer, "kind": "award", "points": pts, "reason": "r",
            "idempotency_key": str(uuid.uuid4()), "created_at": T0, "expires_at": None, "reverses": None}


@pytest.mark.postgres
@pytest.mark.parametrize("odd", ["cust-1\r", "cust\x001", "cust\u200b1"], ids=["CR", "NUL", "ZWSP"])
def test_an_odd_id_left_by_an_older_sdk_never_wedges_sync(hub_gateway: Any, tmp_path: Path, kit: Any,
                                                          odd: str) -> None:
    gw = hub_gateway.gateway
    with Client.open(tmp_path / "dev", device_id="pos-1", trusted_keys=[kit.pub.read_bytes()]) as client:
        client.award_points("c-good", 7, idempotency_key="before", reason="r")
        _old_sdk_event(client, "points", _points(odd))
        _old_sdk_event(client, "decision", {"decision_id": str(uuid.uuid4()), "customer_id": odd, "channel": "pos",
                                            "bundle_name": "small", "bundle_version": 1, "strategy": "s",
                                            "offers": []})
        client.award_points("c-good", 3, idempotency_key="after", reason="r")
        target = f"127.0.0.1:{gw.port}"
        report = client.sync(target, token=DEVICE_TOKEN, download=False)
        assert report.acked_through == 4 and report.dead_lettered == 2, report
        assert client.pending_events() == 0
        assert client.points_balance("c-good") == 10
        dead = client.outbox_events(status="dead_lettered")
        assert [e["seq"] for e in dead] == [2, 3]
        assert all("customer_id" in e["reason"] for e in dead)
        # and sync keeps working: money recorded afterwards reaches the hub
        client.award_points("c-good", 1, idempotency_key="later", reason="r")
        assert client.sync(target, token=DEVICE_TOKEN, download=False).acked_through == 5
    assert gw.server.hub.balance("c-good") == 11
    assert gw.server.hub.acked_through("pos-1") == 5


@pytest.mark.postgres
def test_pushed_events_with_odd_ids_are_refused_one_by_one(hub_gateway: Any) -> None:
    gw = hub_gateway.gateway
    events = []
    for seq, value in enumerate(WIRE.values(), start=1):
        events.append(sync_pb2.Event(event_id=str(uuid.uuid4()), device_id="pos-1", seq=seq, type="points",
                                     created_at=T0, payload_json=json.dumps(_points(value))))
    good = len(events) + 1
    events.append(sync_pb2.Event(event_id=str(uuid.uuid4()), device_id="pos-1", seq=good, type="points",
                                 created_at=T0, payload_json=json.dumps(_points("c-fine", 4))))
    answer = gw.sync.PushEvents(sync_pb2.PushEventsRequest(device_id="pos-1", events=events), metadata=DEVICE)
    assert answer.acked_through == good
    assert sorted(r.seq for r in answer.rejected) == list(range(1, good))
    assert {b.customer_id: b.balance for b in answer.balances} == {"c-fine": 4}


def test_an_answer_the_device_cannot_apply_is_dead_lettered_and_the_rest_acked(
    tmp_path: Path, device_bundle: tuple[Path, Path]
) -> None:
    """An older hub (which let the odd id in) answers a balance for it: the device keeps going."""
    _, pub = device_bundle
    with _open(tmp_path / "state", pub) as client:
        for i in range(3):
            client.award_points("c-good", 5, idempotency_key=f"k{i}", reason="r")
        answer = sync_pb2.PushEventsResponse(acked_through=3, balances=[
            common_pb2.Balance(customer_id="cust-1\r", balance=40),
            common_pb2.Balance(customer_id="cust\x001", balance=1),
            common_pb2.Balance(customer_id="4111 1111 1111 1111", balance=1),
            common_pb2.Balance(customer_id="c-good", balance=15),
        ])
        dead, applied, refused = _sync._apply_answer(client, answer)
        assert (dead, applied, refused) == (0, 1, 3)
        assert client.pending_events() == 0 and client.acked_through() == 3
        assert client.points_balance("c-good") == 15
        with client._store.read() as tx:
            rows = tx.execute("SELECT kind, subject, acked_through, reason FROM answer_dead_letter ORDER BY reason")
        assert len(rows) == 3 and {r[0] for r in rows} == {"balance"} and {r[2] for r in rows} == {3}
        assert any(r[1] == "card data" for r in rows)
        assert all(r[1] == "card data" or r[1].startswith("sha256:") for r in rows)
        assert all("customer_id" in r[3] for r in rows)
        assert client.outbox_summary()["answers_dead_lettered"] == 3
    blob = b"".join(p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file())
    assert b"4111 1111 1111 1111" not in blob and b"cust\x001" not in blob



def test_a_bundle_name_with_a_trailing_newline_is_not_a_bundle_name() -> None:
    # "$" matches before a final "\n": the pattern ends with \Z, so every user of it refuses one.
    assert BUNDLE_NAME_RE.match("small") and not BUNDLE_NAME_RE.match("small\n")
