"""Budgets for the enforcement tests (tests/api/test_budget_enforcement*.py).

`create_budget`, `update_budget` and `usage_of` go through BudgetService (CreateBudget,
UpdateBudget, GetBudget). `alerts_of` reads budget_alerts as the owner: it sees an alert the
moment its transaction commits, and orders a transaction's alerts by threshold, where the feed
(ListBudgetAlerts, tested in tests/api/test_budgets_alerts.py) waits for older transactions and
orders by id.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import psycopg
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2
from psycopg.rows import dict_row

from qdata.v1 import budget_pb2, ledger_pb2, usage_pb2
from tests.support.calls import rid
from tests.support.server import Api
from tests.support.usage import create_model, usage

_PERIODS = {
    "daily": budget_pb2.BUDGET_PERIOD_DAILY,
    "weekly": budget_pb2.BUDGET_PERIOD_WEEKLY,
    "monthly": budget_pb2.BUDGET_PERIOD_MONTHLY,
    "lifetime": budget_pb2.BUDGET_PERIOD_LIFETIME,
}
_ENFORCEMENTS = {"hard": budget_pb2.BUDGET_ENFORCEMENT_HARD, "soft": budget_pb2.BUDGET_ENFORCEMENT_SOFT}


async def create_budget(
    api: Api,
    user_id: str,
    *,
    limit_micros: int,
    period: str = "daily",
    time_zone: str = "UTC",
    model_id: str = "",
    caller: str = "",
    enforcement: str = "hard",
    thresholds: Sequence[int] = (),
    currency_code: str = "USD",
) -> str:
    """A new budget of user_id, made with BudgetService.CreateBudget; returns its id."""
    response = await api.budgets.CreateBudget(
        budget_pb2.CreateBudgetRequest(
            request_id=rid(),
            user_id=user_id,
            budget=budget_pb2.Budget(
                currency_code=currency_code,
                limit_micros=limit_micros,
                period=_PERIODS[period],
                time_zone=time_zone,
                model_id=model_id,
                caller=caller,
                enforcement=_ENFORCEMENTS[enforcement],
                alert_thresholds_percent=list(thresholds),
            ),
        )
    )
    return response.budget.id


async def update_budget(api: Api, user_id: str, budget_id: str, **values: Any) -> None:
    """Changes a budget's mutable fields (limit_micros, enforcement, ...) with UpdateBudget."""
    budget = budget_pb2.Budget(id=budget_id)
    for field, value in values.items():
        assert field in {"limit_micros", "enforcement", "alert_thresholds_percent", "display_name"}, field
        if field == "enforcement":
            budget.enforcement = _ENFORCEMENTS[value]
        elif field == "alert_thresholds_percent":
            budget.alert_thresholds_percent.extend(value)
        else:
            setattr(budget, field, value)
    await api.budgets.UpdateBudget(
        budget_pb2.UpdateBudgetRequest(
            request_id=rid(),
            user_id=user_id,
            budget=budget,
            update_mask=field_mask_pb2.FieldMask(paths=list(values)),
        )
    )


def _time(stamp: timestamp_pb2.Timestamp, present: bool) -> datetime.datetime | None:
    return stamp.ToDatetime(tzinfo=datetime.UTC) if present else None


async def usage_of(api: Api, user_id: str, budget_id: str) -> dict[str, Any]:
    """The budget's current period as GetBudget reports it (the server's budgets' clock): period
    bounds (None for a lifetime budget), spent, held and consumed."""
    response = await api.budgets.GetBudget(budget_pb2.GetBudgetRequest(user_id=user_id, budget_id=budget_id))
    current = response.budget.current_period
    return {
        "period_start": _time(current.period_start, current.HasField("period_start")),
        "period_end": _time(current.period_end, current.HasField("period_end")),
        "spent_micros": current.spent_micros,
        "held_micros": current.held_micros,
        "consumed_micros": current.spent_micros + current.held_micros,
    }


async def alerts_of(api: Api, user_id: str, budget_id: str | None = None) -> list[dict[str, Any]]:
    """The user's budget alerts (of one budget), as the owner reads them, in commit order."""
    async with await psycopg.AsyncConnection.connect(api.database_url, row_factory=dict_row) as conn:
        cur = await conn.execute(
            "SELECT budget_id::text AS budget_id, threshold_percent, limit_micros, consumed_micros,"
            " CASE WHEN period_start = '-infinity' THEN NULL ELSE period_start END AS period_start, period_end"
            " FROM budget_alerts WHERE user_id = %s AND (%s::uuid IS NULL OR budget_id = %s::uuid)"
            " ORDER BY written_xid, threshold_percent",
            (user_id, budget_id, budget_id),
        )
        return await cur.fetchall()


# ---- spend through the API ------------------------------------------------------------------

MODEL = "test/budget-model"
OTHER_MODEL = "test/other-model"


async def priced(api, model_id: str = MODEL) -> None:
    """A model whose call of usage(..., input_tokens=n, output_tokens=0) costs exactly n / 10 micros."""
    await create_model(api, model_id, input_=100_000, output=0, cached=0, reasoning=0)


def record(user_id: str, micros: int, model_id: str = MODEL, **fields) -> usage_pb2.RecordUsageRequest:
    """A RecordUsage request that bills exactly `micros`."""
    return usage(user_id, model_id, input_tokens=micros * 10, output_tokens=0, **fields)


async def charge(api, user_id: str, micros: int, request_id: str | None = None) -> ledger_pb2.Transaction:
    response = await api.ledger.Charge(
        ledger_pb2.ChargeRequest(
            request_id=request_id or rid(), user_id=user_id, amount_micros=micros, currency_code="USD"
        )
    )
    return response.transaction


async def hold(api, user_id: str, micros: int, ttl_seconds: float = 600) -> ledger_pb2.Hold:
    ttl = duration_pb2.Duration()
    ttl.FromNanoseconds(int(ttl_seconds * 1e9))
    response = await api.ledger.CreateHold(
        ledger_pb2.CreateHoldRequest(
            request_id=rid(), user_id=user_id, amount_micros=micros, currency_code="USD", ttl=ttl
        )
    )
    return response.hold


async def capture(api, user_id: str, hold_id: str, micros: int) -> ledger_pb2.Transaction:
    response = await api.ledger.CaptureHold(
        ledger_pb2.CaptureHoldRequest(request_id=rid(), user_id=user_id, hold_id=hold_id, amount_micros=micros)
    )
    return response.transaction
