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
from nbo.sdk import ConfigError, InputError, StateError

__all__ = ["register"]


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "decide",
        help="rank the offers for a customer from the installed bundle",
        description="Decide the next best offers for one customer on one channel from the bundle installed "
        "in a device state directory, with no network. The decision is recorded in the outbox.",
    )
    parser.add_argument("--state", required=True, metavar="DIR", help="the device state directory")
    parser.add_argument("--customer", required=True, metavar="ID", help="the customer id")
    parser.add_argument("--channel", required=True, help="the channel, e.g. pos, app, web, kiosk")
    parser.add_argument("--limit", type=int, default=3, help="how many offers to return (default 3)")
    parser.add_argument("--profile", metavar="JSON", help="profile fields overriding the stored profile, "
                        "as a JSON object, e.g. '{\"age\": 34}'")
    parser.add_argument("--context", metavar="JSON", help="request context as a JSON object, e.g. "
                        "'{\"store\": \"S1\"}'")
    parser.add_argument("--explain", action="store_true", help="also show which rule excluded which offer")
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")
    parser.add_argument("--device-id", help="the device id (default: the one recorded in the state directory)")
    parser.add_argument("--trusted-key", action="append", default=[], metavar="PUB",
                        help="a trusted public key file (only needed to install; repeatable)")
    parser.set_defaults(func=run)


def _json_object(text: str | None, option: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{option} is not valid JSON: {exc}", field=option) from None
    if not isinstance(value, dict):
        raise InputError(f"{option} must be a JSON object", field=option)
    return value


def stored_device_id(state_dir: Path) -> str:
    """The device id recorded in ``state_dir``'s state database."""
    path = state_dir / "state.sqlite"
    if not path.is_file():
        raise ConfigError(f"{state_dir} is not a device state directory (no state.sqlite); pass --device-id")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM device_meta WHERE key = 'device_id'").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        from nbo.sdk.core import damaged_hint

        raise StateError(f"cannot read {path}: {exc}{damaged_hint(exc)}") from exc
    if row is None:
        raise ConfigError(f"{path} records no device id; pass --device-id")
    return str(row[0])


def open_device(args: argparse.Namespace, *, new_ok: bool = False) -> Any:
    """A ``Client`` on ``args.state`` with ``args.device_id`` (or the recorded one) and ``args.trusted_key``.

    ``new_ok``: the directory may be new, in which case ``--device-id`` is required.
    """
    from nbo.sdk import Client

    state_dir = Path(args.state)
    if args.device_id is None and new_ok and not (state_dir / "state.sqlite").exists():
        raise InputError(f"{state_dir} is a new state directory: pass --device-id", field="device_id")
    device_id = args.device_id or stored_device_id(state_dir)
    return Client.open(state_dir, device_id=device_id, trusted_keys=[Path(p) for p in args.trusted_key])


def run(args: argparse.Namespace) -> int:
    profile = _json_object(args.profile, "--profile")
    context = _json_object(args.context, "--context")
    with open_device(args) as client:
        decision = client.decide(args.customer, channel=args.channel, context=context, profile=profile,
                                 limit=args.limit, explain=args.explain)
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
