"""Catalog authoring: load a YAML/JSON catalog, validate it, compile it to ``catalog.sqlite``.

Validation collects *every* problem before it reports, and each message names the file,
the item and the field::

    catalog.yaml: offers[3] (offer_id=GOLD): margin: must be a number >= 0, got -1

The compiled tables and ``meta`` rows are the contract read by the SDK at bundle load (see
``docs/bundle-format.md``).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import yaml
from nbo.sdk import CatalogError, RuleError
from nbo.sdk.core import (
    CATEGORIES,
    CONDITION_VARIABLES,
    DEFAULT_CHANNELS,
    POLICY_EVENTS,
    POLICY_SCOPES,
    RULE_KINDS,
    RULE_VARIABLES,
    compile_expression,
    id_problem,
    is_card_data,
    new_customer_profile,
    parse_iso,
)

from ._cel_types import (
    BOOL,
    DOUBLE,
    STRING,
    CelType,
    Fields,
    caret_excerpt,
    catalog_fields,
    check_expression,
    list_of,
    one_of,
    parse_type,
)
from ._experiments import validate_experiments
from ._rule_budget import slow_rules

__all__ = [
    "ValidCatalog",
    "compile_catalog",
    "load_catalog_file",
    "validate_catalog",
]

MAX_CATALOG_FILE_BYTES = 64 * 1024 * 1024

_TOP_KEYS = ("name", "channels", "exploration", "attribution", "new_customer_profile", "profile_fields",
             "context_fields", "offers", "rules", "strategies", "strategy_assignment", "contact_policies",
             "experiments")
_OFFER_FIELDS = ("offer_id", "name", "category", "channels", "valid_from", "valid_to", "expected_volume",
                 "margin", "duration", "lever", "model_id", "mandatory", "fallback", "attributes")
_OFFER_REQUIRED = ("offer_id", "name", "category", "expected_volume", "margin", "duration")
_RULE_FIELDS = ("rule_id", "kind", "applies_to", "expression", "description")
_ASSIGNMENT_FIELDS = ("condition", "strategy")
_POLICY_FIELDS = ("policy_id", "applies_to", "scope", "event", "max_count", "window_days", "channel",
                  "description")
_DEFAULT_WINDOW_DAYS = 7.0
# CEL macros bind their own loop variable (`xs.exists(x, x > 1)`); variables() reports it too.
_MACRO_VAR_RE = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")
_TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_DATE_ONLY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True, slots=True)
class ValidCatalog:
    """A validated, normalised catalog: rows ready for the ``catalog.sqlite`` tables."""

    source: str
    offers: tuple[dict[str, Any], ...]
    rules: tuple[dict[str, Any], ...]
    strategies: tuple[dict[str, Any], ...]
    strategy_assignment: tuple[dict[str, Any], ...]
    contact_policies: tuple[dict[str, Any], ...]
    meta: dict[str, str] = field(default_factory=dict)


class _Errors:
    """Collects validation errors so that all of them are reported together."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, item: str, fld: str | None, message: str) -> None:
        where = item if fld is None else f"{item}: {fld}"
        self.lines.append(f"{self.source}: {where}: {message}")

    def raise_if_any(self) -> None:
        if not self.lines:
            return
        if len(self.lines) == 1:
            raise CatalogError(self.lines[0])
        head = f"{self.source}: {len(self.lines)} catalog errors:"
        # a CEL problem's expression and caret stay indented under their own error
        raise CatalogError("\n".join([head, *(f"  {text}" for line in self.lines for text in line.split("\n"))]))


# -- loading -------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CATALOG_FILE_BYTES + 1)
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read catalog: {exc.strerror or exc}") from exc
    if len(data) > MAX_CATALOG_FILE_BYTES:
        raise CatalogError(f"{path}: catalog file is larger than {MAX_CATALOG_FILE_BYTES // (1024 * 1024)} MB")
    return data


def _parse_catalog_bytes(data: bytes, path: Path) -> dict[str, Any]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: catalog is not UTF-8 text") from exc
    if path.suffix.lower() == ".json":
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CatalogError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    else:
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise CatalogError(f"{path}: invalid YAML{where}: {problem}") from exc
    if not isinstance(parsed, dict):
        raise CatalogError(f"{path}: top level: must be a mapping with an 'offers' list")
    return parsed


def load_catalog_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a catalog authoring file: ``.json`` is JSON, anything else YAML (a JSON superset).

    Returns the raw mapping; pass it to :func:`validate_catalog`. ``CatalogError`` if the file
    cannot be read or parsed.
    """
    p = Path(path)
    return _parse_catalog_bytes(_read_bytes(p), p)


# -- field checks --------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _one_number_option(errors: _Errors, catalog: Mapping[str, Any], key: str, field: str, *, default: float,
                       ok: Callable[[float], bool], wanted: str) -> float:
    """A top-level ``key: {field: number}`` mapping (``exploration``, ``attribution``): its value or ``default``."""
    option = catalog.get(key)
    if option is None:
        return default
    if not isinstance(option, dict):
        errors.add("top level", key, f"must be a mapping {{{field}: number}}")
        return default
    _unknown_fields(errors, key, option, (field,))
    value = _number(option.get(field, default))
    if value is None or not ok(value):
        errors.add(key, field, f"must be {wanted}, got {_describe(option.get(field))}")
        return default
    return value


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _unknown_fields(errors: _Errors, item: str, data: Mapping[Any, Any], known: Iterable[str]) -> None:
    known = tuple(known)
    for key in data:
        if key in known:
            continue
        hint = difflib.get_close_matches(str(key), known, n=1)
        suggestion = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(known)})"
        errors.add(item, str(key), f"unknown field{suggestion}")


def _timestamp(value: Any, *, end_of_day: bool) -> str:
    """Normalise a YAML date/datetime or an ISO string to 'YYYY-MM-DDTHH:MM:SSZ' (UTC)."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    elif isinstance(value, date):
        moment = datetime.combine(value, time(23, 59, 59) if end_of_day else time(0), tzinfo=UTC)
    elif isinstance(value, str):
        text = value.strip()
        if _DATE_ONLY_RE.match(text) and end_of_day:
            text += "T23:59:59"
        moment = parse_iso(text)
    else:
        raise ValueError(f"expected an ISO-8601 date or time, got {type(value).__name__}")
    return moment.astimezone(UTC).strftime(_TS_FORMAT)


# The CEL parser's message: "... ERROR: <input>:LINE:COLUMN: Syntax error: REASON | <excerpt>"
_CEL_POSITION_RE = re.compile(r"<input>:(\d+):(\d+): (?:Syntax error: )?(.*?)(?: \| |$)")


def _syntax_problem(expression: str, message: str) -> str:
    """A CEL compile error as one reason line and the expression with a caret under the position."""
    match = _CEL_POSITION_RE.search(message)
    if match is None:
        return message.replace("does not compile", "CEL does not compile", 1)
    line, column, reason = int(match.group(1)), int(match.group(2)), match.group(3).strip()
    expecting = re.search(r"expecting \{.*", reason)
    if expecting and re.search(r"IDENTIFIER|NUM_|STRING|'true'", expecting.group(0)):
        # ANTLR lists every token it would take (cut short above); say what they are
        reason = reason[:expecting.start()] + "expecting a value"
    starts = [0] + [i + 1 for i, ch in enumerate(expression) if ch == "\n"]
    offset = starts[min(line, len(starts)) - 1] + column - 1
    where = f"line {line}, column {column}" if len(starts) > 1 else f"column {column}"
    return f"CEL syntax error at {where}: {reason}\n{caret_excerpt(expression, offset)}"


def _cel_problem(expression: Any, allowed: Collection[str], fields: Fields | None = None) -> str | None:
    """Why a CEL expression is unacceptable (syntax, variables, then types), or ``None``."""
    if not isinstance(expression, str) or not expression.strip():
        return "must be a non-empty CEL expression string"
    try:
        # the SDK's CEL boundary: the length cap, and the parser's panics as RuleError
        program = compile_expression(expression, what="CEL")
    except RuleError as exc:
        return _syntax_problem(expression, str(exc).removeprefix("CEL: "))
    variables = set(program.variables()) - set(_MACRO_VAR_RE.findall(expression))
    unknown = sorted(variables - set(allowed))
    if unknown:
        return f"CEL may only reference {', '.join(sorted(allowed))}; it references {', '.join(unknown)}"
    if fields is not None:
        return check_expression(expression, fields, allowed=tuple(allowed))
    return None


def _json_value(value: Any) -> str | None:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return None


def _string_list(value: Any) -> list[str] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        return None
    return list(value)


# -- validation ----------------------------------------------------------------------------


def _validate_offers(
    errors: _Errors, raw: Any, *, declared_channels: list[str] | None, model_ids: set[str] | None
) -> list[dict[str, Any]]:
    if raw is None:
        errors.add("top level", "offers", "required: a list of offers")
        return []
    if not isinstance(raw, list):
        errors.add("top level", "offers", f"must be a list, got {type(raw).__name__}")
        return []
    offers: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        label = f"offers[{i}]"
        if not isinstance(item, dict):
            errors.add(label, None, f"must be a mapping, got {type(item).__name__}")
            continue
        oid = item.get("offer_id")
        card = isinstance(oid, str) and is_card_data(oid)
        if isinstance(oid, str) and oid and not card and id_problem(oid) is None:
            label = f"offers[{i}] (offer_id={oid})"
        _unknown_fields(errors, label, item, _OFFER_FIELDS)
        for key in _OFFER_REQUIRED:
            if key not in item:
                errors.add(label, key, "required field is missing")
        row: dict[str, Any] = {}
        if "offer_id" in item:
            if not isinstance(oid, str) or not oid.strip():
                errors.add(label, "offer_id", f"must be a non-empty string, got {_describe(oid)}")
            elif card:
                errors.add(label, "offer_id", "looks like card data (a card number or CVV); it would be in every "
                           "decision event")
            elif (problem := id_problem(oid)) is not None:
                errors.add(label, "offer_id", problem)
            elif oid in seen:
                errors.add(label, "offer_id", f"duplicate id (also offers[{seen[oid]}])")
            elif oid in CATEGORIES:
                errors.add(label, "offer_id", "must not equal a category name (rule applies_to would be ambiguous)")
            else:
                seen[oid] = i
        row["offer_id"] = oid
        name = item.get("name")
        if "name" in item and (not isinstance(name, str) or not name.strip()):
            errors.add(label, "name", f"must be a non-empty string, got {_describe(name)}")
        row["name"] = name
        category = item.get("category")
        if "category" in item and category not in CATEGORIES:
            errors.add(label, "category", f"unknown category {_describe(category)} (known: {', '.join(CATEGORIES)})")
        row["category"] = category
        channels = item.get("channels", [])
        channel_list = _string_list(channels)
        if channel_list is None:
            errors.add(label, "channels", "must be a list of channel names ([] = every channel)")
            channel_list = []
        elif declared_channels is not None:
            for ch in channel_list:
                if ch not in declared_channels:
                    errors.add(label, "channels", f"unknown channel {ch!r} (declared: {', '.join(declared_channels)})")
        row["channels"] = channel_list
        for key, end_of_day in (("valid_from", False), ("valid_to", True)):
            value = item.get(key)
            row[key] = None
            if value is not None:
                try:
                    row[key] = _timestamp(value, end_of_day=end_of_day)
                except ValueError:
                    errors.add(label, key, f"not an ISO-8601 date or time: {_describe(value)}")
        if row["valid_from"] and row["valid_to"] and row["valid_to"] < row["valid_from"]:
            errors.add(label, "valid_to", f"{row['valid_to']} is before valid_from {row['valid_from']}")
        for key in ("expected_volume", "margin", "duration", "lever"):
            if key not in item:
                row[key] = 1.0 if key == "lever" else None
                continue
            number = _number(item[key])
            if number is None:
                errors.add(label, key, f"must be a number, got {_describe(item[key])}")
            elif number < 0:
                errors.add(label, key, f"must be a number >= 0, got {item[key]}")
            row[key] = number
        model_id = item.get("model_id")
        if model_id is not None:
            if not isinstance(model_id, str) or not model_id:
                errors.add(label, "model_id", f"must be a model id string or null, got {_describe(model_id)}")
            elif model_ids is not None and model_id not in model_ids:
                known = ", ".join(sorted(model_ids)) or "none"
                errors.add(label, "model_id", f"model {model_id!r} is not in the bundle (models: {known})")
        row["model_id"] = model_id
        for key in ("mandatory", "fallback"):
            value = item.get(key, False)
            if not isinstance(value, bool):
                errors.add(label, key, f"must be true or false, got {_describe(value)}")
            row[key] = bool(value) if isinstance(value, bool) else False
        attributes = item.get("attributes", {})
        if not isinstance(attributes, dict) or not all(isinstance(k, str) for k in attributes):
            errors.add(label, "attributes", "must be a mapping with string keys")
            attributes = {}
        elif _json_value(attributes) is None:
            errors.add(label, "attributes", "values must be JSON values (strings, numbers, booleans, lists, maps)")
            attributes = {}
        row["attributes"] = attributes
        offers.append(row)
    if offers and not any(o["fallback"] for o in offers):
        errors.add("offers", "fallback", "no fallback offer: mark at least one offer `fallback: true` so a "
                   "channel never shows an empty slot")
    if not raw:
        errors.add("top level", "offers", "must list at least one offer (including a fallback offer)")
    return offers


def _check_applies_to(errors: _Errors, label: str, value: Any, offer_ids: set[str]) -> str:
    if value == "*" or value in CATEGORIES or value in offer_ids:
        return str(value)
    errors.add(label, "applies_to",
               f"{_describe(value)} is neither '*', a category ({', '.join(CATEGORIES)}) nor a known offer_id")
    return str(value)


def _validate_rules(errors: _Errors, raw: Any, offer_ids: set[str], fields: Fields) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        errors.add("top level", "rules", f"must be a list, got {type(raw).__name__}")
        return []
    rules: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        label = f"rules[{i}]"
        if not isinstance(item, dict):
            errors.add(label, None, f"must be a mapping, got {type(item).__name__}")
            continue
        rid = item.get("rule_id")
        if isinstance(rid, str) and rid:
            label = f"rules[{i}] (rule_id={rid})"
        _unknown_fields(errors, label, item, _RULE_FIELDS)
        if not isinstance(rid, str) or not rid.strip():
            errors.add(label, "rule_id", f"must be a non-empty string, got {_describe(rid)}")
        elif rid in seen:
            errors.add(label, "rule_id", f"duplicate id (also rules[{seen[rid]}])")
        else:
            seen[rid] = i
        kind = item.get("kind")
        if kind not in RULE_KINDS:
            errors.add(label, "kind", f"must be one of {', '.join(RULE_KINDS)}, got {_describe(kind)}")
        applies_to = _check_applies_to(errors, label, item.get("applies_to", "*"), offer_ids)
        expression = item.get("expression")
        problem = _cel_problem(expression, RULE_VARIABLES, fields)
        if problem:
            errors.add(label, "expression", problem)
        description = item.get("description", "")
        if not isinstance(description, str):
            errors.add(label, "description", "must be a string")
            description = ""
        rules.append({"rule_id": rid, "kind": kind, "applies_to": applies_to, "expression": expression,
                      "description": description})
    return rules


def _validate_strategies(errors: _Errors, raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        errors.add("top level", "strategies", "must be a mapping of strategy name to {category: weight}")
        return []
    strategies: list[dict[str, Any]] = []
    for name, weights in raw.items():
        label = f"strategies[{name}]"
        if not isinstance(name, str) or not name.strip():
            errors.add(label, None, "strategy name must be a non-empty string")
            continue
        if not isinstance(weights, dict):
            errors.add(label, None, "must be a mapping of category to weight")
            continue
        clean: dict[str, float] = {}
        for category, weight in weights.items():
            if category not in CATEGORIES:
                errors.add(label, str(category),
                           f"unknown category {_describe(category)} (known: {', '.join(CATEGORIES)})")
                continue
            number = _number(weight)
            if number is None:
                errors.add(label, category, f"weight must be a number, got {_describe(weight)}")
            elif number < 0:
                errors.add(label, category, f"weight must be >= 0, got {weight}")
            else:
                clean[category] = number
        strategies.append({"strategy": name, "weights": clean})
    return strategies


def _validate_assignment(errors: _Errors, raw: Any, strategy_names: set[str], fields: Fields) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        errors.add("top level", "strategy_assignment", "must be an ordered list of {condition, strategy}")
        return []
    rows: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        label = f"strategy_assignment[{i}]"
        if not isinstance(item, dict):
            errors.add(label, None, f"must be a mapping, got {type(item).__name__}")
            continue
        _unknown_fields(errors, label, item, _ASSIGNMENT_FIELDS)
        condition = item.get("condition")
        problem = _cel_problem(condition, CONDITION_VARIABLES, fields)
        if problem:
            errors.add(label, "condition", problem)
        strategy = item.get("strategy")
        if strategy not in strategy_names:
            known = ", ".join(sorted(strategy_names)) or "none defined"
            errors.add(label, "strategy", f"strategy {_describe(strategy)} does not exist (strategies: {known})")
        rows.append({"priority": i, "condition": condition, "strategy": strategy})
    return rows


def _validate_policies(
    errors: _Errors, raw: Any, offer_ids: set[str], channels: list[str]
) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        errors.add("top level", "contact_policies", f"must be a list, got {type(raw).__name__}")
        return []
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        label = f"contact_policies[{i}]"
        if not isinstance(item, dict):
            errors.add(label, None, f"must be a mapping, got {type(item).__name__}")
            continue
        pid = item.get("policy_id")
        if isinstance(pid, str) and pid:
            label = f"contact_policies[{i}] (policy_id={pid})"
        _unknown_fields(errors, label, item, _POLICY_FIELDS)
        if not isinstance(pid, str) or not pid.strip():
            errors.add(label, "policy_id", f"must be a non-empty string, got {_describe(pid)}")
        elif pid in seen:
            errors.add(label, "policy_id", f"duplicate id (also contact_policies[{seen[pid]}])")
        else:
            seen[pid] = i
        applies_to = _check_applies_to(errors, label, item.get("applies_to", "*"), offer_ids)
        scope, event = item.get("scope"), item.get("event")
        if scope not in POLICY_SCOPES:
            errors.add(label, "scope", f"must be one of {', '.join(POLICY_SCOPES)}, got {_describe(scope)}")
        if event not in POLICY_EVENTS:
            errors.add(label, "event", f"must be one of {', '.join(POLICY_EVENTS)}, got {_describe(event)}")
        max_count = item.get("max_count")
        if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 1:
            errors.add(label, "max_count", f"must be an integer >= 1, got {_describe(max_count)}")
        window = _number(item.get("window_days"))
        if window is None or window <= 0:
            errors.add(label, "window_days", f"must be a number > 0, got {_describe(item.get('window_days'))}")
        channel = item.get("channel", "") or ""
        if not isinstance(channel, str):
            errors.add(label, "channel", "must be a channel name or '' for any channel")
            channel = ""
        elif channel and channel not in channels:
            errors.add(label, "channel", f"unknown channel {channel!r} (known: {', '.join(channels)})")
        description = item.get("description", "")
        if not isinstance(description, str):
            errors.add(label, "description", "must be a string")
            description = ""
        rows.append({"policy_id": pid, "applies_to": applies_to, "scope": scope, "event": event,
                     "max_count": max_count, "window_days": window, "channel": channel,
                     "description": description})
    return rows


def _declared_fields(errors: _Errors, catalog: Mapping[str, Any], section: str,
                     reserved: Collection[str]) -> dict[str, CelType]:
    """The ``profile_fields`` / ``context_fields`` section: field name -> type."""
    raw = catalog.get(section)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.add("top level", section, "must be a mapping of field name to type, e.g. {vip: bool}")
        return {}
    out: dict[str, CelType] = {}
    for name, type_name in raw.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            errors.add(section, str(name), "a field name is letters, digits and _ (not starting with a digit)")
            continue
        if name in reserved:
            errors.add(section, name, "the SDK supplies this field itself; remove it here")
            continue
        try:
            out[name] = parse_type(type_name)
        except ValueError as exc:
            errors.add(section, name, str(exc))
    return out


def validate_catalog(
    catalog: Mapping[str, Any],
    *,
    source: str = "<catalog>",
    model_ids: Iterable[str] | None = None,
    model_inputs: Mapping[str, str] | None = None,
    name: str | None = None,
    source_sha256: str | None = None,
) -> ValidCatalog:
    """Validate an authored catalog and normalise it into table rows.

    ``source`` names the file in messages; ``model_ids`` are the models of the bundle being
    built (``None`` skips that check) and ``model_inputs`` their inputs (name -> ``float`` or
    ``string``), whose ``customer__X`` / ``context__X`` fields rules may read. Every rule and
    strategy condition is type-checked against the fields ``customer``, ``offer`` and
    ``context`` have (docs/catalog.md, "Fields rules can read"). ``name`` is used for
    ``meta.name`` when the catalog has none. Every problem is collected and raised together
    as one ``CatalogError`` whose message has one line per problem, each naming the file, the
    item and the field (a CEL problem adds the expression with a caret under the position).
    """
    errors = _Errors(source)
    if not isinstance(catalog, Mapping):
        errors.add("top level", None, "must be a mapping with an 'offers' list")
        errors.raise_if_any()
    _unknown_fields(errors, "top level", catalog, _TOP_KEYS)

    cat_name = catalog.get("name")
    if cat_name is not None and (not isinstance(cat_name, str) or not cat_name.strip()):
        errors.add("top level", "name", "must be a non-empty string")
        cat_name = None

    declared: list[str] | None = None
    if "channels" in catalog:
        declared = _string_list(catalog["channels"])
        if declared is None or not declared:
            errors.add("top level", "channels", "must be a non-empty list of channel names")
            declared = None
        elif len(set(declared)) != len(declared):
            errors.add("top level", "channels", "lists a channel twice")

    epsilon = _one_number_option(errors, catalog, "exploration", "epsilon", default=0.0,
                                 ok=lambda v: 0.0 <= v <= 1.0, wanted="a number in [0, 1]")
    window_days = _one_number_option(errors, catalog, "attribution", "window_days", default=_DEFAULT_WINDOW_DAYS,
                                     ok=lambda v: 0.0 < v <= 366.0, wanted="a number of days in (0, 366]")

    profile = catalog.get("new_customer_profile", {})
    if profile is None:
        profile = {}
    if not isinstance(profile, dict) or not all(isinstance(k, str) for k in profile):
        errors.add("top level", "new_customer_profile", "must be a mapping of profile field to value")
        profile = {}
    elif _json_value(profile) is None:
        errors.add("top level", "new_customer_profile", "values must be JSON values")
        profile = {}

    ids = set(model_ids) if model_ids is not None else None
    offers = _validate_offers(errors, catalog.get("offers"), declared_channels=declared, model_ids=ids)
    offer_ids = {o["offer_id"] for o in offers if isinstance(o["offer_id"], str)}
    if declared is not None:
        channels = list(declared)
    else:
        extra = sorted({ch for o in offers for ch in o["channels"]} - set(DEFAULT_CHANNELS))
        channels = [*DEFAULT_CHANNELS, *extra]
    fields = catalog_fields(
        offers=offers, offer_columns=_OFFER_FIELD_TYPES, channels=channels, new_customer_profile=profile,
        profile_fields=_declared_fields(errors, catalog, "profile_fields", _MEASURE_NAMES),
        context_fields=_declared_fields(errors, catalog, "context_fields", ("channel", "hour", "weekday")),
        model_inputs=dict(model_inputs) if model_inputs is not None else None,
    )
    rules = _validate_rules(errors, catalog.get("rules"), offer_ids, fields)
    strategies = _validate_strategies(errors, catalog.get("strategies"))
    assignment = _validate_assignment(errors, catalog.get("strategy_assignment"),
                                      {s["strategy"] for s in strategies}, fields)
    policies = _validate_policies(errors, catalog.get("contact_policies"), offer_ids, channels)
    experiments = validate_experiments(errors.add, catalog.get("experiments"), model_ids=ids, offers=offers,
                                       strategy_names={s["strategy"] for s in strategies})
    errors.raise_if_any()
    # the rule cost budget's measured half (its static half ran with each compile above)
    for table, index, fld, message in slow_rules(rules=rules, conditions=assignment, offers=offers,
                                                 profile=profile, channels=channels):
        item = rules[index]["rule_id"] if table == "rules" else None
        errors.add(f"{table}[{index}]" + (f" (rule_id={item})" if item else ""), fld, message)
    errors.raise_if_any()

    if source_sha256 is None:
        source_sha256 = hashlib.sha256(
            json.dumps(catalog, sort_keys=True, default=str).encode("utf-8")
        ).hexdigest()
    meta = {
        "name": cat_name or name or Path(source).stem,
        "channels": json.dumps(channels),
        "categories": json.dumps(list(CATEGORIES)),
        "exploration": json.dumps({"epsilon": epsilon}),
        "attribution": json.dumps({"window_days": window_days}),
        "new_customer_profile": json.dumps(profile, sort_keys=True),
        "source_sha256": source_sha256,
    }
    if experiments:
        meta["experiments"] = json.dumps(experiments, sort_keys=True)
    return ValidCatalog(
        source=source,
        offers=tuple(offers),
        rules=tuple(rules),
        strategies=tuple(strategies),
        strategy_assignment=tuple(assignment),
        contact_policies=tuple(policies),
        meta=meta,
    )


# -- compile -------------------------------------------------------------------------------

_OFFER_COLUMNS: dict[str, Any] = {
    "offer_id": str, "name": str, "category": str, "channels": str, "valid_from": str, "valid_to": str,
    "expected_volume": float, "margin": float, "duration": float, "value": float, "lever": float,
    "model_id": str, "mandatory": int, "fallback": int, "attributes": str,
}
# The offer as a rule sees it: the columns above, JSON and flags decoded (the SDK's offer map);
# ``attributes`` is filled per catalog from the offers' attributes.
_OFFER_FIELD_TYPES: dict[str, CelType] = {
    **{column: (STRING if kind is str else DOUBLE) for column, kind in _OFFER_COLUMNS.items()},
    "category": one_of(CATEGORIES), "channels": list_of(STRING), "mandatory": BOOL, "fallback": BOOL,
}
_MEASURE_NAMES = tuple(new_customer_profile())


def _write_tables(path: Path, catalog: ValidCatalog) -> None:
    import sqlite_utils  # imported here: it is the central team's tool, never on the device path

    db = sqlite_utils.Database(path)
    try:
        offers = db.table("offers")
        offers.create(_OFFER_COLUMNS, pk="offer_id", not_null={"name", "category"})
        offers.insert_all(
            {
                **o,
                "channels": json.dumps(o["channels"]),
                "attributes": json.dumps(o["attributes"], sort_keys=True),
                "value": o["expected_volume"] * o["margin"] * o["duration"],
                "mandatory": int(o["mandatory"]),
                "fallback": int(o["fallback"]),
            }
            for o in catalog.offers
        )
        offers.create_index(["category"])
        offers.create_index(["model_id"])

        rules = db.table("rules")
        rules.create({"rule_id": str, "kind": str, "applies_to": str, "expression": str, "description": str},
                     pk="rule_id", not_null={"kind", "applies_to", "expression"})
        rules.insert_all(catalog.rules)
        rules.create_index(["applies_to"])

        strategies = db.table("strategies")
        strategies.create({"strategy": str, "weights": str}, pk="strategy", not_null={"weights"})
        strategies.insert_all(
            {"strategy": s["strategy"], "weights": json.dumps(s["weights"], sort_keys=True)}
            for s in catalog.strategies
        )

        assignment = db.table("strategy_assignment")
        assignment.create({"priority": int, "condition": str, "strategy": str}, pk="priority",
                          not_null={"condition", "strategy"})
        assignment.insert_all(catalog.strategy_assignment)

        policies = db.table("contact_policies")
        policies.create(
            {"policy_id": str, "applies_to": str, "scope": str, "event": str, "max_count": int,
             "window_days": float, "channel": str, "description": str},
            pk="policy_id", not_null={"applies_to", "scope", "event", "max_count", "window_days"},
        )
        policies.insert_all(catalog.contact_policies)
        policies.create_index(["applies_to"])

        meta = db.table("meta")
        meta.create({"key": str, "value": str}, pk="key", not_null={"value"})
        meta.insert_all({"key": k, "value": v} for k, v in sorted(catalog.meta.items()))
    finally:
        db.close()


def compile_catalog(
    catalog: ValidCatalog | Mapping[str, Any] | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model_ids: Iterable[str] | None = None,
    name: str | None = None,
) -> Path:
    """Validate (unless already validated) and compile a catalog to ``out`` (``catalog.sqlite``).

    ``catalog`` is a catalog file path, a raw mapping, or a :class:`ValidCatalog`. The file is
    written next to ``out`` and renamed into place, so ``out`` is either complete or untouched.
    """
    if isinstance(catalog, ValidCatalog):
        valid = catalog
    elif isinstance(catalog, Mapping):
        valid = validate_catalog(catalog, model_ids=model_ids, name=name)
    else:
        path = Path(catalog)
        data = _read_bytes(path)
        valid = validate_catalog(
            _parse_catalog_bytes(data, path),
            source=path.name,
            model_ids=model_ids,
            name=name,
            source_sha256=hashlib.sha256(data).hexdigest(),
        )
    target = Path(out)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        _write_tables(tmp, valid)
        os.replace(tmp, target)
    except OSError as exc:
        raise CatalogError(f"{valid.source}: cannot write {target}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target
