"""The SDK's internal front door: what ``nbo.gateway``, ``nbo.model_export`` and ``nbo.cli`` use.

``nbo.sdk`` is the API for applications (``Client``, the result types, the errors, the
clocks). The other packages of nbo-edge need more of the engine than an application does —
the decision core run against a hub store, the bundle verifier, the signing keys, the measures
training shares with the terminal, the state-store seam. They take it from here and never from
an underscore module (``tests/test_layering.py`` enforces it; docs/architecture.md draws the
map). This module is not a stable API for applications: names may change with the packages
that use them, in the same commit.

Names the public front door already exports (errors, ``Clock``, ``Decision``…) are imported
from ``nbo.sdk``, not from here.
"""

from __future__ import annotations

from ._bundle import (
    FORMAT,
    MANIFEST,
    SIGNATURE,
    BundleStore,
    StagedBundle,
    check_name,
    count_offers,
    inspect_bundle,
    load_trusted_keys,
    parse_iso,
    sha256_file,
    unsafe_path_reason,
    verify_bundle,
)
from ._carddata import find_card_data, is_card_data
from ._clock import to_datetime
from ._engine import Request, decide, decide_many, validate_mapping
from ._errors import (
    CelTypeError,
    DeadlineExceededError,
    EventConflictError,
    HubUnavailableError,
    ParamError,
    PublishRefused,
    RuleFailure,
    ShuttingDownError,
    UnknownReferenceError,
    UsageError,
    VersionNotNewerError,
)
from ._experiments import ARM_KINDS, HASH_VERSION, Experiment, assign, assignment_unit, parse_experiments
from ._keys import (
    generate_private_key,
    key_id,
    load_private_key,
    private_key_pem,
    public_key_pem,
    sign_manifest,
)
from ._ledger import LEDGER_COLUMNS, award, entry_from_payload, ledger_balance, redeem
from ._ledger import SCHEMA as LEDGER_SCHEMA
from ._measures import (
    LIFECYCLE_STAGES,
    LOYALTY_STAGES,
    MeasureConfig,
    derive_features,
    lifecycle_stage,
    loyalty_stage,
    new_customer_profile,
    refresh_measures,
    to_epoch,
    update_measures,
)
from ._payments import CURRENCY_MINOR_UNITS, record_payment
from ._payments import SCHEMA as PAYMENT_SCHEMA
from ._policy import inclusion_runs, propensities, rank_probability, slot_probability
from ._records import SCHEMA as RECORD_SCHEMA
from ._records import check_decimal, check_id, check_int, check_text, id_problem, record_response
from ._rules import MAX_EXPRESSION_CHARS, compile_expression
from ._rules import evaluate as evaluate_rule
from ._rules import new_context as new_rule_context
from ._runtime import LoadedBundle, input_column, load_bundle, stage_and_load, to_float, to_string
from ._store import (
    CORE_SCHEMA,
    Event,
    StateStore,
    Tx,
    WalCheckpointer,
    damaged_hint,
    insert_rows,
    limit_wal,
    read_sync_marker,
)
from ._sync import SyncLoop, open_channel, sync
from ._vocabulary import (
    AMOUNT_MAX,
    AMOUNT_PLACES,
    BUNDLE_NAME_RE,
    CATEGORIES,
    CONDITION_VARIABLES,
    DEFAULT_CHANNELS,
    DEFAULT_LIMIT,
    EVENT_STATUSES,
    EVENT_TYPES,
    ID_MAX,
    KEY_MAX,
    MAX_LIMIT,
    OUTCOMES,
    PAYMENT_TOKEN_MAX,
    POINTS_KINDS,
    POINTS_MAX,
    POLICY_EVENTS,
    POLICY_SCOPES,
    QUANTITY_MAX,
    REASON_MAX,
    RULE_KINDS,
    RULE_VARIABLES,
)

__all__ = [
    # the errors only the other packages raise or map (the whole tree: nbo.sdk._errors)
    "CelTypeError",
    "DeadlineExceededError",
    "EventConflictError",
    "HubUnavailableError",
    "ParamError",
    "PublishRefused",
    "RuleFailure",
    "ShuttingDownError",
    "UnknownReferenceError",
    "UsageError",
    "VersionNotNewerError",
    # the shared vocabulary: event types, outcomes, policy events, limits (one definition each)
    "AMOUNT_MAX",
    "AMOUNT_PLACES",
    "BUNDLE_NAME_RE",
    "CATEGORIES",
    "CONDITION_VARIABLES",
    "DEFAULT_CHANNELS",
    "DEFAULT_LIMIT",
    "EVENT_STATUSES",
    "EVENT_TYPES",
    "ID_MAX",
    "KEY_MAX",
    "MAX_LIMIT",
    "OUTCOMES",
    "PAYMENT_TOKEN_MAX",
    "POINTS_KINDS",
    "POINTS_MAX",
    "POLICY_EVENTS",
    "POLICY_SCOPES",
    "QUANTITY_MAX",
    "REASON_MAX",
    "RULE_KINDS",
    "RULE_VARIABLES",
    # bundles: format, verification, staging
    "FORMAT",
    "MANIFEST",
    "SIGNATURE",
    "BundleStore",
    # experiments (docs/experiments.md)
    "ARM_KINDS",
    "HASH_VERSION",
    "Experiment",
    "assign",
    "assignment_unit",
    "parse_experiments",
    "StagedBundle",
    "check_name",
    "count_offers",
    "inspect_bundle",
    "load_trusted_keys",
    "parse_iso",
    "sha256_file",
    "unsafe_path_reason",
    "verify_bundle",
    # signing keys (the central toolkit signs, the SDK verifies)
    "generate_private_key",
    "key_id",
    "load_private_key",
    "private_key_pem",
    "public_key_pem",
    "sign_manifest",
    # the decision core and the loaded bundle it runs on
    "LoadedBundle",
    "Request",
    "decide",
    "decide_many",
    "load_bundle",
    "stage_and_load",
    "validate_mapping",
    # CEL: the one boundary to the extension (length cap, panics as RuleError)
    "MAX_EXPRESSION_CHARS",
    "compile_expression",
    "evaluate_rule",
    "new_rule_context",
    # the deciding policy's probabilities (the decision event's eligible set; off-policy evaluation)
    "inclusion_runs",
    "rank_probability",
    "slot_probability",
    # model inputs as the decision core builds them (training and evaluation on logged inputs)
    "input_column",
    "propensities",
    "to_float",
    "to_string",
    # customer measures (the very code training runs)
    "LIFECYCLE_STAGES",
    "LOYALTY_STAGES",
    "MeasureConfig",
    "lifecycle_stage",
    "loyalty_stage",
    "derive_features",
    "new_customer_profile",
    "refresh_measures",
    "to_epoch",
    "update_measures",
    # records written against the state-store seam (terminal and hub alike)
    "LEDGER_COLUMNS",
    "LEDGER_SCHEMA",
    "PAYMENT_SCHEMA",
    "RECORD_SCHEMA",
    "CURRENCY_MINOR_UNITS",
    "award",
    "check_decimal",
    "check_id",
    "check_int",
    "check_text",
    "entry_from_payload",
    "find_card_data",
    "id_problem",
    "is_card_data",
    "ledger_balance",
    "record_payment",
    "record_response",
    "redeem",
    # the state-store seam and the SQLite plumbing the hub shares
    "CORE_SCHEMA",
    "Event",
    "StateStore",
    "Tx",
    "WalCheckpointer",
    "damaged_hint",
    "read_sync_marker",
    "insert_rows",
    "limit_wal",
    # sync and the gRPC channel options shared with the publish client
    "SyncLoop",
    "open_channel",
    "sync",
    # time
    "to_datetime",
]
