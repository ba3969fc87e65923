"""Two replicas of `nbo serve --processes 2` on one PostgreSQL hub: four serving processes.

Concurrent requests for one customer, each on a connection of its own (the kernel spreads
connections over a replica's processes, the test alternates replicas), must leave the contact
policies and the points balance exact: a customer's decisions take the hub's per-customer
lock whichever process makes them, and so do awards and redeems.

Each test runs in its own PostgreSQL schema (``nbo_h13_…``, selected through the URL's
``options=-csearch_path=…``) and drops it afterwards. Needs NBO_TEST_POSTGRES; with
NBO_REQUIRE_POSTGRES=1 an unreachable server fails the tests.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_helpers import (
    APP,
    Replicas,
    policy_catalog,
    postgres_replicas,
)
from nbo.v1 import decision_pb2, decision_pb2_grpc
from sync_helpers import postgres_url

pytestmark = pytest.mark.postgres

MAX_SHOWS = 2


@pytest.fixture()
def replicas(tmp_path: Path) -> Iterator[Replicas]:
    base = postgres_url()
    assert base is not None
    with postgres_replicas(tmp_path, base_url=base, schema=f"nbo_h13_{uuid.uuid4().hex[:12]}",
                           catalog=policy_catalog(max_shows=MAX_SHOWS, window_days=7), processes=2) as started:
        yield started


def _at_once(replicas: Replicas, n: int, call: Callable[[decision_pb2_grpc.DecisionServiceStub, int], Any]
             ) -> tuple[list[Any], list[grpc.RpcError]]:
    """``n`` calls released together, each on a new connection to replica ``i % 2``."""
    answers: list[Any] = []
    refused: list[grpc.RpcError] = []
    others: list[BaseException] = []
    gate = threading.Barrier(n)

    def run(i: int) -> None:
        with grpc.insecure_channel(replicas.target(i)) as channel:
            stub = decision_pb2_grpc.DecisionServiceStub(channel)
            grpc.channel_ready_future(channel).result(timeout=30)
            gate.wait()
            try:
                answers.append(call(stub, i))
            except grpc.RpcError as exc:
                refused.append(exc)
            except BaseException as exc:
                others.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not others, others
    return answers, refused


def test_contact_policy_holds_for_one_customer_decided_at_once_by_four_processes(replicas: Replicas) -> None:
    customer = "hot-1"
    answers, refused = _at_once(replicas, 24, lambda stub, i: stub.Decide(
        decision_pb2.DecideRequest(customer_id=customer, channel="pos", limit=10), metadata=APP, timeout=60))
    assert refused == []
    shown = Counter(o.offer_id for a in answers for o in a.offers if not (o.fallback or o.mandatory))
    # Every offer reached the cap — the customer was decided often enough to exhaust them all —
    # and none went past it, although the decisions raced on four processes.
    assert shown and set(shown.values()) == {MAX_SHOWS}, shown
    hub = replicas.hub()
    try:
        decisions = [e for e in hub.events(device_id="app") if e["type"] == "decision"]
        assert len(decisions) == 24
        seqs = [e["seq"] for e in hub.events(device_id="app")]
        assert seqs == list(range(1, len(seqs) + 1))  # one gapless app sequence across the processes
        logged = Counter(o["offer_id"] for e in decisions for o in json.loads(e["payload"])["offers"])
        assert {k: v for k, v in logged.items() if k in shown} == dict(shown)
    finally:
        hub.close()


def test_points_stay_exact_under_concurrent_awards_retries_and_redeems_across_processes(replicas: Replicas) -> None:
    customer = "points-1"
    # 20 awards of 10, each sent twice at the same moment (a client retrying on another
    # connection): the idempotency key makes each count once, whichever process gets it.
    answers, refused = _at_once(replicas, 40, lambda stub, i: stub.AwardPoints(decision_pb2.AwardPointsRequest(
        customer_id=customer, points=10, idempotency_key=f"award-{i // 2}", reason="purchase"), metadata=APP,
        timeout=60))
    assert refused == []
    entries = {a.entry.entry_id: a.entry.idempotency_key for a in answers}
    assert sorted(entries.values()) == sorted(f"award-{k}" for k in range(20))  # one entry per key
    # 20 redeems of 15 at once against 200 points: exactly 13 fit, the rest are refused.
    answers, refused = _at_once(replicas, 20, lambda stub, i: stub.RedeemPoints(decision_pb2.RedeemPointsRequest(
        customer_id=customer, points=15, idempotency_key=f"redeem-{i}", reason="reward"), metadata=APP, timeout=60))
    assert len(answers) == 13 and len(refused) == 7
    assert {exc.code() for exc in refused} == {grpc.StatusCode.FAILED_PRECONDITION}
    assert min(a.balance for a in answers) == 5
    balances, refused = _at_once(replicas, 8, lambda stub, i: stub.GetBalance(
        decision_pb2.GetBalanceRequest(customer_id=customer), metadata=APP, timeout=60).balance)
    assert refused == [] and set(balances) == {5}
    hub = replicas.hub()
    try:
        assert hub.balance(customer) == 5
        assert Counter(e.kind for e in hub.ledger(customer)) == {"award": 20, "redeem": 13}
    finally:
        hub.close()
