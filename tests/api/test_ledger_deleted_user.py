"""A money movement racing a DeleteUser of the same user never credits the deleted user
(0008_ledger_live_user_lock.sql): it either commits before the deletion or waits for it and is
rejected as USER_NOT_FOUND."""

from __future__ import annotations

import asyncio

import grpc
import psycopg

from qdata.v1 import user_pb2
from qdata_server.db.sql import query
from tests.support.calls import expect_error, rid
from tests.support.database import scalar
from tests.support.ledger import charge_request, deposit_request, new_user

USD = 1_000_000


async def wait_for_a_lock_wait(api, call: asyncio.Future) -> bool:
    """True once a server connection waits on a row lock; False if the call finished instead."""
    for _ in range(200):
        if call.done():
            return False
        waiting = await scalar(
            api,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'qdata' AND wait_event_type = 'Lock'",
        )
        if waiting:
            return True
        await asyncio.sleep(0.05)
    raise AssertionError("the call neither finished nor waited on a lock")


async def test_a_deposit_waiting_on_a_deletion_is_rejected_and_credits_nothing(api):
    user = await new_user(api, 1 * USD)
    async with await psycopg.AsyncConnection.connect(api.database_url) as deleter:
        async with deleter.transaction():
            # DeleteUser's own statement, left uncommitted while the deposit arrives.
            await deleter.execute(query("erase_user"), {"user_id": user})
            deposit = asyncio.ensure_future(api.ledger.Deposit(deposit_request(user, 5 * USD)))
            assert await wait_for_a_lock_wait(api, deposit), "the deposit went ahead of the uncommitted deletion"
    await expect_error(deposit, grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")
    posted = await scalar(api, "SELECT posted_micros FROM ledger_accounts WHERE user_id = %s", (user,))
    assert posted == 1 * USD


async def test_a_deletion_waits_for_a_movement_in_flight(api):
    user = await new_user(api, 3 * USD)
    async with await psycopg.AsyncConnection.connect(api.database_url) as mover:
        async with mover.transaction():
            # A movement in flight: the account and the user's row locked, as every one locks them.
            await mover.execute("SELECT ledger_lock_account(%s, 'USD')", (user,))
            delete = asyncio.ensure_future(api.users.DeleteUser(user_pb2.DeleteUserRequest(request_id=rid(), id=user)))
            assert await wait_for_a_lock_wait(api, delete), "the deletion did not wait for the movement in flight"
    assert (await delete).user.status == user_pb2.USER_STATUS_DELETED
    # Afterwards no movement reaches the deleted user.
    await expect_error(api.ledger.Charge(charge_request(user, USD)), grpc.StatusCode.NOT_FOUND, "USER_NOT_FOUND")
