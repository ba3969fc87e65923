from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PublishMetadata(_message.Message):
    __slots__ = ("filename", "total_size", "sha256")
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    filename: str
    total_size: int
    sha256: str
    def __init__(self, filename: _Optional[str] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class PublishChunk(_message.Message):
    __slots__ = ("metadata", "data")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    metadata: PublishMetadata
    data: bytes
    def __init__(self, metadata: _Optional[_Union[PublishMetadata, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PublishBundleResponse(_message.Message):
    __slots__ = ("name", "version", "offers", "accepted", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    offers: int
    accepted: bool
    sha256: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., offers: _Optional[int] = ..., accepted: _Optional[bool] = ..., sha256: _Optional[str] = ...) -> None: ...
