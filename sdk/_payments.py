"""Payment-linked records: a token, an amount, a currency — never card data (docs/ledger.md).

Before anything touches the database, every string argument (and, recursively, every key and
value of any mapping or list handed to :func:`refuse_card_data`) is scanned for

* a **card number** (PAN): 13–19 digits, optionally grouped by spaces or dashes, passing the
  Luhn check — including such a number inside longer text;
* **sensitive authentication data**: CVV/CVC/CVV2/CVC2/CID/CSC values or field names, magnetic
  **track data** (``%B…^…^…`` track 1, ``;…=…`` track 2) and **PIN** / PIN-block fields.

A hit raises :class:`PaymentDataError` naming only the field, never the value; the exception
is raised ``from None`` so no chained exception carries it, nothing is logged, nothing is
written. Amounts are exact (``Decimal`` or a decimal string; a float is refused) with at most
the currency's minor units; currencies are ISO 4217 active codes.
"""

from __future__ import annotations

import functools
import re
import unicodedata
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ._errors import InputError, PaymentDataError
from ._records import KEY_MAX, check_decimal, check_id, check_optional_id, format_decimal
from ._store import StateStore
from ._types import PaymentRecord

__all__ = ["CURRENCY_MINOR_UNITS", "ISO_4217", "SCHEMA", "find_card_data", "record_payment", "refuse_card_data"]

SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS payments(
        payment_id TEXT PRIMARY KEY,      -- uuid4
        customer_id TEXT NOT NULL,
        payment_token TEXT NOT NULL,      -- a processor token, never a card number
        amount TEXT NOT NULL,             -- canonical decimal string in the currency's minor units
        currency TEXT NOT NULL,           -- ISO 4217
        store_id TEXT,
        decision_id TEXT,
        offer_id TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        idempotency_key TEXT NOT NULL UNIQUE)""",
    "CREATE INDEX IF NOT EXISTS payments_by_customer ON payments(customer_id, created_at)",
)

# ISO 4217 active codes (2024 list) → minor units; None where the standard says "N.A."
# (funds, precious metals, special drawing rights), which allow up to 4 decimal places.
CURRENCY_MINOR_UNITS: Mapping[str, int | None] = {
    **dict.fromkeys(
        "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BOV BRL BSD BTN BWP BYN BZD "
        "CAD CDF CHE CHF CHW CNY COP COU CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS "
        "GIP GMD GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL "
        "MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK "
        "PHP PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS "
        "TMT TOP TRY TTD TWD TZS UAH USD USN UYU UZS VED VES WST XCD XCG YER ZAR ZMW ZWG".split(), 2),
    **dict.fromkeys("BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF".split(), 0),
    **dict.fromkeys("BHD IQD JOD KWD LYD OMR TND".split(), 3),
    **dict.fromkeys("CLF UYW".split(), 4),
    **dict.fromkeys("XAG XAU XBA XBB XBC XBD XDR XPD XPT XSU XTS XUA XXX".split(), None),
}
ISO_4217: frozenset[str] = frozenset(CURRENCY_MINOR_UNITS)

_NA_MAX_PLACES = 4

# Digits grouped by spaces or dashes ("4111 1111", "4111-1111", "4111 - 1111"): every run of
# groups is a card-number candidate.
_SEPARATOR = r"[\s\-\u2010-\u2015\u2212]"  # any space (tab, no-break space …) or dash
_DIGIT_RUN = re.compile(rf"[0-9]+(?:{_SEPARATOR}{{1,3}}[0-9]+)*")
_GROUP_SPLIT = re.compile(rf"{_SEPARATOR}+")
# Track 1: %B<PAN>^<NAME>^<YYMM…>; track 2: ;<PAN>=<YYMM…> (sentinels optional when pasted).
_TRACK = re.compile(r"%?B[0-9]{12,19}\^[^^]{0,26}\^[0-9]{4}|;?[0-9]{12,19}=[0-9]{4}")
_CVV_WORDS = r"cvv2?|cvc2?|cvn2?|cav2|cid|csc|security[ _-]?code"
_SAD_WORDS = rf"{_CVV_WORDS}|pin[ _-]?block|pin"
# A labelled value inside text: "cvv: 123", "PIN=1234", "pin block 0412AC56FF3B9E21".
_SAD_VALUE = re.compile(
    rf"(?i)(?<![a-z0-9])(?:(?:{_CVV_WORDS})(?![a-z])\s*[:=#]?\s*[0-9]{{3,4}}"
    r"|pin(?![a-z])\s*[:=#]?\s*[0-9]{4,12}"
    r"|pin[ _-]?block\s*[:=#]?\s*[0-9a-f]{16})(?![0-9a-z])")
# A field (mapping key) named like sensitive authentication data.
_SAD_NAME = re.compile(rf"(?i)^(?:card[ _-]?)?(?:{_SAD_WORDS}|track[ _-]?[12]?(?:[ _-]?data)?|magstripe)$")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _has_card_number(text: str) -> bool:
    for match in _DIGIT_RUN.finditer(text):
        groups = _GROUP_SPLIT.split(match.group())
        # Any contiguous span of groups holding 13–19 digits: a PAN pasted next to other numbers
        # ("4111 1111 1111 1111 123") is still found. One ungrouped run of 20+ digits is a long
        # numeric id, not a card, so windows inside it are not searched.
        for start in range(len(groups)):
            digits = ""
            for group in groups[start:]:
                digits += group
                if len(digits) > 19:
                    break
                if len(digits) >= 13 and _luhn_ok(digits):
                    return True
    return False


def _ascii_digits(text: str) -> str:
    # Full-width, Arabic-Indic and other decimal digits are digits too: a PAN typed in them is
    # still a PAN, and nothing downstream should have to know.
    return "".join(str(unicodedata.digit(c)) if c.isdecimal() else c for c in text)


# A canonical UUID (8-4-4-4-12 hex) is an id, not a card number: its all-digit groups join into
# 13–19-digit runs that pass Luhn for ~0.3 % of uuid4 values, which refused ordinary idempotency
# keys such as f"{decision_id}:sale". No PAN grouping fits this shape (it holds 32 hex digits).
_UUID = re.compile(r"(?<![0-9A-Za-z])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
                   r"(?![0-9A-Za-z])")


def _is_card_data(text: str) -> bool:
    if not text.isascii():
        text = _ascii_digits(text)
    if len(text) >= 36 and "-" in text:
        text = _UUID.sub("_", text)
    # Every pattern needs digits (a PAN 13, track data 12, a CVV 3): most strings have few.
    if len(text) - len(text.translate(_DROP_DIGITS)) < 3:
        return False
    return bool(_has_card_number(text) or _TRACK.search(text) or _SAD_VALUE.search(text))


_DROP_DIGITS = str.maketrans("", "", "0123456789")


def find_card_data(value: object, field: str) -> str | None:
    """The name of the first field holding card data or sensitive authentication data, or None.

    Walks mappings (keys and values) and lists recursively; nested fields are named
    ``field.key`` / ``field[i]``. Never returns or formats the offending value.
    """
    if isinstance(value, str):
        return field if _is_card_data(value) else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            name = f"{field}.{key}" if field else str(key)
            if isinstance(key, str) and (_SAD_NAME.match(key.strip()) or find_card_data(key, field or "key")):
                # The key itself is the tell-tale: report where it is without echoing its value.
                return field or "field name"
            hit = find_card_data(item, name)
            if hit is not None:
                return hit
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            hit = find_card_data(item, f"{field}[{i}]")
            if hit is not None:
                return hit
    return None


@functools.lru_cache(maxsize=512)
def _sensitive_name(name: str) -> bool:
    # Callers pass the same few parameter names on every call (the hot award path included).
    return bool(_SAD_NAME.match(name.strip()) or _is_card_data(name))


def refuse_card_data(fields: Mapping[str, Any]) -> None:
    """Raise :class:`PaymentDataError` (naming the field only) if any field holds card data."""
    hit = None
    for name, value in fields.items():
        if _sensitive_name(name):
            hit = "field name"
        elif isinstance(value, str):
            hit = name if _is_card_data(value) else None
        elif value is not None:
            hit = find_card_data(value, name)
        if hit is not None:
            break
    if hit is not None:
        raise PaymentDataError(
            f"{hit} looks like card data (a card number or sensitive authentication data); it was refused "
            "and not stored — send a payment token instead", field=hit)


def _check_currency(currency: object) -> str:
    if not isinstance(currency, str) or len(currency) != 3 or currency.upper() not in ISO_4217:
        raise InputError("currency must be an active ISO 4217 code such as EUR or USD", field="currency")
    return currency.upper()


def record_payment(store: StateStore, customer_id: str, *, payment_token: str, amount: Decimal | str,
                   currency: str, idempotency_key: str, store_id: str | None, decision_id: str | None,
                   offer_id: str | None) -> PaymentRecord:
    """Record a payment-linked record durably with its ``payment`` event.

    Refuses card data anywhere (``PaymentDataError``), a float or non-positive amount, more
    decimals than the currency has, and an unknown currency (``InputError``). A repeated
    idempotency key returns the first record; the same key with different arguments raises
    ``InputError`` (field ``idempotency_key``).
    """
    # Card data first: nothing below may echo, store or log a value that is card data.
    refuse_card_data({
        "customer_id": customer_id, "payment_token": payment_token, "amount": amount, "currency": currency,
        "idempotency_key": idempotency_key, "store_id": store_id, "decision_id": decision_id,
        "offer_id": offer_id,
    })
    check_id(customer_id, "customer_id")
    check_id(payment_token, "payment_token", max_len=256)
    check_id(idempotency_key, "idempotency_key", max_len=KEY_MAX)
    check_optional_id(store_id, "store_id")
    check_optional_id(decision_id, "decision_id")
    check_optional_id(offer_id, "offer_id")
    code = _check_currency(currency)
    minor = CURRENCY_MINOR_UNITS[code]
    value = check_decimal(amount, "amount", max_places=_NA_MAX_PLACES if minor is None else minor)
    if minor is not None:
        value = value.quantize(Decimal(1).scaleb(-minor))
    amount_text = format(value, "f") if minor is not None else format_decimal(value)
    with store.transaction(durable=True) as tx:
        rows = tx.execute(
            "SELECT payment_id, customer_id, payment_token, amount, currency, store_id, decision_id, offer_id, "
            "created_at FROM payments WHERE idempotency_key = ?", (idempotency_key,))
        if rows:
            payment_id, *first, created_at = rows[0]
            if first != [customer_id, payment_token, amount_text, code, store_id, decision_id, offer_id]:
                raise InputError("idempotency key reused with different arguments", field="idempotency_key")
            return PaymentRecord(
                payment_id=payment_id, customer_id=customer_id, payment_token=payment_token, amount=value,
                currency=code, created_at=float(created_at), idempotency_key=idempotency_key,
                store_id=store_id, decision_id=decision_id, offer_id=offer_id)
        record = PaymentRecord(
            payment_id=str(uuid.uuid4()), customer_id=customer_id, payment_token=payment_token, amount=value,
            currency=code, created_at=tx.now, idempotency_key=idempotency_key, store_id=store_id,
            decision_id=decision_id, offer_id=offer_id)
        tx.execute(
            "INSERT INTO payments(payment_id, customer_id, payment_token, amount, currency, store_id, "
            "decision_id, offer_id, created_at, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (record.payment_id, customer_id, payment_token, amount_text, code, store_id, decision_id, offer_id,
             tx.now, idempotency_key),
        )
        tx.append_event("payment", {
            "payment_id": record.payment_id,
            "customer_id": customer_id,
            "payment_token": payment_token,
            "amount": amount_text,
            "currency": code,
            "store_id": store_id,
            "decision_id": decision_id,
            "offer_id": offer_id,
            "idempotency_key": idempotency_key,
        })
        return record
