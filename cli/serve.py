"""`nbo serve`: run the gateway (hub for terminals, decisions for apps, uploads from the central team)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from ._common import add_command, check_writable_directory, positive_float


def register(sub: Any) -> None:
    serve = add_command(
        sub, "serve",
        help="run the gRPC gateway (sync hub, decisions, publishing)",
        description="Run the nbo.v1 gRPC gateway with a TOML configuration ([[tokens]], [trust], [hub], [tls], "
        "[server], [metrics]; see docs/operations.md). Flags override the file. Runs --processes serving "
        "processes on one port under a supervisor that owns it (no other nbo serve can join the port) and "
        "restarts a process that dies. Stops gracefully on SIGTERM/SIGINT, letting in-flight calls finish "
        "within --grace seconds.",
        examples=["nbo serve --state /var/lib/nbo --listen 0.0.0.0:50051 --config /etc/nbo/gateway.toml",
                  "nbo serve --state gw --listen 127.0.0.1:0 --config gateway.toml --metrics-port 9100"],
    )
    serve.add_argument("--state", required=True, metavar="DIR", help="the gateway's state directory")
    serve.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to listen on (port 0: any)")
    serve.add_argument("--config", required=True, metavar="FILE", help="the gateway TOML configuration")
    serve.add_argument("--hub-db", metavar="URL", help="sqlite:///path or postgresql://… (overrides [hub] db)")
    serve.add_argument("--tls-cert", metavar="PEM", help="server certificate (overrides [tls] cert)")
    serve.add_argument("--tls-key", metavar="PEM", help="server private key (overrides [tls] key)")
    serve.add_argument("--client-ca", metavar="PEM", help="CA of client certificates: mutual TLS")
    serve.add_argument("--metrics-port", type=int, metavar="PORT",
                       help="serve Prometheus /metrics on this port (overrides [metrics] port; 0: any)")
    serve.add_argument("--processes", type=int, metavar="N",
                       help="serving processes sharing the port (overrides [server] processes; "
                       "default: the number of cores)")
    serve.add_argument("--grace", type=positive_float, default=10.0, metavar="S",
                       help="seconds in-flight calls get to finish on shutdown (default 10)")
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from nbo.gateway import load_config, serve

    config = load_config(args.config).with_overrides(
        hub_db=args.hub_db,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        client_ca=Path(args.client_ca) if args.client_ca else None,
        metrics_port=args.metrics_port,
    )
    check_writable_directory(args.state, flag="--state", what="the gateway's state directory")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)

    def ready(port: int) -> None:
        # One machine-readable line on stdout: scripts and tests wait for it.
        print(f"listening on {args.listen.rsplit(':', 1)[0]}:{port}", flush=True)

    serve(config, state_dir=args.state, listen=args.listen, processes=args.processes, grace=args.grace, ready=ready)
    return 0
