"""Type-checking the catalog's CEL expressions against the fields ``customer``, ``offer`` and ``context`` have.

A rule that reads a field nobody supplies (``customer.monetry``) or compares values that can
never be compared (``customer.segment > 3`` with a string segment) compiles — CEL resolves
names and overloads only when it runs — and then fails at every decision, which the engine
turns into "offer excluded". So the bundle build checks every rule and strategy condition
against a *schema* (:class:`Fields`):

* ``customer``: the measures the SDK derives (``recency_days``, ``frequency``, …), the fields
  of ``new_customer_profile``, the fields the models read (``customer__X`` inputs) and the
  catalog's ``profile_fields`` section;
* ``offer``: the offer columns, ``offer.attributes`` with every attribute some offer has;
* ``context``: ``channel``, ``hour``, ``weekday`` (the SDK adds them), the models'
  ``context__X`` inputs and the catalog's ``context_fields`` section.

:func:`check_expression` parses the expression (the CEL grammar: literals, operators,
selection, indexing, calls, list and map literals, the ``has``/``all``/``exists``/
``exists_one``/``map``/``filter`` macros), infers a type for every part and reports the first
problem: an unknown field (with the nearest known name), an operator whose operands can
never match (a string ordered against a number, int and double mixed in arithmetic — CEL
does not convert), a function the runtime does not have, or a result that is not a boolean.
A syntax error is left to the CEL compiler itself, which reports the position;
:func:`caret_excerpt` shows it under the expression.

Numbers: CEL keeps ``int``, ``uint`` and ``double`` apart in arithmetic (``1 + 1.5`` fails)
but compares them freely. A field whose values may be either (a profile ``age`` sent as 34 or
34.0, a model's float input) has type ``number``, which arithmetic accepts with either.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nbo.sdk.core import CelTypeError

__all__ = [
    "BOOL",
    "DOUBLE",
    "STRING",
    "CelType",
    "Fields",
    "caret_excerpt",
    "catalog_fields",
    "check_expression",
    "list_of",
    "one_of",
    "parse_type",
    "type_of_value",
]


# -- types ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CelType:
    """A CEL type as the checker sees it.

    ``kind``: dyn, null, bool, int, uint, double, number (int or double), string, bytes,
    timestamp, duration, type, list (``elem``), map (``key``, ``value``) or object — a map with
    known ``fields`` (``customer``, ``offer``, ``offer.attributes``, ``context``), named ``name``.
    """

    kind: str
    elem: CelType | None = None
    key: CelType | None = None
    value: CelType | None = None
    fields: Mapping[str, CelType] | None = field(default=None, compare=False)
    name: str = ""
    values: frozenset[str] | None = field(default=None, compare=False)
    """For a string with a fixed set of values (``lifecycle_stage``, ``category``): that set."""

    def __str__(self) -> str:
        if self.kind == "list":
            return f"list<{self.elem}>" if self.elem is not None and self.elem.kind != "dyn" else "list"
        if self.kind == "map":
            return "map"
        if self.kind == "object":
            return "map"
        return self.kind


DYN = CelType("dyn")
NULL = CelType("null")
BOOL = CelType("bool")
INT = CelType("int")
UINT = CelType("uint")
DOUBLE = CelType("double")
NUMBER = CelType("number")
STRING = CelType("string")
BYTES = CelType("bytes")
TIMESTAMP = CelType("timestamp")
DURATION = CelType("duration")
TYPE = CelType("type")

_NUMERIC = frozenset({"int", "uint", "double", "number"})
_ORDERED = _NUMERIC | {"string", "bytes", "bool", "timestamp", "duration"}
_CONTAINERS = frozenset({"list", "map", "object"})
_SIMPLE = {t.kind: t for t in (DYN, BOOL, INT, UINT, DOUBLE, NUMBER, STRING, BYTES, TIMESTAMP, DURATION)}
_TYPE_NAMES = {**_SIMPLE, "any": DYN, "float": DOUBLE}


def list_of(elem: CelType) -> CelType:
    return CelType("list", elem=elem)


def map_of(key: CelType, value: CelType) -> CelType:
    return CelType("map", key=key, value=value)


def parse_type(text: Any) -> CelType:
    """A type as the catalog writes it: ``string``, ``int``, ``double``, ``number``, ``bool``,
    ``timestamp``, ``duration``, ``list``, ``list<T>``, ``map``, ``map<string, T>``, ``any``.

    Raises ``ValueError`` with what is accepted.
    """
    if not isinstance(text, str):
        raise ValueError(f"a type name is a string such as 'string' or 'list<string>', got {text!r}")
    source = "".join(text.split()).lower()
    parsed, rest = _parse_type_at(source)
    if parsed is None or rest:
        raise ValueError(f"unknown type {text!r} (use string, int, double, number, bool, timestamp, "
                         "duration, list, list<T>, map, map<string, T> or any)")
    return parsed


def _parse_type_at(text: str) -> tuple[CelType | None, str]:
    match = re.match(r"[a-z]+", text)
    if match is None:
        return None, text
    word, rest = match.group(0), text[match.end():]
    if word in _TYPE_NAMES:
        return _TYPE_NAMES[word], rest
    if word == "list":
        if not rest.startswith("<"):
            return list_of(DYN), rest
        elem, rest = _parse_type_at(rest[1:])
        if elem is None or not rest.startswith(">"):
            return None, rest
        return list_of(elem), rest[1:]
    if word == "map":
        if not rest.startswith("<"):
            return map_of(DYN, DYN), rest
        key, rest = _parse_type_at(rest[1:])
        if key is None or not rest.startswith(","):
            return None, rest
        value, rest = _parse_type_at(rest[1:])
        if value is None or not rest.startswith(">"):
            return None, rest
        return map_of(key, value), rest[1:]
    return None, text


def type_of_value(value: Any) -> CelType:
    """The type a JSON-like value has in CEL (a list of mixed values is ``list<dyn>``)."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        return DOUBLE
    if isinstance(value, str):
        return STRING
    if isinstance(value, bytes):
        return BYTES
    if isinstance(value, list | tuple):
        return list_of(join_types(type_of_value(v) for v in value))
    if isinstance(value, Mapping):
        return map_of(STRING, join_types(type_of_value(v) for v in value.values()))
    return DYN


def join_types(types: Iterable[CelType]) -> CelType:
    """The one type values of all ``types`` share: int and double make number, null joins anything."""
    out: CelType | None = None
    for t in types:
        if t.kind == "null":
            continue
        if out is None or out == t:
            out = t
        elif out.kind in _NUMERIC and t.kind in _NUMERIC:
            out = NUMBER
        elif out.kind == t.kind == "list":
            out = list_of(join_types([out.elem or DYN, t.elem or DYN]))
        elif out.kind == t.kind == "map":
            out = map_of(join_types([out.key or DYN, t.key or DYN]), join_types([out.value or DYN, t.value or DYN]))
        else:
            return DYN
    return out if out is not None else DYN


def object_type(name: str, fields: Mapping[str, CelType]) -> CelType:
    return CelType("object", fields=dict(fields), name=name)


def one_of(values: Iterable[str]) -> CelType:
    """A string that is always one of ``values``."""
    return CelType("string", values=frozenset(values))


@dataclass(frozen=True)
class Fields:
    """What ``customer``, ``offer`` and ``context`` hold, with their types (the check's schema)."""

    customer: Mapping[str, CelType]
    offer: Mapping[str, CelType]
    context: Mapping[str, CelType]
    hints: Mapping[str, str] = field(default_factory=dict)
    """Per variable, where an author declares a field it lacks (shown with an unknown field)."""

    def variables(self, allowed: Sequence[str]) -> dict[str, CelType]:
        table = {"customer": self.customer, "offer": self.offer, "context": self.context}
        return {name: object_type(name, table[name]) for name in allowed if name in table}


def _measure_types() -> dict[str, CelType]:
    """The measures the SDK keeps per customer, typed from its own definition of them.

    A count (an int there) stays ``int``; an amount or a time (a float there, or unset) is
    ``number``, since a profile passed with a request may carry it as 34 or 34.0; the stages
    are fixed sets of strings.
    """
    from nbo.sdk.core import LIFECYCLE_STAGES, LOYALTY_STAGES, update_measures

    sample = update_measures(None, [{"timestamp": 0, "amount": 1}], as_of=1)
    out: dict[str, CelType] = {}
    for name, value in sample.items():
        if isinstance(value, bool) or isinstance(value, str):
            out[name] = type_of_value(value)
        elif isinstance(value, int):
            out[name] = INT
        else:
            out[name] = NUMBER
    out["lifecycle_stage"] = one_of(LIFECYCLE_STAGES)
    out["loyalty_stage"] = one_of(LOYALTY_STAGES)
    return out


# What the models' input types mean for the field they read (the SDK feeds float or string).
_INPUT_TYPES = {"float": NUMBER, "double": NUMBER, "string": STRING}


def catalog_fields(
    *,
    offers: Sequence[Mapping[str, Any]],
    offer_columns: Mapping[str, CelType],
    channels: Sequence[str],
    new_customer_profile: Mapping[str, Any],
    profile_fields: Mapping[str, CelType],
    context_fields: Mapping[str, CelType],
    model_inputs: Mapping[str, str] | None,
) -> Fields:
    """The schema of a catalog: see the module docstring for where each field comes from.

    ``offers`` are validated offer rows (their ``attributes`` give ``offer.attributes``);
    ``model_inputs`` maps every model input name (``customer__age``) to its type (``float``,
    ``string``), or is ``None`` when the models are not known.
    """
    customer: dict[str, CelType] = {name: type_of_value(v) for name, v in new_customer_profile.items()}
    context: dict[str, CelType] = {"channel": one_of(channels), "hour": INT, "weekday": INT}
    for name, kind in (model_inputs or {}).items():
        source, _, key = name.partition("__")
        table = customer if source == "customer" else context if source == "context" else None
        if table is not None and key:
            table.setdefault(key, _INPUT_TYPES.get(kind, DYN))
    customer.update(profile_fields)
    customer.update(_measure_types())  # what the SDK computes wins over what a profile claims
    context.update({k: v for k, v in context_fields.items() if k not in ("channel", "hour", "weekday")})
    attributes: dict[str, list[CelType]] = {}
    for offer in offers:
        for key, value in (offer.get("attributes") or {}).items():
            attributes.setdefault(key, []).append(type_of_value(value))
    offer_fields = dict(offer_columns)
    offer_fields["attributes"] = object_type("offer.attributes",
                                             {k: join_types(v) for k, v in sorted(attributes.items())})
    return Fields(
        customer=customer, offer=offer_fields, context=context,
        hints={
            "customer": "a profile field is declared under profile_fields, e.g. `profile_fields: {{{name}: string}}`",
            "context": "a request context field is declared under context_fields, e.g. "
                       "`context_fields: {{{name}: string}}`",
            "offer": "attributes are read as offer.attributes.NAME",
            "offer.attributes": "no offer has this attribute",
        },
    )


# -- tokens ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # int, uint, double, string, bytes, ident, op, eof
    text: str
    pos: int
    end: int




_RESERVED = frozenset({"as", "break", "const", "continue", "else", "for", "function", "if", "import", "let",
                       "loop", "package", "namespace", "return", "var", "void", "while"})
_OPERATORS = ("==", "!=", "<=", ">=", "&&", "||", "<", ">", "+", "-", "*", "/", "%", "!", "?", ":", ".", ",",
              "(", ")", "[", "]", "{", "}")
_NUMBER_RE = re.compile(r"0[xX][0-9a-fA-F]+[uU]?|(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?[uU]?")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
            continue
        prefix = re.match(r"[rRbB]{0,2}(?=['\"])", text[i:])
        if prefix is not None and (prefix.group(0) == "" or len(set(prefix.group(0).lower())) == len(prefix.group(0))):
            start = i
            flags = prefix.group(0).lower()
            j = i + len(flags)
            quote = text[j]
            delim = quote * 3 if text.startswith(quote * 3, j) else quote
            k = j + len(delim)
            while k < n and not text.startswith(delim, k):
                if text[k] == "\\" and "r" not in flags:
                    k += 2
                    continue
                if len(delim) == 1 and text[k] == "\n":
                    raise CelTypeError("a string literal ends at the end of the line", start)
                k += 1
            if k >= n:
                raise CelTypeError("a string literal is not closed", start)
            tokens.append(_Token("bytes" if "b" in flags else "string", text[j + len(delim):k], start, k + len(delim)))
            i = k + len(delim)
            continue
        if ch.isdigit() or (ch == "." and i + 1 < n and text[i + 1].isdigit()):
            match = _NUMBER_RE.match(text, i)
            assert match is not None
            literal = match.group(0)
            if literal[-1] in "uU":
                kind = "uint"
            elif literal.lower().startswith("0x"):
                kind = "int"
            elif any(c in literal for c in ".eE"):
                kind = "double"
            else:
                kind = "int"
            tokens.append(_Token(kind, literal, i, match.end()))
            i = match.end()
            continue
        match = _IDENT_RE.match(text, i)
        if match is not None:
            tokens.append(_Token("ident", match.group(0), i, match.end()))
            i = match.end()
            continue
        op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
        if op is None:
            raise CelTypeError(f"unexpected character {ch!r}", i)
        tokens.append(_Token("op", op, i, i + len(op)))
        i += len(op)
    tokens.append(_Token("eof", "", n, n))
    return tokens


# -- syntax tree ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    kind: str  # literal, ident, select, index, call, list, map, unary, binary, cond
    start: int
    end: int
    text: str = ""  # ident/field/function name, operator, or the literal's kind
    args: tuple[_Node, ...] = ()
    target: _Node | None = None  # receiver of a member call, operand of select/index
    absolute: bool = False  # a leading-dot name (.customer)
    at: int = -1  # where a message about this node points: the operator, the field name


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self, *ops: str) -> bool:
        tok = self.tokens[self.i]
        return tok.kind == "op" and tok.text in ops

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, op: str) -> _Token:
        tok = self.tokens[self.i]
        if tok.kind != "op" or tok.text != op:
            raise CelTypeError(f"expected {op!r}", tok.pos)
        return self.take()

    def parse(self) -> _Node:
        node = self.expr()
        tok = self.tokens[self.i]
        if tok.kind != "eof":
            raise CelTypeError(f"unexpected {tok.text!r}", tok.pos)
        return node

    def expr(self) -> _Node:
        cond = self.binary(0)
        if self.peek("?"):
            self.take()
            yes = self.binary(0)
            self.expect(":")
            no = self.expr()
            return _Node("cond", cond.start, no.end, args=(cond, yes, no))
        return cond

    _LEVELS: tuple[tuple[str, ...], ...] = (("||",), ("&&",), ("<", "<=", ">", ">=", "==", "!=", "in"),
                                            ("+", "-"), ("*", "/", "%"))

    def _at_level(self, level: int) -> str | None:
        tok = self.tokens[self.i]
        ops = self._LEVELS[level]
        if (tok.kind == "op" and tok.text in ops) or (tok.kind == "ident" and tok.text == "in" and "in" in ops):
            return tok.text
        return None

    def binary(self, level: int) -> _Node:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while (op := self._at_level(level)) is not None:
            op_pos = self.take().pos
            right = self.binary(level + 1)
            left = _Node("binary", left.start, right.end, text=op, args=(left, right), at=op_pos)
        return left

    def unary(self) -> _Node:
        if self.peek("!", "-"):
            tok = self.take()
            operand = self.unary()
            if tok.text == "-" and operand.kind == "literal" and operand.text in ("int", "double") \
                    and operand.start == tok.end:
                return _Node("literal", tok.pos, operand.end, text=operand.text)
            return _Node("unary", tok.pos, operand.end, text=tok.text, args=(operand,))
        return self.member()

    def member(self) -> _Node:
        node = self.primary()
        while True:
            if self.peek("."):
                self.take()
                name = self.take()
                if name.kind != "ident":
                    raise CelTypeError("expected a field name after '.'", name.pos)
                if self.peek("("):
                    args, end = self.call_args()
                    node = _Node("call", node.start, end, text=name.text, args=args, target=node, at=name.pos)
                else:
                    node = _Node("select", node.start, name.end, text=name.text, target=node, at=name.pos)
            elif self.peek("["):
                self.take()
                index = self.expr()
                end = self.expect("]").end
                node = _Node("index", node.start, end, args=(index,), target=node, at=index.start)
            elif self.peek("{"):
                raise CelTypeError("message construction (Type{...}) is not available in rules",
                                   self.tokens[self.i].pos)
            else:
                return node

    def call_args(self) -> tuple[tuple[_Node, ...], int]:
        self.expect("(")
        args: list[_Node] = []
        if not self.peek(")"):
            args.append(self.expr())
            while self.peek(","):
                self.take()
                args.append(self.expr())
        return tuple(args), self.expect(")").end

    def primary(self) -> _Node:
        tok = self.tokens[self.i]
        if tok.kind in ("int", "uint", "double", "string", "bytes"):
            self.take()
            return _Node("literal", tok.pos, tok.end, text=tok.kind)
        absolute = False
        if tok.kind == "op" and tok.text == "." and self.tokens[self.i + 1].kind == "ident":
            self.take()
            absolute = True
            tok = self.tokens[self.i]
        if tok.kind == "ident":
            if tok.text in ("true", "false"):
                self.take()
                return _Node("literal", tok.pos, tok.end, text="bool")
            if tok.text == "null":
                self.take()
                return _Node("literal", tok.pos, tok.end, text="null")
            if tok.text in _RESERVED or tok.text == "in":
                raise CelTypeError(f"{tok.text!r} is a reserved word", tok.pos)
            self.take()
            if self.peek("("):
                args, end = self.call_args()
                return _Node("call", tok.pos, end, text=tok.text, args=args, absolute=absolute)
            return _Node("ident", tok.pos, tok.end, text=tok.text, absolute=absolute)
        if tok.kind == "op" and tok.text == "(":
            self.take()
            inner = self.expr()
            end = self.expect(")").end
            return _Node(inner.kind, tok.pos, end, inner.text, inner.args, inner.target, inner.absolute)
        if tok.kind == "op" and tok.text == "[":
            self.take()
            items: list[_Node] = []
            if self.peek(","):  # CEL takes "[,]" as the empty list (and "{,}" as the empty map)
                self.take()
            while not self.peek("]"):
                items.append(self.expr())
                if not self.peek(","):
                    break
                self.take()
            end = self.expect("]").end
            return _Node("list", tok.pos, end, args=tuple(items))
        if tok.kind == "op" and tok.text == "{":
            self.take()
            entries: list[_Node] = []
            if self.peek(","):
                self.take()
            while not self.peek("}"):
                entries.append(self.expr())
                self.expect(":")
                entries.append(self.expr())
                if not self.peek(","):
                    break
                self.take()
            end = self.expect("}").end
            return _Node("map", tok.pos, end, args=tuple(entries))
        raise CelTypeError("expected a value" if tok.kind == "eof" else f"unexpected {tok.text!r}", tok.pos)


# -- checking -------------------------------------------------------------------------------

_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_CONVERSIONS = {"int": INT, "uint": UINT, "double": DOUBLE, "string": STRING, "bytes": BYTES,
                "timestamp": TIMESTAMP, "duration": DURATION, "dyn": DYN, "type": TYPE}
_STRING_METHODS = {"contains": BOOL, "startsWith": BOOL, "endsWith": BOOL, "matches": BOOL}
_TIME_METHODS = frozenset({"getFullYear", "getMonth", "getDayOfMonth", "getDate", "getDayOfWeek", "getDayOfYear",
                           "getHours", "getMinutes", "getSeconds", "getMilliseconds"})
_KNOWN_FUNCTIONS = sorted({"has", "size", *_CONVERSIONS, *_STRING_METHODS, *_TIME_METHODS, *_MACROS})


def _compatible(a: CelType, b: CelType) -> bool:
    """Whether values of ``a`` and ``b`` can ever be equal (or one be found among the other's)."""
    if "dyn" in (a.kind, b.kind) or "null" in (a.kind, b.kind):
        return True
    if a.kind in _NUMERIC and b.kind in _NUMERIC:
        return True
    if {a.kind, b.kind} <= {"map", "object"}:
        return True
    if a.kind == b.kind == "list":
        return _compatible(a.elem or DYN, b.elem or DYN)
    return a.kind == b.kind


def _a(t: CelType) -> str:
    name = str(t)
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _describe(node: _Node, text: str, t: CelType) -> str:
    source = text[node.start:node.end]
    return f"{source} ({_a(t)})" if len(source) <= 60 else _a(t)


class _Checker:
    def __init__(self, text: str, fields: Fields, variables: Mapping[str, CelType]) -> None:
        self.text = text
        self.fields = fields
        self.scopes: list[dict[str, CelType]] = [dict(variables)]

    def lookup(self, name: str) -> CelType | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return None

    def fail(self, node: _Node, message: str) -> CelTypeError:
        return CelTypeError(message, node.at if node.at >= 0 else node.start)

    def path(self, node: _Node) -> str:
        return self.text[node.start:node.end]

    def field_of(self, owner: _Node, owner_type: CelType, name: str, at: _Node) -> CelType:
        if owner_type.kind == "object":
            known = owner_type.fields or {}
            if name in known:
                return known[name]
            where = self.path(owner)
            close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
            if close:
                advice = f"did you mean {where}.{close[0]}?"
            else:
                advice = self.fields.hints.get(owner_type.name, "").format(name=name)
            raise self.fail(at, f"unknown field {where}.{name}" + (f" ({advice})" if advice else ""))
        if owner_type.kind == "map":
            return owner_type.value or DYN
        if owner_type.kind == "dyn":
            return DYN
        raise self.fail(at, f"{_describe(owner, self.text, owner_type)} has no fields; "
                            f"{self.path(owner)}.{name} can never be read")

    def check(self, node: _Node) -> CelType:
        method = getattr(self, f"_{node.kind}")
        result: CelType = method(node)
        return result

    def _literal(self, node: _Node) -> CelType:
        return {"int": INT, "uint": UINT, "double": DOUBLE, "string": STRING, "bytes": BYTES, "bool": BOOL,
                "null": NULL}[node.text]

    def _ident(self, node: _Node) -> CelType:
        found = self.lookup(node.text)
        if found is None:
            known = ", ".join(sorted(self.scopes[0]))
            raise self.fail(node, f"unknown name {node.text!r} (an expression here reads {known})")
        return found

    def _select(self, node: _Node) -> CelType:
        assert node.target is not None
        owner = self.check(node.target)
        return self.field_of(node.target, owner, node.text, node)

    def _index(self, node: _Node) -> CelType:
        assert node.target is not None
        owner = self.check(node.target)
        index_node = node.args[0]
        index = self.check(index_node)
        if owner.kind == "list":
            if index.kind not in _NUMERIC | {"dyn"}:
                raise self.fail(index_node, f"a list is indexed by a number, not by {_describe(index_node, self.text, index)}")
            return owner.elem or DYN
        if owner.kind == "object":
            if index_node.kind == "literal" and index_node.text == "string":
                name = _string_value(self.text[index_node.start:index_node.end])
                if name is not None:
                    return self.field_of(node.target, owner, name, node)
            if index.kind not in ("string", "dyn"):
                raise self.fail(index_node, f"{self.path(node.target)} is indexed by a field name, not by "
                                            f"{_describe(index_node, self.text, index)}")
            return DYN
        if owner.kind == "map":
            if not _compatible(owner.key or DYN, index):
                raise self.fail(index_node, f"{self.path(node.target)} has {owner.key} keys, not "
                                            f"{_describe(index_node, self.text, index)}")
            return owner.value or DYN
        if owner.kind == "dyn":
            return DYN
        raise self.fail(node, f"{_describe(node.target, self.text, owner)} cannot be indexed")

    def _list(self, node: _Node) -> CelType:
        return list_of(join_types(self.check(item) for item in node.args))

    def _map(self, node: _Node) -> CelType:
        keys = [self.check(k) for k in node.args[0::2]]
        values = [self.check(v) for v in node.args[1::2]]
        return map_of(join_types(keys), join_types(values))

    def _unary(self, node: _Node) -> CelType:
        operand = self.check(node.args[0])
        if node.text == "!":
            if operand.kind not in ("bool", "dyn"):
                raise self.fail(node, f"'!' negates a bool, not {_describe(node.args[0], self.text, operand)}")
            return BOOL
        if operand.kind not in _NUMERIC | {"duration", "dyn"} or operand.kind == "uint":
            raise self.fail(node, f"'-' needs a number, not {_describe(node.args[0], self.text, operand)}")
        return operand

    def _cond(self, node: _Node) -> CelType:
        cond, yes, no = node.args
        cond_type = self.check(cond)
        if cond_type.kind not in ("bool", "dyn"):
            raise self.fail(cond, f"the condition of '? :' must be a bool, not {_describe(cond, self.text, cond_type)}")
        return join_types([self.check(yes), self.check(no)])

    def _binary(self, node: _Node) -> CelType:
        op = node.text
        left_node, right_node = node.args
        left, right = self.check(left_node), self.check(right_node)
        lhs, rhs = _describe(left_node, self.text, left), _describe(right_node, self.text, right)
        if op in ("&&", "||"):
            for side, t in ((left_node, left), (right_node, right)):
                if t.kind not in ("bool", "dyn"):
                    raise self.fail(side, f"'{op}' joins bools; {_describe(side, self.text, t)} is not one")
            return BOOL
        if op in ("==", "!="):
            always = "false" if op == "==" else "true"
            if not _compatible(left, right):
                raise self.fail(node, f"{lhs} is never equal to {rhs}: '{op}' is always {always}")
            for enum_node, enum, other in ((left_node, left, right_node), (right_node, right, left_node)):
                self._check_value(enum_node, enum, other, f"'{op}' is always {always}")
            return BOOL
        if op in ("<", "<=", ">", ">="):
            dyn = "dyn" in (left.kind, right.kind)
            ordered = left.kind in _ORDERED and right.kind in _ORDERED and (
                left.kind == right.kind or (left.kind in _NUMERIC and right.kind in _NUMERIC))
            if not dyn and not ordered:
                raise self.fail(node, f"{lhs} cannot be compared with {rhs} by '{op}'")
            if dyn and (left.kind in _CONTAINERS | {"null"} or right.kind in _CONTAINERS | {"null"}):
                raise self.fail(node, f"{lhs} cannot be compared with {rhs} by '{op}'")
            return BOOL
        if op == "in":
            if right_node.kind == "list":
                for item in right_node.args:
                    self._check_value(left_node, left, item, "it can never be in this list")
            if right.kind == "list":
                if not _compatible(left, right.elem or DYN):
                    raise self.fail(node, f"{lhs} can never be in {rhs}")
            elif right.kind in ("map", "object"):
                key = right.key if right.kind == "map" else STRING
                if not _compatible(left, key or DYN):
                    raise self.fail(node, f"{lhs} can never be a key of {rhs}")
            elif right.kind != "dyn":
                raise self.fail(node, f"'in' looks in a list or a map, not in {rhs}")
            return BOOL
        return self._arithmetic(node, op, left, right, lhs, rhs)

    def _check_value(self, enum_node: _Node, enum: CelType, other: _Node, consequence: str) -> None:
        """Refuse comparing a fixed-set string (``enum``) with a literal outside its set."""
        if enum.values is None or other.kind != "literal" or other.text != "string":
            return
        value = _string_value(self.text[other.start:other.end])
        if value is None or value in enum.values:
            return
        close = difflib.get_close_matches(value, sorted(enum.values), n=1, cutoff=0.6)
        advice = f"did you mean {close[0]!r}? " if close else ""
        raise self.fail(other, f"{self.path(enum_node)} is one of {', '.join(sorted(enum.values))}; "
                               f"{value!r} is not ({advice}{consequence})")

    def _arithmetic(self, node: _Node, op: str, left: CelType, right: CelType, lhs: str, rhs: str) -> CelType:
        kinds = {left.kind, right.kind}
        if "dyn" in kinds:
            other = right if left.kind == "dyn" else left
            if other.kind in ("bool", "null", "map", "object"):
                raise self.fail(node, f"'{op}' is not defined for {lhs} and {rhs}")
            return DYN
        if kinds <= _NUMERIC:
            if op == "%" and "double" in kinds:
                raise self.fail(node, f"'%' is for integers; {lhs if left.kind == 'double' else rhs} is a double")
            concrete = kinds - {"number"}
            if len(concrete) > 1:
                raise self.fail(node, f"CEL does not mix {' and '.join(sorted(concrete))} in arithmetic: {lhs} {op} "
                                      f"{rhs} fails at every decision (write 2.0 for a double, or convert with "
                                      "double() / int())")
            return left if left.kind in concrete else right if right.kind in concrete else NUMBER
        if op == "+":
            if left.kind == right.kind and left.kind in ("string", "bytes", "list"):
                return left if left.kind != "list" else list_of(join_types([left.elem or DYN, right.elem or DYN]))
            if kinds == {"timestamp", "duration"}:
                return TIMESTAMP
            if kinds == {"duration"}:
                return DURATION
        if op == "-":
            if left.kind == right.kind == "timestamp":
                return DURATION
            if left.kind == "timestamp" and right.kind == "duration":
                return TIMESTAMP
            if kinds == {"duration"}:
                return DURATION
        raise self.fail(node, f"'{op}' is not defined for {lhs} and {rhs}")

    def _call(self, node: _Node) -> CelType:
        name, args, target = node.text, node.args, node.target
        if target is None and name == "has":
            if len(args) != 1 or args[0].kind != "select":
                raise self.fail(node, "has() takes one field selection, e.g. has(customer.age)")
            inner = args[0]
            assert inner.target is not None
            self.field_of(inner.target, self.check(inner.target), inner.text, inner)
            return BOOL
        if target is not None and name in _MACROS:
            return self._macro(node)
        if name == "size":
            subject_node = target if target is not None else (args[0] if len(args) == 1 else None)
            if subject_node is None or (target is not None and args):
                raise self.fail(node, "size() takes one string, bytes, list or map")
            subject = self.check(subject_node)
            if subject.kind not in ("string", "bytes", "list", "map", "object", "dyn"):
                raise self.fail(node, f"size() is not defined for {_describe(subject_node, self.text, subject)}")
            return INT
        if target is None and name in _CONVERSIONS:
            if len(args) != 1:
                raise self.fail(node, f"{name}() takes one argument")
            self.check(args[0])
            return _CONVERSIONS[name]
        if target is not None and name in _STRING_METHODS:
            receiver = self.check(target)
            if receiver.kind not in ("string", "dyn"):
                raise self.fail(node, f".{name}() is a string function; {_describe(target, self.text, receiver)} "
                                      "is not a string")
            if len(args) != 1:
                raise self.fail(node, f".{name}() takes one string")
            arg_type = self.check(args[0])
            if arg_type.kind not in ("string", "dyn"):
                raise self.fail(args[0], f".{name}() takes a string, not {_describe(args[0], self.text, arg_type)}")
            return BOOL
        if target is not None and name in _TIME_METHODS:
            receiver = self.check(target)
            if receiver.kind not in ("timestamp", "duration", "dyn"):
                raise self.fail(node, f".{name}() is a timestamp function; {_describe(target, self.text, receiver)} "
                                      "is not a timestamp (convert with timestamp())")
            for extra in args:  # a time zone
                self.check(extra)
            return INT
        close = difflib.get_close_matches(name, _KNOWN_FUNCTIONS, n=1, cutoff=0.6)
        advice = f" (did you mean {close[0]}?)" if close else ""
        raise self.fail(node, f"unknown function {name}(){advice}")

    def _macro(self, node: _Node) -> CelType:
        name, args, target = node.text, node.args, node.target
        assert target is not None
        wanted = (2, 3) if name == "map" else (2,)
        if len(args) not in wanted or args[0].kind != "ident":
            raise self.fail(node, f".{name}() takes a variable name and an expression, e.g. "
                                  f"list.{name}(x, x > 0)")
        receiver = self.check(target)
        if receiver.kind == "list":
            var_type = receiver.elem or DYN
        elif receiver.kind in ("map", "object"):
            var_type = (receiver.key or DYN) if receiver.kind == "map" else STRING
        elif receiver.kind == "dyn":
            var_type = DYN
        else:
            raise self.fail(node, f".{name}() runs over a list or a map, not over "
                                  f"{_describe(target, self.text, receiver)}")
        self.scopes.append({args[0].text: var_type})
        try:
            parts = [self.check(arg) for arg in args[1:]]
        finally:
            self.scopes.pop()
        predicates = args[1:] if name != "map" else args[1:-1]
        for arg, t in zip(args[1:], parts, strict=True):
            if arg in predicates and t.kind not in ("bool", "dyn"):
                raise self.fail(arg, f"the condition of .{name}() must be a bool, not {_describe(arg, self.text, t)}")
        if name == "map":
            return list_of(parts[-1])
        if name == "filter":
            return list_of(var_type)
        return BOOL


def _string_value(literal: str) -> str | None:
    """The value of a simple quoted string literal (no escapes), else ``None``."""
    match = re.fullmatch(r"(['\"])([^'\"\\]*)\1", literal)
    return match.group(2) if match else None


def check_expression(expression: str, fields: Fields, *, allowed: Sequence[str]) -> str | None:
    """Why ``expression`` can never work against ``fields`` (one message naming the field), or ``None``.

    ``allowed``: the variables it may read (``customer``, ``offer``, ``context`` for a rule;
    ``customer`` for a strategy condition). A message ends with the caret excerpt of the
    position. Call it on an expression the CEL compiler accepted.
    """
    try:
        tree = _Parser(expression).parse()
        result = _Checker(expression, fields, fields.variables(allowed)).check(tree)
        if result.kind not in ("bool", "dyn"):
            raise CelTypeError(f"the expression gives {_a(result)}, not a bool", tree.start)
    except CelTypeError as exc:
        return f"{exc}\n{caret_excerpt(expression, exc.pos)}"
    except RecursionError:
        return None  # nesting too deep to check here; the SDK's own limits refuse such expressions
    return None


def caret_excerpt(expression: str, pos: int, *, indent: str = "    ") -> str:
    """The line of ``expression`` holding offset ``pos``, and a caret under that position."""
    pos = max(0, min(pos, len(expression)))
    start = expression.rfind("\n", 0, pos) + 1
    end = expression.find("\n", pos)
    line = expression[start:end if end != -1 else len(expression)]
    column = pos - start
    return f"{indent}{line}\n{indent}{' ' * column}^"
