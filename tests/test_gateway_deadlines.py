"""Issue 6 item 5, "deadlines honoured", on the server side: a call whose deadline ran out while
it waited — for a thread, or for the hub's write lock — is not executed.

A client-side deadline alone always ends the call with DEADLINE_EXCEEDED for the caller; the
question is what the server then does. Here the gateway has one decision thread, and the test
holds the SQLite hub's write lock from a connection of its own: one ``AwardPoints`` waits for
the lock (holding the thread), a second one times out at the client. When the lock is
released, the first is applied and the second must not be (the caller was told it failed, so
applying it would hand out points the caller may award again under a new key).

Three things provide this: grpc skips a handler whose call was cancelled before a thread
picked it up, the gateway's ``rpc_errors`` refuses to start a call with no time left, and
``AwardPoints`` checks its caller is still there once it holds the write lock (whichever of
the two calls got the thread first, the late one is not applied).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import grpc
from gateway_helpers import APP, bundle_kit, config_data
from nbo.gateway import create_server, parse_config
from nbo.v1 import decision_pb2, decision_pb2_grpc


def test_a_call_whose_deadline_passed_while_waiting_is_not_executed(tmp_path: Path) -> None:
    kit = bundle_kit(tmp_path / "kit")
    config = parse_config(config_data(trusted_key=kit.pub), base_dir=tmp_path)
    server, port = create_server(config, state_dir=tmp_path / "state", max_workers=1, bundle_poll_seconds=0)
    server.start()
    target = f"127.0.0.1:{port}"
    lock = sqlite3.connect(tmp_path / "state" / "hub.sqlite", isolation_level=None, timeout=30)
    result: dict[str, object] = {}

    def first_award() -> None:
        with grpc.insecure_channel(target) as channel:
            result["first"] = decision_pb2_grpc.DecisionServiceStub(channel).AwardPoints(
                decision_pb2.AwardPointsRequest(customer_id="early-1", points=10, idempotency_key="early",
                                                reason="r"), metadata=APP, timeout=30)

    waiter = threading.Thread(target=first_award)
    try:
        lock.execute("BEGIN IMMEDIATE")  # the hub's writer lock, held by someone else
        waiter.start()
        with grpc.insecure_channel(target) as channel:
            stub = decision_pb2_grpc.DecisionServiceStub(channel)
            try:
                stub.AwardPoints(decision_pb2.AwardPointsRequest(
                    customer_id="late-1", points=50, idempotency_key="late", reason="r"), metadata=APP, timeout=0.5)
                raise AssertionError("the award was answered although the hub's write lock was held")
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            lock.execute("ROLLBACK")
            waiter.join(30)
            assert result["first"].balance == 10  # type: ignore[attr-defined]
            # One decision thread, first come first served: this call runs after the late one had its turn.
            balance = stub.GetBalance(decision_pb2.GetBalanceRequest(customer_id="late-1"), metadata=APP,
                                      timeout=10).balance
        assert balance == 0, "a call that had already timed out was executed"
        assert ["early-1" in e["payload"] and "late-1" not in e["payload"] for e in server.hub.events(device_id="app")] == [True]
    finally:
        if lock.in_transaction:
            lock.execute("ROLLBACK")
        lock.close()
        waiter.join(30)
        server.stop(grace=2).wait(10)
