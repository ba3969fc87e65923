"""Bearer-token authentication and role checks for every RPC (docs/operations.md).

The client sends ``authorization: Bearer <token>`` metadata. The token is hashed with SHA-256
and compared against every configured digest with :func:`hmac.compare_digest` — no early exit,
so timing does not tell how much of a token was right. Missing or unknown token →
``UNAUTHENTICATED``; a role the method does not allow → ``PERMISSION_DENIED``. The standard
health and reflection services are open. Servicers get the caller's :class:`Principal` with
:meth:`Authenticator.require`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from ._config import TokenSpec

__all__ = ["METHOD_ROLES", "OPEN_PREFIXES", "AuthInterceptor", "Authenticator", "Principal"]

# Which roles may call which method. A method missing here needs a valid token of any role
# (and then answers UNIMPLEMENTED if no service provides it).
METHOD_ROLES: dict[str, frozenset[str]] = {
    "/nbo.v1.SyncService/PushEvents": frozenset({"device"}),
    "/nbo.v1.SyncService/GetLatestBundle": frozenset({"device"}),
    "/nbo.v1.SyncService/DownloadBundle": frozenset({"device"}),
    "/nbo.v1.SyncService/RecoverDevice": frozenset({"device"}),
    "/nbo.v1.DecisionService/Decide": frozenset({"app"}),
    "/nbo.v1.DecisionService/RecordResponse": frozenset({"app"}),
    "/nbo.v1.DecisionService/AwardPoints": frozenset({"app"}),
    "/nbo.v1.DecisionService/RedeemPoints": frozenset({"app"}),
    "/nbo.v1.DecisionService/GetBalance": frozenset({"app"}),
    "/nbo.v1.DecisionService/RecordPayment": frozenset({"app"}),
    "/nbo.v1.PublishService/PublishBundle": frozenset({"publisher"}),
}

CONSOLE_ONLY_ROLES = frozenset({"analyst"})
"""Roles that open the web console (``nbo console``) and may call no RPC at all."""

OPEN_PREFIXES: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a role and, for devices, the one device id the token is bound to."""

    role: str
    device_id: str | None = None


class Authenticator:
    """Maps bearer tokens to principals, in constant time per configured token."""

    def __init__(self, tokens: Iterable[TokenSpec]) -> None:
        self._tokens = tuple(tokens)

    def authenticate(self, metadata: Iterable[tuple[str, Any]] | None) -> Principal | None:
        """The principal of the ``authorization`` metadata, or ``None``."""
        token = _bearer(metadata)
        if token is None:
            return None
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: TokenSpec | None = None
        for spec in self._tokens:  # every spec compared: no early exit on a match
            if hmac.compare_digest(digest, spec.sha256):
                found = spec
        return None if found is None else Principal(found.role, found.device_id)

    def require(self, context: grpc.ServicerContext) -> Principal:
        """The caller's principal; aborts ``UNAUTHENTICATED`` if there is none.

        The interceptor has already refused calls without a valid token; servicers use this
        to learn *who* is calling (e.g. which device a token is bound to).
        """
        principal = self.authenticate(context.invocation_metadata())
        if principal is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or unknown bearer token")
            raise AssertionError("unreachable")  # context.abort raises
        return principal


def _bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() != "authorization":
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        scheme, _, token = str(value).strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls without a valid token or with a role the method does not allow."""

    def __init__(self, authenticator: Authenticator, *, roles: Mapping[str, frozenset[str]] | None = None) -> None:
        self._auth = authenticator
        self._roles = dict(METHOD_ROLES if roles is None else roles)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIXES):
            return continuation(handler_call_details)
        principal = self._auth.authenticate(handler_call_details.invocation_metadata)
        if principal is None:
            return _refusal(continuation(handler_call_details), grpc.StatusCode.UNAUTHENTICATED,
                            "missing or unknown bearer token")
        allowed = self._roles.get(method)
        if (allowed is not None and principal.role not in allowed) or principal.role in CONSOLE_ONLY_ROLES:
            return _refusal(continuation(handler_call_details), grpc.StatusCode.PERMISSION_DENIED,
                            f"role {principal.role!r} may not call {method}")
        return continuation(handler_call_details)


def _refusal(handler: grpc.RpcMethodHandler | None, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that only aborts with ``code``."""

    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    if handler is None:
        return grpc.unary_unary_rpc_method_handler(abort)
    kinds = (handler.request_streaming, handler.response_streaming)
    de, ser = handler.request_deserializer, handler.response_serializer
    if kinds == (False, False):
        return grpc.unary_unary_rpc_method_handler(abort, request_deserializer=de, response_serializer=ser)
    if kinds == (False, True):
        return grpc.unary_stream_rpc_method_handler(abort, request_deserializer=de, response_serializer=ser)
    if kinds == (True, False):
        return grpc.stream_unary_rpc_method_handler(abort, request_deserializer=de, response_serializer=ser)
    return grpc.stream_stream_rpc_method_handler(abort, request_deserializer=de, response_serializer=ser)
