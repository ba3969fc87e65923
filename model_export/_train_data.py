"""From a demo-data style directory to training rows, a trained model and a model directory.

Reads ``customers.csv``, ``transactions.csv``, ``catalog.yaml`` and ``history.csv`` (the
layout ``nbo demo-data`` writes), builds one row per shown offer keyed by model input name
(``customer__…`` from the customer's measures as of the latest transaction plus profile
fields, ``offer__…`` from the catalog's offer columns and attributes, ``context__channel``,
``context__hour``, ``context__weekday``), trains, exports ``propensity.onnx`` and writes
``metrics.json``, ``holdout.csv`` and ``report.html``.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from nbo.sdk import InputError
from nbo.sdk.core import derive_features, to_epoch, update_measures

__all__ = ["DEFAULT_FEATURES", "TrainingData", "TrainResult", "load_training_data", "train_from_directory"]

DEFAULT_FEATURES: tuple[str, ...] = (
    "customer__recency_days",
    "customer__frequency",
    "customer__monetary",
    "customer__avg_purchase",
    "customer__tenure_days",
    "customer__purchases_per_year",
    "customer__clv",
    "customer__lifecycle_stage",
    "customer__loyalty_stage",
    "customer__age",
    "customer__segment",
    "customer__region",
    "customer__complaint_open",
    "offer__category",
    "offer__price_band",
    "offer__discount_pct",
    "offer__margin",
    "context__channel",
    "context__hour",
    "context__weekday",
)
DEFAULT_CATEGORICAL: tuple[str, ...] = (
    "customer__lifecycle_stage",
    "customer__loyalty_stage",
    "customer__segment",
    "customer__region",
    "offer__category",
    "offer__price_band",
    "context__channel",
)
MODEL_FILE = "propensity.onnx"


@dataclass(frozen=True, kw_only=True)
class TrainingData:
    """Rows keyed by model input name, 0/1 labels, and per-row bookkeeping."""

    rows: list[dict[str, Any]]
    labels: list[int]
    customer_ids: list[str]
    offer_ids: list[str]
    categories: list[str]
    true_propensity: list[float | None]
    as_of: float


def _read_csv(path: Path, lines: list[int] | None = None) -> list[dict[str, str]]:
    """The rows of ``path``; a row with fewer or more fields than the header is an error naming it.

    ``lines``, when given, receives each row's (last) line number in the file.
    """
    if not path.is_file():
        raise InputError(f"{path}: file not found", field=path.name)
    rows: list[dict[str, str]] = []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            for number, row in enumerate(reader, start=1):
                if None in row:  # more fields than the header names
                    raise InputError(f"{path.name} row {number} (line {reader.line_num}): "
                                     f"{len(reader.fieldnames or ()) + len(row[None])} fields, the header has "
                                     f"{len(reader.fieldnames or ())}", field=path.name)
                short = [column for column, value in row.items() if value is None]
                if short:
                    raise InputError(f"{path.name} row {number} (line {reader.line_num}): no value for "
                                     f"{short[0]!r} ({len(row) - len(short)} fields, the header has {len(row)})",
                                     field=short[0])
                rows.append(row)
                if lines is not None:
                    lines.append(reader.line_num)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})", field=path.name) from None
    except csv.Error as exc:
        raise InputError(f"{path}: not a readable CSV file: {exc}", field=path.name) from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}", field=path.name) from None
    return rows


def _measures(transactions: list[dict[str, str]], path: Path, lines: Sequence[int],
              profiles: Mapping[str, Mapping[str, Any]]) -> tuple[float, dict[str, dict[str, Any]]]:
    """The snapshot time and every customer's measures; a bad transaction is an error naming its row."""
    try:
        as_of = max(to_epoch(t["timestamp"], field="timestamp") for t in transactions)
        return as_of, derive_features(transactions, as_of=as_of, profiles=profiles)
    except InputError as exc:
        # Find the row with the measures' own parsing (only on this failure path, so the
        # rules stay the SDK's and a good file pays nothing).
        for number, record in enumerate(transactions, start=1):
            try:
                update_measures(None, [record], as_of=to_epoch(record["timestamp"], field="timestamp"))
            except InputError as row_exc:
                raise InputError(f"{path.name} row {number} (line {lines[number - 1]}): {row_exc}",
                                 field=row_exc.field) from None
        raise InputError(f"{path.name}: {exc}", field=exc.field) from None


def _profile_value(column: str, text: str) -> Any:
    if column == "owned_products":
        return [p for p in text.split("|") if p]
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "":
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text else number


def _require(record: Mapping[str, str], columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in record]
    if missing:
        raise InputError(f"{path.name}: missing column {missing[0]!r}", field=missing[0])


def load_training_data(data_dir: str | Path, *, features: Sequence[str] = DEFAULT_FEATURES) -> TrainingData:
    """Build training rows from a demo-data style directory (see module docstring).

    ``features``: model input names to fill, each ``customer__X`` (measure or customers.csv
    column X), ``offer__X`` (catalog column or attribute X) or ``context__X`` (history.csv
    column X: channel, hour, weekday).
    """
    for name in features:
        source, sep, key = name.partition("__")
        if not sep or not key or source not in ("customer", "offer", "context"):
            raise InputError(f"feature {name!r} is not named customer__X, offer__X or context__X", field=name)
    root = Path(data_dir)
    customers_path, tx_path = root / "customers.csv", root / "transactions.csv"
    catalog_path, history_path = root / "catalog.yaml", root / "history.csv"
    customers = _read_csv(customers_path)
    tx_lines: list[int] = []
    transactions = _read_csv(tx_path, tx_lines)
    history = _read_csv(history_path)
    if not customers or not transactions or not history:
        empty = next(p for p, r in ((customers_path, customers), (tx_path, transactions), (history_path, history)) if not r)
        raise InputError(f"{empty}: no rows", field=empty.name)
    _require(customers[0], ("customer_id",), customers_path)
    _require(transactions[0], ("customer_id", "timestamp", "amount"), tx_path)
    _require(history[0], ("customer_id", "offer_id", "channel", "hour", "weekday", "outcome"), history_path)
    if not catalog_path.is_file():
        raise InputError(f"{catalog_path}: file not found", field="catalog.yaml")
    try:
        catalog = yaml.safe_load(catalog_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"{catalog_path}: not valid YAML: {exc}", field="catalog.yaml") from None
    offers: dict[str, dict[str, Any]] = {}
    for offer in (catalog or {}).get("offers") or []:
        columns = {k: v for k, v in offer.items() if k != "attributes"}
        offers[str(offer["offer_id"])] = {**(offer.get("attributes") or {}), **columns}

    profiles = {
        row["customer_id"]: {k: _profile_value(k, v) for k, v in row.items() if k != "customer_id"}
        for row in customers
    }
    as_of, measures = _measures(transactions, tx_path, tx_lines, profiles)

    rows: list[dict[str, Any]] = []
    labels: list[int] = []
    customer_ids: list[str] = []
    offer_ids: list[str] = []
    categories: list[str] = []
    truth: list[float | None] = []
    for i, shown in enumerate(history):
        cid, oid = shown["customer_id"], shown["offer_id"]
        offer = offers.get(oid)
        if offer is None:
            raise InputError(f"history.csv row {i + 1}: offer {oid!r} is not in catalog.yaml", field="offer_id")
        customer = measures.get(cid)
        if customer is None:
            raise InputError(f"history.csv row {i + 1}: customer {cid!r} is not in customers.csv", field="customer_id")
        outcome = shown["outcome"].strip().lower()
        if outcome not in ("accepted", "declined"):
            raise InputError(f"history.csv row {i + 1}: outcome {outcome!r} is not accepted/declined", field="outcome")
        row: dict[str, Any] = {}
        for name in features:
            source, _, key = name.partition("__")
            if source == "customer":
                row[name] = customer.get(key)
            elif source == "offer":
                row[name] = offer.get(key)
            else:
                row[name] = _profile_value(key, shown.get(key, ""))
        rows.append(row)
        labels.append(1 if outcome == "accepted" else 0)
        customer_ids.append(cid)
        offer_ids.append(oid)
        categories.append(str(offer.get("category", "")))
        raw_truth = shown.get("true_propensity", "")
        truth.append(float(raw_truth) if raw_truth not in ("", None) else None)
    return TrainingData(
        rows=rows, labels=labels, customer_ids=customer_ids, offer_ids=offer_ids,
        categories=categories, true_propensity=truth, as_of=as_of,
    )


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What ``train_from_directory`` wrote and measured."""

    model_path: Path
    metrics_path: Path
    report_path: Path
    metrics: dict[str, Any]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def train_from_directory(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    model: str = "gbt",
    seed: int = 0,
    features: Sequence[str] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train on a demo-data style directory; write propensity.onnx, metrics.json, holdout.csv, report.html.

    ``features`` defaults to :data:`DEFAULT_FEATURES` (with their known string columns);
    with your own list, string columns are inferred from the values.
    """
    started = time.monotonic()
    chosen = tuple(features) if features is not None else DEFAULT_FEATURES
    out = Path(out_dir)
    created = _writable_directory(out)  # before training: a bad --out must not cost the training time
    return _cleaned_up(created, lambda: _train_into(data_dir, out, chosen, features is None, model=model, seed=seed,
                                                    progress=progress, started=started))


def _cleaned_up(created: Path | None, run: Any) -> TrainResult:
    try:
        result: TrainResult = run()
        return result
    except BaseException:
        if created is not None:  # a failed run leaves nothing it created
            shutil.rmtree(created, ignore_errors=True)
        raise


def _writable_directory(out: Path) -> Path | None:
    """Create ``out`` if missing and check a file can be written in it.

    Returns the outermost directory this created (``None`` if ``out`` existed), for the
    caller to remove when the run fails.
    """
    missing = [d for d in (out, *out.parents) if not d.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        if missing and missing[-1].exists():
            shutil.rmtree(missing[-1], ignore_errors=True)
        raise InputError(f"out_dir {out}: cannot write the model directory here: {exc.strerror or exc}",
                         field="out_dir") from None
    return missing[-1] if missing else None


def _train_into(data_dir: str | Path, out: Path, chosen: tuple[str, ...], default_features: bool, *,
                model: str, seed: int, progress: bool, started: float) -> TrainResult:
    data = load_training_data(data_dir, features=chosen)
    return train_rows_into(data, data_dir, out, chosen, DEFAULT_CATEGORICAL if default_features else None,
                           model=model, seed=seed, progress=progress, started=started)


def train_rows_into(data: TrainingData, data_dir: str | Path, out: Path, chosen: Sequence[str],
                    categorical: Sequence[str] | None, *, model: str, seed: int, progress: bool,
                    started: float) -> TrainResult:
    """Train on ``data`` and write the model directory (what ``nbo train`` writes, from any source)."""
    from ._report import truth_comparison, write_report
    from ._train import _progress, train_propensity

    _progress(progress, f"{len(data.rows)} shown offers, {len(set(data.customer_ids))} customers")
    trained = train_propensity(
        data.rows, data.labels, features=list(chosen), categorical=None if categorical is None else list(categorical),
        model=model, groups=data.customer_ids, seed=seed, progress=progress,
    )
    model_path = out / MODEL_FILE
    export_started = time.monotonic()
    diff = trained.export_onnx(model_path)
    export_seconds = time.monotonic() - export_started
    _progress(progress, f"exported {model_path} (ONNX vs scikit-learn max |Δp| {diff:.2e} on the holdout)")
    _progress(progress, "permutation feature importances on the holdout …")
    importances = trained.feature_importances(seed=seed)

    holdout_path = out / "holdout.csv"
    with holdout_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["row", "customer_id", "offer_id", "category", "label", "propensity", "true_propensity"])
        for k, idx in enumerate(trained.holdout_index.tolist()):
            true_p = data.true_propensity[idx]
            writer.writerow([
                idx + 1, data.customer_ids[idx], data.offer_ids[idx], data.categories[idx],
                int(trained.holdout_labels[k]), f"{float(trained.holdout_proba[k]):.6f}",
                "" if true_p is None else f"{true_p:.6f}",
            ])
    metrics = dict(trained.metrics)
    metrics.update(
        features=list(trained.features),
        categorical=list(trained.categorical),
        trained_at=trained.trained_at,
        as_of=data.as_of,
        parity_max_abs_diff=diff,
        export_seconds=round(export_seconds, 3),
        feature_importances=dict(sorted(importances.items(), key=lambda kv: -kv[1])),
        model_file=MODEL_FILE,
        data_dir=str(Path(data_dir)),
        total_seconds=round(time.monotonic() - started, 3),
    )
    truth = [data.true_propensity[idx] for idx in trained.holdout_index.tolist()]
    if truth and all(t is not None for t in truth):
        metrics["ground_truth"] = truth_comparison(
            trained.holdout_labels, trained.holdout_proba, np.array(truth, dtype=np.float64)
        )
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(_json_safe(metrics), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    report_path = write_report(out)
    _progress(progress, f"report written to {report_path}")
    return TrainResult(model_path=model_path, metrics_path=metrics_path, report_path=report_path, metrics=metrics)
