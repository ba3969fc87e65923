from nbo.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Event(_message.Message):
    __slots__ = ("event_id", "device_id", "seq", "type", "created_at", "payload_json")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    device_id: str
    seq: int
    type: str
    created_at: float
    payload_json: str
    def __init__(self, event_id: _Optional[str] = ..., device_id: _Optional[str] = ..., seq: _Optional[int] = ..., type: _Optional[str] = ..., created_at: _Optional[float] = ..., payload_json: _Optional[str] = ...) -> None: ...

class PushEventsRequest(_message.Message):
    __slots__ = ("device_id", "events", "outbox_head", "active_bundle")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_HEAD_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    events: _containers.RepeatedCompositeFieldContainer[Event]
    outbox_head: int
    active_bundle: ActiveBundle
    def __init__(self, device_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., outbox_head: _Optional[int] = ..., active_bundle: _Optional[_Union[ActiveBundle, _Mapping]] = ...) -> None: ...

class ActiveBundle(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class Rejected(_message.Message):
    __slots__ = ("seq", "event_id", "reason")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    event_id: str
    reason: str
    def __init__(self, seq: _Optional[int] = ..., event_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class PushEventsResponse(_message.Message):
    __slots__ = ("acked_through", "balances", "latest_bundle", "rejected")
    ACKED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    BALANCES_FIELD_NUMBER: _ClassVar[int]
    LATEST_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    acked_through: int
    balances: _containers.RepeatedCompositeFieldContainer[_common_pb2.Balance]
    latest_bundle: _common_pb2.BundleRef
    rejected: _containers.RepeatedCompositeFieldContainer[Rejected]
    def __init__(self, acked_through: _Optional[int] = ..., balances: _Optional[_Iterable[_Union[_common_pb2.Balance, _Mapping]]] = ..., latest_bundle: _Optional[_Union[_common_pb2.BundleRef, _Mapping]] = ..., rejected: _Optional[_Iterable[_Union[Rejected, _Mapping]]] = ...) -> None: ...

class GetLatestBundleRequest(_message.Message):
    __slots__ = ("name", "current_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    current_version: int
    def __init__(self, name: _Optional[str] = ..., current_version: _Optional[int] = ...) -> None: ...

class GetLatestBundleResponse(_message.Message):
    __slots__ = ("available", "bundle")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    available: bool
    bundle: _common_pb2.BundleRef
    def __init__(self, available: _Optional[bool] = ..., bundle: _Optional[_Union[_common_pb2.BundleRef, _Mapping]] = ...) -> None: ...

class DownloadBundleRequest(_message.Message):
    __slots__ = ("name", "version", "offset")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    offset: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class BundleChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size", "sha256")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    sha256: str
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class RecoverDeviceRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class HeldEvent(_message.Message):
    __slots__ = ("event", "rejected_reason")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_REASON_FIELD_NUMBER: _ClassVar[int]
    event: Event
    rejected_reason: str
    def __init__(self, event: _Optional[_Union[Event, _Mapping]] = ..., rejected_reason: _Optional[str] = ...) -> None: ...

class RecoveryChunk(_message.Message):
    __slots__ = ("acked_through", "max_seq", "events", "balances", "complete")
    ACKED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQ_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    BALANCES_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    acked_through: int
    max_seq: int
    events: _containers.RepeatedCompositeFieldContainer[HeldEvent]
    balances: _containers.RepeatedCompositeFieldContainer[_common_pb2.Balance]
    complete: bool
    def __init__(self, acked_through: _Optional[int] = ..., max_seq: _Optional[int] = ..., events: _Optional[_Iterable[_Union[HeldEvent, _Mapping]]] = ..., balances: _Optional[_Iterable[_Union[_common_pb2.Balance, _Mapping]]] = ..., complete: _Optional[bool] = ...) -> None: ...
