"""Training/serving parity through the SDK: demo data → nbo train → bundle → Client.decide.

The propensities a device computes (its stored measures folded purchase by purchase, refreshed
at decision time, its own input columns) must equal what the training rows would give for the
same customer, offer and moment.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import yaml
from nbo.model_export import (
    build_bundle,
    derive_features,
    generate_demo_data,
    generate_keys,
    train_from_directory,
)
from nbo.model_export._train_data import DEFAULT_CATEGORICAL, DEFAULT_FEATURES
from nbo.sdk import Client, ManualClock


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("e2e")
    demo = generate_demo_data(root / "data", customers=200, seed=4)
    result = train_from_directory(demo.directory, root / "model", model="gbt", progress=False)
    keys = generate_keys(root / "keys")
    build_bundle(catalog=demo.catalog, models={"propensity": result.model_path}, name="demo-retail", version=1,
                 key=keys.private_key, out=root / "bundle.zip")
    return {"root": root, "demo": demo, "model": result.model_path, "pub": keys.public_key}


def test_device_propensities_equal_training_rows(world: dict[str, Any]) -> None:
    demo = world["demo"]
    customers = {c["customer_id"]: c for c in _csv(demo.customers)}
    transactions = _csv(demo.transactions)
    by_customer: dict[str, list[dict[str, str]]] = {}
    for t in transactions:
        by_customer.setdefault(t["customer_id"], []).append(t)
    cid = next(c for c, rows in sorted(by_customer.items())
               if len(rows) >= 3 and customers[c]["do_not_contact"] == "false"
               and customers[c]["complaint_open"] == "false")
    raw = customers[cid]
    profile = {"age": int(raw["age"]), "segment": raw["segment"], "region": raw["region"],
               "do_not_contact": False, "complaint_open": False, "credit_block": raw["credit_block"] == "true",
               "owned_products": [p for p in raw["owned_products"].split("|") if p]}
    moment = (demo.as_of + timedelta(days=17)).replace(hour=19, minute=5, second=0)
    clock = ManualClock(moment)

    with Client.open(world["root"] / "state", device_id="pos-1", trusted_keys=[world["pub"]], clock=clock) as client:
        client.install_bundle(world["root"] / "bundle.zip")
        for i, t in enumerate(by_customer[cid]):
            stamp = datetime.fromisoformat(t["timestamp"].replace("Z", "+00:00"))
            client.record_purchase(cid, amount=t["amount"], quantity=int(t["quantity"]),
                                   timestamp=stamp, idempotency_key=f"k{i}")
        decision = client.decide(cid, channel="app", profile=profile, limit=20)

    scored = [o for o in decision.offers if not o.mandatory and not o.fallback]
    assert len(scored) >= 3

    # The same rows as training builds them, as of the decision moment.
    measures = derive_features(by_customer[cid], as_of=moment, profiles={cid: profile})[cid]
    catalog = yaml.safe_load(demo.catalog.read_text())
    offers = {o["offer_id"]: {**o.get("attributes", {}), **{k: v for k, v in o.items() if k != "attributes"}}
              for o in catalog["offers"]}
    context = {"channel": "app", "hour": moment.astimezone(UTC).hour, "weekday": moment.weekday()}
    feeds: dict[str, np.ndarray] = {}
    for name in DEFAULT_FEATURES:
        source, _, key = name.partition("__")
        values = [measures.get(key) if source == "customer" else offers[o.offer_id].get(key)
                  if source == "offer" else context[key] for o in scored]
        if name in DEFAULT_CATEGORICAL:
            feeds[name] = np.array([["" if v is None else str(v)] for v in values], dtype=object).astype(str)
        else:
            feeds[name] = np.array([[np.nan if v is None else float(v)] for v in values], dtype=np.float32)
    session = ort.InferenceSession(str(world["model"]), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)[-1][:, 1]
    got = np.array([o.propensity for o in scored])
    assert np.max(np.abs(got - expected)) < 1e-5, list(zip([o.offer_id for o in scored], got, expected, strict=True))
    assert measures["lifecycle_stage"] in ("active", "starter", "declining", "inactive", "lost")


def test_demo_catalog_rules_run_cleanly_on_the_engine(world: dict[str, Any]) -> None:
    """Every demo rule evaluates (no 'rule failed') for known, unknown and partial profiles."""
    demo = world["demo"]
    customers = _csv(demo.customers)[:25]
    clock = ManualClock(demo.as_of + timedelta(days=3))
    kinds: set[str] = set()
    with Client.open(world["root"] / "state-rules", device_id="kiosk-1", trusted_keys=[world["pub"]],
                     clock=clock) as client:
        client.install_bundle(world["root"] / "bundle.zip")
        profiles: list[tuple[str, dict[str, Any] | None]] = [("stranger", None), ("partial", {"age": 19})]
        for raw in customers:
            profiles.append((raw["customer_id"], {
                "age": int(raw["age"]), "segment": raw["segment"],
                "do_not_contact": raw["do_not_contact"] == "true", "complaint_open": raw["complaint_open"] == "true",
                "credit_block": raw["credit_block"] == "true",
                "owned_products": [p for p in raw["owned_products"].split("|") if p],
            }))
        for n, (cid, profile) in enumerate(profiles):
            channel = ("pos", "app", "web", "email", "kiosk", "callcenter")[n % 6]
            clock.advance(3600 * 5)
            decision = client.decide(cid, channel=channel, profile=profile, limit=5, explain=True)
            failed = [e for e in decision.excluded if (e.description or "").startswith("rule failed")]
            assert not failed, (cid, channel, failed)
            assert decision.offers, (cid, channel)  # the fallback at worst: never an empty slot
            kinds |= {e.kind for e in decision.excluded}
    assert {"business", "hygiene"} <= kinds
