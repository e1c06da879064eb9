"""UsageService recording over real gRPC and PostgreSQL: RecordUsage and RecordUsageBatch.

Usage is recorded if and only if it is billed, in one transaction with its ledger charge (or
hold capture): checked by concurrent streams against small balances, holds (capture, overage,
release), idempotent and concurrent replays, a price change mid-stream, failed and own-key calls,
the rounding rule, and rejected requests that must leave the database exactly as it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import uuid
from typing import Any

import grpc
import pytest

from qdata.v1 import ledger_pb2, usage_pb2
from tests.support.calls import create_user, expect_error, outcome, rid
from tests.support.database import sql, table_rows
from tests.support.server import TEST_SETTINGS, Api, start_api, stop_api
from tests.support.usage import (
    ERROR,
    SUCCESS,
    balance,
    create_model,
    expected_cost,
    funded_user,
    ms,
    now,
    price,
    ts,
    usage,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION
MODEL = "openai/gpt-4o-mini"
# 1,000 input and 200 output tokens at 0.15 / 0.60 USD per million: 150 + 120 = 270 micros.
COST = 270


@pytest.fixture
def api(unfolded_api: Api) -> Api:
    """No background folding here: the rollup queue is part of what a rejected request must
    leave unchanged, and a fold could land between the two looks."""
    return unfolded_api


STATE_TABLES = (
    "usage_records",
    "usage_rollup_queue",
    "ledger_transactions",
    "ledger_accounts",
    "ledger_holds",
    "audit_events",
    "idempotency_keys",
)


async def state(api) -> dict[str, Any]:
    """Everything recording could change, to prove that a rejected request changed nothing."""
    return await table_rows(api, *STATE_TABLES)


async def ledger_transaction(api, user_id: str, transaction_id: str) -> ledger_pb2.Transaction:
    response = await api.ledger.GetTransaction(
        ledger_pb2.GetTransactionRequest(user_id=user_id, transaction_id=transaction_id)
    )
    return response.transaction


async def hold(api, user_id: str, amount: int) -> ledger_pb2.Hold:
    response = await api.ledger.CreateHold(
        ledger_pb2.CreateHoldRequest(request_id=rid(), user_id=user_id, amount_micros=amount, reference="call-1")
    )
    return response.hold


async def get_hold(api, user_id: str, hold_id: str) -> ledger_pb2.Hold:
    return (await api.ledger.GetHold(ledger_pb2.GetHoldRequest(user_id=user_id, hold_id=hold_id))).hold


async def test_cost_follows_the_rounding_rule_and_is_charged_exactly(api):
    model = (await create_model(api)).model
    user = await funded_user(api, 1_000_000)

    # The contract's example: 1,234 input tokens at 0.15 USD per million cost ceil(185.1) = 186.
    first = (await api.usage.RecordUsage(usage(user.id, input_tokens=1234, output_tokens=0))).record
    assert first.cost_micros == 186 and first.billed and first.currency_code == "USD"
    assert first.price_id == model.current_price.id
    charge = await ledger_transaction(api, user.id, first.ledger_transaction_id)
    assert charge.kind == ledger_pb2.TRANSACTION_KIND_CHARGE and charge.amount_micros == 186
    assert charge.reference == f"usage/{first.id}" and charge.request_id == first.request_id

    # All four kinds, one rounding per record (never per kind): 1*0.15 + 3*0.075 + 5*0.6 + 7*0.6 = 7.575 -> 8.
    mixed = usage(user.id, input_tokens=1, cached_input_tokens=3, output_tokens=5, reasoning_tokens=7)
    record = (await api.usage.RecordUsage(mixed)).record
    assert record.cost_micros == expected_cost(model.current_price, mixed) == 8
    # Exact integers at the extremes (4 * 10^21 before the division; floats would round): an
    # own-key call is priced but not billed, so no balance is needed.
    await api.usage.UpsertModel(
        usage_pb2.UpsertModelRequest(
            request_id=rid(),
            model=usage_pb2.Model(id="x/huge", provider="x"),
            price=price(10**12 - 1, 10**12 - 3, 10**12 - 7, 10**12 - 9),
        )
    )
    huge = usage(
        user.id,
        model_id="x/huge",
        input_tokens=10**9 - 1,
        cached_input_tokens=10**9 - 3,
        output_tokens=10**9 - 5,
        reasoning_tokens=10**9 - 11,
        used_own_provider_key=True,
    )
    record = (await api.usage.RecordUsage(huge)).record
    total = (10**9 - 1) * (10**12 - 1) + (10**9 - 3) * (10**12 - 7) + (10**9 - 5) * (10**12 - 3)
    total += (10**9 - 11) * (10**12 - 9)
    assert record.cost_micros == -(-total // 10**6) and not record.billed
    # A successful call that costs nothing is recorded, unbilled.
    free = (await api.usage.RecordUsage(usage(user.id, input_tokens=0, output_tokens=0))).record
    assert free.cost_micros == 0 and not free.billed and not free.ledger_transaction_id
    assert (await balance(api, user.id)).posted_micros == 1_000_000 - 186 - 8


async def test_failed_and_own_key_calls_are_recorded_but_never_billed(api):
    await create_model(api)
    user = await funded_user(api, 10_000)
    failed = (
        await api.usage.RecordUsage(usage(user.id, outcome=ERROR, error_code="rate_limit_exceeded", latency=ms(30)))
    ).record
    assert failed.outcome == ERROR and failed.error_code == "rate_limit_exceeded"
    assert failed.cost_micros == COST and not failed.billed and not failed.ledger_transaction_id
    own = (await api.usage.RecordUsage(usage(user.id, used_own_provider_key=True))).record
    assert own.used_own_provider_key and own.cost_micros == COST and not own.billed
    assert (await balance(api, user.id)).available_micros == 10_000
    assert len(await sql(api, "SELECT 1 FROM usage_records")) == 2

    # An unbilled record releases the active hold it names, and leaves an inactive one alone.
    active = await hold(api, user.id, 5_000)
    failed = await api.usage.RecordUsage(usage(user.id, outcome=ERROR, error_code="http_500", hold_id=active.id))
    assert failed.record.hold_id == active.id and not failed.record.billed
    assert (await get_hold(api, user.id, active.id)).status == ledger_pb2.HOLD_STATUS_RELEASED
    await api.usage.RecordUsage(usage(user.id, used_own_provider_key=True, hold_id=active.id))
    assert (await get_hold(api, user.id, active.id)).status == ledger_pb2.HOLD_STATUS_RELEASED
    assert (await balance(api, user.id)).available_micros == 10_000


async def test_insufficient_funds_records_nothing_and_the_request_id_can_be_retried(api):
    await create_model(api)
    user = await funded_user(api, COST - 1)
    request = usage(user.id)
    before = await state(api)
    await expect_error(api.usage.RecordUsage(request), PRECONDITION, "INSUFFICIENT_FUNDS")
    assert await state(api) == before

    await api.ledger.Deposit(
        ledger_pb2.DepositRequest(
            request_id=rid(), user_id=user.id, amount_micros=1, source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION
        )
    )
    record = (await api.usage.RecordUsage(request)).record
    assert record.billed and (await balance(api, user.id)).posted_micros == 0


async def test_a_concurrent_stream_against_a_small_balance_bills_exactly_what_it_records(unfolded_api):
    api = unfolded_api
    await create_model(api)
    # Room for 11 of the 40 calls (and a little change).
    user = await funded_user(api, 11 * COST + 100)
    other = await funded_user(api, 5 * COST)
    requests = [usage(user.id) for _ in range(40)] + [usage(other.id) for _ in range(10)]
    outcomes = await asyncio.gather(*(outcome(api.usage.RecordUsage(r)) for r in requests))
    assert {o[:2] for o in outcomes if o[0] != "OK"} == {("FAILED_PRECONDITION", "INSUFFICIENT_FUNDS")}
    accepted = {r.request_id for r, o in zip(requests, outcomes, strict=True) if o[0] == "OK"}
    assert len(accepted) == 11 + 5

    records = await sql(api, "SELECT * FROM usage_records")
    assert {r["request_id"] for r in records} == accepted  # rejected calls recorded nothing
    charges = await sql(api, "SELECT * FROM ledger_transactions WHERE kind = 'charge'")
    assert sum(c["amount_micros"] for c in charges) == sum(r["cost_micros"] for r in records if r["billed"])
    assert {c["transaction_id"] for c in charges} == {r["ledger_transaction_id"] for r in records}
    assert len(await sql(api, "SELECT 1 FROM usage_rollup_queue")) == len(records)
    for person, credits, calls in ((user, 11 * COST + 100, 11), (other, 5 * COST, 5)):
        b = await balance(api, person.id)
        assert b.posted_micros == credits - calls * COST and b.available_micros >= 0
    verified = await api.ledger.VerifyLedger(ledger_pb2.VerifyLedgerRequest())
    assert not verified.discrepancies


async def test_hold_capture_takes_the_real_cost_and_releases_the_rest(api):
    await create_model(api)
    user = await funded_user(api, 10_000)
    reserved = await hold(api, user.id, 2_000)
    assert (await balance(api, user.id)).available_micros == 8_000
    record = (await api.usage.RecordUsage(usage(user.id, hold_id=reserved.id))).record
    assert record.billed and record.hold_id == reserved.id and not record.overage_transaction_id
    capture = await ledger_transaction(api, user.id, record.ledger_transaction_id)
    assert capture.kind == ledger_pb2.TRANSACTION_KIND_HOLD_CAPTURE and capture.amount_micros == COST
    assert capture.hold_id == reserved.id and capture.reference == f"usage/{record.id}"
    after = await get_hold(api, user.id, reserved.id)
    assert after.status == ledger_pb2.HOLD_STATUS_CAPTURED and after.captured_micros == COST
    b = await balance(api, user.id)
    assert (b.posted_micros, b.held_micros) == (10_000 - COST, 0)

    # A resolved hold cannot pay a billed record (retry without hold_id instead).
    await expect_error(
        api.usage.RecordUsage(usage(user.id, hold_id=reserved.id)), PRECONDITION, "HOLD_ALREADY_CAPTURED"
    )
    # Another user's hold is not found.
    stranger = await funded_user(api, 10_000)
    theirs = await hold(api, stranger.id, 1_000)
    await expect_error(api.usage.RecordUsage(usage(user.id, hold_id=theirs.id)), NOT_FOUND, "HOLD_NOT_FOUND")
    await expect_error(api.usage.RecordUsage(usage(user.id, hold_id=str(uuid.uuid4()))), NOT_FOUND, "HOLD_NOT_FOUND")


async def test_a_cost_above_the_hold_captures_it_whole_and_charges_the_overage(api):
    await create_model(api)
    user = await funded_user(api, 1_000)
    small = await hold(api, user.id, 100)
    record = (await api.usage.RecordUsage(usage(user.id, hold_id=small.id))).record
    assert record.billed and record.cost_micros == COST
    capture = await ledger_transaction(api, user.id, record.ledger_transaction_id)
    overage = await ledger_transaction(api, user.id, record.overage_transaction_id)
    assert (capture.kind, capture.amount_micros) == (ledger_pb2.TRANSACTION_KIND_HOLD_CAPTURE, 100)
    assert (overage.kind, overage.amount_micros) == (ledger_pb2.TRANSACTION_KIND_CHARGE, COST - 100)
    assert overage.reference == capture.reference == f"usage/{record.id}"
    assert (await balance(api, user.id)).posted_micros == 1_000 - COST

    # An overage the balance cannot pay: nothing is recorded and the hold stays active.
    poor = await funded_user(api, 150)
    reserved = await hold(api, poor.id, 100)
    before = await state(api)
    await expect_error(api.usage.RecordUsage(usage(poor.id, hold_id=reserved.id)), PRECONDITION, "INSUFFICIENT_FUNDS")
    assert await state(api) == before
    assert (await get_hold(api, poor.id, reserved.id)).status == ledger_pb2.HOLD_STATUS_ACTIVE


async def test_replays_return_the_first_response_with_one_record_and_one_charge(api):
    await create_model(api)
    user = await funded_user(api, 100_000)
    request = usage(user.id)
    first = await api.usage.RecordUsage(request)
    assert await api.usage.RecordUsage(request) == first
    # Concurrent replays of a new request: one record, one charge, one answer.
    fresh = usage(user.id, input_tokens=5000)
    answers = await asyncio.gather(*(api.usage.RecordUsage(fresh) for _ in range(12)))
    assert all(a == answers[0] for a in answers)
    # The batch shares RecordUsage's keys: a record sent by one replays through the other.
    batch = await api.usage.RecordUsageBatch(usage_pb2.RecordUsageBatchRequest(requests=[request, fresh]))
    assert [r.record for r in batch.results] == [first.record, answers[0].record]
    assert batch.recorded_count == 2 and batch.failed_count == 0
    records = await sql(api, "SELECT request_id FROM usage_records")
    assert sorted(r["request_id"] for r in records) == sorted([request.request_id, fresh.request_id])
    assert len(await sql(api, "SELECT 1 FROM ledger_transactions WHERE kind = 'charge'")) == 2

    changed = usage_pb2.RecordUsageRequest()
    changed.CopyFrom(request)
    changed.output_tokens += 1
    await expect_error(api.usage.RecordUsage(changed), grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    result = (await api.usage.RecordUsageBatch(usage_pb2.RecordUsageBatchRequest(requests=[changed]))).results[0]
    assert (result.error_code, result.error_reason) == ("ALREADY_EXISTS", "REQUEST_ID_REUSED")


async def test_a_price_change_mid_stream_prices_each_call_by_the_version_in_force(api):
    created = await create_model(api)
    v1 = created.model.current_price
    user = await funded_user(api, 1_000_000)
    # Schedule a new version a minute ahead; calls may carry a call_time up to 5 minutes ahead.
    switch = now() + datetime.timedelta(minutes=1)
    v2 = (
        await api.usage.UpsertModel(
            usage_pb2.UpsertModelRequest(
                request_id=rid(), model=usage_pb2.Model(id=MODEL), price=price(300_000, 1_200_000, effective=switch)
            )
        )
    ).price
    model = (await api.usage.GetModel(usage_pb2.GetModelRequest(model_id=MODEL))).model
    assert model.current_price.id == v1.id and model.next_price.id == v2.id

    stream = [
        usage(user.id, call_time=ts(switch - datetime.timedelta(seconds=30))),
        usage(user.id, call_time=ts(switch - datetime.timedelta(microseconds=1))),
        usage(user.id, call_time=ts(switch)),
        usage(user.id, call_time=ts(switch + datetime.timedelta(minutes=2))),
    ]
    records = [(await api.usage.RecordUsage(r)).record for r in stream]
    assert [r.price_id for r in records] == [v1.id, v1.id, v2.id, v2.id]
    assert [r.cost_micros for r in records] == [COST, COST, 2 * COST, 2 * COST]
    stored = await sql(api, "SELECT price_id::text AS price_id FROM usage_records ORDER BY called_at")
    assert [r["price_id"] for r in stored] == [v1.id, v1.id, v2.id, v2.id]
    # Before the first version nothing is priced.
    early = usage(user.id, call_time=ts(now() - datetime.timedelta(days=1)))
    await expect_error(api.usage.RecordUsage(early), PRECONDITION, "MODEL_NOT_PRICED")


async def test_invalid_and_unknown_inputs_fail_precisely_and_change_nothing(api):
    await create_model(api)
    user = await funded_user(api, 100_000)
    other = await create_user(api)
    session = (await sql(api, "INSERT INTO chat_sessions (user_id) VALUES (%s) RETURNING session_id", [user.id]))[0]
    theirs = (await sql(api, "INSERT INTO chat_sessions (user_id) VALUES (%s) RETURNING session_id", [other.id]))[0]
    before = await state(api)
    late = now() - datetime.timedelta(days=8)
    cases: list[tuple[dict[str, Any], tuple[str, str, set[str]]]] = [
        ({"user_id": "nope"}, ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"user_id"})),
        ({"model_id": ""}, ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"model_id"})),
        ({"model_id": "bad model"}, ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"model_id"})),
        (
            {"input_tokens": -1, "reasoning_tokens": 10**9 + 1},
            ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"input_tokens", "reasoning_tokens"}),
        ),
        ({"outcome": usage_pb2.USAGE_OUTCOME_UNSPECIFIED}, ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"outcome"})),
        ({"outcome": ERROR}, ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"error_code"})),
        ({"error_code": "http_500"}, ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"error_code"})),
        ({"outcome": ERROR, "error_code": "x" * 101}, ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"error_code"})),
        ({"latency": ms(25 * 3600 * 1000)}, ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"latency"})),
        ({"time_to_first_token": ms(900)}, ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"time_to_first_token"})),
        ({"call_time": ts(late)}, ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"call_time"})),
        (
            {"call_time": ts(now() + datetime.timedelta(minutes=6))},
            ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"call_time"}),
        ),
        ({"session_id": "s-1", "hold_id": "h-1"}, ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"session_id", "hold_id"})),
        ({"request_id": ""}, ("INVALID_ARGUMENT", "INVALID_ARGUMENT", {"request_id"})),
        ({"user_id": str(uuid.uuid4())}, ("NOT_FOUND", "USER_NOT_FOUND", set())),
        ({"model_id": "nobody/none"}, ("NOT_FOUND", "MODEL_NOT_FOUND", set())),
        ({"session_id": str(uuid.uuid4())}, ("NOT_FOUND", "SESSION_NOT_FOUND", set())),
        ({"session_id": str(theirs["session_id"])}, ("NOT_FOUND", "SESSION_NOT_FOUND", set())),
    ]

    def request(fields: dict[str, Any]) -> usage_pb2.RecordUsageRequest:
        return usage(**{"user_id": user.id, **fields})

    got = [await outcome(api.usage.RecordUsage(request(fields))) for fields, _ in cases]
    assert got == [expected for _, expected in cases]
    assert await state(api) == before

    # The same requests in one batch fail item by item with the same codes and fields.
    batch = await api.usage.RecordUsageBatch(
        usage_pb2.RecordUsageBatchRequest(requests=[request(fields) for fields, _ in cases])
    )
    assert [(r.error_code, r.error_reason, set(r.error_fields)) for r in batch.results] == [e for _, e in cases]
    assert batch.failed_count == len(cases) and batch.recorded_count == 0
    assert await state(api) == before
    for size in (0, 1001):
        request = usage_pb2.RecordUsageBatchRequest(requests=[usage(user.id) for _ in range(size)])
        assert (await outcome(api.usage.RecordUsageBatch(request))) == (
            "INVALID_ARGUMENT",
            "INVALID_ARGUMENT",
            {"requests"},
        )

    # A session of the user's own is kept with the record.
    record = (await api.usage.RecordUsage(usage(user.id, session_id=str(session["session_id"])))).record
    assert record.session_id == str(session["session_id"])


async def test_a_batch_gives_each_record_its_own_result_and_can_be_resent(api):
    await create_model(api)
    rich = await funded_user(api, 1_000_000)
    poor = await funded_user(api, COST)
    requests = [usage(rich.id, input_tokens=1000 + i) for i in range(120)]  # more than one chunk
    requests[7] = usage(poor.id)
    requests[8] = usage(poor.id)  # no money left after item 7
    requests[9] = usage(rich.id, model_id="nobody/none")
    requests[10] = usage(rich.id, input_tokens=-5)
    requests[11] = requests[3]  # the same request_id again: a replay of item 3
    changed = usage_pb2.RecordUsageRequest()
    changed.CopyFrom(requests[4])
    changed.output_tokens = 1
    requests[12] = changed  # the same request_id with other parameters
    response = await api.usage.RecordUsageBatch(usage_pb2.RecordUsageBatchRequest(requests=requests))
    assert [r.index for r in response.results] == list(range(120))
    failures = {r.index: (r.error_code, r.error_reason, list(r.error_fields)) for r in response.results if r.error_code}
    assert failures == {
        8: ("FAILED_PRECONDITION", "INSUFFICIENT_FUNDS", []),
        9: ("NOT_FOUND", "MODEL_NOT_FOUND", []),
        10: ("INVALID_ARGUMENT", "INVALID_ARGUMENT", ["input_tokens"]),
        12: ("ALREADY_EXISTS", "REQUEST_ID_REUSED", []),
    }
    assert (response.recorded_count, response.failed_count) == (116, 4)
    assert response.results[11].record == response.results[3].record
    assert response.results[7].record.billed and response.results[7].record.user_id == poor.id
    records = await sql(api, "SELECT * FROM usage_records")
    assert len(records) == 115  # 116 results, one of them the in-batch replay
    costs = {r.index: r.record.cost_micros for r in response.results if not r.error_code and r.index != 11}
    assert sum(r["cost_micros"] for r in records) == sum(costs.values())
    assert (await balance(api, poor.id)).posted_micros == 0

    # Resent after a timeout: what succeeded replays, what failed is tried again.
    await api.ledger.Deposit(
        ledger_pb2.DepositRequest(
            request_id=rid(), user_id=poor.id, amount_micros=COST, source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION
        )
    )
    again = await api.usage.RecordUsageBatch(usage_pb2.RecordUsageBatchRequest(requests=requests))
    assert [r.record for r in again.results if r.index not in failures] == [
        r.record for r in response.results if r.index not in failures
    ]
    assert again.results[8].record.billed and again.failed_count == 3
    assert len(await sql(api, "SELECT 1 FROM usage_records")) == 116


async def test_a_hold_in_another_currency_is_a_currency_mismatch(database_url):
    settings = dataclasses.replace(TEST_SETTINGS, ledger_currencies=("EUR", "USD"))
    api = await start_api(database_url, settings)
    try:
        await create_model(api)
        user = await funded_user(api, 10_000, currency="EUR")
        reserved = (
            await api.ledger.CreateHold(
                ledger_pb2.CreateHoldRequest(
                    request_id=rid(), user_id=user.id, amount_micros=1_000, currency_code="EUR"
                )
            )
        ).hold
        await expect_error(
            api.usage.RecordUsage(usage(user.id, hold_id=reserved.id)), PRECONDITION, "CURRENCY_MISMATCH"
        )
        assert (await get_hold(api, user.id, reserved.id)).status == ledger_pb2.HOLD_STATUS_ACTIVE
    finally:
        await stop_api(api)


async def test_partitions_exist_ahead_and_a_missing_month_is_created_on_demand(api):
    partitions = await sql(
        api,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'usage_records'::regclass ORDER BY 1",
    )
    names = [p["relname"] for p in partitions]
    month = now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    ahead = [month]
    for _ in range(3):
        ahead.append((ahead[-1] + datetime.timedelta(days=32)).replace(day=1))
    assert {f"usage_records_{m:%Y_%m}" for m in ahead} <= set(names)

    # Drop the current month (empty in a fresh database): recording recreates it.
    current = f"usage_records_{month:%Y_%m}"
    await sql(api, f"ALTER TABLE usage_records DETACH PARTITION usage_partitions.{current}")
    await sql(api, f"DROP TABLE usage_partitions.{current}")
    await create_model(api)
    user = await funded_user(api, 10_000)
    record = (await api.usage.RecordUsage(usage(user.id))).record
    assert record.billed
    assert await sql(api, "SELECT to_regclass(%s) IS NOT NULL AS present", [f"usage_partitions.{current}"]) == [
        {"present": True}
    ]
    # The server's upkeep (and the migration) creates the months ahead, idempotently.
    created = await sql(api, "SELECT usage_ensure_partitions(6) AS n")
    assert created[0]["n"] == 3
    assert (await sql(api, "SELECT usage_ensure_partitions(6) AS n"))[0]["n"] == 0


async def test_the_outcome_of_each_call_is_kept_with_its_latencies(api):
    await create_model(api)
    user = await funded_user(api)
    request = usage(user.id, latency=ms(1234.5), time_to_first_token=ms(200.25), outcome=SUCCESS)
    record = (await api.usage.RecordUsage(request)).record
    assert record.latency == request.latency and record.time_to_first_token == request.time_to_first_token
    bare = usage(user.id)
    bare.ClearField("latency")
    record = (await api.usage.RecordUsage(bare)).record
    assert not record.HasField("latency") and not record.HasField("time_to_first_token")
