"""Demo data: deterministic, realistic, and a catalog that `nbo bundle build` compiles."""

from __future__ import annotations

import csv
import sqlite3
from collections import Counter
from pathlib import Path

import cel
import numpy as np
import pytest
import yaml
from nbo.cli import main as cli
from nbo.model_export import compile_catalog, derive_features, generate_demo_data
from nbo.model_export._demo_data import _LOG_POLICY_PREFERENCE, demo_catalog, true_propensity
from nbo.sdk import InputError

FILES = ("customers.csv", "transactions.csv", "catalog.yaml", "history.csv")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    generate_demo_data(out, customers=150, seed=7)
    return out


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_same_seed_gives_identical_bytes_and_another_seed_differs(demo: Path, tmp_path: Path) -> None:
    again = generate_demo_data(tmp_path / "again", customers=150, seed=7)
    other = generate_demo_data(tmp_path / "other", customers=150, seed=8)
    for name in FILES:
        assert (demo / name).read_bytes() == (again.directory / name).read_bytes(), name
    assert (demo / "history.csv").read_bytes() != (other.directory / "history.csv").read_bytes()


def test_customers_and_transactions(demo: Path) -> None:
    customers = _rows(demo / "customers.csv")
    assert len(customers) == 150
    assert {"customer_id", "age", "segment", "region", "do_not_contact", "complaint_open", "credit_block",
            "owned_products"} <= set(customers[0])
    assert {c["do_not_contact"] for c in customers} <= {"true", "false"}
    transactions = _rows(demo / "transactions.csv")
    assert {t["customer_id"] for t in transactions} <= {c["customer_id"] for c in customers}
    assert all(float(t["amount"]) > 0 and int(t["quantity"]) >= 1 for t in transactions)
    stages = Counter(
        m["lifecycle_stage"] for m in derive_features(transactions, as_of=max(t["timestamp"] for t in transactions)).values()
    )
    assert len(stages) >= 5, stages  # a realistic spread of the customer flows


def test_catalog_shape() -> None:
    catalog = demo_catalog()
    offers = catalog["offers"]
    assert len(offers) >= 30
    assert {o["category"] for o in offers} == {"xsell", "upsell", "loyalty", "retention", "winback", "service"}
    assert {r["kind"] for r in catalog["rules"]} == {"business", "communication", "hygiene"}
    fallback = [o for o in offers if o.get("fallback")]
    mandatory = [o for o in offers if o.get("mandatory")]
    assert len(fallback) == 1 and "model_id" not in fallback[0]
    assert len(mandatory) == 1 and "model_id" not in mandatory[0]
    assert all(o["model_id"] == "propensity" for o in offers if o not in fallback + mandatory)
    assert all({"price_band", "discount_pct"} <= set(o["attributes"]) for o in offers)
    assert set(catalog["strategies"]) == {a["strategy"] for a in catalog["strategy_assignment"]}
    assert catalog["strategy_assignment"][-1]["condition"] == "true"
    assert catalog["contact_policies"]
    for rule in catalog["rules"]:
        cel.compile(rule["expression"])  # parses as CEL


def test_written_catalog_compiles_with_the_bundle_compiler(demo: Path, tmp_path: Path) -> None:
    assert yaml.safe_load((demo / "catalog.yaml").read_text()) == demo_catalog()
    out = compile_catalog(demo / "catalog.yaml", tmp_path / "catalog.sqlite", model_ids={"propensity"})
    with sqlite3.connect(out) as db:
        assert db.execute("SELECT count(*) FROM offers").fetchone()[0] == len(demo_catalog()["offers"])
        assert db.execute("SELECT count(*) FROM offers WHERE fallback = 1 AND model_id IS NULL").fetchone()[0] == 1
        kinds = {k for (k,) in db.execute("SELECT DISTINCT kind FROM rules")}
        assert kinds == {"business", "communication", "hygiene"}


def test_history_follows_the_documented_ground_truth(demo: Path) -> None:
    history = _rows(demo / "history.csv")
    assert len(history) > 300
    catalog = {o["offer_id"]: o for o in demo_catalog()["offers"]}
    customers = {c["customer_id"]: c for c in _rows(demo / "customers.csv")}
    assert {h["outcome"] for h in history} == {"accepted", "declined"}
    assert all(0 < float(h["selection_probability"]) <= 1 for h in history)
    assert all(catalog[h["offer_id"]].get("model_id") == "propensity" for h in history)
    assert all(customers[h["customer_id"]]["do_not_contact"] == "false" for h in history)
    # recompute the true probability of some rows from the documented model
    transactions = _rows(demo / "transactions.csv")
    profiles = {cid: {"age": int(c["age"]), "segment": c["segment"], "complaint_open": c["complaint_open"] == "true"}
                for cid, c in customers.items()}
    measures = derive_features(transactions, as_of=max(t["timestamp"] for t in transactions), profiles=profiles)
    for h in history[:50]:
        offer = catalog[h["offer_id"]]
        expected = true_propensity(
            measures[h["customer_id"]], {"category": offer["category"], **offer["attributes"]},
            {"channel": h["channel"], "hour": int(h["hour"]), "weekday": int(h["weekday"])},
        )
        assert float(h["true_propensity"]) == pytest.approx(expected, abs=1e-6)
    # outcomes agree with the truth on average (a loose, seed-independent bound)
    accepted = sum(h["outcome"] == "accepted" for h in history) / len(history)
    mean_true = sum(float(h["true_propensity"]) for h in history) / len(history)
    assert abs(accepted - mean_true) < 0.06


def test_recorded_selection_probabilities_are_the_logging_policys(demo: Path) -> None:
    """Each row's selection_probability is what the documented logging policy gave that offer.

    The policy (docs/training.md): among the model-scored offers valid for the channel at that
    moment, 80 % softmax over the customer's lifecycle-stage preference, 20 % uniform.
    """
    history = _rows(demo / "history.csv")
    offers = [o for o in demo_catalog()["offers"] if o.get("model_id") == "propensity"]
    transactions = _rows(demo / "transactions.csv")
    everyone = {c["customer_id"]: {} for c in _rows(demo / "customers.csv")}  # no purchases: stage "new"
    measures = derive_features(transactions, as_of=max(t["timestamp"] for t in transactions), profiles=everyone)
    stages = {cid: m["lifecycle_stage"] for cid, m in measures.items()}
    by_decision: dict[str, float] = {}
    for h in history[:200]:
        moment = h["timestamp"]
        candidates = [o for o in offers
                      if (not o["channels"] or h["channel"] in o["channels"])
                      and (o.get("valid_from") is None or moment >= o["valid_from"])
                      and (o.get("valid_to") is None or moment <= o["valid_to"])]
        preference = _LOG_POLICY_PREFERENCE.get(stages[h["customer_id"]], {})
        scores = np.array([preference.get(o["category"], 0.0) for o in candidates])
        soft = np.exp(scores - scores.max())
        probs = 0.8 * soft / soft.sum() + 0.2 / len(candidates)
        probs = probs / probs.sum()
        expected = float(probs[[o["offer_id"] for o in candidates].index(h["offer_id"])])
        assert float(h["selection_probability"]) == pytest.approx(expected, abs=1e-6), h
        by_decision[h["decision_id"]] = expected
    assert len(by_decision) == 200  # one shown offer per logged decision
    assert len({round(p, 6) for p in by_decision.values()}) > 3  # not a constant


def test_cli_demo_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["demo-data", "--out", str(tmp_path / "d"), "--customers", "40", "--seed", "1"]) == 0
    assert "40 customers" in capsys.readouterr().out
    assert all((tmp_path / "d" / name).is_file() for name in FILES)


def test_bad_customer_count() -> None:
    with pytest.raises(InputError, match="customers"):
        generate_demo_data("/nonexistent-never-written", customers=3)
