"""The gateway's decision worker process (gateway/_decider_process.py), with real processes.

A worker killed while idle or while calls wait on it, more bundle versions than the worker
keeps loaded (the parent's mirror of its cache, manifests sent again), errors crossing the
process boundary as the same nbo types, SIGTERM ignored and ``close()`` ending the worker,
and the ``[decisions] worker_process`` switch — on the SQLite hub, and on PostgreSQL where the
backend matters (what the worker writes, or does not write, to the hub).

Nothing here depends on timing: a call is known to wait on the worker because the worker is
stopped (SIGSTOP) and the parent lists the call as waiting; a killed worker is known to be
dead (its socket closed) once it can be waited for. Worker processes are found as children of
this process whose command line runs ``nbo.gateway._decider_process`` for the test's state
directory.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from bundle_fixtures import make_bundle, make_model, small_catalog
from gateway_helpers import (
    APP,
    DecideCalls,
    Gateway,
    bundle_kit,
    config_data,
    publish,
    running_gateway,
)
from nbo.gateway import EngineHost, GatewayServer, HubStore, create_server, parse_config
from nbo.gateway._db import open_database
from nbo.gateway._decide_batch import DecideArgs, EncodedDecision, Expired
from nbo.gateway._decider_process import _KEEP_BUNDLES, DecisionProcess
from nbo.sdk import ConfigError, InputError, ManualClock, StateError
from nbo.sdk.core import LoadedBundle, Request
from nbo.v1 import decision_pb2
from sync_helpers import hub_backend, postgres_url, unique_schema

BACKENDS = ("sqlite", "postgresql")
VERSIONS = (1, 2, 3, 4, 5)
WORKER_MODULE = b"nbo.gateway._decider_process"


# -- processes ----------------------------------------------------------------------------------


def _state(pid: int) -> str | None:
    """The process state letter (R, S, T, Z, ...), or None once it is gone (reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _children() -> dict[int, list[bytes]]:
    """The live (not zombie) children of this process, of any of its threads, with their argv."""
    found: dict[int, list[bytes]] = {}
    for listing in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        try:
            pids = [int(p) for p in listing.read_text().split()]
        except OSError:  # the thread ended meanwhile
            continue
        for pid in pids:
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if _state(pid) not in (None, "Z"):
                found[pid] = argv
    return found


def _workers(state_dir: Path) -> set[int]:
    """Pids of the live decision workers started for ``state_dir`` (its path is in their argv)."""
    marker = str(state_dir).encode()
    return {pid for pid, argv in _children().items()
            if WORKER_MODULE in argv and any(marker in arg for arg in argv)}


def _the_worker(state_dir: Path) -> int:
    pids = _workers(state_dir)
    assert len(pids) == 1, f"expected one decision worker for {state_dir}, found {pids}"
    return pids.pop()


def _wait_until(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def _dead(pid: int) -> bool:
    """Whether every thread of child ``pid`` has exited, so its sockets are closed; it is left for
    its parent to reap. (A zombie leader alone is not enough: its other threads, and with them
    the worker's end of the socket, may still be on their way out.)"""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # already reaped
        return True


def _kill(pid: int) -> None:
    """SIGKILL the worker ``pid`` and wait until it is wholly dead (not reaped)."""
    os.kill(pid, signal.SIGKILL)
    _wait_until(lambda: _dead(pid), f"worker {pid} died")


def _stop(pid: int) -> None:
    os.kill(pid, signal.SIGSTOP)
    _wait_until(lambda: _state(pid) == "T", f"worker {pid} stopped")


def _process_of(worker: DecisionProcess) -> subprocess.Popen[bytes]:
    """The worker process running now, for the test to reap after killing it.

    After a kill, the caller that reads EOF polls the process for its log line, but the EOF can
    arrive before the worker's last thread has exited; that poll then finds nothing to reap and
    nothing waits for the process again, so its ``Popen`` warns "still running" (a
    ResourceWarning: an error in this suite) whenever it is collected.
    """
    link = worker._link
    assert link is not None
    proc: subprocess.Popen[bytes] = link.proc
    return proc


def _waiting(worker: DecisionProcess) -> int:
    """Calls the parent has sent to the worker and not yet had answered."""
    link = worker._link
    return 0 if link is None else len(link.waiting)


def _decider_of(server: GatewayServer) -> DecisionProcess:
    """The gateway's worker handle."""
    assert isinstance(server.decider, DecisionProcess), server.decider
    return server.decider


# -- bundles and hubs ---------------------------------------------------------------------------


@dataclass
class Kit:
    pub: Path
    bundles: dict[int, Path]
    """Bundle "small" at each of VERSIONS (signed zip files)."""
    loaded: dict[int, LoadedBundle]
    """The same versions staged (verified, extracted, loaded), each in a directory of its own that
    stays on disk: nothing is committed, so nothing is swept."""


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> Kit:
    root = tmp_path_factory.mktemp("worker-kit")
    keys = bundle_kit(root)
    catalog = small_catalog()
    catalog["exploration"] = {"epsilon": 0.0}
    model = make_model(root / "model" / "propensity.onnx")  # one model for every version: faster
    bundles = {v: make_bundle(root / f"v{v}", key=keys.key, version=v, catalog=catalog,
                              models={"propensity": model}) for v in VERSIONS}
    engine = EngineHost(root / "staged", trusted_keys=[keys.pub])
    loaded = {v: engine.stage(path)[1] for v, path in bundles.items()}
    assert len({b.directory for b in loaded.values()}) == len(VERSIONS)
    return Kit(pub=keys.pub, bundles=bundles, loaded=loaded)


def _args(bundle: LoadedBundle, customer: str, *, channel: str = "pos") -> DecideArgs:
    return DecideArgs(bundle, Request(customer, channel, None, None, 3, False))


def _version(outcome: Any) -> int:
    """The bundle version a worker's answer reports (its label and the wire message agree)."""
    assert isinstance(outcome, EncodedDecision), outcome
    response = decision_pb2.DecideResponse.FromString(outcome.data)
    assert outcome.bundle == f"{response.bundle_name}:{response.bundle_version}"
    return response.bundle_version


def _decisions_of(hub: HubStore, customer: str) -> int:
    with hub.db.transaction() as tx:
        ((count,),) = tx.execute("SELECT COUNT(*) FROM decisions WHERE customer_id = ?", (customer,))
    return int(count)


def cid() -> str:
    return f"cust-{uuid.uuid4().hex[:12]}"


@dataclass
class Direct:
    """A DecisionProcess of the test's own, over a hub the test can read."""

    worker: DecisionProcess
    hub: HubStore
    state_dir: Path


@contextmanager
def direct_worker(kind: str, state_dir: Path) -> Iterator[Direct]:
    with hub_backend(kind, state_dir) as (hub, url, schema):
        worker = DecisionProcess(hub_db=url, state_dir=state_dir, hub_schema=schema)
        try:
            yield Direct(worker=worker, hub=hub, state_dir=state_dir)
        finally:
            worker.close()


@pytest.fixture(scope="module", params=BACKENDS)
def shared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Direct]:
    """One worker per backend for the tests that leave it running."""
    with direct_worker(request.param, tmp_path_factory.mktemp(f"direct-{request.param}")) as direct:
        yield direct


@contextmanager
def started_gateway(kind: str, state_dir: Path, kit: Kit) -> Iterator[Gateway]:
    """A gateway with the default configuration (decision worker on), on ``kind``'s hub."""
    url = schema = None
    if kind == "postgresql":
        url, schema = postgres_url(), unique_schema()
    try:
        with running_gateway(state_dir, config_data(trusted_key=kit.pub, hub_db=url), hub_schema=schema) as gw:
            yield gw
    finally:
        if url is not None:
            db = open_database(url, schema=schema)
            db.drop_schema()  # type: ignore[attr-defined]
            db.close()


@pytest.fixture(scope="module")
def gw(kit: Kit, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One SQLite gateway serving v1, for the tests that leave it serving (possibly on a new worker)."""
    with started_gateway("sqlite", tmp_path_factory.mktemp("gw"), kit) as started:
        assert publish(started, kit.bundles[1]).accepted
        yield started


def _decide(gw: Gateway, customer: str, *, channel: str = "pos", timeout: float = 30) -> decision_pb2.DecideResponse:
    response: decision_pb2.DecideResponse = gw.decision.Decide(
        decision_pb2.DecideRequest(customer_id=customer, channel=channel), metadata=APP, timeout=timeout)
    return response


# -- 1. a worker that died while idle ------------------------------------------------------------


def test_a_worker_killed_while_idle_is_replaced_and_no_call_fails(
        gw: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    assert _decide(gw, cid()).bundle_version == 1
    old = _the_worker(gw.state_dir)
    assert _decider_of(gw.server).pid == old  # the process found in /proc is the gateway's worker
    _kill(old)

    # The first call finds the socket dead and resends to a new worker; the others queue behind it.
    calls = [gw.decision.Decide.future(decision_pb2.DecideRequest(customer_id=cid(), channel="pos"), metadata=APP,
                                       timeout=30) for _ in range(8)]
    assert [c.result().bundle_version for c in calls] == [1] * 8
    new = _the_worker(gw.state_dir)
    assert new != old
    assert _state(old) is None  # the dead worker was reaped, not left as a zombie
    assert _decide(gw, cid()).bundle_version == 1
    assert _the_worker(gw.state_dir) == new
    lost = [r for r in caplog.records if "decision_worker_lost" in r.getMessage()]
    assert len(lost) == 1 and "BrokenPipeError" in lost[0].getMessage()  # found by the resend, once
    assert not [r for r in caplog.records if "rpc_failed" in r.getMessage()]


# -- 2. a worker that died while calls waited on it -------------------------------------------


def test_calls_waiting_on_a_killed_worker_fail_retryably_and_the_next_call_succeeds(
        kit: Kit, tmp_path: Path) -> None:
    with direct_worker("sqlite", tmp_path / "state") as direct:
        worker, bundle = direct.worker, kit.loaded[1]
        assert _version(worker.submit(_args(bundle, "warm-up"))) == 1
        old = worker.pid
        assert old is not None and _workers(direct.state_dir) == {old}
        old_process = _process_of(worker)
        _stop(old)
        calls = DecideCalls(worker)
        for n in range(6):
            calls.submit(f"c{n}", _args(bundle, f"waiting-{n}"))
        _wait_until(lambda: _waiting(worker) == 6, "all six calls wait on the stopped worker")
        _kill(old)

        results = calls.join()
        assert old_process.wait(10) == -signal.SIGKILL
        assert all(isinstance(r, StateError) and "retry" in str(r) for r in results.values()), results
        assert all(_decisions_of(direct.hub, f"waiting-{n}") == 0 for n in range(6))  # none was decided

        assert _version(worker.submit(_args(bundle, "after"))) == 1
        assert worker.pid not in (None, old) and _workers(direct.state_dir) == {worker.pid}
        assert _decisions_of(direct.hub, "after") == 1


def test_over_grpc_calls_waiting_on_a_killed_worker_are_unavailable_and_the_next_one_succeeds(
        gw: Gateway) -> None:
    _decide(gw, cid())
    decider, old = _decider_of(gw.server), _the_worker(gw.state_dir)
    old_process = _process_of(decider)
    _stop(old)
    calls = [gw.decision.Decide.future(decision_pb2.DecideRequest(customer_id=cid(), channel="pos"), metadata=APP,
                                       timeout=30) for _ in range(4)]
    _wait_until(lambda: _waiting(decider) == 4, "the four calls wait on the stopped worker")
    _kill(old)

    for call in calls:
        with pytest.raises(grpc.RpcError) as info:
            call.result()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "retry" in (info.value.details() or "")
    assert old_process.wait(10) == -signal.SIGKILL
    assert _decide(gw, cid()).bundle_version == 1
    assert _the_worker(gw.state_dir) != old


# -- 3. more bundle versions than the worker keeps --------------------------------------------


@pytest.mark.parametrize("kind", BACKENDS)
def test_publishing_five_versions_in_turn_every_decision_uses_the_active_one(
        kind: str, kit: Kit, tmp_path: Path) -> None:
    with started_gateway(kind, tmp_path / "gw", kit) as gw:
        engine = gw.server.engine
        assert engine is not None
        seen: list[tuple[int, int]] = []
        for version in VERSIONS:
            response = publish(gw, kit.bundles[version])
            assert response.accepted and response.version == version
            assert engine.require().info.version == version
            if version == 1:
                worker = _the_worker(gw.state_dir)
            seen += [(version, _decide(gw, f"c{n}").bundle_version) for n in range(3)]
        seen += [(VERSIONS[-1], _decide(gw, f"c{n}").bundle_version) for n in range(3)]
        assert [got for _, got in seen] == [active for active, _ in seen]
        assert _the_worker(gw.state_dir) == worker  # no worker was lost on the way


def test_alternating_old_and_new_bundle_directories_resends_what_the_worker_forgot(
        shared: Direct, kit: Kit) -> None:
    worker = shared.worker
    order = [1, 2, 3, 4, 1, 5, 2, 1, 3, 4, 5, 1, 2]
    assert len(set(order)) > _KEEP_BUNDLES
    got = [_version(worker.submit(_args(kit.loaded[v], cid()))) for v in order]
    assert got == order
    link = worker._link
    assert link is not None
    # The parent's mirror of the worker's cache: the last _KEEP_BUNDLES directories used, oldest first.
    recent = list(dict.fromkeys(reversed(order)))[:_KEEP_BUNDLES][::-1]
    assert list(link.held) == [str(kit.loaded[v].directory) for v in recent]


def test_concurrent_calls_on_many_bundle_versions_each_get_their_own(shared: Direct, kit: Kit) -> None:
    rng = random.Random(7)
    plan = [rng.choice(VERSIONS) for _ in range(48)]
    calls = DecideCalls(shared.worker)
    for n, version in enumerate(plan):
        calls.submit(str(n), _args(kit.loaded[version], cid()))
    results = calls.join()
    assert [_version(results[str(n)]) for n in range(len(plan))] == plan


def test_requests_waiting_on_the_socket_are_decided_as_one_batch(shared: Direct, kit: Kit) -> None:
    worker = shared.worker
    before = worker.submit(_args(kit.loaded[1], cid()))
    pid = worker.pid
    assert pid is not None
    _stop(pid)
    calls = DecideCalls(worker)
    try:
        for n in range(5):
            calls.submit(str(n), _args(kit.loaded[1], cid()))
        _wait_until(lambda: _waiting(worker) == 5, "five calls wait on the stopped worker")
    finally:
        os.kill(pid, signal.SIGCONT)
    results = calls.join()
    created = {decision_pb2.DecideResponse.FromString(r.data).created_at.ToNanoseconds() for r in results.values()}
    # one transaction: one clock reading for all five, another one for the call before them
    assert len(created) == 1
    assert created != {decision_pb2.DecideResponse.FromString(before.data).created_at.ToNanoseconds()}


# -- 4. errors cross the process boundary typed -----------------------------------------------


def test_an_unknown_channel_is_an_input_error_naming_channel(shared: Direct, kit: Kit) -> None:
    customer = cid()
    with pytest.raises(InputError) as info:
        shared.worker.submit(_args(kit.loaded[1], customer, channel="fax"))
    assert type(info.value) is InputError and info.value.field == "channel"
    assert _decisions_of(shared.hub, customer) == 0
    assert _version(shared.worker.submit(_args(kit.loaded[1], customer))) == 1  # the worker carries on


def test_over_grpc_an_unknown_channel_is_invalid_argument_naming_channel(gw: Gateway) -> None:
    with pytest.raises(grpc.RpcError) as info:
        _decide(gw, cid(), channel="fax")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "channel" in (info.value.details() or "")


def test_a_request_whose_deadline_passed_is_expired_and_decides_nothing(shared: Direct, kit: Kit) -> None:
    late, on_time = cid(), cid()
    with pytest.raises(Expired):
        shared.worker.submit(_args(kit.loaded[1], late), deadline=time.time() - 1)
    _version(shared.worker.submit(_args(kit.loaded[1], on_time), deadline=time.time() + 60))
    assert _decisions_of(shared.hub, late) == 0
    assert _decisions_of(shared.hub, on_time) == 1


def test_over_grpc_a_call_that_timed_out_while_queued_is_not_decided(gw: Gateway) -> None:
    _decide(gw, cid())
    decider, pid = _decider_of(gw.server), _the_worker(gw.state_dir)
    late = cid()
    _stop(pid)
    try:
        call = gw.decision.Decide.future(decision_pb2.DecideRequest(customer_id=late, channel="pos"), metadata=APP,
                                         timeout=0.5)
        _wait_until(lambda: _waiting(decider) == 1, "the call waits on the stopped worker")
        with pytest.raises(grpc.RpcError) as info:
            call.result()
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        os.kill(pid, signal.SIGCONT)
    after = cid()
    _decide(gw, after)  # answered after the late request, which the worker took first
    assert _decisions_of(gw.server.hub, after) == 1
    assert _decisions_of(gw.server.hub, late) == 0
    assert _the_worker(gw.state_dir) == pid


# -- 5. signals and close ----------------------------------------------------------------------


def _ignored_signals(pid: int) -> set[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            mask = int(line.split()[1], 16)
            return {n for n in range(1, 65) if mask & (1 << (n - 1))}
    raise AssertionError("no SigIgn line")


def test_sigterm_to_the_worker_alone_is_ignored_and_close_ends_it(kit: Kit, tmp_path: Path) -> None:
    with direct_worker("sqlite", tmp_path / "state") as direct:
        worker = direct.worker
        pid = worker.pid
        assert pid is not None
        assert {signal.SIGTERM, signal.SIGINT} <= _ignored_signals(pid)
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGINT)
        assert _version(worker.submit(_args(kit.loaded[2], cid()))) == 2
        assert worker.pid == pid and _state(pid) not in (None, "Z")

        started = time.monotonic()
        worker.close()
        assert time.monotonic() - started < 5
        assert _state(pid) is None  # exited and reaped
        assert worker.pid is None and not _workers(direct.state_dir)
        with pytest.raises(StateError):
            worker.submit(_args(kit.loaded[2], cid()))


# -- 6. configuration ---------------------------------------------------------------------------


def _config(kit: Kit, state: Path, **decisions: Any) -> Any:
    extra = {"decisions": decisions} if decisions else None
    return parse_config(config_data(trusted_key=kit.pub, extra=extra), base_dir=state)


def test_worker_process_false_decides_in_process(kit: Kit, tmp_path: Path) -> None:
    before = set(_children())
    server, port = create_server(_config(kit, tmp_path, worker_process=False), state_dir=tmp_path)
    try:
        assert set(_children()) == before
        server.start()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            gw = Gateway(server=server, port=port, channel=channel, state_dir=tmp_path)
            assert publish(gw, kit.bundles[3]).accepted
            assert _decide(gw, cid()).bundle_version == 3
        assert set(_children()) == before
    finally:
        server.stop(grace=2).wait(10)


def test_worker_process_must_be_a_boolean(kit: Kit, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"decisions\.worker_process"):
        _config(kit, tmp_path, worker_process="yes")


def test_a_decision_worker_cannot_share_an_injected_clock(kit: Kit, tmp_path: Path) -> None:
    before = set(_children())
    with pytest.raises(ConfigError, match="clock"):
        create_server(_config(kit, tmp_path), state_dir=tmp_path, clock=ManualClock(), decision_worker=True)
    assert set(_children()) == before
    # Without the explicit request, an injected clock means deciding in-process.
    server, _ = create_server(_config(kit, tmp_path), state_dir=tmp_path, clock=ManualClock())
    try:
        assert set(_children()) == before
    finally:
        server.stop(grace=0).wait(10)


def test_the_hub_url_never_reaches_the_process_list(tmp_path: Path) -> None:
    """A PostgreSQL URL may hold a password: the worker gets it over its socket, not in argv."""
    secret = f"sqlite:{tmp_path / 'hub-s3cr3t.sqlite'}"
    hub = HubStore.open(secret, state_dir=tmp_path / "state")
    worker = DecisionProcess(hub_db=secret, state_dir=tmp_path / "state")
    try:
        assert worker.pid is not None
        argv = Path(f"/proc/{worker.pid}/cmdline").read_bytes()
        assert b"s3cr3t" not in argv and str(tmp_path / "state").encode() in argv
    finally:
        worker.close()
        hub.close()
