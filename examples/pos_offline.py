"""A POS terminal that keeps selling while the network is down, and syncs when it comes back.

    python examples/pos_offline.py [--customers 12]

Self-contained, in a temporary directory: it makes a sample signed bundle (examples/_prepare.py),
installs it on terminal ``pos-7``, then runs a checkout loop — decide the offers, record the
customer's answer, the purchase, the loyalty points and the payment token — while every sync
attempt goes to a hub that is down (a closed port). Each attempt fails with ``SyncError``,
the checkout carries on, and the events wait in the durable outbox. Then the hub comes up (a
gateway started in-process on the same address, with a SQLite hub) and one sync delivers the
whole backlog exactly once.
"""

from __future__ import annotations

import argparse
import random
import socket
import sys
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

from nbo.sdk import Client, NboError, SyncError

DEVICE_ID = "pos-7"
DEVICE_TOKEN = "pos-7-device-token"
SYNC_EVERY = 4  # a real terminal runs `nbo sync --forever` (SyncLoop); here: try after every 4th checkout


def closed_port() -> int:
    """A loopback port nothing listens on (bound and released): the hub that is down."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_hub(root: Path, public_key: Path, port: int) -> tuple[Any, int]:
    """The gateway, in-process, with a SQLite hub, on ``port`` if it is still free (else any port)."""
    from nbo.gateway import create_server, parse_config

    config = parse_config({
        "tokens": [{"token": DEVICE_TOKEN, "role": "device", "device_id": DEVICE_ID}],
        "trust": {"keys": [str(public_key)]},
        "hub": {"db": f"sqlite:///{root / 'hub' / 'hub.sqlite'}"},
    })
    try:
        server, bound = create_server(config, state_dir=root / "hub", listen=f"127.0.0.1:{port}",
                                      bundle_poll_seconds=0)
    except NboError:  # someone took the port meanwhile ("cannot listen"): any free one will do here
        server, bound = create_server(config, state_dir=root / "hub", listen="127.0.0.1:0", bundle_poll_seconds=0)
    server.start()
    return server, bound


def checkout_loop(client: Client, profiles: dict[str, dict[str, object]], hub: str, rng: random.Random) -> int:
    """Serve every customer; try to sync now and then; return how many sync attempts failed."""
    failed = 0
    for n, (customer_id, profile) in enumerate(profiles.items(), start=1):
        decision = client.decide(customer_id, channel="pos", profile=profile, limit=3)
        offer = next((o for o in decision.offers if not o.mandatory), decision.offers[0])
        outcome = "accepted" if rng.random() < max(offer.propensity, 0.2) else "declined"
        client.record_response(decision.decision_id, offer.offer_id, outcome)
        amount = Decimal(rng.randrange(500, 15000)) / 100
        client.record_purchase(customer_id, amount=amount, idempotency_key=f"{decision.decision_id}:sale")
        client.award_points(customer_id, int(amount), idempotency_key=f"{decision.decision_id}:points",
                            reason="purchase")
        client.record_payment(customer_id, payment_token=f"tok_{rng.getrandbits(48):012x}", amount=amount,
                              currency="EUR", idempotency_key=f"{decision.decision_id}:pay", store_id="store-12",
                              decision_id=decision.decision_id, offer_id=offer.offer_id)
        print(f"checkout {n:2d}  {customer_id}  {amount:>7.2f} EUR  offered {offer.category.upper()} "
              f"{offer.name!r} -> {outcome}; points balance {client.points_balance(customer_id)}")
        if n % SYNC_EVERY == 0:
            try:
                client.sync(hub, token=DEVICE_TOKEN, timeout=1.0)
            except SyncError as exc:  # the hub is down: nothing is lost, the checkout goes on
                failed += 1
                print(f"  sync failed ({type(exc).__name__}: {str(exc).split(';')[0]}); "
                      f"{client.pending_events()} events wait in the outbox")
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--customers", type=int, default=12, help="checkouts to run offline (default 12)")
    parser.add_argument("--seed", type=int, default=3, help="random seed (default 3)")
    args = parser.parse_args(argv)

    from _prepare import prepare, sample_profiles  # the sample bundle maker next to this file

    with tempfile.TemporaryDirectory(prefix="nbo-pos-") as tmp:
        root = Path(tmp)
        print("preparing a sample bundle (data, model, keys) …")
        prepared = prepare(root / "central")
        port = closed_port()
        hub = f"127.0.0.1:{port}"
        with Client.open(root / DEVICE_ID, device_id=DEVICE_ID, trusted_keys=[prepared.public_key]) as client:
            info = client.install_bundle(prepared.bundle)
            print(f"{DEVICE_ID}: bundle {info.name} v{info.version} installed; hub {hub} is DOWN\n")

            failed = checkout_loop(client, sample_profiles(prepared, args.customers), hub, random.Random(args.seed))
            waiting = client.pending_events()
            print(f"\noffline: {args.customers} checkouts served, {failed} sync attempts failed, "
                  f"{waiting} events waiting in the outbox")

            server, bound = start_hub(root, prepared.public_key, port)
            try:
                hub = f"127.0.0.1:{bound}"
                print(f"the hub is back at {hub}; syncing …")
                report = client.sync(hub, token=DEVICE_TOKEN, timeout=10.0)
                print(f"synced: pushed {report.pushed} events, hub acknowledged through seq {report.acked_through}, "
                      f"dead-lettered {report.dead_lettered}, balances updated {report.balances_updated}; "
                      f"{client.pending_events()} events pending")
                again = client.sync(hub, token=DEVICE_TOKEN, timeout=10.0)
                print(f"synced again: pushed {again.pushed} events (nothing left to send)")
                left = client.pending_events()
            finally:
                server.stop(grace=2).wait()
        if report.pushed != waiting or left != 0:
            print("error: the backlog did not reach the hub", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
