"""Budgets under concurrency (issue 16): exact however many calls run at once, batches included.

The check runs in the spending transaction under the account lock every writer of the ledger
takes, so concurrent Charge, CreateHold and RecordUsage calls on one user can never together
exceed a HARD budget, and each threshold alerts once.
"""

from __future__ import annotations

import asyncio

import grpc
import psycopg

from qdata.v1 import ledger_pb2, usage_pb2
from tests.support.budgets import MODEL, alerts_of, charge, create_budget, hold, priced, record, usage_of
from tests.support.calls import error_info, rid
from tests.support.usage import funded_user


async def outcome_of(call) -> str:
    """'ok', or the reason the call failed with."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
        return error_info(error).reason
    return "ok"


async def verify_clean(api, user_id: str) -> None:
    response = await api.ledger.VerifyLedger(ledger_pb2.VerifyLedgerRequest(user_id=user_id))
    assert list(response.discrepancies) == []


async def test_32_concurrent_spends_of_100_fill_a_daily_budget_of_1000_exactly(api):
    await priced(api)
    user = await funded_user(api)
    budget = await create_budget(api, user.id, limit_micros=1_000, thresholds=[50, 80, 100])
    calls = []
    for i in range(32):
        kind = i % 3
        if kind == 0:
            calls.append(api.usage.RecordUsage(record(user.id, 100)))
        elif kind == 1:
            calls.append(charge(api, user.id, 100))
        else:
            calls.append(hold(api, user.id, 100))
    outcomes = await asyncio.gather(*(outcome_of(c) for c in calls))
    assert (outcomes.count("ok"), outcomes.count("BUDGET_EXCEEDED")) == (10, 22)
    got = await usage_of(api, user.id, budget)
    assert got["spent_micros"] + got["held_micros"] == 1_000
    alerts = await alerts_of(api, user.id, budget)
    assert sorted(a["threshold_percent"] for a in alerts) == [50, 80, 100]
    assert {a["threshold_percent"]: a["consumed_micros"] for a in alerts} == {50: 500, 80: 800, 100: 1_000}
    await verify_clean(api, user.id)


async def test_concurrent_batches_record_only_the_items_that_fit_in_order(api):
    await priced(api)
    user = await funded_user(api)
    budget = await create_budget(api, user.id, limit_micros=1_000, thresholds=[100])
    batches = [usage_pb2.RecordUsageBatchRequest(requests=[record(user.id, 100) for _ in range(8)]) for _ in range(4)]
    responses = await asyncio.gather(*(api.usage.RecordUsageBatch(b) for b in batches))
    recorded = 0
    for response in responses:
        reasons = [r.error_reason for r in response.results]
        fits = reasons.count("")
        # Within a batch, the items that fit come first, in request order; the rest are refused.
        assert reasons == [""] * fits + ["BUDGET_EXCEEDED"] * (len(reasons) - fits)
        recorded += fits
    assert recorded == 10
    assert (await usage_of(api, user.id, budget))["spent_micros"] == 1_000
    assert [a["threshold_percent"] for a in await alerts_of(api, user.id, budget)] == [100]
    await verify_clean(api, user.id)


async def test_a_batch_over_the_budget_falls_back_item_by_item_without_a_warning(api):
    await priced(api)
    user = await funded_user(api)
    await create_budget(api, user.id, limit_micros=1_000)
    items = [record(user.id, 100) for _ in range(12)]
    notices: list[str] = []
    async with await psycopg.AsyncConnection.connect(api.database_url) as conn:
        conn.add_notice_handler(
            lambda diagnostic: notices.append(f"{diagnostic.severity}: {diagnostic.message_primary}")
        )
        cur = await conn.execute(
            "SELECT o_status, o_error_constraint FROM usage_record_many("
            " 'anonymous', '/qdata.v1.UsageService/RecordUsage', %(ids)s::text[], %(hashes)s::bytea[],"
            " %(users)s::uuid[], %(models)s::text[], %(sessions)s::uuid[], %(input)s::bigint[], %(zeros)s::bigint[],"
            " %(zeros)s::bigint[], %(zeros)s::bigint[], %(zeros)s::bigint[], %(nulls)s::bigint[], %(outcomes)s::text[],"
            " %(codes)s::text[], %(own)s::boolean[], %(sessions)s::uuid[], %(times)s::timestamptz[]) ORDER BY o_item",
            {
                "ids": [i.request_id for i in items],
                "hashes": [b"h"] * 12,
                "users": [user.id] * 12,
                "models": [MODEL] * 12,
                "sessions": [None] * 12,
                "input": [i.input_tokens for i in items],
                "zeros": [0] * 12,
                "nulls": [None] * 12,
                "outcomes": ["success"] * 12,
                "codes": [""] * 12,
                "own": [False] * 12,
                "times": [None] * 12,
            },
        )
        results = await cur.fetchall()
        await conn.commit()
    assert results == [("recorded", None)] * 10 + [("rejected", "budget_exceeded")] * 2
    assert [n for n in notices if n.startswith("WARNING")] == []


async def test_a_batch_within_the_budget_is_recorded_at_once(api):
    await priced(api)
    user = await funded_user(api)
    budget = await create_budget(api, user.id, limit_micros=1_000)
    response = await api.usage.RecordUsageBatch(
        usage_pb2.RecordUsageBatchRequest(requests=[record(user.id, 100, request_id=rid()) for _ in range(10)])
    )
    assert [r.error_reason for r in response.results] == [""] * 10
    assert (await usage_of(api, user.id, budget))["spent_micros"] == 1_000
