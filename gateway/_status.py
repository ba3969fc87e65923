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
from nbo.sdk.core import DeadlineExceededError, EventConflictError, ShuttingDownError, VersionNotNewerError

__all__ = ["abort_with", "rpc_errors", "status_for"]

log = logging.getLogger("nbo.gateway")

_MAX_DETAIL = 400


# Most specific first: the first class an exception is an instance of decides its status.
_STATUS_BY_CLASS: tuple[tuple[type[NboError], grpc.StatusCode], ...] = (
    (EventConflictError, grpc.StatusCode.ALREADY_EXISTS),
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (ShuttingDownError, grpc.StatusCode.UNAVAILABLE),
    (VersionNotNewerError, grpc.StatusCode.FAILED_PRECONDITION),
    (NotReadyError, grpc.StatusCode.FAILED_PRECONDITION),
    (LedgerError, grpc.StatusCode.FAILED_PRECONDITION),
    (BundleError, grpc.StatusCode.INVALID_ARGUMENT),
    (StateError, grpc.StatusCode.UNAVAILABLE),
    (SyncError, grpc.StatusCode.UNAVAILABLE),
    (ConfigError, grpc.StatusCode.FAILED_PRECONDITION),
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status code and message for an exception, by its class (docs/operations.md)."""
    if not isinstance(exc, NboError):
        return grpc.StatusCode.INTERNAL, "internal error"
    code = next((c for cls, c in _STATUS_BY_CLASS if isinstance(exc, cls)), grpc.StatusCode.INTERNAL)
    if code is grpc.StatusCode.INTERNAL:
        return code, f"internal error ({type(exc).__name__})"
    if isinstance(exc, StateError | SyncError):
        # Database detail (paths, hosts) stays in the log.
        return code, "the hub store is unavailable; retry later"
    message = _detail(exc)
    field = getattr(exc, "field", None)
    prefixed = isinstance(exc, InputError) and not isinstance(exc, EventConflictError | PaymentDataError)
    if prefixed and field and field not in message:
        message = f"{field}: {message}"
    return code, message


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
