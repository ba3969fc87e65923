"""Customer measures (RFM, CLV, lifecycle and loyalty stage) — shared by training and the SDK.

One module defines how a customer's measures follow from their purchases, so the model
trained centrally and the device that serves it cannot drift apart:

* training calls :func:`derive_features` (re-exported as ``nbo.model_export.derive_features``)
  on a whole transaction file;
* the SDK calls :func:`update_measures` when a purchase is recorded, and
  :func:`refresh_measures` when time has passed, on the profile it keeps per customer.

``derive_features`` is itself a fold of the same per-purchase step over the customer's
purchases in time order, so both paths give identical numbers for purchases recorded in
order. Pure Python (plus ``math``): no pandas, no numpy needed, no I/O, no clock — ``as_of``
is always passed in.

Measures (contract names): ``recency_days``, ``frequency`` (purchase occasions — purchases on
the same UTC calendar day count once), ``monetary`` (total spend), ``avg_purchase`` (spend per
occasion), ``tenure_days``, ``purchases_per_year``, ``clv``, ``lifecycle_stage``,
``loyalty_stage``, ``points_balance``. Two bookkeeping fields carry the state needed to update
incrementally: ``first_purchase_at`` and ``last_purchase_at`` (epoch seconds, UTC), plus
``items`` (total quantity).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any

from ._errors import InputError

__all__ = [
    "LIFECYCLE_STAGES",
    "LOYALTY_STAGES",
    "MeasureConfig",
    "derive_features",
    "new_customer_profile",
    "refresh_measures",
    "update_measures",
]

LIFECYCLE_STAGES: tuple[str, ...] = ("new", "starter", "active", "declining", "inactive", "lost")
LOYALTY_STAGES: tuple[str, ...] = ("know_me", "hear_me", "grow_me", "forgive_me")

_DAY = 86_400.0
_YEAR_DAYS = 365.25


@dataclass(frozen=True, kw_only=True)
class MeasureConfig:
    """Thresholds and rates behind the derived measures (all keyword-only, defaults documented).

    Lifecycle stage, first rule that matches (``recency`` = days since the last purchase,
    ``tenure`` = days since the first):

    1. no purchase yet → ``new``
    2. recency > ``lost_after_days`` (365) → ``lost``
    3. recency > ``inactive_after_days`` (180) → ``inactive``
    4. recency > ``declining_after_days`` (90) → ``declining``
    5. tenure ≤ ``new_max_tenure_days`` (30) → ``new``
    6. frequency < ``active_min_frequency`` (3) → ``starter``
    7. otherwise → ``active``

    So, with everything else fixed, a longer recency never moves a customer to an earlier
    stage of the flow new/starter/active → declining → inactive → lost.

    Loyalty stage (the know me / hear me / grow me / forgive me ladder):

    1. an open complaint (profile field ``complaint_open`` true) → ``forgive_me``
    2. frequency ≥ ``grow_me_min_frequency`` (5) and tenure ≥ ``grow_me_min_tenure_days``
       (180) → ``grow_me``
    3. frequency ≥ ``hear_me_min_frequency`` (2) → ``hear_me``
    4. otherwise → ``know_me``

    Purchase rate and CLV:

    * ``purchases_per_year`` = frequency / max(tenure, ``rate_min_days`` (90)) × 365.25 —
      the floor keeps a one-day-old customer with one purchase from counting as 365 a year.
    * ``clv`` = purchases_per_year × avg_purchase × annuity(D, r) where D =
      ``expected_lifetime_years`` (3.0) × the stage's factor in ``stage_duration_factors``
      (new/starter/active 1.0, declining 0.5, inactive 0.25, lost 0.0) and r =
      ``annual_discount_rate`` (0.10); annuity(D, r) = (1 − (1 + r)^−D) / ln(1 + r), the
      continuously paid value of one unit a year for D years (= D when r = 0).
    """

    new_max_tenure_days: float = 30.0
    active_min_frequency: int = 3
    declining_after_days: float = 90.0
    inactive_after_days: float = 180.0
    lost_after_days: float = 365.0
    hear_me_min_frequency: int = 2
    grow_me_min_frequency: int = 5
    grow_me_min_tenure_days: float = 180.0
    rate_min_days: float = 90.0
    expected_lifetime_years: float = 3.0
    annual_discount_rate: float = 0.10
    stage_duration_factors: tuple[tuple[str, float], ...] = (
        ("new", 1.0),
        ("starter", 1.0),
        ("active", 1.0),
        ("declining", 0.5),
        ("inactive", 0.25),
        ("lost", 0.0),
    )

    def __post_init__(self) -> None:
        if not (0 <= self.declining_after_days <= self.inactive_after_days <= self.lost_after_days):
            raise InputError(
                "MeasureConfig: need 0 ≤ declining_after_days ≤ inactive_after_days ≤ lost_after_days",
                field="declining_after_days",
            )
        if self.annual_discount_rate < 0 or not math.isfinite(self.annual_discount_rate):
            raise InputError("MeasureConfig: annual_discount_rate must be ≥ 0", field="annual_discount_rate")
        if self.expected_lifetime_years < 0:
            raise InputError("MeasureConfig: expected_lifetime_years must be ≥ 0", field="expected_lifetime_years")
        if self.rate_min_days <= 0:
            raise InputError("MeasureConfig: rate_min_days must be > 0", field="rate_min_days")
        missing = set(LIFECYCLE_STAGES) - {stage for stage, _ in self.stage_duration_factors}
        if missing:
            raise InputError(
                f"MeasureConfig: stage_duration_factors lacks {sorted(missing)}", field="stage_duration_factors"
            )

    def duration_factor(self, stage: str) -> float:
        """The share of ``expected_lifetime_years`` a customer in ``stage`` is expected to stay."""
        for name, factor in self.stage_duration_factors:
            if name == stage:
                return factor
        return 1.0


DEFAULT_CONFIG = MeasureConfig()


def new_customer_profile() -> dict[str, Any]:
    """The profile of a customer the device has never seen: no purchases, stage ``new``."""
    return {
        "recency_days": None,
        "frequency": 0,
        "monetary": 0.0,
        "avg_purchase": 0.0,
        "tenure_days": 0.0,
        "purchases_per_year": 0.0,
        "clv": 0.0,
        "lifecycle_stage": "new",
        "loyalty_stage": "know_me",
        "points_balance": 0,
    }


# -- inputs ------------------------------------------------------------------------------


def to_epoch(value: Any, *, field: str = "timestamp") -> float:
    """A date, datetime (naive = UTC) or epoch number as UTC epoch seconds."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    if isinstance(value, date):
        return datetime.combine(value, time(0, 0), tzinfo=UTC).timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(float(value)):
            raise InputError(f"{field} must be finite, got {value!r}", field=field)
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InputError(f"{field} is not an ISO date or datetime: {value!r}", field=field) from None
        return to_epoch(parsed, field=field)
    raise InputError(f"{field} must be a date, datetime or epoch seconds, got {type(value).__name__}", field=field)


def _to_amount(value: Any, *, field: str = "amount") -> float:
    if isinstance(value, bool):
        raise InputError(f"{field} must be a number, got {value!r}", field=field)
    if isinstance(value, (int, float)):
        amount = float(value)
    elif isinstance(value, (str, Decimal)):
        try:
            amount = float(Decimal(str(value).strip()))
        except (InvalidOperation, ValueError):
            raise InputError(f"{field} must be a number, got {value!r}", field=field) from None
    else:
        raise InputError(f"{field} must be a number, got {type(value).__name__}", field=field)
    if not math.isfinite(amount):
        raise InputError(f"{field} must be finite, got {value!r}", field=field)
    return amount


def _to_quantity(value: Any) -> int:
    if value is None or value == "":
        return 1
    if isinstance(value, bool):
        raise InputError(f"quantity must be an integer, got {value!r}", field="quantity")
    try:
        quantity = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"quantity must be an integer, got {value!r}", field="quantity") from None
    if isinstance(value, float) and value != quantity:
        raise InputError(f"quantity must be an integer, got {value!r}", field="quantity")
    return quantity


def _field(record: Mapping[str, Any], name: str, index: int) -> Any:
    try:
        return record[name]
    except KeyError:
        raise InputError(f"transaction {index}: missing field {name!r}", field=name) from None
    except TypeError:
        raise InputError(f"transaction {index}: not a mapping", field=name) from None


# -- the per-purchase step and the time-dependent part -----------------------------------


def _utc_day(epoch: float) -> int:
    return math.floor(epoch / _DAY)


def _apply_purchase(state: dict[str, Any], ts: float, amount: float, quantity: int) -> None:
    """Fold one purchase into the stored counters (in place)."""
    first = state.get("first_purchase_at")
    last = state.get("last_purchase_at")
    day = _utc_day(ts)
    # One occasion per UTC day: a purchase on the day of the first or the last known purchase
    # joins that occasion. (Out-of-order purchases on some other earlier day count as new.)
    same_occasion = (last is not None and _utc_day(float(last)) == day) or (
        first is not None and _utc_day(float(first)) == day
    )
    if not same_occasion:
        state["frequency"] = int(state.get("frequency") or 0) + 1
    elif int(state.get("frequency") or 0) == 0:
        state["frequency"] = 1
    state["monetary"] = float(state.get("monetary") or 0.0) + amount
    state["items"] = int(state.get("items") or 0) + quantity
    state["first_purchase_at"] = ts if first is None else min(float(first), ts)
    state["last_purchase_at"] = ts if last is None else max(float(last), ts)


def _annuity(years: float, rate: float) -> float:
    if years <= 0:
        return 0.0
    if rate == 0:
        return years
    return (1.0 - (1.0 + rate) ** (-years)) / math.log1p(rate)


def lifecycle_stage(
    *, recency_days: float | None, frequency: int, tenure_days: float, config: MeasureConfig = DEFAULT_CONFIG
) -> str:
    """The lifecycle stage from recency, frequency and tenure (rules in :class:`MeasureConfig`)."""
    if recency_days is None or frequency <= 0:
        return "new"
    if recency_days > config.lost_after_days:
        return "lost"
    if recency_days > config.inactive_after_days:
        return "inactive"
    if recency_days > config.declining_after_days:
        return "declining"
    if tenure_days <= config.new_max_tenure_days:
        return "new"
    if frequency < config.active_min_frequency:
        return "starter"
    return "active"


def loyalty_stage(
    *, frequency: int, tenure_days: float, complaint_open: bool = False, config: MeasureConfig = DEFAULT_CONFIG
) -> str:
    """The loyalty stage (know_me → hear_me → grow_me; forgive_me on an open complaint)."""
    if complaint_open:
        return "forgive_me"
    if frequency >= config.grow_me_min_frequency and tenure_days >= config.grow_me_min_tenure_days:
        return "grow_me"
    if frequency >= config.hear_me_min_frequency:
        return "hear_me"
    return "know_me"


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y", "t")
    return bool(value)


def _finish(state: dict[str, Any], as_of: float, config: MeasureConfig) -> None:
    """Recompute the time-dependent measures of ``state`` as of ``as_of`` (in place)."""
    frequency = int(state.get("frequency") or 0)
    monetary = float(state.get("monetary") or 0.0)
    first = state.get("first_purchase_at")
    last = state.get("last_purchase_at")
    if last is not None and first is not None:
        # A clock behind the last purchase must not give a negative recency.
        recency: float | None = max(0.0, (as_of - float(last)) / _DAY)
        tenure = max(0.0, (as_of - float(first)) / _DAY)
    else:
        # No anchors: a profile from elsewhere keeps whatever recency/tenure it was given.
        recency = state.get("recency_days") if frequency > 0 else None
        tenure = float(state.get("tenure_days") or 0.0)
    avg = monetary / frequency if frequency > 0 else 0.0
    per_year = frequency / max(tenure, config.rate_min_days) * _YEAR_DAYS if frequency > 0 else 0.0
    stage = lifecycle_stage(recency_days=recency, frequency=frequency, tenure_days=tenure, config=config)
    duration = config.expected_lifetime_years * config.duration_factor(stage)
    state["recency_days"] = None if recency is None else float(recency)
    state["frequency"] = frequency
    state["monetary"] = monetary
    state["avg_purchase"] = avg
    state["tenure_days"] = tenure
    state["purchases_per_year"] = per_year
    state["clv"] = per_year * avg * _annuity(duration, config.annual_discount_rate)
    state["lifecycle_stage"] = stage
    state["loyalty_stage"] = loyalty_stage(
        frequency=frequency,
        tenure_days=tenure,
        complaint_open=_truthy(state.get("complaint_open", False)),
        config=config,
    )
    state.setdefault("points_balance", 0)


def _parse_purchase(record: Mapping[str, Any], index: int) -> tuple[float, float, int]:
    ts = to_epoch(_field(record, "timestamp", index))
    amount = _to_amount(_field(record, "amount", index))
    quantity = _to_quantity(record.get("quantity", 1))
    return ts, amount, quantity


# -- public API ----------------------------------------------------------------------------


def update_measures(
    profile: Mapping[str, Any] | None,
    purchases: Iterable[Mapping[str, Any]],
    *,
    as_of: date | datetime | float,
    config: MeasureConfig = DEFAULT_CONFIG,
) -> dict[str, Any]:
    """Return a new profile: ``profile`` with ``purchases`` folded in, measures as of ``as_of``.

    ``purchases`` are mappings with ``timestamp`` (date, datetime, ISO string or epoch
    seconds) and ``amount`` (number, decimal string or ``Decimal``), optional ``quantity``.
    Other profile fields (age, segment, ``complaint_open``, ``points_balance`` …) are kept;
    ``complaint_open`` feeds the loyalty stage. Purchases after ``as_of`` are folded in too
    (the SDK records what happened); recency is then clamped at 0. ``profile=None`` starts
    from :func:`new_customer_profile`. Bad values raise :class:`InputError` naming the field.
    """
    state: dict[str, Any] = new_customer_profile() if profile is None else dict(profile)
    for index, record in enumerate(purchases):
        ts, amount, quantity = _parse_purchase(record, index)
        _apply_purchase(state, ts, amount, quantity)
    _finish(state, to_epoch(as_of, field="as_of"), config)
    return state


def refresh_measures(
    profile: Mapping[str, Any] | None,
    *,
    as_of: date | datetime | float,
    config: MeasureConfig = DEFAULT_CONFIG,
) -> dict[str, Any]:
    """Return ``profile`` with its time-dependent measures (recency, tenure, stages, CLV) at ``as_of``."""
    return update_measures(profile, (), as_of=as_of, config=config)


def derive_features(
    transactions: Iterable[Mapping[str, Any]],
    *,
    as_of: date | datetime | float,
    config: MeasureConfig = DEFAULT_CONFIG,
    profiles: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Customer measures as of ``as_of`` from a transaction history: ``{customer_id: {measure: value}}``.

    ``transactions``: mappings with ``customer_id``, ``timestamp`` (date or datetime; naive
    means UTC; ISO strings and epoch seconds are accepted too), ``amount`` and optional
    ``quantity``. Transactions after ``as_of`` are ignored (a date ``as_of`` means midnight
    UTC at the start of that day, so purchases dated that day count). ``profiles`` optionally
    supplies other fields per customer (``complaint_open`` drives ``forgive_me``); they are
    copied into the result. Customers in ``profiles`` without transactions get the
    new-customer measures. Each result holds every contract measure plus
    ``first_purchase_at``/``last_purchase_at``/``items``, so the SDK can continue it with
    :func:`update_measures`.
    """
    cutoff = to_epoch(as_of, field="as_of")
    per_customer: dict[str, list[tuple[float, float, int]]] = {}
    for index, record in enumerate(transactions):
        customer = _field(record, "customer_id", index)
        if customer is None or str(customer).strip() == "":
            raise InputError(f"transaction {index}: empty customer_id", field="customer_id")
        ts, amount, quantity = _parse_purchase(record, index)
        if ts > cutoff:
            continue
        per_customer.setdefault(str(customer), []).append((ts, amount, quantity))
    result: dict[str, dict[str, Any]] = {}
    ids = set(per_customer) | (set(map(str, profiles)) if profiles else set())
    for customer in sorted(ids):
        state: dict[str, Any] = dict(profiles[customer]) if profiles and customer in profiles else {}
        points = state.get("points_balance", 0)
        # Measures come from the transactions alone, whatever the profile carried.
        state.update(new_customer_profile(), first_purchase_at=None, last_purchase_at=None, items=0)
        state["points_balance"] = points
        # Same fold as update_measures, in time order, so training and serving agree.
        for ts, amount, quantity in sorted(per_customer.get(customer, ())):
            _apply_purchase(state, ts, amount, quantity)
        _finish(state, cutoff, config)
        result[customer] = state
    return result
