"""RecordUsageBatch's set-based path (usage_record_many) decides every item as RecordUsage would.

The batch records all its items with a fixed number of statements, so the per-item rules are
computed over the whole batch instead of by one function call per item: the running balance of
each account in request order, holds resolved by an earlier item of the same batch, expired holds,
overages, rejections that must leave nothing behind. Each test here compares the batch with what
RecordUsage does one call at a time, or checks what a rejected item left (nothing).

Already covered elsewhere (tests/api/test_usage_recording.py): per-item failures of every kind
in a batch of more than one former chunk, in-batch duplicates and REQUEST_ID_REUSED, resending a
batch, replays across RecordUsage and RecordUsageBatch; tests/api/test_late_replays.py: a late
replay whose idempotency record was purged; tests/api/test_usage_hostile.py: hostile values.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from qdata.v1 import ledger_pb2, usage_pb2
from tests.support.calls import outcome, rid
from tests.support.database import sql
from tests.support.server import Api
from tests.support.usage import ERROR, balance, create_model, funded_user, usage

MODEL = "openai/gpt-4o-mini"
# 1,000 input and 200 output tokens: 150 + 120 = 270 micros; 1,000 input tokens alone: 150.
COST = 270
SMALL = {"input_tokens": 1000, "output_tokens": 0}
# What a request_id can leave behind, table by table.
LEFT_BY_REQUEST = {
    "usage_records": "SELECT request_id FROM usage_records WHERE request_id = ANY (%s)",
    "idempotency_keys": "SELECT request_id FROM idempotency_keys WHERE request_id = ANY (%s)",
    "audit_events": "SELECT request_id FROM audit_events WHERE request_id = ANY (%s)",
    "ledger_transactions": "SELECT request_id FROM ledger_transactions WHERE request_id = ANY (%s)",
}


async def _hold(api: Api, user_id: str, amount: int) -> str:
    response = await api.ledger.CreateHold(
        ledger_pb2.CreateHoldRequest(request_id=rid(), user_id=user_id, amount_micros=amount)
    )
    return response.hold.id


async def _world(api: Api) -> dict[str, str]:
    """Users and holds for one run of the scenario (each run gets its own)."""
    w: dict[str, str] = {}
    w["u1"] = (await funded_user(api, 3 * COST + 150)).id
    w["u2"] = (await funded_user(api, 1_000)).id
    w["h1"] = await _hold(api, w["u2"], 500)
    w["h2"] = await _hold(api, w["u2"], 400)
    w["u3"] = (await funded_user(api, 150)).id
    w["h3"] = await _hold(api, w["u3"], 100)
    w["u4"] = (await funded_user(api, 1_000)).id
    w["h4"] = await _hold(api, w["u4"], 300)
    w["h5"] = await _hold(api, w["u4"], 200)
    # h4 has expired (not yet swept): the request that next locks u4's account sweeps it.
    await sql(
        api,
        "UPDATE ledger_holds SET created_at = now() - interval '2 hours', expire_at = now() - interval '1 hour' "
        "WHERE hold_id = %s",
        [w["h4"]],
    )
    return w


def _scenario(w: dict[str, str]) -> list[usage_pb2.RecordUsageRequest]:
    """Items whose outcome depends on the items before them, users interleaved."""
    u1, u2, u3, u4 = w["u1"], w["u2"], w["u3"], w["u4"]
    return [
        usage(u1),  # ok
        usage(u2, hold_id=w["h1"]),  # capture 270 of 500, the rest released
        usage(u1),  # ok
        usage(u3, hold_id=w["h3"]),  # overage 170 > 50 available: INSUFFICIENT_FUNDS, h3 stays active
        usage(u2, hold_id=w["h1"]),  # HOLD_ALREADY_CAPTURED (by the second item)
        usage(u1),  # ok: 150 left
        usage(u4, hold_id=w["h4"]),  # HOLD_EXPIRED
        usage(u1),  # INSUFFICIENT_FUNDS (150 < 270)
        usage(u2, outcome=ERROR, error_code="http_500", hold_id=w["h2"]),  # unbilled: releases h2
        usage(u1, **SMALL),  # ok: a cheaper item after a failed one, 0 left
        usage(u3, **SMALL),  # INSUFFICIENT_FUNDS (50 available, h3 holds 100)
        usage(u2, hold_id=w["h2"]),  # HOLD_ALREADY_RELEASED (by the ninth item)
        usage(u3, used_own_provider_key=True, hold_id=w["h3"]),  # unbilled: releases h3
        usage(u4),  # ok: 1,000 - 200 held (h5; h4 swept) leaves room
        usage(u3, **SMALL),  # ok now: h3 released, 150 available
        usage(u1, used_own_provider_key=True),  # recorded, unbilled, with no balance left
        usage(u1, model_id="nobody/none"),  # MODEL_NOT_FOUND
        usage(u1, session_id=str(uuid.uuid4())),  # SESSION_NOT_FOUND
        usage(str(uuid.uuid4())),  # USER_NOT_FOUND
        usage(u2, outcome=ERROR, error_code="http_500", hold_id=w["h2"]),  # unbilled, h2 inactive: left alone
        usage(u2),  # ok: 1,000 - 270 left 730
    ]


async def _written_at_once(api: Api, request_ids: list[str]) -> bool:
    """Whether these records were written by one set of statements (one subtransaction, the set
    path's) rather than item by item (one subtransaction each, usage_record_batch's fallback)."""
    xmins = await sql(
        api, "SELECT DISTINCT xmin::text AS x FROM usage_records WHERE request_id = ANY (%s)", [request_ids]
    )
    return len(xmins) == 1


def _result(r: usage_pb2.RecordUsageResult) -> tuple[str, str]:
    return (r.error_code, r.error_reason) if r.error_code else ("OK", "")


async def _state(api: Api, w: dict[str, str]) -> dict[str, Any]:
    """Balances, hold statuses and records per user, named by role so two worlds compare."""
    out: dict[str, Any] = {}
    for name in ("u1", "u2", "u3", "u4"):
        b = await balance(api, w[name])
        records = await sql(
            api, "SELECT cost_micros, billed FROM usage_records WHERE user_id = %s ORDER BY created_at", [w[name]]
        )
        out[name] = (b.posted_micros, b.held_micros, sorted((r["cost_micros"], r["billed"]) for r in records))
    for name in ("h1", "h2", "h3", "h4", "h5"):
        held = await sql(api, "SELECT status, captured_micros FROM ledger_holds WHERE hold_id = %s", [w[name]])
        out[name] = (held[0]["status"], held[0]["captured_micros"])
    return out


async def test_a_batch_decides_each_item_as_record_usage_would_in_request_order(unfolded_api):
    api = unfolded_api
    await create_model(api)
    single_world, batch_world = await _world(api), await _world(api)

    singles = []
    for request in _scenario(single_world):
        code, reason, _ = await outcome(api.usage.RecordUsage(request))
        singles.append((code, "") if code == "OK" else (code, reason))
    requests = _scenario(batch_world)
    response = await api.usage.RecordUsageBatch(usage_pb2.RecordUsageBatchRequest(requests=requests))
    assert [_result(r) for r in response.results] == singles
    # The scenario means what its comments say.
    assert [reason or code for code, reason in singles] == [
        *("OK", "OK", "OK", "INSUFFICIENT_FUNDS", "HOLD_ALREADY_CAPTURED", "OK", "HOLD_EXPIRED"),
        *("INSUFFICIENT_FUNDS", "OK", "OK", "INSUFFICIENT_FUNDS", "HOLD_ALREADY_RELEASED", "OK", "OK"),
        *("OK", "OK", "MODEL_NOT_FOUND", "SESSION_NOT_FOUND", "USER_NOT_FOUND", "OK", "OK"),
    ]
    assert await _state(api, batch_world) == await _state(api, single_world)

    # Exactly the recorded items left rows: records, charges, audit events, queue rows, keys.
    recorded = {r.request_id for r, res in zip(requests, response.results, strict=True) if not res.error_code}
    failed = [r.request_id for r, res in zip(requests, response.results, strict=True) if res.error_code]
    ids = [r.request_id for r in requests]
    stored = await sql(api, "SELECT request_id FROM usage_records WHERE request_id = ANY (%s)", [ids])
    assert {s["request_id"] for s in stored} == recorded and len(stored) == len(recorded)
    assert await _written_at_once(api, sorted(recorded))
    for table, query in LEFT_BY_REQUEST.items():
        assert await sql(api, query, [failed]) == [], table
    events = await sql(
        api, "SELECT request_id FROM audit_events WHERE action = 'usage.RecordUsage' AND request_id = ANY (%s)", [ids]
    )
    assert sorted(e["request_id"] for e in events) == sorted(recorded)
    queued = await sql(api, "SELECT count(*) AS n FROM usage_rollup_queue")
    assert queued[0]["n"] == 2 * len(recorded)  # both worlds
    verified = await api.ledger.VerifyLedger(ledger_pb2.VerifyLedgerRequest())
    assert not verified.discrepancies

    # Resent whole: what was recorded replays (no second record or charge); what failed is tried
    # again against the state the first batch left.
    again = await api.usage.RecordUsageBatch(usage_pb2.RecordUsageBatchRequest(requests=requests))
    first = {i: r.record for i, r in enumerate(response.results) if not r.error_code}
    assert {i: again.results[i].record for i in first} == first
    stored = await sql(api, "SELECT request_id FROM usage_records WHERE request_id = ANY (%s)", [sorted(recorded)])
    assert len(stored) == len(recorded)


async def test_one_failing_record_in_a_batch_of_a_hundred_leaves_nothing_and_the_rest_is_recorded(unfolded_api):
    api = unfolded_api
    await create_model(api)
    rich = await funded_user(api, 1_000_000)
    poor = await funded_user(api, COST - 1)
    requests = [usage(rich.id, input_tokens=1000 + i) for i in range(100)]
    requests[56] = usage(poor.id)
    before = await balance(api, poor.id)
    response = await api.usage.RecordUsageBatch(usage_pb2.RecordUsageBatchRequest(requests=requests))
    assert [i for i, r in enumerate(response.results) if r.error_code] == [56]
    assert response.results[56].error_reason == "INSUFFICIENT_FUNDS"
    assert (response.recorded_count, response.failed_count) == (99, 1)
    mine = requests[56].request_id
    for table, query in LEFT_BY_REQUEST.items():
        assert await sql(api, query, [[mine]]) == [], table
    assert await balance(api, poor.id) == before
    records = await sql(api, "SELECT cost_micros FROM usage_records WHERE user_id = %s", [rich.id])
    assert len(records) == 99
    assert await _written_at_once(api, [r.request_id for r in requests])
    assert (await balance(api, rich.id)).posted_micros == 1_000_000 - sum(r["cost_micros"] for r in records)


async def test_concurrent_batches_and_single_calls_bill_exactly_what_they_record(unfolded_api):
    api = unfolded_api
    await create_model(api)
    # Room for 10 records each; 3 users, 4 batches of 24 and 12 single calls compete for them.
    users = [await funded_user(api, 10 * COST + 100) for _ in range(3)]
    batches = [[usage(users[(b + i) % 3].id) for i in range(24)] for b in range(4)]
    singles = [usage(users[i % 3].id) for i in range(12)]
    answers = await asyncio.gather(
        *(api.usage.RecordUsageBatch(usage_pb2.RecordUsageBatchRequest(requests=b)) for b in batches),
        *(outcome(api.usage.RecordUsage(r)) for r in singles),
    )
    accepted = set()
    for batch, answer in zip(batches, answers[:4], strict=True):
        assert {r.error_reason for r in answer.results if r.error_code} <= {"INSUFFICIENT_FUNDS"}
        accepted |= {req.request_id for req, r in zip(batch, answer.results, strict=True) if not r.error_code}
    for request, got in zip(singles, answers[4:], strict=True):
        assert got[0] in ("OK", "FAILED_PRECONDITION")
        if got[0] == "OK":
            accepted.add(request.request_id)
    assert len(accepted) == 30  # every user's room is used up, no more
    records = await sql(api, "SELECT request_id, cost_micros, ledger_transaction_id FROM usage_records")
    assert {r["request_id"] for r in records} == accepted
    charges = await sql(api, "SELECT transaction_id, amount_micros FROM ledger_transactions WHERE kind = 'charge'")
    assert {c["transaction_id"] for c in charges} == {r["ledger_transaction_id"] for r in records}
    assert sum(c["amount_micros"] for c in charges) == 30 * COST
    for user in users:
        assert (await balance(api, user.id)).posted_micros == 100
    verified = await api.ledger.VerifyLedger(ledger_pb2.VerifyLedgerRequest())
    assert not verified.discrepancies


async def test_a_constraint_violation_in_the_set_path_falls_back_to_one_item_at_a_time(unfolded_api):
    """The server never sends values a table refuses; a caller of the SQL function that does gets
    the per-item answers of usage_record_batch, and only the offending item fails."""
    api = unfolded_api
    await create_model(api)
    user = await funded_user(api, 1_000_000)
    n = 3
    rows = await sql(
        api,
        "SELECT o_item, o_status, o_error_constraint, (o_record).billed AS billed "
        "FROM usage_record_many('tests', '/qdata.v1.UsageService/RecordUsage', %s::text[], %s::bytea[], %s::uuid[], "
        "%s::text[], %s::uuid[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], "
        "%s::text[], %s::text[], %s::boolean[], %s::uuid[], %s::timestamptz[]) ORDER BY o_item",
        [
            [rid() for _ in range(n)],
            [b"0" * 32] * n,
            [user.id] * n,
            [MODEL] * n,
            [None] * n,
            [1000, 1000, 1000],
            [0] * n,
            [200, -1, 200],  # the second item's output_tokens violates usage_records_tokens_range
            [0] * n,
            [None] * n,
            [None] * n,
            ["success"] * n,
            [""] * n,
            [False] * n,
            [None] * n,
            [None] * n,
        ],
    )
    assert [(r["o_status"], r["o_error_constraint"], r["billed"]) for r in rows] == [
        ("recorded", None, True),
        ("rejected", "usage_records_tokens_range", None),
        ("recorded", None, True),
    ]
