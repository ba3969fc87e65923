"""A POS terminal as a separate process, for the sync fault tests (run as a script, not collected).

    python tests/sync_terminal.py --state DIR --device D [--record N] [--seed S] [--customers K]
        [--hub HOST:PORT --token T] [--batch B] [--trusted-key PUB] [--learn CUSTOMER ...]

Records N loyalty/response/payment operations (awards, redemptions within the local balance,
responses, payments), printing ``recorded`` when done, then — with ``--hub`` — prints
``syncing`` and runs one sync, printing the report as JSON. The fault tests SIGKILL it at
random points.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import uuid
from pathlib import Path

# Letters only: a random id with a long run of digits could pass for a card number and be refused.
_LETTERS = str.maketrans("0123456789", "ghijklmnop")


def _key() -> str:
    return uuid.uuid4().hex.translate(_LETTERS)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--state", required=True)
    parser.add_argument("--device", required=True)
    parser.add_argument("--record", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--customers", type=int, default=5)
    parser.add_argument("--hub")
    parser.add_argument("--token", default="")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--trusted-key", action="append", default=[])
    parser.add_argument("--learn", action="append", default=[], help="record a response for this customer first")
    args = parser.parse_args()

    from nbo.sdk import Client, ClientConfig, LedgerError

    rng = random.Random(args.seed)
    with Client.open(Path(args.state), device_id=args.device, trusted_keys=[Path(p) for p in args.trusted_key],
                     config=ClientConfig(sync_batch_size=args.batch)) as client:
        for customer in args.learn:
            with client._store.transaction() as tx:  # any event naming the customer returns its balance
                tx.append_event("response", {"decision_id": str(uuid.uuid4()), "offer_id": "o1",
                                             "customer_id": customer, "category": "loyalty", "channel": "pos",
                                             "outcome": "ignored"})
        for _ in range(args.record):
            customer = f"c{rng.randrange(args.customers)}"
            roll = rng.random()
            key = f"{args.device}.{_key()}"
            if roll < 0.55:
                client.award_points(customer, rng.randint(1, 50), idempotency_key=key, reason="purchase")
            elif roll < 0.75:
                available = client.points_balance(customer)
                if available > 0:
                    try:
                        client.redeem_points(customer, rng.randint(1, available), idempotency_key=key,
                                             reason="reward")
                    except LedgerError:
                        pass
            elif roll < 0.9:
                with client._store.transaction() as tx:
                    tx.append_event("response", {"decision_id": str(uuid.uuid4()), "offer_id": "o1",
                                                 "customer_id": customer, "category": "xsell", "channel": "pos",
                                                 "outcome": rng.choice(["accepted", "declined", "ignored"])})
            else:
                client.record_payment(customer, payment_token=f"tok_{_key()}", amount="9.99",
                                      currency="EUR", idempotency_key=key)
        print("recorded", flush=True)
        if args.hub:
            print("syncing", flush=True)
            report = client.sync(args.hub, token=args.token, timeout=10)
            print(json.dumps({"pushed": report.pushed, "acked_through": report.acked_through,
                              "dead": report.dead_lettered, "errors": list(report.errors),
                              "bundle": report.bundle_installed.version if report.bundle_installed else None}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
