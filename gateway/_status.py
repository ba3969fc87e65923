"""``NboError`` → gRPC status, one table for every servicer (DESIGN §8).

Servicers wrap their one call into the domain in :func:`rpc_errors`; an error becomes a
status with a one-line message naming the field, never ``UNKNOWN`` with a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from nbo.sdk._errors import (
    BundleError,
    ConfigError,
    InputError,
    LedgerError,
    NboError,
    NotFoundError,
    NotReadyError,
    StateError,
    SyncError,
)

from ._hub import EventConflictError

__all__ = ["rpc_errors", "status_for"]

log = logging.getLogger("nbo.gateway")


def status_for(exc: NboError) -> grpc.StatusCode:
    """The status code an error maps to."""
    if isinstance(exc, EventConflictError):
        return grpc.StatusCode.ALREADY_EXISTS
    if isinstance(exc, InputError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, NotFoundError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, NotReadyError | LedgerError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, BundleError | ConfigError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, StateError | SyncError):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


@contextmanager
def rpc_errors(context: grpc.ServicerContext, method: str) -> Iterator[None]:
    """Abort the call with the mapped status when the body raises."""
    try:
        yield
    except NboError as exc:
        code = status_for(exc)
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL):
            log.warning("rpc=%s status=%s error=%s", method, code.name, type(exc).__name__)
        context.abort(code, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except Exception as exc:  # the last line of defence: a status, never a stack trace on the wire
        if type(exc) is Exception and not exc.args:
            raise  # grpc's context.abort() raises a bare Exception(): the status is already set
        log.exception("rpc=%s status=INTERNAL unexpected=%s", method, type(exc).__name__)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__})")
