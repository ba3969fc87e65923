"""Who may import whom (docs/architecture.md), checked on the installed packages' source.

* Each package is entered through its front door: ``nbo.sdk`` (for applications) and
  ``nbo.sdk.core`` (for the other nbo packages), ``nbo.gateway``, ``nbo.model_export``,
  ``nbo.cli``, the generated ``nbo.v1`` stubs. No module outside a package imports that
  package's underscore modules — not the other packages, not examples/ or scripts/.
* Tests and benchmarks are white-box: they may reach a private module for a name no front
  door exports (a helper under test), but a name a front door exports is imported from there.
* The packages form layers: ``nbo.sdk`` imports none of the others; ``nbo.gateway`` and
  ``nbo.model_export`` build on ``nbo.sdk`` only (``model_export/_demo.py``, the whole-loop
  demo, also starts a gateway); ``nbo.console`` (the web console) on ``nbo.sdk`` and the
  gateway's front door (its configuration); ``nbo.cli`` sits on top of all of them.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from source_helpers import PACKAGES, imports, installed_modules

ROOT = Path(__file__).resolve().parent.parent
FRONT_DOORS = {"nbo.sdk": ("nbo.sdk", "nbo.sdk.core")}
# package -> the nbo packages its modules may import (nbo.v1 is the shared wire format)
MAY_IMPORT = {
    "nbo.sdk": {"nbo.v1"},
    "nbo.gateway": {"nbo.sdk", "nbo.v1"},
    "nbo.model_export": {"nbo.sdk", "nbo.v1"},
    "nbo.console": {"nbo.sdk", "nbo.gateway", "nbo.v1"},
    "nbo.cli": {"nbo.sdk", "nbo.gateway", "nbo.model_export", "nbo.console", "nbo.v1"},
    "nbo.v1": set(),
}
EXCEPTIONS = {("nbo.model_export._demo", "nbo.gateway")}  # the demo runs a gateway
WHITE_BOX = ("tests", "bench")
OUTSIDE = ("examples", "scripts", *WHITE_BOX)


def package_of(name: str) -> str | None:
    return next((p for p in PACKAGES if name == p or name.startswith(p + ".")), None)


def private_part(name: str, package: str) -> bool:
    rest = name[len(package) + 1:].split(".") if name != package else []
    return any(part.startswith("_") and not part.endswith("__") for part in rest)  # dunders are public


def targets(module: str, names: list[str]) -> Iterator[str]:
    """The modules an import statement reaches: ``module`` and ``module.name`` for names that
    are modules (``from nbo.sdk import _store``)."""
    yield module
    for name in names:
        yield f"{module}.{name}"


def front_door_names(package: str) -> set[str]:
    names: set[str] = set()
    for door in FRONT_DOORS.get(package, (package,)):
        names |= set(getattr(importlib.import_module(door), "__all__", ()))
    return names


def test_no_package_imports_another_packages_private_modules() -> None:
    problems = []
    for package in PACKAGES:
        for module, path in installed_modules(package):
            for line, imported, names in imports(path, module):
                for target in targets(imported, names):
                    other = package_of(target)
                    if other and other != package and private_part(target, other):
                        problems.append(f"{path}:{line}: {module} imports {target}")
    assert not problems, "use the package's front door:\n" + "\n".join(problems)


def test_outside_code_uses_the_front_doors() -> None:
    problems = []
    for directory in OUTSIDE:
        for path in sorted((ROOT / directory).rglob("*.py")):
            for line, imported, names in imports(path, None):
                package = package_of(imported)
                if package is None:
                    continue
                if directory not in WHITE_BOX:
                    reached = [t for t in targets(imported, names) if private_part(t, package)]
                    if reached:
                        problems.append(f"{path.relative_to(ROOT)}:{line}: imports {reached[0]}")
                elif private_part(imported, package):
                    exported = sorted(set(names) & front_door_names(package))
                    if exported:
                        problems.append(f"{path.relative_to(ROOT)}:{line}: {', '.join(exported)} from "
                                        f"{imported}; a front door of {package} exports it")
    assert not problems, "\n".join(problems)


def test_packages_import_only_the_layers_below() -> None:
    problems = []
    for package in PACKAGES:
        for module, path in installed_modules(package):
            for line, imported, names in imports(path, module):
                other = package_of(imported)
                if other is None or other == package and not names:
                    continue
                reached = {package_of(t) for t in targets(imported, names)} - {None, package}
                for dep in sorted(d for d in reached if d is not None):
                    if dep not in MAY_IMPORT[package] and (module, dep) not in EXCEPTIONS:
                        problems.append(f"{path}:{line}: {module} imports {dep}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("package", ["nbo.sdk", "nbo.gateway", "nbo.model_export", "nbo.console"])
def test_importing_a_package_loads_no_layer_above_it(package: str) -> None:
    """Every module of the package imported in a fresh interpreter: nothing of the layers it
    must not use is loaded (the static check above also sees imports inside functions)."""
    modules = [m for m, _ in installed_modules(package) if m != "nbo.model_export._demo"]
    forbidden = sorted(set(PACKAGES) - MAY_IMPORT[package] - {package})
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except ImportError as exc:\n"  # an optional extra that is not installed
        "        print('skipped', m, exc, file=sys.stderr)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[:2] in {[p.split('.') for p in forbidden]!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_internal_front_door_is_what_it_says() -> None:
    import nbo.sdk
    import nbo.sdk.core

    assert not set(nbo.sdk.core.__all__) & set(nbo.sdk.__all__), "public names come from nbo.sdk"
    for name in nbo.sdk.core.__all__:
        assert hasattr(nbo.sdk.core, name), name


def test_tests_share_helpers_not_each_other() -> None:
    """A test module imports helper modules (``*_helpers``, ``*_fixtures``), never another test module."""
    found = [f"{path.relative_to(ROOT)}:{line} imports {target}"
             for path in sorted((ROOT / "tests").rglob("*.py"))
             for line, target, _ in imports(path, None)
             if target.split(".")[0].startswith("test_") or target.startswith("tests.")]
    assert found == []
