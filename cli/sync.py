"""`nbo sync` (push the outbox to a hub, pick up a newer bundle), `nbo recover` (rebuild a damaged
device state from the hub) and `nbo events` (inspect the outbox)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from nbo.model_export import format_table
from nbo.sdk import SyncError

from ._common import (
    TOKEN_ENV,
    UsageError,
    add_command,
    add_token_options,
    positive_float,
    positive_int,
    token_from,
)
from .decide import open_device


def register(sub: Any) -> None:
    sync = add_command(
        sub, "sync",
        help="push this device's outbox to a hub and pick up a newer bundle",
        description="Push pending outbox events to the hub in batches, mark them acknowledged, store the "
        "hub's points balances, and download, verify and install a newer bundle (resuming a cut "
        "download). With --forever: keep syncing every --interval seconds, retrying with backoff "
        "(1 s doubling to 5 min, with jitter) while the hub is unreachable. The device token comes from "
        f"--token-file, ${TOKEN_ENV} or --token.",
        examples=["nbo sync --state pos-1 --hub hub.internal:50051 --token-file /etc/nbo/device.token "
                  "--trusted-key keys/signing.pub",
                  f"{TOKEN_ENV}=... nbo sync --state pos-1 --hub hub.internal:50051 --ca-file ca.pem --forever"],
    )
    sync.add_argument("--state", required=True, metavar="DIR", help="the device's state directory")
    sync.add_argument("--hub", required=True, metavar="HOST:PORT", help="the gateway to sync with")
    add_token_options(sync, role="device")
    sync.add_argument("--device-id", metavar="ID",
                      help="the device id (default: the one recorded in the state directory)")
    sync.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                      help="a trusted public key file for installing bundles (repeatable)")
    _add_tls_options(sync)
    sync.add_argument("--timeout", type=positive_float, default=30.0, metavar="S",
                      help="seconds per call (default 30)")
    sync.add_argument("--forever", action="store_true", help="keep syncing; never give up")
    sync.add_argument("--interval", type=positive_float, default=60.0, metavar="S",
                      help="with --forever: seconds between successful syncs (default 60)")
    sync.set_defaults(func=_sync)

    recover = add_command(
        sub, "recover",
        help="rebuild a damaged or lost device state from the hub",
        description="Rebuild STATE/state.sqlite from what the hub holds for this device: its events "
        "(acknowledged, the rejected ones dead-lettered), the tables they describe (decisions, contact "
        "history, responses, purchases and measures, ledger entries, payments) and the authoritative points "
        "balances of its customers; new events continue after the hub's highest seq, and the replaced "
        "state's unsynced events are queued again when it is still readable. The replaced files "
        "are moved to STATE/damaged-<time>/. Refuses a state that opens cleanly and is as far along as the "
        "hub knows, unless --force. Stop the application using the state directory first "
        "(docs/operations.md, Recovering a damaged device).",
        examples=["nbo recover --state pos-1 --hub hub.internal:50051 --token-file /etc/nbo/device.token",
                  f"{TOKEN_ENV}=... nbo recover --state pos-1 --hub hub.internal:50051 --device-id pos-1 "
                  "--ca-file ca.pem"],
    )
    recover.add_argument("--state", required=True, metavar="DIR", help="the device's state directory")
    recover.add_argument("--hub", required=True, metavar="HOST:PORT", help="the gateway the device syncs with")
    add_token_options(recover, role="device")
    recover.add_argument("--device-id", metavar="ID",
                         help="the device id (default: the one recorded in STATE/hub-sync.json)")
    _add_tls_options(recover)
    recover.add_argument("--timeout", type=positive_float, default=30.0, metavar="S",
                         help="seconds per call; the whole transfer may take 100 times this (default 30)")
    recover.add_argument("--force", action="store_true",
                         help="rebuild even a state that opens cleanly (its unsynced events are queued again)")
    recover.set_defaults(func=_recover)

    events = add_command(
        sub, "events",
        help="show the outbox: pending, acknowledged and dead-lettered events",
        description="Summarise this device's outbox by status and type, then list events (oldest first). "
        "Opens the state directory read-only.",
        examples=["nbo events --state pos-1", "nbo events --state pos-1 --status dead --limit 5",
                  "nbo events --state pos-1 --status all --json"],
    )
    events.add_argument("--state", required=True, metavar="DIR", help="the device's state directory")
    events.add_argument("--status", choices=("pending", "acked", "dead", "all"), default="pending",
                        metavar="pending|acked|dead|all", help="which events to list (default pending)")
    events.add_argument("--limit", type=positive_int, default=20, metavar="N",
                        help="how many events to list (default 20)")
    events.add_argument("--device-id", metavar="ID",
                        help="the device id (default: the one recorded in the state directory)")
    events.add_argument("--json", action="store_true", help="print JSON lines instead of tables")
    events.set_defaults(func=_events)


def _add_tls_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ca-file", metavar="PEM", help="CA certificate of the hub (turns on TLS)")
    parser.add_argument("--client-cert", metavar="PEM", help="client certificate for mutual TLS")
    parser.add_argument("--client-key", metavar="PEM", help="client private key for mutual TLS")


def _sync(args: argparse.Namespace) -> int:
    from nbo.sdk import core

    if (args.client_cert is None) != (args.client_key is None):
        raise UsageError("--client-cert and --client-key must be given together")
    token = token_from(args)
    options = {"ca_file": args.ca_file, "client_cert": args.client_cert, "client_key": args.client_key,
               "timeout": args.timeout}
    with open_device(args) as client:
        if args.forever:
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
            loop = core.SyncLoop(client, args.hub, token, interval=args.interval, options=options,
                                  on_report=lambda report: _print_report(report, client))
            try:
                loop.run_forever()
            except KeyboardInterrupt:
                loop.stop()
            return 0
        try:
            report = core.sync(client, args.hub, token=token, **options)
        except core.HubUnavailableError as exc:
            raise SyncError(f"{exc}; `nbo sync --forever` keeps retrying with backoff") from exc
        _print_report(report, client)
        return 1 if report.errors else 0


def _recover(args: argparse.Namespace) -> int:
    from nbo.sdk import recover_state

    if (args.client_cert is None) != (args.client_key is None):
        raise UsageError("--client-cert and --client-key must be given together")
    report = recover_state(args.state, args.hub, token=token_from(args), device_id=args.device_id,
                           ca_file=args.ca_file, client_cert=args.client_cert, client_key=args.client_key,
                           timeout=args.timeout, force=args.force)
    print(f"recovered device {report.device_id}: {_plural(report.events, 'event')} through seq {report.max_seq} "
          f"(hub acknowledged {report.acked_through}), dead-lettered {report.dead_lettered}, "
          f"balances {report.balances}; replaced files in {report.moved_aside or '-'}", flush=True)
    if report.carried_over:
        print(f"{_plural(report.carried_over, 'event')} the hub never received queued again: `nbo sync` pushes "
              "them", flush=True)
    for problem in report.not_restored:
        print(f"warning: not restored: {problem}", file=sys.stderr, flush=True)
    return 0


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _print_report(report: Any, client: Any) -> None:
    bundle = (f"{report.bundle_installed.name} v{report.bundle_installed.version}"
              if report.bundle_installed else "none")
    if report.pushed:
        head = (f"pushed {_plural(report.pushed, 'event')}; hub acknowledged through seq {report.acked_through}; "
                f"dead-lettered {report.dead_lettered}")
    else:
        head = f"nothing to push, hub holds through seq {client.acked_through()}"
    print(f"{head}; balances updated {report.balances_updated}; bundle installed: {bundle}", flush=True)
    for error in report.errors:
        print(f"warning: {error}", file=sys.stderr, flush=True)


def _events(args: argparse.Namespace) -> int:

    status = "dead_lettered" if args.status == "dead" else args.status
    with open_device(args, read_only=True) as client:
        device_id = client.device_id
        summary = client.outbox_summary()
        listed = client.outbox_events(status=status, limit=args.limit)
    if args.json:
        print(json.dumps({k: v for k, v in summary.items()}, sort_keys=True))
        for item in listed:
            print(json.dumps(item, sort_keys=True, default=str))
        return 0
    rows = [[t, c["pending"], c["acked"], c["dead_lettered"]] for t, c in summary["by_type"].items()]
    rows.append(["total", summary["pending"], summary["acked"], summary["dead_lettered"]])
    print(format_table(["type", "pending", "acked", "dead-lettered"], rows, title=f"outbox of {device_id}"))
    if summary.get("compacted_decisions"):
        print(f"decision events compacted past the disk budget: {summary['compacted_decisions']}")
    if summary.get("answers_dead_lettered"):
        print(f"hub answers this device could not apply (table answer_dead_letter): "
              f"{summary['answers_dead_lettered']}")
    print()
    if not listed:
        print(f"no {args.status} events")
        return 0
    print(format_table(
        ["seq", "type", "status", "created", "customer", "reason"],
        [[e["seq"], e["type"], e["status"], _iso(e["created_at"]),
          (e["payload"] or {}).get("customer_id", "") if isinstance(e["payload"], dict) else "",
          (e["reason"] or "")[:60]] for e in listed],
        title=f"{args.status} events (oldest first, at most {args.limit})",
    ))
    return 0


def _iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(float(ts), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
