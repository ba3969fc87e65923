"""What the decision plan precomputes for the hot path gives the same answers as computing it afresh.

The candidate set of a channel is cached in the plan until the next validity edge; the
propensity fast paths (one model, a few rows) must match the general ones bit for bit.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_fixtures import load_spec_bundle, train_model
from nbo.sdk import _policy, _runtime

NOW = 1_767_000_000.0  # 2025-12-29T09:20:00Z
DAY = 86_400.0


def offer(offer_id: str, category: str = "xsell", **extra: Any) -> dict[str, Any]:
    return {"offer_id": offer_id, "category": category, "expected_volume": 1.0, "margin": 10.0, "duration": 1.0,
            **extra}


def load(tmp_path: Path, offers: list[dict[str, Any]], *, models: dict[str, bytes] | None = None,
         **extra: Any) -> _runtime.DecisionPlan:
    bundle = load_spec_bundle(tmp_path / "bundle", {"name": "t", "channels": ["pos", "app"], "offers": offers,
                                                    **extra}, models=models)
    assert bundle.plan is not None
    return bundle.plan


VALIDITY_OFFERS = [
    offer("A"),
    offer("B", valid_from="2025-12-29T10:00:00Z"),
    offer("C", valid_to="2025-12-29T10:00:00Z", channels=["app"]),
    offer("D", valid_from="2025-12-29T09:00:00Z", valid_to="2025-12-30T00:00:00Z", category="upsell"),
    offer("E", valid_to="2025-12-29T09:30:00Z", channels=["pos"], category="upsell"),
]
RULES = [
    {"rule_id": "up", "kind": "business", "applies_to": "upsell", "expression": "customer.age >= 18"},
    {"rule_id": "own", "kind": "business", "applies_to": "E",
     "expression": "!(offer.offer_id in customer.owned_products)"},
]


def fresh(plan: _runtime.DecisionPlan, channel: str, now: float) -> tuple[list[bool], list[str], list[str]]:
    mask = _policy.candidate_mask(plan, channel, now)
    return (mask.tolist(),
            [r.rule_id for r in plan.decision_rules if (mask & r.applies).any()],
            [r.rule_id for r in plan.candidate_rules if (mask & r.applies).any()])


def cached(plan: _runtime.DecisionPlan, channel: str, now: float) -> tuple[list[bool], list[str], list[str]]:
    entry = _policy.candidate_set(plan, channel, now)
    assert entry.start <= now < entry.end
    assert entry.any == bool(entry.mask.any())
    assert entry.static_alive.tolist() == (entry.mask & plan.static_ok).tolist()
    return (entry.mask.tolist(), [r.rule_id for r in entry.decision_rules],
            [r.rule_id for r in entry.candidate_rules])


def test_candidate_set_is_recomputed_at_each_validity_edge(tmp_path: Path) -> None:
    plan = load(tmp_path, VALIDITY_OFFERS, rules=RULES)
    edges = sorted({e for e in plan.validity_edges if np.isfinite(e)})
    assert len(edges) == 4
    # every edge, a hair before and after it, far away, and time going backwards
    instants = [NOW - 10 * DAY, NOW + 10 * DAY]
    for e in edges:
        instants += [e, np.nextafter(e, -np.inf), np.nextafter(e, np.inf), e - 1.0, e + 1.0]
    for order in (sorted(instants), sorted(instants, reverse=True), random.Random(7).sample(instants, len(instants))):
        for now in order:
            for channel in ("pos", "app"):
                assert cached(plan, channel, now) == fresh(plan, channel, now), (channel, now)


def test_candidate_set_across_valid_to_in_a_decision(tmp_path: Path) -> None:
    plan = load(tmp_path, VALIDITY_OFFERS, rules=RULES)
    valid_to_e = plan.valid_to[plan.offer_position["E"]]

    def shown(now: float) -> list[str]:
        out = _policy.run_pipeline(plan, customer={"age": 30, "owned_products": []}, context={}, channel="pos",
                                   history=[], now=now, limit=10, explain=False, seed="s")
        return sorted(plan.offer_ids[s.offer] for s in out.shown)

    assert shown(valid_to_e - 1.0) == ["A", "D", "E"]
    assert shown(valid_to_e) == ["A", "D"]  # the cached set of a second ago must not be reused
    assert shown(valid_to_e - 1.0) == ["A", "D", "E"]


def test_a_replaced_plan_gets_its_own_cache(tmp_path: Path) -> None:
    plan = load(tmp_path, VALIDITY_OFFERS)
    _policy.candidate_set(plan, "pos", NOW)
    everywhere = np.ones(len(plan.offer_ids), dtype=bool)
    other = dataclasses.replace(plan, channel_masks={"pos": everywhere, "app": everywhere})
    assert other.candidate_cache == {}
    assert _policy.candidate_set(other, "pos", NOW).mask.tolist() == _policy.candidate_mask(other, "pos", NOW).tolist()


def test_candidate_set_arrays_are_read_only(tmp_path: Path) -> None:
    entry = _policy.candidate_set(load(tmp_path, VALIDITY_OFFERS), "pos", NOW)
    with pytest.raises(ValueError):
        entry.mask[0] = False
    with pytest.raises(ValueError):
        entry.static_alive[0] = False


def _reference_clamp(col: np.ndarray) -> np.ndarray:
    """The original stage-4 code: NaN → 0, then clip into [0, 1]."""
    out = np.asarray(col, dtype=np.float64)
    bad = np.isnan(out)
    if bad.any():
        out = np.where(bad, 0.0, out)
    return np.clip(out, 0.0, 1.0)


@pytest.mark.parametrize("n", [1, 2, 5, 32, 33, 200])
def test_clamp_probabilities_matches_nan_to_zero_then_clip(n: int) -> None:
    rng = np.random.default_rng(n)
    specials = np.array([np.nan, -0.0, 0.0, -1e-9, 1.5, np.inf, -np.inf, 1.0, 0.5, 1 + 1e-7], dtype=np.float32)
    for trial in range(200):
        col = rng.choice(specials, size=n) if trial % 2 else rng.random(n).astype(np.float32)
        got = _policy.clamp_probabilities(col)
        assert got.dtype == np.float64
        assert got.tobytes() == _reference_clamp(col).tobytes()


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return train_model(10)[0]


def test_sole_model_is_the_only_model_offers_use(tmp_path: Path, model_bytes: bytes) -> None:
    one = load(tmp_path / "one", [offer("A", model_id="m"), offer("B"), offer("C", model_id="m")],
               models={"m": model_bytes, "unused": model_bytes})
    assert one.models[one.sole_model].model_id == "m"
    two = load(tmp_path / "two", [offer("A", model_id="m"), offer("B", model_id="n")],
               models={"m": model_bytes, "n": model_bytes})
    assert two.sole_model == -1
    none = load(tmp_path / "none", [offer("A")], models={"m": model_bytes})
    assert none.sole_model == -1


def test_one_model_fast_path_matches_per_model_grouping(tmp_path: Path, model_bytes: bytes) -> None:
    plan = load(tmp_path, [offer(f"O{i}", model_id="m" if i % 3 else None, attributes={"price": float(i)})
                           for i in range(9)], models={"m": model_bytes})
    general = dataclasses.replace(plan, sole_model=-1)
    customer = {**plan.default_profile, "frequency": 4}
    context = {"channel": "pos", "hour": 9, "weekday": 0}
    for rows in ([0, 3, 6], [1, 2], [0, 1, 2, 3, 4, 5, 6, 7, 8], [4]):
        picked = np.array(rows, dtype=np.intp)
        fast = _policy.propensities(plan, picked, customer, context)
        slow = _policy.propensities(general, picked, customer, context)
        assert fast.tobytes() == slow.tobytes()
