"""The console on real volume: every page under 1 s of server time on a hub of 2,000,000 events
from 200 terminals (bench/RESULTS.md).

Seeds a SQLite hub quickly with bulk SQL (the synthetic field log of tests/console_helpers.py:
decisions with funnels, responses, purchases), starts a real ``nbo console`` process over it
(which folds the whole log into its rollups first: that time is reported as the catch-up),
logs in over HTTP and times each page and a CSV download several times, then appends 10,000
events to the hub and times the first page after them (it folds them in before answering).

    .venv/bin/python bench/bench_console.py [--devices 200] [--events-per-device 10000] [--rounds 5] [--strict]

Prints per page the median and worst wall time of the request and the server's own time
(``Server-Timing``), then how long 10,000 events appended to the hub take to show (the
console's background refresh), with page requests answered meanwhile; with ``--strict``
exits 1 when a page's worst server time is ≥ 1 s.
"""

from __future__ import annotations

import argparse
import hashlib
import http.cookiejar
import selectors
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from console_helpers import BUNDLE, catalog_bundle_bytes, device_ids, field_log  # noqa: E402
from nbo.gateway import HubStore  # noqa: E402

TOKEN = "bench-analyst-token"
TARGET_S = 1.0
PAGES = [
    "/field",
    "/offers?from=2026-09-01&to=2026-11-29",
    "/offers?from=2026-11-23&to=2026-11-29&channel=web&by=category&bucket=week",
    "/customers?from=2026-10-01&to=2026-10-31",
    "/customers?from=2026-09-01&to=2026-11-29",
    "/models",
    "/offers.csv?table=totals&from=2026-09-01&to=2026-11-29",
]


def seed(path: Path, devices: int, per_device: int, customers: int, days: int) -> int:
    hub = HubStore.open(f"sqlite:{path}", state_dir=path.parent)
    hub.register_bundle(catalog_bundle_bytes(), name=BUNDLE[0], version=BUNDLE[1])
    hub.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    total = 0
    for n, device in enumerate(device_ids(devices)):
        rows = field_log(device, events=per_device, customers=customers, days=days, seed=5)
        conn.executemany(
            "INSERT INTO hub_events(device_id, seq, event_id, type, created_at, payload, status, reason, received_at)"
            " VALUES (?, ?, ?, ?, ?, ?, 'ok', NULL, ?)", [(device, s, e, t, c, p, c) for s, e, t, c, p in rows])
        conn.execute("INSERT INTO hub_devices VALUES (?, ?, ?)", (device, len(rows), rows[-1][3]))
        conn.execute("INSERT INTO hub_device_status VALUES (?, ?, ?, ?, ?)",
                     (device, len(rows) + n % 7, BUNDLE[0], BUNDLE[1] - (n % 5 == 0), rows[-1][3]))
        conn.commit()
        total += len(rows)
    conn.close()
    return total


def append(path: Path, device: str, start_seq: int, n: int, days: int) -> None:
    rows = field_log(device + "-more", events=n, customers=1000, days=days, seed=9)
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO hub_events(device_id, seq, event_id, type, created_at, payload, status, reason, received_at)"
        " VALUES (?, ?, ?, ?, ?, ?, 'ok', NULL, ?)", [(device, start_seq + s, e, t, c, p, c) for s, e, t, c, p in rows])
    conn.execute("UPDATE hub_devices SET acked_through = acked_through + ? WHERE device_id = ?", (n, device))
    conn.commit()
    conn.close()


def start_console(hub: Path, config: Path) -> tuple[subprocess.Popen[str], str, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from nbo.cli import main; sys.exit(main())", "console",
         "--hub", f"sqlite:{hub}", "--listen", "127.0.0.1:0", "--config", str(config)],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and sel.select(timeout=deadline - time.monotonic()):
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("console listening on "):
            return proc, line.split()[-1], time.perf_counter() - started
    proc.kill()
    raise SystemExit("nbo console did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--events-per-device", type=int, default=10_000)
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--strict", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        hub = Path(tmp) / "hub.sqlite"
        t = time.perf_counter()
        total = seed(hub, args.devices, args.events_per_device, args.customers, args.days)
        print(f"seeded {total:,} events from {args.devices} terminals, {args.customers:,} customers, "
              f"{args.days} days in {time.perf_counter() - t:.0f}s ({hub.stat().st_size / 2**20:.0f} MiB)", flush=True)
        config = Path(tmp) / "gateway.toml"
        config.write_text(f'[[tokens]]\ntoken_sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"\n'
                          'role = "analyst"\n', encoding="utf-8")
        proc, url, catch_up = start_console(hub, config)
        try:
            print(f"catch-up (whole log into the rollups, then listening): {catch_up:.1f}s = "
                  f"{total / catch_up:,.0f} events/s", flush=True)
            jar = http.cookiejar.CookieJar()
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
            opener.open(url + "/login", data=urllib.parse.urlencode({"token": TOKEN}).encode(), timeout=60).read()
            assert any(c.name == "nbo_console" for c in jar), "login failed"
            worst_server = 0.0
            print(f"{'page':<78} {'median ms':>9} {'worst ms':>9} {'server ms':>9}")
            for page in PAGES:
                walls, servers = [], []
                for _ in range(args.rounds):
                    t = time.perf_counter()
                    with opener.open(url + page, timeout=60) as answer:
                        answer.read()
                        timing = answer.headers.get("Server-Timing")
                    walls.append(time.perf_counter() - t)
                    servers.append(float(timing.split("dur=")[1]) / 1000 if timing else walls[-1])
                worst_server = max(worst_server, max(servers))
                print(f"{page:<78} {statistics.median(walls) * 1000:9.0f} {max(walls) * 1000:9.0f} "
                      f"{max(servers) * 1000:9.0f}", flush=True)
            csv_page = url + "/offers.csv?table=totals&from=2026-09-01&to=2026-11-29"

            def shown_total() -> int:
                with opener.open(csv_page, timeout=60) as answer:
                    lines = answer.read().decode().strip().splitlines()[1:]
                return sum(int(line.split(",")[1]) for line in lines)

            before = shown_total()
            append(hub, "pos-001", args.events_per_device, 10_000, args.days)
            t = time.perf_counter()
            slowest = 0.0
            while shown_total() == before:  # the background refresh folds them in; pages keep answering
                if time.perf_counter() - t > 60:
                    raise SystemExit("10,000 new events were not visible within 60 s")
                q = time.perf_counter()
                opener.open(url + PAGES[3], timeout=60).read()
                slowest = max(slowest, time.perf_counter() - q)
            print(f"10,000 events appended to the hub: on the pages after {time.perf_counter() - t:.1f}s "
                  f"(background refresh every 2 s); slowest /customers request meanwhile "
                  f"{slowest * 1000:.0f} ms")
        finally:
            proc.terminate()
            proc.communicate(timeout=30)
    verdict = "OK" if worst_server < TARGET_S else "SLOW"
    print(f"worst page {worst_server * 1000:.0f} ms (target < {TARGET_S * 1000:.0f} ms): {verdict}")
    return 1 if args.strict and worst_server >= TARGET_S else 0


if __name__ == "__main__":
    sys.exit(main())
