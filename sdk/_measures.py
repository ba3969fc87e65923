"""Customer measures (RFM, CLV, lifecycle and loyalty stage) — shared by training and the SDK.

PLACEHOLDER: the training work (issue 3) implements derive_features here; the new-customer
profile below is already the contract the decision engine relies on.
"""

from __future__ import annotations

from typing import Any

__all__ = ["new_customer_profile"]


def new_customer_profile() -> dict[str, Any]:
    """The profile of a customer the device has never seen: no purchases, stage ``new``."""
    return {
        "recency_days": None,
        "frequency": 0,
        "monetary": 0.0,
        "avg_purchase": 0.0,
        "tenure_days": 0.0,
        "purchases_per_year": 0.0,
        "clv": 0.0,
        "lifecycle_stage": "new",
        "loyalty_stage": "know_me",
        "points_balance": 0,
    }
