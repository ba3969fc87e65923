"""The console's figures on a seeded hub, SQLite and PostgreSQL: each compared with the same
figure computed straight from the hub's event log (tests/console_helpers.py), plus the
incremental refresh, the read-only connection and the binned AUC."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from console_helpers import (
    BUNDLE,
    DAY,
    START,
    catalog_bundle_bytes,
    day_of,
    device_ids,
    expected_offer_counts,
    expected_purchase_days,
    expected_removed,
    field_log,
)
from nbo.console import Console, Period, binned_auc
from nbo.gateway import HubStore
from nbo.gateway._hub import IncomingEvent
from nbo.sdk import ManualClock, StateError
from nbo.sdk.core import LIFECYCLE_STAGES, update_measures
from sync_helpers import BACKENDS, hub_backend

TOKEN = "console-analyst-token"
NOW = START + 40 * DAY
DAYS = 30


@dataclass
class Seeded:
    hub: HubStore
    console: Console
    events: list[dict[str, Any]]
    heads: dict[str, int]


def push(hub: HubStore, device: str, rows: list[tuple[int, str, str, float, str]], **status: Any) -> None:
    for start in range(0, len(rows), 500):
        chunk = rows[start:start + 500]
        hub.ingest(device, [IncomingEvent(seq=s, event_id=e, type=t, created_at=c, payload=p)
                            for s, e, t, c, p in chunk], **status)


@pytest.fixture(params=BACKENDS, scope="module")
def seeded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    state = tmp_path_factory.mktemp("hub")
    with hub_backend(request.param, state, clock=ManualClock(NOW)) as (hub, url, schema):
        heads: dict[str, int] = {}
        for n, device in enumerate([*device_ids(5), "app"]):
            rows = field_log(device, events=500, customers=120, days=DAYS, seed=7)
            extra = 3 * n  # events the terminal holds but has not pushed yet
            heads[device] = len(rows) + extra
            version = BUNDLE[1] + (1 if device == "pos-002" else 0)
            push(hub, device, rows, outbox_head=heads[device], active_bundle=(BUNDLE[0], version))
        # two events the hub rejects (dead-lettered on the terminal)
        hub.ingest("pos-004", [
            IncomingEvent(seq=501, event_id="bad-1", type="decision", created_at=START, payload="{}"),
            IncomingEvent(seq=502, event_id="bad-2", type="nonsense", created_at=START, payload="{}"),
        ], outbox_head=heads["pos-004"], active_bundle=(BUNDLE[0], BUNDLE[1]))
        hub.register_bundle(catalog_bundle_bytes(), name=BUNDLE[0], version=BUNDLE[1])
        hub.register_bundle(catalog_bundle_bytes(), name=BUNDLE[0], version=BUNDLE[1] + 1)
        hub_url = url if url is not None else f"sqlite:{state / 'hub.sqlite'}"
        console = Console(hub_url, analyst_digests=[hashlib.sha256(TOKEN.encode()).digest()], schema=schema,
                          clock=ManualClock(NOW).now)
        try:
            assert console.refresh() == 6 * 500 + 2
            yield Seeded(hub, console, hub.events(), heads)
        finally:
            console.close()


PERIOD = Period(date(2026, 9, 8), date(2026, 9, 21))


def test_offer_totals_equal_the_counts_in_the_log(seeded: Seeded) -> None:
    for channel in (None, "pos", "app"):
        report = seeded.console.offers(PERIOD, channel=channel, by="offer")
        expected = expected_offer_counts(seeded.events, first_day=PERIOD.first_day, last_day=PERIOD.last_day,
                                         channel=channel)
        shown = dict(zip(report.totals.column("offer"), report.totals.column("shown"), strict=True))
        accepted = dict(zip(report.totals.column("offer"), report.totals.column("accepted"), strict=True))
        assert shown == {o: s for o, (s, _) in expected.items()}, channel
        assert accepted == {o: a for o, (_, a) in expected.items()}, channel
        assert sum(shown.values()) > 100 and sum(accepted.values()) > 5  # the seed is not trivial
        ranked = report.totals.column("accepted")
        assert ranked == sorted(ranked, reverse=True)  # most accepted first


def test_funnel_and_rule_removals_equal_the_decision_events(seeded: Seeded) -> None:
    report = seeded.console.offers(PERIOD, channel=None, by="category")
    removed = dict(zip(report.rules.column("rule_or_policy"), report.rules.column("offers_removed"), strict=True))
    assert removed == expected_removed(seeded.events, first_day=PERIOD.first_day, last_day=PERIOD.last_day)
    decisions = [json.loads(e["payload"]) for e in seeded.events if e["type"] == "decision" and e["status"] == "ok"
                 and PERIOD.first_day <= day_of(e["created_at"]) <= PERIOD.last_day]
    stages = dict(report.funnel.rows)
    assert stages["candidates"] == sum(d["funnel"]["candidates"] for d in decisions)
    assert stages["shown"] == sum(len(d["offers"]) for d in decisions)
    assert stages["eligible"] == stages["candidates"] - stages["removed by rules and contact policies"]
    assert report.decisions == report.funnel_decisions == len(decisions)
    # concentration: the smallest number of offers whose wins reach 90 % of the decisions
    wins = Counter(o["offer_id"] for d in decisions for o in d["offers"] if o["rank"] == 1)
    counts = sorted(wins.values(), reverse=True)
    k = next(i for i in range(1, len(counts) + 1) if sum(counts[:i]) >= 0.9 * sum(counts))
    assert report.winners_90 == k
    # by category / channel sum to the same totals
    by_channel = seeded.console.offers(PERIOD, channel=None, by="channel")
    assert sum(by_channel.totals.column("shown")) == sum(report.totals.column("shown")) == stages["shown"]


def test_field_shows_pending_dead_lettered_bundle_and_behind(seeded: Seeded) -> None:
    report = seeded.console.field()
    rows = {r[0]: dict(zip(report.terminals.columns, r, strict=True)) for r in report.terminals.rows}
    assert set(rows) == {*device_ids(5), "app"}
    for device, head in seeded.heads.items():
        acked = seeded.hub.acked_through(device)
        assert rows[device]["acked_through"] == acked
        assert rows[device]["events_pending"] == head - acked
    rejected = Counter(e["device_id"] for e in seeded.events if e["status"] == "rejected")
    assert {d: r["dead_lettered"] for d, r in rows.items()} == {d: rejected.get(d, 0) for d in rows}
    assert rows["pos-002"]["bundle_version"] == BUNDLE[1] + 1 and rows["pos-002"]["versions_behind"] == 0
    assert rows["pos-001"]["bundle_version"] == BUNDLE[1] and rows["pos-001"]["versions_behind"] == 1
    assert report.latest == (BUNDLE[0], BUNDLE[1] + 1)
    rollout = {r[0]: r[1] for r in report.rollout.rows}
    assert rollout == {f"retail v{BUNDLE[1] + 1}": 1, f"retail v{BUNDLE[1]}": 5}
    behind = seeded.console.field(behind_only=True)
    assert {r[0] for r in behind.terminals.rows} == {d for d in rows if d != "pos-002"}
    assert rows["pos-001"]["last_sync_utc"] == "2026-10-11 00:00"  # the hub's clock at the push


def test_lifecycle_flows_match_the_sdk_measures_of_each_customer(seeded: Seeded) -> None:
    report = seeded.console.customers(PERIOD)
    purchases = expected_purchase_days(seeded.events)
    raw: dict[str, list[dict[str, Any]]] = {}
    for e in seeded.events:
        if e["type"] == "purchase" and e["status"] == "ok":
            p = json.loads(e["payload"])
            raw.setdefault(p["customer_id"], []).append({"timestamp": p["timestamp"], "amount": p["amount"]})
    expected: Counter[tuple[str, str]] = Counter()
    for customer, bought in raw.items():
        if not any(day <= PERIOD.last_day for day, _, _ in purchases[customer]):
            continue
        bought.sort(key=lambda p: p["timestamp"])
        before = [p for p in bought if p["timestamp"] < PERIOD.start]
        by_end = [p for p in bought if p["timestamp"] < PERIOD.end]
        s0 = update_measures(None, before, as_of=PERIOD.start)["lifecycle_stage"]
        s1 = update_measures(None, by_end, as_of=PERIOD.end)["lifecycle_stage"]
        expected[(s0, s1)] += 1
    assert {(a, b): n for a, b, n in report.flows.rows} == dict(expected)
    assert len({a for a, _ in expected}) >= 4 and len(expected) >= 6  # the seed has real flows
    matrix = {r[0]: dict(zip(LIFECYCLE_STAGES, r[1:-1], strict=True)) for r in report.matrix.rows}
    assert matrix["new"]["starter"] == expected[("new", "starter")]
    assert sum(r[-1] for r in report.matrix.rows) == report.customers == sum(expected.values())
    pyramid = {r[0]: r[1] for r in report.pyramid.rows}
    assert sum(pyramid.values()) == report.customers
    assert pyramid["top 20 %"] == round(report.customers * 0.2)
    shares = [r[5] for r in report.pyramid.rows]
    assert shares[0] > 0.2 and abs(sum(shares) - 1.0) < 1e-3  # the top fifth holds more than a fifth
    loyalty = {r[0]: (r[1], r[2]) for r in report.loyalty.rows}
    assert sum(v[1] for v in loyalty.values()) == report.customers
    retention = dict(report.retention.rows)
    base = retained = 0
    for bought in raw.values():
        before = [p for p in bought if p["timestamp"] < PERIOD.start]
        if before and update_measures(None, before, as_of=PERIOD.start)["lifecycle_stage"] != "lost":
            base += 1
            retained += any(PERIOD.start <= p["timestamp"] < PERIOD.end for p in bought)
    assert retention["customers with a purchase before the period and not lost (base)"] == base > 0
    assert retention["of them, purchased again in the period (retained)"] == retained
    assert retention["retention rate"] == pytest.approx(retained / base, abs=1e-4)


def test_models_page_calibration_per_bundle_and_model(seeded: Seeded) -> None:
    report = seeded.console.models()
    rows = {(r[1], r[2]): dict(zip(report.models.columns, r, strict=True)) for r in report.models.rows}
    assert set(rows) == {(BUNDLE[1], "m_cross"), (BUNDLE[1], "m_keep")}
    shown = sum(len(json.loads(e["payload"])["offers"]) for e in seeded.events
                if e["type"] == "decision" and e["status"] == "ok")
    assert sum(r["shown"] for r in rows.values()) == shown
    for r in rows.values():
        # responses were drawn as accepted with the offer's propensity: calibrated within noise
        assert r["observed_rate"] == pytest.approx(r["mean_predicted"] * _answered_share(seeded), abs=0.05)
        assert 0.5 < r["auc"] < 0.9
    assert report.experiments is None


def _answered_share(seeded: Seeded) -> float:
    decisions = sum(len(json.loads(e["payload"])["offers"]) for e in seeded.events
                    if e["type"] == "decision" and e["status"] == "ok")
    responses = sum(1 for e in seeded.events if e["type"] == "response")
    return responses / decisions


def test_the_hub_connection_is_read_only(seeded: Seeded) -> None:
    with pytest.raises(StateError):
        seeded.console.hub.query("DELETE FROM hub_events")
    with pytest.raises(StateError):
        seeded.console.hub.query("CREATE TABLE sneaky(x INTEGER)")
    assert len(seeded.hub.events()) == len(seeded.events)


@pytest.mark.parametrize("kind", BACKENDS)
def test_refresh_is_incremental_and_waits_for_a_gap_to_close(kind: str, tmp_path: Path) -> None:
    with hub_backend(kind, tmp_path, clock=ManualClock(NOW)) as (hub, url, schema):
        rows = field_log("pos-001", events=60, customers=10, days=3, seed=3)
        push(hub, "pos-001", rows[:20])
        console = Console(url or f"sqlite:{tmp_path / 'hub.sqlite'}", analyst_digests=[], schema=schema,
                          clock=ManualClock(NOW).now)
        try:
            period = Period(date(2026, 9, 1), date(2026, 9, 3))

            def shown() -> int:
                return sum(console.offers(period).totals.column("shown"))

            def truth(upto: int) -> int:
                return sum(len(json.loads(p)["offers"]) for s, _, t, _, p in rows if t == "decision" and s <= upto)

            assert console.refresh() == 20 and shown() == truth(20)
            push(hub, "pos-001", rows[30:])  # seq 31..60 above a gap: the hub holds them, acked stays 20
            assert console.refresh() == 0 and shown() == truth(20)
            push(hub, "pos-001", rows[20:30])
            assert console.refresh() == 40 and shown() == truth(60)
            assert console.refresh() == 0 and shown() == truth(60)  # nothing counted twice
        finally:
            console.close()


def test_binned_auc_equals_the_exact_auc_when_scores_are_the_bins() -> None:
    for seed in range(20):
        rng = random.Random(seed)
        scores = [rng.randrange(100) for _ in range(400)]
        labels = [rng.random() < (0.1 + 0.8 * s / 100) for s in scores]
        positives = [s for s, y in zip(scores, labels, strict=True) if y]
        negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
        exact = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives) / (
            len(positives) * len(negatives))
        bins = [(sum(1 for s in positives if s == b), sum(1 for s in negatives if s == b)) for b in range(100)]
        assert binned_auc(bins) == pytest.approx(exact, abs=1e-12)
    assert binned_auc([(0, 5), (0, 3)]) is None



def test_a_kept_rollup_file_resumes_and_belongs_to_one_hub(tmp_path: Path) -> None:
    with hub_backend("sqlite", tmp_path / "a", clock=ManualClock(NOW)) as (hub, _, _):
        rows = field_log("pos-001", events=80, customers=10, days=3, seed=4)
        push(hub, "pos-001", rows[:50])
        url = f"sqlite:{tmp_path / 'a' / 'hub.sqlite'}"
        cache = tmp_path / "rollups.sqlite"
        period = Period(date(2026, 9, 1), date(2026, 9, 3))
        first = Console(url, analyst_digests=[], cache=cache)
        assert first.refresh() == 50
        shown = first.offers(period).totals.rows
        first.close()
        push(hub, "pos-001", rows[50:])
        again = Console(url, analyst_digests=[], cache=cache)  # a restart with --cache: only the new events
        try:
            assert again.refresh() == 30
            assert sum(again.offers(period).totals.column("shown")) == sum(
                len(json.loads(p)["offers"]) for _, _, t, _, p in rows if t == "decision")
            assert sum(r[1] for r in shown) < sum(again.offers(period).totals.column("shown"))
        finally:
            again.close()
        with hub_backend("sqlite", tmp_path / "b") as (_, _, _):
            with pytest.raises(StateError, match="another hub"):
                Console(f"sqlite:{tmp_path / 'b' / 'hub.sqlite'}", analyst_digests=[], cache=cache)


@pytest.mark.parametrize("kind", BACKENDS)
def test_experiment_arms_count_their_decisions_and_acceptances(kind: str, tmp_path: Path) -> None:
    with hub_backend(kind, tmp_path, clock=ManualClock(NOW)) as (hub, url, schema):
        for device in device_ids(3):
            push(hub, device, field_log(device, events=300, customers=40, days=5, seed=8, experiment="ex-7"))
        console = Console(url or f"sqlite:{tmp_path / 'hub.sqlite'}", analyst_digests=[], schema=schema)
        try:
            console.refresh()
            report = console.models()
            table = report.experiments
            assert table is not None
            got = {r[1]: (r[2], r[3], r[4], r[5]) for r in table.rows}
            # the page's experiments section shows the arms and where the verdict is
            html = console._env.get_template("models.html").render(report=report, charts={}, page="models",
                                                                    query="", as_of="now")
            assert "No experiments in this hub" not in html and "challenger" in html and "nbo experiments" in html
        finally:
            console.close()
        events = hub.events()
    arms: dict[str, str] = {}
    expected: dict[str, list[int]] = {}
    answered: set[tuple[str, str]] = set()
    kinds: dict[str, str] = {}
    for e in events:
        p = json.loads(e["payload"])
        if e["type"] == "decision":
            arm = p["experiment"]["arm"]
            arms[p["decision_id"]] = arm
            kinds[arm] = p["experiment"]["kind"]
            row = expected.setdefault(arm, [0, 0, 0])
            row[0] += 1
            row[1] += len(p["offers"])
        elif e["type"] == "response" and (p["decision_id"], p["offer_id"]) not in answered:
            answered.add((p["decision_id"], p["offer_id"]))
            if p["outcome"] == "accepted":
                expected[arms[p["decision_id"]]][2] += 1
    assert got == {a: (kinds[a], *v) for a, v in expected.items()}
    assert set(got) == {"champion", "challenger", "control"} and all(v[3] > 0 for v in got.values())
