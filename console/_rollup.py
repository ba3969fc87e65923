"""Incremental aggregation of the hub's event log into the console's own rollup database.

The hub stays read-only: the console keeps its rollups in a SQLite file of its own (a
temporary file unless ``--cache`` names one). For every device it remembers the last
``seq`` it folded in and, on each refresh, reads only the events after it — up to the
device's ``acked_through``, so an event above a gap waits until the gap closes and nothing
is counted twice or skipped. A page then reads small tables (offers × days, rules × days,
customers × purchase days), never the raw log: that is what keeps every page well under a
second on a hub of millions of events (bench/bench_console.py).

What each event adds (``day`` = the UTC day of the event's ``created_at``):

- ``decision``: per shown offer ``shown``, ``value_shown`` and, for rank 1, ``wins`` on
  (day, channel, offer); the decision funnel (candidates, removed per rule or contact
  policy, eligible, shown) on (day, channel); a ``shown`` row per offer — what a response is
  matched against — with the propensity's bin for calibration; the device's bundle.
- ``response``: the first response to a shown offer sets its outcome; ``accepted`` /
  ``declined`` and ``value_accepted`` (the offer's value as its decision recorded it) count
  on the decision's day and channel. A response whose decision the hub does not hold (a
  compacted decision log) counts on its own day, with no value and no calibration.
- ``purchase``: (customer, day) purchases, amount, first and last purchase time — enough
  to know every customer's lifecycle and loyalty stage at any day (sdk measures).
- a rejected event: the device's dead-letter count.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from nbo.sdk import StateError

from ._hubread import HubReader

__all__ = ["BINS", "RollupStore"]

BINS = 100
"""Propensity bins of the calibration rollup (AUC is computed from them)."""

_DAY = 86_400.0
_READ_CHUNK = 5_000  # events per read and per write transaction: pages wait for at most one write
_IN_CHUNK = 400

try:  # orjson (the [gateway] extra) parses the payloads several times faster
    import orjson

    _loads: Callable[[str], Any] = orjson.loads
except ImportError:  # pragma: no cover
    _loads = json.loads

SCHEMA: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS marks(device_id TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS devices(
        device_id TEXT PRIMARY KEY, events INTEGER NOT NULL DEFAULT 0, rejected INTEGER NOT NULL DEFAULT 0,
        last_event_at REAL, bundle_name TEXT, bundle_version INTEGER)""",
    """CREATE TABLE IF NOT EXISTS offer_days(
        day INTEGER NOT NULL, channel TEXT NOT NULL, offer_id TEXT NOT NULL, category TEXT NOT NULL,
        shown INTEGER NOT NULL DEFAULT 0, wins INTEGER NOT NULL DEFAULT 0, accepted INTEGER NOT NULL DEFAULT 0,
        declined INTEGER NOT NULL DEFAULT 0, value_shown REAL NOT NULL DEFAULT 0,
        value_accepted REAL NOT NULL DEFAULT 0, PRIMARY KEY(day, channel, offer_id))""",
    """CREATE TABLE IF NOT EXISTS funnel_days(
        day INTEGER NOT NULL, channel TEXT NOT NULL, decisions INTEGER NOT NULL DEFAULT 0,
        funnel_decisions INTEGER NOT NULL DEFAULT 0, candidates INTEGER NOT NULL DEFAULT 0,
        eligible INTEGER NOT NULL DEFAULT 0, shown INTEGER NOT NULL DEFAULT 0,
        accepted INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(day, channel))""",
    """CREATE TABLE IF NOT EXISTS rule_days(
        day INTEGER NOT NULL, channel TEXT NOT NULL, rule_id TEXT NOT NULL, removed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY(day, channel, rule_id))""",
    """CREATE TABLE IF NOT EXISTS shown(
        decision_id TEXT NOT NULL, offer_id TEXT NOT NULL, day INTEGER NOT NULL, channel TEXT NOT NULL,
        category TEXT NOT NULL, bundle_name TEXT NOT NULL, bundle_version INTEGER NOT NULL, bin INTEGER,
        value REAL NOT NULL, outcome TEXT, PRIMARY KEY(decision_id, offer_id)) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS calibration(
        bundle_name TEXT NOT NULL, bundle_version INTEGER NOT NULL, offer_id TEXT NOT NULL, bin INTEGER NOT NULL,
        shown INTEGER NOT NULL DEFAULT 0, predicted REAL NOT NULL DEFAULT 0, accepted INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY(bundle_name, bundle_version, offer_id, bin))""",
    """CREATE TABLE IF NOT EXISTS customer_days(
        customer_id TEXT NOT NULL, day INTEGER NOT NULL, purchases INTEGER NOT NULL DEFAULT 0,
        amount REAL NOT NULL DEFAULT 0, first_at REAL NOT NULL, last_at REAL NOT NULL,
        PRIMARY KEY(customer_id, day)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS customer_days_by_day ON customer_days(day, customer_id, last_at, amount)",
    # per customer over all purchase days: what a period's query starts from (it then reads
    # only the days from the period's start on, by the index above)
    """CREATE TABLE IF NOT EXISTS customers(
        customer_id TEXT PRIMARY KEY, first_at REAL NOT NULL, last_at REAL NOT NULL, days INTEGER NOT NULL,
        amount REAL NOT NULL) WITHOUT ROWID""",
    # experiments (docs/experiments.md): per arm, and each decision's arm (to credit its responses)
    """CREATE TABLE IF NOT EXISTS arms(
        experiment TEXT NOT NULL, arm TEXT NOT NULL, kind TEXT NOT NULL, decisions INTEGER NOT NULL DEFAULT 0,
        shown INTEGER NOT NULL DEFAULT 0, accepted INTEGER NOT NULL DEFAULT 0,
        value_accepted REAL NOT NULL DEFAULT 0, PRIMARY KEY(experiment, arm))""",
    """CREATE TABLE IF NOT EXISTS decision_arms(
        decision_id TEXT PRIMARY KEY, experiment TEXT NOT NULL, arm TEXT NOT NULL) WITHOUT ROWID""",
    "CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


def _day(ts: float) -> int:
    return math.floor(ts / _DAY)


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return float(value)


def _amount(value: Any) -> float:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return 0.0
    return float(amount) if amount.is_finite() else 0.0


class _Batch:
    """What one chunk of events adds, summed in memory, then written with a few upserts."""

    def __init__(self) -> None:
        self.devices: dict[str, list[Any]] = {}  # events, rejected, last_event_at, bundle_name, bundle_version
        self.offers: dict[tuple[int, str, str], list[Any]] = {}  # category, shown, wins, acc, dec, vshown, vacc
        self.funnel: dict[tuple[int, str], list[int]] = {}  # decisions, funnel_decisions, cand, elig, shown, acc
        self.rules: dict[tuple[int, str, str], int] = {}
        self.shown: dict[tuple[str, str], list[Any]] = {}  # day, channel, category, bname, bver, bin, value, outcome
        self.new_shown: set[tuple[str, str]] = set()
        self.calibration: dict[tuple[str, int, str, int], list[float]] = {}  # shown, predicted, accepted
        self.customers: dict[tuple[str, int], list[float]] = {}  # purchases, amount, first, last
        self.responses: list[tuple[str, str, str, int, str, str]] = []  # decision, offer, outcome, day, chan, cat
        self.arms: dict[tuple[str, str], list[Any]] = {}  # kind, decisions, shown, accepted, value_accepted
        self.decision_arms: dict[str, tuple[str, str]] = {}
        self.new_decision_arms: set[str] = set()
        self.unmatched = 0

    def device(self, device_id: str) -> list[Any]:
        row = self.devices.get(device_id)
        if row is None:
            row = self.devices[device_id] = [0, 0, None, None, None]
        return row

    def offer(self, day: int, channel: str, offer_id: str, category: str) -> list[Any]:
        row = self.offers.get((day, channel, offer_id))
        if row is None:
            row = self.offers[(day, channel, offer_id)] = [category, 0, 0, 0, 0, 0.0, 0.0]
        return row

    def funnel_row(self, day: int, channel: str) -> list[int]:
        row = self.funnel.get((day, channel))
        if row is None:
            row = self.funnel[(day, channel)] = [0, 0, 0, 0, 0, 0]
        return row

    def add(self, device_id: str, type_: str, created_at: float, payload_text: str, status: str) -> None:
        dev = self.device(device_id)
        dev[0] += 1
        if dev[2] is None or created_at > dev[2]:
            dev[2] = created_at
        if status != "ok":
            dev[1] += 1
            return
        try:
            payload = _loads(payload_text)
        except ValueError:
            return
        if not isinstance(payload, Mapping):
            return
        day = _day(created_at)
        if type_ == "decision":
            self._decision(dev, day, payload)
        elif type_ == "response":
            outcome = payload.get("outcome")
            decision_id, offer_id = payload.get("decision_id"), payload.get("offer_id")
            if isinstance(decision_id, str) and isinstance(offer_id, str) and outcome in (
                    "accepted", "declined", "ignored"):
                self.responses.append((decision_id, offer_id, str(outcome), day, str(payload.get("channel") or ""),
                                       str(payload.get("category") or "")))
        elif type_ == "purchase":
            customer = payload.get("customer_id")
            ts = payload.get("timestamp")
            if not isinstance(customer, str) or not isinstance(ts, int | float) or isinstance(ts, bool):
                return
            ts = float(ts)
            if not math.isfinite(ts):
                return
            key = (customer, _day(ts))
            row = self.customers.get(key)
            amount = _amount(payload.get("amount"))
            if row is None:
                self.customers[key] = [1, amount, ts, ts]
            else:
                row[0] += 1
                row[1] += amount
                row[2] = min(row[2], ts)
                row[3] = max(row[3], ts)

    def _decision(self, dev: list[Any], day: int, payload: Mapping[str, Any]) -> None:
        offers = payload.get("offers")
        channel = payload.get("channel")
        decision_id = payload.get("decision_id")
        bundle_name, bundle_version = payload.get("bundle_name"), payload.get("bundle_version")
        if not isinstance(offers, list) or not isinstance(channel, str) or not isinstance(decision_id, str):
            return
        if isinstance(bundle_name, str) and isinstance(bundle_version, int):
            dev[3], dev[4] = bundle_name, bundle_version
        else:
            bundle_name, bundle_version = "", 0
        experiment = payload.get("experiment")
        if isinstance(experiment, Mapping) and isinstance(experiment.get("id"), str) \
                and isinstance(experiment.get("arm"), str):
            arm_key = (experiment["id"], experiment["arm"])
            arm = self.arms.get(arm_key)
            if arm is None:
                arm = self.arms[arm_key] = [str(experiment.get("kind") or ""), 0, 0, 0, 0.0]
            arm[1] += 1
            arm[2] += len(offers)
            self.decision_arms[decision_id] = arm_key
            self.new_decision_arms.add(decision_id)
        funnel = self.funnel_row(day, channel)
        funnel[0] += 1
        funnel[4] += len(offers)
        recorded = payload.get("funnel")
        if isinstance(recorded, Mapping):
            candidates = recorded.get("candidates")
            removed = recorded.get("removed")
            if isinstance(candidates, int) and isinstance(removed, Mapping):
                funnel[1] += 1
                funnel[2] += candidates
                total = 0
                for rule_id, n in removed.items():
                    if isinstance(n, int) and n > 0:
                        total += n
                        key = (day, channel, str(rule_id))
                        self.rules[key] = self.rules.get(key, 0) + n
                funnel[3] += max(0, candidates - total)
        for offer in offers:
            if not isinstance(offer, Mapping) or not isinstance(offer.get("offer_id"), str):
                continue
            offer_id = offer["offer_id"]
            category = str(offer.get("category") or "")
            value = _num(offer.get("value"))
            row = self.offer(day, channel, offer_id, category)
            row[1] += 1
            row[5] += value
            if offer.get("rank") == 1:
                row[2] += 1
            p = offer.get("propensity")
            bin_: int | None = None
            if isinstance(p, int | float) and not isinstance(p, bool) and math.isfinite(p):
                p = min(1.0, max(0.0, float(p)))
                bin_ = min(BINS - 1, int(p * BINS))
                ckey = (bundle_name, bundle_version, offer_id, bin_)
                cal = self.calibration.get(ckey)
                if cal is None:
                    cal = self.calibration[ckey] = [0, 0.0, 0]
                cal[0] += 1
                cal[1] += p
            shown_key = (decision_id, offer_id)
            if shown_key not in self.shown:
                self.shown[shown_key] = [day, channel, category, bundle_name, bundle_version, bin_, value, None]
                self.new_shown.add(shown_key)

    def match_responses(self, lookup: Callable[[Sequence[str]], dict[tuple[str, str], list[Any]]],
                        lookup_arms: Callable[[Sequence[str]], dict[str, tuple[str, str]]]) -> None:
        """Apply the batch's responses to their shown offers (this batch's or earlier ones)."""
        if not self.responses:
            return
        missing = sorted({d for d, o, *_ in self.responses if (d, o) not in self.shown})
        if missing:
            self.shown.update(lookup(missing))
        accepted = sorted({d for d, _, outcome, *_ in self.responses if outcome == "accepted"}
                          - set(self.decision_arms))
        if accepted:
            self.decision_arms.update(lookup_arms(accepted))
        for decision_id, offer_id, outcome, day, channel, category in self.responses:
            shown = self.shown.get((decision_id, offer_id))
            if shown is None:
                self.unmatched += 1
                if outcome in ("accepted", "declined"):
                    row = self.offer(day, channel, offer_id, category)
                    row[3 if outcome == "accepted" else 4] += 1
                continue
            if shown[7] is not None:
                continue  # the first response to a shown offer is the one that counts
            shown[7] = outcome
            if (decision_id, offer_id) not in self.new_shown:
                self.new_shown.add((decision_id, offer_id))  # written back with its outcome
            s_day, s_channel, s_category, bname, bver, bin_, value = shown[:7]
            if outcome not in ("accepted", "declined"):
                continue
            row = self.offer(s_day, s_channel, offer_id, s_category)
            if outcome == "accepted":
                row[3] += 1
                row[6] += value
                arm_key = self.decision_arms.get(decision_id)
                if arm_key is not None:
                    arm = self.arms.get(arm_key)
                    if arm is None:
                        arm = self.arms[arm_key] = ["", 0, 0, 0, 0.0]
                    arm[3] += 1
                    arm[4] += value
                self.funnel_row(s_day, s_channel)[5] += 1
                if bin_ is not None:
                    ckey = (bname, bver, offer_id, bin_)
                    cal = self.calibration.get(ckey)
                    if cal is None:
                        cal = self.calibration[ckey] = [0, 0.0, 0]
                    cal[2] += 1
            else:
                row[4] += 1


class RollupStore:
    """The console's rollup database and the incremental reader that keeps it current."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self.version = 0
        """Bumped by every write: a report cached for an older version is stale."""
        try:
            self._conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=OFF")  # a cache: rebuilt from the hub if lost
            self._conn.execute("PRAGMA cache_size=-131072")
            for ddl in SCHEMA:
                self._conn.execute(ddl)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the console's rollup file {self.path}: {exc}") from exc

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read the rollups (used by the page queries)."""
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def marks(self) -> dict[str, int]:
        return dict(self.query("SELECT device_id, seq FROM marks"))

    def counter(self, name: str) -> int:
        rows = self.query("SELECT value FROM counters WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else 0

    def bind(self, hub_url: str) -> None:
        """Tie this rollup file to one hub: a file kept (``--cache``) for another hub is refused."""
        rows = self.query("SELECT value FROM counters WHERE name = ?", ("hub:" + hub_url,))
        others = self.query("SELECT name FROM counters WHERE name LIKE 'hub:%' AND name != ?", ("hub:" + hub_url,))
        if others:
            raise StateError(f"the console's rollup file {self.path} holds the figures of another hub "
                             f"({others[0][0][4:]}); give this hub its own --cache file")
        if not rows:
            with self._lock:
                self._conn.execute("INSERT INTO counters VALUES (?, 1)", ("hub:" + hub_url,))

    def check_marks(self, hub: HubReader) -> None:
        """Refuse rollups that are ahead of the hub (a hub restored from an older backup)."""
        acked = dict(hub.query("SELECT device_id, acked_through FROM hub_devices"))
        for device_id, seq in self.marks().items():
            if seq > int(acked.get(device_id, 0)):
                raise StateError(f"the console's rollup file {self.path} has counted events of {device_id} up to "
                                 f"seq {seq}, but the hub holds only {acked.get(device_id, 0)}: was the hub restored? "
                                 "remove the rollup file; the console rebuilds it")

    def refresh(self, hub: HubReader, *, limit: int | None = None,
                progress: Callable[[int], None] | None = None) -> int:
        """Fold the hub's new events in; returns how many were read (at most about ``limit``)."""
        devices = hub.query("SELECT device_id, acked_through FROM hub_devices ORDER BY device_id")
        marks = self.marks()
        done = 0
        for device_id, acked in devices:
            mark = marks.get(device_id, 0)
            acked = int(acked)
            while mark < acked:
                if limit is not None and done >= limit:
                    return done
                rows = hub.query(
                    "SELECT seq, type, created_at, payload, status FROM hub_events WHERE device_id = ? "
                    "AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                    (device_id, mark, acked, _READ_CHUNK),
                )
                if not rows:
                    break
                batch = _Batch()
                for _, type_, created_at, payload, status in rows:
                    batch.add(device_id, type_, float(created_at), payload, status)
                mark = int(rows[-1][0])
                self._write(batch, device_id, mark)
                done += len(rows)
                if progress is not None:
                    progress(done)
        return done

    def _lookup(self, decision_ids: Sequence[str]) -> dict[tuple[str, str], list[Any]]:
        found: dict[tuple[str, str], list[Any]] = {}
        for start in range(0, len(decision_ids), _IN_CHUNK):
            chunk = decision_ids[start:start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            for row in self._conn.execute(
                "SELECT decision_id, offer_id, day, channel, category, bundle_name, bundle_version, bin, value, "
                f"outcome FROM shown WHERE decision_id IN ({marks})", chunk,
            ):
                found[(row[0], row[1])] = list(row[2:])
        return found

    def _known_days(self, keys: Sequence[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which (customer, day) rows exist already (one primary-key seek each)."""
        known: set[tuple[str, int]] = set()
        for key in keys:
            if self._conn.execute("SELECT 1 FROM customer_days WHERE customer_id = ? AND day = ?", key).fetchone():
                known.add(key)
        return known

    def last_before(self, customers: Sequence[str], day: int) -> dict[str, float]:
        """Each customer's last purchase time on a day before ``day`` (one index seek each)."""
        out: dict[str, float] = {}
        with self._lock:
            for customer in customers:
                rows = self._conn.execute(
                    "SELECT last_at FROM customer_days WHERE customer_id = ? AND day < ? ORDER BY day DESC LIMIT 1",
                    (customer, day)).fetchall()
                if rows:
                    out[customer] = float(rows[0][0])
        return out

    def _lookup_arms(self, decision_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        found: dict[str, tuple[str, str]] = {}
        for start in range(0, len(decision_ids), _IN_CHUNK):
            chunk = decision_ids[start:start + _IN_CHUNK]
            marks = ", ".join("?" * len(chunk))
            for d, e, a in self._conn.execute(
                    f"SELECT decision_id, experiment, arm FROM decision_arms WHERE decision_id IN ({marks})", chunk):
                found[d] = (e, a)
        return found

    def _write(self, batch: _Batch, device_id: str, mark: int) -> None:
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN")
            try:
                batch.match_responses(self._lookup, self._lookup_arms)
                conn.executemany(
                    "INSERT INTO arms VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(experiment, arm) DO UPDATE SET "
                    "kind = CASE WHEN excluded.kind != '' THEN excluded.kind ELSE kind END, "
                    "decisions = decisions + excluded.decisions, shown = shown + excluded.shown, "
                    "accepted = accepted + excluded.accepted, value_accepted = value_accepted + excluded.value_accepted",
                    [(*k, *v) for k, v in batch.arms.items()],
                )
                conn.executemany("INSERT OR IGNORE INTO decision_arms VALUES (?, ?, ?)",
                                 [(d, *batch.decision_arms[d]) for d in batch.new_decision_arms])
                conn.executemany(
                    "INSERT INTO devices(device_id, events, rejected, last_event_at, bundle_name, bundle_version) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(device_id) DO UPDATE SET events = events + excluded.events, "
                    "rejected = rejected + excluded.rejected, "
                    "last_event_at = MAX(COALESCE(last_event_at, excluded.last_event_at), excluded.last_event_at), "
                    "bundle_name = COALESCE(excluded.bundle_name, bundle_name), "
                    "bundle_version = COALESCE(excluded.bundle_version, bundle_version)",
                    [(d, *row) for d, row in batch.devices.items()],
                )
                conn.executemany(
                    "INSERT INTO offer_days VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(day, channel, offer_id) "
                    "DO UPDATE SET shown = shown + excluded.shown, wins = wins + excluded.wins, "
                    "accepted = accepted + excluded.accepted, declined = declined + excluded.declined, "
                    "value_shown = value_shown + excluded.value_shown, "
                    "value_accepted = value_accepted + excluded.value_accepted",
                    [(*k, *v) for k, v in batch.offers.items()],
                )
                conn.executemany(
                    "INSERT INTO funnel_days VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(day, channel) DO UPDATE SET "
                    "decisions = decisions + excluded.decisions, "
                    "funnel_decisions = funnel_decisions + excluded.funnel_decisions, "
                    "candidates = candidates + excluded.candidates, eligible = eligible + excluded.eligible, "
                    "shown = shown + excluded.shown, accepted = accepted + excluded.accepted",
                    [(*k, *v) for k, v in batch.funnel.items()],
                )
                conn.executemany(
                    "INSERT INTO rule_days VALUES (?, ?, ?, ?) ON CONFLICT(day, channel, rule_id) DO UPDATE SET "
                    "removed = removed + excluded.removed",
                    [(*k, v) for k, v in batch.rules.items()],
                )
                conn.executemany(
                    "INSERT INTO shown VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(decision_id, offer_id) "
                    "DO UPDATE SET outcome = excluded.outcome",
                    [(*k, *batch.shown[k]) for k in batch.new_shown],
                )
                conn.executemany(
                    "INSERT INTO calibration VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT(bundle_name, bundle_version, offer_id, bin) DO UPDATE SET "
                    "shown = shown + excluded.shown, predicted = predicted + excluded.predicted, "
                    "accepted = accepted + excluded.accepted",
                    [(*k, *v) for k, v in batch.calibration.items()],
                )
                known = self._known_days(list(batch.customers))
                summary: dict[str, list[float]] = {}
                for (customer, day), (_, amount, first, last) in batch.customers.items():
                    row = summary.get(customer)
                    new_day = 0 if (customer, day) in known else 1
                    if row is None:
                        summary[customer] = [first, last, new_day, amount]
                    else:
                        row[0], row[1] = min(row[0], first), max(row[1], last)
                        row[2] += new_day
                        row[3] += amount
                conn.executemany(
                    "INSERT INTO customers VALUES (?, ?, ?, ?, ?) ON CONFLICT(customer_id) DO UPDATE SET "
                    "first_at = MIN(first_at, excluded.first_at), last_at = MAX(last_at, excluded.last_at), "
                    "days = days + excluded.days, amount = amount + excluded.amount",
                    [(c, *v) for c, v in summary.items()],
                )
                conn.executemany(
                    "INSERT INTO customer_days VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(customer_id, day) DO UPDATE SET "
                    "purchases = purchases + excluded.purchases, amount = amount + excluded.amount, "
                    "first_at = MIN(first_at, excluded.first_at), last_at = MAX(last_at, excluded.last_at)",
                    [(*k, *v) for k, v in batch.customers.items()],
                )
                if batch.unmatched:
                    conn.execute(
                        "INSERT INTO counters VALUES ('unmatched_responses', ?) ON CONFLICT(name) DO UPDATE SET "
                        "value = value + excluded.value", (batch.unmatched,))
                conn.execute("INSERT INTO marks VALUES (?, ?) ON CONFLICT(device_id) DO UPDATE SET seq = excluded.seq",
                             (device_id, mark))
                conn.execute("COMMIT")
                self.version += 1
            except BaseException:
                conn.execute("ROLLBACK")
                raise

