"""The ``nbo`` command line: a thin layer over the library.

Each command group lives in its own module with a ``register(subparsers)`` function; a
command parses its flags, calls one public function and prints. ``NboError`` becomes one
line on stderr and exit status 1 (``--debug`` shows the traceback); usage errors exit 2.
The conventions every command follows (placeholders, examples, exit status, tokens) are in
:mod:`nbo.cli._common`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from nbo.sdk import NboError, __version__

from ._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_READER_GONE,
    EXIT_USAGE,
    UsageError,
    cli_message,
)

__all__ = ["main"]

# Command-group modules, in the order their commands appear in `nbo --help`.
_GROUPS = ("demo", "keys", "bundle", "train", "decide", "sync", "serve", "publish", "learning", "experiments",
           "console")


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
    parser.add_argument("--version", action="version", version=f"nbo {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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
    command = _command_parser(parser, args)
    if extra:  # name the command the stray flag was given to, not just `nbo`
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    if not hasattr(args, "func"):  # `nbo`, `nbo bundle`: what can follow
        command.print_help()
        return EXIT_OK
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {command.prog}: {exc} (see `{command.prog} --help`)", file=sys.stderr)
        return EXIT_USAGE
    except NboError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {cli_message(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `nbo bundle inspect … | head`: the reader left early; not an error
        try:  # point stdout at /dev/null so the interpreter's final flush does not complain
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_READER_GONE
    except Exception as exc:  # the last line of defence: one line, never a traceback
        if args.debug:
            traceback.print_exc()
        print(f"error: unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
