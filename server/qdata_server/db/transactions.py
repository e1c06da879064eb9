"""Short explicit transactions with deadline-bound statements and bounded retries.

`run(pool, work, acting=...)` checks out a connection, opens a transaction, names whom it acts for
(row-level security, see db/functions/security.sql) and sets a transaction-local
statement_timeout from the caller's remaining deadline, runs `work(conn)` and commits. A
serialization failure or deadlock reruns the whole transaction a bounded number of times; so does
a prepared statement whose result shape a migration changed underneath ("cached plan must not
change result type", 0A000, in a rolling update), prepared again on the next attempt.

The transaction runs in pipeline mode: BEGIN, the settings and the work's first statement leave
in one flush, so naming the user costs no round trip of its own (a statement whose result the
work reads waits for it; statements run only for their effect ride along with the next one).
With QDATA_PREPARED_STATEMENTS=false (the mode for an old PgBouncer, which mishandles pipelines
too) each statement goes on its own; see QdataPool.pipelined.

`statement(pool, name, params, acting=...)` is the path of a call whose whole work is one named
statement (GetBalance, GetUser, GetTransaction, GetHold, the login's lockout reservation; and,
through `statements`, a few that need none of each other's results, as ListTransactions' user
check and page): the
settings and the statement are queued and leave with one Sync, so the call is one round trip and
two statements. No BEGIN or COMMIT is sent: statements of a pipeline up to its Sync run in one
implicit transaction (PostgreSQL's extended query protocol), so the settings are local to the
statement's transaction exactly as in `run`, row-level security sees the acting users, the
deadline bounds the statement, and an error rolls the whole back. Same retries as `run`.
Database trouble becomes a domain error here, through the one SQLSTATE mapping in db/errors.py, so
no psycopg exception (and no SQL text) travels further up: a violated constraint becomes the error
db/constraints.py names for it, an outage or a read-only database UNAVAILABLE, a statement stopped
by the deadline DEADLINE_EXCEEDED. Waiting for a pooled connection is bounded by the caller's
deadline too.

Nothing here outlives the transaction (SET LOCAL, no session state), so the server can run
behind PgBouncer in transaction mode; psycopg's prepared statements are session state, though, and
need PgBouncer 1.21+ with max_prepared_statements, or QDATA_PREPARED_STATEMENTS=false. Without
either, a lost prepared statement (26000, 42P05) is UNAVAILABLE with reason
PREPARED_STATEMENTS_UNSUPPORTED, logged once with that fix, and health turns NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc
import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server import callctx, metrics_hooks, tracing
from qdata_server.clock import clock_setting
from qdata_server.contract import wire_reason
from qdata_server.db.connection import Conn, Params, Pool, Row
from qdata_server.db.errors import RETRYABLE as _RETRYABLE
from qdata_server.db.errors import contention, database_error, sqlstate_class, unavailable
from qdata_server.db.sql import execute, fetch_all, submit
from qdata_server.errors import DeadlineExceeded, Unavailable

T = TypeVar("T")
log = logging.getLogger("qdata.db")

# 0A000 "cached plan must not change result type": a statement prepared before a migration
# changed the shape of its result (a rolling update); retried with the statement prepared again.
# (Any other 0A000 is a bug that fails on every attempt, so the bounded retry still ends in it.)
_STALE_PLAN = pg_errors.FeatureNotSupported
# A prepared statement the server connection does not have (26000), already has (42P05) or has
# with another client's text (08P01, "bind message supplies 1 parameters, but prepared statement
# ... requires 0"): a pooler in transaction mode (PgBouncer before 1.21, or without
# max_prepared_statements) moved the client to another server connection between transactions.
PREPARED_STATEMENT_LOST = (
    pg_errors.InvalidSqlStatementName,
    pg_errors.DuplicatePreparedStatement,
    pg_errors.ProtocolViolation,
)
PREPARED_STATEMENTS_FIX = (
    "set QDATA_PREPARED_STATEMENTS=false, or run PgBouncer 1.21 or later with max_prepared_statements > 0"
)
# Pools that lost a prepared statement to a pooler; health reports NOT_SERVING for them.
_pooler_broke_prepared: weakref.WeakSet[AsyncConnectionPool[Any]] = weakref.WeakSet()
# Headroom kept from the caller's deadline so the answer still reaches it in time.
_DEADLINE_MARGIN_SECONDS = 0.05
# Headroom kept when waiting for a pooled connection: UNAVAILABLE must reach the caller before its
# deadline does (a loaded server needs more than the statement margin to answer).
_CHECKOUT_MARGIN_SECONDS = 0.2
_BEGIN = "BEGIN"
# Every statement sees the same consistent state (checks that read a lot, like VerifyLedger).
_BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
_COMMIT = "COMMIT"
# The "user" of requests made for nobody (catalog changes): their idempotency records and audit
# events carry it, and no real user has it.
NO_USER_ID = uuid.UUID(int=0)


@dataclasses.dataclass(frozen=True)
class Acting:
    """Whose rows a transaction may see and change; row-level security enforces it.

    Build one with acting_for(user, ...), or use ACTING_FOR_NO_USER (global data only: the
    catalog, rollups by model) or ACTING_FOR_ALL_USERS (a cross-user path, named as such at each
    call site).
    """

    users: tuple[uuid.UUID, ...] = ()
    all_users: bool = False

    def settings(self) -> dict[str, str]:
        """The values of qdata.acting_users and qdata.all_users for this transaction."""
        return {
            "acting_users": "{" + ",".join(str(u) for u in self.users) + "}",
            "all_users": "on" if self.all_users else "off",
        }


def acting_for(*users: uuid.UUID | Iterable[uuid.UUID] | None) -> Acting:
    """A transaction acting for these users (None stands for "no user"; duplicates collapse)."""
    flat: list[uuid.UUID] = []
    for user in users:
        if user is None:
            flat.append(NO_USER_ID)
        elif isinstance(user, uuid.UUID):
            flat.append(user)
        else:
            flat.extend(user)
    return Acting(users=tuple(dict.fromkeys(flat)))


ACTING_FOR_NO_USER = Acting(users=(NO_USER_ID,))
ACTING_FOR_ALL_USERS = Acting(all_users=True)


async def run(
    pool: Pool,
    work: Callable[[Conn], Awaitable[T]],
    *,
    acting: Acting,
    retries: int = 5,
    snapshot: bool = False,
) -> T:
    """Runs work(conn) in one transaction, retrying it on serialization failure or deadlock.

    With snapshot, the transaction is REPEATABLE READ and READ ONLY: every statement sees the
    same consistent state (for checks that read a lot, like VerifyLedger).
    """
    pipelined = getattr(pool, "pipelined", True)
    clock = clock_setting(getattr(pool, "clock", None))

    async def body(conn: Conn, statement_timeout: str | None) -> T:
        # Pooled connections are in autocommit mode, so the transaction is ours to open: BEGIN,
        # the settings and the work's first statement are queued and leave in one flush;
        # COMMIT rides with the pipeline's closing sync. Without pipelining (see
        # QdataPool.pipelined) each statement is its own round trip.
        async with conn.pipeline() if pipelined else contextlib.nullcontext():
            await conn.execute(_BEGIN_SNAPSHOT if snapshot else _BEGIN)
            await name_acting(conn, acting, statement_timeout=statement_timeout, clock=clock)
            result = await work(conn)
            await conn.execute(_COMMIT)
        return result

    return await _retrying(pool, body, retries)


async def statement(pool: Pool, name: str, params: Params, *, acting: Acting, retries: int = 5) -> list[Row]:
    """Runs the named statement alone in one transaction acting for `acting`; returns its rows.

    One round trip: the settings and the statement leave with one Sync and run in the implicit
    transaction that Sync ends (see the module doc). Without pipelining it is `run` of the one
    statement.
    """
    [rows] = await statements(pool, [(name, params)], acting=acting, retries=retries)
    return rows


async def statements(
    pool: Pool, queries: Sequence[tuple[str, Params]], *, acting: Acting, retries: int = 5
) -> list[list[Row]]:
    """As statement, for a few statements none of which needs another's result (a check and the
    read it guards): all leave with one Sync, in one implicit transaction; returns each one's rows.
    """

    async def one_by_one(conn: Conn) -> list[list[Row]]:
        return [await fetch_all(conn, name, params) for name, params in queries]

    if not getattr(pool, "pipelined", True):
        return await run(pool, one_by_one, acting=acting, retries=retries)

    clock = clock_setting(getattr(pool, "clock", None))

    async def body(conn: Conn, statement_timeout: str | None) -> list[list[Row]]:
        # Leaving the pipeline sends its Sync and reads every result: the one round trip (an
        # explicit sync() inside would cost a second one, for the closing Sync).
        async with conn.pipeline():
            await name_acting(conn, acting, statement_timeout=statement_timeout, clock=clock)
            cursors = [await submit(conn, name, params) for name, params in queries]
        return [await cursor.fetchall() for cursor in cursors]

    return await _retrying(pool, body, retries)


async def _retrying(pool: Pool, body: Callable[[Conn, str | None], Awaitable[T]], retries: int) -> T:
    """Runs body(conn, statement_timeout) on a pooled connection, rerunning it as `run` says."""
    attempt = 0
    stale_attempts = 0
    while True:
        try:
            if tracing.ON:
                # One span per attempt (its pool wait included), parent of the statements' spans.
                tries = attempt + stale_attempts + 1
                with tracing.database_span("transaction", **{"qdata.transaction.attempt": tries}):
                    return await _run_once(pool, body)
            return await _run_once(pool, body)
        except _STALE_PLAN as exc:
            # A newer replica changed a table under a statement this connection prepared; the
            # rollback in _run_once made psycopg forget (and DEALLOCATE) that connection's
            # statements, so the next attempt re-prepares. Each failure refreshes one connection.
            stale_attempts += 1
            if stale_attempts > pool.max_size:
                raise
            log.info("re-preparing after a schema change (sqlstate %s)", exc.sqlstate)
        except PREPARED_STATEMENT_LOST as exc:
            raise prepared_statement_lost(pool, exc) from None
        except _RETRYABLE as exc:
            attempt += 1
            if attempt > retries:
                log.warning("transaction gave up after %d retries (sqlstate %s)", retries, exc.sqlstate)
                raise contention() from None
            metrics_hooks.transaction_retry(_method_name())
            # Jittered exponential backoff keeps colliding transactions from colliding again.
            await asyncio.sleep(random.uniform(0, 0.005 * (2**attempt)))
        except (psycopg.Error, PoolTimeout) as exc:
            error = database_error(exc)
            if error is None:
                raise  # a bug: the interceptor answers INTERNAL and logs the SQLSTATE
            if error.code is grpc.StatusCode.UNAVAILABLE:
                # SQLSTATE and reason only: the message text may carry SQL or values.
                log.warning(
                    "database error", extra={"sqlstate": getattr(exc, "sqlstate", None), "reason": error.reason}
                )
            raise error from None


def _method_name() -> str:
    """The running call's method name ("Charge"), the label of qdata_transaction_retries_total; "" outside a call."""
    ctx = callctx.current()
    return ctx.method.rpartition("/")[2] if ctx else ""


def prepared_statements_unsupported(pool: AsyncConnectionPool[Any]) -> bool:
    """True once a transaction on this pool lost a prepared statement to a pooler (see run)."""
    return pool in _pooler_broke_prepared


def prepared_statement_lost(pool: AsyncConnectionPool[Any], exc: psycopg.Error) -> Unavailable:
    """Notes a PREPARED_STATEMENT_LOST error on pool (the first is logged with the fix); returns
    the UNAVAILABLE it becomes."""
    connect_kwargs = pool.kwargs if isinstance(pool.kwargs, dict) else {}
    if isinstance(exc, pg_errors.ProtocolViolation) and connect_kwargs.get("prepare_threshold", 5) is None:
        # Without prepared statements a protocol violation is no statement mix-up: class 08.
        log.warning(
            "database error",
            extra={"sqlstate": exc.sqlstate, "reason": wire_reason(ErrorReason.ERROR_REASON_DATABASE_UNAVAILABLE)},
        )
        return unavailable()
    if pool not in _pooler_broke_prepared:
        _pooler_broke_prepared.add(pool)
        log.error(
            "prepared statements do not work through this connection (sqlstate %s): a pooler in "
            "transaction mode sits in front of PostgreSQL; %s. Not serving until restarted with the fix",
            exc.sqlstate,
            PREPARED_STATEMENTS_FIX,
        )
    return Unavailable(
        "the database connection does not support prepared statements",
        reason=ErrorReason.ERROR_REASON_PREPARED_STATEMENTS_UNSUPPORTED,
    )


async def name_acting(
    conn: psycopg.AsyncConnection[Any], acting: Acting, *, statement_timeout: str | None = None, clock: str = ""
) -> None:
    """Names whom the transaction open on conn acts for (and bounds its statements); clock is the
    budgets' injected time (qdata_server/clock.py; empty: the database's own)."""
    await execute(
        conn, "begin_transaction", {**acting.settings(), "statement_timeout": statement_timeout, "clock": clock}
    )


async def _run_once(pool: Pool, body: Callable[[Conn, str | None], Awaitable[T]]) -> T:
    ctx = callctx.current()
    left = ctx.time_left() if ctx else None
    if left is not None and left <= _DEADLINE_MARGIN_SECONDS:
        raise DeadlineExceeded("the deadline expired before the database was reached")
    timeout = None if left is None else f"{max(1, int((left - _DEADLINE_MARGIN_SECONDS) * 1000))}ms"
    # Waiting for a connection never outlasts the caller: with too little time left it ends in
    # PoolTimeout (UNAVAILABLE) while the caller still listens, instead of in its DEADLINE_EXCEEDED.
    wait = pool.timeout if left is None else max(0.001, min(pool.timeout, left - _CHECKOUT_MARGIN_SECONDS))
    async with pool.connection(timeout=wait) as conn:
        try:
            return await body(conn, timeout)
        except pg_errors.ReadOnlySqlTransaction as exc:
            metrics_hooks.database_error(sqlstate_class(exc))
            # This connection reaches a read-only server (a demoted primary, say): close it, so the
            # pool's next connection goes through DNS or target_session_attrs again.
            await conn.close()
            raise
        except BaseException as exc:
            # Every database error of a transaction attempt passes here (the one count of
            # qdata_db_errors_total), before run() retries or maps it (db/errors.py).
            if isinstance(exc, psycopg.Error):
                metrics_hooks.database_error(sqlstate_class(exc))
            # Roll back here rather than leave it to the pool, which would log every domain error
            # (NOT_FOUND, ...) as a connection returned mid-transaction. A broken connection is
            # the pool's to discard.
            if not conn.closed:
                try:
                    await conn.rollback()
                except psycopg.Error:
                    pass
            raise
