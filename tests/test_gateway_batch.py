"""The gateway's group commit for Decide (gateway/_decide_batch.py), on both hub stores.

A "gate" job holds the decider thread inside the first batch's transaction while the jobs
under test queue up; releasing it lets them run as the next batch, in one transaction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import bundle_kit, policy_catalog
from nbo.gateway._decide_batch import DecideBatcher, Expired
from nbo.gateway._engine_host import EngineHost
from nbo.gateway._hub_state import APP_SOURCE, HubStateStore
from nbo.sdk import _engine
from nbo.sdk._errors import InputError, StateError
from nbo.sdk._runtime import LoadedBundle
from sync_helpers import hub_backend


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[HubStateStore, LoadedBundle, DecideBatcher]]:
    kit = bundle_kit(tmp_path / "kit")
    engine = EngineHost(tmp_path / "engine", trusted_keys=[kit.pub])
    engine.install(kit.bundle(1, catalog=policy_catalog(max_shows=2)))
    with hub_backend(request.param, tmp_path / "hub") as (hub, _, _):
        state = HubStateStore(hub)
        batcher = DecideBatcher(state)
        try:
            yield state, engine.require(), batcher
        finally:
            batcher.close()
            state.close()


def _decide(state: HubStateStore, bundle: LoadedBundle, customer: str, channel: str = "pos") -> Callable[[], Any]:
    return lambda: _engine.decide(bundle, state, customer_id=customer, channel=channel, context=None, profile=None,
                                  limit=3, explain=False)


class _Calls:
    """Submit jobs from their own threads; collect results and errors by name."""

    def __init__(self, batcher: DecideBatcher) -> None:
        self.batcher = batcher
        self.results: dict[str, Any] = {}
        self.threads: list[threading.Thread] = []

    def submit(self, name: str, customer: str, fn: Callable[[], Any], **kw: Any) -> None:
        def run() -> None:
            try:
                self.results[name] = self.batcher.submit(customer, fn, **kw)
            except BaseException as exc:  # KeyboardInterrupt included: see the last test
                self.results[name] = exc

        thread = threading.Thread(target=run)
        thread.start()
        self.threads.append(thread)

    def wait_queued(self, n: int) -> None:
        deadline = time.monotonic() + 10
        while self.batcher.queued() < n:
            assert time.monotonic() < deadline, "jobs did not queue"
            time.sleep(0.005)

    def join(self) -> dict[str, Any]:
        for thread in self.threads:
            thread.join(10)
        return self.results


def _gate(calls: _Calls, state: HubStateStore, bundle: LoadedBundle) -> threading.Event:
    """A first job that decides for 'gate' and then holds the decider until released."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> Any:
        decision = _decide(state, bundle, "gate")()
        entered.set()
        assert release.wait(10)
        return decision

    calls.submit("gate", "gate", hold)
    assert entered.wait(10)
    return release


def _rows(state: HubStateStore, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with state.transaction() as tx:
        return tx.execute(sql, params)


def test_a_batch_shares_one_transaction_and_a_failed_decision_is_undone_alone(env):
    state, bundle, batcher = env
    calls = _Calls(batcher)
    release = _gate(calls, state, bundle)

    def decide_then_fail() -> Any:
        _decide(state, bundle, "C-fails")()  # writes its decision, contacts and event ...
        raise RuntimeError("boom")  # ... which the savepoint must undo

    calls.submit("first", "C-1", _decide(state, bundle, "C-1"))
    calls.wait_queued(1)
    calls.submit("fails", "C-fails", decide_then_fail)
    calls.wait_queued(2)
    calls.submit("bad-input", "C-2", _decide(state, bundle, "C-2", channel="fax"))
    calls.wait_queued(3)
    calls.submit("last", "C-3", _decide(state, bundle, "C-3"))
    calls.wait_queued(4)
    release.set()
    results = calls.join()

    assert isinstance(results["fails"], RuntimeError)
    assert isinstance(results["bad-input"], InputError) and results["bad-input"].field == "channel"
    first, last = results["first"], results["last"]
    assert first.offers and last.offers
    # one transaction: one clock reading for the whole batch, another one for the gate's batch
    assert first.created_at == last.created_at != results["gate"].created_at

    decided = {c for (c,) in _rows(state, "SELECT customer_id FROM decisions")}
    assert decided == {"gate", "C-1", "C-3"}
    assert _rows(state, "SELECT COUNT(*) FROM contact_history WHERE customer_id = ?", ("C-fails",)) == [(0,)]
    seqs = [s for (s,) in _rows(state, "SELECT seq FROM hub_events WHERE device_id = ? ORDER BY seq", (APP_SOURCE,))]
    assert seqs == [1, 2, 3]  # gapless: the undone decision's event and seq are gone
    assert _rows(state, "SELECT acked_through FROM hub_devices WHERE device_id = ?", (APP_SOURCE,)) == [(3,)]


def test_decisions_for_one_customer_in_one_batch_respect_the_contact_policy(env):
    state, bundle, batcher = env
    calls = _Calls(batcher)
    release = _gate(calls, state, bundle)
    for n in range(4):
        calls.submit(f"d{n}", "C-same", _decide(state, bundle, "C-same"))
        calls.wait_queued(n + 1)
    release.set()
    results = calls.join()

    shows: dict[str, int] = {}
    for n in range(4):
        for offer in results[f"d{n}"].offers:
            if not offer.fallback:
                shows[offer.offer_id] = shows.get(offer.offer_id, 0) + 1
    assert shows and max(shows.values()) == 2  # "at most 2 shows a week", inside one transaction
    assert results["d0"].created_at == results["d3"].created_at


def test_a_call_whose_client_left_is_not_decided(env):
    state, bundle, batcher = env
    with pytest.raises(Expired) as info:
        batcher.submit("C-gone", _decide(state, bundle, "C-gone"), is_active=lambda: False)
    assert info.value.grpc_status == "DEADLINE_EXCEEDED"
    assert _rows(state, "SELECT COUNT(*) FROM decisions") == [(0,)]
    assert _rows(state, "SELECT COUNT(*) FROM hub_events") == [(0,)]


def test_close_finishes_queued_work_then_refuses_more(env):
    state, bundle, batcher = env
    calls = _Calls(batcher)
    release = _gate(calls, state, bundle)
    calls.submit("queued", "C-q", _decide(state, bundle, "C-q"))
    calls.wait_queued(1)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    release.set()
    closer.join(10)
    results = calls.join()
    assert results["queued"].offers
    with pytest.raises(StateError, match="shutting down"):
        batcher.submit("C-late", _decide(state, bundle, "C-late"))


def test_an_error_escaping_the_batch_reaches_every_caller_of_it(env):
    state, bundle, batcher = env
    calls = _Calls(batcher)
    release = _gate(calls, state, bundle)
    calls.submit("ok", "C-ok", _decide(state, bundle, "C-ok"))
    calls.wait_queued(1)

    def break_transaction() -> Any:
        raise KeyboardInterrupt  # not an Exception: the savepoint undoes it and the batch aborts

    calls.submit("breaks", "C-x", break_transaction)
    calls.wait_queued(2)
    release.set()
    results = calls.join()
    assert isinstance(results["breaks"], KeyboardInterrupt) and isinstance(results["ok"], KeyboardInterrupt)
    assert _rows(state, "SELECT COUNT(*) FROM decisions WHERE customer_id = ?", ("C-ok",)) == [(0,)]
    assert _rows(state, "SELECT customer_id FROM decisions") == [("gate",)]
    batcher.submit("C-after", _decide(state, bundle, "C-after"))  # the decider lives on
