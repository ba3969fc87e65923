"""Shared by the examples: everything a device needs, made from scratch in one directory.

``prepare(directory)`` writes sample retail data (``nbo.model_export.generate_demo_data``),
trains a small propensity model on it (``train_from_directory``, logistic regression, a few
seconds), creates an Ed25519 signing key pair and signs a bundle with the sample catalog and
that model — the same steps as::

    nbo demo-data --out DIR/data --customers 150
    nbo train --data DIR/data --out DIR/model --model logreg
    nbo keys generate --out DIR/keys
    nbo bundle build --catalog DIR/data/catalog.yaml --model propensity=DIR/model/propensity.onnx \\
        --name retail --version 1 --key DIR/keys/signing.key --out DIR/retail-v1.zip

It needs the training extras (``pip install 'nbo-edge[train]'``); a terminal that only
embeds the SDK gets its bundle and public key from the central team instead.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Prepared", "prepare", "sample_profiles"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    """Where :func:`prepare` put things."""

    directory: Path
    data: Path
    """The sample data directory (customers.csv, transactions.csv, catalog.yaml, history.csv)."""
    catalog: Path
    model: Path
    """The trained ``propensity.onnx``."""
    report: Path
    """The model's evaluation report (HTML)."""
    private_key: Path
    public_key: Path
    bundle: Path
    """The signed bundle zip, version 1."""


def prepare(directory: str | Path, *, customers: int = 150, seed: int = 7, name: str = "retail") -> Prepared:
    """Sample data, a trained model, a key pair and a signed bundle (version 1) under ``directory``."""
    try:
        from nbo.model_export import build_bundle, generate_demo_data, generate_keys, train_from_directory
    except ImportError as exc:  # pragma: no cover - only without the training extras
        sys.exit(f"preparing a sample bundle needs the training extras (pip install 'nbo-edge[train]'): {exc}")

    root = Path(directory)
    data = generate_demo_data(root / "data", customers=customers, seed=seed)
    trained = train_from_directory(data.directory, root / "model", model="logreg", seed=seed, progress=False)
    keys = generate_keys(root / "keys")
    built = build_bundle(catalog=data.catalog, models={"propensity": trained.model_path}, name=name, version=1,
                         key=keys.private_key, out=root / f"{name}-v1.zip")
    return Prepared(directory=root, data=data.directory, catalog=data.catalog, model=trained.model_path,
                    report=trained.report_path, private_key=keys.private_key, public_key=keys.public_key,
                    bundle=built.path)


def sample_profiles(prepared: Prepared, limit: int) -> dict[str, dict[str, Any]]:
    """The first ``limit`` sample customers' profile fields, as a loyalty-card lookup would give them."""
    profiles: dict[str, dict[str, Any]] = {}
    with (prepared.data / "customers.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if len(profiles) >= limit:
                break
            profiles[row["customer_id"]] = {
                "age": int(row["age"]),
                "segment": row["segment"],
                "region": row["region"],
                "do_not_contact": row["do_not_contact"] == "true",
                "complaint_open": row["complaint_open"] == "true",
                "credit_block": row["credit_block"] == "true",
                "owned_products": [p for p in row["owned_products"].split("|") if p],
            }
    return profiles
