"""``nbo publish FILE.zip --hub HOST:PORT --token T``: upload a signed bundle to the gateway.

The upload is a ``PublishService.PublishBundle`` client stream of 1 MiB chunks, the first one
carrying the file's name, size and SHA-256; the gateway verifies the signature against its
trusted keys before storing anything, serves the bundle to terminals and switches its own
engine to it. A progress bar goes to stderr; the result line to stdout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from nbo.model_export import publish_bundle

from ._common import TOKEN_ENV, add_command, add_token_options, positive_float, token_from

__all__ = ["register"]


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
        token=token_from(args),
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
    parser = add_command(
        sub, "publish",
        help="upload a signed bundle to the gateway (it verifies, serves and switches to it)",
        description="Upload a signed bundle zip to an nbo gateway with a publisher token (from --token-file, "
        f"${TOKEN_ENV} or --token). The gateway verifies it against its own trusted keys before storing it.",
        examples=["nbo publish retail-v2.zip --hub gateway.internal:50051 --token-file publisher.token "
                  "--ca-file ca.pem",
                  f"{TOKEN_ENV}=... nbo publish retail-v2.zip --hub 127.0.0.1:50051 --quiet"],
    )
    parser.add_argument("file", metavar="FILE.zip", help="the signed bundle zip (from `nbo bundle build`)")
    parser.add_argument("--hub", required=True, metavar="HOST:PORT", help="the gateway address")
    add_token_options(parser, role="publisher")
    parser.add_argument("--ca-file", metavar="PEM", help="CA certificate to verify a TLS gateway")
    parser.add_argument("--client-cert", metavar="PEM", help="client certificate for mutual TLS")
    parser.add_argument("--client-key", metavar="PEM", help="client private key for mutual TLS")
    parser.add_argument("--timeout", type=positive_float, default=300.0, metavar="S",
                        help="seconds before giving up (default 300)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run)
