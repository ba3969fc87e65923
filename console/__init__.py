"""nbo-edge console: the central team's web view of the field, the offers, the customers and the models.

    from nbo.console import Console, open_console, serve

    console = open_console("sqlite:///var/lib/nbo/hub.sqlite", config="gateway.toml")
    console.refresh()                      # fold the hub's event log into the rollups
    serve(console, "127.0.0.1:8080")       # until SIGINT/SIGTERM

The hub is read through a read-only connection; the rollups live in the console's own file.
Only ``analyst`` tokens of the gateway configuration log in (docs/console.md).
"""

from __future__ import annotations

from ._app import Console, ParamError
from ._queries import (
    CustomerReport,
    FieldReport,
    ModelReport,
    OfferReport,
    Period,
    Table,
    binned_auc,
)
from ._serve import open_console, serve

__all__ = [
    "Console",
    "CustomerReport",
    "FieldReport",
    "ModelReport",
    "OfferReport",
    "ParamError",
    "Period",
    "Table",
    "binned_auc",
    "open_console",
    "serve",
]
