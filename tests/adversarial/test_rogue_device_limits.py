"""Attack class: a rogue device pushing values past the SDK's limits (issue 18, points 7 and 9).

The hub used to accept 2^62 points in one event (the SDK caps an entry at 10^9) and failed
with INTERNAL on the third such event — the pushing device wedged. Amounts such as "1_000",
full-width digits or " 1.00" were read as numbers. Now the hub checks pushed events with the
SDK's own limits and grammar (``nbo.sdk.core``): such an event is refused with a reason, the
rest of its batch is stored and acknowledged, and the SDK refuses the same values at its
entry points.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from bundle_fixtures import make_keys
from gateway_helpers import APP, DEVICE, Gateway
from nbo.sdk import Client, InputError, _vocabulary
from nbo.sdk.core import AMOUNT_MAX, POINTS_MAX, QUANTITY_MAX
from nbo.v1 import decision_pb2, sync_pb2

T0 = 1_700_000_000.0

BAD_AMOUNTS = ["1_000", " 1.00", "1.00 ", "\uff11\uff10", "\u0661\u0660", "1e3", "1E+2", "+1", "-1", "1.", ".5",
               "NaN", "Infinity", "0x10", "1,000", "0", "", "1\u00a0000"]


def _points(customer: str, pts: int, kind: str = "award") -> dict[str, Any]:
    return {"entry_id": str(uuid.uuid4()), "customer_id": customer, "kind": kind, "points": pts, "reason": "r",
            "idempotency_key": str(uuid.uuid4()), "created_at": T0, "expires_at": None, "reverses": None}


def _purchase(**over: Any) -> dict[str, Any]:
    return {"purchase_id": str(uuid.uuid4()), "customer_id": "c-buy", "amount": "12.50", "quantity": 1,
            "timestamp": T0, "idempotency_key": str(uuid.uuid4()), **over}


def _payment(**over: Any) -> dict[str, Any]:
    return {"payment_id": str(uuid.uuid4()), "customer_id": "c-pay", "payment_token": "tok_ok", "amount": "12.50",
            "currency": "EUR", "store_id": None, "decision_id": None, "offer_id": None,
            "idempotency_key": str(uuid.uuid4()), **over}


class Pusher:
    """A rogue terminal speaking the wire protocol directly, seq by seq."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.seq = 0

    def push(self, *events: tuple[str, dict[str, Any]]) -> sync_pb2.PushEventsResponse:
        batch = []
        for type_, payload in events:
            self.seq += 1
            batch.append(sync_pb2.Event(event_id=str(uuid.uuid4()), device_id="pos-1", seq=self.seq, type=type_,
                                        created_at=T0, payload_json=json.dumps(payload)))
        answer = self.gw.sync.PushEvents(sync_pb2.PushEventsRequest(device_id="pos-1", events=batch),
                                         metadata=DEVICE, timeout=30)
        assert answer.acked_through == self.seq  # the device is never wedged
        return answer


@pytest.mark.postgres
def test_points_past_the_sdk_cap_are_refused_event_by_event(hub_gateway: Any) -> None:
    gw = hub_gateway.gateway
    rogue = Pusher(gw)
    for _ in range(3):  # the third used to overflow the hub's sum: INTERNAL, device wedged
        answer = rogue.push(("points", _points("c-rogue", 2**62)), ("points", _points("c-fine", 1)))
        assert [r.seq for r in answer.rejected] == [rogue.seq - 1]
        assert "payload.points" in answer.rejected[0].reason
    for pts, kind in ((POINTS_MAX + 1, "award"), (-(POINTS_MAX + 1), "redeem"), (-(2**62), "redeem"),
                      (2**63 - 1, "reverse")):
        answer = rogue.push(("points", _points("c-rogue", pts, kind)))
        assert len(answer.rejected) == 1, (pts, kind)
    answer = rogue.push(("points", _points("c-rogue", POINTS_MAX)))  # the cap itself is fine
    assert not answer.rejected
    assert gw.server.hub.balance("c-rogue") == POINTS_MAX
    assert gw.server.hub.balance("c-fine") == 3


@pytest.mark.postgres
def test_amounts_and_quantities_past_the_sdk_grammar_are_refused(hub_gateway: Any) -> None:
    gw = hub_gateway.gateway
    rogue = Pusher(gw)
    for amount in BAD_AMOUNTS:
        answer = rogue.push(("purchase", _purchase(amount=amount)), ("payment", _payment(amount=amount)),
                            ("payment", _payment()))
        assert [r.seq for r in answer.rejected] == [rogue.seq - 2, rogue.seq - 1], amount
        assert all("payload.amount" in r.reason for r in answer.rejected), amount
    for over in ({"quantity": QUANTITY_MAX + 1}, {"quantity": 0}, {"quantity": 2**62},
                 {"amount": str(AMOUNT_MAX + 1)}, {"amount": "1.23456"}):
        answer = rogue.push(("purchase", _purchase(**over)))
        assert len(answer.rejected) == 1, over
    answer = rogue.push(("payment", _payment(amount="12.505")), ("payment", _payment(amount="5", currency="JPY")),
                        ("payment", _payment(amount="5.5", currency="JPY")))
    assert [r.seq for r in answer.rejected] == [rogue.seq - 2, rogue.seq]  # more places than the currency has
    assert not rogue.push(("purchase", _purchase(amount="1000.5", quantity=QUANTITY_MAX))).rejected
    stored = gw.server.hub.events(device_id="pos-1", status="ok")
    assert {json.loads(e["payload"])["amount"] for e in stored} == {"12.50", "1000.5", "5"}


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
def test_the_sdk_refuses_the_same_amounts(tmp_path: Path, amount: str) -> None:
    _, pub = make_keys(tmp_path / "keys")
    with Client.open(tmp_path / "state", device_id="pos-1", trusted_keys=[pub.read_bytes()]) as client:
        with pytest.raises(InputError) as info:
            client.record_purchase("c", amount=amount, idempotency_key="p")
        assert info.value.field == "amount"
        with pytest.raises(InputError) as info:
            client.record_payment("c", payment_token="tok", amount=amount, currency="EUR", idempotency_key="q")
        assert info.value.field == "amount"
        client.record_purchase("c", amount="12.50", idempotency_key="ok")
        client.record_payment("c", payment_token="tok", amount=Decimal("12.5"), currency="EUR", idempotency_key="r")
        assert client.outbox_summary()["pending"] == 2


def test_the_limits_are_one_definition() -> None:
    from nbo.gateway import _hub
    from nbo.sdk import _ledger, _records

    assert _ledger.POINTS_MAX is _vocabulary.POINTS_MAX == 10**9
    assert _records.QUANTITY_MAX is _hub.QUANTITY_MAX is _vocabulary.QUANTITY_MAX
    assert _hub.entry_from_payload is _ledger.entry_from_payload  # the hub reads points as the SDK does


@pytest.mark.postgres
def test_the_gateway_refuses_the_same_amounts(hub_gateway: Any) -> None:
    gw = hub_gateway.gateway
    for amount in BAD_AMOUNTS:
        with pytest.raises(grpc.RpcError) as info:
            gw.decision.RecordPayment(decision_pb2.RecordPaymentRequest(
                customer_id="c-app", payment_token="tok_ok", amount=amount, currency="EUR",
                idempotency_key=str(uuid.uuid4())), metadata=APP, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "amount" in (info.value.details() or "")
