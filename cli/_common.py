"""What every ``nbo`` command shares: placeholders, examples in ``--help``, exit status, tokens.

A new command follows these conventions by using this module:

* **Placeholders** (``metavar``) are upper case and say what to type: ``DIR``, ``FILE``,
  ``FILE.zip``, ``PUB``, ``PEM``, ``HOST:PORT``, ``ID``, ``N``, ``S`` (seconds), ``JSON``,
  ``ISO``, ``URL``, ``TOKEN``; choices are written ``a|b|c``. A test walks the parser and
  holds every option to this.
* **Examples**: create a command with :func:`add_command`, which takes the example lines
  shown at the end of its ``--help`` (at least one).
* **Exit status** (documented in docs/cli.md): 0 done, 1 the command failed (an ``NboError``),
  2 the command line is wrong (argparse, or :class:`UsageError` raised after parsing),
  130 interrupted, 141 the reader of the output went away.
* **Values checked at parse time**: :func:`positive_int`, :func:`int_at_least`,
  :func:`json_object`, :func:`iso_time` as argparse ``type=`` — a bad value is a usage error
  (exit 2) naming the flag.
* **Errors in the CLI's words**: ``main`` prints an ``NboError`` through :func:`cli_message`,
  which names flags (``--force``, ``--trusted-key``) where the library names parameters.
* **Secrets off the command line**: :func:`add_token_options` adds ``--token`` and
  ``--token-file``; :func:`token_from` resolves them, falling back to the ``NBO_TOKEN``
  environment variable, so a token need never appear in ``ps``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import textwrap
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nbo.sdk import ConfigError
from nbo.sdk.core import UsageError

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_READER_GONE",
    "EXIT_USAGE",
    "TOKEN_ENV",
    "UsageError",
    "add_command",
    "check_writable_directory",
    "add_token_options",
    "cli_message",
    "int_at_least",
    "iso_time",
    "json_object",
    "positive_float",
    "positive_int",
    "token_from",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_READER_GONE = 141  # 128 + SIGPIPE, as a shell reports it

TOKEN_ENV = "NBO_TOKEN"


class _Formatter(argparse.HelpFormatter):
    """Wraps the description to the terminal; keeps the examples block as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:\n"):
            return text
        return "\n\n".join(textwrap.fill(" ".join(p.split()), width, initial_indent=indent,
                                         subsequent_indent=indent) for p in text.split("\n\n"))


def add_command(sub: Any, name: str, *, help: str, description: str, examples: Sequence[str]) -> Any:
    """A new (sub)command parser with a one-line ``help``, a ``description`` and ``examples``.

    ``examples`` are command lines (``nbo …``) printed under "examples:" at the end of
    ``--help``; a command with subcommands gives the ones of its most common uses.
    """
    if not examples:
        raise ValueError(f"command {name!r}: give at least one example")
    epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples)
    return sub.add_parser(name, help=help, description=description, epilog=epilog, formatter_class=_Formatter)


# -- errors in the CLI's words --------------------------------------------------------------

# Library parameter (an InputError's ``field``) -> the flag that sets it on the command line.
_PARAMETER_FLAGS = {"trusted_keys": "--trusted-key", "device_id": "--device-id", "expires_at": "--expires-at",
                    "out_dir": "--out"}
# What the library advises a caller of its API, and what that is on the command line.
_LIBRARY_ADVICE = (
    ("use force=True", "use --force"),
    ("call install_bundle()", "install one with `nbo bundle install`"),
)


def cli_message(exc: BaseException) -> str:
    """``exc``'s message as the command line should say it: flags, not keyword arguments."""
    text = str(exc)
    for library, cli in _LIBRARY_ADVICE:
        text = text.replace(library, cli)
    field = getattr(exc, "field", None) or ""
    flag = _PARAMETER_FLAGS.get(field)
    if flag is not None:
        text = re.sub(rf"\b{field}\b", flag, text)
    return text


# -- values checked while parsing -----------------------------------------------------------


def int_at_least(minimum: int) -> Any:
    """An argparse ``type`` accepting integers ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


positive_int = int_at_least(1)


def positive_float(text: str) -> float:
    """An argparse ``type`` accepting numbers ``> 0`` (seconds, intervals)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def json_object(text: str) -> dict[str, Any]:
    """An argparse ``type`` accepting a JSON object, e.g. ``'{"age": 34}'``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg} at column {exc.colno}): {text}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object like '{{\"age\": 34}}', got {text}")
    return value


def iso_time(text: str) -> str:
    """An argparse ``type`` accepting an ISO-8601 time with a zone, e.g. ``2027-01-31T00:00:00Z``."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time like 2027-01-31T00:00:00Z: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- paths ----------------------------------------------------------------------------------


def check_writable_directory(path: str | os.PathLike[str], *, flag: str, what: str) -> None:
    """Refuse (``ConfigError`` naming ``flag``) a directory that cannot be created or written.

    Creates nothing: probes ``path`` when it exists, else the nearest existing directory
    above it, with a temporary file that is gone again when this returns (root passes any
    permission check, so writing is the only honest test).
    """
    target = Path(path)
    probe = next((d for d in (target, *target.absolute().parents) if d.exists()), None)
    reason = None
    if probe is None or not probe.is_dir():
        reason = f"{probe} is not a directory"
    else:
        try:
            with tempfile.TemporaryFile(dir=probe):
                pass
        except OSError as exc:
            reason = f"cannot write in {probe}: {exc.strerror or exc}"
    if reason is not None:
        raise ConfigError(f"{flag} {target}: unusable as {what} ({reason})")


# -- tokens ---------------------------------------------------------------------------------


def add_token_options(parser: argparse.ArgumentParser, *, role: str) -> None:
    """``--token TOKEN`` and ``--token-file FILE`` (one of them, or ``$NBO_TOKEN``)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--token-file", metavar="FILE",
                       help=f"read the bearer token (role {role}) from FILE; or set ${TOKEN_ENV}")
    group.add_argument("--token", metavar="TOKEN",
                       help=f"the bearer token itself (role {role}); visible to `ps`, prefer --token-file "
                            f"or ${TOKEN_ENV}")


def token_from(args: argparse.Namespace) -> str:
    """The token of ``--token``, ``--token-file`` or ``$NBO_TOKEN``, in that order."""
    if args.token is not None:
        if not args.token.strip():
            raise UsageError("--token is empty")
        return str(args.token)
    if args.token_file is not None:
        path = Path(args.token_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ConfigError(f"--token-file {path}: cannot read the token: {reason}") from None
        token = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not token:
            raise ConfigError(f"--token-file {path}: the file is empty")
        return token
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise UsageError(f"no token: pass --token-file FILE or set {TOKEN_ENV}")
    return token
