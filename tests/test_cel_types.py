"""Typos in rules fail the bundle build, naming the rule and the field.

The build type-checks every rule and strategy condition against the fields ``customer``,
``offer`` and ``context`` have (measures, ``new_customer_profile``, ``profile_fields``, the
models' inputs, the offer columns and attributes, ``context_fields``). These tests run
``nbo bundle build`` as a real process for the cases of the issue, table-test the checker
through ``validate_catalog``, and hold the checker to the runtime: what it refuses as
impossible really fails (or is constant) under the real CEL evaluator, on data of the
declared types.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from bundle_fixtures import make_keys, make_model, small_catalog
from gateway_helpers import NBO_CLI
from nbo.model_export import build_bundle, validate_catalog
from nbo.sdk import CatalogError
from nbo.sdk.core import compile_expression


def catalog_with(expression: str, *, kind: str = "business", **extra: Any) -> dict[str, Any]:
    cat = small_catalog()
    cat["rules"] = [{"rule_id": "r_under_test", "kind": kind, "applies_to": "*", "expression": expression}]
    cat.update(extra)
    return cat


def refusal(expression: str, **extra: Any) -> str:
    with pytest.raises(CatalogError) as info:
        validate_catalog(catalog_with(expression, **extra), source="catalog.yaml")
    text = str(info.value)
    assert "rules[0] (rule_id=r_under_test): expression: " in text, text
    return text


# -- the build, as a user runs it ----------------------------------------------------------


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cel-types")
    key, _ = make_keys(root / "keys")
    return key, make_model(root / "propensity.onnx")


def build(kit: tuple[Path, Path], tmp_path: Path, expression: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    key, model = kit
    catalog = tmp_path / "catalog.yaml"
    cat = small_catalog()
    cat["rules"][0]["expression"] = expression  # rules[0] is adults_only
    catalog.write_text(yaml.safe_dump(cat, sort_keys=False), encoding="utf-8")
    out = tmp_path / "retail-v1.zip"
    result = subprocess.run([*NBO_CLI, "bundle", "build", "--catalog", str(catalog), "--model",
                             f"propensity={model}", "--name", "retail", "--version", "1", "--key", str(key),
                             "--out", str(out)], capture_output=True, text=True, timeout=120)
    return result, out


@pytest.mark.parametrize(("expression", "first_line"), [
    ("customer.monetry >= 200.0",
     "error: catalog.yaml: rules[0] (rule_id=adults_only): expression: unknown field customer.monetry "
     "(did you mean customer.monetary?)"),
    ("customer.segment > 3",
     "error: catalog.yaml: rules[0] (rule_id=adults_only): expression: customer.segment (a string) cannot be "
     "compared with 3 (an int) by '>'"),
])
def test_the_build_refuses_a_typo_naming_the_rule_and_the_field(kit: tuple[Path, Path], tmp_path: Path,
                                                                 expression: str, first_line: str) -> None:
    result, out = build(kit, tmp_path, expression)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == first_line
    assert lines[1] == f"    {expression}"  # the expression, and the caret under the problem
    assert lines[2].index("^") - 4 == (expression.index("monetry") if "monetry" in expression
                                       else expression.index(">"))
    assert not out.exists()


def test_the_build_shows_a_syntax_error_whole_with_a_caret(kit: tuple[Path, Path], tmp_path: Path) -> None:
    result, out = build(kit, tmp_path, "customer.age >= && true")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: catalog.yaml: rules[0] (rule_id=adults_only): expression: CEL syntax error at column 17: "
        "extraneous input '&&' expecting a value",
        "    customer.age >= && true",
        "                    ^",
    ]
    assert not out.exists()


def test_the_models_inputs_are_fields_rules_may_read(kit: tuple[Path, Path], tmp_path: Path) -> None:
    key, _ = kit
    # a model reading customer__region (a string) and context__store: rules may read both
    model = make_model(tmp_path / "m.onnx", inputs=(("customer__region", "string"), ("context__store", "string"),
                                                    ("offer__category", "string")))
    cat = catalog_with("customer.region == 'north' || context.store.startsWith('S')")
    build_bundle(catalog=cat, models={"propensity": model}, name="r", version=1, key=key, out=tmp_path / "ok.zip")
    with pytest.raises(CatalogError, match=r"customer.region \(a string\) cannot be compared with 3"):
        build_bundle(catalog=catalog_with("customer.region > 3"), models={"propensity": model}, name="r",
                     version=1, key=key, out=tmp_path / "bad.zip")
    assert not (tmp_path / "bad.zip").exists()
    # without the model, the same field is unknown until declared
    assert "unknown field customer.region" in refusal("customer.region == 'north'")
    validate_catalog(catalog_with("customer.region == 'north'", profile_fields={"region": "string"}))


# -- what is accepted and what is refused --------------------------------------------------

ACCEPTED = [
    "customer.monetary >= 200.0",
    "customer.monetary >= 200",  # int and double compare
    "customer.frequency * 2 > 3",
    "double(customer.frequency) * 1.5 > 3.0",
    "!has(customer.age) || customer.age >= 18",
    "customer.age + 1 > 18",  # age is a number: int or double, arithmetic cannot be judged
    "customer.lifecycle_stage in ['declining', 'inactive']",
    "customer.loyalty_stage == 'grow_me'",
    "customer.segment.startsWith('aff') && size(customer.segment) > 2",
    "!(offer.offer_id in customer.owned_products)",
    "customer.owned_products.exists(p, p == offer.offer_id)",
    "customer.owned_products.all(p, p.startsWith('B'))",
    "customer.owned_products.map(p, size(p)).exists(n, n > 3)",
    "size(customer.owned_products.filter(p, p != 'x')) >= 0",
    "offer.category == 'upsell' || offer.value > 1.0",
    "offer.attributes.price <= 50.0",  # an attribute only some offers have
    "offer.attributes.tier == 'gold'",
    "offer.fallback || context.channel != 'app' || context.hour >= 17",
    "context.weekday < 5 ? context.hour >= 9 : context.hour >= 11",
    "'pos' in offer.channels",
    "customer['age'] >= 18",
    "timestamp(offer.valid_to) > timestamp('2026-01-01T00:00:00Z')",
    "timestamp(offer.valid_to).getFullYear() >= 2026",
    "customer.points_balance - 10 >= 0",
    "customer.recency_days == null || customer.recency_days < 30.0",
    "{'a': 1}['a'] == 1 && [1, 2][0] == 1",
    "dyn(customer.segment) == 3",  # dyn: the author said "any"
    "size([,]) == 0 && size({,}) == 0",  # CEL's empty list and map with a lone comma
    "true",
]

REFUSED = [
    ("customer.monetry >= 200.0", "unknown field customer.monetry (did you mean customer.monetary?)"),
    ("customer.segment > 3", "customer.segment (a string) cannot be compared with 3 (an int) by '>'"),
    ("customer.segment == 3", "customer.segment (a string) is never equal to 3 (an int): '==' is always false"),
    ("customer.segment != 3", "'!=' is always true"),
    ("customer.vip", "unknown field customer.vip (a profile field is declared under profile_fields"),
    ("has(customer.agee)", "unknown field customer.agee (did you mean customer.age?)"),
    ("customer['monetry'] > 1.0", "unknown field customer.monetry"),
    ("customer.lifecycle_stage == 'actve'", "'actve' is not (did you mean 'active'? '==' is always false)"),
    ("offer.category in ['xsell', 'upsel']", "'upsel' is not (did you mean 'upsell'?"),
    ("context.channel == 'ap'", "context.channel is one of app, email, pos, web; 'ap' is not"),
    ("customer.frequency * 1.5 > 3.0", "CEL does not mix double and int in arithmetic"),
    ("offer.margin % 2.0 == 0.0", "'%' is for integers"),
    ("offer.attributes.prize > 1.0", "unknown field offer.attributes.prize (did you mean offer.attributes.price?)"),
    ("offer.attributes.max_age > 1", "unknown field offer.attributes.max_age (no offer has this attribute)"),
    ("offer.min_age > 1", "unknown field offer.min_age (attributes are read as offer.attributes.NAME)"),
    ("context.store == 'S1'", "unknown field context.store (a request context field is declared under "
                              "context_fields"),
    ("customer.age.years > 1", "has no fields; customer.age.years can never be read"),
    ("customer.segment.lowerAscii() == 'a'", "unknown function lowerAscii()"),
    ("customer.age.startsWith('1')", ".startsWith() is a string function"),
    ("customer.segment && true", "'&&' joins bools; customer.segment (a string) is not one"),
    ("!customer.segment", "'!' negates a bool"),
    ("customer.age", "the expression gives a number, not a bool"),
    ("customer.segment in 3", "'in' looks in a list or a map"),
    ("3 in customer.owned_products", "can never be in"),
    ("customer.owned_products > 1", "cannot be compared with"),
    ("customer.segment ? true : false", "the condition of '? :' must be a bool"),
    ("customer.owned_products.exists(p, p)", "the condition of .exists() must be a bool"),
    ("customer.age.exists(p, true)", ".exists() runs over a list or a map"),
    ("'a' + 1 == 'a1'", "'+' is not defined for 'a' (a string) and 1 (an int)"),
    ("size(customer.age) > 1", "size() is not defined for customer.age (a number)"),
    ("shopper.age > 1", "CEL may only reference context, customer, offer"),
]


@pytest.mark.parametrize("expression", ACCEPTED)
def test_what_is_accepted(expression: str) -> None:
    validate_catalog(catalog_with(expression), source="catalog.yaml")


@pytest.mark.parametrize(("expression", "message"), REFUSED, ids=[e for e, _ in REFUSED])
def test_what_is_refused_names_the_rule_and_the_field(expression: str, message: str) -> None:
    text = refusal(expression)
    assert message in text, text
    if "CEL may only reference" not in text:
        expr_line, caret = text.splitlines()[1:3]
        assert expr_line == f"    {expression}" and caret.strip() == "^"


def test_a_strategy_condition_is_checked_too() -> None:
    cat = small_catalog()
    cat["strategy_assignment"][0]["condition"] = "customer.lifecycle_stage == 'declning'"
    with pytest.raises(CatalogError, match=r"strategy_assignment\[0\]: condition: customer.lifecycle_stage is one "
                                           r"of .*'declning' is not \(did you mean 'declining'\?"):
        validate_catalog(cat, source="catalog.yaml")


def test_a_multi_line_expression_points_at_the_right_line() -> None:
    text = refusal("customer.age >= 18 &&\n  customer.segment > 3")
    assert text.splitlines()[1:3] == ["      customer.segment > 3", "                       ^"]


@pytest.mark.parametrize(("section", "value", "message"), [
    ("profile_fields", {"vip": "boolean"}, "profile_fields: vip: unknown type 'boolean'"),
    ("profile_fields", {"monetary": "string"}, "profile_fields: monetary: the SDK supplies this field itself"),
    ("profile_fields", ["vip"], "profile_fields: must be a mapping of field name to type"),
    ("context_fields", {"hour": "string"}, "context_fields: hour: the SDK supplies this field itself"),
    ("context_fields", {"2nd": "string"}, "context_fields: 2nd: a field name is letters"),
])
def test_declarations_are_checked(section: str, value: Any, message: str) -> None:
    cat = catalog_with("true", **{section: value})
    with pytest.raises(CatalogError, match=message.replace("(", r"\(")):
        validate_catalog(cat, source="catalog.yaml")


def test_declared_types_are_used() -> None:
    fields = {"vip": "bool", "tags": "list<string>", "scores": "map<string, double>", "joined": "timestamp",
              "anything": "any"}
    validate_catalog(catalog_with("customer.vip && 'gold' in customer.tags && customer.scores['x'] > 0.5 && "
                                  "customer.joined < timestamp('2030-01-01T00:00:00Z') && customer.anything == 1",
                                  profile_fields=fields))
    assert "cannot be compared" in refusal("customer.vip > 1", profile_fields=fields)
    assert "can never be in" in refusal("1 in customer.tags", profile_fields=fields)
    validate_catalog(catalog_with("context.store == 'S1' && context.basket_value > 10.0",
                                  context_fields={"store": "string", "basket_value": "double"}))


# -- refused means impossible: the real evaluator agrees --------------------------------------

# (expression, data of the declared types) for refusals of impossible operations: under the
# real CEL evaluator each raises or gives the one value the checker said it always gives.
IMPOSSIBLE = [
    ("customer.segment > 3", {"customer": {"segment": "mass"}}, None),
    ("customer.segment == 3", {"customer": {"segment": "3"}}, False),
    ("customer.segment != 3", {"customer": {"segment": "3"}}, True),
    ("customer.frequency * 1.5 > 3.0", {"customer": {"frequency": 4}}, None),
    ("offer.margin % 2.0 == 0.0", {"offer": {"margin": 4.0}}, None),
    ("customer.age.years > 1", {"customer": {"age": 30}}, None),
    ("customer.segment.lowerAscii() == 'a'", {"customer": {"segment": "a"}}, None),
    ("customer.segment && true", {"customer": {"segment": "a"}}, None),
    ("customer.segment in 3", {"customer": {"segment": "a"}}, None),
    ("customer.owned_products > 1", {"customer": {"owned_products": ["a"]}}, None),
    ("'a' + 1 == 'a1'", {}, None),
    ("customer.monetry >= 200.0", {"customer": {"monetary": 300.0}}, None),
    ("customer.lifecycle_stage == 'actve'", {"customer": {"lifecycle_stage": "active"}}, False),
]


@pytest.mark.parametrize(("expression", "data", "constant"), IMPOSSIBLE, ids=[e for e, _, _ in IMPOSSIBLE])
def test_a_refused_expression_cannot_work_at_run_time(expression: str, data: dict[str, Any],
                                                      constant: bool | None) -> None:
    refusal(expression)
    program = compile_expression(expression, what="test")
    variables = {"customer": {}, "offer": {}, "context": {}, **data}
    try:
        result = program.execute(variables)
    except Exception:  # the evaluator refuses it: what the engine reports as "rule failed"
        assert constant is None, f"{expression} failed, but the checker said it is always {constant}"
        return
    assert constant is not None and result is constant, f"{expression} gave {result!r} at run time"


# -- the checker reads what CEL reads --------------------------------------------------------

_ATOMS = ["customer", "offer", "context", "customer.age", "customer.segment", "customer.owned_products",
          "offer.attributes", "offer.attributes.price", "1", "1.5", "2u", "'s'", "b'x'", "true", "null", "[1, 'a']",
          "{'k': 1}", "x", "size", "has", "(", ")", "[", "]", "{", "}", ".", ",", "?", ":", "!", "-", "+", "*", "/",
          "%", "==", "<", ">=", "&&", "||", "in", "exists", "map", "filter", "all", "startsWith", "timestamp", "int",
          "double", "dyn", "type", "0x1f", "1e3", "r'a'", '"""t"""', "// note\n"]


def test_every_expression_cel_compiles_is_read_by_the_checker() -> None:
    """Token soups (seeded): whatever the CEL compiler accepts, the checker parses too — it may
    refuse it for its types, never for its syntax, and never crashes."""
    import random

    import cel
    from nbo.model_export._catalog import _OFFER_FIELD_TYPES
    from nbo.model_export._cel_types import catalog_fields, check_expression

    fields = catalog_fields(offers=[{"attributes": {"price": 1.0}}], offer_columns=_OFFER_FIELD_TYPES,
                            channels=["pos"], new_customer_profile={"segment": "m"},
                            profile_fields={}, context_fields={}, model_inputs={"customer__age": "float"})
    rng = random.Random(17)
    compiled = 0
    for _ in range(20000):
        expression = " ".join(rng.choice(_ATOMS) for _ in range(rng.randint(1, 8)))
        try:
            cel.compile(expression)
        except BaseException:
            continue
        compiled += 1
        problem = check_expression(expression, fields, allowed=("customer", "offer", "context"))
        first = (problem or "").split("\n")[0]
        assert not first.startswith(("expected", "unexpected", "a string literal")), (expression, problem)
    assert compiled > 500
