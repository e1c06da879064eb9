"""Direct SQL on a test's database as its owner, and the freshly migrated state tests return to.

Tests go through the API; `sql`, `scalar` and `rows` are for inspecting what it wrote (and, in
the tampering tests, corrupting it). `FreshState` is how a module-wide database is put back to
what the migrations left before each test (see tests/support/server.py's ModuleServer).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

import psycopg
from psycopg import sql as pgsql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool


class HasDatabase(Protocol):
    database_url: str


Target = HasDatabase | str  # an Api (its database, as the owner) or a database URL


def url_of(target: Target) -> str:
    return target if isinstance(target, str) else target.database_url


async def sql(target: Target, query: str, params: Any = None) -> list[dict[str, Any]]:
    """Runs one statement on the database as its owner (autocommit) and returns its rows."""
    async with await psycopg.AsyncConnection.connect(url_of(target), autocommit=True, row_factory=dict_row) as conn:
        cur = await conn.execute(query, params)  # type: ignore[arg-type]  # queries are literals in tests
        return await cur.fetchall() if cur.description else []


async def scalar(target: Target, query: str, params: Any = None) -> Any:
    """The first column of the first row of one statement."""
    rows = await sql(target, query, params)
    return next(iter(rows[0].values()))


async def rows(target: Target, queries: Mapping[str, str | pgsql.Composable]) -> dict[str, list[dict[str, Any]]]:
    """{name: rows} of several queries, on one connection."""
    found: dict[str, list[dict[str, Any]]] = {}
    async with await psycopg.AsyncConnection.connect(url_of(target), autocommit=True, row_factory=dict_row) as conn:
        for name, query in queries.items():
            found[name] = await (await conn.execute(query)).fetchall()  # type: ignore[arg-type]
    return found


async def table_rows(target: Target, *tables: str) -> dict[str, list[dict[str, Any]]]:
    """{table: every row} of these tables, in a fixed order: what a request could have changed,
    taken before and after it to prove that a rejected request changed nothing."""
    return await rows(
        target,
        {t: pgsql.SQL("SELECT * FROM {0} ORDER BY {0}::text").format(pgsql.Identifier(t)) for t in tables},
    )


async def pool_drained(pool: AsyncConnectionPool, *, within: float = 5.0) -> dict[str, int]:
    """Waits until every connection is back in the pool and nobody waits for one; returns the
    pool's stats then (asserts if that does not happen within `within` seconds). The health probe
    and the background loops borrow connections now and then, so this polls."""
    loop = asyncio.get_running_loop()
    ends = loop.time() + within
    while True:
        stats = pool.get_stats()
        if stats.get("pool_available", 0) == stats.get("pool_size", -1) and not stats.get("requests_waiting"):
            return stats
        assert loop.time() < ends, f"connections still lent out after {within} s: {stats}"
        await asyncio.sleep(0.05)


# ---- the freshly migrated state -----------------------------------------------------------------

TABLES = """
SELECT n.nspname AS schema, c.relname AS name, c.relispartition AS partition
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%'
ORDER BY 1, 2
"""


SEQUENCES = """
SELECT schemaname AS schema, sequencename AS name FROM pg_sequences
WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
"""


def digest_of(table: pgsql.Identifier) -> pgsql.Composed:
    """An expression for the digest of every row of table (what a seeded table is compared by)."""
    return pgsql.SQL("(SELECT md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), '')) FROM {} r)").format(table)


@dataclasses.dataclass(frozen=True)
class Seeded:
    """A table that holds rows when freshly migrated, and those rows."""

    column: int  # its place in FreshState's tables
    digest: str
    copy_in: pgsql.Composed
    data: bytes


def sequence_state(sequence: pgsql.Identifier) -> pgsql.Composed:
    return pgsql.SQL("(SELECT last_value || ':' || is_called FROM {})").format(sequence)


@dataclasses.dataclass(frozen=True)
class Sequence:
    """A sequence, its state when freshly migrated, and how to set it back."""

    name: pgsql.Identifier
    state: str
    setval: pgsql.Composed


@dataclasses.dataclass(frozen=True)
class FreshState:
    """What a freshly migrated database holds, read once; `restore` puts the database back to it.

    One transaction: rows are deleted from every table that holds any (one query finds them);
    the tables that held rows when fresh (the migration bookkeeping, the server secrets, the
    audit chain heads, whatever a later migration seeds) get exactly those rows back; sequences
    go back to their values; tables created since (usage partitions for other months) are
    dropped. It runs with session_replication_role = replica, so neither the triggers that refuse
    DELETE on the append-only tables nor foreign keys take part (the owner is a superuser in the
    test PostgreSQL).

    DELETE rather than TRUNCATE: a test writes a few rows, and deleting them takes a millisecond
    or two, while truncating the thirty tables (new files for each table and index, synced at
    commit) took 350-500 ms, as long as cloning a database.
    """

    tables: frozenset[tuple[str, str]]
    # One row: for each table whether it holds rows, then for each seeded table the digest of its
    # rows, then for each sequence its state.
    look: pgsql.Composed
    deletes: tuple[pgsql.Composed, ...]  # in the order of look's columns
    seeded: tuple[Seeded, ...]
    sequences: tuple[Sequence, ...]

    @classmethod
    def take(cls, url: str) -> FreshState:
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            found = conn.execute(TABLES).fetchall()
            names = [pgsql.Identifier(t["schema"], t["name"]) for t in found if not t["partition"]]
            seeded: list[Seeded] = []
            for column, name in enumerate(names):
                held = conn.execute(pgsql.SQL("SELECT EXISTS (SELECT FROM {}) AS held").format(name)).fetchone()
                if held != {"held": True}:
                    continue
                data = bytearray()
                copy_out = pgsql.SQL("COPY (SELECT * FROM {}) TO STDOUT (FORMAT binary)").format(name)
                with conn.cursor().copy(copy_out) as copy:
                    for chunk in copy:
                        data += chunk
                digest = conn.execute(pgsql.SQL("SELECT {} AS digest").format(digest_of(name))).fetchone()
                assert digest is not None
                seeded.append(
                    Seeded(
                        column=column,
                        digest=digest["digest"],
                        copy_in=pgsql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(name),
                        data=bytes(data),
                    )
                )
            sequences: list[Sequence] = []
            for q in conn.execute(SEQUENCES).fetchall():
                name = pgsql.Identifier(q["schema"], q["name"])
                now = conn.execute(pgsql.SQL("SELECT last_value, is_called FROM {}").format(name)).fetchone()
                assert now is not None
                sequences.append(
                    Sequence(
                        state=f"{now['last_value']}:{'true' if now['is_called'] else 'false'}",
                        setval=pgsql.SQL("SELECT setval({}::regclass, {}, {})").format(
                            pgsql.Literal(name.as_string(conn)),
                            pgsql.Literal(now["last_value"]),
                            pgsql.Literal(now["is_called"]),
                        ),
                        name=name,
                    )
                )
        return cls(
            tables=frozenset((t["schema"], t["name"]) for t in found),
            look=pgsql.SQL("SELECT {}").format(
                pgsql.SQL(", ").join(
                    [pgsql.SQL("EXISTS (SELECT FROM {})").format(name) for name in names]
                    + [digest_of(names[seed.column]) for seed in seeded]
                    + [sequence_state(sequence.name) for sequence in sequences]
                )
            ),
            deletes=tuple(pgsql.SQL("DELETE FROM {}").format(name) for name in names),
            seeded=tuple(seeded),
            sequences=tuple(sequences),
        )

    async def restore(self, url: str, *, attempts: int = 5) -> None:
        for attempt in range(attempts):
            try:
                await self._restore(url)
                return
            except psycopg.errors.DeadlockDetected:
                # A background loop of the server (sweeper, folder) locked rows in between.
                if attempt == attempts - 1:
                    raise

    async def _restore(self, url: str) -> None:
        async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
            try:
                await conn.execute("SET LOCAL session_replication_role = replica")
            except psycopg.errors.InsufficientPrivilege as exc:
                raise RuntimeError(
                    "resetting a module's database between tests needs a superuser (session_replication_role);"
                    " point QDATA_TEST_DATABASE_URL at one"
                ) from exc
            # A test that leaves a transaction holding locks is a bug to see, not to wait on.
            await conn.execute("SET LOCAL lock_timeout = '10s'")
            missing = set(self.tables)
            for schema, name, _ in await (await conn.execute(TABLES)).fetchall():
                if (schema, name) in missing:
                    missing.discard((schema, name))
                else:
                    await conn.execute(pgsql.SQL("DROP TABLE {}").format(pgsql.Identifier(schema, name)))
            assert not missing, f"tables of the migrated schema are gone (a test needs its own database): {missing}"
            row = await (await conn.execute(self.look)).fetchone()
            assert row is not None
            tables, seeds = len(self.deletes), len(self.seeded)
            held, digests, states = row[:tables], row[tables : tables + seeds], row[tables + seeds :]
            changed = {
                seed.column: seed for seed, digest in zip(self.seeded, digests, strict=True) if digest != seed.digest
            }
            seeded = {seed.column for seed in self.seeded}
            for column, (delete, nonempty) in enumerate(zip(self.deletes, held, strict=True)):
                if nonempty and (column in changed or column not in seeded):
                    await conn.execute(delete)
            for seed in changed.values():
                async with conn.cursor().copy(seed.copy_in) as copy:
                    await copy.write(seed.data)
            for sequence, state in zip(self.sequences, states, strict=True):
                if state != sequence.state:
                    await conn.execute(sequence.setval)
