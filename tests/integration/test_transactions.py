"""The transaction runner against real PostgreSQL: deadlock retry, contention limit, errors."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from qdata_server.db import transactions
from qdata_server.db.pool import open_pool
from qdata_server.errors import Aborted, AlreadyExists
from tests.support.server import TEST_SETTINGS

NOBODY = transactions.ACTING_FOR_NO_USER


@pytest.fixture
async def pool(database_url):
    pool = await open_pool(TEST_SETTINGS, database_url)
    async with pool.connection() as conn:
        await conn.execute("CREATE TABLE counters (id int PRIMARY KEY, n int NOT NULL)")
        await conn.execute("INSERT INTO counters VALUES (1, 0), (2, 0)")
    yield pool
    await pool.close()


def crossing_updates(first: int, second: int, both_hold_first: asyncio.Barrier, attempts: list[int]):
    """A transaction that locks `first`, waits until the other holds its first row, then locks `second`."""

    async def work(conn: psycopg.AsyncConnection) -> None:
        attempts.append(first)
        # Reading the result makes the pipelined transaction send the update (and take the lock) now.
        cur = await conn.execute("UPDATE counters SET n = n + 1 WHERE id = %s RETURNING n", (first,))
        await cur.fetchone()
        if len(attempts) <= 2:  # only the first round is made to cross
            await both_hold_first.wait()
        await conn.execute("UPDATE counters SET n = n + 1 WHERE id = %s", (second,))

    return work


async def test_a_deadlock_is_retried_until_both_transactions_commit(pool):
    barrier = asyncio.Barrier(2)
    attempts: list[int] = []
    await asyncio.gather(
        transactions.run(pool, crossing_updates(1, 2, barrier, attempts), acting=NOBODY),
        transactions.run(pool, crossing_updates(2, 1, barrier, attempts), acting=NOBODY),
    )
    # PostgreSQL broke the deadlock by aborting one of them; the runner ran that one again.
    assert len(attempts) == 3
    async with pool.connection() as conn:
        rows = await (await conn.execute("SELECT id, n FROM counters ORDER BY id")).fetchall()
    assert [(r["id"], r["n"]) for r in rows] == [(1, 2), (2, 2)]


async def test_persistent_serialization_failures_become_aborted(pool):
    calls = 0

    async def always_conflicts(conn: psycopg.AsyncConnection) -> None:
        nonlocal calls
        calls += 1
        # What PostgreSQL reports when a concurrent change breaks this transaction's snapshot.
        await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$")
        await conn.execute("UPDATE counters SET n = n + 1 WHERE id = 1")

    with pytest.raises(Aborted) as caught:
        await transactions.run(pool, always_conflicts, acting=NOBODY, retries=2)
    assert caught.value.reason == "CONTENTION"
    assert calls == 3


async def test_a_named_constraint_becomes_its_domain_error(pool):
    async def duplicate(conn: psycopg.AsyncConnection) -> None:
        for _ in range(2):
            await conn.execute(
                "INSERT INTO users (email, username, password_hash) VALUES ('dup@example.com', %s, 'x')",
                (f"dup{_}",),
            )

    with pytest.raises(AlreadyExists) as caught:
        await transactions.run(pool, duplicate, acting=NOBODY)
    assert caught.value.reason == "EMAIL_TAKEN"


async def test_a_statement_prepared_before_a_schema_change_is_prepared_again(pool, database_url):
    # A `*` query whose result shape a migration changes: exactly what PostgreSQL refuses to run
    # from a prepared statement ("cached plan must not change result type", 0A000).
    calls = 0

    async def read(conn: psycopg.AsyncConnection) -> dict:
        nonlocal calls
        calls += 1
        # prepare=True: prepared on its first use on every connection, as psycopg does by itself
        # after the 5th use; left to that threshold, a connection the pool used fewer times would
        # not hold the statement, and the call after the migration might not meet the stale plan.
        cur = await conn.execute("SELECT * FROM counters WHERE id = %s", (1,), prepare=True)
        return await cur.fetchone()

    for _ in range(20):  # every connection of the pool (two or so) serves a few of these
        await transactions.run(pool, read, acting=NOBODY)
    # A newer replica's migration, on a connection of its own.
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as other:
        await other.execute("ALTER TABLE counters ADD COLUMN note text")
    calls = 0
    row = await transactions.run(pool, read, acting=NOBODY)
    assert row == {"id": 1, "n": 0, "note": None}
    # The stale statement failed on each connection that had prepared it (each failure makes that
    # connection forget its statements), then ran prepared anew.
    assert 2 <= calls <= 1 + pool.get_stats()["pool_size"]
