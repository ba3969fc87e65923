"""`nbo console`: the central team's web console over a hub (docs/console.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._common import add_command, positive_float


def register(sub: Any) -> None:
    console = add_command(
        sub, "console",
        help="serve the central team's web console (field, offers, customers, models)",
        description="Serve the console: the field (terminals' last sync, events pending, dead-lettered, bundle "
        "version, rollout), the offers (shown, accepted, value; the decision funnel; concentration), the "
        "customers (lifecycle flows, retention, CLV and the value pyramid, the loyalty ladder) and the models "
        "(calibration and AUC). The hub is opened read-only, beside running gateways; the figures come from "
        "rollups the console keeps in its own file and brings up to date in the background as events arrive. Only tokens of "
        "role analyst in the gateway configuration log in. Stops on SIGINT/SIGTERM.",
        examples=["nbo console --hub sqlite:///var/lib/nbo/hub.sqlite --listen 127.0.0.1:8080 --config gateway.toml",
                  "nbo console --hub postgresql://nbo@db/nbo --listen 0.0.0.0:8080 --config gateway.toml "
                  "--cache /var/lib/nbo/console.sqlite"],
    )
    console.add_argument("--hub", metavar="DB_URL",
                         help="the hub database: sqlite:///path or postgresql://… (default: the config's [hub] db)")
    console.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to listen on (port 0: any)")
    console.add_argument("--config", required=True, metavar="FILE",
                         help="the gateway TOML configuration ([[tokens]] with role = \"analyst\")")
    console.add_argument("--cache", metavar="FILE",
                         help="the console's rollup file (default: a temporary file, rebuilt at every start)")
    console.add_argument("--refresh", type=positive_float, default=2.0, metavar="S",
                         help="fold new hub events in every S seconds, in the background (default 2)")
    console.set_defaults(func=_console)


def _console(args: argparse.Namespace) -> int:
    from nbo.console import open_console, serve

    console = open_console(args.hub, config=args.config, cache=args.cache, refresh_seconds=args.refresh)
    try:
        shown = [0]

        def progress(done: int) -> None:
            if done - shown[0] >= 200_000:
                shown[0] = done
                print(f"aggregating the hub's events: {done:,}", file=sys.stderr, flush=True)

        done = console.refresh(progress=progress)
        print(f"aggregated {done:,} events", file=sys.stderr, flush=True)

        def ready(address: str) -> None:
            print(f"console listening on {address}", flush=True)

        serve(console, args.listen, ready=ready)
    finally:
        console.close()
    return 0
