import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from qdata.v1 import options_pb2 as _options_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATUS_UNSPECIFIED: _ClassVar[ModelStatus]
    MODEL_STATUS_ACTIVE: _ClassVar[ModelStatus]
    MODEL_STATUS_DEPRECATED: _ClassVar[ModelStatus]

class UsageOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    USAGE_OUTCOME_UNSPECIFIED: _ClassVar[UsageOutcome]
    USAGE_OUTCOME_SUCCESS: _ClassVar[UsageOutcome]
    USAGE_OUTCOME_ERROR: _ClassVar[UsageOutcome]

class ModelMetric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_METRIC_UNSPECIFIED: _ClassVar[ModelMetric]
    MODEL_METRIC_REQUESTS: _ClassVar[ModelMetric]
    MODEL_METRIC_TOKENS: _ClassVar[ModelMetric]
    MODEL_METRIC_SPEND: _ClassVar[ModelMetric]
    MODEL_METRIC_RATING: _ClassVar[ModelMetric]
    MODEL_METRIC_GROWTH: _ClassVar[ModelMetric]
MODEL_STATUS_UNSPECIFIED: ModelStatus
MODEL_STATUS_ACTIVE: ModelStatus
MODEL_STATUS_DEPRECATED: ModelStatus
USAGE_OUTCOME_UNSPECIFIED: UsageOutcome
USAGE_OUTCOME_SUCCESS: UsageOutcome
USAGE_OUTCOME_ERROR: UsageOutcome
MODEL_METRIC_UNSPECIFIED: ModelMetric
MODEL_METRIC_REQUESTS: ModelMetric
MODEL_METRIC_TOKENS: ModelMetric
MODEL_METRIC_SPEND: ModelMetric
MODEL_METRIC_RATING: ModelMetric
MODEL_METRIC_GROWTH: ModelMetric

class ModelPrice(_message.Message):
    __slots__ = ("id", "model_id", "currency_code", "input_micros_per_million_tokens", "output_micros_per_million_tokens", "cached_input_micros_per_million_tokens", "reasoning_micros_per_million_tokens", "effective_time", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    INPUT_MICROS_PER_MILLION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_MICROS_PER_MILLION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_MICROS_PER_MILLION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_MICROS_PER_MILLION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EFFECTIVE_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    model_id: str
    currency_code: str
    input_micros_per_million_tokens: int
    output_micros_per_million_tokens: int
    cached_input_micros_per_million_tokens: int
    reasoning_micros_per_million_tokens: int
    effective_time: _timestamp_pb2.Timestamp
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., model_id: _Optional[str] = ..., currency_code: _Optional[str] = ..., input_micros_per_million_tokens: _Optional[int] = ..., output_micros_per_million_tokens: _Optional[int] = ..., cached_input_micros_per_million_tokens: _Optional[int] = ..., reasoning_micros_per_million_tokens: _Optional[int] = ..., effective_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("id", "provider", "display_name", "context_window_tokens", "status", "current_price", "next_price", "create_time", "update_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_WINDOW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_PRICE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PRICE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    provider: str
    display_name: str
    context_window_tokens: int
    status: ModelStatus
    current_price: ModelPrice
    next_price: ModelPrice
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., provider: _Optional[str] = ..., display_name: _Optional[str] = ..., context_window_tokens: _Optional[int] = ..., status: _Optional[_Union[ModelStatus, str]] = ..., current_price: _Optional[_Union[ModelPrice, _Mapping]] = ..., next_price: _Optional[_Union[ModelPrice, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UsageRecord(_message.Message):
    __slots__ = ("id", "request_id", "user_id", "model_id", "session_id", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "latency", "time_to_first_token", "outcome", "error_code", "used_own_provider_key", "hold_id", "price_id", "cost_micros", "currency_code", "billed", "ledger_transaction_id", "overage_transaction_id", "call_time", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    USED_OWN_PROVIDER_KEY_FIELD_NUMBER: _ClassVar[int]
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    PRICE_ID_FIELD_NUMBER: _ClassVar[int]
    COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    BILLED_FIELD_NUMBER: _ClassVar[int]
    LEDGER_TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    OVERAGE_TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_TIME_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    request_id: str
    user_id: str
    model_id: str
    session_id: str
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    latency: _duration_pb2.Duration
    time_to_first_token: _duration_pb2.Duration
    outcome: UsageOutcome
    error_code: str
    used_own_provider_key: bool
    hold_id: str
    price_id: str
    cost_micros: int
    currency_code: str
    billed: bool
    ledger_transaction_id: str
    overage_transaction_id: str
    call_time: _timestamp_pb2.Timestamp
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., model_id: _Optional[str] = ..., session_id: _Optional[str] = ..., input_tokens: _Optional[int] = ..., cached_input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., reasoning_tokens: _Optional[int] = ..., latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., time_to_first_token: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., outcome: _Optional[_Union[UsageOutcome, str]] = ..., error_code: _Optional[str] = ..., used_own_provider_key: _Optional[bool] = ..., hold_id: _Optional[str] = ..., price_id: _Optional[str] = ..., cost_micros: _Optional[int] = ..., currency_code: _Optional[str] = ..., billed: _Optional[bool] = ..., ledger_transaction_id: _Optional[str] = ..., overage_transaction_id: _Optional[str] = ..., call_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UsageTotals(_message.Message):
    __slots__ = ("request_count", "error_count", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens", "cost_micros", "billed_micros")
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_COUNT_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_MICROS_FIELD_NUMBER: _ClassVar[int]
    BILLED_MICROS_FIELD_NUMBER: _ClassVar[int]
    request_count: int
    error_count: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost_micros: int
    billed_micros: int
    def __init__(self, request_count: _Optional[int] = ..., error_count: _Optional[int] = ..., input_tokens: _Optional[int] = ..., cached_input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., reasoning_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., cost_micros: _Optional[int] = ..., billed_micros: _Optional[int] = ...) -> None: ...

class ModelUsage(_message.Message):
    __slots__ = ("model_id", "totals")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    totals: UsageTotals
    def __init__(self, model_id: _Optional[str] = ..., totals: _Optional[_Union[UsageTotals, _Mapping]] = ...) -> None: ...

class DailyUsage(_message.Message):
    __slots__ = ("day_start_time", "totals")
    DAY_START_TIME_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    day_start_time: _timestamp_pb2.Timestamp
    totals: UsageTotals
    def __init__(self, day_start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., totals: _Optional[_Union[UsageTotals, _Mapping]] = ...) -> None: ...

class ModelStats(_message.Message):
    __slots__ = ("model_id", "start_time", "end_time", "request_count", "error_count", "error_rate", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "total_tokens", "unique_users", "latency_p50", "latency_p95", "billed_micros", "currency_code", "average_rating", "rating_count")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_USERS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_FIELD_NUMBER: _ClassVar[int]
    BILLED_MICROS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_RATING_FIELD_NUMBER: _ClassVar[int]
    RATING_COUNT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    request_count: int
    error_count: int
    error_rate: float
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    total_tokens: int
    unique_users: int
    latency_p50: _duration_pb2.Duration
    latency_p95: _duration_pb2.Duration
    billed_micros: int
    currency_code: str
    average_rating: float
    rating_count: int
    def __init__(self, model_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_count: _Optional[int] = ..., error_count: _Optional[int] = ..., error_rate: _Optional[float] = ..., input_tokens: _Optional[int] = ..., cached_input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., reasoning_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ..., unique_users: _Optional[int] = ..., latency_p50: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., latency_p95: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., billed_micros: _Optional[int] = ..., currency_code: _Optional[str] = ..., average_rating: _Optional[float] = ..., rating_count: _Optional[int] = ...) -> None: ...

class RankedModel(_message.Message):
    __slots__ = ("rank", "model_id", "provider", "display_name", "request_count", "total_tokens", "billed_micros", "currency_code", "average_rating", "rating_count", "previous_request_count", "growth")
    RANK_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BILLED_MICROS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_RATING_FIELD_NUMBER: _ClassVar[int]
    RATING_COUNT_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    GROWTH_FIELD_NUMBER: _ClassVar[int]
    rank: int
    model_id: str
    provider: str
    display_name: str
    request_count: int
    total_tokens: int
    billed_micros: int
    currency_code: str
    average_rating: float
    rating_count: int
    previous_request_count: int
    growth: float
    def __init__(self, rank: _Optional[int] = ..., model_id: _Optional[str] = ..., provider: _Optional[str] = ..., display_name: _Optional[str] = ..., request_count: _Optional[int] = ..., total_tokens: _Optional[int] = ..., billed_micros: _Optional[int] = ..., currency_code: _Optional[str] = ..., average_rating: _Optional[float] = ..., rating_count: _Optional[int] = ..., previous_request_count: _Optional[int] = ..., growth: _Optional[float] = ...) -> None: ...

class ModelRating(_message.Message):
    __slots__ = ("user_id", "model_id", "stars", "review", "create_time", "update_time")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STARS_FIELD_NUMBER: _ClassVar[int]
    REVIEW_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    model_id: str
    stars: int
    review: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, user_id: _Optional[str] = ..., model_id: _Optional[str] = ..., stars: _Optional[int] = ..., review: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UpsertModelRequest(_message.Message):
    __slots__ = ("request_id", "model", "update_mask", "price")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: Model
    update_mask: _field_mask_pb2.FieldMask
    price: ModelPrice
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[_Union[Model, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., price: _Optional[_Union[ModelPrice, _Mapping]] = ...) -> None: ...

class UpsertModelResponse(_message.Message):
    __slots__ = ("model", "created", "price")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    model: Model
    created: bool
    price: ModelPrice
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ..., created: _Optional[bool] = ..., price: _Optional[_Union[ModelPrice, _Mapping]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("provider", "status", "page_size", "page_token")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    provider: str
    status: ModelStatus
    page_size: int
    page_token: str
    def __init__(self, provider: _Optional[str] = ..., status: _Optional[_Union[ModelStatus, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListModelPricesRequest(_message.Message):
    __slots__ = ("model_id", "page_size", "page_token")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    page_size: int
    page_token: str
    def __init__(self, model_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelPricesResponse(_message.Message):
    __slots__ = ("prices", "next_page_token")
    PRICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prices: _containers.RepeatedCompositeFieldContainer[ModelPrice]
    next_page_token: str
    def __init__(self, prices: _Optional[_Iterable[_Union[ModelPrice, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RecordUsageRequest(_message.Message):
    __slots__ = ("request_id", "user_id", "model_id", "session_id", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens", "latency", "time_to_first_token", "outcome", "error_code", "used_own_provider_key", "hold_id", "call_time")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASONING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    USED_OWN_PROVIDER_KEY_FIELD_NUMBER: _ClassVar[int]
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    CALL_TIME_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    model_id: str
    session_id: str
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    latency: _duration_pb2.Duration
    time_to_first_token: _duration_pb2.Duration
    outcome: UsageOutcome
    error_code: str
    used_own_provider_key: bool
    hold_id: str
    call_time: _timestamp_pb2.Timestamp
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., model_id: _Optional[str] = ..., session_id: _Optional[str] = ..., input_tokens: _Optional[int] = ..., cached_input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., reasoning_tokens: _Optional[int] = ..., latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., time_to_first_token: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., outcome: _Optional[_Union[UsageOutcome, str]] = ..., error_code: _Optional[str] = ..., used_own_provider_key: _Optional[bool] = ..., hold_id: _Optional[str] = ..., call_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RecordUsageResponse(_message.Message):
    __slots__ = ("record",)
    RECORD_FIELD_NUMBER: _ClassVar[int]
    record: UsageRecord
    def __init__(self, record: _Optional[_Union[UsageRecord, _Mapping]] = ...) -> None: ...

class RecordUsageBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[RecordUsageRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[RecordUsageRequest, _Mapping]]] = ...) -> None: ...

class RecordUsageResult(_message.Message):
    __slots__ = ("index", "record", "error_code", "error_reason", "error_message", "error_fields")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELDS_FIELD_NUMBER: _ClassVar[int]
    index: int
    record: UsageRecord
    error_code: str
    error_reason: str
    error_message: str
    error_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, index: _Optional[int] = ..., record: _Optional[_Union[UsageRecord, _Mapping]] = ..., error_code: _Optional[str] = ..., error_reason: _Optional[str] = ..., error_message: _Optional[str] = ..., error_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class RecordUsageBatchResponse(_message.Message):
    __slots__ = ("results", "recorded_count", "failed_count")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    RECORDED_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILED_COUNT_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[RecordUsageResult]
    recorded_count: int
    failed_count: int
    def __init__(self, results: _Optional[_Iterable[_Union[RecordUsageResult, _Mapping]]] = ..., recorded_count: _Optional[int] = ..., failed_count: _Optional[int] = ...) -> None: ...

class GetUserUsageRequest(_message.Message):
    __slots__ = ("user_id", "start_time", "end_time", "currency_code")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    currency_code: str
    def __init__(self, user_id: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., currency_code: _Optional[str] = ...) -> None: ...

class GetUserUsageResponse(_message.Message):
    __slots__ = ("totals", "models", "days", "currency_code", "start_time", "end_time")
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DAYS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    totals: UsageTotals
    models: _containers.RepeatedCompositeFieldContainer[ModelUsage]
    days: _containers.RepeatedCompositeFieldContainer[DailyUsage]
    currency_code: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, totals: _Optional[_Union[UsageTotals, _Mapping]] = ..., models: _Optional[_Iterable[_Union[ModelUsage, _Mapping]]] = ..., days: _Optional[_Iterable[_Union[DailyUsage, _Mapping]]] = ..., currency_code: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetModelStatsRequest(_message.Message):
    __slots__ = ("model_id", "window", "start_time", "end_time")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    window: _duration_pb2.Duration
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, model_id: _Optional[str] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetModelStatsResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: ModelStats
    def __init__(self, stats: _Optional[_Union[ModelStats, _Mapping]] = ...) -> None: ...

class ListTopModelsRequest(_message.Message):
    __slots__ = ("metric", "window", "start_time", "end_time", "provider", "status", "currency_code", "min_request_count", "limit")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_CODE_FIELD_NUMBER: _ClassVar[int]
    MIN_REQUEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    metric: ModelMetric
    window: _duration_pb2.Duration
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    provider: str
    status: ModelStatus
    currency_code: str
    min_request_count: int
    limit: int
    def __init__(self, metric: _Optional[_Union[ModelMetric, str]] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., provider: _Optional[str] = ..., status: _Optional[_Union[ModelStatus, str]] = ..., currency_code: _Optional[str] = ..., min_request_count: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ListTopModelsResponse(_message.Message):
    __slots__ = ("models", "start_time", "end_time")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[RankedModel]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, models: _Optional[_Iterable[_Union[RankedModel, _Mapping]]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RateModelRequest(_message.Message):
    __slots__ = ("request_id", "user_id", "model_id", "stars", "review")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STARS_FIELD_NUMBER: _ClassVar[int]
    REVIEW_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: str
    model_id: str
    stars: int
    review: str
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[str] = ..., model_id: _Optional[str] = ..., stars: _Optional[int] = ..., review: _Optional[str] = ...) -> None: ...

class RateModelResponse(_message.Message):
    __slots__ = ("rating",)
    RATING_FIELD_NUMBER: _ClassVar[int]
    rating: ModelRating
    def __init__(self, rating: _Optional[_Union[ModelRating, _Mapping]] = ...) -> None: ...

class ListModelRatingsRequest(_message.Message):
    __slots__ = ("model_id", "stars", "user_id", "page_size", "page_token")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STARS_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    stars: int
    user_id: str
    page_size: int
    page_token: str
    def __init__(self, model_id: _Optional[str] = ..., stars: _Optional[int] = ..., user_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelRatingsResponse(_message.Message):
    __slots__ = ("ratings", "next_page_token")
    RATINGS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ratings: _containers.RepeatedCompositeFieldContainer[ModelRating]
    next_page_token: str
    def __init__(self, ratings: _Optional[_Iterable[_Union[ModelRating, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
