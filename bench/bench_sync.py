"""Sync ingest: events per second from a terminal's outbox into the hub over loopback.

bench/RESULTS.md target: ≥ 20,000 events/s, SQLite hub. The hub runs as a real ``nbo serve``
process (SQLite hub store, synchronous=FULL); this process is the terminal: it fills its
outbox with a realistic mix (decision, response, points, payment events — the points ones go
into the hub's authoritative ledger), then times ``Client.sync`` pushing it all in large
batches and marking it acknowledged.

    .venv/bin/python bench/bench_sync.py [--events 60000] [--batch 5000] [--rounds 3] [--strict]

Prints events/s per round and the median (with ``--strict``, exits 1 below the target).
"""

from __future__ import annotations

import argparse
import json
import random
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from nbo.sdk import Client, ClientConfig

TARGET = 20_000.0
ELIGIBLE = [f"OF{k:05d}" for k in range(200) if k % 3][:126]


def fill_outbox(client: Client, n: int, rng: random.Random) -> None:
    """n events, the mix a POS terminal produces, written straight to the outbox in bulk."""
    with client._store.transaction() as tx:
        for i in range(n):
            customer = f"C{rng.randrange(5000):05d}"
            roll = i % 10
            if roll < 4:
                decision_id = str(uuid.uuid4())
                tx.append_event("decision", {
                    "decision_id": decision_id, "customer_id": customer, "channel": "pos",
                    "bundle_name": "retail", "bundle_version": 3, "strategy": "develop",
                    "offers": [{"offer_id": f"OF{k:05d}", "category": "xsell", "rank": k, "propensity": 0.12,
                                "value": 40.0, "weight": 1.2, "lever": 1.0, "score": 5.76,
                                "selection_probability": 1.0} for k in range(3)],
                    # what bench_decide's 200-offer catalog logs: 8 raw inputs, 126 offers in play
                    "inputs": {"context__channel": "pos", "context__hour": 14, "customer__frequency": 5,
                               "customer__lifecycle_stage": "active", "customer__monetary": 312.4587,
                               "customer__recency_days": 23.817, "context__weekday": 2, "customer__age": 41},
                    "eligible": {"offers": ELIGIBLE, "p": [[1.0, 2], [0.9996, 1], [0.0004, 123]],
                                 "mandatory": 0, "epsilon": 0.05},
                })
            elif roll < 7:
                tx.append_event("response", {"decision_id": str(uuid.uuid4()), "offer_id": "O1",
                                             "customer_id": customer, "category": "xsell", "channel": "pos",
                                             "outcome": "accepted"})
            elif roll < 9:
                tx.append_event("points", {
                    "entry_id": str(uuid.uuid4()), "customer_id": customer, "kind": "award",
                    "points": rng.randint(1, 100), "reason": "purchase", "idempotency_key": str(uuid.uuid4()),
                    "created_at": tx.now, "expires_at": None, "reverses": None,
                })
            else:
                tx.append_event("payment", {
                    "payment_id": str(uuid.uuid4()), "customer_id": customer, "payment_token": "tok_abcdef",
                    "amount": "19.99", "currency": "EUR", "store_id": "S1", "decision_id": None,
                    "offer_id": None, "idempotency_key": str(uuid.uuid4()),
                })


def start_hub(root: Path, devices: list[str]) -> tuple[subprocess.Popen[str], int]:
    config = root / "gateway.toml"
    config.write_text("".join(f'[[tokens]]\ntoken = "tok-{d}"\nrole = "device"\ndevice_id = "{d}"\n\n'
                              for d in devices))
    cli = Path(sys.executable).with_name("nbo")
    cmd = [str(cli)] if cli.exists() else [sys.executable, "-c",
                                           "import sys; from nbo.cli import main; sys.exit(main())"]
    proc = subprocess.Popen([*cmd, "serve", "--state", str(root / "hub"), "--listen", "127.0.0.1:0",
                             "--config", str(config)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"nbo serve did not start: {line!r}")
    return proc, int(line.rsplit(":", 1)[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--strict", action="store_true")
    args = parser.parse_args()

    rng = random.Random(7)
    devices = [f"bench-{i}" for i in range(args.rounds)]
    with tempfile.TemporaryDirectory(prefix="nbo-bench-sync-") as tmp:
        root = Path(tmp)
        hub, port = start_hub(root, devices)
        rates = []
        try:
            for device in devices:
                with Client.open(root / device, device_id=device, trusted_keys=[],
                                 config=ClientConfig(sync_batch_size=args.batch)) as client:
                    fill_outbox(client, args.events, rng)
                    started = time.perf_counter()
                    report = client.sync(f"127.0.0.1:{port}", token=f"tok-{device}", timeout=120, download=False)
                    elapsed = time.perf_counter() - started
                    assert report.pushed == args.events and report.acked_through == args.events, report
                    assert client.pending_events() == 0
                rate = args.events / elapsed
                rates.append(rate)
                print(f"round {device}: {args.events} events in {elapsed:.2f}s = {rate:,.0f} events/s "
                      f"(batch {args.batch}, dead-lettered {report.dead_lettered})", flush=True)
        finally:
            hub.send_signal(signal.SIGTERM)
            hub.wait(30)
    median = statistics.median(rates)
    ok = median >= TARGET
    print(json.dumps({"bench": "sync_ingest", "events_per_s_median": round(median), "target": TARGET,
                      "batch": args.batch, "events": args.events, "ok": ok}))
    print(f"sync ingest terminal → hub (loopback, SQLite hub): {median:,.0f} events/s "
          f"(target ≥ {TARGET:,.0f}) — {'OK' if ok else 'BELOW TARGET'}")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
