"""Publishing a signed bundle to a gateway (``PublishService.PublishBundle``).

The upload is a client stream of 1 MiB chunks, the first one carrying the file's name, size
and SHA-256; the gateway verifies the signature against its trusted keys before storing
anything, serves the bundle to terminals and switches its own engine to it. grpc is imported
only when publishing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nbo.sdk import InputError, SyncError
from nbo.sdk.core import PublishRefused, sha256_file

__all__ = ["PublishRefused", "PublishResult", "publish_bundle"]

CHUNK_BYTES = 1024 * 1024


class PublishResult:
    """What the gateway answered."""

    __slots__ = ("accepted", "name", "offers", "sha256", "version")

    def __init__(self, *, name: str, version: int, offers: int, accepted: bool, sha256: str) -> None:
        self.name = name
        self.version = version
        self.offers = offers
        self.accepted = accepted
        self.sha256 = sha256




def publish_bundle(
    path: str | os.PathLike[str],
    target: str,
    *,
    token: str,
    ca_file: str | os.PathLike[str] | None = None,
    client_cert: str | os.PathLike[str] | None = None,
    client_key: str | os.PathLike[str] | None = None,
    timeout: float = 300.0,
    progress: Callable[[int, int], None] | None = None,
) -> PublishResult:
    """Upload the bundle zip at ``path`` to the gateway at ``target`` (``HOST:PORT``).

    ``progress(sent, total)`` is called after every chunk. Raises ``InputError`` for a file that
    cannot be read, ``PublishRefused`` when the gateway says no, ``SyncError`` when it cannot be
    reached.
    """
    import grpc
    from nbo.sdk.core import open_channel
    from nbo.v1 import publish_pb2, publish_pb2_grpc

    file = Path(path)
    try:
        total = file.stat().st_size
        digest = sha256_file(file)
    except OSError as exc:
        raise InputError(f"cannot read {file}: {exc.strerror or exc}", field="file") from exc
    if not isinstance(token, str) or not token:
        raise InputError("a --token with role publisher is required", field="token")

    def chunks() -> Iterator[publish_pb2.PublishChunk]:
        sent = 0
        meta = publish_pb2.PublishMetadata(filename=file.name, total_size=total, sha256=digest)
        with file.open("rb") as fh:
            first = True
            while True:
                data = fh.read(CHUNK_BYTES)
                if not data and not first:
                    return
                chunk = publish_pb2.PublishChunk(data=data)
                if first:
                    chunk.metadata.CopyFrom(meta)
                    first = False
                sent += len(data)
                yield chunk
                if progress is not None:
                    progress(sent, total)
                if not data:
                    return

    channel = open_channel(target, ca_file=ca_file, client_cert=client_cert, client_key=client_key)
    try:
        stub = publish_pb2_grpc.PublishServiceStub(channel)
        try:
            response = stub.PublishBundle(
                chunks(), metadata=(("authorization", f"Bearer {token}"),), timeout=timeout
            )
        except grpc.RpcError as exc:
            code: Any = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise SyncError(f"cannot publish to {target}: {name}: {details}") from None
            raise PublishRefused(f"the gateway refused {file.name}: {name}: {details}") from None
    finally:
        channel.close()
    return PublishResult(
        name=response.name,
        version=int(response.version),
        offers=int(response.offers),
        accepted=bool(response.accepted),
        sha256=response.sha256,
    )
