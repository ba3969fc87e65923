"""Property tests (hypothesis) for the decision core's invariants.

Whatever the customer, context, history, channel, limit or catalog: scores are finite and
≥ 0; mandatory offers come first and the rest are sorted by score (ties by offer_id); no
offer appears twice; the limit holds; nothing both ranked and excluded; fallback offers only
when nothing else is left; selection probabilities in (0, 1]. Bad input never corrupts state.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_fixtures import CATEGORIES, load_spec_bundle, synthetic_profile, synthetic_spec, train_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nbo.sdk import InputError, ManualClock, _engine, _ledger, _policy
from nbo.sdk._policy import Outcome, Selection, _ordered, rank, run_pipeline
from nbo.sdk._runtime import DecisionPlan
from nbo.sdk._store import SQLiteStateStore
from nbo.sdk.core import LoadedBundle

NOW = 1_767_000_000.0
DAY = 86_400.0

profile_values = st.one_of(
    st.none(), st.booleans(), st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False),
    st.text(max_size=8), st.lists(st.text(max_size=6), max_size=4),
)
profiles = st.dictionaries(
    st.sampled_from(["recency_days", "frequency", "monetary", "lifecycle_stage", "age", "owned_products",
                     "do_not_contact", "complaint_open", "credit_block", "tier", "segment"]),
    profile_values,
    max_size=8,
) | st.integers(0, 500).map(synthetic_profile)


@st.composite
def histories(draw: st.DrawFn, offer_ids: tuple[str, ...]) -> list[tuple[str, str, str, str, float]]:
    rows = draw(st.lists(st.tuples(
        st.sampled_from(offer_ids), st.sampled_from(CATEGORIES), st.sampled_from(["pos", "app"]),
        st.sampled_from(["shown", "accepted", "declined", "ignored"]), st.floats(0, 40),
    ), max_size=30))
    return [(o, c, ch, e, NOW - days * DAY) for o, c, ch, e, days in rows]


def check_invariants(plan: DecisionPlan, outcome: Outcome, limit: int) -> None:
    shown = outcome.shown
    offer_ids = [plan.offer_ids[s.offer] for s in shown]
    assert len(shown) <= limit
    assert len(set(offer_ids)) == len(offer_ids)
    for s in shown:
        assert math.isfinite(s.score) and s.score >= 0.0
        assert 0.0 <= s.propensity <= 1.0
        assert 0.0 < s.selection_probability <= 1.0
    mandatory = [bool(plan.mandatory[s.offer]) for s in shown]
    assert mandatory == sorted(mandatory, reverse=True)  # mandatory first
    fallback = [bool(plan.fallback[s.offer]) for s in shown]
    assert all(fallback) or not any(fallback)  # fallback only when nothing else is left
    rest = [s for s in shown if not plan.mandatory[s.offer]]
    if plan.epsilon == 0.0:
        keys = [(-s.score, plan.offer_ids[s.offer]) for s in rest]
        assert keys == sorted(keys)
        assert all(s.selection_probability == 1.0 for s in shown)
    excluded_ids = {e.offer_id for e in outcome.excluded}
    assert not excluded_ids & set(offer_ids)
    for e in outcome.excluded:
        assert e.kind in {"business", "communication", "hygiene"}
        assert e.offer_id in plan.offer_position


@pytest.fixture(scope="module")
def model_bundle(tmp_path_factory: pytest.TempPathFactory) -> LoadedBundle:
    return load_spec_bundle(tmp_path_factory.mktemp("props") / "b", synthetic_spec(60, n_models=1),
                            models={"gbt0": train_model(10)[0]})


@pytest.fixture(scope="module")
def exploring_bundle(tmp_path_factory: pytest.TempPathFactory) -> LoadedBundle:
    spec = synthetic_spec(30, n_models=0, name="explore")
    spec["exploration"] = {"epsilon": 0.3}
    return load_spec_bundle(tmp_path_factory.mktemp("explore") / "b", spec)


def _run(plan: DecisionPlan, profile: dict[str, Any], channel: str, history: list[Any], limit: int,
         hour: int, seed: str = "s", explain: bool = True) -> Outcome:
    customer = {**plan.default_profile, **profile}
    context = {"channel": channel, "hour": hour, "weekday": 2}
    return run_pipeline(plan, customer=customer, context=context, channel=channel, history=history, now=NOW,
                        limit=limit, explain=explain, seed=seed)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), profile=profiles, limit=st.integers(1, 100), hour=st.integers(0, 23),
       channel=st.sampled_from(["pos", "app", "web", "kiosk"]))
def test_ranking_invariants_with_a_model(model_bundle: LoadedBundle, data: st.DataObject, profile: dict[str, Any],
                                         limit: int, hour: int, channel: str) -> None:
    plan = model_bundle.plan
    assert plan is not None
    history = data.draw(histories(plan.offer_ids))
    explained = _run(plan, profile, channel, history, limit, hour)
    check_invariants(plan, explained, limit)
    # without an explanation: the same answer, and the same offers in play
    quiet = _run(plan, profile, channel, history, limit, hour, explain=False)
    assert quiet.shown == explained.shown and quiet.strategy == explained.strategy and quiet.excluded == ()
    assert quiet.eligible == explained.eligible


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(profile=profiles, limit=st.integers(1, 30), seed=st.text(min_size=1, max_size=12))
def test_exploration_invariants(exploring_bundle: LoadedBundle, profile: dict[str, Any], limit: int,
                                seed: str) -> None:
    plan = exploring_bundle.plan
    assert plan is not None
    outcome = _run(plan, profile, "pos", [], limit, 12, seed=seed)
    check_invariants(plan, outcome, limit)
    rest = [s for s in outcome.shown if not plan.mandatory[s.offer]]
    if len(rest) > 1 and not outcome.explored:
        keys = [(-s.score, plan.offer_ids[s.offer]) for s in rest]
        assert keys == sorted(keys)
    if outcome.explored and rest:
        assert rest[0].selection_probability < 1.0


# -- generated catalogs ---------------------------------------------------------------------------

RULE_MENU = [
    ("hygiene", "!customer.do_not_contact"),
    ("hygiene", "!has(customer.complaint_open) || !customer.complaint_open"),
    ("business", "customer.age >= 18"),
    ("business", "offer.value > 2.0"),
    ("business", "!(offer.offer_id in customer.owned_products)"),
    ("business", "customer.age >= offer.attributes.min_age"),
    ("communication", "context.hour >= 7"),
    ("business", "customer.lifecycle_stage != 'lost' || offer.category == 'winback'"),
]


@st.composite
def catalogs(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 12))
    offers = []
    for i in range(n):
        offers.append({
            "offer_id": f"O{i:02d}",
            "category": draw(st.sampled_from(CATEGORIES)),
            "channels": draw(st.sampled_from([[], ["pos"], ["app"], ["pos", "app"]])),
            "expected_volume": draw(st.floats(0, 50)),
            "margin": draw(st.floats(0, 10)),
            "duration": draw(st.floats(0, 3)),
            "lever": draw(st.sampled_from([1.0, 0.5, 2.0, 0.0])),
            "mandatory": draw(st.booleans()) and i % 4 == 0,
            "fallback": i == n - 1 or (draw(st.booleans()) and i % 5 == 1),
            "attributes": draw(st.sampled_from([{}, {"min_age": 21}, {"min_age": 16}])),
        })
    rules = [
        {"rule_id": f"R{j}", "kind": kind, "expression": expr,
         "applies_to": draw(st.sampled_from(["*", *CATEGORIES, *[o["offer_id"] for o in offers]]))}
        for j, (kind, expr) in enumerate(draw(st.lists(st.sampled_from(RULE_MENU), max_size=5, unique=True)))
    ]
    policies = [
        {"policy_id": f"P{j}", "scope": scope, "event": event, "max_count": draw(st.integers(0, 3)),
         "window_days": draw(st.sampled_from([1, 7, 30])), "channel": draw(st.sampled_from(["", "pos", "app"]))}
        for j, (scope, event) in enumerate(draw(st.lists(
            st.tuples(st.sampled_from(["offer", "category", "all"]), st.sampled_from(["shown", "declined"])),
            max_size=3)))
    ]
    weights = {c: draw(st.floats(0, 3)) for c in draw(st.lists(st.sampled_from(CATEGORIES), max_size=3))}
    return {
        "name": "gen",
        "channels": ["pos", "app"],
        "offers": offers,
        "rules": rules,
        "contact_policies": policies,
        "strategies": {"s": weights},
        "strategy_assignment": [{"condition": draw(st.sampled_from(["true", "customer.age > 30"])), "strategy": "s"}],
        "exploration": {"epsilon": draw(st.sampled_from([0.0, 0.0, 0.2]))},
    }


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(catalog=catalogs(), data=st.data(), profile=profiles, limit=st.integers(1, 10),
       channel=st.sampled_from(["pos", "app"]))
def test_invariants_on_generated_catalogs(tmp_path_factory: pytest.TempPathFactory, catalog: dict[str, Any],
                                          data: st.DataObject, profile: dict[str, Any], limit: int,
                                          channel: str) -> None:
    bundle = load_spec_bundle(tmp_path_factory.mktemp("gen") / "b", catalog)
    plan = bundle.plan
    assert plan is not None
    history = data.draw(histories(plan.offer_ids))
    outcome = _run(plan, profile, channel, history, limit, data.draw(st.integers(0, 23)))
    check_invariants(plan, outcome, limit)
    if outcome.shown and all(plan.fallback[s.offer] for s in outcome.shown):
        # a fallback answer means no normal offer survived
        assert not any(not plan.fallback[i] and plan.offer_ids[i] not in {e.offer_id for e in outcome.excluded}
                       and plan.channel_masks[channel][i] for i in range(len(plan.offer_ids)))


# -- bad input never corrupts state -------------------------------------------------------------------

anything = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5), st.binary(max_size=3),
    st.lists(st.one_of(st.integers(), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(customer_id=st.one_of(st.text(max_size=140), st.integers()), channel=st.one_of(st.sampled_from(
       ["pos", "app", "fax", ""]), st.integers()), context=st.one_of(st.none(), st.dictionaries(st.text(
       max_size=6), anything, max_size=3), anything), profile=st.one_of(st.none(), st.dictionaries(
       st.one_of(st.text(max_size=6), st.integers()), anything, max_size=3)), limit=st.one_of(
       st.integers(-5, 120), st.floats(), st.booleans()))
def test_fuzzed_decide_either_answers_or_raises_input_error(
    model_bundle: LoadedBundle, tmp_path_factory: pytest.TempPathFactory, customer_id: Any, channel: Any,
    context: Any, profile: Any, limit: Any,
) -> None:
    path: Path = tmp_path_factory.getbasetemp() / "fuzz-state.sqlite"
    store = SQLiteStateStore(path, device_id="fuzz", clock=ManualClock(NOW), schemas=(_ledger.SCHEMA,))
    try:
        with store.transaction() as tx:
            before = tx.execute("SELECT COUNT(*) FROM decisions")[0][0]
            seq_before = tx.execute("SELECT value FROM counters WHERE name = 'outbox_seq'")[0][0]
        try:
            decision = _engine.decide(model_bundle, store, customer_id=customer_id, channel=channel,
                                      context=context, profile=profile, limit=limit, explain=True)
        except InputError as exc:
            assert exc.field is not None
            expected = before
        else:
            assert len(decision.offers) <= limit
            expected = before + 1
        with store.transaction() as tx:
            assert tx.execute("SELECT COUNT(*) FROM decisions")[0][0] == expected
            seq = tx.execute("SELECT value FROM counters WHERE name = 'outbox_seq'")[0][0]
            assert seq == seq_before + (expected - before)  # outbox stays gapless
    finally:
        store.close()



@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_small_pool_ranking_matches_the_numpy_order(model_bundle: LoadedBundle, data: st.DataObject) -> None:
    """``rank`` sorts a few offers in Python: the order must be ``_ordered``'s (ties included)."""
    plan = model_bundle.plan
    assert plan is not None
    n = data.draw(st.integers(1, 32))
    pool = np.array(sorted(data.draw(st.sets(st.integers(0, len(plan.offer_ids) - 1), min_size=n, max_size=n))))
    # few distinct values, so equal scores (ties) are common
    prop = np.array(data.draw(st.lists(st.sampled_from([0.0, 0.25, 0.5, 1.0]), min_size=len(pool),
                                       max_size=len(pool))), dtype=np.float64)
    outcome = rank(plan, Selection(pool=pool, strategy="", weights_by_category=None, excluded=[]), prop,
                   limit=len(pool), seed="s")
    scores = prop * plan.value[pool] * plan.lever[pool]
    expected = [int(pool[i]) for i in _ordered(plan, pool, scores)]
    assert [s.offer for s in outcome.shown] == expected
    # Every score part too, bit for bit, against the array path — under each strategy's weights,
    # with a propensity that is NaN now and then (which the array path orders).
    strategy = data.draw(st.sampled_from(["", *plan.strategy_weights]))
    if data.draw(st.booleans()):
        prop[data.draw(st.integers(0, len(pool) - 1))] = math.nan
    selection = Selection(pool=pool, strategy=strategy, weights_by_category=plan.strategy_weights.get(strategy),
                          excluded=[])
    few = rank(plan, selection, prop, limit=len(pool), seed="s")
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(_policy, "_FEW_ROWS", 0)  # the array path for any pool
        array = rank(plan, selection, prop, limit=len(pool), seed="s")

    def same(a: Any, b: Any) -> bool:  # equal, NaN equal to NaN
        return bool(a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)))

    assert len(few.shown) == len(array.shown)
    for mine, theirs in zip(few.shown, array.shown, strict=True):
        assert all(same(a, b) for a, b in zip(mine, theirs, strict=True)), (mine, theirs)


owned_lists = st.one_of(
    st.none(), st.integers(0, 5), st.text(max_size=8),
    st.lists(st.one_of(st.sampled_from([f"OF{i:05d}" for i in range(60)]), st.text(max_size=7)), max_size=12),
    st.lists(st.one_of(st.integers(0, 3), st.sampled_from(["OF00000", "OF00006"])), max_size=4),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(profile=profiles, owned=owned_lists, missing=st.booleans(), limit=st.integers(1, 60))
def test_already_owns_it_by_set_lookup_decides_as_cel_does(model_bundle: LoadedBundle, profile: dict[str, Any],
                                                           owned: Any, missing: bool, limit: int) -> None:
    """The "already owns it" rule (``!(offer.offer_id in customer.owned_products)``) is decided
    with a set lookup: the answer and every exclusion, failures included, must be CEL's."""
    import dataclasses

    plan = model_bundle.plan
    assert plan is not None
    (owns,) = [r for r in plan.candidate_rules if r.rule_id == "M1"]
    assert owns.membership is not None and owns.membership.negated
    by_cel = dataclasses.replace(plan, candidate_rules=tuple(
        dataclasses.replace(r, membership=None) for r in plan.candidate_rules))
    customer = dict(profile)
    if missing:
        customer.pop("owned_products", None)
    else:
        customer["owned_products"] = owned
    fast = _run(plan, customer, "pos", [], limit, 12)
    slow = _run(by_cel, customer, "pos", [], limit, 12)
    assert fast.shown == slow.shown and fast.eligible == slow.eligible
    assert fast.excluded == slow.excluded
