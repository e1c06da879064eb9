"""Idempotency records expire: a replay within the retention returns the first answer, the
background purge forgets older records, and a replay after that is a new request."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc

from qdata.v1 import ledger_pb2
from qdata_server.config import Settings
from tests.api.ledger_helpers import amounts, deposit_request, new_user, scalar
from tests.conftest import TEST_SETTINGS, start_api, stop_api
from tests.helpers import error_info, expect_error

USD = 1_000_000
PURGING = dataclasses.replace(TEST_SETTINGS, idempotency_retention_hours=24.0, idempotency_purge_seconds=0.1)


async def records(api, request_id: str) -> int:
    return await scalar(api, "SELECT count(*) FROM idempotency_keys WHERE request_id = %s", (request_id,))


async def age(api, request_id: str, hours: float) -> None:
    await scalar(
        api,
        "UPDATE idempotency_keys SET created_at = created_at - make_interval(hours => %s)"
        " WHERE request_id = %s RETURNING 1",
        (hours, request_id),
    )


async def wait_until_gone(api, request_id: str) -> None:
    for _ in range(100):
        if await records(api, request_id) == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the record of {request_id} was not purged")


async def test_records_past_the_retention_are_purged_and_a_late_replay_is_a_new_request(database_url):
    api = await start_api(database_url, PURGING)
    try:
        user = await new_user(api)
        promotion = ledger_pb2.DEPOSIT_SOURCE_PROMOTION
        old = deposit_request(user, 1 * USD, source=promotion, external_reference="")
        recent = deposit_request(user, 2 * USD, source=promotion, external_reference="")
        paid = deposit_request(user, 4 * USD)  # a payment, with the provider's reference
        first_old = (await api.ledger.Deposit(old)).transaction
        first_recent = (await api.ledger.Deposit(recent)).transaction
        first_paid = (await api.ledger.Deposit(paid)).transaction
        for request_id in (old.request_id, paid.request_id):
            await age(api, request_id, 25)  # past the 24-hour retention
        await age(api, recent.request_id, 23)  # within it

        await wait_until_gone(api, old.request_id)
        await wait_until_gone(api, paid.request_id)
        # Another purge round leaves the recent record alone.
        await asyncio.sleep(0.3)
        assert await records(api, recent.request_id) == 1

        # Within the retention: the first answer, no second effect.
        assert (await api.ledger.Deposit(recent)).transaction == first_recent
        # Past it: a new request, a new transaction and a second credit.
        again = (await api.ledger.Deposit(old)).transaction
        assert again.id != first_old.id
        # A payment's reference still credits once, whatever the retention.
        error = await expect_error(
            api.ledger.Deposit(paid), grpc.StatusCode.ALREADY_EXISTS, "EXTERNAL_REFERENCE_EXISTS"
        )
        assert error_info(error).metadata["transaction_id"] == first_paid.id
        assert (await amounts(api, user))[0] == 8 * USD
    finally:
        await stop_api(api)


async def test_without_a_retention_nothing_is_purged(database_url):
    forever = dataclasses.replace(PURGING, idempotency_retention_hours=0.0)
    api = await start_api(database_url, forever)
    try:
        user = await new_user(api)
        request = deposit_request(user, 1 * USD, source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION)
        first = (await api.ledger.Deposit(request)).transaction
        await age(api, request.request_id, 24 * 365)
        await asyncio.sleep(0.5)
        assert await records(api, request.request_id) == 1
        assert (await api.ledger.Deposit(request)).transaction == first
    finally:
        await stop_api(api)


def test_retention_settings_come_from_the_environment():
    settings = Settings.from_env({"QDATA_IDEMPOTENCY_RETENTION_HOURS": "24", "QDATA_IDEMPOTENCY_PURGE_SECONDS": "60"})
    assert (settings.idempotency_retention_hours, settings.idempotency_purge_seconds) == (24.0, 60.0)
    assert Settings.from_env({}).idempotency_retention_hours == 168.0
