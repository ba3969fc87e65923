"""One exception tree: every exception class of every package is an NboError, defined in
nbo.sdk._errors, drawn in its docstring where its parent is drawn, and mapped to gRPC by class."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import grpc
import nbo.cli
import nbo.console
import nbo.gateway
import nbo.model_export
import nbo.sdk
import pytest
from nbo.gateway._status import status_for
from nbo.sdk import NboError, _errors

_BRANCH = re.compile(r"^(?P<indent>(?:[│ ]   )*)[├└]── (?P<name>\w+)\s+(?P<doc>.*?)(?:\s+(?P<code>[A-Z][A-Z_]{4,}))?$")
_CONTINUED = re.compile(r"^[│ ]*\s+.*?\s(?P<code>[A-Z][A-Z_]{4,})$")


def drawn_tree() -> dict[str, tuple[str, str | None]]:
    """``name -> (parent name, documented gRPC status or None)`` as the docstring draws it."""
    lines = (_errors.__doc__ or "").splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "NboError")
    tree: dict[str, tuple[str, str | None]] = {}
    parents = ["NboError"]
    last = ""
    for raw in lines[start + 1:]:
        line = raw[4:] if raw.startswith("    ") else raw  # the docstring's own indent
        if not line.strip():
            break
        branch = _BRANCH.match(line)
        if branch is None:
            continued = _CONTINUED.match(line)
            if continued and last:
                tree[last] = (tree[last][0], continued["code"])
            continue
        depth = len(branch["indent"]) // 4
        del parents[depth + 1:]
        last = branch["name"]
        tree[last] = (parents[depth], branch["code"])
        parents.append(last)
    return tree


def defined_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in any module of the five nbo packages."""
    found: dict[str, type[BaseException]] = {}
    for package in (nbo.sdk, nbo.cli, nbo.gateway, nbo.model_export, nbo.console):
        modules = [package.__name__] + [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
        for name in modules:
            module = importlib.import_module(name)
            for value in vars(module).values():
                if (inspect.isclass(value) and issubclass(value, BaseException)
                        and value.__module__ == module.__name__):
                    found[f"{module.__name__}.{value.__qualname__}"] = value
    return found


def test_every_exception_class_is_an_nbo_error_defined_in_the_tree_module() -> None:
    found = defined_exceptions()
    assert len(found) >= 20
    strays = {name for name, cls in found.items() if not issubclass(cls, NboError)}
    assert strays == set(), f"exceptions outside the NboError tree: {sorted(strays)}"
    elsewhere = {name for name in found if not name.startswith("nbo.sdk._errors.")}
    assert elsewhere == set(), f"exceptions defined outside nbo.sdk._errors: {sorted(elsewhere)}"


def test_the_docstring_draws_exactly_the_tree_that_exists() -> None:
    tree = drawn_tree()
    classes = {name: getattr(_errors, name) for name in _errors.__all__}
    assert set(tree) == set(classes) - {"NboError"}
    for name, (parent, _) in tree.items():
        cls = classes[name]
        assert [b.__name__ for b in cls.__bases__ if issubclass(b, NboError)] == [parent], name
        assert cls.__doc__ and "\n" not in cls.__doc__.strip(), f"{name}: one-line docstring"


def test_each_class_has_a_single_parent_in_the_tree() -> None:
    for name in _errors.__all__:
        cls = getattr(_errors, name)
        assert len([b for b in cls.__bases__ if issubclass(b, NboError)]) <= 1, name


@pytest.mark.parametrize("name", sorted(n for n, (_, code) in drawn_tree().items() if code))
def test_the_drawn_grpc_status_is_the_one_the_gateway_answers(name: str) -> None:
    cls = getattr(_errors, name)
    code = drawn_tree()[name][1]
    error = cls("x", field="f") if "field" in inspect.signature(cls.__init__).parameters else cls("x")
    assert status_for(error)[0] is getattr(grpc.StatusCode, code)


def test_no_status_is_chosen_by_an_attribute_or_a_string() -> None:
    source = inspect.getsource(importlib.import_module("nbo.gateway._status"))
    assert "grpc_status" not in source and "getattr(grpc.StatusCode" not in source
    for cls in defined_exceptions().values():
        assert not hasattr(cls, "grpc_status"), cls
