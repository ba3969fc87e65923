"""Reading the installed nbo packages' source: their modules and the imports in them."""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

PACKAGES = ("nbo.sdk", "nbo.gateway", "nbo.model_export", "nbo.console", "nbo.cli", "nbo.v1")


def installed_modules(package: str) -> Iterator[tuple[str, Path]]:
    """(module name, file) of every module of an installed package, generated stubs aside."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, package
    for location in spec.submodule_search_locations:
        for path in sorted(Path(location).rglob("*.py")):
            if path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue
            rel = path.relative_to(location).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([package, *parts]), path


def imports(path: Path, module: str | None) -> Iterator[tuple[int, str, list[str]]]:
    """(line, imported module, names) for every import in ``path``, relative ones resolved,
    plus ``importlib.import_module("…")`` calls with a literal (or f-string prefix) name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                assert module is not None, f"{path}: relative import outside a package"
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            yield node.lineno, target, [a.name for a in node.names]
        elif (isinstance(node, ast.Call) and node.args
              and (getattr(node.func, "attr", None) == "import_module"
                   or getattr(node.func, "id", None) == "import_module")):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield node.lineno, arg.value, []
            elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                yield node.lineno, str(arg.values[0].value).rstrip("."), []
