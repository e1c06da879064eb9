"""Idempotency records expire: a replay within the retention returns the first answer, the
background purge forgets older records, and a replay after that is a new request, except for a
money-moving request, which the ledger itself remembers forever (more in test_late_replays.py)."""

from __future__ import annotations

import asyncio
import dataclasses

from qdata.v1 import chat_pb2, ledger_pb2
from qdata_server.config import Settings
from tests.support.calls import rid
from tests.support.database import scalar
from tests.support.ledger import amounts, deposit_request, new_user
from tests.support.server import TEST_SETTINGS, start_api, stop_api

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


async def test_records_past_the_retention_are_purged_and_only_money_outlives_them(database_url):
    api = await start_api(database_url, PURGING)
    try:
        user = await new_user(api)
        promotion = ledger_pb2.DEPOSIT_SOURCE_PROMOTION
        old = deposit_request(user, 1 * USD, source=promotion, external_reference="")
        recent = deposit_request(user, 2 * USD, source=promotion, external_reference="")
        paid = deposit_request(user, 4 * USD)  # a payment, with the provider's reference
        session = chat_pb2.CreateSessionRequest(request_id=rid(), user_id=user, title="notes")
        first_old = (await api.ledger.Deposit(old)).transaction
        first_recent = (await api.ledger.Deposit(recent)).transaction
        first_paid = (await api.ledger.Deposit(paid)).transaction
        first_session = (await api.chat.CreateSession(session)).session
        for request_id in (old.request_id, paid.request_id, session.request_id):
            await age(api, request_id, 25)  # past the 24-hour retention
        await age(api, recent.request_id, 23)  # within it

        for request_id in (old.request_id, paid.request_id, session.request_id):
            await wait_until_gone(api, request_id)
        # Another purge round leaves the recent record alone.
        await asyncio.sleep(0.3)
        assert await records(api, recent.request_id) == 1

        # Within the retention: the first answer, no second effect.
        assert (await api.ledger.Deposit(recent)).transaction == first_recent
        # Past it, money still moves once: the ledger answers with the first transaction.
        assert (await api.ledger.Deposit(old)).transaction == first_old
        assert (await api.ledger.Deposit(paid)).transaction == first_paid
        assert (await amounts(api, user))[0] == 7 * USD
        # Anything else past it is a new request: a second session.
        assert (await api.chat.CreateSession(session)).session.id != first_session.id
    finally:
        await stop_api(api)


async def test_records_of_money_accepted_before_the_ledger_kept_keys_are_never_purged(database_url):
    """Rows written before 0009 carry no key, so their idempotency records stay (kept_forever)."""
    api = await start_api(database_url, PURGING)
    try:
        user = await new_user(api)
        request = deposit_request(user, 1 * USD, source=ledger_pb2.DEPOSIT_SOURCE_PROMOTION)
        first = (await api.ledger.Deposit(request)).transaction
        # As 0009 marks the records of money accepted before it, a year old.
        await scalar(
            api,
            "UPDATE idempotency_keys SET kept_forever = true, created_at = created_at - interval '1 year'"
            " WHERE request_id = %s RETURNING 1",
            (request.request_id,),
        )
        await asyncio.sleep(0.5)  # a few purge rounds
        assert await records(api, request.request_id) == 1
        assert (await api.ledger.Deposit(request)).transaction == first
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
        await asyncio.sleep(0.5)  # a few purge rounds
        assert await records(api, request.request_id) == 1
        assert (await api.ledger.Deposit(request)).transaction == first
    finally:
        await stop_api(api)


def test_retention_settings_come_from_the_environment():
    settings = Settings.from_env({"QDATA_IDEMPOTENCY_RETENTION_HOURS": "24", "QDATA_IDEMPOTENCY_PURGE_SECONDS": "60"})
    assert (settings.idempotency_retention_hours, settings.idempotency_purge_seconds) == (24.0, 60.0)
    assert Settings.from_env({}).idempotency_retention_hours == 168.0
