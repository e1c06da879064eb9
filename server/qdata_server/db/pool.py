"""The psycopg connection pool, built once per worker process after the fork."""

from __future__ import annotations

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from qdata_server.config import Settings


async def open_pool(settings: Settings, conninfo: str) -> AsyncConnectionPool:
    """Opens a pool and waits until min_size connections work (raises PoolTimeout otherwise).

    Connections are checked on checkout, so one broken by a database restart is replaced
    instead of failing a request. Every connection returns rows as dicts and, being used
    only in explicit transactions, never autocommits.
    """
    pool = AsyncConnectionPool(
        conninfo,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_timeout_seconds,
        open=False,
        check=AsyncConnectionPool.check_connection,
        kwargs={"row_factory": dict_row, "application_name": "qdata"},
        name="qdata",
    )
    await pool.open(wait=True, timeout=max(settings.pool_timeout_seconds, 10.0))
    return pool
