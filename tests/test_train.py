"""Training and ONNX export on the real stack: scikit-learn, skl2onnx, onnxruntime."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from nbo.model_export import TrainedModel, train_propensity
from nbo.sdk import InputError, ModelError

FEATURES = ("customer__x", "customer__segment", "offer__discount_pct", "context__channel", "context__hour")
CATEGORICAL = ("customer__segment", "context__channel")


def make_rows(n: int, seed: int) -> tuple[list[dict[str, Any]], list[int], list[str]]:
    """Synthetic shown offers with missing numbers (None, NaN) and missing strings ("")."""
    rng = np.random.default_rng(seed)
    rows, labels, groups = [], [], []
    for i in range(n):
        x = float(rng.normal())
        segment = str(rng.choice(["gold", "silver", "bronze"]))
        channel = str(rng.choice(["pos", "app", "web"]))
        z = 1.2 * x + (0.8 if segment == "gold" else 0.0) + (0.5 if channel == "app" else 0.0) - 0.7
        labels.append(int(rng.random() < 1 / (1 + math.exp(-z))))
        row: dict[str, Any] = {
            "customer__x": x,
            "customer__segment": segment,
            "offer__discount_pct": int(rng.integers(0, 40)),
            "context__channel": channel,
            "context__hour": int(rng.integers(0, 24)),
        }
        if i % 11 == 0:
            row["customer__x"] = None
        if i % 13 == 0:
            row["customer__x"] = float("nan")
        if i % 7 == 0:
            row["customer__segment"] = ""
        if i % 17 == 0:
            row["context__channel"] = None
        rows.append(row)
        groups.append(f"C{i // 6}")  # six shown offers per customer
    return rows, labels, groups


@pytest.fixture(scope="module")
def data() -> tuple[list[dict[str, Any]], list[int], list[str]]:
    return make_rows(900, seed=3)


@pytest.fixture(scope="module", params=["gbt", "logreg"])
def trained(request: pytest.FixtureRequest, data: tuple[list[dict[str, Any]], list[int], list[str]]) -> TrainedModel:
    rows, labels, groups = data
    n_estimators = 30 if request.param == "gbt" else 100  # small and quick; export is the same code
    return train_propensity(
        rows, labels, features=FEATURES, categorical=CATEGORICAL, model=request.param, groups=groups,
        seed=1, n_estimators=n_estimators, progress=False,
    )


def _feeds(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """What the SDK passes: float32 [N,1] with NaN, string [N,1] with ""."""
    feeds: dict[str, np.ndarray] = {}
    for name in FEATURES:
        if name in CATEGORICAL:
            feeds[name] = np.array([[r[name] or ""] for r in rows], dtype=object).astype(str)
        else:
            feeds[name] = np.array([[math.nan if r[name] is None else r[name]] for r in rows], dtype=np.float32)
    return feeds


def test_onnx_matches_sklearn_on_fresh_rows_with_missing_and_unseen_values(trained: TrainedModel, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    diff = trained.export_onnx(path)
    assert diff <= 1e-4 and trained.parity_max_diff == diff
    rows, _, _ = make_rows(300, seed=99)
    rows[0]["customer__segment"] = "platinum"  # never seen in training
    rows[1]["context__channel"] = "kiosk"
    rows[2] = {k: (None if k not in CATEGORICAL else "") for k in FEATURES}  # everything missing
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, _feeds(rows))
    onnx_p = np.asarray(outputs[-1])
    assert onnx_p.shape == (300, 2)
    sk_p = trained.predict_proba(rows)
    max_diff = float(np.max(np.abs(onnx_p[:, 1] - sk_p)))
    print(f"{trained.model_kind}: holdout parity {diff:.2e}, fresh-row parity {max_diff:.2e}")
    assert max_diff <= 1e-4
    assert np.allclose(onnx_p.sum(axis=1), 1.0, atol=1e-5)


def test_onnx_graph_contract(trained: TrainedModel, tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    trained.export_onnx(path)
    model = onnx.load(str(path))
    inputs = {i.name: i for i in model.graph.input}
    assert list(inputs) == list(FEATURES)
    for name, value in inputs.items():
        tensor = value.type.tensor_type
        expected = onnx.TensorProto.STRING if name in CATEGORICAL else onnx.TensorProto.FLOAT
        assert tensor.elem_type == expected, name
        assert [d.dim_value for d in tensor.shape.dim][1] == 1
    assert model.graph.output[-1].name == "probabilities"
    assert all(node.op_type != "ZipMap" for node in model.graph.node)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["nbo.features"]) == list(FEATURES)
    assert json.loads(meta["nbo.categorical"]) == list(CATEGORICAL)
    assert meta["nbo.trained_at"].endswith("Z")
    metrics = json.loads(meta["nbo.metrics"])
    assert 0.5 < metrics["auc"] <= 1.0 and metrics["log_loss"] > 0
    assert {p.domain: p.version for p in model.opset_import}[""] == 17


def test_metrics_and_calibration_are_sane(trained: TrainedModel) -> None:
    m = trained.metrics
    assert m["auc"] > 0.65  # the signal is strong; a broken pipeline would be near 0.5
    assert abs(m["mean_predicted"] - m["base_rate"]) < 0.1  # calibrated on average
    assert sum(row["count"] for row in m["calibration"]) == m["n_holdout"]
    importances = trained.feature_importances(n_repeats=2)
    assert max(importances, key=lambda k: importances[k]) == "customer__x"


def test_split_is_leakage_free(trained: TrainedModel, data: tuple[list[dict[str, Any]], list[int], list[str]]) -> None:
    _, _, groups = data
    held = set(trained.holdout_index.tolist())
    held_customers = {groups[i] for i in held}
    train_customers = {groups[i] for i in range(len(groups)) if i not in held}
    assert held_customers and train_customers
    assert held_customers.isdisjoint(train_customers)
    assert trained.metrics["n_customers_holdout"] == len(held_customers)


def test_export_refuses_when_parity_exceeds_the_limit(trained: TrainedModel, tmp_path: Path) -> None:
    diff = trained.parity(trained.to_onnx().SerializeToString())
    assert 0 < diff <= 1e-4  # float32 vs float64 leaves a tiny, non-zero gap
    path = tmp_path / "refused.onnx"
    with pytest.raises(ModelError, match=r"differ by .* on the holdout") as info:
        trained.export_onnx(path, tolerance=diff / 2)
    assert f"{diff:.3g}" in str(info.value)
    assert not path.exists()


def test_inferred_categoricals_and_progress_lines(
    data: tuple[list[dict[str, Any]], list[int], list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    rows, labels, groups = data
    model = train_propensity(rows, labels, model="logreg", groups=groups)
    assert model.features == tuple(sorted(FEATURES))
    assert set(model.categorical) == set(CATEGORICAL)
    err = capsys.readouterr().err
    assert "split by customer" in err and "holdout AUC" in err


def test_without_groups_the_split_is_not_called_a_split_by_customer(
    data: tuple[list[dict[str, Any]], list[int], list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    rows, labels, _ = data
    train_propensity(rows[:300], labels[:300], model="logreg", features=FEATURES, categorical=CATEGORICAL)
    err = capsys.readouterr().err
    assert "split by row (no groups given" in err and "split by customer" not in err


# -- bad data -----------------------------------------------------------------------------------


def _small() -> tuple[list[dict[str, Any]], list[int], list[str]]:
    return make_rows(120, seed=5)


def test_empty_input() -> None:
    with pytest.raises(InputError, match="empty") as info:
        train_propensity([], [], progress=False)
    assert info.value.field == "rows"


def test_missing_column_is_named() -> None:
    rows, labels, groups = _small()
    del rows[17]["offer__discount_pct"]
    with pytest.raises(InputError, match="offer__discount_pct.*row 17") as info:
        train_propensity(rows, labels, features=FEATURES, groups=groups, progress=False)
    assert info.value.field == "offer__discount_pct"
    with pytest.raises(InputError, match="customer__nope") as info:
        train_propensity(rows, labels, features=(*FEATURES, "customer__nope"), groups=groups, progress=False)


def test_non_numeric_value_in_numeric_column_is_named() -> None:
    rows, labels, groups = _small()
    rows[5]["context__hour"] = "noon"
    with pytest.raises(InputError, match="context__hour.*'noon'") as info:
        train_propensity(rows, labels, features=FEATURES, categorical=CATEGORICAL, groups=groups, progress=False)
    assert info.value.field == "context__hour"


def test_single_class_is_refused() -> None:
    rows, _, groups = _small()
    with pytest.raises(InputError, match="only one class") as info:
        train_propensity(rows, [0] * len(rows), groups=groups, progress=False)
    assert info.value.field == "labels"


@pytest.mark.parametrize(
    ("labels_fix", "match", "field"),
    [
        (lambda ls: ls[:-1], "labels for", "labels"),
        (lambda ls: [*ls[:-1], 2], "expected 0/1", "labels"),
    ],
)
def test_bad_labels(labels_fix: Any, match: str, field: str) -> None:
    rows, labels, groups = _small()
    with pytest.raises(InputError, match=match) as info:
        train_propensity(rows, labels_fix(labels), groups=groups, progress=False)
    assert info.value.field == field


def test_column_without_any_value_is_named() -> None:
    rows, labels, groups = _small()
    for row in rows:
        row["customer__x"] = None
    with pytest.raises(InputError, match="customer__x.*no values") as info:
        train_propensity(rows, labels, features=FEATURES, categorical=CATEGORICAL, groups=groups, progress=False)
    assert info.value.field == "customer__x"


def test_other_bad_arguments() -> None:
    rows, labels, groups = _small()
    with pytest.raises(InputError, match="model must be"):
        train_propensity(rows, labels, model="forest", progress=False)
    with pytest.raises(InputError, match="groups"):
        train_propensity(rows, labels, groups=groups[:-1], progress=False)
    with pytest.raises(InputError, match="customer__zzz"):
        train_propensity(rows, labels, categorical=["customer__zzz"], progress=False)
    with pytest.raises(ModelError, match="at least 4 customers"):
        train_propensity(rows, labels, groups=["a", "b"] * (len(rows) // 2), progress=False)
