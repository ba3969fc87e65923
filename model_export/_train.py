"""Propensity training and ONNX export with a parity check.

``train_propensity(rows, labels, …)`` fits a scikit-learn Pipeline — a ColumnTransformer
(median imputation for numbers, plus scaling for logistic regression; constant imputation of
"" and one-hot encoding for strings) followed by a sigmoid-calibrated classifier — on a
held-out split by customer. ``TrainedModel.export_onnx(path)`` converts the whole pipeline
with skl2onnx (one ONNX input per feature, named exactly as the row keys, float32 or string
``[N, 1]``; ``zipmap`` off; probabilities last) and refuses to write when onnxruntime and
scikit-learn disagree by more than 1e-4 on the holdout.

Why these choices:

* No pandas: the pipeline is fitted on a numpy object matrix whose column *i* is ONNX input
  *i*; skl2onnx maps integer column indices onto the inputs in order.
* Numeric values are rounded to float32 before fitting, so scikit-learn sees exactly the
  numbers onnxruntime will see (tree thresholds sit between float32 values).
* ``GradientBoostingClassifier`` rather than ``HistGradientBoostingClassifier``: with the
  installed scikit-learn/skl2onnx pair the latter fails to convert (boolean tree
  attributes); the former converts and meets parity.
* Calibration: ``CalibratedClassifierCV(method="sigmoid", ensemble=False)`` with
  customer-grouped folds — one classifier plus a Platt scaler in the graph (not three
  classifiers), exportable by skl2onnx, and no customer leaks between calibration folds.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from nbo.sdk import InputError, ModelError

__all__ = ["DEFAULT_TARGET_OPSET", "PARITY_TOLERANCE", "TrainedModel", "train_propensity"]

PARITY_TOLERANCE = 1e-4
# Explicit opsets: what onnxruntime ≥ 1.17 (the SDK's floor) runs.
DEFAULT_TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
_MODEL_KINDS = ("gbt", "logreg")


def _progress(enabled: bool, message: str) -> None:
    if enabled:
        print(f"[train] {message}", file=sys.stderr, flush=True)


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def _as_number(value: Any, column: str, index: int) -> float:
    if _is_missing(value):
        return math.nan
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise InputError(
                f"column {column!r}: non-numeric value {value!r} in row {index} of a numeric column",
                field=column,
            ) from None
    else:
        raise InputError(
            f"column {column!r}: non-numeric value {value!r} in row {index} of a numeric column", field=column
        )
    if math.isinf(number):
        raise InputError(f"column {column!r}: infinite value in row {index}", field=column)
    # Round through float32: what the ONNX graph will receive.
    return float(np.float32(number))


def _as_category(value: Any) -> str:
    if _is_missing(value):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # as the SDK writes a whole float into a string input
    return str(value)


def _infer_categorical(rows: Sequence[Mapping[str, Any]], features: Sequence[str]) -> list[str]:
    """A column is categorical when its non-missing values are strings that are not numbers."""
    categorical = []
    for column in features:
        has_text = False
        for row in rows:
            value = row[column]
            if isinstance(value, str) and not _is_missing(value):
                try:
                    float(value)
                except ValueError:
                    has_text = True
                    break
        if has_text:
            categorical.append(column)
    return categorical


def _check_labels(labels: Sequence[Any], n_rows: int) -> np.ndarray:
    if len(labels) != n_rows:
        raise InputError(f"labels: {len(labels)} labels for {n_rows} rows", field="labels")
    out = np.empty(n_rows, dtype=np.int64)
    for i, label in enumerate(labels):
        if isinstance(label, str):
            text = label.strip().lower()
            if text in ("1", "true", "accepted"):
                out[i] = 1
                continue
            if text in ("0", "false", "declined"):
                out[i] = 0
                continue
        elif label in (0, 1) and not (isinstance(label, float) and math.isnan(label)):
            out[i] = int(label)
            continue
        raise InputError(f"labels: row {i} has {label!r}; expected 0/1 (or accepted/declined)", field="labels")
    classes = set(out.tolist())
    if len(classes) < 2:
        only = "accepted (1)" if classes == {1} else "declined (0)"
        raise InputError(f"labels: only one class ({only}) in the data; need both outcomes", field="labels")
    return out


def build_matrix(
    rows: Sequence[Mapping[str, Any]], features: Sequence[str], categorical: Sequence[str]
) -> np.ndarray:
    """Rows → object matrix in ``features`` order (floats for numbers, str for categories)."""
    cats = set(categorical)
    matrix = np.empty((len(rows), len(features)), dtype=object)
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InputError(f"rows: row {i} is not a mapping", field="rows")
        for j, column in enumerate(features):
            try:
                value = row[column]
            except KeyError:
                raise InputError(f"column {column!r}: missing in row {i}", field=column) from None
            matrix[i, j] = _as_category(value) if column in cats else _as_number(value, column, i)
    return matrix


def onnx_feeds(matrix: np.ndarray, features: Sequence[str], categorical: Sequence[str]) -> dict[str, np.ndarray]:
    """The ONNX input dict for an object matrix from :func:`build_matrix`."""
    cats = set(categorical)
    feeds: dict[str, np.ndarray] = {}
    for j, column in enumerate(features):
        col = matrix[:, j]
        if column in cats:
            feeds[column] = col.astype(str).reshape(-1, 1)
        else:
            feeds[column] = col.astype(np.float32).reshape(-1, 1)
    return feeds


class TrainedModel:
    """A fitted propensity pipeline with its holdout, metrics and ONNX export.

    Attributes: ``pipeline`` (scikit-learn), ``features`` (input names, in ONNX input order),
    ``categorical`` (the string inputs), ``model_kind``, ``metrics`` (holdout AUC, log loss,
    Brier, sizes …), ``trained_at`` (ISO-8601 UTC), ``holdout_index`` (row positions held
    out), ``holdout_labels`` and ``holdout_proba`` (P(accept) on the holdout),
    ``parity_max_diff`` (set by :meth:`export_onnx`).
    """

    def __init__(
        self,
        *,
        pipeline: Any,
        features: tuple[str, ...],
        categorical: tuple[str, ...],
        model_kind: str,
        metrics: dict[str, Any],
        trained_at: str,
        holdout_matrix: np.ndarray,
        holdout_index: np.ndarray,
        holdout_labels: np.ndarray,
        holdout_proba: np.ndarray,
    ) -> None:
        self.pipeline = pipeline
        self.features = features
        self.categorical = categorical
        self.model_kind = model_kind
        self.metrics = metrics
        self.trained_at = trained_at
        self.holdout_matrix = holdout_matrix
        self.holdout_index = holdout_index
        self.holdout_labels = holdout_labels
        self.holdout_proba = holdout_proba
        self.parity_max_diff: float | None = None

    def predict_proba(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """P(accept) for each row, from the scikit-learn pipeline."""
        matrix = build_matrix(rows, self.features, self.categorical)
        return np.asarray(self.pipeline.predict_proba(matrix))[:, 1]

    def feature_importances(self, *, n_repeats: int = 3, max_rows: int = 2000, seed: int = 0) -> dict[str, float]:
        """Permutation importance of each raw feature on the holdout (drop in ROC AUC)."""
        from sklearn.inspection import permutation_importance

        matrix, labels = self.holdout_matrix, self.holdout_labels
        if len(labels) > max_rows:
            pick = np.random.default_rng(seed).choice(len(labels), size=max_rows, replace=False)
            matrix, labels = matrix[pick], labels[pick]
        if len(set(labels.tolist())) < 2:
            return {name: 0.0 for name in self.features}
        result = permutation_importance(
            self.pipeline, matrix, labels, scoring="roc_auc", n_repeats=n_repeats, random_state=seed
        )
        means = result["importances_mean"]
        return {name: float(means[j]) for j, name in enumerate(self.features)}

    def to_onnx(self, *, target_opset: Mapping[str, int] | None = None) -> Any:
        """The converted ONNX ModelProto (no parity check, not written)."""
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType, StringTensorType

        cats = set(self.categorical)
        initial_types = [
            (name, StringTensorType([None, 1]) if name in cats else FloatTensorType([None, 1]))
            for name in self.features
        ]
        classifier = self.pipeline.steps[-1][1]
        try:
            onx = convert_sklearn(
                self.pipeline,
                initial_types=initial_types,
                options={id(classifier): {"zipmap": False}},
                target_opset=dict(target_opset or DEFAULT_TARGET_OPSET),
            )
        except Exception as exc:  # skl2onnx raises many types; callers get one
            raise ModelError(f"ONNX conversion failed: {type(exc).__name__}: {exc}") from exc
        meta = {
            "nbo.features": json.dumps(list(self.features)),
            "nbo.categorical": json.dumps(list(self.categorical)),
            "nbo.model_kind": self.model_kind,
            "nbo.trained_at": self.trained_at,
            "nbo.metrics": json.dumps(self.metrics, sort_keys=True),
        }
        del onx.metadata_props[:]
        for key, value in meta.items():
            entry = onx.metadata_props.add()
            entry.key, entry.value = key, value
        onx.doc_string = f"nbo-edge propensity model ({self.model_kind}), trained {self.trained_at}"
        return onx

    def parity(self, onnx_bytes: bytes) -> float:
        """Max |P_onnx − P_sklearn| over the holdout, every class column."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        try:
            session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
            outputs = session.run(None, onnx_feeds(self.holdout_matrix, self.features, self.categorical))
        except Exception as exc:  # onnxruntime errors must not reach callers raw
            raise ModelError(f"onnxruntime could not run the exported model: {exc}") from exc
        onnx_proba = np.asarray(outputs[-1], dtype=np.float64)
        sk_proba = np.asarray(self.pipeline.predict_proba(self.holdout_matrix), dtype=np.float64)
        if onnx_proba.shape != sk_proba.shape:
            raise ModelError(f"ONNX probabilities have shape {onnx_proba.shape}, scikit-learn {sk_proba.shape}")
        return float(np.max(np.abs(onnx_proba - sk_proba))) if len(sk_proba) else 0.0

    def export_onnx(
        self,
        path: str | os.PathLike[str],
        *,
        target_opset: Mapping[str, int] | None = None,
        tolerance: float = PARITY_TOLERANCE,
    ) -> float:
        """Write the pipeline as ONNX to ``path``; return the holdout parity max-diff.

        Refuses (``ModelError`` with the figure, nothing written) when onnxruntime's and
        scikit-learn's probabilities differ by more than ``tolerance`` on the holdout.
        """
        onx = self.to_onnx(target_opset=target_opset)
        payload = onx.SerializeToString()
        diff = self.parity(payload)
        if not diff <= tolerance:
            raise ModelError(
                f"ONNX and scikit-learn probabilities differ by {diff:.3g} on the holdout "
                f"(limit {tolerance:g}); model not written"
            )
        self.parity_max_diff = diff
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".onnx-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; a model file is not a secret
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return diff


def _make_pipeline(
    kind: str, numeric_idx: list[int], categorical_idx: list[int], *, seed: int, n_estimators: int, cv: Any
) -> Any:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric_steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy="median"))]
    if kind == "logreg":
        numeric_steps.append(("scale", StandardScaler()))
    transformers: list[tuple[str, Any, list[int]]] = []
    if numeric_idx:
        transformers.append(("num", Pipeline(numeric_steps), numeric_idx))
    if categorical_idx:
        transformers.append(
            (
                "cat",
                Pipeline(
                    [
                        # skl2onnx needs a string missing_values for a string imputer.
                        ("impute", SimpleImputer(missing_values="", strategy="constant", fill_value="__missing__")),
                        ("onehot", OneHotEncoder(handle_unknown="ignore")),
                    ]
                ),
                categorical_idx,
            )
        )
    prep = ColumnTransformer(transformers, sparse_threshold=0.0)
    if kind == "gbt":
        base: Any = GradientBoostingClassifier(n_estimators=n_estimators, max_depth=3, random_state=seed)
    else:
        base = LogisticRegression(max_iter=2000)
    classifier = CalibratedClassifierCV(base, method="sigmoid", cv=cv, ensemble=False)
    return Pipeline([("prep", prep), ("clf", classifier)])


def _calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    edges = np.linspace(0.0, 1.0, bins + 1)
    table = []
    for b in range(bins):
        lo, hi = edges[b], edges[b + 1]
        mask = (p >= lo) & ((p < hi) if b < bins - 1 else (p <= hi))
        n = int(mask.sum())
        if n:
            table.append(
                {"bin_low": round(float(lo), 6), "bin_high": round(float(hi), 6), "count": n,
                 "mean_predicted": float(p[mask].mean()), "observed_rate": float(y[mask].mean())}
            )
    return table


def holdout_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, Any]:
    """AUC, log loss, Brier score and a calibration table for labels ``y`` and P(accept) ``p``."""
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    both = len(set(y.tolist())) == 2
    return {
        "auc": float(roc_auc_score(y, p)) if both else None,
        "log_loss": float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "base_rate": float(y.mean()) if len(y) else None,
        "mean_predicted": float(p.mean()) if len(p) else None,
        "calibration": _calibration_table(y, p),
    }


def train_propensity(
    rows: Sequence[Mapping[str, Any]],
    labels: Sequence[Any],
    *,
    features: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
    model: str = "gbt",
    groups: Sequence[Any] | None = None,
    seed: int = 0,
    holdout: float = 0.2,
    n_estimators: int = 100,
    progress: bool = True,
) -> TrainedModel:
    """Train a calibrated propensity model on feature rows and 0/1 acceptance labels.

    ``rows``: one mapping per shown offer, keyed by model input name (``customer__…``,
    ``offer__…``, ``context__…`` for a bundle-ready model); None, NaN or "" is missing.
    ``features``: the columns to use (default: the keys of the first row, sorted).
    ``categorical``: the string columns (default: inferred — columns with non-numeric text);
    every other column must be numeric. ``model``: ``"gbt"`` (gradient boosting,
    ``n_estimators`` trees) or ``"logreg"``. ``groups``: one id per row (the customer id) so
    that the holdout (``holdout`` share of groups) and the calibration folds never split a
    customer; without it every row is its own group. Progress lines go to stderr.

    Raises ``InputError`` naming the column for missing columns, non-numeric values in a
    numeric column, a column with no values, a single class or empty input; ``ModelError``
    when the split or the fit cannot produce a model.
    """
    started = time.monotonic()
    if model not in _MODEL_KINDS:
        raise InputError(f"model must be one of {', '.join(_MODEL_KINDS)}, got {model!r}", field="model")
    if not 0 < holdout < 1:
        raise InputError(f"holdout must be between 0 and 1, got {holdout!r}", field="holdout")
    rows = list(rows)
    if not rows:
        raise InputError("rows: no training rows (empty input)", field="rows")
    if not isinstance(rows[0], Mapping):
        raise InputError("rows: row 0 is not a mapping", field="rows")
    y = _check_labels(list(labels), len(rows))
    columns = list(features) if features is not None else sorted(rows[0])
    if not columns:
        raise InputError("features: no feature columns", field="features")
    if len(set(columns)) != len(columns):
        raise InputError("features: duplicate column names", field="features")
    # Check presence first so that the error names the missing column, not a later symptom.
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InputError(f"rows: row {i} is not a mapping", field="rows")
        for column in columns:
            if column not in row:
                raise InputError(f"column {column!r}: missing in row {i}", field=column)
    if categorical is None:
        cats = _infer_categorical(rows, columns)
    else:
        unknown = [c for c in categorical if c not in columns]
        if unknown:
            raise InputError(f"column {unknown[0]!r}: listed as categorical but not a feature", field=unknown[0])
        cats = [c for c in columns if c in set(categorical)]
    matrix = build_matrix(rows, columns, cats)
    for j, column in enumerate(columns):
        col = matrix[:, j]
        empty = all(v == "" for v in col) if column in cats else bool(np.all(np.isnan(col.astype(np.float64))))
        if empty:
            raise InputError(f"column {column!r}: no values at all (every row missing)", field=column)

    group_ids = np.arange(len(rows)) if groups is None else np.asarray([str(g) for g in groups])
    if len(group_ids) != len(rows):
        raise InputError(f"groups: {len(group_ids)} group ids for {len(rows)} rows", field="groups")
    from sklearn.model_selection import GroupKFold, GroupShuffleSplit

    n_groups = len(set(group_ids.tolist()))
    if n_groups < 4:
        raise ModelError(f"need at least 4 customers (groups) to hold some out; got {n_groups}")
    splitter = GroupShuffleSplit(n_splits=1, test_size=holdout, random_state=seed)
    train_idx, test_idx = next(splitter.split(matrix, y, group_ids))
    for side, idx in (("training", train_idx), ("holdout", test_idx)):
        if len(set(y[idx].tolist())) < 2:
            raise ModelError(f"the {side} split has only one outcome; add data or change the seed")
    if groups is None:
        # Without customer ids the rows of one customer can land on both sides and flatter the
        # holdout metrics; say so rather than call it a split by customer.
        _progress(
            progress,
            f"split by row (no groups given; pass groups=customer ids to keep each customer on one side): "
            f"{len(train_idx)} training rows, {len(test_idx)} holdout rows",
        )
    else:
        _progress(
            progress,
            f"split by customer: {len(train_idx)} training rows ({len(set(group_ids[train_idx].tolist()))} "
            f"customers), {len(test_idx)} holdout rows ({len(set(group_ids[test_idx].tolist()))} customers)",
        )
    x_train, y_train = matrix[train_idx], y[train_idx]
    train_groups = group_ids[train_idx]
    folds = min(3, len(set(train_groups.tolist())))
    cv = [
        (tr, te)
        for tr, te in GroupKFold(n_splits=folds).split(x_train, y_train, train_groups)
    ]
    for tr, _ in cv:
        if len(set(y_train[tr].tolist())) < 2:
            raise ModelError("a calibration fold has only one outcome; add data")
    cat_set = set(cats)
    numeric_idx = [j for j, c in enumerate(columns) if c not in cat_set]
    categorical_idx = [j for j, c in enumerate(columns) if c in cat_set]
    pipeline = _make_pipeline(
        model, numeric_idx, categorical_idx, seed=seed, n_estimators=n_estimators, cv=cv
    )
    what = f"{n_estimators}-tree gradient boosting" if model == "gbt" else "logistic regression"
    _progress(progress, f"fitting {what} with sigmoid calibration on {folds} customer folds …")
    fit_started = time.monotonic()
    try:
        with warnings.catch_warnings():
            # Our own checks above cover what these would say; keep training output clean.
            warnings.simplefilter("ignore", category=UserWarning)
            pipeline.fit(x_train, y_train)
    except ValueError as exc:
        raise ModelError(f"training failed: {exc}") from exc
    fit_seconds = time.monotonic() - fit_started
    x_test, y_test = matrix[test_idx], y[test_idx]
    p_test = np.asarray(pipeline.predict_proba(x_test))[:, 1]
    metrics = holdout_metrics(y_test, p_test)
    metrics.update(
        model=model,
        n_rows=len(rows),
        n_train=len(train_idx),
        n_holdout=len(test_idx),
        n_customers_train=len(set(train_groups.tolist())),
        n_customers_holdout=len(set(group_ids[test_idx].tolist())),
        fit_seconds=round(fit_seconds, 3),
        n_estimators=n_estimators if model == "gbt" else None,
        calibration_method="sigmoid",
        seed=seed,
    )
    auc = metrics["auc"]
    _progress(
        progress,
        f"fitted in {fit_seconds:.1f} s; holdout AUC {auc:.3f}, log loss {metrics['log_loss']:.4f}"
        f" ({time.monotonic() - started:.1f} s in all)",
    )
    return TrainedModel(
        pipeline=pipeline,
        features=tuple(columns),
        categorical=tuple(cats),
        model_kind=model,
        metrics=metrics,
        trained_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        holdout_matrix=x_test,
        holdout_index=np.asarray(test_idx),
        holdout_labels=y_test,
        holdout_proba=p_test,
    )
