"""The card-data scanner: every text the SDK or the hub is about to keep passes through it.

What counts as card data (docs/operations.md, "Card data and ids", states it for operators):

* a **card number** (PAN): any stretch of 13–19 digits that passes the Luhn check, found
  anywhere in a run of digit groups — groups joined by any number of *separators* (every
  kind of white space, control characters, ``. , _ / \\ | '``, the middle dot and every
  dash), so a PAN with its CVV or expiry glued on (``4111111111111111123``), split by four
  spaces, dots, underscores or slashes, or hidden inside a longer number is still found.
  Letters and other symbols (``:``, ``$``, ``#`` …) end a run;
* **sensitive authentication data**: a CVV/CVC/CID/CSC or security code, a PIN or PIN
  block, or a card expiry written after its label (``cvv: 123``, ``CVV 1 2 3``, ``cvv is
  123``, ``security code of the card is 1234``, ``exp 12/29``, ``PIN=1234``), and magnetic
  **track data** (``%B…^…^…``, ``;…=…``);
* a **field name** (mapping key) that names such data (``cvv``, ``pin``, ``track2`` …).

Before scanning, text is normalised the way a person would read it: Unicode NFKC
(full-width and circled digits become ASCII digits, thin and no-break spaces become spaces),
then format characters (zero-width spaces and joiners, soft hyphens, byte-order marks) and
combining marks are dropped and every other decimal digit (Arabic-Indic, Devanagari …)
reads as its ASCII digit. A canonical UUID (``8-4-4-4-12`` hex) is an id, not a card number,
and is skipped: its digit groups would otherwise pass Luhn for a few in a thousand uuid4s.

Callers get a yes/no or the *name* of the field, never the value: nothing here formats,
logs or raises with the text it was given.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from ._errors import PaymentDataError

__all__ = ["find_card_data", "is_card_data", "normalise", "refuse_card_data"]

_DROP = frozenset({"Cf", "Mn", "Me"})  # format characters and combining marks: invisible to a reader


def normalise(text: str) -> str:
    """``text`` as it reads: NFKC, format characters and marks dropped, every digit ASCII, lower case."""
    if text.isascii():
        return text.lower()  # ASCII is its own NFKC form and holds no format characters
    text = unicodedata.normalize("NFKC", text)
    out = []
    for ch in text:
        if ch.isascii():
            out.append(ch)
            continue
        category = unicodedata.category(ch)
        if category in _DROP:
            continue
        if category == "Nd":
            out.append(chr(48 + unicodedata.digit(ch)))
        else:
            out.append(ch)
    return "".join(out).casefold()


# A separator joins digit groups: white space and control characters (NFKC turned thin and
# no-break spaces into spaces), the grouping punctuation people use, and every dash.
_SEP_CHARS = "".join(sorted(
    {chr(c) for c in range(0x3001) if chr(c).isspace() or c < 0x20 or c == 0x7F}
    | set(".,_/\\|'\u00b7\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u2043\ufe58\ufe63\uff0d-")))
# Deleting the separators joins digit groups into runs (sre is slow at matching groups with
# repeats; str.translate and a plain class repeat run at C speed).
_DROP_SEPARATORS = str.maketrans("", "", _SEP_CHARS)
_DIGIT_RUN = re.compile(r"[0-9]{13,}")
_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)  # a Luhn-doubled digit, reduced


def _has_luhn_window(digits: str) -> bool:
    """Does any stretch of 13–19 consecutive digits pass the Luhn check?

    Prefix sums make each window O(1): a window ending at ``j`` doubles the digits at an
    even distance + 1 from its last digit, i.e. those whose index parity differs from ``j-1``.
    """
    n = len(digits)
    plain = [0] * (n + 1)    # digit at even index undoubled, odd index doubled
    swapped = [0] * (n + 1)  # the other way round
    for i, ch in enumerate(digits):
        d = ord(ch) - 48
        a, b = (d, _DOUBLED[d]) if i % 2 == 0 else (_DOUBLED[d], d)
        plain[i + 1] = plain[i] + a
        swapped[i + 1] = swapped[i] + b
    for j in range(13, n + 1):
        sums = plain if (j - 1) % 2 == 0 else swapped
        for length in range(13, min(19, j) + 1):
            if (sums[j] - sums[j - length]) % 10 == 0:
                return True
    return False


def _has_card_number(text: str) -> bool:
    return any(_has_luhn_window(m.group()) for m in _DIGIT_RUN.finditer(text.translate(_DROP_SEPARATORS)))


# Track 1: %B<PAN>^<NAME>^<YYMM…>; track 2: ;<PAN>=<YYMM…> (sentinels optional when pasted).
_TRACK = re.compile(r"%?b[0-9]{12,19}\^[^^]{0,26}\^[0-9]{4}|;?[0-9]{12,19}=[0-9]{4}")


def _spaced(word: str) -> str:
    """``cvv`` also as ``c.v.v`` or ``c v v``."""
    return r"[ ._-]?".join(word)


_CVV_LABEL = "|".join([
    *(_spaced(w) + "2?" for w in ("cvv", "cvc", "cvn")), _spaced("cav") + "2", _spaced("cid"), _spaced("csc"),
    _spaced("cvd"), r"card[ _-]?verification(?:[ _-]?(?:value|code|number))?", r"security[ _-]?code",
    r"sec[ _-]?code", r"card[ _-]?code", r"verification[ _-]?code",
])
_PIN_LABEL = r"pin(?:[ _-]?(?:code|number|no))?"
_EXPIRY_LABEL = r"exp(?:iry|iration|\.)?(?:[ _-]?date)?|(?:valid|good)[ _-]?(?:thru|through)"
_LEFT = r"(?<![a-z0-9])"
_RIGHT = r"(?![a-z])"
# Between a label and its value: punctuation and a few filler words ("cvv is 123", "security
# code of the card: 123", "CVV number 123", "exp. date 12/29").
_FILLER = r"[\W_]{0,6}(?:(?:is|was|are|code|number|no|num|nr|value|of|the|card|date)[\W_]{1,6}){0,4}"
_SEP_DIGIT = r"[ \t.,_/-]{0,3}[0-9]"
_NO_MORE_DIGITS = rf"(?!{_SEP_DIGIT})(?![0-9])"
_CVV_VALUE = rf"[0-9](?:{_SEP_DIGIT}){{2,3}}{_NO_MORE_DIGITS}"
_PIN_VALUE = rf"[0-9](?:{_SEP_DIGIT}){{3,11}}{_NO_MORE_DIGITS}"
_PIN_BLOCK = r"pin[ _-]?block[\W_]{0,6}[0-9a-f]{16}(?![0-9a-z])"
_EXPIRY_VALUE = r"(?:0?[1-9]|1[0-2])\s*[/.\-]\s*(?:20)?[0-9]{2}(?![0-9])|(?:0[1-9]|1[0-2])(?:20)?[0-9]{2}(?![0-9])"
_SAD_VALUE = re.compile(
    rf"{_LEFT}(?:(?:{_CVV_LABEL}){_RIGHT}{_FILLER}{_CVV_VALUE}"
    rf"|(?:{_PIN_LABEL}){_RIGHT}{_FILLER}{_PIN_VALUE}"
    rf"|{_PIN_BLOCK}"
    rf"|(?:{_EXPIRY_LABEL}){_RIGHT}{_FILLER}(?:{_EXPIRY_VALUE}))")
# A field (mapping key) named like sensitive authentication data.
_SAD_NAME = re.compile(
    rf"^(?:card[ _-]?)?(?:{_CVV_LABEL}|{_PIN_LABEL}|pin[ _-]?block|track[ _-]?[12]?(?:[ _-]?data)?|magstripe"
    r"|pan|card[ _-]?number|cc[ _-]?(?:num|number|no))$")

# A canonical UUID (8-4-4-4-12 hex) is an id, not a card number: its all-digit groups join into
# 13–19-digit runs that pass Luhn for ~0.3 % of uuid4 values, which refused ordinary idempotency
# keys such as f"{decision_id}:sale". No PAN grouping fits this shape (it holds 32 hex digits).
_UUID = re.compile(r"(?<![0-9a-z])[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?![0-9a-z])")
_DROP_DIGITS = str.maketrans("", "", "0123456789")


def _few_digits(text: str) -> bool:
    # Every pattern needs digits (a PAN 13, track data 12, a CVV 3): most strings have few.
    return len(text) - len(text.translate(_DROP_DIGITS)) < 3


_EXACT_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# A cheap test before the slow pattern: sensitive authentication data needs a label's stem.
_LABEL_HINT = re.compile(r"c[ ._-]?[vias]|sec|card|verif|pin|exp|valid|good")
# Short texts found clean, remembered: the hub sees the same channels, categories, offer ids and
# bundle names in every event. Only clean values are kept (never card data), and only a bounded
# number of them.
_CLEAN: dict[str, None] = {}
_CLEAN_MAX = 4096
_CLEAN_LONG: dict[str, None] = {}  # up to 4 KiB each (a decision's list of eligible offers, joined)
_CLEAN_LONG_MAX = 256


def is_card_data(text: str) -> bool:
    """Does ``text`` hold a card number or sensitive authentication data (rules above)?"""
    short = len(text) <= 64
    if text in (_CLEAN if short else _CLEAN_LONG):
        return False
    if text.isascii() and (_few_digits(text) or (len(text) == 36 and _EXACT_UUID.fullmatch(text))):
        found = False  # the common cases, without normalising
    else:
        found = _scan(text)
    if not found and len(text) <= 4096:
        cache, most = (_CLEAN, _CLEAN_MAX) if short else (_CLEAN_LONG, _CLEAN_LONG_MAX)
        if len(cache) >= most:
            cache.clear()
        cache[text] = None
    return found


def _scan(text: str) -> bool:
    text = normalise(text)
    if _few_digits(text):
        return False
    if len(text) >= 36 and "-" in text:
        text = _UUID.sub(":", text)  # ':' ends a digit run: a UUID neither hides nor joins a PAN
    if _has_card_number(text):
        return True
    if ("^" in text or "=" in text) and _TRACK.search(text):
        return True
    return bool(_LABEL_HINT.search(text) and _SAD_VALUE.search(text))


@functools.lru_cache(maxsize=512)
def _sensitive_name(name: str) -> bool:
    # Callers pass the same few parameter names on every call (the hot award path included).
    return bool(_SAD_NAME.match(normalise(name).strip()) or is_card_data(name))


def find_card_data(value: object, field: str, *, numbers: bool = False) -> str | None:
    """The name of the first field holding card data or sensitive authentication data, or None.

    Text is scanned; numbers only with ``numbers=True`` — integers of 13 or more digits, read
    as their digits — for what is written as it is (a pushed event's payload, a decision's
    logged model inputs): a request's measures such as 2**63 - 1 are not refused for it. Walks mappings (keys and values) and lists
    recursively; nested fields are named ``field.key`` / ``field[i]``. A key that is itself card
    data, or names it, is reported as its parent field (``"field name"`` at the top), never by
    its text; a label and its value split over neighbouring items of a list of texts
    (``["cvv", "123"]``) as the list.
    """
    if type(value) in _SCALARS:  # the common case first: the ABC check below is slow
        if numbers and type(value) is int and abs(value) >= 10**12:
            return field if is_card_data(str(value)) else None
        return None
    if isinstance(value, str):
        return field if is_card_data(value) else None
    if isinstance(value, list | tuple):
        try:
            # One scan for a list of texts (a decision's eligible offers): ':' between items ends
            # every digit run, so no PAN is made of two items.
            joined = ":".join(value) if value else None
        except TypeError:
            joined = None  # not all texts
        if joined is not None:
            if not is_card_data(joined):
                return None
            return next((f"{field}[{i}]" for i, item in enumerate(value) if is_card_data(item)), field)
        for i, item in enumerate(value):
            if numbers or type(item) not in _SCALARS:
                hit = find_card_data(item, f"{field}[{i}]", numbers=numbers)
                if hit is not None:
                    return hit
        return None
    if isinstance(value, dict | Mapping):
        for key, item in value.items():
            if isinstance(key, str) and _sensitive_name(key):
                return field or "field name"
            if type(item) in _SCALARS and not (numbers and type(item) is int):
                continue
            if isinstance(item, str):
                if is_card_data(item):
                    return f"{field}.{key}" if field else str(key)
            else:
                hit = find_card_data(item, f"{field}.{key}" if field else str(key), numbers=numbers)
                if hit is not None:
                    return hit
    return None


_SCALARS = frozenset({int, float, bool, type(None)})


def payment_data_error(field: str) -> PaymentDataError:
    """The one refusal: names the field, never the value."""
    return PaymentDataError(
        f"{field} looks like card data (a card number or sensitive authentication data); it was refused "
        "and not stored — send a payment token instead", field=field)


def refuse_card_data(fields: Mapping[str, Any]) -> None:
    """Raise :class:`PaymentDataError` (naming the field only) if any field holds card data."""
    hit = None
    for name, value in fields.items():
        if _sensitive_name(name):
            hit = "field name"
        elif isinstance(value, str):
            hit = name if is_card_data(value) else None
        elif value is not None:
            hit = find_card_data(value, name)
        if hit is not None:
            break
    if hit is not None:
        raise payment_data_error(hit)
