"""Issue 5 item 1 / docs/ledger.md: every state change commits with its outbox event in ONE SQLite
transaction, and money and points writes commit with ``synchronous=FULL`` (fsync'd) before
the call returns.

A process crash cannot tell ``NORMAL`` from ``FULL`` in WAL mode (only an OS crash can), so
the kill -9 tests elsewhere would not notice a durable write turned into a relaxed one. Here
SQLite's own statement trace shows, for each public call, which transactions ran, what they
wrote and the ``synchronous`` level in force at their ``COMMIT``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from bundle_fixtures import make_bundle, make_keys, make_model
from nbo.sdk import Client, ManualClock

T0 = 1_700_000_000.0
DAY = 86_400.0
_INSERT = re.compile(r"^\s*INSERT\s+(?:OR\s+\w+\s+)?INTO\s+(\w+)", re.IGNORECASE)
_UPDATE = re.compile(r"^\s*UPDATE\s+(\w+)", re.IGNORECASE)


@dataclass
class Txn:
    writes: set[str] = field(default_factory=set)
    full: bool = False


@dataclass
class Trace:
    """Follows the statements of one connection: transactions, their writes, sync level at commit."""

    full: bool
    open: Txn | None = None
    committed: list[Txn] = field(default_factory=list)

    def __call__(self, sql: str) -> None:
        text = sql.strip().upper()
        if text.startswith("PRAGMA SYNCHRONOUS="):
            self.full = text.endswith("FULL") or text.endswith("2")
        elif text.startswith("BEGIN"):
            self.open = Txn()
        elif text.startswith("COMMIT") and self.open is not None:
            self.open.full = self.full
            self.committed.append(self.open)
            self.open = None
        elif text.startswith("ROLLBACK"):
            self.open = None
        elif self.open is not None:
            match = _INSERT.match(sql) or _UPDATE.match(sql)
            if match:
                self.open.writes.add(match.group(1).lower())

    def writing(self) -> list[Txn]:
        return [t for t in self.committed if t.writes]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("durability-bundle")
    key, pub = make_keys(root / "keys")
    model = make_model(root / "model" / "propensity.onnx")
    return make_bundle(root / "bundles", key=key, models={"propensity": model}), pub


@pytest.fixture()
def client(tmp_path: Path, bundle: tuple[Path, Path]) -> Iterator[Client]:
    zip_path, pub = bundle
    c = Client.open(tmp_path / "state", device_id="pos-1", trusted_keys=[pub.read_bytes()],
                    clock=ManualClock(T0))
    c.install_bundle(zip_path)
    yield c
    c.close()


def traced(client: Client, call: Callable[[], Any]) -> list[Txn]:
    """Run ``call`` after a relaxed transaction (so FULL must be asked for again) and trace it."""
    store: Any = client._store
    with store.transaction() as tx:  # leaves the connection at synchronous=NORMAL
        tx.execute("SELECT 1")
    trace = Trace(full=store._sync_full)
    assert trace.full is False
    store._conn.set_trace_callback(trace)
    try:
        call()
    finally:
        store._conn.set_trace_callback(None)
    return trace.writing()


def _one_durable_transaction_with(txns: list[Txn], *tables: str) -> None:
    assert len(txns) == 1, [t.writes for t in txns]  # the state change and its event: one commit
    assert {"outbox", *tables} <= txns[0].writes, txns[0].writes
    assert txns[0].full, "money/points commit without synchronous=FULL (not fsync'd)"


def test_award_points_is_one_fsynced_transaction_with_its_event(client: Client) -> None:
    txns = traced(client, lambda: client.award_points("C1", 50, idempotency_key="a1", reason="r"))
    _one_durable_transaction_with(txns, "ledger_entries")


def test_redeem_points_is_one_fsynced_transaction_with_its_event(client: Client) -> None:
    client.award_points("C1", 50, idempotency_key="a1", reason="r")
    txns = traced(client, lambda: client.redeem_points("C1", 20, idempotency_key="r1", reason="r"))
    _one_durable_transaction_with(txns, "ledger_entries")


def test_reverse_points_is_one_fsynced_transaction_with_its_event(client: Client) -> None:
    entry = client.award_points("C1", 50, idempotency_key="a1", reason="r")
    txns = traced(client, lambda: client.reverse_points(entry.entry_id, idempotency_key="x1", reason="r"))
    _one_durable_transaction_with(txns, "ledger_entries")


def test_expiry_written_by_a_balance_read_is_fsynced_with_its_event(client: Client) -> None:
    expires = datetime.fromtimestamp(T0 + DAY, tz=UTC)
    client.award_points("C1", 50, idempotency_key="a1", reason="r", expires_at=expires)
    clock: Any = client._store.clock
    clock.advance(2 * DAY)
    txns = traced(client, lambda: client.points_balance("C1"))
    _one_durable_transaction_with(txns, "ledger_entries")


def test_record_payment_is_one_fsynced_transaction_with_its_event(client: Client) -> None:
    txns = traced(client, lambda: client.record_payment(
        "C1", payment_token="tok_1", amount="12.50", currency="EUR", idempotency_key="p1"))
    _one_durable_transaction_with(txns, "payments")


def test_record_purchase_is_one_fsynced_transaction_with_profile_and_event(client: Client) -> None:
    txns = traced(client, lambda: client.record_purchase("C1", amount="30.00", idempotency_key="b1"))
    assert len(txns) == 1, [t.writes for t in txns]
    assert {"outbox", "purchases"} <= txns[0].writes and txns[0].writes & {"profiles"}
    assert txns[0].full


def test_a_decision_and_its_event_commit_together(client: Client) -> None:
    txns = traced(client, lambda: client.decide("C1", channel="pos"))
    assert len(txns) == 1, [t.writes for t in txns]
    assert {"outbox", "contact_history"} <= txns[0].writes, txns[0].writes


def test_a_response_and_its_event_commit_together(client: Client) -> None:
    decision = client.decide("C1", channel="pos")
    txns = traced(client, lambda: client.record_response(decision.decision_id, decision.offers[0].offer_id,
                                                         "accepted"))
    assert len(txns) == 1, [t.writes for t in txns]
    assert {"outbox", "contact_history"} <= txns[0].writes, txns[0].writes


# -- the gateway's hub-backed store (docs/operations.md): app-channel money and points --------------------


def test_gateway_money_and_points_commit_fsynced_with_their_hub_event(tmp_path: Path) -> None:
    """AwardPoints / RedeemPoints / RecordPayment over gRPC, and a terminal's PushEvents: the state
    change and its hub event commit together on the SQLite hub's ``synchronous=FULL`` connection
    (not the relaxed one decisions use)."""
    from gateway_helpers import APP, DEVICE, bundle_kit, config_data, running_gateway
    from nbo.v1 import decision_pb2, sync_pb2
    from sync_helpers import points

    kit = bundle_kit(tmp_path / "kit")
    with running_gateway(tmp_path / "gw", config_data(trusted_key=kit.pub)) as gw:
        conn: Any = gw.server.hub.db._conn  # type: ignore[attr-defined]
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        calls: list[tuple[Callable[[], Any], str]] = [
            (lambda: gw.decision.AwardPoints(decision_pb2.AwardPointsRequest(
                customer_id="G1", points=50, idempotency_key="ga", reason="r"), metadata=APP), "ledger_entries"),
            (lambda: gw.decision.RedeemPoints(decision_pb2.RedeemPointsRequest(
                customer_id="G1", points=20, idempotency_key="gr", reason="r"), metadata=APP), "ledger_entries"),
            (lambda: gw.decision.RecordPayment(decision_pb2.RecordPaymentRequest(
                customer_id="G1", payment_token="tok_g", amount="9.99", currency="EUR", idempotency_key="gp"),
                metadata=APP), "payments"),
            # A terminal's push: the hub acknowledges only what a power cut cannot take back.
            (lambda: gw.sync.PushEvents(sync_pb2.PushEventsRequest(device_id="pos-1", events=[sync_pb2.Event(
                event_id=str(uuid.uuid4()), device_id="pos-1", seq=1, type="points", created_at=T0,
                payload_json=json.dumps(points("G2", 5)))]), metadata=DEVICE), "hub_ledger"),
        ]
        for call, table in calls:
            trace = Trace(full=True)
            conn.set_trace_callback(trace)
            try:
                call()
            finally:
                conn.set_trace_callback(None)
            with_table = [t for t in trace.writing() if table in t.writes]
            assert len(with_table) == 1, (table, [t.writes for t in trace.writing()])
            assert "hub_events" in with_table[0].writes, with_table[0].writes
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
