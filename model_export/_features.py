"""Customer measures for training: the very code the SDK runs (``nbo.sdk._measures``).

Re-exported here so that ``nbo.model_export.derive_features`` is the documented training
entry point while one module defines the measures (training and serving cannot drift).
"""

from __future__ import annotations

from nbo.sdk.core import (
    LIFECYCLE_STAGES,
    LOYALTY_STAGES,
    MeasureConfig,
    derive_features,
    new_customer_profile,
    refresh_measures,
    update_measures,
)

__all__ = [
    "LIFECYCLE_STAGES",
    "LOYALTY_STAGES",
    "MeasureConfig",
    "derive_features",
    "new_customer_profile",
    "refresh_measures",
    "update_measures",
]
