"""nbo-edge gateway: one gRPC server for app backends, terminals and the central team.

    from nbo.gateway import create_server, load_config

    server, port = create_server(load_config("gateway.toml"), state_dir="state", listen="127.0.0.1:0")
    server.start()
    ...
    server.stop(grace=5).wait()

``serve()`` runs N such servers, each in a process of its own, on one port under a supervisor
(what ``nbo serve --processes N`` does), until SIGTERM/SIGINT; every process then drains its
in-flight calls.
Names are imported lazily so that reading a configuration does not load grpc.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names for the type checker (tests/test_typecheck.py keeps them equal)
    from ._auth import Principal as Principal
    from ._config import GatewayConfig as GatewayConfig
    from ._config import TokenSpec as TokenSpec
    from ._config import load_config as load_config
    from ._config import parse_config as parse_config
    from ._engine_host import EngineHost as EngineHost
    from ._experiments import ExperimentReport as ExperimentReport
    from ._experiments import experiment_reports as experiment_reports
    from ._experiments import format_reports as format_reports
    from ._export import ExportReport as ExportReport
    from ._export import export_log as export_log
    from ._hub import BundleRecord as BundleRecord
    from ._hub import HubStore as HubStore
    from ._hub import IngestResult as IngestResult
    from ._hub_state import HubStateStore as HubStateStore
    from ._metrics import GatewayMetrics as GatewayMetrics
    from ._rewards import AttributionReport as AttributionReport
    from ._rewards import attribute_rewards as attribute_rewards
    from ._server import GatewayServer as GatewayServer
    from ._server import create_server as create_server
    from ._supervisor import serve as serve

# public name -> private module that defines it
_EXPORTS: dict[str, str] = {
    "GatewayConfig": "_config",
    "TokenSpec": "_config",
    "load_config": "_config",
    "parse_config": "_config",
    "HubStore": "_hub",
    "BundleRecord": "_hub",
    "IngestResult": "_hub",
    "attribute_rewards": "_rewards",
    "export_log": "_export",
    "ExperimentReport": "_experiments",
    "experiment_reports": "_experiments",
    "format_reports": "_experiments",
    "ExportReport": "_export",
    "AttributionReport": "_rewards",
    "create_server": "_server",
    "serve": "_supervisor",
    "GatewayServer": "_server",
    "Principal": "_auth",
    "EngineHost": "_engine_host",
    "HubStateStore": "_hub_state",
    "GatewayMetrics": "_metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nbo.gateway' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return __all__
