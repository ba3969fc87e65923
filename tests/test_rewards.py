"""Rewards attributed on the hub (docs/learning.md), on a real SQLite file and a real PostgreSQL.

Each shown slot gets its response and the purchases of that customer within the decision's
attribution window (last touch); events that arrive late — a terminal that syncs days after
the purchase synced from another one — are attributed when they arrive; re-running a pass,
or rebuilding everything, changes nothing; the window comes from the bundle's catalog.
"""

from __future__ import annotations

import itertools
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from bundle_fixtures import make_bundle, make_keys, small_catalog
from nbo.gateway import HubStore, attribute_rewards
from nbo.gateway._hub import IncomingEvent
from sync_helpers import postgres_url

BACKENDS = ("sqlite", "postgresql")
T0 = 1_780_000_000.0
DAY = 86_400.0


@contextmanager
def hub_at(kind: str, state: Path) -> Iterator[HubStore]:
    if kind == "sqlite":
        hub = HubStore.open(None, state_dir=state)
    else:
        url = postgres_url()
        hub = HubStore.open(url, state_dir=state, schema=f"nbo_h14_rewards_{os.getpid()}_{uuid.uuid4().hex[:8]}")
    try:
        yield hub
    finally:
        drop = getattr(hub.db, "drop_schema", None)
        if drop is not None:
            drop()
        hub.close()


@pytest.fixture(params=BACKENDS)
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubStore]:
    with hub_at(request.param, tmp_path / "hub") as h:
        yield h


class Device:
    """Builds one terminal's events with gapless seqs."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.events: list[IncomingEvent] = []

    def add(self, kind: str, payload: dict[str, Any], at: float) -> None:
        self.events.append(IncomingEvent(seq=len(self.events) + 1, event_id=str(uuid.uuid4()), type=kind,
                                         created_at=at, payload=json.dumps(payload)))

    def decision(self, decision_id: str, customer: str, at: float, offers: list[str], *, bundle: str = "small",
                 version: int = 1) -> None:
        self.add("decision", {
            "decision_id": decision_id, "customer_id": customer, "channel": "pos", "bundle_name": bundle,
            "bundle_version": version, "strategy": "develop",
            "offers": [{"offer_id": o, "category": "xsell", "rank": r, "propensity": 0.2, "value": 10.0,
                        "weight": 1.0, "lever": 1.0, "score": 2.0, "selection_probability": 0.9}
                       for r, o in enumerate(offers, start=1)],
            "inputs": {"customer__frequency": 3}, "eligible": {"offers": offers, "p": [[1.0, len(offers)]],
                                                               "mandatory": 0, "epsilon": 0.0},
        }, at)

    def response(self, decision_id: str, customer: str, offer: str, outcome: str, at: float) -> None:
        self.add("response", {"decision_id": decision_id, "offer_id": offer, "customer_id": customer,
                              "category": "xsell", "channel": "pos", "outcome": outcome}, at)

    def purchase(self, customer: str, amount: str, at: float) -> None:
        self.add("purchase", {"purchase_id": str(uuid.uuid4()), "customer_id": customer, "amount": amount,
                              "quantity": 1, "timestamp": at, "idempotency_key": str(uuid.uuid4())}, at)

    def push(self, hub: HubStore, upto: int | None = None) -> None:
        held = hub.acked_through(self.device_id)
        batch = self.events[held:upto]
        if batch:
            hub.ingest(self.device_id, batch)


def rewards(hub: HubStore) -> dict[tuple[str, str], tuple[Any, ...]]:
    with hub.db.transaction() as tx:
        rows = tx.execute("SELECT decision_id, offer_id, position, outcome, accepted, purchases, purchase_amount, "
                          "selection_probability, window_ends FROM hub_rewards")
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def scenario() -> tuple[Device, Device]:
    """pos-1 decides for C1 (and C2) and hears responses; C1 buys at pos-2 (another terminal)."""
    pos1, pos2 = Device("pos-1"), Device("pos-2")
    pos1.decision("d1", "C1", T0, ["A", "B", "C"])
    pos1.response("d1", "C1", "A", "accepted", T0 + 60)
    pos1.response("d1", "C1", "B", "declined", T0 + 61)
    pos1.decision("d3", "C2", T0 + 10, ["B"])
    pos1.response("d3", "C2", "B", "ignored", T0 + 70)
    pos1.decision("d2", "C1", T0 + 3 * DAY, ["C"])  # C1 again, three days later
    pos2.purchase("C1", "19.99", T0 + 1 * DAY)  # → d1 (last touch before it)
    pos2.purchase("C1", "5.01", T0 + 2 * DAY)  # → d1
    pos2.purchase("C1", "7.50", T0 + 4 * DAY)  # → d2
    pos2.purchase("C1", "100", T0 + 11 * DAY)  # past d2's 7-day window: nobody's
    pos2.purchase("C2", "3", T0 - DAY)  # before any decision of C2
    return pos1, pos2


EXPECTED = {
    ("d1", "A"): (1, "accepted", 1, 2, "25", 0.9, T0 + 7 * DAY),
    ("d1", "B"): (2, "declined", 0, 2, "25", 0.9, T0 + 7 * DAY),
    ("d1", "C"): (3, None, 0, 2, "25", 0.9, T0 + 7 * DAY),
    ("d3", "B"): (1, "ignored", 0, 0, "0", 0.9, T0 + 10 + 7 * DAY),
    ("d2", "C"): (1, None, 0, 1, "7.5", 0.9, T0 + 10 * DAY),
}


def test_each_shown_slot_gets_its_response_and_the_purchases_in_its_window(hub: HubStore) -> None:
    pos1, pos2 = scenario()
    pos1.push(hub)
    pos2.push(hub)
    report = attribute_rewards(hub)
    assert report.events == len(pos1.events) + len(pos2.events)
    assert report.decisions == 3
    assert rewards(hub) == EXPECTED


def test_late_events_are_attributed_when_they_arrive(hub: HubStore) -> None:
    """pos-2's purchases reach the hub first; pos-1 was offline and syncs its decisions days
    later, one batch at a time, with a pass after each: the end result is the same."""
    pos1, pos2 = scenario()
    pos2.push(hub)
    attribute_rewards(hub)
    assert rewards(hub) == {}
    for upto in range(1, len(pos1.events) + 1):
        pos1.push(hub, upto)
        attribute_rewards(hub)
    assert rewards(hub) == EXPECTED
    # d2 arrived last and took over the purchase of day 4 from d1 (last touch)
    with hub.db.transaction() as tx:
        (n,) = tx.execute("SELECT COUNT(*) FROM hub_purchases")[0]
    assert n == 5


INTERLEAVINGS = sorted(set(itertools.permutations("1122")))


@pytest.mark.parametrize("order", INTERLEAVINGS, ids="".join)
def test_the_result_does_not_depend_on_the_arrival_order(kind: str, tmp_path: Path, order: tuple[str, ...]) -> None:
    """Each terminal syncs in two pushes (in its own seq order); every interleaving of the four
    pushes, with a pass after each, ends with the same rewards."""
    pos1, pos2 = scenario()
    pushes = {"1": [(pos1, 3), (pos1, None)], "2": [(pos2, 2), (pos2, None)]}
    with hub_at(kind, tmp_path / "hub") as hub:
        for which in order:
            device, upto = pushes[which].pop(0)
            device.push(hub, upto)
            attribute_rewards(hub)
        assert rewards(hub) == EXPECTED


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        postgres_url()
    return str(request.param)


def test_re_running_and_rebuilding_change_nothing(hub: HubStore) -> None:
    pos1, pos2 = scenario()
    pos1.push(hub)
    pos2.push(hub)
    attribute_rewards(hub)
    first = rewards(hub)
    again = attribute_rewards(hub)
    assert again.events == 0 and again.recomputed == 0
    assert rewards(hub) == first
    # replaying a batch the hub already holds is a no-op for the rewards too
    hub.ingest("pos-1", pos1.events)
    attribute_rewards(hub)
    assert rewards(hub) == first
    rebuilt = attribute_rewards(hub, rebuild=True)
    assert rebuilt.decisions == 3
    assert rewards(hub) == first == EXPECTED


def test_compacted_and_rejected_decisions_are_passed_over(hub: HubStore) -> None:
    pos1 = Device("pos-1")
    pos1.add("decision", {"compacted": True}, T0)
    pos1.add("decision", {"decision_id": "bad"}, T0)  # rejected by the hub: fields missing
    pos1.decision("d9", "C9", T0, ["A"])
    pos1.push(hub)
    report = attribute_rewards(hub)
    assert report.events == 3 and report.decisions == 1
    assert set(rewards(hub)) == {("d9", "A")}


def test_the_attribution_window_comes_from_the_catalog(hub: HubStore, tmp_path: Path) -> None:
    key, _ = make_keys(tmp_path / "keys")
    catalog = small_catalog()
    catalog["attribution"] = {"window_days": 2}
    bundle = make_bundle(tmp_path / "b", key=key, catalog=catalog, name="short", version=4)
    hub.register_bundle(bundle, name="short", version=4)
    pos1 = Device("pos-1")
    pos1.decision("d1", "C1", T0, ["A"], bundle="short", version=4)
    pos1.decision("d2", "C2", T0, ["A"], bundle="unknown", version=1)  # not on this hub: 7 days
    pos1.purchase("C1", "1", T0 + 1 * DAY)
    pos1.purchase("C1", "2", T0 + 3 * DAY)  # outside two days
    pos1.purchase("C2", "4", T0 + 6 * DAY)
    pos1.push(hub)
    attribute_rewards(hub)
    got = rewards(hub)
    assert got[("d1", "A")][3:5] == (1, "1") and got[("d1", "A")][6] == T0 + 2 * DAY
    assert got[("d2", "A")][3:5] == (1, "4") and got[("d2", "A")][6] == T0 + 7 * DAY


def test_a_catalog_window_that_is_not_a_positive_number_of_days_is_refused() -> None:
    from nbo.model_export import validate_catalog
    from nbo.sdk import CatalogError

    for bad in ({"window_days": 0}, {"window_days": "7"}, {"days": 7}, 7):
        catalog = small_catalog()
        catalog["attribution"] = bad
        with pytest.raises(CatalogError, match="attribution"):
            validate_catalog(catalog)
