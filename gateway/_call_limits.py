"""Thread budgets per kind of call, and time limits for streams.

A Python gRPC server runs every call on a thread of its executor, and a stream holds its
thread for as long as it lasts — including while its client stops reading (a
``DownloadBundle`` blocked on HTTP/2 flow control) or stops sending (a ``PublishBundle``
waiting for its next chunk). With one shared pool, sixteen such streams left ``Health`` and
``Decide`` unanswered. So:

- **Separate executors per kind of call** (grpcio runs a behaviour on the executor named by
  its ``experimental_thread_pool`` attribute): decisions, sync, bundle transfers, long-lived
  streams (``Health/Watch``, reflection) and health checks each have threads of their own,
  so no kind can take the threads another needs. Even a request whose *body* stalls before
  the handler runs only holds a thread of its own kind.
- **Admission limits** for streams: at most ``max_downloads`` ``DownloadBundle``,
  ``max_publishes`` ``PublishBundle`` and ``max_open_streams`` watch/reflection streams at a
  time; one more is refused at once with ``RESOURCE_EXHAUSTED`` (the stream pools have two
  spare threads for exactly that), so clients retry instead of queueing.
- **Idle and total time limits** per stream: a stream that makes no progress (no chunk sent
  to, or received from, the client) for ``stream_idle_seconds``, or that lasts longer than
  ``stream_total_seconds``, is cancelled by a watchdog thread (``context.cancel()``), which
  frees its thread; ``Health/Watch`` only has the total limit (it is silent while the status
  does not change).

Every cancellation is logged (``event=stream_limit``) and counted
(``nbo_stream_limit_total{rpc,reason}``), every refusal too (``nbo_stream_refused_total``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from nbo.sdk.core import DeadlineExceededError

from ._metrics import GatewayMetrics

__all__ = ["CallBudgets", "CallLimits"]

log = logging.getLogger("nbo.gateway")


@dataclass(frozen=True, slots=True)
class CallLimits:
    """Thread budgets and stream limits of one gateway process (docs/operations.md)."""

    decision_threads: int = 16
    """Threads for ``DecisionService`` calls."""
    sync_threads: int = 8
    """Threads for ``PushEvents`` and ``GetLatestBundle``."""
    control_threads: int = 4
    """Threads for ``Health/Check`` (and any method no service serves)."""
    max_downloads: int = 16
    """``DownloadBundle`` streams at a time; more are refused ``RESOURCE_EXHAUSTED``."""
    max_publishes: int = 2
    """``PublishBundle`` uploads at a time."""
    max_open_streams: int = 8
    """``Health/Watch`` and server-reflection streams at a time."""
    stream_idle_seconds: float = 60.0
    """A stream is cancelled after this long without a chunk sent or received."""
    stream_total_seconds: float = 1800.0
    """A stream is cancelled after this long in all."""

    def __post_init__(self) -> None:
        for name in ("decision_threads", "sync_threads", "control_threads", "max_downloads", "max_publishes",
                     "max_open_streams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not (self.stream_idle_seconds > 0 and self.stream_total_seconds > 0):
            raise ValueError("stream_idle_seconds and stream_total_seconds must be positive")


_SPARE = 2  # threads of a stream pool beyond its admission limits: they answer refusals at once


# (kind, admission group or None, idle limit applies)
_EXACT: dict[str, tuple[str, str | None, bool]] = {
    "/nbo.v1.SyncService/DownloadBundle": ("transfer", "download", True),
    "/nbo.v1.SyncService/RecoverDevice": ("transfer", "download", True),  # `nbo recover`: a download too
    "/nbo.v1.PublishService/PublishBundle": ("transfer", "publish", True),
    "/grpc.health.v1.Health/Watch": ("stream", "stream", False),
}
_PREFIXES: tuple[tuple[str, tuple[str, str | None, bool]], ...] = (
    ("/nbo.v1.DecisionService/", ("decision", None, False)),
    ("/nbo.v1.SyncService/", ("sync", None, False)),
    ("/grpc.reflection.", ("stream", "stream", True)),
)
_CONTROL: tuple[str, str | None, bool] = ("control", None, False)


def _route(method: str) -> tuple[str, str | None, bool]:
    route = _EXACT.get(method)
    if route is not None:
        return route
    for prefix, found in _PREFIXES:
        if method.startswith(prefix):
            return found
    return _CONTROL


class _Stream:
    """One admitted stream, as the watchdog sees it."""

    __slots__ = ("context", "group", "idle", "last", "method", "reason", "started")

    def __init__(self, method: str, group: str, context: grpc.ServicerContext, *, idle: bool) -> None:
        self.method = method
        self.group = group
        self.context = context
        self.idle = idle
        self.started = self.last = time.monotonic()
        self.reason: str | None = None  # set when a limit cut the stream

    def touch(self) -> None:
        self.last = time.monotonic()


class CallBudgets(grpc.ServerInterceptor):
    """Routes every call to its kind's executor; admits and watches streams.

    Install it outermost (first in the interceptor list): the executor is read from the
    behaviour gRPC finally runs, which is the one this interceptor returns.
    """

    def __init__(self, limits: CallLimits, *, metrics: GatewayMetrics | None = None) -> None:
        self.limits = limits
        self._metrics = metrics
        self.pools: dict[str, futures.ThreadPoolExecutor] = {
            kind: futures.ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"nbo-{kind}")
            for kind, size in (
                ("decision", limits.decision_threads),
                ("sync", limits.sync_threads),
                ("control", limits.control_threads),
                ("transfer", limits.max_downloads + limits.max_publishes + _SPARE),
                ("stream", limits.max_open_streams + _SPARE),
            )
        }
        self._caps = {"download": limits.max_downloads, "publish": limits.max_publishes,
                      "stream": limits.max_open_streams}
        self._active: dict[int, _Stream] = {}
        self._counts = dict.fromkeys(self._caps, 0)
        self._changed = threading.Condition(threading.Lock())
        self._closed = False
        self._watchdog = threading.Thread(target=self._watch, name="nbo-stream-watchdog", daemon=True)
        self._watchdog.start()

    @property
    def default_pool(self) -> futures.ThreadPoolExecutor:
        """The executor for ``grpc.server``: calls no route names run on the control threads."""
        return self.pools["control"]

    def total_threads(self) -> int:
        return sum(pool._max_workers for pool in self.pools.values())  # noqa: SLF001 - our own pools

    def active_streams(self, group: str | None = None) -> int:
        """Streams admitted and not yet finished (of one group, or all)."""
        with self._changed:
            return sum(self._counts.values()) if group is None else self._counts[group]

    def close(self) -> None:
        """Stop the watchdog and the executors (after the server stopped)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._watchdog.join(timeout=5)
        for pool in self.pools.values():
            pool.shutdown(wait=False, cancel_futures=True)

    # -- routing -------------------------------------------------------------------------------

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        kind, group, idle = _route(method)
        pool = self.pools[kind]
        de, ser = handler.request_deserializer, handler.response_serializer
        name = method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_on(pool, handler.unary_unary), de, ser)
        if group is None:  # a stream without a group: none in nbo.v1, but route it all the same
            behaviour = handler.unary_stream or handler.stream_unary or handler.stream_stream
            return _same_shape(handler, _on(pool, behaviour))
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            def unary_stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                stream = self._admit(name, group, context, idle=idle)
                try:
                    for response in inner_us(request, context):
                        stream.touch()
                        yield response
                finally:
                    self._release(stream)

            return grpc.unary_stream_rpc_method_handler(_on(pool, unary_stream), de, ser)
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                stream = self._admit(name, group, context, idle=idle)
                try:
                    return inner_su(self._watched(requests, stream), context)
                finally:
                    self._release(stream)

            return grpc.stream_unary_rpc_method_handler(_on(pool, stream_unary), de, ser)
        inner_ss = handler.stream_stream

        def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            stream = self._admit(name, group, context, idle=idle)
            try:
                for response in inner_ss(self._watched(requests, stream), context):
                    stream.touch()
                    yield response
            finally:
                self._release(stream)

        return grpc.stream_stream_rpc_method_handler(_on(pool, stream_stream), de, ser)

    # -- admission -----------------------------------------------------------------------------

    def _admit(self, name: str, group: str, context: grpc.ServicerContext, *, idle: bool) -> _Stream:
        stream = _Stream(name, group, context, idle=idle)
        with self._changed:
            admitted = self._counts[group] < self._caps[group]
            if admitted:
                self._counts[group] += 1
                self._active[id(stream)] = stream
                self._changed.notify()
        if not admitted:
            log.info("event=stream_refused rpc=%s limit=%d", name, self._caps[group])
            if self._metrics is not None:
                self._metrics.stream_refused.labels(name).inc()
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{name}: the gateway already serves {self._caps[group]} such streams; retry later")
        # The call may end without this thread ever running again (a cancelled send):
        # release when gRPC finishes the call, too. Releasing twice is harmless.
        context.add_callback(lambda: self._release(stream))
        return stream

    def _release(self, stream: _Stream) -> None:
        with self._changed:
            if self._active.pop(id(stream), None) is not None:
                self._counts[stream.group] -= 1
                self._changed.notify()

    def _watched(self, requests: Iterator[Any], stream: _Stream) -> Iterator[Any]:
        """The client's messages, each one marking progress; a stream cut short (by a limit or
        by its client) ends in :class:`DeadlineExceededError`, not in a truncated upload."""
        while True:
            try:
                request = next(requests)
            except (StopIteration, grpc.RpcError):
                # The end of the stream, or the call was cancelled (by its client, or by a
                # limit below: gRPC then ends the iteration as if the client had finished).
                if stream.reason is not None:
                    raise DeadlineExceededError(f"the stream was cut: {self._describe(stream.reason)}") from None
                if not stream.context.is_active():
                    raise DeadlineExceededError("the client left before the stream ended") from None
                return
            stream.touch()
            yield request

    # -- the watchdog --------------------------------------------------------------------------

    def _expiry(self, stream: _Stream) -> tuple[float, str]:
        """When ``stream`` runs out, and which limit that is (``idle`` or ``total``)."""
        total = stream.started + self.limits.stream_total_seconds
        if stream.idle:
            idle = stream.last + self.limits.stream_idle_seconds
            if idle < total:
                return idle, "idle"
        return total, "total"

    def _describe(self, reason: str) -> str:
        if reason == "idle":
            return f"no progress for {self.limits.stream_idle_seconds:g} s"
        return f"open longer than {self.limits.stream_total_seconds:g} s"

    def _watch(self) -> None:
        while True:
            expired: list[tuple[_Stream, str]] = []
            with self._changed:
                if self._closed:
                    return
                now = time.monotonic()
                wake = now + 60.0
                for stream in self._active.values():
                    if stream.reason is not None:
                        continue  # already cut; its call is finishing
                    at, reason = self._expiry(stream)
                    if at <= now:
                        stream.reason = reason
                        expired.append((stream, reason))
                    else:
                        wake = min(wake, at)
                if not expired:
                    self._changed.wait(timeout=max(0.0, wake - now))
                    continue
            for stream, reason in expired:
                log.warning("event=stream_limit rpc=%s reason=%s limit_seconds=%g", stream.method, reason,
                            self.limits.stream_idle_seconds if reason == "idle" else self.limits.stream_total_seconds)
                if self._metrics is not None:
                    self._metrics.stream_limit.labels(stream.method, reason).inc()
                stream.context.cancel()


def _on(pool: futures.ThreadPoolExecutor, behaviour: Callable[..., Any]) -> Callable[..., Any]:
    """``behaviour`` as a new function that gRPC runs on ``pool``."""

    def run(request: Any, context: grpc.ServicerContext) -> Any:
        return behaviour(request, context)

    run.experimental_thread_pool = pool  # type: ignore[attr-defined]
    return run


def _same_shape(handler: grpc.RpcMethodHandler, behaviour: Callable[..., Any]) -> grpc.RpcMethodHandler:
    de, ser = handler.request_deserializer, handler.response_serializer
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(behaviour, de, ser)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(behaviour, de, ser)
    return grpc.stream_stream_rpc_method_handler(behaviour, de, ser)
