"""Real bundles for decision-engine tests and benchmarks, built without the bundle tooling.

* :func:`train_model` fits a small scikit-learn pipeline (ColumnTransformer: median-imputed
  numbers, ""-imputed one-hot strings; GradientBoostingClassifier) on synthetic data whose
  columns are named by the model-input contract (``customer__X``, ``offer__X``,
  ``context__X``) and exports it with skl2onnx, ``zipmap`` off.
* :func:`write_catalog` writes ``catalog.sqlite`` with sqlite-utils exactly per the contract
  from an authoring-style spec (offers, rules, strategies, strategy_assignment,
  contact_policies, channels, exploration, new_customer_profile).
* :func:`load_spec_bundle` puts both in a directory and calls ``sdk._runtime.load_bundle``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from nbo.sdk import BundleInfo
from nbo.sdk.core import CATEGORIES, LoadedBundle, load_bundle

STAGES = ["new", "starter", "active", "declining", "inactive", "lost"]

# Model inputs (contract names) in ONNX input order; string inputs listed in MODEL_STRINGS.
MODEL_INPUTS = [
    "customer__recency_days",
    "customer__frequency",
    "customer__monetary",
    "customer__lifecycle_stage",
    "offer__category",
    "offer__price",
    "context__hour",
    "context__channel",
]
MODEL_STRINGS = {"customer__lifecycle_stage", "offer__category", "context__channel"}


def _synthetic_rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    matrix = np.empty((n, len(MODEL_INPUTS)), dtype=object)
    recency = rng.exponential(60.0, n)
    recency[rng.random(n) < 0.1] = np.nan
    matrix[:, 0] = recency.astype(np.float32)
    matrix[:, 1] = rng.poisson(5, n).astype(np.float32)
    matrix[:, 2] = rng.gamma(2.0, 150.0, n).astype(np.float32)
    matrix[:, 3] = rng.choice(STAGES + [""], n)
    matrix[:, 4] = rng.choice(CATEGORIES, n)
    matrix[:, 5] = rng.uniform(1, 100, n).astype(np.float32)
    matrix[:, 6] = rng.integers(0, 24, n).astype(np.float32)
    matrix[:, 7] = rng.choice(["pos", "app", "web"], n)
    logit = (
        -1.0
        + 0.02 * np.nan_to_num(matrix[:, 1].astype(float))
        - 0.01 * np.nan_to_num(matrix[:, 0].astype(float), nan=90.0)
        + 0.6 * (matrix[:, 4] == "xsell")
        - 0.01 * matrix[:, 5].astype(float)
        + 0.4 * (matrix[:, 7] == "app")
    )
    labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(int)
    return matrix, labels


@functools.lru_cache(maxsize=4)
def train_model(n_estimators: int = 10, seed: int = 0, rows: int = 600) -> tuple[bytes, Any]:
    """(ONNX bytes, fitted scikit-learn pipeline) of a small propensity model; cached per process."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    matrix, labels = _synthetic_rows(rows, seed)
    numeric = [j for j, name in enumerate(MODEL_INPUTS) if name not in MODEL_STRINGS]
    strings = [j for j, name in enumerate(MODEL_INPUTS) if name in MODEL_STRINGS]
    prep = ColumnTransformer(
        [
            ("num", SimpleImputer(strategy="median"), numeric),
            ("cat", Pipeline([
                ("impute", SimpleImputer(missing_values="", strategy="constant", fill_value="__missing__")),
                ("onehot", OneHotEncoder(handle_unknown="ignore")),
            ]), strings),
        ],
        sparse_threshold=0.0,
    )
    pipeline = Pipeline([
        ("prep", prep),
        ("clf", GradientBoostingClassifier(n_estimators=n_estimators, max_depth=3, random_state=seed)),
    ])
    pipeline.fit(matrix, labels)
    initial_types = [
        (name, StringTensorType([None, 1]) if name in MODEL_STRINGS else FloatTensorType([None, 1]))
        for name in MODEL_INPUTS
    ]
    onx = convert_sklearn(
        pipeline,
        initial_types=initial_types,
        options={id(pipeline.steps[-1][1]): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return onx.SerializeToString(), pipeline


def _j(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def write_catalog(path: Path, spec: Mapping[str, Any]) -> None:
    """Write ``catalog.sqlite`` (contract tables) from an authoring-style spec."""
    import sqlite_utils

    db = sqlite_utils.Database(path, recreate=True)
    offers = []
    channels_union: set[str] = set()
    for o in spec.get("offers", []):
        volume, margin, duration = (float(o.get(k, 1.0)) for k in ("expected_volume", "margin", "duration"))
        channels_union.update(o.get("channels", []))
        offers.append({
            "offer_id": o["offer_id"],
            "name": o.get("name", o["offer_id"]),
            "category": o["category"],
            "channels": _j(o.get("channels", [])),
            "valid_from": o.get("valid_from"),
            "valid_to": o.get("valid_to"),
            "expected_volume": volume,
            "margin": margin,
            "duration": duration,
            "value": volume * margin * duration,
            "lever": float(o.get("lever", 1.0)),
            "model_id": o.get("model_id"),
            "mandatory": int(bool(o.get("mandatory", False))),
            "fallback": int(bool(o.get("fallback", False))),
            "attributes": _j(o.get("attributes", {})),
        })
    db["offers"].create(
        {"offer_id": str, "name": str, "category": str, "channels": str, "valid_from": str, "valid_to": str,
         "expected_volume": float, "margin": float, "duration": float, "value": float, "lever": float,
         "model_id": str, "mandatory": int, "fallback": int, "attributes": str},
        pk="offer_id",
    )
    db["offers"].insert_all(offers)
    db["offers"].create_index(["category"])
    db["offers"].create_index(["model_id"])
    db["rules"].create(
        {"rule_id": str, "kind": str, "applies_to": str, "expression": str, "description": str}, pk="rule_id"
    )
    db["rules"].insert_all([
        {"rule_id": r["rule_id"], "kind": r["kind"], "applies_to": r.get("applies_to", "*"),
         "expression": r["expression"], "description": r.get("description", "")}
        for r in spec.get("rules", [])
    ])
    db["strategies"].create({"strategy": str, "weights": str}, pk="strategy")
    db["strategies"].insert_all([{"strategy": k, "weights": _j(v)} for k, v in spec.get("strategies", {}).items()])
    db["strategy_assignment"].create({"priority": int, "condition": str, "strategy": str}, pk="priority")
    db["strategy_assignment"].insert_all([
        {"priority": i, "condition": a["condition"], "strategy": a["strategy"]}
        for i, a in enumerate(spec.get("strategy_assignment", []))
    ])
    db["contact_policies"].create(
        {"policy_id": str, "applies_to": str, "scope": str, "event": str, "max_count": int, "window_days": float,
         "channel": str, "description": str},
        pk="policy_id",
    )
    db["contact_policies"].insert_all([
        {"policy_id": p["policy_id"], "applies_to": p.get("applies_to", "*"), "scope": p["scope"],
         "event": p["event"], "max_count": int(p["max_count"]), "window_days": float(p["window_days"]),
         "channel": p.get("channel", ""), "description": p.get("description", "")}
        for p in spec.get("contact_policies", [])
    ])
    channels = spec.get("channels") or sorted(channels_union | {"pos", "app", "web", "kiosk", "email", "callcenter"})
    meta = {
        "name": spec.get("name", "test"),
        "channels": _j(channels),
        "categories": _j(CATEGORIES),
        "exploration": _j(spec.get("exploration", {"epsilon": 0})),
        "new_customer_profile": _j(spec.get("new_customer_profile", {})),
        "source_sha256": "0" * 64,
    }
    db["meta"].create({"key": str, "value": str}, pk="key")
    db["meta"].insert_all([{"key": k, "value": v} for k, v in meta.items()])
    db.close()


def load_spec_bundle(
    directory: Path,
    spec: Mapping[str, Any],
    *,
    models: Mapping[str, bytes] | None = None,
    version: int = 1,
) -> LoadedBundle:
    """Write ``spec`` (+ models) into ``directory`` and load it as the SDK would."""
    directory.mkdir(parents=True, exist_ok=True)
    write_catalog(directory / "catalog.sqlite", spec)
    manifest_models = []
    for model_id, onnx_bytes in (models or {}).items():
        (directory / "models").mkdir(exist_ok=True)
        (directory / "models" / f"{model_id}.onnx").write_bytes(onnx_bytes)
        manifest_models.append({"id": model_id, "path": f"models/{model_id}.onnx"})
    manifest = {
        "format": 1,
        "name": spec.get("name", "test"),
        "version": version,
        "models": manifest_models,
        "catalog": {"path": "catalog.sqlite"},
    }
    info = BundleInfo(
        name=str(manifest["name"]), version=version, installed_at=0.0, offer_count=len(spec.get("offers", [])),
        models=tuple(m["id"] for m in manifest_models),
    )
    return load_bundle(directory, manifest, info)


def synthetic_spec(
    n_offers: int,
    *,
    n_models: int = 1,
    seed: int = 0,
    name: str = "bench",
    channels: Sequence[str] = ("pos", "app"),
) -> dict[str, Any]:
    """The benchmark catalog: ``n_offers`` offers, 10 rules, 2 contact policies, strategies.

    Rules: five customer/context-only (hygiene and eligibility: evaluated once per
    decision), three offer-only (evaluated at load), two mixed (per candidate; one limited
    to a category, one to offers that carry a ``min_age`` attribute check on every offer).
    """
    rng = np.random.default_rng(seed)
    offers = []
    for i in range(n_offers):
        category = CATEGORIES[i % len(CATEGORIES)]
        offers.append({
            "offer_id": f"OF{i:05d}",
            "name": f"Offer {i}",
            "category": category,
            "channels": list(channels) if i % 7 else [],
            "expected_volume": float(rng.uniform(1, 5)),
            "margin": float(rng.uniform(1, 50)),
            "duration": float(rng.uniform(1, 3)),
            "lever": 1.5 if i % 50 == 0 else 1.0,
            "model_id": f"gbt{i % n_models}" if n_models else None,
            "mandatory": i == 3,
            "fallback": i == 1,
            "attributes": {"price": float(rng.uniform(1, 100)), "in_stock": bool(i % 23),
                           "min_age": int(16 + (i % 3) * 2), "region": "north" if i % 2 else "south"},
        })
    rules = [
        {"rule_id": "H1", "kind": "hygiene", "expression": "!customer.do_not_contact",
         "description": "customer asked not to be contacted"},
        {"rule_id": "H2", "kind": "hygiene", "expression": "!customer.complaint_open",
         "description": "open complaint"},
        {"rule_id": "H3", "kind": "hygiene", "applies_to": "upsell", "expression": "!customer.credit_block",
         "description": "credit block: no upsell"},
        {"rule_id": "B1", "kind": "business", "applies_to": "winback",
         "expression": "customer.lifecycle_stage in ['inactive', 'lost', 'declining']",
         "description": "win-back only for lapsing customers"},
        {"rule_id": "B2", "kind": "business", "expression": "context.hour >= 6 && context.hour < 23",
         "description": "no offers at night"},
        {"rule_id": "B3", "kind": "business", "expression": "offer.attributes.in_stock",
         "description": "in stock"},
        {"rule_id": "B4", "kind": "business", "expression": "offer.value > 1.0",
         "description": "worth offering"},
        {"rule_id": "B5", "kind": "business", "applies_to": "service",
         "expression": "offer.attributes.region == 'north' || offer.attributes.price < 90.0",
         "description": "service offers: north, or cheap"},
        {"rule_id": "M1", "kind": "business", "applies_to": "xsell",
         "expression": "!(offer.offer_id in customer.owned_products)",
         "description": "already owns it"},
        {"rule_id": "M2", "kind": "business", "applies_to": "loyalty",
         "expression": "customer.age >= offer.attributes.min_age",
         "description": "old enough"},
    ]
    return {
        "name": name,
        "channels": ["pos", "app", "web", "kiosk", "email", "callcenter"],
        "profile_fields": {"do_not_contact": "bool", "complaint_open": "bool", "credit_block": "bool",
                           "owned_products": "list<string>", "age": "number"},
        "offers": offers,
        "rules": rules,
        "strategies": {
            "develop": {"xsell": 1.5, "upsell": 1.2, "loyalty": 1.0},
            "retain": {"retention": 2.0, "winback": 1.5, "xsell": 0.8},
            "acquire": {"xsell": 1.2, "service": 1.1},
        },
        "strategy_assignment": [
            {"condition": "customer.lifecycle_stage in ['declining', 'inactive', 'lost']", "strategy": "retain"},
            {"condition": "customer.lifecycle_stage == 'new'", "strategy": "acquire"},
            {"condition": "true", "strategy": "develop"},
        ],
        "contact_policies": [
            {"policy_id": "P1", "scope": "offer", "event": "shown", "max_count": 3, "window_days": 7},
            {"policy_id": "P2", "scope": "offer", "event": "declined", "max_count": 1, "window_days": 30},
        ],
    }


def synthetic_profile(i: int) -> dict[str, Any]:
    """A varied, valid customer profile for benchmark/property runs."""
    rng = np.random.default_rng(1000 + i)
    return {
        "recency_days": float(rng.exponential(60)) if i % 5 else None,
        "frequency": int(rng.poisson(5)),
        "monetary": float(rng.gamma(2.0, 150.0)),
        "avg_purchase": 40.0,
        "tenure_days": 400.0,
        "purchases_per_year": 6.0,
        "clv": 900.0,
        "lifecycle_stage": STAGES[i % len(STAGES)],
        "loyalty_stage": "grow_me",
        "points_balance": 120,
        "age": int(16 + i % 50),
        "owned_products": [f"OF{j:05d}" for j in range(i % 13, 200, 37)],
        "do_not_contact": i % 97 == 0,
        "complaint_open": False,
        "credit_block": i % 11 == 0,
        "segment": "mass",
    }


def finite(x: float) -> bool:
    return math.isfinite(x)


def signed_bundle(
    directory: Path,
    spec: Mapping[str, Any],
    *,
    key: Path,
    models: Mapping[str, bytes] | None = None,
    version: int = 1,
) -> Path:
    """Build a real signed bundle zip from an authoring-style spec with ``model_export.build_bundle``."""
    from nbo.model_export import build_bundle

    directory.mkdir(parents=True, exist_ok=True)
    model_paths = {}
    for model_id, onnx_bytes in (models or {}).items():
        path = directory / f"src-{model_id}.onnx"
        path.write_bytes(onnx_bytes)
        model_paths[model_id] = path
    name = str(spec.get("name", "test"))
    out = directory / f"{name}-v{version}.zip"
    catalog = {k: v for k, v in spec.items() if k != "name"}
    build_bundle(catalog=catalog, models=model_paths, name=name, version=version, key=key, out=out,
                 created_at="2026-01-01T00:00:00Z")
    return out


def signing_keys(directory: Path) -> tuple[Path, Path]:
    """(signing.key, signing.pub) generated into ``directory``."""
    from nbo.model_export import generate_keys

    keys = generate_keys(directory)
    return keys.private_key, keys.public_key
