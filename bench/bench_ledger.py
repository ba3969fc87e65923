"""Durable ``award_points`` per second vs raw SQLite WAL ``synchronous=FULL`` single-row commits.

bench/RESULTS.md target: the SDK's fsync'd award reaches at least 50 % of what bare SQLite can
commit, one row per transaction, with ``journal_mode=WAL`` and ``synchronous=FULL`` on the
same disk, measured in the same run (so the ratio, not the absolute figure, is what counts).

    .venv/bin/python bench/bench_ledger.py [--seconds 6] [--rounds 12] [--dir DIR] [--strict]

Prints both rates and the ratio (with ``--strict``, exits 1 if it misses the target). Both sides run in
short alternating rounds and the headline ratio is the median of the per-round ratios, so
that disk contention from other processes on a shared machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from nbo.sdk import Client

TARGET_RATIO = 0.5


def raw_commits(path: Path, seconds: float) -> tuple[int, float]:
    """Single-row INSERT + COMMIT in a loop on a WAL, synchronous=FULL database."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t(id TEXT PRIMARY KEY, customer_id TEXT, points INTEGER, at REAL)")
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (?, ?, ?, ?)", (str(uuid.uuid4()), "C1", 10, time.time()))
        conn.execute("COMMIT")
        n += 1
    elapsed = time.perf_counter() - start
    conn.close()
    return n, elapsed


def sdk_awards(client: Client, seconds: float, round_no: int) -> tuple[int, float]:
    """``Client.award_points`` (durable: fsync'd before it returns) in a loop, fresh keys."""
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        client.award_points(f"C{n % 100}", 10, idempotency_key=f"r{round_no}-{n}", reason="bench")
        n += 1
    elapsed = time.perf_counter() - start
    return n, elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="total seconds per side (default 6)")
    parser.add_argument("--rounds", type=int, default=12, help="alternating rounds (default 12)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the ratio misses the target")
    parser.add_argument("--dir", type=Path, default=None,
                        help="directory on the disk to measure (default: a temp dir under the working dir)")
    args = parser.parse_args(argv)
    base = args.dir or Path.cwd()
    base.mkdir(parents=True, exist_ok=True)
    raw_n = sdk_n = 0
    raw_t = sdk_t = 0.0
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="nbo-bench-ledger-", dir=base) as tmp:
        root = Path(tmp)
        client = Client.open(root / "state", device_id="bench-device", trusted_keys=[])
        per_round = args.seconds / args.rounds
        try:
            sdk_awards(client, 0.2, -1)  # warm-up: schema pages, statement cache
            raw_commits(root / "raw.sqlite", 0.2)
            for round_no in range(args.rounds):
                # Alternate which side goes first so neither always inherits the other's checkpoint.
                sides = [("raw", round_no), ("sdk", round_no)]
                if round_no % 2:
                    sides.reverse()
                rates: dict[str, float] = {}
                for side, _ in sides:
                    if side == "raw":
                        n, t = raw_commits(root / "raw.sqlite", per_round)
                        raw_n, raw_t = raw_n + n, raw_t + t
                    else:
                        n, t = sdk_awards(client, per_round, round_no)
                        sdk_n, sdk_t = sdk_n + n, sdk_t + t
                    rates[side] = n / t
                ratios.append(rates["sdk"] / rates["raw"])
        finally:
            client.close()
    raw_rate = raw_n / raw_t
    sdk_rate = sdk_n / sdk_t
    ratio = statistics.median(ratios)
    print(f"raw SQLite WAL synchronous=FULL single-row commits: {raw_rate:,.0f}/s")
    print(f"durable award_points:                              {sdk_rate:,.0f}/s")
    verdict = "meets" if ratio >= TARGET_RATIO else "BELOW"
    print(f"ratio (median of {len(ratios)} paired rounds): {ratio:.2f} "
          f"(overall {sdk_rate / raw_rate:.2f}; {verdict} the {TARGET_RATIO:.2f} target)")
    return 1 if args.strict and ratio < TARGET_RATIO else 0


if __name__ == "__main__":
    sys.exit(main())
