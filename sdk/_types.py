"""Public value types returned by the SDK. Frozen, plain data, safe to share across threads."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

__all__ = [
    "BundleInfo",
    "Decision",
    "Exclusion",
    "LedgerEntry",
    "PaymentRecord",
    "RecoveryReport",
    "RankedOffer",
    "SyncReport",
]


@dataclass(frozen=True, slots=True)
class BundleInfo:
    """The identity of an installed bundle."""

    name: str
    version: int
    installed_at: float
    """Epoch seconds (UTC) when this device switched to the bundle."""
    offer_count: int
    created_at: str = ""
    expires_at: str | None = None
    models: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RankedOffer:
    """One offer in a decision, with every part of its score."""

    offer_id: str
    name: str
    category: str
    propensity: float
    value: float
    strategy: str
    weight: float
    lever: float
    score: float
    mandatory: bool = False
    fallback: bool = False
    selection_probability: float = 1.0
    """Probability that the policy shows this offer at this rank (1.0 when deterministic)."""


@dataclass(frozen=True, slots=True)
class Exclusion:
    """Why an offer was left out: the rule or contact policy that said no."""

    offer_id: str
    rule_id: str
    kind: str
    """``business``, ``communication`` or ``hygiene``."""
    description: str


@dataclass(frozen=True, slots=True)
class Decision:
    """The ranked answer to "what should we offer this customer now?"."""

    decision_id: str
    customer_id: str
    channel: str
    bundle_name: str
    bundle_version: int
    offers: list[RankedOffer]
    excluded: list[Exclusion] = field(default_factory=list)
    strategy: str = ""
    created_at: float = 0.0
    experiment_id: str = ""
    """The bundle experiment this customer is in ("" when in none, docs/experiments.md)."""
    arm: str = ""
    """The experiment's arm that made this decision ("" when in no experiment)."""
    hash_version: int = 0
    """The version of the assignment hash that chose the arm (0 when in no experiment)."""


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One append-only loyalty-ledger entry."""

    entry_id: str
    customer_id: str
    kind: str
    """``award``, ``redeem``, ``reverse`` or ``expire``."""
    points: int
    """Signed: awards positive, redemptions and expiries negative."""
    reason: str
    created_at: float
    idempotency_key: str
    expires_at: float | None = None
    reverses: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    """A payment-linked record: a token, never a card number."""

    payment_id: str
    customer_id: str
    payment_token: str
    amount: Decimal
    currency: str
    created_at: float
    idempotency_key: str
    store_id: str | None = None
    decision_id: str | None = None
    offer_id: str | None = None


@dataclass(frozen=True, slots=True)
class SyncReport:
    """What one sync with the hub achieved."""

    pushed: int = 0
    acked_through: int = 0
    dead_lettered: int = 0
    balances_updated: int = 0
    bundle_installed: BundleInfo | None = None
    errors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What :func:`nbo.sdk.recover_state` rebuilt from the hub (docs/operations.md)."""

    device_id: str
    acked_through: int
    """The hub's acknowledged seq for this device; new events continue after ``max_seq``."""
    max_seq: int
    events: int
    """Events restored into the outbox (acknowledged) and into the tables they describe."""
    dead_lettered: int
    """Events the hub had rejected, restored into the dead-letter table with its reason."""
    balances: int
    """Customers whose authoritative points balance was restored."""
    moved_aside: str | None
    """Where the replaced state files were moved (kept for inspection), or None if there were none."""
    carried_over: int = 0
    """Events of the replaced state the hub never received, queued again after ``max_seq`` (when
    the replaced file was still readable: a new start under the same id, an older copy)."""
    not_restored: tuple[str, ...] = ()
    """Held events whose rows could not be rebuilt (each ``seq N (type): why``); normally empty."""
