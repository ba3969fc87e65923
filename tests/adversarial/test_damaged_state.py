"""A damaged state file must not start a new device (issue 18, point 6).

Attack class: *state damage* — a zero-length ``state.sqlite`` after a power cut or a botched
restore, a garbage page, an older copy put back, a wiped state directory. Each is refused with an
error naming ``nbo recover``, and ``nbo recover`` rebuilds the device from a real gateway on
127.0.0.1:0: outbox position, ledger, balances, contact history, purchases and payments.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import (
    DEVICE_TOKEN,
    NBO_CLI,
    BundleKit,
    Gateway,
    bundle_kit,
    config_data,
    running_gateway,
)
from nbo.sdk import Client, DamagedStateError, StateError, SyncError, recover_state
from sync_helpers import BACKENDS, postgres_url, unique_schema

DEVICE = "pos-1"

# Tables whose rows recovery rebuilds exactly (profiles: the measures folded from purchases).
_RESTORED = {
    "outbox": "SELECT seq, event_id, type, created_at, payload, acked FROM outbox ORDER BY seq",
    "dead_letter": "SELECT seq, event_id, type, created_at, payload FROM dead_letter ORDER BY seq",
    "contact_history": "SELECT customer_id, offer_id, category, channel, event, ts, decision_id FROM contact_history "
                       "ORDER BY ts, decision_id, offer_id, event",
    "decisions": "SELECT decision_id, customer_id, channel, bundle_name, bundle_version, created_at, offers "
                 "FROM decisions ORDER BY decision_id",
    "responses": "SELECT * FROM responses ORDER BY decision_id, offer_id",
    "purchases": "SELECT * FROM purchases ORDER BY purchase_id",
    "profiles": "SELECT customer_id, profile FROM profiles ORDER BY customer_id",
    "ledger_entries": "SELECT * FROM ledger_entries ORDER BY seq",
    "payments": "SELECT * FROM payments ORDER BY payment_id",
}


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> BundleKit:
    return bundle_kit(tmp_path_factory.mktemp("kit"))


@pytest.fixture(scope="module")
def bundle(kit: BundleKit) -> Path:
    """One signed bundle for the module (building one trains a model: seconds)."""
    return kit.bundle(1)


@pytest.fixture(params=BACKENDS)
def gateway(request: pytest.FixtureRequest, tmp_path: Path, kit: BundleKit) -> Iterator[Gateway]:
    """A real gateway on 127.0.0.1:0 over the SQLite hub and over the PostgreSQL hub."""
    url = schema = None
    if request.param == "postgresql":
        url, schema = postgres_url(), unique_schema()
    with running_gateway(tmp_path / "hub", config_data(trusted_key=kit.pub, hub_db=url), hub_schema=schema) as gw:
        try:
            yield gw
        finally:
            if url is not None:
                gw.server.hub.db.drop_schema()  # type: ignore[attr-defined]


def target(gw: Gateway) -> str:
    return f"127.0.0.1:{gw.port}"


def open_device(state: Path, kit: BundleKit) -> Client:
    return Client.open(state, device_id=DEVICE, trusted_keys=[kit.pub])


def busy_day(client: Client, bundle: Path, *, tag: str = "") -> None:
    """Decisions, responses, purchases, points and a payment: every kind of event."""
    if client.bundle is None:
        client.install_bundle(bundle)
    for n in range(6):
        decision = client.decide(f"c{n % 3}", channel="pos")
        if n % 2 == 0 and decision.offers:
            client.record_response(decision.decision_id, decision.offers[0].offer_id,
                                   "declined" if n % 4 else "accepted")
    for n in range(3):
        client.record_purchase(f"c{n}", amount=f"{12 + n}.50", quantity=n + 1, idempotency_key=f"buy{tag}{n}")
        client.award_points(f"c{n}", 100 + n, idempotency_key=f"award{tag}{n}", reason="purchase")
    client.redeem_points("c0", 40, idempotency_key=f"redeem{tag}", reason="coffee")
    client.record_payment("c1", payment_token="tok_abc", amount="9.99", currency="EUR",
                          idempotency_key=f"pay{tag}")


def synced_device(state: Path, kit: BundleKit, gateway: Gateway) -> None:
    """A device that awarded 50 points to c1 and synced them."""
    with open_device(state, kit) as client:
        client.award_points("c1", 50, idempotency_key="k1", reason="purchase")
        client.sync(target(gateway), token=DEVICE_TOKEN)


def snapshot(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        out = {name: conn.execute(sql).fetchall() for name, sql in _RESTORED.items()}
    finally:
        conn.close()
    # The stored offer list is JSON: compare its values, not its spelling.
    out["decisions"] = [(*row[:6], json.loads(row[6])) for row in out["decisions"]]
    return out


def empty_file(state: Path) -> None:
    """What a power cut during a restore leaves: the database file truncated to zero bytes."""
    for suffix in ("-wal", "-shm"):
        (state / f"state.sqlite{suffix}").unlink(missing_ok=True)
    (state / "state.sqlite").write_bytes(b"")


def test_an_emptied_state_file_of_a_synced_device_is_refused(tmp_path: Path, gateway: Gateway,
                                                             kit: BundleKit) -> None:
    state = tmp_path / "pos"
    synced_device(state, kit, gateway)
    empty_file(state)
    with pytest.raises(DamagedStateError, match="is empty .*has synced.*nbo recover"):
        open_device(state, kit)
    with pytest.raises(DamagedStateError, match="nbo recover"):
        Client.open(state, device_id=DEVICE, trusted_keys=[kit.pub], read_only=True)
    (state / "state.sqlite").unlink()
    with pytest.raises(DamagedStateError, match="is missing"):
        open_device(state, kit)
    assert not (state / "state.sqlite").exists()  # nothing was created in its place


def test_a_garbage_page_is_found_at_open(tmp_path: Path, kit: BundleKit, bundle: Path) -> None:
    state = tmp_path / "pos"
    with open_device(state, kit) as client:
        busy_day(client, bundle)
        with client._store.transaction() as tx:  # enough pages for one in the middle to be a b-tree page
            tx.append_events("response", [{"decision_id": f"d{n}", "offer_id": "o1", "customer_id": f"c{n}",
                                           "category": "xsell", "channel": "pos", "outcome": "ignored",
                                           "note": "x" * 300} for n in range(400)])
    path = state / "state.sqlite"
    size = path.stat().st_size
    page = 4096
    assert size >= 20 * page
    with path.open("r+b") as f:  # a page in the middle of the file, overwritten
        f.seek((size // page // 2) * page)
        f.write(os.urandom(page))
    with pytest.raises(DamagedStateError, match="(integrity check|malformed).*nbo recover"):
        open_device(state, kit)
    with pytest.raises(DamagedStateError, match="integrity check|malformed"):
        Client.open(state, device_id=DEVICE, trusted_keys=[kit.pub], read_only=True)


def test_an_older_copy_of_the_state_is_refused(tmp_path: Path, gateway: Gateway, kit: BundleKit) -> None:
    state = tmp_path / "pos"
    backup = tmp_path / "backup.sqlite"
    synced_device(state, kit, gateway)
    with open_device(state, kit) as client:
        client.award_points("c1", 70, idempotency_key="k2", reason="purchase")
        client._store._conn.execute(f"VACUUM INTO '{backup}'")  # last night's backup: k2 not yet synced
        client.sync(target(gateway), token=DEVICE_TOKEN)
        client.award_points("c1", 30, idempotency_key="k3", reason="purchase")
        client.sync(target(gateway), token=DEVICE_TOKEN)
    for suffix in ("-wal", "-shm"):
        (state / f"state.sqlite{suffix}").unlink(missing_ok=True)
    backup.replace(state / "state.sqlite")
    with pytest.raises(DamagedStateError, match="older copy.*nbo recover"):
        open_device(state, kit)
    report = recover_state(state, target(gateway), token=DEVICE_TOKEN)
    assert report.carried_over == 0  # the copy's unsynced k2 reached the hub later: not queued twice
    with open_device(state, kit) as client:
        assert client.points_balance("c1") == 150 and client.pending_events() == 0


def test_a_wiped_device_is_refused_by_the_hub_and_recovered(tmp_path: Path, gateway: Gateway,
                                                           kit: BundleKit) -> None:
    state = tmp_path / "pos"
    synced_device(state, kit, gateway)
    for child in state.iterdir():  # the whole directory lost: no marker survives to refuse at open
        if child.is_file():
            child.unlink()
    with open_device(state, kit) as client:
        assert client.points_balance("c1") == 0
        client.award_points("c2", 5, idempotency_key="after", reason="purchase")
        with pytest.raises(SyncError, match="ALREADY_EXISTS.*nbo recover"):
            client.sync(target(gateway), token=DEVICE_TOKEN)
    report = recover_state(state, target(gateway), token=DEVICE_TOKEN, device_id=DEVICE)
    # The award made after the wipe is not lost: it is queued again after the hub's seq 1.
    assert (report.max_seq, report.carried_over) == (1, 1)
    with open_device(state, kit) as client:
        assert client.points_balance("c1") == 50
        assert client.points_balance("c2") == 5 and client.pending_events() == 1
        assert client.acked_through() == 1
        first = client.award_points("c2", 5, idempotency_key="after", reason="purchase")  # the till retries
        assert client.pending_events() == 1 and first.points == 5
        assert client.sync(target(gateway), token=DEVICE_TOKEN).acked_through == 2
    assert gateway.server.hub.balance("c2") == 5


def test_nbo_recover_rebuilds_the_device_from_the_hub(tmp_path: Path, gateway: Gateway, kit: BundleKit,
                                                     bundle: Path) -> None:
    state = tmp_path / "pos"
    with open_device(state, kit) as client:
        busy_day(client, bundle)
        with client._store.transaction() as tx:  # an event the hub rejects: it is dead-lettered
            tx.append_event("points", {"customer_id": "c9", "kind": "award"})
        client.sync(target(gateway), token=DEVICE_TOKEN)
        assert client.outbox_summary()["dead_lettered"] == 1
        balances = {c: client.points_balance(c) for c in ("c0", "c1", "c2")}
        acked = client.acked_through()
        award = client.award_points("c0", 100, idempotency_key="award0", reason="purchase")  # a retry
    before = snapshot(state / "state.sqlite")
    empty_file(state)

    token_file = tmp_path / "device.token"
    token_file.write_text(DEVICE_TOKEN)
    done = subprocess.run([*NBO_CLI, "recover", "--state", str(state), "--hub", target(gateway),
                           "--token-file", str(token_file)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    held = gateway.server.hub.acked_through(DEVICE)  # the dead-lettered event last: one past the outbox
    assert f"recovered device {DEVICE}: 17 events through seq {held} (hub acknowledged {held})" in done.stdout
    assert done.stderr == ""
    aside = list(state.glob("damaged-*"))
    assert len(aside) == 1 and (aside[0] / "state.sqlite").stat().st_size == 0  # kept, never deleted

    assert snapshot(state / "state.sqlite") == before
    with open_device(state, kit) as client:
        assert {c: client.points_balance(c) for c in balances} == balances
        assert client.acked_through() == acked and client.pending_events() == 0
        # A till retrying an award after the recovery gets the first entry back, not a second award.
        assert client.award_points("c0", 100, idempotency_key="award0", reason="purchase") == award
        assert client.pending_events() == 0
        busy_day(client, bundle, tag="-next")
        report = client.sync(target(gateway), token=DEVICE_TOKEN)
        assert report.errors == () and report.acked_through == client.acked_through() > acked
        assert client.points_balance("c0") == gateway.server.hub.balance("c0")


def test_recover_refuses_a_healthy_state_unless_forced(tmp_path: Path, gateway: Gateway, kit: BundleKit) -> None:
    state = tmp_path / "pos"
    synced_device(state, kit, gateway)
    with open_device(state, kit) as client:
        client.award_points("c1", 7, idempotency_key="k2", reason="purchase")  # not synced yet
    with pytest.raises(StateError, match="opens cleanly.*1 unsynced"):
        recover_state(state, target(gateway), token=DEVICE_TOKEN)
    with open_device(state, kit) as client:
        assert client.points_balance("c1") == 57  # untouched
    report = recover_state(state, target(gateway), token=DEVICE_TOKEN, force=True)
    assert report.carried_over == 1 and report.moved_aside is not None  # the unsynced award queued again
    with open_device(state, kit) as client:
        assert client.points_balance("c1") == 57
        assert client.sync(target(gateway), token=DEVICE_TOKEN).errors == ()
    assert gateway.server.hub.balance("c1") == 57


def test_recover_with_a_token_of_another_device_changes_nothing(tmp_path: Path, gateway: Gateway,
                                                                kit: BundleKit) -> None:
    state = tmp_path / "pos"
    synced_device(state, kit, gateway)
    empty_file(state)
    with pytest.raises(SyncError, match="PERMISSION_DENIED"):
        recover_state(state, target(gateway), token="device-token-pos-2")
    with pytest.raises(StateError, match="state of device 'pos-1'.*not 'pos-2'"):
        recover_state(state, target(gateway), token="device-token-pos-2", device_id="pos-2")
    with open_device(tmp_path / "healthy", kit):
        pass  # a healthy state of pos-1, never synced: no marker, only its own database says whose it is
    with pytest.raises(StateError, match="belongs to device 'pos-1'"):
        recover_state(tmp_path / "healthy", target(gateway), token="device-token-pos-2", device_id="pos-2")
    assert (state / "state.sqlite").stat().st_size == 0 and not list(state.glob("damaged-*"))
    assert not (state / "recovering").exists()


def test_every_streaming_rpc_has_an_admission_limit_and_an_idle_limit() -> None:
    """RecoverDevice streams a device's whole history: a reader that stops reading must not hold
    a thread for ever (the limits DownloadBundle has, docs/operations.md)."""
    from nbo.gateway._call_limits import _route
    from nbo.v1 import common_pb2, decision_pb2, publish_pb2, sync_pb2

    streaming = [f"/{service.full_name}/{method.name}"
                 for module in (common_pb2, decision_pb2, publish_pb2, sync_pb2)
                 for service in module.DESCRIPTOR.services_by_name.values()
                 for method in service.methods if method.server_streaming or method.client_streaming]
    assert "/nbo.v1.SyncService/RecoverDevice" in streaming
    for method in streaming:
        kind, group, idle = _route(method)
        assert kind == "transfer" and group is not None and idle, method
