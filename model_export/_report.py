"""The evaluation report: one self-contained HTML file from a model directory.

``write_report(model_dir)`` reads ``metrics.json`` and ``holdout.csv`` (written by
``nbo train``) and writes ``report.html``: headline metrics (AUC, log loss, Brier, parity),
calibration table and reliability plot, cumulative gain and lift by decile, per-offer
acceptance (observed vs predicted), permutation feature importances and — when the holdout
carries the demo world's ``true_propensity`` — how close the learned propensities are to the
ground truth. Plots are PNGs from matplotlib's Agg backend, embedded as base64, so the file
opens anywhere with no other files.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from nbo.sdk import InputError

__all__ = ["gain_curve", "lift_by_decile", "truth_comparison", "write_report"]


def _load(model_dir: Path) -> tuple[dict[str, Any], list[dict[str, str]]]:
    metrics_path, holdout_path = model_dir / "metrics.json", model_dir / "holdout.csv"
    for path in (metrics_path, holdout_path):
        if not path.is_file():
            raise InputError(f"{path}: not found (is {model_dir} a model directory written by `nbo train`?)",
                             field=path.name)
    try:
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{metrics_path}: not valid JSON: {exc}", field="metrics.json") from None
    with holdout_path.open(newline="", encoding="utf-8") as fh:
        holdout = list(csv.DictReader(fh))
    if not holdout or not {"label", "propensity"} <= set(holdout[0]):
        raise InputError(f"{holdout_path}: needs rows with label and propensity columns", field="holdout.csv")
    return metrics, holdout


def gain_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative gain: share of rows targeted (by descending P) vs share of acceptances captured."""
    order = np.argsort(-p, kind="mergesort")
    captured = np.cumsum(y[order]) / max(float(y.sum()), 1.0)
    share = np.arange(1, len(y) + 1) / len(y)
    return np.concatenate([[0.0], share]), np.concatenate([[0.0], captured])


def lift_by_decile(y: np.ndarray, p: np.ndarray) -> list[dict[str, float]]:
    """Acceptance rate and lift over the base rate in each decile of descending propensity."""
    order = np.argsort(-p, kind="mergesort")
    base = float(y.mean()) if len(y) else 0.0
    table = []
    for d, chunk in enumerate(np.array_split(order, 10)):
        if len(chunk) == 0:
            continue
        rate = float(y[chunk].mean())
        table.append({"decile": d + 1, "count": len(chunk), "mean_predicted": float(p[chunk].mean()),
                      "acceptance_rate": rate, "lift": rate / base if base > 0 else math.nan})
    return table


def truth_comparison(y: np.ndarray, p: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """How close learned propensities ``p`` are to the true ones (demo data only)."""
    from sklearn.metrics import roc_auc_score

    return {
        "mean_abs_error": float(np.mean(np.abs(p - truth))),
        "correlation": float(np.corrcoef(p, truth)[0, 1]) if np.std(p) > 0 and np.std(truth) > 0 else math.nan,
        "auc_of_ground_truth": float(roc_auc_score(y, truth)) if len(set(y.tolist())) == 2 else math.nan,
        "mean_true": float(truth.mean()),
    }


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(data: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def write_report(model_dir: str | Path, *, out: str | Path | None = None) -> Path:
    """Write ``report.html`` for the model directory ``model_dir`` and return its path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a build server; set before pyplot is imported
    import matplotlib.pyplot as plt

    root = Path(model_dir)
    metrics, holdout = _load(root)
    y = np.array([int(r["label"]) for r in holdout], dtype=np.int64)
    p = np.array([float(r["propensity"]) for r in holdout], dtype=np.float64)
    sections: list[str] = []

    headline: list[list[Any]] = [
        ["model", metrics.get("model")],
        ["trained at", metrics.get("trained_at")],
        ["training rows / customers", f"{metrics.get('n_train')} / {metrics.get('n_customers_train')}"],
        ["holdout rows / customers", f"{metrics.get('n_holdout')} / {metrics.get('n_customers_holdout')}"],
        ["ROC AUC (holdout)", metrics.get("auc")],
        ["log loss (holdout)", metrics.get("log_loss")],
        ["Brier score (holdout)", metrics.get("brier")],
        ["base acceptance rate", metrics.get("base_rate")],
        ["mean predicted propensity", metrics.get("mean_predicted")],
        ["ONNX vs scikit-learn max |Δp|", f"{metrics['parity_max_abs_diff']:.2e}"
         if isinstance(metrics.get("parity_max_abs_diff"), (int, float)) else None],
    ]
    sections.append("<h2>Summary</h2>" + _table(["", "value"], headline))

    calibration = metrics.get("calibration") or []
    fig, ax = plt.subplots(figsize=(5, 4.2))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    if calibration:
        ax.plot([c["mean_predicted"] for c in calibration], [c["observed_rate"] for c in calibration],
                marker="o", label="model")
    ax.set_xlabel("mean predicted propensity")
    ax.set_ylabel("observed acceptance rate")
    ax.set_title("Reliability (holdout)")
    ax.legend()
    sections.append(
        "<h2>Calibration</h2>"
        + _table(["bin", "count", "mean predicted", "observed rate"],
                 [[f"{c['bin_low']:.1f}–{c['bin_high']:.1f}", c["count"], c["mean_predicted"], c["observed_rate"]]
                  for c in calibration])
        + _img(_png(fig), "reliability plot")
    )

    share, captured = gain_curve(y, p)
    lift = lift_by_decile(y, p)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    ax1.plot(share, captured, label="model")
    ax1.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    ax1.set_xlabel("share of offers shown (highest propensity first)")
    ax1.set_ylabel("share of acceptances captured")
    ax1.set_title("Cumulative gain")
    ax1.legend()
    ax2.bar([row["decile"] for row in lift], [row["lift"] for row in lift])
    ax2.axhline(1.0, color="grey", linestyle="--")
    ax2.set_xlabel("decile of propensity")
    ax2.set_ylabel("lift over base rate")
    ax2.set_title("Lift by decile")
    sections.append(
        "<h2>Gain and lift</h2>" + _img(_png(fig), "gain and lift charts")
        + _table(["decile", "count", "mean predicted", "acceptance rate", "lift"],
                 [[r["decile"], r["count"], r["mean_predicted"], r["acceptance_rate"], r["lift"]] for r in lift])
    )

    per_offer: dict[str, list[tuple[int, float]]] = {}
    for r, label, prob in zip(holdout, y.tolist(), p.tolist(), strict=True):
        per_offer.setdefault(r.get("offer_id", "?"), []).append((label, prob))
    summary = [
        (oid, len(v), float(np.mean([a for a, _ in v])), float(np.mean([b for _, b in v])))
        for oid, v in per_offer.items()
    ]
    summary.sort(key=lambda row: (-row[2], row[0]))
    offer_rows: list[list[Any]] = [list(row) for row in summary]
    sections.append("<h2>Acceptance per offer (holdout)</h2>"
                    + _table(["offer", "shown", "accepted rate", "mean predicted"], offer_rows))

    importances = metrics.get("feature_importances") or {}
    if importances:
        names = list(importances)[::-1]
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(names) + 1))
        ax.barh(names, [importances[n] for n in names])
        ax.set_xlabel("drop in ROC AUC when the feature is shuffled")
        ax.set_title("Permutation feature importance (holdout)")
        sections.append("<h2>Feature importance</h2>" + _img(_png(fig), "feature importances")
                        + _table(["feature", "importance"], [[k, v] for k, v in importances.items()]))

    truth_raw = [r.get("true_propensity", "") for r in holdout]
    if truth_raw and all(t not in ("", None) for t in truth_raw):
        truth = np.array([float(t) for t in truth_raw])
        comparison = truth_comparison(y, p, truth)
        fig, ax = plt.subplots(figsize=(5, 4.2))
        ax.scatter(truth, p, s=4, alpha=0.3)
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
        ax.set_xlabel("ground-truth propensity")
        ax.set_ylabel("learned propensity")
        ax.set_title("Learned vs ground truth (holdout)")
        sections.append(
            "<h2>Learned vs ground truth</h2><p>The demo data were drawn from a known acceptance model "
            "(docs/training.md); the best any model can reach is the AUC of the true probabilities.</p>"
            + _table(["", "value"], [
                ["mean |learned − true|", comparison["mean_abs_error"]],
                ["correlation", comparison["correlation"]],
                ["ROC AUC of the true probabilities (ceiling)", comparison["auc_of_ground_truth"]],
                ["ROC AUC of the model", metrics.get("auc")],
                ["mean true propensity", comparison["mean_true"]],
            ])
            + _img(_png(fig), "learned vs ground truth scatter")
        )

    title = f"Propensity model report — {html.escape(str(metrics.get('model_file', 'model')))}"
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}img{max-width:100%}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{style}</style></head><body><h1>{title}</h1>" + "".join(sections) + "</body></html>\n")
    target = Path(out) if out is not None else root / "report.html"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(page, encoding="utf-8")
    except OSError as exc:  # a caller gets an NboError naming the file, never a raw OSError
        raise InputError(f"cannot write the report {target}: {exc.strerror or exc}", field="out") from exc
    return target
