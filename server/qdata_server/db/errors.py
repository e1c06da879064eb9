"""The one mapping of database failures (psycopg errors by SQLSTATE, pool timeouts) to domain errors.

`database_error(exc)` decides, class by SQLSTATE class, what a caller sees when the database
fails a transaction; db/transactions.py calls it for every psycopg error its retry loop does not
handle itself (40001/40P01 are retried there first and become ABORTED CONTENTION when retries run
out). None means "a bug of ours": the exception travels on and the interceptor answers INTERNAL
with an error id, logging the SQLSTATE. Nothing here reads an error's message text (it may carry
SQL or values); only the SQLSTATE and, for integrity errors, the constraint name.

Decisions, by class:
- 08 connection exception, 57P01-57P05/57000 operator intervention (shutdown, crash recovery,
  "cannot connect now", database dropped, idle timeouts), 58 system error (I/O), 53300 too many
  connections, 40003 statement completion unknown, and a connection lost without a SQLSTATE:
  UNAVAILABLE DATABASE_UNAVAILABLE. The database is (or was, for this connection) out of reach;
  a retry with the same request_id is safe, since every write is idempotent.
- 25006 read-only transaction (a replica after failover, default_transaction_read_only):
  UNAVAILABLE DATABASE_READ_ONLY; writes can succeed once the primary is back or reached.
- 53 insufficient resources (disk full, out of memory, configuration limit): UNAVAILABLE,
  DATABASE_FULL for 53100 and DATABASE_OVERLOADED otherwise. The database, not the caller's quota,
  is short, so RESOURCE_EXHAUSTED (a per-caller limit in gRPC's vocabulary) would mislead.
- 55P03 lock not available (lock_timeout, NOWAIT) and class 40 rollbacks that were not retried:
  ABORTED CONTENTION, like exhausted retries.
- 57014 query canceled (the statement_timeout set from the caller's deadline): DEADLINE_EXCEEDED.
- 23 integrity violation and 40002 (a deferred constraint at commit): the constraint's domain
  error from db/constraints.py; an unnamed or unlisted constraint is a bug (None).
- 54 program limit exceeded (index row too large, too many arguments): None. Input validation
  bounds every field, so reaching a database limit means a missing bound: a bug to fix, not a
  condition a caller can act on.
- Other 25 (invalid transaction state), 55 (object not in prerequisite state), XX internal error
  (data or index corruption), 22, 42 and the rest: None (INTERNAL).
- 0A000 (a stale prepared statement after a schema change), 26000 and 42P05 (prepared statements
  lost or duplicated behind PgBouncer) belong to the retry loop in db/transactions.py, which
  handles them before anything reaches this mapping.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout

from qdata.v1.error_reason_pb2 import ErrorReason
from qdata_server.db.constraints import error_for
from qdata_server.errors import Aborted, DeadlineExceeded, QdataError, Unavailable

# SQLSTATEs worth retrying in the same call: the same transaction may well succeed when run again.
RETRYABLE = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)


def unavailable() -> Unavailable:
    """The database cannot be reached (or this connection to it was lost)."""
    return Unavailable(
        "the database is unavailable; retry the request", reason=ErrorReason.ERROR_REASON_DATABASE_UNAVAILABLE
    )


def contention() -> Aborted:
    """Too many transactions want the same rows right now."""
    return Aborted(
        "too much contention on the same rows; retry the request", reason=ErrorReason.ERROR_REASON_CONTENTION
    )


# Exact SQLSTATEs first, then whole classes (the first two characters).
_BY_SQLSTATE: dict[str, Callable[[], QdataError]] = {
    "25006": lambda: Unavailable(
        "the database is read-only (a replica or in maintenance); retry the request",
        reason=ErrorReason.ERROR_REASON_DATABASE_READ_ONLY,
    ),
    "40003": unavailable,
    "53100": lambda: Unavailable(
        "the database is out of disk space; retry the request later", reason=ErrorReason.ERROR_REASON_DATABASE_FULL
    ),
    "53300": unavailable,
    "55P03": contention,
    "57014": lambda: DeadlineExceeded("the deadline expired while the database was working"),
}
_BY_CLASS: dict[str, Callable[[], QdataError]] = {
    "08": unavailable,
    # 40001/40P01 only arrive here if a caller runs without retries; other rollbacks alike.
    "40": contention,
    "53": lambda: Unavailable(
        "the database is overloaded; retry the request", reason=ErrorReason.ERROR_REASON_DATABASE_OVERLOADED
    ),
    "57": unavailable,
    "58": unavailable,
}


def sqlstate_class(exc: psycopg.Error) -> str:
    """The error's SQLSTATE class (its first two characters), the label of qdata_db_errors_total.

    An error without SQLSTATE is the client side losing the connection ("08", connection
    exception) for an OperationalError, and "" for anything else (a client-side misuse).
    """
    sqlstate = exc.sqlstate
    if sqlstate:
        return sqlstate[:2]
    return "08" if isinstance(exc, psycopg.OperationalError) else ""


def database_error(exc: BaseException) -> QdataError | None:
    """The domain error a caller gets for this database failure; None if it is a bug (INTERNAL)."""
    if isinstance(exc, PoolTimeout):
        return Unavailable(
            "no database connection available; retry the request", reason=ErrorReason.ERROR_REASON_DATABASE_UNAVAILABLE
        )
    if not isinstance(exc, psycopg.Error):
        return None
    sqlstate = exc.sqlstate
    if isinstance(exc, (psycopg.IntegrityError, pg_errors.TransactionIntegrityConstraintViolation)):
        return error_for(exc.diag.constraint_name, exc.diag.message_detail)
    if sqlstate is None:
        # No SQLSTATE: the client side lost the connection (closed socket, failed connect).
        return unavailable() if isinstance(exc, psycopg.OperationalError) else None
    if sqlstate in _BY_SQLSTATE:
        return _BY_SQLSTATE[sqlstate]()
    if sqlstate[:2] in _BY_CLASS:
        return _BY_CLASS[sqlstate[:2]]()
    return None
