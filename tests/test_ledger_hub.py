"""The same ledger, payment, purchase and response code over every state store:
the device's SQLite store, and the gateway's hub-backed store on SQLite and PostgreSQL
(``NBO_TEST_POSTGRES``; skipped without it unless ``NBO_REQUIRE_POSTGRES=1``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nbo.gateway import HubStateStore
from nbo.sdk import InputError, LedgerError, ManualClock, _contacts, _ledger, _payments, _records
from nbo.sdk._store import SQLiteStateStore
from sync_helpers import hub_backend

T0 = 1_700_000_000.0
DAY = 86_400.0


@pytest.fixture(params=["device", "hub-sqlite", "hub-postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, ManualClock]]:
    clock = ManualClock(T0)
    if request.param == "device":
        store = SQLiteStateStore(tmp_path / "state.sqlite", device_id="pos-1", clock=clock,
                                 schemas=(_ledger.SCHEMA, _payments.SCHEMA, _records.SCHEMA))
        yield store, clock
        store.close()
        return
    with hub_backend(request.param.removeprefix("hub-"), tmp_path, clock=clock) as (hub, _, _):
        state = HubStateStore(hub, clock=clock)
        yield state, clock
        state.close()


def test_the_ledger_behaves_the_same_on_every_store(env):
    store, clock = env
    expiring = datetime.fromtimestamp(T0 + 10 * DAY, tz=UTC)
    lot = _ledger.award(store, "C1", 100, idempotency_key="a", reason="r", expires_at=expiring)
    assert _ledger.award(store, "C1", 100, idempotency_key="a", reason="r", expires_at=expiring) == lot
    _ledger.award(store, "C1", 50, idempotency_key="b", reason="r", expires_at=None)
    with pytest.raises(LedgerError, match="different arguments"):
        _ledger.award(store, "C1", 51, idempotency_key="b", reason="r", expires_at=None)
    spend = _ledger.redeem(store, "C1", 120, idempotency_key="x", reason="r")
    assert _ledger.balance(store, "C1") == 30
    with pytest.raises(LedgerError):
        _ledger.redeem(store, "C1", 31, idempotency_key="y", reason="r")
    _ledger.reverse(store, spend.entry_id, idempotency_key="rx", reason="r")
    with pytest.raises(LedgerError, match="already been reversed"):
        _ledger.reverse(store, spend.entry_id, idempotency_key="rx2", reason="r")
    assert _ledger.balance(store, "C1") == 150
    clock.advance(11 * DAY)
    assert _ledger.balance(store, "C1") == 50
    entries = _ledger.entries(store, "C1")
    assert [e.kind for e in entries] == ["award", "award", "redeem", "reverse", "expire"]
    assert _ledger.ledger_balance(entries, now=clock.now()) == 50


def test_payments_purchases_and_responses_run_on_every_store(env):
    store, clock = env
    record = _payments.record_payment(store, "C1", payment_token="tok_1", amount="9.90", currency="EUR",
                                      idempotency_key="p", store_id="S1", decision_id=None, offer_id=None)
    again = _payments.record_payment(store, "C1", payment_token="tok_1", amount=Decimal("9.9"), currency="eur",
                                     idempotency_key="p", store_id="S1", decision_id=None, offer_id=None)
    assert again == record and record.amount == Decimal("9.90")
    _records.record_purchase(store, "C1", amount="12.5", idempotency_key="b1", timestamp=None, quantity=1)
    _records.record_purchase(store, "C1", amount="12.5", idempotency_key="b1", timestamp=None, quantity=1)
    with store.transaction() as tx:
        profile = json.loads(tx.execute("SELECT profile FROM profiles WHERE customer_id = ?", ("C1",))[0][0])
        _contacts.record_decisions(tx, [_contacts.DecisionRecord(
            "D1", "C1", "app", "b", 1, "s",
            [{"offer_id": "O1", "category": "xsell", "rank": 1, "propensity": 0.5, "value": 10.0, "weight": 1.0,
              "lever": 1.0, "score": 5.0, "selection_probability": 1.0}])])
    assert (profile["frequency"], profile["monetary"]) == (1, 12.5)
    _records.record_response(store, "D1", "O1", "accepted")
    _records.record_response(store, "D1", "O1", "accepted")
    with pytest.raises(InputError):
        _records.record_response(store, "D1", "O1", "declined")
    with store.transaction() as tx:
        rows = tx.execute("SELECT event, channel, category FROM contact_history WHERE decision_id = ? "
                          "ORDER BY ts, event", ("D1",))
    assert sorted(tuple(r) for r in rows) == [("accepted", "app", "xsell"), ("shown", "app", "xsell")]
