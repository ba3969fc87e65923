"""Training rows from an exported field log (``nbo train --logs DIR``, docs/learning.md).

Each shown slot of an offer a model scored becomes one row with exactly the inputs its model
saw: the logged ``customer__*``/``context__*`` values as exported, and the ``offer__*`` values
from the catalog of the bundle the decision names (``DIR/_bundles/``). No point-in-time join:
what was logged at the decision is what trains the model, so training and serving cannot drift.
The label is ``accepted``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nbo.sdk import InputError

from ._evaluate import load_bundle_file, read_log
from ._train_data import TrainingData, TrainResult, _cleaned_up, _writable_directory, train_rows_into

__all__ = ["load_log_training_data", "train_from_logs"]


def load_log_training_data(logs: str | Path) -> tuple[TrainingData, list[str], list[str]]:
    """(rows, the feature names, the string features) of an exported log; ``InputError`` on a bad log."""
    import pyarrow.dataset as ds

    info, directory = read_log(logs)
    logged: Mapping[str, str] = info.get("inputs") or {}
    bundles: dict[tuple[str, int], Any] = {}  # (name, version) -> DecisionPlan
    for rel in info.get("bundles") or []:
        loaded = load_bundle_file(directory / rel)
        bundles[(loaded.info.name, loaded.info.version)] = loaded.plan
    offer_inputs: dict[str, str] = {}
    for plan in bundles.values():
        for model in plan.models:
            for inp in model.inputs:
                if inp.source == "offer":
                    offer_inputs[inp.name] = "string" if inp.dtype == "string" else "float"
    features = sorted(logged) + sorted(offer_inputs)
    categorical = [f for f in features if (logged.get(f) or offer_inputs.get(f)) == "string"]
    columns = ["bundle_name", "bundle_version", "offer_id", "category", "customer_id", "accepted", "decided_at",
               *sorted(logged)]
    rows: list[dict[str, Any]] = []
    labels: list[int] = []
    customers: list[str] = []
    offers: list[str] = []
    categories: list[str] = []
    latest = 0.0
    dataset = ds.dataset(directory, format="parquet", partitioning="hive")
    for batch in dataset.scanner(columns=columns, batch_size=50_000).to_batches():
        t = batch.to_pydict()
        for i in range(batch.num_rows):
            key = (t["bundle_name"][i], int(t["bundle_version"][i]))
            plan = bundles.get(key)
            if plan is None:
                raise InputError(f"the log names bundle {key[0]} v{key[1]}, which is not in {directory / '_bundles'} "
                                 "(the hub did not hold it), so its offers' inputs are unknown", field="logs")
            pos = plan.offer_position.get(t["offer_id"][i])
            if pos is None or plan.model_index[pos] < 0:
                continue  # an offer no model scores (a notice, a fallback): nothing to learn for the model
            row: dict[str, Any] = {name: t[name][i] for name in logged}
            offer = plan.offer_maps[pos]
            for name in offer_inputs:
                field = name.removeprefix("offer__")
                row[name] = offer[field] if field in offer and field != "attributes" else \
                    offer.get("attributes", {}).get(field)
            rows.append(row)
            labels.append(int(t["accepted"][i]))
            customers.append(str(t["customer_id"][i]))
            offers.append(str(t["offer_id"][i]))
            categories.append(str(t["category"][i]))
            latest = max(latest, t["decided_at"][i].timestamp())
    if not rows:
        raise InputError(f"the log {directory} has no shown offer that a model scored: nothing to train on",
                         field="logs")
    data = TrainingData(rows=rows, labels=labels, customer_ids=customers, offer_ids=offers, categories=categories,
                        true_propensity=[None] * len(rows), as_of=latest)
    return data, features, categorical


def train_from_logs(
    logs: str | Path,
    out_dir: str | Path,
    *,
    model: str = "gbt",
    seed: int = 0,
    features: Sequence[str] | None = None,
    progress: bool = True,
) -> TrainResult:
    """``nbo train --logs DIR``: train on an exported field log; write what ``nbo train`` writes.

    ``features`` defaults to every input the logging bundles' models read (the logged customer
    and context inputs, the offers' inputs from the bundles); a name that is neither is an
    ``InputError``.
    """
    started = time.monotonic()
    out = Path(out_dir)
    read_log(logs)  # a bad log is refused before anything is created
    created = _writable_directory(out)

    def run() -> TrainResult:
        data, available, categorical = load_log_training_data(logs)
        chosen = list(features) if features is not None else available
        unknown = [f for f in chosen if f not in available]
        if unknown:
            raise InputError(f"features {', '.join(unknown)} are not in the log (it has {', '.join(available)})",
                             field="features")
        return train_rows_into(data, logs, out, chosen, [c for c in categorical if c in chosen], model=model,
                               seed=seed, progress=progress, started=started)

    return _cleaned_up(created, run)
