"""Named SQL blocks, parsed once at import from the .sql files in queries/.

A file holds blocks like

    -- name: create_user
    -- Inserts a user and returns it.
    INSERT INTO users ...;

The first comment line names the block, the following comment lines describe it, and the SQL
runs to the next `-- name:` line. Parameters are psycopg's `%(name)s` placeholders; values are
never formatted into the text.

Every statement runs through fetch_one / fetch_row / fetch_all / execute by its block name; with
tracing on (tracing.py) each is a span named by the block, never with its text or parameters.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import LiteralString, cast

from psycopg import AsyncCursor

from qdata_server import tracing
from qdata_server.db.connection import Conn, Params, Row

_NAME_LINE = re.compile(r"^--\s*name:\s*(?P<name>[a-z_][a-z0-9_]*)\s*$")


class SqlError(RuntimeError):
    """A .sql file is malformed or a block name is unknown."""


def parse_blocks(text: str, source: str = "<sql>") -> dict[str, str]:
    """Returns {name: sql} for every named block in text; raises on duplicates or empty blocks."""
    blocks: dict[str, list[str]] = {}
    current: str | None = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        match = _NAME_LINE.match(line.strip())
        if match:
            current = match.group("name")
            if current in blocks:
                raise SqlError(f"{source}:{lineno}: duplicate query name {current!r}")
            blocks[current] = []
            continue
        if current is None:
            if line.strip() and not line.strip().startswith("--"):
                raise SqlError(f"{source}:{lineno}: SQL before the first '-- name:' line")
            continue
        if line.strip().startswith("--") and not any(s.strip() for s in blocks[current]):
            continue  # description lines directly under the name
        blocks[current].append(line)
    result: dict[str, str] = {}
    for name, lines in blocks.items():
        body = "\n".join(lines).strip()
        if not body:
            raise SqlError(f"{source}: query {name!r} is empty")
        result[name] = body
    return result


def _load_all() -> dict[str, str]:
    queries: dict[str, str] = {}
    folder = resources.files("qdata_server.db").joinpath("queries")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, body in parse_blocks(entry.read_text("utf-8"), entry.name).items():
            if name in queries:
                raise SqlError(f"{entry.name}: query name {name!r} is defined in two files")
            queries[name] = body
    return queries


_QUERIES = _load_all()


def query(name: str) -> LiteralString:
    """The SQL text of a named block (a literal from a shipped file, hence LiteralString)."""
    try:
        # mypy reads LiteralString as str; the cast is for checkers that tell them apart.
        return cast(LiteralString, _QUERIES[name])  # type: ignore[redundant-cast]
    except KeyError:
        raise SqlError(f"unknown query {name!r}") from None


def names() -> list[str]:
    """All loaded block names, sorted."""
    return sorted(_QUERIES)


async def fetch_one(conn: Conn, name: str, params: Params | None = None) -> Row | None:
    """Runs a named block and returns its first row (a dict) or None."""
    if tracing.ON:
        with tracing.database_span(name):
            cur = await conn.execute(query(name), params or {})
            return await cur.fetchone()
    cur = await conn.execute(query(name), params or {})
    return await cur.fetchone()


async def fetch_row(conn: Conn, name: str, params: Params | None = None) -> Row:
    """Runs a named block that always returns a row (a function call, an aggregate, INSERT ...
    RETURNING) and returns its first; no row at all is a bug (SqlError, answered as INTERNAL)."""
    row = await fetch_one(conn, name, params)
    if row is None:
        raise SqlError(f"query {name!r} returned no row")
    return row


async def fetch_all(conn: Conn, name: str, params: Params | None = None) -> list[Row]:
    """Runs a named block and returns all its rows."""
    if tracing.ON:
        with tracing.database_span(name):
            cur = await conn.execute(query(name), params or {})
            return await cur.fetchall()
    cur = await conn.execute(query(name), params or {})
    return await cur.fetchall()


async def submit(conn: Conn, name: str, params: Params | None = None) -> AsyncCursor[Row]:
    """Queues a named block in a pipeline and returns its cursor, whose rows are there once the
    pipeline syncs (transactions.statement); the span, with tracing on, covers the queueing only."""
    if tracing.ON:
        with tracing.database_span(name):
            return await conn.execute(query(name), params or {})
    return await conn.execute(query(name), params or {})


async def execute(conn: Conn, name: str, params: Params | None = None) -> None:
    """Runs a named block for its effect.

    In a server transaction (pipeline mode) the statement is only queued: it reaches the database
    with the next statement whose result is read, or with the commit, and an error it raises
    surfaces there, still inside the transaction (so its span, when tracing is on, covers the
    queueing only).
    """
    if tracing.ON:
        with tracing.database_span(name):
            await conn.execute(query(name), params or {})
        return
    await conn.execute(query(name), params or {})
