"""CEL rules: compile once per bundle, classify by what they read, evaluate cheaply.

Rules and strategy conditions are CEL expressions over three variables — ``customer``,
``offer`` and ``context`` — compiled with the Rust-backed ``cel`` module, never ``eval``.

Why the shapes below (measured, bench/RESULTS.md): the ``cel`` module evaluates a compiled program
against a *prepared* ``cel.Context`` in well under a microsecond, but converting Python data
into CEL values costs microseconds per field, and a fresh dict costs ~12 µs per evaluation.
So the engine

* classifies each expression by the variables it references (:func:`analyze`):
  offer-only rules run once per bundle at load, customer/context rules once per decision
  against one prepared context, and only *mixed* rules per candidate;
* converts only the fields expressions actually read (:func:`project`), so a 30-field
  profile costs what its 3 referenced fields cost;
* evaluates a mixed rule per candidate with a program *specialised* to that offer at load —
  ``[<offer literal>].all(offer, <rule>)`` binds ``offer`` to a constant inside the program —
  so the per-decision context (customer, context) is converted once and shared by every rule,
  condition and candidate.

A rule that fails at run time (missing field, wrong type, non-boolean result) does not
crash anything: :func:`evaluate` raises :class:`RuleFailure`, which the engine turns into an
exclusion "rule failed: …".

This module is the only boundary to the ``cel`` extension, and nothing the extension raises
crosses it unconverted. The Rust parser *panics* on some input — a syntax error past column
65,535 raises ``PanicException``, a ``BaseException`` that ``except Exception`` does not
catch — and it overflows its stack (the process dies) on a few tens of thousands of chained
operators. So every call here also catches the panic (:class:`RuleError` when compiling,
:class:`RuleFailure` when evaluating), and :func:`compile_expression` refuses an expression
longer than :data:`MAX_EXPRESSION_CHARS` before the parser sees it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import RuleError, RuleFailure
from ._vocabulary import RULE_VARIABLES


def _load_cel() -> Any:
    """The ``cel`` extension module, without the package's command-line extras.

    ``import cel`` runs the package ``__init__``, which imports its REPL (typer, rich,
    prompt_toolkit, pygments): +170 ms and +24 MB resident on a terminal that only needs the
    compiled evaluator. So load the compiled ``cel.cel`` extension directly and register it
    under its own name, so that a later ``import cel`` elsewhere reuses it (a second
    initialisation of the extension would fail). Any surprise in the package layout falls
    back to the plain import.
    """
    if "cel" in sys.modules:
        return sys.modules["cel"]
    if "cel.cel" in sys.modules:
        return sys.modules["cel.cel"]
    try:
        spec = importlib.util.find_spec("cel")
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        candidates = sorted(Path(locations[0]).glob("cel.*.so")) + sorted(Path(locations[0]).glob("cel.*.pyd"))
        ext_spec = importlib.util.spec_from_file_location("cel.cel", candidates[0])
        if ext_spec is None or ext_spec.loader is None:
            raise ImportError("no loader for the cel extension")
        module = importlib.util.module_from_spec(ext_spec)
        sys.modules["cel.cel"] = module
        try:
            ext_spec.loader.exec_module(module)
            if not all(hasattr(module, name) for name in ("compile", "Context", "Program")):
                raise ImportError("unexpected cel extension")
        except BaseException:
            del sys.modules["cel.cel"]
            raise
        return module
    except (ImportError, IndexError, OSError, ValueError):
        import cel

        return cel


cel = _load_cel()

__all__ = [
    "MAX_COMPREHENSION_NESTING",
    "MAX_EXPRESSION_CHARS",
    "MAX_LITERAL_ELEMENTS",
    "MAX_LITERAL_STEPS",
    "References",
    "RuleFailure",
    "analyze",
    "cel_literal",
    "compile_expression",
    "cost_problem",
    "evaluate",
    "project",
    "specialize",
]


Program = Any  # cel.Program; the stub is not precise enough to be worth importing


MAX_EXPRESSION_CHARS = 8192
"""Longest rule or strategy condition accepted, in characters (bundle build and install).

Far below both failure points of the parser (a panic past column 65,535, a stack overflow
near 30,000 chained operators); real rules are a line or two.
"""

_MAX_DETAIL = 240


def _is_panic(exc: BaseException) -> bool:
    """A Rust panic surfaced by the ``cel`` extension (pyo3's ``PanicException``)."""
    return type(exc).__name__ == "PanicException"


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


@dataclass(frozen=True, slots=True)
class References:
    """What an expression reads: which of the three variables, and which of their fields.

    ``fields[var]`` is the set of top-level fields read from ``var``, or ``None`` when the
    expression uses ``var`` as a whole (``size(customer)``, ``"x" in customer``, a
    comprehension variable that shadows it, …) and every field must be supplied.
    """

    variables: frozenset[str]
    fields: Mapping[str, frozenset[str] | None]


_IDENT_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_IDENT_CHARS = _IDENT_START | frozenset("0123456789")


def _tokens(expression: str) -> list[tuple[str, str]]:
    """A minimal CEL tokenizer: ('id', name), ('str', value), ('op', char). Numbers are ops."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(expression)
    while i < n:
        ch = expression[i]
        if ch.isspace():
            i += 1
            continue
        # string literals, with optional r/b prefixes and triple quotes
        j = i
        while j < n and expression[j] in "rRbB" and j - i < 2:
            j += 1
        if j < n and expression[j] in "'\"" and (j == i or not (i > 0 and expression[i - 1] in _IDENT_CHARS)):
            raw = any(c in "rR" for c in expression[i:j])
            quote = expression[j]
            triple = expression[j:j + 3] == quote * 3
            delim = quote * 3 if triple else quote
            k = j + len(delim)
            buf = []
            while k < n and expression[k:k + len(delim)] != delim:
                if expression[k] == "\\" and not raw and k + 1 < n:
                    buf.append(expression[k:k + 2])
                    k += 2
                    continue
                buf.append(expression[k])
                k += 1
            out.append(("str", "".join(buf)))
            i = k + len(delim)
            continue
        if ch in _IDENT_START:
            j = i + 1
            while j < n and expression[j] in _IDENT_CHARS:
                j += 1
            out.append(("id", expression[i:j]))
            i = j
            continue
        out.append(("op", ch))
        i += 1
    return out


def analyze(expression: str) -> References:
    """The variables and top-level fields ``expression`` reads (conservative: when unsure, all)."""
    toks = _tokens(expression)
    used: set[str] = set()
    fields: dict[str, set[str] | None] = {}
    for idx, (kind, text) in enumerate(toks):
        if kind != "id" or text not in RULE_VARIABLES:
            continue
        if idx > 0 and toks[idx - 1] == ("op", "."):
            continue  # a field called e.g. ``offer`` of something else
        used.add(text)
        nxt = toks[idx + 1] if idx + 1 < len(toks) else None
        field: str | None = None
        if nxt == ("op", ".") and idx + 2 < len(toks) and toks[idx + 2][0] == "id":
            field = toks[idx + 2][1]
            # one level deeper (``offer.attributes.min_age``) lets offers that differ only in
            # attributes the rule ignores share one specialised program; a call such as
            # ``offer.attributes.size()`` needs the whole field
            if (idx + 4 < len(toks) and toks[idx + 3] == ("op", ".") and toks[idx + 4][0] == "id"
                    and (idx + 5 >= len(toks) or toks[idx + 5] != ("op", "("))):
                field = f"{field}.{toks[idx + 4][1]}"
        elif (nxt == ("op", "[") and idx + 3 < len(toks) and toks[idx + 2][0] == "str"
              and toks[idx + 3] == ("op", "]")):
            field = toks[idx + 2][1]
        if field is None:
            fields[text] = None
        elif text not in fields:
            fields[text] = {field}
        else:
            current = fields[text]
            if current is not None:
                current.add(field)
    return References(
        variables=frozenset(used),
        fields={k: (frozenset(v) if v is not None else None) for k, v in fields.items()},
    )


def merge_fields(refs: Iterable[References], variable: str) -> frozenset[str] | None:
    """The union of the fields several expressions read from ``variable`` (None = all)."""
    out: set[str] = set()
    for ref in refs:
        if variable not in ref.fields:
            continue
        f = ref.fields[variable]
        if f is None:
            return None
        out |= f
    return frozenset(out)


def project(obj: Mapping[str, Any], fields: frozenset[str] | None) -> dict[str, Any]:
    """The part of ``obj`` an expression reads (all of it when ``fields`` is None).

    ``fields`` holds top-level names (``age``) and two-level paths (``attributes.min_age``);
    a path keeps only that key of a mapping field (the whole field if it is not a mapping or
    is also read as a whole).
    """
    if fields is None:
        return dict(obj)
    out: dict[str, Any] = {}
    whole = {f for f in fields if "." not in f}
    for f in whole:
        if f in obj:
            out[f] = obj[f]
    for path in fields:
        head, dot, key = path.partition(".")
        if not dot or head in whole or head not in obj:
            continue
        value = obj[head]
        if not isinstance(value, Mapping):
            out[head] = value
        elif key in value:
            sub = out.setdefault(head, {})
            if isinstance(sub, dict):
                sub[key] = value[key]
        else:
            out.setdefault(head, {})
    return out


MAX_COMPREHENSION_NESTING = 2
"""Deepest nesting of CEL comprehensions (``all``, ``exists``, ``exists_one``, ``map``,
``filter``) in one rule: ``xs.all(x, ys.exists(y, …))`` is fine, a third level is refused."""
MAX_LITERAL_ELEMENTS = 1000
"""Most elements of one list or map literal in a rule."""
MAX_LITERAL_STEPS = 100_000
"""Most steps of nested comprehensions over literals (the product of their sizes)."""

_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})


def cost_problem(expression: str) -> str | None:
    """Why ``expression`` is over the static rule cost budget, or ``None``.

    CEL has no loops but its comprehensions, so a rule's cost is bounded by how deeply they
    nest and how long the lists they run over are: at most
    :data:`MAX_COMPREHENSION_NESTING` levels, list and map literals of at most
    :data:`MAX_LITERAL_ELEMENTS` elements, and at most :data:`MAX_LITERAL_STEPS` steps for
    comprehensions over literals (a rule of 10^8 steps once took 36 s, holding the
    interpreter). Lists that come from the data (``customer.owned_products.exists(…)``) are
    bounded by the nesting limit and by the size of requests. Unbalanced brackets are left
    to the parser.
    """
    toks = _tokens(expression)
    # each open bracket: [kind, elements (literals) or steps (comprehensions), non-empty]
    stack: list[list[Any]] = []
    closed: dict[int, int] = {}  # index of a literal's closing bracket -> its number of elements
    for i, (kind, text) in enumerate(toks):
        if stack and stack[-1][0] == "literal" and (kind, text) not in (("op", "]"), ("op", "}")):
            stack[-1][2] = True  # something inside: at least one element
        if kind != "op":
            continue
        if text in "[{":
            stack.append(["literal", 0, False])
        elif text in "]}":
            if not stack or stack[-1][0] != "literal":
                return None
            _, commas, nonempty = stack.pop()
            size = commas + 1 if nonempty else 0
            if size > MAX_LITERAL_ELEMENTS:
                return (f"a list or map literal of {size} elements; at most {MAX_LITERAL_ELEMENTS} "
                        "are allowed")
            closed[i] = size
        elif text == ",":
            if stack and stack[-1][0] == "literal":
                stack[-1][1] += 1
        elif text == "(":
            if i >= 2 and toks[i - 1][0] == "id" and toks[i - 1][1] in _MACROS and toks[i - 2] == ("op", "."):
                outer = next((entry[1] for entry in reversed(stack) if entry[0] == "macro"), 1)
                steps = outer * max(closed.get(i - 3, 1), 1)
                depth = sum(1 for entry in stack if entry[0] == "macro") + 1
                if depth > MAX_COMPREHENSION_NESTING:
                    return f"comprehensions nested {depth} deep; at most {MAX_COMPREHENSION_NESTING} are allowed"
                if steps > MAX_LITERAL_STEPS:
                    return (f"nested comprehensions over literals take {steps:,} steps; "
                            f"at most {MAX_LITERAL_STEPS:,} are allowed")
                stack.append(["macro", steps, True])
            else:
                stack.append(["group", 1, True])
        elif text == ")":
            if not stack or stack[-1][0] == "literal":
                return None
            stack.pop()
    return None


def compile_expression(expression: str, *, what: str) -> Program:
    """Compile a CEL expression, or raise :class:`RuleError` naming ``what`` it belongs to.

    Refuses an expression longer than :data:`MAX_EXPRESSION_CHARS` without parsing it, and
    one over the static cost budget (:func:`cost_problem`).
    """
    if not isinstance(expression, str) or not expression.strip():
        raise RuleError(f"{what}: expression is empty")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise RuleError(f"{what}: {len(expression)} characters long; at most {MAX_EXPRESSION_CHARS} are allowed")
    program = _compile(expression, what=what)
    problem = cost_problem(expression)
    if problem is not None:
        raise RuleError(f"{what}: over the rule cost budget: {problem}")
    return program


def _compile(expression: str, *, what: str) -> Program:
    """``cel.compile`` with everything it raises, a parser panic included, as :class:`RuleError`."""
    try:
        return cel.compile(expression)
    except BaseException as exc:  # ValueError and friends, or the parser's PanicException
        if not isinstance(exc, Exception) and not _is_panic(exc):
            raise  # KeyboardInterrupt, SystemExit: not the parser's doing
        raise RuleError(f"{what}: does not compile: {_short(exc)}") from None


def cel_literal(value: Any) -> str:
    """A CEL literal equal to a plain JSON-like Python value."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return str(value)
        return cel_literal(float(value))
    if isinstance(value, float):
        if math.isnan(value):
            return 'double("NaN")'
        if math.isinf(value):
            return 'double("Infinity")' if value > 0 else 'double("-Infinity")'
        text = repr(value)
        return text if any(c in text for c in ".eE") else text + ".0"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(cel_literal(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{cel_literal(str(k))}: {cel_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no CEL literal for {type(value).__name__}")


def specialize(expression: str, offer: Mapping[str, Any]) -> Program | None:
    """``expression`` with ``offer`` bound to a constant; None when that cannot be built.

    The single-element comprehension keeps CEL's own scoping (``has(offer.x)``, nested
    comprehensions) intact, unlike textual substitution would.
    """
    try:
        return _compile(f"[{cel_literal(offer)}].all(offer, ({expression}))", what="specialised rule")
    except (RuleError, TypeError):  # odd data (lone surrogates, huge nesting): fall back to dict evaluation
        return None


def evaluate(program: Program, context: Any) -> bool:
    """Run a compiled rule/condition; True/False, or :class:`RuleFailure` with the reason."""
    try:
        result = program.execute(context)
    except KeyError as exc:
        raise RuleFailure(f"missing field {exc}") from None
    except BaseException as exc:  # TypeError (no overload), ZeroDivisionError, RuntimeError, a panic
        if not isinstance(exc, Exception) and not _is_panic(exc):
            raise
        message = _short(exc).split(". ")[0]
        raise RuleFailure(message or type(exc).__name__) from None
    if result is True or result is False:
        return result
    raise RuleFailure(f"returned {result!r}, not a boolean")


def new_context(variables: Mapping[str, Any]) -> Any:
    """A prepared evaluation context; reuse it for every program of one decision."""
    try:
        return cel.Context(dict(variables))
    except BaseException as exc:  # a value CEL cannot represent (or a panic converting it)
        if not isinstance(exc, Exception) and not _is_panic(exc):
            raise
        raise RuleFailure(f"cannot convert data for CEL: {_short(exc)}") from None
