"""``NboError`` → gRPC status, one table for every servicer (docs/operations.md).

Servicers wrap their one call into the domain in :func:`rpc_errors`; an error becomes a
status with a one-line message naming the field, never ``UNKNOWN`` with a stack trace.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import grpc
from nbo.sdk import (
    BundleError,
    ConfigError,
    InputError,
    LedgerError,
    NboError,
    NotFoundError,
    NotReadyError,
    PaymentDataError,
    StateError,
    SyncError,
)

from ._hub import EventConflictError

__all__ = ["abort_with", "rpc_errors", "status_for"]

log = logging.getLogger("nbo.gateway")

_MAX_DETAIL = 400


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message for an exception (docs/operations.md, proto conventions)."""
    if isinstance(exc, EventConflictError):
        return grpc.StatusCode.ALREADY_EXISTS, _detail(exc)
    if isinstance(exc, NboError):
        message = _detail(exc)
        field = getattr(exc, "field", None)
        override = getattr(exc, "grpc_status", None)
        if isinstance(override, str) and hasattr(grpc.StatusCode, override):
            return getattr(grpc.StatusCode, override), message
        if isinstance(exc, PaymentDataError):
            return grpc.StatusCode.INVALID_ARGUMENT, message
        if isinstance(exc, InputError) and isinstance(exc, NotFoundError):
            # An id that refers to nothing: NOT_FOUND, except an offer that was not part of the
            # named decision, which the proto defines as a bad argument.
            if field == "offer_id":
                return grpc.StatusCode.INVALID_ARGUMENT, message
            return grpc.StatusCode.NOT_FOUND, message
        if isinstance(exc, InputError):
            if field and field not in message:
                message = f"{field}: {message}"
            return grpc.StatusCode.INVALID_ARGUMENT, message
        if isinstance(exc, NotFoundError):
            return grpc.StatusCode.NOT_FOUND, message
        if isinstance(exc, NotReadyError | LedgerError):
            return grpc.StatusCode.FAILED_PRECONDITION, message
        if isinstance(exc, BundleError):
            return grpc.StatusCode.INVALID_ARGUMENT, message
        if isinstance(exc, StateError | SyncError):
            # Database detail (paths, hosts) stays in the log.
            return grpc.StatusCode.UNAVAILABLE, "the hub store is unavailable; retry later"
        if isinstance(exc, ConfigError):
            return grpc.StatusCode.FAILED_PRECONDITION, message
        return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})"
    return grpc.StatusCode.INTERNAL, "internal error"


def _detail(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


def abort_with(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """End the RPC with ``code``; ``context.abort`` raises, this only tells the type checker."""
    context.abort(code, message)
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def rpc_errors(context: grpc.ServicerContext, method: str) -> Iterator[None]:
    """Map every exception raised inside to a gRPC status; never UNKNOWN, never a traceback."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        abort_with(context, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the call started")
    try:
        yield
    except Exception as exc:
        if _is_abort(exc, context):
            raise
        code, message = status_for(exc)
        if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE):
            # Type and stack only: exception messages can carry request values.
            log.error("event=rpc_failed rpc=%s status=%s error=%s\n%s", method, code.name, type(exc).__name__,
                      "".join(traceback.format_tb(exc.__traceback__)))
            if isinstance(exc, StateError):
                log.error("event=hub_store_error rpc=%s detail=%s", method, _detail(exc))
        else:
            # The field name only, never the message: it may quote what the caller sent.
            log.info("event=rpc_refused rpc=%s status=%s field=%s error=%s", method, code.name,
                     getattr(exc, "field", None) or "-", type(exc).__name__)
        abort_with(context, code, message)


def _is_abort(exc: BaseException, context: grpc.ServicerContext) -> bool:
    # context.abort() raises a plain Exception after setting the code; let it through untouched.
    try:
        code = context.code()
    except (AttributeError, NotImplementedError):
        return False
    return isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK and type(exc) is Exception
