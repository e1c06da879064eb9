import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from qdata.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TransactionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSACTION_KIND_UNSPECIFIED: _ClassVar[TransactionKind]
    TRANSACTION_KIND_DEPOSIT: _ClassVar[TransactionKind]
    TRANSACTION_KIND_CHARGE: _ClassVar[TransactionKind]
    TRANSACTION_KIND_REFUND: _ClassVar[TransactionKind]
    TRANSACTION_KIND_TRANSFER: _ClassVar[TransactionKind]
    TRANSACTION_KIND_HOLD_CAPTURE: _ClassVar[TransactionKind]
    TRANSACTION_KIND_OPENING_BALANCE: _ClassVar[TransactionKind]

class DepositSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPOSIT_SOURCE_UNSPECIFIED: _ClassVar[DepositSource]
    DEPOSIT_SOURCE_PAYMENT: _ClassVar[DepositSource]
    DEPOSIT_SOURCE_PROMOTION: _ClassVar[DepositSource]

class HoldStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOLD_STATUS_UNSPECIFIED: _ClassVar[HoldStatus]
    HOLD_STATUS_ACTIVE: _ClassVar[HoldStatus]
    HOLD_STATUS_CAPTURED: _ClassVar[HoldStatus]
    HOLD_STATUS_RELEASED: _ClassVar[HoldStatus]
    HOLD_STATUS_EXPIRED: _ClassVar[HoldStatus]

class DiscrepancyKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DISCREPANCY_KIND_UNSPECIFIED: _ClassVar[DiscrepancyKind]
    DISCREPANCY_KIND_UNBALANCED_TRANSACTION: _ClassVar[DiscrepancyKind]
    DISCREPANCY_KIND_BALANCE_MISMATCH: _ClassVar[DiscrepancyKind]
    DISCREPANCY_KIND_HELD_MISMATCH: _ClassVar[DiscrepancyKind]
    DISCREPANCY_KIND_NEGATIVE_AVAILABLE: _ClassVar[DiscrepancyKind]
    DISCREPANCY_KIND_HOLD_INCONSISTENT: _ClassVar[DiscrepancyKind]
    DISCREPANCY_KIND_REFUND_EXCEEDS_ORIGINAL: _ClassVar[DiscrepancyKind]
TRANSACTION_KIND_UNSPECIFIED: TransactionKind
TRANSACTION_KIND_DEPOSIT: TransactionKind
TRANSACTION_KIND_CHARGE: TransactionKind
TRANSACTION_KIND_REFUND: TransactionKind
TRANSACTION_KIND_TRANSFER: TransactionKind
TRANSACTION_KIND_HOLD_CAPTURE: TransactionKind
TRANSACTION_KIND_OPENING_BALANCE: TransactionKind
DEPOSIT_SOURCE_UNSPECIFIED: DepositSource
DEPOSIT_SOURCE_PAYMENT: DepositSource
DEPOSIT_SOURCE_PROMOTION: DepositSource
HOLD_STATUS_UNSPECIFIED: HoldStatus
HOLD_STATUS_ACTIVE: HoldStatus
HOLD_STATUS_CAPTURED: HoldStatus
HOLD_STATUS_RELEASED: HoldStatus
HOLD_STATUS_EXPIRED: HoldStatus
DISCREPANCY_KIND_UNSPECIFIED: DiscrepancyKind
DISCREPANCY_KIND_UNBALANCED_TRANSACTION: DiscrepancyKind
DISCREPANCY_KIND_BALANCE_MISMATCH: DiscrepancyKind
DISCREPANCY_KIND_HELD_MISMATCH: DiscrepancyKind
DISCREPANCY_KIND_NEGATIVE_AVAILABLE: DiscrepancyKind
DISCREPANCY_KIND_HOLD_INCONSISTENT: DiscrepancyKind
DISCREPANCY_KIND_REFUND_EXCEEDS_ORIGINAL: DiscrepancyKind

class Posting(_message.Message):
    __slots__ = ("account", "amount_micros")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    account: str
    amount_micros: int
    def __init__(self, account: _Optional[str] = ..., amount_micros: _Optional[int] = ...) -> None: ...

class Transaction(_message.Message):
    __slots__ = ("id", "kind", "user_id", "counterparty_user_id", "amount_micros", "currency_code", "description", "reference", "external_reference", "deposit_source", "original_transaction_id", "hold_id", "refunded_micros", "postings", "request_id", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    COUNTERPARTY_USER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    DEPOSIT_SOURCE_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_MICROS_FIELD_NUMBER: _ClassVar[int]
    POSTINGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: TransactionKind
    user_id: str
    counterparty_user_id: str
    amount_micros: int
    currency_code: str
    description: str
    reference: str
    external_reference: str
    deposit_source: DepositSource
    original_transaction_id: str
    hold_id: str
    refunded_micros: int
    postings: _containers.RepeatedCompositeFieldContainer[Posting]
    request_id: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[TransactionKind, str]] = ..., user_id: _Optional[str] = ..., counterparty_user_id: _Optional[str] = ..., amount_micros: _Optional[int] = ..., currency_code: _Optional[str] = ..., description: _Optional[str] = ..., reference: _Optional[str] = ..., external_reference: _Optional[str] = ..., deposit_source: _Optional[_Union[DepositSource, str]] = ..., original_transaction_id: _Optional[str] = ..., hold_id: _Optional[str] = ..., refunded_micros: _Optional[int] = ..., postings: _Optional[_Iterable[_Union[Posting, _Mapping]]] = ..., request_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Balance(_message.Message):
    __slots__ = ("user_id", "currency_code", "posted_micros", "held_micros", "available_micros", "update_time")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    POSTED_MICROS_FIELD_NUMBER: _ClassVar[int]
    HELD_MICROS_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_MICROS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    currency_code: str
    posted_micros: int
    held_micros: int
    available_micros: int
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., currency_code: _Optional[str] = ..., posted_micros: _Optional[int] = ..., held_micros: _Optional[int] = ..., available_micros: _Optional[int] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Hold(_message.Message):
    __slots__ = ("id", "user_id", "amount_micros", "currency_code", "status", "description", "reference", "captured_micros", "capture_transaction_id", "create_time", "expire_time", "resolve_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_MICROS_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESOLVE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    user_id: str
    amount_micros: int
    currency_code: str
    status: HoldStatus
    description: str
    reference: str
    captured_micros: int
    capture_transaction_id: str
    create_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    resolve_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., user_id: _Optional[str] = ..., amount_micros: _Optional[int] = ..., currency_code: _Optional[str] = ..., status: _Optional[_Union[HoldStatus, str]] = ..., description: _Optional[str] = ..., reference: _Optional[str] = ..., captured_micros: _Optional[int] = ..., capture_transaction_id: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resolve_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LedgerDiscrepancy(_message.Message):
    __slots__ = ("kind", "account", "currency_code", "transaction_id", "hold_id", "expected_micros", "actual_micros", "detail")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_MICROS_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_MICROS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    kind: DiscrepancyKind
    account: str
    currency_code: str
    transaction_id: str
    hold_id: str
    expected_micros: int
    actual_micros: int
    detail: str
    def __init__(self, kind: _Optional[_Union[DiscrepancyKind, str]] = ..., account: _Optional[str] = ..., currency_code: _Optional[str] = ..., transaction_id: _Optional[str] = ..., hold_id: _Optional[str] = ..., expected_micros: _Optional[int] = ..., actual_micros: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class GetBalanceRequest(_message.Message):
    __slots__ = ("user_id", "currency_code")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    currency_code: str
    def __init__(self, user_id: _Optional[str] = ..., currency_code: _Optional[str] = ...) -> None: ...

class GetBalanceResponse(_message.Message):
    __slots__ = ("balance",)
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    balance: Balance
    def __init__(self, balance: _Optional[_Union[Balance, _Mapping]] = ...) -> None: ...

class DepositRequest(_message.Message):
    __slots__ = ("request_id", "user_id", "amount_micros", "currency_code", "source", "external_reference", "description")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    amount_micros: int
    currency_code: str
    source: DepositSource
    external_reference: str
    description: str
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., amount_micros: _Optional[int] = ..., currency_code: _Optional[str] = ..., source: _Optional[_Union[DepositSource, str]] = ..., external_reference: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class DepositResponse(_message.Message):
    __slots__ = ("transaction",)
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    transaction: Transaction
    def __init__(self, transaction: _Optional[_Union[Transaction, _Mapping]] = ...) -> None: ...

class ChargeRequest(_message.Message):
    __slots__ = ("request_id", "user_id", "amount_micros", "currency_code", "description", "reference")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    amount_micros: int
    currency_code: str
    description: str
    reference: str
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., amount_micros: _Optional[int] = ..., currency_code: _Optional[str] = ..., description: _Optional[str] = ..., reference: _Optional[str] = ...) -> None: ...

class ChargeResponse(_message.Message):
    __slots__ = ("transaction",)
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    transaction: Transaction
    def __init__(self, transaction: _Optional[_Union[Transaction, _Mapping]] = ...) -> None: ...

class RefundRequest(_message.Message):
    __slots__ = ("request_id", "user_id", "original_transaction_id", "amount_micros", "description")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    original_transaction_id: str
    amount_micros: int
    description: str
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., original_transaction_id: _Optional[str] = ..., amount_micros: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class RefundResponse(_message.Message):
    __slots__ = ("transaction",)
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    transaction: Transaction
    def __init__(self, transaction: _Optional[_Union[Transaction, _Mapping]] = ...) -> None: ...

class TransferRequest(_message.Message):
    __slots__ = ("request_id", "from_user_id", "to_user_id", "amount_micros", "currency_code", "description", "reference")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_USER_ID_FIELD_NUMBER: _ClassVar[int]
    TO_USER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    from_user_id: str
    to_user_id: str
    amount_micros: int
    currency_code: str
    description: str
    reference: str
    def __init__(self, request_id: _Optional[str] = ..., from_user_id: _Optional[str] = ..., to_user_id: _Optional[str] = ..., amount_micros: _Optional[int] = ..., currency_code: _Optional[str] = ..., description: _Optional[str] = ..., reference: _Optional[str] = ...) -> None: ...

class TransferResponse(_message.Message):
    __slots__ = ("transaction",)
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    transaction: Transaction
    def __init__(self, transaction: _Optional[_Union[Transaction, _Mapping]] = ...) -> None: ...

class CreateHoldRequest(_message.Message):
    __slots__ = ("request_id", "user_id", "amount_micros", "currency_code", "ttl", "description", "reference")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    amount_micros: int
    currency_code: str
    ttl: _duration_pb2.Duration
    description: str
    reference: str
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., amount_micros: _Optional[int] = ..., currency_code: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., description: _Optional[str] = ..., reference: _Optional[str] = ...) -> None: ...

class CreateHoldResponse(_message.Message):
    __slots__ = ("hold",)
    HOLD_FIELD_NUMBER: _ClassVar[int]
    hold: Hold
    def __init__(self, hold: _Optional[_Union[Hold, _Mapping]] = ...) -> None: ...

class GetHoldRequest(_message.Message):
    __slots__ = ("user_id", "hold_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    hold_id: str
    def __init__(self, user_id: _Optional[str] = ..., hold_id: _Optional[str] = ...) -> None: ...

class GetHoldResponse(_message.Message):
    __slots__ = ("hold",)
    HOLD_FIELD_NUMBER: _ClassVar[int]
    hold: Hold
    def __init__(self, hold: _Optional[_Union[Hold, _Mapping]] = ...) -> None: ...

class CaptureHoldRequest(_message.Message):
    __slots__ = ("request_id", "user_id", "hold_id", "amount_micros", "description")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MICROS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    hold_id: str
    amount_micros: int
    description: str
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., hold_id: _Optional[str] = ..., amount_micros: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class CaptureHoldResponse(_message.Message):
    __slots__ = ("hold", "transaction")
    HOLD_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    hold: Hold
    transaction: Transaction
    def __init__(self, hold: _Optional[_Union[Hold, _Mapping]] = ..., transaction: _Optional[_Union[Transaction, _Mapping]] = ...) -> None: ...

class ReleaseHoldRequest(_message.Message):
    __slots__ = ("request_id", "user_id", "hold_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    hold_id: str
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., hold_id: _Optional[str] = ...) -> None: ...

class ReleaseHoldResponse(_message.Message):
    __slots__ = ("hold",)
    HOLD_FIELD_NUMBER: _ClassVar[int]
    hold: Hold
    def __init__(self, hold: _Optional[_Union[Hold, _Mapping]] = ...) -> None: ...

class GetTransactionRequest(_message.Message):
    __slots__ = ("user_id", "transaction_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    transaction_id: str
    def __init__(self, user_id: _Optional[str] = ..., transaction_id: _Optional[str] = ...) -> None: ...

class GetTransactionResponse(_message.Message):
    __slots__ = ("transaction",)
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    transaction: Transaction
    def __init__(self, transaction: _Optional[_Union[Transaction, _Mapping]] = ...) -> None: ...

class ListTransactionsRequest(_message.Message):
    __slots__ = ("user_id", "start_time", "end_time", "kinds", "currency_code", "page_size", "page_token")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    kinds: _containers.RepeatedScalarFieldContainer[TransactionKind]
    currency_code: str
    page_size: int
    page_token: str
    def __init__(self, user_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kinds: _Optional[_Iterable[_Union[TransactionKind, str]]] = ..., currency_code: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTransactionsResponse(_message.Message):
    __slots__ = ("transactions", "next_page_token")
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[Transaction]
    next_page_token: str
    def __init__(self, transactions: _Optional[_Iterable[_Union[Transaction, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class VerifyLedgerRequest(_message.Message):
    __slots__ = ("user_id", "max_discrepancies")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_DISCREPANCIES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    max_discrepancies: int
    def __init__(self, user_id: _Optional[str] = ..., max_discrepancies: _Optional[int] = ...) -> None: ...

class VerifyLedgerResponse(_message.Message):
    __slots__ = ("discrepancies", "truncated", "accounts_checked", "transactions_checked", "holds_checked", "check_time")
    DISCREPANCIES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    TRANSACTIONS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    HOLDS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    CHECK_TIME_FIELD_NUMBER: _ClassVar[int]
    discrepancies: _containers.RepeatedCompositeFieldContainer[LedgerDiscrepancy]
    truncated: bool
    accounts_checked: int
    transactions_checked: int
    holds_checked: int
    check_time: _timestamp_pb2.Timestamp
    def __init__(self, discrepancies: _Optional[_Iterable[_Union[LedgerDiscrepancy, _Mapping]]] = ..., truncated: _Optional[bool] = ..., accounts_checked: _Optional[int] = ..., transactions_checked: _Optional[int] = ..., holds_checked: _Optional[int] = ..., check_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
