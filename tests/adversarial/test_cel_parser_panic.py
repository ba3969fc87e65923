"""Attack class: CEL text that crashes the Rust parser.

The ``cel`` extension panics on a syntax error past column 65,535 (``PanicException``, a
``BaseException`` that ``except Exception`` lets through) and overflows its stack on tens of
thousands of chained operators. Nothing of that may reach a caller: the CEL boundary
(``sdk/_rules.py``) turns a panic into ``RuleError``, and expressions longer than
``MAX_EXPRESSION_CHARS`` (8,192) are refused at build, at install and at publish before the
parser sees them.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from bundle_fixtures import make_bundle, make_keys, small_catalog
from careless_bundles import assert_install_refused, with_rule
from gateway_helpers import APP, PUBLISHER, config_data, publish_chunks, running_gateway
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nbo.model_export import validate_catalog
from nbo.sdk import CatalogError, RuleError
from nbo.sdk.core import MAX_EXPRESSION_CHARS, compile_expression
from nbo.v1 import decision_pb2

# A syntax error at column ~70,000: the parser panics formatting its own error message.
PANICKING = "customer.age > 1 && " + " " * 70_000 + ")"


def test_the_parser_really_panics_on_this_text() -> None:
    """The premise: without the boundary, the extension raises a BaseException."""
    from nbo.sdk._rules import cel

    with pytest.raises(BaseException) as info:  # noqa: PT011 - the point is what kind it is
        cel.compile(PANICKING)
    assert not isinstance(info.value, Exception)
    assert type(info.value).__name__ == "PanicException"


def test_the_boundary_turns_a_panic_into_rule_error() -> None:
    from nbo.sdk._rules import _compile  # the uncapped compile, to reach the real panic

    with pytest.raises(RuleError, match="rule 'long': does not compile"):
        _compile(PANICKING, what="rule 'long'")


def test_expressions_over_the_cap_are_refused_before_parsing() -> None:
    with pytest.raises(RuleError, match=f"{len(PANICKING)} characters long; at most {MAX_EXPRESSION_CHARS}"):
        compile_expression(PANICKING, what="rule 'long'")
    at_cap = "true" + " && true" * ((MAX_EXPRESSION_CHARS - 4) // 8)
    at_cap += " " * (MAX_EXPRESSION_CHARS - len(at_cap))
    assert len(at_cap) == MAX_EXPRESSION_CHARS
    compile_expression(at_cap, what="rule 'at_cap'")
    with pytest.raises(RuleError, match="at most 8192"):
        compile_expression(at_cap + " ", what="rule 'over'")


def test_bundle_build_refuses_a_long_rule_naming_it() -> None:
    catalog = small_catalog()
    catalog["rules"].append({"rule_id": "long_rule", "kind": "business", "expression": PANICKING})
    with pytest.raises(CatalogError) as info:
        validate_catalog(catalog, source="catalog.yaml")
    message = str(info.value)
    assert "(rule_id=long_rule): expression:" in message
    assert f"at most {MAX_EXPRESSION_CHARS} are allowed" in message


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(public key, a good v1, a v2 with a panicking rule signed by the same trusted key)."""
    root = tmp_path_factory.mktemp("panic")
    key, pub = make_keys(root / "keys")
    v1 = make_bundle(root / "b", key=key, version=1)
    v2 = make_bundle(root / "b", key=key, version=2)
    bad = with_rule(v2, root / "bad-v2.zip", key=key, rule_id="long_rule", expression=PANICKING)
    return pub, v1, bad


def test_install_refuses_it_and_the_old_bundle_keeps_serving(tmp_path: Path, bundles: tuple[Path, Path, Path]) -> None:
    pub, v1, bad = bundles
    assert_install_refused(tmp_path / "state", pub=pub, good=v1, bad=bad, match="long_rule")


def test_publish_answers_invalid_argument_and_the_gateway_keeps_serving(
    tmp_path: Path, bundles: tuple[Path, Path, Path]
) -> None:
    pub, v1, bad = bundles
    with running_gateway(tmp_path / "gw", config_data(trusted_key=pub)) as gw:
        gw.publisher.PublishBundle(publish_chunks(v1.read_bytes()), metadata=PUBLISHER, timeout=60)
        with pytest.raises(grpc.RpcError) as info:
            gw.publisher.PublishBundle(publish_chunks(bad.read_bytes()), metadata=PUBLISHER, timeout=60)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "long_rule" in (info.value.details() or "")
        health = health_pb2_grpc.HealthStub(gw.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        answer = gw.decision.Decide(decision_pb2.DecideRequest(customer_id="c1", channel="app"), metadata=APP, timeout=10)
        assert answer.bundle_version == 1
