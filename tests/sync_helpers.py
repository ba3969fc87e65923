"""Helpers shared by the hub and sync tests: hub-store backends and event factories."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from nbo.gateway import HubStore
from nbo.gateway._hub import IncomingEvent
from nbo.sdk import Clock

BACKENDS = ("sqlite", "postgresql")


def postgres_url() -> str | None:
    """The test PostgreSQL URL, or None (→ skip) — but a FAIL when CI requires PostgreSQL."""
    url = os.environ.get("NBO_TEST_POSTGRES")
    required = os.environ.get("NBO_REQUIRE_POSTGRES") == "1"
    if not url:
        if required:
            pytest.fail("NBO_REQUIRE_POSTGRES=1 but NBO_TEST_POSTGRES is not set")
        pytest.skip("NBO_TEST_POSTGRES is not set: PostgreSQL hub tests skipped")
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=5):
            pass
    except Exception as exc:  # any failure to reach the server
        if required:
            pytest.fail(f"PostgreSQL at NBO_TEST_POSTGRES is unreachable: {exc}")
        pytest.skip(f"PostgreSQL at NBO_TEST_POSTGRES is unreachable: {exc}")
    return url


def unique_schema() -> str:
    """A schema name no other test run uses."""
    return f"nbo_t_{os.getpid()}_{uuid.uuid4().hex[:10]}"


@contextmanager
def hub_backend(kind: str, state_dir: Path, *, clock: Clock | None = None) -> Iterator[tuple[HubStore, str | None, str | None]]:
    """Yield (hub, url, schema) for ``sqlite`` or ``postgresql``; drops the PG schema afterwards."""
    if kind == "sqlite":
        hub = HubStore.open(None, state_dir=state_dir, clock=clock)
        try:
            yield hub, None, None
        finally:
            hub.close()
        return
    url = postgres_url()
    assert url is not None
    schema = unique_schema()
    hub = HubStore.open(url, state_dir=state_dir, clock=clock, schema=schema)
    try:
        yield hub, url, schema
    finally:
        drop = getattr(hub.db, "drop_schema", None)
        if drop is not None:
            drop()
        hub.close()


def ev(seq: int, type: str, payload: dict[str, Any], *, event_id: str | None = None,
       created_at: float = 1_700_000_000.0) -> IncomingEvent:
    """An incoming event with a fresh uuid unless given."""
    return IncomingEvent(seq=seq, event_id=event_id or str(uuid.uuid4()), type=type,
                         created_at=created_at, payload=json.dumps(payload))


def points(customer: str, pts: int, *, kind: str | None = None, entry_id: str | None = None,
           created_at: float = 1_700_000_000.0, expires_at: float | None = None,
           reverses: str | None = None) -> dict[str, Any]:
    """A points payload per the outbox contract."""
    kind = kind or ("award" if pts > 0 else "redeem")
    return {
        "entry_id": entry_id or str(uuid.uuid4()),
        "customer_id": customer,
        "kind": kind,
        "points": pts,
        "reason": "test",
        "idempotency_key": str(uuid.uuid4()),
        "created_at": created_at,
        "expires_at": expires_at,
        "reverses": reverses,
    }


def response(customer: str, decision: str = "d1", offer: str = "o1", outcome: str = "accepted") -> dict[str, Any]:
    return {"decision_id": decision, "offer_id": offer, "customer_id": customer, "category": "xsell",
            "channel": "pos", "outcome": outcome}


def payment(customer: str) -> dict[str, Any]:
    return {"payment_id": str(uuid.uuid4()), "customer_id": customer, "payment_token": "tok_abc",
            "amount": "12.50", "currency": "EUR", "store_id": "s1", "decision_id": None, "offer_id": None,
            "idempotency_key": str(uuid.uuid4())}


@contextmanager
def running_gateway(kind: str, state_dir: Path, data: dict[str, Any]) -> Iterator[Any]:
    """A started gateway whose hub is ``kind`` (sqlite | postgresql); the PG schema is dropped after."""
    from nbo.gateway import create_server, parse_config
    from nbo.gateway._db import open_database

    data = dict(data)
    url = schema = None
    if kind == "postgresql":
        url, schema = postgres_url(), unique_schema()
        data["hub"] = {"db": url}
    server, _ = create_server(parse_config(data), state_dir=state_dir, hub_schema=schema)
    assert server.hub.db.dialect == kind
    server.start()
    try:
        yield server
    finally:
        server.stop(0).wait(10)
        if url is not None:
            db = open_database(url, schema=schema)
            db.drop_schema()  # type: ignore[attr-defined]
            db.close()
