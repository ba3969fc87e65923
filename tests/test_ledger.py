"""The loyalty ledger on a real device state database (docs/ledger.md): FIFO lots, lazy expiry,
exact reversal, idempotency, offline balance over the central one, crash safety."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nbo.sdk import (
    Client,
    InputError,
    LedgerEntry,
    LedgerError,
    ManualClock,
    NotFoundError,
    PaymentDataError,
    StateError,
    _ledger,
)

DAY = 86_400.0
T0 = 1_700_000_000.0


@pytest.fixture()
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture()
def client(tmp_path: Path, clock: ManualClock) -> Client:
    c = Client.open(tmp_path / "state", device_id="pos-1", trusted_keys=[], clock=clock)
    yield c
    c.close()


def at(clock: ManualClock, days: float) -> datetime:
    return datetime.fromtimestamp(clock.now() + days * DAY, tz=UTC)


def outbox(client: Client) -> list[tuple[int, str, dict]]:
    with client._store.transaction() as tx:
        rows = tx.execute("SELECT seq, type, payload FROM outbox ORDER BY seq")
    return [(seq, kind, json.loads(payload)) for seq, kind, payload in rows]


def ledger_rows(client: Client) -> list[tuple]:
    with client._store.transaction() as tx:
        return tx.execute("SELECT entry_id, kind, points, seq FROM ledger_entries ORDER BY seq")


# -- award, balance, events ---------------------------------------------------------------------


def test_award_writes_entry_and_points_event_with_the_contract_payload(client: Client, clock: ManualClock):
    entry = client.award_points("C1", 120, idempotency_key="sale-1", reason="purchase", expires_at=at(clock, 30))
    assert isinstance(entry, LedgerEntry)
    assert (entry.customer_id, entry.kind, entry.points, entry.reason) == ("C1", "award", 120, "purchase")
    assert entry.created_at == T0 and entry.expires_at == T0 + 30 * DAY and entry.reverses is None
    assert client.points_balance("C1") == 120
    [(seq, kind, payload)] = outbox(client)
    assert kind == "points" and seq == 1
    assert payload == {
        "entry_id": entry.entry_id, "customer_id": "C1", "kind": "award", "points": 120, "reason": "purchase",
        "idempotency_key": "sale-1", "created_at": T0, "expires_at": T0 + 30 * DAY, "reverses": None,
    }
    # The entry remembers the outbox seq of its event (what the offline balance is built on).
    assert ledger_rows(client) == [(entry.entry_id, "award", 120, 1)]


def test_balances_are_per_customer(client: Client):
    client.award_points("C1", 10, idempotency_key="a", reason="r")
    client.award_points("C2", 7, idempotency_key="b", reason="r")
    assert (client.points_balance("C1"), client.points_balance("C2"), client.points_balance("nobody")) == (10, 7, 0)


def test_repeated_key_returns_the_first_entry_and_writes_nothing(client: Client, clock: ManualClock):
    first = client.award_points("C1", 50, idempotency_key="k", reason="r")
    clock.advance(60)
    again = client.award_points("C1", 50, idempotency_key="k", reason="r")
    assert again == first
    redeem = client.redeem_points("C1", 20, idempotency_key="k2", reason="r")
    # A replayed redeem returns its first result even though the balance has changed since.
    assert client.redeem_points("C1", 20, idempotency_key="k2", reason="r") == redeem
    assert client.points_balance("C1") == 30
    assert len(outbox(client)) == 2


@pytest.mark.parametrize(("call", "differs"), [
    (lambda c: c.award_points("C1", 51, idempotency_key="k", reason="r"), "(points 50 then, 51 now)"),
    (lambda c: c.award_points("C2", 50, idempotency_key="k", reason="r"), "(customer_id 'C1' then, 'C2' now)"),
    (lambda c: c.award_points("C1", 50, idempotency_key="k", reason="other"), "(reason 'r' then, 'other' now)"),
    (lambda c: c.award_points("C1", 50, idempotency_key="k", reason="r", expires_at=datetime(2030, 1, 1, tzinfo=UTC)),
     "(expires_at None then, 1893456000.0 now)"),
    (lambda c: c.redeem_points("C1", 50, idempotency_key="k", reason="r"),
     "(call 'award' then, 'redeem' now; points 50 then, -50 now)"),
])
def test_same_key_with_different_arguments_is_refused(client: Client, call, differs):
    client.award_points("C1", 50, idempotency_key="k", reason="r")
    # the message names the key and each argument that differs
    with pytest.raises(LedgerError) as info:
        call(client)
    assert str(info.value) == f"idempotency key 'k' was already used with different arguments {differs}"
    assert client.points_balance("C1") == 50 and len(outbox(client)) == 1


def test_key_reuse_across_operations_is_refused(client: Client):
    award = client.award_points("C1", 50, idempotency_key="a", reason="r")
    client.reverse_points(award.entry_id, idempotency_key="rev", reason="oops")
    with pytest.raises(LedgerError, match=r"key 'rev' was already used with different arguments \(reason 'oops' then"):
        client.reverse_points(award.entry_id, idempotency_key="rev", reason="another reason")
    with pytest.raises(LedgerError, match="different arguments"):
        client.award_points("C1", 50, idempotency_key="rev", reason="r")


# -- redeem and FIFO lots ---------------------------------------------------------------------------


def test_redeem_beyond_the_balance_is_refused_and_changes_nothing(client: Client):
    client.award_points("C1", 100, idempotency_key="a", reason="r")
    with pytest.raises(LedgerError, match="available balance is 100"):
        client.redeem_points("C1", 101, idempotency_key="r1", reason="r")
    with pytest.raises(LedgerError):
        client.redeem_points("C2", 1, idempotency_key="r2", reason="r")
    assert client.points_balance("C1") == 100 and len(outbox(client)) == 1
    # The refused key is free: nothing was recorded under it.
    assert client.redeem_points("C1", 100, idempotency_key="r1", reason="r").points == -100
    assert client.points_balance("C1") == 0


def test_redemptions_consume_the_oldest_expiring_lot_first(client: Client, clock: ManualClock):
    late = client.award_points("C1", 100, idempotency_key="late", reason="r", expires_at=at(clock, 10))
    soon = client.award_points("C1", 100, idempotency_key="soon", reason="r", expires_at=at(clock, 5))
    never = client.award_points("C1", 100, idempotency_key="never", reason="r")
    lots = _ledger.available_lots(_ledger.entries(client._store, "C1"), now=clock.now())
    assert [lot.entry_id for lot in lots] == [soon.entry_id, late.entry_id, never.entry_id]
    client.redeem_points("C1", 150, idempotency_key="r", reason="r")  # all of `soon`, 50 of `late`
    clock.advance(6 * DAY)
    assert client.points_balance("C1") == 150  # `soon` was used up: nothing left to expire
    clock.advance(5 * DAY)
    assert client.points_balance("C1") == 100  # the 50 left on `late` expired
    expiries = [e for e in _ledger.entries(client._store, "C1") if e.kind == "expire"]
    assert [(e.points, e.reverses, e.idempotency_key) for e in expiries] == [
        (-50, late.entry_id, f"expire:{late.entry_id}")]
    assert expiries[0].created_at == clock.now()
    assert client.points_balance("C1") == 100  # an expiry is written once
    assert len([e for e in _ledger.entries(client._store, "C1") if e.kind == "expire"]) == 1
    assert [p["kind"] for _, _, p in outbox(client)] == ["award", "award", "award", "redeem", "expire"]
    del never


def test_expired_points_cannot_be_redeemed_and_expiry_is_written_on_redeem(client: Client, clock: ManualClock):
    client.award_points("C1", 100, idempotency_key="a", reason="r", expires_at=at(clock, 1))
    client.award_points("C1", 30, idempotency_key="b", reason="r")
    clock.advance(2 * DAY)
    with pytest.raises(LedgerError):
        client.redeem_points("C1", 31, idempotency_key="r", reason="r")
    # The refused redeem rolled back its expiry write too; the next touch writes it.
    assert [e.kind for e in _ledger.entries(client._store, "C1")] == ["award", "award"]
    client.redeem_points("C1", 30, idempotency_key="r2", reason="r")
    assert [e.kind for e in _ledger.entries(client._store, "C1")] == ["award", "award", "expire", "redeem"]
    assert client.points_balance("C1") == 0


def test_a_lot_expiring_exactly_now_is_gone(client: Client, clock: ManualClock):
    client.award_points("C1", 10, idempotency_key="a", reason="r", expires_at=at(clock, 1))
    clock.advance(1 * DAY)
    assert client.points_balance("C1") == 0


# -- reversal ---------------------------------------------------------------------------------------


def test_reversing_an_award_removes_exactly_its_points_once(client: Client):
    award = client.award_points("C1", 80, idempotency_key="a", reason="r")
    client.award_points("C1", 20, idempotency_key="b", reason="r")
    rev = client.reverse_points(award.entry_id, idempotency_key="rev", reason="refund")
    assert (rev.kind, rev.points, rev.reverses, rev.customer_id) == ("reverse", -80, award.entry_id, "C1")
    assert client.points_balance("C1") == 20
    assert client.reverse_points(award.entry_id, idempotency_key="rev", reason="refund") == rev
    with pytest.raises(LedgerError, match="already been reversed"):
        client.reverse_points(award.entry_id, idempotency_key="rev-again", reason="refund")
    with pytest.raises(LedgerError, match="cannot be reversed"):
        client.reverse_points(rev.entry_id, idempotency_key="rev-rev", reason="undo")
    assert client.points_balance("C1") == 20


def test_reversing_a_spent_award_is_refused_until_the_redemption_is_reversed(client: Client):
    award = client.award_points("C1", 100, idempotency_key="a", reason="r")
    redeem = client.redeem_points("C1", 70, idempotency_key="x", reason="r")
    with pytest.raises(LedgerError, match="balance negative"):
        client.reverse_points(award.entry_id, idempotency_key="rev", reason="refund")
    back = client.reverse_points(redeem.entry_id, idempotency_key="rev-x", reason="cancelled")
    assert (back.points, back.reverses) == (70, redeem.entry_id)
    assert client.points_balance("C1") == 100
    client.reverse_points(award.entry_id, idempotency_key="rev", reason="refund")
    assert client.points_balance("C1") == 0


def test_reversed_redemption_returns_points_to_their_lot_with_its_expiry(client: Client, clock: ManualClock):
    client.award_points("C1", 100, idempotency_key="a", reason="r", expires_at=at(clock, 10))
    redeem = client.redeem_points("C1", 60, idempotency_key="x", reason="r")
    client.reverse_points(redeem.entry_id, idempotency_key="rev", reason="r")
    assert client.points_balance("C1") == 100
    clock.advance(11 * DAY)
    assert client.points_balance("C1") == 0  # the given-back points expire with their lot


def test_reversed_redemption_from_an_expired_lot_comes_back_as_a_lasting_credit(client: Client, clock: ManualClock):
    client.award_points("C1", 100, idempotency_key="a", reason="r", expires_at=at(clock, 10))
    redeem = client.redeem_points("C1", 60, idempotency_key="x", reason="r")
    clock.advance(11 * DAY)
    assert client.points_balance("C1") == 0  # the other 40 expired
    client.reverse_points(redeem.entry_id, idempotency_key="rev", reason="r")
    assert client.points_balance("C1") == 60
    clock.advance(100 * DAY)
    assert client.points_balance("C1") == 60


def test_an_expired_award_cannot_be_reversed(client: Client, clock: ManualClock):
    award = client.award_points("C1", 100, idempotency_key="a", reason="r", expires_at=at(clock, 1))
    clock.advance(2 * DAY)
    with pytest.raises(LedgerError, match="expired"):
        client.reverse_points(award.entry_id, idempotency_key="rev", reason="r")


def test_an_expiry_entry_cannot_be_reversed(client: Client, clock: ManualClock):
    client.award_points("C1", 100, idempotency_key="a", reason="r", expires_at=at(clock, 1))
    clock.advance(2 * DAY)
    client.points_balance("C1")
    [expire] = [e for e in _ledger.entries(client._store, "C1") if e.kind == "expire"]
    with pytest.raises(LedgerError, match="cannot be reversed"):
        client.reverse_points(expire.entry_id, idempotency_key="rev", reason="r")


def test_reversing_an_unknown_entry_names_the_field(client: Client):
    with pytest.raises(NotFoundError) as info:
        client.reverse_points("no-such-entry", idempotency_key="rev", reason="r")
    assert info.value.field == "entry_id"  # type: ignore[attr-defined]


# -- inputs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"points": 0}, "points"),
    ({"points": -5}, "points"),
    ({"points": 10**9 + 1}, "points"),
    ({"points": True}, "points"),
    ({"points": 1.5}, "points"),
    ({"points": "10"}, "points"),
    ({"customer_id": ""}, "customer_id"),
    ({"customer_id": "x" * 129}, "customer_id"),
    ({"customer_id": 42}, "customer_id"),
    ({"customer_id": "C\x001"}, "customer_id"),
    ({"idempotency_key": ""}, "idempotency_key"),
    ({"idempotency_key": None}, "idempotency_key"),
    ({"idempotency_key": "expire:abc"}, "idempotency_key"),
    ({"reason": ""}, "reason"),
    ({"reason": "x" * 201}, "reason"),
    ({"reason": None}, "reason"),
    ({"expires_at": datetime(2030, 1, 1)}, "expires_at"),  # naive: ambiguous
    ({"expires_at": 1_900_000_000.0}, "expires_at"),
    ({"expires_at": datetime(2020, 1, 1, tzinfo=UTC)}, "expires_at"),  # already past
])
def test_bad_award_arguments_name_the_field_and_change_nothing(client: Client, kwargs, field):
    args = {"customer_id": "C1", "points": 10, "idempotency_key": "k", "reason": "r", "expires_at": None} | kwargs
    customer = args.pop("customer_id")
    points = args.pop("points")
    with pytest.raises(InputError) as info:
        client.award_points(customer, points, **args)
    assert info.value.field == field
    assert outbox(client) == [] and ledger_rows(client) == []


def test_the_largest_award_and_a_200_character_reason_are_fine(client: Client):
    client.award_points("C1", 10**9, idempotency_key="k", reason="x" * 200)
    assert client.points_balance("C1") == 10**9


def test_a_card_number_pasted_into_a_reason_is_refused_and_never_stored(client: Client, tmp_path: Path):
    with pytest.raises(PaymentDataError) as info:
        client.award_points("C1", 10, idempotency_key="k", reason="paid with 4111 1111 1111 1111")
    assert info.value.field == "reason" and "4111" not in str(info.value)
    assert outbox(client) == []


# -- offline balance over the central one ----------------------------------------------------------


def test_offline_balance_is_central_plus_entries_the_hub_had_not_seen(client: Client):
    client.award_points("C1", 100, idempotency_key="a", reason="r")  # seq 1
    client.award_points("C1", 50, idempotency_key="b", reason="r")   # seq 2
    # The hub acknowledged seq 1 and says C1 has 130 (another terminal redeemed 70, awarded 100).
    with client._store.transaction() as tx:
        _ledger.apply_central_balances(tx, {"C1": 130}, acked_through=1)
    assert client.points_balance("C1") == 130 + 50
    client.redeem_points("C1", 170, idempotency_key="x", reason="r")  # checked against 180
    assert client.points_balance("C1") == 10
    with pytest.raises(LedgerError):
        client.redeem_points("C1", 11, idempotency_key="y", reason="r")
    # A later answer covering everything replaces it; a late answer to an older batch does not.
    with client._store.transaction() as tx:
        _ledger.apply_central_balances(tx, {"C1": 12}, acked_through=3)
    with client._store.transaction() as tx:
        _ledger.apply_central_balances(tx, {"C1": 999}, acked_through=2)
    assert client.points_balance("C1") == 12


def test_central_balance_for_a_customer_with_no_local_entries(client: Client):
    with client._store.transaction() as tx:
        _ledger.apply_central_balances(tx, {"C9": 40}, acked_through=0)
    assert client.points_balance("C9") == 40
    client.redeem_points("C9", 40, idempotency_key="x", reason="r")
    assert client.points_balance("C9") == 0


def test_unsynced_lots_expire_locally_synced_ones_are_the_hubs(client: Client, clock: ManualClock):
    client.award_points("C1", 100, idempotency_key="a", reason="r", expires_at=at(clock, 1))  # seq 1
    client.award_points("C1", 10, idempotency_key="b", reason="r", expires_at=at(clock, 1))   # seq 2
    with client._store.transaction() as tx:
        _ledger.apply_central_balances(tx, {"C1": 100}, acked_through=1)
    clock.advance(2 * DAY)
    # Lot b (unsynced) expires here; lot a is inside the central balance: the hub expires it
    # and the next central balance says so.
    assert client.points_balance("C1") == 100
    with client._store.transaction() as tx:
        _ledger.apply_central_balances(tx, {"C1": 0}, acked_through=3)
    assert client.points_balance("C1") == 0


def test_apply_central_balances_validates(client: Client):
    # A balance it cannot apply is returned with the reason (the sync client dead-letters it), never
    # raised: one odd record must not fail the answer that acknowledges every event (issue 18).
    with client._store.transaction() as tx:
        assert [c for c, _ in _ledger.apply_central_balances(tx, {"": 1, "C2": 4}, acked_through=1)] == [""]
        refused = _ledger.apply_central_balances(tx, {"C1": 1.5}, acked_through=1)  # type: ignore[dict-item]
        assert [c for c, _ in refused] == ["C1"] and "balance" in refused[0][1]
        refused = _ledger.apply_central_balances(tx, {"C1": 1}, acked_through=-1)
        assert [c for c, _ in refused] == ["C1"] and "acked_through" in refused[0][1]
        assert tx.execute("SELECT customer_id, balance FROM central_balances") == [("C2", 4)]


# -- the pure core: the hub folds the same events to the same balance ------------------------------


def test_the_points_events_fold_to_the_device_balance(client: Client, clock: ManualClock):
    a = client.award_points("C1", 100, idempotency_key="a", reason="r", expires_at=at(clock, 3))
    client.award_points("C1", 40, idempotency_key="b", reason="r")
    x = client.redeem_points("C1", 30, idempotency_key="x", reason="r")
    clock.advance(4 * DAY)
    client.reverse_points(x.entry_id, idempotency_key="rx", reason="r")
    device_balance = client.points_balance("C1")
    replayed = [_ledger.entry_from_payload(p) for _, kind, p in outbox(client) if kind == "points"]
    assert replayed == _ledger.entries(client._store, "C1")
    assert _ledger.ledger_balance(replayed, now=clock.now()) == device_balance == 40 + 30
    # Without the expiry entry (a hub that has not received it yet) the pure rule still takes
    # the expired remainder off: the same balance.
    assert _ledger.ledger_balance([e for e in replayed if e.kind != "expire"], now=clock.now()) == device_balance
    del a


@pytest.mark.parametrize(("change", "field"), [
    ({"kind": "gift"}, "kind"),
    ({"points": 0}, "points"),
    ({"points": -5}, "points"),  # an award is positive
    ({"points": "5"}, "points"),
    ({"created_at": "yesterday"}, "created_at"),
    ({"expires_at": "never"}, "expires_at"),
    ({"reverses": "E1"}, "reverses"),  # an award reverses nothing
    ({"entry_id": ""}, "entry_id"),
    ({"customer_id": None}, "customer_id"),
    ({"reason": ""}, "reason"),
])
def test_entry_from_payload_names_the_bad_field(change, field):
    payload = {"entry_id": "E1", "customer_id": "C1", "kind": "award", "points": 5, "reason": "r",
               "idempotency_key": "k", "created_at": T0, "expires_at": None, "reverses": None}
    with pytest.raises(InputError) as info:
        _ledger.entry_from_payload(payload | change)
    assert info.value.field == field


# -- crash safety ----------------------------------------------------------------------------------


def test_a_failing_step_inside_the_transaction_leaves_neither_entry_nor_event(client: Client):
    client.award_points("C1", 10, idempotency_key="ok-1", reason="r")
    # A real failure inside the same transaction, after the event was appended: the database
    # itself refuses the ledger row (as a full disk or a constraint would).
    with client._store.transaction() as tx:
        tx.execute("CREATE TRIGGER boom BEFORE INSERT ON ledger_entries WHEN NEW.customer_id = 'C-boom' "
                   "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
    with pytest.raises(StateError):
        client.award_points("C-boom", 10, idempotency_key="boom", reason="r")
    assert client.points_balance("C-boom") == 0
    assert [seq for seq, _, _ in outbox(client)] == [1]
    # The seq counter rolled back with it: the next event is 2, no gap.
    client.award_points("C1", 10, idempotency_key="ok-2", reason="r")
    assert [seq for seq, _, _ in outbox(client)] == [1, 2]
    assert [seq for *_, seq in ledger_rows(client)] == [1, 2]


_AWARD_LOOP = """
import sys
from nbo.sdk import Client
client = Client.open(sys.argv[1], device_id="pos-1", trusted_keys=[])
i = 0
while True:
    entry = client.award_points("C%d" % (i % 3), 1 + i % 5, idempotency_key="k%d" % i, reason="loop")
    print(i, flush=True)
    i += 1
"""


@pytest.mark.slow
def test_kill_9_while_awarding_loses_no_acknowledged_award_and_pairs_every_entry_with_its_event(tmp_path: Path):
    state = tmp_path / "state"
    rng = random.Random(5)
    for round_no in range(5):
        proc = subprocess.Popen([sys.executable, "-c", _AWARD_LOOP, str(state)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        acknowledged = -1
        deadline = time.monotonic() + 20
        while acknowledged < 20 * (round_no + 1) and time.monotonic() < deadline:
            acknowledged = int(proc.stdout.readline())
        time.sleep(rng.uniform(0, 0.05))  # kill at a random point of a later award

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        with Client.open(state, device_id="pos-1", trusted_keys=[]) as client:
            with client._store.transaction() as tx:
                entries = tx.execute("SELECT entry_id, seq, points, idempotency_key FROM ledger_entries ORDER BY seq")
                events = tx.execute("SELECT seq, payload FROM outbox ORDER BY seq")
            by_seq = {seq: json.loads(payload) for seq, payload in events}
            assert list(by_seq) == list(range(1, len(by_seq) + 1))  # gapless
            assert [(e[1], e[0]) for e in entries] == [(s, p["entry_id"]) for s, p in by_seq.items()]
            # Every award the process printed as returned (fsync'd) is there.
            keys = {e[3] for e in entries}
            assert all(f"k{i}" in keys for i in range(acknowledged + 1))
            balance = sum(client.points_balance(f"C{n}") for n in range(3))
            assert balance == sum(e[2] for e in entries)
        # Restarting replays keys from 0: every already-written award is returned, not repeated.
