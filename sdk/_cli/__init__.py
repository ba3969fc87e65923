"""The ``nbo`` command line: a thin layer over the library.

Each command group lives in its own module with a ``register(subparsers)`` function; a
command parses its flags, calls one public function and prints. ``NboError`` becomes one
line on stderr and exit status 1 (``--debug`` shows the traceback); usage errors exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from .._errors import NboError

__all__ = ["main"]

# Command-group modules, in the order their commands appear in `nbo --help`.
_GROUPS = ("demo", "keys", "bundle", "train", "decide", "sync", "serve", "publish")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nbo",
        description="nbo-edge: embedded next-best-offer engine — build bundles, decide, sync, serve.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in _GROUPS:
        importlib.import_module(f"{__name__}.{group}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NboError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the last line of defence: one line, never a traceback
        if args.debug:
            traceback.print_exc()
        print(f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
