"""A money-moving request never takes effect twice under one request_id, however late the retry.

With a retention of one second the background purge forgets every idempotency record; a replay
after that is answered from the ledger rows the first call created (they carry the key forever):
the first answer again, with no second effect, and REQUEST_ID_REUSED for the same id with other
parameters or for another RPC. Non-money requests keep the retention: after it, a replay is a new
request (see the protos' idempotency statements).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import grpc
import psycopg
import pytest

from qdata.v1 import chat_pb2, ledger_pb2, usage_pb2, user_pb2
from qdata_server.idempotency import fingerprint
from tests.support.calls import error_info, rid
from tests.support.database import scalar, sql
from tests.support.ledger import (
    ACTIVE,
    CAPTURED,
    EXISTS,
    RELEASED,
    USD,
    amounts,
    assert_ledger_clean,
    capture_request,
    charge_request,
    create_hold,
    deposit_request,
    hold_request,
    ledger_state,
    new_user,
    refund_request,
    rejected,
    release_request,
    transfer_request,
)
from tests.support.server import TEST_SETTINGS, Api, ModuleServer
from tests.support.usage import ERROR, create_model, usage

# A retention of one second, purged every tenth of a second.
FORGETFUL = dataclasses.replace(TEST_SETTINGS, idempotency_retention_hours=1 / 3600, idempotency_purge_seconds=0.1)
PROMOTION = ledger_pb2.DEPOSIT_SOURCE_PROMOTION


@pytest.fixture
async def forgetful_api(module_server: ModuleServer) -> Api:
    """The module's server, purging idempotency records a second after they are written."""
    return await module_server.api(FORGETFUL)


async def all_forgotten(api) -> None:
    """Waits until the purge has removed every idempotency record (generous bound: 20 s)."""
    for _ in range(400):
        if await scalar(api, "SELECT count(*) FROM idempotency_keys") == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the idempotency records were not purged")


async def answer_or_error(call) -> Any:
    """The response, or the error's code and reason (to list every wrong replay at once)."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error_info(error).reason


def other(request, **changes: Any):
    """A copy of request (same request_id) with some fields changed."""
    copy = type(request)()
    copy.CopyFrom(request)
    for field, value in changes.items():
        setattr(copy, field, value)
    return copy


async def test_every_money_moving_request_replays_its_first_answer_after_the_purge(forgetful_api):
    api = forgetful_api
    alice, bob = await new_user(api, 20 * USD), await new_user(api, 1 * USD)
    await create_model(api)
    # The first calls, one per money-moving RPC; the later calls change the state they left.
    charged_request = charge_request(alice, 5 * USD)
    charged = (await api.ledger.Charge(charged_request)).transaction
    hold_to_capture = await create_hold(api, alice, 4 * USD)
    hold_to_release = await create_hold(api, alice, 2 * USD)
    calls = [
        (api.ledger.Deposit, deposit_request(alice, 3 * USD, source=PROMOTION, external_reference="")),
        (api.ledger.Deposit, deposit_request(alice, 1 * USD)),  # a payment, with its reference
        (api.ledger.Charge, charged_request),
        (api.ledger.Charge, charge_request(alice, 2 * USD)),
        (api.ledger.Refund, refund_request(alice, charged.id, 1 * USD)),
        (api.ledger.Transfer, transfer_request(alice, bob, 1 * USD)),
        (api.ledger.CreateHold, hold_request(alice, 1 * USD)),
        (api.ledger.CaptureHold, capture_request(alice, hold_to_capture.id, 3 * USD)),
        (api.ledger.ReleaseHold, release_request(alice, hold_to_release.id)),
        (api.usage.RecordUsage, usage(alice)),
    ]
    first = [await method(request) for method, request in calls]
    # The CreateHold's hold is captured later: its late replay still answers ACTIVE, as at first.
    created = first[6].hold
    await api.ledger.CaptureHold(capture_request(alice, created.id, 1 * USD))
    # A billed usage record paid by a hold, and one sent in a batch.
    paying_hold = await create_hold(api, alice, 1 * USD)
    on_hold = usage(alice, hold_id=paying_hold.id)
    calls.append((api.usage.RecordUsage, on_hold))
    first.append(await api.usage.RecordUsage(on_hold))
    batched = usage(alice, input_tokens=5000)
    batch = (await api.usage.RecordUsageBatch(usage_pb2.RecordUsageBatchRequest(requests=[batched]))).results[0]
    assert first[-1].record.billed and batch.record.billed and not batch.error_code
    balances = (await amounts(api, alice), await amounts(api, bob))

    await all_forgotten(api)
    state = await ledger_state(api)
    transactions = await scalar(api, "SELECT count(*) FROM ledger_transactions")

    wrong = [
        (index, type(request).__name__, replayed)
        for index, ((method, request), answer) in enumerate(zip(calls, first, strict=True))
        if (replayed := await answer_or_error(method(request))) != answer
    ]
    assert wrong == []
    assert first[6].hold.status == ACTIVE
    assert first[7].hold.status == CAPTURED and first[8].hold.status == RELEASED
    assert first[2].transaction.refunded_micros == 0  # refunded since, but answered as at first
    # The batch entry replays through the batch and through RecordUsage alike.
    again = await api.usage.RecordUsageBatch(usage_pb2.RecordUsageBatchRequest(requests=[batched]))
    assert again.results[0] == batch
    assert (await api.usage.RecordUsage(batched)).record == batch.record
    # Nothing moved, nothing was written, not even an idempotency record or an audit event.
    assert await ledger_state(api) == state
    assert await scalar(api, "SELECT count(*) FROM ledger_transactions") == transactions
    assert (await amounts(api, alice), await amounts(api, bob)) == balances
    assert await scalar(api, "SELECT count(*) FROM usage_records") == 3

    # The same request_ids with other parameters, or for another RPC, are REQUEST_ID_REUSED.
    reused = [
        (api.ledger.Deposit, other(calls[0][1], amount_micros=4 * USD)),
        (api.ledger.Deposit, other(calls[1][1], description="another")),
        (api.ledger.Charge, other(calls[3][1], amount_micros=3 * USD)),
        (api.ledger.Refund, other(calls[4][1], amount_micros=2 * USD)),
        (api.ledger.Transfer, other(calls[5][1], amount_micros=2 * USD)),
        (api.ledger.CreateHold, other(calls[6][1], amount_micros=2 * USD)),
        (api.ledger.CaptureHold, other(calls[7][1], amount_micros=2 * USD)),
        (api.ledger.ReleaseHold, other(calls[8][1], hold_id=paying_hold.id)),
        (api.usage.RecordUsage, other(calls[9][1], output_tokens=1)),
        (api.usage.RecordUsage, other(on_hold, output_tokens=1)),
        (api.usage.RecordUsage, other(batched, outcome=ERROR, error_code="http_500")),  # would be unbilled
        # Another RPC under a taken request_id.
        (api.ledger.CreateHold, hold_request(alice, 1 * USD, request_id=calls[3][1].request_id)),
        (api.ledger.Charge, charge_request(alice, 1 * USD, request_id=calls[8][1].request_id)),
        (api.ledger.Deposit, deposit_request(alice, 1 * USD, request_id=calls[9][1].request_id)),
    ]
    for method, request in reused:
        await rejected(api, method, request, EXISTS, "REQUEST_ID_REUSED")
    changed = other(batched, input_tokens=6000)
    result = (await api.usage.RecordUsageBatch(usage_pb2.RecordUsageBatchRequest(requests=[changed]))).results[0]
    assert (result.error_code, result.error_reason) == ("ALREADY_EXISTS", "REQUEST_ID_REUSED")
    assert await ledger_state(api) == state
    await assert_ledger_clean(api)


async def test_concurrent_late_replays_take_effect_once(forgetful_api):
    api = forgetful_api
    user = await new_user(api, 20 * USD)
    await create_model(api)
    hold = await create_hold(api, user, 4 * USD)
    calls = [
        (api.ledger.Charge, charge_request(user, 2 * USD)),
        (api.ledger.Deposit, deposit_request(user, 1 * USD, source=PROMOTION, external_reference="")),
        (api.ledger.CaptureHold, capture_request(user, hold.id, 3 * USD)),
        (api.usage.RecordUsage, usage(user)),
    ]
    first = [await method(request) for method, request in calls]
    balance = await amounts(api, user)
    await all_forgotten(api)
    state = await ledger_state(api)
    for (method, request), answer in zip(calls, first, strict=True):
        answers = await asyncio.gather(*(method(request) for _ in range(16)))
        assert all(a == answer for a in answers), type(request).__name__
    assert await amounts(api, user) == balance
    assert await ledger_state(api) == state


async def test_a_late_replay_that_loses_the_race_on_the_key_is_answered_not_charged(forgetful_api):
    """The unique index is the last word: a replay that passed the ledger's check while the first
    call was still uncommitted fails on it, and the server answers from the winner's row."""
    api = forgetful_api
    user = await new_user(api, 10 * USD)
    await all_forgotten(api)
    request = charge_request(user, 2 * USD)
    understood = other(request, currency_code="USD")
    # The first call, committed last: straight through the ledger function, as the server
    # would make it (anonymous caller, the RPC's method, the request's fingerprint).
    async with await psycopg.AsyncConnection.connect(api.database_url) as first:
        cur = await first.execute(
            "SELECT ledger_charge(%s, %s, 'USD', '', '', %s, 'anonymous', '/qdata.v1.LedgerService/Charge', %s)",
            (user, 2 * USD, request.request_id, fingerprint(understood)),
        )
        [winner] = await cur.fetchone()
        replay = asyncio.ensure_future(api.ledger.Charge(request))
        # The replay waits on the account the first call has locked.
        for _ in range(400):
            waiting = await scalar(
                api,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%ledger_charge%'",
            )
            if waiting:
                break
            await asyncio.sleep(0.05)
        assert waiting, "the replay never reached the ledger"
        await first.commit()
    answer = await replay
    assert answer.transaction.id == str(winner)
    assert await amounts(api, user) == (8 * USD, 0, 8 * USD)
    assert await scalar(api, "SELECT count(*) FROM ledger_transactions WHERE kind = 'charge'") == 1


@pytest.mark.parametrize("unbilled", [{"outcome": ERROR, "error_code": "http_500"}, {"used_own_provider_key": True}])
async def test_requests_that_move_no_money_are_new_requests_after_the_retention(forgetful_api, unbilled):
    api = forgetful_api
    user = await new_user(api, 1 * USD)
    await create_model(api)
    session_request = chat_pb2.CreateSessionRequest(request_id=rid(), user_id=user, title="first")
    session = (await api.chat.CreateSession(session_request)).session
    record_request = usage(user, **unbilled)
    record = (await api.usage.RecordUsage(record_request)).record
    assert not record.billed
    await all_forgotten(api)
    # Past the retention: a second session, a second (unbilled) record, no money moved.
    assert (await api.chat.CreateSession(session_request)).session.id != session.id
    assert (await api.usage.RecordUsage(record_request)).record.id != record.id
    assert await scalar(api, "SELECT count(*) FROM usage_records") == 2
    assert await amounts(api, user) == (1 * USD, 0, 1 * USD)
    rows = await sql(api, "SELECT count(*) AS n FROM chat_sessions WHERE user_id = %s", (user,))
    assert rows[0]["n"] == 2


async def test_a_deleted_users_money_requests_are_still_remembered_after_the_purge(forgetful_api):
    api = forgetful_api
    user = await new_user(api, 5 * USD)
    request = deposit_request(user, 1 * USD, source=PROMOTION, external_reference="")
    first = await api.ledger.Deposit(request)
    await api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=user))
    await all_forgotten(api)
    # Not USER_NOT_FOUND: the ledger answers before it looks at the user.
    assert await api.ledger.Deposit(request) == first
    await rejected(api, api.ledger.Deposit, other(request, amount_micros=2 * USD), EXISTS, "REQUEST_ID_REUSED")
    assert await amounts(api, user) == (6 * USD, 0, 6 * USD)
