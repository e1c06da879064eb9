"""The psycopg connection pool, built once per worker process after the fork."""

from __future__ import annotations

import contextlib
import time
import weakref
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from qdata_server.config import Settings

# A connection given back less than this long ago is handed out again without a liveness
# round trip: it just worked, and if it broke since, the one request using it fails with
# UNAVAILABLE and the pool discards it. Older connections are checked before use.
RECENTLY_USED_SECONDS = 2.0
_returned_at: weakref.WeakKeyDictionary[psycopg.AsyncConnection, float] = weakref.WeakKeyDictionary()


async def _note_return(conn: psycopg.AsyncConnection) -> None:
    _returned_at[conn] = time.monotonic()


async def _check_unless_recently_used(conn: psycopg.AsyncConnection) -> None:
    returned = _returned_at.get(conn)
    if returned is not None and time.monotonic() - returned < RECENTLY_USED_SECONDS:
        return
    await AsyncConnectionPool.check_connection(conn)


class ServingPool(AsyncConnectionPool):
    """The pool, knowing every connection it opened, so that shutdown leaves none behind.

    psycopg_pool's close() closes only the idle connections; one still lent to a call that did not
    end would keep its backend, and the locks it holds, after the process exits. close_all()
    cancels such a connection's statement in the server and closes it.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        self._made: weakref.WeakSet[psycopg.AsyncConnection] = weakref.WeakSet()
        super().__init__(*args, configure=self._register, **kwargs)

    async def _register(self, conn: psycopg.AsyncConnection) -> None:
        self._made.add(conn)

    async def close_all(self, wait_seconds: float = 5.0) -> int:
        """Closes the pool, then every connection still lent out; returns how many those were."""
        await self.close(timeout=wait_seconds)
        lent = [conn for conn in self._made if not conn.closed]
        for conn in lent:
            if conn.pgconn.transaction_status == TransactionStatus.ACTIVE:
                # The statement stops in the server (and its locks go) even if closing races it.
                with contextlib.suppress(psycopg.Error, OSError):
                    await conn.cancel_safe(timeout=2.0)
            await conn.close()
        return len(lent)


async def open_pool(settings: Settings, conninfo: str, *, wait: bool = True) -> ServingPool:
    """Opens a pool; with wait, until min_size connections work (raises PoolTimeout otherwise).

    Without wait the pool connects in the background and keeps retrying while the database is
    unreachable; requests meanwhile fail with UNAVAILABLE after the pool timeout.

    Connections idle for a while are checked on checkout, so one broken by a database restart
    is replaced instead of failing a request. Every connection returns rows as dicts and is in
    autocommit mode: db/transactions.py opens each transaction itself, with BEGIN queued in the
    same flush as its first statements (psycopg's implicit BEGIN would cost a round trip).
    Anything else that needs a transaction on a pooled connection opens one explicitly.
    """
    pool = ServingPool(
        conninfo,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_timeout_seconds,
        open=False,
        check=_check_unless_recently_used,
        reset=_note_return,
        kwargs={
            "row_factory": dict_row,
            "autocommit": True,
            "application_name": "qdata",
            # None never prepares; psycopg's default prepares a query after its 5th use.
            **({} if settings.prepared_statements else {"prepare_threshold": None}),
        },
        name="qdata",
    )
    await pool.open(wait=wait, timeout=max(settings.pool_timeout_seconds, 10.0))
    return pool
