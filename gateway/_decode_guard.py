"""Request messages that do not decode are refused ``INVALID_ARGUMENT``, quietly.

gRPC decodes a request before any servicer code runs. When decoding fails — bytes that are
not the message, or a ``google.protobuf.Struct`` nested deeper than the protobuf decoder's
limit of 100 message levels (about 33 levels of ``Struct``) — grpcio logs "Exception
deserializing message!" with a traceback and answers ``INTERNAL``. :class:`DecodeGuard`
wraps every method's deserializer so that decoding never raises: an undecodable request
becomes an :class:`Undecodable` marker, and the method answers ``INVALID_ARGUMENT`` instead
of running. Nothing of the payload is logged (it could be anything, card data included): one
line with the method name.

Servicers refuse ``Struct`` values nested deeper than ``MAX_STRUCT_DEPTH`` levels themselves
(``gateway/_decision_service.py``), naming the field.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

__all__ = ["DecodeGuard", "Undecodable"]

log = logging.getLogger("nbo.gateway")

_MESSAGE = "the request message does not decode (malformed, or nested more deeply than protobuf allows)"


class Undecodable:
    """Stands for a request message that did not decode."""

    __slots__ = ()


_UNDECODABLE = Undecodable()


def _guarded(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, RecursionError, …: the caller gets INVALID_ARGUMENT
            return _UNDECODABLE

    return deserialize


def _refuse(context: grpc.ServicerContext, method: str) -> None:
    log.info("event=rpc_refused rpc=%s status=INVALID_ARGUMENT reason=undecodable_request", method)
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, _MESSAGE)


def _unary(inner: Callable[[Any, grpc.ServicerContext], Any], method: str) -> Callable[[Any, grpc.ServicerContext], Any]:
    def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
        if request is _UNDECODABLE:
            _refuse(context, method)
        return inner(request, context)

    return behaviour


class DecodeGuard(grpc.ServerInterceptor):
    """Makes every method's request decoding total: undecodable → ``INVALID_ARGUMENT``.

    Install it innermost (last in the interceptor list): outer interceptors copy the
    deserializer of the handler they wrap, so the guarded one is the one gRPC uses.
    """

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method.rsplit("/", 1)[-1]
        deserializer = _guarded(handler.request_deserializer)
        serializer = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, method), deserializer, serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_unary(handler.unary_stream, method), deserializer, serializer)

        def checked(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
            for request in requests:
                if request is _UNDECODABLE:
                    _refuse(context, method)
                yield request

        if handler.stream_unary is not None:
            inner_su = handler.stream_unary

            def stream_unary(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
                return inner_su(checked(requests, context), context)

            return grpc.stream_unary_rpc_method_handler(stream_unary, deserializer, serializer)
        inner_ss = handler.stream_stream

        def stream_stream(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return inner_ss(checked(requests, context), context)

        return grpc.stream_stream_rpc_method_handler(stream_stream, deserializer, serializer)
