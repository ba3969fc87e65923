"""Payment-linked records: a token, an amount, a currency — never card data (docs/ledger.md).

Before anything touches the database, every argument is scanned for card numbers and
sensitive authentication data by :mod:`._carddata` (the rules are in its docstring and in
docs/operations.md). A hit raises :class:`PaymentDataError` naming only the field, never the
value; nothing is logged, nothing is written. Amounts are exact (``Decimal`` or a plain ASCII
decimal string; a float is refused) with at most the currency's minor units; currencies are
ISO 4217 active codes.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from decimal import Decimal

from ._carddata import find_card_data, refuse_card_data
from ._errors import InputError
from ._records import check_decimal, check_id, check_optional_id, format_decimal, key_reused
from ._store import StateStore
from ._types import PaymentRecord
from ._vocabulary import KEY_MAX, PAYMENT_TOKEN_MAX

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
    check_id(payment_token, "payment_token", max_len=PAYMENT_TOKEN_MAX)
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
            this = [customer_id, payment_token, amount_text, code, store_id, decision_id, offer_id]
            if first != this:
                names = ("customer_id", "payment_token", "amount", "currency", "store_id", "decision_id", "offer_id")
                raise InputError(key_reused(idempotency_key, dict(zip(names, first, strict=True)),
                                            dict(zip(names, this, strict=True))), field="idempotency_key")
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
