"""The hub store, one suite run against SQLite and against PostgreSQL (NBO_TEST_POSTGRES)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from nbo.gateway import HubStore
from nbo.gateway._db import translate_placeholders
from nbo.gateway._hub import IncomingEvent
from nbo.sdk import InputError, ManualClock, NotFoundError
from nbo.sdk.core import EventConflictError
from sync_helpers import BACKENDS, ev, hub_backend, payment, points, response


@pytest.fixture(params=BACKENDS)
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HubStore]:
    with hub_backend(request.param, tmp_path, clock=ManualClock(1_700_000_100.0)) as (store, _, _):
        yield store


def test_ingest_stores_events_and_acks_contiguous(hub: HubStore) -> None:
    batch = [ev(1, "response", response("c1")), ev(2, "payment", payment("c2")), ev(3, "points", points("c1", 50))]
    result = hub.ingest("dev-1", batch)
    assert result.acked_through == 3
    assert result.stored == 3 and result.duplicates == 0 and result.rejected == ()
    assert result.balances == {"c1": 50, "c2": 0}
    stored = hub.events(device_id="dev-1")
    assert [e["seq"] for e in stored] == [1, 2, 3]
    assert [e["event_id"] for e in stored] == [e.event_id for e in batch]
    assert json.loads(stored[0]["payload"]) == response("c1")
    assert hub.acked_through("dev-1") == 3
    assert hub.acked_through("unknown") == 0


def test_replaying_a_batch_changes_nothing(hub: HubStore) -> None:
    batch = [ev(1, "points", points("c1", 10)), ev(2, "points", points("c1", -4)), ev(3, "decision", {})]
    first = hub.ingest("dev-1", batch)
    before = (hub.events(), hub.ledger("c1"), hub.balance("c1"))
    again = hub.ingest("dev-1", batch)
    assert again.stored == 0 and again.duplicates == 3
    assert again.acked_through == first.acked_through == 3
    assert again.rejected == first.rejected  # the invalid decision is reported again for the dead letter
    assert (hub.events(), hub.ledger("c1"), hub.balance("c1")) == before
    assert again.balances == {"c1": 6}


def test_conflicting_duplicate_is_an_error_and_stores_nothing(hub: HubStore) -> None:
    hub.ingest("dev-1", [ev(1, "response", response("c1"))])
    with pytest.raises(EventConflictError, match="different event_id") as info:
        hub.ingest("dev-1", [ev(2, "points", points("c9", 5)), ev(1, "response", response("c1"))][::-1])
    assert info.value.field == "events[0].event_id"
    assert [e["seq"] for e in hub.events()] == [1]
    assert hub.balance("c9") == 0
    assert hub.acked_through("dev-1") == 1


def test_same_seq_on_another_device_is_independent(hub: HubStore) -> None:
    hub.ingest("dev-1", [ev(1, "points", points("c1", 10))])
    result = hub.ingest("dev-2", [ev(1, "points", points("c1", 7))])
    assert result.acked_through == 1 and result.balances == {"c1": 17}


def test_acked_through_waits_for_a_gap_then_jumps(hub: HubStore) -> None:
    assert hub.ingest("dev-1", [ev(1, "response", response("c"))]).acked_through == 1
    assert hub.ingest("dev-1", [ev(3, "response", response("c")), ev(4, "response", response("c"))]).acked_through == 1
    assert hub.ingest("dev-1", [ev(2, "response", response("c"))]).acked_through == 4


@pytest.mark.parametrize(
    ("type_", "payload", "reason"),
    [
        ("gossip", {"customer_id": "c"}, "unknown event type"),
        ("points", {"customer_id": "c"}, "payload.entry_id"),
        ("points", {**points("c", 5), "kind": "gift"}, "payload.kind"),
        ("points", {**points("c", 5), "kind": "redeem"}, "negative"),
        ("points", {**points("c", 5), "points": 2.5}, "payload.points"),
        ("payment", {**payment("c"), "amount": 12.5}, "payload.amount"),
        ("payment", {**payment("c"), "currency": "euro"}, "payload.currency"),
        ("response", {**response("c"), "outcome": "maybe"}, "payload.outcome"),
        ("purchase", {"purchase_id": "p", "customer_id": "c"}, "payload.idempotency_key"),
    ],
)
def test_invalid_events_are_rejected_but_acked(hub: HubStore, type_: str, payload: dict[str, object],
                                               reason: str) -> None:
    batch = [ev(1, "points", points("c", 5)), ev(2, type_, payload), ev(3, "response", response("c"))]
    result = hub.ingest("dev-1", batch)
    assert result.acked_through == 3
    assert [(r.seq, r.event_id) for r in result.rejected] == [(2, batch[1].event_id)]
    assert reason in result.rejected[0].reason
    assert [e["status"] for e in hub.events()] == ["ok", "rejected", "ok"]
    assert hub.balance("c") == 5  # the rejected points payload never reached the ledger


def test_malformed_json_and_non_object_payloads_are_rejected(hub: HubStore) -> None:
    batch = [
        IncomingEvent(seq=1, event_id="e1", type="points", created_at=1.0, payload="{not json"),
        IncomingEvent(seq=2, event_id="e2", type="points", created_at=1.0, payload="[1, 2]"),
        IncomingEvent(seq=3, event_id="e3", type="points", created_at=float("nan"), payload=json.dumps(points("c", 1))),
    ]
    result = hub.ingest("dev-1", batch)
    assert [r.seq for r in result.rejected] == [1, 2, 3]
    assert result.acked_through == 3


@pytest.mark.parametrize(
    ("events", "field"),
    [
        ([IncomingEvent(seq=0, event_id="e", type="response", created_at=1.0, payload="{}")], "events[0].seq"),
        ([ev(2, "response", {}), ev(2, "response", {})], "events[1].seq"),
        ([ev(3, "response", {}), ev(2, "response", {})], "events[1].seq"),
        ([IncomingEvent(seq=1, event_id="", type="response", created_at=1.0, payload="{}")], "events[0].event_id"),
    ],
)
def test_malformed_batches_are_refused_whole(hub: HubStore, events: list[IncomingEvent], field: str) -> None:
    with pytest.raises(InputError) as info:
        hub.ingest("dev-1", events)
    assert info.value.field == field
    assert hub.events() == []


def test_empty_device_id_is_refused(hub: HubStore) -> None:
    with pytest.raises(InputError) as info:
        hub.ingest("", [])
    assert info.value.field == "device_id"


def test_points_from_many_terminals_add_up_and_overredemption_is_flagged(hub: HubStore) -> None:
    hub.ingest("dev-1", [ev(1, "points", points("c1", 100))])
    # Two terminals, both offline, each redeem 80 of the 100 they believed was there.
    r2 = hub.ingest("dev-2", [ev(1, "points", points("c1", -80))])
    r3 = hub.ingest("dev-3", [ev(1, "points", points("c1", -80))])
    assert r2.balances == {"c1": 20} and r2.flagged == ()
    assert r3.balances == {"c1": -60} and len(r3.flagged) == 1
    [flag] = hub.flagged()
    assert flag["customer_id"] == "c1" and flag["shortfall"] == 60 and flag["flag"] == "over_redemption"
    assert flag["device_id"] == "dev-3"
    assert sum(e.points for e in hub.ledger("c1")) == -60


def test_same_entry_in_two_events_counts_once(hub: HubStore) -> None:
    entry = points("c1", 30)
    hub.ingest("dev-1", [ev(1, "points", entry), ev(2, "points", entry)])
    assert hub.balance("c1") == 30
    assert len(hub.ledger("c1")) == 1


def test_reverse_entries_are_summed(hub: HubStore) -> None:
    award = points("c1", 40)
    hub.ingest("dev-1", [ev(1, "points", award),
                         ev(2, "points", points("c1", -40, kind="reverse", reverses=award["entry_id"]))])
    assert hub.balance("c1") == 0


def test_large_batch(hub: HubStore) -> None:
    batch = [ev(i, "points", points(f"c{i % 50}", 1)) for i in range(1, 2001)]
    result = hub.ingest("dev-1", batch)
    assert result.acked_through == 2000
    assert sum(result.balances.values()) == 2000 and len(result.balances) == 50


def test_concurrent_pushes_of_the_same_batch_store_it_once(hub: HubStore) -> None:
    batch = [ev(i, "points", points("c1", 1)) for i in range(1, 201)]
    errors: list[BaseException] = []

    def push() -> None:
        try:
            hub.ingest("dev-1", batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=push) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert hub.balance("c1") == 200
    assert len(hub.events()) == 200


def test_bundle_registry(hub: HubStore) -> None:
    assert hub.latest_bundle() is None
    data = b"PK\x03\x04 pretend zip " * 1000
    rec = hub.register_bundle(data, name="retail", version=1)
    assert rec.sha256 == hashlib.sha256(data).hexdigest() and rec.size == len(data)
    assert rec.path.read_bytes() == data
    assert hub.register_bundle(data, name="retail", version=1) == rec  # idempotent
    with pytest.raises(InputError, match="other content"):
        hub.register_bundle(data + b"x", name="retail", version=1)
    hub.register_bundle(b"v2", name="retail", version=2)
    latest = hub.latest_bundle()
    assert latest is not None and latest.version == 2
    latest_named = hub.latest_bundle("retail")
    assert latest_named is not None and latest_named.version == 2
    assert hub.latest_bundle("other") is None
    record, chunks = hub.read_bundle("retail", 1, offset=100, chunk_size=4096)
    assert b"".join(chunks) == data[100:]
    with pytest.raises(NotFoundError):
        hub.read_bundle("retail", 7)
    with pytest.raises(InputError) as info:
        hub.read_bundle("retail", 1, offset=len(data) + 1)
    assert info.value.field == "offset"
    with pytest.raises(InputError):
        hub.register_bundle(b"x", name="../evil", version=3)


def test_translate_placeholders() -> None:
    assert translate_placeholders("SELECT ? , '?' , 100%") == "SELECT %s , '?' , 100%%"
    assert translate_placeholders("a LIKE 'x%' AND b = ?") == "a LIKE 'x%%' AND b = %s"


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_bundle_published_on_one_replica_is_served_by_another(kind: str, tmp_path: Path) -> None:
    with hub_backend(kind, tmp_path / "a") as (first, url, schema):
        data = bytes(range(256)) * 9000  # > 2 MiB: several parts
        first.register_bundle(data, name="retail", version=5)
        other_url = url if url is not None else f"sqlite:{tmp_path / 'a' / 'hub.sqlite'}"
        second = HubStore.open(other_url, state_dir=tmp_path / "b", schema=schema)
        try:
            latest = second.latest_bundle()
            assert latest is not None and latest.path.parent == tmp_path / "b" / "hub-bundles"
            assert latest.path.read_bytes() == data
            _, chunks = second.read_bundle("retail", 5, offset=10)
            assert b"".join(chunks) == data[10:]
        finally:
            second.close()


def test_card_data_pushed_by_a_device_is_refused_and_never_stored(hub: HubStore) -> None:
    pan = "4111 1111 1111 1111"
    bad = {**payment("c1"), "payment_token": pan}
    note = {**points("c1", 5), "reason": f"card {pan}"}
    result = hub.ingest("dev-1", [ev(1, "payment", bad), ev(2, "points", note), ev(3, "payment", payment("c1"))])
    assert [r.seq for r in result.rejected] == [1, 2] and result.acked_through == 3
    assert "payload.payment_token looks like card data" in result.rejected[0].reason
    assert all(pan not in r.reason for r in result.rejected)
    stored = " ".join(str(e) for e in hub.events())
    assert pan not in stored and "4111111111111111" not in stored
    assert hub.balance("c1") == 0


def test_expiring_lots_fold_with_the_sdk_rule(tmp_path: Path) -> None:
    clock = ManualClock(1_700_000_100.0)
    with hub_backend("sqlite", tmp_path, clock=clock) as (hub, _, _):
        lot = points("c1", 100, created_at=1_700_000_000.0, expires_at=1_700_086_400.0)  # expires in a day
        hub.ingest("dev-1", [ev(1, "points", lot), ev(2, "points", points("c1", 50))])
        assert hub.balance("c1") == 150
        # two terminals redeem offline: 120 then 60 → the second goes 30 below zero
        r = hub.ingest("dev-2", [ev(1, "points", points("c1", -120, created_at=1_700_000_200.0))])
        assert r.balances == {"c1": 30} and r.flagged == ()
        r = hub.ingest("dev-3", [ev(1, "points", points("c1", -60, created_at=1_700_000_300.0))])
        assert r.balances == {"c1": -30} and len(r.flagged) == 1
        assert hub.flagged()[0]["shortfall"] == 30
        # FIFO: the redemptions drew on the expiring lot first, so nothing is left to expire
        clock.advance(2 * 86_400)
        assert hub.balance("c1") == -30


def test_an_unspent_lot_expires_at_the_hub(tmp_path: Path) -> None:
    clock = ManualClock(1_700_000_100.0)
    with hub_backend("sqlite", tmp_path, clock=clock) as (hub, _, _):
        hub.ingest("dev-1", [ev(1, "points", points("c1", 100, expires_at=1_700_086_400.0)),
                             ev(2, "points", points("c1", 10)), ev(3, "points", points("c1", -30))])
        assert hub.balance("c1") == 80
        clock.advance(2 * 86_400)
        assert hub.balance("c1") == 10  # the 70 left of the lot expired; the 10 never do


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_hub_database_from_before_the_customer_summary_is_upgraded(kind: str, tmp_path: Path) -> None:
    with hub_backend(kind, tmp_path) as (hub, url, schema):
        hub.ingest("dev-1", [ev(1, "points", points("c1", 70)), ev(2, "points", points("c1", -20)),
                             ev(3, "points", points("c2", 5, expires_at=2_000_000_000.0))])
        with hub.db.transaction() as tx:  # what the first version of the schema had
            tx.execute("CREATE TABLE old_customers(customer_id TEXT PRIMARY KEY, entries BIGINT NOT NULL)")
            tx.execute("INSERT INTO old_customers SELECT customer_id, entries FROM hub_customers")
            tx.execute("DROP TABLE hub_customers")
            tx.execute("ALTER TABLE old_customers RENAME TO hub_customers")
        reopened = HubStore.open(url if url is not None else f"sqlite:{tmp_path / 'hub.sqlite'}",
                                 state_dir=tmp_path, schema=schema)
        try:
            assert reopened.balances(["c1", "c2"]) == {"c1": 50, "c2": 5}
            reopened.ingest("dev-1", [ev(4, "points", points("c1", 1))])
            assert reopened.balance("c1") == 51
        finally:
            reopened.close()


def test_nul_characters_are_rejected_not_fatal(hub: HubStore) -> None:
    batch = [
        IncomingEvent(seq=1, event_id="e1", type="points", created_at=1.0, payload='{"a": "\x00"}'),
        IncomingEvent(seq=2, event_id="e2", type="po\x00ints", created_at=1.0, payload=json.dumps(points("c", 1))),
        ev(3, "points", points("c", 4)),
    ]
    result = hub.ingest("dev-1", batch)
    assert [r.seq for r in result.rejected] == [1, 2] and result.acked_through == 3
    assert hub.balance("c") == 4
    with pytest.raises(InputError):
        hub.ingest("dev-1", [IncomingEvent(seq=4, event_id="e\x004", type="points", created_at=1.0, payload="{}")])
