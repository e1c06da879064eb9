"""Versioned plain-SQL migrations: apply, check and verify.

Files in migrations/ are named NNNN_name.sql and applied in version order. Each file and its
bookkeeping row commit in one transaction, under an advisory lock held on a dedicated connection
(so two replicas starting at once apply each file once). schema_migrations records version,
name, SHA-256 of the file and, after each file, a fingerprint of the live schema. An applied file
that was edited or removed is a loud error: landed migrations are never edited, a new one is added.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from importlib import resources
from typing import Any, LiteralString

import psycopg

from qdata_server.db.connection import Conn

log = logging.getLogger("qdata.migrate")

# Any fixed 64-bit number distinct from other advisory locks used on the database.
_MIGRATION_LOCK_KEY = 0x7164_6174_615F_6D67  # "qdata_mg"
_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql$")

_CREATE_TRACKING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer     NOT NULL PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    fingerprint text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""

# A digest of the user-visible schema: tables, columns, constraints, indexes and triggers.
_FINGERPRINT = """
SELECT md5(string_agg(item, E'\\n' ORDER BY item)) AS fingerprint FROM (
    SELECT format('column %s.%s %s %s %s', c.table_name, c.column_name, c.data_type,
                  c.is_nullable, coalesce(c.column_default, '')) AS item
      FROM information_schema.columns c
     WHERE c.table_schema = current_schema() AND c.table_name <> 'schema_migrations'
    UNION ALL
    SELECT format('constraint %s %s', con.conname, pg_get_constraintdef(con.oid))
      FROM pg_constraint con JOIN pg_namespace n ON n.oid = con.connamespace
     WHERE n.nspname = current_schema()
    UNION ALL
    SELECT format('index %s', indexdef) FROM pg_indexes
     WHERE schemaname = current_schema() AND tablename <> 'schema_migrations'
    UNION ALL
    SELECT format('trigger %s %s', t.tgname, pg_get_triggerdef(t.oid))
      FROM pg_trigger t JOIN pg_class r ON r.oid = t.tgrelid JOIN pg_namespace n ON n.oid = r.relnamespace
     WHERE n.nspname = current_schema() AND NOT t.tgisinternal
) items
"""


class MigrationError(RuntimeError):
    """The database's migration history disagrees with the shipped files."""


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True)
class AppliedMigration:
    version: int
    name: str
    checksum: str
    fingerprint: str


def load_migrations() -> list[Migration]:
    """The shipped migration files, in version order."""
    folder = resources.files("qdata_server.db").joinpath("migrations")
    migrations = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            migrations.append(Migration(int(match["version"]), match["name"], entry.read_text("utf-8")))
        elif entry.name.endswith(".sql"):
            raise MigrationError(f"migration file {entry.name!r} is not named NNNN_name.sql")
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return migrations


def newer_than_build(files: list[Migration], applied: list[AppliedMigration]) -> list[AppliedMigration]:
    """Applied migrations newer than every shipped file: a newer release migrated the database.

    During a rolling update the old pods keep serving next to them (migrations are written to be
    backward compatible for one release), so these are reported, not refused.
    """
    newest = max((m.version for m in files), default=0)
    return [row for row in applied if row.version > newest]


def pending(files: list[Migration], applied: list[AppliedMigration]) -> list[Migration]:
    """The files still to apply; raises MigrationError if history and files disagree.

    An applied migration that was edited, or that is missing from the shipped files while newer
    ones are shipped, is an error; applied migrations newer than the whole build are tolerated
    (see newer_than_build).
    """
    by_version = {m.version: m for m in files}
    newest = max(by_version, default=0)
    for row in applied:
        shipped = by_version.get(row.version)
        if shipped is None and row.version > newest:
            continue
        if shipped is None:
            raise MigrationError(
                f"applied migration {row.version:04d}_{row.name} is missing from this build "
                "(is the server older than the database?)"
            )
        if shipped.checksum != row.checksum:
            raise MigrationError(
                f"applied migration {row.version:04d}_{row.name} was edited after it was applied "
                f"(checksum {row.checksum[:12]}… in the database, {shipped.checksum[:12]}… in the file); "
                "add a new migration instead of editing a landed one"
            )
    done = {row.version for row in applied}
    return [m for m in files if m.version not in done]


def _value(conn: psycopg.Connection[Any], sql: LiteralString) -> Any:
    """The value a single-row, single-column query returns."""
    row = conn.execute(sql).fetchone()
    if row is None:
        raise MigrationError("a single-row query returned no row")
    return row[0]


def _applied(conn: psycopg.Connection[Any]) -> list[AppliedMigration]:
    exists = _value(conn, "SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return []
    rows = conn.execute(
        "SELECT version, name, checksum, fingerprint FROM schema_migrations ORDER BY version"
    ).fetchall()
    return [AppliedMigration(*row) for row in rows]


def migrate(conninfo: str) -> list[str]:
    """Applies pending migrations; returns the names applied. Safe to run concurrently."""
    files = load_migrations()
    applied_now: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        # A session-level lock on this dedicated connection; released in finally (and at close).
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK_KEY,))
        try:
            conn.execute(_CREATE_TRACKING)
            for migration in pending(files, _applied(conn)):
                with conn.transaction():
                    conn.execute(migration.sql.encode("utf-8"))
                    fingerprint = _value(conn, _FINGERPRINT)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum, fingerprint) VALUES (%s, %s, %s, %s)",
                        (migration.version, migration.name, migration.checksum, fingerprint),
                    )
                applied_now.append(f"{migration.version:04d}_{migration.name}")
                log.info("applied migration %04d_%s", migration.version, migration.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK_KEY,))
    return applied_now


def status(conninfo: str) -> list[Migration]:
    """The pending migrations; raises MigrationError for an edited or missing applied one."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return pending(load_migrations(), _applied(conn))


def verify(conninfo: str) -> list[str]:
    """Checks history, pending files and the live schema; returns a list of problems (empty = ok)."""
    problems: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        applied = _applied(conn)
        try:
            todo = pending(load_migrations(), applied)
        except MigrationError as exc:
            return [str(exc)]
        problems += [f"migration {m.version:04d}_{m.name} is not applied" for m in todo]
        if applied and not todo:
            live = _value(conn, _FINGERPRINT)
            if live != applied[-1].fingerprint:
                problems.append(
                    "the live schema differs from the one the migrations produced "
                    "(changed by hand?); compare it with the migration files"
                )
    return problems


async def pending_count(conn: Conn) -> int:
    """Number of pending migrations, for the health check; raises MigrationError on a bad history."""
    cur = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL AS present")
    present = await cur.fetchone()
    if present is None or not present["present"]:
        return len(load_migrations())
    cur = await conn.execute("SELECT version, name, checksum, fingerprint FROM schema_migrations ORDER BY version")
    rows = [AppliedMigration(r["version"], r["name"], r["checksum"], r["fingerprint"]) for r in await cur.fetchall()]
    return len(pending(load_migrations(), rows))
