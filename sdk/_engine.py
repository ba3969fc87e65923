"""``decide`` / ``decide_many``: validate the requests, read state, run the pure core, record.

The edges live here; the pure core is :mod:`._policy`. One call of :func:`decide_many` (what
:func:`decide` runs with one request, and the gateway with a batch) takes one transaction of
the state store — non-durable, and its clock reading is the decisions' time — and, per round
of requests (one per customer, so a customer's second request sees the first one's
contacts), :func:`_decide_round`:

1. reads the customers' stored profiles (:func:`._contacts.stored_profiles`) and the contact
   counts the bundle's policies need (:func:`._contacts.contact_counts`), brings stored
   measures up to now (:func:`._measures.refresh_measures`) and the points balance from the
   ledger (:func:`._ledger.balance_in`);
2. :func:`._policy.select`: channel, validity, rules, contact policies, strategy weights;
3. :func:`._policy.propensities_many`: one batched ONNX run per model for every customer of
   the round;
4. :func:`._policy.rank`: score, mandatory/fallback, exploration (seeded by the decision id),
   explanation;
5. :func:`._contacts.record_decisions`: the decisions, their ``shown`` contacts and their
   ``decision`` events, in the same transaction (skipped for a dry run, which reads only).

(:func:`._policy.run_pipeline` is stages 2–4 for one customer, without I/O: what the golden
cases run.) A decision receives exactly one :class:`~._runtime.LoadedBundle` reference and
uses nothing else, so a concurrent bundle switch can never mix two bundles in one answer.
Thread-safe: the bundle is immutable and every per-decision object is local.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from math import isfinite
from typing import Any, NamedTuple

import numpy as np

from . import _contacts, _experiments, _ledger, _measures, _policy
from ._carddata import find_card_data, is_card_data, payment_data_error, refuse_card_data
from ._errors import BundleError, DeadlineExceededError, InputError
from ._records import check_id
from ._runtime import DecisionPlan, LoadedBundle
from ._store import StateStore, Tx
from ._types import BundleInfo, Decision, RankedOffer
from ._vocabulary import MAX_LIMIT

__all__ = ["Request", "decide", "decide_many", "new_decision_id", "validate_mapping"]

_PLAIN = frozenset({str, bool, int, type(None)})
MAX_LIST_ITEMS = 1000
"""Longest list a request's profile or context may carry: with rules nested at most two
comprehensions deep (the rule cost budget), this bounds what one request can make a rule do."""


def _check_value(value: Any, field: str) -> None:
    if type(value) is int and not -(2**63) <= value < 2**63:
        raise InputError(f"{field} is out of the 64-bit integer range", field=field)
    if type(value) in _PLAIN:  # the common case, checked first because it is cheap
        return
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{field} must be a finite number, not {value!r}", field=field)
        return
    if isinstance(value, list | tuple):
        if len(value) > MAX_LIST_ITEMS:
            raise InputError(f"{field} has {len(value)} items; at most {MAX_LIST_ITEMS} are allowed", field=field)
        if all(isinstance(v, str) for v in value):
            return
        raise InputError(f"{field} must be a list of strings", field=field)
    raise InputError(
        f"{field} has type {type(value).__name__}; expected str, int, float, bool, None or a list of str",
        field=field,
    )


def validate_mapping(value: Any, name: str) -> dict[str, Any]:
    """A caller's profile/context mapping, checked and copied; ``InputError`` names the field."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InputError(f"{name} must be a mapping, not {type(value).__name__}", field=name)
    # Card data first, so no message below can echo it.
    hit = find_card_data(value, name)
    if hit is not None:
        raise payment_data_error(hit)
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key:
            raise InputError(f"{name} keys must be non-empty strings, not {type(key).__name__}", field=name)
        _check_value(item, f"{name}.{key}")
        if name == "profile" and key in _MEASURE_CHECKS:
            _MEASURE_CHECKS[key](item, f"profile.{key}")
        out[key] = list(item) if isinstance(item, tuple) else item
    return out


def _model_values(plan: DecisionPlan, values: dict[str, Any], name: str) -> dict[str, Any]:
    """``values`` (a request's profile or context), refusing a non-number where a model reads a number.

    Otherwise the model would get a missing value (NaN) for ``"old"`` as an age and the
    answer would quietly change; ``null`` (unknown) and booleans (0/1) stay allowed.
    """
    inputs = plan.numeric_inputs.get("customer" if name == "profile" else "context")
    if inputs:
        for key, value in values.items():
            model_input = inputs.get(key)
            if model_input is not None and value is not None and not isinstance(value, int | float):  # bool: 0/1
                raise InputError(f"{name}.{key} must be a number (or null) for the model input {model_input}, "
                                 f"not {value!r}", field=f"{name}.{key}")
    return values


def _number(value: Any, field: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise InputError(f"{field} must be a number or null, not {value!r}", field=field)


def _count(value: Any, field: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise InputError(f"{field} must be an integer or null, not {value!r}", field=field)


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(value: Any, field: str) -> None:
        if value is not None and value not in choices:
            raise InputError(f"{field} must be one of {', '.join(choices)} (or null), not {value!r}", field=field)

    return check


# The customer measures have fixed types (sdk/_measures.py); a profile passed in a request
# that gets them wrong would silently reach the model as missing values. null = unknown.
_MEASURE_CHECKS: dict[str, Any] = {
    "recency_days": _number,
    "tenure_days": _number,
    "monetary": _number,
    "avg_purchase": _number,
    "purchases_per_year": _number,
    "clv": _number,
    "frequency": _count,
    "points_balance": _count,
    "lifecycle_stage": _one_of(_measures.LIFECYCLE_STAGES),
    "loyalty_stage": _one_of(_measures.LOYALTY_STAGES),
}


_RANDOM_BITS = (1 << 74) - 1


def new_decision_id() -> str:
    """A canonical UUID version 7 (RFC 9562): the millisecond clock, then 74 random bits.

    Time-ordered, so the ``decisions`` key index grows at its right edge instead of taking a
    random page per decision — fewer pages written per commit on every store. The random
    part seeds exploration (``_policy.rank``), as a version-4 id did.
    """
    rand = int.from_bytes(os.urandom(10)) & _RANDOM_BITS
    value = (
        (time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF) << 80  # unix_ts_ms
        | 7 << 76  # version
        | (rand >> 62) << 64  # rand_a, 12 bits
        | 0b10 << 62  # variant
        | rand & ((1 << 62) - 1)  # rand_b, 62 bits
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _validate(plan: DecisionPlan, customer_id: Any, channel: Any, limit: Any) -> None:
    check_id(customer_id, "customer_id")
    if isinstance(channel, str) and channel not in plan.channels and is_card_data(channel):
        raise payment_data_error("channel")  # the message below would echo it
    if not isinstance(channel, str) or channel not in plan.channels:
        raise InputError(
            f"unknown channel {channel!r}; this bundle knows {', '.join(sorted(plan.channels))}", field="channel"
        )
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise InputError(f"limit must be an integer from 1 to {MAX_LIMIT}, not {limit!r}", field="limit")


class Request(NamedTuple):
    """One decision request (the arguments of :func:`decide`)."""

    customer_id: str
    channel: str
    context: Mapping[str, Any] | None
    profile: Mapping[str, Any] | None
    limit: int
    explain: bool


def decide(
    bundle: LoadedBundle,
    store: StateStore,
    *,
    customer_id: str,
    channel: str,
    context: Mapping[str, Any] | None,
    profile: Mapping[str, Any] | None,
    limit: int,
    explain: bool,
    record: bool = True,
) -> Decision:
    """Rank ``bundle``'s offers for ``customer_id`` on ``channel`` and record the decision (unless not ``record``)."""
    (outcome,) = decide_many(bundle, store, [Request(customer_id, channel, context, profile, limit, explain)],
                             record=record)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


class _Item(NamedTuple):
    position: int
    request: Request
    context: dict[str, Any]
    overrides: dict[str, Any]
    decision_id: str


def decide_many(bundle: LoadedBundle, store: StateStore, requests: Sequence[Request], *,
                record: bool = True, keep: Callable[[int], bool] | None = None) -> list[Decision | Exception]:
    """Decide several requests in one transaction: the decision, or the error, of each, in order.

    Exactly what :func:`decide` does for each request, with the state read and written for
    all of them at once and one model run per model (:func:`._policy.propensities_many`).
    Requests for the same customer are decided one after the other (each sees the contacts of
    the one before), in arrival order. A request that fails (bad input, a model error) fails
    alone; an error of the store fails them all (nothing is written). ``record=False`` (a dry
    run) reads the state in a read view and writes nothing. ``keep(i)``, asked for each
    request right before its decision is recorded, may say its caller has gone (a gateway
    call whose deadline passed while it waited for the write lock): that request is then not
    recorded and its outcome is :class:`DeadlineExceededError`.
    """
    plan = bundle.plan
    if plan is None:
        raise BundleError(f"bundle {bundle.info.name} v{bundle.info.version} was loaded without a decision plan")
    results: list[Decision | Exception | None] = [None] * len(requests)
    rounds: list[list[_Item]] = []  # round k: the k-th request of each customer
    seen: dict[str, int] = {}
    for position, request in enumerate(requests):
        try:
            _validate(plan, request.customer_id, request.channel, request.limit)
            item = _Item(position, request, _model_values(plan, validate_mapping(request.context, "context"), "context"),
                         _model_values(plan, validate_mapping(request.profile, "profile"), "profile"),
                         new_decision_id())
        except Exception as exc:  # the caller's mistake: this request only
            results[position] = exc
            continue
        k = seen.get(request.customer_id, 0)
        seen[request.customer_id] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(item)
    if rounds:
        with store.transaction() if record else store.read() as tx:
            for items in rounds:
                _decide_round(bundle, plan, tx, items, results, record=record, keep=keep)
    return [r if r is not None else BundleError("no decision was made") for r in results]


def _decide_round(
    bundle: LoadedBundle, plan: DecisionPlan, tx: Tx, items: Sequence[_Item], results: list[Decision | Exception | None],
    *, record: bool = True, keep: Callable[[int], bool] | None = None,
) -> None:
    """Decide ``items`` (one per customer) in ``tx``; each result goes to its position."""
    now = tx.now
    ids = [item.request.customer_id for item in items]
    texts = _contacts.stored_profiles(tx, ids)
    # Only the policies that can apply to these requests' channels, and only the kinds of
    # event they count, are read (the others could not block anything here).
    channels = {item.request.channel for item in items}
    policies = [p for p in plan.policies if not p.channel or p.channel in channels]
    histories = (
        _contacts.contact_counts(tx, ids, now=now, windows=[p.window_seconds for p in policies],
                                 events=[p.event for p in policies])
        if policies else {}
    )
    when = datetime.fromtimestamp(now, tz=UTC)
    ready: list[tuple[_Item, dict[str, Any], dict[str, Any], _policy.Selection, _Arm | None]] = []
    for item in items:
        request = item.request
        try:
            customer = dict(plan.default_profile)
            text = texts.get(request.customer_id)
            stored = {} if text is None else _contacts.parse_profile(request.customer_id, text)
            if stored.get("last_purchase_at") is not None:
                # Stored measures are as of the last purchase; the model was trained on them as of
                # now (recency, tenure, stages, CLV), so bring them up to this decision's time.
                stored = _measures.refresh_measures(stored, as_of=now)
            customer.update(stored)
            if "points_balance" not in item.overrides and plan.reads_points_balance:
                # the loyalty ledger, not the profile, is the truth for the points balance
                customer["points_balance"] = _ledger.balance_in(tx, request.customer_id)
            customer.update(item.overrides)
            context = item.context
            context.update(channel=request.channel, hour=when.hour, weekday=when.weekday())
            arm = _arm_of(plan, request.customer_id) if plan.experiments else None
            selection = _policy.select(arm.plan if arm is not None else plan, customer=customer, context=context,
                                       channel=request.channel, history=histories.get(request.customer_id, ()),
                                       now=now, explain=request.explain,
                                       control_none=arm is not None and arm.kind == "control-none")
        except Exception as exc:
            results[item.position] = exc
            continue
        ready.append((item, customer, context, selection, arm))
    scored = _scores(plan, [(sel.pool, customer, context, arm) for _, customer, context, sel, arm in ready])
    records: list[_contacts.DecisionRecord] = []
    for (item, customer, context, selection, arm), prop in zip(ready, scored, strict=True):
        try:
            if isinstance(prop, Exception):
                raise prop
            deciding = plan if arm is None else arm.plan
            outcome = _policy.rank(deciding, selection, prop, limit=item.request.limit, seed=item.decision_id,
                                   uniform_first=arm is not None and arm.kind == "control-random")
            shadows = _shadows(plan, arm, selection, prop, customer, context, item) if arm is not None else None
            decision, row = _assemble(bundle.info, deciding, item, outcome, now, customer, context, arm, shadows)
        except Exception as exc:
            results[item.position] = exc
            continue
        if record and keep is not None and not keep(item.position):
            results[item.position] = DeadlineExceededError("the call's deadline passed before it was recorded")
            continue
        records.append(row)
        results[item.position] = decision
    if record:
        _contacts.record_decisions(tx, records)


class _Arm(NamedTuple):
    """A decision's experiment arm: who, and the plan it decides with."""

    experiment: int
    experiment_id: str
    arm_id: str
    kind: str
    plan: DecisionPlan


def _arm_of(plan: DecisionPlan, customer_id: str) -> _Arm | None:
    """The experiment arm of ``customer_id`` (one hash or two per decision), or None."""
    found = _experiments.assign(plan.experiments, customer_id)
    if found is None:
        return None
    arm = plan.experiments[found.experiment].arms[found.arm]
    return _Arm(found.experiment, found.experiment_id, found.arm_id, arm.kind,
                plan.arm_plans[found.experiment][found.arm])


def _scores(plan: DecisionPlan, items: Sequence[tuple[np.ndarray, dict[str, Any], dict[str, Any], _Arm | None]]
            ) -> Sequence[np.ndarray | Exception]:
    """:func:`._policy.propensities_many` of each item under its arm's plan (one run per plan)."""
    if all(arm is None or arm.plan is plan for *_, arm in items):
        return _policy.propensities_many(plan, [(pool, customer, context) for pool, customer, context, _ in items])
    out: list[np.ndarray | Exception | None] = [None] * len(items)
    groups: dict[int, tuple[DecisionPlan, list[int]]] = {}
    for n, (*_, arm) in enumerate(items):
        deciding = plan if arm is None else arm.plan
        groups.setdefault(id(deciding), (deciding, []))[1].append(n)
    for deciding, members in groups.values():
        part = _policy.propensities_many(deciding, [items[n][:3] for n in members])
        for n, scores in zip(members, part, strict=True):
            out[n] = scores
    return [scores if scores is not None else BundleError("no scores") for scores in out]


def _shadows(plan: DecisionPlan, arm: _Arm, selection: _policy.Selection, prop: np.ndarray,
             customer: Mapping[str, Any], context: Mapping[str, Any], item: _Item) -> list[dict[str, Any]] | None:
    """The rankings of the experiment's shadow arms on the same moment (same offers in play,
    same exploration draw), as the decision event's ``shadow`` entries; None when there are none.
    Control arms take none: their offers in play are not the others'."""
    experiment = plan.experiments[arm.experiment]
    if not experiment.shadows or arm.kind not in ("champion", "challenger"):
        return None
    out: list[dict[str, Any]] = []
    limit = item.request.limit
    for index in experiment.shadows:
        shadow = plan.arm_plans[arm.experiment][index]
        if shadow.model_index is arm.plan.model_index:
            shadow_prop = prop  # same models: the same propensities
        else:
            (scored,) = _policy.propensities_many(shadow, [(selection.pool, customer, context)])
            if isinstance(scored, Exception):
                raise scored
            shadow_prop = scored
        if shadow.strategy_weights is not arm.plan.strategy_weights:
            selection = _policy.reweighted(selection, shadow)
        outcome = _policy.rank(shadow, selection, shadow_prop, limit=limit, seed=item.decision_id)
        out.append({
            "arm": experiment.arms[index].arm_id,
            "offers": [shadow.offer_ids[s.offer] for s in outcome.shown],
            "scores": [s.score if isfinite(s.score) else None for s in outcome.shown],
            "eligible": _eligible(shadow, outcome, limit),
        })
    return out


def _logged_inputs(plan: DecisionPlan, customer: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
    """The raw ``customer__*``/``context__*`` values the bundle's models read, JSON-clean, by
    input name; ``PaymentDataError`` (naming ``customer.X``/``context.X``) when one looks like
    card data — it would be written to the event log."""
    inputs: dict[str, Any] = {}
    suspects: dict[str, Any] = {}
    for name, source, field in plan.logged_inputs:
        value = (customer if source == "customer" else context).get(field)
        if isinstance(value, float) and not isfinite(value):
            value = None
        elif isinstance(value, str | list | tuple):
            suspects[f"{source}.{field}"] = value
        elif type(value) is int and abs(value) >= 10**12:
            suspects[f"{source}.{field}"] = str(value)  # written as a number, still a PAN's digits
        inputs[name] = value
    if suspects:
        refuse_card_data(suspects)
    return inputs


def _eligible(plan: DecisionPlan, outcome: _policy.Outcome, limit: int) -> dict[str, Any]:
    """The decision event's ``eligible``: every offer in play in the policy's order, with the
    probability that the deciding policy shows it (run-length encoded, docs/learning.md)."""
    ids = plan.offer_ids
    eligible = outcome.eligible
    return {
        "offers": [ids[i] for i in eligible],
        "p": _policy.inclusion_runs(mandatory=outcome.mandatory, eligible=len(eligible),
                                    epsilon=plan.epsilon if outcome.epsilon is None else outcome.epsilon, limit=limit),
        "mandatory": outcome.mandatory,
        "epsilon": plan.epsilon if outcome.epsilon is None else outcome.epsilon,
    }


def _funnel(outcome: _policy.Outcome) -> dict[str, Any]:
    """The decision event's ``funnel``: the candidates and, per rule or contact policy id, the
    offers it took out of play first (so candidates − Σ removed = the eligible offers)."""
    return {"candidates": outcome.candidates, "removed": dict(outcome.removed)}


def _assemble(
    info: BundleInfo, plan: DecisionPlan, item: _Item, outcome: _policy.Outcome, now: float,
    customer: Mapping[str, Any], context: Mapping[str, Any], arm: _Arm | None = None,
    shadows: list[dict[str, Any]] | None = None,
) -> tuple[Decision, _contacts.DecisionRecord]:
    """The caller's :class:`Decision` and what is recorded of it (JSON-clean offers)."""
    request = item.request
    ranked: list[RankedOffer] = []
    recorded: list[dict[str, Any]] = []  # the decision event's offers, JSON-clean
    strategy = outcome.strategy
    terms = plan.offer_terms
    for rank, (i, propensity, weight, score, probability) in enumerate(outcome.shown, start=1):
        value, lever, mandatory, _, fallback = terms[i]
        offer_id, category = plan.offer_ids[i], plan.categories[i]
        ranked.append(RankedOffer(offer_id, plan.names[i], category, propensity, value, strategy, weight, lever,
                                  score, mandatory, fallback, probability))
        recorded.append({
            "offer_id": offer_id,
            "category": category,
            "rank": rank,
            # JSON has no NaN/Infinity: a score part that is not finite is recorded as null
            "propensity": propensity if isfinite(propensity) else None,
            "value": value if isfinite(value) else None,
            "weight": weight if isfinite(weight) else None,
            "lever": lever if isfinite(lever) else None,
            "score": score if isfinite(score) else None,
            "selection_probability": probability if isfinite(probability) else None,
        })
    decision = Decision(
        decision_id=item.decision_id,
        customer_id=request.customer_id,
        channel=request.channel,
        bundle_name=info.name,
        bundle_version=info.version,
        offers=ranked,
        excluded=list(outcome.excluded) if request.explain else [],
        strategy=strategy,
        created_at=now,
        experiment_id="" if arm is None else arm.experiment_id,
        arm="" if arm is None else arm.arm_id,
        hash_version=0 if arm is None else _experiments.HASH_VERSION,
    )
    record = _contacts.DecisionRecord(item.decision_id, request.customer_id, request.channel, info.name,
                                      info.version, strategy, recorded, _logged_inputs(plan, customer, context),
                                      _eligible(plan, outcome, request.limit), _funnel(outcome),
                                      None if arm is None else {"id": arm.experiment_id, "arm": arm.arm_id,
                                                                "kind": arm.kind, "hash": _experiments.HASH_VERSION},
                                      shadows)
    return decision, record
