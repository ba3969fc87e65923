"""Attack class: card data smuggled into what the device or the hub keeps (issue 18, point 1).

A card number or a CVV, disguised every way a person or a rogue terminal might (grouped by any
separator, glued to a CVV or an expiry, full-width, split by zero-width or thin spaces, behind
a label such as "cvv is"), offered in every field of every entry point: the SDK's calls, the
gateway's RPCs, and events a device pushes to the hub. Each is refused naming only the field,
and afterwards no byte of state.sqlite, its -wal, the hub database (SQLite, and PostgreSQL when
the suite has it) or the captured logs holds the digits.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from bundle_fixtures import make_bundle, make_keys, make_model, small_catalog
from careless_bundles import recatalog
from gateway_helpers import APP, DEVICE, Gateway
from google.protobuf import struct_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nbo.gateway import HubStore
from nbo.gateway._hub import IncomingEvent
from nbo.model_export import validate_catalog
from nbo.sdk import BundleError, CatalogError, Client, InputError, ManualClock, PaymentDataError
from nbo.sdk.core import check_id, find_card_data, is_card_data
from nbo.v1 import decision_pb2, sync_pb2

T0 = 1_700_000_000.0


def luhn_complete(body: str) -> str:
    """``body`` plus the check digit that makes it pass Luhn."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return body + str((10 - total % 10) % 10)


PAN = "4111111111111111"

# Every disguise the adversarial pass used, and a few more.
DISGUISED = [
    PAN,
    "4111 1111 1111 1111",
    "tok_4111111111111111",
    "4111111111111111123",          # the CVV glued on (19 digits)
    "41111111111111111229",         # the expiry glued on (20 digits)
    "12294111111111111111",         # the expiry in front
    "4111111111111111 123",
    "4111    1111    1111    1111",  # four spaces
    "4111.1111.1111.1111",
    "4111_1111_1111_1111",
    "4111/1111/1111/1111",
    "4111,1111,1111,1111",
    "4111-1111-1111-1111",
    "4111\u200b1111\u200b1111\u200b1111",   # zero-width space
    "4111\u20091111\u20091111\u20091111",   # thin space
    "4111\u200d1111\u00ad1111\ufeff1111",   # zero-width joiner, soft hyphen, BOM
    "\uff14\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11",
    "4\u03021\u03021\u03021111111111111",  # combining marks between the digits
    "card 4111 1111 1111 1111 exp 12/29",
]
SAD = [
    "cvv: 123", "CVV 1 2 3", "cvv is 123", "CVC2=123", "cid#1234", "security code: 321",
    "security code of the card is 4321", "CVV number 123", "c.v.v. 123", "\uff43\uff56\uff56 123",
    "cv\u200bv: 123", "exp 12/29", "expiry: 12/2029", "valid thru 12/29", "PIN 1234", "pin is 004821",
]


@pytest.mark.parametrize("text", DISGUISED + SAD)
def test_every_disguise_is_card_data(text: str) -> None:
    assert is_card_data(text)
    with pytest.raises(PaymentDataError) as info:
        check_id(text, "customer_id")
    assert info.value.field == "customer_id"
    assert not any(ch.isdigit() for ch in str(info.value))


@pytest.mark.parametrize("text", [
    "cust-0001", "pos-17", "S-001", "order 12 of 2024", "D-2024-11-22-0001", "pinned", "expires soon",
    "tok_9f8e7d6c5b4a", "0f2c9a1e-7b3d-4e5f-8a6b-1c2d3e4f5a6b:sale", "bonus 2x on 12/24", "cid 12345",
    "refund 2024-11-22 12:30:45", "points for order 5531",
])
def test_ordinary_ids_and_text_pass(text: str) -> None:
    assert not is_card_data(text)
    assert check_id(text, "customer_id") == text


def test_a_pan_inside_a_longer_digit_run_is_found() -> None:
    # Not only at the run's ends: every 13-19-digit stretch is tried.
    for before, after in (("", "123"), ("12", ""), ("98", "7654"), ("1229", "123")):
        assert is_card_data(f"{before}{PAN}{after}"), (before, after)
        assert is_card_data(f"{before}5555555555554444{after}")


# -- the property: every disguise, every field, every entry point, then every byte -------------------

_SEPARATORS = [" ", "    ", ".", "_", "/", ",", "-", "\u2009", "\u200b", "\u00a0", "\u2013", "\t", " . ", "\u202f"]


@st.composite
def disguised_pans(draw: st.DrawFn) -> tuple[str, str]:
    """(the PAN's digits, the PAN as offered)."""
    length = draw(st.integers(13, 19))
    body = draw(st.sampled_from("3456")) + draw(st.text("0123456789", min_size=length - 2, max_size=length - 2))
    pan = luhn_complete(body)
    groups, i = [], 0
    while i < len(pan):
        size = draw(st.integers(1, 6))
        groups.append(pan[i:i + size])
        i += size
    text = groups[0] + "".join(draw(st.sampled_from(["", *_SEPARATORS])) + g for g in groups[1:])
    if draw(st.booleans()):  # full-width digits
        text = "".join(chr(0xFF10 + int(c)) if c.isdigit() else c for c in text)
    glue = draw(st.sampled_from(["", "cvv", "expiry", "both"]))
    if glue in ("cvv", "both"):
        text += draw(st.text("0123456789", min_size=3, max_size=4))
    if glue in ("expiry", "both"):
        text = draw(st.sampled_from(["0129", "1228", "0630"])) + text
    prefix = draw(st.sampled_from(["", "tok_", "card ", "pan:", "x"]))
    suffix = draw(st.sampled_from(["", " ok", "_end", "!"]))
    return pan, prefix + text + suffix


@st.composite
def sensitive_values(draw: st.DrawFn) -> tuple[str, str]:
    """(the digits, a CVV / PIN / expiry behind its label)."""
    label = draw(st.sampled_from(["cvv", "CVV2", "cvc", "CID", "csc", "security code", "Security Code",
                                  "card verification value", "pin", "PIN"]))
    digits = draw(st.text("0123456789", min_size=4 if label.lower() == "pin" else 3, max_size=4))
    spaced = draw(st.sampled_from(["", " "]))
    value = spaced.join(digits)
    filler = draw(st.sampled_from([": ", " ", "=", " is ", " number ", "#", " - ", ":   "]))
    if draw(st.booleans()):
        label = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in label)  # full-width letters
    return digits, f"{label}{filler}{value}"


def offered() -> st.SearchStrategy[tuple[str, str]]:
    return st.one_of(disguised_pans(), sensitive_values())


def _blob(root: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def _needles(digits: str, shown: str) -> list[bytes]:
    needles = [shown.encode("utf-8"), shown.encode("utf-16-le")]
    if len(digits) >= 13:  # a PAN: its bare digits anywhere would be a leak (a 3-digit CVV would not)
        needles += [digits.encode(), digits.encode("utf-16-le")]
    return needles


def offer_everywhere(calls: dict[str, Callable[[str], Any]], *, examples: int,
                     in_process: bool = True) -> list[tuple[str, str]]:
    """Offer generated card data to generated entry points; each must refuse it without echoing it
    (and, ``in_process``, without an exception chained to the refusal that could carry it)."""
    tried: list[tuple[str, str]] = []

    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(offered(), st.sampled_from(sorted(calls)))
    def offer(value: tuple[str, str], where: str) -> None:
        digits, text = value
        with pytest.raises(PaymentDataError) as info:
            calls[where](text)
        assert digits not in str(info.value) and text not in str(info.value)
        if in_process:
            assert info.value.__cause__ is None and info.value.__context__ is None
        tried.append(value)

    offer()
    return tried


def _sdk_calls(client: Client, decision_id: str, offer_id: str, entry_id: str
               ) -> dict[str, Callable[[str], Any]]:
    """Every free-text field of every SDK call that records something, each taking the bad value."""
    key = lambda: f"k-{uuid.uuid4()}"  # noqa: E731
    pay = dict(customer_id="c-ok", payment_token="tok_ok", amount="1.00", currency="EUR")
    return {
        "decide.customer_id": lambda v: client.decide(v, channel="pos"),
        "decide.channel": lambda v: client.decide("c-ok", channel=v),
        "decide.context": lambda v: client.decide("c-ok", channel="pos", context={"note": v}),
        "decide.context key": lambda v: client.decide("c-ok", channel="pos", context={v: "x"}),
        "decide.profile": lambda v: client.decide("c-ok", channel="pos", profile={"segment": v}),
        "decide.profile list": lambda v: client.decide("c-ok", channel="pos", profile={"tags": ["a", v]}),
        "record_response.decision_id": lambda v: client.record_response(v, offer_id, "accepted"),
        "record_response.offer_id": lambda v: client.record_response(decision_id, v, "accepted"),
        "record_purchase.customer_id": lambda v: client.record_purchase(v, amount="1", idempotency_key=key()),
        "record_purchase.idempotency_key": lambda v: client.record_purchase("c-ok", amount="1", idempotency_key=v),
        "record_purchase.amount": lambda v: client.record_purchase("c-ok", amount=v, idempotency_key=key()),
        "award.customer_id": lambda v: client.award_points(v, 5, idempotency_key=key(), reason="r"),
        "award.idempotency_key": lambda v: client.award_points("c-ok", 5, idempotency_key=v, reason="r"),
        "award.reason": lambda v: client.award_points("c-ok", 5, idempotency_key=key(), reason=v),
        "redeem.customer_id": lambda v: client.redeem_points(v, 1, idempotency_key=key(), reason="r"),
        "redeem.reason": lambda v: client.redeem_points("c-ok", 1, idempotency_key=key(), reason=v),
        "reverse.entry_id": lambda v: client.reverse_points(v, idempotency_key=key(), reason="r"),
        "reverse.idempotency_key": lambda v: client.reverse_points(entry_id, idempotency_key=v, reason="r"),
        "reverse.reason": lambda v: client.reverse_points(entry_id, idempotency_key=key(), reason=v),
        "points_balance.customer_id": lambda v: client.points_balance(v),
        **{f"record_payment.{field}": (lambda v, field=field: client.record_payment(
            **{**pay, "idempotency_key": key(), field: v}))
           for field in ("customer_id", "payment_token", "amount", "currency", "store_id", "decision_id",
                         "offer_id")},
        "record_payment.idempotency_key": lambda v: client.record_payment(**pay, idempotency_key=v),
    }


def test_property_no_disguise_in_any_sdk_field_reaches_disk_or_logs(
    tmp_path: Path, device_bundle: tuple[Path, Path], caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    zip_path, pub = device_bundle
    caplog.set_level(logging.DEBUG)
    state = tmp_path / "state"
    client = Client.open(state, device_id="pos-card", trusted_keys=[pub.read_bytes()], clock=ManualClock(T0))
    client.install_bundle(zip_path)
    shown = client.decide("c-ok", channel="pos")  # real rows for the calls that refer to them
    entry = client.award_points("c-ok", 50, idempotency_key="seed", reason="seed")
    calls = _sdk_calls(client, shown.decision_id, shown.offers[0].offer_id, entry.entry_id)
    tried = offer_everywhere(calls, examples=400)
    # Device id too, and a control value that is written, so the byte search can see writes.
    with pytest.raises(PaymentDataError):
        Client.open(tmp_path / "other", device_id="pos 4111 1111 1111 1111", trusted_keys=[pub.read_bytes()])
    client.award_points("c-ok", 1, idempotency_key="marker-key", reason="marker-Q7Z3")
    wal_blob = _blob(state)  # open: state.sqlite, -wal and -shm as they are
    assert (state / "state.sqlite-wal").exists()
    client.close()
    closed_blob = _blob(state)
    out, err = capfd.readouterr()
    logs = caplog.text + out + err
    for blob in (wal_blob, closed_blob):
        assert b"marker-Q7Z3" in blob
        for digits, text in tried:
            for needle in _needles(digits, text):
                assert needle not in blob, text
    for digits, text in tried:
        assert text not in logs
        assert len(digits) < 13 or digits not in logs


# -- through the gateway and into the hub ------------------------------------------------------------

def _hub_bytes(gateway: Gateway, url: str | None, schema: str | None) -> bytes:
    """Every byte the hub keeps: its state directory, and for PostgreSQL every row of every table."""
    blob = _blob(gateway.state_dir)
    if url is None:
        return blob
    import psycopg

    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))]
        assert "hub_events" in tables
        rows = []
        for table in tables:
            rows += [repr(r) for r in conn.execute(f'SELECT * FROM "{schema}"."{table}"')]
    return blob + "\n".join(rows).encode("utf-8", "surrogatepass")


def _struct(data: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(data)
    return s


def _rpc_calls(g: Gateway, push_seq: list[int]) -> dict[str, Callable[[str], Any]]:
    d = g.decision
    key = lambda: f"k-{uuid.uuid4()}"  # noqa: E731
    pay = dict(customer_id="c-ok", payment_token="tok_ok", amount="1.00", currency="EUR")

    def push(field: str) -> Callable[[str], Any]:
        # A rogue (or old) terminal: the bad value in one field of an otherwise valid event.
        def call(v: str) -> Any:
            payloads = {
                "decision.customer_id": ("decision", {"decision_id": str(uuid.uuid4()), "customer_id": v,
                                                      "channel": "pos", "bundle_name": "small", "bundle_version": 1,
                                                      "strategy": "s", "offers": []}),
                "decision.offer_id": ("decision", {"decision_id": str(uuid.uuid4()), "customer_id": "c-ok",
                                                   "channel": "pos", "bundle_name": "small", "bundle_version": 1,
                                                   "strategy": "s", "offers": [{"offer_id": v, "rank": 1}]}),
                "response.offer_id": ("response", {"decision_id": str(uuid.uuid4()), "offer_id": v,
                                                   "customer_id": "c-ok", "outcome": "accepted"}),
                "points.customer_id": ("points", {"entry_id": str(uuid.uuid4()), "customer_id": v, "kind": "award",
                                                  "points": 5, "reason": "r", "idempotency_key": key(),
                                                  "created_at": T0, "expires_at": None, "reverses": None}),
                "purchase.idempotency_key": ("purchase", {"purchase_id": str(uuid.uuid4()), "customer_id": "c-ok",
                                                          "amount": "1", "quantity": 1, "timestamp": T0,
                                                          "idempotency_key": v}),
                "payment.decision_id": ("payment", {"payment_id": str(uuid.uuid4()), "customer_id": "c-ok",
                                                    "payment_token": "tok_ok", "amount": "1.00", "currency": "EUR",
                                                    "store_id": None, "decision_id": v, "offer_id": None,
                                                    "idempotency_key": key()}),
            }
            type_, payload = payloads[field]
            push_seq[0] += 1
            answer = g.sync.PushEvents(sync_pb2.PushEventsRequest(device_id="pos-1", events=[sync_pb2.Event(
                event_id=str(uuid.uuid4()), device_id="pos-1", seq=push_seq[0], type=type_, created_at=T0,
                payload_json=json.dumps(payload))]), metadata=DEVICE)
            assert answer.acked_through == push_seq[0]  # refused for this event only: sync goes on
            assert [r.seq for r in answer.rejected] == [push_seq[0]]
            raise PaymentDataError(answer.rejected[0].reason, field=field)  # what the device will see
        return call

    def rpc(method: Callable[..., Any], request: Any) -> Any:
        try:
            return method(request, metadata=APP)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
            raise PaymentDataError(exc.details() or "", field="rpc") from None

    return {
        "Decide.customer_id": lambda v: rpc(d.Decide, decision_pb2.DecideRequest(customer_id=v, channel="pos")),
        "Decide.channel": lambda v: rpc(d.Decide, decision_pb2.DecideRequest(customer_id="c-ok", channel=v)),
        "Decide.context": lambda v: rpc(d.Decide, decision_pb2.DecideRequest(
            customer_id="c-ok", channel="pos", context=_struct({"note": v}))),
        "Decide.profile": lambda v: rpc(d.Decide, decision_pb2.DecideRequest(
            customer_id="c-ok", channel="pos", profile=_struct({"segment": v}))),
        "RecordResponse.decision_id": lambda v: rpc(d.RecordResponse, decision_pb2.RecordResponseRequest(
            decision_id=v, offer_id="o", outcome=decision_pb2.OUTCOME_ACCEPTED)),
        "AwardPoints.customer_id": lambda v: rpc(d.AwardPoints, decision_pb2.AwardPointsRequest(
            customer_id=v, points=5, idempotency_key=key(), reason="r")),
        "AwardPoints.reason": lambda v: rpc(d.AwardPoints, decision_pb2.AwardPointsRequest(
            customer_id="c-ok", points=5, idempotency_key=key(), reason=v)),
        "RedeemPoints.idempotency_key": lambda v: rpc(d.RedeemPoints, decision_pb2.RedeemPointsRequest(
            customer_id="c-ok", points=1, idempotency_key=v, reason="r")),
        "GetBalance.customer_id": lambda v: rpc(d.GetBalance, decision_pb2.GetBalanceRequest(customer_id=v)),
        "RecordPayment.payment_token": lambda v: rpc(d.RecordPayment, decision_pb2.RecordPaymentRequest(
            **{**pay, "payment_token": v}, idempotency_key=key())),
        "RecordPayment.store_id": lambda v: rpc(d.RecordPayment, decision_pb2.RecordPaymentRequest(
            **pay, store_id=v, idempotency_key=key())),
        **{f"PushEvents {f}": push(f) for f in ("decision.customer_id", "decision.offer_id", "response.offer_id",
                                                 "points.customer_id", "purchase.idempotency_key",
                                                 "payment.decision_id")},
    }


@pytest.mark.postgres
def test_property_no_disguise_in_any_rpc_or_pushed_event_reaches_the_hub_or_logs(
    hub_gateway: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    g, url, schema = hub_gateway.gateway, hub_gateway.url, hub_gateway.schema
    caplog.set_level(logging.DEBUG)
    g.decision.AwardPoints(decision_pb2.AwardPointsRequest(customer_id="c-ok", points=5, idempotency_key="marker",
                                                           reason="marker-R8W4"), metadata=APP)
    push_seq = [0]
    calls = _rpc_calls(g, push_seq)
    tried = offer_everywhere(calls, examples=150, in_process=False)
    blob = _hub_bytes(g, url, schema)
    out, err = capfd.readouterr()
    logs = caplog.text + out + err
    assert b"marker-R8W4" in blob
    for digits, text in tried:
        for needle in _needles(digits, text):
            assert needle not in blob, text
        assert text not in logs
        assert len(digits) < 13 or digits not in logs


def test_find_card_data_names_paths_never_values() -> None:
    assert find_card_data({"offers": [{"offer_id": "ok"}, {"offer_id": "4111.1111.1111.1111"}]}, "payload") \
        == "payload.offers[1].offer_id"
    assert find_card_data({"n": 2**63 - 1, "x": 0.4111111111111111}, "context") is None  # numbers are measures
    assert find_card_data({"n": "4111111111111111"}, "context") == "context.n"


def test_a_refusal_is_an_input_error_naming_the_field() -> None:
    with pytest.raises(InputError) as info:
        check_id("cvv is 123", "offer_id")
    assert isinstance(info.value, PaymentDataError) and info.value.field == "offer_id"


# -- offer ids: they go into every decision event ------------------------------------------------------


@pytest.mark.parametrize("bad", ["4111-1111-1111-1111", "offer cvv 123", "gold\r", "gold\u200b"])
def test_the_catalog_build_refuses_offer_ids_that_are_card_data_or_break_the_id_rule(bad: str) -> None:
    catalog = small_catalog()
    catalog["offers"][0]["offer_id"] = bad
    with pytest.raises(CatalogError) as info:
        validate_catalog(catalog)
    assert "offers[0]" in str(info.value) and "offer_id" in str(info.value)
    assert bad not in str(info.value)


def test_a_device_refuses_a_bundle_whose_offer_id_is_card_data(tmp_path: Path, device_bundle: tuple[Path, Path],
                                                                  kit: Any) -> None:
    """A careless builder (not ``nbo bundle build``) signed it: the device refuses it at install."""
    careless = recatalog(kit.v1, tmp_path / "careless.zip", key=kit.key, mutate=lambda db: db.execute(
        "UPDATE offers SET offer_id = '4111 1111 1111 1111' WHERE rowid = (SELECT MIN(rowid) FROM offers)"))
    with Client.open(tmp_path / "state", device_id="pos-1", trusted_keys=[kit.pub.read_bytes()]) as client:
        with pytest.raises(BundleError) as info:
            client.install_bundle(careless)
        assert "offer_id looks like card data" in str(info.value) and "4111" not in str(info.value)
        assert client.bundle is None
    assert b"4111 1111 1111 1111" not in _blob(tmp_path / "state")


# -- a PAN typed as a number, where numbers are written as they are -------------------------------------


def test_a_pan_typed_as_a_number_is_refused_where_it_would_be_written(tmp_path: Path) -> None:
    key, pub = make_keys(tmp_path / "keys")
    model = make_model(tmp_path / "src" / "propensity.onnx",
                       inputs=(("customer__frequency", "float"), ("context__basket", "float")))
    zip_path = make_bundle(tmp_path / "bundles", key=key, models={"propensity": model})
    with Client.open(tmp_path / "state", device_id="pos-1", trusted_keys=[pub.read_bytes()]) as client:
        client.install_bundle(zip_path)
        # context__basket is a model input: its raw value goes into the decision event
        with pytest.raises(PaymentDataError) as info:
            client.decide("c-ok", channel="pos", context={"basket": int(PAN)})
        assert info.value.field == "context.basket" and PAN not in str(info.value)
        client.decide("c-ok", channel="pos", context={"basket": 2**40, "unread": int(PAN)})  # nothing logged of it
    assert PAN.encode() not in _blob(tmp_path / "state")
    hub = HubStore.open(None, state_dir=tmp_path / "hub")
    try:
        payload = {"decision_id": str(uuid.uuid4()), "customer_id": "c-ok", "channel": "pos", "bundle_name": "b",
                   "bundle_version": 1, "strategy": "", "offers": [], "inputs": {"context__basket": int(PAN)}}
        result = hub.ingest("pos-1", [IncomingEvent(1, str(uuid.uuid4()), "decision", T0, json.dumps(payload))])
        assert result.acked_through == 1 and "payload.inputs.context__basket" in result.rejected[0].reason
    finally:
        hub.close()
    assert PAN.encode() not in _blob(tmp_path / "hub")
