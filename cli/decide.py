"""``nbo decide``: rank the offers for one customer from the installed bundle, offline.

A thin layer over :meth:`nbo.sdk.Client.decide`: prints the ranked offers as a table with
every score part as a column (or JSON with ``--json``) and, with ``--explain``, which rule
or contact policy left each other offer out. The decision is recorded like any other.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nbo.model_export import format_table
from nbo.sdk import StateError

from ._common import UsageError, add_command, json_object, positive_int

__all__ = ["register"]


def register(sub: Any) -> None:
    parser = add_command(
        sub, "decide",
        help="rank the offers for a customer from the installed bundle",
        description="Decide the next best offers for one customer on one channel from the bundle installed "
        "in a device state directory, with no network. The decision is recorded in the outbox (and counts "
        "against the contact policies) unless --dry-run is given.",
        examples=["nbo decide --state pos-1 --customer C000001 --channel pos --explain",
                  "nbo decide --state pos-1 --customer C000002 --channel app --profile '{\"age\": 34}' --json",
                  "nbo decide --state pos-1 --customer C000003 --channel pos --dry-run   # try, record nothing"],
    )
    parser.add_argument("--state", required=True, metavar="DIR", help="the device state directory")
    parser.add_argument("--customer", required=True, metavar="ID", help="the customer id")
    parser.add_argument("--channel", required=True, metavar="CHANNEL", help="the channel, e.g. pos, app, web, kiosk")
    parser.add_argument("--limit", type=positive_int, default=3, metavar="N",
                        help="how many offers to return (default 3)")
    parser.add_argument("--profile", metavar="JSON", type=json_object,
                        help="profile fields overriding the stored profile, as a JSON object, e.g. '{\"age\": 34}'")
    parser.add_argument("--context", metavar="JSON", type=json_object,
                        help="request context as a JSON object, e.g. '{\"store\": \"S1\"}'")
    parser.add_argument("--explain", action="store_true", help="also show which rule excluded which offer")
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")
    parser.add_argument("--dry-run", action="store_true",
                        help="decide without recording anything (no outbox event, no contact counted); "
                        "opens the state directory read-only")
    parser.add_argument("--device-id", metavar="ID",
                        help="the device id (default: the one recorded in the state directory)")
    parser.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                        help="a trusted public key file (only needed to install; repeatable)")
    parser.set_defaults(func=run)


def _not_a_device(state_dir: Path) -> str:
    """Why ``state_dir`` is not a device state directory, and what to do."""
    if not state_dir.exists():
        return f"{state_dir} is not a device state directory: it does not exist (check --state)"
    if not state_dir.is_dir():
        return f"{state_dir} is not a device state directory: it is not a directory (check --state)"
    if (state_dir / "hub.sqlite").exists() or (state_dir / "published").is_dir():
        return f"{state_dir} is a gateway's state directory, not a device's (give the --state of a terminal)"
    return (f"{state_dir} is not a device state directory (no state.sqlite): a device is created by installing "
            "a bundle, `nbo bundle install FILE.zip --state DIR --device-id ID --trusted-key PUB`")


def stored_device_id(state_dir: Path) -> str:
    """The device id recorded in ``state_dir``'s state database (opened read-only)."""
    path = state_dir / "state.sqlite"
    from nbo.sdk.core import read_sync_marker

    marker = read_sync_marker(path) if state_dir.is_dir() else None
    if marker is not None and (not path.is_file() or path.stat().st_size == 0):
        return marker[0]  # a device that synced and lost its state: opening it says what to do
    if not path.is_file():
        raise StateError(_not_a_device(state_dir))
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)
        try:
            conn.execute("PRAGMA query_only=ON")
            row = conn.execute("SELECT value FROM device_meta WHERE key = 'device_id'").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        from nbo.sdk.core import damaged_hint

        raise StateError(f"cannot read {path}: {exc}{damaged_hint(exc)}") from exc
    if row is None:
        raise StateError(f"{path} records no device id; pass --device-id")
    return str(row[0])


def open_device(args: argparse.Namespace, *, new_ok: bool = False, read_only: bool = False) -> Any:
    """A ``Client`` on ``args.state`` with ``args.device_id`` (or the recorded one) and ``args.trusted_key``.

    ``new_ok``: the directory may be new, in which case ``--device-id`` is required; otherwise
    it must be a device state directory already (nothing is created). ``read_only``: open it
    for looking only.
    """
    from nbo.sdk import Client

    state_dir = Path(args.state)
    exists = (state_dir / "state.sqlite").is_file() or (state_dir / "hub-sync.json").is_file()
    if not exists and not new_ok:
        raise StateError(_not_a_device(state_dir))
    if not exists and args.device_id is None:
        raise UsageError(f"{state_dir} is a new state directory: pass --device-id")
    if not exists and state_dir.exists() and not state_dir.is_dir():
        raise StateError(f"--state {state_dir} is not a directory")
    device_id = args.device_id or stored_device_id(state_dir)
    keys = [Path(p) for p in getattr(args, "trusted_key", [])]
    return Client.open(state_dir, device_id=device_id, trusted_keys=keys, read_only=read_only)


def run(args: argparse.Namespace) -> int:
    with open_device(args, read_only=args.dry_run) as client:
        decision = client.decide(args.customer, channel=args.channel, context=args.context, profile=args.profile,
                                 limit=args.limit, explain=args.explain, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(asdict(decision), indent=2, allow_nan=False, default=str))
        return 0
    title = (f"decision {decision.decision_id} · customer {decision.customer_id} · {decision.channel} · "
             f"bundle {decision.bundle_name} v{decision.bundle_version} · strategy {decision.strategy or '-'}")
    rows = [
        [rank, o.offer_id, o.name, o.category, o.propensity, o.value, o.weight, o.lever, o.score,
         "mandatory" if o.mandatory else "fallback" if o.fallback else ""]
        for rank, o in enumerate(decision.offers, start=1)
    ]
    if rows:
        print(format_table(["rank", "offer", "name", "category", "propensity", "value", "weight", "lever",
                            "score", "note"], rows, title=title))
    else:
        print(title)
        print("no offer is eligible")
    if args.explain:
        print()
        if decision.excluded:
            print(format_table(["offer", "rule", "kind", "why"],
                               [[e.offer_id, e.rule_id, e.kind, e.description] for e in decision.excluded],
                               title="excluded"))
        else:
            print("excluded: none")
    return 0
