"""The console's figures: plain functions over the hub (read-only) and the rollups.

Each returns a :class:`Table` (column names and rows, what the page shows and the CSV holds)
or a small dataclass of tables. Nothing here knows about HTTP.
"""

from __future__ import annotations

import io
import sqlite3
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from nbo.sdk.core import LIFECYCLE_STAGES, LOYALTY_STAGES, lifecycle_stage, loyalty_stage, refresh_measures

from ._hubread import HubReader
from ._rollup import BINS, RollupStore

__all__ = [
    "FLOW_STAGES",
    "CustomerReport",
    "FieldReport",
    "ModelReport",
    "OfferReport",
    "Period",
    "Table",
    "customer_report",
    "field_report",
    "model_report",
    "offer_report",
]

_DAY = 86_400.0
FLOW_STAGES = LIFECYCLE_STAGES
"""Lifecycle stages in the order of the customer flow (new → … → lost)."""
_ALIVE = ("new", "starter", "active", "declining", "inactive")


@dataclass(frozen=True, slots=True)
class Table:
    """Figures as a table: what a page shows and what its CSV download holds."""

    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def column(self, name: str) -> list[Any]:
        i = self.columns.index(name)
        return [r[i] for r in self.rows]


@dataclass(frozen=True, slots=True)
class Period:
    """Whole UTC days ``first`` .. ``last`` (inclusive)."""

    first: date
    last: date

    @property
    def start(self) -> float:
        return datetime(self.first.year, self.first.month, self.first.day, tzinfo=UTC).timestamp()

    @property
    def end(self) -> float:
        """The instant after the last day (exclusive)."""
        return self.start + self.days * _DAY

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1

    @property
    def first_day(self) -> int:
        return int(self.start // _DAY)

    @property
    def last_day(self) -> int:
        return self.first_day + self.days - 1

    @staticmethod
    def ending(last: date, days: int) -> Period:
        return Period(last - timedelta(days=days - 1), last)


def _day_label(day: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=day)).isoformat()


def _week_label(day: int) -> str:
    d = date(1970, 1, 1) + timedelta(days=day)
    monday = d - timedelta(days=d.weekday())
    return monday.isoformat()


def _rate(a: float, b: float) -> float | None:
    return a / b if b else None


# -- field ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldReport:
    terminals: Table
    """One row per device; ``behind`` = versions behind the latest bundle of its name."""
    rollout: Table
    """Devices per version of the latest bundle's name (and ``unknown``)."""
    latest: tuple[str, int] | None
    now: float


def field_report(hub: HubReader, rollups: RollupStore, *, now: float, behind_only: bool = False) -> FieldReport:
    devices = hub.query(
        "SELECT d.device_id, d.acked_through, d.updated_at, s.outbox_head, s.bundle_name, s.bundle_version, "
        "s.pushed_at FROM hub_devices d LEFT JOIN hub_device_status s ON s.device_id = d.device_id "
        "ORDER BY d.device_id"
    )
    latest_rows = hub.query("SELECT name, version FROM hub_bundles ORDER BY created_at DESC, version DESC LIMIT 1")
    latest = (str(latest_rows[0][0]), int(latest_rows[0][1])) if latest_rows else None
    newest = dict(hub.query("SELECT name, MAX(version) FROM hub_bundles GROUP BY name"))
    stats = {r[0]: r[1:] for r in rollups.query(
        "SELECT device_id, rejected, last_event_at, bundle_name, bundle_version FROM devices")}
    rows = []
    for device_id, acked, updated_at, head, s_name, s_version, pushed_at in devices:
        rejected, last_event_at, e_name, e_version = stats.get(device_id, (0, None, None, None))
        name, version = (s_name, s_version) if s_name is not None else (e_name, e_version)
        last_sync = pushed_at if pushed_at is not None else updated_at
        pending = max(0, int(head) - int(acked)) if head else None
        target = newest.get(name) if name is not None else (latest[1] if latest else None)
        behind = None if version is None or target is None else max(0, int(target) - int(version))
        hours = (now - float(last_sync)) / 3600.0 if last_sync is not None else None
        if behind_only and not behind:
            continue
        rows.append((
            device_id,
            _when(last_sync),
            None if hours is None else round(hours, 1),
            int(acked),
            pending,
            int(rejected or 0),
            name,
            None if version is None else int(version),
            behind,
            _when(last_event_at),
        ))
    rows.sort(key=lambda r: (-(r[8] or 0), -(r[2] or 0), r[0]))
    terminals = Table(("device", "last_sync_utc", "hours_since_sync", "acked_through", "events_pending",
                       "dead_lettered", "bundle", "bundle_version", "versions_behind", "newest_event_utc"),
                      tuple(rows))
    rollout_rows: list[tuple[Any, ...]] = []
    if latest is not None:
        counts: dict[Any, int] = {}
        for r in rows if not behind_only else terminals.rows:
            if r[6] == latest[0] or r[6] is None:
                key = r[7] if r[6] == latest[0] else "unknown"
                counts[key] = counts.get(key, 0) + 1
        total = sum(counts.values())
        for key in sorted(counts, key=lambda k: (isinstance(k, str), -k if isinstance(k, int) else 0)):
            label = f"{latest[0]} v{key}" if isinstance(key, int) else "unknown"
            rollout_rows.append((label, counts[key], round(counts[key] / total, 4) if total else None,
                                 key == latest[1]))
    rollout = Table(("bundle_version", "devices", "share", "latest"), tuple(rollout_rows))
    return FieldReport(terminals=terminals, rollout=rollout, latest=latest, now=now)


def _when(ts: Any) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(float(ts), tz=UTC).strftime("%Y-%m-%d %H:%M")


# -- offers -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OfferReport:
    by: str
    totals: Table
    """Per offer / category / channel: shown, accepted, declined, rate, value."""
    series: Table
    """Per time bucket and group: shown, accepted (the chart)."""
    funnel: Table
    """candidates → removed (all rules) → eligible → shown → accepted."""
    rules: Table
    """Per rule or contact policy: offers removed, share of removals."""
    concentration: Table
    """Offers by decisions won (rank 1), with the cumulative share."""
    winners_90: int | None
    """How many offers win 90 % of the decisions."""
    decisions: int
    funnel_decisions: int
    channels: tuple[str, ...]


_GROUPS = {"offer": "offer_id", "category": "category", "channel": "channel"}


def offer_report(rollups: RollupStore, period: Period, *, channel: str | None, by: str, bucket: str) -> OfferReport:
    where = "day BETWEEN ? AND ?"
    params: list[Any] = [period.first_day, period.last_day]
    if channel is not None:
        where += " AND channel = ?"
        params.append(channel)
    column = _GROUPS[by]
    totals_rows = rollups.query(
        f"SELECT {column}, SUM(shown), SUM(accepted), SUM(declined), SUM(value_shown), SUM(value_accepted) "
        f"FROM offer_days WHERE {where} GROUP BY {column}", params)
    totals = tuple(sorted(
        ((g, int(s), int(a), int(d), _round(_rate(a, s)), round(float(vs), 2), round(float(va), 2))
         for g, s, a, d, vs, va in totals_rows),
        key=lambda r: (-r[2], -r[1], r[0])))
    day_rows = rollups.query(
        f"SELECT day, {column}, SUM(shown), SUM(accepted) FROM offer_days WHERE {where} GROUP BY day, {column}",
        params)
    label = _day_label if bucket == "day" else _week_label
    series_map: dict[tuple[str, str], list[int]] = {}
    for day, group, shown, accepted in day_rows:
        key = (label(int(day)), group)
        row = series_map.setdefault(key, [0, 0])
        row[0] += int(shown)
        row[1] += int(accepted)
    series = tuple((b, g, s, a, _round(_rate(a, s))) for (b, g), (s, a) in sorted(series_map.items()))

    f = rollups.query(
        f"SELECT SUM(decisions), SUM(funnel_decisions), SUM(candidates), SUM(eligible), SUM(shown), SUM(accepted) "
        f"FROM funnel_days WHERE {where}", params)[0]
    decisions, funnel_decisions, candidates, eligible, shown, accepted = (int(x or 0) for x in f)
    rule_rows = rollups.query(
        f"SELECT rule_id, SUM(removed) FROM rule_days WHERE {where} GROUP BY rule_id", params)
    removed_total = sum(int(n) for _, n in rule_rows)
    rules = tuple(sorted(((r, int(n), _round(_rate(n, removed_total))) for r, n in rule_rows),
                         key=lambda r: (-r[1], r[0])))
    funnel = (("candidates", candidates), ("removed by rules and contact policies", removed_total),
              ("eligible", eligible), ("shown", shown), ("accepted", accepted))

    win_rows = rollups.query(
        f"SELECT offer_id, SUM(wins) FROM offer_days WHERE {where} GROUP BY offer_id HAVING SUM(wins) > 0", params)
    wins = sorted(((o, int(w)) for o, w in win_rows), key=lambda r: (-r[1], r[0]))
    total_wins = sum(w for _, w in wins)
    cumulative = 0
    conc_rows = []
    winners_90: int | None = None
    for i, (offer_id, w) in enumerate(wins, start=1):
        cumulative += w
        share = cumulative / total_wins
        conc_rows.append((i, offer_id, w, _round(w / total_wins), _round(share)))
        if winners_90 is None and share >= 0.9 - 1e-12:
            winners_90 = i
    channels = tuple(r[0] for r in rollups.query("SELECT DISTINCT channel FROM funnel_days ORDER BY channel"))
    return OfferReport(
        by=by,
        totals=Table((by, "shown", "accepted", "declined", "acceptance_rate", "value_shown", "value_accepted"),
                     totals),
        series=Table(("period_start", by, "shown", "accepted", "acceptance_rate"), series),
        funnel=Table(("stage", "offers"), funnel),
        rules=Table(("rule_or_policy", "offers_removed", "share_of_removals"), rules),
        concentration=Table(("rank", "offer", "decisions_won", "share", "cumulative_share"), tuple(conc_rows)),
        winners_90=winners_90,
        decisions=decisions,
        funnel_decisions=funnel_decisions,
        channels=channels,
    )


def _round(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


# -- customers --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CustomerReport:
    flows: Table
    """from_stage, to_stage, customers (non-zero cells)."""
    matrix: Table
    """The from/to matrix: one row per stage at the start, one column per stage at the end."""
    retention: Table
    """base, retained, churned, retention/churn rate, expected duration."""
    clv: Table
    """CLV histogram at the end of the period."""
    pyramid: Table
    """Top 20 % / middle 50 % / bottom 30 % of customers by CLV."""
    loyalty: Table
    """Loyalty ladder population at the start and at the end."""
    loyalty_moves: Table
    """Loyalty stage at the start → at the end."""
    customers: int


def _stage_inputs(first: float | None, last: float | None, frequency: int, at: float) -> tuple[float | None, float]:
    if first is None or last is None or frequency <= 0:
        return None, 0.0
    return max(0.0, (at - last) / _DAY), max(0.0, (at - first) / _DAY)


def _customer_rows(rollups: RollupStore, period: Period) -> list[tuple[Any, ...]]:
    """Per customer with a purchase by the end: (id, first/last purchase and purchase days
    before the start, the same by the end, amount by the end, purchase days in the period).

    Starts from each customer's all-time summary and reads only the purchase days from the
    period's start on (by the day index), plus, for a customer who bought again since, one
    index seek for their last purchase before the start — not the whole purchase history.
    """
    d0, d1 = period.first_day, period.last_day
    recent: dict[str, tuple[int, int, float | None, float]] = {}
    for customer, since, after, last_in, amount_after in rollups.query(
            "SELECT customer_id, COUNT(*), SUM(CASE WHEN day > ? THEN 1 ELSE 0 END), "
            "MAX(CASE WHEN day <= ? THEN last_at END), SUM(CASE WHEN day > ? THEN amount ELSE 0 END) "
            "FROM customer_days WHERE day >= ? GROUP BY customer_id", (d1, d1, d1, d0)):
        recent[customer] = (int(since), int(after), last_in, float(amount_after or 0.0))
    summary = rollups.query("SELECT customer_id, first_at, last_at, days, amount FROM customers")
    older = rollups.last_before(
        [c for c, _, _, days, _ in summary if c in recent and int(days) > recent[c][0]], d0)
    rows: list[tuple[Any, ...]] = []
    for customer, first, last, days, amount in summary:
        since, after, last_in, amount_after = recent.get(customer, (0, 0, None, 0.0))
        n1 = int(days) - after
        if n1 <= 0:
            continue  # no purchase by the end of the period
        n0 = int(days) - since
        l0 = (last if since == 0 else older.get(customer)) if n0 > 0 else None
        l1 = last if after == 0 else (last_in if last_in is not None else l0)
        rows.append((customer, first if n0 > 0 else None, l0, n0, first, l1, n1, float(amount) - amount_after,
                     since - after))
    return rows


def customer_report(rollups: RollupStore, period: Period) -> CustomerReport:
    t0, t1 = period.start, period.end
    rows = _customer_rows(rollups, period)
    n = len(FLOW_STAGES)
    index = {s: i for i, s in enumerate(FLOW_STAGES)}
    counts = [[0] * n for _ in range(n)]
    lindex = {s: i for i, s in enumerate(LOYALTY_STAGES)}
    lcounts = [[0] * len(LOYALTY_STAGES) for _ in range(len(LOYALTY_STAGES))]
    base = retained = lost_by_end = 0
    clvs: list[float] = []
    for _cid, f0, l0, n0, f1, l1, n1, amount, in_period in rows:
        n0, n1 = int(n0 or 0), int(n1 or 0)
        rec0, ten0 = _stage_inputs(f0, l0, n0, t0)
        rec1, ten1 = _stage_inputs(f1, l1, n1, t1)
        s0 = lifecycle_stage(recency_days=rec0, frequency=n0, tenure_days=ten0)
        s1 = lifecycle_stage(recency_days=rec1, frequency=n1, tenure_days=ten1)
        counts[index[s0]][index[s1]] += 1
        lcounts[lindex[loyalty_stage(frequency=n0, tenure_days=ten0)]][
            lindex[loyalty_stage(frequency=n1, tenure_days=ten1)]] += 1
        if n0 > 0 and s0 in _ALIVE:
            base += 1
            if int(in_period or 0) > 0:
                retained += 1
            elif s1 == "lost":
                lost_by_end += 1
        # the SDK's own measures (CLV) as of the end of the period
        measures = refresh_measures({"frequency": n1, "monetary": float(amount or 0.0), "first_purchase_at": f1,
                                     "last_purchase_at": l1}, as_of=t1)
        clvs.append(float(measures["clv"]))
    flows = tuple((FLOW_STAGES[i], FLOW_STAGES[j], counts[i][j]) for i in range(n) for j in range(n) if counts[i][j])
    matrix = Table(("from \\ to", *FLOW_STAGES, "total"),
                   tuple((FLOW_STAGES[i], *counts[i], sum(counts[i])) for i in range(n)))
    churn_rate = _rate(base - retained, base)
    retention_rate = _rate(retained, base)
    expected_days = (period.days / churn_rate) if churn_rate else None
    retention = Table(("measure", "value"), (
        ("customers with a purchase before the period and not lost (base)", base),
        ("of them, purchased again in the period (retained)", retained),
        ("of them, not purchased in the period (churned)", base - retained),
        ("of the churned, lost by the end of the period", lost_by_end),
        ("retention rate", _round(retention_rate)),
        ("churn rate", _round(churn_rate)),
        ("period length (days)", period.days),
        ("expected duration (days) = period / churn rate", None if expected_days is None else round(expected_days, 1)),
    ))
    clv_table, pyramid = _clv_tables(clvs)
    ltotals0 = [sum(row) for row in lcounts]
    ltotals1 = [sum(lcounts[i][j] for i in range(len(LOYALTY_STAGES))) for j in range(len(LOYALTY_STAGES))]
    loyalty = Table(("loyalty_stage", "customers_at_start", "customers_at_end", "change"), tuple(
        (s, ltotals0[i], ltotals1[i], ltotals1[i] - ltotals0[i]) for i, s in enumerate(LOYALTY_STAGES)))
    loyalty_moves = Table(("from \\ to", *LOYALTY_STAGES), tuple(
        (s, *lcounts[i]) for i, s in enumerate(LOYALTY_STAGES)))
    return CustomerReport(flows=Table(("from_stage", "to_stage", "customers"), flows), matrix=matrix,
                          retention=retention, clv=clv_table, pyramid=pyramid, loyalty=loyalty,
                          loyalty_moves=loyalty_moves, customers=len(rows))


def _clv_tables(clvs: list[float]) -> tuple[Table, Table]:
    if not clvs:
        return Table(("clv_from", "clv_to", "customers"), ()), Table(
            ("tier", "customers", "clv_min", "clv_max", "clv_sum", "share_of_clv"), ())
    ordered = sorted(clvs, reverse=True)
    top = max(1, round(len(ordered) * 0.2)) if len(ordered) >= 1 else 0
    middle = round(len(ordered) * 0.5)
    tiers = (("top 20 %", ordered[:top]), ("middle 50 %", ordered[top:top + middle]),
             ("bottom 30 %", ordered[top + middle:]))
    total = sum(ordered)
    pyramid = Table(("tier", "customers", "clv_min", "clv_max", "clv_sum", "share_of_clv"), tuple(
        (name, len(part), round(min(part), 2) if part else None, round(max(part), 2) if part else None,
         round(sum(part), 2), _round(_rate(sum(part), total)))
        for name, part in tiers))
    hi = ordered[0]
    bins = 20
    width = hi / bins if hi > 0 else 1.0
    hist = [0] * bins
    for v in ordered:
        hist[min(bins - 1, int(v / width)) if v > 0 else 0] += 1
    clv = Table(("clv_from", "clv_to", "customers"), tuple(
        (round(i * width, 2), round((i + 1) * width, 2), hist[i]) for i in range(bins)))
    return clv, pyramid


# -- models -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelReport:
    models: Table
    """Per bundle version and model: shown, mean predicted, observed acceptance, AUC."""
    curves: Mapping[str, Table] = field(default_factory=dict)
    """Per model row label: calibration points (predicted mean, observed rate, shown) by decile."""
    experiments: Table | None = None
    """Per experiment arm: decisions, offers shown, accepted, acceptance rate, value accepted
    (``None``: no decision in the hub was in an experiment)."""


def model_report(hub: HubReader, rollups: RollupStore, *, catalog_models: Mapping[tuple[str, int], Mapping[str, str]]
                 ) -> ModelReport:
    rows = rollups.query(
        "SELECT bundle_name, bundle_version, offer_id, bin, shown, predicted, accepted FROM calibration "
        "ORDER BY bundle_name, bundle_version, bin")
    groups: dict[tuple[str, int, str], list[list[float]]] = {}
    for name, version, offer_id, bin_, shown, predicted, accepted in rows:
        models = catalog_models.get((name, int(version)))
        model = models.get(offer_id, "(offer not in catalog)") if models is not None else "(bundle not on this hub)"
        bins = groups.setdefault((name, int(version), model), [[0, 0.0, 0] for _ in range(BINS)])
        b = bins[int(bin_)]
        b[0] += int(shown)
        b[1] += float(predicted)
        b[2] += int(accepted)
    out = []
    curves: dict[str, Table] = {}
    for (name, version, model), bins in sorted(groups.items()):
        shown = sum(int(b[0]) for b in bins)
        accepted = sum(int(b[2]) for b in bins)
        predicted = sum(b[1] for b in bins)
        auc = binned_auc([(int(b[2]), int(b[0] - b[2])) for b in bins])
        out.append((name, version, model, shown, accepted, _round(_rate(predicted, shown)),
                    _round(_rate(accepted, shown)), _round(auc)))
        points = []
        for decile in range(10):
            part = bins[decile * BINS // 10:(decile + 1) * BINS // 10]
            s = sum(int(b[0]) for b in part)
            if s:
                points.append((f"{decile / 10:.1f}–{(decile + 1) / 10:.1f}", s, _round(sum(b[1] for b in part) / s),
                               _round(sum(int(b[2]) for b in part) / s)))
        curves[f"{name} v{version} · {model}"] = Table(("predicted_range", "shown", "mean_predicted",
                                                        "observed_rate"), tuple(points))
    models_table = Table(("bundle", "version", "model", "shown", "accepted", "mean_predicted", "observed_rate",
                          "auc"), tuple(out))
    arms = rollups.query("SELECT experiment, arm, kind, decisions, shown, accepted, value_accepted FROM arms "
                         "ORDER BY experiment, arm")
    experiments = Table(("experiment", "arm", "kind", "decisions", "offers_shown", "accepted", "acceptance_rate",
                         "value_accepted"), tuple(
        (e, a, k, int(d), int(s), int(acc), _round(_rate(acc, s)), round(float(v), 2))
        for e, a, k, d, s, acc, v in arms)) if arms else None
    return ModelReport(models=models_table, curves=curves, experiments=experiments)


def binned_auc(bins: Sequence[tuple[int, int]]) -> float | None:
    """AUC (probability a random accepted offer had a higher propensity than a random other
    one, ties half) from (positives, negatives) per propensity bin in ascending order; ``None``
    when either class is empty. Offers in one bin count as ties."""
    positives = sum(p for p, _ in bins)
    negatives = sum(n for _, n in bins)
    if positives == 0 or negatives == 0:
        return None
    below = 0
    area = 0.0
    for p, n in bins:
        area += p * (below + 0.5 * n)
        below += n
    return area / (positives * negatives)


def bundle_models(hub: HubReader) -> dict[tuple[str, int], dict[str, str]]:
    """offer_id → model_id of every bundle published to the hub, read from its catalog."""
    out: dict[tuple[str, int], dict[str, str]] = {}
    for name, version in hub.query("SELECT name, version FROM hub_bundles"):
        parts = hub.query("SELECT data FROM hub_bundle_parts WHERE name = ? AND version = ? ORDER BY part",
                          (name, version))
        data = b"".join(bytes(p[0]) for p in parts)
        try:
            out[(str(name), int(version))] = _catalog_models(data)
        except (zipfile.BadZipFile, KeyError, sqlite3.Error, OSError):
            continue  # a bundle whose catalog cannot be read: its models show as unknown
    return out


def _catalog_models(data: bytes) -> dict[str, str]:
    with zipfile.ZipFile(io.BytesIO(data)) as z, tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "catalog.sqlite"
        path.write_bytes(z.read("catalog.sqlite"))
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return {str(o): str(m) if m else "(no model)" for o, m in
                    conn.execute("SELECT offer_id, model_id FROM offers")}
        finally:
            conn.close()

