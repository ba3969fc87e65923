"""Prometheus metrics of one gateway process (docs/operations.md operations).

Every metric lives in a registry owned by one :class:`GatewayMetrics` (not the library's
global one), so several servers can run in one process — tests do. The HTTP endpoint is the
prometheus-client library's own ``start_http_server``; nothing here formats the exposition.

Metrics (names are stable; see ``docs/operations.md``):

- ``nbo_decisions_total`` — decisions made by ``Decide`` (label ``bundle``: name and version).
- ``nbo_decide_latency_seconds`` — histogram of ``Decide`` handling time.
- ``nbo_events_ingested_total`` — events accepted into the hub's event log (label ``source``:
  ``device`` for pushed outbox events, ``app`` for events the gateway writes itself).
- ``nbo_sync_lag_seconds`` — age of the oldest event in the latest pushed batch (how far behind
  terminals are).
- ``nbo_rpc_total`` / ``nbo_rpc_errors_total`` — calls and failed calls per method and status code.
- ``nbo_bundle_version`` — version of the bundle the gateway's engine serves.
- ``nbo_hub_writable`` — 1 while the hub takes writes (``gateway/_health.py``), else 0;
  ``nbo_bundle_expired`` — 1 while the served bundle is past its ``expires_at``.
- ``nbo_stream_limit_total`` — streams cut by a time limit (labels ``rpc``, ``reason``: ``idle``
  or ``total``); ``nbo_stream_refused_total`` — streams refused because as many were already
  open (label ``rpc``). See ``gateway/_call_limits.py``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["GatewayMetrics", "MetricsInterceptor"]

# Decide runs in well under a millisecond on the engine; the tail is what the buckets resolve.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class GatewayMetrics:
    """The counters, histogram and gauges of one gateway, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "nbo_decisions", "Decisions made by DecisionService.Decide.", ["bundle"], registry=self.registry
        )
        self.decide_latency = Histogram(
            "nbo_decide_latency_seconds",
            "Time to handle one Decide call.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.events_ingested = Counter(
            "nbo_events_ingested",
            "Events accepted into the hub event log.",
            ["source"],
            registry=self.registry,
        )
        self.sync_lag = Gauge(
            "nbo_sync_lag_seconds",
            "Age of the oldest event in the most recent pushed batch.",
            registry=self.registry,
            multiprocess_mode="livemax",  # under `nbo serve`: the laggiest serving process
        )
        self.rpc_calls = Counter(
            "nbo_rpc", "RPCs handled, per method and status code.", ["method", "code"], registry=self.registry
        )
        self.rpc_errors = Counter(
            "nbo_rpc_errors", "RPCs that ended with a non-OK status.", ["method", "code"], registry=self.registry
        )
        self.bundle_version = Gauge(
            "nbo_bundle_version", "Version of the bundle the gateway engine serves (0 = none).",
            registry=self.registry,
            multiprocess_mode="livemin",  # under `nbo serve`: the version every serving process has
        )
        self.hub_writable = Gauge(
            "nbo_hub_writable", "1 while the hub store takes writes (the health probe's last result), else 0.",
            registry=self.registry, multiprocess_mode="livemin",
        )
        self.bundle_expired = Gauge(
            "nbo_bundle_expired", "1 while the bundle the engine serves is past its expires_at (it keeps serving).",
            registry=self.registry, multiprocess_mode="livemax",
        )
        self.stream_limit = Counter(
            "nbo_stream_limit", "Streams cancelled by the gateway's idle or total time limit.", ["rpc", "reason"],
            registry=self.registry,
        )
        self.stream_refused = Counter(
            "nbo_stream_refused", "Streams refused RESOURCE_EXHAUSTED: the limit of such streams was reached.",
            ["rpc"], registry=self.registry,
        )
        self._http: Any = None
        self._lock = threading.Lock()
        # Labelled children, looked up once: ``labels()`` validates and locks on every call,
        # which on the Decide hot path cost ~10 µs per metric (label sets are small and bounded).
        self._rpc_children: dict[tuple[str, grpc.StatusCode], tuple[Any, Any]] = {}
        self._decision_children: dict[str, Any] = {}
        self._app_events = self.events_ingested.labels("app")

    # -- recording ---------------------------------------------------------------------------

    def record_rpc(self, method: str, code: grpc.StatusCode) -> None:
        """Count one finished RPC (and one error unless it ended OK)."""
        children = self._rpc_children.get((method, code))
        if children is None:
            name = code.name
            errors = self.rpc_errors.labels(method, name) if code is not grpc.StatusCode.OK else None
            children = (self.rpc_calls.labels(method, name), errors)
            self._rpc_children[(method, code)] = children
        children[0].inc()
        if children[1] is not None:
            children[1].inc()

    def record_decide(self, bundle: str, seconds: float) -> None:
        """One ``Decide`` answered with ``bundle`` (``name:version``) in ``seconds``."""
        child = self._decision_children.get(bundle)
        if child is None:
            child = self._decision_children[bundle] = self.decisions.labels(bundle)
        child.inc()
        self.decide_latency.observe(seconds)

    def record_push(self, events: int, oldest_created_at: float | None, *, now: float | None = None) -> None:
        """A pushed batch of ``events`` device events was accepted."""
        if events <= 0:
            return
        self.events_ingested.labels("device").inc(events)
        if oldest_created_at is not None:
            current = time.time() if now is None else now
            self.sync_lag.set(max(0.0, current - oldest_created_at))

    def record_app_event(self, count: int = 1) -> None:
        """The gateway wrote ``count`` app-channel events into the hub event log."""
        self._app_events.inc(count)

    # -- endpoint ----------------------------------------------------------------------------

    def start_http(self, port: int, *, addr: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` over HTTP on ``addr:port`` (0 = any free port); return the port."""
        with self._lock:
            if self._http is None:
                server, thread = start_http_server(port, addr=addr, registry=self.registry)
                self._http = (server, thread)
            return int(self._http[0].server_port)

    def stop_http(self) -> None:
        """Stop the HTTP endpoint if it runs."""
        with self._lock:
            http, self._http = self._http, None
        if http is not None:
            server, thread = http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def _method_name(full: str) -> str:
    # "/nbo.v1.DecisionService/Decide" → "DecisionService/Decide": bounded label values.
    return full.rsplit(".", 1)[-1] if full.startswith("/nbo.") else full.lstrip("/")


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts every RPC by method and final status code; feeds the sync-lag gauge from pushes."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = _method_name(handler_call_details.method)
        metrics = self._metrics
        push = method == "SyncService/PushEvents"

        def finish(context: grpc.ServicerContext, failed: BaseException | None) -> None:
            code = _code_of(context)
            if code is None:
                code = grpc.StatusCode.OK if failed is None else grpc.StatusCode.UNKNOWN
            metrics.record_rpc(method, code)

        if handler.unary_unary is not None:
            inner_uu = handler.unary_unary

            def unary_unary(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    response = inner_uu(request, context)
                except BaseException as exc:
                    finish(context, exc)
                    raise
                finish(context, None)
                if push and _code_of(context) in (None, grpc.StatusCode.OK):
                    _observe_push(metrics, request)
                return response

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            def stream_unary(request_iterator: Any, context: grpc.ServicerContext) -> Any:
                try:
                    response = inner_su(request_iterator, context)
                except BaseException as exc:
                    finish(context, exc)
                    raise
                finish(context, None)
                return response

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            inner_us = handler.unary_stream

            def unary_stream(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    yield from inner_us(request, context)
                except BaseException as exc:
                    finish(context, exc)
                    raise
                finish(context, None)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler  # bidirectional streams: none in nbo.v1


def _code_of(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    try:
        code = context.code()
    except (AttributeError, NotImplementedError):  # very old grpcio
        return None
    return code if isinstance(code, grpc.StatusCode) else None


def _observe_push(metrics: GatewayMetrics, request: Any) -> None:
    events = getattr(request, "events", ())
    if not events:
        return
    oldest = min(float(e.created_at) for e in events)
    metrics.record_push(len(events), oldest if oldest > 0 else None)
