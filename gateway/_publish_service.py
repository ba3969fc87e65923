"""``nbo.v1.PublishService``: the central team uploads a signed bundle; the hub serves it.

One ``PublishBundle`` call, in this order — nothing is registered before the bundle is proven:

1. receive the client stream into a private temp file, refusing an upload larger than the
   configured cap or than its announced ``total_size``;
2. check the announced size and SHA-256 of the whole file;
3. verify the signature against the gateway's ``[trust] keys`` and every file hash, extract
   and load it (ONNX sessions warmed) — through the engine host, the same path as a device;
4. check the version against the hub's registry (a newer version of the name, or the exact
   bundle again = an idempotent re-publish);
5. register it in the hub's bundle registry (terminals see it on their next sync);
6. switch the gateway's own engine to it (a reference swap: in-flight ``Decide`` calls finish
   on the old bundle).

The whole of 3–6 runs under the engine host's install lock, so two uploads cannot interleave.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
from nbo.sdk import InputError, NboError, NotFoundError
from nbo.sdk.core import VersionNotNewerError, sha256_file
from nbo.v1 import publish_pb2, publish_pb2_grpc

from ._engine_host import EngineHost
from ._hub import HubStore
from ._status import abort_with, rpc_errors

__all__ = ["DEFAULT_MAX_BUNDLE_BYTES", "PublishServicer"]

log = logging.getLogger("nbo.gateway.publish")

DEFAULT_MAX_BUNDLE_BYTES = 256 * 1024 * 1024
"""Largest bundle zip the gateway accepts (the bundle format's own extraction cap is 512 MiB)."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PublishServicer(publish_pb2_grpc.PublishServiceServicer):
    """Receives, verifies, registers and activates uploaded bundles."""

    def __init__(
        self,
        *,
        engine: EngineHost,
        hub: HubStore,
        spool_dir: str | os.PathLike[str],
        max_bytes: int = DEFAULT_MAX_BUNDLE_BYTES,
    ) -> None:
        self._engine = engine
        self._hub = hub
        self._spool = Path(spool_dir)
        self._spool.mkdir(parents=True, exist_ok=True)
        self._max_bytes = max_bytes

    def PublishBundle(
        self, request_iterator: Iterator[publish_pb2.PublishChunk], context: grpc.ServicerContext
    ) -> publish_pb2.PublishBundleResponse:
        with rpc_errors(context, "PublishBundle"):
            path, filename = self._receive(request_iterator)
            try:
                return self._accept(path)
            except NboError as exc:  # say the publisher's file, not the spool's temporary name
                exc.args = (str(exc).replace(path.name, filename),)
                raise
            finally:
                path.unlink(missing_ok=True)
        abort_with(context, grpc.StatusCode.INTERNAL, "internal error")  # not reached: errors abort above

    # -- steps ----------------------------------------------------------------------------------

    def _receive(self, chunks: Iterator[publish_pb2.PublishChunk]) -> tuple[Path, str]:
        """Spool the stream to a temp file; check the announced size and SHA-256.

        Returns the file and the name to call it in messages: the uploader's file name
        (``metadata.filename``, its last part, printable) or "the upload".
        """
        first = next(chunks, None)
        if first is None or not first.HasField("metadata"):
            raise InputError("the first chunk must carry metadata (filename, total_size, sha256)", field="metadata")
        meta = first.metadata
        if meta.total_size <= 0:
            raise InputError("metadata.total_size must be positive", field="metadata.total_size")
        if meta.total_size > self._max_bytes:
            raise InputError(
                f"metadata.total_size {meta.total_size} exceeds the gateway's limit of {self._max_bytes} bytes",
                field="metadata.total_size",
            )
        expected_sha = meta.sha256.lower()
        if not _SHA256.match(expected_sha):
            raise InputError("metadata.sha256 must be 64 lower-case hex digits", field="metadata.sha256")
        fd, name = tempfile.mkstemp(dir=self._spool, prefix=".upload-", suffix=".zip")
        path = Path(name)
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                chunk: publish_pb2.PublishChunk | None = first
                index = 0
                while chunk is not None:
                    if index > 0 and chunk.HasField("metadata"):
                        raise InputError(f"chunk {index} repeats metadata; only the first chunk carries it",
                                         field="metadata")
                    size += len(chunk.data)
                    if size > meta.total_size:
                        raise InputError(
                            f"the upload is longer than metadata.total_size ({meta.total_size} bytes)",
                            field="metadata.total_size",
                        )
                    digest.update(chunk.data)
                    out.write(chunk.data)
                    chunk = next(chunks, None)
                    index += 1
                out.flush()
                os.fsync(out.fileno())
            if size != meta.total_size:
                raise InputError(
                    f"the upload has {size} bytes but metadata.total_size announced {meta.total_size}",
                    field="metadata.total_size",
                )
            if digest.hexdigest() != expected_sha:
                raise InputError("the upload does not match metadata.sha256 (corrupted in transit?)",
                                 field="metadata.sha256")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        shown = Path(meta.filename.replace("\\", "/")).name[:120]
        return path, shown if shown and shown.isprintable() else "the upload"

    def _accept(self, path: Path) -> publish_pb2.PublishBundleResponse:
        sha = sha256_file(path)
        with self._engine.exclusive():
            staged, loaded = self._engine.stage(path)  # signature, hashes, models: BundleError if bad
            name, version = staged.info.name, staged.info.version
            try:
                existing = self._hub.bundle(name, version)
            except NotFoundError:
                existing = None
            if existing is not None:
                if existing.sha256 != sha:
                    self._engine.discard(staged)
                    raise VersionNotNewerError(
                        f"bundle {name} version {version} is already published with other content; "
                        "publish a higher version"
                    )
                # An idempotent re-publish: make sure this replica serves it too, change nothing else.
                self._hub.register_bundle(path, name=name, version=version)
                active = self._engine.active
                if active is None or (active.info.name == name and active.info.version < version):
                    self._engine.switch(staged, loaded)
                else:
                    self._engine.discard(staged)
                return _response(name, version, staged.info.offer_count, sha, accepted=False)
            latest = self._hub.latest_bundle(name)
            if latest is not None and latest.version >= version:
                self._engine.discard(staged)
                raise VersionNotNewerError(
                    f"bundle {name} version {version} is not newer than version {latest.version}, "
                    "which the hub already serves"
                )
            try:
                self._hub.register_bundle(path, name=name, version=version)
            except BaseException:
                self._engine.discard(staged)
                raise
            info = self._engine.switch(staged, loaded)
        log.info("event=bundle_published bundle=%s version=%d offers=%d sha256=%s", name, version, info.offer_count, sha)
        return _response(name, version, info.offer_count, sha, accepted=True)


def _response(name: str, version: int, offers: int, sha: str, *, accepted: bool) -> publish_pb2.PublishBundleResponse:
    return publish_pb2.PublishBundleResponse(name=name, version=version, offers=offers, accepted=accepted, sha256=sha)




def add_to_server(servicer: PublishServicer, server: grpc.Server) -> None:
    """Register the servicer on a server."""
    publish_pb2_grpc.add_PublishServiceServicer_to_server(servicer, server)
