"""``export_log``: the field log as a Parquet dataset (docs/learning.md, "The exported log").

One row per shown slot, partitioned by day (``day=YYYY-MM-DD/part-0.parquet``), zstd, with the
rewards :func:`~._rewards.attribute_rewards` attributed (a pass runs first). Read from the hub
in pages of decisions in time order (keyset pagination), so memory stays bounded however long
the log; written into a temporary directory beside ``out`` and moved into place at the end, so
a failed export leaves no partial file. ``_nbo_log.json`` marks the directory as an nbo log and
names its columns; the bundles the rows name are copied to ``_bundles/`` when the hub holds
them (training and evaluation read the offers' inputs from them).
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from nbo.sdk import ConfigError, InputError
from nbo.sdk.core import slot_probability, to_float, to_string

from ._db import DbTx
from ._hub import HubStore
from ._rewards import attribute_rewards, bundle_bytes

__all__ = ["FIXED_COLUMNS", "LOG_FORMAT", "LOG_MARKER", "ExportReport", "export_log", "open_hub"]

LOG_MARKER = "_nbo_log.json"
LOG_FORMAT = 1
_PAGE = 2_000  # decisions per page read from the hub
_IN_CHUNK = 400
_AMOUNT = (22, 4)  # decimal128 precision and scale of purchase_amount (amounts < 10^12, 4 places)


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What :func:`export_log` wrote."""

    directory: Path
    rows: int
    """Shown slots written (one row each)."""
    decisions: int
    days: tuple[str, ...]
    """The ``day=`` partitions, oldest first."""
    bundles: tuple[str, ...]
    """``_bundles/<name>-<version>.zip`` copied from the hub."""
    inputs: Mapping[str, str]
    """Logged input columns and their type (``float`` or ``string``)."""


def open_hub(url: str, *, state_dir: str | os.PathLike[str] | None = None, schema: str | None = None) -> HubStore:
    """Open an existing hub database for reading its log (``ConfigError`` naming ``--hub`` when
    it is not one). A ``sqlite:`` hub's state directory is the file's directory (its bundles are
    under ``hub-bundles/`` there); a PostgreSQL hub gets a temporary one unless given."""
    if url.startswith("sqlite:"):
        from ._db import sqlite_path

        path = sqlite_path(url)
        if not path.is_file():
            raise ConfigError(f"--hub: no hub database at {path}")
        state = Path(state_dir) if state_dir is not None else path.parent
        if not (state / "hub-bundles").is_dir():
            state = Path(tempfile.mkdtemp(prefix="nbo-hub-"))
        hub = HubStore.open(url, state_dir=state, schema=schema)
    elif url.startswith(("postgresql://", "postgres://")):
        hub = HubStore.open(url, state_dir=state_dir or tempfile.mkdtemp(prefix="nbo-hub-"), schema=schema)
    else:
        raise ConfigError(f"--hub must be a sqlite:/// or postgresql:// URL, not {url!r}")
    return hub


def export_log(
    hub: HubStore | str,
    out: str | os.PathLike[str],
    *,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ExportReport:
    """Write the hub's field log from ``since`` (inclusive) to ``until`` (exclusive) as Parquet.

    ``hub`` is a :class:`HubStore` or a database URL. ``since``/``until`` are dates
    (``2026-12-01``: midnight UTC) or times. ``out`` must not exist or be an empty directory.
    ``progress(rows, decisions)`` is called after each page. An empty range writes a log with
    no rows (and says so in its marker). ``InputError`` names ``out``/``since``/``until``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    start, end = _instant(since, "since"), _instant(until, "until")
    if start is not None and end is not None and end <= start:
        raise InputError("until must be later than since", field="until")
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"{target} already exists and is not an empty directory", field="out")
    target.parent.mkdir(parents=True, exist_ok=True)
    own = isinstance(hub, str)
    store = open_hub(hub) if isinstance(hub, str) else hub
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        attribute_rewards(store)
        inputs, bundles = _columns(store, start, end)
        schema = _schema(pa, inputs)
        tmp.mkdir()
        rows = decisions = 0
        days: list[str] = []
        writer: Any = None
        for day, batch in _pages(store, start, end, inputs):
            if not days or days[-1] != day:
                if writer is not None:
                    writer.close()
                (tmp / f"day={day}").mkdir()
                writer = pq.ParquetWriter(tmp / f"day={day}" / "part-0.parquet", schema, compression="zstd")
                days.append(day)
            writer.write_table(_table(pa, batch.finish(), schema))
            rows += batch.rows
            decisions += batch.decisions
            if progress is not None:
                progress(rows, decisions)
        if writer is not None:
            writer.close()
        copied = _copy_bundles(store, bundles, tmp / "_bundles")
        marker = {
            "format": LOG_FORMAT, "kind": "nbo field log", "exported_at": datetime.now(UTC).isoformat(),
            "since": None if start is None else datetime.fromtimestamp(start, UTC).isoformat(),
            "until": None if end is None else datetime.fromtimestamp(end, UTC).isoformat(),
            "rows": rows, "decisions": decisions, "days": days, "inputs": inputs, "bundles": copied,
        }
        (tmp / LOG_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if own:
            store.close()
    return ExportReport(directory=target, rows=rows, decisions=decisions, days=tuple(days), bundles=tuple(copied),
                        inputs=inputs)


# -- what to write ---------------------------------------------------------------------------------


FIXED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("decided_at", "timestamp"), ("decision_id", "string"), ("device_id", "string"), ("channel", "string"),
    ("bundle_name", "string"), ("bundle_version", "int64"), ("customer_id", "string"), ("strategy", "string"),
    ("position", "int32"), ("offer_id", "string"), ("category", "string"), ("selection_probability", "float64"),
    ("propensity", "float64"), ("value", "float64"), ("weight", "float64"), ("lever", "float64"),
    ("score", "float64"), ("outcome", "string"), ("responded_at", "timestamp"), ("accepted", "int8"),
    ("purchases", "int64"), ("purchase_amount", "decimal"), ("eligible_offers", "list<string>"),
    ("eligible_pscore", "list<float64>"), ("eligible_shown", "list<float64>"), ("eligible_index", "int32"),
)
"""The columns every log has, in order; the logged inputs follow, sorted by name."""


def _schema(pa: Any, inputs: Mapping[str, str]) -> Any:
    kinds = {
        "timestamp": pa.timestamp("us", tz="UTC"), "string": pa.string(), "int64": pa.int64(),
        "int32": pa.int32(), "int8": pa.int8(), "float64": pa.float64(), "decimal": pa.decimal128(*_AMOUNT),
        "list<string>": pa.list_(pa.string()), "list<float64>": pa.list_(pa.float64()),
    }
    fields = [pa.field(name, kinds[kind]) for name, kind in FIXED_COLUMNS]
    fields += [pa.field(name, pa.float64() if kind == "float" else pa.string()) for name, kind in inputs.items()]
    return pa.schema(fields)


def _table(pa: Any, columns: Mapping[str, list[Any]], schema: Any) -> Any:
    """The batch as an Arrow table; times arrive as epoch seconds and become UTC timestamps."""
    arrays = []
    for f in schema:
        values = columns[f.name]
        if f.name in ("decided_at", "responded_at"):
            micros = [None if v is None else round(v * 1_000_000) for v in values]
            arrays.append(pa.array(micros, type=pa.int64()).cast(f.type))
        else:
            arrays.append(pa.array(values, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _columns(hub: HubStore, start: float | None, end: float | None) -> tuple[dict[str, str], list[tuple[str, int]]]:
    """The logged input columns (name → float|string, from the bundles' manifests; a bundle the
    hub does not hold: from its first decision's values) and the bundles in the range."""
    where, params = _range(start, end)
    with hub.db.transaction() as tx:
        bundles = [(str(n), int(v)) for n, v in tx.execute(
            f"SELECT DISTINCT bundle_name, bundle_version FROM hub_decisions {where} ORDER BY 1, 2", params)]
        types: dict[str, str] = {}
        for name, version in bundles:
            declared = _manifest_inputs(hub, tx, name, version)
            if declared is None:
                declared = _inferred_inputs(tx, name, version)
            for input_name, kind in declared.items():
                known = types.get(input_name)
                types[input_name] = kind if known in (None, kind) else "string"  # disagreeing bundles: text
    return dict(sorted(types.items())), bundles


def _manifest_inputs(hub: HubStore, tx: DbTx, name: str, version: int) -> dict[str, str] | None:
    zip_bytes = bundle_bytes(hub, tx, name, version)
    if zip_bytes is None:
        return None
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as zf:
        manifest = json.loads(zf.read("manifest.json"))
    out: dict[str, str] = {}
    for model in manifest.get("models", []):
        for item in model.get("inputs", []):
            input_name = str(item.get("name", ""))
            if input_name.startswith(("customer__", "context__")):
                out[input_name] = "string" if item.get("type") == "string" else "float"
    return out


def _inferred_inputs(tx: DbTx, name: str, version: int) -> dict[str, str]:
    rows = tx.execute(
        "SELECT e.payload FROM hub_decisions d JOIN hub_events e ON e.device_id = d.device_id AND e.seq = d.seq "
        "WHERE d.bundle_name = ? AND d.bundle_version = ? ORDER BY d.decided_at LIMIT 1", (name, version))
    inputs = json.loads(rows[0][0]).get("inputs") if rows else None
    if not isinstance(inputs, Mapping):
        return {}
    return {k: "float" if isinstance(v, int | float) or v is None else "string" for k, v in inputs.items()}


def _copy_bundles(hub: HubStore, bundles: Sequence[tuple[str, int]], directory: Path) -> list[str]:
    copied: list[str] = []
    with hub.db.transaction() as tx:
        for name, version in bundles:
            data = bundle_bytes(hub, tx, name, version)
            if data is None:
                continue
            directory.mkdir(exist_ok=True)
            file_name = f"{name}-{version}.zip"
            (directory / file_name).write_bytes(data)
            copied.append(f"_bundles/{file_name}")
    return copied


def _range(start: float | None, end: float | None, alias: str = "") -> tuple[str, tuple[Any, ...]]:
    clauses, params = [], []
    if start is not None:
        clauses.append(f"{alias}decided_at >= ?")
        params.append(start)
    if end is not None:
        clauses.append(f"{alias}decided_at < ?")
        params.append(end)
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", tuple(params)


_SLOT_COLUMNS = ("position", "offer_id", "category", "selection_probability", "propensity", "value", "weight",
                 "lever", "score", "outcome", "responded_at", "accepted", "purchases", "purchase_amount")
"""The columns read from ``hub_rewards`` as they are, in the order :func:`_slots` selects them."""


class _Batch:
    def __init__(self, names: Sequence[str]) -> None:
        self.columns: dict[str, list[Any]] = {n: [] for n in names if n not in _SLOT_COLUMNS}
        self.slots: list[tuple[Any, ...]] = []
        self.rows = 0
        self.decisions = 0

    def finish(self) -> dict[str, list[Any]]:
        """Every column, the slot columns transposed from their rows at once."""
        out = dict(self.columns)
        transposed = list(zip(*self.slots, strict=True)) if self.slots else [()] * len(_SLOT_COLUMNS)
        for name, values in zip(_SLOT_COLUMNS, transposed, strict=True):
            out[name] = list(values)
        out["purchase_amount"] = [_amount(v) for v in out["purchase_amount"]]
        return out


def _pages(hub: HubStore, start: float | None, end: float | None,
           inputs: Mapping[str, str]) -> Iterator[tuple[str, _Batch]]:
    """(day, rows) batches in time order; a batch never spans two days."""
    names = [n for n, _ in FIXED_COLUMNS] + list(inputs)
    after: tuple[float, str] | None = None
    loads = _json_loads()
    while True:
        where, params = _range(start, end, "d.")
        if after is not None:
            where += (" AND " if where else "WHERE ") + "(d.decided_at > ? OR (d.decided_at = ? AND d.decision_id > ?))"
            params += (after[0], after[0], after[1])
        with hub.db.transaction() as tx:
            decisions = tx.execute(
                "SELECT d.decision_id, d.device_id, d.customer_id, d.channel, d.bundle_name, d.bundle_version, "
                "d.strategy, d.decided_at, e.payload FROM hub_decisions d "
                "JOIN hub_events e ON e.device_id = d.device_id AND e.seq = d.seq "
                f"{where} ORDER BY d.decided_at, d.decision_id LIMIT {_PAGE}", params)
            if not decisions:
                return
            slots = _slots(tx, [d[0] for d in decisions])
        after = (float(decisions[-1][7]), str(decisions[-1][0]))
        batch: _Batch | None = None
        day = ""
        for decision_id, device_id, customer_id, channel, bundle_name, version, strategy, at, text in decisions:
            this_day = _day(int(float(at) // 86_400))
            if batch is None or this_day != day:
                if batch is not None and batch.rows:
                    yield day, batch
                batch, day = _Batch(names), this_day
            rows = slots.get(decision_id, ())
            batch.decisions += 1
            k = len(rows)
            if not k:
                continue
            payload = loads(text)
            logged = payload.get("inputs") if isinstance(payload.get("inputs"), Mapping) else {}
            eligible = payload.get("eligible") if isinstance(payload.get("eligible"), Mapping) else None
            offers, mandatory, epsilon, shown_p = _eligible(eligible)
            cols = batch.columns
            # what the decision's slots share, once per decision
            for name, value in (("decided_at", float(at)), ("decision_id", decision_id), ("device_id", device_id),
                                ("channel", channel), ("bundle_name", bundle_name), ("bundle_version", int(version)),
                                ("customer_id", customer_id), ("strategy", strategy),
                                ("eligible_offers", offers if eligible is not None else None),
                                ("eligible_shown", shown_p)):
                cols[name].extend([value] * k)
            for name, kind in inputs.items():
                value = logged.get(name)
                if kind == "float":
                    number = to_float(value)
                    cols[name].extend([None if math.isnan(number) else number] * k)
                else:
                    cols[name].extend([to_string(value)] * k)
            index_of = {o: i for i, o in enumerate(offers)}
            batch.slots.extend(rows)
            for row in rows:
                cols["eligible_pscore"].append(
                    None if eligible is None else _at_position(int(row[0]), mandatory, len(offers), epsilon))
                cols["eligible_index"].append(index_of.get(row[1], -1))
            batch.rows += k
        if batch is not None and batch.rows:
            yield day, batch


@functools.lru_cache(maxsize=64)
def _day(days: int) -> str:
    return datetime.fromtimestamp(days * 86_400, UTC).strftime("%Y-%m-%d")


@functools.lru_cache(maxsize=4096)
def _amount(text: str) -> Decimal:
    return Decimal(text)


@functools.lru_cache(maxsize=4096)
def _at_position(position: int, mandatory: int, eligible: int, epsilon: float) -> list[float]:
    """The logging policy's probability of each eligible offer at ``position`` (cached: decisions
    with the same shape share it)."""
    return [slot_probability(i, position, mandatory=mandatory, eligible=eligible, epsilon=epsilon)
            for i in range(1, eligible + 1)]


def _slots(tx: DbTx, decision_ids: Sequence[str]) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    for begin in range(0, len(decision_ids), _IN_CHUNK):
        chunk = decision_ids[begin:begin + _IN_CHUNK]
        for row in tx.execute(
            "SELECT decision_id, position, offer_id, category, selection_probability, propensity, value, weight, "
            "lever, score, outcome, responded_at, accepted, purchases, purchase_amount FROM hub_rewards "
            f"WHERE decision_id IN ({', '.join('?' * len(chunk))}) ORDER BY decision_id, position",
            tuple(chunk),
        ):
            out.setdefault(row[0], []).append(row[1:])
    return out


def _eligible(eligible: Mapping[str, Any] | None) -> tuple[list[str], int, float, list[float] | None]:
    if eligible is None:
        return [], 0, 0.0, None
    offers = [str(o) for o in eligible.get("offers", [])]
    runs = tuple((float(p), int(n)) for p, n in eligible.get("p", []))
    return offers, int(eligible.get("mandatory", 0)), float(eligible.get("epsilon", 0.0)), _expand(runs)


@functools.lru_cache(maxsize=4096)
def _expand(runs: tuple[tuple[float, int], ...]) -> list[float]:
    return [p for p, n in runs for _ in range(n)]


def _json_loads() -> Callable[[Any], Any]:
    try:
        import orjson

        return orjson.loads  # type: ignore[no-any-return]
    except ImportError:  # pragma: no cover - the [gateway] extra brings orjson
        return json.loads


def _instant(value: datetime | str | None, field: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InputError(f"{field} must be a date like 2026-12-01 or an ISO time, not {value!r}",
                             field=field) from None
    if not isinstance(value, datetime):
        raise InputError(f"{field} must be a date or a datetime", field=field)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()

