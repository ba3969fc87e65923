"""Property tests of sync (issue 5, item 5): replaying any batch changes nothing; no
interleaving of crashes and retries loses or duplicates an event; the hub's balance is the sum
of its entries at every step."""

from __future__ import annotations

import itertools
import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nbo.gateway import GatewayServer, HubStore
from nbo.gateway._hub import IncomingEvent
from nbo.sdk import Client, ClientConfig
from nbo.sdk._ledger import entries as ledger_entries
from nbo.sdk._sync import _pending_batch
from nbo.v1 import sync_pb2, sync_pb2_grpc
from sync_helpers import BACKENDS, hub_backend, running_gateway

CUSTOMERS = ("c0", "c1", "c2")

# -- the hub store alone -----------------------------------------------------------------------

event_spec = st.one_of(
    st.tuples(st.just("award"), st.integers(0, 2), st.integers(1, 500)),
    st.tuples(st.just("redeem"), st.integers(0, 2), st.integers(1, 500)),
    st.tuples(st.just("response"), st.integers(0, 2), st.just(0)),
    st.tuples(st.just("invalid"), st.integers(0, 2), st.just(0)),
)


def make_event(seq: int, spec: tuple[str, int, int], customers: tuple[str, ...]) -> IncomingEvent:
    kind, who, amount = spec
    customer = customers[who]
    if kind in ("award", "redeem"):
        payload: dict[str, Any] = {
            "entry_id": str(uuid.uuid4()), "customer_id": customer, "kind": kind,
            "points": amount if kind == "award" else -amount, "reason": "p", "idempotency_key": str(uuid.uuid4()),
            "created_at": 1_700_000_000.0 + seq, "expires_at": None, "reverses": None,
        }
        type_ = "points"
    elif kind == "response":
        payload = {"decision_id": "d", "offer_id": "o", "customer_id": customer, "outcome": "accepted"}
        type_ = "response"
    else:
        payload = {"customer_id": customer}
        type_ = "points"
    return IncomingEvent(seq=seq, event_id=str(uuid.uuid4()), type=type_, created_at=1_700_000_000.0 + seq,
                         payload=json.dumps(payload))


def snapshot(hub: HubStore, device: str, customers: tuple[str, ...]) -> tuple[Any, ...]:
    return (hub.events(device_id=device), {c: hub.ledger(c) for c in customers}, hub.balances(customers),
            [f for f in hub.flagged() if f["customer_id"] in customers], hub.acked_through(device))


@pytest.fixture(scope="module", params=BACKENDS)
def shared_hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubStore]:
    """One hub per backend for all examples; each example uses its own device and customers."""
    with hub_backend(request.param, tmp_path_factory.mktemp("hub")) as (hub, _, _):
        yield hub


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(
    specs=st.lists(event_spec, min_size=1, max_size=40),
    cuts=st.lists(st.integers(1, 39), max_size=6),
    replays=st.lists(st.integers(0, 100), min_size=1, max_size=5),
)
def test_replaying_any_batch_changes_nothing(shared_hub: HubStore, specs: list[tuple[str, int, int]],
                                             cuts: list[int], replays: list[int]) -> None:
    hub = shared_hub
    tag = uuid.uuid4().hex[:8]
    device, customers = f"dev-{tag}", tuple(f"{tag}-c{i}" for i in range(3))
    events = [make_event(i + 1, s, customers) for i, s in enumerate(specs)]
    bounds = sorted({0, len(events), *(c for c in cuts if c < len(events))})
    batches = [events[a:b] for a, b in itertools.pairwise(bounds)]
    first_answers = []
    for i, batch in enumerate(batches):
        first_answers.append(hub.ingest(device, batch))
        # the hub's balance is the sum of its entries after every batch (no expiry here)
        for c in customers:
            assert hub.balance(c) == sum(e.points for e in hub.ledger(c))
        before = snapshot(hub, device, customers)
        # replaying any batch pushed so far, any number of times, changes nothing
        for r in replays:
            j = r % (i + 1)
            again = hub.ingest(device, batches[j])
            assert again.stored == 0 and again.duplicates == len(batches[j])
            assert again.rejected == first_answers[j].rejected
            assert snapshot(hub, device, customers) == before
    assert hub.acked_through(device) == len(events)
    valid_points = [s for s in specs if s[0] in ("award", "redeem")]
    for who, c in enumerate(customers):
        assert hub.balance(c) == sum(a if k == "award" else -a for k, w, a in valid_points if w == who)


# -- device + real gRPC hub: crashes and retries in any order -----------------------------------

DEVICES = [f"prop-{i}" for i in range(400)]
_device_ids = iter(DEVICES)


@pytest.fixture(scope="module", params=BACKENDS)
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """A real gateway on the SQLite hub and on the PostgreSQL hub."""
    tokens = [{"token": f"tok-{d}", "role": "device", "device_id": d} for d in DEVICES]
    data: dict[str, Any] = {"tokens": tokens}
    with running_gateway(request.param, tmp_path_factory.mktemp("hub"), data) as server:
        yield server


action = st.one_of(
    st.tuples(st.just("record"), st.integers(1, 12)),
    st.tuples(st.just("push_then_crash"), st.integers(1, 15)),  # hub commits, device never sees the answer
    st.tuples(st.just("sync"), st.integers(1, 10)),  # a full sync with this batch size
    st.tuples(st.just("restart"), st.just(0)),  # the terminal process restarts from disk
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(actions=st.lists(action, min_size=1, max_size=12))
def test_no_interleaving_of_crash_and_retry_loses_or_duplicates(gateway: GatewayServer,
                                                                actions: list[tuple[str, int]]) -> None:
    device = next(_device_ids)
    token = f"tok-{device}"
    target = f"127.0.0.1:{gateway.port}"
    stub = sync_pb2_grpc.SyncServiceStub(grpc.insecure_channel(target))
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        client = Client.open(state, device_id=device, trusted_keys=[])
        counter = itertools.count()
        try:
            for name, n in actions:
                if name == "record":
                    for _ in range(n):
                        i = next(counter)
                        if i % 3:
                            client.award_points(CUSTOMERS[i % 3], 1 + i % 7, idempotency_key=f"{device}.k{i}",
                                                reason="x")
                        else:
                            with client._store.transaction() as tx:
                                tx.append_event("response", {"decision_id": "d", "offer_id": "o",
                                                             "customer_id": CUSTOMERS[i % 3], "outcome": "ignored"})
                elif name == "push_then_crash":
                    rows = _pending_batch(client, n)
                    if rows:
                        stub.PushEvents(sync_pb2.PushEventsRequest(device_id=device, events=[
                            sync_pb2.Event(event_id=e, device_id=device, seq=s, type=t, created_at=c, payload_json=p)
                            for s, e, t, c, p in rows]), metadata=(("authorization", f"Bearer {token}"),))
                    client.close()  # the crash: the answer is lost; state is what is on disk
                    client = Client.open(state, device_id=device, trusted_keys=[])
                elif name == "sync":
                    client.close()
                    client = Client.open(state, device_id=device, trusted_keys=[],
                                         config=ClientConfig(sync_batch_size=n))
                    client.sync(target, token=token)
                else:
                    client.close()
                    client = Client.open(state, device_id=device, trusted_keys=[])
            client.sync(target, token=token)
            assert client.pending_events() == 0
            with client._store.read() as tx:
                outbox = tx.execute("SELECT seq, event_id FROM outbox ORDER BY seq")
            held = [(e["seq"], e["event_id"]) for e in gateway.hub.events(device_id=device)]
            assert held == [(int(s), e) for s, e in outbox]  # every event exactly once, in order
            for c in CUSTOMERS:
                own = sum(e.points for e in gateway.hub.ledger(c) if e.idempotency_key.startswith(f"{device}."))
                assert own == sum(e.points for e in ledger_entries(client._store, c))
        finally:
            client.close()
