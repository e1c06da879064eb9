"""The one SQLSTATE mapping (db/errors.py), class by class: what a caller sees for each failure."""

from __future__ import annotations

import grpc
import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg_pool import PoolTimeout

from qdata_server.db.errors import RETRYABLE, database_error

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
# (SQLSTATE, expected code, expected reason); None: a bug, answered INTERNAL by the interceptor.
CASES = [
    # 08 connection exception
    ("08000", UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    ("08003", UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    ("08006", UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    ("08001", UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    ("08004", UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    ("08P01", UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    # 25 invalid transaction state: read-only is the database's state, the rest our bugs
    ("25006", UNAVAILABLE, "DATABASE_READ_ONLY"),
    ("25001", None, None),
    ("25P02", None, None),
    ("25P03", None, None),
    # 40 transaction rollback (40001/40P01 are retried first; see RETRYABLE)
    ("40001", grpc.StatusCode.ABORTED, "CONTENTION"),
    ("40P01", grpc.StatusCode.ABORTED, "CONTENTION"),
    ("40000", grpc.StatusCode.ABORTED, "CONTENTION"),
    ("40003", UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    # 53 insufficient resources
    ("53000", UNAVAILABLE, "DATABASE_OVERLOADED"),
    ("53100", UNAVAILABLE, "DATABASE_FULL"),
    ("53200", UNAVAILABLE, "DATABASE_OVERLOADED"),
    ("53300", UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    ("53400", UNAVAILABLE, "DATABASE_OVERLOADED"),
    # 54 program limit exceeded: validation should have bounded the input
    ("54000", None, None),
    ("54001", None, None),
    ("54011", None, None),
    ("54023", None, None),
    # 55 object not in prerequisite state
    ("55P03", grpc.StatusCode.ABORTED, "CONTENTION"),
    ("55000", None, None),
    ("55006", None, None),
    # 57 operator intervention
    ("57014", grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
    ("57000", UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    ("57P01", UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    ("57P02", UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    ("57P03", UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    ("57P04", UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    ("57P05", UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    # 58 system error (outside PostgreSQL)
    ("58000", UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    ("58030", UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    ("58P01", UNAVAILABLE, "DATABASE_UNAVAILABLE"),
    # XX internal error (corruption): a real fault, INTERNAL
    ("XX000", None, None),
    ("XX001", None, None),
    ("XX002", None, None),
    # Our own mistakes
    ("22P02", None, None),
    ("42601", None, None),
    ("42501", None, None),
]


def make_error(sqlstate: str) -> psycopg.Error:
    try:
        return pg_errors.lookup(sqlstate)()
    except KeyError:
        # A SQLSTATE this psycopg does not name: an instance of the class-level error.
        error = pg_errors.lookup(sqlstate[:2] + "000")()
        error.sqlstate = sqlstate  # type: ignore[misc]
        return error


@pytest.mark.parametrize(("sqlstate", "code", "reason"), CASES, ids=[c[0] for c in CASES])
def test_each_sqlstate_maps_to_its_status(sqlstate, code, reason):
    error = database_error(make_error(sqlstate))
    if code is None:
        assert error is None, f"{sqlstate} should be a bug (INTERNAL), got {error.code.name}"
    else:
        assert error is not None, f"{sqlstate} should be {code.name}"
        assert (error.code, error.reason) == (code, reason)


def test_only_serialization_failures_and_deadlocks_are_retried():
    assert {cls.sqlstate for cls in RETRYABLE} == {"40001", "40P01"}


def test_a_connection_lost_without_sqlstate_is_unavailable():
    error = database_error(psycopg.OperationalError("consuming input failed: server closed the connection"))
    assert (error.code, error.reason) == (UNAVAILABLE, "DATABASE_UNAVAILABLE")
    assert "server closed" not in error.message


def test_a_pool_timeout_is_unavailable():
    error = database_error(PoolTimeout("couldn't get a connection after 5.00 sec"))
    assert (error.code, error.reason) == (UNAVAILABLE, "DATABASE_UNAVAILABLE")


def test_misuse_and_unknown_constraints_are_bugs():
    assert database_error(psycopg.InterfaceError("bad use")) is None
    assert database_error(pg_errors.lookup("23505")()) is None  # no constraint name: unlisted
    assert database_error(ValueError("not a database error")) is None


def test_messages_never_carry_the_database_text():
    for sqlstate, code, _ in CASES:
        if code is not None:
            exc = pg_errors.lookup(sqlstate[:2] + "000")("SELECT secret FROM users")
            error = database_error(exc)
            if error is not None:
                assert "SELECT" not in error.message
