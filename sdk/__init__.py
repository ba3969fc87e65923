"""nbo-edge embedded SDK: offline, explainable next-best-offer decisions.

    from nbo.sdk import Client

    with Client.open("state", device_id="pos-1", trusted_keys=[open("signing.pub", "rb").read()]) as client:
        client.install_bundle("bundle.zip")
        decision = client.decide("C123", channel="pos")
        for offer in decision.offers:
            print(offer.offer_id, offer.score)
"""

from __future__ import annotations

from ._client import Client, ClientConfig
from ._clock import Clock, ManualClock, SystemClock
from ._errors import (
    BundleError,
    CatalogError,
    ConfigError,
    DamagedStateError,
    InputError,
    LedgerError,
    ModelError,
    NboError,
    NotFoundError,
    NotReadyError,
    PaymentDataError,
    RuleError,
    StateError,
    SyncError,
)
from ._recover import recover_state
from ._types import (
    BundleInfo,
    Decision,
    Exclusion,
    LedgerEntry,
    PaymentRecord,
    RankedOffer,
    RecoveryReport,
    SyncReport,
)

__version__ = "0.1.0"

__all__ = [
    "BundleError",
    "BundleInfo",
    "CatalogError",
    "Client",
    "ClientConfig",
    "Clock",
    "ConfigError",
    "DamagedStateError",
    "Decision",
    "Exclusion",
    "InputError",
    "LedgerEntry",
    "LedgerError",
    "ManualClock",
    "ModelError",
    "NboError",
    "NotFoundError",
    "NotReadyError",
    "PaymentDataError",
    "PaymentRecord",
    "RankedOffer",
    "RecoveryReport",
    "RuleError",
    "StateError",
    "SyncError",
    "SyncReport",
    "SystemClock",
    "__version__",
    "recover_state",
]
