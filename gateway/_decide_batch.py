"""Group commit for ``Decide``: calls that arrive together are decided together.

Every ``Decide`` writes to the hub (the decision, its contact history, its event), and on the
SQLite hub every write transaction is serialised by the database's single writer lock. With
several app calls in flight, eight RPC threads queued on that lock, each paying for its own
``BEGIN``/``COMMIT`` and handing the interpreter lock back and forth at every statement, cost
more CPU than the decisions themselves. So the RPC threads hand their decision to one decider
thread and wait; the decider takes everything queued (up to ``max_batch``), runs the decisions
one after the other in **one** hub transaction — each inside its own savepoint, so one failed
decision is rolled back alone — commits once and wakes the callers.

What a caller can rely on is unchanged:

- A decision is answered only after its transaction committed: nothing is reported that a
  crash could lose (beyond the relaxed durability :class:`HubStateStore` documents).
- Decisions of one batch run in arrival order inside one transaction, so the second of two
  decisions for the same customer sees the first one's contacts: a contact policy holds
  inside a batch exactly as across batches. Across replicas (PostgreSQL) the batch holds the
  per-customer advisory locks of all its customers, taken in one fixed order (no deadlock
  between two replicas' batches).
- A call whose deadline passed or whose client went away while it waited is skipped, not
  decided: it changes no state.
- If the commit itself fails, every decision of the batch fails with the commit's error.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from nbo.sdk._errors import NboError, StateError

from ._hub_state import HubStateStore

__all__ = ["DecideBatcher", "Expired"]

log = logging.getLogger("nbo.gateway.decide")

T = TypeVar("T")


class Expired(NboError):
    """The call's deadline passed (or its client left) before its turn came: not decided."""

    grpc_status = "DEADLINE_EXCEEDED"


class _Job(Generic[T]):
    __slots__ = ("customer_id", "done", "error", "fn", "is_active", "result")

    def __init__(self, customer_id: str, fn: Callable[[], T], is_active: Callable[[], bool]) -> None:
        self.customer_id = customer_id
        self.fn = fn
        self.is_active = is_active
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None


class DecideBatcher:
    """One decider thread running queued decisions in shared hub transactions.

    ``submit(customer_id, fn)`` blocks until ``fn`` ran (inside the batch's transaction, on
    the decider thread, where every ``HubStateStore`` transaction the SDK opens joins the
    batch's) and returns its result or raises its exception.
    """

    def __init__(self, state: HubStateStore, *, max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._state = state
        self._max_batch = max_batch
        self._queue: deque[_Job[Any]] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="nbo-decider", daemon=True)
        self._thread.start()

    def submit(self, customer_id: str, fn: Callable[[], T], *, is_active: Callable[[], bool] = lambda: True) -> T:
        """Run ``fn`` in the next batch; its result, or its exception re-raised here."""
        job: _Job[T] = _Job(customer_id, fn, is_active)
        with self._ready:
            if self._closed:
                raise StateError("the gateway is shutting down")
            self._queue.append(job)
            self._ready.notify()
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]  # set whenever error is None

    def queued(self) -> int:
        """Calls waiting for the next batch (not counting the one being decided)."""
        with self._ready:
            return len(self._queue)

    def close(self) -> None:
        """Finish what is queued, then stop the decider thread."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(timeout=30)

    # -- the decider thread ---------------------------------------------------------------

    def _take(self) -> list[_Job[Any]] | None:
        with self._ready:
            while not self._queue:
                if self._closed:
                    return None
                self._ready.wait()
            jobs: list[_Job[Any]] = []
            while self._queue and len(jobs) < self._max_batch:
                jobs.append(self._queue.popleft())
            return jobs

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            try:
                self._run_batch(jobs)
            except BaseException as exc:  # never leave a caller waiting, whatever happened
                log.error("event=decide_batch_failed error=%s", type(exc).__name__)
                for job in jobs:
                    if job.error is None:
                        job.result, job.error = None, exc
            finally:
                for job in jobs:
                    job.done.set()

    def _run_batch(self, jobs: list[_Job[Any]]) -> None:
        live = []
        for job in jobs:
            if job.is_active():
                live.append(job)
            else:
                job.error = Expired("the call's deadline passed before it was decided")
        if not live:
            return
        with self._state.decision_batch([job.customer_id for job in live]) as tx:
            for job in live:
                try:
                    with tx.savepoint():
                        job.result = job.fn()
                except Exception as exc:  # the caller gets it; only this decision was undone
                    job.error = exc
