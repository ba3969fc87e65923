"""The rule cost budget's measured half: each rule, timed on sample data at build.

The static half (comprehension nesting, literal sizes, steps over literals; in
``nbo.sdk.core.compile_expression``) runs wherever a rule is compiled — at build, at
install, at publish.
What it cannot see is how a rule behaves on the data: a comprehension over a profile list,
an expensive function on a long string. So ``nbo bundle build`` also evaluates every rule
and strategy condition the way the engine will — against the catalog's new-customer profile,
a sample request context, and (for rules that read the offer) each offer it applies to, up to
:data:`SAMPLE_OFFERS` of them — and refuses one whose slowest evaluation takes longer than
:data:`RULE_EVAL_BUDGET_SECONDS`, naming the rule and the time measured. A rule that fails on
the sample (a missing field) is fine here: on a real customer it may not, and the engine turns
a failing rule into an exclusion.

The budget is some 100× what a reasonable rule costs (a few to a few tens of microseconds
with its context conversion), and a sample over it is timed again (the best of three runs
counts), so a busy build machine does not trip it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from nbo.sdk.core import compile_expression, evaluate_rule, new_customer_profile, new_rule_context

__all__ = ["RULE_EVAL_BUDGET_SECONDS", "SAMPLE_OFFERS", "slow_rules"]

RULE_EVAL_BUDGET_SECONDS = 0.005
"""Slowest allowed evaluation of one rule or condition on the build's sample data (5 ms)."""
SAMPLE_OFFERS = 50
"""Offers each offer-reading rule is timed against."""


def _offer_view(offer: Mapping[str, Any]) -> dict[str, Any]:
    """An offer as rules see it in the engine (value filled, lever defaulted)."""
    view = dict(offer)
    view["value"] = float(offer["expected_volume"]) * float(offer["margin"]) * float(offer["duration"])
    if view.get("lever") is None:
        view["lever"] = 1.0
    return view


def _timed(program: Any, variables: Mapping[str, Any]) -> float:
    started = time.perf_counter()
    try:
        evaluate_rule(program, new_rule_context(variables))
    except Exception:  # noqa: S110 - a failure on the sample is not a cost: the engine excludes
        pass
    return time.perf_counter() - started


def _slowest(program: Any, contexts: Sequence[Mapping[str, Any]]) -> float:
    """The slowest sample's evaluation time: the best of up to three runs, so that a busy
    machine (a descheduled thread, a first run) does not make a cheap rule look slow."""
    slowest = 0.0
    for variables in contexts:
        best = _timed(program, variables)
        for _ in range(2):
            if best <= RULE_EVAL_BUDGET_SECONDS:
                break
            best = min(best, _timed(program, variables))
        slowest = max(slowest, best)
    return slowest


def slow_rules(
    *,
    rules: Sequence[Mapping[str, Any]],
    conditions: Sequence[Mapping[str, Any]],
    offers: Sequence[Mapping[str, Any]],
    profile: Mapping[str, Any],
    channels: Sequence[str],
) -> list[tuple[str, int, str, str]]:
    """``(table, index, field, message)`` for every rule or condition over the budget.

    ``rules``, ``conditions`` and ``offers`` are validated catalog rows (their expressions
    compile); ``profile`` is the catalog's new-customer profile.
    """
    customer = {**new_customer_profile(), **profile}
    context = {"channel": channels[0] if channels else "", "hour": 12, "weekday": 0}
    views = [_offer_view(o) for o in offers]
    problems: list[tuple[str, int, str, str]] = []
    for index, rule in enumerate(rules):
        program = compile_expression(rule["expression"], what=f"rule {rule['rule_id']!r}")
        target = rule["applies_to"]
        applying = [v for v in views if target in ("*", v["category"], v["offer_id"])][:SAMPLE_OFFERS]
        samples = [{"customer": customer, "context": context, "offer": v} for v in applying] or [
            {"customer": customer, "context": context}]
        seconds = _slowest(program, samples)
        if seconds > RULE_EVAL_BUDGET_SECONDS:
            problems.append(("rules", index, "expression", _message(seconds)))
    for index, row in enumerate(conditions):
        program = compile_expression(row["condition"], what=f"strategy_assignment {index}")
        seconds = _slowest(program, [{"customer": customer, "context": context}])
        if seconds > RULE_EVAL_BUDGET_SECONDS:
            problems.append(("strategy_assignment", index, "condition", _message(seconds)))
    return problems


def _message(seconds: float) -> str:
    return (f"over the rule cost budget: one evaluation on the build's sample data took {seconds * 1000:.1f} ms; "
            f"at most {RULE_EVAL_BUDGET_SECONDS * 1000:g} ms is allowed")

