"""`nbo train` end to end on small demo data, the HTML report, and the model in a bundle."""

from __future__ import annotations

import base64
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from nbo.cli import main as cli
from nbo.model_export import build_bundle, generate_demo_data, generate_keys, load_training_data, write_report
from nbo.model_export._report import gain_curve, lift_by_decile
from nbo.model_export._train_data import DEFAULT_FEATURES
from nbo.sdk import InputError


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("train")
    data, out = root / "data", root / "model"
    generate_demo_data(data, customers=250, seed=2)
    assert cli(["train", "--data", str(data), "--out", str(out), "--model", "logreg", "--quiet"]) == 0
    return data, out


def test_train_writes_model_metrics_holdout_and_report(trained_dir: tuple[Path, Path]) -> None:
    data, out = trained_dir
    for name in ("propensity.onnx", "metrics.json", "holdout.csv", "report.html"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["features"] == list(DEFAULT_FEATURES)
    assert 0.5 < metrics["auc"] <= 1 and metrics["parity_max_abs_diff"] <= 1e-4
    assert set(metrics["feature_importances"]) == set(DEFAULT_FEATURES)
    truth = metrics["ground_truth"]
    assert truth["correlation"] > 0.5 and truth["mean_abs_error"] < 0.15
    model = onnx.load(str(out / "propensity.onnx"))
    assert [i.name for i in model.graph.input] == list(DEFAULT_FEATURES)
    assert all(name.split("__")[0] in ("customer", "offer", "context") for name in DEFAULT_FEATURES)


def test_onnx_model_scores_the_training_rows_like_sklearn_did(trained_dir: tuple[Path, Path]) -> None:
    data, out = trained_dir
    training = load_training_data(data)
    holdout = [line.split(",") for line in (out / "holdout.csv").read_text().splitlines()[1:]]
    session = ort.InferenceSession(str(out / "propensity.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.type for i in session.get_inputs()}
    # rebuild the first holdout rows as the SDK would feed them and compare with the stored P
    picked = [(int(h[0]) - 1, float(h[5])) for h in holdout[:40]]  # row = history.csv row number
    assert all(training.customer_ids[i] == h[1] for (i, _), h in zip(picked, holdout, strict=False))
    feeds = {}
    for name, kind in inputs.items():
        values = [training.rows[i][name] for i, _ in picked]
        if kind == "tensor(string)":
            feeds[name] = np.array([["" if v is None else str(v)] for v in values], dtype=object).astype(str)
        else:
            feeds[name] = np.array([[np.nan if v is None else float(v)] for v in values], dtype=np.float32)
    p = session.run(None, feeds)[-1][:, 1]
    assert np.max(np.abs(p - np.array([q for _, q in picked]))) < 1e-5  # holdout.csv keeps 6 decimals


def test_report_is_self_contained_html_with_every_section(trained_dir: tuple[Path, Path]) -> None:
    _, out = trained_dir
    page = (out / "report.html").read_text()
    for heading in ("Summary", "Calibration", "Gain and lift", "Acceptance per offer", "Feature importance",
                    "Learned vs ground truth"):
        assert f"<h2>{heading}" in page, heading
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 4
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert "http://" not in page and "https://" not in page  # nothing fetched from elsewhere
    # the figures themselves, not only the headings: headline metrics from metrics.json and
    # one table row per calibration bin, lift decile and shown offer
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"<td>ROC AUC (holdout)</td><td>{metrics['auc']:.4f}</td>" in page
    assert f"<td>log loss (holdout)</td><td>{metrics['log_loss']:.4f}</td>" in page
    sections = {s.split("</h2>", 1)[0]: s for s in page.split("<h2>")[1:]}
    assert sections["Calibration"].count("<tr><td>") == len(metrics["calibration"]) > 0
    assert sections["Gain and lift"].count("<tr><td>") == 10
    offers = {line.split(",")[2] for line in (out / "holdout.csv").read_text().splitlines()[1:]}
    assert sections["Acceptance per offer (holdout)"].count("<tr><td>") == len(offers) > 1
    assert sections["Learned vs ground truth"].count("<img ") == 1


def test_nbo_report_regenerates(trained_dir: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, out = trained_dir
    (out / "report.html").unlink()
    assert cli(["report", str(out)]) == 0
    assert "report.html" in capsys.readouterr().out
    assert (out / "report.html").stat().st_size > 10_000


def test_report_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "metrics.json" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(InputError):
        write_report(tmp_path)


def test_train_on_a_bad_directory_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "customers.csv" in err


def test_gain_and_lift_on_a_known_case() -> None:
    y = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    p = np.linspace(1, 0, 10)
    share, captured = gain_curve(y, p)
    assert captured[1] == 0.5 and captured[3] == 1.0 and captured[-1] == 1.0 and share[-1] == 1.0
    lift = lift_by_decile(y, p)
    assert lift[0]["lift"] == pytest.approx(5.0) and lift[1]["lift"] == 0.0


def test_exported_model_drops_into_a_bundle(trained_dir: tuple[Path, Path], tmp_path: Path) -> None:
    data, out = trained_dir
    keys = generate_keys(tmp_path / "keys")
    built = build_bundle(
        catalog=data / "catalog.yaml", models={"propensity": out / "propensity.onnx"}, name="demo-retail",
        version=1, key=keys.private_key,
        out=tmp_path / "bundle.zip",
    )
    with zipfile.ZipFile(tmp_path / "bundle.zip") as zf:
        manifest = json.loads(zf.read("manifest.json"))
    (model,) = manifest["models"]
    assert model["id"] == "propensity"
    assert [i["name"] for i in model["inputs"]] == list(DEFAULT_FEATURES)
    assert built is not None


def test_train_with_chosen_features(trained_dir: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = trained_dir
    out = tmp_path / "m"
    features = "customer__recency_days,customer__segment,offer__category,offer__discount_pct,context__channel"
    assert cli(["train", "--data", str(data), "--out", str(out), "--model", "logreg", "--quiet",
                "--features", features]) == 0
    model = onnx.load(str(out / "propensity.onnx"))
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    assert list(types) == features.split(",")
    assert types["customer__segment"] == onnx.TensorProto.STRING
    assert types["customer__recency_days"] == onnx.TensorProto.FLOAT


def test_train_rejects_a_badly_named_feature(trained_dir: tuple[Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = trained_dir
    assert cli(["train", "--data", str(data), "--out", str(tmp_path / "m"), "--features", "recency"]) == 1
    assert "'recency' is not named customer__X" in capsys.readouterr().err


def test_own_data_without_ground_truth(trained_dir: tuple[Path, Path], tmp_path: Path) -> None:
    data, _ = trained_dir
    own = tmp_path / "own"
    own.mkdir()
    for name in ("customers.csv", "transactions.csv", "catalog.yaml"):
        (own / name).write_bytes((data / name).read_bytes())
    lines = (data / "history.csv").read_text().splitlines()
    assert lines[0].endswith(",true_propensity")
    (own / "history.csv").write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    assert cli(["train", "--data", str(own), "--out", str(tmp_path / "m"), "--model", "logreg", "--quiet"]) == 0
    page = (tmp_path / "m" / "report.html").read_text()
    assert "<h2>Calibration" in page and "ground truth" not in page
    assert "ground_truth" not in json.loads((tmp_path / "m" / "metrics.json").read_text())
