"""The central team's toolkit: catalog compile, bundle build and signing, training, export.

Names are imported lazily so that building a bundle does not load scikit-learn, and the
training extras (``pip install nbo-edge[train]``) are needed only for training and reports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names for the type checker (tests/test_typecheck.py keeps them equal)
    from ._bundle_build import build_bundle as build_bundle
    from ._bundle_build import generate_keys as generate_keys
    from ._catalog import compile_catalog as compile_catalog
    from ._catalog import load_catalog_file as load_catalog_file
    from ._catalog import validate_catalog as validate_catalog
    from ._demo import DemoResult as DemoResult
    from ._demo import run_demo as run_demo
    from ._demo_data import generate_demo_data as generate_demo_data
    from ._evaluate import Estimate as Estimate
    from ._evaluate import Evaluation as Evaluation
    from ._evaluate import evaluate_bundle as evaluate_bundle
    from ._evaluate import evaluate_policy as evaluate_policy
    from ._evaluate import format_evaluation as format_evaluation
    from ._experiments import promote_arm as promote_arm
    from ._features import MeasureConfig as MeasureConfig
    from ._features import derive_features as derive_features
    from ._log_data import train_from_logs as train_from_logs
    from ._publish import PublishRefused as PublishRefused
    from ._publish import PublishResult as PublishResult
    from ._publish import publish_bundle as publish_bundle
    from ._report import write_report as write_report
    from ._table import format_table as format_table
    from ._train import TrainedModel as TrainedModel
    from ._train import train_propensity as train_propensity
    from ._train_data import load_training_data as load_training_data
    from ._train_data import train_from_directory as train_from_directory

# public name -> private module that defines it
_EXPORTS: dict[str, str] = {
    # catalog and bundles (core install)
    "validate_catalog": "_catalog",
    "promote_arm": "_experiments",
    "compile_catalog": "_catalog",
    "load_catalog_file": "_catalog",
    "build_bundle": "_bundle_build",
    "generate_keys": "_bundle_build",
    "publish_bundle": "_publish",
    "PublishResult": "_publish",
    "PublishRefused": "_publish",
    # customer measures (shared with the SDK)
    "derive_features": "_features",
    # training, export, reports, sample data (train extras)
    "train_propensity": "_train",
    "TrainedModel": "_train",
    "MeasureConfig": "_features",
    "train_from_directory": "_train_data",
    "train_from_logs": "_log_data",
    "load_training_data": "_train_data",
    "write_report": "_report",
    "generate_demo_data": "_demo_data",
    "run_demo": "_demo",
    "DemoResult": "_demo",
    # off-policy evaluation (numpy; evaluate_bundle also needs pyarrow, in the train extras)
    "evaluate_policy": "_evaluate",
    "evaluate_bundle": "_evaluate",
    "format_evaluation": "_evaluate",
    "Estimate": "_evaluate",
    "Evaluation": "_evaluate",
    # plain-text tables for terminals (the CLI and the demo)
    "format_table": "_table",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nbo.model_export' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return __all__
