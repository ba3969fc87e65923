"""docs/python-api.md matches the code: every signature in its tables (``| `name(params) -> …` |``)
has the code's parameter names, order, keyword-only marker and defaults (issue 7 item 3)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

import nbo.gateway
import nbo.model_export
import pytest
from nbo.sdk import Client

DOC = Path(__file__).resolve().parent.parent / "docs" / "python-api.md"
ROW = re.compile(r"^\| `(?:client\.|Client\.)?([A-Za-z_]\w*)\(", re.M)
MODULES = (nbo.model_export, nbo.gateway)


def _params_text(text: str, start: int) -> str:
    """The text between the parenthesis opened just before ``start`` and its match."""
    depth, i = 1, start
    while depth:
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        i += 1
    return text[start:i - 1]


def _split(params: str) -> list[str]:
    out, depth, current = [], 0, ""
    for ch in params:
        depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            out.append(current.strip())
            current = ""
        else:
            current += ch
    return [p for p in [*out, current.strip()] if p]


def documented() -> list[tuple[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    return [(m.group(1), _params_text(text, m.end())) for m in ROW.finditer(text)]


def _resolve(name: str) -> Any:
    if name == "open" or hasattr(Client, name):
        return getattr(Client, name)
    for module in MODULES:
        if hasattr(module, name):
            return getattr(module, name)
    raise AssertionError(f"docs/python-api.md documents {name}(), which the code does not have")


def _default_value(text: str, func: Any) -> Any:
    """A documented default as a value: a literal, a module-level name, or ``Name()``."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    namespace = vars(inspect.getmodule(inspect.unwrap(func)))
    call = re.fullmatch(r"(\w+)\(\)", text)
    if call:
        return namespace[call.group(1)]()
    return namespace[text]


def test_the_tables_document_signatures() -> None:
    names = {name for name, _ in documented()}
    assert {"open", "decide", "award_points", "record_payment", "build_bundle", "create_server"} <= names


@pytest.mark.parametrize(("name", "params"), documented(), ids=[n for n, _ in documented()])
def test_documented_signature_matches_the_code(name: str, params: str) -> None:
    func = _resolve(name)
    code = [p for p in inspect.signature(func).parameters.values() if p.name != "self"]
    keyword_only, elided, doc = False, False, []
    for part in _split(params):
        if part == "*":
            keyword_only = True
        elif part in ("…", "..."):
            elided = True  # "…": the row lists only some of the parameters
        else:
            pname, _, default = part.partition("=")
            doc.append((pname.strip(), default.strip() or None, keyword_only))
    by_name = {p.name: p for p in code}
    if not elided:
        assert [d[0] for d in doc] == [p.name for p in code], f"{name}: parameters differ"
    for pname, default, kw_only in doc:
        assert pname in by_name, f"{name}: documents parameter {pname!r} the code does not have"
        p = by_name[pname]
        assert (p.kind is p.KEYWORD_ONLY) == kw_only, f"{name}: {pname} keyword-only marker differs"
        assert (default is None) == (p.default is p.empty), f"{name}: {pname} default presence differs"
        if default is not None:
            assert _default_value(default, func) == p.default, f"{name}: {pname}={default} but the code has {p.default!r}"
