"""`nbo demo-data`, `nbo train`, `nbo report`: the central team's training commands.

Thin: each parses its flags and calls one function of ``nbo.model_export`` (imported only
when the command runs, so the embedded CLI never loads scikit-learn).
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from nbo.sdk import ConfigError

from ._common import add_command, int_at_least


def _train_function(name: str) -> Any:
    """``nbo.model_export.<name>``; its module loads scikit-learn, so only when a command runs."""
    try:
        return getattr(importlib.import_module("nbo.model_export"), name)
    except ImportError as exc:  # the [train] extras are optional on a terminal
        raise ConfigError(
            f"this command needs the training extras (pip install 'nbo-edge[train]'): {exc}"
        ) from None


def _demo_data(args: argparse.Namespace) -> int:
    data = _train_function("generate_demo_data")(args.out, customers=args.customers, seed=args.seed)
    print(f"wrote {data.directory}: {data.n_customers} customers, {data.n_transactions} transactions, "
          f"{data.n_history} shown offers, catalog.yaml (snapshot {data.as_of:%Y-%m-%d %H:%M:%S} UTC)")
    return 0


def _train(args: argparse.Namespace) -> int:
    features = [f.strip() for f in args.features.split(",") if f.strip()] if args.features else None
    source, function = (args.logs, "train_from_logs") if args.logs else (args.data, "train_from_directory")
    result = _train_function(function)(
        source, args.out, model=args.model, seed=args.seed, features=features, progress=not args.quiet
    )
    m = result.metrics
    print(f"model    {result.model_path}")
    print(f"metrics  {result.metrics_path}  (holdout AUC {m['auc']:.3f}, log loss {m['log_loss']:.4f}, "
          f"ONNX parity {m['parity_max_abs_diff']:.1e})")
    print(f"report   {result.report_path}")
    return 0


def _report(args: argparse.Namespace) -> int:
    path = _train_function("write_report")(args.model_dir)
    print(f"report   {path}")
    return 0


def register(sub: Any) -> None:
    demo = add_command(
        sub, "demo-data", help="write realistic sample customers, transactions, catalog and offer history",
        description="Write customers.csv, transactions.csv, catalog.yaml and history.csv (deterministic per seed).",
        examples=["nbo demo-data --out data", "nbo demo-data --out data --customers 200 --seed 1"],
    )
    demo.add_argument("--out", required=True, metavar="DIR", help="directory to write into (created if missing)")
    demo.add_argument("--customers", type=int_at_least(10), default=2000, metavar="N",
                      help="number of customers, at least 10 (default 2000)")
    demo.add_argument("--seed", type=int, default=0, metavar="N", help="random seed (default 0)")
    demo.set_defaults(func=_demo_data)

    train = add_command(
        sub, "train", help="train a calibrated propensity model and export it to ONNX",
        description="Train on a demo-data style directory (--data) or on a field log written by `nbo export` "
                    "(--logs: exactly the logged inputs); write propensity.onnx, metrics.json, "
                    "holdout.csv and report.html into --out (checked writable before training starts).",
        examples=["nbo train --data data --out model", "nbo train --data data --out model --model logreg --quiet",
                  "nbo train --logs log --out model-v2"],
    )
    source = train.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="DIR",
                        help="directory with customers.csv, transactions.csv, catalog.yaml, history.csv")
    source.add_argument("--logs", metavar="DIR", help="a field log written by `nbo export` (docs/learning.md)")
    train.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    train.add_argument("--model", choices=("gbt", "logreg"), default="gbt", metavar="gbt|logreg",
                       help="model kind (default gbt)")
    train.add_argument("--seed", type=int, default=0, metavar="N",
                       help="seed of the customer split and the model (default 0)")
    train.add_argument("--features", metavar="LIST", help="comma-separated model inputs (customer__X, offer__X, "
                                                          "context__X); default: the 20 documented in docs/training.md")
    train.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    train.set_defaults(func=_train)

    report = add_command(
        sub, "report", help="regenerate the evaluation report of a model directory",
        description="Rewrite MODEL_DIR/report.html from MODEL_DIR/metrics.json and holdout.csv.",
        examples=["nbo report model"],
    )
    report.add_argument("model_dir", metavar="MODEL_DIR", help="directory written by `nbo train`")
    report.set_defaults(func=_report)
