"""One definition per shared fact (sdk/_vocabulary.py): no module defines one again, and the
catalog compiler, the device's plan and the hub agree on every word."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import nbo.sdk.core as core
import pytest
from bundle_fixtures import make_bundle, make_keys, small_catalog
from nbo.gateway import HubStore
from nbo.model_export import validate_catalog
from nbo.sdk import CatalogError, Client, InputError, ManualClock, _vocabulary
from source_helpers import PACKAGES, installed_modules

FACTS = {name: getattr(_vocabulary, name) for name in _vocabulary.__all__}
HOME = Path(_vocabulary.__file__).resolve()


def _literal(node: ast.expr) -> Any:
    """The value of a literal constant, ``frozenset({...})``/``set(...)`` of one included."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("frozenset", "set") and len(node.args) == 1:
        node = node.args[0]
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return None


def _as_set(value: Any) -> frozenset[Any] | None:
    if isinstance(value, tuple | list | set | frozenset) and len(value) > 1:
        try:
            return frozenset(value)
        except TypeError:
            return None
    return None


def test_no_module_defines_a_shared_fact_again() -> None:
    known = {name: _as_set(value) for name, value in FACTS.items()}
    problems = []
    for package in PACKAGES:
        for module, path in installed_modules(package):
            if path.resolve() == HOME:
                continue
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                    if isinstance(node, ast.AnnAssign) and node.value is not None else []
                for target in targets:
                    if not isinstance(target, ast.Name):
                        continue
                    assert isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None
                    value = _as_set(_literal(node.value))
                    same_name = target.id.lstrip("_") in FACTS
                    same_words = [n for n, words in known.items() if words is not None and words == value]
                    if same_name or same_words:
                        problems.append(f"{path}:{node.lineno}: {module}.{target.id} redefines "
                                        f"{(same_words or [target.id.lstrip('_')])[0]}")
    assert not problems, "import it from nbo.sdk.core instead:\n" + "\n".join(problems)


def test_the_shared_names_are_the_vocabulary_objects() -> None:
    from nbo.gateway import _decision_service, _hub
    from nbo.model_export import _catalog
    from nbo.sdk import _records, _runtime, _store

    assert _catalog.POLICY_EVENTS is _runtime.POLICY_EVENTS is core.POLICY_EVENTS
    assert _hub.EVENT_TYPES is _store.EVENT_TYPES is core.EVENT_TYPES
    assert _hub.OUTCOMES is _records.OUTCOMES is core.OUTCOMES
    # every response a policy can count is one a caller can record, on the device and over gRPC
    assert set(core.POLICY_EVENTS) == {"shown", *core.OUTCOMES}
    assert sorted(_decision_service._OUTCOME_NAMES.values()) == sorted(core.OUTCOMES)


@pytest.mark.parametrize("event", core.POLICY_EVENTS)
def test_the_catalog_accepts_every_policy_event_the_plan_counts(event: str) -> None:
    catalog = small_catalog()
    catalog["contact_policies"] = [{"policy_id": "p", "scope": "offer", "event": event, "max_count": 1,
                                    "window_days": 30}]
    validate_catalog(catalog)


def test_an_unknown_policy_event_names_the_known_ones() -> None:
    catalog = small_catalog()
    catalog["contact_policies"] = [{"policy_id": "p", "scope": "offer", "event": "clicked", "max_count": 1,
                                    "window_days": 30}]
    with pytest.raises(CatalogError, match="shown, accepted, declined, ignored"):
        validate_catalog(catalog)


def test_an_ignored_policy_built_into_a_bundle_keeps_an_ignored_offer_away(tmp_path: Path) -> None:
    """The drift that was: the plan counted ``ignored``, the compiler refused it."""
    catalog = small_catalog()
    catalog["contact_policies"] = [{"policy_id": "not_again", "applies_to": "*", "scope": "offer",
                                    "event": "ignored", "max_count": 1, "window_days": 30,
                                    "description": "not after it was ignored"}]
    key, pub = make_keys(tmp_path / "keys")
    bundle = make_bundle(tmp_path / "bundle", key=key, catalog=catalog)
    with Client.open(tmp_path / "state", device_id="pos-1", trusted_keys=[pub], clock=ManualClock()) as client:
        client.install_bundle(bundle)
        first = client.decide("C1", channel="pos", limit=3)
        top = next(o for o in first.offers if not o.mandatory)
        client.record_response(first.decision_id, top.offer_id, "ignored")
        again = client.decide("C1", channel="pos", limit=3, explain=True)
    assert top.offer_id not in [o.offer_id for o in again.offers]
    assert (top.offer_id, "not_again") in [(e.offer_id, e.rule_id) for e in again.excluded]


def test_the_hub_refuses_a_bundle_name_the_sdk_would_refuse(tmp_path: Path) -> None:
    hub = HubStore.open(None, state_dir=tmp_path)
    try:
        with pytest.raises(InputError, match="1-64"):
            hub.register_bundle(b"zip", name="n" * 65, version=1)
    finally:
        hub.close()
