"""`nbo demo`: the whole loop on one machine, in a temporary directory, in about a minute.

sample data → training + report → signed bundle → gateway with a SQLite hub → two offline POS
terminals deciding and recording → sync → a second bundle published and picked up → an
app-backend client deciding over gRPC. The loop itself is :func:`nbo.model_export.run_demo`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from nbo.sdk import ConfigError


def _run(args: argparse.Namespace) -> int:
    from nbo.model_export import run_demo

    if args.dir:
        try:
            Path(args.dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--dir {args.dir}: cannot create the demo directory: {exc.strerror or exc}") from None
    result = run_demo(args.dir, keep=args.keep, customers=args.customers, visits=args.visits, seed=args.seed)
    if not result.card_number_refused:
        print("warning: the card-number refusal did not happen", file=sys.stderr)
        return 1
    return 0


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the whole loop (data, training, bundle, gateway, terminals, sync) in a temp dir",
        description=__doc__,
    )
    parser.add_argument("--keep", action="store_true", help="keep the demo directory instead of deleting it")
    parser.add_argument("--dir", help="run in this directory (kept) instead of a fresh temp dir")
    parser.add_argument("--customers", type=int, default=1200, help="sample customers to generate (default 1200)")
    parser.add_argument("--visits", type=int, default=40, help="customer visits at the terminals (default 40)")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.set_defaults(func=_run)
