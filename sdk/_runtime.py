"""A bundle loaded into memory: catalog rows, compiled rules and warm ONNX sessions.

``load_bundle`` is called while installing, *before* the switch, so a bundle whose models
do not load never becomes active. A :class:`LoadedBundle` is immutable once built; a decision
grabs one reference and uses only it, which is what makes the switch atomic for callers.

Everything a decision can compute once per bundle is computed here into a
:class:`DecisionPlan` (bench/RESULTS.md): offers as numpy columns (value, lever, category
index, validity window as epoch seconds, a channel mask per known channel), each model's
offer input columns (so a decision only row-selects them and broadcasts the customer and
context columns), rules compiled and classified — offer-only rules already evaluated,
mixed rules specialised per offer — strategy conditions compiled, contact policies parsed.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from . import _rules
from ._bundle import BundleStore, StagedBundle
from ._carddata import is_card_data
from ._errors import BundleError, RuleError
from ._experiments import Experiment, parse_experiments
from ._measures import new_customer_profile
from ._records import id_problem
from ._types import BundleInfo
from ._vocabulary import DEFAULT_CHANNELS, POLICY_EVENTS, POLICY_SCOPES, RULE_KINDS

__all__ = [
    "CandidateSet",
    "DecisionPlan",
    "LoadedBundle",
    "ModelPlan",
    "PolicyPlan",
    "RulePlan",
    "build_plan",
    "load_bundle",
    "stage_and_load",
]

_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class ModelInput:
    """One ONNX input: where its value comes from and its element type."""

    name: str
    source: str
    """``customer``, ``offer`` or ``context``."""
    field: str
    dtype: str
    """``float``, ``double``, ``int64`` or ``string``."""


@dataclass(frozen=True, slots=True)
class ModelPlan:
    """A propensity model ready for batched scoring."""

    model_id: str
    session: Any
    output_name: str
    inputs: tuple[ModelInput, ...]
    offer_columns: Mapping[str, np.ndarray]
    """Input name → column over *all* offers of the bundle, shape [n_offers, 1]."""


@dataclass(frozen=True, slots=True)
class Membership:
    """A mixed rule of the shape ``offer.F in customer.L`` or ``!(offer.F in customer.L)``
    ("already owns it"): decided with a set lookup per candidate instead of a CEL run, when
    the customer's ``L`` is a list of strings (anything else goes to CEL, which words the failure)."""

    customer_field: str
    negated: bool
    constants: tuple[str | None, ...]
    """Per offer: its ``F`` (a string for every offer the rule applies to)."""


_MEMBERSHIP = re.compile(r"\s*(!\s*\(\s*)?offer\.([A-Za-z_]\w*)\s+in\s+customer\.([A-Za-z_]\w*)\s*(\)?)\s*")


def _membership(expression: str, applies: np.ndarray, offer_maps: Sequence[Mapping[str, Any]]) -> Membership | None:
    match = _MEMBERSHIP.fullmatch(expression)
    if match is None or bool(match.group(1)) != bool(match.group(4)):
        return None
    offer_field, customer_field = match.group(2), match.group(3)
    constants: list[str | None] = [None] * len(offer_maps)
    for i in np.flatnonzero(applies).tolist():
        value = offer_maps[i].get(offer_field)
        if type(value) is not str:
            return None  # CEL's equality across types is not a set lookup's
        constants[i] = value
    return Membership(customer_field, bool(match.group(1)), tuple(constants))


@dataclass(frozen=True, slots=True)
class RulePlan:
    """A compiled rule, classified by what it reads."""

    index: int
    rule_id: str
    kind: str
    description: str
    expression: str
    scope: str
    """``bundle`` (offer-only: evaluated at load), ``decision`` (customer/context only: once
    per decision) or ``candidate`` (mixed: once per applicable candidate)."""
    applies: np.ndarray
    """Boolean mask over offers: which offers this rule is about."""
    program: Any
    specialized: tuple[Any, ...] = ()
    """For ``candidate`` rules: per offer, the program with that offer bound (None where the
    rule does not apply or could not be specialised — then the offer projection is used)."""
    offer_fields: frozenset[str] | None = None
    membership: Membership | None = None
    """For ``candidate`` rules of that shape: the set-lookup form (see :class:`Membership`)."""


@dataclass(frozen=True, slots=True)
class PolicyPlan:
    """A contact policy, parsed."""

    policy_id: str
    scope: str
    event: str
    max_count: int
    window_seconds: float
    channel: str
    description: str
    applies: np.ndarray


@dataclass(frozen=True, slots=True)
class CandidateSet:
    """Where a decision on one channel starts; the same for every ``now`` in [start, end).

    Built on demand by :func:`._policy.candidate_set` and cached in the plan per channel:
    validity changes only at an offer's ``valid_from``/``valid_to``, so between two such
    instants every decision on a channel starts from the same offers and the same rules.
    """

    start: float
    end: float
    mask: np.ndarray
    """Offers valid in [start, end) and offered on the channel (read-only)."""
    any: bool
    """Whether ``mask`` holds any offer."""
    static_alive: np.ndarray
    """``mask`` and passed every offer-only rule (read-only)."""
    decision_rules: tuple[RulePlan, ...]
    """The plan's decision rules that apply to at least one offer of ``mask``."""
    candidate_rules: tuple[RulePlan, ...]
    """The plan's candidate rules that apply to at least one offer of ``mask``."""
    count: int = 0
    """How many offers ``mask`` holds (the decision funnel's candidates)."""
    static_removed: tuple[tuple[str, int], ...] = ()
    """(rule_id, offers of ``mask`` it removed first) of the offer-only rules, for the funnel."""


@dataclass(frozen=True, slots=True)
class DecisionPlan:
    """Everything about a bundle a decision needs, precomputed and immutable."""

    offer_ids: tuple[str, ...]
    names: tuple[str, ...]
    categories: tuple[str, ...]
    category_names: tuple[str, ...]
    category_index: np.ndarray
    value: np.ndarray
    lever: np.ndarray
    mandatory: np.ndarray
    fallback: np.ndarray
    valid_from: np.ndarray
    valid_to: np.ndarray
    channel_masks: Mapping[str, np.ndarray]
    model_index: np.ndarray
    """Per offer: index into ``models``, or -1 (no model: propensity 1.0)."""
    models: tuple[ModelPlan, ...]
    offer_maps: tuple[Mapping[str, Any], ...]
    """The offer as rules see it: columns plus ``attributes`` as a map."""
    static_ok: np.ndarray
    """Per offer: passed every offer-only rule."""
    static_exclusions: Mapping[int, tuple[tuple[int, str | None], ...]]
    """Offer index → (rule index, failure message or None when the rule said no)."""
    rules: tuple[RulePlan, ...]
    decision_rules: tuple[RulePlan, ...]
    candidate_rules: tuple[RulePlan, ...]
    strategy_conditions: tuple[tuple[Any, str], ...]
    strategy_weights: Mapping[str, np.ndarray]
    """Strategy → weight per category index (1.0 where the strategy names no weight)."""
    policies: tuple[PolicyPlan, ...]
    max_window_seconds: float
    customer_fields: frozenset[str] | None
    context_fields: frozenset[str] | None
    needs_cel: bool
    channels: frozenset[str]
    epsilon: float
    default_profile: Mapping[str, Any]
    offer_position: Mapping[str, int]
    sole_model: int
    """Index into ``models`` of the only model offers use, or -1 (several models, or none)."""
    reads_points_balance: bool
    """Whether a rule, a strategy condition or a model reads ``customer.points_balance``."""
    validity_edges: tuple[float, ...]
    """Every offer's ``valid_from`` and ``valid_to``, sorted: where candidate sets change."""
    all_offers_model: int = -1
    numeric_inputs: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """``{"customer"|"context": {field: input name}}`` of the models' number inputs: a request
    value there must be a number (or null), not silently a missing value."""
    """``sole_model`` when every offer uses it (no offer without a model), else -1."""
    experiments: tuple[Experiment, ...] = ()
    """The bundle's experiments (docs/experiments.md), in catalog order."""
    arm_plans: tuple[tuple[DecisionPlan, ...], ...] = ()
    """Per experiment, per arm: the plan that arm decides with (this plan itself for the
    champion and the control arms; for a challenger this plan with its models, levers and
    strategy weights replaced). Arm plans have no experiments of their own."""
    candidate_cache: dict[str, CandidateSet] = field(init=False, default_factory=dict, repr=False, compare=False)
    """Channel → the :class:`CandidateSet` of the latest decision on it (fresh in each plan,
    also in a ``dataclasses.replace`` copy; entries are swapped whole, so threads may share it)."""
    offer_terms: tuple[tuple[float, float, bool, int, bool], ...] = field(init=False, repr=False, compare=False)
    """Per offer, as Python scalars: (value, lever, mandatory, category index, fallback) — what
    ranking and answering read, without a numpy scalar access per term (derived from the
    arrays above)."""
    strategy_weight_lists: Mapping[str, tuple[float, ...]] = field(init=False, repr=False, compare=False)
    """``strategy_weights`` as tuples of Python floats."""
    offer_models: tuple[int, ...] = field(init=False, repr=False, compare=False)
    """``model_index`` as a tuple of Python ints."""
    logged_inputs: tuple[tuple[str, str, str], ...] = field(init=False, repr=False, compare=False)
    """(input name, source, field) of every ``customer__*`` and ``context__*`` input of any of
    the bundle's models, once each, sorted by name: what a decision event records."""

    def __post_init__(self) -> None:
        terms = tuple(zip(self.value.tolist(), self.lever.tolist(), self.mandatory.tolist(),
                          self.category_index.tolist(), self.fallback.tolist(), strict=True))
        object.__setattr__(self, "offer_terms", terms)
        object.__setattr__(self, "strategy_weight_lists",
                           {k: tuple(v.tolist()) for k, v in self.strategy_weights.items()})
        object.__setattr__(self, "offer_models", tuple(self.model_index.tolist()))
        logged = {inp.name: (inp.name, inp.source, inp.field)
                  for model in self.models for inp in model.inputs if inp.source != "offer"}
        object.__setattr__(self, "logged_inputs", tuple(logged[name] for name in sorted(logged)))


@dataclass(frozen=True, slots=True)
class LoadedBundle:
    info: BundleInfo
    directory: Path
    manifest: Mapping[str, Any]
    offers: tuple[Mapping[str, Any], ...]
    rules: tuple[Mapping[str, Any], ...]
    strategies: Mapping[str, Mapping[str, float]]
    strategy_assignment: tuple[Mapping[str, Any], ...]
    contact_policies: tuple[Mapping[str, Any], ...]
    meta: Mapping[str, str]
    sessions: Mapping[str, Any] = field(default_factory=dict)
    plan: DecisionPlan | None = None


# -- reading -----------------------------------------------------------------------------


def _read_table(conn: sqlite3.Connection, table: str, order: str) -> list[dict[str, Any]]:
    conn.row_factory = sqlite3.Row
    return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY {order}")]  # noqa: S608


def _session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def load_bundle(directory: Path, manifest: Mapping[str, Any], info: BundleInfo) -> LoadedBundle:
    """Read a verified, extracted bundle directory into memory, load and warm its models."""
    try:
        catalog_path = directory / manifest["catalog"]["path"]
        conn = sqlite3.connect(f"file:{catalog_path}?mode=ro", uri=True)
        try:
            offers = _read_table(conn, "offers", "offer_id")
            rules = _read_table(conn, "rules", "rule_id")
            strategies = {
                r["strategy"]: json.loads(r["weights"]) for r in _read_table(conn, "strategies", "strategy")
            }
            assignment = _read_table(conn, "strategy_assignment", "priority")
            policies = _read_table(conn, "contact_policies", "policy_id")
            meta = {r["key"]: r["value"] for r in _read_table(conn, "meta", "key")}
        finally:
            conn.close()
    except (sqlite3.DatabaseError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise BundleError(f"catalog of bundle {info.name} v{info.version} is unreadable: {exc}") from exc
    sessions: dict[str, Any] = {}
    for model in manifest.get("models", []):
        try:
            sessions[model["id"]] = _session(directory / model["path"])
        except Exception as exc:  # onnxruntime raises its own types; none may escape
            raise BundleError(f"model {model.get('id')!r} does not load: {exc}") from exc
    plan = build_plan(
        offers=offers,
        rules=rules,
        strategies=strategies,
        strategy_assignment=assignment,
        contact_policies=policies,
        meta=meta,
        sessions=sessions,
        what=f"bundle {info.name} v{info.version}",
    )
    return LoadedBundle(
        info=info,
        directory=directory,
        manifest=manifest,
        offers=tuple(offers),
        rules=tuple(rules),
        strategies=strategies,
        strategy_assignment=tuple(assignment),
        contact_policies=tuple(policies),
        meta=meta,
        sessions=sessions,
        plan=plan,
    )


# -- compiling the plan ---------------------------------------------------------------------


def stage_and_load(store: BundleStore, path: Path, *, force: bool) -> tuple[StagedBundle, LoadedBundle]:
    """Verify and extract a bundle into ``store``, then load it — without switching to it.

    A bundle whose models or catalog do not load is discarded, so a failure leaves nothing
    behind; the caller commits the staged bundle and swaps in the loaded one.
    """
    staged = store.stage(path, force=force)
    try:
        return staged, load_bundle(staged.directory, staged.manifest, staged.info)
    except BaseException:
        store.discard(staged)
        raise

def _json(text: Any, default: Any, what: str) -> Any:
    if text is None or text == "":
        return default
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BundleError(f"{what} is not valid JSON: {exc}") from exc


def parse_instant(text: Any, *, what: str) -> float | None:
    """ISO-8601 UTC ('YYYY-MM-DDTHH:MM:SSZ', or any ISO form; naive = UTC) → epoch seconds."""
    if text is None or text == "":
        return None
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    try:
        value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError as exc:
        raise BundleError(f"{what}: {text!r} is not an ISO-8601 instant") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _number(value: Any, *, what: str, default: float) -> float:
    if value is None:
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BundleError(f"{what}: {value!r} is not a number") from None
    if not math.isfinite(number) or number < 0:
        raise BundleError(f"{what}: {value!r} must be a finite number ≥ 0")
    return number


def _offer_map(row: Mapping[str, Any], what: str) -> dict[str, Any]:
    """An offers row as rules see it: JSON columns parsed, flags as booleans, value filled."""
    out = dict(row)
    out["channels"] = list(_json(row.get("channels"), [], f"{what}.channels"))
    attributes = _json(row.get("attributes"), {}, f"{what}.attributes")
    if not isinstance(attributes, dict):
        raise BundleError(f"{what}.attributes must be a JSON object")
    out["attributes"] = attributes
    out["mandatory"] = bool(row.get("mandatory") or 0)
    out["fallback"] = bool(row.get("fallback") or 0)
    if out.get("value") is None:
        parts = [row.get("expected_volume"), row.get("margin"), row.get("duration")]
        out["value"] = (float(parts[0]) * float(parts[1]) * float(parts[2])  # type: ignore[arg-type]
                        if all(p is not None for p in parts) else 0.0)
    if out.get("lever") is None:
        out["lever"] = 1.0
    return out


def _applies(applies_to: Any, offer_ids: Sequence[str], categories: Sequence[str]) -> np.ndarray:
    """"*" → every offer; otherwise offers whose category or offer_id equals ``applies_to``."""
    target = "*" if applies_to in (None, "") else str(applies_to)
    if target == "*":
        mask = np.ones(len(offer_ids), dtype=bool)
    else:
        mask = np.fromiter(
            (c == target or o == target for o, c in zip(offer_ids, categories, strict=True)),
            dtype=bool,
            count=len(offer_ids),
        )
    mask.flags.writeable = False
    return mask


_ORT_TYPES = {
    "tensor(float)": "float",
    "tensor(double)": "double",
    "tensor(int64)": "int64",
    "tensor(string)": "string",
}


def input_column(values: Sequence[Any], dtype: str) -> np.ndarray:
    """Raw values → an ONNX input column [N, 1] (missing float → NaN, missing string → "")."""
    if dtype == "string":
        arr = np.empty((len(values), 1), dtype=object)
        arr[:, 0] = [to_string(v) for v in values]
        return arr
    if dtype == "int64":
        return np.array([[to_int(v)] for v in values], dtype=np.int64).reshape(len(values), 1)
    np_type = np.float32 if dtype == "float" else np.float64
    return np.array([to_float(v) for v in values], dtype=np_type).reshape(len(values), 1)


def to_float(value: Any) -> float:
    """A feature value as a float; anything that is not a number is missing (NaN)."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    return math.nan


def to_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    return 0


def to_string(value: Any) -> str:
    """A feature value as a string; None (missing) → "", booleans as "true"/"false"."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _model_plan(model_id: str, session: Any, offer_maps: Sequence[Mapping[str, Any]]) -> ModelPlan:
    inputs: list[ModelInput] = []
    columns: dict[str, np.ndarray] = {}
    for node in session.get_inputs():
        source, sep, name = node.name.partition("__")
        if not sep or source not in ("customer", "offer", "context") or not name:
            raise BundleError(
                f"model {model_id!r}: input {node.name!r} is not named customer__X, offer__X or context__X"
            )
        dtype = _ORT_TYPES.get(node.type)
        if dtype is None:
            raise BundleError(f"model {model_id!r}: input {node.name!r} has unsupported type {node.type}")
        inputs.append(ModelInput(name=node.name, source=source, field=name, dtype=dtype))
        if source == "offer":
            raw = [o[name] if name in o and name != "attributes" else o["attributes"].get(name) for o in offer_maps]
            col = input_column(raw, dtype)
            col.flags.writeable = False
            columns[node.name] = col
    outputs = session.get_outputs()
    if not outputs:
        raise BundleError(f"model {model_id!r} has no outputs")
    last = outputs[-1]
    if not str(last.type).startswith("tensor("):
        raise BundleError(
            f"model {model_id!r}: last output {last.name!r} is {last.type}, not a probability tensor "
            "(export with zipmap off)"
        )
    return ModelPlan(
        model_id=model_id, session=session, output_name=last.name, inputs=tuple(inputs), offer_columns=columns
    )


def _warm(model: ModelPlan, rows: np.ndarray, profile: Mapping[str, Any], context: Mapping[str, Any]) -> None:
    """Run the model once (also proves its output shape) so the first decision is not slow."""
    from ._policy import model_feeds

    if len(rows):
        feeds = model_feeds(model, rows, profile, context)
    else:  # no offer uses this model: warm it on one row of missing offer values
        feeds = model_feeds(replace(model, offer_columns={}, inputs=tuple(
            i for i in model.inputs if i.source != "offer")), np.zeros(1, dtype=np.intp), profile, context)
        feeds.update({i.name: input_column([None], i.dtype) for i in model.inputs if i.source == "offer"})
        rows = np.zeros(1, dtype=np.intp)
    try:
        out = model.session.run([model.output_name], feeds)[0]
    except Exception as exc:  # onnxruntime's own exception types must not escape
        raise BundleError(f"model {model.model_id!r} fails on catalog rows: {exc}") from exc
    if getattr(out, "ndim", 0) != 2 or out.shape[0] != len(rows) or out.shape[1] < 1:
        raise BundleError(f"model {model.model_id!r}: last output has shape {getattr(out, 'shape', None)}, "
                          "expected [N, classes]")


def build_plan(
    *,
    offers: Sequence[Mapping[str, Any]],
    rules: Sequence[Mapping[str, Any]],
    strategies: Mapping[str, Mapping[str, Any]],
    strategy_assignment: Sequence[Mapping[str, Any]],
    contact_policies: Sequence[Mapping[str, Any]],
    meta: Mapping[str, str],
    sessions: Mapping[str, Any],
    what: str = "bundle",
) -> DecisionPlan:
    """Precompute everything a decision needs from the catalog tables and model sessions."""
    for i, o in enumerate(offers):
        # Offer ids go into every decision event: they keep the one id rule and hold no card data.
        # (Named by position: the id itself may be what must not be echoed.)
        if isinstance(o.get("offer_id"), str) and is_card_data(o["offer_id"]):
            raise BundleError(f"{what}: offers row {i + 1}: offer_id looks like card data")
        problem = id_problem(o.get("offer_id"))
        if problem is not None:
            raise BundleError(f"{what}: offers row {i + 1}: offer_id {problem}")
    offers = sorted(offers, key=lambda o: str(o["offer_id"]))  # index order = tie-break order
    offer_maps = [_offer_map(o, f"{what}: offer {o.get('offer_id')!r}") for o in offers]
    n = len(offer_maps)
    offer_ids = tuple(str(o["offer_id"]) for o in offer_maps)
    categories = tuple(str(o.get("category") or "") for o in offer_maps)

    # meta
    default_channels = set(DEFAULT_CHANNELS)
    for o in offer_maps:
        default_channels.update(str(c) for c in o["channels"])
    channels = frozenset(str(c) for c in _json(meta.get("channels"), sorted(default_channels), "meta.channels"))
    meta_categories = [str(c) for c in _json(meta.get("categories"), [], "meta.categories")]
    category_names = tuple(dict.fromkeys([*meta_categories, *categories]))
    cat_pos = {c: i for i, c in enumerate(category_names)}
    exploration = _json(meta.get("exploration"), {}, "meta.exploration") or {}
    epsilon = _number(exploration.get("epsilon", 0.0) if isinstance(exploration, dict) else None,
                      what="meta.exploration.epsilon", default=0.0)
    if epsilon > 1.0:
        raise BundleError(f"{what}: exploration epsilon {epsilon} is above 1")
    default_profile = new_customer_profile()
    extra_profile = _json(meta.get("new_customer_profile"), {}, "meta.new_customer_profile")
    if not isinstance(extra_profile, dict):
        raise BundleError(f"{what}: meta.new_customer_profile must be a JSON object")
    default_profile.update(extra_profile)

    def frozen(arr: np.ndarray) -> np.ndarray:
        arr.flags.writeable = False
        return arr

    value = frozen(np.array([_number(o["value"], what=f"offer {o['offer_id']!r}.value", default=0.0)
                             for o in offer_maps], dtype=np.float64))
    lever = frozen(np.array([_number(o["lever"], what=f"offer {o['offer_id']!r}.lever", default=1.0)
                             for o in offer_maps], dtype=np.float64))
    valid_from = frozen(np.array(
        [parse_instant(o.get("valid_from"), what=f"offer {o['offer_id']!r}.valid_from") or -math.inf
         for o in offer_maps], dtype=np.float64))
    valid_to_list = []
    for o in offer_maps:
        vt = parse_instant(o.get("valid_to"), what=f"offer {o['offer_id']!r}.valid_to")
        valid_to_list.append(math.inf if vt is None else vt)
    valid_to = frozen(np.array(valid_to_list, dtype=np.float64))
    channel_masks = {}
    for ch in channels:
        channel_masks[ch] = frozen(np.fromiter((not o["channels"] or ch in o["channels"] for o in offer_maps),
                                               dtype=bool, count=n))

    # models
    model_ids = sorted(sessions)
    model_pos = {m: i for i, m in enumerate(model_ids)}
    model_index = np.full(n, -1, dtype=np.intp)
    for i, o in enumerate(offer_maps):
        mid = o.get("model_id")
        if mid in (None, ""):
            continue
        if mid not in model_pos:
            raise BundleError(f"{what}: offer {o['offer_id']!r} uses model {mid!r}, which is not in the bundle")
        model_index[i] = model_pos[mid]
    models = tuple(_model_plan(m, sessions[m], offer_maps) for m in model_ids)
    warm_context = {"channel": sorted(channels)[0] if channels else "", "hour": 12, "weekday": 0}
    for k, model in enumerate(models):
        _warm(model, np.flatnonzero(model_index == k), default_profile, warm_context)

    # rules
    rule_plans: list[RulePlan] = []
    bundle_rules: list[tuple[RulePlan, _rules.References]] = []
    per_decision_refs: list[_rules.References] = []
    for idx, row in enumerate(rules):
        rule_id = str(row["rule_id"])
        kind = str(row.get("kind") or "business")
        if kind not in RULE_KINDS:
            raise BundleError(f"{what}: rule {rule_id!r} has unknown kind {kind!r}")
        expression = str(row.get("expression") or "")
        try:
            program = _rules.compile_expression(expression, what=f"rule {rule_id!r}")
        except RuleError as exc:
            raise BundleError(f"{what}: {exc}") from exc
        refs = _rules.analyze(expression)
        reads_offer = "offer" in refs.variables
        reads_request = bool(refs.variables & {"customer", "context"})
        scope = "candidate" if reads_offer and reads_request else "decision" if reads_request else "bundle"
        applies = _applies(row.get("applies_to"), offer_ids, categories)
        plan = RulePlan(
            index=idx,
            rule_id=rule_id,
            kind=kind,
            description=str(row.get("description") or expression),
            expression=expression,
            scope=scope,
            applies=applies,
            program=program,
            offer_fields=refs.fields.get("offer"),
        )
        if scope == "candidate":
            per_decision_refs.append(refs)
            specialized: list[Any] = [None] * n
            cache: dict[str, Any] = {}
            for i in np.flatnonzero(applies).tolist():
                projection = _rules.project(offer_maps[i], plan.offer_fields)
                try:
                    key = _rules.cel_literal(projection)
                except TypeError:
                    continue
                if key not in cache:
                    cache[key] = _rules.specialize(expression, projection)
                specialized[i] = cache[key]
            plan = replace(plan, specialized=tuple(specialized),
                           membership=_membership(expression, applies, offer_maps))
        elif scope == "decision":
            per_decision_refs.append(refs)
        else:
            bundle_rules.append((plan, refs))
        rule_plans.append(plan)

    # offer-only rules: once, here
    static_ok = np.ones(n, dtype=bool)
    static_exclusions: dict[int, list[tuple[int, str | None]]] = {}
    if bundle_rules:
        fields = _rules.merge_fields([r for _, r in bundle_rules], "offer")
        contexts: dict[int, Any] = {}
        for plan, _refs in bundle_rules:
            for i in np.flatnonzero(plan.applies).tolist():
                message: str | None = None
                try:
                    if i not in contexts:
                        contexts[i] = _rules.new_context({"offer": _rules.project(offer_maps[i], fields)})
                    ok = _rules.evaluate(plan.program, contexts[i])
                except _rules.RuleFailure as exc:
                    ok, message = False, str(exc)
                if not ok:
                    static_ok[i] = False
                    static_exclusions.setdefault(i, []).append((plan.index, message))
    static_ok.flags.writeable = False

    # strategies
    conditions: list[tuple[Any, str]] = []
    for row in strategy_assignment:
        cond = str(row.get("condition") or "true")
        try:
            program = _rules.compile_expression(cond, what=f"strategy_assignment {row.get('priority')}")
        except RuleError as exc:
            raise BundleError(f"{what}: {exc}") from exc
        per_decision_refs.append(_rules.analyze(cond))
        conditions.append((program, str(row.get("strategy") or "")))
    strategy_weights: dict[str, np.ndarray] = {}
    for name, weights in strategies.items():
        arr = np.ones(len(category_names), dtype=np.float64)
        if not isinstance(weights, Mapping):
            raise BundleError(f"{what}: strategy {name!r} weights must be a JSON object")
        for cat, w in weights.items():
            if cat in cat_pos:
                arr[cat_pos[cat]] = _number(w, what=f"strategy {name!r} weight {cat!r}", default=1.0)
        strategy_weights[str(name)] = frozen(arr)

    # contact policies
    policy_plans = []
    for row in contact_policies:
        pid = str(row["policy_id"])
        scope = str(row.get("scope") or "offer")
        event = str(row.get("event") or "shown")
        if scope not in POLICY_SCOPES or event not in POLICY_EVENTS:
            raise BundleError(f"{what}: contact policy {pid!r} has scope {scope!r} / event {event!r}")
        try:
            max_count = int(row.get("max_count") or 0)
            window_days = float(row.get("window_days") or 0.0)
        except (TypeError, ValueError):
            raise BundleError(f"{what}: contact policy {pid!r} has a non-numeric max_count/window_days") from None
        description = str(row.get("description") or "") or (
            f"at most {max_count} {event} per {scope} in {window_days:g} days"
            + (f" on {row.get('channel')}" if row.get("channel") else "")
        )
        policy_plans.append(PolicyPlan(
            policy_id=pid,
            scope=scope,
            event=event,
            max_count=max_count,
            window_seconds=window_days * _DAY,
            channel=str(row.get("channel") or ""),
            description=description,
            applies=_applies(row.get("applies_to"), offer_ids, categories),
        ))

    decision_rules = tuple(r for r in rule_plans if r.scope == "decision")
    candidate_rules = tuple(r for r in rule_plans if r.scope == "candidate")
    customer_fields = _rules.merge_fields(per_decision_refs, "customer")
    used_models = set(model_index.tolist()) - {-1}
    sole_model = used_models.pop() if len(used_models) == 1 else -1
    base = DecisionPlan(
        offer_ids=offer_ids,
        names=tuple(str(o.get("name") or o["offer_id"]) for o in offer_maps),
        categories=categories,
        category_names=category_names,
        category_index=frozen(np.array([cat_pos[c] for c in categories], dtype=np.intp)),
        value=value,
        lever=lever,
        mandatory=frozen(np.array([o["mandatory"] for o in offer_maps], dtype=bool)),
        fallback=frozen(np.array([o["fallback"] for o in offer_maps], dtype=bool)),
        valid_from=valid_from,
        valid_to=valid_to,
        channel_masks=channel_masks,
        model_index=frozen(model_index),
        models=models,
        offer_maps=tuple(offer_maps),
        static_ok=static_ok,
        static_exclusions={k: tuple(v) for k, v in static_exclusions.items()},
        rules=tuple(rule_plans),
        decision_rules=decision_rules,
        candidate_rules=candidate_rules,
        strategy_conditions=tuple(conditions),
        strategy_weights=strategy_weights,
        policies=tuple(policy_plans),
        max_window_seconds=max((p.window_seconds for p in policy_plans), default=0.0),
        customer_fields=customer_fields,
        context_fields=_rules.merge_fields(per_decision_refs, "context"),
        needs_cel=bool(decision_rules or candidate_rules or conditions),
        channels=channels,
        epsilon=epsilon,
        default_profile=default_profile,
        offer_position={o: i for i, o in enumerate(offer_ids)},
        sole_model=sole_model,
        reads_points_balance=(
            customer_fields is None or "points_balance" in customer_fields
            or any(i.source == "customer" and i.field == "points_balance" for m in models for i in m.inputs)
        ),
        validity_edges=tuple(sorted({float(t) for t in (*valid_from.tolist(), *valid_to.tolist()) if t == t})),
        all_offers_model=sole_model if sole_model >= 0 and bool((model_index == sole_model).all()) else -1,
        numeric_inputs={source: {i.field: i.name for m in models for i in m.inputs
                                 if i.source == source and i.dtype != "string"}
                        for source in ("customer", "context")},
    )
    try:
        experiments = parse_experiments(_json(meta.get("experiments"), None, "meta.experiments"))
    except ValueError as exc:
        raise BundleError(f"{what}: {exc}") from None
    if not experiments:
        return base
    arm_plans = tuple(
        tuple(_arm_plan(base, arm, model_pos, cat_pos, default_profile, warm_context,
                        what=f"{what}: experiment {exp.experiment_id!r} arm {arm.arm_id!r}") for arm in exp.arms)
        for exp in experiments
    )
    return replace(base, experiments=experiments, arm_plans=arm_plans)


def _arm_plan(base: DecisionPlan, arm: Any, model_pos: Mapping[str, int], cat_pos: Mapping[str, int],
              profile: Mapping[str, Any], warm_context: Mapping[str, Any], *, what: str) -> DecisionPlan:
    """The plan a challenger arm decides with: ``base`` with the arm's models, levers and
    strategy weights; ``base`` itself for any other arm (or a challenger that replaces nothing)."""
    if arm.kind != "challenger" or not (arm.models or arm.levers or arm.strategy_weights):
        return base
    model_index = base.model_index
    if arm.models:
        model_index = base.model_index.copy()
        for old, new in arm.models.items():
            if old not in model_pos or new not in model_pos:
                raise BundleError(f"{what}: replaces model {old!r} by {new!r}; both must be in the bundle")
            model_index[base.model_index == model_pos[old]] = model_pos[new]
        model_index.flags.writeable = False
        for new in set(arm.models.values()):
            k = model_pos[new]
            _warm(base.models[k], np.flatnonzero(model_index == k), profile, warm_context)
    lever = base.lever
    if arm.levers:
        lever = base.lever.copy()
        for offer_id, value in arm.levers.items():
            if offer_id not in base.offer_position:
                raise BundleError(f"{what}: sets the lever of offer {offer_id!r}, which is not in the bundle")
            lever[base.offer_position[offer_id]] = _number(value, what=f"{what} lever {offer_id!r}", default=1.0)
        lever.flags.writeable = False
    strategy_weights = dict(base.strategy_weights)
    for strategy, weights in (arm.strategy_weights or {}).items():
        if strategy not in strategy_weights:
            raise BundleError(f"{what}: sets weights of strategy {strategy!r}, which is not in the bundle")
        arr = strategy_weights[strategy].copy()
        for category, w in weights.items():
            if category in cat_pos:
                arr[cat_pos[category]] = _number(w, what=f"{what} weight {strategy!r}.{category!r}", default=1.0)
        arr.flags.writeable = False
        strategy_weights[strategy] = arr
    used = set(model_index.tolist()) - {-1}
    sole = used.pop() if len(used) == 1 else -1
    return replace(base, model_index=model_index, lever=lever, strategy_weights=strategy_weights, sole_model=sole,
                   all_offers_model=sole if sole >= 0 and bool((model_index == sole).all()) else -1)
