"""Group commit for ``Decide``: requests that arrive together are decided together.

Every ``Decide`` reads and writes the hub (profile and contact history; the decision, its
contacts, its event), and on the SQLite hub every write transaction is serialised by the
database's single writer lock. Deciding each request in its own transaction, with RPC threads
queued on that lock, costs more CPU than the decisions themselves. So requests are decided in
batches by :func:`decide_batch`: the profiles read for all of them at once in a read view that
takes no write lock, the rules and one model run per model run with no transaction open
(``nbo.sdk.core.prepare_many``), then **one** hub write transaction for the cheap rest — the
contact history, the contact policies, the ranking and the record (``finish_many``) — and
one commit. So a slow rule or model never holds the lock that ``AwardPoints``, pushes and
other decisions need.

:class:`DecideBatcher` feeds it: a decider thread in the serving process takes every queued
request as one batch. A gateway uses more cores by running more serving processes
(``nbo serve --processes N``), each with its own batcher.

What a caller can rely on:

- A decision is answered only after its transaction committed: nothing is reported that a
  crash could lose (beyond the relaxed durability :class:`HubStateStore` documents).
- Requests of one batch for the same customer are decided in arrival order, the second seeing
  the first one's contacts: a contact policy holds inside a batch exactly as across batches.
  Across replicas (PostgreSQL) the batch holds the per-customer advisory locks of all its
  customers, taken in one fixed order (no deadlock between two replicas' batches).
- Each request carries the bundle that was active when its call started, so a hot swap never
  mixes two bundles in one answer.
- A request that fails (bad input, a model error) fails alone. A call whose deadline passed,
  or whose client left, before its batch was taken is not decided and changes no state; one
  whose client left while the batch waited for the hub's write lock is not recorded. If the
  transaction itself fails (a write, the commit), every request of the batch fails with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from nbo.sdk import Decision, StateError
from nbo.sdk.core import (
    DeadlineExceededError,
    LoadedBundle,
    Request,
    ShuttingDownError,
    finish_many,
    prepare_many,
)

from ._hub_state import HubStateStore

__all__ = ["DecideArgs", "DecideBatcher", "Outcome", "Runner", "decide_batch"]

log = logging.getLogger("nbo.gateway.decide")


@dataclass(frozen=True, slots=True)
class DecideArgs:
    """One ``Decide`` request, converted, with the bundle that was active when it arrived."""

    bundle: LoadedBundle
    request: Request
    alive: Callable[[], bool] | None = None
    """Whether the caller still waits (asked right before the decision is recorded)."""

    @property
    def customer_id(self) -> str:
        return self.request.customer_id


Outcome: TypeAlias = Decision | Exception
Runner: TypeAlias = Callable[[Sequence[DecideArgs]], Sequence[Outcome]]
"""Decides a batch: one outcome (the decision, or the exception it raised) per request."""


def decide_batch(state: HubStateStore, batch: Sequence[DecideArgs]) -> list[Decision | Exception]:
    """Decide ``batch``: :func:`nbo.sdk.core.prepare_many` outside, ``finish_many`` in one hub transaction.

    Requests are grouped by the bundle they carry (a hot swap can put two in one batch); a
    request's own error is its outcome; an error of the transaction itself (a read, a write,
    the commit) propagates and none of the batch happened. A request whose caller has gone
    by the time its decision would be recorded (``DecideArgs.alive``) is not recorded.
    """
    outcomes: list[Decision | Exception | None] = [None] * len(batch)
    groups: dict[int, tuple[LoadedBundle, list[int]]] = {}
    for position, args in enumerate(batch):
        groups.setdefault(id(args.bundle), (args.bundle, []))[1].append(position)
    # Rules and models first, with no write lock held: AwardPoints, pushes and the other
    # processes' decisions go on meanwhile. Only the contact policies and the record wait below.
    prepared = [(positions, prepare_many(bundle, state, [batch[p].request for p in positions]))
                for bundle, positions in groups.values()]
    with state.decision_batch([args.customer_id for args in batch]) as tx:
        for positions, ready in prepared:

            def keep(i: int, positions: list[int] = positions) -> bool:
                alive = batch[positions[i]].alive
                return alive is None or alive()

            for position, outcome in zip(positions, finish_many(ready, tx, keep=keep), strict=True):
                outcomes[position] = outcome
    return [o if o is not None else StateError("no decision was made") for o in outcomes]


class _Job:
    __slots__ = ("args", "deadline", "done", "is_active", "outcome")

    def __init__(self, args: DecideArgs, is_active: Callable[[], bool], deadline: float | None) -> None:
        self.args = args
        self.is_active = is_active
        self.deadline = deadline
        self.done = threading.Event()
        self.outcome: Outcome | BaseException | None = None


class DecideBatcher:
    """A decider thread handing the queued requests, a batch at a time, to ``runner``.

    One thread: the runner decides in this process, and a second thread would only wait for
    the hub's writer lock.
    """

    def __init__(self, runner: Runner, *, max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._runner = runner
        self._max_batch = max_batch
        self._queue: deque[_Job] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="nbo-decider", daemon=True)
        self._thread.start()

    def submit(self, args: DecideArgs, *, is_active: Callable[[], bool] = lambda: True,
               deadline: float | None = None) -> Decision:
        """Decide ``args`` in the next batch; the decision, or its exception re-raised here.

        The request is skipped (:class:`DeadlineExceededError`) if, when its batch is taken, ``is_active()``
        is false or the ``deadline`` (epoch seconds) has passed.
        """
        job = _Job(args, is_active, deadline)
        with self._ready:
            if self._closed:
                raise ShuttingDownError("the gateway is shutting down")
            self._queue.append(job)
            self._ready.notify()
        job.done.wait()
        if isinstance(job.outcome, Decision):
            return job.outcome
        if isinstance(job.outcome, BaseException):
            raise job.outcome
        raise StateError("the decider gave no answer")  # pragma: no cover - every job gets an outcome

    def queued(self) -> int:
        """Requests waiting for the next batch (not counting the batch being decided)."""
        with self._ready:
            return len(self._queue)

    def close(self) -> None:
        """Finish what is queued, then stop the decider thread."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        self._thread.join(timeout=60)

    # -- the decider thread ---------------------------------------------------------------

    def _take(self) -> list[_Job] | None:
        with self._ready:
            while not self._queue:
                if self._closed:
                    return None
                self._ready.wait()
            jobs: list[_Job] = []
            while self._queue and len(jobs) < self._max_batch:
                jobs.append(self._queue.popleft())
            return jobs

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            try:
                live = []
                now = time.time()
                for job in jobs:
                    if job.is_active() and (job.deadline is None or now <= job.deadline):
                        live.append(job)
                    else:
                        job.outcome = DeadlineExceededError("the call's deadline passed before it was decided")
                if live:
                    outcomes = self._runner([job.args for job in live])
                    if len(outcomes) != len(live):
                        raise StateError(f"the decider answered {len(outcomes)} of {len(live)} requests")
                    for job, outcome in zip(live, outcomes, strict=True):
                        job.outcome = outcome
            except BaseException as exc:  # never leave a caller waiting, whatever happened
                log.error("event=decide_batch_failed error=%s", type(exc).__name__)
                for job in jobs:
                    if not isinstance(job.outcome, DeadlineExceededError):
                        job.outcome = exc
            finally:
                for job in jobs:
                    job.done.set()
