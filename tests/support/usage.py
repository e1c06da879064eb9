"""Helpers for the UsageService tests: catalog models, funded users, usage requests, inspection."""

from __future__ import annotations

import datetime
import math
from fractions import Fraction
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from qdata.v1 import ledger_pb2, usage_pb2
from tests.support.calls import create_user, rid
from tests.support.database import sql

SUCCESS = usage_pb2.USAGE_OUTCOME_SUCCESS
ERROR = usage_pb2.USAGE_OUTCOME_ERROR


async def fold(api) -> int:
    """Folds all queued usage into the rollups now (what the background folder does)."""
    return (await sql(api, "SELECT usage_fold(1000000) AS n"))[0]["n"]


def ts(value: datetime.datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def ms(milliseconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(int(milliseconds * 1_000_000))
    return out


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def price(
    input_: int = 150_000,
    output: int = 600_000,
    cached: int = 75_000,
    reasoning: int = 600_000,
    currency: str = "USD",
    effective: datetime.datetime | None = None,
) -> usage_pb2.ModelPrice:
    p = usage_pb2.ModelPrice(
        currency_code=currency,
        input_micros_per_million_tokens=input_,
        output_micros_per_million_tokens=output,
        cached_input_micros_per_million_tokens=cached,
        reasoning_micros_per_million_tokens=reasoning,
    )
    if effective is not None:
        p.effective_time.CopyFrom(ts(effective))
    return p


async def create_model(
    api, model_id: str = "openai/gpt-4o-mini", provider: str | None = None, **price_fields
) -> usage_pb2.UpsertModelResponse:
    """A catalog model with one price version in force from now."""
    return await api.usage.UpsertModel(
        usage_pb2.UpsertModelRequest(
            request_id=rid(),
            model=usage_pb2.Model(
                id=model_id, provider=provider or model_id.split("/")[0], display_name=model_id.title()
            ),
            price=price(**price_fields),
        )
    )


async def funded_user(api, micros: int = 25_000_000, currency: str = "USD"):
    """A new user with a promotional deposit of micros."""
    user = await create_user(api)
    if micros:
        await api.ledger.Deposit(
            ledger_pb2.DepositRequest(
                request_id=rid(),
                user_id=user.id,
                amount_micros=micros,
                currency_code=currency,
                source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION,
                description="test credits",
            )
        )
    return user


async def balance(api, user_id: str, currency: str = "USD") -> ledger_pb2.Balance:
    response = await api.ledger.GetBalance(ledger_pb2.GetBalanceRequest(user_id=user_id, currency_code=currency))
    return response.balance


def usage(user_id: str, model_id: str = "openai/gpt-4o-mini", **fields) -> usage_pb2.RecordUsageRequest:
    """A valid RecordUsageRequest (a successful call with a latency), fields overridden."""
    values: dict[str, Any] = {
        "request_id": rid(),
        "user_id": user_id,
        "model_id": model_id,
        "input_tokens": 1000,
        "output_tokens": 200,
        "outcome": SUCCESS,
        "latency": ms(800),
    }
    values.update(fields)
    return usage_pb2.RecordUsageRequest(**values)


def expected_cost(p: usage_pb2.ModelPrice, request: usage_pb2.RecordUsageRequest) -> int:
    """The contract's rounding rule, computed independently in integers."""
    total = (
        request.input_tokens * p.input_micros_per_million_tokens
        + request.cached_input_tokens * p.cached_input_micros_per_million_tokens
        + request.output_tokens * p.output_micros_per_million_tokens
        + request.reasoning_tokens * p.reasoning_micros_per_million_tokens
    )
    return -(-total // 1_000_000)


def nearest_rank(values: list[int], percent: int) -> int:
    """The exact nearest-rank percentile of values: the ceil(percent / 100 * n)-th smallest."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(Fraction(percent, 100) * len(ordered))) - 1]
