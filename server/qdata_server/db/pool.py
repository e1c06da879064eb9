"""The psycopg connection pool, built once per worker process after the fork."""

from __future__ import annotations

import asyncio
import contextlib
import select
import time
import weakref
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from qdata_server.clock import Clock
from qdata_server.config import Settings
from qdata_server.db.connection import Conn

# A connection given back less than this long ago is handed out again without a liveness round
# trip if nothing arrived on its socket since: it just worked, and a server that ended it since
# (pg_terminate_backend, a restart, an idle timeout) sent an error and closed the socket, which
# leaves it readable. Older connections, and any with unread input, are checked before use.
RECENTLY_USED_SECONDS = 2.0
# Longest liveness round trip at checkout before the connection counts as dead (a silent network).
CHECK_TIMEOUT_SECONDS = 1.0
# psycopg_pool retries a failed connect with exponential backoff (1 s, 2 s, 4 s, ...) for
# reconnect_timeout (5 min by default). A retry scheduled far ahead keeps the pool from growing
# while the database is back, so each attempt gives up after about a second; waiting requests and
# the health monitor (QdataPool.revive) start fresh attempts, which connect at once.
RECONNECT_GIVE_UP_SECONDS = 1.0
_returned_at: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = weakref.WeakKeyDictionary()


async def _note_return(conn: Conn) -> None:
    _returned_at[conn] = time.monotonic()


def _has_unread_input(conn: psycopg.AsyncConnection[Any]) -> bool:
    """True if the idle connection's socket is readable: the server said something (or hung up)."""
    try:
        fd = conn.pgconn.socket
    except psycopg.OperationalError:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


async def _usable(conn: psycopg.AsyncConnection[Any], within: float) -> bool:
    """Whether a connection taken from the pool works, at no round trip when that is certain."""
    if conn.closed or conn.broken:
        return False
    returned = _returned_at.get(conn)
    if returned is not None and time.monotonic() - returned < RECENTLY_USED_SECONDS and not _has_unread_input(conn):
        return True
    try:
        # At least 50 ms: a healthy round trip takes far less, and a budget too short to complete
        # it would discard a good connection.
        async with asyncio.timeout(max(0.05, min(within, CHECK_TIMEOUT_SECONDS))):
            await AsyncConnectionPool.check_connection(conn)
    except (psycopg.Error, TimeoutError):
        return False
    return True


class QdataPool(AsyncConnectionPool[psycopg.AsyncConnection[DictRow]]):
    """psycopg's pool, with a checkout that drops dead connections without sleeping, and a close
    that leaves no connection behind.

    psycopg_pool's own `check` callback, when a connection fails it, sleeps with backoff (1 s,
    2 s, ...) before trying the next one: after the server's connections were killed, the first
    request paid seconds for connections that were all known dead. Here a dead connection goes
    back at once (the pool discards it and starts a replacement) and the next one is tried, all
    within the same timeout.

    psycopg_pool's close() closes only the idle connections; one still lent to a call that did not
    end would keep its backend, and the locks it holds, after the process exits. close_all()
    cancels such a connection's statement in the server and closes it.
    """

    def __init__(self, *args: Any, pipelined: bool = True, **kwargs: Any) -> None:
        # Whether transactions on this pool run in pipeline mode (db/transactions.py). Off in the
        # mode for PgBouncer older than 1.21 (QDATA_PREPARED_STATEMENTS=false): behind PgBouncer
        # 1.18 in transaction mode, pipelined transactions now and then left a server connection
        # linked to a client whose backend sat idle after COMMIT, and every later call waited
        # forever (tests/integration/test_pgbouncer.py).
        self.pipelined = pipelined
        # The budgets' clock its transactions send (qdata_server/clock.py); None: database time.
        self.clock: Clock | None = None
        self._made: weakref.WeakSet[Conn] = weakref.WeakSet()
        # Checkouts asked for and those that gave up (PoolTimeout), since the last
        # pop_request_counts (the metrics' pool sampler, metrics_qdata.py).
        self._requests = 0
        self._timeouts = 0
        super().__init__(*args, configure=self._register, **kwargs)

    async def _register(self, conn: Conn) -> None:
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

    def pop_request_counts(self) -> tuple[int, int]:
        """Checkouts requested and checkouts that timed out since the last call (then both restart at 0).

        Counted here, once per getconn: psycopg_pool's own stats count each slice of the wait below
        as a request, and each slice that ends empty-handed as an error.
        """
        counts = (self._requests, self._timeouts)
        self._requests = self._timeouts = 0
        return counts

    async def getconn(self, timeout: float | None = None) -> Conn:  # noqa: ASYNC109 (the pool's API)
        self._requests += 1
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._timeouts += 1
                raise PoolTimeout(f"couldn't get a connection after {timeout or self.timeout:.2f} sec")
            # A pool below its maximum may have given up connecting (an outage): wait in slices of
            # a second, each ending empty-handed starting an attempt (revive), so the request
            # connects as soon as the database is back. A full pool is merely busy: wait in line.
            if self.get_stats().get("pool_size", 0) < self.max_size:
                left = min(left, 1.0)
            try:
                conn = await super().getconn(timeout=left)
            except PoolTimeout:
                if deadline - time.monotonic() <= 0:
                    self._timeouts += 1
                    raise
                await self.revive()
                continue
            try:
                usable = await _usable(conn, deadline - time.monotonic())
            except BaseException:
                await self.putconn(conn)
                raise
            if usable:
                return conn
            if not conn.closed:
                await conn.close()
            await self.putconn(conn)

    async def revive(self) -> None:
        """Starts a connection attempt now if the pool holds no idle connection.

        For the database coming back: pool.check() lets a pool that has no connection grow by one
        (a no-op while it is already growing). It is called only while the pool has no idle
        connection, because check() takes every idle connection out of the pool while it tests
        them one by one, each without a time limit: behind a pooler that queues the test (PgBouncer
        with every server connection busy) the whole pool would wait on it. Idle connections are
        tested at checkout instead, one at a time and within the caller's time (_usable), so the
        dead ones a restart left behind are dropped there. Shielded: a caller cancelled midway must
        not make check() lose the connections it holds.
        """
        if self.get_stats().get("pool_available", 0) == 0:
            await asyncio.shield(self.check())


async def open_pool(settings: Settings, conninfo: str, *, wait: bool = True) -> QdataPool:
    """Opens a pool; with wait, until min_size connections work (raises PoolTimeout otherwise).

    Without wait the pool connects in the background; while the database is unreachable, waiting
    requests and the health monitor keep starting attempts (see RECONNECT_GIVE_UP_SECONDS), and
    requests fail with UNAVAILABLE after the pool timeout or before their deadline.

    A connection is checked on checkout (see _usable), so one broken by a database restart or a
    killed backend is replaced instead of failing a request, and without the backoff sleeps of
    psycopg_pool's own check (see QdataPool). Every connection returns rows as dicts and is in
    autocommit mode: db/transactions.py opens each transaction itself, with BEGIN queued in the
    same flush as its first statements (psycopg's implicit BEGIN would cost a round trip).
    Anything else that needs a transaction on a pooled connection opens one explicitly.
    """
    pool = QdataPool(
        conninfo,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        timeout=settings.pool_timeout_seconds,
        open=False,
        reconnect_timeout=RECONNECT_GIVE_UP_SECONDS,
        reset=_note_return,
        pipelined=settings.prepared_statements,
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
