"""The gateway's group commit for Decide (gateway/_decide_batch.py), on both hub stores.

A gated runner holds the decider thread in the first batch while the requests under test
queue up; releasing it lets them run as the next batch, in one transaction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_helpers import DecideCalls, bundle_kit, policy_catalog
from nbo.gateway import EngineHost, HubStateStore
from nbo.gateway._decide_batch import DecideArgs, DecideBatcher, decide_batch
from nbo.gateway._hub_state import APP_SOURCE
from nbo.gateway._status import status_for
from nbo.sdk import InputError, StateError
from nbo.sdk.core import DeadlineExceededError, LoadedBundle, Request, ShuttingDownError
from sync_helpers import hub_backend


class _Gated:
    """A runner (decide_batch over the hub) whose first batch waits until released."""

    def __init__(self, state: HubStateStore) -> None:
        self.state = state
        self.entered, self.release = threading.Event(), threading.Event()
        self.batches: list[list[str]] = []
        self.fail_with: BaseException | None = None

    def __call__(self, batch: Any) -> Any:
        self.batches.append([a.customer_id for a in batch])
        if len(self.batches) == 1:
            self.entered.set()
            assert self.release.wait(10)
        elif self.fail_with is not None:
            raise self.fail_with
        return decide_batch(self.state, batch)


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[HubStateStore, LoadedBundle, _Gated, DecideBatcher]]:
    kit = bundle_kit(tmp_path / "kit")
    engine = EngineHost(tmp_path / "engine", trusted_keys=[kit.pub])
    engine.install(kit.bundle(1, catalog=policy_catalog(max_shows=2)))
    with hub_backend(request.param, tmp_path / "hub") as (hub, _, _):
        state = HubStateStore(hub)
        runner = _Gated(state)
        batcher = DecideBatcher(runner)
        try:
            yield state, engine.require(), runner, batcher
        finally:
            runner.release.set()
            batcher.close()
            state.close()


def _args(bundle: LoadedBundle, customer: str, channel: str = "pos") -> DecideArgs:
    return DecideArgs(bundle, Request(customer, channel, None, None, 3, False))


class _Calls(DecideCalls):
    """Each request also waits until it is queued behind the gated batch."""

    def submit(self, name: str, args: Any, **kw: Any) -> None:
        super().submit(name, args, **kw)
        deadline = time.monotonic() + 10
        while self.decider.queued() < len(self.threads) - 1:  # the first one is the gate's batch
            assert time.monotonic() < deadline, "requests did not queue"
            time.sleep(0.005)


def _gated(batcher: DecideBatcher, runner: _Gated, bundle: LoadedBundle) -> _Calls:
    calls = _Calls(batcher)
    calls.submit("gate", _args(bundle, "gate"))
    assert runner.entered.wait(10)
    return calls


def _rows(state: HubStateStore, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with state.transaction() as tx:
        return tx.execute(sql, params)


def test_requests_queued_together_are_decided_in_one_transaction(env):
    state, bundle, runner, batcher = env
    calls = _gated(batcher, runner, bundle)
    calls.submit("first", _args(bundle, "C-1"))
    calls.submit("bad-input", _args(bundle, "C-2", channel="fax"))
    calls.submit("last", _args(bundle, "C-3"))
    runner.release.set()
    results = calls.join()

    assert runner.batches == [["gate"], ["C-1", "C-2", "C-3"]]
    assert isinstance(results["bad-input"], InputError) and results["bad-input"].field == "channel"
    first, last = results["first"], results["last"]
    assert first.offers and last.offers
    # one transaction: one clock reading for the whole batch, another one for the gate's batch
    assert first.created_at == last.created_at != results["gate"].created_at
    assert {c for (c,) in _rows(state, "SELECT customer_id FROM decisions")} == {"gate", "C-1", "C-3"}
    seqs = [s for (s,) in _rows(state, "SELECT seq FROM hub_events WHERE device_id = ? ORDER BY seq", (APP_SOURCE,))]
    assert seqs == [1, 2, 3]


def test_decisions_for_one_customer_in_one_batch_respect_the_contact_policy(env):
    state, bundle, runner, batcher = env
    calls = _gated(batcher, runner, bundle)
    for n in range(4):
        calls.submit(f"d{n}", _args(bundle, "C-same"))
    runner.release.set()
    results = calls.join()
    assert runner.batches[1] == ["C-same"] * 4
    shows: dict[str, int] = {}
    for n in range(4):
        for offer in results[f"d{n}"].offers:
            if not offer.fallback:
                shows[offer.offer_id] = shows.get(offer.offer_id, 0) + 1
    assert shows and max(shows.values()) == 2  # "at most 2 shows a week", inside one transaction


def test_a_call_whose_client_left_is_not_decided(env):
    state, bundle, runner, batcher = env
    runner.release.set()
    with pytest.raises(DeadlineExceededError) as info:
        batcher.submit(_args(bundle, "C-gone"), is_active=lambda: False)
    assert status_for(info.value)[0] is grpc.StatusCode.DEADLINE_EXCEEDED
    assert runner.batches == []  # nothing reached the hub
    assert _rows(state, "SELECT COUNT(*) FROM decisions") == [(0,)]


def test_close_finishes_queued_work_then_refuses_more(env):
    state, bundle, runner, batcher = env
    calls = _gated(batcher, runner, bundle)
    calls.submit("queued", _args(bundle, "C-q"))
    closer = threading.Thread(target=batcher.close)
    closer.start()
    runner.release.set()
    closer.join(10)
    assert calls.join()["queued"].offers
    with pytest.raises(ShuttingDownError, match="shutting down"):
        batcher.submit(_args(bundle, "C-late"))


def test_a_failing_runner_fails_every_call_of_its_batch_and_the_decider_lives_on(env):
    state, bundle, runner, batcher = env
    runner.fail_with = StateError("the commit failed")
    calls = _gated(batcher, runner, bundle)
    calls.submit("a", _args(bundle, "C-a"))
    calls.submit("b", _args(bundle, "C-b"))
    runner.release.set()
    results = calls.join()
    assert isinstance(results["a"], StateError) and isinstance(results["b"], StateError)
    runner.fail_with = None
    assert batcher.submit(_args(bundle, "C-after")).offers
