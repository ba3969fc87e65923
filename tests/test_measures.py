"""Customer measures (sdk._measures): hand-computed cases, properties, incremental = batch."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nbo.model_export import derive_features
from nbo.sdk import InputError
from nbo.sdk.core import (
    LIFECYCLE_STAGES,
    MeasureConfig,
    lifecycle_stage,
    new_customer_profile,
    refresh_measures,
    update_measures,
)

D0 = date(2024, 1, 1)


def tx(customer: str, day: date | datetime, amount: object, quantity: object = 1) -> dict[str, object]:
    return {"customer_id": customer, "timestamp": day, "amount": amount, "quantity": quantity}


def annuity(years: float, rate: float) -> float:
    return (1 - (1 + rate) ** -years) / math.log(1 + rate)


def test_model_export_reexports_the_sdk_function() -> None:
    from nbo.sdk import _measures

    assert derive_features is _measures.derive_features


def test_hand_computed_starter_customer() -> None:
    rows = [
        tx("a", date(2024, 1, 1), "10.50"),
        tx("a", datetime(2024, 1, 1, 18, 0), 5, 2),  # same day: one occasion
        tx("a", date(2024, 3, 1), Decimal("20")),
    ]
    m = derive_features(rows, as_of=date(2024, 4, 1))["a"]
    assert m["recency_days"] == 31.0
    assert m["frequency"] == 2
    assert m["monetary"] == pytest.approx(35.5)
    assert m["avg_purchase"] == pytest.approx(17.75)
    assert m["tenure_days"] == 91.0
    assert m["purchases_per_year"] == pytest.approx(2 / 91 * 365.25)
    assert m["lifecycle_stage"] == "starter"  # recency 31 ≤ 90, tenure > 30, 2 < 3 occasions
    assert m["loyalty_stage"] == "hear_me"  # 2 occasions, tenure 91 < 180
    assert m["clv"] == pytest.approx(2 / 91 * 365.25 * 17.75 * annuity(3.0, 0.10))
    assert m["items"] == 4
    assert m["points_balance"] == 0


def test_stages_at_each_threshold() -> None:
    as_of = date(2025, 1, 1)
    rows = [
        tx("new", as_of - timedelta(days=10), 10),
        tx("lost", as_of - timedelta(days=400), 10),
        tx("inactive", as_of - timedelta(days=200), 10),
        tx("declining", as_of - timedelta(days=100), 10),
    ] + [tx("active", as_of - timedelta(days=d), 30) for d in (300, 200, 120, 60, 5)]
    m = derive_features(rows, as_of=as_of)
    assert {c: m[c]["lifecycle_stage"] for c in m} == {
        "new": "new", "lost": "lost", "inactive": "inactive", "declining": "declining", "active": "active",
    }
    # grow_me: ≥ 5 occasions over ≥ 180 days
    assert m["active"]["loyalty_stage"] == "grow_me"
    assert m["new"]["loyalty_stage"] == "know_me"
    # a lost customer's expected remaining duration is 0, so is the CLV
    assert m["lost"]["clv"] == 0.0
    # declining keeps half the expected lifetime
    dec = m["declining"]
    assert dec["clv"] == pytest.approx(dec["purchases_per_year"] * 10 * annuity(1.5, 0.10))
    # the 90-day rate floor: 1 purchase with 10 days of tenure is 1/90 of a year's worth
    assert m["new"]["purchases_per_year"] == pytest.approx(365.25 / 90)


def test_config_changes_thresholds_and_discounting() -> None:
    rows = [tx("a", date(2024, 1, 1), 100), tx("a", date(2024, 6, 1), 100)]
    config = MeasureConfig(declining_after_days=10, annual_discount_rate=0.0, expected_lifetime_years=2.0)
    m = derive_features(rows, as_of=date(2024, 7, 1), config=config)["a"]
    assert m["lifecycle_stage"] == "declining"
    assert m["clv"] == pytest.approx(m["purchases_per_year"] * 100 * 2.0 * 0.5)


def test_transactions_after_as_of_are_ignored() -> None:
    rows = [tx("a", date(2024, 1, 1), 10), tx("a", date(2024, 2, 1), 99), tx("b", date(2024, 3, 1), 5)]
    m = derive_features(rows, as_of=date(2024, 1, 15))
    assert set(m) == {"a"}
    assert m["a"]["monetary"] == 10.0 and m["a"]["frequency"] == 1


def test_profiles_feed_loyalty_and_cover_customers_without_purchases() -> None:
    rows = [tx("a", date(2024, 1, 1), 10)]
    profiles = {
        "a": {"complaint_open": True, "segment": "gold", "frequency": 99, "points_balance": 40},
        "z": {"age": 30},
    }
    m = derive_features(rows, as_of=date(2024, 1, 2), profiles=profiles)
    assert m["a"]["loyalty_stage"] == "forgive_me"
    assert m["a"]["segment"] == "gold"
    assert m["a"]["frequency"] == 1  # measures come from transactions, not the profile
    assert m["a"]["points_balance"] == 40
    assert m["z"]["recency_days"] is None and m["z"]["lifecycle_stage"] == "new" and m["z"]["age"] == 30


def test_new_customer_profile_contract() -> None:
    assert new_customer_profile() == {
        "recency_days": None, "frequency": 0, "monetary": 0.0, "avg_purchase": 0.0, "tenure_days": 0.0,
        "purchases_per_year": 0.0, "clv": 0.0, "lifecycle_stage": "new", "loyalty_stage": "know_me",
        "points_balance": 0,
    }
    assert update_measures(None, [], as_of=D0)["lifecycle_stage"] == "new"


def test_update_measures_continues_a_profile_and_keeps_other_fields() -> None:
    profile = {**new_customer_profile(), "segment": "gold", "points_balance": 120}
    p1 = update_measures(profile, [{"timestamp": date(2024, 1, 1), "amount": "12.00"}], as_of=date(2024, 1, 1))
    assert p1["frequency"] == 1 and p1["recency_days"] == 0.0 and p1["segment"] == "gold"
    assert p1["points_balance"] == 120
    assert profile["frequency"] == 0  # the input profile is not mutated
    p2 = update_measures(p1, [{"timestamp": date(2024, 2, 1), "amount": 8}], as_of=date(2024, 2, 11))
    assert p2["frequency"] == 2 and p2["monetary"] == 20.0 and p2["recency_days"] == 10.0
    later = refresh_measures(p2, as_of=date(2025, 6, 1))
    assert later["lifecycle_stage"] == "lost" and later["frequency"] == 2 and later["clv"] == 0.0


def test_refresh_without_anchors_keeps_given_recency() -> None:
    foreign = {**new_customer_profile(), "frequency": 4, "monetary": 80.0, "recency_days": 12.0, "tenure_days": 400.0}
    out = refresh_measures(foreign, as_of=date(2024, 1, 1))
    assert out["recency_days"] == 12.0 and out["tenure_days"] == 400.0
    assert out["avg_purchase"] == 20.0 and out["lifecycle_stage"] == "active"


def test_purchase_stamped_after_as_of_clamps_recency_at_zero() -> None:
    out = update_measures(None, [{"timestamp": datetime(2024, 1, 2, tzinfo=UTC), "amount": 1}], as_of=date(2024, 1, 1))
    assert out["recency_days"] == 0.0 and out["tenure_days"] == 0.0


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"timestamp": D0, "amount": 1}, "customer_id"),
        ({"customer_id": "a", "amount": 1}, "timestamp"),
        ({"customer_id": "a", "timestamp": D0}, "amount"),
        ({"customer_id": "a", "timestamp": D0, "amount": "ten"}, "amount"),
        ({"customer_id": "a", "timestamp": D0, "amount": float("nan")}, "amount"),
        ({"customer_id": "a", "timestamp": D0, "amount": True}, "amount"),
        ({"customer_id": "a", "timestamp": "yesterday", "amount": 1}, "timestamp"),
        ({"customer_id": "a", "timestamp": [2024], "amount": 1}, "timestamp"),
        ({"customer_id": "a", "timestamp": D0, "amount": 1, "quantity": "two"}, "quantity"),
        ({"customer_id": "a", "timestamp": D0, "amount": 1, "quantity": 1.5}, "quantity"),
        ({"customer_id": "", "timestamp": D0, "amount": 1}, "customer_id"),
    ],
)
def test_bad_transactions_name_the_field(record: dict[str, object], field: str) -> None:
    with pytest.raises(InputError) as info:
        derive_features([record], as_of=D0)
    assert info.value.field == field
    assert field in str(info.value)


def test_bad_config_is_refused() -> None:
    with pytest.raises(InputError):
        MeasureConfig(declining_after_days=200, inactive_after_days=100)
    with pytest.raises(InputError):
        MeasureConfig(annual_discount_rate=-0.1)
    with pytest.raises(InputError):
        MeasureConfig(stage_duration_factors=(("new", 1.0),))


# -- properties ------------------------------------------------------------------------------

purchases = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=900),  # day offset
        st.integers(min_value=0, max_value=86_399),  # second of the day
        st.decimals(min_value=0, max_value=10_000, places=2, allow_nan=False),
    ),
    min_size=1,
    max_size=25,
)


def _rows(items: list[tuple[int, int, Decimal]]) -> list[dict[str, object]]:
    base = datetime(2023, 1, 1, tzinfo=UTC)
    return [tx("c", base + timedelta(days=d, seconds=s), str(a)) for d, s, a in items]


@settings(max_examples=60, deadline=None)
@given(purchases, st.integers(min_value=0, max_value=1200))
def test_recency_nonnegative_frequency_counts_days_monetary_sums(items: list[tuple[int, int, Decimal]], extra: int) -> None:
    rows = _rows(items)
    as_of = max(r["timestamp"] for r in rows) + timedelta(days=extra)  # type: ignore[operator]
    m = derive_features(rows, as_of=as_of)["c"]
    assert m["recency_days"] is not None and m["recency_days"] >= 0
    assert m["tenure_days"] >= m["recency_days"]
    assert m["frequency"] == len({d for d, _, _ in items})
    assert m["monetary"] == pytest.approx(float(sum(a for _, _, a in items)))
    assert m["clv"] >= 0 and m["purchases_per_year"] > 0


_RANK = {"new": 0, "starter": 0, "active": 0, "declining": 1, "inactive": 2, "lost": 3}


@settings(max_examples=60, deadline=None)
@given(purchases, st.lists(st.integers(min_value=0, max_value=800), min_size=2, max_size=6))
def test_stage_never_moves_back_as_time_passes(items: list[tuple[int, int, Decimal]], gaps: list[int]) -> None:
    rows = _rows(items)
    profile = derive_features(rows, as_of=max(r["timestamp"] for r in rows))["c"]  # type: ignore[type-var]
    last = profile["last_purchase_at"]
    ranks = []
    for gap in sorted(gaps):
        stage = refresh_measures(profile, as_of=last + gap * 86_400.0)["lifecycle_stage"]
        assert stage in LIFECYCLE_STAGES
        ranks.append(_RANK[stage])
    assert ranks == sorted(ranks)
    # and recency alone (frequency, tenure fixed) orders stages the same way
    stages = [lifecycle_stage(recency_days=r, frequency=4, tenure_days=1000, config=MeasureConfig()) for r in
              sorted(gaps)]
    assert [_RANK[s] for s in stages] == sorted(_RANK[s] for s in stages)


@settings(max_examples=60, deadline=None)
@given(purchases, st.integers(min_value=0, max_value=400))
def test_incremental_updates_equal_batch_derivation(items: list[tuple[int, int, Decimal]], extra: int) -> None:
    rows = sorted(_rows(items), key=lambda r: r["timestamp"])  # type: ignore[arg-type, return-value]
    as_of = rows[-1]["timestamp"] + timedelta(days=extra)  # type: ignore[operator]
    batch = derive_features(rows, as_of=as_of)["c"]
    profile = None
    for row in rows:  # the SDK path: one record_purchase at a time
        profile = update_measures(profile, [row], as_of=row["timestamp"])  # type: ignore[arg-type]
    incremental = refresh_measures(profile, as_of=as_of)
    for key in ("recency_days", "frequency", "tenure_days", "lifecycle_stage", "loyalty_stage", "items"):
        assert incremental[key] == batch[key], key
    for key in ("monetary", "avg_purchase", "purchases_per_year", "clv"):
        assert incremental[key] == pytest.approx(batch[key]), key
