"""The ``nbo`` command line: a thin layer over the library.

Each command group lives in its own module with a ``register(subparsers)`` function; a
command parses its flags, calls one public function and prints. ``NboError`` becomes one
line on stderr and exit status 1 (``--debug`` shows the traceback); usage errors exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from nbo.sdk import NboError

__all__ = ["main"]

# Command-group modules, in the order their commands appear in `nbo --help`.
_GROUPS = ("demo", "keys", "bundle", "train", "decide", "sync", "serve", "publish")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line — what is wrong and where to look — instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nbo",
        description="nbo-edge: embedded next-best-offer engine — build bundles, decide, sync, serve.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in _GROUPS:
        importlib.import_module(f"{__name__}.{group}").register(sub)
    return parser


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command ``args`` selected, e.g. the one of ``nbo bundle build``."""
    while True:
        action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        chosen = getattr(args, action.dest, None) if action is not None else None
        if action is None or chosen not in action.choices:
            return parser
        parser = action.choices[chosen]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the command the stray flag was given to, not just `nbo`
        _command_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
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
    except BrokenPipeError:  # `nbo bundle inspect … | head`: the reader left early; not an error
        try:  # point stdout at /dev/null so the interpreter's final flush does not complain
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE, as a shell reports it
    except Exception as exc:  # the last line of defence: one line, never a traceback
        if args.debug:
            traceback.print_exc()
        print(f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
