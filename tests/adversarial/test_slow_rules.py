"""Attack class: rules that cost too much, and decisions nobody waits for.

A catalog rule can be arbitrarily expensive — a nested comprehension of 10^8 steps made one
decision take 36 s and, evaluated at publish (an offer-only rule), froze ``Health`` for minutes:
CEL evaluation holds the interpreter. And a ``Decide`` whose client gave up while it waited for
the hub's write lock was still recorded as shown. Now:

- the rule cost budget: a static bound wherever a rule is compiled (at most 2 nested
  comprehensions, literals of at most 1,000 elements, at most 100,000 steps over literals) and,
  at build, a measured evaluation on sample data (at most 5 ms), each refusal naming the rule;
- a bundle over the static budget is refused at install and at publish before any evaluation,
  with ``Health`` answering throughout;
- a decision whose caller has gone by the time it would be recorded is not recorded;
- lists in a request's profile or context are at most 1,000 items, so what a rule can do
  over request data is bounded too.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
from bundle_fixtures import make_bundle, make_keys, small_catalog
from careless_bundles import assert_install_refused, with_rule
from gateway_helpers import APP, PUBLISHER, config_data, publish_chunks, running_gateway
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nbo.model_export import validate_catalog
from nbo.sdk import CatalogError
from nbo.v1 import decision_pb2


def literal(n: int) -> str:
    """A list literal of ``n`` ones (compact: rules are capped at 8,192 characters)."""
    return "[" + ",".join("1" * n) + "]"


# ~10^8 steps: tens of seconds of one core, holding the interpreter, per offer it applies to.
HUGE = f"{literal(1000)}.all(x, {literal(1000)}.all(y, {literal(100)}.all(z, offer.value + x + y + z > -1.0)))"


def refused(rule: str, **catalog_extra: Any) -> str:
    catalog = small_catalog()
    catalog.update(catalog_extra)
    catalog["rules"].append({"rule_id": "costly", "kind": "business", "expression": rule})
    with pytest.raises(CatalogError) as info:
        validate_catalog(catalog, source="catalog.yaml")
    message = str(info.value)
    assert "catalog.yaml: rules[" in message and "(rule_id=costly): expression: over the rule cost budget" in message
    return message


def test_build_refuses_deep_comprehension_nesting() -> None:
    assert "take 1,000,000 steps" in refused(HUGE)  # refused at the second level already
    assert "comprehensions nested 3 deep; at most 2" in refused(
        "customer.a.all(x, customer.b.all(y, customer.c.exists(z, x == z)))")


def test_build_refuses_large_literals_and_many_steps_over_literals() -> None:
    assert "literal of 1001 elements; at most 1000" in refused(f"customer.age in {literal(1001)}")
    assert "take 160,000 steps; at most 100,000" in refused(f"{literal(400)}.all(x, {literal(400)}.exists(y, x == y))")


def test_build_measures_rules_on_sample_data() -> None:
    """Within the static bound, but 90,000 steps on the catalog's own sample profile."""
    message = refused("customer.big.all(x, customer.big.all(y, x + y > -1))",
                      new_customer_profile={"big": list(range(300))})
    assert "one evaluation on the build's sample data took" in message and "at most 5 ms" in message


def test_ordinary_rules_stay_within_the_budget() -> None:
    catalog = small_catalog()
    catalog["rules"].append({"rule_id": "fine", "kind": "business",
                             "expression": f"{literal(50)}.exists(x, x == 3) && customer.age in {literal(200)}"})
    validate_catalog(catalog, source="catalog.yaml")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(public key, a good v1, a v2 with an offer-only 10^8-step rule, signed by the trusted key)."""
    root = tmp_path_factory.mktemp("slow")
    key, pub = make_keys(root / "keys")
    v1 = make_bundle(root / "b", key=key, version=1)
    v2 = make_bundle(root / "b", key=key, version=2)
    return pub, v1, with_rule(v2, root / "huge-v2.zip", key=key, rule_id="huge_rule", expression=HUGE)


def test_install_refuses_a_rule_over_the_static_budget(tmp_path: Path, bundles: tuple[Path, Path, Path]) -> None:
    pub, v1, huge = bundles
    assert_install_refused(tmp_path / "state", pub=pub, good=v1, bad=huge, match="huge_rule.*over the rule cost budget")


def test_publishing_it_does_not_freeze_health(tmp_path: Path, bundles: tuple[Path, Path, Path]) -> None:
    pub, v1, huge = bundles
    with running_gateway(tmp_path / "gw", config_data(trusted_key=pub)) as gw:
        gw.publisher.PublishBundle(publish_chunks(v1.read_bytes()), metadata=PUBLISHER, timeout=60)
        outcome: dict[str, Any] = {}

        def upload() -> None:
            try:
                gw.publisher.PublishBundle(publish_chunks(huge.read_bytes()), metadata=PUBLISHER, timeout=600)
            except grpc.RpcError as exc:
                outcome["error"] = exc

        uploader = threading.Thread(target=upload)
        uploader.start()
        health = health_pb2_grpc.HealthStub(gw.channel)
        try:
            while uploader.is_alive():
                # answered within 2 s all along: the rule is refused before anything evaluates it
                status = health.Check(health_pb2.HealthCheckRequest(), timeout=2).status
                assert status == health_pb2.HealthCheckResponse.SERVING
                uploader.join(0.05)
        finally:
            uploader.join(600)
        error = outcome["error"]
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "huge_rule" in error.details() and "cost budget" in error.details()


def test_a_decision_whose_caller_gave_up_is_not_recorded(tmp_path: Path, bundles: tuple[Path, Path, Path]) -> None:
    pub, v1, _ = bundles
    with running_gateway(tmp_path / "gw", config_data(trusted_key=pub)) as gw:
        gw.publisher.PublishBundle(publish_chunks(v1.read_bytes()), metadata=PUBLISHER, timeout=60)
        lock = sqlite3.connect(tmp_path / "gw" / "hub.sqlite", isolation_level=None, timeout=30)
        try:
            lock.execute("BEGIN IMMEDIATE")  # the hub's writer lock, held by someone else
            with pytest.raises(grpc.RpcError) as info:
                gw.decision.Decide(decision_pb2.DecideRequest(customer_id="gave-up", channel="app"), metadata=APP,
                                   timeout=0.5)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        # The decider is one thread, first come first served: this one is decided after the other.
        answer = gw.decision.Decide(decision_pb2.DecideRequest(customer_id="waited", channel="app"), metadata=APP,
                                    timeout=30)
        assert answer.offers
        with gw.server.hub.db.transaction() as tx:
            recorded = [row[0] for row in tx.execute("SELECT customer_id FROM decisions")]
            shown = [row[0] for row in tx.execute("SELECT DISTINCT customer_id FROM contact_history")]
        assert recorded == ["waited"]
        assert shown == ["waited"]


def test_request_lists_are_bounded_for_rules_to_run_over(tmp_path: Path, bundles: tuple[Path, Path, Path]) -> None:
    """What the static budget leaves to the data: a rule's comprehension over a request's list
    runs over at most 1,000 items (the request is refused naming the field otherwise)."""
    pub, v1, _ = bundles
    with running_gateway(tmp_path / "gw", config_data(trusted_key=pub)) as gw:
        gw.publisher.PublishBundle(publish_chunks(v1.read_bytes()), metadata=PUBLISHER, timeout=60)
        request = decision_pb2.DecideRequest(customer_id="c1", channel="app")
        request.profile.update({"owned_products": [f"P{i}" for i in range(1001)]})
        with pytest.raises(grpc.RpcError) as info:
            gw.decision.Decide(request, metadata=APP, timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "profile.owned_products has 1001 items; at most 1000 are allowed"
        request.profile.update({"owned_products": [f"P{i}" for i in range(1000)]})
        assert gw.decision.Decide(request, metadata=APP, timeout=10).offers
