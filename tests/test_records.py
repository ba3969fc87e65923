"""Responses to real decisions, purchases feeding the shared measures, and the outbox view
(pending / acked / dead-lettered, decision-log compaction) on a real device database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from bundle_fixtures import make_bundle, make_keys, make_model
from nbo.sdk import (
    Client,
    InputError,
    ManualClock,
    NotFoundError,
    PaymentDataError,
    StateError,
    _measures,
    _records,
)

T0 = 1_700_000_000.0
DAY = 86_400.0


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("records-bundle")
    key, pub = make_keys(root / "keys")
    model = make_model(root / "model" / "propensity.onnx")
    return make_bundle(root / "bundles", key=key, models={"propensity": model}), pub


@pytest.fixture()
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture()
def client(tmp_path: Path, clock: ManualClock, bundle: tuple[Path, Path]) -> Client:
    zip_path, pub = bundle
    c = Client.open(tmp_path / "state", device_id="pos-1", trusted_keys=[pub.read_bytes()], clock=clock)
    c.install_bundle(zip_path)
    yield c
    c.close()


def events(client: Client, kind: str | None = None) -> list[dict]:
    with client._store.transaction() as tx:
        rows = tx.execute("SELECT type, payload FROM outbox ORDER BY seq")
    return [json.loads(p) for t, p in rows if kind is None or t == kind]


def history(client: Client, decision_id: str) -> list[tuple]:
    with client._store.transaction() as tx:
        return tx.execute("SELECT customer_id, offer_id, category, channel, event, ts FROM contact_history "
                          "WHERE decision_id = ? AND event <> 'shown' ORDER BY rowid", (decision_id,))


def profile(client: Client, customer_id: str) -> dict:
    with client._store.transaction() as tx:
        rows = tx.execute("SELECT profile FROM profiles WHERE customer_id = ?", (customer_id,))
    return json.loads(rows[0][0]) if rows else {}


# -- responses ------------------------------------------------------------------------------------


def test_a_response_feeds_the_contact_history_and_the_outbox(client: Client, clock: ManualClock):
    decision = client.decide("C1", channel="pos")
    offer = decision.offers[0]
    clock.advance(30)
    client.record_response(decision.decision_id, offer.offer_id, "accepted")
    assert history(client, decision.decision_id) == [
        ("C1", offer.offer_id, offer.category, "pos", "accepted", T0 + 30)]
    assert events(client, "response") == [{
        "decision_id": decision.decision_id, "offer_id": offer.offer_id, "customer_id": "C1",
        "category": offer.category, "channel": "pos", "outcome": "accepted"}]


@pytest.mark.parametrize("outcome", ["accepted", "declined", "ignored"])
def test_each_outcome_is_recorded_as_its_own_contact_event(client: Client, outcome: str):
    decision = client.decide("C2", channel="pos")
    client.record_response(decision.decision_id, decision.offers[0].offer_id, outcome)
    assert [row[4] for row in history(client, decision.decision_id)] == [outcome]


def test_repeating_the_same_response_is_a_no_op_and_a_different_one_is_refused(client: Client):
    decision = client.decide("C1", channel="pos")
    offer_id = decision.offers[0].offer_id
    client.record_response(decision.decision_id, offer_id, "declined")
    client.record_response(decision.decision_id, offer_id, "declined")
    with pytest.raises(InputError) as info:
        client.record_response(decision.decision_id, offer_id, "accepted")
    assert info.value.field == "outcome" and "already has the response 'declined'" in str(info.value)
    assert len(history(client, decision.decision_id)) == 1 and len(events(client, "response")) == 1


def test_each_shown_offer_takes_its_own_response(client: Client):
    decision = client.decide("C1", channel="pos", limit=3)
    assert len(decision.offers) >= 2
    for offer in decision.offers:
        client.record_response(decision.decision_id, offer.offer_id, "ignored")
    assert [row[1] for row in history(client, decision.decision_id)] == [o.offer_id for o in decision.offers]


def test_unknown_decision_and_offer_not_shown_are_refused_naming_the_field(client: Client):
    decision = client.decide("C1", channel="pos", limit=1)
    with pytest.raises(NotFoundError) as info:
        client.record_response("no-such-decision", decision.offers[0].offer_id, "accepted")
    assert info.value.field == "decision_id"  # type: ignore[attr-defined]
    shown = {o.offer_id for o in decision.offers}
    other = next(o["offer_id"] for o in client._active.offers if o["offer_id"] not in shown)
    with pytest.raises(InputError) as info:
        client.record_response(decision.decision_id, other, "accepted")
    assert info.value.field == "offer_id" and not isinstance(info.value, NotFoundError)  # a bad argument
    assert events(client, "response") == []


@pytest.mark.parametrize(("args", "field"), [
    (("D", "O", "maybe"), "outcome"),
    (("D", "O", "ACCEPTED"), "outcome"),
    (("D", "O", None), "outcome"),
    (("", "O", "accepted"), "decision_id"),
    ((None, "O", "accepted"), "decision_id"),
    (("D", "", "accepted"), "offer_id"),
    (("D", 3, "accepted"), "offer_id"),
])
def test_bad_response_arguments_name_the_field(client: Client, args, field):
    with pytest.raises(InputError) as info:
        client.record_response(*args)
    assert info.value.field == field


# -- purchases ------------------------------------------------------------------------------------


def test_a_purchase_updates_the_measures_with_the_shared_code(client: Client, clock: ManualClock):
    client.record_purchase("C1", amount="12.30", idempotency_key="p1")
    first = profile(client, "C1")
    assert (first["frequency"], first["monetary"], first["recency_days"]) == (1, pytest.approx(12.3), 0.0)
    clock.advance(3 * DAY)
    client.record_purchase("C1", amount=Decimal("7.70"), idempotency_key="p2", quantity=2)
    second = profile(client, "C1")
    assert (second["frequency"], second["monetary"]) == (2, pytest.approx(20.0))
    assert second["avg_purchase"] == pytest.approx(10.0)
    assert second["tenure_days"] == pytest.approx(3.0)
    assert [e["amount"] for e in events(client, "purchase")] == ["12.3", "7.7"]
    # Serving and training cannot drift: what training derives from the same transactions
    # is what the device holds.
    trained = _measures.derive_features(
        [{"customer_id": "C1", "timestamp": T0, "amount": "12.30"},
         {"customer_id": "C1", "timestamp": T0 + 3 * DAY, "amount": "7.70", "quantity": 2}],
        as_of=T0 + 3 * DAY)["C1"]
    for measure in ("recency_days", "frequency", "monetary", "avg_purchase", "tenure_days",
                    "purchases_per_year", "clv", "lifecycle_stage", "loyalty_stage"):
        assert second[measure] == pytest.approx(trained[measure]), measure


def test_a_purchase_keeps_the_other_profile_fields(client: Client):
    with client._store.transaction() as tx:
        tx.execute("INSERT INTO profiles(customer_id, profile, updated_at) VALUES (?, ?, ?)",
                   ("C1", json.dumps({"segment": "gold", "age": 41, "points_balance": 7}), T0))
    client.record_purchase("C1", amount="5", idempotency_key="p1")
    stored = profile(client, "C1")
    assert (stored["segment"], stored["age"], stored["frequency"]) == ("gold", 41, 1)


def test_the_purchase_event_carries_the_contract_payload(client: Client):
    when = datetime(2023, 11, 1, 9, 30, tzinfo=UTC)
    client.record_purchase("C1", amount="19.99", idempotency_key="p1", timestamp=when, quantity=3)
    [payload] = events(client, "purchase")
    assert payload.pop("purchase_id")
    assert payload == {"customer_id": "C1", "amount": "19.99", "quantity": 3, "timestamp": when.timestamp(),
                       "idempotency_key": "p1"}
    assert profile(client, "C1")["last_purchase_at"] == when.timestamp()


def test_a_back_dated_purchase_on_a_timezone_other_than_utc_is_the_same_instant(client: Client):
    when = datetime(2023, 11, 1, 10, 30, tzinfo=UTC)
    cet = when.astimezone(timezone(timedelta(hours=1)))
    client.record_purchase("C1", amount="1", idempotency_key="p1", timestamp=cet)
    assert events(client, "purchase")[0]["timestamp"] == when.timestamp()


def test_a_repeated_purchase_key_is_a_no_op_and_other_arguments_are_refused(client: Client):
    client.record_purchase("C1", amount="10", idempotency_key="p1")
    client.record_purchase("C1", amount=Decimal("10.00"), idempotency_key="p1")
    assert profile(client, "C1")["monetary"] == pytest.approx(10.0)  # not counted twice
    with pytest.raises(InputError) as info:
        client.record_purchase("C1", amount="11", idempotency_key="p1")
    assert info.value.field == "idempotency_key"
    with pytest.raises(InputError):
        client.record_purchase("C2", amount="10", idempotency_key="p1")
    assert len(events(client, "purchase")) == 1


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"amount": 10.5}, "amount"),
    ({"amount": "0"}, "amount"),
    ({"amount": "-3"}, "amount"),
    ({"amount": "1.00001"}, "amount"),
    ({"amount": "abc"}, "amount"),
    ({"amount": "NaN"}, "amount"),
    ({"quantity": 0}, "quantity"),
    ({"quantity": True}, "quantity"),
    ({"quantity": 2.0}, "quantity"),
    ({"timestamp": datetime(2023, 1, 1)}, "timestamp"),
    ({"timestamp": 1_700_000_000}, "timestamp"),
    ({"idempotency_key": ""}, "idempotency_key"),
    ({"customer_id": ""}, "customer_id"),
])
def test_bad_purchases_name_the_field_and_change_nothing(client: Client, kwargs, field):
    args = {"customer_id": "C1", "amount": "5", "idempotency_key": "p"} | kwargs
    with pytest.raises(InputError) as info:
        client.record_purchase(args.pop("customer_id"), **args)
    assert info.value.field == field
    assert profile(client, "C1") == {} and events(client, "purchase") == []


def test_a_card_number_as_purchase_key_is_refused(client: Client):
    with pytest.raises(PaymentDataError):
        client.record_purchase("C1", amount="5", idempotency_key="5555-5555-5555-4444")


def test_a_failing_step_leaves_neither_purchase_nor_profile_nor_event(client: Client):
    with client._store.transaction() as tx:
        tx.execute("CREATE TRIGGER boom BEFORE INSERT ON outbox WHEN NEW.type = 'purchase' "
                   "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    with pytest.raises(StateError):
        client.record_purchase("C1", amount="5", idempotency_key="p")
    with client._store.transaction() as tx:
        assert tx.execute("SELECT COUNT(*) FROM purchases")[0][0] == 0
    assert profile(client, "C1") == {} and events(client, "purchase") == []


# -- the outbox view ------------------------------------------------------------------------------


def _ack_through(client: Client, seq: int) -> None:
    with client._store.transaction() as tx:
        tx.execute("UPDATE outbox SET acked = 1 WHERE seq <= ?", (seq,))


def _dead_letter(client: Client, seq: int, reason: str) -> None:
    # What the sync client does with an event the hub rejected: move it, with the reason.
    with client._store.transaction() as tx:
        tx.execute("INSERT INTO dead_letter(seq, event_id, type, created_at, payload, reason, dead_at) "
                   "SELECT seq, event_id, type, created_at, payload, ?, ? FROM outbox WHERE seq = ?",
                   (reason, tx.now, seq))
        tx.execute("DELETE FROM outbox WHERE seq = ?", (seq,))


def test_pending_acked_and_dead_lettered_events_are_counted_by_type(client: Client):
    client.award_points("C1", 10, idempotency_key="a", reason="r")       # 1 points
    client.record_purchase("C1", amount="5", idempotency_key="p")         # 2 purchase
    decision = client.decide("C1", channel="pos")                         # 3 decision
    client.record_response(decision.decision_id, decision.offers[0].offer_id, "accepted")  # 4 response
    client.award_points("C1", 5, idempotency_key="b", reason="r")        # 5 points
    assert client.pending_events() == 5
    _ack_through(client, 2)
    _dead_letter(client, 4, "unknown offer on the hub")
    assert client.pending_events() == 2
    summary = _records.outbox_summary(client._store)
    assert (summary["pending"], summary["acked"], summary["dead_lettered"]) == (2, 2, 1)
    assert summary["by_type"] == {
        "decision": {"pending": 1, "acked": 0, "dead_lettered": 0},
        "points": {"pending": 1, "acked": 1, "dead_lettered": 0},
        "purchase": {"pending": 0, "acked": 1, "dead_lettered": 0},
        "response": {"pending": 0, "acked": 0, "dead_lettered": 1},
    }
    assert summary["compacted_decisions"] == 0 and summary["payload_bytes"] > 0
    listed = _records.list_events(client._store, status="all", limit=10)
    assert [(e["seq"], e["type"], e["status"]) for e in listed] == [
        (1, "points", "acked"), (2, "purchase", "acked"), (3, "decision", "pending"),
        (4, "response", "dead_lettered"), (5, "points", "pending")]
    assert listed[3]["reason"] == "unknown offer on the hub" and listed[3]["payload"]["outcome"] == "accepted"
    assert [e["seq"] for e in _records.list_events(client._store, status="pending", limit=1)] == [3]
    assert [e["seq"] for e in _records.list_events(client._store, status="dead_lettered")] == [4]


@pytest.mark.parametrize(("kwargs", "field"), [({"status": "done"}, "status"), ({"limit": 0}, "limit")])
def test_list_events_validates(client: Client, kwargs, field):
    with pytest.raises(InputError) as info:
        _records.list_events(client._store, **kwargs)
    assert info.value.field == field


def _decision_event(client: Client, n: int) -> int:
    with client._store.transaction() as tx:
        return tx.append_event("decision", {"decision_id": f"D{n}", "customer_id": "C1", "channel": "pos",
                                            "bundle_name": "b", "bundle_version": 1, "strategy": "s",
                                            "offers": [{"offer_id": "O", "pad": "x" * 900}]}).seq


def _payloads(client: Client) -> dict[int, tuple[str, str, int]]:
    with client._store.transaction() as tx:
        rows = tx.execute("SELECT seq, type, payload, acked FROM outbox ORDER BY seq")
    return {seq: (kind, payload, acked) for seq, kind, payload, acked in rows}


def test_compaction_drops_acked_decisions_first_then_blanks_unacked_ones_never_money(client: Client):
    seqs = []
    for n in range(6):
        seqs.append(_decision_event(client, n))
        client.award_points("C1", 1, idempotency_key=f"a{n}", reason="r")
    _ack_through(client, seqs[2])  # decisions 0, 1, 2 (and awards 0, 1) are at the hub
    before = _payloads(client)
    size = sum(len(p) for _, p, _ in before.values())
    money = {s: v for s, v in before.items() if v[0] != "decision"}

    compacted = _records.compact_decisions(client._store, budget_bytes=size - 3500)
    after = _payloads(client)
    assert compacted == 4
    # Oldest acked decisions deleted first (they are at the hub) ...
    assert seqs[0] not in after and seqs[1] not in after and seqs[2] not in after
    # ... then the oldest unacked one keeps its row (seq stays gapless for the pusher) but
    # loses its payload; the younger ones are untouched.
    assert after[seqs[3]] == ("decision", _records.COMPACTED_PAYLOAD, 0)
    assert after[seqs[4]] == before[seqs[4]] and after[seqs[5]] == before[seqs[5]]
    # Points events are never touched.
    assert {s: v for s, v in after.items() if v[0] != "decision"} == money
    pending = sorted(s for s, v in after.items() if not v[2])
    assert pending == list(range(pending[0], pending[-1] + 1))
    assert sum(len(p) for _, p, _ in after.values()) <= size - 3500
    assert _records.outbox_summary(client._store)["compacted_decisions"] == 4

    assert _records.compact_decisions(client._store, budget_bytes=10**9) == 0
    # A budget nothing can meet compacts every decision but still leaves money alone.
    assert _records.compact_decisions(client._store, budget_bytes=0) == 2
    assert {s: v for s, v in _payloads(client).items() if v[0] != "decision"} == money
    assert _records.outbox_summary(client._store)["compacted_decisions"] == 6
    assert _records.compact_decisions(client._store, budget_bytes=0) == 0


def test_compaction_budget_is_validated(client: Client):
    with pytest.raises(InputError) as info:
        _records.compact_decisions(client._store, budget_bytes=-1)
    assert info.value.field == "budget_bytes"
