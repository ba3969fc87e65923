"""Golden decision cases (tests/golden/decide_cases.json), run against the pure core and through Client.

The same file can drive the gateway's tests: each case is an authoring-format catalog, the
customer's stored profile and request profile, the contact history relative to ``now``, and
the expected ranking, scores, strategy and exclusions.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from engine_fixtures import load_spec_bundle, signed_bundle, signing_keys
from golden_helpers import CASES, case_history, case_now, check_case
from nbo.sdk import Client, ManualClock
from nbo.sdk._policy import run_pipeline


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_case_pure_core(case: dict[str, Any], tmp_path: Path) -> None:
    bundle = load_spec_bundle(tmp_path / "bundle", {"name": "golden", **case["catalog"]})
    plan = bundle.plan
    assert plan is not None
    now = case_now(case)
    when = datetime.fromtimestamp(now, tz=UTC)
    customer = {**plan.default_profile, **case.get("stored_profile", {}), **case.get("profile", {})}
    context = {**case.get("context", {}), "channel": case["channel"], "hour": when.hour, "weekday": when.weekday()}
    outcome = run_pipeline(plan, customer=customer, context=context, channel=case["channel"],
                           history=case_history(case), now=now, limit=case.get("limit", 3), explain=True, seed="golden")
    check_case(
        case,
        [(plan.offer_ids[s.offer], s.score) for s in outcome.shown],
        outcome.strategy,
        [(e.offer_id, e.rule_id, e.kind, e.description) for e in outcome.excluded],
    )
    # Without an explanation the answer is the same: the offers, every part of their scores,
    # the strategy and the offers that were in play.
    quiet = run_pipeline(plan, customer=customer, context=context, channel=case["channel"],
                         history=case_history(case), now=now, limit=case.get("limit", 3), explain=False, seed="golden")
    assert quiet.shown == outcome.shown and quiet.strategy == outcome.strategy, case["name"]
    assert quiet.excluded == () and quiet.explored == outcome.explored, case["name"]
    assert quiet.eligible == outcome.eligible and quiet.mandatory == outcome.mandatory, case["name"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return signing_keys(tmp_path_factory.mktemp("keys"))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_golden_case_through_client(case: dict[str, Any], tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, pub = keys
    bundle = signed_bundle(tmp_path / "build", {"name": "golden", **case["catalog"]}, key=key)
    now = case_now(case)
    with Client.open(tmp_path / "state", device_id="golden-1", trusted_keys=[pub], clock=ManualClock(now)) as client:
        client.install_bundle(bundle)
        store = client._store  # white-box: seed the state the case describes
        with store.transaction() as tx:
            if "stored_profile" in case:
                tx.execute("INSERT INTO profiles(customer_id, profile, updated_at) VALUES (?, ?, ?)",
                           ("G1", json.dumps(case["stored_profile"]), now))
            for offer_id, category, channel, event, ts in case_history(case):
                tx.execute("INSERT INTO contact_history(customer_id, offer_id, category, channel, event, ts)"
                           " VALUES (?, ?, ?, ?, ?, ?)", ("G1", offer_id, category, channel, event, ts))
        decision = client.decide("G1", channel=case["channel"], context=case.get("context"),
                                 profile=case.get("profile"), limit=case.get("limit", 3), explain=True)
    assert decision.bundle_name == "golden"
    check_case(
        case,
        [(o.offer_id, o.score) for o in decision.offers],
        decision.strategy,
        [(e.offer_id, e.rule_id, e.kind, e.description) for e in decision.excluded],
    )
