"""Catalog authoring: every validation error names file, item and field; compile writes the contract tables."""

from __future__ import annotations

import copy
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml
from bundle_fixtures import CATALOG_JSON, CATALOG_YAML, small_catalog
from nbo.model_export import compile_catalog, load_catalog_file, validate_catalog
from nbo.sdk import CatalogError
from nbo.sdk.core import CATEGORIES, DEFAULT_CHANNELS

MODELS = ["propensity"]


def errors_of(catalog: Any, *, model_ids: list[str] | None = MODELS) -> list[str]:
    with pytest.raises(CatalogError) as info:
        validate_catalog(catalog, source="cat.yaml", model_ids=model_ids)
    # one error per "cat.yaml: …" line; a CEL problem continues on the lines under it
    # (the expression and a caret), kept with it
    errors: list[str] = []
    for line in str(info.value).splitlines():
        if line.strip().startswith("cat.yaml: ") and not line.strip().endswith(" catalog errors:"):
            errors.append(line.strip())
        elif errors:
            errors[-1] += "\n" + line
    return errors


def only_error(catalog: Any, **kw: Any) -> str:
    errs = errors_of(catalog, **kw)
    assert len(errs) == 1, errs
    assert errs[0].startswith("cat.yaml: "), errs[0]
    return errs[0]


def offer(i: int, cat: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = cat["offers"][i]
    return result


def test_the_small_catalog_is_valid_in_yaml_and_json():
    from_yaml = validate_catalog(load_catalog_file(CATALOG_YAML), source="y", model_ids=MODELS)
    from_json = validate_catalog(load_catalog_file(CATALOG_JSON), source="j", model_ids=MODELS)
    assert from_yaml.offers == from_json.offers
    assert from_yaml.rules == from_json.rules
    assert len(from_yaml.offers) == 5
    assert from_yaml.offers[0]["valid_from"] == "2024-01-01T00:00:00Z"  # a YAML date becomes UTC midnight


# -- one test per validation error --------------------------------------------------------------


def test_unknown_category_names_file_item_and_field():
    cat = small_catalog()
    offer(2, cat)["category"] = "loyality"
    assert only_error(cat).startswith("cat.yaml: offers[2] (offer_id=POINTS_DOUBLE): category: unknown category")


def test_cel_that_does_not_compile():
    cat = small_catalog()
    cat["rules"][1]["expression"] = "customer.age >"
    err = only_error(cat)
    assert "rules[1] (rule_id=not_owned): expression: CEL syntax error at column 15: mismatched input" in err
    # the whole expression, and a caret under the position
    assert err.splitlines()[1:] == ["    customer.age >", "                  ^"]


def test_rule_may_only_reference_customer_offer_context():
    cat = small_catalog()
    cat["rules"][0]["expression"] = "basket.total > 10 && customer.age > 18"
    err = only_error(cat)
    assert "rules[0] (rule_id=adults_only): expression:" in err and "basket" in err


def test_rule_macro_variables_are_not_mistaken_for_unknown_variables():
    cat = small_catalog()
    cat["rules"][1]["expression"] = "!has(customer.owned_products) || !customer.owned_products.exists(p, p == offer.offer_id)"
    validate_catalog(cat, source="cat.yaml", model_ids=MODELS)


def test_strategy_condition_may_only_reference_customer():
    cat = small_catalog()
    cat["strategy_assignment"][1]["condition"] = "context.channel == 'app'"
    err = only_error(cat)
    assert "strategy_assignment[1]: condition:" in err and "context" in err


def test_strategy_condition_that_does_not_compile():
    cat = small_catalog()
    cat["strategy_assignment"][0]["condition"] = "customer.lifecycle_stage in ["
    err = only_error(cat)
    assert "strategy_assignment[0]: condition: CEL syntax error at column 30: mismatched input '<EOF>' " \
           "expecting a value" in err
    assert err.splitlines()[1:] == ["    customer.lifecycle_stage in [", "    " + " " * 29 + "^"]


def test_model_id_not_in_bundle():
    cat = small_catalog()
    offer(1, cat)["model_id"] = "propensity_v2"
    err = only_error(cat)
    assert "offers[1] (offer_id=INSURANCE_TRAVEL): model_id: model 'propensity_v2' is not in the bundle" in err


def test_model_ids_are_not_checked_when_unknown():
    cat = small_catalog()
    offer(1, cat)["model_id"] = "elsewhere"
    validate_catalog(cat, source="cat.yaml", model_ids=None)


@pytest.mark.parametrize("field", ["expected_volume", "margin", "duration", "lever"])
def test_negative_value_fields(field):
    cat = small_catalog()
    offer(0, cat)[field] = -1
    assert f"offers[0] (offer_id=CARD_GOLD): {field}: must be a number >= 0, got -1" in only_error(cat)


@pytest.mark.parametrize("bad", ["12", True, None, float("nan"), float("inf"), [1]])
@pytest.mark.parametrize("field", ["expected_volume", "margin", "duration", "lever"])
def test_non_numeric_value_fields(field, bad):
    cat = small_catalog()
    offer(3, cat)[field] = bad
    assert f"offers[3] (offer_id=PRIVACY_NOTICE): {field}: must be a number" in only_error(cat)


def test_duplicate_offer_ids():
    cat = small_catalog()
    offer(4, cat)["offer_id"] = "CARD_GOLD"
    assert "offers[4] (offer_id=CARD_GOLD): offer_id: duplicate id (also offers[0])" in only_error(cat)


def test_duplicate_rule_ids():
    cat = small_catalog()
    cat["rules"][2]["rule_id"] = "adults_only"
    assert "rules[2] (rule_id=adults_only): rule_id: duplicate id (also rules[0])" in only_error(cat)


def test_duplicate_contact_policy_ids():
    cat = small_catalog()
    cat["contact_policies"][1]["policy_id"] = "no_repeat_after_decline"
    assert "contact_policies[1] (policy_id=no_repeat_after_decline): policy_id: duplicate id" in only_error(cat)


def test_valid_to_before_valid_from():
    cat = small_catalog()
    offer(0, cat)["valid_from"] = "2025-06-01"
    offer(0, cat)["valid_to"] = "2025-05-31T12:00:00Z"
    err = only_error(cat)
    assert "offers[0] (offer_id=CARD_GOLD): valid_to: 2025-05-31T12:00:00Z is before valid_from" in err


def test_a_date_only_valid_to_covers_the_whole_day():
    cat = small_catalog()
    offer(0, cat)["valid_from"] = "2025-06-01"
    offer(0, cat)["valid_to"] = "2025-06-01"
    valid = validate_catalog(cat, source="cat.yaml", model_ids=MODELS)
    assert (valid.offers[0]["valid_from"], valid.offers[0]["valid_to"]) == (
        "2025-06-01T00:00:00Z", "2025-06-01T23:59:59Z")


@pytest.mark.parametrize("field", ["valid_from", "valid_to"])
@pytest.mark.parametrize("bad", ["next tuesday", "2025-13-01", 20250101])
def test_unparseable_dates(field, bad):
    cat = small_catalog()
    offer(1, cat)[field] = bad
    assert f"offers[1] (offer_id=INSURANCE_TRAVEL): {field}: not an ISO-8601 date or time" in only_error(cat)


def test_strategy_assignment_naming_a_missing_strategy():
    cat = small_catalog()
    cat["strategy_assignment"][2]["strategy"] = "defualt"
    assert "strategy_assignment[2]: strategy: strategy 'defualt' does not exist" in only_error(cat)


def test_strategy_weight_for_unknown_category():
    cat = small_catalog()
    cat["strategies"]["retain"]["retension"] = 2.0
    assert "strategies[retain]: retension: unknown category 'retension'" in only_error(cat)


@pytest.mark.parametrize("bad", [-0.5, "high"])
def test_strategy_weight_must_be_a_non_negative_number(bad):
    cat = small_catalog()
    cat["strategies"]["develop"]["xsell"] = bad
    assert "strategies[develop]: xsell: weight must be" in only_error(cat)


def test_no_fallback_offer():
    cat = small_catalog()
    offer(4, cat)["fallback"] = False
    assert "offers: fallback: no fallback offer" in only_error(cat)


def test_no_offers_at_all():
    cat = small_catalog()
    cat["offers"] = []
    cat["rules"] = [r for r in cat["rules"] if r.get("applies_to") != "CARD_GOLD"]
    assert "top level: offers: must list at least one offer" in only_error(cat)


def test_rule_kind_must_be_one_of_the_three():
    cat = small_catalog()
    cat["rules"][3]["kind"] = "contact"
    assert "rules[3] (rule_id=app_evenings): kind: must be one of business, communication, hygiene" in only_error(cat)


@pytest.mark.parametrize(("field", "bad"), [("scope", "customer"), ("event", "clicked")])
def test_contact_policy_scope_and_event(field, bad):
    cat = small_catalog()
    cat["contact_policies"][0][field] = bad
    assert f"contact_policies[0] (policy_id=no_repeat_after_decline): {field}: must be one of" in only_error(cat)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3"])
def test_contact_policy_max_count_at_least_one(bad):
    cat = small_catalog()
    cat["contact_policies"][1]["max_count"] = bad
    assert "contact_policies[1] (policy_id=app_daily_cap): max_count: must be an integer >= 1" in only_error(cat)


@pytest.mark.parametrize("bad", [0, -1, "7", None])
def test_contact_policy_window_days_positive(bad):
    cat = small_catalog()
    cat["contact_policies"][1]["window_days"] = bad
    assert "contact_policies[1] (policy_id=app_daily_cap): window_days: must be a number > 0" in only_error(cat)


def test_contact_policy_channel_must_be_known():
    cat = small_catalog()
    cat["contact_policies"][1]["channel"] = "kiosk"  # not among the declared channels
    assert "contact_policies[1] (policy_id=app_daily_cap): channel: unknown channel 'kiosk'" in only_error(cat)


def test_offer_channel_must_be_declared_when_channels_are_declared():
    cat = small_catalog()
    offer(0, cat)["channels"] = ["pos", "atm"]
    assert "offers[0] (offer_id=CARD_GOLD): channels: unknown channel 'atm'" in only_error(cat)


def test_unknown_top_level_key():
    cat = small_catalog()
    cat["stratgies"] = {}
    assert "top level: stratgies: unknown field (did you mean 'strategies'?)" in only_error(cat)


@pytest.mark.parametrize(("section", "index", "typo", "label"), [
    ("offers", 0, "margn", "offers[0] (offer_id=CARD_GOLD)"),
    ("rules", 0, "expresion", "rules[0] (rule_id=adults_only)"),
    ("contact_policies", 0, "max_cnt", "contact_policies[0] (policy_id=no_repeat_after_decline)"),
    ("strategy_assignment", 0, "strategyy", "strategy_assignment[0]"),
])
def test_unknown_item_fields(section, index, typo, label):
    cat = small_catalog()
    cat[section][index][typo] = 1
    assert f"{label}: {typo}: unknown field" in only_error(cat)


@pytest.mark.parametrize("bad", [-0.01, 1.5, "0.1"])
def test_exploration_epsilon_in_unit_interval(bad):
    cat = small_catalog()
    cat["exploration"]["epsilon"] = bad
    assert "exploration: epsilon: must be a number in [0, 1]" in only_error(cat)


@pytest.mark.parametrize("section", ["rules", "contact_policies"])
def test_applies_to_must_name_star_a_category_or_an_offer(section):
    cat = small_catalog()
    cat[section][0]["applies_to"] = "CARD_GOLDD"
    assert "applies_to: 'CARD_GOLDD' is neither '*', a category" in only_error(cat)


def test_missing_required_offer_fields():
    cat = small_catalog()
    del offer(1, cat)["margin"]
    del offer(1, cat)["category"]
    errs = errors_of(cat)
    assert any("offers[1] (offer_id=INSURANCE_TRAVEL): margin: required field is missing" in e for e in errs)
    assert any("offers[1] (offer_id=INSURANCE_TRAVEL): category: required field is missing" in e for e in errs)


@pytest.mark.parametrize(("field", "bad"), [("mandatory", "yes"), ("fallback", 1), ("attributes", ["x"])])
def test_offer_flag_and_attribute_types(field, bad):
    cat = small_catalog()
    offer(2, cat)[field] = bad
    assert f"offers[2] (offer_id=POINTS_DOUBLE): {field}:" in only_error(cat)


def test_all_errors_are_reported_together():
    cat = small_catalog()
    offer(0, cat)["category"] = "nope"
    offer(1, cat)["margin"] = -3
    cat["rules"][0]["expression"] = "((("
    cat["strategy_assignment"][0]["strategy"] = "missing"
    cat["contact_policies"][0]["window_days"] = 0
    with pytest.raises(CatalogError) as info:
        validate_catalog(cat, source="cat.yaml", model_ids=MODELS)
    lines = str(info.value).splitlines()
    assert lines[0] == "cat.yaml: 5 catalog errors:"
    errors = [line for line in lines[1:] if line.startswith("  cat.yaml: ")]
    assert len(errors) == 5
    # the CEL syntax error shows its expression and caret under its own line
    cel = next(i for i, line in enumerate(lines) if "CEL syntax error" in line)
    assert lines[cel + 1].strip() == "(((" and lines[cel + 2].strip() == "^"


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(CatalogError, match=r"list.yaml: top level: must be a mapping"):
        load_catalog_file(path)


def test_invalid_yaml_and_json_name_the_file_and_position(tmp_path):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("offers:\n  - offer_id: [unclosed\n")
    with pytest.raises(CatalogError, match=r"bad.yaml: invalid YAML at line \d+ column \d+"):
        load_catalog_file(bad_yaml)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"offers": [}')
    with pytest.raises(CatalogError, match=r"bad.json: invalid JSON at line 1 column \d+"):
        load_catalog_file(bad_json)
    with pytest.raises(CatalogError, match="cannot read catalog"):
        load_catalog_file(tmp_path / "absent.yaml")


# -- compile -----------------------------------------------------------------------------------

CONTRACT_COLUMNS = {
    "offers": ["offer_id", "name", "category", "channels", "valid_from", "valid_to", "expected_volume", "margin",
               "duration", "value", "lever", "model_id", "mandatory", "fallback", "attributes"],
    "rules": ["rule_id", "kind", "applies_to", "expression", "description"],
    "strategies": ["strategy", "weights"],
    "strategy_assignment": ["priority", "condition", "strategy"],
    "contact_policies": ["policy_id", "applies_to", "scope", "event", "max_count", "window_days", "channel",
                         "description"],
    "meta": ["key", "value"],
}
PRIMARY_KEYS = {"offers": "offer_id", "rules": "rule_id", "strategies": "strategy",
                "strategy_assignment": "priority", "contact_policies": "policy_id", "meta": "key"}


@pytest.fixture
def compiled(tmp_path: Path) -> sqlite3.Connection:
    out = compile_catalog(CATALOG_YAML, tmp_path / "catalog.sqlite", model_ids=MODELS)
    conn = sqlite3.connect(out)
    conn.row_factory = sqlite3.Row
    yield conn
    conn.close()


def test_compiled_tables_have_the_contract_columns_and_keys(compiled):
    for table, columns in CONTRACT_COLUMNS.items():
        info = compiled.execute(f"PRAGMA table_info({table})").fetchall()
        assert [r["name"] for r in info] == columns, table
        assert [r["name"] for r in info if r["pk"]] == [PRIMARY_KEYS[table]], table
    types = {r["name"]: r["type"] for r in compiled.execute("PRAGMA table_info(offers)")}
    assert types["value"] == "REAL" and types["mandatory"] == "INTEGER" and types["offer_id"] == "TEXT"


def test_compiled_indexes_serve_the_decision_path(compiled):
    indexed = {
        tuple(r["name"] for r in compiled.execute(f"PRAGMA index_info('{idx['name']}')"))
        for idx in compiled.execute("PRAGMA index_list(offers)")
    }
    assert ("category",) in indexed and ("model_id",) in indexed


def test_compiled_offer_rows(compiled):
    rows = {r["offer_id"]: dict(r) for r in compiled.execute("SELECT * FROM offers")}
    gold = rows["CARD_GOLD"]
    assert gold["value"] == pytest.approx(1.0 * 120.0 * 3)
    assert gold["lever"] == 1.2 and gold["model_id"] == "propensity"
    assert json.loads(gold["channels"]) == ["pos", "app"]
    assert json.loads(gold["attributes"]) == {"price": 49.0, "tier": "gold"}
    assert (gold["valid_from"], gold["valid_to"]) == ("2024-01-01T00:00:00Z", "2030-12-31T23:59:59Z")
    travel = rows["INSURANCE_TRAVEL"]  # defaults
    assert travel["lever"] == 1.0 and travel["channels"] == "[]" and travel["attributes"] == '{"tier": "basic"}'
    assert travel["valid_from"] is None and travel["mandatory"] == 0 and travel["fallback"] == 0
    assert rows["POINTS_DOUBLE"]["model_id"] is None and rows["POINTS_DOUBLE"]["attributes"] == "{}"
    assert rows["PRIVACY_NOTICE"]["mandatory"] == 1 and rows["WELCOME_BACK"]["fallback"] == 1


def test_compiled_rules_strategies_assignment_policies(compiled):
    rules = {r["rule_id"]: dict(r) for r in compiled.execute("SELECT * FROM rules")}
    assert rules["do_not_contact"]["applies_to"] == "*" and rules["do_not_contact"]["kind"] == "hygiene"
    assert rules["adults_only"]["description"] == "Credit products need an adult customer"
    weights = {r["strategy"]: json.loads(r["weights"]) for r in compiled.execute("SELECT * FROM strategies")}
    assert weights["develop"]["upsell"] == 1.5 and weights["default"] == {}
    assignment = [tuple(r) for r in compiled.execute("SELECT priority, strategy FROM strategy_assignment")]
    assert assignment == [(0, "retain"), (1, "develop"), (2, "default")]
    policies = {r["policy_id"]: dict(r) for r in compiled.execute("SELECT * FROM contact_policies")}
    assert policies["app_daily_cap"] == {
        "policy_id": "app_daily_cap", "applies_to": "*", "scope": "all", "event": "shown", "max_count": 3,
        "window_days": 1.0, "channel": "app", "description": ""}
    assert policies["no_repeat_after_decline"]["channel"] == ""


def test_compiled_meta_rows(compiled):
    meta = {r["key"]: r["value"] for r in compiled.execute("SELECT key, value FROM meta")}
    assert meta["name"] == "small-test-catalog"
    assert json.loads(meta["channels"]) == ["pos", "app", "web", "email"]
    assert json.loads(meta["categories"]) == list(CATEGORIES)
    assert json.loads(meta["exploration"]) == {"epsilon": 0.1}
    assert json.loads(meta["new_customer_profile"]) == {"lifecycle_stage": "new", "segment": "mass"}
    assert meta["source_sha256"] == hashlib.sha256(CATALOG_YAML.read_bytes()).hexdigest()


def test_meta_defaults_when_the_catalog_leaves_them_out(tmp_path):
    cat = small_catalog()
    for key in ("name", "channels", "exploration", "new_customer_profile"):
        del cat[key]
    offer(0, cat)["channels"] = ["pos", "atm"]
    valid = validate_catalog(cat, source="plain.yaml", model_ids=MODELS, name="bundle-name")
    out = compile_catalog(valid, tmp_path / "c.sqlite")
    with sqlite3.connect(out) as conn:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    conn.close()
    assert meta["name"] == "bundle-name"
    assert json.loads(meta["channels"]) == [*DEFAULT_CHANNELS, "atm"]
    assert json.loads(meta["exploration"]) == {"epsilon": 0.0}
    assert json.loads(meta["new_customer_profile"]) == {}


def test_yaml_and_json_compile_to_the_same_rows(tmp_path):
    def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
        conn = sqlite3.connect(path)
        try:
            return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                    for t in CONTRACT_COLUMNS if t != "meta"}
        finally:
            conn.close()

    a = compile_catalog(CATALOG_YAML, tmp_path / "a.sqlite", model_ids=MODELS)
    b = compile_catalog(CATALOG_JSON, tmp_path / "b.sqlite", model_ids=MODELS)
    assert dump(a) == dump(b)


def test_an_invalid_catalog_writes_nothing(tmp_path):
    cat = small_catalog()
    offer(0, cat)["margin"] = -1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cat))
    with pytest.raises(CatalogError, match=r"^bad.yaml: offers\[0\] \(offer_id=CARD_GOLD\): margin"):
        compile_catalog(path, tmp_path / "catalog.sqlite", model_ids=MODELS)
    assert list(tmp_path.iterdir()) == [path]


def test_recompiling_replaces_the_file(tmp_path):
    out = tmp_path / "catalog.sqlite"
    compile_catalog(CATALOG_YAML, out, model_ids=MODELS)
    cat = copy.deepcopy(small_catalog())
    cat["offers"] = [o for o in cat["offers"] if o["offer_id"] in ("WELCOME_BACK", "PRIVACY_NOTICE")]
    cat["rules"] = [r for r in cat["rules"] if r.get("applies_to") != "CARD_GOLD"]
    compile_catalog(cat, out, model_ids=MODELS)
    with sqlite3.connect(out) as conn:
        assert conn.execute("SELECT COUNT(*) FROM offers").fetchone()[0] == 2
    conn.close()
