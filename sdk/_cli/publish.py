"""``nbo publish FILE.zip --hub HOST:PORT --token T``: upload a signed bundle to the gateway.

The upload is a ``PublishService.PublishBundle`` client stream of 1 MiB chunks, the first one
carrying the file's name, size and SHA-256; the gateway verifies the signature against its
trusted keys before storing anything, serves the bundle to terminals and switches its own
engine to it. A progress bar goes to stderr; the result line to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from .._errors import InputError, NboError, SyncError

__all__ = ["PublishResult", "publish_bundle", "register"]

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


class PublishRefused(NboError):
    """The gateway refused the bundle (the message carries its status and reason)."""


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


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
    from nbo.sdk._sync import open_channel
    from nbo.v1 import publish_pb2, publish_pb2_grpc

    file = Path(path)
    try:
        total = file.stat().st_size
        digest = _sha256(file)
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


class _ProgressBar:
    """A one-line progress bar on a terminal stream (plain percentages when not a TTY)."""

    def __init__(self, stream: TextIO, label: str) -> None:
        self._stream = stream
        self._label = label
        self._tty = stream.isatty()
        self._last = -1

    def __call__(self, sent: int, total: int) -> None:
        pct = 100 if total <= 0 else min(100, sent * 100 // total)
        if self._tty:
            width = 30
            filled = width * pct // 100
            bar = "#" * filled + "-" * (width - filled)
            self._stream.write(f"\r{self._label} [{bar}] {pct:3d}% {sent / 1e6:.1f}/{total / 1e6:.1f} MB")
            if sent >= total:
                self._stream.write("\n")
        elif pct // 25 != self._last // 25 or sent >= total:
            self._stream.write(f"{self._label}: {pct}% ({sent}/{total} bytes)\n")
        self._last = pct
        self._stream.flush()


def _run(args: argparse.Namespace) -> int:
    bar = None if args.quiet else _ProgressBar(sys.stderr, f"uploading {Path(args.file).name}")
    result = publish_bundle(
        args.file,
        args.hub,
        token=args.token,
        ca_file=args.ca_file,
        client_cert=args.client_cert,
        client_key=args.client_key,
        timeout=args.timeout,
        progress=bar,
    )
    state = "published" if result.accepted else "already published (no change)"
    print(f"{result.name} v{result.version}: {state}, {result.offers} offers, sha256 {result.sha256}")
    return 0


def register(sub: Any) -> None:
    """Add ``nbo publish`` to the CLI."""
    parser = sub.add_parser(
        "publish",
        help="upload a signed bundle to the gateway (it verifies, serves and switches to it)",
        description="Upload a signed bundle zip to an nbo gateway with a publisher token.",
    )
    parser.add_argument("file", metavar="FILE.zip", help="the signed bundle zip (from `nbo bundle build`)")
    parser.add_argument("--hub", required=True, metavar="HOST:PORT", help="the gateway address")
    parser.add_argument("--token", required=True, help="bearer token with role publisher")
    parser.add_argument("--ca-file", help="CA certificate (PEM) to verify a TLS gateway")
    parser.add_argument("--client-cert", help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--client-key", help="client private key (PEM) for mutual TLS")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before giving up (default 300)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)
