"""The one exception tree of nbo-edge.

Every error a caller can see derives from :class:`NboError`; subclasses are grouped by
what the caller can do about it::

    NboError
    ├── InputError            fix the arguments you passed (names the field)
    │   └── PaymentDataError  card data or sensitive authentication data was offered
    ├── NotFoundError         an id you referred to does not exist
    ├── NotReadyError         no bundle is installed yet; install one first
    ├── BundleError           the bundle is invalid, tampered, untrusted or too old
    ├── CatalogError          the authored catalog is invalid (names file, item, field)
    ├── RuleError             a CEL rule does not compile or cannot be evaluated
    ├── ModelError            a model cannot be trained, exported or loaded
    ├── LedgerError           a loyalty operation is refused (e.g. redeem beyond balance)
    ├── StateError            the local state database is unusable (corrupt, locked, full)
    │   └── DamagedStateError the state file is damaged or lost; `nbo recover` rebuilds it
    ├── SyncError             the hub could not be reached or refused the exchange
    └── ConfigError           a configuration file or flag is invalid

No raw ``sqlite3``, ``onnxruntime`` or ``KeyError`` exception reaches a caller of the
public API: edges translate them into one of these.
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "CatalogError",
    "ConfigError",
    "DamagedStateError",
    "InputError",
    "LedgerError",
    "ModelError",
    "NboError",
    "NotFoundError",
    "NotReadyError",
    "PaymentDataError",
    "RuleError",
    "StateError",
    "SyncError",
]


class NboError(Exception):
    """Root of every error nbo-edge raises on purpose."""


class InputError(NboError, ValueError):
    """An argument is invalid; the message names the field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PaymentDataError(InputError):
    """A card number or sensitive authentication data was offered; it was not stored."""


class NotFoundError(NboError, LookupError):
    """An id the caller referred to (decision, offer, ledger entry, bundle) does not exist."""


class NotReadyError(NboError):
    """The client has no bundle installed, so it cannot decide yet."""


class BundleError(NboError):
    """A bundle failed verification or installation; the active bundle is unchanged."""


class CatalogError(NboError):
    """An authored catalog is invalid; the message names the file, the item and the field."""


class RuleError(NboError):
    """A CEL rule or condition does not compile or cannot be evaluated."""


class ModelError(NboError):
    """A model cannot be trained, exported, or loaded."""


class LedgerError(NboError):
    """A loyalty-ledger operation was refused (for example a redeem beyond the balance)."""


class StateError(NboError):
    """The local state database is unusable (corrupt, locked, out of space)."""


class DamagedStateError(StateError):
    """The device's state file is damaged, emptied or older than the hub knows: run ``nbo recover``."""


class SyncError(NboError):
    """Synchronisation with the hub failed; events stay queued and will be retried."""


class ConfigError(NboError):
    """A configuration file or command-line option is invalid."""
