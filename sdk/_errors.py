"""The one exception tree of nbo-edge.

Every exception any package of nbo-edge defines derives from :class:`NboError` and is defined
here; subclasses are grouped by what the caller can do about it. The gateway maps them to gRPC
status codes by class (``gateway/_status.py``), the CLI to exit statuses by class::

    NboError
    ├── InputError                fix the arguments you passed (names the field)
    │   ├── PaymentDataError      card data or sensitive authentication data was offered
    │   ├── ParamError            a console page's query or form parameter is wrong (HTTP 400)
    │   └── EventConflictError    the hub holds these sequence numbers with other events (a reset
    │                             or restored device: `nbo recover`)                 ALREADY_EXISTS
    ├── NotFoundError             an id you referred to does not exist                     NOT_FOUND
    │   └── UnknownReferenceError an id passed to a call refers to nothing (names the field)
    ├── NotReadyError             no bundle is installed yet; install one first   FAILED_PRECONDITION
    ├── BundleError               the bundle is invalid, tampered, untrusted or too old
    │   ├── VersionNotNewerError  a published bundle is not newer than the one served
    │   │                                                                     FAILED_PRECONDITION
    │   └── PublishRefused        the gateway refused a bundle upload (its status in the message)
    ├── CatalogError              the authored catalog is invalid (names file, item, field)
    ├── RuleError                 a CEL rule does not compile or cannot be evaluated
    │   ├── RuleFailure           one evaluation failed on this data (internal: the engine turns
    │   │                         it into an exclusion; never reaches a caller)
    │   └── CelTypeError          a rule's types do not check at build time (internal: the build
    │                             reports its text, naming the rule)
    ├── ModelError                a model cannot be trained, exported or loaded
    ├── LedgerError               a loyalty operation is refused (e.g. redeem beyond balance)
    ├── StateError                the local state database is unusable (corrupt, locked, full)
    │   └── DamagedStateError     the state file is damaged or lost; `nbo recover` rebuilds it
    ├── SyncError                 the hub could not be reached or refused the exchange
    │   └── HubUnavailableError   the hub did not answer in time or is down: retry later
    ├── DeadlineExceededError     the call's deadline passed before its turn came    DEADLINE_EXCEEDED
    ├── ShuttingDownError         the service is stopping; retry (another replica)      UNAVAILABLE
    └── ConfigError               a configuration file or flag is invalid
        └── UsageError            a command line is wrong (the CLI exits 2)

No raw ``sqlite3``, ``onnxruntime`` or ``KeyError`` exception reaches a caller of the
public API: edges translate them into one of these.
"""

from __future__ import annotations

__all__ = [
    "BundleError",
    "CatalogError",
    "CelTypeError",
    "ConfigError",
    "DamagedStateError",
    "DeadlineExceededError",
    "EventConflictError",
    "HubUnavailableError",
    "InputError",
    "LedgerError",
    "ModelError",
    "NboError",
    "NotFoundError",
    "NotReadyError",
    "ParamError",
    "PaymentDataError",
    "PublishRefused",
    "RuleError",
    "RuleFailure",
    "ShuttingDownError",
    "StateError",
    "SyncError",
    "UnknownReferenceError",
    "UsageError",
    "VersionNotNewerError",
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


class ParamError(InputError):
    """A query or form parameter of a console page is missing, unknown or malformed (HTTP 400)."""


class EventConflictError(InputError):
    """A pushed ``(device_id, seq)`` is already held with a different ``event_id``."""


class NotFoundError(NboError, LookupError):
    """An id the caller referred to (decision, offer, ledger entry, bundle) does not exist."""


class UnknownReferenceError(NotFoundError):
    """An id passed to a call (a decision, a ledger entry) refers to nothing; names the field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotReadyError(NboError):
    """The client has no bundle installed, so it cannot decide yet."""


class BundleError(NboError):
    """A bundle failed verification or installation; the active bundle is unchanged."""


class VersionNotNewerError(BundleError):
    """The uploaded bundle's version is not newer than the one the hub serves for its name."""


class PublishRefused(BundleError):
    """The gateway refused the bundle (the message carries its status and reason)."""


class CatalogError(NboError):
    """An authored catalog is invalid; the message names the file, the item and the field."""


class RuleError(NboError):
    """A CEL rule or condition does not compile or cannot be evaluated."""


class RuleFailure(RuleError):
    """A rule or condition could not be evaluated on this data (internal; becomes an exclusion)."""


class CelTypeError(RuleError):
    """A type problem at ``pos`` in a CEL expression (internal: the bundle build reports its text)."""

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.pos = pos


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


class HubUnavailableError(SyncError):
    """The hub did not answer in time or is not running; events stay queued: retry later."""


class DeadlineExceededError(NboError):
    """The call's deadline passed (or its client left) before its turn came: nothing was done."""


class ShuttingDownError(NboError):
    """The service is stopping and takes no new work; retry (on another replica, or after restart)."""


class ConfigError(NboError):
    """A configuration file or command-line option is invalid."""


class UsageError(ConfigError):
    """The command line is wrong in a way only the command can tell (exit status 2)."""
