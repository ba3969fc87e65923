"""Payment-linked records (docs/ledger.md): tokens only, exact amounts, ISO 4217 — and card
data refused before it can reach the disk or a log."""

from __future__ import annotations

import json
import logging
import re
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from nbo.sdk import Client, InputError, ManualClock, PaymentDataError, PaymentRecord, StateError, _payments
from nbo.sdk._carddata import normalise

T0 = 1_700_000_000.0


def luhn_complete(prefix: str) -> str:
    """``prefix`` plus the check digit that makes it pass Luhn."""
    for check in "0123456789":
        candidate = prefix + check
        total = 0
        for i, ch in enumerate(reversed(candidate)):
            d = int(ch) * (2 if i % 2 else 1)
            total += d - 9 if d > 9 else d
        if total % 10 == 0:
            return candidate
    raise AssertionError("unreachable")


PANS = [
    "4111111111111111",               # Visa, 16
    "5555555555554444",               # Mastercard
    "378282246310005",                # Amex, 15
    "6011111111111117",               # Discover
    "4222222222222",                  # Visa, 13
    luhn_complete("621234567890123456"),  # UnionPay-style, 19
]


@pytest.fixture()
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture()
def client(state_dir: Path) -> Client:
    c = Client.open(state_dir, device_id="pos-1", trusted_keys=[], clock=ManualClock(T0))
    yield c
    c.close()


def pay(client: Client, **overrides) -> PaymentRecord:
    args = {"payment_token": "tok_9f8e7d", "amount": "12.50", "currency": "EUR", "idempotency_key": "pay-1",
            "store_id": "S-001", "decision_id": "D-1", "offer_id": "O-1"} | overrides
    customer = args.pop("customer_id", "C1")
    return client.record_payment(customer, **args)


def outbox(client: Client) -> list[tuple[str, dict]]:
    with client._store.transaction() as tx:
        return [(t, json.loads(p)) for t, p in tx.execute("SELECT type, payload FROM outbox ORDER BY seq")]


def payment_rows(client: Client) -> list[tuple]:
    with client._store.transaction() as tx:
        return tx.execute("SELECT * FROM payments")


# -- recording ------------------------------------------------------------------------------------


def test_a_payment_is_recorded_with_its_event(client: Client):
    record = pay(client)
    assert isinstance(record, PaymentRecord)
    assert record.amount == Decimal("12.50") and record.currency == "EUR" and record.created_at == T0
    assert (record.payment_token, record.store_id, record.decision_id, record.offer_id) == (
        "tok_9f8e7d", "S-001", "D-1", "O-1")
    [(kind, payload)] = outbox(client)
    assert kind == "payment"
    assert payload == {
        "payment_id": record.payment_id, "customer_id": "C1", "payment_token": "tok_9f8e7d", "amount": "12.50",
        "currency": "EUR", "store_id": "S-001", "decision_id": "D-1", "offer_id": "O-1",
        "idempotency_key": "pay-1",
    }


def test_optional_links_may_be_absent(client: Client):
    record = pay(client, store_id=None, decision_id=None, offer_id=None)
    assert (record.store_id, record.decision_id, record.offer_id) == (None, None, None)
    assert outbox(client)[0][1]["decision_id"] is None


@pytest.mark.parametrize(("amount", "currency", "stored"), [
    (Decimal("12.5"), "EUR", "12.50"),
    ("7", "usd", "7.00"),          # case-insensitive code, stored upper-case
    ("1000", "JPY", "1000"),
    ("1.234", "BHD", "1.234"),
    ("0.0001", "CLF", "0.0001"),
    ("1.2345", "XAU", "1.2345"),   # no minor unit in ISO 4217: up to 4 places
    (Decimal("1E+2"), "EUR", "100.00"),  # a Decimal object is taken as it is
])
def test_amounts_are_exact_in_the_currencys_minor_units(client: Client, amount, currency, stored):
    record = pay(client, amount=amount, currency=currency)
    assert record.currency == currency.upper()
    assert outbox(client)[0][1]["amount"] == stored
    assert format(record.amount, "f") == stored


@pytest.mark.parametrize(("amount", "currency", "field"), [
    (12.5, "EUR", "amount"),            # a float: no float money
    (True, "EUR", "amount"),
    ("0", "EUR", "amount"),
    ("-1.00", "EUR", "amount"),
    ("NaN", "EUR", "amount"),
    ("Infinity", "EUR", "amount"),
    ("twelve", "EUR", "amount"),
    ("1.005", "EUR", "amount"),         # more decimals than the euro has
    ("100.5", "JPY", "amount"),
    ("1.23456", "XAU", "amount"),
    ("1e13", "EUR", "amount"),          # beyond any sane single payment
    (Decimal("1E+13"), "EUR", "amount"),
    (" 3.10 ", "GBP", "amount"),        # strict grammar (issue 18): no surrounding space, ...
    ("1E+2", "EUR", "amount"),          # ... no exponent
    ("1_000", "EUR", "amount"),         # ... no underscore
    ("\uff11\uff10", "EUR", "amount"),  # ... no full-width digits
    (None, "EUR", "amount"),
    ("1.00", "XYZ", "currency"),
    ("1.00", "EURO", "currency"),
    ("1.00", "", "currency"),
    ("1.00", None, "currency"),
    ("1.00", "HRK", "currency"),        # withdrawn in 2023
])
def test_bad_amounts_and_currencies_name_the_field(client: Client, amount, currency, field):
    with pytest.raises(InputError) as info:
        pay(client, amount=amount, currency=currency)
    assert info.value.field == field and not isinstance(info.value, PaymentDataError)
    if amount == 12.5:
        assert "float" in str(info.value)
    assert payment_rows(client) == [] and outbox(client) == []


@pytest.mark.parametrize(("overrides", "field"), [
    ({"customer_id": ""}, "customer_id"),
    ({"payment_token": ""}, "payment_token"),
    ({"payment_token": 12345}, "payment_token"),
    ({"idempotency_key": "k" * 129}, "idempotency_key"),
    ({"store_id": ""}, "store_id"),
    ({"decision_id": 7}, "decision_id"),
    ({"offer_id": "O\n1"}, "offer_id"),
])
def test_bad_ids_name_the_field(client: Client, overrides, field):
    with pytest.raises(InputError) as info:
        pay(client, **overrides)
    assert info.value.field == field
    assert payment_rows(client) == []


def test_every_active_code_is_three_upper_case_letters_and_the_usual_ones_are_there():
    assert all(len(code) == 3 and code.isalpha() and code.isupper() for code in _payments.ISO_4217)
    assert {"EUR", "USD", "GBP", "JPY", "CHF", "CNY", "INR", "BRL", "SLE", "VES", "ZWG"} <= _payments.ISO_4217
    assert {"DEM", "FRF", "HRK", "SLL", "VEF"}.isdisjoint(_payments.ISO_4217)
    assert 150 < len(_payments.ISO_4217) < 200


def test_a_repeated_key_returns_the_first_record(client: Client):
    first = pay(client)
    assert pay(client) == first
    assert pay(client, amount=Decimal("12.5")) == first  # the same amount, written differently
    assert len(outbox(client)) == 1 and len(payment_rows(client)) == 1


@pytest.mark.parametrize("overrides", [
    {"amount": "12.51"}, {"currency": "USD"}, {"payment_token": "tok_other"}, {"customer_id": "C2"},
    {"store_id": None}, {"offer_id": "O-2"},
])
def test_a_repeated_key_with_other_arguments_is_refused(client: Client, overrides):
    pay(client)
    with pytest.raises(InputError) as info:
        pay(client, **overrides)
    assert info.value.field == "idempotency_key" and "different arguments" in str(info.value)
    assert len(outbox(client)) == 1


def test_a_failing_step_leaves_neither_the_record_nor_its_event(client: Client):
    with client._store.transaction() as tx:
        tx.execute("CREATE TRIGGER boom BEFORE INSERT ON outbox WHEN NEW.type = 'payment' "
                   "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    with pytest.raises(StateError):
        pay(client)
    assert payment_rows(client) == [] and outbox(client) == []


# -- card data is refused, named by field, and never stored or logged --------------------------------


def formatted(pan: str) -> list[str]:
    groups = [pan[i:i + 4] for i in range(0, len(pan), 4)]
    return [pan, " ".join(groups), "-".join(groups)]


@pytest.mark.parametrize("pan", PANS)
@pytest.mark.parametrize("field", ["payment_token", "customer_id", "idempotency_key", "store_id",
                                   "decision_id", "offer_id", "amount", "currency"])
def test_a_card_number_in_any_field_is_refused_naming_only_the_field(client: Client, pan, field):
    for shown in formatted(pan):
        with pytest.raises(PaymentDataError) as info:
            pay(client, **{field: shown})
        assert info.value.field == field
        message = str(info.value)
        assert not any(ch.isdigit() for ch in message), message
        assert info.value.__cause__ is None and info.value.__context__ is None
    assert payment_rows(client) == [] and outbox(client) == []


@pytest.mark.parametrize("text", [
    "4111 1111 1111 1111 123",            # a CVV typed right after it
    "card:4111-1111-1111-1111,exp:12/29",
    "tok_4111111111111111",
    "12 4111111111111111",
    "4 1 1 1 1 1 1 1 1 1 1 1 1 1 1 1",   # one digit per group
    "4111 - 1111 - 1111 - 1111",
    "4111\t1111\u00a01111\u20131111",      # tab, no-break space, en dash
    "\uff14" + "\uff11" * 15,            # full-width digits
    "\u0664\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661\u0661",  # Arabic-Indic
])
def test_a_card_number_inside_other_text_is_found(text):
    with pytest.raises(PaymentDataError):
        _payments.refuse_card_data({"payment_token": text})


@pytest.mark.parametrize("text", [
    "cvv=123", "CVV2: 4567", "cvc 987", "CID#1234", "security code: 321",
    "%B4111111111111111^DOE/JOHN^29121010000000000000?",     # track 1
    ";4111111111111111=29121010000000000000?",               # track 2
    "B5555555555554444^SMITH/ANN^2801",
    "PIN: 1234", "pin=004821", "PIN block 0412AC56FF3B9E21",
])
def test_sensitive_authentication_data_is_refused(client: Client, text):
    with pytest.raises(PaymentDataError) as info:
        pay(client, payment_token=text)
    assert info.value.field == "payment_token"
    assert payment_rows(client) == []


@pytest.mark.parametrize("text", [
    "tok_9f8e7d6c5b4a", "tok_411111111112",      # 12 digits: too short for a card number
    # (a 16-digit or longer run is searched window by window: tests/adversarial/test_card_data.py)
    "S-001", "order 12 of 2024", "spin-cycle 2000", "D-2024-11-22-0001", "pinned",
    "a3f9c2d4e5b6a7c8",                          # 16 hex characters with no PIN label
])
def test_ordinary_values_pass(client: Client, text):
    _payments.refuse_card_data({"payment_token": text})
    assert pay(client, payment_token=text, idempotency_key=f"k-{text}").payment_token == text


@pytest.mark.parametrize(("fields", "named"), [
    ({"extra": {"cvv": "123"}}, "extra"),
    ({"extra": {"note": "4111111111111111"}}, "extra.note"),
    ({"extra": {"lines": ["ok", {"track2": "x"}]}}, "extra.lines[1]"),
    ({"extra": ["fine", "5555 5555 5555 4444"]}, "extra[1]"),
    ({"CVV": "fine-looking"}, "field name"),
    ({"track_data": None}, "field name"),
    ({"4111111111111111": "key is a PAN"}, "field name"),
])
def test_nested_values_and_field_names_are_scanned(fields, named):
    with pytest.raises(PaymentDataError) as info:
        _payments.refuse_card_data(fields)
    assert info.value.field == named
    assert not re.search(r"[0-9]{3}", str(info.value))  # a path index, never the value


def test_refused_card_data_is_absent_from_disk_and_logs(client: Client, state_dir: Path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    pan = "4111111111111111"
    marker = "tok_marker_7Q3Z"
    pay(client, payment_token=marker, idempotency_key="good")  # a control: written values are findable
    for field in ("payment_token", "store_id", "customer_id", "idempotency_key", "offer_id"):
        for shown in formatted(pan) + ["cvv=739", "%B4111111111111111^DOE/JOHN^2912"]:
            with pytest.raises(PaymentDataError):
                pay(client, **{field: shown, "idempotency_key": "bad"} if field != "idempotency_key"
                    else {field: shown})
    # Later writes push the WAL around; the refused values must be nowhere in any file, while
    # the database is open (db, -wal, -shm) and after it is closed and checkpointed.
    for i in range(20):
        client.award_points("C1", 1, idempotency_key=f"after-{i}", reason="r")
    open_files = [p for p in state_dir.rglob("*") if p.is_file()]
    assert any(p.name.endswith("-wal") for p in open_files)
    blobs = [b"".join(p.read_bytes() for p in open_files)]
    client.close()
    blobs.append(b"".join(p.read_bytes() for p in state_dir.rglob("*") if p.is_file()))
    captured = capsys.readouterr()
    logs = caplog.text + captured.out + captured.err
    for blob in blobs:
        assert marker.encode() in blob  # the scan does see a value that was written
        for needle in [*formatted(pan), "cvv=739", "^DOE/JOHN^"]:
            assert needle.encode() not in blob, needle
            assert needle.encode("utf-16-le") not in blob, needle
    for needle in [*formatted(pan), "cvv=739", "739", "DOE/JOHN"]:
        assert needle not in logs, needle


# -- the scanner, by property -----------------------------------------------------------------------

_WORDS = st.text(alphabet=st.characters(categories=["L"], max_codepoint=0x24F), max_size=12)


@st.composite
def grouped_pans(draw: st.DrawFn) -> tuple[str, str]:
    length = draw(st.integers(13, 19))
    body = draw(st.text(alphabet="0123456789", min_size=length - 1, max_size=length - 1))
    pan = luhn_complete(body)
    out, i = [], 0
    while i < len(pan):
        size = draw(st.integers(1, 6))
        out.append(pan[i:i + size])
        i += size
    separators = [draw(st.sampled_from(["", " ", "-", "  ", " - ", "\t", "\u00a0"])) for _ in out[1:]]
    grouped = out[0] + "".join(sep + group for sep, group in zip(separators, out[1:], strict=True))
    return pan, grouped


@settings(max_examples=300, deadline=None)
@given(grouped_pans(), _WORDS, _WORDS)
def test_any_luhn_valid_pan_in_any_grouping_inside_text_is_refused(pan_and_text, before, after):
    pan, grouped = pan_and_text
    with pytest.raises(PaymentDataError) as info:
        _payments.refuse_card_data({"payment_token": f"{before} {grouped} {after}"})
    assert pan not in str(info.value) and grouped not in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=["Nd"]), max_size=60))
def test_text_without_digits_is_never_refused(text):
    # The scanner reads text as a person does (NFKC: a circled or superscript 1 is a 1).
    assume(not any(ch.isdigit() for ch in normalise(text)))
    _payments.refuse_card_data({"payment_token": text, "store_id": text})


@settings(max_examples=2000, deadline=None)
@given(st.uuids(version=4), st.sampled_from(["{}", "{}:sale", "pay-{}", "{}:points", "{} {}"]))
def test_uuids_in_ids_and_keys_are_not_card_numbers(value, template):
    # ~0.3 % of uuid4 strings hold a Luhn-valid 13–19-digit run across their dashes; ids and
    # idempotency keys built from them (f"{decision_id}:sale") must not be refused.
    text = template.format(value, value)
    _payments.refuse_card_data({"idempotency_key": text, "decision_id": str(value)})


@pytest.mark.parametrize("text", ["{} 4111 1111 1111 1111", "4111-1111-1111-1111:{}", "{}4111111111111111"])
def test_a_card_number_next_to_a_uuid_is_still_refused(text):
    with pytest.raises(PaymentDataError):
        _payments.refuse_card_data({"payment_token": text.format("0f2c9a1e-7b3d-4e5f-8a6b-1c2d3e4f5a6b")})
