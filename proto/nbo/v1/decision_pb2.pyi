import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_ACCEPTED: _ClassVar[Outcome]
    OUTCOME_DECLINED: _ClassVar[Outcome]
    OUTCOME_IGNORED: _ClassVar[Outcome]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_ACCEPTED: Outcome
OUTCOME_DECLINED: Outcome
OUTCOME_IGNORED: Outcome

class DecideRequest(_message.Message):
    __slots__ = ("customer_id", "channel", "context", "profile", "limit", "explain")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    channel: str
    context: _struct_pb2.Struct
    profile: _struct_pb2.Struct
    limit: int
    explain: bool
    def __init__(self, customer_id: _Optional[str] = ..., channel: _Optional[str] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., profile: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., limit: _Optional[int] = ..., explain: _Optional[bool] = ...) -> None: ...

class RankedOffer(_message.Message):
    __slots__ = ("offer_id", "name", "category", "propensity", "value", "strategy", "weight", "lever", "score", "mandatory", "fallback", "selection_probability", "rank")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LEVER_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MANDATORY_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    SELECTION_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    name: str
    category: str
    propensity: float
    value: float
    strategy: str
    weight: float
    lever: float
    score: float
    mandatory: bool
    fallback: bool
    selection_probability: float
    rank: int
    def __init__(self, offer_id: _Optional[str] = ..., name: _Optional[str] = ..., category: _Optional[str] = ..., propensity: _Optional[float] = ..., value: _Optional[float] = ..., strategy: _Optional[str] = ..., weight: _Optional[float] = ..., lever: _Optional[float] = ..., score: _Optional[float] = ..., mandatory: _Optional[bool] = ..., fallback: _Optional[bool] = ..., selection_probability: _Optional[float] = ..., rank: _Optional[int] = ...) -> None: ...

class Exclusion(_message.Message):
    __slots__ = ("offer_id", "rule_id", "kind", "description")
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    offer_id: str
    rule_id: str
    kind: str
    description: str
    def __init__(self, offer_id: _Optional[str] = ..., rule_id: _Optional[str] = ..., kind: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class DecideResponse(_message.Message):
    __slots__ = ("decision_id", "customer_id", "channel", "bundle_name", "bundle_version", "strategy", "offers", "excluded", "created_at", "experiment_id", "arm", "hash_version")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_NAME_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    OFFERS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    HASH_VERSION_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    customer_id: str
    channel: str
    bundle_name: str
    bundle_version: int
    strategy: str
    offers: _containers.RepeatedCompositeFieldContainer[RankedOffer]
    excluded: _containers.RepeatedCompositeFieldContainer[Exclusion]
    created_at: _timestamp_pb2.Timestamp
    experiment_id: str
    arm: str
    hash_version: int
    def __init__(self, decision_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., channel: _Optional[str] = ..., bundle_name: _Optional[str] = ..., bundle_version: _Optional[int] = ..., strategy: _Optional[str] = ..., offers: _Optional[_Iterable[_Union[RankedOffer, _Mapping]]] = ..., excluded: _Optional[_Iterable[_Union[Exclusion, _Mapping]]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., experiment_id: _Optional[str] = ..., arm: _Optional[str] = ..., hash_version: _Optional[int] = ...) -> None: ...

class RecordResponseRequest(_message.Message):
    __slots__ = ("decision_id", "offer_id", "outcome")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    offer_id: str
    outcome: Outcome
    def __init__(self, decision_id: _Optional[str] = ..., offer_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ...) -> None: ...

class RecordResponseResponse(_message.Message):
    __slots__ = ("decision_id", "offer_id", "outcome")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    offer_id: str
    outcome: Outcome
    def __init__(self, decision_id: _Optional[str] = ..., offer_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ...) -> None: ...

class LedgerEntry(_message.Message):
    __slots__ = ("entry_id", "customer_id", "kind", "points", "reason", "created_at", "idempotency_key", "expires_at", "reverses")
    ENTRY_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVERSES_FIELD_NUMBER: _ClassVar[int]
    entry_id: str
    customer_id: str
    kind: str
    points: int
    reason: str
    created_at: _timestamp_pb2.Timestamp
    idempotency_key: str
    expires_at: _timestamp_pb2.Timestamp
    reverses: str
    def __init__(self, entry_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., kind: _Optional[str] = ..., points: _Optional[int] = ..., reason: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reverses: _Optional[str] = ...) -> None: ...

class AwardPointsRequest(_message.Message):
    __slots__ = ("customer_id", "points", "idempotency_key", "reason", "expires_at")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    points: int
    idempotency_key: str
    reason: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, customer_id: _Optional[str] = ..., points: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., reason: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AwardPointsResponse(_message.Message):
    __slots__ = ("entry", "balance")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    entry: LedgerEntry
    balance: int
    def __init__(self, entry: _Optional[_Union[LedgerEntry, _Mapping]] = ..., balance: _Optional[int] = ...) -> None: ...

class RedeemPointsRequest(_message.Message):
    __slots__ = ("customer_id", "points", "idempotency_key", "reason")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    points: int
    idempotency_key: str
    reason: str
    def __init__(self, customer_id: _Optional[str] = ..., points: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RedeemPointsResponse(_message.Message):
    __slots__ = ("entry", "balance")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    entry: LedgerEntry
    balance: int
    def __init__(self, entry: _Optional[_Union[LedgerEntry, _Mapping]] = ..., balance: _Optional[int] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("customer_id",)
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    def __init__(self, customer_id: _Optional[str] = ...) -> None: ...

class GetBalanceResponse(_message.Message):
    __slots__ = ("customer_id", "balance")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    balance: int
    def __init__(self, customer_id: _Optional[str] = ..., balance: _Optional[int] = ...) -> None: ...

class RecordPaymentRequest(_message.Message):
    __slots__ = ("customer_id", "payment_token", "amount", "currency", "idempotency_key", "store_id", "decision_id", "offer_id")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    payment_token: str
    amount: str
    currency: str
    idempotency_key: str
    store_id: str
    decision_id: str
    offer_id: str
    def __init__(self, customer_id: _Optional[str] = ..., payment_token: _Optional[str] = ..., amount: _Optional[str] = ..., currency: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., store_id: _Optional[str] = ..., decision_id: _Optional[str] = ..., offer_id: _Optional[str] = ...) -> None: ...

class PaymentRecord(_message.Message):
    __slots__ = ("payment_id", "customer_id", "payment_token", "amount", "currency", "created_at", "idempotency_key", "store_id", "decision_id", "offer_id")
    PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    STORE_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    OFFER_ID_FIELD_NUMBER: _ClassVar[int]
    payment_id: str
    customer_id: str
    payment_token: str
    amount: str
    currency: str
    created_at: _timestamp_pb2.Timestamp
    idempotency_key: str
    store_id: str
    decision_id: str
    offer_id: str
    def __init__(self, payment_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., payment_token: _Optional[str] = ..., amount: _Optional[str] = ..., currency: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., store_id: _Optional[str] = ..., decision_id: _Optional[str] = ..., offer_id: _Optional[str] = ...) -> None: ...

class RecordPaymentResponse(_message.Message):
    __slots__ = ("payment",)
    PAYMENT_FIELD_NUMBER: _ClassVar[int]
    payment: PaymentRecord
    def __init__(self, payment: _Optional[_Union[PaymentRecord, _Mapping]] = ...) -> None: ...
