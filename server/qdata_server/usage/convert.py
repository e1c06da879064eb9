"""Usage rows to qdata.v1 messages."""

from __future__ import annotations

import datetime
from typing import Any, overload

from qdata.v1 import usage_pb2

# duration is re-exported: usage/stats.py calls convert.duration.
from qdata_server.convert import duration as duration
from qdata_server.convert import optional_id, same_named, timestamp
from qdata_server.usage import rules

# The latency histogram (usage_latency_bucket in db/functions/usage.sql): bucket i >= 1 holds
# [1 us * GAMMA^(i-1), 1 us * GAMMA^i); bucket 0 holds [0, 1 us).
GAMMA = 1.05
BUCKET_BASE_NANOS = 1000
# The kinds of tokens a call counts and a price version prices: usage_records and usage totals
# have a <kind>_tokens column each, model_prices a <kind>_micros_per_million column (the
# ModelPrice field <kind>_micros_per_million_tokens).
TOKEN_KINDS = ("input", "output", "cached_input", "reasoning")
TOKEN_COLUMNS = tuple(f"{kind}_tokens" for kind in TOKEN_KINDS)
# What a usage aggregate sums: UsageTotals has a field of the same name for each.
TOTAL_COLUMNS = ("request_count", "error_count", *TOKEN_COLUMNS, "cost_micros", "billed_micros")


def price_field(kind: str) -> str:
    """The ModelPrice field that prices one kind of token."""
    return f"{kind}_micros_per_million_tokens"


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
        **same_named(row, "model_id currency_code"),
        **{price_field(kind): row[f"{kind}_micros_per_million"] for kind in TOKEN_KINDS},
        effective_time=timestamp(effective),
        create_time=timestamp(created),
    )


def model(row: dict[str, Any]) -> usage_pb2.Model:
    """A Model from a models row; current_price and next_price when the row carries them."""
    return usage_pb2.Model(
        id=row["model_id"],
        **same_named(row, "provider display_name context_window_tokens"),
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
        user_id=str(row["user_id"]),
        session_id=optional_id(row["session_id"]),
        **same_named(row, TOKEN_COLUMNS),
        **same_named(row, "request_id model_id error_code used_own_provider_key cost_micros currency_code billed"),
        latency=duration(row["latency_ns"]),
        time_to_first_token=duration(row["time_to_first_token_ns"]),
        outcome=rules.OUTCOME_TO_PROTO[row["outcome"]],
        hold_id=optional_id(row["hold_id"]),
        price_id=str(row["price_id"]),
        ledger_transaction_id=optional_id(row["ledger_transaction_id"]),
        overage_transaction_id=optional_id(row["overage_transaction_id"]),
        call_time=timestamp(row["called_at"]),
        create_time=timestamp(row["created_at"]),
    )


def total_tokens(row: dict[str, Any]) -> int:
    """The sum of the row's token counts of every kind."""
    return sum(row[column] for column in TOKEN_COLUMNS)


def totals(row: dict[str, Any]) -> usage_pb2.UsageTotals:
    return usage_pb2.UsageTotals(**same_named(row, TOTAL_COLUMNS), total_tokens=total_tokens(row))


def rating(row: dict[str, Any]) -> usage_pb2.ModelRating:
    return usage_pb2.ModelRating(
        user_id=str(row["user_id"]),
        **same_named(row, "model_id stars review"),
        create_time=timestamp(row["created_at"]),
        update_time=timestamp(row["updated_at"]),
    )
