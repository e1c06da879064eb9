"""A saturated pool is load, not an outage: health stays SERVING and one WARNING says so."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import grpc
import psycopg
import pytest
from google.protobuf import field_mask_pb2

from qdata.v1 import user_pb2
from tests.faults.db_support import SERVING, health
from tests.support.calls import create_user, rid
from tests.support.server import TEST_SETTINGS, serving, serving_url

pytestmark = pytest.mark.slow

# Two connections, held by calls blocked on a row lock, and more calls queued behind them.
SETTINGS = dataclasses.replace(TEST_SETTINGS, pool_min_size=1, pool_max_size=2, pool_timeout_seconds=5.0)


def rename(user_id: str, name: str) -> user_pb2.UpdateUserRequest:
    return user_pb2.UpdateUserRequest(
        request_id=rid(),
        user=user_pb2.User(id=user_id, display_name=name),
        update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
    )


async def test_a_saturated_pool_keeps_health_serving_and_logs_a_warning(database_url, caplog):
    caplog.set_level(logging.WARNING, logger="qdata.server")
    async with serving(serving_url(database_url), SETTINGS) as api:
        user = await create_user(api)
        async with await psycopg.AsyncConnection.connect(database_url) as lock:
            await lock.execute("SELECT 1 FROM users WHERE user_id = %s FOR UPDATE", (user.id,))
            calls = [asyncio.ensure_future(api.users.UpdateUser(rename(user.id, f"n{i}"), timeout=8)) for i in range(5)]
            await asyncio.sleep(0.5)
            stats = api.server.pool.get_stats()
            assert stats.get("requests_waiting", 0) > 0, stats  # the pool is saturated
            # Longer than the old probe's 2 s wait for a pooled connection.
            for _ in range(12):
                assert await health(api) == SERVING
                await asyncio.sleep(0.25)
            await lock.rollback()
        results = await asyncio.gather(*calls, return_exceptions=True)
    # The queued calls went through once the lock was gone (or timed out waiting: UNAVAILABLE).
    for result in results:
        if isinstance(result, grpc.aio.AioRpcError):
            assert result.code() == grpc.StatusCode.UNAVAILABLE, result.details()
    saturated = [r for r in caplog.records if r.getMessage() == "connection pool saturated"]
    assert len(saturated) == 1  # rate-limited: one line, not one per probe
    assert saturated[0].requests_waiting > 0
