"""The decision engine end to end on real bundles: each stage, recording, exploration, bad input.

Bundles are real catalog.sqlite files (sqlite-utils, contract tables) and real ONNX models
(scikit-learn + skl2onnx) loaded by ``sdk._runtime.load_bundle``; state is a real SQLite file.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from engine_fixtures import (
    CATEGORIES,
    load_spec_bundle,
    signed_bundle,
    signing_keys,
    synthetic_profile,
    synthetic_spec,
    train_model,
)
from nbo.sdk import (
    BundleError,
    Client,
    InputError,
    ManualClock,
    NotReadyError,
    _engine,
    _ledger,
    _policy,
    _runtime,
)
from nbo.sdk._store import SQLiteStateStore

NOW = 1_767_000_000.0  # 2025-12-29T09:20:00Z, a Monday
DAY = 86_400.0


def offer(offer_id: str, category: str = "xsell", value: float = 10.0, **extra: Any) -> dict[str, Any]:
    return {"offer_id": offer_id, "category": category, "expected_volume": value, "margin": 1.0, "duration": 1.0,
            **extra}


def spec(offers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": "t", "channels": ["pos", "app", "web"], "offers": offers, **extra}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


@pytest.fixture
def store(tmp_path: Path, clock: ManualClock) -> Iterator[SQLiteStateStore]:
    s = SQLiteStateStore(tmp_path / "state.sqlite", device_id="dev-1", clock=clock, schemas=(_ledger.SCHEMA,))
    yield s
    s.close()


class Engine:
    """A loaded bundle + a state store; ``decide`` with sensible defaults."""

    def __init__(self, tmp_path: Path, store: SQLiteStateStore) -> None:
        self.tmp_path = tmp_path
        self.store = store
        self.n = 0

    def load(self, catalog: dict[str, Any], models: dict[str, bytes] | None = None) -> _runtime.LoadedBundle:
        self.n += 1
        return load_spec_bundle(self.tmp_path / f"bundle{self.n}", catalog, models=models)

    def decide(self, bundle: _runtime.LoadedBundle, **kw: Any) -> Any:
        args: dict[str, Any] = {"customer_id": "C1", "channel": "pos", "context": None, "profile": None,
                                "limit": 10, "explain": True}
        args.update(kw)
        return _engine.decide(bundle, self.store, **args)


@pytest.fixture
def engine(tmp_path: Path, store: SQLiteStateStore) -> Engine:
    return Engine(tmp_path, store)


def ids(decision: Any) -> list[str]:
    return [o.offer_id for o in decision.offers]


def why(decision: Any) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for e in decision.excluded:
        out.setdefault(e.offer_id, []).append((e.rule_id, e.kind))
    return out


def add_history(store: SQLiteStateStore, *rows: tuple[str, str, str, str, float], customer: str = "C1") -> None:
    with store.transaction() as tx:
        for offer_id, category, channel, event, ts in rows:
            tx.execute(
                "INSERT INTO contact_history(customer_id, offer_id, category, channel, event, ts, decision_id)"
                " VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (customer, offer_id, category, channel, event, ts),
            )


# -- candidates ---------------------------------------------------------------------------


def test_candidates_respect_validity_window_and_channel(engine: Engine, clock: ManualClock) -> None:
    bundle = engine.load(spec([
        offer("A"),
        offer("B", valid_from="2026-01-01T00:00:00Z"),
        offer("C", valid_to="2025-12-29T09:20:00Z"),  # half-open: not valid at exactly valid_to
        offer("D", valid_from="2025-12-01T00:00:00Z", valid_to="2025-12-30T00:00:00Z"),
        offer("E", channels=["app"]),
        offer("F", channels=["pos", "app"]),
    ]))
    assert sorted(ids(engine.decide(bundle))) == ["A", "D", "F"]
    assert sorted(ids(engine.decide(bundle, channel="app"))) == ["A", "D", "E", "F"]
    clock.set(NOW + 10 * DAY)
    assert sorted(ids(engine.decide(bundle))) == ["A", "B", "F"]


# -- rules: each kind, each scope, applies_to ---------------------------------------------------


def test_each_rule_kind_excludes_and_explains(engine: Engine) -> None:
    bundle = engine.load(spec(
        [offer("X1", "xsell"), offer("X2", "xsell", attributes={"in_stock": False}), offer("U1", "upsell"),
         offer("L1", "loyalty", attributes={"min_age": 21})],
        rules=[
            {"rule_id": "hyg", "kind": "hygiene", "applies_to": "upsell", "expression": "!customer.credit_block",
             "description": "credit block"},
            {"rule_id": "stock", "kind": "business", "expression": "!has(offer.attributes.in_stock) || "
             "offer.attributes.in_stock", "description": "in stock"},
            {"rule_id": "own", "kind": "business", "applies_to": "xsell",
             "expression": "!(offer.offer_id in customer.owned_products)", "description": "owns it"},
            {"rule_id": "age", "kind": "business", "applies_to": "L1",
             "expression": "customer.age >= offer.attributes.min_age", "description": "too young"},
            {"rule_id": "night", "kind": "communication", "expression": "context.hour >= 8",
             "description": "not before 8"},
        ],
    ))
    d = engine.decide(bundle, profile={"credit_block": True, "owned_products": ["X1"], "age": 18})
    assert ids(d) == []
    assert why(d) == {
        "X1": [("own", "business")],
        "X2": [("stock", "business")],
        "U1": [("hyg", "hygiene")],
        "L1": [("age", "business")],
    }
    assert {e.description for e in d.excluded} == {"credit block", "in stock", "owns it", "too young"}
    ok = engine.decide(bundle, profile={"credit_block": False, "owned_products": [], "age": 30})
    assert sorted(ids(ok)) == ["L1", "U1", "X1"]
    assert [(e.offer_id, e.rule_id) for e in ok.excluded] == [("X2", "stock")]


def test_communication_rule_on_context_excludes_everything_it_applies_to(engine: Engine, clock: ManualClock) -> None:
    bundle = engine.load(spec(
        [offer("A"), offer("B", "service")],
        rules=[{"rule_id": "quiet", "kind": "communication", "applies_to": "xsell",
                "expression": "context.hour >= 10", "description": "quiet hours"}],
    ))
    d = engine.decide(bundle)  # 09:20 UTC
    assert ids(d) == ["B"]
    assert why(d) == {"A": [("quiet", "communication")]}
    clock.advance(3600)
    assert sorted(ids(engine.decide(bundle))) == ["A", "B"]


def test_rule_scopes_are_classified(engine: Engine) -> None:
    bundle = engine.load(spec([offer("A")], rules=[
        {"rule_id": "c", "kind": "hygiene", "expression": "!customer.do_not_contact"},
        {"rule_id": "x", "kind": "business", "expression": "context.channel != 'email'"},
        {"rule_id": "o", "kind": "business", "expression": "offer.value > 0.0"},
        {"rule_id": "m", "kind": "business", "expression": "offer.value > customer.min_value"},
        {"rule_id": "k", "kind": "business", "expression": "true"},
    ]))
    assert bundle.plan is not None
    assert {r.rule_id: r.scope for r in bundle.plan.rules} == {
        "c": "decision", "x": "decision", "o": "bundle", "m": "candidate", "k": "bundle",
    }


@pytest.mark.parametrize(
    ("expression", "profile", "reason"),
    [
        ("customer.age >= offer.attributes.min_age", {}, "missing field"),  # mixed, missing customer field
        ("customer.age >= offer.attributes.min_age", {"age": "old"}, "No such overload"),  # wrong type
        ("customer.recency_days < 30.0", {}, "No such overload"),  # null for a new customer
        ("offer.attributes.nope == 1", {}, "missing field"),  # offer-only, at load
        ("customer.age", {"age": 3}, "not a boolean"),
    ],
)
def test_rule_failing_at_run_time_excludes_and_is_reported(
    engine: Engine, expression: str, profile: dict[str, Any], reason: str
) -> None:
    bundle = engine.load(spec(
        [offer("A", attributes={"min_age": 18}), offer("B", "service")],
        rules=[{"rule_id": "r1", "kind": "business", "applies_to": "xsell", "expression": expression,
                "description": "d"}],
    ))
    d = engine.decide(bundle, profile=profile)
    assert ids(d) == ["B"]
    (exclusion,) = d.excluded
    assert (exclusion.offer_id, exclusion.rule_id, exclusion.kind) == ("A", "r1", "business")
    assert exclusion.description.startswith("rule failed: ")
    assert reason in exclusion.description


def test_rule_applies_to_offer_id(engine: Engine) -> None:
    bundle = engine.load(spec([offer("A"), offer("B")], rules=[
        {"rule_id": "r", "kind": "business", "applies_to": "B", "expression": "customer.vip"},
    ]))
    assert ids(engine.decide(bundle, profile={"vip": False})) == ["A"]
    assert sorted(ids(engine.decide(bundle, profile={"vip": True}))) == ["A", "B"]


def test_without_explain_nothing_is_reported_but_filtering_is_the_same(engine: Engine) -> None:
    bundle = engine.load(spec([offer("A"), offer("B", "service")], rules=[
        {"rule_id": "r", "kind": "hygiene", "applies_to": "xsell", "expression": "!customer.do_not_contact"},
    ]))
    d = engine.decide(bundle, profile={"do_not_contact": True}, explain=False)
    assert ids(d) == ["B"] and d.excluded == []


MIXED_RULES = [
    {"rule_id": "owns", "kind": "business", "applies_to": "xsell",
     "expression": "!(offer.offer_id in customer.owned_products)", "description": "already owns it"},
    {"rule_id": "age", "kind": "business", "expression": "customer.age >= offer.attributes.min_age"},
]


def test_mixed_rules_decide_the_same_with_and_without_an_explanation(engine: Engine) -> None:
    # explain only adds the exclusions: the offers, scores and order are the same, on
    # customers whose mixed rules remove the best offers, most offers, or all but the fallback.
    offers = [offer(f"O{i}", "xsell" if i % 2 else "loyalty", 100 - i, attributes={"min_age": 18 + i % 3 * 10})
              for i in range(12)]
    offers.append(offer("FB", "service", 1, fallback=True, attributes={"min_age": 0}))
    bundle = engine.load(spec(offers, rules=MIXED_RULES))
    profiles = [
        {"age": 40, "owned_products": []},
        {"age": 40, "owned_products": ["O1", "O3"]},  # the best xsell offers are owned
        {"age": 20, "owned_products": ["O5"]},  # most are too old for them
        {"age": 20, "owned_products": [f"O{i}" for i in range(12)]},  # only age-18 loyalty offers are left
        {"age": 10, "owned_products": [f"O{i}" for i in range(1, 12, 2)]},  # nothing but the fallback
        {"age": 40},  # owned_products missing: the rule fails on every xsell offer
    ]
    for profile in profiles:
        for limit in (1, 3, 20):
            lazy = engine.decide(bundle, profile=profile, limit=limit, explain=False)
            eager = engine.decide(bundle, profile=profile, limit=limit, explain=True)
            assert [(o.offer_id, o.score, o.selection_probability) for o in lazy.offers] == [
                (o.offer_id, o.score, o.selection_probability) for o in eager.offers], (profile, limit)
            assert lazy.excluded == [] and lazy.strategy == eager.strategy
    assert ids(engine.decide(bundle, profile=profiles[4], explain=False)) == ["FB"]


# -- contact policies ------------------------------------------------------------------------


POLICY_OFFERS = [offer("A", "xsell", 30), offer("B", "xsell", 20), offer("C", "loyalty", 10)]


def test_contact_policy_scope_offer_counts_within_window(engine: Engine, store: SQLiteStateStore) -> None:
    bundle = engine.load(spec(POLICY_OFFERS, contact_policies=[
        {"policy_id": "p", "scope": "offer", "event": "shown", "max_count": 2, "window_days": 7,
         "description": "max 2 a week"},
    ]))
    add_history(store, ("A", "xsell", "pos", "shown", NOW - DAY), ("A", "xsell", "web", "shown", NOW - 2 * DAY),
                ("B", "xsell", "pos", "shown", NOW - DAY), ("B", "xsell", "pos", "shown", NOW - 8 * DAY))
    d = engine.decide(bundle)
    assert ids(d) == ["B", "C"]
    assert [(e.offer_id, e.rule_id, e.kind, e.description) for e in d.excluded] == [
        ("A", "p", "communication", "max 2 a week")]


def test_decision_event_funnel_counts_each_removed_offer_once_for_the_first_rule(
    engine: Engine, store: SQLiteStateStore
) -> None:
    """candidates − Σ removed = eligible; an offer two rules refuse counts for the first only
    (offer-only rules, then the others in catalog order, then contact policies)."""
    bundle = engine.load(spec(
        [*POLICY_OFFERS, offer("D", "xsell", 5, attributes={"stock": 0}), offer("E", "service", 4),
         offer("W", "xsell", 3, channels=["web"])],
        rules=[
            {"rule_id": "stock", "kind": "business", "applies_to": "*",
             "expression": "!has(offer.attributes.stock) || offer.attributes.stock > 0"},
            {"rule_id": "quiet", "kind": "communication", "applies_to": "service", "expression": "context.hour >= 10"},
            {"rule_id": "young", "kind": "business", "applies_to": "*",
             "expression": "customer.age >= 18 || offer.category != 'loyalty'"},
        ],
        contact_policies=[{"policy_id": "twice", "scope": "offer", "event": "shown", "max_count": 1,
                           "window_days": 7}],
    ))
    add_history(store, ("A", "xsell", "pos", "shown", NOW - DAY), ("C", "loyalty", "pos", "shown", NOW - DAY))
    d = engine.decide(bundle, profile={"age": 16}, limit=1)
    assert ids(d) == ["B"]
    with store.transaction() as tx:
        (text,) = tx.execute("SELECT payload FROM outbox WHERE type = 'decision'")[0]
    payload = json.loads(text)
    # W is not offered on pos: not a candidate. D: stock; E: quiet hours; C: young (before the policy); A: twice
    assert payload["funnel"] == {"candidates": 5, "removed": {"stock": 1, "quiet": 1, "young": 1, "twice": 1}}
    assert payload["eligible"]["offers"] == ["B"]


def test_contact_policy_scope_category(engine: Engine, store: SQLiteStateStore) -> None:
    bundle = engine.load(spec(POLICY_OFFERS, contact_policies=[
        {"policy_id": "cat", "scope": "category", "event": "declined", "max_count": 1, "window_days": 30},
    ]))
    add_history(store, ("B", "xsell", "pos", "declined", NOW - 10 * DAY))
    d = engine.decide(bundle)
    assert ids(d) == ["C"]
    assert sorted(why(d)) == ["A", "B"]


def test_contact_policy_scope_all_on_one_channel(engine: Engine, store: SQLiteStateStore) -> None:
    bundle = engine.load(spec(POLICY_OFFERS, contact_policies=[
        {"policy_id": "app3", "scope": "all", "event": "shown", "max_count": 3, "window_days": 1, "channel": "app"},
    ]))
    add_history(store, *[("C", "loyalty", "app", "shown", NOW - 3600.0 * h) for h in (1, 2, 3)])
    assert ids(engine.decide(bundle, channel="app")) == []
    assert ids(engine.decide(bundle, channel="pos")) == ["A", "B", "C"]  # other channels unaffected


def test_a_zero_cap_blocks_whatever_the_customer_history_holds(engine: Engine, store: SQLiteStateStore) -> None:
    # "at most 0" (a hand-built catalog: the toolkit asks for at least 1) holds for everyone,
    # also for a customer with no history, or with none of the event it counts
    bundle = engine.load(spec(POLICY_OFFERS, contact_policies=[
        {"policy_id": "none", "applies_to": "xsell", "scope": "all", "event": "declined", "max_count": 0,
         "window_days": 30},
    ]))
    assert ids(engine.decide(bundle, customer_id="NEW")) == ["C"]
    add_history(store, ("A", "xsell", "pos", "shown", NOW - DAY))
    assert ids(engine.decide(bundle)) == ["C"]


def test_fallback_is_exempt_from_contact_policies_so_no_slot_is_empty(engine: Engine, store: SQLiteStateStore) -> None:
    bundle = engine.load(spec([*POLICY_OFFERS, offer("FB", "service", 1.0, fallback=True)], contact_policies=[
        {"policy_id": "app3", "scope": "all", "event": "shown", "max_count": 3, "window_days": 1, "channel": "app"},
    ]))
    add_history(store, *[("FB", "service", "app", "shown", NOW - 3600.0 * h) for h in (1, 2, 3)])
    decision = engine.decide(bundle, channel="app")
    assert ids(decision) == ["FB"] and decision.offers[0].fallback
    assert {e.offer_id for e in decision.excluded if e.rule_id == "app3"} == {"A", "B", "C"}


def test_contact_policy_applies_to_and_other_customers(engine: Engine, store: SQLiteStateStore) -> None:
    bundle = engine.load(spec(POLICY_OFFERS, contact_policies=[
        {"policy_id": "loy", "applies_to": "loyalty", "scope": "all", "event": "accepted", "max_count": 1,
         "window_days": 30},
    ]))
    add_history(store, ("A", "xsell", "pos", "accepted", NOW - DAY))
    add_history(store, ("A", "xsell", "pos", "accepted", NOW - DAY), customer="C2")
    assert ids(engine.decide(bundle)) == ["A", "B"]
    assert ids(engine.decide(bundle, customer_id="C3")) == ["A", "B", "C"]


def test_decisions_feed_the_contact_policy(engine: Engine, clock: ManualClock) -> None:
    bundle = engine.load(spec(POLICY_OFFERS, contact_policies=[
        {"policy_id": "p", "scope": "offer", "event": "shown", "max_count": 2, "window_days": 7},
    ]))
    assert ids(engine.decide(bundle, limit=1)) == ["A"]
    clock.advance(60)
    assert ids(engine.decide(bundle, limit=1)) == ["A"]
    clock.advance(60)
    assert ids(engine.decide(bundle, limit=1)) == ["B"]
    clock.advance(8 * DAY)
    assert ids(engine.decide(bundle, limit=1)) == ["A"]


def test_policy_blocked_pure_counts() -> None:
    plan_policy = _runtime.PolicyPlan(policy_id="p", scope="category", event="shown", max_count=2,
                                      window_seconds=DAY, channel="", description="",
                                      applies=np.ones(1, dtype=bool))
    history = [("A", "x", "pos", "shown", NOW - 10), ("B", "x", "app", "shown", NOW - 20),
               ("C", "y", "pos", "shown", NOW - 30), ("C", "y", "pos", "shown", NOW - 2 * DAY)]
    assert _policy.policy_blocked(plan_policy, history, NOW) == ({"x"}, False)


# -- propensity ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return train_model(10)[0]


def test_propensity_is_the_models_probability_with_contract_inputs(engine: Engine, model_bytes: bytes) -> None:
    bundle = engine.load(spec(
        [offer("A", "xsell", model_id="m", attributes={"price": 12.5}),
         offer("B", "upsell", model_id="m"),  # no price attribute → NaN
         offer("C", "loyalty")],  # no model → 1.0
    ), models={"m": model_bytes})
    profile = {"recency_days": 12.0, "frequency": 4, "monetary": 300.0, "lifecycle_stage": "active"}
    d = engine.decide(bundle, profile=profile, context={"note": "x"})
    by_id = {o.offer_id: o for o in d.offers}
    assert by_id["C"].propensity == 1.0
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])

    def col(v: Any, dtype: Any) -> np.ndarray:
        return np.array([[v], [v]], dtype=dtype)

    feeds = {
        "customer__recency_days": col(12.0, np.float32),
        "customer__frequency": col(4.0, np.float32),
        "customer__monetary": col(300.0, np.float32),
        "customer__lifecycle_stage": col("active", object),
        "offer__category": np.array([["xsell"], ["upsell"]], dtype=object),
        "offer__price": np.array([[12.5], [np.nan]], dtype=np.float32),
        "context__hour": col(9.0, np.float32),
        "context__channel": col("pos", object),
    }
    expected = session.run(None, feeds)[-1][:, -1]
    assert by_id["A"].propensity == pytest.approx(float(expected[0]), abs=1e-6)
    assert by_id["B"].propensity == pytest.approx(float(expected[1]), abs=1e-6)
    for o in d.offers:
        assert o.score == pytest.approx(o.propensity * o.value * o.weight * o.lever)


def test_missing_customer_values_become_nan_and_empty_string(engine: Engine, model_bytes: bytes) -> None:
    bundle = engine.load(spec([offer("A", model_id="m", attributes={"price": 3.0})]), models={"m": model_bytes})
    d = engine.decide(bundle, profile={"lifecycle_stage": None, "frequency": None, "monetary": None})
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    feeds = {
        "customer__recency_days": np.array([[np.nan]], dtype=np.float32),
        "customer__frequency": np.array([[np.nan]], dtype=np.float32),
        "customer__monetary": np.array([[np.nan]], dtype=np.float32),
        "customer__lifecycle_stage": np.array([[""]], dtype=object),
        "offer__category": np.array([["xsell"]], dtype=object),
        "offer__price": np.array([[3.0]], dtype=np.float32),
        "context__hour": np.array([[9.0]], dtype=np.float32),
        "context__channel": np.array([["pos"]], dtype=object),
    }
    assert d.offers[0].propensity == pytest.approx(float(session.run(None, feeds)[-1][0, -1]), abs=1e-6)


def test_unknown_model_id_is_a_bundle_error(engine: Engine) -> None:
    with pytest.raises(BundleError, match="not in the bundle"):
        engine.load(spec([offer("A", model_id="ghost")]))


def test_model_with_input_outside_the_prefixes_is_refused(engine: Engine) -> None:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
    onx = convert_sklearn(lr, initial_types=[("age", FloatTensorType([None, 1]))],
                          options={id(lr): {"zipmap": False}}, target_opset=17)
    with pytest.raises(BundleError, match="customer__X"):
        engine.load(spec([offer("A", model_id="m")]), models={"m": onx.SerializeToString()})


# -- strategy, score, rank ------------------------------------------------------------------


STRATEGY_SPEC: dict[str, Any] = {
    "strategies": {"develop": {"xsell": 2.0, "upsell": 0.5}, "retain": {"retention": 3.0}},
    "strategy_assignment": [
        {"condition": "customer.lifecycle_stage in ['declining', 'inactive']", "strategy": "retain"},
        {"condition": "customer.lifecycle_stage == 'active'", "strategy": "develop"},
    ],
}


def test_strategy_weights_scores(engine: Engine) -> None:
    bundle = engine.load(spec(
        [offer("X", "xsell", 10), offer("U", "upsell", 30), offer("R", "retention", 6), offer("S", "service", 12)],
        **STRATEGY_SPEC,
    ))
    d = engine.decide(bundle, profile={"lifecycle_stage": "active"})
    assert d.strategy == "develop"
    assert [(o.offer_id, o.weight, o.score) for o in d.offers] == [
        ("X", 2.0, 20.0), ("U", 0.5, 15.0), ("S", 1.0, 12.0), ("R", 1.0, 6.0)]
    d = engine.decide(bundle, profile={"lifecycle_stage": "inactive"})
    assert d.strategy == "retain" and ids(d) == ["U", "R", "S", "X"]
    d = engine.decide(bundle)  # new customer: no condition matches
    assert d.strategy == "" and all(o.weight == 1.0 for o in d.offers) and ids(d) == ["U", "S", "X", "R"]
    assert all(o.strategy == d.strategy for o in d.offers)


def test_strategy_condition_that_fails_does_not_match(engine: Engine) -> None:
    bundle = engine.load(spec([offer("X")], strategies={"a": {"xsell": 2.0}, "b": {"xsell": 3.0}},
                              strategy_assignment=[{"condition": "customer.missing > 1", "strategy": "a"},
                                                   {"condition": "true", "strategy": "b"}]))
    d = engine.decide(bundle)
    assert d.strategy == "b" and d.offers[0].weight == 3.0


def test_lever_ties_mandatory_and_limit(engine: Engine) -> None:
    bundle = engine.load(spec([
        offer("B", value=10), offer("A", value=10), offer("C", value=5, lever=3.0),
        offer("M", value=1, mandatory=True), offer("N", value=2, mandatory=True),
    ]))
    d = engine.decide(bundle)
    assert ids(d) == ["N", "M", "C", "A", "B"]
    assert [o.mandatory for o in d.offers] == [True, True, False, False, False]
    assert ids(engine.decide(bundle, limit=3)) == ["N", "M", "C"]


def test_fallback_only_when_nothing_else_is_left(engine: Engine) -> None:
    bundle = engine.load(spec(
        [offer("A", value=10), offer("F", "service", value=100, fallback=True),
         offer("G", "service", value=1, fallback=True)],
        rules=[{"rule_id": "r", "kind": "hygiene", "applies_to": "xsell", "expression": "!customer.block"}],
    ))
    d = engine.decide(bundle, profile={"block": False})
    assert ids(d) == ["A"]  # fallback not ranked among normal offers despite its score
    d = engine.decide(bundle, profile={"block": True})
    assert ids(d) == ["F", "G"] and all(o.fallback for o in d.offers)


# -- the customer and the context ---------------------------------------------------------------


def test_profile_layers_default_meta_stored_argument(engine: Engine, store: SQLiteStateStore) -> None:
    bundle = engine.load(spec(
        [offer("A")],
        new_customer_profile={"segment": "walk-in"},
        rules=[{"rule_id": "seg", "kind": "business", "expression": "customer.segment == 'walk-in' || "
                "(customer.segment == 'vip' && customer.lifecycle_stage == 'active' && customer.loyalty_stage "
                "== 'know_me')"}],
    ))
    assert ids(engine.decide(bundle)) == ["A"]  # unknown: defaults + bundle meta
    with store.transaction() as tx:
        tx.execute("INSERT INTO profiles(customer_id, profile, updated_at) VALUES (?, ?, ?)",
                   ("C1", json.dumps({"segment": "vip", "lifecycle_stage": "lost"}), NOW))
    assert ids(engine.decide(bundle)) == []  # stored profile: lost
    assert ids(engine.decide(bundle, profile={"lifecycle_stage": "active"})) == ["A"]  # argument overrides


def test_context_gets_channel_hour_weekday_from_the_store_clock(engine: Engine, clock: ManualClock) -> None:
    bundle = engine.load(spec([offer("A")], rules=[
        {"rule_id": "r", "kind": "communication",
         "expression": "context.channel == 'web' && context.hour == 9 && context.weekday == 0 && context.store == 'S1'"},
    ]))
    # the caller cannot override what the SDK derives
    assert ids(engine.decide(bundle, channel="web", context={"store": "S1", "hour": 3, "channel": "pos"})) == ["A"]
    clock.advance(DAY)
    assert ids(engine.decide(bundle, channel="web", context={"store": "S1"})) == []


# -- recording ----------------------------------------------------------------------------------


def test_decision_is_recorded_with_contact_history_and_outbox_event(engine: Engine, store: SQLiteStateStore) -> None:
    bundle = engine.load(spec([offer("A", value=3), offer("B", "upsell", value=2), offer("C", value=1)]))
    d = engine.decide(bundle, limit=2, customer_id="C9")
    with store.transaction() as tx:
        (row,) = tx.execute("SELECT customer_id, channel, bundle_name, bundle_version, created_at, offers "
                            "FROM decisions WHERE decision_id = ?", (d.decision_id,))
        shown = tx.execute("SELECT offer_id, category, channel, event, ts, decision_id FROM contact_history "
                           "WHERE customer_id = 'C9' ORDER BY offer_id")
        events = tx.execute("SELECT type, payload FROM outbox ORDER BY seq")
    assert row[:5] == ("C9", "pos", "t", 1, NOW)
    assert shown == [("A", "xsell", "pos", "shown", NOW, d.decision_id),
                     ("B", "upsell", "pos", "shown", NOW, d.decision_id)]
    ((kind, payload_text),) = events
    payload = json.loads(payload_text)
    assert kind == "decision"
    assert set(payload) == {"decision_id", "customer_id", "channel", "bundle_name", "bundle_version", "strategy",
                            "offers", "inputs", "eligible", "funnel"}
    # no model: no inputs; all three offers were in play, the policy (no exploration) shows the first two
    assert payload["inputs"] == {}
    assert payload["funnel"] == {"candidates": 3, "removed": {}}
    assert payload["eligible"] == {"offers": ["A", "B", "C"], "p": [[1.0, 2], [0.0, 1]], "mandatory": 0,
                                   "epsilon": 0.0}
    assert payload["decision_id"] == d.decision_id and payload["bundle_version"] == 1
    assert [o["offer_id"] for o in payload["offers"]] == ["A", "B"]
    first = payload["offers"][0]
    assert set(first) == {"offer_id", "category", "rank", "propensity", "value", "weight", "lever", "score",
                          "selection_probability"}
    assert first["rank"] == 1 and first["selection_probability"] == 1.0 and first["score"] == 3.0
    assert json.loads(row[5]) == payload["offers"]
    assert d.created_at == NOW and d.bundle_name == "t" and d.customer_id == "C9"


@pytest.mark.filterwarnings("ignore:overflow encountered in multiply:RuntimeWarning")  # numpy says so; not ours to test
def test_a_score_that_overflows_is_recorded_as_null(engine: Engine, store: SQLiteStateStore) -> None:
    bundle = engine.load(spec([offer("A", value=1e300, lever=1e300), offer("B")]))
    d = engine.decide(bundle, limit=2)
    assert [(o.offer_id, o.score) for o in d.offers] == [("A", math.inf), ("B", 10.0)]
    with store.transaction() as tx:
        ((offers_text,),) = tx.execute("SELECT offers FROM decisions WHERE decision_id = ?", (d.decision_id,))
        ((payload_text,),) = tx.execute("SELECT payload FROM outbox WHERE type = 'decision'")
    recorded = json.loads(offers_text)
    assert "Infinity" not in offers_text and "Infinity" not in payload_text
    assert recorded[0]["score"] is None and recorded[0]["value"] == 1e300 and recorded[1]["score"] == 10.0
    assert json.loads(payload_text)["offers"] == recorded


def test_decision_ids_are_canonical_time_ordered_uuid7() -> None:
    import time
    import uuid

    before = time.time_ns() // 1_000_000
    texts = [_engine.new_decision_id() for _ in range(200)]
    after = time.time_ns() // 1_000_000
    assert len(set(texts)) == len(texts)
    for text in texts:
        parsed = uuid.UUID(text)
        assert str(parsed) == text and parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before <= parsed.int >> 80 <= after  # the millisecond clock leads
    later = _engine.new_decision_id()
    time.sleep(0.002)
    assert _engine.new_decision_id() > later  # a later millisecond sorts after


def test_an_empty_decision_is_still_recorded(engine: Engine, store: SQLiteStateStore) -> None:
    bundle = engine.load(spec([offer("A", channels=["app"])]))
    d = engine.decide(bundle)
    assert d.offers == []
    with store.transaction() as tx:
        assert tx.execute("SELECT offers FROM decisions WHERE decision_id = ?", (d.decision_id,)) == [("[]",)]


# -- exploration ---------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 5, 10])
@pytest.mark.parametrize("epsilon", [0.0, 0.05, 0.3, 1.0])
def test_rank_probabilities_form_a_doubly_stochastic_matrix(k: int, epsilon: float) -> None:
    matrix = [[_policy.rank_probability(i, r, k, epsilon) for r in range(1, k + 1)] for i in range(1, k + 1)]
    for i in range(k):
        assert sum(matrix[i]) == pytest.approx(1.0)  # each offer lands somewhere
        assert sum(matrix[j][i] for j in range(k)) == pytest.approx(1.0)  # each rank holds one offer
    assert matrix[0][0] == pytest.approx(1.0 - epsilon if k > 1 else 1.0)


def test_exploration_frequencies_match_recorded_probabilities(engine: Engine) -> None:
    bundle = engine.load(spec([offer(c, value=v) for c, v in zip("ABCD", (40, 30, 20, 10), strict=True)],
                              exploration={"epsilon": 0.4}))
    assert bundle.plan is not None
    trials = 4000
    counts: dict[tuple[str, int], int] = {}
    recorded: dict[tuple[str, int], float] = {}
    for t in range(trials):
        out = _policy.run_pipeline(bundle.plan, customer={}, context={"channel": "pos"}, channel="pos",
                                   history=[], now=NOW, limit=4, explain=False, seed=f"seed-{t}")
        for rank, s in enumerate(out.shown, start=1):
            key = (bundle.plan.offer_ids[s.offer], rank)
            counts[key] = counts.get(key, 0) + 1
            recorded.setdefault(key, s.selection_probability)
            assert recorded[key] == s.selection_probability  # a pure function of (offer, rank)
    for key, p in recorded.items():
        assert counts[key] / trials == pytest.approx(p, abs=0.03)
    for rank in range(1, 5):
        assert sum(p for (o, r), p in recorded.items() if r == rank) == pytest.approx(1.0)
    assert recorded[("A", 1)] == pytest.approx(0.6)
    assert recorded[("B", 1)] == pytest.approx(0.4 / 3)


@pytest.mark.parametrize(("offers", "limit"), [
    # more eligible offers than slots: any of the 5 others may be promoted into slot 1
    ([offer(c, value=v) for c, v in zip("ABCDEF", (60, 50, 40, 30, 20, 10), strict=True)], 2),
    # a mandatory offer keeps slot 1; exploration acts on the ranked offers below it
    ([offer("M", value=1, mandatory=True), *(offer(c, value=v) for c, v in zip("ABCD", (40, 30, 20, 10),
                                                                             strict=True))], 3),
], ids=["more-eligible-than-limit", "with-mandatory"])
def test_recorded_probabilities_are_true_when_slots_are_scarce(engine: Engine, offers: list[dict[str, Any]],
                                                              limit: int) -> None:
    bundle = engine.load(spec(offers, exploration={"epsilon": 0.4}))
    assert bundle.plan is not None
    trials = 4000
    counts: dict[tuple[str, int], int] = {}
    recorded: dict[tuple[str, int], float] = {}
    for t in range(trials):
        out = _policy.run_pipeline(bundle.plan, customer={}, context={"channel": "pos"}, channel="pos",
                                   history=[], now=NOW, limit=limit, explain=False, seed=f"scarce-{t}")
        assert len(out.shown) == limit
        for rank, s in enumerate(out.shown, start=1):
            key = (bundle.plan.offer_ids[s.offer], rank)
            counts[key] = counts.get(key, 0) + 1
            assert recorded.setdefault(key, s.selection_probability) == s.selection_probability
    for key, p in recorded.items():
        assert counts[key] / trials == pytest.approx(p, abs=0.03), key
    for rank in range(1, limit + 1):  # each slot is filled with probability 1
        assert sum(p for (_, r), p in recorded.items() if r == rank) == pytest.approx(1.0)


def test_explored_decisions_record_their_true_probabilities_in_state_and_outbox(
    engine: Engine, store: SQLiteStateStore
) -> None:
    bundle = engine.load(spec([offer(c, value=v) for c, v in zip("ABCD", (40, 30, 20, 10), strict=True)],
                              exploration={"epsilon": 0.5}))
    decisions = [engine.decide(bundle, limit=3, customer_id=f"X{i}", explain=False) for i in range(40)]
    with store.transaction() as tx:
        stored = {d: json.loads(o) for d, o in tx.execute("SELECT decision_id, offers FROM decisions")}
        events = [json.loads(p) for (p,) in tx.execute("SELECT payload FROM outbox WHERE type = 'decision'")]
    outbox = {e["decision_id"]: e["offers"] for e in events}
    explored = 0
    for d in decisions:
        shown = [(o.offer_id, o.selection_probability) for o in d.offers]
        for where in (stored[d.decision_id], outbox[d.decision_id]):
            assert [(o["offer_id"], o["selection_probability"]) for o in where] == shown
            assert [o["rank"] for o in where] == [1, 2, 3]
        # the score order is A, B, C, D: the probability is that of this offer at this rank
        for rank, (offer_id, p) in enumerate(shown, start=1):
            assert p == pytest.approx(_policy.rank_probability("ABCD".index(offer_id) + 1, rank, 4, 0.5))
        explored += shown[0][0] != "A"
    assert 5 <= explored <= 35  # ε = 0.5: both branches happened


def test_exploration_is_seeded_by_the_decision_id(engine: Engine) -> None:
    bundle = engine.load(spec([offer(c, value=v) for c, v in zip("ABCD", (40, 30, 20, 10), strict=True)],
                              exploration={"epsilon": 0.5}))
    assert bundle.plan is not None
    runs = [_policy.run_pipeline(bundle.plan, customer={}, context={}, channel="pos", history=[], now=NOW,
                                 limit=4, explain=False, seed=s) for s in ("x", "x", "y")]
    assert runs[0] == runs[1]
    d = engine.decide(bundle, limit=4)
    again = _policy.run_pipeline(bundle.plan, customer=dict(bundle.plan.default_profile), context={},
                                 channel="pos", history=[], now=NOW, limit=4, explain=False, seed=d.decision_id)
    assert ids(d) == [bundle.plan.offer_ids[s.offer] for s in again.shown]


def test_no_exploration_means_probability_one(engine: Engine) -> None:
    bundle = engine.load(spec([offer("A", value=2), offer("B", value=1)]))
    assert [o.selection_probability for o in engine.decide(bundle).offers] == [1.0, 1.0]


def test_explore_promotes_uniformly_among_the_others() -> None:
    rng = random.Random(7)
    picks = [_policy.explore(4, 1.0, rng) for _ in range(3000)]
    assert set(picks) == {1, 2, 3}
    assert all(abs(picks.count(j) / 3000 - 1 / 3) < 0.04 for j in (1, 2, 3))
    assert _policy.explore(1, 1.0, rng) is None and _policy.explore(5, 0.0, rng) is None


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"customer_id": ""}, "customer_id"),
        ({"customer_id": "x" * 129}, "customer_id"),
        ({"customer_id": 42}, "customer_id"),
        ({"channel": "fax"}, "channel"),
        ({"channel": None}, "channel"),
        ({"context": ["not", "a", "mapping"]}, "context"),
        ({"context": {"basket": math.nan}}, "context.basket"),
        ({"profile": "age=3"}, "profile"),
        ({"profile": {"age": math.inf}}, "profile.age"),
        ({"profile": {"age": math.nan}}, "profile.age"),
        ({"profile": {"tags": [1, 2]}}, "profile.tags"),
        ({"profile": {"nested": {"a": 1}}}, "profile.nested"),
        ({"profile": {3: "x"}}, "profile"),
        ({"profile": {"big": 10**30}}, "profile.big"),
        ({"profile": {"frequency": "many"}}, "profile.frequency"),
        ({"profile": {"frequency": True}}, "profile.frequency"),
        ({"profile": {"frequency": 2.5}}, "profile.frequency"),
        ({"profile": {"points_balance": "10"}}, "profile.points_balance"),
        ({"profile": {"recency_days": ["a"]}}, "profile.recency_days"),
        ({"profile": {"monetary": "n/a"}}, "profile.monetary"),
        ({"profile": {"clv": "high"}}, "profile.clv"),
        ({"profile": {"lifecycle_stage": 5}}, "profile.lifecycle_stage"),
        ({"profile": {"loyalty_stage": "love_me"}}, "profile.loyalty_stage"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": 2.0}, "limit"),
        ({"limit": True}, "limit"),
    ],
)
def test_bad_input_names_the_field_and_writes_nothing(
    engine: Engine, store: SQLiteStateStore, kwargs: dict[str, Any], field: str
) -> None:
    bundle = engine.load(spec([offer("A")]))
    with pytest.raises(InputError) as info:
        engine.decide(bundle, **kwargs)
    assert info.value.field == field
    with store.transaction() as tx:
        assert tx.execute("SELECT COUNT(*) FROM decisions") == [(0,)]
        assert tx.execute("SELECT COUNT(*) FROM outbox") == [(0,)]


def test_valid_odd_profile_values_are_accepted(engine: Engine) -> None:
    bundle = engine.load(spec([offer("A")]))
    d = engine.decide(bundle, profile={"tags": ("a", "b"), "flag": True, "n": None, "big": 2**63 - 1, "s": "é" * 50})
    assert ids(d) == ["A"]
    measures = {"recency_days": None, "tenure_days": 12, "monetary": 10, "clv": 3.5, "frequency": 0,
                "points_balance": -5, "lifecycle_stage": "lost", "loyalty_stage": "forgive_me"}
    assert ids(engine.decide(bundle, profile=measures)) == ["A"]


# -- through Client ---------------------------------------------------------------------------------


def test_client_decide_without_bundle_is_not_ready(tmp_path: Path) -> None:
    _, pub = signing_keys(tmp_path / "keys")
    with Client.open(tmp_path / "state", device_id="d1", trusted_keys=[pub]) as client:
        with pytest.raises(NotReadyError):
            client.decide("C1", channel="pos")


def test_client_decide_on_an_installed_signed_bundle(tmp_path: Path, model_bytes: bytes) -> None:
    key, pub = signing_keys(tmp_path / "keys")
    catalog = synthetic_spec(24, name="shop")
    bundle = signed_bundle(tmp_path / "build", catalog, key=key, models={"gbt0": model_bytes})
    with Client.open(tmp_path / "state", device_id="d1", trusted_keys=[pub], clock=ManualClock(NOW)) as client:
        client.install_bundle(bundle)
        d = client.decide("C1", channel="pos", profile=synthetic_profile(4), limit=5, explain=True)
        assert d.bundle_name == "shop" and d.bundle_version == 1 and 1 <= len(d.offers) <= 5
        assert {o.category for o in d.offers} <= set(CATEGORIES)
        assert not {e.offer_id for e in d.excluded} & set(ids(d))
        assert client.pending_events() == 1
        client.record_response(d.decision_id, d.offers[0].offer_id, "declined")
        again = client.decide("C1", channel="pos", profile=synthetic_profile(4), limit=5, explain=True)
        assert d.offers[0].offer_id not in ids(again)  # declined/offer/1/30 policy
        assert ("P2", "communication") in why(again)[d.offers[0].offer_id]
        with pytest.raises(InputError):
            client.decide("C1", channel="nowhere")


def test_points_balance_comes_from_the_ledger(tmp_path: Path) -> None:
    key, pub = signing_keys(tmp_path / "keys")
    catalog = spec([offer("GOLD", "loyalty", 50, name="Gold"), offer("FB", "service", 1.0, name="Newsletter", fallback=True)], rules=[
        {"rule_id": "gold_needs_points", "kind": "business", "applies_to": "GOLD",
         "expression": "customer.points_balance >= 100", "description": "Gold needs 100 points"},
    ])
    bundle = signed_bundle(tmp_path / "build", catalog, key=key)
    with Client.open(tmp_path / "state", device_id="d1", trusted_keys=[pub], clock=ManualClock(NOW)) as client:
        client.install_bundle(bundle)
        assert ids(client.decide("C1", channel="pos")) == ["FB"]
        client.award_points("C1", 150, idempotency_key="k1", reason="purchase")
        assert ids(client.decide("C1", channel="pos")) == ["GOLD"]
        # a profile passed in the request still overrides
        assert ids(client.decide("C1", channel="pos", profile={"points_balance": 5})) == ["FB"]


# -- nbo decide ---------------------------------------------------------------------------------------


def test_cli_decide_table_explain_json_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nbo.cli import main

    key, pub = signing_keys(tmp_path / "keys")
    catalog = spec(
        [offer("A", value=5, name="Alpha"), offer("B", "upsell", value=3, name="Beta"),
         offer("F", "service", value=1, fallback=True, name="Fallback")],
        rules=[{"rule_id": "adult", "kind": "business", "applies_to": "upsell", "expression": "customer.age >= 18",
                "description": "adults only"}],
        profile_fields={"age": "number"},
    )
    state = tmp_path / "state"
    assert main(["decide", "--state", str(state), "--customer", "C1", "--channel", "pos"]) == 1
    assert "is not a device state directory" in capsys.readouterr().err
    with Client.open(state, device_id="pos-7", trusted_keys=[pub]) as client:
        with pytest.raises(NotReadyError):
            client.decide("C1", channel="pos")
        client.install_bundle(signed_bundle(tmp_path / "build", catalog, key=key))

    assert main(["decide", "--state", str(state), "--customer", "C1", "--channel", "pos",
                 "--profile", '{"age": 16}', "--explain"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "bundle t v1" in lines[0]
    assert lines[1].split() == ["rank", "offer", "name", "category", "propensity", "value", "weight", "lever",
                                "score", "note"]
    assert lines[3].split()[:3] == ["1", "A", "Alpha"]
    assert out.splitlines()[-1].split(maxsplit=3) == ["B", "adult", "business", "adults only"]

    assert main(["decide", "--state", str(state), "--customer", "C1", "--channel", "web", "--json",
                 "--profile", '{"age": 40}', "--limit", "5", "--device-id", "pos-7"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert [o["offer_id"] for o in decision["offers"]] == ["A", "B"]
    assert decision["offers"][0]["score"] == 5.0 and decision["bundle_version"] == 1

    assert main(["decide", "--state", str(state), "--customer", "C1", "--channel", "fax"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown channel 'fax'") and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as usage:  # a malformed flag value is a usage error: exit 2
        main(["decide", "--state", str(state), "--customer", "C1", "--channel", "pos", "--profile", "[1]"])
    assert usage.value.code == 2
    assert "argument --profile: must be a JSON object" in capsys.readouterr().err


def test_wal_is_checkpointed_in_the_background_not_by_decisions(engine: Engine, store: SQLiteStateStore) -> None:
    import time

    bundle = engine.load(spec([offer(f"O{i:03d}", value=float(i + 1)) for i in range(30)]))
    with store.transaction() as tx:
        assert tx.execute("PRAGMA wal_autocheckpoint") == [(0,)]  # no commit pays for a checkpoint
    db_file = store.path
    before = db_file.stat().st_size
    for i in range(300):
        engine.decide(bundle, customer_id=f"C{i}", limit=5)
    deadline = time.monotonic() + 10
    while db_file.stat().st_size <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert db_file.stat().st_size > before  # the background checkpointer moved pages into the database


class _CountingSession:
    """A real onnxruntime session that also records the batch size of every run."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.batches: list[int] = []

    def run(self, outputs: Any, feeds: dict[str, np.ndarray]) -> Any:
        self.batches.append(len(next(iter(feeds.values()))))
        return self.session.run(outputs, feeds)


def test_one_batched_onnx_call_per_model(engine: Engine, model_bytes: bytes) -> None:
    import dataclasses

    offers = [offer(f"O{i:02d}", CATEGORIES[i % 6], model_id=f"m{i % 3}" if i % 4 else None,
                    attributes={"price": float(i)}) for i in range(24)]
    bundle = engine.load(spec(offers), models={"m0": model_bytes, "m1": model_bytes, "m2": model_bytes})
    assert bundle.plan is not None
    counters = [_CountingSession(m.session) for m in bundle.plan.models]
    plan = dataclasses.replace(bundle.plan, models=tuple(
        dataclasses.replace(m, session=c) for m, c in zip(bundle.plan.models, counters, strict=True)))
    out = _policy.run_pipeline(plan, customer=dict(plan.default_profile), context={"channel": "pos", "hour": 9},
                               channel="pos", history=[], now=NOW, limit=100, explain=False, seed="s")
    expected = {f"m{k}": sum(1 for o in offers if o.get("model_id") == f"m{k}") for k in range(3)}
    assert {m.model_id: c.batches for m, c in zip(plan.models, counters, strict=True)} == {
        k: [n] for k, n in expected.items()}
    assert len(out.shown) == 24
    assert all(s.propensity == 1.0 for s in out.shown if plan.model_index[s.offer] < 0)


def test_model_used_by_no_offer_and_empty_catalog_load(engine: Engine, model_bytes: bytes) -> None:
    bundle = engine.load(spec([offer("A")]), models={"unused": model_bytes})
    assert ids(engine.decide(bundle)) == ["A"]
    empty = engine.load(spec([]), models={"m": model_bytes})
    assert engine.decide(empty).offers == []
