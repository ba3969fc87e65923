"""Learning-loop benchmark: `nbo export` of 1,000,000 logged slots from a SQLite hub, and `nbo evaluate`.

Targets (bench/RESULTS.md, docs/learning.md):

* export rows/s ≥ 0.5 × a bare ``SELECT`` of the same rows (decision, its event payload, the
  slot's reward row) written with ``pyarrow.parquet.write_table`` (zstd), in the same run;
* peak resident memory of the exporting process ≤ 400 MB (a fresh process, ``VmHWM``);
* ``evaluate_bundle`` with 200 bootstrap resamples grows linearly with rows: timed on the
  first quarter of the log and on all of it (the ratio is printed; 4 = linear).

The hub is filled directly (tables as the sync and attribution write them): 333,334 decisions of
3 shown slots, 20 offers in play each, the 6 customer/context inputs of the benchmark model,
spread over 10 days and 10 terminals; the attribution pass at the start of the export has
nothing left to read.

    .venv/bin/python bench/bench_learning.py [--slots 1000000] [--strict]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from engine_fixtures import signed_bundle, signing_keys, synthetic_spec, train_model  # noqa: E402

TARGET_RATIO = 0.5
TARGET_RSS_MB = 400.0
SLOTS_PER_DECISION = 3
ELIGIBLE = 20
DAY = 86_400.0
T0 = 1_780_000_000.0

_CHILD = r"""
import json, sys, time
from nbo.gateway import export_log
t0 = time.perf_counter()
report = export_log(sys.argv[1], sys.argv[2])
elapsed = time.perf_counter() - t0
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"rows": report.rows, "seconds": elapsed, "hwm_kb": int(status["VmHWM"].split()[0])}))
"""


def fill_hub(path: Path, n_slots: int) -> int:
    """A hub database holding ``n_slots`` shown slots with rewards; returns the decisions written."""
    from nbo.gateway import HubStore, attribute_rewards

    hub = HubStore.open(f"sqlite:///{path}", state_dir=path.parent)
    attribute_rewards(hub)  # creates the reward tables
    hub.close()
    rng = random.Random(5)
    offers = [f"OF{i:05d}" for i in range(200)]
    decisions = -(-n_slots // SLOTS_PER_DECISION)
    devices = [f"pos-{d}" for d in range(10)]
    seqs = dict.fromkeys(devices, 0)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    events, decided, rewards = [], [], []
    slots_left = n_slots
    stages = ["new", "starter", "active", "declining", "inactive", "lost"]

    def flush() -> None:
        conn.executemany("INSERT INTO hub_events(device_id, seq, event_id, type, created_at, payload, status, "
                         "reason, received_at) VALUES (?, ?, ?, 'decision', ?, ?, 'ok', NULL, ?)", events)
        conn.executemany("INSERT INTO hub_decisions(decision_id, device_id, seq, customer_id, channel, bundle_name, "
                         "bundle_version, strategy, decided_at, window_days) VALUES (?, ?, ?, ?, 'pos', 'bench', 1, "
                         "'develop', ?, 7)", decided)
        conn.executemany("INSERT INTO hub_rewards(decision_id, offer_id, position, category, propensity, value, "
                         "weight, lever, score, selection_probability, outcome, responded_at, accepted, purchases, "
                         "purchase_amount, window_ends, attributed_at) VALUES (?, ?, ?, 'xsell', ?, 40.0, 1.0, 1.0, "
                         "?, ?, ?, ?, ?, 0, '0', ?, ?)", rewards)
        events.clear()
        decided.clear()
        rewards.clear()

    for n in range(decisions):
        device = devices[n % len(devices)]
        seqs[device] += 1
        at = T0 + n * (10 * DAY / decisions)
        decision_id = str(uuid.UUID(int=rng.getrandbits(128)))
        eligible = rng.sample(offers, ELIGIBLE)
        k = min(SLOTS_PER_DECISION, slots_left)
        slots_left -= k
        shown = [{"offer_id": eligible[r], "category": "xsell", "rank": r + 1, "propensity": 0.1, "value": 40.0,
                  "weight": 1.0, "lever": 1.0, "score": 4.0, "selection_probability": p}
                 for r, p in zip(range(k), (0.95, 0.9974, 0.9974), strict=False)]
        payload = {
            "decision_id": decision_id, "customer_id": f"C{rng.randrange(100_000):06d}", "channel": "pos",
            "bundle_name": "bench", "bundle_version": 1, "strategy": "develop", "offers": shown,
            "inputs": {"context__channel": "pos", "context__hour": rng.randrange(24),
                       "customer__frequency": rng.randrange(30), "customer__lifecycle_stage": rng.choice(stages),
                       "customer__monetary": round(rng.gammavariate(2, 150), 4),
                       "customer__recency_days": round(rng.expovariate(1 / 60), 3)},
            "eligible": {"offers": eligible, "p": [[1.0, 2], [0.9974, 1], [0.0026, ELIGIBLE - 3]], "mandatory": 0,
                         "epsilon": 0.05},
        }
        events.append((device, seqs[device], str(uuid.uuid4()), at, json.dumps(payload, separators=(",", ":")), at))
        decided.append((decision_id, device, seqs[device], payload["customer_id"], at))
        for slot in shown:
            accepted = rng.random() < 0.12
            rewards.append((decision_id, slot["offer_id"], slot["rank"], 0.1, 4.0, slot["selection_probability"],
                            "accepted" if accepted else "ignored", at + 60, int(accepted), at + 7 * DAY, at))
        if len(events) >= 20_000:
            flush()
    flush()
    conn.executemany("INSERT INTO hub_devices(device_id, acked_through, updated_at) VALUES (?, ?, ?)",
                     [(d, s, T0) for d, s in seqs.items()])
    conn.executemany("INSERT INTO hub_attribution_cursor(device_id, seq) VALUES (?, ?)", list(seqs.items()))
    conn.commit()
    conn.close()
    return decisions


def bare_select(path: Path, out: Path) -> tuple[int, float]:
    """The baseline: the same rows by one plain SELECT, written by write_table (zstd)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT d.decided_at, d.decision_id, d.device_id, d.channel, d.bundle_name, d.bundle_version, d.customer_id, "
        "d.strategy, r.position, r.offer_id, r.category, r.selection_probability, r.propensity, r.value, r.weight, "
        "r.lever, r.score, r.outcome, r.responded_at, r.accepted, r.purchases, r.purchase_amount, e.payload "
        "FROM hub_decisions d JOIN hub_events e ON e.device_id = d.device_id AND e.seq = d.seq "
        "JOIN hub_rewards r ON r.decision_id = d.decision_id ORDER BY d.decided_at, d.decision_id, r.position"
    ).fetchall()
    conn.close()
    names = ["decided_at", "decision_id", "device_id", "channel", "bundle_name", "bundle_version", "customer_id",
             "strategy", "position", "offer_id", "category", "selection_probability", "propensity", "value", "weight",
             "lever", "score", "outcome", "responded_at", "accepted", "purchases", "purchase_amount", "payload"]
    table = pa.table({name: [r[k] for r in rows] for k, name in enumerate(names)})
    pq.write_table(table, out, compression="zstd")
    return len(rows), time.perf_counter() - t0


def evaluate(log: Path, bundle: Path) -> float:
    from nbo.model_export import evaluate_bundle

    t0 = time.perf_counter()
    evaluate_bundle(log, bundle, n_bootstrap=200)
    return time.perf_counter() - t0


def quarter(log: Path, out: Path) -> Path:
    """The first quarter of the exported days, as its own log."""
    import shutil

    marker = json.loads((log / "_nbo_log.json").read_text())
    days = marker["days"][: max(1, len(marker["days"]) // 4)]
    out.mkdir()
    rows = 0
    import pyarrow.parquet as pq

    for day in days:
        shutil.copytree(log / f"day={day}", out / f"day={day}")
        rows += pq.read_metadata(out / f"day={day}" / "part-0.parquet").num_rows
    (out / "_nbo_log.json").write_text(json.dumps({**marker, "days": days, "rows": rows}))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=1_000_000, help="logged slots to export (default 1,000,000)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nbo-bench-learning-") as tmp:
        work = Path(tmp)
        hub = work / "hub" / "hub.sqlite"
        hub.parent.mkdir()
        t0 = time.perf_counter()
        decisions = fill_hub(hub, args.slots)
        print(f"hub filled: {args.slots:,} slots of {decisions:,} decisions in {time.perf_counter() - t0:.1f}s "
              f"({hub.stat().st_size / 1e6:.0f} MB)", flush=True)
        base_rows, base_s = bare_select(hub, work / "bare.parquet")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run([sys.executable, "-c", _CHILD, f"sqlite:///{hub}", str(work / "log")],
                              capture_output=True, text=True, env=env, check=True)
        child: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        base_rows2, base_s2 = bare_select(hub, work / "bare2.parquet")  # again after: fair to a warm cache
        base_s = min(base_s, base_s2)
        export_rate = child["rows"] / child["seconds"]
        base_rate = base_rows / base_s
        ratio = export_rate / base_rate
        rss_mb = child["hwm_kb"] / 1024
        log_mb = sum(p.stat().st_size for p in (work / "log").rglob("*.parquet")) / 1e6
        print(f"export   {child['rows']:,} rows in {child['seconds']:.1f}s = {export_rate:,.0f} rows/s; "
              f"peak RSS {rss_mb:.0f} MB; {log_mb:.0f} MB of Parquet")
        print(f"baseline {base_rows:,} rows in {base_s:.1f}s = {base_rate:,.0f} rows/s (bare SELECT + write_table)")
        print(f"export ÷ baseline = {ratio:.2f} (target ≥ {TARGET_RATIO}); peak RSS target ≤ {TARGET_RSS_MB:.0f} MB")
        key, _ = signing_keys(work / "keys")
        bundle = signed_bundle(work / "cand", synthetic_spec(200, name="candidate"), key=key,
                               models={"gbt0": train_model(100, 0, 2000)[0]}, version=2)
        small = quarter(work / "log", work / "log-quarter")
        small_rows = json.loads((small / "_nbo_log.json").read_text())["rows"]
        t_small = evaluate(small, bundle)
        t_full = evaluate(work / "log", bundle)
        growth = t_full / t_small
        print(f"evaluate (200 bootstrap resamples): {small_rows:,} rows {t_small:.1f}s; {child['rows']:,} rows "
              f"{t_full:.1f}s; ×{child['rows'] / small_rows:.1f} rows → ×{growth:.2f} time")
        print(json.dumps({"bench": "learning", "export_rows_per_s": round(export_rate),
                          "baseline_rows_per_s": round(base_rate), "ratio": round(ratio, 3),
                          "peak_rss_mb": round(rss_mb, 1), "evaluate_s": round(t_full, 2),
                          "evaluate_quarter_s": round(t_small, 2), "rows": child["rows"]}))
    missed = []
    if ratio < TARGET_RATIO:
        missed.append(f"export is {ratio:.2f}x the bare SELECT + write_table (target >= {TARGET_RATIO})")
    if rss_mb > TARGET_RSS_MB:
        missed.append(f"export peak RSS {rss_mb:.0f} MB (target <= {TARGET_RSS_MB:.0f} MB)")
    if growth > 1.5 * child["rows"] / small_rows:
        missed.append(f"evaluate grows x{growth:.2f} for x{child['rows'] / small_rows:.1f} rows (worse than linear)")
    for line in missed:
        print(f"MISSED: {line}")
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
