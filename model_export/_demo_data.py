"""Realistic, seeded sample data for a home-and-electronics retailer with a loyalty programme.

``generate_demo_data(out_dir, customers=2000, seed=0)`` writes four files:

* ``customers.csv`` — customer_id, age, segment, region, do_not_contact, complaint_open,
  credit_block (``true``/``false``), owned_products (``|``-separated), signup_date.
* ``transactions.csv`` — customer_id, timestamp (ISO-8601 UTC, whole seconds), amount
  (2 decimals), quantity. Purchases follow a BG/NBD-like process: each customer buys at a
  gamma-distributed yearly rate and may drop out after each purchase, so every lifecycle
  stage occurs at the snapshot.
* ``catalog.yaml`` — 33 offers across the six categories, rules of all three kinds in CEL,
  strategies and their assignment on lifecycle/loyalty stage, contact policies, one fallback
  offer and one mandatory regulatory notice (the only offers without ``model_id``), in the
  authoring format ``nbo bundle build`` compiles.
* ``history.csv`` — offers shown in the 30 days after the snapshot by a logged, randomised
  policy (its selection probability per row), with the outcome ``accepted``/``declined`` drawn
  from the ground-truth acceptance model :func:`true_propensity` and that true probability
  kept per row (``true_propensity``) so the report can compare the learned model with it.

The snapshot ("as of") is the latest transaction timestamp; customer measures for the
ground truth come from :func:`nbo.sdk._measures.derive_features` at that instant — exactly
what ``nbo train`` computes. Same seed → byte-identical files.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from nbo.sdk import InputError
from nbo.sdk.core import derive_features

__all__ = ["DemoData", "demo_catalog", "generate_demo_data", "true_propensity"]

START = datetime(2024, 1, 1, tzinfo=UTC)
END = datetime(2025, 10, 31, 23, 59, 59, tzinfo=UTC)
HISTORY_DAYS = 30
# the demo shop's channels (the catalog's defaults) and the share of offer shows on each
_CHANNEL_SHARE = {"pos": 0.35, "app": 0.25, "web": 0.20, "email": 0.10, "kiosk": 0.05, "callcenter": 0.05}
CHANNELS = tuple(_CHANNEL_SHARE)
SEGMENTS = ("mass", "value", "affluent", "student")
_SEGMENT_SHARE = (0.55, 0.25, 0.12, 0.08)
_SEGMENT_SPEND = {"mass": 35.0, "value": 55.0, "affluent": 120.0, "student": 20.0}
REGIONS = ("north", "south", "east", "west", "central")
PRODUCTS = (
    "store_card", "extended_warranty", "premium_membership", "home_delivery",
    "coffee_club", "insurance_plus", "installation", "gift_card",
)

# -- the offer catalog --------------------------------------------------------------------
# (offer_id, name, category, channels, price_band, discount_pct, product, min_age,
#  expected_volume, margin, duration)
_OFFERS: tuple[tuple[Any, ...], ...] = (
    ("xsell_warranty", "Extended warranty for your purchase", "xsell", [], "mid", 10, "extended_warranty", 18, 1.0, 45.0, 2.0),
    ("xsell_store_card", "Store card: 5% off every visit", "xsell", ["pos", "web", "app"], "low", 5, "store_card", 18, 1.0, 60.0, 3.0),
    ("xsell_home_delivery", "Home delivery subscription", "xsell", ["web", "app", "email"], "mid", 15, "home_delivery", 18, 1.0, 30.0, 1.0),
    ("xsell_coffee_club", "Coffee club: monthly beans", "xsell", [], "low", 20, "coffee_club", 18, 12.0, 4.0, 1.0),
    ("xsell_installation", "Professional installation", "xsell", ["pos", "callcenter"], "high", 0, "installation", 18, 1.0, 70.0, 1.0),
    ("xsell_accessories", "Accessories bundle", "xsell", ["pos", "kiosk", "web"], "low", 25, "", 0, 1.0, 12.0, 1.0),
    ("xsell_insurance_plus", "Device insurance plus", "xsell", ["pos", "web", "callcenter"], "high", 10, "insurance_plus", 21, 12.0, 6.0, 2.0),
    ("xsell_gift_card", "Gift card with bonus value", "xsell", ["pos", "app", "web"], "mid", 10, "gift_card", 16, 1.0, 8.0, 1.0),
    ("upsell_premium_membership", "Premium membership", "upsell", ["app", "web", "email"], "high", 20, "premium_membership", 18, 1.0, 90.0, 2.0),
    ("upsell_tv_larger", "Step up to the 65-inch TV", "upsell", ["pos", "web"], "high", 5, "", 18, 1.0, 120.0, 1.0),
    ("upsell_laptop_pro", "Laptop pro model", "upsell", ["pos", "web", "app"], "high", 8, "", 16, 1.0, 150.0, 1.0),
    ("upsell_warranty_5y", "Five-year warranty", "upsell", [], "mid", 0, "", 18, 1.0, 55.0, 3.0),
    ("upsell_express_delivery", "Express delivery upgrade", "upsell", ["web", "app"], "low", 0, "", 0, 1.0, 9.0, 1.0),
    ("upsell_coffee_machine", "Bean-to-cup machine upgrade", "upsell", ["pos", "kiosk", "web"], "high", 15, "", 18, 1.0, 80.0, 1.0),
    ("loyalty_double_points", "Double points this week", "loyalty", [], "low", 0, "", 0, 1.0, 15.0, 1.0),
    ("loyalty_birthday_bonus", "Birthday bonus points", "loyalty", ["app", "email"], "low", 0, "", 0, 1.0, 10.0, 1.0),
    ("loyalty_member_evening", "Members' evening invitation", "loyalty", ["app", "email", "pos"], "low", 0, "", 18, 1.0, 25.0, 1.0),
    ("loyalty_points_boost_app", "App points boost", "loyalty", ["app"], "low", 0, "", 0, 1.0, 12.0, 1.0),
    ("loyalty_tier_upgrade", "Gold tier upgrade", "loyalty", [], "mid", 0, "", 0, 1.0, 40.0, 2.0),
    ("loyalty_partner_voucher", "Partner cinema voucher", "loyalty", ["app", "web", "pos"], "low", 30, "", 0, 1.0, 6.0, 1.0),
    ("retention_10pct_voucher", "10% off your next visit", "retention", [], "mid", 10, "", 0, 1.0, 20.0, 1.0),
    ("retention_free_delivery", "Free delivery for three months", "retention", ["web", "app", "email"], "low", 0, "", 0, 1.0, 18.0, 1.0),
    ("retention_service_check", "Free device health check", "retention", ["pos", "callcenter"], "low", 0, "", 0, 1.0, 22.0, 1.0),
    ("retention_price_match", "Price-match promise", "retention", ["pos", "web"], "mid", 5, "", 0, 1.0, 28.0, 1.0),
    ("retention_personal_call", "Personal advisor call", "retention", ["callcenter"], "mid", 0, "", 18, 1.0, 35.0, 1.0),
    ("winback_20pct_return", "20% off to welcome you back", "winback", [], "mid", 20, "", 0, 1.0, 25.0, 1.0),
    ("winback_bonus_points", "500 welcome-back points", "winback", ["app", "email", "web"], "low", 0, "", 0, 1.0, 15.0, 1.0),
    ("winback_free_shipping", "Free shipping on your return", "winback", ["web", "email"], "low", 0, "", 0, 1.0, 12.0, 1.0),
    ("winback_survey_voucher", "Tell us why — voucher for your time", "winback", ["email", "app"], "low", 15, "", 0, 1.0, 8.0, 1.0),
    ("service_app_setup", "Set up the app and earn points", "service", ["pos", "kiosk", "web"], "low", 0, "", 0, 1.0, 5.0, 2.0),
    ("service_recall_check", "Free safety check of your appliance", "service", ["pos", "callcenter", "email"], "low", 0, "", 0, 1.0, 3.0, 1.0),
)
FALLBACK_OFFER = "service_newsletter"
MANDATORY_OFFER = "service_privacy_notice"


def demo_catalog() -> dict[str, Any]:
    """The demo offer catalog in the authoring format (a mapping ready for YAML)."""
    offers: list[dict[str, Any]] = []
    for (offer_id, name, category, channels, band, discount, product, min_age,
         volume, margin, duration) in _OFFERS:
        offer: dict[str, Any] = {
            "offer_id": offer_id,
            "name": name,
            "category": category,
            "channels": list(channels),
            "expected_volume": volume,
            "margin": margin,
            "duration": duration,
            "model_id": "propensity",
            "attributes": {
                "price_band": band,
                "discount_pct": discount,
                "product": product,
                "min_age": min_age,
            },
        }
        if offer_id == "loyalty_member_evening":
            offer["valid_from"] = "2025-11-01T00:00:00Z"
            offer["valid_to"] = "2026-02-28T23:59:59Z"
        if offer_id == "upsell_tv_larger":
            offer["lever"] = 1.2  # the business pushes the TV campaign this season
        offers.append(offer)
    offers.append({
        "offer_id": MANDATORY_OFFER,
        "name": "Our privacy notice has changed",
        "category": "service",
        "channels": [],
        "expected_volume": 1.0,
        "margin": 0.0,
        "duration": 1.0,
        "mandatory": True,
        "attributes": {"price_band": "low", "discount_pct": 0, "product": "", "min_age": 0, "regulatory": "yes"},
    })
    offers.append({
        "offer_id": FALLBACK_OFFER,
        "name": "Sign up for our newsletter",
        "category": "service",
        "channels": [],
        "expected_volume": 1.0,
        "margin": 1.0,
        "duration": 1.0,
        "fallback": True,
        "attributes": {"price_band": "low", "discount_pct": 0, "product": "", "min_age": 0},
    })
    rules = [
        {"rule_id": "hyg_do_not_contact", "kind": "hygiene", "applies_to": "*",
         "expression": 'offer.category == "service" || !has(customer.do_not_contact) || !customer.do_not_contact',
         "description": "Do-not-contact customers get service messages only"},
        {"rule_id": "hyg_complaint_open", "kind": "hygiene", "applies_to": "*",
         "expression": 'offer.category in ["service", "retention"] || !has(customer.complaint_open) || !customer.complaint_open',
         "description": "With a complaint open, no sales offers: fix the complaint first"},
        {"rule_id": "hyg_credit_block", "kind": "hygiene", "applies_to": "xsell_store_card",
         "expression": "!has(customer.credit_block) || !customer.credit_block",
         "description": "No store card for customers with a credit block"},
        {"rule_id": "hyg_credit_block_insurance", "kind": "hygiene", "applies_to": "xsell_insurance_plus",
         "expression": "!has(customer.credit_block) || !customer.credit_block",
         "description": "No financed insurance for customers with a credit block"},
        {"rule_id": "biz_already_owns", "kind": "business", "applies_to": "*",
         "expression": 'offer.attributes.product == "" || !has(customer.owned_products) || !(offer.attributes.product in customer.owned_products)',
         "description": "Do not offer a product the customer already owns"},
        {"rule_id": "biz_min_age", "kind": "business", "applies_to": "*",
         "expression": "!has(customer.age) || customer.age == null || double(customer.age) >= double(offer.attributes.min_age)",
         "description": "Customer must be old enough for the offer"},
        {"rule_id": "biz_winback_lapsed_only", "kind": "business", "applies_to": "winback",
         "expression": 'customer.lifecycle_stage in ["declining", "inactive", "lost"]',
         "description": "Win-back offers only for customers who have lapsed"},
        {"rule_id": "biz_retention_at_risk", "kind": "business", "applies_to": "retention",
         "expression": 'customer.lifecycle_stage in ["starter", "active", "declining"]',
         "description": "Retention offers for customers we can still keep"},
        {"rule_id": "biz_premium_spenders", "kind": "business", "applies_to": "upsell_premium_membership",
         "expression": "double(customer.monetary) >= 200.0",
         "description": "Premium membership for customers who spent at least 200"},
        {"rule_id": "comm_callcenter_hours", "kind": "communication", "applies_to": "*",
         "expression": 'offer.fallback || context.channel != "callcenter" || (context.hour >= 9 && context.hour < 20)',
         "description": "Call-centre offers only between 09:00 and 20:00 (the fallback keeps the slot filled)"},
        {"rule_id": "comm_no_email_at_night", "kind": "communication", "applies_to": "*",
         "expression": 'offer.fallback || context.channel != "email" || (context.hour >= 7 && context.hour < 22)',
         "description": "No offer emails at night (the fallback keeps the slot filled)"},
    ]
    strategies = {
        "acquire": {"xsell": 1.2, "upsell": 0.6, "loyalty": 1.0, "retention": 0.4, "winback": 0.2, "service": 1.5},
        "develop": {"xsell": 1.5, "upsell": 0.8, "loyalty": 1.2, "retention": 0.6, "winback": 0.2, "service": 1.0},
        "broaden": {"xsell": 1.5, "upsell": 1.0, "loyalty": 1.0, "retention": 0.8, "winback": 0.2, "service": 0.8},
        "deepen": {"xsell": 1.0, "upsell": 1.6, "loyalty": 1.2, "retention": 0.8, "winback": 0.2, "service": 0.8},
        "maintain": {"xsell": 0.8, "upsell": 0.8, "loyalty": 1.5, "retention": 1.0, "winback": 0.2, "service": 1.0},
        "retain": {"xsell": 0.5, "upsell": 0.4, "loyalty": 1.0, "retention": 2.0, "winback": 1.0, "service": 1.0},
        "win_back": {"xsell": 0.3, "upsell": 0.2, "loyalty": 0.6, "retention": 1.0, "winback": 2.0, "service": 1.0},
    }
    assignment = [
        {"condition": 'customer.lifecycle_stage == "new"', "strategy": "acquire"},
        {"condition": 'customer.lifecycle_stage == "starter"', "strategy": "develop"},
        {"condition": 'customer.lifecycle_stage == "active" && customer.loyalty_stage == "grow_me"', "strategy": "deepen"},
        {"condition": 'customer.lifecycle_stage == "active"', "strategy": "broaden"},
        {"condition": 'customer.lifecycle_stage == "declining"', "strategy": "retain"},
        {"condition": 'customer.lifecycle_stage in ["inactive", "lost"]', "strategy": "win_back"},
        {"condition": "true", "strategy": "maintain"},
    ]
    policies = [
        {"policy_id": "cp_decline_cooloff", "applies_to": "*", "scope": "offer", "event": "declined",
         "max_count": 1, "window_days": 30, "channel": "", "description": "Not within 30 days of a decline"},
        {"policy_id": "cp_weekly_offer_cap", "applies_to": "*", "scope": "offer", "event": "shown",
         "max_count": 3, "window_days": 7, "channel": "", "description": "The same offer at most 3 times a week"},
        {"policy_id": "cp_app_daily_cap", "applies_to": "*", "scope": "all", "event": "shown",
         "max_count": 3, "window_days": 1, "channel": "app", "description": "At most 3 offers a day in the app"},
        {"policy_id": "cp_privacy_notice_once", "applies_to": MANDATORY_OFFER, "scope": "offer", "event": "shown",
         "max_count": 1, "window_days": 365, "channel": "", "description": "The privacy notice once a year"},
        {"policy_id": "cp_winback_monthly", "applies_to": "winback", "scope": "category", "event": "shown",
         "max_count": 2, "window_days": 30, "channel": "", "description": "Win-back offers at most twice a month"},
    ]
    return {
        "name": "demo-retail",
        "channels": list(CHANNELS),
        "exploration": {"epsilon": 0.05},
        "new_customer_profile": {
            "do_not_contact": False,
            "complaint_open": False,
            "credit_block": False,
            "owned_products": [],
            "segment": "mass",
        },
        # what rules read from customers.csv beyond the defaults above (the measures need no entry)
        "profile_fields": {"age": "number", "owned_products": "list<string>"},
        "offers": offers,
        "rules": rules,
        "strategies": strategies,
        "strategy_assignment": assignment,
        "contact_policies": policies,
    }


# -- the ground truth ---------------------------------------------------------------------

_CATEGORY_BASE = {"xsell": -2.0, "upsell": -2.4, "loyalty": -1.3, "retention": -1.8, "winback": -2.2, "service": -1.5}
_PRICE_BAND = {"low": 0.3, "mid": 0.0, "high": -0.6}
_CHANNEL_EFFECT = {"app": 0.3, "web": 0.1, "pos": 0.0, "kiosk": -0.1, "email": -0.6, "callcenter": -0.3}


def true_propensity(
    customer: Mapping[str, Any], offer: Mapping[str, Any], context: Mapping[str, Any]
) -> float:
    """The ground-truth acceptance probability of the demo world (documented in docs/training.md).

    ``customer``: measures and profile fields; ``offer``: ``category`` plus its attributes
    (``price_band``, ``discount_pct``); ``context``: ``channel``, ``hour``, ``weekday``
    (Monday = 0). P = logistic(z), z the sum of the terms below.
    """
    category = str(offer["category"])
    band = str(offer.get("price_band", "mid"))
    stage = str(customer.get("lifecycle_stage", "new"))
    channel = str(context["channel"])
    recency = customer.get("recency_days")
    frequency = float(customer.get("frequency") or 0)
    age = customer.get("age")
    z = _CATEGORY_BASE[category]
    z += 2.5 * float(offer.get("discount_pct", 0)) / 100.0
    z += _PRICE_BAND.get(band, 0.0)
    if customer.get("segment") == "affluent" and band == "high":
        z += 0.9
    if category == "retention" and stage == "declining":
        z += 1.2
    if category == "winback":
        z += 1.5 if stage in ("inactive", "lost") else (-1.0 if stage == "active" else 0.0)
    if category == "xsell" and stage == "active":
        z += 0.5
    if category == "upsell" and float(customer.get("avg_purchase") or 0.0) >= 80.0:
        z += 0.8
    if category == "loyalty" and customer.get("loyalty_stage") == "grow_me":
        z += 1.0
    if category == "service" and stage == "new":
        z += 0.6
    z += 0.25 * math.log1p(frequency)
    z -= 0.5 * min(float(recency) if recency is not None else 365.0, 365.0) / 365.0
    z += _CHANNEL_EFFECT.get(channel, 0.0)
    if age is not None and channel == "app" and float(age) < 35:
        z += 0.3
    if age is not None and float(age) >= 65 and channel in ("app", "web"):
        z -= 0.2
    if 18 <= int(context["hour"]) <= 21:
        z += 0.25
    if category == "loyalty" and int(context["weekday"]) >= 5:
        z += 0.2
    if customer.get("complaint_open"):
        z -= 1.0
    return 1.0 / (1.0 + math.exp(-z))


# -- generation -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DemoData:
    """Paths of the generated files and the snapshot instant."""

    directory: Path
    customers: Path
    transactions: Path
    catalog: Path
    history: Path
    as_of: datetime
    n_customers: int
    n_transactions: int
    n_history: int


def _iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _pick(rng: np.random.Generator, options: tuple[str, ...], shares: tuple[float, ...]) -> str:
    return options[int(rng.choice(len(options), p=np.asarray(shares)))]


_LOG_POLICY_PREFERENCE = {
    "new": {"service": 1.0, "xsell": 0.5},
    "starter": {"xsell": 0.8, "loyalty": 0.3},
    "active": {"upsell": 0.6, "xsell": 0.4, "loyalty": 0.4},
    "declining": {"retention": 1.0},
    "inactive": {"winback": 1.0},
    "lost": {"winback": 1.2},
}


def generate_demo_data(out_dir: str | Path, *, customers: int = 2000, seed: int = 0) -> DemoData:
    """Write customers.csv, transactions.csv, catalog.yaml and history.csv into ``out_dir``.

    Deterministic: the same ``customers`` and ``seed`` give byte-identical files.
    """
    if isinstance(customers, bool) or not isinstance(customers, int) or customers < 10:
        raise InputError(f"customers must be an integer ≥ 10, got {customers!r}", field="customers")
    if customers > 1_000_000:
        raise InputError("customers must be at most 1,000,000", field="customers")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a path through a file: one clear error, not a raw OSError
        raise InputError(f"cannot create the output directory {out}: {exc.strerror or exc}", field="out_dir") from exc
    rng = np.random.default_rng(seed)
    span = (END - START).total_seconds()

    customer_rows: list[list[Any]] = []
    profiles: dict[str, dict[str, Any]] = {}
    transactions: list[dict[str, Any]] = []
    for n in range(1, customers + 1):
        cid = f"C{n:06d}"
        segment = _pick(rng, SEGMENTS, _SEGMENT_SHARE)
        age = int(np.clip(rng.normal(22 if segment == "student" else 45, 4 if segment == "student" else 14), 18, 90))
        region = REGIONS[int(rng.integers(len(REGIONS)))]
        do_not_contact = bool(rng.random() < 0.03)
        complaint_open = bool(rng.random() < 0.04)
        credit_block = bool(rng.random() < 0.03)
        own_p = 0.25 if segment == "affluent" else 0.12
        owned = [p for p in PRODUCTS if rng.random() < own_p]
        # Signups skew recent so that there are new and starter customers at the snapshot.
        signup = START + timedelta(seconds=float(span * rng.beta(1.3, 1.0)))
        signup = signup.replace(microsecond=0)
        customer_rows.append([
            cid, age, segment, region, _bool(do_not_contact), _bool(complaint_open),
            _bool(credit_block), "|".join(owned), signup.date().isoformat(),
        ])
        profiles[cid] = {
            "age": age, "segment": segment, "region": region, "do_not_contact": do_not_contact,
            "complaint_open": complaint_open, "credit_block": credit_block, "owned_products": owned,
        }
        # 3 % have signed up but not bought yet: measures stay missing (recency None).
        if rng.random() < 0.03:
            continue
        rate = float(rng.gamma(2.0, 4.0))  # purchases a year while alive
        dropout = float(rng.beta(1.5, 8.0))  # chance to leave after each purchase
        spend = _SEGMENT_SPEND[segment] * float(rng.lognormal(0.0, 0.35))
        when = signup
        while when <= END:
            hour = int(rng.integers(8, 21))
            stamp = when.replace(hour=hour, minute=int(rng.integers(60)), second=int(rng.integers(60)), microsecond=0)
            if stamp > END:
                break
            amount = round(spend * float(rng.lognormal(0.0, 0.5)), 2)
            transactions.append({
                "customer_id": cid, "timestamp": stamp, "amount": max(amount, 0.99),
                "quantity": 1 + int(rng.poisson(0.6)),
            })
            if rng.random() < dropout:
                break
            when = when + timedelta(days=float(rng.exponential(365.0 / rate)))

    transactions.sort(key=lambda t: (t["timestamp"], t["customer_id"]))
    as_of = max(t["timestamp"] for t in transactions)
    measures = derive_features(transactions, as_of=as_of, profiles=profiles)

    offers = [o for o in demo_catalog()["offers"] if o.get("model_id") == "propensity"]
    history_rows: list[list[Any]] = []
    decision_no = 0
    for cid in sorted(profiles):
        customer = measures[cid]
        if customer.get("do_not_contact"):
            continue  # the logging policy respected do-not-contact
        stage = str(customer["lifecycle_stage"])
        preference = _LOG_POLICY_PREFERENCE.get(stage, {})
        for _ in range(int(rng.poisson(6.0))):
            decision_no += 1
            channel = _pick(rng, CHANNELS, tuple(_CHANNEL_SHARE.values()))
            moment = as_of + timedelta(seconds=float(rng.uniform(0, HISTORY_DAYS * 86400)))
            hour = int(rng.integers(9, 20)) if channel in ("pos", "kiosk", "callcenter") else int(rng.integers(0, 24))
            moment = moment.replace(hour=hour, microsecond=0)
            candidates = [
                o for o in offers
                if (not o["channels"] or channel in o["channels"])
                and (o.get("valid_from") is None or _iso(moment) >= o["valid_from"])
                and (o.get("valid_to") is None or _iso(moment) <= o["valid_to"])
            ]
            # Logged policy: 80 % softmax over a stage preference, 20 % uniform.
            scores = np.array([preference.get(o["category"], 0.0) for o in candidates])
            soft = np.exp(scores - scores.max())
            probs = 0.8 * soft / soft.sum() + 0.2 / len(candidates)
            probs = probs / probs.sum()
            k = int(rng.choice(len(candidates), p=probs))
            offer = candidates[k]
            context = {"channel": channel, "hour": hour, "weekday": moment.weekday()}
            p_true = true_propensity(customer, {"category": offer["category"], **offer["attributes"]}, context)
            accepted = bool(rng.random() < p_true)
            history_rows.append([
                f"D{decision_no:07d}", cid, offer["offer_id"], offer["category"], channel, _iso(moment),
                hour, moment.weekday(), f"{float(probs[k]):.6f}", "accepted" if accepted else "declined",
                f"{p_true:.6f}",
            ])

    customers_path = out / "customers.csv"
    transactions_path = out / "transactions.csv"
    catalog_path = out / "catalog.yaml"
    history_path = out / "history.csv"
    customers_path.write_text(_csv_text(
        ["customer_id", "age", "segment", "region", "do_not_contact", "complaint_open", "credit_block",
         "owned_products", "signup_date"], customer_rows), encoding="utf-8")
    transactions_path.write_text(_csv_text(
        ["customer_id", "timestamp", "amount", "quantity"],
        [[t["customer_id"], _iso(t["timestamp"]), f"{t['amount']:.2f}", t["quantity"]] for t in transactions],
    ), encoding="utf-8")
    header = (
        "# Demo offer catalog generated by `nbo demo-data` (seed "
        f"{seed}, {customers} customers).\n# Compile with `nbo bundle build --catalog catalog.yaml ...`.\n"
    )
    catalog_path.write_text(
        header + yaml.safe_dump(demo_catalog(), sort_keys=False, allow_unicode=True, width=110), encoding="utf-8"
    )
    history_path.write_text(_csv_text(
        ["decision_id", "customer_id", "offer_id", "category", "channel", "timestamp", "hour", "weekday",
         "selection_probability", "outcome", "true_propensity"], history_rows), encoding="utf-8")
    return DemoData(
        directory=out, customers=customers_path, transactions=transactions_path, catalog=catalog_path,
        history=history_path, as_of=as_of, n_customers=customers, n_transactions=len(transactions),
        n_history=len(history_rows),
    )
