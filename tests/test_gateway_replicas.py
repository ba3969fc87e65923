"""Two `nbo serve` processes sharing one PostgreSQL hub (the scale-out path of docs/operations.md).

Each test runs in its own PostgreSQL schema (selected through the URL's
``options=-csearch_path=…``) and drops it afterwards. Terminals (real SDK clients) sync to
either replica, app calls go to either, the same batch is pushed to both at the same moment,
and a customer's decisions alternate between the replicas — the event store and the ledger
stay exactly-once and "at most 2 shows a week" holds.

Needs NBO_TEST_POSTGRES; with NBO_REQUIRE_POSTGRES=1 an unreachable server fails the tests.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from gateway_helpers import (
    APP,
    DEVICE2_TOKEN,
    DEVICE_TOKEN,
    Replicas,
    auth,
    policy_catalog,
    postgres_replicas,
)
from nbo.sdk import Client
from nbo.v1 import decision_pb2, decision_pb2_grpc, sync_pb2, sync_pb2_grpc
from sync_helpers import points, postgres_url, unique_schema

pytestmark = pytest.mark.postgres


@pytest.fixture()
def replicas(tmp_path: Path) -> Iterator[Replicas]:
    base = postgres_url()
    assert base is not None
    with postgres_replicas(tmp_path, base_url=base, schema=unique_schema(),
                           catalog=policy_catalog(max_shows=2, window_days=7)) as started:
        yield started


def decide(target: str, customer: str, *, limit: int = 10) -> decision_pb2.DecideResponse:
    with grpc.insecure_channel(target) as channel:
        response: decision_pb2.DecideResponse = decision_pb2_grpc.DecisionServiceStub(channel).Decide(
            decision_pb2.DecideRequest(customer_id=customer, channel="pos", limit=limit), metadata=APP, timeout=20)
    return response


def test_contact_policy_holds_across_alternating_replicas(replicas: Replicas) -> None:
    customer = "alternating-1"
    shown: Counter[str] = Counter()
    fallback: set[str] = set()
    versions = set()
    for i in range(8):
        response = decide(replicas.target(i), customer)
        versions.add(response.bundle_version)
        for offer in response.offers:
            if offer.fallback or offer.mandatory:  # notices and the fallback are not offers being pushed
                fallback.add(offer.offer_id)
            else:
                shown[offer.offer_id] += 1
    assert versions == {1}
    assert shown and max(shown.values()) == 2, shown  # every offer reached the cap, none went past it
    # Concurrent decisions for one fresh customer on both replicas at once: still at most 2.
    customer = "concurrent-1"
    results: list[decision_pb2.DecideResponse] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(8)

    def run(i: int) -> None:
        gate.wait()
        try:
            results.append(decide(replicas.target(i), customer))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    counts = Counter(o.offer_id for r in results for o in r.offers if not (o.fallback or o.mandatory))
    assert counts and max(counts.values()) <= 2, counts
    hub = replicas.hub()
    try:
        seqs = [e["seq"] for e in hub.events(device_id="app")]
        assert seqs == list(range(1, len(seqs) + 1))  # one gapless app sequence across both replicas
        assert sum(1 for e in hub.events(device_id="app") if e["type"] == "decision") == 16
    finally:
        hub.close()


def _push_everywhere(replicas: Replicas, request: sync_pb2.PushEventsRequest, clients: int = 4
                     ) -> tuple[list[sync_pb2.PushEventsResponse], list[BaseException]]:
    """Push one batch from ``clients`` threads at the same moment, alternating replicas."""
    answers: list[sync_pb2.PushEventsResponse] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(clients)

    def push(i: int) -> None:
        with grpc.insecure_channel(replicas.target(i)) as channel:
            stub = sync_pb2_grpc.SyncServiceStub(channel)
            gate.wait()
            try:
                answers.append(stub.PushEvents(request, metadata=auth(DEVICE2_TOKEN), timeout=30))
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=push, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers, errors


def test_concurrent_pushes_of_the_same_batch_to_both_replicas_store_it_once(replicas: Replicas) -> None:
    customer = f"push-{uuid.uuid4().hex[:6]}"
    for round_no in range(3):
        start = round_no * 20 + 1
        events = []
        for seq in range(start, start + 20):
            payload = points(customer, 5) if seq % 2 else points(customer, -1)
            events.append(sync_pb2.Event(event_id=str(uuid.uuid4()), device_id="pos-2", seq=seq, type="points",
                                         created_at=payload["created_at"], payload_json=json.dumps(payload)))
        answers, errors = _push_everywhere(replicas, sync_pb2.PushEventsRequest(device_id="pos-2", events=events))
        assert not errors
        assert {a.acked_through for a in answers} == {start + 19}
    hub = replicas.hub()
    try:
        held = hub.events(device_id="pos-2")
        assert [e["seq"] for e in held] == list(range(1, 61))
        assert len(hub.ledger(customer)) == 60
        assert hub.balance(customer) == 30 * 5 - 30
    finally:
        hub.close()


def test_terminals_and_app_on_either_replica_add_up_exactly_once(replicas: Replicas, tmp_path: Path) -> None:
    customer = "shared-customer"
    terminals = []
    for i, (device, token) in enumerate((("pos-1", DEVICE_TOKEN), ("pos-2", DEVICE2_TOKEN))):
        client = Client.open(tmp_path / device, device_id=device, trusted_keys=[replicas.kit.pub])
        report = client.sync(replicas.target(i), token=token)  # picks up the bundle
        assert report.bundle_installed is not None
        terminals.append((client, token))
    try:
        expected = 0
        for round_no in range(3):
            for i, (client, token) in enumerate(terminals):
                client.decide(customer, channel="pos")
                client.award_points(customer, 10, idempotency_key=f"{i}-{round_no}", reason="purchase")
                expected += 10
                # Alternate replicas per terminal and per round.
                report = client.sync(replicas.target(i + round_no), token=token)
                assert not report.errors and client.pending_events() == 0
        # App calls to either replica see (and move) the same authoritative balance.
        with grpc.insecure_channel(replicas.target(0)) as a, grpc.insecure_channel(replicas.target(1)) as b:
            stub_a, stub_b = decision_pb2_grpc.DecisionServiceStub(a), decision_pb2_grpc.DecisionServiceStub(b)
            stub_a.AwardPoints(decision_pb2.AwardPointsRequest(customer_id=customer, points=7, idempotency_key="app-1",
                                                               reason="app"), metadata=APP)
            redeemed = stub_b.RedeemPoints(decision_pb2.RedeemPointsRequest(
                customer_id=customer, points=expected + 7, idempotency_key="app-2", reason="all of it"), metadata=APP)
            assert redeemed.balance == 0
            for stub in (stub_a, stub_b):
                assert stub.GetBalance(decision_pb2.GetBalanceRequest(customer_id=customer), metadata=APP).balance == 0
        # A terminal's next sync (of an event about this customer) learns the balance that
        # includes the app's entries.
        client, token = terminals[0]
        assert client.points_balance(customer) > 0  # stale: its last central balance predates the app
        client.decide(customer, channel="pos")
        client.sync(replicas.target(1), token=token)
        assert client.points_balance(customer) == 0
    finally:
        for client, _ in terminals:
            client.close()
    hub = replicas.hub()
    try:
        for device, count in (("pos-1", 7), ("pos-2", 6)):  # decisions and awards, each exactly once
            seqs = [e["seq"] for e in hub.events(device_id=device)]
            assert seqs == list(range(1, count + 1))
        kinds = Counter(e.kind for e in hub.ledger(customer))
        assert kinds == {"award": 7, "redeem": 1}
        assert hub.balance(customer) == 0
    finally:
        hub.close()
