"""Rewards, attributed: each shown offer joined to what followed it (docs/learning.md).

The hub's event log holds decisions, responses and purchases as they arrived, from terminals
that may have been offline for days. :func:`attribute_rewards` reads what arrived since its
last pass (a cursor per event source, up to that source's ``acked_through``, so nothing is
skipped however late it comes) into three tables, then recomputes the reward of every
decision the new events can touch:

- ``hub_decisions`` — one row per decision (customer, channel, bundle, time, attribution
  window of its catalog);
- ``hub_rewards`` — one row per shown slot (``decision_id``, ``offer_id``): the logged score
  parts and selection probability, the response (``accepted``/``declined``/``ignored``, the
  first one recorded stands), and the purchases of that customer within the decision's
  attribution window (last touch: a purchase belongs to the customer's latest decision at or
  before it, so no purchase counts twice);
- ``hub_responses`` and ``hub_purchases`` — the responses and purchases as attributed.

A reward is a function of the events held, never of the order they arrived in: re-running a
pass, or rebuilding everything (``rebuild=True``), gives the same rows. The attribution window
is the catalog's ``attribution: {window_days: N}`` (default 7), read from the published bundle
the decision names; a decision of a bundle the hub does not hold gets the default.
"""

from __future__ import annotations

import io
import json
import sqlite3
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, Any

from ._db import DbTx
from ._hub import SCHEMA_LOCK_KEY, HubStore

__all__ = ["DEFAULT_WINDOW_DAYS", "REWARD_SCHEMA", "AttributionReport", "attribute_rewards"]

DEFAULT_WINDOW_DAYS = 7.0
_DAY = 86_400.0
_BATCH = 2_000  # events per transaction
_IN_CHUNK = 400
ATTRIBUTION_LOCK_KEY = 0x4E42_0014
"""PostgreSQL advisory-lock key held by a pass: replicas attributing at once take turns."""

REWARD_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS hub_decisions(
        decision_id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        seq BIGINT NOT NULL,              -- the decision event: hub_events(device_id, seq)
        customer_id TEXT NOT NULL,
        channel TEXT NOT NULL,
        bundle_name TEXT NOT NULL,
        bundle_version BIGINT NOT NULL,
        strategy TEXT NOT NULL,
        decided_at DOUBLE PRECISION NOT NULL,
        window_days DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS hub_decisions_by_customer ON hub_decisions(customer_id, decided_at)",
    "CREATE INDEX IF NOT EXISTS hub_decisions_by_time ON hub_decisions(decided_at, decision_id)",
    """CREATE TABLE IF NOT EXISTS hub_rewards(
        decision_id TEXT NOT NULL,
        offer_id TEXT NOT NULL,
        position BIGINT NOT NULL,         -- rank in the answer, 1 = first
        category TEXT NOT NULL,
        propensity DOUBLE PRECISION,
        value DOUBLE PRECISION,
        weight DOUBLE PRECISION,
        lever DOUBLE PRECISION,
        score DOUBLE PRECISION,
        selection_probability DOUBLE PRECISION,
        outcome TEXT,                     -- accepted | declined | ignored | NULL (no response yet)
        responded_at DOUBLE PRECISION,
        accepted INTEGER NOT NULL,        -- 1 when outcome = accepted
        purchases BIGINT NOT NULL,        -- of the decision (the same on each of its slots)
        purchase_amount TEXT NOT NULL,    -- decimal string, sum of those purchases
        window_ends DOUBLE PRECISION NOT NULL,
        attributed_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY(decision_id, offer_id))""",
    """CREATE TABLE IF NOT EXISTS hub_responses(
        decision_id TEXT NOT NULL,
        offer_id TEXT NOT NULL,
        outcome TEXT NOT NULL,
        responded_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY(decision_id, offer_id))""",
    """CREATE TABLE IF NOT EXISTS hub_purchases(
        purchase_id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        amount TEXT NOT NULL,
        ts DOUBLE PRECISION NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS hub_purchases_by_customer ON hub_purchases(customer_id, ts)",
    """CREATE TABLE IF NOT EXISTS hub_attribution_cursor(
        device_id TEXT PRIMARY KEY,
        seq BIGINT NOT NULL)              -- every event of the source up to seq has been read""",
    """CREATE TABLE IF NOT EXISTS hub_attribution_windows(
        bundle_name TEXT NOT NULL,
        bundle_version BIGINT NOT NULL,
        window_days DOUBLE PRECISION NOT NULL,
        PRIMARY KEY(bundle_name, bundle_version))""",
)


@dataclass(frozen=True, slots=True)
class AttributionReport:
    """What one pass did."""

    events: int
    """Events read (every type; those of other types are only passed over)."""
    decisions: int
    """New decisions (each with its shown slots)."""
    recomputed: int
    """Decisions whose reward was recomputed (new ones and those a new event touched)."""


def ensure_schema(hub: HubStore) -> None:
    """Create the reward tables (idempotent; one creator at a time on PostgreSQL)."""
    with hub.db.transaction() as tx:
        if hub.db.dialect == "postgresql":
            tx.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK_KEY,))
        for ddl in REWARD_SCHEMA:
            tx.execute(ddl)


def attribute_rewards(hub: HubStore, *, rebuild: bool = False, progress: Any = None) -> AttributionReport:
    """Bring ``hub_rewards`` up to date with every event the hub holds; see the module docstring.

    ``rebuild=True`` forgets every attribution and reads the whole log again (the result is the
    same as the incremental passes gave). ``progress(events_read)`` is called after each batch.
    """
    ensure_schema(hub)
    if rebuild:
        with hub.db.transaction() as tx:
            for table in ("hub_rewards", "hub_decisions", "hub_responses", "hub_purchases",
                          "hub_attribution_cursor", "hub_attribution_windows"):
                tx.execute(f"DELETE FROM {table}")
    windows: dict[tuple[str, int], float] = {}
    events = decisions = recomputed = 0
    while True:
        with hub.db.transaction() as tx:
            if hub.db.dialect == "postgresql":
                tx.execute("SELECT pg_advisory_xact_lock(?)", (ATTRIBUTION_LOCK_KEY,))
            batch = _next_batch(tx)
            if not batch:
                break
            new_decisions, touched = _read_events(hub, tx, batch, windows)
            recomputed += _recompute(tx, touched, now=hub.clock.now())
            events += len(batch)
            decisions += new_decisions
        if progress is not None:
            progress(events)
    return AttributionReport(events=events, decisions=decisions, recomputed=recomputed)


def _next_batch(tx: DbTx) -> list[tuple[Any, ...]]:
    """Up to ``_BATCH`` unread events, source by source in seq order, and the cursor advanced."""
    sources = tx.execute(
        "SELECT d.device_id, d.acked_through, COALESCE(c.seq, 0) FROM hub_devices d "
        "LEFT JOIN hub_attribution_cursor c ON c.device_id = d.device_id "
        "WHERE d.acked_through > COALESCE(c.seq, 0) ORDER BY d.device_id"
    )
    out: list[tuple[Any, ...]] = []
    for device_id, acked, cursor in sources:
        room = _BATCH - len(out)
        if room <= 0:
            break
        rows = tx.execute(
            "SELECT device_id, seq, type, created_at, payload, status FROM hub_events "
            "WHERE device_id = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (device_id, int(cursor), int(acked), room),
        )
        if not rows:
            continue
        out.extend(rows)
        tx.execute(
            "INSERT INTO hub_attribution_cursor(device_id, seq) VALUES (?, ?) "
            "ON CONFLICT (device_id) DO UPDATE SET seq = excluded.seq",
            (device_id, int(rows[-1][1])),
        )
    return out


class _Touched:
    """What a batch of events can change: per customer, the earliest time from which their
    decisions must be recomputed; and single decisions (responses)."""

    def __init__(self) -> None:
        self.customers: dict[str, float] = {}
        self.decisions: set[str] = set()

    def customer(self, customer_id: str, since: float) -> None:
        known = self.customers.get(customer_id)
        if known is None or since < known:
            self.customers[customer_id] = since


def _read_events(hub: HubStore, tx: DbTx, batch: Sequence[tuple[Any, ...]],
                 windows: dict[tuple[str, int], float]) -> tuple[int, _Touched]:
    touched = _Touched()
    decision_rows: list[tuple[Any, ...]] = []
    slot_rows: list[tuple[Any, ...]] = []
    response_rows: list[tuple[Any, ...]] = []
    purchase_rows: list[tuple[Any, ...]] = []
    now = hub.clock.now()
    longest = max([DEFAULT_WINDOW_DAYS, *windows.values()])
    for device_id, seq, kind, created_at, text, status in batch:
        if status != "ok" or kind not in ("decision", "response", "purchase"):
            continue
        try:
            payload = json.loads(text)
        except ValueError:
            continue
        if not isinstance(payload, Mapping):
            continue
        if kind == "decision":
            if payload.get("compacted") is True or not isinstance(payload.get("offers"), list):
                continue  # a terminal compacted it past its disk budget: nothing to learn from
            at = float(created_at)
            name, version = str(payload["bundle_name"]), int(payload["bundle_version"])
            days = _window(hub, tx, windows, name, version)
            longest = max(longest, days)
            customer = str(payload["customer_id"])
            decision_rows.append((payload["decision_id"], device_id, int(seq), customer, payload["channel"], name,
                                  version, str(payload.get("strategy") or ""), at, days))
            for offer in payload["offers"]:
                if not isinstance(offer, Mapping) or not isinstance(offer.get("offer_id"), str):
                    continue
                slot_rows.append((payload["decision_id"], offer["offer_id"], _int(offer.get("rank")),
                                  str(offer.get("category") or ""), *(_num(offer.get(k)) for k in _PARTS),
                                  at + days * _DAY, now))
            # its own reward, and the previous decision's (whose last-touch purchases it may take over)
            touched.customer(customer, at - longest * _DAY)
        elif kind == "response":
            response_rows.append((payload["decision_id"], payload["offer_id"], payload["outcome"], float(created_at)))
            touched.decisions.add(str(payload["decision_id"]))
        else:
            ts = _num(payload.get("timestamp"))
            if ts is None or not _decimal(payload.get("amount")):
                continue
            purchase_rows.append((payload["purchase_id"], payload["customer_id"], payload["amount"], ts))
            touched.customer(str(payload["customer_id"]), ts - longest * _DAY)
    tx.executemany(
        "INSERT INTO hub_decisions(decision_id, device_id, seq, customer_id, channel, bundle_name, bundle_version, "
        "strategy, decided_at, window_days) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (decision_id) DO NOTHING",
        decision_rows,
    )
    tx.executemany(
        "INSERT INTO hub_rewards(decision_id, offer_id, position, category, propensity, value, weight, lever, score, "
        "selection_probability, outcome, responded_at, accepted, purchases, purchase_amount, window_ends, "
        "attributed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, 0, 0, '0', ?, ?) "
        "ON CONFLICT (decision_id, offer_id) DO NOTHING",
        slot_rows,
    )
    tx.executemany(
        "INSERT INTO hub_responses(decision_id, offer_id, outcome, responded_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (decision_id, offer_id) DO NOTHING",  # the first response recorded stands
        response_rows,
    )
    tx.executemany(
        "INSERT INTO hub_purchases(purchase_id, customer_id, amount, ts) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (purchase_id) DO NOTHING",
        purchase_rows,
    )
    return len(decision_rows), touched


_PARTS = ("propensity", "value", "weight", "lever", "score", "selection_probability")


def _recompute(tx: DbTx, touched: _Touched, *, now: float) -> int:
    """Recompute the reward of every decision ``touched`` names; return how many decisions."""
    since = dict(touched.customers)
    if touched.decisions:
        ids = sorted(touched.decisions)
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start:start + _IN_CHUNK]
            for customer, at in tx.execute(
                f"SELECT customer_id, decided_at FROM hub_decisions WHERE decision_id IN ({_marks(chunk)})",
                tuple(chunk),
            ):
                if customer not in since or at < since[customer]:
                    since[customer] = float(at)
    count = 0
    customers = sorted(since)
    for start in range(0, len(customers), _IN_CHUNK):
        chunk = customers[start:start + _IN_CHUNK]
        low = min(since[c] for c in chunk)
        decisions: dict[str, list[tuple[float, str, float]]] = {}
        for customer, decided_at, decision_id, days in tx.execute(
            f"SELECT customer_id, decided_at, decision_id, window_days FROM hub_decisions "
            f"WHERE customer_id IN ({_marks(chunk)}) AND decided_at >= ? ORDER BY customer_id, decided_at, decision_id",
            (*chunk, low),
        ):
            decisions.setdefault(customer, []).append((float(decided_at), decision_id, float(days)))
        purchases: dict[str, list[tuple[float, str]]] = {}
        for customer, ts, amount in tx.execute(
            f"SELECT customer_id, ts, amount FROM hub_purchases WHERE customer_id IN ({_marks(chunk)}) AND ts >= ? "
            "ORDER BY customer_id, ts, purchase_id",
            (*chunk, low),
        ):
            purchases.setdefault(customer, []).append((float(ts), amount))
        updates: dict[str, tuple[int, str]] = {}
        for customer, rows in decisions.items():
            rows = [r for r in rows if r[0] >= since[customer]]
            bought = purchases.get(customer, [])
            for k, (at, decision_id, days) in enumerate(rows):
                upper = at + days * _DAY
                if k + 1 < len(rows):
                    upper = min(upper, rows[k + 1][0])  # last touch: the next decision takes over
                # purchases in [at, upper): one at the very time of the next decision is the next one's
                amounts = [a for ts, a in bought if at <= ts < upper]
                updates[decision_id] = (len(amounts), _sum(amounts))
        count += _write(tx, updates, now)
    return count


def _write(tx: DbTx, updates: Mapping[str, tuple[int, str]], now: float) -> int:
    ids = sorted(updates)
    responses: dict[tuple[str, str], tuple[str, float]] = {}
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start:start + _IN_CHUNK]
        for decision_id, offer_id, outcome, at in tx.execute(
            f"SELECT decision_id, offer_id, outcome, responded_at FROM hub_responses "
            f"WHERE decision_id IN ({_marks(chunk)})",
            tuple(chunk),
        ):
            responses[(decision_id, offer_id)] = (outcome, float(at))
    slots: list[tuple[str, str]] = []
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start:start + _IN_CHUNK]
        slots.extend((d, o) for d, o in tx.execute(
            f"SELECT decision_id, offer_id FROM hub_rewards WHERE decision_id IN ({_marks(chunk)})", tuple(chunk)))
    rows = []
    for decision_id, offer_id in slots:
        outcome, at = responses.get((decision_id, offer_id), (None, None))
        n, amount = updates[decision_id]
        rows.append((outcome, at, 1 if outcome == "accepted" else 0, n, amount, now, decision_id, offer_id))
    tx.executemany(
        "UPDATE hub_rewards SET outcome = ?, responded_at = ?, accepted = ?, purchases = ?, purchase_amount = ?, "
        "attributed_at = ? WHERE decision_id = ? AND offer_id = ?",
        rows,
    )
    return len(ids)


def _window(hub: HubStore, tx: DbTx, cache: dict[tuple[str, int], float], name: str, version: int) -> float:
    """The attribution window (days) of a bundle's catalog: cached per pass and in the hub."""
    key = (name, version)
    if key in cache:
        return cache[key]
    rows = tx.execute("SELECT window_days FROM hub_attribution_windows WHERE bundle_name = ? AND bundle_version = ?",
                      key)
    if rows:
        days = float(rows[0][0])
    else:
        found = _bundle_window(hub, tx, name, version)
        days = DEFAULT_WINDOW_DAYS if found is None else found
        if found is not None:  # a bundle published later still gets its own window
            tx.execute("INSERT INTO hub_attribution_windows(bundle_name, bundle_version, window_days) "
                       "VALUES (?, ?, ?) ON CONFLICT (bundle_name, bundle_version) DO NOTHING", (name, version, days))
    cache[key] = days
    return days


def _bundle_window(hub: HubStore, tx: DbTx, name: str, version: int) -> float | None:
    """``attribution.window_days`` from the catalog of a bundle the hub holds (None: not held)."""
    data = bundle_bytes(hub, tx, name, version)
    return None if data is None else catalog_window(io.BytesIO(data))


def bundle_bytes(hub: HubStore, tx: DbTx, name: str, version: int) -> bytes | None:
    """A published bundle's zip, read inside ``tx`` (from this replica's file, else from the
    database where another replica stored it); None when the hub does not hold it."""
    rows = tx.execute("SELECT file FROM hub_bundles WHERE name = ? AND version = ?", (name, version))
    if not rows:
        return None
    path = hub.bundle_dir / rows[0][0]
    if path.is_file():
        return path.read_bytes()
    parts = tx.execute("SELECT data FROM hub_bundle_parts WHERE name = ? AND version = ? ORDER BY part",
                       (name, version))
    return b"".join(bytes(p[0]) for p in parts) or None


def catalog_window(bundle_zip: Path | IO[bytes]) -> float:
    """The attribution window in days of a bundle zip's catalog (its ``attribution`` meta)."""
    with zipfile.ZipFile(bundle_zip) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        with tempfile.TemporaryDirectory(prefix="nbo-window-") as tmp:
            path = Path(tmp) / "catalog.sqlite"
            path.write_bytes(zf.read(manifest["catalog"]["path"]))
            conn = sqlite3.connect(path)
            try:
                rows = conn.execute("SELECT value FROM meta WHERE key = 'attribution'").fetchall()
            finally:
                conn.close()
    if not rows:
        return DEFAULT_WINDOW_DAYS
    return float(json.loads(rows[0][0]).get("window_days", DEFAULT_WINDOW_DAYS))


def _marks(items: Iterable[Any]) -> str:
    return ", ".join("?" for _ in items)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _decimal(value: Any) -> bool:
    try:
        return isinstance(value, str) and Decimal(value).is_finite()
    except InvalidOperation:
        return False


def _sum(amounts: Sequence[str]) -> str:
    total = sum((Decimal(a) for a in amounts), Decimal(0))
    return format(total.normalize(), "f") if total else "0"
