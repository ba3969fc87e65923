"""``decide`` / ``decide_many``: validate the requests, read state, run the pure core, record.

The edges live here; the pure core is :mod:`._policy`. A call of :func:`decide_many` (what
:func:`decide` runs with one request, and the gateway with a batch) has two halves, so that
the expensive work never holds the state's write lock:

1. :func:`prepare_many`, with **no write transaction open**: validates the requests, reads
   the customers' stored profiles (:func:`._contacts.stored_profiles`) and points balances
   (:func:`._ledger.balance_in`) in one short read view, brings stored measures up to that
   time (:func:`._measures.refresh_measures`), then, the read view closed, runs
   :func:`._policy.screen` (channel, validity, rules, strategy) and
   :func:`._policy.propensities_many` — one batched ONNX run per model for every request,
   over every offer a contact policy could leave in play;
2. :func:`finish_many`, in **one transaction** of the state store (non-durable; its clock
   reading is the decisions' time), per round of requests (one per customer, so a
   customer's second request sees the first one's contacts): reads the contact counts the
   bundle's policies need (:func:`._contacts.contact_counts`), :func:`._policy.settle` (the
   contact policies, the pool), :func:`._policy.rank` (score, mandatory/fallback,
   exploration seeded by the decision id, explanation) and
   :func:`._contacts.record_decisions` (the decisions, their ``shown`` contacts and their
   ``decision`` events; skipped for a dry run, which reads only).

The gateway runs the two halves itself: the second inside the hub's per-customer locked
transaction (``HubStateStore.decision_batch``), so contact policies stay exact across threads,
processes and replicas while rules and models run outside it.
(:func:`._policy.run_pipeline` is the whole pipeline for one customer, without I/O: what the
golden cases run.) A decision receives exactly one :class:`~._runtime.LoadedBundle` reference
and uses nothing else, so a concurrent bundle switch can never mix two bundles in one answer.
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

__all__ = ["Prepared", "Request", "decide", "decide_many", "finish_many", "new_decision_id", "prepare_many",
           "validate_mapping"]

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


class _Ready(NamedTuple):
    """One request after :func:`prepare_many`: its inputs, its screening and its propensities."""

    item: _Item
    customer: dict[str, Any]
    context: dict[str, Any]
    arm: _Arm | None
    screened: _policy.Screened
    scores: np.ndarray | Exception
    """The propensities of ``screened.scored`` under the deciding plan (or the model's error)."""
    shadow_scores: dict[int, np.ndarray | Exception]
    """Per shadow arm with other models than the deciding arm: its propensities of ``screened.scored``."""


class Prepared(NamedTuple):
    """Requests made ready by :func:`prepare_many`, for :func:`finish_many` to decide and record."""

    bundle: LoadedBundle
    results: list[Decision | Exception | None]
    """By request position: the error of a request already failed (its input, its model), else None."""
    rounds: list[list[_Ready]]
    """Round k: the k-th request of each customer (so a customer's second request sees the first's contacts)."""


def decide_many(bundle: LoadedBundle, store: StateStore, requests: Sequence[Request], *,
                record: bool = True, keep: Callable[[int], bool] | None = None) -> list[Decision | Exception]:
    """Decide several requests: the decision, or the error, of each, in order.

    :func:`prepare_many` (read the profiles, run the rules and the models, outside any write
    transaction), then :func:`finish_many` in one transaction of ``store`` (contact history,
    contact policies, ranking, record). The state is read and written for all of the requests
    at once, with one model run per model (:func:`._policy.propensities_many`). Requests for
    the same customer are decided one after the other (each sees the contacts of the one
    before), in arrival order. A request that fails (bad input, a model error) fails alone; an
    error of the store fails them all (nothing is written). ``record=False`` (a dry run) reads
    the state in a read view and writes nothing. ``keep(i)``, asked for each request right
    before its decision is recorded, may say its caller has gone (a gateway call whose
    deadline passed while it waited for the write lock): that request is then not recorded
    and its outcome is :class:`DeadlineExceededError`.
    """
    prepared = prepare_many(bundle, store, requests)
    if not prepared.rounds:
        return finish_many(prepared, None, record=record, keep=keep)
    with store.transaction() if record else store.read() as tx:
        return finish_many(prepared, tx, record=record, keep=keep)


def prepare_many(bundle: LoadedBundle, store: StateStore, requests: Sequence[Request]) -> Prepared:
    """Everything of a decision that does not depend on the contact history, outside any write lock.

    Validates each request, reads the customers' stored profiles and points balances in one
    short read view of ``store`` (closed before any rule runs), then — with no transaction
    open — runs the rules, the strategy conditions and one model run per model over every
    offer a contact policy could leave in play. The rules and the offers' validity see the
    time of that read; the profile is the one stored then (a purchase committed while the
    models run is seen by the next decision, as if this one had arrived a moment earlier).
    """
    plan = bundle.plan
    if plan is None:
        raise BundleError(f"bundle {bundle.info.name} v{bundle.info.version} was loaded without a decision plan")
    results: list[Decision | Exception | None] = [None] * len(requests)
    items: list[_Item] = []
    for position, request in enumerate(requests):
        try:
            _validate(plan, request.customer_id, request.channel, request.limit)
            items.append(_Item(position, request,
                               _model_values(plan, validate_mapping(request.context, "context"), "context"),
                               _model_values(plan, validate_mapping(request.profile, "profile"), "profile"),
                               new_decision_id()))
        except Exception as exc:  # the caller's mistake: this request only
            results[position] = exc
    if not items:
        return Prepared(bundle, results, [])
    ids = list(dict.fromkeys(item.request.customer_id for item in items))
    with store.read() as tx:
        now = tx.now
        texts = _contacts.stored_profiles(tx, ids)
        balances = {customer_id: _ledger.balance_in(tx, customer_id) for customer_id in ids
                    if plan.reads_points_balance} if plan.reads_points_balance else {}
    when = datetime.fromtimestamp(now, tz=UTC)
    screened: list[tuple[_Item, dict[str, Any], dict[str, Any], _policy.Screened, _Arm | None]] = []
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
                customer["points_balance"] = balances[request.customer_id]
            customer.update(item.overrides)
            context = item.context
            context.update(channel=request.channel, hour=when.hour, weekday=when.weekday())
            arm = _arm_of(plan, request.customer_id) if plan.experiments else None
            screen = _policy.screen(arm.plan if arm is not None else plan, customer=customer, context=context,
                                    channel=request.channel, now=now, explain=request.explain,
                                    control_none=arm is not None and arm.kind == "control-none")
        except Exception as exc:
            results[item.position] = exc
            continue
        screened.append((item, customer, context, screen, arm))
    scored = _scores(plan, [(sc.scored, customer, context, arm) for _, customer, context, sc, arm in screened])
    rounds: list[list[_Ready]] = []
    seen: dict[str, int] = {}
    for (item, customer, context, screen, arm), scores in zip(screened, scored, strict=True):
        shadows = _shadow_scores(plan, arm, screen, customer, context) if arm is not None else {}
        k = seen.get(item.request.customer_id, 0)
        seen[item.request.customer_id] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(_Ready(item, customer, context, arm, screen, scores, shadows))
    return Prepared(bundle, results, rounds)


def finish_many(prepared: Prepared, tx: Tx | None, *, record: bool = True,
                keep: Callable[[int], bool] | None = None) -> list[Decision | Exception]:
    """Decide and record what :func:`prepare_many` made ready, in ``tx`` (the write transaction).

    Only the cheap parts, while ``tx`` holds the write lock: per round, the contact history
    the bundle's policies count (read in ``tx``, as of its time), the contact policies, the
    ranking on the prepared propensities, and the record (unless not ``record``). The
    decisions are made and recorded at ``tx``'s time. ``tx`` may be None only when nothing
    was left to decide.
    """
    results = prepared.results
    if prepared.rounds:
        if tx is None:
            raise BundleError("finish_many needs a transaction for the requests it decides")
        for ready in prepared.rounds:
            _finish_round(prepared.bundle, tx, ready, results, record=record, keep=keep)
    return [r if r is not None else BundleError("no decision was made") for r in results]


def _finish_round(
    bundle: LoadedBundle, tx: Tx, round_: Sequence[_Ready], results: list[Decision | Exception | None],
    *, record: bool = True, keep: Callable[[int], bool] | None = None,
) -> None:
    """Decide ``round_`` (one request per customer) in ``tx``; each result goes to its position."""
    plan = bundle.plan
    assert plan is not None  # prepare_many refused a bundle without one
    now = tx.now
    ids = [ready.item.request.customer_id for ready in round_]
    # Only the policies that can apply to these requests' channels, and only the kinds of
    # event they count, are read (the others could not block anything here).
    channels = {ready.item.request.channel for ready in round_}
    policies = [p for p in plan.policies if not p.channel or p.channel in channels]
    histories = (
        _contacts.contact_counts(tx, ids, now=now, windows=[p.window_seconds for p in policies],
                                 events=[p.event for p in policies])
        if policies else {}
    )
    records: list[_contacts.DecisionRecord] = []
    for item, customer, context, arm, screened, scores, shadow_scores in round_:
        request = item.request
        try:
            if isinstance(scores, Exception):
                raise scores
            deciding = plan if arm is None else arm.plan
            selection = _policy.settle(deciding, screened, history=histories.get(request.customer_id, ()), now=now,
                                       channel=request.channel, explain=request.explain)
            prop = _policy.pool_scores(screened, selection.pool, scores)
            outcome = _policy.rank(deciding, selection, prop, limit=request.limit, seed=item.decision_id,
                                   uniform_first=arm is not None and arm.kind == "control-random")
            shadows = (_shadows(plan, arm, selection, prop, screened, shadow_scores, item)
                       if arm is not None else None)
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


def _shadow_scores(plan: DecisionPlan, arm: _Arm, screened: _policy.Screened, customer: Mapping[str, Any],
                   context: Mapping[str, Any]) -> dict[int, np.ndarray | Exception]:
    """The propensities of ``screened.scored`` under each shadow arm of ``arm``'s experiment that
    has other models than ``arm`` (run by :func:`prepare_many`, outside the write lock)."""
    experiment = plan.experiments[arm.experiment]
    if not experiment.shadows or arm.kind not in ("champion", "challenger"):
        return {}
    out: dict[int, np.ndarray | Exception] = {}
    for index in experiment.shadows:
        shadow = plan.arm_plans[arm.experiment][index]
        if shadow.model_index is not arm.plan.model_index:
            (out[index],) = _policy.propensities_many(shadow, [(screened.scored, customer, context)])
    return out


def _shadows(plan: DecisionPlan, arm: _Arm, selection: _policy.Selection, prop: np.ndarray,
             screened: _policy.Screened, shadow_scores: Mapping[int, np.ndarray | Exception],
             item: _Item) -> list[dict[str, Any]] | None:
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
        scored = shadow_scores.get(index)
        if scored is None:
            shadow_prop = prop  # same models: the same propensities
        elif isinstance(scored, Exception):
            raise scored
        else:
            shadow_prop = _policy.pool_scores(screened, selection.pool, scored)
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
