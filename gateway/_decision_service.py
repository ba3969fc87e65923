"""``nbo.v1.DecisionService``: the mobile-app backend's API, a thin adapter over the SDK core.

Each method converts the request, calls one SDK function (``sdk._engine.decide``,
``sdk._records``, ``sdk._ledger``, ``sdk._payments``) over the hub-backed state store, and
converts the answer. Errors follow docs/operations.md and the proto comments (:func:`status_for`):
``InputError`` → INVALID_ARGUMENT naming the field, unknown ids → NOT_FOUND, no bundle or a
refused ledger operation → FAILED_PRECONDITION; anything unexpected → INTERNAL with a generic
message (logged by type, never with request values, so no card data reaches a log).
"""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from nbo.sdk import Decision, InputError, LedgerEntry, PaymentRecord, core
from nbo.sdk.core import DEFAULT_LIMIT, MAX_LIMIT, DeadlineExceededError, Request, validate_mapping
from nbo.v1 import decision_pb2, decision_pb2_grpc

from ._decide_batch import DecideArgs, DecideBatcher
from ._engine_host import EngineHost
from ._hub_state import HubStateStore
from ._metrics import GatewayMetrics
from ._status import abort_with, rpc_errors, status_for

__all__ = ["DecisionServicer", "abort_with", "decision_pb", "rpc_errors", "status_for", "struct_to_dict"]

log = logging.getLogger("nbo.gateway")

_OUTCOME_NAMES = {
    decision_pb2.OUTCOME_ACCEPTED: "accepted",
    decision_pb2.OUTCOME_DECLINED: "declined",
    decision_pb2.OUTCOME_IGNORED: "ignored",
}
_OUTCOME_CODES = {v: k for k, v in _OUTCOME_NAMES.items()}


# -- conversions --------------------------------------------------------------------------------


MAX_STRUCT_DEPTH = 8
"""Deepest nesting of ``Struct``/list values accepted in ``context`` and ``profile``.

The decision core takes flat mappings (scalars and lists of strings), so any nesting is
refused later with the field's name; this bound only keeps the conversion itself cheap and
the refusal clean. Deeper than protobuf's own decoder limit (about 33 levels) the request
does not decode at all and is refused by ``gateway/_decode_guard.py``.
"""


def _value(value: struct_pb2.Value, field: str, depth: int) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        # Struct numbers arrive as doubles; whole numbers become ints so integer measures
        # (frequency, points_balance, hour) keep their type, as a Python caller passes them.
        # NaN and infinities stay floats, for the engine to refuse with the field's name.
        if math.isfinite(number) and number.is_integer() and abs(number) < 2**53:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind in ("struct_value", "list_value") and depth >= MAX_STRUCT_DEPTH:
        raise InputError(f"{field} is nested more than {MAX_STRUCT_DEPTH} levels deep", field=field)
    if kind == "struct_value":
        return _struct(value.struct_value, field, depth + 1)
    if kind == "list_value":
        return [_value(v, field, depth + 1) for v in value.list_value.values]
    return None  # null_value, or unset


def _struct(struct: struct_pb2.Struct, field: str, depth: int) -> dict[str, Any]:
    # Field paths name the top-level key only: deeper keys are the caller's data.
    return {key: _value(value, field if depth else f"{field}.{key}", depth) for key, value in struct.fields.items()}


def struct_to_dict(struct: struct_pb2.Struct, field: str = "struct") -> dict[str, Any]:
    """A ``google.protobuf.Struct`` as a plain dict (whole-number doubles as ints, NaN kept).

    ``InputError`` naming ``field`` (and its top-level key) when a value is nested more than
    :data:`MAX_STRUCT_DEPTH` levels deep.
    """
    return _struct(struct, field, 0)


def _timestamp(epoch: float) -> timestamp_pb2.Timestamp:
    seconds, nanos = divmod(int(round(epoch * 1e9)), 1_000_000_000)  # nanos in [0, 1e9) as the type requires
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


def _to_datetime(ts: timestamp_pb2.Timestamp, field: str) -> datetime:
    seconds = ts.seconds + ts.nanos / 1e9
    if not (-62135596800 <= ts.seconds <= 253402300799) or not (0 <= ts.nanos < 1_000_000_000):
        raise InputError(f"{field} is not a valid timestamp", field=field)
    return datetime.fromtimestamp(seconds, tz=UTC)


def _entry_pb(entry: LedgerEntry) -> decision_pb2.LedgerEntry:
    pb = decision_pb2.LedgerEntry(
        entry_id=entry.entry_id,
        customer_id=entry.customer_id,
        kind=entry.kind,
        points=entry.points,
        reason=entry.reason,
        created_at=_timestamp(entry.created_at),
        idempotency_key=entry.idempotency_key,
    )
    if entry.expires_at is not None:
        pb.expires_at.CopyFrom(_timestamp(entry.expires_at))
    if entry.reverses is not None:
        pb.reverses = entry.reverses
    return pb


def _payment_pb(record: PaymentRecord) -> decision_pb2.PaymentRecord:
    pb = decision_pb2.PaymentRecord(
        payment_id=record.payment_id,
        customer_id=record.customer_id,
        payment_token=record.payment_token,
        amount=format(record.amount, "f"),
        currency=record.currency,
        created_at=_timestamp(record.created_at),
        idempotency_key=record.idempotency_key,
    )
    for name in ("store_id", "decision_id", "offer_id"):
        value = getattr(record, name)
        if value is not None:
            setattr(pb, name, value)
    return pb


def decision_pb(decision: Decision) -> decision_pb2.DecideResponse:
    """The wire answer of a decision."""
    response = decision_pb2.DecideResponse(
        decision_id=decision.decision_id,
        customer_id=decision.customer_id,
        channel=decision.channel,
        bundle_name=decision.bundle_name,
        bundle_version=decision.bundle_version,
        strategy=decision.strategy,
        created_at=_timestamp(decision.created_at),
        experiment_id=decision.experiment_id,
        arm=decision.arm,
        hash_version=decision.hash_version,
    )
    add = response.offers.add  # built in place: no message copied per offer
    for rank, offer in enumerate(decision.offers, start=1):
        add(
            offer_id=offer.offer_id,
            name=offer.name,
            category=offer.category,
            propensity=offer.propensity,
            value=offer.value,
            strategy=offer.strategy,
            weight=offer.weight,
            lever=offer.lever,
            score=offer.score,
            mandatory=offer.mandatory,
            fallback=offer.fallback,
            selection_probability=offer.selection_probability,
            rank=rank,
        )
    for exclusion in decision.excluded:
        response.excluded.append(
            decision_pb2.Exclusion(
                offer_id=exclusion.offer_id,
                rule_id=exclusion.rule_id,
                kind=exclusion.kind,
                description=exclusion.description,
            )
        )
    return response


def _require_caller(context: grpc.ServicerContext) -> None:
    """:class:`DeadlineExceededError` when the caller's deadline passed or it went away.

    Checked once the write lock is held, right before recording: a caller that gave up was
    told the call failed, and may well repeat it under a new idempotency key.
    """
    remaining = context.time_remaining()
    if not context.is_active() or (remaining is not None and remaining <= 0):
        raise DeadlineExceededError("the call's deadline passed before it was recorded")


def _optional(request: Any, field: str) -> str | None:
    return getattr(request, field) if request.HasField(field) else None


# -- the servicer -------------------------------------------------------------------------------


class DecisionServicer(decision_pb2_grpc.DecisionServiceServicer):
    """Decide, record, run the ledger and payment records over the hub-backed state store."""

    def __init__(
        self, *, engine: EngineHost, state: HubStateStore, decider: DecideBatcher, metrics: GatewayMetrics | None = None
    ) -> None:
        self._engine = engine
        self._state = state
        self._decider = decider
        self._metrics = metrics

    def Decide(
        self, request: decision_pb2.DecideRequest, context: grpc.ServicerContext
    ) -> decision_pb2.DecideResponse:
        started = time.perf_counter()
        with rpc_errors(context, "Decide"):
            limit = request.limit if request.HasField("limit") else DEFAULT_LIMIT
            if not 1 <= limit <= MAX_LIMIT:
                raise InputError(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
            customer_id = core.check_id(request.customer_id, "customer_id")
            # Checked here, before the request is queued: a bad value is refused naming its
            # field, deciding nothing.
            ctx = validate_mapping(struct_to_dict(request.context, "context"), "context") if request.HasField("context") else None
            profile = (validate_mapping(struct_to_dict(request.profile, "profile"), "profile")
                       if request.HasField("profile") else None)
            bundle = self._engine.require()  # one reference for the whole call: hot swaps are invisible
            args = DecideArgs(bundle, Request(customer_id, request.channel, ctx, profile, limit, request.explain),
                              alive=context.is_active)
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.time() + remaining
            decided = self._decider.submit(args, is_active=context.is_active, deadline=deadline)
            response = decision_pb(decided)
        if self._metrics is not None:
            self._metrics.record_decide(f"{decided.bundle_name}:{decided.bundle_version}",
                                        time.perf_counter() - started)
        return response

    def RecordResponse(
        self, request: decision_pb2.RecordResponseRequest, context: grpc.ServicerContext
    ) -> decision_pb2.RecordResponseResponse:
        with rpc_errors(context, "RecordResponse"):
            outcome = _OUTCOME_NAMES.get(request.outcome)
            if outcome is None:
                raise InputError("outcome must be OUTCOME_ACCEPTED, OUTCOME_DECLINED or OUTCOME_IGNORED",
                                 field="outcome")
            core.record_response(self._state, request.decision_id, request.offer_id, outcome)
        return decision_pb2.RecordResponseResponse(
            decision_id=request.decision_id, offer_id=request.offer_id, outcome=_OUTCOME_CODES[outcome]
        )

    def AwardPoints(
        self, request: decision_pb2.AwardPointsRequest, context: grpc.ServicerContext
    ) -> decision_pb2.AwardPointsResponse:
        with rpc_errors(context, "AwardPoints"):
            customer_id = core.check_id(request.customer_id, "customer_id")
            expires = _to_datetime(request.expires_at, "expires_at") if request.HasField("expires_at") else None
            with self._state.ledger_transaction(customer_id):
                _require_caller(context)  # the lock may have taken long: is anyone still waiting?
                entry = core.award(
                    self._state,
                    customer_id,
                    request.points,
                    idempotency_key=request.idempotency_key,
                    reason=request.reason,
                    expires_at=expires,
                )
                balance = self._state.hub_balance(customer_id)
        return decision_pb2.AwardPointsResponse(entry=_entry_pb(entry), balance=balance)

    def RedeemPoints(
        self, request: decision_pb2.RedeemPointsRequest, context: grpc.ServicerContext
    ) -> decision_pb2.RedeemPointsResponse:
        with rpc_errors(context, "RedeemPoints"):
            customer_id = core.check_id(request.customer_id, "customer_id")
            with self._state.ledger_transaction(customer_id):
                _require_caller(context)  # the lock may have taken long: is anyone still waiting?
                entry = core.redeem(
                    self._state,
                    customer_id,
                    request.points,
                    idempotency_key=request.idempotency_key,
                    reason=request.reason,
                )
                balance = self._state.hub_balance(customer_id)
        return decision_pb2.RedeemPointsResponse(entry=_entry_pb(entry), balance=balance)

    def GetBalance(
        self, request: decision_pb2.GetBalanceRequest, context: grpc.ServicerContext
    ) -> decision_pb2.GetBalanceResponse:
        with rpc_errors(context, "GetBalance"):
            customer_id = core.check_id(request.customer_id, "customer_id")
            balance = self._state.hub_balance(customer_id)
        return decision_pb2.GetBalanceResponse(customer_id=customer_id, balance=balance)

    def RecordPayment(
        self, request: decision_pb2.RecordPaymentRequest, context: grpc.ServicerContext
    ) -> decision_pb2.RecordPaymentResponse:
        with rpc_errors(context, "RecordPayment"):
            record = core.record_payment(
                self._state,
                request.customer_id,
                payment_token=request.payment_token,
                amount=request.amount,
                currency=request.currency,
                idempotency_key=request.idempotency_key,
                store_id=_optional(request, "store_id"),
                decision_id=_optional(request, "decision_id"),
                offer_id=_optional(request, "offer_id"),
            )
        return decision_pb2.RecordPaymentResponse(payment=_payment_pb(record))
