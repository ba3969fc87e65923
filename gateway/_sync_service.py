"""``nbo.v1.SyncService``: a thin adapter from the wire to :class:`~gateway._hub.HubStore`."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from nbo.v1 import common_pb2, sync_pb2, sync_pb2_grpc

from ._auth import Authenticator
from ._hub import BundleRecord, HubStore, IncomingEvent, customer_of
from ._status import rpc_errors

__all__ = ["CHUNK_SIZE", "SyncServicer"]

CHUNK_SIZE = 256 * 1024
"""Bytes per ``DownloadBundle`` chunk: well under the 1 MiB the contract allows."""

RECOVERY_PAGE = 2000
"""Events per hub read while answering ``RecoverDevice``."""

RECOVERY_CHUNK_BYTES = 8 * 1024 * 1024
"""Payload bytes per ``RecoveryChunk`` before a new one starts: far below the 32 MiB message limit
(one event's payload is at most 256 KiB)."""


def _ref(record: BundleRecord) -> common_pb2.BundleRef:
    return common_pb2.BundleRef(name=record.name, version=record.version, sha256=record.sha256, size=record.size)


class SyncServicer(sync_pb2_grpc.SyncServiceServicer):
    """What terminals sync to. Each method: check the caller, call the hub store, answer."""

    def __init__(self, hub: HubStore, auth: Authenticator, *, chunk_size: int = CHUNK_SIZE) -> None:
        self._hub = hub
        self._auth = auth
        self._chunk_size = chunk_size

    def PushEvents(  # noqa: N802 (gRPC method name)
        self, request: sync_pb2.PushEventsRequest, context: grpc.ServicerContext
    ) -> sync_pb2.PushEventsResponse:
        principal = self._auth.require(context)
        if not request.device_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "device_id is required")
        if principal.device_id != request.device_id:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          "device_id: this token may only push the events of its own device")
        events = []
        for i, e in enumerate(request.events):
            if e.device_id and e.device_id != request.device_id:
                context.abort(grpc.StatusCode.PERMISSION_DENIED,
                              f"events[{i}].device_id: an event of another device")
            events.append(IncomingEvent(seq=e.seq, event_id=e.event_id, type=e.type, created_at=e.created_at,
                                        payload=e.payload_json))
        with rpc_errors(context, "PushEvents"):
            bundle = request.active_bundle
            result = self._hub.ingest(
                request.device_id, events, outbox_head=request.outbox_head,
                active_bundle=(bundle.name, bundle.version) if request.HasField("active_bundle") else None,
            )
            latest = self._hub.latest_bundle()
        response = sync_pb2.PushEventsResponse(
            acked_through=result.acked_through,
            balances=[common_pb2.Balance(customer_id=c, balance=b) for c, b in result.balances.items()],
            rejected=[sync_pb2.Rejected(seq=r.seq, event_id=r.event_id, reason=r.reason) for r in result.rejected],
        )
        if latest is not None:
            response.latest_bundle.CopyFrom(_ref(latest))
        return response

    def GetLatestBundle(  # noqa: N802
        self, request: sync_pb2.GetLatestBundleRequest, context: grpc.ServicerContext
    ) -> sync_pb2.GetLatestBundleResponse:
        self._auth.require(context)
        if request.current_version < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "current_version must not be negative")
        with rpc_errors(context, "GetLatestBundle"):
            latest = self._hub.latest_bundle(request.name if request.HasField("name") else None)
        if latest is None:
            return sync_pb2.GetLatestBundleResponse(available=False)
        return sync_pb2.GetLatestBundleResponse(available=latest.version > request.current_version,
                                                bundle=_ref(latest))

    def DownloadBundle(  # noqa: N802
        self, request: sync_pb2.DownloadBundleRequest, context: grpc.ServicerContext
    ) -> Iterator[sync_pb2.BundleChunk]:
        self._auth.require(context)
        if not request.name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name is required")
        if request.version < 1:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "version must be a positive integer")
        if request.offset < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "offset must not be negative")
        with rpc_errors(context, "DownloadBundle"):
            record = self._hub.bundle(request.name, request.version)
        if request.offset > record.size:
            context.abort(grpc.StatusCode.OUT_OF_RANGE,
                          f"offset {request.offset} is beyond the bundle's {record.size} bytes")
        with rpc_errors(context, "DownloadBundle"):
            record, chunks = self._hub.read_bundle(record.name, record.version, offset=request.offset,
                                                   chunk_size=self._chunk_size)
        offset = request.offset
        if offset == record.size:  # nothing left: one empty chunk still tells size and digest
            yield sync_pb2.BundleChunk(offset=offset, data=b"", total_size=record.size, sha256=record.sha256)
            return
        for data in chunks:
            if not context.is_active():
                return  # the client went away: stop reading the file
            yield sync_pb2.BundleChunk(offset=offset, data=data, total_size=record.size, sha256=record.sha256)
            offset += len(data)

    def RecoverDevice(  # noqa: N802
        self, request: sync_pb2.RecoverDeviceRequest, context: grpc.ServicerContext
    ) -> Iterator[sync_pb2.RecoveryChunk]:
        principal = self._auth.require(context)
        if not request.device_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "device_id is required")
        if principal.device_id != request.device_id:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "device_id: this token may only recover its own device")
        device_id = request.device_id
        with rpc_errors(context, "RecoverDevice"):
            acked, max_seq = self._hub.device_position(device_id)
        customers: set[str] = set()
        after = 0
        while True:
            with rpc_errors(context, "RecoverDevice"):
                page = self._hub.device_events(device_id, after_seq=after, limit=RECOVERY_PAGE)
            if not page:
                break
            if not context.is_active():
                return  # the device went away: stop reading
            chunk = sync_pb2.RecoveryChunk(acked_through=acked, max_seq=max_seq)
            size = 0
            for held in page:
                if size > RECOVERY_CHUNK_BYTES:
                    yield chunk
                    chunk = sync_pb2.RecoveryChunk(acked_through=acked, max_seq=max_seq)
                    size = 0
                size += len(held.payload) + 128
                event = chunk.events.add()
                event.event.CopyFrom(sync_pb2.Event(event_id=held.event_id, device_id=device_id, seq=held.seq,
                                                    type=held.type, created_at=held.created_at,
                                                    payload_json=held.payload))
                if held.rejected_reason is not None:
                    event.rejected_reason = held.rejected_reason
                elif isinstance(cid := customer_of(held.payload), str):
                    customers.add(cid)
            after = page[-1].seq
            yield chunk
        ordered = sorted(customers)
        for start in range(0, len(ordered), RECOVERY_PAGE * 10):
            with rpc_errors(context, "RecoverDevice"):
                balances = self._hub.balances(ordered[start:start + RECOVERY_PAGE * 10])
            yield sync_pb2.RecoveryChunk(
                acked_through=acked, max_seq=max_seq,
                balances=[common_pb2.Balance(customer_id=c, balance=b) for c, b in balances.items()])
        yield sync_pb2.RecoveryChunk(acked_through=acked, max_seq=max_seq, complete=True)
