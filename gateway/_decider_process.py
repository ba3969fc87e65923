"""A decision worker process: the gateway's decisions on a core of their own.

Python runs one thread at a time per process, and on a gateway the gRPC machinery (polling,
parsing, auth, metrics) and the decisions compete for that one interpreter lock. This module
moves the decisions — :func:`gateway._decide_batch.decide_batch` over the hub, the very same
SDK core — into a child process, so the RPC threads and the decider run in parallel.

- **Protocol**: one socket, one message per batch each way — JSON (orjson) and protobuf, never
  pickle. The parent sends the requests with the directory of the bundle each one must use
  (and, the first time the child meets a directory, its manifest and identity); the child
  answers one outcome per request: the serialized ``DecideResponse``, which the parent hands
  to gRPC as it is, or the error's class name, message and field, which the parent raises
  again as the same :mod:`nbo.sdk` error type.
- **Bundles**: the parent verifies, extracts and switches bundles (``EngineHost``); the child
  loads a directory on first use and keeps the few most recently used, so in-flight calls
  finish on the bundle they started with and a hot swap fails no call.
- **State**: the child opens the same hub database (SQLite file or PostgreSQL URL) and decides
  through its own :class:`HubStateStore`; events it writes are counted back to the parent's
  metrics.
- **Lifecycle**: started with the server as a fresh interpreter (``python -m``; no fork of a
  process running gRPC threads, no pickled arguments), it ignores SIGINT/SIGTERM — the parent drains, then closes the pipe and the child
  exits. If it dies, the batch in flight fails with ``StateError`` (UNAVAILABLE, retryable)
  and the next batch starts a new one.
"""

from __future__ import annotations

import itertools
import logging
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson
from nbo.sdk import BundleError, BundleInfo, Decision, NboError, StateError
from nbo.sdk.core import LoadedBundle, Request, load_bundle

from ._decide_batch import DecideArgs, EncodedDecision, Expired, Outcome, decide_batch

__all__ = ["DecisionProcess"]

log = logging.getLogger("nbo.gateway.decide")

_START_TIMEOUT = 120.0
_KEEP_BUNDLES = 3
_MAX_BATCH = 32


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


_HEADER = struct.Struct(">I")


def _frame(header: Mapping[str, Any], blobs: Sequence[bytes] = ()) -> bytes:
    """One message: the JSON header's length, the header, then the encoded answers it sizes."""
    text = orjson.dumps(header)
    return b"".join((_HEADER.pack(len(text)), text, *blobs))


def _unframe(data: bytes) -> dict[str, Any]:
    """A message as its header, with each ``size`` result replaced by its answer (or error)."""
    (length,) = _HEADER.unpack_from(data)
    offset = _HEADER.size + length
    header: dict[str, Any] = orjson.loads(data[_HEADER.size:offset])
    results: list[Outcome] = []
    for result in header.get("results", ()):
        if "size" in result:
            end = offset + int(result["size"])
            results.append(EncodedDecision(bundle=str(result["bundle"]), data=data[offset:end]))
            offset = end
        else:
            results.append(_error_in(result["error"]))
    if "results" in header:
        header["results"] = results
    return header


class _Wire:
    """Length-prefixed messages over a stream socket, read through a buffer.

    One ``recv`` system call brings in every message already sent, so a batch of requests (or
    of answers) costs one read, not two per message as ``multiprocessing.Connection`` does.
    Sends are whole messages (callers serialise them).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def send_bytes(self, data: bytes) -> None:
        self._sock.sendall(_HEADER.pack(len(data)) + data)

    def _message(self) -> bytes | None:
        if len(self._buf) < _HEADER.size:
            return None
        (size,) = _HEADER.unpack_from(self._buf)
        end = _HEADER.size + size
        if len(self._buf) < end:
            return None
        data = bytes(self._buf[_HEADER.size:end])
        del self._buf[:end]
        return data

    def recv_bytes(self) -> bytes:
        """The next message (blocking); ``EOFError`` when the other side closed."""
        while True:
            data = self._message()
            if data is not None:
                return data
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                raise EOFError("the other side closed the connection")
            self._buf += chunk

    def poll(self, timeout: float = 0.0) -> bool:
        """Whether a whole message can be read now, waiting up to ``timeout`` seconds for one.

        With no timeout it costs at most one non-blocking read (none when one is buffered).
        """
        if self._message_ready():
            return True
        deadline = time.monotonic() + timeout
        while True:
            try:
                if timeout > 0:
                    ready, _, _ = select.select([self._sock], [], [], max(0.0, deadline - time.monotonic()))
                    if not ready:
                        return False
                chunk = self._sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                return True  # the other side closed: recv_bytes will say so
            if chunk:
                self._buf += chunk
                if self._message_ready():
                    return True
            if time.monotonic() >= deadline:
                return False

    def _message_ready(self) -> bool:
        if len(self._buf) < _HEADER.size:
            return False
        (size,) = _HEADER.unpack_from(self._buf)
        return len(self._buf) >= _HEADER.size + size

    def close(self) -> None:
        self._sock.close()


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
    """One incarnation of the worker: its process, its socket and the calls awaiting answers."""

    def __init__(self, conn: Any, proc: Any) -> None:
        self.conn = conn
        self.proc = proc
        self.held: OrderedDict[str, None] = OrderedDict()  # mirrors the child's loaded bundles
        self.waiting: dict[int, _Call] = {}
        self.lock = threading.Lock()  # guards waiting, broken and every call's done/signaled
        self.reading = threading.Lock()  # held by the caller that currently reads answers
        self.broken: BaseException | None = None


class _Call:
    """One waiting call. ``wake`` is a plain lock, taken at birth and released to wake the
    caller (the cheapest wake-up Python has); ``signaled`` (under the link's lock) keeps it
    from being released twice."""

    __slots__ = ("done", "outcome", "signaled", "wake")

    def __init__(self) -> None:
        self.wake = threading.Lock()
        self.wake.acquire()
        self.signaled = False
        self.done = False
        self.outcome: Outcome | BaseException | None = None

    def signal(self) -> None:
        """Wake the caller (to take its answer, or to take over reading). Under the link's lock."""
        if not self.signaled:
            self.signaled = True
            self.wake.release()

    def finish(self, outcome: Outcome | BaseException) -> None:
        """The answer. Under the link's lock."""
        self.outcome, self.done = outcome, True
        self.signal()


class DecisionProcess:
    """The parent's handle on the decision worker, shared by all RPC threads.

    An RPC thread sends its request itself and waits; the waiting callers take turns reading
    the answers (:meth:`_await`). The worker takes every request that has arrived as one batch
    (group commit), so no thread of this process stands between a call and the worker.
    """

    def __init__(self, *, hub_db: str | None, state_dir: str | Path, hub_schema: str | None = None,
                 on_events: Callable[[int], None] | None = None) -> None:
        self._state_dir = str(state_dir)
        self._spec = {"hub_db": hub_db, "state_dir": self._state_dir, "hub_schema": hub_schema}
        self._on_events = on_events
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed = False
        self._link: _Link | None = self._start()

    @property
    def pid(self) -> int | None:
        """The worker's process id (``None`` when it is not running)."""
        link = self._link
        return None if link is None else int(link.proc.pid)

    def _start(self) -> _Link:
        # A plain child interpreter (not multiprocessing: no pickled arguments, no re-import of
        # the caller's main script), talking over one socket pair passed as a file descriptor.
        ours, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                # the state directory only names the gateway the worker serves (in `ps`)
                [sys.executable, "-m", __name__, str(theirs.fileno()), self._state_dir],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True,
            )
        except OSError as exc:
            ours.close()
            raise StateError(f"cannot start the decision worker: {exc}") from exc
        finally:
            theirs.close()
        conn = _Wire(ours)
        try:
            # The hub URL may hold a password: it goes over the socket, never on the command
            # line (which every local user can read in the process list).
            conn.send_bytes(orjson.dumps(self._spec))
            if not conn.poll(_START_TIMEOUT):
                raise StateError(f"the decision worker did not start within {_START_TIMEOUT:.0f} s")
            hello = _unframe(conn.recv_bytes())
        except (EOFError, OSError) as exc:
            conn.close()
            code = proc.wait(10)
            raise StateError(f"the decision worker exited while starting (exit code {code})") from exc
        except BaseException:
            conn.close()
            proc.kill()
            proc.wait(10)
            raise
        if "error" in hello:
            conn.close()
            proc.wait(10)
            raise _error_in(hello["error"])
        return _Link(conn, proc)

    def submit(self, args: DecideArgs, *, is_active: Callable[[], bool] = lambda: True,
               deadline: float | None = None) -> Decision | EncodedDecision:
        """Decide ``args`` in the worker: the decision, or its exception re-raised here.

        ``deadline`` (epoch seconds): the worker skips the request if its turn comes later
        (:class:`Expired`, nothing decided). ``is_active`` is checked before sending.
        """
        if not is_active():
            raise Expired("the call ended before it was decided")
        call = _Call()
        directory = str(args.bundle.directory)
        link: _Link
        with self._send_lock:
            if self._closed:
                raise StateError("the gateway is shutting down")
            for attempt in (1, 2):
                current = self._link
                if current is None or current.broken is not None:  # a dead worker breaks its link (EOF)
                    current = self._link = self._start()
                link = current
                bundle = None
                if directory not in link.held:
                    bundle = {"manifest": args.bundle.manifest, "info": asdict(args.bundle.info)}
                    link.held[directory] = None
                job = [directory, *args.request]
                _touch(link.held, [job])
                call_id = next(self._ids)
                with link.lock:
                    link.waiting[call_id] = call
                try:
                    link.conn.send_bytes(orjson.dumps({"id": call_id, "job": job, "bundle": bundle,
                                                       "deadline": deadline}))
                    break
                except OSError as exc:
                    # The worker is gone (it died while idle): the request never reached one, so
                    # it is sent once more to a new worker; the break fails only this attempt.
                    with link.lock:
                        link.waiting.pop(call_id, None)
                    self._break(link, exc)
                    if attempt == 2:
                        raise StateError("the decision worker stopped; retry the call") from exc
        self._await(link, call)
        outcome = call.outcome
        if isinstance(outcome, Decision | EncodedDecision):
            return outcome
        if isinstance(outcome, BaseException):
            raise outcome
        raise StateError("the decision worker gave no answer")  # pragma: no cover

    def _await(self, link: _Link, call: _Call) -> None:
        """Wait for ``call``'s answer — reading answers for everyone while no one else does.

        Leader/follower: the one caller holding ``link.reading`` reads the socket and hands
        out the answers (its own included); the others sleep on their own lock. A leader that
        got its answer wakes one waiting caller to take over, so there is always a reader
        while anyone waits, and no thread is woken only to pass an answer on.
        """
        while not call.done:
            if link.reading.acquire(blocking=False):
                try:
                    while not call.done and self._read_one(link):
                        pass
                finally:
                    link.reading.release()
                with link.lock:
                    for other in link.waiting.values():
                        if not other.done:
                            other.signal()  # your turn to read
                            break
                return
            call.wake.acquire()  # answered, or asked to take over reading
            with link.lock:
                call.signaled = False

    def _read_one(self, link: _Link) -> bool:
        """Read one answer message and hand it out; False when the link broke."""
        try:
            reply = _unframe(link.conn.recv_bytes())
        except (EOFError, OSError, ValueError) as exc:
            self._break(link, exc)
            return False
        if reply.get("events") and self._on_events is not None:
            self._on_events(int(reply["events"]))
        with link.lock:
            for call_id, outcome in zip(reply["ids"], reply["results"], strict=True):
                call = link.waiting.pop(int(call_id), None)
                if call is not None:
                    call.finish(outcome)
        return True

    def _break(self, link: _Link, exc: BaseException) -> None:
        """The link is unusable: every call still waiting on it fails, retryably."""
        with link.lock:
            first = link.broken is None
            if first:
                link.broken = exc
            for call in link.waiting.values():
                failure = StateError("the decision worker stopped; retry the call")
                failure.__cause__ = exc
                call.finish(failure)
            link.waiting = {}
        if first and not self._closed:
            log.error("event=decision_worker_lost exit_code=%s error=%s", link.proc.poll(), type(exc).__name__)
        try:
            link.conn.close()
        except OSError:
            pass
        if first and link.proc.poll() is None:
            # A worker we can no longer talk to must not linger (nor stay unreaped).
            link.proc.kill()
            try:
                link.proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not refused
                log.error("event=decision_worker_unkillable pid=%s", link.proc.pid)

    def close(self) -> None:
        """Stop the worker (after the server drained): close the socket, the worker exits."""
        with self._send_lock:
            self._closed = True
            link, self._link = self._link, None
        if link is None:
            return
        try:
            link.conn.send_bytes(b"")  # "no more": the worker answers what it holds, then exits
        except (OSError, ValueError):
            pass
        try:
            link.proc.wait(30)
        except subprocess.TimeoutExpired:
            link.proc.kill()
            link.proc.wait(10)
        self._break(link, StateError("the gateway is shutting down"))


# -- the child ----------------------------------------------------------------------------------


def _child_main(conn: Any, spec: Mapping[str, Any]) -> None:
    # The parent decides when this process ends (it closes the pipe after draining).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from ._decision_service import decision_pb
    from ._hub import HubStore
    from ._hub_state import HubStateStore

    events = [0]

    def count(batch: Sequence[Any]) -> None:
        events[0] += len(batch)

    try:
        hub = HubStore.open(spec["hub_db"], state_dir=spec["state_dir"], schema=spec["hub_schema"])
        state = HubStateStore(hub, on_events=count)
    except BaseException as exc:
        conn.send_bytes(_frame({"error": _error_out(exc)}))
        return
    conn.send_bytes(_frame({"ready": True}))
    loaded: OrderedDict[str, LoadedBundle | Exception] = OrderedDict()

    def take(data: bytes) -> tuple[Any, Decision | Exception | DecideArgs]:
        """A request as (id, what to do): its bundle is resolved now, in the parent's order."""
        message = orjson.loads(data)
        directory, cid, channel, context, profile, limit, explain = message["job"]
        meta = message.get("bundle")
        if meta is not None:
            try:
                info = BundleInfo(**{**meta["info"], "models": tuple(meta["info"].get("models", ()))})
                loaded[directory] = load_bundle(Path(directory), meta["manifest"], info)
            except Exception as exc:  # the requests that name it fail with this error
                loaded[directory] = exc if isinstance(exc, NboError) else BundleError(str(exc))
        bundle = loaded.get(directory)
        _touch(loaded, [message["job"]])
        deadline = message.get("deadline")
        if bundle is None:  # cannot happen while parent and child agree (see _touch)
            return message["id"], StateError("the decision worker does not hold this bundle; retry the call")
        if isinstance(bundle, Exception):
            return message["id"], bundle
        if deadline is not None and time.time() > deadline:
            return message["id"], Expired("the call's deadline passed before it was decided")
        return message["id"], DecideArgs(bundle, Request(cid, channel, context, profile, limit, explain))

    stopping = False
    try:
        while not stopping:
            # Every request already here is one batch: one transaction, one commit.
            pending: list[tuple[Any, Decision | Exception | DecideArgs]] = []
            try:
                data = conn.recv_bytes()
                while data:
                    pending.append(take(data))
                    if len(pending) >= _MAX_BATCH or not conn.poll(0):
                        break
                    data = conn.recv_bytes()
            except (EOFError, OSError):
                return  # the parent is gone: nothing to answer to
            stopping = not data
            if not pending:
                continue
            batch = [what for _, what in pending if isinstance(what, DecideArgs)]
            events[0] = 0
            try:
                decided = iter(decide_batch(state, batch)) if batch else iter(())
            except Exception as exc:  # the transaction failed: none of the batch happened
                failure = exc
                decided = iter([failure] * len(batch))
            results: list[dict[str, Any]] = []
            blobs: list[bytes] = []
            for _, what in pending:
                outcome = next(decided) if isinstance(what, DecideArgs) else what
                if isinstance(outcome, Decision):
                    # the wire answer itself: the parent hands these bytes to gRPC untouched
                    blob = decision_pb(outcome).SerializeToString()
                    blobs.append(blob)
                    results.append({"size": len(blob), "bundle": f"{outcome.bundle_name}:{outcome.bundle_version}"})
                else:
                    results.append({"error": _error_out(outcome)})
            conn.send_bytes(_frame({"ids": [i for i, _ in pending], "results": results, "events": events[0]}, blobs))
    finally:
        state.close()
        hub.close()


if __name__ == "__main__":  # started by DecisionProcess: FD STATE_DIR; the first message is the spec
    _wire = _Wire(socket.socket(fileno=int(sys.argv[1])))
    _child_main(_wire, orjson.loads(_wire.recv_bytes()))
