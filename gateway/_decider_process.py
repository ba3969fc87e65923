"""A decision worker process: the gateway's decisions on a core of their own.

Python runs one thread at a time per process, and on a gateway the gRPC machinery (polling,
parsing, auth, metrics) and the decisions compete for that one interpreter lock. This module
moves the decisions — :func:`gateway._decide_batch.decide_batch` over the hub, the very same
SDK core — into a child process, so the RPC threads and the decider run in parallel.

- **Protocol**: one pipe, one message per batch each way, JSON (orjson) — never pickle. The
  parent sends the requests with the directory of the bundle each one must use (and, the
  first time the child meets a directory, its manifest and identity); the child answers one
  outcome per request: the decision, or the error's class name, message and field, which the
  parent raises again as the same :mod:`nbo.sdk` error type.
- **Bundles**: the parent verifies, extracts and switches bundles (``EngineHost``); the child
  loads a directory on first use and keeps the few most recently used, so in-flight calls
  finish on the bundle they started with and a hot swap fails no call.
- **State**: the child opens the same hub database (SQLite file or PostgreSQL URL) and decides
  through its own :class:`HubStateStore`; events it writes are counted back to the parent's
  metrics.
- **Lifecycle**: started with the server (``spawn``: no fork of a process running gRPC
  threads), it ignores SIGINT/SIGTERM — the parent drains, then closes the pipe and the child
  exits. If it dies, the batch in flight fails with ``StateError`` (UNAVAILABLE, retryable)
  and the next batch starts a new one.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
from nbo.sdk import _errors
from nbo.sdk._errors import NboError, StateError
from nbo.sdk._runtime import LoadedBundle, load_bundle
from nbo.sdk._types import BundleInfo, Decision, Exclusion, RankedOffer

from ._decide_batch import DecideArgs, Outcome, decide_batch

__all__ = ["DecisionProcess"]

log = logging.getLogger("nbo.gateway.decide")

_START_TIMEOUT = 120.0
_KEEP_BUNDLES = 3


def _error_types() -> dict[str, type[NboError]]:
    found: dict[str, type[NboError]] = {}
    pending: list[type[NboError]] = [NboError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.__name__, cls)
        pending.extend(cls.__subclasses__())
    return found


def _error_out(exc: BaseException) -> dict[str, Any]:
    return {"type": type(exc).__name__, "message": str(exc), "field": getattr(exc, "field", None),
            "nbo": isinstance(exc, NboError)}


def _error_in(data: Mapping[str, Any]) -> Exception:
    """The child's error as the same exception type here (a non-nbo one becomes INTERNAL)."""
    cls = _error_types().get(str(data.get("type"))) if data.get("nbo") else None
    if cls is None:
        return RuntimeError(f"decision worker: {data.get('type')}")
    exc = Exception.__new__(cls)
    Exception.__init__(exc, str(data.get("message", "")))
    exc.field = data.get("field")  # type: ignore[attr-defined]  # InputError's attribute, harmless elsewhere
    return exc


def _decision_in(data: Mapping[str, Any]) -> Decision:
    return Decision(
        decision_id=data["decision_id"],
        customer_id=data["customer_id"],
        channel=data["channel"],
        bundle_name=data["bundle_name"],
        bundle_version=data["bundle_version"],
        offers=[RankedOffer(**o) for o in data["offers"]],
        excluded=[Exclusion(**e) for e in data["excluded"]],
        strategy=data["strategy"],
        created_at=data["created_at"],
    )


def _touch(lru: OrderedDict[str, Any], jobs: Sequence[Sequence[Any]]) -> None:
    """Mark the bundle directories of ``jobs`` used and forget the least recently used beyond
    ``_KEEP_BUNDLES``. Parent and child run this on the same messages in the same order, so the
    parent always knows which directories the child still holds (and resends the others).
    """
    for job in jobs:
        if job[0] in lru:
            lru.move_to_end(job[0])
    while len(lru) > _KEEP_BUNDLES:
        lru.popitem(last=False)


class _Link:
    """One incarnation of the worker: its process, its pipe and the batches awaiting answers."""

    def __init__(self, conn: Any, proc: Any) -> None:
        self.conn = conn
        self.proc = proc
        self.held: OrderedDict[str, None] = OrderedDict()  # mirrors the child's loaded bundles
        self.waiting: deque[_Slot] = deque()  # sent batches, in the order their answers come
        self.recv_lock = threading.Lock()
        self.broken: BaseException | None = None


class _Slot:
    __slots__ = ("done", "reply")

    def __init__(self) -> None:
        self.reply: Any = None
        self.done = False


class DecisionProcess:
    """The parent's handle on the decision worker; :meth:`run` is a ``DecideBatcher`` runner.

    Thread-safe, and pipelined: while the worker decides one batch, another decider thread can
    already send the next, so the worker never waits for the parent.
    """

    def __init__(self, *, hub_db: str | None, state_dir: str | Path, hub_schema: str | None = None,
                 on_events: Callable[[int], None] | None = None) -> None:
        self._spec = {"hub_db": hub_db, "state_dir": str(state_dir), "hub_schema": hub_schema}
        self._on_events = on_events
        self._ctx = multiprocessing.get_context("spawn")
        self._send_lock = threading.Lock()
        self._link: _Link | None = self._start()

    @property
    def pid(self) -> int | None:
        """The worker's process id (``None`` when it is not running)."""
        link = self._link
        return None if link is None else link.proc.pid

    def _start(self) -> _Link:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_child_main, args=(child, self._spec), name="nbo-decision-worker",
                                 daemon=True)
        proc.start()
        child.close()
        try:
            if not parent.poll(_START_TIMEOUT):
                raise StateError(f"the decision worker did not start within {_START_TIMEOUT:.0f} s")
            hello = orjson.loads(parent.recv_bytes())
        except (EOFError, OSError) as exc:
            proc.join(5)
            raise StateError(f"the decision worker exited while starting (exit code {proc.exitcode})") from exc
        except BaseException:
            proc.kill()
            raise
        if "error" in hello:
            proc.join(5)
            raise _error_in(hello["error"])
        return _Link(parent, proc)

    def run(self, batch: Sequence[DecideArgs]) -> list[Outcome]:
        """Decide ``batch`` in the worker; one outcome per request, in order."""
        slot = _Slot()
        with self._send_lock:
            link = self._link
            if link is None or link.broken is not None or not link.proc.is_alive():
                if link is not None:
                    self._break(link, StateError("the decision worker stopped"))
                link = self._link = self._start()  # a new worker for this batch
            bundles: dict[str, Any] = {}
            jobs = []
            for args in batch:
                directory = str(args.bundle.directory)
                if directory not in link.held and directory not in bundles:
                    bundles[directory] = {"manifest": args.bundle.manifest, "info": asdict(args.bundle.info)}
                    link.held[directory] = None
                jobs.append([directory, args.customer_id, args.channel, args.context, args.profile, args.limit,
                             args.explain])
            _touch(link.held, jobs)
            link.waiting.append(slot)
            try:
                link.conn.send_bytes(orjson.dumps({"bundles": bundles, "jobs": jobs}))
            except (OSError, ValueError) as exc:
                self._break(link, exc)
        self._await(link, slot)
        reply = slot.reply
        if isinstance(reply, BaseException):
            raise StateError("the decision worker stopped; retry the call") from reply
        if "error" in reply:
            raise _error_in(reply["error"])  # the batch's transaction failed: nothing of it happened
        if reply.get("events") and self._on_events is not None:
            self._on_events(int(reply["events"]))
        return [_decision_in(r["decision"]) if "decision" in r else _error_in(r["error"]) for r in reply["results"]]

    def _await(self, link: _Link, slot: _Slot) -> None:
        """Read answers (they come in send order) until ``slot``'s has come."""
        with link.recv_lock:
            while not slot.done:
                try:
                    reply = orjson.loads(link.conn.recv_bytes())
                except (EOFError, OSError, ValueError) as exc:
                    self._break(link, exc)
                    return
                head = link.waiting.popleft()
                head.reply, head.done = reply, True

    def _break(self, link: _Link, exc: BaseException) -> None:
        """The link is unusable: every batch still waiting on it fails with ``exc``."""
        if link.broken is None:
            link.broken = exc
            log.error("event=decision_worker_lost exit_code=%s error=%s", link.proc.exitcode, type(exc).__name__)
        while link.waiting:
            head = link.waiting.popleft()
            head.reply, head.done = exc, True
        link.conn.close()

    def close(self) -> None:
        """Stop the worker (after the batcher drained): close the pipe, the worker exits."""
        with self._send_lock:
            link, self._link = self._link, None
        if link is None:
            return
        link.conn.close()
        link.proc.join(10)
        if link.proc.is_alive():
            link.proc.kill()
            link.proc.join(5)


# -- the child ----------------------------------------------------------------------------------


def _child_main(conn: Any, spec: Mapping[str, Any]) -> None:
    # The parent decides when this process ends (it closes the pipe after draining).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from ._hub import HubStore
    from ._hub_state import HubStateStore

    events = [0]

    def count(batch: Sequence[Any]) -> None:
        events[0] += len(batch)

    try:
        hub = HubStore.open(spec["hub_db"], state_dir=spec["state_dir"], schema=spec["hub_schema"])
        state = HubStateStore(hub, on_events=count)
    except BaseException as exc:
        conn.send_bytes(orjson.dumps({"error": _error_out(exc)}))
        return
    conn.send_bytes(orjson.dumps({"ready": True}))
    loaded: OrderedDict[str, LoadedBundle | Exception] = OrderedDict()
    try:
        while True:
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                return
            message = orjson.loads(data)
            for directory, meta in message["bundles"].items():
                try:
                    info = BundleInfo(**{**meta["info"], "models": tuple(meta["info"].get("models", ()))})
                    loaded[directory] = load_bundle(Path(directory), meta["manifest"], info)
                except Exception as exc:  # the requests that name it fail with this error
                    loaded[directory] = exc if isinstance(exc, NboError) else _errors.BundleError(str(exc))
            outcomes: list[Outcome | None] = []
            batch: list[DecideArgs] = []
            for directory, cid, channel, context, profile, limit, explain in message["jobs"]:
                bundle = loaded.get(directory)
                if bundle is None:  # cannot happen while parent and child agree (see _touch)
                    bundle = StateError("the decision worker does not hold this bundle; retry the call")
                if isinstance(bundle, Exception):
                    outcomes.append(bundle)
                    continue
                outcomes.append(None)
                batch.append(DecideArgs(bundle=bundle, customer_id=cid, channel=channel, context=context,
                                        profile=profile, limit=limit, explain=explain))
            _touch(loaded, message["jobs"])  # the batch holds its own references
            events[0] = 0
            try:
                decided = iter(decide_batch(state, batch))
            except Exception as exc:
                conn.send_bytes(orjson.dumps({"error": _error_out(exc)}))
                continue
            results = []
            for outcome in outcomes:
                outcome = next(decided) if outcome is None else outcome
                results.append({"decision": outcome} if isinstance(outcome, Decision) else {"error": _error_out(outcome)})
            conn.send_bytes(orjson.dumps({"results": results, "events": events[0]}))
    finally:
        state.close()
        hub.close()
