"""``decide_many``: several requests in one transaction answer exactly as ``decide`` one by one.

Real bundles (two exported gradient-boosting models), real SQLite state stores. The gateway
decides every batch of app requests with it (gateway/_decide_batch.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_fixtures import load_spec_bundle, synthetic_profile, synthetic_spec, train_model
from nbo.sdk import InputError, ManualClock, ModelError, _contacts, _engine, _policy, _runtime
from nbo.sdk._store import SQLiteStateStore
from nbo.sdk.core import LoadedBundle

NOW = 1_767_225_600.0  # 2026-01-01, a Thursday, 00:00 UTC; the clock is moved to 10:00 below


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> LoadedBundle:
    spec = synthetic_spec(40, n_models=2)
    spec["contact_policies"][0]["max_count"] = 2  # "at most 2 shows of an offer a week": bites in a batch
    return load_spec_bundle(tmp_path_factory.mktemp("many") / "b", spec,
                            models={"gbt0": train_model(10, seed=1)[0], "gbt1": train_model(8, seed=2)[0]})


def _store(path: Path) -> SQLiteStateStore:
    return SQLiteStateStore(path, device_id="pos-1", clock=ManualClock(NOW + 10 * 3600))


def _requests() -> list[_engine.Request]:
    out = []
    # C1 three times and C3 twice: later ones must see the contacts of the earlier ones
    for n, i in enumerate([0, 1, 2, 1, 3, 4, 1, 3, 5, 6]):
        out.append(_engine.Request(f"C{i}", ["pos", "app"][n % 2], {"basket": n}, synthetic_profile(i), 3 + n % 4,
                                   n % 3 == 0))
    return out


def _summary(decision: Any) -> tuple[Any, ...]:
    return (decision.customer_id, decision.channel, decision.strategy,
            [(o.offer_id, o.fallback, o.mandatory, round(o.propensity, 6), round(o.score, 6)) for o in decision.offers],
            [(e.offer_id, e.rule_id) for e in decision.excluded])


def _contact_rows(store: SQLiteStateStore) -> list[tuple[Any, ...]]:
    with store.transaction() as tx:
        return sorted(tx.execute("SELECT customer_id, offer_id, channel, event FROM contact_history"))


def test_many_answers_and_records_exactly_as_one_by_one(bundle: LoadedBundle, tmp_path: Path) -> None:
    one, many = _store(tmp_path / "one.sqlite"), _store(tmp_path / "many.sqlite")
    try:
        singles = [_engine.decide(bundle, one, customer_id=r.customer_id, channel=r.channel, context=r.context,
                                  profile=r.profile, limit=r.limit, explain=r.explain) for r in _requests()]
        batch = _engine.decide_many(bundle, many, _requests())
        assert all(not isinstance(d, Exception) for d in batch)
        assert [_summary(d) for d in batch] == [_summary(d) for d in singles]
        assert _contact_rows(many) == _contact_rows(one)
        # the repeated customers really were limited by the policy inside the batch
        shows: dict[str, int] = {}
        for d in batch:
            if d.customer_id == "C1":  # type: ignore[union-attr]
                for o in d.offers:  # type: ignore[union-attr]
                    shows[o.offer_id] = shows.get(o.offer_id, 0) + 1
        assert shows and max(shows.values()) <= 2
        with many.transaction() as tx:
            events = tx.execute("SELECT seq, type, payload FROM outbox ORDER BY seq")
        # one event per decision, gapless seqs; a customer's events in the order of its requests
        assert [(seq, t) for seq, t, _ in events] == [(n, "decision") for n in range(1, len(batch) + 1)]
        logged = [json.loads(p) for _, _, p in events]
        assert sorted(e["decision_id"] for e in logged) == sorted(d.decision_id for d in batch)  # type: ignore[union-attr]
        for customer in ("C1", "C3"):
            assert [e["decision_id"] for e in logged if e["customer_id"] == customer] == [
                d.decision_id for d in batch if d.customer_id == customer]  # type: ignore[union-attr]
    finally:
        one.close()
        many.close()


def test_a_bad_request_fails_alone(bundle: LoadedBundle, tmp_path: Path) -> None:
    store = _store(tmp_path / "s.sqlite")
    try:
        good = _requests()[:3]
        bad = [
            _engine.Request("C9", "fax", None, None, 3, False),
            _engine.Request("C9", "pos", None, {"frequency": "often"}, 3, False),
            _engine.Request("C9", "pos", None, None, 0, False),
        ]
        results = _engine.decide_many(bundle, store, [bad[0], good[0], bad[1], good[1], bad[2], good[2]])
        fields = [r.field for r in results[0::2] if isinstance(r, InputError)]
        assert fields == ["channel", "profile.frequency", "limit"]
        assert [r.customer_id for r in results[1::2]] == ["C0", "C1", "C2"]  # type: ignore[union-attr]
        with store.transaction() as tx:
            assert sorted(c for (c,) in tx.execute("SELECT customer_id FROM decisions")) == ["C0", "C1", "C2"]
    finally:
        store.close()


def test_one_model_run_scores_every_row_as_alone(bundle: LoadedBundle) -> None:
    plan = bundle.plan
    assert plan is not None
    rng = np.random.default_rng(7)
    items = []
    for i in range(7):
        # a few rows (scored through Python lists) and, once, every offer (through arrays)
        size = len(plan.offer_ids) if i == 3 else int(rng.integers(0, 12))
        rows = np.sort(rng.choice(len(plan.offer_ids), size=size, replace=False))
        customer = {**plan.default_profile, **synthetic_profile(i)}
        items.append((rows, customer, {"channel": "pos", "hour": 9 + i, "weekday": 3}))
    together = _policy.propensities_many(plan, items)
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(_policy, "_FEW_ROWS", 0)  # every item through the array path
        arrays = _policy.propensities_many(plan, items)
    for got, array in zip(together, arrays, strict=True):
        assert isinstance(got, np.ndarray) and isinstance(array, np.ndarray)
        assert got.tolist() == array.tolist()
    for (rows, customer, context), got in zip(items, together, strict=True):
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, _policy.propensities(plan, rows, customer, context), rtol=0, atol=1e-7)


def test_counted_history_blocks_exactly_what_single_events_block(tmp_path: Path) -> None:
    day = 86_400.0
    now = NOW + 10 * 3600
    windows = [day, 7 * day, 30 * day]
    rng = np.random.default_rng(3)
    store = _store(tmp_path / "h.sqlite")
    try:
        rows = []
        for n in range(400):
            # some exactly on a window start, some in the future (a skewed clock), most inside
            ts = float(rng.choice([now - 7 * day, now - day, now + 5, now - rng.uniform(0, 40 * day)]))
            rows.append((f"C{n % 3}", f"O{rng.integers(4)}", f"cat{rng.integers(2)}", str(rng.choice(["pos", "app"])),
                         str(rng.choice(["shown", "declined"])), ts))
        with store.transaction() as tx:
            for row in rows:
                tx.execute("INSERT INTO contact_history(customer_id, offer_id, category, channel, event, ts) "
                           "VALUES (?, ?, ?, ?, ?, ?)", row)
            counted = _contacts.contact_counts(tx, ["C0", "C1", "C2", "C9"], now=now, windows=windows,
                                               events=["shown", "declined"])
            # Policies counting declines only: the shows are not read at all.
            declines = _contacts.contact_counts(tx, ["C0", "C1", "C2"], now=now, windows=windows, events=["declined"])
            assert _contacts.contact_counts(tx, ["C0"], now=now, windows=windows, events=[]) == {"C0": []}
        assert counted["C9"] == []
        assert {r[3] for c in ("C0", "C1", "C2") for r in declines[c]} == {"declined"}
        assert sum(r[5] for c in declines for r in declines[c]) == sum(
            1 for r in rows if r[4] == "declined" and now - 30 * day <= r[5] <= now)
        assert sum(r[5] for r in counted["C0"]) < sum(1 for r in rows if r[0] == "C0")  # really grouped
        for customer in ("C0", "C1", "C2"):
            single = [r[1:] for r in rows if r[0] == customer]
            for window in windows:
                for scope in ("offer", "category", "all"):
                    for event in ("shown", "declined"):
                        for channel in ("", "pos"):
                            for max_count in (1, 3, 8):
                                policy = _runtime.PolicyPlan(
                                    policy_id="p", scope=scope, event=event, max_count=max_count,
                                    window_seconds=window, channel=channel, description="",
                                    applies=np.ones(1, dtype=bool))
                                assert (_policy.policy_blocked(policy, counted[customer], now)
                                        == _policy.policy_blocked(policy, single, now))
                                if event == "declined":
                                    assert (_policy.policy_blocked(policy, declines[customer], now)
                                            == _policy.policy_blocked(policy, single, now))
    finally:
        store.close()


def test_an_older_store_trades_its_history_index_for_the_event_index(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:  # what an earlier version created
        old.execute("CREATE TABLE contact_history(customer_id TEXT NOT NULL, offer_id TEXT NOT NULL, "
                    "category TEXT NOT NULL, channel TEXT NOT NULL, event TEXT NOT NULL, "
                    "ts DOUBLE PRECISION NOT NULL, decision_id TEXT)")
        old.execute("CREATE INDEX contact_history_by_customer ON contact_history(customer_id, ts)")
        old.execute("INSERT INTO contact_history VALUES ('C1', 'O1', 'cat', 'pos', 'declined', ?, NULL)",
                    (NOW + 3600,))
    store = _store(path)
    try:
        with store.transaction() as tx:
            indexes = {n for (n,) in tx.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'contact_history'")}
            plan = tx.execute("EXPLAIN QUERY PLAN SELECT COUNT(*) FROM contact_history "
                              "WHERE customer_id = ? AND event IN (?) AND ts >= ?", ("C1", "declined", 0.0))
            kept = _contacts.contact_counts(tx, ["C1"], now=NOW + 7200, windows=[86_400.0], events=["declined"])
        assert indexes == {"contact_history_by_event"}
        assert "contact_history_by_event" in " ".join(str(r[-1]) for r in plan)
        assert [r[3:] for r in kept["C1"]] == [("declined", NOW + 3600, 1)]  # the old rows still count
    finally:
        store.close()


def _strict_model() -> bytes:
    """A real ONNX model that fails at run time on a ``tier`` it never saw (a strict one-hot
    encoder): a model error that belongs to one request of a batch."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    tiers = np.array([[t] for t in ["", "gold", "silver"] * 4], dtype=object)
    pipeline = Pipeline([
        ("prep", ColumnTransformer([("tier", OneHotEncoder(handle_unknown="error"), [0])])),
        ("clf", LogisticRegression()),
    ]).fit(tiers, [0, 1, 0] * 4)
    onx = convert_sklearn(pipeline, initial_types=[("customer__tier", StringTensorType([None, 1]))],
                          options={id(pipeline.steps[-1][1]): {"zipmap": False}}, target_opset=17)
    return onx.SerializeToString()


def test_a_model_error_in_a_shared_run_fails_only_its_own_request(tmp_path: Path) -> None:
    strict = load_spec_bundle(tmp_path / "strict", synthetic_spec(12, n_models=1), models={"gbt0": _strict_model()})
    requests = [_engine.Request(f"C{n}", "pos", None, {**synthetic_profile(n), "tier": tier}, 3, False)
                for n, tier in enumerate(["gold", "platinum", "silver"], start=3)]  # platinum: never trained on
    batch_store, one_store = _store(tmp_path / "batch.sqlite"), _store(tmp_path / "one.sqlite")
    try:
        results = _engine.decide_many(strict, batch_store, requests)
        assert isinstance(results[1], ModelError) and "gbt0" in str(results[1])
        alone = [_engine.decide_many(strict, one_store, [r])[0] for r in (requests[0], requests[2])]
        assert [_summary(d) for d in (results[0], results[2])] == [_summary(d) for d in alone]
        assert any(o.propensity != 1.0 for o in results[0].offers)  # type: ignore[union-attr]  # really scored
        with batch_store.transaction() as tx:  # the failed request decided and recorded nothing
            assert sorted(c for (c,) in tx.execute("SELECT customer_id FROM decisions")) == ["C3", "C5"]
    finally:
        batch_store.close()
        one_store.close()
