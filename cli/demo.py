"""`nbo demo`: the whole loop on one machine, in a temporary directory, in about a minute.

sample data → training + report → signed bundle → gateway with a SQLite hub → two offline POS
terminals deciding and recording → sync → a second bundle published and picked up → an
app-backend client deciding over gRPC. The loop itself is :func:`nbo.model_export.run_demo`.
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import sys
from pathlib import Path
from typing import Any

from nbo.sdk import ConfigError

from ._common import add_command, int_at_least, positive_int


def _run(args: argparse.Namespace) -> int:
    from nbo.model_export import run_demo

    if args.dir:
        try:
            Path(args.dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--dir {args.dir}: cannot create the demo directory: {exc.strerror or exc}") from None
    result = run_demo(args.dir, keep=args.keep, customers=args.customers, visits=args.visits, seed=args.seed,
                      then=None if args.no_console else _serve_console)
    return _refusal_happened(result)


def _refusal_happened(result: Any) -> int:
    if not result.card_number_refused:
        print("warning: the card-number refusal did not happen", file=sys.stderr)
        return 1
    return 0


def _serve_console(directory: Path) -> None:
    """Serve the console over the demo's hub on a free loopback port until Ctrl-C."""
    from nbo.console import open_console, serve

    token = secrets.token_urlsafe(18)
    config = directory / "console.toml"
    config.write_text(f'[[tokens]]\ntoken_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
                      'role = "analyst"\n', encoding="utf-8")
    console = open_console(f"sqlite:{directory / 'gateway' / 'hub.sqlite'}", config=config)
    try:
        console.refresh()

        def ready(address: str) -> None:
            print(f"\nThe console (field, offers, customers, models) is at {address}/login", flush=True)
            print(f"  analyst token: {token}", flush=True)
            print("  serving until Ctrl-C", flush=True)

        serve(console, "127.0.0.1:0", ready=ready)
    except KeyboardInterrupt:
        pass
    finally:
        console.close()


def register(sub: Any) -> None:
    parser = add_command(
        sub, "demo",
        help="run the whole loop (data, training, bundle, gateway, terminals, sync) in a temp dir",
        description="The whole loop on one machine, in a temporary directory, in about a minute: sample data, "
        "training and report, a signed bundle, a gateway with a SQLite hub, two offline POS terminals deciding "
        "and recording, sync, a second bundle published and picked up, an app backend deciding over gRPC. "
        "Then it serves the console over the demo's hub and prints its address and an analyst token, until "
        "Ctrl-C (--no-console ends after the loop).",
        examples=["nbo demo", "nbo demo --no-console   # end after the loop",
                  "nbo demo --keep   # keep the directory and print its path",
                  "nbo demo --dir demo --customers 300 --visits 10"],
    )
    parser.add_argument("--keep", action="store_true", help="keep the demo directory instead of deleting it")
    parser.add_argument("--dir", metavar="DIR", help="run in this directory (kept) instead of a fresh temp dir")
    parser.add_argument("--customers", type=int_at_least(10), default=1200, metavar="N",
                        help="sample customers to generate, at least 10 (default 1200)")
    parser.add_argument("--visits", type=positive_int, default=40, metavar="N",
                        help="customer visits at the terminals (default 40)")
    parser.add_argument("--seed", type=int, default=7, metavar="N", help="random seed (default 7)")
    parser.add_argument("--no-console", action="store_true",
                        help="end after the loop instead of serving the console over the demo's hub until Ctrl-C")
    parser.set_defaults(func=_run)
