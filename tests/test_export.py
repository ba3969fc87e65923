"""`nbo export`: the field log as Parquet, from a real hub that real terminals synced to (docs/learning.md).

A terminal decides over two days with a real model, records responses and purchases, and
syncs to a real gateway (SQLite hub and PostgreSQL hub); the gateway decides for the app too.
The export has one row per shown slot with the rewards, the logged inputs as typed columns and
the eligible set with its probabilities, partitioned by day; it filters by time, copies the
bundles, and leaves nothing behind when it fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from bundle_fixtures import make_bundle, make_model, small_catalog
from gateway_helpers import APP, DEVICE_TOKEN, NBO_CLI, bundle_kit, config_data, publish, running_gateway
from google.protobuf import struct_pb2
from nbo.gateway import export_log
from nbo.gateway._db import open_database
from nbo.sdk import Client, InputError, ManualClock
from nbo.v1 import decision_pb2
from sync_helpers import postgres_url

INPUTS = (("customer__frequency", "float"), ("customer__lifecycle_stage", "string"),
          ("offer__category", "string"), ("context__channel", "string"), ("context__basket", "float"))
DAY1 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)


class Field:
    """What the terminal and the app did, to compare the export against."""

    def __init__(self) -> None:
        self.slots: dict[tuple[str, str], dict[str, Any]] = {}
        self.decisions: dict[str, dict[str, Any]] = {}


def run_field(kind: str, root: Path) -> Iterator[tuple[str, str | None, Field]]:
    kit = bundle_kit(root / "kit")
    model = make_model(root / "model" / "propensity.onnx", inputs=INPUTS)
    bundle = make_bundle(kit.directory, key=kit.key, catalog=small_catalog(), models={"propensity": model})
    url = schema = None
    if kind == "postgresql":
        url, schema = postgres_url(), f"nbo_h14_export_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    field = Field()
    clock = ManualClock(DAY1)
    try:
        with running_gateway(root / "gw", config_data(trusted_key=kit.pub, hub_db=url), hub_schema=schema,
                             clock=clock) as gw:
            assert publish(gw, bundle).accepted
            client = Client.open(root / "pos", device_id="pos-1", trusted_keys=[kit.pub.read_bytes()], clock=clock)
            try:
                client.install_bundle(bundle)
                for day in range(2):
                    for c in range(5):
                        customer = f"C{c}"
                        d = client.decide(customer, channel="pos", limit=2, context={"basket": 10.0 * c + day},
                                          profile={"frequency": c, "lifecycle_stage": "active"})
                        field.decisions[d.decision_id] = {"customer": customer, "basket": 10.0 * c + day, "day": day}
                        for offer in d.offers:
                            field.slots[(d.decision_id, offer.offer_id)] = {
                                "p": offer.selection_probability, "outcome": None, "purchases": 0,
                                "amount": Decimal(0)}
                        first = d.offers[-1].offer_id
                        outcome = ("accepted", "declined", "ignored")[c % 3]
                        client.record_response(d.decision_id, first, outcome)
                        field.slots[(d.decision_id, first)]["outcome"] = outcome
                        if c == 1:  # C1 buys an hour after each decision: attributed to it
                            client.record_purchase(customer, amount="12.50", idempotency_key=f"p-{day}",
                                                   timestamp=datetime.fromtimestamp(clock.now(), UTC)
                                                   + timedelta(hours=1))
                            for key, slot in field.slots.items():
                                if key[0] == d.decision_id:
                                    slot["purchases"], slot["amount"] = 1, Decimal("12.50")
                        clock.advance(60)
                    clock.set(DAY1 + timedelta(days=1))
                report = client.sync(f"127.0.0.1:{gw.port}", token=DEVICE_TOKEN, download=False)
                assert not report.errors and client.pending_events() == 0
            finally:
                client.close()
            context = struct_pb2.Struct()
            context.update({"basket": 99.0})
            app = gw.decision.Decide(decision_pb2.DecideRequest(customer_id="A1", channel="app", limit=1,
                                                                 context=context), metadata=APP)
            field.decisions[app.decision_id] = {"customer": "A1", "basket": 99.0, "day": 1}
            for offer in app.offers:
                field.slots[(app.decision_id, offer.offer_id)] = {"p": offer.selection_probability, "outcome": None,
                                                                  "purchases": 0, "amount": Decimal(0)}
            hub_url = url or f"sqlite:///{root / 'gw' / 'hub.sqlite'}"
            yield hub_url, schema, field
    finally:
        if url is not None:
            db = open_database(url, schema=schema)
            db.drop_schema()  # type: ignore[attr-defined]
            db.close()


@pytest.fixture(scope="module", params=("sqlite", "postgresql"))
def field(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ...]]:
    root = tmp_path_factory.mktemp(f"field-{request.param}")
    gen = run_field(request.param, root)
    hub_url, schema, recorded = next(gen)
    # the gateway keeps running while the tests export: an export beside a live hub
    yield request.param, hub_url, schema, root, recorded
    gen.close()


def _export(field: tuple[Any, ...], out: Path, **kw: Any) -> Any:
    kind, hub_url, schema, root, _ = field
    if kind == "sqlite":
        return export_log(hub_url, out, **kw)
    from nbo.gateway import HubStore

    hub = HubStore.open(hub_url, state_dir=root / "pg-reader", schema=schema)
    try:
        return export_log(hub, out, **kw)
    finally:
        hub.close()


def test_one_row_per_shown_slot_with_rewards_inputs_and_eligible_set(field: tuple[Any, ...], tmp_path: Path) -> None:
    recorded = field[-1]
    report = _export(field, tmp_path / "log")
    assert report.rows == len(recorded.slots) and report.decisions == len(recorded.decisions)
    assert report.days == ("2026-11-30", "2026-12-01")
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == [
        "_bundles", "_nbo_log.json", "day=2026-11-30", "day=2026-12-01"]
    assert (tmp_path / "log" / "_bundles" / "small-1.zip").is_file()
    marker = json.loads((tmp_path / "log" / "_nbo_log.json").read_text())
    assert marker["rows"] == report.rows and marker["inputs"] == {
        "context__basket": "float", "context__channel": "string", "customer__frequency": "float",
        "customer__lifecycle_stage": "string"}
    meta = pq.ParquetFile(next((tmp_path / "log" / "day=2026-11-30").glob("*.parquet"))).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    table = ds.dataset(tmp_path / "log", format="parquet", partitioning="hive").to_table()
    rows = table.to_pylist()
    assert len(rows) == len(recorded.slots)
    for row in rows:
        slot = recorded.slots[(row["decision_id"], row["offer_id"])]
        decision = recorded.decisions[row["decision_id"]]
        assert row["customer_id"] == decision["customer"]
        assert row["selection_probability"] == pytest.approx(slot["p"])
        assert row["outcome"] == slot["outcome"] and row["accepted"] == (slot["outcome"] == "accepted")
        assert (row["purchases"], row["purchase_amount"]) == (slot["purchases"], slot["amount"])
        assert row["context__basket"] == decision["basket"]
        assert row["context__channel"] == row["channel"]
        assert row["bundle_name"] == "small" and row["bundle_version"] == 1
        assert row["day"] == row["decided_at"].strftime("%Y-%m-%d")
        # the eligible set holds the shown offer, with the logged probability at this position
        assert row["eligible_offers"][row["eligible_index"]] == row["offer_id"]
        assert row["eligible_pscore"][row["eligible_index"]] == pytest.approx(row["selection_probability"])
        assert sum(row["eligible_pscore"]) == pytest.approx(1.0)
        assert len(row["eligible_shown"]) == len(row["eligible_offers"])
        if row["device_id"] == "pos-1":
            assert row["customer__frequency"] == float(decision["customer"][1:])
            assert row["customer__lifecycle_stage"] == "active"
        else:
            assert row["device_id"] == "app" and row["channel"] == "app"


def test_since_and_until_select_days(field: tuple[Any, ...], tmp_path: Path) -> None:
    recorded = field[-1]
    report = _export(field, tmp_path / "day2", since="2026-12-01", until="2026-12-02")
    assert report.days == ("2026-12-01",)
    day2 = {k for k, v in recorded.slots.items() if recorded.decisions[k[0]]["day"] == 1}
    table = pq.read_table(tmp_path / "day2" / "day=2026-12-01" / "part-0.parquet")
    assert {(d, o) for d, o in zip(table["decision_id"].to_pylist(), table["offer_id"].to_pylist(), strict=True)} \
        == day2
    empty = _export(field, tmp_path / "none", since="2027-01-01")
    assert empty.rows == 0 and json.loads((tmp_path / "none" / "_nbo_log.json").read_text())["rows"] == 0


def test_a_failed_export_leaves_nothing_behind(field: tuple[Any, ...], tmp_path: Path) -> None:
    def fail(rows: int, decisions: int) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        _export(field, tmp_path / "log", progress=fail)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not an empty directory") as info:
        _export(field, tmp_path / "taken")
    assert info.value.field == "out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    with pytest.raises(InputError, match="since"):
        _export(field, tmp_path / "x", since="yesterday")


def test_nbo_export_command(field: tuple[Any, ...], tmp_path: Path) -> None:
    kind, hub_url, schema, _, recorded = field
    if kind == "postgresql":  # the schema of this test run, through libpq's options
        hub_url += ("&" if "?" in hub_url else "?") + f"options=-csearch_path%3D{schema}"
    out = tmp_path / "log"
    done = subprocess.run([*NBO_CLI, "export", "--hub", hub_url, "--out", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{len(recorded.slots)} shown slots" in done.stdout and "2 partitions" in done.stdout
    missing = subprocess.run([*NBO_CLI, "export", "--hub", f"sqlite:///{tmp_path / 'nope.sqlite'}", "--out",
                              str(tmp_path / "x")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "no hub database" in missing.stderr
    assert not (tmp_path / "nope.sqlite").exists() and not (tmp_path / "x").exists()
