"""Budgets for the enforcement tests (tests/api/test_budget_enforcement*.py).

`create_budget` makes a budget as BudgetService.CreateBudget does: under the account lock
(ledger_lock_account), the budget row, then budget_backfill (db/functions/budget_enforcement.sql)
so the budget starts with the spend already made in its current period, judged by the server's
budgets' clock. It writes as the database owner; once BudgetService serves, it becomes a call of
CreateBudget. `usage_of` and `alerts_of` read what the database holds for a budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from google.protobuf import duration_pb2
from psycopg.rows import dict_row

from qdata.v1 import ledger_pb2, usage_pb2
from tests.support.calls import rid
from tests.support.server import Api
from tests.support.usage import create_model, usage


def _clock_setting(api: Api) -> str:
    clock = api.server.clock
    return clock.setting() if clock is not None else ""


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
    """A new budget of user_id; returns its id."""
    async with await psycopg.AsyncConnection.connect(api.database_url) as conn, conn.transaction():
        await conn.execute("SELECT set_config('qdata.clock', %s, true)", (_clock_setting(api),))
        await conn.execute("SELECT ledger_lock_account(%s, %s)", (user_id, currency_code))
        cur = await conn.execute(
            "INSERT INTO budgets (user_id, currency_code, limit_micros, period, time_zone, model_id, caller,"
            " enforcement, alert_thresholds_percent)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING budget_id",
            (
                user_id,
                currency_code,
                limit_micros,
                period,
                time_zone,
                model_id or None,
                caller or None,
                enforcement,
                sorted(thresholds),
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        budget_id = row[0]
        await conn.execute("SELECT budget_backfill(%s, %s)", (user_id, budget_id))
    return str(budget_id)


async def update_budget(api: Api, user_id: str, budget_id: str, **values: Any) -> None:
    """Changes a budget's mutable columns (limit_micros, enforcement, ...) under the account lock."""
    async with await psycopg.AsyncConnection.connect(api.database_url) as conn, conn.transaction():
        await conn.execute(
            "SELECT ledger_lock_account(user_id, currency_code) FROM budgets WHERE user_id = %s AND budget_id = %s",
            (user_id, budget_id),
        )
        for column, value in values.items():
            assert column in {"limit_micros", "enforcement", "alert_thresholds_percent", "display_name"}, column
            await conn.execute(
                psycopg.sql.SQL(
                    "UPDATE budgets SET {} = %s, updated_at = now() WHERE user_id = %s AND budget_id = %s"
                ).format(psycopg.sql.Identifier(column)),
                (value, user_id, budget_id),
            )


async def usage_of(api: Api, user_id: str, budget_id: str) -> dict[str, Any]:
    """budget_usage of the budget now (the server's budgets' clock): period, spent, held, consumed."""
    async with await psycopg.AsyncConnection.connect(api.database_url, row_factory=dict_row) as conn:
        async with conn.transaction():
            await conn.execute("SELECT set_config('qdata.clock', %s, true)", (_clock_setting(api),))
            cur = await conn.execute(
                "SELECT period_start, period_end, spent_micros, held_micros FROM budget_usage(%s, %s)",
                (user_id, budget_id),
            )
            row = await cur.fetchone()
    assert row is not None, "no such budget"
    return {**row, "consumed_micros": row["spent_micros"] + row["held_micros"]}


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
