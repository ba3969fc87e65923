"""mypy sees the packages as the code imports them (nbo.*), so types crossing a package
boundary are real, not Any (pyproject.toml [tool.mypy], mypy-path/)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SNIPPET = '''\
from nbo.gateway import HubStateStore, HubStore, create_server
from nbo.sdk import Client
from nbo.sdk.core import StateStore, decide

a: int = HubStore.open(None, state_dir="s")
b: int = Client.open("s", device_id="d", trusted_keys=[])
c: int = decide
d: int = create_server


def seams(hub: HubStateStore) -> None:
    store: StateStore = hub  # the hub-backed store is a StateStore: no error here
    with store.transaction(durable=True) as tx:
        e: int = tx
'''


def test_cross_package_types_are_not_any(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    out, err, status = api.run([str(snippet), "--config-file", str(ROOT / "pyproject.toml"),
                                "--cache-dir", str(ROOT / ".mypy_cache"), "--no-error-summary"])
    assert status == 1, out + err  # every deliberate mistake must be reported: nothing is Any
    lines = out.splitlines()
    expected = {5: '"HubStore"', 6: '"Client"', 7: '-> Decision"',
                8: "GatewayServer", 14: '"Tx"'}
    for line, type_text in expected.items():
        hits = [x for x in lines if f"snippet.py:{line}: error: Incompatible types in assignment" in x]
        assert hits and type_text in hits[0], (line, out)
    assert len([x for x in lines if ": error:" in x]) == len(expected), out


@pytest.mark.parametrize("package", ["nbo.gateway", "nbo.model_export"])
def test_lazy_front_doors_show_the_type_checker_the_same_names(package: str) -> None:
    """Each lazy ``__init__`` names its exports twice, for the import system and for mypy."""
    module = importlib.import_module(package)
    tree = ast.parse(Path(module.__file__ or "").read_text())
    checked: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.level == 1
                checked.update({alias.name: str(stmt.module) for alias in stmt.names})
    assert checked == module._EXPORTS


def test_every_package_is_linked_for_the_type_checker() -> None:
    """A package added to pyproject.toml without its mypy-path/ link would be Any to every other."""
    import tomllib

    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for package, directory in mapping.items():
        link = ROOT / "mypy-path" / Path(*package.split("."))
        assert link.is_symlink() and link.resolve() == (ROOT / directory).resolve(), package
