"""The words and limits every package shares, each defined once.

The SDK writes events and checks plans with them, the catalog compiler checks authored
catalogs with them, the hub validates pushed events with them. Everyone imports them from
here (other packages through :mod:`nbo.sdk.core`); ``tests/test_vocabulary.py`` fails when a
module defines one of them again.
"""

from __future__ import annotations

import re

__all__ = [
    "AMOUNT_MAX",
    "AMOUNT_PLACES",
    "BUNDLE_NAME_RE",
    "CATEGORIES",
    "CONDITION_VARIABLES",
    "DEFAULT_CHANNELS",
    "DEFAULT_LIMIT",
    "EVENT_STATUSES",
    "EVENT_TYPES",
    "ID_MAX",
    "KEY_MAX",
    "MAX_LIMIT",
    "OUTCOMES",
    "PAYMENT_TOKEN_MAX",
    "POINTS_KINDS",
    "POINTS_MAX",
    "POLICY_EVENTS",
    "POLICY_SCOPES",
    "QUANTITY_MAX",
    "REASON_MAX",
    "RULE_KINDS",
    "RULE_VARIABLES",
]

# -- events --------------------------------------------------------------------------------

EVENT_TYPES: tuple[str, ...] = ("decision", "response", "purchase", "points", "payment")
"""What a device's outbox holds and the hub ingests: one event type per record kind."""

EVENT_STATUSES: tuple[str, ...] = ("pending", "acked", "dead_lettered")
"""Where an outbox event stands: waiting for the hub, acknowledged, or refused for good."""

OUTCOMES: tuple[str, ...] = ("accepted", "declined", "ignored")
"""A customer's response to an offer shown by a decision (a ``response`` event)."""

POINTS_KINDS: tuple[str, ...] = ("award", "redeem", "reverse", "expire")
"""Loyalty ledger movements (a ``points`` event)."""

# -- the catalog and the decision plan built from it ---------------------------------------

CATEGORIES: tuple[str, ...] = ("xsell", "upsell", "loyalty", "retention", "winback", "service")
"""Offer categories; strategies weigh them."""

DEFAULT_CHANNELS: tuple[str, ...] = ("pos", "app", "web", "kiosk", "email", "callcenter")
"""Channels an offer is eligible on unless it names its own."""

RULE_KINDS: tuple[str, ...] = ("business", "communication", "hygiene")

RULE_VARIABLES: tuple[str, ...] = ("customer", "offer", "context")
"""The variables a rule expression may read."""

CONDITION_VARIABLES: tuple[str, ...] = ("customer",)
"""The variables a strategy-assignment condition may read."""

POLICY_SCOPES: tuple[str, ...] = ("offer", "category", "all")
"""What a contact policy counts over: the same offer, its category, or every offer."""

POLICY_EVENTS: tuple[str, ...] = ("shown", *OUTCOMES)
"""What a contact policy counts: shows, or one kind of response."""

BUNDLE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # \Z: "$" would let a trailing "\n" in
"""A bundle name or model id: 1–64 of ``A-Z a-z 0-9 . _ -``, not starting with a dot."""

# -- decisions -----------------------------------------------------------------------------

DEFAULT_LIMIT = 3
"""Offers a decision returns when the caller does not say."""

MAX_LIMIT = 100
"""The most offers one decision may return."""

# -- limits of what a caller or a device may record (the SDK and the hub check the same) -----

ID_MAX = 128
"""Characters in an id: customer, device, decision, offer, ledger entry, store, event id."""

KEY_MAX = 128
"""Characters in an idempotency key."""

PAYMENT_TOKEN_MAX = 256
"""Characters in a payment token."""

REASON_MAX = 200
"""Characters in a ledger entry's free-text reason."""

POINTS_MAX = 10**9
"""Points one ledger entry may move (either way)."""

QUANTITY_MAX = 1_000_000
"""Items one purchase may count."""

AMOUNT_MAX = 10**12
"""The largest amount of one purchase or payment (in the currency's major unit)."""

AMOUNT_PLACES = 4
"""Decimal places a purchase amount may have (a payment: its currency's minor units)."""
