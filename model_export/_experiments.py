"""The catalog's ``experiments`` section: validated at build time, compiled into ``meta.experiments``.

Every problem names the item and the field, e.g.::

    catalog.yaml: experiments[0] (id=propensity-v2): arms[1] (id=v2): models: model 'prop_v3' is not in the bundle

(docs/catalog.md, "Experiments"; docs/experiments.md for what the arms do.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

from nbo.sdk import CatalogError
from nbo.sdk.core import ARM_KINDS, CATEGORIES, id_problem, is_card_data

__all__ = ["promote_arm", "validate_experiments"]

_EXPERIMENT_FIELDS = ("id", "seed", "share", "offset", "arms", "description")
_ARM_FIELDS = ("id", "kind", "weight", "shadow", "models", "strategy_weights", "levers", "description")
_EPS = 1e-12

Add = Callable[[str, str | None, str], None]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _label(base: str, value: Any) -> str:
    if isinstance(value, str) and value and not is_card_data(value) and id_problem(value) is None:
        return f"{base} (id={value})"
    return base


def _unknown(add: Add, item: str, data: Mapping[Any, Any], known: Collection[str]) -> None:
    for key in data:
        if key not in known:
            add(item, str(key), f"unknown field (known: {', '.join(known)})")


def _validate_arm(add: Add, label: str, raw: Any, *, model_ids: set[str] | None, offer_models: set[str],
                  offer_ids: set[str], strategy_names: set[str]) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        add(label, None, f"must be a mapping, got {type(raw).__name__}")
        return None
    label = _label(label, raw.get("id"))
    _unknown(add, label, raw, _ARM_FIELDS)
    arm: dict[str, Any] = {}
    arm_id = raw.get("id")
    problem = "is required" if arm_id is None else id_problem(arm_id)
    if problem is not None or is_card_data(arm_id):
        add(label, "id", f"must be an id (letters, digits, . _ : -): {problem or 'looks like card data'}")
    arm["id"] = arm_id
    kind = raw.get("kind", "challenger")
    if kind not in ARM_KINDS:
        add(label, "kind", f"must be one of {', '.join(ARM_KINDS)}, got {kind!r}")
    arm["kind"] = kind
    shadow = raw.get("shadow", False)
    if not isinstance(shadow, bool):
        add(label, "shadow", f"must be true or false, got {shadow!r}")
        shadow = False
    arm["shadow"] = shadow
    if shadow and kind != "challenger":
        add(label, "shadow", f"only a challenger arm can be a shadow, not a {kind} arm")
    weight = _number(raw.get("weight", 0.0 if shadow else None))
    if shadow:
        if weight not in (None, 0.0) and "weight" in raw:
            add(label, "weight", "a shadow arm takes no traffic: leave out its weight")
        weight = 0.0
    elif weight is None or weight < 0:
        add(label, "weight", f"must be a number >= 0, got {raw.get('weight')!r}")
        weight = 0.0
    arm["weight"] = weight
    changes = [key for key in ("models", "strategy_weights", "levers") if raw.get(key)]
    if kind != "challenger" and changes:
        add(label, changes[0], f"a {kind} arm replaces nothing; only challenger arms do")

    models = raw.get("models")
    if models is not None:
        if not isinstance(models, dict):
            add(label, "models", "must be a mapping of offer model id to the model replacing it")
        else:
            for old, new in models.items():
                for which, name in (("replaced", old), ("replacement", new)):
                    if not isinstance(name, str) or not name:
                        add(label, "models", f"{which} model id must be a non-empty string, got {name!r}")
                    elif model_ids is not None and name not in model_ids:
                        add(label, "models", f"model {name!r} is not in the bundle "
                                             f"(models: {', '.join(sorted(model_ids)) or 'none'})")
                if isinstance(old, str) and old not in offer_models and (model_ids is None or old in model_ids):
                    add(label, "models", f"no offer uses model {old!r}, so replacing it changes nothing")
            arm["models"] = dict(models)
    weights = raw.get("strategy_weights")
    if weights is not None:
        if not isinstance(weights, dict):
            add(label, "strategy_weights", "must be a mapping of strategy to {category: weight}")
        else:
            clean: dict[str, dict[str, float]] = {}
            for strategy, by_category in weights.items():
                if strategy not in strategy_names:
                    add(label, "strategy_weights", f"unknown strategy {strategy!r} "
                                                   f"(strategies: {', '.join(sorted(strategy_names)) or 'none'})")
                    continue
                if not isinstance(by_category, dict):
                    add(label, f"strategy_weights.{strategy}", "must be a mapping of category to weight")
                    continue
                clean[strategy] = {}
                for category, w in by_category.items():
                    number = _number(w)
                    if category not in CATEGORIES:
                        add(label, f"strategy_weights.{strategy}", f"unknown category {category!r}")
                    elif number is None or number < 0:
                        add(label, f"strategy_weights.{strategy}.{category}", f"must be a number >= 0, got {w!r}")
                    else:
                        clean[strategy][category] = number
            arm["strategy_weights"] = clean
    levers = raw.get("levers")
    if levers is not None:
        if not isinstance(levers, dict):
            add(label, "levers", "must be a mapping of offer id to lever")
        else:
            clean_levers: dict[str, float] = {}
            for offer_id, lever in levers.items():
                number = _number(lever)
                if offer_id not in offer_ids:
                    add(label, "levers", f"unknown offer {offer_id!r}")
                elif number is None or number < 0:
                    add(label, f"levers.{offer_id}", f"must be a number >= 0, got {lever!r}")
                else:
                    clean_levers[offer_id] = number
            arm["levers"] = clean_levers
    if raw.get("description") is not None:
        arm["description"] = str(raw["description"])
    return arm


def validate_experiments(
    add: Add, raw: Any, *, model_ids: set[str] | None, offers: Collection[Mapping[str, Any]],
    strategy_names: set[str],
) -> list[dict[str, Any]]:
    """Check the ``experiments`` list; report each problem through ``add(item, field, message)``
    and return the normalised experiments (what ``meta.experiments`` holds)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        add("top level", "experiments", f"must be a list, got {type(raw).__name__}")
        return []
    offer_ids = {o["offer_id"] for o in offers if isinstance(o.get("offer_id"), str)}
    offer_models = {o["model_id"] for o in offers if isinstance(o.get("model_id"), str) and o["model_id"]}
    out: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    slices: list[tuple[float, float, str]] = []
    for i, item in enumerate(raw):
        label = f"experiments[{i}]"
        if not isinstance(item, dict):
            add(label, None, f"must be a mapping, got {type(item).__name__}")
            continue
        label = _label(label, item.get("id"))
        _unknown(add, label, item, _EXPERIMENT_FIELDS)
        exp_id = item.get("id")
        problem = "is required" if exp_id is None else id_problem(exp_id)
        if problem is not None or is_card_data(exp_id):
            add(label, "id", f"must be an id (letters, digits, . _ : -): {problem or 'looks like card data'}")
        elif exp_id in seen:
            add(label, "id", f"is also the id of {seen[exp_id]}")
        else:
            seen[exp_id] = label
        seed = item.get("seed")
        if isinstance(seed, bool) or not isinstance(seed, str | int) or (isinstance(seed, str) and not seed.strip()):
            add(label, "seed", f"required: a non-empty string or an integer, got {seed!r}")
            seed = ""
        share = _number(item.get("share"))
        if share is None or not 0.0 < share <= 1.0:
            add(label, "share", f"must be a number in (0, 1], got {item.get('share')!r}")
            share = None
        offset = _number(item.get("offset", 0.0))
        if offset is None or not 0.0 <= offset < 1.0:
            add(label, "offset", f"must be a number in [0, 1), got {item.get('offset')!r}")
            offset = None
        if share is not None and offset is not None:
            if offset + share > 1.0 + _EPS:
                add(label, "share", f"offset {offset:g} + share {share:g} is beyond all the traffic (1)")
            for start, end, other in slices:
                if offset < end - _EPS and start < offset + share - _EPS:
                    add(label, "share", f"its traffic [{offset:g}, {offset + share:g}) overlaps {other}'s "
                                        f"[{start:g}, {end:g}): give one of them an offset past the other")
            slices.append((offset, offset + share, label))
        arms_raw = item.get("arms")
        arms: list[dict[str, Any]] = []
        if not isinstance(arms_raw, list) or not arms_raw:
            add(label, "arms", "required: a non-empty list of arms")
        else:
            arm_ids: set[str] = set()
            for j, arm_raw in enumerate(arms_raw):
                arm = _validate_arm(add, f"{label}: arms[{j}]", arm_raw, model_ids=model_ids,
                                    offer_models=offer_models, offer_ids=offer_ids, strategy_names=strategy_names)
                if arm is None:
                    continue
                if isinstance(arm["id"], str) and arm["id"] in arm_ids:
                    add(f"{label}: arms[{j}]", "id", f"arm {arm['id']!r} is named twice")
                arm_ids.add(str(arm["id"]))
                arms.append(arm)
            live = [a for a in arms if not a["shadow"]]
            if not live:
                add(label, "arms", "needs at least one arm that is not a shadow")
            elif not sum(a["weight"] for a in live) > 0.0:
                add(label, "arms", "the weights of the arms that are not shadows must sum to a positive number")
            if sum(a["kind"] == "champion" for a in arms) > 1:
                add(label, "arms", "names more than one champion arm")
        out.append({
            "id": exp_id, "seed": str(seed), "share": share, "offset": offset, "arms": arms,
            **({"description": str(item["description"])} if item.get("description") is not None else {}),
        })
    return out


def promote_arm(catalog: Mapping[str, Any], experiment_id: str, arm_id: str, *,
                keep_old_champion: bool = False) -> dict[str, Any]:
    """A copy of an authored ``catalog`` where ``arm_id`` of ``experiment_id`` is the champion.

    The arm's replacements are written into the catalog itself (offers' ``model_id`` and
    ``lever``, the strategies' weights), so the next bundle built from it serves the winner to
    everyone. The experiment is removed, or — ``keep_old_champion`` — kept with its seed, the
    promoted arm turned into the ``champion`` arm and the old champion's behaviour kept as a
    challenger arm that undoes the replacements (other challengers, defined against the old
    champion, are dropped). ``CatalogError`` when the experiment or the arm is not there, or the
    arm is not a challenger. The result still goes through build validation.
    """
    experiments = catalog.get("experiments") or []
    found = [e for e in experiments if isinstance(e, Mapping) and e.get("id") == experiment_id]
    if not found:
        raise CatalogError(f"experiments: no experiment {experiment_id!r} to promote from")
    exp = found[0]
    arms = [a for a in exp.get("arms") or [] if isinstance(a, Mapping)]
    match = [a for a in arms if a.get("id") == arm_id]
    if not match:
        raise CatalogError(f"experiments (id={experiment_id}): arms: no arm {arm_id!r} "
                         f"(arms: {', '.join(str(a.get('id')) for a in arms)})")
    arm = match[0]
    if arm.get("kind", "challenger") != "challenger":
        raise CatalogError(f"experiments (id={experiment_id}): arms (id={arm_id}): kind: a {arm.get('kind')} arm "
                           "cannot be promoted; only a challenger can")
    out = dict(catalog)
    models = dict(arm.get("models") or {})
    levers = dict(arm.get("levers") or {})
    undo_models: dict[str, str] = {}
    undo_levers: dict[str, float] = {}
    offers = []
    for offer in catalog.get("offers") or []:
        offer = dict(offer)
        old_model = offer.get("model_id")
        if old_model in models:
            offer["model_id"] = models[old_model]
            undo_models[models[old_model]] = old_model
        if offer.get("offer_id") in levers:
            undo_levers[offer["offer_id"]] = offer.get("lever", 1.0)
            offer["lever"] = levers[offer["offer_id"]]
        offers.append(offer)
    out["offers"] = offers
    undo_weights: dict[str, dict[str, float]] = {}
    if arm.get("strategy_weights"):
        strategies = {name: dict(weights or {}) for name, weights in (catalog.get("strategies") or {}).items()}
        for strategy, by_category in arm["strategy_weights"].items():
            old = strategies.setdefault(strategy, {})
            undo_weights[strategy] = {c: old.get(c, 1.0) for c in by_category}
            old.update(by_category)
        out["strategies"] = strategies
    rest = [e for e in experiments if not (isinstance(e, Mapping) and e.get("id") == experiment_id)]
    if keep_old_champion:
        new_arms = []
        for a in arms:
            if a.get("id") == arm_id:
                new_arms.append({"id": arm_id, "kind": "champion", "weight": a.get("weight", 0.0)})
            elif a.get("kind") == "champion":
                old = {"id": a.get("id"), "kind": "challenger", "weight": a.get("weight", 0.0)}
                if undo_models:
                    old["models"] = undo_models
                if undo_levers:
                    old["levers"] = undo_levers
                if undo_weights:
                    old["strategy_weights"] = undo_weights
                new_arms.append(old)
            elif a.get("kind", "challenger") == "challenger":
                continue  # other challengers were defined against the old champion
            else:
                new_arms.append(dict(a))
        rest.append({**exp, "arms": new_arms})
    if rest:
        out["experiments"] = rest
    else:
        out.pop("experiments", None)
    return out
