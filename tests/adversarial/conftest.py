"""Fixtures the adversarial tests share: a signed device bundle, and a real gateway per hub backend."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from bundle_fixtures import make_bundle, make_keys, make_model, small_catalog
from gateway_helpers import Gateway, bundle_kit, config_data, publish, running_gateway
from nbo.gateway._db import open_database
from sync_helpers import postgres_url, unique_schema

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="module")
def device_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a signed bundle zip with one model, the public key that verifies it)."""
    root = tmp_path_factory.mktemp("device-bundle")
    key, pub = make_keys(root / "keys")
    model = make_model(root / "model" / "propensity.onnx")
    return make_bundle(root / "bundles", key=key, models={"propensity": model}), pub


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A bundle kit (keys, ``kit.v1`` of the small catalog) for gateways."""
    kit = bundle_kit(tmp_path_factory.mktemp("kit"))
    kit.v1 = kit.bundle(1, catalog=small_catalog())
    return kit


@dataclass
class HubGateway:
    """A started gateway with ``kit.v1`` published, and where its hub lives."""

    gateway: Gateway
    url: str | None  # None: the SQLite hub under the gateway's state directory
    schema: str | None


@pytest.fixture(params=BACKENDS)
def hub_gateway(request: pytest.FixtureRequest, kit: Any, tmp_path: Path) -> Iterator[HubGateway]:
    """One gateway per hub backend (its own PostgreSQL schema, dropped afterwards)."""
    url = schema = None
    if request.param == "postgresql":
        url, schema = postgres_url(), unique_schema()
    try:
        with running_gateway(tmp_path / "gw", config_data(trusted_key=kit.pub, hub_db=url), hub_schema=schema) as g:
            assert publish(g, kit.v1).accepted
            yield HubGateway(g, url, schema)
    finally:
        if url is not None:
            db = open_database(url, schema=schema)
            db.drop_schema()  # type: ignore[attr-defined]
            db.close()
