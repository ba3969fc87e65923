"""What the integrity check costs when a device opens its state (docs/operations.md, Recovering a
damaged device).

For device states of growing size (decision events in the outbox, as a terminal accumulates
them), side by side in one run: opening the device (``Client.open``, which runs ``PRAGMA quick_check``),
the ``quick_check`` alone, and the full ``integrity_check`` for comparison. Warm page cache (the
file was just written); a cold cache adds one read of the file.
"""

from __future__ import annotations

import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from nbo.sdk import Client

_OFFERS = [{"offer_id": f"OFFER_{i}", "category": "xsell", "rank": i + 1, "propensity": 0.1234, "value": 12.5,
            "weight": 1.0, "lever": 1.0, "score": 1.5425, "selection_probability": 0.2} for i in range(3)]


def open_client(state: Path) -> Client:
    return Client.open(state, device_id="bench-1", trusted_keys=[])


def build(state: Path, events: int) -> None:
    client = open_client(state)
    try:
        for start in range(0, events, 5000):
            with client._store.transaction() as tx:
                tx.append_events("decision", [
                    {"decision_id": str(uuid.uuid4()), "customer_id": f"C{n % 5000}", "channel": "pos",
                     "bundle_name": "retail", "bundle_version": 3, "strategy": "develop", "offers": _OFFERS}
                    for n in range(start, min(events, start + 5000))])
    finally:
        client.close()


def timed(fn: object, repeat: int = 5) -> float:
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1000


def pragma(path: Path, name: str) -> None:
    conn = sqlite3.connect(str(path))
    try:
        assert conn.execute(f"PRAGMA {name}").fetchall() == [("ok",)]
    finally:
        conn.close()


def main() -> int:
    print("| outbox events | file MB | open (ms) | quick_check alone (ms) | ms per MB | integrity_check (ms) |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for events in (1_000, 20_000, 100_000):
            state = Path(tmp) / f"state-{events}"
            build(state, events)
            path = state / "state.sqlite"
            mb = path.stat().st_size / 1e6
            open_ms = timed(lambda s=state: open_client(s).close())
            quick = timed(lambda p=path: pragma(p, "quick_check"))
            full = timed(lambda p=path: pragma(p, "integrity_check"), repeat=3)
            print(f"| {events:,} | {mb:.1f} | {open_ms:.1f} | {quick:.1f} | {quick / mb:.2f} | {full:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
