"""A synthetic field log for the console's tests and benchmark, and the counts it should show.

``field_log`` makes, per device, a seq-ordered list of events as a terminal would push them:
decisions (with offers, propensities, values and the funnel), responses to shown offers
(accepted with the offer's propensity, so calibration is checkable), and purchases. The
``expected_*`` functions compute figures straight from the hub's event log (``HubStore.events``)
with plain Python — a separate path from the console's rollups, which the tests compare.
"""

from __future__ import annotations

import io
import json
import random
import sqlite3
import tempfile
import uuid
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DAY = 86_400.0
START = datetime(2026, 9, 1, tzinfo=UTC).timestamp()  # 2026-09-01 00:00 UTC
OFFERS = [(f"OF{i:03d}", ("xsell", "upsell", "loyalty", "retention")[i % 4], float(5 + 3 * i)) for i in range(24)]
MODELS = {offer_id: ("m_cross" if category in ("xsell", "upsell") else "m_keep") for offer_id, category, _ in OFFERS}
RULES = ("stock", "age", "quiet-hours", "max-2-a-week")
BUNDLE = ("retail", 3)


def device_ids(n: int) -> list[str]:
    return [f"pos-{i:03d}" for i in range(1, n + 1)]


def channel_of(device_id: str) -> str:
    return "app" if device_id == "app" else ("web" if device_id.endswith(("3", "7")) else "pos")


def field_log(device_id: str, *, events: int, customers: int, days: int, seed: int,
              bundle_version: int = BUNDLE[1], experiment: str | None = None
              ) -> list[tuple[int, str, str, float, str]]:
    """(seq, event_id, type, created_at, payload_json) of one device, in seq order."""
    rng = random.Random(f"{seed}:{device_id}")
    channel = channel_of(device_id)
    times = sorted(START + rng.random() * days * DAY for _ in range(events))
    out: list[tuple[int, str, str, float, str]] = []
    shown: list[tuple[str, str, str, float]] = []  # decision, offer, category, propensity
    # the offers this device tends to show: a skewed popularity, so concentration means something
    weights = [1.0 / (1 + k) ** 1.3 for k in range(len(OFFERS))]
    for seq, ts in enumerate(times, start=1):
        roll = rng.random()
        customer = f"C{rng.randrange(customers):06d}"
        if roll < 0.5 or not shown:
            decision_id = str(uuid.UUID(int=rng.getrandbits(128)))
            k = rng.choice((1, 1, 2, 3))
            picks = list(dict.fromkeys(rng.choices(range(len(OFFERS)), weights=weights, k=k)))
            offers = []
            for rank, i in enumerate(picks, start=1):
                offer_id, category, value = OFFERS[i]
                p = round(min(0.95, max(0.01, rng.betavariate(2, 6))), 4)
                offers.append({"offer_id": offer_id, "category": category, "rank": rank, "propensity": p,
                               "value": value, "weight": 1.0, "lever": 1.0, "score": p * value,
                               "selection_probability": 1.0})
                shown.append((decision_id, offer_id, category, p))
            removed = {r: n for r in RULES if (n := rng.randrange(0, 4)) > 0}
            candidates = len(offers) + sum(removed.values()) + rng.randrange(0, 3)
            payload: dict[str, Any] = {
                "decision_id": decision_id, "customer_id": customer, "channel": channel,
                "bundle_name": BUNDLE[0], "bundle_version": bundle_version, "strategy": "develop",
                "offers": offers, "funnel": {"candidates": candidates, "removed": removed},
            }
            if experiment is not None:  # the arm follows the customer (docs/experiments.md)
                arm = ("champion", "challenger", "control")[int(customer[1:]) % 3]
                payload["experiment"] = {"id": experiment, "arm": arm,
                                         "kind": "control-none" if arm == "control" else arm, "hash": 1}
            out.append((seq, str(uuid.uuid4()), "decision", ts, json.dumps(payload)))
        elif roll < 0.75:
            decision_id, offer_id, category, p = shown.pop(rng.randrange(len(shown)))
            outcome = "accepted" if rng.random() < p else rng.choice(("declined", "ignored"))
            payload = {"decision_id": decision_id, "offer_id": offer_id, "customer_id": customer,
                       "category": category, "channel": channel, "outcome": outcome}
            out.append((seq, str(uuid.uuid4()), "response", ts, json.dumps(payload)))
        else:
            amount = f"{rng.randrange(100, 20000) / 100:.2f}"
            # each customer buys within a window of their own, from a year before the log to its end:
            # some are long gone, some new, some regular, so every lifecycle stage and flow occurs
            first, last = customer_window(customer, seed=seed, days=days)
            bought = min(ts, first + rng.random() * (last - first))
            payload = {"purchase_id": str(uuid.uuid4()), "customer_id": customer, "amount": amount,
                       "quantity": rng.randrange(1, 4), "timestamp": bought, "idempotency_key": str(uuid.uuid4())}
            out.append((seq, str(uuid.uuid4()), "purchase", ts, json.dumps(payload)))
    return out


def customer_window(customer: str, *, seed: int, days: int) -> tuple[float, float]:
    """(first, last) purchase time of a customer's buying life (deterministic per customer)."""
    rng = random.Random(f"{seed}:window:{customer}")
    first = START - 400 * DAY + rng.random() * (400 + days) * DAY
    last = min(START + days * DAY, first + rng.random() * 300 * DAY)
    return first, last


def catalog_bundle_bytes(offers: Iterable[tuple[str, str]] | None = None) -> bytes:
    """A zip holding just a ``catalog.sqlite`` with offers(offer_id, model_id): what the console
    reads of a published bundle to name each offer's model."""
    pairs = list(offers) if offers is not None else list(MODELS.items())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "catalog.sqlite"
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE offers(offer_id TEXT PRIMARY KEY, model_id TEXT)")
        conn.executemany("INSERT INTO offers VALUES (?, ?)", pairs)
        conn.commit()
        conn.close()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.write(path, "catalog.sqlite")
        return buf.getvalue()


# -- the truth, straight from the hub's log ------------------------------------------------------


def day_of(ts: float) -> int:
    return int(ts // DAY)


def parsed(events: Sequence[Mapping[str, Any]]) -> Iterator[tuple[Mapping[str, Any], dict[str, Any]]]:
    for e in events:
        if e["status"] == "ok":
            yield e, json.loads(e["payload"])


def expected_offer_counts(events: Sequence[Mapping[str, Any]], *, first_day: int, last_day: int,
                          channel: str | None = None) -> dict[str, tuple[int, int]]:
    """offer_id → (shown, accepted) for decisions made on those days (first response counts)."""
    decisions: dict[tuple[str, str], tuple[int, str]] = {}
    answered: set[tuple[str, str]] = set()
    shown: Counter[str] = Counter()
    accepted: Counter[str] = Counter()
    for e, p in parsed(events):
        if e["type"] == "decision":
            for o in p["offers"]:
                decisions[(p["decision_id"], o["offer_id"])] = (day_of(e["created_at"]), p["channel"])
                if first_day <= day_of(e["created_at"]) <= last_day and channel in (None, p["channel"]):
                    shown[o["offer_id"]] += 1
    for e, p in parsed(events):
        if e["type"] != "response":
            continue
        key = (p["decision_id"], p["offer_id"])
        if key in answered or key not in decisions:
            continue
        answered.add(key)
        day, ch = decisions[key]
        if p["outcome"] == "accepted" and first_day <= day <= last_day and channel in (None, ch):
            accepted[p["offer_id"]] += 1
    return {o: (shown[o], accepted[o]) for o in set(shown) | set(accepted)}


def expected_removed(events: Sequence[Mapping[str, Any]], *, first_day: int, last_day: int) -> dict[str, int]:
    removed: Counter[str] = Counter()
    for e, p in parsed(events):
        if e["type"] == "decision" and first_day <= day_of(e["created_at"]) <= last_day and "funnel" in p:
            removed.update(p["funnel"]["removed"])
    return dict(removed)


def expected_purchase_days(events: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float, float]]]:
    """customer → sorted (day, first ts, last ts) of the days they purchased."""
    days: dict[str, dict[int, list[float]]] = {}
    for e, p in parsed(events):
        if e["type"] == "purchase":
            ts = float(p["timestamp"])
            row = days.setdefault(p["customer_id"], {}).setdefault(day_of(ts), [ts, ts])
            row[0], row[1] = min(row[0], ts), max(row[1], ts)
    return {c: sorted((d, a, b) for d, (a, b) in ds.items()) for c, ds in days.items()}
