"""The pure decision core: candidates → rules → contact policies → propensity → score → rank.

Plain functions over a :class:`~._runtime.DecisionPlan` and plain data: no SQLite, no clock,
no randomness of its own (time and the exploration seed are passed in). The ONNX sessions
inside the plan are in-memory compute, called once per model per decision with every
remaining candidate of that model.

Hot-path notes: candidates travel as numpy boolean masks / index arrays over the bundle's
offers, not as per-offer dicts; customer and context values are converted for CEL once per
decision (only the fields expressions read), and model inputs are the bundle's precomputed
offer columns row-selected by index plus broadcast customer/context columns.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from . import _rules
from ._errors import ModelError
from ._runtime import CandidateSet, DecisionPlan, ModelPlan, PolicyPlan, RulePlan, to_float, to_int, to_string
from ._types import Exclusion

__all__ = [
    "HistoryRow",
    "Outcome",
    "Shown",
    "candidate_mask",
    "candidate_set",
    "clamp_probabilities",
    "explore",
    "inclusion_runs",
    "model_feeds",
    "policy_blocked",
    "rank_probability",
    "slot_probability",
    "propensities_many",
    "rank",
    "reweighted",
    "run_pipeline",
    "select",
]

HistoryRow = tuple[str, str, str, str, float] | tuple[str, str, str, str, float, int]
"""(offer_id, category, channel, event, ts) from the customer's contact history, optionally with
a sixth element: the number of such events the row stands for (``_contacts.contact_counts``)."""


class Shown(NamedTuple):
    """One offer of the answer, by its index in the plan, with every part of its score."""

    offer: int
    """The offer's index in the plan."""
    propensity: float
    weight: float
    score: float
    selection_probability: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the pipeline decided: the shown offers in rank order, the strategy, the exclusions."""

    shown: tuple[Shown, ...]
    strategy: str
    excluded: tuple[Exclusion, ...]
    explored: bool
    eligible: tuple[int, ...] = ()
    """Every offer that was in play (after rules and contact policies), by index, in the
    policy's order before exploration: mandatory first, then by score."""
    mandatory: int = 0
    """How many of ``eligible`` (its head) are mandatory."""
    candidates: int = 0
    """Offers valid and offered on the channel (before any rule)."""
    removed: Mapping[str, int] = field(default_factory=dict)
    """Per rule or contact policy id: the offers it took out of play first."""
    epsilon: float | None = None
    """The exploration rate this ranking used, when not the plan's (a control-random arm)."""


# -- stage 1: candidates -----------------------------------------------------------------


def candidate_mask(plan: DecisionPlan, channel: str, now: float) -> np.ndarray:
    """Offers valid at ``now`` (valid_from ≤ now < valid_to) and offered on ``channel``."""
    return plan.channel_masks[channel] & (plan.valid_from <= now) & (now < plan.valid_to)


def candidate_set(plan: DecisionPlan, channel: str, now: float) -> CandidateSet:
    """The :class:`CandidateSet` of ``channel`` at ``now``: cached in the plan until a validity edge."""
    cached = plan.candidate_cache.get(channel)
    if cached is not None and cached.start <= now < cached.end:
        return cached
    mask = candidate_mask(plan, channel, now)
    mask.flags.writeable = False
    static_alive = mask & plan.static_ok
    static_alive.flags.writeable = False
    # the mask is constant between two consecutive edges: [edges[pos - 1], edges[pos])
    edges = plan.validity_edges
    pos = bisect.bisect_right(edges, now)
    static_removed: dict[str, int] = {}
    for i in np.flatnonzero(mask & ~plan.static_ok).tolist():  # each removed offer counts for its first rule
        rule_id = plan.rules[plan.static_exclusions[i][0][0]].rule_id
        static_removed[rule_id] = static_removed.get(rule_id, 0) + 1
    entry = CandidateSet(
        start=edges[pos - 1] if pos > 0 else -math.inf,
        end=edges[pos] if pos < len(edges) else math.inf,
        mask=mask,
        any=bool(mask.any()),
        static_alive=static_alive,
        decision_rules=tuple(r for r in plan.decision_rules if (mask & r.applies).any()),
        candidate_rules=tuple(r for r in plan.candidate_rules if (mask & r.applies).any()),
        count=int(np.count_nonzero(mask)),
        static_removed=tuple(static_removed.items()),
    )
    plan.candidate_cache[channel] = entry
    return entry


# -- stage 2: rules ----------------------------------------------------------------------


def _exclusion(plan: DecisionPlan, i: int, rule: RulePlan, failure: str | None) -> Exclusion:
    return Exclusion(
        offer_id=plan.offer_ids[i],
        rule_id=rule.rule_id,
        kind=rule.kind,
        description=rule.description if failure is None else f"rule failed: {failure}",
    )


def _eval_candidate(
    plan: DecisionPlan,
    rule: RulePlan,
    i: int,
    program: Any,
    cel_ctx: Any,
    cel_ctx_error: str | None,
    customer_proj: Mapping[str, Any],
    context_proj: Mapping[str, Any],
) -> tuple[bool, str | None]:
    """(passed, failure message) of a mixed rule on offer ``i``."""
    try:
        if cel_ctx is None:
            raise _rules.RuleFailure(cel_ctx_error or "no data")
        if program is not None:
            return _rules.evaluate(program, cel_ctx), None
        # an offer whose data could not be baked into a program: the slow, dict path
        return _rules.evaluate(rule.program, {
            "customer": customer_proj,
            "context": context_proj,
            "offer": _rules.project(plan.offer_maps[i], rule.offer_fields),
        }), None
    except _rules.RuleFailure as exc:
        return False, str(exc)


def _apply_rules(
    plan: DecisionPlan,
    start: CandidateSet,
    cel_ctx: Any,
    cel_ctx_error: str | None,
    customer_proj: Mapping[str, Any],
    context_proj: Mapping[str, Any],
    explain: bool,
    excluded: list[tuple[int, int, int, Exclusion]],
    removed: dict[str, int],
) -> np.ndarray:
    """Apply every rule kind; return the surviving mask. ``excluded`` gets (offer, stage, order, why);
    ``removed`` counts, per rule, the offers it took out of play first (the decision funnel)."""
    candidates = start.mask
    if explain and plan.static_exclusions:
        for i in np.flatnonzero(candidates & ~plan.static_ok).tolist():
            for rule_index, message in plan.static_exclusions[i]:
                excluded.append((i, 0, rule_index, _exclusion(plan, i, plan.rules[rule_index], message)))
    alive = start.static_alive  # read-only: every step below makes a new mask

    for rule in start.decision_rules:  # only those that apply to some candidate
        if cel_ctx is not None:  # the common case, a "yes", without the wrapper
            try:
                passed = rule.program.execute(cel_ctx) is True
            except Exception:  # evaluate() below words the failure
                passed = False
            if passed:
                continue
        failure: str | None = None
        ok: bool
        try:
            if cel_ctx is None:
                raise _rules.RuleFailure(cel_ctx_error or "no data")
            ok = _rules.evaluate(rule.program, cel_ctx)
        except _rules.RuleFailure as exc:
            ok, failure = False, str(exc)
        if not ok:
            if explain:
                for i in np.flatnonzero(candidates & rule.applies).tolist():
                    excluded.append((i, 0, rule.index, _exclusion(plan, i, rule, failure)))
            taken = int(np.count_nonzero(alive & rule.applies))
            if taken:
                removed[rule.rule_id] = removed.get(rule.rule_id, 0) + taken
            alive = alive & ~rule.applies

    # Offers with the same projection share one specialised program: evaluate it once.
    memo: dict[int, tuple[bool, str | None]] = {}
    for rule in start.candidate_rules:
        targets = np.flatnonzero(alive & rule.applies)
        if len(targets) == 0:
            continue
        alive = alive.copy()
        member = rule.membership
        if member is not None and cel_ctx is not None:
            listed = customer_proj.get(member.customer_field)
            if type(listed) is list and all(type(v) is str for v in listed):
                # CEL's `in` on a list of strings is string equality: a set lookup, same verdicts
                listed_set, constants, negated = set(listed), member.constants, member.negated
                for i in targets.tolist():
                    if (constants[i] in listed_set) == negated:
                        alive[i] = False
                        if explain:
                            excluded.append((i, 0, rule.index, _exclusion(plan, i, rule, None)))
                continue
        specialized = rule.specialized
        for i in targets.tolist():
            program = specialized[i]
            if program is not None and cel_ctx is not None:
                # the hot path: one prepared-context execution, no wrapper calls
                key = id(program)
                verdict = memo.get(key)
                if verdict is None:
                    try:
                        result = program.execute(cel_ctx)
                    except Exception:  # let evaluate() word the failure
                        result = None
                    verdict = (True, None) if result is True else (
                        (False, None) if result is False else
                        _eval_candidate(plan, rule, i, program, cel_ctx, cel_ctx_error, customer_proj, context_proj))
                    memo[key] = verdict
            else:
                verdict = _eval_candidate(plan, rule, i, program, cel_ctx, cel_ctx_error, customer_proj, context_proj)
            if not verdict[0]:
                alive[i] = False
                removed[rule.rule_id] = removed.get(rule.rule_id, 0) + 1
                if explain:
                    excluded.append((i, 0, rule.index, _exclusion(plan, i, rule, verdict[1])))
    return alive


# -- stage 3: contact policies -------------------------------------------------------------


def policy_blocked(policy: PolicyPlan, history: Sequence[HistoryRow], now: float) -> tuple[set[str], bool]:
    """Scope keys (offer ids or categories) whose count reached ``max_count``; and "all blocked".

    Counts the customer's ``policy.event`` rows in the last ``window_seconds`` on
    ``policy.channel`` (any channel when empty).
    """
    if policy.max_count <= 0:
        return set(), True
    since = now - policy.window_seconds
    counts: dict[str, int] = {}
    total = 0
    for row in history:
        offer_id, category, channel, event, ts = row[:5]
        if event != policy.event or ts < since or ts > now:
            continue
        if policy.channel and channel != policy.channel:
            continue
        n = row[5] if len(row) > 5 else 1  # type: ignore[misc]  # the counted form
        total += n
        if policy.scope == "offer":
            counts[offer_id] = counts.get(offer_id, 0) + n
        elif policy.scope == "category":
            counts[category] = counts.get(category, 0) + n
    if policy.scope == "all":
        return set(), total >= policy.max_count
    return {k for k, c in counts.items() if c >= policy.max_count}, False


def _apply_policies(
    plan: DecisionPlan,
    alive: np.ndarray,
    history: Sequence[HistoryRow],
    now: float,
    channel: str,
    explain: bool,
    excluded: list[tuple[int, int, int, Exclusion]],
    removed: dict[str, int],
) -> np.ndarray:
    out = alive
    for order, policy in enumerate(plan.policies):
        if policy.channel and policy.channel != channel:
            continue  # "at most 3 a day on the app" constrains app decisions only
        keys, everything = policy_blocked(policy, history, now)
        if not keys and not everything:
            continue
        # Fallback offers are exempt: they exist so that a channel never shows an empty slot,
        # which a cap like "at most 3 offers a day" would otherwise produce.
        hit = alive & policy.applies & ~plan.fallback
        if not everything:
            by_key = np.zeros(len(plan.offer_ids), dtype=bool)
            if policy.scope == "offer":
                for key in keys:
                    pos = plan.offer_position.get(key)
                    if pos is not None:
                        by_key[pos] = True
            else:
                for pos, cat in enumerate(plan.category_names):
                    if cat in keys:
                        by_key |= plan.category_index == pos
            hit = hit & by_key
        if not hit.any():
            continue
        taken = int(np.count_nonzero(hit & out))  # offers an earlier policy already took count there
        if taken:
            removed[policy.policy_id] = removed.get(policy.policy_id, 0) + taken
        out = out & ~hit
        if explain:
            for i in np.flatnonzero(hit).tolist():
                excluded.append((i, 1, order, Exclusion(
                    offer_id=plan.offer_ids[i], rule_id=policy.policy_id, kind="communication",
                    description=policy.description,
                )))
    return out


# -- stage 4: propensity ----------------------------------------------------------------


def model_feeds(
    model: ModelPlan, rows: np.ndarray, customer: Mapping[str, Any], context: Mapping[str, Any]
) -> dict[str, np.ndarray]:
    """ONNX feeds for ``rows`` (offer indices): precomputed offer columns + broadcast values."""
    return _stacked_feeds(model, [(rows, customer, context)])


def _stacked_feeds(
    model: ModelPlan, parts: Sequence[tuple[np.ndarray, Mapping[str, Any], Mapping[str, Any]]]
) -> dict[str, np.ndarray]:
    """:func:`model_feeds` of several (rows, customer, context) stacked, built with a few numpy
    calls for all of them: each customer/context value repeated over its own rows."""
    rows = parts[0][0] if len(parts) == 1 else np.concatenate([picked for picked, _, _ in parts])
    counts = [len(picked) for picked, _, _ in parts]
    feeds: dict[str, np.ndarray] = {}
    for inp in model.inputs:
        if inp.source == "offer":
            feeds[inp.name] = model.offer_columns[inp.name][rows]
            continue
        values = [(customer if inp.source == "customer" else context).get(inp.field) for _, customer, context in parts]
        if inp.dtype == "string":
            column = np.array([to_string(v) for v in values], dtype=object)
        elif inp.dtype == "int64":
            column = np.array([to_int(v) for v in values], dtype=np.int64)
        else:
            column = np.array([to_float(v) for v in values], dtype=np.float32 if inp.dtype == "float" else np.float64)
        feeds[inp.name] = np.repeat(column, counts).reshape(-1, 1)
    return feeds


def propensities(
    plan: DecisionPlan, rows: np.ndarray, customer: Mapping[str, Any], context: Mapping[str, Any]
) -> np.ndarray:
    """P(accept) for each offer index in ``rows``: one batched call per model; no model → 1.0."""
    (out,) = propensities_many(plan, [(rows, customer, context)])
    if isinstance(out, ModelError):
        raise out
    return out


def propensities_many(
    plan: DecisionPlan, items: Sequence[tuple[np.ndarray, Mapping[str, Any], Mapping[str, Any]]]
) -> list[np.ndarray | ModelError]:
    """:func:`propensities` of several decisions, ``(rows, customer, context)`` each, with one
    model run per model for all of them (the fixed cost of a run is most of a small one).

    Each row is scored from its own inputs exactly as alone. If a shared run fails, every
    decision is scored on its own, so a failure is reported only for the decision it belongs to.
    """
    try:
        return list(_score_stacked(plan, items))
    except ModelError as exc:
        if len(items) == 1:
            return [exc]
        return [propensities_many(plan, [item])[0] for item in items]


def _score_stacked(
    plan: DecisionPlan, items: Sequence[tuple[np.ndarray, Mapping[str, Any], Mapping[str, Any]]]
) -> list[np.ndarray]:
    if not plan.models:
        return [np.ones(len(rows), dtype=np.float64) for rows, _, _ in items]
    model_of = plan.offer_models
    # Per item, its scores so far: a list of floats for a few rows (plain Python beats numpy's
    # per-call cost there), an array for many. Offers without a model keep 1.0.
    out: list[list[float] | np.ndarray] = []
    # model → (item, positions of its rows in the item, the rows) in item order
    groups: dict[int, list[tuple[int, Any, np.ndarray]]] = {}
    if len(items) == 1 and plan.all_offers_model >= 0 and len(items[0][0]) > _FEW_ROWS:
        # the common case: one decision, every offer scored by the same model
        rows, customer, context = items[0]
        model = plan.models[plan.all_offers_model]
        try:
            probs = model.session.run([model.output_name], _stacked_feeds(model, [(rows, customer, context)]))[0]
        except Exception as exc:  # onnxruntime's exception types must not reach callers
            raise ModelError(f"model {model.model_id!r} failed: {exc}") from exc
        return [clamp_probabilities(np.asarray(probs)[:, -1])]
    for n, (rows, _, _) in enumerate(items):
        if len(rows) <= _FEW_ROWS:
            row_list = rows.tolist()
            out.append([1.0] * len(row_list))
            by_model: dict[int, tuple[list[int], list[int]]] = {}
            for pos, row in enumerate(row_list):
                k = model_of[row]
                if k >= 0:
                    at_positions, of_rows = by_model.setdefault(k, ([], []))
                    at_positions.append(pos)
                    of_rows.append(row)
            for k, (at_positions, of_rows) in by_model.items():
                groups.setdefault(k, []).append((n, at_positions, np.array(of_rows, dtype=np.intp)))
            continue
        out.append(np.ones(len(rows), dtype=np.float64))
        which = plan.model_index[rows]
        for k in (plan.sole_model,) if plan.sole_model >= 0 else np.unique(which).tolist():
            if k < 0:
                continue
            where = np.flatnonzero(which == k)
            if len(where):
                groups.setdefault(int(k), []).append((n, where, rows[where]))
    for k, members in groups.items():
        model = plan.models[k]
        feeds = _stacked_feeds(model, [(picked, items[n][1], items[n][2]) for n, _, picked in members])
        try:
            probs = model.session.run([model.output_name], feeds)[0]
        except Exception as exc:  # onnxruntime's exception types must not reach callers
            raise ModelError(f"model {model.model_id!r} failed: {exc}") from exc
        col = np.asarray(probs)[:, -1]
        at = 0
        for n, slots, picked in members:
            part = clamp_probabilities(col[at:at + len(picked)])
            at += len(picked)
            scores = out[n]
            if isinstance(scores, np.ndarray):
                scores[slots] = part
            else:
                for pos, p in zip(slots, part.tolist(), strict=True):
                    scores[pos] = p
    return [scores if isinstance(scores, np.ndarray) else np.array(scores, dtype=np.float64) for scores in out]


_FEW_ROWS = 32


def clamp_probabilities(col: np.ndarray) -> np.ndarray:
    """A model's P(accept) column as float64 in [0, 1]; NaN → 0.0 (no chance, not NaN scores)."""
    if len(col) <= _FEW_ROWS:
        # plain Python beats numpy's per-call cost on a few rows (right after a model run
        # especially); the same values bit for bit, -0.0 included
        return np.array([v if 0.0 <= v <= 1.0 else 1.0 if v > 1.0 else 0.0 for v in col.tolist()],
                        dtype=np.float64)
    out = col.astype(np.float64).clip(0.0, 1.0)
    if not out.sum() >= 0.0:  # clip keeps NaN; values in [0, 1] sum to ≥ 0 unless one is NaN
        out[np.isnan(out)] = 0.0
    return out


# -- stage 5: strategy, score and rank ---------------------------------------------------------


def choose_strategy(plan: DecisionPlan, cel_ctx: Any) -> str:
    """The first strategy whose condition holds for this customer; "" when none does."""
    if cel_ctx is None:
        return ""
    for program, strategy in plan.strategy_conditions:
        try:
            if _rules.evaluate(program, cel_ctx):
                return strategy
        except _rules.RuleFailure:
            continue  # a condition that cannot be evaluated on this customer does not match
    return ""


def rank_probability(i: int, r: int, k: int, epsilon: float) -> float:
    """P(the offer ranked ``i``-th by score is shown at rank ``r``), both 1-based, among ``k``.

    The policy: with probability 1-ε the score order; with probability ε one of the other
    k-1 offers, chosen uniformly, is promoted to rank 1 and the rest keep their order.
    """
    if k <= 1 or epsilon <= 0.0:
        return 1.0 if i == r else 0.0
    m = k - 1
    if r == 1:
        return 1.0 - epsilon if i == 1 else epsilon / m
    p = 0.0
    if i == r:  # not promoted: exploit, or an offer j with 2 ≤ j < r was promoted
        p += (1.0 - epsilon) + epsilon * (r - 2) / m
    if i == r - 1:  # pushed down one place by a promoted offer j ≥ r
        p += epsilon * (k - r + 1) / m
    return p


def slot_probability(index: int, position: int, *, mandatory: int, eligible: int, epsilon: float) -> float:
    """P(the ``index``-th offer of a decision's eligible list is shown at ``position``), 1-based.

    The eligible list is in the policy's order (``mandatory`` mandatory offers first, which
    always hold their places, then the others by score); among the others the exploration of
    :func:`rank_probability` applies.
    """
    if index <= mandatory or position <= mandatory:
        return 1.0 if index == position else 0.0
    return rank_probability(index - mandatory, position - mandatory, eligible - mandatory, epsilon)


def inclusion_runs(*, mandatory: int, eligible: int, epsilon: float, limit: int) -> list[list[float]]:
    """P(shown at all, in any of the ``limit`` places) of each offer of the eligible list, in
    its order, run-length encoded as ``[probability, count]`` pairs (counts add up to
    ``eligible``): a decision over 200 offers has at most four distinct values, so the event
    stays small. Equal to the sum of :func:`slot_probability` over the shown places (tested)."""
    runs: list[list[float]] = []

    def add(p: float, n: int) -> None:
        if n <= 0:
            return
        if runs and runs[-1][0] == p:
            runs[-1][1] += n
        else:
            runs.append([p, n])

    shown_mandatory = min(mandatory, limit)
    add(1.0, shown_mandatory)
    add(0.0, mandatory - shown_mandatory)
    k = eligible - mandatory
    slots = limit - shown_mandatory
    if k <= 0:
        return runs
    if slots <= 0:
        add(0.0, k)
    elif k <= 1 or epsilon <= 0.0 or slots >= k:
        add(1.0, min(slots, k))
        add(0.0, k - min(slots, k))
    else:
        m = k - 1
        add(1.0, slots - 1)
        add(1.0 - epsilon * (k - slots) / m, 1)
        add(epsilon / m, k - slots)
    return [[p, int(n)] for p, n in runs]


def explore(k: int, epsilon: float, rng: random.Random) -> int | None:
    """The 0-based position of the offer to promote to the top, or None (no exploration)."""
    if k <= 1 or epsilon <= 0.0:
        return None
    if rng.random() >= epsilon:
        return None
    return 1 + rng.randrange(k - 1)


def _ordered(plan: DecisionPlan, rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Positions into ``rows``: mandatory first, then score descending, ties by offer_id."""
    # offers are stored sorted by offer_id, so the offer index is the tie-break key
    return np.lexsort((rows, -scores, ~plan.mandatory[rows]))


# -- the whole pipeline -------------------------------------------------------------------------


@dataclass(slots=True)
class Selection:
    """What stages 1–4 leave for scoring: the offers still in play and the strategy."""

    pool: np.ndarray
    """Offer indices to score: the surviving non-fallback offers, or the fallback ones when none is left."""
    strategy: str
    weights_by_category: np.ndarray | None
    excluded: list[tuple[int, int, int, Exclusion]]
    candidates: int = 0
    """Offers valid and offered on the channel: the top of the decision funnel."""
    removed: dict[str, int] = field(default_factory=dict)
    """Offers each rule or contact policy (by id) took out of play first; the decision event
    records it (its ``funnel``)."""


def select(
    plan: DecisionPlan,
    *,
    customer: Mapping[str, Any],
    context: Mapping[str, Any],
    channel: str,
    history: Sequence[HistoryRow],
    now: float,
    explain: bool,
    control_none: bool = False,
) -> Selection:
    """Stages 1–4 of docs/decisions.md: candidates, rules, contact policies, strategy.

    ``control_none`` (an experiment's control-none arm): only the mandatory and fallback
    offers that are in play are left to score."""
    excluded: list[tuple[int, int, int, Exclusion]] = []
    start = candidate_set(plan, channel, now)
    alive = start.mask
    removed = dict(start.static_removed)

    customer_proj: dict[str, Any] = {}
    context_proj: dict[str, Any] = {}
    cel_ctx: Any = None
    cel_error: str | None = None
    if plan.needs_cel:
        customer_proj = _rules.project(customer, plan.customer_fields)
        context_proj = _rules.project(context, plan.context_fields)
        try:
            cel_ctx = _rules.new_context({"customer": customer_proj, "context": context_proj})
        except _rules.RuleFailure as exc:
            cel_error = str(exc)

    if start.any:
        alive = _apply_rules(plan, start, cel_ctx, cel_error, customer_proj, context_proj, explain, excluded, removed)
    if plan.policies and alive.any():
        # also with no history: a cap of 0 holds for a customer who has none
        alive = _apply_policies(plan, alive, history, now, channel, explain, excluded, removed)

    strategy = choose_strategy(plan, cel_ctx)
    rows = np.flatnonzero(alive)
    if control_none:
        pool = rows[plan.mandatory[rows] | plan.fallback[rows]]
    else:
        normal = rows[~plan.fallback[rows]]
        pool = normal if len(normal) else rows  # fallback offers only when nothing else is left
    return Selection(pool=pool, strategy=strategy, weights_by_category=plan.strategy_weights.get(strategy),
                     excluded=excluded, candidates=start.count, removed=removed)


def reweighted(selection: Selection, plan: DecisionPlan) -> Selection:
    """``selection`` with the strategy weights of ``plan`` (a shadow arm ranking the same moment)."""
    return Selection(pool=selection.pool, strategy=selection.strategy,
                     weights_by_category=plan.strategy_weights.get(selection.strategy), excluded=[],
                     candidates=selection.candidates, removed=selection.removed)


def _rank_few(
    plan: DecisionPlan, selection: Selection, prop: np.ndarray
) -> tuple[list[int], int, list[int], list[float], list[float], list[float]] | None:
    """Scores and order of a few offers in plain Python — numpy's per-call cost is most of the
    work at this size. The same floating-point products, in the same order, as the array path
    and the same order as :func:`_ordered` (mandatory first, score descending, then offer
    index); ``None`` when a score is NaN (the array path orders those)."""
    rows: list[int] = selection.pool.tolist()
    props: list[float] = prop.tolist()
    terms = plan.offer_terms
    weights_by_category = selection.weights_by_category
    by_category: Sequence[float] | None = None
    if weights_by_category is not None:
        by_category = (plan.strategy_weight_lists[selection.strategy]
                       if weights_by_category is plan.strategy_weights.get(selection.strategy)
                       else weights_by_category.tolist())  # a Selection built by hand
    weights: list[float] = []
    scores: list[float] = []
    keys: list[tuple[bool, float, int]] = []
    mandatory_count = 0
    for row, p in zip(rows, props, strict=True):
        value, lever, mandatory, category, _ = terms[row]
        w = 1.0 if by_category is None else by_category[category]
        score = p * value * w * lever
        if score != score:
            return None
        weights.append(w)
        scores.append(score)
        keys.append((not mandatory, -score, row))
        mandatory_count += mandatory
    order = sorted(range(len(rows)), key=keys.__getitem__)
    return order, mandatory_count, rows, props, weights, scores


class _Lazy:
    """An array read one Python value at a time (``.item()``: the same value ``tolist`` gives)."""

    __slots__ = ("_array",)

    def __init__(self, array: np.ndarray) -> None:
        self._array = array

    def __getitem__(self, pos: int) -> Any:
        return self._array.item(pos)


def rank(plan: DecisionPlan, selection: Selection, prop: np.ndarray, *, limit: int, seed: str,
         uniform_first: bool = False) -> Outcome:
    """Stage 5: score (propensity × value × weight × lever), order, explore, cut to ``limit``.

    ``uniform_first`` (an experiment's control-random arm): the first place after the
    mandatory offers goes to a uniformly random eligible offer — the exploration of
    :func:`rank_probability` with ε = (k − 1)/k, so every offer's probability is still exact."""
    pool = selection.pool
    few = _rank_few(plan, selection, prop) if len(pool) <= _FEW_ROWS else None
    rows: Any  # indexable by position: lists (a few offers) or _Lazy arrays
    props: Any
    weights: Any
    scores: Any
    eligible: tuple[int, ...]
    if few is not None:
        order, mandatory_count, rows, props, weights, scores = few
        eligible = tuple([rows[pos] for pos in order])
    else:
        if selection.weights_by_category is None:
            weight = np.ones(len(pool), dtype=np.float64)
        else:
            weight = selection.weights_by_category[plan.category_index[pool]]
        score_array = prop * plan.value[pool] * weight * plan.lever[pool]
        order_array = _ordered(plan, pool, score_array)
        order = order_array.tolist()
        mandatory_count = int(plan.mandatory[pool].sum())
        # Python values only for what is shown and for the eligible list (not four lists of the pool)
        rows, props, weights, scores = _Lazy(pool), _Lazy(prop), _Lazy(weight), _Lazy(score_array)
        eligible = tuple(pool[order_array].tolist())

    head, tail = order[:mandatory_count], order[mandatory_count:]
    k = len(tail)
    epsilon = (k - 1) / k if uniform_first and k > 1 else 0.0 if uniform_first else plan.epsilon
    promoted = explore(k, epsilon, random.Random(seed)) if epsilon > 0 else None
    if promoted is not None:
        tail = [tail[promoted], *tail[:promoted], *tail[promoted + 1:]]

    shown: list[Shown] = []
    for rank_, pos in enumerate((head + tail)[:limit], start=1):
        if rank_ <= mandatory_count:
            probability = 1.0
        else:
            r = rank_ - mandatory_count
            if promoted is None:
                i = r
            elif r == 1:
                i = promoted + 1
            elif r <= promoted + 1:
                i = r - 1
            else:
                i = r
            probability = rank_probability(i, r, k, epsilon)
        shown.append(Shown(rows[pos], props[pos], weights[pos], scores[pos], probability))

    excluded = selection.excluded
    excluded.sort(key=lambda e: (e[0], e[1], e[2]))
    return Outcome(
        shown=tuple(shown),
        strategy=selection.strategy,
        excluded=tuple(e[3] for e in excluded),
        explored=promoted is not None,
        eligible=eligible,
        mandatory=mandatory_count,
        candidates=selection.candidates,
        removed=selection.removed,
        epsilon=epsilon if uniform_first else None,
    )


def run_pipeline(
    plan: DecisionPlan,
    *,
    customer: Mapping[str, Any],
    context: Mapping[str, Any],
    channel: str,
    history: Sequence[HistoryRow],
    now: float,
    limit: int,
    explain: bool,
    seed: str,
) -> Outcome:
    """Decide: every stage of docs/decisions.md in order. Pure given its arguments (``seed`` drives ε)."""
    selection = select(plan, customer=customer, context=context, channel=channel, history=history, now=now,
                       explain=explain)
    prop = propensities(plan, selection.pool, customer, context)
    return rank(plan, selection, prop, limit=limit, seed=seed)
