"""Usage rows to qdata.v1 messages."""

from __future__ import annotations

import datetime
from typing import Any, overload

from google.protobuf import duration_pb2

from qdata.v1 import usage_pb2
from qdata_server.usage import rules
from qdata_server.users.convert import timestamp

# The latency histogram (usage_latency_bucket in db/functions/usage.sql): bucket i >= 1 holds
# [1 us * GAMMA^(i-1), 1 us * GAMMA^i); bucket 0 holds [0, 1 us).
GAMMA = 1.05
BUCKET_BASE_NANOS = 1000


def _id(value: Any) -> str:
    return str(value) if value is not None else ""


@overload
def duration(nanos: int) -> duration_pb2.Duration: ...
@overload
def duration(nanos: None) -> None: ...
@overload
def duration(nanos: int | None) -> duration_pb2.Duration | None: ...
def duration(nanos: int | None) -> duration_pb2.Duration | None:
    if nanos is None:
        return None
    return duration_pb2.Duration(seconds=nanos // 10**9, nanos=nanos % 10**9)


def bucket_value_nanos(bucket: int) -> int:
    """The value that stands for a histogram bucket: DDSketch's 2 * lower * gamma / (gamma + 1),
    within (gamma - 1) / (gamma + 1) = 2.44% of every value in the bucket (bucket 0: 0)."""
    if bucket <= 0:
        return 0
    lower = BUCKET_BASE_NANOS * GAMMA ** (bucket - 1)
    return round(2 * lower * GAMMA / (GAMMA + 1))


def _parse_time(value: str | None) -> datetime.datetime | None:
    return datetime.datetime.fromisoformat(value) if value else None


@overload
def price(row: dict[str, Any]) -> usage_pb2.ModelPrice: ...
@overload
def price(row: None) -> None: ...
@overload
def price(row: dict[str, Any] | None) -> usage_pb2.ModelPrice | None: ...
def price(row: dict[str, Any] | None) -> usage_pb2.ModelPrice | None:
    """A ModelPrice from a model_prices row (or its to_jsonb form, whose times are strings)."""
    if row is None:
        return None
    effective, created = row["effective_at"], row["created_at"]
    if isinstance(effective, str):
        effective, created = _parse_time(effective), _parse_time(created)
    return usage_pb2.ModelPrice(
        id=str(row["price_id"]),
        model_id=row["model_id"],
        currency_code=row["currency_code"],
        input_micros_per_million_tokens=row["input_micros_per_million"],
        output_micros_per_million_tokens=row["output_micros_per_million"],
        cached_input_micros_per_million_tokens=row["cached_input_micros_per_million"],
        reasoning_micros_per_million_tokens=row["reasoning_micros_per_million"],
        effective_time=timestamp(effective),
        create_time=timestamp(created),
    )


def model(row: dict[str, Any]) -> usage_pb2.Model:
    """A Model from a models row; current_price and next_price when the row carries them."""
    return usage_pb2.Model(
        id=row["model_id"],
        provider=row["provider"],
        display_name=row["display_name"],
        context_window_tokens=row["context_window_tokens"],
        status=rules.STATUS_TO_PROTO[row["status"]],
        current_price=price(row.get("current_price")),
        next_price=price(row.get("next_price")),
        create_time=timestamp(row["created_at"]),
        update_time=timestamp(row["updated_at"]),
    )


def usage_record(row: dict[str, Any]) -> usage_pb2.UsageRecord:
    """A UsageRecord from a usage_records row joined with its price's currency_code."""
    return usage_pb2.UsageRecord(
        id=str(row["usage_record_id"]),
        request_id=row["request_id"],
        user_id=str(row["user_id"]),
        model_id=row["model_id"],
        session_id=_id(row["session_id"]),
        input_tokens=row["input_tokens"],
        cached_input_tokens=row["cached_input_tokens"],
        output_tokens=row["output_tokens"],
        reasoning_tokens=row["reasoning_tokens"],
        latency=duration(row["latency_ns"]),
        time_to_first_token=duration(row["time_to_first_token_ns"]),
        outcome=rules.OUTCOME_TO_PROTO[row["outcome"]],
        error_code=row["error_code"],
        used_own_provider_key=row["used_own_provider_key"],
        hold_id=_id(row["hold_id"]),
        price_id=str(row["price_id"]),
        cost_micros=row["cost_micros"],
        currency_code=row["currency_code"],
        billed=row["billed"],
        ledger_transaction_id=_id(row["ledger_transaction_id"]),
        overage_transaction_id=_id(row["overage_transaction_id"]),
        call_time=timestamp(row["called_at"]),
        create_time=timestamp(row["created_at"]),
    )


def totals(row: dict[str, Any]) -> usage_pb2.UsageTotals:
    tokens = row["input_tokens"] + row["cached_input_tokens"] + row["output_tokens"] + row["reasoning_tokens"]
    return usage_pb2.UsageTotals(
        request_count=row["request_count"],
        error_count=row["error_count"],
        input_tokens=row["input_tokens"],
        cached_input_tokens=row["cached_input_tokens"],
        output_tokens=row["output_tokens"],
        reasoning_tokens=row["reasoning_tokens"],
        total_tokens=tokens,
        cost_micros=row["cost_micros"],
        billed_micros=row["billed_micros"],
    )


def rating(row: dict[str, Any]) -> usage_pb2.ModelRating:
    return usage_pb2.ModelRating(
        user_id=str(row["user_id"]),
        model_id=row["model_id"],
        stars=row["stars"],
        review=row["review"],
        create_time=timestamp(row["created_at"]),
        update_time=timestamp(row["updated_at"]),
    )
