"""Short explicit transactions with deadline-bound statements and bounded retries.

`run(pool, work)` checks out a connection, opens a transaction, sets a transaction-local
statement_timeout from the caller's remaining deadline, runs `work(conn)` and commits. A
serialization failure or deadlock reruns the whole transaction a bounded number of times.
Database trouble becomes a domain error here, so no psycopg exception (and no SQL text) travels
further up: a violated constraint becomes the error db/constraints.py names for it, an outage is
UNAVAILABLE, a statement stopped by the deadline DEADLINE_EXCEEDED.

Nothing here outlives the transaction (SET LOCAL, no session state), so the server can run
behind PgBouncer in transaction mode.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from qdata_server import callctx
from qdata_server.db.constraints import error_for
from qdata_server.errors import Aborted, DeadlineExceeded, Unavailable

T = TypeVar("T")
log = logging.getLogger("qdata.db")

# SQLSTATEs worth retrying: the same transaction may well succeed when run again.
_RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)
# Headroom kept from the caller's deadline so the answer still reaches it in time.
_DEADLINE_MARGIN_SECONDS = 0.05
_SET_TIMEOUT = "SELECT set_config('statement_timeout', %s, true)"


async def run(
    pool: AsyncConnectionPool,
    work: Callable[[psycopg.AsyncConnection], Awaitable[T]],
    *,
    retries: int = 5,
    snapshot: bool = False,
) -> T:
    """Runs work(conn) in one transaction, retrying it on serialization failure or deadlock.

    With snapshot, the transaction is REPEATABLE READ and READ ONLY: every statement sees the
    same consistent state (for checks that read a lot, like VerifyLedger).
    """
    attempt = 0
    while True:
        try:
            return await _run_once(pool, work, snapshot)
        except _RETRYABLE as exc:
            attempt += 1
            if attempt > retries:
                log.warning("transaction gave up after %d retries (sqlstate %s)", retries, exc.sqlstate)
                raise Aborted("too much contention on the same rows; retry the request", reason="CONTENTION") from None
            # Jittered exponential backoff keeps colliding transactions from colliding again.
            await asyncio.sleep(random.uniform(0, 0.005 * (2**attempt)))
        except psycopg.IntegrityError as exc:
            error = error_for(exc.diag.constraint_name, exc.diag.message_detail)
            if error is None:
                raise
            raise error from None
        except pg_errors.QueryCanceled:
            raise DeadlineExceeded("the deadline expired while the database was working") from None
        except PoolTimeout:
            raise Unavailable("no database connection available", reason="DATABASE_UNAVAILABLE") from None
        except psycopg.OperationalError as exc:
            log.warning("database unavailable: %s", type(exc).__name__)
            raise Unavailable("the database is unavailable", reason="DATABASE_UNAVAILABLE") from None


async def _run_once(
    pool: AsyncConnectionPool, work: Callable[[psycopg.AsyncConnection], Awaitable[T]], snapshot: bool
) -> T:
    ctx = callctx.current()
    left = ctx.time_left() if ctx else None
    if left is not None and left <= _DEADLINE_MARGIN_SECONDS:
        raise DeadlineExceeded("the deadline expired before the database was reached")
    async with pool.connection() as conn, conn.transaction():
        if snapshot:
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if left is not None:
            millis = max(1, int((left - _DEADLINE_MARGIN_SECONDS) * 1000))
            await conn.execute(_SET_TIMEOUT, (f"{millis}ms",))
        return await work(conn)
